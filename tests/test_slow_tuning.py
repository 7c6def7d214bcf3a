"""Slow Tuning: Gram-trick norms, projections and the Trainer callback against float64 references."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from peft import LoHaConfig, LoraConfig, get_peft_model
from safetensors.torch import load_file
from tiny_models import make_tiny_model, make_tiny_tokenizer
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import SFTConfig, SFTTrainer

from slowed.slow_tuning import (
    LOG_KEY_AFTER,
    LOG_KEY_BEFORE,
    REFERENCE_FILENAME,
    SlowTuningCallback,
    check_lora_projectable,
    full_delta_norms,
    global_norm,
    lora_delta_norms,
    project_full_,
    project_lora_,
    snapshot_weights,
    unconstrained_parameters,
)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def lora_model(tokenizer, target_modules, r=4, lora_alpha=8, seed=0, b_std=0.1, **config):
    """Tiny Llama + LoRA with B randomised (peft initialises B = 0, which would make every ΔW zero)."""
    model = get_peft_model(
        make_tiny_model(tokenizer, seed=seed),
        LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, **config),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * b_std)
    return model


def explicit_deltas(model, adapter="default") -> dict[str, torch.Tensor]:
    """Module name -> s·B·A formed explicitly in float64 (the reference the Gram trick must match)."""
    deltas = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        elif hasattr(module, "lora_embedding_A") and adapter in module.lora_embedding_A:
            a, b = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
        else:
            continue
        deltas[name] = module.scaling[adapter] * (b.detach().double() @ a.detach().double())
    return deltas


def frobenius(deltas: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(torch.linalg.matrix_norm(d)) for name, d in deltas.items()}


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ------------------------------------------------------------------------------------------- LoRA norms


def test_gram_norms_equal_explicit_products_square_and_non_square(tokenizer):
    # q_proj 32->32, v_proj 32->16 (2 kv heads), gate_proj 32->64, down_proj 64->32; rsLoRA scaling too.
    model = lora_model(tokenizer, ["q_proj", "v_proj", "gate_proj", "down_proj"], r=4, use_rslora=True)
    reference = explicit_deltas(model)
    shapes = {tuple(d.shape) for d in reference.values()}
    assert {(32, 32), (16, 32), (64, 32), (32, 64)} <= shapes
    for name, module in model.named_modules():  # the reference reads the factors the way peft merges them
        if name in reference:
            peft_delta = module.get_delta_weight("default").detach().double()
            torch.testing.assert_close(peft_delta, reference[name], rtol=1e-5, atol=1e-7)

    norms = lora_delta_norms(model)
    assert set(norms) == set(reference)
    for name, expected in frobenius(reference).items():
        assert norms[name].dtype == torch.float64
        assert rel_err(float(norms[name]), expected) < 1e-6, name
    expected_global = math.sqrt(sum(n**2 for n in frobenius(reference).values()))
    assert rel_err(float(global_norm(norms)), expected_global) < 1e-9


class TwoLayers(nn.Module):
    """Hand-made model: a wide and a narrow linear layer."""

    def __init__(self):
        super().__init__()
        self.narrow = nn.Linear(3, 5)
        self.wide = nn.Linear(40, 7)

    def forward(self, x):
        return self.narrow(x)


def test_gram_norm_with_rank_above_layer_dimensions():
    torch.manual_seed(0)
    model = get_peft_model(TwoLayers(), LoraConfig(r=8, lora_alpha=3, target_modules=["narrow", "wide"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape) * 10.0)
    reference = frobenius(explicit_deltas(model))
    norms = lora_delta_norms(model)
    assert len(norms) == 2
    for name, expected in reference.items():
        assert rel_err(float(norms[name]), expected) < 1e-6, name


def test_embedding_lora_norm_matches_peft_delta(tokenizer):
    model = lora_model(tokenizer, ["embed_tokens", "q_proj"])
    norms = lora_delta_norms(model)
    embed_name = next(n for n in norms if n.endswith("embed_tokens"))
    module = model.get_submodule(embed_name)
    expected = float(torch.linalg.matrix_norm(module.get_delta_weight("default").detach().double()))
    assert expected > 0
    assert rel_err(float(norms[embed_name]), expected) < 1e-6


# --------------------------------------------------------------------------------------- LoRA projection


def test_global_projection_lands_on_tau_and_keeps_every_direction(tokenizer):
    model = lora_model(tokenizer, ["q_proj", "v_proj", "embed_tokens"])
    before = explicit_deltas(model)
    global_before = math.sqrt(sum(n**2 for n in frobenius(before).values()))
    tau = 0.4 * global_before

    result = project_lora_(model, tau, scope="global")

    after = explicit_deltas(model)
    global_after = math.sqrt(sum(n**2 for n in frobenius(after).values()))
    assert result.projected
    assert rel_err(global_after, tau) < 1e-5
    assert rel_err(result.norm_before, global_before) < 1e-9
    assert rel_err(result.norm_after, global_after) < 1e-9  # measured from the stored factors, not c·‖ΔW‖
    for name in before:
        expected = (tau / global_before) * before[name]
        torch.testing.assert_close(after[name], expected, rtol=1e-5, atol=1e-7 * before[name].abs().max())


def test_module_projection_caps_only_modules_above_tau(tokenizer):
    model = lora_model(tokenizer, ["q_proj", "v_proj", "gate_proj"])
    before = explicit_deltas(model)
    norms_before = frobenius(before)
    tau = sorted(norms_before.values())[len(norms_before) // 2]  # the median: some above, some at or below
    factors_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    result = project_lora_(model, tau, scope="module")

    norms_after = frobenius(explicit_deltas(model))
    assert any(n > tau for n in norms_before.values()) and any(n <= tau for n in norms_before.values())
    for name, n_before in norms_before.items():
        assert norms_after[name] <= tau * (1 + 1e-6)
        if n_before > tau:
            assert rel_err(norms_after[name], tau) < 1e-5
            assert rel_err(result.scale[name], tau / n_before) < 1e-9
        else:
            assert result.scale[name] == 1.0
            prefix = name + ".lora_"
            for pname, value in factors_before.items():
                if pname.startswith(prefix):
                    assert torch.equal(model.get_parameter(pname), value), pname


@pytest.mark.parametrize("scope", ["global", "module"])
def test_nothing_changes_at_or_below_tau(tokenizer, scope):
    model = lora_model(tokenizer, ["q_proj", "v_proj"])
    norms = lora_delta_norms(model)  # the boundary: τ exactly equal to the measured norm
    tau = float(max(norms.values())) if scope == "module" else float(global_norm(norms))
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    for tau_ in (tau, 2 * tau):
        result = project_lora_(model, tau_, scope=scope)
        assert not result.projected
        assert set(result.scale.values()) == {1.0}
        assert result.norm_after == result.norm_before
        for name, param in model.named_parameters():
            assert torch.equal(param, state[name]), name


def test_global_and_module_scope_differ_when_one_module_dominates(tokenizer):
    def build():
        model = lora_model(tokenizer, ["q_proj", "v_proj"], b_std=0.01)
        big = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
        with torch.no_grad():
            big.lora_B["default"].weight.mul_(100.0)
        return model

    norms = frobenius(explicit_deltas(build()))
    big_name = max(norms, key=norms.get)
    small = {n: v for n, v in norms.items() if n != big_name}
    tau = 2 * max(small.values())
    assert norms[big_name] > 10 * tau

    global_model, module_model = build(), build()
    project_lora_(global_model, tau, scope="global")
    project_lora_(module_model, tau, scope="module")
    global_after, module_after = (
        frobenius(explicit_deltas(global_model)),
        frobenius(explicit_deltas(module_model)),
    )

    c = tau / math.sqrt(sum(v**2 for v in norms.values()))
    for name, n_before in small.items():
        assert rel_err(global_after[name], c * n_before) < 1e-5  # shrunk along with the big module
        assert rel_err(module_after[name], n_before) < 1e-12  # untouched: under τ on its own
    assert rel_err(module_after[big_name], tau) < 1e-5
    assert module_after[big_name] > global_after[big_name]


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LoraConfig(r=4, target_modules=["q_proj"], use_dora=True), "DoRA"),
        (LoraConfig(r=4, target_modules=["q_proj", "lm_head"]), "refused by TRL's fused LM head"),
        (LoraConfig(r=4, target_modules=["q_proj"], lora_bias=True), "lora_bias"),
        (LoHaConfig(r=4, target_modules=["q_proj"]), "not a LoRA layer"),
    ],
    ids=["dora", "lm_head", "lora_bias", "loha"],
)
def test_unprojectable_adapters_are_refused(tokenizer, config, message):
    model = get_peft_model(make_tiny_model(tokenizer), config)
    with pytest.raises(ValueError, match=message):
        check_lora_projectable(model)
    with pytest.raises(ValueError, match=message):
        project_lora_(model, 1.0)


def test_missing_lora_layers_or_adapter_are_refused(tokenizer):
    with pytest.raises(ValueError, match="no peft LoRA layers"):
        lora_delta_norms(make_tiny_model(tokenizer))
    with pytest.raises(ValueError, match=r"'other'.*adapters present: \['default'\]"):
        lora_delta_norms(lora_model(tokenizer, ["q_proj"]), adapter_name="other")


def test_trainable_parameters_outside_lora_are_refused_by_the_callback_as_by_the_trainer(tokenizer, tmp_path):
    """One verdict: what Slow Tuning cannot constrain is an error for the callback on a plain Trainer too."""
    config = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    model = get_peft_model(make_tiny_model(tokenizer), config)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name]
    assert trainable and all("embed_tokens" in name for name in trainable)
    assert unconstrained_parameters(model) == trainable
    with pytest.raises(
        ValueError, match=r"constrains only the LoRA factors, but 1 other parameters.*embed_tokens"
    ):
        check_lora_projectable(model)
    callback = SlowTuningCallback(1.0)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ValueError, match="embed_tokens"):
        callback.on_train_begin(args, TrainerState(), TrainerControl(), model=model)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0.0}, "`slow_tuning_tau` must be .* got 0.0"),
        ({"tau": float("nan")}, "`slow_tuning_tau` must be .* got nan"),
        ({"tau": None}, "`slow_tuning_tau` must be a finite number > 0 .* got None"),
        ({"tau": 1.0, "scope": "layer"}, "`slow_tuning_scope` must be .* got 'layer'"),
        ({"tau": 1.0, "interval": 0}, "`slow_tuning_interval` must be .* got 0"),
        ({"tau": 1.0, "interval": "steps"}, "`slow_tuning_interval` must be .* got 'steps'"),
    ],
)
def test_callback_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SlowTuningCallback(**kwargs)


# ------------------------------------------------------------------------------------ full fine-tuning


def perturbed_model(tokenizer, scale=0.05):
    model = make_tiny_model(tokenizer)
    model.model.layers[1].mlp.requires_grad_(False)  # frozen parameters are not part of ΔW
    reference = snapshot_weights(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model, reference


@pytest.mark.parametrize("scope", ["global", "module"])
def test_full_projection_matches_naive_float64(tokenizer, scope):
    model, reference = perturbed_model(tokenizer)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not set(frozen) & set(reference)
    current = {n: p.detach().double().clone() for n, p in model.named_parameters() if p.requires_grad}
    naive_norms = {n: float(torch.linalg.vector_norm(current[n] - reference[n].double())) for n in current}
    for name, value in full_delta_norms(model, reference).items():
        assert rel_err(float(value), naive_norms[name]) < 1e-12
    naive_global = math.sqrt(sum(v**2 for v in naive_norms.values()))
    tau = 0.3 * naive_global if scope == "global" else sorted(naive_norms.values())[len(naive_norms) // 2]

    result = project_full_(model, reference, tau, scope=scope)

    assert result.projected
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name])
            continue
        n = naive_norms[name]
        c = tau / naive_global if scope == "global" else min(1.0, tau / n)
        w0 = reference[name].double()
        expected = w0 + c * (current[name] - w0)
        torch.testing.assert_close(param.detach().double(), expected, rtol=0, atol=1e-6)
    after = {n: float(v) for n, v in full_delta_norms(model, reference).items()}
    if scope == "global":
        assert rel_err(math.sqrt(sum(v**2 for v in after.values())), tau) < 1e-5
    else:
        assert max(after.values()) <= tau * (1 + 1e-5)


def test_full_reference_must_match_the_model(tokenizer):
    model, reference = perturbed_model(tokenizer)
    name = next(iter(reference))
    with pytest.raises(ValueError, match=f"no tensor for trainable parameter '{name}'"):
        full_delta_norms(model, {k: v for k, v in reference.items() if k != name})
    with pytest.raises(ValueError, match="shape"):
        full_delta_norms(model, {**reference, name: torch.zeros(3)})


# --------------------------------------------------------------------------------- Trainer integration


def lm_dataset(tokenizer, rows=8, length=16):
    texts = [
        f"Let's think step by step. {i} plus {i} is {2 * i}. So the answer is ({i})." for i in range(rows)
    ]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=length)
    return Dataset.from_dict({**encoded, "labels": encoded["input_ids"]})


def training_args(output_dir: Path, config_class=TrainingArguments, **overrides) -> TrainingArguments:
    options = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "learning_rate": 0.05,
        "lr_scheduler_type": "constant",
        "max_steps": 5,
        "save_strategy": "steps",
        "save_steps": 2,
        "logging_steps": 1,
        "use_cpu": True,
        "bf16": False,
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }
    return config_class(**options)


def saved_adapter_norms(checkpoint: Path, scaling: float) -> list[float]:
    """‖s·B·A‖_F per module of a saved adapter, formed explicitly in float64 from the safetensors file."""
    tensors = load_file(checkpoint / "adapter_model.safetensors")
    return [
        float(
            torch.linalg.matrix_norm(
                scaling * (tensors[key.replace("lora_A", "lora_B")].double() @ a.double())
            )
        )
        for key, a in tensors.items()
        if key.endswith("lora_A.weight")
    ]


def test_callback_projects_lora_every_n_steps_before_checkpoints(tokenizer, tmp_path, caplog):
    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    tau = 0.05
    callback = SlowTuningCallback(tau=tau, interval=2)
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=lm_dataset(tokenizer),
        callbacks=[callback],
    )
    with caplog.at_level(logging.INFO, logger="slowed.slow_tuning"):
        trainer.train()

    # every 2 optimizer steps, plus the final step (max_steps 5)
    assert [step for step, _ in callback.history] == [2, 4, 5]
    assert len([r for r in caplog.records if "Slow Tuning at step" in r.getMessage()]) == 3
    assert any(result.norm_before > tau * 1.5 for _, result in callback.history), "lr too low to test"
    final = math.sqrt(sum(n**2 for n in frobenius(explicit_deltas(model)).values()))
    assert final <= tau * (1 + 1e-5)
    assert set(callback.last_logs) == {LOG_KEY_BEFORE, LOG_KEY_AFTER}
    assert callback.last_logs[LOG_KEY_BEFORE] == callback.history[-1][1].norm_before
    assert callback.last_logs[LOG_KEY_AFTER] <= tau * (1 + 1e-6)
    for step in (2, 4):  # checkpoints are written after on_step_end: they hold projected weights
        saved = saved_adapter_norms(tmp_path / f"checkpoint-{step}", scaling=8 / 4)
        assert len(saved) == 4 and math.sqrt(sum(n**2 for n in saved)) <= tau * (1 + 1e-5)


def test_callback_with_sft_trainer_and_peft_config(tokenizer, tmp_path):
    rows = range(8)
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in rows],
            "completion": [[{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}] for i in rows],
        }
    )
    tau = 0.05
    callback = SlowTuningCallback(tau=tau, interval="step")
    trainer = SFTTrainer(
        model=make_tiny_model(tokenizer),
        processing_class=tokenizer,
        train_dataset=dataset,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        args=training_args(tmp_path, config_class=SFTConfig, max_steps=4, max_length=64),
        callbacks=[callback],
    )
    trainer.train()
    assert [step for step, _ in callback.history] == [1, 2, 3, 4]
    assert any(result.projected for _, result in callback.history), "lr too low to test"
    final = math.sqrt(sum(n**2 for n in frobenius(explicit_deltas(trainer.model)).values()))
    assert final <= tau * (1 + 1e-5)
    saved = saved_adapter_norms(tmp_path / "checkpoint-4", scaling=8 / 4)
    assert len(saved) == 4 and math.sqrt(sum(n**2 for n in saved)) <= tau * (1 + 1e-5)


def test_callback_projects_at_epoch_end(tokenizer, tmp_path):
    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    tau = 0.05
    callback = SlowTuningCallback(tau=tau, scope="module")
    args = training_args(tmp_path, max_steps=-1, num_train_epochs=2, save_strategy="epoch")
    Trainer(model=model, args=args, train_dataset=lm_dataset(tokenizer, rows=4), callbacks=[callback]).train()
    assert [step for step, _ in callback.history] == [2, 4]  # 4 rows / batch 2 = 2 steps per epoch
    assert callback.history[-1][1].projected
    assert max(frobenius(explicit_deltas(model)).values()) <= tau * (1 + 1e-5)
    saved = saved_adapter_norms(tmp_path / "checkpoint-2", scaling=8 / 4)
    assert len(saved) == 2 and max(saved) <= tau * (1 + 1e-5)


def test_epoch_interval_step_checkpoint_at_epoch_boundary_holds_projected_weights(tokenizer, tmp_path):
    # Step checkpoints are saved right after `on_step_end`, before `on_epoch_end`: a checkpoint on the step that
    # completes an epoch must already hold the projected weights, and each epoch is checked exactly once.
    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    tau = 0.05
    callback = SlowTuningCallback(tau=tau)
    args = training_args(tmp_path, max_steps=-1, num_train_epochs=2, save_strategy="steps", save_steps=2)
    Trainer(model=model, args=args, train_dataset=lm_dataset(tokenizer, rows=4), callbacks=[callback]).train()
    assert [step for step, _ in callback.history] == [2, 4]
    assert callback.history[0][1].norm_before > tau, "lr too low to test"
    for step in (2, 4):
        saved = saved_adapter_norms(tmp_path / f"checkpoint-{step}", scaling=8 / 4)
        assert len(saved) == 2 and math.sqrt(sum(n**2 for n in saved)) <= tau * (1 + 1e-5)


def test_callback_full_finetuning_keeps_w0_across_resume(tokenizer, tmp_path):
    model = make_tiny_model(tokenizer)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    tau = 0.5
    args = training_args(tmp_path, max_steps=4, learning_rate=0.01)
    callback = SlowTuningCallback(tau=tau, interval="step")
    Trainer(model=model, args=args, train_dataset=lm_dataset(tokenizer), callbacks=[callback]).train()
    assert [step for step, _ in callback.history] == [1, 2, 3, 4]
    assert any(result.projected for _, result in callback.history), "lr too low to test"

    def naive_global_delta(m):
        return math.sqrt(
            sum(float((p.detach().double() - w0[n].double()).square().sum()) for n, p in m.named_parameters())
        )

    assert naive_global_delta(model) <= tau * (1 + 1e-5)
    assert (tmp_path / REFERENCE_FILENAME).is_file()

    # Resume from checkpoint-2 with a fresh callback: W0 must be the persisted snapshot, not the resumed weights.
    resumed_model = make_tiny_model(tokenizer, seed=1)
    resumed_callback = SlowTuningCallback(tau=tau, interval="step")
    resumed = Trainer(
        model=resumed_model, args=args, train_dataset=lm_dataset(tokenizer), callbacks=[resumed_callback]
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert [step for step, _ in resumed_callback.history] == [3, 4]
    for name, value in resumed_callback.reference.items():
        assert torch.equal(value, w0[name]), name
    assert naive_global_delta(resumed_model) <= tau * (1 + 1e-5)


def test_resumed_full_finetuning_without_snapshot_is_refused(tokenizer, tmp_path):
    model = make_tiny_model(tokenizer)
    args = training_args(tmp_path, max_steps=2, save_steps=1, learning_rate=0.01)
    Trainer(model=model, args=args, train_dataset=lm_dataset(tokenizer)).train()
    callback = SlowTuningCallback(tau=1.0, interval="step")
    trainer = Trainer(
        model=make_tiny_model(tokenizer), args=args, train_dataset=lm_dataset(tokenizer), callbacks=[callback]
    )
    with pytest.raises(FileNotFoundError, match=REFERENCE_FILENAME):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


# ------------------------------------------------------------------------- LoRA inits that do not start at 0


def true_distances(model, originals: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖(base + s·B·A) − W_original‖_F per adapted module in float64: the real distance from the initial model."""
    distances = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            base = module.get_base_layer().weight.detach().double()
            delta = explicit_deltas(model)[name]
            original_name = name.removeprefix("base_model.model.") + ".weight"
            distances[name] = float(
                torch.linalg.matrix_norm(base + delta - originals[original_name].double())
            )
    return distances


