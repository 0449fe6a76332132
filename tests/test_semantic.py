"""The real check that the pipeline finds similar images, with the one pretrained model available offline."""

from __future__ import annotations

from collections import Counter

import pytest

from imagesearch.evaluate import evaluate, group_of
from imagesearch.extract import extract_embeddings
from imagesearch.index import build_index


@pytest.fixture(scope="module")
def demo_embeddings(repo_root, tflite_embedder):
    """The 112 demo images (16 groups x 7 variants) embedded with the shared ImageNet MobileNet."""
    return extract_embeddings(repo_root / "images", tflite_embedder, batch_size=16, progress=False)


def test_every_demo_image_is_embedded(demo_embeddings):
    assert len(demo_embeddings.items) == 112
    assert demo_embeddings.skipped == []
    assert demo_embeddings.vectors.shape == (112, 1024)
    assert set(Counter(group_of(path) for path in demo_embeddings.paths).values()) == {7}


def test_pretrained_embeddings_find_variants_of_the_same_photo(demo_embeddings):
    precision = evaluate(build_index(demo_embeddings, "Flat"), k=5)
    print(f"\nprecision@5 on the demo collection with {demo_embeddings.embedder}: {precision:.3f}")
    assert precision >= 0.90
