"""Compare methods: full, LoRA and QLoRA on the same data with the same budget, one after another.

    comparison = ComparisonJob(CompareConfig(base=RunConfig(data=..., max_steps=30)))
    comparison.prepare()   # validates everything, creates the three runs (queued) and the folder
    comparison.run()       # trains them in turn, then answers one prompt with each, then tabulates
    comparison.stop()      # cooperative: the current run ends after its step, the others never start

The three runs are ordinary runs (listed in the Runs tab, chattable, exportable). The comparison
itself lives beside them, in a hidden folder that `list_runs` does not see (comparison_dir.py:
comparison.json and table.md); its rows and table are compare_table.py's, read back from the
runs' own files, so a comparison measures exactly what a single run reports.

Only the learning rate differs between the methods (adapters start from zero and need larger
steps than a full fine-tune, which moves weights that already work), unless the user fixes one.

The command line runs a comparison here (ComparisonJob); in the studio the three runs go through
the Worker (`submit`), so they queue first in, first out with everyone else's runs, and a watcher
thread collects the results when the last one has finished. Both create the runs with
`create_runs`. This module also re-exports the names of comparison_dir.py and compare_table.py
that the studio and the tests use (`compare.list_comparisons`, `compare.COLUMNS`...).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import stack
from .compare_table import COLUMNS, collect_rows, format_table, run_row  # noqa: F401 (re-exported)
from .comparison_dir import (  # noqa: F401
    COMPARISON_FILE,
    COMPARISONS_DIR,
    TABLE_FILE,
    ComparisonDir,
    comparison_by_id,
    comparisons_root,
    delete_comparison,
    list_comparisons,
    progress,
)
from .config import SHORT_RUN_LEARNING_RATES, RunConfig
from .data import first_rows, load_examples, select_rows
from .errors import ConfigError, UserError
from .rundir import RunDir, Status, run_by_id, utc_now

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

METHODS = ("full", "lora", "qlora")

# A comparison is a short fixed budget: the rates that learn something in ~30 steps, the same
# object as the studio's "Quick demo" preset's (config.SHORT_RUN_LEARNING_RATES).
DEFAULT_LEARNING_RATES = SHORT_RUN_LEARNING_RATES
DEFAULT_VAL_FRACTION = 0.1  # eval loss and perplexity need held-out rows
POLL_SECONDS = 1.0
# Held-out questions each method's model (and its base) answers after a comparison
# (evaluate.py): fewer than a single run's evaluation, since three are asked in a row.
COMPARE_QUESTIONS = 20


@dataclass
class CompareConfig:
    """What to compare. Every RunConfig setting of `base` is shared by all methods."""

    base: RunConfig
    """Data, model, step budget, batch, sequence length, seed...; its method and learning rate
    are replaced per method."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Which methods, in the order they run (at least two of full, lora, qlora)."""
    learning_rate: float | None = None
    """One learning rate for every method; None: each method's own (DEFAULT_LEARNING_RATES)."""
    prompt: str = ""
    """Every result answers this prompt; empty: the first held-out question of the data."""
    max_new_tokens: int = 40
    """Length of the sample answers (greedy), kept short: they show style, not essays."""

    def validate(self) -> "CompareConfig":
        """Raise one ConfigError with every problem, the base's included."""
        problems: list[str] = []
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            problems.append(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                            f"choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            problems.append(f"methods are listed twice in {','.join(self.methods)}: name each once")
        if len(set(self.methods)) < 2:
            problems.append(f"a comparison needs at least two methods, got {','.join(self.methods) or 'none'} "
                            f"(e.g. full,lora,qlora)")
        if self.base.max_steps < 1:
            problems.append("max_steps must be >= 1: every method gets the same number of optimizer steps "
                            "(epochs would differ in time, not in work), e.g. 30")
        if not 0 < self.base.val_fraction < 0.5:
            problems.append(f"val_fraction must be in (0, 0.5) so eval loss and perplexity exist, "
                            f"got {self.base.val_fraction} (e.g. 0.1)")
        if not 1 <= self.max_new_tokens <= 512:
            problems.append(f"max_new_tokens must be between 1 and 512, got {self.max_new_tokens}")
        # the shared settings (learning_rate included, when fixed) are checked as each method's run
        for method in [m for m in dict.fromkeys(self.methods) if m in METHODS] or ["lora"]:
            try:
                self.run_config(method).validate()
            except ConfigError as e:
                problems += [p for p in e.problems if p not in problems]
        if problems:
            raise ConfigError(problems)
        return self

    def run_config(self, method: str, run_name: str = "") -> RunConfig:
        """The RunConfig of one method: the base, with this method and its learning rate."""
        return self.base.replace(
            method=method, run_name=run_name,
            learning_rate=DEFAULT_LEARNING_RATES[method] if self.learning_rate is None else self.learning_rate,
            # Intermediate checkpoints would add their save time to the measured wall time (a full
            # fine-tune's checkpoint with optimizer state is ~3x the model), and unequally so.
            checkpoint_steps=0)

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "methods": list(self.methods), "learning_rate": self.learning_rate,
                "prompt": self.prompt, "max_new_tokens": self.max_new_tokens}


