"""Quality of a teacher on fresh synthetic objects (seeds from ``EVAL_SEED_START``, never trained on).

Three measurements, each from one rendered view per object under the fixed evaluation view
(:data:`~clip_gs.offline_teacher.views.EVAL_VIEW`: 64 px, elevation 20, distance 3, azimuth drawn from
the object seed, white background; a teacher with another input size resizes):

- :func:`zero_shot_accuracy`: top-1 over the 13 classes with the prompt ensemble
  (:func:`~clip_gs.teachers.prompts.zero_shot_weights` over :data:`~clip_gs.teachers.prompts.TEMPLATES`).
- :func:`caption_retrieval`: caption-to-image recall@1 among N objects (a hit when the top image
  is the caption's object, or another object with the identical caption).
- :func:`colour_ranking`: for every colour c, the text "a {c} cube" against solid cubes: the fraction
  of (cube of colour c, cube of another colour) pairs ranked the right way round.

``python -m clip_gs.offline_teacher.evaluate [--teacher SPEC]`` (or ``clip-gs teacher eval``) prints all three.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from clip_gs.offline_teacher.views import EVAL_SEED_START, EVAL_VIEW, evaluation_objects, render_views
from clip_gs.teachers.prompts import TEMPLATES, synthetic_label_set, zero_shot_weights

ZERO_SHOT_OFFSET = 0
RETRIEVAL_OFFSET = 10_000
COLOUR_OFFSET = 20_000
FRESH_SET_STRIDE = 1_000_000
"""Evaluation seeds: ``EVAL_SEED_START + offset + fresh_set * FRESH_SET_STRIDE + k`` (the three
measurements use disjoint objects; ``fresh_set`` 0 is the one the tests use, other values give
further independent sets, e.g. to check numbers not looked at while choosing the training length)."""


def _render(objects, workers: int, progress: bool):
    images, labels = render_views(objects, 1, EVAL_VIEW, workers=workers, progress=progress)
    return images[:, 0], labels


def zero_shot_accuracy(teacher, per_class: int = 8, templates: Sequence[str] = TEMPLATES, workers: int = 1,
                       progress: bool = False, fresh_set: int = 0) -> dict:  # fmt: skip
    """Top-1 zero-shot accuracy over the 13 synthetic classes on ``13 * per_class`` fresh objects.

    Returns:
        ``{"top1": float, "n": int, "per_class": {class: accuracy}}``.
    """
    from clip_gs.data.synthetic import SHAPE_CLASSES

    images, labels = _render(
        evaluation_objects(per_class, ZERO_SHOT_OFFSET + fresh_set * FRESH_SET_STRIDE), workers, progress
    )
    weights = zero_shot_weights(teacher, synthetic_label_set(), templates)
    pred = (teacher.encode_images(images) @ weights.T).argmax(-1).cpu()
    truth = torch.tensor([SHAPE_CLASSES.index(lab["label"]) for lab in labels])
    per = {c: float((pred[truth == i] == i).float().mean()) for i, c in enumerate(SHAPE_CLASSES)}
    return {"top1": float((pred == truth).float().mean()), "n": len(labels), "per_class": per}


def caption_retrieval(
    teacher, num_objects: int = 100, workers: int = 1, progress: bool = False, fresh_set: int = 0
) -> dict:
    """Caption-to-image recall@1 (and @5) among ``num_objects`` fresh objects cycling through the classes.

    Returns:
        ``{"r1": float, "r5": float, "n": int}`` (chance: 1 / n).
    """
    from clip_gs.data.synthetic import SHAPE_CLASSES

    base = EVAL_SEED_START + RETRIEVAL_OFFSET + fresh_set * FRESH_SET_STRIDE
    objects = [(SHAPE_CLASSES[k % len(SHAPE_CLASSES)], base + k) for k in range(num_objects)]
    images, labels = _render(objects, workers, progress)
    captions = [lab["caption"] for lab in labels]
    sim = teacher.encode_text(captions) @ teacher.encode_images(images).T  # [N texts, N images]
    ranks = sim.argsort(dim=1, descending=True).cpu()
    same = torch.tensor([[a == b for b in captions] for a in captions])  # identical captions count as hits
    hit1 = same.gather(1, ranks[:, :1]).any(1)
    hit5 = same.gather(1, ranks[:, :5]).any(1)
    return {"r1": float(hit1.float().mean()), "r5": float(hit5.float().mean()), "n": num_objects}


def colour_ranking(teacher, per_colour: int = 3, shape: str = "cube", pattern: str | None = "solid",
                   workers: int = 1, progress: bool = False, fresh_set: int = 0) -> dict:  # fmt: skip
    """How often "a {colour} {shape}" ranks a ``shape`` of that colour above one of another colour.

    ``per_colour`` fresh ``shape`` objects of each of the 12 colours (``pattern`` fixed, default solid;
    ``None`` draws it). For colour c, every pair (object of colour c, object of colour d != c) is
    scored by the similarity of "a {c} {shape}" to each.

    Returns:
        ``{"pair_accuracy": float, "pairs": int, "per_colour": {colour: accuracy}}``.
    """
    from clip_gs.data.synthetic import PALETTE, SHAPE_NOUNS
    from clip_gs.offline_teacher.views import render_object

    colours = list(PALETTE)
    images, truth = [], []
    for ci, colour in enumerate(colours):
        for k in range(per_colour):
            seed = EVAL_SEED_START + COLOUR_OFFSET + fresh_set * FRESH_SET_STRIDE + ci * per_colour + k
            img, _ = render_object(shape, seed, 1, EVAL_VIEW, color=colour, pattern=pattern)
            images.append(torch.from_numpy(img[0]))
            truth.append(ci)
    images_t, truth_t = torch.stack(images), torch.tensor(truth)
    noun = SHAPE_NOUNS[shape]
    texts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {noun}" for c in colours]
    sim = (teacher.encode_text(texts) @ teacher.encode_images(images_t).T).cpu()  # [12, 12 * per_colour]
    per, correct, total = {}, 0, 0
    for ci, colour in enumerate(colours):
        pos, neg = sim[ci, truth_t == ci], sim[ci, truth_t != ci]
        wins = (pos[:, None] > neg[None, :]).sum().item()
        per[colour] = wins / (pos.numel() * neg.numel())
        correct, total = correct + wins, total + pos.numel() * neg.numel()
    return {"pair_accuracy": correct / total, "pairs": total, "per_colour": per}


def evaluate_teacher(teacher, per_class: int = 8, num_objects: int = 100, per_colour: int = 3, workers: int = 1,
                     progress: bool = False, fresh_set: int = 0) -> dict:  # fmt: skip
    """All three measurements (see the module docstring) plus the teacher's identity and the time taken."""
    start = time.perf_counter()
    result = {
        "teacher": str(teacher.identity),
        "fresh_set": fresh_set,
        "zero_shot": zero_shot_accuracy(teacher, per_class, workers=workers, progress=progress, fresh_set=fresh_set),
        "retrieval": caption_retrieval(teacher, num_objects, workers=workers, progress=progress, fresh_set=fresh_set),
        "colour": colour_ranking(teacher, per_colour, workers=workers, progress=progress, fresh_set=fresh_set),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def format_report(result: dict) -> str:
    """Human-readable lines of :func:`evaluate_teacher`'s result."""
    zs, rt, co = result["zero_shot"], result["retrieval"], result["colour"]
    worst = sorted(zs["per_class"].items(), key=lambda kv: kv[1])[:3]
    return "\n".join(
        [
            f"teacher:    {result['teacher']} (fresh object set {result.get('fresh_set', 0)})",
            (
                f"zero-shot:  top-1 {zs['top1']:.1%} over {zs['n']} fresh objects, 13 classes, {len(TEMPLATES)} templates "
                f"(weakest: {', '.join(f'{c} {a:.0%}' for c, a in worst)})"
            ),
            f"retrieval:  caption->image R@1 {rt['r1']:.1%}, R@5 {rt['r5']:.1%} among {rt['n']} fresh objects",
            f"colour:     'a <colour> cube' ranks its colour first in {co['pair_accuracy']:.1%} of {co['pairs']} pairs",
            f"time:       {result['seconds']} s",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clip_gs.offline_teacher.evaluate``: print the quality numbers of a teacher."""
    parser = argparse.ArgumentParser(
        prog="python -m clip_gs.offline_teacher.evaluate", description=__doc__.split("\n")[0]
    )
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the evaluation command."""
    from clip_gs.cli_flags import add_json_argument

    parser.add_argument("--teacher", default="synthetic-clip", help="teacher spec (default: the offline teacher)")
    parser.add_argument("--per-class", type=int, default=8, help="zero-shot objects per class")
    parser.add_argument("--objects", type=int, default=100, help="objects in the retrieval gallery")
    parser.add_argument("--per-colour", type=int, default=3, help="cubes per colour for the colour test")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument(
        "--fresh-set", type=int, default=0, help="which independent set of fresh objects (0: the tests')"
    )
    add_json_argument(parser)


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation for parsed :func:`add_eval_arguments` options."""
    from clip_gs.teachers.factory import load_teacher

    teacher = load_teacher(args.teacher)
    result = evaluate_teacher(
        teacher, args.per_class, args.objects, args.per_colour, workers=args.workers, fresh_set=args.fresh_set
    )
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


__all__ = [
    "caption_retrieval",
    "colour_ranking",
    "evaluate_teacher",
    "format_report",
    "zero_shot_accuracy",
]

if __name__ == "__main__":
    sys.exit(main())
