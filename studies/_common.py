"""Shared by the study scripts: their command-line flags."""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(name: str, n_trials: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"LRF study of {name} on Fashion-MNIST")
    parser.add_argument("--n-trials", type=int, default=n_trials,
                        help="total finished trials wanted; rerun to continue "
                             "(default: %(default)s)")
    parser.add_argument("--storage", default=f"sqlite:///studies/{name}.db")
    parser.add_argument("--cache-dir", default=".lrf_cache")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args
