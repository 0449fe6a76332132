"""Reduced precision: ResNet50 in bfloat16 where the CPU computes it natively, its fidelity, and no leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from imagesearch import embedders
from imagesearch.embedders import EmbedderInfo, bfloat16_unavailable, make_embedder, resolve_precision
from imagesearch.images import list_images, load_image

#: Lowest cosine similarity to the float32 vector allowed for any image. Measured on this project's
#: AMD EPYC (avx512_bf16), random weights, demo images and noise: 0.999995 at worst, a relative L2
#: error of at most 0.36%. bfloat16 keeps 8 significant bits (0.2% rounding per value), and cosine is
#: about 1 - error**2 / 2, so 0.999 allows a 4.5% error: ten times the measured one, room for other
#: kernels (AMX) and weights, while a broken conversion (wrong scale, wrong layout) lands far below.
COSINE_FLOOR = 0.999


@pytest.fixture(scope="module")
def bfloat16_resnet():
    """ResNet50 with the session model's random weights (seed 0), computing in bfloat16."""
    reason = bfloat16_unavailable()
    if reason is not None:
        pytest.skip(f"bfloat16 is not available on this machine: {reason}")
    return make_embedder("resnet50", "random", seed=0, precision="bfloat16")


@pytest.fixture(scope="module")
def photos(repo_root) -> np.ndarray:
    """Five demo photos of different groups, and one noise image."""
    folder = repo_root / "images"
    originals = [path for path in list_images(folder) if "__original" in path][:5]
    noise = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    return np.concatenate([np.stack([load_image(folder / path) for path in originals]), noise])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- choosing the precision ---------------------------------------------------------------------


def test_float32_is_the_default_and_is_not_mentioned(random_resnet):
    assert random_resnet.info.precision == "float32"
    assert random_resnet.info == EmbedderInfo("resnet50", "random(seed=0)", 2048, (224, 224), "float32")
    assert str(random_resnet.info) == "resnet50 (weights random(seed=0), 2048-d)"


def test_an_unknown_precision_is_rejected_before_building_a_model():
    with pytest.raises(ValueError, match="unknown precision 'float16'; choose one of float32, bfloat16, auto"):
        make_embedder("resnet50", "random", precision="float16")


def test_auto_is_bfloat16_exactly_where_it_is_available():
    assert resolve_precision("auto") == ("float32" if bfloat16_unavailable() else "bfloat16")
    assert resolve_precision("float32") == "float32"


def test_bfloat16_on_a_cpu_without_it_raises_and_auto_falls_back_to_float32(monkeypatch):
    monkeypatch.setattr(embedders, "cpu_supports_bfloat16", lambda: False)
    with pytest.raises(ValueError, match="no native bfloat16 arithmetic .* emulated: slower than float32"):
        make_embedder("resnet50", "random", precision="bfloat16")
    assert resolve_precision("auto") == "float32"


def test_tflite_takes_no_bfloat16():
    with pytest.raises(ValueError, match="applies to resnet50"):
        make_embedder("tflite", "model.tflite", precision="bfloat16")


# --- EmbedderInfo -------------------------------------------------------------------------------


def test_embedder_info_saved_before_precision_existed_reads_as_float32(random_resnet):
    old = {"backbone": "resnet50", "weights": "random(seed=0)", "dim": 2048, "input_size": [224, 224]}
    assert EmbedderInfo.from_dict(old) == random_resnet.info
    info = replace(random_resnet.info, precision="bfloat16")
    assert EmbedderInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_only_precision_may_differ_between_compatible_infos():
    float32 = EmbedderInfo("resnet50", "random(seed=0)", 2048, (224, 224))
    bfloat16 = replace(float32, precision="bfloat16")
    assert float32.compatible_with(bfloat16) and bfloat16.compatible_with(float32)
    for other in [
        replace(bfloat16, weights="random(seed=1)"),
        replace(bfloat16, backbone="tflite:model.tflite"),
        replace(bfloat16, dim=1024),
        replace(bfloat16, input_size=(192, 192)),
    ]:
        assert not float32.compatible_with(other)


# --- bfloat16 embedding (needs avx512_bf16 or amx_bf16) -----------------------------------------


