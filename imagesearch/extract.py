"""Embedding extraction, first and incremental: a folder of images in, vectors and a manifest out.

On disk (the folder notebook 01 writes and notebook 02 reads):

    embeddings/
      manifest.json         the commit record: format version, embedder, image root, the shard files
                            with their row counts, and per image its stable id, path, size, mtime,
                            SHA-256, and where its vector is (shard, row)
      vectors.<token>.npy   a shard: float32 (rows, dim), up to SHARD_ROWS rows; written once, never
                            changed. A save writes only the vectors no shard here holds yet
      skipped.csv           every file that was not embedded, with the reason (a report for people)
      pending/              while a run is unsaved: its journal, one file per embedded batch

Re-running on a changed folder embeds only what changed: a file whose size
and modification time are unchanged keeps its vector; one whose size or time
differ is hashed, and keeps its vector if the content is the same; a file
that appears under a new path with the content of a vanished one (a rename or
a move) keeps its vector too. Everything else is embedded.

A damaged folder is repaired the same way (`load_previous_embeddings`): the
images whose vectors a damaged or missing shard held are embedded again,
under the ids they had, and everything else is kept.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import queue
import threading
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from stat import S_ISREG
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from .embedders import Embedder, EmbedderInfo
from .images import (
    NOT_A_REGULAR_FILE,
    ImageLoadError,
    describe_ignored,
    load_image,
    scan_folder,
    unreadable_reason,
)
from .storage import (
    FORMAT_VERSION,
    ArtifactError,
    DamagedStateError,
    DamagedStateWarning,
    atomic_path,
    embeddings_advice,
    exclusive,
    fresh_name,
    is_file_name,
    one_line,
    read_json,
    remove_stale,
    write_json,
)
from .vectors import ArraySource, FileSource, Source, VectorStore, shard_damage, shard_shape, write_shard

T = TypeVar("T")

MANIFEST_FILE = "manifest.json"
JOURNAL_DIR, JOURNAL_SUFFIX = "pending", ".npz"
SKIPPED_FILE = "skipped.csv"
SHARD_STEM, SHARD_SUFFIX = "vectors", ".npy"
LEGACY_STEM = "embeddings"  # format 2 kept every vector in one embeddings.<token>.npy; it is read as one shard

#: Rows per shard a save writes: 64 MiB of 2048-d float32 vectors, so a million images make ~120 files.
SHARD_ROWS = 8192
#: A save rewrites a shard whose live rows fell below this share (their images were changed or deleted),
COMPACT_BELOW = 0.5
#: and merges shards under a quarter of SHARD_ROWS (left by small updates) once there are more than this many.
MAX_SMALL_SHARDS = 8


@dataclass(frozen=True)
class ImageRecord:
    """One embedded image: a stable id, its path relative to the image root, and its file when embedded."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Skipped:
    """A file that was not embedded, and why."""

    path: str
    reason: str


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
    """Vectors of a collection: row i of `store` is the embedding of `items[i]`; items are sorted by path.

    The vectors are read from wherever they are (saved shards, a run's journal,
    memory) only when asked for: `vectors` reads them all into one array,
    `store.chunks()` a block at a time. An (n, dim) array is accepted for
    `store` and kept in memory.
    """

    store: VectorStore
    items: list[ImageRecord]
    embedder: EmbedderInfo
    image_root: str
    skipped: list[Skipped] = field(default_factory=list)
    next_id: int = 0  # ids are never reused, so an id names one image content for good
    changes: Changes = field(default_factory=Changes)
    journal: list[Path] = field(default_factory=list)  # the journal files a save deletes (see _Journal.files)
    # Images a damaged folder lost the vectors of (`load_previous_embeddings`): not in `items`; an extraction
    # given these embeddings as `previous` embeds them again under the same ids.
    lost: list[ImageRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.store, VectorStore):
            self.store = VectorStore.from_array(self.store)
        if len(self.store) != len(self.items):
            raise ValueError(f"{len(self.store)} vectors for {len(self.items)} items")

    @property
    def vectors(self) -> np.ndarray:
        """Every vector, in item order, read into one (n, dim) float32 array."""
        return self.store.to_array()

    @property
    def paths(self) -> list[str]:
        return [item.path for item in self.items]

    @property
    def ids(self) -> np.ndarray:
        return np.array([item.id for item in self.items], dtype=np.int64)

    def summary(self) -> str:
        return (
            f"{len(self.items)} images embedded, {len(self.skipped)} skipped; "
            f"embeddings {len(self.store)} x {self.store.dim} float32"
        )


