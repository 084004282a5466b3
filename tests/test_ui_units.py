"""The studio's pure helpers, without a server: widget values → RunConfig, presets, charts,
the Data tab's preview/summary/error text, the Monitor's report and gauges, the Runs table,
and the Studio's guards on data paths, uploads and run ids."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import pytest

from ft_engine.config import ALL_LINEAR, RunConfig
from ft_engine.errors import ConfigError, DataError, DataProblem, UserError
from ft_engine.hardware import machine_snapshot
from ft_engine.preview import preview_data
from ft_engine.training import TrainingJob, train
from ui import charts
from ui.context import ASSETS, UPLOADS, Studio
from ui.data_tab import error_markdown, preview_html, summary_markdown
from ui.form import _LR, PRESETS, config_from_form, preset_values
from ui.monitor_tab import events_markdown, gauges_html, run_report, status_html
from ui.runs_tab import COLUMNS, table_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_step_cap(monkeypatch):
    monkeypatch.delenv("FT_MAX_STEPS", raising=False)


# --- ui.form ---------------------------------------------------------------------------------

def form(tiny_model, data, **kw):
    base = {"model": tiny_model, "data": str(data), "method": "lora", "run_name": "", "learning_rate": 1e-3,
            "max_steps": 5.0, "epochs": 1.0, "batch_size": 2.0, "grad_accum": 1.0, "max_seq_len": 256.0,
            "seed": None, "logging_steps": 1.0, "eval_steps": 0.0, "checkpoint_steps": 0.0, "lora_r": 8.0,
            "lora_alpha": 16.0, "lora_target_modules": ["q_proj", "v_proj"], "val_fraction": 0.0,
            "warmup_ratio": 0.0, "scheduler": "constant"}
    base.update(kw)
    return base


def test_form_values_become_the_run_config(tiny_model, chat_file):
    cfg = config_from_form(form(f" {tiny_model} ", chat_file))
    assert isinstance(cfg, RunConfig)
    assert cfg.model == tiny_model  # stripped
    assert cfg.max_steps == 5 and type(cfg.max_steps) is int
    assert cfg.batch_size == 2 and type(cfg.batch_size) is int
    assert cfg.max_seq_len == 256 and cfg.lora_r == 8 and cfg.lora_alpha == 16 and cfg.checkpoint_steps == 0
    assert type(cfg.lora_r) is int and type(cfg.checkpoint_steps) is int
    assert cfg.learning_rate == 1e-3 and cfg.scheduler == "constant"
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.seed == RunConfig().seed  # an empty box keeps the default
    assert cfg.run_name == ""  # empty text is dropped, not an invalid name
    assert cfg.data == str(chat_file)


@pytest.mark.parametrize("targets, expected", [
    ([], [ALL_LINEAR]),
    ([ALL_LINEAR], [ALL_LINEAR]),
    ([ALL_LINEAR, "q_proj"], [ALL_LINEAR]),
    (("k_proj",), ["k_proj"]),
])
def test_form_lora_targets(tiny_model, chat_file, targets, expected):
    assert config_from_form(form(tiny_model, chat_file, lora_target_modules=targets)).lora_target_modules == expected


def test_form_bad_values_list_every_problem(tiny_model, chat_file):
    with pytest.raises(ConfigError) as e:
        config_from_form(form(tiny_model, chat_file, learning_rate=-1, batch_size=0.0, lora_r=0.0))
    problems = e.value.problems
    assert len(problems) == 3, problems
    msg = str(e.value)
    assert "learning_rate must be > 0" in msg and "batch_size must be >= 1" in msg and "lora_r must be >= 1" in msg
    assert msg.startswith("3 invalid settings")


def test_form_fractional_int_is_refused(tiny_model, chat_file):
    with pytest.raises(ConfigError, match="batch_size: expected a whole number"):
        config_from_form(form(tiny_model, chat_file, batch_size=2.5))


def test_form_missing_data_is_refused(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="data file not found"):
        config_from_form(form(tiny_model, tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("asked, expected", [(0.0, 10), (50.0, 10), (3.0, 3), (None, 10)])
def test_ft_max_steps_caps_steps(tiny_model, chat_file, monkeypatch, asked, expected):
    monkeypatch.setenv("FT_MAX_STEPS", "10")
    cfg = config_from_form(form(tiny_model, chat_file, max_steps=asked))
    assert cfg.max_steps == expected


def test_no_cap_without_ft_max_steps(tiny_model, chat_file):
    assert config_from_form(form(tiny_model, chat_file, max_steps=500.0)).max_steps == 500
    assert config_from_form(form(tiny_model, chat_file, max_steps=0.0)).max_steps == 0


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_preset_values(preset, method):
    v = preset_values(preset, method)
    assert set(v) == set(PRESETS[preset]) | {"learning_rate"}
    assert {k: v[k] for k in PRESETS[preset]} == PRESETS[preset]
    assert v["learning_rate"] == _LR[preset][method]
    # every preset is a valid configuration on its own
    RunConfig.from_dict({**v, "method": method}).validate(check_paths=False)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_learning_rate_depends_on_method(preset):
    full, lora = preset_values(preset, "full")["learning_rate"], preset_values(preset, "lora")["learning_rate"]
    assert full < lora
    assert preset_values(preset, "qlora")["learning_rate"] == lora
    assert preset_values(preset, "something-else")["learning_rate"] == lora  # falls back to LoRA's


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown preset 'Turbo'"):
        preset_values("Turbo", "lora")


def test_preset_dict_is_not_shared():
    v = preset_values("Balanced", "lora")
    v["max_steps"] = 999
    assert preset_values("Balanced", "lora")["max_steps"] == PRESETS["Balanced"]["max_steps"] != 999


# --- ui.charts -------------------------------------------------------------------------------

def test_smooth_is_bias_corrected_ema():
    assert charts.smooth([]) == []
    out = charts.smooth([4.0, 2.0, 6.0])
    assert out[0] == pytest.approx(4.0)
    # by hand: avg1 = .8, avg2 = .64 + .4 = 1.04 → / (1 - .64)
    assert out[1] == pytest.approx((0.2 * 4 * 0.8 + 0.2 * 2) / (1 - 0.8 ** 2))
    assert all(v == pytest.approx(3.5) for v in charts.smooth([3.5] * 20))
    assert charts.smooth([1.0, 5.0], weight=0.0) == pytest.approx([1.0, 5.0])


def _trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def _annotation_texts(fig):
    return [a.text for a in fig.layout.annotations]


def test_training_curves_with_train_and_eval_rows():
    rows = [
        {"step": 1, "loss": 3.0, "learning_rate": 1e-3, "tokens_per_second": 100.0},
        {"step": 2, "loss": 2.0, "learning_rate": 1e-3, "tokens_per_second": 110.0},
        {"step": 2, "eval_loss": 2.5},
        {"step": 3, "loss": 1.0, "learning_rate": 5e-4, "tokens_per_second": 120.0},
        {"step": 4, "eval_loss": 1.5},
    ]
    fig = charts.training_curves(rows, title="my run")
    names = [t.name for t in fig.data]
    assert names == ["train loss", "train loss (smoothed)", "eval loss", "learning rate", "tokens/s"]
    assert list(_trace(fig, "train loss").x) == [1, 2, 3]
    assert list(_trace(fig, "train loss").y) == [3.0, 2.0, 1.0]
    assert list(_trace(fig, "train loss (smoothed)").y) == pytest.approx(charts.smooth([3.0, 2.0, 1.0]))
    assert list(_trace(fig, "eval loss").x) == [2, 4] and list(_trace(fig, "eval loss").y) == [2.5, 1.5]
    assert list(_trace(fig, "learning rate").y) == [1e-3, 1e-3, 5e-4]
    assert list(_trace(fig, "tokens/s").x) == [1, 2, 3]
    assert fig.layout.title.text == "my run"
    assert not any("waiting" in t for t in _annotation_texts(fig))


def test_training_curves_without_eval_has_no_eval_trace():
    fig = charts.training_curves([{"step": 1, "loss": 2.0}])
    assert "eval loss" not in [t.name for t in fig.data]


def test_training_curves_with_no_rows_says_waiting():
    for rows in ([], [{"step": 0, "eval_loss": 3.0}]):
        fig = charts.training_curves(rows)
        assert any("waiting for the first step" in t for t in _annotation_texts(fig))
        assert list(_trace(fig, "train loss").x or []) == []


def test_token_length_histogram():
    fig = charts.token_length_histogram([10, 20, 20, 300], 256)
    assert list(fig.data[0].x) == [10, 20, 20, 300]
    assert fig.layout.shapes[0].x0 == 256 and fig.layout.shapes[0].x1 == 256
    assert any("max length 256" in t for t in _annotation_texts(fig))


def test_loss_overlay_one_smoothed_trace_per_run():
    curves = {"run-a": [{"step": 1, "loss": 2.0}, {"step": 1, "eval_loss": 9.0}, {"step": 2, "loss": 1.0}],
              "run-b": [{"step": 5, "loss": 4.0}]}
    fig = charts.loss_overlay(curves)
    assert [t.name for t in fig.data] == ["run-a", "run-b"]
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == pytest.approx(charts.smooth([2.0, 1.0]))
    assert list(fig.data[1].x) == [5] and list(fig.data[1].y) == pytest.approx([4.0])
    assert len(charts.loss_overlay({}).data) == 0


def test_memory_curve():
    rows = [{"step": 1, "mem_used_mib": 100.0, "mem_peak_mib": 120.0}, {"step": 2, "eval_loss": 1.0},
            {"step": 3, "mem_used_mib": 110.0, "mem_peak_mib": 130.0}]
    fig = charts.memory_curve(rows, "Process memory (CPU mode)")
    assert fig.layout.title.text == "Process memory (CPU mode)"
    used, peak = _trace(fig, "in use"), _trace(fig, "peak")
    assert list(used.x) == [1, 3] and list(used.y) == [100.0, 110.0]
    assert list(peak.x) == [1, 3] and list(peak.y) == [120.0, 130.0]


# --- ui.data_tab -----------------------------------------------------------------------------

def test_preview_html_marks_and_escapes(tiny_model, tmp_path):
    path = tmp_path / "evil.jsonl"
    rows = [{"messages": [{"role": "user", "content": "<script>alert(1)</script> & more"},
                          {"role": "assistant", "content": "Use <b>bold</b> & \"quotes\"."}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pv = preview_data(str(path), model=tiny_model, max_seq_len=256)
    out = preview_html(pv)
    assert "<script>" not in out and "<b>bold" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in out
    assert "Use &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quotes&quot;." in out
    assert out.count('class="ft-example"') == 2 and "Example 2" in out
    # the answer is in a trained span, the question in a prompt span
    trained = [s.split("</span>")[0] for s in out.split('<span class="ft-trained">')[1:]]
    prompt = [s.split("</span>")[0] for s in out.split('<span class="ft-prompt">')[1:]]
    assert any("Use &lt;b&gt;bold" in t for t in trained)
    assert any("&lt;script&gt;" in p for p in prompt)
    assert not any("&lt;script&gt;" in t for t in trained) and not any("Use &lt;b&gt;" in p for p in prompt)


def test_preview_html_train_on_prompt_marks_everything(tiny_model, chat_file):
    out = preview_html(preview_data(str(chat_file), model=tiny_model, train_on_prompt=True))
    examples = out.split('<div class="ft-example">', 1)[1]
    assert 'class="ft-prompt"' not in examples and 'class="ft-trained"' in examples


def test_summary_markdown_rows_format_and_truncation(tiny_model):
    sample = str(ASSETS / "tiny_facts.jsonl")
    cut = preview_data(sample, model=tiny_model, max_seq_len=32)  # at 16 every answer is cut away: refused
    text = summary_markdown(cut, sample)
    assert "12 rows" in text and "format **chat**" in text
    assert f"{cut.truncated_rows} rows longer than 32 tokens" in text and cut.truncated_rows == 12
    assert f"longest {max(cut.token_lengths)}" in text
    whole = preview_data(sample, model=tiny_model, max_seq_len=4096)
    text = summary_markdown(whole, sample)
    assert whole.truncated_rows == 0 and "No row is longer than the maximum length (4096 tokens)" in text


def test_summary_markdown_singular_and_ignored_columns(tiny_model, tmp_path):
    path = tmp_path / "pc.jsonl"
    rows = [{"prompt": "Hi", "completion": "Hello", "id": 1},
            {"prompt": "What is two plus two? " * 10, "completion": "Four.", "id": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pv = preview_data(str(path), model=tiny_model, max_seq_len=32)
    text = summary_markdown(pv, str(path))
    assert pv.truncated_rows == 1 and "**1 row longer than 32 tokens**" in text
    assert "Columns not used: id." in text


def test_error_markdown_for_a_real_data_error(tiny_model):
    with pytest.raises(DataError) as e:
        preview_data(str(REPO / "tests" / "bad_data" / "unknown_role.jsonl"), model=tiny_model)
    text = error_markdown(e.value)
    assert "(1 problem)" in text and "`unknown_role.jsonl`" in text
    assert "line 2" in text and "messages[1].role" in text and "unknown role" in text
    assert "more." not in text


def test_error_markdown_caps_at_ten():
    problems = [DataProblem(i, "text", f"bad <value> {i}") for i in range(1, 14)]
    text = error_markdown(DataError("/some/dir/data.jsonl", problems))
    assert "(13 problems)" in text and "`data.jsonl`" in text and "/some/dir" not in text
    assert text.count("\n- ") == 10
    shown = html.unescape(text)  # Markdown renders the entities back
    assert "line 10, field 'text'" in shown and "line 11" not in shown
    assert "…and 3 more." in text
    assert "&lt;value&gt;" in text and "<value>" not in text


def test_error_markdown_for_a_plain_user_error():
    assert error_markdown(UserError("model <x> not found")) == "### ❌ model &lt;x&gt; not found"


# --- ui.monitor_tab / ui.runs_tab on real tiny runs ------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A completed 3-step LoRA run, then a second run that is only queued (newer)."""
    runs_dir = tmp_path_factory.mktemp("ui-runs")
    data = tmp_path_factory.mktemp("ui-data") / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                     {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                            for i in range(4)))
    cfg = RunConfig(model=tiny_model, data=str(data), runs_dir=str(runs_dir), max_steps=3, checkpoint_steps=0,
                    batch_size=2, run_name="a-first", learning_rate=1e-2)
    run, status = train(cfg)
    assert status.value == "completed"
    queued = TrainingJob(cfg.replace(run_name="b-second")).prepare()
    return Studio(runs_dir), run, queued


