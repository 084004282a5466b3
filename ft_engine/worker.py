"""The background worker: trains one run at a time, the others wait first in, first out.

The studio submits RunConfigs here and reads everything else from the run directories.
Submitting validates config and data at once (so the user hears about a bad row immediately)
and creates the run directory with status `queued`; the worker thread then runs the jobs in
order. A queued run that is stopped never starts and is marked `stopped`.

Each run's status.json gets `queued_at` when it joins the queue (under the queue's lock, so
`queued_at` order is queue order) next to the engine's `started_at` / `ended_at`: anyone can
check from the files alone that runs started in the order they were queued and never overlapped.

Each run trains in processes of its own (supervise.LaunchedRun; issue 12): the worker thread
starts them and waits. `in_process=True` trains in this process instead, for tests that
replace engine parts in it (and FT_TRAIN_IN_PROCESS=1 makes that the default, for debugging).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Callable

from . import stack
from .config import RunConfig
from .errors import UserError
from .rundir import RunDir, Status, utc_now

if TYPE_CHECKING:
    from .training import TrainingJob

log = logging.getLogger(__name__)


def trains_in_process() -> bool:
    return os.environ.get("FT_TRAIN_IN_PROCESS", "").strip() == "1"


class Worker:
    def __init__(self, in_process: bool | None = None) -> None:
        self.in_process = trains_in_process() if in_process is None else in_process
        self._queue: deque[TrainingJob] = deque()
        self._current: TrainingJob | None = None
        self._runner = None  # what stop() reaches: the job itself, or its LaunchedRun
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._resuming: set[str] = set()  # run ids being prepared for resume, not yet queued
        # called with the run id just before each run starts, in the worker's thread (the
        # studio frees a chat model that sits on the GPU the run is about to train on)
        self.before_run: list[Callable[[str], None]] = []

    # --- submitting ---------------------------------------------------------------------------
    def submit(self, config: RunConfig) -> RunDir:
        """Validate and queue a new run; raises UserError on bad settings or data."""
        stack.load()  # torch/transformers load on first use, not at app start; one thread at a time
        from .training import TrainingJob
        job = TrainingJob(config)
        job.prepare()
        return self._enqueue(job)

    def resume(self, run: RunDir) -> RunDir:
        """Queue an interrupted or stopped run to continue from its last checkpoint.
        Raises UserError when it is queued or running already, completed, or has no checkpoint."""
        if run.read_status(reconcile=False).get("status") == Status.COMPLETED.value:
            # said first: a run's processes write `completed` a moment before they exit and the
            # worker lets go of the run
            raise UserError(f"run {run.run_id} already completed; start a new run to train more")
        with self._cv:
            # two clicks on Resume must not queue the same run twice
            if self._owns(run.run_id) or run.run_id in self._resuming:
                raise UserError(f"run {run.run_id} is already queued or running; "
                                f"watch it in the Monitor tab or stop it first")
            self._resuming.add(run.run_id)
        try:
            stack.load()
            from .training import resume_job
            job = resume_job(run)  # reads the checkpoint list and data: not under the queue's lock
            return self._enqueue(job, ended_at=None, error=None)
        finally:
            with self._cv:
                self._resuming.discard(run.run_id)

    def _enqueue(self, job: TrainingJob, **status) -> RunDir:
        with self._cv:
            # a resumed run's processes start from this checkpoint (training.train_launched)
            resume_from = job.resume_from.name if job.resume_from is not None else None
            job.run_dir.write_status(status=Status.QUEUED, queued_at=utc_now(), resume_from=resume_from,
                                     **job.scale(), **status)
            self._queue.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="ft-worker", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return job.run_dir

    # --- controlling ----------------------------------------------------------------------------
    def stop(self, run_id: str) -> str:
        """Stop a running run after its current step, or take a queued one off the queue."""
        with self._cv:
            if self._current is not None and self._current.run_dir.run_id == run_id:
                ended = self._current.run_dir.read_status(reconcile=False).get("status")
                if Status(ended).finished:
                    # its processes wrote the end a moment before they exit and the worker lets go
                    raise UserError(f"run {run_id} has ended ({ended}), so there is nothing to stop")
                (self._runner or self._current).stop()
                return "stopping after the current step"
            for job in self._queue:
                if job.run_dir.run_id == run_id:
                    self._queue.remove(job)
                    job.run_dir.write_status(status=Status.STOPPED, ended_at=utc_now(),
                                             error=None, note="stopped before it started")
                    job.event("stopped", "removed from the queue before it started")
                    return "removed from the queue"
        raise UserError(f"run {run_id} is not running or queued here, so there is nothing to stop")

    def position(self, run_id: str) -> int | None:
        """How many runs are ahead of this one (the running one included): 0 while it runs
        or is about to start; None when this worker does not hold it."""
        with self._cv:
            if self._current is not None and self._current.run_dir.run_id == run_id:
                return 0
            ahead = 1 if self._current is not None else 0
            for i, job in enumerate(self._queue):
                if job.run_dir.run_id == run_id:
                    return ahead + i
        return None

    @property
    def current_run_id(self) -> str | None:
        with self._cv:
            return self._current.run_dir.run_id if self._current else None

    @property
    def queued_run_ids(self) -> list[str]:
        with self._cv:
            return [job.run_dir.run_id for job in self._queue]

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is running or queued (for tests and scripts)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._current is None and not self._queue, timeout)

    def _owns(self, run_id: str) -> bool:
        return (self._current is not None and self._current.run_dir.run_id == run_id) or any(
            job.run_dir.run_id == run_id for job in self._queue)

    # --- the thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._queue))
                self._current = job = self._queue.popleft()
                if self.in_process:
                    self._runner = job
                else:
                    from .supervise import LaunchedRun
                    self._runner = LaunchedRun(job)
            runner = self._runner
            try:
                for hook in self.before_run:
                    hook(job.run_dir.run_id)
                runner.run()  # records its own failures in status.json; never raises for a bad run
            except Exception:  # a bug in the job itself: keep the worker alive for the others
                log.exception("job %s crashed the worker loop", job.run_dir.run_id)
                job.run_dir.write_status(status=Status.FAILED, ended_at=utc_now(),
                                         error="internal error; see the server log")
            finally:
                with self._cv:
                    self._current = self._runner = None
                    self._cv.notify_all()
