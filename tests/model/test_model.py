"""CLIPGS: registry, shapes, invariances, Hub round trip, Uni3D conversion and the P&C baseline."""

from __future__ import annotations

import json

import pytest
import torch

from clip_gs import GaussianCloud, WeightsUnavailableError
from clip_gs.errors import CheckpointError, ConfigError, GaussianFormatError
from clip_gs.model import (
    CLIPGS,
    FEATURE_LAYOUT,
    CLIPGSConfig,
    PatchDropout,
    convert_uni3d_state_dict,
    create_model,
    get_model_config,
    list_models,
    preprocess_cloud,
)
from clip_gs.model.uni3d import GAUSSIAN_BRANCH_PREFIX, load_uni3d
from tests.conftest import real_file, requires_cuda
from tests.helpers import SMALL, full_model, random_cloud, randomize_batchnorm, tiny_model, uni3d_reference
from tests.uni3d_reference import deepspeed_model_states


def test_registry_has_the_uni3d_sizes():
    assert list_models(pretrained=False) == ["clip-gs-tiny", "clip-gs-small", "clip-gs-base", "clip-gs-large",
                                             "clip-gs-giant"]  # fmt: skip
    assert list_models() == list_models(pretrained=False) + list_models(pretrained=True)
    widths = [get_model_config(n).width for n in list_models(pretrained=False)]
    assert widths == [192, 384, 768, 1024, 1408]
    assert all(get_model_config(n).embed_dim == 1024 for n in list_models(pretrained=False))
    with pytest.raises(ConfigError, match="unknown model configuration 'clip-gs-huge'"):
        get_model_config("clip-gs-huge")
    with pytest.raises(ConfigError, match="unknown CLIPGSConfig field"):
        get_model_config("clip-gs-tiny", num_patches=3)
    with pytest.raises(ConfigError, match="num_groups 600 > num_gaussians 500"):
        CLIPGSConfig(num_gaussians=500, num_groups=600)
    with pytest.raises(ConfigError, match="serialization"):
        CLIPGSConfig(serialization=("peano",))


@pytest.mark.parametrize("name", ["clip-gs-tiny", "clip-gs-small"])
def test_encoder_output_shapes_and_unit_norm(name):
    model = create_model(name, **SMALL).eval()
    clouds = [random_cloud(700, seed=i) for i in range(3)]
    out = model.encode(clouds)
    assert out.shape == (3, 1024) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(model.encode(clouds[1]), out[1], atol=1e-6)  # batching does not mix objects


@pytest.mark.parametrize(
    ("name", "params_millions"),
    [("clip-gs-base", (85, 100)), ("clip-gs-large", (300, 330)), ("clip-gs-giant", (1000, 1050))],
)
def test_large_sizes_build_on_the_meta_device(name, params_millions):
    with torch.device("meta"):
        model = create_model(name)
    config = model.config
    assert len(model.encoder.blocks) == config.depth
    assert model.encoder.cls_token.shape == (1, 1, config.width)
    assert model.encoder.head.out_features == 1024
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert params_millions[0] < millions < params_millions[1]


def test_encode_real_donut_gives_a_unit_vector():
    path = real_file("gshairlod-donut/donut_fused.ply")
    embedding = create_model("clip-gs-tiny").encode(path)
    assert embedding.shape == (1024,)
    assert embedding.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_encoder_is_invariant_to_the_order_of_gaussians():
    model = full_model(fps_start="farthest")
    cloud = random_cloud(512, seed=3)
    perm = torch.randperm(512, generator=torch.Generator().manual_seed(1))
    a = model.encode(cloud)
    b = model.encode(cloud.index(perm))
    assert torch.allclose(a, b, atol=1e-5)


