"""The backbones: every declared network built offline with seeded random weights, model files of the user's, the
offline message for ImageNet weights, and a collection queried with the model its index names.

Nothing here downloads: ImageNet weights are asked for with the downloaders made to fail as they do offline, and
nothing is read from or left in a real cache (KerasHub's goes to a temporary folder).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

from imagesearch import backbones, litert
from imagesearch.backbones import (
    BACKBONES,
    BackboneMismatchError,
    ModelFileChangedError,
    UnknownBackboneError,
    arguments_for,
)
from imagesearch.embedders import EmbedderInfo, RandomWeightsWarning, WeightsUnavailableError
from imagesearch.index import load_index
from imagesearch.runtimes import embedder_for, make_embedder, remembered_choice, unavailable
from imagesearch.service import Service, Settings
from imagesearch.storage import index_dir

RESULT_LINE = re.compile(r"^\s*(\d+)\s+(\d+\.\d+)\s+(\S+)$")


def pixels_for(width: int, height: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """`count` different noise images of `width` x `height`, as a uint8 batch."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def build(name: str, seed: int = 0):
    """The declared backbone `name` with random weights, on TensorFlow; the warning they give is checked."""
    with pytest.warns(RandomWeightsWarning, match=f"^{re.escape(BACKBONES[name].title)} uses randomly initialised"):
        return make_embedder(name, "random", seed, runtime="tensorflow")


@pytest.fixture(scope="module")
def built() -> dict:
    """Each declared backbone, built once with random weights (seed 0), on demand."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name)
        return cache[name]

    return get


# --- every declared backbone, offline -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_offline_and_embeds_a_batch_to_its_declared_dimension(built, name):
    declared = BACKBONES[name]
    embedder = built(name)
    width, height = declared.input_size
    vectors = embedder.embed(pixels_for(width, height))
    assert vectors.shape == (2, declared.dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])  # two different images, two different vectors
    assert embedder.info == EmbedderInfo(name, "random(seed=0)", declared.dim, declared.input_size)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_random_weights_are_the_same_for_the_same_seed(built, name):
    width, height = BACKBONES[name].input_size
    batch = pixels_for(width, height, count=1, seed=1)
    assert np.array_equal(build(name).embed(batch), built(name).embed(batch))


def test_the_default_backbone_is_resnet50_and_its_description_is_as_before(built):
    declared = BACKBONES[backbones.DEFAULT]
    assert (declared.name, declared.input_size, declared.dim) == ("resnet50", (224, 224), 2048)
    # Saved collections of ResNet50 stay as they were: the same description, written with the same keys.
    assert built("resnet50").info.to_dict() == {
        "backbone": "resnet50", "weights": "random(seed=0)", "dim": 2048, "input_size": (224, 224),
        "runtime": "tensorflow", "fidelity": None}


def test_an_unknown_backbone_is_refused_with_the_list_of_declared_ones():
    with pytest.raises(UnknownBackboneError) as caught:
        make_embedder("vgg16", "random")
    message = str(caught.value)
    assert message.startswith("unknown backbone 'vgg16'; choose one of resnet50, efficientnetv2b0, ")
    assert all(name in message for name in [*BACKBONES, "tflite", "keras:layer=NAME,preprocess="])


def test_every_backbone_has_one_line_for_help():
    lines = backbones.lines()
    assert len(lines) == len(BACKBONES) + 2  # and the two kinds of model file
    for line, declared in zip(lines, BACKBONES.values()):
        width, height = declared.input_size
        assert line.startswith(declared.name) and f"{width}x{height} -> {declared.dim}-d" in line
        assert "\n" not in line and len(line) < 120


# --- ImageNet weights offline -----------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path) -> list[str]:
    """Keras' and KerasHub's downloaders fail as they do without network; what was asked of them is recorded.

    No cache is read: Keras' `get_file` (which looks in its cache first) is replaced whole, and KerasHub's
    cache (kagglehub's) is an empty temporary folder.
    """
    import keras_hub.src.utils.preset_utils as preset_utils
    import requests

    requested = []

    def keras_get_file(fname=None, origin=None, **kwargs):
        requested.append(fname)
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    def kaggle_get_file(preset, path):
        requested.append(f"{preset}/{path}")
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded with url: /v1/models "
            "(Caused by NameResolutionError(\"<HTTPSConnection>: Failed to resolve 'api.kaggle.com' ([Errno -2] "
            "Name or service not known)\"))")

    monkeypatch.setattr(file_utils, "get_file", keras_get_file)
    monkeypatch.setattr(preset_utils, "get_file", kaggle_get_file)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    return requested


@pytest.mark.parametrize("name", list(BACKBONES))
def test_imagenet_weights_offline_say_what_to_do_and_never_fall_back_to_random_ones(offline, name, capsys):
    declared = BACKBONES[name]
    with pytest.raises(WeightsUnavailableError) as caught:
        make_embedder(name, "imagenet", runtime="tensorflow")  # raising means no (random) model is handed back
    assert len(offline) == 1  # one download was tried, and nothing else
    first, *ways = str(caught.value).splitlines()
    assert first.startswith(f"Could not get {declared.title}'s ImageNet weights: the download failed, no network? "
                            "([Errno -2] Name or service not known). ")
    assert "To go on, do one of these:" in first
    options = "" if name == backbones.DEFAULT else f"BACKBONE={name} "
    assert [way[:5] for way in ways[:3]] == ["  1. ", "  2. ", "  3. "]
    assert f"`make demo {options}WEIGHTS=random`" in ways[2] and "weights='random'" in ways[2]
    assert f"`make demo {options}WEIGHTS=/path/to/" in ways[1]
    (shown,) = caught.value._render_traceback_()  # a notebook shows the name and message, no traceback
    assert "Traceback" not in shown
    if not declared.pretrained.cached().is_file():  # one line of ours says a download is coming, before it is tried
        assert f"Downloading {declared.title}'s ImageNet weights" in capsys.readouterr().out


# --- a Keras model file of the user's ------------------------------------------------------------------------


def tiny_model() -> keras.Model:
    """A small network on 48 x 32 images: a named 8-channel feature layer, then a classifier."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((32, 48, 3))
    features = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="more")(features))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(pooled))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keras_model") / "tiny.keras"
    tiny_model().save(path)
    return path


