"""``python -m slowed.evaluation`` = ``slowed-eval``."""

import sys

from slowed.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
