"""Does the peak memory of `python -m imagesearch build` grow with the collection?

Runs the main job, `python -m imagesearch build --weights random`, as a fresh process on generated
collections of each `--counts` size (small distinct JPEGs, into an empty artifacts folder), one after
the other, and reads each child's own peak resident memory from `os.wait4`, which returns the
resource usage of exactly the child it waited for. Target: peak(largest) / peak(smallest) <= 1.2,
i.e. memory does not follow the number of images.
Run from the repository root: `.venv/bin/python benchmarks/memory.py --counts 2000 20000`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by the children: fewer TensorFlow start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

from benchmarks.common import (
    FILE_SIZE,
    QUALITY,
    REPO_ROOT,
    code_version,
    load_average,
    machine_description,
    print_table,
    sources_hash,
    summary_context,
    timed,
    write_collection,
)
from imagesearch.index import load_index
from imagesearch.storage import embeddings_dir, index_dir

TARGET = 1.2
SMOKE_COUNTS = [40, 200]
DIM, FLOAT_BYTES = 2048, 4  # ResNet50's embeddings: float32 vectors of 2048


@dataclass
class Build:
    """One `imagesearch build` process: its wall-clock time, peak RSS, exit code and output."""

    images: int
    seconds: float
    peak_mib: float
    returncode: int
    output: str
    indexed: int  # vectors in the saved index, -1 where there is none
    embeddings_mib: float  # files on disk under the artifacts' embeddings folder
    index_mib: float  # and under its index folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000], help="collection sizes, in images")
    parser.add_argument("--batch-size", type=int, default=32)
    smoke = " ".join(map(str, SMOKE_COUNTS))
    parser.add_argument("--smoke", action="store_true", help=f"only check that the script works: --counts {smoke}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.counts = SMOKE_COUNTS
    args.counts = sorted(set(args.counts))
    if len(args.counts) < 2 or args.counts[0] < 1 or args.batch_size < 1:
        parser.error("--counts needs at least two different sizes of at least 1, and --batch-size at least 1")
    return args


def run_measured(command: list[str]) -> tuple[float, float, int, str]:
    """Run `command` from the repo root; return its seconds, its own peak RSS in MiB, exit code and output."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()  # until the child exits and closes it; then reap it ourselves, to get its rusage
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    child.stdout.close()
    return seconds, usage.ru_maxrss / 2**10, child.returncode, output  # ru_maxrss is in KiB on Linux


def folder_mib(folder: Path) -> float:
    """Total size of the files under `folder`, in MiB."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def build(images: Path, artifacts: Path, count: int, batch_size: int) -> Build:
    """Run the main job on `images` into the empty folder `artifacts`, and measure it."""
    command = [
        sys.executable, "-m", "imagesearch", "build", "--weights", "random", "--images", str(images),
        "--artifacts", str(artifacts), "--batch-size", str(batch_size),
    ]
    seconds, peak, returncode, output = run_measured(command)
    indexed = len(load_index(index_dir(artifacts))) if returncode == 0 else -1
    sizes = (folder_mib(embeddings_dir(artifacts)), folder_mib(index_dir(artifacts)))
    return Build(count, seconds, peak, returncode, output, indexed, *sizes)


def report(builds: list[Build], sources: str, args: argparse.Namespace) -> int:
    """Print the table, the checks and the summary line; return 1 if a check failed."""
    rows = [
        [f"{b.images:,}", f"{b.seconds:.1f}", f"{b.images / b.seconds:.1f}", f"{b.peak_mib:.0f}",
         f"{b.embeddings_mib:.1f}", f"{b.index_mib:.1f}"]
        for b in builds
    ]
    print()
    print_table(["images", "seconds", "images/s", "peak RSS MiB", "embeddings on disk MiB", "index on disk MiB"], rows)
    print()
    print(
        "seconds and images/s: the whole process, start-up included (imports, building the model, the example "
        "figure); peak RSS: the child's own ru_maxrss from os.wait4"
    )
    small, large = builds[0], builds[-1]
    raw_mib = (large.images - small.images) * DIM * FLOAT_BYTES / 2**20
    print(
        f"vectors: {DIM} x {FLOAT_BYTES} B = {DIM * FLOAT_BYTES / 1024:.0f} KiB per image; "
        f"{large.images:,} - {small.images:,} images = {raw_mib:.0f} MiB more of raw vectors; "
        f"peak RSS grew {large.peak_mib - small.peak_mib:.0f} MiB, "
        f"{(large.peak_mib - small.peak_mib) / raw_mib if raw_mib else float('nan'):.1f}x that"
    )
    facts = {
        f"every build exited 0 (exit codes {[b.returncode for b in builds]})": all(b.returncode == 0 for b in builds),
        "every saved index holds every image": all(b.indexed == b.images for b in builds),
        "no self-search check of the build said NO": not any(": NO" in b.output for b in builds),
        f"imagesearch/ did not change during the run (sources {sources} at the start)": sources_hash() == sources,
    }
    for fact, holds in facts.items():
        print(f"check: {fact}: {'yes' if holds else 'NO'}")
    for b in builds:
        if b.returncode:
            print(f"output of the failed build of {b.images:,} images:\n{b.output[-3000:]}")
    print(f"at the end: {load_average()}")
    ratio = large.peak_mib / small.peak_mib
    verdict = "met" if ratio <= TARGET else "NOT met"
    context = summary_context(f"resnet50, batch {args.batch_size}", args.smoke, all(facts.values()))
    print(
        f"summary: peak RSS of `imagesearch build` {small.peak_mib:.0f} MiB at {small.images:,} images, "
        f"{large.peak_mib:.0f} MiB at {large.images:,}: ratio {ratio:.2f}, target <= {TARGET}: {verdict} {context}"
    )
    return 0 if all(facts.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its report ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    print(machine_description())
    print(code_version())
    print(f"at the start: {load_average()}")
    sources, builds = sources_hash(), []
    with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
        for count in args.counts:
            images, artifacts = Path(temporary) / f"images-{count}", Path(temporary) / f"artifacts-{count}"
            images.mkdir()
            write_seconds, _ = timed(lambda: write_collection(images, count))
            print(
                f"{count:,} JPEGs ({FILE_SIZE[0]}x{FILE_SIZE[1]}, quality {QUALITY}, random crops of the demo images) "
                f"written in {write_seconds:.1f} s under {images}; building..."
            )
            if args.smoke and count == args.counts[0]:
                print(f"SMOKE RUN (counts {args.counts}): checks that the script works; figures not meaningful")
            builds.append(build(images, artifacts, count, args.batch_size))
    return report(builds, sources, args)


if __name__ == "__main__":
    sys.exit(main())
