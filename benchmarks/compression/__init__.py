"""The compression benchmark (issue 12): selections compared at equal fine-tuning.

For each model: train the original to convergence (cached), build the similarity cache,
run NSGA-II (this tool's search), TPE and random search at the same trial budget, then for
every *selection* -- ``search`` (NSGA-II), ``tau`` (the paper's similarity threshold
alone), ``uniform:<conv>+<fc>`` (one method per layer kind everywhere, the first conv and
the classifier kept as a user would), ``energy``, ``vbmf``, ``random``, ``tpe`` and
``narrow`` (the same architecture made narrower, trained from scratch for the original's
training plus fine-tuning epochs) -- find the largest parameter reduction whose
**validation** accuracy after fine-tuning stays within ``--max-drop`` pp of the **fair
reference** (the original fine-tuned with exactly the same recipe), with the library's own
probe search (:func:`lrf_optuna.finetune.budget.smallest_passing`) and recipe
(:func:`lrf_optuna.finetune.finetune_model`); report it on the **test** split (the test
split decides nothing), with its FLOPs reduction and batch-1 CPU latency speed-ups (Keras,
TFLite). Also: the paper's two claims (hybrid vs the best single method on conv layers; TT
vs SVD and QR on FC layers), the proxy's Spearman against accuracy after fine-tuning (20+
trials spread along the front) and without it (50+ plans), hypervolume against trial count
for the three samplers, the levers (recipes incl. distillation and last-epoch; activation-
aware methods on/off when registered; probe strategy) and the wall time of each stage.

Every fine-tuning result is cached on disk per (model, plan, recipe)
(:class:`benchmarks._finetuned.PlanEvaluator`), trained models by the model cache and
studies in SQLite under ``--cache-dir``: a rerun or a crashed run resumes.

Writes ``benchmarks/results.json`` (numbers), the section ``## Compression benchmark
(<mode> mode)`` of ``benchmarks/RESULTS.md`` and ``benchmarks/compression_<mode>.html``
(plotly accuracy-vs-parameters curves; plotly.js from its CDN, ``--inline-plotlyjs`` for
an offline file).

    python -m benchmarks.compression                # full mode (hours on 2 cores)
    python -m benchmarks.compression --quick        # subsets, short recipe (about 1.5 h on 2 cores)
    python -m benchmarks.compression --tiny --cache-dir /tmp/b --out /tmp/b   # CI smoke
    python -m benchmarks.compression --models vgg_small --selections search,tau,narrow \\
        --recipes ce10,kd10,ce10-last --trials 3000

Recipes: ``ce<E>`` (cross-entropy, E epochs) or ``kd<E>`` (distillation 0.9, T=4), with
optional suffixes ``-last`` (keep the last epoch), ``-p<N>`` (patience), ``-lr<X>``,
``-a<W>`` (distillation weight), ``-t<T>`` (temperature); the first recipe is the main
one (every selection), the others are levers.

Layout of the package:

    config.py       selections, models, modes, recipes, the data, the trained originals and
                    the set-up a run on one model starts with (shared with extreme_budget)
    selections.py   the selection families: BenchCandidate, the run's Context, the plan helpers
    evaluation.py   fine-tuning a candidate, the probe search within the budget, latency, the
                    studies, hypervolume and the probe strategies on simulated fronts
    experiment.py   one model's run: studies, selections, proxy quality, claims and levers
    output.py       the markdown section, the plotly curves and the JSON
    cli.py          the arguments over the mode's defaults and main
"""

from benchmarks.compression.cli import main, parse_args
from benchmarks.compression.config import (
    ENERGIES,
    FBP_RATIOS,
    MODELS,
    MODES,
    NARROW_FRACTIONS,
    PRUNE_SELECTIONS,
    RATIOS,
    SAMPLERS,
    SELECTIONS,
    TAUS,
    Mode,
    ModelSpec,
    PlanDict,
    load_dataset,
    parse_recipe,
    prepare_problem,
    study_storage,
    train_original,
    val_fraction,
)
from benchmarks.compression.evaluation import (
    best_within,
    evaluate_candidate,
    run_studies,
    simulate_probe_strategies,
)
from benchmarks.compression.experiment import run_model
from benchmarks.compression.output import markdown, write_curves
from benchmarks.compression.selections import BenchCandidate, Context, PlanSource, selection_family

__all__ = [
    "ENERGIES", "FBP_RATIOS", "MODELS", "MODES", "NARROW_FRACTIONS", "PRUNE_SELECTIONS",
    "RATIOS", "SAMPLERS", "SELECTIONS", "TAUS", "BenchCandidate", "Context", "Mode",
    "ModelSpec", "PlanDict", "PlanSource", "best_within", "evaluate_candidate",
    "load_dataset", "main", "markdown", "parse_args", "parse_recipe", "prepare_problem",
    "run_model", "run_studies", "selection_family", "simulate_probe_strategies",
    "study_storage", "train_original", "val_fraction", "write_curves",
]
