"""What does extraction on Ray cost against the single-machine pipeline, per job and per image?

Times, side by side in one run, on the same image files (`--count`, the demo set cycled as needed, or `--images
FOLDER`), with the same ResNet50 (`--weights`, random by default: speed does not depend on the weight values;
`--runtime`, tensorflow by default, so that the driver and every Ray worker run the same model), in batches of
`--batch-size`:

  single machine     `extract_embeddings(folder, embedder, batch_size, progress=False, checkpoint_dir=out)` (each
                     batch journaled as it is embedded), then `save_embeddings(result, out)`;
  Ray, N worker(s)   `extract_on_ray(folder, embedder, out, batch_size=..., workers=N, progress=False)` (reading and
                     decoding as Ray tasks, the model in a pool of N actors, each journaling its batches), then
                     `save_on_ray(result, out)` (the shards written by Ray tasks); N is 1 and 2;
  ..., small         single machine and Ray with 1 worker on the first `--small-count` (count / 4) of the files:
                     the second size of the fit below.

Every run writes into a fresh temporary folder. The script starts one local Ray for the whole run before any timing
(`ray.init(address="local", runtime_env=runtime_env(), num_cpus=2, ...)`: a Ray of its own even where another is
running, so that nobody else's work lands in it; `ray.shutdown()` at the end stops what it started) and warms up,
untimed: the driver's embedder at every batch shape, one small single-machine run and one small Ray run (the
runtime environment, Ray Data, the worker pool). What is not warmed up is each job's own start: `extract_on_ray`
starts its model actors for the job and they end with it, so every Ray job pays for a worker process importing
TensorFlow, building the model and tracing it. That is part of what Ray costs per job, and it is in the figures.
Then in each of `--repeats` rounds every mode runs once, in turn, so that other work on the machine slows them
alike, and each mode's fastest round counts.

Ray's overhead, fitted from the two sizes (n = `--small-count`, N = `--count`), each pipeline's time being taken as
T(k) = fixed + k * per_image:

  per_image = (T(N) - T(n)) / (N - n)        fixed = T(N) - N * per_image
  Ray's overhead per image = per_image(Ray, 1 worker) - per_image(single machine)
  Ray's overhead per job   = fixed(Ray, 1 worker) - fixed(single machine)

Memory, sampled every 0.5 s while each run lasts (Linux /proc, read by a thread of the driver): the driver's
resident memory (VmRSS); the Ray processes' (every process descended from the driver: the raylet, GCS, agents,
reading workers and model actors), as the sum of their private resident memory (RssAnon: heaps, TensorFlow's
buffers; shared libraries and the object store's shared pages, which each process maps, are left out rather than
counted many times); and the largest model actor's own peak (VmHWM, everything it had resident). The driver's peak
over the whole run (`ru_maxrss`) is printed after the table. "first batch s" is when the first journal file
appeared in the run's folder (looked for every 0.1 s): for Ray, mostly the job's actor start.

Checks: every Ray run returned the single-machine result of the same files (the same paths and ids, vectors within
1e-5); otherwise a `check:` line says FAILED and the script exits 1. Target: Ray with 1 worker >= 0.8x the
single-machine pipeline's images/s at `--count` (met or not met; not a failure). A projection on paper turns the
measured 1-worker rate into hours for 10 million images on 10 and 100 nodes like this one (one worker per 2-core
node; storage every node shares assumed to keep up, which this machine cannot test), and again from the fit's
per-image cost with the per-job cost paid once.
`--smoke` runs 24 images, batch 8, one round, without the Ray warm-up and the small runs (so without the fit: every
Ray job costs some 15 s of start here): it checks that the script works; its figures mean nothing.
Run from the repository root: `.venv/bin/python benchmarks/ray_extraction.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported: fewer start-up logs
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a benchmark
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import numpy as np

from benchmarks.common import (
    images_benchmark_parser,
    load_average,
    machine_description,
    parse_images_benchmark_args,
    peak_rss_mib,
    print_table,
    summary_context,
    timed,
)
from benchmarks.extraction import link_images
from imagesearch.collection import save_embeddings
from imagesearch.embedders import Embedder, RandomWeightsWarning
from imagesearch.extract import extract_embeddings
from imagesearch.images import list_images, load_image
from imagesearch.journal import JOURNAL_DIR, JOURNAL_SUFFIX
from imagesearch.runtimes import CHOICES, make_embedder

SMOKE_COUNT, SMOKE_BATCH = 24, 8
#: Ray with one worker against the single-machine pipeline, images/s at --count.
TARGET = 0.8
#: Vectors of a Ray run and of the single-machine run of the same files may differ by this much (rtol and atol).
SAME = 1e-5
#: Logical CPUs of the local Ray: this machine's two cores, as the task says; a node "of this kind".
RAY_CPUS = 2
#: The projection: images, and node counts.
PROJECTED_IMAGES, PROJECTED_NODES = 10_000_000, (10, 100)
#: How often the sampler looks for a run's first journal file, and at every how many looks it reads the memory.
LOOK_EVERY, MEMORY_EVERY = 0.1, 5
SAMPLE_EVERY = LOOK_EVERY * MEMORY_EVERY  # seconds between two memory samples
#: The process title Ray gives a model actor of `extract_on_ray` ("... .submit" while it runs a batch).
ACTOR_TITLE = b"ray::MapWorker(MapBatches(_Embed))"
SINGLE, RAY = "single machine", "Ray"
MIB = 2**20


@dataclass
class Mode:
    """One way of extracting: `workers` None is the single-machine pipeline; `small` runs on the small folder."""

    name: str
    workers: int | None
    small: bool = False


@dataclass
class Outcome:
    """What one mode's runs gave: the fastest seconds, and the peaks and differences over every round."""

    seconds: float = float("inf")
    first_batch: float | None = None  # of the fastest round
    driver_mib: float = 0.0
    ray_mib: float = 0.0
    actor_mib: float = 0.0
    difference: float = 0.0  # largest |vector difference| from the single-machine result of the same files
    same_records: bool = True  # the same paths and ids as the single-machine result, every round
    same_vectors: bool = True  # and vectors within SAME of its, every round


