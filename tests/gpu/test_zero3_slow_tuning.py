"""Slow Tuning under DeepSpeed ZeRO-3 with LoRA: a tiny training run whose projected norm is checked afterwards.

Needs CUDA and deepspeed (neither is installable on the CPU machines that run the regular suite). The run is
launched in a subprocess (this file as a script, one process, ZeRO-3) so DeepSpeed's process group does not
leak into the test session. After training, the LoRA factors are gathered from ZeRO-3 (the fp32 master copy
and the partitioned bf16/fp32 copy both) and ‖s·B·A‖_F is formed explicitly in float64.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TAU = 0.05
TIMEOUT_S = 400

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed ZeRO-3 check needs a CUDA GPU and the deepspeed package",
)


def _explicit_norm(factors: dict[str, torch.Tensor], scaling: float) -> float:
    """sqrt(Σ ‖s·B·A‖²) over modules, from name -> full float64 factor."""
    squares = 0.0
    for name, lora_A in factors.items():
        if "lora_A" in name:
            lora_B = factors[name.replace("lora_A", "lora_B")]
            squares += float((scaling * (lora_B @ lora_A)).square().sum())
    return math.sqrt(squares)


def _run(output_dir: Path) -> None:
    """One ZeRO-3 LoRA training with Slow Tuning; writes the measured norms to output_dir/result.json."""
    import deepspeed
    from datasets import Dataset
    from deepspeed.utils import safe_get_full_fp32_param
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import make_tiny_model, make_tiny_tokenizer

    from slowed.slow_tuning import SlowTuningCallback

    tokenizer = make_tiny_tokenizer()
    texts = [f"Let's think step by step. {i} plus {i} is {2 * i}. So the answer is ({i})." for i in range(16)]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=16)
    dataset = Dataset.from_dict({**encoded, "labels": encoded["input_ids"]})
    zero3 = {
        "zero_optimization": {"stage": 3},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "bf16": {"enabled": "auto"},
    }
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=2, learning_rate=0.05, lr_scheduler_type="constant",
        max_steps=4, save_strategy="steps", save_steps=4, logging_steps=1, bf16=True, report_to=[],
        deepspeed=zero3, disable_tqdm=True, seed=0,
    )  # fmt: skip
    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    callback = SlowTuningCallback(tau=TAU, interval="step")
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    lora = [(n, p) for n, p in trainer.model.named_parameters() if "lora_" in n]
    master = {n: safe_get_full_fp32_param(p).double().cpu() for n, p in lora}
    with deepspeed.zero.GatheredParameters([p for _, p in lora]):
        low_precision = {n: p.detach().double().cpu() for n, p in lora}
    result = {
        "norms_before": [r.norm_before for _, r in callback.history],
        "logged_after": [r.norm_after for _, r in callback.history],
        "master_norm": _explicit_norm(master, 8 / 4),
        "low_precision_norm": _explicit_norm(low_precision, 8 / 4),
    }
    (output_dir / "result.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_zero3_lora_training_stays_within_tau(tmp_path):
    env = {
        **os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()), "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert max(result["norms_before"]) > TAU, "learning rate too low to test a projection"
    assert max(result["logged_after"]) <= TAU * (1 + 1e-6)
    assert result["master_norm"] <= TAU * (1 + 1e-6)
    assert result["low_precision_norm"] <= TAU * (1 + 1e-6)


if __name__ == "__main__":
    _run(Path(sys.argv[1]))
