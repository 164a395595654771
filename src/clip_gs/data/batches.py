"""Per-sample processing of triplets into model inputs and targets, and their collation.

:class:`SampleProcessor` turns one decoded :class:`~clip_gs.data.triplets.TripletSample` into a
:class:`ProcessedSample` (run inside the loader workers); :func:`collate_triplets` stacks those
into a :class:`TripletBatch`. Everything random is a pure function of
``sample_seed(seed, epoch, index)``, so a resumed run sees exactly what the original run saw.

Shapes: ``N`` Gaussians per object, ``E`` embedding width, ``K`` views per step, ``B`` batch.
Nothing missing is ever filled in silently: a sample without captions has ``text`` zeros and
``text_mask`` False; a sample with fewer than K views has zero rows with ``image_mask`` False;
``similarity`` is 0 wherever either side is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from clip_gs.data.transforms import CloudTransform, sample_seed
from clip_gs.data.triplets import TripletSample
from clip_gs.errors import ConfigError, DatasetError
from clip_gs.model.features import preprocess

_DOMAIN_CAPTION, _DOMAIN_VIEWS = 0xCA97_0001, 0xCA97_0002  # separate streams from one sample seed


@dataclass
class ProcessedSample:
    """One sample ready for collation (see the module docstring for the masks).

    Attributes:
        id: the sample id.
        index: its global index in the split.
        features: ``[N, 19]`` float32 model input.
        text: ``[E]`` the chosen caption's teacher embedding (zeros when there is none).
        text_mask: ``[]`` bool, False when the sample has no captions.
        images: ``[K, E]`` teacher embeddings of the chosen views (zero rows when V < K).
        image_mask: ``[K]`` bool, True for real views.
        similarity: ``[K]`` ``cos(text, images[k])``, 0 where masked.
        label: ``[]`` long, index into the manifest's sorted labels, -1 when unlabelled.
    """

    id: str
    index: int
    features: Tensor
    text: Tensor
    text_mask: Tensor
    images: Tensor
    image_mask: Tensor
    similarity: Tensor
    label: Tensor


@dataclass
class TripletBatch:
    """A collated batch.

    Attributes:
        features: ``[B, N, 19]`` float32.
        text: ``[B, E]``; text_mask: ``[B]`` bool.
        images: ``[B, K, E]``; image_mask: ``[B, K]`` bool.
        similarity: ``[B, K]`` float32, the constant text-view cosines (the image voting loss's S).
        labels: ``[B]`` long, -1 when unlabelled.
        indices: ``[B]`` long, global indices of the samples in their split.
        ids: ``B`` sample ids.
    """

    features: Tensor
    text: Tensor
    text_mask: Tensor
    images: Tensor
    image_mask: Tensor
    similarity: Tensor
    labels: Tensor
    indices: Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def _map(self, fn) -> TripletBatch:
        return TripletBatch(
            **{f.name: fn(getattr(self, f.name)) if f.name != "ids" else list(self.ids) for f in fields(self)}
        )

    def to(self, *args, **kwargs) -> TripletBatch:
        """Move every tensor (``Tensor.to`` arguments)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def pin_memory(self) -> TripletBatch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())


def collate_triplets(samples: Sequence[ProcessedSample]) -> TripletBatch:
    """Stack :class:`ProcessedSample` s into a :class:`TripletBatch` (all must share N, K and E)."""
    if not samples:
        raise DatasetError("collate_triplets: empty batch")
    widths = {s.text.shape[-1] for s in samples}
    if len(widths) > 1:
        raise DatasetError(f"collate_triplets: samples with different embedding widths {sorted(widths)}")

    def stack(name: str) -> Tensor:
        return torch.stack([getattr(s, name) for s in samples])

    return TripletBatch(
        features=stack("features"),
        text=stack("text"),
        text_mask=stack("text_mask"),
        images=stack("images"),
        image_mask=stack("image_mask"),
        similarity=stack("similarity"),
        labels=stack("label"),
        indices=torch.tensor([s.index for s in samples], dtype=torch.long),
        ids=[s.id for s in samples],
    )


