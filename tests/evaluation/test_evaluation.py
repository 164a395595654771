"""Evaluation protocols: zero-shot, few-shot, retrieval (hand-computed values), the report, the pictures, ``clip-gs eval``."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_gs.cli import main
from clip_gs.data.shards import write_label_embeddings
from clip_gs.data.triplets import Manifest
from clip_gs.errors import CheckpointError, ConfigError, DatasetError
from clip_gs.evaluation import (
    draw_confusion,
    draw_retrieval_grid,
    evaluate,
    few_shot,
    fit_linear_probe,
    retrieval,
    retrieval_recall,
    zero_shot,
)
from clip_gs.evaluation.metrics import RETRIEVAL_DEFINITIONS
from clip_gs.evaluation.plots import CORRECT, RetrievalRow, RetrievedItem
from clip_gs.evaluation.report import build_report
from clip_gs.evaluation.run import embed
from clip_gs.evaluation.sources import PreparedSplit, camera_up_axis, zero_shot_classes
from clip_gs.lightning import CLIPGSModule, GaussianDataModule
from clip_gs.lightning.export import export_pretrained
from clip_gs.model import CLIPGS
from clip_gs.render import render_view
from clip_gs.teachers import TeacherMismatchError
from tests.helpers import CLASSES, TEACHER, TINY, E, N, write_learnable_dataset


def unit(rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


# ---------------------------------------------------------------------------- zero-shot
CLASS_W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # a, b, c


def test_zero_shot_by_hand():
    x = torch.tensor([[1.0, 0.1], [0.2, 1.0], [0.0, 1.0], [-1.0, -0.5], [-1.0, 1.0]])
    labels = ["a", "a", "b", "c", "b"]
    # scores (cosines): x0 [.995, .0995, -.995] -> a; x1 [.196, .98, -.196] -> b (a ranks 2nd);
    # x2 -> b; x3 [-.894, -.447, .894] -> c; x4 [-.707, .707, .707] -> tie b/c, b (lower index)
    r = zero_shot(x, labels, ["a", "b", "c"], CLASS_W, ks=(1, 2, 3, 5))
    assert r.topk == {1: pytest.approx(0.8), 2: 1.0, 3: 1.0, 5: 1.0}  # k capped at C = 3
    assert r.per_class == {"a": 0.5, "b": 1.0, "c": 1.0}
    assert r.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]  # rows true, columns predicted
    assert r.predictions.tolist() == [0, 1, 1, 2, 1]
    assert r.num_samples == 5


def test_zero_shot_ties_go_to_the_lower_index_consistently():
    x = torch.tensor([[-1.0, 1.0]])  # b and c score .707 each
    r = zero_shot(x, ["c"], ["a", "b", "c"], CLASS_W)
    assert r.topk[1] == 0.0 and r.topk[3] == 1.0  # c ranks after b
    assert r.predictions.tolist() == [1] and r.confusion[2].tolist() == [0, 1, 0]


def test_zero_shot_classes_without_samples_are_not_in_per_class():
    r = zero_shot(torch.tensor([[1.0, 0.0]]), ["a"], ["a", "b", "c"], CLASS_W)
    assert r.per_class == {"a": 1.0}


def test_zero_shot_unknown_label_names_the_sample():
    with pytest.raises(DatasetError, match=r"1 label\(s\) not among the 3 class names: sample 1: 'dog'"):
        zero_shot(torch.ones(2, 2), ["a", "dog"], ["a", "b", "c"], CLASS_W)
    with pytest.raises(ConfigError, match="one width"):
        zero_shot(torch.ones(2, 3), ["a", "b"], ["a", "b", "c"], CLASS_W)
    with pytest.raises(ConfigError, match="class names"):
        zero_shot(torch.ones(1, 2), ["a"], ["a", "a", "c"], CLASS_W)


# ---------------------------------------------------------------------------- retrieval
G = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
T = [[1.0, 0.2], [1.0, 0.0], [-1.0, 0.1]]
VIEWS = [[[1.0, 0.1], [0.0, -1.0]], [[0.1, 1.0], [0.0, 1.0]], [[-1.0, 0.0], [1.0, 0.05]]]


def test_retrieval_by_hand():
    # the every-view definitions (every view a query; any own view a hit), reached by name
    queries, gallery = RETRIEVAL_DEFINITIONS["every-view"]
    r = retrieval(torch.tensor(G), torch.tensor(T), torch.tensor(VIEWS), ks=(1, 2, 5), image_queries=queries,
                  image_gallery=gallery)  # fmt: skip
    # text -> 3D: t0 -> g0 first; t1 [1, 0] scores g0 1 > g1 0 (rank 1); t2 -> g2 first
    assert r["text_to_3d"] == {"r1": pytest.approx(2 / 3), "r2": 1.0, "r5": 1.0}
    # 3D -> text: g0 [.981, 1, -.995] own t0 rank 1; g1 [.196, 0, .0995] own t1 rank 2; g2 rank 0
    assert r["3d_to_text"] == {"r1": pytest.approx(1 / 3), "r2": pytest.approx(2 / 3), "r5": 1.0}
    # image -> 3D, every view a query: v00 0, v01 [0, -1] ties g0 with g2 -> 1, v10 0, v11 0, v20 0,
    # v21 [1, .05] -> g0 and g1 above g2 -> 2
    assert r["image_to_3d"] == {"r1": pytest.approx(4 / 6), "r2": pytest.approx(5 / 6), "r5": 1.0}
    # 3D -> image, a hit if any own view is in the top k: g0's best own view v00 (.995) is beaten
    # by obj 2's v21 (.9988) -> rank 1; g1 best v11 (1) rank 0; g2 best v20 (1) rank 0
    assert r["3d_to_image"] == {"r1": pytest.approx(2 / 3), "r2": 1.0, "r5": 1.0}


def test_retrieval_masks_leave_out_captions_and_views():
    image_mask = torch.tensor([[True, False], [True, True], [True, False]])  # drop v01 and v21
    r = retrieval(torch.tensor(G), torch.tensor(T), torch.tensor(VIEWS), image_mask=image_mask, ks=(1,))
    assert r["image_to_3d"]["r1"] == 1.0 and r["3d_to_image"]["r1"] == 1.0
    text_mask = torch.tensor([True, False, True])  # object 1 has no caption
    r = retrieval(torch.tensor(G), torch.tensor(T), torch.tensor(VIEWS), text_mask=text_mask, ks=(1,))
    assert r["text_to_3d"]["r1"] == 1.0 and r["3d_to_text"]["r1"] == 1.0
    with pytest.raises(DatasetError, match="none of the 3 objects has a caption"):
        retrieval(torch.tensor(G), torch.tensor(T), torch.tensor(VIEWS), text_mask=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"image \[N, V, E\]"):
        retrieval(torch.tensor(G), torch.tensor(T), torch.tensor(VIEWS)[:2])


def test_retrieval_recall_is_the_same_ranking_as_retrieval():
    recall = retrieval_recall(torch.tensor(G), torch.tensor(T), torch.ones(3, dtype=torch.bool), ks=(1, 2))
    full = retrieval(torch.tensor(G), torch.tensor(T), torch.tensor(VIEWS), ks=(1, 2))
    for k in (1, 2):
        assert recall[f"3d_to_text_r{k}"].item() == pytest.approx(full["3d_to_text"][f"r{k}"])
        assert recall[f"text_to_3d_r{k}"].item() == pytest.approx(full["text_to_3d"][f"r{k}"])


def test_collapsed_embeddings_score_zero_not_one():
    same = torch.ones(4, 2)
    r = retrieval(same, same, same[:, None], ks=(1,))
    assert all(r[d]["r1"] == 0.0 for d in r)


# three objects whose image definitions all disagree: object 0 has a good view and one close to object 1
DEF_G = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
DEF_VIEWS = [[[1.0, 0.0], [0.3, 0.954]], [[0.5, 0.866], [9.0, 9.0]], [[-1.0, 0.0], [9.0, 9.0]]]
DEF_MASK = [[True, True], [True, False], [True, False]]  # objects 1 and 2 have one view each


@pytest.mark.parametrize("name, image_to_3d, three_d_to_image", [
    # one-view (seed 0 draws object 0's second view, [.3, .954]):
    #   image -> 3D: v01 scores g1 .954 > g0 .3 (miss); v10 -> g1, v20 -> g2 (hits): 2/3
    #   3D -> image over {v01, v10, v20}: g0 scores v10 .5 > own .3 (miss); g1 scores v01 .954 > own .866 (miss); g2 hit: 1/3
    ("one-view", 2 / 3, 1 / 3),
    # every-view: queries v00 (hit), v01 (miss), v10, v20 (hits): 3/4
    #   any-view over {v00, v01, v10, v20}: g0's best own view v00 (1) first; g1's own .866 < v01 .954 (miss); g2 hit: 2/3
    ("every-view", 3 / 4, 2 / 3),
    # mean-view: object 0's mean [.65, .477] scores g0 .806 > g1 .591 (hit), so 3/3;
    #   3D -> image over the means {[.806, .591], v10, v20}: g0 .806 > .5, g1 .866 > .591, g2: all hits
    ("mean-view", 1.0, 1.0),
])  # fmt: skip
def test_retrieval_definitions_differ_by_hand(name, image_to_3d, three_d_to_image):
    from clip_gs.evaluation.metrics import drawn_views, retrieval_definitions

    mask = torch.tensor(DEF_MASK)
    assert drawn_views(mask, 0).tolist() == [1, 0, 0]  # the one-view draw the hand count uses
    queries, gallery = RETRIEVAL_DEFINITIONS[name]
    g = torch.tensor(DEF_G)
    r = retrieval(g, g, torch.tensor(DEF_VIEWS), image_mask=mask, ks=(1,), image_queries=queries, image_gallery=gallery)
    assert r["image_to_3d"]["r1"] == pytest.approx(image_to_3d)
    assert r["3d_to_image"]["r1"] == pytest.approx(three_d_to_image)
    assert r["text_to_3d"]["r1"] == 1.0 and r["3d_to_text"]["r1"] == 1.0  # the text directions do not depend on it
    words = retrieval_definitions(queries, gallery, 0)
    assert f"image_queries={queries}" in words["image_to_3d"]["queries"]
    assert f"image_gallery={gallery}" in words["3d_to_image"]["gallery"]
    assert set(words) == {"text_to_3d", "3d_to_text", "image_to_3d", "3d_to_image"}


def test_the_one_view_draw_follows_the_seed_and_the_default_is_one_view():
    from clip_gs.evaluation.metrics import DEFAULT_IMAGE_GALLERY, DEFAULT_IMAGE_QUERIES, drawn_views

    assert (DEFAULT_IMAGE_QUERIES, DEFAULT_IMAGE_GALLERY) == RETRIEVAL_DEFINITIONS["one-view"]
    mask = torch.tensor(DEF_MASK)
    seed = next(s for s in range(1, 50) if drawn_views(mask, s)[0] == 0)  # a seed drawing object 0's first view
    g = torch.tensor(DEF_G)
    r = retrieval(g, g, torch.tensor(DEF_VIEWS), image_mask=mask, ks=(1,), view_seed=seed)
    # v00 [1, 0] is drawn: image -> 3D all hits; 3D -> image over {v00, v10, v20}: g1 scores own .866 > v00 0
    assert r["image_to_3d"]["r1"] == 1.0 and r["3d_to_image"]["r1"] == 1.0
    many = torch.rand(500, 9, generator=torch.Generator().manual_seed(0)) > 0.4
    picked = drawn_views(many, 3)
    assert ((picked < 0) == ~many.any(1)).all() and many[picked >= 0, picked[picked >= 0]].all()
    with pytest.raises(ConfigError, match="image_queries must be one of"):
        retrieval(g, g, torch.tensor(DEF_VIEWS), image_queries="all")


# ---------------------------------------------------------------------------- few-shot
def clusters(num_classes: int, per_class: int, spread: float, seed: int = 0, dim: int = 32):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    x = torch.cat([centres[c] + spread * torch.randn(per_class, dim, generator=g) for c in range(num_classes)])
    return x, [f"class-{c}" for c in range(num_classes) for _ in range(per_class)]


def test_probe_reaches_the_optimum():
    x, labels = clusters(3, 6, 0.5)
    y = torch.tensor([int(label.split("-")[1]) for label in labels])
    w, b = fit_linear_probe(F.normalize(x, dim=-1), y, 3, l2=1e-2)
    assert ((F.normalize(x, dim=-1).double() @ w.T + b).argmax(1) == y).all()
    # the gradient of the regularised loss vanishes at the returned weights (a convex optimum)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = F.cross_entropy(F.normalize(x, dim=-1).double() @ w.T + b, y) + 1e-2 * w.square().sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5


def test_few_shot_separated_clusters_reach_100_percent_and_seeds_fix_episodes():
    x, labels = clusters(6, 12, 0.2)
    r = few_shot(x, labels, ways=5, shots=2, episodes=20, queries_per_class=5, seed=3)
    assert r.mean == 1.0 and r.std == 0.0 and r.episodes == 20 and r.name == "5-way-2-shot"
    noisy, labels = clusters(6, 12, 1.5)
    a = few_shot(noisy, labels, 5, 2, episodes=20, queries_per_class=5, seed=3)
    b = few_shot(noisy, labels, 5, 2, episodes=20, queries_per_class=5, seed=3)
    c = few_shot(noisy, labels, 5, 2, episodes=20, queries_per_class=5, seed=4)
    assert torch.equal(a.accuracies, b.accuracies) and a.mean == b.mean
    assert not torch.equal(a.accuracies, c.accuracies)
    assert a.std == pytest.approx(float(a.accuracies.double().std(unbiased=False)), abs=1e-6)


def test_few_shot_random_labels_are_at_chance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 32, generator=g)
    labels = [f"c{int(i)}" for i in torch.randint(0, 5, (200,), generator=g)]
    r = few_shot(x, labels, ways=5, shots=5, episodes=40, queries_per_class=10, seed=0)
    assert 0.12 < r.mean < 0.30  # chance: 0.2


def test_few_shot_refuses_too_small_data_naming_what_is_missing():
    x, labels = clusters(3, 8, 0.2)
    with pytest.raises(DatasetError, match=r"only 3 classes .* for 5 ways"):
        few_shot(x, labels, ways=5, shots=1)
    x2, labels2 = x[:20], labels[:20]  # class-2 keeps 4 samples
    with pytest.raises(DatasetError, match=r"needs 7 samples per class in 3 classes; only 2 of 3 classes have them; "
                                           r"1 have fewer: 'class-2' has 4"):  # fmt: skip
        few_shot(x2, labels2, ways=3, shots=2, queries_per_class=5)
    # with 2 ways the small class is left out of the draws, and the result says so
    r = few_shot(x2, labels2, ways=2, shots=2, queries_per_class=5, episodes=5)
    assert r.excluded == ("class-2",) and r.mean > 0.9  # the two remaining clusters are well separated
    with pytest.raises(ConfigError, match="ways must be an int >= 2"):
        few_shot(x, labels, ways=1, shots=1)


# ---------------------------------------------------------------------------- report, teacher, cameras
def test_report_shape():
    tasks = {"zeroshot": {"top1": 0.5, "top3": 1.0, "top5": 1.0, "per_class": {"a": 0.5}, "label_set": "dataset",
                          "num_classes": 3, "num_samples": 2}}  # fmt: skip
    report = build_report("m", "d", "test", "t", 2, tasks)
    assert set(report) == {"model", "data", "split", "teacher", "num_objects", "tasks", "created", "clip_gs_version"}
    assert report["created"].endswith("+00:00") and report["clip_gs_version"]
    assert build_report("m", "d", "test", "t", 2, {}, {"fewshot": "x"})["failures"] == {"fewshot": "x"}
    json.dumps(report)


def test_camera_up_axis_of_orbit_cameras():
    from clip_gs.render import orbit_cameras

    for up in ("+y", "-y", "+z", "-z"):
        assert camera_up_axis(orbit_cameras(3, up=up).viewmats[1]) == up


# ---------------------------------------------------------------------------- pictures
def pixels(image: Image.Image) -> torch.Tensor:
    """``[H * W, 3]`` uint8 RGB values."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).reshape(-1, 3)


