"""The offline teacher ``synthetic-clip``: a small open_clip CLIP that knows the synthetic objects.

- Architecture: the open_clip config ``model_configs/synthetic-clip.json`` (registered with
  ``open_clip.add_model_config``): a ModifiedResNet image tower (width 16, layers 1-2-2-1, 64 px,
  attention pooling) and a 4-layer, 128-wide text transformer with open_clip's own CLIP BPE
  tokenizer (context 32 tokens), 256-d embeddings.
- Weights: ``weights/synthetic-clip.safetensors`` inside the package (fp16, a few MB; the token
  embedding is stored sparsely: rows of tokens never seen in training are zero), trained by
  :func:`clip_gs.offline_teacher.build.build_offline_teacher` (``clip-gs teacher build``).
- Loading needs no network: ``load_teacher("synthetic-clip")`` or :class:`SyntheticCLIPTeacher`.
  ``load_teacher("synthetic-clip@/path/rebuilt.safetensors")`` loads a rebuilt file instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.errors import WeightsUnavailableError
from clip_gs.teachers.open_clip_teacher import OpenCLIPTeacher, import_open_clip

OFFLINE_TEACHER = "synthetic-clip"
"""Spec string of the offline teacher (:func:`~clip_gs.teachers.factory.load_teacher`)."""

ARCHITECTURE = "synthetic-clip"
"""The open_clip architecture name registered by :func:`register_architecture`."""

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_PATH = Path(__file__).parent / "weights" / "synthetic-clip.safetensors"
"""The shipped weights."""

VIEW_BACKGROUNDS = ((1.0, 1.0, 1.0),)
"""What the offline teacher knows: its training views were rendered on white only (measured on fresh
objects: 83% zero-shot on white views, 8%, chance over 13 classes, on black ones), so dataset
preparation refuses other backgrounds for it (:func:`~clip_gs.teachers.base.check_view_background`)."""

REBUILD_COMMAND = (
    "clip-gs teacher build --seed 0 --threads 1 --out src/clip_gs/teachers/weights/synthetic-clip.safetensors"
)

_registered = False


def register_architecture() -> None:
    """Register ``synthetic-clip`` with open_clip (idempotent), so ``open_clip.create_model`` knows it."""
    global _registered
    open_clip = import_open_clip()
    if not _registered or ARCHITECTURE not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


class SyntheticCLIPTeacher(OpenCLIPTeacher):
    """The offline teacher, loaded from the shipped weights (or ``weights``, a rebuilt file).

    Args:
        weights: a safetensors file made by ``clip-gs teacher build`` (default: the shipped file).
        batch_size, device, precision: see :class:`~clip_gs.teachers.base.Teacher`.

    Raises:
        WeightsUnavailableError: the weights file is missing (the message gives the rebuild command).
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, batch_size: int = 256, device="cpu",
                 precision: str = "fp32") -> None:  # fmt: skip
        register_architecture()
        path = Path(weights) if weights is not None else WEIGHTS_PATH
        if not path.is_file():
            raise WeightsUnavailableError(
                f"offline teacher {OFFLINE_TEACHER}: weights file {path} is missing; rebuild it with `{REBUILD_COMMAND}`"
                " (about an hour on 2 CPU cores: 10-14 min rendering, 47 min training)"
            )
        super().__init__(ARCHITECTURE, pretrained=path, batch_size=batch_size, device=device, precision=precision,
                         identity_name=OFFLINE_TEACHER)  # fmt: skip
        self.weights_path = path
        self.view_backgrounds = VIEW_BACKGROUNDS


__all__ = [
    "ARCHITECTURE",
    "OFFLINE_TEACHER",
    "REBUILD_COMMAND",
    "VIEW_BACKGROUNDS",
    "WEIGHTS_PATH",
    "SyntheticCLIPTeacher",
    "register_architecture",
]
