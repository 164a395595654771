"""The wheel bundle of the GPU check: what ``benchmarks/gpu_check.sh`` imports that the device image lacks.

The device machine (an H200 running this workplace's 'cuda' image, Python 3.12) reaches no package
registry. Its packages are listed in ``benchmarks/gpu_image_packages.txt``; everything else the check
imports travels beside the tree as wheels, made here on a CPU machine and installed there with
``pip install --no-index --no-deps --target``.

Rules:

- :data:`BUNDLE` pins one version of each distribution carried (the versions the CPU tests run
  with). ``tests/test_gpu_check.py`` checks that it covers every import the check performs beyond the
  image's list (the imports are traced, not listed by hand); :data:`NOT_CARRIED` names what the
  check's modules import only on paths the check never takes, each with the reason.
- Wheels only (``--only-binary=:all:``), for CPython :data:`PYTHON_VERSION` on x86-64 Linux
  (:data:`PLATFORMS`; pure-Python wheels too), fetched with ``--no-deps``: :data:`BUNDLE` is complete
  by itself, and a second version of a distribution never enters the folder.
- The bundle must stay under :data:`BUNDLE_MAX_BYTES` (the working tree that travels to the device
  machine holds at most 64 MiB, and the tree itself takes some): a larger one is refused
  (:class:`~clip_gs.errors.ConfigError`, naming the folder and the size). The script prints the size.
- The folder (default ``.gpu-wheels/``, git-ignored) holds the bundle and nothing else: a wheel of
  another distribution or version is refused, not ignored.

Run: ``python benchmarks/gpu_bundle.py [--out .gpu-wheels]`` (about 40 MB, seconds over a fast link).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGE_PACKAGES = HERE / "gpu_image_packages.txt"
DEFAULT_DIR = REPO / ".gpu-wheels"

PYTHON_VERSION = "3.12"
"""CPython version of the device image's ``python3``."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # fmt: skip
"""Wheel platform tags accepted (the device machine is x86-64 Linux; pip matches each tag exactly)."""
BUNDLE_MAX_BYTES = 40 * 2**20
"""Largest bundle accepted: the travelling tree's 64 MiB hold the tree itself (about 7 MiB), the prepared
inputs of ``benchmarks/gpu_inputs.py`` (at most ``gpu_inputs.INPUTS_MAX_BYTES``) and this."""

BUNDLE: dict[str, str] = {
    # the CUDA rasterizer (the cuda extra); compiles its kernels on first use
    "gsplat": "1.5.3",
    # the data module's streaming shards; litdata imports boto3 when it is imported, obstore is its requirement
    "litdata": "0.2.76",
    "boto3": "1.44.8",
    "botocore": "1.44.8",
    "s3transfer": "0.19.3",
    "jmespath": "1.1.0",
    "obstore": "0.12.1",
    # LightningCLI needs jsonargparse[signatures] (it checks the extra's distributions are installed)
    "jsonargparse": "4.53.0",
    "docstring-parser": "0.18.0",
    "typeshed-client": "2.15.0",
    # 3DGS and mesh files
    "plyfile": "1.1.5",
    "trimesh": "5.2.0",
    "zstandard": "0.25.0",
}
"""Distributions carried, name (PEP 503) -> pinned version."""

NOT_CARRIED: dict[str, str] = {
    "gradio": "the demo app, which the check does not start",
    "open-clip-torch": "open_clip teachers; the check's datasets use the offline teacher synthetic-clip",
    "compression": "the standard library's zstd of Python >= 3.14; on 3.12 the .spz reader takes zstandard",
    "ray": "prepare's Ray Data pipeline (several workers or a cluster); the check prepares in one process",
}
"""Distributions the check's modules import only on paths the check never takes -> why."""

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.+\.whl$")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-``, ``_`` and ``.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image_packages(path: Path = IMAGE_PACKAGES) -> frozenset[str]:
    """The device image's distributions: one PEP 503 name a line; ``#`` starts a comment line.

    Raises:
        ConfigError: a name that is not in PEP 503 form, or a duplicate (names the file and the line).
    """
    from clip_gs.errors import ConfigError

    names: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if not _NAME.match(name):
            raise ConfigError(f"{path}:{number}: {name!r} is not a normalized (PEP 503) distribution name")
        if name in names:
            raise ConfigError(f"{path}:{number}: {name!r} is listed twice")
        names.add(name)
    return frozenset(names)


def wheel_name(path: Path) -> tuple[str, str]:
    """``(PEP 503 name, version)`` of a wheel file name."""
    match = _WHEEL.match(path.name)
    if match is None:
        from clip_gs.errors import ConfigError

        raise ConfigError(f"{path}: not a wheel file name (NAME-VERSION-...-PLATFORM.whl)")
    return normalize(match["name"]), match["version"]


def read_bundle(folder: Path) -> list[Path]:
    """The bundle's wheels in ``folder``: exactly one wheel of each :data:`BUNDLE` entry, at its version.

    Raises:
        ConfigError: a missing or unexpected wheel, a second version, or a bundle over
            :data:`BUNDLE_MAX_BYTES` (names the folder and the wheels).
    """
    from clip_gs.errors import ConfigError

    wheels = sorted(folder.glob("*.whl"))
    found: dict[str, list[str]] = {}
    for wheel in wheels:
        name, version = wheel_name(wheel)
        found.setdefault(name, []).append(version)
    problems = [f"{name}: {len(versions)} wheels ({', '.join(versions)})" for name, versions in found.items()
                if len(versions) > 1]  # fmt: skip
    problems += [f"{name}: not in the bundle" for name in found if name not in BUNDLE]
    problems += [f"{name}: missing" for name in BUNDLE if name not in found]
    problems += [f"{name}: version {found[name][0]}, pinned {BUNDLE[name]}" for name in BUNDLE
                 if name in found and len(found[name]) == 1 and found[name][0] != BUNDLE[name]]  # fmt: skip
    if problems:
        raise ConfigError(f"{folder}: not the GPU check's bundle: {'; '.join(problems)}")
    size = sum(w.stat().st_size for w in wheels)
    if size > BUNDLE_MAX_BYTES:
        raise ConfigError(
            f"{folder}: {size / 2**20:.1f} MiB of wheels, over the {BUNDLE_MAX_BYTES / 2**20:.0f} MiB cap"
        )
    return wheels


def target_flags() -> list[str]:
    """pip's flags for wheels of the device's interpreter (:data:`PYTHON_VERSION`, :data:`PLATFORMS`),
    whatever interpreter runs pip: ``pip download`` here and ``pip install --target`` in a dry run."""
    flags = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def download(out: Path) -> list[Path]:
    """Fetch every :data:`BUNDLE` wheel into ``out`` (``pip download --no-deps``), then :func:`read_bundle` it.

    Raises:
        ConfigError: pip could not fetch a wheel (pip's message), or the folder is not the bundle.
    """
    from clip_gs.errors import ConfigError

    out.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version}" for name, version in BUNDLE.items()]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", *target_flags(),
           "-d", str(out), *pins]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"{out}: pip download failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return read_bundle(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="bundle folder (default: .gpu-wheels)")
    args = parser.parse_args(argv)
    wheels = download(args.out)
    size = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(
        f"bundle: {len(wheels)} wheels, {size / 2**20:.1f} MiB (cap {BUNDLE_MAX_BYTES / 2**20:.0f} MiB) in {args.out}"
    )


if __name__ == "__main__":
    main()