@pytest.mark.parametrize("init", ["pissa", "olora", False])
def test_lora_init_away_from_zero_is_refused_at_train_begin(tokenizer, tmp_path, init):
    base = make_tiny_model(tokenizer)
    originals = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=init)
    )
    lora_norm = float(global_norm(lora_delta_norms(model)))
    true_norm = math.sqrt(sum(d**2 for d in true_distances(model, originals).values()))
    if init is False:
        assert lora_norm > 0.01  # random start: the initial student is not the base either
    else:
        assert true_norm < 1e-5 < 0.01 < lora_norm  # ‖s·B·A‖ is not the distance from the initial model
    callback = SlowTuningCallback(tau=0.1)
    args = SimpleNamespace(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"starts at s·B·A = 0.*init_lora_weights=True"):
        callback.on_train_begin(args, TrainerState(), TrainerControl(), model=model)


@pytest.mark.parametrize("init", [True, "gaussian", "orthogonal"])
def test_zero_start_lora_inits_pass_the_train_begin_check(tokenizer, tmp_path, init):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init)
    model = get_peft_model(make_tiny_model(tokenizer), config)
    assert max(frobenius(explicit_deltas(model)).values()) < 1e-6
    SlowTuningCallback(tau=0.1).on_train_begin(
        SimpleNamespace(output_dir=str(tmp_path)), TrainerState(), TrainerControl(), model=model
    )


