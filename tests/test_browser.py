"""The notebooks driven in a real browser, as a person uses them.

JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright: Run All in
each notebook (01, 02, 03, in that order: each reads what the one before
wrote), then in notebook 03 choose another image in the dropdown, change k
with the slider, upload an image and a file that is not one, and read what the
page shows: the status line, the result captions (checked against neighbours
computed here, in the test's own process, from the saved index), and no
traceback anywhere. Then notebook 04 (which reads only the images) runs to
the end, facts and pictures on the page. Another test runs notebook 01
offline with ImageNet weights and reads the short error it must show.

Needs /usr/bin/chromium (`make browser`) and playwright (requirements.txt);
without them the tests skip, unless IMAGESEARCH_REQUIRE_BROWSER=1 (CI), which
makes them fail. About 1.5 minutes on 2 cores; see tests/browser_lab.py for
the server and the browser.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from browser_lab import (
    REPO_ROOT,
    NotebookPage,
    chromium_page,
    jupyter_lab,
    output_text,
    require_browser,
    tree_digest,
)

from imagesearch.index import Hit, load_index
from imagesearch.query import search_indexed

pytestmark = pytest.mark.browser

IMAGES = REPO_ROOT / "images"
NOTEBOOK_01, NOTEBOOK_02, NOTEBOOK_03 = "01_extract_embeddings.ipynb", "02_build_index.ipynb", "03_search.ipynb"
NOTEBOOK_04 = "04_evaluate.ipynb"

# Generous for a slow 2-core machine (ResNet50 at ~11 images/s: notebook 01 embeds 208 images), but finite.
RUN_ALL_SECONDS = 600
#: How long the app may take to answer one action (the first upload traces the model's graph: seconds).
APP_SECONDS = 90

#: TensorFlow's start-up chatter, which the package keeps out of the notebooks (imagesearch/runtime.py), and
#: Keras' own download line, which it replaces with one line of its own on stdout.
STDERR_NOISE = re.compile(
    r"absl::InitializeLog|cudart_stub|cuInit|Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS)"
    r"|oneDNN custom operations|TF-TRT Warning|XNNPACK delegate|^I\d{4} [\d:.]+\s+\d+ \S+\]"
    r"|Downloading data from",
    re.MULTILINE,
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: Lines of the committed outputs (what nbval compares) that must also be on the page, by notebook.
FACTS = {
    NOTEBOOK_01: [
        "208 image files; 2 others ignored: 2 not images by their extension (.md, .py)",
        "plan: 0 unchanged, 208 to read, 0 gone",
        "this run: 208 added, 0 changed, 0 removed, 0 renamed, 0 unchanged, 0 skipped",
        "208 images embedded, 0 skipped; embeddings 208 x 2048 float32",
        "0 files in skipped.csv",
        "Nothing new to embed: 208 images unchanged since the last run.",
        "images embedded by the model: 0",
        "96 Caltech 101 photos in 12 categories",
    ],
    NOTEBOOK_02: [
        "Flat index (recommended: cosine, αDBA over 5 neighbours, αQE over 2): 208 vectors of 2048 dimensions",
        "candidates: Flat, HNSW32, IVF4,Flat",
        "chosen: Flat",
        "itself first (or tied with an identical twin): yes",
        "distance to itself about 0: yes",
        "5 neighbours of astronaut__blur.jpg; itself among them: False",
    ],
    NOTEBOOK_03: [
        "208 images in a Flat index of 2048-d vectors",
        "status line: 5 nearest neighbours of astronaut__blur.jpg",
        "tiles in view: 6 (the query, then its neighbours)",
        "rocket__scale.jpg finds itself first: True",
        "Cannot search with notes.txt: not an image",
    ],
    NOTEBOOK_04: [
        "28 labels over 208 images (from file-name prefixes for 112 images, folders for 96); 0 unlabelled",
        "resnet50: 208 images, 2048-d float32 (8 KiB per image)",
        "efficientnetv2b0: 208 images, 1280-d float32 (5 KiB per image)",
        "12 results (2 backbones x 6 configurations), each over 208 queries",
        "recall grows with k: True",
        "4 worst queries shown; none above the mean AP: True",
        "build it: python -m imagesearch build --images ",
    ],
}

#: The app's view, read off the page: the status line and the caption of every tile in view, in order.
APP_VIEW_JS = """() => {
  const apps = document.querySelectorAll('.imagesearch-app');
  if (apps.length !== 1) return {apps: apps.length};
  const text = e => e ? e.innerText.trim() : null;
  const tiles = [...apps[0].querySelectorAll('.imagesearch-tile')].filter(t => t.checkVisibility());
  return {apps: 1, status: text(apps[0].querySelector('.imagesearch-status .widget-html-content')),
          captions: tiles.map(t => text(t.querySelector('.imagesearch-caption .widget-html-content')))};
}"""
#: A neighbour's caption as the page shows it: "#<rank>  d=<distance>", a line break, the path.
CAPTION = re.compile(r"#(?P<rank>\d+)\s+d=(?P<distance>[-+.\deinf]+)\n(?P<path>.+)")
#: Distances closer than this count as a tie, whose order may differ between two embeddings of the same file.
TIE = 1e-2

TIMINGS: dict[str, float] = {}


@contextmanager
def timed(name: str):
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = round(time.monotonic() - start, 1)
        print(f"[{TIMINGS[name]:6.1f} s] {name}")


@pytest.fixture(scope="module")
def random_lab(tmp_path_factory):
    """One JupyterLab for the notebooks, with seeded random weights and a throwaway artifacts folder."""
    require_browser()
    workdir = tmp_path_factory.mktemp("lab-random")
    artifacts = workdir / "artifacts"
    artifacts.mkdir()
    env = {
        "IMAGESEARCH_WEIGHTS": "random",
        "IMAGESEARCH_BACKBONE": "resnet50",
        "IMAGESEARCH_BACKBONES": "resnet50;efficientnetv2b0",  # notebook 04, as under nbval (conftest.py)
        "IMAGESEARCH_IMAGES": str(IMAGES),
        "IMAGESEARCH_ARTIFACTS": str(artifacts),
    }
    before = tree_digest(REPO_ROOT / "notebooks"), tree_digest(IMAGES)
    with jupyter_lab(workdir, env) as lab:
        yield lab, artifacts
    assert (tree_digest(REPO_ROOT / "notebooks"), tree_digest(IMAGES)) == before, "the run wrote into the repository"


@pytest.fixture
def page(tmp_path):
    require_browser()
    with chromium_page(tmp_path) as page:
        yield page


def run_notebook(page, lab, name: str, expect_success: bool = True) -> NotebookPage:
    """Open `name`, clear it, Run All, wait until it is done; check that it ran to the end (or stopped)."""
    with timed(f"{name}: open, kernel idle"):
        notebook = NotebookPage(page, lab, name).open()
    with timed(f"{name}: clear, Run All"):
        succeeded = notebook.run_all(RUN_ALL_SECONDS)
    assert succeeded is expect_success, f"Run All in {name} {'failed' if expect_success else 'did not fail'}"
    return notebook


def check_clean(notebook: NotebookPage) -> list[dict]:
    """No error output, no traceback and no start-up noise in any output, on the page or in the model."""
    cells = notebook.cells()
    assert all(cell["count"] is not None for cell in cells), f"cells not run: {notebook.prompts()}"
    outputs = [output for cell in cells for output in cell["outputs"]]
    errors = [output_text(o) for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{notebook.name}: error outputs:\n" + ANSI.sub("", "\n\n".join(errors))
    for output in outputs:
        assert "Traceback" not in output_text(output), f"{notebook.name}: a traceback:\n{output_text(output)}"
    stderr = [output_text(o) for o in outputs if o.get("name") == "stderr"]
    noisy = [text for text in stderr if STDERR_NOISE.search(text)]
    assert not noisy, f"{notebook.name}: start-up noise on stderr:\n" + "\n".join(noisy)
    assert "Traceback" not in notebook.output_area_text()
    return cells


def stderr_of(cells: list[dict], source_contains: str) -> str:
    (cell,) = [cell for cell in cells if source_contains in cell["source"]]
    return "".join(output_text(o) for o in cell["outputs"] if o.get("name") == "stderr")


def check_facts(notebook: NotebookPage) -> None:
    shown = notebook.output_area_text()
    missing = [fact for fact in FACTS[notebook.name] if fact not in shown]
    assert not missing, f"{notebook.name}: not on the page: {missing}\npage text:\n{shown}"


def _is_hit(caption: re.Match, rank: int, hits: list[Hit]) -> bool:
    """Whether a caption shows the `rank`-th hit; hits at the same distance (within TIE) may swap places."""
    hit = hits[rank - 1]
    tied = {other.path for other in hits if abs(other.distance - hit.distance) <= TIE}
    return (
        int(caption["rank"]) == rank
        and caption["path"] in tied
        and math.isclose(float(caption["distance"]), hit.distance, rel_tol=6e-3, abs_tol=1e-3)
    )


class App:
    """Notebook 03's SearchApp as the page shows it."""

    def __init__(self, page, index):
        self.page, self.index = page, index
        self.root = page.locator(".imagesearch-app")

    def view(self) -> dict:
        return self.page.evaluate(APP_VIEW_JS)

    def wait_for(self, status, captions_ok=lambda captions: True, what: str = "") -> dict:
        """Wait until the status line is `status` (or matches it, a callable) and `captions_ok(captions)` holds."""
        deadline, view = time.monotonic() + APP_SECONDS, None
        while time.monotonic() < deadline:
            view = self.view()
            status_ok = view.get("status") is not None and (
                status(view["status"]) if callable(status) else view["status"] == status
            )
            if status_ok and captions_ok(view["captions"]):
                print(f"status line: {view['status']}")
                print("captions:", " | ".join(caption.replace("\n", " ") for caption in view["captions"]))
                return view
            self.page.wait_for_timeout(100)
        raise AssertionError(f"the app never showed {what or status!r} within {APP_SECONDS} s; it shows {view}")

    def wait_for_neighbours(self, query: str, k: int) -> dict:
        """Wait until the app shows the indexed image `query` and its `k` neighbours as computed here."""
        hits = search_indexed(self.index, query, k)
        return self.wait_for_results(f"{k} nearest neighbours of {query}", f"query: {query}", hits)

    def wait_for_results(self, status: str, first_caption: str, hits: list[Hit]) -> dict:
        """Wait until the app shows `status`, `first_caption` under the query, then one tile per hit, in order.

        Each caption must give the hit's rank, path and distance (to its 3 significant digits). Status and
        tiles change one widget message at a time, so a view caught halfway (the new status over some old
        tiles) is waited out, never accepted.
        """

        def shows_hits(captions: list[str]) -> bool:
            if len(captions) != len(hits) + 1 or captions[0] != first_caption:
                return False
            shown = [CAPTION.fullmatch(caption) for caption in captions[1:]]
            return all(match and _is_hit(match, rank, hits) for rank, match in enumerate(shown, 1))

        expected = [f"#{hit.rank + 1} {hit.path} d={hit.distance:.3g}" for hit in hits]
        view = self.wait_for(status, shows_hits, f"{status!r} over {first_caption!r} and {expected}")
        self.expect_visible_tiles(len(hits) + 1)
        return view

    def expect_visible_tiles(self, count: int) -> None:
        from playwright.sync_api import expect

        expect(self.root.locator(".imagesearch-tile:visible")).to_have_count(count, timeout=APP_SECONDS * 1000)

    def upload(self, path: Path) -> None:
        with self.page.expect_file_chooser() as chooser:
            self.root.locator(".widget-upload").click()  # ipywidgets 8: a detached <input type=file>
        chooser.value.set_files(str(path))


