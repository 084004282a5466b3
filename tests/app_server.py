"""Start the real studio (`python app.py`) as a subprocess on a free port, for HTTP tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def log_tail(log_file: Path, chars: int = 6000) -> str:
    try:
        return log_file.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no server log)"


@contextmanager
def running_app(runs_dir: Path, log_file: Path, timeout: float = 90.0, while_booting=None,
                extra_env: dict[str, str] | None = None):
    """Yields (url, process, log_file) once the app answers HTTP 200; stops it afterwards.
    `while_booting()` (optional) runs in this process while the server starts; `extra_env`
    sets environment variables of the app (limits, login, tokens)."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "FT_RUNS_DIR": str(runs_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    # what makes an instance shared (ui/limits.shared_reasons) comes only from the test, too
    for name in ("FT_MAX_STEPS", "FT_MAX_ROWS", "FT_MAX_UPLOAD_MB", "FT_AUTH", "SPACE_ID", "FT_LEND_HF_TOKEN"):
        env.pop(name, None)
    for name in [n for n in env if n.startswith("FT_CHAT_")]:  # chat's caps: only what a test sets
        env.pop(name)
    env.update(extra_env or {})
    url = f"http://127.0.0.1:{port}/"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        if while_booting is not None:
            while_booting()
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with code {proc.returncode}:\n{log_tail(log_file)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"app did not answer on {url} within {timeout:.0f} s:\n{log_tail(log_file)}")
            time.sleep(0.5)
        yield url, proc, log_file
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
