"""Helper for tests/test_distributed.py: one tiny LEM + Slow Tuning training run, recorded per process.

Run it under ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_run.py OUT PER_DEVICE
ROWS [ROWS ...]`` (gloo data parallelism on CPU; one training per ROWS, in one process group) or call
`train_and_record` in-process for the single-process reference. (``accelerate launch --num_processes 2 --cpu``
starts a single process here, accelerate 1.15, so the test uses torch's launcher, which accelerate wraps.)
Each process writes ``OUT/rows{ROWS}/rank{r}.pt`` with: the per-sequence eligible-token counts of every training micro-batch it saw (by optimizer
step), a copy of the LoRA weights after every Slow Tuning projection, the logged masked fractions, the projection
history and the final LoRA weights.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_trainer import lora_config, make_args, make_dataset, sharp_model
from tiny_models import make_tiny_tokenizer

from slowed.config import SLowEDConfig
from slowed.trainer import MASKED_FRACTION_KEY, SLowEDTrainer

RATIO = 0.2
TAU = 0.02  # binds from the first step at this learning rate


def lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


class _RecordingTrainer(SLowEDTrainer):
    """SLowEDTrainer that notes each training micro-batch's per-sequence eligible counts (labels[:, 1:] != -100)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[int, list[int]]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            eligible = (inputs["labels"][:, 1:] != -100).sum(dim=1).tolist()
            self.batches.append((self.state.global_step + 1, eligible))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class _AfterProjection(TrainerCallback):
    """Copies the LoRA weights whenever Slow Tuning projected at this step (added after its callback)."""

    def __init__(self, trainer: SLowEDTrainer) -> None:
        self.trainer, self.snapshots = trainer, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        history = self.trainer.slow_tuning.history
        if history and history[-1][0] == state.global_step:
            self.snapshots[state.global_step] = lora_weights(model)


def train_and_record(output_dir: Path, rows: int, per_device: int) -> dict[str, Any]:
    """Train one epoch over `rows` rows at `per_device` rows per process; return (and save) this process's record."""
    tokenizer = make_tiny_tokenizer()
    args = make_args(
        SLowEDConfig,
        output_dir / "trainer",
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=per_device,
        learning_rate=2e-2,
        entropy_mask_ratio=RATIO,
        slow_tuning_tau=TAU,
        slow_tuning_interval="step",
        ddp_timeout=60,
    )
    trainer = _RecordingTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=make_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    after_projection = _AfterProjection(trainer)
    trainer.add_callback(after_projection)
    trainer.train()
    record = {
        "batches": trainer.batches,
        "snapshots": after_projection.snapshots,
        "fractions": [
            (e["step"], e[MASKED_FRACTION_KEY]) for e in trainer.state.log_history if MASKED_FRACTION_KEY in e
        ],
        "projections": [(step, r.norm_before, r.norm_after) for step, r in trainer.slow_tuning.history],
        "final": lora_weights(trainer.model),
        "world_size": trainer.accelerator.num_processes,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save(record, output_dir / f"rank{trainer.accelerator.process_index}.pt")
    return record


def main() -> None:
    output_dir, per_device, *row_counts = sys.argv[1:]
    try:
        for rows in row_counts:
            train_and_record(Path(output_dir) / f"rows{rows}", int(rows), int(per_device))
    finally:
        # Leave no process waiting on a peer at exit: tear the gloo group down explicitly.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
