"""Extraction as a Ray job, on a real local Ray cluster: a head and two worker nodes, each its own raylet process.

The cluster is started once for the module and shut down after it. Each job embeds a small folder (demo images
and bad files) with seeded random ResNet50 weights on TensorFlow, and must give what the single-machine pipeline
gives on the same files: the same paths, ids and skip reasons, and the same vectors.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from imagesearch import distributed
from imagesearch.collection import Embeddings, load_embeddings, save_embeddings
from imagesearch.distributed import add_on_ray, extract_on_ray, missing, run_job, runtime_env, save_on_ray
from imagesearch.embedders import EmbedderInfo, RandomWeightsWarning
from imagesearch.extract import extract_embeddings
from imagesearch.index import build_index
from imagesearch.journal import JOURNAL_DIR, Journal
from imagesearch.plan import list_files, make_plan
from imagesearch.records import ImageRecord
from imagesearch.runtimes import make_embedder
from imagesearch.storage import ArtifactError

ray = pytest.importorskip("ray", reason="ray[data] is in requirements.txt: `make install` installs it")
from ray.cluster_utils import Cluster  # noqa: E402

#: Each node's object store: small, as the batches are (decoded pixels pass through it, 150 KB an image).
STORE_BYTES = 150 * 2**20
EMBED_ACTOR_TITLE = b"ray::MapWorker(MapBatches(_Embed))"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node that runs nothing (0 CPUs) and two worker nodes of 1 CPU, as separate processes.

    Started from a folder where `imagesearch` cannot be imported, as a node of a real cluster would be: the
    workers get the package only through the runtime environment, as users are told to pass it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_in = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray-cwd"))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": STORE_BYTES, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE_BYTES) for _ in range(2)]
    # As a user who starts Ray: the package shipped to the workers, which do not see this process's sys.path
    ray.init(address=cluster.address, runtime_env=runtime_env(), log_to_driver=False, logging_level="warning")
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.chdir(started_in)


@pytest.fixture(scope="module")
def embedder():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return make_embedder("resnet50", "random", 0, runtime="tensorflow")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, repo_root) -> Path:
    """40 demo images in two folders, a truncated JPEG and a text file named like an image."""
    root = tmp_path_factory.mktemp("ray-images")
    demo = sorted((repo_root / "images").rglob("*.jpg"))[::5][:40]
    for number, path in enumerate(demo):
        target = root / ("a" if number % 2 else "b") / f"{number:02d}_{path.name}"  # Caltech names repeat
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, target)
    (root / "a" / "truncated.jpg").write_bytes(demo[0].read_bytes()[:300])
    (root / "b" / "notes.jpg").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def single(folder, embedder):
    """The single-machine result on the same files: what every Ray job must equal."""
    return extract_embeddings(folder, embedder, batch_size=8, progress=False)


def assert_same(result, single):
    assert result.paths == single.paths
    assert np.array_equal(result.ids, single.ids)
    reasons = [(skip.path, skip.reason) for skip in single.skipped]
    assert [(skip.path, skip.reason) for skip in result.skipped] == reasons
    np.testing.assert_allclose(result.vectors, single.vectors, rtol=1e-5, atol=1e-5)


def test_a_ray_job_gives_the_single_machine_result_and_commits_it_once(cluster, embedder, folder, single, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", distributed.SharedStorageWarning)  # every image was read by the workers
        result = extract_on_ray(folder, embedder, tmp_path, batch_size=8, workers=2, progress=False)
    assert len(single.paths) == 40 and {skip.path for skip in single.skipped} == {"a/truncated.jpg", "b/notes.jpg"}
    assert_same(result, single)
    assert result.changes.resumed == 0 and result.changes.embedded == 40
    assert not (tmp_path / "manifest.json").exists(), "nothing is committed before the save"
    saved = save_on_ray(result, tmp_path)
    assert_same(load_embeddings(tmp_path), single)
    assert not (tmp_path / JOURNAL_DIR).exists(), "the commit deletes the job's journal"
    assert {path.name for path in tmp_path.glob("vectors.*.npy")} == {entry.vectors for entry in saved.saved.shards}


def test_shards_the_workers_wrote_are_committed_only_if_this_machine_sees_them(cluster, embedder, folder, tmp_path,
                                                                                monkeypatch):
    """On storage the nodes do not share, each worker writes to its own disk: the driver must refuse to commit."""
    result = extract_embeddings(folder, embedder, batch_size=8, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(distributed, "_write_shard", lambda write: None)  # as if written to another node's disk
    with pytest.raises(ArtifactError, match=r"^2 of the 2 files Ray workers wrote are not seen here, e\.g\. "
                                            r".*/vectors\.\w+\.npy: .* must be on storage every node shares"):
        save_on_ray(result, tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_an_interrupted_job_resumes_with_only_the_missing_files(cluster, embedder, folder, single, tmp_path):
    plan = make_plan(list_files(folder))
    first = missing(plan, Journal(tmp_path / JOURNAL_DIR, embedder.info)).slice(0, 16)  # as if stopped after these
    written = run_job(folder, first, embedder.info, tmp_path / JOURNAL_DIR, 8, 2, progress=False)
    assert sum(len(np.load(path)["vectors"]) for path in written) == 16
    result = extract_on_ray(folder, embedder, tmp_path, batch_size=8, workers=2, progress=False)
    assert result.changes.resumed == 16 and result.changes.embedded == 40 - 16
    assert_same(result, single)


def embedding_actor_pids() -> list[int]:
    """The processes of the embedding actors, by the title Ray gives them ("ray::MapWorker(MapBatches(_Embed))",
    with ".submit" while a batch runs), busy ones first."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if title.startswith(EMBED_ACTOR_TITLE):
            found.append((b".submit" not in title, int(entry.name)))
    return [pid for _, pid in sorted(found)]


