"""How does the search service hold up under load, and while images are being added?

Starts the real service (`uvicorn imagesearch.service:app`, its own process, on 127.0.0.1) over the demo
images, embedded and indexed first into a temporary artifacts folder, then runs three phases one after the
other, each `--seconds` long:

  one client       a single client in a loop: its p50 against `search_image` in one Python process (the same
                   embedder and index, no HTTP) is the service's overhead per request;
  loaded           `--clients` concurrent clients, each alternating a search by upload (a demo image's bytes,
                   POST /search) and a search by id (GET /images/{id}/neighbours);
  loaded + adding  the same, while another client adds a new image every second (POST /images with the token),
                   each change embedded, saved, indexed and swapped in by the service as it serves.

For each phase: requests, requests/s, p50 and p99 latency, and errors (any answer but 200, or a failed
connection). The clients share the machine's cores with the server, as a local deployment would.
Run from the repository root: `.venv/bin/python benchmarks/service_load.py --clients 8 --seconds 30`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported: fewer start-up logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script: import the repo's packages

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import DEMO_IMAGES, load_average, machine_description, print_table, summary_context
from imagesearch.collection import save_embeddings
from imagesearch.embedders import RandomWeightsWarning
from imagesearch.extract import extract_embeddings
from imagesearch.images import list_images
from imagesearch.index import build_index, load_index, save_index
from imagesearch.query import search_image
from imagesearch.runtimes import CHOICES, make_embedder
from imagesearch.storage import embeddings_dir, index_dir

TOKEN = "benchmark-token"
SMOKE_CLIENTS, SMOKE_SECONDS = 2, 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the loaded phases")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--weights", default="random", help="ResNet50 weights: random, imagenet or a file")
    parser.add_argument("--runtime", default="auto", choices=CHOICES, help="the service's runtime (default: auto)")
    parser.add_argument("-k", type=int, default=5, help="neighbours per search")
    parser.add_argument("--smoke", action="store_true",
                        help=f"only check that the script works: --clients {SMOKE_CLIENTS} --seconds {SMOKE_SECONDS}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.seconds = SMOKE_CLIENTS, SMOKE_SECONDS
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be at least 1 and --seconds positive")
    return args


class Phase:
    """What the clients of one phase saw: each request's seconds, and its failures."""

    def __init__(self, name: str):
        self.name, self.seconds, self.errors, self.lock = name, [], [], threading.Lock()

    def record(self, start: float, response: httpx.Response | Exception) -> None:
        elapsed = time.perf_counter() - start
        with self.lock:
            self.seconds.append(elapsed)
            if isinstance(response, Exception) or response.status_code != 200:
                self.errors.append(repr(response) if isinstance(response, Exception)
                                   else f"{response.status_code} {response.text[:120]}")

    def row(self, duration: float) -> list[object]:
        ms = 1000 * np.array(self.seconds)
        return [self.name, len(ms), f"{len(ms) / duration:.1f}", f"{np.percentile(ms, 50):.1f}",
                f"{np.percentile(ms, 99):.1f}", len(self.errors)]


def client_loop(base: str, phase: Phase, stop: threading.Event, queries: list[bytes], ids: list[int], k: int,
                number: int) -> None:
    """Alternate a search by upload and a search by id until `stop`."""
    with httpx.Client(base_url=base, timeout=120) as client:
        turn = number
        while not stop.is_set():
            start = time.perf_counter()
            try:
                if turn % 2 == 0:
                    data = queries[turn % len(queries)]
                    response = client.post("/search", params={"k": k}, files={"file": ("q.jpg", data)})
                else:
                    response = client.get(f"/images/{ids[turn % len(ids)]}/neighbours", params={"k": k})
            except httpx.HTTPError as error:
                response = error
            phase.record(start, response)
            turn += 1


def adder_loop(base: str, stop: threading.Event, added: list[int], failures: list[str]) -> None:
    """Add a new (noise) image every second until `stop`."""
    with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        seed = 0
        while not stop.is_set():
            buffer = io.BytesIO()
            Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 128, 3), np.uint8)).save(buffer, "PNG")
            response = client.post("/images", files={"files": (f"new{seed}.png", buffer.getvalue())})
            if response.status_code == 200:
                added.extend(response.json()["added"])
            else:
                failures.append(f"{response.status_code} {response.text[:120]}")
            seed += 1
            stop.wait(1.0)


