"""How embeddings are compared: the metric, PCA-whitening, database-side augmentation and query expansion.

A retrieval configuration (`Retrieval`) says what happens between an
embedding and a ranked list of images, in three places:

- **The space** (`Space`): the vectors the index compares. "l2" compares raw
  embeddings by squared Euclidean distance (the seed's way); "cosine"
  compares their directions. Whitening (`Whitening`), fitted on the collection,
  centres the unit vectors and rescales each principal direction by the
  inverse square root of its variance, so that directions every image shares
  stop dominating the comparison (Jégou and Chum, ECCV 2012). A covariance of
  2048 dimensions cannot be estimated from a few hundred images: its
  eigenvalues are shrunk towards their mean by the Ledoit-Wolf amount
  (J. Multivariate Anal. 2004), which the collection's own size decides.
- **The database** (`Augmentation`): database-side augmentation (DBA,
  Arandjelović and Zisserman, CVPR 2012) stores each image as the blend of its
  vector and those of its `dba` nearest images, weighted by similarity to the
  power alpha (αDBA, Radenović, Tolias and Chum, TPAMI 2018). Images of one
  kind pull together; an odd one out is pulled towards its kind.
- **The query** (`expand`): query expansion (Chum et al., ICCV 2007) searches
  once, blends the query with its `qe` nearest results (αQE: weighted by
  similarity to the power alpha), and searches again with the blend.

The recommended configuration (`RECOMMENDED`, the default) was chosen on
evidence: `python -m imagesearch evaluate --compare` on each labelled
collection at hand, and `benchmarks/retrieval.py --sweep` around it (the
README's table). Its parameters are the literature's, found on a plateau
across collections rather than fitted to one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UserFacingError

#: FAISS' metric constants, by name (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT), without importing FAISS here.
_FAISS_METRICS = {"l2": 1, "cosine": 0}


class RetrievalError(UserFacingError, ValueError):
    """A retrieval configuration that cannot work; the message names what can."""


@dataclass(frozen=True)
class Retrieval:
    """What to do between an embedding and a ranked list: see the module's docstring.

    `dba` and `qe` count neighbours (0: off); their `alpha` weights each
    neighbour by its cosine similarity to that power (0: equal weights).
    Whitening, augmentation and expansion compare directions, so they take
    the cosine metric.
    """

    metric: str = "cosine"
    whiten: bool = False
    dba: int = 0
    dba_alpha: float = 3.0
    qe: int = 0
    qe_alpha: float = 3.0

    def __post_init__(self):
        if self.metric not in _FAISS_METRICS:
            raise RetrievalError(f"unknown metric {self.metric!r}; use l2 or cosine")
        if self.metric == "l2" and (self.whiten or self.dba or self.qe):
            raise RetrievalError("whitening, dba and qe compare directions: use them with the cosine metric")
        if min(self.dba, self.qe) < 0 or min(self.dba_alpha, self.qe_alpha) < 0:
            raise RetrievalError("dba, qe and their alpha are counts and powers: 0 or more")
        for count, alpha in (("dba", "dba_alpha"), ("qe", "qe_alpha")):  # an alpha without its step is no setting
            if not getattr(self, count):
                object.__setattr__(self, alpha, 3.0)

    @classmethod
    def parse(cls, text: str | Retrieval | None) -> Retrieval:
        """A configuration from its name ("recommended", "plain", …) or its parts ("cosine,whiten,dba=5,qe=2").

        Parts: the metric (l2 or cosine, default cosine), `whiten`, `dba=N`,
        `dba_alpha=A`, `qe=N`, `qe_alpha=A`, `alpha=A` (both alphas).
        """
        if isinstance(text, Retrieval):
            return text
        if text is None or not str(text).strip():
            return DEFAULT_RETRIEVAL
        text = str(text).strip().lower()
        if text in PRESETS:
            return PRESETS[text]
        values: dict = {}
        for part in filter(None, (part.strip() for part in re.split(r"[,+]", text))):
            name, _, value = part.partition("=")
            name = name.strip()
            try:
                if name in ("l2", "cosine") and not value:
                    values["metric"] = name
                elif name == "whiten" and not value:
                    values["whiten"] = True
                elif name in ("dba", "qe") and value:
                    values[name] = int(value)
                elif name in ("dba_alpha", "qe_alpha") and value:
                    values[name] = float(value)
                elif name == "alpha" and value:
                    values["dba_alpha"] = values["qe_alpha"] = float(value)
                else:
                    raise ValueError
            except ValueError:
                raise RetrievalError(
                    f"cannot read {part!r} in the retrieval configuration {text!r}: name a preset "
                    f"({', '.join(PRESETS)}) or give parts such as cosine,whiten,dba=5,qe=2,alpha=3"
                ) from None
        return cls(**values)

    def __str__(self) -> str:
        for name, preset in PRESETS.items():
            if preset == self:
                return name
        parts = [self.metric] + (["whiten"] if self.whiten else [])
        if self.dba:
            parts.append(f"dba={self.dba}" + (f",dba_alpha={self.dba_alpha:g}" if self.dba_alpha != 3 else ""))
        if self.qe:
            parts.append(f"qe={self.qe}" + (f",qe_alpha={self.qe_alpha:g}" if self.qe_alpha != 3 else ""))
        return ",".join(parts)

    def describe(self) -> str:
        """One line in words, e.g. "cosine, αDBA over 5 neighbours, αQE over 2 (alpha 3)"."""
        parts = ["squared L2 distance" if self.metric == "l2" else "cosine"]
        if self.whiten:
            parts.append("PCA-whitened (Ledoit-Wolf shrinkage)")
        if self.dba:
            parts.append(f"{'α' if self.dba_alpha else ''}DBA over {self.dba} neighbours")
        if self.qe:
            parts.append(f"{'α' if self.qe_alpha else ''}QE over {self.qe}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Retrieval:
        return cls(metric=str(data["metric"]), whiten=bool(data.get("whiten", False)), dba=int(data.get("dba", 0)),
                   dba_alpha=float(data.get("dba_alpha", 3.0)), qe=int(data.get("qe", 0)),
                   qe_alpha=float(data.get("qe_alpha", 3.0)))


#: The seed's search: squared L2 distance between raw vectors.
PLAIN = Retrieval("l2")
#: Cosine similarity, αDBA over 5 neighbours and αQE over 2, alpha 3 (Radenović et al.'s setting): the default.
RECOMMENDED = Retrieval("cosine", dba=5, qe=2)
#: What `build_index` and the command line use unless told otherwise.
DEFAULT_RETRIEVAL = RECOMMENDED
PRESETS = {
    "recommended": RECOMMENDED,
    "plain": PLAIN,
    "cosine": Retrieval("cosine"),
    "whiten": Retrieval("cosine", whiten=True),
    "qe": Retrieval("cosine", qe=2),
    "dba": Retrieval("cosine", dba=5),
    "whiten+dba+qe": Retrieval("cosine", whiten=True, dba=5, qe=2),
}


@dataclass(frozen=True, eq=False)
class Whitening:
    """A PCA-whitening of unit vectors: `normalise((x - mean) @ projection)`, fitted on a collection."""

    mean: np.ndarray  # (d,) float32
    projection: np.ndarray  # (d, d) float32: eigenvectors scaled by the shrunk eigenvalues' inverse square roots
    shrinkage: float  # the Ledoit-Wolf amount the eigenvalues were shrunk by, 0 to 1
    fitted_on: int  # how many vectors

    @classmethod
    def fit(cls, chunks: Callable[[], Iterable[np.ndarray]]) -> Whitening:
        """Fit on the unit vectors `chunks()` yields (called twice: for the mean, then the covariance).

        Memory stays at one chunk and a d x d covariance, whatever the size of
        the collection.
        """
        total, count = None, 0
        for chunk in chunks():
            chunk = chunk.astype(np.float64)
            total = chunk.sum(axis=0) if total is None else total + chunk.sum(axis=0)
            count += len(chunk)
        if count < 2:
            raise RetrievalError(f"whitening is fitted on the collection, which needs 2 images or more, not {count}")
        mean = total / count
        scatter, fourth = np.zeros((len(mean), len(mean))), 0.0
        for chunk in chunks():
            centred = chunk.astype(np.float64) - mean
            scatter += centred.T @ centred
            fourth += float(np.sum(np.einsum("ij,ij->i", centred, centred) ** 2))
        covariance = scatter / count
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        shrinkage = _ledoit_wolf(covariance, fourth, count)
        level = np.trace(covariance) / len(mean)
        shrunk = (1 - shrinkage) * np.maximum(eigenvalues, 0) + shrinkage * level
        projection = eigenvectors / np.sqrt(np.maximum(shrunk, 1e-12 * max(level, 1e-30)))
        return cls(mean.astype(np.float32), projection.astype(np.float32), float(shrinkage), count)

    def apply(self, unit_vectors: np.ndarray) -> np.ndarray:
        return _normalised((unit_vectors - self.mean) @ self.projection)


def _ledoit_wolf(covariance: np.ndarray, fourth: float, count: int) -> float:
    """The Ledoit-Wolf shrinkage amount towards a scaled identity, from the covariance and sum of |x - mean|^4.

    beta^2 = (sum_i |x_i x_i^T - S|_F^2) / n^2, computed as (sum_i |x_i|^4 - n |S|_F^2) / n^2;
    delta^2 = |S - mu I|_F^2; the amount is min(beta^2, delta^2) / delta^2.
    """
    dim = len(covariance)
    level = np.trace(covariance) / dim
    delta = float(np.sum(covariance**2) - 2 * level * np.trace(covariance) + dim * level**2)
    beta = max(0.0, (fourth - count * float(np.sum(covariance**2))) / count**2)
    return 1.0 if delta <= 0 else min(beta, delta) / delta


@dataclass(frozen=True, eq=False)
class Space:
    """The vectors an index compares: the metric, and the fitted whitening if any."""

    metric: str = "l2"
    whitening: Whitening | None = None

    @classmethod
    def of(cls, metric: str | Space) -> Space:
        if isinstance(metric, Space):
            return metric
        if metric not in _FAISS_METRICS:
            raise RetrievalError(f"unknown metric {metric!r}; use l2 or cosine")
        return _SPACES[metric]

    @property
    def faiss_metric(self) -> int:
        return _FAISS_METRICS[self.metric]

    @property
    def inner_product(self) -> bool:
        """Whether the index ranks by inner product of unit vectors (cosine), not by L2 distance."""
        return self.metric == "cosine"

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """`vectors` as the index stores them: unchanged for L2, unit length for cosine, then whitened if so fitted."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric != "cosine":
            return vectors
        vectors = _normalised(vectors)
        return vectors if self.whitening is None else self.whitening.apply(vectors)

    def __eq__(self, other) -> bool:  # a str metric compares equal to its plain space, as the code before this did
        if isinstance(other, str):
            return self.whitening is None and self.metric == other
        return isinstance(other, Space) and self.metric == other.metric and self.whitening is other.whitening

    def __hash__(self) -> int:
        return hash((self.metric, id(self.whitening)))

    def __str__(self) -> str:
        return self.metric + (", whitened" if self.whitening is not None else "")


