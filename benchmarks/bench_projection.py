"""Slow Tuning at scale: ‖ΔW‖_F and the projection over a full LoRA set, against forming s·B·A explicitly.

The LoRA set has the real module shapes of a model (28 layers × q,k,v,o,gate,up,down for Qwen2.5-1.5B, 32 for
Llama-3-8B) with rank r. The base weights are never allocated: the linear layers live on the meta device and
only the LoRA factors A (r×in) and B (out×r) are real, random tensors (B is not zero, as after training).
Measured with the library's public functions on that peft model:

- ``lora_delta_norms``: the per-module norms (Gram trick, r×r matrices, float64);
- ``project_lora_``: one projection with τ below the norm (measure, scale A and B, measure again);
- explicit: ‖s·B·A‖_F by forming each out×in product in the factors' dtype (what one writes without the
  trick), and the explicit projection (two such passes and the same scaling);
- agreement: the library's norm against the explicit products in float64.

The explicit path is timed once over the first ``--explicit-layers`` layers and scaled to all layers (every
layer has the same shapes), which keeps the 8B shape within minutes.

    python benchmarks/bench_projection.py                 # Qwen2.5-1.5B and Llama-3-8B shapes, r=64, float32
    python benchmarks/bench_projection.py --models qwen2.5-1.5b --rounds 3
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from benchlib import ResultsSection, add_results_argument, markdown_table, median
from peft import LoraConfig, get_peft_model
from torch import nn

from slowed.slow_tuning import lora_delta_norms, project_lora_

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The linear shapes of a decoder: hidden size, MLP width, key/value width, number of layers."""

    name: str
    hidden: int
    intermediate: int
    kv_width: int
    layers: int

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Projection name -> (in_features, out_features)."""
        h, m, kv = self.hidden, self.intermediate, self.kv_width
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, m),
            "up_proj": (h, m),
            "down_proj": (m, h),
        }


SHAPES = {
    "qwen2.5-1.5b": ModelShape("Qwen2.5-1.5B", hidden=1536, intermediate=8960, kv_width=256, layers=28),
    "llama-3-8b": ModelShape("Llama-3-8B", hidden=4096, intermediate=14336, kv_width=1024, layers=32),
    "tiny": ModelShape("tiny", hidden=48, intermediate=96, kv_width=16, layers=2),
}


class _Layer(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        for name, (fan_in, fan_out) in shapes.items():
            self.add_module(name, nn.Linear(fan_in, fan_out, bias=False))


class _Decoder(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(shape.linear_shapes()) for _ in range(shape.layers))


def lora_model(shape: ModelShape, rank: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """A peft LoRA model over `shape` (rank `rank`, alpha 2·rank) whose base weights are on the meta device.

    A and B are filled with seeded Gaussian values scaled so that each s·B·A has entries of order 1e-3.
    """
    with torch.device("meta"):
        base = _Decoder(shape)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(PROJECTIONS)))
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            for factor in (module.lora_A["default"], module.lora_B["default"]):
                out_features, in_features = factor.weight.shape
                values = torch.randn(out_features, in_features, generator=generator) / math.sqrt(
                    in_features * 30
                )
                factor.weight = nn.Parameter(values.to(dtype))
    return model


def lora_factors(
    model: nn.Module, layers: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Module name -> (A, B, s) for every LoRA module of `model` (of its first `layers` layers when given)."""
    found = {}
    for name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and "default" in module.lora_A):
            continue
        if layers is not None and int(name.split("layers.")[1].split(".")[0]) >= layers:
            continue
        found[name] = (
            module.lora_A["default"].weight,
            module.lora_B["default"].weight,
            float(module.scaling["default"]),
        )
    return found


def explicit_squared_norms(factors: dict, dtype: torch.dtype) -> dict[str, float]:
    """Module name -> ‖s·B·A‖_F² with the out×in product formed in `dtype` (its norm taken in `dtype`)."""
    with torch.no_grad():
        return {
            name: float(torch.linalg.matrix_norm(scaling * (lora_B.to(dtype) @ lora_A.to(dtype)))) ** 2
            for name, (lora_A, lora_B, scaling) in factors.items()
        }


def explicit_projection(factors: dict, tau: float) -> float:
    """Project like `project_lora_` with explicit products: measure, scale A and B by sqrt(τ/‖ΔW‖), measure."""
    dtype = next(iter(factors.values()))[0].dtype
    norm = math.sqrt(sum(explicit_squared_norms(factors, dtype).values()))
    if norm > tau:
        with torch.no_grad():
            for lora_A, lora_B, _ in factors.values():
                lora_A.mul_(math.sqrt(tau / norm))
                lora_B.mul_(math.sqrt(tau / norm))
    return math.sqrt(sum(explicit_squared_norms(factors, dtype).values()))


def float32_gram_norms(factors: dict) -> dict[str, float]:
    """Module name -> ‖s·B·A‖_F from Gram matrices formed in float32, summed in float64 (a candidate for the
    library: measured here side by side, not used by it)."""
    with torch.no_grad():
        norms = {}
        for name, (lora_A, lora_B, scaling) in factors.items():
            gram_A = (lora_A.float() @ lora_A.float().T).double()
            gram_B = (lora_B.float().T @ lora_B.float()).double()
            norms[name] = abs(scaling) * math.sqrt(max(float((gram_A * gram_B).sum()), 0.0))
        return norms


