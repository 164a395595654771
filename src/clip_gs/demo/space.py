"""Which model the Hugging Face Space serves (``examples/space/app.py``), and why.

In order:

1. ``CLIP_GS_DEMO_MODEL`` (the settings' model): the Space owner's choice, as set.
2. :data:`SPACE_MODEL` (``uni3d-b-no-lvis``: Uni3D-B's converted weights, trained without
   Objaverse-LVIS objects) with the :data:`SPACE_LABEL_SET` labels (Objaverse-LVIS, 1,156 classes),
   when its weights can be had (the Hub is reachable, or they are in the Hugging Face cache) and its
   teacher's label embeddings can be made: on first start the teacher's text tower encodes the LVIS
   names once and the label-embedding file is cached under the cache root
   (:mod:`clip_gs.demo.labels`); later starts classify with no text tower.
3. The offline model shipped with the Space: a ``model/`` folder next to ``app.py`` (an exported
   model copied in, e.g. ``clip-gs fit --config examples/configs/quickstart.yaml``'s export).
4. None: the page says how to give one.

:func:`space_service` returns the :class:`~clip_gs.demo.service.DemoService` and a notice the page
shows under its title, naming the model and the reason it was chosen.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from clip_gs.demo.service import DemoService
from clip_gs.demo.settings import ENV_PREFIX, DemoSettings
from clip_gs.errors import ClipGSError

logger = logging.getLogger("clip_gs")

SPACE_MODEL = "uni3d-b-no-lvis"
"""The model a Space serves by default (:data:`~clip_gs.model.pretrained.PRETRAINED`)."""

SPACE_LABEL_SET = "objaverse-lvis"
"""Its default label set (the classes its ``-no-lvis`` training never saw)."""


def space_service(
    base: DemoSettings,
    local: str | Path | None = None,
    preferred: str = SPACE_MODEL,
    label_set: str = SPACE_LABEL_SET,
) -> tuple[DemoService, str]:
    """The Space's service and its notice (Markdown), choosing the model as the module docstring says.

    Args:
        base: the settings from the environment (``DemoSettings.from_env``).
        local: the offline model folder (``model/`` next to ``app.py``).
        preferred, label_set: the default model and label set (those of ``base`` win when set).

    The preferred model is loaded, and its label embeddings made, here; a failure
    (:class:`~clip_gs.errors.WeightsUnavailableError` offline, or any package error) is the reason
    the notice gives for the fallback.
    """
    if base.model:
        service = DemoService(base)
        return service, f"Model `{base.model}`: set by the Space's `{ENV_PREFIX}MODEL` variable."
    labelled = base if base.labels or base.label_set else replace(base, label_set=label_set)
    service = DemoService(replace(labelled, model=preferred))
    try:
        service.model(preferred)
        table = service.label_embeddings(preferred)
    except ClipGSError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("the Space's default model %s is not available: %s", preferred, reason)
    else:
        what = labelled.label_set or "the configured labels"
        cached = "" if table is None else f"label embeddings cached in `{Path(table.path).name}`"
        count = "" if table is None else f" ({len(table)} classes, {cached})"
        return service, (f"Model `{preferred}` with the {what} label set{count}: the default, its weights are on the "
                         "Hugging Face Hub (reachable, or in this machine's cache).")  # fmt: skip
    short = reason if len(reason) <= 400 else reason[:400] + " ..."
    if local is not None and Path(local).is_dir():
        service = DemoService(replace(base, model=str(local)))
        return service, (f"Model `{Path(local).name}/`: the offline model shipped with this Space, because the default "
                         f"`{preferred}` is not available here ({short}).")  # fmt: skip
    return DemoService(base), (f"No model: the default `{preferred}` is not available here ({short}), and this Space "
                               "ships no offline `model/` folder.")  # fmt: skip


__all__ = ["SPACE_LABEL_SET", "SPACE_MODEL", "space_service"]
