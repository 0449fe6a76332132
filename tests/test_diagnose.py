"""Why a file cannot be decoded, in words: reasons by kind, and what Pillow and libtiff say, collected per thread."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from imagesearch import diagnose
from imagesearch.images import ImageLoadError, load_image

from bad_corpus import dds_of_unknown_pixel_format, encoded, noise, seven_samples_tiff, tiff_with_tag


def reason_for(data: bytes) -> str:
    with pytest.raises(ImageLoadError) as caught:
        load_image(data)
    return caught.value.reason


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(b"", "empty file (0 bytes): not an image", id="empty"),
        pytest.param(b"<!doctype html><title>404 Not Found</title>",  # its first 40 characters are quoted
                     "not an image: the file holds text ('<!doctype html><title>404 Not Found</tit'…)", id="html"),
        pytest.param(bytes(100), "not an image: its content is in no format Pillow reads", id="zeros"),
        pytest.param(b"GIF89a\xff\xff\xff", "Pillow cannot open this GIF file: its header is cut short (",
                     id="gif-cut"),
        pytest.param(encoded(noise((64, 64)), "JPEG")[:300], "truncated: this JPEG file ends before its image does (",
                     id="truncated-jpeg"),
    ],
)
def test_a_reason_says_what_is_wrong_in_words_first(data, expected):
    assert reason_for(data).startswith(expected)


def test_reasons_name_the_cause_that_pillow_and_libtiff_give(tmp_path):
    for name, write, expected in [
        ("dds", dds_of_unknown_pixel_format,
         "Pillow does not implement the variant of this DDS file (NotImplementedError: Unimplemented pixel format"),
        ("webp.tif", tiff_with_tag(259, 50001),
         "Pillow cannot decode this TIFF file (WEBP compression support is not configured)"),
        ("seven.tif", seven_samples_tiff,
         "Pillow cannot open this TIFF file: More samples per pixel than can be decoded: 7"),
    ]:
        write(tmp_path / name)
        assert reason_for((tmp_path / name).read_bytes()).startswith(expected), name


@pytest.mark.parametrize("limit", [1000, 6000], ids=["beyond-pillow-error-limit", "in-pillow-warning-band"])
def test_decompression_bombs_quote_one_limit_whichever_check_of_pillow_catches_them(make_image, tmp_path, monkeypatch,
                                                                                     limit):
    path = make_image(tmp_path / "bomb.png", size=(100, 100))  # 10,000 pixels: over 2 x 1000, under 2 x 6000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert reason_for(path.read_bytes()) == (
        f"too many pixels: 10,000 pixels, above the {limit:,} that Pillow allows against decompression bombs "
        "(raise PIL.Image.MAX_IMAGE_PIXELS for files you trust)"
    )


def test_libtiff_speaks_into_the_reason_not_onto_stderr(tmp_path, capfd):
    tiff_with_tag(259, 50001)(tmp_path / "webp.tif")
    assert "WEBP compression" in reason_for((tmp_path / "webp.tif").read_bytes())
    assert capfd.readouterr().err == ""


def test_outside_a_collection_libtiff_prints_what_it_always_printed(tmp_path, capfd):
    tiff_with_tag(259, 50001)(tmp_path / "webp.tif")
    with diagnose.collecting():  # installs the handlers, as any decode by the package does
        pass
    with pytest.raises(OSError), Image.open(tmp_path / "webp.tif") as image:
        image.load()
    assert "WEBP compression support is not configured." in capfd.readouterr().err


def test_a_decoder_warning_of_a_file_that_decodes_is_a_note(tmp_path):
    tiff_with_tag(270, 10**6, "count")(tmp_path / "long tag.tif")
    notes: list[str] = []
    load_image(tmp_path / "long tag.tif", notes=notes)
    assert notes == ["Tag data larger than file. Skipping tag 270"]  # said three times by Pillow, noted once


def test_each_thread_collects_only_what_is_said_about_its_own_file(tmp_path):
    tiff_with_tag(259, 50001)(tmp_path / "webp.tif")
    tiff_with_tag(270, 10**6, "count")(tmp_path / "long tag.tif")
    both_collecting = threading.Barrier(2)
    collected: dict[str, list[str]] = {}

    def decode(name: str) -> None:
        with diagnose.collecting() as said:
            both_collecting.wait(timeout=10)
            for _ in range(20):  # long enough for the two threads to overlap
                try:
                    with Image.open(tmp_path / name) as image:
                        image.load()
                except OSError:
                    pass
            both_collecting.wait(timeout=10)
        collected[name] = sorted(set(said))

    threads = [threading.Thread(target=decode, args=(name,)) for name in ("webp.tif", "long tag.tif")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert collected == {
        "webp.tif": ["WEBP compression support is not configured"],
        "long tag.tif": ["Tag data larger than file. Skipping tag 270"],
    }
