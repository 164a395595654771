"""What ``encode`` / ``encode_iter`` read: files, folders and clouds -> preprocessed encoder inputs.

:class:`GaussianInputDataset` is a map-style ``Dataset`` of objects (3DGS files or
:class:`~clip_gs.gaussians.GaussianCloud` s), each item preprocessed by the one shared
:func:`~clip_gs.model.features.preprocess_cloud`. With ``catch_errors=True`` a file that cannot
be loaded becomes an item that carries its error instead of stopping the loader, so a long run
can report it and go on. :func:`iter_input_batches` runs it through a ``DataLoader`` whose
worker processes run ahead of the encoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clip_gs.errors import ClipGSError, ConfigError
from clip_gs.gaussians import GaussianCloud
from clip_gs.gaussians.assets import asset_loader, find_asset_files
from clip_gs.model.config import CLIPGSConfig
from clip_gs.model.features import preprocess_cloud

GaussianInput = GaussianCloud | str | os.PathLike
"""One input object: a cloud, or the path of a 3DGS file (any supported format)."""

Loader = Callable[[str | os.PathLike], GaussianCloud]
"""``path -> GaussianCloud``; by default :func:`~clip_gs.gaussians.assets.asset_loader` of the model's
frame (3DGS files and meshes, brought to ``config.up_axis``). Must be picklable for loader workers."""


@dataclass(frozen=True)
class InputItem:
    """One object of an input list: its position, its id and the object itself.

    ``id`` is the file path for files, the cloud's ``source`` for clouds (``"<source>#b"`` for
    element b of a batched cloud), else ``"#index"``.
    """

    index: int
    id: str
    item: GaussianInput


def expand_inputs(inputs: GaussianInput | Iterable[GaussianInput]) -> list[InputItem]:
    """Flatten ``inputs`` into one object per item, in order.

    A folder becomes its 3DGS files and meshes (:func:`~clip_gs.gaussians.assets.find_asset_files`:
    recursive, sorted by path); a batched cloud ``[B]`` becomes its B objects; clouds are moved to the CPU
    (preprocessing runs there, possibly in forked loader processes, which cannot touch CUDA).
    """
    if isinstance(inputs, (GaussianCloud, str, os.PathLike)):
        inputs = [inputs]
    items: list[InputItem] = []

    def add(item: GaussianInput, id_: str) -> None:
        items.append(InputItem(len(items), id_, item))

    for entry in inputs:
        if isinstance(entry, GaussianCloud) and entry.batch_shape:
            for b, cloud in enumerate(entry.unbind()):  # the elements share the batch's source
                add(cloud.to("cpu"), f"{entry.source}#{b}" if entry.source else f"#{len(items)}")
        elif isinstance(entry, GaussianCloud):
            add(entry.to("cpu"), entry.source or f"#{len(items)}")
        elif isinstance(entry, (str, os.PathLike)) and Path(entry).is_dir():
            for path in find_asset_files(entry):
                add(path, str(path))
        elif isinstance(entry, (str, os.PathLike)):
            add(entry, str(entry))
        else:
            raise ConfigError(f"cannot encode a {type(entry).__name__}; give GaussianClouds, file paths or folders")
    return items


@dataclass(frozen=True)
class InputSample:
    """A preprocessed object: ``features [num_gaussians, 19]``, or the ``error`` that stopped it."""

    index: int
    id: str
    features: Tensor | None
    error: ClipGSError | None = None


class GaussianInputDataset(Dataset):
    """Objects -> :class:`InputSample` (features ``[config.num_gaussians, 19]``).

    Args:
        inputs: clouds, file paths and folders (see :func:`expand_inputs`).
        config: the model's configuration (its ``num_gaussians`` and ``scale_activation``).
        seed: seed of the resampling to ``config.num_gaussians`` (the same for every object).
        loader: how files are read (:data:`Loader`).
        catch_errors: return a package error (:class:`~clip_gs.errors.ClipGSError`) as the
            sample's ``error`` instead of raising it. Other exceptions always propagate.
    """

    def __init__(
        self,
        inputs: GaussianInput | Iterable[GaussianInput],
        config: CLIPGSConfig,
        seed: int = 0,
        loader: Loader | None = None,
        catch_errors: bool = False,
    ):
        self.items = expand_inputs(inputs)
        loader = asset_loader(frame=config.up_axis) if loader is None else loader
        self.config, self.seed, self.loader, self.catch_errors = config, seed, loader, catch_errors

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> InputSample:
        entry = self.items[index]
        try:
            cloud = entry.item if isinstance(entry.item, GaussianCloud) else self.loader(entry.item)
            features = preprocess_cloud(cloud, self.config, self.seed)
        except ClipGSError as exc:
            if not self.catch_errors:
                raise
            return InputSample(entry.index, entry.id, None, exc)
        return InputSample(entry.index, entry.id, features)


def collate_samples(samples: Sequence[InputSample]) -> list[InputSample]:
    """The loader's collate function: keeps the samples as they are (batching happens per good
    sample in :func:`iter_input_batches`)."""
    return list(samples)


def default_num_workers(device: torch.device, num_batches: int) -> int:
    """Loader processes ``encode`` uses when ``num_workers=None``.

    0 for a single batch (nothing to overlap). On CUDA the CPU is free while the GPU computes:
    up to 4 workers. On CPU the encoder's threads already use ``torch.get_num_threads()`` cores;
    workers on those same cores stall the encoder's synchronised threads more than loading in
    process costs (measured on 2 cores: 0.85x vs 0.92x of the encoder-only throughput), so only
    spare cores get workers, at most 2.
    """
    if num_batches <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return min(4, cores)
    return max(0, min(2, cores - torch.get_num_threads()))


def _loader_worker_init(worker_id: int) -> None:
    """Loader processes yield the CPU to the encoder's threads (lowest scheduling priority)."""
    if hasattr(os, "nice"):
        os.nice(19)


def iter_input_batches(
    dataset: GaussianInputDataset,
    batch_size: int,
    device: torch.device,
    num_workers: int | None = None,
) -> Iterator[list[InputSample]]:
    """Batches of :class:`InputSample` from ``dataset``, in input order, loaded ahead by
    ``num_workers`` low-priority processes (None: :func:`default_num_workers`). The loader
    processes are shut down when the iteration ends, also on an error or an early ``close``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    num_batches = -(-len(dataset) // batch_size)
    if num_workers is None:
        num_workers = default_num_workers(device, num_batches)
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=_loader_worker_init,
    )
    loader_iter = iter(loader)
    try:
        yield from loader_iter
    finally:
        # Stop the loader processes now: left to garbage collection, their low-priority shutdown
        # would wait on whatever runs next.
        shutdown = getattr(loader_iter, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


__all__ = [
    "GaussianInput",
    "GaussianInputDataset",
    "InputItem",
    "InputSample",
    "Loader",
    "collate_samples",
    "default_num_workers",
    "expand_inputs",
    "iter_input_batches",
]
