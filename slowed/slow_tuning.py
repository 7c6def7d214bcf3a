"""Slow Tuning: keep the weights in a Frobenius ball of radius τ around the initial model.

The update is ΔW = W − W0. With LoRA (peft) ΔW = s·B·A per adapted module (A: r×in, B: out×r, s the
module's scaling), W0 is the frozen base and nothing needs to be stored. That is the distance from the
initial student only when the adapter starts at s·B·A = 0 with the base untouched (peft's
``init_lora_weights=True``, ``"gaussian"``, ``"eva"``, ``"orthogonal"``): PiSSA, OLoRA, CorDA, LoftQ and
LoRA-GA rewrite the base to W − s·B₀·A₀, and ``init_lora_weights=False`` starts at a random s·B·A ≠ 0, so
`SlowTuningCallback` refuses an adapter whose s·B·A is not zero when training starts. With full fine-tuning
W0 is a snapshot of the trainable parameters.

When ‖ΔW‖_F > τ the update is scaled back onto the sphere of radius τ: LoRA multiplies A and B each by
sqrt(τ/‖ΔW‖) (so ΔW becomes (τ/‖ΔW‖)·ΔW exactly in exact arithmetic), full fine-tuning sets
W ← W0 + (τ/‖ΔW‖)·(W − W0). The norm is then *measured* again from the stored weights; where rounding
(bf16, fp16) left it above τ·(1 + 1e-6), the update is scaled again slightly inside τ (a margin of the
overshoot or the dtype's unit roundoff, growing per pass; after `MAX_PROJECTION_PASSES` − 1 passes, which only
a τ below the dtype's resolution around W0 needs, the update is reset to ΔW = 0), so the guarantee
‖ΔW‖_F ≤ τ·(1 + 1e-6) holds in any dtype and the logged norm is the measured one. Scope ``"global"``
measures one norm over all adapted modules (the square root of the sum of squared module norms) and scales
every module by the same factor; ``"module"`` caps each module (LoRA) or each parameter tensor (full
fine-tuning) on its own. A NaN or infinite norm raises `NonFiniteDeltaError` instead of projecting.

LoRA norms use the Gram trick ‖s·B·A‖_F² = s²·sum((BᵀB) ∘ (A·Aᵀ)) in float64: only r×r matrices are
formed, never the out×in product B·A.

Optimizer state: a projection rescales the weights only. Adam's moments keep referring to the unscaled
update (the method's reading: the projection is a constraint, not a restart), so the next step's direction is
unchanged. An optimizer that keeps its own copy of the weights and writes it back would undo the projection:
DeepSpeed's fp32 master copy is rescaled too (below); schedule-free optimizers (``optim="schedule_free_*"``,
whose z/x sequences are weight copies) are refused at train begin; apex/amp O2-style master weights are not
detectable here and unsupported.

Distributed training:
- DDP: every rank projects its own identical replica.
- FSDP2 (``torch.distributed.fsdp.fully_shard``; parameters are DTensors): full fine-tuning sums the squared
  entries of each rank's local shard of W − W0 and all-reduces the partial sums over the sharded mesh
  dimensions, so the norm is that of the FULL ΔW, then every rank scales its shard by the same factor. LoRA
  gathers the small factors (``full_tensor()``, r×in and out×r per module) to form the r×r Gram matrices on
  every rank, and scales each local shard by the same sqrt(c). FSDP1 (``FullyShardedDataParallel`` flat
  parameters) is refused: use FSDP2 (accelerate ``fsdp_version: 2``).
- DeepSpeed ZeRO (parameters carrying ``ds_id`` or ``_hp_mapping``): the LoRA factors are read from and
  written to the optimizer's fp32 master copy (``deepspeed.utils`` ``safe_get_full_fp32_param`` /
  ``safe_set_full_fp32_param``) and the low-precision copy is updated inside
  ``deepspeed.zero.GatheredParameters(modifier_rank=0)``; only tests/gpu/ exercises this path. Full
  fine-tuning under DeepSpeed is refused.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from slowed.jsonio import atomic_path

logger = logging.getLogger(__name__)

Scope = Literal["global", "module"]
SCOPES: tuple[str, ...] = ("global", "module")
INTERVAL_NAMES: tuple[str, ...] = ("epoch", "step")
REFERENCE_FILENAME = "slow_tuning_reference.safetensors"
LOG_KEY_BEFORE = "slowed/delta_norm_before"
LOG_KEY_AFTER = "slowed/delta_norm_after"
TAU_TOLERANCE = 1e-6
"""The guarantee after a projection: measured ‖ΔW‖_F ≤ τ·(1 + TAU_TOLERANCE)."""
MAX_PROJECTION_PASSES = 8
ZERO_DELTA_INITS: tuple[bool | str, ...] = (True, "gaussian", "eva", "orthogonal", "mica")
"""peft ``init_lora_weights`` values that start at s·B·A = 0 and leave the base weight untouched."""
INITIAL_DELTA_REL_TOL = 1e-4
"""At step 0 an adapter counts as non-zero when ‖s·B·A‖ > INITIAL_DELTA_REL_TOL · |s|·‖B‖·‖A‖ (rounding-proof)."""
_CHUNK_ELEMENTS = 1 << 22


class NonFiniteDeltaError(FloatingPointError):
    """‖ΔW‖_F is NaN or infinite (non-finite weights); `modules` names the offending modules / parameters."""

    def __init__(self, message: str, modules: list[str]) -> None:
        super().__init__(message)
        self.modules = modules


@dataclass
class ProjectionResult:
    """Outcome of one Slow Tuning check.

    ``norm_before`` / ``norm_after``: global ‖ΔW‖_F before and after, both measured from the stored weights
    (after = before when nothing changed). ``module_norms`` / ``module_norms_after``: per-module ‖ΔW‖_F
    before and after. ``scale``: per-module factor c applied to ΔW in total (1.0 where unchanged; with LoRA A
    and B were each multiplied by sqrt(c)). ``passes``: scaling passes applied (1, or more where rounding
    left the measured norm above τ). ``projected``: whether anything changed.
    """

    norm_before: float
    norm_after: float
    module_norms: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    projected: bool = False
    module_norms_after: dict[str, float] = field(default_factory=dict)
    passes: int = 0


@dataclass(frozen=True)
class _LoraFactors:
    """One adapted module: ΔW = scaling·B·A (possibly transposed, which leaves its norm unchanged)."""

    name: str
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scaling: float


# ---------------------------------------------------------------------------------------------- validation


def _validate_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(
            f"Slow Tuning option tau must be a finite number > 0 (a Frobenius norm), got {tau!r}"
        )
    return float(tau)


def _validate_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"Slow Tuning option scope must be one of {SCOPES}, got {scope!r}")
    return scope


def _validate_interval(interval: str | int) -> str | int:
    valid_int = isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1
    if not (valid_int or interval in INTERVAL_NAMES):
        raise ValueError(
            f"Slow Tuning option interval must be 'epoch', 'step' or an integer >= 1 (every N optimizer "
            f"steps), got {interval!r}"
        )
    return interval


def is_zero_delta_init(init_lora_weights: bool | str) -> bool:
    """Whether peft's ``init_lora_weights`` starts at s·B·A = 0 with the base weight untouched (`ZERO_DELTA_INITS`)."""
    if isinstance(init_lora_weights, str):
        return init_lora_weights.lower() in ZERO_DELTA_INITS
    return init_lora_weights is True


