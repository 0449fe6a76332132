"""Which index a collection needs, and the smallest search effort that reaches a target recall, measured on it.

`choose` picks a factory from the collection's size, the vectors' dimension
and a memory budget:

1. **Exact search** ("Flat") while it is fast enough: a query reads every
   vector, and up to EXACT_MAX_FLOATS floats (32,768 vectors of 2048-d:
   under 10 ms a query on one core here, where `benchmarks/ann_scale.py`
   measured about 30 ms at 100,000 and 282 ms at 1,000,000) that is quick
   enough to need no approximation,
   and no recall below 1.
2. **HNSW** ("HNSW32") where its graph and full vectors fit the budget: the
   fastest search for its recall, but it holds every vector in memory and
   cannot remove one (an update that removes images rebuilds it).
3. **IVF-PQ re-ranked from disk** otherwise: vectors reduced by PCA (with a
   random rotation, which spreads variance evenly over PQ's sub-spaces) to
   256-d, nlist inverted lists in FAISS' recommended 4·√N to 16·√N, and
   64-byte codes of 128 4-bit sub-quantizers, scanned with SIMD ("fast scan",
   `PQ128x4fs`: one 128 x 16 lookup table per query, held in registers). A
   query's candidates are re-ranked by their full vectors, read from the
   collection's shards. 72 bytes per vector resident. 8-bit PQ of the same
   64 bytes (`PQ64`) computes a 64 x 256 table for every list a query visits:
   at 1,000,000 vectors it took 1.90 ms a query for recall@10 0.945, against
   1.50 ms for 0.960 (`benchmarks/ann_scale.py`).

`tune` then measures recall@k against exact search on held-out vectors of
the collection (vectors not in the training sample; each query's own vector
is left out of both answers, as an outside photo would not be in the
collection) and picks the parameter values that reach the target at the
lowest measured latency. What was chosen, why, and the curve it was chosen
from are recorded with the index (`Tuning`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from . import ann
from .vectors import VectorStore

DEFAULT_TARGET_RECALL = 0.95
DEFAULT_MEMORY_BUDGET = 4 * 2**30
#: Recall is measured at this k (recall@10), whatever k a search later asks for.
RECALL_K = 10
#: Held-out queries recall is measured on: a recall of 0.95 is then known to about ±0.01.
TUNING_QUERIES = 500
#: Queries timed, one at a time on one thread, for each parameter setting.
TIMED_QUERIES = 50
#: Exact search while a query reads at most this many floats.
EXACT_MAX_FLOATS = 2**26
HNSW_FACTORY = "HNSW32"
#: IVF-PQ: vectors reduced to this many dimensions, and this many bytes per code (two 4-bit sub-quantizers a byte).
PQ_DIM, PQ_BYTES = 256, 64
NPROBES = tuple(2**p for p in range(15))
EF_SEARCHES = (16, 32, 64, 128, 256, 512, 1024)
K_FACTORS = (1, 2, 4, 8, 16, 32)
#: A sweep stops where doubling the effort gains less recall than this.
SATURATED = 0.002


@dataclass(frozen=True)
class Choice:
    factory: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Point:
    """One search setting, measured: its recall@k and single-query latency."""

    params: str
    recall: float
    ms_per_query: float


@dataclass(frozen=True)
class Tuning:
    """How an index searches and how well: recorded in its metadata."""

    requested: str  # the factory asked for: "auto", or a factory string
    params: str  # the search parameters chosen (or given)
    recall: float  # recall@k against exact search, with `params`
    k: int
    target: float | None  # None: parameters were given, not tuned
    queries: int  # held-out queries recall was measured on
    held_out: bool  # the queries were not in the training sample
    count: int  # vectors in the index when it was measured
    trained_on: int  # vectors the index was trained from, a sample (0: needs no training)
    reasons: tuple[str, ...] = ()
    curve: tuple[Point, ...] = field(default=())
    trained_at: int = 0  # vectors in the collection when the index was trained (0: needs no training)

    @property
    def point(self) -> Point:
        """The measured point of the parameters chosen."""
        return next((point for point in self.curve if point.params == self.params), Point(self.params, self.recall, 0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Tuning:
        points = tuple(Point(**point) for point in data.get("curve", ()))
        return cls(**{**data, "reasons": tuple(data.get("reasons", ())), "curve": points})

    def summary(self) -> str:
        """One line: what the recall is, how it was measured, with what parameters."""
        if self.target is None and self.recall == 1.0 and not self.params and self.queries == 0:
            return "exact search: recall 1 by construction"
        where = "held-out vectors" if self.held_out else "vectors of the collection (all were in the training sample)"
        params = f" with {self.params}" if self.params else ""
        goal = f", target {self.target:.2f}" if self.target is not None else ""
        return (f"recall@{self.k} {self.recall:.3f}{params} against exact search, on {self.queries} {where}"
                f"{goal}")


def parse_memory(text: str | int) -> int:
    """Bytes from "2GB", "512MB", "1.5GiB" or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ann.IndexSpecError(f"cannot read the memory budget {text!r}; write it as 2GB, 512MB or 1.5GiB")
    scale = 1024 ** "_KMGT".index(match.group(2).upper() or "_")
    return int(float(match.group(1)) * scale)


