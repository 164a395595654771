"""The fused inference form vs the module path vs the Uni3D reference, bf16 vs fp32, and the
absence of hidden state on the trainable module. No timing assertions (see benchmarks/)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip_gs.errors import ConfigError
from clip_gs.model import CLIPGS, FEATURE_LAYOUT, CLIPGSConfig, FusedEncoder, preprocess_cloud
from clip_gs.model.fused_kernels import fold_batchnorm
from clip_gs.model.precision import bf16_supported, cpu_flags, resolve_precision
from clip_gs.model.uni3d import load_uni3d
from tests.helpers import SMALL, full_model, random_cloud, randomize_batchnorm, tiny_model, uni3d_reference


def batch_features(model: CLIPGS, count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.stack([preprocess_cloud(random_cloud(700, seed=seed + i), model.config) for i in range(count)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """``|got - expected| <= rel * max|expected|`` everywhere: a tolerance scaled to the values'
    magnitude. Folding BatchNorm reassociates float32 sums, so an entry near zero can differ by
    far more than ``rel`` relative to itself (measured: 1.3e-5 absolute, 8e-4 relative, on an
    AVX2-only CPU), while no entry differs by more than float rounding of the tensor's scale."""
    scale = expected.abs().max().item()
    error = (got - expected).abs().max().item()
    assert error <= rel * scale, f"max error {error:.3g} > {rel} x scale {scale:.3g}"


def test_tolerance_helper_accepts_reassociation_near_zero_and_rejects_real_errors():
    expected = torch.tensor([3.0, -2.0, 1.6e-5])
    assert_close_to_scale(expected + torch.tensor([0.0, 0.0, 1.3e-5]), expected)  # the AVX2 case
    with pytest.raises(AssertionError, match="max error"):
        assert_close_to_scale(expected + torch.tensor([1e-3, 0.0, 0.0]), expected)


def test_fp32_fused_equals_the_module_path():
    model = full_model()
    features = batch_features(model)
    module_path = model(features).detach()  # autograd on: the layers as declared, eval mode
    fused = model.fused("fp32")
    assert isinstance(fused, FusedEncoder) and fused.dtype == torch.float32
    tokens_fast, centers_fast = fused.tokens(features)
    with torch.no_grad():
        tokens, centers = model.encoder.tokenizer(features)
    assert torch.equal(centers_fast, centers)
    assert_close_to_scale(tokens_fast, tokens)
    assert torch.allclose(fused(features), module_path, atol=1e-5)
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
def test_fp32_fused_equals_the_module_path_for_every_block_variant(block):
    model = full_model(**block)
    features = batch_features(model, count=2)
    with torch.no_grad():
        module_path = model(features)
    assert torch.allclose(model.fused("fp32")(features), module_path, atol=1e-5)
    assert cosine(model.fused("bf16")(features), module_path).min() >= 0.999


def test_fp32_fused_matches_the_reference_uni3d_forward():
    torch.manual_seed(0)
    reference = uni3d_reference("tiny", **SMALL).eval()
    randomize_batchnorm(reference, seed=3)
    model = load_uni3d(reference.uni3d_state_dict(), size="tiny", gaussian_branch=False, **SMALL).eval()
    features = batch_features(model, count=4, seed=20)
    with torch.inference_mode():
        expected = reference(features[..., FEATURE_LAYOUT["xyz"]], features[..., FEATURE_LAYOUT["rgb"]])
    assert torch.allclose(model.fused("fp32")(features), expected, atol=1e-5)


@pytest.mark.parametrize("gaussian_branch", [False, True])
def test_bf16_agrees_with_fp32(gaussian_branch):
    model = full_model() if gaussian_branch else tiny_model(gaussian_branch=False)
    features = batch_features(model, count=4, seed=7)
    fp32 = model.fused("fp32")(features)
    bf16 = model.fused("bf16")(features)
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # really computed in another precision
    assert cosine(fp32, bf16).min() >= 0.999
    # the module path under autocast (what Lightning's bf16-mixed runs) agrees too
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(features)
    assert cosine(fp32, autocast).min() >= 0.999


def test_encode_runs_the_fused_form():
    model = full_model()
    clouds = [random_cloud(700, seed=i) for i in range(3)]
    features = torch.stack([preprocess_cloud(c, model.config) for c in clouds])
    assert torch.equal(model.encode(clouds, precision="fp32"), model.fused("fp32")(features))
    assert torch.equal(model.encode(clouds, precision="bf16"), model.fused("bf16")(features))


def test_fp32_results_depend_on_batch_composition_only_at_rounding_level():
    # What docs/benchmarks.md claims for precision="fp32": not bitwise stable across batch sizes and
    # thread counts (matmul blocking changes), but equal to float rounding.
    model = full_model()
    clouds = [random_cloud(700, seed=i) for i in range(4)]
    together = model.encode(clouds, batch_size=4, precision="fp32")
    one_by_one = torch.stack([model.encode(c, precision="fp32") for c in clouds])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single_thread = model.encode(clouds, batch_size=4, precision="fp32")
    finally:
        torch.set_num_threads(threads)
    assert (together - one_by_one).abs().max() < 1e-6
    assert (together - single_thread).abs().max() < 1e-6


