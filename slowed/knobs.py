"""The SLowED knobs' allowed values and their validation, in one place.

`SLowEDConfig` validates every knob on construction with these functions; the plain-torch entry points that can
be called without a config (`slowed.masking`, `slowed.slow_tuning`) use the same ones. Each parses what a
command line or YAML file gives (numeric strings) and raises a ValueError naming the option, the value and the
allowed range. No torch or TRL import.
"""

from __future__ import annotations

import math
from typing import Any

ENTROPY_SOURCES: tuple[str, ...] = ("online", "initial")
MASK_SCOPES: tuple[str, ...] = ("sequence", "batch")
MASK_SELECTIONS: tuple[str, ...] = ("lowest", "highest", "random")
SLOW_TUNING_SCOPES: tuple[str, ...] = ("global", "module")
SLOW_TUNING_INTERVAL_NAMES: tuple[str, ...] = ("epoch", "step")


def invalid(option: str, value: Any, allowed: str) -> ValueError:
    """The error for a knob value outside its range."""
    return ValueError(f"SLowED option `{option}` must be {allowed}; got {value!r}")


def parse_float(option: str, value: Any, allowed: str) -> float:
    """A real number from a float, an int or a numeric string (never a bool)."""
    if isinstance(value, bool):
        raise invalid(option, value, allowed)
    try:
        return float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise invalid(option, value, allowed) from None


def parse_entropy_mask_ratio(value: Any) -> float:
    """k in [0, 1)."""
    allowed = "a number in [0, 1) (the share of completion tokens dropped from the loss)"
    ratio = parse_float("entropy_mask_ratio", value, allowed)
    if not (0.0 <= ratio < 1.0):  # also rejects NaN
        raise invalid("entropy_mask_ratio", value, allowed)
    return ratio


def parse_slow_tuning_tau(value: Any, optional: bool = True) -> float | None:
    """τ > 0, finite; or None (Slow Tuning off, also "none"/"null"/"") when `optional`."""
    if optional and (
        value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", ""))
    ):
        return None
    allowed = "a finite number > 0 (the Frobenius radius of ΔW)"
    if optional:
        allowed = f"None (Slow Tuning off) or {allowed}"
    tau = parse_float("slow_tuning_tau", value, allowed)
    if not (math.isfinite(tau) and tau > 0):
        raise invalid("slow_tuning_tau", value, allowed)
    return tau


def parse_slow_tuning_interval(value: Any) -> str | int:
    """'epoch', 'step' or a positive int N (every N optimizer steps).

    N may come as an int, an integral float (YAML ``10.0``) or a numeric string of either form ("10",
    "10.0", "1e1"); a fractional value such as 10.5 is refused, in any form.
    """
    allowed = (
        "'epoch', 'step' or a positive integer N (project every N optimizer steps; 10 or 10.0, not 10.5)"
    )
    if isinstance(value, str) and value.strip().lower() in SLOW_TUNING_INTERVAL_NAMES:
        return value.strip().lower()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, bool) or not isinstance(value, (str, float)):
        raise invalid("slow_tuning_interval", value, allowed)
    number = parse_float("slow_tuning_interval", value, allowed)
    if not (math.isfinite(number) and number.is_integer() and number >= 1):
        raise invalid("slow_tuning_interval", value, allowed)
    return int(number)


def parse_choice(option: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of `choices` (surrounding spaces dropped)."""
    if not isinstance(value, str) or value.strip() not in choices:
        raise invalid(option, value, f"one of {choices}")
    return value.strip()
