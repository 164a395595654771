"""Export of a trained model as a Hub-ready folder: :class:`ExportBest` and :func:`export_pretrained`.

``ExportBest`` is a ``ModelCheckpoint`` (default: the best checkpoint by ``val/zeroshot_top1``,
mode ``max``; with extra validation sets e.g. ``val_lvis/zeroshot_top1``) that, at the end of ``fit``, writes the best checkpoint's weights with
``CLIPGS.save_pretrained`` to ``export_dir`` (default ``<log dir>/export``) and keeps its path in
``export_path`` (``clip-gs fit`` prints it as the last line of output). The folder::

    config.json          CLIPGSConfig (``CLIPGS.from_pretrained(folder)`` loads it offline)
    model.safetensors    the weights (the encoder and the logit scale)
    teacher.json         the teacher identity of the training data (from the dataset manifest)
    README.md            model card (clip_gs.hub.card.folder_card): config, data, validation metrics
    curves.png           training loss and validation metrics over steps (PIL drawing)
    metrics.json         the best checkpoint's validation metrics (every set: val/, val_<name>/), the checkpoint, the training data
                         (root, counts, labels, init) and the history behind curves.png

``clip-gs eval`` adds ``eval/report.json``; ``clip-gs push`` regenerates the card with it. The export's own card
has no evaluation: it describes new weights, which no report describes yet (an earlier ``eval/`` is removed).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from clip_gs.hub.card import folder_card
from clip_gs.hub.folder import CARD_NAME, CURVES_NAME, EVAL_DIR, METRICS_NAME, write_teacher_json
from clip_gs.model.clipgs import CLIPGS
from clip_gs.model.folder import card_teacher_spec
from clip_gs.state_dicts import load_state_dict_strict


def plot_curves(history: dict[str, list[tuple[int, float]]], path: str | os.PathLike) -> Path:
    """Draw one panel per series (``name -> [(step, value)]``) into a PNG with PIL; returns the path."""
    from PIL import Image, ImageDraw

    names = [n for n, points in history.items() if points]
    width, panel, margin = 720, 200, 48
    image = Image.new("RGB", (width, max(1, len(names)) * panel), "white")
    draw = ImageDraw.Draw(image)
    if not names:
        draw.text((10, 10), "no curves recorded", fill="black")
    for row, name in enumerate(names):
        points = history[name]
        top = row * panel
        x0, y0, x1, y1 = margin + 20, top + 24, width - 16, top + panel - 28
        draw.rectangle([x0, y0, x1, y1], outline="black")
        steps = [p[0] for p in points]
        values = [p[1] for p in points]
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1e-9
        s_lo, s_hi = min(steps), max(steps)
        s_hi = s_hi if s_hi > s_lo else s_lo + 1

        coords = [
            (x0 + (x1 - x0) * (step - s_lo) / (s_hi - s_lo), y1 - (y1 - y0) * (value - lo) / (hi - lo))
            for step, value in points
        ]
        if len(coords) > 1:
            draw.line(coords, fill=(31, 119, 180), width=2)
        for c in coords if len(coords) <= 40 else coords[-1:]:
            draw.ellipse([c[0] - 2, c[1] - 2, c[0] + 2, c[1] + 2], fill=(31, 119, 180))
        draw.text((x0, top + 6), f"{name}  (last {values[-1]:.4g})", fill="black")
        draw.text((4, y0), f"{hi:.3g}", fill="black")
        draw.text((4, y1 - 10), f"{lo:.3g}", fill="black")
        draw.text((x0, y1 + 4), f"step {s_lo}", fill="black")
        draw.text((x1 - 80, y1 + 4), f"step {s_hi}", fill="black")
    path = Path(path)
    image.save(path)
    return path


def training_keys(datamodule) -> Tensor | None:
    """The keys of the training split of ``datamodule``'s dataset (its ``keys.safetensors``,
    :mod:`clip_gs.data.holdout`); None when the dataset has none (prepared before they were written)."""
    from clip_gs.data.holdout import read_dataset_keys

    root = getattr(datamodule, "dataset_root", None)
    keys = None if root is None else read_dataset_keys(root, getattr(datamodule, "storage_options", None))
    return None if keys is None else keys.get("train")


def export_pretrained(
    model: CLIPGS,
    folder: str | os.PathLike,
    teacher: dict | None = None,
    metrics: dict | None = None,
    history: dict | None = None,
    data: dict | None = None,
    checkpoint: str | None = None,
    training_keys: Tensor | None = None,
) -> Path:
    """Write the Hub-ready folder (see the module docstring) for ``model``; returns it.

    Args:
        model: the trained model (its weights are written as they are).
        teacher: teacher identity (``teacher``, ``embed_dim``, ...) for ``teacher.json``.
        metrics: validation metrics of these weights (``name -> value``).
        history: ``name -> [(step, value)]`` for ``curves.png``.
        data: what the model was trained on (``root``, ``counts``, ``labels``) for the card.
        checkpoint: the Lightning checkpoint the weights come from (recorded in the card).
        training_keys: the keys of the objects the model trained on (:func:`training_keys`), written as
            ``training_ids.safetensors`` so that ``clip-gs eval`` can report an overlap; None: not known.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / EVAL_DIR  # a `clip-gs eval` report of earlier weights: it must not reach a card or a push
    if stale.is_dir():
        shutil.rmtree(stale)
    model.save_pretrained(folder)
    write_teacher_json(folder, teacher or {})
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    record = {"metrics": metrics, "checkpoint": checkpoint, "data": data or {}, "history": history or {}}
    (folder / METRICS_NAME).write_text(json.dumps(record, indent=2) + "\n")
    plot_curves(history or {}, folder / CURVES_NAME)
    if training_keys is not None:
        from clip_gs.data.holdout import write_training_ids

        write_training_ids(folder, training_keys, dataset=str((data or {}).get("root", "")))
    folder_card(folder, teacher_spec=card_teacher_spec((teacher or {}).get("teacher"))).save(folder / CARD_NAME)
    return folder


