"""Which runtime computes a Keras backbone on this machine: the fastest one whose vectors match TensorFlow float32's.

  tensorflow       TensorFlow's graph in float32: the reference every other runtime is measured against;
  tensorflow-bf16  the same graph in bfloat16 (Keras' "mixed_bfloat16" policy), only where the CPU computes
                   bfloat16 natively (AVX-512 BF16, AMX);
  litert           the model converted to LiteRT and run by its XNNPACK kernels, in float32;
  litert-int8      the same, quantized to int8 with a calibration sample of the user's images.

None wins everywhere: which is fastest depends on the CPU's instructions, the
network, and the work (a batch of 32 or a single query). So
`make_embedder(runtime="auto")`, the first time it runs on a CPU with some
backbone and weights, measures every runtime
available there on a sample of images (`measure`): how close its vectors are
to the reference's (the lowest cosine similarity of an image's two vectors,
and the share of each image's 5 nearest others in the sample that both find),
images per second in batches, and the median time of one image. It then uses,
for batches and for single queries each, the fastest runtime within its
fidelity bar (`embedders.FIDELITY_BARS`), and remembers the measurements in
`runtimes.json` in the cache folder, keyed by the CPU, the backbone and the
weights, so later runs start at once. The runtime and its fidelity are
recorded with the embeddings (`EmbedderInfo`); a collection refuses vectors
from a runtime outside its bar.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from . import backbones, litert
from .backbones import Backbone, backbone_for, keras_embedder
from .embedders import (
    BFLOAT16_CPU_FLAGS,
    FIDELITY_BARS,
    REFERENCE_RUNTIME,
    Embedder,
    EmbedderInfo,
    Fidelity,
    KerasEmbedder,
    RandomWeightsWarning,
    TFLiteEmbedder,
    cpu_flags,
    cpu_supports_bfloat16,
)
from .errors import UserFacingError
from .images import ImageLoadError, image_extensions, load_image
from .storage import write_json

RUNTIMES = ("tensorflow", "tensorflow-bf16", "litert", "litert-int8")
#: What `runtime=` (and --runtime, and $IMAGESEARCH_RUNTIME) accepts.
CHOICES = ("auto", *RUNTIMES)
RUNTIME_ENV = "IMAGESEARCH_RUNTIME"
#: What an embedder is for: embedding batches (extraction) or one image at a time (queries).
PURPOSES = ("batch", "query")
#: Images whose vectors are compared, and further images an int8 conversion is calibrated on.
SAMPLE_IMAGES, CALIBRATION_IMAGES = 64, 64
#: The batch the speed of batches is measured in (extraction's default).
TIMING_BATCH = 32
#: Where the sample comes from when no images are given: the demo collection beside the package.
DEMO_IMAGES = Path(__file__).resolve().parents[1] / "images"
CHOICES_FILE = "runtimes.json"
FORMAT = 1
#: The CPU flags that decide which kernels the runtimes use: a machine with other ones is measured anew.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", *BFLOAT16_CPU_FLAGS, "amx_int8")


class RuntimeUnavailableError(UserFacingError, ValueError):
    """The runtime asked for cannot run here, or cannot run fast."""


@dataclass(frozen=True)
class Measurement:
    """One runtime measured on this CPU with some weights."""

    runtime: str
    fidelity: Fidelity | None  # against the reference; None for the reference itself
    images_per_second: float | None = None  # in batches of TIMING_BATCH; None when only fidelity was measured
    latency_ms: float | None = None  # median time to embed one image
    model_sha256: str | None = None  # the LiteRT file measured: another file (a new conversion) is measured again

    def within_bar(self) -> bool:
        return self.info_of(EmbedderInfo("any Keras backbone", "", 1, (1, 1))).outside_bar() is None

    def info_of(self, base: EmbedderInfo) -> EmbedderInfo:
        """`base` with this runtime and its fidelity."""
        return replace(base, runtime=self.runtime, fidelity=self.fidelity)

    def to_dict(self) -> dict:
        return {**asdict(self), "fidelity": self.fidelity.to_dict() if self.fidelity else None}

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        if data["runtime"] not in RUNTIMES:
            raise ValueError(f"unknown runtime {data['runtime']!r}")
        fidelity = data.get("fidelity")
        return cls(data["runtime"], Fidelity.from_dict(fidelity) if fidelity else None,
                   data.get("images_per_second"), data.get("latency_ms"), data.get("model_sha256"))


@dataclass(frozen=True)
class Choice:
    """What `auto` picked on this CPU with some weights, from which measurements."""

    batch: str
    query: str
    measurements: dict[str, Measurement]

    def runtime_for(self, purpose: str) -> str:
        return self.batch if purpose == "batch" else self.query

    def lines(self) -> list[str]:
        """The measurements as a small table, then the choice, for the console and notebooks."""
        reference = self.measurements[REFERENCE_RUNTIME]
        rows = []
        for name, measured in self.measurements.items():
            verdict = ("reference" if measured.fidelity is None else
                       f"{measured.fidelity}, {'within' if measured.within_bar() else 'OUTSIDE'} its bar")
            rows.append(f"  {name:16s}{measured.images_per_second:7.1f} images/s {measured.latency_ms:7.1f} ms  "
                        f"{verdict}")
        batch, query = self.measurements[self.batch], self.measurements[self.query]
        speedup = batch.images_per_second / reference.images_per_second
        return [*rows, f"  batches: {self.batch} ({speedup:.2f}x {REFERENCE_RUNTIME}); "
                       f"one query: {self.query} ({query.latency_ms:.0f} ms, {REFERENCE_RUNTIME} "
                       f"{reference.latency_ms:.0f} ms)"]


def unavailable(runtime: str, backbone: Backbone | None = None) -> str | None:
    """Why `runtime` cannot run here (or cannot run fast, or cannot compute `backbone`); None when it can."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(CHOICES)}")
    if runtime == "tensorflow-bf16" and backbone is not None and not backbone.bfloat16:
        return f"{backbone.title} is a model loaded whole, whose layers keep the float32 they were saved with"
    if runtime == "tensorflow-bf16" and not cpu_supports_bfloat16():
        return (f"this CPU has no native bfloat16 arithmetic (none of the flags {', '.join(BFLOAT16_CPU_FLAGS)}), "
                "so bfloat16 would be emulated: slower than float32, and less exact")
    if runtime.startswith("litert"):
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as error:
            return f"LiteRT is not installed ({error}); `pip install ai-edge-litert`"
    return None


