"""The memory and query-latency benchmarks still run: their smoke runs, in subprocesses as a person would run them."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark

QUERY_STEPS = [
    "seed path: decode", "ours: search_image", "decode: load_image", "embed: embedder.embed",
    "search: SearchIndex.search", "seed's embed: model.predict", "seed's search: FAISS index.search",
]


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


def test_query_latency_smoke_run_times_each_step_and_ends_with_a_summary(repo_root):
    lines = run_smoke(repo_root, "query_latency.py")
    for step in QUERY_STEPS:
        (row,) = [line for line in lines if line.startswith("|") and step in line]
        assert re.search(r"\|\s*\d+\.\d\s*\|\s*\d+\.\d\s*\|$", row), step
    check_common(lines)
    assert re.match(r"summary: one query, p50 ours vs seed path: \d+ vs \d+ ms at 1,000 vectors ", lines[-1])
