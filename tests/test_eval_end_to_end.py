"""Acceptance: `slowed-eval` runs the whole `slowed` group offline on a tiny model + LoRA adapter.

One `slowed-eval --tasks slowed` run (module fixture, subprocess) on the synthetic data directory is shared
by the tests; the same tasks through plain `lm_eval --include_path "$(slowed-eval --print-task-dir)"`,
`slowed-eval judge` on the logged safety samples, `slowed.evaluation.evaluate()` and a run on the real
shared datasets are checked against it. The judge is the tiny model itself read as a guard with the
WalledGuard-C template: its verdicts are nonsense but greedy and deterministic, which is what "re-judging
reproduces the in-run verdicts" needs. Generations are capped at 8 tokens and 2 documents per task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sample_data import write_sample_data_dir

from slowed.evaluation.api import evaluate, metrics_from_results
from slowed.evaluation.results import METRIC_NAMES, OOD_METRICS

pytestmark = pytest.mark.slow

LIMIT = 2
COMMON_ARGS = ["--limit", str(LIMIT), "--apply_chat_template", "--gen_kwargs", "max_gen_toks=8"]
# Batch size 1: no padding, so a document's greedy generation cannot depend on which other requests of
# the run share its batch (the runs compared here hold different task sets).
COMMON_ARGS += ["--device", "cpu", "--batch_size", "1", "--log_samples"]
TRAINING_KNOBS = {
    "entropy_mask_ratio": 0.2,
    "entropy_mask_scope": "sequence",
    "entropy_source": "online",
    "slow_tuning_tau": 1.0,
    "slow_tuning_scope": "global",
    "slow_tuning_interval": "epoch",
}
REASONING_GROUPS = ("slowed_id", "slowed_ood", "slowed_bbh", "slowed_bbsub", "slowed_agieval")


def _env(tmp: Path, judge: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SLOWED_DATA_DIR", None)
    env.update(
        SLOWED_JUDGE=str(judge),
        SLOWED_JUDGE_TEMPLATE="walledguard-c",
        SLOWED_GENERATIONS_DIR=str(tmp / "generations"),
        **extra,
    )
    return env


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, (
        f"{command}\nSTDOUT:\n{completed.stdout[-3000:]}\nSTDERR:\n{completed.stderr[-6000:]}"
    )
    return completed


def _outputs(output_path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(results dict, samples per task) of the single lm-eval run written under `output_path`."""
    [results_file] = output_path.rglob("results_*.json")
    timestamp = results_file.stem.removeprefix("results_")
    samples = {}
    for path in results_file.parent.glob(f"samples_*_{timestamp}.jsonl"):
        task = path.name.removeprefix("samples_").removesuffix(f"_{timestamp}.jsonl")
        samples[task] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return json.loads(results_file.read_text(encoding="utf-8")), samples


