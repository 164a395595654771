"""``CLIPGSModule``: the LightningModule that trains a :class:`~clip_gs.model.CLIPGS` with :class:`~clip_gs.model.loss.CLIPGSLoss`.

A thin wrapper: the model's module path (``CLIPGS.forward``, never ``fused()``) runs under
Lightning's precision plugin (``Trainer(precision="bf16-mixed")`` autocasts it; the loss itself
runs in float32), the loss is :mod:`clip_gs.model.loss`, the optimiser is AdamW with layer-wise
learning-rate decay (:func:`param_groups`) and a per-step linear warm-up + cosine schedule
(:func:`lr_factor`). Gradient clipping is the Trainer's ``gradient_clip_val`` (by global norm;
Uni3D uses 5.0).

Logged every training step (``train/...``): ``loss``, ``loss_text``, ``loss_image``,
``logit_scale`` (``exp``, i.e. 1/temperature), ``lr`` (the base learning rate after the schedule,
what the head receives), ``objects_per_s`` (global batch / time from the previous step's start
to this one's), ``data_wait_s`` (time from the end of the previous step to the start of this one:
waiting for the loader). Validation / test (``val/...``, ``test/...``): the losses,
``zeroshot_top1/3/5`` over the split's labelled objects against the dataset's label embeddings
(``label_embeddings.bin``; top-k is capped at the number of labels), and 3D <-> text recall
``3d_to_text_r1/r5``, ``text_to_3d_r1/r5`` over the objects with a caption (each object's evaluation
caption, its first (the most specific), against every other object of the split;
embeddings gathered over the epoch and across ranks), and ``teacher_zeroshot_top1``, the teacher's
own zero-shot accuracy on the views of the same objects (the reference for ``zeroshot_top1``).

All ``__init__`` arguments are plain types, so LightningCLI configures the module from YAML.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from clip_gs.data.batches import TripletBatch
from clip_gs.errors import ConfigError, DatasetError, TrainingError
from clip_gs.evaluation.metrics import ZEROSHOT_K, retrieval_recall
from clip_gs.model.clipgs import CLIPGS, LOAD_TIME_OVERRIDES
from clip_gs.model.config import UNI3D_SIZES, get_model_config
from clip_gs.model.loss import CLIPGSLoss, LossOutput

INITS = ("random", "uni3d", "pretrained")
"""How the model is built: a registered configuration with random weights, a Uni3D checkpoint, a pretrained folder / repo."""

NO_DECAY_NAMES = ("cls_token", "cls_pos", "order_scale", "order_shift", "logit_scale")
"""Parameters (by final name) without weight decay, besides every parameter with fewer than 2
dimensions (norm weights, biases, EVA's ``q_bias``/``v_bias``)."""

RECALL_K = (1, 5)
"""Recall@k logged by validation (:func:`~clip_gs.evaluation.metrics.retrieval_recall`, the one implementation)."""


def layer_id(name: str, depth: int) -> int:
    """Layer of a ``CLIPGS`` parameter for layer-wise lr decay: 0 for the tokenizer and embeddings
    (``encoder.tokenizer``, ``cls_token``, ``cls_pos``, ``pos_embed``), ``i + 1`` for
    ``encoder.blocks.i``, ``depth + 1`` for the rest (final ``norm``, ``head``, ``logit_scale``)."""
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("encoder.tokenizer.", "encoder.cls_token", "encoder.cls_pos", "encoder.pos_embed.")):
        return 0
    return depth + 1


