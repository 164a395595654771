"""The Hugging Face Hub side: the model card, ``clip-gs push`` (``folder_upload``, ``push_upload``),
``CLIPGS.push_to_hub``, and offline ``from_pretrained`` from the local Hugging Face cache.

There is no network here: the Hub's upload endpoints (``HfApi.create_repo`` / ``HfApi.create_commit``)
are replaced by :class:`HubRecorder`, which records what would be sent; everything before them (checks,
card, commit operations) is the real code. The cache tests lay a repo out in the cache's own layout
(``models--org--name/refs/main``, ``snapshots/<sha>/``, ``blobs/``) under a temporary ``HF_HUB_CACHE``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, constants
from safetensors.torch import load as load_safetensors

from clip_gs import CLIPGS
from clip_gs.cli import main
from clip_gs.errors import CheckpointError, ConfigError, HubError, ModelCardError, WeightsUnavailableError
from clip_gs.evaluation.report import read_eval_report
from clip_gs.hub.card import card_template, folder_card
from clip_gs.hub.downloads import model_location
from clip_gs.hub.folder import EVAL_REPORT, read_config_json, report_location
from clip_gs.hub.push import PushResult, push_upload
from clip_gs.lightning.export import export_pretrained
from clip_gs.model import create_model
from clip_gs.model.clipgs import validate_folder
from clip_gs.model.folder import card_teacher_spec
from clip_gs.usage.push_cli import folder_upload
from tests.helpers import fifo_watchdog, make_fifo

REPO = Path(__file__).resolve().parents[2]
E = 16
TEACHER = {"teacher": "file:synthetic-clip@sha256:0123456789abcdef", "embed_dim": E}
SECTIONS = (
    "## Intended use",
    "## How to use",
    "## Architecture",
    "## Training data",
    "## Evaluation",
    "## Limitations",
)


def tiny_model(seed: int = 0) -> CLIPGS:
    torch.manual_seed(seed)
    return create_model("clip-gs-tiny", num_gaussians=64, num_groups=8, group_size=8, embed_dim=E, depth=1)


def report(**tasks) -> dict:
    """A report of ``clip-gs eval``'s shape; all three tasks unless ``tasks`` names some."""
    everything = {
        "zeroshot": {"top1": 0.625, "top3": 0.875, "top5": 1.0, "per_class": {"cube": 0.5, "sphere": 0.75},
                     "label_set": "synthetic", "num_classes": 2},
        "fewshot": {"2-way-1-shot": {"mean": 0.7, "std": 0.05, "episodes": 20},
                    "2-way-5-shot": {"mean": 0.9, "std": 0.02, "episodes": 20}},
        "retrieval": {"text_to_3d": {"r1": 0.25, "r5": 0.5, "r10": 0.75},
                      "3d_to_image": {"r1": 0.125, "r5": 0.375, "r10": 0.625}},
    }  # fmt: skip
    return {"model": "runs/tiny/export", "data": "synthetic:64", "split": "test", "teacher": TEACHER["teacher"],
            "num_objects": 16, "tasks": tasks if tasks else everything, "created": "2025-06-01T12:00:00Z",
            "clip_gs_version": "0.1.0"}  # fmt: skip


def write_png(path: Path, colour: str = "red") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def export(folder: Path, with_report: bool = True) -> Path:
    """A training export of a tiny model (as ExportBest writes it) with, by default, an eval report and figure."""
    export_pretrained(
        tiny_model(), folder, teacher=TEACHER, metrics={"val/zeroshot_top1": 0.5, "val/3d_to_text_r1": 0.25},
        history={"train/loss": [(0, 2.0), (1, 1.5)]}, checkpoint="runs/tiny/best.ckpt",
        data={"root": "synthetic:64", "counts": {"train": 48, "val": 16}, "labels": ["cube", "sphere"], "init": "random"},
    )  # fmt: skip
    if with_report:
        (folder / "eval").mkdir()
        (folder / EVAL_REPORT).write_text(json.dumps(report()))
        write_png(folder / "eval" / "zeroshot.png")
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return export(tmp_path / "tiny")


