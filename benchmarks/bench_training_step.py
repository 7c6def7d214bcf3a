"""Training-step cost of SLowED against stock `trl.SFTTrainer`, measured as ratios in one run.

Each variant trains in its own subprocess (clean peak memory) on the same model, data and seed:

- ``stock``: `trl.SFTTrainer`, the reference;
- ``slowed_off``: `SLowEDTrainer` with k = 0 and τ = None (must cost the same as stock);
- ``lem_online``: online Low-Entropy Masking, k = 0.2 (mask from the fused head's entropy: no second
  forward pass, no B×T×V tensor, so the target is a step-time ratio close to 1.0);
- ``lem_online_st_step``: the same plus Slow Tuning projected after every optimizer step (the
  worst case; the default interval is once per epoch).

Reported per variant: median seconds per optimizer step (after warm-up steps), the median over steps
of its time divided by stock's time on the same step (same batches, same order), and peak memory
(CUDA: max allocated; CPU: the process's peak resident set size, which includes the model load) as a
ratio to ``stock``. Results go to a Markdown table (``--output``) and a JSON file.

    python benchmarks/bench_training_step.py                       # embedded SmolLM2-135M, CPU
    python benchmarks/bench_training_step.py --model Qwen/Qwen2.5-1.5B-Instruct --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, dict[str, object]] = {
    "stock": {},
    "slowed_off": {"entropy_mask_ratio": 0.0},
    "lem_online": {"entropy_mask_ratio": 0.2},
    "lem_online_st_step": {
        "entropy_mask_ratio": 0.2,
        "slow_tuning_tau": 0.05,
        "slow_tuning_interval": "step",
    },
}


def run_variant(args: argparse.Namespace) -> dict[str, object]:
    """Train one variant in this process and return its measurements."""
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from slowed.config import SLowEDConfig
    from slowed.data import load_cot_corpus, to_prompt_completion
    from slowed.models import resolve_model_path
    from slowed.trainer import SLowEDTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            self._start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self._start)

    use_cuda = torch.cuda.is_available()
    common = {
        "output_dir": tempfile.mkdtemp(prefix="slowed-bench-"),
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.warmup_steps + args.steps,
        "max_length": args.max_length,
        "learning_rate": 1e-4,
        "logging_steps": 1_000_000,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": not use_cuda,
        "bf16": use_cuda,
        "dataloader_num_workers": 0,
    }
    settings = VARIANTS[args.variant]
    config = SFTConfig(**common) if args.variant == "stock" else SLowEDConfig(**common, **settings)
    trainer_class = SFTTrainer if args.variant == "stock" else SLowEDTrainer
    dataset = to_prompt_completion(load_cot_corpus("builtin"))
    timer = StepTimer()
    trainer = trainer_class(
        model=resolve_model_path(args.model),
        args=config,
        train_dataset=dataset,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
        callbacks=[timer],
    )
    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = timer.times[args.warmup_steps :]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if use_cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "variant": args.variant,
        "settings": settings,
        "seconds_per_step": statistics.median(measured),
        "step_times": measured,
        "peak_memory_mib": peak,
        "memory_kind": "cuda_max_allocated" if use_cuda else "cpu_peak_rss",
    }


def markdown(results: list[dict[str, object]], header: str) -> str:
    stock = next(r for r in results if r["variant"] == "stock")
    lines = [
        header,
        "",
        "| variant | settings | s/step (median) | × stock (paired median) | peak MiB | × stock |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        # Every variant sees the same batches in the same order: step i of a variant is compared with step i
        # of stock, which cancels the batch-length variation between steps.
        paired = statistics.median(t / s for t, s in zip(r["step_times"], stock["step_times"], strict=True))
        lines.append(
            f"| {r['variant']} | {json.dumps(r['settings'])} | {r['seconds_per_step']:.3f} "
            f"| {paired:.3f} | {r['peak_memory_mib']:.0f} | {r['peak_memory_mib'] / stock['peak_memory_mib']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--output", default="benchmarks/results/training_step.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.variant:  # child process: one variant
        Path(args.result_file).write_text(json.dumps(run_variant(args)))
        return

    results = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"--variants: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            result_file = handle.name
        child = [sys.executable, __file__, "--variant", variant, "--result-file", result_file]
        child += [
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
        ]
        child += ["--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps)]
        subprocess.run(child, check=True)
        results.append(json.loads(Path(result_file).read_text()))
        os.remove(result_file)
        print(f"{variant}: {results[-1]['seconds_per_step']:.3f} s/step", flush=True)

    header = (
        f"### {time.strftime('%Y-%m-%d')} — {args.model}, batch {args.batch_size} × ≤{args.max_length} tokens, "
        f"LoRA r=16 all-linear, {args.steps} measured steps after {args.warmup_steps} warm-up "
        f"({platform.machine()}, {os.cpu_count()} CPUs, torch threads default)"
    )
    table = markdown(results, header)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(table)


if __name__ == "__main__":
    main()
