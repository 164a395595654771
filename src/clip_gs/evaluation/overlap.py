"""How many evaluated objects a model trained on.

A training export records the keys of its training objects (``training_ids.safetensors``,
:mod:`clip_gs.data.holdout`). :func:`training_overlap` compares them with what is evaluated: a
prepared split (its ``keys.safetensors``) or a benchmark's objects (their ids). The count goes into
the eval report; under the paper's protocols (a public benchmark, or Uni3D's zero-shot protocol)
an overlap is refused unless allowed, since a number measured on training objects is not the
paper's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from clip_gs.data.holdout import TRAINING_IDS_NAME, keys_of, read_dataset_keys, read_training_ids
from clip_gs.errors import DatasetError


class TrainingOverlapError(DatasetError):
    """The evaluated objects include objects the model trained on, under a protocol that forbids it."""


def evaluated_keys(data: str | None, split: str, ids: Sequence[str] | None,
                   storage_options: dict | None = None) -> torch.Tensor | None:  # fmt: skip
    """The keys of what is evaluated: ``ids`` (a benchmark's objects) when given, else the ``split`` of the
    prepared dataset ``data`` (None when that dataset records no keys)."""
    if ids is not None:
        return keys_of(ids)
    keys = read_dataset_keys(str(data), storage_options)
    return None if keys is None else keys.get(split, torch.zeros(0, dtype=torch.int64))


def training_overlap(model_folder: str | os.PathLike | None, keys: torch.Tensor | None, strict: bool,
                     allow: bool = False, what: str = "the evaluated set") -> dict:  # fmt: skip
    """``{"checked", "overlap", "evaluated"}`` for the report: how many of ``keys`` the model trained on.

    Args:
        model_folder: the model's folder (None, or a folder without training ids: not checked).
        keys: the evaluated objects' keys (:func:`evaluated_keys`; None: not known, not checked).
        strict: the paper's protocols: an overlap is an error unless ``allow``.

    Raises:
        TrainingOverlapError: ``strict``, not ``allow``, and an overlap (names the count and the flag).
    """
    path = Path(model_folder) / TRAINING_IDS_NAME if model_folder is not None else None
    if path is None or not path.is_file() or keys is None:
        return {"checked": False, "overlap": None, "evaluated": None if keys is None else int(keys.numel())}
    trained = read_training_ids(path)
    overlap = int(torch.isin(keys, trained).sum()) if keys.numel() and trained.numel() else 0
    if overlap and strict and not allow:
        raise TrainingOverlapError(
            f"{overlap} of the {keys.numel()} objects of {what} are among the {trained.numel()} the model trained on "
            f"({path}); a result under this protocol would be inflated. Hold them out when preparing "
            "(clip-gs prepare --holdout), or pass --allow-overlap to evaluate anyway (the report records the overlap)"
        )
    return {"checked": True, "overlap": overlap, "evaluated": int(keys.numel())}


__all__ = ["TrainingOverlapError", "evaluated_keys", "training_overlap"]
