"""Building and updating the FAISS index over a collection's embeddings.

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

This module is the index's public face: what it is (`SearchIndex`, in
`search_index`) and how it is saved and opened (`save_index`, `load_index`, in
`index_files`) are imported from here too.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import numpy as np

from . import ann, tuning
from .ann import SearchParams
from .collection import Embeddings
from .index_files import METADATA_FILE, load_index, load_previous_index, save_index
from .retrieval import DEFAULT_RETRIEVAL, Augmentation, Retrieval, RetrievalError, Space, Whitening, neighbour_lists
from .search_index import CollectionVersion, Hit, IndexChanges, SearchIndex, held_ids

__all__ = [
    "METADATA_FILE",
    "RETRAIN_GROWTH",
    "CollectionVersion",
    "Hit",
    "IndexChanges",
    "SearchIndex",
    "build_index",
    "compare_indexes",
    "held_ids",
    "load_index",
    "load_previous_index",
    "save_index",
]


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
    retrieval: str | Retrieval | None = None,
    metric: str | None = None,
    params: str | SearchParams | None = None,
    target_recall: float = tuning.DEFAULT_TARGET_RECALL,
    memory_budget: int | str = tuning.DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
    add_vectors: Callable[..., None] = ann.add,
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

    `retrieval` says how vectors are compared (`retrieval.Retrieval`, or its
    text: "plain", the seed's L2 and for now the default; "recommended"; or parts such as
    "cosine,whiten,dba=5,qe=2"). `metric` alone ("l2" or "cosine") means that
    metric and nothing else. Whitening is fitted on the collection when the
    index is built from scratch and kept through updates in place; the
    augmentation is kept current by updates (`_augment_update`).

    `add_vectors` adds the collection's vectors to the trained index, as `ann.add` does, here; pass
    `distributed.add_on_ray` to add them in parallel on a Ray cluster (each part to a copy of the trained index,
    the copies merged), for the same index.
    """
    config = configuration(retrieval, metric)
    metric = config.metric
    budget = tuning.parse_memory(memory_budget)
    count, dim = len(embeddings), embeddings.embedder.dim
    if factory == "auto":
        choice = tuning.choose(count, dim, budget)
    else:
        choice = tuning.Choice(factory, ("the factory given",))
    structure = ann.describe(choice.factory, dim, metric, count if previous is None else None)
    built_from = CollectionVersion.of(embeddings.saved) if embeddings.is_saved else None
    kind = dict(records=embeddings.records, embedder=embeddings.embedder, factory=choice.factory,
                image_root=embeddings.image_root, collection=built_from, metric=metric, store=embeddings.store,
                retrieval=config)
    if (updated := _update(embeddings, factory, choice, previous, config, kind, progress)) is not None:
        if params is not None:  # new parameters: measure what they reach (on any vectors: which were trained on
            # is not known after an update), keeping what the index was trained from
            measured = tuning.tune(updated.index, structure, embeddings.store, embeddings.ids, updated.space,
                                   updated.vectors_of, np.zeros(0, np.int64), params=params, requested=factory,
                                   reasons=choice.reasons)
            before = updated.tuning
            measured = dataclasses.replace(measured, held_out=False, trained_on=before.trained_on,
                                           trained_at=before.trained_at)
            updated.params, updated.tuning = SearchParams.parse(measured.params), measured
        return updated

    if previous is not None:  # checked above without the count, which only a build from scratch must train
        structure = ann.describe(choice.factory, dim, metric, count)  # too few vectors to train: refused here
    whitening = None
    if config.whiten:
        _say(progress, f"fitting the whitening on {count:,} vectors")
        whitening = Whitening.fit(lambda: (Space.of("cosine").prepare(chunk)
                                           for _, chunk in embeddings.store.chunks()))
    space = Space.of(metric) if whitening is None else Space(metric, whitening)
    metric = space
    index = ann.new_index(choice.factory, dim, metric)
    trained = (ann.training_rows(count, structure, keep_out=tuning.TUNING_QUERIES) if not index.is_trained
               else np.zeros(0, np.int64))
    if len(trained):
        _say(progress, f"training {choice.factory} on {len(trained):,} of the {count:,} vectors "
                       "(k-means: minutes at a million)")
    ann.train(index, embeddings.store, trained, metric)
    # Tuned on vectors it does not hold yet, searched as outside photos are; added once it is tuned.
    store, ids = embeddings.store, embeddings.ids
    outside = tuning.query_rows(count, trained)
    inside = np.setdiff1d(np.arange(count), outside, assume_unique=True)
    add_vectors(index, store.subset(inside), ids[inside], metric, progress)
    changes = IndexChanges(added=count, removed=len(previous) if previous else 0, rebuilt=True)
    search_index = SearchIndex(index, changes=changes, whitening=whitening, **kind)
    if not structure.exact:
        _say(progress, f"tuning the search parameters to recall@{tuning.RECALL_K} {target_recall} on "
                       f"{len(outside):,} held-out vectors")
    measured = tuning.tune(index, structure, store, ids, metric, search_index.vectors_of, trained,
                           target=target_recall, params=params, requested=factory, reasons=choice.reasons,
                           outside=outside)
    ann.add(index, store.subset(outside), ids[outside], metric)
    search_index.params, search_index.tuning = SearchParams.parse(measured.params), measured
    if config.dba:
        _augment(search_index, progress)
    return search_index


