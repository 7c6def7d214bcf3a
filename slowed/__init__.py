"""slowed: Slow Tuning and Low-Entropy Masking (SLowED, arXiv 2508.09666) for safe CoT distillation.

Import the pieces from their modules (``slowed.config``, ``slowed.trainer``, ...); this package
root stays light so that ``slowed.masking`` and ``slowed.slow_tuning`` import without TRL.
"""

__version__ = "0.1.0"
