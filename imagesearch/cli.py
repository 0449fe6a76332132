"""Command line: `python -m imagesearch build` (the main job: `extract` then `index`), `query` and `evaluate`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np

from .backbones import DEFAULT as DEFAULT_BACKBONE
from .backbones import arguments_for, lines, names
from .collection import SKIPPED_FILE, load_embeddings, load_previous_embeddings, save_embeddings
from .errors import UserFacingError
from .evaluate import COMPARED, compare_configurations, score_index, self_check
from .extract import extract_embeddings
from .images import open_rgb
from .index import SearchIndex, build_index, load_index, load_previous_index, save_index
from .labels import labels_of
from .query import search_image, search_indexed
from .retrieval import DEFAULT_RETRIEVAL, PRESETS, Retrieval
from .runtimes import CHOICES as RUNTIME_CHOICES
from .runtimes import RUNTIME_ENV, make_embedder
from .storage import check_not_busy, embeddings_dir, exclusive, index_dir
from .tuning import DEFAULT_TARGET_RECALL

#: Skipped files listed on the console; all of them are in skipped.csv.
SKIPS_SHOWN = 20
#: Example queries `build` draws when no --example is given, spread over the collection.
EXAMPLES = 4


def build(args: argparse.Namespace) -> int:
    """Embed the images (only what changed since the last run), update the index, check it, draw queries."""
    if (status := extract(args)) != 0:
        return status
    search_index = _update_index(args)
    figure_path = Path(args.artifacts) / "example_queries.jpg"
    spread = np.linspace(0, len(search_index) - 1, min(EXAMPLES, len(search_index))).astype(int)
    queries = args.example or [search_index.paths[row] for row in spread]
    _save_examples(search_index, args.images, queries, figure_path, args.k)
    print(f"{len(queries)} example {'query' if len(queries) == 1 else 'queries'} drawn to {figure_path}.")
    print(f"Next: `{lab_command(args)}` opens the notebooks on these artifacts; start with notebooks/03_search.ipynb.")
    return 0


def lab_command(args: argparse.Namespace) -> str:
    """The `make lab` command that opens the notebooks with this run's settings (those that differ from make's)."""
    settings = [("IMAGES", args.images, "images"), ("ARTIFACTS", args.artifacts, "artifacts"),
                ("BACKBONE", args.backbone, DEFAULT_BACKBONE), ("WEIGHTS", args.weights, "imagenet"),
                ("RUNTIME", args.runtime or "auto", "auto")]
    return " ".join(["make lab", *(f"{name}={shlex.quote(str(value))}" for name, value, default in settings
                                   if str(value) != default)])


def extract(args: argparse.Namespace) -> int:
    """Embed the images into the artifacts' embeddings folder, only what changed since the last run."""
    if not Path(args.images).is_dir():  # before the model loads, which takes seconds
        raise FileNotFoundError(f"image folder {args.images} does not exist; pass --images FOLDER")
    check_not_busy(embeddings_dir(args.artifacts))  # likewise
    embedder = make_embedder(args.backbone, args.weights, args.seed, args.runtime, "batch", images=args.images)
    print(f"Embedding {args.images} with {embedder.info}")
    folder = embeddings_dir(args.artifacts)
    previous = load_previous_embeddings(folder)
    if args.ray is not None:  # the same plan, journal and commit; the reading, the model and the shards on Ray
        from .distributed import extract_on_ray, save_on_ray

        actors = f"{args.ray} model actor{'s' if args.ray > 1 else ''}"
        print(f"  on Ray ({os.environ.get('RAY_ADDRESS') or 'a local instance'}), {actors}")
        embeddings = extract_on_ray(args.images, embedder, folder, previous, args.batch_size, workers=args.ray)
        embeddings = save_on_ray(embeddings, folder)
    else:
        embeddings = extract_embeddings(args.images, embedder, args.batch_size, previous=previous,
                                        checkpoint_dir=folder)
        embeddings = save_embeddings(embeddings, folder)
    changes = embeddings.changes
    print(f"{embeddings.summary()}\n  this run: {changes.summary()}\n  {changes.ignored_summary()}")
    if previous is not None and previous.saved is not None and previous.saved.collection is None:
        print(f"  converted {folder} from an older format: the records are now in items.*.parquet files")
    if notes := changes.notes_summary():
        print(f"  {notes}")
    for skip in embeddings.skipped[:SKIPS_SHOWN]:
        print(f"  skipped {skip.path}: {skip.reason}")
    if skipped := embeddings.skipped:
        more = f"… and {len(skipped) - SKIPS_SHOWN} more; " if len(skipped) > SKIPS_SHOWN else ""
        print(f"  {more}all {len(skipped)} skipped files, with their reasons, are in {folder / SKIPPED_FILE}")
    if not len(embeddings):
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
        previous = load_previous_index(index_dir(args.artifacts), embeddings)
        retrieval = args.retrieval
        if retrieval is None and args.metric is None and previous is not None:
            retrieval = previous.retrieval  # an index keeps how it compares vectors until told otherwise
        extra = {}
        if args.ray is not None:  # the vectors added on Ray, a part per task, and the parts merged here
            from .distributed import add_on_ray

            extra["add_vectors"] = add_on_ray
        search_index = build_index(
            embeddings, args.factory, previous=previous, retrieval=retrieval, metric=args.metric, params=args.params,
            target_recall=args.target_recall, memory_budget=args.memory_budget, progress=True, **extra,
        )
    save_index(search_index, index_dir(args.artifacts))
    print(f"Index {search_index.factory} ({search_index.retrieval}) of {len(search_index)} vectors, "
          f"{search_index.changes.summary()}")
    measured = search_index.tuning
    if args.factory == "auto" and search_index.changes.rebuilt:
        for reason in measured.reasons:
            print(f"  chosen: {reason}")
    if search_index.structure.exact:  # facts that hold for exact search with any weights
        check = self_check(search_index, sample=1000)
        print(f"  checked {check.checked} images for themselves:")
        for line in check.lines():
            print(f"  check: {line}")
    else:  # an approximate index misses some neighbours by design: how many is what it measured
        print(f"  {measured.summary()}" + ("" if search_index.changes.rebuilt else
                                           f" (measured at {measured.count} vectors)"))
        if measured.target is not None and measured.recall < measured.target:
            print(f"warning: the target recall {measured.target:.2f} was not reached; raise --memory-budget, "
                  "or pass a --factory with more lists or longer codes", file=sys.stderr)
    return search_index