def test_run_report_of_a_completed_run(trained, tiny_model):
    studio, run, _ = trained
    r = run_report(studio, run.run_id)
    assert r["run_id"] == run.run_id and r["status"] == "completed"
    assert r["step"] == 3 and r["total_steps"] == 3
    assert r["method"] == "lora" and r["model"] == tiny_model
    assert r["eta_s"] is None and r["queue_position"] is None and r["error"] is None
    assert r["loss"] is not None and math.isfinite(r["loss"])
    assert r["metrics_rows"] == 3 and r["elapsed_s"] > 0 and r["mem_peak_mib"] > 0
    kinds = [e["event"] for e in r["events"]]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    json.dumps(r)  # the run_status API returns it as JSON


def test_run_report_of_a_queued_run(trained):
    studio, _, queued = trained
    r = run_report(studio, queued.run_id)
    assert r["status"] == "queued" and r["step"] == 0 and r["total_steps"] is None and r["events"] == []
    assert "step 0 / ?" in status_html(r)


def test_run_report_refuses_bad_ids(trained):
    studio = trained[0]
    for bad in ("../x", "nope"):
        with pytest.raises(UserError):
            run_report(studio, bad)


def test_status_html(trained):
    studio, run, _ = trained
    r = run_report(studio, run.run_id)
    out = status_html(r)
    assert "✅ completed" in out and "step 3 / 3" in out and f"<code>{run.run_id}</code>" in out
    assert 'style="width:100.0%"' in out and f"loss {r['loss']:.4f}" in out
    assert "ft-error" not in out
    failed = {**r, "status": "failed", "error": "out of <memory>", "step": 1}
    out = status_html(failed)
    assert "❌ failed" in out and "out of &lt;memory&gt;" in out and 'style="width:33.3%"' in out


