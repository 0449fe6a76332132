"""How long does one query take on each runtime: embed one image file, then search the index?

For each `--sizes` index (Flat, of seeded random normal vectors: the content of an index does not
change the time of an exact search, so no images need embedding) times, query by query and step by
step in turn, with the embedders built and one index loaded beforehand:

  seed path            what a first notebook does: `load_image`, Keras `model.predict` on the
                       preprocessed float batch of one, FAISS `index.search`;
  ours (R)             `search_image(index, embedder, path, k)` with ResNet50 on runtime R, for every
                       runtime available here (`imagesearch.runtimes.unavailable(R) is None`; `--runtimes`
                       narrows the list), each built by `make_embedder(runtime=R)`;
  ours (auto → R)      the same with `make_embedder(runtime="auto", purpose="query")`, the default, which
                       picked R (measured once per CPU and weights, remembered in $IMAGESEARCH_CACHE);
  and the parts: decode (`load_image`), embed (R) (`embedder.embed` on the decoded pixels, per
  runtime), search (`SearchIndex.search` with the embedding, which runs a single query on one
  OpenMP thread), the seed's predict (`model.predict` on the pixels), and the seed's search (FAISS
  `index.search` as it comes, on one OpenMP thread per core).

Every step runs on every query file in turn, after `--warmup` untimed rounds, so that other work on
the machine slows them alike; the table gives p50 and p95. Query files cycle through the demo images.
Each runtime's fidelity is computed here on the distinct query files, embedded one at a time: its
vectors against tensorflow's (`runtimes.compare`: the lowest cosine similarity, and the share of each
image's 5 nearest others both find). Checks: tensorflow's `embed` gives `predict`'s vectors, and ours
on tensorflow finds the seed path's top-k, in order, for every file; the other runtimes' top-k
agreement with the seed path is reported, not checked (reduced precision may reorder near ties).
Target: p50(ours, auto) / p50(seed path) <= 0.4 at every size.
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

from benchmarks.common import (
    DEMO_IMAGES,
    add_runtimes_argument,
    code_version,
    fidelity_cells,
    load_average,
    machine_description,
    print_table,
    runtime_embedders,
    summary_context,
)
from imagesearch.collection import Embeddings, save_embeddings
from imagesearch.embedders import REFERENCE_RUNTIME, Embedder, EmbedderInfo, Fidelity, RandomWeightsWarning
from imagesearch.images import list_images, load_image
from imagesearch.index import SearchIndex, build_index, load_index, save_index
from imagesearch.litert import cache_dir
from imagesearch.query import search_image
from imagesearch.records import ImageRecord
from imagesearch.runtimes import CHOICES_FILE, compare

TARGET = 0.4
SEED = "seed path: decode + predict + search"
DECODE, SEARCH = "  decode: load_image", "  search: SearchIndex.search"
PREDICT, SEED_SEARCH = "  seed's embed: model.predict", "  seed's search: FAISS index.search"
SMOKE_SIZES, SMOKE_QUERIES, SMOKE_WARMUP = [1000], 5, 1

#: A step of a query, run on one query file.
Step = Callable[[Path], object]


def ours(runtime: str, auto: bool = False) -> str:
    """The name of the whole query with the embedder of `runtime` (auto's, with `auto`)."""
    return f"ours ({'auto → ' if auto else ''}{runtime}): search_image"


def embed_part(runtime: str) -> str:
    return f"  embed ({runtime}): embedder.embed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="vectors in each index")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per index")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries per index first")
    parser.add_argument("-k", type=int, default=5, help="neighbours per query")
    parser.add_argument("--weights", default="random", help="ResNet50 weights: random, imagenet or a weights file")
    add_runtimes_argument(parser)
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
    save_index(build_index(saved, "Flat", retrieval="plain"), folder / "index")
    return load_index(folder / "index")


