"""Prompt ensembles and label sets for zero-shot classification with a teacher.

:data:`TEMPLATES` are this project's own templates for rendered 3D objects; each holds one ``{}``
for a noun phrase. :func:`fill_template` puts "an" instead of "a" before a vowel sound, so
``"a 3D model of a {}."`` with ``"L-shaped block"`` reads "a 3D model of an L-shaped block.".

:func:`zero_shot_weights` builds the classifier: every template filled with every class name is
encoded, normalised, averaged over templates and renormalised, giving ``[C, E]`` class embeddings.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from clip_gs.errors import ConfigError

TEMPLATES: tuple[str, ...] = (
    "a 3D model of a {}.",
    "a rendering of a {}.",
    "a 3D render of the {}.",
    "a computer graphics image of a {}.",
    "a small {} floating in empty space.",
    "a {} on a white background.",
    "a close-up render of a {}.",
    "a digital 3D object: a {}.",
    "a low-resolution render of a {}.",
    "a view of a {} seen from an angle.",
    "the shape of a {}.",
    "a 3D scan of a {}.",
)
"""Twelve prompt templates for 3D objects (one ``{}`` each)."""

_VOWEL_SOUND = re.compile(r"^(?:[aeiouAEIOU]|[FHLMNRSX](?:-|\b))")


def article(phrase: str) -> str:
    """``"an"`` before a vowel sound (``"orange"``, ``"L-shaped"``), else ``"a"``."""
    return "an" if _VOWEL_SOUND.match(phrase) else "a"


def fill_template(template: str, phrase: str) -> str:
    """Put ``phrase`` into ``template``, fixing a preceding "a" to "an" where needed.

    Raises:
        ConfigError: the template has no ``{}``.
    """
    if "{}" not in template:
        raise ConfigError(f"prompt template {template!r} has no '{{}}' placeholder")
    if article(phrase) == "an":
        template = re.sub(r"\b([Aa]) \{\}", lambda m: ("An" if m.group(1) == "A" else "an") + " {}", template)
    return template.replace("{}", phrase)


LABEL_SET_DIR = Path(__file__).parent / "label_sets"
"""The label-set files shipped in the package (one name per line, ``#`` comment header naming the source)."""

LABEL_SETS: dict[str, str] = {
    "modelnet40": "modelnet40.txt",
    "objaverse-lvis": "objaverse-lvis.txt",
    "synthetic": "synthetic.txt",
}
"""Registered label-set names -> their file in :data:`LABEL_SET_DIR`. ``modelnet40``: the 40 ModelNet40 classes; ``objaverse-lvis``: the
1,156 Objaverse-LVIS categories; ``synthetic``: the 13 classes of the synthetic set."""


def named_label_set(name: str) -> list[str]:
    """The names of a registered label set (:data:`LABEL_SETS`), in the set's order.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    if name not in LABEL_SETS:
        raise ConfigError(f"unknown label set {name!r}; known label sets: {', '.join(LABEL_SETS)} (or give a file)")
    return load_label_set(LABEL_SET_DIR / LABEL_SETS[name])


def load_label_set(source: str | Path | Sequence[str]) -> list[str]:
    """Class names from a registered name, a list or a file.

    Args:
        source: a registered label-set name (``"modelnet40"``, ``"objaverse-lvis"``,
            ``"synthetic"``: :data:`LABEL_SETS`; a name wins over a file of the same name, write
            ``./modelnet40`` for the file); a sequence of names; or a path to a ``.json`` file (a
            list of names) or a text file (one name per line; blank lines and lines starting with
            ``#`` are skipped).

    Returns:
        The names, stripped, in order.

    Raises:
        ConfigError: an unknown label-set name (the message lists the known ones), a missing
            file, an empty set, non-string or duplicate names.
    """
    if isinstance(source, str) and source in LABEL_SETS:
        return named_label_set(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            if isinstance(source, str) and "/" not in source and os.sep not in source and not path.suffix:
                raise ConfigError(
                    f"unknown label set {source!r}; known label sets: {', '.join(LABEL_SETS)} "
                    "(or give a .json / .txt file of names)"
                )
            raise ConfigError(f"label set file {path} does not exist (known label sets: {', '.join(LABEL_SETS)})")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                names = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"label set {path}: invalid JSON ({exc})") from exc
            if not isinstance(names, list):
                raise ConfigError(f"label set {path}: expected a JSON list of names, got {type(names).__name__}")
        else:
            names = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        where = str(path)
    else:
        names, where = list(source), "label set"
    if not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: every class name must be a string")
    names = [n.strip() for n in names]
    if not names or not all(names):
        raise ConfigError(f"{where}: empty label set or empty class name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: duplicate class names {dupes}")
    return names


def label_phrase(name: str) -> str:
    """The noun phrase a class name is prompted with: underscores become spaces
    (``"car_(automobile)"`` -> ``"car (automobile)"``, ``"flower_pot"`` -> ``"flower pot"``);
    anything else is kept."""
    return " ".join(name.replace("_", " ").split())


def synthetic_label_set() -> list[str]:
    """The synthetic set's 13 class nouns, in label-index order (``"sphere"``, ..., ``"L-shaped block"``, ``"mug"``):
    the label set ``"synthetic"``, shipped as a file so that teachers need not import the data layer."""
    return named_label_set("synthetic")


PROMPT_RULES = ("clip-gs", "verbatim")
"""How a class name is put into a template: ``clip-gs`` (:func:`label_phrase` then :func:`fill_template`:
underscores become spaces, "a" becomes "an" before a vowel sound) or ``verbatim`` (``template.format(name)``
with the name as written, the rule of Uni3D's and OpenShape's zero-shot code)."""


def zero_shot_weights(
    teacher, class_names: Sequence[str] | str | Path, templates: Sequence[str] = TEMPLATES, prompt_rule: str = "clip-gs"
) -> Tensor:
    """Zero-shot classifier weights ``[C, E]`` (unit norm, float32).

    Each of the T templates is filled with each of the C class names (``prompt_rule``, see
    :data:`PROMPT_RULES`); the ``C * T`` prompts are encoded (batched by the teacher), the template
    embeddings of a class averaged and renormalised. Every zero-shot classifier of the package (dataset preparation,
    ``clip-gs eval``, ``classify``, the demo) is made here.

    Args:
        teacher: a :class:`~clip_gs.teachers.base.Teacher`.
        class_names: names, a registered label-set name or a label-set file (:func:`load_label_set`).
        templates: prompt templates with one ``{}`` each.
        prompt_rule: ``"clip-gs"`` or ``"verbatim"`` (:data:`PROMPT_RULES`).

    Raises:
        ConfigError: no templates, a template without ``{}``, an invalid label set, an unknown rule,
            or two names with the same phrase.
    """
    names = load_label_set(class_names)
    templates = list(templates)
    if not templates:
        raise ConfigError("zero_shot_weights needs at least one template")
    if prompt_rule not in PROMPT_RULES:
        raise ConfigError(f"prompt_rule must be one of {PROMPT_RULES}, got {prompt_rule!r}")
    if prompt_rule == "verbatim":
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ConfigError(f"prompt templates without a '{{}}' placeholder: {bad[:3]}")
        prompts = [t.format(n) for n in names for t in templates]
    else:
        prompts = _clip_gs_prompts(names, templates)
    emb = teacher.encode_text(prompts).view(len(names), len(templates), -1)
    return F.normalize(F.normalize(emb, dim=-1).mean(1), dim=-1)


def _clip_gs_prompts(names: list[str], templates: list[str]) -> list[str]:
    phrases = [label_phrase(n) for n in names]
    if len(set(phrases)) != len(phrases):
        dupes = sorted({p for p in phrases if phrases.count(p) > 1})
        raise ConfigError(f"label set: class names {dupes} give the same prompt phrase")
    return [fill_template(t, p) for p in phrases for t in templates]


__all__ = [
    "LABEL_SETS",
    "LABEL_SET_DIR",
    "PROMPT_RULES",
    "TEMPLATES",
    "article",
    "fill_template",
    "label_phrase",
    "load_label_set",
    "named_label_set",
    "synthetic_label_set",
    "zero_shot_weights",
]
