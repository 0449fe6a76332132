"""Runtimes: every one within its fidelity bar of TensorFlow float32, `auto`'s choice, the conversion cache.

Real TensorFlow and real LiteRT throughout, with the session's random ResNet50
weights (seed 0). The session measures `auto` once into its own cache
(IMAGESEARCH_CACHE, set by the root conftest); tests that damage a cache or
change a bar work on a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from imagesearch import embedders, litert, runtimes
from imagesearch.embedders import FIDELITY_BARS, Bar, EmbedderInfo, Fidelity
from imagesearch.extract import extract_embeddings
from imagesearch.images import list_images, load_image
from imagesearch.index import build_index
from imagesearch.query import EmbedderMismatchError, search_image
from imagesearch.runtimes import (
    RUNTIMES,
    RuntimeUnavailableError,
    compare,
    make_embedder,
    remembered_choice,
    unavailable,
)
from imagesearch.storage import ArtifactError

AVAILABLE = [runtime for runtime in RUNTIMES if unavailable(runtime) is None]
#: A bar no runtime can pass: a cosine similarity is at most 1.
IMPOSSIBLE = Bar(1.01)


@pytest.fixture(scope="module")
def demo(repo_root) -> tuple[Path, np.ndarray]:
    """The demo folder and all its images, decoded."""
    folder = repo_root / "images"
    return folder, np.stack([load_image(folder / name) for name in list_images(folder)])


@pytest.fixture(scope="module")
def choice(demo):
    """What `auto` chose in this session (measured here if no test did before)."""
    make_embedder("resnet50", "random", seed=0, runtime="auto", images=demo[0])
    chosen = remembered_choice("random", 0)
    assert chosen is not None
    return chosen


@pytest.fixture
def cache_copy(tmp_path, monkeypatch, choice) -> Path:
    """A copy of the session's cache (its conversions: no converting again), made the current one."""
    copy = tmp_path / "cache"
    shutil.copytree(litert.cache_dir(), copy)
    monkeypatch.setenv(litert.CACHE_ENV, str(copy))
    return copy


def quiet_make(*args, **kwargs):
    with pytest.warns(embedders.RandomWeightsWarning):
        return make_embedder(*args, **kwargs)


# --- fidelity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", AVAILABLE)
def test_every_runtime_embeds_all_demo_images_within_its_bar(runtime, choice, demo, random_resnet):
    """Measured again here on all 208 demo images, beyond the 64 `auto` measured on."""
    embedder = quiet_make("resnet50", "random", seed=0, runtime=runtime)
    assert embedder.info.runtime == runtime
    fidelity = compare(random_resnet.embed(demo[1]), embedder.embed(demo[1]))
    bar = FIDELITY_BARS.get(runtime, Bar(0.999999, 1.0))  # the reference against itself: the same vectors
    assert fidelity.min_cosine >= bar.min_cosine and fidelity.top5 >= bar.min_top5, f"{runtime}: {fidelity}"
    assert embedder.info.outside_bar() is None


def test_compare_tells_a_faithful_copy_from_a_broken_one():
    vectors = np.random.default_rng(0).standard_normal((20, 16))
    same = compare(vectors, vectors * 1.0001)  # a scale is not a change of direction
    assert same.min_cosine == pytest.approx(1.0) and same.top5 == 1.0 and same.images == 20
    rotated = compare(vectors, np.roll(vectors, 1, axis=1))  # the same distances, other directions
    assert rotated.min_cosine < 0.5 and rotated.top5 == 1.0
    noisy = compare(vectors, vectors + np.random.default_rng(1).standard_normal(vectors.shape))
    assert 0 < noisy.min_cosine < 0.9 and noisy.top5 < 0.8


# --- auto -----------------------------------------------------------------------------------------


def test_auto_uses_the_fastest_runtime_within_the_bar_for_batches_and_for_one_query(choice, capsys):
    faithful = {name: measured for name, measured in choice.measurements.items() if measured.within_bar()}
    assert set(choice.measurements) == set(AVAILABLE)
    assert choice.batch == max(faithful, key=lambda name: faithful[name].images_per_second)
    assert choice.query == min(faithful, key=lambda name: faithful[name].latency_ms)
    batch = quiet_make("resnet50", "random", seed=0, runtime="auto")
    query = quiet_make("resnet50", "random", seed=0, runtime="auto", purpose="query")
    assert (batch.info.runtime, query.info.runtime) == (choice.batch, choice.query)
    assert batch.info.fidelity == choice.measurements[choice.batch].fidelity
    assert "Choosing" not in capsys.readouterr().out  # remembered: measured once per CPU and weights


