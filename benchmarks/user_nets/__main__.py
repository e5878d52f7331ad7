"""``python -m benchmarks.user_nets``: see :mod:`benchmarks.user_nets`."""

import os

from benchmarks.user_nets.cli import main

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