def param_groups(model: CLIPGS, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay.

    Layer ``l`` (:func:`layer_id`, of ``L + 2`` for ``L = depth`` blocks) gets
    ``lr * layer_decay ** (L + 1 - l)``: the tokenizer / embeddings ``layer_decay ** (L + 1)``,
    block ``i`` ``layer_decay ** (L - i)``, the final norm, head and logit scale 1. Weight decay
    ``weight_decay`` except for parameters with ``ndim < 2`` and :data:`NO_DECAY_NAMES` (0).

    Returns:
        groups with ``params``, ``names``, ``lr``, ``initial_lr``, ``lr_scale``, ``weight_decay``, ``layer``.
    """
    depth = model.config.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        decay = param.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault(
            (layer, decay),
            {"params": [], "names": [], "lr": lr * scale, "initial_lr": lr * scale, "lr_scale": scale,
             "weight_decay": weight_decay if decay else 0.0, "layer": layer},
        )  # fmt: skip
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Schedule multiplier at optimiser step ``step`` (0-based): linear warm-up ``(step + 1) / warmup_steps``
    for ``step < warmup_steps``, then cosine from 1 to ``min_lr_ratio`` at ``total_steps`` (and after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(
    model: str, init: str, checkpoint: str | None, overrides: dict, trusted_globals: Iterable[str] = ()
) -> CLIPGS:
    """A :class:`CLIPGS` from a registered name + overrides (``random``), a Uni3D checkpoint
    (``uni3d``: ``checkpoint`` a path or ``hf://`` reference, None for the published one of the
    size of ``model``), or a pretrained folder / Hub repo (``pretrained``: only
    :data:`~clip_gs.model.clipgs.LOAD_TIME_OVERRIDES` may be overridden).

    Raises:
        ConfigError: unknown ``init``, or overrides ``pretrained`` cannot apply.
    """
    if init not in INITS:
        raise ConfigError(f"init must be one of {INITS}, got {init!r}")
    if init == "random":
        return CLIPGS.from_config_name(model, **overrides)
    if init == "uni3d":
        size = {v: k for k, v in UNI3D_SIZES.items()}.get(model)
        if size is None:
            raise ConfigError(f"init='uni3d' needs a Uni3D-sized model ({list(UNI3D_SIZES.values())}), got {model!r}")
        return CLIPGS.from_uni3d(checkpoint, size=size, trusted_globals=tuple(trusted_globals), **overrides)
    if checkpoint is None:
        raise ConfigError("init='pretrained' needs checkpoint: a folder written by save_pretrained or a Hub repo id")
    bad = sorted(set(overrides) - set(LOAD_TIME_OVERRIDES))
    if bad:
        raise ConfigError(f"init='pretrained' can only override {list(LOAD_TIME_OVERRIDES)}, got {bad}")
    return CLIPGS.from_pretrained(checkpoint, **overrides).train()


class CLIPGSModule(LightningModule):
    """Trains a CLIP-GS encoder on :class:`~clip_gs.lightning.TripletBatch` es (see the module docstring).

    Args:
        model: registered configuration name (``clip-gs-tiny`` ... ``clip-gs-giant``).
        init: ``"random"``, ``"uni3d"`` (the paper: from a Uni3D checkpoint) or ``"pretrained"``.
        checkpoint: the Uni3D checkpoint (path or ``hf://BAAI/Uni3D/...``; None: the published one
            for the size) or the pretrained folder / repo id.
        num_gaussians, num_groups, group_size, drop_path_rate, patch_dropout, embed_dim: config
            overrides (None: the configuration's value). ``num_gaussians`` is linked to the data
            module's by ``clip-gs fit``.
        config_overrides: any other :class:`~clip_gs.model.config.CLIPGSConfig` fields.
        trusted_globals: passed to ``CLIPGS.from_uni3d`` (explicit opt-in for pickled objects).
        text_weight, image_weight, similarity_norm, similarity_temperature, local_loss: the loss
            (:class:`~clip_gs.model.loss.CLIPGSLoss`).
        lr, weight_decay, layer_decay, betas, eps: AdamW with layer-wise lr decay (Uni3D: 1e-3,
            0.1, 0.95).
        warmup_steps: linear warm-up steps (Uni3D: 10,000). min_lr_ratio: the cosine's floor.
        total_steps: schedule length; None takes ``trainer.estimated_stepping_batches``.
    """

    def __init__(
        self,
        model: str = "clip-gs-tiny",
        init: str = "random",
        checkpoint: str | None = None,
        num_gaussians: int | None = None,
        num_groups: int | None = None,
        group_size: int | None = None,
        drop_path_rate: float | None = None,
        patch_dropout: float | None = None,
        embed_dim: int | None = None,
        config_overrides: dict | None = None,
        trusted_globals: list[str] | None = None,
        text_weight: float = 1.0,
        image_weight: float = 1.0,
        similarity_norm: str = "raw",
        similarity_temperature: float = 0.1,
        local_loss: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        layer_decay: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        warmup_steps: int = 10_000,
        min_lr_ratio: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        overrides = dict(config_overrides or {})
        named = {"num_gaussians": num_gaussians, "num_groups": num_groups, "group_size": group_size,
                 "drop_path_rate": drop_path_rate, "patch_dropout": patch_dropout, "embed_dim": embed_dim}  # fmt: skip
        overrides.update({k: v for k, v in named.items() if v is not None})
        if init == "random":
            get_model_config(model, **overrides)  # validate early, with the package's message
        self.model = build_model(model, init, checkpoint, overrides, trusted_globals or ())
        self.loss = CLIPGSLoss(
            text_weight, image_weight, similarity_norm, similarity_temperature, local_loss=local_loss
        )
        if warmup_steps < 0 or not 0 <= min_lr_ratio <= 1 or lr <= 0:
            raise ConfigError(
                f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1 (got {lr}, {warmup_steps}, {min_lr_ratio})"
            )
        self.label_names: list[str] = []
        self.register_buffer("label_embeddings", torch.zeros(0), persistent=False)
        self._eval: dict[str, list] = {}
        self._metrics = nn.ModuleDict()
        self._step_end: float | None = None
        self._step_start: float | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Check the data against the model and read the label embeddings (``label_embeddings.bin``)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "dataset_root"):
            return
        config = self.model.config
        if getattr(dm, "num_gaussians", config.num_gaussians) != config.num_gaussians:
            raise ConfigError(f"data.num_gaussians {dm.num_gaussians} != model num_gaussians {config.num_gaussians}")
        if getattr(dm, "scale_activation", config.scale_activation) != config.scale_activation:
            raise ConfigError(
                f"data.scale_activation {dm.scale_activation!r} != the model's {config.scale_activation!r} (set both)"
            )
        manifest = getattr(dm, "manifest", None)
        if manifest is None:
            from clip_gs.data.shards import read_manifest

            manifest = read_manifest(dm.dataset_root, dm.storage_options)
        if manifest.embed_dim != config.embed_dim:
            raise ConfigError(
                f"{dm.dataset_root}: teacher {manifest.teacher!r} embeds in {manifest.embed_dim} dimensions but the "
                f"model's embed_dim is {config.embed_dim} (set model.embed_dim)"
            )
        self.teacher = manifest.teacher
        if manifest.labels:
            from clip_gs.data.shards import read_label_embeddings

            try:
                labels, embeddings, _ = read_label_embeddings(dm.dataset_root, dm.storage_options)
            except DatasetError as exc:
                raise DatasetError(f"zero-shot validation needs the label embeddings: {exc}") from exc
            if list(labels) != list(manifest.labels):
                raise DatasetError(f"{dm.dataset_root}: label_embeddings.bin labels differ from the manifest's")
            self.label_names = list(labels)
            self.label_embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1).to(self.device)
        else:
            rank_zero_warn(f"{dm.dataset_root}: the dataset has no labels; no zero-shot metrics will be logged")
        num_classes = len(self.label_names)
        if num_classes and not len(self._metrics):
            for split in ("val", "test"):
                for k in ZEROSHOT_K:
                    self._metrics[f"{split}_top{k}"] = MulticlassAccuracy(
                        num_classes=num_classes, top_k=min(k, num_classes), average="micro", ignore_index=-1
                    )

    # ------------------------------------------------------------------ running
    def forward(self, features: Tensor) -> Tensor:
        """``features [B, N, 19]`` -> ``[B, embed_dim]`` unit vectors (the module path)."""
        return self.model(features)

    def compute_loss(
        self, batch: TripletBatch, embeddings: Tensor, rank: int | None = None, world_size: int | None = None
    ) -> LossOutput:
        """The loss of ``embeddings [B, E]`` (this rank's) against the batch's targets; ``rank`` /
        ``world_size`` default to the trainer's (0 / 1 without one)."""
        attached = self._trainer is not None
        world = world_size if world_size is not None else (self.trainer.world_size if attached else 1)
        rank = rank if rank is not None else (self.trainer.global_rank if attached else 0)
        return self.loss(
            embeddings, batch.text, batch.text_mask, batch.images, batch.image_mask, batch.similarity,
            self.model.logit_scale, rank=rank, world_size=world,
        )  # fmt: skip

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        self._data_wait = None if self._step_end is None else now - self._step_end
        self._cycle = None if self._step_start is None else now - self._step_start
        self._step_start = now

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._step_end = time.perf_counter()

    def training_step(self, batch: TripletBatch, batch_idx: int) -> Tensor:
        out = self.compute_loss(batch, self(batch.features))
        self._check_finite(out, batch, batch_idx)
        b = len(batch)
        log = {"on_step": True, "on_epoch": False, "batch_size": b}
        world = self.trainer.world_size
        # local_loss: this rank's share (the shares sum to the global loss); otherwise the global loss
        share = world if self.loss.local_loss else 1
        self.log("train/loss", out.loss * share, prog_bar=True, sync_dist=world > 1, **log)
        self.log("train/loss_text", out.text * share, sync_dist=world > 1, **log)
        self.log("train/loss_image", out.image * share, sync_dist=world > 1, **log)
        self.log("train/logit_scale", out.scale, **log)
        self.log("train/lr", self.optimizers().param_groups[-1]["lr"] if self._trainer is not None else 0.0, **log)
        if getattr(self, "_data_wait", None) is not None:
            self.log("train/data_wait_s", self._data_wait, **log)
        if getattr(self, "_cycle", None):
            self.log("train/objects_per_s", b * world / self._cycle, **log)
        # DDP averages gradients over ranks: x world gives the single-process gradient of the global batch
        return out.loss * world

    def _check_finite(self, out: LossOutput, batch: TripletBatch, batch_idx: int) -> None:
        if not torch.isfinite(out.loss):
            ids = list(batch.ids)
            shown = ids if len(ids) <= 32 else ids[:32] + [f"... {len(ids) - 32} more"]
            raise TrainingError(
                f"non-finite training loss {out.loss.item()} (text {out.text.item()}, image {out.image.item()}, "
                f"logit scale {out.scale.item()}) at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}, rank {self.global_rank}); batch ids: {shown}"
            )

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, split: str, batch: TripletBatch) -> None:
        embeddings = self(batch.features)
        out = self.compute_loss(batch, embeddings)
        log = {"on_step": False, "on_epoch": True, "batch_size": len(batch), "sync_dist": self.trainer.world_size > 1}
        self.log(f"{split}/loss", out.loss, **log)
        self.log(f"{split}/loss_text", out.text, **log)
        self.log(f"{split}/loss_image", out.image, **log)
        if self.label_names:
            logits = embeddings.float() @ self.label_embeddings.T
            for k in ZEROSHOT_K:
                metric = self._metrics[f"{split}_top{k}"]
                metric.update(logits, batch.labels)
                self.log(f"{split}/zeroshot_top{k}", metric, on_step=False, on_epoch=True, batch_size=len(batch))
            self._log_teacher_zero_shot(split, batch)
        store = self._eval.setdefault(split, [])
        store.append((embeddings.detach().float(), batch.text.float(), batch.text_mask))

    def _log_teacher_zero_shot(self, split: str, batch: TripletBatch) -> None:
        """``{split}/teacher_zeroshot_top1``: the teacher's own zero-shot top-1 on the same objects,
        from the stored image embeddings of their rendered views against the same label embeddings
        (every view of a labelled object counts once; the mean is over views). The reference that
        the model's ``zeroshot_top1`` is compared with."""
        valid = batch.image_mask & (batch.labels >= 0).unsqueeze(1)  # [B, K]
        count = int(valid.sum())
        if not count:
            return
        predicted = (batch.images.float() @ self.label_embeddings.T).argmax(dim=-1)  # [B, K]
        hits = ((predicted == batch.labels.unsqueeze(1)) & valid).sum().float() / count
        log = {"on_step": False, "on_epoch": True, "batch_size": count, "sync_dist": self.trainer.world_size > 1}
        self.log(f"{split}/teacher_zeroshot_top1", hits, **log)

    def validation_step(self, batch: TripletBatch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: TripletBatch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: TripletBatch, batch_idx: int) -> dict:
        """``{"ids": B ids, "embeddings": [B, E] float32 on the CPU}``."""
        return {"ids": list(batch.ids), "embeddings": self(batch.features).float().cpu()}

    def on_validation_epoch_end(self) -> None:
        self._log_recall("val")

    def on_test_epoch_end(self) -> None:
        self._log_recall("test")

    def _log_recall(self, split: str) -> None:
        stored = self._eval.pop(split, [])
        if not stored:
            return
        g = torch.cat([s[0] for s in stored])
        t = torch.cat([s[1] for s in stored])
        mask = torch.cat([s[2] for s in stored])
        if self.trainer.world_size > 1:
            g, t = (self.all_gather(x).flatten(0, 1) for x in (g, t))
            mask = self.all_gather(mask.to(torch.uint8)).flatten(0, 1).bool()
        recalls = retrieval_recall(g, t, mask, RECALL_K)
        for name, value in recalls.items():
            self.log(f"{split}/{name}", value, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        h = self.hparams
        groups = param_groups(self.model, h.lr, h.weight_decay, h.layer_decay)
        for g in groups:
            g.pop("names")
        # torch's fused AdamW kernel (CPU and CUDA): about 4x faster per step than the for-loop form on
        # clip-gs-base on CPU (benchmarks/bench_train_step.py), the same update
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in self.model.parameters())
        optimizer = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas), eps=h.eps, fused=fused)
        total = h.total_steps
        if total is None:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ConfigError("set trainer.max_steps (or max_epochs with a sized loader) or model.total_steps")
        total = int(total)
        warmup, floor = h.warmup_steps, h.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


__all__ = [
    "INITS",
    "NO_DECAY_NAMES",
    "CLIPGSModule",
    "build_model",
    "layer_id",
    "lr_factor",
    "param_groups",
    "retrieval_recall",
]