def ivf_lists(count: int) -> int:
    """Inverted lists for `count` vectors: the power of two nearest 8·√N (in FAISS' 4·√N to 16·√N), at most N/39."""
    most = count // ann.MIN_POINTS_PER_CENTROID
    if most < 1:
        return 0
    target = np.log2(8 * np.sqrt(count))
    return int(2 ** min(round(target), int(np.log2(most))))


def choose(count: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Choice:
    """The factory for `count` vectors of `dim` within `memory_budget` bytes, and the reasons (see the module)."""
    gib = 2**30
    flat_bytes = count * (4 * dim + 16)
    if count * dim <= EXACT_MAX_FLOATS and flat_bytes <= memory_budget:
        return Choice("Flat", (
            f"exact search: {count} vectors of {dim}-d is at most {EXACT_MAX_FLOATS // dim} "
            f"({EXACT_MAX_FLOATS:,} floats read per query), quick enough without approximation",
        ))
    too_many = f"{count} vectors of {dim}-d are more than exact search reads quickly"
    hnsw_bytes = count * ann.describe(HNSW_FACTORY, dim).bytes_per_vector()
    if hnsw_bytes <= memory_budget:
        return Choice(HNSW_FACTORY, (
            too_many,
            f"HNSW: its graph and full vectors ({hnsw_bytes / gib:.2f} GiB) fit the memory budget "
            f"({memory_budget / gib:.2f} GiB)",
        ))
    nlist = ivf_lists(count)
    reduced = min(dim, PQ_DIM)
    factory, structure = _compressed(count, dim, nlist, reduced)
    ivf_bytes = count * structure.bytes_per_vector()
    if ivf_bytes > memory_budget:
        raise ann.IndexSpecError(
            f"even a compressed index of {count} vectors needs {ivf_bytes / gib:.2f} GiB, more than the memory "
            f"budget of {memory_budget / gib:.2f} GiB; raise the budget"
        )
    return Choice(factory, (
        too_many,
        f"HNSW would need {hnsw_bytes / gib:.2f} GiB, more than the memory budget ({memory_budget / gib:.2f} GiB)",
        f"compressed IVF: {nlist} lists (FAISS recommends 4·√N to 16·√N), "
        + (f"PCA with a random rotation to {reduced}-d, " if reduced < dim else "")
        + f"{structure.code_bytes}-byte codes: {structure.bytes_per_vector()} bytes per vector resident "
        f"({ivf_bytes / gib:.2f} GiB); candidates re-ranked by their full vectors from disk",
    ))


def _compressed(count: int, dim: int, nlist: int, reduced: int) -> tuple[str, ann.Structure]:
    """The compressed IVF index `count` vectors can train: fast-scan 4-bit PQ (16 centroids per sub-quantizer: 624
    vectors train it), else 8-bit scalar quantization (no codebook to learn)."""
    transform = f"PCAR{reduced}," if reduced < dim else ""
    quantizers = min(2 * PQ_BYTES, reduced)  # at least one dimension each
    for encoding in (f"PQ{quantizers}x4fs", "SQ8"):
        factory = f"{transform}IVF{nlist},{encoding}"
        structure = ann.describe(factory, dim)
        if count >= structure.min_training:
            return factory, structure
    return factory, structure


def query_rows(count: int, trained: np.ndarray, seed: int = 1) -> np.ndarray:
    """The rows to hold out of a new index while it is tuned (`tune(outside=)`): TUNING_QUERIES rows not trained
    on where there are, and never more than a quarter of the collection."""
    return held_out_rows(count, trained, min(TUNING_QUERIES, count // 4), seed)[0]


def held_out_rows(count: int, trained: np.ndarray, queries: int, seed: int = 1) -> tuple[np.ndarray, bool]:
    """Up to `queries` rows not among `trained` (sorted), seeded; all rows are eligible where none is left out."""
    free = np.setdiff1d(np.arange(count), trained, assume_unique=True)
    held_out = len(free) > 0
    pool = free if held_out else np.arange(count)
    rows = np.random.default_rng(seed).choice(pool, min(queries, len(pool)), replace=False)
    return np.sort(rows), held_out


def tune(
    index: faiss.Index,
    structure: ann.Structure,
    store: VectorStore,
    ids: np.ndarray,
    metric: ann.Metric,
    exact: Callable[[np.ndarray], np.ndarray] | None,
    trained: np.ndarray,
    target: float | None = DEFAULT_TARGET_RECALL,
    params: str | ann.SearchParams | None = None,
    requested: str = "",
    reasons: tuple[str, ...] = (),
    queries: int = TUNING_QUERIES,
    outside: np.ndarray | None = None,
) -> Tuning:
    """Measure `index`'s recall@10 on held-out vectors; with `target` (and no `params`), pick the settings that reach it
    at the lowest measured latency.

    `trained` are the rows the index was trained on (not used as queries).
    `outside` are rows of `store` the index does not hold yet (`query_rows`):
    they are the queries, searched for as outside photos are, among the rest.
    Without it, queries are drawn from vectors the index holds, each left out
    of its own answers: an HNSW graph finds a vector it holds more easily than
    an outside one, so that overstates HNSW's recall. Given `params`, recall
    is measured with them and nothing is tuned.
    """
    given = ann.SearchParams.parse(params).check(structure) if params is not None else None
    base = dict(requested=requested or structure.factory, k=RECALL_K, count=len(store), trained_on=len(trained),
                trained_at=len(store) if len(trained) else 0, reasons=reasons)
    k = max(0, min(RECALL_K, len(store) - 1))
    if structure.exact:  # recall 1 by construction; its latency is that of reading every vector
        rows = outside[:TIMED_QUERIES] if outside is not None else held_out_rows(len(store), trained, TIMED_QUERIES)[0]
        scan = _Measure(index, structure, ann.prepared(store.take(rows), metric), ids[rows], None, k, metric, exact)
        point = Point("", 1.0, round(scan.latency(ann.SearchParams()), 3))
        return Tuning(params="", recall=1.0, target=None, queries=0, held_out=False, curve=(point,), **base)
    if outside is not None:
        rows, held_out = outside, not np.isin(outside, trained).any()
        rest = np.setdiff1d(np.arange(len(store)), rows, assume_unique=True)
        base_store, base_ids = store.subset(rest), ids[rest]
    else:
        rows, held_out = held_out_rows(len(store), trained, queries)
        base_store, base_ids = store, ids
    raw = store.take(rows)
    vectors = ann.prepared(raw, metric)
    _, truth = ann.exact_search(base_store, base_ids, raw, k + 1, metric)
    truth = _without_own(truth, ids[rows], k)
    measure = _Measure(index, structure, vectors, ids[rows], truth, k, metric, exact, 0 if outside is not None else 1)
    if given is not None or target is None:
        given = given or ann.SearchParams()
        point = measure.point(given)
        return Tuning(params=str(given), recall=point.recall, target=None, queries=len(rows), held_out=held_out,
                      curve=(point,), **base)
    curve = measure.sweep(target)
    reaching = [point for point in curve if point.recall >= target]
    if reaching:
        best = min(reaching, key=lambda point: point.ms_per_query)
        why = f"the fastest of {len(reaching)} measured settings that reach recall@{k} {target:.2f}"
    else:
        best = max(curve, key=lambda point: (point.recall, -point.ms_per_query))
        why = f"no setting reached recall@{k} {target:.2f}: the best measured (raise the budget, or pick a factory)"
    return Tuning(params=best.params, recall=best.recall, target=target, queries=len(rows), held_out=held_out,
                  curve=tuple(curve), **{**base, "reasons": (*reasons, f"{best.params}: {why}")})


def _without_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row of `found` without its query's own id, cut to `k` (a row missing it loses its last entry)."""
    kept = [row[row != me][:k] for row, me in zip(found, own)]
    return np.array([np.pad(row, (0, k - len(row)), constant_values=-1) for row in kept])


@dataclass
class _Measure:
    index: faiss.Index
    structure: ann.Structure
    queries: np.ndarray  # prepared
    own: np.ndarray
    truth: np.ndarray
    k: int
    metric: ann.Metric
    exact: Callable[[np.ndarray], np.ndarray] | None
    extra: int = 1  # answers asked beyond k: 1 where each query's own vector is in the index (and dropped), else 0

    @property
    def reranks(self) -> bool:
        return self.structure.compressed and self.exact is not None

    def found(self, params: ann.SearchParams, queries: np.ndarray | None = None) -> np.ndarray:
        queries = self.queries if queries is None else queries
        wanted = (self.k + self.extra) * (params.get(ann.RERANK_PARAMETER, 1) if self.reranks else 1)
        _, ids = ann.candidates(self.index, queries, wanted, self.metric, params)
        if self.reranks:
            _, ids = ann.rerank(queries, ids, self.exact, self.metric, self.k + self.extra)
        return ids

    def point(self, params: ann.SearchParams) -> Point:
        recall = ann.recall_at_k(_without_own(self.found(params), self.own, self.k), self.truth, self.k)
        return Point(str(params), round(recall, 4), round(self.latency(params), 3))

    def latency(self, params: ann.SearchParams) -> float:
        """Milliseconds per query, one query at a time on one thread (best of two passes)."""
        queries = self.queries[:TIMED_QUERIES]
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                for query in queries:
                    self.found(params, query[None])
                best = min(best, time.perf_counter() - start)
        finally:
            faiss.omp_set_num_threads(before)
        return 1000 * best / max(1, len(queries))

    def sweep(self, target: float) -> list[Point]:
        """For each re-ranking depth, the search effort from least to most, until recall reaches `target`."""
        name = "nprobe" if self.structure.nlist else "efSearch"
        values = ([n for n in NPROBES if n <= self.structure.nlist] if self.structure.nlist
                  else [e for e in EF_SEARCHES if e >= self.k])
        factors = K_FACTORS if self.reranks else (None,)
        curve = []
        for factor in factors:
            before = -1.0
            for value in values:
                settings = {name: value} | ({ann.RERANK_PARAMETER: factor} if factor else {})
                point = self.point(ann.SearchParams(tuple(sorted(settings.items()))))
                curve.append(point)
                if point.recall >= target or point.recall <= before + SATURATED:
                    break  # reached, or more effort no longer helps at this depth: the codes limit it
                before = point.recall
        return curve


@dataclass(frozen=True)
class Candidate:
    """One index type built on a collection and tuned: what notebook 02 plots."""

    factory: str
    build_seconds: float
    bytes_per_vector: int
    tuning: Tuning


def candidate_factories(count: int, dim: int) -> list[str]:
    """The index types worth comparing on `count` vectors: exact, HNSW, IVF-Flat and IVF-PQ where they can train."""
    factories = ["Flat", HNSW_FACTORY]
    if (nlist := ivf_lists(count)) >= 2:
        factories.append(f"IVF{nlist},Flat")
        compressed, structure = _compressed(count, dim, nlist, min(dim, PQ_DIM))
        if count >= structure.min_training:
            factories.append(compressed)
    return factories


def compare(
    store: VectorStore,
    ids: np.ndarray,
    exact: Callable[[np.ndarray], np.ndarray],
    factories: list[str],
    metric: ann.Metric = "l2",
    target: float = DEFAULT_TARGET_RECALL,
) -> list[Candidate]:
    """Build each of `factories` on the collection and tune it to `target`: the recall-against-speed curves of each."""
    results = []
    for factory in factories:
        structure = ann.describe(factory, store.dim, metric, len(store))
        start = time.perf_counter()
        index = ann.new_index(factory, store.dim, metric)
        trained = (ann.training_rows(len(store), structure, keep_out=TUNING_QUERIES) if not index.is_trained
                   else np.zeros(0, np.int64))
        ann.train(index, store, trained, metric)
        outside = query_rows(len(store), trained)
        inside = np.setdiff1d(np.arange(len(store)), outside, assume_unique=True)
        ann.add(index, store.subset(inside), ids[inside], metric)
        seconds = time.perf_counter() - start
        measured = tune(index, structure, store, ids, metric, exact, trained, target=target, requested=factory,
                        outside=outside)
        results.append(Candidate(factory, round(seconds, 3), structure.bytes_per_vector(), measured))
    return results

