"""Built-in 3DGS file formats. Importing this package registers each of them with
:mod:`clip_gs.gaussians.io`; a new format is one module plus one line here."""

from clip_gs.gaussians.formats.ply import read_ply, write_ply
from clip_gs.gaussians.formats.ply_header import is_ply
from clip_gs.gaussians.io import GaussianFormat, register_format

register_format(GaussianFormat("ply", (".ply",), is_ply, read_ply, write_ply))

__all__ = ["read_ply", "write_ply"]
