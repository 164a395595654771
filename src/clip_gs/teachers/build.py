"""Build (train) the offline teacher ``synthetic-clip`` from a seed: ``clip-gs teacher build``.

Recipe (every random choice is drawn from ``seed``):

1. Objects: ``per_class`` synthetic objects of each of the 13 classes, seeds
   ``seed * 100_000 + k`` (all below :data:`~clip_gs.teachers.views.TRAIN_SEED_LIMIT`; the quality
   tests use seeds from :data:`~clip_gs.teachers.views.EVAL_SEED_START`, never trained on).
2. Views: ``views`` renders of each by the package's rasterizer (64 px, white background, random
   azimuth, elevation in [-20, 60] degrees, distance 2.7-3.4), cached once as a tensor file under
   ``$CLIP_GS_CACHE`` (default ``/tmp/clip_gs_cache``).
3. Captions, drawn afresh at every step for every sample (:func:`sample_caption`): the object's full
   caption, class only, colour + class, pattern + class, colour only or pattern only, either as
   "a <phrase>" or inside one of the prompt :data:`~clip_gs.teachers.prompts.TEMPLATES`. Identical
   texts within a batch fall back to the full caption (fewer false negatives).
4. Training: open_clip's own ``ClipLoss`` on random (object, view) batches with random horizontal
   flips and shifts of up to 4 px, AdamW (weight decay on matrices only), linear warmup then cosine
   decay, logit scale clamped at 100.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clip_gs.errors import ConfigError
from clip_gs.teachers.prompts import TEMPLATES, article, fill_template

CAPTION_FORMS: dict[str, float] = {
    "full": 0.35,
    "class": 0.25,
    "colour_class": 0.15,
    "pattern_class": 0.10,
    "colour": 0.075,
    "pattern": 0.075,
}
"""Caption forms and the probability each is drawn with."""

TEMPLATE_PROBABILITY = 0.5
"""Probability that a caption is put inside a prompt template (else "a <phrase>")."""


def _pattern_phrases(pattern: str, noun: str) -> list[str]:
    return {
        "solid": [f"plain {noun}", f"solid-coloured {noun}"],
        "striped": [f"striped {noun}", f"{noun} with stripes"],
        "dotted": [f"dotted {noun}", f"{noun} with dots"],
        "two_tone": [f"two-tone {noun}"],
    }[pattern]


def caption_phrase(labels: dict, form: str, rng: np.random.Generator) -> str:
    """A noun phrase (no article) describing an object in one caption ``form``.

    Args:
        labels: ``label``, ``color``, ``secondary``, ``pattern``, ``caption`` (see
            :func:`clip_gs.teachers.views.render_object`).
        form: a key of :data:`CAPTION_FORMS`.
        rng: the build's generator.
    """
    from clip_gs.data.synthetic import SHAPE_NOUNS

    noun, colour = SHAPE_NOUNS[labels["label"]], labels["color"]
    if form == "full":
        return labels["caption"].split(" ", 1)[1]
    if form == "class":
        return noun
    if form == "colour_class":
        return f"{colour} {noun}"
    if form == "pattern_class":
        options = _pattern_phrases(labels["pattern"], noun)
        return options[int(rng.integers(len(options)))]
    if form == "colour":
        return f"{colour} {('object', 'thing', 'shape')[int(rng.integers(3))]}"
    if form == "pattern":
        options = _pattern_phrases(labels["pattern"], ("object", "shape")[int(rng.integers(2))])
        return options[int(rng.integers(len(options)))]
    raise ConfigError(f"unknown caption form {form!r}; choose one of {', '.join(CAPTION_FORMS)}")


def sample_caption(labels: dict, rng: np.random.Generator, form: str | None = None) -> str:
    """One training caption for an object: a random form, plain or inside a random template."""
    forms = list(CAPTION_FORMS)
    if form is None:
        form = forms[int(rng.choice(len(forms), p=np.array(list(CAPTION_FORMS.values()))))]
    phrase = caption_phrase(labels, form, rng)
    if rng.random() < TEMPLATE_PROBABILITY:
        return fill_template(TEMPLATES[int(rng.integers(len(TEMPLATES)))], phrase)
    if form == "full":
        return labels["caption"]
    return f"{article(phrase)} {phrase}"


def batch_captions(batch_labels: Sequence[dict], rng: np.random.Generator) -> list[str]:
    """Captions for a batch; a text repeated within the batch is replaced by its object's full caption."""
    texts = [sample_caption(lab, rng) for lab in batch_labels]
    seen: set[str] = set()
    for i, lab in enumerate(batch_labels):
        if texts[i] in seen:
            texts[i] = sample_caption(lab, rng, form="full")
        seen.add(texts[i])
    return texts


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


