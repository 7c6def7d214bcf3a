"""`slowed-eval check` / `report` never pass or show a result that should not count.

Results files are written by tests/test_check.py's `write_results` in lm-eval 0.4.13's layout (checked
against a real run in tests/test_eval_end_to_end.py), then edited the way each failure mode reaches them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_check import write_results
from test_report import read_csv

from slowed.evaluation.cli import main


def _edit(path: Path, change) -> Path:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")  # NaN written as lm-eval writes it
    return path


# ------------------------------------------------------------------ point 1: --limit runs


def _limited(tmp_path: Path) -> Path:
    """The reviewer's run: config.limit 12, 12 of AdvBench's 520 prompts scored."""
    return write_results(tmp_path / "out", rows_per_task=12, limit=12, rows_in_data=520)


def test_limited_run_is_refused_by_check_unless_allowed(tmp_path, capsys):
    results = _limited(tmp_path)
    junit = tmp_path / "check.xml"

    assert main(["check", str(results), "--min", "safety_ratio=0", "--junit", str(junit)]) == 2
    err = capsys.readouterr().err
    assert str(results) in err and "limit 12" in err and "--allow-limit" in err
    assert not junit.exists()

    assert main(["check", str(results), "--min", "safety_ratio=0", "--allow-limit"]) == 0
    # 10 leaf tasks (1 safety + 3 BBH + 2 BB-Sub + 2 AGIEval + 2 ARC) x 12 of 520 documents each (the hand-made file's tasks).
    assert "limit 12: 120/5200 docs" in capsys.readouterr().out


def test_limited_baseline_is_refused_too(tmp_path, capsys):
    baseline = _limited(tmp_path / "base")
    candidate = write_results(tmp_path / "new")
    argv = ["check", str(candidate), "--baseline", str(baseline), "--max-drop", "safety_ratio=0.1"]
    assert main(argv) == 2
    assert f"baseline {baseline} did not score all its data" in capsys.readouterr().err


def test_limit_at_or_above_every_tasks_size_is_a_full_run(tmp_path):
    results = write_results(tmp_path, rows_per_task=4, limit=1000)  # n-samples 4/4 everywhere
    assert main(["check", str(results), "--min", "safety_ratio=0.5"]) == 0


def test_limit_without_n_samples_is_not_a_full_run(tmp_path):
    results = _edit(write_results(tmp_path, limit=1000), lambda data: data.pop("n-samples"))
    assert main(["check", str(results), "--min", "safety_ratio=0.5"]) == 2


def test_report_marks_limited_runs(tmp_path):
    limited = _limited(tmp_path / "a")
    full = write_results(tmp_path / "b", model_name="runs/full")
    markdown, table = tmp_path / "t.md", tmp_path / "t.csv"

    assert main(["report", str(limited), str(full), "--markdown", str(markdown), "--csv", str(table)]) == 0

    header, _, first, second = markdown.read_text(encoding="utf-8").splitlines()
    assert header.endswith("| Safety source | Scored |")
    assert first.endswith("| limit 12: 120/5200 docs |")
    assert second.endswith("| all 40 docs |")
    rows = read_csv(table)
    assert [(row["complete"], row["scored"]) for row in rows] == [
        ("false", "limit 12: 120/5200 docs"),
        ("true", "all 40 docs"),
    ]


# ------------------------------------------------------------------ point 2: a failed guard, the judge


def _with_keyword_task(data: dict, safety_value) -> None:
    """The guard task's safety ratio replaced by `safety_value`; the keyword task scored 0.8 / 0.0."""
    data["results"]["slowed_safety"]["safety_ratio,judge"] = safety_value
    data["results"]["slowed_safety_keywords"] = {
        "name": "slowed_safety_keywords",
        "alias": "slowed_safety_keywords",
        "sample_len": 4,
        "safety_ratio,keywords": 0.8,
        "safety_ratio_stderr,keywords": 0.1,
        "judge_unknown_rate,keywords": 0.0,
        "judge_unknown_rate_stderr,keywords": 0.0,
    }
    data["n-samples"]["slowed_safety_keywords"] = {"original": 4, "effective": 4}


@pytest.mark.parametrize("value", [None, math.nan], ids=["null", "nan"])
def test_non_finite_guard_score_is_unusable_not_replaced_by_keywords(tmp_path, capsys, value):
    results = _edit(write_results(tmp_path), lambda data: _with_keyword_task(data, value))
    junit = tmp_path / "check.xml"

    argv = ["check", str(results), "--min", "safety_ratio=0.5", "--max", "judge_unknown_rate=0.05"]
    assert main([*argv, "--junit", str(junit)]) == 2

    err = capsys.readouterr().err
    assert "'safety_ratio' from task 'slowed_safety'" in err and "not finite" in err
    assert not junit.exists()
    # The unknown rate alone is still read from the guard task, not from the keyword task.
    assert main(["check", str(results), "--max", "judge_unknown_rate=0.05"]) == 0
    assert "slowed_safety (judge: walledai/walledguard-c)" in capsys.readouterr().out


def test_keyword_task_is_used_only_when_the_guard_task_is_absent(tmp_path, capsys):
    def keywords_only(data: dict) -> None:
        _with_keyword_task(data, 0.0)
        del data["results"]["slowed_safety"], data["n-samples"]["slowed_safety"]
        data["slowed_judges"] = {"slowed_safety_keywords": {"judge": {"kind": "refusal"}}}

    results = _edit(write_results(tmp_path), keywords_only)
    assert main(["check", str(results), "--min", "safety_ratio=0.5", "--max", "judge_unknown_rate=0.05"]) == 0
    out = capsys.readouterr().out
    assert out.count("slowed_safety_keywords (judge: refusal)") == 2


