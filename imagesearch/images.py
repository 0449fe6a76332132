"""Finding image files and decoding them robustly into RGB pixel arrays.

Everything that touches an image file goes through `open_rgb`, so that EXIF
orientation, odd colour modes, truncated files and decompression bombs are
handled in one place, the same way for extraction, queries and display. A
file that cannot be decoded, for any reason a decoder may raise, becomes an
`ImageLoadError` whose reason says what is wrong with it (see `diagnose`).
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from . import diagnose
from .errors import UserFacingError

#: Formats Pillow identifies but never decodes into pixels: videos, and stubs that need a plugin of their own.
#: Their files are left out like any other non-image. (WMF/EMF decode on Windows only.)
IDENTIFIED_ONLY = frozenset({"MPEG", "BUFR", "GRIB", "HDF5", *(() if os.name == "nt" else ("WMF",))})

#: Image formats people keep photos in that Pillow cannot read by itself: counted apart when left out,
#: so that a folder of iPhone photos is not reported as "not images" (unless a plugin makes them readable).
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".heic", ".heif", ".hif", ".svg", ".svgz", ".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf", ".jxl"}
)


def image_extensions() -> frozenset[str]:
    """Every file name ending that Pillow, as installed here, opens and decodes (".jpg", ".tga", ".dds", …).

    Asked of Pillow each time, so that a plugin registered later counts: e.g.
    `pillow_heif.register_heif_opener()` makes ".heic" photos images.
    """
    Image.init()
    readable = (set(Image.OPEN) - IDENTIFIED_ONLY) | {"MPO"}  # multi-picture JPEGs: opened by the JPEG plugin
    return frozenset(ext for ext, name in Image.registered_extensions().items() if name in readable)


#: Anything `open_rgb` accepts: a path, raw bytes (an upload), or a binary file object.
ImageSource = str | os.PathLike | bytes | BinaryIO


class ImageLoadError(UserFacingError, ValueError):
    """An image could not be decoded; `reason` says why in a few words."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


#: The reason for a pipe, a device or a socket: reading one could block for ever, so it is never opened.
NOT_A_REGULAR_FILE = "not a regular file (a pipe or a device)"


class DecodeWarning(UserWarning):
    """An image decoded, but Pillow or libtiff had something to say about it (a corrupt EXIF block, say)."""


# --- what a folder holds ---------------------------------------------------------------------

#: Why a file was left out: the first element of each `FolderScan.ignored` key.
NOT_IMAGES, UNSUPPORTED, HIDDEN, LINKED_FOLDER = "not an image", "unsupported image format", "hidden", "linked folder"


@dataclass(frozen=True)
class FolderScan:
    """The image files under a folder, and what else it holds, left out and counted by why and by ending.

    `images` are sorted POSIX paths relative to the folder. `ignored` counts
    (why, ending) pairs: (NOT_IMAGES, ".txt"), (NOT_IMAGES, "") for a name
    without an extension, (UNSUPPORTED, ".heic"),
    (HIDDEN, "file") or (HIDDEN, "folder"), (LINKED_FOLDER, "folder"). A hidden
    or linked folder counts once; nothing inside it is read.
    """

    images: list[str]
    ignored: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        """E.g. "208 image files; 2 others ignored: 2 not images by their extension (.md, .py)"."""
        return f"{len(self.images)} image files; {describe_ignored(self.ignored)}"


def describe_ignored(ignored: Counter, examples: int = 4) -> str:
    """One line on what a scan left out, e.g. "3 others ignored: 2 not images by their extension (.txt), 1 hidden"."""
    total = sum(ignored.values())
    if not total:
        return "nothing else ignored"
    phrases = {
        NOT_IMAGES: ("not an image by its extension", "not images by their extension"),
        UNSUPPORTED: ("in an image format Pillow cannot read", "in image formats Pillow cannot read"),
        HIDDEN: ("hidden", "hidden"),
        LINKED_FOLDER: ("link to a folder, not followed", "links to folders, not followed"),
    }
    parts = []
    for why, (one, many) in phrases.items():
        endings = Counter({ending: count for (reason, ending), count in ignored.items() if reason == why})
        if count := sum(endings.values()):
            common = sorted(endings.items(), key=lambda item: (-item[1], item[0]))[:examples]  # the same on any disk
            if why == HIDDEN:  # "file" and "folder": how many of each
                shown = " (" + ", ".join(f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in sorted(common)) + ")"
            elif why == LINKED_FOLDER:
                shown = ""
            else:
                names = ", ".join(ending or "no extension" for ending, _ in common)
                shown = f" ({names}{', …' if len(endings) > examples else ''})"
            parts.append(f"{count} {one if count == 1 else many}{shown}")
    return f"{total} {'other' if total == 1 else 'others'} ignored: {', '.join(parts)}"


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """Find the image files under `root`, recursively, and count everything left out, by why.

    Paths are relative to `root` (so saved artifacts survive moving the
    folder) and sorted (so every saved file is reproducible). A file is an
    image by its extension, case-insensitively: any that Pillow decodes here
    (`image_extensions()`). Its content decides later whether it really is one.
    """
    root = Path(root)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {problem}; pass the folder that holds your images")
    images: list[str] = []
    ignored: Counter = Counter()
    readable = image_extensions()
    for folder, subfolders, files in os.walk(root):
        # os.walk lists a link to a folder among the folders but, without followlinks, never enters it:
        # a link to a parent cannot loop. Hidden folders (.git, .ipynb_checkpoints) are no part of a collection.
        for name in subfolders:
            if name.startswith("."):
                ignored[HIDDEN, "folder"] += 1
            elif os.path.islink(os.path.join(folder, name)):
                ignored[LINKED_FOLDER, "folder"] += 1
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        # Plain strings, not a Path per file: a million files are listed in seconds.
        relative = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if relative == "." else f"{relative}/"
        for name in files:
            ending = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                ignored[HIDDEN, "file"] += 1
            elif ending in readable:
                images.append(prefix + name)
            else:
                ignored[UNSUPPORTED if ending in UNSUPPORTED_IMAGE_EXTENSIONS else NOT_IMAGES, ending] += 1
    return FolderScan(sorted(images), ignored)