def query(args: argparse.Namespace) -> int:
    """Print the k nearest indexed images of one image file, embedded by the model the index names."""
    search_index = load_index(index_dir(args.artifacts))
    search_index.params.merged(args.params).check(search_index.structure)  # before the model loads, as is:
    open_rgb(args.image)  # a file that is no image is reported before the model loads, which takes seconds
    backbone, weights, seed = arguments_for(search_index.embedder, args.backbone, args.weights, args.seed)
    embedder = make_embedder(backbone, weights, seed, args.runtime, "query", images=search_index.image_root)
    for hit in search_image(search_index, embedder, args.image, args.k, params=args.params):
        print(f"{hit.rank + 1:3d}  {hit.distance:12.4f}  {hit.path}")
    return 0


def evaluate_index(args: argparse.Namespace) -> int:
    """Score the saved index on its own images against their labels; then, with --compare, each configuration."""
    search_index = load_index(index_dir(args.artifacts))
    if not 1 <= args.k < len(search_index):
        print(f"error: -k {args.k} cannot be scored: each of the {len(search_index)} images can find at most "
              f"{len(search_index) - 1} others; give -k from 1 to {len(search_index) - 1}", file=sys.stderr)
        return 2
    configurations = [Retrieval.parse(text) for text in args.compare.split(";")] if args.compare else []
    labels = labels_of(search_index.paths, args.labels, root=search_index.image_root)
    ks = tuple(sorted({1, args.k, 10} & set(range(1, len(search_index)))))
    scores = score_index(search_index, labels, ks)
    print(f"precision@{args.k} = {scores.overall[f'precision@{args.k}']:.3f}, mAP@{args.k} = "
          f"{scores.overall[f'mAP@{args.k}']:.3f} over {scores.evaluated} queries: the saved index as built "
          f"({search_index.factory}, {search_index.retrieval}; {search_index.embedder})")
    print(f"labels: {labels.summary()}")
    if configurations:
        embeddings = load_embeddings(embeddings_dir(args.artifacts))
        compared = compare_configurations(embeddings, labels, configurations, ks)
        names = list(dict.fromkeys([f"precision@{ks[0]}", f"precision@{args.k}", f"recall@{args.k}", f"mAP@{args.k}",
                                    f"mAP@{ks[-1]}"]))
        print("each configuration in an exact index of the same embeddings:")
        print(f"  {'configuration':<22}" + "".join(f"{name:>14}" for name in names))
        for config, result in compared.items():
            print(f"  {config:<22}" + "".join(f"{result.overall[name]:>14.3f}" for name in names))
    return 0


