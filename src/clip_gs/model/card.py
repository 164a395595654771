"""Model cards of CLIP-GS models: the one card generator used by the training export, ``save_pretrained``
and ``clip-gs push``.

The template is the repository's ``MODEL_CARD.md``, shipped as the package file
``clip_gs/model/model_card.md`` (a symbolic link in the checkout; a wheel holds a copy) (Jinja2, rendered by
``huggingface_hub.ModelCard.from_template``); the YAML front matter is a ``ModelCardData``:
``library_name: clip-gs``, ``license``, ``tags``, ``pipeline_tag: feature-extraction``, ``datasets``
(Hub dataset ids only: named with ``datasets=`` or recorded as ``hf://datasets/ORG/NAME``) and a
``model-index`` made of ``EvalResult`` s from the evaluation report.

A model folder holds what the card is made of::

    config.json          the architecture (CLIPGSConfig)
    teacher.json         the teacher identity of the training data (optional)
    metrics.json         written by the export: validation metrics, the checkpoint, the training data (optional)
    curves.png           training curves (optional)
    eval/report.json     the latest ``clip-gs eval`` report (optional; :data:`EVAL_REPORT`)
    eval/*.png           figures of that evaluation (optional)

The evaluation report (written by ``clip-gs eval``; fractions in [0, 1], any task may be missing)::

    {"model": str, "data": str, "split": str, "teacher": str, "num_objects": int,
     "tasks": {"zeroshot": {"top1", "top3", "top5": float, "per_class": {name: float},
                            "label_set": str, "num_classes": int},
               "fewshot": {"<ways>-way-<shots>-shot": {"mean": float, "std": float, "episodes": int,
                                                       "protocol"?, "queries_per_class"?, "support_split"?, "note"?,
                                                       "draws_sha256"?, "episodes_file"?, "episodes_file_use"?}},
               "retrieval": {"text_to_3d" | "3d_to_text" | "image_to_3d" | "3d_to_image":
                             {"r1", "r5", "r10": float,
                              "definition"?: {"queries", "gallery", "hit": str}}}},
     "created": iso8601, "clip_gs_version": str}

Optional: ``tasks.zeroshot.num_samples`` (int) and ``failures`` (``{task: message}``, protocols that could
not run; shown on the card).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from clip_gs.errors import ModelCardError
from clip_gs.model.folder import (
    CONFIG_NAME,
    CURVES_NAME,
    EVAL_REPORT,
    METRICS_NAME,
    TEACHER_NAME,
    read_model_config,
    read_teacher_record,
)

if TYPE_CHECKING:
    from clip_gs.model.config import CLIPGSConfig

LIBRARY_NAME = "clip-gs"
LICENSE = "apache-2.0"
TAGS = ("3d-gaussian-splatting", "clip", "zero-shot-classification", "feature-extraction")
PIPELINE_TAG = "feature-extraction"
"""The Hub task: the model turns a 3DGS object into an embedding."""

TEMPLATE_NAME = "model_card.md"

REPORT_FIELDS = {"model": str, "data": str, "split": str, "teacher": str, "num_objects": int, "tasks": dict,
                 "created": str, "clip_gs_version": str}  # fmt: skip
REPORT_OPTIONAL = {"failures": dict, "benchmark": str}
ZEROSHOT_FIELDS = {"top1": float, "top3": float, "top5": float, "per_class": dict, "label_set": str, "num_classes": int}
ZEROSHOT_OPTIONAL = {"num_samples": int, "protocol": str}
FEWSHOT_FIELDS = {"mean": float, "std": float, "episodes": int}
FEWSHOT_OPTIONAL = {"protocol": str, "queries_per_class": int, "support_split": str, "note": str, "draws_sha256": str,
                    "episodes_file": str, "episodes_file_use": str}  # fmt: skip
RETRIEVAL_DIRECTIONS = {"text_to_3d": "text → 3D", "3d_to_text": "3D → text", "image_to_3d": "image → 3D",
                        "3d_to_image": "3D → image"}  # fmt: skip
RECALL_FIELDS = {"r1": float, "r5": float, "r10": float}
RECALL_OPTIONAL = {"definition": dict}
DEFINITION_FIELDS = {"queries": str, "gallery": str, "hit": str}
FEWSHOT_KEY = re.compile(r"^(\d+)-way-(\d+)-shot$")
_FRACTIONS = {"top1", "top3", "top5", "mean", "std", "r1", "r5", "r10"}


def card_template() -> str:
    """The Jinja2 template ``clip_gs/model/model_card.md`` (package data: the same file from a checkout or a wheel)."""
    return resources.files("clip_gs.model").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- the evaluation report
def read_eval_report(path: str | os.PathLike) -> dict:
    """Read and check an evaluation report (shape in the module docstring).

    Raises:
        ModelCardError: missing file, invalid JSON, a missing / unknown / mistyped field, a fraction
            outside [0, 1] (the message names the file and the field).
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelCardError(f"{path}: no evaluation report there (run `clip-gs eval` to write one)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"{path}: unreadable evaluation report: {exc}") from exc
    check_eval_report(report, str(path))
    return report


def check_eval_report(report: object, source: str) -> None:
    """Raise :class:`ModelCardError` naming ``source`` and the field unless ``report`` has the report's shape."""
    _check_fields(report, REPORT_FIELDS, source, "", REPORT_OPTIONAL)
    for task, message in report.get("failures", {}).items():
        _check_value(message, str, source, f"failures.{task}")
    try:
        datetime.fromisoformat(report["created"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise ModelCardError(f"{source}: 'created' is not an ISO 8601 time: {report['created']!r}") from exc
    tasks = report["tasks"]
    unknown = sorted(set(tasks) - {"zeroshot", "fewshot", "retrieval"})
    if unknown:
        raise ModelCardError(f"{source}: unknown task(s) {unknown} under 'tasks'; known: zeroshot, fewshot, retrieval")
    if "zeroshot" in tasks:
        zeroshot = tasks["zeroshot"]
        _check_fields(zeroshot, ZEROSHOT_FIELDS, source, "tasks.zeroshot.", ZEROSHOT_OPTIONAL)
        for name, value in zeroshot["per_class"].items():
            _check_value(value, float, source, f"tasks.zeroshot.per_class.{name}", fraction=True)
    if "fewshot" in tasks:
        _check_type(tasks["fewshot"], dict, source, "tasks.fewshot")
        for setting, entry in tasks["fewshot"].items():
            if not FEWSHOT_KEY.match(setting):
                raise ModelCardError(f"{source}: tasks.fewshot key {setting!r} is not '<ways>-way-<shots>-shot'")
            _check_fields(entry, FEWSHOT_FIELDS, source, f"tasks.fewshot.{setting}.", FEWSHOT_OPTIONAL)
    if "retrieval" in tasks:
        _check_type(tasks["retrieval"], dict, source, "tasks.retrieval")
        for direction, entry in tasks["retrieval"].items():
            if direction not in RETRIEVAL_DIRECTIONS:
                raise ModelCardError(
                    f"{source}: unknown retrieval direction {direction!r}; known: {list(RETRIEVAL_DIRECTIONS)}"
                )
            _check_fields(entry, RECALL_FIELDS, source, f"tasks.retrieval.{direction}.", RECALL_OPTIONAL)
            if "definition" in entry:
                _check_fields(entry["definition"], DEFINITION_FIELDS, source, f"tasks.retrieval.{direction}.definition.")


def _check_fields(
    data: object, fields: Mapping[str, type], source: str, prefix: str, optional: Mapping[str, type] | None = None
) -> None:
    _check_type(data, dict, source, prefix.rstrip(".") or "the report")
    missing = [f"{prefix}{k}" for k in fields if k not in data]
    unknown = [f"{prefix}{k}" for k in data if k not in fields and k not in (optional or {})]
    if missing or unknown:
        detail = "; ".join(
            p for p in (f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else "") if p
        )
        raise ModelCardError(f"{source}: not an evaluation report of clip-gs: {detail}")
    for key, kind in {**fields, **(optional or {})}.items():
        if key in data:
            _check_value(data[key], kind, source, prefix + key, fraction=key in _FRACTIONS)


def _check_value(value: object, kind: type, source: str, where: str, fraction: bool = False) -> None:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ModelCardError(f"{source}: {where} must be a finite number, got {value!r}")
        if fraction and not 0.0 <= value <= 1.0:
            raise ModelCardError(f"{source}: {where} must be a fraction in [0, 1], got {value!r}")
        return
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ModelCardError(f"{source}: {where} must be a non-negative integer, got {value!r}")
    _check_type(value, kind, source, where)


def _check_type(value: object, kind: type, source: str, where: str) -> None:
    if not isinstance(value, kind):
        raise ModelCardError(f"{source}: {where} must be a {kind.__name__}, got {type(value).__name__} {value!r}")


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
                task_name=f"Retrieval {RETRIEVAL_DIRECTIONS[direction]}", metric_type=f"recall@{k}",
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
        lines += [f"| {RETRIEVAL_DIRECTIONS[d]} | {_percent(e['r1'])} | {_percent(e['r5'])} | {_percent(e['r10'])} |"
                  for d, e in tasks["retrieval"].items()]  # fmt: skip
        defined = [(d, e["definition"]) for d, e in tasks["retrieval"].items() if "definition" in e]
        if defined:
            lines += ["", "What each direction counts:", ""]
            lines += [f"- {RETRIEVAL_DIRECTIONS[d]}: queries {x['queries']}; gallery {x['gallery']}; a hit when {x['hit']}."
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


def teacher_spec(identity: str | None) -> str | None:
    """The ``load_teacher`` spec of a teacher identity (:func:`~clip_gs.teachers.factory.teacher_spec_for`)
    for the card's snippet, or None when there is none to show (a local checkpoint file, a random teacher)."""
    from clip_gs.errors import ConfigError, WeightsUnavailableError
    from clip_gs.teachers.factory import teacher_spec_for

    if not identity:
        return None
    try:
        return teacher_spec_for(identity)
    except (ConfigError, WeightsUnavailableError):
        return None


def hub_dataset_id(reference: str | None) -> str | None:
    """``"hf://datasets/ORG/NAME[/...]"`` -> ``"ORG/NAME"``; anything else (a local folder, ``synthetic:...``,
    ``s3://...``) is not a Hub dataset id and gives None."""
    prefix = "hf://datasets/"
    if not reference or not reference.startswith(prefix):
        return None
    parts = reference[len(prefix) :].split("/")
    return f"{parts[0]}/{parts[1]}".split("@", 1)[0] if len(parts) >= 2 and parts[0] and parts[1] else None


def build_model_card(
    config: CLIPGSConfig,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    teacher: Mapping | None = None,
    training: Mapping | None = None,
    report: Mapping | None = None,
    report_name: str | None = None,
    images: Sequence[str] = (),
    curves: str | None = None,
    datasets: Sequence[str] = (),
) -> ModelCard:
    """The model card of a model with ``config``.

    Args:
        model_name: the card title and the ``model-index`` name (default: the repo name, else ``config.name``).
        repo_id: ``ORG/NAME`` for the usage snippet (default ``<your-namespace>/<model_name>``).
        teacher: ``teacher.json`` (``{"teacher": identity string, "embed_dim": E, ...}``).
        training: ``metrics.json`` of the export (``metrics``, ``checkpoint``, ``data``).
        report: a checked evaluation report (:func:`read_eval_report`); None: the card says there is none.
        report_name: how the card names the report (``eval/report.json``).
        images: evaluation figures (paths in the repo) shown under the evaluation.
        curves: path in the repo of the training curves figure.
        datasets: Hub dataset ids for the metadata, besides ``hf://datasets/...`` references in the records.
    """
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else config.name)
    repo_id = repo_id or f"<your-namespace>/{model_name}"
    identity = (teacher or {}).get("teacher") or (report or {}).get("teacher")
    shown_teacher = f"`{identity}`" if identity else f"`{config.clip_model}/{config.clip_pretrained}` (configured)"
    refs = [((training or {}).get("data") or {}).get("root"), (report or {}).get("data")]
    hub_datasets = list(dict.fromkeys([*datasets, *(d for d in map(hub_dataset_id, refs) if d)]))
    validation = {k: float(v) for k, v in ((training or {}).get("metrics") or {}).items()}
    results = eval_results(report) if report is not None and report["tasks"] else None
    data = ModelCardData(
        library_name=LIBRARY_NAME, license=LICENSE, tags=list(TAGS), pipeline_tag=PIPELINE_TAG,
        datasets=hub_datasets or None, model_name=model_name if results else None, eval_results=results,
    )  # fmt: skip
    fields = {
        "model_name": model_name, "repo_id": repo_id, "teacher": shown_teacher, "teacher_spec": teacher_spec(identity),
        "config_name": config.name, "width": config.width, "depth": config.depth, "uni3d_model": config.uni3d_model,
        "num_gaussians": config.num_gaussians, "num_groups": config.num_groups, "group_size": config.group_size,
        "gaussian_branch": config.gaussian_branch, "embed_dim": config.embed_dim,
        "training_data": training_markdown(teacher, training, curves),
        "evaluation": evaluation_markdown(report, report_name, validation, images),
    }  # fmt: skip
    return ModelCard.from_template(data, template_str=card_template(), **fields)


# ---------------------------------------------------------------------------- a model folder's card
def read_json_record(path: Path, what: str) -> dict:
    """A JSON object file of a model folder (``metrics.json``); :class:`ModelCardError` otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"{path}: unreadable {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelCardError(f"{path}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_config(folder: str | os.PathLike) -> CLIPGSConfig:
    """``folder/config.json`` as a :class:`CLIPGSConfig` (:func:`~clip_gs.model.folder.read_model_config`).

    Raises:
        ConfigError: missing, not JSON, or not a CLIPGSConfig (the message names the file and the field).
    """
    return read_model_config(Path(folder) / CONFIG_NAME)


def folder_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    eval_report: str | os.PathLike | None = None,
    datasets: Sequence[str] = (),
    use_eval_report: bool = True,
) -> ModelCard:
    """The card of a model folder (see the module docstring for the files it reads).

    Args:
        repo_id: the Hub repo the card is for (default: a placeholder named after the folder).
        eval_report: the evaluation report (default ``folder/eval/report.json`` when it exists).
        datasets: Hub dataset ids for the metadata.
        use_eval_report: False: no report at all (the export: new weights, any report there is of older ones).

    Raises:
        ConfigError: ``config.json`` missing or invalid.
        ModelCardError: an unreadable record or report (an explicit ``eval_report`` must exist).
    """
    folder = Path(folder)
    config = read_config(folder)
    teacher = read_teacher_record(folder).to_dict() if (folder / TEACHER_NAME).is_file() else None
    training = read_json_record(folder / METRICS_NAME, "export record") if (folder / METRICS_NAME).is_file() else None
    if training is not None:
        metrics = training.get("metrics", {})
        if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
            raise ModelCardError(f"{folder / METRICS_NAME}: 'metrics' must map metric names to numbers")
    report_path = report_location(folder, eval_report) if use_eval_report else None
    report = read_eval_report(report_path) if report_path is not None else None
    return build_model_card(
        config, model_name=repo_id.split("/")[-1] if repo_id else _folder_model_name(folder), repo_id=repo_id,
        teacher=teacher, training=training, report=report, report_name=EVAL_REPORT if report is not None else None,
        images=[f"eval/{p.name}" for p in eval_images(folder, report_path)],
        curves=CURVES_NAME if (folder / CURVES_NAME).is_file() else None, datasets=datasets,
    )  # fmt: skip


def _folder_model_name(folder: Path) -> str:
    """A folder's name, or its parent's for the export's default ``<run>/export``."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "export" and folder.parent.name else folder.name


def report_location(folder: Path, eval_report: str | os.PathLike | None) -> Path | None:
    """The report a folder's card uses: ``eval_report`` (which must exist), else ``folder/eval/report.json``
    when present, else None."""
    if eval_report is not None:
        path = Path(eval_report)
        if not path.is_file():
            raise ModelCardError(f"{path}: no evaluation report there (the --eval-report / eval_report given)")
        return path
    default = folder / EVAL_REPORT
    return default if default.is_file() else None


def eval_images(folder: Path, report_path: Path | None) -> list[Path]:
    """The evaluation figures next to the report (``*.png`` in its folder, sorted), or in ``folder/eval``."""
    where = report_path.parent if report_path is not None else folder / Path(EVAL_REPORT).parent
    return sorted(p for p in where.glob("*.png") if p.is_file()) if where.is_dir() else []


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = [
    "LIBRARY_NAME",
    "LICENSE",
    "PIPELINE_TAG",
    "TAGS",
    "build_model_card",
    "card_template",
    "check_eval_report",
    "eval_images",
    "eval_results",
    "evaluation_markdown",
    "folder_card",
    "hub_dataset_id",
    "read_config",
    "read_eval_report",
    "read_json_record",
    "report_location",
    "teacher_spec",
    "training_markdown",
]
