"""Which backbone and which retrieval configuration suit a labelled collection, measured on it (notebook 04).

Each backbone embeds the images once, timed; each retrieval configuration is then scored on those vectors in an
exact index, so that every number in the table is measured on the same images, labels and queries, and only the
backbone or the configuration differs. The recommendation prefers the best mean average precision, unless a faster
backbone, or the default configuration, is within the noise of it on these queries.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .backbones import TFLITE
from .collection import Embeddings
from .evaluate import COMPARED, KS, scored_neighbours
from .extract import extract_embeddings
from .index import build_index
from .labels import Labels, labels_of
from .metrics import Scores, average_precision_at_k, precision_at_k
from .retrieval import DEFAULT_RETRIEVAL, Retrieval
from .runtimes import make_embedder

#: How many standard errors apart two mean APs must be before the better one is preferred over a faster backbone
#: or the default configuration: about 95% confidence that the difference is not the luck of these queries.
NOISE_STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class Candidate:
    """A backbone to compare, with its weights: "resnet50", or "tflite@model.tflite" for a model file."""

    backbone: str
    weights: str

    @property
    def name(self) -> str:
        return self.backbone if self.weights in ("imagenet", "random") else f"{self.backbone}@{Path(self.weights).name}"


def parse_candidates(text: str, weights: str = "imagenet") -> list[Candidate]:
    """Read "resnet50;vit_b16;tflite@model.tflite": backbones separated by ";", each with `weights` unless it names
    its own after "@" (a model or weights file). ";", because a `keras:layer=…,preprocess=…` backbone has commas."""
    candidates = []
    for part in (part.strip() for part in text.split(";")):
        if part:
            backbone, _, own = part.partition("@")
            candidates.append(Candidate(backbone.strip(), own.strip() or weights))
    if not candidates:
        raise ValueError(f"no backbone in {text!r}: name at least one, e.g. 'resnet50;efficientnetv2b0'")
    return candidates


@dataclass(frozen=True, eq=False)
class Embedded:
    """A folder embedded by one backbone, and how long that took (the model's build and first batch excluded)."""

    candidate: Candidate
    embeddings: Embeddings
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.embeddings) / max(self.seconds, 1e-9)

    @property
    def dimension(self) -> int:
        return int(self.embeddings.vectors.shape[1])

    @property
    def bytes_per_image(self) -> int:
        """What a vector costs in the collection and in an exact index: float32 values."""
        return 4 * self.dimension

    def line(self) -> str:
        """What holds on any machine: e.g. "resnet50: 208 images, 2048-d float32 (8 KiB per image)"."""
        return (f"{self.candidate.name}: {len(self.embeddings)} images, {self.dimension}-d float32 "
                f"({self.bytes_per_image / 1024:g} KiB per image)")


def cost_lines(embedded: Sequence[Embedded], images: int = 1_000_000) -> list[str]:
    """What each backbone would cost for `images` images at the speed it embedded here: hours, and GiB of vectors."""
    width = max(len(run.candidate.name) for run in embedded)
    return [f"{run.candidate.name:<{width}}  {run.images_per_second:7.1f} images/s: {images:,} images in "
            f"{images / run.images_per_second / 3600:5.1f} h, {images * run.bytes_per_image / 2**30:5.1f} GiB "
            "of vectors" for run in embedded]


def embed_folder(image_dir: str | os.PathLike, candidate: Candidate, runtime: str = "tensorflow",
                 batch_size: int = 32, progress: bool = True) -> Embedded:
    """Embed every image under `image_dir` with `candidate`, in memory (nothing is saved), timing the run.

    A full batch is embedded first, untimed, so that the time measures extraction and not the model's first call
    (TensorFlow traces and optimises its graph then, for each batch size: 17 s for convnext_tiny here): what
    embedding a large collection would take per image. A TFLite model file runs on LiteRT whatever `runtime`
    says: it has no other.
    """
    runtime = "litert" if candidate.backbone == TFLITE else runtime
    embedder = make_embedder(candidate.backbone, candidate.weights, runtime=runtime, images=image_dir)
    width, height = embedder.info.input_size
    embedder.embed(np.zeros((batch_size, height, width, 3), dtype=np.uint8))
    start = time.perf_counter()
    embeddings = extract_embeddings(image_dir, embedder, batch_size=batch_size, progress=progress)
    return Embedded(candidate, embeddings, time.perf_counter() - start)


@dataclass(frozen=True, eq=False)
class Result:
    """One backbone with one retrieval configuration: its scores, and each image's nearest others (rows)."""

    backbone: str
    configuration: str
    scores: Scores
    neighbours: np.ndarray  # (n, max(ks)) rows of each image's nearest others, best first; -1: none

    def metric(self, name: str) -> float:
        return self.scores.overall[name]


