"""The journal of an unsaved run: one file per embedded batch, so that an interrupted run resumes.

It lives in the embeddings folder, under `pending/`, while a run is unsaved:
the embed step writes it (`Journal.record`), a rerun takes from it what is
still valid (`Journal.lookup`), and the commit deletes it (`delete_journal`).
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from .embedders import EmbedderInfo
from .records import ImageRecord
from .storage import atomic_path, fresh_name
from .vectors import ArraySource, FileSource, Source

JOURNAL_DIR, JOURNAL_SUFFIX = "pending", ".npz"


class Journal:
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

    def lookup(self, path: str, size: int, mtime_ns: int) -> tuple[str, tuple[Source, int]] | None:
        """The SHA-256 and the vector's (source, row) journaled for this file as it is now, if any."""
        return self._entries.get((path, size, mtime_ns))

    def record(self, records: list[ImageRecord], vectors: np.ndarray) -> Source:
        """Journal one embedded batch, atomically (whole, or not at all); return where its vectors now are.

        Without a journal folder, the vectors stay in memory.
        """
        if self.folder is None:
            return ArraySource(vectors)
        files = [(record.path, record.size, record.mtime_ns, record.sha256) for record in records]
        path = write_batch(self.folder, self.embedder, files, vectors)
        self.files.append(path)
        return FileSource(path, key="vectors")


def write_batch(folder: Path, embedder: EmbedderInfo, files: list[tuple[str, int, int, str]],
                vectors: np.ndarray) -> Path:
    """Write one journal file into `folder`, atomically: `vectors`, row by row those of `files` (path, size,
    mtime_ns, SHA-256 in hex), made by `embedder`. What a run writes per batch, and what a worker of a
    distributed run writes without reading the journal: a fresh name each time, so writers never collide."""
    meta = {"embedder": embedder.to_dict(), "files": [list(file) for file in files]}
    path = Path(folder) / fresh_name("batch", JOURNAL_SUFFIX)
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, vectors=vectors, meta=np.array(json.dumps(meta)))
    return path


def delete_journal(files: list[Path]) -> None:
    """Delete a saved run's journal files, then their folder if nothing else is left in it.

    The save has committed by now: what cannot be deleted is left for the next save.
    """
    for path in files:
        with contextlib.suppress(OSError):  # e.g. a folder someone put there
            path.unlink(missing_ok=True)
    for folder in {path.parent for path in files}:
        with contextlib.suppress(OSError):  # not empty
            folder.rmdir()
