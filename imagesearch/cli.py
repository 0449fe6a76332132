"""Command line: `python -m imagesearch build` (the main job: `extract` then `index`), `query` and `evaluate`."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import matplotlib

from .embedders import PrecisionUnavailableError, WeightsUnavailableError, make_embedder
from .evaluate import evaluate, self_search_facts
from .extract import extract_embeddings, load_embeddings, load_previous_embeddings, save_embeddings
from .images import ImageLoadError
from .index import SearchIndex, build_index, load_index, load_previous_index, save_index
from .query import EmbedderMismatchError, search_image, search_indexed
from .storage import ArtifactError, embeddings_dir, exclusive, index_dir


def build(args: argparse.Namespace) -> int:
    """Embed the images (only what changed since the last run), update the index, check it, draw queries."""
    if (status := extract(args)) != 0:
        return status
    search_index = _update_index(args)
    figure_path = Path(args.artifacts) / "example_queries.jpg"
    _save_examples(search_index, args.images, args.example or search_index.paths[:1], figure_path, args.k)
    print(f"Example queries drawn to {figure_path}. Next: `make lab` and open notebooks/03_search.ipynb.")
    return 0


def extract(args: argparse.Namespace) -> int:
    """Embed the images into the artifacts' embeddings folder, only what changed since the last run."""
    if not Path(args.images).is_dir():  # before the model loads, which takes seconds
        raise FileNotFoundError(f"image folder {args.images} does not exist; pass --images FOLDER")
    embedder = make_embedder(args.backbone, args.weights, seed=args.seed, precision=args.precision)
    print(f"Embedding {args.images} with {embedder.info}")
    folder = embeddings_dir(args.artifacts)
    previous = load_previous_embeddings(folder)
    embeddings = extract_embeddings(args.images, embedder, args.batch_size, previous=previous, checkpoint_dir=folder)
    save_embeddings(embeddings, folder)
    print(f"{embeddings.summary()}\n  this run: {embeddings.changes.summary()}")
    for skip in embeddings.skipped:
        print(f"  skipped {skip.path}: {skip.reason}")
    if skipped := embeddings.skipped:
        print(f"  {len(skipped)} skipped files are listed in {folder / 'skipped.csv'}")
    if not embeddings.items:
        print("Nothing to index: no readable images were found.", file=sys.stderr)
        return 1
    return 0


def index(args: argparse.Namespace) -> int:
    """Build or update the index from the saved embeddings, and check it."""
    _update_index(args)
    return 0


def _update_index(args: argparse.Namespace) -> SearchIndex:
    with exclusive(embeddings_dir(args.artifacts)):  # no extraction may rewrite the shards while they are read
        embeddings = load_embeddings(embeddings_dir(args.artifacts))
        search_index = build_index(embeddings, args.factory, previous=load_previous_index(index_dir(args.artifacts)))
    save_index(search_index, index_dir(args.artifacts))
    print(f"Index {search_index.factory} of {len(search_index)} vectors, {search_index.changes.summary()}")
    for fact, holds in self_search_facts(search_index, sample=1000).items():
        print(f"  check: {fact}: {'yes' if holds else 'NO'}")
    return search_index


def query(args: argparse.Namespace) -> int:
    """Print the k nearest indexed images of one image file."""
    search_index = load_index(index_dir(args.artifacts))
    embedder = make_embedder(args.backbone, args.weights, seed=args.seed)
    for hit in search_image(search_index, embedder, args.image, args.k):
        print(f"{hit.rank + 1:3d}  {hit.distance:12.4f}  {hit.path}")
    return 0


def evaluate_index(args: argparse.Namespace) -> int:
    """Print precision@k of finding an image's group, for collections named `<group>__<variant>.<ext>`."""
    search_index = load_index(index_dir(args.artifacts))
    precision = evaluate(search_index, k=args.k)
    print(f"precision@{args.k} = {precision:.3f} over {len(search_index)} queries ({search_index.embedder})")
    return 0


def _save_examples(search_index, image_root, queries: list[str], figure_path: Path, k: int) -> None:
    matplotlib.use("Agg")  # draw to a file, without a screen
    from .display import show_result_rows

    rows = [(Path(image_root) / query, search_indexed(search_index, query, k), f"query: {query}") for query in queries]
    figure = show_result_rows(rows, image_root)
    figure.suptitle(f"{len(search_index)} images, {search_index.factory} index, embedder {search_index.embedder}")
    figure.savefig(figure_path, dpi=72, pil_kwargs={"quality": 85})  # photos: JPEG is a fraction of PNG


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="python -m imagesearch", description=__doc__)
    commands = main_parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser("build", help="embed a folder of images and build its index (extract + index)")
    extract_command = commands.add_parser("extract", help="embed a folder of images, only what changed since last time")
    index_command = commands.add_parser("index", help="build or update the index from the saved embeddings")
    query_command = commands.add_parser("query", help="find the indexed images nearest to an image file")
    evaluate_command = commands.add_parser(
        "evaluate", help="precision@k of finding each image's group (files named <group>__<variant>.jpg)"
    )
    functions = {build_command: build, extract_command: extract, index_command: index}
    functions |= {query_command: query, evaluate_command: evaluate_index}
    for command, function in functions.items():
        command.set_defaults(run=function)
        command.add_argument(
            "--artifacts", default="artifacts", help="folder of embeddings and index (default: %(default)s)"
        )
    for command in (build_command, query_command, evaluate_command):
        command.add_argument("-k", type=int, default=5, help="neighbours per query (default: %(default)s)")
    for command in (build_command, extract_command, query_command):
        command.add_argument("--backbone", default="resnet50", help="resnet50 or tflite (default: %(default)s)")
        command.add_argument(
            "--weights", default="imagenet", help="imagenet, random, or a weights/model file (default: %(default)s)"
        )
        command.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    for command in (build_command, extract_command):
        command.add_argument("--images", default="images", help="image folder (default: %(default)s)")
        command.add_argument(
            "--precision",
            default="float32",
            choices=["float32", "bfloat16", "auto"],
            help="ResNet50's arithmetic: auto is bfloat16 where the CPU computes it natively, faster "
            "(default: %(default)s)",
        )
        command.add_argument(
            "--batch-size", type=int, default=32, help="images per model call (default: %(default)s)"
        )
    for command in (build_command, index_command):
        command.add_argument("--factory", default="Flat", help="FAISS index factory string (default: %(default)s)")
    build_command.add_argument(
        "--example", action="append",
        help="an indexed image to draw as an example query; repeatable (default: the first)",
    )
    query_command.add_argument("image", help="the image file to search with")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: less start-up chatter
    warnings.simplefilter("always")  # show the random-weights warning on the console
    try:
        return args.run(args)
    except (WeightsUnavailableError, ArtifactError, EmbedderMismatchError, ImageLoadError, FileNotFoundError,
            PrecisionUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyError as error:  # an --example that is not in the index
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
