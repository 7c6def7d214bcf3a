"""lm-eval task YAMLs for slowed (installed as ``slowed.lm_eval_tasks``)."""