def ink(image: Image.Image) -> float:
    """Share of pixels that are not white."""
    return float((pixels(image).int().sum(1) < 3 * 250).float().mean())


def count_colour(image: Image.Image, colour) -> int:
    return int((pixels(image) == torch.tensor(colour, dtype=torch.uint8)).all(1).sum())


@pytest.mark.parametrize("c", [13, 40])
def test_confusion_png_sizes_and_content(c, tmp_path):
    names = [f"class name {i}" for i in range(c)]
    image = draw_confusion(torch.eye(c, dtype=torch.long) * 3, names, "title")
    cell = max(20, min(48, 720 // c))
    assert image.width > cell * c and image.height > cell * c  # the matrix plus the names
    assert image.width < cell * c + 400 and image.height < cell * c + 400
    rgb = pixels(image).int()
    dark_blue = ((rgb[:, 2] > 150) & (rgb[:, 0] < 80)).sum().item()  # a full-row share is (40, 80, 175)
    assert dark_blue > 0.6 * c * (cell - 2) ** 2  # every diagonal cell is filled
    assert dark_blue < 1.2 * c * cell**2  # and only those
    image.save(tmp_path / "c.png")
    assert Image.open(tmp_path / "c.png").size == image.size
    with pytest.raises(ConfigError):
        draw_confusion(torch.eye(3), names)


def test_thumbnail_and_retrieval_grid():
    from clip_gs.data.synthetic import make_object

    cloud = make_object("cube", seed=0, num_gaussians=256, color="red", pattern="solid").cloud
    rgb = render_view(cloud, 48)
    assert rgb.shape == (48, 48, 3) and 0 <= rgb.min() and rgb.max() <= 1
    thumb = Image.fromarray((rgb * 255).round().to(torch.uint8).numpy())
    assert thumb.size == (48, 48) and 0.05 < ink(thumb) < 0.9
    centre = thumb.getpixel((24, 24))
    assert centre[0] > 150 and centre[1] < 100  # a red object in the middle
    rows = [RetrievalRow("a red cube", [RetrievedItem(thumb, "cube 0.9", True), RetrievedItem(thumb, "x 0.1", False)]),
            RetrievalRow("a blue cube", [RetrievedItem(thumb, "cube 0.5", False)], "rank 7")]  # fmt: skip
    grid = draw_retrieval_grid(rows, "t")
    assert grid.size == (240 + 2 * (48 + 8 + 10) + 10, 36 + 2 * (48 + 8 + 34 + 10))
    green = count_colour(grid, CORRECT)
    assert green >= 4 * 4 * 48  # the correct item's frame (4 px around a 48 px thumbnail)
    one_row = draw_retrieval_grid(rows[1:])
    assert count_colour(one_row, CORRECT) == 0


# ---------------------------------------------------------------------------- on a prepared dataset
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A learnable dataset (24 test and 8 val objects, 4 classes) and a random tiny model exported with its teacher."""
    root = tmp_path_factory.mktemp("eval")
    data = write_learnable_dataset(root / "data", 4, 8, 24)
    pl.seed_everything(0)
    module = CLIPGSModule(**TINY)
    model_dir = export_pretrained(module.model, root / "model", teacher={"teacher": TEACHER, "embed_dim": E})
    return data, model_dir, module


def test_evaluate_matches_lightning_validation(tiny, tmp_path):
    """The evaluator's zero-shot and 3D<->text numbers equal the module's validation metrics on the same split."""
    data, model_dir, module = tiny
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))  # fmt: skip
    dm = GaussianDataModule(root=str(data), batch_size=8, num_workers=0, num_gaussians=N, views_per_step=3,
                            augment=False, seed=0)  # fmt: skip
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]
    ev = evaluate(CLIPGS.from_pretrained(model_dir), PreparedSplit(data, "val"), precision="fp32", protocols=(), seed=0)
    zs = ev.report["tasks"]["zeroshot"]
    assert zs["top1"] == pytest.approx(val["val/zeroshot_top1"]) and zs["top3"] == pytest.approx(val["val/zeroshot_top3"])
    r = ev.report["tasks"]["retrieval"]
    assert r["3d_to_text"]["r1"] == pytest.approx(val["val/3d_to_text_r1"])
    assert r["text_to_3d"]["r5"] == pytest.approx(val["val/text_to_3d_r5"])
    assert ev.report["num_objects"] == 8 and zs["num_samples"] == 8 and zs["label_set"] == "dataset"


def test_retrieval_definitions_are_in_the_report_beside_the_numbers(tiny, tmp_path):
    from clip_gs.evaluation.cli import format_table
    from clip_gs.evaluation.report import check_eval_report

    data, model_dir, _ = tiny
    model = CLIPGS.from_pretrained(model_dir)
    default = evaluate(model, PreparedSplit(data, "test"), tasks=("retrieval",), precision="fp32", seed=5)
    every = evaluate(model, PreparedSplit(data, "test"), tasks=("retrieval",), precision="fp32", seed=5, image_queries="every-view",
                     image_gallery="any-view")  # fmt: skip
    for ev, (queries, gallery) in ((default, ("one-view", "one-view")), (every, ("every-view", "any-view"))):
        r = ev.report["tasks"]["retrieval"]
        assert f"image_queries={queries}" in r["image_to_3d"]["definition"]["queries"]
        assert f"image_gallery={gallery}" in r["3d_to_image"]["definition"]["gallery"]
        assert all(set(e["definition"]) == {"queries", "gallery", "hit"} for e in r.values())
        split = ev.embeddings
        direct = retrieval(split.shape, split.text, split.images, split.text_mask, split.image_mask, image_queries=queries,
                           image_gallery=gallery, view_seed=5)  # fmt: skip
        assert {d: {k: v for k, v in e.items() if k != "definition"} for d, e in r.items()} == direct
        check_eval_report(json.loads(json.dumps(ev.report)), "report.json")  # the card reads it
        assert "a hit when the caption's own object is among the k most similar" in format_table(ev.report)
    assert "seed 5" in default.report["tasks"]["retrieval"]["image_to_3d"]["definition"]["queries"]


def test_embed_keeps_the_stored_embeddings(tiny):
    data, model_dir, _ = tiny
    model = CLIPGS.from_pretrained(model_dir)
    split = embed(model, PreparedSplit(data, "test"), precision="fp32")
    assert len(split) == 24 and split.shape.shape == (24, E) and split.images.shape == (24, 3, E)
    assert torch.allclose(split.shape.norm(dim=-1), torch.ones(24), atol=1e-5)
    assert split.labels[:4] == [CLASSES[i % 4] for i in range(12, 16)]  # test objects follow train and val
    from clip_gs.data.shards import TripletShardDataset

    first = TripletShardDataset(data / "test")[0]
    assert torch.equal(split.text[0], first.text_embeddings[0]) and torch.equal(split.images[0], first.image_embeddings.half())
    assert torch.allclose(split.shape[0], model.encode(first.cloud, precision="fp32"), atol=1e-5)


def naive_zero_shot_top1(shape, labels, names, weights) -> tuple[float, dict[str, float]]:
    """Top-1 written out per object: the best cosine, ties to the lower class index."""
    hits: dict[str, list[bool]] = {}
    for x, label in zip(F.normalize(shape, dim=-1), labels):
        scores = (F.normalize(weights, dim=-1) @ x).tolist()
        best = max(range(len(names)), key=lambda c: (scores[c], -c))
        hits.setdefault(label, []).append(names[best] == label)
    every = [h for v in hits.values() for h in v]
    return sum(every) / len(every), {c: sum(v) / len(v) for c, v in hits.items()}


def naive_text_to_3d_r1(shape, text) -> float:
    """Each caption's own object strictly first among all objects (a tie is a miss)."""
    sims = F.normalize(text, dim=-1) @ F.normalize(shape, dim=-1).T
    own = sims.diagonal()
    return float(((sims >= own[:, None]).sum(dim=1) == 1).float().mean())


def test_cli_end_to_end(tiny, capsys):
    """The printed and written numbers are the measured ones: zero-shot and text->3D R@1 equal a
    naive per-object computation on the same embeddings, every requested few-shot setting ran."""
    data, model_dir, _ = tiny
    argv = ["eval", "--model", str(model_dir), "--data", str(data), "--fewshot-protocol", "episodes", "--ways", "2", "3",
            "--shots", "2", "--queries", "2", "--episodes", "3", "--grid-queries", "2", "--grid-k", "2",
            "--grid-size", "48", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report_path = Path(out[-1])
    assert report_path == model_dir / "eval" / "report.json"  # default: <model folder>/eval
    assert any(line.startswith("  text_to_3d") for line in out) and any("2-way-2-shot" in line for line in out)
    report = json.loads(report_path.read_text())
    assert report["model"] == str(model_dir) and report["data"] == str(data) and report["split"] == "test"
    assert report["teacher"] == TEACHER and report["num_objects"] == 24
    zs = report["tasks"]["zeroshot"]
    assert zs["num_classes"] == 4 and zs["num_samples"] == 24 and zs["protocol"] == "clip-gs"
    split = embed(CLIPGS.from_pretrained(model_dir), PreparedSplit(data, "test"), precision="auto")
    names, weights, _ = zero_shot_classes(data, None)
    top1, per_class = naive_zero_shot_top1(split.shape, split.labels, names, weights)
    assert zs["top1"] == pytest.approx(top1) and zs["per_class"] == pytest.approx(per_class)
    assert report["tasks"]["retrieval"]["text_to_3d"]["r1"] == pytest.approx(naive_text_to_3d_r1(split.shape, split.text))
    fewshot = report["tasks"]["fewshot"]
    assert set(fewshot) == {"2-way-2-shot", "3-way-2-shot"}
    assert {r["protocol"] for r in fewshot.values()} == {"episodes"} and fewshot["2-way-2-shot"]["episodes"] == 3
    assert set(report["tasks"]["retrieval"]) == {"text_to_3d", "3d_to_text", "image_to_3d", "3d_to_image"}
    for name, size in (("confusion.png", None), ("retrieval.png", (240 + 2 * 66 + 10, 36 + 2 * 100))):
        image = Image.open(model_dir / "eval" / name)
        assert image.size == size if size else image.width > 100
        assert ink(image) > 0.02


def test_cli_reads_an_s3_dataset_through_endpoint_url(tiny, s3_server, tmp_path):
    """``--data s3://... --endpoint-url URL`` scores what the same dataset in a folder scores."""
    import boto3

    data, model_dir, _ = tiny
    client = boto3.client("s3", **s3_server)
    client.create_bucket(Bucket="bucket")
    for path in Path(data).rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "bucket", f"data/{path.relative_to(data).as_posix()}")
    common = ["eval", "--model", str(model_dir), "--task", "zeroshot", "--quiet"]
    assert main([*common, "--data", str(data), "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--data", "s3://bucket/data", "--endpoint-url", s3_server["endpoint_url"],
                 "--out", str(tmp_path / "s3")]) == 0  # fmt: skip
    local, remote = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("local", "s3"))
    assert remote["tasks"] == local["tasks"] and remote["num_objects"] == local["num_objects"] == 24


FIVE = ("sphere", "cube", "torus", "cone", "cylinder")


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """5 classes, 12 train and 20 test objects each: the smallest set the standard 5-way 10-shot fits."""
    root = tmp_path_factory.mktemp("five")
    data = write_learnable_dataset(root / "data", 60, 0, 100, classes=FIVE)
    pl.seed_everything(0)
    module = CLIPGSModule(**TINY)
    model_dir = export_pretrained(module.model, root / "model", teacher={"teacher": TEACHER, "embed_dim": E})
    return data, model_dir


def test_cli_standard_few_shot_prints_mean_and_std_over_ten_runs(five_classes, tmp_path, capsys):
    """The default few-shot protocol: support from train, 20 test queries per class, 10 seeded runs.
    The paper's 10-way 10-shot does not fit 5 classes: that is said, and 5-way 10-shot (the largest
    standard setting that fits) runs instead, named."""
    data, model_dir = five_classes
    rc = main(["eval", "--model", str(model_dir), "--data", str(data), "--task", "fewshot", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 3  # the requested setting could not run
    assert "not run: fewshot/10-way-10-shot: DatasetError: standard few-shot 10-way 10-shot needs 10 classes" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("5-way-10-shot"))
    assert "+-" in line and "standard: 10 runs, support from train, 20 queries per class" in line
    assert "the largest standard setting that fits, run instead of 10-way 10-shot" in line
    entry = json.loads((tmp_path / "report.json").read_text())["tasks"]["fewshot"]["5-way-10-shot"]
    assert (entry["protocol"], entry["episodes"], entry["queries_per_class"], entry["support_split"]) == (
        "standard", 10, 20, "train")
    # the numbers are those of the function on the two splits' embeddings
    from clip_gs.evaluation import standard_few_shot

    model = CLIPGS.from_pretrained(model_dir)
    train, test = embed(model, PreparedSplit(data, "train")), embed(model, PreparedSplit(data, "test"))
    direct = standard_few_shot(train.shape, train.labels, test.shape, test.labels, 5, 10)
    assert entry["mean"] == pytest.approx(direct.mean) and entry["std"] == pytest.approx(direct.std)
    assert rc == 3 and main(["eval", "--model", str(model_dir), "--data", str(data), "--task", "fewshot", "--ways", "5",
                             "--shots", "10", "--out", str(tmp_path / "b"), "--quiet"]) == 0  # fmt: skip


def test_cli_reports_protocols_that_cannot_run_and_goes_on(tiny, tmp_path, capsys):
    data, model_dir, _ = tiny
    argv = ["eval", "--model", str(model_dir), "--data", str(data), "--task", "fewshot", "--fewshot-protocol", "episodes",
            "--ways", "2", "--shots", "6", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv) == 3
    out = capsys.readouterr().out
    assert "not run: fewshot/2-way-6-shot: DatasetError: few-shot 2-way 6-shot with 15 queries" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tasks"] == {} and "fewshot/2-way-6-shot" in report["failures"]
    assert not (tmp_path / "confusion.png").exists()
    # the standard protocol on a 4-object train split: nothing standard fits, and that is said
    assert main(argv[:7] + ["--out", str(tmp_path / "s"), "--quiet"]) == 3
    assert "no standard setting fits" in capsys.readouterr().out


def test_cli_errors_are_typed(tiny, tmp_path, capsys):
    data, model_dir, module = tiny
    assert main(["eval", "--model", str(tmp_path / "nope"), "--data", str(data)]) == 2
    assert "no such model folder" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no such model folder"):
        CLIPGS.from_pretrained(tmp_path / "nope")
    other = export_pretrained(module.model, tmp_path / "other", teacher={"teacher": "fake:another-teacher"})
    assert main(["eval", "--model", str(other), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "different teachers" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_label_set_zero_shot_through_the_teacher(tmp_path):
    """A label set is encoded by the dataset's teacher with the prompt ensemble; another teacher is refused."""
    from clip_gs.teachers import TEMPLATES, load_teacher, zero_shot_weights

    teacher = load_teacher("synthetic-clip")
    identity = str(teacher.identity)
    Manifest(teacher=identity, embed_dim=teacher.embed_dim, counts={"test": 1}, labels=["cube"]).write(tmp_path)
    write_label_embeddings(tmp_path, ["cube"], torch.ones(1, teacher.embed_dim), identity, ["{}"])
    names, weights, where = zero_shot_classes(tmp_path, ["sphere", "cube"], teacher=teacher, dataset_teacher=identity)
    assert names == ["sphere", "cube"] and where == "labels:sphere,cube"
    assert torch.allclose(weights, zero_shot_weights(teacher, names, TEMPLATES))
    names, stored, where = zero_shot_classes(tmp_path, None, dataset_teacher=identity)
    assert names == ["cube"] and where == "dataset" and torch.equal(stored, torch.ones(1, teacher.embed_dim))
    with pytest.raises(TeacherMismatchError, match="different teachers"):
        zero_shot_classes(tmp_path, ["cube"], teacher=teacher, dataset_teacher="fake:other")


# ---------------------------------------------------------------------------- a trained model
@pytest.mark.slow
def test_trained_model_zero_shot_well_above_chance(trained_run, tmp_path, capsys):
    """``clip-gs eval --task all`` on the CI-budget trained run (:data:`tests.conftest.TRAINED_RUN_BUDGET`):
    every protocol runs, the report and both pictures are written, and zero-shot, few-shot and
    retrieval are well above chance (zero-shot chance: 1 / 13 = 7.7%, the bar 50% below the
    measured 85.5%; few-shot under the standard protocol, 5-way 5-shot with 3 test queries per
    class (the test split has about 5 objects per class), chance 20%, the bar 60% below the measured
    88.7% +- 15.8)."""
    argv = ["eval", "--model", str(trained_run.model_dir), "--data", str(trained_run.data_root), "--split", "test",
            "--task", "all", "--ways", "5", "--shots", "5", "--queries", "3", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    rc = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    assert Path(out[-1]) == tmp_path / "report.json"
    report = json.loads((tmp_path / "report.json").read_text())
    assert rc == 0 and "failures" not in report, report.get("failures")
    zs = report["tasks"]["zeroshot"]
    assert zs["num_classes"] == 13 and 0 < len(zs["per_class"]) <= 13 and zs["top1"] <= zs["top3"] <= zs["top5"], zs
    assert zs["top1"] >= 0.5, zs
    fs = report["tasks"]["fewshot"]["5-way-5-shot"]
    assert fs["protocol"] == "standard" and fs["episodes"] == 10 and fs["mean"] >= 0.6, fs
    n = report["num_objects"]
    assert report["tasks"]["retrieval"]["text_to_3d"]["r5"] >= 3 * 5 / n, report["tasks"]["retrieval"]  # chance: 5 / n
    for name in ("confusion.png", "retrieval.png"):
        assert ink(Image.open(tmp_path / name)) > 0.02


def test_many_classes_get_a_confusion_summary_not_a_matrix(tmp_path):
    """Above CONFUSION_MATRIX_MAX classes the picture is the summary (a fixed-size image, not a
    C-cell square), and its pairs are the largest off-diagonal cells."""
    from clip_gs.evaluation.metrics import ZeroShotResult
    from clip_gs.evaluation.plots import CONFUSION_MATRIX_MAX, most_confused
    from clip_gs.evaluation.run import write_confusion

    c = CONFUSION_MATRIX_MAX + 50
    names = [f"class{i:03d}" for i in range(c)]
    confusion = torch.eye(c, dtype=torch.long) * 3
    confusion[5, 9], confusion[7, 2], confusion[1, 4] = 4, 2, 2
    assert most_confused(confusion, names, 2) == [("class005", "class009", 4, 4 / 7), ("class001", "class004", 2, 2 / 5)]
    result = ZeroShotResult({1: 0.9}, {}, confusion, torch.zeros(0), names)
    image = Image.open(write_confusion(result, tmp_path, "many"))
    assert image.width < 1000 and image.height < 1000 and ink(image) > 0.02
    small = ZeroShotResult({1: 0.9}, {}, confusion[:4, :4], torch.zeros(0), names[:4])
    assert Image.open(write_confusion(small, tmp_path / ".", "few")).width > 100  # the matrix for few classes
