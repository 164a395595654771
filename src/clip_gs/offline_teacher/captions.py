"""The training captions of the offline teacher build (:mod:`clip_gs.offline_teacher.build`), drawn
afresh at every step for every sample.

A caption is one of the forms of :data:`CAPTION_FORMS` (the object's full caption, class only,
colour + class, pattern + class, colour only or pattern only), either as "a <phrase>" or inside one
of the prompt :data:`~clip_gs.teachers.prompts.TEMPLATES`; greyscale views draw from
:data:`GRAY_CAPTION_FORMS` (no colour words). Within a batch a repeated text falls back to the
object's most specific caption (:func:`batch_captions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clip_gs.errors import ConfigError
from clip_gs.teachers.prompts import TEMPLATES, article, fill_template

CAPTION_FORMS: dict[str, float] = {
    "full": 0.25,
    "class": 0.30,
    "colour_class": 0.25,
    "pattern_class": 0.10,
    "colour": 0.05,
    "pattern": 0.05,
}
"""Caption forms and the probability each is drawn with (colour views)."""

GRAY_CAPTION_FORMS: dict[str, float] = {"class": 0.6, "pattern_class": 0.3, "pattern": 0.1}
"""Caption forms for views turned to greyscale (no colour words: only shape and pattern can match)."""

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
            :func:`clip_gs.offline_teacher.views.render_object`).
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


def sample_caption(labels: dict, rng: np.random.Generator, form: str | None = None, gray: bool = False) -> str:
    """One training caption for an object: a random form, plain or inside a random template.

    ``gray=True`` (the view was turned to greyscale) draws from :data:`GRAY_CAPTION_FORMS`.
    """
    table = GRAY_CAPTION_FORMS if gray else CAPTION_FORMS
    forms = list(table)
    if form is None:
        form = forms[int(rng.choice(len(forms), p=np.array(list(table.values()))))]
    phrase = caption_phrase(labels, form, rng)
    if rng.random() < TEMPLATE_PROBABILITY:
        return fill_template(TEMPLATES[int(rng.integers(len(TEMPLATES)))], phrase)
    if form == "full":
        return labels["caption"]
    return f"{article(phrase)} {phrase}"


def batch_captions(
    batch_labels: Sequence[dict], rng: np.random.Generator, gray: Sequence[bool] | None = None
) -> list[str]:
    """Captions for a batch; a text repeated within the batch is replaced by the object's most specific one
    (the full caption; for a greyscale view, pattern + class)."""
    gray = [False] * len(batch_labels) if gray is None else list(gray)
    texts = [sample_caption(lab, rng, gray=g) for lab, g in zip(batch_labels, gray)]
    seen: set[str] = set()
    for i, lab in enumerate(batch_labels):
        if texts[i] in seen:
            texts[i] = sample_caption(lab, rng, form="pattern_class" if gray[i] else "full", gray=gray[i])
        seen.add(texts[i])
    return texts


__all__ = [
    "CAPTION_FORMS",
    "GRAY_CAPTION_FORMS",
    "TEMPLATE_PROBABILITY",
    "batch_captions",
    "caption_phrase",
    "sample_caption",
]
