"""prepare on many processes and machines: LitData workers, node parts and their merge (local and
S3), streamed S3 uploads that resume, device and precision recorded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip_gs import save_gaussians
from clip_gs.data.parallel import node_share
from clip_gs.data.prepare import PrepareSettings, SourceItem, prepare_dataset
from clip_gs.data.shards import iter_records, write_split
from clip_gs.errors import ConfigError, DatasetError, PreparedWithOtherSettingsError
from tests.test_cloud import random_cloud
from tests.test_datamodule import fake_sample

SETTINGS = PrepareSettings(views=2, synthetic_gaussians=512, val_fraction=0.2, test_fraction=0.2)
CLI_SETTINGS = ["--teacher", "synthetic-clip", "--views", "2", "--synthetic-gaussians", "512",
                "--val-fraction", "0.2", "--test-fraction", "0.2", "--quiet"]  # fmt: skip
DATASET_FILES = ("manifest.json", "label_embeddings.bin")


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a prepared dataset (the splits, manifest, label embeddings), not the work folder
    (nor the local folder's ownership marker)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".work" not in p.parts
            and p.name not in ("failures.jsonl", ".clip-gs-prepare")}  # fmt: skip


def s3_bytes(client, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", []):
        found[obj["Key"][len(prefix) + 1 :]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


def prepare_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clip_gs", "prepare", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def finish(process: subprocess.Popen, expect: int = 0) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == expect, output
    return output


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict[str, bytes]:
    """synthetic:12 prepared by one process (the reference of every parallel layout)."""
    out = tmp_path_factory.mktemp("single") / "out"
    prepare_dataset("synthetic:12", out, teacher="synthetic-clip", settings=SETTINGS, progress=False)
    files = dataset_bytes(out)
    assert {"train/index.json", "val/index.json", "test/index.json", *DATASET_FILES} <= set(files)
    return files


def test_node_share_is_a_stable_partition_by_hash():
    items = [SourceItem(f"obj-{i}", f"synthetic:{i}") for i in range(200)]
    shares = [node_share(items, 3, rank) for rank in range(3)]
    assert sorted(it.id for share in shares for it in share) == sorted(it.id for it in items)
    assert all(40 < len(share) < 95 for share in shares)  # a hash split, not a block of the list
    # adding objects never moves an old one to another node
    more = node_share(items + [SourceItem(f"new-{i}", "synthetic:0") for i in range(50)], 3, 1)
    assert [it for it in more if it.id.startswith("obj-")] == shares[1]
    with pytest.raises(ConfigError, match="node rank must lie in"):
        node_share(items, 2, 2)


@pytest.mark.slow
def test_two_workers_equal_one_process_and_list_failures(tmp_path, single_process):
    summary = prepare_dataset("synthetic:12", tmp_path / "two", teacher="synthetic-clip", settings=SETTINGS,
                              progress=False, workers=2)  # fmt: skip
    assert summary.succeeded == 12 and summary.failed == 0
    assert dataset_bytes(tmp_path / "two") == single_process
    # a bad file prepared by a worker is listed with its type and stage; the rest is stored
    src = tmp_path / "src"
    (src / "chair").mkdir(parents=True)
    for i in range(3):
        save_gaussians(random_cloud(200, seed=i), src / "chair" / f"good{i}.ply")
    (src / "chair" / "broken.ply").write_bytes(b"ply\nformat nonsense\n")
    summary = prepare_dataset(str(src), tmp_path / "folder", teacher="synthetic-clip", settings=SETTINGS,
                              progress=False, workers=2)  # fmt: skip
    assert summary.succeeded == 3 and summary.failed == 1
    failure = json.loads((tmp_path / "folder" / "failures.jsonl").read_text())
    assert failure["id"] == "chair/broken" and failure["stage"] == "load" and failure["error"].endswith("Error")


@pytest.mark.slow
def test_two_nodes_writing_one_folder_merge_to_the_single_process_dataset(tmp_path, single_process):
    out = str(tmp_path / "nodes")
    node0 = prepare_cli("synthetic:12", "--out", out, "--num-nodes", "2", "--node-rank", "0", *CLI_SETTINGS)
    finish(node0)
    # the merge refuses while a node has not finished, naming it
    refused = finish(prepare_cli("synthetic:12", "--out", out, "--num-nodes", "2", "--merge", *CLI_SETTINGS), 2)
    assert "no finished part of node(s) 1 of 2" in refused
    nodes = [prepare_cli("synthetic:12", "--out", out, "--num-nodes", "2", "--node-rank", str(rank), "--workers",
                         str(rank + 1), *CLI_SETTINGS) for rank in (0, 1)]  # fmt: skip
    outputs = [finish(node) for node in nodes]  # node 0 again: its part is there, nothing is redone
    assert "0 failed" in outputs[1] and "reused from an earlier run" in outputs[0]
    merged = finish(prepare_cli("synthetic:12", "--out", out, "--num-nodes", "2", "--merge", *CLI_SETTINGS))
    assert "prepared 12 of 12" in merged and "merged from 2 node parts" in merged
    assert dataset_bytes(Path(out)) == single_process  # byte for byte; the parts are gone
    # a node run with other settings than its peers cannot join the merge
    other = str(tmp_path / "other")
    finish(prepare_cli("synthetic:12", "--out", other, "--num-nodes", "2", "--node-rank", "0", *CLI_SETTINGS))
    finish(prepare_cli("synthetic:12", "--out", other, "--num-nodes", "2", "--node-rank", "1", "--seed", "3",
                       "--work-dir", str(tmp_path / "w1"), *CLI_SETTINGS))  # fmt: skip
    refused = finish(prepare_cli("synthetic:12", "--out", other, "--num-nodes", "2", "--merge", *CLI_SETTINGS), 2)
    assert "1-of-2/part.json: this part was prepared with other settings" in refused


@pytest.mark.slow
def test_two_nodes_writing_to_s3_merge_to_the_single_process_dataset(tmp_path, single_process, s3_server):
    import boto3

    client = boto3.client("s3", **s3_server)
    client.create_bucket(Bucket="bucket")
    url, endpoint = "s3://bucket/ds", ["--endpoint-url", s3_server["endpoint_url"]]
    env = dict(os.environ)
    nodes = [prepare_cli("synthetic:12", "--out", url, "--num-nodes", "2", "--node-rank", str(rank), *endpoint,
                         "--work-dir", str(tmp_path / f"work{rank}"), *CLI_SETTINGS, env=env) for rank in (0, 1)]  # fmt: skip
    for node in nodes:
        finish(node)
    parts = s3_bytes(client, "bucket", "ds")
    assert {"parts/0-of-2/part.json", "parts/1-of-2/part.json"} <= set(parts)
    finish(prepare_cli("synthetic:12", "--out", url, "--num-nodes", "2", "--merge", *endpoint,
                       "--work-dir", str(tmp_path / "merge"), *CLI_SETTINGS, env=env))  # fmt: skip
    assert s3_bytes(client, "bucket", "ds") == single_process


def records(n: int, start: int = 0) -> list[dict]:
    return [fake_sample(i).to_record() for i in range(start, start + n)]


def test_s3_chunks_stream_as_finished_and_a_killed_upload_resumes(s3_server):
    import boto3

    client = boto3.client("s3", **s3_server)
    client.create_bucket(Bucket="bucket")
    data = records(12)
    size = len(data[0]["blob"])

    def killed_after(n: int):
        yield from data[:n]
        raise KeyboardInterrupt  # the process is stopped here

    url = "s3://bucket/split"
    with pytest.raises(KeyboardInterrupt):
        write_split(killed_after(7), url, chunk_bytes=2 * size + 100, storage_options=s3_server)
    left = {o["Key"]: o for o in client.list_objects_v2(Bucket="bucket", Prefix="split/")["Contents"]}
    assert "split/index.json" not in left and len(left) >= 2  # finished chunks were uploaded before the end
    time.sleep(1.1)
    assert write_split(data, url, chunk_bytes=2 * size + 100, storage_options=s3_server) == 12
    after = {o["Key"]: o for o in client.list_objects_v2(Bucket="bucket", Prefix="split/")["Contents"]}
    assert all(after[key]["LastModified"] == obj["LastModified"] for key, obj in left.items())  # not sent again
    assert [r["id"] for r in iter_records(url, s3_server)] == [r["id"] for r in data]
    assert [r["blob"] for r in iter_records(url, s3_server)] == [r["blob"] for r in data]
    with pytest.raises(DatasetError, match="already holds a dataset"):
        write_split(data, url, storage_options=s3_server)
    # an unfinished upload of other records is not mixed into
    with pytest.raises(KeyboardInterrupt):
        write_split(killed_after(7), "s3://bucket/other", chunk_bytes=2 * size + 100, storage_options=s3_server)
    with pytest.raises(DatasetError, match="unfinished upload of other content"):
        write_split(records(12, start=50), "s3://bucket/other", chunk_bytes=2 * size + 100, storage_options=s3_server)


def test_precision_is_recorded_and_a_resume_in_another_is_refused(tmp_path):
    settings = PrepareSettings(views=1, synthetic_gaussians=256, val_fraction=0, test_fraction=0)
    bf16 = prepare_dataset("synthetic:2", tmp_path / "bf16", teacher="synthetic-clip", settings=settings,
                           progress=False, precision="bf16")  # fmt: skip
    fp32 = prepare_dataset(
        "synthetic:2", tmp_path / "fp32", teacher="synthetic-clip", settings=settings, progress=False
    )
    assert bf16.succeeded == fp32.succeeded == 2
    recorded = json.loads((tmp_path / "bf16" / ".work" / "settings.json").read_text())
    assert recorded["compute"] == {"device": "cpu", "precision": "bf16"}
    blobs = [hashlib.sha256((tmp_path / name / "train" / "chunk-0-0.bin").read_bytes()).hexdigest()
             for name in ("bf16", "fp32")]  # fmt: skip
    assert blobs[0] != blobs[1]  # the embeddings differ: a dataset is one precision
    with pytest.raises(PreparedWithOtherSettingsError):
        prepare_dataset("synthetic:2", tmp_path / "bf16", teacher="synthetic-clip", settings=settings, progress=False)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        prepare_dataset("synthetic:2", tmp_path / "fp16", teacher="synthetic-clip", settings=settings, progress=False,
                        precision="fp16")  # fmt: skip


def test_precomputed_embeddings_replace_rendering_and_give_the_same_dataset(tmp_path, single_process):
    from clip_gs.data.precomputed import write_embeddings
    from clip_gs.data.shards import TripletShardDataset
    from clip_gs.teachers import load_teacher

    teacher = load_teacher("synthetic-clip")
    rendered = tmp_path / "rendered"
    for split in ("train", "val", "test"):  # the single-process dataset's records, as a user's feature files
        (rendered / split).mkdir(parents=True)
        (rendered / split / "index.json").write_bytes(single_process[f"{split}/index.json"])
        (rendered / split / "chunk-0-0.bin").write_bytes(single_process[f"{split}/chunk-0-0.bin"])
        for sample in TripletShardDataset(rendered / split):
            write_embeddings(tmp_path / "features" / f"{sample.id}.safetensors", sample.image_embeddings,
                             str(teacher.identity), sample.text_embeddings, sample.viewmats, sample.Ks)  # fmt: skip
    summary = prepare_dataset("synthetic:12", tmp_path / "out", teacher=teacher, settings=SETTINGS, progress=False,
                              embeddings=tmp_path / "features")  # fmt: skip
    assert summary.succeeded == 12
    assert dataset_bytes(tmp_path / "out") == single_process  # no view rendered, the same dataset
    # prepare's own orbit, declared: its cameras are recorded; the teacher embeds the captions
    write_embeddings(tmp_path / "orbit" / "synthetic-000000.safetensors", torch.ones(2, teacher.embed_dim) / 16,
                     "synthetic-clip")  # fmt: skip
    one = prepare_dataset("synthetic:1", tmp_path / "out-orbit", teacher=teacher, settings=SETTINGS, progress=False,
                          embeddings=tmp_path / "orbit")  # fmt: skip
    assert one.succeeded == 1
    # refused, named: objects without a file; another teacher; another width
    with pytest.raises(DatasetError, match=r"no precomputed embeddings for 1 of 2 objects \(synthetic-000001\)"):
        prepare_dataset("synthetic:2", tmp_path / "x", teacher=teacher, settings=SETTINGS, progress=False,
                        embeddings=tmp_path / "orbit")  # fmt: skip
    write_embeddings(tmp_path / "bad" / "synthetic-000000.safetensors", torch.ones(2, 8), "open_clip:ViT-B-32/openai")
    failed = prepare_dataset("synthetic:1", tmp_path / "y", teacher=teacher, settings=SETTINGS, progress=False,
                             embeddings=tmp_path / "bad")  # fmt: skip
    assert failed.failed == 1 and "embeddings of teacher 'open_clip:ViT-B-32/openai'" in failed.failures[0]["message"]
    write_embeddings(tmp_path / "wide" / "synthetic-000000.safetensors", torch.ones(2, 8), "synthetic-clip")
    failed = prepare_dataset("synthetic:1", tmp_path / "z", teacher=teacher, settings=SETTINGS, progress=False,
                             embeddings=tmp_path / "wide")  # fmt: skip
    assert f"image_embeddings must be [V >= 1, {teacher.embed_dim}], got [2, 8]" in failed.failures[0]["message"]


def test_the_scratch_work_folder_of_an_s3_output_goes_unless_kept(tmp_path, s3_server):
    """For an ``s3://`` output the work folder is local scratch: a finished run removes it, ``--keep-work``
    keeps it (fanned out by key prefix)."""
    import boto3

    from clip_gs.cli import main

    boto3.client("s3", **s3_server).create_bucket(Bucket="bucket")
    endpoint = ["--endpoint-url", s3_server["endpoint_url"]]
    assert main(["prepare", "synthetic:4", "--out", "s3://bucket/a", *endpoint, "--work-dir", str(tmp_path / "a"),
                 *CLI_SETTINGS]) == 0  # fmt: skip
    assert not (tmp_path / "a").exists()
    assert main(["prepare", "synthetic:4", "--out", "s3://bucket/b", *endpoint, "--work-dir", str(tmp_path / "b"),
                 "--keep-work", *CLI_SETTINGS]) == 0  # fmt: skip
    records = sorted((tmp_path / "b").glob("*/*.json"))
    assert len(records) == 4 and all(len(p.parent.name) == 2 for p in records)
