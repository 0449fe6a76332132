"""Extraction and index building as Ray jobs: the same plan, journal, commit and index as on one machine, the
heavy work spread over a Ray cluster (a local one unless told its address).

Extraction (`extract_on_ray`, then `save_on_ray`):

1. The driver plans as on one machine (`plan.make_plan`: what to read, the ids decided up front) and hands Ray
   Data the planned files no journal holds yet.
2. Reading, hashing and decoding run as Ray tasks; embedding runs in a pool of actors, each with one model, on
   full batches; each actor journals its batches into the embeddings folder's `pending/`, as a single-machine
   run does. A job that stops, or loses a worker, leaves the batches written: Ray retries what was lost, and a
   rerun sends only the files still missing. Files that cannot be read are left out of the batches; the driver
   reads them once more, and skips them with their reason, as on one machine.
3. The driver assembles the collection from that journal with the single-machine code (`extract.embed`, which
   finds every vector there and embeds nothing more), and `save_on_ray` commits it: Ray tasks write the new
   shards (vectors and items), and the driver writes the manifest that names them, atomically, as
   `save_embeddings` does. No vector passes through the driver.

Index building (`build_index(..., add_vectors=add_on_ray)`): the driver trains the index on a sample, as on one
machine; Ray tasks add the collection's vectors, a part each, to copies of the trained empty index, reading them
from the shards; the driver merges the copies in order (`ann.merge_into`), which gives the index one add of all
the vectors gives.

The embeddings folder must be one every node reads and writes at the same path (shared storage).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from . import ann
from .collection import SHARD_ROWS, Embeddings, ShardWrite, save_embeddings
from .embedders import Embedder, EmbedderInfo
from .extract import _read_batches, embed
from .journal import JOURNAL_DIR, Journal, write_batch
from .plan import Plan, list_files, make_plan
from .storage import ArtifactError, exclusive
from .vectors import CHUNK_ROWS, VectorStore

#: Ray's environment variable for the cluster to join (`ray.init` reads it too); unset: a local Ray.
ADDRESS_ENV = "RAY_ADDRESS"


def extract_on_ray(
    image_root: str | os.PathLike,
    embedder: Embedder,
    embeddings_dir: str | os.PathLike,
    previous: Embeddings | None = None,
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = True,
) -> Embeddings:
    """Embed the images under `image_root` as `extract_embeddings` does, with the reading and the model on Ray.

    `embedder` is the driver's: it names the model (the workers build the same, on its runtime) and embeds
    nothing unless a file the workers could not read can be read by the driver. The result is what
    `extract_embeddings(image_root, embedder, previous=previous, checkpoint_dir=embeddings_dir)` returns, to be
    committed with `save_on_ray(result, embeddings_dir)` (or `save_embeddings`, which writes the shards here).
    Ray is started here (on the cluster $RAY_ADDRESS names, else locally) unless it already runs; started
    elsewhere, it needs `runtime_env=runtime_env()`.
    """
    plan = make_plan(list_files(image_root), previous)
    folder = Path(embeddings_dir)
    with exclusive(folder):
        todo = missing(plan, Journal(folder / JOURNAL_DIR, embedder.info))
        if len(todo):
            written = run_job(plan.listing.root, todo, embedder.info, folder / JOURNAL_DIR, batch_size, workers,
                              progress)
            check_shared(written, "journaled")
    result = embed(plan, embedder, batch_size, progress=False, checkpoint_dir=folder)
    if embedded_here := result.changes.embedded:  # files no worker could read, and this process could
        warnings.warn(SharedStorageWarning(
            f"{embedded_here} images the Ray workers could not read were read and embedded here, on the driver: "
            f"{plan.listing.root} must be on storage every node shares at the same path, or the cluster's work "
            "is done on one machine"), stacklevel=2)
    # The assembly found what the job embedded journaled: only what was journaled before the job counts as resumed.
    result.changes = replace(result.changes, resumed=min(result.changes.resumed, len(plan.read) - len(todo)))
    return result


class SharedStorageWarning(UserWarning):
    """Ray workers could not read files that the driver could: the images are not on storage every node shares."""


def missing(plan: Plan, journal: Journal) -> pa.Table:
    """The planned files (path, size, mtime_ns) the journal holds no vector for: what the job has to embed."""
    read = plan.read
    paths = read.column("path").to_pylist()
    sizes, times = read.column("size").to_numpy(), read.column("mtime_ns").to_numpy()
    todo = np.array([journal.lookup(path, int(size), int(mtime)) is None
                     for path, size, mtime in zip(paths, sizes, times)], bool)
    return read.select(["path", "size", "mtime_ns"]).filter(pa.array(todo))


def save_on_ray(embeddings: Embeddings, embeddings_dir: str | os.PathLike) -> Embeddings:
    """Commit `embeddings` as `save_embeddings` does, with each new shard written by a Ray task (`ShardWrite`):
    the vectors go from the journal to the shards on the cluster's nodes, and the driver writes the manifest that
    names them once every one is written and seen here. A task that fails is retried by Ray; one that cannot
    succeed stops the save before its commit, which leaves the previous save whole."""
    return save_embeddings(embeddings, embeddings_dir, write_shards=_write_on_ray)


def _write_on_ray(writes: Sequence[ShardWrite]) -> None:
    if not writes:  # nothing new: no Ray needed
        return
    import ray

    start_ray()
    task = ray.remote(num_cpus=READ_CPUS)(_write_shard)
    ray.get([task.remote(write) for write in writes])
    check_shared([write.directory / name for write in writes for name in (write.vectors, write.items)], "wrote")


def _write_shard(write: ShardWrite) -> None:
    write()


def check_shared(paths: Sequence[Path], what: str) -> None:
    """Raise `ArtifactError` unless this process sees every file that Ray workers say they wrote: a folder on
    storage the nodes do not share gives each node its own copy, and the driver none."""
    unseen = [path for path in paths if not path.exists()]
    if unseen:
        raise ArtifactError(
            f"{len(unseen)} of the {len(paths)} files Ray workers {what} are not seen here, e.g. {unseen[0]}: "
            f"{unseen[0].parent} must be on storage every node shares at the same path (NFS, a mounted bucket); "
            "pass --artifacts on such storage"
        )


def add_on_ray(index: faiss.Index, store: VectorStore, ids: np.ndarray, metric: ann.Metric, progress: bool = False,
               rows_per_part: int = SHARD_ROWS) -> None:
    """Add the vectors of `store` under `ids` to the trained `index`, as `ann.add` does, on Ray.

    The rows are cut into parts of `rows_per_part` (whole chunks of `ann.add`, so that each part is encoded as
    one add of them all would encode it); a Ray task adds each part, read from the shards where it is, to a copy
    of the trained empty index, and returns it; the driver merges the copies in order (`ann.merge_into`). An
    index that cannot be merged (HNSW) or a single part is added here.
    """
    if rows_per_part % CHUNK_ROWS:
        raise ValueError(f"rows_per_part must be a multiple of {CHUNK_ROWS}, got {rows_per_part}")
    if len(store) <= rows_per_part or not ann.mergeable(index):
        ann.add(index, store, ids, metric, progress)
        return
    import ray

    start_ray()
    empty = faiss.clone_index(index)
    empty.reset()
    template = ray.put(faiss.serialize_index(empty))
    task = ray.remote(_add_part)
    parts = [np.arange(start, min(start + rows_per_part, len(store))) for start in range(0, len(store), rows_per_part)]
    pending = [task.remote(template, store.subset(rows), ids[rows], metric) for rows in parts]
    for part in tqdm(pending, desc="merging the parts", unit="part", disable=not progress):
        ann.merge_into(index, faiss.deserialize_index(ray.get(part)))


def _add_part(template: np.ndarray, store: VectorStore, ids: np.ndarray, metric: ann.Metric) -> np.ndarray:
    """A Ray task: the trained empty index `template` (serialized), with the vectors of `store` added."""
    index = faiss.deserialize_index(template)
    ann.add(index, store, ids, metric)
    return faiss.serialize_index(index)


def start_ray() -> None:
    """Join the cluster $RAY_ADDRESS names, else start a Ray of this process's own, unless connected already.

    Not Ray's own default, which joins whatever Ray was last started on this machine (by `ray start`, or a test
    cluster), even one of another user's: set RAY_ADDRESS=auto for that.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get(ADDRESS_ENV) or "local", runtime_env=runtime_env(), include_dashboard=False,
                 log_to_driver=False, logging_level="warning")


