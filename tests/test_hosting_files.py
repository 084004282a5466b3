"""Issue 11, files a stranger can send or spoil (items 5, 6, 9, 10): settings_json that tries to
set what has its own parameter; damaged lines in metrics.jsonl / events.jsonl; long rows in the
preview, advice past the model's context, kept uploads stored once and cleaned; a relative
model name that would tell whether a folder exists under the app's working folder.

The API parts run against one app started for this module (tests/app_server.py), driven with
gradio_client as a visitor would; the rest runs in process.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_server import REPO, running_app
from gradio_client import handle_file

from ft_engine.config import RunConfig
from ft_engine.errors import ConfigError, UserError
from ft_engine.rundir import EVENTS_FILE, METRICS_FILE, RunDir, summarize
from ui.context import NAME_SIDECAR, UNUSED_UPLOAD_KEEP_S, UPLOADS, Studio
from ui.form import START_TRAINING_PARAMETERS, check_model_value, settings_from_json

SAMPLE = REPO / "assets" / "tiny_facts.jsonl"
LONG_FIELD_CHARS = 1_000_000  # one answer of a million characters: ~3 s to tokenize with the tiny model
GOOD_RUN, DAMAGED_RUN = "20260101-000000-good-0000", "20260101-000001-damaged-0000"

pytestmark = pytest.mark.usefixtures("server_log_on_failure")


# --- a run as the engine leaves it, and the damage a line can carry ------------------------------

def metrics_row(step: int, **extra) -> dict:
    return {"step": step, "epoch": step / 10, "loss": 3.0 - step / 10, "learning_rate": 1e-3, "grad_norm": None,
            "tokens_per_second": 100.0, "elapsed_s": float(step), "mem_used_mib": 10.0, "mem_peak_mib": 12.0,
            "mem_device": "cpu", **extra}


def event_row(step: int | None, kind: str) -> dict:
    return {"time": "2026-01-01T00:00:00.000+00:00", "step": step, "event": kind, "message": f"{kind} here"}


def line(row) -> bytes:
    return json.dumps(row).encode() + b"\n"


# every kind of line this program never writes: each is skipped and counted, the run still shows
DAMAGED_METRICS = [
    b"null\n", b"42\n", b"[1, 2]\n", b'"text"\n',
    line({"step": 2, "loss": "abc", "elapsed_s": 2.0}),        # text where a number goes
    line({"loss": 2.0, "elapsed_s": 2.0}),                       # no step
    line({"step": True, "loss": 2.0, "elapsed_s": 2.0}),         # a boolean is no step
    line({"step": 2, "loss": 2.0}),                              # no elapsed time
    line(metrics_row(2, mem_peak_mib=None)),                     # null where the peak goes
    b'{"step": 2, "loss": 2.5, "elaps\n',                        # torn, in the middle of the file
    b"\xff\xfe not utf-8 \x89\n",
]
DAMAGED_EVENTS = [b"null\n", b"{}\n", line({**event_row(1, "x"), "time": 5}), line({**event_row(1, "x"), "step": "1"}),
                  b'{"time": "2026-01-01T00:00:00", "ev\n', b"\xc3\x28\n"]
CUT_OFF_LAST = b'{"step": 4, "lo'  # no newline: the write a crash interrupted


def plant_run(runs_dir: Path, run_id: str, metrics: bytes, events: bytes) -> Path:
    run = runs_dir / run_id
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"run_id": run_id, "status": "completed", "step": 3,
                                                 "total_steps": 3, "method": "lora", "model": "bundled"}))
    (run / "config.yaml").write_text(RunConfig(data="x.jsonl").to_yaml())
    (run / "metrics.jsonl").write_bytes(metrics)
    (run / "events.jsonl").write_bytes(events)
    return run


def good_metrics() -> bytes:
    return b"".join(line(metrics_row(s)) for s in (1, 2, 3)) + line({**metrics_row(3), "eval_loss": 2.2})


def good_events() -> bytes:
    return line(event_row(0, "started")) + line(event_row(3, "completed"))


def damaged_metrics() -> bytes:
    good = [line(metrics_row(s)) for s in (1, 2, 3)]
    return good[0] + b"".join(DAMAGED_METRICS[:6]) + good[1] + b"".join(DAMAGED_METRICS[6:]) + good[2] + CUT_OFF_LAST


def damaged_events() -> bytes:
    return line(event_row(0, "started")) + b"".join(DAMAGED_EVENTS) + line(event_row(3, "completed"))


METRICS_NOTE = (f"{len(DAMAGED_METRICS)} damaged lines skipped in metrics.jsonl; the cut-off last line of "
                f"metrics.jsonl skipped (normal after a crash)")
EVENTS_NOTE = f"{len(DAMAGED_EVENTS)} damaged lines skipped in events.jsonl"


# --- the app ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("hosting-files")
    runs = d / "runs"
    plant_run(runs, GOOD_RUN, good_metrics(), good_events())
    plant_run(runs, DAMAGED_RUN, damaged_metrics(), damaged_events())
    with running_app(runs, d / "server.log", while_booting=lambda: request.getfixturevalue("tiny_model")) as (
            url, proc, log):
        yield SimpleNamespace(url=url, proc=proc, log=log, runs_dir=runs)


def run_folders(runs_dir: Path) -> set[str]:
    return {p.name for p in runs_dir.iterdir() if not p.name.startswith(".")}


def start(client, settings: dict | str, model: str, method: str = "lora") -> dict:
    return client.predict(data_path=str(SAMPLE), model=model, method=method, preset="Quick demo",
                          settings_json=settings if isinstance(settings, str) else json.dumps(settings),
                          api_name="/start_training")


# --- 5. settings_json cannot set what has its own parameter ----------------------------------------

@pytest.mark.parametrize("key, value, says", [
    ("method", "full", "use the `method` parameter of start_training"),
    ("model", "bundled", "use the `model` parameter of start_training"),
    ("data", str(SAMPLE), "use the `data_path` parameter of start_training"),
    ("data_path", str(SAMPLE), "use the `data_path` parameter of start_training"),
    ("runs_dir", "/tmp/elsewhere", "its own runs folder (FT_RUNS_DIR"),
    ("preset", "Thorough", "use the `preset` parameter of start_training"),
])
def test_settings_json_cannot_set_a_parameter(client, app, tiny_model, key, value, says):
    before = run_folders(app.runs_dir)
    res = start(client, {"max_steps": 1, key: value}, tiny_model)
    assert res["run_id"] == "" and res["position"] is None, res
    assert f"settings_json cannot set {key}: " in res["message"] and says in res["message"], res
    assert "\n" not in res["message"]
    assert run_folders(app.runs_dir) == before  # refused before anything was created


@pytest.mark.parametrize("settings, says", [
    ({"max_steps": None}, "settings_json gives max_steps no value (null)"),
    ({"scheduler": ""}, "settings_json gives scheduler no value (\"\")"),
    ({"learning_rat": 1e-3}, "settings_json: unknown setting 'learning_rat' (settings it can set: "),
    ('{"max_steps": 1, "max_steps": 500}', "settings_json sets max_steps more than once"),
    ("{max_steps: 1}", "settings_json is not valid JSON (Expecting property name enclosed in double quotes"),
    ("[1]", "settings_json must be a JSON object"),
])
def test_settings_json_never_drops_a_value_silently(client, app, tiny_model, settings, says):
    before = run_folders(app.runs_dir)
    res = start(client, settings, tiny_model)
    assert res["run_id"] == "" and says in res["message"] and "\n" not in res["message"], res
    assert run_folders(app.runs_dir) == before


def test_every_refused_key_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        settings_from_json('{"method": "full", "model": "x", "runs_dir": "/", "nope": 1, "seed": null}',
                           "start_training", START_TRAINING_PARAMETERS)
    assert len(info.value.problems) == 5
    # the settings it may set are listed, the ones it may not are not
    can_set = str(info.value).split("settings it can set: ")[1].split(")")[0].split(", ")
    assert "max_steps" in can_set and not {"method", "model", "data", "runs_dir"} & set(can_set)


def test_good_settings_still_start_and_are_used(client, app, tiny_model):
    res = start(client, {"max_steps": 1, "checkpoint_steps": 0, "run_name": ""}, tiny_model, method="full")
    assert res["run_id"], res
    config = (app.runs_dir / res["run_id"] / "config.yaml").read_text()
    assert "method: full" in config and "max_steps: 1" in config


def test_compare_methods_refuses_its_own_parameters(client, app, tiny_model):
    before = run_folders(app.runs_dir), sorted((app.runs_dir / ".comparisons").glob("*"))
    res = client.predict(str(SAMPLE), tiny_model, 2, "lora", "", json.dumps({"max_steps": 50, "method": "full"}),
                         api_name="/compare_methods")
    assert res["comparison_id"] == "", res
    assert "settings_json cannot set max_steps: use the `max_steps` parameter of compare_methods" in res["message"]
    assert "settings_json cannot set method: use the `methods` parameter of compare_methods" in res["message"]
    assert (run_folders(app.runs_dir), sorted((app.runs_dir / ".comparisons").glob("*"))) == before


# --- 6. a damaged line costs that line, not the run, not the list ----------------------------------

def test_reader_skips_and_counts_every_kind_of_damage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(damaged_metrics())
    lines = RunDir(tmp_path).metrics()
    assert [r["step"] for r in lines.rows] == [1, 2, 3]
    assert (lines.damaged, lines.cut_off_last) == (len(DAMAGED_METRICS), True)
    assert lines.note("metrics.jsonl") == METRICS_NOTE
    # what the engine writes is whole: a NaN loss (a diverged run) and a null learning rate are kept
    path.write_bytes(line(metrics_row(1, loss=float("nan"), learning_rate=None)) + line(metrics_row(2)))
    run = RunDir(tmp_path)
    assert len(run.read_metrics()) == 2 and run.metrics().note("metrics.jsonl") == ""
    assert RunDir(tmp_path / "none").metrics().rows == []  # no file yet: no rows, no note


def test_list_runs_shows_both_runs_and_says_what_was_skipped(client):
    rows = {r["run_id"]: r for r in client.predict(api_name="/list_runs")}
    good, damaged = rows[GOOD_RUN], rows[DAMAGED_RUN]
    assert good["notes"] == "" and good["skipped_lines"] == {METRICS_FILE: 0}
    assert good["train_loss"] == pytest.approx(2.7) and good["eval_loss"] == pytest.approx(2.2)
    assert damaged["status"] == "completed" and damaged["train_loss"] == pytest.approx(2.7)  # the last whole row
    assert damaged["elapsed_s"] == 3.0 and damaged["peak_mib"] == 12.0
    assert damaged["notes"] == METRICS_NOTE and damaged["skipped_lines"] == {METRICS_FILE: len(DAMAGED_METRICS) + 1}


def test_run_status_of_a_damaged_run_and_of_the_one_beside_it(client):
    damaged = client.predict(run_id=DAMAGED_RUN, api_name="/run_status")
    assert damaged["status"] == "completed" and damaged["metrics_rows"] == 3 and damaged["loss"] == pytest.approx(2.7)
    assert [e["event"] for e in damaged["events"]] == ["started", "completed"]
    assert damaged["notes"] == f"{METRICS_NOTE}; {EVENTS_NOTE}"
    assert damaged["skipped_lines"] == {METRICS_FILE: len(DAMAGED_METRICS) + 1, EVENTS_FILE: len(DAMAGED_EVENTS)}
    good = client.predict(run_id=GOOD_RUN, api_name="/run_status")
    assert good["status"] == "completed" and good["metrics_rows"] == 4 and good["notes"] == ""


def test_the_views_draw_the_damaged_run_and_say_so(app):
    from ui.charts import loss_overlay, memory_curve, training_curves
    from ui.monitor_tab import events_markdown, run_report, status_html
    from ui.runs_tab import COLUMNS, table_rows
    studio = Studio(app.runs_dir)
    rows = {row[-1]: dict(zip(COLUMNS, row)) for row in table_rows(studio)}
    assert rows[DAMAGED_RUN]["notes"] == METRICS_NOTE and rows[GOOD_RUN]["notes"] == ""
    assert rows[DAMAGED_RUN]["status"] == "completed" and rows[DAMAGED_RUN]["train loss"] == 2.7
    report = run_report(studio, DAMAGED_RUN)
    assert html.escape(f"⚠️ {METRICS_NOTE}; {EVENTS_NOTE}") in status_html(report)
    assert "started" in events_markdown(report["events"])
    metrics = studio.run(DAMAGED_RUN).read_metrics()
    assert list(training_curves(metrics).data[0].x) == [1, 2, 3]
    assert list(memory_curve(metrics, "memory", 20.0).data[1].y) == [12.0] * 3
    assert len(loss_overlay({DAMAGED_RUN: metrics, GOOD_RUN: studio.run(GOOD_RUN).read_metrics()}).data) == 2
    assert "⚠️" not in status_html(run_report(studio, GOOD_RUN))


def test_summarize_of_a_run_whose_every_line_is_damaged(tmp_path):
    run = RunDir(plant_run(tmp_path, GOOD_RUN, b"null\n" * 3, b"[]\n"))
    s = summarize(run)
    assert (s["train_loss"], s["elapsed_s"], s["notes"]) == (None, None, "3 damaged lines skipped in metrics.jsonl")


# --- 9. the preview shows the start of a long field; advice within the model's context -------------

@pytest.fixture(scope="module")
def long_row_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long") / "long answer.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Say a lot."},
                          {"role": "assistant", "content": "a" * LONG_FIELD_CHARS}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preview_sends_the_start_and_the_length_of_a_long_field(client, app, tiny_model, long_row_file):
    from ft_engine.preview import PREVIEW_EXAMPLE_CHARS, PREVIEW_FIELD_CHARS
    summary, _, examples, data_path = client.predict(handle_file(str(long_row_file)), None, tiny_model, 256, False,
                                                     "auto", api_name="/validate_data")
    assert data_path, summary
    text = html.unescape(examples)
    assert f"{'a' * PREVIEW_FIELD_CHARS}… ({LONG_FIELD_CHARS:,} characters)" in text
    assert len(examples) < 2 * (PREVIEW_FIELD_CHARS + PREVIEW_EXAMPLE_CHARS)  # not the million characters
    # the token counts still come from the whole row, and the advice stops at the model's context (512)
    summary = html.unescape(summary)
    assert "1 row longer than 256 tokens" in summary and "Raise the maximum length to 512 (this model's context" in summary
    assert f"Raise the maximum length to {LONG_FIELD_CHARS}" not in summary


def test_a_row_with_many_fields_is_cut_too(tiny_model, tmp_path):
    from ft_engine.preview import PREVIEW_EXAMPLE_CHARS, preview_data
    path = tmp_path / "many.jsonl"
    turns = [{"role": "user", "content": "u" * 300}, {"role": "assistant", "content": "b" * 300}] * 30
    path.write_text(json.dumps({"messages": turns}) + "\n")
    pieces = preview_data(str(path), model=tiny_model, max_seq_len=512).examples[0]
    shown = "".join(text for text, _ in pieces[:-1])
    assert len(shown) == PREVIEW_EXAMPLE_CHARS and pieces[-1][0].endswith("more characters in this row)")


def test_advice_never_goes_past_the_models_context(tiny_model):
    from ft_engine.preview import preview_data
    from ui.data_tab import summary_markdown
    long_row = str(REPO / "tests" / "bad_input" / "long_row.jsonl")  # line 4: 1,164 tokens; the model reads 512
    at_64 = summary_markdown(preview_data(long_row, model=tiny_model, max_seq_len=64), long_row)
    assert "Raise the maximum length to 512 (this model's context: it reads at most 512 tokens)" in at_64
    assert "1164 to keep" not in at_64
    at_512 = summary_markdown(preview_data(long_row, model=tiny_model, max_seq_len=512), long_row)
    assert "Raise the maximum length" not in at_512 and "can't go higher" in at_512 and "shorten or split" in at_512


def test_every_answer_cut_at_the_context_says_shorten_not_raise(tiny_model, tmp_path):
    from ft_engine.preview import preview_data
    path = tmp_path / "long_prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q " * 2000},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    with pytest.raises(UserError) as info:
        preview_data(str(path), model=tiny_model, max_seq_len=512)
    assert "shorten the prompts (max_seq_len is already this model's context, 512 tokens)" in str(info.value)
    assert "raise max_seq_len" not in str(info.value)


# --- 9. kept uploads: one file per content, dropped once no run uses them ---------------------------

def kept_files(studio: Studio) -> list[str]:
    return sorted(p.name for p in (studio.runs_dir / UPLOADS).iterdir())


def upload(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / f"gradio-{name}-{len(text)}"  # Gradio keeps each upload in a folder of its own
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_the_same_content_is_kept_once_whatever_its_name(tmp_path):
    studio = Studio(tmp_path / "runs")
    first = studio.keep_upload(str(upload(tmp_path, "facts.jsonl", '{"text": "x"}\n')))
    second = studio.keep_upload(str(upload(tmp_path, "facts (copy).JSONL", '{"text": "x"}\n')))
    assert first == second and first.name == f"{first.stem}.jsonl" and len(first.stem) == 64
    assert kept_files(studio) == [first.name, first.name + NAME_SIDECAR]
    assert studio.upload_name(first) == "facts (copy).JSONL"  # the name last given, for display only
    other = studio.keep_upload(str(upload(tmp_path, "facts.jsonl", '{"text": "y"}\n')))
    assert other != first and len(kept_files(studio)) == 4


def test_the_name_file_and_a_half_copy_are_never_training_data(tmp_path):
    studio = Studio(tmp_path / "runs")
    kept = studio.keep_upload(str(upload(tmp_path, "a.jsonl", '{"text": "x"}\n')))
    half = kept.with_name(f".{kept.name}.part")
    half.write_text('{"text": "x"}\n')
    for bad in (kept.with_name(kept.name + NAME_SIDECAR), half):
        with pytest.raises(UserError, match="upload it with validate_data first"):
            studio.checked_data_path(str(bad))
    assert studio.checked_data_path(str(kept)) == str(kept.resolve())


def test_cleanup_drops_only_old_uploads_no_run_uses(tmp_path):
    studio = Studio(tmp_path / "runs")
    used, old, young = (studio.keep_upload(str(upload(tmp_path, f"{n}.jsonl", f'{{"text": "{n}"}}\n')))
                        for n in ("used", "old", "young"))
    run = plant_run(studio.runs_dir, GOOD_RUN, good_metrics(), good_events())
    (run / "config.yaml").write_text(RunConfig(data=str(used)).to_yaml())
    orphan = studio.runs_dir / UPLOADS / ("0" * 64 + ".csv" + NAME_SIDECAR)  # its upload is gone
    orphan.write_text("gone.csv")
    half = studio.runs_dir / UPLOADS / ".crashed.jsonl.part"
    half.write_text("{")
    for p in (used, old, half):
        age(p, UNUSED_UPLOAD_KEEP_S + 60)
    removed = studio.clean_uploads()
    assert sorted(removed) == sorted([old.name, old.name + NAME_SIDECAR, orphan.name, half.name])
    assert kept_files(studio) == sorted([used.name, used.name + NAME_SIDECAR, young.name, young.name + NAME_SIDECAR])
    assert studio.clean_uploads() == []  # nothing more to drop


def test_picking_an_upload_for_a_run_keeps_it(tmp_path):
    studio = Studio(tmp_path / "runs")
    kept = studio.keep_upload(str(upload(tmp_path, "a.jsonl", '{"text": "x"}\n')))
    age(kept, UNUSED_UPLOAD_KEEP_S + 60)
    studio.checked_data_path(str(kept))  # what Start and the forecast do with the data path
    assert studio.clean_uploads() == [] and kept.is_file()
    age(kept, UNUSED_UPLOAD_KEEP_S + 60)
    studio.keep_upload(str(upload(tmp_path, "again.jsonl", '{"text": "x"}\n')))  # uploaded once more
    assert kept.is_file() and studio.upload_name(kept) == "again.jsonl"


def test_deleting_the_last_run_of_an_upload_drops_it(tmp_path):
    studio = Studio(tmp_path / "runs")
    kept = studio.keep_upload(str(upload(tmp_path, "a.jsonl", '{"text": "x"}\n')))
    for run_id in (GOOD_RUN, DAMAGED_RUN):
        run = plant_run(studio.runs_dir, run_id, good_metrics(), good_events())
        (run / "config.yaml").write_text(RunConfig(data=str(kept)).to_yaml())
    age(kept, UNUSED_UPLOAD_KEEP_S + 60)
    studio.delete_run(GOOD_RUN)
    assert kept.is_file()  # the other run still trains on it (or may be resumed)
    studio.delete_run(DAMAGED_RUN)
    assert not kept.exists() and kept_files(studio) == []


def test_the_app_drops_unused_uploads_as_it_starts(tmp_path, monkeypatch):
    from ui.context import studio_from_env
    monkeypatch.setenv("FT_RUNS_DIR", str(tmp_path / "runs"))
    kept = Studio(tmp_path / "runs").keep_upload(str(upload(tmp_path, "a.jsonl", '{"text": "x"}\n')))
    age(kept, UNUSED_UPLOAD_KEEP_S + 60)
    studio_from_env()
    assert kept_files(Studio(tmp_path / "runs")) == []


# --- 10. a relative model name gets one answer, whether or not a folder of that name exists ---------

# (a folder of that name under the app's working folder, the repo; a name with nothing there)
NAMES = [("assets", "nonexistentdir"), ("ft_engine", "no_such_engine"), ("assets/", "nonexistentdir/"),
         ("assets/examples/", "assets/nothing/"), ("./assets", "./nonexistentdir")]


def same_answer(answers: dict[str, str]) -> set[str]:
    return {text.replace(repr(name), "NAME").replace(name, "NAME") for name, text in answers.items()}


@pytest.mark.parametrize("there, not_there", NAMES)
def test_a_relative_model_name_gets_one_answer(client, app, there, not_there):
    assert (REPO / there).is_dir() and not (REPO / not_there).exists()
    before = run_folders(app.runs_dir)
    started = {name: start(client, {"max_steps": 1}, name)["message"] for name in (there, not_there)}
    checked = {name: client.predict(None, "tiny_facts.jsonl", name, 256, False, "auto", api_name="/validate_data")[0]
               for name in (there, not_there)}
    assert len(same_answer(started)) == 1, started
    assert len(same_answer(checked)) == 1, checked
    assert run_folders(app.runs_dir) == before
    assert "is neither 'bundled', a hub id" in started[there] or "no model folder at" in started[there]


def test_hub_ids_and_model_folders_still_pass(tiny_model):
    assert check_model_value("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert check_model_value(" bundled ") == "bundled"
    assert check_model_value(tiny_model) == tiny_model
    with pytest.raises(ConfigError, match="is neither 'bundled', a hub id of the form owner/name"):
        check_model_value("gpt2")  # a bare name is never looked up on disk
