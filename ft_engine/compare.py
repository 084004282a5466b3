"""Compare methods: full, LoRA and QLoRA on the same data with the same budget, one after another.

    comparison = ComparisonJob(CompareConfig(base=RunConfig(data=..., max_steps=30)))
    comparison.prepare()   # validates everything, creates the three runs (queued) and the folder
    comparison.run()       # trains them in turn, then answers one prompt with each, then tabulates
    comparison.stop()      # cooperative: the current run ends after its step, the others never start

The three runs are ordinary runs (listed in the Runs tab, chattable, exportable). The comparison
itself lives beside them, in a hidden folder that `list_runs` does not see (no status.json):

    <runs_dir>/.comparisons/<comparison_id>/
        comparison.json   id, times, status, the shared settings, method → run id, the sample
                          prompt and answers, and (once finished) one row of results per method
        table.md          the results as a markdown table, with the sample answers

Only the learning rate differs between the methods (adapters start from zero and need larger
steps than a full fine-tune, which moves weights that already work), unless the user fixes one.
Everything a row shows is read back from the runs' own files (status.json, the saved result), so
a comparison measures exactly what a single run reports.

In the studio the three runs go through the Worker, so they queue first in, first out with
everyone else's runs; a watcher thread collects the results when the last one has finished.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import stack
from .config import RunConfig
from .errors import ConfigError, UserError
from .rundir import (DamagedFileError, RunDir, Status, _SAFE_ID, atomic_write_text, new_run_id,
                     read_json_object, reconcile_dead_owner, run_by_id, utc_now, write_owned_json)

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

COMPARISONS_DIR = ".comparisons"  # hidden, and without status.json: never listed as a run
COMPARISON_FILE = "comparison.json"
TABLE_FILE = "table.md"
METHODS = ("full", "lora", "qlora")

# The studio's "Quick demo" rates (ui/form.py, _LR): a comparison is a short fixed budget, and
# these are the rates that learn something in ~30 steps. tests/test_compare.py keeps them equal.
DEFAULT_LEARNING_RATES = {"full": 5e-5, "lora": 1e-3, "qlora": 1e-3}
DEFAULT_VAL_FRACTION = 0.1  # eval loss and perplexity need held-out rows
POLL_SECONDS = 1.0


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


# --- the comparison folder ---------------------------------------------------------------------

@dataclass
class ComparisonDir:
    """Reads and writes one comparison folder. Cheap to create; holds no open files."""

    path: Path

    @property
    def comparison_id(self) -> str:
        return self.path.name

    @property
    def runs_dir(self) -> Path:
        return self.path.parent.parent

    def write(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into comparison.json (atomically), claiming it for this process."""
        return write_owned_json(self.path / COMPARISON_FILE, fields, id=self.comparison_id)

    def read(self, reconcile: bool = True) -> dict[str, Any]:
        """comparison.json. With `reconcile`, one whose process died mid-way reads `interrupted`."""
        try:
            info = read_json_object(self.path / COMPARISON_FILE)
        except FileNotFoundError:
            raise UserError(f"{self.path} is not a comparison (no {COMPARISON_FILE}); "
                            f"pick one from the list of comparisons") from None
        if reconcile:
            reconcile_dead_owner(self.path / COMPARISON_FILE, info, current=None,
                                 error="the process running this comparison ended before it finished")
        return info

    def runs(self) -> dict[str, str]:
        """method → run id, in the order they run."""
        return dict(self.read(reconcile=False)["runs"])

    def rows(self) -> list[dict[str, Any]]:
        """The results: stored once the comparison finished (so they outlive a deleted run),
        read live from the runs while it is going."""
        info = self.read()
        if info.get("rows"):
            return info["rows"]
        return collect_rows(self.runs_dir, info["runs"], info.get("samples") or {})


def comparisons_root(runs_dir: str | os.PathLike) -> Path:
    return Path(runs_dir) / COMPARISONS_DIR


