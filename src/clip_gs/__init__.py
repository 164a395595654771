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
    RenderError,
    UnsupportedFormatError,
    WeightsUnavailableError,
)
from clip_gs.gaussians import FEATURE_LAYOUT, GaussianCloud, load_gaussians, save_gaussians

__version__ = "0.1.0"

__all__ = [
    "FEATURE_LAYOUT",
    "CheckpointError",
    "ClipGSError",
    "ConfigError",
    "GaussianCloud",
    "GaussianFormatError",
    "MeshError",
    "MissingDependencyError",
    "RenderError",
    "UnsupportedFormatError",
    "WeightsUnavailableError",
    "__version__",
    "load_gaussians",
    "save_gaussians",
]
