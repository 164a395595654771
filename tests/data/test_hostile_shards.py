"""Hostile prepared datasets: what every reader of shards does with a split, manifest or label-embeddings
file that is not what clip-gs wrote.

Every case starts from a small dataset written by the package's own writer (``write_split``,
``write_manifest``, ``write_label_embeddings``; LitData's ``BinaryWriter`` directly where the case is
content clip-gs never writes, such as a pickled payload) and then edits it the way a hostile or
damaged copy could. The tests are grouped by entry point: ``clip-gs verify``, the data module,
evaluation, the prepare merge (``iter_records``), the label embeddings, the embedding index, s3 roots,
and property-based fuzzing of ``index.json``, chunk bytes, ``manifest.json`` and ``label_embeddings.bin``
(every outcome is the data as written or the package's typed error, never another exception).

A pickled payload here touches a marker file when it is unpickled: no reader may create it.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip_gs.cli import main
from clip_gs.data.shards import (
    TripletShardDataset,
    iter_records,
    read_label_embeddings,
    read_manifest,
    write_label_embeddings,
    write_manifest,
    write_split,
)
from clip_gs.data.synthetic import SHAPE_CLASSES, make_object
from clip_gs.data.triplets import SPLITS, Manifest, TripletSample, pack_tensors
from clip_gs.data.verify import verify_dataset
from clip_gs.errors import EXIT_FATAL, ClipGSError, CorruptSampleError, DatasetError
from clip_gs.index import EmbeddingIndex
from clip_gs.model import create_model
from tests.helpers import peak_bytes

E = 8
TEACHER = "hostile-test-teacher"
CHUNK_BYTES = 5000
"""Chunk budget of the test splits: two of the ~2 kB samples per chunk."""

FUZZ_EXAMPLES = 60
DEADLINE_MS = 3000
MAX_PEAK_BYTES = 64 << 20
"""The seed files are a few kB; a reader that allocates more than this trusted a corrupted size."""


# ---------------------------------------------------------------------------- datasets
def sample(i: int) -> TripletSample:
    """Object ``i``: a synthetic shape of 24 Gaussians with fake unit embeddings (1 caption, 2 views)."""
    obj = make_object(SHAPE_CLASSES[i % len(SHAPE_CLASSES)], seed=i, num_gaussians=24)
    gen = torch.Generator().manual_seed(i)
    return TripletSample(
        id=f"obj-{i}",
        source=f"synthetic:{i}",
        cloud=obj.cloud,
        captions=(obj.caption,),
        label=obj.label,
        text_embeddings=F.normalize(torch.randn(1, E, generator=gen), dim=-1),
        image_embeddings=F.normalize(torch.randn(2, E, generator=gen), dim=-1),
        viewmats=torch.eye(4).expand(2, 4, 4).clone(),
        Ks=torch.eye(3).expand(2, 3, 3).clone(),
    )


def write_dataset(root: Path, counts: dict[str, int]) -> Path:
    """``root/<split>`` for each count (samples numbered across splits) and ``root/manifest.json``."""
    start, labels = 0, set()
    for split, count in counts.items():
        samples = [sample(i) for i in range(start, start + count)]
        start += count
        labels |= {s.label for s in samples}
        write_split([s.to_record() for s in samples], root / split, chunk_bytes=CHUNK_BYTES)
    write_manifest(Manifest(teacher=TEACHER, embed_dim=E, counts=counts, labels=sorted(labels)), root)
    return root


def write_raw_split(folder: Path, items: list) -> None:
    """A split of arbitrary ``items`` written by LitData's own chunk writer (what ``write_split`` runs),
    with the index named and dated as ``write_split`` names and dates it, but none of its checks."""
    from litdata.streaming.writer import BinaryWriter

    from clip_gs.data.shards import plain_chunk_layout

    writer = BinaryWriter(str(folder), chunk_bytes=CHUNK_BYTES)
    writer._rank = 0
    with plain_chunk_layout():
        for i, item in enumerate(items):
            writer.add_item(i, item)
        writer.done()
    written = json.loads((folder / "0.index.json").read_text())
    (folder / "0.index.json").unlink()
    index = {"chunks": written["chunks"], "config": written["config"], "updated_at": "0" * 32}
    (folder / "index.json").write_text(json.dumps(index))


def edit_index(split_dir: Path, edit) -> None:
    index = json.loads((split_dir / "index.json").read_text())
    edit(index)
    (split_dir / "index.json").write_text(json.dumps(index))


def edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


class Payload:
    """Unpickling it touches ``marker`` (harmless, observable code run by ``pickle.loads``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def pickle_dataset(tmp_path) -> tuple[Path, Path]:
    """A dataset whose train and test splits declare ``data_format: ["pickle"]`` and hold a
    :class:`Payload`; returns ``(root, marker)``."""
    root, marker = tmp_path / "ds", tmp_path / "payload-ran"
    for split in ("train", "test"):
        write_raw_split(root / split, [Payload(marker)])
    write_manifest(Manifest(teacher=TEACHER, embed_dim=E, counts={"train": 1, "test": 1}), root)
    assert json.loads((root / "train" / "index.json").read_text())["config"]["data_format"] == ["pickle"]
    return root, marker


def damage(report, split: str = "train") -> str:
    """The messages of ``report``'s damage in ``split``, one per line."""
    return "\n".join(f"{d['error']}: {d['message']}" for d in report.damaged if d["split"] == split)


# ---------------------------------------------------------------------------- clip-gs verify
def test_verify_refuses_a_split_declaring_pickle_and_runs_no_payload(pickle_dataset, capsys):
    root, marker = pickle_dataset
    report = verify_dataset(root)
    assert not marker.exists(), "verify unpickled the chunk"
    assert "field config.data_format" in damage(report) and "pickle" in damage(report)
    assert report.checked == {}  # neither split was read
    assert main(["verify", str(root), "--quiet"]) == 3
    assert not marker.exists()


@pytest.mark.parametrize("where", ["../../x/stolen.bin", "absolute", "/etc/passwd", "sub/chunk-0-0.bin"])
def test_verify_refuses_chunk_names_that_leave_the_split(tmp_path, where):
    root = write_dataset(tmp_path / "ds", {"train": 1})
    outside = tmp_path / "x" / "stolen.bin"  # the real chunk, moved where the name points
    outside.parent.mkdir()
    shutil.move(root / "train" / "chunk-0-0.bin", outside)
    if where == "sub/chunk-0-0.bin":
        (root / "train" / "sub").mkdir()
        shutil.copy(outside, root / "train" / "sub" / "chunk-0-0.bin")
    name = str(outside) if where == "absolute" else where

    def point(index):
        index["chunks"][0]["filename"] = name

    edit_index(root / "train", point)
    with pytest.raises(DatasetError, match=r"index\.json: field chunks\[0\]\.filename"):
        TripletShardDataset(root / "train")
    report = verify_dataset(root)
    assert not report.ok and "chunks[0].filename" in damage(report)


def test_verify_refuses_a_chunk_symlinked_out_of_the_split(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": 1})
    outside = tmp_path / "elsewhere.bin"
    shutil.move(root / "train" / "chunk-0-0.bin", outside)
    (root / "train" / "chunk-0-0.bin").symlink_to(outside)
    report = verify_dataset(root)
    assert "outside its split folder" in damage(report)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
def test_verify_refuses_chunks_that_are_not_regular_files(tmp_path, kind):
    root = write_dataset(tmp_path / "ds", {"train": 1})
    chunk = root / "train" / "chunk-0-0.bin"
    chunk.unlink()
    if kind == "dev-zero":
        chunk.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(chunk)
    else:
        chunk.mkdir()
    report = verify_dataset(root)
    expected = "outside its split folder" if kind == "dev-zero" else "not a regular file"
    assert expected in damage(report)


@pytest.mark.parametrize(
    ("field", "value", "refusal"),
    [
        ("chunk_size", 10**12, r"field chunks\[0\]\.chunk_size: 1000000000000 records cannot fit"),
        ("chunk_size", 0, r"field chunks\[0\]\.chunk_size"),
        ("chunk_bytes", "7002", r"field chunks\[0\]\.chunk_bytes"),
        ("chunk_bytes", 10**9, r"chunk-0-0\.bin: \d+ bytes, .*index\.json says 1000000000"),
        ("dim", 3, r"field chunks\[0\]\.dim"),
    ],
)
def test_verify_checks_index_counts_before_any_loop(tmp_path, field, value, refusal):
    root = write_dataset(tmp_path / "ds", {"train": 3})

    def lie(index):
        index["chunks"][0][field] = value

    edit_index(root / "train", lie)
    with pytest.raises(DatasetError, match=refusal):
        TripletShardDataset(root / "train")
    report = verify_dataset(root)
    assert report.checked == {} and len(report.damaged) == 1 and report.damaged[0]["index"] is None


def test_verify_finds_records_an_index_hides(tmp_path):
    """An index that lists fewer records than a chunk holds (and a manifest that agrees) hides samples."""
    root = write_dataset(tmp_path / "ds", {"train": 3})

    def hide(index):
        assert index["chunks"][0]["chunk_size"] == 2
        index["chunks"][0]["chunk_size"] = 1

    edit_index(root / "train", hide)
    edit_manifest(root, lambda m: m["counts"].update(train=2))
    report = verify_dataset(root)
    assert "CorruptSampleError" in damage(report) and "holds 2 records, the index says 1" in damage(report)


def test_verify_reports_a_duplicated_record(tmp_path):
    records = [sample(i).to_record() for i in range(2)]
    write_raw_split(tmp_path / "ds" / "train", [records[0], records[1], records[0]])
    write_manifest(Manifest(teacher=TEACHER, embed_dim=E, counts={"train": 3}), tmp_path / "ds")
    report = verify_dataset(tmp_path / "ds")
    assert [(d["index"], d["error"]) for d in report.damaged] == [(2, "DuplicateId")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("counts", [1, 2]),
        ("counts", {"train": -1}),
        ("counts", {"everything": 1}),
        ("format_version", "1"),
        ("format_version", 2),
        ("embed_dim", "8"),
        ("embed_dim", 10**9),
        ("labels", "cube"),
        ("labels", ["sphere", "cube"]),
        ("teacher", 5),
        ("caption_coverage", 7),
        ("failures", -3),
    ],
)
def test_verify_refuses_a_manifest_of_wrong_types_naming_the_field(tmp_path, capsys, field, value):
    root = write_dataset(tmp_path / "ds", {"train": 1})
    edit_manifest(root, lambda m: m.update({field: value}))
    with pytest.raises(DatasetError, match=rf"manifest\.json: invalid manifest: field {field}\b"):
        verify_dataset(root)
    assert main(["verify", str(root), "--quiet"]) == EXIT_FATAL
    assert f"field {field}" in capsys.readouterr().err


def test_a_manifest_that_is_not_a_regular_file_is_refused(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": 1})
    (root / "manifest.json").unlink()
    os.mkfifo(root / "manifest.json")
    with pytest.raises(DatasetError, match="not a regular file"):
        read_manifest(root)


# ---------------------------------------------------------------------------- the data module
def test_datamodule_refuses_a_pickle_split_before_any_payload_runs(pickle_dataset):
    from clip_gs.lightning import GaussianDataModule

    root, marker = pickle_dataset
    dm = GaussianDataModule(root=str(root), batch_size=1, num_workers=0, num_gaussians=16, views_per_step=1,
                            augment=False)  # fmt: skip
    with pytest.raises(DatasetError, match="field config.data_format"):
        dm.setup("fit")
        list(dm.train_dataloader())
    assert not marker.exists(), "the data module unpickled the chunk"


def test_datamodule_refuses_a_chunk_outside_the_split(tmp_path):
    from clip_gs.lightning import GaussianDataModule

    root = write_dataset(tmp_path / "ds", {"train": 2})
    shutil.copy(root / "train" / "chunk-0-0.bin", tmp_path / "stolen.bin")
    edit_index(root / "train", lambda index: index["chunks"][0].update(filename="../../stolen.bin"))
    dm = GaussianDataModule(root=str(root), batch_size=1, num_workers=0, num_gaussians=16, views_per_step=1,
                            augment=False)  # fmt: skip
    with pytest.raises(DatasetError, match=r"chunks\[0\]\.filename"):
        dm.setup("fit")
        list(dm.train_dataloader())


# ---------------------------------------------------------------------------- evaluation
def test_evaluation_refuses_a_pickle_split_before_any_payload_runs(pickle_dataset):
    from clip_gs.evaluation import PreparedSplit, embed

    root, marker = pickle_dataset
    model = create_model("clip-gs-tiny", num_gaussians=16, num_groups=4, group_size=4, embed_dim=E, depth=1)
    with pytest.raises(DatasetError, match="field config.data_format"):
        embed(model, PreparedSplit(root, "test"), precision="fp32")
    assert not marker.exists(), "evaluation unpickled the chunk"


# ---------------------------------------------------------------------------- the prepare merge (iter_records)
def test_iter_records_refuses_a_pickle_split_before_any_payload_runs(pickle_dataset):
    root, marker = pickle_dataset
    with pytest.raises(DatasetError, match="field config.data_format"):
        list(iter_records(str(root / "train")))
    assert not marker.exists()


# ---------------------------------------------------------------------------- label embeddings
def _label_file(tensors: dict, meta: dict) -> bytes:
    return pack_tensors(tensors, {"labels": ["a", "b", "c"], "teacher": TEACHER, "templates": ["{}"]} | meta)


UNIT3 = F.normalize(torch.randn(3, E, generator=torch.Generator().manual_seed(0)), dim=-1)


@pytest.mark.parametrize(
    "blob",
    [
        _label_file({"label_embeddings": UNIT3}, {"labels": "abc"}),
        _label_file({"label_embeddings": UNIT3[:2]}, {}),
        _label_file({"label_embeddings": UNIT3}, {"labels": ["a", "a", "b"]}),
        _label_file({"label_embeddings": UNIT3.masked_fill(UNIT3 > 0.5, float("nan"))}, {}),
        _label_file({"label_embeddings": UNIT3, "x": torch.zeros(1)}, {}),
        _label_file({"label_embeddings": UNIT3}, {"teacher": ["not", "text"]}),
        _label_file({"label_embeddings": UNIT3}, {}) + b"trailing bytes",
    ],
    ids=["labels-text", "fewer-rows", "duplicate-labels", "nan", "extra-tensor", "teacher-list", "trailing-bytes"],
)
def test_malformed_label_embeddings_are_refused(tmp_path, blob):
    write_label_embeddings(tmp_path, ["a", "b", "c"], UNIT3, TEACHER, ["{}"])
    read_label_embeddings(tmp_path)  # the file as written reads
    (tmp_path / "label_embeddings.bin").write_bytes(blob)
    with pytest.raises(DatasetError, match=r"label_embeddings\.bin: "):
        read_label_embeddings(tmp_path)


def test_a_tensor_shape_larger_than_the_blob_is_refused_before_allocating(tmp_path):
    blob = bytearray(_label_file({"label_embeddings": UNIT3}, {}))
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    header["tensors"][0][1] = [1 << 40, 1 << 20]  # 4 PiB of float32 declared; nbytes left as it was
    encoded = json.dumps(header).encode()
    (tmp_path / "label_embeddings.bin").write_bytes(struct.pack("<Q", len(encoded)) + encoded + blob[8 + length :])
    with pytest.raises(DatasetError, match="do not fit its shape"):
        read_label_embeddings(tmp_path)


# ---------------------------------------------------------------------------- the embedding index
def _index_file(path: Path, embeddings: torch.Tensor, names: dict, **meta) -> Path:
    from safetensors.torch import save_file

    data = json.dumps(names).encode()
    metadata = {"model": "m", "teacher": "t", "embed_dim": str(embeddings.shape[1]), "settings": "{}"} | meta
    save_file({"embeddings": embeddings, "names": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, str(path),
              metadata=metadata)  # fmt: skip
    return path


UNIT2 = F.normalize(torch.randn(2, E, generator=torch.Generator().manual_seed(1)), dim=-1)
NAMES2 = {"ids": ["a", "b"], "paths": ["a.ply", "b.ply"], "infos": [{}, {}]}


@pytest.mark.parametrize(
    ("embeddings", "names", "meta", "problem"),
    [
        (UNIT2, NAMES2 | {"ids": ["a", "a"]}, {}, "ids are not distinct"),
        (UNIT2, NAMES2 | {"ids": [1, 2]}, {}, "ids are not distinct texts"),
        (UNIT2 * 3, NAMES2, {}, "not unit vectors"),
        (UNIT2.masked_fill(UNIT2 > 0.3, float("nan")), NAMES2, {}, "not all finite"),
        (UNIT2.half(), NAMES2, {}, "not float32"),
        (UNIT2, NAMES2, {"embed_dim": "16"}, "embed_dim"),
        (UNIT2, NAMES2, {"settings": "[1, 2]"}, "settings are not a JSON object"),
        (UNIT2, NAMES2 | {"infos": [{}, "x"]}, {}, "infos not objects"),
    ],
    ids=["duplicate-ids", "int-ids", "not-unit", "nan", "float16", "embed-dim", "settings-list", "info-text"],
)
def test_malformed_embedding_index_files_are_refused(tmp_path, embeddings, names, meta, problem):
    path = _index_file(tmp_path / "index.safetensors", UNIT2, NAMES2)
    assert EmbeddingIndex.load(path).ids == ["a", "b"]  # the well-formed file loads
    _index_file(path, embeddings, names, **meta)
    with pytest.raises(DatasetError, match=rf"index\.safetensors: not a valid clip-gs embedding index: .*{problem}"):
        EmbeddingIndex.load(path)


def test_an_embedding_index_path_that_is_a_device_is_refused():
    with pytest.raises(DatasetError, match="not a regular file"):
        EmbeddingIndex.load("/dev/zero")


# ---------------------------------------------------------------------------- s3 roots
def s3_bucket(s3_server: dict):
    """A boto3 client of the test server and a new bucket of its own (the server's state outlives it)."""
    import uuid

    import boto3

    client, bucket = boto3.client("s3", **s3_server), f"hostile-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.mark.parametrize(
    "edit",
    [
        {"filename": "../elsewhere/chunk-0-0.bin"},
        {"filename": "/elsewhere/chunk-0-0.bin"},
        {"updated_at": "../../../escaped"},
    ],
    ids=["dotdot-key", "absolute-key", "updated-at-path"],
)
def test_an_s3_index_cannot_point_outside_its_prefix_or_cache(s3_server, tmp_path, edit):
    client, bucket = s3_bucket(s3_server)
    url = f"s3://{bucket}/prefix"
    write_split([sample(i).to_record() for i in range(2)], f"{url}/train", chunk_bytes=CHUNK_BYTES,
                storage_options=s3_server)  # fmt: skip
    index = json.loads(client.get_object(Bucket=bucket, Key="prefix/train/index.json")["Body"].read())
    chunk = client.get_object(Bucket=bucket, Key="prefix/train/chunk-0-0.bin")["Body"].read()
    client.put_object(Bucket=bucket, Key="prefix/elsewhere/chunk-0-0.bin", Body=chunk)
    if "filename" in edit:
        index["chunks"][0]["filename"] = edit["filename"]
    else:
        index["updated_at"] = edit["updated_at"]
    client.put_object(Bucket=bucket, Key="prefix/train/index.json", Body=json.dumps(index).encode())
    cache = tmp_path / "a" / "b" / "cache"
    field = r"chunks\[0\]\.filename" if "filename" in edit else "updated_at"
    with pytest.raises(DatasetError, match=rf"prefix/train/index\.json: field {field}"):
        TripletShardDataset(url + "/train", cache_dir=cache, storage_options=s3_server)
    assert not (tmp_path / "a" / "escaped").exists(), "a cache folder was made outside the cache"


def test_s3_random_access_checks_the_chunk_framing(s3_server, tmp_path):
    """Random access to a remote split (verify, evaluation) reads whole chunks whose offset table is
    checked: a table that points record 1 at record 0's bytes is refused, not read as a duplicate."""
    client, bucket = s3_bucket(s3_server)
    url = f"s3://{bucket}/data"
    write_split([sample(i).to_record() for i in range(3)], f"{url}/train", chunk_bytes=CHUNK_BYTES,
                storage_options=s3_server)  # fmt: skip
    intact = TripletShardDataset(url + "/train", cache_dir=tmp_path / "cache", storage_options=s3_server)
    assert [intact[i].id for i in (2, 0, 1)] == ["obj-2", "obj-0", "obj-1"]

    chunk = bytearray(client.get_object(Bucket=bucket, Key="data/train/chunk-0-0.bin")["Body"].read())
    n, first, second, _ = struct.unpack_from("<4I", chunk)
    assert n == 2
    struct.pack_into("<2I", chunk, 8, first, second)  # offsets [o0, o0, o1]: record 1 spans record 0's bytes
    client.put_object(Bucket=bucket, Key="data/train/chunk-0-0.bin", Body=bytes(chunk))
    dataset = TripletShardDataset(url + "/train", cache_dir=tmp_path / "other-cache", storage_options=s3_server)
    with pytest.raises(CorruptSampleError, match="offset table"):
        dataset[1]


# ---------------------------------------------------------------------------- fuzzing
VALUES = [
    None, True, 0, -1, 1, 2, 7, 10**12, 2**32, 1.5, 1e308, "", "pickle", "str", "../../x/stolen.bin", "/etc/passwd",
    "chunk-0-0.bin", "chunk-0-1.bin", "0" * 32, "../../escaped", [], {}, ["pickle"], ["str", "str", "bytes"],
    {"train": 1}, ["a", "b"], [1, 2],
]  # fmt: skip
NAMES = ["extra", "format", "shards", "train", "labels"]

fraction = st.floats(0.0, 1.0, exclude_max=True)
json_edit = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 1 << 16), st.sampled_from(VALUES)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16)),
    st.tuples(st.just("add"), st.integers(0, 1 << 16), st.sampled_from(NAMES), st.sampled_from(VALUES)),
)
byte_edit = st.one_of(
    st.tuples(st.just("truncate"), fraction),
    st.tuples(st.just("flip"), fraction, st.integers(0, 7)),
    st.tuples(st.just("insert"), fraction, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("uint32"), st.integers(0, 40), st.sampled_from([0, 1, 2, 3, 16, 255, 1 << 31, (1 << 32) - 1])),
)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=DEADLINE_MS, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def _slots(node) -> list[tuple]:
    """Every ``(container, key)`` of a JSON tree, depth first."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((node, key))
        found.extend(_slots(child))
    return found


def mutate_json(data: bytes, edits) -> bytes:
    tree = json.loads(data)
    for edit in edits:
        slots = _slots(tree)
        if edit[0] == "add":
            objects = [tree] + [c[k] for c, k in slots if isinstance(c[k], dict)]
            objects[edit[1] % len(objects)][edit[2]] = edit[3]
        elif slots:
            container, key = slots[edit[1] % len(slots)]
            if edit[0] == "set":
                container[key] = edit[2]
            elif isinstance(container, dict):
                del container[key]
            else:
                container.pop(key)
    return json.dumps(tree).encode()


def mutate_bytes(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for edit in edits:
        at = int(edit[1] * len(out)) if isinstance(edit[1], float) else edit[1]
        if edit[0] == "truncate":
            del out[at:]
        elif edit[0] == "flip" and at < len(out):
            out[at] ^= 1 << edit[2]
        elif edit[0] == "insert":
            out[at:at] = edit[2]
        elif edit[0] == "uint32" and at + 4 <= len(out):
            out[at : at + 4] = struct.pack("<I", edit[2])
    return bytes(out)


def mutate(data: bytes, json_edits, byte_edits) -> bytes:
    return mutate_bytes(mutate_json(data, json_edits) if json_edits else data, byte_edits)


@pytest.fixture(scope="module")
def seed_dataset(tmp_path_factory) -> dict[str, bytes]:
    """The files of a small dataset (3 train records in 2 chunks, label embeddings), by name."""
    root = write_dataset(tmp_path_factory.mktemp("seed"), {"train": 3})
    write_label_embeddings(root, ["cube", "sphere"], UNIT3[:2], TEACHER, ["{}"])
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert sorted(files) == ["label_embeddings.bin", "manifest.json", "train/chunk-0-0.bin", "train/chunk-0-1.bin",
                             "train/index.json"]  # fmt: skip
    return files


def _written(files: dict[str, bytes], changed: dict[str, bytes]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="clip-gs-hostile-"))
    for name, data in (files | changed).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def split_outcome(split: Path, written: list[dict]) -> str:
    """The split reads as exactly the records written, or is refused with the package's error."""

    def read():
        try:
            dataset = TripletShardDataset(split)
            assert len(dataset) <= len(written), f"the index lists {len(dataset)} records, {len(written)} were written"
            return [dataset[i].to_record() for i in range(len(dataset))]
        except ClipGSError:
            return None

    records, peak = peak_bytes(read)
    assert peak < MAX_PEAK_BYTES, f"peak allocation {peak:,} bytes"
    if records is None:
        return "refused"
    assert records == written, "the split reads as other records than were written"
    return "valid"


