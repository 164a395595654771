"""Few-shot draws as files: written, read back strictly, checked against the evaluated objects, and
shared by two models; the episodes protocol on a set without a train split (Objaverse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip_gs.cli import main
from clip_gs.errors import ConfigError, DatasetError, EpisodesFileError
from clip_gs.evaluation.episodes import load_draws, read_episodes, write_episodes
from clip_gs.evaluation.fewshot import draw_episodes, draw_standard, few_shot, run_few_shot, score_draws
from tests.conftest import export_tiny_model, unigs_array, write_unigs_pkl

CLASSES = ("cone", "cube", "sphere", "torus")


def labelled(per_class: int, classes=CLASSES, dim: int = 8, seed: int = 0):
    """``(embeddings [C * per_class, dim], labels, ids)``: clustered embeddings, ids ``<class>-<n>``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(classes), dim, generator=g)
    x = torch.cat([centres[c] + 0.3 * torch.randn(per_class, dim, generator=g) for c in range(len(classes))])
    labels = [c for c in classes for _ in range(per_class)]
    return x, labels, [f"{c}-{i}" for c in classes for i in range(per_class)]


def ids_of(draws):
    return [(e.classes, e.support, e.queries) for e in draws.episodes]


# ---------------------------------------------------------------------------- drawing, the file, reading it back
def test_episodes_round_trip_through_their_file(tmp_path):
    x, labels, ids = labelled(8)
    episodes = draw_episodes(labels, ids, ways=3, shots=2, episodes=5, queries_per_class=4, seed=7)
    standard = draw_standard(labels, ids, labels, [f"test-{i}" for i in ids], ways=2, shots=3, runs=4,
                             queries_per_class=5, seed=1)  # fmt: skip
    path = write_episodes(tmp_path / "draws.json", [episodes, standard])
    data = json.loads(path.read_text())
    assert data["format"] == "clip-gs-fewshot-episodes" and data["version"] == 1
    assert list(data["settings"]) == ["3-way-2-shot", "2-way-3-shot"]
    first = data["settings"]["3-way-2-shot"]
    assert first["seed"] == 7 and first["protocol"] == "episodes" and len(first["episodes"]) == 5
    assert len(first["episodes"][0]["classes"]) == 3 and [len(s) for s in first["episodes"][0]["support"]] == [2, 2, 2]
    back = read_episodes(path)
    assert back == [episodes, standard] and [b.digest() for b in back] == [episodes.digest(), standard.digest()]
    for episode in episodes.episodes:  # support and queries of one episode are disjoint, of the episode's classes
        support, queries = {i for s in episode.support for i in s}, {i for q in episode.queries for i in q}
        assert not support & queries and len(support) == 6 and len(queries) == 12
        for cls, group in zip(episode.classes, episode.support):
            assert all(labels[ids.index(i)] == cls for i in group)
    assert standard.support_split == "train" and all(i.startswith("test-") for e in standard.episodes for q in e.queries for i in q)


def test_drawing_is_what_few_shot_scores(tmp_path):
    """few_shot = draw_episodes + score_draws, and the draws of a seed never change."""
    x, labels, ids = labelled(10)
    direct = few_shot(x, labels, 3, 2, episodes=6, queries_per_class=3, seed=4, ids=ids)
    draws = draw_episodes(labels, ids, 3, 2, 6, 3, 4)
    assert direct.draws == draws
    again = score_draws(read_episodes(write_episodes(tmp_path / "e.json", [draws]))[0], x, ids, labels)
    assert torch.equal(again.accuracies, direct.accuracies) and again.mean == direct.mean


def test_two_models_scored_with_one_file_see_the_same_episodes(tmp_path):
    x, labels, ids = labelled(8)
    other = F.normalize(torch.randn(x.shape, generator=torch.Generator().manual_seed(9)), dim=-1)  # a second "model"
    path = tmp_path / "draws.json"
    first = run_few_shot("episodes", [(2, 2), (3, 1)], x, labels, episodes=4, queries_per_class=3, seed=3, query_ids=ids)
    write_episodes(path, first.draws)
    # the second model's objects come in another order: the file names ids, not positions
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(1)).tolist()
    second = run_few_shot("episodes", None, other[order], [labels[i] for i in order], seed=99,
                          query_ids=[ids[i] for i in order], draws=load_draws(path, "episodes"))  # fmt: skip
    assert [ids_of(r.draws) for r in second.results] == [ids_of(r.draws) for r in first.results]
    assert second.report(path, True)["2-way-2-shot"]["draws_sha256"] == first.report()["2-way-2-shot"]["draws_sha256"]
    assert second.report(path, True)["3-way-1-shot"]["episodes_file_use"] == "read"
    assert [r.mean for r in second.results] != [r.mean for r in first.results]  # other embeddings, same objects


