"""pytest set-up shared by the unit tests and the notebook runs (nbval).

The notebooks read their parameters from IMAGESEARCH_* environment variables.
Under pytest they run offline: seeded random ResNet50 weights, and a throwaway
artifacts folder that notebook 01 writes, 02 reads and writes, and 03 reads
(pytest runs them in that order). Variables already set win, so the same
notebooks can be checked with other weights, e.g. IMAGESEARCH_WEIGHTS=path.h5.
"""

import os
import shutil
import tempfile

NOTEBOOK_DEFAULTS = {
    "IMAGESEARCH_IMAGES": "../images",  # relative to notebooks/, where nbval starts each kernel
    "IMAGESEARCH_BACKBONE": "resnet50",
    "IMAGESEARCH_WEIGHTS": "random",  # ImageNet weights cannot be downloaded on offline machines
}


def pytest_configure(config):
    for name, value in NOTEBOOK_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if "IMAGESEARCH_ARTIFACTS" not in os.environ:
        config._imagesearch_artifacts = tempfile.mkdtemp(prefix="imagesearch-nbval-")
        os.environ["IMAGESEARCH_ARTIFACTS"] = config._imagesearch_artifacts


def pytest_unconfigure(config):
    artifacts = getattr(config, "_imagesearch_artifacts", None)
    if artifacts:
        shutil.rmtree(artifacts, ignore_errors=True)
