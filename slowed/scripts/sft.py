# Copyright 2026 the slowed authors. Apache-2.0.
# Modelled on TRL's trl/scripts/sft.py (Copyright 2020-2026 The HuggingFace Team, Apache-2.0).
"""
SLowED chain-of-thought distillation: TRL's SFT script with Low-Entropy Masking and Slow Tuning.

# The embedded default student on CPU (no download; a few minutes on 2 cores)
```bash
slowed-sft --config recipes/smollm2-135m/slowed.yaml
```

# A paper recipe (GPU), with command-line overrides on top of the YAML
```bash
accelerate launch --config_file recipes/accelerate/ddp.yaml -m slowed.scripts.sft \
    --config recipes/qwen2.5-1.5b/slowed.yaml --entropy_mask_ratio 0.3 --output_dir outputs/qwen-k0.3
```

# From scratch, every option on the command line
```bash
slowed-sft \
    --model_name_or_path embedded:smollm2-135m \
    --dataset_name ../shared/data/bbh_cot_teacher --dataset_columns teacher_bbh --only_correct \
    --use_peft --lora_r 64 --lora_alpha 128 --lora_target_modules all-linear \
    --entropy_mask_ratio 0.2 --slow_tuning_tau 8.0 \
    --num_train_epochs 10 --learning_rate 2e-4 --output_dir outputs/smollm2-bbh
```

Data (`SLowEDScriptArguments`, read by `slowed.data.load_splits`): `--dataset_name` is a hub dataset id, a local
.jsonl/.json/.csv file or folder (column names from `--dataset_columns` and the `--*_column` overrides), or
`builtin` (the generated corpus, sized by `--builtin_*`). With `--test_fraction f > 0` every task is split by a
seeded hash of its row index; the held-out split is the eval set.

Outputs in `output_dir`, as TRL and the alignment-handbook write them: the adapter (or the full model without
`--use_peft`), tokenizer and model card (`save_model`), `train_results.json` / `all_results.json`
(`save_metrics`), `trainer_state.json` with the log history (`save_state`), `slowed_config.json` (the knobs); and
what only SLowED adds, `slowed_run.json`: the knobs, the model alias, the data provenance with the held-out
indices (which evaluation leaves out of BBH) and the final masked fraction and ΔW norm.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trl import ModelConfig

    from slowed.config import SLowEDConfig
    from slowed.scripts.utils import SLowEDParser, SLowEDScriptArguments

RUN_RECORD_NAME = "slowed_run.json"


def main(
    script_args: SLowEDScriptArguments, training_args: SLowEDConfig, model_args: ModelConfig
) -> dict[str, Any]:
    """Train with `SLowEDTrainer`, save the model, metrics and state to `output_dir`; returns the run record."""
    from trl import get_peft_config, get_quantization_config
    from trl.trainer.utils import get_config_model_id

    from slowed.data import held_out_index_by_task, load_splits
    from slowed.jsonio import write_json
    from slowed.trainer import SLowEDTrainer

    if not model_args.model_name_or_path:
        raise ValueError(
            "`model_name_or_path` is required: a hub id, a local checkpoint folder or the embedded student "
            "`embedded:smollm2-135m`"
        )
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
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)

    peft_config = trainer.model.peft_config.get("default") if hasattr(trainer.model, "peft_config") else None
    record = {
        "slowed": trainer.slowed_record(),
        "model": {
            "requested": model_args.model_name_or_path,
            "path": get_config_model_id(trainer.accelerator.unwrap_model(trainer.model).config),
            "peft": peft_config.to_dict() if peft_config is not None else None,
        },
        "data": {
            "script_args": asdict(script_args),
            "columns": None if script_args.is_builtin else asdict(script_args.column_mapping()),
            "num_rows": {name: len(split) for name, split in splits.items()},
            "held_out_index_by_task": held_out_index_by_task(splits["test"]) if "test" in splits else {},
        },
        "final": trainer.final_facts(),
    }
    output_dir = Path(training_args.output_dir).resolve()
    if trainer.accelerator.is_main_process:
        write_json(output_dir / RUN_RECORD_NAME, record)
    final = record["final"]
    trainer.accelerator.print(
        f"SLowED run finished: k={training_args.entropy_mask_ratio} τ={training_args.slow_tuning_tau}\n"
        f"  {'adapter' if peft_config is not None else 'model'} saved to {output_dir}\n"
        f"  final masked fraction: {_show(final['masked_fraction'])} ({final['masked_fraction_source']})\n"
        f"  final ΔW norm: {_show(final['delta_norm'])} ({final['delta_norm_source']})\n"
        f"  run record: {output_dir / RUN_RECORD_NAME}"
    )
    trainer.end()
    return record


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def make_parser() -> SLowEDParser:
    """`SLowEDParser` over (SLowEDScriptArguments, SLowEDConfig, ModelConfig): `--config x.yaml`, CLI overrides."""
    from trl import ModelConfig

    from slowed.config import SLowEDConfig
    from slowed.scripts.utils import SLowEDParser, SLowEDScriptArguments

    return SLowEDParser((SLowEDScriptArguments, SLowEDConfig, ModelConfig))


def cli() -> None:
    """The ``slowed-sft`` console entry: parse the command line (and ``--config``) and train."""
    main(*make_parser().parse_args_and_config())


if __name__ == "__main__":
    cli()
