"""The fast paths of the encoder: inference path vs module path vs reference, bf16 vs fp32,
the weight cache, and ``encode`` with loader workers. No timing assertions (see benchmarks/)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip_gs import FEATURE_LAYOUT, ConfigError, GaussianFormatError, save_gaussians
from clip_gs.model import CLIPGS
from clip_gs.model.clipgs import preprocess_cloud
from clip_gs.model.precision import DerivedWeights, bf16_supported, cpu_flags, resolve_precision
from clip_gs.model.tokenizer import fold_batchnorm
from tests.test_cloud import random_cloud
from tests.test_model import SMALL, full_model, randomize_batchnorm, tiny_model, uni3d_reference


def batch_features(model: CLIPGS, count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.stack([preprocess_cloud(random_cloud(700, seed=seed + i), model.config) for i in range(count)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def test_fp32_inference_path_equals_the_module_path():
    model = full_model()
    features = batch_features(model)
    module_path = model(features)  # autograd on: the layers as declared
    with torch.no_grad():
        inference_path = model(features)
        tokens_fast, centers_fast = model.encoder.tokenizer(features, compute_dtype=torch.float32)
    tokens, centers = model.encoder.tokenizer(features)
    assert torch.equal(centers_fast, centers)
    assert torch.allclose(tokens_fast, tokens.detach(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(inference_path, module_path.detach(), atol=1e-5)
    # the Gaussian branch really contributes (so the comparison above covers it)
    gaussian = model.encoder.tokenizer.gaussian_encoder
    with torch.no_grad():
        assert gaussian(torch.randn(2, 4, 16, 19)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "block",
    [
        dict(qkv_fused=False, swiglu_mlp=True, scale_mlp=True),  # Uni3D base / large blocks
        dict(qkv_fused=True, swiglu_mlp=False, scale_mlp=False, mlp_ratio=4.0),  # giant blocks
    ],
)
def test_fp32_inference_path_equals_the_module_path_for_every_block_variant(block):
    model = full_model(**block)
    features = batch_features(model, count=2)
    module_path = model(features).detach()
    with torch.no_grad():
        assert torch.allclose(model(features), module_path, atol=1e-5)
        assert cosine(model(features, precision="bf16"), module_path).min() >= 0.999


def test_fp32_inference_path_matches_the_reference_uni3d_forward():
    torch.manual_seed(0)
    reference = uni3d_reference("tiny", **SMALL).eval()
    randomize_batchnorm(reference, seed=3)
    model = CLIPGS.from_uni3d(reference.uni3d_state_dict(), size="tiny", gaussian_branch=False, **SMALL).eval()
    features = batch_features(model, count=4, seed=20)
    with torch.inference_mode():
        expected = reference(features[..., FEATURE_LAYOUT["xyz"]], features[..., FEATURE_LAYOUT["rgb"]])
        got = model(features, precision="fp32")
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("gaussian_branch", [False, True])
def test_bf16_agrees_with_fp32(gaussian_branch):
    model = full_model() if gaussian_branch else tiny_model(gaussian_branch=False)
    features = batch_features(model, count=4, seed=7)
    with torch.inference_mode():
        fp32 = model(features, precision="fp32")
        bf16 = model(features, precision="bf16")
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # really computed in another precision
    assert cosine(fp32, bf16).min() >= 0.999
    # the module path under autocast (training-style) agrees too
    autocast = model(features, precision="bf16").detach()
    assert cosine(fp32, autocast).min() >= 0.999


def test_encode_precision_fp32_is_exactly_the_fp32_forward():
    model = full_model()
    clouds = [random_cloud(700, seed=i) for i in range(3)]
    features = torch.stack([preprocess_cloud(c, model.config) for c in clouds])
    with torch.no_grad():
        expected = model(features)
    assert torch.equal(model.encode(clouds, precision="fp32"), expected)
    with torch.no_grad():
        expected_bf16 = model(features, precision="bf16")
    assert torch.equal(model.encode(clouds, precision="bf16"), expected_bf16)


def test_invalid_precision_raises_config_error():
    model = tiny_model()
    cloud = random_cloud(600)
    with pytest.raises(ConfigError, match="precision must be one of .*'fp16'"):
        model.encode(cloud, precision="fp16")
    with pytest.raises(ConfigError, match="precision"), torch.no_grad():
        model(batch_features(model, count=1), precision="half")
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("float32")


def test_auto_precision_follows_the_hardware():
    expected = torch.bfloat16 if bf16_supported("cpu") else torch.float32
    assert resolve_precision("auto", "cpu") == expected
    flags = cpu_flags()
    if bf16_supported("cpu"):
        assert flags & {"avx512_bf16", "amx_bf16", "bf16"}
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16


def test_encode_with_workers_equals_encode_in_process(tmp_path):
    model = full_model()
    paths = []
    for i, n in enumerate([700, 450, 900, 512, 600]):  # fewer and more Gaussians than num_gaussians
        paths.append(save_gaussians(random_cloud(n, degree=1, seed=i), tmp_path / f"object_{i}.ply"))
    in_process = model.encode(paths, batch_size=2, num_workers=0, precision="fp32")
    workers = model.encode(paths, batch_size=2, num_workers=2, precision="fp32")
    assert in_process.shape == (5, 1024)
    assert torch.equal(workers, in_process)
    default_precision = [model.encode(paths, batch_size=2, num_workers=w) for w in (2, 0)]
    assert torch.equal(*default_precision)
    # a single path gives its row of the batch (up to the batch-size dependent rounding of matmuls)
    assert torch.allclose(model.encode(paths[2], precision="fp32"), in_process[2], atol=1e-5)


def test_encode_names_the_file_that_fails_to_load(tmp_path):
    model = tiny_model()
    good = save_gaussians(random_cloud(600), tmp_path / "good.ply")
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nend_header\n")
    for workers in (0, 2):
        with pytest.raises(GaussianFormatError, match="broken.ply"):
            model.encode([good, good, bad, good], batch_size=1, num_workers=workers)


def test_cached_inference_weights_follow_parameter_updates():
    a, b = full_model(seed=0), full_model(seed=1)
    torch.manual_seed(5)
    state = b.state_dict()
    b.load_state_dict({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()})
    features = batch_features(a)
    with torch.no_grad():
        before = a(features, precision="bf16")  # builds the caches of a
        a.load_state_dict(b.state_dict())  # in-place copies: the caches must notice
        after = a(features, precision="bf16")
        expected = b(features, precision="bf16")
    assert not torch.allclose(before, after)
    assert torch.equal(after, expected)


def test_derived_weights_rebuild_only_on_change():
    layer = torch.nn.Linear(3, 2)
    cache, calls = DerivedWeights(), []

    def build(dtype):
        calls.append(dtype)
        return layer.weight.to(dtype)

    cache.get(layer, torch.bfloat16, build)
    cache.get(layer, torch.bfloat16, build)
    assert calls == [torch.bfloat16]
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert torch.equal(cache.get(layer, torch.bfloat16, build), layer.weight.detach().to(torch.bfloat16))
    assert calls == [torch.bfloat16, torch.bfloat16]
    # a replaced parameter (new storage, version 0 again) is seen too, however often it happens
    for i in range(20):
        layer.weight = torch.nn.Parameter(torch.full((2, 3), float(i)))
        assert torch.equal(cache.get(layer, torch.bfloat16, build), torch.full((2, 3), float(i), dtype=torch.bfloat16))


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_equals_the_layers(bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 7, kernel_size=3, stride=2, padding=1, bias=bias)
    bn = torch.nn.BatchNorm1d(7).eval()
    randomize_batchnorm(bn)
    x = torch.randn(4, 5, 11)
    with torch.no_grad():
        expected = bn(conv(x))
        weight, folded_bias = fold_batchnorm(conv.weight, conv.bias, bn)
        got = F.conv1d(x, weight, folded_bias, stride=2, padding=1)
        linear = torch.nn.Linear(5, 7)
        w2, b2 = fold_batchnorm(linear.weight, linear.bias, bn)
        rows = torch.randn(9, 5)
        assert torch.allclose(F.linear(rows, w2, b2), bn(linear(rows)), atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(conv(x), expected, atol=1e-2)  # the BatchNorm is not trivial


def test_inference_path_refuses_training_mode():
    model = tiny_model()
    model.train()
    with pytest.raises(ConfigError, match="eval mode"), torch.no_grad():
        model.encoder.forward_features(batch_features(model, count=1), compute_dtype=torch.float32)


def test_compile_failure_falls_back_to_eager_blocks(monkeypatch):
    from clip_gs.model import encoder as encoder_module

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(encoder_module, "_compiled_block_inference", lambda: broken)
    model = full_model()
    features = batch_features(model)
    with torch.no_grad():
        eager = model(features, precision="bf16")
        model.encoder.set_compile(True)
        with pytest.warns(UserWarning, match="torch.compile of the encoder blocks failed.*no C\\+\\+ compiler"):
            fallback = model(features, precision="bf16")
    assert torch.equal(fallback, eager)
    assert model.encoder.compile_blocks is False  # warned once, then eager


@pytest.mark.slow
def test_compiled_blocks_agree_with_eager():
    model = full_model()
    features = batch_features(model)
    with torch.no_grad():
        eager = model(features, precision="fp32")
        model.encoder.set_compile(True)
        compiled = model(features, precision="fp32")
    assert model.encoder.compile_blocks  # really compiled, no fallback
    assert torch.allclose(compiled, eager, atol=1e-4)


def test_inference_chunking_does_not_change_tokens():
    model = full_model()
    features = batch_features(model)  # 3 x 32 = 96 patches: one chunk by default
    tokenizer = model.encoder.tokenizer
    with torch.no_grad():
        whole, _ = tokenizer(features, compute_dtype=torch.float32)
        tokenizer.inference_chunk_groups = 7  # uneven chunks, the last one partial
        chunked, _ = tokenizer(features, compute_dtype=torch.float32)
    assert torch.allclose(chunked, whole, rtol=1e-5, atol=1e-5)  # only float rounding differs


def test_clear_inference_cache_frees_and_rebuilds():
    model = full_model()
    features = batch_features(model)
    with torch.no_grad():
        first = model(features, precision="bf16")
        caches = [m._derived for m in model.encoder.modules() if isinstance(getattr(m, "_derived", None), DerivedWeights)]
        assert len(caches) == 3 + model.config.depth and all(c._entries for c in caches)  # tokenizer parts + blocks
        model.encoder.clear_inference_cache()
        assert not any(c._entries for c in caches)
        assert torch.equal(model(features, precision="bf16"), first)


def test_model_built_under_inference_mode_encodes():
    with torch.inference_mode():
        model = tiny_model()
        embedding = model.encode(random_cloud(600), precision="fp32")
    assert embedding.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_encode_restores_every_submodule_mode():
    model = tiny_model()
    model.train()
    model.encoder.tokenizer.eval()  # e.g. frozen BatchNorms during fine-tuning
    model.encode(random_cloud(600))
    assert model.training and model.encoder.blocks.training
    assert not model.encoder.tokenizer.training and not model.encoder.tokenizer.point_encoder.training


def test_moving_the_model_drops_cached_inference_weights():
    model = full_model()
    with torch.no_grad():
        model(batch_features(model, count=1), precision="bf16")
    caches = [m._derived for m in model.encoder.modules() if isinstance(getattr(m, "_derived", None), DerivedWeights)]
    assert any(c._entries for c in caches)
    model.to(torch.float64)
    assert not any(c._entries for c in caches)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_backpropagates_through_the_module_path(precision):
    model = full_model(patch_dropout=0.5, drop_path_rate=0.1).train()
    features = batch_features(model, count=2)
    embeddings = model(features, precision=precision)
    loss = (embeddings @ embeddings.T).sum()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["encoder.tokenizer.gaussian_encoder.proj.weight"].abs().sum() > 0
    assert grads["encoder.blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert grads["encoder.tokenizer.point_encoder.first_conv.0.weight"].abs().sum() > 0
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
