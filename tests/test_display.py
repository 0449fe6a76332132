"""Figures for the notebooks, and the interactive SearchApp driven through its widgets without a browser."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from imagesearch.app import SearchApp
from imagesearch.display import (
    GRID_COLUMNS,
    MAX_WIDTH_INCHES,
    caption,
    plot_embedding_map,
    show_images,
    show_result_rows,
    show_results,
)
from imagesearch.extract import extract_embeddings
from imagesearch.index import Hit, build_index
from imagesearch.query import EmbedderMismatchError, search_indexed


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def titled_axes(figure: Figure) -> list:
    return [axis for axis in figure.axes if axis.get_title()]


def test_show_results_titles_the_query_then_each_hit_by_rank_and_distance(tiny_collection):
    root, index = tiny_collection
    hits = search_indexed(index, "a/one.jpg", k=3)
    figure = show_results(root / "a/one.jpg", hits, root, query_title="query: a/one.jpg")
    assert isinstance(figure, Figure)
    axes = titled_axes(figure)
    assert len(axes) == 4
    assert axes[0].get_title() == "query: a/one.jpg"
    for rank, (axis, hit) in enumerate(zip(axes[1:], hits), start=1):
        assert axis.get_title().startswith(f"#{rank}  d={hit.distance:.3g}")
        assert hit.path in axis.get_title()
    assert all(len(axis.images) == 1 for axis in axes)


def test_show_images_draws_one_titled_image_per_path(tiny_collection):
    root, index = tiny_collection
    paths = index.paths[:3]
    axes = titled_axes(show_images(paths, root, ncols=2))
    assert [axis.get_title() for axis in axes] == paths
    assert all(len(axis.images) == 1 for axis in axes)


def test_show_images_uses_given_titles(tiny_collection):
    root, index = tiny_collection
    axes = titled_axes(show_images(index.paths[:2], root, titles=["first", "second"]))
    assert [axis.get_title() for axis in axes] == ["first", "second"]


@pytest.mark.parametrize(
    "write", [pytest.param(lambda path: path.write_text("not a picture"), id="text"), pytest.param(None, id="missing")]
)
def test_show_images_shows_cannot_show_for_an_unreadable_file(tmp_path, make_image, write):
    make_image(tmp_path / "good.png")
    if write:
        write(tmp_path / "bad.jpg")
    good, bad = titled_axes(show_images(["good.png", "bad.jpg"], tmp_path))
    assert len(good.images) == 1 and not good.texts
    assert len(bad.images) == 0
    assert len(bad.texts) == 1
    assert bad.texts[0].get_text().startswith("cannot show")


def test_plot_embedding_map_has_one_legend_entry_per_label():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(15, 8))
    labels = ["cat", "dog", "owl"] * 5
    figure = plot_embedding_map(vectors, labels, title="map")
    (axis,) = figure.axes
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["cat", "dog", "owl"]
    assert axis.get_title() == "map"


@pytest.mark.parametrize("k", range(1, 21))
def test_results_grid_stays_readable_for_every_k_by_wrapping_into_rows(tiny_collection, k):
    root, index = tiny_collection
    hits = [Hit(rank, index.paths[rank % len(index)], 1000.0 + rank) for rank in range(k)]
    figure = show_results(root / index.paths[0], hits, root)
    figure.canvas.draw()
    titled = titled_axes(figure)
    assert len(titled) == 1 + k
    # At most 990 pixels wide at 100 dpi: a JupyterLab output area shows it at full size, not shrunk to fit.
    assert figure.get_figwidth() <= MAX_WIDTH_INCHES
    columns = {round(axis.get_position().x0, 3) for axis in titled}
    rows = {round(axis.get_position().y0, 3) for axis in titled}
    assert len(columns) == min(1 + k, GRID_COLUMNS) and len(rows) == -(-(1 + k) // GRID_COLUMNS)
    for axis in titled:  # every title at least 11 pixels high as drawn, and no wider than its image
        title = axis.title.get_window_extent()
        assert axis.title.get_fontsize() * figure.dpi / 72 >= 11
        assert title.width <= axis.get_window_extent().width * 1.15, axis.get_title()


def test_several_queries_each_start_a_new_row(tiny_collection):
    root, index = tiny_collection
    hits = [Hit(rank, path, float(rank)) for rank, path in enumerate(index.paths[:5])]
    figure = show_result_rows([(root / index.paths[0], hits, "one"), (root / index.paths[1], hits[:2], "two")], root)
    titled = titled_axes(figure)
    one, two = titled[0], titled[6]
    assert (one.get_title(), two.get_title()) == ("one", "two")
    assert round(one.get_position().x0, 3) == round(two.get_position().x0, 3)  # both in the first column


# --- SearchApp -------------------------------------------------------------------------------------


@pytest.fixture
def app(tiny_collection, random_resnet):
    return SearchApp(tiny_collection.index, random_resnet, tiny_collection.root, k=2)


def test_app_choosing_an_image_shows_its_neighbours_without_itself(app, tiny_collection):
    query = tiny_collection.index.paths[2]
    assert app.dropdown.value != query
    app.dropdown.value = query
    assert len(app.hits) == 2
    assert query not in [hit.path for hit in app.hits]
    assert app.on_display() == [
        f"2 nearest neighbours of {query}", f"query: {query}", *(caption(hit, width=40) for hit in app.hits)
    ]


def test_app_moving_the_slider_changes_the_number_of_hits_and_tiles(app):
    app.slider.value = 3
    assert len(app.hits) == 3
    assert app.dropdown.value not in [hit.path for hit in app.hits]
    assert len(app.on_display()) == 1 + 1 + 3  # the status, the query's tile, three neighbours
    app.slider.value = 1
    assert len(app.on_display()) == 1 + 1 + 1


def test_app_offers_up_to_twenty_neighbours_and_a_tile_for_each(tmp_path, make_image, random_resnet):
    for number in range(23):
        make_image(tmp_path / f"{number:02d}.png", size=(16, 16))
    index = build_index(extract_embeddings(tmp_path, random_resnet, progress=False), "Flat")
    app = SearchApp(index, random_resnet, tmp_path, k=30)
    assert (app.slider.value, app.slider.max, len(app.tiles)) == (20, 20, 21)
    app.search_selected()
    assert len(app.on_display()) == 1 + 21
    assert [text.split()[0] for text in app.on_display()[2:]] == [f"#{rank}" for rank in range(1, 21)]


def test_app_tile_of_a_file_gone_since_indexing_says_it_cannot_show_it(app, tiny_collection, tmp_path):
    app.image_root = tmp_path  # the images are not where the index says
    app.search_selected()
    assert all("(cannot show: file not found)" in text for text in app.on_display()[1:])


def test_app_upload_of_an_image_shows_its_neighbours(app, tiny_collection):
    content = (tiny_collection.root / "b/three.jpg").read_bytes()
    hits = app.search_upload("x.jpg", content)
    assert hits == app.hits
    assert len(hits) == 2
    assert hits[0].path == "b/three.jpg"
    assert app.on_display()[:2] == ["2 nearest neighbours of the upload x.jpg", "upload: x.jpg"]


def test_app_upload_through_the_file_upload_widget_searches(app, tiny_collection):
    content = (tiny_collection.root / "five.jpg").read_bytes()
    app.upload.value = (
        {"name": "mine.jpg", "type": "image/jpeg", "size": len(content), "content": memoryview(content),
         "last_modified": datetime.now(UTC)},
    )
    assert app.hits[0].path == "five.jpg"
    assert "mine.jpg" in app.status_text
    assert app.upload.value == ()  # the bytes are let go, and the same file can be uploaded again


def test_app_upload_of_a_non_image_shows_a_message_instead_of_raising(app):
    app.slider.value = 3  # some hits on display first
    hits = app.search_upload("notes.txt", b"hello")
    assert hits == [] and app.hits == []
    (status,) = app.on_display()  # no tile left in view: nothing that could pass for results of the text file
    assert status.startswith("Cannot search with notes.txt: not an image: the file holds text ('hello'")


def test_app_over_a_one_image_index_shows_no_neighbours(tmp_path, make_image, random_resnet):
    make_image(tmp_path / "only.jpg")
    index = build_index(extract_embeddings(tmp_path, random_resnet, progress=False), "Flat")
    app = SearchApp(index, random_resnet, tmp_path)
    assert app.search_selected() == []
    assert app.on_display() == ["0 nearest neighbours of only.jpg", "query: only.jpg"]


def test_app_refuses_an_index_built_by_another_embedder(tiny_collection, random_resnet):
    index = tiny_collection.index
    other = dataclasses.replace(index, embedder=dataclasses.replace(index.embedder, weights="imagenet"))
    with pytest.raises(EmbedderMismatchError):
        SearchApp(other, random_resnet, tiny_collection.root)
