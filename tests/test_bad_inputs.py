"""Every bad input handled: each file of the tricky corpus is embedded, skipped with a reason, or ignored and counted.

Memory stays bounded, one file's exception of any class never stops a run, and what Pillow and libtiff say
about a file ends up in its reason or a count, not on the console.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from imagesearch import cli
from imagesearch.collection import Embeddings
from imagesearch.extract import extract_embeddings
from imagesearch.images import load_image

from bad_corpus import (
    BOMB,
    EXIF_ROTATED,
    EXPECTATIONS,
    FIFO,
    HUGE_JPEG,
    IGNORED_COUNTS,
    NOT_AN_IMAGE,
    UPRIGHT_TWIN,
    ZEROS,
    exploding_format,
    make_bad_corpus,
)

#: What decoding the 8000 x 6000 JPEG in full would take (8000 * 6000 * 3 bytes); a reduced-scale decode is far less.
FULL_DECODE_MB = 144
MEMORY_BOUND_MB = 60


@contextmanager
def fifo_released(fifo: Path) -> Iterator[list[bool]]:
    """While active, let a reader stuck opening `fifo` go on (it reads end-of-file); the list records if one was.

    Opening a FIFO to read waits for a writer: without this, a library that opens one hangs the whole test run.
    """
    opened: list[bool] = []
    done = threading.Event()

    def release() -> None:
        while not done.wait(0.05):
            try:  # succeeds only while someone waits to read
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                opened.append(True)
            except OSError:
                pass

    worker = threading.Thread(target=release, daemon=True)
    worker.start()
    try:
        yield opened
    finally:
        done.set()
        worker.join()


class Extraction(NamedTuple):
    root: Path
    result: Embeddings
    fifo_was_opened: bool

    def outcome(self, path: str) -> tuple[str, str]:
        reasons = {skip.path: skip.reason for skip in self.result.skipped}
        return ("skipped", reasons[path]) if path in reasons else ("embedded", "")

    @property
    def embedded_paths(self) -> list[str]:
        return [item.path for item in self.result.items]

    def vector(self, path: str) -> np.ndarray:
        return self.result.vectors[self.embedded_paths.index(path)]


@pytest.fixture(scope="module")
def extraction(tmp_path_factory, random_resnet) -> Extraction:
    root = tmp_path_factory.mktemp("bad_corpus")
    make_bad_corpus(root)
    with fifo_released(root / FIFO) as opened, exploding_format():
        result = extract_embeddings(root, random_resnet, batch_size=4, progress=False)
    return Extraction(root, result, bool(opened))


def test_extraction_reports_every_corpus_file_exactly_once_under_its_exact_path(extraction):
    reported = extraction.embedded_paths + [skip.path for skip in extraction.result.skipped]
    assert sorted(reported) == sorted(EXPECTATIONS)  # none twice (symlink loop), none missing, none invented


@pytest.mark.parametrize("path", EXPECTATIONS)
def test_corpus_file_is_embedded_or_skipped_with_a_reason(extraction, path):
    expected = EXPECTATIONS[path]
    outcome, reason = extraction.outcome(path)
    assert outcome == expected.outcome, f"{expected.note}; reason: {reason!r}"
    if outcome == "skipped":
        assert reason.strip()
        assert expected.reason in reason


def test_every_file_under_the_folder_is_embedded_skipped_or_ignored_and_counted(extraction):
    files, folders_left_out = 0, 0  # counted independently of the code under test
    for folder, subfolders, names in os.walk(extraction.root):
        left_out = [name for name in subfolders if name.startswith(".") or os.path.islink(os.path.join(folder, name))]
        folders_left_out += len(left_out)
        subfolders[:] = [name for name in subfolders if name not in left_out]
        files += len(names)
    changes = extraction.result.changes
    assert changes.ignored == IGNORED_COUNTS
    ignored_files = sum(count for (_, kind), count in changes.ignored.items() if kind != "folder")
    ignored_folders = sum(count for (_, kind), count in changes.ignored.items() if kind == "folder")
    assert len(extraction.result.items) + len(extraction.result.skipped) + ignored_files == files
    assert ignored_folders == folders_left_out
    assert changes.ignored_summary() == (
        "7 others ignored: 3 not images by their extension (no extension, .mp4, .txt), 1 in an image format Pillow "
        "cannot read (.heic), 2 hidden (1 file, 1 folder), 1 link to a folder, not followed"
    )


def test_a_warning_from_the_decoder_is_counted_with_the_file_it_concerns(extraction):
    changes = extraction.result.changes
    assert "warned/long tag.tif" in extraction.embedded_paths
    assert changes.noted == 1
    assert changes.note_example == "warned/long tag.tif: Tag data larger than file. Skipping tag 270"


def test_the_command_line_run_over_the_corpus_exits_0_and_prints_each_skip_once_and_no_decoder_chatter(
    extraction, tmp_path, capfd
):
    with fifo_released(extraction.root / FIFO), exploding_format():
        status = cli.main(["extract", "--images", str(extraction.root), "--artifacts", str(tmp_path),
                           "--weights", "random", "--batch-size", "8"])
    out, err = capfd.readouterr()
    assert status == 0, err
    skipped = [skip.path for skip in extraction.result.skipped]
    printed = [line.split("skipped ", 1)[1].rsplit(": ", 1)[0] for line in out.splitlines() if "  skipped " in line]
    assert len(printed) == len(set(printed)) == len(skipped)  # each skip once (under 20: all listed)
    assert "  7 others ignored: " in out
    assert "  1 image decoded despite a warning and was embedded, e.g. warned/long tag.tif: " in out
    # stderr: the progress bar and the random-weights warning. No libtiff line, no Pillow log record or warning, no
    # traceback: what they said about the files is in the reasons above.
    others = [line for line in re.split(r"[\r\n]", err) if line.strip() and not line.startswith("Embedding:")]
    assert all(line.startswith("warning: ResNet50 uses randomly initialised weights") for line in others), err


def test_vectors_are_finite_with_one_2048_wide_row_per_embedded_file(extraction):
    embedded = sum(expectation.outcome == "embedded" for expectation in EXPECTATIONS.values())
    assert extraction.result.vectors.shape == (embedded, 2048)
    assert np.isfinite(extraction.result.vectors).all()


def test_exif_rotated_jpeg_is_embedded_upright(extraction):
    np.testing.assert_allclose(extraction.vector(EXIF_ROTATED), extraction.vector(UPRIGHT_TWIN), rtol=1e-5, atol=1e-5)
    pixels = load_image(extraction.root / EXIF_ROTATED)
    assert (pixels[:100, :, 0] > 240).all() and (pixels[124:, :, 2] > 240).all()  # red on top, blue below


def test_a_fifo_is_skipped_without_being_opened(extraction):
    assert extraction.outcome(FIFO)[0] == "skipped"
    assert not extraction.fifo_was_opened


MEASURE = """
import sys
{setup}
def peak_mb():  # VmHWM, not ru_maxrss: Linux starts a spawned child's ru_maxrss at its parent's (pytest's) peak
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
read(sys.argv[1])  # something small first: imports, model and decoder set-up are not counted
before = peak_mb()
read(sys.argv[2])
print(peak_mb() - before)
"""
LOAD = """
from imagesearch.images import ImageLoadError, load_image
def read(path):
    try:
        load_image(path)
    except ImageLoadError:
        pass
