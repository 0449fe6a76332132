"""How much faster is bfloat16 embedding than float32 on this CPU, and how close are its vectors?

Embeds the same images with two ResNet50 embedders of the same weights, side by side in one run:

  float32    the default;
  bfloat16   `precision="bfloat16"`: TensorFlow's oneDNN bfloat16 rewrite, where the CPU computes bfloat16
             natively (avx512_bf16 or amx_bf16); elsewhere the script says so and measures float32 only.

Speed is the model alone: `embedder.embed` on images already decoded into uint8 batches, warmed up first.
The repeats alternate between the two precisions, keeping each one's fastest, so other work on the machine
slows both alike. Fidelity is measured on the distinct images (cycled copies would only repeat them): per
image, the cosine similarity and relative L2 error of the bfloat16 vector against the float32 one; top-5
agreement, the fraction of each image's 5 nearest other images in a Flat index that the two precisions
share; and precision@5 of finding an image's group (`imagesearch.evaluate`, for files named
`<group>__<variant>.jpg` like the demo set) for both.
Run from the repository root: `.venv/bin/python benchmarks/precision.py --count 448`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported: fewer start-up logs
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
from imagesearch.collection import Embeddings
from imagesearch.embedders import Embedder, RandomWeightsWarning, bfloat16_unavailable, make_embedder
from imagesearch.evaluate import evaluate, neighbour_rows
from imagesearch.images import list_images, load_image
from imagesearch.index import SearchIndex, build_index
from imagesearch.records import ImageRecord

SMOKE_COUNT, SMOKE_BATCH = 8, 4
K = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = images_benchmark_parser(__doc__.split("\n")[0], "precision", repeats=3, smoke=(SMOKE_COUNT, SMOKE_BATCH))
    parser.add_argument("--weights", default="random", help="ResNet50 weights: random, imagenet, or a weights file")
    return parse_images_benchmark_args(parser, argv)


def decode(source: Path, count: int, size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """Decode the first `count` images under `source` (all of them if fewer); return their paths and pixels."""
    paths = list_images(source)[:count]
    if len(paths) <= K:
        raise SystemExit(f"need more than {K} images under {source} to compare neighbours: pass --images FOLDER")
    return paths, np.stack([load_image(source / path, size) for path in paths])


def time_embedders(
    embedders: dict[str, Embedder], batches: list[np.ndarray], repeats: int
) -> dict[str, tuple[float, np.ndarray]]:
    """Warm up, then time each embedder on all batches, alternating; return {precision: (fastest seconds, vectors)}."""
    for embedder in embedders.values():
        for batch in {len(batch): batch for batch in batches}.values():
            embedder.embed(batch)  # warm-up at every batch shape: tracing and graph optimisation are not timed
    results: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(repeats):
        for name, embedder in embedders.items():
            seconds, vectors = timed(lambda e=embedder: np.concatenate([e.embed(batch) for batch in batches]))
            if name not in results or seconds < results[name][0]:
                results[name] = (seconds, vectors)
    return results


def flat_index(vectors: np.ndarray, paths: list[str], embedder: Embedder, root: Path) -> SearchIndex:
    """An exact (Flat) index of `vectors`, row i being the image `paths[i]`."""
    items = [ImageRecord(id=row, path=path, size=0, mtime_ns=0, sha256=f"{row:064x}") for row, path in enumerate(paths)]
    embeddings = Embeddings(vectors, items, embedder.info, str(root))
    return build_index(embeddings, "Flat")


def fidelity(reference: np.ndarray, approximate: np.ndarray) -> dict[str, float]:
    """Per-image cosine similarity and relative L2 error of `approximate` against `reference` (rows are images)."""
    norms = np.linalg.norm(reference, axis=1)
    cosine = (reference * approximate).sum(axis=1) / (norms * np.linalg.norm(approximate, axis=1))
    error = np.linalg.norm(approximate - reference, axis=1) / norms
    return {"cosine min": float(cosine.min()), "cosine mean": float(cosine.mean()), "error max": float(error.max()),
            "error mean": float(error.mean())}


def top_k_agreement(reference: SearchIndex, other: SearchIndex, k: int = K) -> float:
    """Mean fraction of each image's k nearest other images that both indexes return (order ignored)."""
    pairs = zip(neighbour_rows(reference, k), neighbour_rows(other, k))
    return float(np.mean([len(set(a) & set(b)) / k for a, b in pairs]))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its report, ending with one summary line."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # the limitation is stated in the report
    unavailable = bfloat16_unavailable()
    precisions = ["float32"] if unavailable else ["float32", "bfloat16"]
    embedders = {p: make_embedder("resnet50", args.weights, seed=0, precision=p) for p in precisions}
    reference = embedders["float32"]
    paths, distinct = decode(args.images, args.count, reference.info.input_size)
    pixels = distinct[np.arange(args.count) % len(distinct)]  # the distinct images first, then cycled
    batches = [pixels[start : start + args.batch_size] for start in range(0, args.count, args.batch_size)]

    print(machine_description())
    print(
        f"settings: {reference.info}, {args.count} images from the {len(distinct)} under {args.images}"
        f"{' (cycled)' if args.count > len(distinct) else ''}, batch {args.batch_size}, best of {args.repeats}, "
        f"{load_average()}, at the start"
    )
    if args.smoke:
        print(f"SMOKE RUN ({args.count} images, batch {args.batch_size}): checks that the script works; "
              "figures not meaningful")
    if unavailable:
        print(f"bfloat16: not measured, {unavailable}")

    results = time_embedders(embedders, batches, args.repeats)
    speed = {p: args.count / seconds for p, (seconds, _) in results.items()}
    vectors = {p: result[1][: len(distinct)] for p, result in results.items()}  # the distinct images' rows
    indexes = {p: flat_index(vectors[p], paths, embedders[p], args.images) for p in precisions}
    p_at_k = {p: evaluate(index, K) for p, index in indexes.items()}

    rows = [["float32 (reference)", args.count, f"{results['float32'][0]:.2f}", f"{speed['float32']:.1f}", "1.00x",
             "-", "-", "-", "-", f"{p_at_k['float32']:.3f}"]]
    if not unavailable:
        close = fidelity(vectors["float32"], vectors["bfloat16"])
        agreement = top_k_agreement(indexes["float32"], indexes["bfloat16"])
        ratio = speed["bfloat16"] / speed["float32"]
        rows.append(["bfloat16", args.count, f"{results['bfloat16'][0]:.2f}", f"{speed['bfloat16']:.1f}",
                     f"{ratio:.2f}x", f"{close['cosine min']:.6f}", f"{close['cosine mean']:.6f}",
                     f"{close['error max']:.1e}", f"{agreement:.3f}", f"{p_at_k['bfloat16']:.3f}"])
    print()
    print_table(["precision", "images", "seconds", "images/s", "vs float32", "cosine min", "cosine mean",
                 "rel. L2 error max", f"top-{K} agreement", f"precision@{K}"], rows)
    print()
    print(
        "timing: time.perf_counter on the model alone (pre-decoded uint8 batches), each embedder warmed up at every "
        "batch shape first; repeats alternate between the precisions"
    )
    print(
        f"fidelity: over the {len(distinct)} distinct images, bfloat16 vectors against float32 ones of the same "
        f"weights; top-{K} agreement: share of each image's {K} nearest others (Flat index) found by both; "
        f"precision@{K}: share of them in the image's own group"
    )
    if not unavailable:
        if np.array_equal(vectors["float32"], vectors["bfloat16"]):
            print("check: WARNING: the bfloat16 vectors equal the float32 ones bit for bit: the rewrite did not apply")
        else:
            print("check: the bfloat16 vectors differ from the float32 ones: the bfloat16 rewrite applied")
    if args.weights == "random":
        print(
            "limitation: random weights. Their activation statistics differ from trained ones, so bfloat16's error "
            "with pretrained (ImageNet) weights may be larger, and precision@5 here is not retrieval quality; no "
            "pretrained ResNet50 weights are available offline here: rerun with --weights imagenet (or a weights "
            "file) where they are"
        )
    print(f"load: {load_average()}, at the end; peak RSS {peak_rss_mib():.0f} MiB")
    where = summary_context(f"{args.weights} weights, batch {args.batch_size}, {args.count} images", args.smoke)
    if unavailable:
        print(f"summary: bfloat16 not available here, float32 only: {speed['float32']:.1f} img/s {where}")
    else:
        print(
            f"summary: bfloat16 {ratio:.2f}x float32 images/s ({speed['bfloat16']:.1f} vs {speed['float32']:.1f}); "
            f"cosine min {close['cosine min']:.6f}, top-{K} agreement {agreement:.3f}, precision@{K} "
            f"{p_at_k['bfloat16']:.3f} vs {p_at_k['float32']:.3f} {where}"
        )


if __name__ == "__main__":
    main()