@dataclass(frozen=True, eq=False)
class Comparison:
    """Every backbone with every configuration, scored against the same labels; see `compare`."""

    embedded: dict[str, Embedded]  # by candidate name, in the order given
    labels: Labels
    results: list[Result]  # backbone by backbone, each configuration in the order given
    ks: tuple[int, ...]
    k: int  # the cut-off the table and the recommendation lead with

    def result(self, backbone: str, configuration: str | Retrieval) -> Result:
        configuration = str(Retrieval.parse(configuration))
        if (result := self._find(backbone, configuration)) is not None:
            return result
        raise KeyError(f"no result for {backbone} with {configuration}: compared "
                       f"{sorted({(r.backbone, r.configuration) for r in self.results})}")

    @property
    def columns(self) -> list[str]:
        """The metrics the table shows: precision at each k, then recall and mAP at the headline k."""
        return [f"precision@{k}" for k in self.ks] + [f"recall@{self.k}", f"mAP@{self.k}"]

    def rows(self) -> list[dict[str, object]]:
        """The table as one dict per backbone and configuration, with the backbone's speed and vector size."""
        return [{"backbone": result.backbone, "configuration": result.configuration,
                 **{name: round(result.metric(name), 3) for name in self.columns},
                 "images/s": round(self.embedded[result.backbone].images_per_second, 1),
                 "dimensions": self.embedded[result.backbone].dimension} for result in self.results]

    def lines(self) -> list[str]:
        """The table as text, a row per backbone and configuration, the best of each backbone marked with *."""
        best = {backbone: self.best(backbone) for backbone in self.embedded}
        names = max(len("backbone"), *(len(name) for name in self.embedded)) + 2
        width = max(len("configuration"), *(len(result.configuration) for result in self.results)) + 2
        head = f"{'backbone':<{names}}{'configuration':<{width}}" + "".join(f"{name:>13}" for name in self.columns)
        lines = [head + f"{'images/s':>10}{'dims':>6}"]
        for result in self.results:
            mark = "*" if result is best[result.backbone] else " "
            embedded = self.embedded[result.backbone]
            lines.append(f"{result.backbone:<{names}}{result.configuration:<{width}}"
                         + "".join(f"{result.metric(name):>12.3f}{mark if name == self.columns[-1] else ' '}"
                                   for name in self.columns)
                         + f"{embedded.images_per_second:>10.1f}{embedded.dimension:>6}")
        return lines

    def best(self, backbone: str | None = None) -> Result:
        """The result with the highest mAP@k (then precision@k), over all backbones or over one's configurations."""
        results = [result for result in self.results if backbone in (None, result.backbone)]
        return max(results, key=lambda result: (result.metric(f"mAP@{self.k}"), result.metric(f"precision@{self.k}")))

    def average_precisions(self, result: Result) -> np.ndarray:
        """AP@k of each query under `result`, NaN where the query has no other image of its label."""
        return average_precision_at_k(result.neighbours, self.labels.codes, self.labels.codes, self.k)

    def gap(self, better: Result, other: Result) -> tuple[float, float]:
        """How much higher `better`'s mAP@k is than `other`'s, and the standard error of that difference.

        Both are scored on the same queries, so the difference is taken query by query (a paired comparison):
        much tighter than comparing two means, as most queries are easy or hard for both.
        """
        differences = self.average_precisions(better) - self.average_precisions(other)
        differences = differences[~np.isnan(differences)]
        if differences.size < 2:
            return float(differences.mean()) if differences.size else 0.0, float("inf")
        return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(differences.size))

    def within_noise(self, better: Result, other: Result) -> bool:
        gap, error = self.gap(better, other)
        return gap <= NOISE_STANDARD_ERRORS * error  # identical results (0 ± 0) are within it

    def worst_queries(self, result: Result, count: int = 4) -> np.ndarray:
        """Rows of the `count` queries with the lowest AP@k under `result`; among equals (many score 0), those with
        the fewest label-mates in all their retrieved neighbours first, then the first in path order."""
        precisions = self.average_precisions(result)
        codes = self.labels.codes
        further = precision_at_k(result.neighbours, codes, codes, result.neighbours.shape[1])
        order = np.lexsort((np.nan_to_num(further), np.where(np.isnan(precisions), np.inf, precisions)))
        return order[: min(count, int(np.count_nonzero(~np.isnan(precisions))))]

    def precision_curve(self, result: Result) -> np.ndarray:
        """precision@k for k = 1 … max(ks): the mean over the evaluated queries at each cut-off."""
        codes = self.labels.codes
        return np.array([np.nanmean(precision_at_k(result.neighbours, codes, codes, k))
                         for k in range(1, result.neighbours.shape[1] + 1)])

    @cached_property
    def choice(self) -> Result:
        """The recommended backbone and configuration (see `recommendation`)."""
        best = self.best()
        backbone = best.backbone
        # A faster backbone whose best result is within the noise of the best: as good here, and cheaper.
        for name, embedded in sorted(self.embedded.items(), key=lambda item: -item[1].images_per_second):
            if embedded.images_per_second > self.embedded[backbone].images_per_second and \
                    self.within_noise(best, self.best(name)):
                backbone = name
                break
        chosen = self.best(backbone)
        default = self._default(backbone)
        return default if default is not None and self.within_noise(chosen, default) else chosen

    def recommendation(self) -> list[str]:
        """The choice, and why: what it scores, what it was preferred to, and the command that builds it."""
        best, choice, k = self.best(), self.choice, self.k
        lines = []
        if choice is not best:
            lines.append(f"best mAP@{k}: {best.backbone} with {best.configuration}, {_scores(best, k)}")
        if choice.backbone != best.backbone:
            gap, error = self.gap(best, self.best(choice.backbone))
            speedup = self.embedded[choice.backbone].images_per_second / self.embedded[best.backbone].images_per_second
            lines.append(f"{choice.backbone} is within the noise of it (mAP@{k} {gap:.3f} lower ± {error:.3f} over "
                         f"{self.results[0].scores.evaluated} queries) and embeds {speedup:.1f}x faster: prefer it")
        chosen_best, default = self.best(choice.backbone), self._default(choice.backbone)
        if choice is default and chosen_best is not choice:
            gap, error = self.gap(chosen_best, choice)
            lines.append(f"the default configuration ({choice.configuration}) is within the noise of "
                         f"{chosen_best.configuration} ({gap:.3f} ± {error:.3f} lower): keep the default")
        elif default is not None and choice is not default:
            gap, error = self.gap(choice, default)
            lines.append(f"{choice.configuration} beats the default ({default.configuration}) by {gap:.3f} ± "
                         f"{error:.3f} in mAP@{k}, beyond the noise: worth setting")
        plain = self._plain(choice.backbone)
        if plain is not None and plain is not choice:
            gap, error = self.gap(choice, plain)
            lines.append(f"against plain L2 on the same vectors: mAP@{k} {gap:+.3f} ± {error:.3f}, precision@{k} "
                         f"{choice.metric(f'precision@{k}') - plain.metric(f'precision@{k}'):+.3f}")
        lines.append(f"recommended: {choice.backbone} with {choice.configuration}, {_scores(choice, k)}")
        candidate = self.embedded[choice.backbone].candidate
        weights = "" if candidate.weights == "imagenet" else f" --weights {shlex.quote(candidate.weights)}"
        default = choice.configuration == str(DEFAULT_RETRIEVAL)
        retrieval = "" if default else f" --retrieval {shlex.quote(choice.configuration)}"
        folder = shlex.quote(str(self.embedded[choice.backbone].embeddings.image_root))
        lines.append(f"build it: python -m imagesearch build --images {folder} --backbone {candidate.backbone}"
                     f"{weights}{retrieval}")
        random = [name for name, embedded in self.embedded.items()
                  if embedded.embeddings.embedder.weights.startswith("random")]
        if random:
            lines.append(f"caution: {', '.join(random)} had random weights, which match copies of pixels, not meaning: "
                         "their scores say nothing of pretrained ones (compare with weights \"imagenet\")")
        return lines

    def _default(self, backbone: str) -> Result | None:
        return self._find(backbone, str(DEFAULT_RETRIEVAL))

    def _plain(self, backbone: str) -> Result | None:
        return self._find(backbone, "plain")

    def _find(self, backbone: str, configuration: str) -> Result | None:
        return next((r for r in self.results if (r.backbone, r.configuration) == (backbone, configuration)), None)


