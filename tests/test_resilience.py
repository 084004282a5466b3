"""Crashes, stops, failures and many users (issue 5).

- kill -9 in the middle of a run, through the CLI and through the studio: the run reads
  `interrupted`, every file parses, and Resume trains on from the last checkpoint to the
  planned number of steps with the metrics continuing where they were;
- Stop ends a run within one optimizer step, from the Train tab's button and through the API;
- an out-of-memory error (simulated) or any other exception in the middle of training fails
  the run with a message that says what to change, lets go of the model, and the worker goes
  on with the next run in the queue;
- three users at once through gradio_client: runs train one at a time, in the order they were
  queued (the 10-user version with figures is bench/load_test.py).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from app_server import REPO, log_tail, running_app
from conftest import wait_until
from gradio_client import Client, handle_file

from ft_engine.config import RunConfig
from ft_engine.rundir import RunDir
from ft_engine.worker import Worker

SAMPLE = REPO / "assets" / "tiny_facts.jsonl"
FINISHED = ("completed", "failed", "stopped", "interrupted")
TOTAL = 60          # steps of a run that gets killed: long enough to kill it between checkpoints
CHECKPOINT = 10     # checkpoint_steps of that run


# --- helpers ---------------------------------------------------------------------------------

def raw_status(run: RunDir) -> dict:
    """status.json exactly as on disk (no reconciling): it must always parse whole."""
    return json.loads((run.path / "status.json").read_text(encoding="utf-8"))


def strict_jsonl(path: Path) -> list[dict]:
    """Every line must be a whole JSON object: a hard kill may not leave a torn line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_past_a_checkpoint(run_path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> tuple[int, int]:
    """Wait until a complete checkpoint exists and training is at least 2 steps past it (so
    the kill lands between checkpoints); returns (checkpoint step, step seen)."""
    run = RunDir(Path(run_path))

    def past() -> tuple[int, int] | None:
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before it could be killed mid-run")
        if not (run.path / "status.json").exists() or not run.checkpoints:
            return None
        ckpt = int(run.checkpoints[-1].name.split("-")[-1])
        step = raw_status(run).get("step") or 0
        assert step < TOTAL, "the run finished before it could be killed; give it more steps"
        return (ckpt, step) if step >= ckpt + 2 else None
    return wait_until(past, timeout, "a checkpoint and two steps past it")


def assert_readable_and_interrupted(run: RunDir) -> list[dict]:
    """After the kill: status.json, metrics.jsonl and events.jsonl parse completely, and the
    run reads as `interrupted` with a message that says to resume it. Returns the metrics."""
    raw_status(run)
    metrics = strict_jsonl(run.path / "metrics.jsonl")
    strict_jsonl(run.path / "events.jsonl")
    s = run.read_status()
    assert s["status"] == "interrupted", s
    assert "resume" in s["error"], s["error"]
    assert metrics and all("loss" in r for r in metrics)
    return metrics


def assert_continued(run: RunDir, before: list[dict], checkpoint: int) -> None:
    """The resumed run reached the planned steps, and its metrics continue the killed run's:
    one row per step 1..TOTAL, the rows up to the checkpoint kept as they were."""
    s = run.read_status()
    assert s["status"] == "completed" and s["step"] == s["total_steps"] == TOTAL, s
    after = strict_jsonl(run.path / "metrics.jsonl")
    assert [r["step"] for r in after] == list(range(1, TOTAL + 1))  # monotonic, no duplicates, none missing
    assert after[:checkpoint] == [r for r in before if r["step"] <= checkpoint]
    elapsed = [r["elapsed_s"] for r in after]
    assert elapsed == sorted(elapsed), "elapsed time restarted from zero after the resume"
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()
    events = [e["event"] for e in strict_jsonl(run.path / "events.jsonl")]
    assert "resumed" in events and events[-1] == "completed", events


def cli(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "ft_engine", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def run_config(tiny_model, data, runs_dir, **kw) -> RunConfig:
    base = dict(model=tiny_model, data=str(data), method="lora", runs_dir=str(runs_dir), batch_size=2,
                max_steps=3, checkpoint_steps=0, learning_rate=1e-2)
    return RunConfig(**{**base, **kw})


def studio_handler(demo, name: str):
    """The function behind a UI event (e.g. the Stop button's `stop_current`)."""
    found = [f.fn for f in demo.fns.values() if f.name == name]
    assert len(found) == 1, f"expected one UI handler named {name}, found {len(found)}"
    return found[0]


# --- kill -9 and resume: the command line -----------------------------------------------------

def test_cli_run_killed_mid_run_resumes_to_planned_steps(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model}\ndata: {SAMPLE}\nmethod: lora\nmax_steps: {TOTAL}\n"
                      f"checkpoint_steps: {CHECKPOINT}\nbatch_size: 2\nlearning_rate: 0.01\n"
                      f"runs_dir: {runs}\nrun_name: killed\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(tmp_path / "train.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ft_engine", "train", "--config", str(config)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        run_path = wait_until(lambda: next(iter(runs.glob("*killed*")), None), 120, "the run directory")
        wait_past_a_checkpoint(run_path, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "train.log").read_text()[-3000:]

    run = RunDir(run_path)
    before = assert_readable_and_interrupted(run)
    checkpoint = int(run.checkpoints[-1].name.split("-")[-1])  # a later one may have landed meanwhile
    assert before[-1]["step"] > checkpoint >= CHECKPOINT  # killed between checkpoints

    r = cli("resume", run.path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"status: completed, steps: {TOTAL}/{TOTAL}" in r.stdout
    assert_continued(run, before, checkpoint)


def test_resume_skips_a_checkpoint_that_was_being_written(tiny_model, chat_file, runs_dir):
    """A kill while the Trainer saves leaves a checkpoint folder without trainer_state.json
    (written last); resume must start from the last complete one instead."""
    from ft_engine.training import resume, train
    run, status = train(run_config(tiny_model, chat_file, runs_dir, max_steps=4, checkpoint_steps=2))
    assert status.value == "completed"
    ckpt = run.path / "checkpoints"
    torn = ckpt / "checkpoint-3"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"half a fi")
    # make it resumable: pretend it was stopped at step 3, after checkpoint-2
    (ckpt / "checkpoint-4").rename(ckpt / "gone")
    run.write_status(status="stopped", step=3)
    assert [c.name for c in run.checkpoints] == ["checkpoint-2"]
    _, status = resume(run.path)
    assert status.value == "completed" and run.read_status()["step"] == 4
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4]


# --- kill -9 and resume: the studio -----------------------------------------------------------

def test_app_killed_mid_run_stops_the_run_and_resumes(tiny_model, tmp_path):
    """The run trains in processes of its own (issue 12): when the app is killed they notice
    it is gone at the end of the step, stop there and save what they trained, and a new app
    resumes the run from its checkpoint to the planned steps."""
    runs = tmp_path / "runs"
    child = {"FT_TRAIN_IN_PROCESS": "0"}  # as for a user: the run in processes of its own
    with running_app(runs, tmp_path / "first.log", extra_env=child) as (url, proc, log):
        client = Client(url, verbose=False)
        data_path = client.predict(handle_file(str(SAMPLE)), None, tiny_model, 256, False, "auto",
                                   api_name="/validate_data")[3]
        res = client.predict(data_path=data_path, model=tiny_model, method="lora", preset="Quick demo",
                             settings_json=json.dumps({"max_steps": TOTAL, "checkpoint_steps": CHECKPOINT,
                                                       "batch_size": 2, "logging_steps": 1}),
                             api_name="/start_training")
        assert res["run_id"], res
        run = RunDir(runs / res["run_id"])
        wait_past_a_checkpoint(run.path, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    # the run's own process is still there: it ends the step it is in, saves, and stops
    wait_until(lambda: raw_status(run)["status"] not in ("queued", "running"), 60, "the run to stop")
    raw_status(run)
    before = strict_jsonl(run.path / "metrics.jsonl")
    strict_jsonl(run.path / "events.jsonl")
    s = run.read_status()
    assert s["status"] == "stopped", s
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()  # what it trained is kept
    assert any("is gone" in e["message"] for e in strict_jsonl(run.path / "events.jsonl")), "no reason given"
    checkpoint = int(run.checkpoints[-1].name.split("-")[-1])
    assert before[-1]["step"] > checkpoint

    with running_app(runs, tmp_path / "second.log", extra_env=child) as (url, proc, log):
        client = Client(url, verbose=False)
        s = client.predict(run_id=run.run_id, api_name="/run_status")
        assert s["status"] == "stopped", s
        listed = {r["run_id"]: r for r in client.predict(api_name="/list_runs")}
        assert listed[run.run_id]["status"] == "stopped"

        answer = client.predict(run_id=run.run_id, api_name="/resume_run")
        assert answer["run_id"] == run.run_id and answer["position"] == 0, answer
        again = client.predict(run_id=run.run_id, api_name="/resume_run")  # a second click
        assert again["run_id"] == "" and "already queued or running" in again["message"], again

        deadline = time.monotonic() + 180
        while (s := client.predict(run_id=run.run_id, api_name="/run_status"))["status"] not in FINISHED:
            assert time.monotonic() < deadline, f"resumed run did not finish; last status {s}\n{log_tail(log)}"
            time.sleep(0.25)
        assert s["status"] == "completed", f"{s}\n{log_tail(log)}"
        assert s["step"] == s["total_steps"] == TOTAL
        done = client.predict(run_id=run.run_id, api_name="/resume_run")
        assert done["run_id"] == "" and "already completed" in done["message"], done
    assert_continued(run, before, checkpoint)


# --- stop within one optimizer step -------------------------------------------------------------

def test_stop_button_ends_the_run_within_one_step(tiny_model, chat_file, runs_dir):
    from ui.context import Studio
    from ui.studio import build_studio
    studio = Studio(runs_dir)
    stop_current = studio_handler(build_studio(studio), "stop_current")
    run = studio.worker.submit(run_config(tiny_model, chat_file, runs_dir, max_steps=100_000, grad_accum=2))
    wait_until(lambda: (raw_status(run).get("step") or 0) >= 3, 120, "step 3")
    answer = stop_current(run.run_id)
    seen = raw_status(run)["step"]
    assert "stopping after the current step" in answer, answer
    assert studio.worker.wait_idle(60)
    s = run.read_status()
    assert s["status"] == "stopped" and seen <= s["step"] <= seen + 1, (seen, s)
    assert run.read_metrics()[-1]["step"] == s["step"]
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()
    assert "nothing to stop" in stop_current(run.run_id)


def test_resume_button_continues_a_stopped_run(tiny_model, chat_file, runs_dir):
    from ui.context import Studio
    from ui.studio import build_studio
    studio = Studio(runs_dir)
    demo = build_studio(studio)
    stop_current, resume_clicked = studio_handler(demo, "stop_current"), studio_handler(demo, "resume_clicked")
    without = studio.worker.submit(run_config(tiny_model, chat_file, runs_dir, max_steps=100_000))
    run = studio.worker.submit(run_config(tiny_model, chat_file, runs_dir, max_steps=12, checkpoint_steps=2))
    wait_until(lambda: (raw_status(without).get("step") or 0) >= 1, 120, "step 1")
    stop_current(without.run_id)
    wait_until(lambda: (raw_status(run).get("step") or 0) >= 3, 120, "step 3")
    stop_current(run.run_id)
    assert studio.worker.wait_idle(60)
    assert run.read_status()["status"] == "stopped" and run.checkpoints

    message, _ = resume_clicked(without.run_id)
    assert message.startswith("❌") and "no checkpoint to resume from" in message, message
    message, table = resume_clicked(run.run_id)
    assert run.run_id in message and not message.startswith("❌"), message
    assert [row for row in table if row[-1] == run.run_id][0][3] in ("queued", "running")
    assert resume_clicked("")[0] == "Pick a run first."
    assert studio.worker.wait_idle(60)
    s = run.read_status()
    assert s["status"] == "completed" and s["step"] == 12, s
    assert [r["step"] for r in run.read_metrics()] == list(range(1, 13))
    message, _ = resume_clicked(run.run_id)
    assert "already completed" in message, message


@pytest.fixture(scope="module")
def app(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("resilience-app")
    with running_app(d / "runs", d / "server.log",
                     while_booting=lambda: request.getfixturevalue("tiny_model")) as (url, proc, log):
        yield SimpleNamespace(url=url, proc=proc, log=log, runs_dir=d / "runs")


def test_stop_through_the_api_ends_the_run_within_one_step(app, tiny_model):
    client = Client(app.url, verbose=False)
    data_path = client.predict(handle_file(str(SAMPLE)), None, tiny_model, 256, False, "auto",
                               api_name="/validate_data")[3]
    res = client.predict(data_path=data_path, model=tiny_model, method="lora", preset="Quick demo",
                         settings_json=json.dumps({"max_steps": 100_000, "checkpoint_steps": 0, "batch_size": 2}),
                         api_name="/start_training")
    run = RunDir(app.runs_dir / res["run_id"])
    wait_until(lambda: (raw_status(run).get("step") or 0) >= 3, 120, "step 3")
    assert client.predict(run_id=run.run_id, api_name="/stop_training") == "stopping after the current step"
    seen = client.predict(run_id=run.run_id, api_name="/run_status")["step"]
    final = wait_until(lambda: (s := client.predict(run_id=run.run_id, api_name="/run_status"))["status"]
                       in FINISHED and s, 60, "the stop", interval=0.1)
    assert final["status"] == "stopped" and seen <= final["step"] <= seen + 1, (seen, final, log_tail(app.log))
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()


# --- out of memory, or any other failure, in the middle of training ---------------------------

def _fail_mid_training(monkeypatch, error, at_step: int = 3) -> list[weakref.ref]:
    """Runs named 'doomed' raise `error()` in the forward pass of step `at_step`; the others
    train normally. Returns weak references to every model built, to check it was freed.
    (A new exception each time: a kept exception object would keep its traceback's frames,
    and with them the model, alive.)"""
    import ft_engine.training as training
    real, models = training.build_model, []

    def build(config):
        model, info = real(config)
        models.append(weakref.ref(model))
        if config.run_name == "doomed":
            calls = {"n": 0}

            def boom(module, args, kwargs):
                calls["n"] += 1
                if calls["n"] >= at_step:
                    raise error()
            # on the decoder: the engine's loss (lean_trainer.py) runs it and the output head
            # itself, not the model's own forward
            from ft_engine.lean_trainer import causal_lm
            causal_lm(model).get_decoder().register_forward_pre_hook(boom, with_kwargs=True)
        return model, info

    monkeypatch.setattr(training, "build_model", build)
    return models


@pytest.mark.parametrize("error,expected", [
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 139.8 GiB total)"),
     ["out of memory: CUDA out of memory", "Lower batch_size", "grad_accum", "max_seq_len",
      "activation_checkpointing", "qlora"]),
    (lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
     ["RuntimeError: CUDA error: an illegal memory access was encountered"]),
], ids=["out-of-memory", "other-error"])
def test_failure_mid_run_frees_the_model_and_the_queue_goes_on(tiny_model, chat_file, runs_dir, monkeypatch,
                                                               error, expected):
    from ui.context import Studio
    from ui.monitor_tab import run_report, status_html
    models = _fail_mid_training(monkeypatch, error)
    # in this process: the engine part replaced above, and the model it frees, are here
    studio = Studio(runs_dir, worker=Worker(in_process=True))
    doomed = studio.worker.submit(run_config(tiny_model, chat_file, runs_dir, max_steps=20, run_name="doomed"))
    after = studio.worker.submit(run_config(tiny_model, chat_file, runs_dir, max_steps=3, run_name="after"))
    assert studio.worker.position(after.run_id) == 1
    assert studio.worker.wait_idle(120)

    s = doomed.read_status()
    assert s["status"] == "failed" and s["step"] == 2, s  # failed in step 3, mid-run
    for part in expected:
        assert part in s["error"], (part, s["error"])
    assert ("traceback" in s) == (not isinstance(error(), torch.OutOfMemoryError))
    assert strict_jsonl(doomed.path / "events.jsonl")[-1]["event"] == "error"
    # the app keeps serving: the next run in the queue trained, and the monitor shows both
    assert after.read_status()["status"] == "completed"
    report = run_report(studio, doomed.run_id)
    assert report["status"] == "failed" and expected[0] in status_html(report)
    # the model (and on a GPU its memory) was let go of: nothing holds the failed run's model
    gc.collect()
    assert len(models) == 2 and all(ref() is None for ref in models), "a trained model is still referenced"


# --- many users --------------------------------------------------------------------------------

def _load_test_module():
    spec = importlib.util.spec_from_file_location("load_test", REPO / "bench" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_three_users_train_one_at_a_time_in_queue_order(app, tiny_model):
    """bench/load_test.py with 3 clients (the 10-client run with figures is in its docstring)."""
    load_test = _load_test_module()
    figures = load_test.run_clients(app.url, app.runs_dir, tiny_model, clients=3, steps=4, timeout=150)
    # the one-second latency check is the bench's (its figures depend on the machine's load)
    problems = load_test.check(figures, latency=False)
    assert not problems, "\n".join(problems) + "\n" + load_test.format_figures(figures) + log_tail(app.log)
    assert figures.completed == 3 and figures.max_told_position >= 1