def test_events_markdown(trained):
    studio, run, _ = trained
    events = run_report(studio, run.run_id)["events"]
    text = events_markdown(events)
    lines = text.splitlines()
    assert len(lines) == len(events) and "**completed**" in lines[0] and "**started**" in lines[-1]
    assert events_markdown([]) == "_No events yet._"
    odd = events_markdown([{"time": "2026-01-01T10:11:12+00:00", "step": None, "event": "error",
                            "message": "<b>boom</b>"}])
    assert odd == "- `10:11:12` step 0: **error** — &lt;b&gt;boom&lt;/b&gt;"


def test_gauges_html_cpu_mode():
    snap = {**machine_snapshot(), "gpus": []}
    out = gauges_html(snap, 2048.0)
    assert "CPU mode" in out and "System RAM" in out and "peak of this run: 2.00 GiB" in out
    assert "peak of this run: –" in gauges_html(snap, None)


def test_gauges_html_with_a_gpu():
    snap = {"mode": "gpu", "gpus": [{"index": 0, "name": "NVIDIA <Fake> H200", "used_mib": 130000.0,
                                     "total_mib": 140000.0, "utilization_percent": 97.0}],
            "ram_used_mib": 1.0, "ram_total_mib": 2.0, "process_used_mib": 512.0, "process_peak_mib": 600.0,
            "cpu_percent": 5.0}
    out = gauges_html(snap, None)
    assert "GPU 0 · NVIDIA &lt;Fake&gt; H200" in out and "97% busy" in out
    assert "CPU mode" not in out and "System RAM" not in out
    assert "ft-hot" in out  # 93% full
    assert "This app now: 0.50 GiB" in out


