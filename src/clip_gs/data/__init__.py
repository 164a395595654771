"""Data sources for clip-gs: a synthetic procedural 3DGS set, seeded
3DGS augmentations, and triplet samples made into model inputs and batches (:mod:`~clip_gs.data.batches`)."""

from clip_gs.data.batches import ProcessedSample, SampleProcessor, TripletBatch, collate_triplets
from clip_gs.data.synthetic import (
    PALETTE,
    PATTERNS,
    SHAPE_CLASSES,
    SyntheticGaussianDataset,
    SyntheticObject,
    make_object,
)
from clip_gs.data.transforms import (
    CloudTransform,
    ColorDrop,
    ColorJitter,
    Compose,
    PositionJitter,
    RandomRotation,
    RandomScale,
    RandomTranslation,
    Resample,
    color_affine,
    element_seed,
    sample_seed,
    scale_cloud,
    step_seed,
    translate_cloud,
)

__all__ = [
    "PALETTE",
    "PATTERNS",
    "SHAPE_CLASSES",
    "CloudTransform",
    "ColorDrop",
    "ColorJitter",
    "Compose",
    "PositionJitter",
    "ProcessedSample",
    "RandomRotation",
    "RandomScale",
    "RandomTranslation",
    "Resample",
    "SampleProcessor",
    "SyntheticGaussianDataset",
    "SyntheticObject",
    "TripletBatch",
    "collate_triplets",
    "color_affine",
    "element_seed",
    "make_object",
    "sample_seed",
    "scale_cloud",
    "step_seed",
    "translate_cloud",
]
