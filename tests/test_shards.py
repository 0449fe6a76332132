"""The on-disk format of embeddings: shards written once, saves that add only what is new, compaction, reading.

Shard sizes are made tiny here (a few rows) so that a handful of vectors spans several shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from imagesearch import collection, vectors
from imagesearch.collection import (
    JOURNAL_DIR,
    MANIFEST_FILE,
    Embeddings,
    load_embeddings,
    load_previous_embeddings,
    save_embeddings,
)
from imagesearch.extract import extract_embeddings
from imagesearch.index import build_index
from imagesearch.storage import ArtifactError
from imagesearch.vectors import ArraySource, FileSource, VectorStore

DIM = 8


def shards_of(folder: Path) -> list[dict]:
    """The shards the committed manifest names, as {"file", "rows"}."""
    return json.loads((folder / MANIFEST_FILE).read_text())["shards"]


def shard_files_on_disk(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("vectors.*.npy"))


def file_identity(path: Path) -> tuple[int, int, int]:
    """What changes if a file is rewritten or replaced: inode, size, modification time."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@pytest.fixture
def rows_per_shard(monkeypatch):
    """Saves write shards of 4 rows."""
    monkeypatch.setattr(collection, "SHARD_ROWS", 4)
    return 4


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def eight(make_embeddings, rng) -> Embeddings:
    return make_embeddings(rng.standard_normal((8, DIM)), [f"img_{row}.jpg" for row in range(8)])


def saved_copy(embeddings: Embeddings, folder: Path) -> Embeddings:
    """Save a copy of `embeddings` (a save rebinds what it saved to its files) and return the copy."""
    copy = dataclasses.replace(embeddings)
    save_embeddings(copy, folder)
    return copy


# --- the vector store ------------------------------------------------------------------------------


def test_store_takes_rows_from_several_sources_in_any_order(tmp_path, rng):
    on_disk = rng.standard_normal((10, DIM)).astype(np.float32)
    in_memory = rng.standard_normal((5, DIM)).astype(np.float32)
    np.save(tmp_path / "shard.npy", on_disk)
    disk, memory = FileSource(tmp_path / "shard.npy"), ArraySource(in_memory)
    store = VectorStore.gather([(disk, 9), (memory, 0), (disk, 2), (memory, 4), (disk, 0)], DIM)
    expected = np.stack([on_disk[9], in_memory[0], on_disk[2], in_memory[4], on_disk[0]])
    assert len(store.sources) == 2
    assert np.array_equal(store.to_array(), expected)
    assert np.array_equal(store.take([4, 0, 3]), expected[[4, 0, 3]])
    blocks = list(store.chunks(2))
    assert [start for start, _ in blocks] == [0, 2, 4]
    assert np.array_equal(np.concatenate([block for _, block in blocks]), expected)


def test_store_subset_drops_sources_it_no_longer_uses(rng):
    first, second = (ArraySource(rng.standard_normal((3, DIM), dtype=np.float32)) for _ in range(2))
    store = VectorStore.gather([(first, 0), (second, 1), (first, 2)], DIM)
    subset = store.subset([2, 0])
    assert subset.sources == [first]
    assert np.array_equal(subset.to_array(), first.array[[2, 0]])


def test_embeddings_refuse_a_store_of_another_length(make_embeddings, eight):
    with pytest.raises(ValueError, match="7 vectors for 8 items"):
        Embeddings(eight.vectors[:7], eight.items, eight.embedder, eight.image_root)


# --- saving: shards written once, only what is new ------------------------------------------------------


def test_a_first_save_writes_shards_of_at_most_shard_rows_that_load_back_exactly(tmp_path, eight, rows_per_shard):
    saved_copy(eight, tmp_path)
    assert [shard["rows"] for shard in shards_of(tmp_path)] == [4, 4]
    assert shard_files_on_disk(tmp_path) == sorted(shard["file"] for shard in shards_of(tmp_path))
    loaded = load_embeddings(tmp_path)
    assert loaded.vectors.tobytes() == eight.vectors.tobytes()
    assert loaded.items == eight.items


def test_a_save_rebinds_the_embeddings_to_the_shards_it_wrote(tmp_path, eight):
    copy = saved_copy(eight, tmp_path)
    assert all(isinstance(source, FileSource) and source.path.parent == tmp_path for source in copy.store.sources)
    assert copy.vectors.tobytes() == eight.vectors.tobytes()


