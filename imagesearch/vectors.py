"""Where the vectors of a collection live, and reading them in bounded chunks.

A collection's vectors are rarely all in one place: after an incremental run,
most sit in shards saved earlier, the new ones in the run's journal on disk
(or in memory, when nothing is journaled). A `VectorStore` records, for each
row, its source and its row there, and reads rows on demand. Indexing and
saving go through `chunks` and `take`, so neither needs every vector in
memory at once: a million 2048-d vectors are 8 GB on disk, and a few MB at a
time in RAM.

Shards are plain `.npy` files of float32 rows, written once and never
changed. They are read through a memory map that is released after each read,
so pages read for one chunk do not stay resident.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .storage import ArtifactError, DamagedStateError, embeddings_advice, one_line

#: Rows read or written per step: 8 MiB of 2048-d float32 vectors.
CHUNK_ROWS = 1024


@dataclass(frozen=True, eq=False)
class ArraySource:
    """Vectors held in memory."""

    array: np.ndarray

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]


@dataclass(frozen=True, eq=False)
class FileSource:
    """Vectors in a `.npy` file (a saved shard), or under `key` in a `.npz` file (a journaled batch)."""

    path: Path
    key: str | None = None

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.array(self._open()[rows])  # a copy: the memory map is released when this returns

    def _open(self) -> np.ndarray:
        try:
            if self.key is None:
                return np.load(self.path, mmap_mode="r")
            with np.load(self.path) as archive:
                return archive[self.key]
        except FileNotFoundError:
            if self.key is not None:  # a journal batch of a run that was not saved
                raise ArtifactError(
                    f"{self.path} is gone: another run saved into this folder and deleted the journal these "
                    "embeddings read from; extract again"
                ) from None
            raise ArtifactError(
                f"{self.path} is gone: the folder was saved over since these embeddings were loaded; "
                "load them again, or run the step again"
            ) from None
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:  # damaged since it was checked
            if self.key is not None:
                # Only a cache of an unsaved run, and one the next run would take again: deleted, so that it does not.
                self.path.unlink(missing_ok=True)
                raise ArtifactError(
                    f"{self.path}, a journaled batch of an unsaved run, was damaged ({one_line(error)}) and is "
                    "deleted; extract again: its images are embedded again"
                ) from error
            raise DamagedStateError(
                f"{self.path} is damaged ({one_line(error)})", embeddings_advice(self.path.parent)
            ) from error


Source = ArraySource | FileSource


class VectorStore:
    """An (n, dim) float32 matrix whose rows live in several sources; row i is at `locations[i]`.

    `locations` holds (source number, row in that source) pairs. Sources no
    row refers to are dropped.
    """

    def __init__(self, sources: Sequence[Source], locations: np.ndarray, dim: int):
        locations = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
        used = np.flatnonzero(np.bincount(locations[:, 0], minlength=len(sources)))  # O(n), unlike np.unique
        renumber = np.full(len(sources), -1, dtype=np.int64)
        renumber[used] = np.arange(len(used))
        self.sources: list[Source] = [sources[number] for number in used]
        self.locations = np.column_stack([renumber[locations[:, 0]], locations[:, 1]]) if len(locations) else locations
        self.dim = dim

    @classmethod
    def from_array(cls, array: np.ndarray) -> VectorStore:
        """A store over an in-memory (n, dim) array, row for row."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"vectors must be an (n, dim) array, got shape {array.shape}")
        locations = np.column_stack([np.zeros(len(array), np.int64), np.arange(len(array))])
        return cls([ArraySource(array)], locations, array.shape[1])

    @classmethod
    def gather(cls, places: Sequence[tuple[Source, int]], dim: int) -> VectorStore:
        """A store whose row i is row `places[i][1]` of source `places[i][0]`."""
        sources: list[Source] = []
        number_of: dict[int, int] = {}
        numbers = []
        for source, _ in places:
            if (number := number_of.get(id(source))) is None:
                number = number_of[id(source)] = len(sources)
                sources.append(source)
            numbers.append(number)
        return cls(sources, np.column_stack([numbers, [row for _, row in places]]), dim)

    @classmethod
    def concat(cls, stores: Sequence[VectorStore], dim: int) -> VectorStore:
        """One store of the rows of `stores`, one after the other (nothing is read)."""
        sources: list[Source] = []
        locations = []
        for store in stores:
            locations.append(store.locations + np.array([len(sources), 0]))
            sources.extend(store.sources)
        return cls(sources, np.concatenate(locations) if locations else np.zeros((0, 2), np.int64), dim)

    def __len__(self) -> int:
        return len(self.locations)

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The vectors of `rows`, in that order, as a new (len(rows), dim) array."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        where = self.locations[rows]
        for number in np.unique(where[:, 0]):
            mine = np.flatnonzero(where[:, 0] == number)
            order = np.argsort(where[mine, 1], kind="stable")  # read each source front to back
            out[mine[order]] = self.sources[number].read(where[mine[order], 1])
        return out

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, vectors) for consecutive blocks of up to `rows` (default CHUNK_ROWS) rows, in order."""
        rows = rows or CHUNK_ROWS
        for start in range(0, len(self), rows):
            yield start, self.take(np.arange(start, min(start + rows, len(self))))

    def to_array(self) -> np.ndarray:
        """Every vector, in order, in one array in memory."""
        return self.take(np.arange(len(self)))

    def subset(self, rows: Sequence[int] | np.ndarray) -> VectorStore:
        """A store of only `rows`, in that order, over the same sources (nothing is read)."""
        return VectorStore(self.sources, self.locations[np.asarray(rows, dtype=np.int64)], self.dim)

    def reader(self) -> RowReader:
        """A reader of a few rows at a time, for searches that re-rank candidates by their exact vectors."""
        return RowReader(self)


class RowReader:
    """Reads scattered rows of a store quickly: one `pread` per row from shard files kept open.

    `VectorStore.take` opens each source for every call, which is right for
    chunks of a thousand rows and far too slow for a query's hundred
    candidates spread over a hundred shards. Reads go through the page cache,
    not a memory map, so rows read stay out of this process's resident memory:
    it holds only the index's codes, however many queries re-rank. Safe to use
    from several threads at once (`pread` has no file position to share).
    """

    def __init__(self, store: VectorStore):
        self.store = store
        self._files: dict[int, tuple[int, int]] = {}  # source number -> (file descriptor, offset of row 0)
        self._row_bytes = store.dim * 4

    #: Above this many rows, a request is read source by source (`VectorStore.take`): fewer calls per row.
    MANY_ROWS = 256

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of `rows` (any order, repeats allowed), as a new (len(rows), dim) float32 array."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > self.MANY_ROWS:  # a batch of queries' candidates, as tuning reads them
            return self.store.take(rows)
        out = np.empty((len(rows), self.store.dim), dtype=np.float32)
        view = memoryview(out).cast("B")
        for i, (number, row) in enumerate(self.store.locations[rows].tolist()):
            source = self.store.sources[number]
            if not (isinstance(source, FileSource) and source.key is None):  # in memory, or a journal's archive
                out[i] = source.read(np.array([row]))[0]
                continue
            descriptor, start = self._open(number, source)
            size = self._row_bytes
            if os.preadv(descriptor, [view[i * size : (i + 1) * size]], start + row * size) != size:
                raise DamagedStateError(
                    f"{source.path} is damaged (truncated: row {row} is not all there)",
                    embeddings_advice(source.path.parent),
                )
        return out

    def close(self) -> None:
        for descriptor, _ in self._files.values():
            os.close(descriptor)
        self._files.clear()

    def __del__(self) -> None:
        self.close()

    def _open(self, number: int, source: FileSource) -> tuple[int, int]:
        if (opened := self._files.get(number)) is None:
            shape, dtype = shard_shape(source.path)
            if dtype != np.float32 or shape[1:] != (self.store.dim,):
                raise DamagedStateError(
                    f"{source.path} is damaged (it holds {shape} {dtype}, not {self.store.dim}-d float32 rows)",
                    embeddings_advice(source.path.parent),
                )
            descriptor = os.open(source.path, os.O_RDONLY)
            size = os.fstat(descriptor).st_size
            opened = self._files[number] = (descriptor, size - shape[0] * self._row_bytes)
        return opened


def write_shard(path: str | os.PathLike, store: VectorStore, rows: np.ndarray) -> None:
    """Write the vectors of `rows` of `store` to a `.npy` file, a chunk at a time."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": (len(rows), store.dim),
    }
    with open(path, "wb") as file:
        np.lib.format.write_array_header_2_0(file, header)
        for start in range(0, len(rows), CHUNK_ROWS):
            file.write(store.take(rows[start : start + CHUNK_ROWS]).tobytes())


