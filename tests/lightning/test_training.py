"""Training: CLIPGSModule (learning, optimiser groups, schedule, NaN stop), the export, the CLI and the configs.

The datasets are written here with a learnable signal: class ``c`` is a synthetic shape in a
class colour; its captions and views embed as a fixed random unit vector ``v_c`` plus small noise,
and the label embeddings are the ``v_c``. A model that learns maps each object near its class vector.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import yaml

from clip_gs import CLIPGS
from clip_gs.data.shards import write_split
from clip_gs.data.triplets import Manifest
from clip_gs.errors import TrainingError
from clip_gs.evaluation.metrics import retrieval_recall
from clip_gs.lightning import CLIPGSModule, ExportBest, GaussianDataModule, lr_factor, param_groups
from clip_gs.lightning.optim import layer_id
from tests.helpers import CLASSES, TEACHER, TINY, E, N, class_vectors, learnable_sample, write_learnable_dataset

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_learnable_dataset(tmp_path_factory.mktemp("learnable"), 48, 16, 8)


def make_dm(root, **kw) -> GaussianDataModule:
    args = {"batch_size": 16, "num_workers": 0, "num_gaussians": N, "views_per_step": 3, "augment": False, "seed": 0}
    return GaussianDataModule(root=str(root), **(args | kw))


def make_trainer(tmp_path, **kw) -> pl.Trainer:
    args = {"accelerator": "cpu", "devices": 1, "max_steps": 40, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "enable_checkpointing": False, "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path), "val_check_interval": None, "check_val_every_n_epoch": 1}  # fmt: skip
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

    trainer = make_trainer(tmp_path, max_steps=14, callbacks=[Record()])
    trainer.fit(module, datamodule=dm)
    after = evaluate(module, dm, tmp_path)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print("losses", [round(x, 3) for x in losses], "before", before, "after", after)
    assert last < first - 0.5, (first, last)
    assert after["val/zeroshot_top1"] >= 0.75 > before["val/zeroshot_top1"] + 0.2
    assert after["val/3d_to_text_r5"] >= 0.6 and after["val/text_to_3d_r5"] >= 0.6
    assert after["val/loss"] < before["val/loss"] - 0.5


# ---------------------------------------------------------------------------- optimiser and schedule
def tiny_module(config: dict | None = None, **kw) -> CLIPGSModule:
    return CLIPGSModule(**(TINY | kw | {"config": TINY["config"] | (config or {})}))


def test_param_groups_weight_decay_and_layer_decay():
    module = tiny_module(config={"depth": 3})
    groups = param_groups(module.model, lr=1e-3, weight_decay=0.1, layer_decay=0.5)
    by_name = {name: g for g in groups for name in g["names"]}
    assert set(by_name) == {n for n, _ in module.model.named_parameters()}  # every parameter, once
    no_decay = {n for n, g in by_name.items() if g["weight_decay"] == 0.0}
    for name in (
        "logit_scale",
        "encoder.cls_token",
        "encoder.cls_pos",
        "encoder.norm.weight",
        "encoder.head.bias",
        "encoder.blocks.0.norm1.weight",
        "encoder.blocks.0.attn.q_bias",
        "encoder.tokenizer.gaussian_encoder.order_scale",
        "encoder.tokenizer.gaussian_encoder.order_shift",
    ):
        assert name in no_decay, name
    for name in ("encoder.head.weight", "encoder.blocks.1.mlp.fc1.weight", "encoder.pos_embed.0.weight"):
        assert by_name[name]["weight_decay"] == 0.1, name
    # depth 3: block i -> 0.5^(3 - i); everything else at the full rate (Uni3D's rule): the tokenizer, the
    # new Gaussian branch, the embeddings, the head, the final norm and the logit scale
    expected = {"encoder.tokenizer.point_proj.weight": 1.0, "encoder.cls_token": 1.0, "encoder.pos_embed.2.bias": 1.0,
                "encoder.tokenizer.gaussian_encoder.order_scale": 1.0,
                "encoder.blocks.0.attn.proj.weight": 0.5**3, "encoder.blocks.2.mlp.fc2.weight": 0.5**1,
                "encoder.norm.weight": 1.0, "encoder.head.weight": 1.0, "logit_scale": 1.0}  # fmt: skip
    for name, scale in expected.items():
        assert by_name[name]["lr_scale"] == pytest.approx(scale), name
        assert by_name[name]["lr"] == pytest.approx(1e-3 * scale), name
    assert layer_id("encoder.blocks.2.norm1.weight", 3) == 3 and layer_id("encoder.head.weight", 3) == 4


def test_warmup_then_cosine_schedule():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(4, 10, 110) == pytest.approx(0.5)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(110, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(500, 10, 110, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    # the module's optimiser follows it, per group, per step
    module = tiny_module(lr=1e-3, layer_decay=0.9, warmup_steps=4, total_steps=20)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step" and isinstance(optimizer, torch.optim.AdamW)
    head = optimizer.param_groups[-1]
    seen = []
    for _ in range(12):
        seen.append(head["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-3 * 0.25) and seen[3] == pytest.approx(1e-3)
    assert seen[11] == pytest.approx(1e-3 * lr_factor(11, 4, 20))
    deepest = optimizer.param_groups[0]
    assert deepest["lr"] == pytest.approx(1e-3 * 0.9**2 * lr_factor(12, 4, 20))  # depth 2: block 0 -> 0.9^2


# ---------------------------------------------------------------------------- metrics
def test_retrieval_recall_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    t = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, True, False])
    r = retrieval_recall(g, t, mask, ks=(1, 2))
    # cosines g_i . t_j: g0 [.995, 1, 0]; g1 [.0995, 0, 1]; g2 [.774, .707, .707] (object 3 has no caption: left out)
    # 3D->text ranks of the own caption: g0 1, g1 2, g2 2 (the tie at .707 counts against it)
    assert r["3d_to_text_r1"].item() == pytest.approx(0.0)
    assert r["3d_to_text_r2"].item() == pytest.approx(1 / 3)
    # text->3D (columns): t0 [.995, .0995, .774] rank 0; t1 [1, 0, .707] rank 2; t2 [0, 1, .707] rank 1
    assert r["text_to_3d_r1"].item() == pytest.approx(1 / 3)
    assert r["text_to_3d_r2"].item() == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- the temperature
def test_the_logit_scale_comes_down_after_crossing_the_cap(dataset, tmp_path):
    """Started above ln 100, the scale is clamped to the cap by the first step and then moves down
    (the loss has a gradient there). With the old clamp of ``exp`` it stayed up for good."""
    module = tiny_module(warmup_steps=1, lr=1e-2)
    with torch.no_grad():
        module.model.logit_scale.fill_(math.log(100.0) + 1.0)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(pl_module.model.logit_scale.item())

    make_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[Record()]).fit(
        module, datamodule=make_dm(dataset)
    )
    cap = math.log(100.0)
    assert all(v <= cap + 1e-6 for v in seen), seen
    assert seen[-1] < cap - 1e-3 and seen[-1] < seen[0], seen  # it came down from the cap


# ---------------------------------------------------------------------------- NaN stop
def test_nan_loss_stops_with_the_step_and_ids(dataset, tmp_path):
    module = tiny_module()
    with torch.no_grad():
        module.model.logit_scale.fill_(float("nan"))
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    with pytest.raises(TrainingError, match=r"non-finite training loss nan .*global step 0 .*batch ids: \['obj-"):
        trainer.fit(module, datamodule=make_dm(dataset, shuffle=False))


def test_a_run_whose_batches_have_no_caption_warns_then_stops(tmp_path):
    """Uncaptioned data (a captions file that never matched) masks the text term: the first such step
    warns, ``max_uncaptioned_steps`` in a row stop the run instead of training on a zero loss for days."""
    import dataclasses

    vectors = class_vectors()
    samples = [dataclasses.replace(learnable_sample(i, vectors), captions=(), text_embeddings=torch.zeros(0, E), label=None)
               for i in range(32)]  # fmt: skip
    write_split((s.to_record() for s in samples), tmp_path / "data" / "train", chunk_bytes="64KB")
    write_split((s.to_record() for s in samples[:8]), tmp_path / "data" / "val", chunk_bytes="64KB")
    Manifest(teacher=TEACHER, embed_dim=E, counts={"train": 32, "val": 8, "test": 0}, labels=[]).write(
        tmp_path / "data"
    )
    module = CLIPGSModule(**TINY, warmup_steps=1, max_uncaptioned_steps=3)
    trainer = make_trainer(tmp_path, max_steps=10, limit_val_batches=0)
    with pytest.warns(UserWarning, match="training step 0: no object of the batch has a caption"):
        with pytest.raises(TrainingError, match=r"3 training steps in a row \(up to global step 2\) had no caption"):
            trainer.fit(module, datamodule=make_dm(tmp_path / "data", shuffle=False))


# ---------------------------------------------------------------------------- export
def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_fit_exports_the_best_checkpoint_as_a_hub_folder(dataset, tmp_path, capsys):
    pl.seed_everything(1)
    module = tiny_module(warmup_steps=1)
    export = ExportBest(export_dir=str(tmp_path / "export"), dirpath=str(tmp_path / "ckpt"))
    trainer = make_trainer(
        tmp_path, max_steps=3, enable_checkpointing=True, callbacks=[export]
    )  # 1 epoch, 1 validation
    trainer.fit(module, datamodule=make_dm(dataset))
    folder = tmp_path / "export"
    assert export.export_path == folder and str(folder) not in capsys.readouterr().out  # `clip-gs fit` prints it
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "model.safetensors", "teacher.json", "README.md", "curves.png", "metrics.json"]
    )
    assert (
        export.best_model_path and "val/zeroshot_top1" in json.loads((folder / "metrics.json").read_text())["metrics"]
    )
    assert json.loads((folder / "teacher.json").read_text())["teacher"] == TEACHER
    card = (folder / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "clip-gs" and "{{" not in card and "zeroshot_top1" in card
    from PIL import Image

    assert Image.open(folder / "curves.png").size[0] == 720
    loaded = CLIPGS.from_pretrained(str(folder), local_files_only=True)
    dm = make_dm(dataset)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    module.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(batch.features), module(batch.features), atol=1e-5)
    assert loaded.logit_scale.item() == pytest.approx(module.model.logit_scale.item())
    # the folder is also a starting point for further training: model.model=FOLDER
    again = CLIPGSModule(model=str(folder), config={"num_gaussians": N}).eval()
    with torch.no_grad():
        assert torch.allclose(again(batch.features), module(batch.features), atol=1e-5)


# ---------------------------------------------------------------------------- command line and configs
@pytest.mark.parametrize("name", ["quickstart", "paper"])
def test_print_config_of_the_examples(name, capsys):
    from clip_gs.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "examples" / "configs" / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        "num_gaussians" not in printed["model"]["config"] and printed["data"]["num_gaussians"] > 0
    )  # linked from data
    assert set(printed) >= {"trainer", "model", "data", "export", "seed_everything"}


def test_paper_config_builds_with_its_uni3d_init(tmp_path):
    """The paper's configuration as written (clip-gs-base from ``uni3d-b-no-lvis``), with only the
    checkpoint pointed at a local Uni3D-B-format file (the published one cannot be downloaded here):
    the transformer holds the checkpoint's weights."""
    from clip_gs.model.config import get_model_config
    from tests.uni3d_reference import Uni3DPointEncoderReference

    config = yaml.safe_load((REPO / "examples" / "configs" / "paper.yaml").read_text())
    assert config["model"]["model"] == "clip-gs-base" and config["model"]["pretrained"] == "uni3d-b-no-lvis"
    torch.manual_seed(0)
    reference = Uni3DPointEncoderReference(get_model_config("clip-gs-base"))
    checkpoint = tmp_path / "uni3d-b.pt"
    torch.save(reference.uni3d_state_dict(), checkpoint)
    del reference
    model_args = config["model"] | {"pretrained": str(checkpoint),
                                    "config": config["model"]["config"] | {"num_gaussians": config["data"]["num_gaussians"]}}  # fmt: skip
    module = CLIPGSModule(**model_args)
    c = module.model.config
    assert (c.name, c.num_gaussians, c.num_groups, c.group_size, c.embed_dim) == ("clip-gs-base", 10_000, 512, 64, 1024)
    assert (c.drop_path_rate, c.patch_dropout) == (0.2, 0.5)
    saved = torch.load(checkpoint, weights_only=True)["module"]
    block = next(k for k in saved if k.endswith("blocks.3.mlp.fc2.weight"))
    assert torch.equal(module.model.state_dict()["encoder.blocks.3.mlp.fc2.weight"], saved[block])  # Uni3D's weights
    h = module.hparams
    assert (h.lr, h.weight_decay, h.layer_decay, h.warmup_steps) == (1e-3, 0.1, 0.95, 2_500)
    assert tuple(h.betas) == (0.9, 0.999) and h.eps == 1e-8  # Uni3D's optimiser rule
    dm = GaussianDataModule(**config["data"])
    assert dm.views_per_step == 5 and dm.batch_size == 48
    steps = {type(step).__name__: step for step in dm.augmentation.transforms}
    assert set(steps) == {
        "RandomRotation",
        "RandomScale",
        "RandomTranslation",
        "ColorDrop",
    }  # Uni3D's, colour drop included
    assert (steps["ColorDrop"].p, steps["ColorDrop"].grey) == (0.5, 0.4)
    assert config["export"]["monitor"].startswith("val/")  # chosen on the training data's own split
    t = config["trainer"]
    assert (t["devices"], t["strategy"], t["precision"], t["gradient_clip_val"]) == (8, "ddp", "bf16-mixed", 5.0)
    assert t["max_steps"] == 25_000 and "max_epochs" not in t  # a stated step budget


