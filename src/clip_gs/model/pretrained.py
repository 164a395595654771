"""Named pretrained models: Uni3D's published checkpoints, converted once and cached as model folders.

No CLIP-GS weights are published. The only real weights of this model family are Uni3D's
(``BAAI/Uni3D`` on the Hugging Face Hub), and a CLIP-GS encoder without its Gaussian branch
(``gaussian_branch=False``, the paper's P&C baseline) *is* Uni3D's point encoder: converted
weights give Uni3D's embeddings on the same points. :data:`PRETRAINED` names them.

Resolution of a name (:func:`uni3d_folder`):

1. The checkpoint is looked up through the Hugging Face cache exactly as ``huggingface_hub``
   lays it out (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), so a machine where
   ``hf download BAAI/Uni3D modelzoo/uni3d-b-no-lvis/model.pt`` was run (or whose cache was copied
   from one) is served offline; with the network it is downloaded there.
2. The first use converts it (:func:`~clip_gs.model.uni3d.convert_uni3d_state_dict`) into a model
   folder under ``cache_root()/models/<name>/`` (other checkpoints: ``<name>-<sha256[:16]>/``): ``config.json``,
   ``model.safetensors``, ``teacher.json`` (Uni3D's teacher, :data:`UNI3D_TEACHER`) and
   ``source.json`` (the source file's reference, name and SHA-256). Later uses load the folder.
3. Offline without the file: :class:`~clip_gs.errors.WeightsUnavailableError` naming the repo, the
   file, its approximate size and the download command.

A local Uni3D ``model.pt`` (any path ending in ``.pt`` / ``.pth`` / ``.bin``) and a Hub file
reference ``hf://owner/repo/path/model.pt`` are converted and cached the same way
(:func:`uni3d_folder`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clip_gs.errors import CheckpointError, WeightsUnavailableError
from clip_gs.hub.downloads import HUB_PREFIX, parse_hub_reference
from clip_gs.storage import cache_root

UNI3D_REPO = "BAAI/Uni3D"
UNI3D_TEACHER = "open_clip:EVA02-E-14-plus/laion2b_s9b_b144k"
"""The CLIP every Uni3D checkpoint was trained into (its text tower classifies, its image tower
embeds images); recorded in each converted folder's ``teacher.json``."""

SOURCE_NAME = "source.json"
"""What a converted folder was made from: ``{"name", "source", "file", "sha256", "converter"}``."""

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin")
"""File suffixes taken as Uni3D checkpoints wherever a model is accepted."""


@dataclass(frozen=True)
class PretrainedModel:
    """One named pretrained model.

    Attributes:
        name: what users type (``uni3d-b-no-lvis``).
        size: the Uni3D size (``tiny`` ... ``giant``; :data:`~clip_gs.model.config.UNI3D_SIZES`).
        filename: the checkpoint inside :data:`UNI3D_REPO`.
        parameters: millions of parameters of the point encoder (Uni3D's paper).
        lvis: trained with Objaverse-LVIS objects ("Ensembled"): never evaluate these on LVIS.
        published: top-1 zero-shot accuracies Uni3D's README reports for the file
            (``{"objaverse-lvis": 45.9, "modelnet40": 86.1, "scanobjectnn": 61.7}``); empty when none.
    """

    name: str
    size: str
    filename: str
    parameters: float
    lvis: bool
    published: dict = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return f"{HUB_PREFIX}{UNI3D_REPO}/{self.filename}"

    @property
    def approx_bytes(self) -> int:
        """The download's approximate size: float32 weights of the point encoder plus the unused image
        parts Uni3D stores with it (an estimate, within about 20%)."""
        return int(self.parameters * 1e6 * 4 * 1.1)


def _entry(name: str, size: str, parameters: float, lvis: bool, published: dict | None = None) -> PretrainedModel:
    return PretrainedModel(name, size, f"modelzoo/{name}/model.pt", parameters, lvis, published or {})


PRETRAINED: dict[str, PretrainedModel] = {
    p.name: p
    for p in (
        _entry("uni3d-ti", "tiny", 6.2, True),
        _entry("uni3d-s", "small", 22.6, True),
        _entry("uni3d-b", "base", 88.4, True, {"objaverse-lvis": 51.7, "modelnet40": 86.3, "scanobjectnn": 63.8}),
        _entry("uni3d-l", "large", 306.7, True, {"objaverse-lvis": 53.1, "modelnet40": 86.3, "scanobjectnn": 58.2}),
        _entry("uni3d-g", "giant", 1016.5, True, {"objaverse-lvis": 53.5, "modelnet40": 87.3, "scanobjectnn": 63.9}),
        _entry(
            "uni3d-b-no-lvis", "base", 88.4, False, {"objaverse-lvis": 45.9, "modelnet40": 86.1, "scanobjectnn": 61.7}
        ),
        _entry(
            "uni3d-l-no-lvis", "large", 306.7, False, {"objaverse-lvis": 46.2, "modelnet40": 86.6, "scanobjectnn": 58.4}
        ),
        _entry(
            "uni3d-g-no-lvis",
            "giant",
            1016.5,
            False,
            {"objaverse-lvis": 47.2, "modelnet40": 86.8, "scanobjectnn": 66.5},
        ),
    )
}
"""Uni3D's published checkpoints by name. ``-no-lvis`` files never saw Objaverse-LVIS objects: use
them whenever LVIS is evaluated. Numbers: Uni3D's README (zero-shot top-1; not reproduced here)."""


def download_command(repo_id: str, filename: str) -> str:
    return f"hf download {repo_id} {filename}"


