"""A prepared run trained in processes of its own (launch.py), watched from a thread of the
process that queued it: the studio's worker, or the command line.

The run directory stays the only channel. The processes write status, metrics and events
there (rank 0 only); a stop is a file there (rundir.STOP_FILE) that rank 0 sees at the end of
the step, and all processes agree on it; their output goes to train.log there. What this
side adds is what the processes cannot say themselves: that they ended without finishing
(killed by the out-of-memory killer, a crash in native code), written as the run's failure.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import ft_engine

from .launch import Launch, command, environment
from .rundir import STOP_FILE, RunDir, Status, utc_now

log = logging.getLogger(__name__)

TRAIN_LOG = "train.log"
# The last lines of train.log quoted in the failure of a run whose processes ended unfinished.
LOG_LINES_QUOTED = 3


class LaunchedRun:
    """Runs a prepared TrainingJob's run in child processes; `run()` waits for them."""

    def __init__(self, job, launch: Launch | None = None, echo: bool = False):
        self.job = job
        self.echo = echo  # also print the processes' output here (the command line), not only to train.log
        self.run_dir: RunDir = job.run_dir
        self.launch = launch or Launch(processes=job.processes)
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        """End the run after its current step (what it trained is saved): the stop file."""
        with self._lock:
            self._stopped = True
            _write_stop(self.run_dir.path)

    def kill(self) -> None:
        """End every process of the run now, without saving (the app is going away)."""
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)

    def run(self) -> Status:
        path = self.run_dir.path
        cmd = command(path, self.launch, supervisor_pid=os.getpid())
        env = environment(self.launch)
        # the processes import ft_engine from where this one did, installed or not
        root = str(Path(ft_engine.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        with self._lock:
            if not self._stopped:
                (path / STOP_FILE).unlink(missing_ok=True)  # a stopped run resumed: that stop is over
            out = open(path / TRAIN_LOG, "ab")
            out.write(f"--- {utc_now()} {' '.join(cmd)}\n".encode())
            out.flush()
            # its own session: a Ctrl-C in the studio's terminal reaches the studio, which
            # stops the run through the stop file, not the launcher, which would kill it
            self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE if self.echo else out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        try:
            if self.echo:
                _tee(self.process.stdout, out, sys.stderr)
            code = self.process.wait()
        finally:
            out.close()
        return self._reconcile(code)

    def _reconcile(self, code: int) -> Status:
        status = self.run_dir.read_status(reconcile=False)
        if Status(status["status"]).finished:
            return Status(status["status"])
        if code < 0:
            why = f"was killed (signal {-code}" + (": usually the system ran out of memory; lower batch_size or "
                                                   "max_seq_len, or use qlora)" if -code == signal.SIGKILL else ")")
        else:
            why = f"ended with exit code {code}"
        tail = _log_tail(self.run_dir.path / TRAIN_LOG)
        message = f"the training process {why} before the run finished" + (f"; train.log ends: {tail}" if tail else
                                                                            "")
        log.error("run %s: %s", self.run_dir.run_id, message)
        self.job.event("error", message, status.get("step"))
        self.run_dir.write_status(status=Status.FAILED, ended_at=utc_now(), error=message)
        return Status.FAILED


def _tee(source, log, terminal) -> None:
    """Copy the processes' output line by line to train.log and to the terminal, until they end."""
    for line in iter(source.readline, b""):
        log.write(line)
        log.flush()
        terminal.write(line.decode("utf-8", "replace"))
        terminal.flush()
    source.close()


def _write_stop(path: Path) -> None:
    (path / STOP_FILE).write_text(utc_now() + "\n", encoding="utf-8")


def _log_tail(path: Path) -> str:
    """The last few non-empty lines of train.log, joined (the error a crash printed)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    from .errors import hide_tokens
    return hide_tokens(" | ".join(lines[-LOG_LINES_QUOTED:]))[:600]
