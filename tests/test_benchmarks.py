"""The benchmark scripts still run: the smoke runs CI does, in subprocesses as a person would run them."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark

MODES = ["seed loop", "pipeline", "model alone"]


def run_extraction_smoke(repo_root, *args: str) -> list[str]:
    """Run `python benchmarks/extraction.py --smoke` from the repo root, check it exits 0, return its output lines."""
    return run_benchmark(repo_root, "extraction.py", "--smoke", *args)


def table_row(lines: list[str], mode: str) -> str:
    """The markdown table row of `mode`."""
    (row,) = [line for line in lines if re.match(rf"\|\s*{mode}\b", line)]
    return row


def test_extraction_smoke_run_times_the_three_modes_and_ends_with_a_summary(repo_root):
    lines = run_extraction_smoke(repo_root)
    for mode in MODES:
        assert re.search(r"\|\s*8\s*\|\s*\d+\.\d+\s*\|\s*\d+\.\d+\s*\|$", table_row(lines, mode)), mode
    assert any(line.startswith("machine: ") for line in lines)
    assert any("not meaningful" in line for line in lines[:-1])
    assert lines[-1].startswith("summary: pipeline ")


def test_extraction_smoke_run_with_tflite_marks_the_predict_loop_not_applicable(repo_root, tflite_model_path):
    lines = run_extraction_smoke(repo_root, "--backbone", "tflite", "--weights", str(tflite_model_path))
    assert "n/a" in table_row(lines, "seed loop")
    assert re.search(r"\d+\.\d+\s*\|$", table_row(lines, "pipeline"))
    assert lines[-1].startswith("summary: pipeline ")
