"""Does the saved collection's metadata scale to a million images?

Generates the records of `--count` images straight into Arrow columns (paths like
photos/2023/0042/IMG_0042123.jpg, random sizes, times and SHA-256 digests) with tiny `--dim` vectors
(the question is the metadata) and saves them once (setup). Then times, each with its peak memory:
opening the collection (`load_embeddings`); looking up 1,000 random ids and 1,000 random paths;
planning an update against a listing with 1% added and 1% removed (`make_plan`); saving after adding
1% (the loaded rows marked unchanged, so kept shards stay as they are); saving after adding one image;
opening again. Side by side in the same run: the previous format (format 3, every record in
manifest.json) at `--reference-count` records, written with json, read back into one Python object per
record, and read by today's `load_embeddings`; and `--scan-count` empty files in nested folders, listed
by `plan.list_files` and planned as a first run.
Targets at 1,000,000 images: open <= 1 s, save after adding 1% <= 2 s, <= 200 bytes per image resident
once open, and a one-image save that writes <= 3 files (vectors, items, manifest).
Run from the repository root: `.venv/bin/python benchmarks/collection_scale.py --count 1000000`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # machine_description imports TensorFlow: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.common import code_version, load_average, machine_description, print_table, summary_context
from imagesearch.collection import SHARD_ROWS, Embeddings, load_embeddings, save_embeddings
from imagesearch.embedders import EmbedderInfo
from imagesearch.plan import Listing, list_files, make_plan
from imagesearch.records import SCHEMA, Records
from imagesearch.vectors import VectorStore

TARGET_COUNT, LOOKUPS, FILES_PER_FOLDER, MIB = 1_000_000, 1000, 1000, 2**20
OPEN_S, SAVE_S, BYTES_PER_IMAGE, ONE_IMAGE_FILES = 1.0, 2.0, 200, 3


@dataclass
class Measured:
    """One step: seconds; peak RSS (-1: unknown) and RSS kept, above its start; Arrow bytes it left allocated."""

    seconds: float
    peak: int
    kept: int
    arrow: int
    result: object = None


def status_bytes(field: str) -> int:
    """A figure of /proc/self/status (VmRSS, VmHWM) in bytes; 0 where there is none (not Linux)."""
    try:
        return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)[1]) * 1024
    except (OSError, TypeError):
        return 0


def release_free_memory() -> None:
    """Collect garbage and give freed memory back (Arrow's pool, glibc's heap), so that RSS is what is held."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def measure(fn) -> Measured:
    """Run `fn` once: its time, and its peak and kept resident memory above what was resident at its start."""
    release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the peak RSS, to the current RSS
        resettable = True
    except OSError:
        resettable = False
    rss, arrow, start = status_bytes("VmRSS"), pa.total_allocated_bytes(), time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM") - rss if resettable else -1
    release_free_memory()
    return Measured(seconds, peak, status_bytes("VmRSS") - rss, pa.total_allocated_bytes() - arrow, result)


def make_records(rng: np.random.Generator, ids: np.ndarray, years: np.ndarray) -> Records:
    """Records of `ids` built as Arrow columns, no Python object per image (in path order where ids and years
    grow together), with random sizes, times and SHA-256 digests."""
    def digits(values: np.ndarray, width: int) -> pa.Array:
        return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")

    n = len(ids)
    paths = pc.binary_join_element_wise(
        "photos/", digits(years, 4), "/", digits(ids // FILES_PER_FOLDER, 4), "/IMG_", digits(ids, 7), ".jpg", "")
    digests = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, pa.py_buffer(rng.bytes(32 * n))])
    times = rng.integers(1_420_070_400 * 10**9, 1_735_689_600 * 10**9, n)  # 2015 to 2025, in nanoseconds
    columns = [pa.array(ids, pa.int64()), paths, pa.array(rng.integers(50_000, 12_000_000, n)), pa.array(times),
               digests, pa.array(np.ones(n, np.int32))]
    return Records(pa.table(columns, schema=SCHEMA))


