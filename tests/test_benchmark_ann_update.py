"""The index-update benchmark still runs: its smoke run, in a subprocess as a person would run it."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark, table_cells

FIGURE = r"\d+\.\d{3}"


def test_ann_update_smoke_run_grows_removes_and_ends_with_a_rule(repo_root):
    lines = run_benchmark(repo_root, "ann_update.py", "--smoke", timeout=600)
    assert any(line.startswith("machine: ") for line in lines)
    assert any(line.startswith("code: commit ") for line in lines)
    assert any(line.startswith("| growth | vectors | in-place recall@10 |") for line in lines)
    for growth, vectors in (("1x", "2,000"), ("2x", "4,000")):
        cells = table_cells(lines, growth)
        assert len(cells) == 8, cells
        assert cells[1] == vectors
        assert re.fullmatch(r"k_factor=\d+,nprobe=\d+", cells[4]), cells  # the retrained index's tuned parameters
        for recall in (cells[2], cells[5], cells[7]):
            assert re.fullmatch(FIGURE, recall) and 0.0 <= float(recall) <= 1.0, cells
        assert all(re.fullmatch(FIGURE, cell) and float(cell) > 0 for cell in (cells[3], cells[6])), cells
    # At 1x the retrained index is the base itself: the same parameters find the same answers.
    base = table_cells(lines, "1x")
    assert base[2] == base[5]
    assert any(line.startswith("rule today: RETRAIN_GROWTH ") for line in lines)
    checks = [line for line in lines if line.startswith("check: ")]
    assert len(checks) == 6 and all(line.endswith(": yes") for line in checks), checks
    assert lines[-1].startswith("summary: in place ")
    assert re.search(r"RETRAIN_GROWTH", lines[-1])
    assert re.search(r"\(PCAR32,IVF32,PQ16x4 on 2,000 64-d vectors grown to 1x, 2x, .*SMOKE RUN, figures not "
                     r"meaningful\)$", lines[-1])
