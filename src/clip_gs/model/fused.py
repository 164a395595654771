"""The fused inference form of a :class:`~clip_gs.model.encoder.GaussianEncoder`.

The ``nn.Module``s are the one definition of the model. ``GaussianEncoder.fuse`` (or
``CLIPGS.fused``) builds from them, explicitly and once, an
inference-only object that computes the same function faster, as timm re-parameterises a
trained network for deployment. It is a snapshot: its weights are copies taken when it is
built, it holds no reference to the module's parameters, and the module keeps no state of it.
Rebuild it after the weights change. Training and validation never use it.

What fusing does (eval-mode semantics: BatchNorm running statistics, no dropout):

- every BatchNorm is folded into the product or convolution before it (:func:`fold_batchnorm`);
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
from timm.layers.mlp import GluMlp, Mlp, SwiGLU
from timm.models.eva import EvaAttention, EvaBlock
from torch import Tensor, nn

from clip_gs.errors import ConfigError
from clip_gs.gaussians import GaussianCloud
from clip_gs.model.config import CLIPGSConfig
from clip_gs.model.features import FEATURE_LAYOUT
from clip_gs.model.inputs import GaussianInput, GaussianInputDataset, Loader, iter_input_batches
from clip_gs.model.tokenizer import (
    GaussianPatchEncoder,
    PointPatchEncoder,
    conv1d_channels_last,
    make_patches,
    point_channels,
)
from clip_gs.ops import serialization_order

logger = logging.getLogger("clip_gs")

CHUNK_GROUPS = 128
"""Patches per chunk on CPU (128 x 64 points: activations of a few MB, which stay in cache).
Other devices take all patches of the batch in one chunk."""

Linear = tuple[Tensor, Tensor | None]
"""``(weight [out, in], bias [out] or None)``."""


def fold_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the product before it.

    Args:
        weight: ``[C_out, ...]`` weight of the linear map / convolution.
        bias: ``[C_out]`` or None.
        bn: the BatchNorm applied to its output (running statistics).

    Returns:
        ``(weight', bias')`` with ``bn(W x + b) == W' x + b'``.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), folded_bias


def _copy(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A detached copy in ``dtype`` (never a view of a parameter: the fused form is a snapshot)."""
    return None if t is None else t.detach().to(dtype, copy=True).contiguous()


def _linear(layer: nn.Linear, dtype: torch.dtype) -> Linear:
    return _copy(layer.weight, dtype), _copy(layer.bias, dtype)


def _layer_norm(norm: nn.Module) -> tuple[Tensor, Tensor, float] | None:
    """``(weight, bias, eps)`` float32 copies of a LayerNorm; None for Identity."""
    if isinstance(norm, nn.Identity):
        return None
    return _copy(norm.weight, torch.float32), _copy(norm.bias, torch.float32), norm.eps


@dataclass(frozen=True)
class FusedPointBranch:
    """Mini-PointNet with folded BatchNorms and the split global/local product, then the
    projection to the token width (Uni3D ``encoder2trans``)."""

    first: Linear
    second: Linear
    third_global: Tensor
    third_local: Tensor
    third_bias: Tensor
    fourth: Linear
    proj: Linear

    @classmethod
    def build(cls, encoder: PointPatchEncoder, proj: nn.Linear, dtype: torch.dtype) -> FusedPointBranch:
        conv1, bn1, _, conv2 = encoder.first_conv
        conv3, bn3, _, conv4 = encoder.second_conv
        w1, b1 = fold_batchnorm(conv1.weight.squeeze(-1), conv1.bias, bn1)
        w3, b3 = fold_batchnorm(conv3.weight.squeeze(-1), conv3.bias, bn3)
        half = conv2.out_channels  # the pooled (global) half comes first in the concatenation
        return cls(
            first=(_copy(w1, dtype), _copy(b1, dtype)),
            second=(_copy(conv2.weight.squeeze(-1), dtype), _copy(conv2.bias, dtype)),
            third_global=_copy(w3[:, :half], dtype),
            third_local=_copy(w3[:, half:], dtype),
            third_bias=_copy(b3, dtype),
            fourth=(_copy(conv4.weight.squeeze(-1), dtype), _copy(conv4.bias, dtype)),
            proj=_linear(proj, dtype),
        )

    def __call__(self, points: Tensor) -> Tensor:
        """``points: [M, K, 6]`` (xyz relative to the centre, rgb) -> tokens ``[M, width]``."""
        dtype = self.first[0].dtype
        x = F.linear(points.to(dtype), *self.first).relu_()  # [M, K, 128]
        x = F.linear(x, *self.second)  # [M, K, 256]
        per_patch = F.linear(x.amax(dim=1, keepdim=True), self.third_global, self.third_bias)  # [M, 1, 512]
        x = F.linear(x, self.third_local).add_(per_patch).relu_()  # [M, K, 512]
        return F.linear(F.linear(x, *self.fourth).amax(dim=1), *self.proj)