def test_bfloat16_gives_float32_vectors_close_to_the_float32_ones(bfloat16_resnet, random_resnet, photos):
    approximate, exact = bfloat16_resnet.embed(photos), random_resnet.embed(photos)
    assert approximate.shape == (len(photos), 2048)
    assert approximate.dtype == np.float32
    assert np.isfinite(approximate).all()
    assert not np.array_equal(approximate, exact)  # the rewrite really applied: bfloat16 rounds differently
    assert cosine(approximate, exact).min() > COSINE_FLOOR
    assert np.array_equal(bfloat16_resnet.embed(photos), approximate)  # deterministic, like float32


def test_bfloat16_vectors_are_compatible_with_float32_ones_of_the_same_weights_only(bfloat16_resnet, random_resnet):
    assert bfloat16_resnet.info.precision == "bfloat16"
    assert str(bfloat16_resnet.info) == "resnet50 (weights random(seed=0), 2048-d, bfloat16)"
    assert random_resnet.info.compatible_with(bfloat16_resnet.info)
    assert not replace(random_resnet.info, weights="random(seed=1)").compatible_with(bfloat16_resnet.info)


# Run in a fresh process, so that the float32 reference is computed before any bfloat16 embedder exists.
NO_LEAK_SCRIPT = textwrap.dedent(
    """
    import json, threading, warnings
    import numpy as np, tensorflow as tf
    from imagesearch.embedders import _onednn_bfloat16_calls, make_embedder

    warnings.simplefilter("ignore")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    options = tf.config.optimizer.get_experimental_options()
    float32 = make_embedder("resnet50", "random", seed=0)
    reference = float32.embed(pixels)

    bfloat16 = make_embedder("resnet50", "random", seed=0, precision="bfloat16")
    approximate = bfloat16.embed(pixels)
    facts = {
        "bfloat16 differs": not np.array_equal(approximate, reference),
        "float32 unchanged after": np.array_equal(float32.embed(pixels), reference),
        "a new float32 embedder unchanged": np.array_equal(make_embedder("resnet50", "random", seed=0).embed(pixels),
                                                           reference),
        "global optimizer options unchanged": tf.config.optimizer.get_experimental_options() == options,
    }
    # The scope is per thread: inside it, this thread's calls are rewritten and another thread's are not.
    other_thread = {}
    with _onednn_bfloat16_calls():
        worker = threading.Thread(target=lambda: other_thread.update(vectors=float32.embed(pixels)))
        worker.start()
        worker.join()
        facts["rewritten inside the scope"] = not np.array_equal(float32.embed(pixels), reference)
    facts["another thread unaffected by the scope"] = np.array_equal(other_thread["vectors"], reference)
    facts["float32 unchanged after the scope"] = np.array_equal(float32.embed(pixels), reference)
    print(json.dumps(facts))
    """
)


def test_float32_results_are_bitwise_unchanged_by_bfloat16_in_the_same_process(repo_root):
    if (reason := bfloat16_unavailable()) is not None:
        pytest.skip(f"bfloat16 is not available on this machine: {reason}")
    result = subprocess.run(
        [sys.executable, "-c", NO_LEAK_SCRIPT], cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.splitlines()[-1])
    assert facts == {fact: True for fact in facts}
    assert len(facts) == 7


# --- the benchmark ------------------------------------------------------------------------------


def run_precision_smoke(repo_root, **env: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "benchmarks/precision.py", "--smoke"],
        cwd=repo_root, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_precision_benchmark_smoke_run_compares_both_and_ends_with_a_summary(repo_root):
    lines = run_precision_smoke(repo_root)
    assert any(line.startswith("machine: ") for line in lines)
    assert any(line.startswith("limitation: random weights") for line in lines)
    assert lines[-1].startswith("summary:")
    if bfloat16_unavailable() is None:
        assert any(line.startswith("| bfloat16 ") for line in lines)
        assert "check: the bfloat16 vectors differ" in "\n".join(lines)
        assert lines[-1].startswith("summary: bfloat16 ")


def test_precision_benchmark_without_bfloat16_measures_float32_only(repo_root):
    lines = run_precision_smoke(repo_root, TF_ENABLE_ONEDNN_OPTS="0")  # the rewrite cannot run without oneDNN
    assert any(line.startswith("bfloat16: not measured") for line in lines)
    assert not any(line.startswith("| bfloat16 ") for line in lines)
    assert lines[-1].startswith("summary: bfloat16 not available here, float32 only: ")
