"""SLowEDTrainer against independent references: float64 full-logit LEM, stock TRL, GA equivalence, resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from tiny_models import cpu_training_kwargs, make_tiny_model, make_tiny_tokenizer
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from slowed.collator import KEEP_COLUMN
from slowed.config import SLowEDConfig
from slowed.trainer import SLOWED_CONFIG_NAME, NonFiniteLossError, SLowEDTrainer

# An exactly representable ratio: floor(0.25·n) has no rounding ambiguity in the naive reference.
RATIO = 0.25
# lm_head scale that spreads the tiny model's entropies (≈ uniform, all ≈ ln V, at scale 1) over
# [0.07, 3.3] nats, so float32-vs-float64 noise (~1e-6) cannot reorder them (nearest gap ~4e-4).
SHARPEN = 30.0

_QUESTIONS = [
    "What is 3 plus 4?",
    "Is not ( True ) and ( True ) true?",
    "How many objects do I have?",
    "Which statement best explains photosynthesis?",
]
_RATIONALES = [
    "Let's think step by step. First we add 3 and 4 to get 7. Then 7 times 2 is 14.",
    "not ( True ) and ( True ) is False. True or False is True.",
    "I have a chair, two tables and a lamp. That makes 4 objects.",
    "The quick brown fox jumps over the lazy dog. Options: (A) sunlight (B) water.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """16 conversational prompt/completion rows of varied completion lengths."""
    rows = []
    for i in range(16):
        rationale = _RATIONALES[(3 * i) % 4][: 24 + 4 * i]
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"{_QUESTIONS[i % 4]} ({i})"}],
                "completion": [
                    {"role": "assistant", "content": f"{rationale} So the answer is ({'ABCD'[i % 4]})."}
                ],
            }
        )
    return Dataset.from_list(rows)


def sharp_model(tokenizer):
    model = make_tiny_model(tokenizer, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    return model


def lora_config(**overrides) -> LoraConfig:
    kwargs = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}
    return LoraConfig(**{**kwargs, **overrides})


def make_args(config_cls, output_dir, **overrides):
    kwargs = {
        **cpu_training_kwargs(output_dir),
        "per_device_eval_batch_size": 4,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 5e-3,
    }
    return config_cls(**{**kwargs, **overrides})


def weights(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def train_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ------------------------------------------------------------------------------------ naive float64 reference


def reference_entropy_nll(model, input_ids, attention_mask, grad: bool = False):
    """Full-logit float64 per-target entropy (detached) and NLL, B×(T−1): position t scores token t+1."""
    with torch.set_grad_enabled(grad):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()[:, :-1]
        log_p = torch.log_softmax(logits, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1).detach()
        nll = -log_p.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return entropy, nll


def naive_masked_positions(entropy_rows: list[list[float]], valid_rows: list[list[bool]], ratio, scope):
    """Set of (row, t) dropped: the floor(ratio·n) lowest values per row (or over the batch), earlier first."""
    groups = (
        [[(r, t) for r in range(len(valid_rows)) for t in range(len(valid_rows[r])) if valid_rows[r][t]]]
        if scope == "batch"
        else [[(r, t) for t in range(len(valid_rows[r])) if valid_rows[r][t]] for r in range(len(valid_rows))]
    )
    dropped = set()
    for group in groups:
        ranked = sorted(group, key=lambda rt: (entropy_rows[rt[0]][rt[1]], rt))
        dropped.update(ranked[: math.floor(ratio * len(group))])
    return dropped


# ---------------------------------------------------------------------------------------- loss vs reference


@pytest.mark.parametrize(
    ("scope", "loss_type", "selection"),
    [
        ("sequence", "nll", "lowest"),
        ("batch", "nll", "lowest"),
        ("sequence", "dft", "lowest"),
        ("sequence", "nll", "highest"),
    ],
    ids=["seq", "batch", "dft", "highest"],
)
def test_online_lem_loss_and_gradient_match_float64_reference(
    tokenizer, dataset, tmp_path, scope, loss_type, selection
):
    args = make_args(
        SLowEDConfig,
        tmp_path,
        entropy_mask_ratio=RATIO,
        entropy_mask_scope=scope,
        loss_type=loss_type,
        entropy_mask_selection=selection,
    )
    trainer = SLowEDTrainer(
        sharp_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(5)])
    model = trainer.model.train()
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()

    entropy, nll = reference_entropy_nll(model, batch["input_ids"], batch["attention_mask"], grad=True)
    valid = batch["labels"][:, 1:] != -100
    ranking = entropy if selection == "lowest" else -entropy  # "highest" drops the largest entropies first
    dropped = naive_masked_positions(ranking.tolist(), valid.tolist(), RATIO, scope)
    kept = [(r, t) for r, t in valid.nonzero().tolist() if (r, t) not in dropped]
    # DFT (TRL's loss_type="dft") weights each token's NLL by its detached probability.
    weight = torch.exp(-nll).detach() if loss_type == "dft" else torch.ones_like(nll)
    expected = sum(weight[r, t] * nll[r, t] for r, t in kept) / len(kept)
    expected.backward()

    assert len(dropped) > 0
    assert int(num_items) == len(kept)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    for name, param in model.named_parameters():
        scale = param.grad.abs().max().item()
        assert (grads[name] - param.grad).abs().max().item() <= 1e-5 * scale + 1e-8, name
    assert trainer._masked_window == [len(dropped), int(valid.sum())]


def test_random_selection_masks_at_the_same_rate_and_repeats_per_seed(tokenizer, dataset, tmp_path):
    def run(seed: int, output: str):
        args = make_args(
            SLowEDConfig,
            tmp_path / output,
            entropy_mask_ratio=RATIO,
            entropy_mask_selection="random",
            seed=seed,
            data_seed=0,
        )
        trainer = SLowEDTrainer(
            sharp_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer
        )
        trainer.train()
        return trainer

    first, again, other = run(0, "a"), run(0, "b"), run(1, "c")
    assert train_losses(first) == train_losses(again)
    assert train_losses(first) != train_losses(other)

    # One loss call: floor(k·n) of each sequence's n completion tokens dropped, as with the lowest-entropy mask,
    # and the loss normalised by the kept count.
    batch = first.data_collator([first.train_dataset[i] for i in range(5)])
    valid = batch["labels"][:, 1:] != -100
    masked = sum(math.floor(RATIO * int(n)) for n in valid.sum(dim=1))
    first._masked_window = [0, 0]
    num_items = first._get_num_items_in_batch([batch], torch.device("cpu"))
    first.compute_loss(first.model.train(), dict(batch), num_items_in_batch=num_items)
    assert masked > 0 and first._masked_window == [masked, int(valid.sum())]
    assert int(num_items) == int(valid.sum()) - masked


def test_padding_free_batch_masks_per_sequence_like_padded_batch(tokenizer, dataset, tmp_path):
    """A padding-free row (TRL's seq_idx) gets the same per-sequence masks, kept count and loss as padding."""
    results = {}
    for padding_free in (False, True):
        args = make_args(
            SLowEDConfig,
            tmp_path / str(padding_free),
            entropy_mask_ratio=RATIO,
            padding_free=padding_free,
            max_length=None,
        )
        trainer = SLowEDTrainer(
            sharp_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(5)])
        assert ("seq_idx" in batch) == padding_free
        num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        loss = trainer.compute_loss(trainer.model.train(), dict(batch), num_items_in_batch=num_items).item()
        results[padding_free] = (loss, int(num_items), trainer._masked_window)
    (padded_loss, padded_kept, padded_counts), (free_loss, free_kept, free_counts) = (
        results[False],
        results[True],
    )
    assert free_kept == padded_kept and free_counts == padded_counts
    # One packed row treated as a single sequence would drop floor(0.25 · all) tokens instead.
    assert padded_counts[0] != math.floor(RATIO * padded_counts[1])
    assert free_loss == pytest.approx(padded_loss, rel=1e-6)


