"""A folder of tricky files, each with what extraction must do with it: embed it, skip it with a reason, or ignore it.

Every file is generated here with Pillow, numpy or raw bytes; `make_bad_corpus(root)` writes them all. Two of
them are in a format this module defines (`exploding_format`), whose opener and decoder raise exception classes
no decoder author would catch; they count as images only while that format is registered.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import EpsImagePlugin, Image, ImageFile

RED, BLUE = (255, 0, 0), (0, 0, 255)

#: Written 8000 x 6000 (144 MB as RGB pixels), legal for Pillow: JPEG draft mode must decode it small.
HUGE_JPEG = "huge 8000x6000.jpg"
#: Declares more than twice Pillow's pixel limit in a ~22 KB PNG: must be refused before decoding.
BOMB = "bomb.png"
#: Oriented by EXIF (tag 6); `UPRIGHT_TWIN` holds the same pixels already upright, without EXIF.
EXIF_ROTATED, UPRIGHT_TWIN = "exif rotated.jpg", "upright twin.jpg"
#: 256 MB of zeros named .jpg (sparse on disk): Pillow needs its first bytes only, so memory must stay small.
ZEROS = "256 MB of zeros.jpg"
NOT_AN_IMAGE = "shopping list.jpg"
FIFO = "named pipe.jpg"


@dataclass(frozen=True)
class Expectation:
    outcome: Literal["embedded", "skipped"]
    note: str
    reason: str = ""  # for skips: words the recorded reason must contain


def make_bad_corpus(root: Path) -> dict[str, Expectation]:
    """Write every case under `root`, and the files a scan must ignore; return the expectation per image path."""
    for path, (write, _) in CASES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        write(root / path)
    for path, write in IGNORED_FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        write(root / path)
    return EXPECTATIONS


# --- writers -----------------------------------------------------------------------------------

Writer = Callable[[Path], object]


def noise(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def saved(make: Callable[[], Image.Image], **options) -> Writer:
    return lambda path: make().save(path, **options)


def truncated(format: str) -> Writer:
    whole = encoded(noise((100, 80)), format)
    return lambda path: path.write_bytes(whole[: len(whole) // 2])


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: Iterable[bytes]) -> Writer:
    """A PNG from chunks, for what Pillow will not write: 16-bit RGB, or a real decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def write(path: Path) -> None:
        compressor = zlib.compressobj(9)
        pixels = b"".join(compressor.compress(b"\0" + row) for row in rows) + compressor.flush()
        header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))

    return write


