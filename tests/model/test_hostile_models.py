"""Hostile model folders (``config.json``, ``model.safetensors``, ``teacher.json``), grouped by entry point.

- ``CLIPGS.from_pretrained``: a ``config.json`` that is not a JSON object of typed fields, sizes no
  registered model comes near, weights whose header does not match the config (all refused before the
  encoder is built), weights of an integer dtype or holding NaN / infinite values.
- ``read_teacher_record`` and everything that reads ``teacher.json`` through it (``load_model``,
  ``clip-gs push``'s folder check, the model card, ``clip-gs eval``'s model teacher): malformed records,
  a teacher checkpoint named outside the model folder (refused unless ``allow_external_teacher_files``),
  a relative one read from the folder, not from the working directory.
- Property-based fuzzing of model folders (as :mod:`tests.test_fuzz` does for 3DGS files): mutated
  ``config.json`` and ``teacher.json`` of a tiny saved model; every outcome loads or raises a
  :class:`~clip_gs.errors.ClipGSError`, and nothing large is ever built.

Every test here takes well under a few seconds and allocates a few MB.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import clip_gs.model.clipgs as clipgs_module
from clip_gs import CLIPGS
from clip_gs.errors import CheckpointError, ClipGSError, ConfigError
from clip_gs.model import create_model
from clip_gs.model.folder import read_teacher_record
from clip_gs.model.loaded import load_model
from tests.helpers import random_format_cloud

TINY = {
    "width": 24,
    "depth": 1,
    "num_heads": 3,
    "embed_dim": 16,
    "num_gaussians": 64,
    "num_groups": 8,
    "group_size": 8,
    "point_encoder_dim": 32,
    "gaussian_embed_dim": 8,
    "gaussian_channels": (8, 8, 8, 8),
}
"""Overrides of the registered ``clip-gs-tiny``: a model of a few thousand parameters."""
TEACHER = "file:synthetic-clip@sha256:0123456789abcdef"

LARGE = {"width": 8192, "depth": 256, "embed_dim": 8192, "num_gaussians": 1_000_000, "num_groups": 16384,
         "mlp_ratio": 64, "gaussian_channels": 4096}  # fmt: skip
"""What this file calls a large build: a size above one of these (each entry of ``gaussian_channels``)."""


def tiny_model(seed: int = 0) -> CLIPGS:
    torch.manual_seed(seed)
    return create_model("clip-gs-tiny", **TINY).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A saved tiny model with a teacher record (never changed: tests copy it)."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    tiny_model().save_pretrained(folder)
    (folder / "teacher.json").write_text(json.dumps({"teacher": TEACHER, "embed_dim": 16}))
    return folder


def copy_folder(saved: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "teacher.json"):
        (to / name).write_bytes((saved / name).read_bytes())
    return to


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.fixture
def no_large_build(monkeypatch):
    """Fail the test as soon as an encoder is built off the meta device with a large size, before it
    allocates (the meta device, where the weights check builds, allocates nothing)."""

    real = clipgs_module.GaussianEncoder

    def guarded(config):
        if torch.get_default_device().type != "meta":
            sizes = {k: getattr(config, k) for k in LARGE}
            values = {k: max(v, default=0) if isinstance(v, tuple | list) else v for k, v in sizes.items()}
            assert all(isinstance(v, int | float) and v <= LARGE[k] for k, v in values.items()), f"large build {sizes}"
        return real(config)

    monkeypatch.setattr(clipgs_module, "GaussianEncoder", guarded)


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if an encoder is built off the meta device at all."""
    real = clipgs_module.GaussianEncoder

    def guarded(config):
        assert torch.get_default_device().type == "meta", "the encoder was built before the weights were checked"
        return real(config)

    monkeypatch.setattr(clipgs_module, "GaussianEncoder", guarded)


