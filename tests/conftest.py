"""Shared test fixtures.

``real_data`` points at ``../shared/data/real`` next to the checkout (third-party files, never
copied into the repository). Tests using it skip cleanly when the folder is absent (a fresh clone
elsewhere) and run in CI, where it is present. ``CLIP_GS_REAL_DATA`` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CLIP_GS_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture
def real_data() -> Path:
    """The real third-party data folder; skips the test when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    return REAL_DATA


def real_file(relative: str) -> Path:
    """A file under the real data folder, or a skip when it is absent."""
    path = REAL_DATA / relative
    if not path.is_file():
        pytest.skip(f"real data file {path} is absent")
    return path


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
