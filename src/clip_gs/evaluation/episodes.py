"""Few-shot draws as data, and as a file: which classes, support and query objects each episode uses.

An :class:`EpisodeSet` is one N-way K-shot setting's draws under one protocol of
:mod:`~clip_gs.evaluation.fewshot`: for each episode (a run of the standard protocol) the ``ways``
classes in probe order, ``shots`` support object ids and ``queries_per_class`` query object ids
per class. Under ``episodes`` both come from the evaluated set and are disjoint; under ``standard``
the support comes from the support split (``support_split``, ``"train"``) and the queries from the
evaluated split.

:func:`write_episodes` writes draws to a JSON file and :func:`read_episodes` reads them back, so
that two models evaluated with one file (``clip-gs eval --episodes-file FILE``) are scored on
exactly the same objects. The file::

    {"format": "clip-gs-fewshot-episodes", "version": 1,
     "settings": {"<ways>-way-<shots>-shot": {
         "protocol": "standard" | "episodes", "ways": int, "shots": int, "queries_per_class": int,
         "seed": int, "support_split": str | null, "excluded": [class, ...], "note": str | null,
         "episodes": [{"classes": [class, ...],                  # [ways], the probe's class order
                       "support": [[id, ...], ...],              # [ways][shots]
                       "queries": [[id, ...], ...]}, ...]}}}     # [ways][queries_per_class]

The reader is strict (:class:`~clip_gs.errors.EpisodesFileError` naming the file, the setting and
the episode): unknown or missing keys, repeated keys, counts that are not the setting's, a class
twice in an episode, an id twice, an id both support and query. :func:`resolve_episodes` then
checks the draws against the objects being evaluated: every id must be one of them (the support
split's for the standard protocol's support) and carry the class it is listed under.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.errors import EpisodesFileError
from clip_gs.storage import atomic_write
from clip_gs.strict_json import unique_keys

FORMAT = "clip-gs-fewshot-episodes"
VERSION = 1
PROTOCOLS = ("standard", "episodes")

_REQUIRED_SETTING_KEYS = {"protocol", "ways", "shots", "queries_per_class", "seed", "episodes"}
_OPTIONAL_SETTING_KEYS = {"support_split", "excluded", "note"}
_EPISODE_KEYS = {"classes", "support", "queries"}


@dataclass(frozen=True)
class Episode:
    """One episode's draws (or one run's, for the standard protocol).

    Attributes:
        classes: ``[ways]`` class names, in the probe's class order.
        support: ``[ways][shots]`` object ids, class by class.
        queries: ``[ways][queries_per_class]`` object ids, class by class.
    """

    classes: tuple[str, ...]
    support: tuple[tuple[str, ...], ...]
    queries: tuple[tuple[str, ...], ...]

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "support": [list(s) for s in self.support],
                "queries": [list(q) for q in self.queries]}  # fmt: skip


@dataclass(frozen=True)
class EpisodeSet:
    """The draws of one N-way K-shot setting (module docstring).

    Attributes:
        protocol: ``"standard"`` or ``"episodes"``.
        ways, shots, queries_per_class, seed: the setting and the seed it was drawn with.
        episodes: the draws, one :class:`Episode` per episode (run).
        support_split: where the standard protocol's support ids come from (None for ``episodes``).
        excluded: classes left out of every draw (too few objects).
        note: e.g. that the setting was run instead of a larger one that did not fit.
    """

    protocol: str
    ways: int
    shots: int
    queries_per_class: int
    seed: int
    episodes: tuple[Episode, ...]
    support_split: str | None = None
    excluded: tuple[str, ...] = ()
    note: str | None = None

    @property
    def name(self) -> str:
        """``"<ways>-way-<shots>-shot"``."""
        return f"{self.ways}-way-{self.shots}-shot"

    def to_json(self) -> dict:
        return {"protocol": self.protocol, "ways": self.ways, "shots": self.shots,
                "queries_per_class": self.queries_per_class, "seed": self.seed, "support_split": self.support_split,
                "excluded": list(self.excluded), "note": self.note,
                "episodes": [e.to_json() for e in self.episodes]}  # fmt: skip

    def digest(self) -> str:
        """SHA-256 of the draws (protocol, setting, seed and every episode's classes and ids): two
        results with one digest were scored on the same objects."""
        draws = {k: v for k, v in self.to_json().items() if k not in ("excluded", "note")}
        return hashlib.sha256(json.dumps(draws, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_episodes(path: str | os.PathLike, sets: Sequence[EpisodeSet]) -> Path:
    """Write ``sets`` (distinct settings) to ``path`` as the JSON file of the module docstring
    (atomically: a killed run leaves no half-written file). Returns the path.

    Raises:
        EpisodesFileError: two sets of one setting, or the file cannot be written.
    """
    path = Path(path)
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise EpisodesFileError(f"{path}: one setting given twice ({names})")
    data = {"format": FORMAT, "version": VERSION, "settings": {s.name: s.to_json() for s in sets}}
    try:
        atomic_write(path, json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        raise EpisodesFileError(f"{path}: cannot write the episodes file: {exc.strerror or exc}") from exc
    return path


def _fail(path: Path, where: str, problem: str) -> EpisodesFileError:
    return EpisodesFileError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


def _keys(value: object, required: set[str], optional: set[str], path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, where, f"expected an object, got {type(value).__name__}")
    missing, unknown = sorted(required - set(value)), sorted(set(value) - required - optional)
    if missing or unknown:
        raise _fail(path, where, "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                       f"unknown {unknown}" if unknown else "") if p))  # fmt: skip
    return value


def _int(value: object, low: int, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(path, where, f"must be an int >= {low}, got {value!r}")
    return value


def _names(value: object, count: int, path: Path, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) != count or not all(isinstance(v, str) and v for v in value):
        got = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
        raise _fail(path, where, f"must be a list of {count} non-empty strings, got {got}")
    return tuple(value)


def _episode(value: object, s: EpisodeSet, path: Path, where: str) -> Episode:
    _keys(value, _EPISODE_KEYS, set(), path, where)
    classes = _names(value["classes"], s.ways, path, f"{where}.classes")
    if len(set(classes)) != len(classes):
        raise _fail(path, where, f"a class drawn twice: {classes}")
    groups = {}
    for part, count in (("support", s.shots), ("queries", s.queries_per_class)):
        rows = value[part]
        if not isinstance(rows, list) or len(rows) != s.ways:
            raise _fail(path, f"{where}.{part}", f"must be {s.ways} lists, one per class")
        groups[part] = tuple(_names(r, count, path, f"{where}.{part}[{c}]") for c, r in enumerate(rows))
        counts = Counter(i for r in groups[part] for i in r)
        twice = sorted(i for i, n in counts.items() if n > 1)
        if twice:
            raise _fail(path, f"{where}.{part}", f"object id(s) drawn twice: {twice[:5]}")
    both = sorted({i for r in groups["support"] for i in r} & {i for r in groups["queries"] for i in r})
    if both:
        raise _fail(path, where, f"object id(s) both support and query: {both[:5]}")
    return Episode(classes, groups["support"], groups["queries"])


def _setting(name: str, value: object, path: Path) -> EpisodeSet:
    where = f"settings[{name!r}]"
    _keys(value, _REQUIRED_SETTING_KEYS, _OPTIONAL_SETTING_KEYS, path, where)
    if value["protocol"] not in PROTOCOLS:
        raise _fail(path, f"{where}.protocol", f"must be one of {PROTOCOLS}, got {value['protocol']!r}")
    support_split, note, excluded = value.get("support_split"), value.get("note"), value.get("excluded", [])
    if not all(v is None or isinstance(v, str) for v in (support_split, note)):
        raise _fail(path, where, "support_split and note must be strings or null")
    if not isinstance(excluded, list) or not all(isinstance(c, str) for c in excluded):
        raise _fail(path, f"{where}.excluded", "must be a list of class names")
    shell = EpisodeSet(value["protocol"], _int(value["ways"], 2, path, f"{where}.ways"),
                       _int(value["shots"], 1, path, f"{where}.shots"),
                       _int(value["queries_per_class"], 1, path, f"{where}.queries_per_class"),
                       _int(value["seed"], 0, path, f"{where}.seed"), (), support_split, tuple(excluded), note)  # fmt: skip
    if shell.name != name:
        raise _fail(path, where, f"holds a {shell.ways}-way {shell.shots}-shot setting under the name {name!r}")
    episodes = value["episodes"]
    if not isinstance(episodes, list) or not episodes:
        raise _fail(path, f"{where}.episodes", "must be a non-empty list")
    drawn = tuple(_episode(e, shell, path, f"{where}.episodes[{i}]") for i, e in enumerate(episodes))
    return dataclasses.replace(shell, episodes=drawn)


def read_episodes(path: str | os.PathLike) -> list[EpisodeSet]:
    """The draws of an episodes file written by :func:`write_episodes`, checked field by field.

    Returns:
        One :class:`EpisodeSet` per setting, in the file's order.

    Raises:
        EpisodesFileError: a missing or unreadable file, not JSON, a repeated key, another format
            or version, a malformed setting or episode (module docstring; names the file, the
            setting and the episode).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EpisodesFileError(f"{path}: not a readable episodes file ({type(exc).__name__}: {exc})") from exc
    _keys(data, {"format", "version", "settings"}, set(), path, "")
    if data["format"] != FORMAT or data["version"] != VERSION:
        got = f"format {data['format']!r} version {data['version']!r}"
        raise _fail(path, "", f"{got}; expected {FORMAT!r} version {VERSION}")
    if not isinstance(data["settings"], dict) or not data["settings"]:
        raise _fail(path, "settings", "must be a non-empty object of settings")
    return [_setting(name, value, path) for name, value in data["settings"].items()]


def load_draws(
    path: str | os.PathLike, protocol: str, settings: Sequence[tuple[int, int]] | None = None
) -> list[EpisodeSet] | None:
    """The draws of the episodes file ``path`` to score under ``protocol``, or None when the file
    does not exist yet (the run draws, then writes it).

    Args:
        settings: the ``(ways, shots)`` asked for; None takes every setting of the file.

    Raises:
        EpisodesFileError: an unreadable or malformed file (:func:`read_episodes`).
        ConfigError: a setting of the file drawn under another protocol, or a setting asked for that the
            file does not hold (names the file and what it holds).
    """
    from clip_gs.errors import ConfigError

    path = Path(path)
    if not path.exists():
        return None
    sets = read_episodes(path)
    other = [s for s in sets if s.protocol != protocol]
    if other:
        raise ConfigError(f"{path}: {other[0].name} was drawn under the {other[0].protocol!r} few-shot protocol, not "
                          f"{protocol!r} (pass --fewshot-protocol {other[0].protocol}, or another --episodes-file)")  # fmt: skip
    if settings is None:
        return sets
    by_name = {s.name: s for s in sets}
    wanted = [f"{w}-way-{k}-shot" for w, k in settings]
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ConfigError(f"{path}: holds the settings {sorted(by_name)}, not {missing} (leave out --ways / --shots to run "
                          f"the file's, or give another --episodes-file)")  # fmt: skip
    return [by_name[name] for name in dict.fromkeys(wanted)]


def resolve_episodes(
    draws: EpisodeSet,
    query_ids: Sequence[str],
    query_labels: Sequence[str],
    support_ids: Sequence[str] | None = None,
    support_labels: Sequence[str] | None = None,
    where: str = "episodes",
) -> list[tuple[Tensor, Tensor]]:
    """Rows of each episode's support and query objects among the objects evaluated.

    Args:
        draws: the episodes.
        query_ids, query_labels: the evaluated set (ids unique); the ``episodes`` protocol's support
            comes from it too.
        support_ids, support_labels: the standard protocol's support set.
        where: what the messages call the draws (the episodes file).

    Returns:
        Per episode ``(support_rows [ways * shots], query_rows [ways * queries_per_class])`` int64,
        class by class in the episode's class order (support rows index the support set).

    Raises:
        EpisodesFileError: an id that is not among the objects (the support split's, for the
            standard protocol's support), or that is not of the class it is listed under (names
            the setting, the episode and the id).
        ConfigError: the standard protocol without a support set.
    """
    from clip_gs.errors import ConfigError

    if draws.protocol == "standard" and (support_ids is None or support_labels is None):
        raise ConfigError(f"{where}: the standard protocol's draws need the support split's objects")
    query = _index(query_ids, query_labels, "the evaluated objects")
    support = query if draws.protocol == "episodes" else _index(support_ids, support_labels, "the support objects")
    rows = []
    for e, episode in enumerate(draws.episodes):
        parts = []
        support_where = "the support split" if draws.protocol == "standard" else "the evaluated set"
        for part, table, what in (("support", support, support_where), ("queries", query, "the evaluated set")):
            found = []
            for cls, ids in zip(episode.classes, getattr(episode, part)):
                for object_id in ids:
                    if object_id not in table:
                        raise EpisodesFileError(f"{where}: {draws.name} episode {e}: {part} id {object_id!r} is not in "
                                                f"{what}")  # fmt: skip
                    row, label = table[object_id]
                    if label != cls:
                        raise EpisodesFileError(f"{where}: {draws.name} episode {e}: {part} id {object_id!r} is listed "
                                                f"under class {cls!r} but is a {label!r}")  # fmt: skip
                    found.append(row)
            parts.append(torch.tensor(found, dtype=torch.long))
        rows.append((parts[0], parts[1]))
    return rows


def _index(ids: Sequence[str], labels: Sequence[str], what: str) -> Mapping[str, tuple[int, str]]:
    table = {object_id: (i, label) for i, (object_id, label) in enumerate(zip(ids, labels, strict=True))}
    if len(table) != len(ids):
        from clip_gs.errors import DatasetError

        seen: set[str] = set()
        twice = next(i for i in ids if i in seen or seen.add(i))
        raise DatasetError(f"few-shot: {what} repeat the id {twice!r}; episodes name objects by id")
    return table


__all__ = [
    "FORMAT",
    "VERSION",
    "Episode",
    "EpisodeSet",
    "load_draws",
    "read_episodes",
    "resolve_episodes",
    "write_episodes",
]
