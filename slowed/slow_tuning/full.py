"""Slow Tuning with full fine-tuning: the W0 reference (snapshot, saved for resumption), ‖W − W0‖, the projection.

W0 is a snapshot of the trainable parameters; the projection sets W ← W0 + c·(W − W0). ``"module"`` scope caps
each parameter tensor on its own. Under FSDP2 the norm of each parameter sums the squared entries of each rank's
local shard of W − W0 and all-reduces the partial sums over the sharded mesh dimensions (the norm of the FULL
ΔW); every rank then scales its shard by the same factor. Full fine-tuning under DeepSpeed is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from slowed.jsonio import atomic_path
from slowed.slow_tuning.distributed import is_deepspeed_param, is_dtensor, local, rounding_unit
from slowed.slow_tuning.projection import ProjectionResult, Scope, checked_tau_and_scope, project

REFERENCE_FILENAME = "slow_tuning_reference.safetensors"
_CHUNK_ELEMENTS = 1 << 22


def _trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_deepspeed_param(param):
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
        if is_dtensor(param) and not is_dtensor(reference[name]):
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
    flat_param = local(param.detach()).view(-1)
    flat_ref = local(ref.detach()).reshape(-1).to(flat_param.device)
    for start in range(0, flat_param.numel(), _CHUNK_ELEMENTS):
        yield flat_param[start : start + _CHUNK_ELEMENTS], flat_ref[start : start + _CHUNK_ELEMENTS]


def _all_reduce_over_shards(partial: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Sum a per-shard partial sum over the mesh dimensions along which the DTensor `param` is sharded."""
    if is_dtensor(param):
        for mesh_dim, placement in enumerate(param.placements):
            if placement.is_shard():
                dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=param.device_mesh.get_group(mesh_dim))
    return partial


def _delta_norm(param: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """‖W − W0‖_F in float64 over the FULL tensor (FSDP2: local squares all-reduced; a collective)."""
    squares = sum(
        ((p.to(torch.float64) - r.to(torch.float64)).square().sum() for p, r in _chunks(param, ref)),
        torch.zeros((), dtype=torch.float64, device=local(param).device),
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
    tau, scope = checked_tau_and_scope(tau, scope)
    pairs = {name: (param, ref) for name, param, ref in _reference_pairs(model, reference)}

    def apply(scale: dict[str, float]) -> None:
        for name, c in scale.items():
            for p, r in _chunks(*pairs[name]):
                r64 = r.to(torch.float64)
                p.copy_((r64 + c * (p.to(torch.float64) - r64)).to(p.dtype))

    def measure() -> dict[str, torch.Tensor]:
        return {name: _delta_norm(param, ref) for name, (param, ref) in pairs.items()}

    unit = rounding_unit([param for param, _ in pairs.values()])
    with torch.no_grad():
        return project(measure, apply, tau, scope, unit)


def _full_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor on CPU (FSDP2: all-gathered, a collective)."""
    full = tensor.detach().full_tensor() if is_dtensor(tensor) else tensor.detach()
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
        if is_dtensor(param):
            from torch.distributed.tensor import distribute_tensor

            reference[name] = distribute_tensor(
                full[name].to(local(param).device), param.device_mesh, param.placements, src_data_rank=None
            )
        else:
            reference[name] = full[name].to(param.device)
    return reference
