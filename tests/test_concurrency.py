"""Two runs and one artifacts folder: extractions and saves take the folder's lock; a save keeps later journals."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagesearch.collection import load_embeddings, save_embeddings
from imagesearch.extract import extract_embeddings
from imagesearch.index import build_index, load_index, save_index
from imagesearch.journal import JOURNAL_DIR
from imagesearch.storage import FolderBusyError

#: Holds the save lock of the folder argv[1] until its standard input closes.
HOLD_LOCK = """
import sys
from imagesearch.storage import exclusive
with exclusive(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def lock_holder(repo_root):
    """Start a process that holds a folder's lock: `hold(folder)` returns it once it holds the lock."""
    children = []

    def hold(folder: Path) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=repo_root, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        children.append(child)
        assert child.stdout.readline().strip() == "locked", child.stderr.read()
        return child

    yield hold
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def release(child: subprocess.Popen) -> None:
    child.communicate(input="", timeout=30)
    assert child.returncode == 0


def test_a_save_into_a_folder_another_run_is_updating_is_refused_and_changes_nothing(
    tmp_path, make_embeddings, lock_holder
):
    rng = np.random.default_rng(0)
    first = make_embeddings(rng.standard_normal((5, 8)), [f"a{row}.jpg" for row in range(5)])
    second = make_embeddings(rng.standard_normal((3, 8)), [f"b{row}.jpg" for row in range(3)])
    saved_first = save_embeddings(first, tmp_path / "embeddings")
    save_index(build_index(saved_first), tmp_path / "index")
    # An index of saved embeddings (only those can be saved), so that its save fails on the lock alone.
    another_index = build_index(save_embeddings(second, tmp_path / "elsewhere"))
    before = {
        folder: {path.name: path.read_bytes() for path in (tmp_path / folder).iterdir()}
        for folder in ["embeddings", "index"]
    }

    holders = [lock_holder(tmp_path / "embeddings"), lock_holder(tmp_path / "index")]
    with pytest.raises(FolderBusyError, match="another run is updating"):
        save_embeddings(second, tmp_path / "embeddings")
    with pytest.raises(FolderBusyError, match="another run is updating"):
        save_index(another_index, tmp_path / "index")
    for folder in ["embeddings", "index"]:
        assert {path.name: path.read_bytes() for path in (tmp_path / folder).iterdir()} == before[folder]

    release(holders[0])
    holders[1].send_signal(signal.SIGKILL)  # a holder that dies releases the lock too
    holders[1].wait()
    saved_second = save_embeddings(second, tmp_path / "embeddings")
    save_index(build_index(saved_second), tmp_path / "index")
    assert load_embeddings(tmp_path / "embeddings").paths == load_index(tmp_path / "index").paths == second.paths


def test_a_save_deletes_its_own_journal_but_not_batches_another_run_adds_meanwhile(
    tmp_path, make_image, random_resnet
):
    for number in range(3):
        make_image(tmp_path / "images" / f"img_{number}.jpg")
    folder = tmp_path / "embeddings"
    result = extract_embeddings(tmp_path / "images", random_resnet, batch_size=2, progress=False, checkpoint_dir=folder)
    ours = sorted((folder / JOURNAL_DIR).iterdir())
    assert len(ours) == 2
    theirs = folder / JOURNAL_DIR / "batch.0123456789ab.npz"  # as if another run had journaled a batch since
    theirs.write_bytes(ours[0].read_bytes())

    save_embeddings(result, folder)
    assert sorted((folder / JOURNAL_DIR).iterdir()) == [theirs]
    assert load_embeddings(folder).paths == ["img_0.jpg", "img_1.jpg", "img_2.jpg"]


def test_an_extraction_into_a_folder_another_run_is_updating_is_refused_before_any_work(
    tmp_path, make_image, counting_embedder, lock_holder
):
    make_image(tmp_path / "images" / "one.jpg")
    folder = tmp_path / "embeddings"
    holder = lock_holder(folder)
    with pytest.raises(FolderBusyError, match="another run is updating"):
        extract_embeddings(tmp_path / "images", counting_embedder, progress=False, checkpoint_dir=folder)
    assert counting_embedder.images_embedded == 0
    assert not (folder / JOURNAL_DIR).exists()
    release(holder)
    result = extract_embeddings(tmp_path / "images", counting_embedder, progress=False, checkpoint_dir=folder)
    assert result.paths == ["one.jpg"]


def test_a_damaged_journal_file_is_skipped_and_deleted_by_the_next_save(tmp_path, make_image, random_resnet):
    make_image(tmp_path / "images" / "one.jpg")
    folder = tmp_path / "embeddings"
    (folder / JOURNAL_DIR).mkdir(parents=True)
    (folder / JOURNAL_DIR / "batch.0123456789ab.npz").write_bytes(b"PK\x03\x04 not really a zip")
    result = extract_embeddings(tmp_path / "images", random_resnet, progress=False, checkpoint_dir=folder)
    assert result.changes.summary().startswith("1 added")
    save_embeddings(result, folder)
    assert not (folder / JOURNAL_DIR).exists()


def test_the_cli_says_the_folder_is_busy_and_runs_once_it_is_free(tmp_path, make_image, repo_root, lock_holder):
    for number in range(5):
        make_image(tmp_path / "images" / f"img_{number}.jpg")
    command = [
        sys.executable, "-m", "imagesearch", "build", "--weights", "random", "--images", str(tmp_path / "images"),
        "--artifacts", str(tmp_path / "artifacts"), "--batch-size", "2",
    ]
    holder = lock_holder(tmp_path / "artifacts" / "embeddings")
    busy = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300, check=False)
    assert busy.returncode == 2, busy.stderr
    assert "error: another run is updating" in busy.stderr
    assert not (tmp_path / "artifacts" / "embeddings" / "manifest.json").exists()

    release(holder)
    rerun = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "this run: 5 added" in rerun.stdout
    assert load_index(tmp_path / "artifacts" / "index").paths == [f"img_{number}.jpg" for number in range(5)]
