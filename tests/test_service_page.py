"""The service's web page in a real browser (Debian's Chromium through Playwright) against the real service."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
from browser_lab import chromium_page, require_browser
from PIL import Image
from test_service import PHOTOS, Server, update

from imagesearch.service import Settings

TOKEN = "page-token"
#: Set to a folder (e.g. docs) to keep the page's screenshot there: the README's picture.
SCREENSHOTS = "IMAGESEARCH_SCREENSHOTS"


@pytest.fixture
def served(tmp_path, repo_root, random_resnet):
    require_browser()
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((repo_root / "images").glob("*.jpg")):
        if path.name.split("__")[0] in PHOTOS:
            shutil.copy(path, images / path.name)
    update(images, tmp_path / "artifacts", random_resnet)
    settings = Settings(tmp_path / "artifacts", weights="random", runtime="tensorflow", token=TOKEN)
    with pytest.warns(UserWarning), Server(settings) as client:
        yield client, images


def tiles(page) -> list[str]:
    return page.locator("#results .tile span:first-of-type").all_inner_texts()


def test_the_page_searches_by_upload_by_click_and_finds_an_added_image(served, tmp_path):
    client, images = served
    with chromium_page(tmp_path) as page:
        page.set_viewport_size({"width": 1100, "height": 900})
        page.goto(str(client.base_url))
        page.wait_for_function("document.getElementById('stats').textContent.includes('21 images')")

        page.locator("#k").fill("6")
        page.locator("#picker").set_input_files(str(images / "rocket__crop.jpg"))
        page.wait_for_function("document.querySelectorAll('#results .tile').length === 6")
        assert tiles(page)[0] == "rocket__crop.jpg"
        assert re.fullmatch(r"6 nearest images in [\d.]+ ms", page.locator("#status").inner_text())
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
        if folder := os.environ.get(SCREENSHOTS):
            page.screenshot(path=os.path.join(folder, "service_page.jpg"), type="jpeg", quality=85)

        page.set_viewport_size({"width": 390, "height": 800})  # a phone: the grid reflows, nothing scrolls sideways
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        columns = page.evaluate("getComputedStyle(document.getElementById('results')).gridTemplateColumns")
        assert len(columns.split()) == 2, columns
        page.set_viewport_size({"width": 1100, "height": 900})

        second = tiles(page)[1]
        page.locator("#results .tile").nth(1).click()
        page.wait_for_function(f"document.getElementById('query-caption').textContent === 'query: {second}'")
        page.wait_for_function("document.querySelectorAll('#results .tile').length === 6")
        assert second not in tiles(page)  # the neighbours of an indexed image leave it out

        page.locator("#browse").click()
        page.wait_for_function("document.getElementById('status').textContent.startsWith('21 of 21 images')")
        assert len(tiles(page)) == 21

        page.locator("#picker").set_input_files(_text_file(tmp_path))
        page.wait_for_function("document.getElementById('status').className === 'error'")
        assert "not an image" in page.locator("#status").inner_text()

        added = tmp_path / "new.png"
        Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(added)
        page.locator("#changes summary").click()
        page.locator("#add-picker").set_input_files(str(added))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('not added')")
        assert "token" in page.locator("#status").inner_text()
        page.locator("#token").fill(TOKEN)
        page.locator("#add-picker").set_input_files(str(added))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('added 1')")
        page.wait_for_function("document.getElementById('stats').textContent.includes('22 images')")

        page.locator("#picker").set_input_files(str(added))
        page.wait_for_function("document.querySelectorAll('#results .tile').length === 6")
        assert tiles(page)[0].startswith("uploads/")
        # The console notes the 415 and the 403 provoked above as failed loads; nothing else may go wrong.
        unexpected = [error for error in page.errors_seen if not re.match(
            r"Failed to load resource: the server responded with a status of (415|403) ", error)]
        assert unexpected == []


def _text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a picture")
    return str(path)