SPEC = "keras:layer=features,preprocess=0-1"


def test_a_keras_model_file_embeds_the_named_layer_pooled_at_the_models_input_size(model_file):
    embedder = make_embedder(SPEC, str(model_file), runtime="tensorflow")
    info = embedder.info
    assert (info.backbone, info.dim, info.input_size, info.source) == (SPEC, 8, (48, 32), str(model_file.resolve()))
    assert re.fullmatch(r"file:tiny\.keras@[0-9a-f]{12}", info.weights)
    batch = pixels_for(48, 32, count=3)
    model = keras.models.load_model(model_file)
    by_hand = keras.ops.mean(keras.Model(model.input, model.get_layer("features").output)(batch / 255.0), (1, 2))
    assert np.allclose(embedder.embed(batch), np.asarray(by_hand), atol=1e-5)


def test_a_legacy_h5_model_file_gives_the_same_vectors(model_file, tmp_path):
    h5 = tmp_path / "tiny.h5"
    keras.models.load_model(model_file).save(h5)
    batch = pixels_for(48, 32)
    from_h5 = make_embedder(SPEC, str(h5), runtime="tensorflow").embed(batch)
    assert np.allclose(from_h5, make_embedder(SPEC, str(model_file), runtime="tensorflow").embed(batch), atol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("keras:layer=nowhere,preprocess=0-1", "tiny.keras has no layer 'nowhere'; its last layers are .*logits"),
    ("keras:layer=features", "write keras:layer=NAME,preprocess=P with P one of none, 0-1, -1-1, caffe, torch"),
    ("keras:layer=features,preprocess=imagenet", "is not a Keras model backbone"),
])
def test_a_keras_model_backbone_names_a_layer_and_a_preprocessing_that_exist(model_file, spec, message):
    with pytest.raises(UnknownBackboneError, match=message):
        make_embedder(spec, str(model_file), runtime="tensorflow")


