"""Pictures of an evaluation, drawn with PIL: the zero-shot confusion matrix and a text -> 3D retrieval grid."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from clip_gs.errors import ConfigError

CORRECT = (0, 160, 60)
WRONG = (200, 200, 200)


def _font(size: int):
    return ImageFont.load_default(size=size)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, shortened with an ellipsis to at most ``width`` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "...", font) > width:
        text = text[:-1]
    return text + "..."


def draw_confusion(confusion: Tensor, class_names: Sequence[str], title: str = "") -> Image.Image:
    """The confusion matrix as a heat map with the class names on both axes.

    Rows are the true classes, columns the predictions; each cell's shade is its share of the
    row (white 0 to dark blue 1) and, when cells are large enough, its count is written in it.
    Cell size and font scale with the number of classes (48 px cells at a few classes, 20 px at
    40), so names stay readable at 13 and at 40 classes.

    Args:
        confusion: ``[C, C]`` counts.
        class_names: C names.
        title: drawn above the matrix.

    Returns:
        An RGB ``PIL.Image``.
    """
    c = len(class_names)
    if tuple(confusion.shape) != (c, c) or c == 0:
        raise ConfigError(f"draw_confusion needs [C, C] counts for {c} class names, got {list(confusion.shape)}")
    counts = confusion.detach().to(torch.float64).cpu()
    cell = int(max(20, min(48, 720 // c)))
    label_font = _font(max(11, min(15, cell - 6)))
    count_font = _font(max(9, min(14, cell // 2 - 2)))
    title_font = _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name_w = max(_text_width(probe, n, label_font) for n in class_names) + 12
    left, top = name_w + 24, name_w + 64
    size = cell * c
    width = max(left + size + 20, _text_width(probe, title, title_font) + 20)
    image = Image.new("RGB", (width, top + size + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=title_font)
    draw.text((left, 34), "predicted class", fill=(90, 90, 90), font=label_font)
    rows = counts.sum(dim=1, keepdim=True).clamp_min(1)
    share = counts / rows
    for i in range(c):
        for j in range(c):
            x0, y0 = left + j * cell, top + i * cell
            s = float(share[i, j])
            colour = (int(255 - 215 * s), int(255 - 175 * s), int(255 - 80 * s))
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(230, 230, 230))
            n = int(counts[i, j])
            if n and cell >= 20:
                text = str(n)
                tw = _text_width(draw, text, count_font)
                draw.text((x0 + (cell - tw) / 2, y0 + cell / 2 - count_font.size / 2 - 1), text,
                          fill="white" if s > 0.5 else "black", font=count_font)  # fmt: skip
    for i in range(c):  # the diagonal, outlined
        x0, y0 = left + i * cell, top + i * cell
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline=(0, 0, 0))
    for i, name in enumerate(class_names):  # true classes on the left, right-aligned
        tw = _text_width(draw, name, label_font)
        draw.text((left - 6 - tw, top + i * cell + cell / 2 - label_font.size / 2 - 1), name, fill="black", font=label_font)
    for j, name in enumerate(class_names):  # predictions on top, written bottom-up
        tw = _text_width(draw, name, label_font)
        strip = Image.new("RGB", (tw + 4, label_font.size + 6), "white")
        ImageDraw.Draw(strip).text((2, 1), name, fill="black", font=label_font)
        strip = strip.rotate(90, expand=True)
        image.paste(strip, (int(left + j * cell + cell / 2 - strip.width / 2), top - 6 - strip.height))
    axis = Image.new("RGB", (_text_width(draw, "true class", label_font) + 4, label_font.size + 6), "white")
    ImageDraw.Draw(axis).text((2, 1), "true class", fill=(90, 90, 90), font=label_font)
    axis = axis.rotate(90, expand=True)
    image.paste(axis, (4, top))
    return image


@dataclass(frozen=True)
class RetrievedItem:
    """One retrieved object: its thumbnail, a caption (name and score) and whether it is the query's own object."""

    image: Image.Image
    caption: str
    correct: bool


@dataclass(frozen=True)
class RetrievalRow:
    """One text query and its retrieved objects, best first; ``note`` is written under the query."""

    query: str
    items: Sequence[RetrievedItem]
    note: str = ""


CONFUSION_MATRIX_MAX = 100
"""Above this many classes ``clip-gs eval`` draws :func:`draw_confusion_summary` instead of the matrix
(at Objaverse-LVIS's 1,156 classes the matrix would be a 23K-pixel square)."""