def _augment(images: torch.Tensor, gen: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Random horizontal flip and shift (white padding) of ``uint8 [B, S, S, 3]`` -> float ``[B, 3, S, S]`` in [0, 1]."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
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
        metadata: string-valued safetensors metadata.
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
    save_file(state, str(path), metadata={k: str(v) for k, v in metadata.items()})


def build_offline_teacher(
    out: str | Path,
    seed: int = 0,
    steps: int = 1500,
    batch_size: int = 128,
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

    Returns:
        :class:`BuildResult`.

    Raises:
        ConfigError: invalid arguments.
    """
    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    from clip_gs.teachers.open_clip_teacher import file_checksum
    from clip_gs.teachers.synthetic import ARCHITECTURE, register_architecture
    from clip_gs.teachers.views import VIEW_SIZE, ViewSpec, cached_render_views, training_objects

    for name, value in (("steps", steps), ("batch_size", batch_size), ("per_class", per_class), ("views", views)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"teacher build: {name} must be a positive int, got {value!r}")
    if not (isinstance(seed, int) and 0 <= seed < 100):
        raise ConfigError(f"teacher build: seed must be an int in [0, 100), got {seed!r}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"teacher build: output {out} must end in .safetensors")
    if threads is not None:
        torch.set_num_threads(threads)
    warmup = max(1, round(0.05 * steps)) if warmup is None else warmup

    register_architecture()
    objects = training_objects(seed, per_class)
    images, labels = cached_render_views(objects, views, ViewSpec(size=VIEW_SIZE), workers=workers,
                                         progress=progress, cache=cache)  # fmt: skip
    num_objects = images.shape[0]

    torch.manual_seed(seed)
    model = open_clip.create_model(ARCHITECTURE, pretrained=None)
    model.train()
    tokenizer = open_clip.get_tokenizer(ARCHITECTURE)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))),
    )
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    seen = torch.zeros(model.vocab_size, dtype=torch.bool)
    losses: list[float] = []
    order = torch.randperm(num_objects, generator=gen)
    cursor = 0
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="train synthetic-clip", unit="step", disable=not progress)
    for step in bar:
        if cursor + batch_size > num_objects:
            order, cursor = torch.randperm(num_objects, generator=gen), 0
        idx = order[cursor : cursor + min(batch_size, num_objects)]
        cursor += len(idx)
        view = torch.randint(0, views, (len(idx),), generator=gen)
        x = (_augment(images[idx, view], gen) - mean) / std
        tokens = tokenizer(batch_captions([labels[i] for i in idx.tolist()], rng))
        seen[tokens.flatten().unique()] = True
        image_features, text_features, logit_scale = model(x, tokens)
        loss = loss_fn(image_features, text_features, logit_scale)
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
            print(f"step {step + 1}/{steps} loss {sum(window) / len(window):.4f} "
                  f"scale {model.logit_scale.exp().item():.1f} {time.perf_counter() - start:.0f}s", flush=True)  # fmt: skip
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            model.eval()
            save_teacher_weights(model, out.with_name(f"{out.stem}.step{step + 1}.safetensors"), seen.clone(), {})
            model.train()
    seconds = time.perf_counter() - start
    model.eval()
    args = {"seed": seed, "steps": steps, "batch_size": batch_size, "per_class": per_class, "views": views, "lr": lr,
            "weight_decay": weight_decay, "warmup": warmup, "view_size": VIEW_SIZE}  # fmt: skip
    metadata = {"format": "clip-gs synthetic-clip teacher", "architecture": ARCHITECTURE, **args,
                "final_loss": f"{np.mean(losses[-max(1, steps // 20):]):.4f}", "torch": torch.__version__,
                "threads": torch.get_num_threads()}  # fmt: skip
    save_teacher_weights(model, out, seen, metadata)
    record = {**metadata, "train_seconds": round(seconds, 1), "num_objects": num_objects, "num_images": num_objects * views,
              "checksum": file_checksum(out), "losses": [round(v, 4) for v in losses],
              "rebuild": f"clip-gs teacher build --seed {seed} --out {out.name} --steps {steps} --batch-size {batch_size} "
                         f"--objects-per-class {per_class} --views {views} --lr {lr}"}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return BuildResult(out, losses, seconds, record)


__all__ = [
    "CAPTION_FORMS",
    "TEMPLATE_PROBABILITY",
    "BuildResult",
    "batch_captions",
    "build_offline_teacher",
    "caption_phrase",
    "sample_caption",
    "save_teacher_weights",
]
