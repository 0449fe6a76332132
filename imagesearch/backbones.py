"""The backbones: every network that can embed the images, each declared once, and rebuilt from a saved description.

A `Backbone` says what a network is (one line, for `--help` and the
notebooks), the image size it takes, the length of its vector, how Keras
builds it (classifier removed, pooled to one vector) with ImageNet weights,
seeded random ones or a local weights file, and the preprocessing its
weights were trained with: Keras operations from float32 pixels (0..255,
RGB), which run inside the embedder's traced graph. `BACKBONES` holds them,
by the name `--backbone` takes. Two more kinds are model files of the user's,
passed as the weights:

  tflite                            a LiteRT model that takes uint8 pixels (`TFLiteEmbedder`);
  keras:layer=NAME,preprocess=P     a .keras or .h5 model, its features taken at layer NAME, its input prepared
                                    as P, one of `PREPROCESSING`.

What made a collection's vectors is saved with them (`EmbedderInfo`).
`arguments_for` turns that description back into the arguments of
`runtimes.make_embedder`, having checked that a model or weights file is
still the one the vectors came from; so `query` and the service need no
--backbone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .embedders import (
    REFERENCE_RUNTIME,
    EmbedderInfo,
    KerasEmbedder,
    WeightsUnavailableError,
    dtype_policy,
    file_label,
    keras_cache_dir,
    local_file,
    seeded,
    sha256_prefix,
    short_cause,
    weights_label,
)
from .errors import UserFacingError
from .runtime import import_tensorflow

#: The backbone used where none is named, and the one whose runtime choices and conversions were cached before
#: there were others (their cache keys stay as they were).
DEFAULT = "resnet50"
#: A LiteRT model file of the user's: `--backbone tflite --weights model.tflite`.
TFLITE = "tflite"
#: A Keras model file of the user's: `--backbone keras:layer=NAME,preprocess=P --weights model.keras`.
KERAS_FILE = "keras:"
#: The KerasHub preset of ViT-B/16's ImageNet weights.
VIT_PRESET = "vit_base_patch16_224_imagenet"


class UnknownBackboneError(UserFacingError, ValueError):
    """The backbone asked for is not one declared here, or its description is incomplete."""


class ModelFileChangedError(UserFacingError, ValueError):
    """The model or weights file a collection was embedded with is gone, or is no longer the same file."""


class BackboneMismatchError(UserFacingError, ValueError):
    """The backbone or weights asked for are not the ones the index was built with."""


# --- preprocessing: float32 pixels 0..255 in, what a network's weights expect out, in Keras operations ---------


def _as_is(pixels):
    return pixels


def _zero_one(pixels):
    return pixels / 255.0


def _minus_one_one(pixels):
    return pixels / 127.5 - 1.0


def _caffe(pixels):
    import keras

    return keras.applications.imagenet_utils.preprocess_input(pixels, mode="caffe")


def _torch(pixels):
    import keras

    return keras.applications.imagenet_utils.preprocess_input(pixels, mode="torch")


def _resnet50(pixels):
    import keras

    return keras.applications.resnet50.preprocess_input(pixels)


#: What a Keras model file's input may be prepared as (`keras:…,preprocess=P`); the names of
#: `keras.applications.imagenet_utils` where it has them.
PREPROCESSING: dict[str, Callable] = {
    "none": _as_is,  # the pixels as they are, 0..255 floats (the model scales them itself)
    "0-1": _zero_one,  # divided by 255
    "-1-1": _minus_one_one,  # scaled to -1..1 (imagenet_utils' "tf")
    "caffe": _caffe,  # RGB to BGR, ImageNet's mean pixel subtracted, not scaled
    "torch": _torch,  # 0..1, then ImageNet's mean and standard deviation per channel
}


# --- the declarations ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pretrained:
    """Where a backbone's ImageNet weights come from, and the file that holds them once downloaded."""

    who: str  # what downloads them, as the offline message names it
    megabytes: int  # roughly, for the line that announces the download
    cached: Callable[[], Path]  # the file that holds them once downloaded: its hash names them in caches
    elsewhere: str  # where a machine that has them keeps them, for the offline message
    folder: Callable[[], Path] | None = None  # a cache folder to copy whole, where the file alone will not do
    origin: str = ""  # where else the weights file can be had, for the offline message