def test_auto_measures_a_keras_model_files_runtimes_and_picks_one_within_its_bar(model_file, tmp_path, monkeypatch):
    """The runtimes ResNet50 has, for any Keras backbone: here a model file's, which converts in seconds."""
    if reason := unavailable("litert"):
        pytest.skip(f"LiteRT is not available: {reason}")
    monkeypatch.setenv(litert.CACHE_ENV, str(tmp_path / "cache"))
    sample = pixels_for(48, 32, count=24, seed=3)
    embedder = make_embedder(SPEC, str(model_file), runtime="auto", images=sample)
    choice = remembered_choice(str(model_file), backbone=SPEC)
    assert set(choice.measurements) == {"tensorflow", "litert", "litert-int8"}  # bfloat16: a model loaded whole
    assert embedder.info.runtime == choice.batch and embedder.info.outside_bar() is None
    assert embedder.embed(sample[:2]).shape == (2, 8)
    conversions = sorted(path.name for path in (tmp_path / "cache").glob("*.tflite"))  # named by model and weights
    assert [re.sub("[0-9a-f]{8,}", "…", name) for name in conversions] == [
        "keras-…-file-…-float32.tflite", "keras-…-file-…-int8.tflite"]


# --- rebuilt from the description saved with a collection ---------------------------------------------------------


def test_the_description_records_a_files_place_and_reads_what_earlier_versions_saved(model_file):
    info = make_embedder(SPEC, str(model_file), runtime="tensorflow").info
    assert EmbedderInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    old = {key: value for key, value in info.to_dict().items() if key != "source"}
    assert EmbedderInfo.from_dict(old).source is None
    assert EmbedderInfo.from_dict(old).compatible_with(info)  # the same model, wherever its file is


def test_arguments_come_from_the_description_alone(model_file):
    assert arguments_for(EmbedderInfo("resnet50", "random(seed=3)", 2048, (224, 224))) == ("resnet50", "random", 3)
    assert arguments_for(EmbedderInfo("vit_b16", "imagenet", 768, (224, 224))) == ("vit_b16", "imagenet", 0)
    info = make_embedder(SPEC, str(model_file), runtime="tensorflow").info
    assert arguments_for(info) == (SPEC, str(model_file.resolve()), 0)
    assert embedder_for(info, runtime="tensorflow").info == info


def test_options_that_name_another_model_than_the_index_are_one_clear_error():
    info = EmbedderInfo("efficientnetv2b0", "random(seed=0)", 1280, (224, 224))
    assert arguments_for(info, weights="random") == ("efficientnetv2b0", "random", 0)  # the same model: fine
    with pytest.raises(BackboneMismatchError) as caught:
        arguments_for(info, backbone="resnet50")
    assert str(caught.value) == ("the index was built with efficientnetv2b0 (weights random(seed=0)), not resnet50 "
                                 "(weights random(seed=0)); leave out --backbone and --weights: the index names the "
                                 "model it needs")
    with pytest.raises(BackboneMismatchError, match=r"not efficientnetv2b0 \(weights random\(seed=2\)\)"):
        arguments_for(info, seed=2)


