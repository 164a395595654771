"""Shared test fixtures.

``real_data`` points at ``../shared/data/real`` next to the checkout (third-party files, never
copied into the repository). Tests using it skip cleanly when the folder is absent (a fresh clone
elsewhere) and run in CI, where it is present. ``CLIP_GS_REAL_DATA`` overrides the location.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# torch.compile's kernel cache is keyed without ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA: kernels compiled by a
# run under the AVX2 emulation and found by a later native run in the shared default folder
# (/tmp/torchinductor_<user>) crashed the process; the other way round they gave NaN (both seen here). Each test
# session compiles into its own folder, set before torch and the package are imported (once they are, the
# variable already holds that shared default).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="clip-gs-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

# Under pytest-xdist the workers share the cores: torch's threads (and its subprocesses') are divided among them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _CORES // _WORKERS))

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CLIP_GS_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture
def real_data() -> Path:
    """The real third-party data folder; skips the test when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    return REAL_DATA


def real_file(relative: str) -> Path:
    """A file under the real data folder, or a skip when it is absent."""
    path = REAL_DATA / relative
    if not path.is_file():
        pytest.skip(f"real data file {path} is absent")
    return path


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------------------- a trained model
TRAINED_RUN_OVERRIDES = [
    "--data.root", "synthetic:{objects}", "--trainer.max_steps", "{steps}", "--trainer.enable_progress_bar", "false",
    "--trainer.logger", "false", "--test-after-fit", "false",
]  # fmt: skip
"""The quick-start configuration with a smaller budget (see :func:`trained_run`)."""

TRAINED_RUN_BUDGET = {"objects": 600, "steps": 100}
"""Synthetic objects prepared and optimiser steps of :func:`trained_run`. Measured (2026-12-04, under
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, with ``clip-gs eval --task all --ways 5 --shots 5
--queries 3`` on the test split): zero-shot top-1 85.5% over 62 objects, 5-way 5-shot 88.7% +- 15.8,
text->3D R@1 90.3% and R@5 100%. The run takes about 2.5 minutes on 2 threads, 3.5 on the one thread of a
worker of ``pytest -n 2``."""


@dataclass(frozen=True)
class TrainedRun:
    """A model trained by ``clip-gs fit`` from the quick-start configuration, and its data.

    Attributes:
        model_dir: the exported, Hub-ready folder (``CLIPGS.from_pretrained`` loads it).
        data_root: the prepared synthetic dataset (train / val / test, the offline teacher's embeddings).
    """

    model_dir: Path
    data_root: Path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """Train once per session: ``clip-gs fit --config examples/configs/quickstart.yaml`` on a smaller
    synthetic set and step budget (:data:`TRAINED_RUN_BUDGET`), in-process, offline.

    The quality tests of evaluation, search, classification and the demo use it; their bars are
    set from what this budget measurably reaches (see each test)."""
    from clip_gs.lightning.cli import cli_main
    from clip_gs.lightning.datamodule import GaussianDataModule

    root = tmp_path_factory.mktemp("trained-run")
    export = root / "export"
    args = [a.format(**TRAINED_RUN_BUDGET) for a in TRAINED_RUN_OVERRIDES]
    argv = ["fit", "--config", str(REPO_ROOT / "examples" / "configs" / "quickstart.yaml"), *args,
            "--trainer.default_root_dir", str(root), "--export.export_dir", str(export),
            "--data.cache_dir", str(root / "data")]  # fmt: skip
    assert cli_main(argv) == 0
    import yaml

    data = yaml.safe_load((REPO_ROOT / "examples" / "configs" / "quickstart.yaml").read_text())["data"]
    dm = GaussianDataModule(root=f"synthetic:{TRAINED_RUN_BUDGET['objects']}", cache_dir=str(root / "data"),
                            seed=data["seed"], synthetic_views=data["synthetic_views"],
                            synthetic_pose=data["synthetic_pose"])  # fmt: skip
    return TrainedRun(model_dir=export, data_root=Path(dm.dataset_root))


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3-compatible server (moto) on 127.0.0.1 with dummy credentials."""
    moto_server = pytest.importorskip("moto.server")
    from litdata.streaming import downloader

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    # restored afterwards: the plain-http switch is process-global
    monkeypatch.setitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http", "false")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in process-wide state, whatever the server: each test starts empty
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    try:
        yield {"endpoint_url": endpoint}
    finally:
        server.stop()


# ---------------------------------------------------------------------------- small inputs for the evaluation tests
TINY_EMBED_DIM = 256
"""Width of :func:`export_tiny_model`'s models: the offline teacher ``synthetic-clip``'s space."""


def export_tiny_model(folder: Path, seed: int = 0, num_gaussians: int = 256) -> Path:
    """A random ``clip-gs-tiny`` (seeded) in the offline teacher's space, exported with that teacher."""
    from clip_gs.lightning.export import export_pretrained
    from clip_gs.model import create_model
    from clip_gs.teachers import load_teacher

    torch.manual_seed(seed)
    model = create_model("clip-gs-tiny", num_gaussians=num_gaussians, num_groups=16, group_size=16,
                         embed_dim=TINY_EMBED_DIM, depth=2)  # fmt: skip
    teacher = load_teacher("synthetic-clip")
    return export_pretrained(model, folder, teacher={"teacher": str(teacher.identity), "embed_dim": TINY_EMBED_DIM})


