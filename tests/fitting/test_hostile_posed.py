"""Hostile posed-image folders (``transforms.json`` + images), grouped by entry point.

- :func:`read_posed_images` / :func:`read_transforms`: frame paths that leave the folder, oversized or
  corrupt images, memory bounded by the fit size, impossible intrinsics, cameras that are not rigid,
  malformed JSON; every refusal is a :class:`PosedImagesError` naming the file and the frame or field.
- ``clip-gs fit-gaussians``: the same refusals through the command (exit status 2, one line), folder
  views downscaled to ``--size``, ``clip_gs.world`` read by the one reader, ``--save-views`` that would
  overwrite a folder it did not write.
- A property-based fuzz of posed folders (as :mod:`tests.test_fuzz` does for 3DGS files): mutated JSON
  values, bytes and image files; every outcome is valid views or a ``PosedImagesError``.

Every test here is a few hundred milliseconds to a few seconds and well under 1 GB.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clip_gs.cli import main
from clip_gs.errors import PosedImagesError
from clip_gs.fitting import PosedImages, read_posed_images
from tests.helpers import peak_bytes

ANGLE = 0.3
C2W = [
    [math.cos(ANGLE), 0.0, math.sin(ANGLE), 0.5],
    [0.0, 1.0, 0.0, 0.2],
    [-math.sin(ANGLE), 0.0, math.cos(ANGLE), 3.0],
    [0.0, 0.0, 0.0, 1.0],
]
"""A rigid camera-to-world (a turn about y, then a translation)."""
SIZE = (8, 6)
GREEN = (0, 255, 0, 255)
"""The colour of the image outside the folder: never in a view read from inside it."""


def _rgba(width: int = SIZE[0], height: int = SIZE[1], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 200, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return rgba


def _folder(root: Path, spec_changes: dict | None = None, frames: list[dict] | None = None, size=SIZE) -> Path:
    """``root/obj``: two RGBA PNG views and a ``transforms.json`` (``camera_angle_x``), changed as given."""
    folder = root / "obj"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index in range(2):
        Image.fromarray(_rgba(*size, seed=index)).save(folder / "images" / f"view_{index}.png")
    spec = {"camera_angle_x": 0.9, "frames": frames or [
        {"file_path": "images/view_0", "transform_matrix": C2W},
        {"file_path": "images/view_1.png", "transform_matrix": C2W},
    ]}  # fmt: skip
    spec.update(spec_changes or {})
    (folder / "transforms.json").write_text(json.dumps(spec))
    return folder


def _outside(root: Path) -> Path:
    """``root/outside/x.png``: a green image beside (not inside) the posed folder."""
    (root / "outside").mkdir(exist_ok=True)
    Image.new("RGBA", SIZE, GREEN).save(root / "outside" / "x.png")
    return root / "outside" / "x.png"


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG declaring ``width x height`` 8-bit grey pixels whose data is no zlib stream: a few dozen bytes
    whose header says hundreds of megapixels (a reader that decodes before checking the size fails late)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib")
            + chunk(b"IEND", b""))  # fmt: skip


def _frame_with(path: str) -> list[dict]:
    return [{"file_path": path, "transform_matrix": C2W}]


# ============================================================================ read_posed_images


@pytest.mark.parametrize("kind", ["parent", "parent_no_suffix", "absolute", "symlink"])
def test_frame_paths_that_leave_the_folder_are_refused(tmp_path, kind):
    outside = _outside(tmp_path)
    folder = _folder(tmp_path)
    if kind == "symlink":
        os.symlink(outside, folder / "images" / "link.png")
    file_path = {"parent": "../outside/x.png", "parent_no_suffix": "../outside/x", "absolute": str(outside),
                 "symlink": "images/link.png"}[kind]  # fmt: skip
    _folder(tmp_path, frames=_frame_with(file_path))
    with pytest.raises(PosedImagesError, match=r"frame 0: file_path .*(leaves the folder|is absolute)") as caught:
        read_posed_images(folder)
    assert "transforms.json" in str(caught.value) and repr(file_path) in str(caught.value)


@pytest.mark.parametrize("size", [(8200, 8200), (20000, 20000)], ids=["over_the_cap", "pillow_bomb"])
def test_oversized_images_are_refused_from_their_header(tmp_path, size):
    """8200 x 8200 is over the cap (and would be decoded by Pillow); 400 Mpx trips Pillow's bomb guard."""
    folder = _folder(tmp_path, frames=_frame_with("images/view_1.png"))
    (folder / "images" / "view_1.png").write_bytes(_header_only_png(*size))
    with pytest.raises(PosedImagesError, match=r"view_1\.png: .*(at most [\d,]+ are read|more than [\d,]+ pixels)"):
        read_posed_images(folder)


