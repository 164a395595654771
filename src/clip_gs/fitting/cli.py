"""``clip-gs fit-gaussians MESH|VIEWS_DIR --out x.ply``: 3DGS fitted to rendered or given views."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clip_gs.errors import ConfigError


def add_fit_parser(sub) -> None:
    from clip_gs.fitting.fit import FitConfig
    from clip_gs.fitting.mesh import DEFAULT_HELD_OUT, DEFAULT_VIEWS

    defaults = FitConfig()
    fit = sub.add_parser(
        "fit-gaussians",
        help="optimise 3DGS against views of a mesh (rendered with Blender) or a transforms.json folder",
        description="Fit 3D Gaussians to posed views (the paper's training objects). A mesh is rendered with "
        "Blender's Cycles (pip install clip-gs[render]) from --views cameras spread over the sphere plus "
        "--held-out cameras between them, and the fit starts from its surface samples. A folder holds "
        "transforms.json + images (NeRF/Blender layout); every k-th view is held out, and the fit starts "
        "from --init (a mesh, 3DGS or point-cloud file) or, without it, from random points in the unit ball.",
    )
    fit.add_argument("input", help="mesh file (.glb, .gltf, .obj, .ply, .stl) or folder with transforms.json")
    fit.add_argument("--out", required=True, help="output 3DGS file (.ply, .splat, .spz)")
    fit.add_argument("--iterations", type=int, default=defaults.iterations, help="optimisation steps (paper: 5000)")
    fit.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="training views rendered of a mesh (paper: 36)")
    fit.add_argument("--held-out", type=int, default=DEFAULT_HELD_OUT, help="views kept out of training and scored")
    fit.add_argument("--size", type=int, default=128, help="rendered view size in pixels (paper: 512)")
    fit.add_argument("--samples", type=int, default=None, help="Cycles samples per pixel (default 64)")
    fit.add_argument("--sh-degree", type=int, default=defaults.sh_degree, help="SH degree of the result (paper: 0)")
    fit.add_argument("--max-gaussians", type=int, default=defaults.max_gaussians, help="cap on the count")
    fit.add_argument("--init", default=None, help="folder input: starting points (mesh, 3DGS or point-cloud file)")
    fit.add_argument("--init-gaussians", type=int, default=None, help="starting count (default: half the cap)")
    fit.add_argument("--device", default="cpu", help="cpu (compiled kernels) or cuda[:N] (gsplat)")
    fit.add_argument("--seed", type=int, default=defaults.seed)
    fit.add_argument("--save-views", default=None, help="also write the rendered views as a transforms.json folder")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(func=cmd_fit_gaussians)


def _held_out_split(count: int, held_out: int) -> tuple[list[int], list[int]]:
    """Every k-th view (evenly spaced, starting at k // 2) is held out."""
    if held_out <= 0:
        return list(range(count)), []
    if held_out >= count:
        raise ConfigError(f"--held-out {held_out} leaves no training view of {count}")
    step = count / held_out
    test = sorted({int(step * i + step / 2) for i in range(held_out)})
    return [i for i in range(count) if i not in test], test


def _folder_init(folder: Path, init: str | None, count: int, seed: int):
    from clip_gs.fitting.init import init_from_mesh, init_from_points, random_points

    if init is None:
        print(f"fit-gaussians: {folder}: no --init, starting from {count:,} random points in the unit ball")
        return init_from_points(random_points(count, 1.0, seed), source=folder.name)
    import torch

    from clip_gs.data.assets import MESH_EXTENSIONS
    from clip_gs.errors import MeshError, NotGaussianDataError
    from clip_gs.gaussians import load_gaussians

    path = Path(init)
    if path.suffix.lower() in MESH_EXTENSIONS and path.suffix.lower() != ".ply":
        # A mesh: its surface, moved into the views' frame when clip-gs wrote them (clip_gs.world).
        spec = json.loads((folder / "transforms.json").read_text())
        world = torch.tensor(spec.get("clip_gs", {}).get("world", torch.eye(4).tolist()), dtype=torch.float64)
        return init_from_mesh(path, count, world, seed=seed)
    try:
        cloud = load_gaussians(path)
        points, colors = cloud.means, cloud.rgb
    except NotGaussianDataError:  # a point cloud (.ply with x, y, z and maybe colours)
        import numpy as np
        import trimesh

        loaded = trimesh.load(str(path), process=False)
        if not hasattr(loaded, "vertices") or len(loaded.vertices) == 0:
            raise MeshError(f"{path}: no points to start the fit from") from None
        points = torch.from_numpy(np.asarray(loaded.vertices, dtype=np.float32))
        rgba = getattr(getattr(loaded, "visual", None), "vertex_colors", None)
        colors = None if rgba is None or len(rgba) != len(points) else torch.from_numpy(np.asarray(rgba)[:, :3] / 255.0)
    if points.shape[0] > count:
        keep = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:count].sort().values
        points, colors = points[keep], None if colors is None else colors[keep]
    return init_from_points(points, colors, source=path.name)


def cmd_fit_gaussians(args: argparse.Namespace) -> int:
    import torch

    from clip_gs.fitting.fit import FitConfig, fit_gaussians
    from clip_gs.fitting.mesh import fit_mesh
    from clip_gs.fitting.posed import write_posed_images
    from clip_gs.gaussians import save_gaussians

    config = FitConfig(iterations=args.iterations, sh_degree=args.sh_degree, max_gaussians=args.max_gaussians,
                       seed=args.seed)  # fmt: skip
    source = Path(args.input)
    count = args.init_gaussians or max(1, config.max_gaussians // 2)
    if source.is_dir():
        from clip_gs.fitting.posed import read_posed_images

        posed = read_posed_images(source)
        train_ids, test_ids = _held_out_split(len(posed), args.held_out)
        train, test = posed[torch.tensor(train_ids)], (posed[torch.tensor(test_ids)] if test_ids else None)
        init = _folder_init(source, args.init, count, args.seed)
        result = fit_gaussians(train, init, config, held_out=test, device=args.device, progress=not args.quiet)
    else:
        fitted = fit_mesh(source, config, views=args.views, held_out=args.held_out, size=args.size,
                          samples=args.samples, init_gaussians=count, device=args.device,
                          progress=not args.quiet)  # fmt: skip
        result, train = fitted.result, fitted.views
        if args.save_views:
            extra = {"clip_gs": {"mesh": str(source), "world": fitted.world.tolist(), "renderer": "blender-cycles"}}
            write_posed_images(args.save_views, train, extra=extra)
            print(f"wrote {len(train)} views to {args.save_views}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_gaussians(result.cloud, out)
    score = f"held-out PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}" if result.psnr is not None else "no held-out views"
    print(f"wrote {out}: {result.cloud.num_gaussians:,} Gaussians (SH {config.sh_degree}) fitted to {len(train)} views "
          f"in {config.iterations} iterations, {result.seconds:.1f} s; {score}")  # fmt: skip
    return 0


__all__ = ["add_fit_parser", "cmd_fit_gaussians"]
