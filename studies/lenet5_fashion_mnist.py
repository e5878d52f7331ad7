"""Compress LeNet-5 trained on Fashion-MNIST: a study written the way a user would.

Run from the repository root (rerun the same command to continue the study)::

    python studies/lenet5_fashion_mnist.py --n-trials 300

Then: `lrf-optuna show --study-name lenet5`, `lrf-optuna finetune --study-name lenet5`,
`lrf-optuna dashboard --study-name lenet5`.
"""

from __future__ import annotations

from _common import parse_args

import lrf_optuna
from lrf_optuna.report import front_text


def main() -> None:
    args = parse_args("lenet5", n_trials=300)
    # the reference model is trained once (then loaded from the model cache); the study
    # records model and data, seeds the strategies' plans first and resumes when rerun
    study, _ = lrf_optuna.create_lrf_study(
        "lenet5", "fashion-mnist", study_name="lenet5", storage=args.storage,
        n_trials=args.n_trials, seed=args.seed, cache_dir=args.cache_dir)
    print(front_text(study, top=15))


if __name__ == "__main__":
    main()