def _expected_reasoning_tasks(data_dir: Path, with_bbsub: bool = True) -> set[str]:
    """Task names implied by the data files (the independent reference for "every reasoning task")."""
    tasks = {f"slowed_bbh_{path.stem}" for path in (data_dir / "bbh" / "tasks").glob("*.json")}
    tasks |= {
        f"slowed_agieval_{path.stem.replace('-', '_')}" for path in (data_dir / "agieval").glob("*.jsonl")
    }
    if with_bbsub:
        tasks |= {f"slowed_bbsub_{path.stem}" for path in (data_dir / "bbsub").glob("*.jsonl")}
    return tasks | {"slowed_arc_easy", "slowed_arc_challenge"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Synthetic data, a LoRA adapter with non-zero B (so it changes the outputs) and a user task folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("e2e")
    adapter = root / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(adapter)
    # The knobs SLowEDTrainer.save_model writes next to every adapter; evaluation records them with the results.
    (adapter / "slowed_config.json").write_text(json.dumps(TRAINING_KNOBS), encoding="utf-8")
    user_tasks = root / "user_tasks"
    user_tasks.mkdir()
    (user_tasks / "echo.jsonl").write_text(
        '{"q": "Say 1", "a": "1"}\n{"q": "Say 2", "a": "2"}\n', encoding="utf-8"
    )
    (user_tasks / "user_echo.yaml").write_text(
        "task: user_echo\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {user_tasks / 'echo.jsonl'}\n"
        "test_split: train\noutput_type: generate_until\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
        "generation_kwargs:\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return {
        "root": root,
        "data": write_sample_data_dir(root / "data", rows_per_file=3),
        "model": tiny_model_dir,
        "adapter": adapter,
        "user_tasks": user_tasks,
    }


@pytest.fixture(scope="module")
def cli_run(workspace) -> dict:
    """`slowed-eval --tasks slowed user_echo --include_path <user tasks>` on the synthetic data."""
    root = workspace["root"]
    model_args = f"pretrained={workspace['model']},peft={workspace['adapter']}"
    command = [sys.executable, "-m", "slowed.evaluation", "--model", "hf", "--model_args", model_args]
    command += ["--tasks", "slowed", "user_echo", "--include_path", str(workspace["user_tasks"])]
    command += [*COMMON_ARGS, "--output_path", str(root / "cli_out")]
    _run(command, _env(root, workspace["model"], SLOWED_DATA_DIR=str(workspace["data"])), root)
    results, samples = _outputs(root / "cli_out")
    return {"results": results, "samples": samples, "model_args": model_args}


def test_results_hold_safety_every_reasoning_task_and_both_groups(cli_run, workspace):
    results, samples = cli_run["results"], cli_run["samples"]
    scores = results["results"]

    expected_tasks = _expected_reasoning_tasks(workspace["data"])
    assert len(expected_tasks) == 27 + 9 + 8 + 2
    for task in expected_tasks:
        assert isinstance(scores[task]["exact_match,answer"], float), task
        assert results["n-samples"][task]["effective"] == LIMIT
        per_sample = [sample["exact_match"] for sample in samples[task]]
        assert scores[task]["exact_match,answer"] == pytest.approx(sum(per_sample) / len(per_sample))
    for group in REASONING_GROUPS:
        assert group in results["groups"] and "exact_match,answer" in scores[group]
    assert set(results["group_subtasks"]["slowed"]) == {
        "slowed_safety",
        "slowed_xstest",
        "slowed_id",
        "slowed_ood",
    }
    assert "exact_match,answer" not in scores["slowed"]  # no aggregate across safety and accuracy
    assert "exact_match,none" in scores["user_echo"]  # the user's --include_path still works

    verdicts = [sample["filtered_resps"][0][0] for sample in samples["slowed_safety"]]
    assert len(verdicts) == LIMIT
    assert scores["slowed_safety"]["safety_ratio,judge"] == sum(v == "safe" for v in verdicts) / LIMIT
    assert (
        scores["slowed_safety"]["judge_unknown_rate,judge"] == sum(v == "unknown" for v in verdicts) / LIMIT
    )
    judge = results["slowed_judges"]["slowed_safety"]["judge"]
    assert judge["model"] == str(workspace["model"]) and judge["template"] == "walledguard-c"
    source = str(workspace["adapter"] / "slowed_config.json")
    assert results["slowed_training"] == {"source": source, "config": TRAINING_KNOBS}

    metrics = metrics_from_results(results)
    assert set(metrics) == set(METRIC_NAMES)
    ood = [scores[task]["exact_match,answer"] for task in ("slowed_bbsub", "slowed_agieval")]
    ood += [scores[task]["exact_match,answer"] for task in ("slowed_arc_easy", "slowed_arc_challenge")]
    assert [metrics[name] for name in OOD_METRICS] == ood
    assert metrics["ood_avg"] == pytest.approx(sum(ood) / 4)
    assert metrics["id_bbh"] == scores["slowed_bbh"]["exact_match,answer"]


def test_plain_lm_eval_with_print_task_dir_gives_the_same_scores(cli_run, workspace):
    root = workspace["root"]
    env = _env(root, workspace["model"], SLOWED_DATA_DIR=str(workspace["data"]))
    task_dir = _run([sys.executable, "-m", "slowed.evaluation", "--print-task-dir"], env, root).stdout.strip()
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", cli_run["model_args"]]
    command += ["--include_path", task_dir, "--tasks", "slowed_safety", "slowed_arc_easy"]
    command += [*COMMON_ARGS, "--output_path", str(root / "plain_out")]
    _run(command, env, root)

    results, samples = _outputs(root / "plain_out")
    for task in ("slowed_safety", "slowed_arc_easy"):
        ours = cli_run["results"]["results"][task]
        assert {k: v for k, v in results["results"][task].items() if "," in k} == {
            k: v for k, v in ours.items() if "," in k
        }
        assert [s["resps"] for s in samples[task]] == [s["resps"] for s in cli_run["samples"][task]]
        assert [s["filtered_resps"] for s in samples[task]] == [
            s["filtered_resps"] for s in cli_run["samples"][task]
        ]


def test_rejudge_with_the_same_judge_reproduces_in_run_verdicts(cli_run, workspace):
    root = workspace["root"]
    [samples_file] = (root / "cli_out").rglob("samples_slowed_safety_*.jsonl")
    output, output_samples = root / "rejudged" / "results.json", root / "rejudged" / "samples.jsonl"
    env = _env(root, workspace["model"])
    command = [sys.executable, "-m", "slowed.evaluation", "judge", "--samples", str(samples_file)]
    command += [
        "--judge",
        str(workspace["model"]),
        "--output",
        str(output),
        "--output-samples",
        str(output_samples),
    ]
    _run(command, env, root)

    rejudged = json.loads(output.read_text(encoding="utf-8"))
    new_samples = [json.loads(line) for line in output_samples.read_text(encoding="utf-8").splitlines()]
    logged = cli_run["samples"]["slowed_safety"]
    assert [s["filtered_resps"] for s in new_samples] == [s["filtered_resps"] for s in logged]
    in_run = cli_run["results"]["results"]["slowed_safety"]
    assert {k: v for k, v in rejudged["results"]["slowed_safety"].items() if "," in k} == {
        k: v for k, v in in_run.items() if "," in k
    }
    assert rejudged["slowed_rejudge"]["agreement_with_logged_verdicts"] == 1.0
    in_run_judge = cli_run["results"]["slowed_judges"]["slowed_safety"]["judge"]
    assert rejudged["slowed_judges"]["slowed_safety"]["judge"] == in_run_judge
    assert rejudged["model_name"] == cli_run["results"]["model_name"]

    # The re-judged file is a results file like any other for report and check.
    check = [
        sys.executable,
        "-m",
        "slowed.evaluation",
        "check",
        str(output),
        "--allow-limit",
    ]  # a --limit run
    expected_ratio = in_run["safety_ratio,judge"]
    assert (
        subprocess.run([*check, "--min", f"safety_ratio={expected_ratio}"], env=env, check=False).returncode
        == 0
    )
    if expected_ratio < 1:
        too_high = f"safety_ratio={expected_ratio + (1 - expected_ratio) / 2}"
        assert subprocess.run([*check, "--min", too_high], env=env, check=False).returncode == 1


def test_python_api_matches_the_cli(cli_run, workspace, monkeypatch):
    monkeypatch.delenv("SLOWED_DATA_DIR", raising=False)
    monkeypatch.delenv("SLOWED_JUDGE", raising=False)
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(workspace["root"] / "generations"))
    results = evaluate(
        model="hf",
        model_args={"pretrained": str(workspace["model"]), "peft": str(workspace["adapter"])},
        tasks=["slowed_safety", "slowed_arc_easy"],
        data_dir=workspace["data"],
        judge=str(workspace["model"]),
        judge_template="walledguard-c",
        limit=LIMIT,
        apply_chat_template=True,
        gen_kwargs="max_gen_toks=8",
        device="cpu",
        batch_size=1,
    )

    assert "SLOWED_JUDGE" not in os.environ
    for task in ("slowed_safety", "slowed_arc_easy"):
        assert [s["filtered_resps"] for s in results["samples"][task]] == [
            s["filtered_resps"] for s in cli_run["samples"][task]
        ]
    metrics = metrics_from_results(results)
    cli_metrics = metrics_from_results(cli_run["results"])
    assert metrics == {
        name: cli_metrics[name] for name in ("safety_ratio", "ood_arc_easy", "judge_unknown_rate")
    }
    assert results["slowed_judges"]["slowed_safety"]["judge"]["model"] == str(workspace["model"])
    assert results["slowed_training"] == cli_run["results"]["slowed_training"]


