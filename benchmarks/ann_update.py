"""When must an IVF index updated in place be retrained: recall and speed as the collection outgrows its training.

`build_index(previous=...)` adds new images to an IVF index in place, with the search parameters tuned when
it was built, and retrains once the collection reaches `index.RETRAIN_GROWTH` times the size it was trained
at. This script measured the growth that rule uses (2: at 4x, queries took 2.4x a retrained index's time).
Growth changes two things at fixed parameters: the inverted lists get longer (nprobe lists now hold g times
the vectors: slower), and the compressed codes must tell apart more neighbours (a shortlist of k x k_factor
holds fewer of the true ones: lower recall). A fresh index at the larger size has more lists and parameters
tuned for it.

For a base of N0 vectors (2048-d, `benchmarks/synthetic.py`: near-duplicate photos of things in Zipf-sized
classes, the structure of real embeddings; written once into --cache) and each growth g in --growth:

- **base**: the index `auto` chooses for N0 vectors under --memory-budget (small enough that it is the
  compressed IVF-PQ one; or --factory), trained on a seeded sample of the first N0 vectors and tuned on
  held-out ones to recall@10 >= --target-recall (`ann.train`, `ann.add`, `tuning.tune`, as `build_index` does).
- **in place**: the base index with rows N0 .. g*N0 added (`ann.add`), searched with the base's parameters.
- **retrained**: a fresh index built, trained and tuned on the first g*N0 vectors: what `build_index` makes
  when it retrains (with "auto", `tuning.choose` at g*N0; a --factory with {nlist} gets `tuning.ivf_lists`).
  At g = 1 it is the base itself.
- **removed 20%**: a copy of the in-place index with a seeded random --remove share of its vectors removed
  (`remove_ids`), recall measured against exact search over the vectors left.

Both are measured on the same --queries fresh queries (`synthetic.queries(among=g*N0)`: new photos of things
in the collection, none of them a collection vector) against exact search (`ann.exact_search`): recall@10
after re-ranking from the shards, and single-query p50 (one thread; the in-place and retrained searches
alternate query by query, so that other work on the machine slows both alike). In-place updating holds at g
while its recall stays >= --target-recall and its p50 stays within --latency-ratio (1.5) of the retrained
index's; the summary names the first growth where it does not, and so the growth the retraining rule should use.

The vectors grow by more of the same (every block of rows is drawn from one world): this measures the
cost of growth alone, not of a collection that drifts to new kinds of photos, which would only retrain sooner.

Run from the repository root (1.7 GB of disk for the vectors; 26 minutes on 2 cores shared with other work, at a
load average of 6 to 10, most of it training and tuning the four indexes; one FAISS thread, which on a busy machine
is no slower than two that spin waiting for each other):
`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ann_update.py --cache /work/cache/ann_update`
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # machine_description imports TensorFlow: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import faiss
import numpy as np

from benchmarks import synthetic
from benchmarks.common import code_version, load_average, machine_description, print_table, summary_context
from imagesearch import ann, tuning
from imagesearch.index import RETRAIN_GROWTH
from imagesearch.vectors import FileSource, VectorStore

K, METRIC = 10, "l2"
HEADERS = ["growth", "vectors", "in-place recall@10", "in-place p50 ms", "retrained params", "retrained recall@10",
           "retrained p50 ms", "in-place recall@10, {removed} removed"]
#: --smoke: PCA in front, IVF, 4-bit PQ (what 2,000 64-d vectors can train), the shape of auto's IVF-PQ.
SMOKE_FACTORY = "PCAR32,IVF{nlist},PQ16x4"


@dataclass
class Built:
    """An index, what it is, the rows it was trained on, its tuned parameters and how long it took."""

    index: faiss.Index
    factory: str
    structure: ann.Structure
    trained_on: int
    tuned: tuning.Tuning
    seconds: float

    @property
    def params(self) -> ann.SearchParams:
        return ann.SearchParams.parse(self.tuned.params)


@dataclass
class Row:
    """One growth's figures."""

    growth: float
    count: int
    in_place_recall: float
    in_place_p50: float
    retrained: Built
    retrained_recall: float
    retrained_p50: float
    removed_recall: float

    def holds(self, target: float, latency_ratio: float) -> bool:
        """In-place updating is good enough here: the target recall, within `latency_ratio` x the retrained p50."""
        return self.in_place_recall >= target and self.in_place_p50 <= latency_ratio * self.retrained_p50


# --- the vectors -----------------------------------------------------------------------------------------------------


