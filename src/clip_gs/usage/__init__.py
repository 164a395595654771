"""Using a trained CLIP-GS model on one's own assets: zero-shot classification, embedding a folder
into a search index, and searching it by text, image or example.

- :func:`classify_files` (``clip-gs classify``): top-k labels of 3DGS files and meshes against a
  label set (a list, a file, or a shipped set: ``modelnet40``, ``objaverse-lvis``, ``synthetic``).
- :func:`embed_folder` (``clip-gs embed``): a resumable :class:`~clip_gs.index.EmbeddingIndex`
  of a folder (only new or changed files are embedded on a rerun).
- :func:`search_index` (``clip-gs search``): nearest rows to a text, an image or a file;
  :func:`hits_sheet` draws them.

Models (with their teachers) are loaded by :func:`clip_gs.model.load_model`.
"""

from clip_gs.usage.classify import Classification, LabelScore, classify_files
from clip_gs.usage.embed import EmbedSummary, embed_folder
from clip_gs.usage.search import hits_sheet, search_index

__all__ = [
    "Classification",
    "EmbedSummary",
    "LabelScore",
    "classify_files",
    "embed_folder",
    "hits_sheet",
    "search_index",
]
