"""The CLIP-GS training losses (pure torch; no Lightning).

Notation: ``B`` objects per rank, ``R`` ranks, ``E`` embedding width, ``K`` views per object and
step. All embeddings are L2-normalised here (the encoder's output already is; the teacher's
embeddings are re-normalised so the loss never depends on how they were stored).

``Contra(a_i, B) = log softmax_j (s * a_i . b_j)`` at ``j = i``: the InfoNCE log-probability of
the positive among the batch, with ``s = exp(logit_scale)`` (CLIP's init ``log(1/0.07)``). The
scale is kept at most :data:`MAX_LOGIT_SCALE` by clamping the *parameter* in place after every
optimiser step (:func:`clamp_logit_scale_`, as open_clip and Uni3D do), not by clamping ``s``
inside the loss: a clamp of the exponential has zero gradient above the cap, so a scale that
crossed it could never come down.

- **Text loss** (one-to-one, 3DGS ``G`` <-> captions ``T``):
  ``L_text = -1/(2 N_text) sum_i [Contra(G_i, T) + Contra(T_i, G)]``.
- **Image voting loss** (one-to-many, K views per object):
  ``L_img = -1/(2 N_img) sum_i sum_k a_ik [Contra(G_i, I_.k) + Contra(I_ik, G)]`` where the
  negatives of view ``k`` are the other objects' ``k``-th views, and the vote ``a_ik`` comes from
  ``S_ik = cos(teacher text of i, teacher image of view k of i)`` (a constant: no gradient).

  The voters (one rule for every mode): an object votes when it has a caption (``S`` is defined
  by its caption) and at least one real view. ``N_img`` counts the voters of the global batch.
  A non-voter's weights are 0 in every mode; its real views stay in the view softmaxes as
  negatives of the other objects (they are real renders), they are just never anchors.

  - ``"raw"`` (default, the paper's Eq. 4): ``a_ik = max(S_ik, 0) / K_i``, i.e. the S-weighted
    terms averaged over the object's ``K_i`` real views (``K_i = K`` when nothing is masked). The
    paper does not say what a negative ``S`` does; here it gives weight 0 (a negative weight
    would reward pushing an object away from its own render).
  - ``"softmax"``: ``a_ik = softmax_k(S_ik / temperature)`` over the object's real views.
  - ``"sum_to_one"``: ``a_ik = max(S_ik, 0) / sum_k max(S_ik, 0)`` (all zero if every S is <= 0;
    the object still counts in ``N_img``).

  With the two normalised forms the weights of a voter sum to 1 (an average over views);
  ``raw`` keeps the paper's absolute scale (CLIP text-image cosines are ~0.2-0.4, so ``L_img``
  is then smaller than ``L_text``).
- **Total**: ``L = text_weight * L_text + image_weight * L_img`` (both weights 1 by default).

Masks (never filled with defaults): an object without a caption (``text_mask`` False) is removed
from the text term as a row *and* a column (it is neither an anchor nor a negative); a missing
view ``k`` of object ``i`` (``image_mask[i, k]`` False) is removed from view ``k``'s softmaxes as
a row and a column. ``N_text`` = number of objects with a caption, ``N_img`` = number of voters
(above), both counted over the global batch (all ranks). A term with ``N = 0`` is 0 (kept in the
graph, so DDP sees every parameter used). Nothing here reads a tensor back to the host: the loss
adds no device synchronisation to a training step.

DDP (``world_size > 1``, see :class:`CLIPGSLoss`): features are gathered from every rank and the
positives of this rank's rows are at columns ``rank * B + i`` (the label offset).

- ``local_loss=False`` (default): the gathered features of *other* ranks carry no gradient; this
  rank's own features keep theirs. Every rank computes the full global loss (all ``R * B``
  rows), so the gradient reaching this rank's features is exact.
- ``local_loss=True``: the gather is differentiable (``torch.distributed.nn.functional.all_gather``,
  whose backward sums the gradients of all ranks), and each rank computes only its own ``B``
  rows: ``[B, R * B]`` logits instead of ``[R * B, R * B]``. The returned loss is this rank's
  share; the shares sum to the global loss.

Contract in both modes: the gradients of the ranks' returned losses *sum* to the gradient of the
global-batch loss, for the features and for ``logit_scale`` (in the default mode every rank
computes the whole loss, so the scale's gradient is divided by ``R`` on each rank; the value is
not). DDP *averages* gradients over ranks, so multiply the loss by ``world_size`` before
``backward`` to get exactly the single-process gradient of the global batch
(:class:`~clip_gs.lightning.CLIPGSModule` does; tested with 2 gloo processes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_gs.errors import ConfigError

SIMILARITY_NORMS = ("raw", "softmax", "sum_to_one")
"""How the voting weights are made from ``S`` (see the module docstring)."""

MAX_LOGIT_SCALE = 100.0
"""CLIP's cap of ``exp(logit_scale)`` (:func:`clamp_logit_scale_`)."""

