"""Projection onto the τ-ball, whatever ΔW is made of: measure, scale, re-measure until within τ.

When ‖ΔW‖_F > τ the update is scaled back onto the sphere of radius τ. The norm is then *measured* again from
the stored weights; where rounding (bf16, fp16) left it above τ·(1 + `TAU_TOLERANCE`), the update is scaled again
slightly inside τ (a margin of the overshoot or the dtype's unit roundoff, growing per pass; after
`MAX_PROJECTION_PASSES` − 1 passes, which only a τ below the dtype's resolution around W0 needs, the update is
reset to ΔW = 0), so the guarantee ‖ΔW‖_F ≤ τ·(1 + 1e-6) holds in any dtype and the logged norm is the measured
one. Scope ``"global"`` measures one norm over all modules (the square root of the sum of squared module norms)
and scales every module by the same factor; ``"module"`` caps each module on its own. A NaN or infinite norm
raises `NonFiniteDeltaError` instead of projecting. `slowed.slow_tuning.lora` and `slowed.slow_tuning.full` say
how ΔW is measured and scaled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from slowed.knobs import SLOW_TUNING_SCOPES, parse_choice, parse_slow_tuning_tau

logger = logging.getLogger("slowed.slow_tuning")

TAU_TOLERANCE = 1e-6
"""The guarantee after a projection: measured ‖ΔW‖_F ≤ τ·(1 + TAU_TOLERANCE)."""
MAX_PROJECTION_PASSES = 8
Scope = Literal["global", "module"]


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


def checked_tau_and_scope(tau: float, scope: str) -> tuple[float, str]:
    """τ (a finite number > 0) and the norm scope ("global" or "module"), validated as `SLowEDConfig` does."""
    return parse_slow_tuning_tau(tau, optional=False), parse_choice(
        "slow_tuning_scope", scope, SLOW_TUNING_SCOPES
    )


def raise_if_non_finite(norms: dict[str, torch.Tensor]) -> None:
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


def project(
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
    raise_if_non_finite(norms)
    result = _projection_factors(norms, tau, scope)
    factors = {name: c for name, c in result.scale.items() if c < 1.0}
    while factors:
        apply(factors)
        result.passes += 1
        after = measure()
        raise_if_non_finite(after)
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
