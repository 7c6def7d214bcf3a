# Copyright 2026 the slowed authors. Apache-2.0.
# Modelled on TRL's trl/scripts/sft.py (Copyright 2020-2026 The HuggingFace Team, Apache-2.0).
"""
SLowED chain-of-thought distillation: TRL's SFT script with Low-Entropy Masking and Slow Tuning.

# The embedded default student on CPU (no download; a few minutes on 2 cores)
```bash
python recipes/slowed_sft.py --config recipes/smollm2-135m/slowed.yaml
```

# A paper recipe (GPU), with command-line overrides on top of the YAML
```bash
accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/slowed_sft.py \
    --config recipes/qwen2.5-1.5b/slowed.yaml \
    --entropy_mask_ratio 0.3 --output_dir outputs/qwen-k0.3
```

# From scratch, every option on the command line
```bash
python recipes/slowed_sft.py \
    --model_name_or_path embedded:smollm2-135m \
    --dataset_name ../shared/data/bbh_cot_teacher --dataset_columns teacher_bbh --only_correct \
    --use_peft --lora_r 64 --lora_alpha 128 --lora_target_modules all-linear \
    --entropy_mask_ratio 0.2 --slow_tuning_tau 8.0 \
    --num_train_epochs 10 --learning_rate 2e-4 --output_dir outputs/smollm2-bbh
```

Data: `--dataset_name` is a hub dataset id, a local .jsonl/.json/.csv file or folder (read by
`slowed.data.load_cot_corpus`; the column names come from `--dataset_columns` and the `--*_column`
overrides), or `builtin` (the generated corpus of `slowed.builtin_corpus`, sized by `--builtin_*`).
Rows become TRL prompt/completion conversations in the one chat format of `slowed.prompting`. With
`--test_fraction f > 0` every task is split by a seeded hash of its row index
(`slowed.data.split_by_task_index`); the held-out split is the eval set, and its indices are written
to `slowed_run.json` so evaluation can leave them out.

Outputs in `output_dir`: the adapter (or the full model without `--use_peft`) and tokenizer as
`SFTTrainer.save_model` writes them, `slowed_config.json` (the knobs, by `SLowEDTrainer`) and
`slowed_run.json`: every SLowED knob, the model, the data, the final metrics and the log history.
"""

import contextvars
import difflib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

SUMMARY_FILE = "slowed_run.json"
COLUMN_FIELDS = ("question", "rationale", "answer", "task", "index", "correct")
COMMAND_LINE = "the command line"
#: {option name: where it was set} for the parse in progress (`SLowEDParser`), read by the dataclasses'
#: checks so their errors name the YAML file or the command line.
OPTION_SOURCES: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "option_sources", default=None
)


