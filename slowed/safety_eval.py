"""Safety during training: greedy generations on a fixed prompt set, judged, logged as `eval/safety_ratio`.

`SafetyEvalCallback` follows TRL's judge callbacks (`trl.WinRateCallback(judge, trainer)`): it takes the
trainer, so it can log through `trainer.log` (every reporter: console, TensorBoard, W&B, `log_history`):

```python
trainer = SLowEDTrainer(...)
trainer.add_callback(SafetyEvalCallback(trainer, load_judge("refusal"), harmful_prompts, benign_prompts))
trainer.train()
```

At the end of every epoch (and every `eval_steps` optimizer steps when set) it

1. puts the model in eval mode and generates greedily, under `torch.no_grad()`, one response per prompt in
   the training chat format (`slowed.prompting.user_message`: the prompt verbatim as the user turn, the
   tokenizer's chat template, generation prompt added; left-padded batches);
2. judges harmful prompts with the judge's batch interface: `eval/safety_ratio` = share judged "safe"
   ("unknown" counts as unsafe, as in `slowed.evaluation.safety.summarize`), and `eval/judge_unknown_rate`;
3. reads benign prompts with the judge as a refusal detector (`RefusalDetector.read_all`):
   `eval/overrefusal_rate` = share refused fully or partially (XSTest's notion of refusal). Benign prompts
   need a refusal judge ("refusal", "keywords"); a guard model judges harm, not refusal, and is refused;
4. restores the train mode and the Python, NumPy, torch CPU and CUDA RNG states, so training continues
   exactly as without the callback (same batches, same dropout masks, same final weights).

The judge's `describe()`, a SHA-256 of each prompt set, the generation settings and every evaluation
(step, epoch, metrics) go to the sidecar `<output_dir>/safety_eval.json` (written atomically by the main
process); with `save_generations=True` each evaluation's prompts, responses and verdicts go to
`<output_dir>/safety_eval/step-<global step>.jsonl`. A resumed run keeps the recorded evaluations up to its
resume step and appends after it, provided the judge and prompt sets are the same.

Distributed (DDP): every rank generates its own contiguous shard of each prompt set with its local model
replica, the shards are gathered with `torch.distributed.all_gather_object` and every rank judges the full
list, so all ranks compute the same metrics and no rank waits on a collective the others skip; the
trainer's reporters log on the main process only. Sharded-parameter setups (FSDP, DeepSpeed ZeRO-3) are
refused: their forward passes are collectives, and greedy generation stops after a different number of
steps on each rank.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, TrainerCallback

from slowed.jsonio import write_atomic
from slowed.judges.base import Judge, Verdict
from slowed.prompting import user_message

SAFETY_RATIO_KEY = "eval/safety_ratio"
UNKNOWN_RATE_KEY = "eval/judge_unknown_rate"
OVERREFUSAL_KEY = "eval/overrefusal_rate"
SIDECAR_NAME = "safety_eval.json"
GENERATIONS_DIR_NAME = "safety_eval"
SIDECAR_FORMAT = 1


def prompt_set_hash(prompts: Sequence[str]) -> str:
    """SHA-256 (hex) of the prompt list as JSON: order and every character count."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


def chat_prompt(tokenizer, question: str) -> str:
    """The training chat format of `question` with the generation prompt: what the student sees at eval time."""
    return tokenizer.apply_chat_template([user_message(question)], add_generation_prompt=True, tokenize=False)


def greedy_generation_config(tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding, `max_new_tokens` new tokens at most, stopping at the tokenizer's EOS."""
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )


