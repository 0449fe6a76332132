"""How fast is embedding extraction on each runtime, and how far is it from the model alone?

Times, side by side in one run, ways of embedding the same image files with ResNet50 (`--weights`, seed 0):

  seed loop            the naive baseline: per file, `load_image`, then one Keras `model.predict` call;
  model alone (R)      `embedder.embed` on the images already decoded into uint8 batches: the ceiling of runtime R;
  pipeline (R)         what `python -m imagesearch extract --runtime R` does, end to end from the files on disk:
                       `extract_embeddings(folder, embedder, batch_size, checkpoint_dir=out)` (each batch journaled
                       to disk as it is embedded), `save_embeddings` to `out`, and the vectors read back from there;
  pipeline (auto → R)  the same with `make_embedder(runtime="auto", purpose="batch")`, the default, which picked R;
  decode only          `load_image` on every file: where the pipeline's remaining time goes.

R is every runtime available here (`imagesearch.runtimes.unavailable(R) is None`; `--runtimes` narrows the list),
each built by `make_embedder(runtime=R)`. Auto's pick is measured once per CPU and weights and remembered in
$IMAGESEARCH_CACHE/runtimes.json (default ~/.keras/imagesearch); point it at an empty folder to measure afresh.
Each runtime's fidelity is computed here: its model-alone vectors of the distinct images against tensorflow's
(`runtimes.compare`: the lowest cosine similarity of an image's two vectors, and the share of each image's 5
nearest others that both find). Timing: every embedder is warmed up at every batch shape, and the Keras predict
loop and one pipeline run once, untimed; then in each of `--repeats` rounds every mode runs once, in turn, so that
other work on the machine slows them alike, and each mode's fastest round counts.
Targets: auto's pipeline >= 1.4x tensorflow's model alone on CPUs without native bfloat16 (no avx512_bf16 or
amx_bf16 flag), >= 0.9x its own runtime's model alone, and on CPUs with native bfloat16 >= 1x the fastest
single runtime's pipeline. `--backbone tflite --weights model.tflite` times one model file (run by LiteRT as
stored) as pipeline, model alone and decode only, without runtimes or targets.
Run from the repository root: `.venv/bin/python benchmarks/extraction.py --count 448 --batch-size 32`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import keras
import numpy as np

from benchmarks.common import (
    add_runtimes_argument,
    fidelity_cells,
    images_benchmark_parser,
    load_average,
    machine_description,
    parse_images_benchmark_args,
    peak_rss_mib,
    print_table,
    runtime_embedders,
    summary_context,
    timed,
)
from imagesearch.collection import save_embeddings
from imagesearch.embedders import (
    BFLOAT16_CPU_FLAGS,
    FIDELITY_BARS,
    REFERENCE_RUNTIME,
    Embedder,
    Fidelity,
    RandomWeightsWarning,
    cpu_flags,
    cpu_supports_bfloat16,
)
from imagesearch.extract import extract_embeddings
from imagesearch.images import list_images, load_image
from imagesearch.litert import cache_dir
from imagesearch.runtimes import CHOICES_FILE, compare, make_embedder

SMOKE_COUNT, SMOKE_BATCH = 8, 4
#: auto's pipeline against tensorflow's model alone, on CPUs without native bfloat16.
TARGET_OVER_TENSORFLOW = 1.4
#: auto's pipeline against its own runtime's model alone.
TARGET_OVER_OWN_MODEL = 0.9
#: auto's pipeline against the fastest single runtime's pipeline, on CPUs with native bfloat16.
TARGET_OVER_BEST_PIPELINE = 1.0
#: The largest difference, relative to the largest value, between two modes' vectors of one runtime.
SAME = 1e-3
SEED_LOOP, DECODE = "seed loop", "decode only"


@dataclass
class Mode:
    """One way of embedding the files: `run` returns their vectors (the pixels, for decode only)."""

    run: Callable[[], np.ndarray]
    runtime: str | None = None  # the runtime of its embedder; None for decode only
    skipped: str | None = None  # why it is not timed, if it is not


#: A mode's result: its fastest seconds for all images and the vectors it returned.
Result = tuple[float, np.ndarray]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = images_benchmark_parser(__doc__.split("\n")[0], "mode", repeats=3, smoke=(SMOKE_COUNT, SMOKE_BATCH))
    parser.add_argument("--backbone", default="resnet50", help="resnet50 or tflite")
    parser.add_argument(
        "--weights", default="random", help="resnet50 weights (random, imagenet or a weights file), or the .tflite file"
    )
    add_runtimes_argument(parser)
    args = parse_images_benchmark_args(parser, argv)
    if args.backbone == "tflite" and args.runtimes:
        parser.error("--runtimes applies to resnet50; a .tflite file runs on litert, as stored")
    return args


def link_images(source: Path, count: int, folder: Path) -> list[Path]:
    """Fill `folder` with `count` uniquely named links to the images under `source`, cycling; return them sorted."""
    files = list_images(source)
    if not files:
        raise SystemExit(f"no images under {source}: pass --images FOLDER")
    folder.mkdir(exist_ok=True)
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


def pipeline(folder: Path, embedder: Embedder, batch_size: int) -> np.ndarray:
    """Extract with the journal on disk, save, and read the saved vectors back, into a fresh temporary folder."""
    with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-embeddings-") as out:
        embeddings = extract_embeddings(folder, embedder, batch_size, progress=False, checkpoint_dir=out)
        return save_embeddings(embeddings, out).vectors


def model_label(runtime: str, single: bool) -> str:
    return "model alone" if single else f"model alone ({runtime})"


def pipeline_label(runtime: str, single: bool, auto: bool = False) -> str:
    return "pipeline" if single else f"pipeline ({'auto → ' if auto else ''}{runtime})"


def make_modes(
    embedders: dict[str, Embedder], auto: Embedder | None, folder: Path, paths: list[Path], pixels: np.ndarray,
    batch_size: int,
) -> dict[str, Mode]:
    """Every mode, in the order they take turns: the seed loop, each runtime's model alone and pipeline, auto's
    pipeline, decode only."""
    size = next(iter(embedders.values())).info.input_size
    single = auto is None  # a .tflite file: one runtime, as stored
    batches = [pixels[start : start + batch_size] for start in range(0, len(pixels), batch_size)]
    modes: dict[str, Mode] = {}
    reference = embedders.get(REFERENCE_RUNTIME)
    model = getattr(reference, "model", None)  # only TensorFlow's ResNet50 has a Keras model to `predict` with
    modes[SEED_LOOP] = Mode(lambda: seed_loop(model, paths, size), REFERENCE_RUNTIME,
                            None if model is not None else "no Keras model to predict with")

    def pipeline_mode(embedder: Embedder) -> Mode:
        # A runtime outside its fidelity bar makes vectors no collection takes: extraction refuses it.
        return Mode(lambda: pipeline(folder, embedder, batch_size), embedder.info.runtime, embedder.info.outside_bar())

    for runtime, embedder in embedders.items():
        modes[model_label(runtime, single)] = Mode(
            lambda e=embedder: np.concatenate([e.embed(batch) for batch in batches]), runtime
        )
        modes[pipeline_label(runtime, single)] = pipeline_mode(embedder)
    if auto is not None:
        modes[pipeline_label(auto.info.runtime, single, auto=True)] = pipeline_mode(auto)
    modes[DECODE] = Mode(lambda: np.stack([load_image(path, size) for path in paths]))
    return modes


def warm_up(embedders: list[Embedder], model: keras.Model | None, paths: list[Path], pixels: np.ndarray,
            batch_size: int, temporary: Path) -> None:
    """Untimed: every embedder at every batch shape, the predict loop on one file, and one small pipeline run."""
    shapes = {len(pixels[start : start + batch_size]) for start in range(0, len(pixels), batch_size)}
    for embedder in embedders:
        for shape in sorted(shapes, reverse=True):
            embedder.embed(pixels[:shape])  # tracing, graph optimisation, LiteRT's tensor allocation
    if model is not None:
        seed_loop(model, paths[:1], embedders[0].info.input_size)  # builds Keras' predict function
    runnable = [embedder for embedder in embedders if embedder.info.outside_bar() is None]
    if runnable:  # the process's first journal, save and read back
        small = link_images(paths[0].parent, min(len(paths), batch_size), temporary / "warm-up")
        pipeline(small[0].parent, runnable[0], batch_size)


def time_modes(modes: dict[str, Mode], repeats: int) -> dict[str, Result]:
    """Run the modes in turn, `repeats` rounds; return {mode: (fastest seconds, vectors)} for those not skipped."""
    results: dict[str, Result] = {}
    for _ in range(repeats):
        for name, mode in modes.items():
            if mode.skipped is None:
                seconds, vectors = timed(mode.run)
                if name not in results or seconds < results[name][0]:
                    results[name] = (seconds, vectors)
    return results


def same_embeddings(modes: dict[str, Mode], results: dict[str, Result], single: bool) -> tuple[bool, str]:
    """Whether every mode of a runtime returned the vectors of its model alone: proof that they timed the same work;
    and the largest differences, relative to the largest value, per runtime."""
    worst: dict[str, float] = {}
    for name, mode in modes.items():
        own = model_label(mode.runtime, single) if mode.runtime else None
        if name not in results or own is None or own == name:
            continue
        reference = results[own][1]
        difference = float(np.abs(results[name][1] - reference).max()) / (float(np.abs(reference).max()) or 1.0)
        worst[name] = difference
    holds = all(difference < SAME for difference in worst.values())
    verdict = "each runtime's modes return the same embeddings" if holds else "WARNING: a runtime's modes differ"
    details = ", ".join(f"{name} {difference:.1e}" for name, difference in worst.items())
    return holds, f"check: {verdict} (largest difference from its model alone, of the largest value: {details})"


def fidelities(results: dict[str, Result], embedders: dict[str, Embedder], distinct: int) -> dict[str, Fidelity]:
    """Each runtime's model-alone vectors of the `distinct` first images against tensorflow's."""
    expected = results[model_label(REFERENCE_RUNTIME, False)][1][:distinct]
    return {runtime: compare(expected, results[model_label(runtime, False)][1][:distinct])
            for runtime in embedders if runtime != REFERENCE_RUNTIME}


def report(modes: dict[str, Mode], results: dict[str, Result], embedders: dict[str, Embedder],
           auto: Embedder | None, args: argparse.Namespace, distinct: int) -> bool:
    """Print the table, the checks, fidelity and ratios, and the summary line; return whether the checks held."""
    count, single = args.count, auto is None
    speed = {name: count / seconds for name, (seconds, _) in results.items()}
    fidelity = {} if single else fidelities(results, embedders, distinct)
    base = speed.get(model_label(REFERENCE_RUNTIME, single))
    rows = []
    for name, mode in modes.items():
        if mode.skipped is not None:
            rows.append([f"{name} (n/a: {mode.skipped})", *["-"] * (3 if single else 6)])
            continue
        cells = [name + (" (reference)" if name == DECODE else ""), count, f"{results[name][0]:.2f}",
                 f"{speed[name]:.1f}"]
        if not single:
            ratio = f"{speed[name] / base:.2f}x" if mode.runtime else "-"
            if name == model_label(REFERENCE_RUNTIME, single):
                quality = ["reference", "reference"]
            elif name.startswith("model alone") or name == pipeline_label(auto.info.runtime, single, auto=True):
                quality = fidelity_cells(fidelity[mode.runtime]) if mode.runtime != REFERENCE_RUNTIME else ["-", "-"]
            else:
                quality = ["-", "-"]
            cells += [ratio, *quality]
        rows.append(cells)
    headers = ["mode", "images", "seconds", "images/s"]
    if not single:
        headers += ["vs tensorflow model alone", "min cosine", "top-5 agreement"]
    print()
    print_table(headers, rows)
    print()
    rounds = f"{args.repeats} rounds" if args.repeats > 1 else "1 round"
    print(f"timing: time.perf_counter, the fastest of {rounds} in which the modes take turns; every embedder "
          "warmed up first at every batch shape, and the predict loop and a pipeline run once, untimed")
    holds, check = same_embeddings(modes, results, single)
    print(check)
    for runtime, measured in fidelity.items():
        own = embedders[runtime].info
        bar = FIDELITY_BARS[runtime]
        within = measured.min_cosine >= bar.min_cosine and measured.top5 >= bar.min_top5
        print(f"fidelity: {runtime} against tensorflow, model alone: {measured}: "
              f"{'within' if within else 'OUTSIDE'} its bar ({bar}); make_embedder measured {own.fidelity}")
    pipelines = {name: speed[name] for name in speed if name.startswith("pipeline")}
    if SEED_LOOP in speed:
        loop = pipeline_label(REFERENCE_RUNTIME, single)
        print(f"{loop} / seed loop: {speed[loop] / speed[SEED_LOOP]:.2f}x  "
              "(batches through one traced graph, not a predict per image)")
    decode_seconds = results[DECODE][0]
    per_runtime = []
    for runtime in embedders:
        model, whole = model_label(runtime, single), pipeline_label(runtime, single)
        if whole in speed:
            serial = results[model][0] / (results[model][0] + decode_seconds)
            per_runtime.append(f"{runtime} {speed[whole] / speed[model]:.2f}x (serial decode + model: {serial:.2f}x)")
    print(f"pipeline / model alone, per runtime: {', '.join(per_runtime)}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (the whole process: TensorFlow, {len(embedders) + (auto is not None)} "
          f"embedders, {count} decoded images); {load_average()}, at the end")
    context = summary_context(f"{args.weights if not single else 'tflite'}, batch {args.batch_size}, {count} images",
                              args.smoke, holds)
    if single:
        ratio = speed["pipeline"] / speed["model alone"]
        print(f"summary: pipeline {speed['pipeline']:.1f} img/s = {ratio:.2f}x the model alone {context}")
        return holds
    print(auto_report(speed, pipelines, auto.info.runtime, context))
    return holds


def auto_report(speed: dict[str, float], pipelines: dict[str, float], picked: str, context: str) -> str:
    """Print auto's three ratios and the targets that apply on this CPU; return the summary line."""
    name = pipeline_label(picked, False, auto=True)
    if name not in speed:
        return f"summary: pipeline (auto → {picked}) not timed: its runtime is outside its fidelity bar {context}"
    native = cpu_supports_bfloat16()
    flags = [flag for flag in BFLOAT16_CPU_FLAGS if flag in cpu_flags()]
    print(f"this CPU {'has native bfloat16 (' + ', '.join(flags) + ')' if native else 'has no native bfloat16'}: "
          f"the targets that apply are auto / {'fastest pipeline' if native else 'tensorflow model alone'} and "
          "auto / its own model alone")
    singles = {mode.removeprefix("pipeline (").rstrip(")"): value for mode, value in pipelines.items()
               if "auto" not in mode}  # {runtime: images/s of its pipeline}
    fastest = max(singles, key=singles.get)
    ratios = [
        ("tensorflow's model alone", speed[model_label(REFERENCE_RUNTIME, False)], TARGET_OVER_TENSORFLOW,
         not native),
        (f"{picked}'s model alone", speed[model_label(picked, False)], TARGET_OVER_OWN_MODEL, True),
        (f"the fastest runtime's pipeline ({fastest})", singles[fastest], TARGET_OVER_BEST_PIPELINE, native),
    ]
    verdicts, figures = [], []
    for against, value, target, applies in ratios:
        ratio = speed[name] / value
        # Auto on the fastest runtime is that runtime: two pipelines of it differ only by the machine's noise.
        same = target == TARGET_OVER_BEST_PIPELINE and fastest == picked
        met = ratio >= target or same
        verdict = ("met" + (" (auto runs that runtime)" if same and ratio < target else "") if met else "NOT met"
                   ) if applies else "does not apply on this CPU"
        print(f"{name} / {against}: {ratio:.2f}x, target >= {target}: {verdict}")
        figures.append(f"{ratio:.2f}x {against}")
        if applies:
            verdicts.append(met)
    if fastest == picked:
        print(f"auto picked the runtime whose pipeline was fastest here ({picked}): between the two, only noise")
    else:
        print(f"auto picked {picked}; the fastest pipeline here was {fastest}")
    verdict = "targets met" if all(verdicts) else "targets NOT met"
    return f"summary: {name} {speed[name]:.1f} img/s = {', '.join(figures)}; {verdict} {context}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report, ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # speed does not depend on the weight values
    print(machine_description())
    if args.backbone == "tflite":
        embedders, auto = {"litert": make_embedder("tflite", args.weights)}, None
    elif args.backbone == "resnet50":
        embedders, auto = runtime_embedders(args.weights, "batch", args.images, args.runtimes)
    else:
        raise SystemExit(f"unknown backbone {args.backbone!r}; choose resnet50 or tflite")
    available = len(list_images(args.images))
    distinct = min(args.count, available)
    described = next(iter(embedders.values())).info
    print(
        f"settings: {described}, {args.count} images from the {available} under {args.images}"
        f"{' (cycled)' if args.count > available else ''}, batch {args.batch_size}, best of {args.repeats}"
    )
    if auto is not None:
        print(f"runtimes: {', '.join(embedders)}; auto picked {auto.info.runtime} for batches (remembered in "
              f"{cache_dir() / CHOICES_FILE}); fidelity on the {distinct} distinct images")
    if args.smoke:
        print(f"SMOKE RUN ({args.count} images, batch {args.batch_size}): checks that the script works; "
              "figures not meaningful")
    with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
        folder = Path(temporary) / "images"
        paths = link_images(args.images, args.count, folder)
        pixels = np.stack([load_image(path, described.input_size) for path in paths])  # also fills the OS cache
        modes = make_modes(embedders, auto, folder, paths, pixels, args.batch_size)
        everyone = [*embedders.values(), *([auto] if auto is not None else [])]
        model = getattr(embedders.get(REFERENCE_RUNTIME), "model", None)  # for the seed loop, if it applies
        warm_up(everyone, model, paths, pixels, args.batch_size, Path(temporary))
        results = time_modes(modes, args.repeats)
    return 0 if report(modes, results, embedders, auto, args, distinct) else 1


if __name__ == "__main__":
    sys.exit(main())
