"""Which files are inputs, and how an input becomes an RGB array."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from evc_infer import one_line

DEFAULT_TYPES = ("jpg", "jpeg", "png", "bmp", "webp")
# Pillow's own open: importing ultralytics replaces Image.open with one that tries to pip
# install pi-heif on any file Pillow cannot identify.
_pil_open = Image.open
# The pixel cap of decode_image replaces Pillow's own bomb check (a warning above 89 MP, an
# error above twice that), so that the cap model.yaml sets is the one that holds, either way.
Image.MAX_IMAGE_PIXELS = None


class DecodeError(Exception):
    """The file is not an image Pillow can decode."""


def find_inputs(
    root: Path, types=DEFAULT_TYPES, exclude: Path | None = None
) -> tuple[list[str], list[str]]:
    """(inputs, skipped): files under ``root`` as sorted posix paths relative to it.

    Inputs have one of the ``types`` extensions (any case); other files are skipped.
    Files under ``exclude`` (the output folder, when it lies inside ``root``) are ignored.
    """
    suffixes = {"." + str(t).lower().lstrip(".") for t in types}
    inputs, skipped = [], []
    for path in root.rglob("*"):
        if not path.is_file() or (exclude is not None and path.is_relative_to(exclude)):
            continue
        rel = path.relative_to(root).as_posix()
        (inputs if path.suffix.lower() in suffixes else skipped).append(rel)
    return sorted(inputs), sorted(skipped)


def _megapixels(pixels: int) -> str:
    mp = pixels / 1e6
    return f"{mp:.0f}" if mp >= 100 else f"{mp:.3g}"


def decode_image(path: Path, max_pixels: int) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied; DecodeError on anything unreadable.

    An image of more than ``max_pixels`` is refused from its header, before any pixel is
    decoded: one huge (or hostile) image must cost its item, not the process's memory.
    """
    try:
        with _pil_open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"image is {width}x{height} ({_megapixels(width * height)} MP), "
                    f"above the cap of {_megapixels(max_pixels)} MP"
                )
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decode image: {one_line(exc)}") from None


def letterbox(
    image: np.ndarray, size: tuple[int, int], fill: int
) -> tuple[np.ndarray, float, tuple]:
    """Resize keeping the aspect ratio, centred on a (h, w) = ``size`` canvas of ``fill``.

    Returns (canvas, scale, (left, top)): canvas pixel = original pixel * scale + pad.
    """
    th, tw = size
    h, w = image.shape[:2]
    scale = min(th / h, tw / w)
    nw, nh = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
    if (nw, nh) != (w, h):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    left, top = (tw - nw) // 2, (th - nh) // 2
    canvas = np.full((th, tw, 3), fill, np.uint8)
    canvas[top : top + nh, left : left + nw] = image
    return canvas, scale, (left, top)


def unletterbox(coords: np.ndarray, scale: float, pad: tuple) -> np.ndarray:
    """Canvas coordinates back to original pixels: rows of x, y pairs (x1, y1, x2, y2 for
    boxes; x, y, x, y, ... for keypoints)."""
    offset = np.resize(np.asarray(pad, np.float32), coords.shape[-1])
    return (coords - offset) / scale