def list_images(root: str | os.PathLike) -> list[str]:
    """Return the image files under `root`, recursively, as sorted POSIX paths relative to it (see `scan_folder`)."""
    return scan_folder(root).images


# --- decoding one image ----------------------------------------------------------------------


def open_rgb(
    source: ImageSource, min_size: tuple[int, int] | None = None, notes: list[str] | None = None
) -> Image.Image:
    """Decode `source` into an upright 8-bit RGB Pillow image, or raise `ImageLoadError` saying why not.

    Applies the EXIF orientation, reads the first frame of animations and
    multi-page files, flattens transparency onto white and converts grayscale,
    palette, CMYK and 16-bit images to RGB. With `min_size`, JPEGs are decoded
    at a reduced scale that is still at least that large (fast, and memory
    stays small for huge photos). Images beyond Pillow's pixel limit
    (`Image.MAX_IMAGE_PIXELS`) are refused before decoding: decompression bombs.

    Whatever Pillow and libtiff say while decoding an image that does decode
    (a corrupt EXIF block, an unknown TIFF tag) is added to `notes` where it
    is given, and issued as one `DecodeWarning` per message where it is not.
    """
    name = _describe(source)
    opened = None
    try:
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            if os.path.isdir(source):
                raise ImageLoadError(name, "a folder, not an image file")
            if os.path.exists(source) and not os.path.isfile(source):
                raise ImageLoadError(name, NOT_A_REGULAR_FILE)
            source = opened = open(source, "rb")
    except OSError as error:  # missing, a dangling link, permissions, an I/O error
        raise ImageLoadError(name, unreadable_reason(source, error)) from error
    try:
        with diagnose.collecting() as said:
            try:
                image = _decode(name, source, min_size, said)
            except ImageLoadError:
                raise
            except Exception as error:  # any decoder may raise anything: a problem of this file, never of the run
                raise ImageLoadError(name, diagnose.reason(error, said, source)) from error
    finally:
        if opened is not None:
            opened.close()
    if notes is not None:
        notes.extend(dict.fromkeys(said))
    else:
        for message in dict.fromkeys(said):
            warnings.warn(f"{name}: {message}", DecodeWarning, stacklevel=2)
    return image


def unreadable_reason(path: str | os.PathLike, error: OSError) -> str:
    """Why the file at `path` could not even be read, from the error that reading it raised."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"a link to {os.readlink(path)}, which does not exist"
    if isinstance(error, FileNotFoundError):
        return "file not found"
    return f"cannot be read: {error.strerror or error}"


def _decode(name: str, source: BinaryIO, min_size: tuple[int, int] | None, said: list[str]) -> Image.Image:
    with Image.open(source) as image:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and image.width * image.height > limit:  # one limit, one message, whatever Pillow warned
            raise ImageLoadError(name, diagnose.too_many_pixels(image.width * image.height))
        if min_size is not None:
            image.draft("RGB", min_size)
        image.load()  # decode first: a decoding error must not pass for a problem with the orientation below
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception as error:  # noqa: BLE001 - a broken EXIF block costs the orientation, not the image
            said.append(f"EXIF orientation unreadable, image used as stored ({type(error).__name__}: {error})")
            upright = image
        return _to_rgb(upright)


def load_image(
    source: ImageSource, size: tuple[int, int] = (224, 224), notes: list[str] | None = None
) -> np.ndarray:
    """Return `source` as a `(height, width, 3)` uint8 array resized to `size` (width, height).

    A plain bilinear resize to the square the backbone expects; the aspect
    ratio is not kept, matching how ImageNet backbones are usually fed.
    `notes` collects what the decoder said about the file (see `open_rgb`).
    """
    image = open_rgb(source, min_size=size, notes=notes)
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