@dataclass
class SLowEDScriptArguments:
    """Where the chain-of-thought corpus comes from and how it is split (the model is `ModelConfig`'s)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "The CoT corpus: 'builtin' (generated on the spot), a local .jsonl/.json/.csv file or folder, "
            "or a Hugging Face hub dataset id."
        },
    )
    dataset_train_split: str = field(
        default="train",
        metadata={"help": "Split to read from a hub dataset (ignored for files and 'builtin')."},
    )
    dataset_columns: str = field(
        default="default",
        metadata={
            "help": "Column preset: 'default' (question, rationale, answer, task, index) or 'teacher_bbh' (the "
            "BBH teacher files: input, teacher_cot, target, task_name, index, teacher_correct). The --*_column "
            "options override single columns."
        },
    )
    question_column: str | None = field(default=None, metadata={"help": "Column holding the question."})
    rationale_column: str | None = field(default=None, metadata={"help": "Column holding the rationale."})
    answer_column: str | None = field(default=None, metadata={"help": "Column holding the gold answer."})
    task_column: str | None = field(default=None, metadata={"help": "Column holding the task name."})
    index_column: str | None = field(
        default=None, metadata={"help": "Column holding the row index in its task."}
    )
    correct_column: str | None = field(
        default=None, metadata={"help": "Boolean column: is the rationale's own conclusion right?"}
    )
    only_correct: bool = field(
        default=False,
        metadata={
            "help": "Keep only rows whose correctness column is true (not used with 'builtin': always right)."
        },
    )
    test_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of each task held out as the eval split, in [0, 1). 0: train on everything."
        },
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the task-wise hash split."})
    builtin_num_per_task: int = field(
        default=64, metadata={"help": "'builtin' corpus: examples generated per task."}
    )
    builtin_seed: int = field(default=0, metadata={"help": "'builtin' corpus: generator seed."})
    builtin_tasks: list[str] | None = field(
        default=None, metadata={"help": "'builtin' corpus: task subset (default: all built-in tasks)."}
    )

    def __post_init__(self) -> None:
        if not self.dataset_name:
            raise ValueError(
                "SLowEDScriptArguments: `dataset_name` is required: pass --dataset_name builtin, a local corpus "
                "file/folder (e.g. ../shared/data/bbh_cot_teacher) or a hub dataset id"
            )
        if isinstance(self.test_fraction, bool) or not 0.0 <= float(self.test_fraction) < 1.0:
            raise ValueError(
                f"SLowEDScriptArguments: `test_fraction` must be in [0, 1) (0 disables the eval split); "
                f"got {self.test_fraction!r}"
            )
        self.test_fraction = float(self.test_fraction)
        ignored = self._ignored_options()
        if ignored:
            source = "the built-in corpus" if self.is_builtin else f"dataset_name={self.dataset_name!r}"
            sources = OPTION_SOURCES.get() or {}
            named = ", ".join(_where_set(name, sources.get(name)) for name in ignored)
            raise ValueError(
                f"SLowEDScriptArguments: {named} do not apply to {source} and would be ignored; "
                "the *_column / dataset_columns / only_correct options are for file and hub corpora, the "
                "builtin_* options for dataset_name builtin. Remove them where they are set."
            )

    def _ignored_options(self) -> list[str]:
        """Options set away from their defaults that the chosen source does not use."""
        if self.is_builtin:
            file_options = [f"{name}_column" for name in COLUMN_FIELDS] + ["dataset_columns", "only_correct"]
            return [name for name in file_options if getattr(self, name) != _DEFAULTS[name]]
        builtin_options = ("builtin_num_per_task", "builtin_seed", "builtin_tasks")
        return [name for name in builtin_options if getattr(self, name) != _DEFAULTS[name]]

    def column_mapping(self):
        """The preset named by `dataset_columns` with the `--*_column` overrides applied."""
        from slowed.data import resolve_columns

        overrides = {
            name: getattr(self, f"{name}_column")
            for name in COLUMN_FIELDS
            if getattr(self, f"{name}_column") is not None
        }
        return replace(resolve_columns(self.dataset_columns), **overrides)

    @property
    def is_builtin(self) -> bool:
        from slowed.data import BUILTIN_SOURCE

        return self.dataset_name == BUILTIN_SOURCE


_DEFAULTS = {f.name: f.default for f in fields(SLowEDScriptArguments)}


def load_splits(script_args: SLowEDScriptArguments):
    """The corpus as a DatasetDict of TRL prompt/completion conversations: `train`, and `test` if held out."""
    from datasets import DatasetDict

    from slowed.builtin_corpus import builtin_cot_corpus
    from slowed.data import load_cot_corpus, split_by_task_index, to_prompt_completion

    if script_args.is_builtin:
        corpus = builtin_cot_corpus(
            num_per_task=script_args.builtin_num_per_task,
            seed=script_args.builtin_seed,
            tasks=script_args.builtin_tasks,
        )
    else:
        corpus = load_cot_corpus(
            script_args.dataset_name,
            columns=script_args.column_mapping(),
            only_correct=script_args.only_correct,
            split=script_args.dataset_train_split,
        )
    if script_args.test_fraction > 0:
        splits = split_by_task_index(corpus, script_args.test_fraction, seed=script_args.split_seed)
    else:
        splits = DatasetDict(train=corpus)
    return DatasetDict({name: to_prompt_completion(split) for name, split in splits.items()})


def last_logged(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The value of `key` in the latest log entry holding it, or None."""
    return next((entry[key] for entry in reversed(log_history) if key in entry), None)


