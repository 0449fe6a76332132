"""Which backbone costs what: speed, vector size and memory of every declared backbone, side by side.

Measures, in one run, each backbone of `imagesearch/backbones.py` (resnet50, efficientnetv2b0, convnext_tiny,
vit_b16), built by `make_embedder(name, "random", 0, runtime="tensorflow")` (random weights: nothing to download,
and speed does not depend on the weight values), and, where the file is there, the shared pretrained TFLite model
(`../shared/models/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite`, `make_embedder("tflite", path,
runtime="litert")`, run by LiteRT as stored: uint8-quantized). For each, on the same `--count` image files (the
demo images cycled as needed, or `--images FOLDER`):

  pipeline img/s     end to end from the files: `extract_embeddings(folder, embedder, batch_size)` in memory
                     (reading, hashing and decoding on its reading thread, the model on batches of `--batch-size`);
  model alone img/s  `embedder.embed` on the same images already decoded into uint8 batches;
  1 image ms         `embedder.embed` of a batch of one, the median of `--single` calls (a query's model time);
  dim, bytes/vector  the output dimension and its float32 size (what a collection and an exact index hold);
  GiB per 1M, hours per 1M   the vectors of a million images, and the time to embed them at the pipeline's rate;
  build s            the first `make_embedder` call, in a fresh process with TensorFlow and Keras already imported;
  first call s       the first `embedder.embed` of a full batch (TensorFlow traces and optimises its graph then);
  peak RSS MiB       the peak resident memory of the process that built and ran that backbone alone.

Each backbone lives in a process of its own (this script run with --worker), so that its peak memory is its own:
Linux's VmHWM of that process (a fresh address space at exec, unlike ru_maxrss, which starts from the launching
process's peak). The processes start one after the other (each builds its model, decodes the images, and is warmed
up untimed at every batch shape, a batch of one, and one small pipeline run), then stay alive, idle between turns:
in each of `--repeats` rounds, every backbone's process runs its pipeline, model alone and single-image calls in
turn, so that other work on the machine slows them alike; each figure's best round counts (for one image, the
lowest of the rounds' medians). Ratios are against resnet50, measured in the same run.
Run from the repository root: `.venv/bin/python benchmarks/backbones.py --count 208 --repeats 3`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported, here and in the workers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import numpy as np

from benchmarks.collection_scale import status_bytes
from benchmarks.common import (
    REPO_ROOT,
    code_version,
    images_benchmark_parser,
    load_average,
    machine_description,
    parse_images_benchmark_args,
    peak_rss_mib,
    print_table,
    summary_context,
)
from benchmarks.extraction import link_images
from imagesearch.backbones import BACKBONES, TFLITE
from imagesearch.images import list_images

#: The shared pretrained model: beside the project, never inside it (../shared/models/README.md).
SHARED_TFLITE = REPO_ROOT.parent / "shared" / "models" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
REFERENCE = "resnet50"
SMOKE_COUNT, SMOKE_BATCH, SMOKE_BACKBONES, SMOKE_SINGLE = 8, 4, ["resnet50", "efficientnetv2b0"], 3
#: The largest difference, relative to the largest value, between a backbone's pipeline and model-alone vectors.
SAME = 1e-3
FLOAT_BYTES, MILLION, MIB = 4, 1_000_000, 2**20
HEADERS = ["backbone", "dim", "bytes/vector", "pipeline img/s", "model alone img/s", "1 image ms", "build s",
           "first call s", "peak RSS MiB", "GiB per 1M", "hours per 1M"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = images_benchmark_parser(__doc__.split("\n")[0], "round", repeats=3, smoke=(SMOKE_COUNT, SMOKE_BATCH))
    parser.set_defaults(count=208)  # the demo set once
    parser.add_argument("--backbones", nargs="+", metavar="BACKBONE", choices=[*BACKBONES, TFLITE],
                        help=f"of {', '.join([*BACKBONES, TFLITE])} (default: all; tflite where its file is there); "
                        f"{REFERENCE}, the reference of the ratios, is always measured")
    parser.add_argument("--tflite", type=Path, default=SHARED_TFLITE, help="the .tflite file of the tflite backbone")
    parser.add_argument("--single", type=int, default=10, help="single-image calls per round, their median counts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one backbone's process: a JSON spec
    args = parse_images_benchmark_args(parser, argv)
    if args.worker:
        return args
    if args.smoke:
        args.backbones, args.single = SMOKE_BACKBONES, SMOKE_SINGLE
    if args.backbones is None:
        args.backbones = [*BACKBONES, *([TFLITE] if args.tflite.is_file() else [])]
    args.backbones = list(dict.fromkeys([REFERENCE, *args.backbones]))  # each once, resnet50 first
    if TFLITE in args.backbones and not args.tflite.is_file():
        parser.error(f"no {args.tflite}: pass --tflite FILE, or leave tflite out of --backbones")
    if args.single < 1:
        parser.error("--single must be at least 1")
    return args


# --- one backbone's process ---------------------------------------------------------------------------------------


def worker(spec: dict) -> None:
    """Build one backbone, warm it up, say it is ready; then run a round per "round" line on stdin until "stop".

    Answers are JSON lines on the original stdout; everything else printed (by libraries) goes to stderr.
    """
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from imagesearch.embedders import RandomWeightsWarning
    from imagesearch.extract import extract_embeddings
    from imagesearch.images import load_image
    from imagesearch.runtime import import_tensorflow
    from imagesearch.runtimes import make_embedder

    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # speed does not depend on the weight values
    import_tensorflow()
    import keras  # noqa: F401  imported before the build is timed: every backbone needs it, it is not the model's cost

    start = time.perf_counter()
    embedder = make_embedder(spec["backbone"], spec["weights"], 0, runtime=spec["runtime"])
    build_s = time.perf_counter() - start
    folder, batch_size = Path(spec["folder"]), spec["batch_size"]
    files = list_images(folder)
    pixels = np.stack([load_image(folder / name, embedder.info.input_size) for name in files])  # fills the OS cache
    batches = [pixels[start : start + batch_size] for start in range(0, len(pixels), batch_size)]
    start = time.perf_counter()
    embedder.embed(batches[0])
    first_call_s = time.perf_counter() - start
    for shape in sorted({len(batch) for batch in batches} | {1}, reverse=True):
        embedder.embed(pixels[:shape])  # every batch shape: oneDNN's primitives, LiteRT's tensor allocation
    extract_embeddings(spec["warm_up"], embedder, batch_size, progress=False)  # the process's first extraction

    def answer(**fields) -> None:
        answers.write(json.dumps(fields) + "\n")

    answer(ready=True, info=str(embedder.info), dim=embedder.info.dim, build_s=build_s, first_call_s=first_call_s)
    while sys.stdin.readline().strip() == "round":  # "stop", or the parent gone: report the peak and end
        start = time.perf_counter()
        embedded = extract_embeddings(folder, embedder, batch_size, progress=False)
        pipeline_s = time.perf_counter() - start
        start = time.perf_counter()
        alone = np.concatenate([embedder.embed(batch) for batch in batches])
        model_s = time.perf_counter() - start
        single = []
        for i in range(spec["single"]):
            one = pixels[i % len(pixels)][None]
            start = time.perf_counter()
            embedder.embed(one)
            single.append(time.perf_counter() - start)
        rows = {path: row for row, path in enumerate(embedded.records.paths)}
        vectors = embedded.vectors[[rows[name] for name in files]] if set(rows) == set(files) else None
        difference = (float(np.abs(vectors - alone).max()) / (float(np.abs(alone).max()) or 1.0)
                      if vectors is not None else float("inf"))
        answer(pipeline_s=pipeline_s, model_s=model_s, single_ms=1000 * float(np.median(single)),
               embedded=len(embedded.records), skipped=len(embedded.skipped), dim=int(alone.shape[1]),
               difference=difference)
    peak = status_bytes("VmHWM") / MIB or peak_rss_mib()  # no /proc (not Linux): ru_maxrss, an upper bound
    answer(peak_mib=peak)


class Worker:
    """The parent's handle on one backbone's process."""

    def __init__(self, name: str, spec: dict):
        self.name, self.failed = name, None
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=REPO_ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self.read()
        self.rounds: list[dict] = []
        self.peak_mib: float | None = None

    def read(self) -> dict | None:
        line = self.process.stdout.readline() if self.failed is None else ""
        if not line:
            code = self.process.wait()
            self.failed = self.failed or f"its process ended (exit code {code}; its error is above)"
            return None
        return json.loads(line)

    def run_round(self) -> None:
        if self.failed is None:
            self.process.stdin.write("round\n")
            if (result := self.read()) is not None:
                self.rounds.append(result)

    def stop(self) -> None:
        if self.failed is None:
            self.process.stdin.write("stop\n")
            if (result := self.read()) is not None:
                self.peak_mib = result["peak_mib"]
        self.process.stdin.close()
        self.process.wait()

    def best(self, key: str) -> float:
        return min(result[key] for result in self.rounds)


# --- the report ---------------------------------------------------------------------------------------------------


def row(worker: Worker, count: int) -> list[str]:
    """One table row: the backbone's figures, or why it has none."""
    if worker.failed is not None or not worker.rounds or worker.peak_mib is None:
        return [f"{worker.name} (failed: {worker.failed})", *["-"] * (len(HEADERS) - 1)]
    dim = worker.ready["dim"]
    pipeline = count / worker.best("pipeline_s")
    return [worker.name, str(dim), str(dim * FLOAT_BYTES), f"{pipeline:.1f}", f"{count / worker.best('model_s'):.1f}",
            f"{worker.best('single_ms'):.1f}", f"{worker.ready['build_s']:.1f}", f"{worker.ready['first_call_s']:.1f}",
            f"{worker.peak_mib:.0f}", f"{dim * FLOAT_BYTES * MILLION / 2**30:.2f}", f"{MILLION / pipeline / 3600:.1f}"]


