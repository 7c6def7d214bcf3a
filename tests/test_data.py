"""CoT corpus loading, validation errors, the task-wise split and the TRL prompt/completion conversion."""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest
from trl.data_utils import is_conversational

from slowed.builtin_corpus import builtin_cot_corpus
from slowed.data import (
    CANONICAL_COLUMNS,
    TEACHER_BBH_COLUMNS,
    ColumnMapping,
    CorpusError,
    load_cot_corpus,
    split_by_task_index,
    to_prompt_completion,
)

ROWS = [
    {"question": "2 + 2 =", "rationale": "2 plus 2 is 4.", "answer": "4", "task": "math", "index": 7},
    {
        "question": "Is the sky green?",
        "rationale": "The sky is blue.",
        "answer": "No",
        "task": "facts",
        "index": 3,
    },
    {"question": "Sort: b a", "rationale": "a comes before b.", "answer": "a b", "task": "math", "index": 9},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], records: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(records)
    return path


def error_text(source, **kwargs) -> str:
    with pytest.raises(CorpusError) as caught:
        load_cot_corpus(source, **kwargs)
    return str(caught.value)


# ---------------------------------------------------------------- formats


def test_jsonl_json_list_json_examples_and_csv_load_the_same_rows(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", ROWS)
    json_list = tmp_path / "b.json"
    json_list.write_text(json.dumps(ROWS), encoding="utf-8")
    json_examples = tmp_path / "c.json"
    json_examples.write_text(json.dumps({"canary": "x", "examples": ROWS}), encoding="utf-8")
    header = ["question", "rationale", "answer", "task", "index"]
    csv_file = write_csv(tmp_path / "d.csv", header, [[str(row[c]) for c in header] for row in ROWS])
    for path in (jsonl, json_list, json_examples, csv_file):
        corpus = load_cot_corpus(path)
        assert corpus.column_names == list(CANONICAL_COLUMNS)
        assert corpus.features["index"].dtype == "int64"
        assert corpus.to_list() == ROWS, path.name


def test_task_defaults_to_file_stem_and_index_to_row_number(tmp_path):
    bare = [{k: row[k] for k in ("question", "rationale", "answer")} for row in ROWS]
    # JSONL row numbers are line numbers: a blank line keeps its number, so the third row is line 4.
    path = tmp_path / "my_task.jsonl"
    path.write_text(
        f"{json.dumps(bare[0])}\n{json.dumps(bare[1])}\n\n{json.dumps(bare[2])}\n", encoding="utf-8"
    )
    corpus = load_cot_corpus(str(path))
    assert corpus["task"] == ["my_task"] * 3
    assert corpus["index"] == [0, 1, 3]
    as_csv = write_csv(
        tmp_path / "other.csv", ["question", "rationale", "answer"], [list(r.values()) for r in bare]
    )
    corpus = load_cot_corpus(as_csv, columns=ColumnMapping(task=None, index=None))
    assert corpus["task"] == ["other"] * 3
    assert corpus["index"] == [0, 1, 2]


def test_directory_loads_all_files_sorted_and_list_of_paths(tmp_path):
    write_jsonl(tmp_path / "b_task.jsonl", [ROWS[1]])
    (tmp_path / "a_task.json").write_text(json.dumps([ROWS[0]]), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a corpus", encoding="utf-8")
    assert load_cot_corpus(tmp_path).to_list() == [ROWS[0], ROWS[1]]
    assert load_cot_corpus([tmp_path / "b_task.jsonl", tmp_path / "a_task.json"]).to_list() == [
        ROWS[1],
        ROWS[0],
    ]
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        load_cot_corpus([tmp_path / "notes.txt"])
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        load_cot_corpus(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        load_cot_corpus(empty)


def test_column_mapping_renames_and_filters_on_correct_flag(tmp_path):
    records = [
        {"q": "A?", "why": "Because.", "gold": "yes", "name": "t", "n": 0, "ok": True},
        {"q": "B?", "why": "Since.", "gold": "no", "name": "t", "n": 1, "ok": False},
    ]
    path = write_jsonl(tmp_path / "x.jsonl", records)
    mapping = {
        "question": "q",
        "rationale": "why",
        "answer": "gold",
        "task": "name",
        "index": "n",
        "correct": "ok",
    }
    everything = load_cot_corpus(path, columns=mapping)
    assert everything.to_list() == [
        {"question": "A?", "rationale": "Because.", "answer": "yes", "task": "t", "index": 0},
        {"question": "B?", "rationale": "Since.", "answer": "no", "task": "t", "index": 1},
    ]
    assert load_cot_corpus(path, columns=ColumnMapping(**mapping), only_correct=True)["question"] == ["A?"]
    with pytest.raises(ValueError, match="only_correct=True needs a correctness column"):
        load_cot_corpus(path, columns=ColumnMapping(**{**mapping, "correct": None}), only_correct=True)
    with pytest.raises(CorpusError, match="has no rows with ok true"):
        load_cot_corpus(write_jsonl(tmp_path / "y.jsonl", records[1:]), columns=mapping, only_correct=True)
    with pytest.raises(ValueError, match=r"unknown keys \['prompt'\]"):
        load_cot_corpus(path, columns={"prompt": "q"})


def test_csv_parses_index_and_flag_from_text(tmp_path):
    header = ["question", "rationale", "answer", "task", "index", "correct"]
    path = write_csv(
        tmp_path / "c.csv", header, [["Q1", "R1", "A1", "t", "5", "TRUE"], ["Q2", "R2", "A2", "t", "6", "0"]]
    )
    corpus = load_cot_corpus(path, columns=ColumnMapping(correct="correct"), only_correct=True)
    assert corpus.to_list() == [
        {"question": "Q1", "rationale": "R1", "answer": "A1", "task": "t", "index": 5}
    ]


def test_builtin_source_is_the_default_builtin_corpus():
    assert load_cot_corpus("builtin").to_list() == builtin_cot_corpus().to_list()
    assert load_cot_corpus("builtin", only_correct=True).to_list() == builtin_cot_corpus().to_list()
    with pytest.raises(ValueError, match="drop columns"):
        load_cot_corpus("builtin", columns=TEACHER_BBH_COLUMNS)


def test_hub_id_goes_through_load_dataset_and_the_same_validation(monkeypatch):
    # No hub here: stand in for datasets.load_dataset with an in-memory split to check the hub branch's wiring.
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(
            [{"question": "Q", "rationale": "R", "answer": "A"}, {"question": "Q2"}]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    message = error_text("someone/cot-corpus", split="validation")
    assert calls == [("someone/cot-corpus", "validation")]
    assert "someone/cot-corpus (row numbers are 1-based rows of split 'validation'):" in message
    assert "  row 2: 'rationale' is null; 'answer' is null" in message


# ---------------------------------------------------------------- the teacher files


def test_teacher_files_load_with_gold_answers(shared_data_dir):
    teacher_dir = shared_data_dir / "bbh_cot_teacher"
    raw = [
        json.loads(line)
        for path in sorted(teacher_dir.glob("*.jsonl"))
        for line in path.open(encoding="utf-8")
    ]
    corpus = load_cot_corpus(teacher_dir, columns=TEACHER_BBH_COLUMNS)
    assert len(corpus) == len(raw) == 6511
    expected = [
        {
            "question": r["input"],
            "rationale": r["teacher_cot"],
            "answer": r["target"],
            "task": r["task_name"],
            "index": r["index"],
        }
        for r in raw
    ]
    assert corpus.to_list() == expected
    correct = load_cot_corpus(teacher_dir, columns="teacher_bbh", only_correct=True)
    assert len(correct) == sum(r["teacher_correct"] for r in raw) == 4816
    truncated = [row for row in corpus if row["task"] == "snarks" and row["index"] == 88]
    assert len(truncated) == 1 and truncated[0]["question"].endswith("(A) The NB")


def test_teacher_files_with_default_columns_name_the_available_columns(shared_data_dir):
    message = error_text(shared_data_dir / "bbh_cot_teacher")
    assert "and 24 more files: no column 'question' (ColumnMapping.question), 'rationale'" in message
    assert "available columns: 'task_name', 'index', 'input', 'target', 'teacher_cot'" in message
    assert "columns=TEACHER_BBH_COLUMNS" in message


# ---------------------------------------------------------------- malformed rows


def test_malformed_jsonl_rows_are_listed_with_line_numbers_and_fields(tmp_path):
    good = {"question": "Q", "rationale": "R", "answer": "A", "task": "t", "index": 0, "ok": True}
    lines = [
        json.dumps(good),
        json.dumps({**good, "index": 1}),
        json.dumps({k: v for k, v in good.items() if k != "question"}),
        json.dumps({**good, "answer": 24}),
        "",
        json.dumps({**good, "rationale": "   ", "ok": "yes"}),
        json.dumps({**good, "index": "7", "task": ""}),
        json.dumps([1, 2]),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = error_text(path, columns=ColumnMapping(correct="ok"))
    assert message.splitlines() == [
        "cannot load the CoT corpus (5 bad rows):",
        f"{path} (row numbers are 1-based line numbers):",
        "  line 3: 'question' missing",
        "  line 4: 'answer' is int 24, expected a string",
        "  line 6: 'rationale' is an empty or whitespace-only string; 'ok' is str 'yes', expected a boolean (true/false)",
        "  line 7: 'task' is an empty or whitespace-only string; 'index' is str '7', expected an integer",
        "  line 8: expected a JSON object with columns, got list [1, 2]",
        "Fix: correct or drop these rows (text fields must be non-empty strings, the index an integer, "
        "the correctness flag a boolean).",
    ]


def test_one_error_covers_every_file_with_its_own_row_numbering(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([ROWS[0], {**ROWS[1], "answer": ["No"]}]), encoding="utf-8")
    write_csv(
        tmp_path / "b.csv",
        ["question", "rationale", "answer"],
        [["Q", "R", "A"], ["Q", "", "A"], ["Q", "R"]],
    )
    message = error_text(tmp_path)
    assert (
        f"{tmp_path / 'a.json'} (row numbers are 1-based positions in the list):\n  item 2: 'answer' is list"
        in message
    )
    assert (
        f"{tmp_path / 'b.csv'} (row numbers are 1-based data rows, the header not counted):\n"
        "  row 2: 'rationale' is an empty or whitespace-only string\n"
        "  row 3: 'answer' missing (fewer cells than the header)\n"
    ) in message
    assert message.startswith("cannot load the CoT corpus (3 bad rows):")


def test_listing_is_capped_at_twenty_rows(tmp_path):
    good = {"question": "Q", "rationale": "R", "answer": "A"}
    path = write_jsonl(tmp_path / "many.jsonl", [good] + [{"question": "Q", "rationale": "R"}] * 25)
    lines = error_text(path).splitlines()
    listed = [line for line in lines if line.startswith("  line ")]
    assert listed == [f"  line {n}: 'answer' missing" for n in range(2, 22)]
    assert "  ... and 5 more bad rows" in lines


def test_column_absent_everywhere_is_one_message_with_the_available_columns(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"input": "Q", "rationale": "R", "answer": "A"}] * 3)
    message = error_text(path)
    assert message.splitlines() == [
        "cannot load the CoT corpus:",
        f"{path}: no column 'question' (ColumnMapping.question) in any row; available columns: 'input', "
        "'rationale', 'answer'. Fix: pass columns=ColumnMapping(question=<column holding the question>).",
    ]


def test_unparseable_jsonl_lines_are_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{'question': 'single quotes'}\n" + json.dumps(ROWS[1]) + "\n{\n")
    message = error_text(path)
    assert message.splitlines()[:3] == [
        f"{path}: 2 unparseable JSONL lines:",
        "  line 2: not valid JSON (Expecting property name enclosed in double quotes, column 2)",
        "  line 4: not valid JSON (Expecting property name enclosed in double quotes, column 2)",
    ]


def test_json_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    assert "must be a list of objects or an object with an 'examples' list" in error_text(path)


# ---------------------------------------------------------------- the split


def task_rows(task: str, count: int) -> list[dict]:
    return [
        {"question": f"{task} {i}", "rationale": "r", "answer": "a", "task": task, "index": i}
        for i in range(count)
    ]


def pairs(dataset: datasets.Dataset) -> set[tuple[str, int]]:
    return set(zip(dataset["task"], dataset["index"], strict=True))


def test_split_sizes_round_half_up_per_task_and_partition_the_rows():
    rows = task_rows("a", 10) + task_rows("b", 7) + task_rows("c", 5)
    parts = split_by_task_index(datasets.Dataset.from_list(rows), test_fraction=0.3)
    # a: 3.0 -> 3, b: 2.1 -> 2, c: 1.5 -> 2 (half up)
    test_counts = {t: parts["test"]["task"].count(t) for t in "abc"}
    assert test_counts == {"a": 3, "b": 2, "c": 2}
    assert pairs(parts["train"]) | pairs(parts["test"]) == {(r["task"], r["index"]) for r in rows}
    assert not pairs(parts["train"]) & pairs(parts["test"])
    assert len(parts["train"]) + len(parts["test"]) == len(rows)


def test_split_ignores_row_order_and_other_tasks_but_follows_the_seed():
    rows = task_rows("a", 40) + task_rows("b", 30)
    reference = split_by_task_index(datasets.Dataset.from_list(rows), 0.25, seed=3)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    again = split_by_task_index(datasets.Dataset.from_list(shuffled), 0.25, seed=3)
    assert pairs(again["test"]) == pairs(reference["test"])
    assert pairs(again["train"]) == pairs(reference["train"])
    only_a = split_by_task_index(datasets.Dataset.from_list(task_rows("a", 40)), 0.25, seed=3)
    with_more = split_by_task_index(datasets.Dataset.from_list(rows + task_rows("z", 9)), 0.25, seed=3)
    test_of_a = {pair for pair in pairs(reference["test"]) if pair[0] == "a"}
    assert pairs(only_a["test"]) == test_of_a
    assert {pair for pair in pairs(with_more["test"]) if pair[0] == "a"} == test_of_a
    other_seed = split_by_task_index(datasets.Dataset.from_list(rows), 0.25, seed=4)
    assert pairs(other_seed["test"]) != pairs(reference["test"])


def test_split_keeps_row_order_columns_and_the_edges():
    rows = task_rows("a", 12)
    random.Random(0).shuffle(rows)  # input order differs from index order
    dataset = datasets.Dataset.from_list(rows)
    parts = split_by_task_index(dataset, 0.5)
    input_order = [row["index"] for row in rows]
    for part in ("train", "test"):
        assert parts[part]["index"] == [i for i in input_order if i in set(parts[part]["index"])]
    assert parts["test"]["index"] != sorted(parts["test"]["index"])
    assert parts["train"].column_names == dataset.column_names
    assert len(split_by_task_index(dataset, 0.0)["test"]) == 0
    assert len(split_by_task_index(dataset, 1.0)["train"]) == 0


def test_split_of_the_teacher_corpus_takes_a_fifth_of_each_task(shared_data_dir):
    corpus = load_cot_corpus(shared_data_dir / "bbh_cot_teacher", columns=TEACHER_BBH_COLUMNS)
    sizes = Counter(corpus["task"])
    parts = split_by_task_index(corpus, 0.2)
    test_sizes = Counter(parts["test"]["task"])
    assert test_sizes == {task: int(size * 0.2 + 0.5) for task, size in sizes.items()}
    assert sum(test_sizes.values()) + len(parts["train"]) == 6511


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_split_rejects_fractions_outside_the_unit_interval(fraction):
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split_by_task_index(datasets.Dataset.from_list(task_rows("a", 3)), fraction)


def test_split_rejects_non_numbers_missing_columns_and_duplicates():
    with pytest.raises(TypeError, match="test_fraction must be a number"):
        split_by_task_index(datasets.Dataset.from_list(task_rows("a", 3)), "0.2")
    with pytest.raises(ValueError, match=r"missing \['index'\]"):
        split_by_task_index(datasets.Dataset.from_list([{"task": "a"}]), 0.2)
    rows = task_rows("a", 3) + task_rows("a", 2) + task_rows("b", 2)
    with pytest.raises(
        ValueError, match=r"2 duplicate \(task, index\) pairs: \(task='a', index=0\), \(task='a', index=1\)"
    ):
        split_by_task_index(datasets.Dataset.from_list(rows), 0.2)


# ---------------------------------------------------------------- prompt/completion


def test_prompt_completion_messages_match_hand_written_ones():
    corpus = datasets.Dataset.from_list(
        [
            {
                "question": "  2 + 2 =\n",
                "rationale": "2 plus 2 is 4. So the answer is 4.",
                "answer": "4",
                "task": "m",
                "index": 0,
            },
            {"question": "Sky?", "rationale": "It is blue.\n", "answer": " (B) ", "task": "f", "index": 5},
            {
                "question": "Q",
                "rationale": "Wrong way. So, the answer is (A).",
                "answer": "(C)",
                "task": "f",
                "index": 6,
            },
        ]
    )
    converted = to_prompt_completion(corpus)
    assert converted.column_names == ["task", "index", "prompt", "completion"]
    assert converted.to_list() == [
        {
            "task": "m",
            "index": 0,
            "prompt": [{"role": "user", "content": "2 + 2 ="}],
            "completion": [{"role": "assistant", "content": "2 plus 2 is 4. So the answer is 4."}],
        },
        {
            "task": "f",
            "index": 5,
            "prompt": [{"role": "user", "content": "Sky?"}],
            "completion": [{"role": "assistant", "content": "It is blue. So the answer is (B)."}],
        },
        {
            "task": "f",
            "index": 6,
            "prompt": [{"role": "user", "content": "Q"}],
            "completion": [{"role": "assistant", "content": "Wrong way. So the answer is (C)."}],
        },
    ]
    assert all(is_conversational(row) for row in converted)


def test_prompt_completion_refuses_other_tables():
    with pytest.raises(ValueError, match=r"missing \['rationale', 'answer'\]"):
        to_prompt_completion(datasets.Dataset.from_list([{"question": "Q"}]))
    converted = to_prompt_completion(datasets.Dataset.from_list([ROWS[0]]))
    with pytest.raises(
        ValueError, match=r"already has \['prompt', 'completion'\]; it looks converted already"
    ):
        to_prompt_completion(converted)
    # A table with the canonical columns and a prompt column would have that column overwritten.
    with pytest.raises(ValueError, match="converted already"):
        to_prompt_completion(datasets.Dataset.from_list([{**ROWS[0], "prompt": "p"}]))


@pytest.mark.parametrize("source", ["data/corpora/cot", "./cot", "corpus.jsonl", "data\\cot"])
def test_missing_path_like_corpus_is_not_sent_to_the_hub(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"corpus '{re.escape(source)}' does not exist.*{tmp_path}"):
        load_cot_corpus(source)


def test_hub_failure_says_the_local_path_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def unreachable(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(
        CorpusError, match=rf"'mydata/cot' is not a local file or folder \(no {tmp_path}/mydata/cot\)"
    ):
        load_cot_corpus("mydata/cot")
