"""Retrieval quality on a labelled collection, such as the demo images whose names carry their group."""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from .index import SearchIndex


def group_of(path: str, separator: str = "__") -> str:
    """Return the group a demo image belongs to: its file name up to `separator` ("cat__mirror.jpg" -> "cat")."""
    return PurePosixPath(path).name.split(separator)[0]


def neighbour_rows(search_index: SearchIndex, k: int) -> np.ndarray:
    """Return, for each indexed image (in `paths` order), the rows of its k nearest *other* images."""
    if len(search_index) <= k:
        raise ValueError(f"need more than k={k} indexed images, the index holds {len(search_index)}")
    _, ids = search_index.index.search(search_index.vectors(), k + 1)
    row_of_id = {image_id: row for row, image_id in enumerate(search_index.ids)}
    rows = np.vectorize(lambda i: row_of_id.get(i, -1), otypes=[np.int64])(ids)
    own = np.arange(len(search_index))[:, None]
    # Drop each row's own entry; when duplicates push it out of the k+1, drop the last column instead.
    # Approximate indexes may return fewer than k+1 rows, padded with -1: keep that padding.
    others = np.where(rows == own, -2, rows)
    kept = [row[row != -2][:k] for row in others]
    return np.array([np.pad(row, (0, k - len(row)), constant_values=-1) for row in kept])


def precision_at_k(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Mean fraction of each item's retrieved neighbours that share its label.

    Args:
        neighbours: `(n, k)` rows of the retrieved items, for each of n queries;
            -1 marks a neighbour the index did not return, which counts as a miss.
        labels: `(n,)` label of every item, indexed by row.
    """
    labels = np.asarray(labels)
    return float(np.mean((labels[neighbours] == labels[:, None]) & (neighbours >= 0)))


def evaluate(search_index: SearchIndex, k: int = 5) -> float:
    """Precision@k of retrieving an image's own group, querying every indexed image in turn."""
    labels = np.array([group_of(path) for path in search_index.paths])
    return precision_at_k(neighbour_rows(search_index, k), labels)


def self_search_facts(search_index: SearchIndex, k: int = 5, sample: int | None = None) -> dict[str, bool]:
    """Check what must hold for any exact index and any weights: every indexed image finds itself
    first at distance about 0 (relative to its squared norm), and distances come back sorted.

    With `sample`, check that many images, evenly spread, rather than all (for large collections).
    """
    ids = np.array(search_index.ids, dtype=np.int64)
    if sample is not None and sample < len(ids):
        ids = ids[np.linspace(0, len(ids) - 1, sample).astype(int)]
    vectors = search_index.index.reconstruct_batch(ids)
    distances, found = search_index.index.search(vectors, min(k, len(search_index)))
    scale = np.maximum((vectors**2).sum(axis=1), 1e-12)
    return {
        "itself first": bool(np.all(found[:, 0] == ids)),
        "distance to itself about 0": bool(np.all(np.abs(distances[:, 0]) <= 1e-4 * scale)),
        "distances sorted": bool(np.all(np.diff(distances, axis=1) >= 0)),
    }
