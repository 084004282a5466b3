"""rundir.RunSummary: the one reading of a run's files that the runs table, `runs` on the command
line, the Monitor and the compare table all show. Runs are planted as files: no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_engine.cli import main
from ft_engine.compare_table import run_row
from ft_engine.config import RunConfig
from ft_engine.rundir import (
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    STATUS_FILE,
    DamagedFileError,
    RunDir,
    read_summary,
    summarize,
)

# the list_runs API's fields, in order: public, so they must not change
LIST_RUNS_FIELDS = ["run_id", "name", "method", "model", "status", "step", "total_steps", "train_loss", "eval_loss",
                    "peak_mib", "elapsed_s", "tokens_per_second", "created_at", "error", "skipped_lines", "notes",
                    "eval"]


def metrics_row(step: int, **extra) -> dict:
    return {"step": step, "epoch": step / 4, "elapsed_s": 1.5 * step, "mem_peak_mib": 10.0 + step, **extra}


def plant(runs: Path, run_id: str, status: dict, metrics: list[dict]) -> RunDir:
    """A run folder as the engine leaves it (status.json written by a process long gone)."""
    run = runs / run_id
    run.mkdir(parents=True)
    (run / STATUS_FILE).write_text(json.dumps(status))
    (run / CONFIG_FILE).write_text(RunConfig(data="x.jsonl", learning_rate=2e-4).to_yaml())
    (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return RunDir(run)


FINISHED = {"status": "completed", "name": "demo", "method": "lora", "model": "bundled", "step": 3, "total_steps": 3,
            "started_at": "2026-01-01T00:00:00.000+00:00", "ended_at": "2026-01-01T00:00:08.500+00:00",
            "elapsed_s": 4.5, "tokens_per_second": 321.0, "mem_peak_mib": 12.5, "mem_device": "cpu",
            "trainable_params": 1_000, "total_params": 50_000, "final_loss": 1.7, "final_eval_loss": 1.9}
FINISHED_METRICS = [metrics_row(1, loss=2.5, tokens_per_second=300.0),
                    metrics_row(2, loss=2.1, tokens_per_second=310.0),
                    metrics_row(3, loss=1.7, tokens_per_second=305.0), metrics_row(3, eval_loss=1.9)]


def test_a_finished_run_reads_the_same_in_every_view(tmp_path):
    from ui.context import Studio
    from ui.monitor_tab import run_report
    from ui.runs_tab import COLUMNS, table_rows
    run = plant(tmp_path, "20260101-000000-demo-0000", FINISHED, FINISHED_METRICS)
    (run.path / EVAL_FILE).write_text(json.dumps({"headline": "tuned 3/4 · base 0/4"}))
    s = read_summary(run)
    assert (s.status, s.step, s.total_steps, s.train_loss, s.eval_loss) == ("completed", 3, 3, 1.7, 1.9)
    assert (s.elapsed_s, s.wall_s, s.tokens_per_second, s.last_step_tokens_per_second) == (4.5, 8.5, 321.0, 305.0)
    assert s.peak_mib == 13.0  # the highest of status.json's 12.5 and the metrics rows' (13.0 at step 3)
    assert s.eval_headline == "tuned 3/4 · base 0/4" and s.metrics_rows == 4 and not s.damaged
    with pytest.raises(AttributeError):  # frozen: a view cannot change what another one shows
        s.step = 0

    listed = summarize(run)  # the list_runs API
    assert list(listed) == LIST_RUNS_FIELDS
    assert (listed["train_loss"], listed["peak_mib"], listed["eval"]) == (1.7, 13.0, "tuned 3/4 · base 0/4")
    row = dict(zip(COLUMNS, table_rows(Studio(tmp_path))[0]))
    assert (row["train loss"], row["eval loss"], row["duration"], row["tokens/s"]) == (1.7, 1.9, "0m 04s", 321)
    compared = run_row(run, "lora")
    assert (compared["final_loss"], compared["eval_loss"], compared["train_s"], compared["wall_s"]) == \
        (1.7, 1.9, 4.5, 8.5)
    assert (compared["peak_mem_mib"], compared["trainable_pct"], compared["learning_rate"]) == (13.0, 2.0, 2e-4)
    report = run_report(Studio(tmp_path), run.run_id)
    assert (report["loss"], report["elapsed_s"], report["mem_peak_mib"]) == (1.7, 4.5, 13.0)
    assert report["tokens_per_second"] == 305.0  # the Monitor's is the last step's


def test_elapsed_time_falls_back_to_the_last_metrics_row(tmp_path):
    """A running (or killed) run has no elapsed_s in status.json yet: the metrics say how long."""
    from ui.context import Studio
    from ui.monitor_tab import run_report
    status = {"status": "failed", "method": "full", "model": "bundled", "step": 2, "total_steps": 10,
              "error": "out of memory"}
    run = plant(tmp_path, "20260101-000000-killed-0000", status, [metrics_row(1, loss=2.5), metrics_row(2, loss=2.0)])
    s = read_summary(run)
    assert (s.elapsed_s, s.train_loss, s.tokens_per_second, s.wall_s) == (3.0, 2.0, None, None)
    assert summarize(run)["elapsed_s"] == 3.0
    assert run_row(run, "full")["train_s"] == 3.0 and run_row(run, "full")["final_loss"] == 2.0
    assert run_report(Studio(tmp_path), run.run_id)["elapsed_s"] == 3.0
    # no metrics either (failed while loading): nothing to fall back on
    empty = plant(tmp_path, "20260101-000001-early-0000", status, [])
    assert (read_summary(empty).elapsed_s, read_summary(empty).peak_mib, read_summary(empty).train_loss) == \
        (None, None, None)


def test_a_damaged_status_still_gives_a_row(tmp_path, capsys):
    from ui.context import Studio
    from ui.monitor_tab import run_report
    from ui.runs_tab import COLUMNS, table_rows
    good = plant(tmp_path, "20260101-000000-good-0000", FINISHED, FINISHED_METRICS)
    bad = plant(tmp_path, "20260101-000001-bad-0000", FINISHED, FINISHED_METRICS)
    (bad.path / STATUS_FILE).write_bytes(b'{"status": "compl')  # torn by a hand edit or a disk error
    s = read_summary(bad)
    assert s.damaged and s.status == "damaged" and f"{bad.run_id}/status.json is damaged" in s.error
    assert s.name == bad.run_id and s.step == 0 and s.method is None
    assert s.train_loss == 1.7 and s.metrics_rows == 4  # metrics.jsonl is whole: still read
    assert summarize(bad)["status"] == "damaged" and list(summarize(bad)) == LIST_RUNS_FIELDS
    rows = {row[-1]: dict(zip(COLUMNS, row)) for row in table_rows(Studio(tmp_path))}
    assert rows[bad.run_id]["status"] == "damaged" and rows[good.run_id]["status"] == "completed"
    assert run_row(bad, "lora")["status"] == "damaged"  # a comparison names the damage, not "deleted"
    with pytest.raises(DamagedFileError, match="status.json is damaged"):
        run_report(Studio(tmp_path), bad.run_id)  # the Monitor shows this message in place of the run
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "damaged" in lines[bad.run_id] and "status.json is damaged" in lines[bad.run_id]
    assert lines[good.run_id].split()[1:] == ["lora", "bundled", "completed", "3/3", "1.7000"]
