"""The demo page (Gradio Blocks): upload a 3DGS file or a mesh (or click one of the shipped
examples), see it, classify it zero-shot over a label set one can edit, and search a small gallery
by text or by image.

Gradio is imported only here, when a page is built (the ``demo`` extra: ``pip install
'clip-gs[demo]'``); everything the page does is in :mod:`clip_gs.demo.service`. Every handler
shows the package's error (``ErrorType: message``) in the page instead of raising, so a bad upload
never stops the server. Named API endpoints (for ``gradio_client``): ``/load_model``,
``/preview``, ``/classify``, ``/search_text``, ``/search_image``.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.demo.examples import EXAMPLES
from clip_gs.demo.gallery import gallery_items
from clip_gs.demo.service import VIEWER_EXTENSIONS, DemoService, model_labels
from clip_gs.demo.settings import DemoSettings
from clip_gs.errors import ClipGSError, MissingDependencyError

LABEL_SET_CHOICES = ("the model's", "modelnet40", "objaverse-lvis", "synthetic")
"""Label sets the page's menu fills the label box with (``the model's``: :func:`model_labels`)."""

HIT_COLUMNS = ("rank", "score", "caption", "label", "file")
"""Columns of the search results table."""

NO_MODEL_HELP = (
    "To use the demo, give it a model: an exported folder (`clip-gs fit --config examples/configs/quickstart.yaml` "
    "writes one; then `clip-gs demo --model runs/quickstart/export`), or a Hub repo id (online, or downloaded "
    "beforehand with `hf download ORG/NAME` into the Hugging Face cache). Enter it above and press **Load**; on a "
    "Space, set the variable `CLIP_GS_DEMO_MODEL`."
)


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        raise MissingDependencyError(f"the demo needs Gradio: pip install 'clip-gs[demo]' ({exc})") from exc
    return gr


def error_text(exc: BaseException | str, upload: str | None = None) -> str:
    """How the page shows a package error: ``**Error** ErrorType: message`` (a string is taken as
    ``"ErrorType: message"`` already); the server's folder of an ``upload`` is left out of it."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    if upload:
        text = text.replace(str(Path(upload).parent) + os.sep, "")
    return f"**Error** {text}"


def _labels_text(names: list[str]) -> str:
    return ", ".join(names)


def model_status(service: DemoService, source: str | None) -> tuple[str, str]:
    """``(status markdown, label box text)`` of a model source: what is loaded and its default
    labels (:meth:`DemoService.default_labels`; whether a label-embedding file serves them), or why
    nothing is and what to do (:data:`NO_MODEL_HELP`); the label box then holds ModelNet40."""
    from clip_gs.teachers.prompts import load_label_set

    try:
        usage = service.model(source)
    except ClipGSError as exc:
        return f"**No model is loaded.** {type(exc).__name__}: {exc}\n\n{NO_MODEL_HELP}", _labels_text(
            load_label_set("modelnet40")
        )
    note = ""
    try:
        names, origin = service.default_labels(source)
        table = service.label_embeddings(source)
        if table is not None:
            name = Path(table.path).name if table.path else "-"
            note = f" Zero-shot over them uses the label-embedding file `{name}` (no text tower)."
    except ClipGSError as exc:
        names, origin = model_labels(usage)
        note = f" The configured label set cannot be used: {error_text(exc)}"
    status = (f"**Model** `{usage.source}` ({usage.identity}), teacher `{usage.teacher_identity}`, on {usage.device}. "
              f"Default labels: {origin} ({len(names)} classes).{note}")  # fmt: skip
    return status, _labels_text(names)


