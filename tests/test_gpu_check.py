"""The GPU check (benchmarks/gpu_check.sh): its wheel bundle, the bundle's coverage of the imports, the dry
run, the runner's timeouts / deadline / prerequisites, the parity harness, the prepared inputs' reader,
the CUDA-test selection and the bf16 training step on CPU.

The dry run and the coverage check share one run (``dry_run``): the bundle is built from PyPI by
``benchmarks/gpu_bundle.py`` into a temporary folder, then ``gpu_check.sh --dry-run`` installs it into a
temporary target, runs the preflight (which imports every module the steps import and records what they
import) and skips the CUDA steps.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import gpu_bundle
import gpu_check
import gpu_inputs
import gpu_steps

from clip_gs.errors import ConfigError

STEP_NAMES = [step.name for step in gpu_check.STEPS]


def make_inputs_folder(folder: Path, views: int = 3, held_out: int = 1, size: int = 16) -> Path:
    """A prepared-inputs folder without Blender: random RGBA views, a small start, a reference record."""
    from clip_gs.fitting import PosedImages, init_from_points, random_points, write_posed_images
    from clip_gs.gaussians import save_gaussians
    from clip_gs.render import orbit_cameras

    gen = torch.Generator().manual_seed(0)
    for name, count in (("train", views), ("test", held_out)):
        images = torch.rand(count, size, size, 4, generator=gen)
        write_posed_images(folder / name, PosedImages(images, orbit_cameras(count, width=size, height=size), name))
    init = init_from_points(random_points(64, 1.0, 0), source="start")
    save_gaussians(init, folder / gpu_inputs.INIT_NAME)
    reference = {"iterations": 10, "sh_degree": 0, "seconds": 1.5, "psnr": 20.0, "ssim": 0.8, "num_gaussians": 64,
                 "threads": 2, "machine": "test", "torch": torch.__version__, "date": "today", "command": "test"}  # fmt: skip
    settings = {"mesh": "none", "size": size, "views": views, "held_out": held_out, "max_gaussians": 128,
                "init_gaussians": 64, "seed": 0, "samples": 1, "render_seconds": 0.0, "reference": reference}  # fmt: skip
    (folder / gpu_inputs.REFERENCE_NAME).write_text(json.dumps(settings))
    return folder


# ---------------------------------------------------------------------------- the dry run (built bundle)
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Build the bundle (PyPI), then ``gpu_check.sh --dry-run``: ``(bundle script output, out folder, exit status,
    stdout, wheels folder)``."""
    root = tmp_path_factory.mktemp("gpu-check")
    wheels = root / "wheels"
    built = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_bundle.py"), "--out", str(wheels)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    inputs = make_inputs_folder(root / "inputs")
    out = root / "out"
    env = {**os.environ, "CLIP_GS_GPU_PYTHON": sys.executable}
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(out), "--dry-run", "--wheels", str(wheels),
                          "--inputs", str(inputs)], capture_output=True, text=True, env=env, check=False, timeout=600)  # fmt: skip
    return built.stdout, out, run.returncode, run.stdout + run.stderr, wheels