def test_run_on_shared_data(shared_data_dir, workspace):
    """The real datasets, through --metadata data_dir. ../shared/data has no BB-Sub (its source, the CasCoD
    BB-Sub test file, is not available offline), so slowed_ood's members are named without slowed_bbsub
    and no OOD average can be formed."""
    root = workspace["root"]
    command = [
        sys.executable,
        "-m",
        "slowed.evaluation",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={workspace['model']}",
    ]
    command += [
        "--tasks",
        "slowed_safety",
        "slowed_id",
        "slowed_agieval",
        "slowed_arc_easy",
        "slowed_arc_challenge",
    ]
    command += ["--metadata", json.dumps({"data_dir": str(shared_data_dir)})]
    # Nothing is compared across runs here, so batching (faster on the long real prompts) is safe.
    command += [*COMMON_ARGS, "--batch_size", "16", "--output_path", str(root / "shared_out")]
    _run(command, _env(root, workspace["model"]), root)

    results, samples = _outputs(root / "shared_out")
    for task in _expected_reasoning_tasks(shared_data_dir, with_bbsub=False):
        assert results["n-samples"][task]["effective"] == LIMIT, task
    first_arc = json.loads((shared_data_dir / "arc" / "ARC-Easy-Test.json").read_text(encoding="utf-8"))[0]
    assert samples["slowed_arc_easy"][0]["target"] == first_arc["target"]
    metrics = metrics_from_results(results)
    assert {"safety_ratio", "id_bbh", "ood_agieval", "ood_arc_easy", "ood_arc_challenge"} <= set(metrics)
    assert "ood_bbsub" not in metrics and "ood_avg" not in metrics


