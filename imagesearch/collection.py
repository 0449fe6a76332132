"""The saved collection: columnar records, vector shards, a small manifest, and the commit that saves them.

On disk (the folder notebook 01 writes and notebook 02 reads):

    embeddings/
      manifest.json          the commit record, a few KB whatever the collection's size: format version,
                             collection id and version, embedder, image root, next id, and the shards
      vectors.<token>.npy    a shard's vectors: float32 (rows, dim), up to SHARD_ROWS rows; written once
      items.<token>.parquet  a shard's records, one row per image whose vector it holds: id, path, size,
                             mtime, SHA-256, version, and the row of its vector (see `records.SCHEMA`)
      skipped.<token>.parquet  the files that were not embedded, with the reason
      skipped.csv            the same, for people
      pending/               while a run is unsaved: its journal, one file per embedded batch

A save writes only what changed: new vectors go to new shards; a shard
whose images were all kept keeps its items file too, and one where an image
was touched, renamed or removed gets a new items file (a few hundred KB).
The manifest that names the files is written last, atomically: that rename
is the commit. Then the files it no longer names are deleted.

Every save makes a new version of the collection. An index records the
version it was built from, and each record the version that embedded its
vector, so an index is updated from the versions alone (see `index.py`).

Folders of formats 2 and 3 (every record in `manifest.json`) are read, and
converted by their next save.
"""

from __future__ import annotations

import csv
import os
import secrets
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .embedders import EmbedderInfo
from .images import describe_ignored
from .journal import delete_journal
from .manifest import (
    ITEMS_SCHEMA,
    MANIFEST_FILE,
    SKIPPED_SCHEMA,
    Commit,
    ShardEntry,
    current_commit_token,
    read_items,
    read_manifest,
)
from .records import ImageRecord, Records, Skipped
from .storage import (
    FORMAT_VERSION,
    ArtifactError,
    DamagedStateError,
    DamagedStateWarning,
    atomic_path,
    embeddings_advice,
    exclusive,
    fresh_name,
    remove_stale,
    write_json,
)
from .vectors import FileSource, VectorStore, shard_damage, shard_shape, write_shard

SKIPPED_FILE = "skipped.csv"
SHARD_STEM, SHARD_SUFFIX = "vectors", ".npy"
ITEMS_STEM, SKIPPED_STEM, PARQUET_SUFFIX = "items", "skipped", ".parquet"
LEGACY_STEM = "embeddings"  # format 2 kept every vector in one embeddings.<token>.npy; it is read as one shard

#: Rows per shard a save writes: 64 MiB of 2048-d float32 vectors, so a million images make ~120 shards.
SHARD_ROWS = 8192
#: A save rewrites a shard whose live rows fell below this share (their images were changed or deleted),
COMPACT_BELOW = 0.5
#: and merges shards under a quarter of SHARD_ROWS (left by small updates) once there are more than this many.
MAX_SMALL_SHARDS = 8


@dataclass(frozen=True)
class Changes:
    """What an extraction did, by path: embedded anew, re-embedded, dropped, kept, or skipped.

    Every file under the image folder is in exactly one of: the images (added,
    changed, renamed, unchanged, repaired), `skipped` (not readable as an
    image, with a reason), or `ignored` (not considered: see `images.FolderScan`).
    """

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (old path, new path), vector kept
    unchanged: int = 0
    skipped: int = 0
    resumed: int = 0  # of the added and changed: vectors taken from an interrupted run's journal
    ignored: Counter = field(default_factory=Counter)  # (why, ending) -> files, as `FolderScan.ignored`
    noted: int = 0  # of the embedded: images that decoded while Pillow or libtiff warned (a corrupt EXIF block)
    note_example: str = ""  # the first such warning, "path: what was said"
    repaired: list[str] = field(default_factory=list)  # unchanged, but their saved vectors were lost: embedded again

    @property
    def embedded(self) -> int:
        """How many images went through the model in this run."""
        return len(self.added) + len(self.changed) + len(self.repaired) - self.resumed

    def summary(self) -> str:
        repaired = f", {len(self.repaired)} repaired" if self.repaired else ""
        resumed = f"; {self.resumed} vectors resumed from an interrupted run" if self.resumed else ""
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
            f"{len(self.renamed)} renamed, {self.unchanged} unchanged, {self.skipped} skipped{repaired}{resumed}"
        )

    def ignored_summary(self) -> str:
        """What the run did not consider, e.g. "2 others ignored: 2 not images by their extension (.md, .py)"."""
        return describe_ignored(self.ignored)

    def notes_summary(self) -> str:
        """How many embedded images came with a decoder's warning, and the first, or '' where none did."""
        if not self.noted:
            return ""
        images, were = ("image", "was") if self.noted == 1 else ("images", "were")
        return f"{self.noted} {images} decoded despite a warning and {were} embedded, e.g. {self.note_example}"


