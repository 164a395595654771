"""Gaussian data model and file I/O (no Lightning, no model code)."""

from clip_gs.gaussians.cloud import (
    SH_C0,
    GaussianCloud,
    canonical_quaternions,
    quaternions_to_matrices,
    sh_coeff_count,
)
from clip_gs.gaussians.format_spec import GaussianFormat
from clip_gs.gaussians.io import (
    find_gaussian_files,
    load_gaussians,
    register_format,
    registered_formats,
    save_gaussians,
)

__all__ = [
    "SH_C0",
    "GaussianCloud",
    "GaussianFormat",
    "canonical_quaternions",
    "find_gaussian_files",
    "load_gaussians",
    "quaternions_to_matrices",
    "register_format",
    "registered_formats",
    "save_gaussians",
    "sh_coeff_count",
]
