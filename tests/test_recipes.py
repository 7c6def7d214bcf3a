"""Recipes: every YAML parses through the script's parser, variants differ as documented, and one end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from slowed.config import SLowEDConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
VARIANTS = ("slowed", "std_cot", "no_slow_tuning", "no_masking")
MODELS = ("qwen2.5-1.5b", "llama-3.2-1b", "bloom-1.1b", "smollm2-135m")
PAPER_MODELS = {
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
    "bloom-1.1b": "bigscience/bloomz-1b1",
    "smollm2-135m": "embedded:smollm2-135m",
}
# keys the dataclasses rewrite on construction (report_to "none" -> [], YAML-1.1 number strings -> float)
NORMALISED_KEYS = {"report_to", "slow_tuning_tau", "learning_rate", "lora_target_modules"}
# align.yaml builds the testbed student (slowed.testbed, tested in test_testbed.py), not a SLowED training run
TRAINING_YAMLS = sorted(
    p for p in RECIPES.glob("*/*.yaml") if p.parent.name != "accelerate" and p.name != "align.yaml"
)
ACCELERATE_YAMLS = sorted((RECIPES / "accelerate").glob("*.yaml"))


def _load_script():
    spec = importlib.util.spec_from_file_location("slowed_sft", RECIPES / "slowed_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slowed_sft = _load_script()


def parse(*args: str):
    return slowed_sft.make_parser().parse_args_and_config(list(args))


def parse_recipe(path: Path, *overrides: str):
    """Parse a recipe; GPU recipes (bf16) get `--use_cpu true` where there is no GPU, since transformers
    refuses bf16 without a bf16-capable GPU unless told to train on CPU."""
    extra = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    return parse("--config", str(path), *extra, *overrides)


def test_every_model_has_every_variant():
    found = {(p.parent.name, p.stem) for p in TRAINING_YAMLS}
    assert found == {(model, variant) for model in MODELS for variant in VARIANTS}


@pytest.mark.parametrize(
    "path",
    [p for p in TRAINING_YAMLS if p.parent.name != "accelerate"],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_recipe_parses_into_valid_dataclasses(path):
    raw = yaml.safe_load(path.read_text())
    script_args, training_args, model_args = parse_recipe(path)
    assert isinstance(training_args, SLowEDConfig)
    assert model_args.model_name_or_path == PAPER_MODELS[path.parent.name]
    assert script_args.dataset_name == raw["dataset_name"]
    assert model_args.use_peft is True
    assert training_args.output_dir == raw["output_dir"]
    # every key of the YAML landed in one of the dataclasses with the YAML's value (modulo parsing)
    for key, value in raw.items():
        holders = [obj for obj in (script_args, training_args, model_args) if hasattr(obj, key)]
        assert holders, f"{path}: key {key!r} is in no dataclass"
        if key not in NORMALISED_KEYS:
            assert getattr(holders[0], key) == value, key


@pytest.mark.parametrize("model", MODELS)
def test_variants_differ_exactly_in_k_and_tau(model):
    configs = {v: yaml.safe_load((RECIPES / model / f"{v}.yaml").read_text()) for v in VARIANTS}
    full = configs["slowed"]
    k, tau = float(full["entropy_mask_ratio"]), float(full["slow_tuning_tau"])
    assert 0 < k < 1 and tau > 0
    expected = {
        "slowed": (k, tau),
        "std_cot": (0.0, None),
        "no_slow_tuning": (k, None),
        "no_masking": (0.0, tau),
    }
    ignored = {"entropy_mask_ratio", "slow_tuning_tau", "output_dir"}
    for variant, config in configs.items():
        _, training_args, _ = parse_recipe(RECIPES / model / f"{variant}.yaml")
        assert (training_args.entropy_mask_ratio, training_args.slow_tuning_tau) == expected[variant], variant
        assert {key: val for key, val in config.items() if key not in ignored} == {
            key: val for key, val in full.items() if key not in ignored
        }, variant
        assert config["output_dir"].rstrip("/").endswith(f"{model}/{variant}")


def test_paper_recipes_use_the_paper_setup():
    for model in ("qwen2.5-1.5b", "llama-3.2-1b", "bloom-1.1b"):
        script_args, training_args, model_args = parse_recipe(RECIPES / model / "slowed.yaml")
        assert model_args.lora_r == 64
        assert training_args.num_train_epochs == 10
        assert script_args.dataset_name == "../shared/data/bbh_cot_teacher"
        assert script_args.column_mapping() == slowed_sft_teacher_columns()


def slowed_sft_teacher_columns():
    from slowed.data import TEACHER_BBH_COLUMNS

    return TEACHER_BBH_COLUMNS


def test_command_line_overrides_the_yaml():
    path = RECIPES / "smollm2-135m" / "slowed.yaml"
    _, yaml_args, _ = parse("--config", str(path))
    script_args, training_args, model_args = parse(
        "--config",
        str(path),
        "--entropy_mask_ratio",
        "0.35",
        "--slow_tuning_tau",
        "2.5",
        "--lora_r",
        "4",
        "--builtin_num_per_task",
        "3",
    )
    assert yaml_args.entropy_mask_ratio != 0.35
    assert training_args.entropy_mask_ratio == 0.35
    assert training_args.slow_tuning_tau == 2.5
    assert model_args.lora_r == 4
    assert script_args.builtin_num_per_task == 3
    assert training_args.learning_rate == yaml_args.learning_rate


def test_unknown_yaml_key_is_refused(tmp_path):
    config = yaml.safe_load((RECIPES / "smollm2-135m" / "slowed.yaml").read_text())
    config["entropy_mask_ration"] = 0.2
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="entropy_mask_ration"):
        parse("--config", str(path))


def test_bad_knob_in_yaml_names_the_option(tmp_path):
    config = yaml.safe_load((RECIPES / "smollm2-135m" / "slowed.yaml").read_text())
    config["entropy_mask_ratio"] = 1.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="entropy_mask_ratio"):
        parse("--config", str(path))


def test_missing_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="dataset_name"):
        parse("--model_name_or_path", "x", "--output_dir", "out")


def test_column_overrides_apply_on_top_of_the_preset():
    script_args, _, _ = parse(
        "--model_name_or_path",
        "x",
        "--output_dir",
        "out",
        "--bf16",
        "false",
        "--dataset_name",
        "corpus.jsonl",
        "--dataset_columns",
        "teacher_bbh",
        "--answer_column",
        "teacher_answer",
    )
    mapping = script_args.column_mapping()
    assert (mapping.question, mapping.rationale, mapping.answer) == ("input", "teacher_cot", "teacher_answer")
    assert mapping.correct == "teacher_correct"


@pytest.mark.parametrize(
    ("dataset", "option", "value"),
    [
        ("builtin", "--answer_column", "target"),
        ("builtin", "--dataset_columns", "teacher_bbh"),
        ("builtin", "--only_correct", "true"),
        ("corpus.jsonl", "--builtin_num_per_task", "3"),
        ("corpus.jsonl", "--builtin_tasks", "word_sorting"),
    ],
)
def test_options_the_source_would_ignore_are_refused(dataset, option, value):
    base = ("--model_name_or_path", "x", "--output_dir", "out", "--bf16", "false", "--dataset_name", dataset)
    with pytest.raises(
        ValueError, match=rf"{option} \(on the command line\) do not apply to .* would be ignored"
    ):
        parse(*base, option, value)


def test_ignored_option_from_the_yaml_names_the_yaml_file(tmp_path):
    config = yaml.safe_load((RECIPES / "smollm2-135m" / "slowed.yaml").read_text())
    assert config["dataset_name"] == "builtin"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**config, "only_correct": True}))
    with pytest.raises(ValueError, match=rf"only_correct \(in the YAML file {path}\) do not apply"):
        parse("--config", str(path))
    with pytest.raises(
        ValueError, match=r"--answer_column \(on the command line\), only_correct \(in the YAML"
    ):
        parse("--config", str(path), "--answer_column", "target")


def test_missing_config_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-recipe.yaml"
    with pytest.raises(
        FileNotFoundError, match=rf"--config {missing}: no such file.*recipes/smollm2-135m/slowed.yaml"
    ):
        parse("--config", str(missing))


def test_typos_get_a_did_you_mean_naming_their_source(tmp_path):
    config = yaml.safe_load((RECIPES / "smollm2-135m" / "slowed.yaml").read_text())
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**config, "slow_tuning_tua": 2.0}))
    with pytest.raises(
        ValueError, match=rf"in the YAML file {path}: 'slow_tuning_tua' \(did you mean 'slow_tuning_tau'\?\)"
    ):
        parse("--config", str(path))
    recipe = str(RECIPES / "smollm2-135m" / "slowed.yaml")
    with pytest.raises(
        ValueError,
        match=r"on the command line: 'entropy_mask_ration' \(did you mean 'entropy_mask_ratio'\?\)",
    ):
        parse("--config", recipe, "--entropy_mask_ration", "0.3")
    with pytest.raises(
        ValueError, match=r"on the command line: 'lora_alpah' \(did you mean 'lora_alpha'\?\)"
    ):
        parse("--config", recipe, "--lora_alpah=8")


@pytest.mark.parametrize("path", ACCELERATE_YAMLS, ids=lambda p: p.stem)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}[path.stem]
    assert config.distributed_type.value == expected
    assert {p.stem for p in ACCELERATE_YAMLS} == {"ddp", "fsdp", "zero3"}


def test_readme_lists_a_command_for_every_recipe():
    readme = (RECIPES / "README.md").read_text()
    for path in TRAINING_YAMLS:
        assert f"--config recipes/{path.parent.name}/{path.name}" in readme, path


def test_end_to_end_tiny_run_writes_adapter_and_record(tiny_model_dir, tmp_path):
    output_dir = tmp_path / "run"
    script_args, training_args, model_args = parse(
        "--config",
        str(RECIPES / "smollm2-135m" / "slowed.yaml"),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--builtin_num_per_task",
        "4",
        "--builtin_tasks",
        "boolean_expressions",
        "multistep_arithmetic",
        "--test_fraction",
        "0.25",
        "--eval_strategy",
        "epoch",
        "--num_train_epochs",
        "2",
        "--slow_tuning_tau",
        "1e-3",
        "--lora_r",
        "2",
        "--logging_steps",
        "1",
        "--output_dir",
        str(output_dir),
    )
    record = slowed_sft.main(script_args, training_args, model_args)

    on_disk = json.loads((output_dir / "slowed_run.json").read_text())
    assert on_disk["slowed"]["entropy_mask_ratio"] == 0.2
    assert on_disk["slowed"]["slow_tuning_tau"] == 1e-3
    # The rest as written in recipes/smollm2-135m/slowed.yaml.
    written = yaml.safe_load((RECIPES / "smollm2-135m" / "slowed.yaml").read_text())
    for knob in ("entropy_mask_scope", "entropy_source", "slow_tuning_scope", "slow_tuning_interval"):
        assert on_disk["slowed"][knob] == written[knob]
    assert on_disk["slowed"]["entropy_mask_selection"] == "lowest"  # not in the YAML: the default
    assert on_disk["model"]["requested"] == str(tiny_model_dir)
    assert on_disk["model"]["peft"]["r"] == 2
    assert on_disk["data"]["num_rows"] == {"train": 6, "test": 2}
    held_out = on_disk["data"]["held_out_index_by_task"]
    assert sorted(held_out) == ["boolean_expressions", "multistep_arithmetic"]
    assert all(len(indices) == 1 for indices in held_out.values())
    assert on_disk["final"]["global_step"] == record["final"]["global_step"] == 4  # 2 epochs × ceil(6 / 4)
    # TRL's own run files: the log history (with the held-out evaluation) and the train metrics
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and any(entry.get("eval_loss", 0) > 0 for entry in state["log_history"])
    assert json.loads((output_dir / "train_results.json").read_text())["train_loss"] > 0

    # LEM: masked share = floor(0.2·n)/n per sequence, so just under 0.2 on average
    assert 0.1 < on_disk["final"]["masked_fraction"] <= 0.2
    # Slow Tuning ends the run on the τ-sphere: re-measure ΔW on the saved adapter independently (float64 B·A)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = PeftModel.from_pretrained(base, output_dir)
    squared = 0.0
    for module in adapted.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            delta = module.scaling["default"] * (
                module.lora_B["default"].weight.double() @ module.lora_A["default"].weight.double()
            )
            squared += float((delta**2).sum())
    assert squared**0.5 == pytest.approx(1e-3, rel=1e-4)
    assert on_disk["final"]["delta_norm"] == pytest.approx(squared**0.5, rel=1e-4)
    assert json.loads((output_dir / "slowed_config.json").read_text())["slow_tuning_tau"] == 1e-3


def test_bloom_chat_template_trains_and_is_saved_with_the_adapter(tiny_model_dir, tmp_path):
    template_path = RECIPES / "bloom-1.1b" / "chat_template.jinja"
    assert yaml.safe_load((RECIPES / "bloom-1.1b" / "slowed.yaml").read_text())["chat_template_path"] == (
        "recipes/bloom-1.1b/chat_template.jinja"
    )
    output_dir = tmp_path / "bloom-format"
    script_args, training_args, model_args = parse(
        "--config",
        str(RECIPES / "smollm2-135m" / "std_cot.yaml"),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--chat_template_path",
        str(template_path),
        "--builtin_num_per_task",
        "2",
        "--builtin_tasks",
        "boolean_expressions",
        "--max_steps",
        "1",
        "--lora_r",
        "2",
        "--output_dir",
        str(output_dir),
    )
    slowed_sft.main(script_args, training_args, model_args)

    from transformers import AutoTokenizer

    from slowed.prompting import assistant_message, user_message

    saved = AutoTokenizer.from_pretrained(output_dir)
    assert saved.chat_template == template_path.read_text()
    conversation = [user_message("not ( True ) is"), assistant_message("not True is False.", "False")]
    rendered = saved.apply_chat_template(conversation, tokenize=False)
    assert rendered == f"not ( True ) is\nnot True is False. So the answer is False.{saved.eos_token}"
    assert saved.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True) == (
        "not ( True ) is\n"
    )


def _tiny_paper_architecture(architecture: str, directory: Path) -> Path:
    """A 2-layer random BLOOM or Qwen2 (the paper students' architectures) with the tiny ChatML tokenizer."""
    from tiny_models import make_tiny_tokenizer
    from transformers import BloomConfig, BloomForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = make_tiny_tokenizer()
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    if architecture == "bloom":
        model = BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, **ids))
    else:
        model = Qwen2ForCausalLM(
            Qwen2Config(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                **ids,
            )
        )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(("recipe", "architecture"), [("bloom-1.1b", "bloom"), ("qwen2.5-1.5b", "qwen2")])
