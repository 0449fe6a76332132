"""The service on saved state that is missing or damaged: one line that says what happened and what to do.

At start-up, the real `uvicorn imagesearch.service:app` runs in a process of its own on a free port of 127.0.0.1
over each damaged artifacts folder: it must exit with a non-zero status, print no traceback, print the error as
exactly one line among uvicorn's own fixed lines, and leave every file as it was (the service never repairs by
deleting). While it runs, damage makes /health say why and the last good index go on being served; a change it
cannot make gets a 503 whose detail is the error's one line, never a bare 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser_lab import free_port
from test_service import TOKEN, Server, noise_png, upload

import imagesearch.service as service_module
from imagesearch.backbones import arguments_for
from imagesearch.collection import (
    MANIFEST_FILE,
    Embeddings,
    load_embeddings,
    load_previous_embeddings,
    save_embeddings,
)
from imagesearch.errors import UserFacingError
from imagesearch.extract import extract_embeddings
from imagesearch.index import METADATA_FILE, build_index, load_index, save_index
from imagesearch.service import CANNOT_START, Settings, create_app
from imagesearch.storage import embeddings_dir, index_dir

#: Seven versions of one demo photo and one other photo: enough for the recommended retrieval (DBA over 5).
NAMES = [f"coffee__{version}.jpg" for version in ("original", "blur", "crop", "lighting", "mirror", "rotate", "scale")]
NAMES += ["rocket__original.jpg"]
#: Every line uvicorn itself prints to stderr when the application's start-up fails, at its default log level.
UVICORN_LINES = (r"INFO:     Started server process \[\d+\]", r"INFO:     Waiting for application startup\.",
                 r"ERROR:    Application startup failed\. Exiting\.")
#: The longest a failing start may take: the service imports TensorFlow before it reads anything.
START_TIMEOUT = 180


def build(images: Path, artifacts: Path, embedder, retrieval: str = "recommended") -> None:
    """What `python -m imagesearch build` makes, with the given model: embeddings, and an index with a retrieval
    file (the recommended retrieval keeps its augmentation in retrieval.<token>.npz)."""
    embeddings = save_embeddings(extract_embeddings(images, embedder, 8, progress=False), embeddings_dir(artifacts))
    save_index(build_index(embeddings, "Flat", retrieval=retrieval), index_dir(artifacts))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, repo_root, random_resnet) -> Path:
    """Eight demo photos embedded by the session's random ResNet50 and indexed: the artifacts folder."""
    root = tmp_path_factory.mktemp("service_start")
    for name in NAMES:
        (root / "images").mkdir(exist_ok=True)
        shutil.copy(repo_root / "images" / name, root / "images" / name)
    build(root / "images", root / "artifacts", random_resnet)
    return root / "artifacts"


@pytest.fixture
def artifacts(saved, tmp_path) -> Path:
    """A copy of the saved artifacts, to damage."""
    return Path(shutil.copytree(saved, tmp_path / "artifacts"))


# --- the damage: each returns the error the service must report, as the library words it ---------------------


def index_error(artifacts: Path) -> str:
    with pytest.raises(UserFacingError) as caught:
        load_index(index_dir(artifacts))
    return str(caught.value)


def truncate_metadata(artifacts: Path) -> str:
    path = index_dir(artifacts) / METADATA_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return index_error(artifacts)


def named(artifacts: Path, key: str) -> Path:
    return index_dir(artifacts) / json.loads((index_dir(artifacts) / METADATA_FILE).read_text())[key]


def delete_index_file(artifacts: Path) -> str:
    named(artifacts, "index_file").unlink()
    return index_error(artifacts)


def corrupt_retrieval_file(artifacts: Path) -> str:
    path = named(artifacts, "retrieval_file")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return index_error(artifacts)


def index_of_other_weights(artifacts: Path) -> str:
    """The index folder of a collection embedded with other weights (seed 1), copied over this one's."""
    embeddings = load_embeddings(embeddings_dir(artifacts))
    other = Embeddings(np.random.default_rng(1).standard_normal((len(embeddings), embeddings.embedder.dim), np.float32),
                       embeddings.records, dataclasses.replace(embeddings.embedder, weights="random(seed=1)"),
                       embeddings.image_root, next_id=embeddings.next_id)
    elsewhere = artifacts.parent / "other"
    save_index(build_index(save_embeddings(other, embeddings_dir(elsewhere)), "Flat", retrieval="recommended"),
               index_dir(elsewhere))
    shutil.rmtree(index_dir(artifacts))
    shutil.copytree(index_dir(elsewhere), index_dir(artifacts))
    shutil.rmtree(elsewhere)
    return index_error(artifacts)


def metadata_of_other_weights(artifacts: Path) -> str:
    """index.json edited to name other weights than the embeddings it indexes were made with."""
    path = index_dir(artifacts) / METADATA_FILE
    path.write_text(path.read_text().replace('"random(seed=0)"', '"random(seed=1)"'))
    return index_error(artifacts)


