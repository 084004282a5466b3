"""Runs in processes of their own, and runs of several processes (issue 12), on this CPU: torch's
gloo backend stands in for NCCL, the tiny model for a real one. Every run here really starts
`python -m ft_engine train-run` (under accelerate launch for 2+), as the studio does."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ft_engine.config import RunConfig
from ft_engine.disk import planned_steps
from ft_engine.errors import ConfigError, UserError
from ft_engine.launch import LAUNCH_FILE, Launch, accelerate_config, command, processes_for
from ft_engine.rundir import STOP_FILE, RunDir
from ft_engine.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


def cfg(tiny_model, data, runs_dir, **kw) -> RunConfig:
    # no dropout: a process's dropout mask is not the same draw as one process's over the whole batch
    base = dict(model=tiny_model, data=str(data), method="lora", runs_dir=str(runs_dir), max_steps=4,
                batch_size=2, checkpoint_steps=0, learning_rate=1e-2, lora_dropout=0.0, seed=7)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def many_rows(tmp_path) -> Path:
    """32 rows of different lengths: every step sees rows no other step sees."""
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}. " * (1 + i % 4)}]}
            for i in range(32)]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def losses(run: RunDir) -> list[float]:
    return [r["loss"] for r in run.read_metrics() if "loss" in r]


def wait_for_step(run: RunDir, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if run.read_status(reconcile=False).get("step", 0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach step {step}: {run.read_status(reconcile=False)}")


def rank_processes(run: RunDir) -> list[psutil.Process]:
    """The processes training `run` (python -m ft_engine train-run <run>)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "train-run" in cmd and str(run.path) in cmd and "accelerate.commands.launch" not in cmd:
            found.append(p)
    return found


# --- deciding how many processes, without starting any ------------------------------------------

def test_devices_and_strategy_are_checked_with_their_fix(tiny_model, chat_file, runs_dir):
    for bad in ("0", "two", "-1", "65", "1.5"):
        with pytest.raises(ConfigError, match="devices must be auto or a whole number"):
            cfg(tiny_model, chat_file, runs_dir, devices=bad).validate()
    with pytest.raises(ConfigError, match="strategy must be one of ddp, fsdp"):
        cfg(tiny_model, chat_file, runs_dir, strategy="zero3").validate()
    with pytest.raises(ConfigError, match="fsdp_cpu_offload needs strategy fsdp"):
        cfg(tiny_model, chat_file, runs_dir, fsdp_cpu_offload=True).validate()
    with pytest.raises(ConfigError, match="adamw_lean steps each weight inside backward.*devices 1"):
        cfg(tiny_model, chat_file, runs_dir, method="full", optimizer="adamw_lean", devices="2").validate()
    assert RunConfig.from_dict({"devices": 2}).devices == "2"  # YAML's number is the same setting


def test_processes_follow_the_gpus_there_are():
    auto, two = RunConfig(), RunConfig(devices="2")
    assert processes_for(auto, gpus=0) == 1  # a CPU: one process unless asked
    assert processes_for(auto, gpus=1) == 1
    assert processes_for(auto, gpus=4) == 4  # auto: every visible GPU
    assert processes_for(two, gpus=4) == 2
    assert processes_for(two, gpus=0) == 2  # CPU processes on gloo: allowed (how this file tests)
    with pytest.raises(UserError, match="more GPUs than this machine shows \\(2\\).*at most 2"):
        processes_for(RunConfig(devices="3"), gpus=2)
    with pytest.raises(UserError, match="adamw_lean.*4 processes"):
        processes_for(RunConfig(method="full", optimizer="adamw_lean"), gpus=4)


def test_steps_per_epoch_count_every_process():
    c = RunConfig(batch_size=2, grad_accum=1, epochs=1, max_steps=0)
    assert planned_steps(c, 32) == 16
    assert planned_steps(c, 32, processes=2) == 8
    assert planned_steps(c, 33, processes=2) == 9  # 17 batches: the second process gets 8, then one more


