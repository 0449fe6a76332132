"""The functions the notebooks call: one import for the whole reverse image search.

The logic lives in the `imagesearch` package, one module per stage:
images (list, load) -> plan (what to embed) -> embedders + extract (embed)
-> collection (records and vectors, saved) -> index (build, save, load)
-> query, display, app (answer and show). See README.md for the flow.
"""

from imagesearch.ann import IndexSpecError, SearchParams, recall_at_k
from imagesearch.app import SearchApp
from imagesearch.backbones import BACKBONES, Backbone, arguments_for
from imagesearch.collection import (
    Changes,
    Embeddings,
    load_embeddings,
    load_previous_embeddings,
    read_skipped,
    save_embeddings,
)
from imagesearch.comparison import Comparison, Embedded, compare, cost_lines, embed_folder, parse_candidates
from imagesearch.display import (
    caption,
    plot_embedding_map,
    plot_precision_at_k,
    plot_quality_speed,
    plot_recall_speed,
    plot_runtimes,
    show_images,
    show_results,
    show_worst_queries,
)
from imagesearch.distributed import add_on_ray, extract_on_ray, runtime_env, save_on_ray
from imagesearch.embedders import (
    Embedder,
    EmbedderInfo,
    Fidelity,
    KerasEmbedder,
    RandomWeightsWarning,
    TFLiteEmbedder,
    WeightsUnavailableError,
    cpu_supports_bfloat16,
)
from imagesearch.errors import UserFacingError
from imagesearch.evaluate import (
    SelfCheck,
    compare_configurations,
    score_index,
    self_check,
)
from imagesearch.extract import embed, extract_embeddings
from imagesearch.images import (
    DecodeWarning,
    FolderScan,
    ImageLoadError,
    list_images,
    load_image,
    load_thumbnail,
    scan_folder,
)
from imagesearch.index import (
    Hit,
    IndexChanges,
    SearchIndex,
    build_index,
    compare_indexes,
    load_index,
    load_previous_index,
    save_index,
)
from imagesearch.labels import Labels, LabelsError, labels_of
from imagesearch.metrics import Scores, score
from imagesearch.plan import Listing, Plan, list_files, make_plan
from imagesearch.query import EmbedderMismatchError, check_compatible, search_image, search_indexed
from imagesearch.records import ImageRecord, Records, Skipped
from imagesearch.retrieval import PRESETS, RECOMMENDED, Retrieval, RetrievalError
from imagesearch.runtime import versions
from imagesearch.runtimes import (
    RUNTIMES,
    Choice,
    RuntimeUnavailableError,
    embedder_for,
    make_embedder,
    remembered_choice,
)
from imagesearch.storage import ArtifactError, DamagedStateError, DamagedStateWarning, embeddings_dir, index_dir
from imagesearch.tuning import Candidate, Tuning, choose

__all__ = [
    "Comparison",
    "Embedded",
    "compare",
    "cost_lines",
    "embed_folder",
    "parse_candidates",
    "plot_precision_at_k",
    "plot_quality_speed",
    "show_worst_queries",
    "score_index",
    "score",
    "labels_of",
    "compare_configurations",
    "Scores",
    "RetrievalError",
    "Retrieval",
    "RECOMMENDED",
    "PRESETS",
    "LabelsError",
    "Labels",
    "ArtifactError",
    "BACKBONES",
    "Backbone",
    "Changes",
    "DamagedStateError",
    "DamagedStateWarning",
    "DecodeWarning",
    "Embedder",
    "Fidelity",
    "EmbedderInfo",
    "EmbedderMismatchError",
    "Embeddings",
    "FolderScan",
    "Candidate",
    "Choice",
    "Hit",
    "ImageLoadError",
    "ImageRecord",
    "IndexChanges",
    "IndexSpecError",
    "KerasEmbedder",
    "Listing",
    "Plan",
    "Records",
    "RandomWeightsWarning",
    "RUNTIMES",
    "RuntimeUnavailableError",
    "SearchApp",
    "SearchIndex",
    "SearchParams",
    "SelfCheck",
    "Skipped",
    "TFLiteEmbedder",
    "Tuning",
    "UserFacingError",
    "WeightsUnavailableError",
    "arguments_for",
    "build_index",
    "caption",
    "check_compatible",
    "choose",
    "compare_indexes",
    "cpu_supports_bfloat16",
    "embed",
    "embedder_for",
    "embeddings_dir",
    "extract_embeddings",
    "index_dir",
    "list_images",
    "load_embeddings",
    "load_image",
    "load_index",
    "load_previous_embeddings",
    "load_previous_index",
    "load_thumbnail",
    "list_files",
    "make_embedder",
    "make_plan",
    "plot_embedding_map",
    "plot_recall_speed",
    "plot_runtimes",
    "recall_at_k",
    "remembered_choice",
    "read_skipped",
    "save_embeddings",
    "save_index",
    "scan_folder",
    "search_image",
    "search_indexed",
    "self_check",
    "show_images",
    "show_results",
    "add_on_ray",
    "extract_on_ray",
    "runtime_env",
    "save_on_ray",
    "versions",
]
