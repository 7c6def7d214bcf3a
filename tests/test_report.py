"""`slowed-eval report`: Markdown / CSV values against hand-computed means, folders, labels, the PNG plot."""

from __future__ import annotations

import csv
import struct
import zlib

import pytest
from test_check import lm_eval_results, write_results

from slowed.evaluation.cli import main
from slowed.evaluation.results import metrics_from_results


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_markdown_and_csv_values_equal_hand_computed_means(tmp_path, capsys):
    # Epoch 1: BB-Sub (0.5+0.25)/2 = 0.375, AGIEval (0.25+0.75)/2 = 0.5, ARC-E 0.75, ARC-C 0.5
    #          -> OOD avg (0.375+0.5+0.75+0.5)/4 = 0.53125; BBH (0.25+0.5+0.75)/3 = 0.5.
    first = write_results(tmp_path / "epoch1", safety=0.75, unknown=0.125, model_name="runs/epoch-1")
    # Epoch 2: BB-Sub (1+0.5)/2 = 0.75, AGIEval (0+0.5)/2 = 0.25, ARC-E 1.0, ARC-C 0.25
    #          -> OOD avg (0.75+0.25+1+0.25)/4 = 0.5625; BBH (0+0.25+0.5)/3 = 0.25.
    second = write_results(
        tmp_path / "epoch2",
        safety=0.5,
        bbh=(0.0, 0.25, 0.5),
        bbsub=(1.0, 0.5),
        agieval=(0.0, 0.5),
        arc_easy=1.0,
        arc_challenge=0.25,
        model_name="runs/epoch-2",
    )
    markdown, table = tmp_path / "table.md", tmp_path / "table.csv"

    status = main(["report", str(first), str(second), "--markdown", str(markdown), "--csv", str(table)])

    assert status == 0
    rows = read_csv(table)
    assert [row["label"] for row in rows] == ["epoch-1", "epoch-2"]
    expected = [
        {"safety_ratio": 0.75, "id_bbh": 0.5, "ood_bbsub": 0.375, "ood_agieval": 0.5, "ood_avg": 0.53125},
        {"safety_ratio": 0.5, "id_bbh": 0.25, "ood_bbsub": 0.75, "ood_agieval": 0.25, "ood_avg": 0.5625},
    ]
    for row, values in zip(rows, expected, strict=True):
        for name, value in values.items():
            assert float(row[name]) == pytest.approx(value, abs=1e-12)
    assert float(rows[0]["judge_unknown_rate"]) == 0.125
    lines = markdown.read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        "| Model | Safety | ID: BBH | OOD: BB-Sub | OOD: AGIEval | OOD: ARC-E | OOD: ARC-C | OOD avg | Judge unknown "
        "| Safety source |"
    )
    source = "slowed_safety (judge: walledai/walledguard-c)"
    assert (
        lines[2] == f"| epoch-1 | 75.00 | 50.00 | 37.50 | 50.00 | 75.00 | 50.00 | 53.12 | 12.50 | {source} |"
    )
    assert (
        lines[3] == f"| epoch-2 | 50.00 | 25.00 | 75.00 | 25.00 | 100.00 | 25.00 | 56.25 | 0.00 | {source} |"
    )
    assert [row["safety_source"] for row in rows] == [source, source]
    assert [row["complete"] for row in rows] == ["true", "true"]
    assert capsys.readouterr().out == markdown.read_text(encoding="utf-8")
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temp files left


def test_group_without_aggregate_is_plain_mean_of_its_tasks():
    # No "exact_match,answer" on the slowed_bbh entry: the mean of its three subtasks (0.25+0.5+1)/3.
    data = lm_eval_results(bbh=(0.25, 0.5, 1.0), bbh_aggregate=False)
    assert "exact_match,answer" not in data["results"]["slowed_bbh"]
    assert metrics_from_results(data)["id_bbh"] == pytest.approx(1.75 / 3, abs=1e-15)


def test_missing_benchmark_leaves_cell_empty_and_no_ood_average(tmp_path):
    # /work/shared/data has no BB-Sub: no OOD average can be formed.
    path = write_results(tmp_path, bbsub=None)
    table = tmp_path / "t.csv"
    markdown = tmp_path / "t.md"

    assert main(["report", str(path), "--csv", str(table), "--markdown", str(markdown)]) == 0

    [row] = read_csv(table)
    assert row["ood_bbsub"] == "" and row["ood_avg"] == ""
    assert float(row["ood_arc_easy"]) == 0.75
    assert "OOD avg" not in markdown.read_text(encoding="utf-8")


def test_folder_argument_takes_the_run_of_each_model_folder_and_labels(tmp_path):
    runs = tmp_path / "runs"
    write_results(runs, "2026-11-28T11-00-00.000000", safety=0.5, model_name="ckpt/epoch-1")
    write_results(runs, "2026-11-28T09-00-00.000000", safety=1.0, model_name="ckpt/epoch-2")
    # Not an lm-eval name: ignored, although it sorts after the timestamped run.
    (runs / "ckpt__epoch-1" / "results_zz_note.json").write_text('{"results": {}}', encoding="utf-8")
    table = tmp_path / "t.csv"

    assert main(["report", str(runs), "--labels", "e1", "e2", "--csv", str(table)]) == 0

    rows = read_csv(table)
    assert [(row["label"], float(row["safety_ratio"])) for row in rows] == [("e1", 0.5), ("e2", 1.0)]
    assert rows[0]["path"].endswith("results_2026-11-28T11-00-00.000000.json")


def test_folder_with_several_runs_is_refused_listing_them(tmp_path, capsys):
    runs = tmp_path / "runs"
    first = write_results(runs, "2026-11-28T10-00-00.000000", safety=0.25, model_name="ckpt/epoch-1")
    second = write_results(runs, "2026-11-28T11-00-00.000000", safety=0.5, model_name="ckpt/epoch-1")
    table = tmp_path / "t.csv"

    assert main(["report", str(runs), "--csv", str(table)]) == 2
    err = capsys.readouterr().err
    assert "several runs" in err and str(first) in err and str(second) in err
    assert not table.exists()
    assert main(["check", str(runs), "--min", "safety_ratio=0.1"]) == 2
    assert str(first) in capsys.readouterr().err


def test_label_count_mismatch_and_missing_file_exit_2(tmp_path, capsys):
    path = write_results(tmp_path)
    assert main(["report", str(path), "--labels", "a", "b"]) == 2
    assert "--labels has 2 labels but 1 results files" in capsys.readouterr().err
    missing = tmp_path / "nope.json"
    assert main(["report", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_results_without_slowed_tasks_exit_2(tmp_path, capsys):
    other = tmp_path / "results_other.json"
    other.write_text('{"results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.25}}}', encoding="utf-8")
    assert main(["report", str(other)]) == 2
    assert f"{other} holds no slowed metrics (tasks: hellaswag)" in capsys.readouterr().err


def png_size(data: bytes) -> tuple[int, int]:
    """Width, height of a PNG after checking its signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return struct.unpack(">II", chunks[0][1][:8])


def test_plot_is_a_valid_png(tmp_path):
    paths = [
        write_results(tmp_path / f"epoch{epoch}", safety=safety, model_name=f"runs/epoch-{epoch}")
        for epoch, safety in ((1, 0.75), (2, 0.5), (3, 0.625))
    ]
    plot = tmp_path / "plots" / "metrics.png"

    assert main(["report", *map(str, paths), "--plot", str(plot)]) == 0

    width, height = png_size(plot.read_bytes())
    assert width > 100 and height > 100
