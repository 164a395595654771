"""The command-line flags several ``clip-gs`` verbs share, defined once: wherever one appears it has
the same option strings, default, choices, type and help (``tests/test_cli_flags.py`` walks every
verb and checks it). The verbs' parsers (``clip_gs.cli`` and the ``cli`` modules of the layers below
it) add them with these functions.
"""

from __future__ import annotations

import argparse

from clip_gs.gaussians.assets import MESH_GAUSSIANS
from clip_gs.gaussians.frames import UP_CHOICES
from clip_gs.model.precision import PRECISIONS

DEVICE = "auto"
"""Default of every ``--device``: CUDA when available, else the CPU
(:func:`~clip_gs.model.precision.resolve_device`)."""

PRECISION = "auto"
"""Default of every ``--precision`` (its meaning: see :data:`~clip_gs.model.precision.PRECISIONS`)."""

BATCH_SIZE = 8
"""Default of every ``--batch-size``: objects per forward pass."""

MODEL_HELP = ("a model name (uni3d-b-no-lvis, ...; see clip-gs models), a model folder, a Hub repo id, a Uni3D "
              "model.pt or hf://owner/repo/file")  # fmt: skip
TEACHER_HELP = ("teacher spec to use instead of the one the model (or index) records; it must be that same "
                "teacher (e.g. NAME@/path/to/checkpoint for a teacher loaded from a file)")  # fmt: skip
DEVICE_HELP = "where it runs: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N"
PRECISION_HELP = ("compute precision: auto (bf16 where the device runs it natively, else fp32; a teacher on the "
                  "CPU stays fp32), fp32, bf16, or fp16 (a teacher on CUDA only)")  # fmt: skip
UP_HELP = ("world up axis of files that declare none: auto (the axis a clip-gs ply declares, else -y for 3DGS "
           "files, which INRIA/COLMAP captures are, and +y for meshes), +y (glTF), -y, +z, -z")  # fmt: skip
MESH_GAUSSIANS_HELP = f"Gaussians sampled on the surface of a mesh (default {MESH_GAUSSIANS:,})"
SEED_HELP = "random seed: mesh sampling, resampling and every other draw of the command follow from it"
BATCH_SIZE_HELP = "objects per forward pass"
QUIET_HELP = "no progress bars"
ENDPOINT_URL_HELP = "S3 endpoint for s3:// locations (else boto3's default)"
JSON_HELP = "print the result as JSON instead of text"
OVERWRITE_HELP = "discard what an earlier run wrote and start afresh"


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_argument(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--model", required=required, help=MODEL_HELP)


def add_teacher_argument(parser: argparse.ArgumentParser) -> None:
    """``--teacher`` of a verb that takes a model: it replaces the teacher the model records."""
    parser.add_argument("--teacher", default=None, help=TEACHER_HELP)


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = DEVICE) -> None:
    """``--device``; ``default=None`` only where something else supplies the default (the demo's
    ``CLIP_GS_DEMO_*`` variables, then :class:`~clip_gs.demo.settings.DemoSettings`, whose default is
    :data:`DEVICE`)."""
    parser.add_argument("--device", default=default, help=DEVICE_HELP)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default=PRECISION, choices=PRECISIONS, help=PRECISION_HELP)


def add_up_argument(parser: argparse.ArgumentParser, default: str | None = "auto", help: str = UP_HELP) -> None:
    """``--up`` (its values may start with a dash: ``clip_gs.cli.SIGNED_VALUE_OPTIONS``); ``default=None``
    where a recorded setting supplies the default (a search: the index's, or the demo's settings)."""
    parser.add_argument("--up", default=default, choices=UP_CHOICES, help=help)


def add_mesh_gaussians_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh-gaussians", type=positive_int, default=MESH_GAUSSIANS, help=MESH_GAUSSIANS_HELP)


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help=SEED_HELP)


def add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help=BATCH_SIZE_HELP)


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def add_endpoint_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default=None, help=ENDPOINT_URL_HELP)


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def add_gaussians_arguments(parser: argparse.ArgumentParser) -> None:
    """``--gaussians surface|fitted`` and the fit's ``--fit-iterations / --fit-views / --fit-size``: how a mesh
    becomes Gaussians (``prepare`` for training data, ``eval`` for benchmark meshes, made alike)."""
    parser.add_argument("--gaussians", default="surface", choices=("surface", "fitted"),
                        help="meshes become surface samples, or 3DGS fitted to Blender renders (the paper's: one render "
                        "pass per mesh; the teacher sees the fit's views)")  # fmt: skip
    parser.add_argument("--fit-iterations", type=positive_int, default=1000, help="with --gaussians fitted (paper: 5000)")
    parser.add_argument("--fit-views", type=positive_int, default=36, help="with --gaussians fitted: views rendered and "
                        "fitted to (paper: 36)")  # fmt: skip
    parser.add_argument("--fit-size", type=positive_int, default=128, help="with --gaussians fitted: their size in pixels")


def storage_options(endpoint_url: str | None) -> dict | None:
    """The ``storage_options`` of an ``--endpoint-url`` (None: boto3's defaults)."""
    return {"endpoint_url": endpoint_url} if endpoint_url else None


__all__ = [
    "BATCH_SIZE",
    "DEVICE",
    "PRECISION",
    "add_batch_size_argument",
    "add_device_argument",
    "add_endpoint_url_argument",
    "add_json_argument",
    "add_mesh_gaussians_argument",
    "add_model_argument",
    "add_overwrite_argument",
    "add_precision_argument",
    "add_quiet_argument",
    "add_seed_argument",
    "add_teacher_argument",
    "add_up_argument",
    "positive_int",
    "storage_options",
]