def make_embedder(
    backbone: str = backbones.DEFAULT,
    weights: str = "imagenet",
    seed: int = 0,
    runtime: str | None = None,
    purpose: str = "batch",
    images: str | os.PathLike | np.ndarray | None = None,
) -> Embedder:
    """Build the extractor named by `backbone`, with `weights`, on the runtime `runtime` chooses.

    Args:
        backbone: a name in `backbones.BACKBONES` ("resnet50", …), with `weights`
            "imagenet", "random" (seeded by `seed`) or a local weights file;
            "tflite", with `weights` a LiteRT model file; or
            "keras:layer=NAME,preprocess=P", with `weights` a Keras model file.
        runtime: one of `CHOICES`; None reads $IMAGESEARCH_RUNTIME, else "auto":
            the fastest runtime within its fidelity bar here, for `purpose`.
        purpose: "batch" (extraction) or "query" (one image at a time).
        images: where the sample for a first measurement comes from: a folder
            (the images about to be embedded, or the indexed ones), or a uint8
            batch; None takes the demo images. Only read when something has to
            be measured: the first time on this CPU with this backbone and weights.
    """
    runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
    if runtime not in CHOICES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(CHOICES)}")
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; choose one of {', '.join(PURPOSES)}")
    if backbone == backbones.TFLITE:
        if runtime not in ("auto", "litert"):
            raise ValueError(f"runtime {runtime!r} applies to {', '.join(backbones.BACKBONES)} and Keras model "
                             "files; a TFLite model file runs on litert, as stored")
        if weights in ("imagenet", "random"):
            raise backbones.UnknownBackboneError(f"tflite takes its model file as the weights (--weights "
                                                 f"model.tflite), not {weights!r}")
        return TFLiteEmbedder(weights)
    declared = backbone_for(backbone, weights)
    if weights == "random":
        warnings.warn(RandomWeightsWarning.about(declared.title), RandomWeightsWarning, stacklevel=2)
    if runtime == REFERENCE_RUNTIME:
        return keras_embedder(declared, weights, seed)
    if runtime != "auto" and (reason := unavailable(runtime, declared)):
        raise RuntimeUnavailableError(f"runtime {runtime!r} is not available: {reason}; use --runtime auto")
    return _Chooser(declared, weights, seed, images).embedder(runtime, purpose)


