"""encode / encode_iter over clouds, files and folders: batching, workers, bad files."""

from __future__ import annotations

import logging

import pytest
import torch

from clip_gs import GaussianCloud, save_gaussians
from clip_gs.errors import ConfigError, GaussianFormatError
from clip_gs.model import Encoded, GaussianInputDataset
from tests.helpers import full_model, random_cloud, tiny_model

BROKEN_PLY = b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nend_header\n"


def test_encode_accepts_a_batched_cloud():
    # used to raise TypeError: 'GaussianCloud' object is not iterable
    model = tiny_model()
    clouds = [random_cloud(600, seed=i) for i in range(3)]
    batched = model.encode(GaussianCloud.stack(clouds), precision="fp32")
    assert batched.shape == (3, 1024)
    assert torch.equal(batched, model.encode(clouds, precision="fp32"))
    assert torch.equal(model.encode([GaussianCloud.stack(clouds[:2]), clouds[2]], precision="fp32"), batched)


def test_encode_with_workers_equals_encode_in_process(tmp_path):
    model = full_model()
    paths = []
    for i, n in enumerate([700, 450, 900, 512, 600]):  # fewer and more Gaussians than num_gaussians
        paths.append(save_gaussians(random_cloud(n, degree=1, seed=i), tmp_path / f"object_{i}.ply"))
    in_process = model.encode(paths, batch_size=2, num_workers=0, precision="fp32")
    workers = model.encode(paths, batch_size=2, num_workers=2, precision="fp32")
    assert in_process.shape == (5, 1024)
    assert torch.equal(workers, in_process)
    # a single path gives its row of the batch (up to the batch-size dependent rounding of matmuls)
    assert torch.allclose(model.encode(paths[2], precision="fp32"), in_process[2], atol=1e-5)


@pytest.mark.parametrize("workers", [0, 2])
def test_encode_names_the_file_that_fails_to_load(tmp_path, workers):
    model = tiny_model()
    good = save_gaussians(random_cloud(600), tmp_path / "good.ply")
    bad = tmp_path / "broken.ply"
    bad.write_bytes(BROKEN_PLY)
    with pytest.raises(GaussianFormatError, match="broken.ply"):
        model.encode([good, good, bad, good], batch_size=1, num_workers=workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_encode_iter_over_a_folder_skips_and_names_bad_files(tmp_path, workers, caplog):
    model = tiny_model()
    (tmp_path / "sub").mkdir()
    good = [
        save_gaussians(random_cloud(600, seed=0), tmp_path / "a.ply"),
        save_gaussians(random_cloud(500, seed=1), tmp_path / "sub" / "b.splat"),
        save_gaussians(random_cloud(700, seed=2), tmp_path / "sub" / "d.ply"),
    ]
    (tmp_path / "c_broken.ply").write_bytes(BROKEN_PLY)
    (tmp_path / "sub" / "e_truncated.splat").write_bytes(b"\x00" * 45)  # not a multiple of 32 bytes
    (tmp_path / "notes.txt").write_text("not a 3DGS file, not a 3DGS extension")
    with caplog.at_level(logging.WARNING, logger="clip_gs"):
        results = list(
            model.encode_iter(tmp_path, batch_size=2, on_error="skip", num_workers=workers, precision="fp32")
        )
    assert all(isinstance(r, Encoded) for r in results)
    assert [r.index for r in results] == list(range(5))
    by_id = {r.id: r for r in results}
    assert sorted(by_id) == sorted(map(str, [*good, tmp_path / "c_broken.ply", tmp_path / "sub" / "e_truncated.splat"]))
    failed = [r for r in results if not r.ok]
    assert sorted(r.id.split("/")[-1] for r in failed) == ["c_broken.ply", "e_truncated.splat"]
    assert all(r.embedding is None and r.id in r.error for r in failed)  # the reason names the file
    assert failed[0].error.startswith("GaussianFormatError: ") and "vertex lacks" in failed[0].error  # nor a mesh
    assert failed[1].error.startswith("GaussianFormatError: ") and "32-byte records" in failed[1].error
    for path in good:
        expected = model.encode(path, precision="fp32")
        assert torch.allclose(by_id[str(path)].embedding, expected, atol=1e-5)
    assert "c_broken.ply" in caplog.text and "e_truncated.splat" in caplog.text
    # the same folder with on_error="raise" stops at the first bad file, by name
    with pytest.raises(GaussianFormatError, match="c_broken.ply"):
        list(model.encode_iter(tmp_path, on_error="raise"))


def test_encode_iter_is_lazy_and_checks_its_arguments(tmp_path):
    model = tiny_model()
    stream = model.encode_iter([random_cloud(600, seed=i) for i in range(4)], batch_size=2)
    first = next(stream)
    assert first.index == 0 and first.id == "#0" and first.embedding.shape == (1024,)
    stream.close()
    with pytest.raises(ConfigError, match="on_error"):
        next(model.encode_iter(random_cloud(600), on_error="ignore"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no inputs"):
        model.encode(tmp_path / "empty")
    with pytest.raises(ConfigError, match="batch_size"):
        model.encode(random_cloud(600), batch_size=0)


def test_input_dataset_ids_and_errors(tmp_path):
    model = tiny_model()
    bad = tmp_path / "broken.ply"
    bad.write_bytes(BROKEN_PLY)
    named = random_cloud(600).replace(source="scan.ply")
    dataset = GaussianInputDataset([named, random_cloud(600), bad], model.config, catch_errors=True)
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s.id for s in samples] == ["scan.ply", "#1", str(bad)]
    assert samples[0].features.shape == (model.config.num_gaussians, 19)
    assert isinstance(samples[2].error, GaussianFormatError) and samples[2].features is None
    with pytest.raises(GaussianFormatError, match="broken.ply"):
        GaussianInputDataset([bad], model.config)[0]


def test_encode_leaves_the_module_untouched():
    model = tiny_model()
    model.train()
    model.encoder.tokenizer.eval()  # e.g. frozen BatchNorms during fine-tuning
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(random_cloud(600))
    assert model.training and model.encoder.blocks.training
    assert not model.encoder.tokenizer.training and not model.encoder.tokenizer.point_encoder.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
