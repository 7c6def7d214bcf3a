"""Judge throughput: `slowed.judges.GuardModelJudge` (batched, greedy) against WalledEval's `WalledGuardJudge`.

Both judges run the same stand-in guard: the embedded student (SmolLM2-135M-Instruct; no guard model is
available offline) with WalledEval's own WalledGuard prompt (``judges/walledguard`` preset, as raw text
without a chat template: ``use_chat_template=False``), so both read the same tokens. WalledEval calls its
``transformers`` pipeline once per response; `GuardModelJudge` decodes left-padded batches (``--batch-sizes``,
default 1, 16 and 64: batch size 1 separates the pipeline's overhead from batching). Both generate at
most 20 new tokens. WalledEval samples (temperature 0.1, top-p 0.9); for the agreement it is made greedy by
passing ``do_sample=False`` to its pipeline (`greedy_walledguard`).

The responses: the first 32 AdvBench goals, each answered twice (its AdvBench compliance target, and a
refusal), 64 in all. Reported: responses/s of each judge and their ratio (target ≥ 5×), and the agreement of
greedy WalledEval with `GuardModelJudge`: identical generated text, identical verdict under our first-word
parser, identical verdict under each judge's own parser.

    SLOWED_CACHE=/tmp/fresh_cache SLOWED_DATA_DIR=../shared/data python benchmarks/bench_judges.py
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path
from typing import Any

import torch
from benchlib import ResultsSection, add_results_argument, markdown_table

from slowed.judges.base import parse_guard_verdict
from slowed.judges.guard import GuardModelJudge
from slowed.models import embedded_student_path

REFUSAL = "I'm sorry, but I cannot help with that. It could cause real harm, so I won't provide it."


def walledeval_guard_template() -> str:
    """WalledEval 0.2.1's WalledGuard prompt with its ``$prompt`` slot written as our ``{response}``."""
    from walledeval.prompts import PromptTemplate

    return PromptTemplate.from_preset("judges/walledguard").format(prompt="{response}")


def greedy_walledguard(model_path: str | Path, device: str = "cpu") -> Any:
    """WalledEval's `WalledGuardJudge` over `model_path` (raw prompt, no chat template), decoding greedily.

    Its pipeline is called with ``do_sample=False`` in place of WalledEval's temperature and top-p; everything
    else (one call per response, 20 new tokens, its stop tokens and its parser) is WalledEval's.
    """
    from walledeval.judge import WalledGuardJudge

    judge = WalledGuardJudge(name=str(model_path), use_chat_template=False, device_map=device)
    pipeline = judge._llm.pipeline

    def greedy(prompt: str, **kwargs: Any) -> Any:
        for sampling_option in ("temperature", "top_p"):
            kwargs.pop(sampling_option, None)
        return pipeline(prompt, **{**kwargs, "do_sample": False})

    judge._llm.pipeline = greedy
    judge._llm.pipeline.tokenizer = pipeline.tokenizer
    return judge


def walledeval_raw(judge: Any, response: str) -> str:
    """The text WalledEval's guard generates for `response` (before its parser)."""
    return judge.generate(response)


def advbench_responses(data_dir: Path, goals: int) -> tuple[list[str], list[str]]:
    """(prompts, responses): each of the first `goals` AdvBench goals with its compliance target and a refusal."""
    with (data_dir / "advbench" / "harmful_behaviors.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:goals]
    prompts = [row["goal"] for row in rows for _ in range(2)]
    responses = [text for row in rows for text in (row["target"] + ".", REFUSAL)]
    return prompts, responses


def agreement(ours: list[str], theirs: list[str], their_labels: list[str]) -> dict[str, float]:
    """Shares of responses where the two judges agree: same text (stripped), same verdict by our parser,
    same verdict by each judge's own parser."""
    pairs = list(zip(ours, theirs, strict=True))
    count = len(pairs)
    return {
        "same text": sum(a.strip() == b.strip() for a, b in pairs) / count,
        "same verdict (first-word parser on both)": sum(
            parse_guard_verdict(a) == parse_guard_verdict(b) for a, b in pairs
        )
        / count,
        "same verdict (each judge's own parser)": sum(
            parse_guard_verdict(a) == label for a, label in zip(ours, their_labels, strict=True)
        )
        / count,
    }


def run(args: argparse.Namespace) -> ResultsSection:
    section = ResultsSection(path=args.results, title="Judge throughput (bench_judges.py)")
    model_path = embedded_student_path()
    prompts, responses = advbench_responses(args.data_dir, args.responses // 2)
    judges = {
        size: GuardModelJudge(
            str(model_path),
            walledeval_guard_template(),
            batch_size=size,
            device=args.device,
            dtype=torch.float32,
            template_name="walledeval judges/walledguard",
        )
        for size in args.batch_sizes
    }
    theirs = greedy_walledguard(model_path, args.device)
    next(iter(judges.values())).judge(prompts[:2], responses[:2])  # warm both
    walledeval_raw(theirs, responses[0])

    start = time.perf_counter()
    their_raw = [walledeval_raw(theirs, response) for response in responses]
    theirs_seconds = time.perf_counter() - start
    their_labels = [str(theirs.process_llm_output(text).value) for text in their_raw]
    count = len(responses)
    rows = [
        [
            "WalledEval WalledGuardJudge (greedy, one pipeline call each)",
            theirs_seconds,
            count / theirs_seconds,
            1.0,
        ]
    ]
    for size, judge in judges.items():
        start = time.perf_counter()
        verdicts = judge.judge(prompts, responses)
        seconds = time.perf_counter() - start
        rows.append(
            [
                f"slowed GuardModelJudge (greedy, batch size {size})",
                seconds,
                count / seconds,
                theirs_seconds / seconds,
            ]
        )

    section.add(
        f"Stand-in guard: the embedded student `{model_path.name}` (float32, {args.device}), WalledEval's WalledGuard "
        f"prompt without chat template, ≤ 20 new tokens; {count} responses (AdvBench targets and refusals); "
        f"torch threads {torch.get_num_threads()}. Target ≥ 5× responses/s."
    )
    section.add(markdown_table(["judge", "seconds", "responses/s", "× WalledEval"], rows))
    shares = agreement([v.raw for v in verdicts], their_raw, their_labels)
    section.add(
        "Agreement of greedy WalledEval with GuardModelJudge (largest batch):\n\n"
        + markdown_table(["measure", "share"], [[k, v] for k, v in shares.items()])
        + "\n\nVerdicts (ours, first-word parser): "
        + ", ".join(
            f"{label} {sum(v.label == label for v in verdicts)}" for label in ("safe", "unsafe", "unknown")
        )
    )
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("SLOWED_DATA_DIR", "../shared/data"))
    )
    parser.add_argument("--responses", type=int, default=64)
    parser.add_argument(
        "--batch-sizes", type=lambda text: [int(v) for v in text.split(",")], default=[1, 16, 64]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_results_argument(parser)
    run(parser.parse_args(argv)).write()


if __name__ == "__main__":
    main()