def test_fuzzed_split_index_and_chunks_read_as_written_or_are_refused(seed_dataset):
    written = [sample(i).to_record() for i in range(3)]
    assert split_outcome(_written(seed_dataset, {}) / "train", written) == "valid"

    @FUZZ
    @given(target=st.sampled_from(["train/index.json", "train/chunk-0-0.bin"]),
           json_edits=st.lists(json_edit, max_size=3), byte_edits=st.lists(byte_edit, max_size=2))  # fmt: skip
    def run(target, json_edits, byte_edits):
        if target.endswith(".bin"):
            json_edits = []
        if not json_edits and not byte_edits:
            return
        root = _written(seed_dataset, {target: mutate(seed_dataset[target], json_edits, byte_edits)})
        try:
            split_outcome(root / "train", written)
        finally:
            shutil.rmtree(root)

    run()


def _manifest_is_well_formed(manifest: Manifest) -> None:
    assert isinstance(manifest.teacher, str) and isinstance(manifest.embed_dim, int) and manifest.embed_dim > 0
    assert isinstance(manifest.counts, dict) and all(k in SPLITS and isinstance(v, int) and v >= 0
                                                     for k, v in manifest.counts.items())  # fmt: skip
    assert isinstance(manifest.labels, list) and manifest.labels == sorted(set(manifest.labels))
    assert all(isinstance(label, str) for label in manifest.labels) and isinstance(manifest.settings, dict)
    assert isinstance(manifest.failures, int) and isinstance(manifest.package_version, str)
    assert isinstance(manifest.format_version, int) and 1 <= manifest.format_version
    coverage = manifest.caption_coverage
    assert coverage is None or (isinstance(coverage, (int, float)) and 0 <= coverage <= 1)


