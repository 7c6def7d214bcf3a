"""Slow Tuning with LoRA: which modules carry ΔW = s·B·A, their norms, the projection, and what it cannot constrain.

ΔW = s·B·A per adapted module (A: r×in, B: out×r, s the module's scaling); W0 is the frozen base and nothing
needs to be stored. That is the distance from the initial student only when the adapter starts at s·B·A = 0 with
the base untouched (peft's ``init_lora_weights=True``, ``"gaussian"``, ``"eva"``, ``"orthogonal"``): PiSSA, OLoRA,
CorDA, LoftQ and LoRA-GA rewrite the base to W − s·B₀·A₀, and ``init_lora_weights=False`` starts at a random
s·B·A ≠ 0, so a fresh run whose adapter is not zero is refused (`refuse_nonzero_initial_adapter`).

Norms use the Gram trick ‖s·B·A‖_F² = s²·sum((BᵀB) ∘ (A·Aᵀ)) in float64: only r×r matrices are formed, never
the out×in product B·A. The projection multiplies A and B each by sqrt(c), so ΔW becomes c·ΔW exactly in exact
arithmetic.

What Slow Tuning cannot constrain is said by one function, `unconstrained_parameters` (trainable parameters
outside the LoRA factors: modules_to_save, biases), after `lora_factors` has refused every layout where ΔW is not
s·B·A (DoRA and other LoRA variants, LoHa / LoKr / IA3, convolution LoRA, lora_bias, merged adapters, stacked
experts, LoRA on lm_head); `check_lora_projectable` is the one verdict, an error, that `SLowEDTrainer` and
`SlowTuningCallback` both give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from slowed.slow_tuning.distributed import full_shape, read_float64, rounding_unit, scale_parameter_
from slowed.slow_tuning.projection import ProjectionResult, Scope, checked_tau_and_scope, project

ZERO_DELTA_INITS: tuple[bool | str, ...] = (True, "gaussian", "eva", "orthogonal", "mica")
"""peft ``init_lora_weights`` values that start at s·B·A = 0 and leave the base weight untouched."""
INITIAL_DELTA_REL_TOL = 1e-4
"""At step 0 an adapter counts as non-zero when ‖s·B·A‖ > INITIAL_DELTA_REL_TOL · |s|·‖B‖·‖A‖ (rounding-proof)."""


@dataclass(frozen=True)
class _LoraFactors:
    """One adapted module: ΔW = scaling·B·A (possibly transposed, which leaves its norm unchanged)."""

    name: str
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scaling: float


def is_zero_delta_init(init_lora_weights: bool | str) -> bool:
    """Whether peft's ``init_lora_weights`` starts at s·B·A = 0 with the base weight untouched (`ZERO_DELTA_INITS`)."""
    if isinstance(init_lora_weights, str):
        return init_lora_weights.lower() in ZERO_DELTA_INITS
    return init_lora_weights is True


def _is_lm_head(model: nn.Module, name: str, module: nn.Module) -> bool:
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    output_embeddings = get_output_embeddings() if callable(get_output_embeddings) else None
    base_layer = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    return name.split(".")[-1] == "lm_head" or (
        output_embeddings is not None and base_layer is output_embeddings
    )


def _refusal(name: str, reason: str) -> ValueError:
    return ValueError(f"Slow Tuning cannot project the adapter on module {name!r}: {reason}")


def _module_factors(model: nn.Module, name: str, module: LoraLayer, adapter_name: str) -> _LoraFactors:
    """A, B and s of one LoRA module, after refusing every layout where ΔW is not s·B·A."""
    if _is_lm_head(model, name, module):
        raise _refusal(
            name,
            "LoRA on lm_head is refused by TRL's fused LM head (SFTTrainer); remove 'lm_head' from "
            "LoraConfig.target_modules",
        )
    if module.use_dora.get(adapter_name, False) or adapter_name in module.lora_magnitude_vector:
        raise _refusal(
            name, "DoRA (use_dora=True) rescales W0 + ΔW by a learned magnitude, so ΔW is not s·B·A"
        )
    variant = getattr(module, "lora_variant", {}).get(adapter_name)
    if variant is not None:
        raise _refusal(name, f"LoRA variant {type(variant).__name__} changes what ΔW means; use plain LoRA")
    if module.lora_bias.get(adapter_name, False):
        raise _refusal(name, "lora_bias=True adds a bias update outside s·B·A; use lora_bias=False")
    if adapter_name in module.merged_adapters:
        raise _refusal(name, f"adapter {adapter_name!r} is merged into the base weights; unmerge it first")
    if getattr(module, "num_experts", 1) != 1:
        raise _refusal(name, "LoRA on stacked expert parameters is a block of per-expert products, not s·B·A")
    if adapter_name in module.lora_embedding_A:
        lora_A, lora_B = module.lora_embedding_A[adapter_name], module.lora_embedding_B[adapter_name]
    else:
        layer_A, layer_B = module.lora_A[adapter_name], module.lora_B[adapter_name]
        if not (isinstance(layer_A, nn.Linear) and isinstance(layer_B, nn.Linear)):
            raise _refusal(
                name,
                f"only linear and embedding LoRA are supported, this layer uses {type(layer_A).__name__} "
                f"factors ({type(module).__name__})",
            )
        lora_A, lora_B = layer_A.weight, layer_B.weight
    shape_A, shape_B = full_shape(lora_A), full_shape(lora_B)
    if len(shape_A) != 2 or len(shape_B) != 2 or shape_A[0] != shape_B[1]:
        raise _refusal(name, f"unexpected LoRA factor shapes A {tuple(shape_A)}, B {tuple(shape_B)}")
    return _LoraFactors(name, lora_A, lora_B, float(module.scaling[adapter_name]))


