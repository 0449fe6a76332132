"""Saving and opening an index: atomic saves, memory-mapped opening, and damage found and named.

On disk (the folder notebook 02 writes and notebook 03 reads):

    index/
      index.json            the commit record: format version, FAISS factory string, metric, search parameters
                            and how they were tuned, embedder, image root, the index file, and the collection
                            version it was built from (its folder, relative to this one; its id, version and commit)
      index.<token>.faiss   the FAISS index; it stores each vector under its image's stable id
      retrieval.<token>.npz where the retrieval configuration asks for them: the whitening fitted on the
                            collection, and the augmentation table (each image's nearest images)

Which image an id is comes from the collection's records, read when the
index is loaded: the index copies none of them. An index is current when
the collection is still at the version it was built from; one that is not
is refused for searching and updated by the next `build_index(previous=)`.

An index opened for searching (`load_index`) is memory-mapped where FAISS can
map it, and is read-only; one opened to be updated (`load_previous_index`) is
read into memory.

The index is derived from the embeddings alone, so a damaged one is never
worth a refusal where it can be rebuilt: `load_previous_index` warns and
returns None, and the update rebuilds it.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from . import ann
from .ann import SearchParams
from .collection import Embeddings, load_embeddings
from .embedders import EmbedderInfo
from .records import SCHEMA, Records
from .retrieval import Augmentation, Retrieval, Whitening
from .search_index import CollectionVersion, SearchIndex, held_ids
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

METADATA_FILE = "index.json"
INDEX_STEM, INDEX_SUFFIX = "index", ".faiss"
RETRIEVAL_STEM, RETRIEVAL_SUFFIX = "retrieval", ".npz"


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
    arrays = _retrieval_arrays(search_index)
    retrieval_name = fresh_name(RETRIEVAL_STEM, RETRIEVAL_SUFFIX) if arrays else None
    if arrays:
        with atomic_path(directory / retrieval_name) as temporary, open(temporary, "wb") as file:
            np.savez(file, **arrays)
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
            "retrieval": search_index.retrieval.to_dict(),
            "retrieval_file": retrieval_name,
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
    remove_stale(directory, RETRIEVAL_STEM, RETRIEVAL_SUFFIX, keep={retrieval_name} if retrieval_name else set())
    return [metadata_path, directory / index_name] + ([directory / retrieval_name] if retrieval_name else [])


def _retrieval_arrays(search_index: SearchIndex) -> dict[str, np.ndarray]:
    """The whitening's and the augmentation table's arrays, by name, as the retrieval file holds them."""
    arrays = {}
    if (whitening := search_index.whitening) is not None:
        arrays |= {"whitening_mean": whitening.mean, "whitening_projection": whitening.projection,
                   "whitening_facts": np.array([whitening.shrinkage, whitening.fitted_on], np.float64)}
    if (table := search_index.augmentation) is not None:
        arrays |= {"augmentation_ids": table.ids, "augmentation_neighbours": table.neighbours,
                   "augmentation_similarities": table.similarities, "augmentation_alpha": np.array(table.alpha)}
    return arrays


def load_index(directory: str | os.PathLike, mmap: bool = True) -> SearchIndex:
    """Read what `save_index` wrote, with the records and vectors of the collection version it was built from.

    With `mmap`, the index file is memory-mapped where FAISS can map it (IVF
    and flat indexes), so that opening a large one costs no reading: the
    index is then read-only.

    Any damage (metadata missing, not JSON or not shaped as ours, or naming
    another model than the collection's; an index file missing, unreadable, or
    holding other ids than the collection) raises `DamagedStateError`, one line
    that names the file and says the command that rebuilds the index from the
    embeddings. An index the collection has moved on from (embeddings saved
    since) raises `ArtifactError` saying to update it. Indexes of format 3
    (records in `index.json`) are read as they are.
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
    """Raise `DamagedStateError` unless the index names the model of `embeddings`, the version it names (whose
    queries it is searched with), and holds their ids."""
    if not search_index.embedder.compatible_with(embeddings.embedder):
        raise DamagedStateError(
            f"{directory / METADATA_FILE} is damaged (it names the model {search_index.embedder}, but the "
            f"embeddings of the version it names were made by {embeddings.embedder}: queries would be embedded by "
            "another model than the images were)",
            index_advice(directory),
        )
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
        config = Retrieval.from_dict(metadata["retrieval"]) if "retrieval" in metadata else Retrieval(metric)
        if config.metric != metric:
            raise ValueError(f"its retrieval {config} contradicts its metric {metric}")
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
    whitening, augmentation = _read_retrieval(directory, metadata, config, embedder.dim, count, advice)
    return SearchIndex(index, records, embedder, factory, image_root, built_from, metric=metric, params=params,
                       tuning=measured, read_only=mapped, retrieval=config, whitening=whitening,
                       augmentation=augmentation)


def _read_retrieval(directory: Path, metadata: dict, config: Retrieval, dim: int, count: int, advice: str
                    ) -> tuple[Whitening | None, Augmentation | None]:
    """The whitening and augmentation table `config` needs, from the retrieval file; DamagedStateError if it is
    missing, unreadable or not of the index's shape."""
    if not (config.whiten or config.dba):
        return None, None
    name = metadata.get("retrieval_file")
    path = directory / str(name)
    if not (isinstance(name, str) and is_file_name(name) and path.is_file()):
        raise DamagedStateError(f"{path}, the whitening or augmentation {METADATA_FILE} names, is missing", advice)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            whitening = augmentation = None
            if config.whiten:
                mean, projection = arrays["whitening_mean"], arrays["whitening_projection"]
                shrinkage, fitted_on = arrays["whitening_facts"]
                if mean.shape != (dim,) or projection.shape != (dim, dim):
                    raise ValueError(f"its whitening is for {mean.shape} vectors, not {dim}-d")
                whitening = Whitening(mean.astype(np.float32), projection.astype(np.float32), float(shrinkage),
                                      int(fitted_on))
            if config.dba:
                ids, neighbours = arrays["augmentation_ids"], arrays["augmentation_neighbours"]
                similarities = arrays["augmentation_similarities"]
                if len(ids) != count or neighbours.shape != (count, config.dba) or similarities.shape != (
                        count, config.dba) or np.any(np.diff(ids) <= 0):
                    raise ValueError(f"its augmentation table is not of {count} images x {config.dba} neighbours")
                augmentation = Augmentation(ids.astype(np.int64), neighbours.astype(np.int64),
                                            similarities.astype(np.float32), float(arrays["augmentation_alpha"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DamagedStateError(f"{path} is damaged ({one_line(error)[:160]})", advice) from error
    return whitening, augmentation


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
