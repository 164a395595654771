"""Embedding a folder of 3DGS files and meshes into an :class:`~clip_gs.index.EmbeddingIndex`, resumably.

:func:`embed_folder` finds every 3DGS file and mesh under a folder (recursively), and keeps an
index of their embeddings up to date:

- a row's id is the file's path relative to the folder (``chairs/a.ply``); its path is the
  absolute path; its info holds the file's ``size``, ``mtime_ns`` and content ``digest``;
- a rerun embeds only new files and files whose content changed (size or mtime differ *and* the
  digest differs; a touched but unchanged file is only re-stat'ed), and removes the rows of files
  that are gone;
- files that cannot be loaded are reported with their reason and skipped (a changed file that now
  fails loses its old row, which no longer describes it); the rest goes on;
- rows are saved every :data:`SAVE_EVERY` new embeddings, so an interrupted run keeps its work;
- the index records the model's identity, its teacher's identity and the settings (seed, mesh
  samples, the model's Gaussian count); a rerun with another model or other settings is refused
  (``overwrite=True`` starts afresh).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.gaussians.assets import MESH_GAUSSIANS, asset_loader
from clip_gs.index import EmbeddingIndex
from clip_gs.model.loaded import LoadedModel, load_model

SAVE_EVERY = 256
"""New embeddings between two saves of the index during a run."""


@dataclass
class EmbedSummary:
    """What :func:`embed_folder` did.

    Attributes:
        index_path: the index file written.
        embedded: files embedded in this run (new or changed).
        unchanged: files whose row was kept.
        failed: files that could not be loaded (``failures`` lists them).
        removed: rows dropped because their file is gone.
        rows: rows in the index now.
        failures: ``(path, "ErrorType: message")`` per failed file.
    """

    index_path: Path
    embedded: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    rows: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary ``clip-gs embed`` prints last."""
        return (f"{self.index_path}: {self.embedded} embedded, {self.unchanged} unchanged, {self.failed} failed, "
                f"{self.removed} removed; {self.rows} rows")  # fmt: skip


def file_info(path: Path, digest: str | None = None) -> dict:
    """``{"size", "mtime_ns", "digest"}`` of a file (the digest is computed unless given)."""
    from clip_gs.teachers.open_clip_teacher import file_checksum

    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": digest or file_checksum(path)}


def index_settings(usage: LoadedModel, mesh_gaussians: int, seed: int, up: str = "auto") -> dict:
    """The settings an index records: what, besides the model, decides its embeddings."""
    return {"seed": seed, "mesh_gaussians": mesh_gaussians, "num_gaussians": int(usage.model.config.num_gaussians),
            "up": up}  # fmt: skip


def _open_index(out: Path, usage: LoadedModel, settings: dict, overwrite: bool) -> EmbeddingIndex:
    path = out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")
    if overwrite or not path.exists():
        return EmbeddingIndex(usage.embed_dim, model=usage.identity, teacher=usage.teacher_identity, settings=settings)
    index = EmbeddingIndex.load(path)
    if index.model != usage.identity:
        raise ConfigError(
            f"{path} holds embeddings of model {index.model!r}, not of {usage.identity!r} ({usage.source}); "
            "give another --out, or --overwrite to re-embed everything"
        )
    if index.settings != settings:
        raise ConfigError(
            f"{path} was made with settings {index.settings}, this run uses {settings}; "
            "give another --out, or --overwrite to re-embed everything"
        )
    return index


def embed_folder(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    model: LoadedModel | str | os.PathLike,
    mesh_gaussians: int = MESH_GAUSSIANS,
    seed: int = 0,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
    num_workers: int | None = None,
    up: str = "auto",
) -> EmbedSummary:
    """Embed (or bring up to date) every 3DGS file and mesh under ``folder`` into the index ``out``.

    Args:
        folder: the folder (searched recursively, :func:`~clip_gs.gaussians.assets.find_asset_files`).
        out: the index file (``.safetensors`` is added when missing).
        model: a :class:`LoadedModel` or a model folder / Hub repo id.
        mesh_gaussians: surface samples of a mesh; seed: of the mesh sampling and resampling.
        batch_size / progress / num_workers: as :meth:`~clip_gs.CLIPGS.encode_iter`.
        overwrite: discard an existing index at ``out`` instead of updating it.
        up: the up axis of files that declare none, or ``"auto"`` (recorded in the index settings).

    Returns:
        An :class:`EmbedSummary` (counts and failures).

    Raises:
        DatasetError: ``folder`` is not a folder.
        ConfigError: ``out`` holds an index of another model or made with other settings.
    """
    from clip_gs.gaussians.assets import find_asset_files

    usage = model if isinstance(model, LoadedModel) else load_model(model)
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    out = Path(out)
    settings = index_settings(usage, mesh_gaussians, seed, up)
    loader = asset_loader(up=up, frame=usage.model.config.up_axis, mesh_gaussians=mesh_gaussians, seed=seed)
    index = _open_index(out, usage, settings, overwrite)
    summary = EmbedSummary(out)

    found: dict[str, Path] = {p.relative_to(root).as_posix(): p.resolve() for p in find_asset_files(root)}
    todo: list[tuple[str, Path, dict]] = []
    for item_id, path in found.items():
        stat = path.stat()
        if item_id in index:
            before = index.info(item_id)
            if before.get("size") == stat.st_size and before.get("mtime_ns") == stat.st_mtime_ns:
                summary.unchanged += 1
                index.update(item_id, path=str(path))
                continue
            info = file_info(path)
            if info["digest"] == before.get("digest"):
                summary.unchanged += 1
                index.update(item_id, path=str(path), info=info)
                continue
        else:
            info = file_info(path)
        todo.append((item_id, path, info))

    gone = [i for i in index.ids if i not in found]
    if gone:
        index.remove(gone)
        summary.removed = len(gone)

    pending: list[tuple[str, Path, dict, object]] = []

    def flush() -> None:
        if pending:
            import torch

            index.add([p[0] for p in pending], torch.stack([p[3] for p in pending]), [str(p[1]) for p in pending],
                      [p[2] for p in pending])  # fmt: skip
            pending.clear()
            index.save(out)

    if todo:
        stream = usage.model.encode_iter(
            [str(p) for _, p, _ in todo], batch_size=batch_size, seed=seed, on_error="skip", progress=progress,
            num_workers=num_workers, loader=loader,
        )  # fmt: skip
        for item in stream:
            item_id, path, info = todo[item.index]
            if item.ok:
                pending.append((item_id, path, info, item.embedding))
                summary.embedded += 1
                if len(pending) >= SAVE_EVERY:
                    flush()
            else:
                summary.failed += 1
                reason = item.error
                if item_id in index:
                    index.remove([item_id])
                    reason += " (its earlier row was removed: the file changed)"
                summary.failures.append((str(path), reason))
    flush()
    summary.index_path = index.save(out)
    summary.rows = len(index)
    return summary


__all__ = ["SAVE_EVERY", "EmbedSummary", "embed_folder", "file_info", "index_settings"]
