"""``clip-gs fit|validate|test|predict --config FILE.yaml``: LightningCLI over
:class:`~clip_gs.lightning.CLIPGSModule` (``model:``) and :class:`~clip_gs.lightning.GaussianDataModule`
(``data:``), with the :class:`~clip_gs.lightning.export.ExportBest` callback under ``export:``.

Everything is typed from the classes' signatures (``--print_config`` prints a complete file).
``data.num_gaussians`` is linked to ``model.config.num_gaussians`` (set it under ``data:`` only);
the data module's ``scale_activation`` must equal the model configuration's (checked in ``setup``).
Two callbacks are always there: Lightning's ``ThroughputMonitor`` (``train/samples_per_sec``,
``train/device/samples_per_sec``, ... over a window of :data:`THROUGHPUT_WINDOW` steps) and the
:class:`~clip_gs.lightning.predictions.PredictionsWriter` of ``predict``.
``fit`` then tests the best checkpoint on the test split (``--test-after-fit false`` skips it),
prints the test zero-shot accuracy next to the teacher's own on the same objects and the test
recall, adds them to the export's ``metrics.json``, prints the wall time of each stage (prepare,
train, export, test), and prints the export folder as its last line.
``predict`` embeds the test split (the data module's ``predict_dataloader``) and writes
``predictions.pt`` (``ids``, ``embeddings [M, E]``) to the log directory, printing its path last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.cli import LightningCLI

from clip_gs.lightning.datamodule import GaussianDataModule
from clip_gs.lightning.export import ExportBest
from clip_gs.lightning.module import CLIPGSModule
from clip_gs.lightning.predictions import PredictionsWriter
from clip_gs.hub.folder import METRICS_NAME

THROUGHPUT_WINDOW = 10
"""Steps over which ``ThroughputMonitor`` averages (its first figures appear after this many steps)."""


class CLIPGSCLI(LightningCLI):
    """LightningCLI with the export callback (``export:``) and the ``num_gaussians`` link."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportBest, "export")
        parser.link_arguments("data.num_gaussians", "model.config.num_gaussians")
        parser.add_argument(
            "--test-after-fit", type=bool, default=True,  # dest and config key: test_after_fit
            help="fit: after training, test the best checkpoint on the test split (when the data has one)",
        )  # fmt: skip

    def before_fit(self) -> None:
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        """Test the best checkpoint on the test split, print the summary and the stage times, and
        print the export folder as the last line of output (``fit`` only)."""
        fit_seconds = time.perf_counter() - self._fit_start
        prepare = getattr(self.datamodule, "prepare_seconds", 0.0)  # read now: testing runs prepare_data again
        test_start = time.perf_counter()
        export = next((cb for cb in self.trainer.callbacks if isinstance(cb, ExportBest)), None)
        manifest = getattr(self.datamodule, "manifest", None)
        has_test = manifest is not None and manifest.counts.get("test", 0) > 0
        if self.config[self.subcommand].get("test_after_fit", True) and has_test:
            best = export.best_model_path if export is not None and export.best_model_path else None
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
            metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
            if self.trainer.is_global_zero:
                print(format_test_summary(metrics, manifest.counts["test"]), flush=True)
                if export is not None and export.export_path is not None:
                    record_test_metrics(export.export_path, metrics, best)
        test_seconds = time.perf_counter() - test_start if has_test else None
        if self.trainer.is_global_zero:
            stages = {"prepare": prepare, "train": fit_seconds - prepare - getattr(export, "export_seconds", 0.0),
                      "export": getattr(export, "export_seconds", None), "test": test_seconds}  # fmt: skip
            print(format_stage_times(stages, time.perf_counter() - self._fit_start), flush=True)
        if export is not None and export.export_path is not None and self.trainer.is_global_zero:
            print(str(Path(export.export_path).resolve()), flush=True)

    def after_predict(self) -> None:
        writer = next((cb for cb in self.trainer.callbacks if isinstance(cb, PredictionsWriter)), None)
        if writer is not None and writer.path is not None:
            print(str(writer.path), flush=True)


def format_stage_times(stages: dict[str, float | None], total: float) -> str:
    """One line with the wall time of each stage that ran (None: it did not) and the total."""

    def clock(seconds: float) -> str:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"

    parts = [f"{name} {clock(seconds)}" for name, seconds in stages.items() if seconds is not None]
    return f"time: {', '.join(parts)}; total {clock(total)}"


def format_test_summary(metrics: dict[str, float], num_objects: int) -> str:
    """Lines for the end of ``fit``: the model's test zero-shot against the teacher's, and test recall."""
    lines = [f"test split ({num_objects} objects):"]
    if "test/zeroshot_top1" in metrics:
        model, teacher = metrics["test/zeroshot_top1"], metrics.get("test/teacher_zeroshot_top1")
        line = f"  zero-shot top-1 {model:.1%} (top-5 {metrics.get('test/zeroshot_top5', float('nan')):.1%})"
        if teacher:
            line += f"; the teacher on the same objects' views {teacher:.1%}: ratio {model / teacher:.2f}"
        lines.append(line)
    recall = [f"{name} R@{k} {metrics[f'test/{name}_r{k}']:.1%}" for name in ("text_to_3d", "3d_to_text")
              for k in (1, 5) if f"test/{name}_r{k}" in metrics]  # fmt: skip
    if recall:
        lines.append("  " + ", ".join(recall))
    return "\n".join(lines)


def record_test_metrics(folder: str | os.PathLike, metrics: dict[str, float], checkpoint: str | None) -> None:
    """Add the test metrics to the export's ``metrics.json`` (:data:`~clip_gs.hub.folder.METRICS_NAME`, under ``"test"``)."""
    path = Path(folder) / METRICS_NAME
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["test"] = {"metrics": metrics, "checkpoint": checkpoint}
    path.write_text(json.dumps(record, indent=2) + "\n")


def cli_main(args: Sequence[str] | None = None) -> int:
    """Run a LightningCLI subcommand (``args`` like ``sys.argv[1:]``); returns the exit status."""
    args = None if args is None or list(args) == sys.argv[1:] else list(args)  # None: LightningCLI reads sys.argv
    always = [ThroughputMonitor(batch_size_fn=len, window_size=THROUGHPUT_WINDOW), PredictionsWriter()]
    CLIPGSCLI(
        CLIPGSModule,
        GaussianDataModule,
        trainer_defaults={"callbacks": always},
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        parser_kwargs={"prog": "clip-gs"},
    )
    return 0


__all__ = ["CLIPGSCLI", "cli_main", "format_stage_times"]