def _save_examples(search_index, image_root, queries: list[str], figure_path: Path, k: int) -> None:
    matplotlib.use("Agg")  # draw to a file, without a screen
    from .display import show_result_rows

    rows = [(Path(image_root) / query, search_indexed(search_index, query, k), f"query: {query}") for query in queries]
    figure = show_result_rows(rows, image_root)
    figure.suptitle(f"{len(search_index)} images, {search_index.factory} index, {search_index.retrieval} retrieval\n"
                    f"embedder: {search_index.embedder}",
                    fontsize=10)
    figure.savefig(figure_path, dpi=100, pil_kwargs={"quality": 85})  # photos: JPEG is a fraction of PNG


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="python -m imagesearch", description=__doc__)
    commands = main_parser.add_subparsers(dest="command", required=True)
    backbones = dict(formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="backbones (--backbone; query and the service read it from the index):\n  "
                     + "\n  ".join(lines()))
    build_command = commands.add_parser(
        "build", help="embed a folder of images and build its index (extract + index)", **backbones)
    extract_command = commands.add_parser(
        "extract", help="embed a folder of images, only what changed since last time", **backbones)
    index_command = commands.add_parser("index", help="build or update the index from the saved embeddings")
    query_command = commands.add_parser("query", help="find the indexed images nearest to an image file")
    evaluate_command = commands.add_parser(
        "evaluate", help="precision@k, recall@k and mAP@k of the index on its own labelled images"
    )
    evaluate_command.add_argument(
        "--labels", default="auto",
        help="where labels come from: folder (each image's folder), prefix (<label>__name.jpg), auto (the prefix "
        "where a name has one, else the folder), or a CSV file of path,label (default: %(default)s)")
    evaluate_command.add_argument(
        "--compare", nargs="?", const=";".join(COMPARED), default=None,
        help=f"also score these retrieval configurations, separated by ';' (default: {';'.join(COMPARED)})")
    functions = {build_command: build, extract_command: extract, index_command: index}
    functions |= {query_command: query, evaluate_command: evaluate_index}
    for command, function in functions.items():
        command.set_defaults(run=function)
        command.add_argument(
            "--artifacts", default="artifacts", help="folder of embeddings and index (default: %(default)s)"
        )
    for command in (build_command, query_command, evaluate_command):
        command.add_argument("-k", type=positive, default=5, help="neighbours per query (default: %(default)s)")
    for command in (build_command, extract_command):
        command.add_argument("--backbone", default=DEFAULT_BACKBONE,
                             help=f"the network that embeds the images: {names()} (default: %(default)s)")
        command.add_argument(
            "--weights", default="imagenet", help="imagenet, random, or a weights/model file (default: %(default)s)"
        )
        command.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    query_command.add_argument("--backbone", help="not needed: the index names the backbone that made it; "
                               "if given, it must be that one")
    query_command.add_argument("--weights", help="not needed, as --backbone; a model or weights file that has moved "
                               "since the collection was embedded")
    query_command.add_argument("--seed", type=int, help="not needed, as --backbone")
    for command in (build_command, extract_command, query_command):
        command.add_argument(
            "--runtime", default=None, choices=RUNTIME_CHOICES,
            help=f"what computes a Keras backbone: auto is the fastest runtime on this CPU whose vectors match "
            f"tensorflow's (measured once, then remembered); default: ${RUNTIME_ENV}, else auto",
        )
    for command in (build_command, extract_command):
        command.add_argument("--images", default="images", help="image folder (default: %(default)s)")
        command.add_argument(
            "--batch-size", type=positive, default=32, help="images per model call (default: %(default)s)"
        )
    for command in (build_command, extract_command, index_command):
        command.add_argument(
            "--ray", type=positive, nargs="?", const=1, default=None, metavar="WORKERS",
            help="run on Ray, the cluster $RAY_ADDRESS names, else a local one: the images read and embedded by "
            "WORKERS model actors (default 1) and the shards written by Ray tasks; an IVF index's vectors added by "
            "Ray tasks and merged. The artifacts folder must be one every node reads and writes at the same path")
    for command in (build_command, index_command):
        command.add_argument(
            "--factory", default="auto",
            help="FAISS index factory string (Flat, HNSW32, IVF4096,PQ64 ...), or auto: chosen from the collection's "
            "size and --memory-budget (default: %(default)s)",
        )
        command.add_argument(
            "--retrieval", default=None,
            help=f"how vectors are compared: {', '.join(PRESETS)}, or parts such as cosine,whiten,dba=5,qe=2,alpha=3 "
            f"(see imagesearch/retrieval.py; default: the existing index's, else {DEFAULT_RETRIEVAL})")
        command.add_argument("--metric", default=None, choices=["l2", "cosine"],
                             help="that metric alone, nothing else (the same as --retrieval l2 or cosine)")
        command.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL,
                             help="recall@10 the search parameters are tuned to reach (default: %(default)s)")
        command.add_argument("--memory-budget", default="4GB",
                             help="memory the index may take, for --factory auto (default: %(default)s)")
    for command in (build_command, index_command, query_command):
        command.add_argument(
            "--params", default=None,
            help="search parameters, e.g. nprobe=32,k_factor=8 (index: instead of tuning; query: for this query)",
        )
    build_command.add_argument(
        "--example", action="append",
        help="an indexed image to draw as an example query; repeatable (default: the first)",
    )
    query_command.add_argument("image", help="the image file to search with")
    return main_parser


def positive(text: str) -> int:
    """An argument that must be a whole number of at least 1 (a count of neighbours, images or workers)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.showwarning = _print_warning
    try:
        return args.run(args)
    except (UserFacingError, FileNotFoundError) as error:  # messages that say what to do: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyError as error:  # an --example that is not in the index
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the console as one `warning:` line each (Python shows each one once), not file and line."""
    print(f"warning: {message}", file=sys.stderr)