def _rng(seed: int, domain: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([domain, seed]))


@dataclass(frozen=True)
class SampleProcessor:
    """``(TripletSample, index, epoch) -> ProcessedSample``: the per-sample step of the data module.

    With ``s = sample_seed(seed, epoch, index)``:

    - features: :func:`~clip_gs.model.features.preprocess` with ``transform`` and seed ``s``; with no
      transform, ``preprocess(cloud, num_gaussians, scale_activation, seed=seed)``, i.e. exactly
      the input ``CLIPGS.encode(..., seed=seed)`` builds for the same object;
    - one caption's text embedding: in training chosen uniformly with a generator seeded from
      ``s``; in evaluation (``fixed_epoch`` set) the first caption, the most specific one;
    - ``views_per_step`` (K) of the V views without replacement (seeded from ``s``; all V in
      stored order, then masked padding, when V < K);
    - ``similarity[k] = cos(text, images[k])``.

    Args:
        num_gaussians: N.
        scale_activation: ``"sigmoid"`` or ``"exp"`` (the model config's).
        views_per_step: K >= 1.
        labels: the manifest's sorted label set (label -> its position; -1 for no label).
        seed: base seed.
        transform: the augmentation, or None.
        fixed_epoch: use this epoch instead of the loader's, and the first caption (evaluation:
            the same caption and views every epoch).
    """

    num_gaussians: int
    scale_activation: str
    views_per_step: int
    labels: tuple[str, ...] = ()
    seed: int = 0
    transform: CloudTransform | None = None
    fixed_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.views_per_step < 1:
            raise ConfigError(f"views_per_step must be >= 1, got {self.views_per_step}")
        if self.num_gaussians < 1:
            raise ConfigError(f"num_gaussians must be >= 1, got {self.num_gaussians}")

    def __call__(self, sample: TripletSample, index: int, epoch: int) -> ProcessedSample:
        epoch = epoch if self.fixed_epoch is None else self.fixed_epoch
        s = sample_seed(self.seed, epoch, index)
        cloud_seed = s if self.transform is not None else self.seed
        features = preprocess(sample.cloud, self.num_gaussians, self.scale_activation, cloud_seed, self.transform)

        emb_dim, k = sample.embed_dim, self.views_per_step
        t = sample.text_embeddings.shape[0]
        if t:
            caption = int(_rng(s, _DOMAIN_CAPTION).integers(t)) if self.fixed_epoch is None else 0
            text = sample.text_embeddings[caption].to(torch.float32)
        else:
            text = torch.zeros(emb_dim)
        v = sample.image_embeddings.shape[0]
        chosen = (
            torch.from_numpy(_rng(s, _DOMAIN_VIEWS).choice(v, size=k, replace=False)) if v >= k else torch.arange(v)
        )
        images = torch.zeros(k, emb_dim)
        images[: len(chosen)] = sample.image_embeddings[chosen].to(torch.float32)
        image_mask = torch.arange(k) < len(chosen)
        similarity = torch.nn.functional.cosine_similarity(text.unsqueeze(0), images, dim=-1)
        similarity = torch.where(image_mask & bool(t), similarity, torch.zeros(()))

        if sample.label is None:
            label = -1
        elif sample.label in self.labels:
            label = self.labels.index(sample.label)
        else:
            raise DatasetError(f"sample {sample.id!r}: label {sample.label!r} is not in the manifest's labels")
        return ProcessedSample(
            id=sample.id,
            index=index,
            features=features,
            text=text,
            text_mask=torch.tensor(bool(t)),
            images=images,
            image_mask=image_mask,
            similarity=similarity,
            label=torch.tensor(label, dtype=torch.long),
        )


__all__ = ["ProcessedSample", "SampleProcessor", "TripletBatch", "collate_triplets"]