@dataclass
class Collected:
    """One run's saved result, in memory: (paths, ids, vectors)."""

    paths: list[str]
    ids: np.ndarray
    vectors: np.ndarray


@dataclass
class Sample:
    """The peaks the sampler saw during one run."""

    driver_mib: float = 0.0
    ray_mib: float = 0.0
    actor_mib: float = 0.0
    first_batch: float | None = None
    pids: set[int] = field(default_factory=set)


class Sampler:
    """A thread that samples, every SAMPLE_EVERY seconds while a run lasts, the memory of the driver and of every
    process descended from it (the local Ray), and notes when the run's first journal file appears (looking every
    LOOK_EVERY seconds)."""

    def __init__(self) -> None:
        self.available = Path("/proc/self/status").exists()
        self.cpu_seconds = 0.0  # the sampler's own CPU time: what it took from the runs
        self._lock = threading.Lock()
        self._current: tuple[Sample, Path, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if self.available:
            self._thread.start()

    def run(self, out: Path, fn: Callable[[], object]) -> tuple[Sample, float, object]:
        """Time `fn` (writing into `out`) while sampling; return the sample, the seconds and `fn`'s result."""
        sample = Sample()
        with self._lock:
            self._current = (sample, out, time.perf_counter())
        try:
            seconds, result = timed(fn)
        finally:
            with self._lock:
                self._current = None
        return sample, seconds, result

    def close(self) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def _loop(self) -> None:
        looks = 0
        while not self._stop.wait(LOOK_EVERY):
            started = time.thread_time()
            looks += 1
            with self._lock:
                if self._current is not None:
                    sample, out, start = self._current
                    if sample.first_batch is None and any((out / JOURNAL_DIR).glob(f"batch.*{JOURNAL_SUFFIX}")):
                        sample.first_batch = time.perf_counter() - start
                    if looks % MEMORY_EVERY == 0:
                        self._measure(sample)
            self.cpu_seconds += time.thread_time() - started

    def _measure(self, sample: Sample) -> None:
        sample.driver_mib = max(sample.driver_mib, _status_kib(os.getpid(), "VmRSS") / 1024)
        ray_kib = 0
        for pid in _descendants(os.getpid()):
            ray_kib += _status_kib(pid, "RssAnon")
            if _title(pid).startswith(ACTOR_TITLE):
                sample.pids.add(pid)
                sample.actor_mib = max(sample.actor_mib, _status_kib(pid, "VmHWM") / 1024)
        sample.ray_mib = max(sample.ray_mib, ray_kib / 1024)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:  # the process ended meanwhile
        return b""


def _title(pid: int) -> bytes:
    return _read(f"/proc/{pid}/cmdline")


def _status_kib(pid: int, key: str) -> int:
    for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _descendants(root: int) -> list[int]:
    """Every process below `root` in the process tree (from /proc/PID/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                parent = int(stat.rsplit(b")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = images_benchmark_parser(__doc__.split("\n")[0], "mode", repeats=3, smoke=(SMOKE_COUNT, SMOKE_BATCH))
    parser.set_defaults(count=2048)  # a Ray job is for large collections: its per-job start is amortised
    parser.add_argument("--small-count", type=int, help="the fit's second size (default: count / 4)")
    parser.add_argument("--weights", default="random", help="ResNet50 weights: random, imagenet or a weights file")
    parser.add_argument("--runtime", default="tensorflow", choices=CHOICES,
                        help="what runs the model, on the driver and every Ray worker alike (default: tensorflow)")
    args = parse_images_benchmark_args(parser, argv)
    if args.smoke:
        args.small_count = None  # each Ray job costs its actor start, some 15 s here: a smoke run does without the fit
    elif args.small_count is None:
        args.small_count = max(1, args.count // 4)
    if args.small_count is not None and not 1 <= args.small_count < args.count:
        parser.error("--small-count must be at least 1 and below --count")
    return args


def extract(mode: Mode, folder: Path, embedder: Embedder, batch_size: int, out: Path) -> Collected:
    """One run of `mode` into the empty folder `out`: extract and save; return the saved result, read back."""
    if mode.workers is None:
        result = extract_embeddings(folder, embedder, batch_size, progress=False, checkpoint_dir=out)
    else:
        from imagesearch.distributed import extract_on_ray, save_on_ray

        result = extract_on_ray(folder, embedder, out, batch_size=batch_size, workers=mode.workers, progress=False)
        return save_on_ray(result, out)
    return save_embeddings(result, out)


def collect(saved) -> Collected:
    return Collected(list(saved.paths), np.array(saved.ids), np.array(saved.vectors))


def run_modes(modes: list[Mode], folders: dict[bool, Path], embedder: Embedder, batch_size: int, repeats: int,
              sampler: Sampler) -> dict[str, Outcome]:
    """Run the modes in turn, `repeats` rounds, each run into a fresh folder; compare every result with the first
    single-machine result of the same folder."""
    outcomes = {mode.name: Outcome() for mode in modes}
    expected: dict[bool, Collected] = {}
    for _ in range(repeats):
        for mode in modes:
            with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-embeddings-") as out:
                sample, seconds, saved = sampler.run(
                    Path(out), lambda m=mode, o=Path(out): extract(m, folders[m.small], embedder, batch_size, o))
                got = collect(saved)  # read back untimed, before the folder goes
            outcome = outcomes[mode.name]
            if seconds < outcome.seconds:
                outcome.seconds, outcome.first_batch = seconds, sample.first_batch
            outcome.driver_mib = max(outcome.driver_mib, sample.driver_mib)
            outcome.ray_mib = max(outcome.ray_mib, sample.ray_mib)
            outcome.actor_mib = max(outcome.actor_mib, sample.actor_mib)
            reference = expected.setdefault(mode.small, got) if mode.workers is None else expected[mode.small]
            if got.paths != reference.paths or not np.array_equal(got.ids, reference.ids):
                outcome.same_records = False
            elif len(got.vectors):
                outcome.same_vectors &= bool(np.allclose(got.vectors, reference.vectors, rtol=SAME, atol=SAME))
                outcome.difference = max(outcome.difference, float(np.abs(got.vectors - reference.vectors).max()))
    return outcomes


def warm_up(embedder: Embedder, folder: Path, paths: list[Path], counts: list[int], batch_size: int,
            ray_too: bool) -> None:
    """Untimed: the driver's embedder at every batch shape, one single-machine run, and (`ray_too`) one Ray run,
    on the first batch of files."""
    shapes = {min(batch_size, count - start) for count in counts for start in range(0, count, batch_size)}
    pixels = np.stack([load_image(path, embedder.info.input_size) for path in paths[:max(shapes)]])
    for shape in sorted(shapes, reverse=True):
        embedder.embed(pixels[:shape])  # tracing and graph optimisation, once per shape
    small = folder.parent / "warm-up"
    link_images(folder, min(len(paths), batch_size), small)
    for workers in [None, *([1] if ray_too else [])]:
        with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-embeddings-") as out:
            extract(Mode("warm-up", workers), small, embedder, batch_size, Path(out))


def fit(small: float, large: float, n: int, count: int) -> tuple[float, float]:
    """(fixed seconds, seconds per image) of a line through (n, small) and (count, large)."""
    per_image = (large - small) / (count - n)
    return large - count * per_image, per_image


def mib(value: float) -> str:
    return f"{value:.0f}" if value else "-"


def report(modes: list[Mode], outcomes: dict[str, Outcome], args: argparse.Namespace, sampler: Sampler) -> bool:
    """Print the table, checks, overhead fit, target, projection and summary; return whether the checks held."""
    count, n = args.count, args.small_count
    sizes = {mode.name: n if mode.small else count for mode in modes}
    speed = {name: sizes[name] / outcome.seconds for name, outcome in outcomes.items()}
    base = {False: speed[SINGLE], True: speed.get(f"{SINGLE}, small")}
    rows = []
    for mode in modes:
        outcome = outcomes[mode.name]
        first = "-" if outcome.first_batch is None else f"{outcome.first_batch:.1f}"
        rows.append([mode.name, sizes[mode.name], f"{outcome.seconds:.2f}", f"{speed[mode.name]:.1f}",
                     f"{speed[mode.name] / base[mode.small]:.2f}x", first, mib(outcome.driver_mib),
                     mib(outcome.ray_mib) if mode.workers else "-", mib(outcome.actor_mib) if mode.workers else "-"])
    print()
    print_table(["mode", "images", "seconds", "images/s", "vs single machine", "first batch s", "driver MiB",
                 "Ray processes MiB", "largest actor MiB"], rows)
    print()
    rounds = f"{args.repeats} rounds" if args.repeats > 1 else "1 round"
    warmed = "no Ray warm-up (smoke)" if args.smoke else "one small Ray run"
    print(f"timing: time.perf_counter around extract + save, the fastest of {rounds} in which the modes take turns; "
          f"warmed up first, untimed: the driver's embedder at every batch shape, one small single-machine run, "
          f"{warmed}; every Ray job starts its own model actors (a worker process importing TensorFlow, building and "
          "tracing the model): that start is in each Ray figure")
    if sampler.available:
        print(f"memory: sampled every {SAMPLE_EVERY} s during each run, the peak over every round: driver VmRSS; Ray "
              "processes = the sum of the RssAnon (private memory) of every process below the driver (raylet, GCS, "
              "agents, workers, actors); largest actor = a model actor's own VmHWM. The sampler used "
              f"{sampler.cpu_seconds:.1f} s of CPU in all; '-' where a run ended before the first sample. Driver's "
              f"peak RSS over the whole run (ru_maxrss): {peak_rss_mib():.0f} MiB")
    else:
        print(f"memory: no /proc here: only the driver's peak RSS over the whole run, {peak_rss_mib():.0f} MiB")

    holds = True
    for mode in modes:
        if mode.workers is None:
            continue
        outcome = outcomes[mode.name]
        equal = outcome.same_records and outcome.same_vectors
        holds &= equal
        against = f"the single-machine result of the same {sizes[mode.name]} files"
        if equal:
            print(f"check: {mode.name} equals {against} in every round (same paths and ids; vectors within "
                  f"{SAME:.0e}, largest difference {outcome.difference:.1e})")
        else:
            differs = f"vectors differ by {outcome.difference:.1e}" if outcome.same_records else "paths or ids differ"
            print(f"check: FAILED: {mode.name} does not equal {against}: {differs}")

    if n is None:
        overhead, steady = "not fitted (smoke run: one size)", {}
        print(f"fit: {overhead}")
    else:
        single_fixed, single_per = fit(outcomes[f"{SINGLE}, small"].seconds, outcomes[SINGLE].seconds, n, count)
        ray_fixed, ray_per = fit(outcomes[f"{RAY}, 1 worker, small"].seconds, outcomes[f"{RAY}, 1 worker"].seconds,
                                 n, count)
        print(f"fit (T(k) = fixed + k * per_image, through k = {n} and {count}): single machine {single_fixed:.1f} s "
              f"+ {single_per * 1000:.0f} ms/image; Ray, 1 worker {ray_fixed:.1f} s + {ray_per * 1000:.0f} ms/image")
        overhead = (f"{ray_fixed - single_fixed:.1f} s per job, {(ray_per - single_per) * 1000:+.0f} ms per image")
        print(f"Ray's overhead: {overhead} ({(ray_per / single_per - 1) * 100:+.0f}% of the single machine's "
              "per-image cost); per job: the actors' start, Ray Data's scheduling, the driver's assembly")
        steady = {nodes: (ray_fixed + PROJECTED_IMAGES / nodes * ray_per) / 3600 for nodes in PROJECTED_NODES}

    one, two = speed[f"{RAY}, 1 worker"], speed[f"{RAY}, 2 workers"]
    ratio = one / speed[SINGLE]
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"Ray, 2 workers / Ray, 1 worker: {two / one:.2f}x (two model actors sharing this machine's "
          f"{os.cpu_count()} cores, each started for the job)")
    print(f"target: Ray, 1 worker / single machine at {count} images: {ratio:.2f}x, target >= {TARGET}: {verdict}")
    hours = {nodes: PROJECTED_IMAGES / (one * nodes) / 3600 for nodes in PROJECTED_NODES}
    projection = ", ".join(f"{hours[k]:.1f} h on {k} nodes" for k in hours)
    if steady:
        projection += "; at the fit's per-image cost, paying the per-job cost once: " + ", ".join(
            f"{steady[k]:.1f} h on {k} nodes" for k in steady)
    print(f"projection (on paper): {one:.1f} images/s per node at the measured 1-worker rate; {PROJECTED_IMAGES:,} "
          f"images take {projection}. Assumes one worker per {RAY_CPUS}-core node like this one, nodes that scale "
          "linearly, and shared storage that keeps up (reading the files and the journal); none of that is measured "
          "here")
    print(f"{load_average()}, at the end")
    context = summary_context(f"{args.weights} weights, {args.runtime}, batch {args.batch_size}, {count} images",
                              args.smoke, holds)
    print(f"summary: Ray 1 worker {one:.1f} img/s = {ratio:.2f}x single machine {speed[SINGLE]:.1f} img/s "
          f"(target >= {TARGET}: {verdict}), 2 workers {two:.1f} img/s; Ray's overhead {overhead}; results "
          f"{'equal' if holds else 'DIFFER'} {context}")
    return holds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report, ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # speed does not depend on the weight values
    import ray

    from imagesearch.distributed import runtime_env

    print(machine_description())
    embedder = make_embedder("resnet50", args.weights, seed=0, runtime=args.runtime, purpose="batch",
                             images=args.images)
    available = len(list_images(args.images))
    sizes = f"{args.count}{f' and {args.small_count}' if args.small_count else ''} images"
    print(f"settings: {embedder.info}, {sizes} from the {available} under "
          f"{args.images}{' (cycled)' if args.count > available else ''}, batch {args.batch_size}, best of "
          f"{args.repeats}")
    print(f"ray: Ray {ray.__version__}, a local Ray of {RAY_CPUS} logical CPUs started by this script for the whole "
          "run; each actor reserves 0.75 CPU and each reading task 0.25 (imagesearch.distributed.READ_CPUS)")
    if args.smoke:
        print(f"SMOKE RUN ({args.count} images, batch {args.batch_size}): checks that the script works; "
              "figures not meaningful")
    modes = [Mode(SINGLE, None), Mode(f"{RAY}, 1 worker", 1), Mode(f"{RAY}, 2 workers", 2)]
    if args.small_count:
        modes += [Mode(f"{SINGLE}, small", None, small=True), Mode(f"{RAY}, 1 worker, small", 1, small=True)]
    sys.stdout.flush()  # before Ray's processes start, which share the terminal
    ray.init(address="local", runtime_env=runtime_env(), include_dashboard=False, log_to_driver=False,
             logging_level="warning", num_cpus=RAY_CPUS)
    sampler = Sampler()
    try:
        with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
            folders = {False: Path(temporary) / "images", True: Path(temporary) / "small"}
            paths = link_images(args.images, args.count, folders[False])
            if args.small_count:
                link_images(args.images, args.small_count, folders[True])
            for path in paths:
                path.read_bytes()  # into the OS cache, for every mode alike
            warm_up(embedder, folders[False], paths, [args.count, args.small_count or args.count], args.batch_size,
                    ray_too=not args.smoke)
            outcomes = run_modes(modes, folders, embedder, args.batch_size, args.repeats, sampler)
    finally:
        sampler.close()
        ray.shutdown()
    return 0 if report(modes, outcomes, args, sampler) else 1


if __name__ == "__main__":
    sys.exit(main())
