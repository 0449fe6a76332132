"""Keras backbones converted to LiteRT (TensorFlow Lite's successor), once per weights, and the cache that keeps them.

The converted model takes the same uint8 pixels as the backbone's
`KerasEmbedder` and does the same preprocessing inside (its `serving_model`),
so `TFLiteEmbedder` runs it as it runs any model file. Two kinds are made:

  float32  the same arithmetic as TensorFlow's graph, run by LiteRT's XNNPACK kernels;
  int8     full-integer quantization: weights and activations in int8, their scales set by a calibration
           sample of the user's own images (the first run's), inputs and outputs left as they are.

Conversions take seconds to minutes, so each is kept in `cache_dir()` (beside
Keras' own cache) under the backbone and the hash of the weights it was made
from, with a sidecar that records the file's own SHA-256. A file whose hash
does not match its sidecar, or a sidecar that cannot be read, is converted
again: a cache is never trusted for what it merely claims. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backbones
from .embedders import keras_cache_dir
from .errors import UserFacingError
from .runtime import import_tensorflow
from .storage import atomic_path, write_json

#: Where conversions and remembered runtime choices go, instead of `~/.keras/imagesearch` (e.g. for tests).
CACHE_ENV = "IMAGESEARCH_CACHE"
#: The format of a conversion's sidecar; another one is converted again.
FORMAT = 1
KINDS = ("float32", "int8")


class ConversionError(UserFacingError, RuntimeError):
    """The TensorFlow Lite converter failed on the model."""


@dataclass(frozen=True)
class Conversion:
    """A converted model file in the cache, checked against its sidecar."""

    path: Path
    kind: str
    sha256: str  # of the .tflite file: what a measurement of this model is tied to
    seconds: float | None  # how long converting took, when it happened in this call; None when it was cached


def cache_dir() -> Path:
    """`$IMAGESEARCH_CACHE`, else `imagesearch/` beside Keras' model cache (usually `~/.keras/imagesearch`)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else keras_cache_dir().parent / "imagesearch"


def weights_key(weights: str, seed: int = 0, backbone: backbones.Backbone | None = None) -> str | None:
    """A name for a backbone's weights (ResNet50's by default) that changes when they do; see `Backbone.weights_key`.

    None for "imagenet" while they have not been downloaded yet (build the
    backbone first: it downloads them, or says why it cannot).
    """
    return (backbone or backbones.BACKBONES[backbones.DEFAULT]).weights_key(weights, seed)


def converted(
    key: str, kind: str, keras_model: Callable[[], object], calibration: np.ndarray | None = None
) -> Conversion:
    """The cached LiteRT conversion of the model `key` names (backbone and weights), converting `keras_model()` (a
    Keras model that takes uint8 pixels) when it is missing.

    `calibration` (a uint8 batch of the user's images) is needed for "int8",
    and only when it is converted: a cached int8 model keeps the calibration
    of the run that made it.
    """
    path, sidecar = _paths(key, kind)
    problem = _check(path, sidecar)
    if problem is None:
        return Conversion(path, kind, json.loads(sidecar.read_text())["sha256"], None)
    if path.exists() or sidecar.exists():
        print(f"The cached LiteRT model {path} {problem}: converting it again.", file=sys.stderr)
    if kind == "int8" and (calibration is None or not len(calibration)):
        raise ValueError("an int8 conversion needs a calibration sample of images")
    start = time.perf_counter()
    blob = _convert(keras_model(), kind, calibration, key)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(blob).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_bytes(blob)
    details = {"format": FORMAT, "sha256": digest, "bytes": len(blob), "kind": kind, "weights": key,
               "calibration_images": 0 if calibration is None or kind != "int8" else len(calibration),
               "tensorflow": import_tensorflow().__version__, "seconds": round(seconds, 1)}
    write_json(sidecar, details)  # after the model: a sidecar always names a whole file
    return Conversion(path, kind, digest, seconds)


def cached(key: str, kind: str) -> Conversion | None:
    """The cached conversion of the model `key`, or None when there is none that can be used."""
    path, sidecar = _paths(key, kind)
    if _check(path, sidecar) is not None:
        return None
    return Conversion(path, kind, json.loads(sidecar.read_text())["sha256"], None)


def _paths(key: str, kind: str) -> tuple[Path, Path]:
    if kind not in KINDS:
        raise ValueError(f"unknown conversion {kind!r}; choose one of {', '.join(KINDS)}")
    path = cache_dir() / f"{key}-{kind}.tflite"
    return path, path.with_suffix(".json")


def _check(path: Path, sidecar: Path) -> str | None:
    """Why the cached conversion at `path` cannot be used, or None when its bytes are what its sidecar records."""
    try:
        details = json.loads(sidecar.read_text())
        if details.get("format") != FORMAT:
            return f"has a sidecar of format {details.get('format')}, not {FORMAT}"
        expected = details["sha256"]
        with path.open("rb") as file:
            actual = hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError as error:
        return f"is incomplete ({Path(error.filename).name} is missing)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"has an unreadable sidecar ({error.__class__.__name__}: {error})"
    if actual != expected:
        return "is damaged (its SHA-256 is not the one recorded when it was converted)"
    return None


def _convert(serving, kind: str, calibration: np.ndarray | None, key: str) -> bytes:
    """Convert a Keras model (uint8 pixels in, preprocessing inside, one vector out) to LiteRT."""
    tf = import_tensorflow()

    # Keras' own model, not a traced tf.function: converting `from_concrete_functions` on the embedder's graph
    # gave a model a hundredth of the size whose outputs were NaN (TensorFlow 2.21).
    converter = tf.lite.TFLiteConverter.from_keras_model(serving)
    if kind == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    with _silenced() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Statistics for quantized inputs were expected": it is the uint8 cast
        try:
            return converter.convert()
        except Exception as error:
            failure, tail = error, "\n".join(log.read_text(errors="replace").splitlines()[-5:])
    raise ConversionError(f"converting {key} to LiteRT ({kind}) failed: {failure}\n{tail}".rstrip()) from failure


@contextmanager
def _silenced() -> Iterator[Path]:
    """Send what the converter prints (hundreds of lines, from Python and C++) to a file, on both streams."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryDirectory(prefix="imagesearch-convert-") as folder:
        log = Path(folder) / "converter.log"
        with log.open("wb") as sink:
            saved = [os.dup(1), os.dup(2)]
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            python_streams = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (closed below)
            try:
                yield log
            finally:
                sys.stdout.close()
                sys.stdout, sys.stderr = python_streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for descriptor in saved:
                    os.close(descriptor)
