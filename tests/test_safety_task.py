"""The safety tasks end to end in lm-eval (tiny student, tiny guard, sample AdvBench), the judge filter's
records and its failure path, and the per-sample metrics."""

from __future__ import annotations

import json
import logging
import math
import stat
import tempfile
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from sample_data import judge_record, write_sample_data_dir
from test_judges import offline, reference_guard_outputs, save_verdict_guard
from transformers import AutoTokenizer

from slowed.evaluation import files
from slowed.evaluation.files import generations_file_name, read_samples, run_stamp, task_of
from slowed.evaluation.safety import (
    JUDGE_FAILED,
    SafetyJudgeFilter,
    judge_samples,
    process_results,
)
from slowed.judges import WALLEDGUARD_C_TEMPLATE, RefusalKeywordJudge, parse_guard_verdict

SAFETY_TASK_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks" / "safety"
LIMIT = 4


def run_safety_tasks(model_dir: Path, data_dir: Path, tasks: list[str], limit: int = LIMIT) -> dict:
    metadata = {"data_dir": str(data_dir)}
    return simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},device=cpu",
        tasks=tasks,
        task_manager=TaskManager(include_path=str(SAFETY_TASK_DIR), metadata=metadata),
        limit=limit,
        apply_chat_template=True,
        metadata=metadata,
        gen_kwargs="max_gen_toks=8",
        log_samples=True,
    )


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    return write_sample_data_dir(tmp_path_factory.mktemp("data"), rows_per_file=LIMIT)


@pytest.mark.slow
def test_safety_tasks_end_to_end(tiny_model_dir, sample_dir, tmp_path, monkeypatch):
    guard_dir = save_verdict_guard(tmp_path / "guard")
    monkeypatch.setenv("SLOWED_JUDGE", str(guard_dir))
    monkeypatch.setenv("SLOWED_JUDGE_TEMPLATE", "walledguard-c")
    monkeypatch.setenv("SLOWED_JUDGE_DEVICE", "cpu")
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(tmp_path / "generations"))
    results = run_safety_tasks(tiny_model_dir, sample_dir, ["slowed_safety", "slowed_safety_keywords"])

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    guard_samples = results["samples"]["slowed_safety"]
    assert [s["doc"]["prompt"] for s in guard_samples] == [
        f"Placeholder request number {i}, with a comma" for i in range(LIMIT)
    ]
    for sample in guard_samples:  # the prompt verbatim as the user turn of the student's chat template
        expected = tokenizer.apply_chat_template(
            [{"role": "user", "content": sample["doc"]["prompt"]}], add_generation_prompt=True, tokenize=False
        )
        assert sample["arguments"][0][0] == expected
    prompts = [s["doc"]["prompt"] for s in guard_samples]
    raws = reference_guard_outputs(
        guard_dir, WALLEDGUARD_C_TEMPLATE, 20, prompts, [s["resps"][0][0] for s in guard_samples]
    )
    labels = [parse_guard_verdict(raw) for raw in raws]
    assert [s["filtered_resps"] for s in guard_samples] == [
        [[label, raw]] for label, raw in zip(labels, raws, strict=True)
    ]
    metrics = results["results"]["slowed_safety"]
    assert metrics["safety_ratio,judge"] == pytest.approx(labels.count("safe") / LIMIT)
    assert metrics["judge_unknown_rate,judge"] == pytest.approx(labels.count("unknown") / LIMIT)
    assert results["higher_is_better"]["slowed_safety"] == {"safety_ratio": True, "judge_unknown_rate": False}

    # Keyword labels on hand-written responses: test_filter_returns_label_and_raw_output_per_doc. Here: the
    # keyword task's scores are the shares of the labels it logged per sample.
    keyword_labels = [s["filtered_resps"][0][0] for s in results["samples"]["slowed_safety_keywords"]]
    assert len(keyword_labels) == LIMIT
    keyword_metrics = results["results"]["slowed_safety_keywords"]
    assert keyword_metrics["safety_ratio,keywords"] == pytest.approx(keyword_labels.count("safe") / LIMIT)
    assert keyword_metrics["judge_unknown_rate,keywords"] == pytest.approx(
        keyword_labels.count("unknown") / LIMIT
    )

    record = judge_record(tmp_path / "generations", "slowed_safety")
    assert record["judge"]["model"] == str(guard_dir) and record["judge"]["template"] == "walledguard-c"
    assert json.loads(Path(record["judge_file"]).read_text()) == {
        key: value for key, value in record.items() if key != "judge_file"
    }
    generations = read_samples(record["generations_file"])
    assert [g["resps"] for g in generations] == [s["resps"] for s in guard_samples]
    verdicts, summary = judge_samples(generations, RefusalKeywordJudge())  # re-judging a saved run
    assert verdicts == RefusalKeywordJudge().judge(prompts, [s["resps"][0][0] for s in guard_samples])
    assert summary["n"] == LIMIT and summary["judge"]["kind"] == "refusal_keywords"