def test_an_update_writes_only_the_new_vectors_and_leaves_saved_shards_untouched(
    tmp_path, make_image, counting_embedder, rows_per_shard
):
    images, folder = tmp_path / "images", tmp_path / "embeddings"
    for number in range(8):
        make_image(images / f"img_{number}.jpg")
    first = extract_embeddings(images, counting_embedder, batch_size=4, progress=False, checkpoint_dir=folder)
    save_embeddings(first, folder)
    before = {name: file_identity(folder / name) for name in shard_files_on_disk(folder)}
    assert len(before) == 2

    make_image(images / "img_8.jpg")
    counting_embedder.batch_sizes.clear()
    update = extract_embeddings(
        images, counting_embedder, progress=False, previous=load_previous_embeddings(folder), checkpoint_dir=folder
    )
    save_embeddings(update, folder)

    assert counting_embedder.images_embedded == 1
    after = {name: file_identity(folder / name) for name in shard_files_on_disk(folder)}
    assert {name: after[name] for name in before} == before  # the same files, never rewritten
    (new,) = set(after) - set(before)
    assert np.load(folder / new).shape == (1, counting_embedder.info.dim)
    assert not (folder / JOURNAL_DIR).exists()
    rebuilt = extract_embeddings(images, counting_embedder, progress=False)
    loaded = load_embeddings(folder)
    assert loaded.paths == rebuilt.paths
    assert np.allclose(loaded.vectors, rebuilt.vectors, rtol=0, atol=1e-5 * np.abs(rebuilt.vectors).max())


def test_extraction_with_a_checkpoint_folder_reads_new_vectors_from_its_journal_not_memory(
    tmp_path, make_image, random_resnet
):
    for number in range(6):
        make_image(tmp_path / "images" / f"img_{number}.jpg")
    result = extract_embeddings(
        tmp_path / "images", random_resnet, batch_size=4, progress=False, checkpoint_dir=tmp_path / "embeddings"
    )
    assert result.store.sources and all(
        isinstance(source, FileSource) and source.path.parent == tmp_path / "embeddings" / JOURNAL_DIR
        for source in result.store.sources
    )
    in_memory = extract_embeddings(tmp_path / "images", random_resnet, batch_size=4, progress=False)
    assert all(isinstance(source, ArraySource) for source in in_memory.store.sources)
    assert np.allclose(result.vectors, in_memory.vectors, rtol=0, atol=1e-5 * np.abs(in_memory.vectors).max())


def test_loading_reads_no_vectors_until_they_are_used(tmp_path, eight, monkeypatch):
    saved_copy(eight, tmp_path)
    reads = []
    real_read = FileSource.read
    monkeypatch.setattr(FileSource, "read", lambda self, rows: reads.append(len(rows)) or real_read(self, rows))
    loaded = load_embeddings(tmp_path)
    assert reads == []
    assert loaded.vectors.tobytes() == eight.vectors.tobytes()
    assert sum(reads) == 8


def test_an_index_built_a_chunk_at_a_time_answers_as_one_built_from_the_whole_matrix(
    tmp_path, make_embeddings, rng, monkeypatch
):
    embeddings = make_embeddings(rng.standard_normal((50, DIM)), [f"img_{row:02}.jpg" for row in range(50)])
    whole = build_index(embeddings, "Flat")
    monkeypatch.setattr(vectors, "CHUNK_ROWS", 7)
    added = []
    saved = saved_copy(embeddings, tmp_path)
    real_take = VectorStore.take
    monkeypatch.setattr(VectorStore, "take", lambda self, rows: added.append(len(rows)) or real_take(self, rows))
    chunked = build_index(saved, "Flat")
    assert max(added) == 7 and sum(added) == 50
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    assert chunked.search(queries, 5) == whole.search(queries, 5)


# --- compaction ---------------------------------------------------------------------------------


def test_a_shard_mostly_of_deleted_images_is_rewritten_and_the_others_are_kept(tmp_path, eight, rows_per_shard):
    saved_copy(eight, tmp_path)
    first, second = (tmp_path / shard["file"] for shard in shards_of(tmp_path))
    second_before = file_identity(second)
    loaded = load_embeddings(tmp_path)
    keep = [3, 4, 5, 6, 7]  # three of the first shard's four images are deleted: one live row of four
    remaining = Embeddings(
        loaded.store.subset(keep), [loaded.items[row] for row in keep], loaded.embedder, loaded.image_root
    )
    save_embeddings(remaining, tmp_path)

    assert not first.exists()
    assert file_identity(second) == second_before
    assert [shard["rows"] for shard in shards_of(tmp_path)] == [4, 1]  # the kept shard, then the moved row
    assert load_embeddings(tmp_path).vectors.tobytes() == eight.vectors[keep].tobytes()