def test_views_are_downscaled_while_read_and_memory_stays_at_the_fit_size(tmp_path):
    """Four 400 x 300 views read at 40 px: area-averaged pixels, intrinsics scaled, and no float copy at the
    files' size (1.9 MB each) is ever made."""
    folder = tmp_path / "big"
    (folder / "images").mkdir(parents=True)
    rgba = [_rgba(400, 300, seed=i) for i in range(4)]
    for index, pixels in enumerate(rgba):
        Image.fromarray(pixels).save(folder / "images" / f"{index}.png")
    frames = [{"file_path": f"images/{i}.png", "transform_matrix": C2W} for i in range(4)]
    spec = {"fl_x": 300.0, "fl_y": 310.0, "cx": 190.0, "cy": 160.0, "w": 400, "h": 300, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(spec))
    posed, peak = peak_bytes(lambda: read_posed_images(folder, max_size=40))
    assert peak < 400 * 300 * 4 * 4 // 2, f"peak {peak:,} bytes"
    assert posed.images.shape == (4, 30, 40, 4) and (posed.cameras.width, posed.cameras.height) == (40, 30)
    expected = rgba[2].reshape(30, 10, 40, 10, 4).mean(axis=(1, 3)) / 255.0  # opaque: a plain area mean
    assert float(np.abs(posed.images[2].numpy() - expected).max()) <= 1.0 / 255
    expected_K = torch.tensor([[30.0, 0.0, 19.0], [0.0, 31.0, 16.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(posed.cameras.Ks, expected_K.expand(4, 3, 3))


def test_jpeg_views_are_decoded_at_a_reduced_scale_and_16_bit_views_kept(tmp_path):
    folder = tmp_path / "jpeg"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (400, 300), (200, 40, 90)).save(folder / "images" / "a.jpg", quality=95)
    grey = Image.fromarray(np.full((300, 400), 30000, dtype=np.uint16))
    assert grey.mode == "I;16"
    grey.save(folder / "images" / "b.png")
    frames = [{"file_path": "images/a", "transform_matrix": C2W}, {"file_path": "images/b", "transform_matrix": C2W}]
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.9, "frames": frames}))
    posed = read_posed_images(folder, max_size=50)
    assert posed.images.shape == (2, 38, 50, 4)
    assert posed.images[0, ..., :3].mean((0, 1)).tolist() == pytest.approx([200 / 255, 40 / 255, 90 / 255], abs=0.02)
    assert posed.images[1, ..., :3].flatten().tolist() == pytest.approx([30000 / 65535] * (38 * 50 * 3), abs=1e-4)


def test_views_over_the_memory_cap_are_refused_before_decoding(tmp_path, monkeypatch):
    from clip_gs.fitting import posed as posed_module

    folder = _folder(tmp_path)
    monkeypatch.setattr(posed_module, "MAX_VIEWS_BYTES", 2 * SIZE[0] * SIZE[1] * 16 - 1)
    with pytest.raises(PosedImagesError, match=r"transforms\.json: 2 views of 8x6 need .* GiB"):
        read_posed_images(folder)