def checks(workers: list[Worker], count: int) -> tuple[bool, list[str]]:
    """Whether every backbone ran, embedded every file, returned its declared dimension, and its pipeline gave its
    model-alone vectors (proof that both timed the same work); and the lines that say so."""
    ok = [worker for worker in workers if worker.failed is None and worker.rounds and worker.peak_mib is not None]
    failed = [worker.name for worker in workers if worker not in ok]
    lines = []
    complete = all(r["embedded"] == count and r["skipped"] == 0 for worker in ok for r in worker.rounds)
    declared = {worker.name: BACKBONES[worker.name].dim for worker in ok if worker.name in BACKBONES}
    dims = all(r["dim"] == worker.ready["dim"] == declared.get(worker.name, r["dim"])
               for worker in ok for r in worker.rounds)
    worst = {worker.name: max(r["difference"] for r in worker.rounds) for worker in ok}
    same = all(difference < SAME for difference in worst.values())
    lines.append(f"check: every backbone measured: {'yes' if not failed else 'NO, failed: ' + ', '.join(failed)}")
    lines.append(f"check: every pipeline embedded all {count} files, none skipped: {'yes' if complete else 'NO'}")
    lines.append(f"check: each backbone's vectors have its declared dimension "
                 f"({', '.join(f'{name} {dim}' for name, dim in declared.items())}): {'yes' if dims else 'NO'}")
    details = ", ".join(f"{name} {difference:.1e}" for name, difference in worst.items())
    lines.append(f"check: each pipeline returned its model-alone vectors (largest difference, of the largest value: "
                 f"{details}): {'yes' if same else 'NO'}")
    return not failed and complete and dims and same, lines