def _shape(param: torch.Tensor) -> torch.Size:
    """The full shape, also for a ZeRO-3 partitioned parameter (whose local tensor is empty)."""
    return getattr(param, "ds_shape", param.shape)


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
    shape_A, shape_B = _shape(lora_A), _shape(lora_B)
    if len(shape_A) != 2 or len(shape_B) != 2 or shape_A[0] != shape_B[1]:
        raise _refusal(name, f"unexpected LoRA factor shapes A {tuple(shape_A)}, B {tuple(shape_B)}")
    return _LoraFactors(name, lora_A, lora_B, float(module.scaling[adapter_name]))


def _lora_factors(model: nn.Module, adapter_name: str) -> list[_LoraFactors]:
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


def _resolve_adapter(model: nn.Module, adapter_name: str | None) -> str:
    return active_adapter_name(model) if adapter_name is None else adapter_name


def unconstrained_parameters(model: nn.Module, adapter_name: str | None = None) -> list[str]:
    """Names of trainable parameters outside the LoRA factors of `adapter_name` (default: the active adapter):
    modules_to_save, biases, ... that Slow Tuning does not keep near W0. Raises like `lora_delta_norms` when
    the adapter cannot be projected."""
    factors = _lora_factors(model, _resolve_adapter(model, adapter_name))
    covered = {id(p) for f in factors for p in (f.lora_A, f.lora_B)}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]