def test_notebooks_run_all_and_search_app(random_lab, page, tmp_path):
    from playwright.sync_api import expect

    lab, artifacts = random_lab
    for name in (NOTEBOOK_01, NOTEBOOK_02, NOTEBOOK_03):
        notebook = run_notebook(page, lab, name)
        cells = check_clean(notebook)
        check_facts(notebook)
        if name != NOTEBOOK_02:  # a real warning, not noise: it must reach the page (and shows stderr is read)
            assert "RandomWeightsWarning" in stderr_of(cells, "make_embedder"), f"{name}: random weights unannounced"
        if name != NOTEBOOK_03:
            lab.shut_down_kernels()  # each notebook's kernel holds TensorFlow: one at a time

    index = load_index(artifacts / "index")  # the test's own answers, from what notebook 02 saved
    app = App(page, index)
    with timed("app as Run All left it"):
        app.wait_for_neighbours(index.paths[0], 5)
        assert index.paths[0] == "astronaut__blur.jpg"

    with timed("dropdown: chelsea__original.jpg"):
        page.select_option(".imagesearch-app .widget-dropdown select", "chelsea__original.jpg")
        app.wait_for_neighbours("chelsea__original.jpg", 5)

    with timed("slider: k 5 -> 8"):
        handle = app.root.locator(".widget-slider .noUi-handle")
        handle.focus()
        for _ in range(3):
            handle.press("ArrowRight")
        expect(handle).to_have_attribute("aria-valuenow", re.compile(r"^8(\.0)?$"))
        app.wait_for_neighbours("chelsea__original.jpg", 8)

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    photo = shutil.copy(IMAGES / "coffee__original.jpg", uploads / "my_photo.jpg")
    with timed("upload my_photo.jpg (coffee__original.jpg)"):
        app.upload(photo)
        # The copy of an indexed image is embedded as the collection was: it finds that image first, at a
        # distance of about 0, then that image's neighbours.
        hits = search_indexed(index, "coffee__original.jpg", 8, include_self=True)
        assert hits[0].path == "coffee__original.jpg"
        app.wait_for_results("8 nearest neighbours of the upload my_photo.jpg", "upload: my_photo.jpg", hits)
        expect(app.root.locator(".widget-upload")).to_contain_text("(0)")  # the app lets go of the upload

    notes = uploads / "notes.txt"
    notes.write_text("Shopping: coffee, milk, a new lens cap.\n")
    with timed("upload notes.txt"):
        app.upload(notes)
        app.wait_for(lambda status: status.startswith("Cannot search with notes.txt: not an image"),
                     lambda captions: captions == [], "the message for notes.txt and no tiles")
        app.expect_visible_tiles(0)

    check_clean(notebook)  # nothing the interactions did left a traceback or an error in the output area
    assert "Traceback" not in page.locator(".jp-Notebook").inner_text()
    print("timings:", TIMINGS)
    print("browser console errors:", page.errors_seen)


