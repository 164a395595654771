"""Build (train) the offline teacher ``synthetic-clip`` from a seed: ``clip-gs teacher build``.

Recipe (every random choice is drawn from ``seed``):

1. Objects: ``per_class`` synthetic objects of each of the 13 classes, seeds
   ``seed * 100_000 + k`` (all below :data:`~clip_gs.offline_teacher.views.TRAIN_SEED_LIMIT`; the quality
   tests use seeds from :data:`~clip_gs.offline_teacher.views.EVAL_SEED_START`, never trained on).
2. Views: ``views`` renders of each by the package's rasterizer (64 px, white background, random
   azimuth, elevation in [-20, 60] degrees, distance 2.7-3.4), cached once as a tensor file under
   ``views/`` under the cache root (``$CLIP_GS_CACHE``).
3. Captions, drawn afresh at every step for every sample
   (:func:`~clip_gs.offline_teacher.captions.sample_caption`): the object's full
   caption, class only, colour + class, pattern + class, colour only or pattern only, either as
   "a <phrase>" or inside one of the prompt :data:`~clip_gs.teachers.prompts.TEMPLATES`. Identical
   texts within a batch fall back to the full caption (fewer false negatives). A fifth of the views
   are turned to greyscale and get captions without colour words
   (:data:`~clip_gs.offline_teacher.captions.GRAY_CAPTION_FORMS`).
4. Training: open_clip's own ``ClipLoss`` on two parts of every step:

   - the main batch (``batch_size``), made of groups of ``group_size`` objects sharing their primary
     colour, so colour cannot tell the captions of a group apart and shape has to;
   - ``class_groups`` groups of one object per class captioned by the class noun alone (in a
     template), each its own ``ClipLoss``: a clean 13-way shape task without false negatives.

   The two losses are added. Views get random horizontal flips and shifts of up to 4 px. AdamW
   (weight decay on matrices only), linear warmup then cosine decay, logit scale clamped at 100.
   A warm restart follows (:func:`restart_from_file`, ``restart_steps`` more steps from the saved
   fp16 weights with a fresh optimizer and a lower peak learning rate). At the end the image tower's
   BatchNorm statistics are re-estimated on training views (:func:`recalibrate_batchnorm`).
   (Why the two parts: trained on full captions alone, or on mixed captions in uniformly random batches, this model
   learned colour and pattern within minutes but no shape at all after 300 steps: the 1-nearest-
   neighbour class accuracy of its image embeddings stayed at chance.)
5. Output: a safetensors file (fp16; the token embedding stored sparsely, see
   :data:`~clip_gs.teachers.open_clip_teacher.SPARSE_EMBEDDING_SUFFIX`) plus ``<out>.json``, the
   build record (arguments, loss curve, time).

Reproducibility: renders are a function of the object seeds alone (identical for any worker count).
Training is bit-reproducible for the same seed, torch version, machine and thread count
(``--threads``); with a different thread count (or CPU type) float reductions are summed in another
order, so weights differ in the last bits and the quality numbers move by a point or so.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clip_gs.errors import ConfigError
from clip_gs.offline_teacher.captions import batch_captions, sample_caption

METADATA_KEY = "clip_gs_build"
"""The safetensors metadata key holding the build facts (a JSON object)."""


def _colour_grouped_batch(by_colour: list[torch.Tensor], batch_size: int, group_size: int,
                          gen: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Object indices of one batch made of groups of ``group_size`` objects sharing their primary colour.

    Within a group colour cannot tell captions apart, so shape (and pattern) must: the hard negatives
    that keep the image tower from learning colour alone.
    """
    groups = max(1, batch_size // group_size)
    colours = torch.randperm(len(by_colour), generator=gen)[:groups]
    parts = []
    for c in colours.tolist():
        pool = by_colour[c]
        parts.append(pool[torch.randperm(len(pool), generator=gen)[:group_size]])
    return torch.cat(parts)


@dataclass
class BuildResult:
    """What :func:`build_offline_teacher` made.

    Attributes:
        path: the safetensors file.
        losses: the training loss of every step.
        seconds: wall time of the training loop (rendering excluded).
        record: the JSON build record written next to the weights.
    """

    path: Path
    losses: list[float]
    seconds: float
    record: dict = field(default_factory=dict)


def _class_groups(by_class: list[torch.Tensor], groups: int, gen: torch.Generator) -> torch.Tensor:
    """``[groups, C]`` object indices: each row holds one random object of every class."""
    rows = []
    for _ in range(groups):
        rows.append(torch.stack([pool[torch.randint(0, len(pool), (1,), generator=gen)[0]] for pool in by_class]))
    return torch.stack(rows)


def _augment(
    images: torch.Tensor, gen: torch.Generator, shift: int = 4, gray: torch.Tensor | None = None
) -> torch.Tensor:
    """Random horizontal flip and shift (white padding) of ``uint8 [B, S, S, 3]`` -> float ``[B, 3, S, S]`` in [0, 1];
    views where ``gray [B]`` is set become greyscale (Rec. 601 luma in all three channels)."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    if gray is not None and gray.any():
        luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
        x = torch.where(gray.view(-1, 1, 1, 1), luma, x)
    b, _, s, _ = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if shift:
        padded = torch.nn.functional.pad(x, (shift,) * 4, value=1.0)
        offs = torch.randint(0, 2 * shift + 1, (b, 2), generator=gen)
        x = torch.stack([padded[i, :, oy : oy + s, ox : ox + s] for i, (oy, ox) in enumerate(offs.tolist())])
    return x


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_teacher_weights(model: torch.nn.Module, path: Path, seen_tokens: torch.Tensor, metadata: dict) -> None:
    """Write ``model``'s state dict as fp16 safetensors with the token embedding stored sparsely.

    Args:
        seen_tokens: ``bool [vocab]``, the token ids that occurred in training (other rows are dropped;
            they load as zeros).
        metadata: build facts, stored as one JSON string under :data:`METADATA_KEY`.
    """
    from safetensors.torch import save_file

    from clip_gs.teachers.open_clip_teacher import SPARSE_EMBEDDING_SUFFIX

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    key = next(k for k in state if k.endswith(SPARSE_EMBEDDING_SUFFIX))
    emb = state.pop(key)
    ids = torch.nonzero(seen_tokens).flatten()
    state[f"{key}.rows"] = emb[ids]
    state[f"{key}.ids"] = ids.to(torch.int32)
    state[f"{key}.shape"] = torch.tensor(list(emb.shape), dtype=torch.int64)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # one metadata key: safetensors writes a metadata map in hash order, so several keys would make
    # the bytes (and the checksum in the teacher's identity) differ between identical builds
    save_file(
        state, str(path), metadata={METADATA_KEY: json.dumps({k: str(v) for k, v in metadata.items()}, sort_keys=True)}
    )


def recalibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, seed: int, batches: int | None = None,
                          batch_size: int = 128, gray_prob: float = 0.2) -> None:  # fmt: skip
    """Re-estimate every BatchNorm's running mean / variance of ``model``'s image tower.

    The running averages kept during training lag behind fast-changing weights (measured on this
    model mid-training: zero-shot 59% with the running statistics against 78% with batch statistics
    on the same images). Here they are recomputed as exact averages (``momentum=None``) over
    ``batches`` batches of training views drawn from ``seed`` with the training augmentations, no
    gradients. Deterministic for a given seed, model and thread count.

    Args:
        images: ``uint8 [N, V, S, S, 3]`` training views.
        batches: number of batches (default: enough to see every view about once, between 2 and 30).
    """
    import open_clip

    norms = [m for m in model.visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    if batches is None:
        batches = min(30, max(2, math.ceil(images.shape[0] * images.shape[1] / batch_size)))
    gen = torch.Generator().manual_seed(seed * 1_000 + 2)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    saved = [(m.momentum, m.training) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            n, v = images.shape[:2]
            for _ in range(batches):
                idx = torch.randint(0, n, (batch_size,), generator=gen)
                view = torch.randint(0, v, (batch_size,), generator=gen)
                gray = torch.rand(batch_size, generator=gen) < gray_prob
                model.encode_image((_augment(images[idx, view], gen, gray=gray) - mean) / std)
    finally:
        for m, (momentum, training) in zip(norms, saved):
            m.momentum = momentum
            m.train(training)
        model.eval()


def recalibrate_teacher_file(path: str | Path, images: torch.Tensor, seed: int, gray_prob: float = 0.2) -> None:
    """Load a built teacher file, :func:`recalibrate_batchnorm` it on ``images`` and save it in place.

    Starting from the saved (fp16) weights makes this step reproducible from the file alone.
    """
    path = Path(path)
    model, metadata, seen = load_teacher_file(path)
    recalibrate_batchnorm(model, images, seed, gray_prob=gray_prob)
    save_teacher_weights(model, path, seen, {**metadata, "batchnorm": "recalibrated"})


def load_teacher_file(path: str | Path) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """A built teacher file as a trainable open_clip model: ``(model, build metadata, seen)``, where
    ``seen`` is the ``[vocab]`` bool mask of the token embeddings the file stores (the rest are zero)."""
    import open_clip
    from safetensors import safe_open

    from clip_gs.teachers.open_clip_teacher import OpenCLIPTeacher
    from clip_gs.teachers.synthetic import ARCHITECTURE, register_architecture

    register_architecture()
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
        key = next(k for k in fh.keys() if k.endswith("token_embedding.weight.ids"))  # noqa: SIM118 - safe_open has no __iter__
        ids = fh.get_tensor(key).long()
    metadata = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else metadata
    model = OpenCLIPTeacher._create(open_clip, ARCHITECTURE, None)  # quiet about the random init it overwrites
    OpenCLIPTeacher.load_weights(model, path)
    seen = torch.zeros(model.vocab_size, dtype=torch.bool)
    seen[ids] = True
    return model, metadata, seen


def build_offline_teacher(
    out: str | Path,
    seed: int = 0,
    steps: int = 1200,
    batch_size: int = 64,
    per_class: int = 200,
    views: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int | None = None,
    workers: int = 2,
    threads: int | None = None,
    cache: str | Path | None | bool = None,
    progress: bool = True,
    log_every: int = 50,
    checkpoint_every: int = 0,
    group_size: int = 16,
    gray_prob: float = 0.2,
    class_groups: int = 4,
    restart_steps: int = 500,
    restart_lr: float | None = None,
    restarts: int = 3,
) -> BuildResult:
    """Train the offline teacher from ``seed`` and write it to ``out`` (see the module docstring).

    Args:
        out: output ``.safetensors`` file (``<out>.json`` gets the build record).
        seed: build seed (objects, initialisation, batches, captions, augmentation); ``0 <= seed < 100``.
        steps: optimiser steps.
        batch_size: (image, caption) pairs per step.
        per_class: training objects per class.
        views: rendered views per object.
        lr, weight_decay: AdamW peak learning rate and decoupled weight decay.
        warmup: linear warmup steps (default: 5% of ``steps``).
        workers: rendering processes.
        threads: torch threads for training (default: torch's current setting).
        cache: render cache folder, ``None`` for the default, ``False`` to render without caching.
        progress: tqdm bars.
        log_every: print the mean loss every this many steps (0: never).
        checkpoint_every: also save ``<out stem>.step<N>.safetensors`` every this many steps (0: never).
        group_size: batches are made of groups of this many objects sharing their primary colour
            (0: uniformly random batches).
        gray_prob: probability that a view is turned to greyscale and captioned without colour words.
        class_groups: per step, this many extra groups of one object per class, each captioned by its
            class alone (a prompt template around the noun) and scored by its own ``ClipLoss``: a
            13-way shape task without false negatives, added to the main batch's loss (0: none).
        restart_steps: after the first phase, a warm restart of this many steps (:func:`restart_from_file`:
            fresh AdamW, cosine from ``restart_lr``, default ``0.3 * lr``) (0: none).
        restarts: how many such restart cycles, one after the other.

    Returns:
        :class:`BuildResult`.

    Raises:
        ConfigError: invalid arguments.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("per_class", per_class), ("views", views)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"teacher build: {name} must be a positive int, got {value!r}")
    if not (isinstance(seed, int) and 0 <= seed < 100):
        raise ConfigError(f"teacher build: seed must be an int in [0, 100), got {seed!r}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"teacher build: output {out} must end in .safetensors")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(out, seed, steps, batch_size, per_class, views, lr, weight_decay, warmup, workers, cache, progress,
                      log_every, checkpoint_every, group_size, gray_prob, class_groups, restart_steps, restart_lr,
                      restarts)  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def _run_phase(model, images, labels, steps, lr, weight_decay, warmup, gen, rng, seen, batch_size, group_size,
               gray_prob, class_groups, progress, log_every, desc, checkpoint=None) -> tuple[list[float], float, bool]:  # fmt: skip
    """One training phase (AdamW from scratch, warmup + cosine); returns ``(losses, seconds, grouped)``."""
    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    from clip_gs.teachers.synthetic import ARCHITECTURE

    num_objects, views = images.shape[:2]
    tokenizer = open_clip.get_tokenizer(ARCHITECTURE)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    loss_fn = ClipLoss()
    losses: list[float] = []
    order = torch.randperm(num_objects, generator=gen)
    colour_names = sorted({lab["color"] for lab in labels})
    by_colour = [torch.tensor([i for i, lab in enumerate(labels) if lab["color"] == c]) for c in colour_names]
    grouped = bool(group_size) and min(len(p) for p in by_colour) >= group_size
    class_names = sorted({lab["label"] for lab in labels})
    by_class = [torch.tensor([i for i, lab in enumerate(labels) if lab["label"] == c]) for c in class_names]
    cursor = 0
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    for step in bar:
        if grouped:
            idx = _colour_grouped_batch(by_colour, batch_size, group_size, gen)
        else:
            if cursor + batch_size > num_objects:
                order, cursor = torch.randperm(num_objects, generator=gen), 0
            idx = order[cursor : cursor + min(batch_size, num_objects)]
            cursor += len(idx)
        main = len(idx)
        if class_groups:
            groups = _class_groups(by_class, class_groups, gen)  # [G, C]
            idx = torch.cat([idx, groups.flatten()])
        view = torch.randint(0, views, (len(idx),), generator=gen)
        gray = torch.rand(len(idx), generator=gen) < gray_prob
        x = (_augment(images[idx, view], gen, gray=gray) - mean) / std
        texts_main = batch_captions([labels[i] for i in idx[:main].tolist()], rng, gray[:main].tolist())
        texts_class = [sample_caption(labels[i], rng, form="class") for i in idx[main:].tolist()]
        tokens = tokenizer(texts_main + texts_class)
        seen[tokens.flatten().unique()] = True
        image_features, text_features, logit_scale = model(x, tokens)
        loss = loss_fn(image_features[:main], text_features[:main], logit_scale)
        if class_groups:
            c = len(by_class)
            parts = [loss_fn(image_features[main + g * c : main + (g + 1) * c], text_features[main + g * c : main + (g + 1) * c],
                             logit_scale) for g in range(class_groups)]  # fmt: skip
            loss = loss + torch.stack(parts).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log_every and (step + 1) % log_every == 0:
            window = losses[-log_every:]
            print(f"{desc} step {step + 1}/{steps} loss {sum(window) / len(window):.4f} "
                  f"scale {model.logit_scale.exp().item():.1f} {time.perf_counter() - start:.0f}s", flush=True)  # fmt: skip
        if checkpoint is not None and checkpoint[0] and (step + 1) % checkpoint[0] == 0 and step + 1 < steps:
            model.eval()
            save_teacher_weights(model, checkpoint[1].with_name(f"{checkpoint[1].stem}.{desc.split()[-1]}{step + 1}.safetensors"),
                                 seen.clone(), {})  # fmt: skip
            model.train()
    model.eval()
    return losses, time.perf_counter() - start, grouped


def restart_from_file(path: str | Path, images: torch.Tensor, labels: list[dict], seed: int, steps: int, lr: float,
                      weight_decay: float = 0.1, batch_size: int = 64, group_size: int = 16, gray_prob: float = 0.2,
                      class_groups: int = 4, progress: bool = True, log_every: int = 50,
                      metadata: dict | None = None, cycle: int = 0) -> tuple[list[float], float]:  # fmt: skip
    """Warm restart: continue training the weights saved in ``path`` for ``steps`` more steps and save in place.

    A fresh AdamW with its own warmup (5%) and cosine decay from ``lr``, generators seeded from
    ``(seed, 3 + cycle)``; starting from the saved (fp16) file makes this phase reproducible from the
    file alone.

    Returns:
        ``(losses, seconds)``.
    """
    path = Path(path)
    model, stored, seen = load_teacher_file(path)
    gen = torch.Generator().manual_seed(seed * 1_000 + 3 + cycle)
    rng = np.random.default_rng([seed, 3 + cycle])
    losses, seconds, _ = _run_phase(model, images, labels, steps, lr, weight_decay, max(1, round(0.05 * steps)), gen, rng,
                                    seen, batch_size, group_size, gray_prob, class_groups, progress, log_every,
                                    "train synthetic-clip restart")  # fmt: skip
    save_teacher_weights(model, path, seen, {**stored, **(metadata or {}), "restart_steps": steps, "restart_lr": lr,
                                             "restarts": cycle + 1,
                                             "restart_final_loss": f"{np.mean(losses[-max(1, steps // 20):]):.4f}"})  # fmt: skip
    return losses, seconds


def _train(out, seed, steps, batch_size, per_class, views, lr, weight_decay, warmup, workers, cache, progress,
           log_every, checkpoint_every, group_size, gray_prob, class_groups, restart_steps, restart_lr,
           restarts) -> BuildResult:  # fmt: skip
    import open_clip

    from clip_gs.offline_teacher.views import VIEW_SIZE, ViewSpec, cached_render_views, training_objects
    from clip_gs.teachers.open_clip_teacher import file_checksum
    from clip_gs.teachers.synthetic import ARCHITECTURE, register_architecture

    warmup = max(1, round(0.05 * steps)) if warmup is None else warmup

    register_architecture()
    objects = training_objects(seed, per_class)
    images, labels = cached_render_views(objects, views, ViewSpec(size=VIEW_SIZE), workers=workers,
                                         progress=progress, cache=cache)  # fmt: skip
    num_objects = images.shape[0]

    torch.manual_seed(seed)
    model = open_clip.create_model(ARCHITECTURE, pretrained=None)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    seen = torch.zeros(model.vocab_size, dtype=torch.bool)
    losses, seconds, grouped = _run_phase(model, images, labels, steps, lr, weight_decay, warmup, gen, rng, seen,
                                          batch_size, group_size, gray_prob, class_groups, progress, log_every,
                                          "train synthetic-clip", (checkpoint_every, out))  # fmt: skip
    args = {"seed": seed, "steps": steps, "batch_size": batch_size, "per_class": per_class, "views": views, "lr": lr,
            "weight_decay": weight_decay, "warmup": warmup, "view_size": VIEW_SIZE, "group_size": group_size if grouped else 0,
            "gray_prob": gray_prob, "class_groups": class_groups}  # fmt: skip
    metadata = {"format": "clip-gs synthetic-clip teacher", "architecture": ARCHITECTURE, **args,
                "final_loss": f"{np.mean(losses[-max(1, steps // 20):]):.4f}", "torch": torch.__version__,
                "threads": torch.get_num_threads()}  # fmt: skip
    save_teacher_weights(model, out, seen, metadata)
    restart_losses, restart_seconds = [], 0.0
    for cycle in range(restarts if restart_steps else 0):
        cycle_losses, cycle_seconds = restart_from_file(
            out, images, labels, seed, restart_steps, restart_lr if restart_lr is not None else lr * 0.3, weight_decay,
            batch_size, group_size, gray_prob, class_groups, progress, log_every, cycle=cycle,
        )  # fmt: skip
        restart_losses, restart_seconds = restart_losses + cycle_losses, restart_seconds + cycle_seconds
    recalibrate_teacher_file(out, images, seed, gray_prob=gray_prob)
    record = {**metadata, "restart_steps": restart_steps, "restarts": restarts if restart_steps else 0, "train_seconds": round(seconds + restart_seconds, 1),
              "num_objects": num_objects, "num_images": num_objects * views, "checksum": file_checksum(out),
              "losses": [round(v, 4) for v in losses + restart_losses],
              "rebuild": f"clip-gs teacher build --seed {seed} --out {out.name} --steps {steps} --restart-steps {restart_steps} --restarts {restarts} "
                         f"--batch-size {batch_size} --objects-per-class {per_class} --views {views} --lr {lr} "
                         f"--class-groups {class_groups}"}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return BuildResult(out, losses + restart_losses, seconds + restart_seconds, record)


__all__ = [
    "BuildResult",
    "build_offline_teacher",
    "recalibrate_batchnorm",
    "recalibrate_teacher_file",
    "restart_from_file",
    "save_teacher_weights",
]
