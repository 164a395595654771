"""What ``clip-gs eval`` evaluates: a source of objects, one split of a prepared dataset or of a public benchmark.

A source (:class:`PreparedSplit`, :class:`BenchmarkSplit`) lists its objects and reads them in chunks as
:class:`EvalObject` s (the 3DGS with what the dataset stores beside it: label, first caption and its
teacher embedding, the views' teacher embeddings); it names the tasks it supports, the teacher of its
stored embeddings, the source of the standard few-shot protocol's support, and the zero-shot classes
(:class:`ZeroShotClasses`). :func:`~clip_gs.evaluation.run.evaluate` runs the protocols over either.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.evaluation.protocols import ZeroShotProtocol, protocol_weights, zero_shot_protocol
from clip_gs.gaussians import GaussianCloud
from clip_gs.gaussians.assets import MESH_GAUSSIANS

TASKS = ("zeroshot", "fewshot", "retrieval")
"""The protocols :func:`~clip_gs.evaluation.run.evaluate` runs (``"all"`` on the command line)."""

BENCHMARK_TASKS = ("zeroshot", "fewshot")
"""What a benchmark layout supports (no captions, no views: no retrieval)."""


@dataclass
class EvalObject:
    """One object of a source, as read.

    Attributes:
        id: the object's id (a prepared sample's id, a benchmark item's id).
        cloud: its 3DGS.
        label: its class (None when unlabelled).
        caption: its first caption (None without one).
        text_embedding: ``[E]`` teacher embedding of ``caption`` (None without one).
        image_embeddings: ``[V, E]`` teacher embeddings of its rendered views (None without views).
        up: world up axis of its stored cameras (:func:`camera_up_axis`), for thumbnails.
    """

    id: str
    cloud: GaussianCloud
    label: str | None
    caption: str | None = None
    text_embedding: Tensor | None = None
    image_embeddings: Tensor | None = None
    up: str = "+y"


@dataclass(frozen=True)
class ZeroShotClasses:
    """The zero-shot classes of a source.

    Attributes:
        names: the C class names. weights: ``[C, E]`` their embeddings.
        where: where they came from (the report's ``label_set``). protocol: the protocol's name.
        match: map the objects' labels onto ``names`` (:func:`~clip_gs.evaluation.protocols.match_labels`);
            False when the names are the dataset's own labels.
    """

    names: list[str]
    weights: Tensor
    where: str
    protocol: str
    match: bool


def camera_up_axis(viewmat: Tensor) -> str:
    """The world axis (``+y``, ``-y``, ``+z``, ``-z``) closest to a camera's image-up direction.

    Args:
        viewmat: ``[4, 4]`` world-to-camera matrix (OpenCV: the camera's y axis points down).
    """
    up = -viewmat[1, :3].double()  # image up, in world coordinates
    candidates = {"+y": up[1], "-y": -up[1], "+z": up[2], "-z": -up[2]}
    return max(candidates, key=lambda k: float(candidates[k]))


# ---------------------------------------------------------------------------- a prepared split
def open_split(root: str | os.PathLike, split: str, storage_options: dict | None = None):
    """``(manifest, TripletShardDataset)`` of one split of a prepared dataset.

    Raises:
        DatasetError: no manifest, a split the manifest lists without samples, a missing split folder.
    """
    from clip_gs.data.shards import TripletShardDataset, read_manifest
    from clip_gs.storage import join

    manifest = read_manifest(str(root), storage_options)
    if manifest.counts.get(split, 0) <= 0:
        raise DatasetError(f"{root}: split {split!r} has no samples (the manifest lists {manifest.counts})")
    return manifest, TripletShardDataset(join(str(root), split), storage_options=storage_options)


def zero_shot_classes(
    root: str | os.PathLike,
    label_set: str | os.PathLike | Sequence[str] | None = None,
    teacher=None,
    dataset_teacher: str | None = None,
    storage_options: dict | None = None,
    protocol: ZeroShotProtocol | None = None,
) -> tuple[list[str], Tensor, str]:
    """Class names, class embeddings ``[C, E]`` and a description of where they came from, for a prepared dataset.

    ``protocol`` with its own classes (``uni3d``, or ``clip-gs`` with a benchmark's list): those,
    encoded with its templates and rule (:func:`~clip_gs.evaluation.protocols.protocol_weights`).
    Otherwise ``label_set`` None: the dataset's stored prompt-ensemble embeddings
    (``label_embeddings.bin``, described as ``"dataset"``); else a label-set name, file or list of
    names (:func:`~clip_gs.teachers.load_label_set`), encoded with :data:`~clip_gs.teachers.TEMPLATES`.
    Encoding is by ``teacher`` (a :class:`~clip_gs.teachers.Teacher` or spec; None rebuilds
    ``dataset_teacher`` with :func:`teacher_spec_for`), which must be the dataset's teacher.
    A label-embedding file (``label_set`` ending in ``.safetensors``, or a ``protocol`` carrying
    one) is used instead of encoding: no teacher is loaded, and the file's teacher must be the
    dataset's (or, without one, ``teacher``'s).

    Raises:
        DatasetError: unreadable label embeddings. TeacherMismatchError: another teacher.
        ConfigError: an invalid label set, a teacher that cannot be rebuilt, a label-embedding file
            made with other prompts than the protocol's.
    """
    from clip_gs.data.shards import read_label_embeddings

    if protocol is None or protocol.class_names is None:
        if label_set is None:
            names, weights, meta = read_label_embeddings(str(root), storage_options)
            if dataset_teacher is not None and meta.get("teacher") not in (None, dataset_teacher):
                raise DatasetError(f"{root}: label embeddings made by {meta.get('teacher')!r}, the shards by {dataset_teacher!r}")
            return names, weights.float(), "dataset"
        protocol = zero_shot_protocol("clip-gs", label_set=label_set)
        where = str(label_set) if isinstance(label_set, (str, os.PathLike)) else f"labels:{','.join(protocol.class_names)}"
    else:
        where = protocol.source
    from clip_gs.teachers import Teacher, check_same_teacher, load_teacher
    from clip_gs.teachers.factory import teacher_spec_for

    if protocol.label_embeddings is not None:  # a label-embedding file: checked, nothing encoded
        expected = dataset_teacher if dataset_teacher is not None else teacher if isinstance(teacher, Teacher) else None
        if expected is None:
            raise ConfigError(f"{protocol.label_embeddings.where}: no dataset or model teacher to check it against")
        what = f"the dataset {root}" if dataset_teacher is not None else "the given teacher"
        protocol.label_embeddings.check_teacher(expected, what)
        return list(protocol.class_names), protocol_weights(protocol, expected), where
    if teacher is None:
        if dataset_teacher is None:
            raise ConfigError("a label set needs a teacher: pass one (or a dataset whose manifest names its teacher)")
        teacher = teacher_spec_for(dataset_teacher)
    teacher = load_teacher(teacher)
    if dataset_teacher is not None:
        check_same_teacher(teacher, dataset_teacher, what=f"label-set teacher and the dataset {root}")
    return list(protocol.class_names), protocol_weights(protocol, teacher), where


class PreparedSplit:
    """One split of a dataset written by ``clip-gs prepare`` (a folder or ``s3://...``): every task.

    Args:
        root: the dataset root. split: ``train``, ``val`` or ``test``.
        storage_options: for a remote root (:func:`~clip_gs.cli_flags.storage_options`).

    Raises:
        DatasetError: see :func:`open_split`.
    """

    tasks = TASKS
    prefetch = True
    """Chunks may be read by a background thread while the previous one encodes."""

    def __init__(self, root: str | os.PathLike, split: str = "test", storage_options: dict | None = None) -> None:
        self.root, self.split, self.storage_options = root, split, storage_options
        self.manifest, self.dataset = open_split(root, split, storage_options)

    @property
    def where(self) -> str:
        """The report's ``data``."""
        return str(self.root)

    @property
    def title(self) -> str:
        """How pictures name the source."""
        return f"{self.split} split"

    @property
    def embed_dim(self) -> int:
        """The width of the stored teacher embeddings."""
        return self.manifest.embed_dim

    @property
    def report_fields(self) -> dict:
        """What the report adds for this kind of source (nothing)."""
        return {}

    def __len__(self) -> int:
        return len(self.dataset)

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """Every task of :data:`TASKS` runs on a prepared split."""

    def dataset_teacher(self) -> str:
        """The teacher identity of the stored embeddings (the manifest's)."""
        return self.manifest.teacher

    def report_teacher(self, teacher=None, model_teacher_identity: str | None = None) -> str:
        """The report's ``teacher``: the dataset's."""
        return self.manifest.teacher

    def chunks(self, size: int) -> Iterator[list[EvalObject]]:
        """The objects in order, ``size`` at a time.

        Raises:
            CorruptSampleError: a damaged record (names the chunk and index).
        """
        for start in range(0, len(self), size):
            out = []
            for i in range(start, min(len(self), start + size)):
                s = self.dataset[i]
                out.append(EvalObject(
                    s.id, s.cloud.replace(source=s.id), s.label, s.captions[0] if s.captions else None,
                    s.text_embeddings[0] if s.captions else None, s.image_embeddings,
                    camera_up_axis(s.viewmats[0]) if len(s.viewmats) else "+y",
                ))  # fmt: skip
            yield out

    def cloud(self, index: int) -> GaussianCloud:
        """The 3DGS of object ``index`` (for thumbnails)."""
        return self.dataset[index].cloud

    def support(self, split: str) -> PreparedSplit:
        """The standard few-shot protocol's support: the split ``split`` of the same dataset.

        Raises:
            DatasetError: ``split`` is this one, or has no objects (the message names the episodes protocol).
        """
        counts = self.manifest.counts
        if split == self.split or counts.get(split, 0) <= 0:
            why = ("is the evaluated split: support and queries would overlap" if split == self.split else
                   f"has no objects (the manifest lists {counts})")  # fmt: skip
            raise DatasetError(f"{self.root}: the standard few-shot protocol takes its support from the {split!r} "
                               f"split, which {why}; a set without a train split (such as Objaverse-LVIS) runs "
                               f"--fewshot-protocol episodes, which draws support and queries, disjoint, from the "
                               f"evaluated split")  # fmt: skip
        return PreparedSplit(self.root, split, self.storage_options)

    def zero_shot_classes(self, labels: Sequence[str], label_set=None, teacher=None,
                          protocol: ZeroShotProtocol | None = None, model_teacher_identity: str | None = None,
                          ) -> ZeroShotClasses:  # fmt: skip
        """The classes of :func:`zero_shot_classes` (the dataset's stored label embeddings by default)."""
        names, weights, where = zero_shot_classes(self.root, label_set, teacher, self.manifest.teacher,
                                                  self.storage_options, protocol)  # fmt: skip
        return ZeroShotClasses(names, weights, where, protocol.name if protocol is not None else "clip-gs",
                               where != "dataset")  # fmt: skip


# ---------------------------------------------------------------------------- a benchmark split
class BenchmarkSplit:
    """One split of a public benchmark read in its download layout: zero-shot and few-shot.

    The objects come from :mod:`clip_gs.evaluation.benchmarks` (meshes converted to Gaussians and
    cached, 3DGS files read as they are). A benchmark layout has no captions and no rendered views,
    so retrieval needs a prepared split.

    Args:
        name, root: the benchmark (:data:`~clip_gs.evaluation.benchmarks.BENCHMARKS`) and its folder.
        split: the split scored (a test-only set's objects have no split and are all scored).
        items: the benchmark's objects as :func:`~clip_gs.evaluation.benchmarks.discover` found them in
            ``root`` (a caller that listed them already); None lists them here.
        mesh_gaussians, seed, up, cache_dir: reading the files (surface samples per mesh, seeded with
            ``seed``; the up axis of files that declare none) and the cache of converted meshes
            (:func:`~clip_gs.evaluation.benchmarks.load_item`).
        conversion: how meshes become Gaussians (:class:`~clip_gs.evaluation.benchmarks.MeshConversion`).

    Raises:
        ConfigError: an unknown benchmark. DatasetError: a folder not in the benchmark's layout, no
            object of ``split``.
    """

    tasks = BENCHMARK_TASKS
    prefetch = False
    """Chunks are read in the caller's thread: reading records warnings, and ``warnings.catch_warnings`` is
    process-wide state that another thread's use would disturb."""

    def __init__(self, name: str, root: str | os.PathLike, split: str = "test", items: Sequence | None = None,
                 mesh_gaussians: int = MESH_GAUSSIANS, seed: int = 0, up: str = "auto",
                 cache_dir: str | os.PathLike | None = None, conversion=None) -> None:  # fmt: skip
        from clip_gs.evaluation.benchmarks import MeshConversion, discover

        self.name, self.root, self.split = name, root, split
        self.all_items = discover(name, root) if items is None else list(items)
        self.items = [it for it in self.all_items if it.split in (split, None)]
        if not self.items:
            raise DatasetError(f"{root}: benchmark {name!r} has no {split!r} objects")
        self.mesh_gaussians, self.seed, self.up, self.cache_dir = mesh_gaussians, seed, up, cache_dir
        self.conversion = conversion or MeshConversion()

    @property
    def where(self) -> str:
        """The report's ``data``."""
        return str(self.root)

    @property
    def title(self) -> str:
        """How pictures name the source."""
        return f"{self.name} {self.split} split"

    @property
    def embed_dim(self) -> None:
        """No stored embeddings."""
        return None

    @property
    def report_fields(self) -> dict:
        """What the report adds: ``{"benchmark": name}``."""
        return {"benchmark": self.name}

    def __len__(self) -> int:
        return len(self.items)

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """Raises ConfigError for retrieval (no captions, no views)."""
        if set(tasks) - set(BENCHMARK_TASKS):
            raise ConfigError(f"a benchmark supports the tasks {list(BENCHMARK_TASKS)} (retrieval needs captions and "
                              f"views: prepare the objects with clip-gs prepare and use --data), got {list(tasks)}")  # fmt: skip

    def dataset_teacher(self) -> None:
        """No stored embeddings: no teacher to check the model's against."""
        return None

    def report_teacher(self, teacher=None, model_teacher_identity: str | None = None) -> str:
        """The report's ``teacher``: the one that encoded the classes, else the model's."""
        return str(teacher.identity) if teacher is not None else str(model_teacher_identity)

    def chunks(self, size: int) -> Iterator[list[EvalObject]]:
        """The objects in order, ``size`` at a time (meshes converted, or read from the cache).

        Meshes without colour (ModelNet's, by nature) are summarised in one
        :class:`~clip_gs.gaussians.mesh.NeutralGreyWarning` after the last chunk, not one per file;
        other warnings pass as they are.
        """
        from clip_gs.gaussians.mesh import NeutralGreyWarning

        grey = []
        for start in range(0, len(self.items), size):
            out = []
            for item in self.items[start : start + size]:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", NeutralGreyWarning)
                    cloud = self.load(item)
                for w in caught:
                    if issubclass(w.category, NeutralGreyWarning):
                        grey.append(item.path.name)
                    else:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                out.append(EvalObject(item.id, cloud.replace(source=item.id), item.label))
            yield out
        if grey:
            warnings.warn(f"{len(set(grey))} of {len(self.items)} meshes have no colour (no texture, vertex colours or "
                          f"material) and were given neutral grey, e.g. {grey[0]}", NeutralGreyWarning, stacklevel=2)  # fmt: skip

    def load(self, item) -> GaussianCloud:
        """One benchmark item as Gaussians (:func:`~clip_gs.evaluation.benchmarks.load_item`)."""
        from clip_gs.evaluation.benchmarks import load_item

        return load_item(item, self.mesh_gaussians, self.seed, self.cache_dir, self.up, self.conversion, self.name)

    def cloud(self, index: int) -> GaussianCloud:
        """The 3DGS of object ``index`` (for thumbnails)."""
        return self.load(self.items[index])

    def support(self, split: str) -> BenchmarkSplit:
        """The standard few-shot protocol's support: the benchmark's objects of ``split``.

        Raises:
            DatasetError: none (a test-only set such as Objaverse; the message names the episodes protocol).
        """
        support = [it for it in self.all_items if it.split == split and split != self.split]
        if not support:
            raise DatasetError(f"{self.root}: the standard few-shot protocol cannot run on benchmark {self.name!r}: it "
                               f"has no {split!r} split for the support; run --fewshot-protocol episodes, which draws "
                               "support and queries, disjoint, from the evaluated set (the paper's Objaverse-GS "
                               "protocol)")  # fmt: skip
        return BenchmarkSplit(self.name, self.root, split, support, self.mesh_gaussians, self.seed, self.up,
                              self.cache_dir, self.conversion)  # fmt: skip

    def zero_shot_classes(self, labels: Sequence[str], label_set=None, teacher=None,
                          protocol: ZeroShotProtocol | None = None, model_teacher_identity: str | None = None,
                          ) -> ZeroShotClasses:  # fmt: skip
        """The classes of ``protocol`` (default: ``clip-gs`` with the benchmark's list; its label set is the
        protocol's), encoded by ``teacher``; a protocol carrying a label-embedding file needs no teacher, its
        file is checked against ``model_teacher_identity``.

        Raises:
            ConfigError: no teacher. TeacherMismatchError: a label-embedding file of another teacher.
        """
        protocol = protocol or zero_shot_protocol("clip-gs", benchmark=self.name)
        # a label-embedding file needs no teacher loaded, only the model's teacher identity to check it against
        expected = teacher if teacher is not None or protocol.label_embeddings is None else model_teacher_identity
        if expected is None:
            raise ConfigError("zero-shot on a benchmark needs the model's teacher (its teacher.json) or --teacher")
        names = list(protocol.class_names) if protocol.class_names is not None else sorted(set(labels))
        return ZeroShotClasses(names, protocol_weights(protocol, expected, names), protocol.source, protocol.name, True)


__all__ = [
    "BENCHMARK_TASKS",
    "TASKS",
    "BenchmarkSplit",
    "EvalObject",
    "PreparedSplit",
    "ZeroShotClasses",
    "camera_up_axis",
    "open_split",
    "zero_shot_classes",
]
