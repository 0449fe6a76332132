"""Retrieval metrics over (n, k) neighbour rows and label codes: precision@k, recall@k, AP@k and their means."""

from __future__ import annotations

import numpy as np
import pytest

from imagesearch.labels import labels_of
from imagesearch.metrics import (
    Scores,
    average_precision_at_k,
    label_means,
    mean_score,
    precision_at_k,
    recall_at_k,
    relevance,
    relevant_counts,
    score,
)

NAN = np.nan

# The worked example. Seven items, which are also the seven queries (each searched without itself):
#   rows 0 1 2: cat (code 0), so R = 2 other cats each
#   rows 3 4:   dog (code 1), so R = 1 other dog each
#   row 5:      owl (code 2), alone in its label: R = 0, not evaluated
#   row 6:      unlabelled (-1): not evaluated, and never a relevant answer
CODES = np.array([0, 0, 0, 1, 1, 2, -1])
NAMES = ["cat", "dog", "owl"]
NEIGHBOURS = np.array([
    #            relevant?  P@1  P@3  R@1  R@3  AP@1  AP@3
    [1, 3, 2],   # cat: 1 0 1   1    2/3  1/2  1    1     (1/1 + 2/3) / min(2, 3) = 5/6
    [3, 0, 4],   # cat: 0 1 0   0    1/3  0    1/2  0     (1/2) / 2 = 1/4
    [6, -1, -1],  # cat: 0 0 0  0    0    0    0    0     0: an unlabelled item, then two missing neighbours
    [4, 0, 1],   # dog: 1 0 0   1    1/3  1    1    1     (1/1) / min(1, 3) = 1: perfect, though R < k
    [0, 1, 3],   # dog: 0 0 1   0    1/3  0    1    0     (1/3) / 1 = 1/3
    [0, 1, 2],   # owl: R = 0   NaN everywhere
    [5, 0, 1],   # unlabelled:  NaN everywhere
])
# Means over the five evaluated queries:
#   P@1 = (1+0+0+1+0)/5 = 2/5          P@3 = (2/3+1/3+0+1/3+1/3)/5 = 1/3
#   R@1 = (1/2+0+0+1+0)/5 = 3/10       R@3 = (1+1/2+0+1+1)/5 = 7/10
#   mAP@1 = (1+0+0+1+0)/5 = 2/5        mAP@3 = (5/6+1/4+0+1+1/3)/5 = 29/60
# Per label at 3: cat P 1/3, R 1/2, mAP (5/6+1/4+0)/3 = 13/36; dog P 1/3, R 1, mAP (1+1/3)/2 = 2/3.


def per_query(values):
    return np.array(values, dtype=np.float64)


# --- R, the other items that share a query's label -------------------------------------------


def test_relevant_counts_leave_the_query_itself_out():
    assert relevant_counts(CODES, CODES).tolist() == [2, 2, 2, 1, 1, 0, 0]


def test_relevant_counts_of_queries_from_outside_the_collection_count_every_member():
    queries = np.array([0, 1, 2, 3, -1])  # code 3: a label no item has
    assert relevant_counts(queries, CODES, query_in_items=False).tolist() == [3, 2, 1, 0, 0]


def test_relevant_counts_are_int64_even_for_no_queries():
    counts = relevant_counts(np.array([], np.int64), CODES)
    assert counts.dtype == np.int64 and counts.shape == (0,)


# --- the per-query metrics on the worked example ---------------------------------------------


def test_relevance_marks_neighbours_that_share_the_query_label():
    assert relevance(NEIGHBOURS, CODES, CODES, 3).astype(int).tolist() == [
        [1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0],
    ]


def test_an_unlabelled_neighbour_of_an_unlabelled_query_is_not_relevant():
    codes = np.array([-1, -1, 0, 0])
    assert not relevance(np.array([[1], [0]]), codes[:2], codes, 1).any()


def test_precision_at_k_on_the_worked_example():
    np.testing.assert_allclose(precision_at_k(NEIGHBOURS, CODES, CODES, 1), per_query([1, 0, 0, 1, 0, NAN, NAN]))
    np.testing.assert_allclose(
        precision_at_k(NEIGHBOURS, CODES, CODES, 3), per_query([2 / 3, 1 / 3, 0, 1 / 3, 1 / 3, NAN, NAN])
    )


