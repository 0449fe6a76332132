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

import numpy as np

from . import ann, tuning
from .ann import SearchParams
from .collection import Embeddings
from .index_files import METADATA_FILE, load_index, load_previous_index, save_index
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

    if previous is not None:  # checked above without the count, which only a build from scratch must train
        structure = ann.describe(choice.factory, dim, metric, count)  # too few vectors to train: refused here
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
    ann.add(index, store.subset(inside), ids[inside], metric, progress)
    changes = IndexChanges(added=count, removed=len(previous) if previous else 0, rebuilt=True)
    search_index = SearchIndex(index, changes=changes, **kind)
    if not structure.exact:
        _say(progress, f"tuning the search parameters to recall@{tuning.RECALL_K} {target_recall} on "
                       f"{len(outside):,} held-out vectors")
    measured = tuning.tune(index, structure, store, ids, metric, search_index.vectors_of, trained,
                           target=target_recall, params=params, requested=factory, reasons=choice.reasons,
                           outside=outside)
    ann.add(index, store.subset(outside), ids[outside], metric)
    search_index.params, search_index.tuning = SearchParams.parse(measured.params), measured
    return search_index


def _say(progress: bool, text: str) -> None:
    """Tell the user, on stderr beside the progress bars, which step of a long build is running."""
    if progress:
        print(f"{text} ...", file=sys.stderr, flush=True)


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
        ann.remove(previous.index, stale)
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
