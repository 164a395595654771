"""``PredictionsWriter``: what ``clip-gs predict`` writes, as a Lightning ``BasePredictionWriter``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

PREDICTIONS_NAME = "predictions.pt"
"""The file ``predict`` writes into the log directory (``predictions.rank<R>.pt`` per rank in a process group)."""


class PredictionsWriter(BasePredictionWriter):
    """At the end of ``predict``, writes ``{"ids": M ids, "embeddings": [M, E] float32}`` (the
    ``predict_step`` outputs of this rank, in loader order) with ``torch.save`` into the trainer's
    log directory (``trainer.log_dir``, else ``default_root_dir``), and keeps the path in ``path``.
    The file holds plain lists and tensors only, so ``torch.load(path, weights_only=True)`` reads it.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders
            predictions = [p for per_loader in predictions for p in per_loader]
        ids = [i for p in predictions for i in p["ids"]]
        embeddings = torch.cat([p["embeddings"] for p in predictions]) if predictions else torch.zeros(0)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = PREDICTIONS_NAME if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.pt"
        self.path = (folder / name).resolve()
        torch.save({"ids": ids, "embeddings": embeddings}, os.fspath(self.path))


__all__ = ["PREDICTIONS_NAME", "PredictionsWriter"]
