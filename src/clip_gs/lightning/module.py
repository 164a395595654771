"""``CLIPGSModule``: the LightningModule that trains a :class:`~clip_gs.model.CLIPGS` with :class:`~clip_gs.model.loss.CLIPGSLoss`.

A thin wrapper: the model's module path (``CLIPGS.forward``, never ``fused()``) runs under
Lightning's precision plugin (``Trainer(precision="bf16-mixed")`` autocasts it; the loss itself
runs in float32), the loss is :mod:`clip_gs.model.loss`, the optimiser is AdamW with layer-wise
learning-rate decay over the transformer blocks and a per-step linear warm-up + cosine schedule
(:mod:`clip_gs.lightning.optim`). After every optimiser step the logit scale is
clamped in place to ``[0, log(max_logit_scale)]`` (:func:`~clip_gs.model.loss.clamp_logit_scale_`).
Gradient clipping is the Trainer's ``gradient_clip_val`` (by global norm; Uni3D uses 5.0).
Throughput is Lightning's ``ThroughputMonitor`` (``clip-gs fit`` adds it), not timers of our own.

Logged every training step (``train/...``): ``loss``, ``loss_text``, ``loss_image``,
``logit_scale`` (``exp``, i.e. 1/temperature), ``lr`` (the base learning rate after the schedule,
what the head receives). A training step reads nothing back to the host on an accelerator: the
finiteness of the loss is checked every ``finite_check_every`` steps from flags kept on the
device (every step on the CPU, where checking costs nothing), and a non-finite loss stops
training naming the first bad step and its batch's ids.

Validation / test, for every evaluation set (``val`` and ``test``: the training dataset's splits;
``val_<name>``: each extra validation set of the data module, see
:class:`~clip_gs.lightning.GaussianDataModule`): the losses, ``zeroshot_top1/3/5`` over the set's
labelled objects against *its* label embeddings (``label_embeddings.bin``; top-k capped at the
number of labels; ties go to the lower class index, the rule of
:func:`~clip_gs.evaluation.ranking.class_ranks`, as ``clip-gs eval`` counts them), 3D <-> text recall
``3d_to_text_r{k}``, ``text_to_3d_r{k}`` for :data:`~clip_gs.evaluation.metrics.RECALL_K` over the
objects with a caption (each object's first caption, against every other object of the set;
embeddings gathered over the epoch and across ranks), and ``teacher_zeroshot_top1``, the
teacher's own zero-shot accuracy on the views of the same objects (the reference for
``zeroshot_top1``; it depends only on the stored data, so it is computed once per set, on the
first full evaluation, and logged again from then on).

At ``setup`` the module lists the metric names it will log and refuses (``ConfigError``) a
checkpoint callback whose ``monitor`` is not among them, before any training step (e.g.
``val/zeroshot_top1`` on an unlabelled dataset such as Objaverse without LVIS).

All ``__init__`` arguments are typed, so LightningCLI validates them from YAML.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from clip_gs.data.batches import TripletBatch
from clip_gs.errors import ConfigError, DatasetError, TrainingError
from clip_gs.evaluation.metrics import RECALL_K, ZEROSHOT_K, retrieval_recall
from clip_gs.evaluation.ranking import class_ranks
from clip_gs.lightning.optim import build_optimizer
from clip_gs.model.config import ConfigOverrides, as_overrides
from clip_gs.model.factory import create_model
from clip_gs.model.loss import MAX_LOGIT_SCALE, CLIPGSLoss, LossOutput, clamp_logit_scale_
from clip_gs.teachers import DEFAULT_TEACHER

UNI3D_TEACHER = DEFAULT_TEACHER.split("/")[0]
"""The CLIP Uni3D's checkpoints were trained against (EVA02-E-14-plus): starting from Uni3D's weights
warns on another."""

NO_OVERRIDES = ConfigOverrides()
"""The default of ``CLIPGSModule(config=...)``: the registered configuration as it is (frozen, shared)."""


@dataclass
class EvalSet:
    """One evaluation set of a run: its metric prefix (``val``, ``test``, ``val_<name>``), dataset
    root, class names and unit label embeddings ``[C, E]`` (empty without labels)."""

    prefix: str
    root: str
    labels: list[str]
    label_embeddings: Tensor


class CLIPGSModule(LightningModule):
    """Trains a CLIP-GS encoder on :class:`~clip_gs.lightning.TripletBatch` es (see the module docstring).

    Args:
        model, pretrained: what :func:`~clip_gs.model.create_model` makes the model from: a registered
            configuration (``clip-gs-tiny`` ... ``clip-gs-giant``), random unless ``pretrained`` names the
            weights to start from (the paper: ``model: clip-gs-base, pretrained: uni3d-b-no-lvis``, or a
            Uni3D ``model.pt`` / ``hf://`` reference); or a model folder / Hub repo / named pretrained
            model to go on training (``pretrained`` None).
        config: typed overrides of the configuration (:data:`~clip_gs.model.config.ConfigOverrides`:
            any ``CLIPGSConfig`` field, e.g. ``num_groups``, ``group_size``, ``drop_path_rate``,
            ``embed_dim``). ``num_gaussians`` is linked to the data module's by ``clip-gs fit``. A model
            loaded from a folder takes only :data:`~clip_gs.model.clipgs.LOAD_TIME_OVERRIDES`.
        trusted_globals: for a Uni3D checkpoint holding other pickled objects, the explicit opt-in.
        text_weight, image_weight, similarity_norm, similarity_temperature, local_loss: the loss
            (:class:`~clip_gs.model.loss.CLIPGSLoss`).
        max_logit_scale: cap of ``exp(logit_scale)`` (CLIP: 100), applied to the parameter after
            every optimiser step.
        lr, weight_decay, layer_decay, betas, eps: AdamW with layer-wise lr decay (Uni3D: 1e-3,
            0.1, 0.95). ``betas`` (0.9, 0.999) and ``eps`` 1e-8 are Uni3D's optimiser rule for its point
            model (open_clip's defaults for a model whose name is not a ViT's; 0.98 is CLIP's ViT rule).
        warmup_steps: linear warm-up steps (Uni3D: 10,000). min_lr_ratio: the cosine's floor.
        total_steps: schedule length; None takes ``trainer.estimated_stepping_batches``.
        finite_check_every: on an accelerator, check the loss for NaN / Inf every this many steps
            (from flags kept on the device; the error names the first bad step). On the CPU
            every step is checked.
        max_uncaptioned_steps: a batch without any caption has no text term (and, with ``raw``
            voting, no image term: the loss is exactly 0). The first such step warns; this many in a
            row stop the run with a :class:`~clip_gs.errors.TrainingError` (a dataset whose
            captions never matched trains nothing). Read with the finiteness flags.
    """

    flops_per_batch: int | None = None
    """Read by Lightning's ``ThroughputMonitor`` (None: no FLOP figures; the monitor warns without the attribute)."""

    def __init__(
        self,
        model: str = "clip-gs-tiny",
        pretrained: str | None = None,
        config: ConfigOverrides = NO_OVERRIDES,
        trusted_globals: list[str] | None = None,
        text_weight: float = 1.0,
        image_weight: float = 1.0,
        similarity_norm: str = "raw",
        similarity_temperature: float = 0.1,
        local_loss: bool = False,
        max_logit_scale: float = MAX_LOGIT_SCALE,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        layer_decay: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int = 10_000,
        min_lr_ratio: float = 0.0,
        total_steps: int | None = None,
        finite_check_every: int = 50,
        max_uncaptioned_steps: int = 100,
    ) -> None:
        super().__init__()
        overrides = as_overrides(config if not isinstance(config, Mapping) else dict(config)).as_dict()
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = dict(overrides)  # plain types in checkpoints (weights_only loading)
        self.model = create_model(model, pretrained=pretrained, trusted_globals=tuple(trusted_globals or ()),
                                  **overrides).train()  # fmt: skip
        self.loss = CLIPGSLoss(
            text_weight, image_weight, similarity_norm, similarity_temperature, local_loss=local_loss
        )
        if warmup_steps < 0 or not 0 <= min_lr_ratio <= 1 or lr <= 0:
            raise ConfigError(
                f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1 (got {lr}, {warmup_steps}, {min_lr_ratio})"
            )
        if max_logit_scale < 1 or finite_check_every < 1 or max_uncaptioned_steps < 1:
            raise ConfigError(f"need max_logit_scale >= 1, finite_check_every >= 1 and max_uncaptioned_steps >= 1, got "
                              f"{max_logit_scale}, {finite_check_every}, {max_uncaptioned_steps}")  # fmt: skip
        self.eval_sets: dict[str, EvalSet] = {}
        self._eval: dict[str, list] = {}
        self._zeroshot_counts: dict[str, Tensor] = {}  # prefix -> [hits at each of ZEROSHOT_K..., objects]
        self._teacher_top1: dict[str, float] = {}
        self._teacher_counts: dict[str, list[Tensor]] = {}
        self._pending: list[tuple] = []  # (step, batch_idx, ids, loss output, any caption in the batch)
        self._uncaptioned = 0  # consecutive steps without a caption in the batch

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Check the data against the model, read every evaluation set's label embeddings, and
        (``fit``) check that the checkpoint callbacks monitor a metric this run will log."""
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
        from clip_gs.data.shards import read_manifest

        manifest = getattr(dm, "manifest", None) or read_manifest(dm.dataset_root, dm.storage_options)
        self._check_width(dm.dataset_root, manifest)
        self.teacher = manifest.teacher
        if self.model.config.uni3d_model and UNI3D_TEACHER not in manifest.teacher:
            rank_zero_warn(f"the model starts from Uni3D, trained against {UNI3D_TEACHER}, but {dm.dataset_root} was "
                          f"prepared with {manifest.teacher}: the initial embedding space does not match the targets",
                          stacklevel=2)  # fmt: skip
        roots = (
            dm.evaluation_roots()
            if hasattr(dm, "evaluation_roots")
            else {"val": dm.dataset_root, "test": dm.dataset_root}
        )
        for prefix, root in roots.items():
            if prefix not in self.eval_sets:
                self.eval_sets[prefix] = self._read_eval_set(prefix, root, manifest, dm.storage_options)
        if stage == "fit":
            self.check_monitors(self.trainer.checkpoint_callbacks, roots)

    def _check_width(self, root: str, manifest) -> None:
        if manifest.embed_dim != self.model.config.embed_dim:
            raise ConfigError(
                f"{root}: teacher {manifest.teacher!r} embeds in {manifest.embed_dim} dimensions but the "
                f"model's embed_dim is {self.model.config.embed_dim} (set model.config.embed_dim)"
            )

    def _read_eval_set(self, prefix: str, root: str, train_manifest, storage_options) -> EvalSet:
        from clip_gs.data.shards import read_label_embeddings, read_manifest

        manifest = train_manifest if prefix in ("val", "test") else read_manifest(root, storage_options)
        self._check_width(root, manifest)
        if manifest.teacher != train_manifest.teacher:
            raise ConfigError(f"validation set {prefix!r} ({root}) was prepared with teacher {manifest.teacher!r}, "
                              f"the training data with {train_manifest.teacher!r}: their embeddings do not compare")  # fmt: skip
        if not manifest.labels:
            if prefix == "val":
                rank_zero_warn(f"{root}: the dataset has no labels; no zero-shot metrics will be logged for val/")
            return EvalSet(prefix, root, [], torch.zeros(0))
        try:
            labels, embeddings, _ = read_label_embeddings(root, storage_options)
        except DatasetError as exc:
            raise DatasetError(f"zero-shot validation ({prefix}) needs the label embeddings: {exc}") from exc
        if list(labels) != list(manifest.labels):
            raise DatasetError(f"{root}: label_embeddings.bin labels differ from the manifest's")
        return EvalSet(prefix, root, list(labels), torch.nn.functional.normalize(embeddings.float(), dim=-1))

    def metric_names(self, prefixes: Iterable[str]) -> list[str]:
        """Every metric name this module logs for the evaluation sets ``prefixes`` (read in ``setup``)
        and for training (the recall names are listed for every set; a set without captions logs none)."""
        names = [f"train/{n}" for n in ("loss", "loss_text", "loss_image", "logit_scale", "lr")]
        for prefix in prefixes:
            names += [f"{prefix}/{n}" for n in ("loss", "loss_text", "loss_image")]
            names += [f"{prefix}/{d}_r{k}" for d in ("3d_to_text", "text_to_3d") for k in RECALL_K]
            if self.eval_sets.get(prefix) is not None and self.eval_sets[prefix].labels:
                names += [f"{prefix}/zeroshot_top{k}" for k in ZEROSHOT_K] + [f"{prefix}/teacher_zeroshot_top1"]
        return names

    def check_monitors(self, callbacks: Iterable, prefixes: Iterable[str]) -> None:
        """Refuse a callback whose ``monitor`` this run never logs (before any step, not after the first validation).

        Raises:
            ConfigError: names the callback, the monitor and the metrics there will be.
        """
        names = self.metric_names(prefixes)
        for callback in callbacks:
            monitor = getattr(callback, "monitor", None)
            if monitor is not None and monitor not in names:
                unlabelled = [p for p in prefixes if p.startswith("val") and not self.eval_sets[p].labels]
                hint = (f" ({', '.join(unlabelled)}: no labels, so no zero-shot metrics; add a labelled extra "
                        "validation set, data.extra_val, and monitor its val_<name>/zeroshot_top1, or monitor "
                        "val/loss with mode min)") if unlabelled and "zeroshot" in monitor else ""  # fmt: skip
                raise ConfigError(f"{type(callback).__name__} monitors {monitor!r}, which this run never logs{hint}; "
                                  f"it logs: {', '.join(n for n in names if not n.startswith('test'))}")  # fmt: skip

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

    def training_step(self, batch: TripletBatch, batch_idx: int) -> Tensor:
        out = self.compute_loss(batch, self(batch.features))
        self._track_finite(out, batch, batch_idx)
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
        # DDP averages gradients over ranks: x world gives the single-process gradient of the global batch
        return out.loss * world

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The optimiser step, then the logit scale's clamp (module docstring)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        clamp_logit_scale_(self.model.logit_scale, self.hparams.max_logit_scale)

    def _track_finite(self, out: LossOutput, batch: TripletBatch, batch_idx: int) -> None:
        """Keep the step's finiteness flag on the device; check every ``finite_check_every`` steps (CPU: every step)."""
        self._pending.append((self.global_step, batch_idx, list(batch.ids), out, batch.text_mask.any()))
        if out.loss.device.type == "cpu" or len(self._pending) >= self.hparams.finite_check_every:
            self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`~clip_gs.errors.TrainingError` for the first pending step with a non-finite loss.

        Raises:
            TrainingError: names the step, epoch, batch, rank, the losses and the batch's ids.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        read = torch.stack([torch.stack([torch.isfinite(p[3].loss), p[4]]) for p in pending]).cpu()  # one read
        flags, captioned = read[:, 0], read[:, 1]
        for (step, _, ids, _, _), has_text in zip(pending, captioned.tolist()):
            self._uncaptioned = 0 if has_text else self._uncaptioned + 1
            if self._uncaptioned == 1:
                rank_zero_warn(f"training step {step}: no object of the batch has a caption, so the step has no text "
                              f"term (ids {ids[:8]}); check the dataset's caption coverage (manifest.json)",
                              stacklevel=2)  # fmt: skip
            if self._uncaptioned >= self.hparams.max_uncaptioned_steps:
                raise TrainingError(
                    f"{self._uncaptioned} training steps in a row (up to global step {step}) had no caption in the "
                    "batch: the text term is masked and the loss trains nothing. Were the captions matched? See "
                    "caption_coverage in the dataset's manifest.json (clip-gs prepare --captions)"
                )
        if bool(flags.all()):
            return
        step, batch_idx, ids, out, _ = pending[int((~flags.bool()).nonzero()[0])]
        shown = ids if len(ids) <= 32 else ids[:32] + [f"... {len(ids) - 32} more"]
        raise TrainingError(
            f"non-finite training loss {out.loss.item()} (text {out.text.item()}, image {out.image.item()}, "
            f"logit scale {out.scale.item()}) at global step {step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}, rank {self.global_rank}); batch ids: {shown}"
        )

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def on_validation_start(self) -> None:
        self.check_finite()  # never validate (or checkpoint) weights a pending NaN step has spoiled

    # ------------------------------------------------------------------ evaluation
    def _prefix(self, stage: str, dataloader_idx: int) -> str:
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, "val_prefixes", None) if stage == "val" else None
        return names[dataloader_idx] if names else stage

    def _eval_set(self, prefix: str) -> EvalSet | None:
        found = self.eval_sets.get(prefix)
        if found is not None and found.label_embeddings.device != self.device:
            found.label_embeddings = found.label_embeddings.to(self.device)
        return found

    def _eval_step(self, prefix: str, batch: TripletBatch) -> None:
        embeddings = self(batch.features)
        out = self.compute_loss(batch, embeddings)
        log = {"on_step": False, "on_epoch": True, "batch_size": len(batch), "sync_dist": self.trainer.world_size > 1,
               "add_dataloader_idx": False}  # fmt: skip
        self.log(f"{prefix}/loss", out.loss, **log)
        self.log(f"{prefix}/loss_text", out.text, **log)
        self.log(f"{prefix}/loss_image", out.image, **log)
        found = self._eval_set(prefix)
        if found is not None and found.labels:
            labelled = batch.labels >= 0
            scores = embeddings.float() @ found.label_embeddings.T  # [B, C]
            ranks = class_ranks(scores[labelled], batch.labels[labelled])
            counts = torch.stack([(ranks < min(k, len(found.labels))).sum() for k in ZEROSHOT_K] + [labelled.sum()])
            previous = self._zeroshot_counts.get(prefix)
            self._zeroshot_counts[prefix] = counts if previous is None else previous + counts  # summed on the device
            if prefix not in self._teacher_top1 and not self.trainer.sanity_checking:
                self._count_teacher_hits(prefix, batch, found)
        store = self._eval.setdefault(prefix, [])
        store.append((embeddings.detach().float(), batch.text.float(), batch.text_mask))

    def _count_teacher_hits(self, prefix: str, batch: TripletBatch, found: EvalSet) -> None:
        """Accumulate the teacher's own top-1 hits on the views of the labelled objects (every
        view counts once; the mean is over views) against the same label embeddings, with the same tie rule."""
        valid = batch.image_mask & (batch.labels >= 0).unsqueeze(1)  # [B, K]
        scores = batch.images.float()[valid] @ found.label_embeddings.T  # [V, C]
        targets = batch.labels.unsqueeze(1).expand_as(valid)[valid]
        hits = (class_ranks(scores, targets) == 0).sum() if len(targets) else torch.zeros((), device=self.device)
        counts = self._teacher_counts.setdefault(prefix, [torch.zeros((), device=self.device)] * 2)
        counts[0] = counts[0] + hits
        counts[1] = counts[1] + valid.sum()

    def validation_step(self, batch: TripletBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(self._prefix("val", dataloader_idx), batch)

    def test_step(self, batch: TripletBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(self._prefix("test", dataloader_idx), batch)

    def predict_step(self, batch: TripletBatch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``{"ids": B ids, "embeddings": [B, E] float32 on the CPU}``."""
        return {"ids": list(batch.ids), "embeddings": self(batch.features).float().cpu()}

    def on_validation_epoch_end(self) -> None:
        self._end_of_evaluation()

    def on_test_epoch_end(self) -> None:
        self._end_of_evaluation()

    def _end_of_evaluation(self) -> None:
        evaluated = list(self._eval)
        for prefix in evaluated:
            self._log_recall(prefix)
        for prefix, (hits, count) in list(self._teacher_counts.items()):
            if self.trainer.world_size > 1:
                hits, count = (self.all_gather(x).sum() for x in (hits, count))
            if int(count):
                self._teacher_top1[prefix] = float(hits) / float(count)
        self._teacher_counts.clear()
        for prefix, counts in list(self._zeroshot_counts.items()):
            if self.trainer.world_size > 1:
                counts = self.all_gather(counts).sum(dim=0)
            if int(counts[-1]):
                for k, hits in zip(ZEROSHOT_K, counts[:-1]):
                    self.log(f"{prefix}/zeroshot_top{k}", hits.float() / counts[-1], add_dataloader_idx=False)
        self._zeroshot_counts.clear()
        if self.trainer.sanity_checking:
            return
        for prefix in evaluated:
            if prefix in self._teacher_top1:
                self.log(f"{prefix}/teacher_zeroshot_top1", self._teacher_top1[prefix], add_dataloader_idx=False)

    def _log_recall(self, prefix: str) -> None:
        stored = self._eval.pop(prefix, [])
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
            self.log(f"{prefix}/{name}", value, on_step=False, on_epoch=True, add_dataloader_idx=False)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        h = self.hparams
        total = h.total_steps
        if total is None:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ConfigError("set trainer.max_steps (or max_epochs with a sized loader) or model.total_steps")
        optimizer, scheduler = build_optimizer(self.model, h.lr, h.betas, h.eps, h.weight_decay, h.layer_decay,
                                               h.warmup_steps, int(total), h.min_lr_ratio)  # fmt: skip
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


__all__ = ["CLIPGSModule", "EvalSet"]
