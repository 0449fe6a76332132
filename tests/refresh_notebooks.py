"""Re-run the notebooks as the tests do and store their outputs as nbval's expected results.

Run it after changing a notebook or what a regression cell prints:

    make notebooks        # or: .venv/bin/python tests/refresh_notebooks.py

It executes notebooks/*.ipynb in order, with the settings of the test run (see
conftest.py), then keeps the committed files light and machine-neutral: no
pictures, no widget state, and no output at all for cells that nbval ignores
or skips. Review the diff before committing it.
"""

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from conftest import NOTEBOOK_DEFAULTS  # noqa: E402

UNCOMPARED_MARKERS = ("# NBVAL_IGNORE_OUTPUT", "# NBVAL_SKIP")
PICTURES = ("image/png", "image/jpeg", "image/svg+xml", "application/vnd.jupyter.widget-view+json")


def lighten(notebook: nbformat.NotebookNode) -> None:
    """Drop what nbval does not compare: outputs of ignored cells, pictures, widget state."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata = {}
        if any(line.strip() in UNCOMPARED_MARKERS for line in cell.source.splitlines()):
            cell.outputs = []
            continue
        for output in cell.outputs:
            for key in PICTURES:
                output.get("data", {}).pop(key, None)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="imagesearch-refresh-") as artifacts:
        os.environ.update(NOTEBOOK_DEFAULTS)
        os.environ["IMAGESEARCH_ARTIFACTS"] = artifacts
        os.environ.setdefault("IMAGESEARCH_CACHE", str(Path(artifacts) / "cache"))  # as the tests: from nothing
        for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
            notebook = nbformat.read(path, as_version=4)
            NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute()
            lighten(notebook)
            nbformat.write(notebook, path)
            print(f"refreshed {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