def vector_store(folder: Path, count: int, dim: int, seed: int) -> tuple[VectorStore, float | None]:
    """A store over `count` synthetic vectors written into `folder` (reused when a run already wrote them), and the
    seconds writing took (None: reused). Row i has id i: re-ranking reads ids as rows."""
    start = time.perf_counter()
    reused = synthetic.load_store(folder).rows == count if (folder / synthetic.DESCRIPTION).exists() else False
    paths = synthetic.write_vectors(folder, count, dim, seed)  # a no-op on a complete folder of the same arguments
    sizes = [np.load(path, mmap_mode="r").shape[0] for path in paths]
    rows = np.concatenate([np.arange(n) for n in sizes])
    locations = np.column_stack([np.repeat(np.arange(len(sizes)), sizes), rows])
    store = VectorStore([FileSource(path) for path in paths], locations, dim)
    return store, None if reused else time.perf_counter() - start


# --- building, searching, timing ----------------------------------------------------------------------------------


def factory_for(template: str, count: int, dim: int, budget: int) -> str:
    """The factory an index of `count` vectors gets: `auto`'s choice, or `template` with {nlist} filled in."""
    if template == "auto":
        return tuning.choose(count, dim, budget).factory
    return template.format(nlist=tuning.ivf_lists(count))


def build(store: VectorStore, factory: str, exact: Callable, target: float, seed: int) -> Built:
    """Build `factory` on every vector of `store`, train it on a seeded sample and tune it to `target` (as
    `build_index` does, with the same held-out tuning vectors)."""
    start = time.perf_counter()
    count = len(store)
    structure = ann.describe(factory, store.dim, METRIC, count)
    if not structure.nlist:
        raise SystemExit(f"{factory!r} is not an IVF index, which is what is updated in place; pass an IVF --factory")
    index = ann.new_index(factory, store.dim, METRIC)
    trained = ann.training_rows(count, structure, keep_out=tuning.TUNING_QUERIES, seed=seed)
    ann.train(index, store, trained, METRIC)
    ids = np.arange(count)
    ann.add(index, store, ids, METRIC)
    tuned = tuning.tune(index, structure, store, ids, METRIC, exact, trained, target=target, requested=factory)
    return Built(index, factory, structure, len(trained), tuned, time.perf_counter() - start)


def found_ids(index: faiss.Index, structure: ann.Structure, queries: np.ndarray, params: ann.SearchParams,
              exact: Callable) -> np.ndarray:
    """The `K` ids `index` answers for each query with `params`, re-ranked by their full vectors."""
    return ann.search(index, queries, K, METRIC, params, exact, structure.compressed)[1]


