"""Are the synthetic vectors of `benchmarks/synthetic.py` no easier to search than real embeddings?

Real embeddings: the shared MobileNet v1 (1024-d, `../shared/models/`) over every photo of
`../shared/data/caltech101_dev` and `caltech101_demo` and the 16 originals of the repo's `images/`
(1,032 photos), each edited with seeded augmentations (crop, mirror, rotation, brightness, contrast,
saturation, blur, JPEG) until the collection holds `--count` vectors (about 19 per photo at 20,000,
the unedited photo among them). Queries are new edits of photos drawn at random, so each query's exact
vector is not in the collection, as in reverse image search. Embedding 21,000 edited photos takes
about four minutes; the vectors are cached under `--cache` (default ~/.cache/imagesearch-bench/),
keyed by a hash of the model, the photos, the augmentation and the counts.

Synthetic embeddings: `--count` vectors from `benchmarks.synthetic` with its default parameters at
1024-d (the real dimension) and 2048-d (the dimension the 1M benchmarks use), with its own queries;
and, to tell the geometry from the make-up of the collection, 1024-d with the real collection's
groups (every item shown by count/photos photos, as every real photo is by its edits).

For each set, side by side in one run: the statistics the generator was fitted to, exact top-10 by
FAISS IndexFlatL2, then recall@10 against it for IVF-Flat and IVF-PQ (nlist = 4*sqrt(N) rounded to a
power of two, trained on a seeded sample; PQ with dim/16 one-byte codes, no re-ranking) at nprobe
1, 2, 4, ... nlist. The claim, checked in the summary line: at every nprobe the synthetic recall is at
most the real one plus `--tolerance` ("no easier"). `--plot FILE` saves the curves as a PNG.
Run from the repository root: `.venv/bin/python benchmarks/realism.py --plot /tmp/realism.png`
(about 8 minutes on 2 cores once the real vectors are cached, most of it training IVF-PQ; `--no-pq`
leaves it out).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # machine_description imports TensorFlow: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import faiss
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from benchmarks import synthetic
from benchmarks.common import DEMO_IMAGES, REPO_ROOT, code_version, machine_description, print_table, summary_context
from imagesearch.images import list_images, open_rgb

K, TOLERANCE = 10, 0.02
SMOKE_COUNT, SMOKE_QUERIES = 300, 50

#: The photos the real embeddings are made of, relative to the repository root, each a folder searched recursively.
SHARED = REPO_ROOT.parent / "shared"
PHOTO_FOLDERS = (SHARED / "data" / "caltech101_dev", SHARED / "data" / "caltech101_demo", DEMO_IMAGES)
MODEL = SHARED / "models" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"

#: Changes whenever `augment` does: it is part of the cache key, so a changed augmentation re-embeds.
AUGMENT_VERSION = "1"

#: Queries use augmentation numbers from here on, so no query is ever one of the base vectors.
QUERY_AUGMENTATIONS = 1_000_000


def source_photos(folders: tuple[Path, ...] = PHOTO_FOLDERS) -> list[Path]:
    """The photos to augment: every image of the shared Caltech folders, and the originals of the repo's demo set.

    The demo set's other files are edited copies of its 16 originals (a crop, a mirror image...); augmenting
    them as well would make groups of 7 x more near-duplicates than any other photo has. Its `caltech101/`
    holds the photos of the shared `caltech101_demo`, already taken from there: they are left out too.
    """
    photos = []
    for folder in folders:
        if folder.is_dir():
            names = list_images(folder)
            if folder == DEMO_IMAGES:
                names = [name for name in names if "__original" in name]
            photos += [folder / name for name in names]
    return photos


def augment(photo: Image.Image, seed: Sequence[int]) -> np.ndarray:
    """One seeded edit of `photo`, as a (224, 224, 3) uint8 array: what a person's other copy of it might look like.

    A random crop of 35-100% of the area at an aspect ratio within 3:4..4:3, mirrored half the time, rotated by up
    to 20 degrees in one case out of three, with brightness, contrast and saturation each scaled by 0.6-1.4,
    blurred in one case out of four and saved as a low-quality JPEG in one case out of two. Seed (photo, 0) is the
    photo itself, only resized.
    """
    if seed[-1] == 0:
        return np.asarray(photo.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.uint8)
    rng = np.random.default_rng([*seed, 14])
    area, ratio = rng.uniform(0.35, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    width = min(photo.width, max(8, round(photo.width * np.sqrt(area * ratio))))
    height = min(photo.height, max(8, round(photo.height * np.sqrt(area / ratio))))
    left, top = int(rng.integers(photo.width - width + 1)), int(rng.integers(photo.height - height + 1))
    image = photo.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if rng.random() < 1 / 3:
        image = image.rotate(rng.uniform(-20, 20), Image.Resampling.BILINEAR)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.6, 1.4))
    image = image.resize((224, 224), Image.Resampling.BILINEAR)
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(20, 90)))
        image = Image.open(buffer).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class VectorSet:
    """Vectors to search: `base` (n, dim) and held-out `queries` (q, dim), with the photo or item each one shows."""

    name: str
    base: np.ndarray
    queries: np.ndarray
    base_groups: np.ndarray
    query_groups: np.ndarray


def real_plan(photos: int, count: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(photo, augmentation) of every base row and every query: base rows go round the photos, queries are new edits.

    Row i of the base is edit i // photos of photo i % photos, so every photo has about count / photos edits (its
    unedited self among them); query j is an edit numbered from QUERY_AUGMENTATIONS of a photo drawn at random.
    """
    rows = np.arange(count)
    base = np.stack([rows % photos, rows // photos], axis=1)
    drawn = np.random.default_rng(seed).choice(photos, size=queries, replace=queries > photos)
    query = np.stack([drawn, QUERY_AUGMENTATIONS + np.arange(queries)], axis=1)
    return base, query


def embed_real(photos: Sequence[Path], count: int, queries: int, seed: int, cache: Path | None) -> VectorSet:
    """Embed `count` base edits and `queries` query edits of `photos` with the shared MobileNet, or read the cache.

    The cache file is named by a hash of everything the vectors depend on: the model file, the photos' bytes,
    the augmentation's version, the counts and the seed.
    """
    base_plan, query_plan = real_plan(len(photos), count, queries, seed)
    digest = hashlib.sha256(MODEL.read_bytes())
    for photo in photos:
        digest.update(photo.name.encode() + b"\0" + hashlib.sha256(photo.read_bytes()).digest())
    digest.update(json.dumps([AUGMENT_VERSION, count, queries, seed]).encode())
    path = cache / f"real-{digest.hexdigest()[:16]}.npz" if cache else None
    if path and path.is_file():
        with np.load(path) as saved:
            return VectorSet("real", saved["base"], saved["queries"], base_plan[:, 0], query_plan[:, 0])

    from imagesearch.runtimes import make_embedder

    embedder = make_embedder("tflite", weights=str(MODEL))
    plan = np.concatenate([base_plan, query_plan])
    vectors = np.empty((len(plan), embedder.info.dim), np.float32)
    order = np.lexsort((plan[:, 1], plan[:, 0]))  # photo by photo: each file is decoded once
    batch: list[np.ndarray] = []
    rows: list[int] = []
    start, current, photo = time.perf_counter(), -1, None
    for done, row in enumerate(order, 1):
        number, edit = plan[row]
        if number != current:
            current, photo = number, open_rgb(photos[number], min_size=(448, 448))
            photo.thumbnail((448, 448))
        batch.append(augment(photo, (int(number), int(edit))))
        rows.append(row)
        if len(batch) == 64 or done == len(order):
            vectors[rows] = embedder.embed(np.stack(batch))
            batch, rows = [], []
            if done % 2048 < 64 or done == len(order):
                print(f"embedded {done:,} of {len(order):,} edited photos, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, base=vectors[:count], queries=vectors[count:])
        os.replace(partial, path)
    return VectorSet("real", vectors[:count], vectors[count:], base_plan[:, 0], query_plan[:, 0])


def synthetic_set(name: str, count: int, queries: int, dim: int, seed: int, params: synthetic.Params) -> VectorSet:
    """`count` synthetic vectors and `queries` queries of `dim` dimensions, with the item each one shows."""
    base = synthetic.make_vectors(count, dim, seed, params)
    query = synthetic.queries(queries, dim, seed, among=count, params=params)
    items = synthetic.item_ids(count, seed, params)
    return VectorSet(name, base, query, items, items[synthetic.query_rows(queries, seed, among=count)])


# --- the statistics the generator was fitted to -----------------------------------------------------------------

#: (name, how it is computed), in the order of the statistics table.
STATISTICS = {
    "zeros": "share of coordinates that are 0",
    "channel means": "coefficient of variation of the per-dimension means",
    "norms": "coefficient of variation of the vector norms",
    "mean cosine": "cosine similarity of random pairs, mean",
    "PC 1": "share of variance in the first principal component",
    "PC 1-10": "... in the first 10",
    "PC 1-100": "... in the first 100",
    "PCs for 90%": "principal components that hold 90% of the variance",
    "spectrum slope": "slope of log eigenvalue against log rank, ranks 5-200",
    "relative contrast": "query's mean distance to the collection / distance to its nearest neighbour, median",
    "10th / 1st": "distance to the 10th neighbour / to the 1st, median over queries",
    "local dimension": "MLE of the local intrinsic dimension at 20 neighbours, median over queries",
    "within groups": "share of variance within a near-duplicate group (the edits of a photo, an item's photos)",
    "top 10 in group": "share of a query's exact top 10 showing the same photo or item (make-up, not fitted)",
}


def statistics(vectors: VectorSet, exact: tuple[np.ndarray, np.ndarray], seed: int) -> dict[str, float]:
    """The STATISTICS of `vectors`, given the exact search of its queries (squared distances, ids) at 20 neighbours."""
    rng = np.random.default_rng(seed)
    base = vectors.base
    sample = base[rng.choice(len(base), min(5000, len(base)), replace=False)].astype(np.float64)
    means, norms = sample.mean(axis=0), np.linalg.norm(sample, axis=1)
    first, second = rng.integers(len(sample), size=(2, 5000))
    unit = sample / np.maximum(norms, 1e-12)[:, None]
    centred = sample - means  # the covariance's eigenvalues, from the smaller of its two Gram matrices
    gram = centred @ centred.T if len(centred) < centred.shape[1] else centred.T @ centred
    eigenvalues = np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None) / len(sample)
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    ranks = np.arange(5, min(200, len(sample) // 4) + 1)
    others = base[rng.choice(len(base), min(1000, len(base)), replace=False)]
    mean_distance = np.sqrt(np.clip(pairwise_squared(vectors.queries, others), 0, None)).mean(axis=1)
    distances = np.sqrt(np.clip(exact[0], 1e-12, None))
    return {
        "zeros": float((base <= 0).mean()),
        "channel means": float(means.std() / means.mean()),
        "norms": float(norms.std() / norms.mean()),
        "mean cosine": float((unit[first] * unit[second]).sum(axis=1).mean()),
        "PC 1": float(cumulative[0]),
        "PC 1-10": float(cumulative[9]),
        "PC 1-100": float(cumulative[99]),
        "PCs for 90%": float(np.searchsorted(cumulative, 0.9) + 1),
        "spectrum slope": float(np.polyfit(np.log(ranks), np.log(eigenvalues[ranks - 1] + 1e-30), 1)[0]),
        "relative contrast": float(np.median(mean_distance / distances[:, 0])),
        "10th / 1st": float(np.median(distances[:, K - 1] / distances[:, 0])),
        "local dimension": float(np.median(-1 / np.log(distances[:, :-1] / distances[:, -1:]).mean(axis=1))),
        "within groups": within_group_share(base, vectors.base_groups),
        "top 10 in group": float((vectors.base_groups[exact[1][:, :K]] == vectors.query_groups[:, None]).mean()),
    }


def pairwise_squared(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distances between the rows of `a` and of `b`."""
    return (a**2).sum(axis=1)[:, None] - 2 * a @ b.T + (b**2).sum(axis=1)[None, :]


def within_group_share(vectors: np.ndarray, groups: np.ndarray) -> float:
    """The share of the total variance of `vectors` that lies within their groups (around each group's mean)."""
    order = np.argsort(groups, kind="stable")
    _, starts, group = np.unique(groups[order], return_index=True, return_inverse=True)
    means = np.add.reduceat(vectors[order].astype(np.float64), starts) / np.diff([*starts, len(order)])[:, None]
    within = ((vectors[order] - means[group]) ** 2).sum(axis=1).mean()
    return float(within / ((vectors - vectors.mean(axis=0)) ** 2).sum(axis=1).mean())


# --- recall against nprobe -----------------------------------------------------------------------------------------


def nlist_for(count: int) -> int:
    """4 * sqrt(count) rounded to the nearest power of two: the low end of FAISS' recommended range."""
    return 2 ** max(0, round(np.log2(4 * np.sqrt(count))))


def exact_search(vectors: VectorSet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances and ids of the exact `k` nearest neighbours of every query (IndexFlatL2)."""
    index = faiss.IndexFlatL2(vectors.base.shape[1])
    index.add(vectors.base)
    return index.search(vectors.queries, k)


def recall_curve(vectors: VectorSet, factory: str, truth: np.ndarray, seed: int) -> dict[int, float]:
    """Recall@K against `truth` of the index `factory` over `vectors`, at nprobe 1, 2, 4, ... nlist.

    Trained on a seeded sample of 64 vectors per list (the whole collection where smaller), k-means seeded too.
    """
    index = faiss.index_factory(vectors.base.shape[1], factory)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = vectors.base[np.sort(rng.choice(len(vectors.base), min(len(vectors.base), 64 * ivf.nlist), replace=False))]
    index.train(sample)
    index.add(vectors.base)
    curve, nprobe = {}, 1
    while nprobe <= ivf.nlist:
        ivf.nprobe = nprobe
        _, found = index.search(vectors.queries, K)
        curve[nprobe] = recall(found, truth[:, :K])
        nprobe *= 2
    return curve


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """The share of the true neighbours found, over all queries."""
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


# --- the run ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="vectors in each collection")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries per collection")
    parser.add_argument("--seed", type=int, default=0, help="seeds the edits, the synthetic world and the training")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="synthetic recall may exceed real by this")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="folder for the embedded real vectors")
    parser.add_argument("--plot", type=Path, help="save the recall-versus-nprobe curves as this PNG")
    parser.add_argument("--pq", action=argparse.BooleanOptionalAction, default=True,
                        help="IVF-PQ curves too (about a minute per set to train; off in --smoke)")
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"only check that the script works: {SMOKE_COUNT} vectors, {SMOKE_QUERIES} queries, real photos from "
        "the demo sets only (no real set where ../shared is absent), no IVF-PQ",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.count, args.queries, args.pq = SMOKE_COUNT, SMOKE_QUERIES, False
    if args.count < 100 or args.queries < 1:
        parser.error("--count must be at least 100 (the statistics need as many) and --queries at least 1")
    return args


def default_cache() -> Path:
    """~/.cache/imagesearch-bench, or under $XDG_CACHE_HOME where it is set."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagesearch-bench"


def real_set(args: argparse.Namespace) -> tuple[VectorSet | None, str]:
    """The real vectors and a line saying what they are, or None and why there are none."""
    if not MODEL.is_file():
        return None, f"real: none, {MODEL} is absent (a clone outside the project's machines): synthetic only"
    folders = (SHARED / "data" / "caltech101_demo", DEMO_IMAGES) if args.smoke else PHOTO_FOLDERS
    photos = source_photos(folders)
    if not photos:
        return None, f"real: none, no photos in {', '.join(str(folder) for folder in folders)}: synthetic only"
    start = time.perf_counter()
    vectors = embed_real(photos, args.count, args.queries, args.seed, args.cache)
    return vectors, (
        f"real: {len(photos):,} photos ({', '.join(folder.name for folder in folders if folder.is_dir())}), "
        f"{args.count:,} edits of them ({args.count / len(photos):.1f} per photo) and {args.queries:,} query edits, "
        f"embedded by {MODEL.name} (or read from {args.cache}) in {time.perf_counter() - start:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print its tables ending with one summary line; return 1 if synthetic is easier (except
    in a smoke run, whose figures mean nothing)."""
    args = parse_args(argv)
    print(machine_description())
    print(code_version())
    if args.smoke:
        print(f"SMOKE RUN ({args.count} vectors, {args.queries} queries): checks that the script works; "
              "figures not meaningful")
    real, said = real_set(args)
    print(said)
    sets = [real] if real else []
    for name, dim, params in (
        ("synthetic 1024", 1024, synthetic.DEFAULT),
        ("synthetic 2048", 2048, synthetic.DEFAULT),
        *([("synthetic 1024, real's groups", 1024, real_groups(real))] if real else []),
    ):
        start = time.perf_counter()
        sets.append(synthetic_set(name, args.count, args.queries, dim, args.seed, params))
        print(f"{name}: generated in {time.perf_counter() - start:.1f} s")
    nlist = nlist_for(args.count)
    factories = {"IVF-Flat": lambda d: f"IVF{nlist},Flat"}
    if args.pq:  # "np": no polysemous training, which takes minutes and does not change the recall
        factories["IVF-PQ"] = lambda d: f"IVF{nlist},PQ{d // 16}np"
    print(
        f"settings: {args.count:,} vectors, {args.queries:,} queries, recall@{K} against IndexFlatL2, "
        f"nlist {nlist} (4*sqrt(N) to a power of two), "
        f"{'IVF-PQ with dim/16 one-byte codes and no re-ranking' if args.pq else 'no IVF-PQ'}, "
        f"k-means and training sample seeded ({args.seed}); synthetic parameters: {synthetic.DEFAULT.to_dict()}"
    )
    curves: dict[str, dict[str, dict[int, float]]] = {kind: {} for kind in factories}
    figures: dict[str, dict[str, float]] = {}
    for vectors in sets:
        start = time.perf_counter()
        exact = exact_search(vectors, 2 * K)
        figures[vectors.name] = statistics(vectors, exact, args.seed)
        for kind, factory in factories.items():
            curves[kind][vectors.name] = recall_curve(vectors, factory(vectors.base.shape[1]), exact[1], args.seed)
        print(f"{vectors.name}: searched in {time.perf_counter() - start:.1f} s")
    report(sets, curves, figures, args, nlist)
    if args.plot:
        plot(curves, args.plot, args.count)
        print(f"plot: {args.plot}")
    holds = summarise(real, curves, args)
    return 0 if holds or args.smoke else 1


def real_groups(real: VectorSet) -> synthetic.Params:
    """The default parameters with the real collection's make-up: every item shown by as many photos as a photo has
    edits."""
    return replace(synthetic.DEFAULT, group_mean=len(real.base) / len(np.unique(real.base_groups)), fixed_groups=True)


def report(
    sets: list[VectorSet], curves: dict[str, dict[str, dict[int, float]]], figures: dict[str, dict[str, float]],
    args: argparse.Namespace, nlist: int,
) -> None:
    """Print the recall tables, one per index kind, and the statistics table."""
    names = [vectors.name for vectors in sets]
    for kind, by_set in curves.items():
        print(f"\nrecall@{K} of {kind} (nlist {nlist}) against exact search, by nprobe:\n")
        nprobes = list(next(iter(by_set.values())))
        print_table(["nprobe", *(f"recall {name}" for name in names)],
                    [[str(p), *(f"{by_set[name][p]:.3f}" for name in names)] for p in nprobes])
    print("\nstatistics (the generator's parameters were fitted to the real column):\n")
    print_table(["statistic", *names], [
        [statistic, *(format_figure(figures[name][statistic]) for name in names)] for statistic in STATISTICS
    ])
    print()
    for statistic, meaning in STATISTICS.items():
        print(f"  {statistic}: {meaning}")


def format_figure(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot(curves: dict[str, dict[str, dict[int, float]]], path: Path, count: int) -> None:
    """Save recall against nprobe, a line per set, solid for IVF-Flat and dashed for IVF-PQ, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for (kind, by_set), style in zip(curves.items(), ("-", "--")):
        for name, curve in by_set.items():
            line = axes.plot(list(curve), list(curve.values()), style, marker="o", markersize=3,
                             color=colours.get(name), label=f"{name}, {kind}")
            colours[name] = line[0].get_color()
    axes.set_xscale("log", base=2)
    nprobes = list(next(iter(next(iter(curves.values())).values())))
    axes.set_xticks(nprobes, [str(p) for p in nprobes])
    axes.set_xlabel("nprobe (lists searched)")
    axes.set_ylabel(f"recall@{K}")
    axes.set_title(f"Recall against nprobe, {count:,} vectors: real and synthetic embeddings")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summarise(real: VectorSet | None, curves: dict[str, dict[str, dict[int, float]]], args: argparse.Namespace) -> bool:
    """Print whether every synthetic curve stays at or below the real one plus the tolerance; return whether so."""
    settings = f"{args.count:,} vectors, recall@{K}, tolerance {args.tolerance}"
    if real is None:
        print(f"summary: no real embeddings here to compare with, synthetic curves only "
              f"{summary_context(settings, args.smoke)}")
        return True
    verdicts, holds = [], True
    for kind, by_set in curves.items():
        for name, curve in by_set.items():
            if name == real.name:
                continue
            excess = max(curve[p] - by_set[real.name][p] for p in curve)
            worst = max(curve, key=lambda p: curve[p] - by_set[real.name][p])
            ok = excess <= args.tolerance
            holds &= ok
            verdicts.append(f"{name} {kind} {'yes' if ok else 'NO'} (at most {excess:+.3f}, nprobe {worst})")
    verdict = "holds" if holds else "does NOT hold"
    print(f"summary: synthetic recall <= real recall + {args.tolerance} at every nprobe (no easier): {verdict}; "
          f"{'; '.join(verdicts)} {summary_context(settings, args.smoke)}")
    return holds


if __name__ == "__main__":
    sys.exit(main())
