"""Feature extractors: a batch of RGB images in, one float32 vector per image out.

Every extractor follows the same small interface (`Embedder`): an `info` that
names the backbone and weights (saved with the embeddings, so that vectors
from different models are never mixed) and an `embed` method over uint8
batches. Each extractor does its own preprocessing, so callers only ever hand
over plain pixels. Two kinds run here: `KerasEmbedder`, any Keras feature
model in one traced TensorFlow graph, and `TFLiteEmbedder`, a LiteRT model
file. Which networks there are, and how each is built, is declared once in
`imagesearch.backbones`.

The same Keras model can run on several runtimes (TensorFlow in float32 or
bfloat16, LiteRT in float32 or int8; `imagesearch.runtimes` chooses among
them). `EmbedderInfo.runtime` records which one made a set of vectors, and
`EmbedderInfo.fidelity` how closely that runtime matched TensorFlow float32,
the reference: vectors from runtimes within the bar (`FIDELITY_BARS`) are
treated as one space.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import UserFacingError
from .runtime import import_tensorflow, quietly

#: The runtime every other one is measured against.
REFERENCE_RUNTIME = "tensorflow"

#: /proc/cpuinfo flags of native bfloat16 arithmetic: AVX-512 BF16 (Zen 4+, Cooper Lake) or AMX (Sapphire Rapids+).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Bar:
    """How closely a runtime's vectors must match the reference's, image by image and as neighbours."""

    min_cosine: float  # the lowest cosine similarity to the reference vector allowed for any image
    min_top5: float = 0.0  # the share of each image's 5 nearest others (in the sample) both must find

    def __str__(self) -> str:
        top5 = f" and top-5 agreement >= {self.min_top5:g}" if self.min_top5 else ""
        return f"cosine >= {self.min_cosine:g}{top5}"


#: The fidelity bar of each runtime besides the reference. Float32 runtimes compute the same function in
#: another order: they must agree to rounding. Reduced precision (8 significant bits in bfloat16, 256 levels
#: in int8) must keep every vector's direction and the neighbours it finds.
FIDELITY_BARS = {
    "tensorflow-bf16": Bar(0.99, 0.98),
    "litert": Bar(0.9999),
    "litert-int8": Bar(0.99, 0.98),
}


@dataclass(frozen=True)
class Fidelity:
    """How closely a runtime's vectors matched the reference's on a sample of images."""

    min_cosine: float
    top5: float  # mean share of each image's 5 nearest other images in the sample that both runtimes find
    images: int  # how many images the sample had

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Fidelity:
        return cls(float(data["min_cosine"]), float(data["top5"]), int(data["images"]))

    def __str__(self) -> str:
        return f"cosine >= {_floor(self.min_cosine)}, top-5 agreement {self.top5:.3f} on {self.images} images"


@dataclass(frozen=True)
class EmbedderInfo:
    """What produced a set of embeddings: enough to tell whether two sets can be compared."""

    backbone: str  # a name in `backbones.BACKBONES` ("resnet50"), "tflite:<file name>" or "keras:layer=…,preprocess=…"
    weights: str  # "imagenet", "random(seed=0)", "file:<name>@<sha256 prefix>", or "sha256:<prefix>" (a TFLite file)
    dim: int  # length of one embedding vector
    input_size: tuple[int, int]  # (width, height) the images are resized to
    runtime: str = REFERENCE_RUNTIME  # what computed the vectors; for a "tflite:" backbone, the file's own model
    fidelity: Fidelity | None = None  # measured against the reference; None for the reference itself
    source: str | None = None  # the resolved path of the weights or model file, where there is one; not its identity

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fidelity"] = self.fidelity.to_dict() if self.fidelity else None
        if self.source is None:  # no file: written as before there were sources, so saved collections stay as they were
            del data["source"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EmbedderInfo:
        runtime = data.get("runtime")
        if runtime is None:  # saved before runtimes: ResNet50 ran on TensorFlow, in `precision`
            runtime = "tensorflow-bf16" if data.get("precision") == "bfloat16" else REFERENCE_RUNTIME
        fidelity = data.get("fidelity")
        return cls(
            backbone=data["backbone"],
            weights=data["weights"],
            dim=int(data["dim"]),
            input_size=tuple(data["input_size"]),
            runtime=runtime,
            fidelity=Fidelity.from_dict(fidelity) if fidelity else None,
            source=data.get("source"),  # saved before sources were: None
        )

    def __str__(self) -> str:
        runtime = "" if self.runtime == REFERENCE_RUNTIME else f", {self.runtime}"
        return f"{self.backbone} (weights {self.weights}, {self.dim}-d{runtime})"

    def outside_bar(self) -> str | None:
        """Why this runtime's vectors may not stand in for the reference's, or None when they may.

        A runtime is within its bar only by measurement: one that was never
        measured on these weights is outside it, never trusted.
        """
        if self.runtime == REFERENCE_RUNTIME or self.backbone.startswith("tflite:"):  # a model file is its own
            return None
        bar = FIDELITY_BARS.get(self.runtime)
        if bar is None:
            return f"{self.runtime} is not a runtime this version of imagesearch knows"
        if self.fidelity is None:
            return f"{self.runtime} was not measured against {REFERENCE_RUNTIME}"
        if self._fails():
            return f"{self.runtime} gave {self.fidelity}, outside its bar ({bar}) against {REFERENCE_RUNTIME}"
        return None

    def _fails(self) -> bool:
        """Whether this runtime was measured, and missed its bar."""
        bar = FIDELITY_BARS.get(self.runtime)
        return bool(bar and self.fidelity and not self.backbone.startswith("tflite:") and (
            self.fidelity.min_cosine < bar.min_cosine or self.fidelity.top5 < bar.min_top5))

    def compatible_with(self, other: EmbedderInfo) -> bool:
        """Whether vectors from `self` and `other` live in the same space, so they can be compared or mixed.

        The same backbone and weights, on the same runtime or on runtimes within
        their fidelity bar of the reference: a bfloat16 or int8 run of the same
        model approximates its float32 vectors closely enough to search among them
        (`runtimes.make_embedder` measures it before a runtime is used). Vectors
        from a runtime that missed its bar mix with none; vectors never measured
        (collections saved with the earlier `precision="bfloat16"`) only with
        vectors from the same runtime.
        """
        same_model = replace(self, runtime="", fidelity=None, source=None) == replace(
            other, runtime="", fidelity=None, source=None)  # a file's identity is its hash, in `weights`, not its place
        if not same_model or self._fails() or other._fails():
            return False
        return self.runtime == other.runtime or not (self.outside_bar() or other.outside_bar())


class Embedder(Protocol):
    """The interface every feature extractor implements."""

    info: EmbedderInfo

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, height, width, 3)` uint8 batch to an `(n, dim)` float32 array."""
        ...