@pytest.mark.slow
def test_bundle_script_builds_a_complete_bundle_under_the_cap(dry_run):
    printed, _, _, _, wheels = dry_run
    found = gpu_bundle.read_bundle(wheels)  # exactly the pinned wheels, nothing else
    assert {gpu_bundle.wheel_name(w) for w in found} == set(gpu_bundle.BUNDLE.items())
    size = sum(w.stat().st_size for w in found)
    assert size <= gpu_bundle.BUNDLE_MAX_BYTES < 64 * 2**20
    assert f"bundle: {len(found)} wheels, {size / 2**20:.1f} MiB" in printed


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_results(dry_run):
    _, out, code, output, _ = dry_run
    assert code == 0, output[-3000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == STEP_NAMES
    for line in lines:
        assert set(line) == {"step", "status", "seconds", "numbers", "reason"}
        assert json.dumps(line) in output  # printed as written
    by_step = {line["step"]: line for line in lines}
    install = by_step["install"]
    assert install["status"] == "ok" and install["numbers"]["wheels"] == len(gpu_bundle.BUNDLE), install
    assert install["numbers"]["on_path"] is False  # the device's wheels are never imported here
    preflight = by_step["preflight"]
    assert preflight["status"] == "ok" and preflight["numbers"]["imports_failed"] == [], preflight
    assert preflight["numbers"]["cuda_available"] is False and preflight["numbers"]["inputs_ok"] is True
    for name in STEP_NAMES[2:]:
        assert by_step[name]["status"] == "skipped" and "dry run" in by_step[name]["reason"], by_step[name]
    # what comes back: at most five files, none in a folder
    files = sorted(p.name for p in out.iterdir())
    assert files == ["logs.tar.gz", "preflight.json", "results.jsonl"] and all((out / f).is_file() for f in files)
    assert set(files) <= set(gpu_check.OUT_FILES) and len(gpu_check.OUT_FILES) <= 5
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/01-install.log" in names and "logs/02-preflight.log" in names and "logs/preflight.json" in names
    report = json.loads((out / "preflight.json").read_text())
    assert set(report["imports"]) == set(gpu_steps.CHECK_MODULES) and all(r["ok"] for r in report["imports"].values())
    assert report["inputs"]["ok"] and report["inputs"]["settings"]["views"] == 3


def _pep503(name: str) -> str:
    return gpu_bundle.normalize(name)


def _dists_of(module: str, table: dict) -> set[str]:
    """Distributions providing a top-level module ({} for the standard library; the name itself when unknown)."""
    if module in sys.stdlib_module_names or module in ("__main__", "builtins"):
        return set()
    return {_pep503(d) for d in table.get(module, [module])}


def _requirements(dist: str, extras: set[str]) -> set[str]:
    """Requirements of an installed distribution on the device's Python (3.12, Linux x86-64), with ``extras``."""
    from packaging.requirements import Requirement

    env = {"python_version": gpu_bundle.PYTHON_VERSION, "python_full_version": f"{gpu_bundle.PYTHON_VERSION}.3",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
    found = set()
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
            found.add(_pep503(req.name))
            found |= {f"{_pep503(req.name)}[{x}]" for x in req.extras}
    return found


def _module_file(name: str) -> Path | None:
    """The checkout's file of a module of clip_gs, of the tests or of a benchmark script (None: not ours)."""
    parts = name.split(".")
    base = REPO / "src" if parts[0] == "clip_gs" else REPO if parts[0] == "tests" else BENCHMARKS
    for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _static_imports(files: list[Path]) -> set[str]:
    """Top-level names of the modules that ``files`` import, following the checkout's own modules."""
    found, seen, todo = set(), set(), list(files)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                own = _module_file(name)
                if own is not None:
                    todo.append(own)
                elif name.split(".")[0] not in ("clip_gs", "tests") and _module_file(name.split(".")[0]) is None:
                    found.add(name.split(".")[0])
    return found


@pytest.mark.slow
def test_bundle_covers_every_import_beyond_the_image(dry_run):
    """What the preflight's import trace saw, plus the static imports of the checkout's loaded files, minus the
    image's packages, is the bundle (with the requirements pip would want for it), or a documented exclusion."""
    from packaging.requirements import Requirement

    _, out, _, _, _ = dry_run
    trace = json.loads((out / "preflight.json").read_text())["import_trace"]
    image = gpu_bundle.read_image_packages()
    table = metadata.packages_distributions()
    own = set(trace["own_modules"])
    project = {}  # the project's own dependencies (and the cuda extra), with the extras it names
    for text in metadata.requires("clip-gs") or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "cuda"}):
            project[_pep503(req.name)] = set(req.extras)
    # 1. traced: what this checkout imports; what a carried package imports of its declared requirements (its other
    # imports are optional: litdata takes orjson when it is there); an image package's own imports are the
    # image's business, unless they reach one of the project's dependencies (lightning -> jsonargparse)
    graph: dict[str, set[str]] = {}
    for importer, imported in trace["edges"]:
        graph.setdefault(importer, set()).add(imported)
    reached, stack = set(), sorted(own)
    while stack:
        module = stack.pop()
        if module in reached:
            continue
        reached.add(module)
        dists = _dists_of(module, table)
        if module in own:
            allowed = None
        elif dists <= image:
            allowed = set(project)
        else:
            allowed = set(project) | {r.split("[")[0] for d in dists for r in _requirements(d, project.get(d, set()))}
        stack += [child for child in graph.get(module, ()) if allowed is None or _dists_of(child, table) & allowed]
    traced = {d for m in reached - own for d in _dists_of(m, table)} - image
    assert {"gsplat", "litdata", "jsonargparse", "plyfile"} <= traced  # the trace sees through to the real imports
    # 2. what pip would want besides: requirements of the traced, and the extras the project names
    wanted, todo = set(traced), sorted(traced)
    while todo:
        dist = todo.pop()
        for req in _requirements(dist, project.get(dist, set())):
            name = req.split("[")[0]
            if name not in image and name not in wanted and name not in gpu_bundle.NOT_CARRIED:
                wanted.add(name)
                todo.append(name)
    assert wanted - set(gpu_bundle.BUNDLE) == set(), "imported by the check, missing from gpu_bundle.BUNDLE"
    assert not traced & set(gpu_bundle.NOT_CARRIED), "NOT_CARRIED, yet imported"
    # 3. static: every import statement (function-level ones included) of the checkout's loaded files and of the
    # checkout's modules they name, transitively: the imports of paths the preflight did not run
    static = {d for top in _static_imports([REPO / f for f in trace["own_files"]]) for d in _dists_of(top, table)}
    static -= image
    assert static - set(gpu_bundle.BUNDLE) - set(gpu_bundle.NOT_CARRIED) == set(), (
        "imported, neither bundled nor excused"
    )
    assert set(gpu_bundle.NOT_CARRIED) - static == set(), "NOT_CARRIED names what nothing imports"
    assert set(gpu_bundle.BUNDLE) - wanted - static == set(), "in gpu_bundle.BUNDLE, never imported by the check"


