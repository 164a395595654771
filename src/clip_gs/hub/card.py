"""Model cards of CLIP-GS models: the one card generator used by the training export, ``save_pretrained``,
``CLIPGS.push_to_hub`` and ``clip-gs push``.

The template is the repository's ``MODEL_CARD.md``, shipped as the package file
``clip_gs/hub/model_card.md`` (a symbolic link in the checkout; a wheel holds a copy) (Jinja2, rendered by
``huggingface_hub.ModelCard.from_template``); the YAML front matter is a ``ModelCardData``:
``library_name: clip-gs``, ``license``, ``tags``, ``pipeline_tag: feature-extraction``, ``datasets``
(Hub dataset ids only: named with ``datasets=`` or recorded as ``hf://datasets/ORG/NAME``) and a
``model-index`` made of ``EvalResult`` s from the evaluation report.

A model folder holds what the card is made of (:mod:`clip_gs.hub.folder`)::

    config.json          the architecture (a CLIPGSConfig's fields)
    teacher.json         the teacher identity of the training data (optional)
    metrics.json         written by the export: validation metrics, the checkpoint, the training data (optional)
    curves.png           training curves (optional)
    eval/report.json     the latest ``clip-gs eval`` report (optional)
    eval/*.png           figures of that evaluation (optional)

What this module takes from its callers, and why: the hub layer sits below the model, the teachers and the
evaluation, so it neither checks a model folder's weights, nor reads an evaluation report, nor turns a
teacher identity into a ``load_teacher`` spec. A card is made from a folder whose ``config.json`` the caller
has checked (:func:`clip_gs.model.clipgs.validate_folder`), an evaluation report already checked by
:func:`clip_gs.evaluation.report.read_eval_report` (its schema lives beside the code that builds it), and
the teacher spec of the snippet (:func:`clip_gs.model.folder.card_teacher_spec`). ``clip-gs push``
(:mod:`clip_gs.usage.push_cli`) reads and checks the report of a folder; the training export and
``save_pretrained`` write cards of new weights, which no report describes yet; ``CLIPGS.push_to_hub`` lives in
the model layer, below the evaluation, so it pushes no report: push the folder (``clip-gs push``) after
``clip-gs eval`` for a card with the evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from clip_gs.errors import ModelCardError
from clip_gs.hub.folder import (
    CONFIG_NAME,
    CURVES_NAME,
    EVAL_DIR,
    EVAL_REPORT,
    eval_images,
    read_config_json,
    read_metrics_json,
    read_teacher_json,
)

LIBRARY_NAME = "clip-gs"
LICENSE = "apache-2.0"
TAGS = ("3d-gaussian-splatting", "clip", "zero-shot-classification", "feature-extraction")
PIPELINE_TAG = "feature-extraction"
"""The Hub task: the model turns a 3DGS object into an embedding."""

TEMPLATE_NAME = "model_card.md"

CARD_CONFIG_FIELDS = ("name", "width", "depth", "uni3d_model", "num_gaussians", "num_groups", "group_size",
                      "gaussian_branch", "embed_dim", "clip_model", "clip_pretrained")  # fmt: skip
"""The ``config.json`` fields the card shows."""


def card_template() -> str:
    """The Jinja2 template ``clip_gs/hub/model_card.md`` (package data: the same file from a checkout or a wheel)."""
    return resources.files("clip_gs.hub").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def direction_label(direction: str) -> str:
    """How the card names a retrieval direction: ``"text_to_3d"`` -> ``"text → 3D"``."""
    return direction.replace("_to_", " → ").replace("3d", "3D")


def eval_results(report: Mapping) -> list[EvalResult]:
    """The report's metrics as Hub ``EvalResult`` s (fractions, as in the report), for the ``model-index``
    (named by ``ModelCardData.model_name``).

    One result per metric: zero-shot top-1/3/5 (task ``zero-shot-classification``), few-shot mean
    accuracy per setting (std and episodes in ``metric_args``), recall@1/5/10 per retrieval direction.
    """
    tasks = report["tasks"]
    dataset = {"dataset_type": report["data"], "dataset_name": f"{report['data']} ({report['split']})",
               "dataset_split": report["split"]}  # fmt: skip
    results: list[EvalResult] = []
    if "zeroshot" in tasks:
        z = tasks["zeroshot"]
        for k in (1, 3, 5):
            results.append(EvalResult(
                task_type="zero-shot-classification", task_name="Zero-shot 3D classification",
                metric_type="accuracy" if k == 1 else f"top{k}_accuracy", metric_name=f"Top-{k} accuracy",
                metric_value=float(z[f"top{k}"]), metric_config=z["label_set"], **dataset,
            ))  # fmt: skip
    for setting, entry in tasks.get("fewshot", {}).items():
        results.append(EvalResult(
            task_type="few-shot-classification",
            task_name=f"Few-shot 3D classification (linear probe, {entry.get('protocol', 'episodes')} protocol)",
            metric_type="accuracy", metric_name=f"{setting} accuracy", metric_value=float(entry["mean"]),
            metric_config=setting, metric_args={"std": float(entry["std"]), "episodes": int(entry["episodes"])},
            **dataset,
        ))  # fmt: skip
    for direction, entry in tasks.get("retrieval", {}).items():
        for k in (1, 5, 10):
            results.append(EvalResult(
                task_type=f"{direction.replace('_', '-')}-retrieval",
                task_name=f"Retrieval {direction_label(direction)}", metric_type=f"recall@{k}",
                metric_name=f"R@{k}", metric_value=float(entry[f"r{k}"]), **dataset,
            ))  # fmt: skip
    return results


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def evaluation_markdown(report: Mapping | None, report_name: str | None, validation: Mapping[str, float],
                        images: Sequence[str] = ()) -> str:  # fmt: skip
    """The card's evaluation section: the report's tables, or a note that there is none (with the
    training-time validation metrics, labelled as such, when the export recorded them)."""
    lines: list[str] = []
    if report is None:
        lines.append(
            "No evaluation report was given: run `clip-gs eval` on the model folder (it writes "
            f"`{EVAL_REPORT}`, which `clip-gs push` puts on this card)."
        )
        if validation:
            note = ("Validation metrics recorded at export (the validation split of the training data, "
                    "the checkpoint the export kept; not a held-out evaluation):")  # fmt: skip
            lines += ["", note, "", "| metric | value |", "|---|---|"]
            lines += [f"| {name} | {value:.4f} |" for name, value in sorted(validation.items())]
        lines += [line for image in images for line in ("", f"![{Path(image).stem}]({image})")]
        return "\n".join(lines)
    tasks = report["tasks"]
    lines.append(
        f"From `{report_name}` (created {report['created']}, clip-gs {report['clip_gs_version']}): split "
        f"`{report['split']}` of `{report['data']}`, {report['num_objects']} objects, teacher `{report['teacher']}`, "
        f"model `{report['model']}`."
    )
    if not tasks:
        lines += ["", "The report holds no task results."]
    if report.get("failures"):
        lines += ["", "Protocols that could not run on this split:", ""]
        lines += [f"- {task}: {message}" for task, message in sorted(report["failures"].items())]
    if "zeroshot" in tasks:
        z = tasks["zeroshot"]
        on = f", {z['num_samples']} objects" if "num_samples" in z else ""
        lines += ["", f"**Zero-shot classification** ({z['num_classes']} classes, label set `{z['label_set']}`{on})", "",
                  "| top-1 | top-3 | top-5 |", "|---|---|---|",
                  f"| {_percent(z['top1'])} | {_percent(z['top3'])} | {_percent(z['top5'])} |"]  # fmt: skip
        if z["per_class"]:
            lines += ["", "<details><summary>Top-1 accuracy per class</summary>", "", "| class | top-1 |", "|---|---|"]
            lines += [f"| {name} | {_percent(v)} |" for name, v in sorted(z["per_class"].items())]
            lines += ["", "</details>"]
    if tasks.get("fewshot"):
        lines += [
            "",
            "**Few-shot classification**",
            "",
            "| setting | protocol | accuracy (mean ± std) | runs / episodes |",
            "|---|---|---|---|",
        ]
        lines += [f"| {s} | {e.get('protocol', 'episodes')} | {_percent(e['mean'])} ± {_percent(e['std'])} | {e['episodes']} |"
                  for s, e in tasks["fewshot"].items()]  # fmt: skip
    if tasks.get("retrieval"):
        lines += ["", "**Retrieval** (recall at k)", "", "| direction | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
        lines += [f"| {direction_label(d)} | {_percent(e['r1'])} | {_percent(e['r5'])} | {_percent(e['r10'])} |"
                  for d, e in tasks["retrieval"].items()]  # fmt: skip
        defined = [(d, e["definition"]) for d, e in tasks["retrieval"].items() if "definition" in e]
        if defined:
            lines += ["", "What each direction counts:", ""]
            lines += [f"- {direction_label(d)}: queries {x['queries']}; gallery {x['gallery']}; a hit when {x['hit']}."
                      for d, x in defined]  # fmt: skip
    lines += [line for image in images for line in ("", f"![{Path(image).stem}]({image})")]
    return "\n".join(lines)


def training_markdown(teacher: Mapping | None, training: Mapping | None, curves: str | None) -> str:
    """The card's training-data section from the export's records (``metrics.json``, ``teacher.json``)."""
    if not training:
        text = ("Not recorded: this folder was not written by the training export (`clip-gs fit`), which "
                "records the dataset, the initialisation and the checkpoint.")  # fmt: skip
    else:
        data = training.get("data") or {}
        parts = []
        if data.get("root"):
            counts = ", ".join(f"{k} {v}" for k, v in (data.get("counts") or {}).items())
            parts.append(
                f"Prepared triplet dataset `{data['root']}`" + (f" (samples per split: {counts})." if counts else ".")
            )
        else:
            parts.append("The training dataset is not recorded (metrics.json of an earlier clip-gs export).")
        if data.get("labels"):
            labels = list(data["labels"])
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            parts.append(f"{len(labels)} labels ({shown}).")
        if data.get("init"):
            parts.append(f"Initialisation: {data['init']}.")
        parts.append(f"Weights from `{training.get('checkpoint') or 'the final training step'}`.")
        text = " ".join(parts)
    who = (teacher or {}).get("teacher")
    text += (
        f" Teacher embeddings (targets) by `{who}`." if who else " The teacher of the training data is not recorded."
    )
    if curves:
        text += f"\n\n![training curves]({curves})"
    return text


def hub_dataset_id(reference: str | None) -> str | None:
    """``"hf://datasets/ORG/NAME[/...]"`` -> ``"ORG/NAME"``; anything else (a local folder, ``synthetic:...``,
    ``s3://...``) is not a Hub dataset id and gives None."""
    prefix = "hf://datasets/"
    if not reference or not reference.startswith(prefix):
        return None
    parts = reference[len(prefix) :].split("/")
    return f"{parts[0]}/{parts[1]}".split("@", 1)[0] if len(parts) >= 2 and parts[0] and parts[1] else None


def build_model_card(
    config: Mapping,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    teacher: Mapping | None = None,
    teacher_spec: str | None = None,
    training: Mapping | None = None,
    report: Mapping | None = None,
    report_name: str | None = None,
    images: Sequence[str] = (),
    curves: str | None = None,
    datasets: Sequence[str] = (),
) -> ModelCard:
    """The model card of a model with ``config``.

    Args:
        config: the fields of its ``CLIPGSConfig`` (``config.json``; :data:`CARD_CONFIG_FIELDS` are shown).
        model_name: the card title and the ``model-index`` name (default: the repo name, else ``config["name"]``).
        repo_id: ``ORG/NAME`` for the usage snippet (default ``<your-namespace>/<model_name>``).
        teacher: ``teacher.json`` (``{"teacher": identity string, "embed_dim": E, ...}``).
        teacher_spec: the ``load_teacher`` spec of that teacher for the snippet; None: no teacher snippet.
        training: ``metrics.json`` of the export (``metrics``, ``checkpoint``, ``data``).
        report: an evaluation report checked by :func:`clip_gs.evaluation.report.read_eval_report`; None: the
            card says there is none.
        report_name: how the card names the report (``eval/report.json``).
        images: evaluation figures (paths in the repo) shown under the evaluation.
        curves: path in the repo of the training curves figure.
        datasets: Hub dataset ids for the metadata, besides ``hf://datasets/...`` references in the records.

    Raises:
        ModelCardError: ``config`` lacks a field the card shows.
    """
    missing = [k for k in CARD_CONFIG_FIELDS if k not in config]
    if missing:
        raise ModelCardError(f"the model's config has no field(s) {missing}; cannot make its card")
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else config["name"])
    repo_id = repo_id or f"<your-namespace>/{model_name}"
    identity = (teacher or {}).get("teacher") or (report or {}).get("teacher")
    configured = f"`{config['clip_model']}/{config['clip_pretrained']}` (configured)"
    shown_teacher = f"`{identity}`" if identity else configured
    refs = [((training or {}).get("data") or {}).get("root"), (report or {}).get("data")]
    hub_datasets = list(dict.fromkeys([*datasets, *(d for d in map(hub_dataset_id, refs) if d)]))
    validation = {k: float(v) for k, v in ((training or {}).get("metrics") or {}).items()}
    results = eval_results(report) if report is not None and report["tasks"] else None
    data = ModelCardData(
        library_name=LIBRARY_NAME, license=LICENSE, tags=list(TAGS), pipeline_tag=PIPELINE_TAG,
        datasets=hub_datasets or None, model_name=model_name if results else None, eval_results=results,
    )  # fmt: skip
    fields = {
        "model_name": model_name, "repo_id": repo_id, "teacher": shown_teacher, "teacher_spec": teacher_spec,
        "config_name": config["name"], "width": config["width"], "depth": config["depth"],
        "uni3d_model": config["uni3d_model"], "num_gaussians": config["num_gaussians"],
        "num_groups": config["num_groups"], "group_size": config["group_size"],
        "gaussian_branch": config["gaussian_branch"], "embed_dim": config["embed_dim"],
        "training_data": training_markdown(teacher, training, curves),
        "evaluation": evaluation_markdown(report, report_name, validation, images),
    }  # fmt: skip
    return ModelCard.from_template(data, template_str=card_template(), **fields)


