"""Triplet shards (clip_gs.data.shards) and GaussianDataModule (clip_gs.lightning).

Datasets are written here from synthetic objects (``make_object``) with fake, deterministic
unit-norm teacher embeddings (E=16, T=1..2 captions, V=4..6 views).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from clip_gs.data.batches import SampleProcessor, TripletBatch, collate_triplets
from clip_gs.data.shards import (
    TripletShardDataset,
    allow_plain_http_endpoint,
    read_manifest,
    write_manifest,
    write_split,
)
from clip_gs.data.synthetic import SHAPE_CLASSES
from clip_gs.data.transforms import RandomScale, RandomTranslation, sample_seed
from clip_gs.data.triplets import Manifest
from clip_gs.errors import CorruptSampleError, DatasetError
from clip_gs.lightning import GaussianDataModule
from clip_gs.model.features import preprocess
from tests.helpers import E, fake_sample

N = 64  # Gaussians per model input
TEACHER = "fake-teacher-16"


def write_test_dataset(
    root: str | Path,
    n: int,
    n_val: int = 0,
    n_test: int = 0,
    chunk_bytes: int | str = "20KB",
    teacher: str = TEACHER,
    storage_options: dict | None = None,
) -> list[str]:
    """Write ``<root>/{train,val,test}`` and the manifest; returns the train ids in written order."""
    counts = {"train": n, "val": n_val, "test": n_test}
    start, labels = 0, set()
    train_ids = []
    for split, count in counts.items():
        if not count:
            continue
        samples = [fake_sample(i) for i in range(start, start + count)]
        start += count
        labels |= {s.label for s in samples if s.label}
        if split == "train":
            train_ids = [s.id for s in samples]
        sep = "/" if str(root).startswith("s3://") else os.sep
        write_split((s.to_record() for s in samples), f"{root}{sep}{split}", chunk_bytes, storage_options)
    manifest = Manifest(teacher=teacher, embed_dim=E, counts=counts, labels=sorted(labels))
    if not str(root).startswith("s3://"):
        Path(root).mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, root, storage_options)
    return train_ids


def make_dm(root, **overrides) -> GaussianDataModule:
    args = {"batch_size": 4, "num_workers": 0, "num_gaussians": N, "views_per_step": 5, "augment": False, "seed": 7}
    args.update(overrides)
    return GaussianDataModule(root=str(root), **args)


def epoch_batches(loader) -> list[TripletBatch]:
    return list(loader)


def flat_ids(batches) -> list[str]:
    return [i for b in batches for i in b.ids]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 22-sample train split in 20 kB chunks (~1 sample per chunk... several), 6 val, 6 test."""
    root = tmp_path_factory.mktemp("triplets")
    ids = write_test_dataset(root, 22, n_val=6, n_test=6)
    return root, ids