def test_table_rows(trained, tiny_model):
    studio, run, queued = trained
    rows = table_rows(studio)
    assert len(rows) == 2 and all(len(r) == len(COLUMNS) for r in rows)
    col = {name: i for i, name in enumerate(COLUMNS)}
    newest, done = rows
    assert newest[col["run id"]] == queued.run_id and done[col["run id"]] == run.run_id
    assert done[col["name"]] == "a-first" and done[col["method"]] == "lora" and done[col["model"]] == Path(tiny_model).name  # folder name, not the whole path
    assert done[col["status"]] == "completed" and done[col["steps"]] == "3/3"
    assert isinstance(done[col["train loss"]], float) and done[col["eval loss"]] is None
    assert done[col["peak GiB"]] > 0 and done[col["duration"]].endswith("s")
    assert newest[col["status"]] == "queued" and newest[col["steps"]] == "0/?"
    assert newest[col["train loss"]] is None and newest[col["duration"]] == ""
    assert table_rows(Studio(studio.runs_dir / "empty")) == []


# --- ui.context.Studio -----------------------------------------------------------------------

@pytest.fixture
def studio(tmp_path):
    return Studio(tmp_path / "runs")


def test_checked_data_path_accepts_samples_and_uploads(studio, chat_file):
    sample = ASSETS / "tiny_facts.jsonl"
    assert studio.checked_data_path(str(sample)) == str(sample.resolve())
    kept = studio.keep_upload(str(chat_file))
    assert studio.checked_data_path(str(kept)) == str(kept.resolve())


