"""The memory benchmark still runs: its smoke run, in a subprocess as a person would run it (query_latency.py's is in
test_benchmarks.py)."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark


def run_smoke(repo_root, script: str) -> list[str]:
    """Run `python benchmarks/<script> --smoke` from the repo root, check it exits 0, return its output lines."""
    return run_benchmark(repo_root, script, "--smoke")


def check_common(lines: list[str]) -> None:
    """The machine is printed, every check held, the run says it is a smoke run, and it ends with one summary."""
    checks = [line for line in lines if line.startswith("check: ")]
    assert checks and all(line.endswith(": yes") for line in checks)
    assert any(line.startswith("machine: ") for line in lines)
    assert any("not meaningful" in line for line in lines[:-1])
    assert lines[-1].startswith("summary: ") and not any(line.startswith("summary: ") for line in lines[:-1])


def test_memory_smoke_run_measures_both_steps_of_each_build_and_ends_with_a_summary(repo_root):
    lines = run_smoke(repo_root, "memory.py")
    for count in (40, 200):
        (row,) = [line for line in lines if re.match(rf"\|\s*{count}\s*\|", line)]
        number = r"\s*\d+(\.\d)?\s*\|"
        assert re.fullmatch(rf"\|\s*\d+\s*\|({number}){{7}}", row), row
    assert any(line.startswith("extract: peak RSS grew") for line in lines)
    assert any(line.startswith("index: peak RSS grew") for line in lines)
    check_common(lines)
    assert re.match(r"summary: peak RSS of extraction .* ratio \d+\.\d\d, target <= 1\.2: (met|NOT met); ", lines[-1])
