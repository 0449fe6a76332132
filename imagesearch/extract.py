"""The embed step of an extraction: read what the plan says, embed it in batches, journal it, and assemble the result.

An extraction is plan → embed → commit:

1. `plan.make_plan` decides from paths, sizes and times alone what to read
   (no model, no file opened): files whose size and time are unchanged keep
   their vectors and are never read.
2. `extract_embeddings` reads each planned file once and hashes it; a file
   whose content a saved vector already has (touched but unchanged, or
   renamed or moved) keeps that vector and is not decoded; the others are
   decoded and embedded in batches. With a checkpoint folder, every batch is
   journaled as it completes, so an interrupted run resumes where it stopped.
3. `collection.save_embeddings` commits the result.

A damaged folder is repaired the same way (`load_previous_embeddings`): the
images whose vectors a damaged shard held are embedded again, under the ids
they had, and everything else is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from .collection import Changes, Embeddings
from .embedders import Embedder
from .images import NOT_A_REGULAR_FILE, ImageLoadError, load_image, unreadable_reason
from .journal import JOURNAL_DIR, Journal
from .plan import Plan, list_files, make_plan
from .records import ImageRecord, Records, Skipped
from .storage import ArtifactError, exclusive
from .vectors import Source, VectorStore

T = TypeVar("T")


def extract_embeddings(
    image_root: str | os.PathLike,
    embedder: Embedder,
    batch_size: int = 32,
    progress: bool = True,
    previous: Embeddings | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> Embeddings:
    """Embed the images under `image_root` in batches; with `previous`, embed only what changed since.

    The plan and the embed step in one call: `embed(make_plan(list_files(image_root), previous), ...)`.
    """
    return embed(make_plan(list_files(image_root), previous), embedder, batch_size, progress, checkpoint_dir)


def embed(
    plan: Plan,
    embedder: Embedder,
    batch_size: int = 32,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
) -> Embeddings:
    """Read, and embed in batches, the files `plan` lists; return the collection they make with what it keeps.

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
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    previous = plan.previous
    if reason := embedder.info.outside_bar():  # its vectors would not be the model's: no collection takes them
        raise ArtifactError(f"a collection takes only vectors that match tensorflow's, and {reason}; "
                            "use --runtime auto (runtime='auto'), which picks a runtime within the bar")
    if previous is not None and not previous.embedder.compatible_with(embedder.info):
        if reason := previous.embedder.outside_bar():
            raise ArtifactError(f"the saved embeddings meet only vectors of their own runtime: {reason}; run with "
                                f"--runtime {previous.embedder.runtime} (runtime='{previous.embedder.runtime}')")
        raise ArtifactError(
            f"the saved embeddings were made by {previous.embedder}, not {embedder.info}; "
            "use another artifacts folder for another backbone, or delete the old embeddings"
        )
    with exclusive(checkpoint_dir) if checkpoint_dir else contextlib.nullcontext():
        journal = Journal(Path(checkpoint_dir) / JOURNAL_DIR if checkpoint_dir else None, embedder.info)
        return _Run(plan, embedder, journal).embed(batch_size, progress)


