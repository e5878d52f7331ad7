"""Which layers and methods make a depthwise-separable net collapse (issue 17, item 3).

On the MobileNet-style user net (``benchmarks/user_nets/``), every (layer, method) is
factorized **alone**, at the cached rank whose parameter count is closest to ``--keep`` of
the layer's own; the model is then evaluated on the validation split as built, and again
after its BatchNorm statistics are re-estimated on training images
(:func:`lrf_optuna.finetune.reestimate_batchnorm`), beside the candidate's proxy (the
similarity the search sees, through the BatchNorm view). A collapse that re-estimation
repairs is a statistics problem; one it does not repair is the layer's.

    python -m benchmarks.collapse --net mobile --size 4000 --keep 0.5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._problem import machine, setup_logging
from benchmarks._results import markdown_table, pct, write_section

HERE = Path(__file__).resolve().parent


def closest(candidates: Sequence[Any], target: float) -> Any:
    """The candidate whose parameter count is closest to ``target`` (the lower rank on a tie).

    Example:
        >>> from types import SimpleNamespace as C
        >>> closest([C(rank=1, params=10), C(rank=2, params=20), C(rank=4, params=40)], 25).rank
        2
    """
    return min(candidates, key=lambda c: (abs(c.params - target), c.rank))


def run(args: argparse.Namespace) -> list[list[str]]:
    from benchmarks import user_nets
    from benchmarks._finetuned import PlanEvaluator
    from lrf_optuna.data import prepare_splits
    from lrf_optuna.finetune import reestimate_batchnorm
    from lrf_optuna.models.training import evaluate
    from lrf_optuna.problem import Problem
    from lrf_optuna.search import LRFObjective

    cache = Path(args.cache_dir)
    data = user_nets.load_dataset("quick", args.size, None, 0)
    splits = prepare_splits(data, seed=0)
    trained = user_nets.train_net(args.net, 1.0, splits, epochs=user_nets.NETS[args.net].epochs,
                                  seed=0, cache_dir=cache)
    problem = Problem.from_objects(trained.model, data, seed=0, cache_dir=cache / "similarity")
    objective = LRFObjective(problem.model, splits.x_cal, cache_dir=cache / "similarity",
                             progress=False)
    evaluator = PlanEvaluator(problem, objective.cache, root=cache / "finetuned")
    base = evaluate(problem.model, splits.x_val, splits.y_val)
    rows = [["(original)", "", "", "", "", "", pct(base), pct(base)]]
    metric = objective.cache.metric
    for path in objective.cache.layers:
        table = objective.cache.layer(path)
        for method in table.methods:
            cand = closest(table.for_method(method), args.keep * table.original_params)
            model = evaluator.build({path: (method, cand.rank)})
            built = evaluate(model, splits.x_val, splits.y_val)
            reestimate_batchnorm(model, splits.x_train, images=args.bn_images)
            bn = evaluate(model, splits.x_val, splits.y_val)
            rows.append([path, table.class_name, method, str(cand.rank),
                         pct(cand.params / table.original_params),
                         f"{cand.score(metric):.3f}", pct(built), pct(bn)])
            print(*rows[-1], flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.collapse",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="mobile")
    p.add_argument("--size", type=int, default=4000)
    p.add_argument("--keep", type=float, default=0.5,
                   help="fraction of each layer's parameters the factorization keeps")
    p.add_argument("--bn-images", type=int, default=2048)
    p.add_argument("--cache-dir", default=str(HERE / ".cache" / "user_nets"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    setup_logging()
    rows = run(args)
    body = (f"`python -m benchmarks.collapse {' '.join(sys.argv[1:] if argv is None else argv)}`"
            f" ({machine()}). One layer factorized at a time, at the rank keeping about"
            f" {args.keep:.0%} of that layer's parameters; validation accuracy of the whole"
            " net as built and after BatchNorm re-estimation on"
            f" {args.bn_images:,} training images.\n\n"
            + markdown_table(["layer", "class", "method", "rank", "layer params kept",
                              "proxy", "val built", "val BN re-estimated"], rows))
    print(body)
    if not args.no_write:
        write_section(f"One layer at a time: what collapses the {args.net} net", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