def lora_factors(model: nn.Module, adapter_name: str) -> list[_LoraFactors]:
    """Every module of `model` adapted by LoRA adapter `adapter_name`, validated (see `lora_delta_norms`)."""
    factors: list[_LoraFactors] = []
    adapters_seen: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if not isinstance(module, LoraLayer):
            raise _refusal(
                name,
                f"{type(module).__name__} is not a LoRA layer (LoHa, LoKr, IA3, ... do not have ΔW = s·B·A)",
            )
        present = set(module.lora_A.keys()) | set(module.lora_embedding_A.keys())
        adapters_seen |= present
        if adapter_name in present:
            factors.append(_module_factors(model, name, module, adapter_name))
    if not factors:
        found = f"adapters present: {sorted(adapters_seen)}" if adapters_seen else "no peft LoRA layers found"
        raise ValueError(
            f"Slow Tuning (LoRA) found no module adapted by LoRA adapter {adapter_name!r} ({found}); wrap the "
            f"model with peft.get_peft_model(model, LoraConfig(...)) or pass the right adapter_name"
        )
    return factors


def active_adapter_name(model: nn.Module) -> str:
    """The one active peft adapter of `model` (its tuner layers' ``active_adapters``).

    Returns "default" when the model has no tuner layers (the LoRA functions then explain what is missing).
    Raises ValueError when several adapters are active at once (Slow Tuning constrains one ΔW) or none is.
    """
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        return "default"
    active = sorted({name for layer in layers for name in layer.active_adapters})
    if len(active) == 1:
        return active[0]
    if not active:
        raise ValueError(
            "Slow Tuning found peft layers but no active adapter; call model.set_adapter(<name>) first"
        )
    raise ValueError(
        f"Slow Tuning constrains one LoRA adapter, but {len(active)} are active at once: {active}. Activate one "
        "with model.set_adapter(<name>) (or pass adapter_name=...); ΔW of several combined adapters is not "
        "supported."
    )


def resolve_adapter(model: nn.Module, adapter_name: str | None) -> str:
    return active_adapter_name(model) if adapter_name is None else adapter_name


def unconstrained_parameters(model: nn.Module, adapter_name: str | None = None) -> list[str]:
    """Names of trainable parameters outside the LoRA factors of `adapter_name` (default: the active adapter):
    modules_to_save, biases, ... that Slow Tuning does not keep near W0. Raises like `lora_delta_norms` when
    the adapter cannot be projected."""
    factors = lora_factors(model, resolve_adapter(model, adapter_name))
    covered = {id(p) for f in factors for p in (f.lora_A, f.lora_B)}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]


def check_lora_projectable(model: nn.Module, adapter_name: str | None = None) -> None:
    """The one verdict on a LoRA model: ValueError unless Slow Tuning constrains everything that trains.

    Raises when a module adapted by `adapter_name` (default: the active adapter) does not have ΔW = s·B·A (see
    `lora_delta_norms`), and when other parameters are trainable (`unconstrained_parameters`: modules_to_save,
    biases), which would move without bound.
    """
    others = unconstrained_parameters(model, adapter_name)
    if others:
        raise ValueError(
            f"Slow Tuning constrains only the LoRA factors, but {len(others)} other parameters are trainable (e.g. "
            f"{others[:3]}, from modules_to_save or bias training) and would move without bound. Freeze them or "
            "turn Slow Tuning off (slow_tuning_tau=None)."
        )