def test_resumed_lora_run_is_not_refused_for_its_trained_adapter(tokenizer, tmp_path):
    state = TrainerState(global_step=3)
    SlowTuningCallback(tau=0.1).on_train_begin(
        SimpleNamespace(output_dir=str(tmp_path)),
        state,
        TrainerControl(),
        model=lora_model(tokenizer, ["q_proj"]),
    )


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "lora_ga", False])
@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"slow_tuning_tau": 0.1}, "Slow Tuning"),
        ({"entropy_mask_ratio": 0.2, "entropy_source": "initial"}, "entropy_source='initial'"),
    ],
    ids=["slow_tuning", "initial_source"],
)
def test_check_peft_config_refuses_inits_that_rewrite_the_base(tmp_path, init, knobs, message):
    from slowed.config import SLowEDConfig
    from slowed.trainer import check_peft_config

    config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=init)
    args = SLowEDConfig(str(tmp_path), use_cpu=True, bf16=False, **knobs)
    with pytest.raises(ValueError, match=rf"init_lora_weights={init!r}.*{message}.*init_lora_weights=True"):
        check_peft_config(config, args)
    check_peft_config(
        config, SLowEDConfig(str(tmp_path), use_cpu=True, bf16=False, entropy_mask_ratio=0.2)
    )  # online LEM alone: fine
    for fine in (True, "gaussian", "eva"):
        check_peft_config(LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=fine), args)


