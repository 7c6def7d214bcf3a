"""The reasoning task YAMLs inside lm-eval 0.4.13: indexing, loading every row, scoring, a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from sample_data import AGIEVAL_SUBSETS, BBSUB_TASKS, write_sample_data_dir

from slowed.prompting import user_message

TASK_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks"
LM_EVAL_BBH_DIR = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "cot_zeroshot"
# Independent reference for the 27 BBH task names: lm-eval's own BBH task files.
BBH_NAMES = sorted(p.stem for p in LM_EVAL_BBH_DIR.glob("*.yaml") if not p.stem.startswith("_"))
AGIEVAL_TASKS = [f"slowed_agieval_{subset.replace('-', '_')}" for subset in AGIEVAL_SUBSETS]
BBSUB_NAMES = [f"slowed_bbsub_{task}" for task in BBSUB_TASKS]
ARC_TASKS = ["slowed_arc_easy", "slowed_arc_challenge"]
GROUPS = ["slowed_bbh", "slowed_agieval", "slowed_bbsub", "slowed_id", "slowed_ood"]


def _bbh_tasks() -> list[str]:
    return [f"slowed_bbh_{name}" for name in BBH_NAMES]


def _manager(data_dir: Path) -> TaskManager:
    return TaskManager(
        include_path=[str(TASK_DIR)], include_defaults=False, metadata={"data_dir": str(data_dir)}
    )


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    return write_sample_data_dir(tmp_path_factory.mktemp("sample-data"), rows_per_file=3)


def test_task_manager_indexes_every_task_and_group() -> None:
    assert len(BBH_NAMES) == 27
    manager = TaskManager(include_path=[str(TASK_DIR)], include_defaults=False)
    expected_tasks = _bbh_tasks() + AGIEVAL_TASKS + BBSUB_NAMES + ARC_TASKS
    assert set(expected_tasks) <= set(manager.all_subtasks)
    assert set(GROUPS) <= set(manager.all_groups)


def test_every_task_loads_every_shared_row(shared_data_dir: Path) -> None:
    """Each lm-eval task serves every row of its file in ../shared/data (bbsub is not there)."""
    expected = {}
    for name in BBH_NAMES:
        expected[f"slowed_bbh_{name}"] = len(
            json.loads((shared_data_dir / f"bbh/tasks/{name}.json").read_text())["examples"]
        )
    for task, subset in zip(AGIEVAL_TASKS, AGIEVAL_SUBSETS, strict=True):
        lines = (shared_data_dir / f"agieval/{subset}.jsonl").read_text().splitlines()
        expected[task] = sum(1 for line in lines if line.strip())
    for task, file in zip(ARC_TASKS, ["ARC-Easy-Test.json", "ARC-Challenge-Test.json"], strict=True):
        expected[task] = len(json.loads((shared_data_dir / "arc" / file).read_text()))
    loaded = _manager(shared_data_dir).load(["slowed_id", "slowed_agieval", *ARC_TASKS])
    counts = {name: len(task.test_docs()) for name, task in loaded["tasks"].items()}
    assert counts == expected
    assert sum(counts[f"slowed_bbh_{name}"] for name in BBH_NAMES) == 6511


def _raw_questions(data_dir: Path) -> dict[str, str]:
    """{question text as written in the data files: gold answer}, read straight from the files."""
    answers = {}
    for path in (data_dir / "bbh" / "tasks").glob("*.json"):
        answers |= {e["input"].strip(): e["target"] for e in json.loads(path.read_text())["examples"]}
    for path in (data_dir / "arc").glob("*.json"):
        answers |= {e["input"].strip(): e["target"] for e in json.loads(path.read_text())}
    for path in (data_dir / "bbsub").glob("*.jsonl"):
        answers |= {r["input"].strip(): r["target"] for r in map(json.loads, path.read_text().splitlines())}
    for path in (data_dir / "agieval").glob("*.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            answers[row["question"].strip()] = row["answer"] if row["label"] is None else f"({row['label']})"
    return answers


class OracleLM(LM):
    """Answers every prompt with the gold answer looked up in the raw files (or a wrong one)."""

    def __init__(self, answers: dict[str, str], wrong: bool = False) -> None:
        super().__init__()
        self.answers, self.wrong = answers, wrong

    def generate_until(self, requests) -> list[str]:
        replies = []
        for request in requests:
            context = request.args[0]
            key = max((q for q in self.answers if q in context), key=len)
            answer = "(Z)" if self.wrong else self.answers[key]
            replies.append(f"Let us think step by step. So the answer is {answer}.")
        return replies

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


@pytest.mark.parametrize(("wrong", "score"), [(False, 1.0), (True, 0.0)])
def test_oracle_scores_every_task_and_group(sample_dir: Path, wrong: bool, score: float) -> None:
    oracle = OracleLM(_raw_questions(sample_dir), wrong=wrong)
    out = lm_eval.simple_evaluate(
        model=oracle, tasks=["slowed_id", "slowed_ood"], task_manager=_manager(sample_dir), log_samples=True
    )
    results = out["results"]
    for name in [*_bbh_tasks(), *AGIEVAL_TASKS, *BBSUB_NAMES, *ARC_TASKS, *GROUPS]:
        assert results[name]["exact_match,answer"] == score, name
    for name in [*_bbh_tasks(), *AGIEVAL_TASKS, *BBSUB_NAMES, *ARC_TASKS]:
        for sample in out["samples"][name]:  # the named filter logs the extracted answer
            said = sample["resps"][0][0].removeprefix("Let us think step by step. So the answer is ")
            assert sample["filtered_resps"] == [said.removesuffix(".")], name
    assert results["slowed_ood"]["sample_len"] == 3 * (len(AGIEVAL_TASKS) + len(BBSUB_NAMES) + 2)


@pytest.mark.slow
def test_real_run_with_tiny_model(sample_dir: Path, tiny_model_dir: Path) -> None:
    """lm-eval's HF model in chat mode: every task and group reports exact_match; the prompt is the
    training user message in the model's chat template."""
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_model_dir},device=cpu",
        tasks=["slowed_id", "slowed_ood"],
        limit=1,
        batch_size=16,
        apply_chat_template=True,
        gen_kwargs="max_gen_toks=8",
        task_manager=_manager(sample_dir),
        log_samples=True,
    )
    for name in [*_bbh_tasks(), *AGIEVAL_TASKS, *BBSUB_NAMES, *ARC_TASKS]:
        per_sample = [sample["exact_match"] for sample in out["samples"][name]]
        assert per_sample and out["results"][name]["exact_match,answer"] == sum(per_sample) / len(
            per_sample
        ), name
    for name in GROUPS:
        assert "exact_match,answer" in out["results"][name], name
    assert set(out["results"]["slowed_arc_easy"]) >= {"exact_match,answer", "exact_match_stderr,answer"}

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = json.loads((sample_dir / "arc" / "ARC-Easy-Test.json").read_text())[0]["input"]
    expected = tokenizer.apply_chat_template([user_message(raw)], tokenize=False, add_generation_prompt=True)
    (context, gen_kwargs) = out["samples"]["slowed_arc_easy"][0]["arguments"][0]
    assert context == expected
    assert gen_kwargs["max_gen_toks"] == 8 and gen_kwargs["do_sample"] is False


def test_task_yamls_are_generated_from_the_one_task_list():
    """`lm_eval_tasks/reasoning/_generate_configs.py --check`: every per-task and group YAML is what the library's
    task lists give, and no YAML names a task outside them."""
    script = Path(__file__).resolve().parents[1] / "lm_eval_tasks" / "reasoning" / "_generate_configs.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert len(BBH_NAMES) == 27 and len(AGIEVAL_TASKS) == 9 and len(BBSUB_NAMES) == 8