def test_the_runtime_env_variable_is_the_default(monkeypatch, choice):
    monkeypatch.setenv(runtimes.RUNTIME_ENV, "tensorflow")
    assert quiet_make("resnet50", "random", seed=0).info.runtime == "tensorflow"
    monkeypatch.setenv(runtimes.RUNTIME_ENV, "auto")
    assert quiet_make("resnet50", "random", seed=0).info.runtime == choice.batch


def test_auto_never_picks_a_runtime_that_fails_the_bar(cache_copy, monkeypatch, choice, demo, capsys):
    """The runtime `auto` picked is made to fail its bar; measured again (the remembered choices are damaged),
    auto picks the fastest of the others."""
    fastest = choice.batch
    if fastest == "tensorflow":
        pytest.skip("tensorflow, the reference, was fastest here: there is no bar to fail")
    monkeypatch.setitem(FIDELITY_BARS, fastest, IMPOSSIBLE)
    (cache_copy / runtimes.CHOICES_FILE).write_text("{not json")
    embedder = quiet_make("resnet50", "random", seed=0, runtime="auto", images=demo[0])
    captured = capsys.readouterr()
    assert "runtimes.json are unreadable" in captured.err and "measuring again" in captured.err
    assert f"{fastest}" in captured.out and "OUTSIDE its bar" in captured.out
    again = remembered_choice("random", 0)
    faithful = {name: m.images_per_second for name, m in again.measurements.items() if name != fastest}
    assert again.batch == embedder.info.runtime == max(faithful, key=faithful.get) != fastest
    assert fastest not in (again.batch, again.query)
    assert embedder.info.outside_bar() is None


def test_a_conversion_made_again_is_measured_again(cache_copy, choice, capsys):
    """A damaged LiteRT file is converted again; the measurement of the old file no longer speaks for it."""
    if "litert" not in AVAILABLE:
        pytest.skip(f"LiteRT is not available: {unavailable('litert')}")
    key = litert.weights_key("random", 0)
    model = cache_copy / f"resnet50-{key}-float32.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    embedder = quiet_make("resnet50", "random", seed=0, runtime="litert")
    captured = capsys.readouterr()
    assert "is damaged" in captured.err and "converting it again" in captured.err
    assert "litert: cosine >=" in captured.out and "within its bar" in captured.out
    assert embedder.info.outside_bar() is None
    assert remembered_choice("random", 0) is None  # the choice rested on the old file: auto measures again next time


@pytest.mark.parametrize("damage", ["not a list of runtimes", "a choice of an unknown runtime", "no timings"])
def test_remembered_choices_of_the_wrong_shape_are_measured_again(cache_copy, choice, damage, capsys):
    path = cache_copy / runtimes.CHOICES_FILE
    data = json.loads(path.read_text())
    (machine,) = data["machines"].values()
    entry = machine["weights"][litert.weights_key("random", 0)]
    if damage == "not a list of runtimes":
        entry["runtimes"] = [1, 2]
    elif damage == "a choice of an unknown runtime":
        entry["batch"] = "tensorflow-fp8"
    else:
        entry["runtimes"][entry["query"]]["latency_ms"] = None
    path.write_text(json.dumps(data))
    assert remembered_choice("random", 0) is None
    assert "runtimes.json are unreadable" in capsys.readouterr().err
    if "litert" in AVAILABLE:  # a forced runtime is measured again, and remembered in a file made whole
        assert quiet_make("resnet50", "random", seed=0, runtime="litert").info.outside_bar() is None
        assert "litert: cosine >=" in capsys.readouterr().out
        quiet_make("resnet50", "random", seed=0, runtime="litert")
        assert capsys.readouterr().out == ""


# --- what may be mixed -----------------------------------------------------------------------------


@pytest.fixture
def failing_litert(monkeypatch, choice):
    """A LiteRT embedder whose runtime is held to a bar it cannot pass."""
    if "litert" not in AVAILABLE:
        pytest.skip(f"LiteRT is not available: {unavailable('litert')}")
    monkeypatch.setitem(FIDELITY_BARS, "litert", IMPOSSIBLE)
    embedder = quiet_make("resnet50", "random", seed=0, runtime="litert")
    assert "outside its bar" in embedder.info.outside_bar()
    return embedder


