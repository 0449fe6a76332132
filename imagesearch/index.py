"""The FAISS index over the embeddings, which image each vector is, and search.

On disk (the folder notebook 02 writes and notebook 03 reads):

    index/
      index.json            the commit record: format version, FAISS factory string, metric, embedder,
                            image root, and per image its id, path and content hash; names the index file
      index.<token>.faiss   the FAISS index; it stores each vector under its image's stable id

The index is described by its FAISS factory string ("Flat" is exact L2
search; "IVF1024,PQ32" or "HNSW32" are approximate), so approximate indexes
plug into the same build, update, save, load and search calls. Vectors are
stored under stable image ids (`IndexIDMap2`, or the ids IVF indexes keep
natively), so an update removes and adds only what changed.

The index is derived from the embeddings alone, so a damaged one is never
worth a refusal where it can be rebuilt: `load_previous_index` warns and
returns None, and the update rebuilds it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .embedders import EmbedderInfo
from .extract import Embeddings
from .storage import (
    FORMAT_VERSION,
    DamagedStateError,
    DamagedStateWarning,
    atomic_path,
    exclusive,
    fresh_name,
    index_advice,
    is_file_name,
    one_line,
    read_json,
    remove_stale,
    write_json,
)
from .vectors import VectorStore

METADATA_FILE = "index.json"
INDEX_STEM, INDEX_SUFFIX = "index", ".faiss"


@dataclass(frozen=True)
class Hit:
    """One search result. `distance` is FAISS' squared L2 distance (0 for an identical vector)."""

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


