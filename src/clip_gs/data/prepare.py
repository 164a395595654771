"""``clip-gs prepare``: 3DGS files, meshes or the synthetic set -> checksummed triplet shards.

For every input object (:func:`~clip_gs.data.sources.list_sources`): load it (3DGS as stored; meshes
through :func:`~clip_gs.gaussians.mesh.mesh_to_gaussians`, SH degree 0, or fitted to Blender renders),
render ``views`` regular orbit views of the normalised object at the teacher's image size with the
package's rasterizer (gsplat on CUDA), embed its captions and views with the frozen teacher, and
store a :class:`~clip_gs.data.triplets.TripletSample`. Then write one LitData dataset per split, the
:class:`~clip_gs.data.triplets.Manifest` and the teacher's prompt-ensemble embeddings of the label
set (``label_embeddings.bin``, :func:`~clip_gs.data.shards.read_label_embeddings`).

The run is three parts, each in a module of its own:

1. **sources** (:mod:`clip_gs.data.sources`): the objects, their captions, labels and splits, all
   checked before any work;
2. **per-object work** (:mod:`clip_gs.data.object_work`), in this process or on Ray Data
   (``workers > 1`` or a cluster ``address``: :mod:`clip_gs.data.ray_pipeline`); each result is
   filed in the work folder (:mod:`clip_gs.data.work_folder`, ``<out>/.work`` by default), so a
   rerun skips every object whose record exists. Records are a deterministic function of the
   object and the settings, so a resumed run writes what an uninterrupted one would, on any
   number of workers or machines;
3. **writing** (here): the shards are (re)written from the records, in id order, with one writer
   process: the same records give byte-identical shards; what a rerun finds written already is
   left as it is.

A bad input is written to ``<out>/failures.jsonl`` (path, error type, message, stage) and the run
goes on; the summary counts successes and failures. Every per-object exception is caught (the
teacher's too) and NaN / Inf embeddings are refused per object; only faults that recur for every
object stop the run (a full disk; the teacher failing alike on the first objects). Settings and
teacher are recorded in ``<work>/settings.json`` (read by :func:`read_fingerprint`); resuming with
different ones is refused (use a new ``--out`` or ``overwrite=True``).

Before anything is written or any object prepared, every input is checked: the output and work
folders must be absent, empty or prepare's own, and the splits and (with ``overwrite``) the work
folder to be cleared must hold only what prepare writes there (:mod:`clip_gs.data.ownership`:
prepare never deletes or overwrites what it did not write); the captions file is read and checked
whole (:func:`~clip_gs.data.sources.read_captions`); two files of one id, or two caption rows of one
object, are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from clip_gs.data.object_work import ObjectPreparer, one_thread_on_cpu
from clip_gs.data.prepare_settings import PrepareSettings
from clip_gs.data.sources import (
    CaptionTable,
    SourceItem,
    check_caption_coverage,
    list_sources,
    load_captions,
)
from clip_gs.data.triplets import MANIFEST_NAME, SPLITS, Manifest
from clip_gs.data.work_folder import (
    SETTINGS_NAME,
    WRITTEN_NAME,
    RecordWriter,
    default_work_dir,
    failure_of,
    finished_meta,
    legacy_output,
    legacy_work,
    read_fingerprint,
    read_written,
    work_records,
)
from clip_gs.errors import ConfigError, DatasetError, MissingDependencyError, PreparedWithOtherSettingsError
from clip_gs.storage import atomic_write


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

    def line(self) -> str:
        split_counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return (
            f"prepared {self.succeeded} of {self.total} objects into {self.out} ({split_counts}); "
            f"{self.reused} reused from an earlier run, {self.failed} failed"
            + (" (see failures.jsonl)" if self.failed else "")
            + (f"; {self.resampled} resampled to --max-gaussians" if self.resampled else "")
            + f"; teacher {self.teacher}"
        )


def default_teacher(source: str = "synthetic:", **kwargs):
    """The teacher ``prepare`` uses when none is named: the paper's
    :data:`~clip_gs.teachers.DEFAULT_TEACHER` (EVA02-E-14-plus) when its weights are already in
    the local cache. Otherwise, for ``synthetic:`` sources only, the offline
    :data:`~clip_gs.teachers.OFFLINE_TEACHER` (the synthetic set is what it was trained on); a
    folder of real objects never falls back to that toy teacher silently: name one. Nothing is
    downloaded to decide (the lookup passes ``local_files_only=True``); the choice is announced
    before any work and recorded in the manifest, and mixing datasets of two teachers is refused.
    ``kwargs`` (``device``, ``precision``) go to :func:`~clip_gs.teachers.load_teacher`.

    Raises:
        WeightsUnavailableError: a folder source and no cached EVA02-E-14-plus.
    """
    from clip_gs.errors import WeightsUnavailableError
    from clip_gs.teachers import DEFAULT_TEACHER, OFFLINE_TEACHER, load_teacher

    try:
        return load_teacher(DEFAULT_TEACHER, local_files_only=True, **kwargs)
    except (WeightsUnavailableError, MissingDependencyError) as exc:
        if not str(source).startswith("synthetic:"):
            raise WeightsUnavailableError(
                f"{source}: no --teacher given and the paper's {DEFAULT_TEACHER} is not in the local cache ({exc}); "
                f"name the teacher: --teacher {DEFAULT_TEACHER} once its weights are downloaded, another open_clip "
                f"model, or --teacher {OFFLINE_TEACHER} for the offline toy teacher (256-d, synthetic shapes only)"
            ) from exc
        return load_teacher(OFFLINE_TEACHER, **kwargs)


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
    address: str | None = None,
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
        captions: optional captions file (:func:`~clip_gs.data.sources.read_captions`).
        settings: :class:`~clip_gs.data.prepare_settings.PrepareSettings` (defaults when None).
        work_dir: where finished per-object records are kept between runs
            (:func:`~clip_gs.data.work_folder.default_work_dir`). For an ``s3://`` output it is scratch
            space on this machine: a run that finishes without failures removes it (what prepare wrote
            there only) unless ``keep_work``; a local output keeps it, so that a rerun of a finished
            dataset does nothing.
        overwrite: start afresh, discarding earlier records under ``work_dir`` (only what prepare
            wrote there: a work folder holding anything else is refused, nothing removed).
        progress: progress bars per stage.
        limit: stop after this many newly prepared objects without writing shards (what a kill
            would leave behind; used by tests).
        storage_options: for ``s3://`` outputs (``endpoint_url``, credentials), as
            :func:`~clip_gs.data.shards.write_split` takes them.
        min_caption_coverage: with a captions file, the share of objects it must caption
            (default: all of them; :func:`~clip_gs.data.sources.check_caption_coverage`), checked
            before any work.
        device: where the teacher, the rendering and fits run (``auto``: CUDA when available, else
            the CPU; ``cpu``, ``cuda``, ``cuda:N``); resolved once before any work, and the resolved
            device is recorded, since floats differ between devices.
        precision: the teacher's precision (``auto``, ``fp32``, ``bf16``, ``fp16`` on CUDA;
            :func:`~clip_gs.model.precision.teacher_precision` resolves ``auto``); the resolved one
            is recorded.
        workers: with more than one, the objects are prepared on Ray Data (the ``scale`` extra:
            :mod:`clip_gs.data.ray_pipeline`) by this many CPU workers; the result does not depend on it.
        address: a running Ray cluster (``HOST:PORT`` or ``auto``) to prepare the objects on; every
            node needs the source folder at the same path. The records come back to this machine.
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
            captions file that captions too few of them or that
            :func:`~clip_gs.data.sources.read_captions` refuses, two inputs of one id, a corrupt
            settings record; an ``out`` or ``work_dir`` that is not a folder, or is someone else's
            non-empty folder, or a split (or work folder, with ``overwrite``) that holds files
            prepare did not write (:mod:`clip_gs.data.ownership`, naming the folder and one such
            file). All of these before any object is prepared.
        WeightsUnavailableError: no ``teacher`` for a folder source, and no cached EVA02-E-14-plus.
        MissingDependencyError: ``workers > 1`` or ``address`` without Ray (``pip install clip-gs[scale]``).
    """
    from clip_gs.model.precision import resolve_device, teacher_precision

    settings = settings or PrepareSettings()
    device = str(resolve_device(device))  # once: the workers, the records and the fingerprint get the resolved one
    precision = teacher_precision(precision, device)
    if not 0.0 <= min_caption_coverage <= 1.0:
        raise ConfigError(f"min_caption_coverage must lie in [0, 1], got {min_caption_coverage}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    from clip_gs.data.ownership import check_claimable, check_clearable, claim_folder, clear_folder
    from clip_gs.storage import is_remote, join

    out = str(out)
    remote = is_remote(out)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    # Every input and every folder is checked before anything is written or any object prepared.
    if not remote:
        check_claimable(out, "output folder", legacy_output)
        for split in SPLITS:
            check_clearable(join(out, split), "split")
    check_claimable(work, "work folder", legacy_work)
    if overwrite:
        check_clearable(work, "work")
    table = load_captions(captions) if captions is not None else None
    items, held_out, coverage = _items(source, settings, table, captions, min_caption_coverage, holdout, embeddings)
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
        claim_folder(out, "output folder", legacy_output)
    if overwrite:
        clear_folder(work, "work")
    claim_folder(work, "work folder", legacy_work)
    recorded = work / SETTINGS_NAME
    earlier = read_fingerprint(recorded)
    if earlier is not None:
        if earlier != json.loads(json.dumps(fingerprint)):
            raise PreparedWithOtherSettingsError(
                f"{work}: an earlier prepare run used other settings or another teacher "
                f"({earlier['teacher']}); use another --out, or --overwrite to start afresh"
            )
    else:
        atomic_write(recorded, json.dumps(fingerprint, indent=2).encode())

    summary = PrepareSummary(out=out, total=len(items), teacher=str(teacher.identity))
    finished = {it.id: meta for it in items if (meta := finished_meta(work, it)) is not None}
    todo = [it for it in items if it.id not in finished]
    summary.reused = len(finished)
    if limit is not None:
        todo = todo[:limit]
    if todo:
        # a spec string travels to Ray workers and is loaded there, once per worker
        preparer = ObjectPreparer(spec if spec is not None and (workers > 1 or address) else teacher, settings,
                                  image_size, device, precision)  # fmt: skip
        _run_objects(preparer, todo, RecordWriter(work, succeeded_before=len(finished)), workers, address, progress)
    for item in todo:
        meta = finished_meta(work, item)
        if meta is not None:
            finished[item.id] = meta
        else:
            summary.failures.append(failure_of(work, item) or {
                "path": item.source, "id": item.id, "error": "DatasetError", "message": "no record was written",
                "stage": "worker"})  # fmt: skip
    summary.failed = len(summary.failures)
    summary.resampled = sum("resampled_from" in m for m in finished.values())
    failures_path = (work if remote else Path(out)) / "failures.jsonl"
    if not remote:
        Path(out).mkdir(parents=True, exist_ok=True)
    if summary.failures or failures_path.exists():
        failures_path.write_text("".join(json.dumps(f) + "\n" for f in summary.failures))
    if limit is not None and len(finished) < len(items) - summary.failed:
        summary.succeeded = len(finished)
        return summary
    _write_dataset(out, work, sorted(finished.values(), key=lambda m: m["id"]), summary, teacher, fingerprint,
                   image_size, source, settings, coverage, held_out, device, storage_options, progress)  # fmt: skip
    if remote and not keep_work and not summary.failed:  # scratch space of a finished remote run
        clear_folder(work, "work")
    return summary


def _items(source: str, settings: PrepareSettings, table: CaptionTable | None, captions, min_caption_coverage: float,
           holdout, embeddings) -> tuple[list[SourceItem], dict | None, float]:  # fmt: skip
    """``(objects, held-out record or None, caption coverage)``, every input checked before any work."""
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
    return items, held_out, coverage


def _run_objects(preparer: ObjectPreparer, todo: list[SourceItem], writer: RecordWriter, workers: int,
                 address: str | None, progress: bool) -> None:  # fmt: skip
    """The per-object work of ``todo``, each result filed by ``writer``: in this process, or on Ray Data."""
    if workers > 1 or address is not None:
        from clip_gs.data.ray_pipeline import run_pipeline

        if progress:
            where = f"the Ray cluster at {address}" if address else f"{workers} workers (a local Ray)"
            print(f"prepare: {len(todo)} objects on {where}", file=sys.stderr, flush=True)
        run_pipeline(preparer, todo, writer, workers if workers > 1 else None, address, progress)
        return
    from tqdm.auto import tqdm

    bar = tqdm(todo, desc="prepare: load, render, embed", unit="obj", disable=not progress)
    try:
        for item in bar:
            if not writer.write(preparer(item)):
                bar.set_postfix(failed=writer.failed)
    finally:
        bar.close()
        writer.sync()


def _write_dataset(out: str, work: Path, metas: list[dict], summary: PrepareSummary, teacher, fingerprint: dict,
                   image_size: int, source: str, settings: PrepareSettings, coverage: float, held_out: dict | None,
                   device: str, storage_options: dict | None, progress: bool) -> None:  # fmt: skip
    """The splits, manifest, label embeddings and keys from the records ``metas`` (sorted by id); what
    a rerun over the same records finds written is left as it is."""
    from tqdm.auto import tqdm

    import clip_gs
    from clip_gs.data.holdout import KEYS_NAME, split_keys_bytes
    from clip_gs.data.ownership import clear_folder
    from clip_gs.data.shards import write_label_embeddings, write_manifest, write_split
    from clip_gs.storage import is_remote, join, write_bytes

    remote = is_remote(out)
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
    stored = read_written(written)
    before = dict(stored)
    # A remote split that changed is refused by write_split (it never overwrites objects): write to a
    # new prefix. A deleted local split (one with objects: an empty split has no folder), manifest or keys
    # file is written again.
    if not remote:
        files = {"manifest": MANIFEST_NAME, "keys": KEYS_NAME}
        before = {k: v for k, v in before.items()
                  if (k in SPLITS and not summary.counts[k]) or Path(out, files.get(k, k)).exists()}  # fmt: skip
    changed = [split for split in SPLITS if before.get(split) != contents[split]]
    for split in tqdm(changed, desc="prepare: write shards", unit="split", disable=not progress or not changed):
        target = join(out, split)
        if not remote:
            clear_folder(target, "split")
        split_metas = [m for m in metas if m["split"] == split]
        if split_metas:
            write_split(work_records(work, split_metas), target, storage_options=storage_options)
        before[split] = contents[split]
        atomic_write(written, json.dumps(before).encode())
    if before.get("manifest") != contents["manifest"]:
        write_manifest(manifest, out, storage_options)
        if labels:  # zero-shot validation and evaluation then never run the teacher
            from clip_gs.teachers import TEMPLATES, zero_shot_weights

            with one_thread_on_cpu(device):
                weights = zero_shot_weights(teacher, labels, TEMPLATES).float().cpu()
            write_label_embeddings(out, labels, weights, str(teacher.identity), TEMPLATES, storage_options)
    if before.get("keys") != contents["keys"]:  # what each split holds, for a training export's record
        ids = {split: [m["id"] for m in metas if m["split"] == split] for split in SPLITS}
        write_bytes(join(out, KEYS_NAME), split_keys_bytes(ids), storage_options)
    if stored != contents:  # a rerun that wrote nothing leaves the work folder as it was too
        atomic_write(written, json.dumps(contents).encode())


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


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
    """What the records depend on (``<work>/settings.json``): a resumed run must agree on it. Defaults
    added after datasets existed are left out, so that those datasets resume."""
    recorded_settings = asdict(settings)
    if recorded_settings["synthetic_pose"] == "random":
        del recorded_settings["synthetic_pose"]
    if recorded_settings["max_gaussians"] is None:
        del recorded_settings["max_gaussians"]
    if recorded_settings["gaussians"] == "surface":
        for name in ("gaussians", "fit_iterations", "fit_views", "fit_size", "render_samples"):
            del recorded_settings[name]
    found = {"source": str(source), "settings": recorded_settings, "image_size": image_size,
             "teacher": str(teacher.identity),
             "captions": None if captions is None else captions.sha256}  # fmt: skip
    kind = torch.device(device).type
    if kind != "cpu" or precision != "fp32":
        found["compute"] = {"device": kind, "precision": precision}
    return found


__all__ = ["PrepareSettings", "PrepareSummary", "default_teacher", "prepare_dataset"]
"""``PrepareSettings`` (:mod:`clip_gs.data.prepare_settings`) is listed here too: what ``prepare_dataset`` takes."""
