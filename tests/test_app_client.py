"""The real studio over HTTP: `python app.py` in a subprocess, driven with gradio_client through
its API endpoints (validate_data, start_training, stop_training, run_status, list_runs, chat,
export_run), on the tiny random Llama so runs take seconds."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_server import REPO, running_app  # noqa: E402
from gradio_client import handle_file
from gradio_client.exceptions import AppError

POLL_TIMEOUT = 120.0
SAMPLE = REPO / "assets" / "tiny_facts.jsonl"
BAD_ROLE = REPO / "tests" / "bad_data" / "unknown_role.jsonl"


# --- fixtures --------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("server_log_on_failure")


@pytest.fixture(scope="module")
def app(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("app")
    # the tiny model is built here while the server boots (the two overlap)
    with running_app(d / "runs", d / "server.log", timeout=90,
                     while_booting=lambda: request.getfixturevalue("tiny_model")) as (url, proc, log):
        yield SimpleNamespace(url=url, proc=proc, log=log, runs_dir=d / "runs")


def validate(client, file: Path | None, model: str, max_len: int = 256, fmt: str = "auto"):
    return client.predict(handle_file(str(file)) if file else None, None, model, max_len, False, fmt,
                          api_name="/validate_data")


def status_of(client, run_id: str) -> dict:
    return client.predict(run_id=run_id, api_name="/run_status")


def poll(client, run_id: str, done, timeout: float = POLL_TIMEOUT, every: float = 0.25) -> dict:
    """run_status until done(status) is true; fails with the last status after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        s = status_of(client, run_id)
        if done(s):
            return s
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} did not get there in {timeout:.0f} s; last status: {s}")
        time.sleep(every)


def start(client, data_path: str, model: str, settings: dict | str) -> dict:
    settings_json = settings if isinstance(settings, str) else json.dumps(settings)
    return client.predict(data_path=data_path, model=model, method="lora", preset="Quick demo",
                          settings_json=settings_json, api_name="/start_training")


@pytest.fixture(scope="module")
def validated(client, tiny_model):
    return validate(client, SAMPLE, tiny_model)


@pytest.fixture(scope="module")
def data_path(validated) -> str:
    assert validated[3], f"validate_data returned no data path: {validated}"
    return validated[3]


@pytest.fixture(scope="module")
def completed_run(client, data_path, tiny_model) -> tuple[str, dict]:
    res = start(client, data_path, tiny_model, {"max_steps": 4, "batch_size": 2, "checkpoint_steps": 0})
    assert isinstance(res, dict) and res["run_id"], res
    final = poll(client, res["run_id"], lambda s: s["status"] in ("completed", "failed", "stopped", "interrupted"))
    assert final["status"] == "completed", final
    return res["run_id"], final


# --- data ------------------------------------------------------------------------------------

def test_validate_sample_dataset(validated, app):
    summary, _histogram, examples, path = validated
    assert "12 rows" in summary and "chat" in summary
    assert "ft-trained" in examples and "ft-prompt" in examples
    kept = Path(path)
    assert kept.is_file() and kept.parent.resolve() == (app.runs_dir / ".uploads").resolve()
    assert kept.suffix == ".jsonl" and kept.with_name(kept.name + ".name").read_text() == "tiny_facts.jsonl"
    assert kept.read_bytes() == SAMPLE.read_bytes()


def test_validate_bad_file_lists_row_and_field(client, tiny_model, tmp_path):
    bad = tmp_path / "roles.jsonl"
    shutil.copyfile(BAD_ROLE, bad)
    summary, histogram, examples, path = validate(client, bad, tiny_model)
    assert "line 2" in summary and "messages[1].role" in summary and "bot" in summary, summary
    assert not path and not examples


def test_validate_rejected_extension(client, tiny_model, tmp_path):
    evil = tmp_path / "run.sh"
    evil.write_text("echo hi\n")
    # Gradio's own file_types check refuses it before the app's keep_upload sees it
    with pytest.raises(AppError, match="Invalid file type"):
        validate(client, evil, tiny_model)


# --- runs ------------------------------------------------------------------------------------

def test_short_run_completes(completed_run):
    run_id, final = completed_run
    assert final["step"] == 4 and final["total_steps"] == 4
    assert final["method"] == "lora" and final["error"] is None
    assert final["loss"] is not None and final["queue_position"] is None
    assert [e["event"] for e in final["events"]][-1] == "completed"


def test_list_runs_has_the_run(client, completed_run):
    run_id, _ = completed_run
    runs = client.predict(api_name="/list_runs")
    row = next((r for r in runs if r["run_id"] == run_id), None)
    assert row is not None, runs
    assert row["status"] == "completed" and row["step"] == 4 and row["train_loss"] is not None


def test_chat_with_the_run(client, completed_run):
    run_id, _ = completed_run
    reply = client.predict(run_id=run_id, message="What is the capital of Zubrowka?", use_adapter=True,
                           max_new_tokens=8, temperature=0.0, system_prompt="", api_name="/chat")
    assert isinstance(reply, str) and reply.strip(), repr(reply)
    assert not reply.startswith("error:")


