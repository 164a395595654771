"""The demo's search gallery: a small set of synthetic objects, written once as ``.ply`` files, and
their embedding index.

The gallery is :data:`GALLERY_COLOURS`-coloured solid objects, :data:`PER_CLASS` of each synthetic
class (:data:`~clip_gs.data.synthetic.SHAPE_CLASSES`), each standing upright (:data:`GALLERY_POSE`)
and turned by an angle drawn from the seed, as assets stand in a real collection, written with
:func:`~clip_gs.gaussians.assets.save_asset` (upright for every reader); ``gallery.json`` beside them lists each
file with its class and caption (:func:`~clip_gs.data.synthetic.make_caption`). Its index is built
by :func:`~clip_gs.usage.embed_folder` (one file per model, so switching models keeps both), which
on a later start finds every file unchanged and embeds nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from clip_gs.errors import DatasetError

GALLERY_COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "orange", "purple")
"""Colours of the gallery's objects: object ``j`` of class ``i`` gets ``GALLERY_COLOURS[(2 i + j) % 6]``."""

PER_CLASS = 2
"""Gallery objects per synthetic class."""

GALLERY_GAUSSIANS = 4096
"""Gaussians per gallery object (4x what the tiny models sample; the thumbnails stay sharp)."""

GALLERY_POSE = "upright"
"""Pose of the gallery's objects (:data:`~clip_gs.data.synthetic.POSES`): the pose the quick-start trains on."""

GALLERY_FILE = "gallery.json"
"""The gallery's list of objects (``{"objects": [{"file", "label", "caption", "color"}, ...]}``)."""


@dataclass(frozen=True)
class GalleryItem:
    """One gallery object: its file (relative to the gallery folder), class, caption and colour."""

    file: str
    label: str
    caption: str
    color: str


def gallery_items() -> list[GalleryItem]:
    """What the gallery holds (without building anything): the objects in class order."""
    from clip_gs.data.synthetic import SHAPE_CLASSES, SHAPE_NOUNS, make_caption

    items = []
    for i, shape in enumerate(SHAPE_CLASSES):
        for j in range(PER_CLASS):
            color = GALLERY_COLOURS[(2 * i + j) % len(GALLERY_COLOURS)]
            items.append(GalleryItem(f"{shape}-{color}.ply", SHAPE_NOUNS[shape], make_caption(shape, color, "solid", None),
                                     color))  # fmt: skip
    return items


def _object_seed(seed: int, file: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{file}".encode()).digest()[:4], "little")


def build_gallery(folder: str | Path, seed: int = 0, num_gaussians: int = GALLERY_GAUSSIANS) -> list[GalleryItem]:
    """Write the gallery into ``folder`` (files already there with the same recipe are kept).

    Each object is a deterministic function of ``seed`` and its file name; ``gallery.json``
    records the recipe, so a folder made with another seed or count is rewritten.

    Returns:
        The gallery's items (:func:`gallery_items`).
    """
    from clip_gs.data.synthetic import SHAPE_CLASSES, SHAPE_NOUNS, make_object
    from clip_gs.gaussians.assets import save_asset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = gallery_items()
    record = {"seed": seed, "num_gaussians": num_gaussians, "pose": GALLERY_POSE,
              "objects": [vars(item) for item in items]}  # fmt: skip
    listing = folder / GALLERY_FILE
    same = listing.is_file() and _read_listing(listing) == record
    shape_of = {SHAPE_NOUNS[s]: s for s in SHAPE_CLASSES}
    for item in items:
        path = folder / item.file
        if same and path.is_file():
            continue
        obj = make_object(shape_of[item.label], seed=_object_seed(seed, item.file), num_gaussians=num_gaussians,
                          color=item.color, pattern="solid", pose=GALLERY_POSE)  # fmt: skip
        save_asset(obj.cloud, path)  # upright: they stand +y
    listing.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return items


def _read_listing(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable gallery listing: {exc}") from exc


def read_gallery(folder: str | Path) -> dict[str, GalleryItem]:
    """The items of a built gallery by file name.

    Raises:
        DatasetError: no or an unreadable ``gallery.json``.
    """
    listing = Path(folder) / GALLERY_FILE
    if not listing.is_file():
        raise DatasetError(f"{folder}: no {GALLERY_FILE} (build the gallery with build_gallery first)")
    objects = _read_listing(listing).get("objects", [])
    return {o["file"]: GalleryItem(**o) for o in objects}


__all__ = [
    "GALLERY_COLOURS",
    "GALLERY_FILE",
    "GALLERY_GAUSSIANS",
    "PER_CLASS",
    "GalleryItem",
    "build_gallery",
    "gallery_items",
    "read_gallery",
]