@dataclass(frozen=True)
class Backbone:
    """One network: what it is, what it takes and gives, how Keras builds it, and how its input is prepared."""

    name: str  # what --backbone takes, and EmbedderInfo.backbone records
    title: str  # how messages name it: "ResNet50"
    summary: str  # one line for --help and the notebooks
    input_size: tuple[int, int]  # (width, height)
    dim: int  # the length of its vector
    make: Callable[[Backbone, str | None], Any]  # (self, weights: "imagenet", None (random) or a file) -> Keras model
    preprocess: Callable = _as_is  # float32 pixels 0..255 -> the model's input, in Keras operations
    pretrained: Pretrained | None = None  # None: no ImageNet weights (a model file of the user's)
    library: str = "keras"  # whose initialisers make its random weights: their version is part of a cache key
    bfloat16: bool = True  # whether Keras' bfloat16 policy applies when it is built (not to a model loaded whole)
    cache_name: str = ""  # names its LiteRT conversions and remembered runtimes; defaults to `name`

    @property
    def cache_id(self) -> str:
        return self.cache_name or self.name

    def line(self) -> str:
        """One line for --help and the notebooks: name, input, output, what it is."""
        width, height = self.input_size
        return f"{self.name:17s}{width}x{height} -> {f'{self.dim}-d':7s}{self.summary}"

    def weights_key(self, weights: str, seed: int = 0) -> str | None:
        """A name for these weights that changes when they do: a content hash, or the seed for random weights.

        None for "imagenet" while they have not been downloaded yet (building the
        backbone downloads them, or says why it cannot).
        """
        if weights == "random":  # the initialisers' library decides what a seed gives
            return f"random{seed}-keras{version('keras')}" + (
                f"-{self.library}{version(self.library)}" if self.library != "keras" else "")
        if weights == "imagenet":
            cached = self.pretrained.cached() if self.pretrained else None
            return f"imagenet-{sha256_prefix(cached)}" if cached and cached.is_file() else None
        return f"file-{sha256_prefix(weights)}"


def _keras_file(file: str) -> Callable[[], Path]:
    return lambda: keras_cache_dir() / file


def _application(constructor: str, **options) -> Callable[[Backbone, str | None], Any]:
    """`keras.applications.<constructor>` without its classifier, global-average pooled to one vector."""

    def make(backbone: Backbone, weights: str | None):
        import keras

        width, height = backbone.input_size
        return getattr(keras.applications, constructor)(
            include_top=False, weights=weights, pooling="avg", input_shape=(height, width, 3), **options)

    return make


