"""The model-page demo (``clip_gs.demo``, ``clip-gs demo``, ``examples/space/app.py``).

Mechanics (settings, previews, the 3D viewer's file, errors, label defaults, model loading, the
gallery) run on a tiny random model without a server. The page itself is driven as a person uses
it, against a really trained model (the ``trained_run`` fixture, tests/conftest.py), on a server
started on 127.0.0.1 for this module: through its API with ``gradio_client`` and in headless
Chromium with Selenium (skipped when ``chromium`` is absent; CI installs it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_gs.data.synthetic import make_object
from clip_gs.demo import DemoService, DemoSettings
from clip_gs.demo.gallery import GALLERY_FILE, PER_CLASS, build_gallery, gallery_items, read_gallery
from clip_gs.demo.service import model_labels, preview_cloud, viewer_file
from clip_gs.errors import ConfigError, GaussianFormatError, UnsupportedFormatError, WeightsUnavailableError
from clip_gs.gaussians import load_gaussians, save_gaussians
from clip_gs.gaussians.assets import save_asset
from clip_gs.teachers.label_options import parse_labels
from clip_gs.teachers.prompts import load_label_set
from tests.helpers import encode_compressed_ply, encode_spz, free_port, write_mesh, write_model

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def write_object(path: Path, shape: str = "torus", color: str = "red", n: int = 2048, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = make_object(shape, seed=seed, num_gaussians=n, color=color, pattern="solid", pose="upright")
    save_asset(obj.cloud, path)  # upright, and declared so
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from clip_gs.teachers import load_teacher

    return write_model(tmp_path_factory.mktemp("demo-model"), str(load_teacher("synthetic-clip").identity))


@pytest.fixture(scope="module")
def service(tiny_model, tmp_path_factory) -> DemoService:
    cache = tmp_path_factory.mktemp("demo-cache")
    return DemoService(DemoSettings(model=str(tiny_model), device="cpu", cache_dir=cache, preview_size=64,
                                    preview_gaussians=1000, max_file_mb=0.5))  # fmt: skip


# ---------------------------------------------------------------------------- without a server
def test_the_package_and_the_cli_import_without_gradio():
    code = (
        "import sys; sys.modules['gradio'] = None\n"
        "import clip_gs.demo, clip_gs.cli\n"
        "from clip_gs.errors import MissingDependencyError\n"
        "args = clip_gs.cli.build_parser().parse_args(['demo', '--model', 'm', '--port', '7999'])\n"
        "assert args.func.__name__ == 'run_demo' and args.port == 7999\n"
        "try:\n    clip_gs.demo.build_demo(clip_gs.demo.DemoSettings())\n"
        "except MissingDependencyError as exc:\n    print('refused:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: the demo needs Gradio: pip install 'clip-gs[demo]'" in out.stdout


def test_settings_from_the_environment_and_the_command_line(tmp_path):
    from clip_gs.cli import build_parser
    from clip_gs.demo.cli import settings_from_args

    env = {"CLIP_GS_DEMO_MODEL": "org/model", "CLIP_GS_DEMO_MAX_FILE_MB": "2.5", "CLIP_GS_DEMO_PORT": "7001"}
    settings = DemoSettings.from_env(env, port=7002)
    assert (settings.model, settings.max_file_mb, settings.max_file_bytes, settings.port) == (
        "org/model",
        2.5,
        2_500_000,
        7002,
    )
    assert settings.host == "127.0.0.1" and settings.k == 5
    with pytest.raises(ConfigError, match="CLIP_GS_DEMO_PREVIEW_SIZE='big': not a valid int"):
        DemoSettings.from_env({"CLIP_GS_DEMO_PREVIEW_SIZE": "big"})
    with pytest.raises(ConfigError, match="max_file_mb must be > 0"):
        DemoSettings(max_file_mb=0)
    args = build_parser().parse_args(["demo", "--model", "runs/x/export", "--port", "7003", "--max-file-mb", "10",
                                      "--cache-dir", str(tmp_path)])  # fmt: skip
    settings = settings_from_args(args)
    assert (settings.model, settings.port, settings.max_file_mb, settings.cache) == (
        "runs/x/export",
        7003,
        10.0,
        tmp_path,
    )
    assert DemoSettings(cache_dir=None).cache.parts[-2:] == ("clip-gs", "demo")


def test_preview_thinning_keeps_the_covered_area():
    cloud = make_object("cube", seed=1, num_gaussians=4000).cloud
    assert preview_cloud(cloud, 4000) is cloud
    thin = preview_cloud(cloud, 1000, seed=3)
    assert thin.num_gaussians == 1000
    # each kept splat covers 4x the area: scales x 2
    kept = cloud.resample(1000, seed=3)
    torch.testing.assert_close(thin.scales, kept.scales * 2.0)
    torch.testing.assert_close(thin.means, kept.means)
    area = lambda c: (c.scales.sort(dim=-1).values[:, 1:].prod(-1)).sum()
    assert math.isclose(float(area(thin)), float(area(cloud)), rel_tol=0.1)


def test_preview_classify_and_bad_uploads(service, tmp_path):
    torus = write_object(tmp_path / "torus.ply", n=3000)
    shown = service.preview(torus)
    assert shown.image.size == (2 + 2 * (64 + 2), 2 + 2 * (64 + 2)) and (shown.num_gaussians, shown.rendered) == (
        3000,
        1000,
    )
    pixels = np.asarray(shown.image)
    assert (pixels[..., 0] > 150).sum() > 500 and ((pixels[..., 0] > 150) & (pixels[..., 1] < 80)).sum() > 500  # red
    assert "1,000 of its 3,000 Gaussians" in shown.caption()

    result = service.classify(torus, service.settings.model, "torus, cube,\nsphere", k=2)
    assert result.ok and len(result.labels) == 2 and {s.label for s in result.labels} <= {"torus", "cube", "sphere"}
    assert all(0 <= s.score <= 1 for s in result.labels) and result.labels[0].score >= result.labels[1].score

    corrupt = tmp_path / "corrupt.ply"
    corrupt.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\0")
    with pytest.raises(GaussianFormatError, match="corrupt.ply: truncated PLY"):
        service.preview(corrupt)
    failed = service.classify(corrupt, service.settings.model, "torus, cube")
    assert not failed.ok and failed.error.startswith("GaussianFormatError: ") and "truncated PLY" in failed.error
    text = tmp_path / "notes.txt"
    text.write_text("not a 3D file")
    with pytest.raises(UnsupportedFormatError, match="notes.txt: not a recognised 3DGS file"):
        service.preview(text)
    big = tmp_path / "big.splat"
    big.write_bytes(b"\0" * 600_000)
    with pytest.raises(ConfigError, match=r"big.splat is 0.6 MB, over this demo's upload limit of 0.5 MB \(a setting"):
        service.classify(big, service.settings.model, "torus")
    with pytest.raises(ConfigError, match="no upload: choose a file first"):
        service.preview(None)
    with pytest.raises(ConfigError, match="label set is empty"):
        service.classify(torus, service.settings.model, " , \n")
    with pytest.raises(ConfigError, match="duplicate class names"):
        parse_labels("cube, cube")


def test_the_3d_viewer_file_of_each_format(tmp_path):
    cloud = make_object("cone", seed=2, num_gaussians=600).cloud
    ply = save_gaussians(cloud, tmp_path / "a.ply")
    splat = save_gaussians(cloud, tmp_path / "a.splat")
    spz = tmp_path / "a.spz"
    spz.write_bytes(encode_spz(cloud))
    compressed = tmp_path / "a.compressed.ply"
    compressed.write_bytes(encode_compressed_ply(cloud))
    mesh = write_mesh(tmp_path / "box.obj")
    off = tmp_path / "box.off"
    import trimesh

    trimesh.creation.box().export(off)
    out = tmp_path / "views"
    out.mkdir()
    assert viewer_file(ply, out) == ply and viewer_file(splat, out) == splat and viewer_file(mesh, out) == mesh
    assert viewer_file(off, out) is None
    for source in (spz, compressed):
        shown = viewer_file(source, out)
        assert shown.suffix == ".ply" and shown.parent.parent == out and not shown.name.endswith(".compressed.ply")
        torch.testing.assert_close(load_gaussians(shown).means, load_gaussians(source).means)
        assert viewer_file(source, out) == shown  # the same upload again: converted once, no new folder
    assert len(list(out.iterdir())) == 2


def test_default_label_sets_of_models(tiny_model, tmp_path):
    from clip_gs.model.loaded import load_model

    assert model_labels(load_model(tiny_model, device="cpu")) == (
        load_label_set("synthetic"),
        "the synthetic set (the model's teacher is synthetic-clip)",
    )
    other = shutil.copytree(tiny_model, tmp_path / "other")
    (other / "teacher.json").write_text(json.dumps({"teacher": "open_clip:ViT-B-32/openai"}))
    assert model_labels(load_model(other, device="cpu"))[1] == "ModelNet40"
    (other / "metrics.json").write_text(json.dumps({"metrics": {}, "data": {"labels": ["chair", "lamp"]}}))
    assert model_labels(load_model(other, device="cpu")) == (
        ["chair", "lamp"],
        "the labels of the model's training data",
    )


def test_the_service_keeps_at_most_max_models_loaded(tiny_model, tmp_path):
    copies = [shutil.copytree(tiny_model, tmp_path / f"m{i}") for i in range(3)]
    service = DemoService(DemoSettings(device="cpu", cache_dir=tmp_path / "cache", max_models=2))
    first = service.model(str(copies[0]))
    service.model(str(copies[1]))
    assert service.model(str(copies[0])) is first  # still loaded, and now the most recently used
    service.model(str(copies[2]))  # drops m1, the least recently used
    assert list(service._models) == [str(copies[0]), str(copies[2])]
    assert service.model(str(copies[1])) is not None and list(service._models) == [str(copies[2]), str(copies[1])]
    with pytest.raises(ConfigError, match="max_models"):
        DemoSettings(max_models=0)


def test_without_a_model_the_page_says_what_to_do(tiny_model, tmp_path, offline_cache):
    pytest.importorskip("gradio")
    from clip_gs.demo.app import NO_MODEL_HELP, model_status

    service = DemoService(DemoSettings(device="cpu", cache_dir=tmp_path / "cache"))
    status, labels = model_status(service, None)
    assert status.startswith("**No model is loaded.** ConfigError: no model is loaded") and NO_MODEL_HELP in status
    assert labels.split(", ") == load_label_set("modelnet40")
    status, _ = model_status(service, "org/absent")
    assert "WeightsUnavailableError" in status and "`hf download org/absent`" in status and NO_MODEL_HELP in status
    status, _ = model_status(service, str(tmp_path / "nowhere"))
    assert "CheckpointError: " in status and "nowhere: no such model folder" in status
    with pytest.raises(WeightsUnavailableError):
        service.model("org/absent")
    # a Hub repo id in the (offline) cache loads
    for name in ("config.json", "model.safetensors", "teacher.json"):
        offline_cache.place("org/tiny", name, tiny_model / name)
    status, labels = model_status(service, "org/tiny")
    assert status.startswith("**Model** `org/tiny` (clip-gs:clip-gs-tiny@sha256:"), status
    assert labels.split(", ") == load_label_set("synthetic")


def test_the_gallery_is_built_once(tmp_path):
    items = build_gallery(tmp_path / "g", num_gaussians=256)
    assert len(items) == 13 * PER_CLASS and items == gallery_items()
    files = sorted(p.name for p in (tmp_path / "g").glob("*.ply"))
    assert files == sorted(i.file for i in items) and len({i.caption for i in items}) == len(items)
    assert read_gallery(tmp_path / "g")["torus-orange.ply"].caption == "an orange torus"
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "g").glob("*.ply")}
    build_gallery(tmp_path / "g", num_gaussians=256)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "g").glob("*.ply")}
    before = (tmp_path / "g" / "cube-green.ply").read_bytes()
    build_gallery(tmp_path / "g", num_gaussians=300)  # another recipe: rewritten
    assert load_gaussians(tmp_path / "g" / "cube-green.ply").num_gaussians == 300
    assert before != (tmp_path / "g" / "cube-green.ply").read_bytes()
    assert json.loads((tmp_path / "g" / GALLERY_FILE).read_text())["num_gaussians"] == 300


# ---------------------------------------------------------------------------- the served page

@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    """The demo served on 127.0.0.1 for the trained model; stopped at the end of the module."""
    root = tmp_path_factory.mktemp("served")
    env = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "GRADIO_TEMP_DIR": str(root / "gradio"), "XDG_CACHE_HOME": str(root / "cache"),
           "XDG_CONFIG_HOME": str(root / "config")}  # fmt: skip
    pytest.importorskip("gradio")  # before the environment changes: a skip leaves nothing behind
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from clip_gs.demo import launch_demo

        settings = DemoSettings.from_env(model=str(trained_run.model_dir), port=free_port(), device="cpu",
                                         max_file_mb=30.0)  # fmt: skip
        demo, url = launch_demo(settings, block=False)
        try:
            yield demo, url, root
        finally:
            demo.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gallery_caption(served, label: str) -> tuple[str, str]:
    items = read_gallery(served[0].clip_gs_service.gallery_dir)
    item = next(i for i in items.values() if i.label == label)
    return item.file, item.caption


def render_png(path: Path, shape: str, color: str) -> Path:
    from clip_gs.render import contact_sheet, orbit_cameras, render_cloud

    cloud = make_object(shape, seed=11, num_gaussians=4096, color=color, pattern="solid", pose="upright").cloud
    camera = orbit_cameras(1, elevation_deg=20.0, width=224, height=224)
    contact_sheet(render_cloud(cloud, camera, background=torch.ones(3)).rgb, padding=0).save(path)
    return path


@pytest.mark.slow
def test_api_upload_classify_and_search(served, tmp_path):
    from gradio_client import Client, handle_file

    demo, url, _ = served
    assert url.startswith("http://127.0.0.1:")
    client = Client(url, analytics_enabled=False, verbose=False)
    torus = write_object(tmp_path / "torus.ply", "torus", "red", n=8192, seed=5)
    image, view, note = client.predict(handle_file(str(torus)), api_name="/preview")
    assert Path(image).is_file() and Path(view).name == "torus.ply" and note.startswith("Preview: four views")
    labels = ", ".join(load_label_set("synthetic"))
    scores, message = client.predict(handle_file(str(torus)), labels, 5, api_name="/classify")
    top5 = [c["label"] for c in scores["confidences"]]
    confidences = [c["confidence"] for c in scores["confidences"]]
    assert len(set(top5)) == 5 and set(top5) <= set(load_label_set("synthetic")), (top5, message)
    assert "torus" in top5, (top5, message)
    assert confidences == sorted(confidences, reverse=True) and 0 < sum(confidences) <= 1 + 1e-6
    assert message.startswith(f"Top label: **{top5[0]}**")

    file, caption = gallery_caption(served, "torus")
    sheet, table, message = client.predict(caption, 5, api_name="/search_text")
    assert Path(sheet).is_file() and table["headers"] == ["rank", "score", "caption", "label", "file"]
    assert [row[0] for row in table["data"]] == [1, 2, 3, 4, 5]
    assert table["data"][0][4] == file and table["data"][0][2] == caption, (caption, table["data"])  # that object first

    photo = render_png(tmp_path / "photo.png", "cube", "green")
    sheet, table, message = client.predict(handle_file(str(photo)), 5, api_name="/search_image")
    assert Path(sheet).is_file() and len(table["data"]) == 5
    assert "green" in table["data"][0][2], table["data"]  # the photo's colour (its shape: see above)

    corrupt = tmp_path / "broken.spz"
    corrupt.write_bytes(b"not an spz file")
    image, view, note = client.predict(handle_file(str(corrupt)), api_name="/preview")
    assert image is None and note.startswith("**Error** GaussianFormatError: broken.spz"), note
    assert client.predict("", 5, api_name="/search_text")[2] == (
        "**Error** ConfigError: the text query is empty: describe an object, e.g. 'a red torus'"
    )
    # the server still answers
    assert client.predict(handle_file(str(torus)), labels, 3, api_name="/classify")[0]["label"] == top5[0]


@pytest.mark.slow
def test_browser_upload_classify_search_and_screenshot(served, tmp_path):
    if shutil.which("chromium") is None or not Path(CHROMEDRIVER).exists():
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    demo, url, root = served
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1900",
                 "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
        torus = write_object(tmp_path / "browser_torus.ply", "torus", "red", n=8192, seed=5)
        upload.send_keys(str(torus))
        wait.until(EC.text_to_be_present_in_element((By.ID, "upload"), "browser_torus"))  # gr.File: stem + ext
        wait.until(EC.text_to_be_present_in_element((By.ID, "classify-note"), "Top label"))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#preview img")))
        labels_text = driver.find_element(By.ID, "labels-out").text
        top = driver.find_element(By.ID, "classify-note").text.split("Top label: ")[1].split(" (")[0]
        assert top in labels_text and top in load_label_set("synthetic") and "torus" in labels_text

        file, caption = gallery_caption(served, "torus")
        box = driver.find_element(By.CSS_SELECTOR, "#query-text textarea")
        box.send_keys(caption)
        driver.find_element(By.ID, "search-text").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "search-note"), "hits; best"))
        wait.until(EC.text_to_be_present_in_element((By.ID, "hits-table"), caption))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#hits img")))
        time.sleep(1.0)  # let the images paint
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, height + 150)  # the whole page in one screenshot
        time.sleep(0.5)
        shot = Path(os.environ.get("CLIP_GS_DEMO_SCREENSHOT", tmp_path / "demo.png"))
        driver.save_screenshot(str(shot))
        rect = driver.find_element(By.CSS_SELECTOR, "#preview img").rect
        note = driver.find_element(By.ID, "search-note").text
        table = driver.find_element(By.ID, "hits-table").text
    finally:
        driver.quit()
    best = note.split("best: ")[1].split(" (score")[0]
    assert best == caption and caption in table, (note, table)  # the captioned object is the first hit
    page = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    x, y, w, h = (int(rect[k]) for k in ("x", "y", "width", "height"))
    assert w > 100 and h > 100
    area = page[y : y + h, x : x + w]
    red = (area[..., 0] > 150) & (area[..., 1] < 90) & (area[..., 2] < 90)
    assert red.mean() > 0.05, f"the preview area is blank ({red.mean():.3f} red)"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["clip-gs demo", "python app.py"])
def test_the_command_and_the_space_folder_serve_the_page(how, trained_run, tmp_path):
    """``clip-gs demo --model DIR`` (run as ``python -m clip_gs demo``, the same entry point) and the
    Space folder's ``python app.py`` (model from ``CLIP_GS_DEMO_MODEL``) start in their own
    processes, serve the page with the model loaded on 127.0.0.1, and answer a classify call; the
    process is stopped (killed if it does not stop) at the end."""
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "CLIP_GS_DEMO_CACHE_DIR": str(tmp_path / "demo"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    if how == "clip-gs demo":
        argv, cwd = [sys.executable, "-m", "clip_gs", "demo", "--model", str(trained_run.model_dir),
                     "--port", str(port), "--device", "cpu"], REPO_ROOT  # fmt: skip
    else:
        argv, cwd = [sys.executable, "app.py"], REPO_ROOT / "examples" / "space"
        env |= {"CLIP_GS_DEMO_MODEL": str(trained_run.model_dir), "CLIP_GS_DEMO_DEVICE": "cpu",
                "GRADIO_SERVER_PORT": str(port)}  # fmt: skip
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 180
            while f"serving {url}" not in log_path.read_text():  # this server's own line, not another's port
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.5)
            client = Client(url, analytics_enabled=False, verbose=False)
            torus = write_object(tmp_path / "torus.ply", "torus", "red", n=4096, seed=5)
            job = client.submit(handle_file(str(torus)), "torus, cube, sphere", 3, api_name="/classify")
            scores, message = job.result(timeout=120)
            assert [c["label"] for c in scores["confidences"]][0] == "torus", (scores, message)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