class _Run:
    """One extraction's embed step: each planned file is placed as it is read, and the result assembled at the end."""

    def __init__(self, plan: Plan, embedder: Embedder, journal: Journal):
        self.plan, self.embedder, self.journal = plan, embedder, journal
        self.previous = previous = plan.previous
        self.old = previous.records if previous else Records.empty()
        self.lost = previous.lost if previous else Records.empty()
        self.old_sha, self.lost_sha = self.old.table.column("sha256"), self.lost.table.column("sha256")
        read = plan.read  # the planned files, by number: columns as arrays, no Python object per file
        self.paths = read.column("path").combine_chunks()
        self.sizes, self.times, self.ids = (read.column(name).to_numpy() for name in ("size", "mtime_ns", "id"))
        self.previous_rows, self.lost_rows = (read.column(name).to_numpy() for name in ("previous", "lost"))
        # The version the next save makes: the one that embedded the vectors made here.
        self.version = (previous.saved.version if previous is not None and previous.saved is not None else 0) + 1
        self.vanished: dict[bytes, int] = {}  # SHA-256 -> the row in `old` of a vanished record, for renames
        vanished_sha = self.old.take(plan.vanished).table.column("sha256").to_pylist()
        for row, digest in zip(plan.vanished.tolist(), vanished_sha):
            self.vanished.setdefault(digest, row)
        self.kept_rows: list[int] = []  # rows of `old` kept as they are: unreadable now, their vector kept
        self.moved: list[tuple[int, ImageRecord]] = []  # rows of `old` whose vector is kept under a new record
        self.pending: dict[int, ImageRecord] = {}  # planned files placed, their vector still to make
        self.fresh: list[tuple[ImageRecord, Source, int]] = []  # new vectors: journaled (or in memory)
        self.added, self.changed, self.renamed, self.repaired = [], [], [], []
        self.skipped: list[Skipped] = list(plan.listing.unreadable)
        self.resumed = self.noted = 0
        self.note_example = ""

    def path(self, number: int) -> str:
        return self.paths[number].as_py()

    def place(self, number: int, digest: bytes, size: int, mtime_ns: int) -> bool:
        """File planned file `number`, now read, as touched, renamed, repaired, changed or added; return whether
        it needs a new vector."""
        path, previous, lost = self.path(number), int(self.previous_rows[number]), int(self.lost_rows[number])
        if lost >= 0:  # its saved vector was lost with a damaged shard
            (self.repaired if self.lost_sha[lost].as_py() == digest else self.changed).append(path)
        elif previous >= 0 and self.old_sha[previous].as_py() == digest:  # touched, same content
            old = self.old.item(previous)
            self.moved.append((previous, ImageRecord(old.id, path, size, mtime_ns, old.sha256, old.version)))
            return False
        elif previous < 0 and digest in self.vanished:  # moved or renamed
            source = self.vanished.pop(digest)
            old = self.old.item(source)
            self.moved.append((source, ImageRecord(old.id, path, size, mtime_ns, old.sha256, old.version)))
            self.renamed.append((old.path, path))
            return False
        else:
            (self.changed if previous >= 0 else self.added).append(path)
        self.pending[number] = ImageRecord(int(self.ids[number]), path, size, mtime_ns, digest.hex(), self.version)
        return True

    def decode_needed(self) -> Callable[[int], Callable[[bytes], bool]]:
        """For the reading thread: per planned file, whether its content, once hashed, needs decoding. It does
        not where a saved vector has that content: the file's own, or (for a new path) a vanished file's, which
        the first file read with it claims, in the order `place` sees them too."""
        unclaimed = set(self.vanished)

        def claims(digest: bytes) -> bool:
            if digest in unclaimed:
                unclaimed.discard(digest)
                return False
            return True

        def needed(number: int) -> Callable[[bytes], bool]:
            previous, lost = int(self.previous_rows[number]), int(self.lost_rows[number])
            if lost >= 0:
                return lambda digest: True
            if previous >= 0:
                old_digest = self.old_sha[previous].as_py()
                return lambda digest: digest != old_digest
            return claims

        return needed

    def embed(self, batch_size: int, progress: bool) -> Embeddings:
        to_read = []
        for number in range(len(self.paths)):  # vectors an interrupted run already embedded need no model
            size, mtime_ns = int(self.sizes[number]), int(self.times[number])
            if (found := self.journal.lookup(self.path(number), size, mtime_ns)) is not None:
                digest, (source, row) = found
                if self.place(number, bytes.fromhex(digest), size, mtime_ns):
                    self.fresh.append((self.pending.pop(number), source, row))
                    self.resumed += 1
            else:
                to_read.append(number)
        if progress and not to_read:  # an empty 0/0 bar would look like a failure: say what happened instead
            resumed_note = f", {self.resumed} resumed from an interrupted run" if self.resumed else ""
            print(f"Nothing new to embed: {len(self.plan.keep)} images unchanged since the last run{resumed_note}.")
        bar = tqdm(total=len(to_read), unit="img", desc="Embedding", disable=not progress or not to_read)
        files = [(number, self.path(number)) for number in to_read]
        root, size = self.plan.listing.root, self.embedder.info.input_size
        with bar:
            for batch in _prefetched(_read_batches(root, files, self.decode_needed(), size, batch_size), depth=2):
                self.skipped.extend(self._skip(number, skip) for number, skip in batch.skipped)
                to_embed = []
                for number, digest, stat, pixels, notes in batch.files:
                    if self.place(number, digest, stat.st_size, stat.st_mtime_ns):
                        to_embed.append((number, pixels))  # decoded: `decode_needed` said so, in the same order
                    if notes:
                        self.noted += 1
                        self.note_example = self.note_example or f"{self.path(number)}: {notes[0]}"
                if to_embed:
                    records = [self.pending.pop(number) for number, _ in to_embed]
                    vectors = self.embedder.embed(np.stack([pixels for _, pixels in to_embed]))
                    source = self.journal.record(records, vectors)
                    self.fresh.extend((record, source, row) for row, record in enumerate(records))
                bar.update(len(batch.files) + len(batch.skipped))
        return self._assemble()

    def _skip(self, number: int, skip: Skipped) -> Skipped:
        """A file that was embedded before and cannot be read now keeps its earlier vector: a bad copy or a
        passing error must not cost what was indexed."""
        previous, lost = int(self.previous_rows[number]), int(self.lost_rows[number])
        if previous >= 0:
            self.kept_rows.append(previous)
            return Skipped(skip.path, f"{skip.reason}; its earlier embedding is kept")
        if lost >= 0:  # nothing to keep: its vector was in a damaged shard
            return Skipped(skip.path, f"{skip.reason}; its earlier embedding was lost with a damaged file")
        return skip

    def _assemble(self) -> Embeddings:
        previous, dim = self.previous, self.embedder.info.dim
        old_store = previous.store if previous else VectorStore([], np.zeros((0, 2)), dim)
        kept = np.concatenate([self.plan.keep, np.array(self.kept_rows, np.int64)]).astype(np.int64)
        moved_rows = np.array([row for row, _ in self.moved], np.int64)
        records = Records.concat([
            self.old.take(kept),
            Records.from_items([record for _, record in self.moved]),
            Records.from_items([record for record, _, _ in self.fresh]),
        ])
        fresh_store = VectorStore.gather([(source, row) for _, source, row in self.fresh], dim)
        store = VectorStore.concat([old_store.subset(kept), old_store.subset(moved_rows), fresh_store], dim)
        unchanged = np.zeros(len(records), bool)
        unchanged[: len(kept)] = True
        claimed = {row for row, _ in self.moved}
        removed = sorted(
            [path for row, path in zip(self.plan.vanished.tolist(), self.old.take(self.plan.vanished).paths)
             if row not in claimed]
            + self.lost.take(self.plan.vanished_lost).paths
        )
        self.skipped.sort(key=lambda skip: skip.path)
        # Planned ids no image took (a skipped file's, a renamed one's) are left for the next plan: only ids given
        # count, so that a folder with an unreadable file does not use up an id, and make a new version, every run.
        next_id = max(previous.next_id if previous else 0, int(records.ids.max(initial=-1)) + 1)
        unchanged_count = len(kept) + len(self.moved) - len(self.renamed)
        changes = Changes(
            sorted(self.added), sorted(self.changed), removed, sorted(self.renamed), unchanged_count,
            len(self.skipped), self.resumed, self.plan.listing.ignored, self.noted, self.note_example,
            sorted(self.repaired),
        )
        # The runtime that made this run's vectors; a run that embedded none keeps the record of the ones it kept.
        info = self.embedder.info if self.fresh or previous is None else previous.embedder
        return Embeddings(
            store, records, info, str(self.plan.listing.root), self.skipped, next_id,
            changes, self.journal.files, saved=previous.saved if previous else None, unchanged=unchanged,
        )


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
    files: list[tuple[int, bytes, os.stat_result, np.ndarray | None, list[str]]]  # number, sha256, stat, pixels, notes
    skipped: list[tuple[int, Skipped]]