# ---------------------------------------------------------------------------- a model folder's card
def folder_card(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    report: Mapping | None = None,
    report_file: str | os.PathLike | None = None,
    teacher_spec: str | None = None,
    datasets: Sequence[str] = (),
) -> ModelCard:
    """The card of a model folder (see the module docstring for the files it reads).

    Args:
        folder: a model folder whose ``config.json`` the caller has checked.
        repo_id: the Hub repo the card is for (default: a placeholder named after the folder).
        report: the evaluation report, checked (:func:`clip_gs.evaluation.report.read_eval_report`); None: none.
        report_file: where ``report`` was read (its figures are the ``*.png`` beside it); None: ``folder/eval``.
        teacher_spec: the ``load_teacher`` spec of the recorded teacher for the snippet (None: no snippet).
        datasets: Hub dataset ids for the metadata.

    Raises:
        ConfigError: ``config.json`` missing or not a JSON object; an invalid ``teacher.json`` or ``metrics.json``.
        ModelCardError: ``metrics.json`` whose metrics are not numbers; a config without the card's fields.
    """
    folder = Path(folder)
    config = read_config_json(folder / CONFIG_NAME)
    teacher = read_teacher_json(folder)
    return build_model_card(
        config, model_name=repo_id.split("/")[-1] if repo_id else _folder_model_name(folder), repo_id=repo_id,
        teacher=teacher[0] if teacher is not None else None, teacher_spec=teacher_spec,
        training=read_metrics_json(folder), report=report, report_name=EVAL_REPORT if report is not None else None,
        images=[f"{EVAL_DIR}/{p.name}" for p in eval_images(folder, report_file)],
        curves=CURVES_NAME if (folder / CURVES_NAME).is_file() else None, datasets=datasets,
    )  # fmt: skip


def _folder_model_name(folder: Path) -> str:
    """A folder's name, or its parent's for the export's default ``<run>/export``."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "export" and folder.parent.name else folder.name


__all__ = [
    "CARD_CONFIG_FIELDS",
    "LIBRARY_NAME",
    "LICENSE",
    "PIPELINE_TAG",
    "TAGS",
    "build_model_card",
    "card_template",
    "direction_label",
    "eval_results",
    "evaluation_markdown",
    "folder_card",
    "hub_dataset_id",
    "training_markdown",
]