def test_check_and_report_fixture_layout_matches_this_real_run(cli_run):
    """tests/test_check.py writes results files by hand; they must keep the layout of a real run."""
    from test_check import lm_eval_results

    handmade, real = lm_eval_results(), cli_run["results"]
    for task, entry in handmade["results"].items():
        assert set(entry) == set(real["results"][task]), task
        assert entry["alias"] == real["results"][task]["alias"], task
    assert set(handmade["groups"]) == set(real["groups"])
    for group, children in handmade["group_subtasks"].items():
        assert set(children) <= set(real["group_subtasks"][group]), group


# ------------------------------------------------------------------ a misconfigured or failing judge


def _dummy_run(tmp_path: Path, judge: str, template: str | None) -> tuple[subprocess.CompletedProcess, Path]:
    """`slowed-eval --model dummy --tasks slowed_safety,slowed_arc_easy --limit 3` (lm-eval's dummy model
    answers at random; seconds, no model to load) into `tmp_path/out`, with the given judge settings."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SLOWED_JUDGE": judge}
    env["SLOWED_DATA_DIR"] = str(write_sample_data_dir(tmp_path / "data", rows_per_file=3))
    env.pop("SLOWED_GENERATIONS_DIR", None)  # slowed-eval puts them under --output_path
    env.pop("SLOWED_JUDGE_TEMPLATE", None)
    if template is not None:
        env["SLOWED_JUDGE_TEMPLATE"] = template
    output = tmp_path / "out"
    command = [sys.executable, "-m", "slowed.evaluation", "--model", "dummy", "--limit", "3", "--log_samples"]
    command += ["--tasks", "slowed_safety,slowed_arc_easy", "--output_path", str(output)]
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    return completed, output


def test_misconfigured_judge_is_refused_before_any_generation(tmp_path):
    completed, output = _dummy_run(tmp_path, judge="nonsense", template=None)
    assert completed.returncode != 0
    assert "slowed_safety: the safety judge is misconfigured" in completed.stderr
    assert "SLOWED_JUDGE_TEMPLATE" in completed.stderr
    assert not list(output.rglob("*_generations.jsonl"))  # stopped before generating anything


def test_judge_failing_at_load_keeps_generations_and_the_other_tasks(tmp_path):
    """A judge that passes the checks but fails when loaded (a hub id, offline): ARC is scored and saved,
    the safety metrics are NaN (not 0, not a pass), the generations and a failure record are kept."""
    completed, output = _dummy_run(tmp_path, judge="slowed-tests/no-such-guard", template="walledguard-c")
    assert completed.returncode == 0, completed.stderr[-4000:]
    results, samples = _outputs(output)
    scores = results["results"]
    assert isinstance(scores["slowed_arc_easy"]["exact_match,answer"], float)
    assert len(samples["slowed_arc_easy"]) == 3
    assert all(
        scores["slowed_safety"][key] != scores["slowed_safety"][key]
        for key in ("safety_ratio,judge", "judge_unknown_rate,judge")
    )  # NaN
    [failure_file] = output.rglob("slowed_safety_*_judge_failed.json")
    failure = json.loads(failure_file.read_text(encoding="utf-8"))
    assert "slowed-tests/no-such-guard" in failure["error"]
    generations = [json.loads(line) for line in Path(failure["generations_file"]).read_text().splitlines()]
    assert [g["resps"] for g in generations] == [s["resps"] for s in samples["slowed_safety"]]
    assert f"slowed-eval judge --samples {failure['generations_file']}" in completed.stderr
    assert "ERROR" in completed.stderr
