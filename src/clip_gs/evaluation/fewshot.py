"""N-way K-shot classification with a linear probe on frozen embeddings: two protocols.

**The standard protocol** (:func:`standard_few_shot`, the default of ``clip-gs eval``): the one of
Point-BERT, CrossPoint and the CLIP-GS paper's ModelNet table (10-way 10-shot, 95.4 +- 0.2). Each
of :data:`STANDARD_RUNS` runs (run ``r`` seeded with ``seed + r``) draws ``ways`` classes, ``shots``
support objects of each from the **train** split and :data:`STANDARD_QUERIES` query objects of
each from the **test** split; a multinomial logistic-regression probe (:func:`fit_linear_probe`)
is fitted on the support set and scored on the queries. Reported: mean +- std of the runs'
accuracies. Classes are drawn among those with enough objects in both splits; when the requested
``ways`` x ``shots`` does not fit a set, :func:`largest_standard_protocol` names the largest of
:data:`STANDARD_PROTOCOLS` that does (and ``clip-gs eval`` runs that one, saying so).

**Episodes from one split** (:func:`few_shot`, ``--fewshot-protocol episodes``): ``episodes``
episodes draw ``ways`` classes, then ``shots`` support and ``queries_per_class`` query objects of
each from the same split (disjoint); mean and std over the episodes. Classes with fewer than
``shots + queries_per_class`` objects are left out of the draws (long-tail sets), and listed.

A set without a train split (Objaverse-LVIS and its 3DGS versions: one test set) cannot run the
standard protocol; the episodes protocol is the one for it (the paper's Objaverse-GS table), its
support and queries drawn disjoint from the set itself.

Every draw comes from ``torch.Generator`` s seeded from ``seed``, so a seed fixes every run.
Drawing and scoring are apart: :func:`draw_episodes` / :func:`draw_standard` give the classes and
object ids of every episode (an :class:`~clip_gs.evaluation.episodes.EpisodeSet`), which
:func:`score_draws` scores; :func:`~clip_gs.evaluation.episodes.write_episodes` /
:func:`~clip_gs.evaluation.episodes.read_episodes` keep them in a file, so that two models are
scored on the very same objects (``clip-gs eval --episodes-file``).
Paper protocols (:data:`PAPER_PROTOCOLS`): ModelNet-GS 10-way 10-shot; Objaverse-GS 5-shot with
5, 10, 20 and 50 ways.

The module is long because both protocols' draws, probe and scoring share one set of class-membership,
setting and id checks, which a split would have to export as private helpers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError, EpisodesFileError
from clip_gs.evaluation.episodes import Episode, EpisodeSet, read_episodes, resolve_episodes, write_episodes

DEFAULT_L2 = 1e-3
"""Default L2 penalty of the probe: ``loss = mean cross-entropy + l2 * ||W||^2`` (bias not penalised)."""

DEFAULT_QUERIES = 15
"""Default query samples per class and episode."""

PAPER_PROTOCOLS = {"modelnet-gs": ((10, 10),), "objaverse-gs": ((5, 5), (10, 5), (20, 5), (50, 5))}
"""``dataset -> ((ways, shots), ...)`` of the paper's few-shot tables."""

FEWSHOT_PROTOCOLS = ("standard", "episodes")
"""The two few-shot protocols (module docstring); ``standard`` is the default of ``clip-gs eval``."""

STANDARD_PROTOCOLS = ((10, 20), (10, 10), (5, 20), (5, 10))
"""The standard ``(ways, shots)`` settings (Point-BERT / CrossPoint on ModelNet40), largest first."""

STANDARD_QUERIES = 20
"""Query objects per class and run of the standard protocol (from the test split)."""

STANDARD_RUNS = 10
"""Runs of the standard protocol (run ``r`` seeded with ``seed + r``)."""


