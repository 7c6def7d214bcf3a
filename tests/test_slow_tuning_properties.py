"""Property tests (hypothesis) for the Slow Tuning projections against explicit float64 references.

For random shapes, ranks, scalings, scopes and dtypes: the measured ‖ΔW‖_F after a projection is at most
τ·(1 + 1e-6); a projection at or below τ changes nothing; in float64 it scales ΔW by exactly τ/‖ΔW‖.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from torch import nn

from slowed.slow_tuning import project_full_, project_lora_, snapshot_weights

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOLERANCE = 1e-6
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


class Layers(nn.Module):
    """Linear layers named layer0, layer1, ... with the given (in, out) shapes."""

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        for i, (fan_in, fan_out) in enumerate(shapes):
            self.add_module(f"layer{i}", nn.Linear(fan_in, fan_out, bias=False))


shapes_strategy = st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24)), min_size=1, max_size=3)


def explicit_lora_deltas(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> s·B·A formed explicitly in float64 from the stored factors."""
    return {
        name: module.scaling["default"]
        * (
            module.lora_B["default"].weight.detach().double()
            @ module.lora_A["default"].weight.detach().double()
        )
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }


def norms(deltas: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(torch.linalg.vector_norm(d)) for name, d in deltas.items()}


def capped_norm(module_norms: dict[str, float], scope: str) -> float:
    """The quantity τ bounds: the global norm, or the largest module norm."""
    if scope == "global":
        return math.sqrt(sum(n * n for n in module_norms.values()))
    return max(module_norms.values())


def random_lora_model(shapes, rank, alpha, rslora, dtype, seed) -> nn.Module:
    torch.manual_seed(seed)
    targets = [f"layer{i}" for i in range(len(shapes))]
    config = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=rslora, target_modules=targets)
    model = get_peft_model(Layers(shapes), config).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return model


@PROPERTY_SETTINGS
@given(
    shapes=shapes_strategy,
    rank=st.integers(1, 8),
    alpha=st.floats(0.25, 64.0),
    rslora=st.booleans(),
    scope=st.sampled_from(["global", "module"]),
    dtype=st.sampled_from(DTYPES),
    tau_fraction=st.floats(1e-3, 3.0),
    seed=st.integers(0, 2**16),
)
def test_lora_projection_properties(shapes, rank, alpha, rslora, scope, dtype, tau_fraction, seed):
    model = random_lora_model(shapes, rank, alpha, rslora, dtype, seed)
    before = explicit_lora_deltas(model)
    tau = tau_fraction * capped_norm(norms(before), scope)
    factors_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    result = project_lora_(model, tau, scope=scope)

    after = explicit_lora_deltas(model)
    assert capped_norm(norms(after), scope) <= tau * (1 + TOLERANCE)
    if tau_fraction >= 1.0:
        assert not result.projected
        for name, value in factors_before.items():
            assert torch.equal(model.get_parameter(name), value), name
    if dtype == torch.float64:
        global_before = capped_norm(norms(before), "global")
        for name, delta in before.items():
            n = float(torch.linalg.vector_norm(delta))
            c = min(1.0, tau / (global_before if scope == "global" else n))
            torch.testing.assert_close(after[name], c * delta, rtol=1e-10, atol=1e-12 * n)


@PROPERTY_SETTINGS
@given(
    shapes=shapes_strategy,
    scope=st.sampled_from(["global", "module"]),
    dtype=st.sampled_from(DTYPES),
    step_size=st.floats(1e-3, 1.0),
    tau_fraction=st.floats(1e-3, 3.0),
    seed=st.integers(0, 2**16),
)
def test_full_finetuning_projection_properties(shapes, scope, dtype, step_size, tau_fraction, seed):
    torch.manual_seed(seed)
    model = Layers(shapes).to(dtype)
    reference = snapshot_weights(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(
                (torch.randn(param.shape, generator=generator, dtype=torch.float64) * step_size).to(dtype)
            )

    def deltas() -> dict[str, torch.Tensor]:
        return {n: p.detach().double() - reference[n].double() for n, p in model.named_parameters()}

    before = deltas()
    if capped_norm(norms(before), scope) == 0.0:
        return  # the step rounded away entirely in bfloat16: nothing to project
    tau = tau_fraction * capped_norm(norms(before), scope)
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}

    result = project_full_(model, reference, tau, scope=scope)

    after = deltas()
    assert capped_norm(norms(after), scope) <= tau * (1 + TOLERANCE)
    if tau_fraction >= 1.0:
        assert not result.projected
        for name, value in weights_before.items():
            assert torch.equal(model.get_parameter(name), value), name
    if dtype == torch.float64:
        global_before = capped_norm(norms(before), "global")
        for name, delta in before.items():
            n = float(torch.linalg.vector_norm(delta))
            c = min(1.0, tau / (global_before if scope == "global" else n)) if n > 0 else 1.0
            torch.testing.assert_close(after[name], c * delta, rtol=1e-10, atol=1e-12 * max(n, 1.0))
