"""A crash or a full disk during a save must never cost the embeddings or the index saved before.

Failures are injected into the real write functions (numpy, FAISS, the metadata
JSON) and real processes are killed with SIGKILL in the middle of saving; after
each, what was saved before must load whole, and the next save must clean up.
"""

from __future__ import annotations

import errno
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from fnmatch import fnmatch
from pathlib import Path

import faiss
import numpy as np
import pytest

from imagesearch import collection
from imagesearch.collection import MANIFEST_FILE, load_embeddings, save_embeddings
from imagesearch.index import METADATA_FILE, build_index, held_ids, load_index, load_previous_index, save_index
from imagesearch.storage import TEMPORARY_PREFIX, ArtifactError, DamagedStateWarning

DISK_FULL = "No space left on device"

#: The data files each kind of folder commits: a collection's shard (vectors and items) and skipped list, an index.
#: The indexes here compare raw vectors ("plain"), so that a state is told by its vectors; the file an augmented
#: index saves beside them is checked in tests/test_retrieval.py.
DATA_FILES = {"embeddings": ["items.*.parquet", "skipped.*.parquet", "vectors.*.npy"], "index": ["index.*.faiss"]}

# --- small states for in-process failures --------------------------------------------------------


@pytest.fixture
def state_a(make_embeddings):
    rng = np.random.default_rng(0)
    return make_embeddings(rng.standard_normal((40, 16)), [f"a/{row:02}.jpg" for row in range(40)])


@pytest.fixture
def state_b(make_embeddings):
    rng = np.random.default_rng(1)
    return make_embeddings(rng.standard_normal((25, 16)), [f"b/{row:02}.jpg" for row in range(25)])


@pytest.fixture
def saved_a(tmp_path, state_a):
    """State A saved in `tmp_path/embeddings` and, indexed, in `tmp_path/index`; returns the folders, with
    `other`: where `prepare` saves the embeddings of an index it builds (never the folder under test)."""
    folders = {"embeddings": tmp_path / "embeddings", "index": tmp_path / "index", "other": tmp_path / "other"}
    saved = save_embeddings(state_a, folders["embeddings"])  # state_a itself keeps its vectors in memory
    save_index(build_index(saved, "Flat", retrieval="plain"), folders["index"])
    return folders


def prepare(state, folders, what: str):
    """What `commit` saves for `state`: the embeddings themselves, or a Flat index of them.

    An index on disk points at the saved embeddings it indexes, so the index is
    built from `state` saved in a folder of its own: the embeddings folder under
    test keeps A, and the only save under test is the index's.
    """
    if what == "embeddings":
        return state
    return build_index(save_embeddings(state, folders["other"]), "Flat", retrieval="plain")


def commit(prepared, folders, what: str) -> None:
    """Save what `prepare` returned into the folder under test."""
    if what == "embeddings":
        save_embeddings(prepared, folders["embeddings"])
    else:
        save_index(prepared, folders["index"])


def save(state, folders, what: str) -> None:
    """Save `state` as embeddings or as a Flat index into its folder."""
    commit(prepare(state, folders, what), folders, what)


def temporary_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob(f"{TEMPORARY_PREFIX}*"))


def data_files(folder: Path) -> list[str]:
    patterns = [pattern for patterns in DATA_FILES.values() for pattern in patterns]
    return sorted(path.name for pattern in patterns for path in folder.glob(pattern))


def assert_one_of_each(names: list[str], what: str) -> None:
    """`names` are one data file of each kind a `what` folder commits, and nothing else."""
    matched = sorted(pattern for name in names for pattern in DATA_FILES[what] if fnmatch(name, pattern))
    assert len(names) == len(matched) and matched == DATA_FILES[what], names


