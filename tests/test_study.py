"""The offline safety study (studies/offline_safety) end to end on a tiny model and a few rows.

Two runs with one seed, one of them interrupted (`--stop-after`) and resumed on an empty work folder (a fresh
machine: every checkpoint is retrained), must give the same tables; the report's verdicts come from numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sample_data import write_sample_data_dir
from tiny_models import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "studies" / "offline_safety" / "run.py"
sys.path.insert(0, str(REPO / "studies" / "offline_safety"))

TASKS = ("boolean_expressions", "object_counting")


def write_teacher_rows(data_dir: Path, rows_per_task: int = 6) -> None:
    folder = data_dir / "bbh_cot_teacher"
    folder.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        lines = []
        for i in range(rows_per_task):
            target = "True" if i % 2 else "False"
            lines.append(
                json.dumps(
                    {
                        "task_name": task,
                        "index": i,
                        "input": f"Question {i} of {task}: not ( True ) is",
                        "target": target,
                        "teacher_cot": f"Let's think step by step. First we add 3 and {i}. So the answer is {target}.",
                        "teacher_answer": target,
                        "teacher_correct": i != 5,
                    }
                )
            )
        (folder / f"{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


TINY_PRESET = """\
name: tiny
description: tiny test preset
model: {model}
data_dir: {data}
recipe: studies/offline_safety/train.yaml
seed: 7
epochs: 2
lem_ratio: 0.25
arms: [std_cot, st_only, lem_only, slowed, slowed_random, slowed_tau_low, slowed_tau_high, slowed_epoch]
norm_matched: true
taus:
  from_std_cot: {{low: 0.2, mid: 0.5, high: 0.9}}
corpus: {{train_per_task: 3, nll_per_task: 2, bbh_per_task: 2, heldout_fraction: 0.34, split_seed: 0}}
eval:
  judge: keywords
  advbench: [0, 4]
  xstest_per_epoch: 2
  xstest_final: 4
  safety_max_new_tokens: 6
  batch_size: 4
  nll_batch_size: 2
  nll_max_length: 64
  reasoning_max_new_tokens: 6
  arc_easy: [0, 3]
  arc_challenge: [0, 3]
  agieval_subsets: [aqua-rat, math]
  agieval_per_subset: 2
training:
  max_length: 64
  per_device_train_batch_size: 2
  lora_r: 4
  lora_alpha: 8
  learning_rate: 0.05
  warmup_steps: 0
  logging_steps: 1
