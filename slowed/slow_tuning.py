"""Slow Tuning: keep the weights in a Frobenius ball of radius τ around the initial model.

The update is ΔW = W − W0. With LoRA (peft) ΔW = s·B·A per adapted module (A: r×in, B: out×r, s the
module's scaling), W0 is the frozen base and nothing needs to be stored. With full fine-tuning W0 is a
snapshot of the trainable parameters. When ‖ΔW‖_F > τ the update is scaled back onto the sphere of radius
τ: LoRA multiplies A and B each by sqrt(τ/‖ΔW‖) (so ΔW becomes (τ/‖ΔW‖)·ΔW exactly), full fine-tuning sets
W ← W0 + (τ/‖ΔW‖)·(W − W0). Scope ``"global"`` measures one norm over all adapted modules (the square root
of the sum of squared module norms) and scales every module by the same factor; ``"module"`` caps each
module (LoRA) or each parameter tensor (full fine-tuning) on its own.

LoRA norms use the Gram trick ‖s·B·A‖_F² = s²·sum((BᵀB) ∘ (A·Aᵀ)) in float64: only r×r matrices are
formed, never the out×in product B·A.

Distributed training: under DeepSpeed ZeRO (parameters carrying ``ds_id`` or ``_hp_mapping``) the LoRA
factors are read from and written to the optimizer's fp32 master copy (``deepspeed.utils``
``safe_get_full_fp32_param`` / ``safe_set_full_fp32_param``) and the low-precision copy is updated inside
``deepspeed.zero.GatheredParameters(modifier_rank=0)``; this path has not been run in this repository's
tests (no DeepSpeed here). FSDP, and full fine-tuning under DeepSpeed, are refused with an error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from slowed.atomic import atomic_path

logger = logging.getLogger(__name__)

Scope = Literal["global", "module"]
SCOPES: tuple[str, ...] = ("global", "module")
INTERVAL_NAMES: tuple[str, ...] = ("epoch", "step")
REFERENCE_FILENAME = "slow_tuning_reference.safetensors"
LOG_KEY_BEFORE = "slowed/delta_norm_before"
LOG_KEY_AFTER = "slowed/delta_norm_after"
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class ProjectionResult:
    """Outcome of one Slow Tuning check.

    ``norm_before`` / ``norm_after``: global ‖ΔW‖_F before and after (after = computed from the applied
    factors). ``module_norms``: per-module ‖ΔW‖_F before projection. ``scale``: per-module factor c applied
    to ΔW (1.0 where unchanged; A and B were each multiplied by sqrt(c)). ``projected``: whether anything
    changed.
    """

    norm_before: float
    norm_after: float
    module_norms: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    projected: bool = False


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


def unconstrained_parameters(model: nn.Module, adapter_name: str = "default") -> list[str]:
    """Names of trainable parameters outside the LoRA factors of `adapter_name` (modules_to_save, biases, ...):
    Slow Tuning does not keep them near W0. Raises like `lora_delta_norms` when the adapter cannot be projected."""
    covered = {id(p) for f in _lora_factors(model, adapter_name) for p in (f.lora_A, f.lora_B)}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]


def check_lora_projectable(model: nn.Module, adapter_name: str = "default") -> None:
    """Raise ValueError unless every module adapted by `adapter_name` has ΔW = s·B·A (see `lora_delta_norms`).

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


# ------------------------------------------------------------------------------ parameter access (ZeRO-aware)


def _is_deepspeed_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def _read_float64(param: torch.Tensor) -> torch.Tensor:
    """The full parameter as float64 (DeepSpeed: gathered from the fp32 master copy; a collective call)."""
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
    """param ← factor·param in place (DeepSpeed: master copy and low-precision copy both)."""
    if not _is_deepspeed_param(param):
        param.mul_(factor)
        return
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    scaled = safe_get_full_fp32_param(param) * factor
    safe_set_full_fp32_param(param, scaled)
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=hasattr(param, "ds_id")):
        param.data.copy_(scaled.reshape(param.data.shape).to(param.dtype))


def _refuse_fsdp(model: nn.Module, fsdp_option: object) -> None:
    sharded = bool(fsdp_option) or any(
        type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()
    )
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        sharded = sharded or any(isinstance(p, DTensor) for p in model.parameters())
    if sharded:
        raise NotImplementedError(
            "Slow Tuning does not support FSDP-sharded models (norms of sharded LoRA factors are not "
            "implemented or tested here); train with DDP or DeepSpeed ZeRO instead"
        )


