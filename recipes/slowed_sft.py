# Copyright 2026 the slowed authors. Apache-2.0.
# Modelled on TRL's trl/scripts/sft.py (Copyright 2020-2026 The HuggingFace Team, Apache-2.0).
"""
SLowED chain-of-thought distillation: TRL's SFT script with Low-Entropy Masking and Slow Tuning.

The script lives in the package (`slowed.scripts.sft`, installed as the `slowed-sft` command, as TRL ships
`trl/scripts/sft.py` as `trl sft`); this file launches the same `main` from a checkout.

# The embedded default student on CPU (no download; a few minutes on 2 cores)
```bash
python recipes/slowed_sft.py --config recipes/smollm2-135m/slowed.yaml
slowed-sft --config recipes/smollm2-135m/slowed.yaml        # the same, installed
```

# A paper recipe (GPU), with command-line overrides on top of the YAML
```bash
accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/slowed_sft.py \
    --config recipes/qwen2.5-1.5b/slowed.yaml \
    --entropy_mask_ratio 0.3 --output_dir outputs/qwen-k0.3
```

Options: `SLowEDScriptArguments` (the corpus and its split), `SLowEDConfig` (TRL's `SFTConfig` + the SLowED
knobs) and TRL's `ModelConfig`; `--help` lists them. Outputs: see `slowed.scripts.sft`.
"""

from slowed.scripts.sft import main, make_parser

if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