class WeightsUnavailableError(UserFacingError, RuntimeError):
    """The requested pretrained weights could not be loaded (usually: no network)."""


class RandomWeightsWarning(UserWarning):
    """Embeddings from random weights test the mechanics: they match near-copies of an image, not its meaning."""

    @staticmethod
    def about(model: str) -> str:
        """The warning's message for the network called `model` (e.g. "ResNet50")."""
        return (f"{model} uses randomly initialised weights, to test the mechanics: its vectors still match "
                "near-copies of an image (a crop, a mirror image) but not images that show the same thing.")


class KerasEmbedder:
    """A Keras feature model (classifier removed, pooled to one vector) and its preprocessing, on TensorFlow.

    `preprocess` maps float32 pixels (0..255, RGB) to what `model` takes, in
    Keras operations: it runs inside the same traced graph as the model, so
    callers hand over uint8 pixels and nothing else. Built by
    `backbones.keras_embedder`, which knows each network's weights and
    preprocessing.
    """

    def __init__(self, model, preprocess: Callable, info: EmbedderInfo):
        tf = import_tensorflow()

        self.model, self.preprocess, self.info = model, preprocess, info
        width, height = info.input_size

        # One traced graph for every batch size: no per-call retracing or Keras
        # `predict` overhead, which dominates when embedding a single query.
        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
        def embed_graph(images):
            return tf.cast(model(preprocess(tf.cast(images, tf.float32)), training=False), tf.float32)

        self._embed_graph = embed_graph

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, height, width, 3)` uint8 batch to `(n, dim)` float32 embeddings."""
        _check_batch(images, self.info)
        return self._embed_graph(images).numpy()

    def serving_model(self):
        """The same computation as one Keras model that takes uint8 pixels: what LiteRT's converter is given."""
        import keras

        width, height = self.info.input_size
        preprocess = self.preprocess
        pixels = keras.Input((height, width, 3), dtype="uint8", name="pixels")
        floats = keras.layers.Lambda(lambda batch: preprocess(keras.ops.cast(batch, "float32")),
                                     name="preprocess")(pixels)
        return keras.Model(pixels, self.model(floats))


class TFLiteEmbedder:
    """An embedding model in a TensorFlow Lite (LiteRT) file that takes uint8 RGB pixels.

    Runs on LiteRT's interpreter with its default XNNPACK delegate. Quantized
    outputs are dequantized with the output tensor's scale and zero point.
    Used for Keras backbones converted by `imagesearch.litert` (then `info`
    names the backbone and the runtime), for a user's own model file
    (`--backbone tflite`), and in tests with the real ImageNet-trained
    MobileNet in `../shared/models/`, the one pretrained model available offline here.
    """

    def __init__(
        self, model_path: str | os.PathLike, num_threads: int | None = None, info: EmbedderInfo | None = None
    ):
        path = local_file(model_path)
        self._interpreter = quietly(_tflite_interpreter, path, num_threads or os.cpu_count())
        quietly(self._interpreter.allocate_tensors)
        (self._input,) = self._interpreter.get_input_details()
        (self._output,) = self._interpreter.get_output_details()
        if self._input["dtype"] != np.uint8:
            raise ValueError(
                f"{path} takes {np.dtype(self._input['dtype']).name} input; "
                "TFLiteEmbedder supports models that take uint8 RGB pixels"
            )
        _, height, width, _ = self._input["shape"]
        dim = int(np.prod(self._output["shape"][1:]))
        if info is None:
            info = EmbedderInfo(f"tflite:{path.name}", f"sha256:{sha256_prefix(path)}", dim, (int(width), int(height)),
                                runtime="litert", source=str(path.resolve()))
        elif (info.dim, info.input_size) != (dim, (int(width), int(height))):
            raise ValueError(f"{path} maps {width}x{height} images to {dim}-d vectors, not as {info} says")
        self.info = info
        self._batch = int(self._input["shape"][0])
        self._lock = threading.Lock()  # one interpreter, one set of tensors: calls from threads take turns

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, height, width, 3)` uint8 batch to `(n, dim)` float32 embeddings; safe to call from threads."""
        _check_batch(images, self.info)
        with self._lock:
            return self._invoke(images)

    def _invoke(self, images: np.ndarray) -> np.ndarray:
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


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return frozenset(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), by its /proc/cpuinfo flags; else False."""
    return any(flag in cpu_flags() for flag in BFLOAT16_CPU_FLAGS)


