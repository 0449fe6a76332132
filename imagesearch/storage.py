"""Crash-safe saves: atomic file writes, and metadata files that commit a save.

A save that spans several files (vectors and their manifest, an index and its
metadata) writes each data file under a fresh name first, then writes the
metadata file that names them, atomically; that rename is the commit. A crash
before it leaves the previous metadata pointing at the previous data files,
which are only deleted after the commit. So saved state is always either the
old or the new, never a mix. One run at a time updates a folder (`exclusive`).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserFacingError

#: Files we write get the permissions the user's umask allows, as `open` would give them.
_UMASK = os.umask(0)
os.umask(_UMASK)

#: Every temporary file starts with this, so that the next save can remove what a killed one left.
TEMPORARY_PREFIX = ".tmp-"

#: The file whose lock extractions and saves hold, so that one run at a time updates a folder.
LOCK_FILE = ".lock"

#: Bumped whenever the layout of saved embeddings or indexes changes. Format 3 keeps embeddings in
#: shards; format 2 (one vectors file, the same index layout) is still read.
FORMAT_VERSION = 3
OLDEST_READABLE_VERSION = 2


def embeddings_dir(artifacts: str | os.PathLike) -> Path:
    """Where the embeddings of a collection live inside its artifacts folder."""
    return Path(artifacts) / "embeddings"


def index_dir(artifacts: str | os.PathLike) -> Path:
    """Where the index of a collection lives inside its artifacts folder."""
    return Path(artifacts) / "index"


class ArtifactError(UserFacingError, RuntimeError):
    """Saved state is missing, from another format, or inconsistent; the message says how to fix it."""


class FolderBusyError(ArtifactError):
    """Another run (a process, or another call in this one) is extracting or saving into the same folder."""


@contextmanager
def exclusive(directory: str | os.PathLike) -> Iterator[None]:
    """Hold `directory`'s lock for the block, or raise `FolderBusyError` at once if another run holds it.

    Extractions and saves into a folder hold it: two saves interleaved could
    each delete the other's new files after the other's commit, and a save
    deletes the journal an extraction into the same folder is writing. The
    lock is `flock` on a `.lock` file, which the system releases when its
    holder ends, so a killed run never leaves the folder locked. (Where there
    is no `flock`, on Windows, nothing is locked.)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":
        yield
        return
    import fcntl

    with open(directory / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(
                f"another run is updating {directory} right now (an extraction or a save); "
                "wait for it to finish, then run this again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; on success, move it into place atomically.

    Whatever is written to the yielded path replaces `destination` only once it
    is complete and flushed to disk, so a crash or an error midway leaves the
    previous file whole. On error the temporary file is removed.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{destination.name}.", dir=destination.parent)
    os.close(handle)
    temporary = Path(name)
    temporary.chmod(0o666 & ~_UMASK)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, destination)
        _fsync_directory(destination.parent)
    finally:
        temporary.unlink(missing_ok=True)


def fresh_name(stem: str, suffix: str) -> str:
    """A data file name no earlier save used, e.g. `embeddings.3f9c2a7b1d04.npy`."""
    return f"{stem}.{secrets.token_hex(6)}{suffix}"


def remove_stale(directory: str | os.PathLike, stem: str, suffix: str, keep: Collection[str]) -> None:
    """Delete the data files `stem.*suffix` of earlier saves, all but those named in `keep` (the committed
    ones), and the temporary files that a killed save left behind. Call it holding the folder's lock (`exclusive`)."""
    if isinstance(keep, str):
        raise TypeError("keep is a collection of file names, not one name")
    directory = Path(directory)
    stale = [*directory.glob(f"{stem}.*{suffix}"), *directory.glob(f"{TEMPORARY_PREFIX}*")]
    for path in stale:
        if path.name not in keep:
            path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write `data` as indented JSON to `path`, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike, kind: str) -> dict:
    """Read a metadata file written by `write_json` and check that it is a `kind` file of our format."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: run the step that writes the {kind} first")
    data = json.loads(path.read_text(encoding="utf-8"))
    version = data.get("format_version")
    if (
        data.get("kind") != kind
        or not isinstance(version, int)
        or not OLDEST_READABLE_VERSION <= version <= FORMAT_VERSION
    ):
        # Saved state is a cache of the images: rebuilding it is always possible.
        raise ArtifactError(
            f"{path} is not a {kind} file of format version {OLDEST_READABLE_VERSION} to {FORMAT_VERSION} "
            f"(found kind={data.get('kind')!r}, version={data.get('format_version')!r}); "
            f"rebuild the {kind} with this version of the code"
        )
    return data


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
