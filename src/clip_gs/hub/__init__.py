"""The Hugging Face Hub side of clip-gs.

- :mod:`clip_gs.hub.download`: fetching files with the package's errors (``hub_download``, offline advice).
- :mod:`clip_gs.hub.card`: the model card (template ``model_card.md``, metadata, ``model-index`` from the
  evaluation report), used by the training export, ``save_pretrained`` and push.
- :mod:`clip_gs.hub.push`: validating a model folder and uploading it as one commit (``push_folder``).
- :mod:`clip_gs.hub.cli`: ``clip-gs push``.

Importing this package imports none of them (``clip_gs.model`` imports ``download`` and ``card``).
"""
