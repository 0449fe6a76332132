"""Approximate indexes: each type built, saved, memory-mapped, updated and searched; recall as measured; `auto`.

The data are seeded 32-d vectors around 40 centres, each scaled by a random
factor so that the L2 and the cosine neighbours of a vector differ. IVF-PQ
uses 4-bit codes ("IVF16,PQ8x4": 16 centroids per sub-space, so 39 x 16
training vectors suffice, where 8-bit codes would need 39 x 256). Recall is
checked against a count made here by hand, never against the code's own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from typing import NamedTuple

import faiss
import numpy as np
import pytest

from imagesearch import ann, tuning
from imagesearch import index as index_module
from imagesearch.ann import IndexSpecError, SearchParams
from imagesearch.collection import Embeddings, save_embeddings
from imagesearch.embedders import EmbedderInfo
from imagesearch.index import (
    IndexChanges,
    SearchIndex,
    build_index,
    held_ids,
    load_index,
    load_previous_index,
    save_index,
)
from imagesearch.records import ImageRecord, Records
from imagesearch.vectors import VectorStore

DIM, COUNT, K = 32, 2000, 10
IVF_FLAT, IVF_PQ, FAST_SCAN, HNSW = "IVF16,Flat", "IVF16,PQ8x4", "PCAR16,IVF16,PQ16x4fs", "HNSW16"
NLIST = 16
FACTORIES = [pytest.param("Flat", id="Flat"), pytest.param(IVF_FLAT, id="IVF-Flat"),
             pytest.param(IVF_PQ, id="IVF-PQ"), pytest.param(FAST_SCAN, id="PCA-IVF-PQ-fast-scan"),
             pytest.param(HNSW, id="HNSW")]
APPROXIMATE = FACTORIES[1:]
METRICS = ["l2", "cosine"]
#: Search parameters given (not tuned) where a test is about something else than tuning: the most effort.
FULL_EFFORT = {"Flat": None, IVF_FLAT: f"nprobe={NLIST}", IVF_PQ: f"k_factor=8,nprobe={NLIST}",
               FAST_SCAN: f"k_factor=8,nprobe={NLIST}", HNSW: "efSearch=128"}


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """FAISS on one OpenMP thread in this module: as fast on data this small, and HNSW's graph, built in parallel
    otherwise, comes out the same every run. (On a busy machine, FAISS' spinning threads made training a PQ on
    1,024 vectors 200 times slower: 10 s against 0.05 s.) Threads started by the tests get OpenMP's default."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


# --- data ---------------------------------------------------------------------------------------------


def clustered(count: int, seed: int, dim: int = DIM) -> np.ndarray:
    """`count` vectors around 40 fixed centres (the same for every seed), each scaled by a factor in [0.5, 2]."""
    centres = np.random.default_rng(0).normal(size=(40, dim))  # overlapping clusters: one IVF list is not enough
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, len(centres), count)] + rng.normal(size=(count, dim))
    return (vectors * rng.uniform(0.5, 2.0, size=(count, 1))).astype(np.float32)


def records(ids, version: int = 0) -> list[ImageRecord]:
    """Records whose path follows the id ("img_00042.jpg"), so path order is id order."""
    return [ImageRecord(int(i), f"img_{int(i):05d}.jpg", 0, 0, f"{int(i):064x}", version) for i in ids]


def unsaved(vectors: np.ndarray) -> Embeddings:
    return Embeddings(vectors, records(range(len(vectors))), EmbedderInfo("test", "none", vectors.shape[1], (224, 224)),
                      "/nowhere", next_id=len(vectors))


def next_version(saved: Embeddings, drop=(), add: np.ndarray | None = None, change: dict | None = None) -> Embeddings:
    """The next saved version of `saved`'s collection: the images of ids `drop` gone, `add` new images, and the
    images of `change` (id -> vector) embedded again under their ids, as an extraction leaves them."""
    change = change or {}
    add = np.zeros((0, DIM), np.float32) if add is None else add
    version = saved.saved.version + 1
    kept = np.flatnonzero(~np.isin(saved.ids, [*drop, *change]))
    new_ids = [*change, *range(saved.next_id, saved.next_id + len(add))]
    new_vectors = np.concatenate([np.array(list(change.values()), np.float32).reshape(-1, DIM), add])
    following = Embeddings(
        VectorStore.concat([saved.store.subset(kept), VectorStore.from_array(new_vectors)], DIM),
        Records.concat([saved.records.take(kept), Records.from_items(records(new_ids, version))]),
        saved.embedder, saved.image_root, next_id=saved.next_id + len(add), saved=saved.saved,
        unchanged=np.arange(len(kept) + len(new_ids)) < len(kept),
    )
    return save_embeddings(following, saved.saved.directory)


