"""The canonical CoT corpus schema: the columns every corpus loader returns, and their `datasets` features."""

import datasets

CANONICAL_COLUMNS = ("question", "rationale", "answer", "task", "index")
CANONICAL_FEATURES = datasets.Features(
    {
        "question": datasets.Value("string"),
        "rationale": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "task": datasets.Value("string"),
        "index": datasets.Value("int64"),
    }
)
