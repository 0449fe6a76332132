"""The FAISS index: build, search, save and load; queries by indexed image and by outside image."""

from __future__ import annotations

import dataclasses
import json
import threading

import faiss
import numpy as np
import pytest

from imagesearch.ann import describe, training_rows
from imagesearch.collection import load_embeddings, save_embeddings
from imagesearch.evaluate import self_check
from imagesearch.images import ImageLoadError
from imagesearch.index import METADATA_FILE, build_index, load_index, save_index
from imagesearch.query import EmbedderMismatchError, check_compatible, search_image, search_indexed
from imagesearch.search_index import _faiss_threads
from imagesearch.storage import ArtifactError, DamagedStateError


def index_file(directory):
    """The FAISS file the committed metadata names."""
    return directory / json.loads((directory / METADATA_FILE).read_text())["index_file"]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def embeddings(make_embeddings, vectors):
    return make_embeddings(vectors, [f"dir/img_{row:02d}.jpg" for row in range(len(vectors))], image_root="/photos")


@pytest.fixture(scope="module")
def flat(embeddings):
    return build_index(embeddings, "Flat", retrieval="plain")  # squared L2 between raw vectors, checked by hand


@pytest.fixture
def saved_flat(tmp_path, embeddings):
    """A Flat index of the embeddings as saved in tmp_path/embeddings (an index is saved only from those)."""
    return build_index(save_embeddings(embeddings, tmp_path / "embeddings"), "Flat", retrieval="plain")


def brute_force_paths(vectors: np.ndarray, query: np.ndarray, paths: list[str], k: int) -> list[str]:
    order = np.argsort(((vectors - query) ** 2).sum(axis=1), kind="stable")
    return [paths[row] for row in order[:k]]


def test_build_flat_index_holds_every_vector_with_its_path(flat, embeddings):
    assert len(flat) == flat.index.ntotal == 50
    assert flat.index.d == 16
    assert flat.paths == embeddings.paths
    assert flat.embedder == embeddings.embedder
    assert (flat.factory, flat.image_root) == ("Flat", "/photos")


def test_every_indexed_vector_finds_itself_first(flat):
    check = self_check(flat)
    assert (check.checked, check.finds_itself, check.distance_zero, check.distances_sorted, check.twins) == (
        50, True, True, True, 0,
    )


@pytest.mark.parametrize("sample", [1, 7, 10_000])
def test_self_check_on_a_sample_checks_the_same_facts(flat, sample):
    check = self_check(flat, sample=sample)
    assert check.passed and check.checked == min(sample, 50)


def test_identical_twins_tie_at_distance_zero_and_are_counted_not_failed(make_embeddings, vectors):
    twins = vectors.copy()
    twins[1] = twins[0]  # two images with one vector: only one of them can come first for both
    twins[[7, 8, 9]] = twins[6]  # and three copies of another
    index = build_index(make_embeddings(twins, [f"img_{row:02d}.jpg" for row in range(len(twins))]), retrieval="plain")
    check = self_check(index, k=2)
    assert check.passed
    assert check.twins == 6  # 0 and 1; 6, 7, 8 and 9
    assert check.lines()[-1] == "6 of the 50 checked images have an identical twin (duplicates in the collection)"


def test_very_similar_images_are_not_counted_as_twins(make_embeddings, vectors):
    close = vectors.copy()
    close[1] = close[0] + np.float32(1e-3)  # squared distance 1.6e-5: a millionth of the squared norm, yet not equal
    index = build_index(make_embeddings(close, [f"img_{row:02d}.jpg" for row in range(len(close))]), retrieval="plain")
    check = self_check(index)
    assert check.passed and check.twins == 0


def test_self_check_notices_an_image_that_comes_back_second_behind_a_different_one(make_embeddings, vectors):
    class SwapsTheFirstTwo:  # stands in for an index that answers wrong: the second-nearest first
        def __init__(self, index):
            self.index, self.ntotal, self.d = index, index.ntotal, index.d

        def search(self, queries, k, params=None):
            distances, ids = self.index.search(queries, k)
            return distances[:, [1, 0, *range(2, k)]], ids[:, [1, 0, *range(2, k)]]

    paths = [f"img_{row:02d}.jpg" for row in range(len(vectors))]
    index = build_index(make_embeddings(vectors, paths), retrieval="plain")
    wrong = dataclasses.replace(index, index=SwapsTheFirstTwo(index.index))
    check = self_check(wrong)
    assert not check.finds_itself and not check.distances_sorted and not check.passed
    assert check.lines()[0] == "itself first (or tied with an identical twin): NO"


def test_search_returns_k_exact_nearest_sorted_by_distance(flat, vectors):
    results = flat.search(vectors[:5], k=7)
    assert len(results) == 5
    for query, hits in zip(vectors[:5], results):
        assert [hit.rank for hit in hits] == list(range(7))
        assert [hit.path for hit in hits] == brute_force_paths(vectors, query, flat.paths, 7)
        distances = [hit.distance for hit in hits]
        assert distances == sorted(distances)