def pair_distances(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Distances, in float64, from each query (n, d) to its vectors (n, m, d): squared L2, or 1 - cosine."""
    queries, vectors = queries.astype(np.float64)[:, None, :], vectors.astype(np.float64)
    if metric == "cosine":
        return 1 - (queries * vectors).sum(-1) / (np.linalg.norm(queries, axis=-1) * np.linalg.norm(vectors, axis=-1))
    return ((vectors - queries) ** 2).sum(-1)


def brute_force(queries: np.ndarray, vectors: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest rows of `vectors` for each query, and their distances, by NumPy in float64."""
    distances = pair_distances(queries, np.broadcast_to(vectors, (len(queries), *vectors.shape)), metric)
    rows = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, rows, axis=1), rows


def direct_recall(found, truth, k: int) -> float:
    """Recall@k counted by hand: of each query's k true ids, how many are among its first k found (-1: none).

    Every one of the k slots of `truth` counts; a -1 there (no such neighbour) is never found.
    """
    hits = sum(len({int(i) for i in row[:k] if i >= 0} & {int(i) for i in true[:k] if i >= 0})
               for row, true in zip(found, truth))
    return hits / sum(len(true[:k]) for true in truth)


def without_own(found: np.ndarray, own: np.ndarray, k: int) -> list[list[int]]:
    """Each row of ids without its query's own id, cut to k."""
    return [[int(i) for i in row if i != me][:k] for row, me in zip(found, own)]


def assert_found_first(first: np.ndarray, own: np.ndarray, factory: str) -> None:
    """Each query's own id is its first answer; HNSW may miss a few: its graph can leave a vector unreachable."""
    misses = int((np.asarray(first) != np.asarray(own)).sum())
    assert misses <= (len(own) // 50 if factory == HNSW else 0), f"{misses} of {len(own)} queries not found first"


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message.strip() == message and message, repr(message)
    assert "Error in " not in message and ".cpp" not in message, message  # no raw FAISS text
    return message


# --- every index type, built once per module -----------------------------------------------------------


class Built(NamedTuple):
    index: SearchIndex  # as built, in memory
    loaded: SearchIndex  # saved, then loaded memory-mapped
    folder: object  # where it was saved
    trained: np.ndarray  # the rows FAISS was trained on (seen by a spy on `ann.train`)
    held_out: np.ndarray | None  # the rows recall was measured on (seen by a spy on `tuning.held_out_rows`)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(COUNT, seed=1)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    """Vectors from outside the collection."""
    return clustered(100, seed=99)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, data) -> Embeddings:
    return save_embeddings(unsaved(data), tmp_path_factory.mktemp("ann") / "embeddings")