def test_the_launch_is_a_complete_accelerate_config(tmp_path):
    cmd = command(tmp_path, Launch(processes=2), supervisor_pid=123)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(tmp_path / LAUNCH_FILE)
    assert cmd[-5:] == ["ft_engine", "train-run", str(tmp_path), "--supervisor", "123"]
    written = yaml.safe_load((tmp_path / LAUNCH_FILE).read_text())
    assert written == {**accelerate_config(Launch(processes=2), cpu=True),
                       "main_process_port": written["main_process_port"]}
    assert written["num_processes"] == 2 and written["num_machines"] == 1 and written["main_process_port"] > 0
    # one process: no launcher at all
    assert command(tmp_path, Launch(), None) == [sys.executable, "-m", "ft_engine", "train-run", str(tmp_path)]
    two_nodes = accelerate_config(Launch(processes=4, nodes=2, node_rank=1, main_address="10.0.0.5",
                                         main_port=29501), cpu=False)
    assert (two_nodes["num_processes"], two_nodes["num_machines"], two_nodes["machine_rank"],
            two_nodes["main_process_ip"], two_nodes["main_process_port"]) == (8, 2, 1, "10.0.0.5", 29501)


def test_bad_node_settings_are_refused_with_their_fix():
    with pytest.raises(UserError, match="--node-rank must be from 0 to 1"):
        Launch(nodes=2, node_rank=2, main_address="h", main_port=29500).check()
    with pytest.raises(UserError, match="--main-address is needed"):
        Launch(nodes=2, node_rank=0, main_address="", main_port=29500).check()
    with pytest.raises(UserError, match="--main-port must be a port"):
        Launch(nodes=2, node_rank=0, main_address="h", main_port=0).check()


# --- runs in processes of their own ---------------------------------------------------------------

def test_two_process_ddp_gives_the_loss_curve_of_one_process_with_twice_the_batch(tiny_model, many_rows, runs_dir):
    here, worker = Worker(in_process=True), Worker(in_process=False)  # one process: this one will do
    one = here.submit(cfg(tiny_model, many_rows, runs_dir, batch_size=4, devices="1", val_fraction=0.1))
    assert here.wait_idle(timeout=120)
    two = worker.submit(cfg(tiny_model, many_rows, runs_dir, batch_size=2, devices="2", val_fraction=0.1))
    assert worker.wait_idle(timeout=240)
    s1, s2 = one.read_status(), two.read_status()
    assert s1["status"] == s2["status"] == "completed", (s1.get("error"), s2.get("error"))
    assert (s2["processes"], s2["strategy"], s2["effective_batch"]) == (2, "ddp", 4)
    assert s1["effective_batch"] == 4 and s2["sharded"] is False
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4 and a[0] != a[-1]
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) <= 1e-3, (a, b)
    assert abs(s1["final_eval_loss"] - s2["final_eval_loss"]) / s1["final_eval_loss"] <= 1e-3
    assert len(s2["mem_peak_per_process_mib"]) == 2
    # every row and every event was written once, by rank 0
    assert [r["step"] for r in two.read_metrics() if "loss" in r] == [1, 2, 3, 4]
    assert sum(e["event"] == "started" for e in two.events().rows) == 1
    # the throughput counts both processes' tokens: the same tokens as one process trained
    assert s2["tokens_per_second"] > 0
    assert [r["tokens_seen"] for r in one.read_metrics() if "loss" in r] == \
        [r["tokens_seen"] for r in two.read_metrics() if "loss" in r]


def test_two_process_fsdp_saves_a_model_that_loads_and_chats(tiny_model, many_rows, runs_dir):
    from ft_engine.inference import ChatModel
    worker = Worker(in_process=False)
    run = worker.submit(cfg(tiny_model, many_rows, runs_dir, method="full", devices="2", strategy="fsdp",
                            learning_rate=1e-3, max_steps=3))
    assert worker.wait_idle(timeout=180)
    s = run.read_status()
    assert s["status"] == "completed", s.get("error")
    assert s["strategy"] == "fsdp" and s["sharded"] is True  # the weights were FSDP shards
    losses_ = losses(run)
    assert len(losses_) == 3 and losses_[-1] < losses_[0]
    # the whole model was gathered and saved once: it loads on its own and answers
    answer = ChatModel(run).generate("What is 2 plus 2?", max_new_tokens=5)
    assert isinstance(answer, str)


