"""Low-Entropy Masking (LEM): pure tensor functions, no TRL.

Shapes: ``B`` sequences of ``T`` target positions (already shifted: position t scores ``labels[:, t + 1]``).
``valid`` marks the eligible target tokens (completion tokens, ``labels != -100``).

Among the valid tokens of a *scope* (one sequence, or the whole micro-batch) the ``floor(ratio · n)``
lowest-entropy tokens are dropped from the loss. Ties are broken deterministically: among equal
entropies the earlier position (row-major order for the batch scope) is dropped first.

Controls at the same rate (``selection``): ``"highest"`` drops the highest-entropy tokens instead, and
``"random"`` drops uniformly random ones (from a seeded generator), so an experiment can tell the effect
of *which* tokens are dropped from the effect of dropping ``k`` of them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

MaskScope = Literal["sequence", "batch"]
MASK_SCOPES: tuple[str, ...] = ("sequence", "batch")
MaskSelection = Literal["lowest", "highest", "random"]
MASK_SELECTIONS: tuple[str, ...] = ("lowest", "highest", "random")

# floor(ratio * n) is taken in float64 with this slack so that e.g. 0.29 * 100 counts as 29, not 28.
_FLOOR_SLACK = 1e-9


def num_masked(num_valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``floor(ratio · n)`` per element of the integer tensor ``num_valid`` (same shape, int64)."""
    return torch.floor(num_valid.to(torch.float64) * ratio + _FLOOR_SLACK).to(torch.int64)


def _check(entropy: torch.Tensor, valid: torch.Tensor, ratio: float, scope: str) -> None:
    if entropy.dim() != 2 or entropy.shape != valid.shape:
        raise ValueError(
            f"entropy and valid must both be B×T; got entropy {tuple(entropy.shape)} and valid {tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise ValueError(f"entropy_mask_ratio must be in [0, 1); got {ratio}")
    if scope not in MASK_SCOPES:
        raise ValueError(f"entropy_mask_scope must be one of {MASK_SCOPES}; got {scope!r}")


def low_entropy_keep_mask(
    entropy: torch.Tensor, valid: torch.Tensor, ratio: float, scope: MaskScope = "sequence"
) -> torch.Tensor:
    """Keep-mask that drops the ``floor(ratio · n)`` lowest-entropy valid tokens of each scope.

    Args:
        entropy: B×T per-token predictive entropy (nats). Read only; no gradient flows through the mask.
        valid: B×T bool, True where the token is a loss target.
        ratio: share of valid tokens to drop, in [0, 1).
        scope: "sequence" (n counted per row) or "batch" (n counted over the micro-batch).

    Returns:
        B×T bool keep-mask; always False where ``valid`` is False.
    """
    _check(entropy, valid, ratio, scope)
    if scope == "batch":
        keep = low_entropy_keep_mask(entropy.reshape(1, -1), valid.reshape(1, -1), ratio, "sequence")
        return keep.reshape(valid.shape)
    key = entropy.detach().to(torch.float64).masked_fill(~valid, math.inf)
    order = torch.sort(key, dim=1, stable=True).indices  # valid positions first, by entropy, then position
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    masked = num_masked(valid.sum(dim=1), ratio).unsqueeze(1)
    return valid & (rank >= masked)


def selection_scores(
    entropy: torch.Tensor, selection: MaskSelection = "lowest", generator: torch.Generator | None = None
) -> torch.Tensor:
    """B×T scores whose lowest values `low_entropy_keep_mask` drops, for each ``selection``.

    "lowest": the entropy itself (SLowED); "highest": its negation; "random": uniform [0, 1) draws from
    ``generator`` (drawn on the CPU, so a seed gives the same mask on every device), independent of entropy.
    """
    if selection == "lowest":
        return entropy.detach()
    if selection == "highest":
        return -entropy.detach()
    if selection == "random":
        draws = torch.rand(entropy.shape, generator=generator, dtype=torch.float64)
        return draws.to(entropy.device)
    raise ValueError(f"entropy_mask_selection must be one of {MASK_SELECTIONS}; got {selection!r}")


def kept_token_count(valid: torch.Tensor, ratio: float, scope: MaskScope = "sequence") -> torch.Tensor:
    """Number of tokens ``low_entropy_keep_mask`` keeps, from the valid mask alone (int64 scalar).

    The count does not depend on the entropies, so the trainer can normalise the loss of a whole
    gradient-accumulation window before any forward pass.
    """
    if scope not in MASK_SCOPES:
        raise ValueError(f"entropy_mask_scope must be one of {MASK_SCOPES}; got {scope!r}")
    per_scope = valid.sum(dim=-1) if scope == "sequence" else valid.sum().reshape(1)
    return (per_scope - num_masked(per_scope, ratio)).sum()