@dataclass
class Embeddings:
    """A collection: row i of `store` is the embedding of the image that row i of `records` describes.

    Records are sorted by path. The vectors are read from wherever they are
    (saved shards, a run's journal, memory) only when asked for: `vectors`
    reads them all into one array, `store.chunks()` a block at a time. For
    small collections made by hand, an (n, dim) array is accepted for `store`
    and a list of `ImageRecord`s for `records`.

    `saved` is the commit these embeddings are, or derive from, and
    `unchanged` says which rows are as that commit saved them (None: all
    are): a save rewrites only the files of what changed.
    """

    store: VectorStore
    records: Records
    embedder: EmbedderInfo
    image_root: str
    skipped: list[Skipped] = field(default_factory=list)
    next_id: int = 0  # ids are never reused, so an id names one image content for good
    changes: Changes = field(default_factory=Changes)
    journal: list[Path] = field(default_factory=list)  # the journal files a save deletes (see journal.Journal)
    # Images a damaged folder lost the vectors of (`load_previous_embeddings`): not in `records`; an extraction
    # given these embeddings as `previous` embeds them again under the same ids.
    lost: Records = field(default_factory=Records.empty)
    saved: Commit | None = None
    unchanged: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.store, VectorStore):
            self.store = VectorStore.from_array(self.store)
        if not isinstance(self.records, Records):
            self.records = Records.from_items(self.records)
        if not isinstance(self.lost, Records):
            self.lost = Records.from_items(self.lost)
        if len(self.store) != len(self.records):
            raise ValueError(f"{len(self.store)} vectors for {len(self.records)} items")
        if not self.records.is_sorted_by_path():
            order = self.records.path_order()
            self.records, self.store = self.records.take(order), self.store.subset(order)
            if self.unchanged is not None:
                self.unchanged = self.unchanged[order]
            if not self.records.is_sorted_by_path():
                raise ValueError("an image path is listed twice")
        if not self.records.has_unique_ids():
            raise ValueError("an image id is listed twice")
        # Ids are never reused; embeddings made by hand may have left next_id at 0.
        highest = max(int(self.records.ids.max(initial=-1)), int(self.lost.ids.max(initial=-1)))
        self.next_id = max(self.next_id, highest + 1)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def vectors(self) -> np.ndarray:
        """Every vector, in record order, read into one (n, dim) float32 array."""
        return self.store.to_array()

    @property
    def paths(self) -> list[str]:
        return self.records.paths

    @property
    def ids(self) -> np.ndarray:
        return self.records.ids

    @property
    def items(self) -> list[ImageRecord]:
        """Every record as an `ImageRecord`: one Python object per image, for small collections."""
        return self.records.to_items()

    @property
    def is_saved(self) -> bool:
        """Whether these embeddings are exactly what `saved` committed (as loaded, or as a save returned them)."""
        return self.saved is not None and self.unchanged is None and not self.journal

    def summary(self) -> str:
        return (
            f"{len(self.records)} images embedded, {len(self.skipped)} skipped; "
            f"embeddings {len(self.store)} x {self.store.dim} float32"
        )