def test_search_with_k_beyond_the_index_size_returns_every_image_once(flat, vectors):
    (hits,) = flat.search(vectors[0], k=80)
    assert len(hits) == 50
    assert sorted(hit.path for hit in hits) == sorted(flat.paths)


def test_a_single_query_and_a_batch_find_the_same_neighbours_and_leave_faiss_threads_as_they_were(flat, vectors):
    threads = faiss.omp_get_max_threads()
    batch = flat.search(vectors[:8], 5)
    assert [flat.search(vector, 5)[0] for vector in vectors[:8]] == batch
    assert faiss.omp_get_max_threads() == threads


def threads_in_a_new_thread() -> int:
    """How many OpenMP threads FAISS would use if called from a thread started now."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_faiss_threads_apply_inside_the_block_only_in_the_calling_thread_and_are_restored_after_an_error():
    before, elsewhere = faiss.omp_get_max_threads(), threads_in_a_new_thread()
    with pytest.raises(RuntimeError, match="inside"):
        with _faiss_threads(1):
            assert faiss.omp_get_max_threads() == 1
            assert threads_in_a_new_thread() == elsewhere  # per-thread: a concurrent search keeps its threads
            raise RuntimeError("inside")
    assert faiss.omp_get_max_threads() == before


def test_search_with_query_of_wrong_dimension_raises_value_error(flat):
    with pytest.raises(ValueError, match="8-d but the index holds 16-d"):
        flat.search(np.zeros(8, np.float32), k=3)


def test_id_of_and_vector_give_an_indexed_image_back(flat, vectors):
    assert flat.id_of("dir/img_07.jpg") == 7
    assert flat.path_of(7) == "dir/img_07.jpg"
    assert np.array_equal(flat.vector("dir/img_07.jpg"), vectors[7])


def test_id_of_an_unknown_path_raises_key_error(flat):
    with pytest.raises(KeyError, match="not in the index"):
        flat.id_of("dir/elsewhere.jpg")


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8"])
def test_save_then_load_index_answers_the_same(tmp_path, make_embeddings, factory):
    data = np.random.default_rng(1).normal(size=(200, 16)).astype(np.float32)  # enough to train IVF4
    embeddings = make_embeddings(data, [f"img_{row:03d}.jpg" for row in range(200)])
    original = build_index(save_embeddings(embeddings, tmp_path / "embeddings"), factory)
    written = save_index(original, tmp_path / "index")
    metadata = json.loads((tmp_path / "index" / METADATA_FILE).read_text())
    assert sorted(path.name for path in written) == sorted([metadata["index_file"], metadata["retrieval_file"],
                                                            METADATA_FILE])  # the default augments: its table
    loaded = load_index(tmp_path / "index")
    assert (loaded.paths, loaded.embedder, loaded.factory, loaded.image_root) == (
        original.paths, original.embedder, original.factory, original.image_root,
    )
    assert loaded.search(data[:10], k=5) == original.search(data[:10], k=5)


def test_approximate_ivf_index_trains_and_finds_each_vector_itself(make_embeddings):
    data = np.random.default_rng(2).normal(size=(200, 16)).astype(np.float32)
    ivf = build_index(make_embeddings(data, [f"img_{row:03d}.jpg" for row in range(200)]), "IVF4,Flat")
    assert ivf.index.is_trained
    assert len(ivf) == 200
    for row, hits in enumerate(ivf.search(data[:20], k=5)):
        assert hits[0].path == f"img_{row:03d}.jpg"  # a vector's own list is the one probed
        assert 1 <= len(hits) <= 5
        assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)


def test_a_large_collection_trains_on_a_bounded_seeded_sample_and_still_indexes_everything(make_embeddings):
    vectors = np.random.default_rng(3).normal(size=(1000, 16)).astype(np.float32)
    embeddings = make_embeddings(vectors, [f"img_{row:04d}.jpg" for row in range(1000)])
    rows = training_rows(len(vectors), describe("IVF4,Flat", 16))
    assert len(rows) == 4 * 64 and np.array_equal(rows, np.unique(rows))  # 64 per centroid, each row once
    assert np.array_equal(training_rows(len(vectors), describe("IVF4,Flat", 16)), rows)  # seeded: the same every time
    ivf = build_index(embeddings, "IVF4,Flat", params="nprobe=4")
    assert len(ivf) == 1000 and ivf.tuning.trained_on == 256
    assert [hits[0].path for hits in ivf.search(vectors, 1)] == embeddings.paths


def test_search_indexed_works_on_an_ivf_index(make_embeddings):
    data = np.random.default_rng(2).normal(size=(200, 16)).astype(np.float32)
    ivf = build_index(make_embeddings(data, [f"img_{row:03d}.jpg" for row in range(200)]), "IVF4,Flat")
    hits = search_indexed(ivf, "img_000.jpg", k=3, include_self=True)
    assert hits[0].path == "img_000.jpg"


def test_load_index_with_metadata_listing_another_number_of_images_raises_artifact_error(tmp_path, saved_flat):
    save_index(saved_flat, tmp_path / "index")
    metadata = json.loads((tmp_path / "index" / METADATA_FILE).read_text())
    metadata["count"] -= 1
    (tmp_path / "index" / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ArtifactError, match="rebuild the index from the embeddings"):
        load_index(tmp_path / "index")


@pytest.mark.parametrize("removed", ["index file", "metadata file"])
def test_load_index_with_a_missing_file_raises_artifact_error(tmp_path, saved_flat, removed):
    save_index(saved_flat, tmp_path / "index")
    (index_file(tmp_path / "index") if removed == "index file" else tmp_path / "index" / METADATA_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_index(tmp_path / "index")


def test_an_index_of_embeddings_that_are_not_saved_is_not_saved(tmp_path, flat):
    with pytest.raises(ArtifactError, match="save the embeddings first"):
        save_index(flat, tmp_path / "index")
    assert not (tmp_path / "index" / METADATA_FILE).exists()


def test_load_index_of_embeddings_saved_since_says_to_update_it(tmp_path, saved_flat):
    save_index(saved_flat, tmp_path / "index")
    loaded = load_embeddings(tmp_path / "embeddings")
    fewer = dataclasses.replace(loaded, store=loaded.store.subset([0, 1, 2]), records=loaded.records.take([0, 1, 2]))
    save_embeddings(fewer, tmp_path / "embeddings")  # the next version of the same collection
    with pytest.raises(ArtifactError, match="indexes version 1 of the embeddings .* at version 2 now; update"):
        load_index(tmp_path / "index")


def test_load_index_holding_other_ids_than_its_collection_is_damaged(tmp_path, saved_flat, vectors):
    save_index(saved_flat, tmp_path / "index")
    other = faiss.IndexIDMap2(faiss.IndexFlatL2(16))
    other.add_with_ids(vectors, np.arange(1, 51, dtype=np.int64))  # as many vectors, under ids shifted by one
    faiss.write_index(other, str(index_file(tmp_path / "index")))
    with pytest.raises(DamagedStateError, match="not under the ids of the 50 images"):
        load_index(tmp_path / "index")


# --- queries --------------------------------------------------------------------------------------


def test_load_index_of_a_corrupt_index_file_raises_artifact_error(tmp_path, saved_flat):
    save_index(saved_flat, tmp_path / "index")
    index_file(tmp_path / "index").write_bytes(b"not a faiss index")
    with pytest.raises(ArtifactError, match="not a readable FAISS index"):
        load_index(tmp_path / "index")


def test_search_indexed_excludes_the_query_image_by_default(flat):
    hits = search_indexed(flat, "dir/img_03.jpg", k=4)
    assert len(hits) == 4
    assert "dir/img_03.jpg" not in [hit.path for hit in hits]
    assert [hit.rank for hit in hits] == [0, 1, 2, 3]
    (with_self,) = flat.search(flat.vector("dir/img_03.jpg"), k=5)
    assert [hit.path for hit in hits] == [hit.path for hit in with_self[1:]]


def test_search_indexed_with_include_self_returns_the_query_first(flat):
    hits = search_indexed(flat, "dir/img_03.jpg", k=4, include_self=True)
    assert len(hits) == 4
    assert hits[0].path == "dir/img_03.jpg"
    assert hits[0].distance == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize(
    "as_source", [pytest.param(lambda path: path, id="path"), pytest.param(lambda path: path.read_bytes(), id="bytes")]
)
@pytest.mark.parametrize("query", ["a/one.jpg", "b/four.png"])
def test_search_image_finds_the_identical_image_first(tiny_collection, random_resnet, as_source, query):
    index = tiny_collection.index
    hits = search_image(index, random_resnet, as_source(tiny_collection.root / query), k=3)
    assert [hit.rank for hit in hits] == [0, 1, 2]
    assert hits[0].path == query
    assert hits[0].distance <= 1e-4 * float((index.vector(query) ** 2).sum())  # about 0, relative to scale
    assert hits[1].distance > hits[0].distance


def test_search_image_with_non_image_bytes_raises_image_load_error(tiny_collection, random_resnet):
    with pytest.raises(ImageLoadError) as caught:
        search_image(tiny_collection.index, random_resnet, b"%PDF-1.4 not an image", k=3)
    assert caught.value.reason


def test_check_compatible_accepts_the_embedder_that_built_the_index(tiny_collection, random_resnet):
    check_compatible(tiny_collection.index, random_resnet)  # no exception


@pytest.mark.parametrize(
    "change",
    [{"weights": "imagenet"}, {"weights": "random(seed=1)"}, {"backbone": "tflite:other.tflite"}],
    ids=["imagenet-weights", "other-seed", "other-backbone"],
)
def test_check_compatible_rejects_an_index_built_by_another_embedder(tiny_collection, random_resnet, change):
    index = tiny_collection.index
    other = dataclasses.replace(index, embedder=dataclasses.replace(index.embedder, **change))
    with pytest.raises(EmbedderMismatchError, match="rebuild the index"):
        check_compatible(other, random_resnet)
    with pytest.raises(EmbedderMismatchError):  # a query is refused before anything is embedded
        search_image(other, random_resnet, tiny_collection.root / "a/one.jpg", k=2)
