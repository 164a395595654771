"""The ``clip-gs`` command.

Subcommands:
    clip-gs info FILE                       count, SH degree, bounds, attribute statistics
    clip-gs render FILE --out sheet.png     contact sheet of orbit views of a 3DGS file or a mesh
    clip-gs prepare SOURCE --out DIR        triplet shards (3DGS, teacher view/caption embeddings)
    clip-gs fit-gaussians MESH|DIR --out F  3DGS fitted to Blender renders of a mesh or to transforms.json views
    clip-gs verify DIR|s3://...             re-read and checksum every record; exit 3 when some are damaged
    clip-gs teacher build --seed S --out F  train the offline CLIP teacher (also: teacher eval)
    clip-gs eval --model M --data DIR       zero-shot, few-shot and retrieval on a prepared split
    clip-gs push DIR --repo-id ORG/NAME     upload an exported model with its generated model card
    clip-gs classify FILE... --model M ...  zero-shot labels of 3DGS files and meshes (also: embed, search)
    clip-gs labels --teacher T ... --out F  a label-embedding file: zero-shot with no text tower

Errors of the package (:class:`~clip_gs.ClipGSError`) are printed as one line and exit with
status 2; anything else is a bug and keeps its traceback. ``prepare`` exits with 3 when some
inputs failed (they are listed in ``DIR/failures.jsonl``) and 0 only when none did; ``verify``
exits with 3 when some records are damaged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from clip_gs.errors import EXIT_FATAL, ClipGSError


def _statistics_rows(cloud) -> list[tuple[str, torch.Tensor]]:
    return [
        ("position", cloud.means),
        ("rgb", cloud.rgb),
        ("opacity", cloud.opacity.unsqueeze(-1)),
        ("scale", cloud.scales),
    ]


def format_info(cloud) -> str:
    """A human-readable summary of an unbatched cloud (what ``clip-gs info`` prints)."""
    lines = [
        f"file:        {cloud.source}",
        f"gaussians:   {cloud.num_gaussians:,}",
        f"sh degree:   {cloud.sh_degree}",
    ]
    low, high = cloud.means.amin(0), cloud.means.amax(0)
    lines.append(f"bounds min:  {_vec(low)}")
    lines.append(f"bounds max:  {_vec(high)}")
    lines.append(f"extent:      {_vec(high - low)}")
    lines.append("")
    lines.append(f"{'attribute':<10} {'min':>10} {'mean':>10} {'max':>10} {'std':>10}")
    for name, values in _statistics_rows(cloud):
        flat = values.reshape(-1, values.shape[-1]).double()
        for c in range(flat.shape[1]):
            label = name if flat.shape[1] == 1 else f"{name}[{'xyz'[c] if name != 'rgb' else 'rgb'[c]}]"
            col = flat[:, c]
            lines.append(
                f"{label:<10} {col.min().item():>10.4g} {col.mean().item():>10.4g} "
                f"{col.max().item():>10.4g} {col.std(unbiased=False).item():>10.4g}"
            )
    return "\n".join(lines)


NAMED_BACKGROUNDS = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "grey": (0.5, 0.5, 0.5),
    "gray": (0.5, 0.5, 0.5),
}


def parse_background(text: str) -> tuple[float, float, float]:
    """``"white"``, ``"black"``, ``"grey"`` or ``"r,g,b"`` with components in [0, 1]."""
    if text in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[text]
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(
            f"background must be one of {sorted(NAMED_BACKGROUNDS)} or 'r,g,b' in [0, 1], got {text!r}"
        )
    return values


BACKGROUND_HELP = "white, black, grey or r,g,b in [0, 1]"
ELEVATION_HELP = "camera elevation of the views in degrees"


def _vec(v: torch.Tensor) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v.tolist()) + ")"


def cmd_info(args: argparse.Namespace) -> int:
    from clip_gs.gaussians.assets import read_asset

    cloud = read_asset(args.file, mesh_gaussians=args.mesh_gaussians, seed=args.seed)  # the file's own frame
    print(format_info(cloud))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from clip_gs.gaussians.assets import read_asset
    from clip_gs.gaussians.frames import resolve_up
    from clip_gs.render import render_sheet

    cloud = read_asset(args.file, mesh_gaussians=args.mesh_gaussians, seed=args.seed)
    up = resolve_up(args.file, args.up)
    sheet = render_sheet(
        cloud, views=args.views, size=args.size, elevation=args.elevation, up=up, background=args.background
    )
    output = Path(args.out)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    how = f"up {up}" + (" (auto)" if args.up == "auto" else "")
    print(f"wrote {output} ({args.views} views of {cloud.num_gaussians:,} Gaussians from {args.file}, {how})")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from clip_gs.cli_flags import storage_options
    from clip_gs.data.prepare import prepare_dataset
    from clip_gs.data.prepare_config import print_config, settings_from_args
    from clip_gs.errors import EXIT_SOME_FAILED

    if args.print_config:
        print(print_config(args, subcommand(build_parser(), "prepare")), end="")
        return 0

    settings = settings_from_args(args)
    summary = prepare_dataset(
        args.source, args.out, teacher=args.teacher, captions=args.captions, settings=settings,
        work_dir=args.work_dir, overwrite=args.overwrite, progress=not args.quiet,
        min_caption_coverage=args.min_caption_coverage, device=args.device, precision=args.precision,
        workers=args.workers, address=args.address,
        storage_options=storage_options(args.endpoint_url), embeddings=args.embeddings, holdout=args.holdout, keep_work=args.keep_work,
    )  # fmt: skip
    for failure in summary.failures:
        print(f"failed: {failure['path']}: {failure['error']}: {failure['message']}", file=sys.stderr)
    print(summary.line())
    return EXIT_SOME_FAILED if summary.failed else 0


def add_fit_parser(sub) -> None:
    from clip_gs.cli_flags import add_device_argument, add_quiet_argument, add_seed_argument
    from clip_gs.data.fitted import DEFAULT_HELD_OUT, DEFAULT_VIEWS
    from clip_gs.fitting.fit import FitConfig

    defaults = FitConfig()
    fit = sub.add_parser(
        "fit-gaussians",
        help="optimise 3DGS against views of a mesh (rendered with Blender) or a transforms.json folder",
        description="Fit 3D Gaussians to posed views (the paper's training objects). A mesh is rendered with "
        "Blender's Cycles (pip install clip-gs[render]) from --views cameras spread over the sphere plus "
        "--held-out cameras between them, and the fit starts from its surface samples. A folder holds "
        "transforms.json + images (NeRF/Blender layout); every k-th view is held out, and the fit starts "
        "from --init (a mesh, 3DGS or point-cloud file) or, without it, from random points in the unit ball. "
        "It runs on the CPU with the compiled kernels, on CUDA with gsplat.",
    )
    fit.add_argument("input", help="mesh file (.glb, .gltf, .obj, .ply, .stl) or folder with transforms.json")
    fit.add_argument("--out", required=True, help="output 3DGS file (.ply, .splat, .spz)")
    fit.add_argument("--iterations", type=int, default=defaults.iterations, help="optimisation steps (paper: 5000)")
    fit.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="training views rendered of a mesh (paper: 36)")
    fit.add_argument("--held-out", type=int, default=DEFAULT_HELD_OUT, help="views kept out of training and scored")
    fit.add_argument("--size", type=int, default=128,
                     help="view size in pixels (paper: 512): a mesh is rendered at it, a folder's larger views "
                     "are downscaled to it on reading")  # fmt: skip
    fit.add_argument("--samples", type=int, default=None, help="Cycles samples per pixel (default 64)")
    fit.add_argument("--sh-degree", type=int, default=defaults.sh_degree, help="SH degree of the result (paper: 0)")
    fit.add_argument("--max-gaussians", type=int, default=defaults.max_gaussians, help="cap on the count")
    fit.add_argument("--init", default=None, help="folder input: starting points (mesh, 3DGS or point-cloud file)")
    fit.add_argument("--init-gaussians", type=int, default=None, help="starting count (default: half the cap)")
    add_device_argument(fit)
    add_seed_argument(fit)
    fit.add_argument("--save-views", default=None,
                     help="mesh input: also write the rendered views as a transforms.json folder (a new or "
                     "empty one)")  # fmt: skip
    add_quiet_argument(fit)
    fit.set_defaults(func=cmd_fit_gaussians)


def _held_out_split(count: int, held_out: int) -> tuple[list[int], list[int]]:
    """Every k-th view (evenly spaced, starting at k // 2) is held out."""
    if held_out <= 0:
        return list(range(count)), []
    if held_out >= count:
        from clip_gs.errors import ConfigError

        raise ConfigError(f"--held-out {held_out} leaves no training view of {count}")
    step = count / held_out
    test = sorted({int(step * i + step / 2) for i in range(held_out)})
    return [i for i in range(count) if i not in test], test


def _folder_init(folder: Path, init: str | None, count: int, seed: int):
    from clip_gs.data.fitted import init_from_file
    from clip_gs.fitting import init_from_points, random_points, read_transforms

    if init is None:
        print(f"fit-gaussians: {folder}: no --init, starting from {count:,} random points in the unit ball")
        return init_from_points(random_points(count, 1.0, seed), source=folder.name)
    # a mesh goes into the views' frame when clip-gs wrote them (transforms.json's clip_gs.world)
    world = read_transforms(folder).world
    return init_from_file(init, count, torch.eye(4, dtype=torch.float64) if world is None else world, seed=seed)


def cmd_fit_gaussians(args: argparse.Namespace) -> int:
    import torch

    from clip_gs.data.fitted import fit_mesh
    from clip_gs.fitting.fit import FitConfig, fit_gaussians
    from clip_gs.fitting.posed import views_folder_is_free, write_posed_images
    from clip_gs.gaussians import save_gaussians
    from clip_gs.model.precision import resolve_device

    device = resolve_device(args.device)  # once, before any work: "auto" is CUDA when available
    config = FitConfig(iterations=args.iterations, sh_degree=args.sh_degree, max_gaussians=args.max_gaussians,
                       seed=args.seed)  # fmt: skip
    source = Path(args.input)
    count = args.init_gaussians or max(1, config.max_gaussians // 2)
    if args.save_views:
        if source.is_dir():
            from clip_gs.errors import ConfigError

            raise ConfigError(f"--save-views writes the rendered views of a mesh; {source} holds its views already")
        views_folder_is_free(args.save_views)  # before the fit, not after it
    if source.is_dir():
        from clip_gs.fitting.posed import read_posed_images

        posed = read_posed_images(source, max_size=args.size)
        train_ids, test_ids = _held_out_split(len(posed), args.held_out)
        train, test = posed[torch.tensor(train_ids)], (posed[torch.tensor(test_ids)] if test_ids else None)
        init = _folder_init(source, args.init, count, args.seed)
        result = fit_gaussians(train, init, config, held_out=test, device=device, progress=not args.quiet)
    else:
        fitted = fit_mesh(source, config, views=args.views, held_out=args.held_out, size=args.size,
                          samples=args.samples, init_gaussians=count, device=device,
                          progress=not args.quiet)  # fmt: skip
        result, train = fitted.result, fitted.views
        if args.save_views:
            extra = {"clip_gs": {"mesh": str(source), "world": fitted.world.tolist(), "renderer": "blender-cycles"}}
            write_posed_images(args.save_views, train, extra=extra)
            print(f"wrote {len(train)} views to {args.save_views}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():  # posed views: the frame is whatever their cameras say, nothing to declare
        save_gaussians(result.cloud, out)
    else:  # the mesh's own frame, declared (a .ply) or written as every reader of that format expects it
        from clip_gs.gaussians.assets import save_asset
        from clip_gs.gaussians.frames import resolve_up

        save_asset(result.cloud, out, up=resolve_up(source))
    score = (
        f"held-out PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}"
        if result.psnr is not None
        else "no held-out views"
    )
    print(f"wrote {out}: {result.cloud.num_gaussians:,} Gaussians (SH {config.sh_degree}) fitted to {len(train)} views "
          f"in {config.iterations} iterations, {result.seconds:.1f} s; {score}")  # fmt: skip
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from clip_gs.cli_flags import storage_options
    from clip_gs.data.verify import verify_dataset
    from clip_gs.errors import EXIT_SOME_FAILED

    report = verify_dataset(args.root, storage_options=storage_options(args.endpoint_url), progress=not args.quiet)
    for entry in report.damaged:
        where = entry["split"] if entry["index"] is None else f"{entry['split']}[{entry['index']}]"
        print(f"damaged: {where}: {entry['error']}: {entry['message']}", file=sys.stderr)
    print(report.line())
    return 0 if report.ok else EXIT_SOME_FAILED


def cmd_models(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs models``: every name ``--model`` and ``create_model`` take, with what it is."""
    from clip_gs.storage import cache_root
    from clip_gs.model import MODEL_CONFIGS, PRETRAINED, list_models
    from clip_gs.model.config import UNI3D_SIZES

    print(f"{'name':<17} {'width x depth':<14} weights")
    for name in list_models():
        c = MODEL_CONFIGS[name if name in MODEL_CONFIGS else UNI3D_SIZES[PRETRAINED[name].size]]
        if name in MODEL_CONFIGS:
            weights = "none: random, or create_model(name, pretrained=NAME)"
        else:
            p = PRETRAINED[name]
            where = (
                "converted and cached"
                if (cache_root() / "models" / name).is_dir()
                else f"hf download BAAI/Uni3D {p.filename}"
            )
            weights = f"Uni3D, {'with' if p.lvis else 'without'} Objaverse-LVIS ({where})"
        print(f"{name:<17} {f'{c.width} x {c.depth}':<14} {weights}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip-gs",
        description="CLIP-GS: language-aligned 3D Gaussian Splatting",
        epilog="training: clip-gs fit|validate|test|predict --config FILE.yaml (LightningCLI; see clip-gs fit --help)",
    )
    from clip_gs.cli_flags import (
        add_gaussians_arguments,
        add_device_argument,
        add_endpoint_url_argument,
        add_mesh_gaussians_argument,
        add_overwrite_argument,
        add_precision_argument,
        add_quiet_argument,
        add_seed_argument,
        add_up_argument,
    )

    sub = parser.add_subparsers(dest="command", required=True)

    def add_asset_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="3DGS file (.ply, .splat, .spz, compressed .ply) or mesh (.obj, .glb, ...)")
        add_mesh_gaussians_argument(p)
        add_seed_argument(p)

    info = sub.add_parser("info", help="print count, SH degree, bounds and attribute statistics")
    add_asset_options(info)
    info.set_defaults(func=cmd_info)

    render = sub.add_parser("render", help="render a contact sheet of orbit views")
    add_asset_options(render)
    render.add_argument("--out", required=True, help="output image (.png, .jpg)")
    render.add_argument("--views", type=int, default=4, help="number of orbit views")
    render.add_argument("--size", type=int, default=256, help="view width and height in pixels")
    render.add_argument("--elevation", type=float, default=20.0, help=ELEVATION_HELP)
    add_up_argument(render)
    render.add_argument("--background", type=parse_background, default="white", help=BACKGROUND_HELP)
    render.set_defaults(func=cmd_render)

    prepare = sub.add_parser("prepare", help="build triplet shards: 3DGS + teacher embeddings of views and captions")
    prepare.add_argument("source", help="folder of 3DGS files and/or meshes (root/<label>/<file>), or synthetic:N")
    prepare.add_argument("--out", required=True, help="output folder (train/, val/, test/, manifest.json)")
    prepare.add_argument(
        "--captions",
        help="captions file: CSV with a header (id|path|uid, caption, label, split), Cap3D's headerless uid,caption "
        "CSV, or JSONL; rows match objects by id, relative path or file stem",
    )
    prepare.add_argument(
        "--min-caption-coverage", type=float, default=1.0,
        help="with --captions: the share of objects it must caption, else nothing is done (default 1: all)",
    )  # fmt: skip
    prepare.add_argument(
        "--teacher", default=None,
        help="teacher spec (default: EVA02-E-14-plus/laion2b_s9b_b144k when cached locally; for synthetic:N "
        "sources only, else synthetic-clip; a folder source without a cached EVA-CLIP must name one)",
    )  # fmt: skip
    prepare.add_argument("--views", type=int, default=8, help="orbit views rendered per object (paper: 36)")
    prepare.add_argument("--elevation", type=float, default=20.0, help=ELEVATION_HELP)
    prepare.add_argument("--image-size", type=int, default=None, help="view size (default: the teacher's)")
    prepare.add_argument("--background", type=parse_background, default="white", help=BACKGROUND_HELP)
    add_up_argument(prepare)
    add_mesh_gaussians_argument(prepare)
    prepare.add_argument("--synthetic-gaussians", type=int, default=2048, help="Gaussians per synthetic object")
    prepare.add_argument(
        "--synthetic-pose", default="random", choices=("random", "upright", "canonical"),
        help="synthetic objects: any rotation; standing on +Y and turned about it; or unrotated",
    )  # fmt: skip
    add_gaussians_arguments(prepare)
    prepare.add_argument("--render-samples", type=int, default=16, help="with --gaussians fitted: Cycles samples per "
                         "pixel of the fit's views (16: within 0.3 dB of 64 in held-out PSNR, measured)")  # fmt: skip
    prepare.add_argument(
        "--max-gaussians", type=int, default=None,
        help="resample any object above this many Gaussians to it (seeded by --seed; the record keeps the count)",
    )  # fmt: skip
    prepare.add_argument("--val-fraction", type=float, default=0.1)
    prepare.add_argument("--test-fraction", type=float, default=0.1)
    add_seed_argument(prepare)
    prepare.add_argument(
        "--embeddings",
        default=None,
        help="folder of precomputed embeddings, <id or uid>.safetensors "
        "per object (clip_gs.data.precomputed): no rendering, no image tower",
    )
    add_device_argument(prepare)  # the teacher, the rendering and fits
    add_precision_argument(prepare)  # the teacher's
    prepare.add_argument(
        "--workers",
        type=int,
        default=1,
        help="CPU workers: more than one prepares on a local Ray (pip install clip-gs[scale]; with --address, "
        "workers on the cluster, default its CPUs); the dataset is the same",
    )
    prepare.add_argument(
        "--address",
        default=None,
        help="a running Ray cluster, HOST:PORT or auto (ray start --head ...): the objects are prepared on its "
        "nodes (each with clip-gs installed and the source at the same path), the shards written here",
    )
    add_endpoint_url_argument(prepare)
    prepare.add_argument(
        "--config",
        default=None,
        help="a YAML file of these options (e.g. examples/configs/prepare-paper.yaml); flags given here override it",
    )
    prepare.add_argument("--print-config", action="store_true", help="print the options in effect as a config and exit")
    prepare.add_argument(
        "--holdout",
        default=None,
        help="objects that never train: a uid list, the Objaverse-LVIS "
        "annotation or an OpenShape split file; they go to the heldout split",
    )
    prepare.add_argument("--work-dir", default=None, help="per-object records kept for resuming (default OUT/.work; for s3:// outputs a local scratch folder, removed after a finished run)")
    prepare.add_argument("--keep-work", action="store_true",
                         help="with an s3:// output: keep the work folder after a finished run (default: removed)")
    add_overwrite_argument(prepare)
    add_quiet_argument(prepare)
    prepare.set_defaults(func=cmd_prepare)

    add_fit_parser(sub)  # clip-gs fit-gaussians
    verify = sub.add_parser("verify", help="re-read every record of a prepared dataset; list what is damaged")
    verify.add_argument("root", help="dataset folder or s3:// prefix (with manifest.json)")
    add_endpoint_url_argument(verify)
    add_quiet_argument(verify)
    verify.set_defaults(func=cmd_verify)
    models = sub.add_parser("models", help="list the model names: configurations and pretrained weights")
    models.set_defaults(func=cmd_models)
    from clip_gs.offline_teacher.cli import add_teacher_parser  # clip-gs teacher build / eval

    add_teacher_parser(sub)
    from clip_gs.evaluation.cli import add_eval_parser  # clip-gs eval

    add_eval_parser(sub)
    from clip_gs.usage.cli import add_usage_parsers  # clip-gs classify / embed / search

    add_usage_parsers(sub)
    from clip_gs.usage.labels_cli import add_labels_parser  # clip-gs labels

    add_labels_parser(sub)
    from clip_gs.usage.push_cli import add_hub_parser  # clip-gs push

    add_hub_parser(sub)
    from clip_gs.demo.cli import add_demo_parser  # clip-gs demo

    add_demo_parser(sub)
    return parser


SIGNED_VALUE_OPTIONS = ("--up",)
"""Options whose values may start with a dash (``--up -y``)."""

SIGNED_VALUES = ("-y", "+y", "-z", "+z")
"""The dash-led values those options take (anything else after them is left to argparse)."""


def join_signed_values(argv: Sequence[str]) -> list[str]:
    """``["--up", "-y"]`` -> ``["--up=-y"]``: argparse would read ``-y`` as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in SIGNED_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1] in SIGNED_VALUES:
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The sub-parser of ``clip-gs NAME``."""
    (actions,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions.choices[name]


TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
"""Subcommands run by LightningCLI (:mod:`clip_gs.lightning.cli`); the others are argparse's."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TRAINING_COMMANDS:  # clip-gs fit --config FILE.yaml: typed LightningCLI
        from clip_gs.lightning.cli import cli_main

        try:
            return cli_main(argv)
        except ClipGSError as exc:
            print(f"clip-gs {argv[0]}: error: {exc}", file=sys.stderr)
            return EXIT_FATAL
    parser = build_parser()
    if argv and argv[0] == "prepare":  # clip-gs prepare --config FILE.yaml: the file's options, then the flags'
        from clip_gs.data.prepare_config import expand_config

        try:
            argv = ["prepare", *expand_config(join_signed_values(argv[1:]), subcommand(parser, "prepare"))]
        except ClipGSError as exc:
            print(f"clip-gs prepare: error: {exc}", file=sys.stderr)
            return EXIT_FATAL
    args = parser.parse_args(join_signed_values(argv))
    try:
        return args.func(args)
    except ClipGSError as exc:
        print(f"clip-gs {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
