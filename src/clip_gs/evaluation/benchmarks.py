"""Public 3D benchmarks read in the layouts they are downloaded in (``clip-gs eval --benchmark NAME --root DIR``).

:func:`discover` lists a benchmark's objects as :class:`BenchmarkItem` s (id, file, label, split),
sorted; :func:`load_item` reads one as a :class:`~clip_gs.gaussians.GaussianCloud`: 3DGS files as
they are, meshes converted to surface Gaussians (:func:`~clip_gs.gaussians.mesh.mesh_to_gaussians`,
seeded) and cached. The layouts (:data:`BENCHMARKS`)::

    modelnet40/                    Princeton's ModelNet40.zip
      <class>/train/<class>_0001.off
      <class>/test/<class>_0627.off
    modelnet-splats/               ShapeSplat's ModelNet-Splats (huggingface.co/datasets/ShapeSplats/ModelNet_Splats,
      <class>/train/<class>_0001/point_cloud.ply      unzipped as its DATA.md lays out; a bare
      <class>/test/<class>_0627/point_cloud.ply       <class>/<split>/<name>.ply is read too)
    objaverse-gs/                  3DGS fitted per Objaverse object, in either of UniGS's forms (or both):
      <uid>/point_cloud/iteration_<N>/point_cloud.ply the gaussian-splatting output (the highest iteration is read)
      [objects/]<uid>.pkl          UniGS's processed files (huggingface.co/datasets/lihy285/UniGS), any depth
      lvis.json                    OpenShape's meta_data/split/lvis.json: [{"uid": ..., "category": ...}]
                                   (optional with .pkl files: then each file's own LVIS "label" is read)
    objaverse-lvis/                the objaverse package's download folder
      glbs/<000-159>/<uid>.glb     (the 000-159 folders are storage shards, never labels)
      lvis-annotations.json        objaverse.load_lvis_annotations(): {category: [uid, ...]}

Labels come from the class folders (ModelNet) or from the annotation / split file (Objaverse);
for UniGS's ``.pkl`` files without a split file, from each file's own LVIS label (every file is
then read once at discovery; give ``lvis.json`` to avoid that). Nothing is dropped silently:
annotated uids without a file and files without an annotation (a ``.pkl`` outside LVIS) are
counted in :attr:`Discovery.missing` / :attr:`Discovery.unannotated` and warned about
(:class:`BenchmarkWarning`); one uid with two files is an error. The ``.pkl`` files are read by
:func:`~clip_gs.gaussians.formats.unigs_pkl.read_unigs_pkl`, a restricted unpickler that rebuilds
NumPy arrays only and refuses any other global, so a file never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.gaussians import GaussianCloud
from clip_gs.gaussians.assets import MESH_GAUSSIANS

CONVERSION_VERSION = 1
"""Part of every cache key: bump it when the mesh conversion changes, so stale entries are not read."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark layout: what it is, where its labels come from, its splits and the paper table it feeds."""

    name: str
    description: str
    labels_from: str
    splits: tuple[str, ...]
    table: str
    up: str = "auto"
    """The up axis of its meshes when the user names none (``--up auto``)."""
    grey: float | None = None
    """The colour its colourless meshes' surface samples get (None: the package's neutral grey)."""


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "modelnet40": BenchmarkSpec("modelnet40", "ModelNet40 meshes (.off), converted to Gaussians and cached",
                                "class folders", ("train", "test"), "zero-shot (Table 1), few-shot (Table 2)",
                                up="+z", grey=0.4),  # Uni3D's conventions: z-up files brought y-up, grey 0.4
    "modelnet-splats": BenchmarkSpec("modelnet-splats", "ShapeSplat's ModelNet-Splats 3DGS .ply", "class folders",
                                     ("train", "test"), "zero-shot and few-shot on fitted 3DGS"),
    "objaverse-gs": BenchmarkSpec("objaverse-gs", "per-object 3DGS of Objaverse (UniGS's fits or .pkl) + OpenShape's lvis.json",
                                  "the split file (or each .pkl's LVIS label)", ("test",), "zero-shot (Objaverse-LVIS-GS, Table 1)"),
    "objaverse-lvis": BenchmarkSpec("objaverse-lvis", "Objaverse GLBs (objaverse package layout) + lvis-annotations.json",
                                    "the annotation file", ("test",), "zero-shot (Objaverse-LVIS, Table 1)"),
}  # fmt: skip
"""The benchmark layouts :func:`discover` reads (module docstring)."""


class BenchmarkWarning(UserWarning):
    """Objects of a benchmark that are listed but absent, or present but unlabelled (counted, with examples)."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One object: ``id`` (unique in the benchmark), ``path`` (its file), ``label``, ``split``
    (``"train"`` / ``"test"``, or None for a test-only set)."""

    id: str
    path: Path
    label: str
    split: str | None


