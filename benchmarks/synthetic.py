"""Seeded vectors with the structure of real image embeddings, written as .npy shards of any size.

Benchmarks of approximate indexes at 100,000 and 1,000,000 vectors need collections that large, and
the only pretrained model available offline would take days to embed that many photos. Random
Gaussian vectors will not do: they have no clusters and no low-dimensional structure, so every
index looks bad on them (a misleading worst case). These vectors are made the way CNN embeddings
come about, in a few steps, each with a parameter fitted to real embeddings (`benchmarks/realism.py`
measures them side by side and shows the synthetic recall-versus-nprobe curve is no easier):

1. A latent space of `rank` dimensions whose variance falls as a power law, like the PCA spectrum of
   real embeddings (`decay`, `knee`).
2. A world of `classes` semantic clusters with Zipf-distributed sizes, each with `subclusters`
   Zipf-sized sub-clusters; classes differ in how diverse they are (`class_sigma`), as a category of
   faces is tighter than one of chairs. Every class, sub-cluster and item centre is a point of that
   latent space.
3. Items: the things photographed, drawn from the sub-clusters. Each item appears in the collection
   as a group of photos (geometric sizes, `group_mean`): near-duplicates, the same thing edited.
   A photo differs from its item along a few directions of its own (`edit_rank`) and along directions
   every item shares (`shared_edits`: blur, darkness, a closer crop move every photo alike), with a
   little isotropic noise, by a log-normal amount (`variant_spread`, `variant_sigma`).
4. Channels: the latent point goes through a random linear map to `dim` channels, plus full-rank
   noise, then a ReLU with a per-channel threshold raised to `power` and a per-channel gain, as the
   global-average-pooled ReLU features of a CNN: non-negative, about 17% zeros, heavy right tails.

Statistics fitted (against the shared MobileNet over the shared photos and their edits): the share of
zeros, the spread of the channels' means, the spread of the vector norms, the mean cosine of random
pairs, the PCA spectrum (variance in the first 1, 10 and 100 components, components for 90%, the
power-law slope), the relative contrast of queries (mean distance over nearest-neighbour distance),
the 10th-over-1st neighbour distance, the local intrinsic dimension, and the share of variance within
a near-duplicate group. With the real set's make-up (every photo edited about 19 times:
`fixed_groups=True, group_mean=19.4`) the IVF recall-versus-nprobe curve matches the real one within
0.003. The default make-up is a natural collection instead: group sizes are geometric with mean 10,
so many things appear once or twice and a few many times (a query, landing on a group in proportion
to its size, still sees about 19 photos of its thing on average). That makes the synthetic vectors
harder to search than the real ones at low nprobe (recall@10 0.79 against 0.90 at nprobe 1 of 512
lists, 20,000 vectors): no easier, as the benchmarks need.

Everything derives from `seed` and the parameters: the latent world from the seed, the map to the
channels from (seed, dim), the rows in blocks of `block_rows` from (seed, block number), so the first
n rows of a larger collection are exactly the rows of the smaller one, whatever the shard size; the
same seed at 1024 and 2048 dimensions shows the same things. Queries (`queries`) are new photos of
items shown in the collection, as reverse image search queries are new photos of things it holds.
Blocks are made on every core (NumPy releases the GIL in its random fills and matrix products).

    from benchmarks.synthetic import write_vectors, queries
    shards = write_vectors(Path("/tmp/vectors-1m"), 1_000_000)   # float32 .npy shards, 2048-d
    xq = queries(1000, among=1_000_000)                          # (1000, 2048) float32
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: Changes whenever the vectors made for the same arguments change: part of what a cached folder must match.
VERSION = 2

#: The file that describes a folder's complete shards; written last, so its presence means they are all there.
DESCRIPTION = "synthetic.json"


@dataclass(frozen=True)
class Params:
    """The generator's parameters; the defaults are fitted to real embeddings (see the module docstring)."""

    # the latent space: its PCA spectrum
    rank: int = 512  # dimensions of the latent space every vector is made in
    decay: float = 1.1  # the variance of latent direction j falls as (1 + j / knee) ** -decay ...
    knee: float = 8.0  # ... a power law after the first `knee` directions, which share the variance about equally
    # semantic structure
    classes: int = 4096  # semantic clusters, sized by Zipf's law
    class_zipf: float = 0.8  # the exponent of the class sizes
    subclusters: int = 8  # per class
    sub_zipf: float = 1.0  # the exponent of the sub-cluster sizes within a class
    class_sigma: float = 0.6  # log-normal spread of the classes' own spreads: some are tight, some diverse
    sub_spread: float = 0.6  # a sub-cluster centre's distance from its class centre (class centres: 1)
    item_spread: float = 0.5  # an item's (a photographed thing's) distance from its sub-cluster centre
    # near-duplicates: the photos of one item
    group_mean: float = 10.0  # photos per item in the collection, on average (geometric: many have a few)
    fixed_groups: bool = False  # every item has group_mean photos (rounded at random): realism.py's edited photos
    variant_spread: float = 0.6  # a photo's typical distance from its item ...
    variant_sigma: float = 0.2  # ... spread log-normally: mild edits and strong ones
    edit_rank: int = 3  # photos of an item differ along this many directions of its own
    shared_edits: int = 8  # ... and along this many directions every item shares (blur, darkness, zoom)
    edit_shared: float = 0.9  # the share of the difference along the shared directions
    edit_noise: float = 0.1  # the share of the difference in every direction
    # channels: global-average-pooled ReLU features
    noise: float = 0.3  # full-rank noise added to a channel's input (which has unit variance)
    threshold: float = -1.0  # the ReLU's threshold, in standard deviations of a channel's input ...
    threshold_spread: float = 0.3  # ... which varies by channel: some fire more often than others
    power: float = 1.8  # a channel's output is its thresholded input to this power: a heavy right tail
    channel_spread: float = 0.2  # log-normal spread of the channels' gains
    gain_sigma: float = 0.08  # log-normal spread of a photo's overall activation (contrast, blur)
    # generation
    block_rows: int = 4096  # rows made at once: the unit of memory and of determinism

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = Params()


