"""Every use of lm-eval's private or unversioned API, in one place (written against lm_eval 0.4.13).

lm-eval's command line (``lm_eval._cli.HarnessCLI``) is private: `slowed-eval` reuses it so that every lm-eval
option and subcommand keeps working, and it parses ``sys.argv`` only. The Hugging Face model's constructor
arguments (``HFLM.__init__``) tell the data loaders which ``--model_args`` keys are model arguments. When
lm-eval changes these, this module is the one to adapt.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
from collections.abc import Sequence
from typing import Any


def parse_harness_args(argv: Sequence[str], prog: str = "slowed-eval") -> tuple[Any, argparse.Namespace]:
    """Parse ``argv`` with lm-eval's own ``HarnessCLI`` (its legacy insertion of ``run`` included);
    returns (the HarnessCLI, to ``execute`` the namespace, and the namespace)."""
    from lm_eval._cli import HarnessCLI

    harness = HarnessCLI()
    saved_argv = sys.argv
    sys.argv = [prog, *argv]
    try:
        return harness, harness.parse_args()
    finally:
        sys.argv = saved_argv


@functools.cache
def hflm_parameters() -> frozenset[str]:
    """The keyword arguments of lm-eval's Hugging Face model (``HFLM.__init__``)."""
    from lm_eval.models.huggingface import HFLM

    return frozenset(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}