# --- saving: the commit ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShardWrite:
    """One new shard of a save, named before it is written: its vectors, read from wherever they are now (the
    journal, memory, older shards), and its items (the records, with each one's row in the shard).

    A save's shard writes are independent of one another, and each is whole or absent: they may run anywhere
    the folder is reachable from, in any order (`distributed.save_on_ray` runs them as Ray tasks), and one run
    twice writes the same files again. The save commits only after every one has been written.
    """

    directory: Path
    vectors: str  # the file names
    items: str
    store: VectorStore
    table: pa.Table  # ITEMS_SCHEMA

    def __call__(self) -> None:
        with atomic_path(self.directory / self.vectors) as temporary:
            write_shard(temporary, self.store, np.arange(len(self.store)))
        _write_parquet(self.directory / self.items, self.table)


def write_here(writes: Sequence[ShardWrite]) -> None:
    """Write a save's new shards one after the other, in this process: what `save_embeddings` does by default."""
    for write in writes:
        write()


def save_embeddings(embeddings: Embeddings, directory: str | os.PathLike,
                    write_shards: Callable[[Sequence[ShardWrite]], None] = write_here) -> Embeddings:
    """Save `embeddings` to `directory` so that a crash at any point leaves the previous save whole.

    Writes only what changed since the commit the embeddings derive from:
    vectors no shard here holds go to new shards, a chunk at a time; a kept
    shard's items file is rewritten only where its images changed. The
    manifest that names the files is written last, atomically (the commit);
    only then are files no longer named deleted, with the run's journal.
    Shards mostly of dead rows, and many small ones, are rewritten on the way
    (compaction). Returns the saved embeddings, which read their vectors from
    the saved shards. One process at a time saves into a folder; another
    raises `FolderBusyError`. `write_shards` writes the new shards (`ShardWrite`s), all of them before it returns:
    by default here, one after the other; `distributed.save_on_ray` passes one that writes them on a Ray cluster.
    """
    with exclusive(directory):
        return _save_embeddings(embeddings, Path(directory), write_shards)