def test_evaluation_notebook_runs_all_with_its_pictures(random_lab, page):
    lab, _ = random_lab
    lab.shut_down_kernels()  # the kernels of notebooks 01 to 03, if they ran first: TensorFlow each
    notebook = run_notebook(page, lab, NOTEBOOK_04)
    cells = check_clean(notebook)
    check_facts(notebook)
    assert "RandomWeightsWarning" in stderr_of(cells, "embed_folder"), "random weights unannounced"
    # precision against k, quality against speed, the worst queries: three pictures, each drawn on the page
    pictures = page.locator(".jp-Notebook .jp-OutputArea-output img")
    assert pictures.count() == 3, f"{pictures.count()} pictures on the page"
    assert all(pictures.nth(i).evaluate("img => img.naturalWidth > 300") for i in range(3))


@pytest.fixture
def offline_lab(tmp_path):
    """JupyterLab whose kernels want ImageNet weights but have no cached copy and no way to download one."""
    require_browser()
    keras_home = tmp_path / "keras-home"
    keras_home.mkdir()
    closed_port = "http://127.0.0.1:9"  # nothing listens there: the download fails at once, network or not
    env = {
        "IMAGESEARCH_WEIGHTS": "imagenet",
        "IMAGESEARCH_BACKBONE": "resnet50",
        "IMAGESEARCH_IMAGES": str(IMAGES),
        "IMAGESEARCH_ARTIFACTS": str(tmp_path / "artifacts"),
        "KERAS_HOME": str(keras_home),
        **{name: closed_port for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY")},
    }
    with jupyter_lab(tmp_path / "lab", env) as lab:
        yield lab


def test_notebook_01_offline_shows_a_short_error(offline_lab, page):
    notebook = run_notebook(page, offline_lab, NOTEBOOK_01, expect_success=False)
    cells = notebook.cells()
    failed = [i for i, cell in enumerate(cells) if any(o["output_type"] == "error" for o in cell["outputs"])]
    assert len(failed) == 1 and "make_embedder" in cells[failed[0]]["source"], f"errors in cells {failed}"
    (error,) = [o for o in cells[failed[0]]["outputs"] if o["output_type"] == "error"]
    assert error["ename"] == "WeightsUnavailableError"

    shown = page.locator(".jp-Notebook .jp-CodeCell").nth(failed[0]).locator(".jp-OutputArea").inner_text()
    print(f"the cell shows:\n{shown}")
    for text in (shown, ANSI.sub("", output_text(error))):
        assert "WeightsUnavailableError" in text and "make lab WEIGHTS=random" in text, text
        assert "Traceback" not in text and "During handling of the above exception" not in text, text
        assert len(text.strip().splitlines()) <= 15, f"{len(text.strip().splitlines())} lines:\n{text}"

    # Keras' own line goes to stdout or stderr depending on its logging mode: it must be in no output at all.
    everything = "".join(output_text(o) for cell in cells for o in cell["outputs"])
    assert "Downloading data from" not in everything, everything
    stdout = "".join(output_text(o) for o in cells[failed[0]]["outputs"] if o.get("name") == "stdout")
    assert "Downloading ResNet50's ImageNet weights" in stdout, f"no announcement of the download: {stdout!r}"