def report(workers: list[Worker], args: argparse.Namespace) -> bool:
    """Print the table, the checks, the ratios to resnet50 and the summary line; return whether the checks held."""
    count = args.count
    print()
    print_table(HEADERS, [row(worker, count) for worker in workers])
    print()
    rounds = f"{args.repeats} rounds" if args.repeats > 1 else "1 round"
    print(f"timing: time.perf_counter, the fastest of {rounds} in which the backbones' processes take turns (1 image: "
          f"the lowest of the rounds' medians of {args.single} calls); each warmed up first, untimed")
    print(f"pipeline img/s: extract_embeddings from the files, in memory, batch {args.batch_size}; model alone: "
          "embedder.embed on the decoded batches; hours per 1M at the pipeline's rate; GiB per 1M: float32 vectors; "
          "build s: the first make_embedder call; peak RSS: each backbone's own process (VmHWM), TensorFlow included")
    holds, lines = checks(workers, count)
    print("\n".join(lines))
    measured = {worker.name: worker for worker in workers if row(worker, count)[1] != "-"}
    reference = measured.get(REFERENCE)
    ratios = {}
    if reference is None:
        print(f"ratios: none, {REFERENCE} was not measured")
    else:
        base_pipeline, base_model = reference.best("pipeline_s"), reference.best("model_s")
        for name, worker in measured.items():
            ratios[name] = base_pipeline / worker.best("pipeline_s")
            if name == REFERENCE:
                continue
            print(f"{name} / {REFERENCE}: pipeline {ratios[name]:.2f}x, model alone "
                  f"{base_model / worker.best('model_s'):.2f}x the images/s; one image "
                  f"{worker.best('single_ms') / reference.best('single_ms'):.2f}x the time; vectors "
                  f"{worker.ready['dim'] / reference.ready['dim']:.2f}x the bytes")
    print(f"{load_average()}, at the end")
    weights = f"random weights, tflite {args.tflite.name}" if TFLITE in args.backbones else "random weights"
    context = summary_context(f"{weights}, batch {args.batch_size}, {count} images", args.smoke, holds)
    if reference is None:
        print(f"summary: no {REFERENCE}, no ratios {context}")
    else:
        speed = count / reference.best("pipeline_s")
        others = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items() if name != REFERENCE)
        fastest = max(ratios, key=ratios.get)
        print(f"summary: end-to-end images/s against {REFERENCE}'s {speed:.1f}: {others or 'no other backbone'}; "
              f"fastest {fastest} {context}")
    return holds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report, ending with one summary line; return 1 if a check failed."""
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    print(machine_description())
    print(code_version())
    available = len(list_images(args.images))
    print(f"settings: {', '.join(args.backbones)}; {args.count} images from the {available} under {args.images}"
          f"{' (cycled)' if args.count > available else ''}, batch {args.batch_size}, best of {args.repeats}, "
          f"{args.single} single-image calls per round")
    if args.smoke:
        print(f"SMOKE RUN ({args.count} images, batch {args.batch_size}, {len(args.backbones)} backbones): checks "
              "that the script works; figures not meaningful")
    with tempfile.TemporaryDirectory(prefix="imagesearch-benchmark-") as temporary:
        folder = Path(temporary) / "images"
        link_images(args.images, args.count, folder)
        warm_up = Path(temporary) / "warm-up"
        link_images(args.images, min(args.count, args.batch_size), warm_up)
        workers = []
        for name in args.backbones:
            tflite = name == TFLITE
            spec = {"backbone": name, "weights": str(args.tflite.resolve()) if tflite else "random",
                    "runtime": "litert" if tflite else "tensorflow", "folder": str(folder), "warm_up": str(warm_up),
                    "batch_size": args.batch_size, "single": args.single}
            print(f"[{time.strftime('%H:%M:%S')}] building {name}", file=sys.stderr, flush=True)
            workers.append(Worker(name, spec))
            if workers[-1].ready is not None:
                print(f"model: {name}: {workers[-1].ready['info']}")
        for number in range(args.repeats):
            print(f"[{time.strftime('%H:%M:%S')}] round {number + 1} of {args.repeats}", file=sys.stderr, flush=True)
            for each in workers:
                each.run_round()
        for each in workers:
            each.stop()
    return 0 if report(workers, args) else 1


if __name__ == "__main__":
    sys.exit(main())