def _save_embeddings(embeddings: Embeddings, directory: Path,
                     write_shards: Callable[[Sequence[ShardWrite]], None] = write_here) -> Embeddings:
    if len(embeddings.lost):  # saving these would drop the lost images from the collection, and their ids with them
        raise ArtifactError(
            f"these embeddings lack the vectors of {len(embeddings.lost)} images, lost with a damaged file; pass "
            "them as previous= to extract_embeddings, which embeds those images again, and save its result"
        )
    base = _base_commit(embeddings, directory)
    store, records = embeddings.store, embeddings.records
    kept = _shards_to_keep(store, directory)
    shard_of_row = np.full(len(store), -1, dtype=np.int64)  # the new layout: each row's shard number,
    row_in_shard = np.zeros(len(store), dtype=np.int64)  # and its row there
    entries: list[ShardEntry] = []
    base_entries = {entry.vectors: entry for entry in base.shards} if base else {}
    unchanged = np.ones(len(store), bool) if embeddings.unchanged is None else embeddings.unchanged
    by_source = np.argsort(store.locations[:, 0], kind="stable")  # the rows of each source, grouped once
    bounds = np.searchsorted(store.locations[by_source, 0], np.arange(len(store.sources) + 1))
    for number, source, rows in kept:
        mine = by_source[bounds[number] : bounds[number + 1]]
        shard_of_row[mine], row_in_shard[mine] = len(entries), store.locations[mine, 1]
        entry = base_entries.get(source.path.name)
        if not (entry and entry.items and entry.images == len(mine) and unchanged[mine].all()):
            entry = ShardEntry(source.path.name, _write_items(directory, records, mine, store.locations[mine, 1]),
                               rows, len(mine))
        entries.append(entry)
    to_write = np.flatnonzero(shard_of_row < 0)
    writes = []
    for start in range(0, len(to_write), SHARD_ROWS):
        rows = to_write[start : start + SHARD_ROWS]
        write = ShardWrite(directory, fresh_name(SHARD_STEM, SHARD_SUFFIX), fresh_name(ITEMS_STEM, PARQUET_SUFFIX),
                           store.subset(rows), _items_table(records, rows, np.arange(len(rows))))
        shard_of_row[rows], row_in_shard[rows] = len(entries), np.arange(len(rows))
        entries.append(ShardEntry(write.vectors, write.items, len(rows), len(rows)))
        writes.append(write)
    write_shards(writes)

    skipped = list(embeddings.skipped)
    if base and base.skipped_file and tuple(skipped) == base.skipped:
        skipped_file = base.skipped_file
    else:
        skipped_file = _write_skipped(directory, skipped)
    if (  # nothing changed: the saved version stays current (and an index of it too)
        base is not None and base.collection is not None and tuple(entries) == base.shards
        and skipped_file == base.skipped_file and embeddings.next_id == base.next_id
        and embeddings.image_root == base.image_root and embeddings.embedder == base.embedder
    ):
        _tidy(directory, base, embeddings.journal, base)  # what a killed save left behind
        return replace(embeddings, journal=[], saved=base, unchanged=None)
    if base is not None and base.collection is not None:
        collection, version = base.collection, base.version + 1
    else:  # a new collection (or one of format 3): versions start above any its records carry
        collection, version = secrets.token_hex(8), max(1, int(records.versions.max(initial=0)))
    commit = Commit(directory, collection, version, secrets.token_hex(8), tuple(entries), skipped_file,
                    tuple(skipped), embeddings.embedder, embeddings.image_root, embeddings.next_id)
    write_json(
        directory / MANIFEST_FILE,
        {
            "kind": "embeddings",
            "format_version": FORMAT_VERSION,
            "collection": commit.collection,
            "version": commit.version,
            "commit": commit.token,
            "embedder": embeddings.embedder.to_dict(),
            "image_root": embeddings.image_root,
            "count": len(records),
            "next_id": embeddings.next_id,
            "shards": [asdict(entry) for entry in entries],
            "skipped": {"file": skipped_file, "count": len(skipped)},
        },
    )
    _tidy(directory, commit, embeddings.journal, base)  # committed: what the manifest no longer names goes
    sources = [FileSource(directory / entry.vectors) for entry in entries]
    saved_store = VectorStore(sources, np.column_stack([shard_of_row, row_in_shard]), store.dim)
    return replace(embeddings, store=saved_store, journal=[], saved=commit, unchanged=None)


def _tidy(directory: Path, commit: Commit, journal: list[Path], base: Commit | None) -> None:
    """After `commit` is the folder's current one: delete the data files it does not name (earlier saves', and
    what killed ones left) and the run's journal, and write the skip report where it is not that of `base`."""
    remove_stale(directory, SHARD_STEM, SHARD_SUFFIX, keep={entry.vectors for entry in commit.shards})
    remove_stale(directory, ITEMS_STEM, PARQUET_SUFFIX, keep={entry.items for entry in commit.shards})
    remove_stale(directory, SKIPPED_STEM, PARQUET_SUFFIX, keep={commit.skipped_file})
    remove_stale(directory, LEGACY_STEM, SHARD_SUFFIX, keep=())
    delete_journal(journal)
    if not (base and commit.skipped_file == base.skipped_file and (directory / SKIPPED_FILE).exists()):
        _write_skipped_report(directory / SKIPPED_FILE, list(commit.skipped))


def _base_commit(embeddings: Embeddings, directory: Path) -> Commit | None:
    """The commit in `directory` that `embeddings` derive from, or None (a first save, or another folder's).

    Raise `ArtifactError` if the folder was saved over since: these embeddings
    would undo that save's work.
    """
    base = embeddings.saved
    if base is None or base.directory.resolve() != directory.resolve():
        return None
    try:
        current = current_commit_token(directory)
    except DamagedStateError:  # deleted or damaged since: not the commit these derive from either
        current = "none"
    if current != base.token:
        raise ArtifactError(
            f"{directory} was saved over since these embeddings were loaded; load them again "
            "(an extraction run again resumes from its journal)"
        )
    return base


