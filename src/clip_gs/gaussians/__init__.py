"""Gaussian data model and file I/O (no Lightning, no model code)."""

from clip_gs.gaussians.cloud import (
    FEATURE_LAYOUT,
    SH_C0,
    FeatureLayout,
    GaussianCloud,
    canonical_quaternions,
    quaternions_to_matrices,
    sh_coeff_count,
)
from clip_gs.gaussians.io import GaussianFormat, load_gaussians, register_format, registered_formats, save_gaussians

__all__ = [
    "FEATURE_LAYOUT",
    "SH_C0",
    "FeatureLayout",
    "GaussianCloud",
    "GaussianFormat",
    "canonical_quaternions",
    "load_gaussians",
    "quaternions_to_matrices",
    "register_format",
    "registered_formats",
    "save_gaussians",
    "sh_coeff_count",
]