def list_comparisons(runs_dir: str | os.PathLike) -> list[ComparisonDir]:
    """Every comparison under runs_dir, oldest first."""
    root = comparisons_root(runs_dir)
    if not root.is_dir():
        return []
    return [ComparisonDir(p) for p in sorted(root.iterdir()) if (p / COMPARISON_FILE).is_file()]


def comparison_by_id(runs_dir: str | os.PathLike, comparison_id: str) -> ComparisonDir:
    """A comparison by id only: never a path, never outside runs_dir/.comparisons."""
    if not isinstance(comparison_id, str) or not _SAFE_ID.fullmatch(comparison_id) or ".." in comparison_id:
        raise UserError(f"{comparison_id!r} is not a comparison id; pick one from the list of comparisons")
    target = comparisons_root(runs_dir).resolve() / comparison_id
    if target.is_symlink() or not (target / COMPARISON_FILE).is_file():
        raise UserError(f"no comparison {comparison_id!r} here; refresh the list of comparisons")
    return ComparisonDir(target)


def delete_comparison(runs_dir: str | os.PathLike, comparison_id: str) -> None:
    """Delete one comparison's folder (its table, results and sample answers). Its runs are
    ordinary runs and stay: delete them one by one if they are not wanted either. Refused
    while the comparison is queued or running: stop it first."""
    import shutil
    cdir = comparison_by_id(runs_dir, comparison_id)
    try:
        status = cdir.read().get("status")
    except DamagedFileError:
        status = None  # no live comparison writes a damaged file (its writes are atomic)
    if status in (Status.QUEUED.value, Status.RUNNING.value):
        raise UserError(f"comparison {comparison_id} is {status}; stop it before deleting it")
    shutil.rmtree(cdir.path)


# --- one row per method -----------------------------------------------------------------------

# (key, column header) of the results table, in display order
COLUMNS = [
    ("method", "method"),
    ("status", "status"),
    ("peak_mem_mib", "peak memory (MiB)"),
    ("tokens_per_second", "tokens/s"),
    ("train_s", "train time (s)"),
    ("wall_s", "wall time (s)"),
    ("trainable_params", "trainable params"),
    ("trainable_pct", "trainable %"),
    ("final_loss", "final train loss"),
    ("eval_loss", "eval loss"),
    ("perplexity", "perplexity"),
    ("accuracy", "held-out correct"),
    ("base_accuracy", "base model correct"),
    ("saved_mib", "saved (MiB)"),
]
# Held-out questions each method's model (and its base) answers after a comparison
# (evaluate.py): fewer than a single run's evaluation, since three are asked in a row.
COMPARE_QUESTIONS = 20


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _folder_mib(folder: Path | None) -> float | None:
    if folder is None:
        return None
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 2)


def run_row(run: RunDir, method: str) -> dict[str, Any]:
    """What the comparison shows of one run, read from its status.json and saved result."""
    s = run.read_status()
    eval_loss = s.get("final_eval_loss")
    total, trainable = s.get("total_params"), s.get("trainable_params")
    return {
        "method": method,
        "run_id": run.run_id,
        "status": s.get("status"),
        "error": s.get("error"),
        "steps": s.get("step", 0),
        "total_steps": s.get("total_steps"),
        "learning_rate": run.read_config().learning_rate,
        "peak_mem_mib": s.get("mem_peak_mib"),
        "mem_device": s.get("mem_device"),  # cuda: PyTorch allocator peak; cpu: process RSS peak
        "tokens_per_second": s.get("tokens_per_second"),
        "train_s": s.get("elapsed_s"),  # the training loop only
        "wall_s": _seconds_between(s.get("started_at"), s.get("ended_at")),  # + loading and saving
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100 * trainable / total, 2) if trainable and total else None,
        "final_loss": s.get("final_loss"),
        "eval_loss": eval_loss,
        # perplexity = exp(mean token cross-entropy on the held-out rows)
        "perplexity": round(math.exp(eval_loss), 3) if eval_loss is not None else None,
        "saved_mib": _folder_mib(run.result_dir),  # weights + tokenizer, what a download holds
    }


