"""``python -m benchmarks.compression``: see :mod:`benchmarks.compression`."""

import os

from benchmarks.compression.cli import main

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