def embedder_for(
    info: EmbedderInfo,
    runtime: str | None = None,
    purpose: str = "query",
    images: str | os.PathLike | np.ndarray | None = None,
) -> Embedder:
    """The embedder that makes the vectors `info` describes (as saved with a collection and its index), on `runtime`.

    A model or weights file must still be where `info` says, unchanged
    (`backbones.arguments_for`); otherwise a one-line error says what to do.
    """
    return make_embedder(*backbones.arguments_for(info), runtime=runtime, purpose=purpose, images=images)


def remembered_choice(weights: str = "imagenet", seed: int = 0, backbone: str = backbones.DEFAULT) -> Choice | None:
    """What `auto` chose on this CPU for these weights of `backbone`, with the measurements, or None if it never
    ran (or `backbone` is a model file that runs as stored)."""
    if backbone == backbones.TFLITE:
        return None
    declared = backbone_for(backbone, weights)
    key = declared.weights_key(weights, seed)
    return _Store().entry(_store_key(declared, key))[0] if key else None


def _store_key(backbone: Backbone, weights_key: str) -> str:
    """Where `runtimes.json` keeps a backbone's measurements: ResNet50's under its weights alone, as before
    there were other backbones; the others' under their name too."""
    return weights_key if backbone.name == backbones.DEFAULT else f"{backbone.cache_id}-{weights_key}"


