"""Peak memory of SLowED training against stock `trl.SFTTrainer` and the hand loop, in paired subprocesses.

Memory cannot be separated between participants that share one process, so each measurement is its own
subprocess, run in ABC…CBA order (`--repeats` times): it builds the participant exactly as
bench_training_step.py does (same model, LoRA, batches), then resets the kernel's peak-RSS counter
(``/proc/self/clear_refs`` ← 5, Linux) so that the peak excludes loading the model and preparing the data,
trains `--steps` optimizer steps, and reads ``VmHWM`` (peak resident set) from ``/proc/self/status``.
On CUDA it reports ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the same point.

Reported: the peak after loading (absolute) and the increase over the resident set at the reset (the
training's own memory), each as a ratio to stock. Target: SLowED ≤ 1.02 × stock.

    python benchmarks/bench_memory.py                            # stock, lem_st, initial, hand: about 7 minutes
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import bench_training_step as step
import torch
from benchlib import ResultsSection, add_results_argument, markdown_table, median
from transformers import TrainerCallback


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1))


def reset_peak() -> float:
    """Reset the peak counter; returns the memory in use now (MiB): RSS on CPU, allocated on CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") / 1024


def peak() -> float:
    """Peak since `reset_peak` (MiB): VmHWM on CPU, max allocated on CUDA."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_kib("VmHWM") / 1024


def measure_one(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Build `name`, reset the peak, train `args.steps` steps; memory at the reset and the peak (MiB)."""
    model_path = step.resolve_model_path(args.model)
    rows = step.training_rows(args.batch_size, args.batches, args.row_repeats)
    if name in step.HAND_LOOPS:
        stock = step.build_trainer("stock", args, model_path, rows, args.steps, TrainerCallback())
        batches = step.collated_batches(stock, args.batches, args.device)
        del stock
        clock = step.PhaseClock(step.TurnScheduler([name], 1))
        loop = step.HandLoop(name, args, model_path, clock)
        at_reset = reset_peak()
        for i in range(args.steps):
            loop.step(batches[i % len(batches)])
    else:
        trainer = step.build_trainer(name, args, model_path, rows, args.steps, TrainerCallback())
        at_reset = reset_peak()
        trainer.train()
    return {"at_reset": at_reset, "peak": peak()}


def run(args: argparse.Namespace) -> ResultsSection:
    section = ResultsSection(path=args.results, title="Peak memory, paired subprocesses (bench_memory.py)")
    order = args.participants.split(",")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in order}
    for repeat in range(args.repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            child = [sys.executable, __file__, "--child", name, *sys.argv[1:]]
            output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(output.strip().splitlines()[-1]))
            print(name, results[name][-1], flush=True)
    stock_peak = median([r["peak"] for r in results["stock"]])
    stock_increase = median([r["peak"] - r["at_reset"] for r in results["stock"]])
    rows = []
    for name in order:
        at_reset = median([r["at_reset"] for r in results[name]])
        top = median([r["peak"] for r in results[name]])
        increase = median([r["peak"] - r["at_reset"] for r in results[name]])
        rows.append(
            [
                name,
                f"{at_reset:.0f}",
                f"{top:.0f}",
                f"{top / stock_peak:.3f}",
                f"{increase:.0f}",
                f"{increase / stock_increase:.3f}",
            ]
        )
    kind = "CUDA max allocated" if torch.cuda.is_available() else "peak RSS (VmHWM)"
    section.add(
        f"Model `{args.model}` ({args.dtype}), LoRA r={args.rank}, {args.batches} batches of {args.batch_size} built-in rows "
        f"(≤ {args.max_length} tokens), gradient checkpointing `{args.gradient_checkpointing}`, {args.steps} optimizer steps per subprocess, {args.repeats} subprocesses per "
        f"participant (medians). Memory: {kind}, counter reset after the model and data are loaded. Target: ≤ 1.02 × stock."
    )
    section.add(
        markdown_table(
            ["participant", "MiB at reset", "peak MiB", "× stock", "peak − at reset MiB", "× stock"], rows
        )
    )
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--participants", default="stock,lem_st,initial,hand")
    step.add_batch_arguments(parser, batches=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_results_argument(parser)
    args = parser.parse_args(argv)
    args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.child:
        print(json.dumps(measure_one(args.child, args)))
        return
    run(args).write()


if __name__ == "__main__":
    main()
