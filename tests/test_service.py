"""The search service: the real app under uvicorn on 127.0.0.1, exercised over HTTP with httpx."""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from imagesearch.collection import load_embeddings, load_previous_embeddings, save_embeddings
from imagesearch.extract import extract_embeddings
from imagesearch.index import build_index, load_previous_index, save_index
from imagesearch.service import Settings, create_app
from imagesearch.storage import embeddings_dir, index_dir

PHOTOS = ("astronaut", "coffee", "rocket")  # three demo photos, seven versions each


def update(images: Path, artifacts: Path, embedder) -> None:
    """What `python -m imagesearch build` does to the artifacts: embed what changed, save, update the index, save."""
    folder = embeddings_dir(artifacts)
    embeddings = save_embeddings(
        extract_embeddings(images, embedder, 8, previous=load_previous_embeddings(folder), progress=False), folder)
    previous = load_previous_index(index_dir(artifacts), load_embeddings(folder))
    save_index(build_index(embeddings, "Flat", previous=previous), index_dir(artifacts))


@pytest.fixture(scope="module")
def collection(tmp_path_factory, repo_root, random_resnet) -> tuple[Path, Path]:
    """21 demo images, embedded and indexed: (image folder, artifacts folder)."""
    root = tmp_path_factory.mktemp("service")
    images = root / "images"
    images.mkdir()
    for path in (repo_root / "images").glob("*.jpg"):
        if path.name.split("__")[0] in PHOTOS:
            shutil.copy(path, images / path.name)
    update(images, root / "artifacts", random_resnet)
    return images, root / "artifacts"