def test_a_model_file_changed_or_gone_since_the_collection_was_embedded_is_refused(model_file, tmp_path):
    copy = tmp_path / model_file.name
    copy.write_bytes(model_file.read_bytes())
    info = make_embedder(SPEC, str(copy), runtime="tensorflow").info
    tiny = keras.models.load_model(copy)
    tiny.get_layer("features").kernel.assign(np.zeros(tiny.get_layer("features").kernel.shape))
    tiny.save(copy)  # retrained, say

    with pytest.raises(ModelFileChangedError) as caught:
        embedder_for(info)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{copy.resolve()} has changed since the collection was embedded with it (SHA-256 ")
    assert message.endswith(f"embed the collection again with this one: python -m imagesearch build --backbone "
                            f"{SPEC} --weights {copy.resolve()}")
    assert arguments_for(info, weights=str(model_file)) == (SPEC, str(model_file), 0)  # the original, elsewhere

    copy.unlink()
    with pytest.raises(ModelFileChangedError, match=f"^{re.escape(str(copy.resolve()))}, the file the collection "
                                                    "was embedded with, is gone; put it back, or pass where it is"):
        embedder_for(info)


def test_a_tflite_collection_saved_before_files_were_recorded_asks_for_the_file(tflite_model_path):
    old = make_embedder("tflite", str(tflite_model_path)).info.to_dict()
    del old["source"]
    info = EmbedderInfo.from_dict(old)
    with pytest.raises(ModelFileChangedError, match=f"pass it: --weights /path/to/{tflite_model_path.name}$"):
        arguments_for(info)
    assert arguments_for(info, weights=str(tflite_model_path)) == ("tflite", str(tflite_model_path), 0)
    assert embedder_for(make_embedder("tflite", str(tflite_model_path)).info).info.dim == 1024


# --- a collection built with one backbone, queried without naming it --------------------------------------------


@pytest.fixture(scope="module")
def efficientnet_collection(tmp_path_factory, repo_root, make_image) -> tuple[Path, Path]:
    """Eight small images built into artifacts by the command line with EfficientNetV2-B0, random weights."""
    images = tmp_path_factory.mktemp("backbone_images")
    for name in ["a/one.jpg", "a/two.png", "b/three.jpg", "b/four.png", "five.jpg", "six.jpg", "seven.png",
                 "eight.jpg"]:
        make_image(images / name, size=(64, 48))
    artifacts = tmp_path_factory.mktemp("backbone_artifacts")
    result = run_cli(repo_root, "build", "--backbone", "efficientnetv2b0", "--weights", "random", "--runtime",
                     "tensorflow", "--images", images, "--artifacts", artifacts, "-k", "2")
    assert result.returncode == 0, result.stderr
    return images, artifacts


def run_cli(repo_root: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagesearch", *map(str, args)], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)


def test_an_index_built_with_efficientnet_is_queried_without_naming_it(efficientnet_collection, repo_root):
    images, artifacts = efficientnet_collection
    saved = load_index(index_dir(artifacts)).embedder
    assert (saved.backbone, saved.weights, saved.dim) == ("efficientnetv2b0", "random(seed=0)", 1280)
    result = run_cli(repo_root, "query", images / "b/four.png", "--artifacts", artifacts, "-k", "3",
                     "--runtime", "tensorflow")
    assert result.returncode == 0, result.stderr
    found = [match[3] for match in map(RESULT_LINE.match, result.stdout.splitlines()) if match]
    assert len(found) == 3 and found[0] == "b/four.png"


def test_a_query_naming_other_weights_than_the_index_is_one_error_line(efficientnet_collection, repo_root):
    images, artifacts = efficientnet_collection
    result = run_cli(repo_root, "query", images / "five.jpg", "--artifacts", artifacts, "--weights", "imagenet")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: the index was built with efficientnetv2b0 (weights random(seed=0)), not efficientnetv2b0 (weights "
        "imagenet); leave out --backbone and --weights: the index names the model it needs"]


def test_the_service_embeds_queries_with_the_model_its_index_names(efficientnet_collection):
    _, artifacts = efficientnet_collection
    with pytest.warns(RandomWeightsWarning):
        service = Service(Settings(artifacts, runtime="tensorflow"))
    assert (service.embedder.info.backbone, service.embedder.info.dim) == ("efficientnetv2b0", 1280)
    assert service.embedder.info.compatible_with(service.search_index.embedder)
