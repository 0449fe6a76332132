"""The label of each image of a labelled collection: from its folder, its file name's prefix, or a CSV file.

Retrieval can only be scored where images are known to belong together. A
collection says so in one of three ways, and `labels_of` reads any of them:

- folders: `cats/tabby_01.jpg` is labelled `cats`, `caltech101/camera/image_0001.jpg`
  `caltech101/camera`; an image at the top level has no folder label;
- file-name prefixes: `astronaut__blur.jpg` is labelled `astronaut`, `variants/astronaut__blur.jpg`
  `variants/astronaut` (the folder is kept, so equal prefixes in two folders stay apart);
  a name without `__` has no prefix label;
- a CSV file with a header row and `path,label` columns.

Paths are POSIX paths relative to the image root, as `SearchIndex.paths` gives
them. An unlabelled image has the name None and the code -1: it is never a
relevant answer and never scored as a query.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserFacingError

#: The label sources that are not a file; any other source is the path of a CSV file.
SOURCES = ("auto", "folder", "prefix")
#: What separates a file name's label from the rest of it: "astronaut__blur.jpg" is labelled "astronaut".
SEPARATOR = "__"

_NONE = (None, 0)
_CHOICES = "'auto', 'folder', 'prefix' or the path of a CSV file of path,label"
_MISSING = {
    "auto": "no image is in a sub-folder or named <label>__<anything>, so none has a label",
    "folder": "no image is in a sub-folder, so none has a folder label",
    "prefix": "no file name has a <label>__ prefix, so no image has a prefix label",
}
_ADVICE = {
    "auto": "put the images of one kind in one sub-folder (cats/…, dogs/…), name them <label>__<anything>.jpg, "
    "or pass a CSV of path,label",
    "folder": "put the images of one kind in one sub-folder (cats/…, dogs/…), or take labels from names "
    "<label>__<anything>.jpg (source 'prefix'), or pass a CSV of path,label",
    "prefix": "name the images of one kind <label>__<anything>.jpg, or take labels from sub-folders "
    "(source 'folder'), or pass a CSV of path,label",
}


class LabelsError(UserFacingError, ValueError):
    """Labels that cannot be meant, or a label file that cannot be read; the message says what would work."""


@dataclass(frozen=True, eq=False)
class Labels:
    """The label of each image, one per path, as names and as integer codes.

    `classes` holds the distinct labels, sorted; an image's code is the position
    of its label there, so `classes[codes[i]]` is `names[i]`. Unlabelled images
    have the name None and the code -1.
    """

    names: np.ndarray  # object: the label of each path, or None
    codes: np.ndarray  # int64: the position of each label in `classes`, or -1
    classes: np.ndarray  # object: the distinct labels, sorted
    source: str  # "auto", "folder", "prefix", or the CSV file's path
    origin: str = ""  # where the labels came from, in words: "from folders", "from labels.csv"
    unmatched_rows: int = 0  # CSV rows naming images that are not in the collection (a path repeated counts once)
    unmatched_example: str | None = None  # the path of the first such row, as written

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def labelled(self) -> int:
        """How many images have a label."""
        return int(np.count_nonzero(self.codes >= 0))

    @property
    def unlabelled(self) -> int:
        """How many images have no label."""
        return len(self) - self.labelled

    @property
    def label_count(self) -> int:
        """How many distinct labels there are."""
        return len(self.classes)

    @property
    def members(self) -> np.ndarray:
        """How many images carry each label, in `classes` order (int64)."""
        return np.bincount(self.codes[self.codes >= 0], minlength=self.label_count).astype(np.int64)

    @property
    def counts(self) -> dict[str, int]:
        """How many images carry each label, by label, in label order."""
        return dict(zip(self.classes.tolist(), self.members.tolist()))

    @property
    def singletons(self) -> int:
        """How many labels are held by one image only: such an image has nothing to find, so it is no query."""
        return int(np.count_nonzero(self.members == 1))

    def summary(self) -> str:
        """E.g. "46 labels over 920 images (from folders); 0 unlabelled; 2 labels with a single image"."""
        parts = [f"{self.label_count} labels over {self.labelled} images ({self.origin}); {self.unlabelled} unlabelled"]
        if self.singletons:
            parts.append(f"{_count(self.singletons, 'label')} with a single image (not evaluated as queries)")
        if self.label_count == 1:
            parts.append("one label only: every answer counts as relevant")
        if self.unmatched_rows:
            parts.append(
                f"{_count(self.unmatched_rows, 'CSV row')} naming no image of the collection "
                f"(e.g. {self.unmatched_example!r})"
            )
        return "; ".join(parts)


def labels_of(
    paths: Sequence[str], source: str | os.PathLike = "auto", root: str | os.PathLike | None = None
) -> Labels:
    """Return the label of each image in `paths`, from `source`: "auto", "folder", "prefix" or a CSV file's path.

    "auto" takes the prefix where a file name has one and the folder otherwise,
    so a folder may mix `<label>__<variant>.jpg` files with `<label>/…` folders.
    `root`, the image folder, lets a CSV name images by absolute paths under it.
    Raise `LabelsError` where the labels cannot be meant: no image labelled, or
    no label shared by two images.
    """
    paths = list(paths)
    if not paths:
        raise LabelsError("there are no images to label: extract a collection first")
    if isinstance(source, str) and source in SOURCES:
        if source == "folder":
            names, origin = folder_labels(paths), "from folders"
        elif source == "prefix":
            names, origin = prefix_labels(paths), "from file-name prefixes"
        else:
            names, prefixed = _auto_labels(paths)
            origin = _auto_origin(prefixed, sum(name is not None for name in names) - prefixed)
        return _checked(names, source=source, origin=origin, missing=_MISSING[source], advice=_ADVICE[source])
    file = Path(source)
    if file.is_dir():
        raise LabelsError(f"the label source {file} is a folder: pass {_CHOICES}")
    if not file.is_file():
        if file.suffix.lower() == ".csv":
            raise LabelsError(f"the label file {file} does not exist (relative paths start from {os.getcwd()}): "
                              "pass the path of a CSV of path,label")
        raise LabelsError(f"unknown label source {str(source)!r}: pass {_CHOICES}")
    given = read_label_file(file, root)
    names, unmatched = table_labels(paths, given)
    if len(unmatched) == len(given):
        raise LabelsError(
            f"none of the {len(given)} rows of {file} names an image of the collection (e.g. {unmatched[0]!r}): "
            f"write paths relative to the image folder, like {paths[0]!r}"
        )
    return _checked(names, source=str(file), origin=f"from {file.name}",
                    missing=f"the label file {file} labels none of the {len(paths)} images",
                    advice=f"give the images of one kind the same label in {file}",
                    unmatched_rows=len(unmatched), unmatched_example=unmatched[0] if unmatched else None)


def folder_labels(paths: Sequence[str]) -> list[str | None]:
    """The folder of each path (`caltech101/camera/image_0001.jpg` -> `caltech101/camera`), None at the top level."""
    return [path.rpartition("/")[0] or None for path in paths]


def prefix_labels(paths: Sequence[str]) -> list[str | None]:
    """The file name up to `__`, in its folder (`variants/astronaut__blur.jpg` -> `variants/astronaut`), else None."""
    return [_prefix_of(path) for path in paths]


def auto_labels(paths: Sequence[str]) -> list[str | None]:
    """The prefix label where a file name has one, the folder label otherwise."""
    return _auto_labels(paths)[0]


def _auto_labels(paths: Sequence[str]) -> tuple[list[str | None], int]:
    """`auto_labels`, and how many of them are prefixes."""
    labels, prefixed = [], 0
    for path in paths:
        prefix = _prefix_of(path)
        if prefix is None:
            labels.append(path.rpartition("/")[0] or None)
        else:
            labels.append(prefix)
            prefixed += 1
    return labels, prefixed


def _auto_origin(prefixed: int, by_folder: int) -> str:
    """Where "auto" found its labels, in words."""
    if not by_folder:
        return "from file-name prefixes"
    if not prefixed:
        return "from folders"
    return f"from file-name prefixes for {prefixed} images, folders for {by_folder}"


def _prefix_of(path: str) -> str | None:
    """The prefix label of one path; a name that starts with `__` has none (there is nothing before it)."""
    folder, _, name = path.rpartition("/")
    cut = name.find(SEPARATOR)
    if cut <= 0:
        return None
    return f"{folder}/{name[:cut]}" if folder else name[:cut]


def read_label_file(
    file: str | os.PathLike, root: str | os.PathLike | None = None
) -> dict[str, tuple[str | None, int]]:
    """Read a CSV of path,label as {path: (label, line)}, paths made relative to `root`; label None where empty.

    The header names the columns (in any order, other columns ignored); values
    are stripped; UTF-8 with or without a byte-order mark. A path given twice
    with two different labels is an error that names both lines.
    """
    given: dict[str, tuple[str | None, int]] = {}
    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            header = [column.strip().lower() for column in next(reader, [])]
            if not any(header):
                raise LabelsError(f"the label file {file} is empty: its first line must be path,label, then one "
                                  "line per image")
            if "path" not in header or "label" not in header:
                raise LabelsError(f"the label file {file} has no path and label columns (its first line is "
                                  f"{','.join(header)!r}): make its first line path,label")
            at_path, at_label = header.index("path"), header.index("label")
            for values in reader:
                path = values[at_path].strip() if at_path < len(values) else ""
                label = (values[at_label].strip() if at_label < len(values) else "") or None
                if not path:
                    if label:
                        raise LabelsError(f"the label file {file} gives the label {label!r} on line "
                                          f"{reader.line_num} to no path: add its path or remove the line")
                    continue
                path = _relative(path, root)
                before, line = given.setdefault(path, (label, reader.line_num))
                if before != label:
                    raise LabelsError(f"the label file {file} labels {path!r} twice, {before or ''!r} on line {line} "
                                      f"and {label or ''!r} on line {reader.line_num}: keep one")
    except UnicodeDecodeError as error:
        raise LabelsError(f"cannot read the label file {file}: it is not UTF-8 text ({error.reason} at byte "
                          f"{error.start}); save it as UTF-8 CSV") from None
    except csv.Error as error:
        raise LabelsError(f"cannot read the label file {file}: line {reader.line_num}: {error}; save it as a plain "
                          "CSV of path,label") from None
    except OSError as error:
        raise LabelsError(f"cannot read the label file {file}: {error.strerror or error}") from None
    if not given:
        raise LabelsError(f"the label file {file} has a header but no rows: add one line path,label per image")
    return given


def _relative(path: str, root: str | os.PathLike | None) -> str:
    """A CSV path as the collection writes it: POSIX, relative to `root` where it is absolute and under it.

    An absolute path outside `root` (or with no root) is kept as it is: it names no image of the collection.
    """
    if not os.path.isabs(path):
        # "./cats//a.jpg" -> "cats/a.jpg"; most paths need nothing, and a million calls of normpath cost a second
        return posixpath.normpath(path) if path.startswith(".") or "/." in path or "//" in path else path
    if root is not None:
        for base in dict.fromkeys((os.path.abspath(root), os.path.realpath(root))):
            try:
                relative = os.path.relpath(os.path.normpath(path), base)
            except ValueError:  # another drive, on Windows
                continue
            if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
                return Path(relative).as_posix()
    return path


def table_labels(
    paths: Sequence[str], given: dict[str, tuple[str | None, int]]
) -> tuple[list[str | None], list[str]]:
    """The label of each path from {path: (label, line)}, None where none is given; and the paths no image has."""
    left = dict(given)
    names = [left.pop(path, _NONE)[0] for path in paths]  # what is left names no image (paths are distinct)
    return names, list(left)


def encode(names: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorted distinct labels and each name's position among them (int64; -1 for None).

    Codes are given in order of first appearance through a dict, then renumbered
    in sorted order: linear in the names, and without the fixed-width string
    array that `np.unique` would need (a million paths and one long label
    would make it gigabytes; on Python strings it is four times slower).
    """
    first_seen: dict[str, int] = {}
    codes = np.fromiter(
        (-1 if name is None else first_seen.setdefault(name, len(first_seen)) for name in names),
        dtype=np.int64,
        count=len(names),
    )
    classes = np.array(sorted(first_seen), dtype=object)
    if not len(classes):
        return classes, codes
    rank = np.empty(len(classes), np.int64)
    rank[[first_seen[label] for label in classes]] = np.arange(len(classes))
    return classes, np.where(codes >= 0, rank[codes], -1)


def _checked(names: list[str | None], *, source: str, origin: str, missing: str, advice: str, **extra) -> Labels:
    """Labels of `names`, or `LabelsError` where no image is labelled or no label is shared by two images."""
    classes, codes = encode(names)
    labels = Labels(np.array(names, dtype=object), codes, classes, source, origin, **extra)
    if labels.labelled == 0:
        raise LabelsError(f"{missing}: {advice}")
    if not np.any(labels.members >= 2):
        raise LabelsError(f"every image has a label of its own ({labels.labelled} images, {labels.label_count} "
                          f"labels {origin}, e.g. {classes[0]!r}): {advice}")
    return labels


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
