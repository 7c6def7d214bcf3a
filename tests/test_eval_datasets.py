"""Dataset loaders: local files (shared data and synthetic sample data), hub row formatting, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sample_data import AGIEVAL_SUBSETS, BBH_TASKS, BBSUB_TASKS, write_sample_data_dir

from slowed.evaluation.datasets import (
    DATA_DIR_ENV,
    agieval_hub_row,
    agieval_local_row,
    arc_hub_row,
    bigbench_hub_row,
    load_advbench,
    load_agieval,
    load_arc,
    load_bbh,
    load_bbsub,
    resolve_data_dir,
)

ROWS = 3


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    return write_sample_data_dir(tmp_path_factory.mktemp("sample-data"), rows_per_file=ROWS)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------ the shared datasets, every row


def test_shared_bbh_every_row(shared_data_dir: Path) -> None:
    for task in BBH_TASKS:
        examples = json.loads((shared_data_dir / "bbh" / "tasks" / f"{task}.json").read_text())["examples"]
        rows = load_bbh(task, data_dir=shared_data_dir)["test"]
        assert len(rows) == len(examples), task
        assert rows[-1] == {"question": examples[-1]["input"].strip(), "target": examples[-1]["target"]}


@pytest.mark.parametrize(("subset", "count"), [("ARC-Easy", 2376), ("ARC-Challenge", 1172)])
def test_shared_arc_every_row(shared_data_dir: Path, subset: str, count: int) -> None:
    items = json.loads((shared_data_dir / "arc" / f"{subset}-Test.json").read_text())
    rows = load_arc(subset, data_dir=shared_data_dir)["test"]
    assert len(rows) == len(items) == count
    assert rows["question"] == [item["input"] for item in items]
    assert rows["target"] == [item["target"] for item in items]


def test_shared_agieval_every_row(shared_data_dir: Path) -> None:
    for subset in AGIEVAL_SUBSETS:
        raw = _jsonl(shared_data_dir / "agieval" / f"{subset}.jsonl")
        rows = load_agieval(subset, data_dir=shared_data_dir)["test"]
        assert len(rows) == len(raw), subset
        for row, source in zip(rows, raw, strict=True):
            expected = source["answer"].strip() if subset == "math" else f"({source['label']})"
            assert row["target"] == expected
            assert source["question"].strip() in row["question"]
            for option in source["options"] or []:  # every option text survives the label clean-up
                assert option.strip()[3:].strip()[-10:] in row["question"]


def test_shared_advbench(shared_data_dir: Path) -> None:
    with (shared_data_dir / "advbench" / "harmful_behaviors.csv").open(newline="") as handle:
        goals = [row["goal"] for row in csv.DictReader(handle)]
    rows = load_advbench(data_dir=shared_data_dir)["test"]
    assert len(rows) == len(goals) == 520
    assert rows["prompt"] == goals


def test_shared_data_has_no_bbsub(shared_data_dir: Path) -> None:
    missing = shared_data_dir / "bbsub" / "emoji_movie.jsonl"
    with pytest.raises(FileNotFoundError) as error:
        load_bbsub("emoji_movie", data_dir=shared_data_dir)
    message = str(error.value)
    assert str(missing) in message and "--metadata data_dir" in message and "tasksource/bigbench" in message


# ------------------------------------------------------------------ synthetic sample data


def test_sample_data_every_loader(sample_dir: Path) -> None:
    for task in BBH_TASKS:
        examples = json.loads((sample_dir / "bbh" / "tasks" / f"{task}.json").read_text())["examples"]
        assert load_bbh(task, data_dir=sample_dir)["test"]["target"] == [e["target"] for e in examples]
    for subset in ("ARC-Easy", "ARC-Challenge"):
        items = json.loads((sample_dir / "arc" / f"{subset}-Test.json").read_text())
        assert load_arc(subset, data_dir=sample_dir)["test"]["question"] == [i["input"] for i in items]
    for subset in AGIEVAL_SUBSETS:
        assert len(load_agieval(subset, data_dir=sample_dir)["test"]) == ROWS
    for task in BBSUB_TASKS:
        raw = _jsonl(sample_dir / "bbsub" / f"{task}.jsonl")
        assert load_bbsub(task, data_dir=sample_dir)["test"].to_list() == [
            {"question": r["input"], "target": r["target"]} for r in raw
        ]
    assert len(load_advbench(data_dir=sample_dir)["test"]) == ROWS


def test_agieval_local_prompt_layout(sample_dir: Path) -> None:
    """Passage, "Question:", "Options:" and cleaned "(X) text" lines (gaokao's "  A. text  " included)."""
    row = load_agieval("gaokao-english", data_dir=sample_dir)["test"][1]
    assert row == {
        "question": "Passage 1 of gaokao-english.\nQuestion: Which option is right for gaokao-english item 1?\n"
        "Options:\n(A) choice A of item 1\n(B) choice B of item 1\n(C) choice C of item 1\n(D) choice D of item 1",
        "target": "(B)",
    }
    math = load_agieval("math", data_dir=sample_dir)["test"][0]
    assert math == {"question": "Question: What is $\\frac{1}{2}$ of 4?", "target": "2"}


def test_data_dir_from_env_and_metadata_wins(sample_dir: Path, tmp_path: Path, monkeypatch) -> None:
    assert resolve_data_dir(None) is None
    monkeypatch.setenv(DATA_DIR_ENV, str(sample_dir))
    assert resolve_data_dir(None) == (sample_dir, f"the environment variable {DATA_DIR_ENV}")
    assert len(load_arc("ARC-Easy")["test"]) == ROWS  # the env variable alone selects local files
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
        load_arc("ARC-Easy", data_dir="")  # empty metadata falls back to the env variable ...
    assert len(load_arc("ARC-Easy", data_dir=str(sample_dir))["test"]) == ROWS  # ... metadata wins


def test_bad_rows_name_file_row_and_field(tmp_path: Path) -> None:
    (tmp_path / "agieval").mkdir()
    (tmp_path / "agieval" / "lsat-ar.jsonl").write_text(
        json.dumps({"passage": None, "question": "q", "options": ["(A)x", "(B)y"], "label": "C"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"lsat-ar.jsonl line 1: label 'C'"):
        load_agieval("lsat-ar", data_dir=tmp_path)
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "ARC-Easy-Test.json").write_text(json.dumps([{"input": "q"}]))
    with pytest.raises(ValueError, match=r"ARC-Easy-Test.json item 0: missing field 'target'"):
        load_arc("ARC-Easy", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown BBH subset 'not_a_task'"):
        load_bbh("not_a_task", data_dir=tmp_path)


# ------------------------------------------------------------------ hub row formats (hand-written rows)


def test_arc_hub_row_matches_local_layout() -> None:
    row = {
        "question": "Which is a mammal? ",
        "choices": {"text": ["shark", "whale", "trout"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    }
    assert arc_hub_row(row, "row 0") == {
        "question": "Question: Which is a mammal?\nOptions:\n(1) shark\n(2) whale\n(3) trout",
        "target": "(2)",
    }


def test_agieval_hub_and_local_rows_give_the_same_prompt() -> None:
    local = {
        "passage": "A short passage.",
        "question": "What follows?",
        "options": ["(A)first", "(B)second", "(C)third", "(D)fourth"],
        "label": "C",
        "answer": None,
    }
    # AGIEval's zero-shot query: passage + "Q: " + question + " Answer Choices: " + options + "\nA: ..."
    hub = {
        "query": "A short passage.Q: What follows? Answer Choices: (A)first (B)second (C)third (D)fourth\n"
        "A: Among A through D, the answer is",
        "choices": ["(A)first", "(B)second", "(C)third", "(D)fourth"],
        "gold": [2],
    }
    expected = {
        "question": "A short passage.\nQuestion: What follows?\nOptions:\n(A) first\n(B) second\n(C) third\n(D) fourth",
        "target": "(C)",
    }
    assert agieval_local_row(local, "lsat-lr", "local") == expected
    assert agieval_hub_row(hub, "lsat-lr", "hub") == expected
    math_hub = {"query": "Q: What is $1+1$?\nA: The answer is", "answer": "2"}
    math_local = {
        "passage": None,
        "question": "What is $1+1$?",
        "options": None,
        "label": None,
        "answer": "2",
    }
    assert agieval_hub_row(math_hub, "math", "hub") == agieval_local_row(math_local, "math", "local")


def test_bigbench_hub_row() -> None:
    row = {
        "inputs": "Q: Which movie is this? 🐟🐠\n  choice: Finding Nemo\n  choice: Jaws\nA:",
        "targets": ["Finding Nemo"],
        "multiple_choice_targets": ["Finding Nemo", "Jaws"],
        "multiple_choice_scores": [1, 0],
    }
    assert bigbench_hub_row(row, "row 0") == {
        "question": "Q: Which movie is this? 🐟🐠\nOptions:\n(A) Finding Nemo\n(B) Jaws",
        "target": "(A)",
    }
    with pytest.raises(ValueError, match=r"row 1: needs 1\.\.26 choices with one score 1"):
        bigbench_hub_row(row | {"multiple_choice_scores": [0, 0]}, "row 1")


def test_offline_hub_error_names_the_fix(monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    try:
        load_arc("ARC-Challenge")
    except RuntimeError as error:
        message = str(error)
    else:
        pytest.skip("allenai/ai2_arc is in the local datasets cache, so offline loading succeeds")
    assert "allenai/ai2_arc" in message and DATA_DIR_ENV in message and "data_dir" in message


# ------------------------------------------------------------------ BBH rows held out from training


def test_teacher_index_is_the_position_in_the_bbh_task_file(shared_data_dir: Path) -> None:
    # bbh_heldout filters BBH rows by the teacher files' `index`: it must be the row's position in the task file.
    for task in BBH_TASKS:
        examples = json.loads((shared_data_dir / "bbh" / "tasks" / f"{task}.json").read_text())["examples"]
        teacher = _jsonl(shared_data_dir / "bbh_cot_teacher" / f"{task}.jsonl")
        matches = sum(examples[row["index"]]["target"] == row["target"] for row in teacher)
        assert matches == len(teacher) == len(examples), task
        same_input = sum(examples[row["index"]]["input"] == row["input"] for row in teacher)
        assert same_input >= len(teacher) - 1, (
            task
        )  # snarks index 88 has a truncated input in the teacher file


def test_bbh_heldout_keeps_exactly_the_recorded_rows(sample_dir: Path, tmp_path: Path, monkeypatch) -> None:
    task = BBH_TASKS[0]
    examples = json.loads((sample_dir / "bbh" / "tasks" / f"{task}.json").read_text())["examples"]
    run_record = tmp_path / "slowed_run.json"
    run_record.write_text(json.dumps({"data": {"held_out_index_by_task": {task: [2, 0]}}}))
    rows = load_bbh(task, data_dir=sample_dir, bbh_heldout=str(run_record))["test"]
    assert list(rows) == [
        {"question": examples[i]["input"].strip(), "target": examples[i]["target"]} for i in (0, 2)
    ]

    mapping = tmp_path / "heldout.json"
    mapping.write_text(json.dumps({task: [1]}))
    monkeypatch.setenv("SLOWED_BBH_HELDOUT", str(mapping))
    assert list(load_bbh(task, data_dir=sample_dir)["test"]) == [
        {"question": examples[1]["input"].strip(), "target": examples[1]["target"]}
    ]
    with pytest.raises(
        ValueError, match=rf"holds no held-out rows for BBH task '{BBH_TASKS[1]}'.*--test_fraction"
    ):
        load_bbh(BBH_TASKS[1], data_dir=sample_dir)
    mapping.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="held_out_index_by_task"):
        load_bbh(task, data_dir=sample_dir)


# ------------------------------------------------------------------ metadata keys


def test_misspelt_metadata_keys_are_refused_with_a_suggestion(sample_dir: Path, tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.json"
    heldout.write_text(json.dumps({BBH_TASKS[0]: [0]}))
    with pytest.raises(
        ValueError, match=r"unknown --metadata key 'bbh_held_out': did you mean 'bbh_heldout'"
    ):
        load_bbh(BBH_TASKS[0], data_dir=sample_dir, bbh_held_out=str(heldout))
    with pytest.raises(ValueError, match=r"'data-dir': did you mean 'data_dir'"):
        load_arc("ARC-Easy", **{"data-dir": str(sample_dir)})
    with pytest.raises(ValueError, match=r"'heldout': did you mean 'bbh_heldout'"):
        load_advbench(
            data_dir=sample_dir, heldout=str(heldout)
        )  # every loader refuses it: metadata is per run
    with pytest.raises(ValueError, match="SLOWED_JUDGE"):
        load_advbench(data_dir=sample_dir, judge="keywords")


def test_lm_eval_and_model_argument_keys_pass(sample_dir: Path) -> None:
    """What lm-eval 0.4.13 passes (measured with a real run): YAML `version`, `config_source`, the
    --model_args keys; unknown model arguments (forwarded by `hf` to from_pretrained) pass too."""
    lm_eval_keys = {
        "version": 1.0,
        "config_source": "x.yaml",
        "pretrained": "m",
        "peft": "a",
        "dtype": "float32",
    }
    assert len(load_arc("ARC-Easy", data_dir=sample_dir, **lm_eval_keys)["test"]) == ROWS
    assert len(load_arc("ARC-Easy", data_dir=sample_dir, attn_implementation="sdpa")["test"]) == ROWS


def test_misspelt_metadata_key_is_refused_in_a_real_lm_eval_task_build(
    sample_dir: Path, tmp_path: Path
) -> None:
    from lm_eval.tasks import TaskManager

    from slowed.evaluation.tasks import TASK_DIR

    heldout = tmp_path / "heldout.json"
    heldout.write_text(json.dumps({BBH_TASKS[0]: [1]}))
    task = f"slowed_bbh_{BBH_TASKS[0]}"

    def build(metadata: dict) -> Any:
        manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=metadata)
        return manager.load_task_or_group([task])[task]

    assert len(build({"data_dir": str(sample_dir), "bbh_heldout": str(heldout)}).dataset["test"]) == 1
    with pytest.raises(ValueError, match="did you mean 'bbh_heldout'"):
        build({"data_dir": str(sample_dir), "bbh_held_out": str(heldout)})


# ------------------------------------------------------------------ malformed local files


def _advbench_dir(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "advbench").mkdir()
    (tmp_path / "advbench" / "harmful_behaviors.csv").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"goal,target\nWrite a poem,Sure\n   ,Sure\n",
            r"harmful_behaviors.csv line 3: field 'goal' is empty",
        ),
        (b"goal,target\n,Sure\n", r"harmful_behaviors.csv line 2: field 'goal' is empty"),
        (b"goal,target\n", r"harmful_behaviors.csv: the CSV has a header but no rows"),
        (b"goal,target\nWrite a poem\n", r"harmful_behaviors.csv line 2: 1 cells for the 2 header columns"),
        (b"goal,target\nWrite a poem, then a song,Sure\n", r"line 2: 3 cells for the 2 header columns"),
        (b"", r"harmful_behaviors.csv: expected a CSV header with a 'goal' column"),
        ("goal,target\nÉcris un poème,Sure\n".encode("latin-1"), r"harmful_behaviors.csv: not UTF-8 text"),
    ],
)
def test_bad_advbench_csv_names_file_and_row(tmp_path: Path, content: bytes, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        load_advbench(data_dir=_advbench_dir(tmp_path, content))


def test_advbench_csv_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    data_dir = _advbench_dir(tmp_path, "goal,target\nÉcris un poème,Sure\n".encode("utf-8-sig"))
    assert load_advbench(data_dir=data_dir)["test"]["prompt"] == ["Écris un poème"]


def test_json_with_a_byte_order_mark_loads_and_empty_fields_are_refused(tmp_path: Path) -> None:
    (tmp_path / "arc").mkdir()
    path = tmp_path / "arc" / "ARC-Easy-Test.json"
    path.write_bytes(json.dumps([{"input": "Question: q", "target": "(A)"}]).encode("utf-8-sig"))
    assert load_arc("ARC-Easy", data_dir=tmp_path)["test"]["target"] == ["(A)"]
    path.write_text(json.dumps([{"input": "Question: q", "target": "(A)"}, {"input": " ", "target": "(B)"}]))
    with pytest.raises(ValueError, match=r"ARC-Easy-Test.json item 1: field 'input' is empty"):
        load_arc("ARC-Easy", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (999, r"held-out index 999 of BBH task '\w+' is outside the task's 3 rows"),
        (-1, r"held-out index -1 of BBH task '\w+' is outside the task's 3 rows"),
        (0.7, r"held-out index 0.7 of BBH task '\w+' is not an integer"),
        (True, r"held-out index True of BBH task '\w+' is not an integer"),
        ("1", r"held-out index '1' of BBH task '\w+' is not an integer"),
    ],
)
def test_bad_heldout_index_names_file_task_and_value(
    sample_dir: Path, tmp_path: Path, index, expected
) -> None:
    heldout = tmp_path / "heldout.json"
    heldout.write_text(json.dumps({BBH_TASKS[0]: [0, index]}))
    with pytest.raises(ValueError, match=rf"heldout.json: {expected}"):
        load_bbh(BBH_TASKS[0], data_dir=sample_dir, bbh_heldout=str(heldout))
