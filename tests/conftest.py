"""Shared fixtures: generated image files, the session's random-weights ResNet50, the shared TFLite model."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: tests never open windows

import numpy as np
import pytest
from PIL import Image

from imagesearch.collection import Embeddings
from imagesearch.embedders import EmbedderInfo, TFLiteEmbedder
from imagesearch.extract import extract_embeddings
from imagesearch.index import SearchIndex, build_index
from imagesearch.records import ImageRecord
from imagesearch.runtimes import make_embedder

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The one pretrained model available offline; it lives beside the project, never inside it.
SHARED_MODEL = REPO_ROOT.parent / "shared" / "models" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"

Color = tuple[int, ...]


def write_image(
    path: Path,
    mode: str = "RGB",
    size: tuple[int, int] = (40, 30),
    color: Color | None = None,
    frames: Sequence[Color] | None = None,
    **save_options,
) -> Path:
    """Write a small image file and return its path; the format follows the file name.

    `color` is an RGB or RGBA colour, converted to `mode` (so `mode="CMYK", color=(255, 0, 0)`
    is a red CMYK image); without it the image is noise seeded by the file name, so distinct
    names give distinct images. `frames` writes one plain-coloured frame per colour (GIF, TIFF).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames:
        first, *rest = [Image.new("RGB", size, c).convert(mode) for c in frames]
        first.save(path, save_all=True, append_images=rest, **save_options)
        return path
    if color is None:
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    else:
        image = Image.new("RGBA" if len(color) == 4 else "RGB", size, color)
    image.convert(mode).save(path, **save_options)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def make_image():
    """The `write_image` factory: `make_image(path, mode=..., size=..., color=..., quality=...)`."""
    return write_image


@pytest.fixture(scope="session")
def random_resnet():
    """ResNet50 with seeded random weights, built once: real Keras, meaningless but deterministic vectors."""
    return make_embedder("resnet50", "random", seed=0, runtime="tensorflow")


class CountingEmbedder:
    """An observer around a real embedder: delegates every call and records each batch's size."""

    def __init__(self, inner):
        self.inner, self.info, self.batch_sizes = inner, inner.info, []

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(images))
        return self.inner.embed(images)

    @property
    def images_embedded(self) -> int:
        return sum(self.batch_sizes)


@pytest.fixture
def counting_embedder(random_resnet) -> CountingEmbedder:
    """The session ResNet50, counting the images it embeds."""
    return CountingEmbedder(random_resnet)


@pytest.fixture(scope="session")
def tflite_model_path() -> Path:
    if not SHARED_MODEL.is_file():
        pytest.skip(
            f"the shared pretrained model {SHARED_MODEL} is absent (it sits beside the project at "
            "../shared/models/ on developer machines and in CI, not in a fresh clone)"
        )
    return SHARED_MODEL


@pytest.fixture(scope="session")
def tflite_embedder(tflite_model_path) -> TFLiteEmbedder:
    return TFLiteEmbedder(tflite_model_path)


@pytest.fixture(scope="session")
def make_embeddings():
    """Build `Embeddings` straight from vectors and paths, as if extracted by a `dim`-d test embedder."""

    def make(vectors: np.ndarray, paths: Sequence[str], image_root: str = "/nowhere") -> Embeddings:
        vectors = np.asarray(vectors, dtype=np.float32)
        info = EmbedderInfo("test", "none", vectors.shape[1], (224, 224))
        items = [ImageRecord(row, path, 0, 0, f"{row:064x}") for row, path in enumerate(paths)]
        return Embeddings(vectors, items, info, image_root, next_id=len(items))

    return make


class Collection(NamedTuple):
    root: Path
    index: SearchIndex


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory, random_resnet) -> Collection:
    """Six distinct noise images in nested folders, embedded with the session ResNet50, in a Flat index."""
    root = tmp_path_factory.mktemp("tiny_collection")
    for name in ["a/one.jpg", "a/two.png", "b/three.jpg", "b/four.png", "five.jpg", "six.jpg"]:
        write_image(root / name, size=(48, 32))
    embeddings = extract_embeddings(root, random_resnet, batch_size=4, progress=False)
    return Collection(root, build_index(embeddings, "Flat"))
