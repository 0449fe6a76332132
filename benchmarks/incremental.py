"""How long does adding 1% of files to a collection take, against a full rebuild?

Runs the work of `python -m imagesearch build` (load the previous save, extract, index, save) on a
generated collection, with the same embedder, side by side in one run:

  full rebuild   an empty artifacts folder: every file of the final collection is embedded and indexed;
  remove 1%      setup: the files to be added are moved out, leaving the collection of `--count`;
  add 1%         they are moved back: the incremental update this benchmark is about;
  no change      a rerun with nothing changed: the cost of loading, stat-ing every file and saving.

Rebuilding first measures the full rebuild on exactly the final collection, and gives a reference that
the incremental result must match: the same files, the same vectors and the same top-5 answers.
Run from the repository root: `.venv/bin/python benchmarks/incremental.py --count 10000`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import numpy as np

from benchmarks.common import (
    FILE_SIZE,
    QUALITY,
    load_average,
    machine_description,
    peak_rss_mib,
    print_table,
    summary_context,
    timed,
    write_collection,
)
from imagesearch.collection import Embeddings, load_previous_embeddings, save_embeddings
from imagesearch.embedders import Embedder, RandomWeightsWarning
from imagesearch.extract import extract_embeddings
from imagesearch.images import list_images
from imagesearch.index import SearchIndex, build_index, load_index, load_previous_index, save_index
from imagesearch.runtimes import CHOICES, make_embedder
from imagesearch.storage import embeddings_dir, index_dir

SMOKE_COUNT, QUERIES, K = 200, 200, 5


@dataclass
class Run:
    """One build: seconds per phase, and the embeddings and index it saved."""

    seconds: dict[str, float]
    embeddings: Embeddings
    index: SearchIndex

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="files in the collection before the update")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--factory", default="Flat", help="FAISS index factory string")
    parser.add_argument("--backbone", default="resnet50", help="resnet50 or tflite")
    parser.add_argument("--weights", default="random", help="resnet50 weights, or the .tflite file")
    parser.add_argument("--runtime", choices=CHOICES,
                        help="what computes ResNet50 (default: tensorflow, the runtime of the README's figures)")
    parser.add_argument(
        "--smoke", action="store_true", help=f"only check that the script works: --count {SMOKE_COUNT}"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.count = SMOKE_COUNT
    if args.count < 100 or args.batch_size < 1:
        parser.error("--count must be at least 100 (1% of it is added) and --batch-size at least 1")
    return args


def move(paths: list[str], source: Path, destination: Path) -> None:
    """Move files between two folders, keeping their paths relative to them."""
    for path in paths:
        (destination / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).rename(destination / path)


def build(folder: Path, artifacts: Path, embedder: Embedder, batch_size: int, factory: str) -> Run:
    """Do what `python -m imagesearch build` does, minus its checks and figure; incremental if artifacts exist."""
    seconds: dict[str, float] = {}
    seconds["load"], (embeddings, index) = timed(
        lambda: (load_previous_embeddings(embeddings_dir(artifacts)), load_previous_index(index_dir(artifacts)))
    )
    seconds["extract"], embeddings = timed(
        lambda: extract_embeddings(
            folder, embedder, batch_size, progress=False, previous=embeddings, checkpoint_dir=embeddings_dir(artifacts)
        )
    )
    # The index is built from the saved embeddings (it points at the version it indexes), so the embeddings are
    # saved first; "save s" is both saves, "index s" the build between them.
    save_seconds, embeddings = timed(lambda: save_embeddings(embeddings, embeddings_dir(artifacts)))
    seconds["index"], index = timed(lambda: build_index(embeddings, factory, previous=index, retrieval="plain"))
    index_save_seconds, _ = timed(lambda: save_index(index, index_dir(artifacts)))
    seconds["save"] = save_seconds + index_save_seconds
    return Run(seconds, embeddings, index)


def top_paths(index: SearchIndex, queries: np.ndarray) -> list[list[str]]:
    """The paths of each query's K nearest images."""
    return [[hit.path for hit in hits] for hits in index.search(queries, K)]


def checks(rebuild: Run, update: Run, added: list[str], folder: Path, artifacts: Path) -> dict[str, bool]:
    """Check the incremental update against the full rebuild; return {fact: holds}."""
    final = update.embeddings
    rows = np.random.default_rng(0).choice(len(final.items), min(QUERIES, len(final.items)), replace=False)
    queries = final.vectors[np.union1d(rows, np.flatnonzero(np.isin(final.paths, added)))]  # and every added image
    answers = top_paths(load_index(index_dir(artifacts)), queries)  # the saved index, as a query would see it
    scale = float(np.abs(rebuild.embeddings.vectors).max()) or 1.0
    difference = float(np.abs(final.vectors - rebuild.embeddings.vectors).max()) / scale
    return {
        f"the rebuild's {len(rebuild.embeddings.items):,} files are distinct (content hashes)":
            len({item.sha256 for item in rebuild.embeddings.items}) == len(rebuild.embeddings.items),
        f"the update embedded exactly the {len(added)} added files ({final.changes.summary()})":
            sorted(final.changes.added) == sorted(added) and final.changes.embedded == len(added),
        f"the index was updated in place ({update.index.changes.summary()})": not update.index.changes.rebuilt,
        "the updated embeddings hold exactly the folder's files, in the rebuild's order":
            final.paths == list_images(folder) == rebuild.embeddings.paths,
        f"their vectors equal the rebuild's (largest difference {difference:.1e} of the largest value)":
            difference < 1e-4,
        f"the saved updated index gives the same top-{K} as build_index from scratch ({len(queries)} queries)":
            answers == top_paths(build_index(final, update.index.factory, retrieval="plain"), queries),
        "... and as the full rebuild's index": answers == top_paths(rebuild.index, queries),
    }