Gather = Callable[[Tensor], Sequence[Tensor]]
"""``local [B, ...] -> R tensors [B, ...]`` in rank order (one per rank)."""


def logit_scale_value(logit_scale: Tensor) -> Tensor:
    """``s = exp(logit_scale)`` (1 / temperature) in float32, differentiable everywhere.

    Training keeps the parameter at most ``log(MAX_LOGIT_SCALE)`` with :func:`clamp_logit_scale_`
    after each optimiser step; every checkpoint the package writes therefore holds a capped scale.
    """
    return logit_scale.float().exp()


def clamp_logit_scale_(logit_scale: Tensor, max_scale: float = MAX_LOGIT_SCALE) -> Tensor:
    """Clamp the parameter in place to ``[0, log(max_scale)]`` (open_clip's rule: ``1 <= s <= max_scale``),
    without recording it in autograd; returns it. Call it after every optimiser step.

    Raises:
        ConfigError: ``max_scale < 1``.
    """
    if max_scale < 1:
        raise ConfigError(f"max_logit_scale must be >= 1, got {max_scale}")
    with torch.no_grad():
        return logit_scale.clamp_(0.0, math.log(max_scale))


def voting_weights(
    similarity: Tensor, image_mask: Tensor, text_mask: Tensor | None = None, mode: str = "raw", temperature: float = 0.1
) -> Tensor:
    """Voting weights ``a [B, K]`` from ``similarity S [B, K]``, ``image_mask [B, K]`` and ``text_mask [B]`` (no gradient).

    ``raw``: ``max(S, 0) / K_i``; ``softmax``: ``softmax_k(S / temperature)``; ``sum_to_one``:
    ``max(S, 0) / sum_k max(S, 0)``; all over the real views only (masked entries are 0), ``K_i``
    the number of real views of object ``i``. Objects without a caption (``text_mask`` False;
    None: all have one) get 0 everywhere (module docstring: the voters).

    Raises:
        ConfigError: an unknown ``mode`` or a non-positive temperature.
    """
    if mode not in SIMILARITY_NORMS:
        raise ConfigError(f"similarity_norm must be one of {SIMILARITY_NORMS}, got {mode!r}")
    s = similarity.detach().float()
    mask = image_mask.bool()
    if text_mask is not None:
        mask = mask & text_mask.bool().unsqueeze(1)
    zeros = torch.zeros_like(s)
    if mode == "raw":
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)
        return torch.where(mask, s.clamp(min=0), zeros) / count
    if mode == "softmax":
        if temperature <= 0:
            raise ConfigError(f"similarity_temperature must be > 0, got {temperature}")
        logits = (s / temperature).masked_fill(~mask, float("-inf"))
        logits = logits.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)  # no views: a finite row
        return torch.where(mask, logits.softmax(dim=1), zeros)
    positive = torch.where(mask, s.clamp(min=0), zeros)
    total = positive.sum(dim=1, keepdim=True)
    return torch.where(total > 0, positive / total.clamp(min=1e-12), zeros)