# ------------------------------------------------------------------------------------- exactly stock TRL


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_knobs_off_is_exactly_stock_sft(tokenizer, dataset, tmp_path, use_lora):
    runs = {}
    for name, trainer_cls, config_cls in [
        ("stock", SFTTrainer, SFTConfig),
        ("slowed", SLowEDTrainer, SLowEDConfig),
    ]:
        trainer = trainer_cls(
            sharp_model(tokenizer),
            args=make_args(config_cls, tmp_path / name, gradient_accumulation_steps=2),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config() if use_lora else None,
        )
        trainer.train()
        runs[name] = (train_losses(trainer), weights(trainer.model))
    (stock_losses, stock_weights), (slowed_losses, slowed_weights) = runs["stock"], runs["slowed"]
    assert len(stock_losses) == 3
    assert slowed_losses == stock_losses
    assert max_abs_diff(stock_weights, slowed_weights) < 1e-6


# ----------------------------------------------------------------------------- gradient accumulation


def test_lem_batch_4_times_accumulation_2_equals_batch_8(tokenizer, dataset, tmp_path):
    """Kept-token normalisation over the accumulation window: bs4×GA2 and bs8 take the same SGD steps."""
    runs = {}
    for name, batch_size, accumulation in [("ga", 4, 2), ("big", 8, 1)]:
        args = make_args(
            SLowEDConfig,
            tmp_path / name,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            entropy_mask_ratio=RATIO,
        )
        trainer = SLowEDTrainer(
            sharp_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer
        )
        start = weights(trainer.model)
        trainer.train()
        runs[name] = (train_losses(trainer), weights(trainer.model), trainer.state.log_history)
    (ga_losses, ga_weights, ga_logs), (big_losses, big_weights, _) = runs["ga"], runs["big"]
    # The run moved the weights far more than the tolerance, so equality is not vacuous.
    assert max_abs_diff(start, big_weights) > 1e-2
    # float32 sums over differently padded micro-batches: ~1e-7 noise per step, 3 SGD steps.
    assert max_abs_diff(ga_weights, big_weights) < 1e-6
    assert ga_losses == pytest.approx(big_losses, rel=1e-6)
    fractions = [entry["slowed/masked_fraction"] for entry in ga_logs if "slowed/masked_fraction" in entry]
    assert len(fractions) == 3 and all(0.2 < f <= RATIO for f in fractions)


