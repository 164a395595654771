"""The GPU check's runner: every step of ``benchmarks/gpu_check.sh`` in order of value, inside one deadline.

Run through the shell script, from the repository root (it picks the interpreter)::

    bash benchmarks/gpu_check.sh [OUT] [--dry-run] [--wheels DIR] [--inputs DIR]

The steps, each a subprocess of this interpreter with its own timeout (:data:`STEPS`):

1. ``install``: the wheel bundle (``benchmarks/gpu_bundle.py``, default ``.gpu-wheels/``) into a
   target folder, offline: ``pip install --no-index --no-deps --target``. ``PYTHONPATH`` of every
   later step is that target, ``src`` and ``benchmarks``.
2. ``preflight``: GPU, Python, torch / CUDA versions, compilers, importability of each module the
   steps import, disk, the prepared inputs (``benchmarks/gpu_steps.py``); ``OUT/preflight.json``.
3. ``gsplat-compile``: gsplat's CUDA kernels, compiled on first import (log kept), cached in
   ``.gpu-cache/`` (git-ignored; it stays on a warm device machine, so an immediate rerun loads it).
4. ``gsplat-parity``: values and gradients of every input (``means2d`` too) against the torch and
   the compiled CPU backends, as JSON (in the logs archive).
5. ``cuda-tests``: the tests marked ``requires_cuda``; a skipped test fails the step.
6. ``paper-fit``: the paper's fit (5,000 iterations, SH 0) on CUDA from the carried views (default
   ``.gpu-inputs/``, ``benchmarks/gpu_inputs.py``), against the CPU reference made with them.
7. ``train-throughput``: a bf16 training step of clip-gs-base at 10K Gaussians, two batch sizes.
8. ``lightning-fit``: the quick-start configuration, bf16-mixed on the GPU, a short fit and its export.
9. ``prepare-cuda``: ``prepare`` on CUDA, last, so that it is the first thing the deadline cuts.

Rules:

- One deadline, :data:`DEADLINE_S` after the start (under the device's 10-minute limit on a
  command). A step gets ``min(its timeout, time left)``; with less than :data:`STEP_MIN_S` left it
  is skipped, and the results say so.
- A step whose prerequisite failed is skipped and the results say why: ``cuda`` (the preflight saw
  a CUDA device; never in a dry run), ``install`` (the bundle went in), ``inputs`` (the preflight
  read the prepared views), ``gsplat-compile`` (the paper fit: its densification reads gsplat's
  screen-space gradients, which the torch rasterizer does not give). Without a compiled gsplat,
  parity and prepare run the torch rasterizer on CUDA and label their rows so
  (``CLIP_GS_GPU_CHECK_RASTERIZER=torch``).
- The steps' environment: ``TORCH_CUDA_ARCH_LIST`` :data:`CUDA_ARCH` and ``MAX_JOBS`` all cores
  unless set; ``CUDA_HOME``, unless ``CUDA_HOME`` or ``CUDA_PATH`` is set, the toolkit of the nvcc on
  ``PATH`` (:func:`toolkit_home`); ``HF_HUB_OFFLINE=1``; the caches in ``.gpu-cache/``.
- After each step one JSON line goes to ``OUT/results.jsonl`` and to stdout: ``step``, ``status``
  (``ok``, ``failed``, ``timeout`` or ``skipped``), ``seconds``, ``numbers`` (what the step
  measured) and ``reason`` (why it failed or was skipped; null when ok).
- ``OUT`` holds at most these four files (:data:`OUT_FILES`), none in a subfolder: ``preflight.json``,
  ``results.jsonl``, ``logs.tar.gz`` (every step's log and JSON, rebuilt after every step, each
  log cut to its last :data:`LOG_TAIL_BYTES`) and, when it is at most :data:`SO_RETURN_MAX_BYTES`,
  the compiled ``gsplat_cuda.so``. Everything else is written to a temporary work folder.
- ``OUT`` must be empty or new (results are appended line by line; a used folder is refused).
- ``--dry-run`` (on any machine): the same sequence; the bundle goes into a temporary target (pip
  told the device's Python version and platform, so nothing of it is imported here), the steps
  import this machine's packages, and every CUDA step is skipped with its reason.

Exit status: 0 when no step failed or timed out (skipped steps included), 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from gpu_bundle import DEFAULT_DIR as DEFAULT_WHEELS  # the scripts' folder is on sys.path just above
from gpu_bundle import target_flags

DEFAULT_INPUTS = REPO / ".gpu-inputs"
CACHE = REPO / ".gpu-cache"
"""Compiled extensions (torch's ``TORCH_EXTENSIONS_DIR``) and numba's cache: git-ignored, kept between runs."""

DEADLINE_S = 570
"""Seconds from the start after which no step runs (the device machine stops a command at 600 s)."""
STEP_MIN_S = 20
"""A step that would get fewer seconds than this before the deadline is skipped."""
KILL_GRACE_S = 5
"""Seconds between SIGTERM and SIGKILL to a step's process group at its timeout."""
PREFLIGHT, RESULTS, LOGS, EXTENSION = "preflight.json", "results.jsonl", "logs.tar.gz", "gsplat_cuda.so"
OUT_FILES = (PREFLIGHT, RESULTS, LOGS, EXTENSION)
"""The only files the check writes to ``OUT``, none in a folder (the device machine brings back at most 8)."""
SO_RETURN_MAX_BYTES = 16 * 2**20
"""The compiled gsplat extension comes back when at most this large (the device's limit on one file)."""
LOG_TAIL_BYTES = 2 * 2**20
"""Each log goes into the archive cut to its last this many bytes."""
CUDA_ARCH = "9.0"
"""``TORCH_CUDA_ARCH_LIST`` when unset: Hopper (H100, H200) alone, which halves gsplat's compile."""


@dataclass(frozen=True)
class Step:
    """One step: its name, the prerequisites it needs, its timeout in seconds."""

    name: str
    needs: tuple[str, ...]
    timeout_s: int


STEPS = (
    Step("install", (), 90),
    Step("preflight", (), 90),
    Step("gsplat-compile", ("cuda", "install"), 330),
    Step("gsplat-parity", ("cuda", "install"), 120),
    Step("cuda-tests", ("cuda", "install"), 150),
    Step("paper-fit", ("cuda", "install", "inputs", "gsplat-compile"), 150),
    Step("train-throughput", ("cuda", "install"), 150),
    Step("lightning-fit", ("cuda", "install"), 180),
    Step("prepare-cuda", ("cuda", "install"), 150),
    Step("uni3d-modelnet40", ("cuda", "install", "network", "modelnet40"), 240),
)
"""The steps in order of value (name, prerequisites, timeout)."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers on port 443 (the device machine normally has no network)."""
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


class Runner:
    """Runs :data:`STEPS` into ``out`` (see the module docstring)."""

    def __init__(self, out: Path, wheels: Path, inputs: Path, dry_run: bool) -> None:
        self.out, self.wheels, self.inputs, self.dry_run = out, wheels, inputs, dry_run
        self.start = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="clip-gs-gpu-check-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.target = self.work / "site"
        self.status: dict[str, str] = {}
        self.preflight: dict | None = None
        self.failed = False
        self.cuda_home = None if {"CUDA_HOME", "CUDA_PATH"} & set(os.environ) else toolkit_home()

    # ------------------------------------------------------------------ environment
    def env(self, step: str) -> dict[str, str]:
        """The environment of a step's process."""
        env = dict(os.environ)
        paths = [str(REPO / "src"), str(HERE)]
        if self.status.get("install") == "ok" and not self.dry_run:
            paths.insert(0, str(self.target))
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        env["HF_HUB_OFFLINE"] = "1"  # nothing outside the device machine can be reached
        env.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))
        env.setdefault("NUMBA_CACHE_DIR", str(CACHE / "numba"))
        env.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH)
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
        if self.cuda_home is not None:
            env["CUDA_HOME"] = self.cuda_home
        env["CLIP_GS_GPU_CHECK_RASTERIZER"] = "gsplat" if self.status.get("gsplat-compile") == "ok" else "torch"
        if step == "gsplat-compile":
            env["VERBOSE"] = "1"  # gsplat's switch: the compiler's commands and messages go to the log
        return env

    def command(self, step: str, result: Path) -> list[str]:
        """The command line of a step."""
        if step == "install":
            wheels = sorted(str(p) for p in self.wheels.glob("*.whl"))
            return [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--no-cache-dir", "--target", str(self.target), *target_flags(),
                    *wheels]  # fmt: skip
        return [sys.executable, str(HERE / "gpu_steps.py"), step, "--work", str(self.work), "--result", str(result),
                "--inputs", str(self.inputs)]  # fmt: skip

    # ------------------------------------------------------------------ prerequisites
    def missing(self, step: Step) -> str | None:
        """Why ``step`` cannot run (None when it can)."""
        reasons = []
        for need in step.needs:
            if need == "cuda":
                if self.dry_run:
                    reasons.append("dry run: CUDA steps are not run")
                elif self.preflight is None:
                    reasons.append(f"the preflight did not report ({self.status.get('preflight', 'not run')})")
                elif not self.preflight.get("cuda", {}).get("available"):
                    reasons.append(f"no CUDA device: {self.preflight.get('cuda', {}).get('reason', 'unknown')}")
            elif need == "network":
                if not _hub_reachable():
                    reasons.append("no network: huggingface.co cannot be reached (Uni3D's weights are downloaded)")
            elif need == "modelnet40":
                root, data = os.environ.get("CLIP_GS_MODELNET40"), os.environ.get("CLIP_GS_UNI3D_DATA")
                if not (root and Path(root).is_dir() and data and Path(data).is_dir()):
                    reasons.append(
                        "CLIP_GS_MODELNET40 (ModelNet40 folder) and CLIP_GS_UNI3D_DATA (Uni3D's data/ "
                        "with templates.json and labels.json) must name folders"
                    )
            elif need == "inputs":
                inputs = (self.preflight or {}).get("inputs", {})
                if not inputs.get("ok"):
                    reasons.append(f"no prepared inputs: {inputs.get('reason', 'the preflight did not read them')}")
            elif self.status.get(need) != "ok":
                reasons.append(f"prerequisite {need} {self.status.get(need, 'not run')}")
        return "; ".join(reasons) or None

    # ------------------------------------------------------------------ one step
    def run_step(self, step: Step, number: int) -> dict:
        log = self.logs / f"{number:02d}-{step.name}.log"
        result = self.work / f"{step.name}.numbers.json"
        left = DEADLINE_S - (time.monotonic() - self.start)
        reason = self.missing(step)
        if reason is None and step.name == "install" and not list(self.wheels.glob("*.whl")):
            reason = f"no wheels in {self.wheels}: make the bundle with python benchmarks/gpu_bundle.py"
            return self.record(step.name, "failed", 0.0, {}, reason)
        if reason is None and left < STEP_MIN_S:
            reason = f"deadline: {left:.0f} s left of {DEADLINE_S} s"
        if reason is not None:
            return self.record(step.name, "skipped", 0.0, {}, reason)
        timeout = min(step.timeout_s, left)
        begin = time.monotonic()
        with log.open("w") as handle:
            handle.write(f"$ {' '.join(self.command(step.name, result))}\n")
            handle.flush()
            process = subprocess.Popen(self.command(step.name, result), stdout=handle, stderr=subprocess.STDOUT,
                                       env=self.env(step.name), cwd=REPO, start_new_session=True)  # fmt: skip
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
                _stop(process)
        seconds = time.monotonic() - begin
        numbers = self.install_numbers() if step.name == "install" else _read_json(result)
        step_reason = numbers.pop("reason", None)
        if step.name == "preflight" and (self.work / PREFLIGHT).is_file():
            self.preflight = _read_json(self.work / PREFLIGHT)
            shutil.copyfile(self.work / PREFLIGHT, self.out / PREFLIGHT)
        if code is None:
            return self.record(
                step.name, "timeout", seconds, numbers, f"timed out after {timeout:.0f} s (log {log.name})"
            )
        if code != 0:
            tail = _tail(log, 600)
            return self.record(step.name, "failed", seconds, numbers,
                               step_reason or f"exit status {code} (log {log.name}): ...{tail}")  # fmt: skip
        if step.name == "gsplat-compile":
            numbers.update(self.return_extension(numbers.get("so_path")))
        return self.record(step.name, "ok", seconds, numbers, None)

    def install_numbers(self) -> dict:
        wheels = sorted(self.wheels.glob("*.whl"))
        return {"wheels": len(wheels), "bundle_mib": round(sum(w.stat().st_size for w in wheels) / 2**20, 2),
                "target": str(self.target), "on_path": not self.dry_run}  # fmt: skip

    def return_extension(self, so_path: str | None) -> dict:
        """Copy the compiled extension into ``out`` when it is small enough."""
        if not so_path or not Path(so_path).is_file():
            return {"so_returned": False}
        size = Path(so_path).stat().st_size
        if size > SO_RETURN_MAX_BYTES:
            return {"so_returned": False, "so_not_returned": f"{size} bytes > {SO_RETURN_MAX_BYTES}"}
        shutil.copyfile(so_path, self.out / EXTENSION)
        return {"so_returned": True}

    def record(self, step: str, status: str, seconds: float, numbers: dict, reason: str | None) -> dict:
        self.status[step] = status
        self.failed |= status in ("failed", "timeout")
        line = {"step": step, "status": status, "seconds": round(seconds, 2), "numbers": numbers, "reason": reason}
        text = json.dumps(line, default=str)
        with (self.out / RESULTS).open("a") as handle:
            handle.write(text + "\n")
        print(text, flush=True)
        self.archive()
        return line

    def archive(self) -> None:
        """Rebuild ``out/logs.tar.gz``: every log (its last :data:`LOG_TAIL_BYTES`) and every JSON of the work folder."""
        files = sorted(self.logs.glob("*.log")) + sorted(self.work.glob("*.json"))
        partial = self.out / f"{LOGS}.part"
        with tarfile.open(partial, "w:gz") as tar:
            for path in files:
                data = path.read_bytes()[-LOG_TAIL_BYTES:]
                info = tarfile.TarInfo(f"logs/{path.name}")
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
        partial.replace(self.out / LOGS)

    # ------------------------------------------------------------------ all steps
    def run(self) -> int:
        print(json.dumps({"check": "clip-gs gpu", "dry_run": self.dry_run, "deadline_s": DEADLINE_S,
                          "work": str(self.work), "out": str(self.out), "python": sys.executable}), flush=True)  # fmt: skip
        try:
            for number, step in enumerate(STEPS, 1):
                self.run_step(step, number)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        return 1 if self.failed else 0


