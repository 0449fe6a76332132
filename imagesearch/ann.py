"""FAISS indexes of every kind behind one set of calls: metric, factory check, training, search parameters, re-ranking.

An index is described by a FAISS factory string: "Flat" is exact search;
"IVF4096,Flat", "HNSW32" and "PCAR256,IVF4096,PQ64" are approximate. This
module is what the rest of the package knows of FAISS:

- **Metric**, chosen when an index is built: "l2" (squared Euclidean distance
  between raw vectors, the seed's) or "cosine" (vectors normalised to unit
  length, searched by inner product; reported as the cosine distance 1 - cos).
  Either way a hit's `distance` is smaller for nearer images.
- **Factory check** (`describe`) before anything is trained: a string FAISS
  cannot build, or a collection too small for what it must learn (FAISS wants
  about 39 training vectors per centroid), is answered in one line that
  suggests a factory that fits.
- **Training in bounded memory** (`train`): a seeded sample, read from the
  collection's shards; a PCA or OPQ in front is trained on a smaller sample
  first, so that the coarse quantizer's larger sample is held already reduced.
- **Search parameters** (`SearchParams`): FAISS' `ParameterSpace` syntax
  ("nprobe=32,efSearch=64"), plus `k_factor`, the re-ranking depth. They are
  passed to FAISS per call (`faiss.SearchParameters`), never set on the shared
  index, so concurrent searches with different parameters do not interfere.
- **Re-ranking** (`search` with `exact`): an index that stores compressed
  codes returns k x k_factor candidates; their exact distances are computed
  from the full vectors, read from the collection's shards for this query
  only, and the k nearest kept. Resident memory stays at the codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import faiss
import numpy as np

from .errors import UserFacingError
from .retrieval import Space
from .vectors import CHUNK_ROWS, VectorStore

METRICS = {"l2": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT}
#: Where this module takes `metric`, it takes the name of one of METRICS or a `retrieval.Space` (a fitted whitening).
Metric = str | Space

#: FAISS warns below 39 training vectors per centroid (`ClusteringParameters.min_points_per_centroid`): fewer
#: leave centroids poorly placed. We refuse below it, before any training.
MIN_POINTS_PER_CENTROID = 39
#: A PCA or OPQ in front is trained on at least this many vectors per dimension it keeps (FAISS needs one; a
#: covariance estimated from barely more vectors than dimensions is mostly noise).
POINTS_PER_REDUCED_DIM = 4
#: Training samples hold up to this many vectors per centroid (FAISS' k-means subsamples to 256 anyway).
TRAINING_POINTS_PER_CENTROID = 64
#: A PCA or OPQ transform in front of an index is trained on at most this many vectors, a seeded sample.
TRANSFORM_TRAINING_VECTORS = 65_536

#: Search parameters this package passes to FAISS, and the one it applies itself.
INDEX_PARAMETERS = ("nprobe", "efSearch")
RERANK_PARAMETER = "k_factor"
#: Re-ranking reads at least this many candidates times k_factor, whatever k is asked for.
MIN_RERANK_K = 10


class IndexSpecError(UserFacingError, ValueError):
    """A factory string, metric or search parameter that cannot work here; the message says what would."""


@dataclass(frozen=True)
class Structure:
    """What a factory string builds, read from an (untrained) FAISS index of it."""

    factory: str
    dim: int
    nlist: int = 0  # inverted lists (0: not an IVF index)
    pq_centroids: int = 0  # centroids per product-quantizer sub-space (0: no PQ)
    hnsw: bool = False
    compressed: bool = False  # stores codes, not the vectors: distances are approximate until re-ranked
    code_bytes: int = 0  # bytes per stored vector, without its id
    reduced_dim: int = 0  # dimensions a trained transform in front (PCA, OPQ) keeps (0: none)

    @property
    def exact(self) -> bool:
        """Searches every vector with exact distances ("Flat")."""
        return not (self.nlist or self.hnsw or self.compressed)

    @property
    def centroids(self) -> int:
        """The most centroids one k-means of training learns (IVF lists or PQ codes): what sets the sample's size."""
        return max(self.nlist, self.pq_centroids)

    @property
    def min_training(self) -> int:
        """Vectors training needs: 39 per centroid, and a PCA or OPQ POINTS_PER_REDUCED_DIM per dimension it keeps."""
        return max(MIN_POINTS_PER_CENTROID * self.centroids, POINTS_PER_REDUCED_DIM * self.reduced_dim)

    @property
    def can_remove(self) -> bool:
        return not self.hnsw

    @property
    def parameters(self) -> tuple[str, ...]:
        """The search parameters this index takes."""
        names = (("nprobe",) if self.nlist else ()) + (("efSearch",) if self.hnsw else ())
        return names + ((RERANK_PARAMETER,) if self.compressed else ())

    def bytes_per_vector(self) -> int:
        """Resident bytes per stored vector: its code and its 8-byte id (and HNSW's links, about 2M ids of 4 bytes)."""
        links = 2 * 32 * 4 if self.hnsw else 0
        return self.code_bytes + 8 + links


