"""Making and measuring the offline teacher ``synthetic-clip`` (``clip-gs teacher build | eval``).

The runtime teacher lives in :mod:`clip_gs.teachers` (it loads the shipped weights and needs nothing
from here). This package sits above the data and render layers, because building and measuring the
teacher renders synthetic objects:

- :mod:`~clip_gs.offline_teacher.views`: the seeded training and evaluation objects and their views;
- :mod:`~clip_gs.offline_teacher.build`: training the weights from a seed (open_clip's ``ClipLoss``);
- :mod:`~clip_gs.offline_teacher.evaluate`: zero-shot, caption retrieval and colour ranking on fresh objects;
- :mod:`~clip_gs.offline_teacher.cli`: the ``clip-gs teacher`` subcommands.
"""
