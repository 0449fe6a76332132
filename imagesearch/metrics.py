"""Retrieval metrics as pure functions over the rows a search returned and the label codes of queries and items.

The arrays are those of a FAISS search, mapped to rows of the collection:
`neighbours` is `(n, k)`, the rows retrieved for each of n queries in rank
order, -1 (any negative) where the index returned fewer than k, which counts
as a miss. `query_codes` is the label code of each query, `item_codes` that of
each row of the collection (-1: unlabelled, as `labels.Labels.codes`). The
queries are usually the collection itself, each searched without itself: the
caller leaves a query's own row out of its `neighbours`.

A retrieved item is relevant when it shares the query's label. R, a query's
`relevant` count, is how many *other* items share its label. A query that is
unlabelled, or whose label no other item has (R = 0), has nothing to find: its
per-query scores are NaN, and the means leave it out.

Ranks are all that count: two neighbours at the same distance score as the
index ordered them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def relevant_counts(query_codes: np.ndarray, item_codes: np.ndarray, query_in_items: bool = True) -> np.ndarray:
    """How many other items share each query's label (int64; 0 for an unlabelled query).

    With `query_in_items` (the queries are items of the collection) the query
    itself is not counted.
    """
    query_codes, item_codes = _codes(query_codes), _codes(item_codes)
    members = np.bincount(item_codes[item_codes >= 0], minlength=int(query_codes.max(initial=-1)) + 1)
    labelled = query_codes >= 0
    counts = np.zeros(len(query_codes), np.int64)
    counts[labelled] = members[query_codes[labelled]] - int(query_in_items)
    return np.maximum(counts, 0)


def relevance(neighbours: np.ndarray, query_codes: np.ndarray, item_codes: np.ndarray, k: int) -> np.ndarray:
    """`(n, k)` booleans: whether each of the first k neighbours shares its query's label (missing ones do not)."""
    neighbours, query_codes, item_codes = np.asarray(neighbours), _codes(query_codes), _codes(item_codes)
    _check(neighbours, query_codes, item_codes, k)
    top = neighbours[:, :k]
    found = top >= 0
    labels = np.where(found, item_codes[np.where(found, top, 0)], -1)
    return found & (labels == query_codes[:, None]) & (query_codes[:, None] >= 0)


def precision_at_k(
    neighbours: np.ndarray, query_codes: np.ndarray, item_codes: np.ndarray, k: int,
    relevant: np.ndarray | None = None,
) -> np.ndarray:
    """Per query, the fraction of its first k neighbours that share its label (NaN where R = 0).

    The denominator is always k, so a query whose label has R < k other
    members scores at most R / k however good the search.
    `relevant` is R per query, `relevant_counts(query_codes, item_codes)` when
    not given (the queries are the items).
    """
    return _precision(relevance(neighbours, query_codes, item_codes, k), _relevant(relevant, query_codes, item_codes))


def recall_at_k(
    neighbours: np.ndarray, query_codes: np.ndarray, item_codes: np.ndarray, k: int,
    relevant: np.ndarray | None = None,
) -> np.ndarray:
    """Per query, the fraction of its R other label members found among its first k neighbours (NaN where R = 0).

    The denominator is R, all the other members, not min(R, k): with R > k,
    recall@k is at most k / R.
    """
    return _recall(relevance(neighbours, query_codes, item_codes, k), _relevant(relevant, query_codes, item_codes))


def average_precision_at_k(
    neighbours: np.ndarray, query_codes: np.ndarray, item_codes: np.ndarray, k: int,
    relevant: np.ndarray | None = None,
) -> np.ndarray:
    """Per query, the average precision of its first k neighbours, AP@k (NaN where R = 0).

        AP@k = sum over ranks i = 1..k of P@i * rel_i, divided by min(R, k)

    where rel_i is 1 when the neighbour at rank i shares the query's label and
    P@i is the precision of the first i. Dividing by min(R, k), not R, makes a
    perfect list score 1.0 even when the label has more than k other members,
    and when it has fewer: the normalisation of `apk` in Ben Hamner's
    ml_metrics (Kaggle's MAP@k) and of mAP@100 in the Google Landmark
    Retrieval challenges (Weyand et al., "Google Landmarks Dataset v2", CVPR 2020).
    Its mean over queries is mAP@k.
    """
    return _average_precision(
        relevance(neighbours, query_codes, item_codes, k), _relevant(relevant, query_codes, item_codes)
    )


