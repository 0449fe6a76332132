"""Reading a collection's manifest and its shards' items files, and checking that they are what we write.

The manifest (format 4) is small: it names each shard's two files (vectors
and items), with their row counts, and the skipped file. Formats 2 and 3 kept
every record in the manifest itself; they are read here into the same
shape, so the rest of the code sees one format, and the next save converts them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .embedders import EmbedderInfo
from .records import SCHEMA, Records, Skipped, sha256_digests
from .storage import DamagedStateError, DamagedStateWarning, embeddings_advice, is_file_name, one_line, read_json

MANIFEST_FILE = "manifest.json"

#: A shard's items file: the records of the images whose vectors it holds, and the row of each vector.
ITEMS_SCHEMA = SCHEMA.append(pa.field("row", pa.int32()))
SKIPPED_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest names it: its vectors file, its items file, and their row counts."""

    vectors: str
    items: str | None  # None: a format 2 or 3 shard, whose records were in the manifest
    rows: int  # vectors in the file
    images: int  # records in the items file: the live rows


@dataclass(frozen=True)
class Commit:
    """A saved version of a collection: what its manifest says."""

    directory: Path
    collection: str | None  # a random id, made by the first save (None: format 2 or 3)
    version: int  # 1 for the first save, one more for each after it (0: format 2 or 3)
    token: str | None  # a random id of this very save
    shards: tuple[ShardEntry, ...]
    skipped_file: str | None
    skipped: tuple[Skipped, ...]
    embedder: EmbedderInfo
    image_root: str
    next_id: int
    legacy: tuple[tuple[Records, np.ndarray], ...] = ()  # format 2 and 3: per shard, its records and rows

    def files(self) -> list[Path]:
        """The files this commit consists of: the manifest, then each shard's vectors and items, then the skipped."""
        names = [MANIFEST_FILE, *(name for shard in self.shards for name in (shard.vectors, shard.items) if name)]
        return [self.directory / name for name in [*names, *([self.skipped_file] if self.skipped_file else [])]]

    def summary(self) -> str:
        """E.g. "version 3 of the collection: 2 shards, 10,240 images"."""
        images = sum(shard.images for shard in self.shards)
        shards = "1 shard" if len(self.shards) == 1 else f"{len(self.shards)} shards"
        return f"version {self.version} of the collection: {shards}, {images:,} images"


def read_manifest(directory: Path) -> Commit:
    """Read and check a manifest; raise `DamagedStateError` if it is missing, not JSON, or not shaped as one."""
    path = directory / MANIFEST_FILE
    manifest = read_json(path, kind="embeddings")
    try:
        return _parse(directory, manifest)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        detail = f"no {one_line(error.args[0])!r} entry" if isinstance(error, KeyError) else one_line(error)[:200]
        root, embedder = manifest.get("image_root"), manifest.get("embedder")
        root = root if isinstance(root, str) else None
        advice = embeddings_advice(directory, root, "all", embedder if isinstance(embedder, dict) else None)
        damage = f"{path} is damaged (not a manifest as this code writes them: {detail})"
        raise DamagedStateError(damage, advice) from error


def current_commit_token(directory: Path) -> str | None:
    """The commit token of the manifest in `directory` as it is now, without reading its records or any other
    file; None for format 2 or 3 (which had none). `DamagedStateError` where it is missing or damaged."""
    token = read_json(directory / MANIFEST_FILE, kind="embeddings").get("commit")
    return token if isinstance(token, str) else None


def read_items(commit: Commit, number: int) -> tuple[Records, np.ndarray]:
    """The records shard `number`'s items file holds, and the row of each one's vector; `DamagedStateError` if
    damaged."""
    entry, directory = commit.shards[number], commit.directory
    if entry.items is None:
        return commit.legacy[number]
    path = directory / entry.items
    advice = embeddings_advice(directory, commit.image_root, "some", commit.embedder.to_dict())
    if not path.is_file():
        raise DamagedStateError(f"{path}, named by the manifest, is missing", advice)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DamagedStateError(f"{path} is damaged (not a readable Parquet file: {one_line(error)[:120]})",
                                advice) from error
    problem = None
    if not table.schema.equals(ITEMS_SCHEMA):
        problem = f"its columns are {', '.join(f'{f.name}: {f.type}' for f in table.schema)}, not ours"
    elif table.num_rows != entry.images:
        problem = f"it holds {table.num_rows} images, but the manifest says {entry.images}"
    else:
        rows = table.column("row").to_numpy().astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= entry.rows or np.bincount(rows).max() > 1):
            problem = f"its rows are not distinct rows of the {entry.rows} in {entry.vectors}"
    if problem:
        raise DamagedStateError(f"{path} is damaged ({problem})", advice)
    return Records(table.drop_columns(["row"])), rows


def read_skipped_file(directory: Path, name: str) -> tuple[Skipped, ...]:
    path = directory / name
    try:
        table = pq.read_table(path)
        if not table.schema.equals(SKIPPED_SCHEMA):
            raise ValueError("its columns are not path and reason")
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ValueError(f"its skipped file {name} is damaged ({one_line(error)[:120]})") from error
    columns = table.to_pydict()
    return tuple(Skipped(path, reason) for path, reason in zip(columns["path"], columns["reason"]))


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, which JSON true and false become


def _check_name(name: object, what: str) -> str:
    if not is_file_name(name):
        raise ValueError(f"{what} {one_line(repr(name))[:80]} is not a file name")
    return name


