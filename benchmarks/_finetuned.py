"""Fine-tuned plans for the benchmarks, cached on disk per (model, plan, recipe).

:class:`PlanEvaluator` builds a plan's compressed model from the similarity cache, measures
its validation and test accuracy, fine-tunes it with the library's own recipe
(:func:`lrf_optuna.finetune.finetune_model`, the original model as teacher when the recipe
distils) and stores the numbers as one JSON file under
``<root>/<model digest>/<recipe key>/<plan digest>.json`` (written atomically): a rerun, or
a run resumed after a crash, reads them back instead of training again. The model digest
covers the original's weights and the data splits, so a retrained original never reuses
stale results. A fine-tuned result also holds which validation and test images the model
gets right (``val_correct`` / ``test_correct``, packed bits:
:func:`lrf_optuna.paired.unpack_correct`), for
decisions paired on the same images (``correctness=True`` fine-tunes again a result cached
before they were stored).

Example:
    >>> ev = PlanEvaluator(problem, cache, root="benchmarks/.cache/finetuned")  # doctest: +SKIP
    >>> ev.finetuned({"fc1": ("svd", 8)}, FinetuneConfig(epochs=3))["val_after"]  # doctest: +SKIP
    0.912
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lrf_optuna.finetune import FinetuneConfig, finetune_model, teacher_outputs
from lrf_optuna.finetune.recipe import model_digest
from lrf_optuna.models.training import correct
from lrf_optuna.paired import pack_correct
from lrf_optuna.plan import CompressionPlan
from lrf_optuna.problem import Problem
from lrf_optuna.scoring.cache import SimilarityCache

__all__ = ["PlanEvaluator", "plan_digest", "spearman"]

logger = logging.getLogger("benchmarks")

Plan = Mapping[str, tuple[str, int]]


def plan_digest(plan: Plan) -> str:
    """A short digest of a plan (order-independent; a plan that prunes, a
    :class:`~lrf_optuna.plan.CompressionPlan`, includes its ratios and criterion).
    """
    text = json.dumps({k: [str(m), int(r)] for k, (m, r) in sorted(plan.items())})
    typed = CompressionPlan.of(plan)
    if typed.ratios:
        text += json.dumps({"ratios": dict(sorted(typed.ratios.items())),
                            "importance": typed.importance})
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _plan_json(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {k: [m, int(r)] for k, (m, r) in plan.items()}
    ratios = CompressionPlan.of(plan).ratios
    if ratios:
        out["_ratios"] = dict(ratios)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class PlanEvaluator:
    """Accuracy of plans of one problem, before and after fine-tuning (cached on disk).

    Args:
        problem: The original model and the splits.
        cache: The similarity cache (factors of the scored candidates).
        root: Cache directory of the results.
    """

    def __init__(self, problem: Problem, cache: SimilarityCache, *,
                 root: str | os.PathLike[str]) -> None:
        from lrf_optuna.data import fingerprint_arrays

        self.problem, self.cache = problem, cache
        s = problem.splits
        self.key = hashlib.blake2b(
            f"{model_digest(problem.model)}:{fingerprint_arrays(s.x_train, s.x_val, s.x_test)}"
            .encode(), digest_size=8).hexdigest()
        self.root = Path(root) / f"{problem.name}-{self.key}"
        self.trained = 0  # fine-tunings run (not read from the cache) by this evaluator
        #: The pruning cache (a :class:`~lrf_optuna.prune.PruneCache`) for plans that prune.
        self.pruning: Any = None

    def build(self, plan: Plan) -> Any:
        """The compressed (not fine-tuned) model of ``plan`` (pruned first when it prunes).
        """
        from lrf_optuna.prune import build_plan_model

        return build_plan_model(self.problem.model, plan, self.cache, pruning=self.pruning)

    def before(self, plan: Plan) -> dict[str, Any]:
        """Validation accuracy without fine-tuning, and the costs (cached)."""
        from lrf_optuna.costs import model_costs
        from lrf_optuna.models.training import evaluate

        path = self.root / "before" / f"{plan_digest(plan)}.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        model = self.build(plan)
        costs = model_costs(model)
        s = self.problem.splits
        out = {"plan": _plan_json(plan),
               "params": int(costs.params), "flops": int(costs.flops),
               "val_before": evaluate(model, s.x_val, s.y_val)}
        _write_json(path, out)
        return out

    def finetuned(self, plan: Plan, config: FinetuneConfig, *,
                  correctness: bool = False) -> dict[str, Any]:
        """Fine-tune ``plan``'s model with ``config``'s recipe (cached): params, FLOPs,
        val / test accuracy before and after, epochs, seconds, and which val / test images
        it gets right (``val_correct`` / ``test_correct``; with ``correctness=True`` a
        cached result without them is fine-tuned again)."""
        from lrf_optuna.costs import model_costs
        from lrf_optuna.models.training import evaluate

        path = self.root / config.recipe_key() / f"{plan_digest(plan)}.json"
        if path.exists():
            cached = dict(json.loads(path.read_text()))
            if not correctness or "val_correct" in cached:
                return cached
        s = self.problem.splits
        model = self.build(plan)
        costs = model_costs(model)
        test_before = evaluate(model, s.x_test, s.y_test)
        teacher = (teacher_outputs(self.problem.model, s, cache_dir=self.root / "teacher")
                   if config.distill > 0 else None)
        start = time.perf_counter()
        outcome = finetune_model(model, s, config, teacher=teacher)
        val_correct, test_correct = correct(model, s.x_val, s.y_val), correct(model, s.x_test,
                                                                              s.y_test)
        out = {"plan": _plan_json(plan),
               "recipe": config.recipe(), "params": int(costs.params),
               "flops": int(costs.flops), "val_before": outcome.val_acc_before,
               "val_after": outcome.val_acc_after, "test_before": test_before,
               "test_after": float(test_correct.mean()),
               "epochs_run": outcome.epochs_run, "reverted": outcome.reverted,
               "seconds": round(time.perf_counter() - start, 2),
               "val_correct": pack_correct(val_correct), "test_correct": pack_correct(test_correct)}
        _write_json(path, out)
        self.trained += 1
        logger.info("fine-tuned %s (%s params) with %s: val %.4f -> %.4f, test %.4f (%.0f s)",
                    plan_digest(plan), f"{out['params']:,}", config.describe(),
                    out["val_before"], out["val_after"], out["test_after"], out["seconds"])
        return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan")
    value = spearmanr(np.asarray(x), np.asarray(y)).statistic
    return float(value)
