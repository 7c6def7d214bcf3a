"""The safety tasks end to end in lm-eval (tiny student, tiny guard, sample AdvBench), the judge filter's
records and its failure path, and the per-sample metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from sample_data import write_sample_data_dir
from test_judges import offline, reference_guard_outputs, save_verdict_guard
from transformers import AutoTokenizer

from slowed.evaluation.rejudge import generations_file_name, run_stamp, task_of
from slowed.evaluation.safety import (
    JudgeFailedError,
    SafetyJudgeFilter,
    judge_samples,
    process_results,
    read_samples,
    recorded_judges,
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

    record = recorded_judges()["slowed_safety"]
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
    with pytest.raises(JudgeFailedError, match=r"slowed-eval judge --samples") as failure:
        run_safety_tasks(tiny_model_dir, sample_dir, ["slowed_safety"], limit=2)
    (saved,) = tmp_path.glob("slowed_safety_*_generations.jsonl")
    assert str(saved) in str(failure.value)
    assert "SLOWED_JUDGE_TEMPLATE" in str(failure.value.__cause__)
    samples = read_samples(saved)
    assert [s["doc"]["prompt"] for s in samples] == [
        f"Placeholder request number {i}, with a comma" for i in range(2)
    ]
    assert all(isinstance(s["resps"][0][0], str) for s in samples)


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