# ---------------------------------------------------------------------- checkpoints when training stops early


def test_epoch_interval_projects_a_max_steps_checkpoint_mid_epoch(tokenizer, tmp_path):
    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    tau = 0.05
    callback = SlowTuningCallback(tau=tau)  # interval "epoch"; 8 rows / batch 2 = 4 steps per epoch
    args = training_args(tmp_path, max_steps=3, save_steps=3)
    Trainer(model=model, args=args, train_dataset=lm_dataset(tokenizer), callbacks=[callback]).train()
    assert [step for step, _ in callback.history] == [3]
    assert callback.history[0][1].norm_before > 2 * tau, "lr too low to test"
    saved = saved_adapter_norms(tmp_path / "checkpoint-3", scaling=8 / 4)
    assert len(saved) == 4 and math.sqrt(sum(n**2 for n in saved)) <= tau * (1 + 1e-6)


def test_epoch_interval_projects_an_early_stopping_checkpoint_mid_epoch(tokenizer, tmp_path):
    from transformers import EarlyStoppingCallback

    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    tau = 0.05
    callback = SlowTuningCallback(tau=tau)
    # Any change under 1e9 counts as no improvement: patience 1 stops training at the second evaluation (step 2).
    stopper = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e9)
    args = training_args(
        tmp_path,
        max_steps=-1,
        num_train_epochs=1,
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="loss",
    )
    dataset = lm_dataset(tokenizer)
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, callbacks=[stopper, callback]
    )
    trainer.train()
    assert trainer.state.global_step == 2  # stopped mid-epoch (4 steps per epoch)
    assert [step for step, _ in callback.history] == [2]
    assert callback.history[0][1].norm_before > 2 * tau, "lr too low to test"
    saved = saved_adapter_norms(tmp_path / "checkpoint-2", scaling=8 / 4)
    assert len(saved) == 4 and math.sqrt(sum(n**2 for n in saved)) <= tau * (1 + 1e-6)


