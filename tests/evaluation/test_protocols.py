"""Protocols that compare: the standard few-shot protocol and the zero-shot protocols (clip-gs, uni3d)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.evaluation.fewshot import (
    STANDARD_QUERIES,
    STANDARD_RUNS,
    largest_standard_protocol,
    standard_eligible,
    standard_few_shot,
)
from clip_gs.evaluation.protocols import UNI3D_TEMPLATES_KEY, match_labels, zero_shot_protocol


def clustered(classes: int, per_class: int, noise: float, seed: int, e: int = 16) -> tuple[torch.Tensor, list[str]]:
    """``per_class`` points around each of ``classes`` random unit centres (the same centres for every seed)."""
    centres = F.normalize(torch.randn(classes, e, generator=torch.Generator().manual_seed(0)), dim=-1)
    gen = torch.Generator().manual_seed(seed)
    x = centres.repeat_interleave(per_class, 0) + noise * torch.randn(classes * per_class, e, generator=gen)
    return x, [f"class{c:02d}" for c in range(classes) for _ in range(per_class)]


# ---------------------------------------------------------------------------- standard few-shot
def test_standard_few_shot_draws_support_from_train_and_queries_from_test():
    train, train_labels = clustered(12, 25, 0.05, seed=1)
    test, test_labels = clustered(12, 30, 0.05, seed=2)
    r = standard_few_shot(train, train_labels, test, test_labels, ways=10, shots=10, seed=0)
    assert (r.protocol, r.ways, r.shots, r.queries_per_class, r.episodes) == ("standard", 10, 10, 20, STANDARD_RUNS)
    assert r.mean == 1.0 and r.std == 0.0  # separated clusters
    assert r.describe() == "10-way 10-shot: 100.00 +- 0.00 % (standard: 10 runs, support from train, 20 test queries per class)"
    # the queries come from the test split: a test split whose classes are shuffled relative to train scores at chance
    shuffled = [test_labels[(i + 30) % len(test_labels)] for i in range(len(test_labels))]
    assert standard_few_shot(train, train_labels, test, shuffled, 10, 10).mean < 0.2
    # seeds: run r uses seed + r, so the same seed repeats every run and another seed changes them
    noisy, noisy_test = clustered(12, 25, 0.9, seed=3)[0], clustered(12, 30, 0.9, seed=4)[0]
    a = standard_few_shot(noisy, train_labels, noisy_test, test_labels, 5, 10, seed=7)
    b = standard_few_shot(noisy, train_labels, noisy_test, test_labels, 5, 10, seed=7)
    c = standard_few_shot(noisy, train_labels, noisy_test, test_labels, 5, 10, seed=8)
    assert torch.equal(a.accuracies, b.accuracies) and not torch.equal(a.accuracies, c.accuracies)
    assert torch.equal(a.accuracies[1:], c.accuracies[:-1])  # seed 8's runs are seed 7's runs 1..9, then one more
    assert 0.3 < a.mean < 1.0 and a.std > 0


def test_standard_few_shot_names_what_does_not_fit_and_what_would():
    train, train_labels = clustered(7, 20, 0.05, seed=1)
    test, test_labels = clustered(7, 25, 0.05, seed=2)
    assert standard_eligible(train_labels, test_labels, 10) == [f"class{c:02d}" for c in range(7)]
    assert largest_standard_protocol(train_labels, test_labels) == (5, 20)
    with pytest.raises(DatasetError, match=r"10-way 10-shot needs 10 classes .* 7 of 7 classes .* largest standard setting "
                                           r"that fits is 5-way 20-shot"):  # fmt: skip
        standard_few_shot(train, train_labels, test, test_labels, 10, 10)
    few_test, few_labels = clustered(7, STANDARD_QUERIES - 1, 0.05, seed=2)
    assert largest_standard_protocol(train_labels, few_labels) is None
    with pytest.raises(DatasetError, match="no standard setting fits"):
        standard_few_shot(train, train_labels, few_test, few_labels, 5, 10)
    with pytest.raises(ConfigError, match="ways"):
        standard_few_shot(train, train_labels, test, test_labels, 1, 10)


# ---------------------------------------------------------------------------- zero-shot protocols
def write_uni3d_data(folder, templates, labels) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "templates.json").write_text(json.dumps({UNI3D_TEMPLATES_KEY: templates, "shapenet_64": ["x {}"]}))
    (folder / "labels.json").write_text(json.dumps({"modelnet40_openshape": labels, "scanobjnn_openshape": ["bag"]}))


def test_uni3d_protocol_reads_the_users_files(tmp_path):
    write_uni3d_data(tmp_path, ["a point cloud model of {}.", "a photo of a {}."], ["flower pot", "night stand", "xbox"])
    p = zero_shot_protocol("uni3d", benchmark="modelnet40", uni3d_data=tmp_path)
    assert p.templates == ("a point cloud model of {}.", "a photo of a {}.") and p.prompt_rule == "verbatim"
    assert p.class_names == ("flower pot", "night stand", "xbox") and "labels.json" in p.source
    assert match_labels(["night_stand", "xbox", "Flower_Pot"], p.class_names) == {
        "night_stand": "night stand", "xbox": "xbox", "Flower_Pot": "flower pot"}  # fmt: skip
    with pytest.raises(DatasetError, match=r"1 label\(s\) are not among the protocol's 3 classes: \['sofa'\]"):
        match_labels(["xbox", "sofa"], p.class_names)
    with pytest.raises(DatasetError, match="no class list under 'nope'"):
        zero_shot_protocol("uni3d", benchmark="modelnet40", uni3d_data=tmp_path, labels_key="nope")
    with pytest.raises(ConfigError, match="--uni3d-data"):
        zero_shot_protocol("uni3d", benchmark="modelnet40")
    with pytest.raises(ConfigError, match="does not exist"):
        zero_shot_protocol("uni3d", benchmark="modelnet40", uni3d_data=tmp_path / "missing")
    with pytest.raises(ConfigError, match="needs a labels.json key"):
        zero_shot_protocol("uni3d", benchmark="my-own-set", uni3d_data=tmp_path)
    write_uni3d_data(tmp_path / "bad", ["no placeholder"], ["a"])
    with pytest.raises(DatasetError, match="without"):
        zero_shot_protocol("uni3d", benchmark="modelnet40", uni3d_data=tmp_path / "bad")


def test_clip_gs_protocol_and_the_verbatim_rule():
    from clip_gs.teachers import TEMPLATES, load_teacher, zero_shot_weights

    p = zero_shot_protocol("clip-gs", benchmark="modelnet40")
    assert p.templates == TEMPLATES and p.prompt_rule == "clip-gs" and len(p.class_names) == 40
    assert zero_shot_protocol("clip-gs").class_names is None  # the dataset's own labels
    assert zero_shot_protocol("clip-gs", label_set=["cube", "mug"]).class_names == ("cube", "mug")
    with pytest.raises(ConfigError, match="protocol must be one of"):
        zero_shot_protocol("openshape")
    teacher = load_teacher("synthetic-clip")
    templates = ["a photo of a {}.", "{}"]
    verbatim = zero_shot_weights(teacher, ["orange_block"], templates, prompt_rule="verbatim")
    encoded = F.normalize(teacher.encode_text(["a photo of a orange_block.", "orange_block"]), dim=-1)
    assert torch.allclose(verbatim[0], F.normalize(encoded.mean(0), dim=0), atol=1e-6)
    ours = zero_shot_weights(teacher, ["orange_block"], templates)  # "an orange block"
    expected = F.normalize(teacher.encode_text(["a photo of an orange block.", "orange block"]), dim=-1)
    assert torch.allclose(ours[0], F.normalize(expected.mean(0), dim=0), atol=1e-6)
    with pytest.raises(ConfigError, match="prompt_rule"):
        zero_shot_weights(teacher, ["cube"], templates, prompt_rule="loose")
