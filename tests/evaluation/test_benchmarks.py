"""Public benchmarks in their download layouts: discovery, labels, the conversion cache, bad layouts,
and ``clip-gs eval --benchmark`` (zero-shot under both protocols, standard few-shot)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip_gs.cli import main
from clip_gs.errors import ConfigError, DatasetError
from clip_gs.evaluation.benchmarks import BenchmarkItem, BenchmarkWarning, discover, discover_all, load_item
from clip_gs.gaussians import save_gaussians
from clip_gs.gaussians.mesh import mesh_to_gaussians
from clip_gs.model import create_model
from tests.conftest import REAL_DATA

N = 256


def primitive(kind: str, seed: int = 0):
    """A small trimesh primitive, its size varied by ``seed`` (so objects of a class differ)."""
    import trimesh

    scale = 0.6 + 0.1 * (seed % 5)
    mesh = {"box": lambda: trimesh.creation.box((1.0, scale, 0.5)),
            "cone": lambda: trimesh.creation.cone(0.5, 1.0 + scale),
            "sphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=scale),
            "cylinder": lambda: trimesh.creation.cylinder(0.3, 1.0 + scale),
            "torus": lambda: trimesh.creation.torus(0.6, 0.1 + 0.05 * scale),
            "capsule": lambda: trimesh.creation.capsule(1.0 + scale, 0.3)}[kind]()  # fmt: skip
    return mesh


def write_modelnet(root: Path, classes: dict[str, str], train: int, test: int) -> Path:
    """``<folder>/{train,test}/<folder>_NNNN.off`` for each ``folder -> primitive kind``."""
    index = 0
    for folder, kind in classes.items():
        for split, count in (("train", train), ("test", test)):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                index += 1
                primitive(kind, index).export(root / folder / split / f"{folder}_{index:04d}.off")
    return root


def tiny_model_folder(tmp_path: Path) -> Path:
    """A random clip-gs-tiny in the offline teacher's space (256-d), exported with that teacher."""
    from clip_gs.lightning.export import export_pretrained
    from clip_gs.teachers import load_teacher

    torch.manual_seed(0)
    model = create_model("clip-gs-tiny", num_gaussians=N, num_groups=16, group_size=16, embed_dim=256, depth=2)
    teacher = load_teacher("synthetic-clip")
    return export_pretrained(model, tmp_path / "model", teacher={"teacher": str(teacher.identity), "embed_dim": 256})


