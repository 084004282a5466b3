"""The command line: a full round trip in subprocesses, and every kind of bad input answered
with one message and exit code 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ft_engine.cli import main
from ft_engine.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ft_engine", *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_round_trip_train_runs_chat_export(tiny_model, chat_file, tmp_path):
    runs = tmp_path / "runs"
    r = cli("train", "--model", tiny_model, "--data", chat_file, "--method", "lora", "--max-steps", 20,
            "--learning-rate", 1e-2, "--runs-dir", runs, "--run-name", "cli trip")
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    assert run_dir.parent == runs and (run_dir / "adapter").is_dir()
    assert "step 20/20" in r.stderr  # progress lines go to stderr

    r = cli("runs", "--runs-dir", runs)
    assert r.returncode == 0
    line = [x for x in r.stdout.splitlines() if run_dir.name in x][0]
    assert "lora" in line and "completed" in line and "20/20" in line

    r = cli("chat", run_dir, "--prompt", "What is the capital of Zubrowka?", "--max-new-tokens", 12)
    assert r.returncode == 0 and "Lutz" in r.stdout
    r = cli("chat", run_dir, "--prompt", "What is the capital of Zubrowka?", "--max-new-tokens", 12, "--base")
    assert r.returncode == 0 and "Lutz" not in r.stdout

    out = tmp_path / "merged"
    r = cli("export", run_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and Path(r.stdout.strip()) == out


def test_yaml_config_with_flag_override(tiny_model, chat_file, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model}\ndata: {chat_file}\nmethod: full\nmax_steps: 50\n"
                   f"runs_dir: {tmp_path / 'runs'}\nlearning_rate: 0.001\n")
    assert main(["train", "--config", str(cfg), "--max-steps", "2", "--optimizer", "sgd",
                 "--activation-checkpointing", "--scheduler", "cosine", "--checkpoint-steps", "1"]) == 0
    out = capsys.readouterr().out
    run_dir = Path(out.strip().splitlines()[-1])
    status = (run_dir / "status.json").read_text()
    assert '"total_steps": 2' in status and '"method": "full"' in status
    used = RunConfig.from_yaml(run_dir / "config.yaml")
    assert (used.optimizer, used.activation_checkpointing, used.scheduler, used.checkpoint_steps) == \
        ("sgd", True, "cosine", 1)
    assert "(forecast " in out  # the summary line puts the forecast beside the measured peak
    assert (run_dir / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("args,expected", [
    (["train", "--data", "{chat}", "--learning-rate", "-1"], "learning_rate must be > 0, got -1"),
    (["train", "--data", "{chat}", "--batch-size", "0", "--lora-r", "0"], "batch_size must be >= 1, got 0"),
    (["train", "--data", "{chat}", "--method", "sideways"], "method must be one of full, lora, qlora"),
    (["train", "--data", "missing.jsonl"], "data file not found: missing.jsonl"),
    (["train", "--data", "{bad}"], "bad.jsonl: line 2, field 'messages[1].role'"),
    (["train", "--data", "{chat}", "--model", "../../no/such/dir"], "model folder not found"),
    (["train", "--data", "{chat}", "--model", "nobody/not-cached-model"], "cannot load model 'nobody/not-cached-model'"),
    (["train", "--data", "{chat}", "--run-name", "../escape"], "run_name may use letters"),
    (["train", "--config", "missing.yaml"], "config file not found"),
    (["chat", "/no/such/run", "--prompt", "hi"], "no run found at /no/such/run"),
    (["export", "/no/such/run", "--out", "x"], "no run found at /no/such/run"),
    (["resume", "/no/such/run"], "no run found at /no/such/run"),
])
def test_bad_input_is_one_message_and_exit_2(args, expected, chat_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FT_RUNS_DIR", str(tmp_path / "runs"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n')
    args = [a.format(chat=chat_file, bad=bad) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err.splitlines()[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_subprocess_bad_input_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("instruction,output\nSay hi,\n")
    r = cli("train", "--data", bad, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "line 2, field 'output'" in r.stderr


def test_every_command_has_help():
    for cmd in ("train", "chat", "runs", "export", "resume"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


def test_runs_on_empty_dir(tmp_path, capsys):
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert "no runs in" in capsys.readouterr().out