def card_of(folder: Path, repo_id: str | None = None, eval_report: Path | None = None) -> str:
    """The card of a folder with its report (``folder/eval/report.json`` or ``eval_report``), read and checked
    as ``clip-gs push`` does."""
    report_file = report_location(folder, eval_report)
    report = read_eval_report(report_file) if report_file is not None else None
    spec = card_teacher_spec(TEACHER["teacher"])
    return str(folder_card(folder, repo_id=repo_id, report=report, report_file=report_file, teacher_spec=spec))


def push_folder(folder: Path, repo_id: str, eval_report: Path | None = None, **options) -> PushResult:
    """What ``clip-gs push`` does: check the folder, make the commit, send it."""
    return push_upload(folder_upload(folder, repo_id, eval_report=eval_report), **options)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def index_metrics(meta: dict) -> dict[tuple[str, str], float]:
    """``model-index`` as ``{(task type, metric name): value}``."""
    (entry,) = meta["model-index"]
    return {(r["task"]["type"], m["name"]): m["value"] for r in entry["results"] for m in r["metrics"]}


# ---------------------------------------------------------------------------- the card
def test_card_metadata_and_model_index_equal_the_report(folder):
    text = card_of(folder, repo_id="org/tiny")
    meta = front_matter(text)
    assert meta["library_name"] == "clip-gs" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "feature-extraction" and "3d-gaussian-splatting" in meta["tags"]
    assert meta["model-index"][0]["name"] == "tiny"
    r = report()["tasks"]
    expected = {("zero-shot-classification", f"Top-{k} accuracy"): r["zeroshot"][f"top{k}"] for k in (1, 3, 5)}
    expected |= {("few-shot-classification", f"{s} accuracy"): e["mean"] for s, e in r["fewshot"].items()}
    expected |= {(f"{d.replace('_', '-')}-retrieval", f"R@{k}"): e[f"r{k}"]
                 for d, e in r["retrieval"].items() for k in (1, 5, 10)}  # fmt: skip
    assert index_metrics(meta) == expected
    few = [
        m for res in meta["model-index"][0]["results"] for m in res["metrics"] if m["name"] == "2-way-1-shot accuracy"
    ]
    assert few[0]["args"] == {"std": 0.05, "episodes": 20}
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset == {"name": "synthetic:64 (test)", "type": "synthetic:64", "split": "test"}
    # huggingface_hub reads it back into the same EvalResults
    card = ModelCard(text)
    assert {(e.task_type, e.metric_name): e.metric_value for e in card.data.eval_results} == expected
    assert card.data.library_name == "clip-gs"


def test_card_sections_snippet_and_tables(folder):
    text = card_of(folder, repo_id="org/tiny")
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert 'CLIPGS.from_pretrained("org/tiny")' in text and 'load_teacher("synthetic-clip")' in text
    assert "| 62.5% | 87.5% | 100.0% |" in text  # zero-shot top-1/3/5
    assert "| 2-way-1-shot | episodes | 70.0% ± 5.0% | 20 |" in text
    assert "| text → 3D | 25.0% | 50.0% | 75.0% |" in text and "| 3D → image | 12.5% | 37.5% | 62.5% |" in text
    assert "| sphere | 75.0% |" in text and "![zeroshot](eval/zeroshot.png)" in text
    assert (
        "`synthetic:64` (samples per split: train 48, val 16). 2 labels (cube, sphere). Initialisation: random." in text
    )
    assert "runs/tiny/best.ckpt" in text and "![training curves](curves.png)" in text
    assert "{{" not in text and "{%" not in text and "This file is a template" not in text


def test_card_without_a_report_says_so_and_labels_the_validation_metrics(tmp_path):
    folder = export(tmp_path / "tiny", with_report=False)
    text = (folder / "README.md").read_text()  # the export's card
    assert text == str(folder_card(folder, teacher_spec="synthetic-clip"))
    meta = front_matter(text)
    assert "model-index" not in meta and meta["library_name"] == "clip-gs"
    assert "No evaluation report was given: run `clip-gs eval`" in text
    assert "not a held-out evaluation" in text and "| val/zeroshot_top1 | 0.5000 |" in text
    assert ModelCard(text).data.eval_results is None