def report(runs: dict[str, Run], facts: dict[str, bool], count: int, added: int, args: argparse.Namespace) -> None:
    """Print the table, the checks, peak memory and the summary line."""
    rows = [
        [
            name, f"{len(run.embeddings.items):,}", f"{run.embeddings.changes.embedded:,}",
            "built" if run.index.changes.rebuilt else "in place",
            *(f"{seconds:.2f}" for seconds in run.seconds.values()), f"{run.total:.2f}",
        ]
        for name, run in runs.items()
    ]
    print()
    print_table(["run", "images", "embedded", "index", "load s", "extract s", "index s", "save s", "total s"], rows)
    print()
    for fact, holds in facts.items():
        print(f"check: {fact}: {'yes' if holds else 'NO'}")
    print(f"at the end: {load_average()}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (the whole process: TensorFlow, the model, vectors and indexes)")
    rebuild, update, unchanged = runs["full rebuild"], runs["add 1%"], runs["no change"]
    context = summary_context(
        f"{args.backbone}, batch {args.batch_size}, {args.factory}", args.smoke, all(facts.values())
    )
    print(
        f"summary: adding {added:,} images to {count:,}: {update.total:.1f} s incremental vs {rebuild.total:.1f} s "
        f"full rebuild ({rebuild.total / update.total:.1f}x faster; {update.embeddings.changes.embedded:,} images "
        f"embedded vs {rebuild.embeddings.changes.embedded:,}; index updated in place: "
        f"{'yes' if not update.index.changes.rebuilt else 'no'}); no-change rerun {unchanged.total:.1f} s {context}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its report ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    added_count = args.count // 100
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # speed does not depend on the weight values
    print(machine_description())
    print(f"at the start: {load_average()}")
    runtime = args.runtime or ("tensorflow" if args.backbone == "resnet50" else None)
    load_seconds, embedder = timed(lambda: make_embedder(args.backbone, args.weights, seed=0, runtime=runtime))
    shapes = {args.batch_size, (args.count + added_count) % args.batch_size, added_count % args.batch_size} - {0}
    width, height = embedder.info.input_size
    warm_seconds, _ = timed(lambda: [embedder.embed(np.zeros((n, height, width, 3), np.uint8)) for n in shapes])
    with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
        folder, held, artifacts = (Path(temporary) / name for name in ("collection", "held", "artifacts"))
        folder.mkdir()
        write_seconds, paths = timed(lambda: write_collection(folder, args.count + added_count))
        added = sorted(np.random.default_rng(1).choice(paths, added_count, replace=False).tolist())
        print(
            f"settings: {embedder.info}, batch {args.batch_size}, {args.factory} index; a collection of "
            f"{args.count:,} + {added_count:,} added JPEGs ({FILE_SIZE[0]}x{FILE_SIZE[1]}, quality {QUALITY}, "
            f"random crops of the demo images) written in {write_seconds:.1f} s under {temporary}"
        )
        print(
            f"start-up, not in the table (a fresh `imagesearch build` process pays it every time): "
            f"making the embedder {load_seconds:.1f} s (imports included), first model calls "
            f"{warm_seconds:.1f} s (batch sizes {sorted(shapes)})"
        )
        if args.smoke:
            print(f"SMOKE RUN ({args.count} images): checks that the script works; figures not meaningful")
        runs = {"full rebuild": build(folder, artifacts, embedder, args.batch_size, args.factory)}
        rebuilt = runs["full rebuild"].embeddings  # its vectors are read from the artifacts the next runs change:
        runs["full rebuild"].embeddings = dataclasses.replace(rebuilt, store=rebuilt.vectors)  # keep them in memory
        move(added, folder, held)
        runs["remove 1% (setup)"] = build(folder, artifacts, embedder, args.batch_size, args.factory)
        move(added, held, folder)
        runs["add 1%"] = build(folder, artifacts, embedder, args.batch_size, args.factory)
        facts = checks(runs["full rebuild"], runs["add 1%"], added, folder, artifacts)
        runs["no change"] = build(folder, artifacts, embedder, args.batch_size, args.factory)
    report(runs, facts, args.count, added_count, args)
    return 0 if all(facts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
