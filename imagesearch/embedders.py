"""Feature extractors: a batch of RGB images in, one float32 vector per image out.

Every extractor follows the same small interface (`Embedder`): an `info` that
names the backbone and weights (saved with the embeddings, so that vectors
from different models are never mixed) and an `embed` method over uint8
batches. Each extractor does its own preprocessing, so callers only ever hand
over plain pixels.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

#: The file Keras looks for in its cache before downloading ResNet50's ImageNet weights.
RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclass(frozen=True)
class EmbedderInfo:
    """What produced a set of embeddings: enough to tell whether two sets can be compared."""

    backbone: str  # e.g. "resnet50" or "tflite:mobilenet_v1.tflite"
    weights: str  # "imagenet", "random(seed=0)", or "file:<name>@<sha256 prefix>"
    dim: int  # length of one embedding vector
    input_size: tuple[int, int]  # (width, height) the images are resized to

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EmbedderInfo:
        return cls(
            backbone=data["backbone"],
            weights=data["weights"],
            dim=int(data["dim"]),
            input_size=tuple(data["input_size"]),
        )

    def __str__(self) -> str:
        return f"{self.backbone} (weights {self.weights}, {self.dim}-d)"

    def compatible_with(self, other: EmbedderInfo) -> bool:
        """Whether vectors from `self` and `other` live in the same space, so they can be compared or mixed."""
        return self == other


class Embedder(Protocol):
    """The interface every feature extractor implements."""

    info: EmbedderInfo

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, height, width, 3)` uint8 batch to an `(n, dim)` float32 array."""
        ...


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights could not be loaded (usually: no network)."""


class RandomWeightsWarning(UserWarning):
    """Embeddings from random weights test the mechanics only; they do not find similar images."""


class ResNet50Embedder:
    """ResNet50 from `keras.applications` without its classifier, global-average pooled to 2048-d.

    Args:
        weights: "imagenet" (downloaded once into Keras' cache), a path to a
            local weights file (.h5 or .weights.h5, no top), or "random" for
            seeded random initialisation, which is only good for smoke tests.
        seed: the seed for "random" weights.
    """

    def __init__(self, weights: str = "imagenet", seed: int = 0):
        import keras
        import tensorflow as tf

        if weights == "random":
            keras_weights, label = None, f"random(seed={seed})"
            warnings.warn(
                "ResNet50 uses randomly initialised weights: the embeddings test the "
                "mechanics only and will not find similar images.",
                RandomWeightsWarning,
                stacklevel=3,  # point at the caller of make_embedder, the usual entry
            )
        elif weights == "imagenet":
            keras_weights, label = "imagenet", "imagenet"
        else:
            keras_weights, label = _local_file(weights), _file_label(weights)

        try:
            with _seeded(seed if weights == "random" else None):
                self.model = keras.applications.ResNet50(
                    include_top=False, weights=keras_weights, pooling="avg", input_shape=(224, 224, 3)
                )
        except Exception as error:
            if weights == "imagenet":
                raise WeightsUnavailableError(_imagenet_download_help(error)) from error
            raise
        preprocess = keras.applications.resnet50.preprocess_input
        model = self.model

        # One traced graph for every batch size: no per-call retracing or Keras
        # `predict` overhead, which dominates when embedding a single query.
        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8)])
        def embed_graph(images):
            return model(preprocess(tf.cast(images, tf.float32)), training=False)

        self._embed_graph = embed_graph
        self.info = EmbedderInfo("resnet50", label, 2048, (224, 224))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, 224, 224, 3)` uint8 batch to `(n, 2048)` float32 embeddings."""
        _check_batch(images, self.info)
        return self._embed_graph(images).numpy().astype(np.float32, copy=False)


class TFLiteEmbedder:
    """An embedding model in a TensorFlow Lite file that takes uint8 RGB pixels.

    Quantized outputs are dequantized with the output tensor's scale and zero
    point. Used in tests with the real ImageNet-trained MobileNet in
    `../shared/models/`, the one pretrained model available offline here.
    """

    def __init__(self, model_path: str | os.PathLike, num_threads: int | None = None):
        path = _local_file(model_path)
        self._interpreter = _tflite_interpreter(path, num_threads or os.cpu_count())
        self._interpreter.allocate_tensors()
        (self._input,) = self._interpreter.get_input_details()
        (self._output,) = self._interpreter.get_output_details()
        if self._input["dtype"] != np.uint8:
            raise ValueError(
                f"{path} takes {np.dtype(self._input['dtype']).name} input; "
                "TFLiteEmbedder supports models that take uint8 RGB pixels"
            )
        _, height, width, _ = self._input["shape"]
        dim = int(np.prod(self._output["shape"][1:]))
        self.info = EmbedderInfo(f"tflite:{path.name}", f"sha256:{_sha256_prefix(path)}", dim, (int(width), int(height)))
        self._batch = int(self._input["shape"][0])

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, height, width, 3)` uint8 batch to `(n, dim)` float32 embeddings."""
        _check_batch(images, self.info)
        if len(images) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [len(images), *images.shape[1:]])
            self._interpreter.allocate_tensors()
            self._batch = len(images)
        self._interpreter.set_tensor(self._input["index"], images)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output["index"]).reshape(len(images), -1)
        scale, zero_point = self._output["quantization"]
        if scale:
            return ((raw.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return raw.astype(np.float32)


def make_embedder(backbone: str = "resnet50", weights: str = "imagenet", seed: int = 0) -> Embedder:
    """Build the extractor named by `backbone`: "resnet50" (with `weights`) or "tflite" (`weights` is the model file)."""
    if backbone == "resnet50":
        return ResNet50Embedder(weights=weights, seed=seed)
    if backbone == "tflite":
        return TFLiteEmbedder(weights)
    raise ValueError(f"unknown backbone {backbone!r}; choose 'resnet50' or 'tflite'")


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed Keras' initialisers for a reproducible random model, restoring Python's and NumPy's RNG afterwards."""
    if seed is None:
        yield
        return
    import keras

    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _check_batch(images: np.ndarray, info: EmbedderInfo) -> None:
    width, height = info.input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise ValueError(
            f"{info.backbone} expects a (n, {height}, {width}, 3) uint8 batch, "
            f"got {images.shape} {images.dtype}"
        )


def _local_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model or weights file {path} does not exist")
    return path


def _file_label(path: str | os.PathLike) -> str:
    """Name a weights file by its name and content hash, so a changed file is noticed."""
    return f"file:{Path(path).name}@{_sha256_prefix(path)}"


def _sha256_prefix(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _keras_cache_dir() -> Path:
    """The folder where `keras.utils.get_file` looks for downloaded weights, by Keras' own rule."""
    from keras.src.backend.config import keras_home  # not exported publicly; fixed when keras is imported

    base = Path(keras_home()).expanduser()
    if not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir()) / ".keras"  # Keras' fallback when the home folder is read-only
    return base / "models"


def _imagenet_download_help(error: Exception) -> str:
    return (
        f"Could not load ResNet50's ImageNet weights: {error}\n"
        "Keras downloads them on first use, which fails without network (or when a damaged "
        "copy sits in its cache). To go on, do one of these:\n"
        f"  1. copy {RESNET50_WEIGHTS_FILE} (from a machine with network, where Keras "
        f"cached it) into {_keras_cache_dir()}/ and run again;\n"
        "  2. pass weights='/path/to/that/file.h5' (IMAGESEARCH_WEIGHTS for the "
        "notebooks, WEIGHTS= for make);\n"
        "  3. pass weights='random' to test the mechanics only (results are then meaningless)."
    )


def _tflite_interpreter(path: Path, num_threads: int):
    try:  # LiteRT is TensorFlow Lite's successor; tf.lite.Interpreter is deprecated.
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads)
