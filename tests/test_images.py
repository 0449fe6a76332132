"""Finding image files and decoding every kind of image (and non-image) into RGB pixels."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from imagesearch.images import ImageLoadError, list_images, load_image, load_thumbnail

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def assert_all_pixels_near(pixels: np.ndarray, expected: tuple[int, int, int], tolerance: int = 0) -> None:
    difference = np.abs(pixels.astype(int) - np.array(expected)).max()
    assert difference <= tolerance, f"pixels differ from {expected} by up to {difference}"


# --- list_images ---------------------------------------------------------------------------


def test_list_images_finds_images_recursively_as_sorted_relative_posix_paths(tmp_path):
    for name in ["b/z.jpg", "a/y.PNG", "x.JPG", "a/deep/w.Jpeg", "a/v.gif", "u.tiff", "t.WebP", "s.bmp", "r.Tif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    assert list_images(tmp_path) == [
        "a/deep/w.Jpeg", "a/v.gif", "a/y.PNG", "b/z.jpg", "r.Tif", "s.bmp", "t.WebP", "u.tiff", "x.JPG",
    ]


def test_list_images_ignores_hidden_files_hidden_folders_and_other_extensions(tmp_path):
    for name in [
        "keep.jpg", ".hidden.jpg", ".git/objects/blob.png", ".ipynb_checkpoints/keep-checkpoint.jpg",
        "notes.txt", "embeddings.npy", "photo.jpg.part", "sub/README.md", "noextension",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    assert list_images(tmp_path) == ["keep.jpg"]


def test_list_images_does_not_loop_on_a_symlink_to_a_parent_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "photo.jpg").touch()
    try:
        os.symlink(tmp_path, tmp_path / "sub" / "loop", target_is_directory=True)
    except (OSError, NotImplementedError) as error:
        pytest.skip(f"cannot create symlinks here: {error}")
    result = []
    worker = threading.Thread(target=lambda: result.append(list_images(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "list_images is still walking after 20 s: it follows the symlink loop"
    assert result == [["sub/photo.jpg"]]


def test_list_images_of_missing_folder_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        list_images(missing)


def test_list_images_of_a_file_says_it_is_not_a_folder(tmp_path, make_image):
    photo = make_image(tmp_path / "photo.jpg")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        list_images(photo)


# --- load_image: every mode and format comes out as (224, 224, 3) uint8 RGB -------------------


@pytest.mark.parametrize(
    "name, mode, size, color, expected, tolerance, save_options",
    [
        pytest.param("rgb.png", "RGB", (40, 30), (10, 20, 30), (10, 20, 30), 0, {}, id="RGB"),
        pytest.param("gray.png", "L", (40, 30), (100, 100, 100), (100, 100, 100), 0, {}, id="L"),
        pytest.param("gray_alpha.png", "LA", (40, 30), (0, 0, 0, 0), WHITE, 0, {}, id="LA-transparent-is-white"),
        pytest.param("gray_opaque.png", "LA", (40, 30), (50, 50, 50, 255), (50, 50, 50), 0, {}, id="LA-opaque"),
        pytest.param("palette.png", "P", (40, 30), RED, RED, 0, {}, id="P"),
        pytest.param("rgba.png", "RGBA", (40, 30), (255, 0, 0, 0), WHITE, 0, {}, id="RGBA-transparent-is-white"),
        pytest.param("half.png", "RGBA", (40, 30), (0, 0, 255, 128), (127, 127, 255), 1, {}, id="RGBA-half-on-white"),
        pytest.param("cmyk.jpg", "CMYK", (40, 30), RED, RED, 8, {"quality": 95}, id="CMYK-JPEG"),
        pytest.param("one_pixel.png", "RGB", (1, 1), (10, 20, 30), (10, 20, 30), 0, {}, id="1x1"),
        pytest.param("photo.webp", "RGB", (40, 30), (0, 200, 0), (0, 200, 0), 0, {"lossless": True}, id="WebP"),
        pytest.param("mono.bmp", "1", (40, 30), WHITE, WHITE, 0, {}, id="1-bit-BMP"),
    ],
)
def test_load_image_converts_any_mode_to_224_square_rgb_uint8(
    tmp_path, make_image, name, mode, size, color, expected, tolerance, save_options
):
    path = make_image(tmp_path / name, mode=mode, size=size, color=color, **save_options)
    with Image.open(path) as written:
        assert written.mode == mode  # the file really is in the mode under test
    pixels = load_image(path)
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8
    assert_all_pixels_near(pixels, expected, tolerance)


def test_load_image_paints_transparent_palette_entries_white(tmp_path):
    palette = Image.new("P", (20, 20), 1)  # right half: opaque red
    palette.putpalette([0, 255, 0, *RED])  # entry 0 is green but transparent
    palette.paste(0, (0, 0, 10, 20))  # left half: the transparent entry
    palette.save(tmp_path / "palette.png", transparency=0)
    pixels = load_image(tmp_path / "palette.png", size=(20, 20))
    assert_all_pixels_near(pixels[:, :8], WHITE)
    assert_all_pixels_near(pixels[:, 12:], RED)


def test_load_image_scales_16_bit_grayscale_instead_of_clipping_it(tmp_path):
    Image.fromarray(np.full((20, 20), 32768, np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as written:
        assert written.mode.startswith("I")  # a 16-bit file, not 8-bit
    pixels = load_image(tmp_path / "deep.png")
    assert_all_pixels_near(pixels, (128, 128, 128), tolerance=2)  # mid-grey stays mid-grey, not 255


def test_load_image_keeps_a_dark_16_bit_image_dark(tmp_path):
    Image.fromarray(np.full((20, 20), 200, np.uint16)).save(tmp_path / "dark.png")  # 200 of 65535
    assert_all_pixels_near(load_image(tmp_path / "dark.png"), (1, 1, 1), tolerance=1)


@pytest.mark.parametrize("name", ["animated.gif", "pages.tiff"])
def test_load_image_reads_the_first_frame_of_multi_frame_files(tmp_path, make_image, name):
    path = make_image(tmp_path / name, frames=[RED, BLUE])
    with Image.open(path) as written:
        assert written.n_frames == 2
    assert_all_pixels_near(load_image(path), RED)


def test_load_image_applies_exif_orientation(tmp_path):
    # Stored 60 x 30 (wide): left half red, right half blue. EXIF Orientation 6 says the stored
    # 0th row is the visual right-hand side and the stored 0th column is the visual top, i.e.
    # the viewer rotates it 90 degrees clockwise: it shows 30 wide x 60 tall, red half on top.
    stored = Image.new("RGB", (60, 30), BLUE)
    stored.paste(RED, (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    stored.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)

    assert load_thumbnail(tmp_path / "rotated.jpg", max_side=60).shape == (60, 30, 3)  # upright: tall
    pixels = load_image(tmp_path / "rotated.jpg")
    assert_all_pixels_near(pixels[:100], RED, tolerance=8)
    assert_all_pixels_near(pixels[124:], BLUE, tolerance=8)


@pytest.mark.parametrize(
    "as_source",
    [
        pytest.param(lambda path: path.read_bytes(), id="bytes"),
        pytest.param(lambda path: io.BytesIO(path.read_bytes()), id="file-object"),
    ],
)
def test_load_image_from_bytes_or_file_object_equals_loading_the_path(tmp_path, make_image, as_source):
    path = make_image(tmp_path / "photo.jpg", size=(64, 48))
    assert np.array_equal(load_image(as_source(path)), load_image(path))


# --- load_image: what is not a readable image raises ImageLoadError with a reason ------------


def _truncate(path, make_image):
    full = make_image(path.with_name("full" + path.suffix), size=(100, 80)).read_bytes()
    path.write_bytes(full[: len(full) // 2])


@pytest.mark.parametrize(
    "name, write",
    [
        pytest.param("empty.jpg", lambda path, _: path.write_bytes(b""), id="zero-bytes"),
        pytest.param(
            "page.jpg", lambda path, _: path.write_text("<!doctype html><html><body>404</body></html>"), id="html"
        ),
        pytest.param("cut.jpg", _truncate, id="truncated-jpeg"),
        pytest.param("cut.png", _truncate, id="truncated-png"),
        pytest.param("missing.jpg", lambda path, _: None, id="missing-file"),
    ],
)
def test_load_image_of_unreadable_file_raises_image_load_error_with_reason(tmp_path, make_image, name, write):
    path = tmp_path / name
    write(path, make_image)
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    assert caught.value.reason.strip()
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "limit", [pytest.param(1000, id="beyond-pillow-error-limit"), pytest.param(6000, id="in-pillow-warning-band")]
)
def test_load_image_refuses_decompression_bombs(tmp_path, make_image, monkeypatch, limit):
    path = make_image(tmp_path / "bomb.png", size=(100, 100))  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageLoadError, match="too many pixels") as caught:
        load_image(path)
    assert caught.value.reason


# --- load_thumbnail ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, max_side, expected_shape",
    [
        pytest.param((300, 150), 64, (32, 64, 3), id="wide"),
        pytest.param((50, 200), 64, (64, 16, 3), id="tall"),
        pytest.param((20, 10), 64, (10, 20, 3), id="small-is-not-enlarged"),
    ],
)
def test_load_thumbnail_keeps_aspect_ratio_within_max_side(tmp_path, make_image, size, max_side, expected_shape):
    path = make_image(tmp_path / "photo.png", size=size)
    thumbnail = load_thumbnail(path, max_side=max_side)
    assert thumbnail.shape == expected_shape
    assert thumbnail.dtype == np.uint8
