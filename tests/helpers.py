"""Factories and constants shared by the test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import socket
import struct
import threading
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
import torch.nn.functional as F

from clip_gs.data.prepare_settings import PrepareSettings
from clip_gs.data.shards import (
    write_label_embeddings,
    write_split,
)
from clip_gs.data.synthetic import SHAPE_CLASSES, make_object
from clip_gs.data.triplets import Manifest, TripletSample
from clip_gs.gaussians.cloud import SH_C0, GaussianCloud, sh_coeff_count
from clip_gs.gaussians.formats.ply import f_rest_names
from clip_gs.model import (
    CLIPGS,
    create_model,
    get_model_config,
)
from tests.uni3d_reference import Uni3DPointEncoderReference


def random_cloud(n: int = 100, degree: int = 0, seed: int = 0) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    return GaussianCloud(
        means=torch.randn(n, 3, generator=g) * 2 + 5,
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g),
        opacity_logits=torch.randn(n, generator=g),
        log_scales=torch.randn(n, 3, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g),
    )


def random_format_cloud(n: int, seed: int, sh_degree: int = 0, rgb_range=(0.0, 1.0)) -> GaussianCloud:
    """A random, valid cloud with base colours inside ``rgb_range`` and opacities in (0.01, 0.99)."""
    rng = np.random.default_rng(seed)
    k = sh_coeff_count(sh_degree)
    sh = rng.uniform(-0.3, 0.3, size=(n, k, 3)).astype(np.float32)
    sh[:, 0, :] = (rng.uniform(*rgb_range, size=(n, 3)) - 0.5) / SH_C0
    return GaussianCloud(
        means=torch.from_numpy(rng.normal(0, 2, size=(n, 3)).astype(np.float32)),
        sh=torch.from_numpy(sh),
        opacity_logits=torch.logit(torch.from_numpy(rng.uniform(0.01, 0.99, size=n))).float(),
        log_scales=torch.from_numpy(rng.uniform(-7, 1, size=(n, 3)).astype(np.float32)),
        quats=torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32)),
    )


def _unit(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def encode_compressed_ply(cloud: GaussianCloud, color_bounds: bool = True) -> bytes:
    """SuperSplat compressed PLY bytes for ``cloud`` (chunks of 256, packed uint32 vertices)."""
    n = cloud.num_gaussians
    means = cloud.means.double().numpy()
    log_scales = cloud.log_scales.double().numpy()
    rgb = (0.5 + SH_C0 * cloud.sh_dc.double().numpy()) if color_bounds else cloud.rgb.double().numpy()
    chunks = -(-n // 256)
    chunk_rows, packed = [], np.zeros((n, 4), dtype=np.uint32)

    def unorm(v, lo, hi, bits):
        t = np.where(hi > lo, (v - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        return np.clip(np.rint(t * ((1 << bits) - 1)), 0, (1 << bits) - 1).astype(np.uint32)

    for c in range(chunks):
        sl = slice(256 * c, min(n, 256 * (c + 1)))
        row = []
        for values in (means, log_scales) + ((rgb,) if color_bounds else ()):
            lo, hi = values[sl].min(axis=0), values[sl].max(axis=0)
            row.append((lo, hi))
        chunk_rows.append(np.concatenate([np.concatenate(pair) for pair in row]))
        (plo, phi), (slo, shi) = row[0], row[1]
        for col, (values, lo, hi) in enumerate(((means, plo, phi), (log_scales, slo, shi))):
            v = values[sl]
            word = (unorm(v[:, 0], lo[0], hi[0], 11) << 21) | (unorm(v[:, 1], lo[1], hi[1], 10) << 11)
            word |= unorm(v[:, 2], lo[2], hi[2], 11)
            packed[sl, 0 if col == 0 else 2] = word
        if color_bounds:
            clo, chi = row[2]
            cbytes = [unorm(rgb[sl, i], clo[i], chi[i], 8) for i in range(3)]
        else:
            cbytes = [np.clip(np.rint(rgb[sl, i] * 255), 0, 255).astype(np.uint32) for i in range(3)]
        alpha = np.clip(np.rint(cloud.opacity.double().numpy()[sl] * 255), 0, 255).astype(np.uint32)
        packed[sl, 3] = (cbytes[0] << 24) | (cbytes[1] << 16) | (cbytes[2] << 8) | alpha
    q = _unit(cloud.quats.double().numpy())
    largest = np.abs(q).argmax(axis=1)
    q = q * np.where(q[np.arange(n), largest] < 0, -1.0, 1.0)[:, None]
    words = largest.astype(np.uint32) << 30
    for row_i in range(n):
        others = [q[row_i, j] for j in range(4) if j != largest[row_i]]
        for shift, v in zip((20, 10, 0), others):
            words[row_i] |= np.uint32(int(np.clip(round((v / math.sqrt(2) + 0.5) * 1023), 0, 1023)) << shift)
    packed[:, 1] = words

    names = [f"{m}_{a}" for m in ("min", "max") for a in "xyz"]
    names += [f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz"]
    if color_bounds:
        names += [f"{m}_{c}" for m in ("min", "max") for c in "rgb"]
    degree = cloud.sh_degree
    k = sh_coeff_count(degree) - 1
    lines = ["ply", "format binary_little_endian 1.0", "comment test encoder", f"element chunk {chunks}"]
    lines += [f"property float {name}" for name in names]
    lines += [f"element vertex {n}"]
    lines += [f"property uint {p}" for p in ("packed_position", "packed_rotation", "packed_scale", "packed_color")]
    body = np.asarray(chunk_rows, dtype="<f4").tobytes() + packed.astype("<u4").tobytes()
    if degree > 0:
        lines += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(3 * k)]
        rest = cloud.sh[:, 1:, :].double().numpy().transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major
        body += np.clip(np.floor((rest / 8 + 0.5) * 256), 0, 255).astype(np.uint8).tobytes()
    return ("\n".join(lines) + "\nend_header\n").encode() + body


def spz_arrays(cloud: GaussianCloud, version: int, fractional_bits: int = 12) -> list[bytes]:
    """The spz attribute arrays (positions, alphas, colours, scales, rotations[, sh]), as stored."""
    fixed = np.rint(cloud.means.double().numpy() * (1 << fractional_bits)).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, fixed >> 16], axis=-1).astype(np.uint8)
    alphas = np.clip(np.rint(cloud.opacity.double().numpy() * 255), 0, 255).astype(np.uint8)
    colors = np.clip(np.rint(cloud.sh_dc.double().numpy() * 0.15 * 255 + 127.5), 0, 255).astype(np.uint8)
    scales = np.clip(np.rint((cloud.log_scales.double().numpy() + 10) * 16), 0, 255).astype(np.uint8)
    wxyz = _unit(cloud.quats.double().numpy())
    xyzw = wxyz[:, [1, 2, 3, 0]]
    if version == 2:
        xyzw = xyzw * np.where(xyzw[:, 3:] < 0, -1.0, 1.0)
        rotations = np.clip(np.rint((xyzw[:, :3] + 1) * 127.5), 0, 255).astype(np.uint8).tobytes()
    else:
        words = []
        for q in xyzw:
            largest = int(np.abs(q).argmax())
            negate = q[largest] < 0
            comp = largest
            for i in range(4):
                if i != largest:
                    mag = int(511 * abs(q[i]) / math.sqrt(0.5) + 0.5)
                    comp = (comp << 10) | (int((q[i] < 0) ^ negate) << 9) | mag
            words.append(comp)
        rotations = np.asarray(words, dtype="<u4").tobytes()
    sh = np.clip(np.rint(cloud.sh[:, 1:, :].double().numpy() * 128 + 128), 0, 255).astype(np.uint8)
    arrays = [positions.tobytes(), alphas.tobytes(), colors.tobytes(), scales.tobytes(), rotations]
    if cloud.sh_degree > 0:
        arrays.append(sh.tobytes())
    return arrays


def encode_spz(cloud: GaussianCloud, version: int = 3, fractional_bits: int = 12, flags: int = 0) -> bytes:
    """spz bytes of ``cloud`` in stored (no coordinate change) convention: v2/v3 gzip, v4 zstd."""
    arrays = spz_arrays(cloud, version, fractional_bits)
    n, degree = cloud.num_gaussians, cloud.sh_degree
    if version in (2, 3):
        header = struct.pack("<IIIBBBB", 0x5053474E, version, n, degree, fractional_bits, flags, 0)
        return gzip.compress(header + b"".join(arrays), mtime=0)
    zstandard = pytest.importorskip("zstandard")
    frames = [zstandard.ZstdCompressor(level=3).compress(a) for a in arrays]
    header = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, n, degree, fractional_bits, flags, len(arrays), 32)
    toc = b"".join(struct.pack("<QQ", len(f), len(a)) for f, a in zip(frames, arrays))
    return header + toc + b"".join(frames)


N = 256  # the tiny model's Gaussians per object


def write_model(folder: Path, teacher_identity: str | None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("clip-gs-tiny", num_gaussians=N, num_groups=16, group_size=16, embed_dim=256, depth=2)
    model.save_pretrained(folder)
    if teacher_identity is not None:
        (folder / "teacher.json").write_text(json.dumps({"teacher": teacher_identity, "embed_dim": 256}))
    return folder


def write_mesh(path: Path) -> Path:
    import trimesh

    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=(1.0, 0.5, 0.3)).export(path)
    return path


E = 16


N_STORED, N = 256, 256


CLASSES = ("sphere", "cube", "torus", "cone")


COLOURS = ("red", "green", "blue", "yellow")


TEACHER = "fake:training-test"


TINY = {"model": "clip-gs-tiny", "config": {"num_gaussians": N, "num_groups": 16, "group_size": 16, "embed_dim": E,
                                            "depth": 2}}  # fmt: skip


def class_vectors(seed: int = 0, classes: int = len(CLASSES)) -> torch.Tensor:
    return F.normalize(torch.randn(classes, E, generator=torch.Generator().manual_seed(seed)), dim=-1)


def learnable_sample(i: int, vectors: torch.Tensor, views: int = 3, labelled: bool = True,
                     classes: tuple[str, ...] = CLASSES) -> TripletSample:  # fmt: skip
    c = i % len(classes)
    obj = make_object(classes[c], seed=i, num_gaussians=N_STORED, color=COLOURS[c % len(COLOURS)], pattern="solid")
    gen = torch.Generator().manual_seed(5000 + i)
    text = F.normalize(vectors[c] + 0.1 * torch.randn(1, E, generator=gen), dim=-1)
    images = F.normalize(vectors[c] + 0.3 * torch.randn(views, E, generator=gen), dim=-1)
    return TripletSample(
        id=f"obj-{i:04d}", source=f"synthetic:{i}", cloud=obj.cloud, captions=(f"a {COLOURS[c % len(COLOURS)]} {classes[c]}",),
        label=classes[c] if labelled else None, text_embeddings=text, image_embeddings=images,
        viewmats=torch.eye(4).expand(views, 4, 4).clone(), Ks=torch.eye(3).expand(views, 3, 3).clone(),
    )  # fmt: skip


def write_learnable_dataset(root: Path, n_train: int, n_val: int, n_test: int = 0, labelled: bool = True,
                            start: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:  # fmt: skip
    """Splits of learnable samples (object indices from ``start``, object ``i`` of class ``i mod C``);
    ``labelled=False``: no labels at all (as Objaverse without LVIS), so no label embeddings either."""
    vectors = class_vectors(classes=len(classes))
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, count in counts.items():
        if count:
            samples = [
                learnable_sample(i, vectors, labelled=labelled, classes=classes) for i in range(start, start + count)
            ]
            write_split((s.to_record() for s in samples), root / split, chunk_bytes="64KB")
        start += count
    labels = sorted(classes) if labelled else []
    Manifest(teacher=TEACHER, embed_dim=E, counts=counts, labels=labels).write(root)
    if labelled:
        write_label_embeddings(root, labels, vectors[[classes.index(label) for label in labels]], TEACHER, ["{}"])
    return root


class FakeTeacher:
    """A deterministic stand-in with the teacher interface (text: hashed vectors; images: colour
    statistics), so that these tests check the pipeline, not a model."""

    embed_dim = 16
    image_size = 24
    identity = "fake:prepare-test"

    def __init__(self):
        self.calls = 0

    def encode_text(self, texts):
        self.calls += 1
        rows = [
            torch.tensor(list(hashlib.sha256(t.encode()).digest()[:16]), dtype=torch.float32) - 127.5 for t in texts
        ]
        return F.normalize(torch.stack(rows), dim=-1)

    def encode_images(self, images):
        self.calls += 1
        x = images.float().mean(dim=(1, 2)) / 255  # [B, 3] uint8 HWC in
        return F.normalize(torch.cat([x, 1 - x, x**2, torch.ones(len(x), 7)], dim=-1), dim=-1)


PREPARE_SETTINGS = PrepareSettings(views=2, synthetic_gaussians=512, mesh_gaussians=2000, val_fraction=0.2, test_fraction=0.2)


def write_vertex_ply(path, columns: dict[str, np.ndarray], text=False, extra_elements=()):
    n = len(next(iter(columns.values())))
    record = np.empty(n, dtype=[(name, values.dtype.str) for name, values in columns.items()])
    for name, values in columns.items():
        record[name] = values
    elements = [plyfile.PlyElement.describe(record, "vertex"), *extra_elements]
    plyfile.PlyData(elements, text=text).write(str(path))
    return path


def gaussian_columns(n: int, degree: int = 1, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *f_rest_names(degree), "opacity"]
    names += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return {name: rng.standard_normal(n).astype(dtype) for name in names}


SMALL = dict(num_gaussians=512, num_groups=32, group_size=16)
"""Tokenizer sizes that keep CPU tests fast."""


def tiny_model(**overrides) -> CLIPGS:
    torch.manual_seed(0)
    return create_model("clip-gs-tiny", **(SMALL | overrides)).eval()


def randomize_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial running statistics and affine values."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def full_model(seed: int = 0, **overrides) -> CLIPGS:
    """A tiny CLIP-GS with every parameter moved away from its initial value (a live Gaussian
    branch, non-unit LayerNorms, non-zero q/v biases) and non-trivial BatchNorm statistics."""
    model = tiny_model(**overrides)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    randomize_batchnorm(model, seed=seed)
    return model


def uni3d_reference(size: str, **overrides) -> Uni3DPointEncoderReference:
    return Uni3DPointEncoderReference(get_model_config(f"clip-gs-{size}", **overrides))


E = 16


N_STORED = 96  # Gaussians per stored object (small: fast to write and preprocess)


def fake_sample(
    i: int, captions: int | None = None, views: int | None = None, label: str | None = "auto"
) -> TripletSample:
    """Object ``i``: a synthetic shape with fake unit embeddings (T = 1..2 captions, V = 4..6 views)."""
    obj = make_object(SHAPE_CLASSES[i % len(SHAPE_CLASSES)], seed=i, num_gaussians=N_STORED)
    t = 1 + i % 2 if captions is None else captions
    v = 4 + i % 3 if views is None else views
    gen = torch.Generator().manual_seed(1000 + i)
    text = torch.nn.functional.normalize(torch.randn(t, E, generator=gen), dim=-1)
    images = torch.nn.functional.normalize(torch.randn(v, E, generator=gen), dim=-1)
    return TripletSample(
        id=f"obj-{i:04d}",
        source=f"synthetic:{i}",
        cloud=obj.cloud,
        captions=tuple(f"{obj.caption} #{c}" for c in range(t)),
        label=obj.label if label == "auto" else label,
        text_embeddings=text,
        image_embeddings=images,
        viewmats=torch.eye(4).expand(v, 4, 4).clone(),
        Ks=torch.eye(3).expand(v, 3, 3).clone(),
    )


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SYNTHETIC_SETTINGS = PrepareSettings(views=2, synthetic_gaussians=512, val_fraction=0.2, test_fraction=0.2)
"""prepare's settings of ``synthetic:12`` in the ``single_process`` reference (conftest)."""
CLI_SETTINGS = ["--teacher", "synthetic-clip", "--views", "2", "--synthetic-gaussians", "512",
                "--val-fraction", "0.2", "--test-fraction", "0.2", "--quiet"]  # fmt: skip
"""The same settings as ``clip-gs prepare`` flags."""


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a prepared dataset (the splits, manifest, label embeddings), not the work folder
    (nor the local folder's ownership marker)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and ".work" not in p.parts
            and p.name not in ("failures.jsonl", ".clip-gs-prepare")}  # fmt: skip


# ---------------------------------------------------------------------------- FIFOs (readers must refuse them)
@contextmanager
def fifo_watchdog(fifo: Path):
    """Yield a dict whose ``"opened"`` turns True if anyone opens ``fifo`` for reading; such a
    reader is released at once (it reads end-of-file) so that the test ends instead of hanging."""
    state = {"opened": False}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
            except OSError:
                time.sleep(0.01)
                continue
            state["opened"] = True
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(5)


def make_fifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("FIFOs need a POSIX system")
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------------------- memory bounds
def peak_bytes(run):
    """``(run(), the peak bytes it allocated)``, measured with tracemalloc (which sees numpy and bytes
    buffers); an exception of ``run`` propagates."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