# ---------------------------------------------------------------------------- a strict reader
def edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    out = path.with_name("edited.json")
    out.write_text(json.dumps(data))
    return out


def first_episode(data):
    return data["settings"]["2-way-2-shot"]["episodes"][0]


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.update(format="other"), "format 'other' version 1; expected 'clip-gs-fewshot-episodes'"),
    (lambda d: d.update(extra=1), r"unknown \['extra'\]"),
    (lambda d: d["settings"]["2-way-2-shot"].pop("seed"), r"settings\['2-way-2-shot'\]: missing \['seed'\]"),
    (lambda d: d["settings"]["2-way-2-shot"].update(ways=3), "holds a 3-way 2-shot setting under the name '2-way-2-shot'"),
    (lambda d: d["settings"]["2-way-2-shot"].update(protocol="magic"), "protocol: must be one of"),
    (lambda d: d["settings"]["2-way-2-shot"].update(episodes=[]), "episodes: must be a non-empty list"),
    (lambda d: first_episode(d)["support"][0].pop(), r"episodes\[0\].support\[0\]: must be a list of 2 non-empty strings"),
    (lambda d: first_episode(d).update(classes=[first_episode(d)["classes"][0]] * 2), "a class drawn twice"),
    (lambda d: first_episode(d)["support"][1].__setitem__(0, first_episode(d)["support"][0][0]), "drawn twice"),
    (lambda d: first_episode(d)["queries"][0].__setitem__(0, first_episode(d)["support"][0][0]),
     r"episodes\[0\]: object id\(s\) both support and query"),
    (lambda d: first_episode(d)["queries"][0].__setitem__(0, 7), "non-empty strings"),
])  # fmt: skip
def test_a_malformed_file_is_refused_naming_where(tmp_path, change, problem):
    _, labels, ids = labelled(6)
    path = write_episodes(tmp_path / "draws.json", [draw_episodes(labels, ids, 2, 2, 3, 2, 0)])
    bad = edit(path, change)
    with pytest.raises(EpisodesFileError, match=problem) as caught:
        read_episodes(bad)
    assert str(bad) in str(caught.value)


def test_unreadable_and_repeated_keys(tmp_path):
    path = tmp_path / "draws.json"
    path.write_text('{"format": "clip-gs-fewshot-episodes", "format": "x"}')
    with pytest.raises(EpisodesFileError, match="repeated key"):
        read_episodes(path)
    path.write_text("not json")
    with pytest.raises(EpisodesFileError, match="not a readable episodes file"):
        read_episodes(path)
    with pytest.raises(EpisodesFileError, match="not a readable episodes file"):
        read_episodes(tmp_path / "missing.json")


def test_draws_must_name_the_evaluated_objects(tmp_path):
    x, labels, ids = labelled(6)
    path = write_episodes(tmp_path / "draws.json", [draw_episodes(labels, ids, 2, 2, 3, 2, 0)])
    draws = read_episodes(path)
    named = draws[0].episodes[0].support[0][0]
    keep = [i for i, object_id in enumerate(ids) if object_id != named]  # that object is not evaluated here
    with pytest.raises(EpisodesFileError, match=rf"2-way-2-shot episode 0: support id '{named}' is not in the evaluated set"):
        run_few_shot("episodes", None, x[keep], [labels[i] for i in keep], query_ids=[ids[i] for i in keep], draws=draws,
                     where=str(path))  # fmt: skip
    relabelled = list(labels)
    relabelled[ids.index(named)] = "other"
    with pytest.raises(EpisodesFileError, match=rf"id '{named}' is listed under class .* but is a 'other'"):
        run_few_shot("episodes", None, x, relabelled, query_ids=ids, draws=draws)
    with pytest.raises(ConfigError, match="drawn under the 'episodes' few-shot protocol, not 'standard'"):
        load_draws(path, "standard")
    with pytest.raises(ConfigError, match=r"holds the settings \['2-way-2-shot'\], not \['5-way-5-shot'\]"):
        load_draws(path, "episodes", [(5, 5)])
    assert load_draws(tmp_path / "absent.json", "episodes") is None


