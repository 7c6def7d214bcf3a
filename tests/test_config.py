"""SLowEDConfig: every option validated with a message naming it; CLI/YAML strings parsed; bad combinations."""

from __future__ import annotations

import math

import pytest
from trl import TrlParser

from slowed.config import SLowEDConfig


def make_config(tmp_path, **overrides) -> SLowEDConfig:
    return SLowEDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **overrides)


INVALID = [
    ("entropy_mask_ratio", -0.1),
    ("entropy_mask_ratio", 1.0),
    ("entropy_mask_ratio", 1.5),
    ("entropy_mask_ratio", math.nan),
    ("entropy_mask_ratio", "lots"),
    ("entropy_mask_ratio", True),
    ("entropy_mask_ratio", None),
    ("entropy_mask_selection", "median"),
    ("entropy_mask_selection", None),
    ("entropy_mask_scope", "token"),
    ("entropy_mask_scope", None),
    ("entropy_source", "teacher"),
    ("entropy_source", 1),
    ("slow_tuning_tau", 0),
    ("slow_tuning_tau", -1.0),
    ("slow_tuning_tau", math.inf),
    ("slow_tuning_tau", math.nan),
    ("slow_tuning_tau", "big"),
    ("slow_tuning_tau", False),
    ("slow_tuning_scope", "layer"),
    ("slow_tuning_interval", 0),
    ("slow_tuning_interval", -3),
    ("slow_tuning_interval", "0"),
    ("slow_tuning_interval", "1.5"),
    ("slow_tuning_interval", 2.5),
    ("slow_tuning_interval", "10.5"),
    ("slow_tuning_interval", 10.5),
    ("slow_tuning_interval", "0.0"),
    ("slow_tuning_interval", "inf"),
    ("slow_tuning_interval", "nan"),
    ("slow_tuning_interval", "weekly"),
    ("slow_tuning_interval", True),
    ("slow_tuning_interval", None),
]


@pytest.mark.parametrize(("option", "value"), INVALID, ids=[f"{o}={v!r}" for o, v in INVALID])
def test_invalid_value_names_option_and_value(tmp_path, option, value):
    with pytest.raises(ValueError) as error:
        make_config(tmp_path, **{option: value})
    message = str(error.value)
    assert option in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("option", "value", "parsed"),
    [
        ("entropy_mask_ratio", 0.0, 0.0),
        ("entropy_mask_ratio", "0.3", 0.3),
        ("entropy_mask_ratio", 0.999, 0.999),
        ("entropy_mask_selection", "highest", "highest"),
        ("entropy_mask_selection", "random", "random"),
        ("entropy_mask_scope", "batch", "batch"),
        ("entropy_source", "initial", "initial"),
        ("slow_tuning_tau", None, None),
        ("slow_tuning_tau", "none", None),
        ("slow_tuning_tau", "1e-3", 1e-3),  # YAML 1.1 reads 1e-3 as a string
        ("slow_tuning_tau", 2, 2.0),
        ("slow_tuning_scope", "module", "module"),
        ("slow_tuning_interval", "epoch", "epoch"),
        ("slow_tuning_interval", "step", "step"),
        ("slow_tuning_interval", "10", 10),
        ("slow_tuning_interval", 7, 7),
        ("slow_tuning_interval", 4.0, 4),
        ("slow_tuning_interval", "10.0", 10),
        ("slow_tuning_interval", " 1e1 ", 10),
        ("slow_tuning_interval", 10.0, 10),
    ],
)
def test_valid_values_are_accepted_and_parsed(tmp_path, option, value, parsed):
    config = make_config(tmp_path, **{option: value})
    assert getattr(config, option) == parsed
    assert type(getattr(config, option)) is type(parsed)


def test_defaults_are_stock_sft(tmp_path):
    config = make_config(tmp_path)
    assert (config.entropy_mask_ratio, config.slow_tuning_tau) == (0.0, None)
    assert not config.uses_online_lem and not config.uses_initial_lem
    assert config.slowed_dict() == {
        "entropy_mask_ratio": 0.0,
        "entropy_mask_selection": "lowest",
        "entropy_mask_scope": "sequence",
        "entropy_source": "online",
        "slow_tuning_tau": None,
        "slow_tuning_scope": "global",
        "slow_tuning_interval": "epoch",
    }


def test_bf16_defaults_to_true_like_trl_even_on_cpu(tmp_path):
    """TRL 1.16's SFTConfig turns bf16 on unless fp16 is set; SLowEDConfig keeps that (documented)."""
    config = SLowEDConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert config.bf16 is True


