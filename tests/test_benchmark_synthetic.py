"""The synthetic embeddings of benchmarks/synthetic.py, and the realism benchmark's smoke run that compares them."""

from __future__ import annotations

import json
import re
import tracemalloc

import numpy as np
import pytest

from benchmarks import synthetic
from benchmarks.synthetic import Params, item_ids, load_store, make_vectors, queries, query_rows, write_vectors

from benchmark_runs import run_benchmark
from conftest import SHARED_MODEL

#: A small world, quick to make; blocks of 96 rows, so shards of 250 or 700 rows cut blocks in two.
SMALL = Params(rank=32, classes=64, subclusters=4, edit_rank=2, shared_edits=4, block_rows=96)


def read_shards(paths) -> np.ndarray:
    return np.concatenate([np.load(path) for path in paths])


def test_a_larger_collection_starts_with_the_rows_of_a_smaller_one_whatever_the_shard_size(tmp_path):
    small = write_vectors(tmp_path / "small", 1000, dim=48, seed=3, shard_rows=250, params=SMALL)
    large = write_vectors(tmp_path / "large", 2500, dim=48, seed=3, shard_rows=700, params=SMALL)
    assert [len(np.load(path)) for path in small] == [250] * 4
    assert [len(np.load(path)) for path in large] == [700, 700, 700, 400]
    assert np.array_equal(read_shards(large)[:1000], read_shards(small))
    assert np.array_equal(read_shards(small), make_vectors(1000, 48, 3, SMALL))


def test_the_same_arguments_give_the_same_vectors_and_another_seed_others(tmp_path):
    first = read_shards(write_vectors(tmp_path / "a", 300, dim=16, seed=1, params=SMALL))
    again = read_shards(write_vectors(tmp_path / "b", 300, dim=16, seed=1, params=SMALL))
    other = read_shards(write_vectors(tmp_path / "c", 300, dim=16, seed=2, params=SMALL))
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_shards_are_plain_float32_npy_files_of_non_negative_rows(tmp_path):
    paths = write_vectors(tmp_path, 500, dim=24, seed=0, shard_rows=200, params=SMALL)
    assert [path.name for path in paths] == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    for path, rows in zip(paths, [200, 200, 100]):
        vectors = np.load(path)  # np.load without allow_pickle: a plain array file
        assert vectors.shape == (rows, 24) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
        assert np.isfinite(vectors).all() and (vectors >= 0).all()
    vectors = read_shards(paths)
    assert 0 < (vectors == 0).mean() < 0.5  # thresholded like ReLU features, but mostly active
    assert len(np.unique(vectors, axis=0)) == 500
    assert load_store(tmp_path) == synthetic.Store(paths, 500, 24)


def test_a_folder_with_the_same_shards_is_reused_and_any_other_is_rewritten(tmp_path):
    paths = write_vectors(tmp_path, 300, dim=16, seed=0, shard_rows=128, params=SMALL)
    written = {path: path.stat().st_mtime_ns for path in paths}
    description = json.loads((tmp_path / synthetic.DESCRIPTION).read_text())
    assert description["count"] == 300 and description["params"] == SMALL.to_dict()

    assert write_vectors(tmp_path, 300, dim=16, seed=0, shard_rows=128, params=SMALL) == paths
    assert {path: path.stat().st_mtime_ns for path in paths} == written  # reused, not rewritten

    reference = read_shards(paths)
    with open(paths[1], "r+b") as file:  # a damaged shard: the wrong size
        file.truncate(100)
    write_vectors(tmp_path, 300, dim=16, seed=0, shard_rows=128, params=SMALL)
    assert np.array_equal(read_shards(paths), reference)

    other = write_vectors(tmp_path, 200, dim=16, seed=5, shard_rows=128, params=SMALL)
    assert sorted(tmp_path.glob("shard-*")) == other and load_store(tmp_path).rows == 200


def test_no_description_means_no_complete_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete synthetic vectors"):
        load_store(tmp_path)


