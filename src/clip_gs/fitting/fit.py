"""Optimise 3D Gaussians against posed RGBA images: the 3DGS recipe (Kerbl et al. 2023) as the paper
uses it to make its training objects (SH degree 0, a capped count, a few thousand iterations).

Per iteration (one training view, drawn by the seeded generator):

1. render the view with :func:`~clip_gs.render.rasterize` (the compiled CPU kernels, or gsplat on
   CUDA) over a background colour drawn at random per iteration, and composite the target image
   over the same colour, so that empty space must be learnt transparent (gsplat's
   ``random_bkgd``);
2. loss ``(1 - ssim_weight) L1 + ssim_weight (1 - SSIM)`` (the trainer's 0.2 D-SSIM; SSIM from
   torchmetrics, 11 px Gaussian window);
3. Adam with one optimiser per attribute (gsplat's convention, what its strategies edit): means
   with an exponentially decaying learning rate, log-scales, quaternions, opacity logits, SH DC
   and (SH degree > 0) the rest at 1/20 of the DC rate;
4. densification by gsplat's :class:`~gsplat.strategy.DefaultStrategy` (plain torch: clone and
   split by the mean screen-space gradient, prune by opacity and size), with both backends; the
   screen-space gradients come from ``rasterize(..., with_info=True)``. The opacity reset is
   done here (``reset_every``) with gsplat's ``reset_opa`` op: gsplat 1.5's own reset condition
   never fires (``step % reset_every == 0 & step > 0`` parses as a chained comparison that is
   always false). After each refinement, a cloud above ``max_gaussians`` loses its least opaque
   Gaussians (gsplat's ``remove`` op).

Schedules are fractions of ``iterations`` (choices, config fields), so one config scales from a
CPU budget (1,000 iterations) to the paper's 5,000.

Determinism: the run draws views, backgrounds and gsplat's split noise from one seeded generator
state (``torch.random.fork_rng`` around the run, so the caller's RNG is untouched); on CPU the
kernels are deterministic, so a run repeats bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clip_gs.errors import ConfigError, FitError, MissingDependencyError
from clip_gs.fitting.posed import PosedImages
from clip_gs.gaussians.cloud import MAX_SH_DEGREE, GaussianCloud, sh_coeff_count
from clip_gs.render.blender import composite
from clip_gs.render.rasterize import rasterize


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_gaussians` (defaults: the CPU schedule, 1,000 iterations).

    Attributes:
        iterations: optimisation steps, one view each.
        sh_degree: SH degree of the result, 0..3 (the paper: 0).
        max_gaussians: cap on the count (the paper: 10K-20K).
        ssim_weight: weight of D-SSIM in the loss (the trainer: 0.2).
        lr_means, lr_means_final: position learning rate at the start and the end (exponential
            decay), in object units (the object fits the unit sphere).
        lr_scales, lr_quats, lr_opacities, lr_sh0: the other rates; higher SH at ``lr_sh0 / 20``.
            The position, scale and colour rates are twice gsplat's (and the position rate 19x the
            trainer's, whose scenes are larger): on the 1,000-iteration schedule that gave 30.6 dB
            held-out on Duck.glb against 27.4 dB with gsplat's rates (README, "Fitted Gaussians").
        refine_start, refine_stop, refine_every: densification window and period, as fractions of
            ``iterations`` (stop) or steps.
        reset_every: opacity reset period in steps (0: never), inside the densification window.
        grow_grad2d: gsplat's mean screen-space gradient threshold for clone / split.
        prune_opacity: Gaussians below this opacity are pruned at refinement.
        random_background: draw the background per iteration (else ``background``).
        background: RGB background of the evaluation (and of training without random_background).
        seed: seed of views, backgrounds and split noise.
    """

    iterations: int = 1000
    sh_degree: int = 0
    max_gaussians: int = 10_000
    ssim_weight: float = 0.2
    lr_means: float = 3e-3
    lr_means_final: float = 3e-5
    lr_scales: float = 1e-2
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 5e-3
    refine_start: int = 100
    refine_stop: float = 0.6
    refine_every: int = 50
    reset_every: int = 0
    grow_grad2d: float = 2e-4
    prune_opacity: float = 0.005
    random_background: bool = True
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            raise ConfigError(f"sh_degree must be 0..{MAX_SH_DEGREE}, got {self.sh_degree}")
        if self.max_gaussians < 1:
            raise ConfigError(f"max_gaussians must be >= 1, got {self.max_gaussians}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ConfigError(f"ssim_weight must lie in [0, 1], got {self.ssim_weight}")
        if not 0.0 <= self.refine_stop <= 1.0:
            raise ConfigError(f"refine_stop is a fraction of iterations in [0, 1], got {self.refine_stop}")
        if self.refine_every < 1:
            raise ConfigError(f"refine_every must be >= 1, got {self.refine_every}")


@dataclass
class FitResult:
    """What :func:`fit_gaussians` returns.

    Attributes:
        cloud: the fitted :class:`GaussianCloud`, in the frame of the cameras.
        psnr, ssim: mean over the held-out views (over ``config.background``); None without them.
        seconds: wall time of the optimisation (not of the evaluation).
        losses: the training loss of every iteration.
        counts: ``(step, number of Gaussians)`` after each refinement.
        config: the settings used.
    """

    cloud: GaussianCloud
    psnr: float | None
    ssim: float | None
    seconds: float
    losses: list[float] = field(repr=False)
    counts: list[tuple[int, int]] = field(repr=False)
    config: FitConfig

    def summary(self) -> dict:
        """JSON-ready facts of the fit (what ``prepare`` keeps per record)."""
        return {"psnr": self.psnr, "ssim": self.ssim, "seconds": round(self.seconds, 3),
                "num_gaussians": self.cloud.num_gaussians, "iterations": self.config.iterations,
                "sh_degree": self.config.sh_degree, "final_loss": self.losses[-1]}  # fmt: skip


def _strategy_module():
    try:
        from gsplat.strategy import DefaultStrategy
        from gsplat.strategy.ops import remove, reset_opa
    except ImportError as exc:
        raise MissingDependencyError(
            f"fitting uses gsplat's densification strategies: pip install clip-gs[fit] (import failed: {exc})"
        ) from exc
    return DefaultStrategy, remove, reset_opa


def _params(cloud: GaussianCloud, sh_degree: int, device: torch.device) -> torch.nn.ParameterDict:
    sh = cloud.sh.to(device=device, dtype=torch.float32)
    coeffs = sh_coeff_count(sh_degree)
    if sh.shape[1] < coeffs:
        sh = torch.cat([sh, sh.new_zeros(sh.shape[0], coeffs - sh.shape[1], 3)], dim=1)
    sh = sh[:, :coeffs]
    values = {
        "means": cloud.means, "scales": cloud.log_scales, "quats": cloud.quats,
        "opacities": cloud.opacity_logits, "sh0": sh[:, :1],
    }  # fmt: skip
    if coeffs > 1:
        values["shN"] = sh[:, 1:]
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.detach().to(device=device, dtype=torch.float32).clone()) for k, v in values.items()}
    )