def _items_table(records: Records, rows: np.ndarray, vector_rows: np.ndarray) -> pa.Table:
    """The records of `rows`, with the row of each one's vector in its shard: an items file's table."""
    return records.take(rows).table.append_column(ITEMS_SCHEMA.field("row"), pa.array(vector_rows, pa.int32()))


def _write_items(directory: Path, records: Records, rows: np.ndarray, vector_rows: np.ndarray) -> str:
    """Write the records of `rows`, with the row of each one's vector in its shard; return the file's name."""
    name = fresh_name(ITEMS_STEM, PARQUET_SUFFIX)
    _write_parquet(directory / name, _items_table(records, rows, vector_rows))
    return name


def _write_skipped(directory: Path, skipped: list[Skipped]) -> str:
    table = pa.table({"path": [skip.path for skip in skipped], "reason": [skip.reason for skip in skipped]},
                     schema=SKIPPED_SCHEMA)
    name = fresh_name(SKIPPED_STEM, PARQUET_SUFFIX)
    _write_parquet(directory / name, table)
    return name


def _write_parquet(path: Path, table: pa.Table) -> None:
    """Write `table` to `path` as Parquet (zstd), atomically: an items or a skipped file of a save."""
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")


def _write_skipped_report(path: Path, skipped: list[Skipped]) -> None:
    """The skip report for people; the committed skipped file holds the same list."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "reason"])
        writer.writerows((skip.path, skip.reason) for skip in skipped)


def _shards_to_keep(store: VectorStore, directory: Path) -> list[tuple[int, FileSource, int]]:
    """The saved shards of `directory` that `store` reads from and a save can keep as they are,
    as (source number in `store`, shard, its row count).

    A shard is rewritten instead when under COMPACT_BELOW of its rows are
    still used, and small shards are merged once there are too many of them.
    """
    here = directory.resolve()
    live = np.bincount(store.locations[:, 0], minlength=len(store.sources)) if len(store) else []
    candidates = []
    for number, source in enumerate(store.sources):
        if (
            isinstance(source, FileSource) and source.key is None and source.path.parent.resolve() == here
            and source.path.name.startswith(f"{SHARD_STEM}.")  # format 2's one file is rewritten into shards
        ):
            if not source.path.is_file():
                raise ArtifactError(
                    f"{source.path} is gone: {directory} was saved over since these embeddings were loaded; "
                    "load them again"
                )
            rows = shard_shape(source.path)[0][0]
            if live[number] >= COMPACT_BELOW * rows:
                candidates.append((number, source, rows))
    small = [number for number, _, rows in candidates if rows < SHARD_ROWS // 4]
    merge = set(small) if len(small) > MAX_SMALL_SHARDS else set()
    return [candidate for candidate in candidates if candidate[0] not in merge]


# --- loading ----------------------------------------------------------------------------------------


def load_embeddings(directory: str | os.PathLike) -> Embeddings:
    """Read what `save_embeddings` wrote, checking that the shards, their items and the manifest agree.

    Reads the manifest and the records' columns; of the vectors, only the
    shards' headers (vectors are read when used). Any damage (a file missing,
    truncated, or not what the manifest describes) raises `DamagedStateError`,
    one line that names the file and says the command that repairs it.
    """
    directory = Path(directory)
    embeddings, losses = _load_trusted(directory, read_manifest(directory))
    if losses:
        (damage, _, _), others = losses[0], losses[1:]
        if others:
            more = "file is" if len(others) == 1 else "files are"
            damage += f", and {len(others)} other {more} damaged too"
        vectors = sum(count for _, count, records_lost in losses if not records_lost)
        records = sum(count for _, count, records_lost in losses if records_lost)
        held = []
        if vectors:
            held.append(f"the vectors of {vectors} images are lost" if vectors > 1 else "the vector of 1 image is lost")
        if records:
            held.append(f"the records of {records} images are lost (they are embedded again as new images)"
                        if records > 1 else "the record of 1 image is lost (it is embedded again as a new image)")
        held = " and ".join(held) or "no image is lost"
        advice = embeddings_advice(directory, embeddings.image_root, embedder=embeddings.embedder.to_dict())
        raise DamagedStateError(f"{damage}; {held}", advice)
    return embeddings


def load_previous_embeddings(directory: str | os.PathLike) -> Embeddings | None:
    """What an update can trust of the embeddings saved in `directory`, or None where nothing was saved yet.

    Damage is repaired rather than refused, each time with a `DamagedStateWarning`
    that says what: where a shard's vectors are missing or damaged, the result
    holds the images whose vectors are intact, and lists the others in `lost`,
    so that `extract_embeddings` embeds exactly those again, under their ids;
    where a shard's items file is, its images are embedded again as new ones.
    Where the manifest itself is damaged, nothing can be trusted: the result
    is None, every image is embedded again, and the next save replaces the
    manifest and deletes the files it no longer names. Saved state of a newer
    format is refused (`ArtifactError`): it is not damaged, and this code must
    not write over it.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).exists():
        return None
    try:
        manifest = read_manifest(directory)
    except DamagedStateError as error:
        warnings.warn(
            DamagedStateWarning(
                f"{error.damage}; no saved vector can be matched to its image without it, so every image is embedded "
                "again, and the next save replaces it"
            ),
            stacklevel=2,
        )
        return None
    embeddings, losses = _load_trusted(directory, manifest)
    for damage, count, records_lost in losses:
        again = f"its {count} {'image is' if count == 1 else 'images are'} embedded again" if count else "no image lost"
        again += ", as new images" if records_lost and count else ""
        warnings.warn(DamagedStateWarning(f"{damage}; {again}"), stacklevel=2)
    return embeddings


