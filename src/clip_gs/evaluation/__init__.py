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
- :func:`evaluate` (``run``): all protocols for a model on a split prepared by ``clip-gs prepare``, the
  JSON report; :func:`write_outputs` writes it with ``confusion.png`` and ``retrieval.png`` (``plots``).

Importing this package loads only torch (``run`` and ``plots`` load on first use). No Lightning.
"""

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
    positive_ranks,
    retrieval,
    retrieval_definitions,
    retrieval_recall,
    zero_shot,
)

_LAZY = {
    "Evaluation": "run", "SplitEmbeddings": "run", "TASKS": "run", "build_report": "run", "embed_split": "run",
    "evaluate": "run", "write_outputs": "run",
    "zero_shot_classes": "run", "draw_confusion": "plots", "draw_retrieval_grid": "plots",
    "ZEROSHOT_PROTOCOLS": "protocols", "ZeroShotProtocol": "protocols", "zero_shot_protocol": "protocols",
    "evaluate_benchmark": "benchmark_run",
}  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"clip_gs.evaluation.{_LAZY[name]}"), name)
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
    "ZEROSHOT_K",
    "ZEROSHOT_PROTOCOLS",
    "EpisodeSet",
    "Evaluation",
    "FewShotResult",
    "SplitEmbeddings",
    "TASKS",
    "ZeroShotProtocol",
    "ZeroShotResult",
    "build_report",
    "draw_confusion",
    "draw_retrieval_grid",
    "embed_split",
    "evaluate",
    "evaluate_benchmark",
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
