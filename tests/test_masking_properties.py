"""Property tests (hypothesis) of the Low-Entropy keep-mask against a float64 Python reference ranking.

For random lengths, padding, ratios and entropies (ties, NaN and ±inf included): exactly n − floor(k·n)
valid tokens are kept per scope (at least one when n ≥ 1), only valid tokens are ever kept, and the dropped
ones are the lowest under the documented ranking (NaN as +inf, ties by earlier position).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slowed.masking import kept_token_count, low_entropy_keep_mask

# Ratios are drawn as p/1000: the float ratio's floor(k·n) (float64 + 1e-9 slack) then equals the exact decimal
# floor, so the reference can use exact fractions.
RATIO_PERMILLE = st.integers(min_value=0, max_value=999)
# A small pool makes ties frequent; the non-finite values are the ones the module docstring defines.
ENTROPY = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, math.nan, math.inf, -math.inf]),
    st.floats(min_value=0.0, max_value=20.0, width=32),
)


@st.composite
def batches(draw):
    """(entropy rows, valid rows): B rows of T positions; each row a random length of valid tokens, then padding."""
    rows, width = draw(st.integers(1, 4)), draw(st.integers(1, 24))
    entropy, valid = [], []
    for _ in range(rows):
        length = draw(st.integers(0, width))
        entropy.append(draw(st.lists(ENTROPY, min_size=width, max_size=width)))
        in_row = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        valid.append(in_row + [False] * (width - length))
    return entropy, valid


def reference_dropped(entropy, valid, permille: int, scope: str) -> set[tuple[int, int]]:
    """Positions dropped: per scope, sort valid (value with NaN→+inf, row, col); drop the first floor(k·n) ≤ n−1."""
    cells = [(r, c) for r in range(len(valid)) for c in range(len(valid[r])) if valid[r][c]]
    groups = [cells] if scope == "batch" else [[rc for rc in cells if rc[0] == r] for r in range(len(valid))]
    dropped = set()
    for group in groups:
        value = {
            rc: (math.inf if math.isnan(entropy[rc[0]][rc[1]]) else entropy[rc[0]][rc[1]]) for rc in group
        }
        ranked = sorted(group, key=lambda rc: (value[rc], rc))
        count = min(math.floor(Fraction(permille, 1000) * len(group)), max(len(group) - 1, 0))
        dropped.update(ranked[:count])
    return dropped


@settings(max_examples=300, deadline=None)
@given(batch=batches(), permille=RATIO_PERMILLE, scope=st.sampled_from(["sequence", "batch"]))
def test_keep_mask_matches_the_float64_reference_ranking(batch, permille, scope):
    entropy_rows, valid_rows = batch
    entropy = torch.tensor(entropy_rows, dtype=torch.float32)
    valid = torch.tensor(valid_rows, dtype=torch.bool)
    ratio = permille / 1000
    keep = low_entropy_keep_mask(entropy, valid, ratio, scope)

    assert not (keep & ~valid).any()  # only valid tokens are kept; masked ones are all valid
    # The reference reads the float32 values exactly as float64.
    dropped = reference_dropped(entropy.double().tolist(), valid_rows, permille, scope)
    assert {tuple(rc) for rc in (valid & ~keep).nonzero().tolist()} == dropped

    groups = [valid.reshape(-1)] if scope == "batch" else list(valid)
    keep_groups = [keep.reshape(-1)] if scope == "batch" else list(keep)
    for group_valid, group_keep in zip(groups, keep_groups, strict=True):
        n = int(group_valid.sum())
        assert int(group_keep.sum()) == n - min(math.floor(Fraction(permille, 1000) * n), max(n - 1, 0))
        assert n == 0 or group_keep.any()
    assert int(kept_token_count(valid, ratio, scope)) == int(keep.sum())


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 300), ratio=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_any_ratio_below_one_keeps_at_least_one_token(n, ratio):
    """Arbitrary float ratios (not only decimals): floor(k·n), or one more within the 1e-9 slack, capped at n − 1."""
    valid = torch.ones(1, n, dtype=torch.bool)
    keep = low_entropy_keep_mask(torch.arange(n, dtype=torch.float64)[None], valid, ratio)
    exact = Fraction(ratio) * n
    allowed = {min(math.floor(exact), n - 1), min(math.floor(exact + Fraction(1, 10**9)), n - 1)}
    assert n - int(keep.sum()) in allowed
    assert keep[0, -1]  # the highest entropy is the last to go
