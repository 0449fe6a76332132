"""Finding image files and decoding them robustly into RGB pixel arrays.

Everything that touches an image file goes through `open_rgb`, so that EXIF
orientation, odd colour modes, truncated files and decompression bombs are
handled in one place, the same way for extraction, queries and display.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: File name endings treated as images (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
)

#: Anything `open_rgb` accepts: a path, raw bytes (an upload), or a binary file object.
ImageSource = str | os.PathLike | bytes | BinaryIO


class ImageLoadError(ValueError):
    """An image could not be decoded; `reason` says why in a few words."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


def list_images(root: str | os.PathLike) -> list[str]:
    """Return the image files under `root`, recursively, as sorted POSIX paths relative to it.

    Relative paths keep saved artifacts valid when the collection moves; sorting
    makes row order, and so every saved file, reproducible.
    """
    root = Path(root)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {problem}; pass the folder that holds your images")
    found = [
        path.relative_to(root).as_posix()
        for path in _walk_files(root)
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(found)


def _walk_files(root: Path) -> Iterator[Path]:
    # os.walk without followlinks cannot loop on a symlinked folder; hidden
    # folders (.git, .ipynb_checkpoints) are not part of a collection.
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(folder, name)


def open_rgb(source: ImageSource, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `source` into an upright 8-bit RGB Pillow image, or raise `ImageLoadError`.

    Applies the EXIF orientation, reads the first frame of animations and
    multi-page files, flattens transparency onto white and converts grayscale,
    palette, CMYK and 16-bit images to RGB. With `min_size`, JPEGs are decoded
    at a reduced scale that is still at least that large (fast, and memory
    stays small for huge photos). Images beyond Pillow's pixel limit are
    refused rather than decoded (decompression bombs).
    """
    name = _describe(source)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and os.path.exists(source) and not os.path.isfile(source):
        raise ImageLoadError(name, "not a regular file")  # a pipe would block, a folder is no image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if min_size is not None:
                    image.draft("RGB", min_size)
                image = ImageOps.exif_transpose(image)
                image.load()
                return _to_rgb(image)
    except FileNotFoundError as error:
        raise ImageLoadError(name, "file not found") from error
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageLoadError(name, f"too many pixels ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(name, "not an image file Pillow can read") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Truncated data, broken headers and unsupported modes end up here.
        raise ImageLoadError(name, f"{type(error).__name__}: {error}") from error


def load_image(source: ImageSource, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Return `source` as a `(height, width, 3)` uint8 array resized to `size` (width, height).

    A plain bilinear resize to the square the backbone expects; the aspect
    ratio is not kept, matching how ImageNet backbones are usually fed.
    """
    image = open_rgb(source, min_size=size)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def load_thumbnail(source: ImageSource, max_side: int = 256) -> np.ndarray:
    """Return `source` as an RGB uint8 array whose longer side is at most `max_side`, for display."""
    image = open_rgb(source, min_size=(max_side, max_side))
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float grayscale image to 8 bits.

    Pillow's own conversion clips these to 0..255, which turns most 16-bit
    photos white; scaling by the type's range keeps them looking right.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = pixels / 257.0  # 0..65535 onto 0..255
    else:
        # 32-bit integer or float: no fixed range, so stretch the values present.
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low or 1.0) * 255.0
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def _describe(source: ImageSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", "<file object>")
