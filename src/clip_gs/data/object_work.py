"""The per-object work of ``prepare``: one object in, one record (or one failure) out.

An object goes through two stages, which the Ray pipeline (:mod:`clip_gs.data.ray_pipeline`) runs
on different resources and a single process runs one after the other:

1. :meth:`ObjectPreparer.load` (CPU): read the object, or for a mesh with ``gaussians="fitted"``
   render it with Blender (:func:`render_fit_views`);
2. :meth:`ObjectPreparer.finish` (the run's device: a GPU where there is one): fit the Gaussians to
   those renders, or render orbit views of the loaded cloud; embed captions and views with the
   teacher (loaded once per preparer); serialise the :class:`~clip_gs.data.triplets.TripletSample`.

Nothing here writes to disk: the result, an :class:`ObjectResult`, goes to the one writer of the
work folder (:class:`~clip_gs.data.work_folder.RecordWriter`), wherever the work was done.

Determinism: a record is a function of the object, the settings, the teacher, the device and the
precision, never of which process, worker or machine made it. Batch composition and the number of
threads both change float results of a CPU teacher in the last bits, so the teacher embeds each
object in calls of its own, and on the CPU each stage runs torch (and Blender) with a single thread
(:func:`one_thread_on_cpu`); more cores are used by more workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from clip_gs.data.prepare_settings import PrepareSettings, split_of
from clip_gs.data.sources import SourceItem, is_mesh_source, load_source, source_up
from clip_gs.data.triplets import TripletSample
from clip_gs.errors import DatasetError

FAILURE_FIELDS = ("path", "id", "error", "message", "stage")
"""What a failure record (``<key>.failed.json``, a line of ``failures.jsonl``) holds, all texts."""


@dataclass(frozen=True)
class ObjectResult:
    """What the work on one object produced: a record (``meta`` + ``blob``) or a ``failure``
    (:data:`FAILURE_FIELDS`), never both."""

    id: str
    meta: dict | None = None
    blob: bytes | None = None
    failure: dict | None = None

    @classmethod
    def failed(cls, item: SourceItem, exc: BaseException, stage: str) -> ObjectResult:
        return cls(item.id, failure={"path": item.source, "id": item.id, "error": type(exc).__name__,
                                     "message": str(exc), "stage": stage})  # fmt: skip


@contextlib.contextmanager
def one_thread_on_cpu(device: str):
    """On a CPU ``device``, run torch with one intra-op thread inside, restoring the caller's count
    after; on CUDA, nothing. Blender takes its thread count from torch's."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def input_fingerprint(item: SourceItem) -> dict:
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


def render_fit_views(item: SourceItem, settings: PrepareSettings, device: str = "cpu"):
    """The Blender pass of a mesh with ``gaussians="fitted"``: ``(training views, held-out views,
    world [4, 4])`` in the mesh's unit frame (:func:`~clip_gs.data.fitted.render_mesh_views`:
    ``fit_views`` training views at ``fit_size`` and the held-out views the fit is scored on)."""
    from clip_gs.data.fitted import render_mesh_views

    return render_mesh_views(item.source, views=settings.fit_views, size=settings.fit_size,
                             samples=settings.render_samples, seed=settings.seed, device=device)  # fmt: skip


def fit_rendered(item: SourceItem, settings: PrepareSettings, rendered, device: str = "cpu"):
    """``(cloud, uint8 images [V, S, S, 3], cameras, fit facts)``: Gaussians fitted to the renders of
    :func:`render_fit_views`, the paper's data flow with one Blender pass per object. The teacher
    embeds those same training views (``V = fit_views`` at ``fit_size``; the teacher resizes them to
    its input). The record stores their cameras, moved into the frame of the normalised cloud, so it
    says which views the teacher saw; training draws its K views per step from them.
    ``settings.views`` and ``elevation_deg`` (the orbit of surface-sampled objects) do not apply."""
    from clip_gs.data.fitted import fit_mesh_views
    from clip_gs.fitting import FitConfig
    from clip_gs.render.blender import composite
    from clip_gs.render.cameras import Cameras

    train, test, world = rendered
    config = FitConfig(iterations=settings.fit_iterations, max_gaussians=settings.mesh_gaussians, seed=settings.seed)
    result = fit_mesh_views(item.source, train, test, world, config, device=device)
    cloud = result.cloud.to(device="cpu")
    means = cloud.means.double()
    centre = means.mean(dim=0)
    radius = float((means - centre).norm(dim=-1).max())
    # the same cameras in the normalised frame (x_n = (x - centre) / radius): rotation kept, centre moved
    views = train.cameras
    rotation = views.viewmats[:, :3, :3].double()
    position = -(rotation.transpose(1, 2) @ views.viewmats[:, :3, 3:].double())[..., 0]
    moved = torch.eye(4, dtype=torch.float64).repeat(len(rotation), 1, 1)
    moved[:, :3, :3] = rotation
    moved[:, :3, 3] = -(rotation @ ((position - centre) / radius)[..., None])[..., 0]
    cameras = Cameras(moved.to(views.viewmats.dtype), views.Ks, views.width, views.height)
    images = (composite(train.images, settings.background).clamp(0, 1) * 255).round().to(torch.uint8)
    return cloud.normalized(), images, cameras, result.summary()


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


