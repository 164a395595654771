"""What the demo page does, without Gradio: load models, check uploads, render previews, classify,
search the gallery. :mod:`clip_gs.demo.app` wires these to the page; tests call them directly too.

Classification and search are the package's (:func:`~clip_gs.usage.classify_files`,
:func:`~clip_gs.usage.embed_folder`, :func:`~clip_gs.usage.search_index`,
:func:`~clip_gs.usage.hits_sheet`); this module only adds what a web page needs: a cache of loaded
models (one per source, shared by all visitors), an upload size limit, a four-view preview, the
file the 3D viewer can show, the default label set of a model, the configured label set's label
embeddings (:mod:`clip_gs.demo.labels`: classifying over its names needs no text tower) and the
one-click example files (:mod:`clip_gs.demo.examples`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from clip_gs.demo.gallery import build_gallery, read_gallery
from clip_gs.demo.labels import configured_label_embeddings, configured_labels, label_file
from clip_gs.demo.settings import DemoSettings
from clip_gs.hub.downloads import model_location
from clip_gs.errors import ClipGSError, ConfigError
from clip_gs.model.loaded import LoadedModel, load_model
from clip_gs.teachers.label_options import parse_labels
from clip_gs.usage import Classification, classify_files, embed_folder, search_index

logger = logging.getLogger("clip_gs")

VIEWER_EXTENSIONS: tuple[str, ...] = (".ply", ".splat", ".obj", ".glb", ".gltf", ".stl")
"""Extensions Gradio's ``Model3D`` shows: Gaussian-splat ``.ply`` (INRIA layout) and ``.splat``, and
the meshes ``.ply``, ``.obj``, ``.glb``, ``.gltf``, ``.stl``. Other 3DGS files (``.spz``, compressed
``.ply``) are shown converted to an INRIA ``.ply``; ``.off`` meshes have the preview only."""

PREVIEW_AZIMUTHS = (0, 90, 180, 270)
"""Azimuths (degrees) of the four preview views: regular from 0, as
:func:`~clip_gs.render.render_sheet` places them."""

PREVIEW_ELEVATION = 20.0
"""Camera elevation of the preview views (degrees), as ``clip-gs render``."""


def preview_cloud(cloud, max_gaussians: int, seed: int = 0):
    """The cloud to preview: itself when it has at most ``max_gaussians``, else a seeded random
    ``max_gaussians`` of it with every scale multiplied by ``sqrt(N / max_gaussians)``, so the
    thinned splats still cover the surface they did (the area of a disk grows with the square of
    its scale). A display approximation for the CPU rasterizer, whose time grows with the count;
    the model always sees the file as it is.

    Args:
        cloud: an unbatched :class:`~clip_gs.gaussians.GaussianCloud` of N Gaussians.
    """
    n = cloud.num_gaussians
    if n <= max_gaussians:
        return cloud
    thin = cloud.resample(max_gaussians, seed=seed)
    return thin.replace(log_scales=thin.log_scales + 0.5 * math.log(n / max_gaussians))


@dataclass(frozen=True)
class Preview:
    """A rendered preview: the ``image`` (PIL, four labelled views in a 2 x 2 sheet), the Gaussians
    of the file (``num_gaussians``) and rendered (``rendered``), and the rasterizer ``backend``."""

    image: object
    num_gaussians: int
    rendered: int
    backend: str

    def caption(self) -> str:
        thinned = (f"{self.rendered:,} of its {self.num_gaussians:,} Gaussians, splats enlarged to cover the surface"
                   if self.rendered < self.num_gaussians else f"all {self.num_gaussians:,} Gaussians")  # fmt: skip
        return f"Preview: four views, {thinned} ({self.backend} rasterizer)."


def render_preview(path: str | Path, size: int, max_gaussians: int, device: torch.device, seed: int = 0,
                   up: str = "auto") -> Preview:  # fmt: skip
    """Four orbit views of a 3DGS file or mesh, upright: brought to the model frame by
    :func:`~clip_gs.gaussians.assets.load_asset` (with ``up``) and orbited about +Y.

    On CUDA with gsplat every Gaussian is rendered; on the CPU at most ``max_gaussians``
    (:func:`preview_cloud`).

    Raises:
        GaussianFormatError / MeshError / UnsupportedFormatError: the file cannot be read.
    """
    from clip_gs.gaussians.assets import load_asset
    from clip_gs.gaussians.frames import MODEL_FRAME
    from clip_gs.render import render_sheet
    from clip_gs.render.gsplat_backend import gsplat_available

    cloud = load_asset(path, up=up, seed=seed)
    fast = device.type == "cuda" and gsplat_available()
    shown = cloud if fast else preview_cloud(cloud, max_gaussians, seed)
    shown = shown.to(device=device if fast else "cpu", dtype=torch.float32)
    sheet = render_sheet(shown, views=len(PREVIEW_AZIMUTHS), size=size, elevation=PREVIEW_ELEVATION,
                         up=MODEL_FRAME, progress=False, labels=[f"{a} deg" for a in PREVIEW_AZIMUTHS])  # fmt: skip
    return Preview(sheet, cloud.num_gaussians, shown.num_gaussians, "gsplat" if fast else "torch")


def viewer_file(path: str | Path, out_dir: str | Path) -> Path | None:
    """The file Gradio's 3D viewer can show for an upload: the upload itself when the viewer reads
    its format (:data:`VIEWER_EXTENSIONS`, INRIA-layout ``.ply``), an INRIA ``.ply`` written into
    ``out_dir/view-<content digest>/`` for another 3DGS file (``.spz``, compressed ``.ply``), ``None`` for a mesh it cannot
    show (``.off``).

    Raises:
        GaussianFormatError / UnsupportedFormatError: a 3DGS file that cannot be read.
    """
    from clip_gs.gaussians import load_gaussians, save_gaussians
    from clip_gs.gaussians.formats.ply_header import read_ply_header

    path = Path(path)
    name = path.name.lower()
    if name.endswith(VIEWER_EXTENSIONS) and not name.endswith(".ply"):
        return path
    if name.endswith(".ply"):
        try:
            compressed = read_ply_header(path).element("chunk") is not None
        except (ClipGSError, OSError):
            return path  # not a ply the package reads; the viewer tries it as a mesh
        if not compressed:
            return path
    elif name.endswith(".off"):
        return None
    # one converted file per upload content (a digest-named folder): repeated uploads reuse it and a
    # long-running Space does not pile up copies
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    out = Path(out_dir) / f"view-{digest}" / (path.name.split(".")[0] + ".ply")
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_gaussians(load_gaussians(path), out)


def model_labels(usage: LoadedModel) -> tuple[list[str], str]:
    """The default label set of a model and where it comes from: the labels of the data it was
    trained on (its export's ``metrics.json``), else the synthetic set when its teacher is the offline
    teacher ``synthetic-clip`` (which knows only those words), else ModelNet40."""
    from clip_gs.hub.folder import METRICS_NAME, model_file
    from clip_gs.teachers.synthetic import OFFLINE_TEACHER
    from clip_gs.teachers.prompts import load_label_set

    try:
        path = model_file(usage.source, METRICS_NAME, required=False)
        labels = json.loads(Path(path).read_text(encoding="utf-8")).get("data", {}).get("labels") if path else None
        if labels:
            return load_label_set([str(n) for n in labels]), "the labels of the model's training data"
    except (ClipGSError, OSError, ValueError, AttributeError) as exc:
        logger.warning("%s: metrics.json gives no label set (%s)", usage.source, exc)
    if usage.teacher_record.startswith(f"file:{OFFLINE_TEACHER}@"):
        return load_label_set("synthetic"), f"the synthetic set (the model's teacher is {OFFLINE_TEACHER})"
    return load_label_set("modelnet40"), "ModelNet40"


class DemoService:
    """The demo's state: settings, the loaded models and their gallery indexes (thread-safe: Gradio
    calls handlers from worker threads).

    Args:
        settings: :class:`~clip_gs.demo.settings.DemoSettings`.
    """

    def __init__(self, settings: DemoSettings):
        self.settings = settings
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._indexes: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._tables: dict[str, object] = {}  # model source -> its LabelEmbeddings (or None: no label set)
        self._labels_lock = threading.Lock()
        self.gallery_dir = settings.cache / "gallery"
        self.work_dir = settings.cache / "uploads"
        self.examples_dir = settings.cache / "examples"

    # ------------------------------------------------------------------ models
    def model(self, source: str | None) -> LoadedModel:
        """The loaded model of a folder or Hub repo id (loaded once, then shared; at most
        ``settings.max_models`` stay loaded, the least recently used is dropped first).

        Raises:
            ConfigError: no source.
            CheckpointError: a file or a folder that does not exist
                (:func:`~clip_gs.hub.downloads.model_location`), or a broken model folder.
            WeightsUnavailableError: a Hub repo that is neither reachable nor cached (the message
                says what to do).
        """
        source = (source or "").strip()
        if not source:
            raise ConfigError("no model is loaded: enter an exported model folder or a Hub repo id and press Load")
        source = model_location(source)  # one cache entry per folder however it is written
        with self._lock:
            if source not in self._models:
                # the --teacher override belongs to the configured model; another model uses its own record
                teacher = self.settings.teacher if self._is_configured(source) else None
                usage = load_model(source, teacher=teacher, device=self.settings.device)
                served = label_file(self.settings, usage) if self._is_configured(source) else None
                if served is None or not served.is_file():  # no label-embedding file serves it: the teacher will
                    usage.teacher()  # fail here, with the model's name, rather than at the first query
                self._models[source] = usage
                while len(self._models) > self.settings.max_models:
                    self._models.popitem(last=False)
            self._models.move_to_end(source)
            return self._models[source]

    def default_labels(self, source: str | None) -> tuple[list[str], str]:
        """``(names, where they come from)``: the configured label set (``--labels`` / ``--label-set``)
        for the configured model, else :func:`model_labels`.

        Raises:
            as :meth:`model`; ConfigError / DatasetError: an invalid configured label set.
        """
        usage = self.model(source)
        configured = configured_labels(self.settings) if self._is_configured(model_location(source.strip())) else None
        return configured if configured is not None else model_labels(usage)

    def label_embeddings(self, source: str | None):
        """The :class:`~clip_gs.teachers.label_embeddings.LabelEmbeddings` of the configured label set
        for the configured model (read, or encoded once and cached:
        :func:`~clip_gs.demo.labels.configured_label_embeddings`), kept for later calls; None for
        another model or without a label set.

        Raises:
            as :func:`~clip_gs.demo.labels.configured_label_embeddings`.
        """
        usage = self.model(source)
        location = model_location(source.strip())
        if not self._is_configured(location):
            return None
        with self._labels_lock:
            if location not in self._tables:
                self._tables[location] = configured_label_embeddings(self.settings, usage)
            return self._tables[location]

    def examples(self) -> list[Path]:
        """The one-click example files, written into the cache on first use
        (:func:`~clip_gs.demo.examples.build_examples`)."""
        from clip_gs.demo.examples import build_examples

        return build_examples(self.examples_dir, seed=self.settings.seed)

    def _is_configured(self, source: str) -> bool:
        """Whether ``source`` (a :func:`model_location`) is the model the settings name."""
        configured = (self.settings.model or "").strip()
        try:
            return bool(configured) and model_location(configured) == source
        except ClipGSError:  # a bad configured path: that model cannot load, so it is not this one
            return False

    # ------------------------------------------------------------------ uploads
    def check_upload(self, path: str | Path | None, what: str = "upload") -> Path:
        """The uploaded file, after the size limit.

        Raises:
            ConfigError: no file; a file over :attr:`DemoSettings.max_file_mb`.
        """
        if path is None or str(path) == "":
            raise ConfigError(f"no {what}: choose a file first")
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path.name}: no such {what} (the upload did not arrive; try again)")
        size = path.stat().st_size
        if size > self.settings.max_file_bytes:
            raise ConfigError(
                f"{path.name} is {size / 1e6:.1f} MB, over this demo's upload limit of {self.settings.max_file_mb:g} MB "
                "(a setting: clip-gs demo --max-file-mb, or CLIP_GS_DEMO_MAX_FILE_MB)"
            )
        return path

    def preview(self, path: str | Path | None) -> Preview:
        """The four-view preview of an upload (see :func:`render_preview`)."""
        from clip_gs.model.precision import resolve_device

        path = self.check_upload(path)
        s = self.settings
        return render_preview(path, s.preview_size, s.preview_gaussians, resolve_device(s.device), s.seed, s.up)

    def viewer_file(self, path: str | Path | None) -> Path | None:
        """The file for the 3D viewer (see :func:`viewer_file`)."""
        path = self.check_upload(path)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return viewer_file(path, self.work_dir)

    def classify(
        self, path: str | Path | None, source: str | None, labels: str, k: int | None = None
    ) -> Classification:
        """Zero-shot top-k of an upload against the label box's names (:func:`~clip_gs.usage.classify_files`).
        When the configured label set's embeddings (:meth:`label_embeddings`) hold every name, their
        rows are used and no text tower runs; otherwise the model's teacher encodes the names.

        Returns:
            The :class:`~clip_gs.usage.Classification`; a file that cannot be read has its ``error``.

        Raises:
            ConfigError: no file, a file over the limit, a bad label set, no model.
        """
        path = self.check_upload(path)
        names = parse_labels(labels)
        usage = self.model(source)
        table = self.label_embeddings(source)
        chosen = table.select(names) if table is not None and set(names) <= set(table.names) else names
        k = int(k or self.settings.k)
        [result] = classify_files([path], usage, chosen, k=k, seed=self.settings.seed, up=self.settings.up,
                                  progress=False, num_workers=0)  # fmt: skip
        return result

    # ------------------------------------------------------------------ gallery search
    def gallery_index(self, source: str | None) -> Path:
        """The gallery's index for a model: the gallery and the index are built on first use
        (:func:`~clip_gs.demo.gallery.build_gallery`, :func:`~clip_gs.usage.embed_folder`) and
        kept in the cache folder; later calls (and later starts) reuse them."""
        usage = self.model(source)
        with self._index_lock:
            if usage.identity not in self._indexes:
                build_gallery(self.gallery_dir, seed=self.settings.seed)
                name = f"{usage.identity.replace(':', '-').replace('@', '-')}-seed{self.settings.seed}"  # one per sampling seed
                out = self.settings.cache / "indexes" / f"{name}.safetensors"
                out.parent.mkdir(parents=True, exist_ok=True)
                summary = embed_folder(self.gallery_dir, out, usage, seed=self.settings.seed, progress=False,
                                       num_workers=0)  # fmt: skip
                if summary.failed:
                    raise ConfigError(f"the gallery could not be embedded: {summary.failures}")
                logger.info("gallery index: %s", summary.line())
                self._indexes[usage.identity] = summary.index_path
            return self._indexes[usage.identity]

    def search(self, source: str | None, text: str | None = None, image: str | Path | None = None,
               k: int | None = None) -> tuple[list[dict], object]:  # fmt: skip
        """Search the gallery by text or by image (exactly one); returns ``(rows, sheet)``: one
        dict per hit (``rank``, ``score``, ``caption``, ``label``, ``file``) and the hits' contact
        sheet (:func:`~clip_gs.usage.hits_sheet`, a PIL image).

        Raises:
            ConfigError: no or an empty query, an unreadable image, no model.
        """
        from clip_gs.usage import hits_sheet

        if image is not None:
            image = self.check_upload(image, what="query image")
        elif not (text or "").strip():
            raise ConfigError("the text query is empty: describe an object, e.g. 'a red torus'")
        usage = self.model(source)
        index = self.gallery_index(source)
        hits = search_index(index, text=text if image is None else None, image=image, k=int(k or self.settings.k),
                            model=usage)  # fmt: skip
        items = read_gallery(self.gallery_dir)
        rows = []
        for rank, hit in enumerate(hits, 1):
            item = items.get(Path(hit.path).name)
            rows.append({"rank": rank, "score": round(hit.score, 4), "caption": item.caption if item else "",
                         "label": item.label if item else "", "file": Path(hit.path).name})  # fmt: skip
        sheet, failures = hits_sheet(hits, size=160, columns=len(hits), seed=self.settings.seed)
        for path, error in failures:
            logger.warning("gallery thumbnail of %s: %s", path, error)
        return rows, sheet


__all__ = [
    "PREVIEW_AZIMUTHS",
    "VIEWER_EXTENSIONS",
    "DemoService",
    "Preview",
    "model_labels",
    "preview_cloud",
    "render_preview",
    "viewer_file",
]