def test_a_collection_refuses_vectors_from_a_runtime_outside_the_bar(failing_litert, tmp_path, make_image):
    for name in ("a.png", "b.png"):
        make_image(tmp_path / "images" / name)
    with pytest.raises(ArtifactError, match="a collection takes only vectors that match tensorflow's, and litert "
                                            "gave cosine >= .* outside its bar .*; use --runtime auto"):
        extract_embeddings(tmp_path / "images", failing_litert, progress=False)


def test_an_index_refuses_queries_from_a_runtime_outside_the_bar(failing_litert, tmp_path, make_image,
                                                                 random_resnet):
    for name in ("a.png", "b.png", "c.png"):
        make_image(tmp_path / "images" / name)
    index = build_index(extract_embeddings(tmp_path / "images", random_resnet, progress=False), "Flat")
    with pytest.raises(EmbedderMismatchError, match="queries are embedded only by runtimes within their fidelity bar"):
        search_image(index, failing_litert, tmp_path / "images" / "a.png", 2)


def test_runtimes_within_the_bar_mix_and_others_meet_only_their_own():
    base = EmbedderInfo("resnet50", "imagenet", 2048, (224, 224))
    close = Fidelity(0.9995, 0.99, 64)
    int8 = EmbedderInfo("resnet50", "imagenet", 2048, (224, 224), "litert-int8", close)
    assert base.compatible_with(int8) and int8.compatible_with(base)
    far = EmbedderInfo("resnet50", "imagenet", 2048, (224, 224), "litert-int8", Fidelity(0.95, 0.99, 64))
    assert not base.compatible_with(far) and not int8.compatible_with(far)
    unmeasured = EmbedderInfo("resnet50", "imagenet", 2048, (224, 224), "litert")
    assert "was not measured" in unmeasured.outside_bar() and not base.compatible_with(unmeasured)
    unknown = EmbedderInfo("resnet50", "imagenet", 2048, (224, 224), "onnx", close)  # a later version's, say
    assert "not a runtime this version of imagesearch knows" in unknown.outside_bar()
    assert not base.compatible_with(unknown)
    other_weights = EmbedderInfo("resnet50", "random(seed=0)", 2048, (224, 224), "litert-int8", close)
    assert not int8.compatible_with(other_weights)


def test_embedder_info_records_the_runtime_and_reads_what_earlier_versions_saved():
    info = EmbedderInfo("resnet50", "imagenet", 2048, (224, 224), "litert-int8", Fidelity(0.9991, 0.988, 64))
    assert EmbedderInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert str(info) == "resnet50 (weights imagenet, 2048-d, litert-int8)"
    old = {"backbone": "resnet50", "weights": "imagenet", "dim": 2048, "input_size": [224, 224]}
    assert EmbedderInfo.from_dict(old).runtime == "tensorflow"
    old_bfloat16 = EmbedderInfo.from_dict({**old, "precision": "bfloat16"})
    assert old_bfloat16.runtime == "tensorflow-bf16" and old_bfloat16.fidelity is None
    # Vectors of the earlier bfloat16 were never measured: they meet only that runtime's again.
    assert old_bfloat16.compatible_with(
        EmbedderInfo("resnet50", "imagenet", 2048, (224, 224), "tensorflow-bf16", Fidelity(0.99999, 1.0, 64)))
    assert not old_bfloat16.compatible_with(EmbedderInfo.from_dict(old))


# --- the conversion cache -------------------------------------------------------------------------


def tiny_model():
    """A stand-in for ResNet50 that converts in a second: the same input, a pooled output."""
    inputs = keras.Input((224, 224, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(litert.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_conversion_is_cached_and_reused(empty_cache):
    made = litert.converted("tiny-a", "float32", tiny_model)
    assert made.seconds is not None and made.path.parent == empty_cache

    def must_not_convert():
        raise AssertionError("converted again")

    reused = litert.converted("tiny-a", "float32", must_not_convert)
    assert (reused.path, reused.sha256, reused.seconds) == (made.path, made.sha256, None)


def test_other_weights_get_their_own_conversion(empty_cache, tmp_path):
    first = litert.converted("tiny-a", "float32", tiny_model)
    second = litert.converted("tiny-b", "float32", tiny_model)
    assert second.seconds is not None and second.path != first.path
    assert litert.weights_key("random", 0) != litert.weights_key("random", 1)
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"one")
    before = litert.weights_key(str(weights))
    weights.write_bytes(b"two")
    assert litert.weights_key(str(weights)) != before  # the key is the file's content, not its name


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "model missing", "sidecar not json",
                                    "sidecar missing"])