def test_images_of_other_formats_or_corrupt_are_refused_naming_the_file(tmp_path):
    folder = _folder(tmp_path, frames=_frame_with("images/view_1.bmp"))
    Image.fromarray(_rgba()).save(folder / "images" / "view_1.bmp")
    with pytest.raises(PosedImagesError, match=r"view_1\.bmp: not a PNG or JPEG image"):
        read_posed_images(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"camera_angle_x": math.pi}, r"camera_angle_x is 3.14159 rad; a field of view lies in \(0, pi\)"),
        ({"camera_angle_x": 7}, "camera_angle_x is 7 rad"),
        ({"camera_angle_x": 0}, "camera_angle_x is 0 rad"),
        ({"camera_angle_x": "0.9"}, 'camera_angle_x must be a number, got "0.9"'),
        ({"camera_angle_x": 1e-12}, r"focal length fx=8e\+12 px is impossible"),
        ({"fl_x": 1e300}, r"focal length fx=1e\+300 px is impossible"),
        ({"fl_x": None}, "fl_x must be a number, got null"),
        ({"fl_x": True}, "fl_x must be a number, got true"),
        ({"fl_x": 10**400}, "fl_x must be finite"),
        ({"fl_x": 7.0, "fl_y": 1e-5}, r"focal length fy=1e-05 px is impossible for an image side of 6 px"),
        ({"cx": -50.0}, r"principal point \(-50, 3\) lies outside the 8x6 image"),
        ({"w": 800, "h": 600}, "w is 800 but the image view_0.png is 8x6"),
        ({"k1": 0.05}, "lens distortion k1=0.05"),
        ({"camera_model": "OPENCV_FISHEYE"}, 'camera_model "OPENCV_FISHEYE" is not a pinhole'),
    ],
    ids=lambda value: str(value)[:30],
)
def test_impossible_intrinsics_are_refused_naming_the_field(tmp_path, changes, message):
    folder = _folder(tmp_path, changes)
    with pytest.raises(PosedImagesError, match=r"transforms\.json.*: " + message):
        read_posed_images(folder)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.0] * 4, [0.0] * 4, [0.0] * 4, [0, 0, 0, 1]], "not a rigid"),  # singular
        ([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 3], [0, 0, 0, 1]], "not a rigid"),  # scaled
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 3], [0, 0, 0, 1]], "determinant -1"),  # mirrored
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 1, 1]], "last row must be 0 0 0 1"),
        ([[True, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]], r"transform_matrix\[0\]\[0\] must be a number"),
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1e9], [0, 0, 0, 1]], r"lies beyond \+-1e\+06"),
    ],
    ids=["singular", "scaled", "mirrored", "last_row", "boolean", "far"],
)
def test_cameras_that_are_not_rigid_are_refused_naming_the_frame(tmp_path, matrix, message):
    folder = _folder(tmp_path, frames=[{"file_path": "images/view_0.png", "transform_matrix": C2W},
                                       {"file_path": "images/view_1.png", "transform_matrix": matrix}])  # fmt: skip
    with pytest.raises(PosedImagesError, match=r"transforms\.json frame 1: .*" + message):
        read_posed_images(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"frames": [], "\xff": 1}', "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"camera_angle_x": 0.9, "camera_angle_x": 0.5, "frames": FRAMES}', r"not valid JSON .* repeated"),
    ],
    ids=["utf8", "deep", "repeated_key"],
)
def test_malformed_json_is_refused_naming_the_file(tmp_path, text, message):
    folder = _folder(tmp_path)
    frames = json.dumps(_frame_with("images/view_0.png")).encode()
    (folder / "transforms.json").write_bytes(text.replace(b"FRAMES", frames))
    with pytest.raises(PosedImagesError, match=r"obj/transforms\.json: " + message):
        read_posed_images(folder)


def test_an_oversized_transforms_json_is_refused_before_parsing(tmp_path, monkeypatch):
    from clip_gs.fitting import transforms_json

    folder = _folder(tmp_path)
    monkeypatch.setattr(transforms_json, "MAX_TRANSFORMS_BYTES", 64)
    with pytest.raises(PosedImagesError, match="transforms.json: larger than"):
        read_posed_images(folder)


def test_write_posed_images_writes_only_into_a_new_or_empty_folder(tmp_path):
    from clip_gs.fitting import write_posed_images

    folder = _folder(tmp_path)
    before = (folder / "transforms.json").read_bytes()
    posed = read_posed_images(folder)
    with pytest.raises(PosedImagesError, match=r"obj: not empty \(holds images, transforms.json\)"):
        write_posed_images(folder, posed)
    with pytest.raises(PosedImagesError, match=r"images: not empty \(holds view_0.png, view_1.png\)"):
        write_posed_images(folder / "images", posed)
    assert (folder / "transforms.json").read_bytes() == before


# ============================================================================ clip-gs fit-gaussians


def _fit(folder: Path, out: Path, *extra: str) -> int:
    return main(["fit-gaussians", str(folder), "--out", str(out), "--iterations", "1", "--held-out", "0",
                 "--max-gaussians", "16", "--quiet", *extra])  # fmt: skip


def test_fit_gaussians_refuses_a_frame_outside_the_folder(tmp_path, capsys):
    _outside(tmp_path)
    folder = _folder(tmp_path, frames=_frame_with("../outside/x.png"))
    assert _fit(folder, tmp_path / "out.ply") == 2
    err = capsys.readouterr().err
    assert "frame 0: file_path '../outside/x.png' leaves the folder" in err and not (tmp_path / "out.ply").exists()


def test_fit_gaussians_reads_a_folder_at_size(tmp_path, monkeypatch):
    from clip_gs.fitting import fit as fit_module

    seen = []
    real_fit = fit_module.fit_gaussians

    def recording_fit(posed, *args, **kwargs):
        seen.append(tuple(posed.images.shape))
        return real_fit(posed, *args, **kwargs)

    monkeypatch.setattr(fit_module, "fit_gaussians", recording_fit)
    folder = _folder(tmp_path, size=(64, 48))
    assert _fit(folder, tmp_path / "out.ply", "--size", "16") == 0
    assert seen == [(2, 12, 16, 4)]