def test_fuzzed_manifest_reads_well_formed_or_is_refused(seed_dataset):
    @FUZZ
    @given(json_edits=st.lists(json_edit, max_size=3), byte_edits=st.lists(byte_edit, max_size=2))
    def run(json_edits, byte_edits):
        data = mutate(seed_dataset["manifest.json"], json_edits, byte_edits)
        root = _written({}, {"manifest.json": data})
        try:
            manifest = read_manifest(root)
        except DatasetError:
            return
        finally:
            shutil.rmtree(root)
        _manifest_is_well_formed(manifest)

    run()


def _header_edit(blob: bytes, json_edits) -> bytes:
    """``json_edits`` applied to the JSON header of a packed-tensors file, its data left as it was."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = mutate_json(blob[8 : 8 + length], json_edits)
    return struct.pack("<Q", len(header)) + header + blob[8 + length :]


def test_fuzzed_label_embeddings_read_well_formed_or_are_refused(seed_dataset):
    @FUZZ
    @given(json_edits=st.lists(json_edit, max_size=3), byte_edits=st.lists(byte_edit, max_size=2))
    def run(json_edits, byte_edits):
        blob = seed_dataset["label_embeddings.bin"]
        data = mutate_bytes(_header_edit(blob, json_edits) if json_edits else blob, byte_edits)
        root = _written({}, {"label_embeddings.bin": data})
        try:
            labels, embeddings, meta = peak_bytes(lambda: read_label_embeddings(root))[0]
        except DatasetError:
            return
        finally:
            shutil.rmtree(root)
        assert isinstance(labels, list) and all(isinstance(x, str) for x in labels) and len(set(labels)) == len(labels)
        assert embeddings.ndim == 2 and embeddings.shape[0] == len(labels) and embeddings.dtype == torch.float32
        assert bool(torch.isfinite(embeddings).all()) and isinstance(meta["teacher"], str)

    run()


def test_the_fuzz_mutations_reach_past_the_first_check(seed_dataset):
    """Guard against a fuzzer whose every mutation is refused at once: a changed ``updated_at`` or a
    flipped bit deep in a blob (caught by the record's checksum, not by the index) are both possible."""
    written = [sample(i).to_record() for i in range(3)]
    index = json.loads(seed_dataset["train/index.json"])
    index["updated_at"] = "f" * 32
    root = _written(seed_dataset, {"train/index.json": json.dumps(index).encode()})
    assert split_outcome(root / "train", written) == "valid"
    flipped = mutate_bytes(seed_dataset["train/chunk-0-0.bin"], [("flip", 0.9, 0)])
    root = _written(seed_dataset, {"train/chunk-0-0.bin": flipped})
    with pytest.raises(CorruptSampleError, match="checksum"):
        TripletShardDataset(root / "train")[1]
