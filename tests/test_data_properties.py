"""Property test: `load_cot_corpus` on random malformed rows (JSONL, JSON, CSV) either loads or raises
`CorpusError` naming a row number (or, for a file-level problem, the file); never another exception."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slowed.data import CANONICAL_COLUMNS, CorpusError, load_cot_corpus

FIELDS = ("question", "rationale", "answer", "task", "index")
# Values of every JSON type a row might hold: text (unicode, empty, whitespace), numbers, booleans, nulls,
# lists and objects.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=3,
)
TEXT = st.text(min_size=1, max_size=8)
# Each field missing or holding a valid value or anything else, so that many rows are almost valid.
FIELD_VALUES = {
    "question": TEXT | JSON_VALUES,
    "rationale": TEXT | JSON_VALUES,
    "answer": TEXT | JSON_VALUES,
    "task": TEXT | JSON_VALUES,
    "index": st.integers() | JSON_VALUES,
}
VALID_ROW = st.fixed_dictionaries(
    {"question": TEXT, "rationale": TEXT, "answer": TEXT}, optional={"task": TEXT, "index": st.integers()}
)
ROW = st.one_of(
    VALID_ROW,
    st.fixed_dictionaries({}, optional=FIELD_VALUES),
    st.fixed_dictionaries({name: FIELD_VALUES[name] for name in ("question", "rationale", "answer")}),
    JSON_VALUES,  # not an object at all
)
ROWS = st.lists(ROW, min_size=1, max_size=6) | st.lists(VALID_ROW, min_size=1, max_size=6)
FORMATS = st.sampled_from(("jsonl", "json", "json-examples", "csv"))
# A row number or a file-level message naming the file (wrong shape, unparseable, no rows, absent column).
NAMES_A_ROW = re.compile(r"\b(line|row|item) \d+\b")


def _write(path: Path, fmt: str, rows: list, broken_line: str | None) -> Path:
    if fmt == "jsonl":
        lines = [json.dumps(row, ensure_ascii=False) for row in rows]
        if broken_line is not None:
            lines.insert(len(lines) // 2, broken_line)
        path = path.with_suffix(".jsonl")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt in ("json", "json-examples"):
        path = path.with_suffix(".json")
        data = rows if fmt == "json" else {"examples": rows}
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    else:
        path = path.with_suffix(".csv")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(FIELDS)
        for row in rows:  # cells as text; short rows when fields are missing, extra cells for non-objects
            cells = [row.get(field) for field in FIELDS] if isinstance(row, dict) else [row] * 6
            writer.writerow(["" if cell is None else str(cell) for cell in cells if cell is not None])
        if broken_line is not None:
            buffer.write(broken_line + "\n")
        path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, fmt=FORMATS, broken=st.one_of(st.none(), st.text(min_size=1, max_size=10).map(str.strip)))
def test_malformed_rows_load_or_raise_corpus_error_naming_a_row(tmp_path_factory, rows, fmt, broken):
    path = _write(tmp_path_factory.mktemp("corpus") / "corpus", fmt, rows, broken or None)
    try:
        corpus = load_cot_corpus(path)
    except CorpusError as error:
        message = str(error)
        assert NAMES_A_ROW.search(message) or str(path) in message, message
        return
    assert corpus.column_names == list(CANONICAL_COLUMNS)
    assert all(text.strip() for column in ("question", "rationale", "answer") for text in corpus[column])


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_latin1_file_raises_corpus_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes('{"question": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(CorpusError, match=re.escape(f"{path}: not UTF-8 text")):
        load_cot_corpus(path)


def test_byte_order_mark_is_accepted(tmp_path):
    row = {"question": "Q", "rationale": "R", "answer": "A"}
    jsonl, csv_file = tmp_path / "a.jsonl", tmp_path / "b.csv"
    jsonl.write_bytes(json.dumps(row).encode("utf-8-sig") + b"\n")
    csv_file.write_bytes("question,rationale,answer\nQ,R,A\n".encode("utf-8-sig"))
    assert load_cot_corpus([jsonl, csv_file])["question"] == ["Q", "Q"]
