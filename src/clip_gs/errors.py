"""The package's one exception hierarchy.

Every layer raises from :class:`ClipGSError`, so a caller can catch the package's
failures without catching unrelated bugs. Subclasses also derive from the built-in
exception a Python user would expect (``ValueError`` for bad input, ``ImportError``
for a missing optional extra), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ClipGSError(Exception):
    """Root of every error raised on purpose by clip_gs."""


class GaussianFormatError(ClipGSError, ValueError):
    """A 3DGS file or tensor set is unreadable or invalid (names the file and the problem)."""


class UnsupportedFormatError(GaussianFormatError):
    """The input is a known or unknown format that this version cannot read or write."""


class NotGaussianDataError(GaussianFormatError):
    """A valid file of another kind (a mesh or a plain point cloud) where 3DGS was expected."""


class MeshError(ClipGSError, ValueError):
    """A mesh cannot be loaded or converted to Gaussians."""


class ConfigError(ClipGSError, ValueError):
    """An invalid model / data configuration or an unknown configuration name."""


class CheckpointError(ClipGSError, ValueError):
    """A checkpoint is missing, corrupt or does not match the architecture."""


class WeightsUnavailableError(ClipGSError, OSError):
    """Weights or data could not be fetched (no network, no cache). The message says what was tried."""


class FileNotOnHubError(WeightsUnavailableError):
    """The Hub repo was reached (or is cached) but has no such file: it is absent, not unavailable."""


class HubError(ClipGSError, OSError):
    """A Hugging Face Hub upload failed (offline, no connection, refused token, HTTP error). Nothing was
    committed: the upload is one commit. The message names the repo and what to do."""


class ModelCardError(ClipGSError, ValueError):
    """A model card cannot be made: an evaluation report or an export record is malformed (names the file
    and the field)."""


class MissingDependencyError(ClipGSError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


class RenderError(ClipGSError, ValueError):
    """Invalid camera or rasterizer input."""


class DatasetError(ClipGSError, ValueError):
    """A prepared dataset (triplet shards, manifest) is missing, inconsistent or made by another teacher."""


class PreparedWithOtherSettingsError(DatasetError):
    """An output folder holds the work of a ``prepare`` run with other settings, source or teacher."""


class EpisodesFileError(DatasetError):
    """A few-shot episodes file is malformed or does not fit the evaluated objects (names the file, the
    setting, the episode and the object id)."""


class CorruptSampleError(DatasetError):
    """A stored sample fails its checksum or cannot be decoded (names the shard and the index)."""


class PosedImagesError(ClipGSError, ValueError):
    """Posed images (a ``transforms.json`` folder, or images with cameras) are missing or inconsistent:
    no views, counts or sizes that differ, a NaN or all-transparent image (names the object or file)."""


class FitError(ClipGSError, RuntimeError):
    """A Gaussian fit cannot go on (the loss became NaN or infinite); names the object and the step."""


class TrainingError(ClipGSError, RuntimeError):
    """Training cannot go on (e.g. a NaN or infinite loss); names the step and the batch's sample ids."""


EXIT_FATAL = 2
"""Exit status of a ``clip-gs`` command that stopped on one of the package's errors."""

EXIT_SOME_FAILED = 3
"""Exit status of a ``clip-gs`` command that went on past failed inputs (``prepare``, ``eval``,
``classify``, ``embed``): 0 means none failed."""


__all__ = [
    "EXIT_FATAL",
    "EXIT_SOME_FAILED",
    "CheckpointError",
    "ClipGSError",
    "ConfigError",
    "FileNotOnHubError",
    "FitError",
    "PreparedWithOtherSettingsError",
    "CorruptSampleError",
    "DatasetError",
    "EpisodesFileError",
    "GaussianFormatError",
    "HubError",
    "MeshError",
    "MissingDependencyError",
    "ModelCardError",
    "NotGaussianDataError",
    "PosedImagesError",
    "RenderError",
    "TrainingError",
    "UnsupportedFormatError",
    "WeightsUnavailableError",
]
