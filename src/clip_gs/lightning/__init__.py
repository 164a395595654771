"""PyTorch Lightning components of clip-gs (the only package that imports Lightning).

- :class:`GaussianDataModule`: prepared triplet shards (local or ``s3://``) -> ``TripletBatch`` es
  (the per-sample processing and collation are data logic: :mod:`clip_gs.data.batches`).
- :class:`CLIPGSModule`: trains a ``CLIPGS`` with the CLIP-GS losses (AdamW + layer decay, warm-up + cosine).
- :class:`ExportBest`: best checkpoint by ``val/zeroshot_top1`` -> Hub-ready folder at the end of fit.
- :class:`ValidationSet`: an extra labelled validation set of the data module (``val_<name>/...``).
- :class:`PredictionsWriter`: what ``predict`` writes (``predictions.pt``).
- :class:`CLIPGSCLI` / :func:`cli_main`: ``clip-gs fit|validate|test|predict --config FILE.yaml``.
"""

from clip_gs.lightning.cli import CLIPGSCLI, cli_main
from clip_gs.lightning.datamodule import SYNTHETIC_PREFIX, GaussianDataModule, ValidationSet, build_augmentation
from clip_gs.lightning.export import ExportBest, export_pretrained
from clip_gs.lightning.module import CLIPGSModule
from clip_gs.lightning.optim import lr_factor, param_groups
from clip_gs.lightning.predictions import PredictionsWriter

__all__ = [
    "CLIPGSCLI",
    "SYNTHETIC_PREFIX",
    "CLIPGSModule",
    "ExportBest",
    "GaussianDataModule",
    "PredictionsWriter",
    "ValidationSet",
    "build_augmentation",
    "cli_main",
    "export_pretrained",
    "lr_factor",
    "param_groups",
]
