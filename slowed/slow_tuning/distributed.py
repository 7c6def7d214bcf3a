"""Parameter access that works under DDP, FSDP2 and DeepSpeed ZeRO: read a full parameter, scale it in place.

- FSDP2 (``torch.distributed.fsdp.fully_shard``; parameters are DTensors): reads all-gather the shards
  (``full_tensor()``); scaling multiplies each rank's local shard. FSDP1 (flat parameters) is refused.
- DeepSpeed ZeRO (parameters carrying ``ds_id`` or ``_hp_mapping``): reads come from the optimizer's fp32 master
  copy (``safe_get_full_fp32_param``), scaling rescales the master copy and the low-precision copy (inside
  ``GatheredParameters(modifier_rank=0)``); only tests/gpu/ exercises this path.
Reads are collectives under FSDP2 and DeepSpeed: every rank must call them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def full_shape(param: torch.Tensor) -> torch.Size:
    """The full shape, also for a ZeRO-3 partitioned parameter (whose local tensor is empty)."""
    return getattr(param, "ds_shape", param.shape)


def is_deepspeed_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def is_dtensor(tensor: torch.Tensor) -> bool:
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing storage), or the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def read_float64(param: torch.Tensor) -> torch.Tensor:
    """The full parameter as float64 (DeepSpeed: gathered from the fp32 master copy; FSDP2: all-gathered).

    Collective under DeepSpeed and FSDP2: every rank must call it.
    """
    if is_dtensor(param):
        return param.detach().full_tensor().to(torch.float64)
    if not is_deepspeed_param(param):
        return param.detach().to(torch.float64)
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)
    if full is None:
        raise RuntimeError(
            "Slow Tuning: DeepSpeed parameter has no fp32 master copy yet (optimizer not built)"
        )
    return full.to(torch.float64).reshape(full_shape(param))


def scale_parameter_(param: torch.Tensor, factor: float) -> None:
    """param ← factor·param in place (DeepSpeed: master copy and low-precision copy both; FSDP2: local shard)."""
    if not is_deepspeed_param(param):
        local(param).mul_(factor)
        return
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    scaled = safe_get_full_fp32_param(param) * factor
    safe_set_full_fp32_param(param, scaled)
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=hasattr(param, "ds_id")):
        param.data.copy_(scaled.reshape(param.data.shape).to(param.dtype))


def rounding_unit(params: list[torch.Tensor]) -> float:
    """The largest unit roundoff (eps/2) among the parameters' floating dtypes (2^-24 at least)."""
    units = [torch.finfo(p.dtype).eps / 2 for p in params if p.dtype.is_floating_point]
    return max([2.0**-24, *units])


def refuse_fsdp1(model: nn.Module) -> None:
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        raise NotImplementedError(
            "Slow Tuning does not support FSDP1 (FullyShardedDataParallel flat parameters); use FSDP2 "
            "(accelerate fsdp_version: 2, torch.distributed.fsdp.fully_shard), DDP or DeepSpeed ZeRO"
        )
