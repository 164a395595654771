"""Quick start: read a 3DGS file, summarise it, write it back, look at it, and embed it.

    python examples/quickstart.py                 # a synthetic torus made on the fly (offline)
    python examples/quickstart.py path/to/x.ply   # any 3DGS file (.ply, .splat, .spz, compressed .ply) or mesh

Writes its outputs to ./quickstart-out/. The encoder here has random weights (``clip-gs-tiny``):
it shows the pipeline, not meaningful embeddings; ``clip_gs.create_model("uni3d-b-no-lvis")`` gives
real ones (Uni3D's published weights, from the Hugging Face cache).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import clip_gs
from clip_gs.cli import format_info
from clip_gs.render import render_sheet


def main() -> None:
    out = Path("quickstart-out")
    out.mkdir(exist_ok=True)
    if len(sys.argv) > 1:
        cloud = clip_gs.load_asset(sys.argv[1])
    else:
        obj = clip_gs.make_object("torus", seed=0, num_gaussians=20_000, color="blue", pattern="striped")
        print(f"made a synthetic object: {obj.caption!r}")
        cloud = clip_gs.load_gaussians(clip_gs.save_gaussians(obj.cloud, out / "torus.ply", up_axis="+y"))
    print(cloud)
    print(format_info(cloud))

    # write it back in two formats and check what came back
    same = clip_gs.load_gaussians(clip_gs.save_gaussians(cloud, out / "copy.ply"))
    assert all(torch.equal(getattr(cloud, f), getattr(same, f)) for f in ("means", "sh", "quats"))
    # .splat has no higher-order SH: dropping them must be asked for explicitly
    splat = clip_gs.load_gaussians(clip_gs.save_gaussians(cloud, out / "copy.splat", drop_sh=True))
    print(f"wrote {out / 'copy.ply'} (bitwise identical) and {out / 'copy.splat'} ({len(splat):,} Gaussians)")

    render_sheet(cloud, views=4, size=192).save(out / "views.png")
    print(f"wrote {out / 'views.png'}")

    model = clip_gs.create_model("clip-gs-tiny", num_gaussians=2048, num_groups=128, group_size=32)
    embedding = model.encode(cloud)
    print(f"embedding: shape {tuple(embedding.shape)}, norm {embedding.norm():.4f} (random weights)")


if __name__ == "__main__":
    main()