def final_delta_norm(trainer) -> tuple[float | None, str]:
    """The final ‖ΔW‖_F and where it came from: the last Slow Tuning check, else measured on the LoRA weights.

    The callback's own history is read rather than the log history: a check at the end of the last epoch
    can come after the last training log.
    """
    from slowed.slow_tuning import global_norm, lora_delta_norms

    if trainer.slow_tuning is not None and trainer.slow_tuning.history:
        step, result = trainer.slow_tuning.history[-1]
        return (
            result.norm_after,
            f"Slow Tuning check at step {step}; before projection {result.norm_before:.4f}",
        )
    try:
        model = trainer.accelerator.unwrap_model(trainer.model)
        return float(global_norm(lora_delta_norms(model))), "measured on the final LoRA weights"
    except ValueError as error:  # full fine-tuning without Slow Tuning, or a LoRA variant it cannot measure
        return None, f"not available: {error}"


def final_masked_fraction(trainer) -> tuple[float | None, str]:
    """The last logged `slowed/masked_fraction`, or the initial-source count, or 0 when LEM is off."""
    from slowed.trainer import MASKED_FRACTION_KEY

    logged = last_logged(trainer.state.log_history, MASKED_FRACTION_KEY)
    if logged is not None:
        return float(logged), MASKED_FRACTION_KEY
    record = trainer.slowed_record()
    if record.get("initial_eligible_tokens"):
        fraction = record["initial_masked_tokens"] / record["initial_eligible_tokens"]
        return fraction, "initial-student masks over the training set"
    if trainer.args.entropy_mask_ratio == 0:
        return 0.0, "Low-Entropy Masking off"
    return None, "not logged"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def run_record(
    script_args, training_args, model_args, requested_model, splits, trainer, train_metrics
) -> dict:
    """Everything needed to reproduce and read the run (written to `slowed_run.json`)."""
    masked_fraction, masked_source = final_masked_fraction(trainer)
    delta_norm, delta_source = final_delta_norm(trainer)
    peft_config = trainer.model.peft_config.get("default") if hasattr(trainer.model, "peft_config") else None
    held_out: dict[str, list[int]] = {}
    if "test" in splits:
        for task, index in zip(splits["test"]["task"], splits["test"]["index"], strict=True):
            held_out.setdefault(task, []).append(index)
    eval_logged = [entry for entry in trainer.state.log_history if any(k.startswith("eval_") for k in entry)]
    return {
        "slowed": trainer.slowed_record(),
        "model": {
            "requested": requested_model,
            "path": model_args.model_name_or_path,
            "model_args": asdict(model_args),
            "peft": peft_config.to_dict() if peft_config is not None else None,
        },
        "data": {
            "script_args": asdict(script_args),
            "columns": None if script_args.is_builtin else asdict(script_args.column_mapping()),
            "num_rows": {name: len(split) for name, split in splits.items()},
            "held_out_index_by_task": held_out,
        },
        "final": {
            "masked_fraction": masked_fraction,
            "masked_fraction_source": masked_source,
            "delta_norm": delta_norm,
            "delta_norm_source": delta_source,
            "train_metrics": train_metrics,
            "eval_metrics": eval_logged[-1] if eval_logged else None,
            "global_step": trainer.state.global_step,
        },
        "output_dir": str(Path(training_args.output_dir).resolve()),
        "training_args": json.loads(training_args.to_json_string()),
        "log_history": trainer.state.log_history,
    }


def main(script_args, training_args, model_args) -> dict[str, Any]:
    """Train with `SLowEDTrainer`, save the adapter/model to `output_dir`, write and return the run record."""
    from trl import get_peft_config, get_quantization_config

    from slowed.jsonio import write_atomic
    from slowed.models import resolve_model_path
    from slowed.trainer import SLowEDTrainer

    requested_model = model_args.model_name_or_path
    if not requested_model:
        raise ValueError(
            "`model_name_or_path` is required: a hub id, a local checkpoint folder or the embedded student "
            "`embedded:smollm2-135m`"
        )
    model_args.model_name_or_path = resolve_model_path(requested_model)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    splits = load_splits(script_args)
    use_eval = "test" in splits and training_args.eval_strategy != "no"
    trainer = SLowEDTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["test"] if use_eval else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)

    record = run_record(
        script_args, training_args, model_args, requested_model, splits, trainer, train_result.metrics
    )
    if trainer.accelerator.is_main_process:
        write_atomic(
            Path(training_args.output_dir) / SUMMARY_FILE,
            json.dumps(record, indent=2, default=_jsonable) + "\n",
        )

    final = record["final"]
    what = "adapter" if record["model"]["peft"] is not None else "model"
    masked = "n/a" if final["masked_fraction"] is None else f"{final['masked_fraction']:.4f}"
    norm = "n/a" if final["delta_norm"] is None else f"{final['delta_norm']:.4f}"
    tau = training_args.slow_tuning_tau
    trainer.accelerator.print(
        f"SLowED run finished: k={training_args.entropy_mask_ratio} τ={tau}\n"
        f"  {what} saved to {Path(training_args.output_dir).resolve()}\n"
        f"  final masked fraction: {masked} ({final['masked_fraction_source']})\n"
        f"  final ΔW norm: {norm} ({final['delta_norm_source']})\n"
        f"  run record: {Path(training_args.output_dir).resolve() / SUMMARY_FILE}"
    )
    trainer.end()
    return record