def build_demo(settings: DemoSettings | None = None, service: DemoService | None = None, notice: str = ""):
    """The page as a ``gradio.Blocks`` (not launched). The settings' model is loaded, its label
    embeddings, the example files and the gallery's index made now (or read from the cache), so the
    first visitor does not wait.

    Args:
        notice: Markdown shown under the title (e.g. which model a Space chose and why).

    Raises:
        MissingDependencyError: Gradio is not installed.
    """
    gr = _gradio()
    service = service or DemoService(settings or DemoSettings.from_env())
    settings = service.settings
    status, labels = model_status(service, settings.model)
    try:
        example_files = service.examples()
    except (ClipGSError, OSError) as exc:
        example_files = []
        status += f"\n\nThe examples could not be written: {error_text(exc) if isinstance(exc, ClipGSError) else exc}"
    if settings.model and not status.startswith("**No model"):
        try:
            service.gallery_index(settings.model)
        except ClipGSError as exc:
            status += f"\n\nThe gallery could not be prepared: {error_text(exc)}"

    def load_model(source):
        status, labels = model_status(service, source)
        return source, status, labels

    def fill_labels(choice, source):
        from clip_gs.teachers.prompts import load_label_set

        try:
            if choice == LABEL_SET_CHOICES[0]:
                return _labels_text(service.default_labels(source)[0])
            return _labels_text(load_label_set(choice))
        except ClipGSError as exc:
            raise gr.Error(error_text(exc)) from exc

    def preview(file):
        if file is None:  # the file was cleared
            return None, None, ""
        try:
            shown = service.preview(file)
            view = service.viewer_file(file)
        except ClipGSError as exc:
            return None, None, error_text(exc, file)
        note = shown.caption()
        if view is None:
            note += f" The 3D view shows {', '.join(VIEWER_EXTENSIONS)} files (and other 3DGS files converted); not this one."
        return shown.image, str(view) if view else None, note

    def classify(file, labels, k, source):
        if file is None:
            return None, ""
        try:
            result = service.classify(file, source, labels, int(k))
        except ClipGSError as exc:
            return None, error_text(exc, file)
        if not result.ok:
            return None, error_text(result.error, file)
        scores = {s.label: s.score for s in result.labels}
        best = result.labels[0]
        return scores, f"Top label: **{best.label}** (score {best.score:.3f}, cosine {best.cosine:+.3f})."

    def search(source, k, text=None, image=None):
        try:
            rows, sheet = service.search(source, text=text, image=image, k=int(k))
        except ClipGSError as exc:
            return None, None, error_text(exc, image)
        table = [[r[c] for c in HIT_COLUMNS] for r in rows]
        return sheet, table, f"{len(rows)} hits; best: **{rows[0]['caption']}** (score {rows[0]['score']:.3f})."

    def search_text(text, k, source):
        return search(source, k, text=text)

    def search_image(image, k, source):
        if image is None:
            return None, None, "**Error** ConfigError: no query image: upload a photo first"
        return search(source, k, image=image)

    with gr.Blocks(title="CLIP-GS demo", analytics_enabled=False) as demo:
        source = gr.State(settings.model)
        gr.Markdown("# CLIP-GS\nZero-shot classification and search of 3D Gaussian Splatting objects.")
        if notice:
            gr.Markdown(notice, elem_id="notice")
        status_box = gr.Markdown(status, elem_id="model-status")
        with gr.Row():
            model_box = gr.Textbox(value=settings.model or "", label="Model (exported folder or Hub repo id)", scale=4)
            load_button = gr.Button("Load", scale=1)
        gr.Markdown("## Classify")
        with gr.Row():
            upload = gr.File(label="3DGS file (.ply, .splat, .spz, compressed .ply) or mesh (.obj, .glb, .stl, ...)",
                             type="filepath", elem_id="upload")  # fmt: skip
            with gr.Column():
                label_set = gr.Dropdown(list(LABEL_SET_CHOICES), value=LABEL_SET_CHOICES[0], label="Label set")
                labels_box = gr.Textbox(value=labels, label="Labels (comma-separated, editable)", lines=3,
                                        elem_id="labels")  # fmt: skip
                k_box = gr.Slider(1, 20, value=settings.k, step=1, label="Top k")
                classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
        examples = gr.Examples([[str(p)] for p in example_files], [upload], label="Examples: click one to classify it",
                               example_labels=[e.label for e in EXAMPLES], cache_examples=False,
                               elem_id="examples") if example_files else None  # fmt: skip
        upload_note = gr.Markdown(label="Upload note", elem_id="upload-note")
        with gr.Row():
            preview_image = gr.Image(label="Preview (four views)", type="pil", format="png", interactive=False,
                                     elem_id="preview")  # fmt: skip
            viewer = gr.Model3D(label="3D view", interactive=False, elem_id="viewer")
        result_label = gr.Label(label="Zero-shot labels", elem_id="labels-out")
        classify_note = gr.Markdown(label="Classify note", elem_id="classify-note")
        gr.Markdown("## Search the gallery")
        gr.Markdown(f"A gallery of synthetic objects ({len(gallery_items())} objects) ships with the demo.")
        with gr.Row():
            with gr.Column(scale=2):
                query_text = gr.Textbox(label="Text query", placeholder="a red torus", elem_id="query-text")
                text_button = gr.Button("Search by text", elem_id="search-text")
                query_image = gr.Image(label="Image query (a photo or a render)", type="filepath", height=200,
                                       elem_id="query-image")  # fmt: skip
                image_button = gr.Button("Search by image", elem_id="search-image")
            with gr.Column(scale=3):
                search_note = gr.Markdown(label="Search note", elem_id="search-note")
                hits_image = gr.Image(label="Hits", type="pil", format="png", interactive=False, elem_id="hits")
                hits_table = gr.Dataframe(headers=list(HIT_COLUMNS), label="Hits table", interactive=False,
                                          elem_id="hits-table")  # fmt: skip

        load_button.click(load_model, [model_box], [source, status_box, labels_box], api_name="load_model")
        label_set.change(fill_labels, [label_set, source], [labels_box], api_name=False)
        upload.upload(preview, [upload], [preview_image, viewer, upload_note], api_name="preview").then(
            classify, [upload, labels_box, k_box, source], [result_label, classify_note], api_name=False
        )
        if examples is not None:  # a click fills the upload box (no upload event): preview and classify it
            shown = examples.load_input_event.then(preview, [upload], [preview_image, viewer, upload_note],
                                                   api_name=False)  # fmt: skip
            shown.then(classify, [upload, labels_box, k_box, source], [result_label, classify_note], api_name=False)
        classify_button.click(classify, [upload, labels_box, k_box, source], [result_label, classify_note],
                              api_name="classify")  # fmt: skip
        text_button.click(search_text, [query_text, k_box, source], [hits_image, hits_table, search_note],
                          api_name="search_text")  # fmt: skip
        query_text.submit(search_text, [query_text, k_box, source], [hits_image, hits_table, search_note],
                          api_name=False)  # fmt: skip
        image_button.click(search_image, [query_image, k_box, source], [hits_image, hits_table, search_note],
                           api_name="search_image")  # fmt: skip
    demo.clip_gs_service = service
    return demo


