"""The fused inference form of a :class:`~clip_gs.model.encoder.GaussianEncoder`.

The ``nn.Module``s are the one definition of the model. ``GaussianEncoder.fuse`` (or
``CLIPGS.fused``) builds from them, explicitly and once, an
inference-only object that computes the same function faster, as timm re-parameterises a
trained network for deployment. It is a snapshot: its weights are copies taken when it is
built, it holds no reference to the module's parameters, and the module keeps no state of it.
Rebuild it after the weights change. Training and validation never use it.

What fusing does (eval-mode semantics: BatchNorm running statistics, no dropout):

- every BatchNorm is folded into the product or convolution before it
  (:func:`~clip_gs.model.fused_kernels.fold_batchnorm`);
- the mini-PointNet's 1x1 convolutions become matrix products over channels-last rows, and the
  ``[global; local]`` concatenation is split into a per-patch and a per-point product (the
  global half of the 512x512 product is done once per patch instead of once per point);
- the Gaussian branch runs all serialization orders through one convolution call;
- patches are processed in chunks of ``chunk_groups`` on CPU so activations stay in cache;
- per block, one packed q/k/v product, ``F.scaled_dot_product_attention``, one packed
  gate/value product for SwiGLU / GluMlp MLPs; the last block updates only the cls token (the
  only one read);
- the products run in the compute dtype (float32 or bfloat16, float32 accumulation); the
  residual stream, the blocks' pre-norms, positional MLP, final norm, head and L2
  normalisation stay float32 (the norms inside the Gaussian stem, the attention and the MLP see
  inputs in the compute dtype).

In float32 it equals the module path in eval mode up to rounding (reassociation from folding:
about 1e-6 relative to the values' magnitude); in bfloat16 embeddings agree with float32 to a
cosine of about 0.9999. Nothing reads a value back to the host or branches on data, so it runs
asynchronously on CUDA.

The fused blocks themselves (the tokenizer branches and the transformer block, each built from its
module) are in :mod:`clip_gs.model.fused_kernels`; this module assembles them into the encoder and
its ``encode`` API.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_gs.errors import ConfigError
from clip_gs.gaussians import GaussianCloud
from clip_gs.model.config import CLIPGSConfig
from clip_gs.model.fused_kernels import (
    FusedBlock,
    FusedGaussianBranch,
    FusedPointBranch,
    copy_layer_norm,
    copy_linear,
    copy_weight,
    fused_block_forward,
)
from clip_gs.model.inputs import GaussianInput, GaussianInputDataset, Loader, iter_input_batches
from clip_gs.model.tokenizer import make_patches, point_channels

logger = logging.getLogger("clip_gs")

CHUNK_GROUPS = 128
"""Patches per chunk on CPU (128 x 64 points: activations of a few MB, which stay in cache).
Other devices take all patches of the batch in one chunk."""


@functools.lru_cache(maxsize=1)
def _compiled_block_forward():
    return torch.compile(fused_block_forward, dynamic=False)


@dataclass(frozen=True)
class Encoded:
    """One result of ``encode_iter``.

    Attributes:
        index: position of the object in the expanded input list (folders expanded).
        id: the file path, or the cloud's ``source`` (else ``"#index"``).
        embedding: ``[embed_dim]`` float32 unit vector on the CPU; None when the object failed.
        error: ``"ErrorType: message"`` of a skipped object (``on_error="skip"``), else None.
    """

    index: int
    id: str
    embedding: Tensor | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class FusedEncoder:
    """Inference-only form of a ``GaussianEncoder`` (see the module docstring); build it with
    ``GaussianEncoder.fuse`` or ``CLIPGS.fused``.

    Call it as ``fused(features [B, N, 19]) -> [B, embed_dim]`` float32 unit vectors (no
    autograd). ``encode`` / ``encode_iter`` embed files and clouds with it.

    Attributes:
        config: the encoder's :class:`CLIPGSConfig`.
        dtype: compute dtype of the products (float32 or bfloat16).
        device: where its weights live (the module's device when it was built).
        chunk_groups: patches per tokenizer chunk on CPU (:data:`CHUNK_GROUPS`); the result
            does not depend on it beyond float rounding.
        compile_blocks: run the blocks through ``torch.compile`` (off by default; see
            :meth:`set_compile`).
    """

    def __init__(self, encoder: nn.Module, dtype: torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ConfigError(f"the fused encoder computes in float32 or bfloat16, not {dtype}")
        self.config: CLIPGSConfig = encoder.config
        self.dtype = dtype
        self.device = encoder.cls_token.device
        self.chunk_groups = CHUNK_GROUPS
        self.compile_blocks = False
        with torch.no_grad():
            tokenizer = encoder.tokenizer
            self.point = FusedPointBranch.build(tokenizer.point_encoder, tokenizer.point_proj, dtype)
            gaussian = tokenizer.gaussian_encoder
            self.gaussian = None if gaussian is None else FusedGaussianBranch.build(gaussian, dtype)
            self.cls_token = copy_weight(encoder.cls_token, torch.float32)
            self.cls_pos = copy_weight(encoder.cls_pos, torch.float32)
            first, act, second = encoder.pos_embed
            self.pos_embed = (copy_linear(first, torch.float32), act, copy_linear(second, torch.float32))
            self.blocks = [FusedBlock.build(block, dtype) for block in encoder.blocks]
            self.norm = copy_layer_norm(encoder.norm)
            self.head = copy_linear(encoder.head, torch.float32)

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"FusedEncoder({self.config.name!r}, dtype={dtype}, device={self.device}, blocks={len(self.blocks)})"

    def set_compile(self, enabled: bool = True) -> FusedEncoder:
        """Run the blocks through ``torch.compile`` (off by default).

        Optional: on 2 CPU cores it gains about 2-3% after a first call that compiles for ~20 s
        (a C++ compiler is needed on CPU). If compiling or running the compiled blocks fails (no
        compiler, unsupported platform), a warning is emitted once and the eager blocks are used.
        """
        self.compile_blocks = bool(enabled)
        return self

    def tokens(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """GS Tokenizer: ``features [B, N, 19]`` -> ``(tokens [B, G, width] float32, centers [B, G, 3])``.
        Grouping in float32, then both branches chunk by chunk of patches in ``dtype``."""
        cfg = self.config
        patches = make_patches(features, cfg.num_groups, cfg.group_size, cfg.fps_start)
        b, g, k, c = patches.features.shape
        rows = patches.features.reshape(b * g, k, c)
        point_input = point_channels(rows)
        tokens = torch.empty(b * g, cfg.width, dtype=torch.float32, device=features.device)
        step = self.chunk_groups if features.device.type == "cpu" else b * g
        for start in range(0, b * g, step):
            chunk = slice(start, start + step)
            out = self.point(point_input[chunk])
            if self.gaussian is not None:
                out = out + self.gaussian(rows[chunk])
            tokens[chunk] = out
        return tokens.reshape(b, g, cfg.width), patches.centers

    def _run_block(self, block: FusedBlock, x: Tensor, num_queries: int | None) -> Tensor:
        if self.compile_blocks:
            try:
                return _compiled_block_forward()(block, x, num_queries)
            except Exception as exc:  # any failure of the optional compiler: fall back, once
                warnings.warn(f"torch.compile of the encoder blocks failed; running eagerly: {exc}", stacklevel=3)
                self.compile_blocks = False
        return fused_block_forward(block, x, num_queries)

    def encode_iter(
        self,
        inputs: GaussianInput | Iterable[GaussianInput],
        batch_size: int = 8,
        seed: int = 0,
        on_error: str = "raise",
        progress: bool | None = None,
        num_workers: int | None = None,
        loader: Loader | None = None,
    ) -> Iterator[Encoded]:
        """Embed objects as a stream: yields one :class:`Encoded` per object, in input order, as
        each batch is ready.

        Files are read and preprocessed (:func:`~clip_gs.model.features.preprocess_cloud`) by a
        ``DataLoader`` whose worker processes run ahead of the encoder.

        Args:
            inputs: GaussianClouds (unbatched or batched), file paths (any supported 3DGS
                format) and folders (their 3DGS files, recursively, sorted), or one of them.
            batch_size: objects per forward pass.
            seed: seed of the resampling to ``config.num_gaussians`` (the same for every object).
            on_error: ``"raise"`` stops at the first object that cannot be loaded, with the
                package's error naming the file; ``"skip"`` yields it with ``embedding=None``
                and the reason in ``error``, logs a warning (logger ``clip_gs``) and goes on.
            progress: progress bar over objects (default: when there is more than one batch).
            num_workers: loader processes (lowest scheduling priority); None:
                :func:`~clip_gs.model.inputs.default_num_workers`. Results do not depend on it.
            loader: how files are read; None: :func:`~clip_gs.gaussians.assets.load_asset` with
                ``up="auto"`` into ``config.up_axis`` (3DGS files and meshes at
                :data:`~clip_gs.gaussians.assets.MESH_GAUSSIANS`); e.g.
                ``asset_loader(up="-y")`` names the axis of files that declare none.

        Raises:
            ClipGSError (e.g. GaussianFormatError): with ``on_error="raise"``, a bad file.
            ConfigError: no inputs, bad ``batch_size`` / ``num_workers`` / ``on_error``.
        """
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        dataset = GaussianInputDataset(inputs, self.config, seed, loader, catch_errors=True)
        if not len(dataset):
            raise ConfigError("encode got no inputs (an empty list, or folders without 3DGS files)")
        bar = None
        if progress if progress is not None else len(dataset) > batch_size:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(dataset), desc="encode", unit="obj")
        failed = 0
        try:
            for batch in iter_input_batches(dataset, batch_size, self.device, num_workers):
                good = [s for s in batch if s.error is None]
                if on_error == "raise" and len(good) < len(batch):
                    raise next(s.error for s in batch if s.error is not None)
                embeddings = iter(self(torch.stack([s.features for s in good])).cpu()) if good else iter(())
                for sample in batch:
                    if sample.error is None:
                        yield Encoded(sample.index, sample.id, next(embeddings))
                    else:
                        failed += 1
                        reason = f"{type(sample.error).__name__}: {sample.error}"
                        logger.warning("encode: skipped %s (%s)", sample.id, reason)
                        yield Encoded(sample.index, sample.id, None, reason)
                if bar is not None:
                    bar.update(len(batch))
                    if failed:
                        bar.set_postfix(failed=failed)
        finally:
            if bar is not None:
                bar.close()

    def encode(
        self,
        inputs: GaussianInput | Iterable[GaussianInput],
        batch_size: int = 8,
        seed: int = 0,
        progress: bool | None = None,
        num_workers: int | None = None,
        loader: Loader | None = None,
    ) -> Tensor:
        """Embeddings of ``inputs`` (as :meth:`encode_iter` with ``on_error="raise"``).

        Returns:
            ``[embed_dim]`` float32 for a single object (a cloud or a file path), else
            ``[B, embed_dim]`` in input order (folders expanded).
        """
        single = (isinstance(inputs, GaussianCloud) and not inputs.batch_shape) or (
            isinstance(inputs, (str, os.PathLike)) and not os.path.isdir(inputs)
        )
        results = self.encode_iter(inputs, batch_size, seed, "raise", progress, num_workers, loader)
        embeddings = torch.stack([r.embedding for r in results])
        return embeddings[0] if single else embeddings

    @torch.inference_mode()
    def __call__(self, features: Tensor, normalize: bool = True) -> Tensor:
        """``features: [B, N, 19]`` (:func:`~clip_gs.model.features.preprocess_cloud`) ->
        ``[B, embed_dim]`` float32, unit norm by default."""
        features = features.to(self.device, torch.float32)
        tokens, centers = self.tokens(features)
        b = tokens.shape[0]
        (w1, b1), act, (w2, b2) = self.pos_embed
        pos = F.linear(act(F.linear(centers, w1, b1)), w2, b2)
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        x = x + torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x, num_queries=1 if i == last else None)  # only cls is read
        cls = F.layer_norm(x[:, 0].float(), (x.shape[-1],), *self.norm)
        embedding = F.linear(cls, *self.head)
        return F.normalize(embedding, dim=-1) if normalize else embedding


__all__ = ["CHUNK_GROUPS", "Encoded", "FusedEncoder"]