def test_writing_holds_a_few_blocks_in_memory_not_the_whole_collection(tmp_path):
    params = Params(rank=32, classes=64, subclusters=4, edit_rank=2, shared_edits=4, block_rows=256)
    count, dim = 20_000, 256  # 20 MB of vectors, blocks of 256 KB
    tracemalloc.start()
    try:
        write_vectors(tmp_path, count, dim=dim, seed=0, shard_rows=5000, params=params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < count * dim * 4 / 5, f"peak {peak / 2**20:.1f} MiB"
    assert load_store(tmp_path).rows == count


def test_queries_are_new_photos_of_items_in_the_collection():
    base = make_vectors(2000, 64, 0, SMALL)
    found = queries(200, 64, 0, among=2000, params=SMALL)
    assert found.shape == (200, 64) and found.dtype == np.float32 and (found >= 0).all()
    assert np.array_equal(found, queries(200, 64, 0, among=2000, params=SMALL))
    distances = ((found[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)
    assert distances.min() > 0  # none is a row of the collection
    items = item_ids(2000, 0, SMALL)
    shown = items[query_rows(200, 0, among=2000)]
    nearest = items[distances.argmin(axis=1)]
    assert (nearest == shown).mean() > 0.5  # mostly, the nearest row shows the same thing


def test_rows_come_in_groups_of_near_duplicates():
    items = item_ids(5000, 0, SMALL)
    assert np.all(np.diff(items) >= 0)  # a group's rows are consecutive
    sizes = np.unique(items, return_counts=True)[1]
    assert 5 < sizes.mean() < 15 and sizes.min() == 1 and sizes.max() > 20  # geometric, mean 10 (cut at blocks)


def test_default_vectors_look_like_relu_features():
    vectors = make_vectors(1000, 256, 0)
    assert 0.1 < (vectors == 0).mean() < 0.25
    centred = vectors - vectors.mean(axis=0)
    variances = np.linalg.svd(centred, compute_uv=False) ** 2
    assert variances[:10].sum() / variances.sum() > 0.15  # low intrinsic dimension, not an isotropic blob


# --- benchmarks/realism.py --smoke ---------------------------------------------------------------------------------


def table_rows(lines: list[str], header: str) -> list[list[str]]:
    """The cells of the rows of the markdown table whose first header cell is `header`, after the first such table."""
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{header}\s*\|", line))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_realism_smoke_run_prints_the_recall_and_statistics_tables_and_a_summary(repo_root, tmp_path):
    # exits 0 even where the claim fails: smoke figures
    lines = run_benchmark(repo_root, "realism.py", "--smoke", "--cache", str(tmp_path / "cache"),
                          "--plot", str(tmp_path / "curves.png"))
    assert any(line.startswith("machine: ") for line in lines)
    assert any("SMOKE RUN" in line for line in lines)
    real = SHARED_MODEL.is_file()
    header = next(line for line in lines if line.startswith("| nprobe"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    expected = ["recall synthetic 1024", "recall synthetic 2048"]
    if real:
        expected = ["recall real", *expected, "recall synthetic 1024, real's groups"]
    assert columns == ["nprobe", *expected]
    rows = table_rows(lines, "nprobe")
    assert [row[0] for row in rows] == ["1", "2", "4", "8", "16", "32", "64"]  # nlist 64 at 300 vectors
    assert all(re.fullmatch(r"[01]\.\d{3}", cell) for row in rows for cell in row[1:])
    assert all(cell == "1.000" for cell in rows[-1][1:3])  # every list searched: IVF-Flat is exact
    statistics = {row[0]: row[1:] for row in table_rows(lines, "statistic")}
    assert {"zeros", "PC 1-10", "relative contrast", "local dimension", "within groups"} <= set(statistics)
    assert (tmp_path / "curves.png").stat().st_size > 0
    summary = lines[-1]
    assert summary.startswith("summary: ")
    assert "not meaningful" in summary
    if real:
        claim = r"summary: synthetic recall <= real recall \+ 0\.02 at every nprobe \(no easier\): "
        verdict = r"(holds|does NOT hold); synthetic 1024 IVF-Flat (yes|NO) \(at most [+-]\d\.\d{3}, nprobe \d+\)"
        assert re.match(claim + verdict, summary)
    else:
        assert summary.startswith("summary: no real embeddings here")