def collect_rows(runs_dir: str | os.PathLike, runs: dict[str, str],
                 samples: dict[str, str | None], scores: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    rows = []
    for method, run_id in runs.items():
        try:
            row = run_row(run_by_id(runs_dir, run_id), method)
        except UserError:  # the run was deleted: the comparison still lists the method
            row = {"method": method, "run_id": run_id, "status": "deleted",
                   "error": f"run {run_id} was deleted"}
        row["sample"] = samples.get(method)
        totals = (scores or {}).get(method)
        for key, who in (("accuracy", "questions_tuned"), ("base_accuracy", "questions_base")):
            row[key] = f"{totals[who]['correct']}/{totals[who]['n']}" if totals and totals[who]["n"] else None
        rows.append(row)
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "trainable_params":
        return f"{value:,}"
    if key in ("final_loss", "eval_loss"):
        return f"{value:.4f}"
    if key in ("peak_mem_mib", "tokens_per_second", "train_s", "wall_s"):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], prompt: str | None = None) -> str:
    """The results as a markdown table, what was measured, and the sample answers."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    devices = {r.get("mem_device") for r in rows if r.get("mem_device")}
    notes = {"cpu": "peak memory = peak resident set of the training process (CPU)",
             "cuda": "peak memory = peak of the PyTorch CUDA allocator"}
    lines.append("")
    lines.append("; ".join(notes[d] for d in sorted(devices)) + "; " if devices else "")
    lines[-1] += ("train time = the training loop; wall time = also loading the model and saving the "
                  "result; perplexity = exp(eval loss) on the held-out rows; held-out correct = held-out questions "
                  "whose answer carries the expected answer's key words and numbers (evaluate.py), by the "
                  "tuned model and by its base.")
    errors = [f"- **{r['method']}**: {r['error']}" for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:", *errors]
    if any(r.get("sample") is not None for r in rows):
        lines += ["", f"Sample answers (greedy) to: *{prompt}*" if prompt else "Sample answers (greedy):", ""]
        # JSON quoting: one line, control characters escaped, whatever the model wrote
        lines += [f"- **{r['method']}**: {json.dumps(r['sample'], ensure_ascii=False)}" if r.get("sample") is not None else
                  f"- **{r['method']}**: (no answer: no trained result)" for r in rows]
    return "\n".join(lines) + "\n"


# --- preparing ---------------------------------------------------------------------------------

def default_prompt(base: RunConfig) -> str:
    """The first held-out user message: the rows a run evaluates on, shuffled the same way
    TrainingJob shuffles them (same seed, same number of rows → same permutation)."""
    stack.load()  # the studio calls this from request threads (see stack.py)
    from .models import load_tokenizer
    from .render import encode_all

    data = _loaded(base)
    encoded = encode_all(data, load_tokenizer(base.model), base.max_seq_len, base.train_on_prompt)
    order = list(encoded.rows)
    random.Random(base.seed).shuffle(order)
    held_out = order[0].row
    example = next(ex for ex in data.examples if ex.row == held_out)
    if example.messages:
        return next(m["content"] for m in example.messages if m["role"] == "user")
    return (example.text or "").strip()[:200]  # plain text: its beginning, to be continued


def _loaded(base: RunConfig):
    """The examples a run of `base` trains on: the file's, cut to max_rows as TrainingJob does."""
    from .data import load_examples
    data = load_examples(base.data, base.data_format)
    if base.max_rows:
        data.examples = data.examples[: base.max_rows]
    return data


