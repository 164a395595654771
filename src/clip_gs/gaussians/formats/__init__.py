"""Built-in 3DGS file formats: :data:`BUILTIN_FORMATS`, which :mod:`clip_gs.gaussians.io` registers
on first use; a new format is one module plus one line here.

Sniffing order: SuperSplat compressed PLY (a PLY with a ``chunk`` element and packed vertices)
before the INRIA PLY, then spz (``NGSP`` magic, bare or inside gzip). ``.splat`` has no header
and is recognised by its extension only; so is UniGS's ``.pkl`` (:mod:`.unigs_pkl`), which is only
ever read through the restricted unpickler of :mod:`.safe_pickle`, never ``pickle.load``.
"""

from clip_gs.gaussians.formats.compressed_ply import is_compressed_ply, read_compressed_ply
from clip_gs.gaussians.formats.ply import read_ply, write_ply
from clip_gs.gaussians.formats.ply_header import is_ply
from clip_gs.gaussians.formats.splat import read_splat, write_splat
from clip_gs.gaussians.formats.spz import is_spz, read_spz
from clip_gs.gaussians.formats.unigs_pkl import read_unigs_cloud, read_unigs_pkl
from clip_gs.gaussians.format_spec import GaussianFormat


def _never(head: bytes) -> bool:
    """Headerless formats cannot be recognised by content."""
    return False


BUILTIN_FORMATS = (
    GaussianFormat("compressed_ply", (".compressed.ply",), is_compressed_ply, read_compressed_ply),
    GaussianFormat("ply", (".ply",), is_ply, read_ply, write_ply),
    GaussianFormat("spz", (".spz",), is_spz, read_spz),
    GaussianFormat("splat", (".splat",), _never, read_splat, write_splat),
    GaussianFormat("unigs_pkl", (".pkl",), _never, read_unigs_cloud),
)
"""The built-in formats in sniffing order."""

__all__ = [
    "BUILTIN_FORMATS",
    "read_compressed_ply",
    "read_ply",
    "read_splat",
    "read_spz",
    "read_unigs_pkl",
    "write_ply",
    "write_splat",
]
