"""Low-Entropy Masking (LEM): pure tensor functions, no TRL.

Shapes: ``B`` sequences of ``T`` target positions (already shifted: position t scores ``labels[:, t + 1]``).
``valid`` marks the eligible target tokens: those that carry loss (``labels != -100``), i.e. the completion
tokens under TRL's default completion-only loss.

Among the ``n`` valid tokens of a *scope* (one sequence, or the whole micro-batch) the ``floor(ratio · n)``
lowest-entropy tokens are dropped from the loss, so ``n − floor(ratio · n)`` are kept. The floor is taken in
float64 with a 1e-9 slack (so 0.29 · 100 counts as 29, the decimal reading of the ratio) and capped at
``n − 1``: since ratio < 1, a scope with valid tokens always keeps at least one. Ranking is by the float64
value; ties are broken deterministically: among equal entropies the earlier position (row-major order for the
batch scope) is dropped first. Non-finite entropies are ranked, never refused: NaN ranks as +inf (the highest
entropy, so a NaN token is never dropped before a finite one; it ties with +inf by position), and -inf is the
lowest value. A NaN entropy means the logits are NaN, so the loss is NaN too and the trainer stops on it.

Controls at the same rate (``selection``): ``"highest"`` drops the highest-entropy tokens instead, and
``"random"`` drops uniformly random ones (from a seeded generator), so an experiment can tell the effect
of *which* tokens are dropped from the effect of dropping ``k`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from slowed.knobs import MASK_SCOPES, MASK_SELECTIONS, parse_choice, parse_entropy_mask_ratio

MaskScope = Literal["sequence", "batch"]
MaskSelection = Literal["lowest", "highest", "random"]

# floor(ratio * n) is taken in float64 with this slack so that e.g. 0.29 * 100 counts as 29, not 28.
_FLOOR_SLACK = 1e-9


def num_masked(num_valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``floor(ratio · n)``, capped at ``n − 1`` (0 for n = 0), per element of the integer tensor ``num_valid``.

    Same shape, int64. The cap only binds for ratios within the floor slack of 1 (e.g. 1 − 1e-12).
    """
    floor = torch.floor(num_valid.to(torch.float64) * ratio + _FLOOR_SLACK).to(torch.int64)
    return torch.minimum(floor, (num_valid.to(torch.int64) - 1).clamp(min=0))