def read_skipped(directory: str | os.PathLike) -> list[Skipped]:
    """The files the saved embeddings skipped, with reasons (as `skipped.csv` lists them for people)."""
    return list(read_manifest(Path(directory)).skipped)


def _load_trusted(directory: Path, commit: Commit) -> tuple[Embeddings, list[tuple[str, int, bool]]]:
    """The embeddings of the items whose vectors are intact, the others in `lost`; and each damage found,
    as (what is damaged, how many images lost their vector or record to it, whether it was their records)."""
    parts, lost, losses = [], [], []
    sources: list[FileSource] = []
    for number, entry in enumerate(commit.shards):
        vectors_damage = shard_damage(directory / entry.vectors, (entry.rows, commit.embedder.dim))
        try:
            records, rows = read_items(commit, number)
        except DamagedStateError as error:  # which images it held is lost with it: they come back as new
            losses.append((error.damage, entry.images, True))
            continue
        if vectors_damage is not None:
            named = ", named by the manifest," if vectors_damage == "is missing" else ""
            losses.append((f"{directory / entry.vectors}{named} {vectors_damage}", len(records), False))
            lost.append(records)
            continue
        parts.append((records, len(sources), rows))
        sources.append(FileSource(directory / entry.vectors))
    records = Records.concat([part[0] for part in parts])
    locations = np.column_stack([
        np.concatenate([np.full(len(part[0]), part[1]) for part in parts] or [np.zeros(0, np.int64)]),
        np.concatenate([part[2] for part in parts] or [np.zeros(0, np.int64)]),
    ])
    store = VectorStore(sources, locations, commit.embedder.dim)
    try:
        embeddings = Embeddings(
            store, records, commit.embedder, commit.image_root, list(commit.skipped), commit.next_id,
            lost=Records.concat(lost), saved=commit,
        )
    except ValueError as error:  # the same path or id in two shards
        raise DamagedStateError(
            f"{directory / MANIFEST_FILE} is damaged (its shards disagree: {error})",
            embeddings_advice(directory, commit.image_root, "all", commit.embedder.to_dict()),
        ) from error
    return embeddings, losses
