"""The run directory: the only channel from the engine to everything that shows a run.

    <runs_dir>/<run_id>/
        config.yaml      the RunConfig that made the run
        status.json      explicit status, progress, times, error (always written atomically)
        metrics.jsonl    one JSON object per logging step / evaluation (append-only)
        data.json        what the data loader found (format, rows, truncation)
        checkpoints/     resumable Trainer checkpoints
        adapter/         LoRA / QLoRA result (peft format + tokenizer)
        model/           full fine-tuning result (safetensors + tokenizer)

Readers (CLI, studio) only read these files; they never reach into a live job.
"""

from __future__ import annotations

import enum
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from .errors import UserError

CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
DATA_FILE = "data.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
EVAL_FILE = "eval.json"  # the latest evaluation, tuned vs base (evaluate.py)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Status(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"  # was queued/running when its process died

    @property
    def finished(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.STOPPED, Status.INTERRUPTED)


def utc_now() -> str:
    """ISO time to the millisecond: runs queued or started within one second still sort in order."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def slugify(name: str) -> str:
    """A run name as a file-name-safe slug: lowercase ASCII letters, digits and '-' (so no
    '/', '..', spaces or other characters of any name a user gives reach a file name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:40].strip("-")


def new_run_id(runs_dir: Path, name: str = "", method: str = "") -> str:
    """`20261128-142501-<slug>-<4 hex>`: sortable by time, safe for file names, unique."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    middle = slugify(name) or slugify(method) or "run"
    while True:
        run_id = f"{stamp}-{middle}-{secrets.token_hex(2)}"
        if not (runs_dir / run_id).exists():
            return run_id


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target:
    a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _process_identity() -> dict[str, Any]:
    """pid plus the process start time: a restarted app that reuses the pid is still told apart."""
    me = psutil.Process()
    return {"pid": me.pid, "pid_started": me.create_time()}


def _owner_alive(status: dict[str, Any]) -> bool:
    pid, started = status.get("pid"), status.get("pid_started")
    if pid is None:
        return False
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError, ValueError):
        return False


@dataclass
class RunDir:
    """Reads and writes one run directory. Cheap to create; holds no open files."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    # --- status ---------------------------------------------------------------------------
    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into status.json (atomically) and return the new status."""
        return write_owned_json(self.path / STATUS_FILE, fields, run_id=self.run_id)

    def read_status(self, reconcile: bool = True) -> dict[str, Any]:
        """status.json as a dict. With `reconcile`, a queued/running run whose owning process
        is gone is reported (and rewritten) as `interrupted`."""
        try:
            status = read_json_object(self.path / STATUS_FILE)
        except FileNotFoundError:
            raise UserError(f"{self.path} is not a run directory (no {STATUS_FILE}); "
                            f"list runs with `python -m ft_engine runs`") from None
        if reconcile:
            reconcile_dead_owner(self.path / STATUS_FILE, status,
                                 ended_at=status["ended_at"] if "ended_at" in status else status.get("updated_at"),
                                 error="the process running this job ended before it finished "
                                       "(killed or crashed); resume it from its last checkpoint")
        return status

    # --- metrics --------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        """One JSON object per line. A single write() of a short line; a crash mid-write can
        at worst leave a torn last line, which `read_metrics` skips."""
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics rows that are whole (see `metrics`)."""
        return self.metrics().rows

    def metrics(self) -> "JsonLines":
        """metrics.jsonl's rows, with the lines skipped as damaged counted (`JsonLines`)."""
        return read_json_lines(self.path / METRICS_FILE, _metrics_row_ok)

    def append_event(self, kind: str, message: str, step: int | None = None) -> None:
        """A human-readable line for the studio's event log (what `events` reads back)."""
        with open(self.path / EVENTS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": utc_now(), "step": step, "event": kind, "message": message}) + "\n")

    def events(self) -> "JsonLines":
        """events.jsonl's events (time, step, event, message), damaged lines counted."""
        return read_json_lines(self.path / EVENTS_FILE, _event_ok)

    # --- other files ----------------------------------------------------------------------
    def read_config(self):  # -> RunConfig (import here: config imports nothing from us)
        from .config import RunConfig
        return RunConfig.from_yaml(self.path / CONFIG_FILE)

    def write_json(self, name: str, value: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(value, indent=2))

    def read_json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    @property
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first. The Trainer writes trainer_state.json last, so a
        checkpoint the process was killed while saving (no such file) is not offered to resume."""
        ckpt = self.path / CHECKPOINTS_DIR
        found = [p for p in ckpt.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
                 and (p / "trainer_state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    @property
    def result_dir(self) -> Path | None:
        """adapter/ or model/, whichever the run produced."""
        for name in (ADAPTER_DIR, MODEL_DIR):
            # a link could make an export zip a folder outside the run: never followed
            if (self.path / name).is_dir() and not (self.path / name).is_symlink():
                return self.path / name
        return None

    def check_result_links(self) -> None:
        """Refuse (UserError) to read a result that is not all inside this run: adapter/ or
        model/ being a link itself, or holding a link (file or folder) that leads outside the
        run. Loaders (from_pretrained, copytree, zip) follow links, so without this a run folder
        made elsewhere could have the studio read, chat with or zip any file of the server.
        Links that stay inside the run are allowed. Call it before reading the result."""
        for name in (ADAPTER_DIR, MODEL_DIR):
            folder = self.path / name
            if folder.is_symlink():
                raise UserError(f"run {self.run_id} has no trained result the studio may read: its {name}/ folder "
                                f"is a link, and the studio reads nothing outside the runs folder; replace the "
                                f"link with the folder itself")
            if folder.is_dir():
                leaving = links_leaving(folder, self.path)
                if leaving:
                    more = f" (and {len(leaving) - 1} more)" if len(leaving) > 1 else ""
                    raise UserError(f"run {self.run_id}'s {leaving[0]}{more} is a link to a file outside the run, "
                                    f"and the studio reads nothing outside the runs folder: replace the link with "
                                    f"the file itself")




# A run's processes of a run of several (accelerate launch) but global rank 0 write nothing:
# the run directory has one writer, and what they would write is rank 0's too.
STOP_FILE = "stop_requested"


class FollowerRunDir(RunDir):
    """The run directory as a process other than rank 0 sees it: it reads, and its writes go
    nowhere (status, metrics and events are rank 0's alone)."""

    def write_status(self, **fields: Any) -> dict[str, Any]:
        return {}

    def append_metrics(self, row: dict[str, Any]) -> None:
        return None

    def append_event(self, kind: str, message: str, step: int | None = None) -> None:
        return None

    def write_json(self, name: str, value: Any) -> None:
        return None

def links_leaving(folder: Path, root: Path) -> list[str]:
    """The entries under `folder` (files and folders, as paths relative to `root`) that are
    symbolic links resolving outside `root`. Linked folders are listed, not entered."""
    real_root = Path(root).resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False
        for name in sorted(dirnames + filenames):
            entry = Path(dirpath) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(real_root):
                found.append(entry.relative_to(root).as_posix())
    return found


def open_run(path_or_id: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> RunDir:
    """A run by directory path, or by id inside `runs_dir`. Ids are checked so that a user
    value can never point outside the runs directory."""
    p = Path(path_or_id)
    if p.is_dir() and (p / STATUS_FILE).exists():
        return RunDir(p)
    if runs_dir is not None and _SAFE_ID.fullmatch(str(path_or_id)) and ".." not in str(path_or_id):
        candidate = Path(runs_dir) / str(path_or_id)
        if (candidate / STATUS_FILE).exists():
            return RunDir(candidate)
    raise UserError(f"no run found at {path_or_id}: give a run directory (it holds {STATUS_FILE}); "
                    f"`python -m ft_engine runs` lists them")


@dataclass(frozen=True)
class JsonLines:
    """The rows of a .jsonl file this program appends to, and what was skipped reading it.

    A line is skipped when it is not the JSON object this program writes: a torn write, null, a
    number or a list, bad UTF-8, or a row whose fields the views read have the wrong type (a
    hand edit, a disk error, another program). One such line must not hide the whole run, nor
    every run beside it; it is counted, and the views say so."""

    rows: list[dict[str, Any]]
    damaged: int = 0            # whole lines (ending in a newline) that were skipped
    cut_off_last: bool = False  # the last line has no newline and no JSON: a crash mid-write (normal)

    def note(self, name: str) -> str:
        """"2 damaged lines skipped in metrics.jsonl", or "" when nothing was skipped."""
        parts = []
        if self.damaged:
            parts.append(f"{self.damaged} damaged line{'s' if self.damaged != 1 else ''} skipped in {name}")
        if self.cut_off_last:
            parts.append(f"the cut-off last line of {name} skipped (normal after a crash)")
        return "; ".join(parts)


def read_json_lines(path: Path, row_ok) -> JsonLines:
    """The JSON objects of `path`, one a line, for which `row_ok(row)` holds; a missing file has
    none. Read as bytes, so one line of bad UTF-8 costs that line, not the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JsonLines([])
    rows, damaged, cut_off = [], 0, False
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
            if i == len(lines) - 1:  # no newline after it: the write that was cut off
                cut_off = True
                continue
        if isinstance(row, dict) and row_ok(row):
            rows.append(row)
        else:
            damaged += 1
    return JsonLines(rows, damaged, cut_off)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # NaN is a number: a diverged loss


# The fields of a metrics row the views compute with (tables, charts, ETA): a row holding text
# or null where the engine writes a number would break them. The engine writes every row with
# a whole step and elapsed_s; learning_rate and grad_norm may be null (a trainer that logs none).
_METRIC_NUMBERS = ("epoch", "loss", "eval_loss", "tokens_seen", "tokens_per_second", "mem_used_mib",
                   "mem_peak_mib", "mem_reserved_mib", "mem_peak_reserved_mib", "mem_forecast_mib")
_METRIC_NULLABLE = ("learning_rate", "grad_norm")


def _metrics_row_ok(row: dict[str, Any]) -> bool:
    step = row.get("step")
    return (isinstance(step, int) and not isinstance(step, bool) and step >= 0 and _number(row.get("elapsed_s"))
            and all(_number(row[k]) for k in _METRIC_NUMBERS if k in row)
            and all(row[k] is None or _number(row[k]) for k in _METRIC_NULLABLE if k in row))


def _event_ok(row: dict[str, Any]) -> bool:
    step = row.get("step")
    return (all(isinstance(row.get(k), str) for k in ("time", "event", "message"))
            and (step is None or (isinstance(step, int) and not isinstance(step, bool))))


def damage_notes(*notes: str) -> str:
    """The non-empty notes of `JsonLines.note`, as one sentence for a view."""
    return "; ".join(n for n in notes if n)


class DamagedFileError(UserError):
    """A status/comparison file that is not the JSON object this program writes. Our own
    writes are atomic, so this means a hand edit, a full disk elsewhere, or a damaged disk."""


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; FileNotFoundError if it is missing, DamagedFileError (which
    names the file and what to do) if it is not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"it is not valid JSON ({e})"
    else:
        if isinstance(value, dict):
            return value
        problem = f"it holds a JSON {type(value).__name__}, not an object"
    raise DamagedFileError(f"{path} is damaged: {problem}. Nothing else in {path.parent.name} was touched: "
                           f"restore the file from a backup, or delete {path.parent.name}")


def write_owned_json(path: Path, fields: dict[str, Any], **ids: Any) -> dict[str, Any]:
    """Merge `fields` (a Status as its value) and `ids` into the JSON object at `path`, stamp
    the time and this process as its owner, write it atomically and return it. Used for
    status.json and comparison.json: a reader tells a live owner from a dead one by the stamp."""
    current = read_json_object(path) if path.exists() else {}
    current.update({k: v.value if isinstance(v, Status) else v for k, v in fields.items()})
    current.update(ids, updated_at=utc_now(), **_process_identity())
    atomic_write_text(path, json.dumps(current, indent=2))
    return current


def reconcile_dead_owner(path: Path, info: dict[str, Any], **interrupted: Any) -> dict[str, Any]:
    """`info` (read from `path`) when queued or running but its owning process is gone: marked
    `interrupted` with the `interrupted` fields, and rewritten without claiming ownership, so
    the dead owner's pid stays on record."""
    if info.get("status") in (Status.QUEUED.value, Status.RUNNING.value) and not _owner_alive(info):
        info.update(status=Status.INTERRUPTED.value, **interrupted)
        atomic_write_text(path, json.dumps(info, indent=2))
    return info


def list_runs(runs_dir: str | os.PathLike) -> list[RunDir]:
    """Every run directory under runs_dir, oldest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    # a link to a folder elsewhere is not a run of this folder (run_by_id refuses it too)
    return [RunDir(p) for p in sorted(root.iterdir()) if not p.is_symlink() and (p / STATUS_FILE).is_file()]


DAMAGED = "damaged"  # RunSummary.status of a run whose status.json is damaged


@dataclass(frozen=True)
class RunSummary:
    """One run as every view shows it (CLI `runs`, the studio's runs table, Monitor and
    compare table), read from its files by `read_summary` alone, so the views cannot drift
    apart. Everything may be missing (None) for a run that is queued, failed early, or whose
    files are damaged."""

    run_id: str
    name: str
    """The run's name, else its id."""
    status: str | None
    """A `Status` value, or "damaged" when status.json is not the JSON object we write."""
    method: str | None
    model: str | None
    step: int
    total_steps: int | None
    error: str | None
    """Why it failed or was interrupted; for a damaged status.json, the file and the fix."""
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    train_loss: float | None
    """The last logged training loss (metrics.jsonl; the final one once the run has ended)."""
    eval_loss: float | None
    """The last held-out loss (metrics.jsonl)."""
    elapsed_s: float | None
    """Seconds of the training loop: status.json's, else the last metrics row's (a running or
    killed run has only the latter)."""
    tokens_per_second: float | None
    """The whole run's throughput, written when it ends."""
    last_step_tokens_per_second: float | None
    """The last logged step's throughput (what the Monitor shows while it runs)."""
    peak_mib: float | None
    """Peak memory: the highest of status.json's and every metrics row's. On cuda the PyTorch
    allocator's peak, on cpu the process's peak resident set (`mem_device`)."""
    mem_device: str | None
    forecast_mib: float | None
    """The memory forecast made when the run started (forecast.py)."""
    trainable_params: int | None
    total_params: int | None
    processes: int
    """Processes the run is spread over (launch.py); 1 for a plain run."""
    strategy: str | None
    """ddp or fsdp when processes > 1."""
    effective_batch: int | None
    """Rows per optimizer step over all processes."""
    metrics_rows: int
    """Whole rows of metrics.jsonl."""
    skipped_metrics_lines: int
    """Lines of metrics.jsonl skipped as damaged (the numbers above leave them out)."""
    metrics_note: str
    """The sentence saying so ("" if none)."""
    eval_headline: str | None
    """The saved evaluation's one line (eval.json), None if there is none."""

    @property
    def damaged(self) -> bool:
        return self.status == DAMAGED

    @property
    def wall_s(self) -> float | None:
        """Seconds from start to end: the training loop plus loading the model and saving it."""
        if not self.started_at or not self.ended_at:
            return None
        return (datetime.fromisoformat(self.ended_at) - datetime.fromisoformat(self.started_at)).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """The runs table's row as the list_runs API returns it (its field names are public)."""
        return {
            "run_id": self.run_id, "name": self.name, "method": self.method, "model": self.model,
            "status": self.status, "step": self.step, "total_steps": self.total_steps,
            "train_loss": self.train_loss, "eval_loss": self.eval_loss, "peak_mib": self.peak_mib,
            "elapsed_s": self.elapsed_s, "tokens_per_second": self.tokens_per_second,
            "created_at": self.created_at, "error": self.error,
            "skipped_lines": {METRICS_FILE: self.skipped_metrics_lines}, "notes": self.metrics_note,
            "eval": self.eval_headline,
        }


def read_summary(run: RunDir) -> RunSummary:
    """The summary of one run from its status.json, metrics.jsonl and eval.json. A run whose
    status.json is damaged still has one (status `damaged`, the fix in `error`), so one bad
    folder never hides the others; a view that cannot show it says `error`."""
    try:
        s = run.read_status()
    except DamagedFileError as e:
        s = {"status": DAMAGED, "error": str(e)}
    lines = run.metrics()
    metrics = lines.rows
    last_train = next((r for r in reversed(metrics) if "loss" in r), {})
    last_eval = next((r for r in reversed(metrics) if "eval_loss" in r), {})
    peak = max([r.get("mem_peak_mib", 0) for r in metrics] + [s.get("mem_peak_mib") or 0])
    return RunSummary(
        run_id=run.run_id, name=s.get("name") or run.run_id, status=s.get("status"), method=s.get("method"),
        model=s.get("model"), step=s.get("step") or 0, total_steps=s.get("total_steps"), error=s.get("error"),
        created_at=s.get("created_at"), started_at=s.get("started_at"), ended_at=s.get("ended_at"),
        train_loss=last_train.get("loss"), eval_loss=last_eval.get("eval_loss"),
        elapsed_s=s.get("elapsed_s") or (metrics[-1]["elapsed_s"] if metrics else None),
        tokens_per_second=s.get("tokens_per_second"),
        last_step_tokens_per_second=last_train.get("tokens_per_second"),
        peak_mib=peak or None, mem_device=s.get("mem_device"), forecast_mib=s.get("forecast_mib"),
        trainable_params=s.get("trainable_params"), total_params=s.get("total_params"),
        processes=s.get("processes") or 1, strategy=s.get("strategy"), effective_batch=s.get("effective_batch"),
        metrics_rows=len(metrics), skipped_metrics_lines=lines.damaged + lines.cut_off_last,
        metrics_note=lines.note(METRICS_FILE), eval_headline=_eval_headline(run),
    )


def summarize(run: RunDir) -> dict[str, Any]:
    """One row of the runs table, as the list_runs API returns it (`RunSummary.to_dict`)."""
    return read_summary(run).to_dict()


def _eval_headline(run: RunDir) -> str | None:
    """The saved evaluation's one line ("tuned 27/30 · base 2/30; …"), None if there is none
    (or it is damaged: the evaluation can be run again)."""
    try:
        data = json.loads((run.path / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    line = data.get("headline") if isinstance(data, dict) else None
    return line if isinstance(line, str) else None


def delete_run(runs_dir: str | os.PathLike, run_id: str) -> None:
    """Delete one run directory. The id must name a run directly inside runs_dir; anything
    else (paths, '..', links) is refused, so a user value can never delete outside it."""
    import shutil
    run = run_by_id(runs_dir, run_id)
    try:
        status = run.read_status().get("status")
    except DamagedFileError:
        status = None  # no live job writes a damaged file (its writes are atomic): deleting it is safe
    if status in (Status.RUNNING.value, Status.QUEUED.value):
        raise UserError(f"run {run_id} is {status}; stop it before deleting it")
    shutil.rmtree(run.path)


def run_by_id(runs_dir: str | os.PathLike, run_id: str) -> RunDir:
    """A run by id only (what the studio uses): never a path, never outside runs_dir."""
    root = Path(runs_dir).resolve()
    if not isinstance(run_id, str) or not _SAFE_ID.fullmatch(run_id) or ".." in run_id:
        raise UserError(f"{run_id!r} is not a run id; pick a run from the list")
    target = root / run_id
    if target.is_symlink() or target.resolve().parent != root or not (target / STATUS_FILE).is_file():
        raise UserError(f"no run {run_id!r} here; refresh the list of runs")
    return RunDir(target)