def paper_shaped_config(tmp_path: Path, checkpoint: Path, train: Path, extras: dict[str, Path], steps: int) -> dict:
    """``paper.yaml`` as a researcher runs it, scaled to a CPU test: the same keys and recipe
    (from Uni3D's weights, the resume callback, extra validation sets, the export monitor), with a
    tiny model, one CPU process and fp32."""
    config = yaml.safe_load((REPO / "examples" / "configs" / "paper.yaml").read_text())
    config["trainer"] |= {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": 32, "max_steps": steps,
                          "log_every_n_steps": 1, "default_root_dir": str(tmp_path / "run"), "logger": False,
                          "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
    config["trainer"]["callbacks"][0]["init_args"] |= {
        "dirpath": str(tmp_path / "run" / "resume"),
        "every_n_train_steps": 2,
    }
    config["model"] |= {"model": "clip-gs-tiny", "pretrained": str(checkpoint), "warmup_steps": 1,
                        "config": config["model"]["config"] | {"num_groups": 16, "group_size": 16, "embed_dim": E}}  # fmt: skip
    config["data"] |= {"root": str(train), "batch_size": 8, "num_workers": 0, "num_gaussians": N, "views_per_step": 3,
                       "pin_memory": False,
                       "extra_val": [{"name": name, "root": str(root), "split": "test"} for name, root in extras.items()]}  # fmt: skip
    config["export"] |= {"export_dir": str(tmp_path / "run" / "export"), "dirpath": str(tmp_path / "run" / "best")}
    return config


def test_paper_shaped_run_on_unlabelled_data_with_two_labelled_validation_sets(tmp_path, capsys):
    """Objaverse-like training data without labels + two labelled validation sets (LVIS- and
    ModelNet-like), through ``clip-gs fit`` and ``clip-gs validate`` with the paper's config shape:
    fit, validation of every set, export by the training data's own ``val/3d_to_text_r1`` (no test
    object chooses the checkpoint). A monitor the run never logs (``val/zeroshot_top1``: the training
    data has no labels) is refused at setup, before any step, naming what is logged."""
    from clip_gs.cli import main
    from clip_gs.model.config import get_model_config
    from tests.uni3d_reference import Uni3DPointEncoderReference

    train = write_learnable_dataset(tmp_path / "objaverse", 24, 8, 0, labelled=False)
    extras = {"lvis": write_learnable_dataset(tmp_path / "lvis", 0, 0, 8, start=100),
              "modelnet40": write_learnable_dataset(tmp_path / "modelnet", 0, 0, 12, start=200)}  # fmt: skip
    torch.manual_seed(0)
    reference = Uni3DPointEncoderReference(get_model_config("clip-gs-tiny", embed_dim=E))
    checkpoint = tmp_path / "uni3d-ti.pt"
    torch.save(reference.uni3d_state_dict(), checkpoint)
    path = tmp_path / "paper-shaped.yaml"
    path.write_text(yaml.safe_dump(paper_shaped_config(tmp_path, checkpoint, train, extras, steps=6)))
    capsys.readouterr()

    assert main(["fit", "--config", str(path), "--export.monitor", "val/zeroshot_top1"]) == 2
    err = capsys.readouterr().err
    assert "monitors 'val/zeroshot_top1', which this run never logs" in err and "val_lvis/zeroshot_top1" in err
    assert not (tmp_path / "run" / "resume").exists()  # refused before the first step

    assert main(["fit", "--config", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    export = Path(out[-1])
    assert export == (tmp_path / "run" / "export").resolve()
    record = json.loads((export / "metrics.json").read_text())
    metrics = record["metrics"]
    for name in ("val_lvis/zeroshot_top1", "val_modelnet40/zeroshot_top1", "val_lvis/teacher_zeroshot_top1",
                 "val_modelnet40/loss", "val/loss", "val/text_to_3d_r5"):  # fmt: skip
        assert name in metrics, (name, sorted(metrics))
    assert "val/zeroshot_top1" not in metrics
    assert metrics["val_lvis/teacher_zeroshot_top1"] == 1.0  # the stored views sit near their class vectors
    assert record["checkpoint"] and Path(record["checkpoint"]).is_file()  # the best by val/3d_to_text_r1
    assert (tmp_path / "run" / "resume" / "last.ckpt").is_file()

    assert main(["validate", "--config", str(path), "--ckpt_path", record["checkpoint"]]) == 0
    printed = capsys.readouterr().out
    assert "val_lvis/zeroshot_top1" in printed and "val_modelnet40/zeroshot_top1" in printed


# ---------------------------------------------------------------------------- kill and resume
class IdTrace(pl.Callback):
    """Appends ``{"step", "ids"}`` per training batch to ``path`` (JSON lines, flushed), for the resume test."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(trainer.global_step), "ids": list(batch.ids)}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def resume_config(tmp_path, name, dataset, max_steps) -> Path:
    config = {
        "seed_everything": 3,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "default_root_dir": str(tmp_path / name),
                    "callbacks": [{"class_path": "tests.lightning.test_training.IdTrace",
                                   "init_args": {"path": str(tmp_path / f"{name}.jsonl")}},
                                  {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / name / "ckpt"), "save_last": True,
                                                 "save_top_k": 0, "every_n_train_steps": 1}}]},
        "model": TINY | {"config": {k: v for k, v in TINY["config"].items() if k != "num_gaussians"}, "warmup_steps": 2},
        "data": {"root": str(dataset), "batch_size": 8, "num_workers": 0, "num_gaussians": N, "views_per_step": 3,
                 "seed": 5},
        "export": {"export_dir": str(tmp_path / name / "export"), "dirpath": str(tmp_path / name / "best")},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.slow
def test_cli_fit_and_sigkill_resume(dataset, tmp_path):
    """``clip-gs fit`` runs end to end; a real ``clip-gs fit`` killed mid-epoch and resumed with ``--ckpt_path last`` repeats and skips no
    id and ends with the metrics of an uninterrupted run (48 train objects, batch 8: 6 steps an epoch)."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{REPO}")
    steps = 8  # one epoch and a third: the kill lands in the first epoch, validation after each epoch
    whole = subprocess.run([sys.executable, "-m", "clip_gs", "fit", "--config", str(resume_config(tmp_path, "whole", dataset, steps))],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    # `clip-gs fit` end to end: the last line of output is the export folder, which loads offline
    last_line = [line for line in whole.stdout.splitlines() if line.strip()][-1]
    assert last_line == str((tmp_path / "whole" / "export").resolve())
    assert CLIPGS.from_pretrained(last_line, local_files_only=True).config.num_gaussians == N  # linked from data
    # the line before it times each stage; they add up to no more than the total
    times = [line for line in whole.stdout.splitlines() if line.startswith("time: ")]
    assert len(times) == 1, whole.stdout[-2000:]
    stages = dict(re.findall(r"(prepare|train|export|test|total) ([\d.]+) s", times[0]))
    assert set(stages) == {"prepare", "train", "export", "test", "total"}, times[0]
    parts = sum(float(stages[k]) for k in ("prepare", "train", "export", "test"))
    assert float(stages["train"]) > 0 and parts <= float(stages["total"]) + 0.2, times[0]
    # ...after testing the best checkpoint on the test split: the summary, and the metrics recorded in the export
    assert "test split (8 objects):" in whole.stdout and "zero-shot top-1" in whole.stdout, whole.stdout[-2000:]
    tested = json.loads((tmp_path / "whole" / "export" / "metrics.json").read_text())["test"]["metrics"]
    assert {"test/zeroshot_top1", "test/teacher_zeroshot_top1", "test/text_to_3d_r5"} <= tested.keys()
    from clip_gs.data.shards import TripletShardDataset

    vectors, hits = class_vectors(), []  # the teacher's own zero-shot, by hand: every view of every test object
    for sample in TripletShardDataset(str(dataset / "test")):
        hits += ((sample.image_embeddings @ vectors.T).argmax(-1) == CLASSES.index(sample.label)).tolist()
    assert tested["test/teacher_zeroshot_top1"] == pytest.approx(sum(hits) / len(hits)) and len(hits) == 8 * 3

    cut_config = resume_config(tmp_path, "cut", dataset, steps)
    proc = subprocess.Popen([sys.executable, "-m", "clip_gs", "fit", "--config", str(cut_config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(entry["step"] >= 3 for entry in read_trace(tmp_path / "cut.jsonl")):
            break  # step 3 has started: steps 0-2 are checkpointed, we are inside step 3's compute
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    last = tmp_path / "cut" / "ckpt" / "last.ckpt"
    checkpointed = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 3 <= checkpointed < 6  # mid-epoch
    killed_run = read_trace(tmp_path / "cut.jsonl")
    before_kill = [e for e in killed_run if e["step"] < checkpointed]  # the steps the checkpoint holds
    resumed = subprocess.run([sys.executable, "-m", "clip_gs", "fit", "--config", str(cut_config), "--ckpt_path", "last"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_trace(tmp_path / "cut.jsonl")[len(killed_run) :]  # what the resumed run saw
    assert before_kill + after == read_trace(tmp_path / "whole.jsonl")  # same ids, same order, none repeated or skipped
    a = json.loads((tmp_path / "whole" / "export" / "metrics.json").read_text())["metrics"]
    b = json.loads((tmp_path / "cut" / "export" / "metrics.json").read_text())["metrics"]
    assert a.keys() == b.keys() and a
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key


# ---------------------------------------------------------------------------- DDP equivalence
def fake_batch(b: int, seed: int = 0):
    from clip_gs.data.batches import TripletBatch

    gen = torch.Generator().manual_seed(seed)
    k = 3
    text = F.normalize(torch.randn(b, E, generator=gen), dim=-1)
    images = F.normalize(torch.randn(b, k, E, generator=gen), dim=-1)
    image_mask = torch.ones(b, k, dtype=torch.bool)
    image_mask[1, 2] = False
    text_mask = torch.ones(b, dtype=torch.bool)
    text_mask[2] = False
    similarity = torch.where(image_mask, (text[:, None] * images).sum(-1), torch.zeros(()))
    return TripletBatch(
        features=torch.randn(b, N, 19, generator=gen), text=text, text_mask=text_mask, images=images,
        image_mask=image_mask, similarity=similarity, labels=torch.zeros(b, dtype=torch.long),
        indices=torch.arange(b), ids=[f"obj-{i}" for i in range(b)],
    )  # fmt: skip


def shard(batch, rank: int, world: int):
    from clip_gs.data.batches import TripletBatch

    b = len(batch) // world
    pick = slice(rank * b, (rank + 1) * b)
    return TripletBatch(
        **{
            f: (getattr(batch, f)[pick])
            for f in ("features", "text", "text_mask", "images", "image_mask", "similarity", "labels", "indices", "ids")
        }
    )


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for local_loss in (False, True):
            torch.manual_seed(0)
            module = tiny_module(local_loss=local_loss)
            module.model.eval()  # BatchNorm on batch statistics would differ per shard (see the report)
            ddp = torch.nn.parallel.DistributedDataParallel(module.model)
            part = shard(fake_batch(8), rank, world)
            result = module.compute_loss(part, ddp(part.features), rank=rank, world_size=world)
            (result.loss * world).backward()  # what training_step returns; DDP averages the gradients
            grads = {n: p.grad.clone() for n, p in module.model.named_parameters()}
            out[(rank, local_loss)] = (result.loss.item(), grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_equal_a_single_process():
    """2-process gloo DDP on a global batch of 8 (both loss modes): the loss and every parameter
    gradient (encoder and logit scale) equal one process's on the whole batch."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    torch.manual_seed(0)
    module = tiny_module()
    module.model.eval()
    batch = fake_batch(8)
    single = module.compute_loss(batch, module(batch.features))
    single.loss.backward()
    for local_loss in (False, True):
        losses = [out[(r, local_loss)][0] for r in range(2)]
        assert (sum(losses) if local_loss else losses[0]) == pytest.approx(single.loss.item(), rel=1e-5)
        for name, p in module.model.named_parameters():
            for r in range(2):
                assert torch.allclose(out[(r, local_loss)][1][name], p.grad, rtol=1e-4, atol=1e-6), (
                    name,
                    r,
                    local_loss,
                )


def test_cli_predict_writes_the_test_split_embeddings(dataset, tmp_path, capsys):
    from clip_gs.cli import main

    config = {
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
        "model": TINY | {"config": {k: v for k, v in TINY["config"].items() if k != "num_gaussians"}},
        "data": {"root": str(dataset), "batch_size": 8, "num_workers": 0, "num_gaussians": N, "views_per_step": 3},
    }  # fmt: skip
    path = tmp_path / "predict.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["predict", "--config", str(path)]) == 0
    last = [line for line in capsys.readouterr().out.splitlines() if line.strip()][-1]
    predictions = torch.load(last, weights_only=True)
    assert len(predictions["ids"]) == 8 and predictions["embeddings"].shape == (8, E)
    assert torch.allclose(predictions["embeddings"].norm(dim=-1), torch.ones(8), atol=1e-5)