def test_export_adapter_zip(client, completed_run):
    run_id, _ = completed_run
    path = client.predict(run_id, "adapter", api_name="/export_run")
    assert isinstance(path, str) and path.endswith(".zip"), path
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names, names


def test_export_gguf_zip(client, completed_run):
    """The GGUF download through the API: the file and its Modelfile in one zip; a quantization
    the exporter does not know is refused with the list of those it does."""
    run_id, _ = completed_run
    path = client.predict(run_id, "gguf", "q8_0", api_name="/export_run")
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
        template = z.read("Modelfile").decode()
    assert names == [f"{run_id}-q8_0.gguf", "Modelfile"], names
    assert f"FROM ./{run_id}-q8_0.gguf" in template
    with pytest.raises(AppError, match="q2"):  # not offered: Gradio's Dropdown refuses it, or the exporter
        client.predict(run_id, "gguf", "q2", api_name="/export_run")


def test_evaluate_run_through_the_api(client, completed_run, tmp_path):
    """evaluate_run answers through gradio_client: the headline and the table (tuned vs base),
    on the run's own rows or on an uploaded questions file; a bad file is named by row."""
    run_id, _ = completed_run
    line, table = client.predict(run_id, None, api_name="/evaluate_run")
    assert line.startswith("**tuned ") and "training rows" in line, line  # the run held none out
    assert len(table["data"]) == 12 + 20 and table["headers"][1] == "question"
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 2 + 2?"},
                                                  {"role": "assistant", "content": "4"}]}) + "\n")
    line, table = client.predict(run_id, handle_file(str(questions)), api_name="/evaluate_run")
    assert "q.jsonl" in line and len(table["data"]) == 1 + 20
    questions.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(AppError, match="line 1"):
        client.predict(run_id, handle_file(str(questions)), api_name="/evaluate_run")
    assert client.predict(run_id, api_name="/stop_evaluation") == "No evaluation of this run is going on."


def test_stop_a_running_run(client, data_path, tiny_model, completed_run):
    res = start(client, data_path, tiny_model, {"max_steps": 100000, "batch_size": 2, "checkpoint_steps": 0})
    run_id = res["run_id"]
    assert run_id, res
    poll(client, run_id, lambda s: s["status"] == "running" and (s["step"] or 0) >= 2, every=0.1)
    answer = client.predict(run_id=run_id, api_name="/stop_training")
    assert answer == "stopping after the current step"
    final = poll(client, run_id, lambda s: s["status"] not in ("running", "queued"))
    assert final["status"] == "stopped", final
    assert 2 <= final["step"] < 100000
    # stopping it again is answered, not crashed
    again = client.predict(run_id=run_id, api_name="/stop_training")
    assert "nothing to stop" in again


# --- bad input is answered, never crashes the server ----------------------------------------

def test_start_with_a_server_file_is_refused(client, tiny_model, app):
    res = start(client, "/etc/passwd", tiny_model, {"max_steps": 1})
    assert res["run_id"] == "" and res["position"] is None
    assert "validate_data" in res["message"] and "upload" in res["message"]


def test_start_with_bad_settings_is_refused(client, data_path, tiny_model):
    res = start(client, data_path, tiny_model, '{"learning_rate": -1}')
    assert res["run_id"] == "" and "learning_rate must be > 0" in res["message"], res
    res = start(client, data_path, tiny_model, '{"max_steps": 1, "no_such_setting": 3}')
    assert res["run_id"] == "" and "unknown setting 'no_such_setting'" in res["message"], res
    res = start(client, data_path, tiny_model, "not json")
    assert res["run_id"] == "" and res["message"], res
    res = start(client, data_path, tiny_model, "[1, 2]")
    assert res["run_id"] == "" and "JSON object" in res["message"], res


def test_settings_cannot_move_the_runs_directory(client, data_path, tiny_model, app, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    res = start(client, data_path, tiny_model, {"max_steps": 1, "checkpoint_steps": 0, "runs_dir": str(elsewhere)})
    # refused, not silently ignored (issue 11): the caller learns the setting is not theirs
    assert res["run_id"] == "" and "settings_json cannot set runs_dir" in res["message"], res
    assert not elsewhere.exists()


def test_bad_run_ids_are_answered(client, app):
    s = status_of(client, "../../etc")
    assert s["status"] is None and s["message"] and "not a run id" in s["message"], s
    s = status_of(client, "20990101-000000-nope-0000")
    assert s["status"] is None and "no run" in s["message"], s
    assert "nothing to stop" in client.predict(run_id="../x", api_name="/stop_training")
    reply = client.predict(run_id="a/b", message="hi", api_name="/chat")
    assert reply.startswith("error:"), reply
    with pytest.raises(AppError, match="not a run id"):
        client.predict("../../etc", "adapter", api_name="/export_run")


def test_server_still_up_after_bad_input(client, app):
    assert app.proc.poll() is None
    runs = client.predict(api_name="/list_runs")
    assert isinstance(runs, list)
    # bad requests created no run directories
    assert all(r["status"] in ("completed", "stopped") for r in runs), runs
