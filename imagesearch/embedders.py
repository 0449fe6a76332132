"""Feature extractors: a batch of RGB images in, one float32 vector per image out.

Every extractor follows the same small interface (`Embedder`): an `info` that
names the backbone and weights (saved with the embeddings, so that vectors
from different models are never mixed) and an `embed` method over uint8
batches. Each extractor does its own preprocessing, so callers only ever hand
over plain pixels.

ResNet50 can run in bfloat16 where the CPU computes it natively (`precision=`,
see `cpu_supports_bfloat16`); its vectors stay float32 arrays and are treated
as the same space as float32 ones (`EmbedderInfo.compatible_with`).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import UserFacingError
from .runtime import import_tensorflow, quietly

#: The file Keras looks for in its cache before downloading ResNet50's ImageNet weights.
RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"

#: What `precision=` accepts; "auto" becomes "bfloat16" where `bfloat16_unavailable()` says nothing against it.
PRECISIONS = ("float32", "bfloat16", "auto")

#: /proc/cpuinfo flags of native bfloat16 arithmetic: AVX-512 BF16 (Zen 4+, Cooper Lake) or AMX (Sapphire Rapids+).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class EmbedderInfo:
    """What produced a set of embeddings: enough to tell whether two sets can be compared."""

    backbone: str  # e.g. "resnet50" or "tflite:mobilenet_v1.tflite"
    weights: str  # "imagenet", "random(seed=0)", or "file:<name>@<sha256 prefix>"
    dim: int  # length of one embedding vector
    input_size: tuple[int, int]  # (width, height) the images are resized to
    precision: str = "float32"  # what the model computed in; the vectors are float32 either way

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EmbedderInfo:
        return cls(
            backbone=data["backbone"],
            weights=data["weights"],
            dim=int(data["dim"]),
            input_size=tuple(data["input_size"]),
            precision=data.get("precision", "float32"),  # saved before precision was recorded: float32
        )

    def __str__(self) -> str:
        precision = "" if self.precision == "float32" else f", {self.precision}"
        return f"{self.backbone} (weights {self.weights}, {self.dim}-d{precision})"

    def compatible_with(self, other: EmbedderInfo) -> bool:
        """Whether vectors from `self` and `other` live in the same space, so they can be compared or mixed.

        Precision does not count: a bfloat16 run of the same backbone and weights
        approximates the float32 vectors closely enough to search among them
        (benchmarks/precision.py measures it: cosine similarity to float32 above
        0.99999 per image, and the same precision@5, with random ResNet50 weights).
        """
        return replace(self, precision="float32") == replace(other, precision="float32")


class Embedder(Protocol):
    """The interface every feature extractor implements."""

    info: EmbedderInfo

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, height, width, 3)` uint8 batch to an `(n, dim)` float32 array."""
        ...


class WeightsUnavailableError(UserFacingError, RuntimeError):
    """The requested pretrained weights could not be loaded (usually: no network)."""


class PrecisionUnavailableError(UserFacingError, ValueError):
    """bfloat16 was asked for where it cannot run natively (it would be slower, not faster)."""


class RandomWeightsWarning(UserWarning):
    """Embeddings from random weights test the mechanics: they match near-copies of an image, not its meaning."""