def bomb(path: Path) -> None:
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1  # beyond DecompressionBombError's limit
    raw_png(side, side, 1, 0, itertools.repeat(bytes(-(-side // 8)), side))(path)  # 1-bit, all black


def rgb16() -> Writer:
    pixels = np.random.default_rng(0).integers(0, 65536, (30, 40, 3), dtype=np.uint16).astype(">u2")
    return raw_png(40, 30, 16, 2, [row.tobytes() for row in pixels])


def halves(size: tuple[int, int], first_box: tuple[int, int, int, int]) -> Image.Image:
    """Blue, with `first_box` red; 16-pixel aligned so JPEG blocks are plain and decode identically when turned."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, first_box)
    return image


def exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: show rotated 90 degrees clockwise, so the red left half is on top
    halves((64, 32), (0, 0, 32, 32)).save(path, exif=exif.tobytes(), quality=95, subsampling=0)


def palette_with_transparency() -> Image.Image:
    image = noise().convert("P")
    image.info["transparency"] = 0
    return image


def huge_jpeg(path: Path) -> None:
    noise((80, 60)).resize((8000, 6000), Image.Resampling.BILINEAR).save(path, quality=70)


def zeros(path: Path) -> None:
    with open(path, "wb") as file:
        file.truncate(256 * 2**20)


def symlink(target: str) -> Writer:
    return lambda path: path.symlink_to(target)


def in_folder_with_link_to_parent(path: Path) -> None:
    noise().save(path)
    (path.parent / "parent").symlink_to("..", target_is_directory=True)


def locked(path: Path) -> None:
    noise().save(path)
    path.chmod(0)


def tiff_with_tag(tag: int, value: int, field: Literal["type", "count"] = "type") -> Writer:
    """A small RGB TIFF whose entry for `tag` has its compression value or data count replaced by `value`."""

    def write(path: Path) -> None:
        from PIL import TiffImagePlugin

        directory = TiffImagePlugin.ImageFileDirectory_v2()
        directory[270] = "a description long enough to be stored outside the entry"  # tag 270, out of line
        data = bytearray(encoded(noise(), "TIFF", compression="tiff_adobe_deflate", tiffinfo=directory))
        offset = struct.unpack("<I", data[4:8])[0]
        for number in range(struct.unpack("<H", data[offset : offset + 2])[0]):
            entry = offset + 2 + 12 * number
            if struct.unpack("<H", data[entry : entry + 2])[0] == tag:
                if field == "count":
                    data[entry + 4 : entry + 8] = struct.pack("<I", value)
                else:
                    data[entry + 8 : entry + 10] = struct.pack("<H", value)
        path.write_bytes(bytes(data))

    return write


def seven_samples_tiff(path: Path) -> None:
    """A TIFF of 7 samples per pixel: Pillow knows TIFF, but not how to decode that many samples."""
    pixels = np.random.default_rng(0).integers(0, 256, (10, 10, 7), dtype=np.uint8)
    entries = [(256, 3, 1, 10), (257, 3, 1, 10), (258, 3, 7, 0), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 7), (278, 3, 1, 10), (279, 4, 1, pixels.size)]
    header = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = header + ifd_size
    data_at = bits_at + 2 * 7
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 273: data_at}.get(tag, value)
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                        else struct.pack("<I", value))
    path.write_bytes(b"II*\0" + struct.pack("<I", header) + ifd + b"\0\0\0\0" + struct.pack("<7H", *[8] * 7)
                     + pixels.tobytes())


def dds_of_unknown_pixel_format(path: Path) -> None:
    """A DDS texture whose FourCC names no pixel format Pillow implements: it raises NotImplementedError."""
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
    pixel_format = struct.pack("<2I", 32, 0x4) + b"ZZZZ" + bytes(20)
    path.write_bytes(b"DDS " + header + pixel_format + struct.pack("<4I", 0x1000, 0, 0, 0) + bytes(4) + bytes(64))


# A format of our own, registered only inside `exploding_format()`: its opener raises one exception class, its
# decoder another, neither of which Pillow or any decoder author would think of catching.
EXPLODING, EXPLODING_EXTENSION = "EXPLODING", ".explode"


class Kaboom(Exception):
    """An exception class no code but this module knows."""


class ExplodingImageFile(ImageFile.ImageFile):
    format, format_description = EXPLODING, "a test format whose opener or decoder raises"

    def _open(self) -> None:
        if self.fp.read(9) == b"EXPLODE:O":
            raise Kaboom("the opener blew up")
        self._size, self._mode = (8, 8), "RGB"

    def load(self):
        raise ZeroDivisionError("the decoder divided by zero")


@contextmanager
def exploding_format() -> Iterator[None]:
    """Register the EXPLODING format (files `*.explode`) for the block, and remove every trace of it after."""
    Image.register_open(EXPLODING, ExplodingImageFile, lambda prefix: prefix[:8] == b"EXPLODE:")
    Image.register_extension(EXPLODING, EXPLODING_EXTENSION)
    try:
        yield
    finally:
        Image.OPEN.pop(EXPLODING, None)
        Image.EXTENSION.pop(EXPLODING_EXTENSION, None)
        if EXPLODING in Image.ID:
            Image.ID.remove(EXPLODING)


def eps(path: Path) -> None:
    noise().save(path, "EPS")


# --- the cases -----------------------------------------------------------------------------------

ROOT = os.geteuid() == 0
EMBEDDED, SKIPPED = "embedded", "skipped"

CASES: dict[str, tuple[Writer, Expectation]] = {
    path: (write, Expectation(outcome, note, reason))
    for path, outcome, note, write, reason in [
        # Not images, or broken ones: skipped with a reason.
        ("truncated.jpg", SKIPPED, "JPEG cut off halfway", truncated("JPEG"), "truncated"),
        ("truncated.png", SKIPPED, "PNG cut off halfway", truncated("PNG"), "truncated"),
        ("empty.jpg", SKIPPED, "zero bytes", lambda path: path.write_bytes(b""), "not an image"),
        (NOT_AN_IMAGE, SKIPPED, "plain text named .jpg", lambda path: path.write_text("milk\neggs\n"), "not an image"),
        ("error page.png", SKIPPED, "an HTML 404 page named .png",
         lambda path: path.write_text("<!doctype html><title>404</title>"), "not an image"),
        (BOMB, SKIPPED, "decompression bomb: 22 KB of PNG, twice Pillow's pixel limit", bomb, "too many pixels"),
        (ZEROS, SKIPPED, "a big file that is no image, like a renamed video", zeros, "not an image"),
        ("dangling link.jpg", SKIPPED, "symlink to a file that does not exist", symlink("deleted.jpg"), ""),
        (FIFO, SKIPPED, "a FIFO: opening it to read waits for a writer forever", os.mkfifo, ""),
        # The extension lies: Pillow reads by content.
        ("png named.jpg", EMBEDDED, "PNG content, .jpg name", saved(noise, format="PNG"), ""),
        ("jpeg named.png", EMBEDDED, "JPEG content, .png name", saved(noise, format="JPEG"), ""),
        # Legal but large: decoded at a reduced scale.
        (HUGE_JPEG, EMBEDDED, "8000 x 6000 JPEG within Pillow's limit", huge_jpeg, ""),
        # Every mode and container.
        ("one pixel.png", EMBEDDED, "1 x 1", saved(lambda: noise((1, 1))), ""),
        ("gray.png", EMBEDDED, "mode L", saved(lambda: noise().convert("L")), ""),
        ("gray alpha.png", EMBEDDED, "mode LA", saved(lambda: noise().convert("LA")), ""),
        ("palette.png", EMBEDDED, "mode P with a transparent entry", saved(palette_with_transparency), ""),
        ("cmyk.jpg", EMBEDDED, "CMYK JPEG", saved(lambda: noise().convert("CMYK")), ""),
        ("gray16.png", EMBEDDED, "16-bit grayscale PNG (I;16)",
         saved(lambda: Image.fromarray(np.full((30, 40), 40000, np.uint16))), ""),
        ("gray16.tif", EMBEDDED, "16-bit grayscale TIFF (I;16)",
         saved(lambda: Image.fromarray(np.full((30, 40), 40000, np.uint16))), ""),
        ("rgb16.png", EMBEDDED, "16-bit RGB PNG, written from raw chunks", rgb16(), ""),
        ("animated.gif", EMBEDDED, "two-frame GIF: the first frame",
         saved(noise, save_all=True, append_images=[noise(seed=1)]), ""),
        ("pages.tif", EMBEDDED, "two-page TIFF: the first page",
         saved(noise, save_all=True, append_images=[noise(seed=1)]), ""),
        ("photo.webp", EMBEDDED, "WebP", saved(noise), ""),
        (EXIF_ROTATED, EMBEDDED, "EXIF orientation 6: embedded upright", exif_rotated, ""),
        (UPRIGHT_TWIN, EMBEDDED, "the EXIF-rotated image, already upright",
         saved(lambda: halves((32, 64), (0, 0, 32, 32)), quality=95, subsampling=0), ""),
        # Awkward paths and file system entries.
        ("Fotos mit Leerzeichen/café ☕ photo.jpg", EMBEDDED, "spaces and unicode, kept exactly", saved(noise), ""),
        ("日本語.png", EMBEDDED, "non-Latin name, kept exactly", saved(noise), ""),
        ("link to upright twin.jpg", EMBEDDED, "symlink to an image", symlink(UPRIGHT_TWIN), ""),
        ("loop/photo.jpg", EMBEDDED, "beside loop/parent -> ..: listed once, the walk ends",
         in_folder_with_link_to_parent, ""),
        ("folder.jpg/inside.png", EMBEDDED, "a folder named like an image is walked, not read", saved(noise), ""),
        ("locked.jpg", EMBEDDED if ROOT else SKIPPED,
         "chmod 000: root reads it anyway, so embedded as root and skipped otherwise", locked, ""),
        # Formats beyond the usual eight, each one that Pillow decodes.
        *[(f"formats/photo{ending}", EMBEDDED, f"{name}, a format Pillow decodes", saved(noise, format=name), "")
          for ending, name in [(".tga", "TGA"), (".pcx", "PCX"), (".ppm", "PPM"), (".sgi", "SGI"), (".ico", "ICO"),
                               (".jp2", "JPEG2000"), (".avif", "AVIF"), (".qoi", "QOI"), (".dds", "DDS"),
                               (".JFIF", "JPEG"), (".dib", "DIB")]],
        ("formats/photo.xbm", EMBEDDED, "a 1-bit XBM", saved(lambda: noise().convert("1"), format="XBM"), ""),
        ("warned/long tag.tif", EMBEDDED, "a tag's data runs past the end of the file: Pillow warns, then decodes",
         tiff_with_tag(270, 10**6, "count"), ""),
        # Files Pillow recognises but cannot decode: skipped with the cause in words.
        ("unreadable/texture.dds", SKIPPED, "DDS of a pixel format Pillow does not implement (NotImplementedError)",
         dds_of_unknown_pixel_format, "does not implement the variant of this DDS file"),
        ("unreadable/texture renamed.png", SKIPPED, "the same DDS named .png: read by content, skipped all the same",
         dds_of_unknown_pixel_format, "does not implement the variant of this DDS file"),
        ("unreadable/webp inside.tif", SKIPPED, "TIFF whose compression (WEBP) this libtiff lacks: libtiff says so",
         tiff_with_tag(259, 50001), "WEBP compression support is not configured"),
        ("unreadable/seven samples.tif", SKIPPED, "TIFF of 7 samples per pixel: Pillow logs why, fails anonymously",
         seven_samples_tiff, "More samples per pixel than can be decoded"),
        ("unreadable/drawing.eps", EMBEDDED if EpsImagePlugin.has_ghostscript() else SKIPPED,
         "EPS, which Pillow draws with Ghostscript: embedded where it is installed, skipped where not", eps,
         "" if EpsImagePlugin.has_ghostscript() else "needs Ghostscript"),
        ("unreadable/opener raises" + EXPLODING_EXTENSION, SKIPPED, "an opener raising an exception class of its own",
         lambda path: path.write_bytes(b"EXPLODE:O"), "Kaboom: the opener blew up"),
        ("unreadable/decoder raises" + EXPLODING_EXTENSION, SKIPPED, "a decoder raising ZeroDivisionError",
         lambda path: path.write_bytes(b"EXPLODE:D"), "ZeroDivisionError: the decoder divided by zero"),
    ]
}

#: Files that are not images by their name: a scan leaves them out and counts them, by why and ending.
IGNORED_FILES: dict[str, Writer] = {
    "notes.txt": lambda path: path.write_text("not a photo"),
    "clips/holiday.mp4": lambda path: path.write_bytes(bytes(64)),
    "README": lambda path: path.write_text("no extension at all"),
    "phone/IMG_0001.HEIC": lambda path: path.write_bytes(bytes(64)),  # an image format Pillow cannot read alone
    ".DS_Store": lambda path: path.write_bytes(bytes(8)),  # hidden file
    ".git/config": lambda path: path.write_text("[core]"),  # inside a hidden folder: the folder counts once
}

#: What a scan of the corpus must count as ignored, (why, ending) -> files. `loop/parent` links to a folder.
IGNORED_COUNTS = {
    ("not an image", ".txt"): 1, ("not an image", ".mp4"): 1, ("not an image", ""): 1,
    ("unsupported image format", ".heic"): 1, ("hidden", "file"): 1, ("hidden", "folder"): 1,
    ("linked folder", "folder"): 1,
}

EXPECTATIONS: dict[str, Expectation] = {path: expectation for path, (_, expectation) in CASES.items()}