def most_confused(confusion: Tensor, class_names: Sequence[str], pairs: int = 20) -> list[tuple[str, str, int, float]]:
    """The ``pairs`` largest off-diagonal cells: ``(true class, predicted class, count, share of the true class's row)``,
    largest count first (ties: row, then column order)."""
    counts = confusion.detach().to(torch.int64).cpu().clone()
    rows = counts.sum(dim=1).clamp_min(1)
    counts.fill_diagonal_(0)
    flat = counts.flatten()
    order = sorted((i for i in flat.nonzero().flatten().tolist()), key=lambda i: (-int(flat[i]), i))[:pairs]
    c = len(class_names)
    return [(class_names[i // c], class_names[i % c], int(flat[i]), int(flat[i]) / int(rows[i // c])) for i in order]


def draw_confusion_summary(confusion: Tensor, class_names: Sequence[str], title: str = "", pairs: int = 20) -> Image.Image:
    """A confusion summary for many classes: the most-confused pairs as labelled bars (count and
    share of the true class) and a histogram of the per-class top-1 accuracy (classes with objects).

    Args:
        confusion: ``[C, C]`` counts. class_names: C names. title: drawn on top. pairs: bars drawn.
    """
    c = len(class_names)
    if tuple(confusion.shape) != (c, c) or c == 0:
        raise ConfigError(f"draw_confusion_summary needs [C, C] counts for {c} class names, got {list(confusion.shape)}")
    counts = confusion.detach().to(torch.float64).cpu()
    present = counts.sum(dim=1) > 0
    accuracy = (counts.diagonal() / counts.sum(dim=1).clamp_min(1))[present]
    top = most_confused(confusion, class_names, pairs)
    font, title_font = _font(13), _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{t} -> {p}" for t, p, _, _ in top]
    label_w = max([_text_width(probe, x, font) for x in labels] + [120]) + 16
    bar_w, row_h, hist_h = 360, 20, 180
    width = max(label_w + bar_w + 150, 640)
    height = 44 + 24 + row_h * max(1, len(top)) + 40 + hist_h + 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=title_font)
    y = 44
    draw.text((10, y), f"most confused pairs (true -> predicted), of {int(present.sum())} classes with objects:",
              fill=(60, 60, 60), font=font)  # fmt: skip
    y += 24
    largest = max([n for _, _, n, _ in top] + [1])
    for label, (_, _, n, share) in zip(labels, top):
        draw.text((10, y + 2), _fit(draw, label, font, label_w - 12), fill="black", font=font)
        length = int(bar_w * n / largest)
        draw.rectangle([label_w, y + 3, label_w + max(1, length), y + row_h - 3], fill=(40, 80, 175))
        draw.text((label_w + length + 6, y + 2), f"{n} ({share:.0%} of the class)", fill=(60, 60, 60), font=font)
        y += row_h
    if not top:
        draw.text((10, y), "no confusions", fill=(60, 60, 60), font=font)
        y += row_h
    y += 20
    draw.text((10, y), f"per-class top-1 accuracy ({len(accuracy)} classes): mean {float(accuracy.mean()):.3f}",
              fill=(60, 60, 60), font=font)  # fmt: skip
    y += 22
    bins = torch.histc(accuracy.float(), bins=10, min=0.0, max=1.0)
    left, bin_w, base = 40, (width - 80) // 10, y + hist_h
    tallest = float(bins.max()) or 1.0
    for b, count in enumerate(bins.tolist()):
        x0 = left + b * bin_w
        h = int((hist_h - 20) * count / tallest)
        draw.rectangle([x0 + 2, base - h, x0 + bin_w - 2, base], fill=(40, 80, 175))
        draw.text((x0 + 4, base - h - 16), str(int(count)), fill="black", font=font)
        draw.text((x0 + 2, base + 4), f"{b / 10:.1f}", fill=(60, 60, 60), font=font)
    draw.line([left, base, left + 10 * bin_w, base], fill="black")
    return image


def draw_retrieval_grid(rows: Sequence[RetrievalRow], title: str = "") -> Image.Image:
    """Rows of ``query text | top-1 | top-2 | ...``: each thumbnail captioned with its rank, name and
    score (shortened to the cell's width); the query's own object framed in green (others in grey).

    Returns:
        An RGB ``PIL.Image``.
    """
    if not rows or not all(r.items for r in rows):
        raise ConfigError("draw_retrieval_grid needs at least one row, each with at least one retrieved item")
    thumb = max(item.image.width for r in rows for item in r.items)
    k = max(len(r.items) for r in rows)
    font, small, title_font = _font(14), _font(12), _font(16)
    text_w, pad, frame, caption_h = 240, 10, 4, 34
    cell_w, cell_h = thumb + 2 * frame, thumb + 2 * frame + caption_h
    head = 36 if title else pad
    image = Image.new("RGB", (text_w + k * (cell_w + pad) + pad, head + len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, 10), title, fill="black", font=title_font)
    for r, row in enumerate(rows):
        y = head + r * (cell_h + pad)
        lines = textwrap.wrap(f'"{row.query}"', width=28)[:5]
        for i, line in enumerate(lines):
            draw.text((pad, y + 4 + 18 * i), line, fill="black", font=font)
        if row.note:
            draw.text((pad, y + 8 + 18 * len(lines)), row.note, fill=(90, 90, 90), font=small)
        for j, item in enumerate(row.items):
            x = text_w + j * (cell_w + pad)
            colour = CORRECT if item.correct else WRONG
            draw.rectangle([x, y, x + cell_w - 1, y + thumb + 2 * frame - 1], fill=colour)
            image.paste(item.image.convert("RGB"), (x + frame, y + frame))
            caption = _fit(draw, f"#{j + 1}  {item.caption}", small, cell_w + pad - 4)
            draw.text((x + 2, y + thumb + 2 * frame + 2), caption, fill="black", font=small)
            if item.correct:
                draw.text((x + 2, y + thumb + 2 * frame + 17), "correct", fill=CORRECT, font=small)
    return image


__all__ = ["CONFUSION_MATRIX_MAX", "RetrievalRow", "RetrievedItem", "draw_confusion", "draw_confusion_summary", "draw_retrieval_grid",
           "most_confused"]
