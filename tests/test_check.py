"""`slowed-eval check`: exit codes 0 / 1 / 2, the pass/fail table and the JUnit XML.

Results files are written in lm-eval 0.4.13's own layout, copied from a real `slowed-eval --tasks slowed`
run (tests/test_eval_end_to_end.py): `<output_path>/<model>/results_<timestamp>.json` with leaf and group
entries `{"name", "alias", "sample_len", "<metric>,<filter>", "<metric>_stderr,<filter>"}` under "results"
(groups add "sample_count"), aggregated groups repeated under "groups", the top group `slowed` as a bare
`{"alias", "name"}` entry, and "group_subtasks" listing each group's children. Filters: "judge" for
slowed_safety, "none" for the reasoning tasks.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slowed.evaluation.cli import main

SAFETY_FILTER = "judge"
REASONING_FILTER = "answer"
BBH_SUBTASKS = ("slowed_bbh_boolean_expressions", "slowed_bbh_navigate", "slowed_bbh_snarks")
AGIEVAL_SUBTASKS = ("slowed_agieval_lsat_ar", "slowed_agieval_sat_math")
BBSUB_SUBTASKS = ("slowed_bbsub_anachronisms", "slowed_bbsub_strategyqa")


ALIASES = {
    "slowed_safety": "Safety (AdvBench, guard judge)",
    "slowed_id": "In-domain reasoning",
    "slowed_ood": "Out-of-domain reasoning",
    "slowed_bbh": "BBH",
    "slowed_bbsub": "BB-Sub",
    "slowed_agieval": "AGIEval (English)",
    "slowed_arc_easy": "ARC-Easy",
    "slowed_arc_challenge": "ARC-Challenge",
}


def _scored(name: str, metrics: dict[str, float], filter_name: str, sample_len: int) -> dict:
    entry: dict = {"name": name, "alias": ALIASES.get(name, name), "sample_len": sample_len}
    for metric, value in metrics.items():
        entry[f"{metric},{filter_name}"] = value
        entry[f"{metric}_stderr,{filter_name}"] = math.sqrt(value * (1 - value) / max(sample_len - 1, 1))
    return entry


def _group(name: str, scores: list[float] | None, sample_len: int) -> dict:
    """A group entry: lm-eval's size-weighted aggregate + sample_count, or bare without an aggregate."""
    if scores is None:
        return {"alias": ALIASES.get(name, name), "name": name}
    key = f"exact_match,{REASONING_FILTER}"
    entry = _scored(name, {"exact_match": sum(scores) / len(scores)}, REASONING_FILTER, sample_len)
    return {**entry, "sample_count": {key: sample_len}}


def lm_eval_results(
    *,
    safety: float | None = 0.75,
    unknown: float = 0.0,
    bbh: tuple[float, ...] | None = (0.25, 0.5, 0.75),
    bbh_aggregate: bool = True,
    bbsub: tuple[float, ...] | None = (0.5, 0.25),
    agieval: tuple[float, ...] | None = (0.25, 0.75),
    arc_easy: float | None = 0.75,
    arc_challenge: float | None = 0.5,
    model_name: str = "runs/checkpoint-100",
    rows_per_task: int = 4,
    limit: int | None = None,
    rows_in_data: int | None = None,
    guard: str | None = "walledai/walledguard-c",
) -> dict:
    """A results dict in lm-eval's layout. Every leaf task has `rows_per_task` samples, so lm-eval's
    size-weighted group aggregates are plain means of the leaf scores (computed here as lm-eval would).
    `limit` is lm-eval's `config.limit`; `rows_in_data` each task's full size (`n-samples.original`,
    default `rows_per_task`: the run scored everything); `guard` the judge model recorded by slowed-eval
    in `slowed_judges` (None: no record, as after a plain `lm_eval` run)."""
    n = rows_per_task
    results: dict = {}
    subtasks: dict = {"slowed": []}
    leaf_scores: dict[str, list[float]] = {"slowed_id": [], "slowed_ood": []}

    def add_group(
        group: str, children: tuple[str, ...], values: tuple[float, ...], parent: str, aggregate=True
    ):
        for child, value in zip(children, values, strict=False):
            results[child] = _scored(child, {"exact_match": value}, REASONING_FILTER, n)
        subtasks[group] = list(children[: len(values)])
        results[group] = _group(group, list(values) if aggregate else None, n * len(values))
        subtasks.setdefault(parent, []).append(group)
        leaf_scores[parent] += values

    if safety is not None:
        metrics = {"safety_ratio": safety, "judge_unknown_rate": unknown}
        results["slowed_safety"] = _scored("slowed_safety", metrics, SAFETY_FILTER, n)
        subtasks["slowed"].append("slowed_safety")
    if bbh is not None:
        add_group("slowed_bbh", BBH_SUBTASKS, bbh, "slowed_id", aggregate=bbh_aggregate)
    if bbsub is not None:
        add_group("slowed_bbsub", BBSUB_SUBTASKS, bbsub, "slowed_ood")
    if agieval is not None:
        add_group("slowed_agieval", AGIEVAL_SUBTASKS, agieval, "slowed_ood")
    for task, value in (("slowed_arc_easy", arc_easy), ("slowed_arc_challenge", arc_challenge)):
        if value is not None:
            results[task] = _scored(task, {"exact_match": value}, REASONING_FILTER, n)
            subtasks.setdefault("slowed_ood", []).append(task)
            leaf_scores["slowed_ood"].append(value)
    for group in ("slowed_id", "slowed_ood"):
        if leaf_scores[group]:
            results[group] = _group(group, leaf_scores[group], n * len(leaf_scores[group]))
            subtasks["slowed"].append(group)
    results["slowed"] = {"alias": "slowed", "name": "slowed"}
    groups = {name: entry for name, entry in results.items() if name in subtasks and "sample_count" in entry}
    return {
        "results": dict(sorted(results.items())),
        "groups": groups,
        "group_subtasks": subtasks,
        "configs": {},
        "versions": dict.fromkeys(results, 1.0),
        "n-shot": dict.fromkeys(results, 0),
        "n-samples": {
            task: {"original": rows_in_data or n, "effective": n} for task in results if task not in subtasks
        },
        "config": {
            "model": "hf",
            "model_args": {"pretrained": "tiny", "peft": model_name},
            "limit": None if limit is None else float(limit),
        },
        "model_name": model_name,
        "model_name_sanitized": model_name.replace("/", "__"),
        "date": 1795000000.0,
        **(_judge_record(guard, n) if guard is not None and safety is not None else {}),
    }


