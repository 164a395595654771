"""N-way K-shot classification with a linear probe on frozen embeddings.

An episode draws ``ways`` classes, then ``shots`` support and ``queries_per_class`` query samples
of each (disjoint, without replacement); a multinomial logistic-regression probe
(:func:`fit_linear_probe`) is fitted on the support set and scored on the queries. The mean and
standard deviation of the query accuracy over the episodes are reported. Every draw comes from
one ``torch.Generator`` seeded with ``seed``, so a seed fixes every episode.

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
        excluded: classes left out of every episode for having fewer than ``shots +
            queries_per_class`` samples.
    """

    mean: float
    std: float
    accuracies: Tensor
    ways: int
    shots: int
    queries_per_class: int
    seed: int
    excluded: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``"<ways>-way-<shots>-shot"`` (the report key)."""
        return f"{self.ways}-way-{self.shots}-shot"

    @property
    def episodes(self) -> int:
        return len(self.accuracies)


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


def _episode(x, classes, member_idx, ways, shots, queries_per_class, l2, generator) -> float:
    """One episode's query accuracy (draws from ``generator``)."""
    need = shots + queries_per_class
    chosen = [classes[int(i)] for i in torch.randperm(len(classes), generator=generator)[:ways]]
    support, query = [], []
    for c in chosen:
        idx = member_idx[c][torch.randperm(len(member_idx[c]), generator=generator)[:need]]
        support.append(idx[:shots])
        query.append(idx[shots:])
    s_idx, q_idx = torch.cat(support), torch.cat(query)
    s_y = torch.arange(ways).repeat_interleave(shots)
    q_y = torch.arange(ways).repeat_interleave(queries_per_class)
    weight, bias = fit_linear_probe(x[s_idx], s_y, ways, l2)
    predicted = (x[q_idx].double() @ weight.T + bias).argmax(dim=1)
    return float((predicted == q_y).double().mean())


__all__ = ["DEFAULT_L2", "DEFAULT_QUERIES", "PAPER_PROTOCOLS", "FewShotResult", "few_shot", "fit_linear_probe"]
