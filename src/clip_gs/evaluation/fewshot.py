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

Every draw comes from ``torch.Generator`` s seeded from ``seed``, so a seed fixes every run.
Paper protocols (:data:`PAPER_PROTOCOLS`): ModelNet-GS 10-way 10-shot; Objaverse-GS 5-shot with
5, 10, 20 and 50 ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError

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
) -> FewShotResult:
    """N-way K-shot episodes with a logistic-regression probe on frozen embeddings (module docstring).

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

    Returns:
        :class:`FewShotResult`.

    Raises:
        ConfigError: non-positive protocol numbers, ``ways < 2``, mismatched lengths.
        DatasetError: fewer than ``ways`` classes with ``shots + queries_per_class`` samples
            (the smaller classes named, with their counts). Classes below that size are left out
            of the draws (:attr:`FewShotResult.excluded`), as a long-tail set such as
            Objaverse-LVIS needs.
    """
    for what, value, low in (("ways", ways, 2), ("shots", shots, 1), ("episodes", episodes, 1),
                             ("queries_per_class", queries_per_class, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"few-shot {what} must be an int >= {low}, got {value!r}")
    if embeddings.ndim != 2 or embeddings.shape[0] != len(labels):
        raise ConfigError(f"few_shot needs embeddings [N, E] with one label each, got {list(embeddings.shape)} "
                          f"and {len(labels)} labels")  # fmt: skip
    bad = [i for i, label in enumerate(labels) if not isinstance(label, str)]
    if bad:
        raise DatasetError(f"few-shot: samples {bad[:5]} have no class label")
    classes = sorted(set(labels))
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in classes}
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
    classes = eligible  # episodes draw their classes among those with enough samples (long-tail sets)
    x = F.normalize(embeddings.detach().float().cpu(), dim=-1)
    member_idx = {c: torch.tensor(members[c]) for c in classes}
    generator = torch.Generator().manual_seed(seed)
    accuracies = torch.empty(episodes, dtype=torch.float64)
    steps = range(episodes)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"few-shot {ways}-way {shots}-shot", unit="episode")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: one thread is much faster than two contending ones
    try:
        for e in steps:
            accuracies[e] = _episode(x, classes, member_idx, ways, shots, queries_per_class, l2, generator)
    finally:
        torch.set_num_threads(threads)
    return FewShotResult(
        float(accuracies.mean()), float(accuracies.std(unbiased=False)), accuracies.float(), ways, shots,
        queries_per_class, seed, tuple(sorted(small)),
    )  # fmt: skip


