"""Which files are inputs, and how an input becomes an RGB array."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from evc_infer import one_line

DEFAULT_TYPES = ("jpg", "jpeg", "png", "bmp", "webp")
# Pillow's own open: importing ultralytics replaces Image.open with one that tries to pip
# install pi-heif on any file Pillow cannot identify.
_pil_open = Image.open


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


def decode_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied; DecodeError on anything unreadable."""
    try:
        with _pil_open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as exc:
        raise DecodeError(f"cannot decode image: {one_line(exc)}") from None
