"""``clip-gs fit|validate|test|predict --config FILE.yaml``: LightningCLI over
:class:`~clip_gs.lightning.CLIPGSModule` (``model:``) and :class:`~clip_gs.lightning.GaussianDataModule`
(``data:``), with the :class:`~clip_gs.lightning.export.ExportBest` callback under ``export:``.

Everything is typed from the classes' signatures (``--print_config`` prints a complete file).
``data.num_gaussians`` is linked to ``model.num_gaussians`` (set it under ``data:`` only); the
data module's ``scale_activation`` must equal the model configuration's (checked in ``setup``).
``predict`` embeds the test split and writes ``predictions.pt`` (``ids``, ``embeddings [M, E]``)
to the log directory, printing its path last.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LightningCLI

from clip_gs.lightning.datamodule import GaussianDataModule
from clip_gs.lightning.export import ExportBest
from clip_gs.lightning.module import CLIPGSModule

COMMANDS = ("fit", "validate", "test", "predict")


class CLIPGSCLI(LightningCLI):
    """LightningCLI with the export callback (``export:``) and the ``num_gaussians`` link."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportBest, "export")
        parser.link_arguments("data.num_gaussians", "model.num_gaussians")

    def before_predict(self) -> None:
        dm = self.datamodule
        if dm is not None and not hasattr(type(dm), "predict_dataloader_overridden"):
            dm.predict_dataloader = dm.test_dataloader  # predict = embed the test split

    def after_predict(self) -> None:
        outputs = self.trainer.predict_loop.predictions or []
        if outputs and isinstance(outputs[0], list):  # several dataloaders
            outputs = [o for per_loader in outputs for o in per_loader]
        ids = [i for o in outputs for i in o["ids"]]
        embeddings = torch.cat([o["embeddings"] for o in outputs]) if outputs else torch.zeros(0)
        folder = self.trainer.log_dir or self.trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "predictions.pt")
        torch.save({"ids": ids, "embeddings": embeddings}, path)
        print(os.path.abspath(path), flush=True)


def cli_main(args: Sequence[str] | None = None) -> int:
    """Run a LightningCLI subcommand (``args`` like ``sys.argv[1:]``); returns the exit status."""
    args = None if args is None or list(args) == sys.argv[1:] else list(args)  # None: LightningCLI reads sys.argv
    CLIPGSCLI(
        CLIPGSModule,
        GaussianDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        parser_kwargs={"prog": "clip-gs"},
    )
    return 0


__all__ = ["CLIPGSCLI", "COMMANDS", "cli_main"]