def checkpoint_file(reference: str | os.PathLike) -> Path:
    """The local file of a Uni3D checkpoint: a named pretrained model or an ``hf://`` reference through
    the Hugging Face cache (downloaded when online), or a local path.

    Raises:
        WeightsUnavailableError: a Hub file neither cached nor downloadable (names the repo, the file,
            its approximate size and the download command).
        CheckpointError: a local path that is not a file; a Hub repo without that file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    text = str(reference)
    known = PRETRAINED.get(text) or next((p for p in PRETRAINED.values() if p.reference == text), None)
    if known is None and not text.startswith(HUB_PREFIX):
        path = Path(text).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{text}: neither a pretrained model ({list(PRETRAINED)}) nor a checkpoint file")
        return path
    repo_id, filename = parse_hub_reference(known.reference if known else text)
    size = f" (about {known.approx_bytes / 1e6:,.0f} MB)" if known else ""
    what = known.name if known else text
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except EntryNotFoundError as exc:
        if not isinstance(exc, LocalEntryNotFoundError):  # a subclass: "not in the cache"
            raise CheckpointError(f"{what}: the Hub repo {repo_id} has no file {filename!r}") from exc
        raise WeightsUnavailableError(_unavailable(what, repo_id, filename, size)) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsUnavailableError(_unavailable(what, repo_id, filename, size)) from exc


def _unavailable(what: str, repo_id: str, filename: str, size: str) -> str:
    from clip_gs.hub.downloads import offline_advice

    return (
        f"{what} needs {filename} of the Hub repo {repo_id}{size}, which is not in the Hugging Face cache and "
        f"cannot be downloaded here. On a connected machine run `{download_command(repo_id, filename)}` (same "
        f"HF_HUB_CACHE / HF_HOME) and copy the cache here, or pass the downloaded model.pt's path. "
        f"({offline_advice(repo_id)})"
    )


def checkpoint_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint: taken from the Hugging Face cache's blob name when ``path`` resolves to one
    (the Hub stores large files under their SHA-256), else computed
    (:func:`~clip_gs.teachers.open_clip_teacher.file_sha256`)."""
    from clip_gs.teachers.open_clip_teacher import file_sha256

    blob = Path(os.path.realpath(path))
    if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return blob.name
    return file_sha256(path)


def uni3d_folder(
    checkpoint: str | os.PathLike, name: str | None = None, size: str | None = None, trusted_globals: Sequence[str] = ()
) -> Path:
    """The cached model folder converted from a Uni3D checkpoint (converting it on first use).

    Args:
        checkpoint: a named pretrained model, a local file or a Hub reference ``hf://owner/repo/path/model.pt``
            (:func:`checkpoint_file`).
        name: the model's name (recorded as ``config.name``; default: the pretrained name, else
            ``uni3d-<sha256[:8]>``).
        size: the Uni3D size; inferred from the weights when None.
        trusted_globals: see :func:`~clip_gs.model.uni3d.load_checkpoint_file`.

    Raises:
        WeightsUnavailableError: a Hub file neither cached nor downloadable.
        CheckpointError: an unreadable or unsafe file, keys that are not Uni3D's.
    """
    reference = str(checkpoint)
    known = PRETRAINED.get(reference)
    if known is not None and (cache_root() / "models" / known.name / SOURCE_NAME).is_file():
        return cache_root() / "models" / known.name  # converted before: the Hub file is not needed again
    path = checkpoint_file(reference)
    digest = checkpoint_sha256(path)
    label = name or (known.name if known else f"uni3d-{digest[:8]}")
    folder = cache_root() / "models" / (known.name if known else f"{label}-{digest[:16]}")
    if (folder / SOURCE_NAME).is_file():
        return folder
    source = {"name": label, "source": known.reference if known else reference, "file": path.name, "sha256": digest,
              "converter": "clip_gs.model.uni3d.convert_uni3d_state_dict"}  # fmt: skip
    _convert(path, folder, label, size or (known.size if known else None), source, trusted_globals)
    return folder


def _convert(
    path: Path, folder: Path, name: str, size: str | None, source: dict, trusted_globals: Sequence[str]
) -> None:
    """Write the converted model folder atomically (a temporary sibling renamed into place)."""
    import shutil
    import tempfile

    from clip_gs.hub.folder import write_teacher_json
    from clip_gs.model.uni3d import load_uni3d

    model = load_uni3d(
        path, size=size, trusted_globals=trusted_globals, gaussian_branch=False, name=name, uni3d_model=source["source"]
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        write_teacher_json(tmp, {"teacher": UNI3D_TEACHER, "embed_dim": model.config.embed_dim})
        (tmp / SOURCE_NAME).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process converted it meanwhile: keep theirs
            if not (folder / SOURCE_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_checkpoint_reference(reference: str) -> bool:
    """A Uni3D checkpoint file (local or ``hf://``) rather than a model folder or repo id."""
    return reference.lower().endswith(CHECKPOINT_SUFFIXES) and (
        reference.startswith(HUB_PREFIX) or Path(reference).expanduser().is_file()
    )


def resolve_model_reference(reference: str | os.PathLike, trusted_globals: Sequence[str] = ()) -> str:
    """What :meth:`~clip_gs.CLIPGS.from_pretrained` loads for a reference any command accepts: a
    pretrained name or a Uni3D checkpoint becomes its cached folder (:func:`uni3d_folder`); a folder or
    Hub repo id is returned as given."""
    text = str(reference)
    if text in PRETRAINED or is_checkpoint_reference(text):
        return str(uni3d_folder(text, trusted_globals=trusted_globals))
    return text


__all__ = [
    "PRETRAINED",
    "UNI3D_REPO",
    "UNI3D_TEACHER",
    "PretrainedModel",
    "checkpoint_file",
    "resolve_model_reference",
    "uni3d_folder",
]
