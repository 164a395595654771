"""The CLIP-GS demo as a Hugging Face Space (or locally: ``python app.py``).

The model is ``$CLIP_GS_DEMO_MODEL`` (a Hub repo id, set in the Space's settings), else a ``model/``
folder next to this file (an exported model copied in), else none: the page then says how to give
one. Every other setting is a ``CLIP_GS_DEMO_*`` variable (see ``clip_gs.demo.settings``). A Space
sets ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (0.0.0.0:7860); without them the page is
served on 127.0.0.1 only.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.demo import DemoSettings, launch_demo

HERE = Path(__file__).resolve().parent


def settings() -> DemoSettings:
    local = HERE / "model"
    port = os.environ.get("GRADIO_SERVER_PORT")
    return DemoSettings.from_env(
        model=None if os.environ.get("CLIP_GS_DEMO_MODEL") else (str(local) if local.is_dir() else None),
        host=os.environ.get("GRADIO_SERVER_NAME"),
        port=int(port) if port else None,
    )


if __name__ == "__main__":
    launch_demo(settings())
