"""The FAISS index over the embeddings, the row-to-image mapping beside it, and search.

On disk (the folder notebook 02 writes and notebook 03 reads):

    index/
      index.faiss   the FAISS index; row i is the image `paths[i]`
      index.json    format version, FAISS factory string, metric, embedder, image root, paths

The index is described by its FAISS factory string ("Flat" is exact L2
search; "IVF1024,PQ32" or "HNSW32" are approximate), so approximate indexes
plug into the same build, save, load and search calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .embedders import EmbedderInfo
from .extract import Embeddings
from .storage import FORMAT_VERSION, ArtifactError, atomic_path, read_json, write_json

INDEX_FILE = "index.faiss"
METADATA_FILE = "index.json"


@dataclass(frozen=True)
class Hit:
    """One search result. `distance` is FAISS' squared L2 distance (0 for an identical vector)."""

    rank: int
    path: str
    distance: float


@dataclass
class SearchIndex:
    """A FAISS index together with the image path of every row and the embedder that made the vectors."""

    index: faiss.Index
    paths: list[str]
    embedder: EmbedderInfo
    factory: str
    image_root: str

    _rows: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = {path: row for row, path in enumerate(self.paths)}

    def __len__(self) -> int:
        return self.index.ntotal

    def row_of(self, path: str) -> int:
        """Return the row of an indexed image, by its path relative to the image root."""
        try:
            return self._rows[path]
        except KeyError:
            raise KeyError(f"{path!r} is not in the index; pick one of its {len(self.paths)} paths") from None

    def vector(self, path: str) -> np.ndarray:
        """Return the stored embedding of an indexed image."""
        return self.index.reconstruct(self.row_of(path))

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Return, for each query vector, its `k` nearest indexed images, nearest first."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.index.d:
            raise ValueError(
                f"query vectors are {queries.shape[1]}-d but the index holds {self.index.d}-d "
                f"vectors from {self.embedder}; embed queries with the same embedder"
            )
        distances, rows = self.index.search(queries, min(k, len(self)))
        return [_hits(self.paths, d, r) for d, r in zip(distances, rows)]


def _hits(paths: list[str], distances: np.ndarray, rows: np.ndarray) -> list[Hit]:
    # FAISS pads with row -1 when it finds fewer than k neighbours.
    valid = [(d, r) for d, r in zip(distances, rows) if r >= 0]
    return [Hit(rank, paths[r], float(d)) for rank, (d, r) in enumerate(valid)]


def _enable_reconstruct(index: faiss.Index) -> None:
    """Let IVF indexes return stored vectors by row (query by an indexed image needs it)."""
    try:
        faiss.extract_index_ivf(index).make_direct_map()
    except RuntimeError:
        pass  # not an IVF index: flat and HNSW indexes reconstruct without help


def build_index(embeddings: Embeddings, factory: str = "Flat") -> SearchIndex:
    """Build a FAISS index of `embeddings` from a factory string; "Flat" is exact L2 search."""
    vectors = np.ascontiguousarray(embeddings.vectors, dtype=np.float32)
    index = faiss.index_factory(embeddings.embedder.dim, factory, faiss.METRIC_L2)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    _enable_reconstruct(index)
    return SearchIndex(index, embeddings.paths, embeddings.embedder, factory, embeddings.image_root)


def save_index(search_index: SearchIndex, directory: str | os.PathLike) -> list[Path]:
    """Write the index and its metadata to `directory` (each file atomically, metadata last)."""
    directory = Path(directory)
    index_path = directory / INDEX_FILE
    with atomic_path(index_path) as temporary:
        faiss.write_index(search_index.index, str(temporary))
    metadata_path = directory / METADATA_FILE
    write_json(
        metadata_path,
        {
            "kind": "index",
            "format_version": FORMAT_VERSION,
            "factory": search_index.factory,
            "metric": "L2",
            "count": len(search_index),
            "embedder": search_index.embedder.to_dict(),
            "image_root": search_index.image_root,
            "paths": search_index.paths,
        },
    )
    return [index_path, metadata_path]


def load_index(directory: str | os.PathLike) -> SearchIndex:
    """Read what `save_index` wrote, checking that the index and its metadata agree."""
    directory = Path(directory)
    metadata = read_json(directory / METADATA_FILE, kind="index")
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        raise ArtifactError(f"{index_path} is missing: build and save the index again")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        raise ArtifactError(f"{index_path} is not a readable FAISS index ({error}); build the index again") from error
    _enable_reconstruct(index)
    embedder = EmbedderInfo.from_dict(metadata["embedder"])
    if index.ntotal != len(metadata["paths"]) or index.d != embedder.dim:
        raise ArtifactError(
            f"{index_path} holds {index.ntotal} vectors of {index.d} dimensions, but its metadata "
            f"lists {len(metadata['paths'])} images of {embedder.dim}; the files come from "
            "different runs: build the index again"
        )
    return SearchIndex(index, metadata["paths"], embedder, metadata["factory"], metadata["image_root"])