def _count(value: object, what: str) -> int:
    if not (_is_int(value) and value >= 0):
        raise ValueError(f"{what} {one_line(repr(value))[:40]} is not a count")
    return value


def _parse(directory: Path, manifest: dict) -> Commit:
    """The manifest as a `Commit`; a KeyError, TypeError or ValueError (whose text says what) where it is not
    shaped as one."""
    embedder = EmbedderInfo.from_dict(manifest["embedder"])
    if not (isinstance(embedder.backbone, str) and isinstance(embedder.weights, str) and embedder.dim > 0):
        raise ValueError(f"the embedder {one_line(manifest['embedder'])[:80]} is not one this code writes")
    image_root, next_id, count = manifest["image_root"], manifest["next_id"], manifest["count"]
    if not isinstance(image_root, str):
        raise ValueError(f"its image_root {one_line(repr(image_root))[:80]} is not a folder")
    if not _is_int(next_id):
        raise ValueError(f"its next_id {one_line(repr(next_id))[:40]} is not an id")
    if manifest["format_version"] < 4:
        return _parse_legacy(directory, manifest, embedder)
    shards = []
    for shard in manifest["shards"]:
        rows = _count(shard["rows"], "a shard's row count")
        images = _count(shard["images"], "a shard's image count")
        if images > rows:
            raise ValueError(f"a shard lists {images} images for {rows} vectors")
        shards.append(ShardEntry(_check_name(shard["vectors"], "a shard's vectors file"),
                                 _check_name(shard["items"], "a shard's items file"), rows, images))
    if not (_is_int(count) and count == sum(shard.images for shard in shards)):
        raise ValueError(f"its count {one_line(repr(count))[:40]} is not the sum of its shards' images")
    collection, version, token = manifest["collection"], manifest["version"], manifest["commit"]
    if not (isinstance(collection, str) and isinstance(token, str) and _is_int(version) and version >= 1):
        raise ValueError("its collection, version or commit is not what a save writes")
    skipped_file = _check_name(manifest["skipped"]["file"], "its skipped file")
    try:
        skipped = read_skipped_file(directory, skipped_file)
    except ValueError as error:  # only a report: its files are tried again by every run anyway
        warnings.warn(DamagedStateWarning(f"{directory / MANIFEST_FILE}: {error}; the next save writes it again"),
                      stacklevel=3)
        skipped_file, skipped = None, ()
    return Commit(directory, collection, version, token, tuple(shards), skipped_file, skipped, embedder,
                  image_root, next_id)


def _parse_legacy(directory: Path, manifest: dict, embedder: EmbedderInfo) -> Commit:
    """A format 2 or 3 manifest (every record in it) as a `Commit` whose shards carry their records."""
    if manifest["format_version"] == 2:  # one vectors file, row i for item i
        shards = [(manifest["vectors_file"], manifest["count"])]
        entries = [[*item, 0, row] if isinstance(item, list) else item for row, item in enumerate(manifest["items"])]
    else:
        shards = [(shard["file"], shard["rows"]) for shard in manifest["shards"]]
        entries = manifest["items"]
    for name, rows in shards:
        _check_name(name, "a shard's file")
        _count(rows, "a shard's row count")
    columns: dict[str, list] = {name: [] for name in ["id", "path", "size", "mtime_ns", "sha256", "shard", "row"]}
    for entry in entries:
        if not (
            type(entry) is list and len(entry) == 7 and _is_int(entry[0]) and type(entry[1]) is str
            and _is_int(entry[2]) and _is_int(entry[3]) and type(entry[4]) is str and _is_int(entry[5])
            and _is_int(entry[6])
        ):
            raise ValueError(f"an image entry {one_line(repr(entry))[:80]} is not [id, path, size, mtime, sha256, "
                             "shard, row]")
        for name, value in zip(columns, entry):
            columns[name].append(value)
        if not (0 <= entry[5] < len(shards) and 0 <= entry[6] < shards[entry[5]][1]):
            raise ValueError(f"it lists an image outside its shards ({one_line(repr(entry))[:80]})")
    if not (_is_int(manifest["count"]) and manifest["count"] == len(entries)):
        raise ValueError(f"its count {one_line(repr(manifest['count']))[:40]} is not the {len(entries)} images "
                         "it lists")
    digests = sha256_digests(columns["sha256"])
    table = pa.table({**{name: columns[name] for name in ["id", "path", "size", "mtime_ns"]}, "sha256": digests,
                      "version": [0] * len(entries)}, schema=SCHEMA)
    shard_numbers, rows = np.array(columns["shard"], dtype=np.int64), np.array(columns["row"], dtype=np.int64)
    legacy, entries_out = [], []
    for number, (name, shard_rows) in enumerate(shards):
        mine = np.flatnonzero(shard_numbers == number)
        legacy.append((Records(table.take(pa.array(mine))), rows[mine]))
        entries_out.append(ShardEntry(name, None, shard_rows, len(mine)))
    skipped = []
    for entry in manifest["skipped"]:
        if not (type(entry) is list and len(entry) == 2 and all(type(text) is str for text in entry)):
            raise ValueError(f"a skipped entry {one_line(repr(entry))[:80]} is not [path, reason]")
        skipped.append(Skipped(*entry))
    return Commit(directory, None, 0, None, tuple(entries_out), None, tuple(skipped), embedder,
                  manifest["image_root"], manifest["next_id"], tuple(legacy))
