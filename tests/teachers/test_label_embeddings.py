"""Label-embedding files (``clip_gs.teachers.label_embeddings``, ``clip-gs labels``): the format, its
hostile-input reader, and their use wherever labels are taken: classify, eval (prepared split and
benchmark, both zero-shot protocols) and the demo (its examples, its cached label set, the Space's
choice of model).

Everything runs on a tiny random CLIP-GS in the offline teacher ``synthetic-clip``'s space (256-d):
the checks are that a file gives *the same numbers* as the text tower, not that they are good ones.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip_gs.cli import main
from clip_gs.data.synthetic import make_object
from clip_gs.errors import ConfigError, DatasetError, WeightsUnavailableError
from clip_gs.gaussians import save_gaussians
from clip_gs.model import create_model
from clip_gs.model.loaded import load_model
from clip_gs.teachers import TEMPLATES, TeacherMismatchError, load_teacher, zero_shot_weights
from clip_gs.teachers.label_embeddings import (
    FORMAT,
    MAX_CLASSES,
    LabelEmbeddings,
    compute_label_embeddings,
    is_label_embeddings_file,
    load_label_source,
    read_label_embeddings,
    write_label_embeddings,
)
from clip_gs.usage import classify_files

N = 256
OTHER_TEACHER = "open_clip:ViT-B-32/openai"
UNI3D_TEMPLATES = ["a point cloud model of {}.", "There is a {} in the scene."]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def teacher():
    return load_teacher("synthetic-clip")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, teacher) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    model = create_model("clip-gs-tiny", num_gaussians=N, num_groups=16, group_size=16, embed_dim=256, depth=2)
    model.save_pretrained(folder)
    (folder / "teacher.json").write_text(json.dumps({"teacher": str(teacher.identity), "embed_dim": 256}))
    return folder


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory, teacher) -> Path:
    """The synthetic label set's embeddings by the offline teacher, with the package's templates."""
    table = compute_label_embeddings(teacher, "synthetic")
    return write_label_embeddings(
        tmp_path_factory.mktemp("labels") / "synthetic.safetensors",
        table.names,
        table.weights,
        table.teacher,
        table.templates,
        table.prompt_rule,
        table.label_set,
    )


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("objects")
    paths = []
    for i, (shape, color) in enumerate((("torus", "red"), ("cube", "blue"), ("cone", "green"))):
        obj = make_object(shape, seed=i, num_gaussians=512, color=color, pattern="solid", pose="upright")
        paths.append(save_gaussians(obj.cloud, root / f"{color}-{shape}.ply"))
    return paths


def header_of(path: Path) -> tuple[dict, bytes]:
    """The safetensors header (JSON) and the data bytes of a file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw(path: Path, header: dict | bytes, data: bytes) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# ---------------------------------------------------------------------------- the format
def test_a_file_round_trips_exactly(teacher, tmp_path):
    table = compute_label_embeddings(teacher, "synthetic")
    assert table.names == tuple(load_label_source("synthetic")) and table.weights.shape == (13, 256)
    assert torch.equal(table.weights, zero_shot_weights(teacher, "synthetic", TEMPLATES).float())  # the one definition
    path = write_label_embeddings(tmp_path / "sub" / "s.safetensors", table.names, table.weights, table.teacher,
                                  table.templates, table.prompt_rule, "synthetic")  # fmt: skip
    assert not [p for p in path.parent.iterdir() if p != path]  # written atomically: no temporary left
    back = read_label_embeddings(path)
    assert isinstance(back, LabelEmbeddings) and torch.equal(back.weights, table.weights)
    assert (back.names, back.teacher, back.templates, back.prompt_rule, back.label_set, back.path, back.embed_dim) == (
        table.names,
        str(teacher.identity),
        tuple(TEMPLATES),
        "clip-gs",
        "synthetic",
        str(path),
        256,
    )
    assert header_of(path)[0]["__metadata__"]["format"] == FORMAT
    # verbatim (Uni3D's) prompts round-trip too, and a subset keeps the rows
    verbatim = compute_label_embeddings(teacher, ["cube", "torus"], UNI3D_TEMPLATES, "verbatim")
    again = read_label_embeddings(
        write_label_embeddings(
            tmp_path / "v.safetensors",
            verbatim.names,
            verbatim.weights,
            verbatim.teacher,
            verbatim.templates,
            "verbatim",
        )
    )
    assert again.templates == tuple(UNI3D_TEMPLATES) and again.prompt_rule == "verbatim"
    assert torch.equal(again.weights, zero_shot_weights(teacher, ["cube", "torus"], UNI3D_TEMPLATES, "verbatim"))
    assert torch.equal(back.select(["torus", "cube"]).weights, table.weights[[2, 1]])
    with pytest.raises(ConfigError, match=r"1 class\(es\) not among its 13: \['chair'\]"):
        back.select(["cube", "chair"])


