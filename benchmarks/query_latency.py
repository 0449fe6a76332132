"""How long does one query take: embed one image file, then search the index?

For each `--sizes` index (Flat, of seeded random normal vectors: the content of an index does not
change the time of an exact search, so no images need embedding) times, query by query and step by
step in turn, with one embedder built and one index loaded beforehand:

  seed path   what a first notebook does: `load_image`, Keras `model.predict` on the preprocessed
              float batch of one, FAISS `index.search`;
  ours        `search_image(index, embedder, path, k)`;
  and the parts of each: decode (`load_image`), embed (`embedder.embed` on the decoded pixels),
  predict (the seed's `model.predict` on them), search (`SearchIndex.search` with the embedding,
  which runs a single query on one OpenMP thread), and the seed's search (FAISS `index.search`
  as it comes, on one OpenMP thread per core).

Query files cycle through the demo images. Target: p50(ours) / p50(seed path) <= 0.5 at every size.
Run from the repository root: `.venv/bin/python benchmarks/query_latency.py --sizes 10000 100000`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from itertools import cycle, islice
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import faiss
import keras
import numpy as np

from benchmarks.common import DEMO_IMAGES, code_version, load_average, machine_description, print_table, summary_context
from imagesearch.collection import Embeddings, save_embeddings
from imagesearch.embedders import Embedder, EmbedderInfo, RandomWeightsWarning, make_embedder
from imagesearch.images import list_images, load_image
from imagesearch.index import SearchIndex, build_index, load_index, save_index
from imagesearch.query import search_image
from imagesearch.records import ImageRecord

TARGET = 0.5
SEED, OURS = "seed path: decode + predict + search", "ours: search_image"
PARTS = {"decode": "  decode: load_image", "embed": "  embed: embedder.embed", "search": "  search: SearchIndex.search"}
PREDICT, SEED_SEARCH = "  seed's embed: model.predict", "  seed's search: FAISS index.search"
SMOKE_SIZES, SMOKE_QUERIES, SMOKE_WARMUP = [1000], 5, 1

#: A step of a query, run on one query file.
Step = Callable[[Path], object]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="vectors in each index")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per index")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries per index first")
    parser.add_argument("-k", type=int, default=5, help="neighbours per query")
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"only check that the script works: --sizes {SMOKE_SIZES[0]} --queries {SMOKE_QUERIES} (overrides)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.queries, args.warmup = SMOKE_SIZES, SMOKE_QUERIES, SMOKE_WARMUP
    if min(*args.sizes, args.queries, args.k) < 1 or args.warmup < 0:
        parser.error("--sizes, --queries and -k must be at least 1, --warmup at least 0")
    return args


def synthetic_index(count: int, info: EmbedderInfo, folder: Path) -> SearchIndex:
    """Save `count` seeded random normal vectors as embeddings, build and save a Flat index of them (an index is
    built from saved embeddings); return it loaded back, as queries see it."""
    vectors = np.random.default_rng(0).standard_normal((count, info.dim), dtype=np.float32)
    items = [ImageRecord(i, f"synthetic/{i:07d}.jpg", 0, 0, f"{i:064x}") for i in range(count)]
    saved = save_embeddings(Embeddings(vectors, items, info, "synthetic"), folder / "embeddings")
    save_index(build_index(saved, "Flat"), folder / "index")
    return load_index(folder / "index")


def seed_embed(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Embed a uint8 batch as a first notebook does: preprocess it as floats, then one Keras `predict` call."""
    return model.predict(keras.applications.resnet50.preprocess_input(images.astype("float32")), verbose=0)


def query_steps(
    index: SearchIndex, embedder: Embedder, pixels: dict[Path, np.ndarray], vectors: dict[Path, np.ndarray], k: int
) -> dict[str, Step]:
    """The two whole queries, then the parts of each on the file's pixels or embedding computed beforehand."""
    model, size = embedder.model, embedder.info.input_size
    return {
        SEED: lambda path: index.index.search(seed_embed(model, load_image(path, size)[None]), k),
        OURS: lambda path: search_image(index, embedder, path, k),
        PARTS["decode"]: lambda path: load_image(path, size),
        PARTS["embed"]: lambda path: embedder.embed(pixels[path][None]),
        PARTS["search"]: lambda path: index.search(vectors[path], k),
        PREDICT: lambda path: seed_embed(model, pixels[path][None]),
        SEED_SEARCH: lambda path: index.index.search(vectors[path], k),
    }


def time_steps(steps: dict[str, Step], files: list[Path], warmup: int) -> dict[str, np.ndarray]:
    """Run every step on each file in turn, after `warmup` untimed rounds; return {step: seconds per file}."""
    for path in islice(cycle(files), warmup):
        for step in steps.values():
            step(path)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for path in files:  # steps take turns, so a change in the machine's speed hits them all alike
        for name, step in steps.items():
            start = time.perf_counter()
            step(path)
            seconds[name].append(time.perf_counter() - start)
    return {name: np.array(values) for name, values in seconds.items()}


