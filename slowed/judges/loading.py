"""`load_judge` / `load_refusal_judge`: build a judge from a spec string or from the SLOWED_*JUDGE* environment
variables."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slowed.judges.base import Judge
from slowed.judges.guard import GUARD_PRESETS, GuardModelJudge, read_template_spec
from slowed.judges.keywords import RefusalKeywordJudge, RefusalPrefixJudge
from slowed.judges.refusal import RefusalDetector, RefusalJudge

DEFAULT_JUDGE = "walledguard-c"
JUDGE_ENV = "SLOWED_JUDGE"
TEMPLATE_ENV = "SLOWED_JUDGE_TEMPLATE"
REFUSAL_JUDGE_ENV = "SLOWED_REFUSAL_JUDGE"
DEFAULT_REFUSAL_JUDGE = "refusal"
# Guard options read from the environment (lm-eval filters cannot see --metadata).
GUARD_OPTION_ENVS: dict[str, tuple[str, type]] = {
    "batch_size": ("SLOWED_JUDGE_BATCH_SIZE", int),
    "max_new_tokens": ("SLOWED_JUDGE_MAX_NEW_TOKENS", int),
    "device": ("SLOWED_JUDGE_DEVICE", str),
    "dtype": ("SLOWED_JUDGE_DTYPE", str),
    "revision": ("SLOWED_JUDGE_REVISION", str),
}
WALLEDEVAL_PREFIX = "walledeval:"


def guard_options_from_env() -> dict[str, Any]:
    """Guard constructor options set through SLOWED_JUDGE_BATCH_SIZE/_MAX_NEW_TOKENS/_DEVICE/_DTYPE/_REVISION."""
    options: dict[str, Any] = {}
    for option, (variable, cast) in GUARD_OPTION_ENVS.items():
        value = os.environ.get(variable, "").strip()
        if not value:
            continue
        try:
            options[option] = cast(value)
        except ValueError as error:
            raise ValueError(
                f"{variable}={value!r} is not a valid {cast.__name__} for the judge's {option}"
            ) from error
    return options


def load_judge(spec: str | None = None, **guard_options: Any) -> Judge:
    """Build the judge named by `spec` (default: $SLOWED_JUDGE, else "walledguard-c").

    Spec forms:
    - a refusal judge (`slowed.judges.loading.load_refusal_judge`): "refusal" (`RefusalJudge`), "gcg-keywords"
      (alias "keywords": the GCG list anywhere, `RefusalKeywordJudge`) or "gcg-prefix" (the GCG list at the start).
    - a preset ("walledguard-c", "llama-guard-3-1b", "llama-guard-3-8b"): `GuardModelJudge.from_preset`.
    - "walledeval:<ClassName>": `WalledEvalJudge(walledeval.judge.<ClassName>())`, the class built with its
      own defaults (e.g. WalledGuardJudge; classes that need arguments must be built in Python and wrapped).
    - anything else: a guard model (local directory or hub id) read with the template in
      $SLOWED_JUDGE_TEMPLATE (a preset name, "chat", or a file with {prompt}/{response}).
    Guard options (batch_size, max_new_tokens, device, dtype, revision) come from `guard_options`, else
    from the SLOWED_JUDGE_* variables in `GUARD_OPTION_ENVS`.
    """
    return judge_factory(spec, **guard_options)()


def check_judge_spec(spec: str | None = None, **guard_options: Any) -> None:
    """Validate what `load_judge(spec)` would build without loading any model or downloading anything.

    Checks the spec form, $SLOWED_JUDGE_TEMPLATE, the guard options, that a local guard path exists and
    that a hub id is syntactically valid (its existence on the hub is not checked: that needs the network).
    Raises ValueError naming the variable and the fix.
    """
    judge_factory(spec, **guard_options)


def judge_factory(spec: str | None = None, **guard_options: Any) -> Callable[[], Judge]:
    """A zero-argument builder of the judge `load_judge(spec)` returns; everything that can be checked
    without loading a model (spec, template, guard path, options) is checked here, before it is returned."""
    spec, origin = _resolve_spec(spec)
    if spec in refusal_judge_names():
        return lambda: load_refusal_judge(spec)
    if spec.startswith(WALLEDEVAL_PREFIX):
        judge_class = _walledeval_class(spec[len(WALLEDEVAL_PREFIX) :])
        return lambda: _build_walledeval_judge(judge_class)
    options = {**guard_options_from_env(), **guard_options}
    if spec in GUARD_PRESETS:
        return lambda: GuardModelJudge.from_preset(spec, **options)
    template_spec = os.environ.get(TEMPLATE_ENV, "").strip()
    if not template_spec:
        where = "a local directory" if Path(spec).expanduser().exists() else "a guard model id or path"
        raise ValueError(
            f"judge spec {spec!r} ({origin}) is not 'keywords', a preset ({', '.join(sorted(GUARD_PRESETS))}) or "
            f"'walledeval:<ClassName>', so it is read as {where}, which needs {TEMPLATE_ENV}: set it to a "
            f"preset name, 'chat' (the guard's chat template), or a file whose template has {{response}}"
        )
    _check_guard_location(spec, origin)
    template, template_name = read_template_spec(template_spec)
    return lambda: GuardModelJudge(spec, template, template_name=template_name, **options)


def _resolve_spec(spec: str | None) -> tuple[str, str]:
    """(spec, where it came from): the argument, else $SLOWED_JUDGE, else the default."""
    if spec is not None and spec.strip():
        return spec.strip(), "given explicitly"
    from_env = os.environ.get(JUDGE_ENV, "").strip()
    if from_env:
        return from_env, f"set by {JUDGE_ENV}"
    return DEFAULT_JUDGE, "the default"


def looks_like_path(spec: str) -> bool:
    """True for a spec that can only be a local path: starts with '.', '/' or '~', has a backslash, or has
    more than one '/' (a hub id is 'name' or 'namespace/name')."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def _check_guard_location(spec: str, origin: str) -> None:
    """A guard given as a path must be an existing directory; otherwise the spec must be a valid hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"guard model {spec!r} ({origin}) is a file; point {JUDGE_ENV} at the guard's model directory "
                "(the folder with config.json) or a hub id"
            )
        return
    if looks_like_path(spec):
        raise ValueError(
            f"guard model path {path} ({origin}) does not exist; point {JUDGE_ENV} at an existing model "
            "directory or a hub id such as walledai/walledguard-c"
        )
    try:
        validate_repo_id(spec)
    except HFValidationError as error:
        raise ValueError(
            f"guard model {spec!r} ({origin}) is neither an existing directory nor a valid hub model id "
            f"({error}); set {JUDGE_ENV} to a model directory, a hub id, or one of 'keywords', "
            f"{', '.join(sorted(GUARD_PRESETS))}"
        ) from error


def _walledeval_class(class_name: str) -> type:
    """The class `walledeval.judge.<class_name>`, checked to exist (the optional package is imported)."""
    try:
        import walledeval.judge as walledeval_judges
    except ImportError as error:
        raise ImportError(
            f"judge spec 'walledeval:{class_name}' needs the optional walledeval package: "
            f'pip install "slowed[walledeval]" && pip install --no-deps walledeval==0.2.1 ({error})'
        ) from error
    judge_class = getattr(walledeval_judges, class_name, None)
    if not isinstance(judge_class, type):
        raise ValueError(
            f"walledeval.judge has no judge class {class_name!r}; choose one of {walledeval_judges.__all__}"
        )
    return judge_class


def _build_walledeval_judge(judge_class: type) -> Judge:
    from slowed.judges.walledeval_adapter import WalledEvalJudge

    try:
        return WalledEvalJudge(judge_class())
    except TypeError as error:
        raise ValueError(
            f"walledeval.judge.{judge_class.__name__} cannot be built without arguments ({error}); build it in "
            f"Python and wrap it: slowed.judges.WalledEvalJudge(walledeval.judge.{judge_class.__name__}(...))"
        ) from error


def refusal_judge_names() -> tuple[str, ...]:
    """Spec names `load_refusal_judge` accepts."""
    return ("refusal", "gcg-keywords", "keywords", "gcg-prefix")


def load_refusal_judge(spec: str | None = None) -> RefusalDetector:
    """Build a refusal judge: `spec`, else $SLOWED_REFUSAL_JUDGE, else "refusal".

    "refusal": `RefusalJudge`; "gcg-keywords" (alias "keywords"): the GCG list matched anywhere,
    case-sensitive (`RefusalKeywordJudge`); "gcg-prefix": the GCG list matched at the start of the response
    (`RefusalPrefixJudge`, a baseline).
    """
    spec = (
        spec if spec is not None else os.environ.get(REFUSAL_JUDGE_ENV, "")
    ).strip() or DEFAULT_REFUSAL_JUDGE
    if spec == "refusal":
        return RefusalJudge()
    if spec in ("gcg-keywords", "keywords"):
        return RefusalKeywordJudge()
    if spec == "gcg-prefix":
        return RefusalPrefixJudge()
    raise ValueError(
        f"refusal judge {spec!r} is not one of {', '.join(refusal_judge_names())}; set {REFUSAL_JUDGE_ENV} "
        "(or the task YAML's `judge:`) to one of them. Guard models judge harm, not refusal, so they are not "
        "accepted here."
    )
