"""Render one object of every synthetic class into a labelled contact sheet.

    python examples/synthetic_gallery.py [--out docs/synthetic_gallery.png] [--size 128] [--seed 0]

The synthetic set (``clip_gs.data.synthetic``) is the offline stand-in for real 3DGS data in
tests, the quick start and demos; this is what it looks like.
"""

from __future__ import annotations

import argparse

import torch

from clip_gs.data.synthetic import SHAPE_CLASSES, make_object
from clip_gs.render import contact_sheet, orbit_cameras, render_cloud


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/synthetic_gallery.png")
    parser.add_argument("--size", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # canonical (unrotated) poses have their axis along +z: look at them from 35 degrees above
    camera = orbit_cameras(1, elevation_deg=35.0, width=args.size, height=args.size, azimuth_start_deg=30.0, up="+z")
    background = torch.tensor([1.0, 1.0, 1.0])
    images, labels = [], []
    for i, shape in enumerate(SHAPE_CLASSES):
        obj = make_object(shape, seed=args.seed + i, num_gaussians=8000, pose="canonical")
        images.append(render_cloud(obj.cloud, camera, background=background).rgb)
        labels.append(shape)
        print(f"{shape:>10}: {obj.caption}")
    sheet = contact_sheet(torch.cat(images), columns=5, labels=labels)
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(SHAPE_CLASSES)} classes)")


if __name__ == "__main__":
    main()
