"""Reading a posed view's image file with bounded memory.

Rules, each refused with a :class:`~clip_gs.errors.PosedImagesError` naming the file:

- **Formats**: :data:`IMAGE_FORMATS` only (what posed-image layouts hold); no other Pillow decoder
  runs on the file.
- **Size**: the header's ``width x height`` is checked against :data:`MAX_IMAGE_PIXELS` before any
  pixel is decoded, so decoding holds at most two 4-byte-per-pixel copies of one image (512 MiB at
  the cap).
- **Resize on read**: :func:`read_rgba` decodes JPEGs at a reduced scale when that still covers the
  requested size (Pillow's ``draft``), then averages pixel areas down to it (alpha-premultiplied) while
  still 8 or 16 bit: a float32 copy exists only at the requested size.
- **Modes**: 16-bit grayscale is scaled by 1/65535 and opaque; everything else goes through RGBA
  (straight alpha) scaled by 1/255.
- Any decoding failure (a truncated or corrupt file, Pillow's decompression-bomb guard, memory)
  becomes a ``PosedImagesError``.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from clip_gs.errors import PosedImagesError

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image read (67 Mpx), from its header, before decoding."""
IMAGE_FORMATS = ("PNG", "JPEG")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
_DECODER_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, IndexError, KeyError,
                   TypeError, MemoryError)  # fmt: skip
"""What Pillow's decoders raise on corrupt data (besides its DecompressionBombError)."""


def _open(path: Path):
    """The image opened (header only), its size checked against the cap."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below is lower
            image = Image.open(path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PosedImagesError(f"{path}: more than {MAX_IMAGE_PIXELS:,} pixels ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise PosedImagesError(f"{path}: not a {' or '.join(IMAGE_FORMATS)} image") from exc
    except _DECODER_ERRORS as exc:
        raise PosedImagesError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise PosedImagesError(
            f"{path}: image is {width}x{height} = {width * height:,} pixels; at most {MAX_IMAGE_PIXELS:,} are read"
        )
    return image


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header (nothing decoded).

    Raises:
        PosedImagesError: not a PNG / JPEG, an unreadable header, or more than :data:`MAX_IMAGE_PIXELS`.
    """
    with _open(path) as image:
        return image.size


def read_rgba(path: Path, size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """The image at ``path`` as ``[H', W', 4]`` float32 RGBA in [0, 1] (straight alpha), area-averaged
    from its ``size = (W, H)`` down to ``out_size = (W', H')`` (no larger than ``size``).

    Raises:
        PosedImagesError: the file's size is not ``size``; a rule of the module docstring broken.
    """
    from PIL import Image

    with _open(path) as image:
        if image.size != tuple(size):
            raise PosedImagesError(
                f"{path}: image is {image.size[0]}x{image.size[1]}, the first one {size[0]}x{size[1]}; every view "
                "must have one size"
            )
        try:
            box = None
            if out_size != image.size and image.format == "JPEG":
                drafted = image.draft(None, out_size)  # decode at 1/2, 1/4 or 1/8 scale when that covers out_size
                box = drafted[1] if drafted is not None else None
            image.load()
            sixteen = image.mode in _SIXTEEN_BIT
            converted = image if sixteen else image.convert("RGBA")
            if converted.size != out_size:
                converted = converted.resize(out_size, Image.Resampling.BOX, box=box)
            array = np.asarray(converted, dtype=np.float32)
        except Image.DecompressionBombError as exc:
            raise PosedImagesError(f"{path}: more than {MAX_IMAGE_PIXELS:,} pixels ({exc})") from exc
        except _DECODER_ERRORS as exc:
            raise PosedImagesError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    if sixteen:
        gray = array / 65535.0
        return np.stack([gray, gray, gray, np.ones_like(gray)], axis=-1)
    return array / 255.0


__all__ = ["IMAGE_FORMATS", "MAX_IMAGE_PIXELS", "image_size", "read_rgba"]
