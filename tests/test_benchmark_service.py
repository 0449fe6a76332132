"""The service's load benchmark still runs: its smoke run, in a subprocess as a person would run it."""

from __future__ import annotations

import re

from benchmark_runs import run_benchmark, table_cells


def test_service_load_smoke_run_serves_every_phase_without_errors_and_ends_with_a_summary(repo_root):
    lines = run_benchmark(repo_root, "service_load.py", "--smoke")
    for phase in ("one client", "2 clients", r"2 clients \+ adding"):
        name, requests, rate, p50, p99, errors = table_cells(lines, phase)
        assert int(requests) > 0 and float(rate) > 0 and float(p99) >= float(p50) > 0 and errors == "0", name
    assert [line for line in lines if line.startswith("check: ")] == [
        "check: no request failed: yes", "check: every added image is served: yes"]
    assert any(re.match(r"one client, search by upload: p50 [\d.]+ ms against search_image in-process", line)
               for line in lines)
    assert re.match(r"summary: [\d.]+ requests/s with 2 clients, p50 \d+ ms, p99 \d+ ms, 0 errors in all; ", lines[-1])
