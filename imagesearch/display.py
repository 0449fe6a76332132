"""Pictures for the notebooks: image grids, query results with distances, an embedding map, recall against speed,
and what evaluation found (precision against k, quality against speed, the worst queries).

A JupyterLab output area is about 1,000 pixels wide and shrinks a wider
figure to fit, titles and all: 21 results in one row came out with titles
5 pixels high. So every grid here is at most MAX_WIDTH_INCHES wide (990
pixels at matplotlib's 100 dpi) and wraps into rows instead.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure
from PIL import Image

from .comparison import Comparison, Result
from .images import ImageLoadError, ImageSource, load_thumbnail
from .index import Hit
from .runtimes import Choice
from .tuning import Candidate

#: The widest a figure gets, in inches, so that it is shown at full size in a notebook: 990 pixels at 100 dpi.
MAX_WIDTH_INCHES = 9.9
#: Images per row of a results grid: the query and five neighbours, the default k, in one row.
GRID_COLUMNS = 6
#: Title size, in points: 11 pixels at 100 dpi.
TITLE_POINTS = 8


def caption(hit: Hit, width: int = 22) -> str:
    """How a result is titled, in the figures and in the app: rank, distance, path (on two lines if it is long)."""
    return f"#{hit.rank + 1}  d={hit.distance:.3g}\n{_wrapped(hit.path, width)}"


def show_images(
    paths: Sequence[str], image_root: str | os.PathLike, titles: Sequence[str] | None = None, ncols: int = GRID_COLUMNS
) -> Figure:
    """Draw images (paths relative to `image_root`) in a grid, titled with their paths or `titles`."""
    titles = list(titles) if titles is not None else [_short(path) for path in paths]
    figure, axes = _grid(len(paths), ncols)
    for axis, path, title in zip(axes, paths, titles):
        _draw(axis, Path(image_root) / path, title)
    return figure


def show_results(
    query: ImageSource, hits: Sequence[Hit], image_root: str | os.PathLike, query_title: str = "query"
) -> Figure:
    """Draw the query image, then its hits in rank order with their distances, wrapping into rows."""
    return show_result_rows([(query, hits, query_title)], image_root)


def show_result_rows(
    rows: Sequence[tuple[ImageSource, Sequence[Hit], str]], image_root: str | os.PathLike, ncols: int = GRID_COLUMNS
) -> Figure:
    """Draw several queries, each as a block of rows: (query image, its hits, its title)."""
    ncols = max(1, min(ncols, max(1 + len(hits) for _, hits, _ in rows)))
    blocks = [math.ceil((1 + len(hits)) / ncols) for _, hits, _ in rows]
    figure, axes = _grid(sum(blocks) * ncols, ncols)
    first = 0
    for (query, hits, title), block in zip(rows, blocks):
        cells = axes[first : first + 1 + len(hits)]
        _draw(cells[0], query, _wrapped(title), color="tab:blue")
        for axis, hit in zip(cells[1:], hits):
            _draw(axis, Path(image_root) / hit.path, caption(hit))
        first += block * ncols
    return figure


def thumbnail_jpeg(source: ImageSource, max_side: int = 200) -> bytes:
    """`source` as JPEG bytes whose longer side is at most `max_side`: what the app's tiles show.

    Raises `ImageLoadError` for a file that cannot be shown. Files are cached by
    path, size and modification time, so moving the k slider re-reads nothing.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            stat = os.stat(source)
        except OSError:
            stat = None
        if stat is not None:
            return _cached_thumbnail(os.fspath(source), stat.st_size, stat.st_mtime_ns, max_side)
    return _encode_jpeg(load_thumbnail(source, max_side))


@lru_cache(maxsize=512)
def _cached_thumbnail(path: str, size: int, mtime_ns: int, max_side: int) -> bytes:
    return _encode_jpeg(load_thumbnail(path, max_side))


def _encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


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