def test_fps_from_index_zero_depends_on_order_as_documented():
    model = tiny_model(fps_start="first")
    cloud = random_cloud(512, seed=3)
    perm = torch.randperm(512, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(model.encode(cloud), model.encode(cloud.index(perm)), atol=1e-5)


def test_q_and_minus_q_give_identical_embeddings():
    model = full_model()
    cloud = random_cloud(600, seed=5)
    assert torch.equal(model.encode(cloud), model.encode(cloud.replace(quats=-cloud.quats)))
    # rotations do reach the embedding (so the equality above is not vacuous)
    other = random_cloud(600, seed=6).quats
    assert not torch.allclose(model.encode(cloud), model.encode(cloud.replace(quats=other)), atol=1e-4)


def test_eval_is_deterministic_and_seed_controls_resampling():
    model = full_model()
    cloud = random_cloud(900, seed=6)
    assert torch.equal(model.encode(cloud, seed=1), model.encode(cloud, seed=1))
    assert not torch.equal(model.encode(cloud, seed=1), model.encode(cloud, seed=2))


def test_patch_dropout_only_in_training():
    drop = PatchDropout(0.5)
    tokens = torch.randn(2, 1 + 10, 4)
    drop.train()
    out = drop(tokens)
    assert out.shape == (2, 1 + 5, 4)
    assert torch.equal(out[:, 0], tokens[:, 0])  # cls token always kept
    drop.eval()
    assert drop(tokens) is tokens
    # the model's eval output does not depend on the patch dropout rate
    a, b = tiny_model(patch_dropout=0.0), tiny_model(patch_dropout=0.5)
    b.load_state_dict(a.state_dict())
    cloud = random_cloud(512)
    assert torch.equal(a.encode(cloud), b.encode(cloud))


def test_gaussian_branch_sees_non_positional_attributes():
    model = tiny_model()
    for p in model.encoder.tokenizer.gaussian_encoder.proj.parameters():  # zero-initialised
        torch.nn.init.normal_(p, std=0.1)
    cloud = random_cloud(512)
    other = cloud.replace(log_scales=cloud.log_scales + 1.0)
    assert not torch.allclose(model.encode(cloud), model.encode(other), atol=1e-4)
    pc = tiny_model(gaussian_branch=False)
    assert torch.equal(pc.encode(cloud), pc.encode(other))  # P&C baseline ignores scales


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_model()
    randomize_batchnorm(model)
    model.save_pretrained(tmp_path / "m")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "m").iterdir()}
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["name"] == "clip-gs-tiny" and config["num_groups"] == 32
    loaded = CLIPGS.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    cloud = random_cloud(600)
    assert torch.equal(model.encode(cloud), loaded.encode(cloud))