def grow(base: Embeddings, extra: Records, vectors: np.ndarray) -> Embeddings:
    """`base` (as loaded or saved) plus the images of `extra`: its own rows as its commit saved them, the new not."""
    store = VectorStore.concat([base.store, VectorStore.from_array(vectors)], base.store.dim)
    unchanged = np.concatenate([np.ones(len(base), bool), np.zeros(len(extra), bool)])
    return Embeddings(store, Records.concat([base.records, extra]), base.embedder, base.image_root,
                      list(base.skipped), base.next_id, saved=base.saved, unchanged=unchanged)


def files_of(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Each file of `folder` by name: (inode, mtime, size), which change whenever a save writes it."""
    return {p.name: (s.st_ino, s.st_mtime_ns, s.st_size) for p in folder.iterdir() if p.is_file() for s in [p.stat()]}


def row(step: str, m: Measured, notes: str = "") -> list[str]:
    return [step, f"{m.seconds:.3f}", f"{m.peak / MIB:.1f}" if m.peak >= 0 else "-", notes]


def collection_steps(args, rng, folder: Path, rows: list, facts: dict) -> dict:
    """Setup, then every step on the saved collection of `--count` images; return the figures the targets need."""
    n, added_n, ids = args.count, max(1, args.count // 100), np.arange(args.count)
    info = EmbedderInfo("test", "none", args.dim, (224, 224))
    made = measure(lambda: Embeddings(VectorStore.from_array(rng.standard_normal((n, args.dim), dtype=np.float32)),
                                      make_records(rng, ids, 2015 + ids * 10 // n), info, "/photos", next_id=n))
    rows.append(row("setup: generate records and vectors", made, f"{n:,} images, {args.dim}-d float32"))
    first = measure(lambda: save_embeddings(made.result, folder))
    made.result = first.result = None
    files = files_of(folder)
    size = sum(stat[2] for stat in files.values()) / MIB
    rows.append(row("setup: first save", first, f"{len(files)} files, {size:.1f} MiB on disk"))

    opened = measure(lambda: load_embeddings(folder))
    loaded, records = opened.result, opened.result.records
    rows.append(row("open (load_embeddings)", opened, f"{opened.kept / n:.0f} B/image resident after, of which "
                    f"Arrow {opened.arrow / n:.0f} B/image; shards: {len(loaded.store.sources)}"))
    want_ids, want_rows = rng.choice(n, LOOKUPS, replace=False), rng.choice(n, LOOKUPS)
    by_id, by_id_again = (measure(lambda: records.rows_of_ids(want_ids)) for _ in range(2))
    rows.append(row(f"look up {LOOKUPS:,} ids (rows_of_ids)", by_id,
                    f"first call, sorts the ids; then {by_id_again.seconds * 1e3:.1f} ms"))
    want_paths = records.path_array.take(pa.array(want_rows)).to_pylist()
    by_path = measure(lambda: np.array([records.row_of_path(path) for path in want_paths]))
    rows.append(row(f"look up {LOOKUPS:,} paths (row_of_path each)", by_path,
                    f"{by_path.seconds / LOOKUPS * 1e6:.0f} us per path"))
    at_once = measure(lambda: records.rows_of_paths(want_paths))
    rows.append(row(f"look up {LOOKUPS:,} paths (rows_of_paths once)", at_once, "one hash join"))
    facts["the looked-up ids and paths gave their rows"] = bool(
        (records.ids[by_id.result] == want_ids).all() and (by_path.result == want_rows).all()
        and (at_once.result == want_rows).all())

    added, present = make_records(rng, n + np.arange(added_n), np.full(added_n, 2025)), np.ones(n, bool)
    present[rng.choice(n, added_n, replace=False)] = False
    paths = pa.concat_arrays([records.path_array.filter(pa.array(present)), added.path_array])
    listing = Listing(Path("/photos"), paths, *(np.concatenate([records.column(name)[present], added.column(name)])
                                                for name in ["size", "mtime_ns"]))
    planned = measure(lambda: make_plan(listing, loaded))
    plan = planned.result
    rows.append(row("plan: 1% added, 1% removed (make_plan)", planned, plan.summary()))
    facts["the plan keeps the unchanged files, reads the added ones, and finds the removed ones gone"] = (
        len(plan.keep) == n - added_n and plan.read.num_rows == added_n and len(plan.vanished) == added_n)
    planned.result = plan = listing = paths = records = None

    saves = []
    for what, extra in [("1%", added), ("one image", make_records(rng, np.array([n + added_n]), np.array([2025])))]:
        vectors = rng.standard_normal((len(extra), args.dim), dtype=np.float32)
        built = measure(lambda base=loaded, extra=extra, vectors=vectors: grow(base, extra, vectors))
        before = files_of(folder)
        saved = measure(lambda grown=built.result: save_embeddings(grown, folder))
        after = files_of(folder)
        new = [name for name, stat in after.items() if before.get(name) != stat]  # new, or written again
        rows.append(row(f"save after adding {what}", saved, f"{len(new)} files, "
                        f"{sum(after[name][2] for name in new) / MIB:.2f} MiB written; building the Embeddings "
                        f"before it {built.seconds:.3f} s"))
        saves.append((saved.seconds, built.seconds, len(new)))
        built.result, loaded, saved.result = None, saved.result, None
    new_shards = -(-added_n // SHARD_ROWS)
    facts[f"the save after adding 1% wrote only its {new_shards} new shard(s) and the manifest"] = (
        saves[0][2] == 2 * new_shards + 1)
    reopened = measure(lambda: load_embeddings(folder))
    rows.append(row("re-open (load_embeddings)", reopened, f"{reopened.kept / len(reopened.result):.0f} B/image"))
    facts["the re-opened collection holds every image"] = len(reopened.result) == n + added_n + 1
    return {"open_s": opened.seconds, "bytes_per_image": opened.kept / n, "save_s": saves[0][0],
            "build_s": saves[0][1], "one_image_files": saves[1][2]}


@dataclass(frozen=True)
class LegacyRecord:
    """One record as format 3 code held it: a Python object per image."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    shard: int
    row: int


def format3_steps(args, rng, folder: Path, rows: list, facts: dict) -> None:
    """Write and read a format 3 manifest of `--reference-count` records: json, one object per record."""
    n, scale = args.reference_count, TARGET_COUNT / args.reference_count
    folder.mkdir()
    columns = make_records(rng, np.arange(n), 2015 + np.arange(n) * 10 // n).table.to_pydict()
    shards = [{"file": f"vectors.{number:012x}.npy", "rows": min(SHARD_ROWS, n - start)}
              for number, start in enumerate(range(0, n, SHARD_ROWS))]
    for shard in shards:
        np.save(folder / shard["file"], np.zeros((shard["rows"], args.dim), np.float32))
    items = [[i, path, size, mtime, digest.hex(), row // SHARD_ROWS, row % SHARD_ROWS] for row, (i, path, size, mtime,
             digest) in enumerate(zip(*(columns[name] for name in ["id", "path", "size", "mtime_ns", "sha256"])))]
    embedder = EmbedderInfo("test", "none", args.dim, (224, 224)).to_dict()
    manifest = {"kind": "embeddings", "format_version": 3, "embedder": embedder, "image_root": "/photos", "count": n,
                "next_id": n, "shards": shards, "items": items, "skipped": []}
    path, columns, items = folder / "manifest.json", None, None
    wrote = measure(lambda: path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", "utf-8"))
    manifest = None
    rows.append(row(f"format 3 at {n:,}: write manifest.json", wrote,
                    f"{path.stat().st_size / MIB:.1f} MiB; x{scale:g} = {wrote.seconds * scale:.1f} s at 1,000,000"))
    read = measure(lambda: [LegacyRecord(*item) for item in json.loads(path.read_bytes().decode("utf-8"))["items"]])
    rows.append(row(f"format 3 at {n:,}: json + one object per record", read,
                    f"x{scale:g} = {read.seconds * scale:.1f} s, {read.peak * scale / MIB:.0f} MiB at 1,000,000"))
    converted = measure(lambda: load_embeddings(folder))
    rows.append(row(f"format 3 at {n:,}: load_embeddings (today's)", converted,
                    f"x{scale:g} = {converted.seconds * scale:.1f} s at 1,000,000"))
    facts["today's load_embeddings reads every format 3 record"] = len(converted.result) == n == len(read.result)


def scan_steps(count: int, root: Path, rows: list, facts: dict) -> None:
    """List `count` empty .jpg files in nested folders, plan a first run over them, and delete them."""
    for start in range(0, count, FILES_PER_FOLDER):
        folder = root / f"{start // FILES_PER_FOLDER // 100:02d}" / f"{start // FILES_PER_FOLDER:04d}"
        folder.mkdir(parents=True)
        for i in range(start, min(count, start + FILES_PER_FOLDER)):
            open(folder / f"IMG_{i:07d}.jpg", "wb").close()
    listed = measure(lambda: list_files(root))
    rows.append(row(f"scan: list_files, {count:,} files", listed, f"{count / listed.seconds:,.0f} files/s"))
    planned = measure(lambda: make_plan(listed.result))
    rows.append(row("scan: make_plan, first run", planned, f"{count / planned.seconds:,.0f} files/s"))
    facts["the scan listed every file, and the plan reads them all"] = (
        len(listed.result) == planned.result.read.num_rows == count)
    shutil.rmtree(root)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=TARGET_COUNT, help="images in the collection")
    parser.add_argument("--reference-count", type=int, default=100_000, help="records of the format 3 reference")
    parser.add_argument("--dim", type=int, default=8, help="vector length (small: the question is the metadata)")
    parser.add_argument("--scan-count", type=int, default=100_000, help="empty files to list (0: skip the scan)")
    parser.add_argument("--out", type=Path, help="folder to work in, kept afterwards (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 100 or args.reference_count < 1 or args.dim < 1 or args.scan_count < 0:
        parser.error("--count must be at least 100, --reference-count and --dim at least 1, --scan-count at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report, ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    print(machine_description())
    print(f"{code_version()}; PyArrow {pa.__version__} ({pa.default_memory_pool().backend_name} pool)")
    print(f"at the start: {load_average()}")
    rng, rows, facts = np.random.default_rng(args.seed), [], {}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="collection-scale-", dir=args.out))
    try:
        figures = collection_steps(args, rng, work / "embeddings", rows, facts)
        format3_steps(args, rng, work / "format3", rows, facts)
        if args.scan_count:
            scan_steps(args.scan_count, work / "scan", rows, facts)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(["step", "seconds", "peak MiB", "notes"], rows)
    print()
    print("peak MiB: the most resident memory during the step above what was resident when it began (Linux VmHWM, "
          "reset before each step); B/image resident: RSS kept after the step, over the images")
    for fact, holds in facts.items():
        print(f"check: {fact}: {'yes' if holds else 'NO'}")
    print(f"targets at {TARGET_COUNT:,} images" + ("" if args.count == TARGET_COUNT else
                                                  f" (this run has {args.count:,}: indicative only)") + ":")
    f = figures
    targets = [
        (f"open <= {OPEN_S:g} s", f"{f['open_s']:.2f} s", f["open_s"] <= OPEN_S),
        (f"save after adding 1% <= {SAVE_S:g} s", f"{f['save_s']:.2f} s (and {f['build_s']:.2f} s building the "
         "Embeddings before it)", f["save_s"] <= SAVE_S),
        (f"loaded metadata <= {BYTES_PER_IMAGE} B/image resident", f"{f['bytes_per_image']:.0f} B/image",
         f["bytes_per_image"] <= BYTES_PER_IMAGE),
        (f"one-image save writes <= {ONE_IMAGE_FILES} files", f"{f['one_image_files']} files",
         f["one_image_files"] <= ONE_IMAGE_FILES),
    ]
    for name, value, met in targets:
        print(f"target: {name}: {value}: {'met' if met else 'NOT MET'}")
    print(f"at the end: {load_average()}")
    met = sum(holds for _, _, holds in targets)
    context = summary_context(f"{args.count:,} images, {args.dim}-d", args.count < 100_000, all(facts.values()))
    print(f"summary: {args.count:,} images: open {f['open_s']:.2f} s, save after adding 1% {f['save_s']:.2f} s, "
          f"{f['bytes_per_image']:.0f} B/image resident, one-image save {f['one_image_files']} files; "
          f"{met} of {len(targets)} targets met {context}")
    return 0 if all(facts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
