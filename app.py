"""Fine-Tune Studio: `python app.py` (or `make run`) serves the studio.

Reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860), FT_RUNS_DIR (default
./runs), HF_TOKEN (gated models, Hub uploads), and the limits for running it for others
(ui/limits.py, docs/deploying.md): FT_MAX_UPLOAD_MB, FT_AUTH, FT_MAX_STEPS,
FT_MAX_ROWS, FT_LEND_HF_TOKEN.
"""

from __future__ import annotations

import logging
import os
import threading

from ft_engine.config import BUNDLED_MODEL
from ft_engine.errors import UserError
from ui import limits
from ui.context import studio_from_env
from ui.studio import CSS, THEME, build_studio

log = logging.getLogger("app")


def _prepare_bundled_model() -> None:
    """Convert the bundled model on first start, in the background, so the page answers at
    once; a failure is logged with its fix and shown again when someone picks that model."""
    from ft_engine import stack
    stack.load()  # torch + transformers: loaded here, off the start-up path, one thread at a time
    from ft_engine.models import model_source
    try:
        model_source(BUNDLED_MODEL)
    except UserError as e:
        log.warning("the bundled model is not available: %s", e)


def main() -> None:
    logging.basicConfig(level=os.environ.get("FT_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # a mistyped limit stops the app here, instead of silently serving without it
        upload_limit, auth = limits.max_upload_bytes(), limits.login()
        steps_cap, rows_cap = limits.max_steps_cap(), limits.max_rows_cap()
        chat_caps = limits.chat_limits()  # FT_CHAT_*: chat's caps and time limit (issue 11)
        token_policy = limits.server_token_describe()  # FT_LEND_HF_TOKEN: whom HF_TOKEN is lent to
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    log.info("limits: uploads up to %s; login %s; steps cap %s; rows cap %s", limits.describe_bytes(upload_limit),
             "on" if auth else "off", steps_cap or "none", rows_cap or "none")
    log.info("chat: at most %d new tokens, %s characters, %s prompt tokens; %s per answer",
             chat_caps.max_new_tokens, chat_caps.max_chars or "any", chat_caps.max_prompt_tokens or "any",
             f"{chat_caps.max_time_s:g} s" if chat_caps.max_time_s else "no time limit")
    shared, anyway_off = limits.shared_reasons(), limits.start_anyway_refusal(signed_in=bool(auth))
    log.info("serving %s; %s; start anyway: %s", f"others ({'; '.join(shared)})" if shared else "this machine only",
             token_policy, anyway_off or "on")
    # Convert the bundled model in the background on first start, so the page answers at once.
    threading.Thread(target=_prepare_bundled_model, name="bundled-model", daemon=True).start()
    studio = studio_from_env()
    demo = build_studio(studio)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", limits.DEFAULT_SERVER_NAME),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        theme=THEME, css=CSS, show_error=True,
        auth=limits.LoginCheck(*auth).check if auth else None,  # one attempt at a time, wrong ones slowed
        max_file_size=upload_limit,  # Gradio refuses bigger uploads (HTTP 413) before they are stored
        # Gradio serves only its own upload/cache folder and what the app returns (the export zips,
        # written into that cache folder: ui/downloads.py); the runs folder is never served directly.
        allowed_paths=[], blocked_paths=[str(studio.runs_dir.resolve())],
        # Gradio's run history (/gradio_api/runs) keeps API calls' inputs, and its Hub-bucket
        # routes, which need no login, use the server's own HF token for a caller that looks
        # local (a proxy on this machine can make every visitor look so). The Runs tab is this
        # studio's history.
        run_history=False,
    )


if __name__ == "__main__":
    main()