def fit_linear_probe(
    features: Tensor, targets: Tensor, num_classes: int, l2: float = DEFAULT_L2, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by L-BFGS (strong Wolfe line search), from zeros, in float64.

    Minimises ``mean_i CE(W x_i + b, y_i) + l2 * ||W||_F^2``: convex, so the result does not
    depend on the start, and the same inputs give the same weights.

    Args:
        features: ``[n, E]`` training features.
        targets: ``[n]`` int64 class indices in ``[0, num_classes)``.
        num_classes: C.
        l2: L2 penalty on ``W`` (>= 0; 0 is unregularised, unbounded on separable data).
        max_iter: L-BFGS iterations.

    Returns:
        ``(W [C, E], b [C])`` float64.
    """
    if l2 < 0:
        raise ConfigError(f"l2 must be >= 0, got {l2}")
    x = features.detach().to(torch.float64)
    y = targets.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@dataclass(frozen=True)
class FewShotResult:
    """What :func:`few_shot` measured.

    Attributes:
        mean: mean query accuracy over the episodes, in [0, 1].
        std: its standard deviation over the episodes (population, ddof 0).
        accuracies: ``[episodes]`` per-episode accuracies.
        ways, shots, queries_per_class, seed: the protocol.
        excluded: classes left out of every draw for having too few samples (episodes: fewer
            than ``shots + queries_per_class``; standard: fewer than ``shots`` in train or
            ``queries_per_class`` in test).
        protocol: ``"standard"`` (support from train, queries from test, one seed per run) or
            ``"episodes"`` (one split).
        draws: the classes and object ids of every episode (:class:`~clip_gs.evaluation.episodes.EpisodeSet`).
    """

    mean: float
    std: float
    accuracies: Tensor
    ways: int
    shots: int
    queries_per_class: int
    seed: int
    excluded: tuple[str, ...] = ()
    protocol: str = "episodes"
    draws: EpisodeSet | None = None

    @property
    def name(self) -> str:
        """``"<ways>-way-<shots>-shot"`` (the report key)."""
        return f"{self.ways}-way-{self.shots}-shot"

    @property
    def episodes(self) -> int:
        """Episodes (``episodes``) or runs (``standard``)."""
        return len(self.accuracies)

    def describe(self) -> str:
        """One line: ``10-way 10-shot: 95.40 +- 0.20 % (standard: 10 runs, support from train, 20 test queries per class)``."""
        how = (f"standard: {self.episodes} runs, support from train, {self.queries_per_class} test queries per class"
               if self.protocol == "standard" else
               f"episodes: {self.episodes} from one split, {self.queries_per_class} queries per class")  # fmt: skip
        return f"{self.ways}-way {self.shots}-shot: {100 * self.mean:.2f} +- {100 * self.std:.2f} % ({how})"


def _check_setting(**values: int) -> None:
    for what, (value, low) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"few-shot {what} must be an int >= {low}, got {value!r}")


def _object_ids(ids: Sequence[str] | None, n: int, prefix: str, what: str) -> list[str]:
    """``ids`` checked (N distinct strings), or the positions ``<prefix><i>`` when None."""
    if ids is None:
        return [f"{prefix}{i}" for i in range(n)]
    ids = list(ids)
    if len(ids) != n or not all(isinstance(i, str) for i in ids) or len(set(ids)) != n:
        distinct = len(set(map(str, ids)))
        raise ConfigError(f"few-shot: {what} needs {n} distinct string ids, got {len(ids)} ({distinct} distinct)")
    return ids


def draw_episodes(
    labels: Sequence[str], ids: Sequence[str], ways: int, shots: int, episodes: int = 100,
    queries_per_class: int = DEFAULT_QUERIES, seed: int = 0,
) -> EpisodeSet:  # fmt: skip
    """The ``episodes`` protocol's draws (module docstring): per episode ``ways`` classes among those
    with ``shots + queries_per_class`` objects, then that many distinct objects of each, the first
    ``shots`` the support, the rest the queries (disjoint). Classes are taken in sorted-name order
    before the seeded draws, so the draws depend only on the labels, the setting and ``seed``.

    Args:
        labels: N class names. ids: N distinct object ids (what the draws name).

    Raises:
        ConfigError: non-positive settings, ``ways < 2``.
        DatasetError: fewer than ``ways`` classes with enough objects (the smaller ones named, with counts).
    """
    _check_setting(ways=(ways, 2), shots=(shots, 1), episodes=(episodes, 1), queries_per_class=(queries_per_class, 1))
    members = _members(labels, "")
    classes = sorted(members)
    need = shots + queries_per_class
    protocol = f"{ways}-way {shots}-shot with {queries_per_class} queries per class"
    if len(classes) < ways:
        raise DatasetError(f"few-shot {protocol}: only {len(classes)} classes ({classes}) for {ways} ways")
    small = {c: len(members[c]) for c in classes if len(members[c]) < need}
    eligible = [c for c in classes if c not in small]
    if len(eligible) < ways:
        shown = ", ".join(f"{c!r} has {n}" for c, n in sorted(small.items())[:10])
        more = f" (and {len(small) - 10} more)" if len(small) > 10 else ""
        raise DatasetError(
            f"few-shot {protocol} needs {need} samples per class in {ways} classes; only {len(eligible)} of "
            f"{len(classes)} classes have them; {len(small)} have fewer: {shown}{more}"
        )
    member_idx = {c: torch.tensor(members[c]) for c in eligible}
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    for _ in range(episodes):
        chosen = [eligible[int(i)] for i in torch.randperm(len(eligible), generator=generator)[:ways]]
        rows = [member_idx[c][torch.randperm(len(member_idx[c]), generator=generator)[:need]].tolist() for c in chosen]
        drawn.append(Episode(tuple(chosen), tuple(tuple(ids[i] for i in r[:shots]) for r in rows),
                             tuple(tuple(ids[i] for i in r[shots:]) for r in rows)))  # fmt: skip
    return EpisodeSet("episodes", ways, shots, queries_per_class, seed, tuple(drawn), None, tuple(sorted(small)))


def draw_standard(
    train_labels: Sequence[str], train_ids: Sequence[str], test_labels: Sequence[str], test_ids: Sequence[str],
    ways: int = 10, shots: int = 10, runs: int = STANDARD_RUNS, queries_per_class: int = STANDARD_QUERIES,
    seed: int = 0, support_split: str = "train",
) -> EpisodeSet:  # fmt: skip
    """The standard protocol's draws (module docstring): run ``r`` draws with ``seed + r`` ``ways``
    classes among those with ``shots`` train and ``queries_per_class`` test objects, then the
    support from train and the queries from test.

    Raises:
        ConfigError: non-positive settings, ``ways < 2``.
        DatasetError: fewer than ``ways`` such classes (names the largest standard setting that fits, if any).
    """
    _check_setting(ways=(ways, 2), shots=(shots, 1), runs=(runs, 1), queries_per_class=(queries_per_class, 1))
    train, test = _members(train_labels, "train"), _members(test_labels, "test")
    eligible = standard_eligible(train_labels, test_labels, shots, queries_per_class)
    if len(eligible) < ways:
        fits = largest_standard_protocol(train_labels, test_labels, queries_per_class)
        hint = f"; the largest standard setting that fits is {fits[0]}-way {fits[1]}-shot" if fits else (
            "; no standard setting fits (the smallest, 5-way 10-shot, needs 5 such classes)")  # fmt: skip
        raise DatasetError(
            f"standard few-shot {ways}-way {shots}-shot needs {ways} classes with >= {shots} train and >= "
            f"{queries_per_class} test objects; {len(eligible)} of {len(set(train) | set(test))} classes have them{hint}"
        )
    excluded = tuple(sorted((set(train) | set(test)) - set(eligible)))
    train_idx = {c: torch.tensor(train[c]) for c in eligible}
    test_idx = {c: torch.tensor(test[c]) for c in eligible}
    drawn = []
    for r in range(runs):
        generator = torch.Generator().manual_seed(seed + r)
        chosen = [eligible[int(i)] for i in torch.randperm(len(eligible), generator=generator)[:ways]]
        support = [train_idx[c][torch.randperm(len(train_idx[c]), generator=generator)[:shots]].tolist()
                   for c in chosen]  # fmt: skip
        queries = [test_idx[c][torch.randperm(len(test_idx[c]), generator=generator)[:queries_per_class]].tolist()
                   for c in chosen]  # fmt: skip
        drawn.append(Episode(tuple(chosen), tuple(tuple(train_ids[i] for i in s) for s in support),
                             tuple(tuple(test_ids[i] for i in q) for q in queries)))  # fmt: skip
    return EpisodeSet("standard", ways, shots, queries_per_class, seed, tuple(drawn), support_split, excluded)


def score_draws(
    draws: EpisodeSet,
    query_embeddings: Tensor,
    query_ids: Sequence[str],
    query_labels: Sequence[str],
    support_embeddings: Tensor | None = None,
    support_ids: Sequence[str] | None = None,
    support_labels: Sequence[str] | None = None,
    l2: float = DEFAULT_L2,
    progress: bool = False,
    where: str = "episodes",
) -> FewShotResult:
    """Fit and score the probe on each of ``draws``' episodes: the one scoring of both protocols,
    whether the draws were just made or read from a file (:func:`~clip_gs.evaluation.episodes.read_episodes`).

    Args:
        draws: the episodes.
        query_embeddings: ``[N, E]`` embeddings of the evaluated objects, ``query_ids`` / ``query_labels`` theirs.
        support_embeddings: ``[M, E]`` the standard protocol's support split, with its ids and labels.
        l2: the probe's L2 penalty. progress: a progress bar over episodes.
        where: what messages call the draws (e.g. the episodes file).

    Returns:
        :class:`FewShotResult` carrying ``draws``.

    Raises:
        EpisodesFileError: an id not among the objects or not of its listed class (:func:`~clip_gs.evaluation.episodes.resolve_episodes`).
        ConfigError: the standard protocol without support embeddings.
    """
    rows = resolve_episodes(draws, query_ids, query_labels, support_ids, support_labels, where)
    x_query = F.normalize(query_embeddings.detach().float().cpu(), dim=-1)
    x_support = x_query
    if draws.protocol == "standard":
        x_support = F.normalize(support_embeddings.detach().float().cpu(), dim=-1)
    accuracies = torch.empty(len(rows), dtype=torch.float64)
    steps = range(len(rows))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"few-shot {draws.ways}-way {draws.shots}-shot", unit="episode")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: one thread is much faster than two contending ones
    try:
        for e in steps:
            s_rows, q_rows = rows[e]
            accuracies[e] = _probe_accuracy(x_support[s_rows], x_query[q_rows], draws.ways, draws.shots,
                                            draws.queries_per_class, l2)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return FewShotResult(
        float(accuracies.mean()), float(accuracies.std(unbiased=False)), accuracies.float(), draws.ways, draws.shots,
        draws.queries_per_class, draws.seed, draws.excluded, draws.protocol, draws,
    )  # fmt: skip


def few_shot(
    embeddings: Tensor,
    labels: Sequence[str],
    ways: int,
    shots: int,
    episodes: int = 100,
    queries_per_class: int = DEFAULT_QUERIES,
    seed: int = 0,
    l2: float = DEFAULT_L2,
    progress: bool = False,
    ids: Sequence[str] | None = None,
) -> FewShotResult:
    """N-way K-shot episodes with a logistic-regression probe on frozen embeddings (module docstring):
    :func:`draw_episodes`, then :func:`score_draws`.

    The probe sees the L2-normalised embeddings. Classes are taken in sorted-name order before
    the seeded draws, so the result depends only on the data, the protocol and ``seed``.

    Args:
        embeddings: ``[N, E]`` frozen embeddings.
        labels: N class names.
        ways: classes per episode (N), >= 2.
        shots: support samples per class (K), >= 1.
        episodes: number of episodes, >= 1.
        queries_per_class: query samples per class and episode, >= 1.
        seed: seed of every draw.
        l2: the probe's L2 penalty (:data:`DEFAULT_L2`).
        progress: show a progress bar over episodes.
        ids: N distinct object ids the draws name (default: the positions ``"0"``, ``"1"``, ...).

    Returns:
        :class:`FewShotResult` (its ``draws``: the classes and ids of every episode).

    Raises:
        ConfigError: non-positive protocol numbers, ``ways < 2``, mismatched lengths.
        DatasetError: fewer than ``ways`` classes with ``shots + queries_per_class`` samples
            (the smaller classes named, with their counts). Classes below that size are left out
            of the draws (:attr:`FewShotResult.excluded`), as a long-tail set such as
            Objaverse-LVIS needs.
    """
    _check_setting(ways=(ways, 2), shots=(shots, 1), episodes=(episodes, 1), queries_per_class=(queries_per_class, 1))
    if embeddings.ndim != 2 or embeddings.shape[0] != len(labels):
        raise ConfigError(f"few_shot needs embeddings [N, E] with one label each, got {list(embeddings.shape)} "
                          f"and {len(labels)} labels")  # fmt: skip
    ids = _object_ids(ids, len(labels), "", "the objects")
    draws = draw_episodes(labels, ids, ways, shots, episodes, queries_per_class, seed)
    return score_draws(draws, embeddings, ids, labels, l2=l2, progress=progress)


def _members(labels: Sequence[str], what: str) -> dict[str, list[int]]:
    bad = [i for i, label in enumerate(labels) if not isinstance(label, str)]
    if bad:
        raise DatasetError(f"few-shot: {what + ' ' if what else ''}samples {bad[:5]} have no class label")
    members: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    return members


def standard_eligible(train_labels: Sequence[str], test_labels: Sequence[str], shots: int,
                      queries_per_class: int = STANDARD_QUERIES) -> list[str]:  # fmt: skip
    """Classes (sorted) with at least ``shots`` train and ``queries_per_class`` test objects."""
    train, test = _members(train_labels, "train"), _members(test_labels, "test")
    return sorted(c for c in train if len(train[c]) >= shots and len(test.get(c, ())) >= queries_per_class)


def largest_standard_protocol(
    train_labels: Sequence[str], test_labels: Sequence[str], queries_per_class: int = STANDARD_QUERIES,
    protocols: Sequence[tuple[int, int]] = STANDARD_PROTOCOLS,
) -> tuple[int, int] | None:  # fmt: skip
    """The first (largest) ``(ways, shots)`` of ``protocols`` the splits can support, or None."""
    for ways, shots in protocols:
        if len(standard_eligible(train_labels, test_labels, shots, queries_per_class)) >= ways:
            return ways, shots
    return None


def standard_few_shot(
    train_embeddings: Tensor,
    train_labels: Sequence[str],
    test_embeddings: Tensor,
    test_labels: Sequence[str],
    ways: int = 10,
    shots: int = 10,
    runs: int = STANDARD_RUNS,
    queries_per_class: int = STANDARD_QUERIES,
    seed: int = 0,
    l2: float = DEFAULT_L2,
    train_ids: Sequence[str] | None = None,
    test_ids: Sequence[str] | None = None,
) -> FewShotResult:
    """The standard few-shot protocol (module docstring): support from train, queries from test
    (:func:`draw_standard`, then :func:`score_draws`).

    Args:
        train_embeddings: ``[N_train, E]``; train_labels: N_train class names.
        test_embeddings: ``[N_test, E]``; test_labels: N_test class names.
        ways, shots: the setting (the paper's ModelNet: 10, 10).
        runs: independent runs (run ``r`` draws with ``seed + r``).
        queries_per_class: test queries per class and run (20).
        seed: the first run's seed.
        l2: the probe's L2 penalty.
        train_ids, test_ids: the objects' ids the draws name (default ``"s<i>"`` and ``"q<i>"``).

    Returns:
        :class:`FewShotResult` with ``protocol="standard"``, one accuracy per run.

    Raises:
        ConfigError: non-positive settings, ``ways < 2``, mismatched lengths or widths.
        DatasetError: fewer than ``ways`` classes with ``shots`` train and ``queries_per_class``
            test objects (names the largest standard setting that fits, if any).
    """
    _check_setting(ways=(ways, 2), shots=(shots, 1), runs=(runs, 1), queries_per_class=(queries_per_class, 1))
    if (train_embeddings.ndim != 2 or test_embeddings.ndim != 2 or train_embeddings.shape[0] != len(train_labels)
            or test_embeddings.shape[0] != len(test_labels) or train_embeddings.shape[1] != test_embeddings.shape[1]):  # fmt: skip
        raise ConfigError(f"standard few-shot needs train [N, E] and test [M, E] embeddings with one label each, got "
                          f"{list(train_embeddings.shape)} / {len(train_labels)} and {list(test_embeddings.shape)} / "
                          f"{len(test_labels)}")  # fmt: skip
    train_ids = _object_ids(train_ids, len(train_labels), "s", "the train split")
    test_ids = _object_ids(test_ids, len(test_labels), "q", "the test split")
    draws = draw_standard(train_labels, train_ids, test_labels, test_ids, ways, shots, runs, queries_per_class, seed)
    return score_draws(draws, test_embeddings, test_ids, test_labels, train_embeddings, train_ids, train_labels, l2)


@dataclass
class FewShotRun:
    """What :func:`run_few_shot` measured: the results, the settings that could not run
    (``{"fewshot/<ways>-way-<shots>-shot": "DatasetError: ..."}``) and notes (``{result name: note}``,
    e.g. a substitute setting)."""

    results: list[FewShotResult]
    failures: dict[str, str]
    notes: dict[str, str]

    @property
    def draws(self) -> list[EpisodeSet]:
        """The draws of every result, each carrying its note (what :func:`~clip_gs.evaluation.episodes.write_episodes` writes)."""
        return [dataclasses.replace(r.draws, note=self.notes.get(r.name, r.draws.note))
                for r in self.results if r.draws]  # fmt: skip

    def report(self, episodes_file: str | os.PathLike | None = None, from_file: bool = False) -> dict:
        """``{"<ways>-way-<shots>-shot": {"mean", "std", "episodes", "protocol", "queries_per_class", "draws_sha256",
        ["note"], ["episodes_file", "episodes_file_use"]}}`` (``episodes``: the runs of the standard protocol;
        ``draws_sha256``: :meth:`EpisodeSet.digest <clip_gs.evaluation.episodes.EpisodeSet.digest>`, equal for
        results scored on the same objects; ``episodes_file_use``: ``"read"`` or ``"written"``)."""
        out = {}
        for r in self.results:
            entry = {"mean": r.mean, "std": r.std, "episodes": r.episodes, "protocol": r.protocol,
                     "queries_per_class": r.queries_per_class}  # fmt: skip
            if r.draws is not None:
                entry["draws_sha256"] = r.draws.digest()
            if r.name in self.notes:
                entry["note"] = self.notes[r.name]
            if episodes_file is not None:
                entry |= {"episodes_file": str(episodes_file), "episodes_file_use": "read" if from_file else "written"}
            out[r.name] = entry
        return out


def run_few_shot(
    protocol: str,
    settings: Sequence[tuple[int, int]] | None,
    query_embeddings: Tensor,
    query_labels: Sequence[str],
    support_embeddings: Tensor | None = None,
    support_labels: Sequence[str] | None = None,
    runs: int = STANDARD_RUNS,
    episodes: int = 100,
    queries_per_class: int | None = None,
    seed: int = 0,
    l2: float = DEFAULT_L2,
    query_ids: Sequence[str] | None = None,
    support_ids: Sequence[str] | None = None,
    draws: Sequence[EpisodeSet] | None = None,
    support_split: str = "train",
    where: str = "episodes",
) -> FewShotRun:
    """Run several few-shot settings under one protocol, as ``clip-gs eval`` does.

    ``standard`` (support from ``support_*``, queries from ``query_*``; default setting 10-way
    10-shot, the paper's ModelNet one): a setting that does not fit is recorded as a failure, saying
    why, and the largest standard setting that fits runs instead (noted as the substitute), once.
    ``episodes`` (both from ``query_*``; default 5-way 5-shot): a setting that does not fit is a failure.

    ``draws`` (e.g. :func:`~clip_gs.evaluation.episodes.read_episodes` of an episodes file, named
    ``where`` in messages): score these draws instead of drawing; each must be of ``protocol``, and
    ``settings``, ``runs``, ``episodes`` and ``queries_per_class`` are the draws' own.

    Args:
        query_ids, support_ids: the objects' ids (what draws name; default: their positions).

    Raises:
        ConfigError: an unknown protocol, ``standard`` without support embeddings, draws of another protocol.
        EpisodesFileError: ``draws`` that name objects not evaluated here (never recorded as a failure).
    """
    if protocol not in FEWSHOT_PROTOCOLS:
        raise ConfigError(f"few-shot protocol must be one of {FEWSHOT_PROTOCOLS}, got {protocol!r}")
    out = FewShotRun([], {}, {})
    prefix = "q" if protocol == "standard" else ""
    query_ids = _object_ids(query_ids, len(query_labels), prefix, "the evaluated objects")
    if protocol == "standard":
        if support_embeddings is None or support_labels is None:
            raise ConfigError("the standard few-shot protocol needs support embeddings (the train split)")
        support_ids = _object_ids(support_ids, len(support_labels), "s", "the support split")
    if draws is not None:
        for drawn in draws:
            if drawn.protocol != protocol:
                raise ConfigError(f"{where}: {drawn.name} was drawn under the {drawn.protocol!r} few-shot protocol, "
                                  f"not {protocol!r} (pass --fewshot-protocol {drawn.protocol})")  # fmt: skip
            out.results.append(score_draws(drawn, query_embeddings, query_ids, query_labels, support_embeddings,
                                           support_ids, support_labels, l2, where=where))  # fmt: skip
            if drawn.note:
                out.notes[drawn.name] = drawn.note
        return out

    def score(make) -> FewShotResult | None:
        try:
            drawn = make()
        except EpisodesFileError:
            raise
        except DatasetError as exc:
            return exc
        return score_draws(drawn, query_embeddings, query_ids, query_labels, support_embeddings, support_ids,
                           support_labels, l2)  # fmt: skip

    if protocol == "episodes":
        for ways, shots in settings or ((5, 5),):
            result = score(lambda: draw_episodes(query_labels, query_ids, ways, shots, episodes,
                                                 queries_per_class or DEFAULT_QUERIES, seed))  # fmt: skip
            if isinstance(result, DatasetError):
                out.failures[f"fewshot/{ways}-way-{shots}-shot"] = f"{type(result).__name__}: {result}"
            else:
                out.results.append(result)
        return out
    queries = queries_per_class or STANDARD_QUERIES
    wanted = list(settings or ((10, 10),))
    for ways, shots in wanted:
        result = score(lambda: draw_standard(support_labels, support_ids, query_labels, query_ids, ways, shots, runs,
                                             queries, seed, support_split))  # fmt: skip
        if not isinstance(result, DatasetError):
            out.results.append(result)
            continue
        out.failures[f"fewshot/{ways}-way-{shots}-shot"] = f"{type(result).__name__}: {result}"
        fits = largest_standard_protocol(support_labels, query_labels, queries)
        done = {(r.ways, r.shots) for r in out.results}
        if fits is not None and fits not in done and fits not in wanted:
            substitute = score(lambda: draw_standard(support_labels, support_ids, query_labels, query_ids, *fits, runs,
                                                     queries, seed, support_split))  # fmt: skip
            if isinstance(substitute, DatasetError):  # cannot happen: it fits; recorded rather than lost
                out.failures[f"fewshot/{fits[0]}-way-{fits[1]}-shot"] = f"{type(substitute).__name__}: {substitute}"
                continue
            out.results.append(substitute)
            out.notes[substitute.name] = f"the largest standard setting that fits, run instead of {ways}-way {shots}-shot"
    return out


def _probe_accuracy(support: Tensor, queries: Tensor, ways: int, shots: int, queries_per_class: int, l2: float) -> float:
    """Fit the probe on ``support`` (class-major, ``shots`` each) and score it on ``queries`` (class-major)."""
    s_y = torch.arange(ways).repeat_interleave(shots)
    q_y = torch.arange(ways).repeat_interleave(queries_per_class)
    weight, bias = fit_linear_probe(support, s_y, ways, l2)
    predicted = (queries.double() @ weight.T + bias).argmax(dim=1)
    return float((predicted == q_y).double().mean())


__all__ = [
    "DEFAULT_L2",
    "DEFAULT_QUERIES",
    "FEWSHOT_PROTOCOLS",
    "PAPER_PROTOCOLS",
    "STANDARD_PROTOCOLS",
    "STANDARD_QUERIES",
    "STANDARD_RUNS",
    "Episode",
    "EpisodeSet",
    "FewShotResult",
    "FewShotRun",
    "draw_episodes",
    "draw_standard",
    "few_shot",
    "fit_linear_probe",
    "largest_standard_protocol",
    "read_episodes",
    "run_few_shot",
    "score_draws",
    "standard_eligible",
    "standard_few_shot",
    "write_episodes",
]