def plot_recall_speed(
    candidates: Sequence[Candidate], chosen: str | None = None, target: float | None = None
) -> Figure:
    """Recall@10 against milliseconds per query for each candidate index, one line per index type, its settings
    from least to most effort; the chosen index drawn thicker."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for candidate in candidates:
        curve = candidate.tuning.curve
        label = f"{candidate.factory} ({candidate.bytes_per_vector} B/vector)"
        is_chosen = candidate.factory == chosen
        axis.plot([point.ms_per_query for point in curve], [point.recall for point in curve], marker="o",
                  linewidth=3 if is_chosen else 1.2, markersize=10 if is_chosen else 5,
                  label=label + (": chosen" if is_chosen else ""))
    if target is not None:
        axis.axhline(target, color="grey", linestyle="--", linewidth=1)
        axis.annotate(f"target {target:.2f}", (0, target), xycoords=("axes fraction", "data"), va="bottom",
                      fontsize=8, color="grey")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))  # "0.03", not "3 x 10^-2"
    axis.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
    axis.set_xlabel("milliseconds per query (one query at a time, one thread)")
    axis.set_ylabel("recall@10 against exact search")
    axis.set_ylim(top=1.02)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return figure


def plot_runtimes(choice: Choice) -> Figure:
    """What `auto` measured: each runtime's images/s in batches and milliseconds for one image, side by side.

    Bars of runtimes within their fidelity bar are solid, others hatched and
    labelled; the ones `auto` uses are outlined and named.
    """
    names = list(choice.measurements)
    figure, (batches, single) = plt.subplots(1, 2, figsize=(9, 0.45 * len(names) + 1.3), sharey=True)
    for axis, field, chosen, label in (
        (batches, "images_per_second", choice.batch, "images per second, batches of 32 (more is better)"),
        (single, "latency_ms", choice.query, "milliseconds for one image (less is better)"),
    ):
        values = [getattr(choice.measurements[name], field) for name in names]
        for row, (name, value) in enumerate(zip(names, values)):
            within = choice.measurements[name].within_bar()
            axis.barh(row, value, color="tab:blue" if within else "lightgrey", hatch=None if within else "//",
                      edgecolor="black" if name == chosen else "none", linewidth=2)
            note = ("  ← auto" if name == chosen else "") + ("" if within else "  outside its fidelity bar")
            axis.annotate(f" {value:.1f}{note}", (value, row), va="center", fontsize=8)
        axis.set_xlabel(label, fontsize=9)
        axis.set_xlim(0, max(values) * 1.6)
        axis.grid(True, axis="x", alpha=0.3)
    batches.set_yticks(range(len(names)), names)
    batches.invert_yaxis()
    figure.suptitle("ResNet50's runtimes on this CPU, as `auto` measured them", fontsize=10)
    figure.tight_layout()
    return figure


def plot_precision_at_k(comparison: Comparison, configurations: Sequence[str] = ("plain", "recommended")) -> Figure:
    """precision@k against k for each backbone (a colour each) with each of `configurations` (a line style each)."""
    figure, axis = plt.subplots(figsize=(9.5, 4))
    styles = dict(zip(configurations, ("--", "-", ":", "-.")))
    for colour, backbone in enumerate(comparison.embedded):
        for configuration, style in styles.items():
            curve = comparison.precision_curve(comparison.result(backbone, configuration))
            axis.plot(range(1, len(curve) + 1), curve, style, marker="o", markersize=4, color=plt.cm.tab10(colour % 10),
                      label=f"{_cut(backbone)}, {configuration}")
    axis.set_xlabel("k: neighbours looked at")
    axis.set_ylabel("precision@k: share with the query's label")
    axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    axis.grid(True, alpha=0.3)
    queries, labels = comparison.results[0].scores.evaluated, comparison.labels.label_count
    axis.set_title(f"{queries} queries, {labels} labels", fontsize=10)
    figure.tight_layout()
    return figure


def plot_quality_speed(comparison: Comparison) -> Figure:
    """Each backbone's best mAP@k against how many images it embeds per second, its vector size beside it."""
    figure, axis = plt.subplots(figsize=(7, 3.8))
    k = comparison.k
    for colour, (backbone, embedded) in enumerate(comparison.embedded.items()):
        best = comparison.best(backbone)
        axis.scatter(embedded.images_per_second, best.metric(f"mAP@{k}"), s=40 + embedded.dimension / 16,
                     color=plt.cm.tab10(colour % 10), zorder=3)
        axis.annotate(f" {_cut(backbone)}\n {embedded.dimension}-d, {best.configuration}",
                      (embedded.images_per_second, best.metric(f"mAP@{k}")), fontsize=8, va="center")
    speeds = [embedded.images_per_second for embedded in comparison.embedded.values()]
    axis.set_xscale("log")
    axis.set_xlim(min(speeds) / 1.5, max(speeds) * 6)  # room on the right for the names
    axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    axis.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    axis.set_xlabel("images embedded per second on this machine (more is faster)")
    axis.set_ylabel(f"best mAP@{k}")
    axis.margins(y=0.25)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return figure


