"""Compress LeNet-5 trained on Fashion-MNIST: a study written the way a user would.

Run from the repository root (rerun the same command to continue the study)::

    python studies/lenet5_fashion_mnist.py --n-trials 300

Then: `lrf-optuna show --study-name lenet5`, `lrf-optuna finetune --study-name lenet5`,
`lrf-optuna dashboard --study-name lenet5`.
"""

from __future__ import annotations

import optuna
from _common import parse_args

import lrf_optuna
from lrf_optuna.cli import pareto_table
from lrf_optuna.data import load_fashion_mnist, prepare_splits
from lrf_optuna.models import train_reference_model
from lrf_optuna.search import open_storage, run_remaining
from lrf_optuna.workspace import ProblemSpec, record_problem


def main() -> None:
    args = parse_args("lenet5", n_trials=300)
    dataset = load_fashion_mnist()
    splits = prepare_splits(dataset, calibration_size=512, seed=args.seed)
    model = train_reference_model("lenet5", dataset, seed=args.seed)

    objective = lrf_optuna.LRFObjective(model, splits.x_cal, cache_dir=args.cache_dir)
    study = optuna.create_study(
        study_name="lenet5", storage=open_storage(args.storage), load_if_exists=True,
        directions=objective.directions,
        sampler=optuna.samplers.NSGAIISampler(seed=args.seed))
    record_problem(study, ProblemSpec(model="lenet5", seed=args.seed,
                                      cache_dir=args.cache_dir))
    objective.seed_study(study)  # the rank-selection strategies' plans go first
    run_remaining(study, objective, args.n_trials)  # --n-trials is the total: resumable
    print(pareto_table(study, top=15))


if __name__ == "__main__":
    main()