def make_parser():
    """`SLowEDParser` over (SLowEDScriptArguments, SLowEDConfig, ModelConfig); `--config x.yaml`, CLI overrides."""
    from trl import ModelConfig, TrlParser

    from slowed.config import SLowEDConfig

    class SLowEDParser(TrlParser):
        """TRL's parser with errors that name their source: a missing `--config` file, unknown options in
        the YAML file or on the command line (with a difflib "did you mean"), and, through
        `OPTION_SOURCES`, where an option the dataclasses refuse was set."""

        def parse_args_and_config(self, args: Iterable[str] | None = None, **kwargs: Any) -> tuple:
            args = list(args) if args is not None else sys.argv[1:]
            known = self._option_names()
            config_path = _config_path(args)
            yaml_keys = _read_yaml_keys(config_path) if config_path is not None else []
            _refuse_unknown(yaml_keys, known, f"in the YAML file {config_path}")
            _refuse_unknown(_command_line_options(args), known, "on the command line")
            sources = {key: f"the YAML file {config_path}" for key in yaml_keys}
            sources |= {name: COMMAND_LINE for name in _command_line_options(args)}
            token = OPTION_SOURCES.set(sources)
            try:
                return super().parse_args_and_config(args, **kwargs)
            finally:
                OPTION_SOURCES.reset(token)

        def _option_names(self) -> set[str]:
            names = {action.dest for action in self._actions}
            names |= {opt.lstrip("-") for action in self._actions for opt in action.option_strings}
            return names - {"help"}

    return SLowEDParser((SLowEDScriptArguments, SLowEDConfig, ModelConfig))


def _where_set(name: str, source: str | None) -> str:
    """ "--name (on the command line)", "name (in the YAML file x.yaml)" or "name" when the source is unknown."""
    if source == COMMAND_LINE:
        return f"--{name} (on the command line)"
    return f"{name} (in {source})" if source else name


def _config_path(args: Sequence[str]) -> Path | None:
    """The `--config` file named in `args` (checked to exist), or None."""
    if "--config" not in args:
        return None
    position = args.index("--config")
    if position + 1 >= len(args):
        raise ValueError("--config needs a YAML file: --config recipes/smollm2-135m/slowed.yaml")
    path = Path(args[position + 1])
    if not path.is_file():
        raise FileNotFoundError(
            f"--config {path}: no such file (looked in {path.resolve().parent}); the recipes are "
            "recipes/<model>/<variant>.yaml, e.g. --config recipes/smollm2-135m/slowed.yaml"
        )
    return path


def _read_yaml_keys(path: Path) -> list[str]:
    """The top-level keys of a recipe YAML (`env` excluded: TRL sets it as environment variables)."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(
            f"--config {path}: must be a YAML mapping of option: value, got {type(config).__name__}"
        )
    return [str(key) for key in config if key != "env"]


def _command_line_options(args: Sequence[str]) -> list[str]:
    """Option names given as `--name value` or `--name=value` (the `--config` pair excluded)."""
    names = [arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--") and len(arg) > 2]
    return [name for name in names if name != "config"]


def _refuse_unknown(names: Iterable[str], known: set[str], source: str) -> None:
    """ValueError naming every unknown option, where it was set (`source`: "on the command line", "in the
    YAML file x.yaml") and the closest known option."""
    unknown = [name for name in names if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(
        f"unknown option{'s' if len(unknown) > 1 else ''} {source}: {', '.join(hints)}. "
        "Every option is a field of SLowEDScriptArguments, SLowEDConfig (TRL's SFTConfig) or ModelConfig; "
        "see `python recipes/slowed_sft.py --help`."
    )


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