# ---------------------------------------------------------------------------- from_pretrained: config.json
@pytest.mark.parametrize(
    "content, message",
    [
        (b"{", r"config.json: not valid JSON"),
        (b"[1, 2]", r"config.json: the CLIPGSConfig .* must be a JSON object, got list"),
        (b'{"name": "\xff\xfe"}', r"config.json: not valid JSON: not UTF-8"),
        (b"[" * 100_000, r"config.json: not valid JSON"),
        (b'{"width": 1' + b"0" * 5000 + b"}", r"config.json: not valid JSON"),
        (b'{"width": 24, "width": 48}', r"config.json: not valid JSON: repeated key\(s\) \['width'\]"),
        (b" " * (1 << 20) + b"{}", r"config.json: larger than 1048576 bytes"),
    ],
    ids=["invalid-json", "list", "invalid-utf8", "deep-nesting", "huge-int", "repeated-key", "oversized"],
)
def test_from_pretrained_refuses_config_json_that_is_not_one_json_object(saved, tmp_path, content, message):
    folder = copy_folder(saved, tmp_path / "m")
    if content.startswith(b'{"width": 24'):  # a full config with a repeated key
        text = (folder / "config.json").read_text()
        content = text.replace('"width": 24', '"width": 24, "width": 48', 1).encode()
    elif content.endswith(b"{}"):  # a valid config behind 1 MiB of blanks
        content = b" " * (1 << 20) + (folder / "config.json").read_bytes()
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        CLIPGS.from_pretrained(folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"width": "64"}, r"width must be an integer, got str '64'"),
        ({"width": 24.0}, r"width must be an integer, got float 24.0"),
        ({"gaussian_branch": 1}, r"gaussian_branch must be true or false, got int 1"),
        ({"mlp_ratio": float("nan")}, r"mlp_ratio must be a finite number, got float nan"),
        ({"serialization": ["xyz", 3]}, r"serialization must be a list of strings"),
        ({"gaussian_channels": "8888"}, r"gaussian_channels must be a list of integers"),
        ({"num_groups": None}, r"num_groups must be an integer, got NoneType None"),
        ({"fps_start": ["first"]}, r"fps_start must be a string"),
        ({"colour": "red"}, r"unknown CLIPGSConfig field\(s\) \['colour'\]"),
    ],
    ids=["str-width", "float-width", "int-bool", "nan", "mixed-list", "str-list", "null", "list-str", "unknown"],
)
def test_from_pretrained_checks_every_config_field_type(saved, tmp_path, no_build, changes, message):
    folder = copy_folder(saved, tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=message) as info:
        CLIPGS.from_pretrained(folder)
    assert str(folder / "config.json") in str(info.value)


def test_from_pretrained_refuses_a_config_json_missing_a_field(saved, tmp_path, no_build):
    """A missing field is not silently defaulted (fps_start changes no shape: the old default would load)."""
    folder = copy_folder(saved, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["fps_start"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config.json: missing CLIPGSConfig field\(s\) \['fps_start'\]"):
        CLIPGS.from_pretrained(folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"width": 120_000, "num_heads": 3}, "width 120000 exceeds the cap 5632"),
        ({"embed_dim": 1_000_000_000}, "embed_dim 1000000000 exceeds the cap 4096"),
        ({"depth": 10_000_000}, "depth 10000000 exceeds the cap 160"),
        ({"num_gaussians": 100_000_000_000}, "num_gaussians 100000000000 exceeds the cap 40000"),
        ({"mlp_ratio": 1e6}, "mlp_ratio 1000000.0 exceeds the cap 17.45"),
        ({"gaussian_channels": [8, 8, 8, 10**9]}, r"gaussian_channels \(8, 8, 8, 1000000000\) exceeds the cap 1024"),
    ],
    ids=["width", "embed_dim", "depth", "num_gaussians", "mlp_ratio", "gaussian_channels"],
)
def test_from_pretrained_refuses_sizes_no_registered_model_comes_near(
    saved, tmp_path, no_large_build, changes, message
):
    folder = copy_folder(saved, tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=rf"config.json: .*{message}"):
        CLIPGS.from_pretrained(folder)
    from clip_gs.model.config import SIZE_CAPS, SIZE_MARGIN  # the caps: 4x the largest registered configuration's

    assert SIZE_MARGIN == 4 and SIZE_CAPS["width"] == 4 * 1408 and SIZE_CAPS["num_gaussians"] == 4 * 10_000