def compare(embedded: Sequence[Embedded], labels: str | Labels = "auto",
            configurations: Sequence[str | Retrieval] = COMPARED, ks: Sequence[int] = KS, k: int = 5,
            root: str | os.PathLike | None = None) -> Comparison:
    """Score every embedded backbone with every configuration, each in an exact index of its vectors.

    All must have embedded the same images (the same folder): the labels are read once, for all.
    """
    if not embedded:
        raise ValueError("nothing to compare: embed the folder with at least one backbone (embed_folder)")
    paths = embedded[0].embeddings.paths
    for other in embedded[1:]:
        if other.embeddings.paths != paths:
            raise ValueError(f"{other.candidate.name} embedded other images than {embedded[0].candidate.name}: "
                             "compare backbones on the same folder")
    names = [run.candidate.name for run in embedded]
    if len(set(names)) < len(names):
        raise ValueError(f"two backbones are called {max(names, key=names.count)}: compare each backbone once (name a "
                         "weights file after @ to compare it with the same backbone's ImageNet weights)")
    if not isinstance(labels, Labels):
        labels = labels_of(paths, labels, root=root or embedded[0].embeddings.image_root)
    ks = tuple(sorted({*ks, k}))
    results = []
    for run in embedded:
        for configuration in configurations:
            configuration = Retrieval.parse(configuration)
            scores, neighbours = scored_neighbours(build_index(run.embeddings, "Flat", retrieval=configuration),
                                                   labels, ks)
            results.append(Result(run.candidate.name, str(configuration), scores, neighbours))
    return Comparison({run.candidate.name: run for run in embedded}, labels, results, ks, k)


def _scores(result: Result, k: int) -> str:
    return (f"mAP@{k} {result.metric(f'mAP@{k}'):.3f}, precision@{k} {result.metric(f'precision@{k}'):.3f}, "
            f"recall@{k} {result.metric(f'recall@{k}'):.3f}")