@pytest.fixture(scope="module")
def built(tmp_path_factory, collection):
    """`built(factory, metric)`: the collection indexed with auto-tuned parameters, saved and loaded (cached)."""
    cache: dict[tuple[str, str], Built] = {}

    def build(factory: str, metric: str) -> Built:
        if (factory, metric) not in cache:
            seen = {"trained": np.zeros(0, np.int64), "held_out": None}
            train, held_out_rows = ann.train, tuning.held_out_rows

            def spy_train(index, store, rows, metric):
                seen["trained"] = np.array(rows)
                return train(index, store, rows, metric)

            def spy_held_out_rows(*args, **kwargs):
                rows, held_out = held_out_rows(*args, **kwargs)
                seen["held_out"] = rows.copy()
                return rows, held_out

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(ann, "train", spy_train)
                patch.setattr(tuning, "held_out_rows", spy_held_out_rows)
                patch.setattr(tuning, "TIMED_QUERIES", 10)  # the choice is checked against the figures, not them
                search_index = build_index(collection, factory, metric=metric)
            folder = tmp_path_factory.mktemp("index")
            save_index(search_index, folder)
            cache[factory, metric] = Built(search_index, load_index(folder), folder, seen["trained"], seen["held_out"])
        return cache[factory, metric]

    return build


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("factory", FACTORIES)
def test_each_index_type_loads_memory_mapped_and_answers_as_it_did_in_memory(built, queries, data, factory, metric):
    made = built(factory, metric)
    assert made.loaded.read_only and not made.index.read_only
    assert not load_index(made.folder, mmap=False).read_only
    assert (made.loaded.factory, made.loaded.metric, made.loaded.params, made.loaded.tuning) == (
        factory, metric, made.index.params, made.index.tuning)
    for vectors in (queries, data[::40]):
        in_memory, mapped = made.index.search_ids(vectors, K), made.loaded.search_ids(vectors, K)
        assert np.array_equal(mapped[1], in_memory[1])
        np.testing.assert_allclose(mapped[0], in_memory[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("factory", FACTORIES)
def test_each_index_type_finds_a_vector_itself_first_with_sorted_distances_as_the_metric_defines(
    built, data, queries, factory, metric
):
    made = built(factory, metric)
    rows = np.arange(0, COUNT, 20)
    own = made.loaded.search_ids(data[rows], K)
    assert_found_first(own[1][:, 0], rows, factory)  # ids are rows here: paths, hence ids, are in row order
    first_paths = [hits[0].path for hits in made.loaded.search(data[rows], K)]
    assert first_paths == [f"img_{i:05d}.jpg" for i in own[1][:, 0]]
    for vectors, (distances, ids) in [(data[rows], own), (queries, made.loaded.search_ids(queries, K))]:
        assert (ids >= 0).all() and all(len(set(row)) == K for row in ids)
        assert (np.diff(distances, axis=1) >= 0).all()
        # The distances are those of the returned vectors, exactly (re-ranked where the index holds codes):
        # squared L2 between the raw vectors, or 1 - cosine.
        tolerance = 1e-5 if metric == "cosine" else 2e-3
        np.testing.assert_allclose(distances, pair_distances(vectors, data[ids], metric), rtol=1e-4, atol=tolerance)


@pytest.mark.parametrize("metric", METRICS)
def test_an_exact_index_returns_the_brute_force_neighbours_of_its_metric(built, data, queries, metric):
    _, ids = built("Flat", metric).loaded.search_ids(queries, K)
    _, truth = brute_force(queries, data, K, metric)
    assert np.array_equal(ids, truth)
    _, other = brute_force(queries, data, K, "cosine" if metric == "l2" else "l2")
    assert not np.array_equal(truth, other)  # the data tell the metrics apart


# --- recall --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 10])
def test_recall_at_k_equals_a_count_by_hand_on_random_ids_padded_with_minus_one(k):
    rng = np.random.default_rng(k)
    truth = np.array([rng.permutation(60)[:10] for _ in range(200)])
    found = np.array([rng.permutation(60)[:10] for _ in range(200)])
    found[:100] = truth[:100]  # half the rows share many ids with the truth, in another order below
    found[:50] = found[:50, ::-1]
    for row, width in enumerate(rng.integers(0, 11, 200)):
        found[row, width:] = -1  # fewer found than asked
    assert ann.recall_at_k(found, truth, k) == pytest.approx(direct_recall(found, truth, k), abs=1e-12)
    assert 0 < ann.recall_at_k(found, truth, k) < 1
    assert ann.recall_at_k(truth, truth, k) == 1.0
    assert ann.recall_at_k(np.full_like(truth, -1), truth, k) == 0.0


def test_recall_at_k_counts_no_hit_for_minus_one_padding_in_both_answers():
    truth = np.array([[3, 4, -1, -1], [5, 6, 7, 8]])
    found = np.array([[4, 3, -1, -1], [8, -1, -1, -1]])
    assert ann.recall_at_k(found, truth, 4) == pytest.approx(direct_recall(found, truth, 4)) == 3 / 8


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("factory", APPROXIMATE)
def test_tuning_records_the_recall_of_each_setting_on_held_out_rows_as_counted_by_hand(
    built, collection, data, factory, metric
):
    made = built(factory, metric)
    measured, held = made.index.tuning, made.held_out
    assert measured.held_out and len(held) == measured.queries == tuning.TUNING_QUERIES
    assert len(made.trained) == measured.trained_on and not np.isin(held, made.trained).any()
    assert measured.requested == factory and measured.k == K and measured.count == COUNT

    # The index was tuned before it held the held-out rows: they are searched among the others, as outside photos.
    others = np.setdiff1d(np.arange(COUNT), held)
    truth_distances, truth = ann.exact_search(collection.store.subset(others), collection.ids[others], data[held],
                                              K, metric)
    by_hand, _ = brute_force(data[held], data[others], K, metric)
    np.testing.assert_allclose(truth_distances, by_hand, rtol=1e-4, atol=2e-3)
    if not made.index.structure.can_remove:  # HNSW: no copy without the held-out rows to search again
        return
    without_held = faiss.clone_index(made.index.index)
    without_held.remove_ids(collection.ids[held].astype(np.int64))
    structure = made.index.structure
    for point in measured.curve:  # every setting tried, recomputed on a copy of the index as it was tuned
        _, found = ann.search(without_held, data[held], K, metric, SearchParams.parse(point.params),
                              made.index.vectors_of, structure.compressed)
        assert direct_recall(found, truth, K) == pytest.approx(point.recall, abs=1e-4), point
    chosen = [point for point in measured.curve if point.params == measured.params]
    assert str(made.index.params) == measured.params and chosen and chosen[0].recall == measured.recall
    reaching = [point for point in measured.curve if point.recall >= measured.target]
    assert reaching and measured.recall >= measured.target  # this easy data reaches 0.95
    assert measured.params == min(reaching, key=lambda point: point.ms_per_query).params
    assert "reach recall@10 0.95" in measured.reasons[-1]


# --- updates -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("factory", FACTORIES)
def test_an_update_adds_removes_and_replaces_vectors_in_place_except_hnsw_which_is_rebuilt(
    tmp_path, factory, metric
):
    first = save_embeddings(unsaved(clustered(COUNT, seed=1)), tmp_path / "embeddings")
    save_index(build_index(first, factory, metric=metric, params=FULL_EFFORT[factory]), tmp_path / "index")
    gone, added, changed = first.ids[3::20], clustered(300, seed=2), {7: clustered(1, seed=3)[0]}
    second = next_version(first, drop=gone, add=added, change=changed)
    previous = load_previous_index(tmp_path / "index", second)
    assert previous is not None and not previous.read_only  # read into memory, to be changed

    updated = build_index(second, factory, previous=previous, metric=metric, params=FULL_EFFORT[factory])
    if factory == HNSW:  # HNSW cannot remove a vector
        assert updated.changes == IndexChanges(added=len(second), removed=COUNT, rebuilt=True)
    else:
        assert updated.changes == IndexChanges(added=len(added) + 1, removed=len(gone) + 1, rebuilt=False)
    assert np.array_equal(held_ids(updated.index), np.sort(second.ids))
    save_index(updated, tmp_path / "index")
    reloaded = load_index(tmp_path / "index")  # refused if the index held other ids than the collection

    new_ids = np.arange(COUNT, COUNT + len(added))
    assert_found_first(reloaded.search_ids(added[:50], K)[1][:, 0], new_ids[:50], factory)
    distances, ids = reloaded.search_ids(changed[7], K)
    assert ids[0, 0] == 7 and distances[0, 0] == pytest.approx(0, abs=2e-3)  # its new vector, not its old one
    assert not np.isin(reloaded.search_ids(first.store.take(gone), K)[1], gone).any()
    if factory in ("Flat", IVF_FLAT):  # every list probed: exact search, the answers of a fresh exact index
        fresh = build_index(second, "Flat", metric=metric)
        outside = clustered(100, seed=99)
        assert np.array_equal(reloaded.search_ids(outside, K)[1], fresh.search_ids(outside, K)[1])


def test_hnsw_is_updated_in_place_when_images_are_only_added(tmp_path):
    first = save_embeddings(unsaved(clustered(COUNT, seed=1)), tmp_path / "embeddings")
    save_index(build_index(first, HNSW, params="efSearch=64", retrieval="plain"), tmp_path / "index")
    second = next_version(first, add=clustered(200, seed=2))
    updated = build_index(second, HNSW, previous=load_previous_index(tmp_path / "index", second), params="efSearch=64",
                          retrieval="plain")  # augmented, an added image is stored again: HNSW is rebuilt then
    assert updated.changes == IndexChanges(added=200, removed=0, rebuilt=False)
    assert np.array_equal(held_ids(updated.index), np.sort(second.ids))


@pytest.mark.parametrize("beyond", [-1, 0], ids=["just-below", "at-the-growth"])
def test_an_ivf_index_is_retrained_once_the_collection_grows_retrain_growth_fold(tmp_path, beyond):
    first = save_embeddings(unsaved(clustered(COUNT, seed=1)), tmp_path / "embeddings")
    original = build_index(first, IVF_FLAT, params=f"nprobe={NLIST}")
    save_index(original, tmp_path / "index")
    assert 0 < original.tuning.trained_on < COUNT == original.tuning.trained_at  # a sample, of a collection of COUNT
    grown = index_module.RETRAIN_GROWTH * COUNT + beyond
    second = next_version(first, add=clustered(grown - COUNT, seed=2))
    updated = build_index(second, IVF_FLAT, previous=load_previous_index(tmp_path / "index", second),
                          params=f"nprobe={NLIST}")
    assert len(updated) == grown
    assert updated.changes.rebuilt is (beyond == 0)


def test_an_index_just_retrained_is_updated_in_place_by_the_next_small_update(tmp_path):
    first = save_embeddings(unsaved(clustered(COUNT, seed=1)), tmp_path / "embeddings")
    original = build_index(first, IVF_FLAT, params="nprobe=4")
    save_index(original, tmp_path / "index")
    second = next_version(first, add=clustered((index_module.RETRAIN_GROWTH - 1) * COUNT, 2))
    retrained = build_index(second, IVF_FLAT, previous=load_previous_index(tmp_path / "index", second),
                            params="nprobe=4")
    assert retrained.changes.rebuilt
    save_index(retrained, tmp_path / "index")
    third = next_version(second, add=clustered(10, seed=3))
    updated = build_index(third, IVF_FLAT, previous=load_previous_index(tmp_path / "index", third), params="nprobe=4")
    assert not updated.changes.rebuilt  # 10 vectors more than the collection it was just trained on


def test_an_index_updated_in_place_with_new_params_still_records_what_it_was_trained_on(tmp_path):
    first = save_embeddings(unsaved(clustered(COUNT, seed=1)), tmp_path / "embeddings")
    original = build_index(first, IVF_FLAT, params="nprobe=4")
    save_index(original, tmp_path / "index")
    second = next_version(first, add=clustered(10, seed=2))
    updated = build_index(second, IVF_FLAT, previous=load_previous_index(tmp_path / "index", second), params="nprobe=8")
    assert not updated.changes.rebuilt and updated.tuning.params == "nprobe=8"
    assert updated.tuning.trained_on == original.tuning.trained_on > 0
    assert updated.tuning.trained_at == original.tuning.trained_at == COUNT


def test_a_memory_mapped_index_is_rebuilt_rather_than_updated(tmp_path):
    first = save_embeddings(unsaved(clustered(COUNT, seed=1)), tmp_path / "embeddings")
    save_index(build_index(first, IVF_FLAT, params="nprobe=4"), tmp_path / "index")
    mapped = load_index(tmp_path / "index")
    assert mapped.read_only
    second = next_version(first, add=clustered(10, seed=2))
    updated = build_index(second, IVF_FLAT, previous=mapped, params="nprobe=4")
    assert updated.changes.rebuilt and len(updated) == COUNT + 10


# --- search parameters ---------------------------------------------------------------------------------


def test_search_params_read_and_write_faiss_parameter_strings():
    params = SearchParams.parse(" nprobe=32, k_factor=8 ")
    assert str(params) == "k_factor=8,nprobe=32"
    assert SearchParams.parse(str(params)) == params
    assert (params.get("nprobe"), params.get("k_factor"), params.get("efSearch")) == (32, 8, None)
    assert params.merged("nprobe=4") == SearchParams.parse("k_factor=8,nprobe=4")
    assert params.merged(None) == params
    assert str(SearchParams.parse(None)) == str(SearchParams.parse("")) == ""


def test_params_given_to_one_search_override_the_saved_ones_for_that_search_only(built, collection, data):
    made = built(IVF_FLAT, "l2")
    index, saved = made.loaded, made.loaded.params
    ivf = ann.ivf_of(index.index)
    probed_by_default = ivf.nprobe
    held = made.held_out
    _, truth = ann.exact_search(collection.store, collection.ids, data[held], K + 1, "l2")
    truth = without_own(truth, collection.ids[held], K)

    def recall(params):
        return direct_recall(without_own(index.search_ids(data[held], K + 1, params)[1], held, K), truth, K)

    assert recall(f"nprobe={NLIST}") == 1.0  # every list probed: exact
    assert recall("nprobe=1") < 0.9 < tuning.DEFAULT_TARGET_RECALL <= recall(saved)  # one list misses neighbours
    assert recall(None) == recall(saved)
    assert index.params == saved and ivf.nprobe == probed_by_default  # nothing was set on the index


@pytest.mark.parametrize(
    ("factory", "params", "named"),
    [
        (IVF_FLAT, "nprob=4", "nprob"),
        (IVF_FLAT, "nprobe", "nprobe"),
        (IVF_FLAT, "nprobe=0", "nprobe"),
        (IVF_FLAT, "nprobe=-1", "nprobe"),
        (IVF_FLAT, "nprobe=2.5", "nprobe"),
        (IVF_FLAT, f"nprobe={NLIST + 1}", "nprobe"),
        (IVF_FLAT, "efSearch=32", "efSearch"),
        (IVF_FLAT, "k_factor=4", "k_factor"),  # IVF-Flat has exact distances: nothing to re-rank
        (HNSW, "nprobe=4", "nprobe"),
        ("Flat", "nprobe=4", "nprobe"),
    ],
)
def test_bad_search_params_are_refused_in_one_line(built, data, factory, params, named):
    with pytest.raises(IndexSpecError) as caught:
        built(factory, "l2").loaded.search_ids(data[:1], K, params=params)
    assert named in assert_one_line(caught.value)


def test_given_search_params_are_measured_saved_and_loaded_again(tmp_path, collection):
    search_index = build_index(collection, IVF_FLAT, params="nprobe=4")
    assert str(search_index.params) == search_index.tuning.params == "nprobe=4"
    assert search_index.tuning.target is None and 0 < search_index.tuning.recall <= 1
    save_index(search_index, tmp_path / "index")
    loaded = load_index(tmp_path / "index")
    assert loaded.params == SearchParams.parse("nprobe=4") and loaded.tuning == search_index.tuning


# --- auto ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "dim", "budget", "factory", "reason"),
    [
        (1000, 32, "4GB", r"Flat", "exact search"),
        (32_768, 2048, "4GB", r"Flat", "exact search"),  # EXACT_MAX_FLOATS exactly
        (32_769, 2048, "4GB", r"HNSW32", "HNSW: its graph and full vectors"),
        (100_000, 2048, "4GB", r"HNSW32", "HNSW: its graph and full vectors"),
        (1_000_000, 2048, "2GB", r"PCAR256,IVF(\d+),PQ128x4fs", "compressed IVF"),
        (10_000_000, 256, "2GB", r"IVF(\d+),PQ128x4fs", "compressed IVF"),
        (2_000_000, 128, "200MB", r"IVF(\d+),PQ128x4fs", "compressed IVF"),
    ],
)
def test_auto_chooses_exact_search_then_hnsw_then_ivf_pq_as_size_and_budget_require(count, dim, budget, factory,
                                                                                    reason):
    choice = tuning.choose(count, dim, tuning.parse_memory(budget))
    match = re.fullmatch(factory, choice.factory)
    assert match, choice
    assert reason in choice.reasons[-1]
    if match.groups():
        nlist = int(match[1])
        assert 4 * np.sqrt(count) <= nlist <= 16 * np.sqrt(count) and nlist <= count / 39
        assert count * ann.describe(choice.factory, dim).bytes_per_vector() <= tuning.parse_memory(budget)
        assert "HNSW would need" in choice.reasons[1]
    ann.describe(choice.factory, dim, count=count)  # a collection this size can train it


def test_auto_refuses_a_budget_not_even_a_compressed_index_fits_in_one_line():
    with pytest.raises(IndexSpecError) as caught:
        tuning.choose(10_000_000, 2048, tuning.parse_memory("100MB"))
    assert "raise the budget" in assert_one_line(caught.value)


@pytest.mark.parametrize("count", [1000, 5000, 20_000, 100_000, 1_000_000, 30_000_000])
def test_ivf_lists_are_in_faiss_recommended_range_where_the_collection_can_train_them(count):
    nlist = tuning.ivf_lists(count)
    assert nlist & (nlist - 1) == 0 and nlist <= count // ann.MIN_POINTS_PER_CENTROID  # a power of two it can train
    if count // ann.MIN_POINTS_PER_CENTROID >= 4 * np.sqrt(count):
        assert 4 * np.sqrt(count) <= nlist <= 16 * np.sqrt(count)
    else:  # too few vectors for 4·√N lists: as many as it can train
        assert nlist * 2 > count // ann.MIN_POINTS_PER_CENTROID


@pytest.mark.parametrize(("text", "bytes_"), [("2GB", 2 * 2**30), ("512MB", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                             ("100", 100), (4096, 4096)])
def test_memory_budgets_are_read_in_binary_units(text, bytes_):
    assert tuning.parse_memory(text) == bytes_


def test_auto_on_a_small_collection_is_exact_search_with_recall_1(collection):
    search_index = build_index(collection, "auto")
    assert search_index.factory == "Flat" and search_index.structure.exact
    assert search_index.tuning.recall == 1.0 and search_index.tuning.requested == "auto"
    assert search_index.tuning.reasons[0].startswith("exact search")


def test_auto_with_a_tight_memory_budget_builds_a_compressed_index_and_says_whether_it_reached_the_target(
    monkeypatch,
):
    monkeypatch.setattr(tuning, "EXACT_MAX_FLOATS", 0)  # exact search is "too slow" for any collection
    monkeypatch.setattr(tuning, "PQ_BYTES", 1)  # one-byte codes (two 4-bit sub-quantizers): the fastest to train
    count, dim, budget = 10_000, 16, 2**20
    vectors = clustered(count, seed=5, dim=dim)
    search_index = build_index(unsaved(vectors), "auto", memory_budget="1MB")
    structure = search_index.structure
    assert re.fullmatch(r"IVF\d+,PQ2x4fs", search_index.factory) and structure.compressed
    assert count * structure.bytes_per_vector() <= budget < count * ann.describe("HNSW32", dim).bytes_per_vector()
    measured = search_index.tuning
    assert measured.requested == "auto" and measured.target == tuning.DEFAULT_TARGET_RECALL
    assert "HNSW would need" in measured.reasons[1] and "compressed IVF" in measured.reasons[2]
    if measured.recall >= measured.target:
        assert "reach recall@10 0.95" in measured.reasons[-1]
    else:
        assert "no setting reached recall@10 0.95" in measured.reasons[-1]
    rows = np.arange(0, count, 500)
    assert np.array_equal(search_index.search_ids(vectors[rows], K)[1][:, 0], rows)


@pytest.mark.parametrize(("count", "dim", "budget"), [(4000, 32, "300KB"), (5000, 2048, "10MB")])
def test_what_auto_chooses_can_be_trained_by_the_collection_it_was_chosen_for(count, dim, budget):
    choice = tuning.choose(count, dim, tuning.parse_memory(budget))
    ann.describe(choice.factory, dim, count=count)


# --- bad factories, in one line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "count", "said"),
    [
        ("Bogus", 500, "cannot build a FAISS index from 'Bogus'"),
        ("IVF1024,Flat", 500, "needs at least 39936 vectors"),
        ("IVF4096,Flat", 5000, "needs at least 159744 vectors"),
        ("IVF16,PQ7", 500, "cannot build a FAISS index from 'IVF16,PQ7' for 32-d vectors"),
    ],
)
def test_a_bad_factory_is_refused_in_one_line_that_suggests_one_the_collection_can_train(factory, count, said):
    embeddings = unsaved(clustered(count, seed=6))
    with pytest.raises(IndexSpecError) as caught:
        build_index(embeddings, factory)
    message = assert_one_line(caught.value)
    assert said in message
    suggested = re.search(r"try '([^']+)'", message)[1]
    assert build_index(embeddings, suggested, params=None if suggested == "Flat" else "nprobe=1").factory == suggested


def test_an_unknown_metric_is_refused_in_one_line():
    with pytest.raises(IndexSpecError) as caught:
        build_index(unsaved(clustered(100, seed=6)), "Flat", metric="dot")
    assert "l2, cosine" in assert_one_line(caught.value)


@pytest.mark.parametrize("params", ["nprobe=0", "nprobe=4", "bogus"])
def test_params_an_exact_index_cannot_use_are_refused_when_it_is_built(params):
    with pytest.raises(IndexSpecError):
        build_index(unsaved(clustered(100, seed=6)), "Flat", params=params)


# --- the command line ----------------------------------------------------------------------------------


@pytest.fixture
def artifacts(tmp_path):
    """Artifacts holding a saved collection of 700 vectors (enough to train 16 lists), no index yet."""
    save_embeddings(unsaved(clustered(700, seed=4)), tmp_path / "artifacts" / "embeddings")
    return tmp_path / "artifacts"


def run_index(repo_root, artifacts, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagesearch", "index", "--artifacts", str(artifacts), *args],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_index_command_says_which_step_of_an_approximate_build_is_running(repo_root, artifacts):
    result = run_index(repo_root, artifacts, "--factory", IVF_FLAT)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.endswith(" ...")]
    assert steps[0].startswith(f"training {IVF_FLAT} on ") and steps[1].startswith("tuning the search parameters")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--factory", "Bogus"], "try 'Flat'"),
        (["--factory", "IVF1024,Flat"], "needs at least 39936 vectors"),
        (["--factory", IVF_FLAT, "--params", "nprobe=0"], "at least 1"),
        (["--factory", IVF_FLAT, "--params", "nprobe=99"], "more than the index's 16 lists"),
        (["--memory-budget", "lots"], "cannot read the memory budget 'lots'"),
    ],
)
def test_index_command_refuses_bad_input_with_exit_code_2_and_one_error_line(repo_root, artifacts, args, said):
    result = run_index(repo_root, artifacts, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (artifacts / "index" / "index.json").exists()


def test_index_command_builds_an_approximate_index_and_reports_its_measured_recall(repo_root, artifacts):
    result = run_index(repo_root, artifacts, "--factory", IVF_FLAT, "--metric", "cosine", "--params", "nprobe=4")
    assert result.returncode == 0, result.stderr
    assert re.search(r"recall@10 [01]\.\d{3} with nprobe=4 against exact search, on \d+ held-out vectors",
                     result.stdout), result.stdout
    loaded = load_index(artifacts / "index")
    assert (loaded.factory, loaded.metric, str(loaded.params), len(loaded)) == (IVF_FLAT, "cosine", "nprobe=4", 700)


# --- concurrency ---------------------------------------------------------------------------------------


def test_two_threads_searching_one_index_with_different_params_get_what_each_gets_alone(built, data):
    index = built(IVF_FLAT, "l2").loaded
    settings = ["nprobe=1", f"nprobe={NLIST}"]
    alone = {params: index.search_ids(data, K, params)[1] for params in settings}
    assert not np.array_equal(*alone.values())  # the two settings answer differently
    start, answers = threading.Barrier(len(settings)), {params: [] for params in settings}

    def searches(params: str) -> None:
        start.wait()
        for _ in range(15):
            answers[params].append(index.search_ids(data, K, params)[1])
            answers[params].append(index.search_ids(data[:1], K, params)[1])

    threads = [threading.Thread(target=searches, args=(params,)) for params in settings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for params in settings:
        assert len(answers[params]) == 30
        for batch, single in zip(answers[params][::2], answers[params][1::2]):
            assert np.array_equal(batch, alone[params]) and np.array_equal(single, alone[params][:1]), params