def contra(queries: Tensor, keys: Tensor, targets: Tensor, row_mask: Tensor, key_mask: Tensor, scale: Tensor) -> Tensor:
    """``Contra(q_r, keys)``: ``[..., Q]`` log-probabilities ``log softmax_c(scale * q_r . k_c)`` at ``c = targets[r]``.

    Args:
        queries: ``[..., Q, E]`` unit vectors (rows). keys: ``[..., C, E]`` unit vectors (columns).
        targets: ``[Q]`` long, the positive column of each row.
        row_mask: ``[..., Q]`` bool; masked rows give 0. key_mask: ``[..., C]`` bool; masked
            columns are left out of the softmax. A valid row's target column must be valid.
        scale: ``[]`` the logit scale ``s``.
    """
    logits = scale * queries @ keys.transpose(-1, -2)  # [..., Q, C]
    logits = logits.masked_fill(~key_mask.unsqueeze(-2), float("-inf"))
    logits = logits.masked_fill(~row_mask.unsqueeze(-1), 0.0)  # finite rows everywhere: no NaN in backward
    picked = logits.log_softmax(dim=-1).gather(-1, targets.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return torch.where(row_mask, picked, torch.zeros_like(picked))


@dataclass
class LossOutput:
    """What :class:`CLIPGSLoss` returns (all ``[]`` tensors).

    Attributes:
        loss: ``text_weight * text + image_weight * image`` (to backpropagate; see the module
            docstring for DDP).
        text: ``L_text``. image: ``L_img``.
        scale: the logit scale ``s`` used (detached).
        n_text / n_image: ``N_text`` / ``N_img`` of the global batch.
    """

    loss: Tensor
    text: Tensor
    image: Tensor
    scale: Tensor
    n_text: Tensor
    n_image: Tensor


def _differentiable_gather(x: Tensor) -> Sequence[Tensor]:
    import torch.distributed.nn.functional as dist_fn

    return dist_fn.all_gather(x)


def _plain_gather(x: Tensor) -> Sequence[Tensor]:
    import torch.distributed as dist

    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return out


class CLIPGSLoss(nn.Module):
    """``L = w_text L_text + w_img L_img`` over a (possibly distributed) batch; see the module docstring.

    Args:
        text_weight / image_weight: ``w_text`` / ``w_img`` (default 1, 1).
        similarity_norm: ``"raw"`` (default), ``"softmax"`` or ``"sum_to_one"``.
        similarity_temperature: temperature of ``"softmax"``.
        local_loss: DDP mode (module docstring): False, full loss on every rank with the other
            ranks' features detached; True, this rank's rows only, through a differentiable gather.

    Raises:
        ConfigError: invalid settings.
    """

    def __init__(
        self,
        text_weight: float = 1.0,
        image_weight: float = 1.0,
        similarity_norm: str = "raw",
        similarity_temperature: float = 0.1,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        if similarity_norm not in SIMILARITY_NORMS:
            raise ConfigError(f"similarity_norm must be one of {SIMILARITY_NORMS}, got {similarity_norm!r}")
        if similarity_temperature <= 0:
            raise ConfigError(f"similarity_temperature must be > 0, got {similarity_temperature}")
        if text_weight < 0 or image_weight < 0:
            raise ConfigError(f"loss weights must be >= 0, got text {text_weight}, image {image_weight}")
        self.text_weight, self.image_weight = float(text_weight), float(image_weight)
        self.similarity_norm, self.similarity_temperature = similarity_norm, float(similarity_temperature)
        self.local_loss = bool(local_loss)

    def forward(
        self,
        gaussians: Tensor,
        text: Tensor,
        text_mask: Tensor,
        images: Tensor,
        image_mask: Tensor,
        similarity: Tensor,
        logit_scale: Tensor,
        rank: int = 0,
        world_size: int = 1,
        gather: Gather | None = None,
    ) -> LossOutput:
        """Compute the losses.

        Args:
            gaussians: ``[B, E]`` 3DGS embeddings (with gradient). text: ``[B, E]``; text_mask: ``[B]``.
            images: ``[B, K, E]``; image_mask: ``[B, K]``; similarity: ``[B, K]`` (S, constant).
            logit_scale: ``[]`` the learnable log scale.
            rank / world_size: this process's place in the group (every rank has the same B).
            gather: ``local -> R tensors`` (rank order). None with ``world_size > 1``: the
                ``torch.distributed`` all-gather (differentiable when ``local_loss``). Tests pass
                a fake one to simulate ranks without a process group.
        """
        with torch.autocast(device_type=gaussians.device.type, enabled=False):
            return self._forward(
                gaussians, text, text_mask, images, image_mask, similarity, logit_scale, rank, world_size, gather
            )

    def _forward(self, g, t, t_mask, im, im_mask, sim, logit_scale, rank, world_size, gather) -> LossOutput:
        b = g.shape[0]
        g = F.normalize(g.float(), dim=-1)
        t = F.normalize(t.detach().float(), dim=-1)
        im = F.normalize(im.detach().float(), dim=-1)
        t_mask, im_mask = t_mask.bool(), im_mask.bool()
        weights = voting_weights(sim, im_mask, t_mask, self.similarity_norm, self.similarity_temperature)
        scale = logit_scale_value(logit_scale)
        if world_size > 1 and not self.local_loss:
            # every rank computes the whole loss: 1/R of the scale's gradient per rank keeps the
            # sum-over-ranks contract (module docstring); the value is unchanged
            scale = scale.detach() + (scale - scale.detach()) / world_size

        if world_size > 1:
            if gather is None:
                gather = _differentiable_gather if self.local_loss else _plain_gather

            def everywhere(x: Tensor, keep_grad: bool = False) -> Tensor:
                is_bool = x.dtype == torch.bool  # gloo gathers no bool tensors
                parts = [p.bool() if is_bool else p for p in gather(x.to(torch.uint8) if is_bool else x)]
                if len(parts) != world_size or any(p.shape != x.shape for p in parts):
                    raise ConfigError(
                        f"gather returned {[tuple(p.shape) for p in parts]}; expected {world_size} x {tuple(x.shape)} "
                        "(every rank needs the same batch size: drop_last)"
                    )
                if keep_grad and not self.local_loss:
                    parts[rank] = x  # this rank's features keep their gradient; the others' have none
                return torch.cat(parts, dim=0)

            all_g = everywhere(g, keep_grad=True)
            all_t, all_t_mask = everywhere(t), everywhere(t_mask)
            all_im, all_im_mask, all_w = everywhere(im), everywhere(im_mask), everywhere(weights)
        else:
            all_g, all_t, all_t_mask, all_im, all_im_mask, all_w = g, t, t_mask, im, im_mask, weights

        total = all_g.shape[0]
        if self.local_loss and world_size > 1:
            rows = torch.arange(b, device=g.device) + rank * b  # label offset of this rank's rows
        else:
            rows = torch.arange(total, device=g.device)
        n_text = all_t_mask.sum()
        n_image = (all_im_mask.any(dim=1) & all_t_mask).sum()  # the voters

        # text term: rows `rows`, columns: every object with a caption
        row_t = all_t_mask[rows]
        lp = contra(all_g[rows], all_t, rows, row_t, all_t_mask, scale) + contra(
            all_t[rows], all_g, rows, row_t, all_t_mask, scale
        )
        text_loss = -lp.sum() / (2 * n_text.clamp(min=1))

        # image voting term, one softmax per view k: [K, rows, E] vs [K, total, E]
        views_q = all_im[rows].transpose(0, 1)  # [K, Q, E]
        views_k = all_im.transpose(0, 1)  # [K, C, E]
        row_i = all_im_mask[rows].transpose(0, 1)  # [K, Q]
        col_i = all_im_mask.transpose(0, 1)  # [K, C]
        lp_img = contra(all_g[rows].unsqueeze(0), views_k, rows, row_i, col_i, scale) + contra(
            views_q, all_g.unsqueeze(0), rows, row_i, col_i, scale
        )  # [K, Q]
        image_loss = -(all_w[rows].transpose(0, 1) * lp_img).sum() / (2 * n_image.clamp(min=1))

        # an empty term is exactly 0 (every masked row is 0) and still in the graph: no host check needed
        loss = self.text_weight * text_loss + self.image_weight * image_loss
        return LossOutput(loss, text_loss, image_loss, scale.detach(), n_text, n_image)


__all__ = [
    "MAX_LOGIT_SCALE",
    "SIMILARITY_NORMS",
    "CLIPGSLoss",
    "Gather",
    "LossOutput",
    "clamp_logit_scale_",
    "contra",
    "logit_scale_value",
    "voting_weights",
]