def configuration(retrieval: str | Retrieval | None = None, metric: str | None = None) -> Retrieval:
    """The retrieval configuration `build_index` is asked for: `retrieval`, else plain `metric`, else the default."""
    if metric is not None:
        ann.check_metric(metric)
    if retrieval is None:
        return Retrieval(metric) if metric is not None else DEFAULT_RETRIEVAL
    config = Retrieval.parse(retrieval)
    if metric is not None and metric != config.metric:
        raise RetrievalError(f"the metric {metric!r} contradicts the retrieval configuration {str(config)!r} "
                             f"({config.metric}); give one of them")
    return config


#: Images searched for their neighbours at once when an index is augmented.
AUGMENT_CHUNK = 4096


def _augment(search_index: SearchIndex, progress: bool) -> None:
    """Database-side augmentation of a freshly built index: find each image's neighbours, then store each image
    as its blend with them (`retrieval.Augmentation`). One search per image, as many as one query each."""
    config, ids = search_index.retrieval, search_index.ids
    count = len(ids)
    _say(progress, f"augmenting the {count:,} vectors with their {config.dba} nearest (DBA: one search per image)")
    neighbours = np.full((count, config.dba), -1, np.int64)
    similarities = np.full((count, config.dba), -np.inf, np.float32)
    starts = range(0, count, AUGMENT_CHUNK)
    if progress and count > 10 * AUGMENT_CHUNK:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="finding neighbours", unit="chunk")
    for start in starts:
        chunk = ids[start : start + AUGMENT_CHUNK]
        found_rows = _neighbours(search_index, chunk, config.dba)[:2]
        neighbours[start : start + len(chunk)], similarities[start : start + len(chunk)] = found_rows
    search_index.augmentation = Augmentation(ids.copy(), neighbours, similarities, config.dba_alpha)
    search_index.index.reset()
    for start in range(0, count, AUGMENT_CHUNK):
        chunk = ids[start : start + AUGMENT_CHUNK]
        search_index.index.add_with_ids(search_index.stored_vectors_of(chunk), chunk)


#: An update finds an image's neighbours among this many times more candidates than it keeps (see `_neighbours`).
CANDIDATES_PER_NEIGHBOUR = 8


