"""Generate the embedded student's responses for the refusal-judging set (greedy, chat template).

Prompts: 60 AdvBench behaviours and 60 XSTest prompts, evenly spaced over each file (row
``round(i * n / 60)``, i = 0..59), so every XSTest type is represented. Each prompt is the only user turn
of SmolLM2-135M-Instruct's chat template; decoding is greedy, at most 96 new tokens, one prompt at a time
(no padding, so a response does not depend on its batch). Output: ``student_generations.jsonl`` with
``id, source, dataset, prompt_ref, prompt_label, xstest_type, response`` (``prompt_ref``: the AdvBench row
index or the XSTest id; prompt texts stay in the data folder). The human labels are added by reading each
response, in ``labelled.jsonl`` (see README.md). About 8 minutes on 2 shared CPU cores.

    SLOWED_CACHE=/tmp/fresh_cache python benchmarks/refusal_judging/generate_student.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from slowed.jsonio import write_atomic
from slowed.models import embedded_student_path

HERE = Path(__file__).resolve().parent
PROMPTS_PER_DATASET = 60
MAX_NEW_TOKENS = 96
SOURCE = "student:smollm2-135m-instruct"


def evenly_spaced(rows: list[dict[str, str]], count: int) -> list[tuple[int, dict[str, str]]]:
    """(row index, row) for rows ``round(i * len(rows) / count)``, i = 0..count-1."""
    return [(round(i * len(rows) / count), rows[round(i * len(rows) / count)]) for i in range(count)]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def prompts(data_dir: Path) -> list[dict[str, str]]:
    """The 120 prompt records (id, dataset, prompt_ref, prompt_label, xstest_type, prompt) in a fixed order."""
    records = []
    for index, row in evenly_spaced(
        read_csv(data_dir / "advbench" / "harmful_behaviors.csv"), PROMPTS_PER_DATASET
    ):
        records.append(
            {
                "id": f"student-advbench-{index}",
                "dataset": "advbench",
                "prompt_ref": str(index),
                "prompt_label": "harmful",
                "xstest_type": "",
                "prompt": row["goal"],
            }
        )
    for _, row in evenly_spaced(read_csv(data_dir / "xstest" / "xstest_prompts.csv"), PROMPTS_PER_DATASET):
        records.append(
            {
                "id": f"student-xstest-{row['id']}",
                "dataset": "xstest",
                "prompt_ref": row["id"],
                "prompt_label": row["label"],
                "xstest_type": row["type"],
                "prompt": row["prompt"],
            }
        )
    return records


@torch.inference_mode()
def generate(model, tokenizer, prompt: str) -> str:
    """Greedy response (≤ MAX_NEW_TOKENS) to ``prompt`` as the only user turn, special tokens dropped."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**ids, do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS)
    return tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder in the ../shared/data layout")
    parser.add_argument("--output", type=Path, default=HERE / "student_generations.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = embedded_student_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lines = []
    for number, record in enumerate(prompts(args.data_dir), start=1):
        response = generate(model, tokenizer, record["prompt"])
        stored = {key: value for key, value in record.items() if key != "prompt"}
        lines.append(
            json.dumps({**stored, "source": SOURCE, "response": response}, ensure_ascii=False) + "\n"
        )
        print(f"{number:3d} {record['id']}: {response[:70]!r}", flush=True)
    write_atomic(args.output, "".join(lines))
    print(f"wrote {len(lines)} responses to {args.output}")


if __name__ == "__main__":
    main()
