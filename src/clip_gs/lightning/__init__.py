"""PyTorch Lightning components of clip-gs (the only package that imports Lightning).

- :class:`GaussianDataModule`: prepared triplet shards (local or ``s3://``) -> :class:`TripletBatch`.
- :class:`SampleProcessor`, :func:`collate_triplets`: the per-sample step and the collation it uses.
"""

from clip_gs.lightning.batch import ProcessedSample, SampleProcessor, TripletBatch, collate_triplets
from clip_gs.lightning.datamodule import SYNTHETIC_PREFIX, GaussianDataModule, build_augmentation

__all__ = [
    "SYNTHETIC_PREFIX",
    "GaussianDataModule",
    "ProcessedSample",
    "SampleProcessor",
    "TripletBatch",
    "build_augmentation",
    "collate_triplets",
]