def _neighbours(search_index: SearchIndex, ids: np.ndarray, count: int, depth: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The `count` nearest other images of indexed images and their cosine similarities, as the augmentation
    table keeps them; and every candidate searched, ranked, with its similarity.

    Neighbours are nearest by the images' own (prepared, unblended) vectors. An
    augmented index holds blended vectors, which are near their own but not
    the same: the index proposes `depth` candidates, and their own vectors,
    read from the collection, rank them.
    """
    depth = min(len(search_index), depth or count + 1)
    space = search_index.space
    own = space.prepare(search_index.vectors_of(ids))
    _, found = search_index.search_ids(own, depth, expand=False, prepared=True)
    present = found >= 0
    similarities = np.full(found.shape, -np.inf, np.float32)
    candidates = space.prepare(search_index.vectors_of(found[present]))
    similarities[present] = np.einsum("ij,ij->i", candidates, own[np.nonzero(present)[0]])
    order = np.argsort(-similarities, axis=1, kind="stable")
    found, similarities = np.take_along_axis(found, order, axis=1), np.take_along_axis(similarities, order, axis=1)
    return (*neighbour_lists(ids, found, similarities, count), found, similarities)


def _augment_update(search_index: SearchIndex, table: Augmentation, stale: np.ndarray, added: np.ndarray) -> None:
    """Keep the augmentation current after `stale` ids were removed and `added` ids added (as plain vectors).

    The added images find their neighbours (among everything the index now
    holds); each takes its place in the lists of the images it is nearer to
    than their last neighbour (`Augmentation.admit`); images whose neighbours
    included a removed or changed image search for theirs again. Every image
    whose list changed is stored again, blended with its new neighbours.
    """
    count = table.count
    table = table.without(stale)
    search_index.augmentation = table
    depth = CANDIDATES_PER_NEIGHBOUR * (count + 1)
    if len(added):
        neighbours, similarities, found, found_similarities = _neighbours(search_index, added, count, depth)
        table = table.with_rows(added, neighbours, similarities)
        admitted = table.admit(added, found, found_similarities)
    else:
        admitted = np.zeros(0, np.int64)
    orphaned = np.setdiff1d(table.referring_to(stale), added) if len(stale) else np.zeros(0, np.int64)
    if len(orphaned):
        table = table.with_rows(orphaned, *_neighbours(search_index, orphaned, count, depth)[:2])
    search_index.augmentation = table
    refresh = np.unique(np.concatenate([added, admitted, orphaned]))
    if len(refresh):
        ann.remove(search_index.index, refresh)
        search_index.index.add_with_ids(search_index.stored_vectors_of(refresh), refresh)


def _say(progress: bool, text: str) -> None:
    """Tell the user, on stderr beside the progress bars, which step of a long build is running."""
    if progress:
        print(f"{text} ...", file=sys.stderr, flush=True)


def _update(
    embeddings: Embeddings, factory: str, choice: tuning.Choice, previous: SearchIndex | None, config: Retrieval,
    kind: dict, progress: bool,
) -> SearchIndex | None:
    """`previous` updated in place to `embeddings`, or None where it must be rebuilt (see `build_index`)."""
    base, held_version = embeddings.saved, previous.collection if previous else None
    if (
        previous is None or previous.read_only or previous.factory != choice.factory or previous.retrieval != config
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
    augmented = config.dba > 0 and (len(stale) or len(new_rows))
    if (len(stale) or augmented) and not previous.structure.can_remove:
        return None  # an augmented index stores an added image again, blended, once its neighbours are known
    if config.dba and previous.augmentation is None:
        return None
    space = previous.space
    if len(stale):
        ann.remove(previous.index, stale)
    ann.add(previous.index, embeddings.store.subset(new_rows), ids[new_rows], space)
    changes = IndexChanges(added=len(new_rows), removed=len(stale), rebuilt=False)
    updated = SearchIndex(previous.index, changes=changes, params=previous.params, tuning=measured,
                          whitening=previous.whitening, augmentation=previous.augmentation, **kind)
    if augmented:
        _say(progress, f"augmenting {len(new_rows):,} added vectors and the neighbours they change")
        _augment_update(updated, previous.augmentation, stale, ids[new_rows])
    return updated


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