@dataclass(frozen=True)
class FusedGaussianBranch:
    """The Gaussian branch with folded BatchNorms and all orders in one convolution call."""

    orders: tuple[str, ...]
    bits: int
    pooling: str
    stem: Linear
    stem_norm: tuple[Tensor, Tensor, float]
    order_scale: Tensor  # [O, 1, 1, E]
    order_shift: Tensor  # [O, 1, 1, E]
    convs: tuple[tuple[Tensor, Tensor, int, int], ...]  # (weight, bias, stride, padding)
    proj: Linear

    @classmethod
    def build(cls, branch: GaussianPatchEncoder, dtype: torch.dtype) -> FusedGaussianBranch:
        linear, norm = branch.stem
        convs = []
        for i in range(0, len(branch.convs), 3):
            conv, bn = branch.convs[i], branch.convs[i + 1]
            weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
            convs.append((_copy(weight, dtype), _copy(bias, dtype), conv.stride[0], conv.padding[0]))
        return cls(
            orders=tuple(branch.orders),
            bits=branch.bits,
            pooling=branch.pooling,
            stem=_linear(linear, dtype),
            stem_norm=(_copy(norm.weight, dtype), _copy(norm.bias, dtype), norm.eps),
            order_scale=_copy((1 + branch.order_scale)[:, None, None, :], dtype),
            order_shift=_copy(branch.order_shift[:, None, None, :], dtype),
            convs=tuple(convs),
            proj=_linear(branch.proj, dtype),
        )

    def __call__(self, patch_features: Tensor) -> Tensor:
        """``patch_features: [M, K, 19]`` -> ``[M, width]``. Serialization orders are computed
        from the float32 relative positions."""
        dtype = self.stem[0].dtype
        m, k, _ = patch_features.shape
        x = F.linear(patch_features.to(dtype), *self.stem)
        x = F.layer_norm(x, x.shape[-1:], *self.stem_norm)  # [M, K, E]
        rel_xyz = patch_features[..., FEATURE_LAYOUT["xyz"]]
        idx = torch.stack([serialization_order(rel_xyz, order, bits=self.bits) for order in self.orders])  # [O, M, K]
        x = torch.take_along_dim(x.unsqueeze(0), idx.unsqueeze(-1), dim=2)  # [O, M, K, E]
        x = x.mul_(self.order_scale).add_(self.order_shift)
        x = x.reshape(-1, k, x.shape[-1])  # [O*M, K, E], channels-last as the module path runs it
        for weight, bias, stride, padding in self.convs:
            x = conv1d_channels_last(x, weight, bias, stride, padding).relu_()
        x = x.amax(dim=1) if self.pooling == "max" else x.mean(dim=1)
        x = x.view(len(self.orders), m, -1).float().mean(dim=0)  # fuse orders
        return F.linear(x.to(dtype), *self.proj)


def block_is_fusable(block: nn.Module) -> bool:
    """Whether :class:`FusedBlock` computes this block: an ``EvaBlock`` with EVA attention (no
    q/k norm, no gate, optional inner LayerNorm) and a SwiGLU, GluMlp or Mlp MLP whose norm is
    a LayerNorm or Identity. Every block :class:`CLIPGSConfig` can describe is."""
    if not isinstance(block, EvaBlock) or not isinstance(block.attn, EvaAttention):
        return False
    attn, mlp = block.attn, block.mlp
    norms = (block.norm1, block.norm2, attn.norm, mlp.norm)
    # older timm 1.0.x releases have no attention gate / q-k norms: getattr keeps them fusable
    return (
        getattr(attn, "gate", None) is None
        and isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity)
        and isinstance(getattr(attn, "k_norm", nn.Identity()), nn.Identity)
        and all(isinstance(n, (nn.LayerNorm, nn.Identity)) for n in norms)
        and isinstance(block.norm1, nn.LayerNorm)
        and isinstance(block.norm2, nn.LayerNorm)
        and isinstance(mlp, (SwiGLU, GluMlp, Mlp))
    )