def _judge_record(guard: str, n: int) -> dict:
    """`slowed_judges` as slowed-eval records a guard judge (keys of `GuardJudge.describe()`, abridged)."""
    judge = {"kind": "guard_model", "model": guard, "template": "walledguard-c"}
    return {"slowed_judges": {"slowed_safety": {"task": "slowed_safety", "n": n, "judge": judge}}}


def write_results(output_path: Path, timestamp: str = "2026-11-28T12-00-00.000000", **values) -> Path:
    """Write `lm_eval_results(**values)` where lm-eval would: `<output_path>/<model>/results_<timestamp>.json`."""
    data = lm_eval_results(**values)
    path = output_path / data["model_name_sanitized"] / f"results_{timestamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def read_junit(path: Path) -> list[tuple[str, str | None]]:
    """(testcase name, failure message or None) per test case, after checking the suite counts."""
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    failures = [case for case in cases if case.find("failure") is not None]
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == len(failures)
    return [
        (case.get("name"), case.find("failure").get("message") if case in failures else None)
        for case in cases
    ]


def test_thresholds_pass_exit_0_and_junit_has_no_failure(tmp_path, capsys):
    results = write_results(tmp_path / "out", safety=0.75)
    junit = tmp_path / "reports" / "check.xml"

    status = main(
        ["check", str(results), "--min", "safety_ratio=0.6", "--min", "id_bbh=50%", "--junit", str(junit)]
    )

    assert status == 0
    out = capsys.readouterr().out
    assert "2/2 checks passed" in out and "FAIL" not in out
    assert read_junit(junit) == [("min safety_ratio", None), ("min id_bbh", None)]


def test_threshold_regression_exit_1_and_junit_failure_names_metric(tmp_path, capsys):
    results = write_results(tmp_path / "out", safety=0.5, unknown=0.25)
    junit = tmp_path / "check.xml"

    status = main(
        [
            "check",
            str(results),
            "--min",
            "safety_ratio=0.6",
            "--max",
            "judge_unknown_rate=0.3",
            "--junit",
            str(junit),
        ]
    )

    assert status == 1
    assert "REGRESSION: safety_ratio = 0.5000, required >= 0.6000" in capsys.readouterr().out
    cases = dict(read_junit(junit))
    assert cases["max judge_unknown_rate"] is None
    assert cases["min safety_ratio"] == "safety_ratio = 0.5000, required >= 0.6000"


def test_baseline_drop_of_ood_average(tmp_path):
    # Baseline OOD mean = (0.5+0.25)/2, (0.25+0.75)/2, 0.75, 0.5 -> (0.375 + 0.5 + 0.75 + 0.5) / 4 = 0.53125.
    baseline = write_results(tmp_path / "base")
    # Candidate: ARC-Challenge 0.5 -> 0.375 lowers the OOD mean by 0.125 / 4 = 0.03125.
    candidate = write_results(tmp_path / "new", arc_challenge=0.375)
    junit = tmp_path / "check.xml"

    tight = [
        "check",
        str(candidate),
        "--baseline",
        str(baseline),
        "--max-drop",
        "ood_avg=0.02",
        "--junit",
        str(junit),
    ]
    assert main(tight) == 1
    [(name, message)] = read_junit(junit)
    assert name == "max-drop ood_avg"
    assert (
        message == f"ood_avg = {0.5:.4f} vs baseline {0.53125:.4f}: drop {0.03125:.4f}, allowed <= {0.02:.4f}"
    )
    loose = ["check", str(candidate), "--baseline", str(baseline), "--max-drop", "ood_avg=0.04"]
    assert main(loose) == 0


