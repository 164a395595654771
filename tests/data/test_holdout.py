"""Held-out objects never train: the held-out file formats, prepare's heldout split, one Blender pass
per fitted object, the training ids an export records, and eval's overlap check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_gs.data.holdout import (
    HELDOUT_SPLIT,
    KEYS_NAME,
    TRAINING_IDS_NAME,
    keys_of,
    object_key,
    overlap,
    read_holdout,
    read_split_keys,
    read_training_ids,
    write_training_ids,
)
from clip_gs.data.prepare import prepare_dataset
from clip_gs.data.prepare_settings import PrepareSettings
from clip_gs.data.shards import TripletShardDataset
from clip_gs.errors import DatasetError
from clip_gs.evaluation.overlap import TrainingOverlapError, evaluated_keys, training_overlap
from clip_gs.render.blender import blender_available

UIDS = ["8476c4170df24cf5bbe6967222d1a42d", "b0a0e1b1c7e14ebc8b3c0e5e1a0d9f10", "0123abcd0123abcd0123abcd0123abcd"]


def test_three_held_out_file_forms(tmp_path):
    listing = tmp_path / "uids.txt"
    listing.write_text(f"# held out\n{UIDS[0]}\n\n{UIDS[1]}\n")
    lvis = tmp_path / "lvis-annotations.json"
    lvis.write_text(json.dumps({"chair": [UIDS[0]], "lamp": [UIDS[1], UIDS[2]]}))
    openshape = tmp_path / "lvis.json"
    openshape.write_text(json.dumps([{"uid": u, "category": "chair"} for u in UIDS]))
    plain = tmp_path / "uids.json"
    plain.write_text(json.dumps(UIDS[:2]))
    assert read_holdout(listing) == read_holdout(plain) == frozenset(UIDS[:2])
    assert read_holdout(lvis) == read_holdout(openshape) == frozenset(UIDS)
    assert object_key(f"glbs/000-023/{UIDS[0]}") == UIDS[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "lists no uids"),
        ("{not json", "invalid JSON"),
        ('{"chair": "abc"}', "categories to lists"),
        ('[{"category": "chair"}]', "has no 'uid'"),
        ('["a/b"]', "not uids"),
        ("[1, 2]", "not uids"),
        ('{"a": [], "a": []}', "invalid JSON"),
    ],
)
def test_malformed_held_out_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "holdout.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        read_holdout(path)
    assert str(path) in str(info.value)


def test_prepare_puts_held_out_objects_in_their_own_split(tmp_path):
    """Every listed object lands in ``heldout`` (whatever the seeded hash would say), none in train or
    val; the manifest records the file; the keys file says what each split holds."""
    held = ["synthetic-000001", "synthetic-000004", "synthetic-000007"]
    holdout = tmp_path / "holdout.txt"
    holdout.write_text("\n".join(held) + "\n")
    settings = PrepareSettings(views=2, synthetic_gaussians=256, val_fraction=0.3, test_fraction=0.2)
    out = tmp_path / "out"
    summary = prepare_dataset("synthetic:10", out, teacher="synthetic-clip", settings=settings, progress=False,
                              holdout=holdout)  # fmt: skip
    assert summary.counts[HELDOUT_SPLIT] == 3 and sum(summary.counts.values()) == 10
    ids = {split: sorted(TripletShardDataset(out / split)[i].id for i in range(n))
           for split, n in summary.counts.items() if n}  # fmt: skip
    assert ids[HELDOUT_SPLIT] == held
    assert not set(held) & (set(ids.get("train", [])) | set(ids.get("val", [])))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["holdout"]["file"] == "holdout.txt" and manifest["holdout"]["uids"] == 3
    keys = read_split_keys((out / KEYS_NAME).read_bytes(), str(out / KEYS_NAME))
    for split, members in ids.items():
        assert torch.equal(keys[split], keys_of(members))
    # another held-out list is another dataset: the earlier records are not silently re-split
    holdout.write_text("synthetic-000002\n")
    with pytest.raises(DatasetError, match="other settings"):
        prepare_dataset("synthetic:10", out, teacher="synthetic-clip", settings=settings, progress=False,
                        holdout=holdout)  # fmt: skip


def test_training_ids_and_the_overlap_check(tmp_path):
    trained = [f"glbs/000-001/{u}" for u in UIDS[:2]]
    write_training_ids(tmp_path, keys_of(trained), dataset="objaverse")
    keys = read_training_ids(tmp_path / TRAINING_IDS_NAME)
    assert keys.shape == (2,) and overlap([UIDS[0], "other"], keys) == [UIDS[0]]
    evaluated = evaluated_keys(None, "test", [UIDS[0], UIDS[2]])
    report = training_overlap(tmp_path, evaluated, strict=False)
    assert report == {"checked": True, "overlap": 1, "evaluated": 2}
    with pytest.raises(TrainingOverlapError, match=r"1 of the 2 objects .*--allow-overlap"):
        training_overlap(tmp_path, evaluated, strict=True, what="benchmark objaverse-lvis")
    assert training_overlap(tmp_path, evaluated, strict=True, allow=True)["overlap"] == 1
    assert training_overlap(tmp_path, evaluated_keys(None, "test", [UIDS[2]]), strict=True)["overlap"] == 0
    assert not training_overlap(tmp_path / "no-ids", evaluated, strict=True)["checked"]  # nothing recorded
    (tmp_path / "bad").mkdir()
    write_training_ids(tmp_path / "bad", keys_of(trained))
    from safetensors.torch import save_file

    save_file({"keys": torch.tensor([3, 1], dtype=torch.int64)}, str(tmp_path / "bad" / TRAINING_IDS_NAME))
    with pytest.raises(DatasetError, match="not sorted"):
        read_training_ids(tmp_path / "bad" / TRAINING_IDS_NAME)


def test_eval_refuses_a_benchmark_the_model_trained_on(tmp_path, capsys):
    """Under the paper's protocols (a public benchmark) ``clip-gs eval`` refuses an overlap before it
    embeds anything, naming the count and the flag."""
    import trimesh

    from clip_gs.cli import main
    from clip_gs.model import create_model

    root = tmp_path / "ModelNet40"
    for name in ("chair_0001", "chair_0002"):
        (root / "chair" / "test").mkdir(parents=True, exist_ok=True)
        trimesh.creation.box().export(root / "chair" / "test" / f"{name}.off")
    model = tmp_path / "model"
    create_model("clip-gs-tiny", num_gaussians=256, num_groups=16, group_size=16, embed_dim=256).save_pretrained(model)
    write_training_ids(model, keys_of(["chair/test/chair_0001"]))
    code = main(["eval", "--model", str(model), "--benchmark", "modelnet40", "--root", str(root), "--task", "fewshot",
                 "--device", "cpu", "--out", str(tmp_path / "eval"), "--quiet"])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "1 of the 2 objects of benchmark modelnet40" in err and "--allow-overlap" in err
    assert not (tmp_path / "eval").exists()


requires_blender = pytest.mark.skipif(not blender_available(), reason="Blender's Python module (bpy) is not installed")


@requires_blender
@pytest.mark.slow
def test_fitted_objaverse_layout_renders_once_per_object_and_holds_out_lvis(tmp_path, monkeypatch):
    """``prepare --config prepare-paper.yaml`` on an Objaverse-layout folder with an LVIS annotation: the
    annotated uid goes to heldout, none to train or val; each mesh goes through Blender once (the teacher
    embeds the fit's own views, which the record's cameras name)."""
    import trimesh

    from clip_gs.cli import main
    from clip_gs.render import blender

    calls = []
    original = blender.render_mesh

    def counting(mesh, *args, **kwargs):
        calls.append(Path(mesh).stem)
        return original(mesh, *args, **kwargs)

    monkeypatch.setattr(blender, "render_mesh", counting)
    source = tmp_path / "objaverse" / "glbs" / "000-001"
    source.mkdir(parents=True)
    shapes = [
        trimesh.creation.box(),
        trimesh.creation.icosphere(subdivisions=2),
        trimesh.creation.cylinder(radius=0.4, height=1.2),
    ]
    for uid, shape in zip(UIDS, shapes):
        shape.visual.vertex_colors = [200, 60, 40, 255]
        shape.export(source / f"{uid}.glb")
    annotation = tmp_path / "lvis-annotations.json"
    annotation.write_text(json.dumps({"chair": [UIDS[1]]}))
    out = tmp_path / "out"
    paper = Path(__file__).parents[2] / "examples" / "configs" / "prepare-paper.yaml"
    code = main(
        [
            "prepare",
            str(tmp_path / "objaverse"),
            "--out",
            str(out),
            "--config",
            str(paper),  # the recipe,
            "--teacher",
            "synthetic-clip",
            "--fit-iterations",
            "20",
            "--fit-views",
            "4",
            "--fit-size",
            "32",
            "--mesh-gaussians",
            "800",
            "--max-gaussians",
            "800",
            "--val-fraction",
            "0",
            "--device",
            "cpu",
            "--holdout",
            str(annotation),
            "--quiet",
        ]
    )  # fmt: skip  (tiny settings overridden)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 2, "val": 0, "test": 0, HELDOUT_SPLIT: 1}
    assert manifest["settings"]["gaussians"] == "fitted" and manifest["holdout"]["uids"] == 1
    assert sorted(calls) == sorted(UIDS)  # Blender once per object
    (held,) = [TripletShardDataset(out / HELDOUT_SPLIT)[0]]
    assert object_key(held.id) == UIDS[1]
    train = TripletShardDataset(out / "train")
    for i in range(len(train)):
        sample = train[i]
        assert sample.image_embeddings.shape[0] == 4 == sample.viewmats.shape[0]  # the fit's 4 views
        # every stored camera looks at the normalised object: its centre projects into the image
        centre = sample.viewmats[:, :3, 3]  # camera coordinates of the world origin
        pixels = (sample.Ks @ centre[..., None])[..., 0]
        uv = pixels[:, :2] / pixels[:, 2:]
        assert bool((centre[:, 2] > 0).all()) and bool(((uv > 0) & (uv < 32)).all())


def test_a_training_export_records_what_it_trained_on(trained_run, capsys):
    """``clip-gs fit`` exports the keys of its training split; ``clip-gs eval`` of the training split
    reports the whole split as overlap (no refusal: not a paper protocol), of the test split none."""
    from clip_gs.cli import main

    trained = read_training_ids(trained_run.model_dir / TRAINING_IDS_NAME)
    keys = read_split_keys((trained_run.data_root / KEYS_NAME).read_bytes(), "keys")
    assert torch.equal(trained, keys["train"]) and trained.numel() > 0
    assert training_overlap(trained_run.model_dir, keys["test"], strict=True)["overlap"] == 0
    for split, expected in (("train", int(keys["train"].numel())), ("test", 0)):
        out = trained_run.model_dir.parent / f"eval-overlap-{split}"
        assert main(["eval", "--model", str(trained_run.model_dir), "--data", str(trained_run.data_root), "--split",
                     split, "--task", "zeroshot", "--device", "cpu", "--out", str(out), "--quiet"]) == 0  # fmt: skip
        report = json.loads((out / "report.json").read_text())
        assert report["training_overlap"] == {"checked": True, "overlap": expected, "evaluated": expected or int(
            keys["test"].numel())}  # fmt: skip
    capsys.readouterr()