def describe(factory: str, dim: int, metric: Metric = "l2", count: int | None = None) -> Structure:
    """Check `factory` (and, given `count`, that a collection that size can train it) before any training.

    Raises `IndexSpecError`, one line naming a factory that would fit.
    """
    check_metric(metric)
    try:
        index = faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as error:
        reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", str(error).splitlines()[0])
        raise IndexSpecError(
            f"cannot build a FAISS index from {factory!r} for {dim}-d vectors ({reason}); "
            f"try {suggest_factory(count or 0, dim)!r}, or 'auto' to let the collection's size decide"
        ) from None
    structure = _structure(factory, index)
    if count is not None and not index.is_trained and count < structure.min_training:
        learns = f"learns {structure.centroids} centroids" + (
            f" and a {structure.reduced_dim}-d projection" if structure.reduced_dim else "")
        raise IndexSpecError(
            f"{factory!r} {learns}, which needs at least {structure.min_training} vectors ({MIN_POINTS_PER_CENTROID} "
            f"per centroid{', 4 per projected dimension' if structure.reduced_dim else ''}) and the collection has "
            f"{count}; try {suggest_factory(count, dim)!r}, or 'auto'"
        )
    return structure


def suggest_factory(count: int, dim: int) -> str:
    """A factory that a collection of `count` vectors can train: exact search when it is small, else IVF-Flat."""
    nlist = 1 << max(0, int(np.log2(max(1, count // (4 * MIN_POINTS_PER_CENTROID)))))
    return "Flat" if nlist < 16 else f"IVF{min(nlist, 1 << int(np.log2(16 * np.sqrt(count))))},Flat"


def check_metric(metric: Metric) -> None:
    if isinstance(metric, Space):
        return
    if metric not in METRICS:
        raise IndexSpecError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def _structure(factory: str, index: faiss.Index) -> Structure:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    pq_centroids = code_bytes = 0
    ivf = ivf_of(inner)
    nlist = ivf.nlist if ivf is not None else 0
    quantizer = getattr(faiss.downcast_index(ivf) if ivf is not None else inner, "pq", None)
    if quantizer is not None:
        pq_centroids = 1 << quantizer.nbits
    hnsw = isinstance(inner, faiss.IndexHNSW)
    storage = faiss.downcast_index(inner.storage) if hnsw else (ivf if ivf is not None else inner)
    code_bytes = getattr(storage, "code_size", 4 * index.d)
    full = 4 * index.d
    transform = isinstance(index, faiss.IndexPreTransform)
    compressed = transform or code_bytes < full
    reduced = inner.d if transform else 0
    return Structure(factory, index.d, nlist, pq_centroids, hnsw, compressed, int(code_bytes), reduced)


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def new_index(factory: str, dim: int, metric: Metric = "l2") -> faiss.Index:
    """An empty index from `factory` that stores vectors under given ids (IVF natively; others in an IndexIDMap2).

    IVF indexes keep no id-to-list map: it would cost more resident memory
    than a compressed code. Vectors are read by id from the collection instead.
    """
    describe(factory, dim, metric)
    index = faiss.index_factory(dim, factory, faiss_metric(metric))
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if hasattr(inner, "do_polysemous_training"):
        # FAISS trains 8-bit PQ codes for polysemous search by default, which we never use: 4x the training time.
        inner.do_polysemous_training = False
    return index if ivf_of(index) is not None else faiss.IndexIDMap2(index)


def prepared(vectors: np.ndarray, metric: Metric) -> np.ndarray:
    """`vectors` as the index compares them: as they are for L2, unit length for cosine (a copy), whitened where the
    space is (see `retrieval.Space`)."""
    return Space.of(metric).prepare(vectors)


def faiss_metric(metric: Metric) -> int:
    """FAISS' metric constant for a metric name or a space."""
    return METRICS[Space.of(metric).metric]


def inner_product(metric: Metric) -> bool:
    """Whether the index ranks unit vectors by inner product (cosine), reported as 1 - cos."""
    return Space.of(metric).inner_product


def training_rows(count: int, structure: Structure, keep_out: int = 0, seed: int = 0) -> np.ndarray:
    """The rows a `structure` index is trained on: all of a small collection, else a seeded sample, sorted.

    At least `keep_out` rows are left out where the collection allows it
    (`structure.min_training` comes first), so that recall can be measured on
    vectors the index was not trained on.
    """
    wanted = max(structure.min_training, TRAINING_POINTS_PER_CENTROID * structure.centroids)
    wanted = min(wanted, max(structure.min_training, count - keep_out))
    if count <= wanted:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, wanted, replace=False))


def train(index: faiss.Index, store: VectorStore, rows: np.ndarray, metric: Metric) -> None:
    """Train `index` on `rows` of `store` without holding more of them at full size than a transform needs.

    A PCA or OPQ in front (`IndexPreTransform`) is trained first on up to
    TRANSFORM_TRAINING_VECTORS of the rows; the rows are then read a chunk at
    a time and transformed, and the index behind it trained on the reduced
    vectors: at 2048 to 256 dimensions, an eighth of the memory.
    """
    if index.is_trained:
        return
    target = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if not isinstance(target, faiss.IndexPreTransform):
        target.train(prepared(store.take(rows), metric))
        drop_precomputed_tables(index)
        return
    first = rows[np.linspace(0, len(rows) - 1, min(len(rows), TRANSFORM_TRAINING_VECTORS)).astype(int)]
    sample = prepared(store.take(first), metric)
    for number in range(target.chain.size()):
        transform = target.chain.at(number)
        transform.train(sample)
        sample = transform.apply(sample)
    del sample
    reduced = np.concatenate([_apply_chain(target, chunk) for chunk in _read(store, rows, metric)])
    inner = faiss.downcast_index(target.index)
    inner.train(reduced)
    target.is_trained = True
    index.is_trained = True
    drop_precomputed_tables(index)


def drop_precomputed_tables(index: faiss.Index) -> faiss.Index:
    """Free IVF-PQ's precomputed distance tables, and have FAISS not rebuild them; return `index`.

    FAISS keeps nlist x M x 256 floats to speed up L2 search by residual: at
    8,192 lists and 64-byte codes, 512 MiB, seven times the codes of a million
    vectors. Without them a probed list costs one small table per query
    instead, the same answers. Called after training and after reading.
    """
    ivf = ivf_of(index)
    if ivf is not None and isinstance(ivf := faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        ivf.use_precomputed_table = -1
        ivf.precomputed_table.resize(0)
    return index


def _apply_chain(index: faiss.IndexPreTransform, vectors: np.ndarray) -> np.ndarray:
    for number in range(index.chain.size()):
        vectors = index.chain.at(number).apply(vectors)
    return vectors


def _read(store: VectorStore, rows: np.ndarray, metric: Metric, chunk: int = 8192) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), chunk):
        yield prepared(store.take(rows[start : start + chunk]), metric)


def add(index: faiss.Index, store: VectorStore, ids: np.ndarray, metric: Metric, progress: bool = False) -> None:
    """Add the vectors of `store` under `ids`, a chunk at a time: they are never all in memory."""
    chunks = store.chunks()
    if progress and len(store) > 10 * CHUNK_ROWS:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=-(-len(store) // CHUNK_ROWS), desc="adding to the index", unit="chunk")
    for start, vectors in chunks:
        index.add_with_ids(prepared(vectors, metric), ids[start : start + len(vectors)])


def mergeable(index: faiss.Index) -> bool:
    """Whether copies of `index` that vectors were added to separately can be merged into it (`merge_into`): IVF
    indexes, which share the trained quantizer; not HNSW, whose graph links every vector, nor flat ones."""
    return ivf_of(index) is not None


def merge_into(index: faiss.Index, part: faiss.Index) -> None:
    """Move the vectors of `part` into `index`: `part` is a copy of `index` as it was trained, empty, that vectors
    were then added to (by another process, on another machine). Each inverted list of `part` is appended to
    `index`'s, so merging the parts of a collection in order gives the lists one add of it all gives.

    FAISS merges IVF indexes (`merge_from`), but its fast-scan lists (`BlockInvertedLists`, FAISS 1.15) need two
    repairs, made here: appended to a list that holds a multiple of a block's size in bytes, `add_entries` writes
    past the end of the list (heap corruption); and it leaves the new blocks' free slots uncleared, where a later
    add ORs its codes into whatever they held.
    """
    ivf, other = ivf_of(index), ivf_of(part)
    if ivf is None or other is None:
        raise ValueError("only IVF indexes can be merged")
    ivf, other = faiss.downcast_index(ivf), faiss.downcast_index(other)
    if (ivf.nlist, ivf.code_size, type(ivf)) != (other.nlist, other.code_size, type(other)) or not np.array_equal(
        ivf.quantizer.reconstruct_n(0, ivf.nlist), other.quantizer.reconstruct_n(0, other.nlist)
    ):
        raise ValueError("the part was not trained with this index's coarse quantizer: it cannot be merged")
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, faiss.BlockInvertedLists):
        _append_blocks(lists, faiss.downcast_InvertedLists(other.invlists), ivf.get_CodePacker())
        ivf.ntotal += other.ntotal
    else:
        ivf.merge_from(other, 0)
    index.ntotal = ivf.ntotal  # an IndexPreTransform in front counts the vectors too


def _append_blocks(lists: faiss.BlockInvertedLists, other: faiss.BlockInvertedLists, packer: faiss.CodePacker
                   ) -> None:
    per_block, block_bytes = lists.n_per_block, lists.block_size
    keep = _slot_masks(packer, per_block, block_bytes)
    for number in range(lists.nlist):
        count, held = other.list_size(number), lists.list_size(number)
        if count == 0:
            continue
        if held % per_block:  # a partial last block: FAISS repacks the codes one by one into it, correctly
            lists.add_entries(number, count, other.get_ids(number), other.get_codes(number))
        else:  # whole blocks on both sides: the codes are copied as they are
            lists.resize(number, held + count)
            ids = faiss.rev_swig_ptr(lists.get_ids(number), held + count)
            ids[held:] = faiss.rev_swig_ptr(other.get_ids(number), count)
            start, size = held // per_block * block_bytes, -(-count // per_block) * block_bytes
            codes = faiss.rev_swig_ptr(lists.get_codes(number), start + size)
            codes[start:] = faiss.rev_swig_ptr(other.get_codes(number), size)
        # FAISS' add ORs codes into the free slots of a list's last block, which must hold zeros: add_entries
        # leaves there whatever the memory held (its new blocks are not cleared).
        total = held + count
        if total % per_block:
            last = total // per_block * block_bytes
            codes = faiss.rev_swig_ptr(lists.get_codes(number), last + block_bytes)
            codes[last:] &= keep[total % per_block]


def _slot_masks(packer: faiss.CodePacker, per_block: int, block_bytes: int) -> np.ndarray:
    """keep[s]: the bits of a block that its first s slots' codes occupy (a fast-scan block interleaves them)."""
    keep = np.zeros((per_block + 1, block_bytes), np.uint8)
    ones = np.full(packer.code_size, 0xFF, np.uint8)
    for slot in range(per_block):
        block = np.zeros((1, block_bytes), np.uint8)
        packer.pack_1(ones, slot, block)
        keep[slot + 1] = keep[slot] | block[0]
    return keep


def remove(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove the vectors stored under `ids`; return how many were.

    FAISS 1.15 leaves a removed vector's 4-bit codes in the freed slots of a
    fast-scan list's last block (`BlockInvertedLists`, 32 codes interleaved
    per block), and a later add ORs new codes into those slots: the vectors
    added after a removal were then found by other codes' distances (13% of
    them no longer found themselves in a small experiment). Each list's last
    block is packed again here, from its live codes only: about half a second
    at 8,192 lists, whatever the number removed.
    """
    removed = index.remove_ids(np.asarray(ids, dtype=np.int64))
    ivf = ivf_of(index)
    fast_scan = faiss.downcast_index(ivf) if ivf is not None else None
    if removed and isinstance(fast_scan, faiss.IndexIVFFastScan):
        _repack_last_blocks(fast_scan)
    return removed


def _repack_last_blocks(ivf: faiss.IndexIVFFastScan) -> None:
    lists, packer = faiss.downcast_InvertedLists(ivf.invlists), ivf.get_CodePacker()
    per_block, block_bytes = lists.n_per_block, lists.block_size
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size % per_block == 0:
            continue  # no partial block, no free slot
        start = size // per_block * block_bytes
        block = faiss.rev_swig_ptr(lists.get_codes(number), start + block_bytes)[start:][None]  # a view
        live = [packer.unpack_1(block, slot) for slot in range(size % per_block)]
        block[:] = 0
        for slot, code in enumerate(live):
            packer.pack_1(code, slot, block)


@dataclass(frozen=True)
class SearchParams:
    """Search parameters, written as FAISS' `ParameterSpace` strings: "nprobe=32,k_factor=8".

    `nprobe` (inverted lists visited) and `efSearch` (HNSW's candidate list)
    go to FAISS; `k_factor` is the re-ranking depth: k x k_factor candidates
    are re-ranked by their exact vectors.
    """

    values: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, text: str | SearchParams | None) -> SearchParams:
        if isinstance(text, SearchParams):
            return text
        values = {}
        for part in filter(None, (text or "").replace(" ", "").split(",")):
            name, equals, value = part.partition("=")
            if name not in (*INDEX_PARAMETERS, RERANK_PARAMETER) or not equals:
                raise IndexSpecError(
                    f"cannot read the search parameter {part!r}; write name=value pairs separated by commas, "
                    f"with names among {', '.join((*INDEX_PARAMETERS, RERANK_PARAMETER))} (e.g. nprobe=32,k_factor=8)"
                )
            if not value.isdigit() or int(value) < 1:
                raise IndexSpecError(f"the search parameter {name} must be a whole number of at least 1, not {value!r}")
            values[name] = int(value)
        return cls(tuple(sorted(values.items())))

    def __str__(self) -> str:
        return ",".join(f"{name}={value}" for name, value in self.values)

    def get(self, name: str, default: int | None = None) -> int | None:
        return dict(self.values).get(name, default)

    def merged(self, overrides: str | SearchParams | None) -> SearchParams:
        """These parameters, with those of `overrides` in place of their own."""
        return SearchParams(tuple(sorted((dict(self.values) | dict(SearchParams.parse(overrides).values)).items())))

    def check(self, structure: Structure) -> SearchParams:
        """Refuse parameters that `structure` has no use for (one line naming those it takes)."""
        unused = [name for name, _ in self.values if name not in structure.parameters]
        if unused:
            takes = ", ".join(structure.parameters) or "none"
            raise IndexSpecError(
                f"a {structure.factory!r} index takes no {', '.join(unused)} (its search parameters: {takes})"
            )
        if (nprobe := self.get("nprobe")) and nprobe > structure.nlist:
            raise IndexSpecError(f"nprobe={nprobe} is more than the index's {structure.nlist} lists")
        return self


def faiss_parameters(index: faiss.Index, params: SearchParams) -> tuple[faiss.SearchParameters | None, list]:
    """The `faiss.SearchParameters` for `index` (None: FAISS' defaults), and the objects it points to.

    Keep the list alive until the search returns: FAISS holds raw pointers to
    nested parameters.
    """
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    pretransform = isinstance(inner, faiss.IndexPreTransform)
    if pretransform:
        inner = faiss.downcast_index(inner.index)
    if (nprobe := params.get("nprobe")) is not None and ivf_of(inner) is not None:
        own = faiss.SearchParametersIVF(nprobe=nprobe)
    elif (ef := params.get("efSearch")) is not None and isinstance(inner, faiss.IndexHNSW):
        own = faiss.SearchParametersHNSW(efSearch=ef)
    else:
        return None, []
    if not pretransform:
        return own, [own]
    wrapper = faiss.SearchParametersPreTransform(index_params=own)
    return wrapper, [wrapper, own]


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    metric: Metric,
    params: SearchParams = SearchParams(),
    exact: Callable[[np.ndarray], np.ndarray] | None = None,
    compressed: bool = False,
    *,
    stored: bool = False,
    is_prepared: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest ids of each query and their distances (smaller is nearer), nearest first; -1 pads.

    With `exact` (ids -> their full vectors) and a `compressed` index, the
    index is asked for k x k_factor candidates, which are ranked again by
    their exact distances: the distances returned are then exact too.
    `exact` returns embeddings as embedded, or, with `stored`, the vectors the
    index holds (prepared already: blended by `retrieval.Augmentation`, say). With `is_prepared`, the queries
    are in the index's space already (expanded queries are).
    """
    queries = np.atleast_2d(queries) if is_prepared else prepared(np.atleast_2d(queries), metric)
    if exact is not None and compressed:
        # The depth is counted from k = 10 at least: recall is tuned at k = 10, and a smaller k must not re-rank less.
        depth = max(k, MIN_RERANK_K) * params.get(RERANK_PARAMETER, 1)
        _, ids = candidates(index, queries, depth, metric, params)
        return rerank(queries, ids, exact, metric, k, stored=stored)
    return candidates(index, queries, k, metric, params)


def candidates(
    index: faiss.Index, queries: np.ndarray, count: int, metric: Metric, params: SearchParams = SearchParams()
) -> tuple[np.ndarray, np.ndarray]:
    """What the index itself answers: `count` ids per query and their (approximate) distances, smaller nearer.

    `queries` must be `prepared` already.
    """
    faiss_params, keep_alive = faiss_parameters(index, params)
    distances, ids = index.search(queries, count, params=faiss_params)
    del keep_alive
    if inner_product(metric):
        distances = np.where(ids >= 0, 1 - distances, np.inf).astype(np.float32)
    return distances, ids


#: Candidates whose full vectors are read at once when many queries are re-ranked together: 32 MiB at 2048-d.
RERANK_BLOCK = 4096


def rerank(
    queries: np.ndarray, candidates: np.ndarray, exact: Callable[[np.ndarray], np.ndarray], metric: Metric, k: int,
    *, stored: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest of each query's `candidates` ids (-1: none) by exact distance, with those distances.

    `queries` must be `prepared`; `exact` returns the full vectors of ids. Queries are taken a block at a time,
    so that no more than RERANK_BLOCK candidates' vectors are in memory at once.
    """
    step = max(1, RERANK_BLOCK // max(1, candidates.shape[1]))
    parts = [_rerank_block(queries[start : start + step], candidates[start : start + step], exact, metric, k, stored)
             for start in range(0, len(queries), step)]
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


def _rerank_block(
    queries: np.ndarray, candidates: np.ndarray, exact: Callable[[np.ndarray], np.ndarray], metric: Metric, k: int,
    stored: bool,
) -> tuple[np.ndarray, np.ndarray]:
    found = candidates >= 0
    vectors = exact(candidates[found])
    vectors = np.ascontiguousarray(vectors, np.float32) if stored else prepared(vectors, metric)
    rows = np.nonzero(found)[0]
    if inner_product(metric):
        exact_distances = 1 - np.einsum("ij,ij->i", vectors, queries[rows])
    else:
        gaps = vectors - queries[rows]
        exact_distances = np.einsum("ij,ij->i", gaps, gaps)
    distances = np.full(candidates.shape, np.inf, dtype=np.float32)
    distances[found] = exact_distances
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(np.where(found, candidates, -1), order, axis=1)
    return np.take_along_axis(distances, order, axis=1), ids


def exact_search(
    store: VectorStore, ids: np.ndarray, queries: np.ndarray, k: int, metric: Metric, chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """The exact `k` nearest ids (and distances) of `queries` among `store`'s vectors, reading it a chunk at a time.

    The reference an approximate index's recall is measured against.
    """
    queries = prepared(np.atleast_2d(queries), metric)
    best_distances = np.full((len(queries), 0), np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start, vectors in store.chunks(chunk):
        distances, rows = faiss.knn(queries, prepared(vectors, metric), min(k, len(vectors)),
                                    metric=faiss_metric(metric))
        if inner_product(metric):
            distances = 1 - distances
        merged_distances = np.concatenate([best_distances, distances], axis=1)
        merged_ids = np.concatenate([best_ids, ids[start + rows]], axis=1)
        order = np.argsort(merged_distances, axis=1, kind="stable")[:, :k]
        best_distances = np.take_along_axis(merged_distances, order, axis=1)
        best_ids = np.take_along_axis(merged_ids, order, axis=1)
    return best_distances, best_ids


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true `k` nearest ids (rows of `truth`) among its first `k` found.

    -1 marks "no id": one in `found` is never a hit; one in `truth` counts as a miss (give `k` no larger than the
    collection, and there is none).
    """
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=1).sum() / truth.size) if truth.size else 1.0