def test_card_of_a_partial_report_has_only_its_tasks(folder):
    partial = folder / "partial.json"
    partial.write_text(json.dumps(report(retrieval={"3d_to_text": {"r1": 0.5, "r5": 0.75, "r10": 1.0}})))
    text = card_of(folder, repo_id="org/tiny", eval_report=partial)
    assert index_metrics(front_matter(text)) == {("3d-to-text-retrieval", f"R@{k}"): v
                                                 for k, v in ((1, 0.5), (5, 0.75), (10, 1.0))}  # fmt: skip
    assert "**Zero-shot classification**" not in text and "| 3D → text | 50.0% | 75.0% | 100.0% |" in text


def test_card_shows_the_optional_sample_count_and_failed_protocols(folder):
    data = report(zeroshot=report()["tasks"]["zeroshot"] | {"num_samples": 16})
    data["failures"] = {"fewshot": "DatasetError: 2 classes have fewer than 6 objects"}
    path = folder / "with-failures.json"
    path.write_text(json.dumps(data))
    text = card_of(folder, eval_report=path)
    assert "(2 classes, label set `synthetic`, 16 objects)" in text
    assert "Protocols that could not run on this split:\n\n- fewshot: DatasetError: 2 classes have fewer" in text
    data["failures"] = {"fewshot": 3}
    path.write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match="failures.fewshot must be a str"):
        read_eval_report(path)


def test_export_card_has_no_report_and_a_reexport_removes_the_old_one(folder):
    """The export's own card has no evaluation; a report written after it reaches the card; exporting new
    weights into the folder removes that report (it describes the earlier weights)."""
    assert "No evaluation report" in (folder / "README.md").read_text()
    assert "model-index" in front_matter(card_of(folder))
    export(folder, with_report=False)
    assert not (folder / "eval").exists() and "model-index" not in front_matter(card_of(folder))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda r: r["tasks"]["zeroshot"].update(top1=1.5),
            r"tasks.zeroshot.top1 must be a fraction in \[0, 1\], got 1.5",
        ),
        (lambda r: r["tasks"]["zeroshot"].pop("top5"), r"missing \['tasks.zeroshot.top5'\]"),
        (lambda r: r["tasks"].update(segmentation={}), r"unknown task\(s\) \['segmentation'\]"),
        (lambda r: r["tasks"]["fewshot"].update({"five-way": {}}), r"'five-way' is not '<ways>-way-<shots>-shot'"),
        (lambda r: r["tasks"]["retrieval"].update(mesh_to_3d={}), r"unknown retrieval direction 'mesh_to_3d'"),
        (lambda r: r["tasks"]["retrieval"]["text_to_3d"].update(r5="high"), r"text_to_3d.r5 must be a finite number"),
        (lambda r: r.update(created="yesterday"), r"'created' is not an ISO 8601 time"),
        (lambda r: r.update(num_objects=-1), r"num_objects must be a non-negative integer"),
        (lambda r: r.pop("split"), r"missing \['split'\]"),
        (lambda r: r["tasks"]["zeroshot"].update(num_samples=2.5), r"num_samples must be a non-negative integer"),
        (lambda r: r.update(extra=1), r"unknown \['extra'\]"),
    ],
)
def test_malformed_reports_are_named(tmp_path, edit, message):
    data = report()
    edit(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match=message) as info:
        read_eval_report(path)
    assert str(path) in str(info.value)


def test_missing_or_unreadable_report_is_named(tmp_path):
    with pytest.raises(ModelCardError, match="no evaluation report there"):
        read_eval_report(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="bad.json: unreadable evaluation report"):
        read_eval_report(tmp_path / "bad.json")