def unigs_array(n: int, seed: int = 0, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)):
    """``[n, 14]`` float32 raw 3DGS values in UniGS's column order (xyz, f_dc, opacity, log-scales, wxyz)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, 14), dtype=np.float32)
    out[:, 0:3] = rng.normal(size=(n, 3)) * 0.2 + np.asarray(centre)
    out[:, 3:6] = rng.normal(size=(n, 3))
    out[:, 6] = rng.normal(size=n)
    out[:, 7:10] = rng.uniform(-5, -3, size=(n, 3))
    out[:, 10:14] = rng.normal(size=(n, 4))
    return out


def write_unigs_pkl(path: Path, array, label: str = "", machine: str | None = "a thing",
                    human: list[str] | None = None, writer: str = "torch") -> Path:  # fmt: skip
    """A ``.pkl`` the way UniGS's make_datasets.py writes one: ``torch.save`` of a dict (``writer="torch"``),
    or ``pickle.dump`` of it (``writer="pickle"``)."""
    import pickle

    record = {"name": path.stem, "item_path": f"/path/to/your/objects/{path.stem}.pkl", "label_count": 0,
              "dataset": "objaverse", "label": label, "img": "/path/to/views", "3dgs": array, "glb_path": "x.glb"}  # fmt: skip
    if machine is not None:
        record["machine_prompt"] = machine
    if human:
        record["human_prompt"] = human
    path.parent.mkdir(parents=True, exist_ok=True)
    if writer == "torch":
        torch.save(record, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(record, fh, protocol=4)
    return path


@dataclass(frozen=True)
class HubCache:
    """An empty Hugging Face cache in offline mode (:func:`offline_cache`).

    Attributes:
        path: the cache folder (``HF_HUB_CACHE``).
    """

    path: Path

    def place(self, repo_id: str, filename: str, source: Path) -> Path:
        """Put ``source`` in the cache as ``hf download REPO_ID FILENAME`` leaves it: a blob named by its
        SHA-256, a snapshot link under one commit, ``refs/main``; returns the snapshot path."""
        import hashlib

        repo = self.path / ("models--" + repo_id.replace("/", "--"))
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        return link


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> HubCache:
    """An empty Hugging Face cache in offline mode, and an empty clip-gs cache (``CLIP_GS_CACHE``).
    huggingface_hub reads its constants at import, so they are patched as well as the environment."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("CLIP_GS_CACHE", str(tmp_path / "clip-gs-cache"))
    return HubCache(cache)



@pytest.fixture(scope="session")
def single_process(tmp_path_factory) -> dict[str, bytes]:
    """``synthetic:12`` prepared by one process with :data:`tests.helpers.SYNTHETIC_SETTINGS`: the reference
    every parallel layout must equal byte for byte (:func:`tests.helpers.dataset_bytes`)."""
    from clip_gs.data.prepare import prepare_dataset
    from tests.helpers import SYNTHETIC_SETTINGS, dataset_bytes

    out = tmp_path_factory.mktemp("single") / "out"
    prepare_dataset("synthetic:12", out, teacher="synthetic-clip", settings=SYNTHETIC_SETTINGS, progress=False)
    files = dataset_bytes(out)
    assert {"train/index.json", "val/index.json", "test/index.json", "manifest.json"} <= set(files)
    return files


# ---------------------------------------------------------------------------- parallel runs (pytest-xdist)
SHARED_FIXTURE_FILES = {
    "trained_run": ("tests/data/test_holdout.py", "tests/demo/test_demo.py", "tests/evaluation/test_evaluation.py",
                    "tests/hub/test_hub.py", "tests/test_usage.py"),
    "single_process": ("tests/data/test_prepare.py", "tests/data/test_ray_pipeline.py"),
}  # fmt: skip
"""Session fixtures too costly to build once per worker, and the test files that use them: under
``pytest -n N --dist loadfile`` each group of files runs on one worker, so each fixture is built once."""


def pytest_collection_modifyitems(config, items):
    """Refuse a test that uses a shared session fixture from a file outside its group (it would build
    the fixture a second time on another worker)."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        for name, files in SHARED_FIXTURE_FILES.items():
            if name in item.fixturenames and path not in files:
                raise pytest.UsageError(
                    f"{item.nodeid} uses the session fixture {name!r}: add {path} to SHARED_FIXTURE_FILES[{name!r}] "
                    "in tests/conftest.py"
                )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the files of :data:`SHARED_FIXTURE_FILES` kept together: each file runs on
    one worker (its module fixtures are built once), each group of files too."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    group_of = {path: name for name, files in SHARED_FIXTURE_FILES.items() for path in files}

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return group_of.get(path, path)

    return SharedFixtureScheduling(config, log)