def test_recall_at_k_on_the_worked_example():
    np.testing.assert_allclose(recall_at_k(NEIGHBOURS, CODES, CODES, 1), per_query([1 / 2, 0, 0, 1, 0, NAN, NAN]))
    np.testing.assert_allclose(recall_at_k(NEIGHBOURS, CODES, CODES, 3), per_query([1, 1 / 2, 0, 1, 1, NAN, NAN]))


def test_average_precision_at_k_on_the_worked_example():
    np.testing.assert_allclose(
        average_precision_at_k(NEIGHBOURS, CODES, CODES, 1), per_query([1, 0, 0, 1, 0, NAN, NAN])
    )
    np.testing.assert_allclose(
        average_precision_at_k(NEIGHBOURS, CODES, CODES, 3), per_query([5 / 6, 1 / 4, 0, 1, 1 / 3, NAN, NAN])
    )


def test_per_query_metrics_are_float64_arrays_with_one_value_per_query():
    for metric in (precision_at_k, recall_at_k, average_precision_at_k):
        values = metric(NEIGHBOURS, CODES, CODES, 2)
        assert values.dtype == np.float64 and values.shape == (7,)


# --- the cases that decide the definitions ---------------------------------------------------


def test_a_perfect_list_for_a_label_with_fewer_than_k_other_members_has_ap_one():
    codes = np.array([0, 0, 0, 1, 1, 1, 1, 1])  # a cat has R = 2 other cats, k = 4
    neighbours = np.array([[1, 2, 3, 4]])
    assert average_precision_at_k(neighbours, codes[:1], codes, 4).tolist() == [1.0]
    assert recall_at_k(neighbours, codes[:1], codes, 4).tolist() == [1.0]
    assert precision_at_k(neighbours, codes[:1], codes, 4).tolist() == [0.5]  # at most R / k = 2/4


def test_a_perfect_list_for_a_label_with_more_than_k_other_members_has_ap_one():
    codes = np.zeros(10, np.int64)  # R = 9, k = 3
    neighbours = np.array([[1, 2, 3]])
    assert average_precision_at_k(neighbours, codes[:1], codes, 3).tolist() == [1.0]
    assert precision_at_k(neighbours, codes[:1], codes, 3).tolist() == [1.0]
    np.testing.assert_allclose(recall_at_k(neighbours, codes[:1], codes, 3), [3 / 9])  # at most k / R


def test_all_wrong_scores_zero_everywhere():
    codes = np.array([0, 0, 1, 1, 2, 2])
    neighbours = np.array([[2, 4], [3, 5], [0, 4], [1, 5], [0, 2], [1, 3]])
    for metric in (precision_at_k, recall_at_k, average_precision_at_k):
        assert metric(neighbours, codes, codes, 2).tolist() == [0.0] * 6


def test_missing_neighbours_count_as_misses_not_as_a_shorter_list():
    codes = np.array([0, 0, 0, 1])
    neighbours = np.array([[1, -1, -1]])  # the index found one neighbour of three
    assert precision_at_k(neighbours, codes[:1], codes, 3).tolist() == [1 / 3]
    assert recall_at_k(neighbours, codes[:1], codes, 3).tolist() == [1 / 2]
    assert average_precision_at_k(neighbours, codes[:1], codes, 3).tolist() == [1 / 2]  # (1/1) / min(2, 3)


def test_a_row_of_only_missing_neighbours_scores_zero():
    codes = np.array([0, 0])
    assert precision_at_k(np.array([[-1, -1]]), codes[:1], codes, 2).tolist() == [0.0]


def test_order_is_all_that_counts_swapping_two_tied_neighbours_changes_ap_only():
    # Two neighbours at the same distance may come in either order: the metrics see ranks, not distances.
    codes = np.array([0, 0, 1, 1])
    relevant_first, relevant_second = np.array([[1, 2]]), np.array([[2, 1]])
    for metric in (precision_at_k, recall_at_k):
        first, second = (metric(order, codes[:1], codes, 2).tolist() for order in (relevant_first, relevant_second))
        assert first == second
    assert average_precision_at_k(relevant_first, codes[:1], codes, 2).tolist() == [1.0]
    assert average_precision_at_k(relevant_second, codes[:1], codes, 2).tolist() == [1 / 2]  # (1/2) / min(1, 2)


