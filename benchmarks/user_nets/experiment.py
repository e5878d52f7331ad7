"""One (net, size): the original, the ``compress`` answer, every baseline."""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._finetuned import PlanEvaluator
from benchmarks.compression.selections import BenchCandidate, _from_plans
from benchmarks.user_nets.config import (
    NETS,
    Mode,
    _digest,
    compress_defaults,
    load_dataset,
    passes,
    train_net,
)
from benchmarks.user_nets.evaluation import (
    PlanSource,
    Verdict,
    best_passing,
    narrow_family,
    run_compress,
    uniform_svd_plans,
)
from lrf_optuna.paired import unpack_correct

logger = logging.getLogger("benchmarks.user_nets")


def run_one(net: str, size: int, mode_name: str, mode: Mode, args: argparse.Namespace
            ) -> dict[str, Any]:
    from lrf_optuna.costs import model_costs
    from lrf_optuna.data import prepare_splits
    from lrf_optuna.finetune import FinetuneConfig
    from lrf_optuna.finetune.recipe import teacher_outputs
    from lrf_optuna.problem import Problem
    from lrf_optuna.search import LRFObjective
    from lrf_optuna.search.strategies import SimilarityThreshold

    cache = Path(args.cache_dir)
    defaults = compress_defaults()
    dataset = load_dataset(mode_name, size, args.test_images, args.seed)
    # the library's split, with the compress call's validation fraction and seed
    splits = prepare_splits(dataset, val_fraction=args.val_fraction,
                            calibration_size=defaults["calibration_size"], seed=args.seed)
    n_val = len(splits.x_val)
    epochs = args.epochs.get(net, mode.epochs or NETS[net].epochs)
    original = train_net(net, mode.width, splits, epochs=epochs, seed=args.seed,
                         cache_dir=cache)
    costs = model_costs(original.model)
    logger.info("%s on %d images: %s params, val %.4f, test %.4f", net, size,
                f"{original.params:,}", original.val_acc, original.test_acc)
    sim_dir = cache / "similarity"
    problem = Problem.from_objects(original.model, dataset, seed=args.seed,
                                   calibration_size=defaults["calibration_size"],
                                   val_fraction=args.val_fraction, cache_dir=sim_dir)
    if not np.array_equal(problem.splits.val_indices, splits.val_indices):
        raise RuntimeError("the compress call's validation split differs from the one the "
                           "nets were trained without")

    # compress, the default call; its study is kept per trained model and library defaults
    out_dir = cache / "compress" / (f"{original.key}-"
                                    + _digest(defaults, FinetuneConfig().recipe_key(),
                                              mode.n_trials))
    compress = run_compress(original.model, dataset, problem, out_dir=out_dir, sim_dir=sim_dir,
                            max_drop=args.max_drop, val_fraction=args.val_fraction,
                            seed=args.seed, n_trials=mode.n_trials)
    logger.info("%s/%d compress: %s", net, size,
                {k: compress.get(k) for k in ("trial", "param_reduction", "val_drop_pp",
                                              "test_drop_pp", "probes", "seconds")})

    # plans: the same similarity cache, the library's default recipe, the fair reference
    objective = LRFObjective(problem.model, splits.x_cal, cache_dir=sim_dir, progress=False)
    evaluator = PlanEvaluator(problem, objective.cache, root=cache / "finetuned")
    config = FinetuneConfig(verbose=0)  # the default recipe (verbosity is not part of it)
    reference = evaluator.finetuned({}, config, correctness=True)
    ref_correct = unpack_correct(reference["val_correct"], n_val)
    src = PlanSource(problem, objective, evaluator, original.params)

    def judge_plan(c: BenchCandidate) -> Verdict:
        assert c.plan is not None
        r = evaluator.finetuned(c.plan, config, correctness=True)
        return Verdict(r["val_after"], r["test_after"],
                       passes(unpack_correct(r["val_correct"], n_val), ref_correct, args.max_drop),
                       r["seconds"], {"epochs_run": r["epochs_run"], "reverted": r["reverted"],
                                      "val_before": r["val_before"]})

    # narrow: original epochs + the longest fine-tuning any probe of compress got
    ft_epochs = compress.get("max_probe_epochs_run") or FinetuneConfig().epochs
    narrow_epochs = epochs + int(ft_epochs)

    teacher = teacher_outputs(original.model, splits, cache_dir=cache / "teacher")

    def narrow_judge(distilled: bool) -> Callable[[BenchCandidate], Verdict]:
        def judge(c: BenchCandidate) -> Verdict:
            assert c.width is not None
            t = train_net(net, c.width, splits, epochs=narrow_epochs, seed=args.seed,
                          cache_dir=cache, teacher=teacher if distilled else None)
            return Verdict(t.val_acc, t.test_acc, passes(t.val_correct, original.val_correct,
                                                         args.max_drop), t.seconds,
                           {"epochs": t.epochs})
        return judge

    common = {"original_params": original.params, "original_flops": int(costs.flops),
              "original_test": original.test_acc}
    plan_ref = {"reference_val": reference["val_after"],
                "reference_test": reference["test_after"]}
    baselines: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for name in ("narrow", "narrow_kd"):  # from scratch, then distilled from the original
        baselines[name] = best_passing(
            narrow_family(net, args.widths, mode.width, splits),
            narrow_judge(name == "narrow_kd"), **common,
            reference_val=original.val_acc, reference_test=original.test_acc)
        baselines[name].update(reference="untouched original", epochs=narrow_epochs)
    families = {
        "uniform": _from_plans(src, uniform_svd_plans(src, args.ratios)),
        "tau": _from_plans(src, [(p.label, dict(p.plan)) for p in SimilarityThreshold(
            taus=mode.taus).plans(problem.model, objective.cache)])}
    for name, family in families.items():
        baselines[name] = best_passing(family, judge_plan, **common, **plan_ref)
        baselines[name]["reference"] = "fair reference"
    logger.info("%s/%d baselines: %s (%.0f s)", net, size,
                {k: v["param_reduction"] for k, v in baselines.items()},
                time.perf_counter() - start)
    return {"net": net, "description": NETS[net].description, "size": size,
            "train_images": len(splits.x_train), "val_images": n_val,
            "test_images": len(splits.x_test), "one_image_pp": round(100 / n_val, 4),
            "budget_images": math.floor(args.max_drop * n_val / 100 + 1e-9),
            "original": {"params": original.params, "flops": int(costs.flops),
                         "width": mode.width, "epochs": epochs, "val_acc": original.val_acc,
                         "test_acc": original.test_acc, "seconds": original.seconds,
                         "val_acc_by_epoch": [round(v, 4) for v in
                                              original.history.get("val_accuracy", [])]},
            "fair_reference": {k: reference[k] for k in ("val_after", "test_after",
                                                         "epochs_run", "seconds")},
            "compress": compress, "baselines": baselines,
            "targets": targets(compress, baselines)}


def targets(compress: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets on one (net, size): compress saves more parameters than every
    baseline; it leaves at most half the parameters of the best baseline.

    Example:
        >>> t = targets({"param_reduction": 0.8}, {"narrow": {"param_reduction": 0.75},
        ...                                        "tau": {"param_reduction": 0.5}})
        >>> t["best_baseline"], t["beats_every_baseline"], t["at_most_half_params_of_best"]
        ('narrow', True, False)
    """
    best = max(baselines, key=lambda k: baselines[k]["param_reduction"])
    best_red = float(baselines[best]["param_reduction"])
    red = compress.get("param_reduction")
    return {"best_baseline": best, "best_baseline_reduction": best_red,
            "beats_every_baseline": red is not None and red > best_red,
            "at_most_half_params_of_best": red is not None
            and (1 - red) <= 0.5 * (1 - best_red) + 1e-12}


