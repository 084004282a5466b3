"""The background worker: one run at a time, first in first out, stop works queued or running."""

import os

import pytest
from conftest import wait_until

from ft_engine.config import RunConfig
from ft_engine.errors import DataError, UserError
from ft_engine.worker import Worker


def cfg(tiny_model, data, runs_dir, **kw):
    base = dict(model=tiny_model, data=str(data), method="lora", runs_dir=str(runs_dir), max_steps=3,
                batch_size=2, checkpoint_steps=0, learning_rate=1e-2)
    base.update(kw)
    return RunConfig(**base)


def test_runs_one_at_a_time_in_order(tiny_model, chat_file, runs_dir):
    worker = Worker(in_process=True)  # the queue's order, wherever the runs train (the tests below: in their own)
    runs = [worker.submit(cfg(tiny_model, chat_file, runs_dir, max_steps=6 if i == 0 else 2)) for i in range(3)]
    positions = [worker.position(r.run_id) for r in runs]
    assert positions[1:] == [positions[0] + 1, positions[0] + 2] and positions[0] in (0, 1)
    assert worker.wait_idle(timeout=120)
    statuses = [r.read_status() for r in runs]
    assert [s["status"] for s in statuses] == ["completed"] * 3
    events = []  # (time, run index, kind) from each run's own event log
    for i, r in enumerate(runs):
        for line in (r.path / "events.jsonl").read_text().splitlines():
            import json
            e = json.loads(line)
            events.append((e["time"], i, e["event"]))
    # each run starts only after the previous one completed
    for i in (1, 2):
        started = min(t for t, j, k in events if j == i and k == "started")
        finished_prev = max(t for t, j, k in events if j == i - 1 and k == "completed")
        assert started >= finished_prev
    assert worker.position(runs[0].run_id) is None


def test_stop_running_and_queued(tiny_model, chat_file, runs_dir):
    worker = Worker(in_process=False)
    first = worker.submit(cfg(tiny_model, chat_file, runs_dir, max_steps=100_000))
    second = worker.submit(cfg(tiny_model, chat_file, runs_dir))
    wait_until(lambda: first.read_status()["step"] >= 2, what="step 2 of the first run",
               describe=first.read_status)
    assert worker.stop(second.run_id) == "removed from the queue"
    assert worker.stop(first.run_id) == "stopping after the current step"
    assert worker.wait_idle(timeout=60)
    s1 = first.read_status()
    assert s1["status"] == "stopped"
    assert s1["pid"] != os.getpid()  # the run's own process wrote its status, not this one
    assert (s1["processes"], s1["effective_batch"], s1["strategy"]) == (1, 2, None)
    assert "train-run" in (first.path / "train.log").read_text()
    s2 = second.read_status()
    assert s2["status"] == "stopped" and s2["step"] == 0 and not (second.path / "adapter").exists()
    with pytest.raises(UserError, match="nothing to stop"):
        worker.stop(first.run_id)


def test_bad_submission_raises_and_queues_nothing(tiny_model, tmp_path, runs_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n')
    worker = Worker(in_process=False)
    with pytest.raises(DataError, match="completion"):
        worker.submit(cfg(tiny_model, bad, runs_dir))
    assert worker.queued_run_ids == [] and worker.current_run_id is None


def test_resume_a_stopped_run(tiny_model, chat_file, runs_dir):
    # in this process: resuming in processes of their own is the app-kill test's and test_scale_out's
    worker = Worker(in_process=True)
    run = worker.submit(cfg(tiny_model, chat_file, runs_dir, max_steps=8, checkpoint_steps=2))
    wait_until(lambda: run.read_status()["step"] >= 3, what="step 3", interval=0.01, describe=run.read_status)
    worker.stop(run.run_id)
    worker.wait_idle(60)
    assert run.read_status()["status"] == "stopped"
    worker.resume(run)
    assert worker.wait_idle(60)
    s = run.read_status()
    assert s["status"] == "completed" and s["step"] == 8