# Each from the (n, k) relevance of the first k neighbours and R per query; the public functions above, and
# `score`, which finds the relevance once at its largest k and reads the first columns for the smaller ones.


def _precision(rel: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    return _excluded(rel.sum(axis=1) / rel.shape[1], relevant)


def _recall(rel: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    return _excluded(rel.sum(axis=1) / np.maximum(relevant, 1), relevant)


def _average_precision(rel: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    k = rel.shape[1]
    precision_at_each = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    total = (precision_at_each * rel).sum(axis=1)
    return _excluded(total / np.maximum(np.minimum(relevant, k), 1), relevant)


def mean_score(per_query: np.ndarray) -> float:
    """The mean of per-query scores over the queries evaluated (NaN ones left out); NaN when there are none."""
    per_query = np.asarray(per_query, dtype=np.float64)
    kept = per_query[~np.isnan(per_query)]
    return float(kept.mean()) if kept.size else float("nan")


def label_means(per_query: np.ndarray, query_codes: np.ndarray, label_count: int) -> np.ndarray:
    """The mean score of each label's evaluated queries, by code (NaN for a label with none)."""
    per_query, query_codes = np.asarray(per_query, dtype=np.float64), _codes(query_codes)
    kept = ~np.isnan(per_query) & (query_codes >= 0)
    sums = np.bincount(query_codes[kept], weights=per_query[kept], minlength=label_count)
    counts = np.bincount(query_codes[kept], minlength=label_count)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True, eq=False)
class Scores:
    """Precision, recall and mAP at each k: over all evaluated queries, and per label.

    `overall` maps "precision@5", "recall@5", "mAP@5"... to means over the
    evaluated queries. `per_label` is a table as columns (a dict of equal-length
    arrays): "label", "members" (items with the label), "queries" (evaluated
    queries with it), then the same metric names; one row per label with at
    least one evaluated query, in code order. `rows()` gives it as dicts.
    """

    ks: tuple[int, ...]
    overall: dict[str, float]
    per_label: dict[str, np.ndarray]
    evaluated: int  # queries scored
    unlabelled: int  # queries left out: they have no label
    alone: int  # queries left out: no other item shares their label (R = 0)

    @property
    def excluded(self) -> int:
        return self.unlabelled + self.alone

    def rows(self) -> list[dict[str, object]]:
        """The per-label table as one dict per label, with plain Python values (for a notebook table or JSON)."""
        columns = {name: values.tolist() for name, values in self.per_label.items()}
        return [dict(zip(columns, row)) for row in zip(*columns.values())]

    def summary(self) -> str:
        """At the largest k, e.g. "precision@10 0.812, recall@10 0.406, mAP@10 0.774 over 918 queries; 2 left out
        (2 alone in their label)"."""
        if not self.evaluated:
            return f"no query could be evaluated: {self.unlabelled} unlabelled, {self.alone} alone in their label"
        k = self.ks[-1]
        means = ", ".join(f"{name}@{k} {self.overall[f'{name}@{k}']:.3f}" for name in ("precision", "recall", "mAP"))
        left_out = [f"{count} {why}" for count, why in ((self.unlabelled, "unlabelled"),
                                                        (self.alone, "alone in their label")) if count]
        why = f" ({', '.join(left_out)})" if left_out else ""
        return f"{means} over {self.evaluated} queries; {self.excluded} left out{why}"


def score(
    neighbours: np.ndarray,
    query_codes: np.ndarray,
    item_codes: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    relevant: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
) -> Scores:
    """Score a search: precision@k, recall@k and mAP@k for each k in `ks`, overall and per label.

    Args:
        neighbours: `(n, max(ks))` rows retrieved per query, best first; -1 for none.
        query_codes: `(n,)` label code of each query (-1: unlabelled).
        item_codes: label code of each row of the collection.
        ks: the cut-offs, each at most `neighbours.shape[1]`.
        relevant: R per query; `relevant_counts(query_codes, item_codes)` when not given (the queries are items).
        label_names: the label of each code (`Labels.classes`), for the table; the codes themselves otherwise.
    """
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks:
        raise ValueError("ks is empty: give at least one cut-off, e.g. ks=(1, 5, 10)")
    query_codes, item_codes = _codes(query_codes), _codes(item_codes)
    relevant = _relevant(relevant, query_codes, item_codes)
    rel = relevance(neighbours, query_codes, item_codes, ks[-1])
    metrics = {"precision": _precision, "recall": _recall, "mAP": _average_precision}
    per_query = {f"{name}@{k}": metric(rel[:, :k], relevant) for k in ks for name, metric in metrics.items()}
    label_count = int(max(query_codes.max(initial=-1), item_codes.max(initial=-1))) + 1
    evaluated = (query_codes >= 0) & (relevant > 0)
    queries = np.bincount(query_codes[evaluated], minlength=label_count)
    shown = np.flatnonzero(queries)
    names = np.asarray(label_names, dtype=object) if label_names is not None else np.arange(label_count)
    if len(names) < label_count:
        raise ValueError(f"label_names has {len(names)} names for codes up to {label_count - 1}: "
                         "pass the labels' classes (Labels.classes)")
    per_label = {
        "label": names[shown],
        "members": np.bincount(item_codes[item_codes >= 0], minlength=label_count)[shown],
        "queries": queries[shown],
        **{name: label_means(values, query_codes, label_count)[shown] for name, values in per_query.items()},
    }
    return Scores(
        ks=ks,
        overall={name: mean_score(values) for name, values in per_query.items()},
        per_label=per_label,
        evaluated=int(np.count_nonzero(evaluated)),
        unlabelled=int(np.count_nonzero(query_codes < 0)),
        alone=int(np.count_nonzero((query_codes >= 0) & (relevant == 0))),
    )


def _codes(codes: np.ndarray) -> np.ndarray:
    """Label codes as a flat int64 array (an empty list too)."""
    return np.asarray(codes, dtype=np.int64)


def _relevant(relevant: np.ndarray | None, query_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """R per query: as given, or counted among the items when not; 0 for an unlabelled query either way."""
    if relevant is None:
        return relevant_counts(query_codes, item_codes)
    relevant = np.asarray(relevant, dtype=np.int64)
    if relevant.shape != np.shape(query_codes):
        raise ValueError(f"relevant has shape {relevant.shape}, the queries {np.shape(query_codes)}: "
                         "give one count per query")
    return np.where(_codes(query_codes) >= 0, relevant, 0)  # an unlabelled query has nothing to find, whatever R says


def _excluded(per_query: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """`per_query` as float64, NaN where a query has nothing to find."""
    return np.where(relevant > 0, per_query, np.nan).astype(np.float64)


def _check(neighbours: np.ndarray, query_codes: np.ndarray, item_codes: np.ndarray, k: int) -> None:
    """ValueError unless the arrays fit together and k is a cut-off they allow."""
    if neighbours.ndim != 2 or query_codes.shape != (len(neighbours),):
        raise ValueError(f"neighbours has shape {neighbours.shape} and query_codes {query_codes.shape}: "
                         "give an (n, k) array of rows and one code per query")
    if not 1 <= k <= neighbours.shape[1]:
        raise ValueError(f"k={k} but there are {neighbours.shape[1]} neighbours per query: search with k >= {k}")
    if neighbours.size and neighbours.max() >= len(item_codes):
        raise ValueError(f"neighbours name row {neighbours.max()}, item_codes has {len(item_codes)}: "
                         "give the codes of every row of the collection")