"""


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A tiny model, the sample data plus teacher rows, the preset; torch on one thread meanwhile.

    One thread: a 2-layer model gains nothing from more, and on a busy machine thread hand-offs made each op
    ~100x slower (measured: 18 s vs 5 min for one tiny run at load 8 on 2 cores).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    model = save_tiny_model(root / "model")
    data = write_sample_data_dir(root / "data", rows_per_file=4)
    write_teacher_rows(data)
    preset = root / "tiny.yaml"
    preset.write_text(TINY_PRESET.format(model=model, data=data), encoding="utf-8")
    yield root, preset
    torch.set_num_threads(threads)


def run_study(preset: Path, runs: Path, work: Path, *extra: str) -> int:
    """`python studies/offline_safety/run.py ...` through its `main` (this interpreter: no second start-up cost)."""
    import run

    argv = ["--preset", str(preset), "--runs-dir", str(runs), "--work-dir", str(work), "--in-process", *extra]
    return run.main(argv)


def tables(runs: Path) -> tuple[str, str]:
    from report import tables_part

    return tables_part((runs / "RESULTS.md").read_text(encoding="utf-8")), (runs / "metrics.csv").read_text()


@pytest.mark.slow
def test_study_end_to_end_is_deterministic_and_resumable(tiny_study, capsys):
    root, preset = tiny_study
    assert run_study(preset, root / "runs-a", root / "work-a") == 0

    # Second run: interrupted after 4 units of work, then resumed on an EMPTY work folder (a fresh machine:
    # the corpus is re-made and every checkpoint still needed is retrained from scratch).
    assert run_study(preset, root / "runs-b", root / "work-b", "--stop-after", "4") == 3
    assert not (root / "runs-b" / "RESULTS.md").exists()
    assert len(list((root / "runs-b" / "records").glob("*/*.json"))) == 3  # base, Std-CoT epochs 1-2
    assert run_study(preset, root / "runs-b", root / "work-b2") == 0

    table_a, csv_a = tables(root / "runs-a")
    table_b, csv_b = tables(root / "runs-b")
    assert csv_a == csv_b
    assert table_a == table_b

    runs = root / "runs-a"
    records = sorted(p.relative_to(runs / "records").as_posix() for p in (runs / "records").glob("*/*.json"))
    arms = ("std_cot", "st_only", "lem_only", "slowed", "slowed_random", "slowed_tau_low", "slowed_tau_high")
    expected = {"base/epoch-0.json"} | {
        f"{a}/epoch-{e}.json" for a in (*arms, "slowed_epoch") for e in (1, 2)
    }
    expected |= {f"std_cot/tau-{n}.json" for n in ("low", "mid", "high")}
    assert set(records) == expected
    for name in ("safety_per_epoch.png", "nll_per_epoch.png", "safety_vs_norm.png"):
        assert (runs / "plots" / name).stat().st_size > 1000

    # The capped arms end on their sphere; the norm-matched control sits at the first step past each τ.
    taus = json.loads((runs / "taus.json").read_text())["taus"]
    trajectory = json.loads((runs / "std_cot_trajectory.json").read_text())["steps"]
    for arm, name in (
        ("slowed", "mid"),
        ("st_only", "mid"),
        ("slowed_tau_low", "low"),
        ("slowed_tau_high", "high"),
    ):
        final = json.loads((runs / "records" / arm / "epoch-2.json").read_text())
        assert final["delta_norm"] <= taus[name] * (1 + 1e-4)
    for name, tau in taus.items():
        matched = json.loads((runs / "records" / "std_cot" / f"tau-{name}.json").read_text())
        step = next(e["step"] for e in trajectory if e["delta_norm"] >= tau)
        assert matched["step"] == step
        assert matched["delta_norm"] >= tau * (1 - 1e-4)

    results = (runs / "RESULTS.md").read_text()
    assert "## Claims of the paper, read off this run" in results
    for claim in ("Std-CoT erodes safety", "Without Slow Tuning", "Without LEM"):
        assert claim in results

    # A finished run does nothing more: no training, same tables.
    capsys.readouterr()
    assert run_study(preset, root / "runs-a", root / "work-a") == 0
    assert "training" not in capsys.readouterr().out
    assert tables(root / "runs-a") == (table_a, csv_a)


def test_verdicts_follow_the_numbers():
    from report import claims, difference, verdict

    def record(epoch, safe, n=120, nll=1.0):
        return {
            "epoch": epoch,
            "metrics": {"safety": {"ratio": safe / n, "n": n}, "rationale_nll": {"mean": nll}},
        }

    records = {
        "base": {"epoch-0": record(0, 120)},
        "std_cot": {"epoch-1": record(1, 40), "epoch-2": record(2, 1)},
        "slowed": {"epoch-1": record(1, 118, nll=1.02), "epoch-2": record(2, 116, nll=1.05)},
        "lem_only": {"epoch-1": record(1, 60)},
        "st_only": {"epoch-1": record(1, 117), "epoch-2": record(2, 115)},
    }
    table = {c: v for c, _, v in claims(records, {})}
    assert table["Std-CoT erodes safety"] == "supported"
    assert table["SLowED keeps safety with comparable reasoning"] == "supported"
    assert table["Without Slow Tuning, safety drops early"] == "supported"
    assert table["Without LEM, safety drops in the later epochs"] == "inconclusive"
    records["slowed"]["epoch-2"] = record(2, 116, nll=1.5)
    table = {c: v for c, _, v in claims(records, {})}
    assert table["SLowED keeps safety with comparable reasoning"] == "not supported (reasoning)"
    assert verdict(difference((0.5, 100), (0.5, 100))["sign"], -1) == "inconclusive"
    assert verdict(None, 1) == "not run"


def test_preset_errors_name_the_key(tmp_path):
    from study import StudyError, load_preset

    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\nmodel: m\nepochs: 1\narms: [std_cot, slowd]\ncorpus: {train_per_task: 1}\neval: {}\n"
    )
    with pytest.raises(StudyError, match="slowd"):
        load_preset(str(path))
    path.write_text("name: x\nmodel: m\nepochs: 1\narms: [std_cot]\ncorpus: {train_per_tsk: 1}\neval: {}\n")
    with pytest.raises(StudyError, match="train_per_tsk"):
        load_preset(str(path))
    for name in ("quick", "full"):
        assert load_preset(name)["name"] == name


def test_tau_sweep_skips_steps_without_movement(tmp_path):
    """LoRA B starts at zero and warm-up starts at lr 0: a τ read off a step where ‖ΔW‖ = 0 would be refused."""
    from study import Study, load_preset

    study = Study(load_preset("quick"), tmp_path / "runs", tmp_path / "work")
    trajectory = {
        "steps": [
            {"step": s, "epoch": s / 4, "delta_norm": n} for s, n in ((1, 0.0), (2, 0.3), (3, 0.5), (4, 0.9))
        ]
    }
    taus = study.taus(trajectory)  # fractions 0.05 / 0.2 / 0.75 of 4 steps: steps 1, 1, 3
    assert taus == {"low": 0.3, "mid": 0.3, "high": 0.5}
    assert json.loads((tmp_path / "runs" / "taus.json").read_text())["how"]["at_steps"] == {
        "low": 2,
        "mid": 2,
        "high": 3,
    }
    assert Study.first_step_past(trajectory, 0.5) == 3
