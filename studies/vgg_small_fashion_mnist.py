"""Compress the VGG-style net trained on Fashion-MNIST: a study written the way a user would.

Run from the repository root (rerun the same command to continue the study)::

    python studies/vgg_small_fashion_mnist.py --n-trials 400

Then: `lrf-optuna show --study-name vgg_small`, `lrf-optuna finetune --study-name vgg_small`,
`lrf-optuna dashboard --study-name vgg_small`.
"""

from __future__ import annotations

from _common import parse_args

import lrf_optuna
from lrf_optuna.report import front_text


def main() -> None:
    args = parse_args("vgg_small", n_trials=400)
    # the reference model is trained once (then loaded from the model cache); the study
    # records model and data, seeds the strategies' plans first and resumes when rerun
    study, _ = lrf_optuna.create_lrf_study(
        "vgg_small", "fashion-mnist", study_name="vgg_small", storage=args.storage,
        n_trials=args.n_trials, seed=args.seed, cache_dir=args.cache_dir)
    print(front_text(study, top=15))


if __name__ == "__main__":
    main()
