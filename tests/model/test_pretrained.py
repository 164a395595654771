"""Named pretrained models (Uni3D's published checkpoints) found offline in the Hugging Face cache,
``create_model`` as the one constructor, and inputs brought into the model's frame."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from clip_gs import GaussianCloud, WeightsUnavailableError, create_model, load_asset, save_gaussians
from clip_gs.errors import CheckpointError, ConfigError
from clip_gs.gaussians.frames import MODEL_FRAME, frame_rotation, frame_viewmats, to_frame
from clip_gs.index import EmbeddingIndex
from clip_gs.model import FEATURE_LAYOUT, PRETRAINED, list_models, load_model, preprocess_cloud
from clip_gs.model.config import get_model_config
from clip_gs.model.pretrained import SOURCE_NAME, UNI3D_REPO, UNI3D_TEACHER
from tests.uni3d_reference import Uni3DPointEncoderReference, deepspeed_model_states


@pytest.fixture(scope="module")
def uni3d_tiny(tmp_path_factory) -> tuple[Uni3DPointEncoderReference, Path]:
    """Uni3D's own point encoder code at the published tiny size (random weights, batch-norm statistics
    set) and its weights as a DeepSpeed model-state file in Uni3D's layout."""
    torch.manual_seed(0)
    reference = Uni3DPointEncoderReference(get_model_config("clip-gs-tiny")).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("uni3d") / "model.pt"
    torch.save(deepspeed_model_states(reference.uni3d_state_dict()["module"]), path)
    return reference, path


def object_files(folder: Path) -> list[Path]:
    """Two 3DGS files that declare +Y up (no frame change) with different shapes and colours."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        n = 3000 + 500 * i
        cloud = GaussianCloud(
            means=torch.randn(n, 3, generator=g) * torch.tensor([1.0, 0.5 + i, 0.3]),
            sh=torch.rand(n, 1, 3, generator=g) - 0.5,
            opacity_logits=torch.randn(n, generator=g),
            log_scales=torch.randn(n, 3, generator=g) * 0.3 - 3,
            quats=torch.randn(n, 4, generator=g),
        )
        files.append(save_gaussians(cloud, folder / f"object{i}.ply", up_axis="+y"))
    return files


def reference_embeddings(reference, files: list[Path], config) -> torch.Tensor:
    """What Uni3D's code gives for the points clip-gs reads from ``files`` (same resampling seed)."""
    rows = []
    for path in files:
        features = preprocess_cloud(load_asset(path), config, seed=0)[None]
        with torch.no_grad():
            rows.append(reference(features[..., FEATURE_LAYOUT["xyz"]], features[..., FEATURE_LAYOUT["rgb"]])[0])
    return torch.stack(rows)