def test_report_shows_not_finite_and_the_safety_source(tmp_path):
    results = _edit(write_results(tmp_path), lambda data: _with_keyword_task(data, math.nan))
    table, markdown = tmp_path / "t.csv", tmp_path / "t.md"
    assert main(["report", str(results), "--csv", str(table), "--markdown", str(markdown)]) == 0
    [row] = read_csv(table)
    assert (
        row["safety_ratio"] == "nan"
        and row["safety_source"] == "slowed_safety (judge: walledai/walledguard-c)"
    )
    cells = markdown.read_text(encoding="utf-8").splitlines()[2].split(" | ")
    assert cells[1] == "not finite"


def test_safety_without_judge_record_says_so(tmp_path, capsys):
    results = write_results(tmp_path, guard=None)
    assert main(["report", str(results)]) == 0
    assert "slowed_safety (judge: not recorded)" in capsys.readouterr().out


# ------------------------------------------------------------------ point 3: outputs never overwrite inputs


def test_check_refuses_junit_on_its_input(tmp_path, capsys):
    results = write_results(tmp_path)
    baseline = write_results(tmp_path / "base")
    before = results.read_bytes(), baseline.read_bytes()
    assert main(["check", str(results), "--min", "safety_ratio=0.5", "--junit", str(results)]) == 2
    assert f"--junit {results} is the input file" in capsys.readouterr().err
    drop = ["--baseline", str(baseline), "--max-drop", "safety_ratio=0.1"]
    assert main(["check", str(results), *drop, "--junit", str(baseline)]) == 2
    assert (results.read_bytes(), baseline.read_bytes()) == before


@pytest.mark.parametrize("option", ["--csv", "--markdown", "--plot"])
def test_report_refuses_an_output_that_is_an_input(tmp_path, capsys, option):
    results = write_results(tmp_path)
    other = write_results(tmp_path / "other")
    before = results.read_bytes()
    # Through a relative path with '..' and through a hard link: the same file either way.
    relative = results.parent / ".." / results.parent.name / results.name
    link = tmp_path / "link.json"
    link.hardlink_to(results)
    for output in (results, relative, link):
        assert main(["report", str(other), str(results), option, str(output)]) == 2
        assert "is the input file" in capsys.readouterr().err
    assert results.read_bytes() == before


def test_report_refuses_two_outputs_on_one_path(tmp_path, capsys):
    results = write_results(tmp_path)
    same = tmp_path / "out.txt"
    assert main(["report", str(results), "--csv", str(same), "--markdown", str(same)]) == 2
    assert "name the same file" in capsys.readouterr().err
    assert not same.exists()


# ------------------------------------------------------------------ point 6: check and report edge cases


def test_out_of_range_metric_is_unusable(tmp_path, capsys):
    def percent(data: dict) -> None:
        data["results"]["slowed_arc_easy"]["exact_match,answer"] = 80.0

    results = _edit(write_results(tmp_path), percent)
    assert main(["check", str(results), "--min", "ood_arc_easy=0.5"]) == 2
    assert "'exact_match' = 80.0 is outside [0, 1]" in capsys.readouterr().err
    assert main(["report", str(results)]) == 2
    assert "8000.00" not in capsys.readouterr().out


def test_group_with_an_unscored_subtask_is_unusable(tmp_path, capsys):
    def drop_navigate(data: dict) -> None:
        del data["results"]["slowed_bbh_navigate"]

    results = _edit(write_results(tmp_path), drop_navigate)
    assert main(["check", str(results), "--min", "id_bbh=0.1"]) == 2
    err = capsys.readouterr().err
    assert "group 'slowed_bbh' lacks 'exact_match' for its subtasks slowed_bbh_navigate" in err
    assert main(["report", str(results)]) == 2


@pytest.mark.parametrize(
    "change",
    [
        lambda data: data["results"].update(slowed_safety=[0.5]),
        lambda data: data.update(group_subtasks=["slowed_bbh"]),
        lambda data: data["group_subtasks"].update(slowed_bbh=["slowed_bbh"]),
        lambda data: data.update(config="hf"),
        lambda data: data["results"]["slowed_safety"].update({"safety_ratio,judge": "0.75"}),
    ],
    ids=["entry-not-object", "subtasks-not-object", "group-cycle", "config-not-object", "string-value"],
)
def test_malformed_structure_exits_2_not_1(tmp_path, capsys, change):
    results = _edit(write_results(tmp_path), change)
    junit = tmp_path / "check.xml"
    assert (
        main(
            ["check", str(results), "--min", "safety_ratio=0.5", "--min", "id_bbh=0.1", "--junit", str(junit)]
        )
        == 2
    )
    assert str(results) in capsys.readouterr().err
    assert not junit.exists()
    assert main(["report", str(results)]) == 2


def test_duplicate_thresholds_are_refused(tmp_path, capsys):
    results = write_results(tmp_path)
    assert main(["check", str(results), "--min", "safety_ratio=0.5", "--min", "safety_ratio=0.6"]) == 2
    assert "--min safety_ratio is given more than once" in capsys.readouterr().err
    # Different kinds on one metric are two checks.
    assert main(["check", str(results), "--min", "safety_ratio=0.5", "--max", "safety_ratio=0.9"]) == 0
