"""clip-gs: CLIP-GS (Jiao et al., ICCV 2025) encoders for 3D Gaussian Splatting objects.

The top level is what a user types::

    import clip_gs

    model = clip_gs.create_model("uni3d-b-no-lvis")       # Uni3D's weights, from the Hugging Face cache
    embedding = model.encode("chair.ply")                 # [1024], unit norm, in the teacher's CLIP space

Everything else is reached through its package (``clip_gs.model``, ``clip_gs.gaussians``,
``clip_gs.teachers``, ``clip_gs.render``, ``clip_gs.data``, ``clip_gs.evaluation``, ...).
Importing ``clip_gs`` needs no GPU and imports nothing CUDA-only; the model and teachers load on
first use.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from clip_gs.errors import ClipGSError, WeightsUnavailableError
from clip_gs.gaussians import GaussianCloud, load_gaussians, save_gaussians
from clip_gs.gaussians.assets import load_asset

try:
    __version__ = version("clip-gs")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "CLIPGS": "clip_gs.model",
    "create_model": "clip_gs.model",
    "list_models": "clip_gs.model",
    "load_model": "clip_gs.model",
    "load_teacher": "clip_gs.teachers",
}
"""Names whose packages import torch-heavy code (timm, open_clip) on first use."""


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clip_gs' has no attribute {name!r}")


__all__ = [
    "CLIPGS",
    "ClipGSError",
    "GaussianCloud",
    "WeightsUnavailableError",
    "__version__",
    "create_model",
    "list_models",
    "load_asset",
    "load_gaussians",
    "load_model",
    "load_teacher",
    "save_gaussians",
]
