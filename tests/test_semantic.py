"""The real check that the pipeline finds similar images, with the one pretrained model available offline.

The demo collection has two parts: 16 photos x 7 variants at the top level of `images/` (a query should find
the other versions of its photo) and 12 Caltech 101 categories x 8 photos in `images/caltech101/<category>/`
(a query should find other photos of its kind). Each is searched in a Flat index of its own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

import pytest

from imagesearch.evaluate import score_index
from imagesearch.extract import extract_embeddings
from imagesearch.index import SearchIndex, build_index

CALTECH = "caltech101/"


@pytest.fixture(scope="module")
def demo_embeddings(repo_root, tflite_embedder):
    """The 208 demo images (112 variants and 96 Caltech photos) embedded with the shared ImageNet MobileNet."""
    return extract_embeddings(repo_root / "images", tflite_embedder, batch_size=16, progress=False)


def flat_index_of(demo_embeddings, make_embeddings, keep) -> SearchIndex:
    """A Flat index of the demo images whose path `keep` accepts, with their pretrained vectors."""
    rows = [row for row, path in enumerate(demo_embeddings.paths) if keep(path)]
    paths = [demo_embeddings.paths[row] for row in rows]
    return build_index(make_embeddings(demo_embeddings.vectors[rows], paths), "Flat")


def is_variant(path: str) -> bool:
    return "/" not in path


def test_every_demo_image_is_embedded(demo_embeddings):
    assert len(demo_embeddings.items) == 208
    assert demo_embeddings.skipped == []
    assert demo_embeddings.vectors.shape == (208, 1024)
    variants = Counter(path.split("__")[0] for path in demo_embeddings.paths if is_variant(path))
    assert len(variants) == 16 and set(variants.values()) == {7}
    categories = Counter(str(PurePosixPath(path).parent) for path in demo_embeddings.paths if not is_variant(path))
    assert len(categories) == 12 and set(categories.values()) == {8}
    assert all(category.startswith(CALTECH) for category in categories)


def test_pretrained_embeddings_find_variants_of_the_same_photo(demo_embeddings, make_embeddings):
    index = flat_index_of(demo_embeddings, make_embeddings, is_variant)
    assert len(index) == 112
    precision = score_index(index, "prefix", ks=(5,)).overall["precision@5"]
    print(f"\nprecision@5 on the demo variants with {demo_embeddings.embedder}: {precision:.3f}")
    assert precision >= 0.90


def test_pretrained_embeddings_find_other_photos_of_the_same_category(demo_embeddings, make_embeddings):
    index = flat_index_of(demo_embeddings, make_embeddings, lambda path: path.startswith(CALTECH))
    assert len(index) == 96
    precision = score_index(index, "folder", ks=(5,)).overall["precision@5"]  # the category: its folder
    print(f"\nprecision@5 on the 96 Caltech demo photos with {demo_embeddings.embedder}: {precision:.3f}")
    # Measured 0.854 (plain L2, Flat); picking 5 of the 95 others at random would score 7/95, about 0.07.
    assert precision >= 0.80
