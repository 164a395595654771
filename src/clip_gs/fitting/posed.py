"""Posed images: RGBA views with their cameras, and the NeRF/Blender ``transforms.json`` layout.

The layout is the one of the NeRF synthetic scenes, instant-ngp, Zero123's and ShapeSplat's
renders: a folder with ``transforms.json`` and image files. What is read:

- ``frames``: a list of ``{"file_path": ..., "transform_matrix": 4 x 4}``; ``file_path`` is
  relative to the folder and stays inside it, with or without an extension (``.png``, ``.jpg``,
  ``.jpeg`` are tried when it names no file); ``transform_matrix`` is **camera-to-world in
  OpenGL/Blender axes** (x right, y up, z backward).
- Intrinsics: ``fl_x``/``fl_y``/``cx``/``cy`` (instant-ngp) when present, at the top level or per
  frame; else ``camera_angle_x`` (and ``camera_angle_y`` if present, else square pixels) with the
  principal point at the image centre.
- Images: PNG or JPEG, RGBA (straight alpha) or RGB (then opaque), 8 or 16 bit; every image must
  have the same size.

Every value is validated before use: :mod:`clip_gs.fitting.transforms_json` is the one reader of
``transforms.json`` (its rules: paths inside the folder, rigid cameras, possible intrinsics) and
:mod:`clip_gs.fitting.image_files` reads the images (formats, pixel cap, downscaling on read).

:func:`write_posed_images` writes ``images/view_000.png``... as RGBA PNG and a ``transforms.json``
with ``camera_angle_x`` and explicit ``fl_x, fl_y, cx, cy, w, h``, so that
``read_posed_images(write_posed_images(...))`` gives back the same cameras and 8-bit images; it
writes only into a new or empty folder. Cameras are converted to the package's
:class:`~clip_gs.render.Cameras` (OpenCV axes, world-to-camera) on reading and back on writing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clip_gs.errors import ConfigError, PosedImagesError
from clip_gs.fitting.image_files import image_size, read_rgba
from clip_gs.fitting.transforms_json import TRANSFORMS_NAME, read_transforms
from clip_gs.render.cameras import OPENCV_TO_OPENGL, Cameras

MAX_VIEWS_BYTES = 4 << 30
"""Largest float32 RGBA the read views may fill together (after any downscaling); checked from the first
image's header and the frame count before any image is decoded."""


@dataclass(frozen=True, eq=False)
class PosedImages:
    """C RGBA images of one object and the cameras they were taken with.

    Args:
        images: ``[C, H, W, 4]`` float32 RGBA in [0, 1], straight alpha.
        cameras: C cameras of size ``W x H`` (OpenCV convention).
        name: the object, for messages.

    Raises:
        PosedImagesError: no views; image and camera counts or sizes that differ; a non-finite
            value; an image that is transparent everywhere.
    """

    images: Tensor
    cameras: Cameras
    name: str = "object"

    def __post_init__(self) -> None:
        images, cams = self.images, self.cameras
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != 4:
            shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise PosedImagesError(f"{self.name}: images must be a [C, H, W, 4] RGBA tensor, got {shape}")
        if images.shape[0] == 0:
            raise PosedImagesError(f"{self.name}: no views")
        if images.shape[0] != len(cams):
            raise PosedImagesError(f"{self.name}: {images.shape[0]} images but {len(cams)} cameras")
        if (images.shape[2], images.shape[1]) != (cams.width, cams.height):
            raise PosedImagesError(
                f"{self.name}: images are {images.shape[2]}x{images.shape[1]} but the cameras are "
                f"{cams.width}x{cams.height}"
            )
        bad = ~torch.isfinite(images).flatten(1).all(dim=1)
        if bool(bad.any()):
            raise PosedImagesError(f"{self.name}: view(s) {bad.nonzero().flatten().tolist()} hold NaN or Inf values")
        empty = images[..., 3].flatten(1).amax(dim=1) <= 0
        if bool(empty.any()):
            raise PosedImagesError(
                f"{self.name}: view(s) {empty.nonzero().flatten().tolist()} are transparent everywhere "
                "(the object is not in the picture)"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: slice | Tensor) -> PosedImages:
        """A subset of the views."""
        return PosedImages(self.images[index], self.cameras[index], self.name)


