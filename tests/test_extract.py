"""Embedding extraction over a folder, saving and loading the embeddings, and crash-safe writes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from imagesearch.collection import MANIFEST_FILE, SKIPPED_FILE, load_embeddings, save_embeddings
from imagesearch.extract import _prefetched, extract_embeddings
from imagesearch.images import load_image
from imagesearch.storage import FORMAT_VERSION, LOCK_FILE, ArtifactError, atomic_path


def shard_files(directory) -> list:
    """The vector shards the committed manifest names."""
    return [directory / shard["vectors"] for shard in json.loads((directory / MANIFEST_FILE).read_text())["shards"]]


def committed_files(directory) -> list[str]:
    """Every file a save commits, by name: the manifest, each shard's vectors and items, the skipped list,
    and the skip report for people."""
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    shards = [name for shard in manifest["shards"] for name in (shard["vectors"], shard["items"])]
    return sorted([MANIFEST_FILE, *shards, manifest["skipped"]["file"], SKIPPED_FILE])


GOOD = ["a.jpg", "nested/b.png", "nested/d.JPG", "nested/deeper/c.gif", "z.webp"]  # in list_images order
BAD = ["broken/cut.jpg", "broken/empty.jpg", "broken/notes.png"]


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory, make_image):
    """Five readable images in nested folders, and three broken files that look like images."""
    root = tmp_path_factory.mktemp("messy")
    for name in GOOD:
        make_image(root / name, size=(48, 36))
    (root / "broken").mkdir()
    (root / "broken" / "empty.jpg").write_bytes(b"")
    (root / "broken" / "notes.png").write_text("not a picture\n")
    whole = make_image(root / "broken" / "cut.jpg", size=(96, 96)).read_bytes()
    (root / "broken" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture(scope="module")
def messy_embeddings(messy_folder, random_resnet):
    return extract_embeddings(messy_folder, random_resnet, batch_size=4, progress=False)


def test_extract_embeds_readable_images_and_skips_broken_files_with_reasons(
    messy_folder, messy_embeddings, random_resnet
):
    assert messy_embeddings.paths == GOOD
    assert [skip.path for skip in messy_embeddings.skipped] == BAD
    assert all(skip.reason.strip() for skip in messy_embeddings.skipped)
    assert messy_embeddings.vectors.shape == (5, 2048)
    assert messy_embeddings.vectors.dtype == np.float32
    assert messy_embeddings.embedder == random_resnet.info
    assert messy_embeddings.image_root == str(messy_folder)
    assert [item.size for item in messy_embeddings.items] == [(messy_folder / p).stat().st_size for p in GOOD]
    assert messy_embeddings.summary().startswith("5 images embedded, 3 skipped")


def test_extract_rows_follow_the_order_of_items(messy_folder, messy_embeddings, random_resnet):
    vectors = messy_embeddings.vectors
    for row, item in enumerate(messy_embeddings.items):
        (alone,) = random_resnet.embed(load_image(messy_folder / item.path)[None])
        assert np.allclose(alone, vectors[row], rtol=0, atol=1e-4 * np.abs(vectors).max()), item.path
        assert np.argmin(np.linalg.norm(vectors - alone, axis=1)) == row, item.path


def test_extract_embeds_in_batches_one_model_call_per_batch(tmp_path, make_image, counting_embedder):
    for i in range(7):
        make_image(tmp_path / f"img{i}.png", size=(32, 32))
    counting = counting_embedder
    in_threes = extract_embeddings(tmp_path, counting, batch_size=3, progress=False)
    assert counting.batch_sizes == [3, 3, 1]

    counting.batch_sizes.clear()
    at_once = extract_embeddings(tmp_path, counting, batch_size=32, progress=False)
    assert counting.batch_sizes == [7]
    assert in_threes.paths == at_once.paths
    assert np.allclose(in_threes.vectors, at_once.vectors, rtol=0, atol=1e-4 * np.abs(at_once.vectors).max())


def test_extract_of_a_folder_without_images_gives_an_empty_matrix_and_no_model_call(tmp_path, counting_embedder):
    (tmp_path / "readme.txt").write_text("no pictures here")
    counting = counting_embedder
    embeddings = extract_embeddings(tmp_path, counting, progress=False)
    assert embeddings.vectors.shape == (0, 2048)
    assert embeddings.items == [] and embeddings.skipped == []
    assert counting.batch_sizes == []


@pytest.mark.parametrize("batch_size", [0, -1])
def test_extract_rejects_a_batch_size_below_one(tmp_path, random_resnet, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        extract_embeddings(tmp_path, random_resnet, batch_size=batch_size)


# --- save_embeddings / load_embeddings -----------------------------------------------------------


@pytest.fixture
def saved(tmp_path, messy_embeddings):
    """A folder written by save_embeddings from the messy extraction."""
    directory = tmp_path / "embeddings"
    save_embeddings(messy_embeddings, directory)
    return directory


def test_save_then_load_embeddings_gives_back_the_same_embeddings(tmp_path, messy_embeddings):
    saved = save_embeddings(messy_embeddings, tmp_path / "embeddings")
    on_disk = sorted(path.name for path in (tmp_path / "embeddings").iterdir() if path.name != LOCK_FILE)
    assert on_disk == committed_files(tmp_path / "embeddings")  # what the manifest names, and nothing else
    assert len(shard_files(tmp_path / "embeddings")) == 1
    assert saved.is_saved and saved.items == messy_embeddings.items
    assert saved.vectors.tobytes() == messy_embeddings.vectors.tobytes()
    loaded = load_embeddings(tmp_path / "embeddings")
    assert loaded.vectors.dtype == np.float32
    assert loaded.vectors.tobytes() == messy_embeddings.vectors.tobytes()
    assert loaded.items == messy_embeddings.items
    assert loaded.skipped == messy_embeddings.skipped
    assert loaded.embedder == messy_embeddings.embedder
    assert loaded.image_root == messy_embeddings.image_root


def test_load_embeddings_with_wrong_row_count_raises_artifact_error(saved):
    (shard,) = shard_files(saved)
    np.save(shard, np.load(shard)[:-1])
    with pytest.raises(ArtifactError, match="re-embed the lost images"):
        load_embeddings(saved)


def test_load_embeddings_without_manifest_raises_artifact_error(saved):
    (saved / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_embeddings(saved)


@pytest.mark.parametrize(
    "change",
    [{"format_version": FORMAT_VERSION + 1}, {"format_version": None}, {"kind": "index"}],
    ids=["newer-format", "no-format", "index-manifest"],
)
def test_load_embeddings_of_another_format_or_kind_raises_artifact_error(saved, change):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    (saved / MANIFEST_FILE).write_text(json.dumps({**manifest, **change}))
    with pytest.raises(ArtifactError, match="format version"):
        load_embeddings(saved)


def test_load_embeddings_without_its_vectors_file_raises_artifact_error(saved):
    (shard,) = shard_files(saved)
    shard.unlink()
    with pytest.raises(ArtifactError, match="re-embed the lost images"):
        load_embeddings(saved)


# --- atomic writes -------------------------------------------------------------------------------


def test_atomic_path_error_keeps_previous_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="crash midway"):
        with atomic_path(target) as temporary:
            temporary.write_text("half-writ")
            raise RuntimeError("crash midway")
    assert target.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_success_replaces_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("previous")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_saved_files_get_umask_permissions_not_private_temp_file_permissions(tmp_path, repo_root):
    # The umask is process state that storage reads at import, so set it for a fresh process.
    script = (
        "import sys, numpy as np\n"
        "from imagesearch.embedders import EmbedderInfo\n"
        "from imagesearch.collection import Embeddings, save_embeddings\n"
        "info = EmbedderInfo('test', 'none', 4, (224, 224))\n"
        "from imagesearch.records import ImageRecord\n"
        "items = [ImageRecord(0, 'a.jpg', 1, 1, 'ca' * 32)]\n"
        "save_embeddings(Embeddings(np.zeros((1, 4), np.float32), items, info, 'images'), sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=repo_root, check=True, umask=0o022)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in tmp_path.iterdir()}
    assert set(modes) == {*committed_files(tmp_path), LOCK_FILE}
    assert sorted(modes.values()) == [oct(0o644)] * 6  # manifest, vectors, items, skipped, skipped.csv, lock


# --- decoding ahead in a background thread ---------------------------------------------------------


def test_prefetched_yields_every_item_in_order():
    assert list(_prefetched(iter(range(100)), depth=2)) == list(range(100))


def test_prefetched_raises_the_producers_error_after_the_items_before_it():
    def failing():
        yield from (1, 2)
        raise OSError("disk gone")

    received = []
    with pytest.raises(OSError, match="disk gone"):
        for item in _prefetched(failing(), depth=2):
            received.append(item)
    assert received == [1, 2]


def test_prefetched_stops_its_thread_when_the_consumer_stops_early():
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    items = _prefetched(endless(), depth=2)
    assert next(items) == 0
    items.close()  # what a `break` or an exception in the consumer does
    assert not any(thread.name == "imagesearch-decode" for thread in threading.enumerate())
    assert len(produced) <= 4  # the one consumed, at most `depth` queued, one waiting to be queued
