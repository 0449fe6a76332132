"""The plan of an extraction, as a pure function of a folder listing and the saved records: no file, no model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from imagesearch.collection import Embeddings
from imagesearch.embedders import EmbedderInfo
from imagesearch.plan import Listing, list_files, make_plan
from imagesearch.records import ImageRecord

INFO = EmbedderInfo("test", "none", 4, (224, 224))


def listing(files: dict[str, tuple[int, int]]) -> Listing:
    """A listing of `files` ({path: (size, mtime_ns)}), as `list_files` would make it of such a folder."""
    paths = sorted(files)
    return Listing(
        Path("/nowhere"), pa.array(paths, pa.string()), np.array([files[p][0] for p in paths], np.int64),
        np.array([files[p][1] for p in paths], np.int64), (), Counter(),
    )


def saved(files: dict[str, tuple[int, int]], next_id: int | None = None, lost: dict | None = None) -> Embeddings:
    """Saved embeddings of `files`, ids in path order; `lost` images had their vectors in a damaged shard."""
    items = [ImageRecord(i, path, size, mtime, f"{i:064x}", 1) for i, (path, (size, mtime)) in
             enumerate(sorted(files.items()))]
    lost_items = [ImageRecord(len(items) + i, path, size, mtime, f"{len(items) + i:064x}", 1)
                  for i, (path, (size, mtime)) in enumerate(sorted((lost or {}).items()))]
    return Embeddings(np.zeros((len(items), 4), np.float32), items, INFO, "/nowhere",
                      next_id=next_id or 0, lost=lost_items)


def planned(plan) -> dict[str, tuple[int, int, int]]:
    """{path: (planned id, row of its path in the saved records, row among the lost)} of the files to read."""
    columns = plan.read.to_pydict()
    return {path: (i, previous, lost) for path, i, previous, lost in
            zip(columns["path"], columns["id"], columns["previous"], columns["lost"])}


def test_a_first_plan_reads_every_file_and_numbers_them_in_path_order():
    plan = make_plan(listing({"b.jpg": (1, 1), "a.jpg": (2, 2), "c/d.jpg": (3, 3)}))
    assert planned(plan) == {"a.jpg": (0, -1, -1), "b.jpg": (1, -1, -1), "c/d.jpg": (2, -1, -1)}
    assert len(plan.keep) == 0 and len(plan.vanished) == 0 and plan.next_id == 3


def test_unchanged_files_are_kept_without_being_read():
    files = {"a.jpg": (10, 100), "b.jpg": (20, 200)}
    plan = make_plan(listing(files), saved(files))
    assert plan.keep.tolist() == [0, 1] and len(plan.read) == 0 and plan.next_id == 2


def test_a_file_whose_size_or_time_differs_is_read_under_its_id_and_new_files_get_new_ids():
    before = {"a.jpg": (10, 100), "b.jpg": (20, 200), "c.jpg": (30, 300)}
    now = {"a.jpg": (10, 100), "b.jpg": (20, 999), "c.jpg": (31, 300), "new.jpg": (5, 5)}
    plan = make_plan(listing(now), saved(before))
    assert plan.keep.tolist() == [0]
    assert planned(plan) == {"b.jpg": (1, 1, -1), "c.jpg": (2, 2, -1), "new.jpg": (3, -1, -1)}


def test_removed_files_vanish_and_their_ids_are_never_given_again():
    before = {"a.jpg": (1, 1), "b.jpg": (2, 2), "c.jpg": (3, 3)}
    plan = make_plan(listing({"a.jpg": (1, 1), "d.jpg": (4, 4)}), saved(before, next_id=7))
    assert plan.vanished.tolist() == [1, 2]  # b and c: a renamed file may still claim one by its content
    assert planned(plan) == {"d.jpg": (7, -1, -1)}  # not 1 or 2, nor anything below the saved next_id
    assert plan.next_id == 8


def test_a_renamed_file_is_planned_as_new_and_its_old_record_as_vanished_until_its_content_is_read():
    plan = make_plan(listing({"moved/a.jpg": (1, 1)}), saved({"a.jpg": (1, 1)}))
    assert planned(plan) == {"moved/a.jpg": (1, -1, -1)} and plan.vanished.tolist() == [0]


def test_images_whose_vectors_were_lost_are_read_again_under_their_ids_and_gone_ones_vanish():
    plan = make_plan(
        listing({"a.jpg": (1, 1), "lost.jpg": (2, 2)}),
        saved({"a.jpg": (1, 1)}, lost={"lost.jpg": (2, 2), "lost_and_gone.jpg": (3, 3)}),
    )
    assert plan.keep.tolist() == [0]
    assert planned(plan) == {"lost.jpg": (1, -1, 0)}  # same size and time, but no vector: read again, id kept
    assert plan.vanished_lost.tolist() == [1]
    assert plan.next_id == 3


def test_list_files_reads_sizes_and_times_and_records_a_dangling_link_as_unreadable(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(b"12345")
    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    found = list_files(tmp_path)
    assert found.paths.to_pylist() == ["a.png", "sub/b.jpg"]
    assert found.size.tolist() == [1, 5]
    assert found.mtime_ns.tolist() == [(tmp_path / "a.png").stat().st_mtime_ns,
                                       (tmp_path / "sub" / "b.jpg").stat().st_mtime_ns]
    assert [skip.path for skip in found.unreadable] == ["gone.jpg"]
    assert sum(found.ignored.values()) == 1