# ------------------------------------------------------------------------------------ initial entropy source


def test_initial_source_masks_exactly_the_reference_positions(tokenizer, dataset, tmp_path):
    args = make_args(SLowEDConfig, tmp_path, entropy_mask_ratio=RATIO, entropy_source="initial", max_steps=2)
    trainer = SLowEDTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    frozen = sharp_model(tokenizer).eval()
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    expected_masked = 0
    for r, row in enumerate(rows):
        ids = torch.tensor([row["input_ids"]])
        entropy, _ = reference_entropy_nll(frozen, ids, torch.ones_like(ids))
        valid = [label != -100 for label in row["labels"][1:]]
        dropped = naive_masked_positions(entropy.tolist(), [valid], RATIO, "sequence")
        expected = [-100 if (0, j - 1) in dropped else label for j, label in enumerate(row["labels"])]
        n = len(row["labels"])
        assert batch["labels"][r, :n].tolist() == expected
        assert (batch["labels"][r, n:] == -100).all()
        assert len(row[KEEP_COLUMN]) == n
        expected_masked += len(dropped)
    assert int(batch["slowed_num_masked"]) == expected_masked > 0

    trainer.train()
    assert not (tmp_path / SLOWED_CONFIG_NAME).exists()  # written on save only (save_strategy='no')
    trainer.save_model()
    record = json.loads((tmp_path / SLOWED_CONFIG_NAME).read_text())
    assert record["entropy_source"] == "initial" and record["initial_masked_tokens"] == expected_masked
    fractions = [
        e["slowed/masked_fraction"] for e in trainer.state.log_history if "slowed/masked_fraction" in e
    ]
    assert len(fractions) == 2 and all(0.2 < f <= RATIO for f in fractions)


# --------------------------------------------------------------------------- Slow Tuning: checkpoints, resume

TAU = 0.05


