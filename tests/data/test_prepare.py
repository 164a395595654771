"""clip-gs prepare: sources, captions, splits, shards, manifest, failures, resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import pytest
import torch

from clip_gs import save_gaussians
from clip_gs.cli import main
from clip_gs.data.prepare import prepare_dataset
from clip_gs.data.prepare_settings import PrepareSettings, split_of
from clip_gs.data.shards import iter_records, write_split
from clip_gs.data.sources import list_sources, read_captions
from clip_gs.data.synthetic import SHAPE_NOUNS, SyntheticGaussianDataset
from clip_gs.data.triplets import Manifest, TripletSample
from clip_gs.errors import EXIT_SOME_FAILED, ConfigError, DatasetError, PreparedWithOtherSettingsError
from tests.helpers import (
    CLI_SETTINGS,
    PREPARE_SETTINGS,
    SYNTHETIC_SETTINGS,
    FakeTeacher,
    dataset_bytes,
    fake_sample,
    random_cloud,
)


def read_split(root, split):
    import litdata

    dataset = litdata.StreamingDataset(str(root / split))
    return [TripletSample.from_record(dataset[i], f"{split}[{i}]") for i in range(len(dataset))]


def tree_digest(root) -> dict:
    """Digest of every output file; LitData's index.json is compared without its write time."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".work" not in path.parts:
            data = path.read_bytes()
            if path.name == "index.json":
                index = json.loads(data)
                index.pop("updated_at")
                data = json.dumps(index, sort_keys=True).encode()
            digests[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return digests


def test_synthetic_source_to_shards_and_manifest(tmp_path):
    teacher = FakeTeacher()
    summary = prepare_dataset("synthetic:10", tmp_path / "out", teacher=teacher, settings=PREPARE_SETTINGS, progress=False)
    assert summary.total == summary.succeeded == 10 and summary.failed == 0
    assert sum(summary.counts.values()) == 10
    manifest = Manifest.read(tmp_path / "out")
    assert manifest.teacher == "fake:prepare-test" and manifest.embed_dim == 16
    assert manifest.counts == summary.counts and manifest.settings["views"] == 2
    samples = [
        s for split in ("train", "val", "test") if summary.counts[split] for s in read_split(tmp_path / "out", split)
    ]
    assert sorted(s.id for s in samples) == [f"synthetic-{i:06d}" for i in range(10)]
    sample = samples[0]
    assert sample.cloud.num_gaussians == 512 and len(sample.captions) == 3  # full, colour + class, class
    assert all(SHAPE_NOUNS[sample.label] in c for c in sample.captions)
    assert sample.image_embeddings.shape == (2, 16) and sample.viewmats.shape == (2, 4, 4)
    assert torch.allclose(sample.text_embeddings, teacher.encode_text(list(sample.captions)))
    assert {s.id: split_of(s.id, PREPARE_SETTINGS) for s in samples} == {
        s.id: split
        for split in ("train", "val", "test")
        if summary.counts[split]
        for s in read_split(tmp_path / "out", split)
    }


def test_auto_device_and_precision_are_resolved_before_any_work(tmp_path):
    """``--device auto --precision auto`` (the CLI's defaults) run as the device and precision they
    resolve to, and the work's settings record those, never "auto"."""
    from clip_gs.model.precision import resolve_device, teacher_precision

    prepare_dataset("synthetic:2", tmp_path / "out", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False,
                    device="auto", precision="auto")  # fmt: skip
    device = resolve_device("auto").type
    recorded = json.loads((tmp_path / "out" / ".work" / "settings.json").read_text())
    assert recorded.get("compute", {"device": "cpu", "precision": "fp32"}) == {
        "device": device, "precision": teacher_precision("auto", device)}  # fmt: skip


def test_synthetic_pose_setting_reaches_the_stored_clouds(tmp_path):
    settings = PrepareSettings(
        views=1, synthetic_gaussians=256, synthetic_pose="upright", val_fraction=0, test_fraction=0
    )
    prepare_dataset("synthetic:2", tmp_path / "out", teacher=FakeTeacher(), settings=settings, progress=False)
    assert Manifest.read(tmp_path / "out").settings["synthetic_pose"] == "upright"
    expected = SyntheticGaussianDataset(2, num_gaussians=256, pose="upright")
    for sample in read_split(tmp_path / "out", "train"):
        index = int(sample.id.removeprefix("synthetic-"))
        torch.testing.assert_close(sample.cloud.means, expected[index].cloud.means)
        assert not torch.allclose(sample.cloud.means, SyntheticGaussianDataset(2, num_gaussians=256)[index].cloud.means)
    with pytest.raises(ConfigError, match="synthetic_pose must be one of random, upright, canonical, got 'lying'"):
        PrepareSettings(synthetic_pose="lying")


def test_rerun_is_a_no_op_and_a_killed_run_resumes_to_the_same_shards(tmp_path):
    whole = prepare_dataset("synthetic:9", tmp_path / "whole", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False)
    digest = tree_digest(tmp_path / "whole")
    mtime = (tmp_path / "whole" / "train" / "index.json").stat().st_mtime_ns
    again_teacher = FakeTeacher()
    again = prepare_dataset("synthetic:9", tmp_path / "whole", teacher=again_teacher, settings=PREPARE_SETTINGS, progress=False)
    assert again.reused == 9 and again_teacher.calls == 0  # no rendering or teacher work redone
    assert tree_digest(tmp_path / "whole") == digest
    assert (tmp_path / "whole" / "train" / "index.json").stat().st_mtime_ns == mtime  # not even rewritten
    # a run stopped after 4 objects (as a kill leaves it), then rerun
    partial = prepare_dataset(
        "synthetic:9", tmp_path / "cut", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False, limit=4
    )
    assert partial.succeeded == 4 and not (tmp_path / "cut" / "manifest.json").exists()
    resumed = prepare_dataset("synthetic:9", tmp_path / "cut", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False)
    assert resumed.reused == 4 and resumed.succeeded == 9 == whole.succeeded
    assert tree_digest(tmp_path / "cut") == digest


def test_resuming_with_other_settings_or_teacher_is_refused(tmp_path):
    prepare_dataset("synthetic:3", tmp_path / "out", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False)
    with pytest.raises(DatasetError, match="other settings or another teacher.*--overwrite"):
        prepare_dataset(
            "synthetic:3", tmp_path / "out", teacher=FakeTeacher(), settings=PrepareSettings(views=3), progress=False
        )
    # the default pose is left out of the record (folders prepared before poses existed resume); another is refused
    assert "synthetic_pose" not in json.loads((tmp_path / "out" / ".work" / "settings.json").read_text())["settings"]
    with pytest.raises(DatasetError, match="other settings"):
        upright = dataclasses.replace(PREPARE_SETTINGS, synthetic_pose="upright")
        prepare_dataset("synthetic:3", tmp_path / "out", teacher=FakeTeacher(), settings=upright, progress=False)
    redone = prepare_dataset(
        "synthetic:3", tmp_path / "out", teacher=FakeTeacher(), settings=PrepareSettings(views=3, synthetic_gaussians=512),
        progress=False, overwrite=True,
    )  # fmt: skip
    assert redone.reused == 0 and Manifest.read(tmp_path / "out").settings["views"] == 3


def test_folder_with_labels_captions_and_a_bad_file(tmp_path, capsys):
    src = tmp_path / "src"
    for label, seed in (("chair", 0), ("chair", 1), ("lamp", 2)):
        (src / label).mkdir(parents=True, exist_ok=True)
        save_gaussians(random_cloud(300, seed=seed), src / label / f"obj{seed}.ply")
    (src / "lamp" / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nend_header\n")
    items = {i.id: i for i in list_sources(str(src), PREPARE_SETTINGS)}
    assert items["chair/obj0"].label == "chair" and items["chair/obj0"].captions == ("a 3D model of a chair.",)
    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption,label,split\nchair/obj1.ply,a wooden chair|a seat,chair,test\n")
    items = {i.id: i for i in list_sources(str(src), PREPARE_SETTINGS, captions)}
    assert items["chair/obj1"].captions == ("a wooden chair", "a seat") and items["chair/obj1"].split == "test"
    assert items["chair/obj0"].captions == ()  # not in the captions file: no caption is made up
    with pytest.raises(
        DatasetError, match=r"captions for 1 of 4 objects \(25.0%.*no caption for chair/obj0, lamp/broken"
    ):
        prepare_dataset(str(src), tmp_path / "out", teacher=FakeTeacher(), captions=captions, settings=PREPARE_SETTINGS,
                        progress=False)  # fmt: skip
    summary = prepare_dataset(str(src), tmp_path / "out", teacher=FakeTeacher(), captions=captions, settings=PREPARE_SETTINGS,
                              progress=False, min_caption_coverage=0.25)  # fmt: skip
    assert summary.failed == 1 and summary.succeeded == 3
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert failures[0]["path"].endswith("broken.ply") and failures[0]["error"] == "GaussianFormatError"  # nor a mesh
    assert "1 failed" in summary.line() and "failures.jsonl" in summary.line()
    (test_sample,) = read_split(tmp_path / "out", "test")
    assert test_sample.id == "chair/obj1" and test_sample.text_embeddings.shape == (2, 16)
    assert Manifest.read(tmp_path / "out").labels == ["chair", "lamp"]


def test_an_edited_input_is_prepared_again_and_the_rest_reused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for seed in range(3):
        save_gaussians(random_cloud(300, seed=seed), src / f"obj{seed}.ply")
    prepare_dataset(str(src), tmp_path / "out", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False)
    save_gaussians(random_cloud(400, seed=9), src / "obj1.ply")  # edited after it was prepared
    again = prepare_dataset(str(src), tmp_path / "out", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False)
    assert again.reused == 2 and again.succeeded == 3
    samples = {
        s.id: s
        for split in ("train", "val", "test")
        if again.counts[split]
        for s in read_split(tmp_path / "out", split)
    }
    assert samples["obj1"].cloud.num_gaussians == 400
    with pytest.raises(DatasetError, match="other settings"):  # another source into the same output
        prepare_dataset("synthetic:3", tmp_path / "out", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False)


def test_default_teacher_is_the_offline_one_when_the_papers_is_not_cached(tmp_path, monkeypatch):
    import socket

    from clip_gs.data.prepare import default_teacher
    from clip_gs.teachers import OFFLINE_TEACHER

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    connections = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connections.append(address))
    teacher = default_teacher()
    assert OFFLINE_TEACHER in str(teacher.identity)
    assert connections == []  # the cache is looked at, the network never asked


def test_the_offline_teacher_refuses_views_on_a_background_it_never_saw(tmp_path, capsys):
    """The offline teacher was trained on white views only (83% zero-shot there, chance on black):
    preparing black views with it is refused before any work, from Python and from the command line."""
    from clip_gs.teachers import load_teacher
    from clip_gs.teachers.synthetic import VIEW_BACKGROUNDS

    teacher = load_teacher("synthetic-clip")
    assert teacher.view_backgrounds == VIEW_BACKGROUNDS == ((1.0, 1.0, 1.0),)
    black = dataclasses.replace(PREPARE_SETTINGS, background=(0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match=r"synthetic-clip.*background \(1.0, 1.0, 1.0\) only.*\(0.0, 0.0, 0.0\)"):
        prepare_dataset("synthetic:2", tmp_path / "black", settings=black, teacher=teacher, progress=False)
    assert not (tmp_path / "black" / "manifest.json").exists()
    args = [
        "prepare",
        "synthetic:2",
        "--out",
        str(tmp_path / "cli"),
        "--teacher",
        "synthetic-clip",
        "--background",
        "black",
    ]
    assert main(args) == 2
    assert "trained on views rendered on background (1.0, 1.0, 1.0) only" in capsys.readouterr().err
    # white (the default) is what it knows; a teacher that names no backgrounds (a CLIP) takes any
    prepare_dataset("synthetic:2", tmp_path / "white", settings=PREPARE_SETTINGS, teacher=teacher, progress=False)
    assert sum(Manifest.read(tmp_path / "white").counts.values()) == 2
    prepare_dataset("synthetic:2", tmp_path / "fake", settings=black, teacher=FakeTeacher(), progress=False)


def _objaverse_folder(root, uids):
    """The ``objaverse`` package's layout: glbs/<shard>/<uid>.<ext> (3DGS files here, to keep it fast)."""
    for index, uid in enumerate(uids):
        folder = root / "glbs" / f"000-{index % 2:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_gaussians(random_cloud(200, seed=index), folder / f"{uid}.ply")


def test_cap3d_captions_in_the_objaverse_layout(tmp_path):
    """Cap3D's CSV has no header and is keyed by uid; the 000-NNN folders are storage, not labels."""
    uids = ["8476c4170df24cf5bbe6967222d1a42d", "c0b6e5e3b9f94bc7b8b9a1c3d2e1f0a9", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"]
    _objaverse_folder(tmp_path / "objaverse", uids)
    cap3d = tmp_path / "Cap3D_automated_Objaverse.csv"
    cap3d.write_text(f'{uids[0]},"a wooden chair, with four legs"\n{uids[1]},a red lamp\n{uids[2]},a blue mug\n')
    table = read_captions(cap3d)
    assert table[uids[0]]["captions"] == ["a wooden chair, with four legs"] and len(table) == 3
    items = {i.id: i for i in list_sources(str(tmp_path / "objaverse"), PREPARE_SETTINGS, cap3d)}
    assert sorted(items) == sorted(f"glbs/000-{i % 2:03d}/{u}" for i, u in enumerate(uids))
    assert all(item.captions and item.label is None for item in items.values())
    assert list_sources(str(tmp_path / "objaverse"), PREPARE_SETTINGS)[0].captions == ()  # no folder label made up
    summary = prepare_dataset(str(tmp_path / "objaverse"), tmp_path / "out", teacher=FakeTeacher(), captions=cap3d,
                              settings=PREPARE_SETTINGS, progress=False)  # fmt: skip
    assert summary.failed == 0 and summary.succeeded == 3
    manifest = Manifest.read(tmp_path / "out")
    assert manifest.caption_coverage == 1.0 and manifest.labels == []
    # a header with a uid column works too; a stem two files share matches neither of them
    headed = tmp_path / "headed.csv"
    headed.write_text(f"uid,caption\n{uids[1]},a lamp\n")
    assert read_captions(headed) == {uids[1]: {"captions": ["a lamp"], "label": None, "split": None}}
    save_gaussians(random_cloud(200, seed=9), tmp_path / "objaverse" / "glbs" / "000-001" / f"{uids[0]}.ply")
    twice = {i.id: i for i in list_sources(str(tmp_path / "objaverse"), PREPARE_SETTINGS, cap3d)}
    assert twice[f"glbs/000-000/{uids[0]}"].captions == () and twice[f"glbs/000-001/{uids[0]}"].captions == ()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n")
    with pytest.raises(DatasetError, match="row 1 has 3 fields; a CSV without a header must be Cap3D's uid,caption"):
        read_captions(bad)


def test_an_unmatched_captions_file_is_refused_before_any_work(tmp_path, capsys):
    _objaverse_folder(tmp_path / "objaverse", ["uid-a", "uid-b"])
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("glbs/uid-a,a chair\nglbs/uid-b,a lamp\n")  # keyed by something else
    teacher = FakeTeacher()
    with pytest.raises(
        DatasetError, match=r"captions for 0 of 2 objects.*no caption for glbs/000-000/uid-a, glbs/000-001/uid-b"
    ):
        prepare_dataset(str(tmp_path / "objaverse"), tmp_path / "out", teacher=teacher, captions=wrong, settings=PREPARE_SETTINGS,
                        progress=False)  # fmt: skip
    assert teacher.calls == 0 and not (tmp_path / "out" / "manifest.json").exists()
    args = ["prepare", str(tmp_path / "objaverse"), "--out", str(tmp_path / "cli"), "--captions", str(wrong),
            "--teacher", "synthetic-clip", "--quiet"]  # fmt: skip
    assert main(args) == 2
    assert "no caption for glbs/000-000/uid-a" in capsys.readouterr().err


def test_a_folder_source_never_falls_back_to_the_toy_teacher(tmp_path, monkeypatch):
    from clip_gs.errors import WeightsUnavailableError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    (tmp_path / "src").mkdir()
    save_gaussians(random_cloud(200, seed=0), tmp_path / "src" / "a.ply")
    with pytest.raises(
        WeightsUnavailableError, match="no --teacher given.*--teacher synthetic-clip for the offline toy"
    ):
        prepare_dataset(str(tmp_path / "src"), tmp_path / "out", settings=PREPARE_SETTINGS, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_read_captions_jsonl_and_errors(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "a", "captions": ["x", "y"], "label": "cup"}\n\n{"path": "b.ply", "caption": "z"}\n')
    table = read_captions(jsonl)
    assert table["a"] == {"captions": ["x", "y"], "label": "cup", "split": None} and table["b.ply"]["captions"] == ["z"]
    jsonl.write_text('{"id": "a"}\n')
    with pytest.raises(DatasetError, match="row 1 needs an id"):
        read_captions(jsonl)
    jsonl.write_text('{"id": "a", "caption": "x", "split": "holdout"}\n')
    with pytest.raises(DatasetError, match="split must be one of"):
        read_captions(jsonl)


def test_cli_prepare_exit_status_says_whether_something_failed(tmp_path, monkeypatch, capsys):
    import clip_gs.teachers

    monkeypatch.setattr(clip_gs.teachers, "load_teacher", lambda spec, **kwargs: FakeTeacher())
    src = tmp_path / "src"
    src.mkdir()
    save_gaussians(random_cloud(300), src / "good.ply")
    args = ["prepare", str(src), "--out", str(tmp_path / "out"), "--views", "2", "--quiet", "--teacher", "x"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prepared 1 of 1 objects" in out and "teacher fake:prepare-test" in out  # the choice is printed
    (src / "bad.splat").write_bytes(b"\x00" * 33)
    assert main(args) == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    assert "bad.splat" in captured.err and "1 reused from an earlier run, 1 failed" in captured.out
    synthetic = ["prepare", "synthetic:2", "--out", str(tmp_path / "up"), "--views", "1", "--quiet", "--teacher", "x",
                 "--synthetic-gaussians", "128", "--synthetic-pose", "upright"]  # fmt: skip
    assert main(synthetic) == 0
    assert Manifest.read(tmp_path / "up").settings["synthetic_pose"] == "upright"


@pytest.mark.slow
def test_real_meshes_and_real_splats_prepare(tmp_path, real_data):
    root = real_data
    meshes, splats = tmp_path / "meshes", tmp_path / "splats"
    for name in ("Duck.glb", "chair_model.obj", "teapot.stl"):
        (meshes / "trimesh").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "trimesh-models" / name, meshes / "trimesh" / name)
    splats.mkdir()
    for name in ("guitar.compressed.ply", "biker.spz"):
        shutil.copy(root / "playcanvas-splats" / name, splats / name)
    shutil.copy(root / "gshairlod-donut" / "donut_fused.ply", splats / "donut_fused.ply")
    for source, expected in ((meshes, 3), (splats, 3)):
        summary = prepare_dataset(str(source), tmp_path / f"out-{source.name}", teacher=FakeTeacher(),
                                  settings=PREPARE_SETTINGS, progress=False)  # fmt: skip
        print(summary.line())
        assert summary.failed == 0 and summary.succeeded == expected


@pytest.mark.slow
def test_a_prepare_killed_with_sigkill_resumes_to_the_same_shards(tmp_path):
    """A real `clip-gs prepare` process, killed mid-run, then rerun: the shards equal an
    uninterrupted run's, and the rerun does not redo the objects finished before the kill."""
    import signal
    import subprocess
    import sys
    import time

    args = ["synthetic:24", "--views", "2", "--synthetic-gaussians", "512", "--quiet"]

    def command(out):
        return [sys.executable, "-m", "clip_gs.cli", "prepare", *args, "--out", str(out)]

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(command(tmp_path / "whole"), check=True, env=env, capture_output=True)
    victim = subprocess.Popen(command(tmp_path / "cut"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    work = tmp_path / "cut" / ".work"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len([p for p in work.glob("*/*.json") if p.name != "settings.json"]) < 6:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finished = {p.name for p in work.glob("*/*.json") if p.name != "settings.json"}
    assert 6 <= len(finished) < 24 and not (tmp_path / "cut" / "manifest.json").exists()
    rerun = subprocess.run(command(tmp_path / "cut"), check=True, env=env, capture_output=True, text=True)
    assert f"{len(finished)} reused from an earlier run, 0 failed" in rerun.stdout
    assert tree_digest(tmp_path / "cut") == tree_digest(tmp_path / "whole")


# ---------------------------------------------------------------------------- faults and verify


class FlakyTeacher(FakeTeacher):
    """Fails (a raw RuntimeError, as a model would) on the captions or views of chosen objects."""

    def __init__(self, bad_words=(), nan_words=(), always=False):
        super().__init__()
        self.bad_words, self.nan_words, self.always = bad_words, nan_words, always

    def encode_text(self, texts):
        if self.always or any(w in t for t in texts for w in self.bad_words):
            raise RuntimeError(f"CUDA out of memory while embedding {texts[0]!r}")
        out = super().encode_text(texts)
        if any(w in t for t in texts for w in self.nan_words):
            out[0, 3] = float("nan")
        return out


def _labelled_folder(root, names=("lamp", "chair", "mug")):
    for seed, label in enumerate(names):
        (root / label).mkdir(parents=True, exist_ok=True)
        save_gaussians(random_cloud(300, seed=seed), root / label / f"obj{seed}.ply")
    return root


def test_a_teacher_exception_lists_that_object_and_the_run_goes_on(tmp_path):
    src = _labelled_folder(tmp_path / "src")
    summary = prepare_dataset(str(src), tmp_path / "out", teacher=FlakyTeacher(bad_words=("chair",), nan_words=("mug",)),
                              settings=PREPARE_SETTINGS, progress=False)  # fmt: skip
    assert summary.succeeded == 1 and summary.failed == 2
    failures = {
        f["id"]: f for f in (json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines())
    }
    assert failures["chair/obj1"]["error"] == "RuntimeError" and "out of memory" in failures["chair/obj1"]["message"]
    assert failures["chair/obj1"]["stage"] == "teacher"
    assert (
        failures["mug/obj2"]["error"] == "DatasetError"
        and "non-finite caption embeddings" in failures["mug/obj2"]["message"]
    )
    # a teacher that fails on every object stops the run and says why
    with pytest.raises(DatasetError, match="the teacher failed on the first 5 objects with RuntimeError.*recurs"):
        prepare_dataset("synthetic:8", tmp_path / "always", teacher=FlakyTeacher(always=True), settings=PREPARE_SETTINGS,
                        progress=False)  # fmt: skip


def test_a_record_without_its_blob_is_redone_and_a_cap_resamples(tmp_path):
    settings = dataclasses.replace(PREPARE_SETTINGS, max_gaussians=300)
    summary = prepare_dataset("synthetic:4", tmp_path / "out", teacher=FakeTeacher(), settings=settings, progress=False)
    assert summary.resampled == 4 and "4 resampled to --max-gaussians" in summary.line()
    work = tmp_path / "out" / ".work"
    metas = [json.loads(p.read_text()) for p in sorted(work.glob("*/*.json")) if "sha256" in p.read_text()]
    assert len(metas) == 4 and all(m["resampled_from"] == 512 for m in metas)
    blob = sorted(work.glob("*/*.blob"))[0]
    blob.unlink()
    again = prepare_dataset("synthetic:4", tmp_path / "out", teacher=FakeTeacher(), settings=settings, progress=False)
    assert again.reused == 3 and again.succeeded == 4 and blob.is_file()
    samples = [
        s for split in ("train", "val", "test") if again.counts[split] for s in read_split(tmp_path / "out", split)
    ]
    assert len(samples) == 4 and all(s.cloud.num_gaussians == 300 for s in samples)
    assert Manifest.read(tmp_path / "out").settings["max_gaussians"] == 300
    with pytest.raises(ConfigError, match="max_gaussians"):
        PrepareSettings(max_gaussians=0)


def test_verify_finds_a_flipped_byte(tmp_path, capsys):
    prepare_dataset("synthetic:6", tmp_path / "out", teacher=FakeTeacher(), settings=PREPARE_SETTINGS, progress=False)
    assert main(["verify", str(tmp_path / "out"), "--quiet"]) == 0
    assert "all intact" in capsys.readouterr().out
    chunk = sorted((tmp_path / "out" / "train").glob("*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record's tensors
    chunk.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path / "out"), "--quiet"]) == 3
    captured = capsys.readouterr()
    assert "1 damaged" in captured.out
    assert "damaged: train[" in captured.err and "checksum mismatch" in captured.err
    assert main(["verify", str(tmp_path / "nowhere"), "--quiet"]) == 2


# ---------------------------------------------------------------------------- outputs: S3, precision, precomputed embeddings

def records(n: int, start: int = 0) -> list[dict]:
    return [fake_sample(i).to_record() for i in range(start, start + n)]


def test_s3_chunks_stream_as_finished_and_a_killed_upload_resumes(s3_server):
    import boto3

    client = boto3.client("s3", **s3_server)
    client.create_bucket(Bucket="bucket")
    data = records(12)
    size = len(data[0]["blob"])

    def killed_after(n: int):
        yield from data[:n]
        raise KeyboardInterrupt  # the process is stopped here

    url = "s3://bucket/split"
    with pytest.raises(KeyboardInterrupt):
        write_split(killed_after(7), url, chunk_bytes=2 * size + 100, storage_options=s3_server)
    left = {o["Key"]: o for o in client.list_objects_v2(Bucket="bucket", Prefix="split/")["Contents"]}
    assert "split/index.json" not in left and len(left) >= 2  # finished chunks were uploaded before the end
    time.sleep(1.1)
    assert write_split(data, url, chunk_bytes=2 * size + 100, storage_options=s3_server) == 12
    after = {o["Key"]: o for o in client.list_objects_v2(Bucket="bucket", Prefix="split/")["Contents"]}
    assert all(after[key]["LastModified"] == obj["LastModified"] for key, obj in left.items())  # not sent again
    assert [r["id"] for r in iter_records(url, s3_server)] == [r["id"] for r in data]
    assert [r["blob"] for r in iter_records(url, s3_server)] == [r["blob"] for r in data]
    with pytest.raises(DatasetError, match="already holds a dataset"):
        write_split(data, url, storage_options=s3_server)
    # an unfinished upload of other records is not mixed into
    with pytest.raises(KeyboardInterrupt):
        write_split(killed_after(7), "s3://bucket/other", chunk_bytes=2 * size + 100, storage_options=s3_server)
    with pytest.raises(DatasetError, match="unfinished upload of other content"):
        write_split(records(12, start=50), "s3://bucket/other", chunk_bytes=2 * size + 100, storage_options=s3_server)


def test_precision_is_recorded_and_a_resume_in_another_is_refused(tmp_path):
    settings = PrepareSettings(views=1, synthetic_gaussians=256, val_fraction=0, test_fraction=0)
    bf16 = prepare_dataset("synthetic:2", tmp_path / "bf16", teacher="synthetic-clip", settings=settings,
                           progress=False, precision="bf16")  # fmt: skip
    fp32 = prepare_dataset(
        "synthetic:2", tmp_path / "fp32", teacher="synthetic-clip", settings=settings, progress=False
    )
    assert bf16.succeeded == fp32.succeeded == 2
    recorded = json.loads((tmp_path / "bf16" / ".work" / "settings.json").read_text())
    assert recorded["compute"] == {"device": "cpu", "precision": "bf16"}
    blobs = [hashlib.sha256((tmp_path / name / "train" / "chunk-0-0.bin").read_bytes()).hexdigest()
             for name in ("bf16", "fp32")]  # fmt: skip
    assert blobs[0] != blobs[1]  # the embeddings differ: a dataset is one precision
    with pytest.raises(PreparedWithOtherSettingsError):
        prepare_dataset("synthetic:2", tmp_path / "bf16", teacher="synthetic-clip", settings=settings, progress=False)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        prepare_dataset("synthetic:2", tmp_path / "fp16", teacher="synthetic-clip", settings=settings, progress=False,
                        precision="fp16")  # fmt: skip


def test_precomputed_embeddings_replace_rendering_and_give_the_same_dataset(tmp_path, single_process):
    from clip_gs.data.precomputed import write_embeddings
    from clip_gs.data.shards import TripletShardDataset
    from clip_gs.teachers import load_teacher

    teacher = load_teacher("synthetic-clip")
    rendered = tmp_path / "rendered"
    for split in ("train", "val", "test"):  # the single-process dataset's records, as a user's feature files
        (rendered / split).mkdir(parents=True)
        (rendered / split / "index.json").write_bytes(single_process[f"{split}/index.json"])
        (rendered / split / "chunk-0-0.bin").write_bytes(single_process[f"{split}/chunk-0-0.bin"])
        for sample in TripletShardDataset(rendered / split):
            write_embeddings(tmp_path / "features" / f"{sample.id}.safetensors", sample.image_embeddings,
                             str(teacher.identity), sample.text_embeddings, sample.viewmats, sample.Ks)  # fmt: skip
    summary = prepare_dataset("synthetic:12", tmp_path / "out", teacher=teacher, settings=SYNTHETIC_SETTINGS, progress=False,
                              embeddings=tmp_path / "features")  # fmt: skip
    assert summary.succeeded == 12
    assert dataset_bytes(tmp_path / "out") == single_process  # no view rendered, the same dataset
    # prepare's own orbit, declared: its cameras are recorded; the teacher embeds the captions
    write_embeddings(tmp_path / "orbit" / "synthetic-000000.safetensors", torch.ones(2, teacher.embed_dim) / 16,
                     "synthetic-clip")  # fmt: skip
    one = prepare_dataset("synthetic:1", tmp_path / "out-orbit", teacher=teacher, settings=SYNTHETIC_SETTINGS, progress=False,
                          embeddings=tmp_path / "orbit")  # fmt: skip
    assert one.succeeded == 1
    # refused, named: objects without a file; another teacher; another width
    with pytest.raises(DatasetError, match=r"no precomputed embeddings for 1 of 2 objects \(synthetic-000001\)"):
        prepare_dataset("synthetic:2", tmp_path / "x", teacher=teacher, settings=SYNTHETIC_SETTINGS, progress=False,
                        embeddings=tmp_path / "orbit")  # fmt: skip
    write_embeddings(tmp_path / "bad" / "synthetic-000000.safetensors", torch.ones(2, 8), "open_clip:ViT-B-32/openai")
    failed = prepare_dataset("synthetic:1", tmp_path / "y", teacher=teacher, settings=SYNTHETIC_SETTINGS, progress=False,
                             embeddings=tmp_path / "bad")  # fmt: skip
    assert failed.failed == 1 and "embeddings of teacher 'open_clip:ViT-B-32/openai'" in failed.failures[0]["message"]
    write_embeddings(tmp_path / "wide" / "synthetic-000000.safetensors", torch.ones(2, 8), "synthetic-clip")
    failed = prepare_dataset("synthetic:1", tmp_path / "z", teacher=teacher, settings=SYNTHETIC_SETTINGS, progress=False,
                             embeddings=tmp_path / "wide")  # fmt: skip
    assert f"image_embeddings must be [V >= 1, {teacher.embed_dim}], got [2, 8]" in failed.failures[0]["message"]


def test_the_scratch_work_folder_of_an_s3_output_goes_unless_kept(tmp_path, s3_server):
    """For an ``s3://`` output the work folder is local scratch: a finished run removes it, ``--keep-work``
    keeps it (fanned out by key prefix)."""
    import boto3

    from clip_gs.cli import main

    boto3.client("s3", **s3_server).create_bucket(Bucket="bucket")
    endpoint = ["--endpoint-url", s3_server["endpoint_url"]]
    assert main(["prepare", "synthetic:4", "--out", "s3://bucket/a", *endpoint, "--work-dir", str(tmp_path / "a"),
                 *CLI_SETTINGS]) == 0  # fmt: skip
    assert not (tmp_path / "a").exists()
    assert main(["prepare", "synthetic:4", "--out", "s3://bucket/b", *endpoint, "--work-dir", str(tmp_path / "b"),
                 "--keep-work", *CLI_SETTINGS]) == 0  # fmt: skip
    records = sorted((tmp_path / "b").glob("*/*.json"))
    assert len(records) == 4 and all(len(p.parent.name) == 2 for p in records)
