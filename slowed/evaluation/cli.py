"""``slowed-eval``: lm-eval's own command line with the slowed tasks included, plus three subcommands.

    slowed-eval [run|ls|validate] [lm-eval options]   lm-eval's CLI, our task folder added to --include_path
    slowed-eval --print-task-dir                      print the task folder (for lm_eval --include_path)
    slowed-eval judge  --samples S.jsonl --output R.json [--judge SPEC]
    slowed-eval report RESULTS... [--markdown M] [--csv C] [--plot P] [--labels ...]
    slowed-eval check  RESULTS [--min M=V] [--max M=V] [--baseline B --max-drop M=V] [--junit J] [--allow-limit]

lm-eval 0.4.13's CLI is argparse with subcommands ``run`` / ``ls`` / ``validate`` (a bare option list means
``run``). The slowed subcommands are dispatched on the first argument before anything reaches lm-eval, and
every lm-eval subcommand gets ``--include_path`` = [our task folder, the user's path] (lm-eval's
``TaskManager`` accepts a list; later paths win, so a user's task of the same name overrides ours).
After a run, the judge, training and data records are added to its results file (see :func:`run_lm_eval`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from slowed.evaluation.lm_eval_compat import parse_harness_args
from slowed.evaluation.records import attach_slowed_records, snapshot, task_metadata
from slowed.evaluation.results import output_folder
from slowed.evaluation.tasks import TASK_DIR, include_paths
from slowed.models import resolve_model_args


def _judge(argv: Sequence[str]) -> int:
    from slowed.evaluation.rejudge import main

    return main(argv)


def _report(argv: Sequence[str]) -> int:
    from slowed.evaluation.report import main

    return main(argv)


def _check(argv: Sequence[str]) -> int:
    from slowed.evaluation.check import main

    return main(argv)


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"judge": _judge, "report": _report, "check": _check}

_HELP = """\
slowed-eval: lm-eval-harness with the slowed tasks (slowed, slowed_safety, slowed_id, slowed_ood, ...)

  slowed-eval --model hf --model_args pretrained=M,peft=ADAPTER --tasks slowed --apply_chat_template ...
  slowed-eval --print-task-dir        the task folder, for: lm_eval --include_path "$(slowed-eval --print-task-dir)"
  slowed-eval judge  -h               re-judge a --log_samples file of slowed_safety with another judge
  slowed-eval report -h               the paper's table (and CSV / plot) over results files
  slowed-eval check  -h               pass/fail gate on thresholds and baseline drops (exit 0 / 1 / 2)

Every other argument is lm-eval's (below).
"""


def parse_lm_eval_args(argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    """Parse ``argv`` with lm-eval's own ``HarnessCLI`` (its legacy insertion of ``run`` included) and put
    our task folder in front of the user's ``--include_path``; ``pretrained=embedded:smollm2-135m`` in
    ``--model_args`` becomes the embedded student's local path. Returns (the HarnessCLI, the namespace)."""
    harness, args = parse_harness_args(argv)
    if hasattr(args, "include_path"):
        args.include_path = include_paths(args.include_path)
    if isinstance(getattr(args, "model_args", None), dict):
        args.model_args = resolve_model_args(args.model_args)
    return harness, args


def run_lm_eval(argv: Sequence[str]) -> int:
    """Run lm-eval's CLI on ``argv`` with the slowed tasks included (:func:`parse_lm_eval_args`). The results
    file this run writes gets ``slowed_judges`` (each safety judge that ran here: its ``describe()`` and label
    counts), ``slowed_training`` and ``slowed_data`` (see :mod:`slowed.evaluation.records`)."""
    from lm_eval.utils import setup_logging

    from slowed.evaluation.files import GENERATIONS_DIR_ENV, generations_dir

    setup_logging()
    harness, args = parse_lm_eval_args(argv)
    output_path = getattr(args, "output_path", None)
    if output_path and not os.environ.get(GENERATIONS_DIR_ENV, "").strip():
        # Saved generations and judge sidecars land next to lm-eval's own results.
        os.environ[GENERATIONS_DIR_ENV] = str(output_folder(output_path) / "slowed-generations")
    before = snapshot(output_path, generations_dir()) if output_path else None
    harness.execute(args)
    if before is not None:
        model_args = getattr(args, "model_args", None)
        metadata = task_metadata(model_args, getattr(args, "metadata", None))
        attach_slowed_records(before, output_path, model_args, metadata)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``slowed-eval`` and ``python -m slowed.evaluation``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--print-task-dir"]:
        print(TASK_DIR)
        return 0
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(_HELP)
    return run_lm_eval(argv)
