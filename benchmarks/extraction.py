"""How fast is embedding extraction, and how far is it from the model alone?

Times three ways of embedding the same image files with the same embedder, side by side in one run:

  seed loop    the naive baseline: per file, `load_image`, then one Keras `model.predict` call;
  pipeline     what `python -m imagesearch extract` does, end to end from the files on disk:
               `extract_embeddings(folder, embedder, batch_size, checkpoint_dir=out)` (each batch journaled
               to disk as it is embedded), `save_embeddings` to `out`, and the vectors read back from there;
  model alone  `embedder.embed` on the same images already decoded into uint8 batches: the ceiling.

A fourth row, decode only (`load_image` on every file), shows where the pipeline's remaining time goes.
Run from the repository root: `.venv/bin/python benchmarks/extraction.py --count 448 --batch-size 32`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import keras
import numpy as np

from benchmarks.common import (
    images_benchmark_parser,
    machine_description,
    parse_images_benchmark_args,
    peak_rss_mib,
    print_table,
    summary_context,
    timed,
)
from imagesearch.collection import save_embeddings
from imagesearch.embedders import Embedder, RandomWeightsWarning, make_embedder
from imagesearch.extract import extract_embeddings
from imagesearch.images import list_images, load_image

SMOKE_COUNT, SMOKE_BATCH = 8, 4

#: A mode's result: seconds for all images and the vectors it returned, or None where it does not apply.
Result = tuple[float, np.ndarray] | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = images_benchmark_parser(__doc__.split("\n")[0], "mode", repeats=1, smoke=(SMOKE_COUNT, SMOKE_BATCH))
    parser.add_argument("--backbone", default="resnet50", help="resnet50 or tflite")
    parser.add_argument("--weights", default="random", help="resnet50 weights, or the .tflite file")
    return parse_images_benchmark_args(parser, argv)


def link_images(source: Path, count: int, folder: Path) -> list[Path]:
    """Fill `folder` with `count` uniquely named links to the images under `source`, cycling; return them sorted."""
    files = list_images(source)
    if not files:
        raise SystemExit(f"no images under {source}: pass --images FOLDER")
    for i in range(count):
        name = files[i % len(files)]
        (folder / f"{i:06d}_{Path(name).name}").symlink_to((source / name).resolve())
    return [folder / path for path in list_images(folder)]  # the order extract_embeddings uses


def seed_loop(model: keras.Model, paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """Embed one file at a time with its own Keras `predict` call, as a first notebook would."""
    preprocess = keras.applications.resnet50.preprocess_input
    return np.concatenate(
        [model.predict(preprocess(load_image(path, size)[None].astype("float32")), verbose=0) for path in paths]
    )


def run_modes(embedder: Embedder, folder: Path, paths: list[Path], batch_size: int, repeats: int) -> dict[str, Result]:
    """Warm up then time each mode on the same files; return {mode: (seconds, vectors) or None}."""
    size = embedder.info.input_size

    def decode() -> np.ndarray:
        return np.stack([load_image(path, size) for path in paths])

    decode()  # warm-up; it also brings every file into the OS cache, for all modes alike
    decode_seconds, pixels = timed(decode, repeats)
    batches = [pixels[start : start + batch_size] for start in range(0, len(pixels), batch_size)]

    results: dict[str, Result] = {"seed loop": None}
    model = getattr(embedder, "model", None)  # only the Keras backbone has one to `predict` with
    if model is not None:
        seed_loop(model, paths[:1], size)  # warm-up: builds Keras' predict function
        results["seed loop"] = timed(lambda: seed_loop(model, paths, size), repeats)

    for batch in {len(batch): batch for batch in batches}.values():
        embedder.embed(batch)  # warm-up at each batch shape the pipeline and the model alone will see
    results["pipeline"] = timed(lambda: pipeline(folder, embedder, batch_size), repeats)
    results["model alone"] = timed(lambda: np.concatenate([embedder.embed(batch) for batch in batches]), repeats)
    results["decode only"] = (decode_seconds, pixels)
    return results


def pipeline(folder: Path, embedder: Embedder, batch_size: int) -> np.ndarray:
    """Extract with the journal on disk, save, and read the saved vectors back, into a fresh temporary folder."""
    with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-embeddings-") as out:
        embeddings = extract_embeddings(folder, embedder, batch_size, progress=False, checkpoint_dir=out)
        return save_embeddings(embeddings, out).vectors


def agreement(results: dict[str, Result]) -> str:
    """Say whether the modes returned the same embeddings: proof that they timed the same work."""
    reference = results["model alone"][1]
    scale = float(np.abs(reference).max()) or 1.0
    worst = max(
        float(np.abs(results[mode][1] - reference).max()) / scale
        for mode in ("seed loop", "pipeline")
        if results[mode] is not None
    )
    verdict = "the modes return the same embeddings" if worst < 1e-3 else "WARNING: the modes' embeddings differ"
    return f"check: {verdict} (largest difference {worst:.1e} of the largest value)"


def report(results: dict[str, Result], count: int, batch_size: int, backbone: str, smoke: bool) -> None:
    """Print the table, the checks and ratios, and the summary line."""
    speed = {mode: count / result[0] for mode, result in results.items() if result}
    rows = [
        [f"{mode} (n/a: no Keras model to predict with)", "-", "-", "-"] if result is None
        else [mode + (" (reference)" if mode == "decode only" else ""), count, f"{result[0]:.2f}", f"{speed[mode]:.1f}"]
        for mode, result in results.items()
    ]
    print()
    print_table(["mode", "images", "seconds", "images/s"], rows)
    print()
    print(
        "timing: time.perf_counter; each mode warmed up first with untimed calls (one predict, one embed "
        "per batch shape, one decode pass), so graph tracing and first-call costs are excluded"
    )
    print(agreement(results))
    against = []
    if "seed loop" in speed:
        over_loop = speed["pipeline"] / speed["seed loop"]
        print(f"pipeline / seed loop:   {over_loop:.2f}x  (batches through one traced graph, not a predict per image)")
        against.append(f"{over_loop:.1f}x the per-image predict loop")
    over_model = speed["pipeline"] / speed["model alone"]
    model_seconds = results["model alone"][0]
    serial = model_seconds / (model_seconds + results["decode only"][0])
    print(f"pipeline / model alone: {over_model:.2f}x  (decode only + model alone, summed, would give {serial:.2f}x)")
    against.append(f"{over_model:.2f}x the model alone")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (the whole process: TensorFlow, the model, {count} decoded images)")
    context = summary_context(f"{backbone}, batch {batch_size}, {count} images", smoke)
    print(f"summary: pipeline {speed['pipeline']:.1f} img/s = {', '.join(against)} {context}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its report, ending with one summary line."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # speed does not depend on the weight values
    embedder = make_embedder(args.backbone, args.weights, seed=0)
    available = len(list_images(args.images))
    print(machine_description())
    print(
        f"settings: {embedder.info}, {args.count} images from the {available} under {args.images}"
        f"{' (cycled)' if args.count > available else ''}, batch {args.batch_size}, best of {args.repeats}"
    )
    if args.smoke:
        print(f"SMOKE RUN ({args.count} images, batch {args.batch_size}): checks that the script works; "
              "figures not meaningful")
    with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
        paths = link_images(args.images, args.count, Path(temporary))
        results = run_modes(embedder, Path(temporary), paths, args.batch_size, args.repeats)
    report(results, args.count, args.batch_size, embedder.info.backbone, args.smoke)


if __name__ == "__main__":
    main()