"""
EXTRACT = """
from imagesearch.runtimes import make_embedder
from imagesearch.extract import extract_embeddings
embedder = make_embedder("resnet50", "random", seed=0, runtime="tensorflow")
def read(folder):
    extract_embeddings(folder, embedder, batch_size=4, progress=False)
"""


def peak_growth_mb(repo_root: Path, setup: str, small: Path, large: Path) -> float:
    """How much more peak memory a fresh Python needs to `read(large)` than it needed to `read(small)`."""
    script = MEASURE.format(setup=setup)
    measured = subprocess.run(
        [sys.executable, "-c", script, small, large], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert measured.returncode == 0, measured.stderr
    return float(measured.stdout)


@pytest.mark.parametrize("name", [HUGE_JPEG, BOMB])
def test_loading_a_huge_image_or_a_bomb_keeps_peak_memory_far_below_a_full_decode(extraction, repo_root, name):
    growth = peak_growth_mb(repo_root, LOAD, extraction.root / UPRIGHT_TWIN, extraction.root / name)
    assert growth < MEMORY_BOUND_MB, f"peak RSS grew {growth:.0f} MB (a full decode is {FULL_DECODE_MB} MB)"


def test_extracting_huge_bomb_and_oversized_files_keeps_peak_memory_bounded(extraction, repo_root, tmp_path):
    def folder(name: str, targets: list[str]) -> Path:
        (tmp_path / name).mkdir()
        for number, target in enumerate(targets):
            (tmp_path / name / f"{number}{Path(target).suffix}").symlink_to(extraction.root / target)
        return tmp_path / name

    small = folder("small", [UPRIGHT_TWIN] * 4)  # one full batch: the model's own memory is not counted
    large = folder("large", [UPRIGHT_TWIN, HUGE_JPEG, BOMB, ZEROS])
    growth = peak_growth_mb(repo_root, EXTRACT, small, large)
    assert growth < MEMORY_BOUND_MB, f"peak RSS grew {growth:.0f} MB"


def test_query_with_a_text_file_named_jpg_exits_2_with_an_error_naming_it(extraction, tmp_path, make_image, repo_root):
    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "imagesearch", *args, "--weights", "random", "--artifacts", str(tmp_path)]
        return subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)

    for name in ["one.jpg", "two.png"]:
        make_image(tmp_path / "images" / name)
    built = run("build", "--images", str(tmp_path / "images"), "-k", "1")
    assert built.returncode == 0, built.stderr

    text_file = extraction.root / NOT_AN_IMAGE
    result = run("query", str(text_file))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(text_file) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
