"""The records of a collection, in columns: which image each vector is, without a Python object per image.

One row per image: its stable id, its path relative to the image root, the
size and modification time its file had when it was read, the SHA-256 of its
content, and the collection version that embedded its vector. The columns
are Arrow arrays (numbers in flat buffers, paths in one UTF-8 buffer with
offsets), so a million records take about 100 MB and load in well under a
second; look-ups by id and by path use sorted orders computed on first use.

`ImageRecord` is one row as a Python object: for building small collections
by hand, and for reading a few rows. Code that handles a whole collection
works on the columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: The columns, and their types, of records in memory and of a shard's items file.
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha256", pa.binary(32)),
        ("version", pa.int32()),  # the collection version whose save first held this vector
    ]
)


#: Up to this many paths are looked up one by one (a binary search each, ~40 µs at a million), more by a hash join.
FEW_PATHS = 2000


@dataclass(frozen=True)
class ImageRecord:
    """One embedded image: a stable id, its path relative to the image root, and its file when embedded.

    `sha256` is the content hash as 64 hex digits; `version` the collection
    version whose save first held this image's current vector (0: not saved yet,
    or saved by a format that did not record it).
    """

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    version: int = 0


def sha256_digests(hex_digests: Sequence[str]) -> list[bytes]:
    """SHA-256 digests written as 64 hex digits, as the 32 bytes the records keep; ValueError where one is not."""
    try:
        digests = [bytes.fromhex(digest) for digest in hex_digests]
    except ValueError:
        digests = []
    if len(digests) != len(hex_digests) or any(len(digest) != 32 for digest in digests):
        raise ValueError("an image's sha256 is not 64 hex digits")
    return digests


@dataclass(frozen=True)
class Skipped:
    """A file that was not embedded, and why."""

    path: str
    reason: str


class Records:
    """Image records in columns (see `SCHEMA`); row i describes vector i of the collection that holds them."""

    def __init__(self, table: pa.Table):
        if not table.schema.equals(SCHEMA):
            table = table.select(SCHEMA.names).cast(SCHEMA)
        self.table = table.combine_chunks()

    @classmethod
    def empty(cls) -> Records:
        return cls(SCHEMA.empty_table())

    @classmethod
    def from_items(cls, items: Iterable[ImageRecord]) -> Records:
        """Records from `ImageRecord`s; raise ValueError where a hash is not 64 hex digits."""
        items = list(items)
        digests = sha256_digests([item.sha256 for item in items])
        columns = {
            "id": [item.id for item in items],
            "path": [item.path for item in items],
            "size": [item.size for item in items],
            "mtime_ns": [item.mtime_ns for item in items],
            "sha256": digests,
            "version": [item.version for item in items],
        }
        return cls(pa.table(columns, schema=SCHEMA))

    @classmethod
    def concat(cls, parts: Sequence[Records]) -> Records:
        return cls(pa.concat_tables([part.table for part in parts])) if parts else cls.empty()

    def __len__(self) -> int:
        return self.table.num_rows

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Records) and self.table.equals(other.table)

    def __repr__(self) -> str:
        return f"Records({len(self)} images)"

    # --- columns ----------------------------------------------------------------------------------

    def column(self, name: str) -> np.ndarray:
        """A numeric column as a read-only NumPy array (no copy)."""
        if not len(self):
            return np.zeros(0, SCHEMA.field(name).type.to_pandas_dtype())
        return self.table.column(name).chunk(0).to_numpy()

    @property
    def ids(self) -> np.ndarray:
        return self.column("id")

    @property
    def versions(self) -> np.ndarray:
        return self.column("version")

    @property
    def path_array(self) -> pa.StringArray:
        return self.table.column("path").chunk(0) if len(self) else pa.array([], pa.string())

    @property
    def paths(self) -> list[str]:
        """Every path, in row order, as a list: convenient for small collections."""
        return self.path_array.to_pylist()

    def item(self, row: int) -> ImageRecord:
        values = {name: self.table.column(name)[row].as_py() for name in SCHEMA.names}
        return ImageRecord(**{**values, "sha256": values["sha256"].hex()})

    def to_items(self) -> list[ImageRecord]:
        """Every row as an `ImageRecord`: one Python object per image, so for small collections and tests."""
        columns = self.table.to_pydict()
        columns["sha256"] = [digest.hex() for digest in columns["sha256"]]
        return [ImageRecord(*row) for row in zip(*(columns[name] for name in SCHEMA.names))]

    # --- selecting ---------------------------------------------------------------------------------

    def take(self, rows: Sequence[int] | np.ndarray) -> Records:
        return Records(self.table.take(pa.array(np.asarray(rows, dtype=np.int64))))

    def with_columns(self, rows: np.ndarray, **columns) -> Records:
        """The records of `rows`, with the given columns replaced by the given values (one per row)."""
        table = self.table.take(pa.array(np.asarray(rows, dtype=np.int64)))
        for name, values in columns.items():
            index = SCHEMA.get_field_index(name)
            table = table.set_column(index, SCHEMA.field(name), pa.array(values, SCHEMA.field(name).type))
        return Records(table)

    def path_order(self) -> np.ndarray:
        """The rows in path order."""
        return np.arange(len(self)) if self._path_order is None else self._path_order

    def is_sorted_by_path(self) -> bool:
        """Whether the paths are in strictly increasing order (so, also, each is there once)."""
        return self._sorted_by_path

    def has_unique_ids(self) -> bool:
        ids = self.ids
        return len(ids) < 2 or bool((np.diff(ids[self._id_order]) != 0).all())

    @cached_property
    def _sorted_by_path(self) -> bool:  # records are immutable: checked once, however often they are passed on
        paths = self.path_array
        return len(paths) < 2 or bool(pc.all(pc.less(paths.slice(0, len(paths) - 1), paths.slice(1))).as_py())

    # --- look-ups ----------------------------------------------------------------------------------

    @cached_property
    def _path_order(self) -> np.ndarray | None:
        """The rows in path order; None where that is row order (a collection's records always are)."""
        return None if self.is_sorted_by_path() else pc.sort_indices(self.path_array).to_numpy()

    @cached_property
    def _id_order(self) -> np.ndarray:
        return np.argsort(self.ids, kind="stable")  # a sort, not a hash: ids mostly come in runs already sorted

    def rows_of_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The row of each id, -1 where there is none. Sorted once (8 bytes per image), then binary search."""
        ids = np.asarray(ids, dtype=np.int64)
        order, held = self._id_order, self.ids
        if not len(held):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(held, ids, sorter=order), len(held) - 1)
        rows = order[at]
        return np.where(held[rows] == ids, rows, -1).astype(np.int64)

    def row_of_path(self, path: str) -> int:
        """The row of `path`, or -1: a binary search, about 20 comparisons for a million paths."""
        paths, order = self.path_array, self._path_order
        row_at = (lambda position: position) if order is None else (lambda position: int(order[position]))
        low, high = 0, len(paths)
        while low < high:
            middle = (low + high) // 2
            if paths[row_at(middle)].as_py() < path:
                low = middle + 1
            else:
                high = middle
        if low < len(paths) and paths[row_at(low)].as_py() == path:
            return row_at(low)
        return -1

    def rows_of_paths(self, paths: Sequence[str] | pa.Array) -> np.ndarray:
        """The row of each path, -1 where there is none.

        A few paths are searched for one by one; many, with one hash join over
        every path here (about 0.25 s for a million, whatever the number asked).
        """
        if len(paths) <= FEW_PATHS:
            paths = paths.to_pylist() if isinstance(paths, pa.Array) else paths
            return np.array([self.row_of_path(path) for path in paths], dtype=np.int64)
        found = pc.index_in(pa.array(paths, pa.string()), value_set=self.path_array)
        return found.fill_null(-1).to_numpy().astype(np.int64)