def show_worst_queries(comparison: Comparison, result: Result, image_root: str | os.PathLike, count: int = 4,
                       k: int | None = None) -> Figure:
    """The queries `result` serves worst: each query (titled with its label and AP@k), then its k nearest others,
    titled with their labels, green where the label is the query's and red where it is not."""
    k = k or comparison.k
    names, paths = comparison.labels.names, comparison.embedded[result.backbone].embeddings.paths
    rows = comparison.worst_queries(result, count)
    precisions = comparison.average_precisions(result)
    ncols = k + 1
    figure, axes = _grid(len(rows) * ncols, ncols)
    for block, row in enumerate(rows):
        cells = axes[block * ncols: (block + 1) * ncols]
        _draw(cells[0], Path(image_root) / paths[row], f"{_short(names[row], 20)}\nAP@{comparison.k} "
              f"{precisions[row]:.2f}", color="tab:blue")
        for axis, other in zip(cells[1:], result.neighbours[row, :k]):
            if other < 0:
                continue
            right = names[other] == names[row]
            _draw(axis, Path(image_root) / paths[other], _short(str(names[other]), 20),
                  color="tab:green" if right else "tab:red")
    figure.suptitle(f"worst {len(rows)} queries: {result.backbone}, {result.configuration}", fontsize=10)
    return figure


def _grid(count: int, ncols: int) -> tuple[Figure, list[plt.Axes]]:
    """A grid of `count` cells, `ncols` wide (fewer if fewer cells), every cell's axes switched off."""
    ncols = max(1, min(ncols, count))
    nrows = max(1, math.ceil(count / ncols))
    width = min(1.65, MAX_WIDTH_INCHES / ncols)
    figure, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, (width + 0.35) * nrows), squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for axis in flat:
        axis.axis("off")
    return figure, flat[:count]


def _draw(axis: plt.Axes, source: ImageSource, title: str, color: str = "black") -> None:
    try:
        axis.imshow(load_thumbnail(source))
    except ImageLoadError as error:
        axis.text(0.5, 0.5, f"cannot show:\n{error.reason}", ha="center", va="center", wrap=True, fontsize=7)
    axis.set_title(title, fontsize=TITLE_POINTS, color=color)


def _cut(name: str, width: int = 24) -> str:
    """A backbone's name in at most `width` characters: its start, which says what it is ("tflite@mobilenet_v1…")."""
    return name if len(name) <= width else name[: width - 1] + "…"


def _wrapped(path: str, width: int = 22) -> str:
    """`path` on one line if it fits in `width` characters (22 fit above a cell of a 6-wide grid at TITLE_POINTS),
    else its folder and its file name on a line each, each shortened to fit."""
    if len(path) <= width or "/" not in path:
        return _short(path, width)
    folder, _, name = path.rpartition("/")
    return f"{_short(folder + '/', width)}\n{_short(name, width)}"


def _short(path: str, width: int = 26) -> str:
    """`path` in at most `width` characters: whole leading folders dropped first ("…/cup/image_0001.jpg"), so
    that the folder nearest the file, often its label, stays; cut inside a name only when that is not enough."""
    if len(path) <= width:
        return path
    parts = path.split("/")
    for start in range(1, len(parts)):
        tail = "…/" + "/".join(parts[start:])
        if len(tail) <= width:
            return tail
    return "…" + path[-(width - 1):]
