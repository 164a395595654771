"""UniGS's ``.pkl`` files: read the way UniGS writes them, through a restricted unpickler that never runs
the pickle's code (a payload that would create a marker file is refused, and the marker never appears)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from clip_gs.errors import GaussianFormatError
from clip_gs.gaussians import find_gaussian_files, load_gaussians
from clip_gs.gaussians.assets import load_asset
from clip_gs.gaussians.formats.safe_pickle import UnsafePickleError
from clip_gs.gaussians.formats.unigs_pkl import COLUMNS, read_unigs_pkl
from clip_gs.gaussians.frames import default_up_axis
from tests.conftest import unigs_array, write_unigs_pkl


def record(array, **extra) -> dict:
    return {"name": "uid0", "label": "chair", "machine_prompt": "a wooden chair", "3dgs": array} | extra


# ---------------------------------------------------------------------------- what UniGS writes
@pytest.mark.parametrize("writer", ["torch-zip", "torch-legacy", "pickle-2", "pickle-4", "pickle-5"])
def test_a_unigs_object_round_trips_to_its_cloud(tmp_path, writer):
    array = unigs_array(37, seed=1)
    data = {"name": "8a1b", "item_path": "/x/8a1b.pkl", "label_count": np.int64(12), "dataset": "objaverse",
            "label": "armchair", "img": "/x", "3dgs": array, "glb_path": "/x.glb",
            "machine_prompt": "a red armchair", "human_prompt": ["an armchair with red cushions", ""]}  # fmt: skip
    path = tmp_path / "8a1b.pkl"
    if writer == "torch-zip":
        torch.save(data, path)  # what make_datasets.py runs
    elif writer == "torch-legacy":
        torch.save(data, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(data, protocol=int(writer[-1])))
    obj = read_unigs_pkl(path)
    cloud = obj.cloud
    assert cloud.num_gaussians == 37 and cloud.sh_degree == 0 and cloud.means.dtype == torch.float32
    as_tensor = torch.from_numpy(array)
    assert torch.equal(cloud.means, as_tensor[:, 0:3]) and torch.equal(cloud.sh[:, 0, :], as_tensor[:, 3:6])
    assert torch.equal(cloud.opacity_logits, as_tensor[:, 6]) and torch.equal(cloud.log_scales, as_tensor[:, 7:10])
    assert torch.equal(cloud.quats, as_tensor[:, 10:14])  # wxyz, as stored
    assert obj.label == "armchair" and obj.uid == "8a1b"
    assert obj.captions == ("an armchair with red cushions", "a red armchair")  # human first, empty ones left out
    assert obj.human_captions == ("an armchair with red cushions",) and obj.machine_caption == "a red armchair"
    assert torch.equal(load_gaussians(path).means, cloud.means)  # load_gaussians("x.pkl") goes through the same reader


def test_pkl_is_a_registered_readable_format(tmp_path):
    write_unigs_pkl(tmp_path / "a" / "u1.pkl", unigs_array(8), label="")
    assert find_gaussian_files(tmp_path) == [tmp_path / "a" / "u1.pkl"]
    obj = read_unigs_pkl(tmp_path / "a" / "u1.pkl")
    assert obj.label is None and obj.captions == ("a thing",)  # "" is outside LVIS: no label
    assert COLUMNS[6] == "opacity" and len(COLUMNS) == 14


def test_unigs_objects_stand_z_up_and_are_brought_to_the_model_frame(tmp_path):
    array = unigs_array(5, seed=2)
    path = write_unigs_pkl(tmp_path / "u.pkl", array)
    assert default_up_axis(path) == "+z"
    moved = load_asset(path)  # "auto": +z (UniGS's Blender frame) to the model's +y
    x, y, z = torch.from_numpy(array[:, 0:3]).unbind(-1)
    assert torch.allclose(moved.means, torch.stack([x, z, -y], dim=-1), atol=1e-6)


# ---------------------------------------------------------------------------- code in a pickle never runs
class Payload:
    """Unpickling it runs ``command`` through ``func`` (what a hostile file does)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Custom:
    """A harmless custom class: refused all the same (only NumPy arrays are rebuilt)."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        open(state["marker"], "w").close()


def hostile_pickles(marker):
    touch = f"touch {marker}"
    yield "posix.system" if os.name == "posix" else "nt.system", pickle.dumps({"3dgs": unigs_array(4), "x": Payload(os.system, touch)}, 2)
    yield "builtins.eval", pickle.dumps({"3dgs": unigs_array(4), "x": Payload(eval, f"open({str(marker)!r}, 'w')")}, 4)
    yield "subprocess.Popen", pickle.dumps(Payload(subprocess.Popen, ["touch", str(marker)]), 5)
    yield f"{__name__}.Custom", pickle.dumps({"3dgs": unigs_array(4), "x": Custom(str(marker))}, 2)
    yield "copy_reg._reconstructor", pickle.dumps(Custom(str(marker)), 0)  # protocol 0 goes through copy_reg first
    yield "builtins.exec", f"cbuiltins\nexec\n(Vopen({str(marker)!r}, 'w')\ntR.".encode()  # a hand-written GLOBAL opcode


def test_any_other_global_is_refused_named_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    for i, (name, payload) in enumerate(hostile_pickles(marker)):
        for container in ("pickle", "torch-zip"):
            path = tmp_path / f"hostile{i}-{container}.pkl"
            if container == "pickle":
                path.write_bytes(payload)
            else:  # the payload as the data.pkl of a torch.save archive
                buf = io.BytesIO()
                torch.save({"3dgs": unigs_array(4)}, buf)
                with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
                    for info in src.infolist():
                        dst.writestr(info, payload if info.filename.endswith("/data.pkl") else src.read(info))
            with pytest.raises(UnsafePickleError) as caught:
                read_unigs_pkl(path)
            assert str(path) in str(caught.value) and f"global {name}" in str(caught.value), caught.value
            with pytest.raises(UnsafePickleError, match=name):
                load_gaussians(path)
    assert not marker.exists(), "a pickled payload ran"


def test_torch_tensors_and_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "tensor.pkl"
    torch.save({"3dgs": torch.from_numpy(unigs_array(4))}, path)
    with pytest.raises(UnsafePickleError, match=r"tensor.pkl: refuses to unpickle global torch._utils._rebuild_tensor_v2"):
        read_unigs_pkl(path)

    class Storages(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "0") if isinstance(obj, np.ndarray) else None

    buf = io.BytesIO()
    Storages(buf, protocol=2).dump({"3dgs": unigs_array(4)})
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match=r"tensor.pkl: refuses persistent id .*storage.*only plain NumPy arrays"):
        read_unigs_pkl(path)


# ---------------------------------------------------------------------------- arrays, shapes, values, sizes
def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps(record(np.array([[1.0, "x"]] * 3, dtype=object)), 4))
    with pytest.raises(UnsafePickleError, match=r"objects.pkl: .*only numeric dtypes"):
        read_unigs_pkl(path)
    path.write_bytes(pickle.dumps(record(unigs_array(3), extra=np.array(["a", "b"])), 2))  # a unicode array
    with pytest.raises(UnsafePickleError, match="only numeric dtypes"):
        read_unigs_pkl(path)


@pytest.mark.parametrize("array, problem", [
    (unigs_array(6)[:, :13], r"must have shape \[N, 14\] .*got \[6, 13\]"),
    (unigs_array(6)[:, :, None], r"must have shape \[N, 14\] .*got \[6, 14, 1\]"),
    (unigs_array(6)[:0], r"got \[0, 14\]"),
    (unigs_array(6).reshape(-1), r"got \[84\]"),
    (unigs_array(6).astype(np.int32), "must be a float array"),
    ([[0.0] * 14], "must be a float array .* got list"),
])  # fmt: skip
def test_wrong_arrays_are_refused(tmp_path, array, problem):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(record(array), 4))
    with pytest.raises(GaussianFormatError, match=problem):
        read_unigs_pkl(path)


def test_non_finite_values_and_bad_scales_are_named(tmp_path):
    array = unigs_array(6)
    array[2, 6] = np.nan
    path = tmp_path / "nan.pkl"
    path.write_bytes(pickle.dumps(record(array), 4))
    with pytest.raises(GaussianFormatError, match=r"nan.pkl: 1 non-finite value\(s\) .*row 2, column opacity"):
        read_unigs_pkl(path)
    array = unigs_array(6)
    array[4, 8] = 60.0
    path.write_bytes(pickle.dumps(record(array), 4))
    with pytest.raises(GaussianFormatError, match="outside the log-scale range"):
        read_unigs_pkl(path)


def test_other_contents_are_refused(tmp_path):
    path = tmp_path / "x.pkl"
    cases = [
        (pickle.dumps([1, 2, 3]), "not a UniGS object .* got list"),
        (pickle.dumps({"points": unigs_array(2)}), r"a dict with keys \['points'\]"),
        (pickle.dumps(record(unigs_array(2), machine_prompt=3)), "'machine_prompt' must be a string"),
        (pickle.dumps(record(unigs_array(2), label=["chair"])), "'label' must be a string"),
        (pickle.dumps(record(unigs_array(2))) + b"extra", "5 bytes after the end of the pickle"),
        (b"\x80\x04garbage", "not a readable pickle"),
        (b"", "not a readable pickle"),
    ]
    for raw, problem in cases:
        path.write_bytes(raw)
        with pytest.raises(GaussianFormatError, match=problem):
            read_unigs_pkl(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/version", "3")
    with pytest.raises(GaussianFormatError, match=r"without exactly one <archive>/data.pkl"):
        read_unigs_pkl(path)


def test_the_size_cap_is_checked_before_reading(tmp_path, monkeypatch):
    import clip_gs.gaussians.files as files

    path = write_unigs_pkl(tmp_path / "big.pkl", unigs_array(64))
    size = path.stat().st_size
    assert read_unigs_pkl(path, max_bytes=size).cloud.num_gaussians == 64

    def never(*args, **kwargs):
        raise AssertionError("the file was opened")

    monkeypatch.setattr(files, "open_regular_file", never)
    with pytest.raises(GaussianFormatError, match=rf"big.pkl: {size:,} bytes, above the limit of {size - 1:,} bytes"):
        read_unigs_pkl(path, max_bytes=size - 1)


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.pkl"
    os.mkfifo(fifo)
    with pytest.raises(GaussianFormatError, match="not a regular file"):
        read_unigs_pkl(fifo)
