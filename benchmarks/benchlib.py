"""Shared helpers of the benchmark scripts: the machine's state and the RESULTS.md log.

Every benchmark appends one section to ``benchmarks/RESULTS.md``: date, library versions, the exact command,
the 1-minute load average before and after, and its tables. Ratios are always taken against the stock path
measured in the same run, so they hold on a shared machine where absolute times do not.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "lm_eval", "walledeval", "slowed")


def load_average() -> float:
    """The 1-minute load average (runnable processes, averaged); 0.0 where the OS does not report it."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def package_versions(names: Sequence[str] = PACKAGES) -> str:
    """``name version`` for each installed package of `names`, comma-separated."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def command_line() -> str:
    """The command that started this process, as a shell would read it."""
    return "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    """``--results PATH``: the Markdown file a run appends its section to (default benchmarks/RESULTS.md)."""
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="file to append the results to")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats are written with 3 significant decimals."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class ResultsSection:
    """One benchmark run's section of RESULTS.md: opened before the work (load before), written after."""

    def __init__(self, title: str, path: Path = RESULTS_PATH) -> None:
        self.title = title
        self.path = path
        self.started = time.time()
        self.load_before = load_average()
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        """Append a paragraph or table (Markdown) to the section."""
        self.parts.append(text.rstrip())

    def render(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        minutes = (time.time() - self.started) / 60
        head = [
            f"## {self.title} — {when}",
            "",
            f"- command: `{command_line()}`",
            f"- versions: {package_versions()}; Python {platform.python_version()}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; load average (1 min) "
            f"{self.load_before:.2f} before, {load_average():.2f} after; {minutes:.1f} min",
        ]
        return "\n".join(head) + "\n\n" + "\n\n".join(self.parts) + "\n\n"

    def write(self) -> str:
        """Append the section to RESULTS.md (creating it with a title line) and return its text."""
        text = self.render()
        if not self.path.exists():
            self.path.write_text(
                "# Benchmark results\n\nNewest sections last. See README.md for each command.\n\n"
            )
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)
        print(text, flush=True)
        return text