# ---------------------------------------------------------------------------- bundle and image list
def test_image_packages_are_read_and_checked(tmp_path):
    image = gpu_bundle.read_image_packages()
    assert {"torch", "lightning", "numba", "timm", "torchmetrics", "pytest", "ninja"} <= image
    assert not image & set(gpu_bundle.BUNDLE)  # nothing carried that the image has
    bad = tmp_path / "packages.txt"
    bad.write_text("# comment\ntorch\nNot_Normal\n")
    with pytest.raises(ConfigError, match=r"packages.txt:3: 'Not_Normal'"):
        gpu_bundle.read_image_packages(bad)
    bad.write_text("torch\ntorch\n")
    with pytest.raises(ConfigError, match=r"packages.txt:2: 'torch' is listed twice"):
        gpu_bundle.read_image_packages(bad)


def _fake_bundle(folder: Path, skip: str | None = None, extra: str | None = None) -> Path:
    folder.mkdir()
    for name, version in gpu_bundle.BUNDLE.items():
        if name != skip:
            (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"x")
    if extra:
        (folder / extra).write_bytes(b"x")
    return folder


def test_bundle_reader_refuses_anything_but_the_bundle(tmp_path, monkeypatch):
    assert len(gpu_bundle.read_bundle(_fake_bundle(tmp_path / "ok"))) == len(gpu_bundle.BUNDLE)
    with pytest.raises(ConfigError, match=r"missing.*gsplat: missing"):
        gpu_bundle.read_bundle(_fake_bundle(tmp_path / "missing", skip="gsplat"))
    with pytest.raises(ConfigError, match=r"litdata: 2 wheels"):
        gpu_bundle.read_bundle(_fake_bundle(tmp_path / "two", extra="litdata-0.2.75-py3-none-any.whl"))
    with pytest.raises(ConfigError, match=r"gradio: not in the bundle"):
        gpu_bundle.read_bundle(_fake_bundle(tmp_path / "more", extra="gradio-4.0-py3-none-any.whl"))
    monkeypatch.setattr(gpu_bundle, "BUNDLE_MAX_BYTES", 5)
    with pytest.raises(ConfigError, match=r"over the 0 MiB cap"):
        gpu_bundle.read_bundle(_fake_bundle(tmp_path / "big"))


# ---------------------------------------------------------------------------- the runner
def _runner(tmp_path: Path, wheels: Path | None = None) -> gpu_check.Runner:
    out = tmp_path / "out"
    out.mkdir()
    return gpu_check.Runner(out, wheels or tmp_path / "no-wheels", tmp_path / "no-inputs", dry_run=False)