def nonzero_adapter_modules(model: nn.Module, adapter_name: str | None = None) -> dict[str, float]:
    """Module name -> ‖s·B·A‖_F for the modules whose LoRA product is not zero (beyond float rounding).

    "Not zero" means ‖s·B·A‖_F > `INITIAL_DELTA_REL_TOL`·|s|·‖B‖_F·‖A‖_F: exact zeros (B = 0 or A = 0) and
    rounding residue of orthogonal factors (~1e-7 relative in float32) pass, PiSSA-style or random starts do not.
    """
    nonzero = {}
    for f in lora_factors(model, resolve_adapter(model, adapter_name)):
        lora_A, lora_B = read_float64(f.lora_A), read_float64(f.lora_B)
        norm = float(_gram_norm(lora_A, lora_B, f.scaling))
        bound = abs(f.scaling) * float(torch.linalg.vector_norm(lora_A) * torch.linalg.vector_norm(lora_B))
        if norm > INITIAL_DELTA_REL_TOL * bound:
            nonzero[f.name] = norm
    return nonzero


def refuse_nonzero_initial_adapter(model: nn.Module, adapter_name: str | None = None) -> None:
    """Raise ValueError when the adapter does not start at s·B·A = 0 (before any training step).

    ‖s·B·A‖ is the distance from the initial student only when the adapter starts at zero on an untouched
    base; PiSSA / OLoRA / CorDA / LoftQ / LoRA-GA rewrite the base to W − s·B₀·A₀, and a previously trained or
    randomly initialised adapter starts elsewhere.
    """
    nonzero = nonzero_adapter_modules(model, adapter_name)
    if nonzero:
        examples = ", ".join(f"{name} ({norm:.3g})" for name, norm in list(nonzero.items())[:3])
        raise ValueError(
            f"Slow Tuning needs a LoRA adapter that starts at s·B·A = 0, but {len(nonzero)} module(s) start with "
            f"‖s·B·A‖ ≠ 0 (e.g. {examples}), so ‖s·B·A‖ would not be the distance from the initial model. This "
            "happens with init_lora_weights='pissa'/'olora'/'corda'/'loftq'/'lora_ga' (which rewrite the base "
            "weight), init_lora_weights=False, or a loaded, already trained adapter. Use init_lora_weights=True "
            "(or 'gaussian'), or merge the existing adapter into the base (merge_and_unload) and add a fresh one."
        )


def _gram_norm(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """‖s·B·A‖_F as a float64 scalar from r×r Gram matrices (A: r×in, B: out×r)."""
    gram_A = lora_A @ lora_A.T
    gram_B = lora_B.T @ lora_B
    return abs(scaling) * (gram_A * gram_B).sum().clamp_min(0.0).sqrt()


def _lora_norms(factors: list[_LoraFactors]) -> dict[str, torch.Tensor]:
    return {f.name: _gram_norm(read_float64(f.lora_A), read_float64(f.lora_B), f.scaling) for f in factors}


def lora_delta_norms(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """Module name -> ‖ΔW‖_F (float64 scalar) for every module adapted by LoRA adapter `adapter_name`
    (default: the model's one active adapter).

    Works on a PeftModel or any model with peft LoRA layers injected. Linear and embedding LoRA are
    supported. Raises ValueError when there is no such module, for DoRA and other LoRA variants, LoHa / LoKr
    / IA3 layers, convolution LoRA, lora_bias, merged adapters, stacked-expert parameters and LoRA on
    lm_head (refused by TRL's fused LM head). Collective under FSDP2 / DeepSpeed.
    """
    return _lora_norms(lora_factors(model, resolve_adapter(model, adapter_name)))


def project_lora_(
    model: nn.Module, tau: float, scope: Scope = "global", adapter_name: str | None = None
) -> ProjectionResult:
    """Scale LoRA updates in place so that the measured ‖ΔW‖_F ≤ τ·(1 + 1e-6) (globally or per module);
    no change at or below τ. Raises `NonFiniteDeltaError` for NaN/inf norms (nothing is changed then)."""
    tau, scope = checked_tau_and_scope(tau, scope)
    factors = lora_factors(model, resolve_adapter(model, adapter_name))
    by_name = {f.name: f for f in factors}

    def apply(scale: dict[str, float]) -> None:
        for name, c in scale.items():
            scale_parameter_(by_name[name].lora_A, math.sqrt(c))
            scale_parameter_(by_name[name].lora_B, math.sqrt(c))

    unit = rounding_unit([p for f in factors for p in (f.lora_A, f.lora_B)])
    with torch.no_grad():
        return project(lambda: _lora_norms(factors), apply, tau, scope, unit)