def run_phase(base: str, name: str, clients: int, seconds: float, queries, ids, k, adding: bool) -> tuple:
    phase, stop = Phase(name), threading.Event()
    threads = [threading.Thread(target=client_loop, args=(base, phase, stop, queries, ids, k, number))
               for number in range(clients)]
    added: list[int] = []
    failures: list[str] = []
    if adding:
        threads.append(threading.Thread(target=adder_loop, args=(base, stop, added, failures)))
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return phase, time.perf_counter() - start, added, failures


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report, ending with one summary line; return 1 if a request failed."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)
    print(machine_description())
    print(f"at the start: {load_average()}")
    if args.smoke:
        print(f"SMOKE RUN ({args.clients} clients, {args.seconds} s a phase): checks that the script works; "
              "figures not meaningful")
    with tempfile.TemporaryDirectory(prefix="imagesearch-service-benchmark-") as temporary:
        root = Path(temporary)
        images, artifacts = root / "images", root / "artifacts"
        shutil.copytree(DEMO_IMAGES, images, ignore=shutil.ignore_patterns("*.md", "*.py"))
        embedder = make_embedder("resnet50", args.weights, runtime=args.runtime, purpose="query", images=images)
        saved = save_embeddings(extract_embeddings(images, embedder, 32, progress=False), embeddings_dir(artifacts))
        save_index(build_index(saved, "Flat", retrieval="plain"), index_dir(artifacts))
        index = load_index(index_dir(artifacts))
        queries = [(images / name).read_bytes() for name in list_images(images)]
        ids = index.ids.tolist()

        in_process = []
        for data in queries[:40]:
            start = time.perf_counter()
            search_image(index, embedder, data, args.k)
            in_process.append(time.perf_counter() - start)

        port = free_port()
        environment = {**os.environ, "IMAGESEARCH_ARTIFACTS": str(artifacts), "IMAGESEARCH_WEIGHTS": args.weights,
                       "IMAGESEARCH_RUNTIME": args.runtime, "IMAGESEARCH_TOKEN": TOKEN}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "imagesearch.service:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"], env=environment, cwd=Path(__file__).resolve().parents[1])
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the service did not start")
                time.sleep(0.2)
            runtime = httpx.get(f"{base}/stats").json()["runtime"]
            print(f"settings: the service on {base} with resnet50 ({args.weights}, {runtime}), a Flat index of "
                  f"{len(ids)} demo images; k {args.k}; {args.seconds:g} s a phase; searches alternate by upload "
                  f"and by id")
            results = [
                run_phase(base, "one client", 1, args.seconds, queries, ids, args.k, adding=False),
                run_phase(base, f"{args.clients} clients", args.clients, args.seconds, queries, ids, args.k, False),
                run_phase(base, f"{args.clients} clients + adding", args.clients, args.seconds, queries, ids, args.k,
                          True),
            ]
            final = httpx.get(f"{base}/health").json()
        finally:
            server.terminate()
            server.wait(timeout=60)

    print()
    print_table(["phase", "requests", "requests/s", "p50 ms", "p99 ms", "errors"],
                [phase.row(duration) for phase, duration, _, _ in results])
    print()
    single, _, _, _ = results[0]
    uploads = np.array(single.seconds[0::2]) * 1000  # the one client's searches by upload
    overhead = float(np.median(uploads)) - 1000 * float(np.median(in_process))
    print(f"one client, search by upload: p50 {np.median(uploads):.1f} ms against search_image in-process "
          f"{1000 * np.median(in_process):.1f} ms: the service adds {overhead:.1f} ms "
          f"({np.median(uploads) / (1000 * np.median(in_process)):.2f}x)")
    _, _, added, failures = results[2]
    errors = sum(len(phase.errors) for phase, _, _, _ in results) + len(failures)
    print(f"while adding: {len(added)} images added ({len(failures)} additions failed); the service then held "
          f"{final['images']} images ({final['status']})")
    for phase, _, _, _ in results:
        for error in phase.errors[:3]:
            print(f"  error in {phase.name}: {error}")
    for failure in failures[:3]:
        print(f"  an addition failed: {failure}")
    print(f"check: no request failed: {'yes' if errors == 0 else 'NO'}")
    print(f"check: every added image is served: {'yes' if final['images'] == len(ids) + len(added) else 'NO'}")
    print(f"at the end: {load_average()}")
    loaded, duration, _, _ = results[1]
    context = summary_context(f"resnet50 {args.weights}, {runtime}, {len(ids)} images, {args.clients} clients",
                              args.smoke, errors == 0)
    print(f"summary: {len(loaded.seconds) / duration:.1f} requests/s with {args.clients} clients, p50 "
          f"{1000 * np.median(loaded.seconds):.0f} ms, p99 {1000 * np.percentile(loaded.seconds, 99):.0f} ms, "
          f"{errors} errors in all; service overhead {overhead:.1f} ms a search {context}")
    return 0 if errors == 0 and final["images"] == len(ids) + len(added) else 1


if __name__ == "__main__":
    sys.exit(main())
