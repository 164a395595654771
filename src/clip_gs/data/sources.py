"""The objects ``prepare`` works on: a folder of 3DGS files and meshes (the field's layouts
included) or the synthetic set, with their captions, labels and splits (:func:`list_sources`), and
the one reader of captions files (:func:`load_captions`)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clip_gs.data.prepare_settings import PrepareSettings
from clip_gs.data.triplets import SPLITS
from clip_gs.errors import ConfigError, DatasetError
from clip_gs.strict_json import unique_keys

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


__all__ = [
    "CAPTION_FIELDS",
    "CAPTION_KEYS",
    "MAX_CAPTIONS_PER_OBJECT",
    "MAX_CAPTIONS_ROW_BYTES",
    "OBJAVERSE_SHARD",
    "CaptionTable",
    "SourceItem",
    "check_caption_coverage",
    "folder_label",
    "is_mesh_source",
    "list_sources",
    "load_captions",
    "load_source",
    "read_captions",
    "source_up",
]
