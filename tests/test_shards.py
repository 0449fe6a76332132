"""The on-disk format of embeddings: shards written once, saves that add only what is new, compaction, reading.

Shard sizes are made tiny here (a few rows) so that a handful of vectors spans several shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagesearch import collection, vectors
from imagesearch.collection import (
    MANIFEST_FILE,
    Embeddings,
    load_embeddings,
    load_previous_embeddings,
    save_embeddings,
)
from imagesearch.extract import extract_embeddings
from imagesearch.index import build_index
from imagesearch.journal import JOURNAL_DIR
from imagesearch.storage import FORMAT_VERSION, ArtifactError, DamagedStateError
from imagesearch.vectors import ArraySource, FileSource, VectorStore

DIM = 8


def shards_of(folder: Path) -> list[dict]:
    """The shards the committed manifest names, as {"vectors", "items", "rows", "images"}."""
    return json.loads((folder / MANIFEST_FILE).read_text())["shards"]


def shard_files_on_disk(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("vectors.*.npy"))


def items_files_on_disk(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("items.*.parquet"))


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
    save_embeddings(eight, tmp_path)
    assert [(shard["rows"], shard["images"]) for shard in shards_of(tmp_path)] == [(4, 4), (4, 4)]
    assert shard_files_on_disk(tmp_path) == sorted(shard["vectors"] for shard in shards_of(tmp_path))
    assert items_files_on_disk(tmp_path) == sorted(shard["items"] for shard in shards_of(tmp_path))
    loaded = load_embeddings(tmp_path)
    assert loaded.vectors.tobytes() == eight.vectors.tobytes()
    assert loaded.items == eight.items


def test_a_save_returns_the_embeddings_read_from_the_shards_it_wrote_and_leaves_its_argument_alone(tmp_path, eight):
    saved = save_embeddings(eight, tmp_path)
    assert all(isinstance(source, FileSource) and source.path.parent == tmp_path for source in saved.store.sources)
    assert saved.vectors.tobytes() == eight.vectors.tobytes()
    assert saved.is_saved and not eight.is_saved
    assert all(isinstance(source, ArraySource) for source in eight.store.sources)  # not rebound: a new object


def test_a_save_after_touching_one_image_rewrites_only_its_shards_items_file(tmp_path, eight, rows_per_shard):
    save_embeddings(eight, tmp_path)
    before_shards = shards_of(tmp_path)
    names = [*shard_files_on_disk(tmp_path), *items_files_on_disk(tmp_path)]
    before = {name: file_identity(tmp_path / name) for name in names}
    loaded = load_embeddings(tmp_path)
    touched = loaded.paths.index("img_5.jpg")
    (holder,) = [  # the shard that holds img_5.jpg
        shard for shard in before_shards
        if "img_5.jpg" in pq.read_table(tmp_path / shard["items"]).column("path").to_pylist()
    ]
    mtimes = loaded.records.column("mtime_ns").copy()
    mtimes[touched] += 1_000_000_000  # touched: a new modification time, the same content and vector
    unchanged = np.ones(len(loaded), bool)
    unchanged[touched] = False
    derived = Embeddings(
        loaded.store, loaded.records.with_columns(np.arange(len(loaded)), mtime_ns=mtimes), loaded.embedder,
        loaded.image_root, loaded.skipped, loaded.next_id, saved=loaded.saved, unchanged=unchanged,
    )
    save_embeddings(derived, tmp_path)

    after_shards = shards_of(tmp_path)
    assert [shard["vectors"] for shard in after_shards] == [shard["vectors"] for shard in before_shards]
    kept = {name: identity for name, identity in before.items() if name != holder["items"]}
    assert {name: file_identity(tmp_path / name) for name in kept} == kept  # every other file, never rewritten
    assert not (tmp_path / holder["items"]).exists()
    (new_items,) = set(items_files_on_disk(tmp_path)) - set(before)
    assert [shard["items"] for shard in after_shards] == [
        new_items if shard is holder else shard["items"] for shard in before_shards
    ]
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["version"] == loaded.saved.version + 1
    again = load_embeddings(tmp_path)
    expected = [
        dataclasses.replace(item, mtime_ns=item.mtime_ns + 1_000_000_000) if item.path == "img_5.jpg" else item
        for item in eight.items
    ]
    assert again.items == expected
    assert again.vectors.tobytes() == eight.vectors.tobytes()


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
    save_embeddings(eight, tmp_path)
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
    saved = save_embeddings(embeddings, tmp_path)
    real_chunks = VectorStore.chunks

    def chunks(self, rows=None):
        for start, block in real_chunks(self, rows):
            added.append(len(block))
            yield start, block

    monkeypatch.setattr(VectorStore, "chunks", chunks)
    chunked = build_index(saved, "Flat")
    assert max(added) == 7 and sum(added) == 50
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    assert chunked.search(queries, 5) == whole.search(queries, 5)


# --- compaction ---------------------------------------------------------------------------------


def test_a_shard_mostly_of_deleted_images_is_rewritten_and_the_others_are_kept(tmp_path, eight, rows_per_shard):
    save_embeddings(eight, tmp_path)
    (first, first_items), (second, second_items) = (
        (tmp_path / shard["vectors"], tmp_path / shard["items"]) for shard in shards_of(tmp_path)
    )
    second_before, second_items_before = file_identity(second), file_identity(second_items)
    loaded = load_embeddings(tmp_path)
    keep = [3, 4, 5, 6, 7]  # three of the first shard's four images are deleted: one live row of four
    remaining = dataclasses.replace(loaded, store=loaded.store.subset(keep), records=loaded.records.take(keep))
    save_embeddings(remaining, tmp_path)

    assert not first.exists() and not first_items.exists()
    assert file_identity(second) == second_before
    assert file_identity(second_items) == second_items_before  # its images are all kept as they were
    assert [shard["rows"] for shard in shards_of(tmp_path)] == [4, 1]  # the kept shard, then the moved row
    assert len(items_files_on_disk(tmp_path)) == 2
    loaded_again = load_embeddings(tmp_path)
    assert loaded_again.vectors.tobytes() == eight.vectors[keep].tobytes()
    assert loaded_again.items == [eight.items[row] for row in keep]


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
    converted = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert converted["format_version"] == FORMAT_VERSION == 4 and "items" not in converted
    assert items_files_on_disk(tmp_path) == sorted(shard["items"] for shard in converted["shards"])
    again = load_embeddings(tmp_path)
    assert again.vectors.tobytes() == eight.vectors.tobytes() and again.items == eight.items


def test_a_format_3_folder_loads_and_the_next_save_converts_it_to_items_files(tmp_path, eight):
    # Format 3: shards named {"file", "rows"}; every image in the manifest as [id, path, size, mtime, sha256,
    # shard, row]. The second shard holds its vectors in reverse order, to show each row is followed.
    np.save(tmp_path / "vectors.00000000000a.npy", eight.vectors[:5])
    np.save(tmp_path / "vectors.00000000000b.npy", eight.vectors[5:][::-1])
    items = [
        [item.id, item.path, item.size, item.mtime_ns, item.sha256, 0, row] for row, item in enumerate(eight.items[:5])
    ]
    items += [
        [item.id, item.path, item.size, item.mtime_ns, item.sha256, 1, 2 - row]
        for row, item in enumerate(eight.items[5:])
    ]
    manifest = {
        "kind": "embeddings", "format_version": 3, "embedder": eight.embedder.to_dict(),
        "image_root": eight.image_root, "count": 8, "next_id": 8,
        "shards": [{"file": "vectors.00000000000a.npy", "rows": 5}, {"file": "vectors.00000000000b.npy", "rows": 3}],
        "items": items, "skipped": [["notes.png", "not an image"]],
    }
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_embeddings(tmp_path)
    assert loaded.vectors.tobytes() == eight.vectors.tobytes() and loaded.items == eight.items
    assert [(skip.path, skip.reason) for skip in loaded.skipped] == [("notes.png", "not an image")]
    vectors_before = {name: file_identity(tmp_path / name) for name in shard_files_on_disk(tmp_path)}

    save_embeddings(loaded, tmp_path)
    converted = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert converted["format_version"] == FORMAT_VERSION == 4 and "items" not in converted
    assert {"vectors", "items", "rows", "images"} <= set(converted["shards"][0])
    # Only the records move out of the manifest: the shards' vectors are kept as they were.
    assert {name: file_identity(tmp_path / name) for name in shard_files_on_disk(tmp_path)} == vectors_before
    assert items_files_on_disk(tmp_path) == sorted(shard["items"] for shard in converted["shards"])
    assert sum(pq.read_table(tmp_path / shard["items"]).num_rows for shard in converted["shards"]) == 8
    again = load_embeddings(tmp_path)
    assert again.vectors.tobytes() == eight.vectors.tobytes() and again.items == eight.items
    assert [(skip.path, skip.reason) for skip in again.skipped] == [("notes.png", "not an image")]


def test_embeddings_of_a_folder_saved_over_since_say_to_load_again(tmp_path, eight, make_embeddings, rng):
    save_embeddings(eight, tmp_path)
    stale = load_embeddings(tmp_path)
    save_embeddings(make_embeddings(rng.standard_normal((3, DIM)), ["x.jpg", "y.jpg", "z.jpg"]), tmp_path)
    with pytest.raises(ArtifactError, match="load them again"):
        _ = stale.vectors
    with pytest.raises(ArtifactError, match="load them again"):
        save_embeddings(stale, tmp_path)
    assert load_embeddings(tmp_path).paths == ["x.jpg", "y.jpg", "z.jpg"]


def test_a_save_into_another_folder_copies_the_vectors_and_leaves_the_first_alone(tmp_path, eight):
    save_embeddings(eight, tmp_path / "a")
    before = {name: file_identity(tmp_path / "a" / name) for name in shard_files_on_disk(tmp_path / "a")}
    save_embeddings(load_embeddings(tmp_path / "a"), tmp_path / "b")
    assert {name: file_identity(tmp_path / "a" / name) for name in shard_files_on_disk(tmp_path / "a")} == before
    assert not set(shard_files_on_disk(tmp_path / "b")) & set(before)
    assert load_embeddings(tmp_path / "b").vectors.tobytes() == eight.vectors.tobytes()


def test_a_truncated_shard_is_refused_on_load(tmp_path, eight):
    save_embeddings(eight, tmp_path)
    (shard,) = shards_of(tmp_path)
    os.truncate(tmp_path / shard["vectors"], (tmp_path / shard["vectors"]).stat().st_size - 4)
    with pytest.raises(ArtifactError, match="truncated"):
        load_embeddings(tmp_path)


def test_an_items_file_pointing_outside_its_shard_is_refused_on_load(tmp_path, eight):
    save_embeddings(eight, tmp_path)
    (shard,) = shards_of(tmp_path)
    items = tmp_path / shard["items"]
    table = pq.read_table(items)
    rows = table.column("row").to_pylist()
    rows[3] = 8  # row 8 of an 8-row shard
    pq.write_table(table.set_column(table.schema.get_field_index("row"), table.schema.field("row"),
                                    pa.array(rows, pa.int32())), items)
    with pytest.raises(DamagedStateError, match=r"items\.\w+\.parquet is damaged \(its rows are not distinct rows of"):
        load_embeddings(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_items_file_is_named_in_one_line_on_load(tmp_path, eight, rows_per_shard, damage):
    save_embeddings(eight, tmp_path)
    items = tmp_path / shards_of(tmp_path)[1]["items"]
    if damage == "truncated":
        os.truncate(items, items.stat().st_size // 2)
    else:
        items.write_bytes(b"not a parquet file\n" * 20)
    with pytest.raises(DamagedStateError) as caught:
        load_embeddings(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(items) in message and "damaged" in message
    assert str(tmp_path / shards_of(tmp_path)[0]["items"]) not in message  # the intact one is not blamed