def _lines(runner: gpu_check.Runner) -> list[dict]:
    return [json.loads(line) for line in (runner.out / "results.jsonl").read_text().splitlines()]


def test_runner_without_a_bundle_fails_install_and_skips_what_needs_it(tmp_path, monkeypatch):
    runner = _runner(tmp_path)
    install, compile_step = gpu_check.STEPS[0], gpu_check.STEPS[2]
    assert runner.run_step(install, 1)["status"] == "failed"
    runner.preflight = {"cuda": {"available": True}, "inputs": {"ok": False, "reason": "nothing there"}}
    line = runner.run_step(compile_step, 3)
    assert line["status"] == "skipped" and line["reason"] == "prerequisite install failed"
    fit = next(s for s in gpu_check.STEPS if s.name == "paper-fit")
    assert "no prepared inputs: nothing there" in runner.run_step(fit, 6)["reason"]
    first = _lines(runner)[0]
    assert first["step"] == "install" and "no wheels in" in first["reason"] and "gpu_bundle.py" in first["reason"]
    assert runner.failed and (runner.out / "logs.tar.gz").is_file()


def test_runner_stops_a_step_at_its_timeout_and_skips_past_the_deadline(tmp_path, monkeypatch):
    runner = _runner(tmp_path)
    marker = tmp_path / "still-running"
    sleeper = f"import time, pathlib; time.sleep(30); pathlib.Path({str(marker)!r}).touch()"
    monkeypatch.setattr(runner, "command", lambda step, result: [sys.executable, "-c", sleeper])
    line = runner.run_step(gpu_check.Step("slow", (), 1), 1)
    assert line["status"] == "timeout" and line["seconds"] < 10 and "timed out after 1 s" in line["reason"]
    monkeypatch.setattr(gpu_check, "DEADLINE_S", 0)
    line = runner.run_step(gpu_check.Step("late", (), 60), 2)
    assert line["status"] == "skipped" and line["reason"].startswith("deadline")
    assert not marker.exists()  # the timed-out process was killed, not left running


def test_runner_records_a_failed_steps_reason_and_numbers(tmp_path, monkeypatch):
    runner = _runner(tmp_path)

    def command(step, result):
        code = (
            f"import json, sys; open({str(result)!r}, 'w').write(json.dumps({{'x': 1, 'reason': 'bad'}})); sys.exit(1)"
        )
        return [sys.executable, "-c", code]

    monkeypatch.setattr(runner, "command", command)
    line = runner.run_step(gpu_check.Step("broken", (), 30), 1)
    assert line == {
        "step": "broken",
        "status": "failed",
        "seconds": line["seconds"],
        "numbers": {"x": 1},
        "reason": "bad",
    }


