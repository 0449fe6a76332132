"""Regenerate the demo collection's variant images, the top level of ``images/``.

Every photo comes bundled inside the installed scikit-image and scikit-learn
packages, so nothing is downloaded. Each photo becomes a *group* of seven files
named ``<group>__<variant>.jpg``: the original plus six edited copies. Because
the file name carries the group, the folder doubles as a small evaluation set.
Output is deterministic (byte-identical on every run); sources and licences are
listed in ``ATTRIBUTION.md``.

The Caltech 101 photos in ``caltech101/`` are unchanged copies, not made here:
this script never writes, deletes or regenerates anything in a subfolder.

Usage: python images/make_demo_images.py [--out DIR] [--max-side 512]
"""

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from sklearn.datasets import load_sample_image

# Group name -> function returning the bundled photo as a uint8 array
# (2-D for grayscale, 3-D for RGB). All of these ship inside the wheels.
SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "brick": skimage.data.brick,
    "camera": skimage.data.camera,
    "cell": skimage.data.cell,
    "chelsea": skimage.data.chelsea,
    "clock": skimage.data.clock,
    "coffee": skimage.data.coffee,
    "coins": skimage.data.coins,
    "grass": skimage.data.grass,
    "gravel": skimage.data.gravel,
    "hubble_deep_field": skimage.data.hubble_deep_field,
    "ihc": skimage.data.immunohistochemistry,
    "retina": skimage.data.retina,
    "rocket": skimage.data.rocket,
    "china": lambda: load_sample_image("china.jpg"),
    "flower": lambda: load_sample_image("flower.jpg"),
}

JPEG_QUALITY = 90
MID_GREY = 128


def rotate(image: Image.Image) -> Image.Image:
    """Rotate 15 degrees counter-clockwise, keeping the size; corners are mid grey."""
    fill = (MID_GREY,) * len(image.getbands())
    return image.rotate(15, resample=Image.Resampling.BICUBIC, fillcolor=fill)


def crop(image: Image.Image) -> Image.Image:
    """Cut 12.5% off every edge, keeping the central 75% x 75% (not resized back)."""
    width, height = image.size
    dx, dy = round(width * 0.125), round(height * 0.125)
    return image.crop((dx, dy, width - dx, height - dy))


def lighting(image: Image.Image) -> Image.Image:
    """Darken to 60% brightness."""
    return ImageEnhance.Brightness(image).enhance(0.6)


def mirror(image: Image.Image) -> Image.Image:
    """Flip left to right."""
    return ImageOps.mirror(image)


def blur(image: Image.Image) -> Image.Image:
    """Gaussian blur with radius 2."""
    return image.filter(ImageFilter.GaussianBlur(radius=2))


def scale(image: Image.Image) -> Image.Image:
    """Downscale to half the width and half the height."""
    width, height = image.size
    return image.resize((width // 2, height // 2), Image.Resampling.LANCZOS)


# Variant name -> edit applied to the (already size-limited) original.
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda image: image,
    "rotate": rotate,
    "crop": crop,
    "lighting": lighting,
    "mirror": mirror,
    "blur": blur,
    "scale": scale,
}


def limit_size(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longest side is at most ``max_side``, keeping the aspect ratio."""
    width, height = image.size
    factor = max_side / max(width, height)
    if factor >= 1:
        return image
    new_size = (round(width * factor), round(height * factor))
    return image.resize(new_size, Image.Resampling.LANCZOS)


def remove_stale_images(out_dir: Path) -> None:
    """Delete ``<group>__<variant>.jpg`` files from earlier runs, and nothing else (subfolders are not entered)."""
    for variant in VARIANTS:
        for path in out_dir.glob(f"*__{variant}.jpg"):
            path.unlink()


def save_jpeg(image: Image.Image, path: Path) -> None:
    """Save as JPEG with fixed settings and no metadata, so output is reproducible."""
    image.save(path, format="JPEG", quality=JPEG_QUALITY)


def write_collection(out_dir: Path, max_side: int) -> int:
    """Write all variants of all originals to ``out_dir``; return the file count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_images(out_dir)
    count = 0
    for group, load in SOURCES.items():
        # 2-D arrays become mode "L" (grayscale), 3-D arrays mode "RGB".
        original = limit_size(Image.fromarray(load()), max_side)
        for variant, edit in VARIANTS.items():
            save_jpeg(edit(original), out_dir / f"{group}__{variant}.jpg")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: the folder of this script)")
    parser.add_argument("--max-side", type=int, default=512,
                        help="longest side of each original in pixels (default: 512)")
    args = parser.parse_args()

    count = write_collection(args.out, args.max_side)
    groups, variants = len(SOURCES), len(VARIANTS)
    print(f"wrote {count} images: {groups} groups x {variants} variants to {args.out}/")


if __name__ == "__main__":
    main()
