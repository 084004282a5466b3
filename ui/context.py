"""What the tabs share: where runs live, the engine's worker, and the loaded chat model."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ft_engine.chat import open_chat_model
from ft_engine.errors import UserError
from ft_engine.rundir import CONFIG_FILE, RunDir, atomic_write_text, delete_run, list_runs, run_by_id
from ft_engine.worker import Worker

from .limits import describe_bytes, max_upload_bytes

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
UPLOADS = ".uploads"  # inside runs_dir: uploads outlive Gradio's temporary files
ALLOWED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# Beside each kept upload `<sha256><suffix>`: `<sha256><suffix>.name`, the file name it was
# last uploaded as (for display only; never a path). Not an allowed suffix: never training data.
NAME_SIDECAR = ".name"
# A kept upload that no run uses is dropped once it has not been uploaded again or picked for a
# run (forecast, Start) for this long: a file validated in the morning can still be started in
# the afternoon, while a public Space does not keep every file a visitor tried, for good.
UNUSED_UPLOAD_KEEP_S = 6 * 3600


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
    # keeping, picking and cleaning uploads one at a time: a cleanup never removes a file that is
    # being kept or picked for a run at that moment
    _uploads_lock: threading.Lock = field(default_factory=threading.Lock)

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
        """Copy an uploaded file next to the runs, so its runs can be resumed after Gradio
        cleaned its temporary folder. Stored by content (`<sha256><suffix>`): the same bytes
        uploaded under ten names are one file; the name last given is kept beside it
        (upload_name). The suffix stays part of the name since it decides how the file is read.
        Then drops the uploads no run uses (clean_uploads)."""
        src = self.check_upload(tmp_path)
        with open(src, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        dest = self.runs_dir / UPLOADS / f"{digest}{src.suffix.lower()}"
        with self._uploads_lock:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                os.utime(dest)  # uploaded again: its time unused starts over
            else:
                # copy under a temporary name, then rename: a failed copy never leaves half a file
                part = dest.with_name(f".{dest.name}.part")
                try:
                    shutil.copyfile(src, part)
                    part.replace(dest)
                finally:
                    part.unlink(missing_ok=True)
            atomic_write_text(dest.with_name(dest.name + NAME_SIDECAR), src.name[:255])
        self.clean_uploads()
        return dest

    def upload_name(self, path: str | os.PathLike) -> str | None:
        """The file name a kept upload was (last) uploaded as, or None if unknown."""
        sidecar = Path(path).with_name(Path(path).name + NAME_SIDECAR)
        try:
            return sidecar.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def clean_uploads(self, keep_s: float = UNUSED_UPLOAD_KEEP_S) -> list[str]:
        """Delete the kept uploads that no run's config.yaml names as its data and that were not
        kept or picked for a run in the last `keep_s` seconds (a file just validated, not yet
        started, stays), with their name files and any copy a crash left half done. Returns the
        names deleted. Run at app start, after a run is deleted, and after each kept upload."""
        folder = self.runs_dir / UPLOADS
        if not folder.is_dir():
            return []
        with self._uploads_lock:
            used = self._uploads_in_use()
            old = time.time() - keep_s
            removed = []
            for p in sorted(folder.iterdir()):
                if p.is_dir() and not p.is_symlink():
                    continue  # not something keep_upload makes: left for the owner
                if p.name.endswith(NAME_SIDECAR):
                    # its upload gone (dropped just now, with it, or long ago)
                    if p.exists() and not p.with_name(p.name.removesuffix(NAME_SIDECAR)).exists():
                        p.unlink()
                        removed.append(p.name)
                    continue
                if p.resolve() in used or p.lstat().st_mtime > old:
                    continue
                for gone in (p, p.with_name(p.name + NAME_SIDECAR)):
                    if gone.exists() or gone.is_symlink():
                        gone.unlink()
                        removed.append(gone.name)
        if removed:
            log.info("dropped %d kept upload file(s) no run uses: %s", len(removed), ", ".join(removed))
        return removed

    def _uploads_in_use(self) -> set[Path]:
        """The data files named by the config.yaml of every run (queued and running ones too)."""
        used = set()
        for run in list_runs(self.runs_dir):
            try:
                config = yaml.safe_load((run.path / CONFIG_FILE).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                # a run whose config can't be read can't be resumed either: it needs no data file
                log.info("run %s: config.yaml unreadable (%s); it keeps no upload", run.run_id, type(e).__name__)
                continue
            data = config.get("data") if isinstance(config, dict) else None
            if isinstance(data, str) and data and "\x00" not in data:  # a NUL: no path at all
                used.add(Path(data).resolve())
        return used

    def checked_data_path(self, path: str) -> str:
        """A data path given to start a run must be a shipped sample or a kept upload: an API
        caller cannot make the server read an arbitrary file."""
        if not isinstance(path, str) or "\x00" in path:  # Path() would refuse a NUL with a bare ValueError
            what = "contains a NUL byte (\\x00)" if isinstance(path, str) else f"is {type(path).__name__}, not text"
            raise UserError(f"data path {what}: use the data_path that validate_data returned")
        p = Path(path).resolve()
        uploads = (self.runs_dir / UPLOADS).resolve()
        # in the uploads folder, only the uploads themselves: not their name files, not a half copy
        kept = p.is_relative_to(uploads) and p.suffix.lower() in ALLOWED_SUFFIXES and not p.name.startswith(".")
        with self._uploads_lock:  # a cleanup now would not see it picked
            if not (kept or p.is_relative_to(ASSETS.resolve())) or not p.is_file():
                raise UserError(f"data {path!r} is not an uploaded file or a sample dataset; "
                                f"upload it with validate_data first and use the data_path it returns")
            if kept:
                os.utime(p)  # picked for a run (or its forecast): in use, whatever its age
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
        run = self.run(run_id)
        # a resumed run saves a new result (a renamed folder): the loaded copy is then stale
        stat = run.result_dir.stat() if run.result_dir else None
        key = (run_id, (stat.st_ino, stat.st_mtime_ns) if stat else None)
        with self._chat_lock:
            if self._chat is None or self._chat[0] != key:
                self._chat = None  # free the old model before loading the next
                # refuses (UserError) to load onto the one GPU while a run trains on it
                training = self.worker.current_run_id
                self._chat = (key, open_chat_model(run, training_run=training, run_gpus=self._run_gpus(training)))
            return self._chat[1]

    def _free_gpu_for_run(self, run_id: str) -> None:
        """Before a run starts: drop a chat model that sits on the GPU the run trains on (a
        generation still streaming keeps it until it ends), so the run has the memory its
        forecast planned. A chat on the CPU or on another GPU stays."""
        import sys
        inference = sys.modules.get("ft_engine.inference")
        with self._chat_lock:
            if self._chat is not None and inference is not None and \
                    inference.shares_gpu_with_runs(self._chat[1].device, self._run_gpus(run_id)):
                self._chat = None  # the run gives the GPU's cache back before it measures (training.py)

    def _run_gpus(self, run_id: str | None) -> int:
        """How many GPUs (processes) the run trains on, from its status (1 if not said)."""
        if not run_id:
            return 1
        try:
            return int(self.run(run_id).read_status(reconcile=False).get("processes") or 1)
        except (UserError, OSError, ValueError):
            return 1

    def forget_chat(self, run_id: str) -> None:
        with self._chat_lock:
            if self._chat is not None and self._chat[0][0] == run_id:
                self._chat = None

    def delete_run(self, run_id: str) -> None:
        """Delete a run (rundir.delete_run's checks), its loaded chat model, and the upload it
        alone used, once unused long enough (clean_uploads)."""
        delete_run(self.runs_dir, run_id)
        self.forget_chat(run_id)
        self.clean_uploads()


def studio_from_env() -> Studio:
    """The app's studio; uploads no run uses any more are dropped as it starts."""
    from ft_engine.config import default_runs_dir
    studio = Studio(Path(os.environ.get("FT_RUNS_DIR") or default_runs_dir()))
    studio.clean_uploads()
    return studio