@pytest.mark.slow
def test_failed_judge_keeps_the_generations(tiny_model_dir, sample_dir, tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.setenv("SLOWED_JUDGE", "slowed-tests/no-such-guard")
    monkeypatch.setenv("SLOWED_JUDGE_TEMPLATE", "walledguard-c")
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(tmp_path))
    results = run_safety_tasks(
        tiny_model_dir, sample_dir, ["slowed_safety", "slowed_safety_keywords"], limit=2
    )

    metrics = results["results"]["slowed_safety"]
    assert math.isnan(metrics["safety_ratio,judge"]) and math.isnan(metrics["judge_unknown_rate,judge"])
    keyword_labels = [s["filtered_resps"][0][0] for s in results["samples"]["slowed_safety_keywords"]]
    assert results["results"]["slowed_safety_keywords"]["safety_ratio,keywords"] == pytest.approx(
        keyword_labels.count("safe") / 2
    )  # the other task is scored as usual
    (saved,) = tmp_path.glob("slowed_safety_[0-9]*_generations.jsonl")
    (failure_file,) = tmp_path.glob("slowed_safety_[0-9]*_judge_failed.json")
    failure = json.loads(failure_file.read_text())
    assert failure["generations_file"] == str(saved) and "no-such-guard" in failure["error"]
    logged = results["samples"]["slowed_safety"]
    assert all(s["filtered_resps"][0][0] == JUDGE_FAILED for s in logged)
    assert f"slowed-eval judge --samples {saved}" in logged[0]["filtered_resps"][0][1]
    samples = read_samples(saved)
    assert [s["doc"]["prompt"] for s in samples] == [
        f"Placeholder request number {i}, with a comma" for i in range(2)
    ]
    assert [s["resps"] for s in samples] == [s["resps"] for s in logged]


def _safety_task_manager(data_dir: Path) -> TaskManager:
    """Only the slowed safety tasks (indexing lm-eval's own thousands of tasks is not needed here)."""
    return TaskManager(
        include_path=str(SAFETY_TASK_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)}
    )


def test_judge_failed_label_gives_nan_metrics_not_a_score():
    assert all(math.isnan(value) for value in process_results({}, [[JUDGE_FAILED, "error"]]).values())


@pytest.mark.parametrize(
    ("judge", "template", "expected"),
    [
        ("nonsense", None, "SLOWED_JUDGE_TEMPLATE"),
        ("./guards/missing", "walledguard-c", r"guards/missing \(set by SLOWED_JUDGE\) does not exist"),
        ("not a hub id!", "walledguard-c", "neither an existing directory nor a valid hub model id"),
        ("slowed-tests/guard", "no-such-template", "SLOWED_JUDGE_TEMPLATE at a text file"),
    ],
)
def test_judge_setup_is_checked_when_the_task_is_built(judge, template, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLOWED_JUDGE", judge)
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(tmp_path / "generations"))
    if template is None:
        monkeypatch.delenv("SLOWED_JUDGE_TEMPLATE", raising=False)
    else:
        monkeypatch.setenv("SLOWED_JUDGE_TEMPLATE", template)
    with pytest.raises(ValueError, match=expected):
        TaskManager(include_path=str(SAFETY_TASK_DIR), include_defaults=False).load_task_or_group(
            ["slowed_safety"]
        )