def test_from_pretrained_refuses_oversized_load_time_overrides(saved, no_large_build):
    with pytest.raises(ConfigError, match=r"overrides .*num_gaussians 100000000000 exceeds the cap 40000"):
        CLIPGS.from_pretrained(saved, num_gaussians=100_000_000_000)
    with pytest.raises(ConfigError, match=r"num_gaussians must be an integer, got str '2048'"):
        CLIPGS.from_pretrained(saved, num_gaussians="2048")
    assert CLIPGS.from_pretrained(saved, num_gaussians=128).config.num_gaussians == 128


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"embed_dim": 32}, r"shape mismatch\(es\) .*'encoder.head.weight: \(16, 24\) vs \(32, 24\)'"),
        ({"depth": 3}, r"missing key\(s\) \['encoder.blocks.1"),
        ({"gaussian_branch": False}, r"unexpected key\(s\) \['encoder.tokenizer.gaussian_encoder"),
    ],
    ids=["embed_dim", "depth", "branch"],
)
def test_from_pretrained_checks_the_weights_header_before_building(saved, tmp_path, no_build, changes, message):
    folder = copy_folder(saved, tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(
        CheckpointError, match=rf"model.safetensors does not match the architecture CLIPGS: .*{message}"
    ):
        CLIPGS.from_pretrained(folder)


# ---------------------------------------------------------------------------- from_pretrained: broken weights
def rewrite_weights(folder: Path, change) -> None:
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_from_pretrained_refuses_non_finite_weights(saved, tmp_path, bad):
    folder = copy_folder(saved, tmp_path / "m")

    def poison(state):
        state["encoder.head.weight"][3, 5] = bad

    rewrite_weights(folder, poison)
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: tensor 'encoder.head.weight' holds 1 NaN or infinite"
    ):
        CLIPGS.from_pretrained(folder)


def test_from_pretrained_refuses_all_nan_weights(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "m")
    rewrite_weights(folder, lambda state: [v.fill_(math.nan) for v in state.values() if v.is_floating_point()])
    with pytest.raises(CheckpointError, match=r"NaN or infinite value"):
        CLIPGS.from_pretrained(folder)


@pytest.mark.parametrize("dtype, name", [(torch.int8, "I8"), (torch.int32, "I32"), (torch.bool, "BOOL")])
def test_from_pretrained_refuses_integer_weights(saved, tmp_path, no_build, dtype, name):
    folder = copy_folder(saved, tmp_path / "m")

    def cast(state):
        state["encoder.head.weight"] = (state["encoder.head.weight"] * 100).to(dtype)

    rewrite_weights(folder, cast)
    with pytest.raises(
        CheckpointError, match=rf"model.safetensors: tensor 'encoder.head.weight' is {name}, not a floating"
    ):
        CLIPGS.from_pretrained(folder)


def test_half_precision_weights_still_load(saved, tmp_path):
    """The refusals above leave float16 / bfloat16 weights loading (as float32), equal up to rounding;
    an int8 file made from them is refused, not cast into zeros."""
    folder = copy_folder(saved, tmp_path / "m")
    rewrite_weights(
        folder, lambda state: state.update({k: v.half() for k, v in state.items() if v.is_floating_point()})
    )
    model = CLIPGS.from_pretrained(folder)
    reference = CLIPGS.from_pretrained(saved).state_dict()
    assert all(torch.allclose(v, reference[k], atol=1e-2) for k, v in model.state_dict().items())
    rewrite_weights(
        folder, lambda state: state.update({k: v.to(torch.int8) for k, v in state.items() if v.is_floating_point()})
    )
    with pytest.raises(CheckpointError, match=r"is I8, not a floating-point dtype"):
        CLIPGS.from_pretrained(folder)