def test_killing_a_training_process_fails_the_run_and_the_studio_carries_on(tiny_model, many_rows, runs_dir):
    from ui.context import Studio
    from ui.monitor_tab import run_report, status_html
    studio = Studio(runs_dir, worker=Worker(in_process=False))
    worker = studio.worker
    doomed = worker.submit(cfg(tiny_model, many_rows, runs_dir, devices="2", max_steps=100_000))
    after = worker.submit(cfg(tiny_model, many_rows, runs_dir, max_steps=2))
    wait_for_step(doomed, 1)
    victims = rank_processes(doomed)
    assert len(victims) == 2
    victims[-1].send_signal(signal.SIGKILL)  # what the out-of-memory killer does
    assert worker.wait_idle(timeout=180)
    s = doomed.read_status()
    # rank 0 says why it could not go on, or (killed first) the worker says the processes ended
    assert s["status"] == "failed" and "train.log" in s["error"], s["error"]
    assert "another process of this run ended" in s["error"] or "training process" in s["error"], s["error"]
    assert rank_processes(doomed) == []  # the launcher ended the other process too
    assert after.read_status()["status"] == "completed"  # and the next run in the queue still ran
    report = run_report(studio, doomed.run_id)  # the studio answers, and says what happened
    assert report["status"] == "failed" and "train.log" in status_html(report)
    assert report["processes"] == 2 and "2 processes (ddp)" in status_html(report)


def test_stop_ends_every_process_within_one_step_and_the_run_resumes_as_two(tiny_model, many_rows, runs_dir):
    worker = Worker(in_process=False)
    run = worker.submit(cfg(tiny_model, many_rows, runs_dir, devices="2", max_steps=24, checkpoint_steps=2))
    wait_for_step(run, 3)
    seen = run.read_status(reconcile=False)["step"]
    assert worker.stop(run.run_id) == "stopping after the current step"
    assert (run.path / STOP_FILE).exists()
    assert worker.wait_idle(timeout=120)
    s = run.read_status()
    assert s["status"] == "stopped" and seen <= s["step"] <= seen + 2, (seen, s)  # the step running, no more
    assert (run.path / "adapter").is_dir() and run.checkpoints  # what it trained is kept
    assert rank_processes(run) == []
    with pytest.raises(UserError, match="nothing to stop"):
        worker.stop(run.run_id)
    # resumed from the command line this time (the studio's Resume is Worker.resume, tested in
    # test_worker.py): it launches the 2 processes again
    done = subprocess.run([sys.executable, "-m", "ft_engine", "resume", str(run.path)], capture_output=True,
                          text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    s = run.read_status()
    assert s["status"] == "completed" and s["step"] == 24 and s["processes"] == 2, s.get("error")
    steps = [r["step"] for r in run.read_metrics() if "loss" in r]
    assert steps == list(range(1, 25))  # the steps after the checkpoint trained once, none missing
    assert any(e["event"] == "resumed" for e in run.events().rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_each_train_one_run(tiny_model, many_rows, runs_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(cfg(tiny_model, many_rows, runs_dir, max_steps=3, devices="1").to_yaml(), encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    nodes = [subprocess.Popen([sys.executable, "-m", "ft_engine", "train", "--config", str(config), "--nodes", "2",
                               "--node-rank", str(rank), "--main-address", "127.0.0.1", "--main-port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for rank in (0, 1)]
    out = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], out
    run = RunDir(Path(out[0][0].strip().splitlines()[-1]))  # node 0 prints its run directory last
    s = run.read_status()
    assert s["status"] == "completed" and s["processes"] == 2 and s["effective_batch"] == 4
    assert len(losses(run)) == 3
    assert len(list(Path(runs_dir).iterdir())) == 1  # node 1 made no second run


def test_processes_that_end_unfinished_fail_the_run_with_the_reason(tmp_path, monkeypatch):
    """What the worker writes when a run's processes end without writing their own end (the
    end of train.log quoted, the server's token never)."""
    from types import SimpleNamespace
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123")

    from ft_engine.supervise import TRAIN_LOG, LaunchedRun
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    events = []
    job = SimpleNamespace(run_dir=run, processes=1, event=lambda kind, message, step=None: events.append(kind))
    (run.path / TRAIN_LOG).write_text("step 1\nRuntimeError: boom hf_abcdefghijklmnopqrstuvwxyz0123\n")
    for code, words in ((-9, "killed (signal 9: usually the system ran out of memory"), (3, "exit code 3")):
        run.write_status(status="running", step=1)
        assert LaunchedRun(job)._reconcile(code).value == "failed"
        error = run.read_status()["error"]
        assert words in error and "RuntimeError: boom" in error and "hf_abc" not in error, error
    run.write_status(status="completed")  # the processes said how it ended: that stays
    assert LaunchedRun(job)._reconcile(1).value == "completed"
    assert events == ["error", "error"]