def test_a_fifo_in_place_of_a_record_is_refused_never_read(tmp_path):
    """A model folder's JSON records and its evaluation report: a FIFO would block the reader for ever; it is
    refused with the package's error, and nothing opens it for reading."""
    for name, read, error in (("config.json", read_config_json, ConfigError),
                              (EVAL_REPORT, read_eval_report, ModelCardError)):  # fmt: skip
        (tmp_path / name).parent.mkdir(exist_ok=True)
        fifo = make_fifo(tmp_path / name)
        with fifo_watchdog(fifo) as watch, pytest.raises(error, match=rf"{name}: not a regular file: it is a FIFO"):
            read(fifo)
        assert not watch["opened"], name


def test_teacher_specs_of_identities():
    assert card_teacher_spec("open_clip:EVA02-E-14-plus/laion2b_s9b_b144k") == "EVA02-E-14-plus/laion2b_s9b_b144k"
    assert card_teacher_spec("file:synthetic-clip@sha256:0123") == "synthetic-clip"
    assert card_teacher_spec("hf-hub:org/clip") == "hf-hub:org/clip"
    assert card_teacher_spec("file:ViT-B-32@sha256:0123") is None and card_teacher_spec(None) is None


def test_the_template_is_the_root_model_card_shipped_as_package_data():
    """``MODEL_CARD.md`` is the template; the package file links to it, so a wheel holds a copy."""
    packaged = REPO / "src" / "clip_gs" / "hub" / "model_card.md"
    assert card_template() == packaged.read_text() == (REPO / "MODEL_CARD.md").read_text()
    assert packaged.is_symlink() and packaged.resolve() == (REPO / "MODEL_CARD.md").resolve()
    from importlib import resources

    assert resources.files("clip_gs.hub").joinpath("model_card.md").read_text() == card_template()  # package data


def test_save_pretrained_writes_the_clip_gs_card(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / "README.md").read_text()
    assert front_matter(text)["library_name"] == "clip-gs" and all(s in text for s in SECTIONS)
    assert "PytorchModelHubMixin" not in text and "Not recorded: this folder was not written by the training" in text


# ---------------------------------------------------------------------------- push (the Hub endpoints recorded)
class HubRecorder:
    """Stands in for the Hub's upload endpoints, which cannot be reached here (no network).

    ``create_repo`` and ``create_commit`` record their arguments and, for a commit, the bytes of
    every operation; ``fail`` makes ``create_commit`` raise instead. Any other upload entry point
    raises, so a second way of sending files would be noticed.
    """

    def __init__(self, monkeypatch, fail: BaseException | None = None):
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        self.fail = fail
        recorder = self

        def create_repo(api, repo_id, **kwargs):
            recorder.repos.append({"repo_id": repo_id, **kwargs})
            return f"https://huggingface.co/{repo_id}"

        def create_commit(api, repo_id, operations, **kwargs):
            if recorder.fail is not None:
                raise recorder.fail
            files = {}
            for op in operations:
                with op.as_file() as f:
                    files[op.path_in_repo] = f.read()
            recorder.commits.append({"repo_id": repo_id, "files": files, **kwargs})
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{'c' * 40}")

        def refuse(*args, **kwargs):
            raise AssertionError("an upload went another way than one create_commit")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        for name in ("upload_file", "upload_folder", "preupload_lfs_files"):
            monkeypatch.setattr(HfApi, name, refuse)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


PUSHED = ["config.json", "model.safetensors", "teacher.json", "README.md", "curves.png", "metrics.json", "eval/report.json",
          "eval/zeroshot.png"]  # fmt: skip


def test_push_sends_the_folder_and_the_generated_card_in_one_commit(folder, monkeypatch, online):
    hub = HubRecorder(monkeypatch)
    result = push_folder(folder, "org/tiny", private=True, commit_message="first")
    assert hub.repos == [{"repo_id": "org/tiny", "repo_type": "model", "private": True, "exist_ok": True}]
    (commit,) = hub.commits
    assert list(commit["files"]) == PUSHED and result.files == tuple(PUSHED)
    assert commit["commit_message"] == "first" and commit["repo_id"] == "org/tiny"
    for name in PUSHED:
        if name != "README.md":
            assert commit["files"][name] == (folder / name).read_bytes(), name
    card = commit["files"]["README.md"].decode()
    assert card == card_of(folder, repo_id="org/tiny")
    assert card != (folder / "README.md").read_text()  # the export's card had no report; the pushed one does
    assert "model-index" in front_matter(card) and 'from_pretrained("org/tiny")' in card
    assert result.commit_url.startswith("https://huggingface.co/org/tiny/commit/")


