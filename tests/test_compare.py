"""Compare methods on the tiny random Llama: one comparison trains full, LoRA and QLoRA with the
same budget and produces a row per method with every field; the command line, the studio's
worker path, stopping, bad input, and the comparison view's table / chart builders."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import QA, wait_until, write_jsonl

from ft_engine import compare
from ft_engine.cli import main
from ft_engine.compare import (
    COLUMNS,
    DEFAULT_LEARNING_RATES,
    CompareConfig,
    ComparisonDir,
    ComparisonJob,
    comparison_by_id,
    list_comparisons,
)
from ft_engine.config import RunConfig
from ft_engine.errors import ConfigError, UserError
from ft_engine.rundir import Status, list_runs, run_by_id

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = {q for q, _ in QA}


def base_config(tiny_model, data, runs_dir, **kw) -> RunConfig:
    values = dict(model=tiny_model, data=str(data), runs_dir=str(runs_dir), max_steps=3, batch_size=2,
                  max_seq_len=64, lora_r=8, lora_alpha=16, val_fraction=0.25, seed=7)
    values.update(kw)
    return RunConfig(**values)


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """One comparison of all three methods, run once for the tests that read its results."""
    d = tmp_path_factory.mktemp("compare")
    data = write_jsonl(d / "chat.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA])
    job = ComparisonJob(CompareConfig(base=base_config(tiny_model, data, d / "runs"), max_new_tokens=8))
    cdir = job.prepare()
    status = job.run(same_process=True)  # the child-process path is covered by the CLI test
    return job, cdir, status, d / "runs"


# --- the engine -----------------------------------------------------------------------------

def test_comparison_produces_every_field(finished):
    job, cdir, status, runs_dir = finished
    assert status == Status.COMPLETED
    info = cdir.read()
    assert info["status"] == "completed" and info["id"] == cdir.comparison_id
    assert info["created_at"] and info["ended_at"] and info["error"] is None
    assert list(info["runs"]) == ["full", "lora", "qlora"]
    assert info["prompt"] in QUESTIONS  # the default prompt: a question of the data

    rows = {r["method"]: r for r in cdir.rows()}
    for method, row in rows.items():
        for key, _ in COLUMNS:
            assert row[key] is not None, (method, key)
        assert row["status"] == "completed" and row["steps"] == row["total_steps"] == 3
        assert row["mem_device"] == "cpu" and row["peak_mem_mib"] > 0
        assert row["tokens_per_second"] > 0 and 0 < row["train_s"] <= row["wall_s"] + 1  # wall: whole seconds
        assert row["perplexity"] == pytest.approx(math.exp(row["eval_loss"]), rel=1e-3)
        assert isinstance(row["sample"], str)
        assert row["learning_rate"] == DEFAULT_LEARNING_RATES[method]
    # what the methods are about: full trains and saves everything, adapters a small part
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"] and rows["full"]["trainable_pct"] == 100
    assert rows["full"]["trainable_params"] > rows["lora"]["trainable_params"] == rows["qlora"]["trainable_params"]
    assert rows["full"]["saved_mib"] > rows["lora"]["saved_mib"]


def test_the_three_runs_share_one_budget_and_are_ordinary_runs(finished):
    job, cdir, _, runs_dir = finished
    run_ids = cdir.runs()
    # the comparison folder is not a run; its three runs are, and they are all there
    assert sorted(r.run_id for r in list_runs(runs_dir)) == sorted(run_ids.values())
    assert [c.comparison_id for c in list_comparisons(runs_dir)] == [cdir.comparison_id]
    configs = {m: run_by_id(runs_dir, rid).read_config() for m, rid in run_ids.items()}
    for method, cfg in configs.items():
        assert cfg.method == method
        assert (cfg.max_steps, cfg.batch_size, cfg.max_seq_len, cfg.seed, cfg.val_fraction) == (3, 2, 64, 7, 0.25)
        assert cfg.checkpoint_steps == 0 and not run_by_id(runs_dir, run_ids[method]).checkpoints
    assert (runs_dir / run_ids["full"] / "model").is_dir() and (runs_dir / run_ids["lora"] / "adapter").is_dir()


def test_table_markdown_lists_every_column_and_method(finished):
    _, cdir, _, _ = finished
    table = (cdir.path / compare.TABLE_FILE).read_text()
    header = table.splitlines()[0]
    assert all(h in header for _, h in COLUMNS)
    body = [line for line in table.splitlines()[2:5]]
    assert [line.split("|")[1].strip() for line in body] == ["full", "lora", "qlora"]
    assert "–" not in "".join(body)  # no missing value
    assert "Sample answers" in table and "peak resident set" in table



def test_stop_mid_run_keeps_what_was_trained_and_skips_the_rest(tiny_model, chat_file, runs_dir):
    job = ComparisonJob(CompareConfig(base=base_config(tiny_model, chat_file, runs_dir, max_steps=400),
                                      methods=["lora", "full"]))
    cdir = job.prepare()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", job.run(same_process=True)))
    thread.start()
    first = run_by_id(runs_dir, cdir.runs()["lora"])
    wait_until(lambda: (first.read_status().get("step") or 0) >= 2, what="step 2 of the first run",
               interval=0.05, describe=first.read_status)
    job.stop()
    thread.join(60)
    assert result["status"] == Status.STOPPED
    rows = {r["method"]: r for r in cdir.rows()}
    assert rows["lora"]["status"] == "stopped" and 2 <= rows["lora"]["steps"] < 400
    assert rows["lora"]["saved_mib"] > 0  # a stopped run keeps what it trained
    assert rows["full"]["status"] == "stopped" and rows["full"]["steps"] == 0
    assert all(r["sample"] is None for r in rows.values())  # a stop does not load models to answer


@pytest.mark.parametrize("kw, expected", [
    (dict(methods=["full", "sideways"]), "unknown method 'sideways': choose from full, lora, qlora"),
    (dict(methods=["lora"]), "needs at least two methods"),
    (dict(methods=["lora", "lora", "full"]), "listed twice"),
    (dict(base_kw=dict(max_steps=0)), "max_steps must be >= 1"),
    (dict(base_kw=dict(val_fraction=0.0)), "val_fraction must be in (0, 0.5)"),
    (dict(base_kw=dict(batch_size=0)), "batch_size must be >= 1"),
])
def test_bad_settings_are_all_reported_before_anything_is_written(kw, expected, tiny_model, chat_file, runs_dir):
    kw = dict(kw)  # the parameter dict is shared between runs of the test: don't change it
    base = base_config(tiny_model, chat_file, runs_dir, **kw.pop("base_kw", {}))
    with pytest.raises(ConfigError) as e:
        ComparisonJob(CompareConfig(base=base, **kw)).prepare()
    assert expected in str(e.value)
    assert not runs_dir.exists()


def test_too_little_data_says_so_and_writes_nothing(tiny_model, tmp_path, runs_dir):
    one = write_jsonl(tmp_path / "one.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "yo"}]}])
    with pytest.raises(UserError, match="1 row is too few to compare methods.*add rows"):
        ComparisonJob(CompareConfig(base=base_config(tiny_model, one, runs_dir))).prepare()
    assert not runs_dir.exists() or not any(runs_dir.rglob("*.json"))


def test_comparison_ids_never_leave_the_comparisons_folder(tmp_path):
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(UserError):
            comparison_by_id(tmp_path, bad)


def test_delete_comparison_keeps_its_runs_and_refuses_a_running_one(finished, tmp_path):
    import shutil

    from ft_engine.compare import comparisons_root, delete_comparison
    _, cdir, _, runs_dir = finished
    runs = tmp_path / "runs"
    copy = ComparisonDir(shutil.copytree(cdir.path, comparisons_root(runs) / cdir.comparison_id))
    for bad in ("../x", "..", "/etc"):
        with pytest.raises(UserError):
            delete_comparison(runs, bad)
    copy.write(status="running")  # claimed by this (live) process: really running
    with pytest.raises(UserError, match="stop it before deleting it"):
        delete_comparison(runs, cdir.comparison_id)
    copy.write(status="completed")
    delete_comparison(runs, cdir.comparison_id)
    assert not copy.path.exists() and list_comparisons(runs) == []
    # the original comparison and its three runs are untouched
    assert cdir.path.is_dir() and all(run_by_id(runs_dir, r) for r in cdir.runs().values())


# --- the command line ----------------------------------------------------------------------------

def test_cli_compare_in_child_processes(tiny_model, chat_file, tmp_path):
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "ft_engine", "compare", "--data", str(chat_file), "--model", tiny_model,
                        "--max-steps", "2", "--batch-size", "2", "--lora-r", "8", "--runs-dir", str(runs),
                        "--prompt", "What is two plus two?", "--max-new-tokens", "6", "--json"],
                       cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["status"] == "completed" and info["prompt"] == "What is two plus two?"
    assert info["same_process"] is False
    assert [row["method"] for row in info["rows"]] == ["full", "lora", "qlora"]
    for row in info["rows"]:
        assert all(row[key] is not None for key, _ in COLUMNS), row
    assert Path(info["path"]).parent.name == compare.COMPARISONS_DIR
    # each run trained in its own process: its status.json names a pid other than ours and the parent's
    pids = {run_by_id(runs, rid).read_status()["pid"] for rid in info["runs"].values()}
    assert len(pids) == 3 and os.getpid() not in pids
    assert "compare 1/3: full" in r.stderr and "step 2/2" in r.stderr


def test_cli_compare_prints_the_table(tiny_model, chat_file, tmp_path, capsys):
    code = main(["compare", "--data", str(chat_file), "--model", tiny_model, "--max-steps", "2", "--batch-size", "2",
                 "--methods", "lora,full", "--same-process", "--runs-dir", str(tmp_path / "runs"),
                 "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("| method | status | peak memory (MiB)")
    assert lines[2].startswith("| lora | completed") and lines[3].startswith("| full | completed")
    assert "status: completed" in out
    assert (Path(lines[-1]) / "comparison.json").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--methods", "full,sideways"], "unknown method 'sideways'"),
    (["--max-steps", "0"], "max_steps must be >= 1"),
    (["--data", "missing.jsonl"], "data file not found: missing.jsonl"),
    (["--data", "{one}"], "too few to compare methods"),
])
def test_cli_bad_input_is_one_message_and_exit_2(args, expected, chat_file, tmp_path, capsys):
    one = write_jsonl(tmp_path / "one.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "yo"}]}])
    base = {"--data": str(chat_file), "--max-steps": "2", "--runs-dir": str(tmp_path / "runs")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value.format(one=one)
    argv = ["compare"] + [x for pair in base.items() for x in pair]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err.splitlines()[0] and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# --- the studio: the worker path and the view's builders ----------------------------------------

def test_studio_queues_the_comparison_on_the_worker(tiny_model, chat_file, tmp_path, monkeypatch):
    from ui.compare_view import comparison_report, start_comparison
    from ui.context import Studio
    monkeypatch.delenv("FT_MAX_STEPS", raising=False)
    studio = Studio(tmp_path / "runs")
    data_path = str(studio.keep_upload(str(chat_file)))
    form = {"data": data_path, "model": tiny_model, "max_seq_len": 64.0, "val_fraction": 0.0,
            "train_on_prompt": False, "data_format": "auto", "max_steps": 2.0, "batch_size": 2.0}
    message, cid = start_comparison(studio, form, ["lora", "qlora"], "What is two plus two?")
    assert cid in message and "held out" in message  # val_fraction 0 was raised, and the user is told
    wait_until(lambda: comparison_report(studio, cid)["status"] in ("completed", "failed", "stopped"), timeout=120,
               what="the comparison to end", interval=0.2, describe=lambda: comparison_report(studio, cid))
    report = comparison_report(studio, cid)
    assert report["status"] == "completed", report
    assert [r["method"] for r in report["rows"]] == ["lora", "qlora"]
    assert all(r["eval_loss"] is not None and isinstance(r["sample"], str) for r in report["rows"])
    assert {r.run_id for r in studio.runs()} == set(report["runs"].values())
    with pytest.raises(UserError, match="already completed"):
        compare.stop_submitted(comparison_by_id(studio.runs_dir, cid), studio.worker)
    with pytest.raises(UserError, match="Data tab"):
        start_comparison(studio, {**form, "data": ""}, ["lora", "full"], "")


def test_view_builders(finished):
    from ui.compare_view import HEADERS, comparison_figure, progress_markdown, samples_markdown, table_rows
    _, cdir, _, _ = finished
    rows = cdir.rows()
    table = table_rows(rows)
    assert len(table) == 3 and all(len(r) == len(HEADERS) for r in table)
    assert [r[0] for r in table] == ["full", "lora", "qlora"] and all(None not in r for r in table)
    fig = comparison_figure(rows)
    by_name = {}
    for trace in fig.data:
        by_name.setdefault(trace.name, []).append(trace)
    assert set(by_name) == {"peak memory", "tokens/s", "training loop", "with loading and saving",
                            "final train loss", "eval loss (held out)"}
    assert list(by_name["peak memory"][0].x) == ["Full", "LoRA", "QLoRA"]
    assert list(by_name["eval loss (held out)"][0].y) == [r["eval_loss"] for r in rows]
    # answers are model output: escaped, so they can never inject markup
    md = samples_markdown("<b>q</b>", [{**rows[0], "sample": "<script>x</script>"}, {**rows[1], "sample": None}])
    assert "&lt;script&gt;" in md and "<script>" not in md and "&lt;b&gt;q" in md and "no answer" in md
    p = compare.progress(cdir)
    assert p["status"] == "completed" and "Completed" in progress_markdown(p)
    running = {**p, "status": "running", "current": "lora", "index": 2}
    assert "Training LoRA** (2 of 3)" in progress_markdown(running)


def test_compare_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0
    assert "--methods" in capsys.readouterr().out


def test_gradio_client_compare_methods(tiny_model, tmp_path):
    """The scripting API end to end over HTTP: queue, poll, read the rows; bad ids answer in words."""
    from app_server import running_app
    from gradio_client import Client, handle_file
    sample = ROOT / "assets" / "tiny_facts.jsonl"
    with running_app(tmp_path / "runs", tmp_path / "server.log") as (url, _proc, _log):
        client = Client(url, verbose=False)
        data_path = client.predict(handle_file(str(sample)), None, tiny_model, 64, False, "auto",
                                   api_name="/validate_data")[3]
        res = client.predict(data_path, tiny_model, 2, "lora,full", "", '{"batch_size": 2, "learning_rate": 0.01}',
                             api_name="/compare_methods")
        assert res["comparison_id"], res
        assert list(res["run_ids"]) == ["lora", "full"]
        report = wait_until(lambda: (r := client.predict(res["comparison_id"], api_name="/comparison"))["status"] in (
            "completed", "failed", "stopped", "interrupted") and r, timeout=120, what="the comparison to end",
            interval=0.5)
        assert report["status"] == "completed", report
        assert report["learning_rates"] == {"lora": 0.01, "full": 0.01}  # one fixed rate for both
        assert report["prompt"]  # the first held-out question of the sample
        for row in report["rows"]:
            assert all(row[key] is not None for key, _ in COLUMNS), row
        assert "not a comparison id" in client.predict("../../etc", api_name="/stop_comparison")
        bad = client.predict("/etc/passwd", tiny_model, 2, "lora,full", "", "{}", api_name="/compare_methods")
        assert bad["comparison_id"] == "" and "not an uploaded file" in bad["message"]