def _slow_tuning_trainer(tokenizer, dataset, output_dir, max_steps):
    args = make_args(
        SLowEDConfig,
        output_dir,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=2,
        learning_rate=2e-2,
        entropy_mask_ratio=RATIO,
        slow_tuning_tau=TAU,
        slow_tuning_interval="step",
    )
    return SLowEDTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )


def adapter_global_norm(state: dict[str, torch.Tensor], scaling: float) -> float:
    """‖ΔW‖_F over all modules from a saved adapter, forming s·B·A explicitly in float64."""
    total = 0.0
    for key, lora_a in state.items():
        if "lora_A" in key:
            lora_b = state[key.replace("lora_A", "lora_B")]
            total += (scaling * lora_b.double() @ lora_a.double()).square().sum().item()
    return math.sqrt(total)


@pytest.fixture(scope="module")
def uninterrupted_run(tokenizer, dataset, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("slow-tuning")
    trainer = _slow_tuning_trainer(tokenizer, dataset, output_dir, max_steps=4)
    trainer.train()
    return output_dir, trainer


def test_checkpoints_hold_projected_adapters(uninterrupted_run):
    output_dir, trainer = uninterrupted_run
    assert all(result.norm_before > TAU for _, result in trainer.slow_tuning.history)  # projection was active
    logged = [
        e["slowed/delta_norm_after"] for e in trainer.state.log_history if "slowed/delta_norm_after" in e
    ]
    assert len(logged) == 4 and all(value == pytest.approx(TAU) for value in logged)
    for step in (2, 4):
        checkpoint = output_dir / f"checkpoint-{step}"
        norm = adapter_global_norm(load_file(checkpoint / "adapter_model.safetensors"), scaling=8 / 4)
        assert norm <= TAU * (1 + 1e-5)
        assert norm == pytest.approx(TAU, rel=1e-5)
        record = json.loads((checkpoint / SLOWED_CONFIG_NAME).read_text())
        assert record["slow_tuning_tau"] == TAU and record["entropy_mask_ratio"] == RATIO


def test_resume_from_checkpoint_matches_uninterrupted_run(uninterrupted_run, tokenizer, dataset, tmp_path):
    output_dir, trainer = uninterrupted_run
    resumed = _slow_tuning_trainer(tokenizer, dataset, output_dir / "resumed", max_steps=4)
    resumed.train(resume_from_checkpoint=str(Path(output_dir) / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert max_abs_diff(weights(trainer.model), weights(resumed.model)) < 1e-6
    assert train_losses(resumed)[-2:] == pytest.approx(train_losses(trainer)[-2:], rel=1e-6)


def test_epoch_end_check_is_logged_when_an_evaluation_follows(tokenizer, dataset, tmp_path):
    # 16 rows / batch 4 = 4 steps per epoch; the epoch-end check at step 4 is followed by an evaluation, whose log
    # (eval mode) is the first one after it: the norms must still reach the log history, once per check.
    args = make_args(
        SLowEDConfig,
        tmp_path,
        max_steps=-1,
        num_train_epochs=2,
        logging_steps=3,
        eval_strategy="epoch",
        learning_rate=2e-2,
        entropy_mask_ratio=RATIO,
        slow_tuning_tau=TAU,
    )
    trainer = SLowEDTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(4)),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.train()
    assert [step for step, _ in trainer.slow_tuning.history] == [4, 8]
    logged = [
        (e["step"], e["slowed/delta_norm_before"])
        for e in trainer.state.log_history
        if "slowed/delta_norm_before" in e
    ]
    assert logged == [(step, result.norm_before) for step, result in trainer.slow_tuning.history]


# ------------------------------------------------------------------------------------- refused combinations


def test_dora_with_slow_tuning_fails_in_init(tokenizer, dataset, tmp_path):
    args = make_args(SLowEDConfig, tmp_path, slow_tuning_tau=1.0)
    with pytest.raises(ValueError, match=r"DoRA.*use_dora"):
        SLowEDTrainer(
            sharp_model(tokenizer),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(use_dora=True),
        )


def test_dora_peft_model_with_slow_tuning_fails_in_init(tokenizer, dataset, tmp_path):
    args = make_args(SLowEDConfig, tmp_path, slow_tuning_tau=1.0)
    model = get_peft_model(sharp_model(tokenizer), lora_config(use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        SLowEDTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_lora_on_lm_head_fails_in_init(tokenizer, dataset, tmp_path):
    with pytest.raises(ValueError, match="lm_head"):
        SLowEDTrainer(
            sharp_model(tokenizer),
            args=make_args(SLowEDConfig, tmp_path),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(target_modules=["q_proj", "lm_head"]),
        )


def test_modules_to_save_with_slow_tuning_fails_in_init(tokenizer, dataset, tmp_path):
    with pytest.raises(ValueError, match="modules_to_save"):
        SLowEDTrainer(
            sharp_model(tokenizer),
            args=make_args(SLowEDConfig, tmp_path, slow_tuning_tau=1.0),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(modules_to_save=["lm_head"]),
        )


# ------------------------------------------------------------------------------ ragged last batch of an epoch


def make_dataset(num_rows: int) -> Dataset:
    """`num_rows` conversational prompt/completion rows of varied completion lengths."""
    rows = []
    for i in range(num_rows):
        rationale = _RATIONALES[(3 * i) % 4][: 24 + 4 * (i % 16)]
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"{_QUESTIONS[i % 4]} ({i})"}],
                "completion": [
                    {"role": "assistant", "content": f"{rationale} So the answer is ({'ABCD'[i % 4]})."}
                ],
            }
        )
    return Dataset.from_list(rows)