_SPACES = {name: Space(name) for name in _FAISS_METRICS}


@dataclass(eq=False)
class Augmentation:
    """Database-side augmentation: each stored vector blended with its nearest images' (see the module).

    For each image id (sorted), the ids of its `neighbours` nearest other
    images and their cosine similarities, as found in the prepared space:
    the stored vector of an image is `normalise(x + sum_j sim_j^alpha x_j)`.
    Kept with the index (three arrays, no per-image objects), so that an
    update re-blends only the images whose neighbours changed, and a
    compressed index re-ranks by the blended vectors.
    """

    ids: np.ndarray  # (n,) int64, sorted
    neighbours: np.ndarray  # (n, m) int64; -1 where an image has fewer neighbours
    similarities: np.ndarray  # (n, m) float32, in decreasing order per row
    alpha: float = 3.0

    @classmethod
    def empty(cls, count: int, alpha: float) -> Augmentation:
        return cls(np.zeros(0, np.int64), np.zeros((0, count), np.int64), np.zeros((0, count), np.float32), alpha)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def count(self) -> int:
        return self.neighbours.shape[1]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id; -1 where the table has none."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids)
        rows = np.minimum(rows, max(len(self.ids) - 1, 0))
        found = (len(self.ids) > 0) & (self.ids[rows] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        return np.where(found, rows, -1)

    def blend(self, ids: np.ndarray, prepared_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The stored (blended) vectors of `ids`, from the prepared vectors `prepared_of(ids)` returns.

        An image the table has no row for (one being added, whose neighbours
        are not known yet) is its own vector.
        """
        ids = np.asarray(ids, dtype=np.int64)
        rows = self.rows_of(ids)
        neighbours = np.where(rows[:, None] >= 0, self.neighbours[np.maximum(rows, 0)], -1) if len(self) else \
            np.full((len(ids), self.count), -1, np.int64)
        weights = self._weights(self.similarities[np.maximum(rows, 0)]) if len(self) else np.zeros(neighbours.shape)
        weights = np.where(neighbours >= 0, weights, 0).astype(np.float32)
        wanted = np.unique(np.concatenate([ids, neighbours[neighbours >= 0]]))
        vectors = prepared_of(wanted)
        own = vectors[np.searchsorted(wanted, ids)]
        others = vectors[np.searchsorted(wanted, np.maximum(neighbours, 0))]
        return _normalised(own + np.einsum("ij,ijk->ik", weights, others))

    def _weights(self, similarities: np.ndarray) -> np.ndarray:
        clipped = np.maximum(similarities, 0).astype(np.float32)
        return clipped**self.alpha if self.alpha else np.ones_like(clipped)

    def with_rows(self, ids: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray) -> Augmentation:
        """This table with the rows of `ids` set (replaced where present, added where not)."""
        keep = ~np.isin(self.ids, ids)
        all_ids = np.concatenate([self.ids[keep], ids])
        order = np.argsort(all_ids, kind="stable")
        return Augmentation(
            all_ids[order],
            np.concatenate([self.neighbours[keep], neighbours])[order],
            np.concatenate([self.similarities[keep], similarities.astype(np.float32)])[order],
            self.alpha,
        )

    def without(self, ids: np.ndarray) -> Augmentation:
        keep = ~np.isin(self.ids, ids)
        return Augmentation(self.ids[keep], self.neighbours[keep], self.similarities[keep], self.alpha)

    def referring_to(self, ids: np.ndarray) -> np.ndarray:
        """The ids whose neighbours include any of `ids` (whose blend must be made again when those change)."""
        return self.ids[np.isin(self.neighbours, ids).any(axis=1)]

    def admit(self, newcomer_ids: np.ndarray, found: np.ndarray, similarities: np.ndarray) -> np.ndarray:
        """Take newcomers into the neighbour lists of the images they are nearer to than those images' last
        neighbour; return the ids whose lists changed.

        `found` and `similarities` are each newcomer's nearest images as
        searched: an image that a newcomer finds among its nearest is (nearly
        always: nearness is not quite symmetric) where it would find the
        newcomer, so this keeps the lists as a fresh search would, without one.
        """
        changed = set()
        for newcomer, row_ids, row_similarities in zip(newcomer_ids, found, similarities):
            for other, similarity in zip(row_ids, row_similarities):
                row = self.rows_of(np.array([other]))[0]
                if other < 0 or other == newcomer or row < 0:
                    continue
                neighbours, held = self.neighbours[row], self.similarities[row]
                if newcomer in neighbours:
                    continue
                last = held[-1] if neighbours[-1] >= 0 else -np.inf
                if similarity > last:
                    at = int(np.searchsorted(-held, -similarity, side="right"))
                    self.neighbours[row] = np.insert(neighbours, at, newcomer)[:-1]
                    self.similarities[row] = np.insert(held, at, similarity)[:-1]
                    changed.add(int(other))
        return np.array(sorted(changed), dtype=np.int64)


def neighbour_lists(
    ids: np.ndarray, found: np.ndarray, similarities: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's `count` nearest *other* images from a search that may include the image itself."""
    others = found != ids[:, None]
    neighbours = np.full((len(ids), count), -1, np.int64)
    held = np.full((len(ids), count), -np.inf, np.float32)
    for row in range(len(ids)):  # a few entries per image: the loop is over rows of a small array
        keep = others[row] & (found[row] >= 0)
        taken = found[row][keep][:count]
        neighbours[row, : len(taken)] = taken
        held[row, : len(taken)] = similarities[row][keep][:count]
    return neighbours, held


def expand(
    queries: np.ndarray, found: np.ndarray, similarities: np.ndarray, stored_of: Callable[[np.ndarray], np.ndarray],
    count: int, alpha: float,
) -> np.ndarray:
    """αQE: each prepared query blended with its `count` nearest results' stored vectors, weighted by sim^alpha.

    `found` are the first search's ids (-1: none; already without the query
    image itself where it is indexed and must not count), `similarities`
    their cosine similarities.
    """
    found, similarities = found[:, :count], similarities[:, :count]
    present = found >= 0
    weights = np.where(present, np.maximum(similarities, 0) ** alpha if alpha else 1.0, 0).astype(np.float32)
    wanted = np.unique(found[present])
    if not len(wanted):
        return queries
    vectors = stored_of(wanted)
    blended = queries + np.einsum("ij,ijk->ik", weights, vectors[np.searchsorted(wanted, np.maximum(found, 0))])
    return _normalised(blended)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