@pytest.mark.parametrize("make_bad", [
    lambda s: "/etc/passwd",
    lambda s: str(ASSETS / ".." / "README.md"),                     # exists, but outside assets/
    lambda s: str(s.runs_dir / UPLOADS / ".." / "secret.jsonl"),     # exists, next to the uploads
    lambda s: str(ASSETS / "no_such_file.jsonl"),
    lambda s: str(s.runs_dir / UPLOADS / "missing.jsonl"),
    lambda s: str(ASSETS),                                            # a folder, not a file
])
def test_checked_data_path_refuses(studio, make_bad):
    (studio.runs_dir / "secret.jsonl").write_text("{}\n")
    (studio.runs_dir / UPLOADS).mkdir(exist_ok=True)
    bad = make_bad(studio)
    with pytest.raises(UserError, match="upload it with validate_data first"):
        studio.checked_data_path(bad)


def test_checked_data_path_refuses_a_symlink_out_of_uploads(studio, tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text("{}\n")
    (studio.runs_dir / UPLOADS).mkdir()
    link = studio.runs_dir / UPLOADS / "link.jsonl"
    link.symlink_to(outside)
    with pytest.raises(UserError):
        studio.checked_data_path(str(link))


@pytest.mark.parametrize("name", ["tool.exe", "run.sh", "noext", "data.jsonl.exe"])
def test_keep_upload_refuses_other_types(studio, tmp_path, name):
    f = tmp_path / name
    f.write_text("x")
    with pytest.raises(UserError, match="not accepted"):
        studio.keep_upload(str(f))
    assert not (studio.runs_dir / UPLOADS).exists() or not any((studio.runs_dir / UPLOADS).iterdir())


def test_keep_upload_copies_into_uploads(studio, chat_file, tmp_path):
    kept = studio.keep_upload(str(chat_file))
    assert kept.parent == studio.runs_dir / UPLOADS
    assert re.fullmatch(r"[0-9a-f]{64}\.jsonl", kept.name) and kept.read_bytes() == chat_file.read_bytes()
    # content-addressed: the same content again gives the same file, other content another
    assert studio.keep_upload(str(chat_file)) == kept
    other = tmp_path / "sub"
    other.mkdir()
    (other / "chat.jsonl").write_text("{}\n")
    assert studio.keep_upload(str(other / "chat.jsonl")) != kept
    # a name never reaches the file name; it is kept beside it, for display only
    weird = tmp_path / "my data;rm -rf.JSONL"
    weird.write_text("{}\n")
    kept_weird = studio.keep_upload(str(weird))
    assert re.fullmatch(r"[0-9a-f]{64}\.jsonl", kept_weird.name) and studio.upload_name(kept_weird) == weird.name


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "nope-0000", "/etc"])
def test_run_refuses_bad_and_unknown_ids(studio, bad):
    with pytest.raises(UserError):
        studio.run(bad)