def _sh(params: torch.nn.ParameterDict) -> Tensor:
    """``[N, K, 3]``: the DC and (SH degree > 0) the higher coefficients, optimised apart."""
    return params["sh0"] if "shN" not in params else torch.cat([params["sh0"], params["shN"]], dim=1)


def _cloud(params: torch.nn.ParameterDict, source: str | None) -> GaussianCloud:
    sh = _sh(params)
    return GaussianCloud(
        means=params["means"].detach().cpu().clone(),
        sh=sh.detach().cpu().clone(),
        opacity_logits=params["opacities"].detach().cpu().clone(),
        log_scales=params["scales"].detach().cpu().clone(),
        quats=params["quats"].detach().cpu().clone(),
        source=source,
    )


def _render(params, cameras, background: Tensor, with_info: bool = False):
    return rasterize(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]), _sh(params),
        cameras.viewmats, cameras.Ks, cameras.width, cameras.height, background=background, with_info=with_info,
    )  # fmt: skip


def evaluate_views(cloud: GaussianCloud, posed: PosedImages, background=(1.0, 1.0, 1.0)) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of ``cloud`` against ``posed`` (composited over ``background``),
    torchmetrics' definitions, data range 1."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from clip_gs.render.rasterize import render_cloud

    bg = torch.tensor(background, dtype=torch.float32)
    with torch.no_grad():
        out = render_cloud(cloud.to(dtype=torch.float32), posed.cameras, background=bg)
        preds = out.rgb.clamp(0, 1).permute(0, 3, 1, 2)
        target = composite(posed.images, bg).permute(0, 3, 1, 2)
        psnr = torch.stack([peak_signal_noise_ratio(p[None], t[None], data_range=1.0) for p, t in zip(preds, target)])
        ssim = structural_similarity_index_measure(preds, target, data_range=1.0)
    return float(psnr.mean()), float(ssim)


