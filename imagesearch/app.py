"""The interactive search of notebook 03: pick an indexed image or upload one, see its neighbours."""

from __future__ import annotations

import html
import os
from pathlib import Path

import ipywidgets as widgets

from .display import caption, thumbnail_jpeg
from .embedders import Embedder
from .images import ImageLoadError, ImageSource, image_extensions
from .index import Hit, SearchIndex
from .query import check_compatible, search_image, search_indexed

#: The most neighbours the slider offers.
MAX_K = 20


class SearchApp:
    """A dropdown of the indexed images, a k slider and an upload button over a grid of results.

    The grid is made of widgets, not a picture: it wraps into as many rows as
    the page needs, and every caption is text on the page. The widgets are
    attributes, so code (and tests) can drive the app as a person would: set
    `dropdown.value` or `slider.value`, or call `search_upload`. `hits` holds
    the results on display, and `on_display()` says in words what is shown.
    """

    def __init__(self, search_index: SearchIndex, embedder: Embedder, image_root: str | os.PathLike, k: int = 5):
        check_compatible(search_index, embedder)
        self.search_index, self.embedder, self.image_root = search_index, embedder, Path(image_root)
        self.hits: list[Hit] = []
        most = max(1, min(MAX_K, len(search_index) - 1))
        self.dropdown = widgets.Dropdown(
            options=search_index.paths, description="Query", layout=widgets.Layout(width="28em")
        )
        self.slider = widgets.IntSlider(value=min(k, most), min=1, max=most, description="k", continuous_update=False)
        self.upload = widgets.FileUpload(
            accept=",".join(["image/*", *sorted(image_extensions())]),  # offered first; any file can be picked
            multiple=False,
            description="Upload an image",
            layout=widgets.Layout(width="auto"),
        )
        self.status = widgets.HTML(layout=widgets.Layout(margin="0 0 0 1em"))
        self.status.add_class("imagesearch-status")
        self.tiles = [_Tile() for _ in range(1 + most)]  # the query, then its neighbours; hidden when unused
        grid = widgets.GridBox(
            [tile.box for tile in self.tiles],
            layout=widgets.Layout(grid_template_columns="repeat(auto-fill, minmax(150px, 1fr))", grid_gap="6px"),
        )
        self.dropdown.observe(lambda _: self._safely(self.search_selected), names="value")
        self.slider.observe(lambda _: self._safely(self.search_selected), names="value")
        self.upload.observe(self._on_upload, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.dropdown, self.slider]), widgets.HBox([self.upload, self.status]), grid]
        )
        self.widget.add_class("imagesearch-app")

    def search_selected(self) -> list[Hit]:
        """Show the neighbours of the image picked in the dropdown (itself excluded)."""
        path = self.dropdown.value
        self.hits = search_indexed(self.search_index, path, self.slider.value)
        self._show(self.image_root / path, f"query: {path}", f"{len(self.hits)} nearest neighbours of {path}")
        return self.hits

    def search_upload(self, name: str, content: bytes) -> list[Hit]:
        """Show the neighbours of an uploaded image; a file that is not an image gets a message, not a traceback."""
        try:
            self.hits = search_image(self.search_index, self.embedder, content, self.slider.value)
        except ImageLoadError as error:
            self.hits = []
            self._show(None, "", f"Cannot search with {name}: {error.reason}. Upload an image file "
                                 "(JPEG, PNG, WebP, TIFF, GIF, or another format Pillow reads).")
            return self.hits
        self._show(content, f"upload: {name}", f"{len(self.hits)} nearest neighbours of the upload {name}")
        return self.hits

    def on_display(self) -> list[str]:
        """What the widget shows, in words: the status line, then the caption of each tile in view."""
        return [self.status_text, *(tile.text for tile in self.tiles if tile.visible)]

    @property
    def status_text(self) -> str:
        return html.unescape(self.status.value)

    def _show(self, query: ImageSource | None, query_title: str, status: str) -> None:
        shown = [] if query is None else [(query, query_title, True)]
        shown += [(self.image_root / hit.path, caption(hit, width=40), False) for hit in self.hits]
        for tile, item in zip(self.tiles, shown + [None] * (len(self.tiles) - len(shown))):
            if item:
                tile.show(*item)
            else:
                tile.hide()
        # Last: the browser applies updates in order, and the status must not announce results before they show.
        self.status.value = html.escape(status)

    def _on_upload(self, change) -> None:
        if not change["new"]:
            return
        (uploaded,) = change["new"]
        self._safely(lambda: self.search_upload(uploaded["name"], bytes(uploaded["content"])))
        self.upload.value = ()  # let go of the bytes, and let the same file be uploaded again

    def _safely(self, action) -> None:
        """Run a widget callback; an unexpected error shows in the status line, where it is seen, not in a log."""
        try:
            action()
        except Exception as error:  # noqa: BLE001 - a callback's error would otherwise vanish into the browser console
            self.hits = []
            self._show(None, "", f"Search failed: {type(error).__name__}: {error}")


class _Tile:
    """One cell of the results grid: a thumbnail over a caption, hidden while unused."""

    def __init__(self):
        self.image = widgets.Image(
            format="jpeg", layout=widgets.Layout(width="100%", height="150px", object_fit="contain")
        )
        self.caption = widgets.HTML()
        self.caption.add_class("imagesearch-caption")
        self.box = widgets.VBox([self.image, self.caption], layout=widgets.Layout(display="none", overflow="hidden"))
        self.box.add_class("imagesearch-tile")
        self.text = ""

    @property
    def visible(self) -> bool:
        return self.box.layout.display != "none"

    def show(self, source: ImageSource, text: str, is_query: bool) -> None:
        try:
            self.image.value = thumbnail_jpeg(source)
        except ImageLoadError as error:
            self.image.value = b""
            text = f"{text}\n(cannot show: {error.reason})"
        self.text = text
        color = "#1f77b4" if is_query else "inherit"  # matplotlib's tab:blue, as in the figures
        lines = "<br>".join(html.escape(line) for line in text.splitlines())
        self.caption.value = f'<div style="font-size: 12px; line-height: 1.3; color: {color}">{lines}</div>'
        self.box.layout.display = "flex"

    def hide(self) -> None:
        self.box.layout.display = "none"
        self.text = ""
