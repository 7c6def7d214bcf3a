"""Low-Entropy Masking keep-masks against a naive float64 reference and hand-worked examples."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from slowed.masking import keep_mask_by_sequence, kept_token_count, low_entropy_keep_mask, selection_scores


def naive_keep(
    entropy: list[list[float]], valid: list[list[bool]], ratio: float, scope: str
) -> list[list[bool]]:
    """Reference: sort (entropy, row, col) tuples of each scope in Python; drop floor(ratio·n) from the front."""
    rows, cols = len(entropy), len(entropy[0])
    groups = [[(r, c) for c in range(cols)] for r in range(rows)]
    if scope == "batch":
        groups = [[(r, c) for r in range(rows) for c in range(cols)]]
    keep = [[False] * cols for _ in range(rows)]
    for group in groups:
        eligible = [(float(entropy[r][c]), r, c) for r, c in group if valid[r][c]]
        eligible.sort()
        dropped = math.floor(Fraction(str(ratio)) * len(eligible))
        for _, r, c in eligible[dropped:]:
            keep[r][c] = True
    return keep


def test_hand_worked_sequence_scope():
    entropy = torch.tensor([[0.5, 0.1, 0.3, 0.9, 0.2], [2.0, 1.0, 3.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    # Row 0: 4 valid, floor(0.5·4) = 2 dropped: 0.1 (col 1) and 0.3 (col 2); col 4 is invalid (0.2 ignored).
    # Row 1: 3 valid, floor(0.5·3) = 1 dropped: 1.0 (col 1).
    expected = torch.tensor([[1, 0, 0, 1, 0], [1, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(low_entropy_keep_mask(entropy, valid, 0.5, "sequence"), expected)
    assert kept_token_count(valid, 0.5, "sequence").item() == 4


def test_hand_worked_batch_scope():
    entropy = torch.tensor([[0.5, 0.1, 0.3, 0.9, 0.2], [2.0, 1.0, 3.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    # 7 valid over the batch, floor(0.5·7) = 3 dropped: 0.1, 0.3, 0.5 (all in row 0); row 1 untouched.
    expected = torch.tensor([[0, 0, 0, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(low_entropy_keep_mask(entropy, valid, 0.5, "batch"), expected)
    assert kept_token_count(valid, 0.5, "batch").item() == 4


def test_ties_drop_earlier_position_first():
    entropy = torch.tensor([[0.7, 0.7, 0.7, 0.7]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    expected = torch.tensor([[False, False, True, True]])
    assert torch.equal(low_entropy_keep_mask(entropy, valid, 0.5), expected)
    # Batch scope: row-major order, so row 0 loses its tokens before row 1.
    entropy2 = torch.full((2, 2), 1.0)
    valid2 = torch.ones(2, 2, dtype=torch.bool)
    expected2 = torch.tensor([[False, False], [False, True]])
    assert torch.equal(low_entropy_keep_mask(entropy2, valid2, 0.75, "batch"), expected2)


def test_zero_ratio_keeps_exactly_the_valid_tokens():
    entropy = torch.randn(3, 7)
    valid = torch.rand(3, 7) > 0.4
    assert torch.equal(low_entropy_keep_mask(entropy, valid, 0.0), valid)
    assert torch.equal(low_entropy_keep_mask(entropy, valid, 0.0, "batch"), valid)
    assert kept_token_count(valid, 0.0).item() == valid.sum().item()


def test_all_invalid_rows_keep_nothing():
    entropy = torch.randn(3, 6)
    valid = torch.zeros(3, 6, dtype=torch.bool)
    valid[1, 2:5] = True
    for scope in ("sequence", "batch"):
        keep = low_entropy_keep_mask(entropy, valid, 0.4, scope)
        assert not keep[0].any() and not keep[2].any()
        assert not (keep & ~valid).any()
    assert not low_entropy_keep_mask(entropy, torch.zeros_like(valid), 0.9).any()


def test_float_ratio_floor_is_exact_decimal():
    # 0.29 · 100 is 28.999999999999996 in binary floating point; the mask must still drop 29 tokens.
    entropy = torch.arange(100, dtype=torch.float32).unsqueeze(0)
    valid = torch.ones(1, 100, dtype=torch.bool)
    keep = low_entropy_keep_mask(entropy, valid, 0.29)
    assert keep.sum().item() == 71
    assert not keep[0, :29].any() and keep[0, 29:].all()


@pytest.mark.parametrize("scope", ["sequence", "batch"])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.29, 0.999])
def test_matches_naive_reference_on_random_inputs(scope, ratio):
    generator = torch.Generator().manual_seed(int(ratio * 1000) + len(scope))
    for _ in range(20):
        rows, cols = torch.randint(1, 6, (2,), generator=generator).tolist()
        # Coarse entropies so that ties are frequent.
        entropy = torch.randint(0, 4, (rows, cols), generator=generator).to(torch.float64) / 4
        valid = torch.rand(rows, cols, generator=generator) > 0.3
        keep = low_entropy_keep_mask(entropy, valid, ratio, scope)
        expected = naive_keep(entropy.tolist(), valid.tolist(), ratio, scope)
        assert keep.tolist() == expected
        assert kept_token_count(valid, ratio, scope).item() == keep.sum().item()


def test_mask_carries_no_gradient_and_keeps_device_shape():
    entropy = torch.rand(2, 5, requires_grad=True)
    valid = torch.ones(2, 5, dtype=torch.bool)
    keep = low_entropy_keep_mask(entropy, valid, 0.4)
    assert keep.dtype == torch.bool and keep.shape == (2, 5) and not keep.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, "`entropy_mask_ratio` must be a number in [0, 1)"),
        ({"ratio": -0.1}, "`entropy_mask_ratio` must be a number in [0, 1)"),
        ({"ratio": float("nan")}, "`entropy_mask_ratio` must be a number in [0, 1)"),
        ({"scope": "token"}, "`entropy_mask_scope` must be one of ('sequence', 'batch'); got 'token'"),
    ],
)
def test_invalid_arguments_are_named(kwargs, message):
    args = {"ratio": 0.2, "scope": "sequence", **kwargs}
    with pytest.raises(ValueError) as excinfo:
        low_entropy_keep_mask(
            torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), args["ratio"], args["scope"]
        )
    assert message in str(excinfo.value)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"entropy \(2, 3\) and valid \(2, 4\)"):
        low_entropy_keep_mask(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), 0.1)


def test_highest_selection_drops_the_highest_entropies():
    entropy = torch.tensor([[0.5, 0.1, 0.3, 0.9, 0.2]])
    valid = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    keep = low_entropy_keep_mask(selection_scores(entropy, "highest"), valid, 0.5)
    # 4 valid, 2 dropped: the two highest valid entropies, 0.9 (col 3) and 0.5 (col 0).
    assert keep.tolist() == [[False, True, True, False, False]]


def test_random_selection_drops_the_same_count_reproducibly_per_seed():
    entropy = torch.rand(4, 30)
    valid = torch.rand(4, 30) > 0.2
    masks = []
    for seed in (0, 0, 1):
        scores = selection_scores(entropy, "random", torch.Generator().manual_seed(seed))
        masks.append(low_entropy_keep_mask(scores, valid, 0.4))
    lowest = low_entropy_keep_mask(entropy, valid, 0.4)
    for keep in masks:
        assert keep.sum(dim=1).tolist() == lowest.sum(dim=1).tolist()  # same count per sequence
        assert not (keep & ~valid).any()
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    assert not torch.equal(masks[0], lowest)
    with pytest.raises(ValueError, match="`entropy_mask_selection` must be one of"):
        selection_scores(entropy, "median")


def test_keep_mask_by_packed_sequence_equals_per_row_mask():
    """Padding-free rows regrouped by seq_idx mask exactly like the same sequences as separate rows."""
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 9, 1, 7]
    rows_entropy = [torch.rand(n, generator=generator, dtype=torch.float64) for n in lengths]
    rows_valid = [torch.rand(n, generator=generator) > 0.2 for n in lengths]
    longest = max(lengths)
    padded_entropy = torch.stack([torch.nn.functional.pad(e, (0, longest - len(e))) for e in rows_entropy])
    padded_valid = torch.stack([torch.nn.functional.pad(v, (0, longest - len(v))) for v in rows_valid])
    expected = low_entropy_keep_mask(padded_entropy, padded_valid, 0.4, "sequence")

    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    keep = keep_mask_by_sequence(
        torch.cat(rows_entropy)[None], torch.cat(rows_valid)[None], 0.4, "sequence", seq_idx
    )
    assert keep[0].tolist() == torch.cat([expected[i, :n] for i, n in enumerate(lengths)]).tolist()