def paired_p50(searches: list[Callable[[np.ndarray], object]], queries: np.ndarray) -> list[float]:
    """Median milliseconds of each search, one query at a time on one FAISS thread.

    The searches alternate query by query (in turn, the order reversed every other query), so that a burst
    of other work on the machine slows them alike and their ratio holds even when their figures move.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for query in queries[:2]:  # untimed: first calls, page cache
            for search in searches:
                search(query[None])
        times = [[] for _ in searches]
        for number, query in enumerate(queries):
            order = range(len(searches)) if number % 2 == 0 else reversed(range(len(searches)))
            for which in order:
                start = time.perf_counter()
                searches[which](query[None])
                times[which].append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(before)
    return [1000 * float(np.median(measured)) for measured in times]


def factory_change(template: str, base: str, first: int, last: int, dim: int, budget: int) -> int | None:
    """The smallest count in first..last at which `auto` (or the template) no longer gives the `base` factory, or
    None: where it does, `build_index` rebuilds whatever RETRAIN_GROWTH says (the choice is monotone in the count)."""
    if factory_for(template, last, dim, budget) == base:
        return None
    low, high = first, last  # base at low, another at high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if factory_for(template, middle, dim, budget) == base else (low, middle)
    return high


# --- one growth -----------------------------------------------------------------------------------------------------


def measure_growth(args, store: VectorStore, base: Built, growth: float, exact: Callable,
                   facts: dict[str, bool], notes: list[str]) -> Row:
    """Grow the base index in place to growth x N0 (it is changed), build the retrained one, measure both."""
    count = round(growth * args.base)
    index = base.index
    if index.ntotal < count:
        ann.add(index, store.subset(np.arange(index.ntotal, count)), np.arange(index.ntotal, count), METRIC)
    facts[f"the in-place index holds all {count:,} vectors at {growth:g}x"] = index.ntotal == count
    grown = store.subset(np.arange(count))
    queries = synthetic.queries(args.queries, args.dim, args.seed, among=count)
    _, truth = ann.exact_search(grown, np.arange(count), queries, K, METRIC)

    if count == args.base:
        retrained = base
        notes.append(f"retrained at {growth:g}x: the base index itself ({base.factory})")
    else:
        log(f"{growth:g}x: building, training and tuning a fresh index on {count:,} vectors")
        factory = factory_for(args.factory, count, args.dim, args.budget)
        retrained = build(grown, factory, exact, args.target_recall, args.seed)
        notes.append(f"retrained at {growth:g}x: {factory}, trained on {retrained.trained_on:,} vectors, built and "
                     f"tuned in {retrained.seconds:.0f} s; tuning: {retrained.tuned.summary()}")

    in_place_recall = ann.recall_at_k(found_ids(index, base.structure, queries, base.params, exact), truth, K)
    retrained_recall = ann.recall_at_k(
        found_ids(retrained.index, retrained.structure, queries, retrained.params, exact), truth, K)
    in_place_p50, retrained_p50 = paired_p50([
        lambda query: found_ids(index, base.structure, query, base.params, exact),
        lambda query: found_ids(retrained.index, retrained.structure, query, retrained.params, exact),
    ], queries)

    removed = np.sort(np.random.default_rng([args.seed, 6, count]).choice(count, round(args.remove * count),
                                                                         replace=False))
    smaller = faiss.clone_index(index)
    smaller.remove_ids(removed.astype(np.int64))
    kept = np.setdiff1d(np.arange(count), removed, assume_unique=True)
    _, kept_truth = ann.exact_search(store.subset(kept), kept, queries, K, METRIC)
    after = found_ids(smaller, base.structure, queries, base.params, exact)
    facts[f"removing {len(removed):,} of {count:,} leaves {len(kept):,}"] = smaller.ntotal == len(kept)
    facts[f"no removed vector is found at {growth:g}x"] = not np.isin(after, removed).any()
    del smaller
    if retrained is not base:
        retrained.index = None  # its figures are kept, its memory released
    return Row(growth, count, in_place_recall, in_place_p50, retrained, retrained_recall, retrained_p50,
               ann.recall_at_k(after, kept_truth, K))


def table_row(row: Row) -> list[str]:
    return [f"{row.growth:g}x", f"{row.count:,}", f"{row.in_place_recall:.3f}", f"{row.in_place_p50:.3f}",
            str(row.retrained.params) or "-", f"{row.retrained_recall:.3f}", f"{row.retrained_p50:.3f}",
            f"{row.removed_recall:.3f}"]


def verdict(rows: list[Row], args) -> str:
    """The rule the figures support, in a sentence: the growth where in-place updating stops holding."""
    failing = next((row for row in rows if not row.holds(args.target_recall, args.latency_ratio)), None)
    held = [row.growth for row in rows if failing is None or row.growth < failing.growth]
    if failing is None:
        return (f"in place held through {rows[-1].growth:g}x (recall@10 >= {args.target_recall:.2f}, p50 within "
                f"{args.latency_ratio:g}x of a retrained index's): RETRAIN_GROWTH {RETRAIN_GROWTH} is safe here, "
                f"and up to {rows[-1].growth:g} would be")
    why = []
    if failing.in_place_recall < args.target_recall:
        why.append(f"recall@10 {failing.in_place_recall:.3f} < {args.target_recall:.2f}")
    if failing.in_place_p50 > args.latency_ratio * failing.retrained_p50:
        why.append(f"p50 {failing.in_place_p50 / failing.retrained_p50:.2f}x the retrained index's "
                   f"(> {args.latency_ratio:g}x)")
    if not held:
        rule = "the base itself misses the target on fresh queries, so no growth can be judged"
    elif max(held) == 1:
        rule = (f"retrain before {failing.growth:g}x (RETRAIN_GROWTH below {failing.growth:g}, not {RETRAIN_GROWTH}); "
                f"growths between 1x and {failing.growth:g}x would place it")
    else:
        rule = (f"retrain by {max(held):g}x (RETRAIN_GROWTH {max(held):g}"
                + (", as today)" if max(held) == RETRAIN_GROWTH else f" instead of {RETRAIN_GROWTH})"))
    recall_held = all(row.in_place_recall >= args.target_recall for row in rows)
    held_through = f"; recall@10 at fixed parameters held through {rows[-1].growth:g}x" if recall_held else ""
    return f"in place fails at {failing.growth:g}x ({', '.join(why)}): {rule}{held_through}"


# --- the command line ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line; --smoke replaces the sizes, dimension and factory with tiny ones."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=25_000, help="vectors the index is built and trained on (N0)")
    parser.add_argument("--growth", default="1,2,4,8", help="collection sizes as multiples of N0, comma-separated")
    parser.add_argument("--dim", type=int, default=2048, help="vector length")
    parser.add_argument("--queries", type=int, default=500, help="fresh queries recall and latency are measured on")
    parser.add_argument("--factory", default="auto",
                        help="'auto' (tuning.choose under --memory-budget) or an IVF factory; {nlist} becomes "
                             "tuning.ivf_lists of the size built (e.g. 'PCAR256,IVF{nlist},PQ64')")
    parser.add_argument("--memory-budget", default="64MB",
                        help="auto's budget: small, so that it chooses the compressed IVF-PQ index")
    parser.add_argument("--target-recall", type=float, default=tuning.DEFAULT_TARGET_RECALL)
    parser.add_argument("--latency-ratio", type=float, default=1.5,
                        help="in place holds while its p50 is at most this many times the retrained index's")
    parser.add_argument("--remove", type=float, default=0.2, help="share of the grown index's vectors removed")
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagesearch" / "ann_update"
    parser.add_argument("--cache", type=Path, default=default_cache,
                        help=f"folder for the generated vectors, reused by later runs (default {default_cache})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help=f"only check that the script works: 2,000 64-d vectors grown 2x, {SMOKE_FACTORY}, "
                             "a temporary cache")
    args = parser.parse_args(argv)
    if args.smoke:
        args.base, args.growth, args.dim, args.queries, args.factory = 2000, "1,2", 64, 200, SMOKE_FACTORY
    try:
        args.growths = sorted({float(value) for value in args.growth.split(",")})
        args.budget = tuning.parse_memory(args.memory_budget)
    except (ValueError, ann.IndexSpecError) as error:
        parser.error(f"--growth must be numbers separated by commas and --memory-budget like 64MB ({error})")
    if args.growths[0] < 1 or args.base < 1000 or args.queries < 20 or not 0 < args.remove < 1:
        parser.error("--growth must be at least 1, --base at least 1000, --queries at least 20, --remove in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its report ending with one summary line; return 1 if a sanity check failed."""
    args = parse_args(argv)
    if args.smoke:  # tiny arrays: OpenMP's threads cost more than they share (seconds, not tens, on a busy machine)
        faiss.omp_set_num_threads(1)
    print(machine_description())
    print(code_version())
    print(f"at the start: {load_average()}")
    largest = round(args.growths[-1] * args.base)
    cache = Path(tempfile.mkdtemp(prefix="ann-update-")) if args.smoke else args.cache
    facts: dict[str, bool] = {}
    notes: list[str] = []
    rows: list[Row] = []
    try:
        store, made = vector_store(cache / f"{largest}x{args.dim}-seed{args.seed}", largest, args.dim, args.seed)
        notes.append(f"setup: {largest:,} synthetic vectors " + ("reused from the cache" if made is None else
                                                                 f"generated in {made:.0f} s"))
        exact = store.reader().take  # ids are rows
        factory = factory_for(args.factory, args.base, args.dim, args.budget)
        log(f"base: building, training and tuning {factory} on {args.base:,} vectors")
        base = build(store.subset(np.arange(args.base)), factory, exact, args.target_recall, args.seed)
        for growth in args.growths:
            log(f"{growth:g}x: adding in place and measuring")
            rows.append(measure_growth(args, store, base, growth, exact, facts, notes))
    finally:
        if args.smoke:
            shutil.rmtree(cache, ignore_errors=True)

    print(f"\n### {factory} trained on the first {args.base:,} of {args.dim}-d vectors, grown in place with its "
          f"parameters {base.params} (recall@{K} on {args.queries} fresh queries; p50: one query, one thread)\n")
    headers = [header.format(removed=f"{args.remove:.0%}") for header in HEADERS]
    print_table(headers, [table_row(row) for row in rows])
    print()
    print(f"base: {factory}, trained on {base.trained_on:,} vectors, built and tuned in {base.seconds:.0f} s; "
          f"tuning: {base.tuned.summary()}")
    for note in notes:
        print(note)
    retrains_at = RETRAIN_GROWTH * base.trained_on
    print(f"rule today: RETRAIN_GROWTH {RETRAIN_GROWTH} x the {base.trained_on:,} vectors trained on (the training "
          f"sample, not the collection): build_index retrains at {retrains_at:,} vectors, "
          f"{retrains_at / args.base:.2f}x N0")
    changed = factory_change(args.factory, factory, args.base, largest, args.dim, args.budget)
    if changed is not None:
        print(f"note: with --factory {args.factory!r} the factory for {changed:,} vectors ({changed / args.base:.2f}x "
              f"N0) is {factory_for(args.factory, changed, args.dim, args.budget)}, not {factory}: build_index "
              f"with that factory argument rebuilds from there on, whatever RETRAIN_GROWTH says")
    for fact, holds in facts.items():
        print(f"check: {fact}: {'yes' if holds else 'NO'}")
    print(f"at the end: {load_average()}")
    context = summary_context(f"{factory} on {args.base:,} {args.dim}-d vectors grown to "
                              f"{', '.join(f'{g:g}x' for g in args.growths)}", args.smoke, all(facts.values()))
    print(f"summary: {verdict(rows, args)} {context}")
    return 0 if all(facts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