# --- preparing: checks, the sample prompt, the comparison's runs ---------------------------------

def default_prompt(base: RunConfig) -> str:
    """The first held-out user message: data.select_rows draws the held-out rows from the
    rows that survive encoding, as training does, so this is a row every method holds out."""
    stack.load()  # the studio calls this from request threads (see stack.py)
    from .models import load_tokenizer
    from .render import encode_all

    data = _loaded(base)
    encoded = encode_all(data, load_tokenizer(base.model), base.max_seq_len, base.train_on_prompt)
    _, held_out = select_rows(encoded.rows, base)
    example = next(ex for ex in data.examples if ex.row == held_out[0].row)
    if example.messages:
        return next(m["content"] for m in example.messages if m["role"] == "user")
    return (example.text or "").strip()[:200]  # plain text: its beginning, to be continued


def _loaded(base: RunConfig):
    """The examples a run of `base` trains on: the file's first max_rows (data.first_rows)."""
    return first_rows(load_examples(base.data, base.data_format), base.max_rows)


def _check_data(base: RunConfig) -> None:
    """Enough rows to hold one out and still train on one; said in compare's own terms (the
    TrainingJob's message would suggest lowering val_fraction, which a comparison cannot)."""
    examples = _loaded(base).examples
    train, held_out = select_rows(examples, base)
    n, n_val = len(examples), len(held_out)
    if not train:
        raise UserError(f"{base.data}: {n} row{'s' if n != 1 else ''} is too few to compare methods: "
                        f"{n_val} {'is' if n_val == 1 else 'are'} held out for the eval loss and perplexity, "
                        f"leaving nothing to train on; add rows (at least 2)")


def _plan(config: CompareConfig) -> str:
    """Check everything that can be checked before anything is written; the sample prompt."""
    config.validate()
    _check_data(config.base)
    return config.prompt.strip() or default_prompt(config.base)


def _run_name(cdir: ComparisonDir, method: str) -> str:
    """`compare-<4 hex> <method>`: the runs list shows which comparison a run belongs to."""
    return f"compare-{cdir.comparison_id.rsplit('-', 1)[-1]} {method}"


def create_runs(config: CompareConfig, start: Callable[[RunConfig], RunDir], undo: Callable[[RunDir], None],
                **fields: Any) -> tuple[ComparisonDir, dict[str, RunDir], str]:
    """(the comparison folder, method → run, the sample prompt): check settings and data, make
    the folder, create each method's run (queued) with `start` — the command line prepares a
    TrainingJob, the studio submits to its worker — and write comparison.json, `fields` added.
    Bad input raises UserError and leaves nothing behind: the runs made so far are handed to
    `undo` and the folder is removed."""
    prompt = _plan(config)
    cdir = ComparisonDir.create(config.base.runs_dir)
    runs: dict[str, RunDir] = {}
    try:
        for method in config.methods:
            runs[method] = start(config.run_config(method, _run_name(cdir, method)))
    except BaseException:
        for run in runs.values():
            undo(run)
        shutil.rmtree(cdir.path, ignore_errors=True)
        raise
    cdir.write(status=Status.QUEUED, created_at=utc_now(), current=None, settings=config.to_dict(),
               learning_rates={m: config.run_config(m).learning_rate for m in config.methods},
               runs={m: r.run_id for m, r in runs.items()}, prompt=prompt, samples={}, rows=None, error=None,
               **fields)
    return cdir, runs, prompt


