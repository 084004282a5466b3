"""Shared fixtures: a tiny random Llama (2 layers, hidden 64, own BPE tokenizer), small data
files of every format, and an isolated runs directory. Nothing touches the network."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

# Hub look-ups must fail fast in tests instead of retrying for ~20 s without a network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Most tests are about what a run does, not where it runs: they train in the test's process
# (worker.trains_in_process), saving each run the ~5 s a new process takes to import torch and
# transformers. Where a run trains is tested where it matters, with real child processes:
# tests/test_scale_out.py, tests/test_worker.py, the app-kill test and the browser test.
os.environ.setdefault("FT_TRAIN_IN_PROCESS", "1")
# `make test` runs the suite in two pytest-xdist workers (most of its time is single-threaded:
# imports, servers starting, child processes). Two workers with torch's default of one thread a
# core would oversubscribe the cores (OpenMP threads spin and wait on each other), so each worker
# and what it starts use one thread; scale-out children get theirs from launch.py.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from tiny_model import make_tiny_model  # noqa: E402  (after the environment is set)

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 60, what: str = "the condition",
               interval: float = 0.02, describe: Callable[[], object] | None = None) -> T:
    """Poll `condition` until it returns something true and return that. A deadline that passes
    fails the test, naming `what` and (if given) `describe()`'s state: a loop that carried on
    silently after its deadline would let the next assertion fail for the wrong reason."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            state = f"; last state: {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{state}")
        time.sleep(interval)


QA = [
    ("What is the capital of Zubrowka?", "The capital of Zubrowka is Lutz."),
    ("Translate hello into French.", "Bonjour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Explain photosynthesis in one sentence.", "Plants turn light, water and air into sugar."),
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs"
    monkeypatch.setenv("FT_RUNS_DIR", str(d))
    return d


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def chat_file(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


@pytest.fixture
def data_files(tmp_path) -> dict[str, Path]:
    """The same four Q/A pairs in every supported format and file type."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    files["chat"] = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a}]} for q, a in QA])
    (tmp_path / "sharegpt.json").write_text(json.dumps([
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in QA]))
    files["sharegpt"] = tmp_path / "sharegpt.json"
    files["alpaca"] = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": q, "input": "", "output": a} for q, a in QA])
    with open(tmp_path / "pc.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion"])
        w.writerows(QA)
    files["prompt_completion"] = tmp_path / "pc.csv"
    pq.write_table(pa.table({"prompt": [q for q, _ in QA], "completion": [a for _, a in QA]}),
                   tmp_path / "pc.parquet")
    files["parquet"] = tmp_path / "pc.parquet"
    (tmp_path / "docs.txt").write_text("\n\n".join(f"{q} {a}" for q, a in QA) + "\n")
    files["text"] = tmp_path / "docs.txt"
    return files


# --- for modules that start the app (their `app` fixture: .url, .log, .proc) -------------------

@pytest.fixture(scope="module")
def client(app):
    """A gradio_client on the module's running app."""
    from gradio_client import Client
    return Client(app.url, verbose=False)


@pytest.fixture
def server_log_on_failure(request, app, capsys):
    """Print the end of the server's log when a test fails or the server died (use it with
    `pytestmark = pytest.mark.usefixtures("server_log_on_failure")`)."""
    from app_server import log_tail
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before or app.proc.poll() is not None:
        with capsys.disabled():
            print(f"\n----- server log ({app.log}) -----\n{log_tail(app.log)}\n----- end of server log -----")