@pytest.mark.parametrize("source", ["online", "initial"])
def test_ragged_last_batch_trains_and_counts_every_row(tokenizer, tmp_path, source):
    """17 rows at batch 4: the last step has one row. One log over the epoch counts every row's LEM tokens once."""
    args = make_args(
        SLowEDConfig,
        tmp_path,
        max_steps=-1,
        num_train_epochs=1,
        logging_steps=5,
        entropy_mask_ratio=RATIO,
        entropy_source=source,
    )
    trainer = SLowEDTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=make_dataset(17),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.train()
    assert trainer.state.global_step == 5
    # Per-sequence scope: floor(k·n) of each row's n completion targets, whatever the batching.
    eligible = [sum(label != -100 for label in labels[1:]) for labels in trainer.train_dataset["labels"]]
    expected = sum(math.floor(RATIO * n) for n in eligible) / sum(eligible)
    fractions = [
        e["slowed/masked_fraction"] for e in trainer.state.log_history if "slowed/masked_fraction" in e
    ]
    assert fractions == [pytest.approx(expected, rel=1e-12)]


# ------------------------------------------------------------------------------------------- training guards


class _PoisonWeightAt(TrainerCallback):
    """Writes NaN into one LoRA weight at the end of optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(math.nan)


def test_nan_weight_stops_training_naming_the_step_and_last_good_checkpoint(tokenizer, dataset, tmp_path):
    args = make_args(SLowEDConfig, tmp_path, max_steps=6, save_strategy="steps", save_steps=1)
    trainer = SLowEDTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[_PoisonWeightAt(step=3)],
    )
    # The weights after step 3 give a NaN loss at step 4; checkpoint-3 holds them, checkpoint-2 is the last good one.
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 4\b") as error:
        trainer.train()
    assert f"Last good checkpoint: {tmp_path / 'checkpoint-2'}." in str(error.value)
    assert trainer.state.global_step == 3
    assert not (tmp_path / "checkpoint-4").exists()


def test_nan_at_the_first_steps_reports_no_checkpoint(tokenizer, dataset, tmp_path):
    args = make_args(SLowEDConfig, tmp_path, max_steps=3, entropy_mask_ratio=RATIO)
    trainer = SLowEDTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[_PoisonWeightAt(step=1)],
    )
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 2 .*Last good checkpoint: none saved\."):
        trainer.train()


def _grads(model) -> dict[str, torch.Tensor]:
    """Copies of the gradients present (a parameter never reached by backward has none)."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("source", ["online", "initial"])