def assert_holds(folders, state) -> None:
    """Both folders load as exactly `state`: bitwise-equal vectors, same items, same search hits."""
    loaded = load_embeddings(folders["embeddings"])
    assert loaded.vectors.tobytes() == state.vectors.tobytes()
    assert loaded.items == state.items
    assert loaded.next_id == state.next_id

    index = load_index(folders["index"])
    expected = build_index(state, "Flat", retrieval="plain")
    assert np.array_equal(index.ids, expected.ids) and index.paths == expected.paths
    assert index.vectors().tobytes() == state.vectors.tobytes()  # the FAISS file's own vectors, by id
    queries = np.vstack([state.vectors[:3], np.random.default_rng(2).standard_normal((3, state.vectors.shape[1]))])
    assert index.search(queries, 5) == expected.search(queries, 5)


# --- failure injectors: each wraps a real write function so it writes part of its data, then raises ---


def shard_write_fills_disk(monkeypatch, fired: list) -> None:
    real_write_shard = collection.write_shard

    def write_half(path, store, rows):
        real_write_shard(path, store, rows)
        os.truncate(path, os.path.getsize(path) // 2)
        fired.append(path)
        raise OSError(errno.ENOSPC, DISK_FULL)

    monkeypatch.setattr("imagesearch.collection.write_shard", write_half)


def faiss_write_index_fills_disk(monkeypatch, fired: list) -> None:
    real_write_index = faiss.write_index

    def write_half(index, path):
        real_write_index(index, path)
        os.truncate(path, os.path.getsize(path) // 2)
        fired.append(path)
        raise RuntimeError(f"Error in faiss::FileIOWriter: fwrite failed: {DISK_FULL}")  # as FAISS reports it

    monkeypatch.setattr("imagesearch.index_files.faiss.write_index", write_half)


def json_write_fills_disk(monkeypatch, fired: list) -> None:
    real_write_text = Path.write_text

    def write_half(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        fired.append(self.name)
        raise OSError(errno.ENOSPC, DISK_FULL)

    monkeypatch.setattr("imagesearch.storage.Path.write_text", write_half)


@pytest.mark.parametrize(
    ("inject", "what"),
    [
        pytest.param(shard_write_fills_disk, "embeddings", id="vectors-shard"),
        pytest.param(faiss_write_index_fills_disk, "index", id="faiss.write_index"),
        pytest.param(json_write_fills_disk, "embeddings", id="json-manifest"),
        pytest.param(json_write_fills_disk, "index", id="json-index-metadata"),
    ],
)
def test_save_failing_midway_raises_and_keeps_the_previous_state_whole(
    monkeypatch, saved_a, state_a, state_b, inject, what
):
    prepared = prepare(state_b, saved_a, what)  # before the injection: only the save under test may fail
    fired = []
    with monkeypatch.context() as patch:
        inject(patch, fired)
        with pytest.raises((OSError, RuntimeError), match=DISK_FULL):
            commit(prepared, saved_a, what)
    assert fired, "the injected failure never ran: the save no longer calls the patched write function"

    assert_holds(saved_a, state_a)
    assert temporary_files(saved_a["embeddings"]) == []
    assert temporary_files(saved_a["index"]) == []


@pytest.mark.parametrize(
    ("what", "metadata", "stem"),
    [("embeddings", MANIFEST_FILE, "vectors"), ("index", METADATA_FILE, "index")],
)
def test_interruption_before_the_metadata_commit_keeps_the_previous_data_and_next_save_removes_the_orphan(
    monkeypatch, saved_a, state_a, state_b, what, metadata, stem
):
    folder = saved_a[what]
    committed = data_files(folder)
    assert_one_of_each(committed, what)

    def interrupted(path, data):
        raise OSError(errno.EIO, "interrupted before the commit")

    prepared = prepare(state_b, saved_a, what)
    with monkeypatch.context() as patch:
        patch.setattr(f"imagesearch.{'collection' if what == 'embeddings' else 'index_files'}.write_json", interrupted)
        with pytest.raises(OSError, match="interrupted before the commit"):
            commit(prepared, saved_a, what)

    # The metadata still names the previous data files, which are still there next to the new, orphaned ones.
    previous_metadata = (folder / metadata).read_text(encoding="utf-8")
    assert all(name in previous_metadata for name in committed)
    orphans = [name for name in data_files(folder) if name not in committed]
    assert any(name.startswith(f"{stem}.") for name in orphans), orphans
    assert not any(name in previous_metadata for name in orphans)
    assert_holds(saved_a, state_a)

    save(state_b, saved_a, what)
    loaded = load_embeddings(folder) if what == "embeddings" else load_index(folder)
    assert loaded.paths == state_b.paths
    remaining = data_files(folder)
    assert_one_of_each(remaining, what)
    assert not set(remaining) & set(committed + orphans)
    assert temporary_files(folder) == []


# --- killed processes -----------------------------------------------------------------------------

ROWS, DIM = 3000, 512
#: Two states a child process saves over and over: every vector 1.0 or every vector 2.0, and their own paths.
KILL_STATES = {"A": 1.0, "B": 2.0}


def kill_state_paths(name: str) -> list[str]:
    return [f"{name.lower()}/{row:04}.jpg" for row in range(ROWS)]


CHILD_PRELUDE = f"""
import os, signal, sys
from fnmatch import fnmatch
from pathlib import Path
import numpy as np
from imagesearch.embedders import EmbedderInfo
from imagesearch.collection import Embeddings, save_embeddings
from imagesearch.records import ImageRecord
from imagesearch.index import build_index, save_index

folder = Path(sys.argv[1])
info = EmbedderInfo("test", "none", {DIM}, (224, 224))
states = {{}}
for name, value in {KILL_STATES!r}.items():
    items = [ImageRecord(row, f"{{name.lower()}}/{{row:04}}.jpg", 0, 0, f"{{row:064x}}") for row in range({ROWS})]
    states[name] = Embeddings(np.full(({ROWS}, {DIM}), value, np.float32), items, info, "/nowhere", next_id={ROWS})

def save(name):
    # The embeddings, then an index of them as saved (an index on disk points at the saved embeddings).
    saved = save_embeddings(states[name], folder / "embeddings")
    save_index(build_index(saved, "Flat", retrieval="plain"), folder / "index")
"""

SAVE_FOREVER = CHILD_PRELUDE + """
while True:
    for name in states:
        save(name)
        print(name, flush=True)
"""

#: Saves A, then saves B but SIGKILLs itself just before the file matching argv[2] is renamed into place.
KILL_BEFORE_RENAME = CHILD_PRELUDE + """
save("A")
real_replace = os.replace
def replace(source, destination):
    if fnmatch(Path(destination).name, sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, destination)
os.replace = replace
save("B")
"""


def start_child(script: str, *args, cwd: Path, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True
    )


def state_of(vectors: np.ndarray) -> str:
    """Which kill state `vectors` wholly are; fails on a mix."""
    for name, value in KILL_STATES.items():
        if np.all(vectors == value):
            return name
    raise AssertionError(f"vectors are neither all 1.0 nor all 2.0: values {np.unique(vectors)[:5]}")


def assert_each_folder_wholly_one_state(folder: Path) -> tuple[str, str, bool]:
    """Each folder holds one whole state: (the embeddings' state, the index's, whether the index is current).

    A kill between the two commits leaves the index of the state saved before, pointing at a collection
    version that was saved over since: `load_index` refuses it as out of date, but it must be whole all the
    same, for the next update to start from (`load_previous_index`, without a damage warning).
    """
    embeddings = load_embeddings(folder / "embeddings")
    assert embeddings.vectors.shape == (ROWS, DIM)
    embeddings_state = state_of(embeddings.vectors)
    assert embeddings.paths == kill_state_paths(embeddings_state)

    try:
        index = load_index(folder / "index")  # itself checks the FAISS file against its metadata and the records
    except ArtifactError as error:
        assert re.search("(update|rebuild) the index", str(error)), error
        with warnings.catch_warnings():
            warnings.simplefilter("error", DamagedStateWarning)
            stale = load_previous_index(folder / "index")
        assert stale is not None and len(stale) == ROWS
        ids = held_ids(stale.index)
        assert np.array_equal(ids, np.arange(ROWS))
        index_state = state_of(stale.index.reconstruct_batch(ids))
        assert index_state != embeddings_state  # the state saved before: the saves alternate
        return embeddings_state, index_state, False
    assert len(index) == ROWS
    index_state = state_of(index.vectors())
    assert index_state == embeddings_state  # a current index indexes the embeddings saved beside it
    assert index.paths == kill_state_paths(index_state)
    return embeddings_state, index_state, True


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.strip())
    lines.put(None)


def test_process_killed_at_random_moments_while_saving_leaves_each_folder_wholly_one_state(tmp_path, repo_root):
    rng = random.Random(20240611)
    for run in range(8):
        with tempfile.TemporaryFile("w+") as errors:
            child = start_child(SAVE_FOREVER, tmp_path, cwd=repo_root, stderr=errors)
            lines: queue.Queue = queue.Queue()
            reader = threading.Thread(target=read_lines, args=(child.stdout, lines), daemon=True)
            reader.start()
            try:
                saved = set()
                while not set(KILL_STATES) <= saved:  # wait until both folders hold a committed save of each state
                    line = lines.get(timeout=30)
                    if line is None:
                        errors.seek(0)
                        pytest.fail(f"the saving process ended by itself: {errors.read()}")
                    saved.add(line)
                time.sleep(rng.uniform(0.003, 0.2))
                child.send_signal(signal.SIGKILL)
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
                reader.join(timeout=10)
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL, f"run {run}: the process ended before the kill"

        assert_each_folder_wholly_one_state(tmp_path)

    # One more save cleans up what the kills left: temporary files and unreferenced data files.
    saved = save_embeddings(load_embeddings(tmp_path / "embeddings"), tmp_path / "embeddings")
    save_index(build_index(saved, "Flat", retrieval="plain"), tmp_path / "index")
    assert_one_of_each(data_files(tmp_path / "embeddings"), "embeddings")
    assert_one_of_each(data_files(tmp_path / "index"), "index")
    assert temporary_files(tmp_path / "embeddings") == temporary_files(tmp_path / "index") == []
    assert assert_each_folder_wholly_one_state(tmp_path)[2]


@pytest.mark.parametrize(
    ("killed_file", "folder"),
    [
        pytest.param("vectors.*.npy", "embeddings", id="vectors"),
        pytest.param("items.*.parquet", "embeddings", id="items"),
        pytest.param("skipped.*.parquet", "embeddings", id="skipped"),
        pytest.param(MANIFEST_FILE, "embeddings", id="manifest"),
        pytest.param("skipped.csv", "embeddings", id="skipped-report"),
        pytest.param("index.*.faiss", "index", id="faiss-index"),
        pytest.param(METADATA_FILE, "index", id="index-metadata"),
    ],
)
def test_process_killed_before_a_file_is_renamed_into_place_keeps_state_and_next_save_cleans_up(
    tmp_path, repo_root, killed_file, folder
):
    child = start_child(KILL_BEFORE_RENAME, tmp_path, killed_file, cwd=repo_root)
    _, errors = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, errors
    leftovers = temporary_files(tmp_path / folder)
    assert len(leftovers) == 1 and fnmatch(leftovers[0], f"{TEMPORARY_PREFIX}{killed_file}.*")

    # The killed save was of state B. Killed before its commit (the manifest's rename), the embeddings folder
    # still holds A, and the index of A is current; killed after it (the skip report is written last, then the
    # index is saved), it holds B, and the index, not saved yet, is still the whole one of A, out of date.
    states = assert_each_folder_wholly_one_state(tmp_path)
    committed = killed_file not in ("vectors.*.npy", "items.*.parquet", "skipped.*.parquet", MANIFEST_FILE)
    assert states == (("B", "A", False) if committed else ("A", "A", True))

    saved = save_embeddings(load_embeddings(tmp_path / "embeddings"), tmp_path / "embeddings")
    save_index(build_index(saved, "Flat", retrieval="plain"), tmp_path / "index")
    for directory in ["embeddings", "index"]:
        assert_one_of_each(data_files(tmp_path / directory), directory)
        assert temporary_files(tmp_path / directory) == []
    assert assert_each_folder_wholly_one_state(tmp_path) == (states[0], states[0], True)
