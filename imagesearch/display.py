"""Pictures for the notebooks: image grids, query results with distances, an embedding map."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .images import ImageLoadError, ImageSource, load_thumbnail
from .index import Hit


def show_images(
    paths: Sequence[str], image_root: str | os.PathLike, titles: Sequence[str] | None = None, ncols: int = 6
) -> Figure:
    """Draw images (paths relative to `image_root`) in a grid, titled with their paths or `titles`."""
    titles = list(titles) if titles is not None else list(paths)
    figure, axes = _grid(len(paths), ncols)
    for axis, path, title in zip(axes, paths, titles):
        _draw(axis, Path(image_root) / path, title)
    return figure


def show_results(
    query: ImageSource, hits: Sequence[Hit], image_root: str | os.PathLike, query_title: str = "query"
) -> Figure:
    """Draw the query image, then its hits in rank order with their distances, in one row."""
    return show_result_rows([(query, hits, query_title)], image_root)


def show_result_rows(
    rows: Sequence[tuple[ImageSource, Sequence[Hit], str]], image_root: str | os.PathLike
) -> Figure:
    """Draw several queries, one row each: (query image, its hits, its title)."""
    ncols = 1 + max(len(hits) for _, hits, _ in rows)
    figure, axes = plt.subplots(
        len(rows), ncols, figsize=(2.3 * ncols, 2.6 * len(rows)), squeeze=False, layout="constrained"
    )
    for row_axes, (query, hits, title) in zip(axes, rows):
        for axis in row_axes:
            axis.axis("off")
        _draw(row_axes[0], query, title, color="tab:blue")
        for axis, hit in zip(row_axes[1:], hits):
            _draw(axis, Path(image_root) / hit.path, f"#{hit.rank + 1}  d={hit.distance:.3g}\n{_short(hit.path)}")
    return figure


def plot_embedding_map(vectors: np.ndarray, labels: Sequence[str], title: str = "") -> Figure:
    """Scatter the embeddings on their first two principal components, one colour per label.

    A quick look at the geometry: with a good backbone, images of one group sit together.
    """
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    figure, axis = plt.subplots(figsize=(7, 5.5), layout="constrained")
    for index, label in enumerate(sorted(set(labels))):
        mask = np.array([item == label for item in labels])
        marker = "os^Dv<>p"[index // 10 % 8]  # tab10 repeats its colours every ten labels
        axis.scatter(*points[mask].T, s=28, marker=marker, color=plt.cm.tab10(index % 10), label=label)
    axis.set(xlabel="principal component 1", ylabel="principal component 2", title=title)
    axis.legend(fontsize="small", ncols=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    return figure


def _grid(count: int, ncols: int) -> tuple[Figure, list[plt.Axes]]:
    ncols = max(1, min(ncols, count))
    nrows = max(1, math.ceil(count / ncols))
    figure, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.9 * nrows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for axis in flat:
        axis.axis("off")
    return figure, flat[:count]


def _draw(axis: plt.Axes, source: ImageSource, title: str, color: str = "black") -> None:
    try:
        axis.imshow(load_thumbnail(source))
    except ImageLoadError as error:
        axis.text(0.5, 0.5, f"cannot show:\n{error.reason}", ha="center", va="center", wrap=True)
    axis.set_title(title, fontsize=9, color=color)


def _short(path: str, width: int = 28) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]