class _Chooser:
    """Builds runtimes for one backbone with some weights, measuring them first where this CPU has no record."""

    def __init__(self, backbone: Backbone, weights: str, seed: int, images):
        self.backbone, self.weights, self.seed, self.images = backbone, weights, seed, images
        self._reference: KerasEmbedder | None = None
        key = backbone.weights_key(weights, seed)
        if key is None:  # ImageNet weights not downloaded yet: building the reference downloads them, or says why
            self._reference = keras_embedder(backbone, weights, seed)
            key = backbone.weights_key(weights, seed)
        self.key: str = _store_key(backbone, key)
        self.model_key = f"{backbone.cache_id}-{key}"  # the name of its LiteRT conversions
        # Named once: for a weights file, the name hashes the whole file.
        self.base_info = backbones.describe(backbone, weights, seed)

    @property
    def reference(self) -> KerasEmbedder:
        if self._reference is None:
            self._reference = keras_embedder(self.backbone, self.weights, self.seed)
        return self._reference

    def embedder(self, runtime: str, purpose: str) -> Embedder:
        store = _Store()
        choice, measurements = store.entry(self.key)
        if runtime == "auto":
            if choice is not None:
                runtime = choice.runtime_for(purpose)
                built = self.build(runtime, choice.measurements[runtime])
                if built is not None:
                    return built
            choice, built = self.choose(purpose)
            store.save(self.key, choice.measurements, choice)
            return built
        if runtime in measurements and (built := self.build(runtime, measurements[runtime])):
            return built
        sample, calibration = _sample(self.images, self.backbone.input_size)
        [(measured, built)] = self.measure([runtime], sample, calibration, timing=False)
        store.save(self.key, {runtime: measured}, None)
        print(f"{runtime}: {measured.fidelity} against {REFERENCE_RUNTIME}, "
              f"{'within its bar' if measured.within_bar() else 'OUTSIDE its bar'} ({FIDELITY_BARS[runtime]}).")
        return built

    def build(self, runtime: str, measured: Measurement) -> Embedder | None:
        """The embedder of `runtime` as it was measured, or None when its model is no longer the one measured."""
        if runtime == REFERENCE_RUNTIME:
            return self.reference
        if runtime == "tensorflow-bf16":
            return self._tensorflow_bf16(measured)
        conversion = self._convert(runtime, calibration=None)
        if conversion is None or conversion.sha256 != measured.model_sha256:
            return None
        return TFLiteEmbedder(conversion.path, _threads(), measured.info_of(self._info()))

    def choose(self, purpose: str) -> tuple[Choice, Embedder]:
        """Measure every runtime available here; return what `auto` picks from them and its embedder for `purpose`."""
        runtimes = [runtime for runtime in RUNTIMES if unavailable(runtime, self.backbone) is None]
        print(f"Choosing the fastest runtime for {self.backbone.title} ({self._info().weights}) on this CPU: "
              f"{', '.join(runtimes)} are measured, once ({self._duration()}; later runs reuse it) …", flush=True)
        sample, calibration = _sample(self.images, self.backbone.input_size)
        built = self.measure(runtimes, sample, calibration, timing=True)
        measurements = {measured.runtime: measured for measured, _ in built}
        faithful = [measured for measured in measurements.values() if measured.within_bar()]
        batch = max(faithful, key=lambda measured: measured.images_per_second).runtime
        query = min(faithful, key=lambda measured: measured.latency_ms).runtime
        choice = Choice(batch, query, measurements)
        print("\n".join(choice.lines()))
        print(f"  remembered in {_Store().path}; measured again on another CPU or with other weights.")
        chosen = choice.runtime_for(purpose)
        return choice, next(embedder for measured, embedder in built if measured.runtime == chosen)

    def _duration(self) -> str:
        """How long the first measurement takes, roughly: converting is most of it, and grows with the model."""
        parameters = self.reference.model.count_params()
        return "about a minute" if parameters < 40e6 else f"a few minutes for {parameters / 1e6:.0f}M parameters"

    def measure(self, runtimes: list[str], sample: np.ndarray, calibration: np.ndarray,
                timing: bool) -> list[tuple[Measurement, Embedder]]:
        """Each runtime's fidelity to the reference on `sample` and, with `timing`, its speed; and its embedder."""
        expected = self.reference.embed(sample)
        embedders: dict[str, Embedder] = {}
        models: dict[str, str | None] = {}
        for runtime in runtimes:
            embedders[runtime], models[runtime] = self._fresh(runtime, calibration)
        fidelity = {runtime: (None if runtime == REFERENCE_RUNTIME else compare(expected, embedder.embed(sample)))
                    for runtime, embedder in embedders.items()}
        speeds = time_runtimes(embedders, sample) if timing else {}
        measured = []
        for runtime, embedder in embedders.items():
            measurement = Measurement(runtime, fidelity[runtime], *speeds.get(runtime, (None, None)), models[runtime])
            embedder.info = measurement.info_of(embedder.info)
            measured.append((measurement, embedder))
        return measured

    def _fresh(self, runtime: str, calibration: np.ndarray) -> tuple[Embedder, str | None]:
        """A new embedder of `runtime`, and the SHA-256 of its LiteRT model (None for TensorFlow's)."""
        if runtime == REFERENCE_RUNTIME:
            return self.reference, None
        if runtime == "tensorflow-bf16":
            return self._tensorflow_bf16(None), None
        conversion = self._convert(runtime, calibration)
        if conversion.seconds is not None:
            print(f"  converted {self.backbone.title} to {runtime} in {conversion.seconds:.0f} s "
                  f"({conversion.path.stat().st_size / 2**20:.0f} MiB, cached in {conversion.path.parent})")
        return TFLiteEmbedder(conversion.path, _threads(), self._info(runtime)), conversion.sha256

    def _tensorflow_bf16(self, measured: Measurement | None) -> KerasEmbedder:
        embedder = keras_embedder(self.backbone, self.weights, self.seed, bfloat16=True)
        if measured is not None:
            embedder.info = measured.info_of(embedder.info)
        return embedder

    def _convert(self, runtime: str, calibration: np.ndarray | None) -> litert.Conversion | None:
        kind = "int8" if runtime == "litert-int8" else "float32"
        if calibration is None:  # only a cached conversion will do: one to be made must be measured
            return litert.cached(self.model_key, kind)
        return litert.converted(self.model_key, kind, self.reference.serving_model, calibration)

    def _info(self, runtime: str = REFERENCE_RUNTIME) -> EmbedderInfo:
        return replace(self.base_info, runtime=runtime)


