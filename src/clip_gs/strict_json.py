"""The one rule every reader of a stranger's JSON shares: an object may not repeat a key.

Python's :func:`json.loads` keeps the last of repeated keys silently, so ``{"width": 24, "width": 48}``
would read as 48 with no word. Pass :func:`unique_keys` as ``object_pairs_hook``; the readers turn the
``ValueError`` it raises into their own typed error naming the file.
"""

from __future__ import annotations

from collections import Counter


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` for :func:`json.loads`: the object as a dict.

    Raises:
        ValueError: a key is given more than once (the message names up to five such keys).
    """
    result = dict(pairs)
    if len(result) != len(pairs):
        repeated = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise ValueError(f"repeated key(s) {repeated[:5]}: JSON would keep only the last, so no object may have a key "
                         "repeated")  # fmt: skip
    return result


__all__ = ["unique_keys"]