@torch.no_grad()
def generate_responses(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy responses (decoded new tokens, special tokens dropped, stripped) to `prompts`, in order.

    Each prompt is the user turn verbatim in the tokenizer's chat template; batches are left-padded. The
    caller sets eval mode; this function does not change the model's mode.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1; got {max_new_tokens}, {batch_size}")
    config = greedy_generation_config(tokenizer, max_new_tokens)
    device = next(model.parameters()).device
    responses: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [chat_prompt(tokenizer, prompt) for prompt in prompts[start : start + batch_size]]
        batch = tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(device)
        output = model.generate(**batch, generation_config=config)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        responses += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return responses


def refusal_reader(judge: Judge):
    """The judge as a refusal detector (has `read_all`), or a ValueError naming what benign prompts need."""
    if not callable(getattr(judge, "read_all", None)):
        raise ValueError(
            f"benign prompts are scored by refusal, but the judge {type(judge).__name__} only labels harm; "
            'pass a refusal judge (slowed.judges.refusal.RefusalJudge, load_judge("keywords")) or no benign prompts'
        )
    return judge


def safety_metrics(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """`eval/safety_ratio` and `eval/judge_unknown_rate` of harmful-prompt verdicts (unknown = unsafe)."""
    from slowed.evaluation.safety import summarize

    summary = summarize(verdicts)
    return {SAFETY_RATIO_KEY: summary["safety_ratio"], UNKNOWN_RATE_KEY: summary["judge_unknown_rate"]}


def overrefusal_rate(judge: Judge, responses: Sequence[str]) -> float:
    """Share of benign-prompt responses the refusal judge reads as a full or partial refusal."""
    readings = refusal_reader(judge).read_all(responses)
    return math.fsum(reading.refused for reading in readings) / len(readings) if readings else float("nan")


# ------------------------------------------------------------------------------------------ RNG and ranks


@dataclass
class RngState:
    """Python, NumPy, torch CPU and (when present) CUDA generator states."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) outside distributed runs."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank `rank`'s contiguous shard of n items (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def generate_sharded(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """`generate_responses` over all `prompts`, each rank generating its shard; every rank gets the full list."""
    rank, world_size = _world()
    if world_size == 1:
        return generate_responses(model, tokenizer, prompts, max_new_tokens, batch_size)
    start, end = shard_bounds(len(prompts), rank, world_size)
    shard = generate_responses(model, tokenizer, prompts[start:end], max_new_tokens, batch_size)
    gathered: list[list[str] | None] = [None] * world_size
    torch.distributed.all_gather_object(gathered, shard)
    return [response for part in gathered for response in part]


# ------------------------------------------------------------------------------------------ the callback


class SafetyEvalCallback(TrainerCallback):
    """Judge greedy generations on fixed prompts at each epoch end (and every `eval_steps` steps); log the rates.

    Args:
        trainer: the `transformers.Trainer` / `SLowEDTrainer` to evaluate and log through (`trainer.log`).
        judge: any `slowed.judges` judge for the harmful prompts; with benign prompts it must also be a
            refusal detector (`read_all`), e.g. `RefusalJudge` or `RefusalKeywordJudge`.
        harmful_prompts: prompts a safe model refuses (e.g. AdvBench rows); scored as `eval/safety_ratio`.
        benign_prompts: optional prompts a model should answer (e.g. XSTest safe); `eval/overrefusal_rate`.
        eval_steps: also evaluate every this many optimizer steps (None: epoch ends only).
        at_epoch_end: evaluate at the end of every epoch.
        max_new_tokens, batch_size: generation length (tokens) and prompts per `generate` call.
        save_generations: write prompts, responses and verdicts of each evaluation to
            `<output_dir>/safety_eval/step-<N>.jsonl`.
    """

    def __init__(
        self,
        trainer,
        judge: Judge,
        harmful_prompts: Sequence[str],
        benign_prompts: Sequence[str] | None = None,
        eval_steps: int | None = None,
        at_epoch_end: bool = True,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        save_generations: bool = True,
    ) -> None:
        if not harmful_prompts:
            raise ValueError("SafetyEvalCallback needs at least one harmful prompt")
        if eval_steps is not None and (
            isinstance(eval_steps, bool) or int(eval_steps) != eval_steps or eval_steps < 1
        ):
            raise ValueError(
                f"SafetyEvalCallback eval_steps must be a positive integer or None; got {eval_steps!r}"
            )
        if eval_steps is None and not at_epoch_end:
            raise ValueError("SafetyEvalCallback would never run: set eval_steps or at_epoch_end=True")
        if benign_prompts:
            refusal_reader(judge)
        self.trainer = trainer
        self.judge = judge
        self.harmful_prompts = list(harmful_prompts)
        self.benign_prompts = list(benign_prompts or [])
        self.eval_steps = eval_steps
        self.at_epoch_end = at_epoch_end
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.save_generations = save_generations
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None

    # --------------------------------------------------------------------------------- records

    def settings(self) -> dict[str, Any]:
        """What determines the numbers: judge, prompt-set hashes and sizes, generation settings."""
        return {
            "judge": self.judge.describe(),
            "harmful_prompts": {
                "n": len(self.harmful_prompts),
                "sha256": prompt_set_hash(self.harmful_prompts),
            },
            "benign_prompts": {"n": len(self.benign_prompts), "sha256": prompt_set_hash(self.benign_prompts)},
            "generation": {
                "do_sample": False,
                "max_new_tokens": self.max_new_tokens,
                "chat_format": "slowed.prompting",
            },
        }

    @property
    def output_dir(self) -> Path:
        return Path(self.trainer.args.output_dir)

    def _write_sidecar(self) -> None:
        if self.trainer.is_world_process_zero():
            record = {"format": SIDECAR_FORMAT, **self.settings(), "evaluations": self.history}
            write_atomic(self.output_dir / SIDECAR_NAME, json.dumps(record, indent=2) + "\n")

    def _write_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.save_generations and self.trainer.is_world_process_zero():
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            write_atomic(self.output_dir / GENERATIONS_DIR_NAME / f"step-{step}.jsonl", lines)

    # --------------------------------------------------------------------------------- evaluation

    def evaluate(self, model, step: int, epoch: float | None) -> dict[str, float]:
        """Generate, judge, record and return the metrics; the RNG states and train/eval mode are restored after.

        The RNG states are restored after judging too, so a sampling judge cannot shift the training stream.
        """
        tokenizer = self.trainer.processing_class
        model = self.trainer.accelerator.unwrap_model(model)
        was_training = model.training
        rng = RngState.capture()
        try:
            model.eval()
            harmful = generate_sharded(
                model, tokenizer, self.harmful_prompts, self.max_new_tokens, self.batch_size
            )
            benign = generate_sharded(
                model, tokenizer, self.benign_prompts, self.max_new_tokens, self.batch_size
            )
            metrics, rows = self._judge(harmful, benign)
        finally:
            model.train(was_training)
            rng.restore()
        self._write_generations(step, rows)
        self.history.append({"step": step, "epoch": epoch, **metrics})
        self._write_sidecar()
        return metrics

    def _judge(self, harmful: list[str], benign: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics and per-prompt rows (prompt, response, verdict) of one evaluation."""
        verdicts = self.judge.judge(self.harmful_prompts, harmful)
        metrics = safety_metrics(verdicts)
        rows = [
            {"set": "harmful", "prompt": p, "response": r, "label": v.label, "raw": v.raw}
            for p, r, v in zip(self.harmful_prompts, harmful, verdicts, strict=True)
        ]
        if self.benign_prompts:
            readings = refusal_reader(self.judge).read_all(benign)
            metrics[OVERREFUSAL_KEY] = math.fsum(reading.refused for reading in readings) / len(readings)
            rows += [
                {
                    "set": "benign",
                    "prompt": p,
                    "response": r,
                    "refused": reading.refused,
                    "raw": reading.raw(),
                }
                for p, r, reading in zip(self.benign_prompts, benign, readings, strict=True)
            ]
        return metrics, rows

    def _run(self, state, model) -> None:
        if self._last_step == state.global_step:  # a step end and an epoch end at the same step
            return
        self._last_step = state.global_step
        metrics = self.evaluate(model, state.global_step, state.epoch)
        self.trainer.log(dict(metrics))

    # --------------------------------------------------------------------------------- hooks

    def on_train_begin(self, args, state, control, **kwargs):
        self._refuse_sharded_parameters()
        self.history = self._resumed_history(state.global_step)
        self._last_step = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.eval_steps is not None and state.global_step % self.eval_steps == 0:
            self._run(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.at_epoch_end:
            self._run(state, model)

    def _refuse_sharded_parameters(self) -> None:
        from accelerate.utils import DistributedType

        accelerator = self.trainer.accelerator
        if accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError("SafetyEvalCallback does not support FSDP (sharded parameters); use DDP")
        plugin = (
            accelerator.state.deepspeed_plugin
            if accelerator.distributed_type == DistributedType.DEEPSPEED
            else None
        )
        if plugin is not None and plugin.zero_stage == 3:
            raise ValueError(
                "SafetyEvalCallback does not support DeepSpeed ZeRO-3 (sharded parameters); use DDP"
            )

    def _resumed_history(self, resume_step: int) -> list[dict[str, Any]]:
        """Evaluations recorded up to `resume_step` by an earlier run with the same settings, else []."""
        if resume_step == 0:
            return []
        try:
            record = json.loads((self.output_dir / SIDECAR_NAME).read_text())
        except (OSError, ValueError):
            return []
        settings = self.settings()
        if any(record.get(key) != value for key, value in settings.items()):
            return []
        return [
            entry for entry in record.get("evaluations", []) if entry.get("step", math.inf) <= resume_step
        ]