# ---------------------------------------------------------------------------- layouts
def test_modelnet40_layout_and_the_conversion_cache(tmp_path, monkeypatch):
    root = write_modelnet(tmp_path / "ModelNet40", {"cone": "cone", "night_stand": "box"}, train=2, test=1)
    items = discover("modelnet40", root)
    assert [(i.id, i.label, i.split) for i in items] == [
        ("cone/train/cone_0001", "cone", "train"), ("cone/train/cone_0002", "cone", "train"),
        ("cone/test/cone_0003", "cone", "test"), ("night_stand/train/night_stand_0004", "night_stand", "train"),
        ("night_stand/train/night_stand_0005", "night_stand", "train"), ("night_stand/test/night_stand_0006", "night_stand", "test"),
    ]  # fmt: skip
    import clip_gs.gaussians.assets as assets

    calls = []
    real = assets.load_asset
    monkeypatch.setattr(assets, "load_asset", lambda *a, **k: calls.append(a) or real(*a, **k))
    cache = tmp_path / "cache"
    first = load_item(items[0], mesh_gaussians=N, seed=3, cache_dir=cache)
    assert len(first) == N and torch.isfinite(first.means).all() and len(calls) == 1
    again = load_item(items[0], mesh_gaussians=N, seed=3, cache_dir=cache)
    assert len(calls) == 1 and torch.equal(again.means, first.means)  # read from the cache
    load_item(items[0], mesh_gaussians=N, seed=4, cache_dir=cache)
    load_item(items[0], mesh_gaussians=2 * N, seed=3, cache_dir=cache)
    assert len(calls) == 3  # another seed, another count: converted again
    stat = items[0].path.stat()
    os.utime(items[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_item(items[0], mesh_gaussians=N, seed=3, cache_dir=cache)
    assert len(calls) == 4  # a touched file: converted again
    assert not list(cache.glob("*.part"))


def test_bad_layouts_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark 'modelnet10'; known: modelnet40, modelnet-splats"):
        discover("modelnet10", tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        discover("modelnet40", tmp_path / "missing")
    with pytest.raises(DatasetError, match="no class folders"):
        discover("modelnet40", tmp_path)
    (tmp_path / "chair" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"chair: a class folder without train/ or test/"):
        discover("modelnet40", tmp_path)
    splats = tmp_path / "splats" / "chair" / "train" / "chair_0001"
    splats.mkdir(parents=True)
    with pytest.raises(DatasetError, match="chair_0001: an object folder without point_cloud.ply"):
        discover("modelnet-splats", tmp_path / "splats")
    (tmp_path / "objaverse" / "glbs").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no LVIS annotation"):
        discover("objaverse-lvis", tmp_path / "objaverse")
    (tmp_path / "objaverse" / "lvis-annotations.json").write_text('["not", "a", "table"]')
    with pytest.raises(DatasetError, match=r"expected \{category: \[uid, ...\]\}"):
        discover("objaverse-lvis", tmp_path / "objaverse")


def test_modelnet_splats_layout(tmp_path):
    cloud = mesh_to_gaussians(primitive("sphere"), num_gaussians=N, seed=0)
    root = tmp_path / "modelsplat"
    for rel in ("bowl/train/bowl_0001/point_cloud.ply", "bowl/test/bowl_0002.ply", "cup/test/cup_0003/point_cloud.ply"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_gaussians(cloud, root / rel)
    items = discover("modelnet-splats", root)
    assert [(i.id, i.label, i.split, i.path.name) for i in items] == [
        ("bowl/train/bowl_0001", "bowl", "train", "point_cloud.ply"), ("bowl/test/bowl_0002", "bowl", "test", "bowl_0002.ply"),
        ("cup/test/cup_0003", "cup", "test", "point_cloud.ply")]  # fmt: skip
    assert torch.equal(load_item(items[0]).means, cloud.means)  # 3DGS files are read as they are, never converted


def test_up_reaches_the_benchmark_files(tmp_path):
    """``--up``: a 3DGS file named -y is turned into the model frame (180 degrees about x), a mesh is
    converted (and cached) per up axis."""
    from clip_gs.gaussians.mesh import NeutralGreyWarning

    cloud = mesh_to_gaussians(primitive("box"), num_gaussians=N, seed=0)
    splat = BenchmarkItem(id="box", path=save_gaussians(cloud, tmp_path / "box.ply"), label="box", split=None)
    turned = load_item(splat, up="-y").means
    assert torch.allclose(turned, cloud.means * torch.tensor([1.0, -1.0, -1.0]), atol=1e-5)
    obj = tmp_path / "tetra.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    mesh = BenchmarkItem(id="tetra", path=obj, label="tetra", split=None)
    cache = tmp_path / "cache"
    with pytest.warns(NeutralGreyWarning):
        upright, lying = (load_item(mesh, mesh_gaussians=N, cache_dir=cache, up=up) for up in ("auto", "+z"))
    assert len(list(cache.glob("*.ply"))) == 2 and not torch.allclose(upright.means, lying.means)


def test_objaverse_gs_layout_reads_the_latest_fit_and_labels_from_the_split_file(tmp_path):
    root = tmp_path / "objaverse_gs"
    early, late = (mesh_to_gaussians(primitive("box"), num_gaussians=N, seed=s) for s in (0, 1))
    for uid in ("aa11", "bb22", "cc33"):
        for iteration, cloud in ((1500, early), (3000, late)):
            path = root / uid / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply"
            path.parent.mkdir(parents=True)
            save_gaussians(cloud, path)
    (root / "lvis.json").write_text(json.dumps([{"uid": "aa11", "category": "box"}, {"uid": "bb22", "category": "crate"},
                                                {"uid": "dd44", "category": "box"}]))  # fmt: skip
    with pytest.warns(BenchmarkWarning) as warned:
        items = discover("objaverse-gs", root)
    assert [(i.id, i.label, i.split) for i in items] == [("aa11", "box", None), ("bb22", "crate", None)]
    assert items[0].path.parts[-2] == "iteration_3000" and torch.equal(load_item(items[0]).means, late.means)
    messages = " ".join(str(w.message) for w in warned)
    assert "1 annotated objects have no file, not evaluated: ['dd44']" in messages
    assert "1 files have no annotation, not evaluated: ['cc33']" in messages


def test_objaverse_lvis_layout_labels_come_from_the_annotation_only(tmp_path):
    root = tmp_path / "objaverse"
    for shard, uid, kind in (("000-000", "u1", "box"), ("000-001", "u2", "cone"), ("000-001", "u3", "sphere")):
        (root / "glbs" / shard).mkdir(parents=True, exist_ok=True)
        primitive(kind).export(root / "glbs" / shard / f"{uid}.glb")
    (root / "lvis-annotations.json").write_text(json.dumps({"crate": ["u1"], "traffic_cone": ["u2", "u9"]}))
    found = discover_all("objaverse-lvis", root)
    assert [(i.id, i.label, i.split) for i in found.items] == [("u1", "crate", None), ("u2", "traffic_cone", None)]
    assert found.missing == ["u9"] and found.unannotated == ["u3"]
    assert not {i.label for i in found.items} & {"000-000", "000-001"}  # storage shards are never labels
    cloud = load_item(found.items[1], mesh_gaussians=N, cache_dir=tmp_path / "cache")
    assert len(cloud) == N and torch.isfinite(cloud.means).all()


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real data folder {REAL_DATA} is absent")
def test_real_glbs_in_the_objaverse_layout(tmp_path):
    """The shared textured GLBs (trimesh's Duck, BoxTextured, CesiumMilkTruck) as an Objaverse download."""
    root = tmp_path / "objaverse"
    (root / "glbs" / "000-023").mkdir(parents=True)
    names = {"Duck.glb": "duck", "BoxTextured.glb": "box", "CesiumMilkTruck.glb": "truck"}
    for i, name in enumerate(names):
        shutil.copy(REAL_DATA / "trimesh-models" / name, root / "glbs" / "000-023" / f"uid{i}.glb")
    (root / "lvis-annotations.json").write_text(json.dumps({label: [f"uid{i}"] for i, label in enumerate(names.values())}))
    items = discover("objaverse-lvis", root)
    assert [(i.id, i.label) for i in items] == [("uid0", "duck"), ("uid1", "box"), ("uid2", "truck")]
    for item in items:
        cloud = load_item(item, mesh_gaussians=N, cache_dir=tmp_path / "cache")
        assert len(cloud) == N and torch.isfinite(cloud.means).all() and cloud.rgb.std() > 0.01  # textured: not one grey


# ---------------------------------------------------------------------------- clip-gs eval --benchmark
def naive_top1(model_dir: Path, items: list[BenchmarkItem], names: list[str], templates, rule, cache) -> float:
    """Zero-shot top-1 written out: each item encoded on its own, its best class by cosine."""
    from clip_gs.model import CLIPGS
    from clip_gs.teachers import load_teacher, zero_shot_weights

    model = CLIPGS.from_pretrained(model_dir)
    weights = F.normalize(zero_shot_weights(load_teacher("synthetic-clip"), names, templates, rule), dim=-1)
    hits = 0
    for item in items:
        x = model.encode(load_item(item, mesh_gaussians=N, seed=0, cache_dir=cache), seed=0)
        scores = weights @ F.normalize(x, dim=-1)
        best = max(range(len(names)), key=lambda c: (float(scores[c]), -c))
        hits += names[best].replace(" ", "_") == item.label or names[best] == item.label
    return hits / len(items)


def test_cli_benchmark_uni3d_protocol_from_the_users_files(tmp_path, capsys):
    """``--zeroshot-protocol uni3d`` reads the user's templates.json / labels.json; ``flower_pot``
    is Uni3D's ``flower pot``; the paper-form row is printed; the numbers are the measured ones."""
    root = write_modelnet(tmp_path / "ModelNet40", {"cone": "cone", "flower_pot": "cylinder"}, train=0, test=3)
    uni3d = tmp_path / "Uni3D" / "data"
    uni3d.mkdir(parents=True)
    templates = ["a point cloud model of {}.", "There is a {} in the scene."]
    (uni3d / "templates.json").write_text(json.dumps({"modelnet40_64": templates}))
    (uni3d / "labels.json").write_text(json.dumps({"modelnet40_openshape": ["cone", "cup", "flower pot"]}))
    model_dir = tiny_model_folder(tmp_path)
    argv = ["eval", "--model", str(model_dir), "--benchmark", "modelnet40", "--root", str(root), "--task", "zeroshot",
            "--zeroshot-protocol", "uni3d", "--uni3d-data", str(uni3d), "--mesh-gaussians", str(N),
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    zs = report["tasks"]["zeroshot"]
    assert report["benchmark"] == "modelnet40" and zs["protocol"] == "uni3d" and zs["num_classes"] == 3
    assert zs["num_samples"] == 6 and "labels.json [modelnet40_openshape]" in zs["label_set"]
    assert f"| {model_dir} | modelnet40 (6 objects, 3 classes) | uni3d | {100 * zs['top1']:.1f} |" in out
    items = discover("modelnet40", root)
    expected = naive_top1(model_dir, items, ["cone", "cup", "flower pot"], templates, "verbatim", tmp_path / "cache")
    assert zs["top1"] == pytest.approx(expected)
    assert (tmp_path / "out" / "confusion.png").is_file()


def test_uncoloured_meshes_are_summarised_once(tmp_path):
    """ModelNet's .off meshes have no colour by nature: one summary warning for the benchmark, not one per file."""
    import warnings

    from clip_gs.evaluation.run import embed
    from clip_gs.evaluation.sources import BenchmarkSplit
    from clip_gs.model import CLIPGS

    root = write_modelnet(tmp_path / "ModelNet40", {"cone": "cone"}, train=0, test=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embed(CLIPGS.from_pretrained(tiny_model_folder(tmp_path)),
              BenchmarkSplit("modelnet40", root, mesh_gaussians=N, cache_dir=tmp_path / "cache"), 8, 0, "fp32", False)
    # a ResourceWarning of an earlier test's event loop, collected here, is not this test's business
    messages = [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]
    assert messages == ["3 of 3 meshes have no colour (no texture, vertex colours or material) and were given neutral "
                        "grey, e.g. cone_0001.off"], messages  # fmt: skip


def test_material_file_warnings_are_not_counted_as_grey(tmp_path):
    """A mesh whose material library is missing has a colour problem of its own: its warning
    reaches the caller as it is, and the benchmark's summary counts only meshes given grey."""
    import warnings

    from clip_gs.evaluation.benchmarks import BenchmarkItem
    from clip_gs.evaluation.run import embed
    from clip_gs.evaluation.sources import BenchmarkSplit
    from clip_gs.gaussians.mesh import MeshColorWarning, NeutralGreyWarning
    from clip_gs.model import CLIPGS

    obj = tmp_path / "box.obj"
    obj.write_text("mtllib missing.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nusemtl red\n"
                   "f 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")  # fmt: skip
    item = BenchmarkItem(id="box", path=obj, label="box", split=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embed(CLIPGS.from_pretrained(tiny_model_folder(tmp_path)),
              BenchmarkSplit("modelnet40", tmp_path, items=[item], mesh_gaussians=N, cache_dir=tmp_path / "cache"), 8,
              0, "fp32", False)  # fmt: skip
    material = [w for w in caught if issubclass(w.category, MeshColorWarning)
                and not issubclass(w.category, NeutralGreyWarning)]  # fmt: skip
    assert material and "missing.mtl" in str(material[0].message), [str(w.message) for w in caught]


def test_cli_benchmark_standard_few_shot(tmp_path, capsys):
    """ModelNet40's layout with 5 classes of 10 train and 20 test meshes: the standard protocol's
    5-way 10-shot runs (support from train/, queries from test/), 10 runs, mean +- std printed."""
    kinds = {"cone": "cone", "bowl": "sphere", "bottle": "cylinder", "box": "box", "tent": "capsule"}
    root = write_modelnet(tmp_path / "ModelNet40", kinds, train=10, test=20)
    model_dir = tiny_model_folder(tmp_path)
    argv = ["eval", "--model", str(model_dir), "--benchmark", "modelnet40", "--root", str(root), "--task", "fewshot",
            "--ways", "5", "--shots", "10", "--mesh-gaussians", str(N), "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]["fewshot"]["5-way-10-shot"]
    assert (entry["protocol"], entry["episodes"], entry["queries_per_class"], entry["support_split"]) == (
        "standard", 10, 20, "train")
    assert f"| 5-way 10-shot (standard, 10 runs) | {100 * entry['mean']:.1f} ± {100 * entry['std']:.1f} |" in out
    assert entry["mean"] > 0.4  # primitives of five kinds, random encoder: chance is 0.2
    # without --ways / --shots: the paper's ModelNet setting, 10-way 10-shot; it cannot fit 5 classes,
    # which is said, and the largest standard setting that fits runs instead
    assert main(argv[:9] + argv[13:]) == 3
    out = capsys.readouterr().out
    assert "not run: fewshot/10-way-10-shot" in out and "run instead of 10-way 10-shot" in out


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real data folder {REAL_DATA} is absent")
def test_cli_benchmark_on_real_meshes_in_the_modelnet40_layout(tmp_path, capsys):
    """Shared real meshes of ModelNet40 classes laid out as ModelNet40 (converted to .off), scored
    against the 40 shipped class names (the clip-gs protocol)."""
    import trimesh

    meshes = {"chair": ["trimesh-models/chair_model.obj", "kaolin-samples/armchair.obj"],
              "lamp": ["text2mesh-meshes/lamp.obj"], "vase": ["text2mesh-meshes/vase.obj"],
              "person": ["text2mesh-meshes/person.obj"], "bottle": ["trimesh-models/fuze.obj"]}  # fmt: skip
    root = tmp_path / "ModelNet40"
    for label, files in meshes.items():
        (root / label / "test").mkdir(parents=True)
        for i, rel in enumerate(files):
            trimesh.load(REAL_DATA / rel, force="mesh").export(root / label / "test" / f"{label}_{i + 1:04d}.off")
    model_dir = tiny_model_folder(tmp_path)
    argv = ["eval", "--model", str(model_dir), "--benchmark", "modelnet40", "--root", str(root), "--task", "zeroshot",
            "--mesh-gaussians", str(N), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    zs = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]["zeroshot"]
    assert zs["num_classes"] == 40 and zs["num_samples"] == 6 and zs["protocol"] == "clip-gs"
    assert "| modelnet40 (6 objects, 40 classes) | clip-gs |" in out
    from clip_gs.teachers import TEMPLATES, load_label_set

    items = discover("modelnet40", root)
    expected = naive_top1(model_dir, items, load_label_set("modelnet40"), TEMPLATES, "clip-gs", tmp_path / "cache")
    assert zs["top1"] == pytest.approx(expected)


# ---------------------------------------------------------------------------- ShapeSplat's and UniGS's layouts, exactly
def test_modelnet_splats_in_its_download_layout(tmp_path):
    """``{class}/{train|test}/{class}_{id}/point_cloud.ply``, as ShapeSplat's DATA.md unzips ModelNet-Splats
    (class names with underscores included): every object found once, with its class and split."""
    from clip_gs.gaussians.formats.unigs_pkl import gaussians_from_array
    from tests.conftest import unigs_array

    root = tmp_path / "modelsplat"
    layout = {"airplane": {"train": [1, 2], "test": [627]}, "night_stand": {"train": [1], "test": [201, 202]},
              "flower_pot": {"test": [150]}}  # fmt: skip
    expected = []
    for cls, splits in layout.items():
        for split, numbers in splits.items():
            for n in numbers:
                folder = root / cls / split / f"{cls}_{n:04d}"
                folder.mkdir(parents=True)
                save_gaussians(gaussians_from_array(unigs_array(16, seed=n), folder), folder / "point_cloud.ply")
                expected.append((f"{cls}/{split}/{cls}_{n:04d}", cls, split, folder / "point_cloud.ply"))
    (root / ".cache").mkdir()  # huggingface-cli's download cache beside the classes is not a class
    found = discover_all("modelnet-splats", root)
    assert sorted((i.id, i.label, i.split, i.path) for i in found.items) == sorted(expected)
    assert found.missing == [] and found.unannotated == []
    assert {i.label for i in found.items} == {"airplane", "night_stand", "flower_pot"}
    assert [i.id for i in found.items if i.split == "train"] == ["airplane/train/airplane_0001",
                                                                "airplane/train/airplane_0002",
                                                                "night_stand/train/night_stand_0001"]  # fmt: skip
    cloud = load_item(found.items[0])
    assert len(cloud) == 16 and torch.isfinite(cloud.means).all()


def test_objaverse_gs_reads_unigs_pkl_files(tmp_path):
    """UniGS's ``objects/<uid>.pkl``: labels from each file's LVIS label (a file outside LVIS is counted, not
    evaluated), or from lvis.json when it is there; read by the restricted unpickler."""
    from tests.conftest import unigs_array, write_unigs_pkl

    root = tmp_path / "unigs"
    for uid, label in (("u1", "chair"), ("u2", "mug"), ("u3", "")):
        write_unigs_pkl(root / "objects" / f"{uid}.pkl", unigs_array(32, seed=int(uid[1])), label=label)
    with pytest.warns(BenchmarkWarning, match=r"1 files have no annotation, not evaluated: \['u3'\]"):
        items = discover("objaverse-gs", root)
    assert [(i.id, i.label, i.split, i.path.name) for i in items] == [("u1", "chair", None, "u1.pkl"),
                                                                        ("u2", "mug", None, "u2.pkl")]  # fmt: skip
    cloud = load_item(items[0])  # +z up as UniGS stores it, brought to the model's +y
    x, y, z = torch.from_numpy(unigs_array(32, seed=1)[:, :3]).unbind(-1)
    assert torch.allclose(cloud.means, torch.stack([x, z, -y], -1), atol=1e-6)
    (root / "lvis.json").write_text(json.dumps([{"uid": "u1", "category": "armchair"}, {"uid": "u3", "category": "cup"}]))
    found = discover_all("objaverse-gs", root)
    assert [(i.id, i.label) for i in found.items] == [("u1", "armchair"), ("u3", "cup")]  # the split file wins
    assert found.unannotated == ["u2"]
    write_unigs_pkl(root / "more" / "u1.pkl", unigs_array(8))
    with pytest.raises(DatasetError, match="uid 'u1' has two .pkl files"):
        discover("objaverse-gs", root)


def test_cli_benchmark_objaverse_gs_of_pkl_files_evaluates(tmp_path, capsys):
    """Zero-shot on a folder of UniGS ``.pkl`` files through ``clip-gs eval --benchmark objaverse-gs``;
    the standard few-shot protocol cannot run on a set without a train split, and says which one can."""
    from tests.conftest import unigs_array, write_unigs_pkl

    root = tmp_path / "unigs"
    for i in range(6):
        write_unigs_pkl(root / "objects" / f"uid{i}.pkl", unigs_array(N, seed=i, centre=(i % 2, 0, 0)),
                        label=("chair", "mug")[i % 2])  # fmt: skip
    model_dir = tiny_model_folder(tmp_path)
    argv = ["eval", "--model", str(model_dir), "--benchmark", "objaverse-gs", "--root", str(root), "--labels", "chair,mug",
            "--out", str(tmp_path / "out"), "--quiet", "--ways", "2", "--shots", "1"]  # fmt: skip
    assert main(argv) == 3
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    zs = report["tasks"]["zeroshot"]
    assert report["benchmark"] == "objaverse-gs" and zs["num_samples"] == 6 and zs["num_classes"] == 2
    assert 0.0 <= zs["top1"] <= 1.0 and zs["top5"] == 1.0
    assert ("the standard few-shot protocol cannot run on benchmark 'objaverse-gs': it has no 'train' split for the "
            "support; run --fewshot-protocol episodes") in report["failures"]["fewshot"]  # fmt: skip
    assert "not run: fewshot: DatasetError" in out
