"""Queries: by an indexed image, by any image file, or by uploaded bytes."""

from __future__ import annotations

from .embedders import Embedder
from .errors import UserFacingError
from .images import ImageSource, load_image
from .index import Hit, SearchIndex


class EmbedderMismatchError(UserFacingError, ValueError):
    """The query embedder is not the one that built the index; distances would be meaningless."""


def check_compatible(search_index: SearchIndex, embedder: Embedder) -> None:
    """Raise `EmbedderMismatchError` unless `embedder` produced the vectors in `search_index`."""
    if not embedder.info.compatible_with(search_index.embedder):
        if reason := search_index.embedder.outside_bar():
            raise EmbedderMismatchError(f"the index's vectors meet only their own runtime's: {reason}; query with "
                                        f"--runtime {search_index.embedder.runtime} (runtime='"
                                        f"{search_index.embedder.runtime}')")
        if reason := embedder.info.outside_bar():
            raise EmbedderMismatchError(f"queries are embedded only by runtimes within their fidelity bar, and "
                                        f"{reason}; use --runtime auto (runtime='auto'), which picks one within it")
        raise EmbedderMismatchError(
            f"the index was built from {search_index.embedder}, but queries would be embedded "
            f"with {embedder.info}; load the same backbone and weights, or rebuild the index "
            "with this embedder"
        )


def search_indexed(
    search_index: SearchIndex, path: str, k: int, include_self: bool = False, params: str | None = None
) -> list[Hit]:
    """Return the `k` nearest neighbours of an indexed image; the image itself only if `include_self`."""
    wanted = k if include_self else k + 1
    (hits,) = search_index.search(search_index.vector(path), wanted, params)
    if not include_self:
        hits = [hit for hit in hits if hit.path != path]
    return [Hit(rank, hit.path, hit.distance) for rank, hit in enumerate(hits[:k])]


def search_image(
    search_index: SearchIndex, embedder: Embedder, source: ImageSource, k: int, params: str | None = None
) -> list[Hit]:
    """Embed an outside image (a file path, or bytes such as an upload) and return its `k` nearest neighbours.

    `params` ("nprobe=64") override the index's saved search parameters for this query. Raises
    `ImageLoadError` with a readable reason when `source` is not an image.
    """
    check_compatible(search_index, embedder)
    pixels = load_image(source, embedder.info.input_size)
    (hits,) = search_index.search(embedder.embed(pixels[None]), k, params)
    return hits