# -------------------------------------------------------------------------------------------------- LoRA


def _gram_norm(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """‖s·B·A‖_F as a float64 scalar from r×r Gram matrices (A: r×in, B: out×r)."""
    gram_A = lora_A @ lora_A.T
    gram_B = lora_B.T @ lora_B
    return abs(scaling) * (gram_A * gram_B).sum().clamp_min(0.0).sqrt()


def _lora_norms(factors: list[_LoraFactors]) -> dict[str, torch.Tensor]:
    return {f.name: _gram_norm(_read_float64(f.lora_A), _read_float64(f.lora_B), f.scaling) for f in factors}


def lora_delta_norms(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Module name -> ‖ΔW‖_F (float64 scalar) for every module adapted by LoRA adapter `adapter_name`.

    Works on a PeftModel or any model with peft LoRA layers injected. Linear and embedding LoRA are
    supported. Raises ValueError when there is no such module, for DoRA and other LoRA variants, LoHa / LoKr
    / IA3 layers, convolution LoRA, lora_bias, merged adapters, stacked-expert parameters and LoRA on
    lm_head (refused by TRL's fused LM head).
    """
    return _lora_norms(_lora_factors(model, adapter_name))


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
    after = math.sqrt(sum((scale[name] * n) ** 2 for name, n in module_norms.items()))
    projected = any(c < 1.0 for c in scale.values())
    return ProjectionResult(before, after if projected else before, module_norms, scale, projected)


def project_lora_(
    model: nn.Module, tau: float, scope: Scope = "global", adapter_name: str = "default"
) -> ProjectionResult:
    """Scale LoRA updates in place so that ‖ΔW‖_F ≤ τ (globally or per module); no change at or below τ."""
    tau, scope = _validate_tau(tau), _validate_scope(scope)
    factors = _lora_factors(model, adapter_name)
    result = _projection_factors(_lora_norms(factors), tau, scope)
    with torch.no_grad():
        for f in factors:
            c = result.scale[f.name]
            if c < 1.0:
                _scale_parameter_(f.lora_A, math.sqrt(c))
                _scale_parameter_(f.lora_B, math.sqrt(c))
    return result


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

    This doubles the memory of the trainable parameters on their device.
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
        pairs.append((name, param, reference[name]))
    if not pairs:
        raise ValueError("Slow Tuning (full fine-tuning) found no trainable parameters in the model")
    return pairs


def _chunks(param: torch.Tensor, ref: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Matching flat slices of the parameter and its reference (float64 copies are made per slice only)."""
    flat_param, flat_ref = param.detach().view(-1), ref.detach().reshape(-1).to(param.device)
    for start in range(0, flat_param.numel(), _CHUNK_ELEMENTS):
        yield flat_param[start : start + _CHUNK_ELEMENTS], flat_ref[start : start + _CHUNK_ELEMENTS]


def _delta_norm(param: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    squares = sum(
        ((p.to(torch.float64) - r.to(torch.float64)).square().sum() for p, r in _chunks(param, ref)),
        torch.zeros((), dtype=torch.float64, device=param.device),
    )
    return squares.sqrt()


def full_delta_norms(model: nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> ‖W − W0‖_F (float64 scalar) for every trainable parameter, W0 = `reference[name]`."""
    return {name: _delta_norm(param, ref) for name, param, ref in _reference_pairs(model, reference)}


def project_full_(
    model: nn.Module, reference: dict[str, torch.Tensor], tau: float, scope: Scope = "global"
) -> ProjectionResult:
    """W ← W0 + c·(W − W0) in place with c from `ProjectionResult.scale` ("module" = per parameter tensor)."""
    tau, scope = _validate_tau(tau), _validate_scope(scope)
    pairs = _reference_pairs(model, reference)
    result = _projection_factors({name: _delta_norm(p, r) for name, p, r in pairs}, tau, scope)
    with torch.no_grad():
        for name, param, ref in pairs:
            c = result.scale[name]
            if c >= 1.0:
                continue
            for p, r in _chunks(param, ref):
                r64 = r.to(torch.float64)
                p.copy_((r64 + c * (p.to(torch.float64) - r64)).to(p.dtype))
    return result


def _save_reference_atomically(reference: dict[str, torch.Tensor], path: str) -> None:
    with atomic_path(path) as temporary:
        save_file({name: t.detach().contiguous().cpu() for name, t in reference.items()}, str(temporary))


# ---------------------------------------------------------------------------------------------- callback


class SlowTuningCallback(TrainerCallback):
    """Project ΔW back into the τ-ball during `transformers.Trainer` / `trl.SFTTrainer` training.

    Args:
        tau: radius τ > 0 of the Frobenius ball around W0.
        scope: "global" (one norm over all adapted modules) or "module" (each capped on its own).
        interval: "epoch" (at the step that completes each epoch, or `on_epoch_end` when `max_steps`
            ends training mid-epoch), "step" (every optimizer step) or an int N (every N optimizer
            steps, plus the final step so the trained model always ends within τ).
        reference: W0 for full fine-tuning (name -> tensor); None snapshots the trainable parameters at
            `on_train_begin`. Ignored with LoRA, whose W0 is the frozen base.
        adapter_name: the peft adapter to constrain.

    The mode comes from the model: peft tuner layers present → LoRA, else full fine-tuning. Both hooks run
    before the Trainer saves a checkpoint, so checkpoints saved at a check hold projected weights (with
    interval "epoch", a checkpoint saved mid-epoch holds the weights as trained so far). Under DDP every
    rank projects its own replica identically; FSDP is refused.

    Resuming full fine-tuning: a fresh run (global_step 0) writes the snapshot to
    ``<output_dir>/slow_tuning_reference.safetensors`` (atomically, main process); a resumed run reloads it
    instead of re-snapshotting the resumed weights, and raises FileNotFoundError when it is missing.

    After every check `last_logs` holds {"slowed/delta_norm_before", "slowed/delta_norm_after"} (global
    norms) for the trainer's logs and `history` gains (global_step, ProjectionResult).
    """

    def __init__(
        self,
        tau: float,
        scope: Scope = "global",
        interval: Literal["epoch", "step"] | int = "epoch",
        reference: dict[str, torch.Tensor] | None = None,
        adapter_name: str = "default",
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

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("SlowTuningCallback needs the model; the Trainer passes it to callbacks")
        _refuse_fsdp(model, getattr(args, "fsdp", None))
        self.uses_lora = any(isinstance(m, BaseTunerLayer) for m in model.modules())
        if self.uses_lora:
            check_lora_projectable(model, self.adapter_name)
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
            devices = dict(_trainable_device_names(model))
            return {name: t.to(devices.get(name, "cpu")) for name, t in load_file(path).items()}
        reference = snapshot_weights(model)
        if state.is_world_process_zero:
            _save_reference_atomically(reference, path)
        return reference

    def on_step_end(self, args, state, control, model=None, **kwargs):
        n = self.every_n_steps
        if n is not None:
            if state.global_step % n == 0 or state.global_step >= state.max_steps:
                self._check(model, state.global_step)
        elif state.epoch is not None and float(state.epoch).is_integer():
            # The step that completes an epoch: the Trainer may save a step checkpoint right after this
            # hook and before `on_epoch_end`, so the epoch-end projection happens here.
            self._check(model, state.global_step)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        # Reached without an epoch-completing step when `max_steps` stops training mid-epoch.
        if self.interval == "epoch" and not (self.history and self.history[-1][0] == state.global_step):
            self._check(model, state.global_step)

    def _check(self, model: nn.Module, step: int) -> None:
        if self.uses_lora:
            result = project_lora_(model, self.tau, self.scope, self.adapter_name)
        else:
            result = project_full_(model, self.reference, self.tau, self.scope)
        self.last_logs = {LOG_KEY_BEFORE: result.norm_before, LOG_KEY_AFTER: result.norm_after}
        self.history.append((step, result))
        logger.info(
            "Slow Tuning at step %d: ||dW|| %.6g -> %.6g (tau %.6g, scope %s, %s)",
            step,
            result.norm_before,
            result.norm_after,
            self.tau,
            self.scope,
            "projected" if result.projected else "within tau",
        )


def _trainable_device_names(model: nn.Module) -> Iterator[tuple[str, torch.device]]:
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param.device
