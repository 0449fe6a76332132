"""Does the peak memory of the main job grow with the collection?

Runs the main job's two steps as fresh processes on generated collections of each `--counts` size
(small distinct JPEGs, into an empty artifacts folder), one after the other: `python -m imagesearch
extract --weights random --runtime tensorflow` (embed the images and save the embeddings; `--runtime`
to change it), then `python -m imagesearch index` (build the Flat index from them and save it). Each
child's own peak resident memory comes from `os.wait4`, which returns the resource usage of exactly the
child it waited for.
Target: extraction's peak(largest) / peak(smallest) <= 1.2, i.e. its memory does not follow the
number of images. The index step is reported beside it: an exact (Flat) index holds every vector in
memory by design, so its growth is compared with the raw vectors it holds.
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
class Step:
    """One `python -m imagesearch <step>` process: its wall-clock time, own peak RSS, exit code and output."""

    seconds: float
    peak_mib: float
    returncode: int
    output: str


@dataclass
class Build:
    """Both steps on one collection, and what they left on disk."""

    images: int
    extract: Step
    index: Step
    indexed: int  # vectors in the saved index, -1 where there is none
    embeddings_mib: float  # files on disk under the artifacts' embeddings folder
    index_mib: float  # and under its index folder

    @property
    def returncodes(self) -> list[int]:
        return [self.extract.returncode, self.index.returncode]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000], help="collection sizes, in images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runtime", default="tensorflow",
                        help="--runtime of the extract step (default: %(default)s, the runtime of the README's "
                        "figures; auto would measure every runtime in the first child, once per machine, and count it)")
    smoke = " ".join(map(str, SMOKE_COUNTS))
    parser.add_argument("--smoke", action="store_true", help=f"only check that the script works: --counts {smoke}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.counts = SMOKE_COUNTS
    args.counts = sorted(set(args.counts))
    if len(args.counts) < 2 or args.counts[0] < 1 or args.batch_size < 1:
        parser.error("--counts needs at least two different sizes of at least 1, and --batch-size at least 1")
    return args


#: Runs argv[1:] and prints its peak RSS in KiB, as reported by os.wait4, to stderr. A child's ru_maxrss
#: starts from the peak of the process that launched it (Linux records the old memory's high-water mark at
#: exec), so the command is started from this lean process (a few MiB), not from the benchmark itself.
LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(f'peak-rss-kib {usage.ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(command: list[str]) -> Step:
    """Run `command` from the repo root; return its seconds, its own peak RSS in MiB, exit code and output."""
    start = time.perf_counter()
    launched = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *command], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    *output, peak = launched.stderr.rstrip("\n").split("\n")
    if not peak.startswith("peak-rss-kib "):
        raise RuntimeError(f"the launcher did not report a peak RSS: {launched.stderr[-2000:]}")
    output_text = launched.stdout + "\n".join(output)
    return Step(seconds, int(peak.split()[1]) / 2**10, launched.returncode, output_text)  # KiB on Linux


def folder_mib(folder: Path) -> float:
    """Total size of the files under `folder`, in MiB."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def build(images: Path, artifacts: Path, count: int, batch_size: int, runtime: str) -> Build:
    """Run the main job's two steps on `images` into the empty folder `artifacts`, and measure each."""
    common = [sys.executable, "-m", "imagesearch"]
    extract = run_measured([
        *common, "extract", "--weights", "random", "--images", str(images), "--artifacts", str(artifacts),
        "--batch-size", str(batch_size), "--runtime", runtime,
    ])
    index = run_measured([*common, "index", "--artifacts", str(artifacts), "--retrieval", "plain"])
    indexed = len(load_index(index_dir(artifacts))) if extract.returncode == index.returncode == 0 else -1
    sizes = (folder_mib(embeddings_dir(artifacts)), folder_mib(index_dir(artifacts)))
    return Build(count, extract, index, indexed, *sizes)


def report(builds: list[Build], sources: str, args: argparse.Namespace) -> int:
    """Print the table, the checks and the summary line; return 1 if a check failed."""
    rows = [
        [f"{b.images:,}", f"{b.extract.seconds:.1f}", f"{b.images / b.extract.seconds:.1f}",
         f"{b.extract.peak_mib:.0f}", f"{b.index.seconds:.1f}", f"{b.index.peak_mib:.0f}",
         f"{b.embeddings_mib:.1f}", f"{b.index_mib:.1f}"]
        for b in builds
    ]
    print()
    print_table(
        ["images", "extract s", "images/s", "extract peak RSS MiB", "index s", "index peak RSS MiB",
         "embeddings on disk MiB", "index on disk MiB"],
        rows,
    )
    print()
    print(
        "seconds and images/s: each whole process, start-up included (imports, building the model); "
        "peak RSS: each child's own ru_maxrss from os.wait4"
    )
    small, large = builds[0], builds[-1]
    raw_mib = (large.images - small.images) * DIM * FLOAT_BYTES / 2**20
    for name, first, last in [("extract", small.extract, large.extract), ("index", small.index, large.index)]:
        growth = last.peak_mib - first.peak_mib
        print(
            f"{name}: peak RSS grew {growth:.0f} MiB from {small.images:,} to {large.images:,} images, "
            f"{growth / raw_mib if raw_mib else float('nan'):.2f}x the {raw_mib:.0f} MiB of raw vectors added "
            f"({DIM} x {FLOAT_BYTES} B = {DIM * FLOAT_BYTES / 1024:.0f} KiB per image)"
        )
    print("(a Flat index holds every vector in memory by design: its growth should be about 1x the raw vectors)")
    facts = {
        f"every step exited 0 (exit codes {[b.returncodes for b in builds]})": all(
            code == 0 for b in builds for code in b.returncodes
        ),
        "every saved index holds every image": all(b.indexed == b.images for b in builds),
        "no self-search check of the index step said NO": not any(": NO" in b.index.output for b in builds),
        f"imagesearch/ did not change during the run (sources {sources} at the start)": sources_hash() == sources,
    }
    for fact, holds in facts.items():
        print(f"check: {fact}: {'yes' if holds else 'NO'}")
    for b in builds:
        for name, step in [("extract", b.extract), ("index", b.index)]:
            if step.returncode:
                print(f"output of the failed {name} step on {b.images:,} images:\n{step.output[-3000:]}")
    print(f"at the end: {load_average()}")
    ratio = large.extract.peak_mib / small.extract.peak_mib
    verdict = "met" if ratio <= TARGET else "NOT met"
    context = summary_context(f"resnet50, batch {args.batch_size}", args.smoke, all(facts.values()))
    print(
        f"summary: peak RSS of extraction {small.extract.peak_mib:.0f} MiB at {small.images:,} images, "
        f"{large.extract.peak_mib:.0f} MiB at {large.images:,}: ratio {ratio:.2f}, target <= {TARGET}: {verdict}; "
        f"index step {small.index.peak_mib:.0f} and {large.index.peak_mib:.0f} MiB {context}"
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
            write_seconds, _ = timed(lambda images=images, count=count: write_collection(images, count))
            print(
                f"{count:,} JPEGs ({FILE_SIZE[0]}x{FILE_SIZE[1]}, quality {QUALITY}, random crops of the demo images) "
                f"written in {write_seconds:.1f} s under {images}; building..."
            )
            if args.smoke and count == args.counts[0]:
                print(f"SMOKE RUN (counts {args.counts}): checks that the script works; figures not meaningful")
            builds.append(build(images, artifacts, count, args.batch_size, args.runtime))
    return report(builds, sources, args)


if __name__ == "__main__":
    sys.exit(main())