def test_fit_gaussians_reads_clip_gs_world_through_the_one_reader(tmp_path, capsys):
    mesh = tmp_path / "tetra.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    sheared = [[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    folder = _folder(tmp_path, {"clip_gs": {"world": sheared}})
    assert _fit(folder, tmp_path / "out.ply", "--init", str(mesh)) == 2
    assert "transforms.json: clip_gs.world must be a uniform scale > 0 plus a translation" in capsys.readouterr().err
    _folder(tmp_path, {"clip_gs": ["not", "an", "object"]})
    assert _fit(folder, tmp_path / "out.ply", "--init", str(mesh)) == 2
    assert "transforms.json: clip_gs must be an object" in capsys.readouterr().err


def test_fit_gaussians_save_views_never_overwrites_and_is_not_ignored(tmp_path, capsys):
    taken = _folder(tmp_path)
    before = (taken / "transforms.json").read_bytes()
    # refused before the mesh is even read: a fit would otherwise run for nothing
    assert _fit(tmp_path / "missing.glb", tmp_path / "out.ply", "--save-views", str(taken)) == 2
    assert "obj: not empty (holds images, transforms.json)" in capsys.readouterr().err
    assert (taken / "transforms.json").read_bytes() == before
    # a folder input has its views on disk: --save-views is refused, not silently dropped
    assert _fit(taken, tmp_path / "out.ply", "--save-views", str(tmp_path / "new")) == 2
    assert "--save-views writes the rendered views of a mesh" in capsys.readouterr().err


# ============================================================================ fuzz

FAST_EXAMPLES = 150
DEADLINE_MS = 2000
MAX_PEAK_BYTES = 64 << 20
"""Seed images are 8 x 6; a reader that allocates more than this trusted a corrupted size."""
INTERESTING_VALUES = [
    None, True, False, 0, -1, 1, 7, 0.5, 1e300, -1e-300, 10**400, math.pi, math.pi / 2, "", "0.9",
    "../outside/x.png", "../outside/x", "/etc/hostname", "images/link.png", "images", "transforms.json",
    "images/view_0.png\x00", [], {}, [[0.0] * 4] * 4, [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]],
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], [[1, 0, 0, 0]] * 3, [[1, 2], [3]], "OPENCV_FISHEYE",
    "PINHOLE", 8, 6, 4.0, 3.0, 1000.0,
]  # fmt: skip
KEYS = [
    "fl_x", "fl_y", "cx", "cy", "camera_angle_x", "camera_angle_y", "w", "h", "k1", "p2", "camera_model",
    "file_path", "transform_matrix", "frames", "clip_gs", "world",
]  # fmt: skip


def _seed_folder(root: Path) -> tuple[Path, dict, dict[str, bytes]]:
    """A valid folder with every kind of frame: PNG RGBA, PNG 16-bit grey, JPEG, a 3 x 4 matrix, frame
    intrinsics, clip_gs.world; an outside image and a symbolic link to it that no valid frame names."""
    _outside(root)
    folder = root / "obj"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(_rgba()).save(folder / "images" / "view_0.png")
    Image.fromarray(np.full(SIZE[::-1], 20000, dtype=np.uint16)).save(folder / "images" / "view_1.png")
    Image.fromarray(_rgba(seed=2)[..., :3]).save(folder / "images" / "view_2.jpg", quality=90)
    os.symlink(root / "outside" / "x.png", folder / "images" / "link.png")
    spec = {
        "camera_angle_x": 0.9, "w": SIZE[0], "h": SIZE[1], "clip_gs": {"world": [[0.5, 0, 0, 0.1], [0, 0.5, 0, 0],
                                                                               [0, 0, 0.5, 0], [0, 0, 0, 1]]},
        "frames": [
            {"file_path": "images/view_0", "transform_matrix": C2W, "fl_x": 7.0, "fl_y": 7.5, "cx": 4.0, "cy": 3.0},
            {"file_path": "images/view_1.png", "transform_matrix": C2W[:3]},
            {"file_path": "./images/view_2.jpg", "transform_matrix": C2W, "camera_angle_y": 0.8},
        ],
    }  # fmt: skip
    images = {name: (folder / "images" / name).read_bytes() for name in ("view_0.png", "view_1.png", "view_2.jpg")}
    return folder, spec, images


