"""The incremental-update benchmark still runs: its smoke run, in a subprocess as a person would run it."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark, table_cells

RUNS = ["full rebuild", r"remove 1% \(setup\)", "add 1%", "no change"]


def run_incremental_smoke(repo_root, *args: str) -> list[str]:
    """Run `python benchmarks/incremental.py --smoke` from the repo root, check it exits 0, return its output lines."""
    return run_benchmark(repo_root, "incremental.py", "--smoke", *args)


def check_report(lines: list[str]) -> None:
    """Every run is in the table, the update embedded exactly the 2 added images in place, every check held."""
    for run in RUNS:
        assert all(re.fullmatch(r"\d+\.\d+", cell) for cell in table_cells(lines, run)[4:]), run
    assert table_cells(lines, "full rebuild")[1:4] == ["202", "202", "built"]
    assert table_cells(lines, "add 1%")[1:4] == ["202", "2", "in place"]
    assert table_cells(lines, "no change")[2] == "0"
    checks = [line for line in lines if line.startswith("check: ")]
    assert len(checks) >= 5 and all(line.endswith(": yes") for line in checks)
    assert any(line.startswith("machine: ") for line in lines)
    assert any("not meaningful" in line for line in lines[:-1])
    assert lines[-1].startswith("summary: adding 2 images to 200: ")


def test_incremental_smoke_run_embeds_only_the_added_images_and_ends_with_a_summary(repo_root):
    check_report(run_incremental_smoke(repo_root))


def test_incremental_smoke_run_with_tflite(repo_root, tflite_model_path):
    check_report(run_incremental_smoke(repo_root, "--backbone", "tflite", "--weights", str(tflite_model_path)))