# ------------------------------------------------------------------------------ measured norms under rounding


def test_bf16_full_finetuning_projection_is_measured_and_within_tau(tokenizer):
    model = make_tiny_model(tokenizer).to(torch.bfloat16)
    reference = snapshot_weights(model)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.add_((torch.randn(param.shape, generator=generator) * 0.02).to(torch.bfloat16))
    tau = 0.05

    def naive_norm() -> float:
        return math.sqrt(
            sum(
                float((p.detach().double() - reference[n].double()).square().sum())
                for n, p in model.named_parameters()
            )
        )

    before = naive_norm()
    result = project_full_(model, reference, tau)
    after = naive_norm()
    assert before > 10 * tau
    assert after <= tau * (1 + 1e-6)
    assert after > tau * 0.95  # scaled to just inside τ, not collapsed
    assert rel_err(result.norm_after, after) < 1e-12  # the logged number is the measured one


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scope", ["global", "module"])
def test_low_precision_lora_projection_is_measured_and_within_tau(tokenizer, dtype, scope):
    model = lora_model(tokenizer, ["q_proj", "v_proj", "gate_proj"], b_std=0.3).to(dtype)
    tau = 0.3 * min(frobenius(explicit_deltas(model)).values())
    result = project_lora_(model, tau, scope=scope)
    after = frobenius(explicit_deltas(model))
    measured = math.sqrt(sum(n**2 for n in after.values())) if scope == "global" else max(after.values())
    assert measured <= tau * (1 + 1e-6)
    assert rel_err(result.norm_after, math.sqrt(sum(n**2 for n in after.values()))) < 1e-9


