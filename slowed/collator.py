"""Masking collator for `initial`-source Low-Entropy Masking: per-token keep flags become -100 labels.

`SLowEDTrainer` scores the prepared training set once with the frozen initial student and stores a
per-token column ``KEEP_COLUMN`` (one 0/1 flag per ``input_ids`` position: 0 = drop the label at this
position from the loss). `MaskingCollator` wraps the collator TRL would use: it sets ``labels`` to -100
where the flag is 0 *before* handing the examples on, so padding, padding-free flattening and any other
collation the wrapped collator does apply to the masked labels unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

KEEP_COLUMN = "slowed_keep_mask"
# Batch key carrying the number of labels this collator set to -100 (popped by the trainer before the forward).
NUM_MASKED_KEY = "slowed_num_masked"


def mask_example_labels(example: dict[str, Any], row: int | None = None) -> tuple[dict[str, Any], int]:
    """Copy of `example` without ``KEEP_COLUMN`` whose ``labels`` are -100 where the keep flag is 0.

    Returns the new example and the number of labels it masked (labels that were not -100 already).
    Raises ValueError when the flags and the labels differ in length (e.g. the column was built before
    truncation).
    """
    example = dict(example)
    keep = example.pop(KEEP_COLUMN)
    labels = example.get("labels")
    if labels is None:
        raise ValueError(
            f"example {row}: `{KEEP_COLUMN}` needs a `labels` column (built by TRL's dataset preparation)"
        )
    if len(keep) != len(labels):
        raise ValueError(
            f"example {row}: `{KEEP_COLUMN}` has {len(keep)} flags but `labels` has {len(labels)} tokens; the "
            "keep mask must be built on the prepared (tokenised and truncated) dataset"
        )
    masked = [label if flag else -100 for label, flag in zip(labels, keep, strict=True)]
    num_masked = sum(1 for label, flag in zip(labels, keep, strict=True) if label != -100 and not flag)
    example["labels"] = masked
    return example, num_masked


class MaskingCollator:
    """Wrap a collator so that examples carrying ``KEEP_COLUMN`` get their masked labels set to -100.

    Examples without the column (e.g. an evaluation set, which is never masked) pass through unchanged.
    When any example was masked the batch also carries ``NUM_MASKED_KEY``: a 0-dim int64 tensor with the
    number of labels set to -100 here, for the trainer's ``slowed/masked_fraction`` metric.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collator = collator

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not any(KEEP_COLUMN in example for example in examples):
            return self.collator(list(examples))
        masked_examples, total_masked = [], 0
        for row, example in enumerate(examples):
            if KEEP_COLUMN in example:
                example, num_masked = mask_example_labels(example, row)
                total_masked += num_masked
            masked_examples.append(example)
        batch = self.collator(masked_examples)
        batch[NUM_MASKED_KEY] = torch.tensor(total_masked, dtype=torch.int64)
        return batch
