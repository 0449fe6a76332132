"""The FAISS index over the embeddings, which image each vector is, and search.

On disk (the folder notebook 02 writes and notebook 03 reads):

    index/
      index.json            the commit record: format version, FAISS factory string, metric, embedder,
                            image root, the index file, and the collection version it was built from
                            (its folder, relative to this one; its id, version and commit)
      index.<token>.faiss   the FAISS index; it stores each vector under its image's stable id

Which image an id is comes from the collection's records, read when the
index is loaded: the index copies none of them. An index is current when
the collection is still at the version it was built from; one that is not
is refused for searching and updated by the next `build_index(previous=)`.

The index is described by its FAISS factory string ("Flat" is exact L2
search; "IVF1024,PQ32" or "HNSW32" are approximate), so approximate indexes
plug into the same build, update, save, load and search calls. Vectors are
stored under stable image ids (`IndexIDMap2`, or the ids IVF indexes keep
natively), so an update removes and adds only what changed: the vectors of
images that are gone, and of records whose version is newer than the index.

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
import pyarrow as pa

from .collection import Embeddings, load_embeddings
from .embedders import EmbedderInfo
from .manifest import Commit
from .records import SCHEMA, Records
from .storage import (
    FORMAT_VERSION,
    ArtifactError,
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

    `records` are the collection's (sorted by path); `collection` is the saved
    version they are, or None where the index was built from embeddings that
    are not saved (it cannot be saved then: save the embeddings first).
    """

    index: faiss.Index
    records: Records
    embedder: EmbedderInfo
    factory: str
    image_root: str
    collection: CollectionVersion | None = None
    changes: IndexChanges = field(default_factory=IndexChanges)

    def __len__(self) -> int:
        return self.index.ntotal

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
        """Return the stored embedding of an indexed image."""
        return self.index.reconstruct(self.id_of(path))

    def vectors(self) -> np.ndarray:
        """Return every stored embedding, in `paths` order."""
        return self.index.reconstruct_batch(self.ids)

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
        rows = self.records.rows_of_ids(ids.ravel()).reshape(ids.shape)  # FAISS pads with id -1: row -1
        paths = self.records.path_array
        results = []
        for query_distances, query_rows in zip(distances, rows):
            found = [(distance, int(row)) for distance, row in zip(query_distances, query_rows) if row >= 0]
            results.append([Hit(rank, paths[row].as_py(), float(dist)) for rank, (dist, row) in enumerate(found)])
        return results


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

    With `previous` (the saved index of an earlier version of the same
    collection, same factory and embedder), update it in place: remove the
    vectors of images that are gone or whose record is newer than it, add
    those of images it lacks or holds an older vector of. Index types that
    cannot remove vectors (HNSW) are rebuilt instead. `previous` is consumed.
    """
    ids, versions = embeddings.ids, embeddings.records.versions
    built_from = CollectionVersion.of(embeddings.saved) if embeddings.is_saved else None
    kind = (embeddings.records, embeddings.embedder, factory, embeddings.image_root, built_from)
    base, held_version = embeddings.saved, previous.collection if previous else None
    if (
        previous is not None and previous.factory == factory and previous.embedder.compatible_with(embeddings.embedder)
        and base is not None and held_version is not None and held_version.collection == base.collection
        and held_version.version <= base.version
    ):
        held = held_ids(previous.index)
        newer, in_index = versions > held_version.version, np.isin(ids, held)
        stale = np.union1d(np.setdiff1d(held, ids), ids[newer & in_index])
        new_rows = np.flatnonzero(newer | ~in_index)
        try:
            if len(stale):
                previous.index.remove_ids(stale.astype(np.int64))
        except RuntimeError:  # this index type cannot remove vectors
            pass
        else:
            _add(previous.index, embeddings.store.subset(new_rows), ids[new_rows])
            changes = IndexChanges(added=len(new_rows), removed=len(stale), rebuilt=False)
            return SearchIndex(previous.index, *kind, changes)

    index = _new_index(embeddings.embedder.dim, factory)
    if not index.is_trained:
        index.train(_training_sample(embeddings.store))
    _add(index, embeddings.store, ids)
    changes = IndexChanges(added=len(ids), removed=len(previous) if previous else 0, rebuilt=True)
    return SearchIndex(index, *kind, changes)


def held_ids(index: faiss.Index) -> np.ndarray:
    """The ids of every vector `index` holds, sorted (read from FAISS' own id map or inverted lists)."""
    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 is one
        return np.sort(faiss.vector_to_array(index.id_map))
    ivf = _ivf_of(index)
    if ivf is None:
        raise ValueError(f"{type(index).__name__} does not store ids")
    lists = ivf.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)).copy()
             for number in range(ivf.nlist) if lists.list_size(number)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


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

    Its metadata points at the saved collection version it was built from, so
    an index can only be saved when built from saved embeddings (as
    `load_embeddings` or `save_embeddings` returns them). One process at a
    time saves into a folder; another raises `FolderBusyError`.
    """
    if search_index.collection is None:
        raise ArtifactError(
            "this index was built from embeddings that are not saved, and an index on disk points at the saved "
            "embeddings it indexes; save the embeddings first (save_embeddings returns them), then build and save "
            "the index from what it returns"
        )
    with exclusive(directory):
        return _save_index(search_index, Path(directory))


def _save_index(search_index: SearchIndex, directory: Path) -> list[Path]:
    index_name = fresh_name(INDEX_STEM, INDEX_SUFFIX)
    with atomic_path(directory / index_name) as temporary:
        faiss.write_index(search_index.index, str(temporary))
    metadata_path = directory / METADATA_FILE
    built_from = search_index.collection
    folder = os.path.relpath(built_from.directory.resolve(), directory.resolve())
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
            "collection": {
                "folder": Path(folder).as_posix(),
                "id": built_from.collection,
                "version": built_from.version,
                "commit": built_from.commit,
            },
        },
    )
    remove_stale(directory, INDEX_STEM, INDEX_SUFFIX, keep={index_name})
    return [metadata_path, directory / index_name]


def load_index(directory: str | os.PathLike) -> SearchIndex:
    """Read what `save_index` wrote, with the records of the collection version it was built from.

    Any damage (metadata missing, not JSON or not shaped as ours; an index file
    missing, unreadable, or holding other ids than the collection) raises
    `DamagedStateError`, one line that names the file and says the command
    that rebuilds the index from the embeddings. An index the collection has
    moved on from (embeddings saved since) raises `ArtifactError` saying to
    update it. Indexes of format 3 (records in `index.json`) are read as they are.
    """
    search_index = _load(Path(directory))
    if search_index.collection is None:
        return search_index  # format 3: its own records
    built_from = search_index.collection
    embeddings = load_embeddings(built_from.directory)
    if embeddings.saved.collection != built_from.collection:
        raise ArtifactError(
            f"{Path(directory) / METADATA_FILE} indexes other embeddings than those now in {built_from.directory} "
            f"(they were replaced since); {index_advice(directory, 'rebuild')}"
        )
    if embeddings.saved.token != built_from.commit:
        raise ArtifactError(
            f"{Path(directory) / METADATA_FILE} indexes version {built_from.version} of the embeddings in "
            f"{built_from.directory}, which are at version {embeddings.saved.version} now; "
            f"{index_advice(directory, 'update')}"
        )
    _check_ids(search_index, embeddings, Path(directory))
    search_index.records = embeddings.records
    return search_index


def _check_ids(search_index: SearchIndex, embeddings: Embeddings, directory: Path) -> None:
    """Raise `DamagedStateError` unless the index holds the ids of `embeddings`, the version it names."""
    if not np.array_equal(held_ids(search_index.index), np.sort(embeddings.ids)):
        raise DamagedStateError(
            f"{directory / METADATA_FILE} is damaged (its index holds {len(search_index)} vectors, but not under the "
            f"ids of the {len(embeddings)} images of the version it names: the files come from different saves, or "
            "one was changed)",
            index_advice(directory),
        )


def load_previous_index(directory: str | os.PathLike, embeddings: Embeddings | None = None) -> SearchIndex | None:
    """The index saved in `directory`, for `build_index(previous=)` to update; None where there is none to update
    (a first run) or it is damaged.

    The index may be of an older version of the collection (that is what an
    update is for), so its `records` are not read (they are empty). A damaged
    index is rebuilt from the embeddings by the update it was loaded for
    (`build_index` without `previous`): a `DamagedStateWarning` says what was
    damaged. With `embeddings` (those the index is to be updated to), an index
    that names their very version but holds other ids is found damaged too.
    Only an index of a newer format is refused (`ArtifactError`).
    """
    if not (Path(directory) / METADATA_FILE).exists():
        return None
    try:
        previous = _load(Path(directory))
        built_from = previous.collection
        same_version = built_from is not None and embeddings is not None and embeddings.is_saved
        if same_version and built_from.commit == embeddings.saved.token:
            _check_ids(previous, embeddings, Path(directory))
        return previous
    except DamagedStateError as error:
        warnings.warn(DamagedStateWarning(f"{error.damage}; the index is rebuilt from the embeddings"), stacklevel=2)
        return None


def _load(directory: Path) -> SearchIndex:
    """The index and what its metadata says; records only where the metadata holds them (format 3)."""
    path = directory / METADATA_FILE
    metadata = read_json(path, kind="index")
    advice = index_advice(directory)
    try:
        factory, index_name, embedder, image_root, records, built_from, count = _parse_metadata(directory, metadata)
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
    if index.ntotal != count or index.d != embedder.dim:
        raise DamagedStateError(
            f"{index_path} is damaged (it holds {index.ntotal} vectors, {index.d}-d, but {METADATA_FILE} lists "
            f"{count} images, {embedder.dim}-d: the two come from different saves, or one was changed)",
            advice,
        )
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return SearchIndex(index, records, embedder, factory, image_root, built_from)


def _parse_metadata(
    directory: Path, metadata: dict
) -> tuple[str, str, EmbedderInfo, str, Records, CollectionVersion | None, int]:
    """The factory, index file name, embedder, image root, records (format 3) or collection version (4), and
    count of an index's metadata; a KeyError, TypeError or ValueError (whose text says what) where it is not
    shaped as ours."""
    factory, index_name, image_root = metadata["factory"], metadata["index_file"], metadata["image_root"]
    if not (isinstance(factory, str) and isinstance(image_root, str)):
        raise ValueError("its factory or image_root is not a string")
    if not is_file_name(index_name):
        raise ValueError(f"its index_file {one_line(repr(index_name))[:80]} is not a file name")
    embedder = EmbedderInfo.from_dict(metadata["embedder"])
    count = metadata["count"]
    if type(count) is not int or count < 0:
        raise ValueError(f"its count {one_line(repr(count))[:40]} is not a count")
    if metadata["format_version"] >= 4:
        built = metadata["collection"]
        folder, collection, version, commit = built["folder"], built["id"], built["version"], built["commit"]
        if not (isinstance(folder, str) and isinstance(collection, str) and type(version) is int
                and isinstance(commit, str)):
            raise ValueError(f"its collection {one_line(repr(built))[:120]} is not what a save writes")
        built_from = CollectionVersion((directory / folder).resolve(), collection, version, commit)
        return factory, index_name, embedder, image_root, Records.empty(), built_from, count
    items = metadata["items"]
    for item in items:
        if not (
            type(item) is list and len(item) == 3 and type(item[0]) is int and type(item[1]) is str
            and type(item[2]) is str
        ):
            raise ValueError(f"an image entry {one_line(repr(item))[:80]} is not [id, path, sha256]")
    if count != len(items):
        raise ValueError(f"its count {count} is not the {len(items)} images it lists")
    ids, paths = ([item[0] for item in items], [item[1] for item in items])
    if len(set(ids)) != len(ids) or len(set(paths)) != len(paths):
        raise ValueError("it lists an image id or a path twice")
    zeros = [0] * len(items)
    table = pa.table({"id": ids, "path": paths, "size": zeros, "mtime_ns": zeros, "sha256": [bytes(32)] * len(items),
                      "version": zeros}, schema=SCHEMA)
    records = Records(table)
    return factory, index_name, embedder, image_root, records.take(records.path_order()), None, count


def _faiss_reason(error: RuntimeError) -> str:
    """What FAISS said, without the C++ function and source line it said it from."""
    reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", one_line(error))
    return "truncated: it ends before the index does" if "read error" in reason else reason