def check_lora_projectable(model: nn.Module, adapter_name: str | None = None) -> None:
    """Raise ValueError unless every module adapted by `adapter_name` (default: the active adapter) has
    ΔW = s·B·A (see `lora_delta_norms`).

    Also logs a warning naming trainable parameters outside the LoRA factors (modules_to_save, biases),
    which Slow Tuning does not constrain.
    """
    others = unconstrained_parameters(model, adapter_name)
    if others:
        logger.warning(
            "Slow Tuning constrains only the LoRA factors; %d other trainable parameters (e.g. %s, from "
            "modules_to_save or bias training) are not kept near W0",
            len(others),
            ", ".join(others[:3]),
        )


def nonzero_adapter_modules(model: nn.Module, adapter_name: str | None = None) -> dict[str, float]:
    """Module name -> ‖s·B·A‖_F for the modules whose LoRA product is not zero (beyond float rounding).

    "Not zero" means ‖s·B·A‖_F > `INITIAL_DELTA_REL_TOL`·|s|·‖B‖_F·‖A‖_F: exact zeros (B = 0 or A = 0) and
    rounding residue of orthogonal factors (~1e-7 relative in float32) pass, PiSSA-style or random starts do not.
    """
    nonzero = {}
    for f in _lora_factors(model, _resolve_adapter(model, adapter_name)):
        lora_A, lora_B = _read_float64(f.lora_A), _read_float64(f.lora_B)
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


# ------------------------------------------------------------------- parameter access (ZeRO- and FSDP2-aware)


def _is_deepspeed_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def _is_dtensor(tensor: torch.Tensor) -> bool:
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing storage), or the tensor itself."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def _read_float64(param: torch.Tensor) -> torch.Tensor:
    """The full parameter as float64 (DeepSpeed: gathered from the fp32 master copy; FSDP2: all-gathered).

    Collective under DeepSpeed and FSDP2: every rank must call it.
    """
    if _is_dtensor(param):
        return param.detach().full_tensor().to(torch.float64)
    if not _is_deepspeed_param(param):
        return param.detach().to(torch.float64)
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)
    if full is None:
        raise RuntimeError(
            "Slow Tuning: DeepSpeed parameter has no fp32 master copy yet (optimizer not built)"
        )
    return full.to(torch.float64).reshape(_shape(param))


def _scale_parameter_(param: torch.Tensor, factor: float) -> None:
    """param ← factor·param in place (DeepSpeed: master copy and low-precision copy both; FSDP2: local shard)."""
    if not _is_deepspeed_param(param):
        _local(param).mul_(factor)
        return
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    scaled = safe_get_full_fp32_param(param) * factor
    safe_set_full_fp32_param(param, scaled)
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=hasattr(param, "ds_id")):
        param.data.copy_(scaled.reshape(param.data.shape).to(param.dtype))


def _rounding_unit(params: list[torch.Tensor]) -> float:
    """The largest unit roundoff (eps/2) among the parameters' floating dtypes (2^-24 at least)."""
    units = [torch.finfo(p.dtype).eps / 2 for p in params if p.dtype.is_floating_point]
    return max([2.0**-24, *units])


