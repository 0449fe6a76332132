"""Retrieval quality on a labelled collection: every indexed image searched for in turn, its neighbours scored
by whether they share its label (`labels`: from folders, file-name prefixes or a CSV; `metrics`: precision@k,
recall@k, mAP@k); and what must hold for any exact index (`self_check`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .collection import Embeddings
from .index import SearchIndex, build_index
from .labels import Labels, labels_of
from .metrics import Scores, score
from .retrieval import Retrieval

#: The cut-offs evaluation reports, and the configurations it compares unless told otherwise.
KS = (1, 5, 10)
COMPARED = ("plain", "cosine", "whiten", "qe", "dba", "recommended")


def neighbour_rows(search_index: SearchIndex, k: int) -> np.ndarray:
    """Return, for each indexed image (in `paths` order), the rows of its k nearest *other* images."""
    if len(search_index) <= k:
        raise ValueError(f"need more than k={k} indexed images, the index holds {len(search_index)}")
    ids = np.asarray(search_index.ids, dtype=np.int64)
    _, found = search_index.search_ids(search_index.vectors(), k + 1, exclude=ids)
    rows = _rows_of(found, ids)
    # Keep each query's first k entries other than itself (when duplicates push it out of the k+1, that drops the
    # last column). A stable sort moves its own entry, if any, to the end. Approximate indexes may return fewer
    # than k+1 ids, padded with -1: that padding stays, and counts as a miss.
    others = rows != np.arange(len(ids))[:, None]
    return np.take_along_axis(rows, np.argsort(~others, axis=1, kind="stable")[:, :k], axis=1)


def _rows_of(found: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The row in `ids` of each id in `found`, -1 where it is none of them (FAISS's padding)."""
    order = np.argsort(ids, kind="stable")
    at = np.clip(np.searchsorted(ids, found, sorter=order), 0, len(ids) - 1)
    rows = order[at]
    return np.where(ids[rows] == found, rows, -1)


def score_index(search_index: SearchIndex, labels: str | Labels = "auto", ks: Sequence[int] = KS,
                root: str | None = None) -> Scores:
    """Score an index on its own images: each searched for by its vector (as an outside photo would be, and
    without itself), its `max(ks)` nearest others scored against `labels` ("auto", "folder", "prefix", a CSV
    file of path,label, or `Labels` already read)."""
    if not isinstance(labels, Labels):
        labels = labels_of(search_index.paths, labels, root=root or search_index.image_root)
    return scored_neighbours(search_index, labels, ks)[0]


def scored_neighbours(search_index: SearchIndex, labels: Labels, ks: Sequence[int] = KS) -> tuple[Scores, np.ndarray]:
    """What `score_index` computes, with the neighbour rows it scored: `(n, max(ks))` rows of each image's
    nearest others (for a look at the queries that failed)."""
    neighbours = neighbour_rows(search_index, max(ks))
    return score(neighbours, labels.codes, labels.codes, ks=ks, label_names=labels.classes), neighbours


def compare_configurations(
    embeddings: Embeddings, labels: str | Labels = "auto", configurations: Sequence[str | Retrieval] = COMPARED,
    ks: Sequence[int] = KS, factory: str = "Flat",
) -> dict[str, Scores]:
    """Score each retrieval configuration on the same embeddings and labels, each in an index built for it
    (exact search by default, so that only the configuration differs)."""
    if not isinstance(labels, Labels):
        labels = labels_of(embeddings.paths, labels, root=embeddings.image_root)
    return {str(Retrieval.parse(config)): score_index(build_index(embeddings, factory, retrieval=config), labels, ks)
            for config in configurations}


@dataclass(frozen=True)
class SelfCheck:
    """What searching indexed images for themselves shows: facts that hold for any exact index and any weights.

    An image with an identical twin (the same decoded pixels, so the same
    vector) ties with it at distance 0, and either may come first: that still
    counts as finding itself, and the twins are counted instead.
    """

    checked: int  # images searched for
    finds_itself: bool  # each came back first, or tied at distance about 0 with an identical twin
    distance_zero: bool  # ... at a distance of about 0, relative to its squared norm
    distances_sorted: bool
    twins: int  # of the checked images, those with another image at distance about 0

    @property
    def passed(self) -> bool:
        return self.finds_itself and self.distance_zero and self.distances_sorted

    def lines(self) -> list[str]:
        """The facts, one per line, as the command line and notebook 02 print them."""
        def yes(holds: bool) -> str:
            return "yes" if holds else "NO"

        among = "" if self.twins == 0 else f" of the {self.checked} checked"
        twins = (
            "no image has an identical twin"
            if self.twins == 0
            else f"{self.twins}{among} images have an identical twin (duplicates in the collection)"
        )
        return [
            f"itself first (or tied with an identical twin): {yes(self.finds_itself)}",
            f"distance to itself about 0: {yes(self.distance_zero)}",
            f"distances sorted: {yes(self.distances_sorted)}",
            twins,
        ]


def self_check(search_index: SearchIndex, k: int = 5, sample: int | None = None) -> SelfCheck:
    """Search indexed images for themselves and check what must hold for any exact index (see `SelfCheck`).

    With `sample`, check that many images, evenly spread, rather than all (for large collections).
    """
    ids = np.array(search_index.ids, dtype=np.int64)
    if sample is not None and sample < len(ids):
        ids = ids[np.linspace(0, len(ids) - 1, sample).astype(int)]
    vectors = search_index.vectors_of(ids)
    distances, found = search_index.search_ids(vectors, min(max(k, 2), len(search_index)))
    scale = np.maximum((vectors**2).sum(axis=1), 1e-12)[:, None]
    # FAISS computes |x|^2 + |y|^2 - 2xy in float32: a distance to itself comes back as up to ~1e-6 of the squared
    # norm, about as far as two different but very similar images (a photo and its scaled copy, under random
    # weights). So its distances only find candidate twins; the stored vectors decide, compared directly.
    # A cosine index reports 1 - cos, whatever the vectors' length; with blending or expansion, an image is put
    # first by its own vector (`SearchIndex._copies_first`), at that distance.
    at_zero = np.abs(distances) <= 1e-4 * (1.0 if search_index.space.inner_product else scale)
    rows, columns = np.nonzero(at_zero & (found != ids[:, None]) & (found >= 0))
    twin = np.zeros_like(at_zero)
    if rows.size:
        gaps = ((search_index.vectors_of(found[rows, columns]) - vectors[rows]) ** 2).sum(axis=1)
        same = gaps <= 1e-8 * scale[rows, 0]
        twin[rows[same], columns[same]] = True
    return SelfCheck(
        checked=len(ids),
        finds_itself=bool(np.all((found[:, 0] == ids) | twin[:, 0])),
        distance_zero=bool(np.all(at_zero[:, 0])),
        distances_sorted=bool(np.all(np.diff(distances, axis=1) >= 0)),
        twins=int(np.count_nonzero(twin.any(axis=1))),
    )