def test_only_the_first_k_neighbours_count():
    codes = np.array([0, 0, 1])
    neighbours = np.array([[2, 1]])  # the relevant one is second
    assert precision_at_k(neighbours, codes[:1], codes, 1).tolist() == [0.0]
    assert precision_at_k(neighbours, codes[:1], codes, 2).tolist() == [0.5]


def test_unlabelled_queries_and_queries_alone_in_their_label_are_nan():
    for metric in (precision_at_k, recall_at_k, average_precision_at_k):
        values = metric(NEIGHBOURS, CODES, CODES, 3)
        assert np.isnan(values[5]) and np.isnan(values[6])
        assert not np.isnan(values[:5]).any()


def test_queries_from_outside_the_collection_take_their_relevant_counts():
    item_codes = np.array([0, 0, 1, 1])
    queries, neighbours = np.array([0, 1]), np.array([[0, 1], [2, 0]])
    relevant = relevant_counts(queries, item_codes, query_in_items=False)  # 2 each: no query is an item
    assert recall_at_k(neighbours, queries, item_codes, 2, relevant).tolist() == [1.0, 0.5]
    assert average_precision_at_k(neighbours, queries, item_codes, 2, relevant).tolist() == [1.0, 0.5]


def test_the_metrics_match_a_plain_loop_over_random_lists():
    """The vectorised metrics against the textbook definitions, written as loops (AP@k as ml_metrics' `apk`)."""
    rng = np.random.default_rng(0)
    items, k = 60, 6
    codes = rng.integers(-1, 8, items)
    neighbours = np.array([rng.permutation(np.delete(np.arange(items), row))[:k] for row in range(items)])
    neighbours[rng.random(neighbours.shape) < 0.1] = -1  # some missing neighbours
    relevant = relevant_counts(codes, codes)
    for query in range(items):
        expected = {"precision": NAN, "recall": NAN, "ap": NAN}
        if codes[query] >= 0 and relevant[query] > 0:
            hits, total = 0, 0.0
            for rank, row in enumerate(neighbours[query], start=1):
                if row >= 0 and codes[row] == codes[query]:
                    hits += 1
                    total += hits / rank
            expected = {"precision": hits / k, "recall": hits / relevant[query],
                        "ap": total / min(relevant[query], k)}
        np.testing.assert_allclose(precision_at_k(neighbours, codes, codes, k)[query], expected["precision"])
        np.testing.assert_allclose(recall_at_k(neighbours, codes, codes, k)[query], expected["recall"])
        np.testing.assert_allclose(average_precision_at_k(neighbours, codes, codes, k)[query], expected["ap"])


# --- means -----------------------------------------------------------------------------------


def test_mean_score_leaves_nan_out():
    assert mean_score(per_query([1.0, NAN, 0.0, 0.5])) == pytest.approx(0.5)


def test_mean_score_of_nothing_evaluated_is_nan_without_a_warning():
    with np.errstate(all="raise"):
        assert np.isnan(mean_score(per_query([NAN, NAN])))
        assert np.isnan(mean_score(per_query([])))


def test_label_means_average_each_label_over_its_evaluated_queries():
    values = average_precision_at_k(NEIGHBOURS, CODES, CODES, 3)
    np.testing.assert_allclose(label_means(values, CODES, 3), [13 / 36, 2 / 3, NAN])


# --- score: everything at once ---------------------------------------------------------------


@pytest.fixture
def scores() -> Scores:
    return score(NEIGHBOURS, CODES, CODES, ks=(3, 1), label_names=NAMES)


def test_score_means_the_worked_example_over_the_evaluated_queries(scores):
    assert scores.ks == (1, 3)
    expected = {
        "precision@1": 2 / 5, "recall@1": 3 / 10, "mAP@1": 2 / 5,
        "precision@3": 1 / 3, "recall@3": 7 / 10, "mAP@3": 29 / 60,
    }
    assert list(scores.overall) == list(expected)  # by k, then precision, recall, mAP
    assert scores.overall == pytest.approx(expected)


def test_score_counts_the_queries_evaluated_and_left_out_with_why(scores):
    assert (scores.evaluated, scores.unlabelled, scores.alone, scores.excluded) == (5, 1, 1, 2)