def compare(expected: np.ndarray, actual: np.ndarray, k: int = 5) -> Fidelity:
    """How closely `actual` vectors match `expected` ones, image by image and as neighbours within the sample."""
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    cosine = np.sum(expected * actual, axis=1) / np.maximum(norms, 1e-30)
    k = min(k, len(expected) - 1)
    agreement = 1.0
    if k > 0:
        ours, theirs = _nearest(expected, k), _nearest(actual, k)
        agreement = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours.tolist(), theirs.tolist())]))
    return Fidelity(float(cosine.min()), agreement, len(expected))


def _nearest(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest other rows by L2 distance (the index's default metric)."""
    squared = np.sum(vectors**2, axis=1)
    distances = squared[:, None] + squared[None, :] - 2 * vectors @ vectors.T
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def time_runtimes(embedders: dict[str, Embedder], sample: np.ndarray, rounds: int = 3,
                  single: int = 7) -> dict[str, tuple[float, float]]:
    """{runtime: (images per second in batches, median milliseconds of one image)}, measured side by side.

    The runtimes take turns, round by round, keeping each one's best batch and
    median single time, so that other work on the machine slows them alike.
    Each was warmed up by the caller (the fidelity pass) at the sample's size;
    the batch and single shapes get one untimed call here first.
    """
    batch = np.resize(sample, (TIMING_BATCH, *sample.shape[1:]))
    one = sample[:1]
    for embedder in embedders.values():
        embedder.embed(batch)
        embedder.embed(one)
    best = dict.fromkeys(embedders, np.inf)
    singles: dict[str, list[float]] = {runtime: [] for runtime in embedders}
    for _ in range(rounds):
        for runtime, embedder in embedders.items():
            start = time.perf_counter()
            embedder.embed(batch)
            best[runtime] = min(best[runtime], time.perf_counter() - start)
    for _ in range(single):
        for runtime, embedder in embedders.items():
            start = time.perf_counter()
            embedder.embed(one)
            singles[runtime].append(time.perf_counter() - start)
    return {runtime: (TIMING_BATCH / best[runtime], float(np.median(singles[runtime])) * 1e3) for runtime in embedders}


def _sample(images, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The images fidelity is measured on, and the ones an int8 conversion is calibrated on (others where there are)."""
    if isinstance(images, np.ndarray):
        pixels = images
    else:
        folder = Path(images) if images is not None else DEMO_IMAGES
        pixels = _load(folder, SAMPLE_IMAGES + CALIBRATION_IMAGES, size)
        if len(pixels) < 8 and folder != DEMO_IMAGES and DEMO_IMAGES.is_dir():
            pixels = _load(DEMO_IMAGES, SAMPLE_IMAGES + CALIBRATION_IMAGES, size)  # too few to tell neighbours apart
    if len(pixels) < 8:
        raise RuntimeUnavailableError(
            f"choosing a runtime measures it on at least 8 images, and {images or DEMO_IMAGES} gave {len(pixels)}; "
            f"pass more images, or name a runtime (--runtime {REFERENCE_RUNTIME} needs no measurement)")
    sample = pixels[:SAMPLE_IMAGES]
    rest = pixels[SAMPLE_IMAGES:]
    return sample, rest if len(rest) >= 16 else pixels


def _load(folder: Path, count: int, size: tuple[int, int]) -> np.ndarray:
    """Up to `count` readable images from `folder` at `size`, in listing order, without listing all of a huge
    folder."""
    pixels = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a file's decoding troubles are extraction's to report, not the sample's
        for path in _walk(folder):
            try:
                pixels.append(load_image(path, size))
            except (ImageLoadError, OSError):
                continue
            if len(pixels) == count:
                break
    return np.stack(pixels) if pixels else np.zeros((0, size[1], size[0], 3), np.uint8)


def _walk(folder: Path) -> Iterator[Path]:
    """The regular image files under `folder`, by name, folder by folder (no FIFO or device is ever opened)."""
    extensions = image_extensions()
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(Path(entry.path))
            elif entry.is_file() and Path(entry.name).suffix.lower() in extensions:
                yield Path(entry.path)
        except OSError:
            continue


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> dict:
    """What decides the runtimes' speed and kernels: the CPU, its threads, and the versions of the libraries."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    flags = sorted(flag for flag in KERNEL_FLAGS if flag in cpu_flags())
    return {"cpu": model, "flags": flags, "threads": _threads(),
            "tensorflow": installed("tensorflow"), "litert": installed("ai-edge-litert")}


class _Store:
    """The remembered measurements: {machine fingerprint: {"machine": …, "weights": {key: entry}}}."""

    def __init__(self):
        self.path = litert.cache_dir() / CHOICES_FILE
        self.machine = machine()
        self.fingerprint = hashlib.sha256(json.dumps(self.machine, sort_keys=True).encode()).hexdigest()[:16]

    def _read(self) -> dict:
        if not self.path.exists():
            return {"format": FORMAT, "machines": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT or not isinstance(data.get("machines"), dict):
                raise ValueError(f"not a format {FORMAT} file of runtime choices")
            return data
        except (OSError, ValueError, AttributeError) as error:
            self._unreadable(str(error))
            return {"format": FORMAT, "machines": {}}

    def entry(self, key: str) -> tuple[Choice | None, dict[str, Measurement]]:
        """What is remembered for the weights `key` on this machine: auto's choice (or None), and the measurements."""
        try:
            raw = self._read()["machines"].get(self.fingerprint, {}).get("weights", {}).get(key)
            if raw is None:
                return None, {}
            measurements = {name: Measurement.from_dict(data) for name, data in raw["runtimes"].items()}
            if "batch" not in raw:
                return None, measurements
            choice = Choice(raw["batch"], raw["query"], measurements)
            for measured in (measurements[choice.batch], measurements[choice.query]):
                float(measured.images_per_second), float(measured.latency_ms)  # a choice rests on its timings
            return choice, measurements
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            self._unreadable(f"{error.__class__.__name__}: {error}")
            return None, {}

    def _unreadable(self, reason: str) -> None:
        print(f"The remembered runtime choices in {self.path} are unreadable ({reason}): measuring again.",
              file=sys.stderr)

    def save(self, key: str, measurements: dict[str, Measurement], choice: Choice | None) -> None:
        data = self._read()
        mine = data["machines"].get(self.fingerprint)
        if not isinstance(mine, dict) or not isinstance(mine.get("weights"), dict):  # new, or damaged: start afresh
            mine = data["machines"][self.fingerprint] = {"machine": self.machine, "weights": {}}
        entry = mine["weights"].get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("runtimes"), dict):
            entry = mine["weights"][key] = {"runtimes": {}}
        entry["runtimes"].update({name: measured.to_dict() for name, measured in measurements.items()})
        if choice is not None:
            entry.update(batch=choice.batch, query=choice.query,
                         measured=datetime.now(UTC).isoformat(timespec="seconds"))
        else:  # a runtime measured anew (its model changed, or it was never measured): auto's choice is stale
            for name in ("batch", "query", "measured"):
                entry.pop(name, None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, data)