# ---------------------------------------------------------------------------- teacher.json
BAD_RECORDS = [
    (b'{"teacher": 3}', r"'teacher' must be a teacher identity string"),
    (b"[1, 2]", r"the teacher record must be a JSON object, got list"),
    (b'{"teacher": "\xff"}', r"not valid JSON: not UTF-8"),
    (b'{"teacher": "open_clip:a/b", "embed_dim": "16"}', r"'embed_dim' must be a positive integer, got '16'"),
    (b'{"teacher": "open_clip:a/b", "embed_dim": true}', r"'embed_dim' must be a positive integer, got True"),
    (b'{"teacher": "open_clip:a/b", "embed_dim": -16}', r"'embed_dim' must be a positive integer, got -16"),
    (b'{"teacher": "open_clip:a/b", "colour": 1}', r"unknown field\(s\) \['colour'\]"),
    (b'{"teacher": "open_clip:a/b", "teacher": "open_clip:c/d"}', r"repeated key\(s\) \['teacher'\]"),
    (b'{"dataset_package_version": 1}', r"'dataset_package_version' must be a string"),
    (b"[" * 100_000, r"not valid JSON"),
    (b" " * (1 << 20) + b"{}", r"larger than 1048576 bytes"),
]


def test_every_malformed_teacher_json_is_a_config_error_naming_the_file(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "m")
    for content, message in BAD_RECORDS:
        (folder / "teacher.json").write_bytes(content)
        with pytest.raises(ConfigError, match=message) as info:
            read_teacher_record(folder)
        assert str(folder / "teacher.json") in str(info.value), content[:40]
        with pytest.raises(ConfigError, match=message):
            load_model(folder, device="cpu")


def test_every_teacher_json_reader_is_the_one_reader(saved, tmp_path):
    """``clip-gs push``'s folder check, the model card and the one model loader (every verb's) refuse
    what ``read_teacher_record`` refuses."""
    from clip_gs.hub.card import folder_card
    from clip_gs.model.clipgs import validate_folder

    folder = copy_folder(saved, tmp_path / "m")
    (folder / "teacher.json").write_text(json.dumps({"teacher": TEACHER, "embed_dim": 16, "colour": "red"}))
    for read in (read_teacher_record, load_model, folder_card, validate_folder):
        with pytest.raises(ConfigError, match=r"teacher.json: unknown field\(s\) \['colour'\]"):
            read(folder)


def test_load_model_refuses_a_teacher_of_another_embedding_size(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "m")
    (folder / "teacher.json").write_text(json.dumps({"teacher": TEACHER, "embed_dim": 1024}))
    with pytest.raises(
        CheckpointError, match=r"teacher.json records a teacher of 1024 dimensions, the model embeds in 16"
    ):
        load_model(folder, device="cpu")


@pytest.fixture
def teacher_reads(monkeypatch) -> list[Path]:
    """The checkpoint files teachers read (the read is stopped there: nothing is loaded)."""
    import clip_gs.teachers.open_clip_teacher as module

    reads: list[Path] = []

    def spy(path):
        reads.append(Path(path).resolve())
        raise CheckpointError(f"spy: not reading {path}")

    monkeypatch.setattr(module, "read_state_dict", spy)
    return reads


def outside_identities(outside: Path) -> list[str]:
    return [
        f"open_clip:synthetic-clip@{outside}",  # NAME@/abs/file
        f"open_clip:synthetic-clip/{outside}",  # NAME//abs/file (open_clip's pretrained=FILE)
        "open_clip:synthetic-clip@../outside.safetensors",  # leaves the folder by ..
        "open_clip:synthetic-clip/link.safetensors",  # a symbolic link in the folder to the outside file
    ]