def run_job(root: Path, files: pa.Table, info: EmbedderInfo, journal_dir: Path, batch_size: int, workers: int,
            progress: bool) -> list[Path]:
    """Read and embed `files` (under `root`) on Ray, every batch journaled into `journal_dir`; return the journal
    files written."""
    import ray

    start_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    # Blocks of whole batches, at least four per model actor, so that every actor has work (Ray Data runs a block
    # per task) and a lost one costs little; few enough that a block's bookkeeping stays small against its images.
    per_block = batch_size * max(1, math.ceil(len(files) / (4 * workers * batch_size)))
    blocks = [files.slice(start, per_block) for start in range(0, len(files), per_block)]
    dataset = ray.data.from_arrow(blocks).map_batches(
        read_files, fn_kwargs={"root": str(root), "input_size": tuple(info.input_size)}, batch_size=batch_size,
        # One reading task at a time per model actor, as one machine has one reading thread beside its model: more
        # readers only take the model's cores (on 2 cores, unbounded readers cost 17% more per image, and one 3%
        # less than one machine: benchmarks/ray_extraction.py).
        batch_format="numpy", num_cpus=READ_CPUS, compute=ray.data.TaskPoolStrategy(size=workers),
    ).map_batches(
        _Embed, fn_constructor_kwargs={"info": info.to_dict(), "journal_dir": str(journal_dir)},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
        # Ray Data's defaults: actors spread over the nodes (a model uses every core of its node), and an actor that
        # dies restarted, its batch retried.
        num_cpus=1 - READ_CPUS,
    )
    return [journal_dir / name for batch in dataset.iter_batches(batch_format="numpy") for name in batch["journal"]
            if name]