def _check_data(base: RunConfig) -> None:
    """Enough rows to hold one out and still train on one; said in compare's own terms (the
    TrainingJob's message would suggest lowering val_fraction, which a comparison cannot)."""
    stack.load()
    from .training import _n_val
    n = len(_loaded(base).examples)
    n_val = _n_val(n, base.val_fraction)
    if n - n_val < 1:
        raise UserError(f"{base.data}: {n} row{'s' if n != 1 else ''} is too few to compare methods: "
                        f"{n_val} {'is' if n_val == 1 else 'are'} held out for the eval loss and perplexity, "
                        f"leaving nothing to train on; add rows (at least 2)")


def _plan(config: CompareConfig) -> str:
    """Check everything that can be checked before anything is written; the sample prompt."""
    config.validate()
    _check_data(config.base)
    return config.prompt.strip() or default_prompt(config.base)


def _new_folder(config: CompareConfig) -> ComparisonDir:
    root = comparisons_root(config.base.runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    cdir = ComparisonDir(root / new_run_id(root, "compare"))
    cdir.path.mkdir()
    return cdir


def _run_name(cdir: ComparisonDir, method: str) -> str:
    """`compare-<4 hex> <method>`: the runs list shows which comparison a run belongs to."""
    return f"compare-{cdir.comparison_id.rsplit('-', 1)[-1]} {method}"


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
        self.prompt = _plan(self.config)
        self.cdir = _new_folder(self.config)
        try:
            for method in self.config.methods:
                job = TrainingJob(self.config.run_config(method, _run_name(self.cdir, method)))
                job.prepare()
                self.jobs[method] = job
        except BaseException:
            import shutil
            for job in self.jobs.values():
                shutil.rmtree(job.run_dir.path, ignore_errors=True)  # created a moment ago, never run
            shutil.rmtree(self.cdir.path, ignore_errors=True)
            raise
        self.cdir.write(status=Status.QUEUED, created_at=utc_now(), current=None, settings=self.config.to_dict(),
                        learning_rates={m: j.config.learning_rate for m, j in self.jobs.items()},
                        runs={m: j.run_dir.run_id for m, j in self.jobs.items()}, prompt=self.prompt,
                        samples={}, rows=None, error=None, same_process=None)
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
    prompt = _plan(config)
    cdir = _new_folder(config)
    runs: dict[str, RunDir] = {}
    try:
        for method in config.methods:
            runs[method] = worker.submit(config.run_config(method, _run_name(cdir, method)))
    except BaseException:
        import shutil
        for run in runs.values():  # the same data passed for the first method: rare, but undo it
            worker.stop(run.run_id)
        shutil.rmtree(cdir.path, ignore_errors=True)
        raise
    cdir.write(status=Status.QUEUED, created_at=utc_now(), current=None, settings=config.to_dict(),
               learning_rates={m: config.run_config(m).learning_rate for m in config.methods},
               runs={m: r.run_id for m, r in runs.items()}, prompt=prompt, samples={}, rows=None, error=None,
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
    atomic_write_text(cdir.path / TABLE_FILE, format_table(rows, prompt))
    return status


def progress(cdir: ComparisonDir) -> dict[str, Any]:
    """Where a comparison is: status, which method runs (i of n), and each run's step."""
    info = cdir.read()
    methods = list(info["runs"])
    steps = {}
    for method, run_id in info["runs"].items():
        try:
            s = run_by_id(cdir.runs_dir, run_id).read_status()
            steps[method] = {"status": s.get("status"), "step": s.get("step", 0), "total_steps": s.get("total_steps")}
        except UserError:
            steps[method] = {"status": "deleted", "step": None, "total_steps": None}
    current = info.get("current")
    return {"comparison_id": cdir.comparison_id, "status": info["status"], "current": current,
            "index": methods.index(current) + 1 if current in methods else None, "of": len(methods),
            "runs": info["runs"], "steps": steps, "error": info.get("error"),
            "created_at": info.get("created_at")}