def test_push_with_another_report_takes_it_and_its_figures(folder, tmp_path, monkeypatch, online):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "report.json").write_text(json.dumps(report(zeroshot=report()["tasks"]["zeroshot"] | {"top1": 0.75})))
    write_png(other / "sheet.png", "blue")
    hub = HubRecorder(monkeypatch)
    push_folder(folder, "org/tiny", eval_report=other / "report.json")
    files = hub.commits[0]["files"]
    assert [n for n in files if n.startswith("eval/")] == ["eval/report.json", "eval/sheet.png"]
    assert files["eval/report.json"] == (other / "report.json").read_bytes()
    assert files["eval/sheet.png"] == (other / "sheet.png").read_bytes()
    assert (
        index_metrics(front_matter(files["README.md"].decode()))[("zero-shot-classification", "Top-1 accuracy")] == 0.75
    )


def test_clip_gs_push_command(folder, monkeypatch, online, capsys):
    hub = HubRecorder(monkeypatch)
    assert main(["push", str(folder), "--repo-id", "org/tiny", "--private", "--dataset", "org/objects"]) == 0
    out = capsys.readouterr().out
    assert "pushed 8 files to https://huggingface.co/org/tiny" in out and "/commit/" in out
    assert hub.repos[0]["private"] is True
    assert front_matter(hub.commits[0]["files"]["README.md"].decode())["datasets"] == ["org/objects"]


