"""``slowed-eval``: lm-eval's own command line with the slowed tasks included, plus three subcommands.

    slowed-eval [run|ls|validate] [lm-eval options]   lm-eval's CLI, our task folder added to --include_path
    slowed-eval --print-task-dir                      print the task folder (for lm_eval --include_path)
    slowed-eval judge  --samples S.jsonl --output R.json [--judge SPEC]
    slowed-eval report RESULTS... [--markdown M] [--csv C] [--plot P] [--labels ...]
    slowed-eval check  RESULTS [--min M=V] [--max M=V] [--baseline B --max-drop M=V] [--junit J]

lm-eval 0.4.13's CLI is argparse with subcommands ``run`` / ``ls`` / ``validate`` (a bare option list means
``run``). The slowed subcommands are dispatched on the first argument before anything reaches lm-eval, and
every lm-eval subcommand gets ``--include_path`` = [our task folder, the user's path] (lm-eval's
``TaskManager`` accepts a list; later paths win, so a user's task of the same name overrides ours).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from slowed.evaluation.tasks import TASK_DIR, include_paths


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


def run_lm_eval(argv: Sequence[str]) -> int:
    """Parse ``argv`` with lm-eval's own ``HarnessCLI`` (legacy 'run' insertion included), add our task
    folder to ``include_path`` and execute it."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    harness = HarnessCLI()
    saved_argv = sys.argv
    sys.argv = ["slowed-eval", *argv]
    try:
        args = harness.parse_args()
    finally:
        sys.argv = saved_argv
    if hasattr(args, "include_path"):
        args.include_path = include_paths(args.include_path)
    harness.execute(args)
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
