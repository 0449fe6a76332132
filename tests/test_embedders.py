"""The feature extractors: real Keras ResNet50 (random weights) and the real TFLite MobileNet."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from keras.src.backend.config import keras_home
from keras.src.utils import file_utils

from imagesearch.backbones import BACKBONES
from imagesearch.embedders import EmbedderInfo, RandomWeightsWarning, WeightsUnavailableError
from imagesearch.runtimes import make_embedder

RESNET50_WEIGHTS_FILE = BACKBONES["resnet50"].pretrained.cached().name


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Three different 224 x 224 noise images."""
    return np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)


def assert_rows_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 round-off relative to the size of the values (batching changes the order of sums)."""
    assert np.allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


# --- ResNet50 -----------------------------------------------------------------------------------


def test_random_resnet_embeds_a_batch_to_finite_float32_2048_vectors(random_resnet, pixels):
    vectors = random_resnet.embed(pixels)
    assert vectors.shape == (3, 2048)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert random_resnet.info == EmbedderInfo("resnet50", "random(seed=0)", 2048, (224, 224))


def test_random_resnet_is_deterministic_for_the_same_input(random_resnet, pixels):
    assert np.array_equal(random_resnet.embed(pixels), random_resnet.embed(pixels))


def test_random_resnet_embeds_an_image_alone_as_in_a_batch(random_resnet, pixels):
    batch = random_resnet.embed(pixels)
    alone = random_resnet.embed(pixels[1:2])
    assert_rows_close(alone[0], batch[1])
    assert not np.allclose(batch[0], batch[1])  # the images differ, so the comparison means something


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(np.zeros((2, 224, 224, 3), np.float32), id="float32"),
        pytest.param(np.zeros((224, 224, 3), np.uint8), id="no-batch-axis"),
        pytest.param(np.zeros((2, 100, 100, 3), np.uint8), id="wrong-size"),
        pytest.param(np.zeros((2, 224, 224, 4), np.uint8), id="four-channels"),
        pytest.param(np.zeros((2, 224, 224), np.uint8), id="grayscale"),
    ],
)
def test_embed_rejects_a_batch_of_wrong_dtype_or_shape(random_resnet, batch):
    with pytest.raises(ValueError, match=r"expects a \(n, 224, 224, 3\) uint8 batch"):
        random_resnet.embed(batch)


def test_random_weights_warn_and_differ_by_seed(random_resnet, pixels):
    with pytest.warns(RandomWeightsWarning, match="near-copies of an image .* not images that show the same thing"):
        other = make_embedder("resnet50", "random", seed=1, runtime="tensorflow")
    assert other.info.weights == "random(seed=1)"
    assert not np.allclose(other.embed(pixels[:1]), random_resnet.embed(pixels[:1]))


def test_random_weights_leave_the_callers_random_number_generators_alone():
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.random())
    random.seed(7)
    np.random.seed(7)
    make_embedder("resnet50", "random", seed=3, runtime="tensorflow")
    assert (random.random(), np.random.random()) == expected


def test_imagenet_weights_offline_raise_weights_unavailable_instead_of_falling_back(monkeypatch):
    requested = []

    def offline_get_file(fname=None, origin=None, **kwargs):
        requested.append(fname)
        # What keras.utils.get_file raises when the host name cannot be resolved.
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline_get_file)  # what keras' resnet.py calls

    with pytest.raises(WeightsUnavailableError) as caught:
        make_embedder("resnet50", "imagenet")  # raising means no (random) model is handed back

    assert requested == [RESNET50_WEIGHTS_FILE]
    message = str(caught.value)
    assert RESNET50_WEIGHTS_FILE in message
    # The folder Keras really looks in (fixed when keras is imported), where the user can drop the file.
    assert f"into {Path(keras_home()) / 'models'}/" in message
    assert "weights='random'" in message
    assert "weights='/path/to/" in message
    assert "`make lab WEIGHTS=random`" in message  # the way to open the notebooks offline
    assert message.startswith("Could not get ResNet50's ImageNet weights: the download failed, no network? "
                              "([Errno -2] Name or service not known).")
    assert "URL fetch failure" in str(caught.value.__cause__)
    # In a notebook, IPython shows what _render_traceback_ returns instead of the chained traceback.
    (shown,) = caught.value._render_traceback_()
    assert "WeightsUnavailableError" in shown and message in shown and "Traceback" not in shown


def test_make_embedder_rejects_an_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        make_embedder("vgg16", "imagenet")


@pytest.mark.parametrize("backbone, name", [("resnet50", "weights.h5"), ("tflite", "model.tflite")])
def test_make_embedder_with_missing_weights_file_raises_file_not_found(tmp_path, backbone, name):
    with pytest.raises(FileNotFoundError, match=name):
        make_embedder(backbone, str(tmp_path / name))


def test_embedder_info_round_trips_through_a_json_manifest():
    info = EmbedderInfo("tflite:model.tflite", "file:model.tflite@0123456789ab", 1024, (224, 192))
    assert EmbedderInfo.from_dict(info.to_dict()) == info
    assert EmbedderInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info  # the list becomes a tuple


# --- TFLite: the real pretrained MobileNet from ../shared/models -----------------------------


def test_tflite_embedder_describes_the_shared_mobilenet(tflite_embedder):
    info = tflite_embedder.info
    assert info.backbone.startswith("tflite:")
    assert "f409ef4f73fc" in info.weights  # sha256 prefix of the file, from shared/models/README.md
    assert info.dim == 1024
    assert info.input_size == (224, 224)


def test_tflite_embedder_gives_float32_1024_vectors_batched_as_one_by_one(tflite_embedder, pixels):
    batched = tflite_embedder.embed(pixels)
    one_by_one = np.concatenate([tflite_embedder.embed(pixels[i : i + 1]) for i in range(len(pixels))])
    assert batched.shape == (3, 1024)
    assert batched.dtype == np.float32
    assert np.array_equal(batched, one_by_one)
    assert not np.array_equal(batched[0], batched[1])


def test_tflite_embedder_is_safe_to_call_from_threads(tflite_embedder):
    """One interpreter holds one set of tensors: calls from threads (a service's pool) must take turns."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [np.random.default_rng(seed).integers(0, 256, (1 + seed % 3, 224, 224, 3), np.uint8)
               for seed in range(24)]
    expected = [tflite_embedder.embed(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        actual = list(pool.map(tflite_embedder.embed, batches))
    assert all(np.array_equal(a, e) for a, e in zip(actual, expected))
