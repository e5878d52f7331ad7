"""The default ``compress`` call and its answer; the baselines (narrow, uniform SVD, tau)
probed by the library's bisection."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._finetuned import PlanEvaluator
from benchmarks.compression.config import PlanDict
from benchmarks.compression.selections import BenchCandidate, _uniform_plans
from benchmarks.user_nets.config import build_net
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR


def run_compress(model: Any, dataset: Any, problem: Any, *, out_dir: Path, sim_dir: Path,
                 max_drop: float, val_fraction: float | None, seed: int,
                 n_trials: int | None) -> dict[str, Any]:
    """The default ``compress_detailed`` call and its answer (cached in ``out_dir`` with
    the wall time of the run that computed it; the study there resumes otherwise)."""
    from lrf_optuna.compression import compress_detailed
    from lrf_optuna.errors import UserError

    row_path = out_dir / "answer.json"
    if row_path.exists():
        return dict(json.loads(row_path.read_text()))
    # tiny mode (a smoke test of the harness): fewer trials and fine-tunings, so CI stays short
    extra = {} if n_trials is None else {"n_trials": n_trials, "max_probes": 2,
                                          "escalate_probes": 1}
    start = time.perf_counter()
    try:
        answer = compress_detailed(model, dataset, max_drop=max_drop, out_dir=out_dir,
                                   val_fraction=val_fraction, seed=seed, cache_dir=sim_dir,
                                   show_progress_bar=False, **extra).answer
    except UserError as err:
        answer = _answer_without_pick(out_dir, problem, max_drop, err)
    row = describe_answer(answer)
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["call"] = (f"compress_detailed(model, data, max_drop={max_drop:g}, out_dir=..., "
                   f"val_fraction={val_fraction}, seed={seed}"
                   + "".join(f", {k}={v}" for k, v in extra.items()) + ")")
    out_dir.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row, indent=1))
    return row


def _answer_without_pick(out_dir: Path, problem: Any, max_drop: float, err: Exception) -> Any:
    """The max-drop answer of the study ``compress`` left in ``out_dir`` when it found
    nothing within the budget (re-asked: every probe is a finished job, nothing trains);
    any other ``UserError`` is raised again."""
    import optuna

    from lrf_optuna.finetune import FinetuneConfig, finetune_within

    dbs = sorted(out_dir.glob("*.db"))
    if "within" not in str(err) or len(dbs) != 1:
        raise err
    url = f"sqlite:///{dbs[0]}"
    names = [n for n in optuna.study.get_all_study_names(url) if not n.endswith(":finetune")]
    if len(names) != 1:
        raise err
    study = optuna.load_study(study_name=names[0], storage=url)
    answer = finetune_within(study, max_drop, config=FinetuneConfig(), problem=problem)
    if answer.chosen is not None:
        raise err
    return answer


def describe_answer(answer: Any) -> dict[str, Any]:
    """The numbers of a :class:`~lrf_optuna.study.finetune_records.WithinBudget` answer."""
    ref, orig = answer.reference, answer.original

    def se(job: Any) -> float | None:
        paired = job.decided_drop(answer.reference_of(job))
        return None if paired is None else round(paired.se_pp, 3)

    probes = [{"trial": t.number, "params": int(t.user_attrs[PARAMS_ATTR]),
               "proxy": t.user_attrs.get(PROXY_ATTR), "val_after": job.val_acc_after,
               "test_after": job.measured.test_acc, "epochs_run": job.epochs_run,
               "seconds": job.finetune_seconds, "passed": probe.passed,
               "escalated": job.recipe != answer.search_recipe_key,
               "val_drop_pp": job.drops_pp(answer.reference_of(job))["val_vs_reference"],
               "val_drop_se_pp": se(job)}
              for t, job, probe in answer.probes]
    epochs = [p["epochs_run"] for p in probes if p["epochs_run"] is not None]
    row: dict[str, Any] = {
        "within": answer.chosen is not None, "recipe": answer.recipe,
        "fair_reference_val": ref.val_acc_after, "fair_reference_test": ref.measured.test_acc,
        "fair_reference_epochs_run": ref.epochs_run,
        "original_val": orig.val_acc, "original_test": orig.test_acc,
        "probes": len(probes), "candidates": len(answer.candidates),
        "max_probe_epochs_run": max(epochs, default=None), "probe_list": probes,
        "escalated_recipe": answer.escalated_recipe,
        "val_images": answer.resolution.images if answer.resolution else None,
        "expected_se_pp": (round(answer.resolution.expected_se_pp, 3)
                           if answer.resolution else None),
        "original_check": (answer.original_check.diagnosis
                           if answer.original_check else None)}
    if answer.chosen is None:
        row.update(trial=None, param_reduction=None, flops_reduction=None, val_drop_pp=None,
                   test_drop_pp=None, test_drop_vs_original_pp=None)
        return row
    t, job = answer.chosen, answer.job
    params, flops = int(t.user_attrs[PARAMS_ATTR]), int(t.user_attrs[FLOPS_ATTR])
    drops = answer.drops_pp()
    paired = answer.paired_drops()
    row.update(val_drop_se_pp=(round(paired["val_vs_reference"].se_pp, 3)
                               if paired["val_vs_reference"] else None),
               test_drop_se_pp=(round(paired["test_vs_reference"].se_pp, 3)
                                if paired["test_vs_reference"] else None),
               chosen_recipe="longer" if job.recipe != answer.search_recipe_key else "first")
    row.update(trial=t.number, params=params, flops=flops,
               param_reduction=round(1 - params / answer.original_params, 4),
               flops_reduction=(round(1 - flops / answer.original_flops, 4)
                                if answer.original_flops else None),
               val_acc=job.val_acc_after, test_acc=job.measured.test_acc,
               val_drop_pp=drops["val_vs_reference"], test_drop_pp=drops["test_vs_reference"],
               test_drop_vs_original_pp=drops["test_vs_original"],
               val_drop_vs_original_pp=(None if orig.val_acc is None or job.val_acc_after is None
                                        else 100 * (orig.val_acc - job.val_acc_after)))
    return row


# -- baselines -------------------------------------------------------------------------------

@dataclass
class PlanSource:
    """What the plan helpers of ``benchmarks.compression`` read
    (:class:`benchmarks.compression.PlanSource`)."""

    problem: Any
    objective: Any
    evaluator: PlanEvaluator
    original_params: int

    def proxy(self, plan: PlanDict) -> float:
        return float(self.objective.score(plan).proxy)


@dataclass
class Verdict:
    """One evaluated candidate of a baseline: its accuracies and whether it passed."""

    val_acc: float
    test_acc: float
    passed: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def best_passing(family: list[BenchCandidate], judge: Callable[[BenchCandidate], Verdict], *,
                 original_params: int, original_flops: int, reference_val: float,
                 reference_test: float, original_test: float) -> dict[str, Any]:
    """The largest reduction of ``family`` (smallest first) that passes: the library's
    bisection (:func:`lrf_optuna.finetune.smallest_passing`) over the verdicts of
    :func:`passes`; the row of the answer and every candidate evaluated."""
    from lrf_optuna.finetune import smallest_passing

    seen: dict[int, Verdict] = {}

    def score(i: int) -> float:
        seen[i] = judge(family[i])
        return 1.0 if seen[i].passed else 0.0

    search = smallest_passing([c.position for c in family], score, 0.5) if family else None

    def pp(ref: float, acc: float) -> float:
        return round(100 * (ref - acc), 3)

    evaluated = [{"label": family[i].label, "params": family[i].params,
                  "param_reduction": round(1 - family[i].params / original_params, 4),
                  "val": v.val_acc, "test": v.test_acc, "passed": v.passed,
                  "val_drop_pp": pp(reference_val, v.val_acc), "seconds": v.seconds, **v.extra}
                 for i, v in sorted(seen.items(), key=lambda kv: family[kv[0]].params)]
    row: dict[str, Any] = {"candidates": len(family), "probes": len(seen),
                           "seconds": round(sum(v.seconds for v in seen.values()), 1),
                           "evaluated": evaluated, "within": False, "label": None,
                           "param_reduction": 0.0, "flops_reduction": 0.0,
                           "val_drop_pp": None, "test_drop_pp": None,
                           "test_drop_vs_original_pp": None, "smallest_candidate": False}
    if search is None or search.chosen is None:
        return row
    c, v = family[search.chosen], seen[search.chosen]
    row.update(within=True, label=c.label, params=c.params, flops=c.flops,
               param_reduction=round(1 - c.params / original_params, 4),
               flops_reduction=round(1 - c.flops / original_flops, 4),
               val_acc=v.val_acc, test_acc=v.test_acc,
               val_drop_pp=pp(reference_val, v.val_acc),
               test_drop_pp=pp(reference_test, v.test_acc),
               test_drop_vs_original_pp=pp(original_test, v.test_acc),
               smallest_candidate=search.chosen == 0)
    return row


def uniform_svd_plans(src: PlanSource, ratios: Sequence[float]) -> list[tuple[str, PlanDict]]:
    """SVD everywhere it applies, one relative rank per plan, as a user would: every
    ``k x k`` conv by ``channel_svd``, every 1x1 conv (which ``channel_svd`` refuses: a
    matrix) and every Dense by ``svd``; the first conv and the classifier kept
    (``benchmarks.compression.selections._uniform_plans``)."""
    out = []
    for (label, plan), (_, pointwise) in zip(
            _uniform_plans(src, "channel_svd", "svd", ratios=ratios),
            _uniform_plans(src, "svd", "keep", ratios=ratios)):
        out.append((label, {**pointwise, **plan}))
    return out


def narrow_family(net: str, widths: Sequence[float], base: float, splits: Any
                  ) -> list[BenchCandidate]:
    """The net at ``base * w`` for each ``w`` (untrained, for the sizes), smallest first."""
    from lrf_optuna.costs import model_costs

    out = []
    for w in widths:
        costs = model_costs(build_net(net, splits.input_shape, splits.num_classes, base * w))
        out.append(BenchCandidate(f"width x{w:g}", int(costs.params), int(costs.flops),
                             math.log(max(costs.params, 1)), width=base * w))
    return sorted(out, key=lambda c: c.params)