def test_paper_recipe_trains_its_architecture_at_tiny_scale(recipe, architecture, tmp_path):
    model_dir = _tiny_paper_architecture(architecture, tmp_path / "model")
    output_dir = tmp_path / "run"
    script_args, training_args, model_args = parse_recipe(
        RECIPES / recipe / "slowed.yaml",
        "--model_name_or_path",
        str(model_dir),
        "--dataset_name",
        "builtin",
        *("--dataset_columns", "default", "--only_correct", "false"),  # the YAML's teacher-file options
        "--builtin_num_per_task",
        "5",
        *(
            ["--chat_template_path", str(RECIPES / recipe / "chat_template.jinja")]
            if recipe == "bloom-1.1b"
            else []
        ),
        "--bf16",
        "false",
        "--dtype",
        "float32",
        "--lora_r",
        "2",
        "--max_steps",
        "1",
        "--logging_steps",
        "1",
        "--output_dir",
        str(output_dir),
    )
    record = slowed_sft.main(script_args, training_args, model_args)

    raw = yaml.safe_load((RECIPES / recipe / "slowed.yaml").read_text())
    assert record["slowed"]["entropy_mask_ratio"] == raw["entropy_mask_ratio"]
    assert record["slowed"]["slow_tuning_tau"] == float(raw["slow_tuning_tau"])
    assert record["data"]["num_rows"] == {"train": 20, "test": 5}
    assert 0 < record["final"]["masked_fraction"] <= raw["entropy_mask_ratio"]
    # all-linear LoRA = every nn.Linear of the base model except lm_head (reference from the plain model)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    linear = {
        name
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    assert set(record["model"]["peft"]["target_modules"]) == linear
    assert (output_dir / "adapter_model.safetensors").is_file()


def test_variants_are_generated_from_the_one_table():
    """`recipes/_generate_recipes.py --check`: every YAML is what the table writes (knobs and comments cannot drift)."""
    check = subprocess.run(
        [sys.executable, str(RECIPES / "_generate_recipes.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    std_cot = (RECIPES / "smollm2-135m" / "std_cot.yaml").read_text()
    assert "k = 0: Low-Entropy Masking off" in std_cot and "τ = null: Slow Tuning off" in std_cot
    assert "τ = 1.0" not in std_cot and "k = 0.2" not in std_cot  # no comment explains a knob that is off


def test_help_lists_the_options_of_every_dataclass():
    """`slowed-sft --help` (and the launcher's) is argparse's help, not an unknown option."""
    result = subprocess.run(
        [sys.executable, str(RECIPES / "slowed_sft.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--dataset_name", "--entropy_mask_ratio", "--slow_tuning_tau", "--model_name_or_path"):
        assert option in result.stdout
