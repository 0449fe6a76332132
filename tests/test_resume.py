"""Resuming an interrupted extraction: no embedded batch is lost, and no image is embedded twice."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from imagesearch.collection import load_embeddings, save_embeddings
from imagesearch.extract import extract_embeddings
from imagesearch.journal import JOURNAL_DIR

NAMES = [f"photo_{number:02d}.jpg" for number in range(10)]


class Interrupted(Exception):
    """Stands for Ctrl-C or a dying kernel, at a chosen moment."""


class InterruptAfter:
    """A real embedder that is interrupted after `batches` model calls have completed."""

    def __init__(self, inner, batches: int):
        self.inner, self.info, self.batches = inner, inner.info, batches

    def embed(self, images: np.ndarray) -> np.ndarray:
        if self.batches == 0:
            raise Interrupted
        self.batches -= 1
        return self.inner.embed(images)


class InfoOverride:
    """The real embedder, claiming to be another one (as if the weights had changed between runs)."""

    def __init__(self, inner, info):
        self.inner, self.info = inner, info

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.inner.embed(images)


@pytest.fixture
def folder(tmp_path, make_image):
    for name in NAMES:
        make_image(tmp_path / "images" / name, size=(40, 32))
    return tmp_path / "images"


def interrupted_run(folder, embedder, checkpoint, batches=2):
    with pytest.raises(Interrupted):
        extract_embeddings(folder, InterruptAfter(embedder, batches), 3, progress=False, checkpoint_dir=checkpoint)


def test_a_rerun_after_an_interruption_embeds_only_what_was_not_embedded_yet(
    folder, tmp_path, random_resnet, counting_embedder
):
    interrupted_run(folder, random_resnet, tmp_path / "embeddings")  # two batches of three done
    resumed = extract_embeddings(folder, counting_embedder, 3, progress=False, checkpoint_dir=tmp_path / "embeddings")

    assert counting_embedder.images_embedded == 4  # the ten images, less the six journaled
    assert resumed.changes.resumed == 6
    assert resumed.changes.added == NAMES
    assert resumed.changes.summary().endswith("; 6 vectors resumed from an interrupted run")


def test_a_resumed_run_gives_what_an_uninterrupted_run_gives(folder, tmp_path, random_resnet):
    interrupted_run(folder, random_resnet, tmp_path / "embeddings")
    resumed = extract_embeddings(folder, random_resnet, 3, progress=False, checkpoint_dir=tmp_path / "embeddings")
    straight = extract_embeddings(folder, random_resnet, 3, progress=False)

    assert resumed.paths == straight.paths  # each image once: none lost, none twice
    assert [item.id for item in resumed.items] == [item.id for item in straight.items]
    assert np.allclose(resumed.vectors, straight.vectors, rtol=0, atol=1e-5 * np.abs(straight.vectors).max())


def test_a_journaled_vector_of_a_file_changed_since_is_not_used(folder, tmp_path, make_image, random_resnet):
    interrupted_run(folder, random_resnet, tmp_path / "embeddings")
    make_image(folder / "photo_00.jpg", size=(44, 30), color=(0, 90, 200))  # journaled, then replaced
    resumed = extract_embeddings(folder, random_resnet, 3, progress=False, checkpoint_dir=tmp_path / "embeddings")
    alone = extract_embeddings(folder, random_resnet, progress=False)
    assert resumed.changes.resumed == 5
    row = resumed.paths.index("photo_00.jpg")
    assert np.allclose(resumed.vectors[row], alone.vectors[row], rtol=0, atol=1e-5 * np.abs(alone.vectors).max())


def test_a_journal_from_another_embedder_is_ignored(folder, tmp_path, random_resnet, counting_embedder):
    other = dataclasses.replace(random_resnet.info, weights="imagenet")
    interrupted_run(folder, InfoOverride(random_resnet, other), tmp_path / "embeddings")
    resumed = extract_embeddings(folder, counting_embedder, 3, progress=False, checkpoint_dir=tmp_path / "embeddings")
    assert resumed.changes.resumed == 0
    assert counting_embedder.images_embedded == 10


def test_saving_the_result_deletes_the_journal(folder, tmp_path, random_resnet):
    interrupted_run(folder, random_resnet, tmp_path / "embeddings")
    assert len(list((tmp_path / "embeddings" / JOURNAL_DIR).iterdir())) == 2
    resumed = extract_embeddings(folder, random_resnet, 3, progress=False, checkpoint_dir=tmp_path / "embeddings")
    save_embeddings(resumed, tmp_path / "embeddings")
    assert not (tmp_path / "embeddings" / JOURNAL_DIR).exists()
    assert load_embeddings(tmp_path / "embeddings").paths == NAMES


def test_the_main_job_killed_mid_extraction_resumes_when_run_again(tmp_path, make_image, repo_root):
    for number in range(96):
        make_image(tmp_path / "images" / f"img_{number:03d}.jpg", size=(64, 48))
    command = [sys.executable, "-m", "imagesearch", "build", "--weights", "random", "--batch-size", "8",
               "--images", str(tmp_path / "images"), "--artifacts", str(tmp_path / "artifacts")]
    journal = tmp_path / "artifacts" / "embeddings" / JOURNAL_DIR
    child = subprocess.Popen(command, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(journal.glob("batch.*"))) < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # as a closed laptop or a killed kernel would
    child.wait()
    journaled = len(list(journal.glob("batch.*")))
    assert 3 <= journaled < 12, "the kill should land mid-extraction"

    rerun = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "96 images embedded, 0 skipped" in rerun.stdout
    assert f"{journaled * 8} vectors resumed from an interrupted run" in rerun.stdout
    assert not journal.exists()