def test_a_damaged_conversion_is_made_again_never_trusted(empty_cache, damage, capsys):
    made = litert.converted("tiny-a", "float32", tiny_model)
    sidecar = made.path.with_suffix(".json")
    data = made.path.read_bytes()
    if damage == "flipped byte":
        made.path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncated":
        made.path.write_bytes(data[: len(data) // 2])
    elif damage == "model missing":
        made.path.unlink()
    elif damage == "sidecar not json":
        sidecar.write_text("{")
    else:
        sidecar.unlink()
    assert litert.cached("tiny-a", "float32") is None
    again = litert.converted("tiny-a", "float32", tiny_model)
    assert again.seconds is not None and hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256
    assert litert.cached("tiny-a", "float32") == replace(again, seconds=None)  # whole again, and trusted
    assert "converting it again" in capsys.readouterr().err


def test_an_int8_conversion_needs_a_calibration_sample(empty_cache):
    with pytest.raises(ValueError, match="calibration sample"):
        litert.converted("tiny-a", "int8", tiny_model)


# --- availability and arguments --------------------------------------------------------------------


def test_bfloat16_on_a_cpu_without_it_is_refused_and_left_out_of_auto(monkeypatch):
    monkeypatch.setattr(runtimes, "cpu_supports_bfloat16", lambda: False)
    assert "no native bfloat16 arithmetic" in unavailable("tensorflow-bf16")
    with pytest.raises(RuntimeUnavailableError, match="runtime 'tensorflow-bf16' is not available: this CPU has no "
                                                      "native bfloat16 .* use --runtime auto"):
        make_embedder("resnet50", "random", runtime="tensorflow-bf16")


def test_bfloat16_leaves_keras_and_other_models_in_float32(random_resnet, demo):
    if reason := unavailable("tensorflow-bf16"):
        pytest.skip(f"bfloat16 is not available on this machine: {reason}")
    before = random_resnet.embed(demo[1][:4])
    bfloat16 = quiet_make("resnet50", "random", seed=0, runtime="tensorflow-bf16")
    assert keras.config.dtype_policy().name == "float32"
    assert bfloat16.model.layers[2].compute_dtype == "bfloat16"
    assert np.array_equal(random_resnet.embed(demo[1][:4]), before)  # bit for bit
    assert not np.array_equal(bfloat16.embed(demo[1][:4]), before)  # it does compute in bfloat16


@pytest.mark.parametrize("backbone, runtime, message", [
    ("resnet50", "float16", "unknown runtime 'float16'; choose one of auto, tensorflow, tensorflow-bf16, litert"),
    ("tflite", "tensorflow-bf16", "applies to resnet50"),
    ("vgg16", "auto", "unknown backbone 'vgg16'"),
])
def test_make_embedder_rejects_what_it_cannot_build(backbone, runtime, message):
    with pytest.raises(ValueError, match=message):
        make_embedder(backbone, "model.tflite", runtime=runtime)


def test_a_tflite_file_runs_as_stored_on_litert(tflite_model_path):
    embedder = make_embedder("tflite", str(tflite_model_path), runtime="auto")
    assert embedder.info.runtime == "litert" and embedder.info.outside_bar() is None


def test_the_runtimes_picture_marks_what_auto_uses_and_what_missed_its_bar():
    from imagesearch.display import plot_runtimes
    from imagesearch.runtimes import Choice, Measurement

    measurements = {
        "tensorflow": Measurement("tensorflow", None, 20.0, 50.0),
        "litert": Measurement("litert", Fidelity(0.99999, 1.0, 64), 25.0, 40.0, "sha"),
        "litert-int8": Measurement("litert-int8", Fidelity(0.95, 0.9, 64), 80.0, 12.0, "sha"),
    }
    figure = plot_runtimes(Choice("litert", "litert", measurements))
    batches, single = figure.axes
    assert [label.get_text() for label in batches.get_yticklabels()] == list(measurements)
    notes = [text.get_text() for text in batches.texts]
    assert notes == [" 20.0", " 25.0  ← auto", " 80.0  outside its fidelity bar"]
    assert [text.get_text() for text in single.texts][1] == " 40.0  ← auto"