def test_an_embedding_worker_killed_mid_job_still_gives_every_image_once(cluster, embedder, folder, single, tmp_path):
    killed: list[int] = []

    def kill_one_embedding_actor_after_the_first_batch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if list((tmp_path / JOURNAL_DIR).glob("batch.*.npz")) and (pids := embedding_actor_pids()):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_embedding_actor_after_the_first_batch, daemon=True)
    killer.start()
    result = extract_on_ray(folder, embedder, tmp_path, batch_size=4, workers=2, progress=False)
    killer.join(timeout=5)
    assert killed, "no embedding actor was killed: the job ended before one was seen"
    assert_same(result, single)
    assert result.changes.embedded == 40 and result.changes.resumed == 0
    journaled = sum(len(np.load(path)["vectors"]) for path in (tmp_path / JOURNAL_DIR).glob("batch.*.npz"))
    print(f"killed actor {killed[0]}; {journaled} vectors journaled for 40 images")
    assert journaled >= 40  # a batch the killed actor journaled but never reported is journaled again: one wins
    assert len(result.paths) == len(set(result.paths)) == 40


@pytest.mark.parametrize("factory", ["IVF16,Flat", "PCAR64,IVF16,PQ16x4fs"])
def test_an_index_built_from_the_shards_on_ray_answers_as_one_built_here(cluster, factory, tmp_path, monkeypatch):
    """5,000 saved vectors (a shard of 4,096 and one of 904), added in parts of 1,024 by Ray tasks to copies of
    the trained index and merged, then augmented (the default retrieval's DBA) and searched with query
    expansion: the same neighbours, at the same distances, as the index built here."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 128)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 5000)] + 0.3 * rng.standard_normal((5000, 128)).astype(np.float32)
    records = [ImageRecord(number, f"{number:05d}.jpg", 1, 1, f"{number:064x}") for number in range(5000)]
    embeddings = Embeddings(vectors, records, EmbedderInfo("test", "none", 128, (224, 224)), "images")
    monkeypatch.setattr("imagesearch.collection.SHARD_ROWS", 4096)
    saved = save_embeddings(embeddings, tmp_path)
    assert [entry.rows for entry in saved.saved.shards] == [4096, 904]
    here = build_index(saved, factory, params="nprobe=4" if "IVF" in factory else None)
    on_ray = build_index(saved, factory, params="nprobe=4" if "IVF" in factory else None,
                         add_vectors=functools.partial(add_on_ray, rows_per_part=1024))
    assert len(on_ray) == len(here) == 5000
    queries = vectors[::7]
    expected, found = here.search_ids(queries, 10), on_ray.search_ids(queries, 10)
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_array_equal(found[0], expected[0])


def test_the_command_line_builds_on_ray_what_it_builds_here(cluster, folder, single, tmp_path, monkeypatch, capsys):
    """`build --ray 2` (on the cluster this process has joined): extraction, commit and index on Ray."""
    from imagesearch import cli

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # cli.main replaces it for its own output
    model = ["--weights", "random", "--runtime", "tensorflow", "--batch-size", "8"]
    assert cli.main(["build", "--images", str(folder), "--artifacts", str(tmp_path), *model, "--ray", "2"]) == 0
    output = capsys.readouterr().out
    assert "on Ray (" in output and "2 model actors" in output
    assert "40 images embedded, 2 skipped" in output
    assert_same(load_embeddings(tmp_path / "embeddings"), single)
    assert "Index Flat (recommended) of 40 vectors" in output


def test_images_the_workers_cannot_read_are_embedded_here_with_a_warning(cluster, embedder, folder, single, tmp_path,
                                                                         monkeypatch):
    """An image folder the nodes do not share: the workers read nothing, the driver everything, and says why."""
    width, height = embedder.info.input_size
    monkeypatch.setattr(distributed, "read_files", lambda batch, root, input_size: {  # as if every file were missing
        "path": np.array([], dtype=object), "size": np.zeros(0, np.int64), "mtime_ns": np.zeros(0, np.int64),
        "sha256": np.array([], dtype=object), "pixels": np.zeros((0, height, width, 3), np.uint8)})
    with pytest.warns(distributed.SharedStorageWarning, match=r"^40 images the Ray workers could not read were read "
                      r"and embedded here, on the driver: .* must be on storage every node shares at the same path"):
        result = extract_on_ray(folder, embedder, tmp_path, batch_size=8, workers=2, progress=False)
    assert_same(result, single)


def test_the_runtime_environment_installs_what_the_workers_import_only_when_asked(repo_root, monkeypatch, tmp_path):
    monkeypatch.delenv(distributed.PIP_ENV, raising=False)
    assert runtime_env() == {"py_modules": [str(repo_root / "imagesearch")]}
    monkeypatch.setenv(distributed.PIP_ENV, "1")
    packages = runtime_env()["pip"]["packages"]
    lines = [line.strip() for line in (repo_root / "requirements.txt").read_text().splitlines()]
    assert all(package in lines for package in packages)  # as requirements.txt bounds them
    assert {package.split(">")[0] for package in packages} == {*distributed.WORKER_PACKAGES} - {"ray"} | {"ray[data]"}
    with pytest.raises(ArtifactError, match=r"^cannot read .*requirements\.txt \(No such file or directory\): it lists "
                                            r"what Ray installs on the nodes; install the requirements on every node"):
        distributed.worker_requirements(tmp_path / "requirements.txt")