def launch_demo(settings: DemoSettings | None = None, block: bool = True, service: DemoService | None = None,
                notice: str = ""):  # fmt: skip
    """Build and serve the page on ``settings.host:settings.port`` (127.0.0.1 by default).

    Args:
        block: serve until interrupted (the command line); ``False`` returns at once (tests:
            ``demo.close()`` stops the server).
        notice: Markdown shown under the title (:func:`build_demo`).

    Returns:
        ``(demo, url)``.
    """
    service = service or DemoService(settings or DemoSettings.from_env())
    settings = service.settings
    demo = build_demo(service=service, notice=notice)
    service.work_dir.mkdir(parents=True, exist_ok=True)
    demo.queue()
    _, url, _ = demo.launch(
        server_name=settings.host, server_port=settings.port or None, max_file_size=settings.max_file_bytes,
        allowed_paths=[str(service.work_dir), str(service.examples_dir)], prevent_thread_lock=True, show_error=True,
        quiet=True,
    )  # fmt: skip
    print(f"clip-gs demo: serving {url}", flush=True)
    if block:
        demo.block_thread()
    return demo, url


__all__ = ["HIT_COLUMNS", "LABEL_SET_CHOICES", "NO_MODEL_HELP", "build_demo", "error_text", "launch_demo",
           "model_status"]  # fmt: skip
