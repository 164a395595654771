"""`GaussianEncoder`: GS Tokenizer + Uni3D-style transformer + projection into CLIP space.

The encoder has two ways to run, with the same parameters (see :meth:`GaussianEncoder.forward`):

- the module path: the timm EVA blocks and the tokenizer's layers as declared, used in training
  and whenever autograd is on; ``precision="bf16"`` wraps it in ``torch.autocast``;
- the inference path (eval mode under ``torch.no_grad()`` / ``torch.inference_mode()``): the
  tokenizer's fused branches (:mod:`clip_gs.model.tokenizer`) and, per block, one packed q/k/v
  product, ``F.scaled_dot_product_attention``, one packed gate/value product for the SwiGLU / GluMlp MLP,
  with weights cast once to the compute dtype and cached (:class:`DerivedWeights`); the last
  block updates only the cls token (the only one read). The residual stream, the LayerNorm
  statistics and the block norms stay float32 (norms inside the MLP / Gaussian stem see bf16
  inputs and compute their statistics in float32). In float32 it equals the module path up to rounding
  (about 1e-6); in bfloat16 the embeddings agree with float32 to a cosine of about 0.9999.

Nothing in either path reads a value back to the host or branches on data, so both run
asynchronously on CUDA.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm
from timm.layers.mlp import GluMlp, Mlp, SwiGLU
from timm.models.eva import EvaAttention, EvaBlock
from torch import Tensor, nn

from clip_gs.model.config import CLIPGSConfig
from clip_gs.model.precision import DerivedWeights, autocast_for, check_inference_mode, resolve_precision
from clip_gs.model.tokenizer import GSTokenizer


class PatchDropout(nn.Module):
    """Keep a random ``1 - p`` fraction of the patch tokens (never the cls token) in training.

    Identity in eval mode (unlike Uni3D's version, which also dropped patches at inference).
    Uses the global torch RNG, seeded by the training run's seed.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens: [B, 1 + G, D]`` -> ``[B, 1 + G', D]``."""
        if not self.training or self.p == 0.0:
            return tokens
        cls, patches = tokens[:, :1], tokens[:, 1:]
        b, g, d = patches.shape
        keep = max(1, int(g * (1.0 - self.p)))
        idx = torch.rand(b, g, device=tokens.device).topk(keep, dim=1).indices
        patches = torch.take_along_dim(patches, idx.unsqueeze(-1), dim=1)
        return torch.cat([cls, patches], dim=1)


def make_blocks(config: CLIPGSConfig) -> nn.ModuleList:
    """The transformer blocks of a Uni3D size: timm ``EvaBlock``s with that size's variant."""
    rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
    blocks = nn.ModuleList(
        EvaBlock(
            dim=config.width,
            num_heads=config.num_heads,
            qkv_fused=config.qkv_fused,
            mlp_ratio=config.mlp_ratio,
            swiglu_mlp=config.swiglu_mlp,
            scale_mlp=config.scale_mlp,
            drop_path=rate,
        )
        for rate in rates
    )
    for block in blocks:
        block._derived = DerivedWeights()  # the inference path's packed weights of this block
    return blocks


def _norm_params(norm: nn.Module, dtype: torch.dtype) -> tuple[Tensor, Tensor, float] | None:
    """``(weight, bias, eps)`` of a LayerNorm cast to ``dtype``; None for Identity."""
    if isinstance(norm, nn.Identity):
        return None
    return norm.weight.to(dtype), norm.bias.to(dtype), norm.eps


def block_is_fusable(block: nn.Module) -> bool:
    """Whether :func:`block_inference` handles this block: an ``EvaBlock`` with EVA attention
    (no q/k norm, no gate, optional inner LayerNorm) and a SwiGLU, GluMlp or Mlp MLP whose norm
    is a LayerNorm or Identity. Other blocks run as modules (under autocast) in the inference path."""
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


