"""Retrieval configurations: the metric, whitening, database-side augmentation (DBA) and query expansion (QE).

Each is checked against the same computation written out in NumPy, on exact
and approximate indexes, through updates in place and a save and load; and,
with the shared pretrained embedder, on real photos: the recommended
configuration must beat the seed's plain L2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_ann import clustered, next_version, unsaved

from imagesearch.collection import load_embeddings as load_embeddings_of
from imagesearch.collection import save_embeddings
from imagesearch.evaluate import compare_configurations
from imagesearch.extract import extract_embeddings
from imagesearch.index import METADATA_FILE, build_index, load_index, load_previous_index, save_index
from imagesearch.retrieval import PLAIN, PRESETS, RECOMMENDED, Retrieval, RetrievalError, Whitening
from imagesearch.storage import DamagedStateError, DamagedStateWarning

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def reference_dba(vectors: np.ndarray, count: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """αDBA by brute force: each unit vector plus its `count` nearest others' weighted by cosine^alpha, normalised;
    and the neighbours."""
    x = unit(vectors)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :count]
    weights = np.maximum(np.take_along_axis(similarity, neighbours, axis=1), 0) ** alpha
    return unit(x + np.einsum("ij,ijk->ik", weights, x[neighbours])), neighbours


@pytest.mark.parametrize("text, expected", [
    ("plain", PLAIN), ("recommended", RECOMMENDED), ("l2", Retrieval("l2")),
    ("cosine,dba=5,qe=2", Retrieval("cosine", dba=5, qe=2)),
    ("cosine+whiten+qe=1+alpha=0", Retrieval("cosine", whiten=True, qe=1, qe_alpha=0, dba_alpha=0)),
])
def test_a_configuration_is_read_from_its_name_or_parts_and_written_back_the_same(text, expected):
    assert Retrieval.parse(text) == expected
    assert Retrieval.parse(str(expected)) == expected
    assert Retrieval.from_dict(json.loads(json.dumps(expected.to_dict()))) == expected


@pytest.mark.parametrize("text, says", [
    ("l2,dba=5", "use them with the cosine metric"), ("cosine,dba=x", "cannot read 'dba=x'"),
    ("hamming", "name a preset"), ("cosine,qe=-1", "0 or more"),
])
def test_a_configuration_that_cannot_work_is_refused_in_one_line(text, says):
    with pytest.raises(RetrievalError) as caught:
        Retrieval.parse(text)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_presets_are_all_distinct():
    assert len({preset.to_dict().__repr__() for preset in PRESETS.values()}) == len(PRESETS)


def test_whitening_decorrelates_a_large_sample_and_shrinks_more_on_a_small_one():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8)) * np.array([5, 3, 2, 1, 1, 0.5, 0.3, 0.1])
    large = unit(rng.normal(size=(20_000, 8)) @ mixing + 3).astype(np.float32)
    whitening = Whitening.fit(lambda: iter(np.array_split(large, 7)))  # in chunks, as a collection is read
    centred = (large - whitening.mean) @ whitening.projection
    covariance = np.cov(centred.T)
    assert np.allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-3)  # decorrelated
    assert np.all((np.diag(covariance) > 0.9) & (np.diag(covariance) < 1.001))  # each direction at about unit
    # variance: exactly 1 without shrinkage; the radial direction of unit vectors, nearly empty, a little less
    assert whitening.shrinkage < 0.05 and whitening.fitted_on == len(large)
    small = Whitening.fit(lambda: iter([large[:12]]))
    assert small.shrinkage > 5 * whitening.shrinkage  # a dozen vectors cannot estimate 8 dimensions alone
    assert np.allclose(np.linalg.norm(whitening.apply(large[:5]), axis=1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(600, seed=3)


@pytest.mark.parametrize("factory, params", [("Flat", ""), ("IVF8,Flat", "nprobe=8"), ("HNSW16", "efSearch=256")])
def test_dba_stores_each_vector_blended_with_its_nearest_as_written_in_numpy(vectors, factory, params):
    built = build_index(unsaved(vectors), factory, retrieval="cosine,dba=4", params=params)
    expected, neighbours = reference_dba(vectors, 4, 3.0)
    rows = built.augmentation.rows_of(built.ids)
    assert np.array_equal(built.augmentation.neighbours[rows], neighbours)
    stored = built.index.reconstruct_batch(built.ids[:50]) if factory != "IVF8,Flat" else \
        built.stored_vectors_of(built.ids[:50])
    assert np.allclose(stored, expected[:50], atol=1e-5)
    assert np.allclose(built.stored_vectors_of(built.ids[:50]), expected[:50], atol=1e-5)


def test_query_expansion_searches_again_with_the_blend_of_the_query_and_its_nearest(vectors):
    built = build_index(unsaved(vectors), "Flat", retrieval="cosine,qe=3,qe_alpha=2")
    queries = clustered(20, seed=9)
    x, q = unit(vectors), unit(queries)
    first = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :3]
    weights = np.maximum(np.take_along_axis(q @ x.T, first, axis=1), 0) ** 2
    expanded = unit(q + np.einsum("ij,ijk->ik", weights, x[first]))
    expected = np.argsort(-(expanded @ x.T), axis=1, kind="stable")[:, :10]
    distances, found = built.search_ids(queries, 10)
    assert np.array_equal(found, built.ids[expected])
    assert np.allclose(distances, 1 - np.take_along_axis(expanded @ x.T, expected, axis=1), atol=1e-5)
    _, once = built.search_ids(queries, 10, expand=False)
    assert not np.array_equal(once, found)  # the expansion did change what was found


def test_an_indexed_image_is_not_blended_into_its_own_expanded_query(vectors):
    built = build_index(unsaved(vectors), "Flat", retrieval="cosine,qe=2,qe_alpha=0")
    own = built.ids[:5]
    _, excluded = built.search_ids(vectors[:5], 3, exclude=own)
    x = unit(vectors)
    similarity = x[:5] @ x.T
    similarity[np.arange(5), np.arange(5)] = -np.inf
    nearest_others = np.argsort(-similarity, axis=1, kind="stable")[:, :2]
    expanded = unit(x[:5] + x[nearest_others].sum(axis=1))
    ranked = np.argsort(-(expanded @ x.T), axis=1, kind="stable")
    others = [[row, *[image for image in ranking if image != row][:2]] for row, ranking in enumerate(ranked)]
    assert np.array_equal(excluded, built.ids[np.array(others)])  # its copy (itself) first, then the expanded ranking
    _, included = built.search_ids(vectors[:5], 3)
    assert not np.array_equal(included, excluded)


def test_an_indexed_image_searched_for_comes_first_under_the_default(vectors):
    built = build_index(unsaved(vectors), "Flat")
    assert built.retrieval == RECOMMENDED
    _, found = built.search_ids(vectors[:50], 1)
    assert np.array_equal(found[:, 0], built.ids[:50])


@pytest.mark.parametrize("configuration", ["recommended", "dba", "qe"])
def test_exact_copies_of_the_query_come_first_at_distance_zero(configuration):
    vectors = clustered(300, seed=13)
    vectors[7] = vectors[3]  # two indexed copies of one image
    built = build_index(unsaved(vectors), "Flat", retrieval=configuration)
    distances, found = built.search_ids(vectors, 4)
    assert np.array_equal(found[:, 0], np.where(np.isin(np.arange(300), [3, 7]), found[:, 0], np.arange(300)))
    assert set(found[3, :2]) == set(found[7, :2]) == {3, 7}
    assert np.all(distances[:, 0] <= 1e-6) and np.all(distances[:, 1:][~np.isin(found[:, 1:], [3, 7])] > 1e-6)


def test_a_compressed_index_reranks_by_the_blended_vectors():
    vectors = clustered(1200, seed=12)
    exact = build_index(unsaved(vectors), "Flat", retrieval="recommended")
    compressed = build_index(unsaved(vectors), "IVF8,PQ8x4", retrieval="recommended", params="nprobe=8,k_factor=64")
    queries = clustered(30, seed=11)
    exact_distances, exact_ids = exact.search_ids(queries, 5)
    distances, ids = compressed.search_ids(queries, 5)
    assert np.mean(ids == exact_ids) > 0.95  # every list probed, deep re-ranking: the exact answers
    agree = ids == exact_ids
    assert np.allclose(distances[agree], exact_distances[agree], atol=1e-5)  # exact distances, of blended vectors


def test_an_update_in_place_keeps_the_augmentation_as_a_rebuild_makes_it(tmp_path, vectors):
    first = save_embeddings(unsaved(vectors), tmp_path / "embeddings")
    save_index(build_index(first, "Flat", retrieval="recommended"), tmp_path / "index")
    second = next_version(first, drop=range(0, 40), add=clustered(60, seed=4), change={50: clustered(1, seed=5)[0]})
    updated = build_index(second, "Flat", previous=load_previous_index(tmp_path / "index", second),
                          retrieval="recommended")
    assert not updated.changes.rebuilt
    rebuilt = build_index(second, "Flat", retrieval="recommended")
    table, fresh = updated.augmentation, rebuilt.augmentation
    assert np.array_equal(table.ids, fresh.ids)
    same = np.all(table.neighbours == fresh.neighbours, axis=1)
    assert same.mean() >= 0.99, f"{np.count_nonzero(~same)} of {len(same)} neighbour lists differ from a rebuild's"
    agree = np.isclose(updated.stored_vectors_of(second.ids), rebuilt.stored_vectors_of(second.ids), atol=1e-5)
    assert agree.all(axis=1).mean() >= 0.99
    stored = updated.index.reconstruct_batch(second.ids)
    assert np.allclose(stored, updated.stored_vectors_of(second.ids), atol=1e-5)  # what the index holds, blended
    assert not np.isin(table.neighbours, np.arange(40)).any()  # no trace of the removed images


def test_whitening_and_augmentation_are_saved_with_the_index_and_answer_the_same(tmp_path, vectors):
    embeddings = save_embeddings(unsaved(vectors), tmp_path / "embeddings")
    built = build_index(embeddings, "Flat", retrieval="whiten+dba+qe")
    save_index(built, tmp_path / "index")
    loaded = load_index(tmp_path / "index")
    assert loaded.retrieval == built.retrieval
    queries = clustered(10, seed=6)
    assert np.array_equal(loaded.search_ids(queries, 5)[1], built.search_ids(queries, 5)[1])
    assert np.allclose(loaded.search_ids(queries, 5)[0], built.search_ids(queries, 5)[0], atol=1e-6)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "other-shape"])
def test_a_damaged_retrieval_file_is_named_in_one_line(tmp_path, vectors, damage):
    embeddings = save_embeddings(unsaved(vectors), tmp_path / "embeddings")
    save_index(build_index(embeddings, "Flat", retrieval="recommended"), tmp_path / "index")
    path = tmp_path / "index" / json.loads((tmp_path / "index" / METADATA_FILE).read_text())["retrieval_file"]
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        with np.load(path) as arrays:
            data = dict(arrays)
        data["augmentation_neighbours"] = data["augmentation_neighbours"][:, :2]
        with open(path, "wb") as file:
            np.savez(file, **data)
    with pytest.raises(DamagedStateError) as caught:
        load_index(tmp_path / "index")
    assert path.name in str(caught.value) and "\n" not in str(caught.value)
    with pytest.warns(DamagedStateWarning, match=path.name):
        assert load_previous_index(tmp_path / "index") is None  # and an update rebuilds it


#: precision@5 and mAP@5 of each configuration with the shared MobileNet, as the README and the issue note give
#: them (`benchmarks/retrieval.py`, `python -m imagesearch evaluate --compare`): each run must land within 0.02.
MEASURED = {
    "caltech101_dev": {"plain": (0.796, 0.764), "cosine": (0.821, 0.789), "whiten": (0.617, 0.568),
                       "qe": (0.838, 0.811), "dba": (0.837, 0.804), "recommended": (0.853, 0.827)},
    "caltech101_demo": {"plain": (0.854, 0.835), "cosine": (0.863, 0.836), "whiten": (0.604, 0.553),
                        "qe": (0.894, 0.873), "dba": (0.908, 0.889), "recommended": (0.940, 0.922)},
    "variants": {"plain": (1.0, 1.0), "cosine": (1.0, 1.0), "whiten": (0.711, 0.691), "qe": (1.0, 1.0),
                 "dba": (1.0, 1.0), "recommended": (1.0, 1.0)},
}


@pytest.fixture(scope="module", params=list(MEASURED))
def labelled_photos(request, tflite_embedder, repo_root, tmp_path_factory):
    """A labelled collection embedded with the shared pretrained MobileNet: the Caltech 101 development set and
    demo photos (labels: folders), or the repo's 112 photo variants (labels: `<group>__` prefixes)."""
    if request.param == "variants":
        folder = tmp_path_factory.mktemp("variants")
        for path in sorted((repo_root / "images").glob("*__*.jpg")):
            (folder / path.name).symlink_to(path)
    else:
        folder = SHARED_DATA / request.param
        if not folder.is_dir():
            pytest.skip(f"{folder} is absent (the shared labelled photos sit beside the project on our machines)")
    return request.param, extract_embeddings(folder, tflite_embedder, batch_size=32, progress=False)