def shard_damage(path: Path, expected: tuple[int, int] | None = None) -> str | None:
    """What is wrong with a saved shard that should hold `expected` (rows, dim) float32 vectors, or None if nothing.

    Only the `.npy` header is read, and the file's size checked against the
    data it declares. The answer follows the file's name: "is missing", "is
    damaged (truncated: …)".
    """
    return _inspect(path, expected)[0]


def shard_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a saved shard's header declares; raise `DamagedStateError` if its data is not all there."""
    problem, shape, dtype = _inspect(path)
    if problem is not None:
        raise DamagedStateError(f"{path} {problem}", embeddings_advice(path.parent))
    return shape, dtype


def _inspect(path: Path, expected: tuple[int, int] | None = None) -> tuple[str | None, tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(file)
            data_bytes = os.fstat(file.fileno()).st_size - file.tell()
    except FileNotFoundError:
        return "is missing", (), np.dtype(np.float32)
    except IsADirectoryError:
        return "is damaged (a folder, not a file)", (), np.dtype(np.float32)
    except (ValueError, TypeError, SyntaxError, EOFError, OSError) as error:
        return f"is damaged (not a readable .npy file: {one_line(error)})", (), np.dtype(np.float32)
    shape = tuple(shape)
    declared = int(np.prod(shape)) * dtype.itemsize
    if data_bytes != declared:
        how = "truncated" if data_bytes < declared else "longer than it should be"
        problem = f"is damaged ({how}: its header declares {shape} {dtype}, {declared} bytes, but it has {data_bytes})"
        return problem, shape, dtype
    if expected is not None and (shape != tuple(expected) or dtype != np.float32):
        problem = (
            f"is damaged (it holds {shape} {dtype}, but the manifest describes {tuple(expected)} float32: "
            "the files come from different saves, or it was changed)"
        )
        return problem, shape, dtype
    return None, shape, dtype