def test_named_model_from_the_hugging_face_cache_is_uni3d_offline(offline_cache, uni3d_tiny, tmp_path, capsys):
    """A file in Uni3D's published layout, where ``hf download`` puts it, serves ``--model uni3d-ti``
    offline: ``clip-gs embed`` gives the embeddings of Uni3D's own encoder code, and the converted folder
    records the teacher and its source."""
    from clip_gs.cli import main

    reference, checkpoint = uni3d_tiny
    offline_cache.place(UNI3D_REPO, PRETRAINED["uni3d-ti"].filename, checkpoint)
    files = object_files(tmp_path / "objects")
    out = tmp_path / "index.safetensors"
    assert main(["embed", str(tmp_path / "objects"), "--model", "uni3d-ti", "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0  # fmt: skip
    index = EmbeddingIndex.load(out)
    order = [index.ids.index(p.name) for p in files]
    loaded = load_model("uni3d-ti", device="cpu")
    expected = reference_embeddings(reference, files, loaded.model.config)
    torch.testing.assert_close(index.embeddings[order], expected, atol=1e-4, rtol=0)
    assert index.teacher == UNI3D_TEACHER == loaded.teacher_record  # chosen from the record, no flag
    folder = Path(os.environ["CLIP_GS_CACHE"]) / "models" / "uni3d-ti"
    source = json.loads((folder / SOURCE_NAME).read_text())
    assert source["source"] == f"hf://{UNI3D_REPO}/{PRETRAINED['uni3d-ti'].filename}"
    assert source["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert json.loads((folder / "teacher.json").read_text())["teacher"] == UNI3D_TEACHER
    assert loaded.model.config.name == "uni3d-ti" and not loaded.model.config.gaussian_branch
    # later uses load the converted folder: the Hub file is no longer needed
    shutil.rmtree(offline_cache.path)
    again = create_model("uni3d-ti")
    torch.testing.assert_close(again.encode(files, precision="fp32"), expected, atol=1e-4, rtol=0)


def test_classify_with_a_named_model_takes_its_teacher_from_the_record(offline_cache, uni3d_tiny, tmp_path, capsys):
    """``clip-gs classify --model uni3d-ti`` with a label-embedding file of Uni3D's teacher (no text tower
    here): the cosines are those of Uni3D's own embeddings, and no --teacher flag is needed; a file of
    another teacher is refused."""
    from clip_gs.cli import main
    from clip_gs.teachers.label_embeddings import write_label_embeddings

    reference, checkpoint = uni3d_tiny
    offline_cache.place(UNI3D_REPO, PRETRAINED["uni3d-ti"].filename, checkpoint)
    files = object_files(tmp_path / "objects")
    names = ["chair", "lamp", "table", "guitar"]
    weights = torch.nn.functional.normalize(
        torch.randn(len(names), 1024, generator=torch.Generator().manual_seed(2)), dim=-1
    )
    labels = write_label_embeddings(tmp_path / "labels.safetensors", names, weights, UNI3D_TEACHER)
    assert main(["classify", *map(str, files), "--model", "uni3d-ti", "--label-set", str(labels), "--k", "4",
                 "--json", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    expected = reference_embeddings(reference, files, load_model("uni3d-ti").model.config) @ weights.T
    for result, row in zip(results, expected):
        got = {entry["label"]: entry["cosine"] for entry in result["labels"]}
        torch.testing.assert_close(torch.tensor([got[n] for n in names]), row, atol=1e-4, rtol=0)
    other = write_label_embeddings(tmp_path / "other.safetensors", names, weights, "open_clip:ViT-B-32/openai")
    assert main(["classify", str(files[0]), "--model", "uni3d-ti", "--label-set", str(other), "--device", "cpu",
                 "--quiet"]) != 0  # fmt: skip
    assert "ViT-B-32" in capsys.readouterr().err


def test_a_local_uni3d_file_is_a_model_everywhere(offline_cache, uni3d_tiny, tmp_path):
    reference, checkpoint = uni3d_tiny
    files = object_files(tmp_path / "objects")
    loaded = load_model(str(checkpoint), device="cpu")
    assert loaded.teacher_record == UNI3D_TEACHER
    expected = reference_embeddings(reference, files, loaded.model.config)
    torch.testing.assert_close(loaded.model.encode(files, precision="fp32"), expected, atol=1e-4, rtol=0)


def test_offline_without_the_file_names_what_to_download(offline_cache):
    for name in ("uni3d-b-no-lvis", "uni3d-ti"):
        with pytest.raises(WeightsUnavailableError) as info:
            create_model(name)
        message = str(info.value)
        assert f"hf download BAAI/Uni3D modelzoo/{name}/model.pt" in message
        assert " MB)" in message and "BAAI/Uni3D" in message
    with pytest.raises(WeightsUnavailableError, match="hf download BAAI/Uni3D modelzoo/uni3d-g/model.pt"):
        load_model("uni3d-g")


def test_the_paper_initialisation_from_a_named_model(offline_cache, uni3d_tiny):
    """``create_model(config, pretrained=NAME)``: Uni3D's transformer and point branch, a new Gaussian
    branch whose zero output leaves the model Uni3D's at the start."""
    reference, checkpoint = uni3d_tiny
    offline_cache.place(UNI3D_REPO, PRETRAINED["uni3d-ti"].filename, checkpoint)
    model = create_model("clip-gs-tiny", pretrained="uni3d-ti")
    assert model.config.gaussian_branch and model.config.uni3d_model == "uni3d-ti"
    torch.manual_seed(1)
    cloud = GaussianCloud(torch.randn(12_000, 3), torch.rand(12_000, 1, 3), torch.randn(12_000),
                          torch.randn(12_000, 3) - 3, torch.randn(12_000, 4))  # fmt: skip
    features = preprocess_cloud(cloud, model.config)[None]
    with torch.no_grad():
        expected = reference(features[..., FEATURE_LAYOUT["xyz"]], features[..., FEATURE_LAYOUT["rgb"]])
        torch.testing.assert_close(model(features), expected, atol=1e-4, rtol=0)
    assert not model.training  # eval mode until asked (Lightning trains it)


def test_create_model_is_the_one_constructor():
    assert list_models(pretrained=True) == list(PRETRAINED)
    assert {"uni3d-b-no-lvis", "uni3d-l-no-lvis", "uni3d-g-no-lvis", "uni3d-ti"} <= set(list_models())
    random_tiny = create_model("clip-gs-tiny", num_groups=32, group_size=16, num_gaussians=512, precision="fp32")
    assert random_tiny.config.num_groups == 32 and random_tiny.precision == "fp32"
    with torch.device("meta"):
        base = create_model("uni3d-b-no-lvis", pretrained=False)  # its architecture, random weights
    assert (base.config.width, base.config.gaussian_branch) == (768, False)
    with pytest.raises(ConfigError, match="without published weights"):
        create_model("clip-gs-base", pretrained=True)
    with pytest.raises(ConfigError, match="precision"):
        create_model("clip-gs-tiny", precision="fp8")
    with pytest.raises(CheckpointError, match="no such model folder"):
        create_model("./no/such/folder")


# ---------------------------------------------------------------------------- frames


def test_frame_rotations_are_proper_and_invert():
    for up in ("+y", "-y", "+z", "-z"):
        q = frame_rotation(up)
        assert q.norm().item() == pytest.approx(1.0)
        back = frame_rotation(MODEL_FRAME, up)
        cloud = GaussianCloud(torch.randn(50, 3), torch.randn(50, 4, 3), torch.randn(50), torch.randn(50, 3),
                              torch.randn(50, 4))  # fmt: skip
        round_trip = to_frame(to_frame(cloud, up), MODEL_FRAME, up)
        torch.testing.assert_close(round_trip.means, cloud.means, atol=1e-5, rtol=0)
        torch.testing.assert_close(round_trip.sh, cloud.sh, atol=1e-5, rtol=0)
        assert back.shape == (4,)
    viewmats = torch.eye(4)[None]
    assert torch.equal(frame_viewmats(viewmats, MODEL_FRAME), viewmats)


@pytest.mark.parametrize("how", ["declared -y", "named -y", "declared +z", "auto capture"])
def test_a_capture_and_its_upright_copy_embed_the_same(tmp_path, how):
    """A y-down (or z-up) capture, declared in the file or named with ``up``, and its y-up copy give one
    embedding: every input is brought into the model's frame before it is encoded."""
    from clip_gs.gaussians.assets import asset_loader

    torch.manual_seed(3)
    n = 2000
    upright = GaussianCloud(torch.randn(n, 3) * torch.tensor([0.4, 1.0, 0.6]) + torch.tensor([0.0, 0.8, 0.0]),
                            torch.randn(n, 4, 3) * 0.3, torch.randn(n), torch.randn(n, 3) * 0.2 - 3,
                            torch.randn(n, 4))  # fmt: skip
    axis = how.split()[1]
    if how == "auto capture":
        axis = "-y"
    captured = to_frame(upright, MODEL_FRAME, axis)  # the same object standing with `axis` up
    assert not torch.allclose(captured.means, upright.means, atol=1e-3)
    up_copy = save_gaussians(upright, tmp_path / "upright.ply", up_axis="+y")
    if how.startswith("declared"):
        capture, loader = save_gaussians(captured, tmp_path / "capture.ply", up_axis=axis), asset_loader()
    elif how == "named -y":  # a file that declares nothing, named by the user
        capture, loader = save_gaussians(captured, tmp_path / "capture.ply"), asset_loader(up="-y")
    else:  # an undeclared 3DGS ply: the capture rule, y-down
        capture, loader = save_gaussians(captured, tmp_path / "capture.ply"), asset_loader()
    model = create_model("clip-gs-tiny", num_gaussians=1024, num_groups=32, group_size=16, embed_dim=64)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a model that is not symmetric by accident of its init
    expected = model.encode(up_copy, precision="fp32")
    got = model.encode(capture, precision="fp32", loader=loader)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)
    if how != "declared +z":  # the raw file really differs: without the frame the embedding changes
        raw = model.encode(capture, precision="fp32", loader=asset_loader(frame=None))
        assert (raw - expected).abs().max() > 1e-3


def test_cli_up_flag_reaches_the_loader(tmp_path):
    """``--up -y`` on an undeclared file embeds it as its upright copy (the CLI path of the frame rule)."""
    from clip_gs.cli import main

    torch.manual_seed(5)
    n = 1500
    upright = GaussianCloud(torch.randn(n, 3) * torch.tensor([0.3, 1.0, 0.5]), torch.rand(n, 1, 3), torch.randn(n),
                            torch.randn(n, 3) * 0.2 - 3, torch.randn(n, 4))  # fmt: skip
    model = create_model("clip-gs-tiny", num_gaussians=1024, num_groups=32, group_size=16, embed_dim=256)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_gaussians(upright, tmp_path / "a" / "x.ply", up_axis="+y")
    save_gaussians(to_frame(upright, MODEL_FRAME, "+z"), tmp_path / "b" / "x.ply")  # undeclared, z-up
    teacher = ["--teacher", "synthetic-clip"]
    for folder, extra in (("a", []), ("b", ["--up", "+z"])):
        assert (
            main(
                [
                    "embed",
                    str(tmp_path / folder),
                    "--model",
                    str(tmp_path / "model"),
                    "--out",
                    str(tmp_path / f"{folder}.safetensors"),
                    "--device",
                    "cpu",
                    "--quiet",
                    *teacher,
                    *extra,
                ]
            )
            == 0
        )
    a, b = (EmbeddingIndex.load(tmp_path / f"{f}.safetensors") for f in "ab")
    assert b.settings["up"] == "+z"
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=2e-4, rtol=0)