def test_score_per_label_table_has_a_row_per_label_with_evaluated_queries(scores):
    table = scores.per_label
    assert list(table) == ["label", "members", "queries", "precision@1", "recall@1", "mAP@1",
                           "precision@3", "recall@3", "mAP@3"]
    assert table["label"].tolist() == ["cat", "dog"]  # the owl has no query to evaluate
    assert table["members"].tolist() == [3, 2] and table["queries"].tolist() == [3, 2]
    np.testing.assert_allclose(table["precision@3"], [1 / 3, 1 / 3])
    np.testing.assert_allclose(table["recall@3"], [1 / 2, 1])
    np.testing.assert_allclose(table["mAP@3"], [13 / 36, 2 / 3])


def test_score_rows_are_plain_dicts_for_a_notebook_table(scores):
    rows = scores.rows()
    assert [row["label"] for row in rows] == ["cat", "dog"]
    assert rows[1]["members"] == 2 and type(rows[1]["members"]) is int
    assert rows[1]["mAP@3"] == pytest.approx(2 / 3) and type(rows[1]["mAP@3"]) is float


def test_score_summary_is_one_line_at_the_largest_k(scores):
    assert scores.summary() == (
        "precision@3 0.333, recall@3 0.700, mAP@3 0.483 over 5 queries; "
        "2 left out (1 unlabelled, 1 alone in their label)"
    )


def test_score_without_label_names_shows_the_codes():
    assert score(NEIGHBOURS, CODES, CODES, ks=(3,)).per_label["label"].tolist() == [0, 1]


def test_score_with_no_query_to_evaluate_says_so():
    codes = np.array([0, 1, -1])
    scores = score(np.array([[1], [2], [0]]), codes, codes, ks=(1,))
    assert scores.evaluated == 0 and np.isnan(scores.overall["mAP@1"])
    assert scores.rows() == []
    assert scores.summary() == "no query could be evaluated: 1 unlabelled, 2 alone in their label"


def test_score_of_labels_read_from_paths():
    labels = labels_of(["cats/a.jpg", "cats/b.jpg", "dogs/c.jpg", "dogs/d.jpg", "top.jpg"])
    neighbours = np.array([[1, 2], [0, 3], [3, 0], [2, 4], [0, 1]])  # each image's two nearest others
    scores = score(neighbours, labels.codes, labels.codes, ks=(1, 2), label_names=labels.classes)
    assert scores.overall["precision@1"] == 1.0 and scores.overall["mAP@2"] == 1.0
    assert [row["label"] for row in scores.rows()] == ["cats", "dogs"]
    assert scores.unlabelled == 1


# --- arguments that cannot fit ---------------------------------------------------------------


@pytest.mark.parametrize(
    "neighbours, query_codes, k, message",
    [
        (NEIGHBOURS, CODES, 4, "k=4 but there are 3 neighbours per query: search with k >= 4"),
        (NEIGHBOURS, CODES, 0, "k=0"),
        (NEIGHBOURS[0], CODES, 1, "give an \\(n, k\\) array"),
        (NEIGHBOURS, CODES[:3], 1, "one code per query"),
        (NEIGHBOURS + 10, CODES, 1, "neighbours name row 16, item_codes has 7"),
    ],
)
def test_arrays_that_do_not_fit_are_refused_with_what_to_give(neighbours, query_codes, k, message):
    with pytest.raises(ValueError, match=message):
        precision_at_k(neighbours, query_codes, CODES, k)


def test_relevant_counts_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="one count per query"):
        recall_at_k(NEIGHBOURS, CODES, CODES, 1, relevant=np.ones(3))


def test_an_unlabelled_query_is_left_out_even_if_given_a_relevant_count():
    codes = np.array([-1, 0, 0])
    values = precision_at_k(np.array([[1], [2]]), codes[:2], codes, 1, relevant=np.array([2, 1]))
    assert np.isnan(values[0]) and values[1] == 1.0


def test_score_needs_a_name_for_every_code():
    with pytest.raises(ValueError, match="label_names has 2 names for codes up to 2"):
        score(NEIGHBOURS, CODES, CODES, ks=(1,), label_names=NAMES[:2])


def test_score_needs_a_cut_off():
    with pytest.raises(ValueError, match="ks is empty"):
        score(NEIGHBOURS, CODES, CODES, ks=())
