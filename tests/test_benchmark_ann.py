"""The approximate-index benchmark still runs: its smoke run, in a subprocess as a person would run it."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark, table_cells

#: The smoke run's candidates at 3,000 vectors (64 IVF lists), and what `auto` picks there: exact search.
INDEXES = ["Flat", "IVF64,Flat", "HNSW32", "PCAR32,IVF64,PQ16x4", "IVF64,PQ8x4", r"auto \(Flat\)"]
FIGURE = r"\d+\.\d+|\d+"


def test_ann_smoke_run_measures_every_index_and_ends_with_a_summary(repo_root):
    lines = run_benchmark(repo_root, "ann_scale.py", "--smoke", timeout=600)
    assert any(line.startswith("machine: ") for line in lines)
    assert any(line.startswith("| index ") for line in lines)
    for index in INDEXES:
        cells = table_cells(lines, index)
        assert len(cells) == 10, index
        assert all(re.fullmatch(FIGURE, cell) for cell in cells[2:]), (index, cells)
        assert 0.0 <= float(cells[5]) <= 1.0
    assert table_cells(lines, "Flat")[5] == "1.000"  # exact search finds the exact answers
    assert re.fullmatch(r"nprobe=\d+", table_cells(lines, "IVF64,Flat")[1])
    assert re.fullmatch(r"k_factor=\d+,nprobe=\d+", table_cells(lines, "IVF64,PQ8x4")[1])
    assert float(table_cells(lines, "IVF64,PQ8x4")[4]) < float(table_cells(lines, "Flat")[4]) / 4  # codes, not vectors
    facts = [line for line in lines if line.startswith("check: ") and line.endswith((": yes", ": NO"))]
    assert len(facts) == 2 and all(line.endswith(": yes") for line in facts)
    targets = [line for line in lines if line.startswith("check: ") and line.endswith((": PASS", ": FAIL"))]
    assert len(targets) == 5
    assert any(line.startswith("targets at 1,000,000 vectors (this run's largest size is 3,000") for line in lines)
    assert lines[-1].startswith("summary: 3,000 vectors: Flat p50 ")
    assert re.search(r"\d of 5 targets PASS \(3,000 vectors, 64-d, .*SMOKE RUN, figures not meaningful\)$", lines[-1])
