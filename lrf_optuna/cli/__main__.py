"""``python -m lrf_optuna.cli``: the ``lrf-optuna`` command."""

import sys

from lrf_optuna.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
