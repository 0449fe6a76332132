"""Crash-safe saves: atomic file writes, and metadata files that commit a save.

A save that spans several files (vectors and their manifest, an index and its
metadata) writes each data file under a fresh name first, then writes the
metadata file that names them, atomically; that rename is the commit. A crash
before it leaves the previous metadata pointing at the previous data files,
which are only deleted after the commit. So saved state is always either the
old or the new, never a mix. One run at a time updates a folder (`exclusive`).

Saved state can still be damaged from outside: a hand edit, a bad copy, a
file deleted. The readers then raise `DamagedStateError`, one line that names
the file and says the command that repairs it, and the loaders the updating
steps use (`extract.load_previous_embeddings`, `index.load_previous_index`)
keep what can be trusted and say what they repair (`DamagedStateWarning`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
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

#: Bumped whenever the layout of saved embeddings or indexes changes. Format 4 keeps records in columns, per
#: shard, and the index points at the collection version; formats 2 and 3 (records in the JSON) are still read.
FORMAT_VERSION = 4
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


class DamagedStateError(ArtifactError):
    """A saved file is missing or damaged. `damage` names it and says what is wrong; the message adds the repair."""

    def __init__(self, damage: str, advice: str):
        self.damage = damage
        super().__init__(f"{damage}; {advice}")


class DamagedStateWarning(UserWarning):
    """Saved state was found damaged and is being repaired: an index rebuilt, vectors embedded again."""


def is_file_name(value: object) -> bool:
    """Whether `value` is a plain file name (no folder, not "." or ".."): all that metadata may name as its data."""
    return isinstance(value, str) and value == Path(value).name and value not in ("", ".", "..")


def one_line(text: object) -> str:
    """`text` with every run of whitespace, newlines included, made one space: error messages are one line."""
    return " ".join(str(text).split())


def index_advice(folder: str | os.PathLike, verb: str = "rebuild") -> str:
    """How to (re)build the index saved in `folder` from the embeddings beside it."""
    folder = Path(folder)
    if folder.name != "index":  # not the CLI's layout (artifacts/index): say it in Python
        return f"{verb} the index from the embeddings with build_index, and save_index it into {folder}"
    command = f"python -m imagesearch index --artifacts {shlex.quote(str(folder.parent))}"
    return f"{verb} the index from the embeddings: {command} (or run notebook 02)"


def embeddings_advice(
    folder: str | os.PathLike, image_root: str | None = None, lost: str = "some", embedder: dict | None = None
) -> str:
    """How to embed again what the embeddings saved in `folder` lost, from the images under `image_root`.

    `lost` is "some" (vectors are lost: only their images go through the model
    again), "all" (the manifest is lost: every image does) or "nothing" (there
    is nothing yet to lose). `embedder` (as `EmbedderInfo.to_dict` gives it) adds
    the options that make the same model. Where `image_root` or `embedder` is
    not given, it is what the folder's manifest or the index beside it
    recorded, if either can say.
    """
    folder = Path(folder)
    if image_root is None or embedder is None:
        recorded_root, recorded_embedder = _recorded(folder)
        image_root, embedder = image_root or recorded_root, embedder or recorded_embedder
    images = shlex.quote(image_root) if image_root else "<the image folder>"
    if folder.name != "embeddings":  # not the CLI's layout (artifacts/embeddings): say it in Python
        command = (
            f"extract_embeddings({images}, embedder, previous=load_previous_embeddings(folder), "
            f"checkpoint_dir=folder), then save_embeddings it into {folder}"
        )
    else:
        options = f"--images {images} --artifacts {shlex.quote(str(folder.parent))}{_model_options(embedder or {})}"
        command = f"python -m imagesearch extract {options} (or run notebook 01)"
    if lost == "nothing":
        return f"embed the images: {command}"
    if lost == "all":
        return f"embed the images again: {command}; without a readable manifest, every image goes through the model"
    return f"re-embed the lost images: {command}; only the images whose vectors are lost go through the model"


def _model_options(embedder: dict) -> str:
    """The command-line options beyond the defaults (ResNet50, ImageNet) that make the model `embedder` describes."""
    backbone, weights = str(embedder.get("backbone", "resnet50")), str(embedder.get("weights", "imagenet"))
    source = embedder.get("source")
    if backbone.startswith("tflite:"):
        file = shlex.quote(source) if source else f"<the model file {backbone.removeprefix('tflite:')}>"
        return f" --backbone tflite --weights {file}"
    options = "" if backbone == "resnet50" else f" --backbone {shlex.quote(backbone)}"
    if weights.startswith("file:"):
        return options + (f" --weights {shlex.quote(source)}" if source else
                          f" --weights <the weights file {weights.removeprefix('file:').rsplit('@', 1)[0]}>")
    if random := re.fullmatch(r"random\(seed=(-?\d+)\)", weights):
        return options + " --weights random" + (f" --seed {random[1]}" if random[1] != "0" else "")
    return options


def _recorded(folder: Path) -> tuple[str | None, dict | None]:
    """The image folder the embeddings in `folder` were made from, and the embedder, as their manifest or the
    index beside them recorded them; None where neither can say. Only for advice: what is wrong here is reported
    by whoever reads these files for real."""
    candidates = [folder / "manifest.json"]  # extract.MANIFEST_FILE
    if folder.name == "embeddings":
        candidates.append(index_dir(folder.parent) / "index.json")  # index.METADATA_FILE
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            root, embedder = data.get("image_root"), data.get("embedder")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        if isinstance(root, str) and root:
            return root, embedder if isinstance(embedder, dict) else None
    return None, None


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


def check_not_busy(directory: str | os.PathLike) -> None:
    """Raise `FolderBusyError` now if another run holds `directory`'s lock: a quick answer before slow set-up
    (loading a model). The run itself takes the lock later (`exclusive`), which is what guards the folder."""
    if Path(directory).is_dir():
        with exclusive(directory):
            pass


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
    """Read a metadata file written by `write_json` and check that it is a `kind` file of our format.

    `kind` is "embeddings" (a manifest) or "index". A file that is missing, not
    JSON, or not a `kind` file of a format this code reads raises
    `DamagedStateError`, whose message says the command that writes it again;
    one of a newer format raises `ArtifactError` (it is not damaged: this code
    is older). What is inside is the caller's to check.
    """
    path = Path(path)

    def damaged(problem: str) -> DamagedStateError:
        if kind == "index":
            advice = index_advice(path.parent, "build" if problem == "is missing" else "rebuild")
        else:
            advice = embeddings_advice(path.parent, lost="nothing" if problem == "is missing" else "all")
        return DamagedStateError(f"{path} {problem}", advice)

    if not path.exists():
        raise damaged("is missing")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except IsADirectoryError:
        raise damaged("is damaged (a folder, not a file)") from None
    except OSError as error:  # no permission, a disk error: not for us to repair
        raise ArtifactError(f"{path} cannot be read ({one_line(error)}); check the file and its permissions") from error
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise damaged(f"is damaged (not JSON: {one_line(error)})") from error
    if not isinstance(data, dict):
        raise damaged(f"is damaged (JSON, but a {type(data).__name__}, not an object)")
    found_kind, version = data.get("kind"), data.get("format_version")
    readable_version = isinstance(version, int) and not isinstance(version, bool)
    if found_kind == kind and readable_version and version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} is of format version {version}, newer than this code reads "
            f"({OLDEST_READABLE_VERSION} to {FORMAT_VERSION}); update the code, or use another artifacts folder"
        )
    if found_kind != kind or not readable_version or not OLDEST_READABLE_VERSION <= version <= FORMAT_VERSION:
        raise damaged(
            f"is damaged (not a {kind} file of format version {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}: "
            f"found kind={one_line(repr(found_kind))[:40]}, version={one_line(repr(version))[:40]})"
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
