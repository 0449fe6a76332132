"""Incremental updates: a changed folder costs only its changes, and ends where a full rebuild would."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

from imagesearch.collection import load_previous_embeddings, save_embeddings
from imagesearch.extract import extract_embeddings
from imagesearch.index import build_index, load_index, load_previous_index, save_index
from imagesearch.storage import ArtifactError

FIRST = [f"photo_{number:02d}.jpg" for number in range(10)]


@pytest.fixture
def folder(tmp_path, make_image):
    """Ten distinct images, embedded and indexed once, saved under `artifacts/`."""
    images = tmp_path / "images"
    for name in FIRST:
        make_image(images / name, size=(40, 32))
    return images


def first_run(images, embedder, artifacts, factory="Flat"):
    embeddings = save_embeddings(extract_embeddings(images, embedder, progress=False), artifacts / "embeddings")
    save_index(build_index(embeddings, factory), artifacts / "index")
    return embeddings


def later_run(images, embedder, artifacts, factory="Flat"):
    previous = load_previous_embeddings(artifacts / "embeddings")
    embeddings = extract_embeddings(images, embedder, batch_size=4, progress=False, previous=previous)
    index = build_index(embeddings, factory, previous=load_previous_index(artifacts / "index"))
    return embeddings, index


def change_folder(images, make_image):
    """Add two images, change one, delete one, rename one, touch one without changing it."""
    make_image(images / "new" / "added_a.jpg", size=(40, 32))
    make_image(images / "new" / "added_b.png", size=(40, 32))
    make_image(images / "photo_01.jpg", size=(44, 30), color=(200, 30, 30))  # new content, same name
    (images / "photo_02.jpg").unlink()
    (images / "renamed").mkdir()
    shutil.move(images / "photo_03.jpg", images / "renamed" / "photo_03_moved.jpg")
    stat = (images / "photo_04.jpg").stat()
    os.utime(images / "photo_04.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def top_paths(index, vectors, k=5):
    return [[hit.path for hit in hits] for hits in index.search(vectors, k)]


def test_second_run_on_an_unchanged_folder_embeds_nothing(folder, tmp_path, random_resnet, counting_embedder):
    first = first_run(folder, random_resnet, tmp_path / "artifacts")
    again, index = later_run(folder, counting_embedder, tmp_path / "artifacts")
    assert counting_embedder.images_embedded == 0
    assert again.changes.summary() == "0 added, 0 changed, 0 removed, 0 renamed, 10 unchanged, 0 skipped"
    assert again.items == first.items
    assert not index.changes.rebuilt and (index.changes.added, index.changes.removed) == (0, 0)


def test_update_embeds_only_new_and_changed_files_and_reports_every_change(
    folder, tmp_path, make_image, random_resnet, counting_embedder
):
    first_run(folder, random_resnet, tmp_path / "artifacts")
    change_folder(folder, make_image)
    embeddings, _ = later_run(folder, counting_embedder, tmp_path / "artifacts")

    changes = embeddings.changes
    assert changes.added == ["new/added_a.jpg", "new/added_b.png"]
    assert changes.changed == ["photo_01.jpg"]
    assert changes.removed == ["photo_02.jpg"]
    assert changes.renamed == [("photo_03.jpg", "renamed/photo_03_moved.jpg")]
    assert changes.unchanged == 7  # the touched photo_04 among them: same content, confirmed by its hash
    assert counting_embedder.images_embedded == 3  # the two added and the changed one, nothing else


def test_updated_embeddings_and_index_answer_exactly_as_a_full_rebuild(
    folder, tmp_path, make_image, random_resnet
):
    first_run(folder, random_resnet, tmp_path / "artifacts")
    change_folder(folder, make_image)
    updated, index = later_run(folder, random_resnet, tmp_path / "artifacts")
    rebuilt = extract_embeddings(folder, random_resnet, progress=False)

    assert updated.paths == rebuilt.paths
    scale = np.abs(rebuilt.vectors).max()
    assert np.allclose(updated.vectors, rebuilt.vectors, rtol=0, atol=1e-5 * scale)
    assert not index.changes.rebuilt
    assert (index.changes.added, index.changes.removed) == (3, 2)  # changed photo_01 counts on both sides
    assert index.paths == rebuilt.paths
    assert top_paths(index, rebuilt.vectors) == top_paths(build_index(rebuilt), rebuilt.vectors)


def test_images_keep_their_ids_and_new_images_never_reuse_an_old_id(folder, tmp_path, make_image, random_resnet):
    first = first_run(folder, random_resnet, tmp_path / "artifacts")
    change_folder(folder, make_image)
    updated, _ = later_run(folder, random_resnet, tmp_path / "artifacts")
    before = {item.path: item.id for item in first.items}
    after = {item.path: item.id for item in updated.items}

    for path in ["photo_00.jpg", "photo_01.jpg", "photo_04.jpg"]:  # unchanged, changed, touched
        assert after[path] == before[path]
    assert after["renamed/photo_03_moved.jpg"] == before["photo_03.jpg"]
    assert {after["new/added_a.jpg"], after["new/added_b.png"]} == {10, 11}  # after every id ever given
    # Ids are planned before any file is read: the moved file was planned id 12, which it did not take (it kept
    # its id), so 12 is still free: no image ever had it.
    assert updated.next_id == 12


# IVF indexes need 39 training vectors per list, more than these images: tests/test_ann.py updates them.
@pytest.mark.parametrize("factory, in_place", [("Flat", True), ("HNSW8", False)])
def test_index_types_that_can_remove_vectors_update_in_place_and_others_are_rebuilt(
    folder, tmp_path, make_image, random_resnet, factory, in_place
):
    first_run(folder, random_resnet, tmp_path / "artifacts", factory)
    change_folder(folder, make_image)
    updated, index = later_run(folder, random_resnet, tmp_path / "artifacts", factory)
    assert index.changes.rebuilt is not in_place
    assert len(index) == len(updated.items) == 11
    for path in updated.paths:  # every image finds itself: ids and vectors still agree
        assert index.search(index.vector(path), 1)[0][0].path == path


def test_a_previously_embedded_file_that_turns_unreadable_keeps_its_embedding(folder, tmp_path, random_resnet):
    first = first_run(folder, random_resnet, tmp_path / "artifacts")
    (folder / "photo_05.jpg").write_bytes(b"truncated by a failed copy")
    updated, _ = later_run(folder, random_resnet, tmp_path / "artifacts")

    assert updated.paths == first.paths
    row = updated.paths.index("photo_05.jpg")
    assert np.array_equal(updated.vectors[row], first.vectors[row])
    (skip,) = updated.skipped
    assert skip.path == "photo_05.jpg"
    assert skip.reason.endswith("its earlier embedding is kept")


def test_an_update_with_another_embedder_is_refused_rather_than_mixing_vectors(folder, tmp_path, random_resnet):
    first = first_run(folder, random_resnet, tmp_path / "artifacts")
    other = dataclasses.replace(first, embedder=dataclasses.replace(first.embedder, weights="imagenet"))
    with pytest.raises(ArtifactError, match="use another artifacts folder"):
        extract_embeddings(folder, random_resnet, progress=False, previous=other)


def test_two_copies_of_a_moved_file_one_takes_its_vector_and_id_the_other_is_embedded(
    folder, tmp_path, random_resnet
):
    first = first_run(folder, random_resnet, tmp_path / "artifacts")
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    shutil.copy(folder / "photo_03.jpg", folder / "b" / "copy.jpg")
    shutil.move(folder / "photo_03.jpg", folder / "a" / "moved.jpg")
    updated, _ = later_run(folder, random_resnet, tmp_path / "artifacts")

    assert updated.changes.renamed == [("photo_03.jpg", "a/moved.jpg")]  # the first read claims the vector
    assert updated.changes.added == ["b/copy.jpg"]  # the second has nothing left to claim: embedded
    ids = dict(zip(updated.paths, updated.ids.tolist()))
    assert ids["a/moved.jpg"] == dict(zip(first.paths, first.ids.tolist()))["photo_03.jpg"]
    assert ids["b/copy.jpg"] >= first.next_id
    vectors = dict(zip(updated.paths, updated.vectors))
    np.testing.assert_allclose(vectors["b/copy.jpg"], vectors["a/moved.jpg"], rtol=1e-5, atol=1e-5)


def test_a_save_of_a_run_that_changed_nothing_keeps_the_version_so_the_index_stays_current(
    folder, tmp_path, random_resnet
):
    artifacts = tmp_path / "artifacts"
    (folder / "unreadable.jpg").write_text("not an image")  # skipped by every run: it must not change the version
    first = first_run(folder, random_resnet, artifacts)
    manifest = (artifacts / "embeddings" / "manifest.json").read_bytes()
    again = extract_embeddings(folder, random_resnet, progress=False,
                               previous=load_previous_embeddings(artifacts / "embeddings"),
                               checkpoint_dir=artifacts / "embeddings")
    saved = save_embeddings(again, artifacts / "embeddings")
    assert saved.is_saved and saved.saved.version == first.saved.version
    assert (artifacts / "embeddings" / "manifest.json").read_bytes() == manifest  # nothing committed
    assert load_index(artifacts / "index").paths == FIRST  # the index of that version is still current

    os.utime(folder / "photo_04.jpg", ns=(0, 5_000_000_000))  # touched: its record changes, so a new version
    touched = save_embeddings(
        extract_embeddings(folder, random_resnet, progress=False, previous=saved), artifacts / "embeddings"
    )
    assert touched.saved.version == first.saved.version + 1
