"""The user-nets benchmark (issue 17, item 6): the one-call answer on nets users build.

Three nets written here as plain Keras code, the way a user writes them (none from
``lrf_optuna.models.zoo``), each with a width multiplier: a plain CNN (3 convs and a large
``Dense(256)``, 914,698 params on 28x28x1), a residual net (BatchNorm, ``Add`` shortcuts,
global average pooling, 309,418 params) and a MobileNet-style net (5 depthwise-separable
blocks with BatchNorm and ReLU6, 139,146 params). Each is trained from scratch (Adam,
cosine decay, fixed epochs, seeded; cached on disk) on a stratified subset of the
Fashion-MNIST training set (4,000 and 18,000 images), on the **training part of the
library's own split** (:func:`lrf_optuna.data.prepare_splits` with the validation fraction
and seed the ``compress`` call uses), so no model ever trains on a validation image.

For every (net, size):

* **compress default**: :func:`lrf_optuna.compression.compress_detailed` with the library's
  defaults (``max_drop`` 1 pp; only the locations -- ``out_dir``, ``cache_dir`` -- and the
  progress bar are passed, and ``n_trials``, ``max_probes=2``, ``escalate_probes=1`` in tiny
  mode only). Its answer: parameter and
  FLOPs reduction, validation and test drops against its fair reference and the untouched
  original, probes and wall time; ``none`` when it raises ``UserError`` (nothing within the
  budget).
* **narrow**: the same net at smaller widths, trained from scratch on the same training
  part for the original's epochs plus the most epochs any of compress's probes was
  fine-tuned (``max epochs_run`` over its probe jobs, so a longer or escalated recipe is
  counted), compared with the untouched original (no fine-tuning).
* **uniform SVD**: ``channel_svd`` on every ``k x k`` conv and ``svd`` on every 1x1 conv
  and Dense at one relative rank (several ratios), the first conv and the classifier kept
  as a user would (:func:`uniform_svd_plans`); **tau**: the paper's similarity-threshold
  plans (:class:`lrf_optuna.search.strategies.SimilarityThreshold`). Each fine-tuned with the
  library's default recipe (:func:`lrf_optuna.finetune.finetune_model`,
  ``FinetuneConfig()``) and compared with the fair reference (the original fine-tuned with
  the same recipe; :class:`benchmarks._finetuned.PlanEvaluator` caches every fine-tuning).

Each baseline's answer is the largest parameter reduction that :func:`passes` on the
**validation** split (its candidates probed by the library's bisection,
:func:`lrf_optuna.finetune.smallest_passing`, on the pass/fail verdicts), reported on the
test split; the number of validation images every decision rests on is stated. The table
says whether compress saves more parameters than every baseline and leaves at most half
the parameters of the best one (the issue's targets).

Writes ``benchmarks/results_user_nets.json`` and the section ``## User nets benchmark
(<mode> mode)`` of ``benchmarks/RESULTS.md`` (``--out`` / ``--results-md``; tiny mode
writes into a temporary directory unless told otherwise).

    python -m benchmarks.user_nets                    # full: both sizes (hours on 2 cores)
    python -m benchmarks.user_nets --quick            # 4,000 images, fewer widths / ratios
    python -m benchmarks.user_nets --quick --nets plain
    python -m benchmarks.user_nets --tiny --out /tmp/u          # CI smoke (synthetic data)

Layout of the package:

    config.py       the three nets as a user writes them, the modes, the decision
                    (:func:`passes`), the data and the trained (cached) nets
    evaluation.py   the default ``compress`` call and its answer; the baselines' candidates
                    (narrow widths, uniform SVD plans) and the bisection over their verdicts
    experiment.py   one (net, size): the original, compress, every baseline, the targets
    output.py       the markdown section and the JSON
    cli.py          the arguments over the mode's defaults and main
"""

from benchmarks.user_nets.cli import main, parse_args
from benchmarks.user_nets.config import (
    MODES,
    NETS,
    Mode,
    NetSpec,
    build_net,
    compress_defaults,
    load_dataset,
    passes,
    train_net,
)

__all__ = ["MODES", "NETS", "Mode", "NetSpec", "build_net", "compress_defaults",
           "load_dataset", "main", "parse_args", "passes", "train_net"]
