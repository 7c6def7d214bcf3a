"""One evaluation run against two: `slowed-eval --tasks slowed` versus safety and reasoning as separate runs.

The usual setup without this plugin runs safety (AdvBench + a judge) and reasoning (lm-eval) as separate
invocations, each loading the student. Here both sides use the same CLI, model, data and settings:

- one run: ``slowed-eval --tasks slowed``;
- separate runs: ``slowed-eval --tasks slowed_safety,slowed_xstest`` then ``slowed-eval --tasks slowed_id,slowed_ood``.

When ``SLOWED_DATA_DIR`` has no ``bbsub`` folder (the shared data here has none), both sides list the leaves of
``slowed`` without BB-Sub instead of the groups.

Each invocation is its own subprocess; model loads are counted by wrapping
``transformers.PreTrainedModel.from_pretrained`` inside it. The sides alternate (one, separate, one,
separate, … `--repeats` times) and the wall-time ratio is the median over repeats. With a small ``--limit``
and few generated tokens this measures the fixed costs (imports, task building, model loads), which is what
a second invocation repeats.

    SLOWED_CACHE=/tmp/fresh_cache SLOWED_DATA_DIR=../shared/data python benchmarks/bench_eval.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchlib import ResultsSection, add_results_argument, markdown_table, median

LOADS_MARKER = "SLOWED_BENCH_MODEL_LOADS="
ONE_RUN = "one run"
SEPARATE = "separate runs (safety; reasoning)"
SAFETY = "slowed_safety,slowed_xstest"
REASONING_WITHOUT_BBSUB = "slowed_id,slowed_agieval,slowed_arc_easy,slowed_arc_challenge"


def sides(with_bbsub: bool) -> dict[str, list[str]]:
    """Side -> the `--tasks` value of each of its invocations. Without BB-Sub (absent from the local data), the
    `slowed` group's leaves are listed instead of the groups that contain it."""
    if with_bbsub:
        return {ONE_RUN: ["slowed"], SEPARATE: [SAFETY, "slowed_id,slowed_ood"]}
    return {ONE_RUN: [f"{SAFETY},{REASONING_WITHOUT_BBSUB}"], SEPARATE: [SAFETY, REASONING_WITHOUT_BBSUB]}


def local_data_has_bbsub() -> bool:
    """False when SLOWED_DATA_DIR points at a directory without a ``bbsub`` folder (the hub is used otherwise)."""
    data_dir = os.environ.get("SLOWED_DATA_DIR", "").strip()
    return not data_dir or os.path.isdir(os.path.join(data_dir, "bbsub"))


def count_loads_and_run(argv: list[str]) -> None:
    """Run `slowed-eval argv` in this process, counting `from_pretrained` calls of model classes."""
    from transformers import PreTrainedModel

    from slowed.evaluation.cli import main

    loads = [0]
    original = PreTrainedModel.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads[0] += 1
        return original(cls, *args, **kwargs)

    PreTrainedModel.from_pretrained = classmethod(counted)
    status = main(argv)
    print(f"{LOADS_MARKER}{loads[0]}", flush=True)
    sys.exit(status)


def invocation(tasks: str, args: argparse.Namespace, output: str) -> tuple[float, int]:
    """(wall seconds, model loads) of one `slowed-eval` subprocess over `tasks`."""
    command = [sys.executable, __file__, "--child", "--model", "hf"]
    command += ["--model_args", f"pretrained={args.model}", "--tasks", tasks, "--limit", str(args.limit)]
    command += ["--gen_kwargs", f"max_gen_toks={args.max_gen_toks}", "--batch_size", str(args.batch_size)]
    command += ["--apply_chat_template", "--output_path", output]
    environment = {**os.environ, "SLOWED_JUDGE": "keywords"}
    start = time.perf_counter()
    finished = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - start
    loads = next(line for line in finished.stdout.splitlines() if line.startswith(LOADS_MARKER))
    return seconds, int(loads[len(LOADS_MARKER) :])


def run(args: argparse.Namespace) -> ResultsSection:
    section = ResultsSection(path=args.results, title="One evaluation run against two (bench_eval.py)")
    task_lists_by_side = sides(local_data_has_bbsub())
    measured: dict[str, list[tuple[float, int]]] = {side: [] for side in task_lists_by_side}
    with tempfile.TemporaryDirectory(prefix="slowed-bench-eval-") as folder:
        for repeat in range(args.repeats):
            for side, task_lists in task_lists_by_side.items():
                runs = [
                    invocation(tasks, args, os.path.join(folder, f"{repeat}-{i}"))
                    for i, tasks in enumerate(task_lists)
                ]
                measured[side].append((sum(s for s, _ in runs), sum(n for _, n in runs)))
                print(side, json.dumps(measured[side][-1]), flush=True)
    one = measured[ONE_RUN]
    rows = []
    for side, values in measured.items():
        ratio = median([v[0] / o[0] for v, o in zip(values, one, strict=True)])
        rows.append(
            [side, len(task_lists_by_side[side]), median([v[0] for v in values]), ratio, values[0][1]]
        )
    section.add(
        f"Model `{args.model}` (hf backend, CPU), `--limit {args.limit}` per task, `max_gen_toks={args.max_gen_toks}`, "
        f"batch size {args.batch_size}, keyword judge (`SLOWED_JUDGE=keywords`), data from `SLOWED_DATA_DIR`; "
        f"{args.repeats} alternating repeats, medians."
    )
    section.add(
        markdown_table(["side", "invocations", "wall s", "× one run", "model loads"], rows)
        + "\n\n`--tasks` per invocation: "
        + "; ".join(
            f"{side}: " + " then ".join(f"`{t}`" for t in lists) for side, lists in task_lists_by_side.items()
        )
    )
    return section


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        count_loads_and_run(argv[1:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--max-gen-toks", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="alternating repeats (about 8 minutes each)")
    add_results_argument(parser)
    run(parser.parse_args(argv)).write()


if __name__ == "__main__":
    main()