@pytest.mark.parametrize("window", ["alone", "with-targets"])
def test_micro_batch_without_targets_adds_zero_loss_and_no_gradient(
    tokenizer, dataset, tmp_path, source, window
):
    """Every label -100 (nothing eligible): loss 0 and unchanged gradients, alone or inside a window with targets."""
    args = make_args(SLowEDConfig, tmp_path, entropy_mask_ratio=RATIO, entropy_source=source)
    trainer = SLowEDTrainer(
        sharp_model(tokenizer),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    model = trainer.model.train()
    examples = [trainer.train_dataset[i] for i in range(3)]
    with_targets = trainer.data_collator(examples)
    if source == "initial":  # every keep flag 0: the collator masks every eligible token
        empty = trainer.data_collator([{**e, KEEP_COLUMN: [0] * len(e[KEEP_COLUMN])} for e in examples])
    else:
        empty = trainer.data_collator(examples)
        empty["labels"] = torch.full_like(empty["labels"], -100)
    assert (empty["labels"] == -100).all()
    window_batches = [empty] if window == "alone" else [with_targets, empty]
    num_items = trainer._get_num_items_in_batch(window_batches, torch.device("cpu"))
    if window == "with-targets":
        trainer.training_step(model, dict(with_targets), num_items)
    before = _grads(model)
    loss = trainer.training_step(model, dict(empty), num_items)
    assert loss.item() == 0.0
    after = _grads(model)
    assert set(before) <= set(after)
    assert all(torch.equal(after[n], before.get(n, torch.zeros_like(after[n]))) for n in after)


# ------------------------------------------------------------------------------------------ eligible tokens


def test_lem_warns_once_when_prompt_tokens_are_in_the_loss(tokenizer, dataset, tmp_path, caplog):
    text_dataset = Dataset.from_list(
        [{"text": f"{q} {r}"} for q, r in zip(_QUESTIONS, _RATIONALES, strict=True)]
    )
    cases = [
        ("completion-only", dataset, {}, 0),
        ("completion_only_loss=False", dataset, {"completion_only_loss": False}, 1),
        ("language-modelling", text_dataset, {}, 1),
    ]
    for name, train_dataset, overrides, expected in cases:
        caplog.clear()
        args = make_args(SLowEDConfig, tmp_path / name, entropy_mask_ratio=RATIO, **overrides)
        with caplog.at_level(logging.WARNING, logger="slowed.trainer"):
            SLowEDTrainer(
                sharp_model(tokenizer), args=args, train_dataset=train_dataset, processing_class=tokenizer
            )
        warnings = [r for r in caplog.records if r.name == "slowed.trainer" and "prompt tokens" in r.message]
        assert len(warnings) == expected, name


# ----------------------------------------------------------------------------- initial source, random control


def test_initial_random_masks_do_not_depend_on_the_scoring_batch_size(tokenizer, dataset, tmp_path):
    flags = {}
    for batch_size in (1, 5):
        args = make_args(
            SLowEDConfig,
            tmp_path / str(batch_size),
            entropy_mask_ratio=RATIO,
            entropy_source="initial",
            entropy_mask_selection="random",
            per_device_eval_batch_size=batch_size,
        )
        trainer = SLowEDTrainer(
            sharp_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer
        )
        flags[batch_size] = trainer.train_dataset[KEEP_COLUMN]
        labels = trainer.train_dataset["labels"]
    assert flags[1] == flags[5]
    # Still floor(k·n) of each example's n eligible targets, and some masks differ between examples' positions.
    for keep, row_labels in zip(flags[1], labels, strict=True):
        eligible = [label != -100 for label in row_labels[1:]]
        dropped = sum(e and not k for e, k in zip(eligible, keep[1:], strict=True))
        assert dropped == math.floor(RATIO * sum(eligible))


def test_model_card_names_slowed_and_cites_the_paper(tokenizer, dataset, tmp_path):
    trainer = SLowEDTrainer(
        sharp_model(tokenizer),
        args=make_args(SLowEDConfig, tmp_path, entropy_mask_ratio=0.2),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.create_model_card(model_name="unit-slowed")
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "This model was trained with SLowED" in card
    assert "2508.09666" in card and "Slow Tuning and Low-Entropy Masking" in card
    assert "slowed" in card  # the tag