def test_cuda_home_is_the_toolkit_that_nvcc_reports(tmp_path, monkeypatch):
    toolkit, bin_dir = tmp_path / "cuda-13.0", tmp_path / "bin"
    bin_dir.mkdir()
    nvcc = bin_dir / "nvcc"  # a wrapper outside the toolkit, as /usr/local/bin/nvcc is on some machines
    nvcc.write_text(f"#!/bin/sh\necho '#$ _NVVM_BRANCH_=nvvm' >&2\necho '#$ TOP={toolkit}/bin/..' >&2\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert gpu_check.toolkit_home() is None  # no CUDA headers there
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    assert gpu_check.toolkit_home() == str(toolkit)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert _runner(tmp_path).env("gsplat-compile")["CUDA_HOME"] == str(toolkit)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_check.toolkit_home() is None


def test_gpu_check_refuses_a_used_output_folder(tmp_path):
    (tmp_path / "results.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit):
        gpu_check.main([str(tmp_path), "--dry-run"])


# ---------------------------------------------------------------------------- the steps' parts on CPU
def test_parity_harness_compares_values_and_every_gradient(monkeypatch):
    monkeypatch.setattr(gpu_steps, "PARITY_GAUSSIANS", 300)
    monkeypatch.setattr(gpu_steps, "PARITY_SIZE", (24, 16))
    scene = gpu_steps.parity_scene()
    numba = gpu_steps.render_with_grads(scene, "numba", "cpu")
    torch_rows = gpu_steps.render_with_grads(scene, "torch", "cpu")
    assert {f"grad_{k}" for k in gpu_steps.INPUTS} | {"grad_means2d"} <= set(numba)
    same = gpu_steps.compare(torch_rows, numba)
    assert same["out_of_bounds"] == [], same
    assert all(same[f"grad_{k}"]["cosine"] > 0.999 for k in gpu_steps.INPUTS)
    broken = dict(numba, grad_means2d=numba["grad_means2d"] * 1.5, rgb=numba["rgb"] + 0.01)
    problems = gpu_steps.compare(broken, numba)["out_of_bounds"]
    assert any(p.startswith("grad_means2d") for p in problems) and any(p.startswith("rgb") for p in problems)


@pytest.mark.slow
def test_cuda_tests_step_selects_the_requires_cuda_tests_and_fails_on_a_skip(tmp_path):
    decorated = {p.relative_to(REPO).as_posix(): len(re.findall(r"^@requires_cuda\b", p.read_text(), re.MULTILINE))
                 for p in (REPO / "tests").rglob("test_*.py")}  # fmt: skip
    marked = sorted(name for name, count in decorated.items() if count)
    assert marked == sorted(gpu_steps.CUDA_TEST_FILES)
    result = tmp_path / "r.json"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_steps.py"), "cuda-tests", "--work", str(tmp_path),
                          "--result", str(result)], capture_output=True, text=True, cwd=REPO, check=False)  # fmt: skip
    numbers = json.loads(result.read_text())
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the step runs the tests instead of skipping them")
    assert run.returncode == 1, run.stdout[-2000:]
    assert numbers["selected"] >= sum(decorated.values()) and numbers["skipped"] == numbers["selected"]
    assert numbers["passed"] == 0 and all("CUDA" in why for why in numbers["skips"].values())
    assert "skipped" in numbers["reason"]


def test_inputs_reader_checks_the_prepared_folder(tmp_path):
    folder = make_inputs_folder(tmp_path / "inputs")
    inputs = gpu_inputs.read_inputs(folder)
    assert len(inputs.train) == 3 and len(inputs.test) == 1 and inputs.init.num_gaussians == 64
    reference = folder / gpu_inputs.REFERENCE_NAME
    settings = json.loads(reference.read_text())
    reference.write_text(json.dumps({**settings, "views": 4}))
    with pytest.raises(ConfigError, match=r"train: 3 views of 16 x 16 px, .*reference.json says 4"):
        gpu_inputs.read_inputs(folder)
    reference.write_text(json.dumps({**settings, "reference": {**settings["reference"], "psnr": "high"}}))
    with pytest.raises(ConfigError, match=r"reference.json: reference: field 'psnr' must be float"):
        gpu_inputs.read_inputs(folder)
    reference.write_text("{not json")
    with pytest.raises(ConfigError, match=r"reference.json: not JSON"):
        gpu_inputs.read_inputs(folder)
    reference.unlink()
    with pytest.raises(ConfigError, match=r"reference.json: missing .*gpu_inputs.py"):
        gpu_inputs.read_inputs(folder)


@pytest.mark.slow
def test_train_step_bench_runs_bf16_autocast(monkeypatch):
    import bench_train_step

    from clip_gs.lightning import CLIPGSModule

    seen = []
    compute_loss = CLIPGSModule.compute_loss

    def recording(self, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return compute_loss(self, *args, **kwargs)

    monkeypatch.setattr(CLIPGSModule, "compute_loss", recording)
    result = bench_train_step.run_train_step("clip-gs-tiny", 256, 16, 16, 64, batch=2, steps=1, profile_steps=0,
                                             device="cpu", precision="bf16", between_size=128)  # fmt: skip
    assert result["workload"]["precision"] == "bf16" and result["workload"]["device"] == "cpu"
    assert result["seconds"]["step"] > 0 and result["peak_memory_bytes"] is None
    assert seen and all(s == (True, torch.bfloat16) for s in seen)  # warm-up, timed and FLOP-counted steps
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):  # --device cuda without a GPU is refused, with the reason
            bench_train_step.main(["--device", "cuda", "--skip-train", "--data-steps", "0"])