def _read_batches(
    root: Path,
    paths: Sequence[tuple[int, str]],
    decode_needed: Callable[[int], Callable[[bytes], bool]],
    input_size: tuple[int, int],
    batch_size: int,
) -> Iterator[_Batch]:
    """Read and hash the numbered files `paths`, and decode those `decode_needed(number)(sha256)` says to;
    yield them in batches of up to `batch_size` files.

    Whatever goes wrong with one file (an exception of any class) skips that
    file with the reason; only an interrupt (KeyboardInterrupt, not an
    `Exception`) stops the run, and the journal keeps what was embedded.
    """
    batch = _Batch([], [])
    for number, path in paths:
        notes: list[str] = []
        try:
            stat, digest, pixels = _read_image(root / path, input_size, decode_needed(number), notes)
        except ImageLoadError as error:
            batch.skipped.append((number, Skipped(path, error.reason)))
            continue
        except OSError as error:  # unreadable, vanished, a dangling symlink
            batch.skipped.append((number, Skipped(path, unreadable_reason(root / path, error))))
            continue
        except Exception as error:  # noqa: BLE001 - one file's problem, whatever its class, never stops the run
            batch.skipped.append((number, Skipped(path, f"cannot be read ({type(error).__name__}: {error})")))
            continue
        batch.files.append((number, digest, stat, pixels, notes))
        if len(batch.files) == batch_size:
            yield batch
            batch = _Batch([], [])
    if batch.files or batch.skipped:
        yield batch


#: Files up to this size are read once, then hashed and decoded from memory; larger ones are
#: decoded from disk and hashed in chunks, so a huge file never sits in memory whole.
READ_WHOLE_LIMIT = 32 * 1024 * 1024


def _read_image(
    path: Path, size: tuple[int, int], decode_needed: Callable[[bytes], bool], notes: list[str]
) -> tuple[os.stat_result, bytes, np.ndarray | None]:
    """Return a file's stat, SHA-256 and decoded pixels (None where `decode_needed` says its content needs no
    decoding); raise ImageLoadError or OSError if it can't be read. What the decoder says about an image that
    decodes goes to `notes`.
    """
    stat = path.stat()
    if not S_ISREG(stat.st_mode):  # a pipe or a device would block or never end
        raise ImageLoadError(str(path), NOT_A_REGULAR_FILE)
    if stat.st_size <= READ_WHOLE_LIMIT:
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        return stat, digest, load_image(data, size, notes) if decode_needed(digest) else None
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            hasher.update(chunk)
    digest = hasher.digest()
    return stat, digest, load_image(path, size, notes) if decode_needed(digest) else None
