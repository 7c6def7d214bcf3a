"""The cost of a SLowED training step, paired in one process against stock TRL and a hand-written loop.

Participants (each with its own copy of the model, the same LoRA, optimizer settings and batches):

- ``stock``: `trl.SFTTrainer`, the reference;
- ``slowed_off``: `SLowEDTrainer` with every knob off (must be stock);
- ``lem``: online Low-Entropy Masking, k = 0.2;
- ``lem_st``: the same plus a Slow Tuning projection after every optimizer step (τ small enough to project);
- ``initial``: LEM with ``entropy_source="initial"`` (masks scored once before training, applied as labels);
- ``hand``: a minimal PyTorch + peft loop (forward with labels, backward, AdamW step) on the batches the stock
  trainer's dataloader yields; ``hand_lem``: the same loop computing the entropy from the full logits and
  dropping the 20% lowest-entropy tokens of each sequence (the floor for LEM).

Pairing: every trainer runs `train()` in its own thread, but a turn-taking scheduler lets exactly one
participant run at a time, one optimizer step per turn, in ABC…CBA order, round after round. A participant's
step is the interval between two of its `on_step_end` events: data fetch, forward, backward, clipping,
optimizer, scheduler, callbacks (a Slow Tuning projection), logging: everything the Trainer does per step.
Wall time (`time.perf_counter`) and the process's CPU time (`time.process_time`, all threads: only one
participant runs at a time) are both recorded. Ratios are medians over rounds of (participant / stock) in the
same round, so a load change between rounds cancels.

Where the time goes: each participant's step is split into phases (data, forward + backward, gradient clipping,
optimizer, the rest), and SLowED's own operations (keep mask, kept-token counts, the masked-count record, the
Slow Tuning projection) are timed by wrapping the library's functions; their share of the step is reported. A
torch.profiler table of one stock and one hand forward + backward (same batch) follows, by self CPU time.

Peak memory is not measured here (one process holds every participant): see bench_memory.py.

    python benchmarks/bench_training_step.py                     # embedded SmolLM2-135M, CPU, about 7 minutes
    python benchmarks/bench_training_step.py --participants stock,lem --rounds 3 --batches 4   # quick look
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from benchlib import ResultsSection, add_results_argument, markdown_table, median
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

import slowed.slow_tuning
import slowed.trainer
from slowed.config import SLowEDConfig
from slowed.data import load_cot_corpus, to_prompt_completion
from slowed.masking import low_entropy_keep_mask
from slowed.models import resolve_model_path
from slowed.trainer import SLowEDTrainer

LEM_RATIO = 0.2
PARTICIPANTS: dict[str, dict[str, Any]] = {
    "stock": {},
    "slowed_off": {"entropy_mask_ratio": 0.0},
    "lem": {"entropy_mask_ratio": LEM_RATIO},
    "lem_st": {"entropy_mask_ratio": LEM_RATIO, "slow_tuning_tau": 1e-3, "slow_tuning_interval": "step"},
    "initial": {"entropy_mask_ratio": LEM_RATIO, "entropy_source": "initial"},
    "hand": {},
    "hand_lem": {"entropy_mask_ratio": LEM_RATIO},
}
HAND_LOOPS = ("hand", "hand_lem")


# ------------------------------------------------------------------------------------------- turn taking


def synchronize() -> None:
    """Wait for queued CUDA work, so that a turn's time holds its own kernels only (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class TurnScheduler:
    """Lets one participant run at a time, in a fixed schedule, and records each turn's wall and CPU time.

    The schedule is `order` then `order` reversed, `rounds` times over (round 0 is the warm-up).
    """

    def __init__(self, order: list[str], rounds: int) -> None:
        self.schedule = [name for r in range(rounds) for name in (order if r % 2 == 0 else order[::-1])]
        self.position = 0
        self.condition = threading.Condition()
        self.turns: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.current: str | None = None
        self._started = (0.0, 0.0)

    def wait_turn(self, name: str) -> None:
        """Block until it is `name`'s turn, then start its clocks."""
        synchronize()
        with self.condition:
            self.condition.wait_for(lambda: self.schedule[self.position] == name)
        self.current = name
        self._started = (time.perf_counter(), time.process_time())

    def end_turn(self, name: str, release: bool = True) -> None:
        """Record `name`'s turn; with `release`, hand the turn to the next participant."""
        synchronize()
        wall, cpu = time.perf_counter() - self._started[0], time.process_time() - self._started[1]
        self.turns[name].append((wall, cpu))
        if release:
            self.release()

    def release(self) -> None:
        with self.condition:
            self.current = None
            self.position = min(self.position + 1, len(self.schedule) - 1)
            self.condition.notify_all()