def _rank_within_rows(key: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """B×T int64 rank of each position in its row: valid positions first by (key, position), then the rest.

    `key` is float64 without NaN (callers map NaN to +inf); two stable sorts give the lexicographic order.
    """
    order = torch.sort(key, dim=1, stable=True).indices
    invalid_in_order = (~valid).gather(1, order).to(torch.int8)
    order = order.gather(1, torch.sort(invalid_in_order, dim=1, stable=True).indices)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank


def _check(entropy: torch.Tensor, valid: torch.Tensor, ratio: float, scope: str) -> tuple[float, str]:
    """Shapes and dtypes of the mask inputs; returns the validated (ratio, scope)."""
    if entropy.dim() != 2 or entropy.shape != valid.shape:
        raise ValueError(
            f"entropy and valid must both be B×T; got entropy {tuple(entropy.shape)} and valid {tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
    return parse_entropy_mask_ratio(ratio), parse_choice("entropy_mask_scope", scope, MASK_SCOPES)


def low_entropy_keep_mask(
    entropy: torch.Tensor, valid: torch.Tensor, ratio: float, scope: MaskScope = "sequence"
) -> torch.Tensor:
    """Keep-mask that drops the ``floor(ratio · n)`` lowest-entropy valid tokens of each scope.

    Args:
        entropy: B×T per-token predictive entropy (nats). Read only; no gradient flows through the mask.
            NaN ranks as +inf (never dropped before a finite value); see the module docstring.
        valid: B×T bool, True where the token is a loss target.
        ratio: share of valid tokens to drop, in [0, 1).
        scope: "sequence" (n counted per row) or "batch" (n counted over the micro-batch).

    Returns:
        B×T bool keep-mask; always False where ``valid`` is False; ``n − num_masked(n)`` True per scope.
    """
    ratio, scope = _check(entropy, valid, ratio, scope)
    if scope == "batch":
        keep = low_entropy_keep_mask(entropy.reshape(1, -1), valid.reshape(1, -1), ratio, "sequence")
        return keep.reshape(valid.shape)
    key = entropy.detach().to(torch.float64)
    rank = _rank_within_rows(key.masked_fill(key.isnan(), math.inf), valid)
    masked = num_masked(valid.sum(dim=1), ratio).unsqueeze(1)
    return valid & (rank >= masked)


def selection_scores(
    entropy: torch.Tensor, selection: MaskSelection = "lowest", generator: torch.Generator | None = None
) -> torch.Tensor:
    """B×T scores whose lowest values `low_entropy_keep_mask` drops, for each ``selection``.

    "lowest": the entropy itself (SLowED); "highest": its negation; "random": uniform [0, 1) draws from
    ``generator`` (drawn on the CPU, so a seed gives the same mask on every device), independent of entropy.
    """
    selection = parse_choice("entropy_mask_selection", selection, MASK_SELECTIONS)
    if selection == "lowest":
        return entropy.detach()
    if selection == "highest":
        return -entropy.detach()
    draws = torch.rand(entropy.shape, generator=generator, dtype=torch.float64)  # "random"
    return draws.to(entropy.device)


def kept_token_count(valid: torch.Tensor, ratio: float, scope: MaskScope = "sequence") -> torch.Tensor:
    """Number of tokens ``low_entropy_keep_mask`` keeps, from the valid mask alone (int64 scalar).

    The count does not depend on the entropies, so the trainer can normalise the loss of a whole
    gradient-accumulation window before any forward pass.
    """
    scope = parse_choice("entropy_mask_scope", scope, MASK_SCOPES)
    ratio = parse_entropy_mask_ratio(ratio)
    per_scope = valid.sum(dim=-1) if scope == "sequence" else valid.sum().reshape(1)
    return (per_scope - num_masked(per_scope, ratio)).sum()


# ------------------------------------------------------------------ sequences of padding-free batches


def sequence_grid_index(seq_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Row and column of every position of a padding-free row in a (sequences × longest) grid.

    Args:
        seq_idx: 1-D, non-decreasing sequence index of each position.

    Returns:
        (rows, cols, num_sequences, longest), rows/cols int64 of the same length as `seq_idx`.
    """
    rows = seq_idx.to(torch.int64)
    counts = torch.bincount(rows)
    starts = counts.cumsum(0) - counts
    cols = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    return rows, cols, counts.numel(), int(counts.max())


def valid_by_sequence(valid: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """`valid` (B×T') as one row per sequence: unchanged, or regrouped by `seq_idx` (1×T') when padding-free."""
    if seq_idx is None:
        return valid
    rows, cols, num_sequences, longest = sequence_grid_index(seq_idx.reshape(-1))
    grid = torch.zeros(num_sequences, longest, dtype=torch.bool, device=valid.device)
    grid[rows, cols] = valid.reshape(-1)
    return grid


def keep_mask_by_sequence(
    entropy: torch.Tensor, valid: torch.Tensor, ratio: float, scope: str, seq_idx: torch.Tensor | None
) -> torch.Tensor:
    """`low_entropy_keep_mask` where a "sequence" is a packed segment when `seq_idx` (1×T') is given.

    Args:
        entropy: B×T' detached per-target-token entropy (nats).
        valid: B×T' bool, eligible target tokens.
        ratio, scope: as in `low_entropy_keep_mask`.
        seq_idx: None, or the 1×T' sequence index of each target position of a padding-free batch.

    Returns:
        B×T' bool keep-mask.
    """
    if seq_idx is None or scope == "batch":
        return low_entropy_keep_mask(entropy, valid, ratio, scope)
    rows, cols, num_sequences, longest = sequence_grid_index(seq_idx.reshape(-1))
    grid_entropy = entropy.new_zeros(num_sequences, longest)
    grid_entropy[rows, cols] = entropy.reshape(-1)
    keep = low_entropy_keep_mask(grid_entropy, valid_by_sequence(valid, seq_idx), ratio, "sequence")
    return keep[rows, cols].reshape(valid.shape)


def target_valid_and_segments(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """B×(T−1) eligible-target mask (``labels[:, 1:] != -100``) and the shifted ``seq_idx`` (or None)."""
    valid = batch["labels"][..., 1:] != -100
    seq_idx = batch.get("seq_idx")
    return valid, (None if seq_idx is None else seq_idx[..., 1:])