def test_from_pretrained_errors(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        CLIPGS.from_pretrained(tmp_path / "m")
    # weights of another architecture
    tiny_model(gaussian_branch=False).save_pretrained(tmp_path / "pc")
    config = json.loads((tmp_path / "pc" / "config.json").read_text())
    config["gaussian_branch"] = True
    (tmp_path / "pc" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing key"):
        CLIPGS.from_pretrained(tmp_path / "pc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        CLIPGS.from_pretrained(tmp_path / "empty")


def test_from_pretrained_takes_safe_config_overrides_and_refuses_the_rest(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    loaded = CLIPGS.from_pretrained(tmp_path / "m", num_gaussians=256, fps_start="farthest", map_location="cpu")
    assert loaded.config.num_gaussians == 256 and loaded.config.fps_start == "farthest"
    assert loaded.config.replace(num_gaussians=512, fps_start="first") == model.config
    assert loaded.encode(random_cloud(600)).shape == (1024,)
    loaded.save_pretrained(tmp_path / "again")  # what is saved is what the model runs
    assert json.loads((tmp_path / "again" / "config.json").read_text())["num_gaussians"] == 256
    with pytest.raises(ConfigError, match=r"unexpected keyword\(s\) \['typo'\]"):
        CLIPGS.from_pretrained(tmp_path / "m", num_gaussians=2048, typo=1)
    with pytest.raises(ConfigError, match=r"\['width'\] change the architecture"):
        CLIPGS.from_pretrained(tmp_path / "m", width=384)


def test_from_pretrained_map_location_is_where_the_model_lives(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    loaded = CLIPGS.from_pretrained(tmp_path / "m", map_location=torch.device("cpu"))
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}


@requires_cuda
def test_from_pretrained_map_location_cuda(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    loaded = CLIPGS.from_pretrained(tmp_path / "m", map_location="cuda")
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}
    assert loaded.encode(random_cloud(600)).device.type == "cpu"


def test_from_pretrained_offline_hub_repo_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailableError, match="clip-gs/does-not-exist"):
        CLIPGS.from_pretrained("clip-gs/does-not-exist", local_files_only=True)


# ---------------------------------------------------------------------------- Uni3D conversion


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "giant"])
def test_uni3d_state_dict_of_each_size_converts_without_leftovers(size):
    with torch.device("meta"):
        reference = uni3d_reference(size)
        model = create_model(f"clip-gs-{size}")
    uni3d = reference.uni3d_state_dict()
    assert any(".patch_embed." in k for k in uni3d["module"])  # the image parts are really there
    converted = convert_uni3d_state_dict(uni3d)
    own = model.state_dict()
    unexpected = set(converted) - set(own)
    missing = {k for k in set(own) - set(converted) if not k.startswith(GAUSSIAN_BRANCH_PREFIX)}
    assert not unexpected and not missing
    assert all(converted[k].shape == own[k].shape for k in converted)
    # fused qkv (q_bias / v_bias) for tiny, small, giant; split q/k/v projections for base, large
    fused = any(k.endswith("attn.qkv.weight") for k in converted)
    assert fused == (size in ("tiny", "small", "giant"))


def test_uni3d_final_norm_under_either_name():
    with torch.device("meta"):
        state = uni3d_reference("tiny").uni3d_state_dict()["module"]
    renamed = {k.replace("visual.fc_norm.", "visual.norm."): v for k, v in state.items()}
    assert "point_encoder.visual.norm.weight" in renamed
    assert "encoder.norm.weight" in convert_uni3d_state_dict(renamed)
    both = renamed | {"point_encoder.visual.fc_norm.weight": state["point_encoder.visual.fc_norm.weight"]}
    with pytest.raises(CheckpointError, match="both visual.norm and visual.fc_norm"):
        convert_uni3d_state_dict(both)
    with pytest.raises(CheckpointError, match="no CLIP-GS counterpart.*point_encoder.extra"):
        convert_uni3d_state_dict(state | {"point_encoder.extra.weight": torch.zeros(1)})


def test_pc_baseline_matches_the_reference_uni3d_forward(tmp_path):
    torch.manual_seed(0)
    reference = uni3d_reference("tiny", **SMALL).eval()
    randomize_batchnorm(reference)
    checkpoint = tmp_path / "model.pt"
    torch.save(reference.uni3d_state_dict(), checkpoint)
    model = load_uni3d(checkpoint, gaussian_branch=False, **SMALL).eval()
    assert model.config.name == "clip-gs-tiny"  # size inferred from the weights
    cloud = random_cloud(SMALL["num_gaussians"], seed=11)
    features = preprocess_cloud(cloud, model.config)
    with torch.no_grad():
        expected = reference(features[None, :, FEATURE_LAYOUT["xyz"]], features[None, :, FEATURE_LAYOUT["rgb"]])
        got = model(features[None])
    assert torch.allclose(got, expected, atol=1e-5)
    # with the Gaussian branch (zero-initialised output) the converted model starts as Uni3D
    full = load_uni3d(reference.uni3d_state_dict(), size="tiny", **SMALL).eval()
    with torch.no_grad():
        assert torch.allclose(full(features[None]), expected, atol=1e-5)


def test_deepspeed_layout_checkpoint_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    reference = uni3d_reference("tiny", **SMALL).eval()
    path = tmp_path / "model.pt"
    torch.save(deepspeed_model_states(reference.uni3d_state_dict()["module"]), path)
    with pytest.raises(Exception, match="Weights only load failed"):  # plain weights_only refuses it
        torch.load(path, weights_only=True)
    model = load_uni3d(path, gaussian_branch=False, **SMALL).eval()
    features = preprocess_cloud(random_cloud(SMALL["num_gaussians"], seed=4), model.config)[None]
    with torch.no_grad():
        expected = reference(features[..., FEATURE_LAYOUT["xyz"]], features[..., FEATURE_LAYOUT["rgb"]])
        assert torch.allclose(model(features), expected, atol=1e-5)


def test_checkpoint_pickled_under_numpy_1_names_loads(tmp_path):
    # Files written with NumPy 1.x name numpy.core.multiarray.scalar, now numpy._core's.
    import zipfile

    state = uni3d_reference("tiny", **SMALL).uni3d_state_dict()["module"]
    modern = tmp_path / "modern.pt"
    torch.save(deepspeed_model_states(state), modern)
    legacy = tmp_path / "legacy.pt"
    with zipfile.ZipFile(modern) as src, zipfile.ZipFile(legacy, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(legacy)
    model = load_uni3d(legacy, gaussian_branch=False, **SMALL)
    assert model.config.name == "clip-gs-tiny"


def test_unsafe_checkpoint_names_its_globals_and_the_opt_in(tmp_path):
    import fractions

    state = uni3d_reference("tiny", **SMALL).uni3d_state_dict()["module"]
    checkpoint = deepspeed_model_states(state) | {"best": fractions.Fraction(1, 3)}
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"not safe to unpickle: \['fractions.Fraction'\].*trusted_globals"):
        load_uni3d(path, **SMALL)
    # the documented opt-in for a trusted file
    model = load_uni3d(path, trusted_globals=["fractions.Fraction"], **SMALL)
    assert model.config.name == "clip-gs-tiny"


def test_from_uni3d_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt: cannot load checkpoint safely"):
        load_uni3d(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_uni3d(tmp_path / "absent.pt")
    small_state = uni3d_reference("tiny", **SMALL).uni3d_state_dict()
    with pytest.raises(CheckpointError, match="unknown Uni3D size"):
        load_uni3d(small_state, size="medium")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_uni3d(small_state, size="small")


def test_uni3d_hub_reference_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailableError, match="BAAI/Uni3D"):
        create_model("clip-gs-base", pretrained="hf://BAAI/Uni3D/modelzoo/uni3d-b/model.pt")


def test_preprocess_rejects_batched_clouds():
    batched = GaussianCloud.stack([random_cloud(10), random_cloud(10)])
    with pytest.raises(GaussianFormatError, match="one object"):
        preprocess_cloud(batched, get_model_config("clip-gs-tiny"))


# ---------------------------------------------------------------------------- channels-last tokenizer layers
def _channels_first_point_encoder(encoder, points):
    """Uni3D's mini-PointNet as Uni3D writes it: Conv1d modules on [M, C, K]."""
    b, g, k, _ = points.shape
    x = encoder.first_conv(points.reshape(b * g, k, 6).transpose(1, 2))
    x = torch.cat([x.amax(dim=2, keepdim=True).expand(-1, -1, k), x], dim=1)
    return encoder.second_conv(x).amax(dim=2).reshape(b, g, -1)


def _channels_first_gaussian_branch(branch, patch_features):
    """The Gaussian branch with its Conv1d / BatchNorm1d modules called on [M, C, K]."""
    from clip_gs.model.features import FEATURE_LAYOUT
    from clip_gs.ops import serialization_order

    b, g, k, _ = patch_features.shape
    x = branch.stem(patch_features)
    rel = patch_features[..., FEATURE_LAYOUT["xyz"]]
    orders = [torch.take_along_dim(x, serialization_order(rel, order, bits=branch.bits).unsqueeze(-1), dim=2)
              * (1 + branch.order_scale[i]) + branch.order_shift[i] for i, order in enumerate(branch.orders)]  # fmt: skip
    x = branch.convs(torch.stack(orders).reshape(-1, k, x.shape[-1]).transpose(1, 2)).amax(dim=2)
    return branch.proj(x.reshape(len(branch.orders), b, g, -1).mean(dim=0))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_channels_last_tokenizer_layers_equal_the_conv1d_modules(mode):
    """Both branches run their Conv1d parameters as matrix products (module docstring); values, every
    gradient and the BatchNorm running statistics equal those of the Conv1d / BatchNorm1d modules."""
    import copy

    from clip_gs.model.tokenizer import GaussianPatchEncoder, PointPatchEncoder

    torch.manual_seed(0)
    config = get_model_config("clip-gs-tiny", num_gaussians=256, num_groups=8, group_size=16)
    branch = GaussianPatchEncoder(config).double()
    torch.nn.init.normal_(branch.proj.weight)  # zero-initialised: make the output depend on everything
    torch.nn.init.normal_(branch.order_scale, std=0.3)
    cases = [(PointPatchEncoder(64).double(), _channels_first_point_encoder, torch.randn(2, 8, 16, 6, dtype=torch.float64)),
             (branch, _channels_first_gaussian_branch, torch.randn(2, 8, 16, 19, dtype=torch.float64))]  # fmt: skip
    for module, reference, x in cases:
        x.requires_grad_(True)
        for layer in module.modules():  # non-trivial running statistics for eval mode
            if isinstance(layer, torch.nn.BatchNorm1d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
        fast, slow = copy.deepcopy(module), copy.deepcopy(module)
        getattr(fast, mode)(), getattr(slow, mode)()
        out_fast, out_slow = fast(x), reference(slow, x)
        torch.testing.assert_close(out_fast, out_slow, atol=1e-10, rtol=1e-10)
        weights = torch.randn_like(out_fast)
        g_fast = torch.autograd.grad((out_fast * weights).sum(), [x, *fast.parameters()])
        g_slow = torch.autograd.grad((out_slow * weights).sum(), [x, *slow.parameters()])
        for a, b in zip(g_fast, g_slow):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)
        for a, b in zip(fast.buffers(), slow.buffers()):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