def check_fatal(exc: BaseException, item: SourceItem) -> None:
    """Raise for a fault that recurs for every object: a full disk."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DatasetError(f"{item.id}: no space left on the device ({exc}); stopping: every object would fail") from exc


@dataclass
class Loaded:
    """What :meth:`ObjectPreparer.load` hands to :meth:`ObjectPreparer.finish`: the object's cloud (in
    the model frame) and captions, or a fitted mesh's renders (``rendered``, in the mesh's frame ``up``)."""

    cloud: object
    captions: tuple
    up: str
    rendered: tuple | None = None


class ObjectPreparer:
    """Prepares one object at a time (:meth:`load`, then :meth:`finish`; ``preparer(item)`` does both).
    Picklable: the Ray pipeline builds one per worker.

    Args:
        teacher: a :class:`~clip_gs.teachers.Teacher`, or a spec string loaded once, on first use, on
            ``device`` (in each worker of a pipeline).
        settings: what is done to each object.
        image_size: view size in pixels.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: the teacher, the orbit rendering (gsplat), fits
            and Cycles (:func:`~clip_gs.render.blender.render_mesh`) run there.
        precision: the teacher's autocast precision (``fp32``, ``bf16``, ``fp16`` on CUDA).
    """

    def __init__(self, teacher, settings: PrepareSettings, image_size: int, device: str = "cpu",
                 precision: str = "fp32") -> None:  # fmt: skip
        self.teacher, self.settings, self.image_size = teacher, settings, image_size
        self.device, self.precision = device, precision

    def _teacher(self):
        if isinstance(self.teacher, str):
            from clip_gs.teachers import load_teacher

            self.teacher = load_teacher(self.teacher, device=self.device, precision=self.precision)
        return self.teacher

    def __call__(self, item: SourceItem) -> ObjectResult:
        """Both stages of ``item``; a per-object fault comes back as a failure.

        Raises:
            DatasetError: a fault that recurs for every object (a full disk).
        """
        loaded = self.load(item)
        return loaded if isinstance(loaded, ObjectResult) else self.finish(item, loaded)

    def load(self, item: SourceItem) -> Loaded | ObjectResult:
        """Stage 1, CPU: the object read, or a fitted mesh rendered; a failure as an :class:`ObjectResult`."""
        settings = self.settings
        try:
            with one_thread_on_cpu("cpu"):
                if settings.gaussians == "fitted" and is_mesh_source(item) and item.embeddings is None:
                    up = source_up(item, settings)  # rendered and fitted in the mesh's frame, then moved
                    return Loaded(None, item.captions, up, rendered=render_fit_views(item, settings, self.device))
                cloud, captions, up = load_source(item, settings)
                return Loaded(cloud, captions, up)
        except Exception as exc:  # every per-object fault is listed and the run goes on
            check_fatal(exc, item)
            return ObjectResult.failed(item, exc, "load")

    def finish(self, item: SourceItem, loaded: Loaded) -> ObjectResult:
        """Stage 2, on the run's device: fit or render the views, embed, serialise. A failure names its
        stage: ``load`` for everything before the teacher, then ``teacher``."""
        stage = "load"
        try:
            with one_thread_on_cpu(self.device):
                cloud, images, cameras, fit, resampled = self.views(item, loaded)
                stage = "teacher"
                text_emb, image_emb = self.embed(item, loaded, images)
                return self.record(item, cloud, loaded.captions, cameras, fit, resampled, text_emb, image_emb)
        except Exception as exc:
            check_fatal(exc, item)
            return ObjectResult.failed(item, exc, stage)

    def views(self, item: SourceItem, loaded: Loaded):
        """``(cloud, images or the precomputed (text, image) embeddings, (viewmats, Ks), fit facts,
        original count)`` in the model frame."""
        from clip_gs.gaussians.frames import MODEL_FRAME, frame_viewmats, to_frame

        settings, fit = self.settings, None
        if item.embeddings is not None:
            from clip_gs.data.precomputed import read_embeddings
            from clip_gs.render import orbit_cameras

            text, image, viewmats, Ks = read_embeddings(item.embeddings, self._teacher(), loaded.captions)
            if viewmats is not None:  # cameras of the file's own frame, moved with the cloud
                viewmats = frame_viewmats(viewmats, source_up(item, settings), loaded.up)
            else:  # the file says its views were prepare's orbit
                orbit = orbit_cameras(len(image), elevation_deg=settings.elevation_deg,
                                      width=self.image_size, height=self.image_size, up=loaded.up)  # fmt: skip
                viewmats, Ks = orbit.viewmats, orbit.Ks
            cloud, images = loaded.cloud, (text, image)
        elif loaded.rendered is not None:
            cloud, images, cameras, fit = fit_rendered(item, settings, loaded.rendered, self.device)
            cloud = to_frame(cloud, loaded.up, MODEL_FRAME)
            viewmats, Ks = frame_viewmats(cameras.viewmats, loaded.up, MODEL_FRAME), cameras.Ks
        else:
            images, cameras = render_views(loaded.cloud, settings, self.image_size, loaded.up, self.device)
            cloud, viewmats, Ks = loaded.cloud, cameras.viewmats, cameras.Ks
        cloud, resampled = cap_gaussians(cloud, settings, item)
        return cloud, images, (viewmats, Ks), fit, resampled

    def embed(self, item: SourceItem, loaded: Loaded, images):
        """``(text [T, E], image [V, E])`` float32 embeddings of the captions and views (or the precomputed ones)."""
        teacher = self._teacher()
        text_emb, image_emb = images if isinstance(images, tuple) else (None, None)
        captions = loaded.captions
        # One teacher call per object: batch composition changes float results slightly, so
        # embedding object by object makes a resumed or parallel run equal an uninterrupted one.
        if text_emb is None:
            text_emb = teacher.encode_text(list(captions)) if captions else torch.zeros(0, teacher.embed_dim)
        if image_emb is None:
            image_emb = teacher.encode_images(images)
        text_emb, image_emb = text_emb.float().cpu(), image_emb.float().cpu()
        for what, emb in (("caption", text_emb), ("view", image_emb)):
            bad = ~torch.isfinite(emb).all(dim=-1)
            if bool(bad.any()):
                raise DatasetError(f"{item.id}: the teacher returned non-finite {what} embeddings "
                                   f"(rows {bad.nonzero().flatten().tolist()[:8]}); the object is not stored")  # fmt: skip
        return text_emb, image_emb

    def record(self, item, cloud, captions, cameras, fit, resampled, text_emb, image_emb) -> ObjectResult:
        """The serialised :class:`~clip_gs.data.triplets.TripletSample` and its meta."""
        sample = TripletSample(
            id=item.id, source=item.source, cloud=cloud.to(device="cpu", dtype=torch.float32),
            captions=tuple(captions), label=item.label, text_embeddings=text_emb, image_embeddings=image_emb,
            viewmats=cameras[0].float().cpu(), Ks=cameras[1].float().cpu(), fit=fit,
        )  # fmt: skip
        record = sample.to_record()
        meta = {"id": item.id, "sha256": record["sha256"], "split": item.split or split_of(item.id, self.settings),
                "label": item.label, "input": input_fingerprint(item)}  # fmt: skip
        if fit is not None:
            meta["fit"] = fit
        if resampled is not None:
            meta["resampled_from"] = resampled
        return ObjectResult(item.id, meta=json.loads(json.dumps(meta)), blob=record["blob"])


def item_to_json(item: SourceItem) -> str:
    """``item`` as JSON text (how the Ray pipeline passes objects between processes: no pickles)."""
    return json.dumps(dataclasses.asdict(item))


def item_from_json(text: str) -> SourceItem:
    """The inverse of :func:`item_to_json`."""
    fields = json.loads(text)
    return SourceItem(**(fields | {"captions": tuple(fields["captions"])}))


__all__ = [
    "FAILURE_FIELDS",
    "Loaded",
    "ObjectPreparer",
    "ObjectResult",
    "cap_gaussians",
    "check_fatal",
    "fit_rendered",
    "input_fingerprint",
    "item_from_json",
    "item_to_json",
    "one_thread_on_cpu",
    "render_fit_views",
    "render_views",
]