@dataclass(frozen=True)
class Store:
    """A folder of written vectors: its shard files in order, their total rows and the dimension."""

    paths: list[Path]
    rows: int
    dim: int


class Items(NamedTuple):
    """Photographed things: latent centres (n, rank), their own edit directions (n, edit_rank, rank), classes (n,)."""

    centres: np.ndarray
    edits: np.ndarray
    classes: np.ndarray


class World:
    """What every vector of a seed shares: class and sub-cluster centres, shared edits, the map to the channels.

    The latent structure depends on the seed only, the channels on (seed, dim): collections of one seed
    at different dimensions show the same things.
    """

    def __init__(self, dim: int, seed: int, params: Params = DEFAULT):
        self.dim, self.seed, self.params = dim, seed, params
        p = params
        latent = _latent(seed, params)
        self.scales, self.class_spreads, self.class_norms, self.centres, self.edit_directions = latent
        self.class_p = _zipf(p.classes, p.class_zipf)
        self.sub_p = _zipf(p.subclusters, p.sub_zipf)

        channels = np.random.default_rng([seed, 1, dim])
        mixing = channels.standard_normal((p.rank, dim), dtype=np.float32)
        variant_var = p.variant_spread**2 * math.exp(2 * p.variant_sigma**2)
        latent_var = self.scales**2 * (1 + p.sub_spread**2 + p.item_spread**2 + variant_var)
        # Every channel's input has unit variance; float32 throughout (NumPy scalars would make float64).
        self.mixing = (mixing / np.sqrt(latent_var @ mixing**2)).astype(np.float32)
        self.thresholds = (p.threshold + p.threshold_spread * channels.standard_normal(dim)).astype(np.float32)
        self.gains = np.exp(p.channel_spread * channels.standard_normal(dim)).astype(np.float32)

    def block_items(self, block: int) -> tuple[Items, np.ndarray]:
        """The items shown in block number `block`, and the item of each of its rows (consecutive rows: one group)."""
        p = self.params
        rng = np.random.default_rng([self.seed, 2, block])
        if p.fixed_groups:
            sizes = int(p.group_mean) + (rng.random(p.block_rows) < p.group_mean % 1)
        else:
            sizes = rng.geometric(1 / p.group_mean, size=p.block_rows)
        groups = int(np.searchsorted(np.cumsum(sizes), p.block_rows)) + 1
        classes = rng.choice(p.classes, size=groups, p=self.class_p)
        subs = rng.choice(p.subclusters, size=groups, p=self.sub_p)
        centres = self.centres[classes * p.subclusters + subs]
        spreads = p.item_spread * (self.class_spreads * self.class_norms)[classes, None]
        centres += spreads * rng.standard_normal(centres.shape, dtype=np.float32) * self.scales
        edits = rng.standard_normal((groups, p.edit_rank, p.rank), dtype=np.float32) * self.scales
        rows = np.repeat(np.arange(groups), sizes[:groups])[: p.block_rows]
        return Items(centres, edits, classes), rows

    def photos(self, items: Items, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Vectors of new photos of `items[rows]`: an edit of each item's latent point, mapped to the channels."""
        p = self.params
        count = len(rows)
        strength = p.variant_spread * np.exp(p.variant_sigma * rng.standard_normal((count, 1), dtype=np.float32))
        along = rng.standard_normal((count, 1, p.edit_rank), dtype=np.float32) / math.sqrt(p.edit_rank)
        own = np.matmul(along, items.edits[rows])[:, 0]
        shared = rng.standard_normal((count, p.shared_edits), dtype=np.float32) @ self.edit_directions
        shared /= math.sqrt(p.shared_edits)
        offsets = math.sqrt((1 - p.edit_noise) * (1 - p.edit_shared)) * own
        offsets += math.sqrt((1 - p.edit_noise) * p.edit_shared) * shared
        offsets += math.sqrt(p.edit_noise) * rng.standard_normal(offsets.shape, dtype=np.float32) * self.scales
        latent = items.centres[rows] + strength * offsets
        vectors = latent @ self.mixing
        vectors += p.noise * rng.standard_normal(vectors.shape, dtype=np.float32)
        vectors -= self.thresholds
        np.maximum(vectors, 0, out=vectors)
        if p.power != 1:
            np.power(vectors, p.power, out=vectors)
        vectors *= self.gains
        vectors *= np.exp(p.gain_sigma * rng.standard_normal((count, 1), dtype=np.float32))
        return vectors

    def block(self, block: int) -> np.ndarray:
        """The `block_rows` vectors of block number `block`, float32."""
        items, rows = self.block_items(block)
        return self.photos(items, rows, np.random.default_rng([self.seed, 3, self.dim, block]))

    def rows(self, start: int, stop: int, threads: int | None = None) -> Iterator[np.ndarray]:
        """Rows `start` to `stop`, in order, in chunks of at most `block_rows`, made on `threads` threads.

        At most `threads` + 1 blocks are in memory at once (NumPy's random fills, matrix products and
        element-wise operations release the GIL, so threads use the cores).
        """
        size, threads = self.params.block_rows, threads or os.cpu_count() or 1
        with ThreadPoolExecutor(threads) as pool:
            pending: deque = deque()
            for block in range(start // size, -(-stop // size)):
                pending.append((block, pool.submit(self.block, block)))
                if len(pending) > threads:
                    yield _cut(*_result(pending.popleft()), start, stop, size)
            while pending:
                yield _cut(*_result(pending.popleft()), start, stop, size)


def write_vectors(
    folder: Path, count: int, dim: int = 2048, seed: int = 0, shard_rows: int = 65536, params: Params = DEFAULT
) -> list[Path]:
    """Write `count` vectors as float32 .npy shards of `shard_rows` rows into `folder`; return the shard paths.

    Memory stays at a few blocks whatever `count` is. A folder that already holds the complete shards of
    the same arguments (its synthetic.json says so, and every shard has the expected size) is reused as
    it is; any other shards in it are replaced.
    """
    folder = Path(folder)
    if count < 1 or dim < 1 or shard_rows < 1:
        raise ValueError(f"count, dim and shard_rows must be at least 1, got {count}, {dim} and {shard_rows}")
    description = {
        "version": VERSION, "count": count, "dim": dim, "seed": seed, "shard_rows": shard_rows,
        "params": params.to_dict(), "shards": [f"shard-{i:05d}.npy" for i in range(-(-count // shard_rows))],
    }
    paths = [folder / name for name in description["shards"]]
    if _complete(folder, description):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DESCRIPTION).unlink(missing_ok=True)  # first: an interrupted run leaves no description behind
    for old in folder.glob("shard-*.npy*"):
        old.unlink()
    world = World(dim, seed, params)
    for i, path in enumerate(paths):
        start, stop = i * shard_rows, i * shard_rows + _shard_size(i, count, shard_rows)
        _write_npy(path, (stop - start, dim), world.rows(start, stop))
    _write_json(folder / DESCRIPTION, description)
    return paths


def make_vectors(count: int, dim: int = 2048, seed: int = 0, params: Params = DEFAULT) -> np.ndarray:
    """The first `count` vectors of the collection of `seed`, in memory: for collections small enough to hold."""
    return np.concatenate(list(World(dim, seed, params).rows(0, count)))


def item_ids(count: int, seed: int = 0, params: Params = DEFAULT) -> np.ndarray:
    """The item (the photographed thing) each of the first `count` rows shows, as int64 ids; rows of one id are
    near-duplicates. The same for every dimension."""
    world, size = World(1, seed, params), params.block_rows
    blocks = [world.block_items(block)[1] + block * size for block in range(-(-count // size))]
    return np.concatenate(blocks)[:count]


def query_rows(count: int, seed: int = 0, *, among: int) -> np.ndarray:
    """The rows whose item each of `queries(count, seed=seed, among=among)` shows a new photo of."""
    return np.random.default_rng([seed, 4]).integers(among, size=count)


def queries(count: int, dim: int = 2048, seed: int = 0, *, among: int, params: Params = DEFAULT) -> np.ndarray:
    """`count` query vectors (float32): new photos of the items shown by random rows among the first `among`.

    Pass the collection's size as `among` (or less): every query then has at least one photo of the same
    item in the collection, and none of the queries is one of its rows.
    """
    world = World(dim, seed, params)
    rows = query_rows(count, seed, among=among)
    centres = np.empty((count, params.rank), np.float32)
    edits = np.empty((count, params.edit_rank, params.rank), np.float32)
    classes = np.empty(count, np.int64)
    for block in np.unique(rows // params.block_rows):
        chosen = rows // params.block_rows == block
        items, item_of_row = world.block_items(int(block))
        picked = item_of_row[rows[chosen] % params.block_rows]
        centres[chosen], edits[chosen] = items.centres[picked], items.edits[picked]
        classes[chosen] = items.classes[picked]
    return world.photos(Items(centres, edits, classes), np.arange(count), np.random.default_rng([seed, 5, dim]))


def load_store(folder: Path) -> Store:
    """The shards `write_vectors` wrote into `folder`, with their total rows and dimension."""
    path = Path(folder) / DESCRIPTION
    try:
        description = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{folder} holds no complete synthetic vectors ({path} unreadable: {error})") from None
    return Store([Path(folder) / name for name in description["shards"]], description["count"], description["dim"])


@lru_cache(maxsize=2)
def _latent(seed: int, p: Params) -> tuple[np.ndarray, ...]:
    """The latent world of `seed`: direction scales, class spreads and norms, sub-cluster centres, shared edits.

    Cached: it takes a second or so to make at the default size (64 MB of centres), and a run makes vectors,
    queries and item ids of one world.
    """
    rng = np.random.default_rng([seed, 0])
    scales = ((1 + np.arange(p.rank) / p.knee) ** (-p.decay / 2)).astype(np.float32)
    classes = rng.standard_normal((p.classes, p.rank), dtype=np.float32)
    class_spreads = np.exp(p.class_sigma * rng.standard_normal(p.classes)).astype(np.float32)
    subs = rng.standard_normal((p.classes, p.subclusters, p.rank), dtype=np.float32) * p.sub_spread
    subs *= class_spreads[:, None, None]
    within = p.sub_spread**2 + p.item_spread**2
    # A diverse class has its members farther from its centre, not farther from the origin: the same variance.
    class_norms = np.sqrt((1 + within) / (1 + class_spreads**2 * within)).astype(np.float32)
    centres = ((classes[:, None, :] + subs) * class_norms[:, None, None] * scales).reshape(-1, p.rank)
    edit_directions = rng.standard_normal((p.shared_edits, p.rank), dtype=np.float32) * scales
    for array in (scales, class_spreads, class_norms, centres, edit_directions):
        array.flags.writeable = False  # shared by every World of the seed
    return scales, class_spreads, class_norms, centres, edit_directions


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _result(entry: tuple) -> tuple[int, np.ndarray]:
    block, future = entry
    return block, future.result()


def _cut(block: int, vectors: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    """The rows of `block` (its `vectors`) that fall within `start`..`stop`."""
    first = block * size
    return vectors[max(start - first, 0) : min(stop - first, size)]


def _shard_size(i: int, count: int, shard_rows: int) -> int:
    return min(count, (i + 1) * shard_rows) - i * shard_rows


def _complete(folder: Path, description: dict) -> bool:
    """Whether `folder` holds the complete shards `description` describes."""
    try:
        if json.loads((folder / DESCRIPTION).read_text()) != description:
            return False
        shard_rows, count, dim = description["shard_rows"], description["count"], description["dim"]
        return all(
            (folder / name).stat().st_size == _npy_size((_shard_size(i, count, shard_rows), dim))
            for i, name in enumerate(description["shards"])
        )
    except (OSError, ValueError):
        return False


def _header(shape: tuple[int, int]) -> bytes:
    """The .npy header of a C-order little-endian float32 array of `shape`, as np.save writes it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _npy_size(shape: tuple[int, int]) -> int:
    return len(_header(shape)) + 4 * shape[0] * shape[1]


def _write_npy(path: Path, shape: tuple[int, int], chunks: Iterator[np.ndarray]) -> None:
    """Write `chunks` (`shape[0]` rows in all) as a .npy file, one chunk at a time, under a temporary name first."""
    partial = path.with_name(path.name + ".partial")
    written = 0
    with open(partial, "wb") as file:
        file.write(_header(shape))
        for chunk in chunks:
            file.write(np.ascontiguousarray(chunk, dtype="<f4").data)
            written += len(chunk)
    if written != shape[0]:
        raise RuntimeError(f"{path}: wrote {written} rows instead of {shape[0]}")
    os.replace(partial, path)


def _write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON atomically: readers see the old file or the whole new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)