def runtime_env(install: bool | None = None) -> dict:
    """Ray's runtime environment for a job that runs this package: the package itself, shipped to every worker.

    Pass it to `ray.init(runtime_env=...)` when you start Ray yourself: workers do not see the driver's
    `sys.path`, so a driver that found the package by path (a notebook's `sys.path.insert`) would leave them
    without it. Ray copies code only: TensorFlow and the other requirements must be installed on every node,
    unless `install` (default: $IMAGESEARCH_RAY_PIP is 1) has Ray install those the workers need, at the bounds
    of requirements.txt, into a virtual environment on each node the first time a job runs there (minutes: it
    downloads TensorFlow), kept for the jobs after.
    """
    env: dict = {"py_modules": [str(Path(__file__).resolve().parent)]}
    if install is None:
        install = os.environ.get(PIP_ENV, "") == "1"
    if install:
        env["pip"] = {"packages": worker_requirements(), "pip_check": False}
    return env


#: Set to 1, and the command line's Ray jobs install the workers' requirements on each node (`runtime_env`).
PIP_ENV = "IMAGESEARCH_RAY_PIP"
#: What a Ray worker imports, of requirements.txt: the models, FAISS, the columns, the images, and Ray.
WORKER_PACKAGES = ("tensorflow", "keras", "keras-hub", "ai-edge-litert", "faiss-cpu", "numpy", "pyarrow", "pillow",
                   "tqdm", "ray")


def worker_requirements(requirements: Path | None = None) -> list[str]:
    """The lines of requirements.txt (beside the package) that name a package a worker imports."""
    path = requirements or Path(__file__).resolve().parents[1] / "requirements.txt"
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ArtifactError(f"cannot read {path} ({error.strerror}): it lists what Ray installs on the nodes; "
                            f"install the requirements on every node instead, and unset {PIP_ENV}") from error
    return [line.strip() for line in lines
            if re.split(r"[\[<>=!~ ]", line.strip(), maxsplit=1)[0].lower() in WORKER_PACKAGES]


#: The share of a CPU Ray reserves for a reading task, and leaves a model actor the rest of: on a node of one CPU,
#: one actor and one reading task fit side by side (Ray counts CPUs logically; TensorFlow uses every core anyway).
READ_CPUS = 0.25


def read_files(batch: dict[str, np.ndarray], root: str, input_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A Ray task: read, hash and decode a batch of files (paths under `root`), as a single-machine run does;
    the files that cannot be read are left out (the driver reads them again, and skips them with the reason)."""
    numbered = list(enumerate(batch["path"].tolist()))
    files = [file for read in _read_batches(Path(root), numbered, _decode_all, tuple(input_size), len(numbered) or 1)
             for file in read.files]
    width, height = input_size
    return {
        "path": np.array([numbered[number][1] for number, *_ in files], dtype=object),
        "size": np.array([stat.st_size for _, _, stat, _, _ in files], np.int64),
        "mtime_ns": np.array([stat.st_mtime_ns for _, _, stat, _, _ in files], np.int64),
        "sha256": np.array([digest.hex() for _, digest, _, _, _ in files], dtype=object),
        "pixels": np.stack([pixels for *_, pixels, _ in files]) if files else np.zeros((0, height, width, 3), np.uint8),
    }


def _decode_all(number: int) -> Callable[[bytes], bool]:
    """Every file is decoded on a worker, whatever its content: which vectors to keep, the driver decides."""
    return lambda digest: True


class _Embed:
    """A Ray Data actor: one model, loaded once; embeds each batch and journals it, returning the file's name."""

    def __init__(self, info: dict, journal_dir: str):
        from .runtimes import embedder_for

        self.info = EmbedderInfo.from_dict(info)
        self.embedder = embedder_for(self.info, runtime=self.info.runtime, purpose="batch")
        self.journal_dir = Path(journal_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not len(batch["path"]):
            return {"journal": np.array([""], dtype=object)}
        vectors = self.embedder.embed(batch["pixels"])
        files = list(zip(batch["path"].tolist(), batch["size"].tolist(), batch["mtime_ns"].tolist(),
                         batch["sha256"].tolist()))
        return {"journal": np.array([write_batch(self.journal_dir, self.embedder.info, files, vectors).name],
                                    dtype=object)}
