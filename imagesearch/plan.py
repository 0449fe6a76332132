"""The plan of an extraction: what a folder holds now, against what is saved, decided without a model.

`list_files` scans the folder (names, sizes and modification times: no file
is opened). `make_plan` is a pure function of that listing and the saved
collection: a file whose path, size and time are unchanged keeps its record
and vector and is never read; every other file is to be read, with the id it
will have decided up front (its old one where its path is known, a new one
where not); records whose path is gone are the vanished ones, which a
renamed or moved file may claim by its content once it is read. An id an
image had is never given again; a planned id no file took (it was renamed,
or unreadable) is planned again next time.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .collection import Embeddings
from .images import scan_folder, unreadable_reason
from .records import Skipped


@dataclass(frozen=True)
class Listing:
    """The image files under a folder as they are now, in path order, with their sizes and times."""

    root: Path
    paths: pa.StringArray
    size: np.ndarray  # int64
    mtime_ns: np.ndarray  # int64
    unreadable: tuple[Skipped, ...] = ()  # listed, but with no size or time to read (a dangling link)
    ignored: Counter = field(default_factory=Counter)  # (why, ending) -> files, as `images.FolderScan.ignored`

    def __len__(self) -> int:
        return len(self.paths)


def list_files(root: str | os.PathLike) -> Listing:
    """Scan `root` for image files (see `images.scan_folder`) and read each one's size and modification time."""
    root = Path(root)
    scan = scan_folder(root)
    paths, sizes, times, unreadable = [], [], [], []
    base = f"{root}{os.sep}"
    for path in scan.images:
        try:
            stat = os.stat(base + path)
        except OSError as error:  # a dangling symlink, a file that vanished
            unreadable.append(Skipped(path, unreadable_reason(root / path, error)))
            continue
        paths.append(path)
        sizes.append(stat.st_size)
        times.append(stat.st_mtime_ns)
    return Listing(root, pa.array(paths, pa.string()), np.array(sizes, np.int64), np.array(times, np.int64),
                   tuple(unreadable), scan.ignored)


@dataclass(frozen=True)
class Plan:
    """What an extraction has to do, decided from paths, sizes and times alone.

    `read` lists the files to read, in path order, with columns: path, size,
    mtime_ns, id (planned), previous (the row of its path in the saved
    records, or -1) and lost (the row of its path among the saved images
    whose vectors were lost, or -1).
    """

    listing: Listing
    previous: Embeddings | None  # the saved embeddings it was made against (None: a first run)
    keep: np.ndarray  # rows of the saved records whose file is unchanged: kept as they are, never read
    read: pa.Table
    vanished: np.ndarray  # rows of the saved records whose path is not in the folder any more
    vanished_lost: np.ndarray  # the same, of the saved images whose vectors were lost
    next_id: int  # the first id after those planned

    def summary(self) -> str:
        return (f"{len(self.keep)} unchanged, {len(self.read)} to read, "
                f"{len(self.vanished) + len(self.vanished_lost)} gone")


def make_plan(listing: Listing, previous: Embeddings | None = None) -> Plan:
    """Plan the extraction of `listing` on top of `previous` (the saved embeddings, or None for a first run)."""
    count = len(listing)
    if previous is None:
        nothing = np.full(count, -1, np.int64)
        return _plan(listing, None, np.zeros(0, np.int64), np.ones(count, bool), nothing, nothing,
                     np.arange(count, dtype=np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), count)
    records, lost = previous.records, previous.lost
    at = records.rows_of_paths(listing.paths) if len(records) else np.full(count, -1, np.int64)
    lost_at = lost.rows_of_paths(listing.paths) if len(lost) else np.full(count, -1, np.int64)
    known = at >= 0
    unchanged = np.zeros(count, bool)
    unchanged[known] = (records.column("size")[at[known]] == listing.size[known]) & (
        records.column("mtime_ns")[at[known]] == listing.mtime_ns[known]
    )
    ids = np.full(count, -1, np.int64)
    ids[known] = records.ids[at[known]]
    ids[lost_at >= 0] = lost.ids[lost_at[lost_at >= 0]]
    new = ids < 0
    ids[new] = previous.next_id + np.arange(int(new.sum()))
    vanished = np.setdiff1d(np.arange(len(records)), at[known], assume_unique=True)
    vanished_lost = np.setdiff1d(np.arange(len(lost)), lost_at[lost_at >= 0], assume_unique=True)
    return _plan(listing, previous, at[unchanged], ~unchanged, at, lost_at, ids, vanished, vanished_lost,
                 previous.next_id + int(new.sum()))


def _plan(
    listing: Listing, previous: Embeddings | None, keep: np.ndarray, to_read: np.ndarray, at: np.ndarray,
    lost_at: np.ndarray, ids: np.ndarray, vanished: np.ndarray, vanished_lost: np.ndarray, next_id: int,
) -> Plan:
    """The plan whose files to read are those `to_read` marks, with their ids and rows (per file of `listing`)."""
    rows = np.flatnonzero(to_read)
    read = pa.table({
        "path": listing.paths.take(pa.array(rows)),
        "size": listing.size[rows],
        "mtime_ns": listing.mtime_ns[rows],
        "id": ids[rows],
        "previous": at[rows],
        "lost": lost_at[rows],
    })
    return Plan(listing, previous, keep, read, vanished, vanished_lost, next_id)