def _refuse_fsdp1(model: nn.Module) -> None:
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        raise NotImplementedError(
            "Slow Tuning does not support FSDP1 (FullyShardedDataParallel flat parameters); use FSDP2 "
            "(accelerate fsdp_version: 2, torch.distributed.fsdp.fully_shard), DDP or DeepSpeed ZeRO"
        )


def _refuse_weight_copying_optimizer(optimizer: object) -> None:
    """Refuse optimizers known to keep their own weight copies (they would undo every projection)."""
    while optimizer is not None:
        if "schedulefree" in type(optimizer).__name__.lower():
            raise ValueError(
                f"Slow Tuning cannot be combined with the schedule-free optimizer {type(optimizer).__name__}: it "
                "keeps its own copies of the weights (the z and x sequences) and its next step would undo the "
                "projection. Use a standard optimizer (e.g. optim='adamw_torch')."
            )
        optimizer = getattr(optimizer, "optimizer", None)


# ------------------------------------------------------------------------------------------- projection


def _raise_if_non_finite(norms: dict[str, torch.Tensor]) -> None:
    bad = [name for name, norm in norms.items() if not math.isfinite(float(norm))]
    if bad:
        raise NonFiniteDeltaError(
            f"‖ΔW‖_F is not finite (NaN or inf weights) in {len(bad)} module(s): {', '.join(bad[:5])}"
            + (" ..." if len(bad) > 5 else ""),
            bad,
        )


