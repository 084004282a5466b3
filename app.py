"""Fine-Tune Studio: `python app.py` (or `make run`) serves the studio.

Reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860), FT_RUNS_DIR (default
./runs), HF_TOKEN (gated models, Hub uploads), FT_MAX_STEPS (cap on steps for a public demo).
"""

from __future__ import annotations

import logging
import os
import threading

from ft_engine.config import BUNDLED_MODEL
from ft_engine.errors import UserError
from ui.context import studio_from_env
from ui.studio import CSS, THEME, build_studio

log = logging.getLogger("app")


def _prepare_bundled_model() -> None:
    """Convert the bundled model on first start, in the background, so the page answers at
    once; a failure is logged with its fix and shown again when someone picks that model."""
    from ft_engine.models import model_source  # torch + transformers: loaded here, off the start-up path
    try:
        model_source(BUNDLED_MODEL)
    except UserError as e:
        log.warning("the bundled model is not available: %s", e)


def main() -> None:
    logging.basicConfig(level=os.environ.get("FT_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Convert the bundled model in the background on first start, so the page answers at once.
    threading.Thread(target=_prepare_bundled_model, name="bundled-model", daemon=True).start()
    studio = studio_from_env()
    demo = build_studio(studio)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        theme=THEME, css=CSS, show_error=True,
    )


if __name__ == "__main__":
    main()