# --- running in this process (the command line) -------------------------------------------------

class ComparisonJob:
    """One comparison, run in the calling thread. Not reusable."""

    def __init__(self, config: CompareConfig):
        self.config = config.validate()
        self.prompt = ""
        self.cdir: ComparisonDir | None = None
        self.jobs: dict[str, Any] = {}  # method → TrainingJob
        self._stop = threading.Event()
        self._current = None  # what stop() stops: the TrainingJob here, or its LaunchedRun

    def prepare(self) -> ComparisonDir:
        """Check settings and data, then create the comparison folder and its runs (queued).
        Bad input raises UserError and leaves nothing on disk."""
        stack.load()
        from .training import TrainingJob

        def start(run_config: RunConfig) -> RunDir:
            job = TrainingJob(run_config)
            job.prepare()
            self.jobs[run_config.method] = job
            return job.run_dir

        def undo(run: RunDir) -> None:
            shutil.rmtree(run.path, ignore_errors=True)  # created a moment ago, never run

        self.cdir, _, self.prompt = create_runs(self.config, start, undo, same_process=None)
        return self.cdir

    def run(self, same_process: bool = False) -> Status:
        """Train each method in turn, answer the prompt with each, write the table.

        By default each run trains in its own fresh process: on CPU the peak memory is the
        process's resident set, and a run sharing a process would inherit whatever the previous
        one left allocated (freed memory is not always handed back to the OS). `same_process`
        starts faster (no second import of torch) at that price; tests use it."""
        if self.cdir is None:
            self.prepare()
        cdir = self.cdir
        cdir.write(status=Status.RUNNING, started_at=utc_now(), same_process=same_process)
        n = len(self.jobs)
        for i, (method, job) in enumerate(self.jobs.items(), start=1):
            if self._stop.is_set():
                job.run_dir.write_status(status=Status.STOPPED, ended_at=utc_now(), error=None,
                                         note="stopped before it started")
                job.event("stopped", "the comparison was stopped before this run started")
                continue
            cdir.write(current=method)
            log.info("compare %d/%d: %s (run %s)", i, n, method, job.run_dir.run_id)
            if same_process:
                self._current = job
                job.run()
            else:
                self._train_in_child(job)
            self._current = None
        return _finish(cdir, self.prompt, self.config.max_new_tokens, stopped=self._stop.is_set())

    def stop(self) -> None:
        """End the running method after its current step; the methods after it never start."""
        self._stop.set()
        current = self._current
        if current is not None:
            current.stop()

    def _train_in_child(self, job) -> None:
        """Train `job`'s run in processes of its own (supervise.LaunchedRun, as the studio's
        worker does); its status.json says how it ended."""
        from .supervise import LaunchedRun
        launched = LaunchedRun(job, echo=True)  # the command line: show each run's progress
        self._current = launched
        if self._stop.is_set():  # stopped while we were getting here
            launched.stop()
        launched.run()


# --- running through the studio's worker ---------------------------------------------------------

def submit(config: CompareConfig, worker: Worker) -> ComparisonDir:
    """Queue the methods' runs on `worker` (first in, first out with everyone's runs) and watch
    them from a thread that writes the results when the last one has finished."""
    # a later method's data check failing after the first was queued is rare: stop the queued ones
    cdir, runs, prompt = create_runs(config, worker.submit, lambda run: worker.stop(run.run_id),
                                     same_process=True, stop_requested=False)
    threading.Thread(target=_watch, args=(cdir, runs, prompt, config.max_new_tokens),
                     name=f"watch-{cdir.comparison_id}", daemon=True).start()
    return cdir


