"""The offline safety study in one command: train every arm on the testbed, evaluate each epoch, write RESULTS.md.

    python studies/offline_safety/run.py --preset quick      # ≤ 20 min on 2 cores: Std-CoT vs SLowED
    python studies/offline_safety/run.py --preset full       # ≈ 3 h on 2 cores: every arm, the τ sweep, controls

Resumable: the records of finished units are kept (in --runs-dir, default studies/offline_safety/runs/<preset>),
so a killed or --stop-after run continues where it stopped; checkpoints live in --work-dir (default
$SLOWED_CACHE/study/<preset>) and are retrained deterministically when missing. See README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import REPO_ROOT, StopRequested, Study, StudyError, load_preset, log


def default_work_dir(preset_name: str) -> Path:
    cache = os.environ.get("SLOWED_CACHE") or str(Path.home() / ".cache" / "slowed")
    return Path(cache).expanduser() / "study" / preset_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studies/offline_safety/run.py",
        description="Offline safety study of SLowED on the safety-aligned testbed (see README.md).",
    )
    parser.add_argument(
        "--preset", default="quick", help="'quick', 'full' or a preset YAML path (default quick)"
    )
    parser.add_argument(
        "--runs-dir", help="records, RESULTS.md, plots (default studies/offline_safety/runs/<preset>)"
    )
    parser.add_argument(
        "--work-dir", help="corpus, checkpoints, generations (default $SLOWED_CACHE/study/<preset>)"
    )
    parser.add_argument("--model", help="override the preset's model (alias, hub id or local directory)")
    parser.add_argument("--data-dir", help="override the preset's data_dir (the ../shared/data layout)")
    parser.add_argument(
        "--stop-after", type=int, help="stop (exit 3) after this many units of work; run again to continue"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the recipe script in this interpreter (runpy) instead of a subprocess: same command line, "
        "less start-up time (tiny runs, tests)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads here and OMP_NUM_THREADS for the training subprocesses (default: torch's own). On a "
        "machine shared with other jobs use 1: measured with 2 cores at load 7, greedy generation took 6.8 s "
        "with 1 thread and 43 s with 2",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate RESULTS.md from the records"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        raise SystemExit("--stop-after: a positive number of units")
    if args.threads is not None and args.threads < 1:
        raise SystemExit("--threads: a positive number of threads")
    try:
        preset = load_preset(args.preset)
    except StudyError as error:
        raise SystemExit(f"error: {error}") from None
    runs_dir = (
        Path(args.runs_dir)
        if args.runs_dir
        else REPO_ROOT / "studies" / "offline_safety" / "runs" / preset["name"]
    )
    runs_dir = runs_dir.resolve()
    if args.report_only:
        from report import write_report

        print(write_report(runs_dir))
        return 0
    work_dir = (
        (Path(args.work_dir) if args.work_dir else default_work_dir(preset["name"])).expanduser().resolve()
    )
    if work_dir == runs_dir or runs_dir in work_dir.parents:
        raise SystemExit(
            f"error: --work-dir {work_dir} must not be inside --runs-dir {runs_dir} (checkpoints are large)"
        )
    study = Study(
        preset,
        runs_dir,
        work_dir,
        stop_after=args.stop_after,
        in_process=args.in_process,
        model=args.model,
        data_dir=args.data_dir,
        threads=args.threads,
    )
    try:
        results = study.run()
    except StopRequested as stop:
        log(f"{stop}; run the same command again to continue")
        return 3
    except StudyError as error:
        raise SystemExit(f"error: {error}") from None
    log(f"done: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
