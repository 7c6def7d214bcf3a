"""MaskingCollator around TRL's own collator, against hand-worked label tensors."""

from __future__ import annotations

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from slowed.collator import KEEP_COLUMN, NUM_MASKED_KEY, MaskingCollator

EXAMPLES = [
    {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5], KEEP_COLUMN: [1, 1, 1, 0, 1]},
    {"input_ids": [6, 7, 8], "labels": [-100, 7, 8], KEEP_COLUMN: [1, 0, 1]},
]


def test_masked_labels_padded_by_trl_collator():
    collator = MaskingCollator(DataCollatorForLanguageModeling(pad_token_id=0))
    batch = collator(EXAMPLES)
    assert batch["labels"].tolist() == [[-100, -100, 3, -100, 5], [-100, -100, 8, -100, -100]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert int(batch[NUM_MASKED_KEY]) == 2
    assert KEEP_COLUMN not in batch


def test_masked_labels_with_padding_free_collator():
    collator = MaskingCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))
    batch = collator(EXAMPLES)
    assert batch["labels"].tolist() == [[-100, -100, 3, -100, 5, -100, -100, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert int(batch[NUM_MASKED_KEY]) == 2


def test_flag_on_an_already_ignored_label_is_not_counted():
    example = {"input_ids": [1, 2, 3], "labels": [-100, -100, 3], KEEP_COLUMN: [1, 0, 1]}
    batch = MaskingCollator(DataCollatorForLanguageModeling(pad_token_id=0))([example])
    assert batch["labels"].tolist() == [[-100, -100, 3]]
    assert int(batch[NUM_MASKED_KEY]) == 0


def test_examples_without_keep_column_pass_through_unchanged():
    inner = DataCollatorForLanguageModeling(pad_token_id=0)
    plain = [{k: v for k, v in example.items() if k != KEEP_COLUMN} for example in EXAMPLES]
    wrapped, reference = MaskingCollator(inner)(plain), inner(plain)
    assert wrapped.keys() == reference.keys()
    for key in reference:
        assert torch.equal(wrapped[key], reference[key])


def test_input_examples_are_not_modified():
    examples = [dict(example) for example in EXAMPLES]
    MaskingCollator(DataCollatorForLanguageModeling(pad_token_id=0))(examples)
    assert examples == EXAMPLES


def test_length_mismatch_names_the_row():
    bad = [EXAMPLES[0], {"input_ids": [6, 7, 8], "labels": [-100, 7, 8], KEEP_COLUMN: [1, 0]}]
    with pytest.raises(ValueError, match=r"example 1: .*2 flags but `labels` has 3 tokens"):
        MaskingCollator(DataCollatorForLanguageModeling(pad_token_id=0))(bad)
