"""Evaluation: the slowed lm-eval tasks, `slowed-eval` CLI, reports and the CI regression check.

`evaluate` wraps `lm_eval.simple_evaluate` with the slowed task folder; lm-eval is imported on first call.
"""

from slowed.evaluation.api import evaluate, metrics_from_results

__all__ = ["evaluate", "metrics_from_results"]
