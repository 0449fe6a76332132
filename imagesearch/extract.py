"""Embedding extraction: a folder of images in, a matrix of vectors and a manifest out.

On disk (the folder notebook 01 writes and notebook 02 reads):

    embeddings/
      embeddings.npy   float32 (n, dim); row i belongs to manifest item i
      manifest.json    format version, embedder, image root, and per image: path, size, mtime
      skipped.csv      every file that was not embedded, with the reason

The manifest is written last, so a folder whose manifest agrees with its
embeddings is complete.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .embedders import Embedder, EmbedderInfo
from .images import ImageLoadError, list_images, load_image
from .storage import FORMAT_VERSION, ArtifactError, atomic_path, read_json, write_json

EMBEDDINGS_FILE = "embeddings.npy"
MANIFEST_FILE = "manifest.json"
SKIPPED_FILE = "skipped.csv"


@dataclass(frozen=True)
class ImageRecord:
    """One embedded image: its path relative to the image root, and what it was when embedded."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    """A file that was not embedded, and why."""

    path: str
    reason: str


@dataclass
class Embeddings:
    """The result of an extraction: `vectors[i]` is the embedding of `items[i]`."""

    vectors: np.ndarray
    items: list[ImageRecord]
    embedder: EmbedderInfo
    image_root: str
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [item.path for item in self.items]

    def summary(self) -> str:
        return (
            f"{len(self.items)} images embedded, {len(self.skipped)} skipped; "
            f"embeddings {self.vectors.shape[0]} x {self.vectors.shape[1]} {self.vectors.dtype}"
        )


def extract_embeddings(
    image_root: str | os.PathLike,
    embedder: Embedder,
    batch_size: int = 32,
    progress: bool = True,
) -> Embeddings:
    """Embed every image under `image_root` in batches; unreadable files are skipped with a reason.

    Images are decoded and resized one by one but embedded `batch_size` at a
    time: one model call per batch, never one per image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    root = Path(image_root)
    paths = list_images(root)
    vectors: list[np.ndarray] = []
    items: list[ImageRecord] = []
    skipped: list[Skipped] = []
    bar = tqdm(total=len(paths), unit="img", desc="Embedding", disable=not progress)
    with bar:
        for batch_items, pixels, batch_skipped in _decoded_batches(root, paths, embedder.info, batch_size):
            if batch_items:
                vectors.append(embedder.embed(pixels))
                items.extend(batch_items)
            skipped.extend(batch_skipped)
            bar.update(len(batch_items) + len(batch_skipped))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embedder.info.dim), np.float32)
    return Embeddings(matrix, items, embedder.info, str(root), skipped)


def _decoded_batches(
    root: Path, paths: Sequence[str], info: EmbedderInfo, batch_size: int
) -> Iterator[tuple[list[ImageRecord], np.ndarray, list[Skipped]]]:
    """Yield (records, pixels, skips) for runs of up to `batch_size` decodable images.

    Each batch gets its own pixel array, so a consumer may keep it while the next is decoded.
    """
    width, height = info.input_size
    shape = (batch_size, height, width, 3)
    pixels = np.empty(shape, np.uint8)
    records: list[ImageRecord] = []
    skips: list[Skipped] = []
    for path in paths:
        full_path = root / path
        try:
            stat = full_path.stat()
            pixels[len(records)] = load_image(full_path, info.input_size)
        except ImageLoadError as error:
            skips.append(Skipped(path, error.reason))
            continue
        except OSError as error:  # unreadable, vanished, a dangling symlink
            skips.append(Skipped(path, f"{type(error).__name__}: {error.strerror or error}"))
            continue
        records.append(ImageRecord(path, stat.st_size, stat.st_mtime_ns))
        if len(records) == batch_size:
            yield records, pixels, skips
            records, skips, pixels = [], [], np.empty(shape, np.uint8)
    if records or skips:
        yield records, pixels[: len(records)], skips


def save_embeddings(embeddings: Embeddings, directory: str | os.PathLike) -> list[Path]:
    """Write `embeddings` to `directory` (each file atomically, the manifest last); return the files."""
    directory = Path(directory)
    embeddings_path = directory / EMBEDDINGS_FILE
    with atomic_path(embeddings_path) as temporary:
        with open(temporary, "wb") as file:
            np.save(file, np.ascontiguousarray(embeddings.vectors, dtype=np.float32))
    skipped_path = directory / SKIPPED_FILE
    with atomic_path(skipped_path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "reason"])
            writer.writerows((skip.path, skip.reason) for skip in embeddings.skipped)
    manifest_path = directory / MANIFEST_FILE
    write_json(
        manifest_path,
        {
            "kind": "embeddings",
            "format_version": FORMAT_VERSION,
            "embedder": embeddings.embedder.to_dict(),
            "image_root": embeddings.image_root,
            "count": len(embeddings.items),
            "items": [[item.path, item.size, item.mtime_ns] for item in embeddings.items],
        },
    )
    return [embeddings_path, manifest_path, skipped_path]


def load_embeddings(directory: str | os.PathLike) -> Embeddings:
    """Read what `save_embeddings` wrote, checking that the vectors and the manifest agree."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST_FILE, kind="embeddings")
    embedder = EmbedderInfo.from_dict(manifest["embedder"])
    if not (directory / EMBEDDINGS_FILE).is_file():
        raise ArtifactError(f"{directory / EMBEDDINGS_FILE} is missing: extract the embeddings again")
    vectors = np.load(directory / EMBEDDINGS_FILE)
    expected = (manifest["count"], embedder.dim)
    if vectors.shape != expected or vectors.dtype != np.float32:
        raise ArtifactError(
            f"{directory / EMBEDDINGS_FILE} holds {vectors.shape} {vectors.dtype}, but the manifest "
            f"describes {expected} float32; the save was interrupted or the files come from "
            "different runs: extract the embeddings again"
        )
    items = [ImageRecord(path, size, mtime_ns) for path, size, mtime_ns in manifest["items"]]
    return Embeddings(vectors, items, embedder, manifest["image_root"], read_skipped(directory))


def read_skipped(directory: str | os.PathLike) -> list[Skipped]:
    """Read the skip report of an embeddings folder (empty if there is none)."""
    path = Path(directory) / SKIPPED_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return [Skipped(row["path"], row["reason"]) for row in csv.DictReader(file)]