def weights_from_checkpoint(path: str | os.PathLike, like: CLIPGS) -> CLIPGS:
    """A :class:`CLIPGS` with ``like``'s config and the ``model.*`` weights of a CLIPGSModule checkpoint."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=False)  # our own file
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model = CLIPGS(like.config)
    load_state_dict_strict(model, state, str(path))
    return model


class ExportBest(ModelCheckpoint):
    """Keeps the best checkpoint by ``monitor`` and exports it at the end of fit (module docstring).

    Args:
        export_dir: where the Hub-ready folder goes (default ``<trainer.log_dir>/export``).
        monitor / mode: what "best" is (default ``val/zeroshot_top1``, ``max``). Without any
            validation, the final weights are exported. A tie goes to the later checkpoint (the
            same score after more training; accuracies over a few hundred objects tie often),
            where Lightning's ``ModelCheckpoint`` keeps the earlier one.
        dirpath, filename, save_last, save_top_k, every_n_train_steps, every_n_epochs: as
            ``ModelCheckpoint``. For resumable step-interval checkpoints add a second, plain
            ``ModelCheckpoint(save_last=True, save_top_k=0, every_n_train_steps=...)`` under
            ``trainer.callbacks``: Lightning defers a monitored checkpoint's step saves until the
            monitored metric exists (after validation).
    """

    def __init__(
        self,
        export_dir: str | None = None,
        monitor: str | None = "val/zeroshot_top1",
        mode: str = "max",
        dirpath: str | None = None,
        filename: str | None = None,
        save_last: bool | None = None,
        save_top_k: int = 1,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
    ) -> None:
        super().__init__(
            dirpath=dirpath, filename=filename, monitor=monitor, mode=mode, save_last=save_last,
            save_top_k=save_top_k, every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs,
        )  # fmt: skip
        self.export_dir = export_dir
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.evaluations: list[dict] = []
        self.export_path: Path | None = None

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        """``ModelCheckpoint``'s rule with ``>=`` / ``<=`` instead of ``>`` / ``<``: ties go to the later checkpoint."""
        if current is None or self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return super().check_monitor_top_k(trainer, current)
        monitor_op = {"min": torch.le, "max": torch.ge}[self.mode]
        better = monitor_op(current, self.best_k_models[self.kth_best_model_path])
        return trainer.strategy.reduce_boolean_decision(bool(better))

    # history for the curves (kept in the checkpoint, so a resumed run keeps its curves)
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        value = trainer.callback_metrics.get("train/loss")
        if value is not None:
            self.history.setdefault("train/loss", []).append((int(trainer.global_step), float(value)))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.split("/")[0].startswith("val")}
            self.evaluations.append({"step": int(trainer.global_step), "metrics": metrics})
            for name, value in metrics.items():
                if "zeroshot" in name or "_r1" in name or name == "val/loss":
                    self.history.setdefault(name, []).append((int(trainer.global_step), value))
        super().on_validation_end(trainer, pl_module)

    def state_dict(self) -> dict:
        return super().state_dict() | {"history": self.history, "evaluations": self.evaluations}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict.pop("history", {}).items()}
        self.evaluations = list(state_dict.pop("evaluations", []))
        super().load_state_dict(state_dict)

    def on_fit_end(self, trainer, pl_module) -> None:
        start = time.perf_counter()
        best = self.best_model_path if self.best_model_path and os.path.isfile(self.best_model_path) else None
        folder = Path(self.export_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "export"))
        if trainer.is_global_zero:
            model = weights_from_checkpoint(best, pl_module.model) if best else pl_module.model
            metrics = self._metrics_of(best)
            dm = getattr(trainer, "datamodule", None)
            manifest = getattr(dm, "manifest", None)
            teacher = {"teacher": getattr(pl_module, "teacher", None)}
            data = {}
            if manifest is not None:
                teacher |= {"embed_dim": manifest.embed_dim, "dataset_package_version": manifest.package_version}
                data = {"root": dm.root, "counts": manifest.counts, "labels": manifest.labels}
            hparams = getattr(pl_module, "hparams", {})
            data["init"] = f"`{hparams.get('model', 'n/a')}`" + (
                f" from `{hparams['pretrained']}`" if hparams.get("pretrained") else ""
            )
            self.export_path = export_pretrained(
                model.cpu() if best else _cpu_copy(model),
                folder,
                teacher,
                metrics,
                self.history,
                data,
                best,
                training_keys(dm),
            )
        trainer.strategy.barrier()
        self.export_path = folder  # `clip-gs fit` prints it as its last line of output
        self.export_seconds = time.perf_counter() - start

    def _metrics_of(self, best: str | None) -> dict:
        if not self.evaluations:
            return {}
        if best is None or self.monitor is None:
            return self.evaluations[-1]["metrics"]
        score = float(self.best_model_score) if self.best_model_score is not None else None
        for entry in self.evaluations:
            if score is not None and entry["metrics"].get(self.monitor) == score:
                return entry["metrics"]
        return self.evaluations[-1]["metrics"]


def _cpu_copy(model: CLIPGS) -> CLIPGS:
    copy = CLIPGS(model.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return copy


__all__ = ["ExportBest", "export_pretrained", "plot_curves", "weights_from_checkpoint"]