class ResNet50Embedder:
    """ResNet50 from `keras.applications` without its classifier, global-average pooled to 2048-d.

    Args:
        weights: "imagenet" (downloaded once into Keras' cache), a path to a
            local weights file (.h5 or .weights.h5, no top), or "random" for
            seeded random initialisation, which is only good for smoke tests.
        seed: the seed for "random" weights.
        precision: "float32" (the default); "bfloat16", which raises
            ValueError where the CPU or TensorFlow cannot compute it natively;
            or "auto", bfloat16 where it can and float32 elsewhere. `info.precision`
            says which one was used. The vectors are float32 arrays either way.
    """

    def __init__(self, weights: str = "imagenet", seed: int = 0, precision: str = "float32"):
        tf = import_tensorflow()
        import keras

        precision = resolve_precision(precision)  # before the model is built: fail fast
        if weights == "random":
            keras_weights, label = None, f"random(seed={seed})"
            warnings.warn(
                "ResNet50 uses randomly initialised weights, to test the mechanics: its vectors still match "
                "near-copies of an image (a crop, a mirror image) but not images that show the same thing.",
                RandomWeightsWarning,
                stacklevel=3,  # point at the caller of make_embedder, the usual entry
            )
        elif weights == "imagenet":
            keras_weights, label = "imagenet", "imagenet"
        else:
            keras_weights, label = _local_file(weights), _file_label(weights)

        try:
            with _seeded(seed if weights == "random" else None), _announced_download(weights):
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
        # bfloat16 is TensorFlow's oneDNN graph rewrite (auto_mixed_precision_onednn_bfloat16), which
        # turns the convolutions and their fused ops into bfloat16 with casts around them, applied to
        # this function's calls only (see `_onednn_bfloat16_calls`). Measured against the alternative,
        # a Keras "mixed_bfloat16" dtype policy on every layer (scoped by construction, via
        # keras.models.clone_model), on an AMD EPYC with avx512_bf16, 2 cores, batch 32, random
        # weights, runs interleaved: float32 24.1 images/s, oneDNN rewrite 33.8 (1.40x), Keras policy
        # 32.3 (1.34x); cosine to float32 min 0.999995 vs 0.999994, relative L2 error 3.1e-3 vs 3.6e-3.
        # The rewrite is a little faster and closer (Keras keeps BatchNormalization in float32, with
        # casts around every convolution), needs no second model, and is the path that gave
        # 36 -> 58 images/s on a Xeon with AMX. Its cost: it relies on TensorFlow internals, checked
        # in `bfloat16_unavailable`.
        self._call_scope = _onednn_bfloat16_calls if precision == "bfloat16" else nullcontext
        self.info = EmbedderInfo("resnet50", label, 2048, (224, 224), precision)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map a `(n, 224, 224, 3)` uint8 batch to `(n, 2048)` float32 embeddings."""
        _check_batch(images, self.info)
        with self._call_scope():
            vectors = self._embed_graph(images)
        return vectors.numpy().astype(np.float32, copy=False)


class TFLiteEmbedder:
    """An embedding model in a TensorFlow Lite file that takes uint8 RGB pixels.

    Quantized outputs are dequantized with the output tensor's scale and zero
    point. Used in tests with the real ImageNet-trained MobileNet in
    `../shared/models/`, the one pretrained model available offline here.
    """

    def __init__(self, model_path: str | os.PathLike, num_threads: int | None = None):
        path = _local_file(model_path)
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
        weights = f"sha256:{_sha256_prefix(path)}"
        self.info = EmbedderInfo(f"tflite:{path.name}", weights, dim, (int(width), int(height)))
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


def make_embedder(
    backbone: str = "resnet50", weights: str = "imagenet", seed: int = 0, precision: str = "float32"
) -> Embedder:
    """Build the extractor named by `backbone`: "resnet50" (with `weights`) or "tflite" (`weights` is the model file).

    `precision` ("float32", "bfloat16" or "auto") applies to ResNet50; a TFLite
    model runs in the precision stored in its file, so it takes "float32" or "auto".
    """
    if backbone == "resnet50":
        return ResNet50Embedder(weights=weights, seed=seed, precision=precision)
    if backbone == "tflite":
        if precision not in ("float32", "auto"):
            raise ValueError(f"precision {precision!r} applies to resnet50; a TFLite model runs as stored in its file")
        return TFLiteEmbedder(weights)
    raise ValueError(f"unknown backbone {backbone!r}; choose 'resnet50' or 'tflite'")


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), by its /proc/cpuinfo flags; else False."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:  # not Linux
        return False
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def bfloat16_unavailable() -> str | None:
    """Why bfloat16 embedding cannot run fast here, or None when it can."""
    if not cpu_supports_bfloat16():
        return (
            f"this CPU has no native bfloat16 arithmetic (none of the flags {', '.join(BFLOAT16_CPU_FLAGS)}), "
            "so bfloat16 would be emulated: slower than float32, and less exact"
        )
    try:
        from tensorflow.core.protobuf import rewriter_config_pb2
        from tensorflow.python.eager import context
        from tensorflow.python.util import _pywrap_util_port
    except ImportError as error:
        return f"this TensorFlow lacks the internals the bfloat16 rewrite is applied with ({error})"
    rewrites = rewriter_config_pb2.RewriterConfig.DESCRIPTOR.fields_by_name
    if "auto_mixed_precision_onednn_bfloat16" not in rewrites or not hasattr(context, "FunctionCallOptions"):
        return "this TensorFlow lacks the internals the bfloat16 rewrite is applied with"
    if not _pywrap_util_port.IsMklEnabled():
        # The rewrite is then silently skipped: the "bfloat16" vectors would be float32 ones.
        return "TensorFlow's oneDNN optimizations are off (TF_ENABLE_ONEDNN_OPTS=0, or a build without oneDNN)"
    return None


def resolve_precision(precision: str) -> str:
    """Turn a `precision=` argument into "float32" or "bfloat16"; raise ValueError for bfloat16 where it cannot run.

    Asking for "bfloat16" where it would be emulated is an error rather than a
    warning: it is only ever asked for to go faster, and emulated it goes slower
    while giving up exactness. "auto" is the way to say "bfloat16 where it helps".
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return precision
    reason = bfloat16_unavailable()
    if reason is None:
        return "bfloat16"
    if precision == "auto":
        return "float32"
    raise PrecisionUnavailableError(
        f"precision 'bfloat16' is not available: {reason}; use precision='auto' or 'float32'"
    )