def pack_block(block: EvaBlock, dtype: torch.dtype) -> dict:
    """Inference weights of a fusable block in ``dtype``: one ``[3A, D]`` q/k/v matrix (EVA has
    no k bias: zeros), one ``[2H, D]`` gate/value matrix for gated MLPs (gate first)."""
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
            biases = [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projections]
            qkv_bias = torch.cat(biases)
    if isinstance(mlp, SwiGLU):
        fc1_weight = torch.cat([mlp.fc1_g.weight, mlp.fc1_x.weight])
        fc1_bias = None if mlp.fc1_g.bias is None else torch.cat([mlp.fc1_g.bias, mlp.fc1_x.bias])
        gated, gate_last = True, False
    else:
        fc1_weight, fc1_bias = mlp.fc1.weight, mlp.fc1.bias
        gated, gate_last = isinstance(mlp, GluMlp), isinstance(mlp, GluMlp) and mlp.gate_last

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype).contiguous()

    return {
        "heads": attn.num_heads,
        "qkv": (cast(qkv_weight), cast(qkv_bias)),
        "attn_norm": _norm_params(attn.norm, dtype),
        "proj": (cast(attn.proj.weight), cast(attn.proj.bias)),
        "fc1": (cast(fc1_weight), cast(fc1_bias)),
        "gated": gated,
        "gate_last": gate_last,
        "mlp_norm": _norm_params(mlp.norm, dtype),
        "fc2": (cast(mlp.fc2.weight), cast(mlp.fc2.bias)),
    }


def block_inference(block: EvaBlock, packed: dict, x: Tensor, num_queries: int | None = None) -> Tensor:
    """One EVA block without RoPE, as ``EvaBlock.forward`` computes it, on packed weights.

    Args:
        block: the block (norms, activation and layer scales are read from it).
        packed: :func:`pack_block` of it; its dtype is the dtype of the products.
        x: ``[B, T, D]`` float32 residual stream.
        num_queries: None updates every token. ``Q`` updates only the first ``Q`` tokens (they
            still attend to all ``T``) and returns ``[B, Q, D]``: the last block of an encoder
            that reads only the cls token needs ``Q = 1``, which skips the query, output and MLP
            products of the other tokens without changing the result.

    Returns:
        ``[B, T, D]`` (or ``[B, Q, D]``) float32.
    """
    b, t, d = x.shape
    weight, bias = packed["qkv"]
    heads = packed["heads"]
    h = F.layer_norm(x, (d,), block.norm1.weight, block.norm1.bias, block.norm1.eps).to(weight.dtype)
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
    if packed["attn_norm"] is not None:
        h = F.layer_norm(h, h.shape[-1:], *packed["attn_norm"])
    h = F.linear(h, *packed["proj"])
    x = x + (h if block.gamma_1 is None else block.gamma_1 * h)
    h = F.layer_norm(x, (d,), block.norm2.weight, block.norm2.bias, block.norm2.eps).to(weight.dtype)
    h = F.linear(h, *packed["fc1"])
    act = block.mlp.act
    if packed["gated"]:
        first, second = h.chunk(2, dim=-1)
        h = first * act(second) if packed["gate_last"] else act(first).mul_(second)
    else:
        h = act(h)
    if packed["mlp_norm"] is not None:
        h = F.layer_norm(h, h.shape[-1:], *packed["mlp_norm"])
    h = F.linear(h, *packed["fc2"])
    return x + (h if block.gamma_2 is None else block.gamma_2 * h)


@functools.lru_cache(maxsize=1)
def _compiled_block_inference():
    return torch.compile(block_inference, dynamic=False)


