"""``GaussianDataModule``: prepared triplet shards -> batches for CLIP-GS training.

Reads a dataset written by ``clip-gs prepare`` (``<root>/manifest.json`` plus one LitData
dataset per split, see :mod:`clip_gs.data.shards`) from a local folder or ``s3://``, streams
it with LitData (each DDP rank and each loader worker reads its own chunks), and turns every
sample into model inputs and targets with :class:`~clip_gs.data.batches.SampleProcessor`.
Batches are :class:`~clip_gs.data.batches.TripletBatch` es.

Seeds and epochs: a training sample's randomness (augmentation, resampling, the caption, the K
views) is a pure function of ``sample_seed(seed, epoch, index)``, ``epoch`` the 0-based epoch the
``StreamingDataLoader`` passes to the dataset (``set_epoch``, also restored from a loader state
dict) and ``index`` the sample's global index in the split. Workers are not persistent, so each
epoch's workers see the new epoch. Validation and test use epoch 0 and no augmentation, so every
evaluation sees the same inputs.

Extra validation sets (``extra_val``): other prepared datasets, each with its own labels and
label embeddings, validated every epoch beside the training data's ``val`` split and logged as
``val_<name>/...``, as Uni3D validates on Objaverse-LVIS, ModelNet40 and ScanObjectNN and the
paper on Objaverse-LVIS-GS and ModelNet-GS. ``val_dataloader`` then returns one loader per set,
in :attr:`GaussianDataModule.val_prefixes` order. ``predict`` embeds the test split.

All ``__init__`` arguments are plain types, so LightningCLI can configure the module from YAML.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningDataModule

from clip_gs.data.batches import SampleProcessor, collate_triplets
from clip_gs.data.shards import TripletShardDataset, default_cache_dir, read_manifest
from clip_gs.storage import is_remote, join
from clip_gs.data.transforms import (
    ColorDrop,
    ColorJitter,
    Compose,
    PositionJitter,
    RandomRotation,
    RandomScale,
    RandomTranslation,
)
from clip_gs.data.triplets import Manifest
from clip_gs.errors import ConfigError, DatasetError, PreparedWithOtherSettingsError

SYNTHETIC_PREFIX = "synthetic:"
"""A ``root`` starting with this is built by ``clip_gs.data.prepare.prepare_dataset`` in ``prepare_data``."""


@dataclass(frozen=True)
class ValidationSet:
    """An extra validation set: a dataset written by ``clip-gs prepare`` with the training data's teacher.

    Attributes:
        name: what its metrics are called, ``val_<name>/...`` (letters, digits, ``_``).
        root: its folder or ``s3://`` URL.
        split: which of its splits is validated (default ``test``: a benchmark's evaluation split).
    """

    name: str
    root: str
    split: str = "test"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ConfigError(f"extra validation set name {self.name!r}: use letters, digits and '_' only")
        if self.split not in ("train", "val", "test"):
            raise ConfigError(
                f"extra validation set {self.name!r}: split must be train, val or test, got {self.split!r}"
            )


def build_augmentation(
    rotation: str = "up",
    max_rotation_deg: float = 180.0,
    up_axis: str = "+y",
    min_scale: float = 0.8,
    max_scale: float = 1.25,
    max_translation: float = 0.1,
    position_jitter: float = 0.005,
    color_gain: float = 0.1,
    brightness: float = 0.05,
    color_drop: float = 0.0,
    color_drop_grey: float = 0.4,
) -> Compose:
    """The training augmentation: rotation, scale, translation, position jitter, colour jitter, colour drop
    (in that order).

    Args:
        rotation: ``"up"`` (about ``up_axis``, angle uniform in +-``max_rotation_deg``), ``"so3"``
            (uniform over all rotations) or ``"none"``.
        min_scale, max_scale: log-uniform scale range (equal values: constant; 1, 1: off).
        max_translation: offset uniform in +-this per axis (0: off).
        position_jitter: sigma of per-Gaussian position noise (0: off).
        color_gain, brightness: per-channel gain in ``1 +- color_gain`` and a shared offset in
            ``+-brightness`` (0, 0: off).
        color_drop, color_drop_grey: probability that an object's colour becomes a flat grey
            (:class:`~clip_gs.data.transforms.ColorDrop`; Uni3D: 0.5 and 0.4; 0: off).
    """
    steps = []
    if rotation not in ("up", "so3", "none"):
        raise ConfigError(f"rotation must be 'up', 'so3' or 'none', got {rotation!r}")
    if rotation != "none":
        steps.append(RandomRotation(mode=rotation, up=up_axis, max_angle_deg=max_rotation_deg))
    if not min_scale == max_scale == 1.0:
        steps.append(RandomScale(min_scale=min_scale, max_scale=max_scale))
    if max_translation:
        steps.append(RandomTranslation(max_offset=max_translation))
    if position_jitter:
        steps.append(PositionJitter(sigma=position_jitter))
    if color_gain or brightness:
        steps.append(ColorJitter(gain=color_gain, brightness=brightness))
    if color_drop:
        steps.append(ColorDrop(p=color_drop, grey=color_drop_grey))
    return Compose(steps)


class GaussianDataModule(LightningDataModule):
    """Streams a prepared triplet dataset (local or ``s3://``) as :class:`~clip_gs.data.batches.TripletBatch` es.

    Batch: ``features [B, N, 19]``, ``text [B, E]`` + ``text_mask [B]``, ``images [B, K, E]`` +
    ``image_mask [B, K]``, ``similarity [B, K]``, ``labels [B]`` (-1: none), ``indices [B]``,
    ``ids`` (B strings); N = ``num_gaussians``, K = ``views_per_step``, E the teacher's width.

    Args:
        root: dataset root (folder or ``s3://bucket/prefix``), or ``synthetic:<spec>`` to have
            ``prepare_data`` build one (see :meth:`prepare_data`).
        batch_size: samples per batch per device.
        num_workers: loader worker processes per device (0: load in the main process).
        num_gaussians: N, the encoder's input count (the model config's ``num_gaussians``).
        scale_activation: ``"sigmoid"`` or ``"exp"`` (the model config's).
        views_per_step: K rendered views sampled per object and step (the image voting loss).
        augment: augment training clouds (:func:`build_augmentation` with the fields below);
            off: training inputs are exactly ``preprocess(cloud, N, scale_activation, seed=seed)``.
        rotation, max_rotation_deg, up_axis, min_scale, max_scale, max_translation,
            position_jitter, color_gain, brightness, color_drop, color_drop_grey: the augmentation
            (:func:`build_augmentation`).
        seed: base seed of every per-sample draw and of LitData's shuffle (and, for a
            ``synthetic:`` root, of the objects and splits ``prepare`` makes).
        synthetic_views: views rendered per object when ``prepare_data`` builds a ``synthetic:``
            root (``clip-gs prepare --views``; ignored for other roots).
        synthetic_pose: pose of the objects of a ``synthetic:`` root (``clip-gs prepare
            --synthetic-pose``): ``"random"`` (any rotation), ``"upright"`` (standing on +Y,
            turned about it, as Objaverse and ModelNet objects stand) or ``"canonical"``; see
            :data:`clip_gs.data.synthetic.POSES`.
        cache_dir: where remote chunks (and ``synthetic:`` datasets) are stored; default
            :func:`~clip_gs.data.shards.default_cache_dir` (``shards/`` under the cache root,
            ``$CLIP_GS_CACHE``).
        storage_options: boto3 options for s3 (``endpoint_url``, ...); not saved in
            checkpoints' hyperparameters (they may hold credentials).
        drop_last: training only. True (default) drops, every epoch, the samples beyond the
            last full batch of every rank: with R ranks, ``len(train) mod (R * batch_size)``
            samples (LitData distributes whole batches). This keeps all ranks at the same
            number of steps (a rank with an extra step would wait forever in the gradient
            all-reduce), keeps the contrastive loss's number of negatives constant, and avoids
            a 1-sample batch in BatchNorm. Shuffled runs drop different samples each epoch.
            In a process group LitData forces it on unless it is False.
        shuffle: shuffle the training split (chunks, then items within chunks, per epoch).
        pin_memory: pin batches (for CUDA training).
        max_cache_size: LitData's cache budget for remote chunks (e.g. ``"50GB"``).
        extra_val: extra validation sets (:class:`ValidationSet`), validated every epoch and logged
            as ``val_<name>/...`` (module docstring). Each must hold labels.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        num_workers: int = 2,
        num_gaussians: int = 10_000,
        scale_activation: str = "sigmoid",
        views_per_step: int = 5,
        augment: bool = True,
        rotation: str = "up",
        max_rotation_deg: float = 180.0,
        up_axis: str = "+y",
        min_scale: float = 0.8,
        max_scale: float = 1.25,
        max_translation: float = 0.1,
        position_jitter: float = 0.005,
        color_gain: float = 0.1,
        brightness: float = 0.05,
        color_drop: float = 0.0,
        color_drop_grey: float = 0.4,
        seed: int = 0,
        synthetic_views: int = 8,
        synthetic_pose: str = "random",
        cache_dir: str | None = None,
        storage_options: dict | None = None,
        drop_last: bool = True,
        shuffle: bool = True,
        pin_memory: bool = False,
        max_cache_size: str | None = None,
        extra_val: list[ValidationSet] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters(ignore=["storage_options"])
        self.root = str(root)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.num_gaussians, self.scale_activation, self.views_per_step = num_gaussians, scale_activation, views_per_step
        self.seed, self.cache_dir, self.storage_options = seed, cache_dir, storage_options
        self.synthetic_views, self.synthetic_pose = synthetic_views, synthetic_pose
        self.drop_last, self.shuffle = drop_last, shuffle
        self.pin_memory, self.max_cache_size = pin_memory, max_cache_size
        self.extra_val = [v if isinstance(v, ValidationSet) else ValidationSet(**v) for v in extra_val or []]
        names = [v.name for v in self.extra_val]
        if len(set(names)) != len(names):
            raise ConfigError(f"extra validation set names must be distinct, got {names}")
        augmentation = {
            "rotation": rotation,
            "max_rotation_deg": max_rotation_deg,
            "up_axis": up_axis,
            "min_scale": min_scale,
            "max_scale": max_scale,
            "max_translation": max_translation,
            "position_jitter": position_jitter,
            "color_gain": color_gain,
            "brightness": brightness,
            "color_drop": color_drop,
            "color_drop_grey": color_drop_grey,
        }
        self.augmentation = build_augmentation(**augmentation) if augment else None  # validated here, not in workers
        self.manifest: Manifest | None = None
        self.datasets: dict[str, TripletShardDataset] = {}
        self.extra_datasets: dict[str, TripletShardDataset] = {}

    # ------------------------------------------------------------------ locations
    @property
    def dataset_root(self) -> str:
        """The folder or URL the shards are read from: ``root``, or for ``synthetic:<spec>`` a
        folder under ``cache_dir`` named by the spec, the seed, the views and the pose (the same on every rank)."""
        if not self.root.startswith(SYNTHETIC_PREFIX):
            return self.root
        spec = f"{self.root}|seed={self.seed}|views={self.synthetic_views}"
        if self.synthetic_pose != "random":  # the default keeps the folder of datasets built before poses existed
            spec += f"|pose={self.synthetic_pose}"
        digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir or default_cache_dir(), "synthetic", digest)

    def evaluation_roots(self) -> dict[str, str]:
        """Metric prefix -> dataset root of every evaluation set: ``val`` and ``test`` (this dataset)
        and ``val_<name>`` for each extra validation set."""
        roots = {"val": self.dataset_root, "test": self.dataset_root}
        return roots | {f"val_{v.name}": v.root for v in self.extra_val}

    @property
    def val_prefixes(self) -> list[str]:
        """The metric prefix of each loader :meth:`val_dataloader` returns, in order (after ``setup``)."""
        main = ["val"] if "val" in self.datasets else []
        return main + [f"val_{v.name}" for v in self.extra_val]

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Runs once per node before ``setup``: builds a ``synthetic:`` dataset, or checks the manifest.

        Raises:
            DatasetError: ``root`` has no (valid) manifest.
        """
        start = time.perf_counter()
        root = self.dataset_root
        if self.root.startswith(SYNTHETIC_PREFIX):  # a no-op when the dataset is complete and up to date
            from clip_gs.data.prepare import prepare_dataset
            from clip_gs.data.prepare_settings import PrepareSettings

            settings = PrepareSettings(seed=self.seed, views=self.synthetic_views, synthetic_pose=self.synthetic_pose)
            try:
                prepare_dataset(self.root, root, settings=settings, progress=True)
            except PreparedWithOtherSettingsError as exc:
                raise PreparedWithOtherSettingsError(  # e.g. the dataset was built by an earlier release's offline teacher
                    f"{exc}. For data.root {self.root}: delete {root} to rebuild it, or set data.cache_dir "
                    "to another folder"
                ) from exc
        read_manifest(root, self.storage_options)
        for extra in self.extra_val:
            manifest = read_manifest(extra.root, self.storage_options)
            if manifest.counts.get(extra.split, 0) <= 0:
                raise DatasetError(f"extra validation set {extra.name!r}: {extra.root} has no {extra.split!r} samples "
                                   f"(the manifest lists {manifest.counts})")  # fmt: skip
            if not manifest.labels:
                raise DatasetError(f"extra validation set {extra.name!r}: {extra.root} has no labels (an extra set "
                                   "is there for its zero-shot metrics)")  # fmt: skip
        self.prepare_seconds = time.perf_counter() - start

    def setup(self, stage: str | None = None) -> None:
        """Open the splits the stage needs (called on every rank, after the process group exists,
        so LitData sees the world size and gives each rank its own chunks)."""
        root = self.dataset_root
        self.manifest = read_manifest(root, self.storage_options)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            if split in self.datasets or not self._has_split(split):
                continue
            self.datasets[split] = self._make_dataset(split, root, self.manifest)
        if stage == "fit" and "train" not in self.datasets:
            raise DatasetError(f"{root}: the manifest lists no train samples")
        if stage in ("fit", "validate", None):
            for extra in self.extra_val:
                if extra.name not in self.extra_datasets:
                    manifest = read_manifest(extra.root, self.storage_options)
                    self.extra_datasets[extra.name] = self._make_dataset(extra.split, extra.root, manifest)

    def _has_split(self, split: str) -> bool:
        """Listed in the manifest with samples; for a manifest without that count, present on disk."""
        count = self.manifest.counts.get(split) if self.manifest is not None else None
        if count is None:
            input_dir = join(self.dataset_root, split)
            return is_remote(input_dir) or os.path.isdir(input_dir)
        return count > 0

    def _make_dataset(self, split: str, root: str, manifest: Manifest) -> TripletShardDataset:
        train = split == "train" and root == self.dataset_root
        processor = SampleProcessor(
            num_gaussians=self.num_gaussians,
            scale_activation=self.scale_activation,
            views_per_step=self.views_per_step,
            labels=tuple(manifest.labels),
            seed=self.seed,
            transform=self.augmentation if train else None,
            fixed_epoch=None if train else 0,
        )
        input_dir = join(root, split)
        if not is_remote(input_dir) and not os.path.isdir(input_dir):
            count = manifest.counts.get(split)
            raise DatasetError(f"{input_dir}: split folder missing (the manifest lists {count} samples)")
        cache_dir = None
        if is_remote(input_dir):
            cache_dir = os.path.join(self.cache_dir or default_cache_dir(), "chunks")
        return TripletShardDataset(
            input_dir,
            cache_dir=cache_dir,
            storage_options=self.storage_options,
            shuffle=self.shuffle if train else False,
            seed=self.seed,
            drop_last=self.drop_last if train else None,
            sample_transform=processor,
            max_cache_size=self.max_cache_size,
        )

    def _loader(self, split: str):
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, "test"))
        if split not in self.datasets:
            return []
        return self._stream(self.datasets[split])

    def _stream(self, dataset: TripletShardDataset):
        from litdata import StreamingDataLoader

        return StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_triplets,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self):
        """Shuffled (``shuffle``), augmented (``augment``), ``drop_last`` per rank."""
        return self._loader("train")

    def val_dataloader(self):
        """In order, unaugmented, epoch-0 draws, every sample on a single device; in a process group
        of R ranks LitData drops ``len(val) mod (R * batch_size)`` samples to keep the ranks in step
        (evaluate on one device for exact full-split numbers). With extra validation sets: a list of
        loaders, one per :attr:`val_prefixes` entry."""
        main = self._loader("val")
        if not self.extra_val:
            return main
        if any(v.name not in self.extra_datasets for v in self.extra_val):
            self.setup("validate")
        extras = [self._stream(self.extra_datasets[v.name]) for v in self.extra_val]
        return ([main] if "val" in self.datasets else []) + extras

    def test_dataloader(self):
        """Like :meth:`val_dataloader` without the extra sets, for the test split."""
        return self._loader("test")

    def predict_dataloader(self):
        """``predict`` embeds the test split (the loader of :meth:`test_dataloader`)."""
        return self._loader("test")


__all__ = ["SYNTHETIC_PREFIX", "GaussianDataModule", "ValidationSet", "build_augmentation"]
