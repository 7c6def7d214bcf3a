"""slowed: Slow Tuning and Low-Entropy Masking (SLowED, arXiv 2508.09666) for safe CoT distillation.

The main names are exported lazily (PEP 562), so ``import slowed.masking`` does not import TRL:

    from slowed import SLowEDConfig, SLowEDTrainer, SlowTuningCallback
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Exported name -> the module that owns it.
_EXPORTS: dict[str, str] = {
    "SLowEDConfig": "slowed.config",
    "SLowEDTrainer": "slowed.trainer",
    "SlowTuningCallback": "slowed.slow_tuning",
    "SLowEDScriptArguments": "slowed.scripts.utils",
    "load_cot_corpus": "slowed.data",
    "to_prompt_completion": "slowed.data",
}
__all__ = [
    "SLowEDConfig",
    "SLowEDScriptArguments",
    "SLowEDTrainer",
    "SlowTuningCallback",
    "__version__",
    "load_cot_corpus",
    "to_prompt_completion",
]

if TYPE_CHECKING:
    from slowed.config import SLowEDConfig
    from slowed.data import load_cot_corpus, to_prompt_completion
    from slowed.scripts.utils import SLowEDScriptArguments
    from slowed.slow_tuning import SlowTuningCallback
    from slowed.trainer import SLowEDTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slowed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
