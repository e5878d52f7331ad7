"""Run every benchmark in turn (``make bench``); each rewrites its RESULTS.md section.

    python -m benchmarks.run [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence

#: (module, arguments, quick arguments), in pipeline order.
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("benchmarks.baselines", [], []),
    ("benchmarks.decomposition_speed", [], ["--quick"]),
    ("benchmarks.activation_aware", [], ["--models", "lenet5"]),
    ("benchmarks.cache_build", [], ["--models", "lenet5"]),
    ("benchmarks.similarity_metrics", [], ["--plans", "15", "--models", "lenet5"]),
    ("benchmarks.proxy_cost", [], ["--model", "lenet5"]),
    ("benchmarks.rewrite_coverage", [],
     ["--architectures", "MobileNetV2", "zoo/lenet5", "zoo/resnet20"]),
    ("benchmarks.search_soak", [], ["--trials", "600", "--no-write"]),
    ("benchmarks.seeded_sampler", [], ["--models", "lenet5", "--trials", "300", "--seeds", "1",
                                       "--no-write"]),
    # the default compress call against what users try instead (full: hours on 2 cores)
    ("benchmarks.user_nets", [], ["--quick", "--nets", "plain"]),
    ("benchmarks.deploy", ["--representative-sweep", "32", "100", "300", "1000"],
     ["--models", "vgg_small", "--test-images", "2000", "--no-write"]),
    # the fine-tuning budget at three data sizes (full: hours on 2 cores)
    ("benchmarks.finetune_budget", [], ["--nets", "mobile", "--sizes", "4000",
                                        "--recipes", "old,steps600", "--no-write"]),
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--quick", action="store_true", help="smaller settings")
    args = parser.parse_args(argv)
    for module, full, quick in BENCHMARKS:
        start = time.perf_counter()
        print(f"\n##### {module} {' '.join(quick if args.quick else full)}", flush=True)
        importlib.import_module(module).main(quick if args.quick else full)
        print(f"##### {module}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