def test_trl_parser_command_line_strings(tmp_path):
    parser = TrlParser((SLowEDConfig,))
    (config,) = parser.parse_args_and_config(
        [
            *("--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false", "--report_to", "none"),
            *("--entropy_mask_ratio", "0.2", "--entropy_mask_scope", "batch"),
            *("--slow_tuning_tau", "0.5", "--slow_tuning_interval", "25"),
        ]
    )
    assert config.entropy_mask_ratio == 0.2 and config.entropy_mask_scope == "batch"
    assert config.slow_tuning_tau == 0.5 and config.slow_tuning_interval == 25


def test_trl_parser_yaml_values(tmp_path):
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text(
        f"output_dir: {tmp_path}\nuse_cpu: true\nbf16: false\nreport_to: none\n"
        "entropy_mask_ratio: 0.25\nslow_tuning_tau: 1e-3\nslow_tuning_interval: 50\n"
    )
    (config,) = TrlParser((SLowEDConfig,)).parse_args_and_config(["--config", str(config_file)])
    assert config.entropy_mask_ratio == 0.25
    assert config.slow_tuning_tau == pytest.approx(1e-3)
    assert config.slow_tuning_interval == 50


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            {"entropy_mask_ratio": 0.2, "entropy_source": "initial", "packing": True},
            ["entropy_source='initial'", "packing=True"],
        ),
        (
            {"entropy_mask_ratio": 0.2, "entropy_source": "initial", "entropy_mask_scope": "batch"},
            ["entropy_source='initial'", "shuffling"],
        ),
        (
            {"entropy_mask_ratio": 0.2, "packing": True, "packing_strategy": "wrapped"},
            ["entropy_mask_ratio=0.2", "packing_strategy='wrapped'", "packing_strategy='bfd'"],
        ),
        (
            {
                "entropy_mask_ratio": 0.2,
                "entropy_source": "initial",
                "deepspeed": {"zero_optimization": {"stage": 3}},
            },
            ["entropy_source='initial'", "ZeRO-3", "entropy_source='online'"],
        ),
        (
            {"entropy_mask_ratio": 0.2, "label_smoothing_factor": 0.1},
            ["label_smoothing_factor=0.1", "entropy_mask_ratio=0.2"],
        ),
    ],
    ids=[
        "initial+packing",
        "initial+batch-scope",
        "sequence-lem+wrapped-packing",
        "initial+zero3",
        "online-lem+label-smoothing",
    ],
)
def test_refused_combinations(tmp_path, overrides, fragments):
    with pytest.raises(ValueError) as error:
        make_config(tmp_path, max_length=64, **overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_allowed_combinations(tmp_path):
    """DFT composes with LEM; initial-source label smoothing is fine (the mask lives in the labels)."""
    assert make_config(tmp_path, entropy_mask_ratio=0.2, loss_type="dft").loss_type == "dft"
    config = make_config(
        tmp_path, entropy_mask_ratio=0.2, entropy_source="initial", label_smoothing_factor=0.1
    )
    assert config.uses_initial_lem
    assert make_config(tmp_path, entropy_mask_ratio=0.2, packing=True, max_length=64).uses_online_lem


def test_initial_source_combinations_are_allowed_when_lem_is_off(tmp_path):
    """k = 0 masks nothing, so the initial source's packing and batch-scope restrictions do not apply."""
    config = make_config(tmp_path, entropy_source="initial", packing=True, max_length=64)
    assert not config.uses_initial_lem
    assert (
        make_config(tmp_path, entropy_source="initial", entropy_mask_scope="batch").entropy_mask_scope
        == "batch"
    )


def test_wrapped_packing_is_allowed_with_batch_scope_or_lem_off(tmp_path):
    wrapped = {"packing": True, "packing_strategy": "wrapped", "max_length": 64}
    assert make_config(
        tmp_path, entropy_mask_ratio=0.2, entropy_mask_scope="batch", **wrapped
    ).uses_online_lem
    assert not make_config(tmp_path, **wrapped).uses_online_lem


def test_zero3_file_is_read_for_the_initial_source_check(tmp_path):
    ds_config = tmp_path / "ds.json"
    ds_config.write_text('{"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}')
    with pytest.raises(ValueError, match="ZeRO-3"):
        make_config(tmp_path, entropy_mask_ratio=0.2, entropy_source="initial", deepspeed=str(ds_config))
