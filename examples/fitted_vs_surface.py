"""The same mesh as surface samples and as 3DGS fitted to its renders: views side by side, and
histograms of scales, opacities and distance to the surface.

    python examples/fitted_vs_surface.py [MESH] [--out docs/fitted_vs_surface.png] [--iterations 1000]

Needs Blender's module and gsplat (``pip install clip-gs[render,fit]``). Rows: Blender's render of
the mesh (the target), the surface conversion (``mesh_to_gaussians``, what ``prepare --gaussians
surface`` stores), the fit (``fit_mesh``, what ``--gaussians fitted`` stores), from 3 held-out
views; below, histograms of the two clouds. Distance to the surface is measured to the nearest of
400,000 dense surface samples, in units of the object's radius.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from clip_gs.data.fitted import fit_mesh, init_from_mesh
from clip_gs.fitting import FitConfig, evaluate_views, transform_cloud
from clip_gs.gaussians.mesh import mesh_to_gaussians
from clip_gs.render import contact_sheet, render_cloud, sphere_cameras
from clip_gs.render.blender import composite, render_mesh

DEFAULT_MESH = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real" / "trimesh-models" / "Duck.glb"
)
COLOURS = {"surface": (70, 110, 200), "fitted": (220, 110, 40)}


def nearest_distance(points: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    """``[N]`` distance from each point to the nearest of ``surface [M, 3]``."""
    return torch.cat([torch.cdist(chunk, surface).amin(dim=1) for chunk in points.split(1024)])


def histogram(title: str, series: dict[str, torch.Tensor], low: float, high: float, width=420, height=220,
              bins=40, label=lambda v: f"{v:.2g}") -> Image.Image:  # fmt: skip
    """Overlaid step histograms (share of Gaussians per bin) of each series on one axis."""
    font = ImageFont.load_default()
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 40, width - 10, 28, height - 30
    draw.text((left, 6), title, fill="black", font=font)
    draw.line([(left, bottom), (right, bottom)], fill="black")
    draw.line([(left, top), (left, bottom)], fill="black")
    shares = {name: torch.histc(v.clamp(low, high).float(), bins=bins, min=low, max=high) / v.numel()
              for name, v in series.items()}  # fmt: skip
    peak = max(float(s.max()) for s in shares.values())
    for name, share in shares.items():
        xs = [left + (right - left) * i / bins for i in range(bins + 1)]
        points = []
        for i, value in enumerate(share.tolist()):
            y = bottom - (bottom - top) * value / peak
            points += [(xs[i], y), (xs[i + 1], y)]
        draw.line(points, fill=COLOURS[name], width=2)
    for i in range(5):
        value = low + (high - low) * i / 4
        x = left + (right - left) * i / 4
        draw.text((x - 12, bottom + 4), label(value), fill="black", font=font)
    y = top
    for name in series:
        draw.text((right - 150, y), f"- {name} ({series[name].numel():,})", fill=COLOURS[name], font=font)
        y += 14
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", nargs="?", type=Path, default=DEFAULT_MESH)
    parser.add_argument("--out", default="docs/fitted_vs_surface.png")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--gaussians", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=192, help="size of the pictured views")
    args = parser.parse_args()

    fitted = fit_mesh(args.mesh, FitConfig(iterations=args.iterations, max_gaussians=args.gaussians), progress=True)
    world = fitted.world
    surface = init_from_mesh(args.mesh, args.gaussians, world, opacity=0.95)
    cams = sphere_cameras(3, width=args.size, height=args.size, turn=0.5)
    white = torch.ones(3)
    target = composite(render_mesh(args.mesh, cams, world=world), white)
    rows = [target]
    scores = {}
    for name, cloud in (("surface", surface), ("fitted", fitted.result.cloud)):
        rows.append(render_cloud(cloud, cams, background=white).rgb.clamp(0, 1))
        scores[name] = evaluate_views(cloud, fitted.held_out)
    labels = ["Blender (target)"] * 3
    for name in ("surface", "fitted"):
        psnr, ssim = scores[name]
        labels += [f"{name}: {psnr:.1f} dB, SSIM {ssim:.3f}"] * 3
    sheet = contact_sheet(torch.cat(rows), columns=3, labels=labels)

    dense = transform_cloud(mesh_to_gaussians(args.mesh, num_gaussians=400_000, normalize=False), world).means
    clouds = {"surface": surface, "fitted": fitted.result.cloud}
    panels = [
        histogram("log10 largest scale (object radius = 1)",
                  {k: torch.log10(c.scales.amax(dim=-1)) for k, c in clouds.items()}, -3.5, -0.5),
        histogram("opacity", {k: c.opacity for k, c in clouds.items()}, 0.0, 1.0),
        histogram("distance of the centre to the surface", {k: nearest_distance(c.means, dense) for k, c in clouds.items()},
                  0.0, 0.05, label=lambda v: f"{v:.3f}"),
    ]  # fmt: skip
    width = max(sheet.width, sum(p.width for p in panels))
    title_height = 24
    canvas = Image.new("RGB", (width, title_height + sheet.height + panels[0].height), "white")
    ImageDraw.Draw(canvas).text((8, 6), f"{args.mesh.name}: surface samples vs 3DGS fitted to 36 Blender views "
                                f"({args.iterations} iterations, at most {args.gaussians:,} Gaussians); 3 held-out views",
                                fill="black", font=ImageFont.load_default())  # fmt: skip
    canvas.paste(sheet, ((width - sheet.width) // 2, title_height))
    x = (width - sum(p.width for p in panels)) // 2
    for panel in panels:
        canvas.paste(panel, (x, title_height + sheet.height))
        x += panel.width
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}; held-out PSNR surface {scores['surface'][0]:.2f} dB, fitted {scores['fitted'][0]:.2f} dB")
    distance = {k: float(nearest_distance(c.means, dense).median()) for k, c in clouds.items()}
    print(f"median distance to the surface: surface {distance['surface']:.4f}, fitted {distance['fitted']:.4f}; "
          f"median opacity: surface {float(surface.opacity.median()):.2f}, fitted "
          f"{float(fitted.result.cloud.opacity.median()):.2f}; log10 median largest scale: surface "
          f"{math.log10(float(surface.scales.amax(-1).median())):.2f}, fitted "
          f"{math.log10(float(fitted.result.cloud.scales.amax(-1).median())):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