@dataclass
class SearchIndex:
    """A FAISS index whose vectors are stored under image ids, and the image of every id.

    `ids`, `paths` and `sha256` are parallel lists sorted by path; the content
    hash says which version of an image a vector belongs to.
    """

    index: faiss.Index
    ids: list[int]
    paths: list[str]
    sha256: list[str]
    embedder: EmbedderInfo
    factory: str
    image_root: str
    changes: IndexChanges = field(default_factory=IndexChanges)

    def __post_init__(self) -> None:
        self._id_of_path = dict(zip(self.paths, self.ids))
        self._path_of_id = dict(zip(self.ids, self.paths))

    def __len__(self) -> int:
        return self.index.ntotal

    def id_of(self, path: str) -> int:
        """Return the id of an indexed image, by its path relative to the image root."""
        try:
            return self._id_of_path[path]
        except KeyError:
            raise KeyError(f"{path!r} is not in the index; pick one of its {len(self.paths)} paths") from None

    def path_of(self, image_id: int) -> str:
        return self._path_of_id[image_id]

    def vector(self, path: str) -> np.ndarray:
        """Return the stored embedding of an indexed image."""
        return self.index.reconstruct(self.id_of(path))

    def vectors(self) -> np.ndarray:
        """Return every stored embedding, in `paths` order."""
        return self.index.reconstruct_batch(np.array(self.ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Return, for each query vector, its `k` nearest indexed images, nearest first."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.index.d:
            raise ValueError(
                f"query vectors are {queries.shape[1]}-d but the index holds {self.index.d}-d "
                f"vectors from {self.embedder}; embed queries with the same embedder"
            )
        with _faiss_threads(1 if len(queries) == 1 else None):
            distances, ids = self.index.search(queries, min(k, len(self)))
        return [self._hits(row_distances, row_ids) for row_distances, row_ids in zip(distances, ids)]

    def _hits(self, distances: np.ndarray, ids: np.ndarray) -> list[Hit]:
        found = [(distance, i) for distance, i in zip(distances, ids) if i >= 0]  # FAISS pads with id -1
        return [Hit(rank, self._path_of_id[i], float(distance)) for rank, (distance, i) in enumerate(found)]


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


def build_index(embeddings: Embeddings, factory: str = "Flat", previous: SearchIndex | None = None) -> SearchIndex:
    """Index `embeddings` with a FAISS index made from a factory string ("Flat" is exact L2 search).

    With `previous` (the saved index of an earlier run, same factory and
    embedder), update it in place: remove the vectors of images that are gone
    or changed, add those of new or changed images. Index types that cannot
    remove vectors (HNSW) are rebuilt instead. `previous` is consumed.
    """
    ids = embeddings.ids
    items = (ids.tolist(), embeddings.paths, [item.sha256 for item in embeddings.items])
    same_kind = (
        previous is not None and previous.factory == factory and previous.embedder.compatible_with(embeddings.embedder)
    )
    if same_kind:
        wanted = dict(zip(items[0], items[2]))
        held = dict(zip(previous.ids, previous.sha256))
        stale = [i for i, digest in held.items() if wanted.get(i) != digest]
        new_rows = [row for row, (i, digest) in enumerate(zip(items[0], items[2])) if held.get(i) != digest]
        try:
            if stale:
                previous.index.remove_ids(np.array(stale, dtype=np.int64))
        except RuntimeError:  # this index type cannot remove vectors
            pass
        else:
            _add(previous.index, embeddings.store.subset(new_rows), ids[new_rows])
            changes = IndexChanges(added=len(new_rows), removed=len(stale), rebuilt=False)
            return SearchIndex(previous.index, *items, embeddings.embedder, factory, embeddings.image_root, changes)

    index = _new_index(embeddings.embedder.dim, factory)
    if not index.is_trained:
        index.train(_training_sample(embeddings.store))
    _add(index, embeddings.store, ids)
    changes = IndexChanges(added=len(ids), removed=len(previous) if previous else 0, rebuilt=True)
    return SearchIndex(index, *items, embeddings.embedder, factory, embeddings.image_root, changes)


#: Index types that learn from the data (IVF's centroids, PQ's codebooks) train on at most this many vectors,
#: a seeded random sample, in bounded memory. FAISS asks for at least 39 per centroid: enough for about 2,500
#: IVF lists; choosing larger indexes for millions is the approximate-index work's business.
MAX_TRAINING_VECTORS = 100_000


def _training_sample(store: VectorStore) -> np.ndarray:
    """Every vector of `store` if there are few, else a seeded random sample of MAX_TRAINING_VECTORS of them."""
    if len(store) <= MAX_TRAINING_VECTORS:
        return store.to_array()
    rows = np.random.default_rng(0).choice(len(store), MAX_TRAINING_VECTORS, replace=False)
    return store.take(np.sort(rows))


def _add(index: faiss.Index, store: VectorStore, ids: np.ndarray) -> None:
    """Add the vectors of `store` under `ids` a chunk at a time: they are never in memory twice over."""
    for start, vectors in store.chunks():
        index.add_with_ids(vectors, ids[start : start + len(vectors)])


def _new_index(dim: int, factory: str) -> faiss.Index:
    """An empty index from `factory` that stores vectors under given ids and can return them by id."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    ivf = _ivf_of(index)
    if ivf is None:
        # IndexIDMap2 keeps id <-> row maps for index types that number rows themselves.
        return faiss.IndexIDMap2(index)
    # IVF indexes keep ids natively; a hash table lets them return a vector by id.
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def save_index(search_index: SearchIndex, directory: str | os.PathLike) -> list[Path]:
    """Save the index so that a crash at any point leaves the previous save whole (see `storage`).

    One process at a time saves into a folder; another raises `FolderBusyError`.
    """
    with exclusive(directory):
        return _save_index(search_index, Path(directory))


def _save_index(search_index: SearchIndex, directory: Path) -> list[Path]:
    index_name = fresh_name(INDEX_STEM, INDEX_SUFFIX)
    with atomic_path(directory / index_name) as temporary:
        faiss.write_index(search_index.index, str(temporary))
    metadata_path = directory / METADATA_FILE
    write_json(
        metadata_path,
        {
            "kind": "index",
            "format_version": FORMAT_VERSION,
            "factory": search_index.factory,
            "metric": "L2",
            "index_file": index_name,
            "count": len(search_index),
            "embedder": search_index.embedder.to_dict(),
            "image_root": search_index.image_root,
            "items": [list(item) for item in zip(search_index.ids, search_index.paths, search_index.sha256)],
        },
    )
    remove_stale(directory, INDEX_STEM, INDEX_SUFFIX, keep={index_name})
    return [metadata_path, directory / index_name]


def load_index(directory: str | os.PathLike) -> SearchIndex:
    """Read what `save_index` wrote, checking that the index and its metadata agree.

    Any damage (metadata missing, not JSON or not shaped as ours; an index file
    missing, unreadable, or holding other vectors than the metadata lists)
    raises `DamagedStateError`, one line that names the file and says the
    command that rebuilds the index from the embeddings.
    """
    directory = Path(directory)
    path = directory / METADATA_FILE
    metadata = read_json(path, kind="index")
    advice = index_advice(directory)
    try:
        factory, index_name, embedder, image_root, ids, paths, sha256 = _parse_metadata(metadata)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        detail = f"no {one_line(error.args[0])!r} entry" if isinstance(error, KeyError) else one_line(error)[:200]
        damage = f"{path} is damaged (not index metadata as this code writes it: {detail})"
        raise DamagedStateError(damage, advice) from error
    index_path = directory / index_name
    if not index_path.is_file():
        raise DamagedStateError(f"{index_path}, named by {METADATA_FILE}, is missing", advice)
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        damage = f"{index_path} is damaged (not a readable FAISS index: {_faiss_reason(error)})"
        raise DamagedStateError(damage, advice) from error
    if index.ntotal != len(ids) or index.d != embedder.dim:
        raise DamagedStateError(
            f"{index_path} is damaged (it holds {index.ntotal} vectors, {index.d}-d, but {METADATA_FILE} lists "
            f"{len(ids)} images, {embedder.dim}-d: the two come from different saves, or one was changed)",
            advice,
        )
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return SearchIndex(index, ids, paths, sha256, embedder, factory, image_root)


def load_previous_index(directory: str | os.PathLike) -> SearchIndex | None:
    """The index saved in `directory`, or None where nothing was saved yet (a first run) or it is damaged.

    A damaged index is rebuilt from the embeddings by the update it was loaded
    for (`build_index` without `previous`): a `DamagedStateWarning` says what was
    damaged. Only an index of a newer format is refused (`ArtifactError`).
    """
    if not (Path(directory) / METADATA_FILE).exists():
        return None
    try:
        return load_index(directory)
    except DamagedStateError as error:
        warnings.warn(DamagedStateWarning(f"{error.damage}; the index is rebuilt from the embeddings"), stacklevel=2)
        return None


def _parse_metadata(metadata: dict) -> tuple[str, str, EmbedderInfo, str, list[int], list[str], list[str]]:
    """The factory, index file name, embedder, image root, ids, paths and hashes of an index's metadata;
    a KeyError, TypeError or ValueError (whose text says what) where it is not shaped as ours."""
    factory, index_name, image_root = metadata["factory"], metadata["index_file"], metadata["image_root"]
    if not (isinstance(factory, str) and isinstance(image_root, str)):
        raise ValueError("its factory or image_root is not a string")
    if not is_file_name(index_name):
        raise ValueError(f"its index_file {one_line(repr(index_name))[:80]} is not a file name")
    embedder = EmbedderInfo.from_dict(metadata["embedder"])
    items = metadata["items"]
    for item in items:
        if not (
            type(item) is list and len(item) == 3 and type(item[0]) is int and type(item[1]) is str
            and type(item[2]) is str
        ):
            raise ValueError(f"an image entry {one_line(repr(item))[:80]} is not [id, path, sha256]")
    ids, paths, sha256 = (list(column) for column in zip(*items)) if items else ([], [], [])
    count = metadata["count"]
    if type(count) is not int or count != len(items):
        raise ValueError(f"its count {one_line(repr(count))[:40]} is not the {len(items)} images it lists")
    if len(set(ids)) != len(ids) or len(set(paths)) != len(paths):
        raise ValueError("it lists an image id or a path twice")
    return factory, index_name, embedder, image_root, ids, paths, sha256


def _faiss_reason(error: RuntimeError) -> str:
    """What FAISS said, without the C++ function and source line it said it from."""
    reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", one_line(error))
    return "truncated: it ends before the index does" if "read error" in reason else reason
