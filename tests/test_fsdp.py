"""Slow Tuning under FSDP2 (`fully_shard`): two gloo processes on CPU against a single-process float64 reference.

The test launches this file with ``torch.distributed.run --nproc_per_node 2``; each process shards a small
model with uneven shard sizes, sets known weights, projects, gathers, and checks the norms and the resulting
weights against explicit float64 computations made from the unsharded tensors (the same on every rank).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

WORLD_SIZE = 2
TIMEOUT_S = 120


class Block(nn.Module):
    """Odd shapes so that dim-0 shards over 2 ranks are uneven (7 = 4 + 3 rows, r = 3 = 2 + 1 rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(5, 7)
        self.down = nn.Linear(7, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(x))


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().double()


def _explicit_lora_deltas(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> s·B·A in float64 from the gathered factors (the reference, formed explicitly)."""
    deltas = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = _full(module.lora_A["default"].weight), _full(module.lora_B["default"].weight)
            deltas[name] = module.scaling["default"] * (b @ a)
    return deltas


def _global(deltas: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(d.square().sum()) for d in deltas.values()))


def _check_lora(mesh, scope: str) -> None:
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard

    from slowed.slow_tuning import lora_delta_norms, project_lora_

    torch.manual_seed(0)
    model = get_peft_model(Block(), LoraConfig(r=3, lora_alpha=6, target_modules=["up", "down"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    before = _explicit_lora_deltas(model)  # single-process float64 reference, before sharding
    fully_shard(model, mesh=mesh)
    assert all(type(p).__name__ == "DTensor" for p in model.parameters())
    norms = lora_delta_norms(model)
    for name, delta in before.items():
        assert abs(float(norms[name]) - float(torch.linalg.matrix_norm(delta))) < 1e-9 * float(delta.norm())
    tau = 0.25 * min(float(torch.linalg.matrix_norm(d)) for d in before.values())
    result = project_lora_(model, tau, scope=scope)
    after = _explicit_lora_deltas(model)
    for name, delta in before.items():
        norm = float(torch.linalg.matrix_norm(delta))
        c = tau / _global(before) if scope == "global" else min(1.0, tau / norm)
        torch.testing.assert_close(after[name], c * delta, rtol=1e-6, atol=1e-7)
    measured = _global(after) if scope == "global" else max(float(d.norm()) for d in after.values())
    assert measured <= tau * (1 + 1e-6)
    assert abs(result.norm_after - _global(after)) < 1e-9 * _global(after)


def _check_full(mesh, scope: str, tmp: Path) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    from slowed.slow_tuning import load_reference, project_full_, save_reference, snapshot_weights

    torch.manual_seed(0)
    model = Block()
    w0 = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(2)
    noise = {name: torch.randn(p.shape, generator=generator) * 0.5 for name, p in model.named_parameters()}
    fully_shard(model, mesh=mesh)
    reference = snapshot_weights(model)  # W0 as this rank's shards
    with torch.no_grad():
        for name, param in model.named_parameters():
            shard = distribute_tensor(noise[name], mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().add_(shard)
    current = {name: _full(p) for name, p in model.named_parameters()}
    naive = {name: float((current[name] - w0[name]).norm()) for name in w0}
    naive_global = math.sqrt(sum(v * v for v in naive.values()))
    tau = 0.3 * naive_global if scope == "global" else sorted(naive.values())[1]

    result = project_full_(model, reference, tau, scope=scope)

    assert abs(result.norm_before - naive_global) < 1e-9 * naive_global
    for name, param in model.named_parameters():
        c = tau / naive_global if scope == "global" else min(1.0, tau / naive[name])
        expected = w0[name] + c * (current[name] - w0[name])
        torch.testing.assert_close(_full(param), expected, rtol=0, atol=1e-6)
    path = str(tmp / "reference.safetensors")
    save_reference(reference, path, write=torch.distributed.get_rank() == 0)
    torch.distributed.barrier()
    for name, loaded in load_reference(model, path).items():
        assert torch.equal(loaded.to_local(), reference[name].to_local()), name
        assert torch.equal(_full(loaded), w0[name].float().double()), name


def _worker() -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.distributed.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    tmp = Path(sys.argv[1])
    for scope in ("global", "module"):
        _check_lora(mesh, scope)
        _check_full(mesh, scope, tmp)
    print(f"rank {torch.distributed.get_rank()}: FSDP2 Slow Tuning checks passed", flush=True)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_fsdp2_projection_matches_single_process_float64(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(tmp_path),
    ]  # fmt: skip
    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = launcher.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its workers, nothing else
        output, _ = launcher.communicate()
        pytest.fail(f"FSDP2 workers did not finish within {TIMEOUT_S} s:\n{output}")
    assert launcher.returncode == 0, output
    assert output.count("FSDP2 Slow Tuning checks passed") == WORLD_SIZE, output


if __name__ == "__main__":
    _worker()