class PhaseClock:
    """Seconds spent in named phases, per participant and turn, from wrapped callables."""

    def __init__(self, scheduler: TurnScheduler) -> None:
        self.scheduler = scheduler
        self.seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, phase: str, seconds: float) -> None:
        name = self.scheduler.current
        if name is None:
            return
        per_turn = self.seconds[name][phase]
        turn = len(self.scheduler.turns[name])
        per_turn.extend([0.0] * (turn + 1 - len(per_turn)))
        per_turn[turn] += seconds

    def wrap(self, phase: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                with torch.profiler.record_function(f"slowed_bench::{phase}"):
                    return function(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - start)

        return timed


SLOWED_OPERATIONS: dict[str, tuple[object, str]] = {
    # phase -> (owner, attribute): the library's own work inside a step
    "slowed: keep mask": (slowed.trainer, "keep_mask_by_sequence"),
    "slowed: selection scores": (slowed.trainer, "selection_scores"),
    "slowed: kept-token counts": (SLowEDTrainer, "_get_num_items_in_batch"),
    "slowed: masked-count record": (SLowEDTrainer, "_record_masked"),
    "slowed: ST projection": (slowed.slow_tuning.SlowTuningCallback, "on_step_end"),
}


def wrap_slowed_operations(clock: PhaseClock) -> list[str]:
    """Time SLowED's own operations (those present in this version of the library); returns the phases wrapped."""
    wrapped = []
    for phase, (owner, attribute) in SLOWED_OPERATIONS.items():
        if hasattr(owner, attribute):
            setattr(owner, attribute, clock.wrap(phase, getattr(owner, attribute)))
            wrapped.append(phase)
    return wrapped


class TurnCallback(TrainerCallback):
    """Makes a Trainer take turns: one optimizer step per turn, measured from one `on_step_end` to the next."""

    def __init__(self, name: str, scheduler: TurnScheduler, clock: PhaseClock) -> None:
        self.name, self.scheduler, self.clock = name, scheduler, clock
        self._optimizer_started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.scheduler.wait_turn(self.name)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_started = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.clock.add("optimizer", time.perf_counter() - self._optimizer_started)

    def on_step_end(self, args, state, control, **kwargs):
        last = state.global_step >= state.max_steps
        self.scheduler.end_turn(self.name, release=not last)
        if not last:
            self.scheduler.wait_turn(self.name)

    def on_train_end(self, args, state, control, **kwargs):
        self.scheduler.release()


# ---------------------------------------------------------------------------------------------- set-up


def training_rows(batch_size: int, batches: int, repeats: int = 1, seed: int = 0) -> Dataset:
    """`batch_size × batches` built-in corpus rows (seeded shuffle) in TRL's prompt/completion format; with
    `repeats` > 1 each completion is its rationale written `repeats` times (longer rows, e.g. 1024 tokens)."""
    rows = (
        to_prompt_completion(load_cot_corpus("builtin"))
        .shuffle(seed=seed)
        .select(range(batch_size * batches))
    )
    if repeats == 1:
        return rows

    def lengthen(row: dict[str, Any]) -> dict[str, Any]:
        message = row["completion"][0]
        return {"completion": [{**message, "content": "\n".join([message["content"]] * repeats)}]}

    return rows.map(lengthen)


def lora_config(rank: int) -> LoraConfig:
    return LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def trainer_config(name: str, args: argparse.Namespace, steps: int) -> SFTConfig:
    """The same TrainingArguments for every trainer; SLowED knobs from `PARTICIPANTS` (SFTConfig for stock)."""
    on_gpu = args.device == "cuda"
    common = {
        "output_dir": tempfile.mkdtemp(prefix=f"slowed-bench-{name}-"),
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.batch_size,
        "max_steps": steps,
        "max_length": args.max_length,
        "learning_rate": 1e-4,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": not on_gpu,
        "bf16": on_gpu,
        "train_sampling_strategy": "sequential",
        "model_init_kwargs": {"dtype": args.dtype},
    }
    if args.gradient_checkpointing != "trl-default":
        common["gradient_checkpointing"] = args.gradient_checkpointing == "on"
    if name == "stock":
        return SFTConfig(**common)
    return SLowEDConfig(**common, **PARTICIPANTS[name])


def build_trainer(name: str, args: argparse.Namespace, model_path: str, rows: Dataset, steps: int, callback):
    trainer_class = SFTTrainer if name == "stock" else SLowEDTrainer
    return trainer_class(
        model=model_path,
        args=trainer_config(name, args, steps),
        train_dataset=rows,
        peft_config=lora_config(args.rank),
        callbacks=[callback],
    )


def wrap_trainer_phases(trainer, clock: PhaseClock) -> None:
    """Time the Trainer's own phases of a step on this instance: data fetch, forward + backward, clipping, logging."""
    trainer.get_batch_samples = clock.wrap("data", trainer.get_batch_samples)
    trainer.training_step = clock.wrap("forward + backward", trainer.training_step)
    trainer._clip_grad_norm = clock.wrap("gradient clipping", trainer._clip_grad_norm)
    trainer._maybe_log_save_evaluate = clock.wrap("log/save/evaluate", trainer._maybe_log_save_evaluate)


def collated_batches(trainer, count: int, device: str) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of `trainer`'s training dataloader (collated, padded as TRL pads), on `device`."""
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append({key: value.to(device) for key, value in batch.items() if torch.is_tensor(value)})
        if len(batches) == count:
            break
    return batches


# ------------------------------------------------------------------------------------------ the hand loop


def sequence_lem_loss(logits: torch.Tensor, labels: torch.Tensor, ratio: float) -> torch.Tensor:
    """Mean NLL over the kept target tokens: the `ratio` lowest-entropy tokens of each sequence dropped.

    logits: B×T×V; labels: B×T (-100 = not a target). The entropy is taken from the full logits (detached).
    """
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    valid = targets != -100
    entropy = -(log_probs.detach().exp() * log_probs.detach()).sum(-1)
    keep = low_entropy_keep_mask(entropy, valid, ratio, "sequence")
    token_log_probs = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(token_log_probs * keep).sum() / keep.sum()


class HandLoop:
    """Minimal training loop: peft LoRA model, AdamW (fused as the Trainer's default), forward/backward/step."""

    def __init__(self, name: str, args: argparse.Namespace, model_path: str, clock: PhaseClock) -> None:
        self.name, self.clock, self.args = name, clock, args
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=args.dtype).to(args.device)
        self.model = get_peft_model(base, lora_config(args.rank))
        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0, fused=True)
        self.ratio = PARTICIPANTS[name].get("entropy_mask_ratio", 0.0)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.ratio == 0:
            return self.model(**inputs, labels=batch["labels"]).loss
        return sequence_lem_loss(self.model(**inputs).logits, batch["labels"], self.ratio)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        autocast = torch.autocast(self.args.device, dtype=torch.bfloat16, enabled=self.args.device == "cuda")
        with self.clock_phase("forward + backward"):
            with autocast:
                loss = self.loss(batch)
            loss.backward()
        with self.clock_phase("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    @contextmanager
    def clock_phase(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.args.device == "cuda":
            torch.cuda.synchronize()
        self.clock.add(phase, time.perf_counter() - start)

    def run(self, batches: list[dict[str, torch.Tensor]], steps: int, scheduler: TurnScheduler) -> None:
        scheduler.wait_turn(self.name)
        for step in range(steps):
            self.step(batches[step % len(batches)])
            last = step == steps - 1
            scheduler.end_turn(self.name, release=True)
            if not last:
                scheduler.wait_turn(self.name)


# --------------------------------------------------------------------------------------------- reporting


def real_tokens(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    """Non-padding tokens of each batch (attention mask sum)."""
    return [int(b["attention_mask"].sum()) for b in batches]


def step_rows(scheduler: TurnScheduler, order: list[str], tokens: list[int]) -> list[list[object]]:
    """Per participant: median s/step, paired wall and CPU ratios to stock, tokens/s (median over rounds)."""
    stock = scheduler.turns["stock"][1:]
    rows = []
    for name in order:
        turns = scheduler.turns[name][1:]
        wall_ratio = median([t[0] / s[0] for t, s in zip(turns, stock, strict=True)])
        cpu_ratio = median([t[1] / s[1] for t, s in zip(turns, stock, strict=True)])
        # step i (i ≥ 1: round 0 is the warm-up) trained on batch i mod len(tokens)
        rates = [tokens[(i + 1) % len(tokens)] / t[0] for i, t in enumerate(turns)]
        rows.append(
            [
                name,
                median([t[0] for t in turns]),
                median([t[1] for t in turns]),
                wall_ratio,
                cpu_ratio,
                median(rates),
            ]
        )
    return rows


def floor_rows(scheduler: TurnScheduler, order: list[str]) -> list[list[object]]:
    """Trainer tokens/s over the hand loop's, paired per round: knobs off vs ``hand``, LEM vs ``hand_lem``."""
    pairs = [
        ("stock", "hand"),
        ("slowed_off", "hand"),
        ("lem", "hand_lem"),
        ("lem_st", "hand_lem"),
        ("initial", "hand"),
    ]
    rows = []
    for trainer, loop in pairs:
        if trainer in order and loop in order:
            turns, floor = scheduler.turns[trainer][1:], scheduler.turns[loop][1:]
            rows.append(
                [f"{trainer} / {loop}", median([f[0] / t[0] for t, f in zip(turns, floor, strict=True)])]
            )
    return rows


def phase_rows(scheduler: TurnScheduler, clock: PhaseClock, order: list[str]) -> list[list[object]]:
    """Median seconds per step in each phase, and the remainder of the step (Trainer overheads)."""
    phases = ["data", "forward + backward", "gradient clipping", "optimizer", "log/save/evaluate"]
    rows = []
    for name in order:
        turns = [t[0] for t in scheduler.turns[name][1:]]
        per_phase = {p: clock.seconds[name].get(p, []) for p in phases}
        values = [median(padded(per_phase[p], len(scheduler.turns[name]))[1:]) for p in phases]
        rows.append([name, *values, median(turns) - sum(values), median(turns)])
    return rows


def padded(values: list[float], length: int) -> list[float]:
    """`values` per turn, zero-filled or cut to `length` turns (the last step's projection runs after its turn)."""
    return (values + [0.0] * length)[:length]


def slowed_share_rows(
    scheduler: TurnScheduler, clock: PhaseClock, order: list[str], wrapped: list[str]
) -> list[list[object]]:
    """Per SLowED participant: median ms per step in each of SLowED's own operations and their share of the step."""
    rows = []
    for name in order:
        if name == "stock" or name in HAND_LOOPS:
            continue
        count = len(scheduler.turns[name])
        own = [padded(clock.seconds[name].get(p, []), count)[1:] for p in wrapped]
        totals = [sum(values) for values in zip(*own, strict=True)]
        walls = [t[0] for t in scheduler.turns[name][1:]]
        share = median([total / wall for total, wall in zip(totals, walls, strict=True)])
        rows.append([name, *(f"{1e3 * median(values):.2f}" for values in own), f"{100 * share:.2f}%"])
    return rows


def profile_table(stock, hand: HandLoop | None, batch: dict[str, torch.Tensor], top: int) -> str:
    """torch.profiler: the top ops by self CPU time of one forward + backward, stock trainer and hand loop."""
    from torch.profiler import ProfilerActivity, profile

    def stock_step() -> None:
        model = stock.model
        model.train()
        loss = stock.compute_loss(
            model, dict(batch), num_items_in_batch=(batch["labels"][:, 1:] != -100).sum()
        )
        loss.backward()
        model.zero_grad(set_to_none=True)

    def hand_step() -> None:
        hand.loss(batch).backward()
        hand.optimizer.zero_grad(set_to_none=True)

    parts = []
    for label, step in (("stock SFTTrainer.compute_loss", stock_step), ("hand loop", hand_step)):
        if label == "hand loop" and hand is None:
            continue
        step()  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        averages = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in averages)
        rows = [
            [
                e.key[:60],
                e.count,
                f"{e.self_cpu_time_total / 1e3:.1f}",
                f"{100 * e.self_cpu_time_total / total:.1f}%",
            ]
            for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]
        ]
        parts.append(
            f"{label}: forward + backward, total self CPU {total / 1e3:.0f} ms\n\n"
            + markdown_table(["op", "calls", "self CPU ms", "share"], rows)
        )
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> ResultsSection:
    section = ResultsSection(
        path=args.results, title="Training step, paired in one process (bench_training_step.py)"
    )
    order = args.participants.split(",")
    unknown = set(order) - set(PARTICIPANTS)
    if unknown or "stock" not in order:
        raise SystemExit(
            f"--participants: need 'stock' and names from {', '.join(PARTICIPANTS)}; got {order}"
        )
    torch.manual_seed(0)
    model_path = resolve_model_path(args.model)
    rows = training_rows(args.batch_size, args.batches, args.row_repeats)
    steps = args.rounds + 1  # round 0 is the warm-up
    scheduler = TurnScheduler(order, steps)
    clock = PhaseClock(scheduler)
    wrapped = wrap_slowed_operations(clock)
    trainers = {}
    for name in order:
        if name not in HAND_LOOPS:
            trainers[name] = build_trainer(
                name, args, model_path, rows, steps, TurnCallback(name, scheduler, clock)
            )
            wrap_trainer_phases(trainers[name], clock)
    batches = collated_batches(trainers["stock"], args.batches, args.device)
    hands = {name: HandLoop(name, args, model_path, clock) for name in order if name in HAND_LOOPS}
    threads = [threading.Thread(target=t.train, name=n) for n, t in trainers.items()]
    threads += [
        threading.Thread(target=h.run, args=(batches, steps, scheduler), name=n) for n, h in hands.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    tokens = real_tokens(batches)
    padding = 1 - sum(tokens) / sum(b["attention_mask"].numel() for b in batches)
    section.add(
        f"Model `{args.model}` ({args.dtype}, {args.device}), LoRA r={args.rank} α={2 * args.rank} on all linear layers, "
        f"AdamW (fused) lr 1e-4, trainers' gradient checkpointing {trainers['stock'].args.gradient_checkpointing} "
        f"(`--gradient-checkpointing {args.gradient_checkpointing}`; the hand loop never checkpoints), {args.batches} batches of {args.batch_size} built-in rows (≤ {args.max_length} tokens, "
        f"{median(tokens):.0f} real tokens per batch, {100 * padding:.1f}% of the padded batch is padding), "
        f"{args.rounds} measured rounds after 1 warm-up round, order {' '.join(order)} then reversed; "
        f"torch threads {torch.get_num_threads()}. Ratios are medians over rounds of the per-round ratio."
    )
    section.add(
        "Step cost (target: SLowED participants ≤ 1.03 × stock):\n\n"
        + markdown_table(
            ["participant", "s/step wall", "s/step CPU", "× stock wall", "× stock CPU", "tokens/s"],
            step_rows(scheduler, order, tokens),
        )
    )
    floor = floor_rows(scheduler, order)
    if floor:
        section.add(
            "Against the floor, tokens/s of the trainer over the hand loop's (target ≥ 0.95):\n\n"
            + markdown_table(["pair", "ratio"], floor)
        )
    section.add(
        "Where a step's wall time goes (median seconds per step; 'rest' = the step minus the phases: scheduler, "
        "callbacks, `_track_num_input_tokens`, flops counting, zero_grad, the loop itself):\n\n"
        + markdown_table(
            ["participant", "data", "fwd + bwd", "clip", "optimizer", "log/save/eval", "rest", "step"],
            phase_rows(scheduler, clock, order),
        )
    )
    section.add(
        "SLowED's own operations (median ms per step; share of the step, target ≤ 2%):\n\n"
        + markdown_table(
            ["participant", *wrapped, "share of step"], slowed_share_rows(scheduler, clock, order, wrapped)
        )
    )
    if args.profile_top:
        section.add(profile_table(trainers["stock"], hands.get("hand"), batches[0], args.profile_top))
    return section


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="embedded:smollm2-135m", help="a model path, hub id or embedded:smollm2-135m"
    )
    parser.add_argument("--participants", default=",".join(PARTICIPANTS))
    add_batch_arguments(parser, batches=6)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (≥ 5 for the paired medians)")
    parser.add_argument("--profile-top", type=int, default=12, help="rows of the profiler table; 0 skips it")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_results_argument(parser)
    args = parser.parse_args(argv)
    args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    return args


def add_batch_arguments(parser: argparse.ArgumentParser, batches: int) -> None:
    """The batch shape, LoRA rank and checkpointing options shared by this benchmark and bench_memory.py."""
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=batches, help="distinct batches, cycled")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--row-repeats", type=int, default=1, help="write each rationale N times (longer rows)"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        choices=("trl-default", "on", "off"),
        default="trl-default",
        help="trainers only (TRL's SFTConfig turns it on by default; the hand loop never checkpoints)",
    )


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    run(args).write()


if __name__ == "__main__":
    main()
