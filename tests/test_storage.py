"""clip_gs.storage: atomic local writes, local-or-S3 bytes, locations and the cache root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clip_gs.errors import DatasetError
from clip_gs.storage import (
    atomic_path,
    atomic_write,
    cache_root,
    is_remote,
    join,
    read_bytes,
    s3_client,
    split_url,
    write_bytes,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_makes_folders_encodes_text_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a" / "b" / "record.json"
    atomic_write(target, "é\n")
    assert target.read_bytes() == "é\n".encode()
    atomic_write(target, b"\x00\x01", sync=False)
    assert target.read_bytes() == b"\x00\x01"
    assert leftovers(target.parent) == []


def test_a_writer_that_fails_leaves_the_old_file_whole(tmp_path):
    """What a crash mid-write would leave: the old content, and no temporary file."""
    target = tmp_path / "cloud.ply"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_atomic_path_gives_a_writer_a_path_beside_the_target(tmp_path):
    target = tmp_path / "cache" / "entry.ply"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and str(os.getpid()) in tmp.name and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and leftovers(target.parent) == []


def test_read_bytes_refuses_what_is_not_a_regular_file_and_caps_the_size(tmp_path):
    assert read_bytes(str(tmp_path / "absent")) is None
    with pytest.raises(DatasetError, match=str(tmp_path)):
        read_bytes(str(tmp_path))  # a folder
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DatasetError, match="fifo"):
        read_bytes(str(tmp_path / "fifo"))  # never opened for reading: it would block
    (tmp_path / "big").write_bytes(bytes(100))
    with pytest.raises(DatasetError, match="big: 100 bytes, more than it may have"):
        read_bytes(str(tmp_path / "big"), max_bytes=99)
    assert read_bytes(str(tmp_path / "big"), max_bytes=100) == bytes(100)


def test_locations_local_and_remote():
    assert is_remote("s3://bucket/prefix") and not is_remote("/data/out") and not is_remote(Path("rel/out"))
    assert join("s3://bucket/prefix/", "/train", "index.json") == "s3://bucket/prefix/train/index.json"
    assert join("/data/out", "train", "index.json") == os.path.join("/data/out", "train", "index.json")
    assert split_url("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(DatasetError, match=r"gs://bucket/x: only s3:// object storage"):
        split_url("gs://bucket/x")


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIP_GS_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "clip-gs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "clip-gs"
    monkeypatch.setenv("CLIP_GS_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_bytes_round_trip_locally_and_on_a_local_s3_server(tmp_path, s3_server):
    write_bytes(str(tmp_path / "x" / "local.bin"), b"local")
    assert read_bytes(str(tmp_path / "x" / "local.bin")) == b"local"
    s3_client(s3_server).create_bucket(Bucket="bucket")
    write_bytes("s3://bucket/p/object.bin", b"remote", s3_server)
    assert read_bytes("s3://bucket/p/object.bin", s3_server) == b"remote"
    assert read_bytes("s3://bucket/p/absent.bin", s3_server) is None
    with pytest.raises(DatasetError, match=r"s3://bucket/p/object.bin: 6 bytes, more than it may have \(5\)"):
        read_bytes("s3://bucket/p/object.bin", s3_server, max_bytes=5)
    with pytest.raises(DatasetError, match="s3://no-such-bucket/k: cannot read"):
        read_bytes("s3://no-such-bucket/k", s3_server)
