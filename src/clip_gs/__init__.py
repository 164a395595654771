"""clip-gs: CLIP-GS (Jiao et al., ICCV 2025) encoders for 3D Gaussian Splatting objects.

Importing ``clip_gs`` needs no GPU and imports nothing CUDA-only.
"""

from clip_gs.errors import (
    CheckpointError,
    ClipGSError,
    ConfigError,
    GaussianFormatError,
    MeshError,
    MissingDependencyError,
    NotGaussianDataError,
    RenderError,
    UnsupportedFormatError,
    WeightsUnavailableError,
)
from clip_gs.gaussians import GaussianCloud, load_gaussians, save_gaussians

# Submodules with heavier imports (timm for the model, trimesh, the rasterizer) load on first use.
_LAZY = {
    "CLIPGS": "clip_gs.model",
    "CLIPGSConfig": "clip_gs.model",
    "FEATURE_LAYOUT": "clip_gs.model.features",
    "get_model_config": "clip_gs.model",
    "list_models": "clip_gs.model",
    "mesh_to_gaussians": "clip_gs.gaussians.mesh",
    "load_asset": "clip_gs.gaussians.assets",
    "make_object": "clip_gs.data.synthetic",
    "SyntheticGaussianDataset": "clip_gs.data.synthetic",
    "render_cloud": "clip_gs.render",
    "orbit_cameras": "clip_gs.render",
    "contact_sheet": "clip_gs.render",
    "render_sheet": "clip_gs.render",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clip_gs' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "CLIPGS",
    "FEATURE_LAYOUT",
    "CLIPGSConfig",
    "CheckpointError",
    "ClipGSError",
    "ConfigError",
    "GaussianCloud",
    "GaussianFormatError",
    "MeshError",
    "MissingDependencyError",
    "NotGaussianDataError",
    "RenderError",
    "SyntheticGaussianDataset",
    "UnsupportedFormatError",
    "WeightsUnavailableError",
    "__version__",
    "contact_sheet",
    "get_model_config",
    "list_models",
    "load_asset",
    "load_gaussians",
    "make_object",
    "mesh_to_gaussians",
    "orbit_cameras",
    "render_cloud",
    "render_sheet",
    "save_gaussians",
]