@dataclass(frozen=True)
class FusedBlock:
    """One EVA block without RoPE, as ``EvaBlock.forward`` computes it in eval mode.

    ``qkv`` is one ``[3A, D]`` matrix (EVA has no k bias: zeros), ``fc1`` one ``[2H, D]``
    gate/value matrix for gated MLPs (gate first unless ``gate_last``).
    """

    heads: int
    norm1: tuple[Tensor, Tensor, float]
    qkv: Linear
    attn_norm: tuple[Tensor, Tensor, float] | None
    proj: Linear
    gamma_1: Tensor | None
    norm2: tuple[Tensor, Tensor, float]
    fc1: Linear
    gated: bool
    gate_last: bool
    act: nn.Module
    mlp_norm: tuple[Tensor, Tensor, float] | None
    fc2: Linear
    gamma_2: Tensor | None

    @classmethod
    def build(cls, block: EvaBlock, dtype: torch.dtype) -> FusedBlock:
        if not block_is_fusable(block):
            raise ConfigError(f"cannot fuse block {type(block).__name__}: see block_is_fusable for what is supported")
        attn, mlp = block.attn, block.mlp
        if attn.qkv is not None:
            qkv_weight = attn.qkv.weight
            qkv_bias = None if attn.q_bias is None else torch.cat([attn.q_bias, attn.k_bias, attn.v_bias])
        else:
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            qkv_weight = torch.cat([p.weight for p in projections])
            if all(p.bias is None for p in projections):
                qkv_bias = None
            else:
                qkv_bias = torch.cat(
                    [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projections]
                )
        if isinstance(mlp, SwiGLU):
            fc1_weight = torch.cat([mlp.fc1_g.weight, mlp.fc1_x.weight])
            fc1_bias = None if mlp.fc1_g.bias is None else torch.cat([mlp.fc1_g.bias, mlp.fc1_x.bias])
            gated, gate_last = True, False
        else:
            fc1_weight, fc1_bias = mlp.fc1.weight, mlp.fc1.bias
            gated, gate_last = isinstance(mlp, GluMlp), isinstance(mlp, GluMlp) and mlp.gate_last
        mlp_norm = _layer_norm(mlp.norm)
        return cls(
            heads=attn.num_heads,
            norm1=_layer_norm(block.norm1),
            qkv=(_copy(qkv_weight, dtype), _copy(qkv_bias, dtype)),
            attn_norm=None if isinstance(attn.norm, nn.Identity) else _cast_norm(_layer_norm(attn.norm), dtype),
            proj=_linear(attn.proj, dtype),
            gamma_1=_copy(block.gamma_1, torch.float32),
            norm2=_layer_norm(block.norm2),
            fc1=(_copy(fc1_weight, dtype), _copy(fc1_bias, dtype)),
            gated=gated,
            gate_last=gate_last,
            act=mlp.act,
            mlp_norm=None if mlp_norm is None else _cast_norm(mlp_norm, dtype),
            fc2=_linear(mlp.fc2, dtype),
            gamma_2=_copy(block.gamma_2, torch.float32),
        )

    def __call__(self, x: Tensor, num_queries: int | None = None) -> Tensor:
        """Args:
            x: ``[B, T, D]`` float32 residual stream.
            num_queries: None updates every token. ``Q`` updates only the first ``Q`` tokens
                (they still attend to all ``T``) and returns ``[B, Q, D]``: the last block of an
                encoder that reads only the cls token needs ``Q = 1``, which skips the query,
                output and MLP products of the other tokens without changing the result.

        Returns:
            ``[B, T, D]`` (or ``[B, Q, D]``) float32.
        """
        return fused_block_forward(self, x, num_queries)


def _cast_norm(norm: tuple[Tensor, Tensor, float], dtype: torch.dtype) -> tuple[Tensor, Tensor, float]:
    return norm[0].to(dtype), norm[1].to(dtype), norm[2]


def fused_block_forward(block: FusedBlock, x: Tensor, num_queries: int | None = None) -> Tensor:
    """:meth:`FusedBlock.__call__` as a plain function (what ``torch.compile`` compiles)."""
    b, t, d = x.shape
    weight, bias = block.qkv
    heads = block.heads
    h = F.layer_norm(x, (d,), *block.norm1).to(weight.dtype)
    if num_queries is None:
        qkv = F.linear(h, weight, bias).view(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, T, head_dim]
    else:
        a = weight.shape[0] // 3
        x = x[:, :num_queries]
        q = F.linear(h[:, :num_queries], weight[:a], None if bias is None else bias[:a])
        q = q.view(b, num_queries, heads, -1).transpose(1, 2)
        kv = F.linear(h, weight[a:], None if bias is None else bias[a:]).view(b, t, 2, heads, -1)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q.shape[2], -1)
    if block.attn_norm is not None:
        h = F.layer_norm(h, h.shape[-1:], *block.attn_norm)
    h = F.linear(h, *block.proj)
    x = x + (h if block.gamma_1 is None else block.gamma_1 * h)
    h = F.layer_norm(x, (d,), *block.norm2).to(weight.dtype)
    h = F.linear(h, *block.fc1)
    if block.gated:
        first, second = h.chunk(2, dim=-1)
        h = first * block.act(second) if block.gate_last else block.act(first).mul_(second)
    else:
        h = block.act(h)
    if block.mlp_norm is not None:
        h = F.layer_norm(h, h.shape[-1:], *block.mlp_norm)
    h = F.linear(h, *block.fc2)
    return x + (h if block.gamma_2 is None else block.gamma_2 * h)


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
            self.cls_token = _copy(encoder.cls_token, torch.float32)
            self.cls_pos = _copy(encoder.cls_pos, torch.float32)
            first, act, second = encoder.pos_embed
            self.pos_embed = (_linear(first, torch.float32), act, _linear(second, torch.float32))
            self.blocks = [FusedBlock.build(block, dtype) for block in encoder.blocks]
            self.norm = _layer_norm(encoder.norm)
            self.head = _linear(encoder.head, torch.float32)

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


__all__ = [
    "CHUNK_GROUPS",
    "Encoded",
    "FusedBlock",
    "FusedEncoder",
    "FusedGaussianBranch",
    "FusedPointBranch",
    "block_is_fusable",
    "fold_batchnorm",
]
