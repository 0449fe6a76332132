"""The benchmark scripts still run: the smoke runs CI does, in subprocesses as a person would run them.

The subprocesses inherit the session's $IMAGESEARCH_CACHE (conftest), so the first of them measures `auto`
and converts ResNet50 to LiteRT, as a fresh machine would; the next ones find both cached.
"""

from __future__ import annotations

import re

import pytest

from imagesearch.runtimes import RUNTIMES, unavailable

from benchmark_runs import run_benchmark, table_cells

#: A runtime's name, as `auto` reports the one it picked.
PICKED = "(" + "|".join(re.escape(runtime) for runtime in RUNTIMES) + ")"
NUMBER = r"\d+\.\d+"
COSINE, SHARE = r"[01]\.\d{6}", r"[01]\.\d{3}"


def available() -> list[str]:
    return [runtime for runtime in RUNTIMES if unavailable(runtime) is None]


def run_extraction_smoke(repo_root, *args: str) -> list[str]:
    """Run `python benchmarks/extraction.py --smoke` from the repo root, check it exits 0, return its output lines."""
    return run_benchmark(repo_root, "extraction.py", "--smoke", *args)


def test_extraction_smoke_run_times_every_runtime_and_auto_and_ends_with_a_summary(repo_root):
    lines = run_extraction_smoke(repo_root)
    timed = [re.escape("seed loop"), r"decode only \(reference\)"]
    for runtime in available():
        timed += [rf"model alone \({re.escape(runtime)}\)", rf"pipeline \({re.escape(runtime)}\)"]
    for mode in [*timed, rf"pipeline \(auto → {PICKED}\)"]:
        cells = table_cells(lines, mode)
        assert cells[1] == "8" and all(re.fullmatch(NUMBER, cell) for cell in cells[2:4]), cells
    assert table_cells(lines, r"model alone \(tensorflow\)")[5:] == ["reference", "reference"]
    for runtime in available()[1:]:  # the others' fidelity against tensorflow, computed by the script
        cells = table_cells(lines, rf"model alone \({re.escape(runtime)}\)")
        assert re.fullmatch(COSINE, cells[5]) and re.fullmatch(SHARE, cells[6]), cells
        assert any(line.startswith(f"fidelity: {runtime} against tensorflow") for line in lines)
    (picked,) = re.findall(rf"auto picked {PICKED} for batches", "\n".join(lines))
    assert any(line.startswith("check: each runtime's modes return the same embeddings") for line in lines)
    for against in ("tensorflow's model alone", f"{picked}'s model alone", "the fastest runtime's pipeline"):
        assert any(line.startswith(f"pipeline (auto → {picked}) / {against}") for line in lines), against
    assert any(line.startswith("machine: ") for line in lines)
    assert any("not meaningful" in line for line in lines[:-1])
    assert re.match(rf"summary: pipeline \(auto → {picked}\) {NUMBER} img/s = {NUMBER}x tensorflow's model alone, ",
                    lines[-1])
    assert not any(line.startswith("summary: ") for line in lines[:-1])


def test_extraction_smoke_run_times_only_the_runtimes_asked_for(repo_root):
    lines = run_extraction_smoke(repo_root, "--runtimes", "tensorflow")
    (picked,) = re.findall(rf"auto picked {PICKED} for batches", "\n".join(lines))
    rows = {line.split("|")[1].strip() for line in lines if line.startswith("| model alone")}
    assert rows == {f"model alone ({runtime})" for runtime in {"tensorflow", picked}}  # and auto's, to compare with
    assert lines[-1].startswith(f"summary: pipeline (auto → {picked}) ")


def test_extraction_smoke_run_with_tflite_marks_the_predict_loop_not_applicable(repo_root, tflite_model_path):
    lines = run_extraction_smoke(repo_root, "--backbone", "tflite", "--weights", str(tflite_model_path))
    assert "n/a" in table_cells(lines, "seed loop", whole=False)[0]
    for mode in ("pipeline", "model alone"):  # one model file, as stored: no runtimes, no auto
        assert re.fullmatch(NUMBER, table_cells(lines, mode)[-1])
    assert not any("auto" in line for line in lines if line.startswith("|"))
    assert re.match(rf"summary: pipeline {NUMBER} img/s = {NUMBER}x the model alone ", lines[-1])


