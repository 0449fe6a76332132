"""pytest set-up shared by the unit tests and the notebook runs (nbval).

The notebooks read their parameters from IMAGESEARCH_* environment variables.
Under pytest they run offline: seeded random weights (ResNet50; and EfficientNetV2-B0 beside it in notebook 04,
which compares backbones), and a throwaway
artifacts folder that notebook 01 writes, 02 reads and writes, and 03 reads
(pytest runs them in that order), and a cache of LiteRT conversions and
runtime choices of the session's own (IMAGESEARCH_CACHE, not ~/.keras): the
first `runtime="auto"` of a session measures the runtimes from nothing, as on
a fresh machine, and the CLI's and notebooks' subprocesses share what it found. Variables already set win, so the same
notebooks can be checked with other weights, e.g. IMAGESEARCH_WEIGHTS=path.h5.
"""

import os
import shutil
import tempfile

NOTEBOOK_DEFAULTS = {
    "IMAGESEARCH_IMAGES": "../images",  # relative to notebooks/, where nbval starts each kernel
    "IMAGESEARCH_BACKBONE": "resnet50",
    "IMAGESEARCH_WEIGHTS": "random",  # ImageNet weights cannot be downloaded on offline machines
    # Notebook 04 compares two of the four backbones: convnext_tiny and vit_b16 embed 3 to 5 images/s on 2 cores,
    # a minute or more each for the demo's 208 images (tests/test_backbones.py builds and runs every one).
    "IMAGESEARCH_BACKBONES": "resnet50;efficientnetv2b0",
}


def pytest_configure(config):
    for name, value in NOTEBOOK_DEFAULTS.items():
        os.environ.setdefault(name, value)
    config._imagesearch_temporary = []
    for name, prefix in (("IMAGESEARCH_ARTIFACTS", "imagesearch-nbval-"), ("IMAGESEARCH_CACHE", "imagesearch-cache-")):
        if name not in os.environ:
            os.environ[name] = tempfile.mkdtemp(prefix=prefix)
            config._imagesearch_temporary.append(os.environ[name])


def pytest_unconfigure(config):
    for folder in getattr(config, "_imagesearch_temporary", []):
        shutil.rmtree(folder, ignore_errors=True)
