"""What `slowed-eval` adds to a run's results file goes to that file only, from that run only.

Real lm-eval runs (lm-eval's `dummy` model: random answers, no model to load) through `slowed-eval`'s own
entry point, in this process, into one shared `--output_path`, on the synthetic data of tests/sample_data.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sample_data import write_sample_data_dir

from slowed.evaluation.cli import main

pytestmark = pytest.mark.slow


def _run(output: Path, model_args: str, tasks: str) -> Path:
    """One `slowed-eval --model dummy --limit 2` run into `output`; returns the results file it added."""
    before = set(output.rglob("results_*.json"))
    argv = ["--model", "dummy", "--model_args", model_args, "--limit", "2", "--tasks", tasks]
    assert main([*argv, "--output_path", str(output)]) == 0
    [new] = set(output.rglob("results_*.json")) - before
    return new


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    data = write_sample_data_dir(tmp_path / "data", rows_per_file=3)
    monkeypatch.setenv("SLOWED_DATA_DIR", str(data))
    monkeypatch.delenv("SLOWED_BBH_HELDOUT", raising=False)
    monkeypatch.delenv("SLOWED_JUDGE_TEMPLATE", raising=False)
    output = tmp_path / "out"
    monkeypatch.setenv("SLOWED_GENERATIONS_DIR", str(output / "slowed-generations"))
    return data


def test_two_runs_into_one_folder_keep_their_own_records(tmp_path, monkeypatch, offline):
    output = tmp_path / "out"
    adapter_a, adapter_b = tmp_path / "adapter-a", tmp_path / "adapter-b"
    adapter_a.mkdir()
    adapter_b.mkdir()
    knobs = {"slow_tuning_tau": 1.0, "source": "forged"}
    (adapter_a / "slowed_config.json").write_text(json.dumps(knobs), encoding="utf-8")
    (adapter_b / "slowed_config.json").write_text("[1, 2]", encoding="utf-8")  # not a knob record

    monkeypatch.setenv("SLOWED_JUDGE", "keywords")
    first = _run(output, f"peft={adapter_a}", "slowed_safety")
    first_bytes = first.read_bytes()
    # An unrelated file beside the runs, named like results: never read, never rewritten.
    summary = output / first.parent.name / "results_summary.json"
    summary.write_text('{"note": "mine"}', encoding="utf-8")
    # Second run: a judge that passes the set-up checks but fails to load (a hub id, offline).
    monkeypatch.setenv("SLOWED_JUDGE", "slowed-tests/no-such-guard")
    monkeypatch.setenv("SLOWED_JUDGE_TEMPLATE", "walledguard-c")
    second = _run(output, f"peft={adapter_b}", "slowed_safety,slowed_arc_easy")

    assert first.read_bytes() == first_bytes  # the second run did not touch the first run's file
    assert summary.read_text(encoding="utf-8") == '{"note": "mine"}'
    a, b = _read(first), _read(second)
    assert a["slowed_training"] == {"source": str(adapter_a / "slowed_config.json"), "config": knobs}
    assert a["slowed_judges"]["slowed_safety"]["judge"]["kind"] == "refusal_keywords"
    judge_file = Path(a["slowed_judges"]["slowed_safety"]["judge_file"])
    assert {k: v for k, v in a["slowed_judges"]["slowed_safety"].items() if k != "judge_file"} == _read(
        judge_file
    )

    assert "slowed_training" not in b  # a list is not a knob record: warned about, not recorded
    record = b["slowed_judges"]["slowed_safety"]
    assert record["status"] == "failed" and "slowed-tests/no-such-guard" in record["error"]
    assert "judge" not in record  # never the first run's keyword judge
    for data in (a, b):
        assert data["slowed_data"] == {
            "data_dir": str(offline.resolve()),
            "data_dir_from": "SLOWED_DATA_DIR",
            "bbh_heldout": None,
            "bbh_heldout_from": None,
        }


def test_metadata_data_dir_and_heldout_are_recorded(tmp_path, monkeypatch, offline):
    output = tmp_path / "out"
    heldout = tmp_path / "heldout.json"
    heldout.write_text(json.dumps({"boolean_expressions": [0]}), encoding="utf-8")
    monkeypatch.setenv("SLOWED_BBH_HELDOUT", str(heldout))
    metadata = json.dumps({"data_dir": str(offline)})
    monkeypatch.delenv("SLOWED_DATA_DIR")
    argv = ["--model", "dummy", "--limit", "1", "--tasks", "slowed_arc_easy", "--metadata", metadata]
    assert main([*argv, "--output_path", str(output)]) == 0
    [results] = output.rglob("results_*.json")
    assert _read(results)["slowed_data"] == {
        "data_dir": str(offline.resolve()),
        "data_dir_from": "metadata data_dir",
        "bbh_heldout": str(heldout.resolve()),
        "bbh_heldout_from": "SLOWED_BBH_HELDOUT",
    }