def test_query_latency_smoke_run_times_every_runtime_and_auto_and_ends_with_a_summary(repo_root):
    lines = run_benchmark(repo_root, "query_latency.py", "--smoke")
    p50_p95 = r"\d+\.\d"  # milliseconds with one decimal
    steps = [re.escape("seed path: decode + predict + search"), re.escape("decode: load_image"),
             re.escape("search: SearchIndex.search"), rf"ours \(auto → {PICKED}\): search_image"]
    for runtime in available():
        steps += [rf"ours \({re.escape(runtime)}\): search_image", rf"embed \({re.escape(runtime)}\): embedder.embed"]
    for step in steps:
        cells = table_cells(lines, step)
        assert len(cells) == 3 and all(re.fullmatch(p50_p95, cell) for cell in cells[1:]), cells
    assert table_cells(lines, "tensorflow")[1:3] == ["reference", "reference"]
    for runtime in available()[1:]:
        cells = table_cells(lines, re.escape(runtime))  # fidelity, and the top-5 of the seed path it finds
        assert re.fullmatch(COSINE, cells[1]) and all(re.fullmatch(SHARE, cell) for cell in cells[2:]), cells
    checks = [line for line in lines if line.startswith("check: ")]
    assert len(checks) == 2 and all(line.endswith(": yes") for line in checks)
    assert any("not meaningful" in line for line in lines[:-1])
    assert re.match(rf"summary: one query, p50 ours vs seed path: \d+ vs \d+ ms at 1,000 vectors \(\d\.\d\d\); "
                    rf"ours = auto → {PICKED}; target <= 0\.4: ", lines[-1])
    assert not any(line.startswith("summary: ") for line in lines[:-1])


def test_backbones_smoke_run_measures_each_backbone_in_a_table_and_ends_with_a_summary(repo_root):
    lines = run_benchmark(repo_root, "backbones.py", "--smoke")
    dims = {"resnet50": "2048", "efficientnetv2b0": "1280"}
    for backbone, dim in dims.items():
        cells = table_cells(lines, re.escape(backbone))
        assert len(cells) == 11, cells
        assert cells[1] == dim and cells[2] == str(4 * int(dim)), cells  # float32 vectors
        speeds, times = cells[3:5], cells[5:9]  # img/s; one image ms, build s, first call s, peak RSS MiB
        assert all(re.fullmatch(r"\d+\.\d", cell) and float(cell) > 0 for cell in speeds), cells
        assert all(re.fullmatch(r"\d+(\.\d)?", cell) for cell in times) and float(cells[8]) > 0, cells
        assert float(cells[9]) == round(4 * int(dim) * 1e6 / 2**30, 2) and float(cells[10]) > 0, cells
    rows = [line.split("|")[1].strip() for line in lines[1:] if line.startswith("| ")]
    assert rows == ["backbone", *dims], rows  # the header, then one row per backbone: no other, none failed
    checks = [line for line in lines if line.startswith("check: ")]
    assert len(checks) == 4 and all(line.endswith(": yes") for line in checks), checks
    (ratio,) = [line for line in lines if line.startswith("efficientnetv2b0 / resnet50: ")]
    assert re.match(rf"efficientnetv2b0 / resnet50: pipeline {NUMBER}x, model alone {NUMBER}x the images/s", ratio)
    assert any(line.startswith("machine: ") for line in lines)
    assert any("not meaningful" in line for line in lines[:-1])
    assert re.match(rf"summary: end-to-end images/s against resnet50's {NUMBER}: efficientnetv2b0 {NUMBER}x; ",
                    lines[-1])
    assert not any(line.startswith("summary: ") for line in lines[:-1])


def test_ray_extraction_smoke_run_times_single_machine_and_ray_and_ends_with_a_summary(repo_root):
    pytest.importorskip("ray", reason="ray[data] is in requirements.txt: `make install` installs it")
    lines = run_benchmark(repo_root, "ray_extraction.py", "--smoke")
    for mode in ("single machine", "Ray, 1 worker", "Ray, 2 workers"):
        cells = table_cells(lines, re.escape(mode))
        assert len(cells) == 9 and cells[1] == "24", cells
        assert all(re.fullmatch(NUMBER, cell) for cell in cells[2:4]) and re.fullmatch(rf"{NUMBER}x", cells[4]), cells
    assert table_cells(lines, "single machine")[4] == "1.00x"
    checks = [line for line in lines if line.startswith("check: ")]
    assert [check.split(" equals ")[0] for check in checks] == ["check: Ray, 1 worker", "check: Ray, 2 workers"]
    assert all("the single-machine result of the same 24 files" in check for check in checks), checks
    target = rf"target: Ray, 1 worker / single machine at 24 images: {NUMBER}x, target >= 0\.8: (met|NOT met)"
    assert any(re.fullmatch(target, line) for line in lines)
    assert any(line.startswith("projection (on paper): ") for line in lines)
    assert any(line.startswith("machine: ") for line in lines)
    assert any("not meaningful" in line for line in lines[:-1])
    assert re.match(rf"summary: Ray 1 worker {NUMBER} img/s = {NUMBER}x single machine {NUMBER} img/s "
                    r"\(target >= 0\.8: (met|NOT met)\), 2 workers .*; results equal \(", lines[-1])
    assert not any(line.startswith("summary: ") for line in lines[:-1])