def test_invalid_precision_raises_config_error():
    model = tiny_model()
    with pytest.raises(ConfigError, match="precision must be one of .*'fp16'"):
        model.encode(random_cloud(600), precision="fp16")
    with pytest.raises(ConfigError, match="precision"):
        model.fused("half")
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("float32")


def test_auto_precision_follows_the_hardware():
    expected = torch.bfloat16 if bf16_supported("cpu") else torch.float32
    assert resolve_precision("auto", "cpu") == expected
    assert model_dtype(tiny_model().fused("auto")) == expected
    if bf16_supported("cpu"):
        assert cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"}
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16


def model_dtype(fused: FusedEncoder) -> torch.dtype:
    return fused.blocks[0].qkv[0].dtype


def test_the_module_path_runs_in_eval_and_inference_mode_with_no_hidden_state():
    # What a Lightning validation step does: eval mode under inference_mode. It must run the
    # module path (as declared) and leave nothing behind on the module.
    model = full_model()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    attributes = set(vars(model.encoder))
    features = batch_features(model)
    with torch.no_grad():
        expected = model(features)
    with torch.inference_mode():
        got = model(features)
    model.encode(random_cloud(600))
    model.fused("bf16")(features)
    assert torch.equal(got, expected)
    twin = full_model()  # never run: what every module holds when built
    for (name, used), (_, fresh) in zip(model.named_modules(), twin.named_modules(), strict=True):
        assert set(vars(used)) == set(vars(fresh)), name  # no attribute (cache) added by running
        assert {k for k, v in vars(used).items() if isinstance(v, dict) and v} == {
            k for k, v in vars(fresh).items() if isinstance(v, dict) and v
        }, name
        assert set(used._buffers) == set(fresh._buffers) and set(used._parameters) == set(fresh._parameters), name
        # plain values only: a cache object (as the old per-block DerivedWeights) would show here
        plain = (type(None), bool, int, float, str, tuple, set, dict, CLIPGSConfig)
        assert all(isinstance(v, plain) for v in vars(used).values()), (name, {type(v) for v in vars(used).values()})
    assert set(vars(model.encoder)) == attributes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fused_form_is_a_snapshot_of_the_weights():
    model = full_model()
    features = batch_features(model)
    fused = model.fused("fp32")
    first = fused(features)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # training steps change the module ...
    assert torch.equal(fused(features), first)  # ... not the snapshot,
    assert not torch.allclose(model.fused("fp32")(features), first, atol=1e-3)  # which is rebuilt on demand


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


def test_fused_form_uses_eval_semantics_whatever_the_module_mode():
    model = full_model(patch_dropout=0.5, drop_path_rate=0.2)
    features = batch_features(model)
    with torch.no_grad():
        expected = model.eval()(features)
    model.train()
    assert torch.allclose(model.fused("fp32")(features), expected, atol=1e-5)
    assert model.training  # untouched


def test_compile_failure_falls_back_to_eager_blocks(monkeypatch):
    from clip_gs.model import fused as fused_module

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused_module, "_compiled_block_forward", lambda: broken)
    model = full_model()
    features = batch_features(model)
    fused = model.fused("bf16")
    eager = fused(features)
    fused.set_compile(True)
    with pytest.warns(UserWarning, match="torch.compile of the encoder blocks failed.*no C\\+\\+ compiler"):
        fallback = fused(features)
    assert torch.equal(fallback, eager)
    assert fused.compile_blocks is False  # warned once, then eager


@pytest.mark.slow
def test_compiled_blocks_agree_with_eager():
    model = full_model()
    features = batch_features(model)
    fused = model.fused("fp32")
    eager = fused(features)
    compiled = fused.set_compile(True)(features)
    assert fused.compile_blocks  # really compiled, no fallback
    assert torch.allclose(compiled, eager, atol=1e-4)


def test_chunking_does_not_change_tokens():
    model = full_model()
    features = batch_features(model)  # 3 x 32 = 96 patches: one chunk by default
    fused = model.fused("fp32")
    whole, _ = fused.tokens(features)
    fused.chunk_groups = 7  # uneven chunks, the last one partial
    chunked, _ = fused.tokens(features)
    assert_close_to_scale(chunked, whole)  # only float rounding differs


def test_model_built_under_inference_mode_encodes():
    with torch.inference_mode():
        model = tiny_model()
        embedding = model.encode(random_cloud(600), precision="fp32")
    assert embedding.norm().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_training_step_backpropagates_through_the_module_path(autocast):
    model = full_model(patch_dropout=0.5, drop_path_rate=0.1).train()
    features = batch_features(model, count=2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        embeddings = model(features)
    loss = (embeddings @ embeddings.T).sum()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["encoder.tokenizer.gaussian_encoder.proj.weight"].abs().sum() > 0
    assert grads["encoder.blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert grads["encoder.tokenizer.point_encoder.first_conv.0.weight"].abs().sum() > 0
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
