"""``clip-gs prepare``: 3DGS files, meshes or the synthetic set -> checksummed triplet shards.

For every input object (see :func:`list_sources`): load it (3DGS as stored; meshes through
:func:`~clip_gs.gaussians.mesh.mesh_to_gaussians`, SH degree 0), render ``views`` regular orbit views
of the normalised object at the teacher's image size with the package's rasterizer (gsplat on
CUDA), embed its captions and views with the frozen teacher, and store a
:class:`~clip_gs.data.triplets.TripletSample`. Then write one LitData dataset per split, the
:class:`~clip_gs.data.triplets.Manifest` and the teacher's prompt-ensemble embeddings of the
label set (``label_embeddings.bin``, :func:`~clip_gs.data.shards.read_label_embeddings`).

Work is done in two stages so that an interrupted run can resume:

1. per object, the finished record is written atomically to ``<work>/<key>.blob`` + ``.json``
   (``<work>`` defaults to ``<out>/.work``); a rerun skips every object whose record exists, so
   no conversion, rendering or teacher work is redone. Records are a deterministic function of
   the object and the settings, so a resumed run writes what an uninterrupted one would;
2. the shards are (re)written from the records, in id order, with one writer process: the
   same records give byte-identical shards.

The first stage runs on ``workers`` processes and on several machines (``num_nodes``, then a
merge), and on a GPU (``device``); the dataset is the same byte for byte whatever the number of
processes and machines (:mod:`clip_gs.data.parallel`, :class:`ObjectPreparer`).

A bad input is written to ``<out>/failures.jsonl`` (path, error type, message, stage) and the run
goes on; the summary counts successes and failures. Every per-object exception is caught (the
teacher's too) and NaN / Inf embeddings are refused per object; only faults that recur for every
object stop the run (a full disk; the teacher failing alike on the first objects). Records are
fsynced, and one whose blob is missing is prepared again. Settings and teacher are recorded in
``<work>/settings.json`` (read by :func:`read_fingerprint`); resuming with different ones is
refused (use a new ``--out`` or ``overwrite=True``).

Before anything is written or any object prepared, every input is checked: the output and work
folders must be absent, empty or prepare's own, and the splits and (with ``overwrite``) the work
folder to be cleared must hold only what prepare writes there (:mod:`clip_gs.data.ownership`:
prepare never deletes or overwrites what it did not write); the captions file is read and checked
whole (:func:`read_captions`); two files of one id, or two caption rows of one object, are
refused (:func:`list_sources`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from clip_gs.data.triplets import MANIFEST_NAME, SPLITS, Manifest, TripletSample
from clip_gs.errors import (
    ClipGSError,
    ConfigError,
    DatasetError,
    MissingDependencyError,
    PreparedWithOtherSettingsError,
)
from clip_gs.strict_json import unique_keys

CAPTION_TEMPLATE = "a 3D model of a {}."
"""Caption of an object with a label but no caption (labels from folder names)."""

MESH_GAUSSIANS = 10_000
"""Gaussians sampled on each mesh (the paper's objects have 10K-20K; SH degree 0)."""

GAUSSIAN_KINDS = ("surface", "fitted")
"""What meshes become (:attr:`PrepareSettings.gaussians`)."""


@dataclass(frozen=True)
class PrepareSettings:
    """What ``prepare`` does with each object (recorded in the manifest).

    Attributes:
        views: orbit views rendered per object (default 8; the paper renders 36).
        elevation_deg: camera elevation of the views; azimuths are regular from 0.
        image_size: view size in pixels; None takes the teacher's ``image_size``.
        background: RGB in [0, 1] behind the object (white by default, as the offline teacher saw).
        up: world up axis of file inputs that declare none; ``"auto"`` takes
            :func:`~clip_gs.gaussians.frames.default_up_axis` per file. Every object is stored in the model
            frame (+Y up, :func:`~clip_gs.gaussians.assets.load_asset`), its cameras moved with it.
        mesh_gaussians: Gaussians sampled on meshes (:data:`MESH_GAUSSIANS`).
        synthetic_gaussians: Gaussians per synthetic object.
        synthetic_pose: pose of synthetic objects (:data:`clip_gs.data.synthetic.POSES`): ``random``
            (any rotation) or ``upright`` (standing on +Y, turned about it, as real assets stand).
        val_fraction / test_fraction: share of objects in each split, decided by a seeded hash of
            the id (stable when objects are added), unless the captions file gives a split.
        seed: seed of the split hash, the mesh sampling and the synthetic set.
        caption_template: caption of labelled objects without one (:data:`CAPTION_TEMPLATE`).
        gaussians: what a **mesh** becomes: ``"surface"`` (surface samples, fast) or ``"fitted"``
            (the paper's way: :func:`~clip_gs.data.fitted.fit_mesh` optimises at most
            ``mesh_gaussians`` Gaussians against Blender renders, and the teacher's views are
            Blender renders of the mesh, not of the Gaussians). 3DGS files and synthetic objects
            are Gaussians already and are stored as they are either way.
        fit_iterations, fit_views, fit_size: the fit's schedule, training views and view size
            (the paper: 5,000, 36 and 512).
        max_gaussians: cap on the stored Gaussians of any object (None: none); a larger cloud is
            resampled to it by :func:`cap_gaussians` (seeded by ``seed``; the record keeps the
            original count), so that a multi-million-Gaussian scene does not become a record of
            hundreds of MB.
    """

    views: int = 8
    elevation_deg: float = 20.0
    image_size: int | None = None
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    up: str = "auto"
    mesh_gaussians: int = MESH_GAUSSIANS
    synthetic_gaussians: int = 2048
    synthetic_pose: str = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    caption_template: str = CAPTION_TEMPLATE
    max_gaussians: int | None = None
    gaussians: str = "surface"
    fit_iterations: int = 1000
    fit_views: int = 36
    fit_size: int = 128

    def __post_init__(self) -> None:
        if self.gaussians not in GAUSSIAN_KINDS:
            raise ConfigError(f"gaussians must be one of {', '.join(GAUSSIAN_KINDS)}, got {self.gaussians!r}")
        if self.views < 1:
            raise ConfigError(f"views must be >= 1, got {self.views}")
        if self.max_gaussians is not None and self.max_gaussians < 1:
            raise ConfigError(f"max_gaussians must be >= 1 or None, got {self.max_gaussians}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ConfigError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if "{}" not in self.caption_template:
            raise ConfigError(f"caption_template must contain '{{}}', got {self.caption_template!r}")
        from clip_gs.data.synthetic import POSES

        if self.synthetic_pose not in POSES:
            raise ConfigError(f"synthetic_pose must be one of {', '.join(POSES)}, got {self.synthetic_pose!r}")


@dataclass(frozen=True)
class SourceItem:
    """One object to prepare: ``source`` is a file path or ``synthetic:<index>``."""

    id: str
    source: str
    captions: tuple[str, ...] = ()
    label: str | None = None
    split: str | None = None
    embeddings: str | None = None
    """A precomputed embeddings file (:mod:`clip_gs.data.precomputed`) that replaces rendering and
    the teacher's image tower."""


@dataclass
class PrepareSummary:
    """What a ``prepare`` run did."""

    out: str
    total: int = 0
    succeeded: int = 0
    reused: int = 0
    failed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    teacher: str = ""
    resampled: int = 0
    merged_parts: int = 0

    def line(self) -> str:
        split_counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        origin = (f"merged from {self.merged_parts} node parts" if self.merged_parts
                  else f"{self.reused} reused from an earlier run")  # fmt: skip
        return (
            f"prepared {self.succeeded} of {self.total} objects into {self.out} ({split_counts}); "
            f"{origin}, {self.failed} failed"
            + (" (see failures.jsonl)" if self.failed else "")
            + (f"; {self.resampled} resampled to --max-gaussians" if self.resampled else "")
            + f"; teacher {self.teacher}"
        )


# ---------------------------------------------------------------------------- sources


def split_of(item_id: str, settings: PrepareSettings) -> str:
    """The split of ``item_id``: a seeded hash mapped to [0, 1), against the split fractions."""
    digest = hashlib.sha256(f"{settings.seed}:{item_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    if u < settings.test_fraction:
        return "test"
    if u < settings.test_fraction + settings.val_fraction:
        return "val"
    return "train"


CAPTION_KEYS = ("id", "path", "uid")
"""Columns (CSV) or fields (JSONL) that name the object a caption row belongs to."""

CAPTION_FIELDS = (*CAPTION_KEYS, "caption", "captions", "label", "split")
"""Every column (CSV: all but ``captions``) or field (JSONL) a captions row may have."""

MAX_CAPTIONS_ROW_BYTES = 1 << 20
"""Longest row of a captions file (1 MiB): a CSV row (with its quoted line breaks) or a JSONL line.
Longer is refused (a caption is read by a teacher with a context of tens of words); within it,
CSV fields also keep to the ``csv`` module's field limit."""

MAX_CAPTIONS_PER_OBJECT = 256
"""Most captions one row may give an object: the teacher embeds them in one call per object."""

OBJAVERSE_SHARD = re.compile(r"^\d{3}-\d{3}$")
"""The ``objaverse`` package's storage folders (``glbs/000-023/<uid>.glb``): shards, not labels."""


@dataclass(frozen=True)
class CaptionTable:
    """A checked captions file (:func:`load_captions`).

    Attributes:
        path: the file.
        rows: ``{key: {"captions": [...], "label": str|None, "split": str|None}}`` (what
            :func:`read_captions` returns).
        lines: ``{key: line}``, the line each row starts on (for messages).
        sha256: digest of the file's bytes (recorded in the settings of a run).
    """

    path: str
    rows: dict[str, dict]
    lines: dict[str, int]
    sha256: str


class _Lines:
    """The lines of a captions file as text (each line ending kept, as ``csv`` wants them): the
    bytes hashed as they are read, UTF-8 decoded (a byte-order mark at the start dropped), and the
    bytes of the current row bounded by :data:`MAX_CAPTIONS_ROW_BYTES` before they are read."""

    def __init__(self, handle, path: Path) -> None:
        self.handle, self.path = handle, path
        self.digest = hashlib.sha256()
        self.number = 0  # lines read
        self.row_bytes = 0  # bytes of the row being read (reset by the caller at each row)

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.handle.readline(MAX_CAPTIONS_ROW_BYTES + 1 - self.row_bytes)
        if not raw:
            raise StopIteration
        self.number += 1
        self.digest.update(raw)
        self.row_bytes += len(raw)
        if self.row_bytes > MAX_CAPTIONS_ROW_BYTES:
            raise DatasetError(f"{self.path}: line {self.number}: a row longer than {MAX_CAPTIONS_ROW_BYTES:,} bytes; "
                               "a captions row holds an id and a few captions")  # fmt: skip
        try:
            return raw.decode("utf-8-sig" if self.number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.path}: line {self.number}: not UTF-8 text ({exc})") from exc


def _jsonl_rows(lines: _Lines, path: Path) -> Iterable[tuple[int, dict]]:
    for text in lines:
        lines.row_bytes = 0
        if not text.strip():
            continue
        try:
            row = json.loads(text, object_pairs_hook=unique_keys)
        except (ValueError, RecursionError) as exc:
            raise DatasetError(f"{path}: line {lines.number}: invalid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: line {lines.number}: a JSON {type(row).__name__}, not an object with an id "
                               "and captions")  # fmt: skip
        yield lines.number, row


def _csv_rows(lines: _Lines, path: Path) -> Iterable[tuple[int, dict]]:
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    first, number = True, 0
    while True:
        start, lines.row_bytes = lines.number + 1, 0
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"{path}: line {lines.number}: not valid CSV: {exc}") from exc
        if not cells:
            continue
        if first:
            first = False
            names = [cell.strip().lower() for cell in cells]
            if set(names) & set(CAPTION_FIELDS):  # a header
                unknown = [n for n in names if n not in CAPTION_FIELDS or n == "captions"]
                keys = [n for n in names if n in CAPTION_KEYS]
                if unknown or len(set(names)) != len(names) or len(keys) != 1 or "caption" not in names:
                    raise DatasetError(
                        f"{path}: line {start}: the header {','.join(names)} must name one of "
                        f"{', '.join(CAPTION_KEYS)}, and caption, optionally label and split, each once"
                        + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                    )
                header = names
                continue
        number += 1
        if header is not None:
            if len(cells) != len(header):
                raise DatasetError(f"{path}: line {start}: {len(cells)} fields, the header has {len(header)}")
            yield start, {name: cell for name, cell in zip(header, cells) if cell != "" or name in CAPTION_KEYS}
        elif len(cells) != 2:
            raise DatasetError(
                f"{path}: line {start}, row {number} has {len(cells)} fields; a CSV without a header must be Cap3D's "
                "uid,caption (else give a header with id|path|uid and caption)"
            )
        else:
            yield start, {"uid": cells[0], "caption": cells[1]}


def _caption_row(row: dict, where: str) -> tuple[str, dict]:
    """``(key, entry)`` of one row of a captions file (CSV cells or a JSONL object), checked."""
    unknown = sorted(set(row) - set(CAPTION_FIELDS))
    if unknown:
        raise DatasetError(f"{where} has unknown field(s) {', '.join(unknown)} (known: {', '.join(CAPTION_FIELDS)})")
    keys = [k for k in CAPTION_KEYS if k in row]
    if len(keys) > 1:
        raise DatasetError(f"{where} gives both {keys[0]} and {keys[1]}; a row names its object once")
    key = row[keys[0]] if keys else None
    if "caption" in row and "captions" in row:
        raise DatasetError(f"{where} gives both caption and captions; give one")
    captions = row.get("captions", row.get("caption"))
    if key is not None and not isinstance(key, str):
        raise DatasetError(f"{where}: {keys[0]} must be text, got {type(key).__name__} {key!r:.40}")
    if not (key or "").strip() or captions is None:
        raise DatasetError(f"{where} needs an id (or path, or uid) and a caption")
    if isinstance(captions, str):
        captions = [c.strip() for c in captions.split("|")]
        if not all(captions):
            raise DatasetError(f"{where}: an empty caption in {row.get('caption')!r:.80} (captions are separated by |)")
    elif not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise DatasetError(f"{where}: captions must be a non-empty list of non-empty texts, got {captions!r:.80}")
    if len(captions) > MAX_CAPTIONS_PER_OBJECT:
        raise DatasetError(f"{where}: {len(captions)} captions, more than {MAX_CAPTIONS_PER_OBJECT} per object")
    label, split = row.get("label"), row.get("split")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise DatasetError(f"{where}: label must be a non-empty text (or absent), got {type(label).__name__} "
                           f"{label!r:.40}")  # fmt: skip
    if split is not None and split not in SPLITS:
        raise DatasetError(f"{where}: split must be one of {SPLITS}, got {split!r:.40}")
    return key.strip(), {"captions": list(captions), "label": label, "split": split}


def load_captions(path: str | os.PathLike) -> CaptionTable:
    """The one reader of captions files: ``path`` parsed and checked (see :func:`read_captions`).

    Raises:
        DatasetError: see :func:`read_captions`.
    """
    from clip_gs.gaussians.files import open_regular_file

    path = Path(path)
    rows: dict[str, dict] = {}
    lines_of: dict[str, int] = {}
    with open_regular_file(path, DatasetError) as handle:
        lines = _Lines(handle, path)
        parse = _jsonl_rows if path.suffix.lower() == ".jsonl" else _csv_rows
        try:
            for count, (number, row) in enumerate(parse(lines, path), 1):
                key, entry = _caption_row(row, f"{path}: line {number}, row {count}")
                if key in rows:
                    raise DatasetError(f"{path}: lines {lines_of[key]} and {number} both caption {key!r}; give one row "
                                       "per object")  # fmt: skip
                rows[key], lines_of[key] = entry, number
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the captions file: {exc.strerror or exc}") from exc
        except MemoryError as exc:
            raise DatasetError(f"{path}: the captions file does not fit in memory ({len(rows):,} rows read)") from exc
    return CaptionTable(str(path), rows, lines_of, lines.digest.hexdigest())


def read_captions(path: str | os.PathLike) -> dict[str, dict]:
    """A captions file -> ``{key: {"captions": [...], "label": str|None, "split": str|None}}``.

    Three forms:

    - CSV with a header: exactly one of the ``id``, ``path`` or ``uid`` columns, ``caption``
      (several captions separated by ``|``), optional ``label`` and ``split``; no other columns;
    - Cap3D's headerless CSV: ``uid,caption`` rows (recognised when the first row names none of
      the columns :data:`CAPTION_FIELDS`; a caption may hold commas when quoted, as Cap3D's are);
    - JSONL: one object per line with one of ``id``, ``path`` or ``uid`` (text), ``caption`` (a
      text, ``|``-separated as in CSV) or ``captions`` (a list of texts), optional ``label`` (text
      or null) and ``split``; no other fields.

    Rules: UTF-8 text (a leading byte-order mark is allowed), a regular file; CSV is parsed
    strictly (a stray quote is an error); a row is at most :data:`MAX_CAPTIONS_ROW_BYTES` and gives
    at most :data:`MAX_CAPTIONS_PER_OBJECT` captions, none empty; each key appears in one row only.
    Empty CSV cells of ``label`` and ``split`` mean none. Keys are matched to objects by id,
    relative path or file stem (:func:`list_sources`).

    Raises:
        DatasetError: naming the file and the line: an unreadable or missing file, text that is not
            UTF-8, invalid CSV or JSON, a JSONL line that is not an object, a row without key or
            caption, a key, caption or label that is not text, an unknown split, an unknown
            column or field, a headerless row that is not ``uid,caption``, a key given twice.
    """
    return load_captions(path).rows


def folder_label(relative: Path) -> str | None:
    """The label a folder layout gives a file: the first folder below the root, except in the
    ``objaverse`` layout (a ``glbs`` folder, or ``NNN-NNN`` storage shards), whose folders are storage,
    not classes; files at the root have none."""
    folders = relative.parts[:-1]
    if not folders or folders[0] == "glbs" or any(OBJAVERSE_SHARD.match(part) for part in folders):
        return None
    return folders[0]


def list_sources(source: str, settings: PrepareSettings,
                 captions: str | os.PathLike | CaptionTable | None = None) -> list[SourceItem]:  # fmt: skip
    """The objects of ``source``: ``synthetic:N`` or a folder of 3DGS files and / or meshes.

    Folder inputs are found recursively (3DGS extensions and mesh extensions), sorted; an id is
    the path relative to the folder without its extension. Without a captions file, the label is
    the first folder below the root (:func:`folder_label`: ``root/<label>/<file>``; none for files at
    the root or in the ``objaverse`` layout) and the caption is ``caption_template`` filled with it
    (an object with neither is stored without caption: its text term is masked in training, never
    filled in). With a captions file, a row belongs to the object whose id, relative path or file
    stem (Cap3D's and Objaverse's uid) is its key; a stem that several files share matches none of
    them. Objects it does not list are prepared without captions (:func:`check_caption_coverage`
    decides whether that is allowed), and its labels and splits win.

    Raises:
        DatasetError: two files of one id (``x.ply`` and ``x.splat`` beside each other), or two rows
            of the captions file that both match one object (by id and by stem, say), naming both;
            a captions file that :func:`read_captions` refuses; a source that is not a folder.
    """
    from clip_gs.gaussians.assets import find_asset_files

    if captions is None:
        table = CaptionTable("", {}, {}, "")
    else:
        table = captions if isinstance(captions, CaptionTable) else load_captions(captions)
    if source.startswith("synthetic:"):
        from clip_gs.data.synthetic import SyntheticGaussianDataset

        try:
            count = int(source.removeprefix("synthetic:"))
        except ValueError as exc:
            raise ConfigError(f"synthetic source must be 'synthetic:N', got {source!r}") from exc
        from clip_gs.data.synthetic import SHAPE_NOUNS

        dataset = SyntheticGaussianDataset(count, num_gaussians=settings.synthetic_gaussians, seed=settings.seed)
        found = [(f"synthetic-{i:06d}", f"synthetic:{i}", SHAPE_NOUNS[dataset.label_of(i)], (), ())
                 for i in range(count)]  # fmt: skip
    else:
        root = Path(source)
        if not root.is_dir():
            raise DatasetError(f"{source}: not a folder (nor synthetic:N)")
        files = find_asset_files(root)
        stems: dict[str, int] = {}
        for path in files:
            stems[path.stem] = stems.get(path.stem, 0) + 1
        found, file_of = [], {}
        for path in files:
            relative = path.relative_to(root)
            item_id = relative.with_suffix("").as_posix()
            if item_id in file_of:
                raise DatasetError(f"{file_of[item_id]} and {path} are both object {item_id!r} (an id is the path "
                                   "without its extension); rename or remove one of them")  # fmt: skip
            file_of[item_id] = path
            label = folder_label(relative)
            captions_of = (settings.caption_template.format(label),) if label else ()
            keys = [relative.with_suffix("").as_posix(), relative.as_posix()]
            if stems[path.stem] == 1:
                keys.append(path.stem)
            found.append((keys[0], str(path), label, captions_of, keys[1:]))
    items = []
    for item_id, path, label, default_captions, other_keys in found:
        matches = [k for k in (item_id, *other_keys) if k in table.rows]
        if len(matches) > 1:
            lines = " and ".join(f"line {table.lines[k]} ({k!r})" for k in matches[:2])
            raise DatasetError(f"{table.path}: {lines} both caption object {item_id!r}; give it one row")
        entry = table.rows[matches[0]] if matches else None
        if table.rows and entry is None:
            default_captions = ()  # a captions file lists what is captioned: nothing is made up
        items.append(
            SourceItem(
                item_id,
                path,
                tuple(entry["captions"]) if entry else default_captions,
                (entry and entry["label"]) or label,
                entry["split"] if entry else None,
            )
        )
    return items


def check_caption_coverage(items: Sequence[SourceItem], captions: str | os.PathLike, minimum: float) -> float:
    """The share of ``items`` a captions file captioned; refuses a share below ``minimum``.

    Raises:
        DatasetError: below ``minimum``, naming the count and a few unmatched ids (and what a key
            must look like), so that a file keyed by something else is caught before any work.
    """
    missing = [item.id for item in items if not item.captions]
    coverage = 1.0 - len(missing) / len(items) if items else 1.0
    if coverage < minimum:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{captions}: captions for {len(items) - len(missing)} of {len(items)} objects ({coverage:.1%}, below the "
            f"required {minimum:.0%}); no caption for {shown}. Rows are matched by id (relative path without "
            "extension), relative path or file stem (uid); lower --min-caption-coverage to prepare the rest uncaptioned"
        )
    return coverage


# ---------------------------------------------------------------------------- one object


def load_source(item: SourceItem, settings: PrepareSettings):
    """``(cloud, captions, up axis)`` of one object, the cloud brought to the model frame
    (:func:`~clip_gs.gaussians.assets.load_asset` with ``settings.up``; synthetic objects stand in it
    and bring their captions: :func:`~clip_gs.data.synthetic.make_captions`)."""
    from clip_gs.gaussians.assets import load_asset
    from clip_gs.gaussians.frames import MODEL_FRAME

    if item.source.startswith("synthetic:"):
        from clip_gs.data.synthetic import SyntheticGaussianDataset

        index = int(item.source.removeprefix("synthetic:"))
        dataset = SyntheticGaussianDataset(
            index + 1, num_gaussians=settings.synthetic_gaussians, seed=settings.seed, pose=settings.synthetic_pose
        )
        obj = dataset[index]
        return obj.cloud.replace(source=item.source), item.captions or obj.captions, MODEL_FRAME
    cloud = load_asset(item.source, up=settings.up, mesh_gaussians=settings.mesh_gaussians, seed=settings.seed)
    return cloud, item.captions, MODEL_FRAME


def source_up(item: SourceItem, settings: PrepareSettings) -> str:
    """The up axis ``item`` stands in before it is brought to the model frame: synthetic objects are made
    in it; a file's is :func:`~clip_gs.gaussians.frames.resolve_up` of ``settings.up``."""
    from clip_gs.gaussians.frames import MODEL_FRAME, resolve_up

    return MODEL_FRAME if item.source.startswith("synthetic:") else resolve_up(item.source, settings.up)


def is_mesh_source(item: SourceItem) -> bool:
    """True for inputs that are meshes: a mesh extension, where a ``.ply`` counts only when its header
    declares faces (3DGS and point-cloud plys have none). Only the header is read: the object is
    loaded once, by whichever path it takes."""
    from clip_gs.gaussians.assets import MESH_EXTENSIONS
    from clip_gs.gaussians.formats.ply_header import read_ply_header

    suffix = Path(item.source).suffix.lower()
    if item.source.startswith("synthetic:") or suffix not in MESH_EXTENSIONS:
        return False
    if suffix != ".ply":
        return True
    faces = read_ply_header(Path(item.source)).element("face")
    return faces is not None and faces.count > 0


def fit_source(item: SourceItem, settings: PrepareSettings, up: str, device: str = "cpu"):
    """``(cloud, uint8 images [V, S, S, 3], cameras, fit facts)`` of a mesh with ``gaussians="fitted"``.

    One Blender pass per object, the paper's data flow: the mesh is rendered once
    (:func:`~clip_gs.data.fitted.fit_mesh`: ``fit_views`` training views and the held-out ones the fit
    is scored on), the fit is made on the training views, and the teacher embeds those same
    training views (``V = fit_views`` at ``fit_size``; the teacher resizes them to its input). The
    record stores their cameras, moved into the frame of the normalised cloud, so it says which views
    the teacher saw; training draws its K views per step from them. ``settings.views`` and
    ``elevation_deg`` (the orbit of surface-sampled objects) do not apply.
    """
    from clip_gs.data.fitted import fit_mesh
    from clip_gs.fitting import FitConfig
    from clip_gs.render.blender import composite
    from clip_gs.render.cameras import Cameras

    config = FitConfig(iterations=settings.fit_iterations, max_gaussians=settings.mesh_gaussians, seed=settings.seed)
    fitted = fit_mesh(item.source, config, views=settings.fit_views, size=settings.fit_size, device=device)
    cloud = fitted.result.cloud.to(device="cpu")
    means = cloud.means.double()
    centre = means.mean(dim=0)
    radius = float((means - centre).norm(dim=-1).max())
    # the same cameras in the normalised frame (x_n = (x - centre) / radius): rotation kept, centre moved
    views = fitted.views.cameras
    rotation = views.viewmats[:, :3, :3].double()
    position = -(rotation.transpose(1, 2) @ views.viewmats[:, :3, 3:].double())[..., 0]
    moved = torch.eye(4, dtype=torch.float64).repeat(len(rotation), 1, 1)
    moved[:, :3, :3] = rotation
    moved[:, :3, 3] = -(rotation @ ((position - centre) / radius)[..., None])[..., 0]
    cameras = Cameras(moved.to(views.viewmats.dtype), views.Ks, views.width, views.height)
    images = (composite(fitted.views.images, settings.background).clamp(0, 1) * 255).round().to(torch.uint8)
    return cloud.normalized(), images, cameras, fitted.result.summary()


def render_views(cloud, settings: PrepareSettings, image_size: int, up: str, device: str = "cpu"):
    """``(uint8 images [V, S, S, 3], cameras)``: regular orbit views of the normalised ``cloud``,
    rendered on ``device`` (the compiled CPU kernels, or gsplat on CUDA); images on the CPU."""
    from clip_gs.render import orbit_cameras, render_cloud

    cameras = orbit_cameras(
        settings.views, elevation_deg=settings.elevation_deg, width=image_size, height=image_size, up=up
    )
    normalized = cloud.normalized().to(device=device)
    background = torch.tensor(settings.background, dtype=normalized.dtype, device=normalized.device)
    rgb = render_cloud(normalized, cameras, background=background).rgb
    images = (rgb.clamp(0, 1) * 255).round().to(device="cpu", dtype=torch.uint8)
    return images, cameras


def cap_gaussians(cloud, settings: PrepareSettings, item: SourceItem):
    """``(cloud, original count or None)``: a cloud above ``settings.max_gaussians`` is resampled to it by
    :meth:`~clip_gs.GaussianCloud.resample` (a subset without replacement drawn from ``settings.seed``,
    in input order); the record keeps the original count."""
    cap = settings.max_gaussians
    if cap is None or cloud.num_gaussians <= cap:
        return cloud, None
    return cloud.resample(cap, seed=settings.seed), cloud.num_gaussians


TEACHER_STREAK = 5
"""Teacher failures in a row, before any object succeeded, that stop the run: a fault that will recur."""


def _fatal(exc: Exception, item: SourceItem) -> None:
    """Raise for a fault that recurs for every object: a full disk."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DatasetError(
            f"{item.id}: no space left on the device ({exc}); stopping: every object would fail"
        ) from exc


@contextlib.contextmanager
def _one_thread_on_cpu(device: str):
    """On a CPU ``device``, run torch with one intra-op thread inside (see :class:`ObjectPreparer`),
    restoring the caller's count after; on CUDA, nothing."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ObjectPreparer:
    """Prepares objects one at a time into the work folder: load (or fit) the object, render its
    views, embed views and captions with the teacher, and write the record (``<key>.blob`` +
    ``<key>.json``) or, for a per-object fault, ``<key>.failed.json`` (path, error type, message,
    stage). Picklable, so that LitData's ``map`` runs it in its worker processes
    (:mod:`clip_gs.data.parallel`); its call signature is the one ``map`` gives a function.

    Determinism: a record is a function of the object, the settings, the teacher, the device and
    the precision, never of how many processes or machines made it. Batch composition and the
    number of threads both change float results of a CPU teacher in the last bits, so the teacher
    embeds each object in calls of its own, and on the CPU the per-object work runs torch with a
    single intra-op thread (the rasterizer's kernels give identical results at any thread count);
    more cores are used by more workers (``workers``), which is also the faster way to use them.

    Args:
        teacher: a :class:`~clip_gs.teachers.Teacher` (pickled into each worker) or a spec string
            (loaded once per worker process, on its device).
        settings: what is done to each object.
        image_size: view size in pixels.
        work: the work folder.
        device: ``"cpu"``, ``"cuda"`` (in LitData's workers: the GPU it assigns, worker rank modulo
            the GPU count) or ``"cuda:N"``; the teacher, the rendering (gsplat) and fits run there.
        precision: the teacher's autocast precision (``fp32``, ``bf16``, ``fp16`` on CUDA).
        succeeded_before: objects already finished (the fatal-streak rule counts only from nothing).
    """

    def __init__(self, teacher, settings: PrepareSettings, image_size: int, work: Path, device: str = "cpu",
                 precision: str = "fp32", succeeded_before: int = 0) -> None:  # fmt: skip
        self.teacher, self.settings, self.image_size, self.work = teacher, settings, image_size, Path(work)
        self.device, self.precision, self.succeeded = device, precision, succeeded_before
        self.streak: list[str] = []  # the teacher's consecutive failures while nothing has succeeded
        self._unsynced: set[Path] = set()  # record folders with renames not yet fsynced
        self._unsynced_records = 0

    def _teacher(self, device: str):
        if isinstance(self.teacher, str):
            from clip_gs.teachers import load_teacher

            self.teacher = load_teacher(self.teacher, device=device, precision=self.precision)
        return self.teacher

    def __call__(self, item: SourceItem, output_dir: str | None = None, device: str | None = None) -> dict | None:
        """Prepare ``item``; returns its record's meta, or None after listing a per-object fault.
        ``output_dir`` and ``device`` are what LitData's ``map`` passes (the work folder; its GPU).

        Raises:
            DatasetError: a fault that recurs for every object (a full disk; the teacher failing
                alike on the first :data:`TEACHER_STREAK` objects).
        """
        device = device if device is not None and self.device == "cuda" else self.device
        stage = "load"
        try:
            with _one_thread_on_cpu(device):
                cloud, captions, views, cameras, fit, resampled = self._load(item, device)
                stage = "teacher"
                text_emb, image_emb = self._embed(item, captions, views, device)
                meta = self._store(item, cloud, captions, cameras, fit, resampled, text_emb, image_emb)
        except Exception as exc:  # every per-object fault is listed and the run goes on
            _fatal(exc, item)
            failure = {"path": item.source, "id": item.id, "error": type(exc).__name__, "message": str(exc),
                       "stage": stage}  # fmt: skip
            _atomic_write(record_path(self.work, item.id, ".failed.json"), json.dumps(failure).encode())
            if stage == "teacher" and not isinstance(exc, ClipGSError) and self.succeeded == 0:
                self.streak.append(type(exc).__name__)
                if len(self.streak) >= TEACHER_STREAK and len(set(self.streak)) == 1:
                    raise DatasetError(
                        f"the teacher failed on the first {len(self.streak)} objects with {type(exc).__name__}: "
                        f"{exc}; stopping: a fault that recurs for every object (see failures.jsonl for the objects)"
                    ) from exc
            return None
        self.succeeded += 1
        self.streak.clear()
        return meta

    def _load(self, item: SourceItem, device: str):
        """``(cloud, captions, views, (viewmats, Ks), fit facts, original count)``; ``views`` are uint8
        images, or the ``(text or None, image)`` embeddings of a precomputed file."""
        settings = self.settings
        if item.embeddings is not None:
            from clip_gs.data.precomputed import read_embeddings
            from clip_gs.gaussians.frames import frame_viewmats
            from clip_gs.render import orbit_cameras

            cloud, captions, up = load_source(item, settings)
            text, image, viewmats, Ks = read_embeddings(item.embeddings, self._teacher(device), captions)
            if viewmats is not None:  # cameras of the file's own frame, moved with the cloud
                viewmats = frame_viewmats(viewmats, source_up(item, settings), up)
            else:  # the file says its views were prepare's orbit
                orbit = orbit_cameras(len(image), elevation_deg=settings.elevation_deg, width=self.image_size,
                                      height=self.image_size, up=up)  # fmt: skip
                viewmats, Ks = orbit.viewmats, orbit.Ks
            cloud, resampled = cap_gaussians(cloud, settings, item)
            return cloud, captions, (text, image), (viewmats, Ks), None, resampled
        if settings.gaussians == "fitted" and is_mesh_source(item):
            from clip_gs.gaussians.frames import MODEL_FRAME, frame_viewmats, to_frame

            up = source_up(item, settings)  # rendered and fitted in the mesh's frame, then moved
            cloud, images, cameras, fit = fit_source(item, settings, up, device)
            cloud = to_frame(cloud, up, MODEL_FRAME)
            cameras = dataclasses.replace(cameras, viewmats=frame_viewmats(cameras.viewmats, up, MODEL_FRAME))
            captions = item.captions
        else:
            cloud, captions, up = load_source(item, settings)
            images, cameras = render_views(cloud, settings, self.image_size, up, device)
            fit = None
        cloud, resampled = cap_gaussians(cloud, settings, item)
        return cloud, captions, images, (cameras.viewmats, cameras.Ks), fit, resampled

    def _embed(self, item: SourceItem, captions, views, device: str):
        teacher = self._teacher(device)
        text_emb, image_emb = views if isinstance(views, tuple) else (None, None)
        # One teacher call per object: batch composition changes float results slightly, so
        # embedding object by object makes a resumed or parallel run equal an uninterrupted one.
        if text_emb is None:
            text_emb = teacher.encode_text(list(captions)) if captions else torch.zeros(0, teacher.embed_dim)
        if image_emb is None:
            image_emb = teacher.encode_images(views)
        text_emb, image_emb = text_emb.float().cpu(), image_emb.float().cpu()
        for what, emb in (("caption", text_emb), ("view", image_emb)):
            bad = ~torch.isfinite(emb).all(dim=-1)
            if bool(bad.any()):
                raise DatasetError(f"{item.id}: the teacher returned non-finite {what} embeddings "
                                   f"(rows {bad.nonzero().flatten().tolist()[:8]}); the object is not stored")  # fmt: skip
        return text_emb, image_emb

    def _store(self, item, cloud, captions, cameras, fit, resampled, text_emb, image_emb) -> dict:
        sample = TripletSample(
            id=item.id, source=item.source, cloud=cloud.to(device="cpu", dtype=torch.float32),
            captions=tuple(captions), label=item.label, text_embeddings=text_emb, image_embeddings=image_emb,
            viewmats=cameras[0].float().cpu(), Ks=cameras[1].float().cpu(), fit=fit,
        )  # fmt: skip
        record = sample.to_record()
        _atomic_write(record_path(self.work, item.id, ".blob"), record["blob"], sync=False)
        meta = {"id": item.id, "sha256": record["sha256"], "split": item.split or split_of(item.id, self.settings),
                "label": item.label, "input": _input_fingerprint(item)}  # fmt: skip
        if fit is not None:
            meta["fit"] = fit
        if resampled is not None:
            meta["resampled_from"] = resampled
        meta_path = record_path(self.work, item.id, ".json")
        _atomic_write(meta_path, json.dumps(meta).encode(), sync=False)  # written last: marks it done
        record_path(self.work, item.id, ".failed.json").unlink(missing_ok=True)
        self._unsynced.add(meta_path.parent)
        self._unsynced_records += 1
        if self._unsynced_records >= SYNC_EVERY:
            self.sync()
        return meta

    def sync(self) -> None:
        """Make the records written since the last sync durable: one fsync per record folder touched
        (:data:`SYNC_EVERY`), not one per file."""
        for folder in sorted(self._unsynced):
            sync_folder(folder)
        self._unsynced.clear()
        self._unsynced_records = 0


FAILURE_FIELDS = ("path", "id", "error", "message", "stage")
"""What a failure record (``<key>.failed.json``, a line of ``failures.jsonl``) holds, all texts."""


def _failure_of(work: Path, item: SourceItem) -> dict | None:
    """The failure record of ``item`` in ``work``; None when there is none or it is not one of
    ``item``'s (then the run reports that no record was written)."""
    path = record_path(work, item.id, ".failed.json")
    try:
        failure = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if (not isinstance(failure, dict) or set(failure) != set(FAILURE_FIELDS)
            or not all(isinstance(v, str) for v in failure.values()) or failure["id"] != item.id):  # fmt: skip
        return None
    return failure


# ---------------------------------------------------------------------------- the run


def _input_fingerprint(item: SourceItem) -> dict:
    """What a finished record was made from: the source, its captions, label and split, and for
    files their size and modification time (an edited file is prepared again)."""
    found = {"source": item.source, "captions": list(item.captions), "label": item.label, "split": item.split}
    if not item.source.startswith("synthetic:"):
        stat = Path(item.source).stat()
        found |= {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if item.embeddings is not None:
        stat = Path(item.embeddings).stat()
        found["embeddings"] = {"path": item.embeddings, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found


def _finished_meta(work: Path, item: SourceItem) -> dict | None:
    """The meta of the finished record ``work`` holds of exactly this input, else None."""
    meta_path = record_path(work, item.id, ".json")
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not record_path(work, item.id, ".blob").is_file():
        return None  # a record whose blob is gone is redone
    if not isinstance(meta, dict) or meta.get("id") != item.id or meta.get("label") != item.label:
        return None
    if meta.get("split") not in SPLITS or not re.fullmatch(r"[0-9a-f]{64}", str(meta.get("sha256"))):
        return None
    return meta if meta.get("input") == _input_fingerprint(item) else None


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _key(item_id: str) -> str:
    return hashlib.sha256(item_id.encode()).hexdigest()[:24]


SYNC_EVERY = 64
"""Records written between folder fsyncs (:meth:`ObjectPreparer.sync`): a crash loses at most the records
since the last sync (their files may be gone), and those are prepared again."""


def record_path(work: Path, item_id: str, suffix: str) -> Path:
    """Where a record file of ``item_id`` lives: ``<work>/<2 hex>/<24 hex key><suffix>``. The work folder is
    fanned out over 256 sub-folders by key prefix (about 1,900 files each at 240K objects), created by the
    first write into them (:func:`_atomic_write`)."""
    key = _key(item_id)
    return work / key[:2] / f"{key}{suffix}"


def sync_folder(folder: Path) -> None:
    """fsync a folder (the renames into it made durable)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _atomic_write(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the whole new one: a temporary
    file, fsynced, renamed over ``path``, then the folder fsynced (the rename itself made durable).
    ``sync=False`` leaves the last step to the caller (records: :meth:`ObjectPreparer.sync`, batched;
    a meta whose blob is missing is redone)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes sharing the work folder never collide
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync:
        sync_folder(path.parent)


def _work_records(work: Path, metas: Sequence[dict]) -> Iterable[dict]:
    """The stored records of ``metas`` (in this order), read from the work folder one by one."""
    for meta in metas:
        yield {"id": meta["id"], "sha256": meta["sha256"], "blob": record_path(work, meta["id"], ".blob").read_bytes()}


def default_work_dir(out: str) -> Path:
    """Where per-object records are kept: ``<out>/.work`` for a local ``out``; for an ``s3://``
    output, ``<tmp>/clip-gs-prepare/<digest of out>`` on this machine."""
    from clip_gs.data.shards import is_remote

    if not is_remote(out):
        return Path(out) / ".work"
    import tempfile

    return Path(tempfile.gettempdir()) / "clip-gs-prepare" / hashlib.sha256(out.encode()).hexdigest()[:16]


def default_teacher(source: str = "synthetic:", **kwargs):
    """The teacher ``prepare`` uses when none is named: the paper's
    :data:`~clip_gs.teachers.DEFAULT_TEACHER` (EVA02-E-14-plus) when its weights are already in
    the local cache. Otherwise, for ``synthetic:`` sources only, the offline
    :data:`~clip_gs.teachers.OFFLINE_TEACHER` (the synthetic set is what it was trained on); a
    folder of real objects never falls back to that toy teacher silently: name one. Nothing is
    downloaded to decide (the lookup runs with ``CLIP_GS_OFFLINE=1``); the choice is announced
    before any work and recorded in the manifest, and mixing datasets of two teachers is refused.
    ``kwargs`` (``device``, ``precision``) go to :func:`~clip_gs.teachers.load_teacher`.

    Raises:
        WeightsUnavailableError: a folder source and no cached EVA02-E-14-plus.
    """
    from clip_gs.errors import WeightsUnavailableError
    from clip_gs.teachers import DEFAULT_TEACHER, OFFLINE_TEACHER, load_teacher

    previous = os.environ.get("CLIP_GS_OFFLINE")
    os.environ["CLIP_GS_OFFLINE"] = "1"
    try:
        return load_teacher(DEFAULT_TEACHER, **kwargs)
    except (WeightsUnavailableError, MissingDependencyError) as exc:
        if not str(source).startswith("synthetic:"):
            raise WeightsUnavailableError(
                f"{source}: no --teacher given and the paper's {DEFAULT_TEACHER} is not in the local cache ({exc}); "
                f"name the teacher: --teacher {DEFAULT_TEACHER} once its weights are downloaded, another open_clip "
                f"model, or --teacher {OFFLINE_TEACHER} for the offline toy teacher (256-d, synthetic shapes only)"
            ) from exc
        return load_teacher(OFFLINE_TEACHER, **kwargs)
    finally:
        if previous is None:
            os.environ.pop("CLIP_GS_OFFLINE", None)
        else:
            os.environ["CLIP_GS_OFFLINE"] = previous


def prepare_dataset(
    source: str,
    out: str | os.PathLike,
    teacher=None,
    captions: str | os.PathLike | None = None,
    settings: PrepareSettings | None = None,
    work_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    limit: int | None = None,
    storage_options: dict | None = None,
    min_caption_coverage: float = 1.0,
    device: str = "cpu",
    precision: str = "fp32",
    workers: int = 1,
    num_nodes: int = 1,
    node_rank: int = 0,
    merge: bool = False,
    embeddings: str | os.PathLike | None = None,
    holdout: str | os.PathLike | None = None,
    keep_work: bool = False,
) -> PrepareSummary:
    """Prepare ``source`` into triplet shards under ``out`` (see the module docstring).

    Args:
        source: ``synthetic:N`` or a folder of 3DGS files and / or meshes.
        out: output folder or ``s3://`` prefix (``out/train``, ``out/val``, ``out/test``,
            ``out/manifest.json``). A remote split that changed is refused (write to a new prefix).
        teacher: a :class:`~clip_gs.teachers.Teacher` or a spec string for
            :func:`~clip_gs.teachers.load_teacher`; None: :func:`default_teacher`.
        captions: optional captions file (:func:`read_captions`).
        settings: :class:`PrepareSettings` (defaults when None).
        work_dir: where finished per-object records are kept between runs (:func:`default_work_dir`). For an
            ``s3://`` output it is scratch space on this machine: a run that finishes without failures
            removes it (what prepare wrote there only) unless ``keep_work``; a local output keeps it, so
            that a rerun of a finished dataset does nothing.
        overwrite: start afresh, discarding earlier records under ``work_dir`` (only what prepare
            wrote there: a work folder holding anything else is refused, nothing removed).
        progress: progress bars per stage.
        limit: stop after this many newly prepared objects without writing shards (what a kill
            would leave behind; used by tests).
        storage_options: for ``s3://`` outputs (``endpoint_url``, credentials), as
            :func:`~clip_gs.data.shards.write_split` takes them.
        min_caption_coverage: with a captions file, the share of objects it must caption
            (default: all of them; :func:`check_caption_coverage`), checked before any work.
        device: where the teacher, the rendering and fits run (``auto``: CUDA when available, else
            the CPU; ``cpu``, ``cuda``, ``cuda:N``); resolved once before any work, and the resolved
            device is recorded, since floats differ between devices.
        precision: the teacher's precision (``auto``, ``fp32``, ``bf16``, ``fp16`` on CUDA;
            :func:`~clip_gs.model.precision.teacher_precision` resolves ``auto``); the resolved one
            is recorded.
        workers: processes on this machine (LitData's ``map``, :mod:`clip_gs.data.parallel`);
            the result does not depend on it.
        num_nodes, node_rank: with ``num_nodes > 1``, prepare only this node's hash share and write
            it as a part under ``<out>/parts/`` (no dataset yet); see :mod:`clip_gs.data.parallel`.
        merge: with ``num_nodes > 1``, merge the finished parts of all nodes into the dataset
            (byte for byte the single-process one), then remove the parts.
        embeddings: a folder of precomputed embeddings, one file per object
            (:mod:`clip_gs.data.precomputed`): no rendering and no image tower; every object must
            have one (checked before any work).
        holdout: a held-out file (:func:`~clip_gs.data.holdout.read_holdout`: a uid list, the
            Objaverse-LVIS annotation or an OpenShape split file): the objects it lists go to the
            ``heldout`` split, never to train or val, whatever a captions file says; the manifest
            records the file (name, SHA-256, count).

    Returns:
        :class:`PrepareSummary`.

    Raises:
        DatasetError: a resumed run with other settings or another teacher, no objects at all, a
            captions file that captions too few of them or that :func:`read_captions` refuses, two
            inputs of one id, missing or malformed parts at a merge, a corrupt settings record; an
            ``out`` or ``work_dir`` that is not a folder, or is someone else's non-empty folder, or a
            split (or work folder, with ``overwrite``) that holds files prepare did not write
            (:mod:`clip_gs.data.ownership`, naming the folder and one such file). All of these
            before any object is prepared.
        WeightsUnavailableError: no ``teacher`` for a folder source, and no cached EVA02-E-14-plus.
    """
    from tqdm.auto import tqdm

    import clip_gs
    from clip_gs.data import parallel
    from clip_gs.model.precision import resolve_device, teacher_precision

    settings = settings or PrepareSettings()
    device = str(resolve_device(device))  # once: the workers, the records and the fingerprint get the resolved one
    precision = teacher_precision(precision, device)
    if not 0.0 <= min_caption_coverage <= 1.0:
        raise ConfigError(f"min_caption_coverage must lie in [0, 1], got {min_caption_coverage}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    parallel.check_nodes(num_nodes, node_rank)
    if merge and num_nodes == 1:
        raise ConfigError("merge joins the parts of several nodes: give num_nodes > 1")
    from clip_gs.data.ownership import check_claimable, check_clearable, claim_folder, clear_folder
    from clip_gs.data.shards import is_remote, join, write_label_embeddings, write_manifest, write_split

    out = str(out)
    remote = is_remote(out)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    # Every input and every folder is checked before anything is written or any object prepared.
    if not remote:
        check_claimable(out, "output folder", _legacy_output)
        for split in SPLITS:
            check_clearable(join(out, split), "split")
        if num_nodes > 1:
            check_clearable(join(out, parallel.PARTS), "parts")
    check_claimable(work, "work folder", _legacy_work)
    if overwrite:
        check_clearable(work, "work")
    table = load_captions(captions) if captions is not None else None
    items = list_sources(source, settings, table)
    if not items:
        raise DatasetError(f"{source}: no 3DGS files or meshes found")
    held_out = None
    if holdout is not None:  # before anything else decides a split: a held-out object never trains
        from clip_gs.data.holdout import HELDOUT_SPLIT, holdout_record, object_key, read_holdout

        uids = read_holdout(holdout)
        held_out = holdout_record(holdout, uids)
        items = [replace(item, split=HELDOUT_SPLIT) if object_key(item.id) in uids else item for item in items]
    if captions is not None:
        coverage = check_caption_coverage(items, captions, min_caption_coverage)
    else:
        coverage = sum(bool(item.captions) for item in items) / len(items)
    if embeddings is not None:
        from clip_gs.data.precomputed import attach_embeddings

        stems: dict[str, int] = {}
        for item in items:
            stems[Path(item.source).stem] = stems.get(Path(item.source).stem, 0) + 1
        items = attach_embeddings(items, embeddings, lambda it: [it.id] + (
            [Path(it.source).stem] if stems[Path(it.source).stem] == 1 else []))  # fmt: skip
    spec = teacher if isinstance(teacher, str) else None
    named = teacher is not None
    teacher = _load_teacher(teacher, source, device, precision)
    if progress:  # before any work: days of embeddings should not find out at the end which teacher made them
        why = "named" if named else "the default: the paper's, cached" if "EVA02" in str(teacher.identity) else (
            "the default for synthetic sources")  # fmt: skip
        print(f"prepare: teacher {teacher.identity} ({why}; {teacher.embed_dim}-d) on {device} in {precision}",
              file=sys.stderr, flush=True)  # fmt: skip
    from clip_gs.teachers.base import check_view_background

    check_view_background(teacher, settings.background)
    image_size = settings.image_size or int(teacher.image_size)
    fingerprint = _fingerprint(source, settings, image_size, teacher, table, device, precision)
    if embeddings is not None:
        fingerprint["embeddings"] = str(embeddings)
    if held_out is not None:  # records keep their split: another held-out list is another dataset
        fingerprint["holdout"] = held_out["sha256"]

    if not remote:
        claim_folder(out, "output folder", _legacy_output)
    if overwrite:
        clear_folder(work, "work")
    claim_folder(work, "work folder", _legacy_work)
    recorded = work / SETTINGS_NAME
    earlier = read_fingerprint(recorded)
    if earlier is not None:
        if earlier != json.loads(json.dumps(fingerprint)):
            raise PreparedWithOtherSettingsError(
                f"{work}: an earlier prepare run used other settings or another teacher "
                f"({earlier['teacher']}); use another --out, or --overwrite to start afresh"
            )
    else:
        _atomic_write(recorded, json.dumps(fingerprint, indent=2).encode())

    summary = PrepareSummary(out=out, total=len(items), teacher=str(teacher.identity))
    failures_path = (work if remote else Path(out)) / "failures.jsonl"
    if merge:
        parts = parallel.read_parts(out, num_nodes, fingerprint, storage_options)
        finished = {m["id"]: m for part in parts for m in part["metas"]}
        summary.failures = sorted((f for part in parts for f in part["failures"]), key=lambda f: f["id"])
        accounted = set(finished) | {f["id"] for f in summary.failures}
        if accounted != {it.id for it in items}:
            unknown = sorted(accounted ^ {it.id for it in items})
            raise DatasetError(f"{join(out, parallel.PARTS)}: the parts do not hold the objects of {source} "
                               f"(e.g. {', '.join(unknown[:5])}); were they prepared from another source?")  # fmt: skip
        records_of = {split: parallel.merged_records(parts, split, storage_options) for split in SPLITS}
        summary.merged_parts = len(parts)
    else:
        if num_nodes > 1:
            items = parallel.node_share(items, num_nodes, node_rank)
            summary.total = len(items)
        finished = {it.id: meta for it in items if (meta := _finished_meta(work, it)) is not None}
        todo = [it for it in items if it.id not in finished]
        summary.reused = len(finished)
        if limit is not None:
            todo = todo[:limit]
        preparer = ObjectPreparer(spec if workers > 1 and spec is not None else teacher, settings, image_size, work,
                                  device, precision, succeeded_before=len(finished))  # fmt: skip
        if workers > 1 and todo:
            if progress:
                print(f"prepare: {len(todo)} objects on {workers} workers", file=sys.stderr, flush=True)
            parallel.run_workers(preparer, todo, workers)
        else:
            bar, failed_now = tqdm(todo, desc="prepare: load, render, embed", unit="obj", disable=not progress), 0
            for item in bar:
                if preparer(item) is None:
                    failed_now += 1
                    bar.set_postfix(failed=failed_now)
            bar.close()
            preparer.sync()
        for item in todo:
            meta = _finished_meta(work, item)
            if meta is not None:
                finished[item.id] = meta
            else:
                summary.failures.append(_failure_of(work, item) or {
                    "path": item.source, "id": item.id, "error": "DatasetError", "message": "no record was written",
                    "stage": "worker"})  # fmt: skip
        records_of = {split: None for split in SPLITS}
    summary.failed = len(summary.failures)
    summary.resampled = sum("resampled_from" in m for m in finished.values())
    if num_nodes > 1 and not merge:
        metas = list(finished.values())
        summary.succeeded = len(metas)
        summary.counts = {split: sum(m["split"] == split for m in metas) for split in SPLITS}
        summary.out = parallel.write_part(out, node_rank, num_nodes, fingerprint, metas, summary.failures,
                                          lambda ms: _work_records(work, ms), storage_options)  # fmt: skip
        return summary
    if not remote:
        Path(out).mkdir(parents=True, exist_ok=True)
    if summary.failures or failures_path.exists():
        failures_path.write_text("".join(json.dumps(f) + "\n" for f in summary.failures))
    if limit is not None and not merge and len(finished) < len(items) - summary.failed:
        summary.succeeded = len(finished)
        return summary

    metas = sorted(finished.values(), key=lambda m: m["id"])
    summary.succeeded = len(metas)
    summary.counts = {split: sum(m["split"] == split for m in metas) for split in SPLITS}
    labels = sorted({m["label"] for m in metas if m["label"]})
    manifest = Manifest(
        teacher=str(teacher.identity), embed_dim=int(teacher.embed_dim), counts=summary.counts, labels=labels,
        settings=fingerprint["settings"] | {"image_size": image_size, "source": source, "gaussians": settings.gaussians},
        failures=summary.failed, caption_coverage=round(coverage, 6),
        package_version=clip_gs.__version__, holdout=held_out,
    )  # fmt: skip
    contents = {split: _digest([m for m in metas if m["split"] == split]) for split in SPLITS}
    contents["manifest"] = _digest(asdict(manifest))
    contents["keys"] = _digest([(m["id"], m["split"]) for m in metas])
    written = work / WRITTEN_NAME
    before = _read_written(written)
    # What a rerun over the same records finds written is left as it is: no shard, manifest or
    # teacher work is redone. A remote split that changed is refused by write_split (it never
    # overwrites objects): write to a new prefix.
    if not remote:  # a deleted local split or manifest is written again
        from clip_gs.data.holdout import KEYS_NAME

        files = {"manifest": MANIFEST_NAME, "keys": KEYS_NAME}
        before = {k: v for k, v in before.items() if Path(out, files.get(k, k)).exists()}
    changed = [split for split in SPLITS if before.get(split) != contents[split]]
    for split in tqdm(changed, desc="prepare: write shards", unit="split", disable=not progress or not changed):
        target = join(out, split)
        if not remote:
            clear_folder(target, "split")
        split_metas = [m for m in metas if m["split"] == split]
        if split_metas:
            records = records_of[split] if merge else _work_records(work, split_metas)
            write_split(records, target, storage_options=storage_options)
        before[split] = contents[split]
        _atomic_write(written, json.dumps(before).encode())
    if before.get("manifest") != contents["manifest"]:
        write_manifest(manifest, out, storage_options)
        if labels:  # zero-shot validation and evaluation then never run the teacher
            from clip_gs.teachers import TEMPLATES, zero_shot_weights

            with _one_thread_on_cpu(device):
                weights = zero_shot_weights(teacher, labels, TEMPLATES).float().cpu()
            write_label_embeddings(out, labels, weights, str(teacher.identity), TEMPLATES, storage_options)
    if before.get("keys") != contents["keys"]:  # what each split holds, for a training export's record
        from clip_gs.data.holdout import KEYS_NAME, split_keys_bytes
        from clip_gs.data.shards import write_bytes

        ids = {split: [m["id"] for m in metas if m["split"] == split] for split in SPLITS}
        write_bytes(join(out, KEYS_NAME), split_keys_bytes(ids), storage_options)
    _atomic_write(written, json.dumps(contents).encode())
    if merge:
        parallel.remove_parts(out, storage_options)
    if remote and not keep_work and not summary.failed:  # scratch space of a finished remote run
        clear_folder(work, "work")
    return summary


def _load_teacher(teacher, source: str, device: str, precision: str):
    """The run's teacher on ``device`` in ``precision`` (see :func:`prepare_dataset`)."""
    if teacher is None:
        teacher = default_teacher(str(source), device=device, precision=precision)
    elif isinstance(teacher, str):
        from clip_gs.teachers import load_teacher

        teacher = load_teacher(teacher, device=device, precision=precision)
    elif hasattr(teacher, "to") and hasattr(teacher, "precision"):  # a Teacher built by the caller
        if teacher.precision != precision:
            raise ConfigError(
                f"the teacher given runs in {teacher.precision}, but precision {precision!r} was asked for"
            )
        teacher.to(device)
    return teacher


def _fingerprint(source, settings: PrepareSettings, image_size: int, teacher, captions: CaptionTable | None,
                 device: str, precision: str) -> dict:  # fmt: skip
    """What the records depend on (``<work>/settings.json``, the parts): a resumed run, a node's part
    and a merge must agree on it. Defaults added after datasets existed are left out, so that those
    datasets resume."""
    recorded_settings = asdict(settings)
    if recorded_settings["synthetic_pose"] == "random":
        del recorded_settings["synthetic_pose"]
    if recorded_settings["max_gaussians"] is None:
        del recorded_settings["max_gaussians"]
    if recorded_settings["gaussians"] == "surface":
        for name in ("gaussians", "fit_iterations", "fit_views", "fit_size"):
            del recorded_settings[name]
    found = {"source": str(source), "settings": recorded_settings, "image_size": image_size,
             "teacher": str(teacher.identity),
             "captions": None if captions is None else captions.sha256}  # fmt: skip
    kind = torch.device(device).type
    if kind != "cpu" or precision != "fp32":
        found["compute"] = {"device": kind, "precision": precision}
    return found


SETTINGS_NAME = "settings.json"
"""The settings record of a work folder (:func:`read_fingerprint`)."""

WRITTEN_NAME = "written.json"
"""What a work folder's run last wrote: a digest per split and of the manifest."""

MAX_SETTINGS_BYTES = 1 << 20
"""Largest settings record (or ``written.json``) read (1 MiB; prepare writes a few hundred bytes)."""

_FINGERPRINT_FIELDS = {"source": (str,), "settings": (dict,), "image_size": (int,), "teacher": (str,),
                       "captions": (str, type(None)), "compute": (dict,), "embeddings": (str,),
                       "holdout": (str,)}  # fmt: skip
_FINGERPRINT_OPTIONAL = ("compute", "embeddings", "holdout")


def check_fingerprint(value, location: str) -> dict:
    """``value`` if it is a settings record as :func:`_fingerprint` makes it (``<work>/settings.json``,
    the ``fingerprint`` of a node's part), else a typed refusal.

    Rules: a JSON object with ``source``, ``teacher`` (texts), ``settings`` (an object whose names
    are :class:`PrepareSettings` fields), ``image_size`` (an integer >= 1), ``captions`` (null or a
    SHA-256 in hex), optionally ``compute`` (``device`` and ``precision`` texts), ``embeddings``
    (text) and ``holdout`` (the held-out file's SHA-256); nothing else.

    Raises:
        DatasetError: naming ``location`` and the field.
    """

    def refuse(problem: str):
        raise DatasetError(f"{location}: not a clip-gs prepare settings record: {problem}; move the work folder "
                           "away (or use --overwrite to start afresh)")  # fmt: skip

    if not isinstance(value, dict):
        refuse(f"a JSON {type(value).__name__}, not an object")
    missing = [k for k in _FINGERPRINT_FIELDS if k not in value and k not in _FINGERPRINT_OPTIONAL]
    unknown = sorted(set(value) - set(_FINGERPRINT_FIELDS))
    if missing or unknown:
        refuse(f"missing {', '.join(missing) or 'nothing'}, unknown {', '.join(unknown) or 'nothing'}")
    for name, kinds in _FINGERPRINT_FIELDS.items():
        if name in value and (not isinstance(value[name], kinds) or isinstance(value[name], bool)):
            refuse(f"{name} is a {type(value[name]).__name__}")
    names = {f.name for f in fields(PrepareSettings)}
    if not set(value["settings"]) <= names:
        refuse(f"unknown settings {', '.join(sorted(set(value['settings']) - names))}")
    if value["image_size"] < 1:
        refuse(f"image_size {value['image_size']}")
    for name in ("captions", "holdout"):
        if value.get(name) is not None and not re.fullmatch(r"[0-9a-f]{64}", value[name]):
            refuse(f"{name} is not a SHA-256")
    compute = value.get("compute", {"device": "", "precision": ""})
    if set(compute) != {"device", "precision"} or not all(isinstance(v, str) for v in compute.values()):
        refuse("compute must be an object of device and precision")
    return value


def _read_json(location: Path, what: str):
    """The JSON value of a small file prepare wrote (None when absent), at most :data:`MAX_SETTINGS_BYTES`."""
    from clip_gs.data.shards import read_bytes

    data = read_bytes(str(location), max_bytes=MAX_SETTINGS_BYTES)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DatasetError(f"{location}: a corrupt {what} ({exc}); move the work folder away (or use --overwrite "
                           "to start afresh)") from exc  # fmt: skip


def read_fingerprint(location: str | os.PathLike) -> dict | None:
    """The one reader of settings records (``<work>/settings.json``): the checked record
    (:func:`check_fingerprint`), or None when there is none.

    Raises:
        DatasetError: not a regular file, larger than :data:`MAX_SETTINGS_BYTES`, not JSON, or not a
            settings record (naming the file and the problem).
    """
    value = _read_json(Path(location), "settings record")
    return None if value is None else check_fingerprint(value, str(location))


def _read_written(location: Path) -> dict[str, str]:
    """``<work>/written.json``: ``{split, "manifest" or "keys": digest}`` (empty when absent)."""
    value = _read_json(location, "record of written splits")
    if value is None:
        return {}
    names = (*SPLITS, "manifest", "keys")
    if not isinstance(value, dict) or not all(k in names and isinstance(v, str) for k, v in value.items()):
        raise DatasetError(f"{location}: not a record of written splits (an object from split names and 'manifest' "
                           "to digests); move the work folder away (or use --overwrite)")  # fmt: skip
    return value


def _legacy_work(folder: Path) -> bool:
    """A work folder written before markers existed: it holds a valid settings record."""
    try:
        return read_fingerprint(folder / SETTINGS_NAME) is not None
    except DatasetError:
        return False


def _legacy_output(folder: Path) -> bool:
    """An output folder written before markers existed: it holds a clip-gs manifest, or a default
    work folder (:func:`_legacy_work`)."""
    try:
        Manifest.read(folder)
        return True
    except DatasetError:
        return (folder / ".work").is_dir() and _legacy_work(folder / ".work")


__all__ = [
    "CAPTION_FIELDS",
    "CAPTION_KEYS",
    "CAPTION_TEMPLATE",
    "FAILURE_FIELDS",
    "GAUSSIAN_KINDS",
    "MAX_CAPTIONS_PER_OBJECT",
    "MAX_CAPTIONS_ROW_BYTES",
    "MAX_SETTINGS_BYTES",
    "MESH_GAUSSIANS",
    "OBJAVERSE_SHARD",
    "SETTINGS_NAME",
    "WRITTEN_NAME",
    "CaptionTable",
    "ObjectPreparer",
    "PrepareSettings",
    "PrepareSummary",
    "SourceItem",
    "cap_gaussians",
    "check_caption_coverage",
    "check_fingerprint",
    "default_teacher",
    "default_work_dir",
    "fit_source",
    "folder_label",
    "is_mesh_source",
    "list_sources",
    "load_captions",
    "prepare_dataset",
    "read_captions",
    "read_fingerprint",
    "render_views",
    "split_of",
]