def test_the_label_scheme_tells_files_from_sets():
    assert is_label_embeddings_file("lvis.safetensors") and is_label_embeddings_file(Path("a/B.SAFETENSORS"))
    assert not is_label_embeddings_file("modelnet40") and not is_label_embeddings_file("labels.txt")
    assert not is_label_embeddings_file(["a.safetensors"])
    assert load_label_source(["cube", "mug"]) == ["cube", "mug"]


def test_the_writer_refuses_what_the_reader_would(teacher, tmp_path):
    w = F.normalize(torch.randn(2, 8), dim=-1)
    with pytest.raises(ConfigError, match="must end in .safetensors"):
        write_label_embeddings(tmp_path / "x.bin", ["a", "b"], w, "t")
    with pytest.raises(ConfigError, match=r"x.safetensors: cannot write label embeddings: 3 names for 2 rows"):
        write_label_embeddings(tmp_path / "x.safetensors", ["a", "b", "c"], w, "t")
    with pytest.raises(ConfigError, match="not all finite"):
        write_label_embeddings(tmp_path / "x.safetensors", ["a", "b"], w * float("nan"), "t")
    with pytest.raises(ConfigError, match="duplicate names"):
        write_label_embeddings(tmp_path / "x.safetensors", ["a", "a"], w, "t")
    with pytest.raises(ConfigError, match="label-embedding file already"):
        compute_label_embeddings(teacher, "x.safetensors")
    assert not list(tmp_path.iterdir())


def hostile_cases(good: Path):
    """``(name, header or bytes, data, expected problem)``: each a file the reader must refuse."""
    header, data = header_of(good)
    meta = header["__metadata__"]
    c, e = header["weights"]["shape"]

    def with_meta(**changes):
        return {**header, "__metadata__": {**meta, **changes}}

    nan = bytearray(data)
    nan[0:4] = struct.pack("<f", float("nan"))
    scaled = struct.pack(f"<{c * e}f", *[2.0 * x for x in struct.unpack(f"<{c * e}f", data)])
    huge = {**header, "weights": {"dtype": "F32", "shape": [MAX_CLASSES, 16_384],
                                  "data_offsets": [0, MAX_CLASSES * 16_384 * 4]}}  # fmt: skip
    return [
        ("flat", {**header, "weights": {**header["weights"], "shape": [c * e]}}, data, "not [C, E]"),
        ("other-dim", with_meta(embed_dim="128"), data, "embed_dim '128' is not the weights' width 256"),
        ("nan", header, bytes(nan), "weights are not all finite"),
        ("not-unit", header, scaled, "rows are not unit vectors"),
        ("dupes", with_meta(names=json.dumps(["cube"] * c)), data, "duplicate names ['cube']"),
        ("count", with_meta(names=json.dumps(json.loads(meta["names"])[:-1])), data, f"{c - 1} names for {c} rows"),
        ("names-type", with_meta(names=json.dumps({"a": 1})), data, "names is not a JSON list of texts"),
        ("names-ints", with_meta(names=json.dumps(list(range(c)))), data, "names is not a JSON list of texts"),
        ("templates", with_meta(templates=json.dumps(["no placeholder"])), data, "with a '{}' each"),
        ("rule", with_meta(prompt_rule="shout"), data, "prompt rule 'shout'"),
        ("version", with_meta(format_version="2"), data, "format version '2'"),
        ("format", with_meta(format="something-else"), data, "format 'something-else'"),
        ("teacher", with_meta(teacher=""), data, "no teacher identity"),
        ("meta-int", {**header, "__metadata__": {**meta, "embed_dim": 256}}, data, "metadata is not a map of texts"),
        ("meta-extra", with_meta(extra="x"), data, "metadata keys are"),
        ("f16", {**header, "weights": {**header["weights"], "dtype": "F16"}}, data, "not float32"),
        ("tensors", {**header, "other": header["weights"]}, data, "not exactly the tensor 'weights'"),
        ("huge-shape", huge, data, f"weights [{MAX_CLASSES}, 16384] need"),
        ("giant-shape", {**header, "weights": {**header["weights"], "shape": [10**12, 10**9]}}, data, "outside [1.."),
        ("offsets", {**header, "weights": {**header["weights"], "data_offsets": [4, 4 + c * e * 4]}}, data, "need"),
        ("truncated", header, data[:-4], "holds"),
        ("repeated-key", json.dumps(header)[:-1].encode() + b', "__metadata__": {}}', data, "repeated key"),
        ("not-json", b"{not json", data, "header is not JSON"),
    ]