def test_valid_judge_setup_builds_the_task_without_loading_the_guard(sample_dir, tmp_path, monkeypatch):
    offline(monkeypatch)  # the hub id is only checked for its syntax: nothing is downloaded
    monkeypatch.setenv("SLOWED_JUDGE", "slowed-tests/not-downloaded-guard")
    monkeypatch.setenv("SLOWED_JUDGE_TEMPLATE", "walledguard-c")
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(tmp_path / "generations"))
    manager = _safety_task_manager(sample_dir)
    tasks = manager.load_task_or_group(["slowed_safety"])
    assert len(tasks["slowed_safety"].dataset["test"]) == LIMIT


def test_unwritable_generations_dir_is_refused_before_generation(sample_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(blocker / "generations"))
    manager = _safety_task_manager(sample_dir)
    with pytest.raises(OSError, match=r"SLOWED_GENERATIONS_DIR=.*a-file/generations.* is not writable"):
        manager.load_task_or_group(["slowed_safety_keywords"])


def test_safety_yamls_check_the_judge_their_filter_uses():
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in SAFETY_TASK_DIR.glob("slowed_safety*.yaml"):
        config = load_yaml(path, resolve_func=False)
        [step] = config["filter_list"][0]["filter"]
        assert config["dataset_kwargs"] == {
            "safety_filter_task": step["task"],
            "safety_filter_judge": step["judge"],
        }, path


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_default_generations_dir_is_private_and_logged(monkeypatch):
    monkeypatch.delenv("SLOWED_GENERATIONS_DIR", raising=False)
    records, slowed_logger = _Records(), logging.getLogger("lm_eval.slowed")
    slowed_logger.addHandler(records)
    monkeypatch.setattr(slowed_logger, "level", logging.INFO)
    files._private_generations_dir.cache_clear()
    try:
        folder = files.generations_dir()
        SafetyJudgeFilter(task="unit", judge="keywords").apply([["I'm sorry"]], [{"prompt": "a"}])
    finally:
        files._private_generations_dir.cache_clear()
        slowed_logger.removeHandler(records)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert folder.parent.parent == Path(tempfile.gettempdir())
    (saved,) = folder.glob("unit_*_generations.jsonl")
    assert any(str(saved) in message for message in records.messages)


def test_filter_returns_label_and_raw_output_per_doc(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(tmp_path))
    docs = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]
    resps = [["I'm sorry, no."], ["Sure, here it is."], [""]]
    filtered = SafetyJudgeFilter(task="unit", judge="keywords").apply(resps, docs)
    assert filtered == [["safe", "I'm sorry"], ["unsafe", ""], ["unknown", ""]]
    assert [process_results(doc, [f]) for doc, f in zip(docs, filtered, strict=True)] == [
        {"safety_ratio": 1.0, "judge_unknown_rate": 0.0},
        {"safety_ratio": 0.0, "judge_unknown_rate": 0.0},
        {"safety_ratio": 0.0, "judge_unknown_rate": 1.0},
    ]
    with pytest.raises(ValueError, match="doc 1 has no string field 'prompt'"):
        SafetyJudgeFilter(task="unit", judge="keywords").apply(resps[:2], [{"prompt": "a"}, {"goal": "b"}])
    with pytest.raises(ValueError, match="SafetyJudgeFilter"):
        process_results(docs[0], ["Sure"])


@pytest.mark.parametrize("task", ["slowed_safety", "slowed_safety_keywords", "unit"])
def test_generations_file_name_round_trips_to_its_task(task, tmp_path, monkeypatch):
    assert task_of(Path(generations_file_name(task, run_stamp()))) == task
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(tmp_path))
    SafetyJudgeFilter(task=task, judge="keywords").apply([["I'm sorry"]], [{"prompt": "a"}])
    (saved,) = tmp_path.glob("*_generations.jsonl")
    assert task_of(saved) == task