class Server:
    """uvicorn serving `create_app(settings)` on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, settings: Settings):
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 120  # the model loads at start-up
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        (port,) = {socket.getsockname()[1] for server in self.server.servers for socket in server.sockets}
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        return self.client

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(collection):
    _, artifacts = collection
    settings = Settings(artifacts, weights="random", runtime="tensorflow", max_upload_bytes=2 * 2**20)
    with pytest.warns(UserWarning), Server(settings) as client:
        yield client


def upload(client: httpx.Client, data: bytes, k: int | str = 5, name: str = "query.jpg") -> httpx.Response:
    return client.post("/search", params={"k": k}, files={"file": (name, data, "application/octet-stream")})


# --- reading ----------------------------------------------------------------------------------------


def test_health_and_stats_describe_what_is_served(client):
    assert client.get("/health").json() == {"status": "ok", "images": 21, "stale": None}
    stats = client.get("/stats").json()
    assert stats | {"committed": None} == {
        "backbone": "resnet50", "weights": "random(seed=0)", "runtime": "tensorflow",
        "collection_runtime": "tensorflow", "dimension": 2048, "metric": "cosine", "retrieval": "recommended",
        "index": "Flat", "exact": True,
        "images": 21, "recall_at_10": None, "collection_version": 1, "committed": None,
    }
    assert stats["committed"].endswith("+00:00")


def test_an_uploaded_indexed_image_finds_itself_first_then_its_versions(client, collection):
    images, _ = collection
    answer = upload(client, (images / "coffee__crop.jpg").read_bytes(), k=4)
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [hit["rank"] for hit in results] == [0, 1, 2, 3]
    assert results[0]["path"] == "coffee__crop.jpg" and results[0]["distance"] == pytest.approx(0, abs=1e-3)
    assert all(hit["path"].startswith("coffee__") for hit in results[:2])  # near-copies, even with random weights
    assert answer.json()["milliseconds"] > 0


def test_neighbours_of_an_indexed_image_leave_it_out(client):
    some = client.get("/images/0/neighbours", params={"k": 3}).json()["results"]
    assert len(some) == 3 and 0 not in [hit["id"] for hit in some]
    distances = [hit["distance"] for hit in some]
    assert distances == sorted(distances)


def test_images_are_served_by_id_whole_and_as_thumbnails(client, collection):
    images, _ = collection
    hit = client.get("/images/0/neighbours", params={"k": 1}).json()["results"][0]
    original = client.get(f"/images/{hit['id']}")
    assert original.status_code == 200 and original.content == (images / hit["path"]).read_bytes()
    thumbnail = client.get(f"/images/{hit['id']}/thumbnail", params={"size": 64})
    assert thumbnail.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as picture:
        assert max(picture.size) == 64


# --- bad input: a clear 4xx, never a 500 -------------------------------------------------------------


@pytest.mark.parametrize("request_, status, detail", [
    (lambda c: upload(c, b"plain text, not an image", name="notes.jpg"), 415, "not an image"),
    (lambda c: upload(c, b""), 415, "empty"),
    (lambda c: upload(c, b"\xff" * (2 * 2**20 + 1)), 413, "over 2 MiB"),
    (lambda c: upload(c, b"x", k=0), 422, "greater than or equal to 1"),
    (lambda c: upload(c, b"x", k=101), 422, "less than or equal to 100"),
    (lambda c: upload(c, b"x", k="five"), 422, "valid integer"),
    (lambda c: c.post("/search"), 422, "Field required"),
    (lambda c: c.get("/search"), 405, "Method Not Allowed"),
    (lambda c: c.get("/images/999999"), 404, "no image has id 999999"),
    (lambda c: c.get("/images/-1/thumbnail"), 422, "greater than or equal to 0"),
    (lambda c: c.get(f"/images/{2**64}"), 422, "less than or equal to 9223372036854775807"),
    (lambda c: c.get("/images/..%2F..%2Fetc%2Fpasswd"), 404, "Not Found"),  # by id only, never by path
    (lambda c: c.get("/images/0/neighbours", params={"k": 1000}), 422, "less than or equal to 100"),
    (lambda c: c.get("/images/0/neighbours", params={"params": "nprobe=8"}), 422, "index takes no nprobe"),
    (lambda c: c.get("/images/0/neighbours", params={"params": "rm -rf"}), 422, "cannot read the search parameter"),
    (lambda c: c.get("/images/0/neighbours", params={"params": "9" * 200}), 422, "at most 100 characters"),
])
def test_bad_requests_get_a_clear_client_error(client, request_, status, detail):
    answer = request_(client)
    assert answer.status_code == status, answer.text
    assert detail in answer.text


def test_a_truncated_jpeg_is_refused_with_its_reason(client, collection):
    images, _ = collection
    data = (images / "rocket__blur.jpg").read_bytes()
    answer = upload(client, data[: len(data) // 3])
    assert answer.status_code == 415 and "truncated" in answer.text.lower(), answer.text


# --- live updates --------------------------------------------------------------------------------------


def test_saves_are_served_without_a_restart_and_no_search_fails_meanwhile(client, collection, random_resnet):
    """Searches run without pause while an image is added and then removed (each a new save, as the CLI makes
    it): every answer comes whole from one state, and the service follows both changes."""
    images, artifacts = collection
    query = (images / "astronaut__original.jpg").read_bytes()
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def search_until_stopped():
        while not stop.is_set():
            answers.append(upload(client, query, k=21))

    def served(count: int) -> None:
        deadline = time.monotonic() + 30
        while client.get("/health").json()["images"] != count:
            assert time.monotonic() < deadline, f"the save of {count} images was not picked up"
            time.sleep(0.1)

    searcher = threading.Thread(target=search_until_stopped)
    searcher.start()
    try:
        new = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        Image.fromarray(new).save(images / "noise__new.png")
        update(images, artifacts, random_resnet)
        served(22)
        found = upload(client, (images / "noise__new.png").read_bytes(), k=1).json()["results"][0]
        assert found["path"] == "noise__new.png" and client.get(f"/images/{found['id']}").status_code == 200
        (images / "noise__new.png").unlink()
        update(images, artifacts, random_resnet)
        served(21)
        assert client.get(f"/images/{found['id']}").status_code == 404
    finally:
        stop.set()
        searcher.join()
    assert len(answers) > 3 and all(answer.status_code == 200 for answer in answers)
    for answer in answers:  # whole, and of one state: 21 distinct images, nearest first
        results = answer.json()["results"]
        assert len({hit["id"] for hit in results}) == 21
        assert [hit["distance"] for hit in results] == sorted(hit["distance"] for hit in results)


# --- changes: adding and removing images, with the token -----------------------------------------------

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def writer(tmp_path_factory, collection):
    """A second service, with changes on (a token), over its own copy of the collection."""
    images, artifacts = collection
    root = tmp_path_factory.mktemp("writable")
    shutil.copytree(images, root / "images")
    settings = Settings(root / "artifacts", weights="random", runtime="tensorflow", token=TOKEN)
    yield root, settings


def noise_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_changes_are_off_without_a_token_configured(client):
    answer = client.post("/images", files={"files": ("a.png", noise_png(1))})
    assert answer.status_code == 403 and "IMAGESEARCH_TOKEN" in answer.text
    assert client.delete("/images/0").status_code == 403


def test_images_are_added_and_removed_with_the_token_and_found_at_once(writer, random_resnet):
    root, settings = writer
    update(root / "images", settings.artifacts, random_resnet)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.warns(UserWarning), Server(settings) as client:
        files = [("files", ("one.png", noise_png(1))), ("files", ("two.png", noise_png(2)))]
        assert client.post("/images", files=files).status_code == 401
        assert client.post("/images", files=files, headers={"Authorization": "Bearer nope"}).status_code == 403
        bad = [*files, ("files", ("notes.jpg", b"not an image"))]
        refused = client.post("/images", files=bad, headers=bearer)
        assert refused.status_code == 415 and "notes.jpg" in refused.text
        assert client.get("/health").json()["images"] == 21  # all or none

        added = client.post("/images", files=files, headers=bearer)
        assert added.status_code == 200, added.text
        ids = added.json()["added"]
        assert len(ids) == 2 and added.json()["images"] == 23
        found = upload(client, noise_png(2), k=1).json()["results"][0]
        assert found["id"] == ids[1] and found["path"].startswith("uploads/")
        again = client.post("/images", files=files[:1], headers=bearer).json()  # the same bytes: the same image
        assert again["added"] == ids[:1] and again["images"] == 23

        assert client.delete("/images/999999", headers=bearer).status_code == 404
        path = client.get(f"/images/{ids[0]}/neighbours", params={"k": 1}).status_code
        assert path == 200
        gone = client.delete(f"/images/{ids[0]}", headers=bearer)
        assert gone.json() == {"added": [], "removed": [ids[0]], "images": 22}
        assert client.get(f"/images/{ids[0]}").status_code == 404
        assert list((settings.artifacts / "removed" / "uploads").iterdir())  # moved aside, not deleted

        # Added again and removed again: the first copy set aside is kept, beside the second.
        again = client.post("/images", files=files[:1], headers=bearer).json()["added"][0]
        assert client.delete(f"/images/{again}", headers=bearer).status_code == 200
        assert len(list((settings.artifacts / "removed" / "uploads").iterdir())) == 2


def test_search_parameters_are_checked_against_the_index_and_bounded():
    from fastapi import HTTPException

    from imagesearch.collection import Embeddings
    from imagesearch.embedders import EmbedderInfo
    from imagesearch.records import ImageRecord
    from imagesearch.service import _params

    vectors = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    records = [ImageRecord(i, f"{i:03d}.jpg", 0, 0, f"{i:064x}") for i in range(60)]
    index = build_index(Embeddings(vectors, records, EmbedderInfo("test", "none", 8, (224, 224)), "root"), "HNSW32")
    assert str(_params(index, "efSearch=64")) == "efSearch=64"
    assert _params(index, None) is None
    for text, reason in [("efSearch=5000", "more than this service allows (4096)"), ("nprobe=4", "takes no nprobe"),
                         ("k_factor=4", "takes no k_factor"), ("efSearch=0", "at least 1")]:
        with pytest.raises(HTTPException) as caught:
            _params(index, text)
        assert caught.value.status_code == 422 and reason in caught.value.detail, caught.value.detail