def test_many_small_shards_from_small_updates_are_merged(tmp_path, make_embeddings, rng, monkeypatch):
    monkeypatch.setattr(collection, "SHARD_ROWS", 16)  # shards under 4 rows are small
    monkeypatch.setattr(collection, "MAX_SMALL_SHARDS", 2)
    every = rng.standard_normal((4, DIM)).astype(np.float32)
    counts = []
    for size in range(1, 5):  # each save adds one image to the previous save
        previous = load_previous_embeddings(tmp_path)
        grown = make_embeddings(every[:size], [f"img_{row}.jpg" for row in range(size)])
        if previous is not None:  # the saved rows are reused from their shards, as an incremental run does
            places = [(previous.store.sources[s], r) for s, r in previous.store.locations.tolist()]
            places.append((ArraySource(every[size - 1 : size]), 0))
            grown = dataclasses.replace(grown, store=VectorStore.gather(places, DIM))
        save_embeddings(grown, tmp_path)
        counts.append(len(shards_of(tmp_path)))
        assert load_embeddings(tmp_path).vectors.tobytes() == every[:size].tobytes()
    assert counts == [1, 2, 3, 1]
    assert len(shard_files_on_disk(tmp_path)) == 1


# --- reading older and broken folders -----------------------------------------------------------------


def test_a_format_2_folder_loads_and_the_next_save_converts_it(tmp_path, eight):
    np.save(tmp_path / "embeddings.0123456789ab.npy", eight.vectors)
    manifest = {
        "kind": "embeddings", "format_version": 2, "embedder": eight.embedder.to_dict(),
        "image_root": eight.image_root, "vectors_file": "embeddings.0123456789ab.npy", "count": 8, "next_id": 8,
        "items": [[item.id, item.path, item.size, item.mtime_ns, item.sha256] for item in eight.items],
        "skipped": [],
    }
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_embeddings(tmp_path)
    assert loaded.vectors.tobytes() == eight.vectors.tobytes() and loaded.items == eight.items

    save_embeddings(loaded, tmp_path)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["format_version"] == 3
    assert load_embeddings(tmp_path).vectors.tobytes() == eight.vectors.tobytes()


def test_embeddings_of_a_folder_saved_over_since_say_to_load_again(tmp_path, eight, make_embeddings, rng):
    saved_copy(eight, tmp_path)
    stale = load_embeddings(tmp_path)
    saved_copy(make_embeddings(rng.standard_normal((3, DIM)), ["x.jpg", "y.jpg", "z.jpg"]), tmp_path)
    with pytest.raises(ArtifactError, match="load them again"):
        _ = stale.vectors
    with pytest.raises(ArtifactError, match="load them again"):
        save_embeddings(stale, tmp_path)
    assert load_embeddings(tmp_path).paths == ["x.jpg", "y.jpg", "z.jpg"]


def test_a_save_into_another_folder_copies_the_vectors_and_leaves_the_first_alone(tmp_path, eight):
    saved_copy(eight, tmp_path / "a")
    before = {name: file_identity(tmp_path / "a" / name) for name in shard_files_on_disk(tmp_path / "a")}
    save_embeddings(load_embeddings(tmp_path / "a"), tmp_path / "b")
    assert {name: file_identity(tmp_path / "a" / name) for name in shard_files_on_disk(tmp_path / "a")} == before
    assert not set(shard_files_on_disk(tmp_path / "b")) & set(before)
    assert load_embeddings(tmp_path / "b").vectors.tobytes() == eight.vectors.tobytes()


def test_a_truncated_shard_is_refused_on_load(tmp_path, eight):
    saved_copy(eight, tmp_path)
    (shard,) = shards_of(tmp_path)
    os.truncate(tmp_path / shard["file"], (tmp_path / shard["file"]).stat().st_size - 4)
    with pytest.raises(ArtifactError, match="truncated"):
        load_embeddings(tmp_path)


def test_a_manifest_pointing_outside_its_shards_is_refused_on_load(tmp_path, eight):
    saved_copy(eight, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["items"][3][6] = 8  # row 8 of an 8-row shard
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outside its shards"):
        load_embeddings(tmp_path)