# ----------------------------------------------------------------------------------------- non-finite norms


def test_non_finite_lora_norm_raises_and_changes_nothing(tokenizer):
    from slowed.slow_tuning import NonFiniteDeltaError

    model = lora_model(tokenizer, ["q_proj", "v_proj"])
    broken = "base_model.model.model.layers.1.self_attn.v_proj"
    with torch.no_grad():
        model.get_submodule(broken).lora_B["default"].weight[0, 0] = float("nan")
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    with pytest.raises(NonFiniteDeltaError, match=rf"not finite.*1 module\(s\): {broken}$") as caught:
        project_lora_(model, 1e-3)
    assert caught.value.modules == [broken]
    for name, value in state.items():
        assert torch.equal(model.get_parameter(name).isnan(), value.isnan()), name
        assert torch.equal(model.get_parameter(name).nan_to_num(), value.nan_to_num()), name


class BreakWeightsAt(TrainerCallback):
    """Writes inf into one LoRA factor at the end of optimizer step `step` (a diverged update)."""

    def __init__(self, step: int, module: str):
        self.step, self.module = step, module

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.get_submodule(self.module).lora_B["default"].weight.fill_(float("inf"))


@pytest.mark.parametrize("save_steps", [1, None], ids=["with_checkpoint", "none_saved"])
def test_non_finite_norm_in_training_names_step_module_and_last_checkpoint(tokenizer, tmp_path, save_steps):
    from slowed.slow_tuning import NonFiniteDeltaError

    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    broken = "base_model.model.model.layers.0.self_attn.q_proj"
    save = {"save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    args = training_args(tmp_path, max_steps=4, **save)
    callbacks = [BreakWeightsAt(2, broken), SlowTuningCallback(tau=1.0, interval="step")]
    trainer = Trainer(model=model, args=args, train_dataset=lm_dataset(tokenizer), callbacks=callbacks)
    expected = str(tmp_path / "checkpoint-1") if save_steps else f"none saved under {tmp_path}"
    with pytest.raises(NonFiniteDeltaError, match=rf"step 2: .*{broken}.*last checkpoint is {expected} "):
        trainer.train()
    assert not (tmp_path / "checkpoint-2").exists()


# ------------------------------------------------------------------------------ adapters, snapshot writers


def two_adapter_model(tokenizer):
    """q_proj/v_proj LoRA adapters "first" and "second" with different random B (so their norms differ)."""
    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), adapter_name="first"
    )
    model.add_adapter("second", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(
                    torch.randn(param.shape, generator=generator) * (0.1 if ".first." in name else 1.0)
                )
    return model


def test_the_active_adapter_is_projected_not_default(tokenizer):
    model = two_adapter_model(tokenizer)
    model.set_adapter("second")
    expected = math.sqrt(sum(n**2 for n in frobenius(explicit_deltas(model, "second")).values()))
    first_before = explicit_deltas(model, "first")
    assert rel_err(float(global_norm(lora_delta_norms(model))), expected) < 1e-9
    project_lora_(model, 0.5 * expected)
    after = math.sqrt(sum(n**2 for n in frobenius(explicit_deltas(model, "second")).values()))
    assert rel_err(after, 0.5 * expected) < 1e-5
    for name, delta in explicit_deltas(model, "first").items():
        assert torch.equal(delta, first_before[name])


def test_several_active_adapters_are_refused(tokenizer, tmp_path):
    model = two_adapter_model(tokenizer)
    model.base_model.set_adapter(["first", "second"])
    with pytest.raises(ValueError, match=r"2 are active at once: \['first', 'second'\].*set_adapter"):
        SlowTuningCallback(tau=1.0).on_train_begin(
            SimpleNamespace(output_dir=str(tmp_path)), TrainerState(), TrainerControl(), model=model
        )


def test_full_finetuning_snapshot_is_written_by_each_nodes_local_process_zero(tokenizer, tmp_path):
    # The local main process of a second node: not world process zero, but it needs the file on its own disk.
    state = TrainerState(is_world_process_zero=False, is_local_process_zero=True)
    model = make_tiny_model(tokenizer)
    SlowTuningCallback(tau=1.0).on_train_begin(
        SimpleNamespace(output_dir=str(tmp_path)), state, TrainerControl(), model=model
    )
    saved = load_file(tmp_path / REFERENCE_FILENAME)
    for name, param in model.named_parameters():
        assert torch.equal(saved[name], param.detach()), name
    other = TrainerState(is_world_process_zero=False, is_local_process_zero=False)
    SlowTuningCallback(tau=1.0).on_train_begin(
        SimpleNamespace(output_dir=str(tmp_path / "other")), other, TrainerControl(), model=model
    )
    assert not (tmp_path / "other" / REFERENCE_FILENAME).exists()


def test_schedule_free_optimizers_are_refused(tokenizer, tmp_path):
    schedulefree = pytest.importorskip("schedulefree", reason="schedulefree is not installed")
    model = get_peft_model(make_tiny_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj"]))
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="schedule-free"):
        SlowTuningCallback(tau=1.0).on_train_begin(
            SimpleNamespace(output_dir=str(tmp_path)),
            TrainerState(),
            TrainerControl(),
            model=model,
            optimizer=optimizer,
        )


def test_slowed_trainer_adds_slow_tuning_after_user_callbacks(tokenizer, tmp_path):
    # Early stopping sets should_training_stop in its on_evaluate; Slow Tuning must run after it to see the flag.
    from transformers import EarlyStoppingCallback

    from slowed.config import SLowEDConfig
    from slowed.trainer import SLowEDTrainer

    stopper = EarlyStoppingCallback(early_stopping_patience=1)
    args = training_args(tmp_path, config_class=SLowEDConfig, slow_tuning_tau=0.1, max_length=64)
    trainer = SLowEDTrainer(
        model=make_tiny_model(tokenizer),
        processing_class=tokenizer,
        train_dataset=lm_dataset(tokenizer),
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]),
        args=args,
        callbacks=[stopper],
    )
    order = trainer.callback_handler.callbacks
    assert order.index(stopper) < order.index(trainer.slow_tuning)