def test_teacher_json_naming_a_file_outside_the_folder_is_refused(saved, tmp_path, teacher_reads):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"secret")
    folder = copy_folder(saved, tmp_path / "m")
    (folder / "link.safetensors").symlink_to(outside)
    for identity in outside_identities(outside):
        (folder / "teacher.json").write_text(json.dumps({"teacher": identity, "embed_dim": 16}))
        with pytest.raises(ConfigError, match=r"outside the model folder.*allow_external_teacher_files") as info:
            read_teacher_record(folder)
        assert str(folder / "teacher.json") in str(info.value)
        with pytest.raises(ConfigError, match=r"outside the model folder"):
            load_model(folder, device="cpu")
    assert teacher_reads == []


def test_allow_external_teacher_files_reads_the_outside_file(saved, tmp_path, teacher_reads):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"secret")
    folder = copy_folder(saved, tmp_path / "m")
    (folder / "teacher.json").write_text(json.dumps({"teacher": f"open_clip:synthetic-clip@{outside}"}))
    assert read_teacher_record(folder, allow_external_teacher_files=True).teacher.endswith(str(outside))
    usage = load_model(folder, device="cpu", allow_external_teacher_files=True)
    with pytest.raises(CheckpointError, match="spy"):
        usage.teacher()
    assert teacher_reads == [outside.resolve()]


def test_a_relative_teacher_file_is_read_from_the_folder_not_the_working_directory(
    saved, tmp_path, teacher_reads, monkeypatch
):
    folder = copy_folder(saved, tmp_path / "m")
    (folder / "teacher.safetensors").write_bytes(b"in the folder")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "teacher.safetensors").write_bytes(b"in the working directory")
    monkeypatch.chdir(elsewhere)
    (folder / "teacher.json").write_text(json.dumps({"teacher": "open_clip:synthetic-clip/teacher.safetensors"}))
    usage = load_model(folder, device="cpu")
    with pytest.raises(CheckpointError, match="spy"):
        usage.teacher()
    assert teacher_reads == [(folder / "teacher.safetensors").resolve()]


def test_recorded_identities_name_no_file_outside_a_folder(tmp_path):
    """Indexes and dataset manifests record identities too: without a folder, none may name a file."""
    from clip_gs.teachers.factory import teacher_spec_for

    outside = tmp_path / "x.safetensors"
    outside.write_bytes(b"x")
    for identity, name in (
        (f"open_clip:ViT-B-32/{outside}", "ViT-B-32"),
        (f"open_clip:synthetic-clip@{outside}", "synthetic-clip"),
    ):
        with pytest.raises(ConfigError, match=r"a local file \(no folder to confine it to\)"):
            teacher_spec_for(identity)
        assert teacher_spec_for(identity, allow_external_files=True) == f"{name}@{outside.resolve()}"
        assert teacher_spec_for(identity, tmp_path) == f"{name}@{outside.resolve()}"  # inside that folder
    assert teacher_spec_for("open_clip:ViT-B-32/laion2b_s34b_b79k") == "ViT-B-32/laion2b_s34b_b79k"


# ---------------------------------------------------------------------------- fuzz: model folders
FAST_EXAMPLES = 100
SLOW_EXAMPLES = 2000
DEADLINE_MS = 3000

FIELD_VALUES = [
    0, 1, -1, 3, 8, 16, 24, 48, 64, 512, 40_000, 120_000, 10**7, 10**9, 10**11, 2**63, 10**400, 1.5, 24.0, -0.5, 1e308,
    math.inf, math.nan, "64", "", "xyz", "farthest", "mean", "exp", None, True, False, [], [8], ["xyz"], [8, 8, 8, 8],
    [8, 8, 8, 10**9], ["z", "z"], {}, {"a": 1},
]  # fmt: skip
CONFIG_FIELDS = [
    "name", "width", "depth", "num_heads", "mlp_ratio", "swiglu_mlp", "scale_mlp", "qkv_fused", "embed_dim",
    "drop_path_rate", "patch_dropout", "num_gaussians", "num_groups", "group_size", "fps_start", "point_encoder_dim",
    "gaussian_branch", "serialization", "serialization_bits", "order_fusion", "gaussian_embed_dim",
    "gaussian_channels", "gaussian_pooling", "scale_activation", "uni3d_model", "clip_model", "clip_pretrained",
    "colour",
]  # fmt: skip