def timed(function: Callable[[], object], rounds: int) -> list[float]:
    """Wall seconds of `rounds` calls of `function`."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def relative_error(library: dict[str, torch.Tensor], reference: dict[str, float]) -> float:
    """|‖ΔW‖ − ‖ΔW‖_ref| / ‖ΔW‖_ref over the modules of `reference` (library per-module norms combined)."""
    ours = math.sqrt(sum(float(library[name]) ** 2 for name in reference))
    exact = math.sqrt(sum(reference.values()))
    return abs(ours - exact) / exact


def measure(shape: ModelShape, rank: int, dtype: torch.dtype, rounds: int, explicit_layers: int) -> dict:
    """Norm and projection times (library; explicit over `explicit_layers` layers, scaled to all layers) and
    the agreement of the library's norm with explicit float64 products on those layers."""
    model = lora_model(shape, rank, dtype)
    explicit_layers = min(explicit_layers, shape.layers)
    subset = lora_factors(model, explicit_layers)
    scale_up = shape.layers / explicit_layers
    factor_bytes = sum(
        a.numel() * a.element_size() + b.numel() * b.element_size()
        for a, b, _ in lora_factors(model).values()
    )
    error = relative_error(lora_delta_norms(model), explicit_squared_norms(subset, torch.float64))
    norm_times = timed(lambda: lora_delta_norms(model), rounds)
    all_factors = lora_factors(model)
    float32_times = timed(lambda: float32_gram_norms(all_factors), rounds)
    float32_error = relative_error(
        {k: torch.tensor(v) for k, v in float32_gram_norms(subset).items()},
        explicit_squared_norms(subset, torch.float64),
    )
    explicit_norm_seconds = timed(lambda: explicit_squared_norms(subset, dtype), 1)[0] * scale_up
    # Each projection halves τ, so every round scales (the same work as a real projection).
    start_norm = math.sqrt(sum(float(n) ** 2 for n in lora_delta_norms(model).values()))
    taus = iter(start_norm * 0.5**k for k in range(1, rounds + 1))
    results = []
    project_times = timed(lambda: results.append(project_lora_(model, next(taus))), rounds)
    subset_norm = math.sqrt(sum(explicit_squared_norms(subset, torch.float64).values()))
    explicit_project_seconds = timed(lambda: explicit_projection(subset, 0.5 * subset_norm), 1)[0] * scale_up
    return {
        "model": shape.name,
        "modules": len(lora_factors(model)),
        "factor_mib": factor_bytes / 2**20,
        "norm_ms": 1e3 * median(norm_times),
        "explicit_norm_ms": 1e3 * explicit_norm_seconds,
        "project_ms": 1e3 * median(project_times),
        "explicit_project_ms": 1e3 * explicit_project_seconds,
        "relative_error": error,
        "float32_gram_ms": 1e3 * median(float32_times),
        "float32_gram_error": float32_error,
        "explicit_layers": explicit_layers,
        "after_over_tau": max(r.norm_after / (start_norm * 0.5 ** (k + 1)) for k, r in enumerate(results)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default="qwen2.5-1.5b,llama-3-8b", help="comma-separated: " + ", ".join(SHAPES)
    )
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of the library functions")
    parser.add_argument(
        "--explicit-layers", type=int, default=4, help="layers formed explicitly (time scaled to all layers)"
    )
    add_results_argument(parser)
    args = parser.parse_args(argv)

    section = ResultsSection(path=args.results, title="Slow Tuning projection at scale (bench_projection.py)")
    dtype = getattr(torch, args.dtype)
    rows = []
    for key in args.models.split(","):
        result = measure(SHAPES[key], args.rank, dtype, args.rounds, args.explicit_layers)
        print(result, flush=True)
        rows.append(
            [
                result["model"],
                result["modules"],
                f"{result['factor_mib']:.0f}",
                f"{result['norm_ms']:.1f}",
                f"{result['explicit_norm_ms']:.0f}",
                f"{result['explicit_norm_ms'] / result['norm_ms']:.0f}×",
                f"{result['project_ms']:.1f}",
                f"{result['explicit_project_ms']:.0f}",
                f"{result['explicit_project_ms'] / result['project_ms']:.0f}×",
                f"{result['relative_error']:.1e}",
                f"{result['after_over_tau']:.9f}",
                f"{result['float32_gram_ms']:.1f}",
                f"{result['float32_gram_error']:.1e}",
            ]
        )
    section.add(
        f"LoRA r={args.rank} on q,k,v,o,gate,up,down of every layer, factors in {args.dtype}, base weights on the meta "
        f"device; median of {args.rounds} library calls; the explicit path is timed once over the first {args.explicit_layers} "
        "layers and scaled to all layers, and the agreement is taken over those layers; torch threads "
        f"{torch.get_num_threads()}. Targets: Qwen-shaped projection < 50 ms, ≥ 20× faster than explicit, "
        "relative error vs explicit float64 ≤ 1e-6. The last two columns measure a candidate "
        "change to the library (Gram matrices in float32, their product summed in float64), not the library."
    )
    section.add(
        markdown_table(
            [
                "shape",
                "modules",
                "factors MiB",
                "norm ms",
                "explicit norm ms",
                "speed-up",
                "projection ms",
                "explicit projection ms",
                "speed-up",
                "rel. error vs float64",
                "‖ΔW‖ after / τ",
                "candidate: float32 Gram norm ms",
                "its rel. error",
            ],
            rows,
        )
    )
    section.write()


if __name__ == "__main__":
    main()
