import sys

from ate_core.eval.cli import main

sys.exit(main())
