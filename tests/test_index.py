"""EmbeddingIndex: exact top-k against brute force, editing, files, identity checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.index import EmbeddingIndex


def unit(n: int, e: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, e, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_search_equals_brute_force_for_any_chunk_size():
    index = EmbeddingIndex(8, model="m", teacher="t")
    rows = unit(500)
    index.add([f"id{i}" for i in range(500)], rows, [f"/a/{i}.ply" for i in range(500)])
    queries = unit(7, seed=1)
    expected = torch.topk(queries @ rows.T, 10, dim=1)
    for chunk in (7, 64, 500, 100_000):
        hits = index.search(queries, k=10, chunk_rows=chunk)
        assert [[h.row for h in q] for q in hits] == expected.indices.tolist()
        assert torch.allclose(torch.tensor([[h.score for h in q] for q in hits]), expected.values, atol=1e-6)
    assert hits[0][0].id == f"id{hits[0][0].row}" and hits[0][0].path == f"/a/{hits[0][0].row}.ply"


def test_ties_break_by_row_and_exclude_self():
    index = EmbeddingIndex(2)
    index.add(["a", "b", "c"], torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert [h.id for h in index.search(torch.tensor([1.0, 0.0]), k=3, chunk_rows=1)[0]] == ["a", "b", "c"]
    assert [h.id for h in index.search(torch.tensor([[1.0, 0.0]]), k=2, exclude_self=["a"])[0]] == ["b", "c"]


def test_add_replace_remove_and_errors():
    index = EmbeddingIndex(8)
    index.add(["x", "y"], unit(2) * 3.0)  # normalised on the way in
    assert torch.allclose(index.embeddings.norm(dim=-1), torch.ones(2))
    index.add(["y", "z"], unit(2, seed=5), ["y.ply", "z.ply"])
    assert index.ids == ["x", "y", "z"] and index.paths[1] == "y.ply"
    assert torch.allclose(index.embeddings[1], unit(2, seed=5)[0])
    index.remove(["x"])
    assert index.ids == ["y", "z"] and "x" not in index and index.search(unit(2, seed=5)[0], k=1)[0][0].id == "y"
    with pytest.raises(ConfigError, match="not in the index"):
        index.remove(["nope"])
    with pytest.raises(ConfigError, match="duplicate"):
        index.add(["a", "a"], unit(2))
    with pytest.raises(ConfigError, match=r"\[M, 8\]"):
        index.add(["a"], unit(1, e=4))
    with pytest.raises(ConfigError, match="non-finite or zero"):
        index.add(["a"], torch.zeros(1, 8))
    with pytest.raises(ConfigError, match="empty index"):
        EmbeddingIndex(8).search(unit(1))


def test_save_load_round_trip_and_bad_files(tmp_path):
    index = EmbeddingIndex(8, model="clip-gs-tiny@abc", teacher="open_clip:ViT-B-32/openai")
    index.add(["a", "b"], unit(2), ["a.ply", "b.spz"])
    path = index.save(tmp_path / "gallery")
    assert path.name == "gallery.safetensors"
    loaded = EmbeddingIndex.load(tmp_path / "gallery")
    assert loaded.ids == index.ids and loaded.paths == index.paths and loaded.model == index.model
    assert torch.equal(loaded.embeddings, index.embeddings)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="bad.safetensors: not a readable clip-gs embedding index"):
        EmbeddingIndex.load(tmp_path / "bad.safetensors")


def test_queries_from_another_model_or_teacher_are_refused():
    index = EmbeddingIndex(8, model="m1", teacher="t1")
    index.check_query_source(model="m1", teacher="t1")
    with pytest.raises(ConfigError, match="teacher 't2'.*teacher 't1'"):
        index.check_query_source(teacher="t2")
    with pytest.raises(ConfigError, match="model 'm2'"):
        index.check_query_source(model="m2")
    index.add(["a"], unit(1))
    with pytest.raises(ConfigError, match="model 'm2'"):
        index.search(unit(1), model="m2")
    assert index.search(unit(1), model="m1", teacher="t1")[0][0].id == "a"


def test_a_large_index_saves_and_loads(tmp_path):
    # ids and paths live in a tensor: the safetensors header (100 MB) would not hold 1M paths
    n = 300_000
    index = EmbeddingIndex(4)
    index.add([f"{i:032x}" for i in range(n)], unit(n, e=4), [f"/data/objaverse/glbs/{i:032x}.ply" for i in range(n)])
    loaded = EmbeddingIndex.load(index.save(tmp_path / "big"))
    assert loaded.ids[-1] == f"{n - 1:032x}" and loaded.paths[7] == index.paths[7]
