"""What the tabs share: where runs live, the engine's worker, and the loaded chat model."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ft_engine import stack
from ft_engine.errors import UserError
from ft_engine.rundir import RunDir, list_runs, run_by_id
from ft_engine.worker import Worker

from .limits import describe_bytes, max_upload_bytes

ASSETS = Path(__file__).resolve().parents[1] / "assets"
UPLOADS = ".uploads"  # inside runs_dir: uploads outlive Gradio's temporary files
ALLOWED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def sample_datasets() -> dict[str, Path]:
    """Label → path of every sample dataset shipped in assets/."""
    found = sorted(p for p in ASSETS.rglob("*") if p.suffix in ALLOWED_SUFFIXES and p.is_file())
    return {str(p.relative_to(ASSETS)): p for p in found}


@dataclass
class Studio:
    runs_dir: Path
    worker: Worker = field(default_factory=Worker)
    _chat_lock: threading.Lock = field(default_factory=threading.Lock)
    _chat: tuple[tuple, object] | None = None  # ((run id, result folder), ChatModel): one model at a time

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.worker.before_run.append(self._free_gpu_for_run)

    # --- data files -----------------------------------------------------------------------
    def check_upload(self, tmp_path: str) -> Path:
        """Refuse an upload of a type the engine cannot read, or over FT_MAX_UPLOAD_MB, before
        anything of it is read. Gradio enforces both too (file_types, max_file_size); this
        holds for every caller, whatever Gradio lets through."""
        src = Path(tmp_path)
        if src.suffix.lower() not in ALLOWED_SUFFIXES:
            raise UserError(f"{src.name}: files of type '{src.suffix or 'none'}' are not accepted; "
                            f"upload one of {', '.join(ALLOWED_SUFFIXES)}")
        limit, size = max_upload_bytes(), src.stat().st_size
        if size > limit:
            raise UserError(f"{src.name} is {describe_bytes(size)}, over this studio's upload limit of "
                            f"{describe_bytes(limit)} (FT_MAX_UPLOAD_MB); upload a smaller file, e.g. fewer rows")
        return src

    def keep_upload(self, tmp_path: str) -> Path:
        """Copy an uploaded file next to the runs (content-addressed), so its runs can be
        resumed after Gradio cleaned its temporary folder."""
        src = self.check_upload(tmp_path)
        with open(src, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
        safe = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in src.name)[-80:]
        dest = self.runs_dir / UPLOADS / f"{digest}-{safe}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            # copy under a temporary name, then rename: a failed copy never leaves half a file
            part = dest.with_name(f".{dest.name}.part")
            try:
                shutil.copyfile(src, part)
                part.replace(dest)
            finally:
                part.unlink(missing_ok=True)
        return dest

    def checked_data_path(self, path: str) -> str:
        """A data path given to start a run must be a shipped sample or a kept upload: an API
        caller cannot make the server read an arbitrary file."""
        p = Path(path).resolve()
        roots = [ASSETS.resolve(), (self.runs_dir / UPLOADS).resolve()]
        if not any(p.is_relative_to(r) for r in roots) or not p.is_file():
            raise UserError(f"data {path!r} is not an uploaded file or a sample dataset; "
                            f"upload it with validate_data first and use the data_path it returns")
        return str(p)

    # --- runs ------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunDir:
        return run_by_id(self.runs_dir, run_id)

    def runs(self) -> list[RunDir]:
        return list_runs(self.runs_dir)

    def latest_run_id(self) -> str | None:
        current = self.worker.current_run_id
        if current:
            return current
        runs = self.runs()
        return runs[-1].run_id if runs else None

    def chat_model(self, run_id: str):
        """The ChatModel of a run, loading it if needed (and unloading the previous one)."""
        stack.load()  # one thread at a time imports transformers (ft_engine/stack.py)
        from ft_engine.inference import ChatModel, chat_device
        run = self.run(run_id)
        # a resumed run saves a new result (a renamed folder): the loaded copy is then stale
        stat = run.result_dir.stat() if run.result_dir else None
        key = (run_id, (stat.st_ino, stat.st_mtime_ns) if stat else None)
        with self._chat_lock:
            if self._chat is None or self._chat[0] != key:
                self._chat = None  # free the old model before loading the next
                # refuses (UserError) to load onto the one GPU while a run trains on it
                device = chat_device(training_run=self.worker.current_run_id)
                self._chat = (key, ChatModel(run, device=device))
            return self._chat[1]

    def _free_gpu_for_run(self, run_id: str) -> None:
        """Before a run starts: drop a chat model that sits on the GPU the run trains on (a
        generation still streaming keeps it until it ends), so the run has the memory its
        forecast planned. A chat on the CPU or on another GPU stays."""
        import sys
        inference = sys.modules.get("ft_engine.inference")
        with self._chat_lock:
            if self._chat is not None and inference is not None and inference.shares_gpu_with_runs(self._chat[1].device):
                self._chat = None  # the run gives the GPU's cache back before it measures (training.py)

    def forget_chat(self, run_id: str) -> None:
        with self._chat_lock:
            if self._chat is not None and self._chat[0][0] == run_id:
                self._chat = None


def studio_from_env() -> Studio:
    from ft_engine.config import default_runs_dir
    return Studio(Path(os.environ.get("FT_RUNS_DIR") or default_runs_dir()))