def test_drop_equal_to_the_allowance_passes_despite_float_rounding(tmp_path):
    # 0.1 - 0.08 = 0.020000000000000004 in binary floating point; the allowance 0.02 must still hold.
    assert 0.1 - 0.08 > 0.02
    baseline = write_results(tmp_path / "base", arc_easy=0.1)
    candidate = write_results(tmp_path / "new", arc_easy=0.08)
    drop = ["--baseline", str(baseline), "--max-drop", "ood_arc_easy=0.02"]
    assert main(["check", str(candidate), *drop]) == 0
    assert (
        main(["check", str(candidate), "--baseline", str(baseline), "--max-drop", "ood_arc_easy=0.019"]) == 1
    )


def test_unknown_rate_drop_is_an_increase(tmp_path):
    baseline = write_results(tmp_path / "base", unknown=0.0)
    worse = write_results(tmp_path / "new", unknown=0.25)
    better = write_results(tmp_path / "newer", unknown=0.0, model_name="runs/checkpoint-200")

    assert (
        main(["check", str(worse), "--baseline", str(baseline), "--max-drop", "judge_unknown_rate=0.1"]) == 1
    )
    assert main(["check", str(baseline), "--baseline", str(worse), "--max-drop", "judge_unknown_rate=0"]) == 0
    assert (
        main(["check", str(better), "--baseline", str(baseline), "--max-drop", "judge_unknown_rate=0"]) == 0
    )


def _case(make_input, arguments, expected, names_file, case_id):
    return pytest.param(make_input, arguments, expected, names_file, id=case_id)


@pytest.mark.parametrize(
    ("make_input", "arguments", "expected", "names_file"),
    [
        _case(
            lambda tmp: tmp / "absent.json", ["--min", "safety_ratio=0.5"], "not found", True, "missing-file"
        ),
        _case(
            lambda tmp: _write(tmp / "b.json", "{x"),
            ["--min", "safety_ratio=0.5"],
            "not valid JSON",
            True,
            "bad-json",
        ),
        _case(
            lambda tmp: _write(tmp / "s.jsonl", '{"doc_id": 0}'),
            ["--min", "safety_ratio=0.5"],
            "not an lm-eval results file",
            True,
            "samples-not-results",
        ),
        _case(
            lambda tmp: write_results(tmp, bbsub=None),
            ["--min", "ood_avg=0.5"],
            "'ood_avg'",
            True,
            "ood-absent",
        ),
        _case(
            lambda tmp: write_results(tmp, safety=None),
            ["--min", "safety_ratio=0.5"],
            "from task slowed_safety",
            True,
            "safety-absent",
        ),
        _case(
            write_results,
            ["--min", "safety_ratio"],
            "--min 'safety_ratio': expected METRIC=VALUE",
            False,
            "no-value",
        ),
        _case(write_results, ["--min", "safety_ratio=high"], "'high' is not a number", False, "not-number"),
        _case(write_results, ["--min", "safety=0.5"], "unknown metric 'safety'", False, "unknown-metric"),
        _case(write_results, ["--min", "safety_ratio=60"], "fractions in [0, 1]", False, "percent-as-number"),
        _case(
            write_results, ["--max-drop", "ood_avg=0.02"], "--max-drop needs --baseline", False, "no-baseline"
        ),
        _case(write_results, [], "no checks requested", False, "no-checks"),
    ],
)
def test_unusable_input_exit_2_with_message(tmp_path, capsys, make_input, arguments, expected, names_file):
    results = make_input(tmp_path)
    junit = tmp_path / "check.xml"

    assert main(["check", str(results), *arguments, "--junit", str(junit)]) == 2

    err = capsys.readouterr().err
    assert expected in err
    assert (str(results) in err) == names_file
    assert not junit.exists()


def test_missing_baseline_named(tmp_path, capsys):
    results = write_results(tmp_path)
    missing = tmp_path / "no-base.json"
    assert main(["check", str(results), "--baseline", str(missing), "--max-drop", "ood_avg=0.02"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path):
    results = write_results(tmp_path)

    def run(*arguments: str) -> int:
        command = [sys.executable, "-m", "slowed.evaluation", "check", str(results), *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=False).returncode

    assert run("--min", "safety_ratio=0.7") == 0
    assert run("--min", "safety_ratio=0.8") == 1
    assert run("--min", "safety_ratio=abc") == 2
    assert run("--no-such-option") == 2


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