def test_every_configuration_scores_as_measured_on_real_photos(labelled_photos):
    name, embeddings = labelled_photos
    scores = compare_configurations(embeddings, "auto", list(MEASURED[name]), ks=(5,))
    found = {config: (round(result.overall["precision@5"], 3), round(result.overall["mAP@5"], 3))
             for config, result in scores.items()}
    print(f"\n{name} ({len(embeddings)} images, {embeddings.embedder}): {found}")
    for config, (precision, average) in MEASURED[name].items():
        assert found[config] == (pytest.approx(precision, abs=0.02), pytest.approx(average, abs=0.02)), config
    if name != "variants":  # where plain L2 is not perfect already, the recommended configuration gains 4 points
        assert found["recommended"][0] >= found["plain"][0] + 0.04


KILLED_BEFORE_THE_RETRIEVAL_FILE = """
import os, signal, sys
from fnmatch import fnmatch
from pathlib import Path
import numpy as np
from imagesearch.collection import Embeddings, save_embeddings
from imagesearch.embedders import EmbedderInfo
from imagesearch.index import build_index, save_index
from imagesearch.records import ImageRecord

folder = Path(sys.argv[1])
def save(name, seed):
    vectors = np.random.default_rng(seed).normal(size=(60, 8)).astype(np.float32)
    items = [ImageRecord(row, f"{name}/{row:02}.jpg", 0, 0, f"{row:064x}") for row in range(60)]
    embeddings = Embeddings(vectors, items, EmbedderInfo("test", "none", 8, (224, 224)), "/nowhere", next_id=60)
    saved = save_embeddings(embeddings, folder / name / "embeddings")
    save_index(build_index(saved, "Flat", retrieval="recommended"), folder / "index")
save("a", 0)
real_replace = os.replace
def replace(source, destination):
    if fnmatch(Path(destination).name, "retrieval.*.npz"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, destination)
os.replace = replace
save("b", 1)
"""


def test_a_save_killed_before_its_retrieval_file_is_in_place_leaves_the_previous_index_whole(tmp_path, repo_root):
    import signal
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", KILLED_BEFORE_THE_RETRIEVAL_FILE, str(tmp_path)], cwd=repo_root,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    index = load_index(tmp_path / "index")  # the save of "a", whole: its FAISS file, table and metadata agree
    assert index.paths[0].startswith("a/") and index.augmentation is not None and len(index.augmentation) == 60
    assert [path.name for path in (tmp_path / "index").glob("retrieval.*.npz")] == \
        [json.loads((tmp_path / "index" / METADATA_FILE).read_text())["retrieval_file"]]
    save_index(index_of_b := build_index(load_embeddings_of(tmp_path / "b" / "embeddings"), "Flat"), tmp_path / "index")
    assert len(list((tmp_path / "index").glob("retrieval.*.npz"))) == 1  # the next save cleans up
    assert not [path for path in (tmp_path / "index").iterdir() if path.name.startswith(".tmp")]
    assert load_index(tmp_path / "index").paths == index_of_b.paths