def extract_embeddings(
    image_root: str | os.PathLike,
    embedder: Embedder,
    batch_size: int = 32,
    progress: bool = True,
    previous: Embeddings | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> Embeddings:
    """Embed the images under `image_root` in batches; with `previous`, embed only what changed since.

    Unreadable files are skipped with a reason and never stop the run. The
    result's `changes` says what was added, changed, removed, renamed and kept.
    With `checkpoint_dir` (normally the embeddings folder), every embedded
    batch is journaled there as it completes, and the result reads its
    vectors from there, so they are never all in memory; a run that is
    interrupted (Ctrl-C, a killed kernel) resumes where it stopped, and
    `save_embeddings` deletes the journal once the result is saved. The
    folder's lock is held while this runs, so another run into it is refused.
    Without `checkpoint_dir`, the new vectors are kept in memory.
    """
    with exclusive(checkpoint_dir) if checkpoint_dir else contextlib.nullcontext():
        return _extract_embeddings(image_root, embedder, batch_size, progress, previous, checkpoint_dir)


def _extract_embeddings(
    image_root: str | os.PathLike,
    embedder: Embedder,
    batch_size: int,
    progress: bool,
    previous: Embeddings | None,
    checkpoint_dir: str | os.PathLike | None,
) -> Embeddings:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if previous is not None and not previous.embedder.compatible_with(embedder.info):
        raise ArtifactError(
            f"the saved embeddings were made by {previous.embedder}, not {embedder.info}; "
            "use another artifacts folder for another backbone, or delete the old embeddings"
        )
    root = Path(image_root)
    old = {item.path: item for item in previous.items} if previous else {}
    lost = {item.path: item for item in previous.lost} if previous else {}  # to embed again, under the same ids
    old_rows = {item.id: row for row, item in enumerate(previous.items)} if previous else {}
    previous_store = previous.store if previous else VectorStore([], np.zeros((0, 2)), embedder.info.dim)
    # Ids are never reused, those of lost images included (embeddings made by hand may have left next_id at 0).
    next_id = max([previous.next_id, *(item.id + 1 for item in [*previous.items, *previous.lost])]) if previous else 0
    journal = _Journal(Path(checkpoint_dir) / JOURNAL_DIR if checkpoint_dir else None, embedder.info)

    scan = scan_folder(root)
    paths = scan.images
    kept: dict[str, ImageRecord] = {}  # path -> record whose vector is reused
    to_check: dict[str, os.stat_result] = {}
    skipped: list[Skipped] = []
    for path in paths:
        try:
            stat = (root / path).stat()
        except OSError as error:  # a dangling symlink, a file that vanished
            skipped.append(Skipped(path, unreadable_reason(root / path, error)))
            continue
        record = old.get(path)
        if record and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            kept[path] = record
        else:
            to_check[path] = stat

    # Files to read: new, or touched. Their content hash decides what they are.
    present = set(paths)
    vanished = {record.sha256: record for path, record in old.items() if path not in present}
    added, changed, renamed, repaired = [], [], [], []
    new_records: dict[str, ImageRecord] = {}
    fresh: dict[str, tuple[Source, int]] = {}  # path -> where its new vector is (journaled or in memory)

    def place(path: str, stat: os.stat_result, digest: str) -> bool:
        """File an image as kept, renamed, changed or added; return whether it needs a new vector."""
        nonlocal next_id
        record = old.get(path) or lost.get(path)
        if path in lost and record.sha256 == digest:  # its saved vector was lost: the same content, embedded again
            repaired.append(path)
        elif record and record.sha256 == digest:  # touched, same content
            kept[path] = replace(record, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
            return False
        elif record is None and digest in vanished:  # moved or renamed
            source = vanished.pop(digest)
            kept[path] = replace(source, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
            renamed.append((source.path, path))
            return False
        else:
            (changed if record else added).append(path)
        if record is None:
            image_id, next_id = next_id, next_id + 1
        else:
            image_id = record.id
        new_records[path] = ImageRecord(image_id, path, stat.st_size, stat.st_mtime_ns, digest)
        return True

    # Vectors an interrupted run already embedded (same file, same size and time) need no model.
    resumed = 0
    for path, stat in list(to_check.items()):
        if (found := journal.lookup(path, stat)) is not None:
            digest, location = found
            if place(path, stat, digest):
                fresh[path] = location
                resumed += 1
            del to_check[path]

    if progress and not to_check:  # an empty 0/0 bar would look like a failure: say what happened instead
        resumed_note = f", {resumed} resumed from an interrupted run" if resumed else ""
        print(f"Nothing new to embed: {len(kept)} images unchanged since the last run{resumed_note}.")
    noted, note_example = 0, ""
    bar = tqdm(total=len(to_check), unit="img", desc="Embedding", disable=not progress or not to_check)
    with bar:
        batches = _read_batches(root, list(to_check), embedder.info, batch_size)
        for batch in _prefetched(batches, depth=2):
            skipped.extend(batch.skipped)
            to_embed = [(path, pixels) for path, stat, digest, pixels, _ in batch.files if place(path, stat, digest)]
            if to_embed:
                vectors = embedder.embed(np.stack([pixels for _, pixels in to_embed]))
                source = journal.record([new_records[path] for path, _ in to_embed], vectors)
                fresh.update((path, (source, row)) for row, (path, _) in enumerate(to_embed))
            for path, *_, notes in batch.files:
                if notes:
                    noted += 1
                    note_example = note_example or f"{path}: {notes[0]}"
            bar.update(len(batch.files) + len(batch.skipped))

    # A file that was embedded before and cannot be read now keeps its earlier
    # vector: a bad copy or a passing error must not cost what was indexed.
    for number, skip in enumerate(skipped):
        if skip.path in old and skip.path not in kept:
            kept[skip.path] = old[skip.path]
            skipped[number] = Skipped(skip.path, f"{skip.reason}; its earlier embedding is kept")
        elif skip.path in lost:  # nothing to keep: its vector was in a damaged shard
            skipped[number] = Skipped(skip.path, f"{skip.reason}; its earlier embedding was lost with a damaged file")

    items = sorted([*kept.values(), *new_records.values()], key=lambda item: item.path)

    def location(item: ImageRecord) -> tuple[Source, int]:
        """Where an item's vector is: a new one in the journal (or memory), a kept one where it was before."""
        if item.path in fresh:
            return fresh[item.path]
        number, row = previous_store.locations[old_rows[item.id]]
        return previous_store.sources[number], int(row)

    store = VectorStore.gather([location(item) for item in items], embedder.info.dim)
    resumed_or_embedded = len(fresh)
    renamed_from = {old_path for old_path, _ in renamed}
    removed = sorted(
        path for path in [*old, *lost] if path not in kept and path not in new_records and path not in renamed_from
    )
    skipped.sort(key=lambda skip: skip.path)
    unchanged = len(items) - resumed_or_embedded - len(renamed)
    changes = Changes(
        added, changed, removed, renamed, unchanged, len(skipped), resumed, scan.ignored, noted, note_example, repaired
    )
    return Embeddings(store, items, embedder.info, str(root), skipped, next_id, changes, journal.files)


class _Journal:
    """Vectors embedded by a run that has not been saved yet, one file per batch, so a rerun can resume.

    Each file holds a batch's vectors and, per row, the file it came from
    (path, size, mtime, SHA-256). A rerun takes a vector only for a file that
    is unchanged since, and only from the same embedder.
    """

    def __init__(self, folder: Path | None, embedder: EmbedderInfo):
        self.folder, self.embedder = folder, embedder
        self._entries: dict[tuple[str, int, int], tuple[str, tuple[Source, int]]] = {}
        # What a save of this run deletes: everything the journal held when the run began (earlier runs'
        # batches, another embedder's, what a killed write left) and the batches this run writes.
        self.files: list[Path] = sorted(folder.iterdir()) if folder and folder.is_dir() else []
        for path in [path for path in self.files if fnmatch(path.name, f"batch.*{JOURNAL_SUFFIX}")]:
            try:
                with np.load(path) as batch:  # reads only the metadata; vectors are read when they are used
                    meta = json.loads(batch["meta"].item())
                journaled_by = EmbedderInfo.from_dict(meta["embedder"])
            except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
                continue  # damaged (a disk error, a hand edit): only a cache, so it is skipped and deleted at save
            if journaled_by.compatible_with(embedder):
                source = FileSource(path, key="vectors")
                for row, (name, size, mtime_ns, digest) in enumerate(meta["files"]):
                    self._entries[name, size, mtime_ns] = (digest, (source, row))

    def lookup(self, path: str, stat: os.stat_result) -> tuple[str, tuple[Source, int]] | None:
        """The SHA-256 and the vector's (source, row) journaled for this file as it is now, if any."""
        return self._entries.get((path, stat.st_size, stat.st_mtime_ns))

    def record(self, records: list[ImageRecord], vectors: np.ndarray) -> Source:
        """Journal one embedded batch, atomically (whole, or not at all); return where its vectors now are.

        Without a journal folder, the vectors stay in memory.
        """
        if self.folder is None:
            return ArraySource(vectors)
        meta = {
            "embedder": self.embedder.to_dict(),
            "files": [[record.path, record.size, record.mtime_ns, record.sha256] for record in records],
        }
        path = self.folder / fresh_name("batch", JOURNAL_SUFFIX)
        with atomic_path(path) as temporary, open(temporary, "wb") as file:
            np.savez(file, vectors=vectors, meta=np.array(json.dumps(meta)))
        self.files.append(path)
        return FileSource(path, key="vectors")


def _prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield from `items`, produced by a background thread up to `depth` items ahead.

    Reading and decoding the next batch (Pillow and hashlib release the GIL)
    then overlaps the model's work on the current one, and memory stays
    bounded by `depth` batches. An error in the thread is raised here.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone away

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            put(error)

    producer = threading.Thread(target=produce, name="imagesearch-decode", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # on error, Ctrl-C or an early break, the thread stops at its next put
        producer.join()


@dataclass
class _Batch:
    files: list[tuple[str, os.stat_result, str, np.ndarray, list[str]]]  # path, stat, sha256, pixels, decoder notes
    skipped: list[Skipped]


def _read_batches(root: Path, paths: Sequence[str], info: EmbedderInfo, batch_size: int) -> Iterator[_Batch]:
    """Read, hash and decode files; yield them in batches of up to `batch_size` decodable images.

    Whatever goes wrong with one file (an exception of any class) skips that
    file with the reason; only an interrupt (KeyboardInterrupt, not an
    `Exception`) stops the run, and the journal keeps what was embedded.
    """
    batch = _Batch([], [])
    for path in paths:
        notes: list[str] = []
        try:
            stat, digest, pixels = _read_image(root / path, info.input_size, notes)
        except ImageLoadError as error:
            batch.skipped.append(Skipped(path, error.reason))
            continue
        except OSError as error:  # unreadable, vanished, a dangling symlink
            batch.skipped.append(Skipped(path, unreadable_reason(root / path, error)))
            continue
        except Exception as error:  # noqa: BLE001 - one file's problem, whatever its class, never stops the run
            batch.skipped.append(Skipped(path, f"cannot be read ({type(error).__name__}: {error})"))
            continue
        batch.files.append((path, stat, digest, pixels, notes))
        if len(batch.files) == batch_size:
            yield batch
            batch = _Batch([], [])
    if batch.files or batch.skipped:
        yield batch


#: Files up to this size are read once, then hashed and decoded from memory; larger ones are
#: decoded from disk and hashed in chunks, so a huge file never sits in memory whole.
READ_WHOLE_LIMIT = 32 * 1024 * 1024


def _read_image(path: Path, size: tuple[int, int], notes: list[str]) -> tuple[os.stat_result, str, np.ndarray]:
    """Return a file's stat, SHA-256 and decoded pixels; raise ImageLoadError or OSError if it can't be read.

    What the decoder says about an image that decodes goes to `notes`.
    """
    stat = path.stat()
    if not S_ISREG(stat.st_mode):  # a pipe or a device would block or never end
        raise ImageLoadError(str(path), NOT_A_REGULAR_FILE)
    if stat.st_size <= READ_WHOLE_LIMIT:
        data = path.read_bytes()
        return stat, hashlib.sha256(data).hexdigest(), load_image(data, size, notes)
    pixels = load_image(path, size, notes)
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(chunk)
    return stat, digest.hexdigest(), pixels


def save_embeddings(embeddings: Embeddings, directory: str | os.PathLike) -> list[Path]:
    """Save `embeddings` to `directory` so that a crash at any point leaves the previous save whole.

    Vectors already in a shard of `directory` stay where they are; the others
    go to new shards, a chunk at a time. The manifest that names the shards is
    written last, atomically (the commit); only then are shards no longer
    named deleted, with the journal of the run. Shards mostly of dead rows,
    and many small ones, are rewritten on the way (compaction). Afterwards
    `embeddings` reads its vectors from the saved shards. One process at a
    time saves into a folder; another raises `FolderBusyError`.
    """
    with exclusive(directory):
        return _save_embeddings(embeddings, Path(directory))


def _save_embeddings(embeddings: Embeddings, directory: Path) -> list[Path]:
    if embeddings.lost:  # saving these would drop the lost images from the collection, and their ids with them
        raise ArtifactError(
            f"these embeddings lack the vectors of {len(embeddings.lost)} images, lost with a damaged file; pass "
            "them as previous= to extract_embeddings, which embeds those images again, and save its result"
        )
    store = embeddings.store
    kept = _shards_to_keep(store, directory)
    keep_row = np.isin(store.locations[:, 0], [number for number, _, _ in kept])
    to_write = np.flatnonzero(~keep_row)
    written = []
    for start in range(0, len(to_write), SHARD_ROWS):
        rows = to_write[start : start + SHARD_ROWS]
        path = directory / fresh_name(SHARD_STEM, SHARD_SUFFIX)
        with atomic_path(path) as temporary:
            write_shard(temporary, store, rows)
        written.append((FileSource(path), rows))

    # The saved layout: kept shards first, then the new ones; every row's (shard, row) in it.
    shards = [(source, rows) for _, source, rows in kept]
    shards += [(source, len(rows)) for source, rows in written]
    places: list[tuple[FileSource, int] | None] = [None] * len(store)
    for row in np.flatnonzero(keep_row):
        number, row_in_shard = store.locations[row]
        places[row] = (store.sources[number], int(row_in_shard))
    for source, rows in written:
        for position, row in enumerate(rows):
            places[row] = (source, position)
    shard_number = {id(source): number for number, (source, _) in enumerate(shards)}

    manifest_path = directory / MANIFEST_FILE
    write_json(
        manifest_path,
        {
            "kind": "embeddings",
            "format_version": FORMAT_VERSION,
            "embedder": embeddings.embedder.to_dict(),
            "image_root": embeddings.image_root,
            "count": len(embeddings.items),
            "next_id": embeddings.next_id,
            "shards": [{"file": source.path.name, "rows": rows} for source, rows in shards],
            "items": [
                [item.id, item.path, item.size, item.mtime_ns, item.sha256, shard_number[id(source)], row]
                for item, (source, row) in zip(embeddings.items, places)
            ],
            "skipped": [[skip.path, skip.reason] for skip in embeddings.skipped],
        },
    )
    embeddings.store = VectorStore.gather(places, store.dim)
    names = {source.path.name for source, _ in shards}
    remove_stale(directory, SHARD_STEM, SHARD_SUFFIX, keep=names)
    remove_stale(directory, LEGACY_STEM, SHARD_SUFFIX, keep=names)
    _delete_journal(embeddings.journal)  # saved now: the run's journal has served its purpose
    embeddings.journal = []
    # The skip report is for people; the manifest, already committed, holds the same list.
    skipped_path = directory / SKIPPED_FILE
    with atomic_path(skipped_path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "reason"])
        writer.writerows((skip.path, skip.reason) for skip in embeddings.skipped)
    return [manifest_path, *(source.path for source, _ in shards), skipped_path]


def _delete_journal(files: list[Path]) -> None:
    """Delete a saved run's journal files, then their folder if nothing else is left in it.

    The save has committed by now: what cannot be deleted is left for the next save.
    """
    for path in files:
        with contextlib.suppress(OSError):  # e.g. a folder someone put there
            path.unlink(missing_ok=True)
    for folder in {path.parent for path in files}:
        with contextlib.suppress(OSError):  # not empty
            folder.rmdir()


def _shards_to_keep(store: VectorStore, directory: Path) -> list[tuple[int, FileSource, int]]:
    """The saved shards of `directory` that `store` reads from and a save can keep as they are,
    as (source number in `store`, shard, its row count).

    A shard is rewritten instead when under COMPACT_BELOW of its rows are
    still used, and small shards are merged once there are too many of them.
    """
    here = directory.resolve()
    candidates = []
    for number, source in enumerate(store.sources):
        if isinstance(source, FileSource) and source.key is None and source.path.parent.resolve() == here:
            if not source.path.is_file():
                raise ArtifactError(
                    f"{source.path} is gone: {directory} was saved over since these embeddings were loaded; "
                    "load them again"
                )
            rows = shard_shape(source.path)[0][0]
            live = int(np.count_nonzero(store.locations[:, 0] == number))
            if live >= COMPACT_BELOW * rows:
                candidates.append((number, source, rows))
    small = [number for number, _, rows in candidates if rows < SHARD_ROWS // 4]
    merge = set(small) if len(small) > MAX_SMALL_SHARDS else set()
    return [candidate for candidate in candidates if candidate[0] not in merge]


def load_embeddings(directory: str | os.PathLike) -> Embeddings:
    """Read what `save_embeddings` wrote, checking that the shards and the manifest agree.

    Only the shards' headers are read here; vectors are read when used. Any
    damage (a manifest that is missing, not JSON or not a manifest; a shard
    that is missing, truncated or of another shape) raises `DamagedStateError`,
    one line that names the file and says the command that repairs it.
    """
    directory = Path(directory)
    embeddings, losses = _load_trusted(directory, _read_manifest(directory))
    if losses:
        (damage, _), others = losses[0], losses[1:]
        if others:
            more = "file is" if len(others) == 1 else "files are"
            damage += f", and {len(others)} other {more} damaged too"
        lost = len(embeddings.lost)
        held = f"the vectors of {lost} images are lost" if lost != 1 else "the vector of 1 image is lost"
        advice = embeddings_advice(directory, embeddings.image_root, embedder=embeddings.embedder.to_dict())
        raise DamagedStateError(f"{damage}; {held}", advice)
    return embeddings


def load_previous_embeddings(directory: str | os.PathLike) -> Embeddings | None:
    """What an update can trust of the embeddings saved in `directory`, or None where nothing was saved yet.

    Damage is repaired rather than refused, each time with a `DamagedStateWarning`
    that says what: where shards are missing or damaged, the result holds the
    images whose vectors are intact, and lists the others in `lost`, so that
    `extract_embeddings` embeds exactly those again, under their ids. Where the
    manifest itself is damaged, no vector can be matched to its image: the
    result is None, every image is embedded again, and the next save replaces
    the manifest and deletes the shards it no longer names. Saved state of a
    newer format is refused (`ArtifactError`): it is not damaged, and this
    code must not write over it.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).exists():
        return None
    try:
        manifest = _read_manifest(directory)
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
    for damage, count in losses:
        again = f"its {count} {'image is' if count == 1 else 'images are'} embedded again" if count else "no image lost"
        warnings.warn(DamagedStateWarning(f"{damage}; {again}"), stacklevel=2)
    return embeddings


def read_skipped(directory: str | os.PathLike) -> list[Skipped]:
    """The files the saved embeddings skipped, with reasons (as `skipped.csv` lists them for people)."""
    return _read_manifest(Path(directory)).skipped


@dataclass(frozen=True)
class _Manifest:
    """A manifest as read and checked: its items with the (shard number, row) of their vectors."""

    path: Path
    embedder: EmbedderInfo
    image_root: str
    shards: list[tuple[str, int]]  # file name, rows
    items: list[tuple[ImageRecord, int, int]]  # record, shard number, row
    skipped: list[Skipped]
    next_id: int


def _read_manifest(directory: Path) -> _Manifest:
    """Read and check a manifest; raise `DamagedStateError` if it is missing, not JSON, or not shaped as one."""
    path = directory / MANIFEST_FILE
    manifest = read_json(path, kind="embeddings")
    try:
        return _parse_manifest(path, manifest)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        detail = f"no {one_line(error.args[0])!r} entry" if isinstance(error, KeyError) else one_line(error)[:200]
        root, embedder = manifest.get("image_root"), manifest.get("embedder")
        advice = embeddings_advice(
            directory, root if isinstance(root, str) else None, "all", embedder if isinstance(embedder, dict) else None
        )
        damage = f"{path} is damaged (not a manifest as this code writes them: {detail})"
        raise DamagedStateError(damage, advice) from error


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, which JSON true and false become


def _parse_manifest(path: Path, manifest: dict) -> _Manifest:
    """The manifest read from `path` as a `_Manifest`; a KeyError, TypeError or ValueError (whose text says
    what) where it is not shaped as one."""
    embedder = EmbedderInfo.from_dict(manifest["embedder"])
    if not (isinstance(embedder.backbone, str) and isinstance(embedder.weights, str) and embedder.dim > 0):
        raise ValueError(f"the embedder {one_line(manifest['embedder'])[:80]} is not one this code writes")
    if manifest["format_version"] == 2:  # one vectors file, row i for item i
        shards = [(manifest["vectors_file"], manifest["count"])]
        entries = [[*item, 0, row] if isinstance(item, list) else item for row, item in enumerate(manifest["items"])]
    else:
        shards = [(shard["file"], shard["rows"]) for shard in manifest["shards"]]
        entries = manifest["items"]
    for name, rows in shards:
        if not is_file_name(name):
            raise ValueError(f"a shard's file {one_line(repr(name))[:80]} is not a file name")
        if not (_is_int(rows) and rows >= 0):
            raise ValueError(f"a shard's row count {one_line(repr(rows))[:40]} is not a count")
    items = []
    for entry in entries:
        if not (
            type(entry) is list and len(entry) == 7 and _is_int(entry[0]) and type(entry[1]) is str
            and _is_int(entry[2]) and _is_int(entry[3]) and type(entry[4]) is str and _is_int(entry[5])
            and _is_int(entry[6])
        ):
            raise ValueError(f"an image entry {one_line(repr(entry))[:80]} is not [id, path, size, mtime, sha256, "
                             "shard, row]")
        items.append((ImageRecord(*entry[:5]), entry[5], entry[6]))
    count, next_id, image_root = manifest["count"], manifest["next_id"], manifest["image_root"]
    if not (_is_int(count) and count == len(items)):
        raise ValueError(f"its count {one_line(repr(count))[:40]} is not the {len(items)} images it lists")
    ids = {record.id for record, _, _ in items}
    if len(ids) != len(items) or len({record.path for record, _, _ in items}) != len(items):
        raise ValueError("it lists an image id or a path twice")
    if not _is_int(next_id):
        raise ValueError(f"its next_id {one_line(repr(next_id))[:40]} is not an id")
    if not isinstance(image_root, str):
        raise ValueError(f"its image_root {one_line(repr(image_root))[:80]} is not a folder")
    skipped = []
    for entry in manifest["skipped"]:
        if not (type(entry) is list and len(entry) == 2 and all(type(text) is str for text in entry)):
            raise ValueError(f"a skipped entry {one_line(repr(entry))[:80]} is not [path, reason]")
        skipped.append(Skipped(*entry))
    # Ids are never reused; embeddings made by hand may have left next_id at 0.
    return _Manifest(path, embedder, image_root, shards, items, skipped, max(next_id, max(ids, default=-1) + 1))


def _load_trusted(directory: Path, manifest: _Manifest) -> tuple[Embeddings, list[tuple[str, int]]]:
    """The embeddings of the items whose vectors are intact, the others in `lost`; and each damage found,
    as (what is damaged, how many images lost their vector to it)."""
    damage_of = [shard_damage(directory / name, (rows, manifest.embedder.dim)) for name, rows in manifest.shards]
    sources = [FileSource(directory / name) for name, _ in manifest.shards]
    places, items, lost = [], [], []
    lost_to: Counter = Counter()  # shard number (or None: outside every shard) -> images lost
    for record, number, row in manifest.items:
        if not (0 <= number < len(manifest.shards) and 0 <= row < manifest.shards[number][1]):
            lost_to[None] += 1
            lost.append(record)
        elif damage_of[number] is not None:
            lost_to[number] += 1
            lost.append(record)
        else:
            places.append((sources[number], row))
            items.append(record)
    losses = [
        (f"{directory / name}{', named by the manifest,' if damage == 'is missing' else ''} {damage}", lost_to[number])
        for number, ((name, _), damage) in enumerate(zip(manifest.shards, damage_of))
        if damage is not None
    ]
    if lost_to[None]:
        outside = lost_to[None]
        images = "image" if outside == 1 else "images"
        losses.append((f"{manifest.path} is damaged (it lists {outside} {images} outside its shards)", outside))
    store = VectorStore.gather(places, manifest.embedder.dim)
    embeddings = Embeddings(
        store, items, manifest.embedder, manifest.image_root, manifest.skipped, manifest.next_id, lost=lost
    )
    return embeddings, losses