@contextmanager
def _onednn_bfloat16_calls() -> Iterator[None]:
    """Within this block, and on this thread only, tf.functions run with oneDNN's bfloat16 graph rewrite.

    TensorFlow offers the rewrite publicly only as a process-wide option,
    `tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})`,
    and that option is read when a function is *called*, not when it is traced: each call
    carries the optimizer config as an attribute, and a function is optimised anew for every
    config it is called with (tested: tracing with the option on and calling with it off gives
    float32 results, bit for bit; turning it on changes the results of every tf.function in the
    process, even ones called before). So the config is set here per call, in the thread-local
    call options that `tf.experimental.function_executor_type` also swaps, and put back after:
    other models and threads keep float32 (tests/test_precision.py checks this bit for bit).
    """
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    previous = ctx.function_call_options  # derived from the global config, so other settings carry over
    config = config_pb2.ConfigProto.FromString(previous.config_proto_serialized or b"")
    rewrites = config.graph_options.rewrite_options
    rewrites.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    ctx.function_call_options = context.FunctionCallOptions(executor_type=previous.executor_type, config_proto=config)
    try:
        yield
    finally:
        ctx.function_call_options = previous


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


@contextmanager
def _announced_download(weights: str) -> Iterator[None]:
    """Say, in one line of ours, when ResNet50's ImageNet weights are about to be downloaded, and keep Keras quiet.

    Keras prints "Downloading data from <url>" and a progress bar; offline, that
    line came just before the failure and read as if a download were under way.
    """
    cached = _keras_cache_dir() / RESNET50_WEIGHTS_FILE
    if weights != "imagenet" or cached.is_file():
        yield
        return
    import keras

    print(f"Downloading ResNet50's ImageNet weights (94 MB), once, into {cached.parent}/ …", flush=True)
    was_interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_interactive:
            keras.config.enable_interactive_logging()


def _imagenet_download_help(error: Exception) -> str:
    cache = _keras_cache_dir()
    return (
        f"Could not get ResNet50's ImageNet weights: {_short_cause(error)}. Keras downloads them once, on first "
        f"use, into {cache}/; without network that fails (so does a damaged copy there). To go on, do one of these:\n"
        f"  1. copy {RESNET50_WEIGHTS_FILE} from a machine that has it (in ~/.keras/models/) into {cache}/, "
        "then run again;\n"
        "  2. use that file where it is: `make demo WEIGHTS=/path/to/file.h5` and `make lab WEIGHTS=/path/to/file.h5`, "
        "--weights on the command line, weights='/path/to/file.h5' in Python;\n"
        "  3. test only the mechanics, with vectors that match near-copies but not meaning: "
        "`make demo WEIGHTS=random`, then `make lab WEIGHTS=random` (--weights random, weights='random').\n"
        "In a notebook already open, set WEIGHTS in its parameters cell and run it again."
    )


def _short_cause(error: Exception) -> str:
    """The gist of a failed download, e.g. "no network ([Errno -2] Name or service not known)"."""
    text = str(error)
    if "URL fetch failure" in text or "URLError" in text or "Errno" in text:
        detail = re.sub(r"^.*?URL fetch failure on \S+:\s*(None -- )?", "", text)
        return f"the download failed, no network? ({detail})"
    return text


def _tflite_interpreter(path: Path, num_threads: int):
    try:  # LiteRT is TensorFlow Lite's successor; tf.lite.Interpreter is deprecated.
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads)
