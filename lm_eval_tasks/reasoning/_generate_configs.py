"""Write the per-task and group YAMLs of the reasoning benchmarks from the one task list of each, as lm-eval's
tasks/bbh/_generate_configs.py does.

The lists are `slowed.evaluation.datasets`' (`BBH_TASKS`, `AGIEVAL_SUBSETS`, `BBSUB_TASKS`, `ARC_FILES`), which
its loaders check a subset against: there is no other copy. Every task YAML includes its benchmark's template
(`_<benchmark>_template_yaml`, which includes the shared `../_reasoning_template_yaml`) and names its subset.

    python lm_eval_tasks/reasoning/_generate_configs.py            # write the YAMLs
    python lm_eval_tasks/reasoning/_generate_configs.py --check    # exit 1 if a YAML differs from what this writes
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from slowed.evaluation.datasets import (
    AGIEVAL_CLOZE_SUBSETS,
    AGIEVAL_SUBSETS,
    ARC_FILES,
    BBH_TASKS,
    BBSUB_TASKS,
)

HERE = Path(__file__).resolve().parent
MATH_RESULTS = "process_results: !function slowed.evaluation.answers.process_results_math"


@dataclass(frozen=True)
class Benchmark:
    folder: str
    subsets: tuple[str, ...]
    group_comment: str | None  # None: no group YAML (the tasks are members of slowed_ood themselves)
    group_alias: str | None = None
    aliases: bool = False  # each task's alias is its subset name (ARC-Easy, ARC-Challenge)
    strip: str = ""  # prefix of the subset names left out of the task names

    def task_name(self, subset: str) -> str:
        return f"slowed_{self.folder}_{subset.removeprefix(self.strip).replace('-', '_').lower()}"

    def file_name(self, subset: str) -> str:
        return f"{self.task_name(subset)}.yaml" if self.aliases else f"{subset}.yaml"


BENCHMARKS = (
    Benchmark(
        "bbh",
        BBH_TASKS,
        "# BIG-Bench Hard, 27 tasks (in-domain). Aggregate: accuracy over all examples (size-weighted).",
        "BBH",
    ),
    Benchmark(
        "agieval",
        AGIEVAL_SUBSETS,
        "# AGIEval, the nine English subsets (out-of-domain). Aggregate: accuracy over all examples (size-weighted).",
        "AGIEval (English)",
    ),
    Benchmark(
        "bbsub",
        BBSUB_TASKS,
        "# BB-Sub (out-of-domain): 8 BIG-bench tasks outside BBH. Aggregate: accuracy over all examples (size-weighted).",
        "BB-Sub",
    ),
    Benchmark("arc", tuple(ARC_FILES), None, aliases=True, strip="ARC-"),
)


def task_yaml(benchmark: Benchmark, subset: str) -> str:
    lines = [f"task: {benchmark.task_name(subset)}"]
    if benchmark.aliases:
        lines.append(f"task_alias: {subset}")
    lines.append(f"include: _{benchmark.folder}_template_yaml")
    if benchmark.folder == "agieval" and subset in AGIEVAL_CLOZE_SUBSETS:
        lines.append(MATH_RESULTS)
    lines += ["dataset_kwargs:", f"  subset: {subset}"]
    return "\n".join(lines) + "\n"


def group_yaml(benchmark: Benchmark) -> str:
    lines = [
        benchmark.group_comment,
        f"group: slowed_{benchmark.folder}",
        f"group_alias: {benchmark.group_alias}",
        "task:",
        *(f"  - {benchmark.task_name(subset)}" for subset in benchmark.subsets),
        "aggregate_metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    weight_by_size: true",
        "metadata:",
        "  version: 1.0",
    ]
    return "\n".join(lines) + "\n"


def generate() -> dict[Path, str]:
    """Every generated YAML path and its text."""
    files = {}
    for benchmark in BENCHMARKS:
        folder = HERE / benchmark.folder
        for subset in benchmark.subsets:
            files[folder / benchmark.file_name(subset)] = task_yaml(benchmark, subset)
        if benchmark.group_comment is not None:
            files[folder / f"_slowed_{benchmark.folder}.yaml"] = group_yaml(benchmark)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report YAMLs that differ; exit 1 if any")
    args = parser.parse_args(argv)
    files = generate()
    generated = set(files)
    stale = [
        path for path, text in files.items() if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    strays = [
        path
        for benchmark in BENCHMARKS
        for path in sorted((HERE / benchmark.folder).glob("*.yaml"))
        if path not in generated
    ]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(HERE)} differs from _generate_configs.py's output", file=sys.stderr)
        for path in strays:
            print(f"{path.relative_to(HERE)} is not in the task lists", file=sys.stderr)
        return 1 if stale or strays else 0
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    for path in strays:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
