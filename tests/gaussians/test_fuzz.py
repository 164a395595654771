"""Property-based fuzzing of every reader through ``load_gaussians``.

Small valid files of each format (INRIA ply binary and ASCII, .splat, compressed PLY, spz
v2 / v3 / v4, and the real 64-Gaussian compressed PLY when the real-data folder is present)
are mutated by truncation, bit flips, byte insertions / deletions, overwritten binary header
fields, edited text-header numbers / keywords and inserted header lines. Every outcome must be a valid
:class:`GaussianCloud` or a :class:`GaussianFormatError` (or subclass): no other exception, no
numpy RuntimeWarning, no example slower than the deadline and no allocation above
``MAX_PEAK_BYTES`` (measured with tracemalloc, which sees numpy and bytes buffers).

CI cost: ``FAST_EXAMPLES`` inputs per seed file (10 seeds); the ``slow`` variant runs
``SLOW_EXAMPLES`` per seed.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip_gs.errors import GaussianFormatError
from clip_gs.gaussians.cloud import GaussianCloud
from clip_gs.gaussians.formats import write_ply, write_splat
from clip_gs.gaussians.io import load_gaussians
from tests.conftest import REAL_DATA
from tests.helpers import encode_compressed_ply, encode_spz, peak_bytes, random_format_cloud

FAST_EXAMPLES = 150
SLOW_EXAMPLES = 3000
DEADLINE_MS = 2000
MAX_PEAK_BYTES = 64 << 20
"""Seed files are < 20 KB; a reader that allocates more than this trusted a corrupted size."""

INTERESTING_INTS = [
    0, 1, 2, 3, 4, 5, 7, 8, 12, 16, 255, 256, 257, 65535, 1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
]  # fmt: skip
INTERESTING_NUMBERS = ["0", "1", "2", "255", "256", "-1", "1000000000000", "4294967296", "99999999999999999999", "1.5"]
HEADER_LINES = [
    "element face 1000000000000\nproperty list uchar int vertex_indices",
    "element extra 4294967295\nproperty float a",
    "property float extra",
    "property list uint float extra",
    "comment fuzz",
    "element sh 1\nproperty uchar f_rest_0",
]
HEADER_TOKENS = [
    "float", "double", "uchar", "char", "int", "uint", "short", "list", "element", "property", "comment",
    "vertex", "chunk", "sh", "face", "x", "f_dc_0", "f_rest_0", "opacity", "packed_color", "min_r",
    "ascii", "binary_big_endian", "binary_little_endian", "end_header", "", "bogus",
]  # fmt: skip


# ---------------------------------------------------------------------------- seed files
def _written(writer: Callable, cloud: GaussianCloud, tmp: Path, name: str, **options) -> bytes:
    path = tmp / name
    writer(cloud, path, **options)
    return path.read_bytes()


def _seeds(tmp: Path) -> dict[str, tuple[str, bytes, bool]]:
    """name -> (file name, bytes, mutate inside gzip)."""
    seeds = {
        "ply_binary": ("seed.ply", _written(write_ply, random_format_cloud(12, 1, sh_degree=1), tmp, "b.ply"), False),
        "ply_ascii": ("seed.ply", _written(write_ply, random_format_cloud(4, 2), tmp, "a.ply", ascii=True), False),
        "splat": ("seed.splat", _written(write_splat, random_format_cloud(10, 3), tmp, "s.splat"), False),
        "compressed_ply": ("seed.compressed.ply", encode_compressed_ply(random_format_cloud(300, 4, sh_degree=1)), False),
        "spz_v2": ("seed.spz", encode_spz(random_format_cloud(20, 5, sh_degree=1), version=2), False),
        "spz_v3": ("seed.spz", encode_spz(random_format_cloud(20, 6), version=3), False),
        # mutate the decompressed payload, then gzip it again: reaches the decoder past the CRC
        "spz_v3_payload": ("seed.spz", gzip.decompress(encode_spz(random_format_cloud(20, 7, sh_degree=2), version=3)), True),
    }
    if importlib.util.find_spec("zstandard") is not None:
        seeds["spz_v4"] = ("seed.spz", encode_spz(random_format_cloud(30, 8, sh_degree=1), version=4), False)
    real = REAL_DATA / "playcanvas-splats" / "test.compressed.ply"
    if real.is_file():
        seeds["compressed_ply_real"] = ("seed.compressed.ply", real.read_bytes(), False)
    return seeds


SEED_NAMES = [
    "ply_binary", "ply_ascii", "splat", "compressed_ply", "spz_v2", "spz_v3", "spz_v3_payload", "spz_v4",
    "compressed_ply_real",
]  # fmt: skip


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, tuple[str, bytes, bool]]:
    return _seeds(tmp_path_factory.mktemp("fuzz_seeds"))


# ---------------------------------------------------------------------------- mutations
fraction = st.floats(0.0, 1.0, exclude_max=True)
mutation = st.one_of(
    st.tuples(st.just("truncate"), fraction),
    st.tuples(st.just("flip"), fraction, st.integers(0, 7)),
    st.tuples(st.just("insert"), fraction, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), fraction, st.integers(1, 16)),
    st.tuples(st.just("int32"), st.integers(0, 60), st.sampled_from(INTERESTING_INTS)),
    st.tuples(st.just("byte"), st.integers(0, 40), st.integers(0, 255)),
    st.tuples(st.just("header_number"), st.integers(0, 200), st.sampled_from(INTERESTING_NUMBERS)),
    st.tuples(st.just("header_token"), st.integers(0, 400), st.sampled_from(HEADER_TOKENS)),
    st.tuples(st.just("header_line"), st.integers(0, 100), st.sampled_from(HEADER_LINES)),
)


def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for op in ops:
        kind = op[0]
        at = int(op[1] * len(out)) if isinstance(op[1], float) else op[1]
        if kind == "truncate":
            del out[at:]
        elif kind == "flip" and at < len(out):
            out[at] ^= 1 << op[2]
        elif kind == "insert":
            out[at:at] = op[2]
        elif kind == "delete":
            del out[at : at + op[2]]
        elif kind == "int32" and at + 4 <= len(out):
            out[at : at + 4] = op[2].to_bytes(4, "little")
        elif kind == "byte" and at < len(out):
            out[at] = op[2]
        elif kind == "header_line":
            end = out.find(b"end_header")
            starts = [m.end() for m in re.finditer(rb"\n", bytes(out[:end]))] if end >= 0 else []
            if starts:
                where = starts[at % len(starts)]
                out[where:where] = op[2].encode() + b"\n"
        elif kind in ("header_number", "header_token"):
            end = out.find(b"end_header")
            if end < 0:
                continue
            pattern = rb"\d+(\.\d+)?" if kind == "header_number" else rb"[A-Za-z_][A-Za-z_0-9]*"
            matches = list(re.finditer(pattern, bytes(out[:end])))
            if matches:
                hit = matches[at % len(matches)]
                out[hit.start() : hit.end()] = op[2].encode()
    return bytes(out)


def check_outcome(path: Path) -> str:
    """Load ``path``; the only allowed outcomes are a cloud or a GaussianFormatError, and neither
    may allocate more than ``MAX_PEAK_BYTES`` on the way."""

    def load() -> GaussianCloud | None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # an unguarded numpy overflow / invalid op
            warnings.simplefilter("ignore", UserWarning)  # e.g. unknown ply properties: legitimate
            try:
                return load_gaussians(path)
            except GaussianFormatError:
                return None

    cloud, peak = peak_bytes(load)
    assert peak < MAX_PEAK_BYTES, f"peak allocation {peak:,} bytes"
    if cloud is None:
        return "error"
    assert isinstance(cloud, GaussianCloud) and cloud.num_gaussians > 0
    return "cloud"


def _fuzz(seeds, name: str, tmp_path_factory, examples: int) -> None:
    if name not in seeds:
        pytest.skip(f"seed {name} unavailable (real data or zstandard absent)")
    filename, data, inside_gzip = seeds[name]
    folder = tmp_path_factory.mktemp(f"fuzz_{name}")
    path = folder / filename
    # the unmutated seed must load
    path.write_bytes(gzip.compress(data, mtime=0) if inside_gzip else data)
    assert check_outcome(path) == "cloud"

    @settings(
        max_examples=examples,
        deadline=DEADLINE_MS,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(ops=st.lists(mutation, min_size=1, max_size=4))
    def run(ops):
        mutated = mutate(data, ops)
        path.write_bytes(gzip.compress(mutated, mtime=0) if inside_gzip else mutated)
        check_outcome(path)

    run()


@pytest.mark.parametrize("name", SEED_NAMES)
def test_fuzz_readers(seeds, name, tmp_path_factory):
    _fuzz(seeds, name, tmp_path_factory, FAST_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name", SEED_NAMES)
def test_fuzz_readers_long(seeds, name, tmp_path_factory):
    _fuzz(seeds, name, tmp_path_factory, SLOW_EXAMPLES)


def test_mutations_reach_the_decoders(seeds, tmp_path):
    """Guard against a fuzzer that only ever produces trivially rejected files: a single bit flip
    deep in the data of each binary seed usually still loads as a cloud."""
    for name in ("ply_binary", "splat", "compressed_ply", "spz_v3_payload"):
        filename, data, inside_gzip = seeds[name]
        mutated = mutate(data, [("flip", 0.9, 0)])
        path = tmp_path / f"{name}_{filename}"
        path.write_bytes(gzip.compress(mutated) if inside_gzip else mutated)
        assert check_outcome(path) == "cloud", name


def test_list_length_in_data_does_not_allocate(seeds, tmp_path):
    """Regression: the INRIA reader let plyfile parse a face element whose list length (read from
    the data) made numpy pre-allocate 16 GiB before finding the file too short."""
    import struct

    _, data, _ = seeds["ply_binary"]
    data = data.replace(b"end_header", b"element face 1\nproperty list uint int vertex_indices\nend_header")
    path = tmp_path / "faces.ply"
    path.write_bytes(data + struct.pack("<I", (1 << 32) - 1) + bytes(64))
    check_outcome(path)
