"""Data-parallel LEM + Slow Tuning: 2 gloo processes on CPU against hand counts and a single-process run.

`tests/distributed_run.py` trains a tiny model (k = 0.2, sequence scope, τ binding at every step, fp32) under
``torch.distributed.run --nproc_per_node 2`` and records, per process, its batches, its weights after every
projection and the logged masked fractions. 16 rows divide into global batches of 4; 18 rows leave a ragged
last step (2 real rows; accelerate pads the other process's batch with rows from the start of the epoch).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_run import RATIO, TAU, train_and_record

SCRIPT = Path(__file__).resolve().parent / "distributed_run.py"
LAUNCH_TIMEOUT_S = 240  # a hung process (e.g. at exit) fails the test instead of blocking the suite
ROW_COUNTS = (16, 18)

pytestmark = pytest.mark.slow


def launch_two_processes(output_dir: Path, per_device: int, row_counts: tuple[int, ...]) -> None:
    """Run the helper under torch's launcher with 2 CPU processes; kill the whole group if it overruns."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(str(SCRIPT), str(output_dir), str(per_device), *map(str, row_counts)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"2-process run did not exit within {LAUNCH_TIMEOUT_S} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]


@pytest.fixture(scope="module")
def two_process_records(tmp_path_factory) -> dict[int, list[dict]]:
    output_dir = tmp_path_factory.mktemp("ddp")
    launch_two_processes(output_dir, per_device=2, row_counts=ROW_COUNTS)
    return {
        rows: [
            torch.load(output_dir / f"rows{rows}" / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)
        ]
        for rows in ROW_COUNTS
    }


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_ranks_hold_identical_weights_after_every_projection(two_process_records, rows):
    rank0, rank1 = two_process_records[rows]
    assert rank0["world_size"] == rank1["world_size"] == 2
    steps = math.ceil(rows / 4)
    assert sorted(rank0["snapshots"]) == sorted(rank1["snapshots"]) == list(range(1, steps + 1))
    for step in rank0["snapshots"]:
        assert max_abs_diff(rank0["snapshots"][step], rank1["snapshots"][step]) == 0.0, step
    # The projection bound at every step: the update was pulled back onto the τ-sphere.
    assert all(
        before > TAU and after == pytest.approx(TAU, rel=1e-5) for _, before, after in rank0["projections"]
    )


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_logged_masked_fraction_counts_both_ranks(two_process_records, rows):
    """Per step: Σ floor(k·n) / Σ n over the sequences of BOTH processes' micro-batches (hand count)."""
    rank0, rank1 = two_process_records[rows]
    for step, fraction in rank0["fractions"]:
        lengths = [
            n for record in (rank0, rank1) for s, counts in record["batches"] if s == step for n in counts
        ]
        assert len(lengths) == 4
        assert fraction == pytest.approx(
            sum(math.floor(RATIO * n) for n in lengths) / sum(lengths), rel=1e-12
        )
    assert rank0["fractions"] == rank1["fractions"]
    assert [step for step, _ in rank0["fractions"]] == list(range(1, math.ceil(rows / 4) + 1))


def test_two_ranks_equal_one_process_with_the_same_global_batch(two_process_records, tmp_path):
    """per_device 2 × 2 processes vs per_device 4 × 1 process: same batches, same final weights within 1e-5."""
    rank0, rank1 = two_process_records[16]
    single = train_and_record(tmp_path, rows=16, per_device=4)
    for (step, counts), (_, counts0), (_, counts1) in zip(
        single["batches"], rank0["batches"], rank1["batches"], strict=True
    ):
        assert counts == counts0 + counts1, step  # rank r holds rows 2r, 2r+1 of the global batch
    assert max_abs_diff(single["final"], rank0["final"]) < 1e-5
    # The runs moved the weights far more than the tolerance, so the equality is not vacuous.
    assert max(w.abs().max().item() for name, w in single["final"].items() if "lora_B" in name) > 1e-3
