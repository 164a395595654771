"""The model-page demo: a Gradio app to upload a 3DGS file or a mesh, preview it, classify it
zero-shot and search a small gallery by text or image (``clip-gs demo``, ``examples/space/app.py``).

- :class:`DemoSettings`: what is served and how (command line or ``CLIP_GS_DEMO_*`` variables).
- :class:`DemoService`: what the page does, without Gradio (models, previews, classify, search).
- :func:`build_demo` / :func:`launch_demo`: the page (needs the ``demo`` extra: Gradio).

Importing this package does not import Gradio.
"""

from clip_gs.demo.app import build_demo, launch_demo
from clip_gs.demo.service import DemoService
from clip_gs.demo.settings import DemoSettings

__all__ = ["DemoService", "DemoSettings", "build_demo", "launch_demo"]
