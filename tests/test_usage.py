"""Using a trained model: label sets, ``clip-gs classify``, ``clip-gs embed`` (resumable index) and ``clip-gs search``.

Mechanics run on a tiny random CLIP-GS (256-d, as the offline teacher ``synthetic-clip`` that its
``teacher.json`` names). Quality checks need a really trained model: they use the ``trained_run``
fixture (tests/conftest.py) and are marked slow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip_gs.cli import main
from clip_gs.data.synthetic import make_object
from clip_gs.errors import CheckpointError, ConfigError, DatasetError, GaussianFormatError, WeightsUnavailableError
from clip_gs.gaussians import load_gaussians, save_gaussians
from clip_gs.gaussians.assets import asset_loader, find_asset_files, load_asset, save_asset
from clip_gs.index import EmbeddingIndex
from clip_gs.model.fused import FusedEncoder
from clip_gs.model.loaded import load_model, teacher_spec_for
from clip_gs.teachers import TeacherMismatchError, load_teacher
from clip_gs.teachers.prompts import (
    LABEL_SET_DIR,
    LABEL_SETS,
    TEMPLATES,
    label_phrase,
    load_label_set,
    named_label_set,
    synthetic_label_set,
    zero_shot_weights,
)
from clip_gs.usage import classify_files, embed_folder, search_index
from clip_gs.usage.classify import indistinguishable_classes
from clip_gs.usage.search import hits_sheet
from tests.helpers import N, write_mesh, write_model

OBJECTS = (("cube", "red"), ("sphere", "blue"), ("torus", "green"), ("cone", "yellow"))


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("synthetic-clip")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, teacher) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny-model"), str(teacher.identity))


@pytest.fixture(scope="module")
def usage(model_dir):
    return load_model(model_dir, device="cpu")


def write_object(path: Path, shape: str, color: str, seed: int = 0, n: int = 512) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = make_object(shape, seed=seed, num_gaussians=n, color=color, pattern="solid", pose="upright")
    save_asset(obj.cloud, path)  # upright, and declared so
    return path


@pytest.fixture
def assets(tmp_path) -> Path:
    """A folder: four synthetic 3DGS objects (two in a subfolder) and one mesh."""
    root = tmp_path / "assets"
    for i, (shape, color) in enumerate(OBJECTS):
        write_object(root / ("shapes" if i % 2 else "") / f"{color}_{shape}.ply", shape, color, seed=i)
    write_mesh(root / "meshes" / "box.obj")
    return root


class CountCalls:
    """Counts the objects the fused encoder embeds (its ``__call__`` batches)."""

    def __init__(self, monkeypatch):
        self.objects = 0
        original = FusedEncoder.__call__

        def counted(encoder, features, normalize=True):
            self.objects += features.shape[0]
            return original(encoder, features, normalize)

        monkeypatch.setattr(FusedEncoder, "__call__", counted)


# ---------------------------------------------------------------------------- label sets


def test_shipped_label_sets_counts_order_and_sources():
    modelnet = load_label_set("modelnet40")
    lvis = load_label_set("objaverse-lvis")
    assert len(modelnet) == 40 and len(set(modelnet)) == 40
    assert len(lvis) == 1156 and len(set(lvis)) == 1156
    assert modelnet[:4] == ["airplane", "bathtub", "bed", "bench"] and modelnet[-1] == "xbox"
    assert lvis == sorted(lvis) and lvis[0] == "Band_Aid" and lvis[-1] == "zucchini"
    assert len({label_phrase(n) for n in lvis}) == 1156  # prompt phrases stay distinct
    assert load_label_set("synthetic") == synthetic_label_set() and len(synthetic_label_set()) == 13
    for name, filename in LABEL_SETS.items():
        assert named_label_set(name) == load_label_set(name)
        header = (LABEL_SET_DIR / filename).read_text().splitlines()[:8]
        assert any(line.startswith("# Source of the list: ") and "/" in line for line in header), name


def test_label_set_lookup_errors_and_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown label set 'shapenet55'.*modelnet40, objaverse-lvis, synthetic"):
        load_label_set("shapenet55")
    with pytest.raises(ConfigError, match="unknown label set"):
        named_label_set("labels.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        load_label_set(tmp_path / "missing.txt")
    (tmp_path / "mine.txt").write_text("# mine\nchair\n\ntable\n")
    assert load_label_set(tmp_path / "mine.txt") == ["chair", "table"]
    assert load_label_set(str(tmp_path / "mine.txt")) == ["chair", "table"]
    assert load_label_set(["lamp", "sofa"]) == ["lamp", "sofa"]
    assert label_phrase("car_(automobile)") == "car (automobile)" and label_phrase("L-shaped block") == "L-shaped block"


# ---------------------------------------------------------------------------- models and teachers


def test_model_identity_and_teacher_record(usage, model_dir, teacher, tmp_path):
    assert usage.identity.startswith("clip-gs:clip-gs-tiny@sha256:") and len(usage.identity.split("sha256:")[1]) == 16
    assert usage.teacher_record == str(teacher.identity)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert load_model(copy, device="cpu").identity == usage.identity  # identity of the weights, not the path
    assert teacher_spec_for("open_clip:ViT-B-32/laion2b_s34b_b79k") == "ViT-B-32/laion2b_s34b_b79k"
    assert teacher_spec_for("hf-hub:org/clip") == "hf-hub:org/clip"
    assert teacher_spec_for(str(teacher.identity)) == "synthetic-clip"
    with pytest.raises(WeightsUnavailableError, match="--teacher ViT-L-14@"):
        teacher_spec_for("file:ViT-L-14@sha256:0123456789abcdef")
    with pytest.raises(CheckpointError, match="nope: no such model folder"):
        load_model(tmp_path / "nope")


def test_unavailable_and_mismatched_teachers(tmp_path, assets):
    offline = write_model(tmp_path / "local-file-teacher", "file:ViT-L-14@sha256:0123456789abcdef")
    with pytest.raises(WeightsUnavailableError, match="needs teacher file:ViT-L-14.*--teacher ViT-L-14@"):
        classify_files([assets], offline, ["cube", "sphere"])
    other = write_model(tmp_path / "other-checksum", "file:synthetic-clip@sha256:0000000000000000")
    with pytest.raises(TeacherMismatchError, match="different teachers"):
        classify_files([assets], other, ["cube", "sphere"])
    bare = write_model(tmp_path / "no-record", None)
    with pytest.raises(ConfigError, match="records no teacher; pass --teacher"):
        classify_files([assets], bare, ["cube", "sphere"])
    # an explicit --teacher serves a model without a record
    assert classify_files([assets], load_model(bare, teacher="synthetic-clip", device="cpu"), ["cube", "sphere"])


# ---------------------------------------------------------------------------- classify


def test_classify_scores_are_softmax_of_scaled_cosines(usage, teacher, assets, tmp_path):
    bad = tmp_path / "assets" / "broken.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n")
    files = find_asset_files(assets)
    names = ["cube", "sphere", "torus", "cone", "mug"]
    results = classify_files(files, usage, names, k=5, progress=False)
    assert [r.path for r in results] == [str(f) for f in files]
    broken = [r for r in results if not r.ok]
    assert [r.path for r in broken] == [str(bad)] and broken[0].error.startswith("GaussianFormatError: ")
    assert str(bad) in broken[0].error and not broken[0].labels
    weights = zero_shot_weights(teacher, names, TEMPLATES)
    scale = usage.model.logit_scale.exp().clamp(max=100)
    for result in (r for r in results if r.ok):
        embedding = usage.model.encode(result.path, loader=asset_loader(), progress=False)
        cosine = embedding @ weights.T
        probs = (scale * cosine).softmax(-1)
        assert [s.label for s in result.labels] == [names[i] for i in probs.argsort(descending=True).tolist()]
        assert [s.score for s in result.labels] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-5)
        assert sum(s.score for s in result.labels) == pytest.approx(1.0, abs=1e-5)  # k = C: the whole distribution
        assert result.labels[0].cosine == pytest.approx(float(cosine.max()), abs=1e-5)
    top2 = classify_files([assets / "red_cube.ply"], usage, names, k=2, progress=False)[0]
    assert len(top2.labels) == 2 and top2.labels[0].score >= top2.labels[1].score
    with pytest.raises(ConfigError, match="k must be"):
        classify_files(files, usage, names, k=0)


def test_classify_cli_text_json_and_exit_codes(model_dir, assets, tmp_path, capsys):
    good = [str(p) for p in find_asset_files(assets)]
    bad = tmp_path / "corrupt.spz"
    bad.write_bytes(b"not an spz file at all")
    rc = main(["classify", *good, str(bad), "--model", str(model_dir), "--labels", "cube, sphere ,torus", "--k", "2",
               "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 3
    assert f"failed: {bad}: GaussianFormatError:" in err and "classified 5 of 6 files, 1 failed" in err
    blocks = [b.splitlines() for b in out.strip().split("\n/")]
    assert len(blocks) == len(good)
    for block in blocks:
        assert len(block) == 3 and all(line.startswith("  0.") for line in block[1:])
        scores = [float(line.split()[0]) for line in block[1:]]
        assert scores == sorted(scores, reverse=True) and {line.split()[1] for line in block[1:]} <= {
            "cube",
            "sphere",
            "torus",
        }

    rc = main(["classify", str(assets), "--model", str(model_dir), "--label-set", "synthetic", "--json", "--quiet"])
    out, _ = capsys.readouterr()
    records = json.loads(out)
    assert rc == 0 and [r["file"] for r in records] == good
    assert all(r["error"] is None and len(r["labels"]) == 5 for r in records)
    assert all(lab["label"] in synthetic_label_set() and 0 <= lab["score"] <= 1 for r in records for lab in r["labels"])

    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(["cube", "cone"]))
    assert main(["classify", good[0], "--model", str(model_dir), "--label-set", str(labels_file), "--quiet"]) == 0
    assert "cone" in capsys.readouterr().out
    assert main(["classify", good[0], "--model", str(model_dir), "--label-set", "shapenet", "--quiet"]) == 2
    assert "unknown label set 'shapenet'" in capsys.readouterr().err


def test_indistinguishable_classes_are_found():
    w = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert indistinguishable_classes(["a", "b", "c"], w) == [["a", "b"]]
    assert indistinguishable_classes(["a", "c"], w[1:]) == []


# ---------------------------------------------------------------------------- embed


def test_embed_is_resumable_and_counts(usage, assets, tmp_path, monkeypatch):
    out = tmp_path / "gallery"
    expected = usage.model.encode(str(assets / "meshes" / "box.obj"), loader=asset_loader(), progress=False)
    calls = CountCalls(monkeypatch)
    first = embed_folder(assets, out, usage, progress=False)
    assert (first.embedded, first.unchanged, first.failed, first.removed, first.rows) == (5, 0, 0, 0, 5)
    assert calls.objects == 5
    assert first.line() == f"{out}.safetensors: 5 embedded, 0 unchanged, 0 failed, 0 removed; 5 rows"
    index = EmbeddingIndex.load(out)
    assert index.model == usage.identity and index.teacher == usage.teacher_record
    assert index.settings == {"seed": 0, "mesh_gaussians": 10_000, "num_gaussians": N, "up": "auto"}
    assert sorted(index.ids) == sorted(p.relative_to(assets).as_posix() for p in find_asset_files(assets))
    assert all(Path(p).is_absolute() for p in index.paths)
    info = index.info("red_cube.ply")
    assert info["size"] == (assets / "red_cube.ply").stat().st_size and info["digest"].startswith("sha256:")
    assert torch.allclose(index.embeddings[index.ids.index("meshes/box.obj")], expected, atol=1e-5)
    before = {i: index.embeddings[r].clone() for r, i in enumerate(index.ids)}

    again = embed_folder(assets, out, usage, progress=False)
    assert (again.embedded, again.unchanged, again.removed, calls.objects) == (0, 5, 0, 5)

    # one changed (different object, distinct mtime), one added, one deleted, one only touched
    changed = write_object(assets / "shapes" / "blue_sphere.ply", "sphere", "red", seed=9)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    write_object(assets / "new" / "pink_mug.ply", "mug", "pink", seed=3)
    (assets / "green_torus.ply").unlink()
    touched = assets / "red_cube.ply"
    os.utime(touched, ns=(2_000_000_000, 2_000_000_000))
    third = embed_folder(assets, out, usage, progress=False)
    assert (third.embedded, third.unchanged, third.failed, third.removed, third.rows) == (2, 3, 0, 1, 5)
    assert calls.objects == 5 + 2
    index = EmbeddingIndex.load(out)
    assert "green_torus.ply" not in index and "new/pink_mug.ply" in index
    assert torch.equal(index.embeddings[index.ids.index("red_cube.ply")], before["red_cube.ply"])
    assert index.info("red_cube.ply")["mtime_ns"] == 2_000_000_000  # the touch is recorded, not re-embedded
    assert not torch.allclose(
        index.embeddings[index.ids.index("shapes/blue_sphere.ply")], before["shapes/blue_sphere.ply"]
    )
    assert embed_folder(assets, out, usage, progress=False).embedded == 0 and calls.objects == 7


def test_embed_reports_bad_files_and_refuses_another_model(usage, assets, tmp_path, capsys):
    (assets / "broken.splat").write_bytes(b"\x00" * 31)
    out = tmp_path / "index.safetensors"
    rc = main(["embed", str(assets), "--out", str(out), "--model", str(usage.source), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 3
    assert f"failed: {(assets / 'broken.splat').resolve()}: GaussianFormatError:" in captured.err
    assert captured.out.strip() == f"{out}: 5 embedded, 0 unchanged, 1 failed, 0 removed; 5 rows"
    other = write_model(tmp_path / "other", usage.teacher_record, seed=1)
    with pytest.raises(ConfigError, match="holds embeddings of model .* --overwrite"):
        embed_folder(assets, out, load_model(other, device="cpu"), progress=False)
    with pytest.raises(ConfigError, match="settings"):
        embed_folder(assets, out, usage, seed=1, progress=False)
    with pytest.raises(DatasetError, match="not a folder"):
        embed_folder(tmp_path / "none", out, usage)
    redo = embed_folder(assets, out, load_model(other, device="cpu"), overwrite=True, progress=False)
    assert (redo.embedded, redo.failed) == (5, 1) and EmbeddingIndex.load(out).model != usage.identity


# ---------------------------------------------------------------------------- search


@pytest.fixture
def gallery(usage, assets, tmp_path) -> Path:
    out = tmp_path / "gallery.safetensors"
    embed_folder(assets, out, usage, progress=False)
    return out


def test_search_like_finds_itself_and_text_orders(usage, teacher, gallery, assets, capsys, tmp_path):
    target = assets / "shapes" / "yellow_cone.ply"
    hits = search_index(gallery, like=target, k=3, model=usage)
    assert hits[0].path == str(target.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    index = EmbeddingIndex.load(gallery)
    query = teacher.encode_text(["a red cube"])[0]
    expected = (index.embeddings @ query).argsort(descending=True).tolist()
    text_hits = search_index(gallery, text="a red cube", k=5)  # the teacher comes from the index's record
    assert [h.row for h in text_hits] == expected and [h.score for h in text_hits] == sorted(
        [h.score for h in text_hits], reverse=True
    )

    assert main(["search", str(gallery), "--text", "a red cube", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [h.path for h in text_hits[:3]]
    assert [float(line.split(" ", 1)[0]) for line in lines] == pytest.approx([h.score for h in text_hits[:3]], abs=1e-4)

    assert main(["search", str(gallery), "--like", str(target), "--model", str(usage.source), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["query"] == {"kind": "like", "value": str(target)} and record["model"] == usage.identity
    assert [h["rank"] for h in record["hits"]] == [1, 2, 3, 4, 5] and record["hits"][0][
        "id"
    ] == "shapes/yellow_cone.ply"
    # --up names the axis of a --like file that declares none (a declared axis is taken at its word)
    plain = save_gaussians(load_gaussians(target), tmp_path / "undeclared.ply")
    scores = {}
    for up in ("+y", "+z"):
        assert main(["search", str(gallery), "--like", str(plain), "--model", str(usage.source), "--json", "--up",
                     up]) == 0  # fmt: skip
        scores[up] = [h["score"] for h in json.loads(capsys.readouterr().out)["hits"]]
    assert scores["+y"] == pytest.approx([h["score"] for h in record["hits"]], abs=1e-5) and scores["+z"] != scores["+y"]


def test_search_by_image_and_sheet(usage, gallery, assets, tmp_path, capsys):
    from PIL import Image

    from clip_gs.render import render_sheet

    photo = tmp_path / "photo.png"
    render_sheet(load_asset(assets / "red_cube.ply"), views=1, size=64).save(photo)
    hits = search_index(gallery, image=photo, k=4, model=usage)
    assert len(hits) == 4 and [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    sheet_path = tmp_path / "hits.png"
    assert main(["search", str(gallery), "--image", str(photo), "--k", "4", "--sheet", str(sheet_path),
                 "--sheet-size", "48"]) == 0  # fmt: skip
    assert f"wrote {sheet_path} (4 hits)" in capsys.readouterr().err
    assert Image.open(sheet_path).size == (2 * 50 + 2, 2 * 50 + 2)  # 2 x 2 tiles of 48 px, 2 px padding
    (assets / "red_cube.ply").unlink()  # a hit whose file is gone gets a labelled tile and a report
    red = next(h for h in search_index(gallery, like=assets / "shapes" / "blue_sphere.ply", k=5, model=usage)
               if h.id == "red_cube.ply")  # fmt: skip
    _, failures = hits_sheet([red], size=32)
    assert failures and failures[0][0] == red.path and "GaussianFormatError" in failures[0][1]
    with pytest.raises(ConfigError, match="cannot read the query image"):
        search_index(gallery, image=tmp_path / "missing.png")


def test_search_refuses_mismatched_sources(usage, gallery, tmp_path, capsys):
    other = load_model(write_model(tmp_path / "other", usage.teacher_record, seed=1), device="cpu")
    with pytest.raises(ConfigError, match="the query comes from model .* the index from model"):
        search_index(gallery, like=tmp_path / "any.ply", model=other)
    with pytest.raises(ConfigError, match="--like query .* pass --model"):
        search_index(gallery, like=tmp_path / "any.ply")
    index = EmbeddingIndex.load(gallery)
    foreign = EmbeddingIndex(256, model=usage.identity, teacher="open_clip:ViT-B-32/openai", settings=index.settings)
    foreign.add(index.ids, index.embeddings, index.paths)
    path = foreign.save(tmp_path / "foreign")
    with pytest.raises(
        ConfigError, match="the query comes from teacher 'file:synthetic-clip@.* the index from teacher"
    ):
        search_index(path, text="a cube", model=usage)
    assert main(["search", str(path), "--text", "a cube", "--model", str(usage.source)]) == 2
    assert "clip-gs search: error: the query comes from teacher" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="exactly one query"):
        search_index(gallery, text="a", image="b.png")
    with pytest.raises(GaussianFormatError, match="any.ply"):
        search_index(gallery, like=tmp_path / "any.ply", model=usage)


# ---------------------------------------------------------------------------- quality (a trained model)


@pytest.mark.slow
def test_trained_search_ranks_the_named_class_and_colour_first(trained_run, tmp_path):
    """Text queries naming a colour and a class rank the one object of that class and colour first,
    among 16 objects (4 classes x 4 colours, upright as real assets stand), with the CI-budget model
    (:data:`tests.conftest.TRAINED_RUN_BUDGET`): at least 15 of the 16 first and every one in the top 2
    (measured after issue #21's optimiser: 15 first; "a red cube" finds the red sphere by 0.005,
    its own object second), and the runner-up of a hit shares the class or the colour."""
    folder = tmp_path / "objects"
    classes, colours = ("cube", "sphere", "torus", "cone"), ("red", "blue", "green", "yellow")
    for c, shape in enumerate(classes):
        for k, colour in enumerate(colours):
            write_object(folder / f"{colour}_{shape}.ply", shape, colour, seed=100 + 4 * c + k, n=2048)
    out = tmp_path / "objects-index"
    summary = embed_folder(folder, out, trained_run.model_dir, progress=False)
    assert (summary.embedded, summary.failed) == (16, 0)
    first = 0
    for shape in classes:
        for colour in colours:
            hits = search_index(out, text=f"a {colour} {shape}", k=3)
            names = [Path(h.path).stem.split("_") for h in hits]
            assert [colour, shape] in names[:2], (shape, colour, [(h.id, h.score) for h in hits])
            if names[0] == [colour, shape]:
                first += 1
                assert names[1][0] == colour or names[1][1] == shape, (shape, colour, names)
    assert first >= 15, first


@pytest.mark.slow
def test_trained_classify_runs_on_every_real_file(trained_run, real_data, capsys):
    """Every shared real file (meshes of every format, 3DGS captures in compressed PLY and SPZ) is
    classified, except the one file that is not an object at all: a coloured point cloud without
    faces or Gaussian attributes, refused with a MeshError. And the answers mean something: the
    CI-budget model, trained on synthetic shapes only, names the real torus and the real sphere
    first among the 13 synthetic classes (measured: 0.95 and 0.99; the real cube it calls a sphere)."""
    files = [str(p) for p in find_asset_files(real_data)]
    rc = main(["classify", *files, "--model", str(trained_run.model_dir), "--label-set", "modelnet40", "--k", "3",
               "--json", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [r["file"] for r in records] == files
    failed = {Path(r["file"]).name: r["error"] for r in records if r["error"] is not None}
    assert rc == 3 and set(failed) == {"donut_color.ply"}, failed  # the point cloud, nothing else
    assert (
        failed["donut_color.ply"].startswith("GaussianFormatError") and "no triangle faces" in failed["donut_color.ply"]
    )
    assert f"failed: {real_data / 'gshairlod-donut' / 'donut_color.ply'}: " in captured.err
    modelnet = set(load_label_set("modelnet40"))
    for r in records:
        if r["error"] is None:
            scores = [lab["score"] for lab in r["labels"]]
            assert len(r["labels"]) == 3 and {lab["label"] for lab in r["labels"]} <= modelnet
            assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6  # a softmax's top 3
    primitives = [str(real_data / "odedstein-meshes" / name / f"{name}.obj") for name in ("torus", "sphere")]
    assert main(["classify", *primitives, "--model", str(trained_run.model_dir), "--label-set", "synthetic", "--k", "3",
                 "--json", "--quiet"]) == 0  # fmt: skip
    torus, sphere = json.loads(capsys.readouterr().out)
    assert torus["labels"][0]["label"] == "torus", torus
    assert sphere["labels"][0]["label"] == "sphere", sphere
