"""`EmbeddingIndex`: exact cosine top-k search over unit embeddings, saved as safetensors.

An index holds ``[M, E]`` float32 unit vectors with one id, one path and one ``info`` dict
(JSON-ready: e.g. the file's size, mtime and content digest, so a rerun can tell what changed)
per row, index-level ``settings`` (how the rows were made), and the identity of what made them
(``model``: the CLIP-GS model, ``teacher``: its CLIP teacher), so a query from another model or
teacher is refused rather than compared across embedding spaces.
Search is exact (a matrix product), in chunks of rows so memory stays bounded by
``chunk_size x num_queries`` scores whatever the index size.

Files: ``<path>.safetensors`` holds the embeddings, the ids, paths and infos (JSON bytes in a
uint8 tensor: the safetensors header is limited to 100 MB, too small for a million paths) and, in
its metadata, the identities and the settings (no pickle). Files written before infos and
settings existed load with empty ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError

CHUNK_ROWS = 65_536
"""Rows scored per step of :meth:`EmbeddingIndex.search` (65,536 x 1024 float32 = 256 MiB of
rows, already held; the scores of a chunk are ``chunk x queries`` floats)."""


UNIT_TOLERANCE = 1e-3
"""How far from 1 the length of a loaded row may be (rows are saved as float32 unit vectors, a few
ulps off 1; a file with other rows would give scores that are not cosines)."""


@dataclass(frozen=True)
class Hit:
    """One search result: cosine ``score``, the row's ``id`` and ``path``, and its ``row``."""

    score: float
    id: str
    path: str
    row: int


