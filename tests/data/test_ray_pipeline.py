"""prepare on Ray Data: local workers and a cluster of two nodes on 127.0.0.1 give the single-process
dataset byte for byte; a worker killed mid-run loses nothing; a rerun of a finished dataset is a no-op."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clip_gs import save_gaussians
from clip_gs.data.prepare import prepare_dataset
from tests.helpers import CLI_SETTINGS, SYNTHETIC_SETTINGS, dataset_bytes, free_port, random_cloud

ray = pytest.importorskip("ray", reason="the scale extra (Ray) is not installed")

RAY = str(Path(sys.executable).parent / "ray")


def prepare_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clip_gs", "prepare", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def finish(process: subprocess.Popen, expect: int = 0) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == expect, output
    return output


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A Ray cluster of a head and a second node, each of one CPU, started as processes on 127.0.0.1
    (``ray start``, with a token of its own), stopped after the module: ``(address, environment)``."""
    import secrets

    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    common = ["--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--include-dashboard", "false", *common], check=True, env=env, capture_output=True)  # fmt: skip
    try:
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", *common],
                       check=True, env=env, capture_output=True)  # fmt: skip
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)


@pytest.mark.slow
def test_two_local_workers_equal_one_process_and_list_failures(tmp_path, two_nodes):
    """``workers=2`` starts a local Ray of its own, although a cluster started by ``ray start`` runs on this
    machine (``two_nodes``): the same dataset as one process; a bad file prepared by a worker is listed
    with its type and stage, the rest stored."""
    src = tmp_path / "src"
    (src / "chair").mkdir(parents=True)
    for i in range(3):
        save_gaussians(random_cloud(200, seed=i), src / "chair" / f"good{i}.ply")
    (src / "chair" / "broken.ply").write_bytes(b"ply\nformat nonsense\n")
    one = prepare_dataset(str(src), tmp_path / "one", teacher="synthetic-clip", settings=SYNTHETIC_SETTINGS, progress=False)
    two = prepare_dataset(str(src), tmp_path / "two", teacher="synthetic-clip", settings=SYNTHETIC_SETTINGS, progress=False,
                          workers=2)  # fmt: skip
    assert one.succeeded == two.succeeded == 3 and one.failed == two.failed == 1
    assert dataset_bytes(tmp_path / "two") == dataset_bytes(tmp_path / "one")
    failure = json.loads((tmp_path / "two" / "failures.jsonl").read_text())
    assert failure["id"] == "chair/broken" and failure["stage"] == "load" and failure["error"].endswith("Error")


@pytest.mark.slow
def test_a_two_node_cluster_gives_the_single_process_dataset_and_a_rerun_does_nothing(tmp_path, single_process,
                                                                                     two_nodes):  # fmt: skip
    address, env = two_nodes
    out = tmp_path / "cluster"
    output = finish(prepare_cli("synthetic:12", "--out", str(out), "--address", address, *CLI_SETTINGS, env=env))
    assert "prepared 12 of 12" in output
    assert dataset_bytes(out) == single_process  # byte for byte
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = finish(prepare_cli("synthetic:12", "--out", str(out), "--address", address, *CLI_SETTINGS, env=env))
    assert "12 reused from an earlier run" in again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps  # nothing rewritten


def ray_workers() -> list[int]:
    """The PIDs of the cluster's actor processes that run prepare's stages."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and "MapWorker" in title:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing(tmp_path, single_process, two_nodes):
    address, env = two_nodes
    out = tmp_path / "killed"
    run = prepare_cli("synthetic:12", "--out", str(out), "--address", address, *CLI_SETTINGS, env=env)
    deadline = time.monotonic() + 300
    while not list((out / ".work").glob("*/*.json")) or not ray_workers():  # the run is under way
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.05)
    victim = ray_workers()[0]
    done_before = len(list((out / ".work").glob("*/*.json")))
    os.kill(victim, signal.SIGKILL)
    assert done_before < 12 and run.poll() is None  # killed mid-run
    output = finish(run)
    assert "prepared 12 of 12" in output and "0 failed" in output
    assert dataset_bytes(out) == single_process