#: ViT-B/16 as KerasHub's `vit_base_patch16_224_imagenet` preset declares it (converted from Google's
#: checkpoint): 12 layers of 12 heads, 768 wide, 16x16 patches; random weights are drawn for the same layers.
VIT_B16 = {"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}


def _vit(backbone: Backbone, weights: str | None):
    """ViT-B/16 from KerasHub; its vector is the class token after the final layer norm.

    The class token, not the mean of the patch tokens: ViT's ImageNet
    classifier reads the class token alone, so that is the vector its weights
    were trained to make a summary of the image.
    """
    import keras

    keras_hub = _keras_hub()
    if weights == "imagenet":
        encoder = keras_hub.models.Backbone.from_preset(VIT_PRESET)
    else:
        width, height = backbone.input_size
        encoder = keras_hub.models.ViTBackbone(image_shape=(height, width, 3), **VIT_B16)
        if weights is not None:
            encoder.load_weights(weights)
    tokens = encoder.output  # (n, 1 + patches, 768): the encoder ends with its layer norm
    return keras.Model(encoder.input, tokens[:, 0, :], name="vit_b16_class_token")


def _keras_hub():
    import_tensorflow()  # first: without its start-up chatter
    try:
        import keras_hub
    except ImportError as error:
        raise UserFacingError(f"vit_b16 is built by KerasHub, which is not installed ({error}); "
                              "pip install -r requirements.txt") from error
    return keras_hub


def _vit_cached() -> Path:
    """Where kagglehub keeps the preset's weights once downloaded (its cache: $KAGGLEHUB_CACHE or
    ~/.cache/kagglehub), by the Kaggle handle KerasHub names for the preset."""
    import kagglehub.config

    handle = _keras_hub().models.ViTBackbone.presets[VIT_PRESET]["kaggle_handle"].removeprefix("kaggle://")
    return Path(kagglehub.config.get_cache_folder()) / "models" / handle / "model.weights.h5"


def _kagglehub_cache() -> Path:
    import kagglehub.config

    return Path(kagglehub.config.get_cache_folder())


BACKBONES: dict[str, Backbone] = {backbone.name: backbone for backbone in [
    Backbone(
        "resnet50", "ResNet50", "ResNet50 (keras.applications), 24M parameters; the default",
        (224, 224), 2048, _application("ResNet50"), _resnet50,
        Pretrained("Keras", 94, _keras_file("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                   "~/.keras/models/"),
    ),
    Backbone(
        "efficientnetv2b0", "EfficientNetV2-B0",
        "EfficientNetV2-B0 (keras.applications), 6M parameters: small and quick",
        (224, 224), 1280, _application("EfficientNetV2B0", include_preprocessing=True),  # it scales its own input
        _as_is, Pretrained("Keras", 24, _keras_file("efficientnetv2-b0_notop.h5"), "~/.keras/models/"),
    ),
    Backbone(
        "convnext_tiny", "ConvNeXt-Tiny",
        "ConvNeXt-Tiny (keras.applications), 28M parameters: a CNN of transformer-era design",
        (224, 224), 768, _application("ConvNeXtTiny", include_preprocessing=True),  # it normalises its own input
        _as_is, Pretrained("Keras", 111, _keras_file("convnext_tiny_notop.h5"), "~/.keras/models/"),
    ),
    Backbone(
        "vit_b16", "ViT-B/16",
        "Vision Transformer B/16 (KerasHub), 86M parameters: its class token",
        (224, 224), 768, _vit, _minus_one_one,  # Google's ViT checkpoints take pixels scaled to -1..1
        Pretrained("KerasHub (from Kaggle)", 343, _vit_cached, "~/.cache/kagglehub/", _kagglehub_cache,
                   f"the preset's model.weights.h5, from kaggle.com/models/keras/vit, {VIT_PRESET}"),
        library="keras-hub",
    ),
]}


def names() -> str:
    """Every backbone `--backbone` takes, in one phrase, for help and error messages."""
    return (f"{', '.join(BACKBONES)}, {TFLITE} (--weights a .tflite file) or "
            f"{KERAS_FILE}layer=NAME,preprocess={{{','.join(PREPROCESSING)}}} (--weights a .keras or .h5 file)")


def lines() -> list[str]:
    """The declared backbones, one line each (name, input, output, what it is; all with ImageNet weights), and the
    model-file kinds."""
    return [*(backbone.line() for backbone in BACKBONES.values()),
            f"{TFLITE:17s}a LiteRT model file that takes uint8 pixels: --weights model.tflite",
            f"{KERAS_FILE}layer=NAME,preprocess=P  a Keras model file's layer NAME: --weights model.keras, "
            f"P one of {' '.join(PREPROCESSING)}"]


def backbone_for(name: str, weights: str) -> Backbone:
    """The declared backbone `name`, or for "keras:layer=…,preprocess=…" the model file `weights` as one."""
    if name.startswith(KERAS_FILE):
        return keras_file_backbone(name, weights)
    if name not in BACKBONES:
        raise UnknownBackboneError(f"unknown backbone {name!r}; choose one of {names()}")
    return BACKBONES[name]


# --- building -----------------------------------------------------------------------------------------------------


def keras_embedder(backbone: Backbone, weights: str = "imagenet", seed: int = 0,
                   bfloat16: bool = False) -> KerasEmbedder:
    """`backbone` with `weights` ("imagenet", "random" with `seed`, or a local weights file) on TensorFlow.

    "imagenet" is downloaded once into a cache, or fails with a message that
    says what to do instead (`WeightsUnavailableError`): it never falls back
    to random weights. `bfloat16` computes in Keras' "mixed_bfloat16" policy
    (float32 weights, bfloat16 arithmetic), only faster where the CPU has
    native bfloat16; the vectors are float32 either way.
    """
    info = describe(backbone, weights, seed, "tensorflow-bf16" if bfloat16 else REFERENCE_RUNTIME)
    import_tensorflow()  # before Keras imports it: without its start-up chatter
    try:
        with seeded(seed if weights == "random" else None), _announced_download(backbone, weights):
            with dtype_policy("mixed_bfloat16" if bfloat16 else None):
                model = backbone.make(backbone, None if weights == "random" else weights)
    except UserFacingError:
        raise
    except Exception as error:
        if weights == "imagenet":
            raise WeightsUnavailableError(download_help(backbone, error)) from error
        raise
    return KerasEmbedder(model, backbone.preprocess, info)


def describe(backbone: Backbone, weights: str, seed: int = 0, runtime: str = REFERENCE_RUNTIME) -> EmbedderInfo:
    """The `EmbedderInfo` of `backbone` with `weights`, without building it (a weights file is hashed)."""
    source = None if weights in ("imagenet", "random") else str(local_file(weights).resolve())
    return EmbedderInfo(backbone.name, weights_label(weights, seed), backbone.dim, backbone.input_size, runtime,
                        source=source)


def keras_file_backbone(spec: str, path: str | os.PathLike) -> Backbone:
    """A Keras model file as a backbone: features from the layer `spec` names, pooled to a vector, input prepared
    as it says ("keras:layer=NAME,preprocess=P"); the input size is the model's."""
    layer_name, preprocessing = parse_keras_spec(spec)
    if str(path) in ("imagenet", "random"):
        raise UnknownBackboneError(f"{spec} takes its Keras model file as the weights (--weights model.keras), "
                                   f"not {path!r}")
    path = local_file(path)
    import_tensorflow()  # before Keras imports it: without its start-up chatter
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:
        raise UserFacingError(f"{path} could not be loaded as a Keras model: {error}") from error
    try:
        features = model.get_layer(layer_name).output
    except ValueError:
        names_there = ", ".join(layer.name for layer in model.layers[-6:])
        raise UnknownBackboneError(f"{path.name} has no layer {layer_name!r}; its last layers are {names_there}") \
            from None
    shape = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else ()
    if len(shape) != 4 or shape[3] != 3 or not all(isinstance(side, int) for side in shape[1:3]):
        raise UnknownBackboneError(f"{path.name} takes input of shape {shape or 'several inputs'}; a backbone takes "
                                   "one batch of fixed-size RGB images, (n, height, width, 3)")
    if len(features.shape) == 4:  # spatial: averaged over height and width
        features = keras.layers.GlobalAveragePooling2D(name="imagesearch_pool")(features)
    elif len(features.shape) == 3:  # a sequence of tokens: averaged over them
        features = keras.layers.GlobalAveragePooling1D(name="imagesearch_pool")(features)
    elif len(features.shape) > 4:
        features = keras.layers.Flatten(name="imagesearch_flatten")(features)
    feature_model = keras.Model(model.inputs, features)
    canonical = f"{KERAS_FILE}layer={layer_name},preprocess={preprocessing}"
    return Backbone(
        canonical, path.name, f"the Keras model {path.name}, features at layer {layer_name}",
        (shape[2], shape[1]), int(features.shape[-1]), lambda backbone, weights: feature_model,
        PREPROCESSING[preprocessing], bfloat16=False,
        cache_name=f"keras-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}",
    )


def parse_keras_spec(spec: str) -> tuple[str, str]:
    """("layer", "preprocess") of "keras:layer=NAME,preprocess=P"; both must be given, P one of PREPROCESSING."""
    options = {}
    for part in spec.removeprefix(KERAS_FILE).split(","):
        key, equals, value = part.partition("=")
        if not equals or key not in ("layer", "preprocess") or key in options or not value:
            options = None
            break
        options[key] = value
    if not options or set(options) != {"layer", "preprocess"} or options["preprocess"] not in PREPROCESSING:
        raise UnknownBackboneError(
            f"{spec!r} is not a Keras model backbone; write {KERAS_FILE}layer=NAME,preprocess=P with P one of "
            f"{', '.join(PREPROCESSING)}, and the model file as the weights")
    return options["layer"], options["preprocess"]


@contextmanager
def _announced_download(backbone: Backbone, weights: str) -> Iterator[None]:
    """Say, in one line of ours, when ImageNet weights are about to be downloaded, and keep Keras quiet.

    Keras prints "Downloading data from <url>" and a progress bar; offline, that
    line came just before the failure and read as if a download were under way.
    """
    pretrained = backbone.pretrained
    cached = pretrained.cached() if weights == "imagenet" and pretrained else None
    if cached is None or cached.is_file():
        yield
        return
    import keras

    into = pretrained.folder() if pretrained.folder else cached.parent
    print(f"Downloading {backbone.title}'s ImageNet weights ({pretrained.megabytes} MB), once, into {into}/ …",
          flush=True)
    was_interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_interactive:
            keras.config.enable_interactive_logging()


def download_help(backbone: Backbone, error: Exception) -> str:
    """What went wrong getting `backbone`'s ImageNet weights, and three ways to go on."""
    pretrained = backbone.pretrained
    cached = pretrained.cached()
    cache = pretrained.folder() if pretrained.folder else cached.parent
    if pretrained.folder:  # a cache that keeps more than the file: copied whole
        copy = f"copy {pretrained.elsewhere} from a machine that has them (with {VIT_PRESET} in it) to {cache}/"
    else:
        copy = f"copy {cached.name} from a machine that has it (in {pretrained.elsewhere}) into {cache}/"
    file = "/path/to/" + (cached.name if pretrained.folder else "file.h5")
    origin = f" ({pretrained.origin})" if pretrained.origin else ""
    make = "" if backbone.name == DEFAULT else f"BACKBONE={backbone.name} "
    return (
        f"Could not get {backbone.title}'s ImageNet weights: {short_cause(error)}. {pretrained.who} downloads them "
        f"once, on first use, into {cache}/; without network that fails (so does a damaged copy there). To go on, "
        f"do one of these:\n"
        f"  1. {copy}, then run again;\n"
        f"  2. use that file{origin} where it is: `make demo {make}WEIGHTS={file}` and "
        f"`make lab {make}WEIGHTS={file}`, --weights on the command line, weights='{file}' in Python;\n"
        "  3. test only the mechanics, with vectors that match near-copies but not meaning: "
        f"`make demo {make}WEIGHTS=random`, then `make lab {make}WEIGHTS=random` "
        "(--weights random, weights='random').\n"
        "In a notebook already open, set WEIGHTS in its parameters cell and run it again."
    )


# --- from a saved description back to a model -------------------------------------------------------------------


def identity(backbone: str, weights: str, seed: int = 0) -> tuple[str, str]:
    """What `EmbedderInfo.backbone` and `.weights` would say of `make_embedder(backbone, weights, seed)`, without
    building anything (a file is hashed)."""
    if backbone == TFLITE:
        return f"tflite:{Path(weights).name}", f"sha256:{sha256_prefix(local_file(weights))}"
    if backbone.startswith(KERAS_FILE):
        layer, preprocessing = parse_keras_spec(backbone)
        return f"{KERAS_FILE}layer={layer},preprocess={preprocessing}", file_label(local_file(weights))
    if backbone not in BACKBONES:
        raise UnknownBackboneError(f"unknown backbone {backbone!r}; choose one of {names()}")
    if weights not in ("imagenet", "random"):
        local_file(weights)
    return backbone, weights_label(weights, seed)


def arguments_for(info: EmbedderInfo, backbone: str | None = None, weights: str | None = None,
                  seed: int | None = None) -> tuple[str, str, int]:
    """The (backbone, weights, seed) of `runtimes.make_embedder` that make the model `info` describes.

    Given nothing else, they come from `info` alone; a model or weights file
    must still be where it was, with the same content. `backbone`, `weights`
    and `seed`, where given, must name that same model (a file moved
    elsewhere, say, or the file of a collection saved before files were
    recorded); otherwise `BackboneMismatchError` says so, in one line.
    """
    if backbone is None and weights is None and seed is None:
        return _recorded_arguments(info)
    recorded_backbone, recorded_weights, recorded_seed = _recorded_arguments(info, check_files=False)
    backbone = backbone or recorded_backbone
    seed = recorded_seed if seed is None else seed
    weights = weights or recorded_weights
    if weights is None:
        raise ModelFileChangedError(_file_unknown(info))
    asked, asked_weights = identity(backbone, weights, seed)
    if (asked, asked_weights) != (info.backbone, info.weights):
        raise BackboneMismatchError(
            f"the index was built with {info.backbone} (weights {info.weights}), not {asked} (weights "
            f"{asked_weights}); leave out --backbone and --weights: the index names the model it needs")
    return backbone, weights, seed


def _recorded_arguments(info: EmbedderInfo, check_files: bool = True) -> tuple[str, str | None, int]:
    """`arguments_for` from `info` alone; a file's path is None where `info` does not record it (and not
    `check_files`)."""
    name = info.backbone
    if name.startswith("tflite:"):
        backbone = TFLITE
    elif name.startswith(KERAS_FILE):
        parse_keras_spec(name)
        backbone = name
    elif name in BACKBONES:
        backbone = name
    else:
        raise UnknownBackboneError(f"the index's vectors were made by {info}, which this version of imagesearch "
                                   f"cannot build; it builds {names()}")
    if random := re.fullmatch(r"random\(seed=(-?\d+)\)", info.weights):
        return backbone, "random", int(random[1])
    if info.weights == "imagenet" and backbone in BACKBONES:
        return backbone, "imagenet", 0
    if not check_files:
        return backbone, info.source, 0
    if info.source is None:
        raise ModelFileChangedError(_file_unknown(info))
    _check_file(info, backbone)
    return backbone, info.source, 0


def _file_unknown(info: EmbedderInfo) -> str:
    return (f"the index was built with {info}, from a file it does not record the place of (it was saved by an "
            f"earlier version); pass it: --weights /path/to/{_recorded_name(info)}")


def _recorded_name(info: EmbedderInfo) -> str:
    """The name of the model or weights file `info` was made from."""
    if info.backbone.startswith("tflite:"):
        return info.backbone.removeprefix("tflite:")
    return info.weights.removeprefix("file:").rsplit("@", 1)[0]


def _check_file(info: EmbedderInfo, backbone: str) -> None:
    """Raise `ModelFileChangedError` unless the file `info.source` is there with the hash `info.weights` records."""
    path, rebuild = Path(info.source), f"--backbone {shlex.quote(backbone)} --weights {shlex.quote(info.source)}"
    if not path.is_file():
        raise ModelFileChangedError(
            f"{path}, the file the collection was embedded with, is gone; put it back, or pass where it is now: "
            f"--weights /path/to/{path.name}")
    recorded = info.weights.removeprefix("sha256:").rsplit("@", 1)[-1]
    actual = sha256_prefix(path)
    if actual != recorded:
        raise ModelFileChangedError(
            f"{path} has changed since the collection was embedded with it (SHA-256 {actual}…, not {recorded}…); "
            f"put back the file it was embedded with, or embed the collection again with this one: "
            f"python -m imagesearch build {rebuild}")
