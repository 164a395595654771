"""`load_state_dict_strict`: the one strict weight loader of the package (models and teachers)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from clip_gs.errors import CheckpointError


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, Tensor], source: str, allowed_missing: str = "", hint: str = ""
) -> None:
    """Load ``state`` into ``model``; any unexpected key, any missing key (other than those
    starting with ``allowed_missing``) or any shape mismatch raises :class:`CheckpointError`
    naming ``source``, the offending keys and, when given, ``hint`` (what to do about it)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (allowed_missing and k.startswith(allowed_missing))]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {missing[:8]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {unexpected[:8]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) {shapes[:4]}")
        detail = "; ".join(parts) + (f" ({hint})" if hint else "")
        raise CheckpointError(f"{source} does not match the architecture {type(model).__name__}: {detail}")
    model.load_state_dict(state, strict=False)


__all__ = ["load_state_dict_strict"]
