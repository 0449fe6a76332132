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

The index is described by its FAISS factory string ("Flat" is exact search;
"HNSW32" or "PCAR256,IVF4096,PQ64" are approximate; "auto" lets `tuning.choose`
pick from the collection's size and a memory budget), its metric (L2 or
cosine) and its search parameters, tuned to a target recall and saved with it
(`ann` and `tuning` hold the FAISS side). Vectors are stored under stable
image ids (`IndexIDMap2`, or the ids IVF indexes keep natively), so an update
removes and adds only what changed: the vectors of images that are gone, and
of records whose version is newer than the index. A compressed index keeps
only codes in memory: its candidates are re-ranked by their full vectors, read
from the collection's shards per query.

An index opened for searching (`load_index`) is memory-mapped where FAISS can
map it, and is read-only; one opened to be updated (`load_previous_index`) is
read into memory.

The index is derived from the embeddings alone, so a damaged one is never
worth a refusal where it can be rebuilt: `load_previous_index` warns and
returns None, and the update rebuilds it.
"""

from __future__ import annotations

import dataclasses
import functools
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

from . import ann, tuning
from .ann import SearchParams
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
from .tuning import Tuning
from .vectors import RowReader, VectorStore

METADATA_FILE = "index.json"
INDEX_STEM, INDEX_SUFFIX = "index", ".faiss"


@dataclass(frozen=True)
class Hit:
    """One search result. `distance` is smaller for nearer images: the squared L2 distance (0 for an identical
    vector), or for a cosine index 1 - cosine similarity."""

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
    recall they reach.
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
    _reader: RowReader | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.index.ntotal

    @functools.cached_property
    def structure(self) -> ann.Structure:
        """What the factory builds; read once (describing it builds an empty FAISS index: 0.5 to 1.7 ms, as much
        as a whole approximate search)."""
        return ann.describe(self.factory, self.index.d, self.metric)

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

    def search_ids(
        self, queries: np.ndarray, k: int, params: str | SearchParams | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of each query's `k` nearest images, nearest first; id -1 where there are fewer.

        `params` ("nprobe=64,k_factor=16") override the saved ones for this call only.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.index.d:
            raise ValueError(
                f"query vectors are {queries.shape[1]}-d but the index holds {self.index.d}-d "
                f"vectors from {self.embedder}; embed queries with the same embedder"
            )
        structure = self.structure
        settings = self.params.merged(params).check(structure)
        exact = self.vectors_of if self.store is not None else None
        with _faiss_threads(1 if len(queries) == 1 else None):
            return ann.search(self.index, queries, min(k, len(self)), self.metric, settings, exact,
                              structure.compressed)

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


#: An index trained on a collection of N vectors is retrained when the collection reaches RETRAIN_GROWTH x N.
#: Measured by `benchmarks/ann_update.py` (IVF-PQ trained at 25,000 vectors, grown in place at fixed parameters):
#: recall@10 held above 0.95 through 8x, but the same nprobe scans lists that grow with the collection, so a query
#: took 1.43x a retrained index's time at 2x growth and 2.40x at 4x. Retraining at 2x keeps it within 1.5x.
RETRAIN_GROWTH = 2


def build_index(
    embeddings: Embeddings,
    factory: str = "auto",
    previous: SearchIndex | None = None,
    *,
    metric: str = "l2",
    params: str | SearchParams | None = None,
    target_recall: float = tuning.DEFAULT_TARGET_RECALL,
    memory_budget: int | str = tuning.DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> SearchIndex:
    """Index `embeddings` with a FAISS index made from a factory string, or "auto" (see `tuning.choose`).

    The factory is checked before any training (`IndexSpecError`, one line).
    Search parameters are tuned to reach `target_recall` (recall@10 against
    exact search, on held-out vectors of the collection) unless `params` are
    given; either way the recall is measured and kept in `tuning`.

    With `previous` (the saved index of an earlier version of the same
    collection, same factory, metric and embedder), update it in place: remove
    the vectors of images that are gone or whose record is newer than it, add
    those of images it lacks or holds an older vector of. An index that cannot
    remove vectors (HNSW), or whose collection has grown RETRAIN_GROWTH-fold
    since it was trained (or for which "auto" now chooses another factory), is
    rebuilt instead. `previous` is consumed.
    """
    ann.check_metric(metric)
    budget = tuning.parse_memory(memory_budget)
    count, dim = len(embeddings), embeddings.embedder.dim
    if factory == "auto":
        choice = tuning.choose(count, dim, budget)
    else:
        choice = tuning.Choice(factory, ("the factory given",))
    structure = ann.describe(choice.factory, dim, metric, count if previous is None else None)
    built_from = CollectionVersion.of(embeddings.saved) if embeddings.is_saved else None
    kind = dict(records=embeddings.records, embedder=embeddings.embedder, factory=choice.factory,
                image_root=embeddings.image_root, collection=built_from, metric=metric, store=embeddings.store)
    if (updated := _update(embeddings, factory, choice, previous, metric, kind)) is not None:
        if params is not None:  # new parameters: measure what they reach (on any vectors: which were trained on
            # is not known after an update), keeping what the index was trained from
            measured = tuning.tune(updated.index, structure, embeddings.store, embeddings.ids, metric,
                                   updated.vectors_of, np.zeros(0, np.int64), params=params, requested=factory,
                                   reasons=choice.reasons)
            before = updated.tuning
            measured = dataclasses.replace(measured, held_out=False, trained_on=before.trained_on,
                                           trained_at=before.trained_at)
            updated.params, updated.tuning = SearchParams.parse(measured.params), measured
        return updated

    structure = ann.describe(choice.factory, dim, metric, count)  # too few vectors to train: refused here
    index = ann.new_index(choice.factory, dim, metric)
    trained = (ann.training_rows(count, structure, keep_out=tuning.TUNING_QUERIES) if not index.is_trained
               else np.zeros(0, np.int64))
    ann.train(index, embeddings.store, trained, metric)
    # Tuned on vectors it does not hold yet, searched as outside photos are; added once it is tuned.
    store, ids = embeddings.store, embeddings.ids
    outside = tuning.query_rows(count, trained)
    inside = np.setdiff1d(np.arange(count), outside, assume_unique=True)
    ann.add(index, store.subset(inside), ids[inside], metric, progress)
    changes = IndexChanges(added=count, removed=len(previous) if previous else 0, rebuilt=True)
    search_index = SearchIndex(index, changes=changes, **kind)
    measured = tuning.tune(index, structure, store, ids, metric, search_index.vectors_of, trained,
                           target=target_recall, params=params, requested=factory, reasons=choice.reasons,
                           outside=outside)
    ann.add(index, store.subset(outside), ids[outside], metric)
    search_index.params, search_index.tuning = SearchParams.parse(measured.params), measured
    return search_index


def _update(
    embeddings: Embeddings, factory: str, choice: tuning.Choice, previous: SearchIndex | None, metric: str, kind: dict
) -> SearchIndex | None:
    """`previous` updated in place to `embeddings`, or None where it must be rebuilt (see `build_index`)."""
    base, held_version = embeddings.saved, previous.collection if previous else None
    if (
        previous is None or previous.read_only or previous.factory != choice.factory or previous.metric != metric
        or not previous.embedder.compatible_with(embeddings.embedder)
        or base is None or held_version is None or held_version.collection != base.collection
        or held_version.version > base.version
    ):
        return None
    measured = previous.tuning
    if measured is None or measured.requested != factory:
        return None
    if measured.trained_at and len(embeddings) >= RETRAIN_GROWTH * measured.trained_at:
        return None  # outgrown what it learnt
    ids, versions = embeddings.ids, embeddings.records.versions
    held = held_ids(previous.index)
    newer, in_index = versions > held_version.version, np.isin(ids, held)
    stale = np.union1d(np.setdiff1d(held, ids), ids[newer & in_index])
    new_rows = np.flatnonzero(newer | ~in_index)
    if len(stale) and not previous.structure.can_remove:
        return None
    if len(stale):
        previous.index.remove_ids(stale.astype(np.int64))
    ann.add(previous.index, embeddings.store.subset(new_rows), ids[new_rows], metric)
    changes = IndexChanges(added=len(new_rows), removed=len(stale), rebuilt=False)
    return SearchIndex(previous.index, changes=changes, params=previous.params, tuning=measured, **kind)


def compare_indexes(
    embeddings: Embeddings,
    factories: list[str] | None = None,
    metric: str = "l2",
    target_recall: float = tuning.DEFAULT_TARGET_RECALL,
) -> list[tuning.Candidate]:
    """Build and tune each of `factories` (by default, the types the collection's size can train) on `embeddings`:
    recall against query time for each, as notebook 02 plots them."""
    factories = factories or tuning.candidate_factories(len(embeddings), embeddings.embedder.dim)
    reader, records = embeddings.store.reader(), embeddings.records

    def exact(ids: np.ndarray) -> np.ndarray:
        return reader.take(records.rows_of_ids(ids))

    return tuning.compare(embeddings.store, embeddings.ids, exact, factories, metric, target_recall)


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
            "metric": search_index.metric,
            "params": str(search_index.params),
            "tuning": search_index.tuning.to_dict() if search_index.tuning else None,
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


def load_index(directory: str | os.PathLike, mmap: bool = True) -> SearchIndex:
    """Read what `save_index` wrote, with the records and vectors of the collection version it was built from.

    With `mmap`, the index file is memory-mapped where FAISS can map it (IVF
    and flat indexes), so that opening a large one costs no reading: the
    index is then read-only.

    Any damage (metadata missing, not JSON or not shaped as ours; an index file
    missing, unreadable, or holding other ids than the collection) raises
    `DamagedStateError`, one line that names the file and says the command
    that rebuilds the index from the embeddings. An index the collection has
    moved on from (embeddings saved since) raises `ArtifactError` saying to
    update it. Indexes of format 3 (records in `index.json`) are read as they are.
    """
    search_index = _load(Path(directory), mmap)
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
    search_index.records, search_index.store = embeddings.records, embeddings.store
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


def _load(directory: Path, mmap: bool = False) -> SearchIndex:
    """The index and what its metadata says; records only where the metadata holds them (format 3)."""
    path = directory / METADATA_FILE
    metadata = read_json(path, kind="index")
    advice = index_advice(directory)
    try:
        factory, index_name, embedder, image_root, records, built_from, count = _parse_metadata(directory, metadata)
        metric, params, measured = _parse_search(metadata, factory, embedder.dim)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        detail = f"no {one_line(error.args[0])!r} entry" if isinstance(error, KeyError) else one_line(error)[:200]
        damage = f"{path} is damaged (not index metadata as this code writes it: {detail})"
        raise DamagedStateError(damage, advice) from error
    index_path = directory / index_name
    if not index_path.is_file():
        raise DamagedStateError(f"{index_path}, named by {METADATA_FILE}, is missing", advice)
    try:
        index, mapped = _read_index(index_path, mmap)
    except RuntimeError as error:
        damage = f"{index_path} is damaged (not a readable FAISS index: {_faiss_reason(error)})"
        raise DamagedStateError(damage, advice) from error
    if index.ntotal != count or index.d != embedder.dim:
        raise DamagedStateError(
            f"{index_path} is damaged (it holds {index.ntotal} vectors, {index.d}-d, but {METADATA_FILE} lists "
            f"{count} images, {embedder.dim}-d: the two come from different saves, or one was changed)",
            advice,
        )
    return SearchIndex(index, records, embedder, factory, image_root, built_from, metric=metric, params=params,
                       tuning=measured, read_only=mapped)


def _read_index(path: Path, mmap: bool) -> tuple[faiss.Index, bool]:
    """The FAISS index in `path`, memory-mapped if `mmap` and FAISS can map it; and whether it is."""
    if mmap:
        for flag in (faiss.IO_FLAG_MMAP_IFC, faiss.IO_FLAG_MMAP):  # flat codes (Flat, PQ); inverted lists (IVF)
            try:
                return ann.drop_precomputed_tables(faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)), True
            except RuntimeError:
                continue
    return ann.drop_precomputed_tables(faiss.read_index(str(path))), False


def _parse_search(metadata: dict, factory: str, dim: int) -> tuple[str, SearchParams, Tuning | None]:
    """The metric, search parameters and tuning record of an index's metadata (L2 and FAISS' defaults where an
    older save has none)."""
    metric = str(metadata.get("metric", "l2")).lower()
    ann.check_metric(metric)
    params = SearchParams.parse(metadata.get("params", ""))
    params.check(ann.describe(factory, dim, metric))
    recorded = metadata.get("tuning")
    return metric, params, Tuning.from_dict(recorded) if recorded is not None else None


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
