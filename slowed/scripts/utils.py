"""The training script's arguments and parser, as TRL keeps them in ``trl/scripts/utils.py``.

`SLowEDScriptArguments`: where the chain-of-thought corpus comes from and how it is split (TRL's
``ScriptArguments`` for a CoT corpus). `SLowEDParser`: TRL's parser (``--config x.yaml``, command-line overrides)
with errors that name their source.
"""

from __future__ import annotations

import contextvars
import difflib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from trl import TrlParser

from slowed.data import BUILTIN_SOURCE, ColumnMapping, resolve_columns

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

    def column_mapping(self) -> ColumnMapping:
        """The preset named by `dataset_columns` with the `--*_column` overrides applied."""
        overrides = {
            name: getattr(self, f"{name}_column")
            for name in COLUMN_FIELDS
            if getattr(self, f"{name}_column") is not None
        }
        return replace(resolve_columns(self.dataset_columns), **overrides)

    @property
    def is_builtin(self) -> bool:
        """Whether the corpus is the generated one of `slowed.builtin_corpus`."""
        return self.dataset_name == BUILTIN_SOURCE


_DEFAULTS = {f.name: f.default for f in fields(SLowEDScriptArguments)}


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
    """Option names given as `--name value` or `--name=value` (`--config` and argparse's own `--help` excluded)."""
    names = [arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--") and len(arg) > 2]
    return [name for name in names if name not in ("config", "help")]


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
        "see `slowed-sft --help`."
    )