def fit_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled so that the larger side is at most ``max_size`` (rounded, at least 1)."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_posed_images(folder: str | os.PathLike, name: str | None = None, max_size: int | None = None) -> PosedImages:
    """Read a ``transforms.json`` folder (see the module docstring for what is read).

    ``transforms.json`` is validated by :func:`~clip_gs.fitting.transforms_json.read_transforms` and each
    image read by :func:`~clip_gs.fitting.image_files.read_rgba` (formats, pixel cap). Memory is bounded:
    views larger than ``max_size`` are downscaled while read, and all views together may fill at most
    :data:`MAX_VIEWS_BYTES` of float32.

    Args:
        name: the object, for messages (default: the folder's name).
        max_size: views whose larger side exceeds it are area-averaged down to it on reading, their
            intrinsics scaled with them; None keeps the files' size.

    Raises:
        PosedImagesError: a rule of ``transforms.json`` or of the image files broken, images of different
            sizes, views over :data:`MAX_VIEWS_BYTES`, or bad values (see :class:`PosedImages`).
        ConfigError: ``max_size`` is not a positive int.
    """
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1):
        raise ConfigError(f"max_size must be a positive int or None, got {max_size!r}")
    folder = Path(folder)
    spec = read_transforms(folder)
    name = name or folder.name
    width, height = image_size(spec.frames[0].image)
    out_width, out_height = fit_size(width, height, max_size)
    needed = len(spec.frames) * out_width * out_height * 4 * 4
    if needed > MAX_VIEWS_BYTES:
        raise PosedImagesError(
            f"{spec.path}: {len(spec.frames)} views of {out_width}x{out_height} need {needed / 2**30:.1f} GiB as "
            f"float32, over the {MAX_VIEWS_BYTES / 2**30:g} GiB read at most (a smaller size or fewer frames fit)"
        )
    try:
        images = torch.empty(len(spec.frames), out_height, out_width, 4)
    except (MemoryError, RuntimeError) as exc:  # the allocator's refusal
        raise PosedImagesError(f"{spec.path}: no memory for the views ({needed / 2**30:.1f} GiB)") from exc
    scale = torch.tensor([out_width / width, out_height / height, 1.0], dtype=torch.float64)[:, None]
    viewmats, Ks = [], []
    for index, frame in enumerate(spec.frames):
        images[index] = torch.from_numpy(read_rgba(frame.image, (width, height), (out_width, out_height)))
        viewmats.append(torch.linalg.inv(frame.c2w @ OPENCV_TO_OPENGL))
        Ks.append(frame.intrinsics(width, height) * scale)
    cameras = Cameras(torch.stack(viewmats).float(), torch.stack(Ks).float(), out_width, out_height)
    return PosedImages(images, cameras, name)


def views_folder_is_free(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, refused unless it is absent or empty: views are written only where they replace
    nothing (clip-gs never overwrites files it may not have written).

    Raises:
        PosedImagesError: ``folder`` is a file, or a folder that holds something.
    """
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise PosedImagesError(f"{folder}: not a folder; views are written into a new or empty folder")
    if folder.is_dir():
        held = sorted(entry.name for entry in folder.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise PosedImagesError(
                f"{folder}: not empty (holds {shown}); views are written into a new or empty folder, so that "
                "nothing clip-gs did not write is replaced"
            )
    return folder


def write_posed_images(folder: str | os.PathLike, posed: PosedImages, extra: dict | None = None) -> Path:
    """Write ``images/view_000.png``... (RGBA, 8 bit) and ``transforms.json`` into ``folder``.

    Args:
        extra: more top-level JSON fields (e.g. how the views were made).

    Returns:
        The path of ``transforms.json``.

    Raises:
        PosedImagesError: ``folder`` exists and is not empty (:func:`views_folder_is_free`).
    """
    from PIL import Image

    folder = views_folder_is_free(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    cams = posed.cameras
    frames = []
    for index in range(len(posed)):
        rel = f"images/view_{index:03d}.png"
        pixels = (posed.images[index].clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(pixels, mode="RGBA").save(folder / rel)
        c2w = torch.linalg.inv(cams.viewmats[index].double()) @ OPENCV_TO_OPENGL
        K = cams.Ks[index].double()
        frames.append({
            "file_path": rel,
            "transform_matrix": c2w.tolist(),
            "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        })  # fmt: skip
    fx = float(cams.Ks[0, 0, 0])
    spec = {"camera_angle_x": 2.0 * math.atan(0.5 * cams.width / fx), "w": cams.width, "h": cams.height,
            **(extra or {}), "frames": frames}  # fmt: skip
    path = folder / TRANSFORMS_NAME
    path.write_text(json.dumps(spec, indent=1))
    return path


__all__ = [
    "MAX_VIEWS_BYTES",
    "TRANSFORMS_NAME",
    "PosedImages",
    "fit_size",
    "read_posed_images",
    "views_folder_is_free",
    "write_posed_images",
]