def global_norm(norms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sqrt(Σ norm²) over the per-module norms, float64 (0 for an empty dict)."""
    if not norms:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack([n.to(torch.float64).reshape(()).cpu() for n in norms.values()]).square().sum().sqrt()


def _projection_factors(norms: dict[str, torch.Tensor], tau: float, scope: str) -> ProjectionResult:
    """Per-module ΔW factors c: global scope one c = τ/‖ΔW‖ for all, module scope τ/‖ΔW_m‖ where over τ."""
    module_norms = {name: float(n) for name, n in norms.items()}
    before = float(global_norm(norms))
    if scope == "global":
        c = tau / before if before > tau else 1.0
        scale = dict.fromkeys(module_norms, c)
    else:
        scale = {name: (tau / n if n > tau else 1.0) for name, n in module_norms.items()}
    projected = any(c < 1.0 for c in scale.values())
    return ProjectionResult(before, before, module_norms, scale, projected, dict(module_norms), 0)


def _rescale_margin(norm: float, tau: float, unit: float, passes: int) -> float:
    """How far inside τ pass `passes` + 1 aims: the larger of the overshoot and the unit roundoff, ×2·4^(passes−1)."""
    overshoot = norm / tau - 1.0
    return min(0.5, max(unit, overshoot) * 2.0 * 4.0 ** (passes - 1))


def _rescale_factors(
    norms: dict[str, float], tau: float, scope: str, unit: float, passes: int
) -> dict[str, float]:
    """Factors that bring measured norms above τ·(1 + TAU_TOLERANCE) inside τ; {} when all are within."""
    limit = tau * (1 + TAU_TOLERANCE)
    if scope == "global":
        total = math.sqrt(sum(n * n for n in norms.values()))
        if total <= limit:
            return {}
        return dict.fromkeys(norms, tau * (1 - _rescale_margin(total, tau, unit, passes)) / total)
    return {
        name: tau * (1 - _rescale_margin(n, tau, unit, passes)) / n for name, n in norms.items() if n > limit
    }


def _project(
    measure: Callable[[], dict[str, torch.Tensor]],
    apply: Callable[[dict[str, float]], None],
    tau: float,
    scope: str,
    unit: float,
) -> ProjectionResult:
    """Measure, scale, and re-measure until the measured norms are within τ·(1 + TAU_TOLERANCE).

    `measure` returns name -> ‖ΔW‖_F from the stored weights; `apply` multiplies ΔW of the named modules by the
    given factors (c = 0 restores W0 exactly). Passes after the first run only where rounding overshot and aim
    inside τ by a growing margin (`_rescale_margin`); if `MAX_PROJECTION_PASSES` − 1 passes do not suffice (τ
    below what the dtype can resolve around W0) the modules still over τ are reset to ΔW = 0, with a warning.
    """
    norms = measure()
    _raise_if_non_finite(norms)
    result = _projection_factors(norms, tau, scope)
    factors = {name: c for name, c in result.scale.items() if c < 1.0}
    while factors:
        apply(factors)
        result.passes += 1
        after = measure()
        _raise_if_non_finite(after)
        result.module_norms_after = {name: float(n) for name, n in after.items()}
        factors = _rescale_factors(result.module_norms_after, tau, scope, unit, result.passes)
        if factors and result.passes >= MAX_PROJECTION_PASSES - 1:
            logger.warning(
                "Slow Tuning: rounding keeps ||dW|| above tau %.6g after %d passes (tau is below the resolution "
                "of the weights' dtype around W0); resetting dW to 0 for %d module(s)",
                tau,
                result.passes,
                len(factors),
            )
            factors = dict.fromkeys(factors, 0.0)
        for name, c in factors.items():
            result.scale[name] *= c
    result.norm_after = math.sqrt(sum(n * n for n in result.module_norms_after.values()))
    return result


# -------------------------------------------------------------------------------------------------- LoRA


def _gram_norm(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """‖s·B·A‖_F as a float64 scalar from r×r Gram matrices (A: r×in, B: out×r)."""
    gram_A = lora_A @ lora_A.T
    gram_B = lora_B.T @ lora_B
    return abs(scaling) * (gram_A * gram_B).sum().clamp_min(0.0).sqrt()


def _lora_norms(factors: list[_LoraFactors]) -> dict[str, torch.Tensor]:
    return {f.name: _gram_norm(_read_float64(f.lora_A), _read_float64(f.lora_B), f.scaling) for f in factors}


def lora_delta_norms(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """Module name -> ‖ΔW‖_F (float64 scalar) for every module adapted by LoRA adapter `adapter_name`
    (default: the model's one active adapter).

    Works on a PeftModel or any model with peft LoRA layers injected. Linear and embedding LoRA are
    supported. Raises ValueError when there is no such module, for DoRA and other LoRA variants, LoHa / LoKr
    / IA3 layers, convolution LoRA, lora_bias, merged adapters, stacked-expert parameters and LoRA on
    lm_head (refused by TRL's fused LM head). Collective under FSDP2 / DeepSpeed.
    """
    return _lora_norms(_lora_factors(model, _resolve_adapter(model, adapter_name)))


def project_lora_(
    model: nn.Module, tau: float, scope: Scope = "global", adapter_name: str | None = None
) -> ProjectionResult:
    """Scale LoRA updates in place so that the measured ‖ΔW‖_F ≤ τ·(1 + 1e-6) (globally or per module);
    no change at or below τ. Raises `NonFiniteDeltaError` for NaN/inf norms (nothing is changed then)."""
    tau, scope = _validate_tau(tau), _validate_scope(scope)
    factors = _lora_factors(model, _resolve_adapter(model, adapter_name))
    by_name = {f.name: f for f in factors}

    def apply(scale: dict[str, float]) -> None:
        for name, c in scale.items():
            _scale_parameter_(by_name[name].lora_A, math.sqrt(c))
            _scale_parameter_(by_name[name].lora_B, math.sqrt(c))

    unit = _rounding_unit([p for f in factors for p in (f.lora_A, f.lora_B)])
    with torch.no_grad():
        return _project(lambda: _lora_norms(factors), apply, tau, scope, unit)


# -------------------------------------------------------------------------------------- full fine-tuning


def _trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_deepspeed_param(param):
            raise NotImplementedError(
                "Slow Tuning with full fine-tuning under DeepSpeed ZeRO is not supported (the W0 snapshot and "
                "projection would need the partitioned fp32 master weights); use LoRA or plain DDP"
            )
        yield name, param


def snapshot_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of the trainable parameters (name -> tensor, same device and dtype): the W0 of full FT.

    This doubles the memory of the trainable parameters on their device. Under FSDP2 the clones are DTensors
    holding each rank's shard only.
    """
    return {name: param.detach().clone() for name, param in _trainable_parameters(model)}


def _reference_pairs(
    model: nn.Module, reference: dict[str, torch.Tensor]
) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    pairs = []
    for name, param in _trainable_parameters(model):
        if name not in reference:
            raise ValueError(
                f"Slow Tuning reference has no tensor for trainable parameter {name!r}; build it with "
                f"snapshot_weights(model) before training"
            )
        if reference[name].shape != param.shape:
            raise ValueError(
                f"Slow Tuning reference tensor {name!r} has shape {tuple(reference[name].shape)}, the parameter "
                f"has {tuple(param.shape)}; the reference belongs to another model"
            )
        if _is_dtensor(param) and not _is_dtensor(reference[name]):
            raise ValueError(
                f"Slow Tuning reference tensor {name!r} is a plain tensor but the parameter is sharded (FSDP2); "
                "snapshot W0 after fully_shard (snapshot_weights(model)) so both hold the same shards"
            )
        pairs.append((name, param, reference[name]))
    if not pairs:
        raise ValueError("Slow Tuning (full fine-tuning) found no trainable parameters in the model")
    return pairs


def _chunks(param: torch.Tensor, ref: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Matching flat slices of this rank's parameter (shard) and its reference (float64 copies per slice only)."""
    flat_param = _local(param.detach()).view(-1)
    flat_ref = _local(ref.detach()).reshape(-1).to(flat_param.device)
    for start in range(0, flat_param.numel(), _CHUNK_ELEMENTS):
        yield flat_param[start : start + _CHUNK_ELEMENTS], flat_ref[start : start + _CHUNK_ELEMENTS]


def _all_reduce_over_shards(partial: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Sum a per-shard partial sum over the mesh dimensions along which the DTensor `param` is sharded."""
    if _is_dtensor(param):
        for mesh_dim, placement in enumerate(param.placements):
            if placement.is_shard():
                dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=param.device_mesh.get_group(mesh_dim))
    return partial


def _delta_norm(param: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """‖W − W0‖_F in float64 over the FULL tensor (FSDP2: local squares all-reduced; a collective)."""
    squares = sum(
        ((p.to(torch.float64) - r.to(torch.float64)).square().sum() for p, r in _chunks(param, ref)),
        torch.zeros((), dtype=torch.float64, device=_local(param).device),
    )
    return _all_reduce_over_shards(squares, param).sqrt()


def full_delta_norms(model: nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> ‖W − W0‖_F (float64 scalar) for every trainable parameter, W0 = `reference[name]`."""
    return {name: _delta_norm(param, ref) for name, param, ref in _reference_pairs(model, reference)}


def project_full_(
    model: nn.Module, reference: dict[str, torch.Tensor], tau: float, scope: Scope = "global"
) -> ProjectionResult:
    """W ← W0 + c·(W − W0) in place so that the measured ‖W − W0‖_F ≤ τ·(1 + 1e-6) ("module" = per
    parameter tensor). Raises `NonFiniteDeltaError` for NaN/inf norms (nothing is changed then)."""
    tau, scope = _validate_tau(tau), _validate_scope(scope)
    pairs = {name: (param, ref) for name, param, ref in _reference_pairs(model, reference)}

    def apply(scale: dict[str, float]) -> None:
        for name, c in scale.items():
            for p, r in _chunks(*pairs[name]):
                r64 = r.to(torch.float64)
                p.copy_((r64 + c * (p.to(torch.float64) - r64)).to(p.dtype))

    def measure() -> dict[str, torch.Tensor]:
        return {name: _delta_norm(param, ref) for name, (param, ref) in pairs.items()}

    unit = _rounding_unit([param for param, _ in pairs.values()])
    with torch.no_grad():
        return _project(measure, apply, tau, scope, unit)


def _full_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor on CPU (FSDP2: all-gathered, a collective)."""
    full = tensor.detach().full_tensor() if _is_dtensor(tensor) else tensor.detach()
    return full.contiguous().cpu()


def save_reference(reference: dict[str, torch.Tensor], path: str, write: bool = True) -> None:
    """Write the full W0 tensors to `path` (safetensors, atomic). Every rank calls it (FSDP2 gathers the
    shards); only ranks with `write` touch the file."""
    full = {name: _full_cpu(t) for name, t in reference.items()}
    if write:
        with atomic_path(path) as temporary:
            save_file(full, str(temporary))


def load_reference(model: nn.Module, path: str) -> dict[str, torch.Tensor]:
    """W0 from `path`, on each trainable parameter's device (FSDP2: this rank's shard, as a DTensor)."""
    full = load_file(path)
    reference = {}
    for name, param in _trainable_parameters(model):
        if name not in full:
            continue  # `_reference_pairs` names the missing tensor
        if _is_dtensor(param):
            from torch.distributed.tensor import distribute_tensor

            reference[name] = distribute_tensor(
                full[name].to(_local(param).device), param.device_mesh, param.placements, src_data_rank=None
            )
        else:
            reference[name] = full[name].to(param.device)
    return reference


def last_checkpoint(output_dir: str) -> str:
    """The newest ``checkpoint-*`` folder under `output_dir`, or "none saved"."""
    found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    return found or f"none saved under {output_dir}"


# ---------------------------------------------------------------------------------------------- callback


class SlowTuningCallback(TrainerCallback):
    """Project ΔW back into the τ-ball during `transformers.Trainer` / `trl.SFTTrainer` training.

    Args:
        tau: radius τ > 0 of the Frobenius ball around W0.
        scope: "global" (one norm over all adapted modules) or "module" (each capped on its own).
        interval: "epoch" (at the step that completes each epoch), "step" (every optimizer step) or an int N
            (every N optimizer steps). With every interval the step where training stops is checked too:
            ``max_steps`` reached (also mid-epoch) or ``control.should_training_stop`` set (in `on_step_end`,
            or in `on_evaluate` by early stopping), so the trained model and its final checkpoint end within τ.
        reference: W0 for full fine-tuning (name -> tensor); None snapshots the trainable parameters at
            `on_train_begin`. Ignored with LoRA, whose W0 is the frozen base.
        adapter_name: the peft adapter to constrain; None (default) takes the model's one active adapter and
            refuses several active at once.

    The mode comes from the model: peft tuner layers present → LoRA, else full fine-tuning. With LoRA, a fresh
    run (global_step 0) whose adapter does not start at s·B·A = 0 is refused (see `refuse_nonzero_initial_adapter`).
    The checks run before the Trainer saves a checkpoint, so a checkpoint saved at a check holds projected
    weights. With interval "epoch" (or N) a checkpoint saved between checks while training continues holds the
    weights as trained so far. Early stopping sets ``should_training_stop`` in its own `on_evaluate`: this
    callback must come after it in the callback list to see the flag (`SLowEDTrainer` adds it last; with a plain
    Trainer pass it after `EarlyStoppingCallback`).

    A NaN or infinite ‖ΔW‖ raises `NonFiniteDeltaError` naming the optimizer step, the modules and the newest
    checkpoint under ``output_dir``. Under DDP every rank projects its own replica identically; under FSDP2 the
    norm is that of the full ΔW (see the module docstring); FSDP1 and schedule-free optimizers are refused.

    Resuming full fine-tuning: a fresh run (global_step 0) writes the full W0 snapshot to
    ``<output_dir>/slow_tuning_reference.safetensors`` (atomically, from each node's local process zero, so
    every node of a multi-node run without a shared filesystem has it); a resumed run reloads it instead of
    re-snapshotting the resumed weights, and raises FileNotFoundError when it is missing.

    After every check `last_logs` holds {"slowed/delta_norm_before", "slowed/delta_norm_after"} (global
    norms, both measured) for the trainer's logs and `history` gains (global_step, ProjectionResult).
    """

    def __init__(
        self,
        tau: float,
        scope: Scope = "global",
        interval: Literal["epoch", "step"] | int = "epoch",
        reference: dict[str, torch.Tensor] | None = None,
        adapter_name: str | None = None,
    ) -> None:
        self.tau = _validate_tau(tau)
        self.scope = _validate_scope(scope)
        self.interval = _validate_interval(interval)
        self.reference = reference
        self.adapter_name = adapter_name
        self.uses_lora: bool | None = None
        self.last_logs: dict[str, float] = {}
        self.history: list[tuple[int, ProjectionResult]] = []

    @property
    def every_n_steps(self) -> int | None:
        """N for step intervals, None for "epoch"."""
        if self.interval == "epoch":
            return None
        return 1 if self.interval == "step" else int(self.interval)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise ValueError("SlowTuningCallback needs the model; the Trainer passes it to callbacks")
        _refuse_fsdp1(model)
        _refuse_weight_copying_optimizer(optimizer)
        self.uses_lora = any(isinstance(m, BaseTunerLayer) for m in model.modules())
        if self.uses_lora:
            self.adapter_name = _resolve_adapter(model, self.adapter_name)
            check_lora_projectable(model, self.adapter_name)
            if state.global_step == 0:
                refuse_nonzero_initial_adapter(model, self.adapter_name)
        elif self.reference is None:
            self.reference = self._full_reference(model, args, state)

    def _full_reference(self, model: nn.Module, args, state) -> dict[str, torch.Tensor]:
        path = os.path.join(args.output_dir, REFERENCE_FILENAME)
        if state.global_step > 0:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Slow Tuning resumes full fine-tuning at step {state.global_step} but the W0 snapshot "
                    f"{path} is missing; pass reference=... (the initial weights) to SlowTuningCallback"
                )
            return load_reference(model, path)
        reference = snapshot_weights(model)
        save_reference(reference, path, write=state.is_local_process_zero)
        return reference

    def on_step_end(self, args, state, control, model=None, **kwargs):
        n = self.every_n_steps
        if n is not None:
            due = state.global_step % n == 0
        else:
            # The step that completes an epoch: the Trainer may save a step checkpoint right after this
            # hook and before `on_epoch_end`, so the epoch-end projection happens here.
            due = state.epoch is not None and float(state.epoch).is_integer()
        stopping = state.global_step >= state.max_steps or control.should_training_stop
        if due or stopping:
            self._check_once(model, args, state)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        # Early stopping sets the flag here, after `on_step_end` and before the checkpoint of this step.
        if control.should_training_stop:
            self._check_once(model, args, state)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.interval == "epoch":
            self._check_once(model, args, state)

    def _check_once(self, model: nn.Module, args, state) -> None:
        """Check at this optimizer step unless it was checked already."""
        if self.history and self.history[-1][0] == state.global_step:
            return
        try:
            result = self._project(model)
        except NonFiniteDeltaError as error:
            raise NonFiniteDeltaError(
                f"Slow Tuning at optimizer step {state.global_step}: {error}. Training cannot continue from "
                f"these weights; the last checkpoint is {last_checkpoint(args.output_dir)} (resume from it, e.g. "
                "with a lower learning rate)",
                error.modules,
            ) from error
        self.last_logs = {LOG_KEY_BEFORE: result.norm_before, LOG_KEY_AFTER: result.norm_after}
        self.history.append((state.global_step, result))
        logger.info(
            "Slow Tuning at step %d: ||dW|| %.6g -> %.6g measured (tau %.6g, scope %s, %s)",
            state.global_step,
            result.norm_before,
            result.norm_after,
            self.tau,
            self.scope,
            "projected" if result.projected else "within tau",
        )

    def _project(self, model: nn.Module) -> ProjectionResult:
        if self.uses_lora:
            return project_lora_(model, self.tau, self.scope, self.adapter_name)
        return project_full_(model, self.reference, self.tau, self.scope)
