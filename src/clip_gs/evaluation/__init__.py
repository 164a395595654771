"""The paper's evaluation protocols on embeddings, and ``clip-gs eval``.

- :func:`zero_shot` (``metrics``): top-1/3/5, per-class accuracy, confusion matrix against class embeddings.
- :func:`standard_few_shot` (``fewshot``): the standard few-shot protocol (support from train, 20 test
  queries per class, 10 seeded runs); :func:`few_shot`: N-way K-shot episodes from one split; both
  with a logistic-regression probe (L-BFGS, L2). Their draws (classes, support and query ids) are an
  :class:`EpisodeSet`; :func:`write_episodes` / :func:`read_episodes` (``episodes``) keep them in a file.
- :func:`zero_shot_protocol` (``protocols``): the classes and prompts of a zero-shot figure (ours, Uni3D's).
- :func:`retrieval` (``metrics``): recall@1/5/10 text <-> 3D and image <-> 3D, several views per object
  (named definitions: :data:`RETRIEVAL_DEFINITIONS`, in words: :func:`retrieval_definitions`);
  :func:`retrieval_recall` is the 3D <-> text recall validation logs (the same ranking code).
- :func:`evaluate` (``run``): all protocols for a model on a source (``sources``: a split prepared by
  ``clip-gs prepare``, :class:`PreparedSplit`, or a public benchmark's, :class:`BenchmarkSplit`), the
  JSON report; :func:`write_outputs` writes it with ``confusion.png`` and ``retrieval.png`` (``plots``).
- :func:`positive_ranks` (``ranking``): the rank rules and the tiled ranking behind the metrics.

Importing this package loads only torch (``run``, ``sources`` and ``plots`` load on first use). No Lightning.
"""

from importlib import import_module

from clip_gs.evaluation.episodes import EpisodeSet, read_episodes, write_episodes
from clip_gs.evaluation.fewshot import (
    DEFAULT_L2,
    DEFAULT_QUERIES,
    FEWSHOT_PROTOCOLS,
    PAPER_PROTOCOLS,
    STANDARD_PROTOCOLS,
    FewShotResult,
    few_shot,
    fit_linear_probe,
    largest_standard_protocol,
    run_few_shot,
    standard_few_shot,
)
from clip_gs.evaluation.metrics import (
    DIRECTIONS,
    RECALL_K,
    RETRIEVAL_DEFINITIONS,
    ZEROSHOT_K,
    ZeroShotResult,
    retrieval,
    retrieval_definitions,
    retrieval_recall,
    zero_shot,
)
from clip_gs.evaluation.ranking import positive_ranks

_LAZY = {
    "Evaluation": "run", "SplitEmbeddings": "run", "build_report": "report", "embed": "run", "evaluate": "run",
    "write_outputs": "run", "TASKS": "sources", "BenchmarkSplit": "sources", "PreparedSplit": "sources",
    "zero_shot_classes": "sources", "draw_confusion": "plots", "draw_retrieval_grid": "plots",
    "ZEROSHOT_PROTOCOLS": "protocols", "ZeroShotProtocol": "protocols", "zero_shot_protocol": "protocols",
}  # fmt: skip
"""Names whose modules import the teachers, the Gaussian formats or PIL: loaded on first use, so that
``import clip_gs.evaluation`` loads only torch."""


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"clip_gs.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'clip_gs.evaluation' has no attribute {name!r}")


__all__ = [
    "DEFAULT_L2",
    "DEFAULT_QUERIES",
    "DIRECTIONS",
    "FEWSHOT_PROTOCOLS",
    "PAPER_PROTOCOLS",
    "RECALL_K",
    "RETRIEVAL_DEFINITIONS",
    "STANDARD_PROTOCOLS",
    "TASKS",
    "ZEROSHOT_K",
    "ZEROSHOT_PROTOCOLS",
    "BenchmarkSplit",
    "EpisodeSet",
    "Evaluation",
    "FewShotResult",
    "PreparedSplit",
    "SplitEmbeddings",
    "ZeroShotProtocol",
    "ZeroShotResult",
    "build_report",
    "draw_confusion",
    "draw_retrieval_grid",
    "embed",
    "evaluate",
    "few_shot",
    "fit_linear_probe",
    "largest_standard_protocol",
    "positive_ranks",
    "read_episodes",
    "retrieval",
    "retrieval_definitions",
    "retrieval_recall",
    "run_few_shot",
    "standard_few_shot",
    "write_episodes",
    "write_outputs",
    "zero_shot",
    "zero_shot_classes",
    "zero_shot_protocol",
]
