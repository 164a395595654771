"""The package imports without a GPU, lazily, and every public name resolves."""

from __future__ import annotations

import os
import subprocess
import sys

import clip_gs


def test_import_needs_no_gpu_and_loads_heavy_parts_lazily():
    code = (
        "import sys, clip_gs; "
        "heavy = [m for m in ('timm', 'trimesh', 'gsplat', 'lightning', 'clip_gs.render') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == ""


def test_every_public_name_resolves():
    for name in clip_gs.__all__:
        assert getattr(clip_gs, name) is not None, name
    assert clip_gs.CLIPGS.__module__ == "clip_gs.model.clipgs"
    assert issubclass(clip_gs.GaussianFormatError, clip_gs.ClipGSError)