VALID_EDITS = [
    ("name", "x"), ("num_gaussians", 128), ("num_gaussians", 40_000), ("fps_start", "farthest"), ("num_groups", 16),
    ("group_size", 16), ("drop_path_rate", 0.5), ("patch_dropout", 0.5), ("serialization", ["z"]),
    ("serialization_bits", 1), ("serialization_bits", 21), ("gaussian_pooling", "mean"), ("scale_activation", "exp"),
    ("uni3d_model", None), ("clip_model", "ViT-B-32"),
]  # fmt: skip
"""Edits the tiny model's weights still load with (fields that change no parameter shape)."""

json_edit = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(CONFIG_FIELDS), st.sampled_from(FIELD_VALUES)),
    st.tuples(st.just("delete"), st.sampled_from(CONFIG_FIELDS)),
    st.sampled_from(VALID_EDITS).map(lambda edit: ("set", *edit)),
)
byte_edit = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=6)),
)


def edit_json(data: dict, edits) -> dict:
    data = dict(data)
    for edit in edits:
        if edit[0] == "set":
            data[edit[1]] = edit[2]
        else:
            data.pop(edit[1], None)
    return data


def edit_bytes(raw: bytes, edits) -> bytes:
    out = bytearray(raw)
    for edit in edits:
        at = min(int(edit[1] * len(out)), max(len(out) - 1, 0))
        if edit[0] == "truncate":
            del out[at:]
        elif edit[0] == "flip" and out:
            out[at] ^= 1 << edit[2]
        elif edit[0] == "insert":
            out[at:at] = edit[2]
    return bytes(out)


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=DEADLINE_MS, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


def fuzz_config_json(saved: Path, tmp_path: Path, examples: int) -> None:
    """Mutated ``config.json`` (fields set to hostile or valid values, deleted, added; bytes damaged): each
    outcome is a model that embeds to finite vectors or a ClipGSError (the caller guards large builds)."""
    folder = copy_folder(saved, tmp_path / "m")
    original = json.loads((saved / "config.json").read_text())
    cloud = random_format_cloud(80, seed=0)
    assert CLIPGS.from_pretrained(folder).config.embed_dim == 16  # the unmutated seed loads
    outcomes = []

    @fuzz_settings(examples)
    @given(edits=st.lists(json_edit, min_size=1, max_size=3), damage=st.lists(byte_edit, max_size=2))
    def run(edits, damage):
        raw = json.dumps(edit_json(original, edits)).encode()
        (folder / "config.json").write_bytes(edit_bytes(raw, damage))
        try:
            model = CLIPGS.from_pretrained(folder)
        except ClipGSError:
            outcomes.append("error")
            return
        assert model.config.num_gaussians <= LARGE["num_gaussians"]
        assert torch.isfinite(model.encode(cloud, progress=False)).all()
        outcomes.append("model")

    run()
    assert "error" in outcomes and "model" in outcomes  # the fuzzer reaches both outcomes


def test_fuzz_config_json(saved, tmp_path, no_large_build):
    fuzz_config_json(saved, tmp_path, FAST_EXAMPLES)


@pytest.mark.slow
def test_fuzz_config_json_long(saved, tmp_path, no_large_build):
    fuzz_config_json(saved, tmp_path, SLOW_EXAMPLES)