@contextmanager
def dtype_policy(name: str | None) -> Iterator[None]:
    """Build the layers made in this block with Keras' dtype policy `name` (None: leave the policy alone).

    Keras sets a layer's policy when the layer is made, from the global one, and
    offers no scoped form of it; so it is set here and put back after. Models
    built meanwhile on other threads would get it too: ours are built on one.
    """
    if name is None:
        yield
        return
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _floor(value: float) -> str:
    """A cosine rounded down to the digits that tell it from 1: 0.999993 as "0.99999", never up to "1.0000"."""
    digits = 4
    while digits < 7 and value < 1 and np.floor(value * 10**digits) == 10**digits - 1:
        digits += 1
    return f"{np.floor(value * 10**digits) / 10**digits:.{digits}f}"


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
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


def local_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model or weights file {path} does not exist")
    return path


def weights_label(weights: str, seed: int = 0) -> str:
    """How `EmbedderInfo.weights` names a Keras backbone's weights: "imagenet", "random(seed=0)", or a file's name
    and hash."""
    if weights in ("imagenet", "random"):
        return "imagenet" if weights == "imagenet" else f"random(seed={seed})"
    return file_label(weights)


def file_label(path: str | os.PathLike) -> str:
    """Name a weights file by its name and content hash, so a changed file is noticed."""
    return f"file:{Path(path).name}@{sha256_prefix(path)}"


def sha256_prefix(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def keras_cache_dir() -> Path:
    """The folder where `keras.utils.get_file` looks for downloaded weights, by Keras' documented rule.

    $KERAS_HOME, else `.keras` in the home folder, or in /tmp where the home
    folder is read-only. Worked out here rather than asked of Keras, which
    exposes it only in a private module, and only after importing TensorFlow.
    """
    home = os.environ.get("KERAS_HOME")
    if home is None:
        user = Path("~").expanduser()
        home = (user if os.access(user, os.W_OK) else Path("/tmp")) / ".keras"
    base = Path(home).expanduser()
    if not os.access(base, os.W_OK) and base.exists():
        base = Path(tempfile.gettempdir()) / ".keras"  # Keras' fallback when the home folder is read-only
    return base / "models"


def short_cause(error: Exception) -> str:
    """The gist of a failed download, e.g. "no network ([Errno -2] Name or service not known)"."""
    text = str(error)
    if "URL fetch failure" in text or "URLError" in text:  # Keras' get_file
        detail = re.sub(r"^.*?URL fetch failure on \S+:\s*(None -- )?", "", text)
        return f"the download failed, no network? ({detail})"
    if errno := re.search(r"\[Errno -?\d+\][^'\")]*", text):  # requests (KerasHub's Kaggle downloads): the cause only
        return f"the download failed, no network? ({errno[0].strip()})"
    return text


def _tflite_interpreter(path: Path, num_threads: int):
    try:  # LiteRT is TensorFlow Lite's successor; tf.lite.Interpreter is deprecated.
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads)