class GaussianEncoder(nn.Module):
    """Encode normalised Gaussians into the CLIP embedding space.

    ``features [B, N, 19]`` -> GS Tokenizer -> ``[cls; tokens] + [cls_pos; MLP(centres)]`` ->
    patch dropout (training only) -> EVA blocks (no RoPE) -> LayerNorm of the cls token ->
    linear head -> L2 normalisation -> ``[B, embed_dim]``.

    Parameter names follow Uni3D where a Uni3D counterpart exists (``cls_token``, ``cls_pos``,
    ``pos_embed.{0,2}``, ``blocks``, ``head`` = Uni3D ``trans2embed``).
    """

    def __init__(self, config: CLIPGSConfig):
        super().__init__()
        self.config = config
        self.tokenizer = GSTokenizer(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, config.width))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, config.width))
        self.patch_dropout = PatchDropout(config.patch_dropout)
        self.blocks = make_blocks(config)
        self.norm = LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.embed_dim)
        self.compile_blocks = False

    def set_compile(self, enabled: bool = True) -> GaussianEncoder:
        """Run the inference path's blocks through ``torch.compile`` (off by default).

        Optional: on 2 CPU cores it gains about 2-3% after a first call that compiles for ~20 s
        (a C++ compiler is needed on CPU). If compiling or running the compiled blocks fails (no
        compiler, unsupported platform), a warning is emitted once and the eager blocks are used.
        """
        self.compile_blocks = bool(enabled)
        return self

    def clear_inference_cache(self) -> None:
        """Drop the cached inference weights of every module (they are rebuilt on the next
        inference call). The cache holds about one copy of the weights per compute dtype used
        (packed q/k/v and gate/value matrices are copies even in float32)."""
        for module in self.modules():
            cache = getattr(module, "_derived", None)
            if isinstance(cache, DerivedWeights):
                cache.clear()

    def _apply(self, fn, recurse: bool = True):
        # .to() / .cuda() / .half() give the parameters new storage: drop the cached weights now
        # rather than keep the old copies alive until the next inference call.
        self.clear_inference_cache()
        return super()._apply(fn, recurse)

    def _run_block(self, block: EvaBlock, packed: dict, x: Tensor, num_queries: int | None) -> Tensor:
        if self.compile_blocks:
            try:
                return _compiled_block_inference()(block, packed, x, num_queries)
            except Exception as exc:  # any failure of the optional compiler: fall back, once
                warnings.warn(f"torch.compile of the encoder blocks failed; running eagerly: {exc}", stacklevel=3)
                self.compile_blocks = False
        return block_inference(block, packed, x, num_queries)

    def forward_features(self, features: Tensor, compute_dtype: torch.dtype | None = None) -> Tensor:
        """``features: [B, N, 19]`` -> cls feature after the final norm, ``[B, width]`` float32.

        ``compute_dtype=None`` runs the module path; a dtype runs the inference path in that dtype
        (eval mode without autograd only; see the module docstring).
        """
        if compute_dtype is not None:
            check_inference_mode(self)
        tokens, centers = self.tokenizer(features, compute_dtype=compute_dtype)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)
        x = self.patch_dropout(x + pos)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if compute_dtype is None:
                x = block(x)
            elif block_is_fusable(block):
                packed = block._derived.get(block, compute_dtype, lambda dt, blk=block: pack_block(blk, dt))
                # only the cls token of the last block is read
                x = self._run_block(block, packed, x, num_queries=1 if i == last else None)
            else:
                with autocast_for(x.device, compute_dtype):
                    x = block(x).float()
        return self.norm(x[:, 0].float())

    def forward(self, features: Tensor, normalize: bool = True, precision: str = "fp32") -> Tensor:
        """``features: [B, N, 19]`` -> embeddings ``[B, embed_dim]`` float32 (unit norm by default).

        Args:
            precision: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` (bf16 where the device
                multiplies it natively, see :func:`~clip_gs.model.precision.resolve_precision`).
                In eval mode without autograd the inference path runs in that precision; otherwise
                the module path, under ``torch.autocast`` for bf16.

        Raises:
            ConfigError: an unknown ``precision``.
        """
        dtype = resolve_precision(precision, features.device)
        if self.training or torch.is_grad_enabled():
            with autocast_for(features.device, dtype):
                embedding = self.head(self.forward_features(features))
            embedding = embedding.float()
        else:
            embedding = self.head(self.forward_features(features, compute_dtype=dtype))
        return F.normalize(embedding, dim=-1) if normalize else embedding