def fit_gaussians(
    posed: PosedImages,
    init: GaussianCloud,
    config: FitConfig | None = None,
    held_out: PosedImages | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> FitResult:
    """Optimise ``init`` so that its renders match ``posed`` (see the module docstring).

    Args:
        posed: the training views (C >= 1), RGBA.
        init: the starting Gaussians in the cameras' frame, e.g.
            :func:`~clip_gs.fitting.init_from_mesh` or :func:`~clip_gs.fitting.init_from_points`;
            its SH are cut or zero-padded to ``config.sh_degree``.
        config: :class:`FitConfig` (None: the defaults).
        held_out: views to report PSNR / SSIM on (never trained on).
        device: ``"cpu"`` (compiled kernels) or a CUDA device (gsplat).
        progress: show a tqdm bar with the loss and the count.

    Returns:
        :class:`FitResult`.

    Raises:
        FitError: the loss, or a parameter after a step, became NaN or infinite (names the object
            and the step).
        MissingDependencyError: gsplat (its strategies) is not installed.
    """
    config = config or FitConfig()
    DefaultStrategy, remove, reset_opa = _strategy_module()
    from torchmetrics.functional.image import structural_similarity_index_measure
    from tqdm.auto import tqdm

    device = torch.device(device)
    name = posed.name
    iterations = config.iterations
    refine_stop = int(config.refine_stop * iterations)
    strategy = DefaultStrategy(
        prune_opa=config.prune_opacity, grow_grad2d=config.grow_grad2d, refine_start_iter=config.refine_start,
        refine_stop_iter=refine_stop, refine_every=config.refine_every, reset_every=iterations + 1,
    )  # fmt: skip
    cameras = posed.cameras.to(device=device)
    images = posed.images.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        params = _params(init, config.sh_degree, device)
        rates = {"means": config.lr_means, "scales": config.lr_scales, "quats": config.lr_quats,
                 "opacities": config.lr_opacities, "sh0": config.lr_sh0, "shN": config.lr_sh0 / 20}  # fmt: skip
        optimizers = {k: torch.optim.Adam([params[k]], lr=rates[k], eps=1e-15) for k in params}
        strategy.check_sanity(params, optimizers)
        state = strategy.initialize_state(scene_scale=1.0)
        decay = (config.lr_means_final / config.lr_means) ** (1.0 / max(1, iterations))
        losses: list[float] = []
        counts: list[tuple[int, int]] = [(0, init.num_gaussians)]
        start = time.perf_counter()
        bar = tqdm(range(iterations), desc=f"fit {name}", disable=not progress, leave=False)
        for step in bar:
            view = int(torch.randint(len(posed), (1,)))
            background = torch.rand(3, device=device) if config.random_background else torch.tensor(
                config.background, device=device)  # fmt: skip
            out = _render(params, cameras[view], background, with_info=True)
            strategy.step_pre_backward(params, optimizers, state, step, out.info)
            pred = out.rgb.permute(0, 3, 1, 2)
            target = composite(images[view : view + 1], background).permute(0, 3, 1, 2)
            l1 = (pred - target).abs().mean()
            ssim = structural_similarity_index_measure(pred, target, data_range=1.0)
            loss = (1.0 - config.ssim_weight) * l1 + config.ssim_weight * (1.0 - ssim)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FitError(f"{name}: the fit diverged at step {step}: the loss is {value} "
                               f"({params['means'].shape[0]} Gaussians)")  # fmt: skip
            losses.append(value)
            loss.backward()
            for optimizer in optimizers.values():
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            optimizers["means"].param_groups[0]["lr"] *= decay
            broken = [k for k, v in params.items() if not bool(torch.isfinite(v).all())]
            if broken:
                raise FitError(f"{name}: the fit diverged at step {step}: {', '.join(broken)} went non-finite "
                               f"(loss {value:.4g}, {params['means'].shape[0]} Gaussians)")  # fmt: skip
            strategy.step_post_backward(params, optimizers, state, step, out.info, packed=False)
            refined = step > config.refine_start and step < refine_stop and step % config.refine_every == 0
            if config.reset_every and step < refine_stop and step > 0 and step % config.reset_every == 0:
                reset_opa(params=params, optimizers=optimizers, state=state, value=config.prune_opacity * 2.0)
            extra = params["means"].shape[0] - config.max_gaussians
            if extra > 0:
                opacity = params["opacities"].detach()
                drop = torch.zeros_like(opacity, dtype=torch.bool)
                drop[torch.topk(opacity, extra, largest=False).indices] = True
                remove(params=params, optimizers=optimizers, state=state, mask=drop)
            if refined or extra > 0:
                counts.append((step, params["means"].shape[0]))
            if progress and step % 25 == 0:
                bar.set_postfix(loss=f"{value:.4f}", gaussians=params["means"].shape[0])
        seconds = time.perf_counter() - start
    cloud = _cloud(params, init.source)
    psnr = ssim_value = None
    if held_out is not None:
        psnr, ssim_value = evaluate_views(cloud, held_out, config.background)
    return FitResult(cloud, psnr, ssim_value, seconds, losses, counts, config)


__all__ = ["FitConfig", "FitResult", "evaluate_views", "fit_gaussians"]
