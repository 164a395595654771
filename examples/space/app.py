"""The CLIP-GS demo as a Hugging Face Space (or locally: ``python app.py``).

The model is ``$CLIP_GS_DEMO_MODEL`` when set (a Hub repo id or a model name, in the Space's
settings); else ``uni3d-b-no-lvis`` (Uni3D-B's weights, converted on first start) with the
Objaverse-LVIS labels, when the Hugging Face Hub is reachable; else the offline model in a
``model/`` folder next to this file (an exported model copied in); else none, and the page says
how to give one. The page says which model it uses and why (``clip_gs.demo.space``). Every other
setting is a ``CLIP_GS_DEMO_*`` variable (see ``clip_gs.demo.settings``). A Space sets
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (0.0.0.0:7860); without them the page is served on
127.0.0.1 only.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.demo import DemoSettings, launch_demo
from clip_gs.demo.space import space_service

HERE = Path(__file__).resolve().parent


def settings() -> DemoSettings:
    port = os.environ.get("GRADIO_SERVER_PORT")
    return DemoSettings.from_env(host=os.environ.get("GRADIO_SERVER_NAME"), port=int(port) if port else None)


if __name__ == "__main__":
    service, notice = space_service(settings(), local=HERE / "model")
    launch_demo(service=service, notice=notice)
