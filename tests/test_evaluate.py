"""Scoring an index on its own labelled images: each image's nearest others (never itself), their precision@k."""

from __future__ import annotations

import numpy as np
import pytest

from imagesearch.evaluate import _rows_of, neighbour_rows, score_index
from imagesearch.index import build_index

GROUPS, MEMBERS = 4, 6


@pytest.fixture(scope="module")
def clustered(make_embeddings):
    """Four tight, far-apart clusters of six 8-d vectors; each path names its cluster as group."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=100, size=(GROUPS, 8))
    vectors = np.concatenate([centre + rng.normal(size=(MEMBERS, 8)) for centre in centres])
    paths = [f"set{g}/group{g}__v{m}.jpg" for g in range(GROUPS) for m in range(MEMBERS)]
    return vectors, paths


def precision(index, k: int) -> float:
    """precision@k of the index on its images, labelled as the demo's are ("auto": prefix, else folder)."""
    return score_index(index, "auto", ks=(k,)).overall[f"precision@{k}"]


def test_neighbour_rows_are_the_k_nearest_others(make_embeddings):
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    # zero-padded names: the index's rows are in path order, which is then the order of `vectors`
    index = build_index(make_embeddings(vectors, [f"img_{row:02d}.jpg" for row in range(30)]), retrieval="plain")
    assert index.paths == [f"img_{row:02d}.jpg" for row in range(30)]
    rows = neighbour_rows(index, k=4)
    assert rows.shape == (30, 4)
    for row, others in enumerate(rows):
        distances = ((vectors - vectors[row]) ** 2).sum(axis=1)
        distances[row] = np.inf
        assert list(others) == list(np.argsort(distances)[:4])


def test_neighbour_rows_with_duplicate_images_keep_the_twin_and_drop_self(make_embeddings):
    vectors = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    vectors[1] = vectors[0]  # the same image twice: FAISS may list either first
    index = build_index(make_embeddings(vectors, [f"img_{row}.jpg" for row in range(10)]))
    rows = neighbour_rows(index, k=3)
    assert rows.shape == (10, 3)
    assert rows[0, 0] == 1 and rows[1, 0] == 0
    assert not (rows == np.arange(10)[:, None]).any()


def test_neighbour_rows_need_more_images_than_k(make_embeddings):
    index = build_index(make_embeddings(np.eye(3), ["a.jpg", "b.jpg", "c.jpg"]))
    with pytest.raises(ValueError, match="more than k=3"):
        neighbour_rows(index, k=3)


def test_rows_of_ids_keep_faiss_padding_as_minus_one():
    ids = np.array([40, 10, 30])  # not sorted: rows are positions in the index, not ranks of ids
    found = np.array([[30, 40, -1], [10, -1, -1]])
    assert _rows_of(found, ids).tolist() == [[2, 0, -1], [1, -1, -1]]


def test_precision_is_perfect_on_well_separated_groups(make_embeddings, clustered):
    vectors, paths = clustered
    assert precision(build_index(make_embeddings(vectors, paths)), k=MEMBERS - 1) == 1.0


def test_precision_finds_groups_in_folders_as_well_as_in_file_names(make_embeddings, clustered):
    vectors, _ = clustered
    # two clusters named like the demo's variants, two in a folder each like its Caltech photos (same names inside)
    name = {0: "a0__v{m}.jpg", 1: "a1__v{m}.jpg", 2: "photos/set2/image_{m}.jpg", 3: "photos/set3/image_{m}.jpg"}
    paths = [name[g].format(m=m) for g in range(GROUPS) for m in range(MEMBERS)]
    assert precision(build_index(make_embeddings(vectors, paths)), k=MEMBERS - 1) == 1.0


def test_precision_drops_to_chance_when_labels_do_not_match_the_geometry(make_embeddings, clustered):
    vectors, paths = clustered
    shuffled = list(np.random.default_rng(1).permutation(paths))
    assert precision(build_index(make_embeddings(vectors, shuffled)), k=MEMBERS - 1) < 0.5  # chance is 5/23, about 0.22


def test_precision_works_on_an_ivf_index_with_a_small_cluster(make_embeddings):
    rng = np.random.default_rng(0)
    sizes = [60, 60, 60, 3]  # the last cluster has fewer members than k + 1
    centres = rng.normal(scale=100, size=(len(sizes), 8))
    vectors = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in zip(centres, sizes)])
    paths = [f"g{g}__{m}.jpg" for g, n in enumerate(sizes) for m in range(n)]
    index = build_index(make_embeddings(vectors, paths), "IVF4,Flat")
    assert 0.9 <= precision(index, k=5) <= 1.0
