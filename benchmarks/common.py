"""What every benchmark script needs: the machine it ran on, peak memory, a timer, a markdown table, test images,
and ResNet50's embedders on every runtime."""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

from imagesearch.images import list_images, open_rgb

if TYPE_CHECKING:
    from imagesearch.embedders import Embedder, Fidelity

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The demo images, which generated collections are cut from and queries cycle through.
DEMO_IMAGES = REPO_ROOT / "images"

#: Size (width, height) and JPEG quality of the files `write_collection` generates.
FILE_SIZE, QUALITY = (160, 120), 85

#: CPU features that decide which kernels oneDNN can use (bf16 and AMX change TensorFlow's speed a lot).
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")

#: (label, module) of the libraries whose versions a result depends on.
LIBRARIES = (
    ("TensorFlow", "tensorflow"), ("Keras", "keras"), ("FAISS", "faiss"), ("NumPy", "numpy"), ("Pillow", "PIL"),
)


def cpu_info() -> dict[str, str]:
    """Return the first processor's fields from /proc/cpuinfo, or nothing where there is no such file."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}


def cpu_name() -> str:
    """Return the CPU's model name, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"."""
    return cpu_info().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def summary_context(settings: str, smoke: bool, checks_passed: bool = True) -> str:
    """The parenthesis that ends every summary line: the settings, the machine, and why figures may not count."""
    caveat = "; SMOKE RUN, figures not meaningful" if smoke else ""
    failed = "" if checks_passed else "; CHECKS FAILED"
    return f"({settings}, {cpu_name()}, {os.cpu_count()} cores{caveat}{failed})"


def machine_description() -> str:
    """Describe the machine and the library versions in two lines, to print before any figure."""
    flags = set(cpu_info().get("flags", "").split())
    features = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS)
    features = features if flags else "CPU flags unknown"  # no /proc/cpuinfo: not Linux
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{label} {_version(module)}" for label, module in LIBRARIES)
    return (
        f"machine: {cpu_name()}, {_cores()}, {features}, {memory_gib:.1f} GiB RAM\n"
        f"versions: Python {platform.python_version()}, {versions}"
    )


def code_version() -> str:
    """Name the code measured: its commit, whether `imagesearch/` differs from it, and a hash of its sources."""
    try:
        commit, changes = (
            subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
            for args in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "imagesearch"])
        )
    except OSError:  # no git
        commit, changes = "", ""
    modified = ", with uncommitted changes in imagesearch/" if changes else ""
    return f"code: commit {commit or 'unknown'}{modified}; imagesearch/ sources {sources_hash()}"


def sources_hash() -> str:
    """A short hash of the Python sources under `imagesearch/`: it changes whenever the code measured does."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "imagesearch").rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def load_average() -> str:
    """Describe the machine's load over the last minute: above the core count, other work competed for the CPU."""
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return f"load average {os.getloadavg()[0]:.2f} over the last minute, on {os.cpu_count()} logical cores"


def peak_rss_mib() -> float:
    """Return this process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def timed(fn: Callable[[], T], repeats: int = 1) -> tuple[float, T]:
    """Call `fn` `repeats` times; return the fastest wall-clock time in seconds and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned markdown table, first column left-aligned and the others (figures) right-aligned."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    print("\n".join([line(cells[0]), rule, *map(line, cells[1:])]))


def write_collection(folder: Path, count: int) -> list[str]:
    """Write `count` distinct small JPEGs, seeded random crops of the demo images; return their paths."""
    sources = [open_rgb(DEMO_IMAGES / path) for path in list_images(DEMO_IMAGES)]
    for source in sources:
        source.thumbnail((320, 320))  # crops of a smaller source are faster to resize
    paths = []
    for i in range(count):
        rng, source = np.random.default_rng(i), sources[i % len(sources)]
        width, height = (int(side * rng.uniform(0.5, 1.0)) for side in source.size)
        left, top = int(rng.integers(source.width - width + 1)), int(rng.integers(source.height - height + 1))
        path = folder / f"{i // 1000:03d}/{i:06d}.jpg"  # folders of 1,000, as collections often are
        path.parent.mkdir(exist_ok=True)
        crop = source.resize(FILE_SIZE, Image.Resampling.BILINEAR, box=(left, top, left + width, top + height))
        crop.save(path, quality=QUALITY)
        paths.append(path.relative_to(folder).as_posix())
    return paths