def test_dry_run_prints_the_card_and_sends_nothing(folder, monkeypatch, online, capsys):
    hub = HubRecorder(monkeypatch)
    assert main(["push", str(folder), "--repo-id", "org/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---\nlibrary_name: clip-gs") and "dry run: would push 8 files to org/tiny" in out
    assert hub.repos == [] and hub.commits == []


def test_push_offline_is_a_typed_error_and_sends_nothing(folder, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub = HubRecorder(monkeypatch)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set.*nothing was committed"):
        push_folder(folder, "org/tiny")
    assert main(["push", str(folder), "--repo-id", "org/tiny"]) == 2
    assert "clip-gs push: error: cannot push" in capsys.readouterr().err
    assert hub.repos == [] and hub.commits == []


def http_client():
    """The HTTP client module huggingface_hub uses (httpx's fork in this version, requests in older ones)."""
    from huggingface_hub.errors import HfHubHTTPError

    return __import__(HfHubHTTPError.__bases__[0].__module__.split(".")[0])


def connect_error() -> BaseException:
    """The HTTP client's own connection error."""
    client = http_client()
    return getattr(client, "ConnectError", getattr(client, "ConnectionError", ConnectionError))("connection refused")


@pytest.mark.parametrize("error", [connect_error, lambda: ConnectionError("[Errno 111] Connection refused")])
def test_push_connection_error_is_a_typed_error_and_commits_nothing(folder, monkeypatch, online, error):
    hub = HubRecorder(monkeypatch, fail=error())
    with pytest.raises(
        HubError, match=r"cannot push .* to org/tiny: the Hub could not be reached .*nothing was committed"
    ):
        push_folder(folder, "org/tiny")
    assert len(hub.repos) == 1 and hub.commits == []


def test_push_refused_token_names_the_fix(folder, monkeypatch, online):
    from huggingface_hub.errors import HfHubHTTPError

    client = http_client()
    if not hasattr(client, "Request"):
        pytest.skip(f"builds an httpx-style response; huggingface_hub uses {client.__name__}")
    response = client.Response(401, request=client.Request("POST", "https://huggingface.co/api/org/tiny/commit/main"))
    refused = HfHubHTTPError("401 Client Error: Unauthorized", response=response)
    hub = HubRecorder(monkeypatch, fail=refused)
    with pytest.raises(HubError, match=r"refused the token \(HTTP 401\): log in with `hf auth login`"):
        push_folder(folder, "org/tiny", token="hf_wrong")
    assert hub.commits == []


def test_push_to_hub_of_a_model_sends_its_weights_and_card(tmp_path, monkeypatch, online):
    hub = HubRecorder(monkeypatch)
    model = tiny_model(seed=3)
    url = model.push_to_hub("org/from-code", teacher=TEACHER)
    assert url.startswith("https://huggingface.co/org/from-code/commit/")
    files = hub.commits[0]["files"]
    assert list(files) == ["config.json", "model.safetensors", "teacher.json", "README.md"]
    state = load_safetensors(files["model.safetensors"])
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    card = files["README.md"].decode()
    assert 'from_pretrained("org/from-code")' in card and "file:synthetic-clip@sha256:0123456789abcdef" in card
    assert json.loads(files["teacher.json"]) == TEACHER
    # the mixin's save_pretrained(push_to_hub=True) goes the same way
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="org/via-save")
    assert hub.commits[1]["repo_id"] == "org/via-save"
    assert list(hub.commits[1]["files"]) == ["config.json", "model.safetensors", "README.md"]
    assert hub.commits[1]["files"]["model.safetensors"] == files["model.safetensors"]
    with pytest.raises(ConfigError, match="differs from the model's config"):
        model.push_to_hub("org/x", config=model.config.replace(depth=2))
    with pytest.raises(ConfigError, match=r"model_card_kwargs \['license'\] are not used"):
        model.push_to_hub("org/x", model_card_kwargs={"license": "mit"})
    assert len(hub.commits) == 2


# ---------------------------------------------------------------------------- folder checks (before any request)
def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda f: (f / "model.safetensors").unlink(), CheckpointError, r"tiny: no model.safetensors \(the weights\)"),
        (lambda f: (f / "config.json").unlink(), ConfigError, r"config.json: missing"),
        (lambda f: (f / "config.json").write_text("{"), ConfigError, r"config.json: not valid JSON"),
        (lambda f: edit_json(f / "config.json", colour="red"), ConfigError, r"unknown CLIPGSConfig field\(s\) \['colour'\]"),
        (lambda f: edit_json(f / "config.json", depth=2), CheckpointError,
         r"model.safetensors does not match the architecture CLIPGS: \d+ missing key\(s\) \['encoder.blocks.1"),
        (lambda f: edit_json(f / "config.json", embed_dim=32, num_groups=8), CheckpointError,
         r"shape mismatch.*it was not written for this config.json"),
        (lambda f: (f / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!"), CheckpointError,
         r"model.safetensors: corrupt or unreadable safetensors header"),
        (lambda f: edit_json(f / "teacher.json", embed_dim=1024), CheckpointError,
         r"teacher.json: the teacher embeds in 1024 dimensions but .*config.json has embed_dim 16"),
    ],
)  # fmt: skip
def test_push_checks_the_folder_first(folder, monkeypatch, online, damage, error, message):
    damage(folder)
    hub = HubRecorder(monkeypatch)
    with pytest.raises(error, match=message):
        push_folder(folder, "org/tiny")
    assert hub.repos == [] and hub.commits == []


def test_validate_folder_returns_the_config_and_bad_repo_ids_are_refused(folder, monkeypatch, online):
    assert validate_folder(folder) == tiny_model().config
    hub = HubRecorder(monkeypatch)
    for repo_id in ("tiny", "org/tiny/extra", "org/ti ny"):
        with pytest.raises(ConfigError, match="repo id"):
            folder_upload(folder, repo_id)
    with pytest.raises(ModelCardError, match="absent.json: no evaluation report there"):
        push_folder(folder, "org/tiny", eval_report=folder / "absent.json")
    with pytest.raises(CheckpointError, match="not a folder"):
        push_folder(folder / "nothing", "org/tiny")
    assert hub.repos == [] and hub.commits == []