def test_hostile_files_get_typed_errors_naming_the_file(synthetic_file, tmp_path):
    for name, header, data, problem in hostile_cases(synthetic_file):
        path = write_raw(tmp_path / f"{name}.safetensors", header, data)
        with pytest.raises(DatasetError) as info:
            read_label_embeddings(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a valid label-embedding file: ") and problem in message, (name, message)
    # a header length beyond the file, a file too short, a folder, a missing file
    path = tmp_path / "big-header.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(DatasetError, match=re.escape(f"{path}: not a valid label-embedding file: declares a")):
        read_label_embeddings(path)
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(DatasetError, match="too short"):
        read_label_embeddings(tmp_path / "short.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(DatasetError, match="dir.safetensors"):
        read_label_embeddings(tmp_path / "dir.safetensors")
    with pytest.raises(DatasetError, match="absent.safetensors: cannot open"):
        read_label_embeddings(tmp_path / "absent.safetensors")


# ---------------------------------------------------------------------------- classify
def test_classify_with_a_file_equals_the_text_tower_and_loads_no_teacher(model_dir, synthetic_file, objects):
    with_tower = classify_files(objects, load_model(model_dir, device="cpu"), "synthetic", k=13, progress=False)
    usage = load_model(model_dir, device="cpu")
    with_file = classify_files(objects, usage, str(synthetic_file), k=13, progress=False)
    assert usage._teacher is None, "a label-embedding file needs no teacher"
    assert all(r.ok for r in with_file) and [r.labels for r in with_file] == [r.labels for r in with_tower]
    # a subset of its rows (LabelEmbeddings) scores as the names through the tower (encoded in other
    # batches: equal up to float rounding)
    subset = read_label_embeddings(synthetic_file).select(["torus", "cube", "cone"])
    by_rows = classify_files(objects, usage, subset, k=3, progress=False)
    tower_usage = load_model(model_dir, device="cpu")
    by_tower = classify_files(objects, tower_usage, ["torus", "cube", "cone"], k=3, progress=False)
    for rows, tower in zip(by_rows, by_tower):
        assert [s.label for s in rows.labels] == [s.label for s in tower.labels]
        assert [s.score for s in rows.labels] == pytest.approx([s.score for s in tower.labels], abs=1e-5)


def test_a_file_of_another_teacher_or_width_is_refused(model_dir, teacher, objects, tmp_path):
    usage = load_model(model_dir, device="cpu")
    w = F.normalize(torch.randn(2, 256), dim=-1)
    other = write_label_embeddings(tmp_path / "other.safetensors", ["cube", "torus"], w, OTHER_TEACHER)
    with pytest.raises(TeacherMismatchError) as info:
        classify_files(objects, usage, str(other), progress=False)
    message = str(info.value)
    assert str(other) in message and OTHER_TEACHER in message and str(teacher.identity) in message
    narrow = write_label_embeddings(tmp_path / "narrow.safetensors", ["cube", "torus"],
                                    F.normalize(torch.randn(2, 64), dim=-1), str(teacher.identity))  # fmt: skip
    with pytest.raises(ConfigError, match="64-dimensional rows"):
        classify_files(objects, usage, str(narrow), progress=False)
    assert usage._teacher is None


def test_the_labels_command_writes_what_classify_uses(model_dir, objects, tmp_path, capsys):
    out = tmp_path / "syn.safetensors"
    assert main(["labels", "--teacher", "synthetic-clip", "--label-set", "synthetic", "--out", str(out), "--device",
                 "cpu", "--quiet"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == str(out)
    table = read_label_embeddings(out)
    assert len(table) == 13 and table.label_set == "synthetic" and table.templates == tuple(TEMPLATES)
    assert main(["classify", str(objects[0]), "--model", str(model_dir), "--label-set", str(out), "--json",
                 "--quiet"]) == 0  # fmt: skip
    [record] = json.loads(capsys.readouterr().out)
    assert record["error"] is None and len(record["labels"]) == 5
    assert {r["label"] for r in record["labels"]} <= set(table.names)
    # the model's recorded teacher, names from --labels
    mine = tmp_path / "mine.safetensors"
    assert main(["labels", "--model", str(model_dir), "--labels", "cube, torus", "--out", str(mine), "--quiet"]) == 0
    assert read_label_embeddings(mine).names == ("cube", "torus")
    capsys.readouterr()
    assert main(["labels", "--teacher", "synthetic-clip", "--labels", "cube", "--out", str(tmp_path / "x.npy")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert main(["labels", "--teacher", "synthetic-clip", "--labels", "cube", "--templates", "uni3d", "--out",
                 str(tmp_path / "u.safetensors")]) == 2  # fmt: skip
    assert "--templates uni3d needs --uni3d-data" in capsys.readouterr().err
    absent = tmp_path / "none.safetensors"
    assert main(["classify", str(objects[0]), "--model", str(model_dir), "--label-set", str(absent), "--quiet"]) == 2
    assert "none.safetensors: cannot open" in capsys.readouterr().err


# ---------------------------------------------------------------------------- eval
def test_eval_on_a_prepared_split_with_a_file_equals_the_text_tower(teacher, synthetic_file, tmp_path):
    from clip_gs.data.triplets import Manifest
    from clip_gs.evaluation.sources import zero_shot_classes

    identity = str(teacher.identity)
    Manifest(teacher=identity, embed_dim=256, counts={"test": 1}, labels=["cube"]).write(tmp_path)
    names, weights, where = zero_shot_classes(tmp_path, "synthetic", teacher=teacher, dataset_teacher=identity)
    file_names, file_weights, file_where = zero_shot_classes(tmp_path, str(synthetic_file), dataset_teacher=identity)
    assert file_names == names and torch.equal(file_weights, weights) and file_where == str(synthetic_file)
    with pytest.raises(TeacherMismatchError) as info:
        zero_shot_classes(tmp_path, str(synthetic_file), dataset_teacher=OTHER_TEACHER)
    assert str(synthetic_file) in str(info.value) and OTHER_TEACHER in str(info.value) and identity in str(info.value)


def write_benchmark(root: Path) -> Path:
    """A ModelNet40-layout folder: two classes of synthetic-set shapes, two test meshes each."""
    import trimesh

    for folder, make in (("cone", lambda s: trimesh.creation.cone(0.5, 1.0 + s)),
                         ("cylinder", lambda s: trimesh.creation.cylinder(0.3, 1.0 + s))):  # fmt: skip
        (root / folder / "test").mkdir(parents=True)
        for i in range(2):
            make(0.2 * i).export(root / folder / "test" / f"{folder}_{i:04d}.off")
    return root


def run_eval(argv: list[str], out: Path) -> dict:
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "report.json").read_text())["tasks"]["zeroshot"]


def test_eval_on_a_benchmark_with_a_file_equals_the_text_tower_under_both_protocols(model_dir, synthetic_file, tmp_path,
                                                                                      capsys):  # fmt: skip
    root = write_benchmark(tmp_path / "ModelNet40")
    base = ["eval", "--model", str(model_dir), "--benchmark", "modelnet40", "--root", str(root), "--task", "zeroshot",
            "--mesh-gaussians", str(N), "--cache", str(tmp_path / "cache"), "--device", "cpu"]  # fmt: skip
    tower = run_eval([*base, "--label-set", "synthetic"], tmp_path / "tower")
    table = run_eval([*base, "--label-set", str(synthetic_file)], tmp_path / "file")
    assert tower["num_classes"] == table["num_classes"] == 13 and tower["num_samples"] == table["num_samples"] == 4
    keys = ("top1", "top3", "top5", "per_class")
    assert {k: table[k] for k in keys} == {k: tower[k] for k in keys}
    assert str(synthetic_file) in table["label_set"] and table["protocol"] == "clip-gs"
    # Uni3D's protocol: a file made with its templates and class list stands in for the tower
    uni3d = tmp_path / "uni3d"
    uni3d.mkdir()
    (uni3d / "templates.json").write_text(json.dumps({"modelnet40_64": UNI3D_TEMPLATES}))
    (uni3d / "labels.json").write_text(json.dumps({"modelnet40_openshape": ["cone", "cup", "cylinder"]}))
    made = tmp_path / "uni3d-modelnet.safetensors"
    assert (
        main(
            [
                "labels",
                "--teacher",
                "synthetic-clip",
                "--templates",
                "uni3d",
                "--uni3d-data",
                str(uni3d),
                "--uni3d-labels",
                "modelnet40_openshape",
                "--out",
                str(made),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert read_label_embeddings(made).prompt_rule == "verbatim"
    protocol = [*base, "--zeroshot-protocol", "uni3d", "--uni3d-data", str(uni3d)]
    tower = run_eval(protocol, tmp_path / "u-tower")
    table = run_eval([*protocol, "--label-set", str(made)], tmp_path / "u-file")
    assert table["protocol"] == "uni3d" and table["num_classes"] == 3
    assert (table["top1"], table["top3"], table["per_class"]) == (tower["top1"], tower["top3"], tower["per_class"])
    # a file made with the package's templates is refused for Uni3D's protocol, and the reverse
    capsys.readouterr()
    assert main([*protocol, "--label-set", str(synthetic_file), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(synthetic_file) in err and "made with 12 templates" in err and "uni3d zero-shot protocol" in err
    assert main([*base, "--label-set", str(made), "--out", str(tmp_path / "y")]) == 2
    assert "made with 2 templates" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the demo
def test_the_demo_cache_is_under_the_one_cache_root(tmp_path, monkeypatch):
    from clip_gs.demo import DemoSettings

    monkeypatch.setenv("CLIP_GS_CACHE", str(tmp_path / "root"))
    assert DemoSettings().cache == tmp_path / "root" / "demo"
    assert DemoSettings(cache_dir=tmp_path / "mine").cache == tmp_path / "mine"
    with pytest.raises(ConfigError, match="not both"):
        DemoSettings(labels="a, b", label_set="synthetic")


def test_the_demo_takes_the_one_label_scheme(monkeypatch):
    from clip_gs.cli import build_parser
    from clip_gs.demo.cli import settings_from_args

    monkeypatch.setenv("CLIP_GS_DEMO_LABEL_SET", "modelnet40")
    parse = build_parser().parse_args
    assert settings_from_args(parse(["demo"])).label_set == "modelnet40"
    settings = settings_from_args(parse(["demo", "--labels", "cube, torus"]))
    assert (settings.labels, settings.label_set) == ("cube, torus", None)
    settings = settings_from_args(parse(["demo", "--label-set", "lvis.safetensors"]))
    assert (settings.labels, settings.label_set) == (None, "lvis.safetensors")
    with pytest.raises(SystemExit):
        parse(["demo", "--labels", "a", "--label-set", "synthetic"])
    with pytest.raises(SystemExit):
        parse(["classify", "x.ply", "--model", "m", "--labels-file", "f.txt"])  # one scheme: no --labels-file


def test_the_demo_examples_exist_and_classify(model_dir, tmp_path):
    from clip_gs.demo import DemoService, DemoSettings
    from clip_gs.demo.examples import EXAMPLES

    service = DemoService(DemoSettings(model=str(model_dir), device="cpu", cache_dir=tmp_path / "cache"))
    files = service.examples()
    assert [f.name for f in files] == [e.file for e in EXAMPLES] and all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in files) < 1_000_000
    stamps = [f.stat().st_mtime_ns for f in files]
    assert [f.stat().st_mtime_ns for f in service.examples()] == stamps  # written once
    for path in files:
        result = service.classify(path, str(model_dir), "torus, mug, star prism, cone", k=2)
        assert result.ok and len(result.labels) == 2, (path, result.error)


def test_the_demo_label_set_is_encoded_once_and_then_needs_no_text_tower(model_dir, synthetic_file, objects, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    from clip_gs.demo import DemoService, DemoSettings
    from clip_gs.demo.app import model_status
    from clip_gs.model.loaded import LoadedModel

    settings = DemoSettings(model=str(model_dir), device="cpu", cache_dir=tmp_path / "cache", label_set="synthetic")
    first = DemoService(settings)
    table = first.label_embeddings(str(model_dir))
    assert Path(table.path).parent == tmp_path / "cache" / "labels" and len(table) == 13
    expected = first.classify(objects[0], str(model_dir), "torus, cube, cone", k=3)

    loads = []
    original = LoadedModel.teacher
    monkeypatch.setattr(LoadedModel, "teacher", lambda self: loads.append(self.source) or original(self))
    again = DemoService(settings)  # a later start: the cached file serves the labels
    assert torch.equal(again.label_embeddings(str(model_dir)).weights, table.weights)
    assert again.classify(objects[0], str(model_dir), "torus, cube, cone", k=3).labels == expected.labels
    assert again.default_labels(str(model_dir)) == (list(table.names), "the label set synthetic")
    assert loads == [], "no teacher is loaded when a label-embedding file serves the labels"
    pytest.importorskip("gradio")
    status, labels = model_status(again, str(model_dir))
    assert "Default labels: the label set synthetic (13 classes)" in status and "no text tower" in status
    assert labels.split(", ") == list(table.names)

    given = DemoService(DemoSettings(model=str(model_dir), device="cpu", cache_dir=tmp_path / "c2",
                                     label_set=str(synthetic_file)))  # fmt: skip
    assert given.label_embeddings(str(model_dir)).path == str(synthetic_file) and loads == []
    other = write_label_embeddings(tmp_path / "other.safetensors", ["cube"], F.normalize(torch.randn(1, 256), dim=-1),
                                   OTHER_TEACHER)  # fmt: skip
    refused = DemoService(DemoSettings(model=str(model_dir), device="cpu", cache_dir=tmp_path / "c3",
                                       label_set=str(other)))  # fmt: skip
    with pytest.raises(TeacherMismatchError, match=OTHER_TEACHER):
        refused.label_embeddings(str(model_dir))


def test_the_space_falls_back_to_its_offline_model_and_says_why(model_dir, tmp_path, offline_cache):
    from clip_gs.demo import DemoSettings
    from clip_gs.demo.space import SPACE_MODEL, space_service

    base = DemoSettings(device="cpu", cache_dir=tmp_path / "cache")
    service, notice = space_service(base, local=model_dir)
    assert service.settings.model == str(model_dir) and service.settings.label_set is None
    assert notice.startswith(
        f"Model `{model_dir.name}/`: the offline model shipped with this Space, because the "
        f"default `{SPACE_MODEL}` is not available here (WeightsUnavailableError: "
    )
    with pytest.raises(WeightsUnavailableError):
        service.model(SPACE_MODEL)
    service, notice = space_service(base, local=tmp_path / "no-model")
    assert service.settings.model is None and notice.startswith("No model: the default") and "no offline" in notice
    # the preferred model, when it loads, comes with its label set, encoded once and cached
    service, notice = space_service(base, local=None, preferred=str(model_dir), label_set="synthetic")
    assert service.settings.model == str(model_dir) and service.settings.label_set == "synthetic"
    assert notice.startswith(f"Model `{model_dir}` with the synthetic label set (13 classes, label embeddings cached")
    assert list((tmp_path / "cache" / "labels").glob("synthetic-*.safetensors"))
    # CLIP_GS_DEMO_MODEL wins
    service, notice = space_service(DemoSettings.from_env({"CLIP_GS_DEMO_MODEL": "org/x"}), local=model_dir)
    assert service.settings.model == "org/x" and "CLIP_GS_DEMO_MODEL" in notice
