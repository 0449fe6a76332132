"""The collection-scale benchmark still runs: a tiny run, in a subprocess as a person would run it."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark, table_cells

STEPS = [
    "open \\(load_embeddings\\)", "look up 1,000 ids", "look up 1,000 paths \\(row_of_path each\\)",
    "plan: 1% added, 1% removed", "save after adding 1%", "save after adding one image", "re-open",
    "format 3 at 300: write manifest.json", "format 3 at 300: json \\+ one object per record",
    "scan: list_files, 200 files", "scan: make_plan, first run",
]


def test_collection_scale_tiny_run_times_every_step_and_ends_with_a_summary(repo_root):
    lines = run_benchmark(repo_root, "collection_scale.py", "--count", "3000", "--reference-count", "300",
                          "--scan-count", "200")
    assert any(line.startswith("machine: ") for line in lines)
    assert any(line.startswith("| step ") for line in lines)
    for step in STEPS:
        assert re.fullmatch(r"\d+\.\d{3}", table_cells(lines, step, whole=False)[1]), step
    assert "3 files" in table_cells(lines, "save after adding one image", whole=False)[3]
    checks = [line for line in lines if line.startswith("check: ")]
    assert len(checks) >= 6 and all(line.endswith(": yes") for line in checks)
    assert len([line for line in lines if line.startswith("target: ")]) == 4
    assert any("one-image save writes <= 3 files: 3 files: met" in line for line in lines)
    assert lines[-1].startswith("summary: 3,000 images: open ")
    assert "SMOKE RUN, figures not meaningful" in lines[-1]
