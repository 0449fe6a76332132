"""Comparing backbones and retrieval configurations on a labelled collection, on hand-made vectors (no model)."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import same_color
from PIL import Image

from imagesearch.comparison import Candidate, Embedded, compare, cost_lines, parse_candidates
from imagesearch.display import plot_precision_at_k, plot_quality_speed, show_worst_queries
from imagesearch.metrics import precision_at_k

GROUPS, MEMBERS = 4, 4
PATHS = [f"g{g}__v{m}.png" for g in range(GROUPS) for m in range(MEMBERS)]  # labels g0..g3, 4 images each
AXES = np.eye(8)
# Four tight clusters 10 apart on their own axes: every image's 3 nearest others are its own label's.
CLEAN = np.repeat(AXES[:GROUPS] * 10, MEMBERS, axis=0) + np.random.default_rng(0).normal(0, 0.1, (16, 8))
NOISE = np.random.default_rng(1).normal(size=(16, 8))  # about chance
# As CLEAN but g0__v0 sits nearer g1 (L2 and cosine): only that query changes, from AP 1 to 0.
NEAR = CLEAN.copy()
NEAR[0] = 4.5 * AXES[0] + 5.5 * AXES[1]
# The labels differ only in norm, along one direction: plain L2 separates them, cosine cannot.
SCALES = np.repeat([1.0, 3.0, 9.0, 27.0], MEMBERS)[:, None]
NORMS = SCALES * (AXES[0] + np.random.default_rng(2).normal(0, 1e-3, (16, 8)))
# g1 twice as far out; g0__v0 is nearer g0 by L2 but points nearer g1: only that query is lost to cosine.
MIXED = np.repeat(np.diag([10.0, 20, 10, 10, 0, 0, 0, 0])[:GROUPS], MEMBERS, axis=0)
MIXED += np.random.default_rng(3).normal(0, 0.1, (16, 8))
MIXED[0] = 2 * AXES[0] + 3 * AXES[1]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def embed(make_embeddings):
    """An `Embedded` from vectors: `embed(name, vectors, seconds, weights, paths, root, random=False)`."""

    def make(name, vectors, seconds=1.0, weights="imagenet", paths=PATHS, root="/nowhere", random=False):
        embeddings = make_embeddings(vectors, paths, str(root))
        if random:
            embeddings = dataclasses.replace(
                embeddings, embedder=dataclasses.replace(embeddings.embedder, weights="random(seed=0)"))
        return Embedded(Candidate(name, weights), embeddings, seconds)

    return make


def run(*embedded, configurations=("plain",), ks=(1, 3), k=3):
    return compare(list(embedded), "auto", configurations, ks=ks, k=k)


def test_parse_candidates_splits_on_semicolons_and_strips_whitespace():
    assert parse_candidates(" resnet50 ; keras:layer=avg,preprocess=x ;", "random") == [
        Candidate("resnet50", "random"), Candidate("keras:layer=avg,preprocess=x", "random")]


def test_a_candidate_names_its_own_weights_after_an_at_sign():
    own, default = parse_candidates("tflite @ models/m.tflite;resnet50")
    assert own == Candidate("tflite", "models/m.tflite") and default == Candidate("resnet50", "imagenet")
    assert own.name == "tflite@m.tflite"
    assert default.name == "resnet50" and Candidate("resnet50", "random").name == "resnet50"


@pytest.mark.parametrize("text", ["", " ; ;"])
def test_text_without_a_backbone_is_refused(text):
    with pytest.raises(ValueError, match="no backbone"):
        parse_candidates(text)


def test_compare_refuses_backbones_that_embedded_other_images(embed):
    other = embed("other", CLEAN, paths=PATHS[:-1] + ["g3__z.png"])
    with pytest.raises(ValueError, match="other embedded other images than good"):
        run(embed("good", CLEAN), other)


def test_compare_refuses_an_empty_list():
    with pytest.raises(ValueError, match="nothing to compare"):
        compare([], "auto")


def test_a_perfect_backbone_scores_one_and_results_follow_backbone_then_configuration_order(embed):
    comparison = run(embed("good", CLEAN), embed("noisy", NOISE), configurations=("plain", "cosine", "recommended"))
    assert [(r.backbone, r.configuration) for r in comparison.results] == [
        (b, c) for b in ("good", "noisy") for c in ("plain", "cosine", "recommended")]
    for result in comparison.results[:3]:
        assert [result.metric(m) for m in ("precision@1", "precision@3", "recall@3", "mAP@3")] == [1.0] * 4
    assert all(result.metric("precision@3") < 0.5 for result in comparison.results[3:])


def test_rows_hold_each_metric_rounded_with_speed_and_dimensions(embed):
    comparison = run(embed("good", CLEAN, seconds=2.0), embed("noisy", NOISE, seconds=0.5))
    good, noisy = comparison.rows()
    assert good == {"backbone": "good", "configuration": "plain", "precision@1": 1.0, "precision@3": 1.0,
                    "recall@3": 1.0, "mAP@3": 1.0, "images/s": 8.0, "dimensions": 8}
    assert noisy["images/s"] == 32.0
    assert noisy["mAP@3"] == round(comparison.results[1].metric("mAP@3"), 3) < 0.5


def test_lines_have_a_header_and_a_line_per_result_marking_the_best_of_each_backbone(embed):
    comparison = run(embed("good", CLEAN), embed("norms", NORMS), configurations=("cosine", "plain"))
    head, *lines = comparison.lines()
    assert head.split() == ["backbone", "configuration", "precision@1", "precision@3", "recall@3", "mAP@3",
                            "images/s", "dims"]
    assert [line.split()[:2] for line in lines] == [["good", "cosine"], ["good", "plain"], ["norms", "cosine"],
                                                    ["norms", "plain"]]
    # good ties at 1.0 (the first listed is its best); norms is only separable by L2
    assert [line.split()[:2] for line in lines if "*" in line] == [["good", "cosine"], ["norms", "plain"]]
    assert lines[3].split()[5] == "1.000*"


def test_best_picks_the_highest_map(embed):
    comparison = run(embed("noisy", NOISE), embed("norms", NORMS), configurations=("cosine", "plain", "recommended"))
    assert (comparison.best().backbone, comparison.best().configuration) == ("norms", "plain")
    noisy = [r for r in comparison.results if r.backbone == "noisy"]
    assert comparison.best("noisy") is max(noisy, key=lambda r: r.metric("mAP@3"))


def test_gap_is_the_paired_mean_difference_and_its_standard_error(embed):
    comparison = run(embed("good", CLEAN), embed("noisy", NOISE))
    good, noisy = comparison.results
    differences = comparison.average_precisions(good) - comparison.average_precisions(noisy)
    gap, error = comparison.gap(good, noisy)
    assert gap == pytest.approx(differences.mean()) and gap > 0.5
    assert error == pytest.approx(differences.std(ddof=1) / np.sqrt(16))


def test_one_lost_query_of_sixteen_is_a_gap_of_one_sixteenth_within_the_noise(embed):
    comparison = run(embed("good", CLEAN), embed("near", NEAR))
    good, near = comparison.results
    assert comparison.gap(good, near) == pytest.approx((1 / 16, 1 / 16))  # differences 1, 0 x 15: sd 1/4
    assert comparison.within_noise(good, near)


def test_a_clear_difference_is_not_within_the_noise(embed):
    comparison = run(embed("good", CLEAN), embed("noisy", NOISE))
    assert not comparison.within_noise(*comparison.results)


def test_identical_results_are_within_the_noise(embed):
    comparison = run(embed("good", CLEAN), embed("twin", CLEAN))
    assert comparison.within_noise(*comparison.results)


def test_a_faster_backbone_within_the_noise_is_chosen(embed):
    comparison = run(embed("good", CLEAN, seconds=2.0), embed("near", NEAR, seconds=1.0))
    assert comparison.best().backbone == "good" and comparison.choice.backbone == "near"
    recommendation = comparison.recommendation()
    assert any(line.startswith("near is within the noise of it") and "2.0x faster" in line for line in recommendation)
    assert "--backbone near" in recommendation[-1]


def test_a_faster_backbone_with_identical_vectors_is_chosen(embed):
    comparison = run(embed("slow", CLEAN, seconds=2.0), embed("fast", CLEAN, seconds=1.0))
    assert comparison.choice.backbone == "fast"


def test_a_slower_backbone_clearly_better_is_kept(embed):
    comparison = run(embed("noisy", NOISE, seconds=1.0), embed("good", CLEAN, seconds=2.0))
    assert comparison.choice.backbone == "good"
    assert not any("within the noise" in line for line in comparison.recommendation())


def test_the_default_configuration_is_chosen_within_the_noise_of_the_best(embed):
    comparison = run(embed("mixed", MIXED), configurations=("plain", "recommended"))
    assert comparison.best().configuration == "plain" and comparison.choice.configuration == "recommended"
    recommendation = comparison.recommendation()
    assert any("default configuration (recommended) is within the noise of plain" in line for line in recommendation)
    assert recommendation[-1] == "build it: python -m imagesearch build --images /nowhere --backbone mixed"


def test_the_default_configuration_is_chosen_when_it_scores_the_same(embed):
    comparison = run(embed("good", CLEAN), configurations=("plain", "recommended"))
    assert comparison.choice.configuration == "recommended"


def test_a_clearly_better_configuration_is_kept_and_named_in_the_build_command(embed):
    comparison = run(embed("resnet50", NORMS, weights="/models/w.h5"), configurations=("plain", "recommended"))
    assert comparison.choice.configuration == "plain"
    assert list(comparison.embedded) == ["resnet50@w.h5"]
    recommendation = comparison.recommendation()
    assert any(line.startswith("recommended: resnet50@w.h5 with plain") for line in recommendation)
    assert recommendation[-1] == ("build it: python -m imagesearch build --images /nowhere --backbone resnet50 "
                                  "--weights /models/w.h5 --retrieval plain")


def test_random_weights_add_a_caution_and_pretrained_ones_do_not(embed):
    pretrained = run(embed("good", CLEAN), embed("noisy", NOISE)).recommendation()
    assert pretrained[-1].startswith("build it:") and not any(line.startswith("caution") for line in pretrained)
    cautioned = run(embed("good", CLEAN), embed("noisy", NOISE, weights="random", random=True)).recommendation()
    assert cautioned[-1].startswith("caution: noisy had random weights")
    assert cautioned[-2].startswith("build it:") and "--backbone good" in cautioned[-2]


def test_the_same_backbone_twice_is_refused_rather_than_one_run_hiding_the_other(embed):
    pretrained = embed("resnet50", CLEAN, weights="imagenet")
    random = embed("resnet50", NOISE, weights="random", random=True)
    with pytest.raises(ValueError, match="two backbones are called resnet50"):
        run(pretrained, random)


def test_a_weights_path_with_a_space_is_quoted_in_the_build_command(embed):
    recommendation = run(embed("resnet50", CLEAN, weights="/my models/w.h5")).recommendation()
    assert "--weights '/my models/w.h5'" in recommendation[-1]


def test_worst_queries_ascend_by_ap_and_leave_out_a_label_of_one_image(embed):
    vectors = np.vstack([NOISE, np.random.default_rng(4).normal(size=(1, 8))])
    # neighbours to 8 but AP at 3: queries that tie at AP@3 differ further down
    comparison = run(embed("noisy", vectors, paths=PATHS + ["solo__x.png"]), ks=(1, 3, 8), k=3)
    result = comparison.results[0]
    precisions = comparison.average_precisions(result)
    assert np.isnan(precisions[16]) and not np.isnan(precisions[:16]).any()
    worst = comparison.worst_queries(result, count=5)
    assert len(worst) == 5 and np.all(np.diff(precisions[worst]) >= 0)
    assert precisions[worst].max() <= np.delete(precisions[:16], worst).min()
    everything = comparison.worst_queries(result, count=100)
    assert sorted(everything) == list(range(16))
    # among equal APs, the queries with the fewest label-mates anywhere in their neighbours come first
    codes = comparison.labels.codes
    further = precision_at_k(result.neighbours, codes, codes, result.neighbours.shape[1])[everything]
    ties = np.diff(precisions[everything]) == 0
    assert ties.any() and np.all(np.diff(further)[ties] >= 0) and np.any(np.diff(further)[ties] > 0)


def test_cost_lines_align_the_names_and_scale_to_a_million_images(embed):
    lines = cost_lines([embed("resnet50", CLEAN, seconds=2.0), embed("a_much_longer_name", CLEAN, seconds=1.0)])
    assert lines[0].index("images/s") == lines[1].index("images/s")
    assert "8.0 images/s: 1,000,000 images in  34.7 h," in lines[0]  # 16 images in 2 s; 8-d float32: 32 bytes
    assert lines[1].endswith("0.0 GiB of vectors")


def test_precision_curve_has_a_value_per_k_equal_to_the_scores_at_the_ks(embed):
    comparison = run(embed("noisy", NOISE), ks=(1, 2, 5), k=3)
    assert comparison.ks == (1, 2, 3, 5)
    result = comparison.results[0]
    curve = comparison.precision_curve(result)
    assert len(curve) == 5
    for k in comparison.ks:
        assert curve[k - 1] == pytest.approx(result.scores.overall[f"precision@{k}"])


def test_plot_precision_at_k_draws_a_line_per_backbone_and_configuration(embed):
    comparison = run(embed("good", CLEAN), embed("noisy", NOISE), configurations=("plain", "cosine", "recommended"))
    axis, = plot_precision_at_k(comparison).axes
    assert [line.get_label() for line in axis.lines] == [
        "good, plain", "good, recommended", "noisy, plain", "noisy, recommended"]
    assert list(axis.lines[0].get_ydata()) == [1.0, 1.0, 1.0]


def test_plot_quality_speed_places_each_backbone_at_its_speed_and_best_map(embed):
    comparison = run(embed("good", CLEAN, seconds=2.0), embed("noisy", NOISE, seconds=1.0))
    axis, = plot_quality_speed(comparison).axes
    offsets = [tuple(collection.get_offsets()[0]) for collection in axis.collections]
    assert offsets == [(8.0, 1.0), (16.0, pytest.approx(comparison.best("noisy").metric("mAP@3")))]
    assert [text.get_text().split()[0] for text in axis.texts] == ["good", "noisy"]


def test_show_worst_queries_draws_each_query_and_its_neighbours_coloured_by_label(embed, tmp_path):
    for row, path in enumerate(PATHS):
        Image.new("RGB", (12, 10), (row * 15, 0, 0)).save(tmp_path / path)
    comparison = run(embed("noisy", NOISE, root=tmp_path))
    result = comparison.results[0]
    figure = show_worst_queries(comparison, result, tmp_path, count=2, k=3)
    assert sum(len(axis.images) == 1 for axis in figure.axes) == 2 * 4
    names = comparison.labels.names
    for block, row in enumerate(comparison.worst_queries(result, 2)):
        query, *others = figure.axes[block * 4:(block + 1) * 4]
        assert query.get_title().startswith(names[row])
        for axis, other in zip(others, result.neighbours[row, :3], strict=True):
            expected = "tab:green" if names[other] == names[row] else "tab:red"
            assert axis.get_title() == names[other] and same_color(axis.title.get_color(), expected)