# ---------------------------------------------------------------------------- offline from the Hugging Face cache
def test_from_pretrained_offline_from_the_cache(tmp_path, offline_cache):
    model = tiny_model(seed=5)
    model.save_pretrained(tmp_path / "saved")
    for name in ("config.json", "model.safetensors", "README.md"):
        offline_cache.place("org/tiny", name, tmp_path / "saved" / name)
    loaded = CLIPGS.from_pretrained("org/tiny")
    assert loaded.config == model.config
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_from_pretrained_offline_without_the_repo_gives_advice(offline_cache):
    with pytest.raises(WeightsUnavailableError) as info:
        CLIPGS.from_pretrained("org/absent")
    message = str(info.value)
    assert "'config.json' of the Hub repo 'org/absent': HF_HUB_OFFLINE is set" in message
    assert f"not in the Hugging Face cache {offline_cache.path}" in message and "`hf download org/absent`" in message


def test_from_pretrained_offline_with_the_weights_missing_from_the_cache(tmp_path, offline_cache):
    tiny_model().save_pretrained(tmp_path / "saved")
    offline_cache.place("org/half", "config.json", tmp_path / "saved" / "config.json")
    with pytest.raises(
        WeightsUnavailableError, match=r"'model.safetensors' of the Hub repo 'org/half': HF_HUB_OFFLINE"
    ):
        CLIPGS.from_pretrained("org/half")


# ---------------------------------------------------------------------------- a trained model (lead's fixture)
@pytest.mark.slow
def test_trained_export_is_ready_to_push(trained_run, monkeypatch, online):
    """The trained export checks out; its card reports the export's validation metrics (or its eval report);
    the commit holds the folder's exact files (the upload endpoint is recorded: no network here); the
    folder loads back with weights equal to the pushed ones."""
    folder = Path(trained_run.model_dir)
    upload = folder_upload(folder, "org/trained")
    card = upload.card()
    if (folder / EVAL_REPORT).is_file():
        tasks = read_eval_report(folder / EVAL_REPORT)["tasks"]
        assert (
            index_metrics(front_matter(card))[("zero-shot-classification", "Top-1 accuracy")]
            == tasks["zeroshot"]["top1"]
        )
    else:
        top1 = json.loads((folder / "metrics.json").read_text())["metrics"]["val/zeroshot_top1"]
        assert 0.0 <= top1 <= 1.0 and f"| val/zeroshot_top1 | {top1:.4f} |" in card
    hub = HubRecorder(monkeypatch)
    push_folder(folder, "org/trained")
    files = hub.commits[0]["files"]
    assert files["README.md"].decode() == card and files["config.json"] == (folder / "config.json").read_bytes()
    pushed = load_safetensors(files["model.safetensors"])
    loaded = CLIPGS.from_pretrained(str(folder), local_files_only=True).state_dict()
    assert pushed.keys() == loaded.keys() and all(torch.equal(pushed[k], loaded[k]) for k in pushed)


def test_model_location_tells_folders_files_and_repo_ids_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    assert model_location(tmp_path / "run") == str(tmp_path / "run")
    assert model_location("~/run") == str(tmp_path / "run")
    assert model_location("my-org/clip-gs-tiny") == "my-org/clip-gs-tiny"
    with pytest.raises(CheckpointError, match="weights.safetensors: is a file; give the model folder"):
        model_location(tmp_path / "weights.safetensors")
    for missing in (str(tmp_path / "nope"), "./runs/export", "a/b/c"):
        with pytest.raises(CheckpointError, match=f"{missing}: no such model folder"):
            CLIPGS.from_pretrained(missing)


def test_local_files_only_never_downloads_a_teacher(tmp_path, monkeypatch, online):
    """``local_files_only=True`` (what ``prepare`` uses to look for the paper's teacher): a teacher whose weights
    are not in the Hugging Face cache is unavailable at once, with the Hub online, and no request is made."""
    import socket

    from clip_gs.hub.downloads import is_offline
    from clip_gs.teachers import load_teacher

    def no_network(*args, **kwargs):
        raise AssertionError("a request was made")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert not is_offline()
    with pytest.raises(WeightsUnavailableError, match=r"EVA02-E-14-plus / laion2b_s9b_b144k.*local_files_only"):
        load_teacher("EVA02-E-14-plus/laion2b_s9b_b144k", local_files_only=True)
