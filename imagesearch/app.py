"""The interactive search of notebook 03: pick an indexed image or upload one, see its neighbours."""

from __future__ import annotations

import os

import ipywidgets as widgets
import matplotlib.pyplot as plt

from .display import show_results
from .embedders import Embedder
from .images import ImageLoadError
from .index import Hit, SearchIndex
from .query import check_compatible, search_image, search_indexed


class SearchApp:
    """A dropdown of the indexed images, a k slider and an upload button over one results grid.

    The widgets are attributes, so code (and tests) can drive the app as a
    person would: set `dropdown.value` or `slider.value`, or call `search_upload`.
    `hits` holds the results on display.
    """

    def __init__(self, search_index: SearchIndex, embedder: Embedder, image_root: str | os.PathLike, k: int = 5):
        check_compatible(search_index, embedder)
        self.search_index, self.embedder, self.image_root = search_index, embedder, image_root
        self.hits: list[Hit] = []
        self.dropdown = widgets.Dropdown(options=search_index.paths, description="Query")
        self.slider = widgets.IntSlider(value=k, min=1, max=max(1, min(20, len(search_index) - 1)), description="k")
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload an image")
        self.status = widgets.Label()
        self.output = widgets.Output()
        self.dropdown.observe(lambda _: self.search_selected(), names="value")
        self.slider.observe(lambda _: self.search_selected(), names="value")
        self.upload.observe(self._on_upload, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.dropdown, self.slider]), widgets.HBox([self.upload, self.status]), self.output]
        )

    def search_selected(self) -> list[Hit]:
        """Show the neighbours of the image picked in the dropdown (itself excluded)."""
        path = self.dropdown.value
        self.hits = search_indexed(self.search_index, path, self.slider.value)
        self.status.value = f"{len(self.hits)} nearest neighbours of {path}"
        self._draw(os.path.join(self.image_root, path), path)
        return self.hits

    def search_upload(self, name: str, content: bytes) -> list[Hit]:
        """Show the neighbours of an uploaded image; a file that is not an image gets a message, not a traceback."""
        try:
            self.hits = search_image(self.search_index, self.embedder, content, self.slider.value)
        except ImageLoadError as error:
            self.hits = []
            self.status.value = (
                f"Cannot search with {name}: {error.reason}. Upload a JPEG, PNG, GIF, TIFF or WebP image."
            )
            self.output.outputs = ()
            return self.hits
        self.status.value = f"{len(self.hits)} nearest neighbours of the upload {name}"
        self._draw(content, f"upload: {name}")
        return self.hits

    def _on_upload(self, change) -> None:
        if change["new"]:
            (uploaded,) = change["new"]
            self.search_upload(uploaded["name"], bytes(uploaded["content"]))

    def _draw(self, query, title: str) -> None:
        # Set the Output widget's content directly rather than capturing with
        # `with self.output:`, which needs a live front end to route messages.
        figure = show_results(query, self.hits, self.image_root, query_title=title)
        self.output.outputs = ()
        self.output.append_display_data(figure)
        plt.close(figure)
