"""Contact sheets: several rendered views tiled into one image for a quick look."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from clip_gs.errors import RenderError
from clip_gs.gaussians.cloud import GaussianCloud


def contact_sheet(
    images: Tensor,
    columns: int | None = None,
    labels: Sequence[str] | None = None,
    padding: int = 2,
    pad_color: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile C images into a grid, row-major, optionally with a text label on each.

    Args:
        images: ``[C, H, W, 3]`` float in [0, 1] (values outside are clipped).
        columns: images per row; None gives ``ceil(sqrt(C))``.
        labels: C strings drawn at each tile's top-left corner with PIL's default font.
        padding: pixels between (and around) the tiles.
        pad_color: RGB 0..255 of the padding and of empty grid cells.

    Returns:
        An RGB ``PIL.Image`` of size ``(columns * (W + padding) + padding, rows * (H + padding) + padding)``.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise RenderError(f"contact_sheet needs a [C, H, W, 3] tensor with C >= 1, got {shape}")
    count, height, width, _ = images.shape
    if columns is None:
        columns = math.ceil(math.sqrt(count))
    if columns < 1:
        raise RenderError(f"columns must be >= 1, got {columns}")
    if labels is not None and len(labels) != count:
        raise RenderError(f"{len(labels)} labels for {count} images")
    if padding < 0:
        raise RenderError(f"padding must be >= 0, got {padding}")
    rows = math.ceil(count / columns)
    pixels = (images.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    sheet_w, sheet_h = columns * (width + padding) + padding, rows * (height + padding) + padding
    canvas = np.empty((sheet_h, sheet_w, 3), dtype=np.uint8)
    canvas[:] = pad_color
    for index in range(count):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top : top + height, left : left + width] = pixels[index]
    sheet = Image.fromarray(canvas)
    if labels is not None:
        draw = ImageDraw.Draw(sheet)
        for index, label in enumerate(labels):
            top = padding + (index // columns) * (height + padding)
            left = padding + (index % columns) * (width + padding)
            # Dark text on a light box stays readable on any render.
            box = draw.textbbox((left + 2, top + 2), str(label))
            draw.rectangle(box, fill=(255, 255, 255))
            draw.text((left + 2, top + 2), str(label), fill=(0, 0, 0))
    return sheet


__all__ = ["contact_sheet"]


def render_sheet(
    cloud: GaussianCloud,
    views: int = 4,
    size: int = 256,
    elevation: float = 20.0,
    up: str = "+y",
    background: Sequence[float] = (1.0, 1.0, 1.0),
    progress: bool | None = None,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """Render ``views`` regular orbit views of an object into one contact sheet.

    The cloud is normalised to the unit sphere first; cameras follow :func:`orbit_cameras`
    (``up`` is the world up axis: ``"+y"`` for glTF, ``"-y"`` for many COLMAP-frame captures).

    Args:
        cloud: an unbatched :class:`GaussianCloud`.
        views: number of views, at regular azimuths from 0.
        size: width and height of each view in pixels.
        elevation: camera elevation in degrees.
        background: RGB in [0, 1].
        progress: show a per-view progress bar (default: for >= 200,000 Gaussian-views).
        labels: one text label per view (:func:`contact_sheet`).

    Returns:
        The sheet as an RGB ``PIL.Image``.
    """
    from clip_gs.render.cameras import orbit_cameras
    from clip_gs.render.rasterize import render_cloud

    cloud = cloud.normalized()
    cameras = orbit_cameras(views, elevation_deg=elevation, width=size, height=size, up=up)
    bg = torch.tensor(background, dtype=cloud.dtype, device=cloud.device)  # on CUDA, gsplat renders
    show = progress if progress is not None else cloud.num_gaussians * views >= 200_000
    indices = range(views)
    if show:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"render {cloud.num_gaussians:,} Gaussians", unit="view")
    images = [render_cloud(cloud, cameras[i : i + 1], background=bg).rgb.cpu() for i in indices]
    return contact_sheet(torch.cat(images), labels=labels)


def render_view(
    cloud: GaussianCloud,
    size: int = 128,
    up: str = "+y",
    elevation: float = 20.0,
    azimuth: float = 30.0,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """One orbit view of the normalised ``cloud`` (a thumbnail: search hits, retrieval pictures).

    Args:
        cloud: an unbatched :class:`GaussianCloud` (rendered in float32 on its device).
        size: width and height in pixels.
        up: the object's world up axis (``+y``, ``-y``, ``+z``, ``-z``).
        elevation, azimuth: camera angles in degrees (:func:`orbit_cameras`).
        background: RGB in [0, 1].

    Returns:
        ``[size, size, 3]`` float RGB in [0, 1], on the CPU.
    """
    from clip_gs.render.cameras import orbit_cameras
    from clip_gs.render.rasterize import render_cloud

    cloud = cloud.to(dtype=torch.float32).normalized()
    cameras = orbit_cameras(1, elevation_deg=elevation, azimuth_start_deg=azimuth, width=size, height=size, up=up)
    bg = torch.tensor(background, dtype=torch.float32, device=cloud.device)
    return render_cloud(cloud, cameras, background=bg).rgb[0].clamp(0, 1).cpu()