def test_run_finds_a_real_run(trained):
    studio, run, _ = trained
    assert studio.run(run.run_id).path == run.path.resolve()
    assert [r.run_id for r in studio.runs()] == [run.run_id, trained[2].run_id]
    assert studio.latest_run_id() == trained[2].run_id


def test_every_run_setting_has_a_widget_somewhere():
    """Every RunConfig field is set by a studio widget: the Advanced accordion, the Data tab
    (data settings), the Train tab's top (model, method, run name, and with 2+ GPUs the GPU row),
    or by the server (runs_dir)."""
    import dataclasses

    from ft_engine.config import RunConfig
    from ui.form import ADVANCED_FIELDS
    elsewhere = {"data", "data_format", "max_seq_len", "val_fraction", "train_on_prompt",  # Data tab
                 "model", "method", "run_name",  # top of the Train tab
                 "devices", "strategy", "fsdp_cpu_offload",  # its GPU row ("use all N GPUs")
                 "runs_dir"}  # the server's FT_RUNS_DIR, never a user value
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert fields == set(ADVANCED_FIELDS) | elsewhere
    assert not set(ADVANCED_FIELDS) & elsewhere


def test_chat_model_is_reloaded_when_the_result_is_replaced(trained):
    """A resumed run saves a new adapter/ (a new folder renamed into place): chat must not
    keep answering with the copy it loaded before."""
    import shutil
    studio, run, _ = trained
    first = studio.chat_model(run.run_id)
    assert studio.chat_model(run.run_id) is first  # unchanged result: the loaded model is kept
    replacement = run.path / ".adapter.new"
    shutil.copytree(run.path / "adapter", replacement)
    shutil.rmtree(run.path / "adapter")
    replacement.replace(run.path / "adapter")
    assert studio.chat_model(run.run_id) is not first
    studio.forget_chat(run.run_id)
    assert studio._chat is None