def stop_submitted(cdir: ComparisonDir, worker: Worker) -> str:
    """Stop the running method after its step and take the others off the queue."""
    info = cdir.read()
    if Status(info["status"]).finished:
        raise UserError(f"comparison {cdir.comparison_id} is already {info['status']}; nothing to stop")
    cdir.write(stop_requested=True)
    said = []
    for method, run_id in info["runs"].items():
        if worker.position(run_id) is not None:  # finished runs are not the worker's any more
            said.append(f"{method}: {worker.stop(run_id)}")
    return "; ".join(said) or "nothing was running or queued"


def _watch(cdir: ComparisonDir, runs: dict[str, RunDir], prompt: str, max_new_tokens: int) -> None:
    try:
        current = None
        while True:
            statuses = {m: r.read_status()["status"] for m, r in runs.items()}
            running = next((m for m, s in statuses.items() if s == Status.RUNNING.value), None)
            if running != current:
                current = running
                cdir.write(status=Status.RUNNING, current=running)
            if all(Status(s).finished for s in statuses.values()):
                break
            time.sleep(POLL_SECONDS)
        _finish(cdir, prompt, max_new_tokens, stopped=bool(cdir.read().get("stop_requested")))
    except Exception as e:  # a bug here must not leave the comparison `running` forever
        log.exception("comparison %s: collecting the results failed", cdir.comparison_id)
        cdir.write(status=Status.FAILED, current=None, error=f"collecting the results failed: {e}")


# --- finishing: sample answers, rows, table ------------------------------------------------------

def answers(run: RunDir, prompt: str, max_new_tokens: int, questions: int = 0) -> tuple[str | None, dict | None]:
    """(the run's greedy answer to `prompt`, the totals of its evaluation on up to `questions`
    held-out rows, tuned vs base: evaluate.py, saved as the run's eval.json), from one loaded
    model; (None, None) when it has no trained result, no totals when questions is 0."""
    if run.result_dir is None:
        return None, None
    stack.load()
    from .evaluate import evaluate
    from .inference import ChatModel
    chat = ChatModel(run)
    sample = chat.generate(prompt, max_new_tokens=max_new_tokens, temperature=0.0)
    if not questions:
        return sample, None
    try:
        return sample, evaluate(run, forgetting=False, chat=chat, max_questions=questions)["totals"]
    except UserError as e:  # e.g. text data: rows without answers to score; the row says "–"
        log.info("comparison run %s: no held-out scores (%s)", run.run_id, e)
        return sample, None


def _finish(cdir: ComparisonDir, prompt: str, max_new_tokens: int, stopped: bool) -> Status:
    info = cdir.read(reconcile=False)
    runs_dir = cdir.runs_dir
    samples: dict[str, str | None] = {}
    scores: dict[str, dict | None] = {}
    if not stopped:  # a stop means "end now", not "load three more models"
        for method, run_id in info["runs"].items():
            cdir.write(current=f"answers of the {method} model (sample, held-out questions)")
            try:
                samples[method], scores[method] = answers(run_by_id(runs_dir, run_id), prompt, max_new_tokens,
                                                          COMPARE_QUESTIONS)
            except UserError as e:  # deleted meanwhile, or its result cannot be loaded: say so in the row
                samples[method] = f"(no answer: {e})"
    rows = collect_rows(runs_dir, info["runs"], samples, scores)
    if all(r["status"] == Status.COMPLETED.value for r in rows):
        status = Status.COMPLETED
    elif stopped or any(r["status"] == Status.STOPPED.value for r in rows):
        status = Status.STOPPED
    else:
        status = Status.FAILED
    failed = [f"{r['method']}: {r['error']}" for r in rows if r.get("error")]
    cdir.write(status=status, current=None, ended_at=utc_now(), samples=samples, rows=rows,
               error="; ".join(failed) or None)
    cdir.write_table(format_table(rows, prompt))
    return status