class EmbeddingIndex:
    """Rows of unit embeddings with ids and paths; exact cosine search.

    Args:
        embed_dim: E.
        model: identity of the model that made the embeddings (e.g. a repo id or folder and a
            weights digest); queries must come from the same one.
        teacher: identity of that model's CLIP teacher (text and image queries go through it).
        settings: JSON-ready description of how the rows were made (e.g. sampling seed); saved
            with the index.
    """

    def __init__(self, embed_dim: int, model: str = "", teacher: str = "", settings: dict | None = None):
        if embed_dim <= 0:
            raise ConfigError(f"embed_dim must be positive, got {embed_dim}")
        self.embed_dim, self.model, self.teacher = embed_dim, model, teacher
        self.settings: dict = dict(settings or {})
        self._embeddings = torch.zeros(0, embed_dim)
        self.ids: list[str] = []
        self.paths: list[str] = []
        self.infos: list[dict] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    def __repr__(self) -> str:
        return f"EmbeddingIndex({len(self):,} x {self.embed_dim}, model={self.model!r}, teacher={self.teacher!r})"

    @property
    def embeddings(self) -> Tensor:
        """``[M, E]`` float32 unit rows (read-only view; use :meth:`add` / :meth:`remove`)."""
        return self._embeddings

    # ------------------------------------------------------------------ editing
    def add(
        self,
        ids: Sequence[str],
        embeddings: Tensor,
        paths: Sequence[str] | None = None,
        infos: Sequence[dict] | None = None,
    ) -> None:
        """Add rows; an id already present is replaced (its row updated in place).

        Args:
            ids: M unique ids.
            embeddings: ``[M, E]``; normalised to unit length here.
            paths: M paths (default: the ids).
            infos: M JSON-ready dicts kept with the rows (default: empty dicts).

        Raises:
            ConfigError: shape mismatch, duplicate ids in one call, non-finite or zero rows.
        """
        ids = [str(i) for i in ids]
        paths = [str(p) for p in paths] if paths is not None else list(ids)
        infos = [dict(i) for i in infos] if infos is not None else [{} for _ in ids]
        embeddings = embeddings.detach().to("cpu", torch.float32)
        if (
            embeddings.ndim != 2
            or embeddings.shape != (len(ids), self.embed_dim)
            or len(paths) != len(ids)
            or len(infos) != len(ids)
        ):
            raise ConfigError(
                f"add() needs [M, {self.embed_dim}] embeddings with M ids, paths and infos; got "
                f"{list(embeddings.shape)}, {len(ids)} ids, {len(paths)} paths, {len(infos)} infos"
            )
        if len(set(ids)) != len(ids):
            raise ConfigError("add() got duplicate ids")
        norms = embeddings.norm(dim=-1)
        if not bool(torch.isfinite(embeddings).all()) or bool((norms == 0).any()):
            raise ConfigError("add() got non-finite or zero embeddings")
        embeddings = embeddings / norms.unsqueeze(-1)
        new = [k for k, i in enumerate(ids) if i not in self._rows]
        for k, item_id in enumerate(ids):
            row = self._rows.get(item_id)
            if row is not None:
                self._embeddings[row] = embeddings[k]
                self.paths[row] = paths[k]
                self.infos[row] = infos[k]
        if new:
            start = len(self.ids)
            self._embeddings = torch.cat([self._embeddings, embeddings[new]])
            for offset, k in enumerate(new):
                self.ids.append(ids[k])
                self.paths.append(paths[k])
                self.infos.append(infos[k])
                self._rows[ids[k]] = start + offset

    def info(self, item_id: str) -> dict:
        """The info dict of a row (a copy).

        Raises:
            ConfigError: an id that is not in the index.
        """
        if item_id not in self._rows:
            raise ConfigError(f"info(): id {item_id!r} is not in the index")
        return dict(self.infos[self._rows[item_id]])

    def update(self, item_id: str, path: str | None = None, info: dict | None = None) -> None:
        """Change a row's path and / or info, keeping its embedding.

        Raises:
            ConfigError: an id that is not in the index.
        """
        if item_id not in self._rows:
            raise ConfigError(f"update(): id {item_id!r} is not in the index")
        row = self._rows[item_id]
        if path is not None:
            self.paths[row] = str(path)
        if info is not None:
            self.infos[row] = dict(info)

    def remove(self, ids: Sequence[str]) -> None:
        """Remove rows by id.

        Raises:
            ConfigError: an id that is not in the index (none is removed then).
        """
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise ConfigError(f"remove(): {len(missing)} id(s) not in the index, e.g. {missing[:3]}")
        drop = {self._rows[i] for i in ids}
        keep = [r for r in range(len(self.ids)) if r not in drop]
        self._embeddings = self._embeddings[keep]
        self.ids = [self.ids[r] for r in keep]
        self.paths = [self.paths[r] for r in keep]
        self.infos = [self.infos[r] for r in keep]
        self._rows = {item_id: r for r, item_id in enumerate(self.ids)}

    # ------------------------------------------------------------------ search
    def check_query_source(self, model: str | None = None, teacher: str | None = None) -> None:
        """Refuse queries embedded by another model or teacher than the index's.

        Raises:
            ConfigError: naming both identities.
        """
        for what, mine, theirs in (("model", self.model, model), ("teacher", self.teacher, teacher)):
            if theirs is not None and mine and theirs != mine:
                raise ConfigError(
                    f"the query comes from {what} {theirs!r}, the index from {what} {mine!r}: embeddings of "
                    "different models live in different spaces; embed the query with the index's model"
                )

    def search(
        self,
        queries: Tensor,
        k: int = 10,
        exclude_self: Sequence[str | None] | None = None,
        chunk_rows: int = CHUNK_ROWS,
        model: str | None = None,
        teacher: str | None = None,
    ) -> list[list[Hit]]:
        """Exact top-``k`` rows by cosine for each query, best first.

        Args:
            queries: ``[Q, E]`` or ``[E]`` (normalised here).
            k: hits per query (at most ``len(self)``).
            exclude_self: per query, an id to leave out (3D-to-3D search of an indexed asset).
            chunk_rows: rows scored per step (memory bound only). Equal scores are ordered by
                row; an exact tie at the k-th place within one chunk keeps the row ``topk`` picks.
            model / teacher: identities of what embedded the queries, checked against the
                index's (:meth:`check_query_source`); pass them whenever they are known.

        Returns:
            One list of :class:`Hit` per query.

        Raises:
            ConfigError: wrong width, k < 1, an empty index, queries from another model or teacher.
        """
        self.check_query_source(model, teacher)
        queries = queries.detach().to("cpu", torch.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.embed_dim:
            raise ConfigError(f"queries must be [Q, {self.embed_dim}], got {list(queries.shape)}")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if not len(self):
            raise ConfigError("search() on an empty index")
        queries = F.normalize(queries, dim=-1)
        excluded = [self._rows.get(i, -1) if i is not None else -1 for i in (exclude_self or [None] * len(queries))]
        want = min(k + (1 if exclude_self else 0), len(self))
        best_scores = torch.full((len(queries), 0), -float("inf"))
        best_rows = torch.zeros((len(queries), 0), dtype=torch.long)
        for start in range(0, len(self), chunk_rows):
            scores = queries @ self._embeddings[start : start + chunk_rows].T  # [Q, chunk]
            top = scores.topk(min(want, scores.shape[1]), dim=1)  # the chunk's candidates
            scores = torch.cat([best_scores, top.values], dim=1)
            rows = torch.cat([best_rows, top.indices + start], dim=1)
            # candidates by row, then a stable descending sort: equal scores keep the lower row first
            by_row = rows.argsort(dim=1)
            scores, rows = scores.gather(1, by_row), rows.gather(1, by_row)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :want]
            best_scores, best_rows = scores.gather(1, order), rows.gather(1, order)
        results = []
        for q in range(len(queries)):
            hits = [
                Hit(float(s), self.ids[r], self.paths[r], int(r))
                for s, r in zip(best_scores[q].tolist(), best_rows[q].tolist())
                if r != excluded[q]
            ]
            results.append(hits[:k])
        return results

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.safetensors`` added when missing); returns the file written."""
        from safetensors.torch import save

        from clip_gs.storage import atomic_write

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        names = json.dumps({"ids": self.ids, "paths": self.paths, "infos": self.infos}).encode()
        tensors = {
            "embeddings": self._embeddings.contiguous(),
            "names": torch.frombuffer(bytearray(names), dtype=torch.uint8),
        }
        meta = {"model": self.model, "teacher": self.teacher, "embed_dim": str(self.embed_dim),
                "settings": json.dumps(self.settings, sort_keys=True)}  # fmt: skip
        atomic_write(path, save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingIndex:
        """Read an index written by :meth:`save`.

        The file must be a regular file (not a FIFO or device) holding exactly the tensors
        ``embeddings`` (float32 ``[M, E]``, finite, rows of unit length within :data:`UNIT_TOLERANCE`)
        and ``names`` (uint8 JSON ``{"ids", "paths"[, "infos"]}``: M distinct id texts, M path texts,
        M info objects), and the metadata ``model`` and ``teacher`` (text), ``embed_dim`` (E, when
        present) and ``settings`` (a JSON object, when present). Files written before infos and
        settings existed load with empty ones.

        Raises:
            DatasetError: missing, corrupt or not an index file (naming the file and the problem).
        """
        from safetensors import safe_open

        from clip_gs.gaussians.files import check_regular_file

        path = Path(path)
        if not path.is_file() and Path(str(path) + ".safetensors").is_file():
            path = Path(str(path) + ".safetensors")
        check_regular_file(path, DatasetError)
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                keys = set(handle.keys())
                if keys != {"embeddings", "names"}:
                    raise DatasetError(f"{path}: holds tensors {sorted(keys)}, not an embedding index's")
                embeddings = handle.get_tensor("embeddings")
                names_tensor = handle.get_tensor("names")
            if names_tensor.dtype != torch.uint8 or names_tensor.ndim != 1:
                raise DatasetError(f"{path}: names are not uint8 JSON bytes")
            names = json.loads(bytes(names_tensor.numpy()).decode())
            settings = json.loads(meta.get("settings", "{}"))
        except DatasetError:
            raise
        except Exception as exc:  # safetensors' own errors, bad UTF-8 or JSON, MemoryError
            raise DatasetError(f"{path}: not a readable clip-gs embedding index: {exc}") from exc
        problem = _index_problem(embeddings, names, meta, settings)
        if problem:
            raise DatasetError(f"{path}: not a valid clip-gs embedding index: {problem}")
        ids = names["ids"]
        index = cls(embeddings.shape[1], meta["model"], meta["teacher"], settings)
        index._embeddings = embeddings
        index.ids, index.paths = list(ids), list(names["paths"])
        index.infos = [dict(i) for i in names.get("infos", [{} for _ in ids])]
        index._rows = {item_id: r for r, item_id in enumerate(index.ids)}
        return index


def _index_problem(embeddings: Tensor, names, meta: dict, settings) -> str | None:
    """What makes a loaded index file invalid (the rules of :meth:`EmbeddingIndex.load`), or None."""
    if embeddings.dtype != torch.float32 or embeddings.ndim != 2 or embeddings.shape[1] < 1:
        return f"embeddings are {embeddings.dtype} {list(embeddings.shape)}, not float32 [M, E]"
    m = embeddings.shape[0]
    if not isinstance(names, dict) or not {"ids", "paths"} <= set(names) <= {"ids", "paths", "infos"}:
        return "names are not {ids, paths, infos}"
    ids, paths, infos = names["ids"], names["paths"], names.get("infos", [{}] * m)
    if not all(isinstance(x, list) and len(x) == m for x in (ids, paths, infos)):
        return f"{m} embeddings but not {m} ids, paths and infos"
    if not all(isinstance(i, str) for i in ids) or len(set(ids)) != m:
        return "ids are not distinct texts"
    if not all(isinstance(p, str) for p in paths) or not all(isinstance(i, dict) for i in infos):
        return "paths are not texts or infos not objects"
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("teacher"), str):
        return "no model or teacher identity"
    if "embed_dim" in meta and meta["embed_dim"] != str(embeddings.shape[1]):
        return f"embed_dim {meta['embed_dim']!r:.40} is not the embeddings' width {embeddings.shape[1]}"
    if not isinstance(settings, dict):
        return "settings are not a JSON object"
    if not bool(torch.isfinite(embeddings).all()):
        return "embeddings are not all finite"
    if m and float((embeddings.norm(dim=1) - 1).abs().max()) > UNIT_TOLERANCE:
        return f"rows are not unit vectors (within {UNIT_TOLERANCE})"
    return None


__all__ = ["CHUNK_ROWS", "UNIT_TOLERANCE", "EmbeddingIndex", "Hit"]