def model_unknown(artifacts: Path) -> str:
    """Index and embeddings agree on a model this version cannot build: the error comes from making the model."""
    for path in (index_dir(artifacts) / METADATA_FILE, embeddings_dir(artifacts) / MANIFEST_FILE):
        path.write_text(path.read_text().replace('"backbone": "resnet50"', '"backbone": "resnet9000"'))
    with pytest.raises(UserFacingError) as caught:
        arguments_for(load_index(index_dir(artifacts)).embedder)
    return str(caught.value)


def nothing_built(artifacts: Path) -> str:
    """An artifacts folder `make demo` never filled."""
    shutil.rmtree(artifacts)
    artifacts.mkdir()
    return index_error(artifacts)


def files_of(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its content hash and modification time, by relative path."""
    return {path.relative_to(folder).as_posix(): (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                  path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(("damage", "problem"), [
    pytest.param(truncate_metadata, "/index/index.json is damaged (not JSON: ", id="index-json-truncated"),
    pytest.param(delete_index_file, ".faiss, named by index.json, is missing; rebuild the index",
                 id="index-file-deleted"),
    pytest.param(corrupt_retrieval_file, ".npz is damaged (File is not a zip file); rebuild the index",
                 id="retrieval-file-corrupted"),
    pytest.param(index_of_other_weights, "/index/index.json indexes other embeddings than those now in ",
                 id="index-of-other-weights"),
    pytest.param(metadata_of_other_weights, "/index/index.json is damaged (it names the model resnet50 (weights "
                 "random(seed=1), 2048-d), but the embeddings", id="index-json-names-other-weights"),
    pytest.param(model_unknown, "made by resnet9000 (weights random(seed=0), 2048-d), which this version of "
                 "imagesearch cannot build", id="model-unknown"),
    pytest.param(nothing_built, "/index/index.json is missing; build the index from the embeddings: ",
                 id="nothing-built"),
])
def test_uvicorn_on_damaged_state_prints_one_line_exits_and_touches_nothing(artifacts, repo_root, damage, problem):
    expected = damage(artifacts)
    assert problem in expected, expected
    before = files_of(artifacts)
    env = {**os.environ, "IMAGESEARCH_ARTIFACTS": str(artifacts), "IMAGESEARCH_RUNTIME": "tensorflow"}
    env.pop("IMAGESEARCH_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "imagesearch.service:app", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=START_TIMEOUT,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if CANNOT_START in line] == [f"ERROR:    {CANNOT_START}: {expected}"], lines
    others = [line for line in lines if CANNOT_START not in line]
    assert all(any(re.fullmatch(pattern, line) for pattern in UVICORN_LINES) for line in others), others
    assert files_of(artifacts) == before  # the damaged files too: kept as they are, for the advised repair


def test_a_bug_at_start_up_keeps_its_traceback(monkeypatch, tmp_path):
    """Only errors whose message is complete for the user are cut to one line; a bug needs its traceback."""

    def broken(settings):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(service_module, "Service", broken)
    sent = []

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        sent.append(message)

    with pytest.raises(ZeroDivisionError):
        asyncio.run(create_app(Settings(tmp_path))({"type": "lifespan", "state": {}}, receive, send))
    (failed,) = sent
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith("Traceback") and "ZeroDivisionError: a bug" in failed["message"]


# --- while it runs ---------------------------------------------------------------------------------------------


def test_damage_while_running_keeps_the_last_good_index_served_and_a_change_it_cannot_make_is_a_503(
    tmp_path, repo_root, random_resnet
):
    images, artifacts = tmp_path / "images", tmp_path / "artifacts"
    images.mkdir()
    for name in NAMES[:3]:
        shutil.copy(repo_root / "images" / name, images / name)
    build(images, artifacts, random_resnet, retrieval="plain")
    query = (images / NAMES[0]).read_bytes()
    settings = Settings(artifacts, weights="random", runtime="tensorflow", token=TOKEN)
    with pytest.warns(UserWarning), Server(settings) as client:
        served = upload(client, query, k=3).json()["results"]

        metadata = index_dir(artifacts) / METADATA_FILE
        good = metadata.read_bytes()
        metadata.write_bytes(good[: len(good) // 2])
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "stale", "images": 3, "stale": index_error(artifacts)}
        answer = upload(client, query, k=3)
        assert answer.status_code == 200 and answer.json()["results"] == served  # the last good index

        manifest = embeddings_dir(artifacts) / MANIFEST_FILE
        current = manifest.read_text()
        newer = current.replace('"format_version": 4', '"format_version": 99')
        manifest.write_text(newer)
        with pytest.raises(UserFacingError) as caught:
            load_previous_embeddings(embeddings_dir(artifacts))
        refused = client.post("/images", files={"files": ("new.png", noise_png(1))},
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"detail": str(caught.value)}
        assert "newer than this code reads" in refused.json()["detail"]
        assert manifest.read_text() == newer and metadata.read_bytes() == good[: len(good) // 2]  # not written over
        assert upload(client, query, k=3).json()["results"] == served

        manifest.write_text(current)
        metadata.write_bytes(good)  # repaired: served again, as it was
        assert client.get("/health").json() == {"status": "ok", "images": 3, "stale": None}
