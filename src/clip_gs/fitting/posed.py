"""Posed images: RGBA views with their cameras, and the NeRF/Blender ``transforms.json`` layout.

The layout is the one of the NeRF synthetic scenes, instant-ngp, Zero123's and ShapeSplat's
renders: a folder with ``transforms.json`` and image files. What is read:

- ``frames``: a list of ``{"file_path": ..., "transform_matrix": 4 x 4}``; ``file_path`` is
  relative to the folder, with or without an extension (``.png`` is tried when it has none);
  ``transform_matrix`` is **camera-to-world in OpenGL/Blender axes** (x right, y up, z backward).
- Intrinsics: ``fl_x``/``fl_y``/``cx``/``cy`` (instant-ngp) when present, at the top level or per
  frame; else ``camera_angle_x`` (and ``camera_angle_y`` if present, else square pixels) with the
  principal point at the image centre.
- Images: RGBA (straight alpha) or RGB (then opaque), 8 or 16 bit; every image must have the same
  size.

:func:`write_posed_images` writes ``images/view_000.png``... as RGBA PNG and a ``transforms.json``
with ``camera_angle_x`` and explicit ``fl_x, fl_y, cx, cy, w, h``, so that
``read_posed_images(write_posed_images(...))`` gives back the same cameras and 8-bit images.
Cameras are converted to the package's :class:`~clip_gs.render.Cameras` (OpenCV axes,
world-to-camera) on reading and back on writing.
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

from clip_gs.errors import PosedImagesError
from clip_gs.render.cameras import OPENCV_TO_OPENGL, Cameras

TRANSFORMS_NAME = "transforms.json"


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


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I"):
                array = np.asarray(image, dtype=np.float32) / 65535.0
                return np.concatenate([np.repeat(array[..., None], 3, -1), np.ones_like(array)[..., None]], -1)
            array = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise PosedImagesError(f"{path}: cannot read the image ({exc})") from exc
    return array


def _frame_image(folder: Path, file_path: str) -> Path:
    path = folder / file_path
    if path.suffix == "" or not path.is_file():
        for suffix in (".png", ".jpg", ".jpeg"):
            candidate = path.with_name(path.name + suffix)
            if candidate.is_file():
                return candidate
    if not path.is_file():
        raise PosedImagesError(f"{folder / TRANSFORMS_NAME}: frame image {file_path!r} not found")
    return path


def read_posed_images(folder: str | os.PathLike, name: str | None = None) -> PosedImages:
    """Read a ``transforms.json`` folder (see the module docstring for what is read).

    Raises:
        PosedImagesError: no ``transforms.json``, malformed JSON, no frames, a missing image, images
            of different sizes, or bad values (see :class:`PosedImages`).
    """
    folder = Path(folder)
    spec_path = folder / TRANSFORMS_NAME
    name = name or folder.name
    if not spec_path.is_file():
        raise PosedImagesError(f"{folder}: no {TRANSFORMS_NAME} (a folder of posed images needs one)")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PosedImagesError(f"{spec_path}: not valid JSON ({exc})") from exc
    frames = spec.get("frames") if isinstance(spec, dict) else None
    if not isinstance(frames, list) or not frames:
        raise PosedImagesError(f"{spec_path}: no frames")
    images, viewmats, Ks = [], [], []
    for index, frame in enumerate(frames):
        where = f"{spec_path} frame {index}"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise PosedImagesError(f"{where}: needs 'file_path' and 'transform_matrix'")
        image = _read_image(_frame_image(folder, str(frame["file_path"])))
        if images and image.shape != images[0].shape:
            raise PosedImagesError(
                f"{where}: image is {image.shape[1]}x{image.shape[0]}, the first one {images[0].shape[1]}x"
                f"{images[0].shape[0]}; every view must have one size"
            )
        images.append(image)
        try:
            c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise PosedImagesError(f"{where}: transform_matrix is not a 4 x 4 matrix ({exc})") from exc
        if c2w.shape == (3, 4):
            c2w = torch.cat([c2w, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
        if c2w.shape != (4, 4) or not bool(torch.isfinite(c2w).all()):
            raise PosedImagesError(f"{where}: transform_matrix must be a finite 4 x 4 matrix")
        viewmats.append(torch.linalg.inv(c2w @ OPENCV_TO_OPENGL))
        height, width = image.shape[:2]
        Ks.append(_intrinsics({**spec, **frame}, width, height, where))
    cameras = Cameras(torch.stack(viewmats).float(), torch.stack(Ks).float(), images[0].shape[1], images[0].shape[0])
    return PosedImages(torch.from_numpy(np.stack(images)), cameras, name)


def _intrinsics(spec: dict, width: int, height: int, where: str) -> Tensor:
    if "fl_x" in spec:
        fx = float(spec["fl_x"])
        fy = float(spec.get("fl_y", fx))
    elif "camera_angle_x" in spec:
        fx = 0.5 * width / math.tan(0.5 * float(spec["camera_angle_x"]))
        fy = 0.5 * height / math.tan(0.5 * float(spec["camera_angle_y"])) if "camera_angle_y" in spec else fx
    else:
        raise PosedImagesError(f"{where}: no intrinsics (fl_x or camera_angle_x)")
    cx, cy = float(spec.get("cx", width / 2)), float(spec.get("cy", height / 2))
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise PosedImagesError(f"{where}: bad intrinsics fx={fx}, fy={fy}, cx={cx}, cy={cy}")
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def write_posed_images(folder: str | os.PathLike, posed: PosedImages, extra: dict | None = None) -> Path:
    """Write ``images/view_000.png``... (RGBA, 8 bit) and ``transforms.json`` into ``folder``.

    Args:
        extra: more top-level JSON fields (e.g. how the views were made).

    Returns:
        The path of ``transforms.json``.
    """
    from PIL import Image

    folder = Path(folder)
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


__all__ = ["TRANSFORMS_NAME", "PosedImages", "read_posed_images", "write_posed_images"]
