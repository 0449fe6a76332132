"""A FAISS index whose vectors are stored under image ids, the records that say which image each id is, and search.

`SearchIndex` is what `index.build_index` builds and `index_files.load_index`
opens: searching it returns image ids, or `Hit`s with paths and distances.
An approximate index is searched with its saved parameters unless a call
gives others; a compressed one re-ranks its candidates by their full vectors,
read from the collection's shards (`ann.search`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from . import ann, retrieval
from .ann import SearchParams
from .embedders import EmbedderInfo
from .manifest import Commit
from .records import Records
from .retrieval import PLAIN, Augmentation, Retrieval, Space, Whitening
from .tuning import Tuning
from .vectors import RowReader, VectorStore


@dataclass(frozen=True)
class Hit:
    """One search result. `distance` is smaller for nearer images: the squared L2 distance (0 for an identical
    vector), or for a cosine index 1 - cosine similarity (of the expanded query, where the index expands queries)."""

    rank: int
    path: str
    distance: float


@dataclass(frozen=True)
class IndexChanges:
    """What building or updating an index did."""

    added: int = 0
    removed: int = 0
    rebuilt: bool = True  # False: updated in place

    def summary(self) -> str:
        how = "built from scratch" if self.rebuilt else "updated in place"
        return f"{how}: {self.added} vectors added, {self.removed} removed"


@dataclass(frozen=True)
class CollectionVersion:
    """The saved version of a collection an index was built from."""

    directory: Path
    collection: str
    version: int
    commit: str

    @classmethod
    def of(cls, commit: Commit) -> CollectionVersion:
        return cls(commit.directory, commit.collection, commit.version, commit.token)


@dataclass
class SearchIndex:
    """A FAISS index whose vectors are stored under image ids, and the records that say which image each id is.

    `records` are the collection's (sorted by path) and `store` its vectors,
    row for row (None for an index of format 3, which holds its own);
    `collection` is the saved version they are, or None where the index was
    built from embeddings that are not saved (it cannot be saved then: save
    the embeddings first). `params` are the search parameters every search
    uses unless told otherwise; `tuning` says how they were chosen and what
    recall they reach. `retrieval` says how vectors are compared (see
    `imagesearch.retrieval`): with it come the `whitening` fitted on the
    collection and the `augmentation` table, where it asks for them.
    """

    index: faiss.Index
    records: Records
    embedder: EmbedderInfo
    factory: str
    image_root: str
    collection: CollectionVersion | None = None
    changes: IndexChanges = field(default_factory=IndexChanges)
    metric: str = "l2"
    params: SearchParams = field(default_factory=SearchParams)
    tuning: Tuning | None = None
    store: VectorStore | None = None
    read_only: bool = False  # memory-mapped: searched, never updated
    retrieval: Retrieval = PLAIN
    whitening: Whitening | None = None
    augmentation: Augmentation | None = None
    _reader: RowReader | None = field(default=None, repr=False)

    @property
    def space(self) -> Space:
        """The vectors this index compares: its metric, whitened where it was fitted with a whitening."""
        return Space.of(self.metric) if self.whitening is None else Space(self.metric, self.whitening)

    def __len__(self) -> int:
        return self.index.ntotal

    @functools.cached_property
    def structure(self) -> ann.Structure:
        """What the factory builds; read once (describing it builds an empty FAISS index: 0.5 to 1.7 ms, as much
        as a whole approximate search)."""
        return ann.describe(self.factory, self.index.d, self.space)

    @property
    def ids(self) -> np.ndarray:
        return self.records.ids

    @property
    def paths(self) -> list[str]:
        """Every indexed path, sorted: a list, for small collections (look-ups go through `id_of`)."""
        return self.records.paths

    def id_of(self, path: str) -> int:
        """Return the id of an indexed image, by its path relative to the image root."""
        row = self.records.row_of_path(path)
        if row < 0:
            raise KeyError(f"{path!r} is not in the index; pick one of its {len(self.records)} paths")
        return int(self.records.ids[row])

    def path_of(self, image_id: int) -> str:
        row = int(self.records.rows_of_ids([image_id])[0])
        if row < 0:
            raise KeyError(f"no image has id {image_id} in the index")
        return self.records.path_array[row].as_py()

    def vector(self, path: str) -> np.ndarray:
        """Return the stored embedding of an indexed image (as embedded, whatever the index keeps)."""
        return self.vectors_of(np.array([self.id_of(path)]))[0]

    def vectors(self) -> np.ndarray:
        """Return every stored embedding, in `paths` order."""
        return self.store.to_array() if self.store is not None else self.index.reconstruct_batch(self.ids)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The embeddings of images by id, read from the collection (a few rows: this is what re-ranking reads)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.store is None:
            return self.index.reconstruct_batch(ids)
        rows = self.records.rows_of_ids(ids)
        if np.any(rows < 0):
            raise KeyError(f"no image has id {int(ids[rows < 0][0])} in the index")
        if self._reader is None:
            self._reader = self.store.reader()
        return self._reader.take(rows)

    def stored_vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The vectors the index compares for images by id: prepared (unit length, whitened) and blended with their
        neighbours' where the index augments them; computed from the collection's, a few rows at a time."""
        space = self.space
        if self.augmentation is None:
            return space.prepare(self.vectors_of(ids))
        return self.augmentation.blend(ids, lambda wanted: space.prepare(self.vectors_of(wanted)))

    def search_ids(
        self, queries: np.ndarray, k: int, params: str | SearchParams | None = None, *,
        exclude: np.ndarray | None = None, expand: bool = True, prepared: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of each query's `k` nearest images, nearest first; id -1 where there are fewer.

        `params` ("nprobe=64,k_factor=16") override the saved ones for this call only. Where the index expands
        queries (`retrieval.qe`), each is searched twice: then the image `exclude` names for it (an indexed image
        searched for by its own vector) is not blended in, as an outside photo's twin would not be; `expand=False`
        searches once, with the queries as they are. With `prepared`, the queries are in the index's space already
        (as `stored_vectors_of` returns them).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.index.d:
            raise ValueError(
                f"query vectors are {queries.shape[1]}-d but the index holds {self.index.d}-d "
                f"vectors from {self.embedder}; embed queries with the same embedder"
            )
        structure, space = self.structure, self.space
        settings = self.params.merged(params).check(structure)
        blended = self.augmentation is not None
        exact = None if self.store is None else self.stored_vectors_of if blended else self.vectors_of
        prepared = queries if prepared else space.prepare(queries)
        expanding = expand and self.retrieval.qe > 0

        def search(vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
            return ann.search(self.index, vectors, min(count, len(self)), space, settings, exact,
                              structure.compressed, stored=blended, is_prepared=True)

        with _faiss_threads(1 if len(queries) == 1 else None):
            if not (expanding or blended):
                return search(prepared, k)
            # Deeper than the answers need: copies of the query are looked for among these (`_copies_first`)
            first_distances, first = search(prepared, max(k, self.retrieval.qe + 1) + COPY_CANDIDATES)
            if not expanding:
                return self._copies_first(prepared, first_distances[:, :k], first[:, :k], first)
            wanted = self.retrieval.qe + (exclude is not None)
            distances, found = first_distances[:, :wanted], first[:, :wanted]
            if exclude is not None:
                own = found == np.asarray(exclude, dtype=np.int64)[:, None]
                order = np.argsort(own, axis=1, kind="stable")  # the query's own image to the end
                found = np.where(np.take_along_axis(own, order, axis=1), -1, np.take_along_axis(found, order, axis=1))
                distances = np.take_along_axis(distances, order, axis=1)
            expanded = retrieval.expand(prepared, found, 1 - distances, self.stored_vectors_of, self.retrieval.qe,
                                        self.retrieval.qe_alpha)
            distances, found = search(expanded, k)
            return self._copies_first(prepared, distances, found, first)

    def _copies_first(self, prepared: np.ndarray, distances: np.ndarray, found: np.ndarray, first: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The answers with exact copies of each query first, at their own distance (about 0).

        Blending (DBA) and expansion (QE) rank images by their neighbourhoods,
        so an indexed copy of the query, whose stored vector is blended, need
        not come out first any more. A reverse image search owes its user that
        much: images whose own vector is the query's (`COPY_DISTANCE`) are put
        first, from among the answers and the first search's (`first`).
        """
        candidates = np.concatenate([found, first], axis=1)
        present = np.unique(candidates[candidates >= 0])
        if self.store is None or not len(present):
            return distances, found
        own = self.space.prepare(self.vectors_of(present)).astype(np.float64)
        rows, columns = np.nonzero(candidates >= 0)
        gaps = 1 - np.einsum("ij,ij->i", own[np.searchsorted(present, candidates[rows, columns])],
                             prepared[rows].astype(np.float64))
        copy = np.zeros(candidates.shape, bool)
        copy[rows, columns] = gaps <= COPY_DISTANCE
        if not copy.any():
            return distances, found
        k = found.shape[1]
        distances, found = distances.copy(), found.copy()
        for row in np.flatnonzero(copy.any(axis=1)):  # only queries that have a copy: few, or one
            mine = rows == row
            own_gaps = dict(zip(candidates[row, columns[mine]].tolist(), gaps[mine].tolist()))
            copies = sorted({image for image in candidates[row][copy[row]].tolist()}, key=own_gaps.__getitem__)
            rest = [(distance, image) for distance, image in zip(distances[row], found[row]) if image not in copies]
            merged = [(max(float(own_gaps[image]), 0.0), image) for image in copies] + rest
            merged = (merged + [(np.inf, -1)] * k)[:k]
            distances[row], found[row] = [distance for distance, _ in merged], [image for _, image in merged]
        return distances, found

    def search(self, queries: np.ndarray, k: int, params: str | SearchParams | None = None) -> list[list[Hit]]:
        """Return, for each query vector, its `k` nearest indexed images, nearest first."""
        distances, ids = self.search_ids(queries, k, params)
        rows = self.records.rows_of_ids(ids.ravel()).reshape(ids.shape)  # FAISS pads with id -1: row -1
        paths = self.records.path_array
        results = []
        for query_distances, query_rows in zip(distances, rows):
            found = [(distance, int(row)) for distance, row in zip(query_distances, query_rows) if row >= 0]
            results.append([Hit(rank, paths[row].as_py(), float(dist)) for rank, (dist, row) in enumerate(found)])
        return results

#: An indexed image whose own vector is within this cosine distance of the query's is a copy of it, put first by
#: `SearchIndex._copies_first`: float32 rounding of one vector against itself is about 1e-7.
COPY_DISTANCE = 1e-6
#: How many more candidates than it answers a blended or expanded search reads, to find copies of the query among:
#: blended, the copy's stored vector is its blend with its neighbours, and ranks among them.
COPY_CANDIDATES = 16


@contextmanager
def _faiss_threads(count: int | None) -> Iterator[None]:
    """Run FAISS on `count` OpenMP threads inside the block (None: leave the setting alone).

    One query is searched on one thread: a single exact search streams the
    whole index through memory once, and splitting it between threads made it
    about twice as slow here (26 against 56 ms at 100,000 vectors, measured
    by `benchmarks/query_latency.py`). Batches keep one thread per core. The
    setting is OpenMP's per-thread one, so concurrent searches from other
    threads (a web service's workers, say) are not affected, and it is
    restored on the way out.
    """
    if count is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def held_ids(index: faiss.Index) -> np.ndarray:
    """The ids of every vector `index` holds, sorted (read from FAISS' own id map or inverted lists)."""
    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 is one
        return np.sort(faiss.vector_to_array(index.id_map))
    ivf = ann.ivf_of(index)
    if ivf is None:
        raise ValueError(f"{type(index).__name__} does not store ids")
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)).copy()
             for number in range(ivf.nlist) if lists.list_size(number)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