def toolkit_home() -> str | None:
    """The CUDA toolkit of the ``nvcc`` on ``PATH``, as nvcc itself reports it (``TOP`` in ``nvcc -dryrun``), when it
    holds ``include/cuda_runtime.h``; None otherwise (no nvcc, or nvcc says something else).

    torch, without ``CUDA_HOME``, takes the folder above nvcc's: for a wrapper script such as
    ``/usr/local/bin/nvcc`` that is ``/usr/local``, without the CUDA headers, and gsplat's C++ sources
    then fail to compile (seen on a CPU machine of this workplace).
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        probe = subprocess.run([nvcc, "-dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (probe.stdout + probe.stderr).splitlines():
        if line.startswith("#$ TOP="):
            top = Path(line.removeprefix("#$ TOP=").strip()).resolve()
            return str(top) if (top / "include" / "cuda_runtime.h").is_file() else None
    return None


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the step's whole process group (its workers and compilers too)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return {"reason": f"{path.name} is not JSON: {exc}"}
    return value if isinstance(value, dict) else {"reason": f"{path.name} holds {type(value).__name__}, not an object"}


def _tail(path: Path, chars: int) -> str:
    return path.read_text(errors="replace")[-chars:].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("gpu-check"),
                        help="output folder, empty or new (on the device machine: $OUT); default ./gpu-check")  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU rehearsal: CUDA steps skip, bundle to a temp target"
    )
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="the bundle (default .gpu-wheels)")
    parser.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS, help="prepared views (default .gpu-inputs)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in args.out.iterdir()]
    if stale:
        parser.error(
            f"{args.out} is not empty ({', '.join(sorted(stale)[:5])}): results are appended, give an empty folder"
        )
    return Runner(args.out.resolve(), args.wheels.resolve(), args.inputs.resolve(), args.dry_run).run()


if __name__ == "__main__":
    sys.exit(main())