def fuzz_teacher_json(saved: Path, tmp_path: Path, monkeypatch, examples: int) -> None:
    """Mutated ``teacher.json``: it is read into a record or refused (a ClipGSError), and the teacher it
    names is loaded (the load is stopped at the spec) only from a file inside the model folder."""
    from clip_gs import teachers
    from clip_gs.model.loaded import load_recorded_teacher
    from clip_gs.teachers.factory import parse_teacher_spec

    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"secret")
    folder = copy_folder(saved, tmp_path / "m")
    (folder / "inside.safetensors").write_bytes(b"teacher")
    (folder / "link.safetensors").symlink_to(outside)
    monkeypatch.chdir(tmp_path)
    specs: list[str] = []

    def spy_load_teacher(spec, **kwargs):
        specs.append(spec)
        raise CheckpointError("spy: not loading")

    monkeypatch.setattr(teachers, "load_teacher", spy_load_teacher)
    identities = [
        TEACHER, "open_clip:ViT-B-32/openai", "hf-hub:org/clip", "random:x", "", "open_clip:", "file:", "open_clip:/x",
        f"open_clip:synthetic-clip@{outside}", f"open_clip:ViT-B-32/{outside}",
        "open_clip:ViT-B-32/outside.safetensors", "open_clip:synthetic-clip@inside.safetensors",
        "open_clip:synthetic-clip/inside.safetensors", "open_clip:synthetic-clip@./inside.safetensors",
        "open_clip:synthetic-clip/link.safetensors", "open_clip:synthetic-clip@../outside.safetensors",
        "open_clip:a/b@../../outside.safetensors", "open_clip:ViT-B-32/~/x", "open_clip:x/\x00", "hf-hub:../x",
    ]  # fmt: skip
    record_edit = st.one_of(
        st.tuples(st.just("teacher"), st.sampled_from(identities)),
        st.tuples(st.just("teacher"), st.one_of(st.text(max_size=12), st.sampled_from(FIELD_VALUES))),
        st.tuples(st.sampled_from(["embed_dim", "dataset_package_version", "colour"]), st.sampled_from(FIELD_VALUES)),
    )
    assert read_teacher_record(folder).teacher == TEACHER  # the unmutated seed reads
    outcomes = []

    def read_file(spec: str) -> Path | None:
        """The file a spec makes a teacher read (a file spec, or a tag the open_clip teacher finds as a file)."""
        parsed = parse_teacher_spec(spec)
        if parsed.kind == "file" or (parsed.kind == "open_clip" and Path(parsed.pretrained).is_file()):
            return Path(parsed.pretrained)
        return None

    @fuzz_settings(examples)
    @given(edits=st.lists(record_edit, min_size=1, max_size=3), damage=st.lists(byte_edit, max_size=1))
    def run(edits, damage):
        record = {"teacher": TEACHER, "embed_dim": 16} | dict(edits)
        (folder / "teacher.json").write_bytes(edit_bytes(json.dumps(record).encode(), damage))
        specs.clear()
        try:
            identity = read_teacher_record(folder).teacher
            load_recorded_teacher(identity, folder=folder)
        except ClipGSError:
            pass  # the spy stops every load: a ClipGSError either way
        for spec in specs:
            target = read_file(spec)
            assert target is None or target.resolve().is_relative_to(folder.resolve()), spec
            outcomes.append("file" if target is not None else "loaded")
        outcomes.append("refused" if not specs else "")

    run()
    assert {"loaded", "file", "refused"} <= set(outcomes)  # tags, files inside the folder, refusals all reached


def test_fuzz_teacher_json(saved, tmp_path, monkeypatch):
    fuzz_teacher_json(saved, tmp_path, monkeypatch, 2 * FAST_EXAMPLES)


@pytest.mark.slow
def test_fuzz_teacher_json_long(saved, tmp_path, monkeypatch):
    fuzz_teacher_json(saved, tmp_path, monkeypatch, SLOW_EXAMPLES)