def same_answers(steps: dict[str, Step], index: SearchIndex, files: list[Path]) -> bool:
    """Whether the seed path and ours find the same neighbours, in the same order, for every file."""
    return all(
        [index.path_of(int(i)) for i in steps[SEED](path)[1][0]] == [hit.path for hit in steps[OURS](path)]
        for path in files
    )


def report(results: dict[int, dict[str, np.ndarray]], facts: dict[str, bool], args: argparse.Namespace) -> None:
    """Print the table, the checks, the ratios and where the time goes, and the summary line."""
    sizes, stats = args.sizes, ((50, "p50"), (95, "p95"))
    rows = [
        [name, *(f"{1000 * np.percentile(results[n][name], q):.1f}" for n in sizes for q, _ in stats)]
        for name in results[sizes[0]]
    ]
    print()
    print_table(["step", *(f"{label} ms, {n:,}" for n in sizes for _, label in stats)], rows)
    print()
    print("timing: time.perf_counter per query and step, steps in turn; a column pair per index size")
    for fact, holds in facts.items():
        print(f"check: {fact}: {'yes' if holds else 'NO'}")
    p50 = {n: {name: 1000 * float(np.median(seconds)) for name, seconds in results[n].items()} for n in sizes}
    ratio = {n: p50[n][OURS] / p50[n][SEED] for n in sizes}
    for n in sizes:
        parts = ", ".join(
            f"{part} {p50[n][row]:.1f} ms ({p50[n][row] / p50[n][OURS]:.0%})" for part, row in PARTS.items()
        )
        print(
            f"{n:,} vectors: p50 ours / seed path = {p50[n][OURS]:.1f} / {p50[n][SEED]:.1f} ms = {ratio[n]:.2f}, "
            f"target <= {TARGET}: {'met' if ratio[n] <= TARGET else 'NOT met'}; ours' parts, p50 and share: {parts}; "
            f"the seed's search {p50[n][SEED_SEARCH]:.1f} ms"
        )
    print(f"at the end: {load_average()}")
    met = [f"{n:,}" for n in sizes if ratio[n] <= TARGET]
    verdict = "met at every size" if len(met) == len(sizes) else f"met at {', '.join(met)} only" if met else "NOT met"
    context = summary_context(f"resnet50, Flat, k {args.k}", args.smoke, all(facts.values()))
    figures = ", ".join(f"{p50[n][OURS]:.0f} vs {p50[n][SEED]:.0f} ms at {n:,} vectors ({ratio[n]:.2f})" for n in sizes)
    print(
        f"summary: one query, p50 ours vs seed path: {figures}; target <= {TARGET}: {verdict} {context}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its report ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # speed does not depend on the weight values
    print(machine_description())
    print(code_version())
    print(f"at the start: {load_average()}")
    embedder = make_embedder("resnet50", "random", seed=0)
    demo = [DEMO_IMAGES / path for path in list_images(DEMO_IMAGES)]
    files = list(islice(cycle(demo), args.queries))
    distinct = list(dict.fromkeys(files))  # the checks run on each query file once
    pixels = {path: load_image(path, embedder.info.input_size) for path in distinct}
    vectors = {path: embedder.embed(pixels[path][None]) for path in distinct}
    print(
        f"settings: {embedder.info}; Flat indexes of {', '.join(f'{n:,}' for n in args.sizes)} seeded random normal "
        "vectors (an exact search takes as long whatever the vectors; paths synthetic), saved and loaded back; "
        f"k {args.k}; FAISS on {faiss.omp_get_max_threads()} OpenMP threads (ours: 1 for a single query); "
        f"{args.queries} timed queries per index "
        f"after {args.warmup} untimed, cycling through the {len(demo)} demo images (in the OS cache after one pass)"
    )
    if args.smoke:
        print(f"SMOKE RUN (sizes {args.sizes}, {args.queries} queries): checks that the script works; "
              "figures not meaningful")
    results: dict[int, dict[str, np.ndarray]] = {}
    agree: list[bool] = []
    for count in args.sizes:
        with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
            index = synthetic_index(count, embedder.info, Path(temporary))
        steps = query_steps(index, embedder, pixels, vectors, args.k)
        results[count] = time_steps(steps, files, args.warmup)
        agree.append(same_answers(steps, index, distinct))
        del index, steps  # free this index before building the next
    difference = max(
        float(np.abs(seed_embed(embedder.model, pixels[p][None]) - vectors[p]).max() / np.abs(vectors[p]).max())
        for p in distinct
    )
    facts = {
        f"model.predict and embedder.embed give the same embeddings (largest difference {difference:.1e} of the "
        "largest value)": difference < 1e-3,
        f"the seed path and search_image give the same top-{args.k} for every query file, at every size": all(agree),
    }
    report(results, facts, args)
    return 0 if all(facts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
