"""Training: CLIPGSModule (learning, optimiser groups, schedule, NaN stop), the export, the CLI and the configs.

The datasets are written here with a learnable signal: class ``c`` is a synthetic shape in a
class colour; its captions and views embed as a fixed random unit vector ``v_c`` plus small noise,
and the label embeddings are the ``v_c``. A model that learns maps each object near its class vector.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import yaml

from clip_gs import CLIPGS
from clip_gs.data.shards import write_label_embeddings, write_split
from clip_gs.data.synthetic import SHAPE_CLASSES, make_object
from clip_gs.data.triplets import Manifest, TripletSample
from clip_gs.errors import TrainingError
from clip_gs.lightning import CLIPGSModule, ExportBest, GaussianDataModule, lr_factor, param_groups
from clip_gs.lightning.module import layer_id, retrieval_recall

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
E = 16
N_STORED, N = 256, 256
CLASSES = ("sphere", "cube", "torus", "cone")
COLOURS = ("red", "green", "blue", "yellow")
TEACHER = "fake:training-test"
TINY = dict(model="clip-gs-tiny", num_gaussians=N, num_groups=16, group_size=16, embed_dim=E,
            config_overrides={"depth": 2})  # fmt: skip


def class_vectors(seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(len(CLASSES), E, generator=torch.Generator().manual_seed(seed)), dim=-1)


def learnable_sample(i: int, vectors: torch.Tensor, views: int = 3) -> TripletSample:
    c = i % len(CLASSES)
    obj = make_object(CLASSES[c], seed=i, num_gaussians=N_STORED, color=COLOURS[c], pattern="solid")
    gen = torch.Generator().manual_seed(5000 + i)
    text = F.normalize(vectors[c] + 0.1 * torch.randn(1, E, generator=gen), dim=-1)
    images = F.normalize(vectors[c] + 0.3 * torch.randn(views, E, generator=gen), dim=-1)
    return TripletSample(
        id=f"obj-{i:04d}", source=f"synthetic:{i}", cloud=obj.cloud, captions=(f"a {COLOURS[c]} {CLASSES[c]}",),
        label=CLASSES[c], text_embeddings=text, image_embeddings=images,
        viewmats=torch.eye(4).expand(views, 4, 4).clone(), Ks=torch.eye(3).expand(views, 3, 3).clone(),
    )  # fmt: skip


def write_learnable_dataset(root: Path, n_train: int, n_val: int, n_test: int = 0) -> Path:
    vectors = class_vectors()
    counts = {"train": n_train, "val": n_val, "test": n_test}
    start = 0
    for split, count in counts.items():
        if count:
            samples = [learnable_sample(i, vectors) for i in range(start, start + count)]
            write_split((s.to_record() for s in samples), root / split, chunk_bytes="64KB")
        start += count
    labels = sorted(CLASSES)
    Manifest(teacher=TEACHER, embed_dim=E, counts=counts, labels=labels).write(root)
    write_label_embeddings(root, labels, vectors[[CLASSES.index(label) for label in labels]], TEACHER, ["{}"])
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_learnable_dataset(tmp_path_factory.mktemp("learnable"), 48, 16, 8)


def make_dm(root, **kw) -> GaussianDataModule:
    args = dict(batch_size=16, num_workers=0, num_gaussians=N, views_per_step=3, augment=False, seed=0)
    return GaussianDataModule(root=str(root), **(args | kw))


def make_trainer(tmp_path, **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, max_steps=40, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path), val_check_interval=None, check_val_every_n_epoch=1)  # fmt: skip
    return pl.Trainer(**(args | kw))


def evaluate(module, dm, tmp_path) -> dict:
    trainer = make_trainer(tmp_path)
    return trainer.validate(module, datamodule=dm, verbose=False)[0]


# ---------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_a_few_dozen_steps_learn(dataset, tmp_path):
    """Loss goes down; zero-shot and retrieval rise clearly above chance (1/4); a detached branch would not."""
    pl.seed_everything(0)
    module = CLIPGSModule(**TINY, lr=2e-3, warmup_steps=3, weight_decay=0.05)
    dm = make_dm(dataset)
    before = evaluate(module, dm, tmp_path)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = make_trainer(tmp_path, max_steps=36, callbacks=[Record()])
    trainer.fit(module, datamodule=dm)
    after = evaluate(module, dm, tmp_path)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print("losses", [round(x, 3) for x in losses], "before", before, "after", after)
    assert last < first - 0.5, (first, last)
    assert after["val/zeroshot_top1"] >= 0.75 > before["val/zeroshot_top1"] + 0.2
    assert after["val/3d_to_text_r5"] >= 0.6 and after["val/text_to_3d_r5"] >= 0.6
    assert after["val/loss"] < before["val/loss"] - 0.5