fraction = st.floats(0.0, 1.0, exclude_max=True)
mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 200), st.sampled_from(INTERESTING_VALUES)),
    st.tuples(st.just("delete"), st.integers(0, 200)),
    st.tuples(st.just("add"), st.integers(0, 200), st.sampled_from(KEYS), st.sampled_from(INTERESTING_VALUES)),
    st.tuples(st.just("text_truncate"), fraction),
    st.tuples(st.just("text_flip"), fraction, st.integers(0, 7)),
    st.tuples(st.just("text_insert"), fraction, st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("image_truncate"), st.integers(0, 2), fraction),
    st.tuples(st.just("image_flip"), st.integers(0, 2), fraction, st.integers(0, 7)),
    st.tuples(st.just("image_int32"), st.integers(0, 2), st.sampled_from([16, 20]),
              st.sampled_from([0, 1, 5, 7, 9, 1 << 16, 1 << 31, (1 << 32) - 1])),  # PNG IHDR width, height
)  # fmt: skip


def _slots(value, parent=None, key=None) -> list[tuple[object, object]]:
    """Every (container, key) in a JSON value, depth first."""
    slots = [] if parent is None else [(parent, key)]
    if isinstance(value, dict):
        for k, v in value.items():
            slots += _slots(v, value, k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            slots += _slots(v, value, i)
    return slots


def _mutate(spec: dict, images: dict[str, bytes], ops) -> tuple[bytes, dict[str, bytes]]:
    spec = json.loads(json.dumps(spec))
    images = {name: bytearray(data) for name, data in images.items()}
    names = sorted(images)
    text_ops = []
    for op in ops:
        kind = op[0]
        if kind in ("set", "delete", "add"):
            slots = _slots(spec)
            container, key = slots[op[1] % len(slots)]
            if kind == "set":
                container[key] = json.loads(json.dumps(op[2]))
            elif kind == "delete":
                del container[key]
            elif isinstance(container[key], dict):
                container[key][op[2]] = json.loads(json.dumps(op[3]))
        elif kind.startswith("text"):
            text_ops.append(op)
        else:
            data = images[names[op[1]]]
            if kind == "image_truncate":
                del data[int(op[2] * len(data)) :]
            elif kind == "image_flip" and data:
                data[int(op[2] * len(data))] ^= 1 << op[3]
            elif kind == "image_int32" and op[2] + 4 <= len(data):
                data[op[2] : op[2] + 4] = op[3].to_bytes(4, "big")
    text = bytearray(json.dumps(spec).encode())
    for op in text_ops:
        at = int(op[1] * len(text))
        if op[0] == "text_truncate":
            del text[at:]
        elif op[0] == "text_flip" and at < len(text):
            text[at] ^= 1 << op[2]
        elif op[0] == "text_insert":
            text[at:at] = op[2]
    return bytes(text), {name: bytes(data) for name, data in images.items()}


def _check_outcome(folder: Path) -> str:
    """Read ``folder``; the only outcomes are valid views or a PosedImagesError, within ``MAX_PEAK_BYTES``."""
    from clip_gs.fitting import read_transforms


    def read():
        try:
            return read_posed_images(folder), read_transforms(folder).world
        except PosedImagesError:
            return None, None

    (posed, world), peak = peak_bytes(read)
    assert peak < MAX_PEAK_BYTES, f"peak allocation {peak:,} bytes"
    if posed is None:
        return "error"
    assert isinstance(posed, PosedImages) and posed.images.shape[1:] == (SIZE[1], SIZE[0], 4)
    images = posed.images
    assert bool(((images >= 0) & (images <= 1)).all())
    green = (images == torch.tensor(GREEN, dtype=torch.float32) / 255).all(dim=-1)
    assert not bool(green.any()), "a view holds the image outside the folder"
    cams = posed.cameras
    assert bool(cams.viewmats.isfinite().all()) and bool(cams.Ks.isfinite().all())
    assert bool((cams.Ks[:, 0, 0] > 0).all()) and bool((cams.Ks[:, 1, 1] > 0).all())
    assert world is None or bool(world.isfinite().all())
    return "valid"


def test_fuzz_posed_folders(tmp_path):
    folder, spec, images = _seed_folder(tmp_path)
    (folder / "transforms.json").write_text(json.dumps(spec))
    assert _check_outcome(folder) == "valid"  # the unmutated seed reads
    outcomes = set()

    @settings(max_examples=FAST_EXAMPLES, deadline=DEADLINE_MS, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(ops=st.lists(mutation, min_size=1, max_size=4))
    def run(ops):
        text, mutated = _mutate(spec, images, ops)
        (folder / "transforms.json").write_bytes(text)
        for name, data in mutated.items():
            (folder / "images" / name).write_bytes(data)
        outcomes.add(_check_outcome(folder))

    run()
    assert outcomes == {"valid", "error"}