def _cores() -> str:
    total = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    return f"{total} logical cores" + ("" if usable == total else f" ({usable} usable by this process)")


def _version(module: str) -> str:
    try:
        return import_module(module).__version__
    except ImportError:
        return "not installed"


def images_benchmark_parser(
    description: str, what: str, repeats: int, smoke: tuple[int, int]
) -> argparse.ArgumentParser:
    """The command line of a benchmark over image files: --images, --count, --batch-size, --repeats, --smoke."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", type=Path, default=DEMO_IMAGES, help="folder of images (default: the demo set)")
    parser.add_argument("--count", type=int, default=112, help="images to time, cycling through the folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"time each {what} this many times, keep the fastest"
    )
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"only check that the script works: {smoke[0]} images, batch {smoke[1]} (overrides the above)",
    )
    parser.set_defaults(smoke_sizes=smoke)
    return parser


def parse_images_benchmark_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, apply --smoke, and refuse counts below one."""
    args = parser.parse_args(argv)
    if args.smoke:
        (args.count, args.batch_size), args.repeats = args.smoke_sizes, 1
    if min(args.count, args.batch_size, args.repeats) < 1:
        parser.error("--count, --batch-size and --repeats must be at least 1")
    return args


def add_runtimes_argument(parser: argparse.ArgumentParser) -> None:
    """--runtimes: which of ResNet50's runtimes to time beside `auto` (default: every one available here)."""
    from imagesearch.runtimes import RUNTIMES

    parser.add_argument(
        "--runtimes", nargs="+", choices=RUNTIMES, metavar="RUNTIME",
        help=f"ResNet50 runtimes to time, of {', '.join(RUNTIMES)} (default: every one available here); "
        "tensorflow, the reference, and the one auto picks are always timed",
    )


def runtime_embedders(
    weights: str, purpose: str, images: str | os.PathLike, requested: Sequence[str] | None = None
) -> tuple[dict[str, Embedder], Embedder]:
    """ResNet50 with `weights` (seed 0) on each runtime: `({runtime: embedder}, auto's embedder for `purpose`)`.

    `requested` None means every runtime available here; tensorflow (the reference) and the runtime `auto`
    picked are added to it. Auto is built first: where it has not been measured on this CPU with these
    weights yet, it measures every runtime (on `images`), and the embedders named after it reuse its
    conversions and measurements. Exits with the reason when a requested runtime cannot run here.
    """
    from imagesearch.embedders import REFERENCE_RUNTIME
    from imagesearch.runtimes import RUNTIMES, make_embedder, unavailable

    for runtime in requested or ():
        if (reason := unavailable(runtime)) is not None:
            raise SystemExit(f"runtime {runtime} cannot run here: {reason}")
    auto = make_embedder("resnet50", weights, seed=0, runtime="auto", purpose=purpose, images=images)
    wanted = set(requested) if requested else {runtime for runtime in RUNTIMES if unavailable(runtime) is None}
    wanted |= {REFERENCE_RUNTIME, auto.info.runtime}
    embedders = {
        runtime: make_embedder("resnet50", weights, seed=0, runtime=runtime, purpose=purpose, images=images)
        for runtime in RUNTIMES if runtime in wanted
    }
    return embedders, auto


def fidelity_cells(fidelity: Fidelity) -> list[str]:
    """A fidelity's lowest cosine (rounded down, never up to 1) and top-5 agreement, as two table cells."""
    return [f"{np.floor(fidelity.min_cosine * 1e6) / 1e6:.6f}", f"{fidelity.top5:.3f}"]