# ---------------------------------------------------------------------------- writing
def test_write_split_is_deterministic_and_refuses_to_overwrite(tmp_path):
    records = [fake_sample(i).to_record() for i in range(9)]
    for name in ("a", "b"):
        assert write_split(iter(records), tmp_path / name, chunk_bytes="20KB") == 9
    files = sorted(os.listdir(tmp_path / "a"))
    assert len([f for f in files if f.endswith(".bin")]) > 1 and "index.json" in files
    assert files == sorted(os.listdir(tmp_path / "b"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    with pytest.raises(DatasetError, match="not empty"):
        write_split(records, tmp_path / "a")
    with pytest.raises(DatasetError, match="duplicate id"):
        write_split([records[0], records[0]], tmp_path / "c")
    bad = dict(records[1], sha256="0" * 64)
    with pytest.raises(DatasetError, match="sha256"):
        write_split([bad], tmp_path / "d")
    with pytest.raises(DatasetError, match="no records"):
        write_split([], tmp_path / "e")
    # a different record gives a different cache key (index.json's updated_at)
    write_split(records[:8], tmp_path / "f", chunk_bytes="20KB")
    keys = [json.loads((tmp_path / name / "index.json").read_text())["updated_at"] for name in "abf"]
    assert keys[0] == keys[1] != keys[2]


def test_the_pinned_litdata_internals_behave_as_shards_relies_on(tmp_path, monkeypatch):
    """LitData is pinned (pyproject.toml) because shards.py sets two private settings; this checks both."""
    import litdata
    from litdata.streaming import downloader

    assert litdata.__version__ == "0.2.76"
    # 1. BinaryWriter._rank: chunk names stay chunk-0-<i>.bin even where LitData's own env names another rank
    monkeypatch.setenv("DATA_OPTIMIZER_GLOBAL_RANK", "5")
    write_split([fake_sample(i).to_record() for i in range(3)], tmp_path / "ranked", chunk_bytes="20KB")
    chunks = sorted(f for f in os.listdir(tmp_path / "ranked") if f.endswith(".bin"))
    assert chunks and all(f.startswith("chunk-0-") for f in chunks), chunks
    # 2. the obstore client options are a module-level dict (that the store is built with: the S3 tests
    #    stream chunks from a plain-http endpoint through it)
    assert isinstance(downloader._OBSTORE_CLIENT_OPTIONS, dict)
    # 3. the switch that keeps chunks in the plain layout when pyarrow is installed
    from litdata.streaming import item_loader

    assert hasattr(item_loader, "_PYARROW_AVAILABLE")  # read each time a chunk is built


def test_same_sample_gives_the_same_record():
    sample = fake_sample(0)
    assert len({sample.to_record()["blob"] for _ in range(24)}) == 1


def test_dataset_decodes_samples_in_written_order(dataset_root):
    root, ids = dataset_root
    ds = TripletShardDataset(root / "train")
    assert len(ds) == 22
    assert [ds[i].id for i in range(22)] == ids
    reference = fake_sample(5)
    assert torch.equal(ds[5].cloud.means, reference.cloud.means)
    assert torch.equal(ds[5].image_embeddings, reference.image_embeddings)
    with pytest.raises(DatasetError, match="no index.json"):
        TripletShardDataset(root / "nowhere")


# ---------------------------------------------------------------------------- streaming
def test_two_workers_yield_every_train_id_exactly_once(dataset_root):
    root, ids = dataset_root
    dm = make_dm(root, num_workers=2, drop_last=False, shuffle=True)
    dm.setup("fit")
    seen = flat_ids(epoch_batches(dm.train_dataloader()))
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)
    assert seen != ids  # shuffled (and interleaved across the two workers)
    # the default drop_last keeps only full batches: 22 - 22 % 4 = 20 samples, none twice
    dm = make_dm(root, num_workers=2, shuffle=True)
    dm.setup("fit")
    batches = epoch_batches(dm.train_dataloader())
    seen = flat_ids(batches)
    assert len(seen) == 20 == len(set(seen)) and set(seen) <= set(ids)
    assert all(len(b) == 4 for b in batches)


def test_val_and_test_loaders_are_in_order_and_complete(dataset_root):
    root, _ = dataset_root
    dm = make_dm(root, batch_size=4)
    dm.setup("fit")
    dm.setup("test")
    val = flat_ids(dm.val_dataloader())
    assert val == [f"obj-{i:04d}" for i in range(22, 28)]  # 6 samples: batches 4 + 2, nothing dropped
    assert flat_ids(dm.test_dataloader()) == [f"obj-{i:04d}" for i in range(28, 34)]


def test_resume_from_loader_state_continues_exactly(dataset_root):
    root, _ = dataset_root
    kwargs = {"batch_size": 2, "num_workers": 2, "shuffle": True, "augment": True, "drop_last": False}
    dm = make_dm(root, **kwargs)
    dm.setup("fit")
    reference = epoch_batches(dm.train_dataloader())
    assert len(reference) == 11

    dm = make_dm(root, **kwargs)
    dm.setup("fit")
    loader = dm.train_dataloader()
    first = []
    for batch in loader:
        first.append(batch)
        if len(first) == 5:
            break
    state = loader.state_dict()

    dm = make_dm(root, **kwargs)
    dm.setup("fit")
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = epoch_batches(resumed)
    assert flat_ids(first) + flat_ids(rest) == flat_ids(reference)
    # the same augmented inputs as the uninterrupted run (epoch and index reach the workers)
    for got, want in zip(first + rest, reference):
        assert torch.equal(got.features, want.features)


# ---------------------------------------------------------------------------- DDP
class RecordIds(pl.LightningModule):
    """Records the ids each rank trains on and writes them to ``<out_dir>/rank<r>.json``."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        self.seen.extend(batch.ids)
        return (self.weight * batch.features.mean()).square()

    def on_train_epoch_end(self):
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_ranks_cover_the_epoch_without_duplicates(dataset_root, tmp_path):
    root, ids = dataset_root
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    # setup() runs in each spawned rank after the gloo process group exists
    trainer.fit(RecordIds(str(tmp_path)), datamodule=make_dm(root, batch_size=4, num_workers=0, shuffle=True))
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 22 samples, 2 ranks x batch 4: LitData hands out whole batches, 22 // 8 = 2 per rank, and
    # drops 22 mod 8 = 6 samples; each rank sees 8 distinct samples and the ranks are disjoint.
    assert [len(seen) for seen in per_rank] == [8, 8]
    union = per_rank[0] + per_rank[1]
    assert len(set(union)) == 16 and set(union) <= set(ids)


# ---------------------------------------------------------------------------- corruption
def test_corrupted_record_raises_naming_chunk_and_index(tmp_path):
    records = [fake_sample(i).to_record() for i in range(8)]
    write_split(records, tmp_path / "train", chunk_bytes="20KB")
    write_manifest(Manifest(teacher=TEACHER, embed_dim=E, counts={"train": 8}, labels=sorted(SHAPE_CLASSES)), tmp_path)
    victim, start = 5, 0
    for entry in json.loads((tmp_path / "train" / "index.json").read_text())["chunks"]:  # which chunk holds it
        if start <= victim < start + entry["chunk_size"]:
            chunk = entry["filename"]
        start += entry["chunk_size"]
    assert chunk != "chunk-0-0.bin"  # several chunks, so naming the right one means something
    path = tmp_path / "train" / chunk
    data = bytearray(path.read_bytes())
    blob = records[victim]["blob"]
    at = data.find(blob)
    assert at >= 0
    middle = at + len(blob) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])  # flip a byte range in place
    path.write_bytes(bytes(data))

    fresh = TripletShardDataset(tmp_path / "train")
    with pytest.raises(CorruptSampleError, match=rf"{chunk}, index {victim}\b.*checksum"):
        fresh[victim]
    assert fresh[victim - 1].id == records[victim - 1]["id"]  # the neighbours still read
    dm = make_dm(tmp_path, batch_size=2, shuffle=False, num_workers=1)
    dm.setup("fit")
    with pytest.raises(CorruptSampleError, match=rf"{chunk}, index {victim}\b"):
        epoch_batches(dm.train_dataloader())


# ---------------------------------------------------------------------------- per-sample processing
def test_features_without_augmentation_equal_preprocess_and_encode_input(dataset_root):
    from clip_gs.model.config import get_model_config
    from clip_gs.model.inputs import GaussianInputDataset

    root, _ = dataset_root
    dm = make_dm(root, num_workers=0, shuffle=False, drop_last=False, augment=False, seed=7)
    dm.setup("fit")
    batches = epoch_batches(dm.train_dataloader())
    raw = TripletShardDataset(root / "train")
    config = get_model_config("clip-gs-tiny", num_gaussians=N, num_groups=8, group_size=8)
    for batch in batches[:2]:
        for b, index in enumerate(batch.indices.tolist()):
            cloud = raw[index].cloud
            expected = preprocess(cloud, N, "sigmoid", seed=7)
            assert torch.equal(batch.features[b], expected)
            assert torch.equal(batch.features[b], GaussianInputDataset([cloud], config, seed=7)[0].features)


def test_preprocess_with_an_identity_transform_is_preprocess():
    cloud = fake_sample(3).cloud
    identity = RandomScale(1.0, 1.0)
    assert torch.equal(preprocess(cloud, N, "sigmoid", 11, identity), preprocess(cloud, N, "sigmoid", seed=11))
    assert torch.equal(preprocess(cloud, N, "exp", 11, RandomTranslation(0.0)), preprocess(cloud, N, "exp", seed=11))


def test_augmentation_is_a_function_of_seed_epoch_and_index(dataset_root):
    root, _ = dataset_root
    dm = make_dm(root, augment=True, num_workers=2, drop_last=False, shuffle=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    by_epoch = [{i: f for b in loader for i, f in zip(b.ids, b.features)} for _ in range(2)]
    assert by_epoch[0].keys() == by_epoch[1].keys()
    assert all(not torch.equal(by_epoch[0][i], by_epoch[1][i]) for i in by_epoch[0])  # epochs differ

    again = make_dm(root, augment=True, num_workers=2, drop_last=False, shuffle=True)
    again.setup("fit")
    first = {i: f for b in again.train_dataloader() for i, f in zip(b.ids, b.features)}
    assert all(torch.equal(first[i], by_epoch[0][i]) for i in first)  # same (seed, epoch, index)

    # the loader's first epoch is epoch 0 of sample_seed, the second epoch 1
    raw = TripletShardDataset(root / "train")
    for epoch in (0, 1):
        want = preprocess(raw[9].cloud, N, "sigmoid", sample_seed(7, epoch, 9), dm.augmentation)
        assert torch.equal(by_epoch[epoch]["obj-0009"], want)

    sample = fake_sample(4)
    proc = dm.datasets["train"].sample_transform
    assert torch.equal(proc(sample, 4, 3).features, proc(sample, 4, 3).features)
    assert not torch.equal(proc(sample, 4, 3).features, proc(sample, 5, 3).features)
    # the draw is the documented one: preprocess with sample_seed(seed, epoch, index)
    s = sample_seed(7, 3, 4)
    assert torch.equal(proc(sample, 4, 3).features, preprocess(sample.cloud, N, "sigmoid", s, dm.augmentation))


def test_collate_shapes_masks_and_similarity():
    labels = tuple(sorted(SHAPE_CLASSES))
    proc = SampleProcessor(num_gaussians=N, scale_activation="sigmoid", views_per_step=5, labels=labels, seed=1)
    samples = [
        fake_sample(0, captions=2, views=6),
        fake_sample(1, captions=0, views=4),
        fake_sample(2, views=3, label=None),
    ]
    processed = [proc(s, index=i, epoch=0) for i, s in enumerate(samples)]
    batch = collate_triplets(processed)
    assert batch.features.shape == (3, N, 19)
    assert batch.text.shape == (3, E) and batch.text_mask.tolist() == [True, False, True]
    assert batch.images.shape == (3, 5, E) and batch.similarity.shape == (3, 5)
    assert batch.image_mask.tolist() == [[True] * 5, [True] * 4 + [False], [True] * 3 + [False] * 2]
    assert batch.labels.tolist() == [labels.index(samples[0].label), labels.index(samples[1].label), -1]
    assert batch.ids == [s.id for s in samples] and batch.indices.tolist() == [0, 1, 2]
    # no caption: zeros, masked, similarity 0; missing views: zero rows
    assert torch.equal(batch.text[1], torch.zeros(E)) and torch.equal(batch.similarity[1], torch.zeros(5))
    assert torch.equal(batch.images[2, 3:], torch.zeros(2, E))
    # chosen rows are real stored embeddings: 5 distinct views of 6 (no replacement), all 3 of 3
    rows = [
        next(j for j in range(6) if torch.equal(samples[0].image_embeddings[j], batch.images[0, k])) for k in range(5)
    ]
    assert len(set(rows)) == 5
    assert torch.equal(batch.images[2, :3], samples[2].image_embeddings)
    assert any(torch.equal(batch.text[0], t) for t in samples[0].text_embeddings)
    for b in (0, 2):
        for k in range(int(batch.image_mask[b].sum())):
            t, im = batch.text[b].double(), batch.images[b, k].double()
            cos = float(t @ im / (t.norm() * im.norm()))
            assert batch.similarity[b, k].item() == pytest.approx(cos, abs=1e-6)
    assert torch.equal(batch.similarity[2, 3:], torch.zeros(2))
    # caption / view choice is seeded per (seed, epoch, index): other epochs draw others
    draws = {tuple(proc(samples[0], 0, e).images[:, 0].tolist()) for e in range(6)}
    assert len(draws) > 1


# ---------------------------------------------------------------------------- manifests
def test_mixing_teachers_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, teacher in ((a, "teacher-A"), (b, "teacher-B")):
        root.mkdir()
        write_manifest(Manifest(teacher=teacher, embed_dim=E, counts={"train": 1}), root)
    assert [m.teacher for m in read_manifest([a, a])] == ["teacher-A", "teacher-A"]
    with pytest.raises(DatasetError, match="different teachers.*teacher-A.*teacher-B"):
        read_manifest([a, b])


def test_prepare_data_without_manifest_raises(tmp_path):
    with pytest.raises(DatasetError, match="no manifest"):
        make_dm(tmp_path / "missing").prepare_data()


def test_synthetic_root_is_built_by_prepare(tmp_path):
    dm = make_dm("synthetic:8", cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    from clip_gs.data.shards import TripletShardDataset

    stored = TripletShardDataset(str(Path(dm.dataset_root) / "train"))
    train_ids = {stored[i].id for i in range(len(stored))}
    assert len(train_ids) == dm.manifest.counts["train"] and sum(dm.manifest.counts.values()) == 8
    seen = flat_ids(dm.train_dataloader())  # drop_last: the whole batches of the split, each object once
    assert len(seen) == len(set(seen)) == len(train_ids) // 4 * 4 > 0 and set(seen) <= train_ids
    # the cached dataset of an earlier teacher (here: a tampered record of what it was made with) is
    # refused with the advice that fits a synthetic root, not prepare's --out / --overwrite
    (recorded,) = Path(dm.dataset_root).rglob("settings.json")
    recorded.write_text(recorded.read_text().replace('"teacher": "', '"teacher": "an-earlier-'))
    from clip_gs.errors import PreparedWithOtherSettingsError

    with pytest.raises(
        PreparedWithOtherSettingsError, match=f"delete {dm.dataset_root} to rebuild it, or set data.cache_dir"
    ):
        make_dm("synthetic:8", cache_dir=str(tmp_path)).prepare_data()


def test_plain_http_switch_only_for_http_endpoints(monkeypatch):
    from litdata.streaming import downloader

    monkeypatch.setitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http", "false")
    assert not allow_plain_http_endpoint({"endpoint_url": "https://s3.example.com"})
    assert not allow_plain_http_endpoint(None)
    assert downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] == "false"
    assert allow_plain_http_endpoint({"endpoint_url": "http://127.0.0.1:9"})
    assert downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] == "true"


# ---------------------------------------------------------------------------- S3 (moto: the s3_server fixture in conftest.py)
def test_stream_from_s3_equals_local_copy(s3_server, dataset_root, tmp_path, monkeypatch):
    import boto3

    local_root, ids = dataset_root
    boto3.client("s3", **s3_server).create_bucket(Bucket="bucket")
    url = "s3://bucket/prefix"
    assert write_test_dataset(url, 22, n_val=6, n_test=6, storage_options=s3_server) == ids
    assert read_manifest(url, s3_server).counts == {"train": 22, "val": 6, "test": 6}
    with pytest.raises(DatasetError, match="no manifest"):
        read_manifest("s3://bucket/elsewhere", s3_server)

    from litdata.utilities import dataset_utilities

    def no_default_cache():
        raise AssertionError("LitData's default cache (~/.lightning/chunks) was consulted")

    monkeypatch.setattr(dataset_utilities, "get_default_cache_dir", no_default_cache)
    cache = tmp_path / "cache"
    remote = make_dm(url, storage_options=s3_server, cache_dir=str(cache), shuffle=False, drop_last=False)
    local = make_dm(local_root, shuffle=False, drop_last=False)
    remote.prepare_data()
    for dm in (remote, local):
        dm.setup("fit")
    got, want = epoch_batches(remote.train_dataloader()), epoch_batches(local.train_dataloader())
    assert flat_ids(got) == flat_ids(want) == ids
    for g, w in zip(got, want):
        assert torch.equal(g.features, w.features) and torch.equal(g.images, w.images)
    assert flat_ids(remote.val_dataloader()) == flat_ids(local.val_dataloader())
    cached = [p for p in cache.rglob("*.bin")]
    assert cached, "remote chunks are cached under the given cache_dir"
    client = boto3.client("s3", **s3_server)
    stored = {
        hashlib.sha256(client.get_object(Bucket="bucket", Key=o["Key"])["Body"].read()).hexdigest()
        for o in client.list_objects_v2(Bucket="bucket", Prefix="prefix/")["Contents"]
        if o["Key"].endswith(".bin")
    }
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in cached} <= stored  # byte-identical copies


def test_datamodule_is_configurable_from_yaml(dataset_root):
    from jsonargparse import ArgumentParser

    root, _ = dataset_root
    parser = ArgumentParser()
    parser.add_class_arguments(GaussianDataModule, "data")
    config = parser.parse_string(
        f"data:\n  root: {root}\n  batch_size: 8\n  rotation: so3\n  storage_options: {{endpoint_url: 'http://x'}}\n"
    )
    dm = GaussianDataModule(**config.data.as_dict())
    assert (dm.batch_size, dm.storage_options, dm.augmentation.transforms[0].mode) == (
        8,
        {"endpoint_url": "http://x"},
        "so3",
    )
    assert "storage_options" not in dm.hparams  # may hold credentials: kept out of checkpoints


# ---------------------------------------------------------------------------- extra validation sets
def test_extra_validation_sets_are_checked_before_any_work(tmp_path):
    """Names, splits and contents of ``extra_val`` are refused with the set named: a bad name or
    split at construction, an unlabelled set or an empty split in ``prepare_data``."""
    from clip_gs.errors import ConfigError, DatasetError
    from clip_gs.lightning import ValidationSet
    from tests.helpers import write_learnable_dataset

    with pytest.raises(ConfigError, match="letters, digits"):
        ValidationSet("lvis/val", "x")
    with pytest.raises(ConfigError, match="split must be"):
        ValidationSet("lvis", "x", split="dev")
    with pytest.raises(ConfigError, match="distinct"):
        make_dm(tmp_path, extra_val=[{"name": "a", "root": "x"}, {"name": "a", "root": "y"}])
    train = write_learnable_dataset(tmp_path / "train", 8, 4, 0, labelled=False)
    unlabelled = write_learnable_dataset(tmp_path / "unlabelled", 0, 0, 4, labelled=False)
    labelled = write_learnable_dataset(tmp_path / "labelled", 0, 0, 4)
    with pytest.raises(DatasetError, match="extra validation set 'u'.*has no labels"):
        make_dm(train, extra_val=[{"name": "u", "root": str(unlabelled)}]).prepare_data()
    with pytest.raises(DatasetError, match="extra validation set 'l'.*no 'val' samples"):
        make_dm(train, extra_val=[{"name": "l", "root": str(labelled), "split": "val"}]).prepare_data()
    dm = make_dm(train, num_gaussians=256, views_per_step=3, extra_val=[ValidationSet("l", str(labelled))])
    dm.prepare_data()
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert dm.val_prefixes == ["val", "val_l"] and len(loaders) == 2
    assert dm.evaluation_roots() == {"val": str(train), "test": str(train), "val_l": str(labelled)}
    extra_ids = [i for b in loaders[1] for i in b.ids]
    assert len(extra_ids) == 4 and all(b.labels.min() >= 0 for b in loaders[1])  # its own labels, mapped
    assert all(b.labels.max() == -1 for b in loaders[0])  # the training data's val split: unlabelled