def seed_embed(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Embed a uint8 batch as a first notebook does: preprocess it as floats, then one Keras `predict` call."""
    return model.predict(keras.applications.resnet50.preprocess_input(images.astype("float32")), verbose=0)


def query_steps(
    index: SearchIndex, embedders: dict[str, Embedder], auto: Embedder, pixels: dict[Path, np.ndarray],
    vectors: dict[Path, np.ndarray], k: int,
) -> dict[str, Step]:
    """The whole queries (the seed path, ours on each runtime, ours with auto's embedder), then their parts, on the
    file's pixels or its (tensorflow) embedding computed beforehand. Runtimes outside their fidelity bar have no
    whole query: `search_image` refuses their vectors."""
    reference = embedders[REFERENCE_RUNTIME]
    model, size = reference.model, reference.info.input_size
    steps: dict[str, Step] = {SEED: lambda path: index.index.search(seed_embed(model, load_image(path, size)[None]), k)}
    for runtime, embedder in embedders.items():
        if embedder.info.outside_bar() is None:
            steps[ours(runtime)] = lambda path, e=embedder: search_image(index, e, path, k)
    steps[ours(auto.info.runtime, auto=True)] = lambda path: search_image(index, auto, path, k)
    steps[DECODE] = lambda path: load_image(path, size)
    for runtime, embedder in embedders.items():
        steps[embed_part(runtime)] = lambda path, e=embedder: e.embed(pixels[path][None])
    steps[SEARCH] = lambda path: index.search(vectors[path], k)
    steps[PREDICT] = lambda path: seed_embed(model, pixels[path][None])
    steps[SEED_SEARCH] = lambda path: index.index.search(vectors[path], k)
    return steps


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


def answers(steps: dict[str, Step], index: SearchIndex, files: list[Path]) -> dict[str, tuple[bool, float]]:
    """For each of our whole queries: whether it found the seed path's neighbours, in the same order, for every
    file, and the mean share of the seed path's top-k it found (order ignored)."""
    seed = {path: [index.path_of(int(i)) for i in steps[SEED](path)[1][0]] for path in files}
    found = {}
    for name in steps:
        if name.startswith("ours"):
            hits = {path: [hit.path for hit in steps[name](path)] for path in files}
            found[name] = (all(hits[path] == seed[path] for path in files),
                           float(np.mean([len(set(hits[path]) & set(seed[path])) / len(seed[path]) for path in files])))
    return found


def report(results: dict[int, dict[str, np.ndarray]], facts: dict[str, bool], agreement: dict[int, dict],
           fidelity: dict[str, Fidelity], runtimes: list[str], picked: str, args: argparse.Namespace) -> None:
    """Print the table, the checks, fidelity, agreement, the ratios and where the time goes, and the summary line."""
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
    distinct = next(iter(fidelity.values())).images if fidelity else 0
    auto = ours(picked, auto=True)
    print()
    print_table(
        ["runtime", "min cosine", "top-5 agreement", *(f"top-{args.k} of the seed path found, {n:,}" for n in sizes)],
        [[label, *(fidelity_cells(fidelity[runtime]) if runtime in fidelity else ["reference"] * 2),
          *(f"{agreement[n][query][1]:.3f}" if query in agreement[n] else "n/a" for n in sizes)]
         for label, runtime, query in [*((runtime, runtime, ours(runtime)) for runtime in runtimes),
                                       (f"auto → {picked}", picked, auto)]],
    )
    print()
    print(f"fidelity: each runtime's vectors of the {distinct} distinct query files, embedded one at a time, against "
          f"tensorflow's; top-{args.k} found: the mean share of the seed path's neighbours that ours on that runtime "
          "finds, at each index size (n/a: outside its fidelity bar, so search_image refuses it)")
    p50 = {n: {name: 1000 * float(np.median(seconds)) for name, seconds in results[n].items()} for n in sizes}
    ratio = {n: p50[n][auto] / p50[n][SEED] for n in sizes}
    parts = {"decode": DECODE, f"embed ({picked})": embed_part(picked), "search": SEARCH}
    for n in sizes:
        each = ", ".join(f"{runtime} {p50[n][ours(runtime)] / p50[n][SEED]:.2f}"
                         for runtime in runtimes if ours(runtime) in p50[n])
        shares = ", ".join(
            f"{part} {p50[n][row]:.1f} ms ({p50[n][row] / p50[n][auto]:.0%})" for part, row in parts.items()
        )
        print(
            f"{n:,} vectors: p50 ours (auto → {picked}) / seed path = {p50[n][auto]:.1f} / {p50[n][SEED]:.1f} ms = "
            f"{ratio[n]:.2f}, target <= {TARGET}: {'met' if ratio[n] <= TARGET else 'NOT met'}; per runtime: "
            f"{each}; ours' parts, p50 and share: {shares}; the seed's search {p50[n][SEED_SEARCH]:.1f} ms"
        )
    print(f"at the end: {load_average()}")
    met = [f"{n:,}" for n in sizes if ratio[n] <= TARGET]
    verdict = "met at every size" if len(met) == len(sizes) else f"met at {', '.join(met)} only" if met else "NOT met"
    context = summary_context(f"resnet50 {args.weights}, Flat, k {args.k}", args.smoke, all(facts.values()))
    figures = ", ".join(f"{p50[n][auto]:.0f} vs {p50[n][SEED]:.0f} ms at {n:,} vectors ({ratio[n]:.2f})" for n in sizes)
    print(f"summary: one query, p50 ours vs seed path: {figures}; ours = auto → {picked}; target <= {TARGET}: "
          f"{verdict} {context}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its report ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # speed does not depend on the weight values
    print(machine_description())
    print(code_version())
    print(f"at the start: {load_average()}")
    embedders, auto = runtime_embedders(args.weights, "query", DEMO_IMAGES, args.runtimes)
    reference = embedders[REFERENCE_RUNTIME]
    demo = [DEMO_IMAGES / path for path in list_images(DEMO_IMAGES)]
    files = list(islice(cycle(demo), args.queries))
    distinct = list(dict.fromkeys(files))  # the checks run on each query file once
    pixels = {path: load_image(path, reference.info.input_size) for path in distinct}
    by_runtime = {runtime: {path: embedder.embed(pixels[path][None]) for path in distinct}
                  for runtime, embedder in embedders.items()}
    vectors = by_runtime[REFERENCE_RUNTIME]
    expected = np.concatenate(list(vectors.values()))
    fidelity = {runtime: compare(expected, np.concatenate(list(by_runtime[runtime].values())))
                for runtime in embedders if runtime != REFERENCE_RUNTIME}
    print(
        f"settings: {reference.info}; runtimes {', '.join(embedders)}, and auto, which picked {auto.info.runtime} "
        f"for queries (remembered in {cache_dir() / CHOICES_FILE}); Flat indexes of "
        f"{', '.join(f'{n:,}' for n in args.sizes)} seeded random normal "
        "vectors (an exact search takes as long whatever the vectors; paths synthetic), saved and loaded back; "
        f"k {args.k}; FAISS on {faiss.omp_get_max_threads()} OpenMP threads (ours: 1 for a single query); "
        f"{args.queries} timed queries per index "
        f"after {args.warmup} untimed, cycling through the {len(demo)} demo images (in the OS cache after one pass)"
    )
    for runtime, embedder in embedders.items():
        if (reason := embedder.info.outside_bar()) is not None:
            print(f"ours ({runtime}): not timed, search_image refuses its vectors: {reason}")
    if args.smoke:
        print(f"SMOKE RUN (sizes {args.sizes}, {args.queries} queries): checks that the script works; "
              "figures not meaningful")
    results: dict[int, dict[str, np.ndarray]] = {}
    agreement: dict[int, dict[str, tuple[bool, float]]] = {}
    for count in args.sizes:
        with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
            index = synthetic_index(count, reference.info, Path(temporary))
        steps = query_steps(index, embedders, auto, pixels, vectors, args.k)
        results[count] = time_steps(steps, files, args.warmup)
        agreement[count] = answers(steps, index, distinct)
        del index, steps  # free this index before building the next
    difference = max(
        float(np.abs(seed_embed(reference.model, pixels[p][None]) - vectors[p]).max() / np.abs(vectors[p]).max())
        for p in distinct
    )
    facts = {
        f"model.predict and embedder.embed (tensorflow) give the same embeddings (largest difference "
        f"{difference:.1e} of the largest value)": difference < 1e-3,
        f"the seed path and search_image on tensorflow give the same top-{args.k} for every query file, at every "
        "size": all(agreement[n][ours(REFERENCE_RUNTIME)][0] for n in args.sizes),
    }
    report(results, facts, agreement, fidelity, list(embedders), auto.info.runtime, args)
    return 0 if all(facts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