@dataclass
class Discovery:
    """What :func:`discover_all` found: the items, annotated ids without a file, files without an annotation."""

    items: list[BenchmarkItem]
    missing: list[str] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)


def _folder(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder")
    return path


def _class_split_layout(root: Path, name: str, find) -> list[BenchmarkItem]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class folders (the {name} layout is <class>/{{train,test}}/...)")
    items = []
    for folder in classes:
        splits = [s for s in ("train", "test") if (folder / s).is_dir()]
        if not splits:
            raise DatasetError(f"{folder}: a class folder without train/ or test/ (the {name} layout)")
        for split in splits:
            for object_id, path in find(folder / split):
                items.append(BenchmarkItem(f"{folder.name}/{split}/{object_id}", path, folder.name, split))
    if not items:
        raise DatasetError(f"{root}: no objects in the {name} layout")
    return items


def _off_files(folder: Path):
    return [(p.stem, p) for p in sorted(folder.glob("*.off")) + sorted(folder.glob("*.OFF"))]


def _splat_files(folder: Path):
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and (entry / "point_cloud.ply").is_file():
            found.append((entry.name, entry / "point_cloud.ply"))
        elif entry.is_file() and entry.suffix.lower() == ".ply":
            found.append((entry.stem, entry))
        elif entry.is_dir():
            raise DatasetError(f"{entry}: an object folder without point_cloud.ply (the modelnet-splats layout)")
    return found


def _latest_fit(folder: Path) -> Path | None:
    runs = []
    for run in (folder / "point_cloud").glob("iteration_*"):
        match = re.fullmatch(r"iteration_(\d+)", run.name)
        if match and (run / "point_cloud.ply").is_file():
            runs.append((int(match.group(1)), run / "point_cloud.ply"))
    return max(runs)[1] if runs else None


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable {what} ({exc})") from exc


def _find_file(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root}: no {what} (looked for {', '.join(names)})")


LVIS_SPLIT_FILES = ("lvis.json", "split/lvis.json", "meta_data/split/lvis.json")
"""Where the ``objaverse-gs`` layout looks for OpenShape's split file, in order."""


def _unigs_pickles(root: Path) -> dict[str, Path]:
    """``uid -> file`` of every ``<uid>.pkl`` under ``root`` (any depth); one uid twice is an error."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.pkl")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            if path.stem in found:
                raise DatasetError(f"{root}: uid {path.stem!r} has two .pkl files: {found[path.stem]} and {path}")
            found[path.stem] = path
    return found


def _pickle_labels(files: dict[str, Path]) -> dict[str, str]:
    """``uid -> LVIS label`` read from each UniGS file (a file outside LVIS has none)."""
    from clip_gs.gaussians.formats.unigs_pkl import read_unigs_pkl

    labels = {}
    for uid, path in files.items():
        label = read_unigs_pkl(path).label
        if label is not None:
            labels[uid] = label
    return labels


def _objaverse_gs(root: Path) -> Discovery:
    split_file = next((root / name for name in LVIS_SPLIT_FILES if (root / name).is_file()), None)
    fits = {p.name: fit for p in root.iterdir() if p.is_dir() and (fit := _latest_fit(p)) is not None}
    pickles = _unigs_pickles(root)
    both = sorted(set(fits) & set(pickles))
    if both:
        raise DatasetError(f"{root}: uid {both[0]!r} has both a fit ({fits[both[0]]}) and a .pkl ({pickles[both[0]]}); "
                           f"keep one ({len(both)} such uids)")  # fmt: skip
    files = fits | pickles
    if split_file is None:
        if not pickles:
            raise DatasetError(f"{root}: no LVIS split file (looked for {', '.join(LVIS_SPLIT_FILES)})")
        labels = _pickle_labels(pickles)  # each file's own LVIS label; the fits, if any, stay unannotated
    else:
        entries = _read_json(split_file, "LVIS split file")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and {"uid", "category"} <= set(e) for e in entries):
            raise DatasetError(f"{split_file}: expected OpenShape's list of {{\"uid\": ..., \"category\": ...}} records")
        labels = {str(e["uid"]): str(e["category"]) for e in entries}
    items = [BenchmarkItem(uid, files[uid], labels[uid], None) for uid in sorted(labels) if uid in files]
    return Discovery(items, sorted(set(labels) - set(files)), sorted(set(files) - set(labels)))


def _objaverse_lvis(root: Path) -> Discovery:
    annotation = _find_file(root, ("lvis-annotations.json", "lvis_annotations.json"), "LVIS annotation")
    table = _read_json(annotation, "LVIS annotation")
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise DatasetError(f"{annotation}: expected {{category: [uid, ...]}} (objaverse.load_lvis_annotations())")
    labels: dict[str, str] = {}
    for category, uids in table.items():
        for uid in uids:
            if str(uid) in labels and labels[str(uid)] != category:
                raise DatasetError(f"{annotation}: uid {uid} is annotated as both {labels[str(uid)]!r} and {category!r}")
            labels[str(uid)] = str(category)
    glbs = root / "glbs"
    if not glbs.is_dir():
        raise DatasetError(f"{root}: no glbs/ folder (the objaverse layout is glbs/<000-159>/<uid>.glb)")
    files = {p.stem: p for p in glbs.glob("*/*.glb")}
    items = [BenchmarkItem(uid, files[uid], labels[uid], None) for uid in sorted(labels) if uid in files]
    return Discovery(items, sorted(set(labels) - set(files)), sorted(set(files) - set(labels)))


def discover_all(name: str, root: str | os.PathLike) -> Discovery:
    """Every object of benchmark ``name`` under ``root``, plus what was listed but absent and what is unannotated.

    Raises:
        ConfigError: an unknown benchmark name (the known ones listed).
        DatasetError: a folder that is not in the benchmark's layout (named), an unreadable or
            malformed annotation, no objects at all.
    """
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    folder = _folder(root)
    if name == "modelnet40":
        found = Discovery(_class_split_layout(folder, name, _off_files))
    elif name == "modelnet-splats":
        found = Discovery(_class_split_layout(folder, name, _splat_files))
    elif name == "objaverse-gs":
        found = _objaverse_gs(folder)
    else:
        found = _objaverse_lvis(folder)
    if not found.items:
        raise DatasetError(f"{folder}: no annotated objects found in the {name} layout "
                           f"({len(found.missing)} annotated ids have no file)")  # fmt: skip
    return found


def discover(name: str, root: str | os.PathLike) -> list[BenchmarkItem]:
    """The objects of benchmark ``name`` under ``root`` (sorted by split, class, id), warning
    (:class:`BenchmarkWarning`) with counts and examples about annotated ids without a file and
    files without an annotation (:func:`discover_all` returns them)."""
    found = discover_all(name, root)
    for what, ids in (("annotated objects have no file", found.missing), ("files have no annotation", found.unannotated)):
        if ids:
            warnings.warn(f"{root} ({name}): {len(ids)} {what}, not evaluated: {ids[:5]}{' ...' if len(ids) > 5 else ''}",
                          BenchmarkWarning, stacklevel=2)  # fmt: skip
    return found.items


def class_names(items: list[BenchmarkItem]) -> list[str]:
    """The distinct labels of ``items``, sorted (the class index order of ModelNet40's folders)."""
    return sorted({item.label for item in items})


@dataclass(frozen=True)
class MeshConversion:
    """How a benchmark's meshes become Gaussians, as ``clip-gs prepare`` makes training data
    (``--gaussians``, ``--fit-iterations``, ``--fit-views``, ``--fit-size``).

    Attributes:
        gaussians: ``"surface"`` (surface samples) or ``"fitted"`` (3DGS fitted to Blender renders of the
            mesh, :func:`~clip_gs.data.fitted.fit_mesh`; the paper's Objaverse-GS and ModelNet-GS).
        fit_iterations, fit_views, fit_size: the fit (with ``fitted``), capped at ``mesh_gaussians``.
    """

    gaussians: str = "surface"
    fit_iterations: int = 1000
    fit_views: int = 36
    fit_size: int = 128

    def __post_init__(self) -> None:
        if self.gaussians not in ("surface", "fitted"):
            raise ConfigError(f"gaussians must be 'surface' or 'fitted', got {self.gaussians!r}")


def cache_key(path: Path, mesh_gaussians: int, seed: int, up: str = "auto",
              conversion: MeshConversion = MeshConversion(), grey: float | None = None) -> str:  # fmt: skip
    """What a converted mesh is cached under: the file (resolved path, size, modification time)
    and the conversion (count, seed, up axis, surface or fitted and the fit's settings, grey,
    :data:`CONVERSION_VERSION`)."""
    stat = path.stat()
    spec = (f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{mesh_gaussians}|{seed}|{up}|{conversion}|{grey}"
            f"|v{CONVERSION_VERSION}")  # fmt: skip
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


def default_benchmark_cache() -> Path:
    """``benchmarks/`` under :func:`~clip_gs.storage.cache_root` (``$CLIP_GS_CACHE`` moves it)."""
    from clip_gs.storage import cache_root

    return cache_root() / "benchmarks"


def load_item(item: BenchmarkItem, mesh_gaussians: int = MESH_GAUSSIANS, seed: int = 0,
              cache_dir: str | os.PathLike | None = None, up: str = "auto",
              conversion: MeshConversion = MeshConversion(), benchmark: str | None = None) -> GaussianCloud:  # fmt: skip
    """The item as Gaussians in the model frame (+y up): a 3DGS ``.ply`` read as it is; a mesh
    converted to ``mesh_gaussians`` surface Gaussians with ``seed`` and cached as ``.ply`` under
    ``cache_dir`` (default :func:`default_benchmark_cache`), read from there the next time
    (:func:`cache_key`).

    ``up`` is the up axis of files that declare none (:func:`~clip_gs.gaussians.assets.load_asset`).
    ``"auto"`` takes a benchmark's own convention (:attr:`BenchmarkSpec.up`: ModelNet40's meshes are
    z-up), meshes otherwise as +y, and a benchmark's 3DGS files as they are: they are fits of the
    benchmark's meshes, in their frame, not y-down captures. ``conversion`` makes meshes surface
    samples or fitted 3DGS; a benchmark's :attr:`BenchmarkSpec.grey` recolours the Gaussians that
    colourless meshes gave neutral grey (surface samples).

    Raises:
        GaussianFormatError / MeshError: a file that cannot be read or converted (names it).
        ConfigError: an unknown ``up``.
    """
    from clip_gs.gaussians import load_gaussians, save_gaussians
    from clip_gs.gaussians.assets import load_asset
    from clip_gs.gaussians.frames import MODEL_FRAME
    from clip_gs.storage import atomic_path

    if item.path.suffix.lower() == ".ply":
        return load_asset(item.path, up=MODEL_FRAME if up == "auto" else up)
    if item.path.suffix.lower() == ".pkl":  # UniGS's files stand +z up ("auto" knows it), read by the restricted unpickler
        return load_asset(item.path, up=up)
    spec = BENCHMARKS.get(benchmark) if benchmark is not None else None
    if spec is not None and up == "auto":
        up = spec.up
    grey = spec.grey if spec is not None else None
    cache = Path(cache_dir) if cache_dir is not None else default_benchmark_cache()
    cached = cache / f"{cache_key(item.path, mesh_gaussians, seed, up, conversion, grey)}.ply"
    if cached.is_file():
        return load_gaussians(cached)
    if conversion.gaussians == "fitted":
        cloud = _fitted(item.path, up, mesh_gaussians, seed, conversion)
    else:
        cloud = load_asset(item.path, up=up, mesh_gaussians=mesh_gaussians, seed=seed)
        if grey is not None:
            cloud = _recolour_grey(cloud, grey)
    with atomic_path(cached) as partial:  # a killed run leaves no half-written entry
        save_gaussians(cloud, partial, format="ply")
    return load_gaussians(cached)


def _fitted(path: Path, up: str, mesh_gaussians: int, seed: int, conversion: MeshConversion) -> GaussianCloud:
    """3DGS fitted to Blender renders of the mesh at ``path`` (as prepare makes training data), in the
    model frame, normalised."""
    from clip_gs.data.fitted import fit_mesh
    from clip_gs.fitting import FitConfig
    from clip_gs.gaussians.frames import MODEL_FRAME, resolve_up, to_frame

    config = FitConfig(iterations=conversion.fit_iterations, max_gaussians=mesh_gaussians, seed=seed)
    fitted = fit_mesh(path, config, views=conversion.fit_views, size=conversion.fit_size)
    return to_frame(fitted.result.cloud.to(device="cpu").normalized(), resolve_up(path, up), MODEL_FRAME)


def _recolour_grey(cloud: GaussianCloud, grey: float) -> GaussianCloud:
    """The Gaussians a colourless mesh gave :data:`~clip_gs.gaussians.mesh.NEUTRAL_GREY` made ``grey``."""
    from clip_gs.gaussians.cloud import SH_C0
    from clip_gs.gaussians.mesh import NEUTRAL_GREY

    neutral = (cloud.rgb - torch.tensor(NEUTRAL_GREY, dtype=cloud.rgb.dtype)).abs().amax(dim=-1) < 1e-6
    if not bool(neutral.any()):
        return cloud
    sh = cloud.sh.clone()
    sh[neutral, 0, :] = (grey - 0.5) / SH_C0
    return cloud.replace(sh=sh)


__all__ = [
    "BENCHMARKS",
    "CONVERSION_VERSION",
    "BenchmarkItem",
    "BenchmarkSpec",
    "BenchmarkWarning",
    "Discovery",
    "MeshConversion",
    "cache_key",
    "class_names",
    "default_benchmark_cache",
    "discover",
    "discover_all",
    "load_item",
]
