"""``python -m ate_core.eval``: see :mod:`ate_core.eval.cli`."""

import sys

from ate_core.eval.cli import main

if __name__ == "__main__":  # importing the module (tools walk every module) runs nothing
    sys.exit(main())