def _members(labels: Sequence[str], what: str) -> dict[str, list[int]]:
    bad = [i for i, label in enumerate(labels) if not isinstance(label, str)]
    if bad:
        raise DatasetError(f"few-shot: {what} samples {bad[:5]} have no class label")
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
) -> FewShotResult:
    """The standard few-shot protocol (module docstring): support from train, queries from test.

    Args:
        train_embeddings: ``[N_train, E]``; train_labels: N_train class names.
        test_embeddings: ``[N_test, E]``; test_labels: N_test class names.
        ways, shots: the setting (the paper's ModelNet: 10, 10).
        runs: independent runs (run ``r`` draws with ``seed + r``).
        queries_per_class: test queries per class and run (20).
        seed: the first run's seed.
        l2: the probe's L2 penalty.

    Returns:
        :class:`FewShotResult` with ``protocol="standard"``, one accuracy per run.

    Raises:
        ConfigError: non-positive settings, ``ways < 2``, mismatched lengths or widths.
        DatasetError: fewer than ``ways`` classes with ``shots`` train and ``queries_per_class``
            test objects (names the largest standard setting that fits, if any).
    """
    for what, value, low in (("ways", ways, 2), ("shots", shots, 1), ("runs", runs, 1),
                             ("queries_per_class", queries_per_class, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"few-shot {what} must be an int >= {low}, got {value!r}")
    if (train_embeddings.ndim != 2 or test_embeddings.ndim != 2 or train_embeddings.shape[0] != len(train_labels)
            or test_embeddings.shape[0] != len(test_labels) or train_embeddings.shape[1] != test_embeddings.shape[1]):  # fmt: skip
        raise ConfigError(f"standard few-shot needs train [N, E] and test [M, E] embeddings with one label each, got "
                          f"{list(train_embeddings.shape)} / {len(train_labels)} and {list(test_embeddings.shape)} / "
                          f"{len(test_labels)}")  # fmt: skip
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
    x_train = F.normalize(train_embeddings.detach().float().cpu(), dim=-1)
    x_test = F.normalize(test_embeddings.detach().float().cpu(), dim=-1)
    train_idx = {c: torch.tensor(train[c]) for c in eligible}
    test_idx = {c: torch.tensor(test[c]) for c in eligible}
    accuracies = torch.empty(runs, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: one thread is much faster than two contending ones
    try:
        for r in range(runs):
            generator = torch.Generator().manual_seed(seed + r)
            chosen = [eligible[int(i)] for i in torch.randperm(len(eligible), generator=generator)[:ways]]
            s_idx = torch.cat([train_idx[c][torch.randperm(len(train_idx[c]), generator=generator)[:shots]] for c in chosen])
            q_idx = torch.cat([test_idx[c][torch.randperm(len(test_idx[c]), generator=generator)[:queries_per_class]]
                               for c in chosen])  # fmt: skip
            accuracies[r] = _probe_accuracy(x_train[s_idx], x_test[q_idx], ways, shots, queries_per_class, l2)
    finally:
        torch.set_num_threads(threads)
    return FewShotResult(
        float(accuracies.mean()), float(accuracies.std(unbiased=False)), accuracies.float(), ways, shots,
        queries_per_class, seed, excluded, "standard",
    )  # fmt: skip


@dataclass
class FewShotRun:
    """What :func:`run_few_shot` measured: the results, the settings that could not run
    (``{"fewshot/<ways>-way-<shots>-shot": "DatasetError: ..."}``) and notes (``{result name: note}``,
    e.g. a substitute setting)."""

    results: list[FewShotResult]
    failures: dict[str, str]
    notes: dict[str, str]

    def report(self) -> dict:
        """``{"<ways>-way-<shots>-shot": {"mean", "std", "episodes", "protocol", "queries_per_class", ["note"]}}``
        (``episodes``: the runs of the standard protocol)."""
        out = {}
        for r in self.results:
            out[r.name] = {"mean": r.mean, "std": r.std, "episodes": r.episodes, "protocol": r.protocol,
                           "queries_per_class": r.queries_per_class} | ({"note": self.notes[r.name]} if r.name in self.notes else {})  # fmt: skip
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
) -> FewShotRun:
    """Run several few-shot settings under one protocol, as ``clip-gs eval`` does.

    ``standard`` (support from ``support_*``, queries from ``query_*``; default setting 10-way
    10-shot, the paper's ModelNet one): a setting that does not fit is recorded as a failure, saying
    why, and the largest standard setting that fits runs instead (noted as the substitute), once.
    ``episodes`` (both from ``query_*``; default 5-way 5-shot): a setting that does not fit is a failure.

    Raises:
        ConfigError: an unknown protocol, or ``standard`` without support embeddings.
    """
    if protocol not in FEWSHOT_PROTOCOLS:
        raise ConfigError(f"few-shot protocol must be one of {FEWSHOT_PROTOCOLS}, got {protocol!r}")
    out = FewShotRun([], {}, {})
    if protocol == "episodes":
        for ways, shots in settings or ((5, 5),):
            try:
                out.results.append(few_shot(query_embeddings, query_labels, ways, shots, episodes,
                                            queries_per_class or DEFAULT_QUERIES, seed, l2))  # fmt: skip
            except DatasetError as exc:
                out.failures[f"fewshot/{ways}-way-{shots}-shot"] = f"{type(exc).__name__}: {exc}"
        return out
    if support_embeddings is None or support_labels is None:
        raise ConfigError("the standard few-shot protocol needs support embeddings (the train split)")
    queries = queries_per_class or STANDARD_QUERIES
    wanted = list(settings or ((10, 10),))
    for ways, shots in wanted:
        try:
            out.results.append(standard_few_shot(support_embeddings, support_labels, query_embeddings, query_labels,
                                                 ways, shots, runs, queries, seed, l2))  # fmt: skip
        except DatasetError as exc:
            out.failures[f"fewshot/{ways}-way-{shots}-shot"] = f"{type(exc).__name__}: {exc}"
            fits = largest_standard_protocol(support_labels, query_labels, queries)
            done = {(r.ways, r.shots) for r in out.results}
            if fits is not None and fits not in done and fits not in wanted:
                out.results.append(standard_few_shot(support_embeddings, support_labels, query_embeddings,
                                                     query_labels, *fits, runs, queries, seed, l2))  # fmt: skip
                out.notes[out.results[-1].name] = f"the largest standard setting that fits, run instead of {ways}-way {shots}-shot"
    return out


def _probe_accuracy(support: Tensor, queries: Tensor, ways: int, shots: int, queries_per_class: int, l2: float) -> float:
    """Fit the probe on ``support`` (class-major, ``shots`` each) and score it on ``queries`` (class-major)."""
    s_y = torch.arange(ways).repeat_interleave(shots)
    q_y = torch.arange(ways).repeat_interleave(queries_per_class)
    weight, bias = fit_linear_probe(support, s_y, ways, l2)
    predicted = (queries.double() @ weight.T + bias).argmax(dim=1)
    return float((predicted == q_y).double().mean())


def _episode(x, classes, member_idx, ways, shots, queries_per_class, l2, generator) -> float:
    """One episode's query accuracy (draws from ``generator``)."""
    need = shots + queries_per_class
    chosen = [classes[int(i)] for i in torch.randperm(len(classes), generator=generator)[:ways]]
    support, query = [], []
    for c in chosen:
        idx = member_idx[c][torch.randperm(len(member_idx[c]), generator=generator)[:need]]
        support.append(idx[:shots])
        query.append(idx[shots:])
    return _probe_accuracy(x[torch.cat(support)], x[torch.cat(query)], ways, shots, queries_per_class, l2)


__all__ = [
    "DEFAULT_L2",
    "DEFAULT_QUERIES",
    "FEWSHOT_PROTOCOLS",
    "PAPER_PROTOCOLS",
    "STANDARD_PROTOCOLS",
    "STANDARD_QUERIES",
    "STANDARD_RUNS",
    "FewShotResult",
    "FewShotRun",
    "few_shot",
    "fit_linear_probe",
    "largest_standard_protocol",
    "run_few_shot",
    "standard_eligible",
    "standard_few_shot",
]
