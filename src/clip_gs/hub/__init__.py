"""The Hugging Face Hub side of clip-gs, below the model: nothing here imports the model, the teachers or
the evaluation.

- :mod:`~clip_gs.hub.downloads`: ``hf://`` references, the Hugging Face cache, offline mode
  (:func:`~clip_gs.hub.downloads.is_offline`) and fetching a file with the package's errors.
- :mod:`~clip_gs.hub.folder`: the file names of a model folder and one reader for each of its records.
- :mod:`~clip_gs.hub.card`: the model card (template ``model_card.md``).
- :mod:`~clip_gs.hub.push`: a model folder up to the Hub in one commit.
"""