# ---------------------------------------------------------------------------- Objaverse: no train split
def objaverse_gs(root: Path, per_class: int = 5, classes=("chair", "mug", "lamp")) -> Path:
    """UniGS ``.pkl`` files of ``classes``, ``per_class`` each, labels in the files (no train split)."""
    for c, label in enumerate(classes):
        for i in range(per_class):
            write_unigs_pkl(root / "objects" / f"{label}{i}.pkl", unigs_array(256, seed=10 * c + i, centre=(c, 0, 0)),
                            label=label)  # fmt: skip
    return root


def test_objaverse_few_shot_from_one_file_for_two_models(tmp_path, capsys):
    """Objaverse-GS has no train split: the episodes protocol draws support and queries, disjoint, from the
    set itself; the first model writes the episodes file, the second reads it and sees the same draws."""
    root = objaverse_gs(tmp_path / "unigs")
    models = [export_tiny_model(tmp_path / f"model{s}", seed=s) for s in (0, 1)]
    draws_file = tmp_path / "objaverse-episodes.json"
    reports = []
    for i, model in enumerate(models):
        argv = ["eval", "--model", str(model), "--benchmark", "objaverse-gs", "--root", str(root), "--task", "fewshot",
                "--fewshot-protocol", "episodes", "--episodes", "4", "--queries", "2", "--episodes-file", str(draws_file),
                "--out", str(tmp_path / f"out{i}"), "--quiet"] + (["--ways", "2", "3", "--shots", "2"] if i == 0 else [])  # fmt: skip
        before = draws_file.read_bytes() if draws_file.exists() else None
        assert main(argv) == 0, capsys.readouterr()
        assert before is None or draws_file.read_bytes() == before  # read, never rewritten
        reports.append(json.loads((tmp_path / f"out{i}" / "report.json").read_text())["tasks"]["fewshot"])
    assert set(reports[0]) == set(reports[1]) == {"2-way-2-shot", "3-way-2-shot"}  # the second run took the file's settings
    for name in reports[0]:
        assert reports[0][name]["draws_sha256"] == reports[1][name]["draws_sha256"]
        assert (reports[0][name]["episodes_file_use"], reports[1][name]["episodes_file_use"]) == ("written", "read")
        assert "support_split" not in reports[0][name] and reports[0][name]["protocol"] == "episodes"
    uids = {p.stem for p in (root / "objects").glob("*.pkl")}
    for draws in read_episodes(draws_file):
        for episode in draws.episodes:
            support, queries = {i for s in episode.support for i in s}, {i for q in episode.queries for i in q}
            assert support and queries and not support & queries and (support | queries) <= uids
            assert all(i.startswith(c) for c, group in zip(episode.classes, episode.support) for i in group)
    # the standard protocol cannot run without a train split, and says which protocol can
    argv = ["eval", "--model", str(models[0]), "--benchmark", "objaverse-gs", "--root", str(root), "--task", "fewshot",
            "--ways", "2", "--shots", "2", "--out", str(tmp_path / "std"), "--quiet"]  # fmt: skip
    assert main(argv) == 3
    assert "cannot run on benchmark 'objaverse-gs': it has no 'train' split" in capsys.readouterr().out
    # a file drawn under the episodes protocol is not scored under the standard one
    assert main(argv[:-3] + ["--episodes-file", str(draws_file), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "drawn under the 'episodes' few-shot protocol, not 'standard'" in capsys.readouterr().err


def test_evaluate_on_a_benchmark_with_an_episodes_file_of_other_objects_is_an_error(tmp_path):
    from clip_gs.evaluation import BenchmarkSplit, evaluate
    from clip_gs.model import CLIPGS

    root = objaverse_gs(tmp_path / "unigs", per_class=4, classes=("chair", "mug"))
    x, labels, ids = labelled(6, classes=("chair", "mug"))
    path = write_episodes(tmp_path / "other.json", [draw_episodes(labels, ids, 2, 2, 2, 2, 0)])
    model = CLIPGS.from_pretrained(export_tiny_model(tmp_path / "m"))
    with pytest.raises(EpisodesFileError, match=r"other.json: 2-way-2-shot episode 0: support id '.*' is not in the evaluated set"):
        evaluate(model, BenchmarkSplit("objaverse-gs", root), tasks=("fewshot",), fewshot_protocol="episodes",
                 episodes_file=path, precision="fp32")  # fmt: skip


def test_standard_on_a_prepared_split_without_train_names_the_episodes_protocol(tmp_path):
    """A prepared Objaverse-like dataset with only a test split: standard is a failure that says why and
    names the episodes protocol; episodes runs, support and queries disjoint."""
    from clip_gs.data.shards import write_split
    from clip_gs.data.synthetic import make_object
    from clip_gs.data.triplets import Manifest, TripletSample
    from clip_gs.evaluation import PreparedSplit, evaluate
    from clip_gs.model import create_model

    e, views = 16, 2
    samples = []
    for i in range(12):
        kind = CLASSES[i % 3]
        g = torch.Generator().manual_seed(i)
        samples.append(TripletSample(
            id=f"obj-{i:02d}", source=f"synthetic:{i}", cloud=make_object(kind, seed=i, num_gaussians=64).cloud,
            captions=(f"a {kind}",), label=kind, text_embeddings=F.normalize(torch.randn(1, e, generator=g), dim=-1),
            image_embeddings=F.normalize(torch.randn(views, e, generator=g), dim=-1),
            viewmats=torch.eye(4).expand(views, 4, 4).clone(), Ks=torch.eye(3).expand(views, 3, 3).clone()))  # fmt: skip
    root = tmp_path / "data"
    write_split((s.to_record() for s in samples), root / "test", chunk_bytes="64KB")
    Manifest(teacher="fake:episodes-test", embed_dim=e, counts={"train": 0, "val": 0, "test": 12}, labels=[]).write(root)
    model = create_model("clip-gs-tiny", num_gaussians=64, num_groups=8, group_size=8, embed_dim=e, depth=1)
    standard = evaluate(model, PreparedSplit(root, "test"), tasks=("fewshot",), protocols=[(2, 1)], precision="fp32")
    message = standard.failures["fewshot"]
    assert message.startswith("DatasetError: ") and "takes its support from the 'train' split, which has no objects" in message
    assert "--fewshot-protocol episodes, which draws support and queries, disjoint, from the evaluated split" in message
    same = evaluate(model, PreparedSplit(root, "test"), tasks=("fewshot",), protocols=[(2, 1)], support_split="test",
                    precision="fp32")  # fmt: skip
    assert "is the evaluated split: support and queries would overlap" in same.failures["fewshot"]
    draws_file = tmp_path / "draws.json"
    episodes = evaluate(model, PreparedSplit(root, "test"), tasks=("fewshot",), protocols=[(3, 1)],
                        fewshot_protocol="episodes", episodes=3, queries_per_class=2, episodes_file=draws_file, precision="fp32")  # fmt: skip
    assert not episodes.failures and episodes.report["tasks"]["fewshot"]["3-way-1-shot"]["episodes_file_use"] == "written"
    (drawn,) = read_episodes(draws_file)
    for episode in drawn.episodes:
        support, queries = {i for s in episode.support for i in s}, {i for q in episode.queries for i in q}
        assert len(support) == 3 and len(queries) == 6 and not support & queries
    again = evaluate(model, PreparedSplit(root, "test"), tasks=("fewshot",), fewshot_protocol="episodes",
                     episodes_file=draws_file, precision="fp32")  # fmt: skip
    entry = again.report["tasks"]["fewshot"]["3-way-1-shot"]
    assert entry["episodes_file_use"] == "read" and entry["draws_sha256"] == drawn.digest() and entry["episodes"] == 3
    with pytest.raises(DatasetError):  # still a DatasetError for callers catching those
        raise EpisodesFileError("x")
