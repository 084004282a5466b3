"""ui/api.py without a server: the scripting API's functions called directly on a studio, and
what `register` serves (names and parameters, as gradio_client sees them). Through a real server
they are tested in test_app_client.py, test_hosting_*.py and test_security.py."""

from __future__ import annotations

import gradio as gr
import pytest

from ui import api
from ui.context import Studio

# What a script calls, exactly: changing one breaks every script written against the studio.
PARAMETERS = {
    "start_training": ["data_path", "model", "method", "preset", "settings_json", "start_anyway"],
    "stop_training": ["run_id"],
    "resume_run": ["run_id"],
    "run_status": ["run_id"],
    "list_runs": [],
    "chat": ["run_id", "message", "use_adapter", "max_new_tokens", "temperature", "system_prompt"],
    "compare_methods": ["data_path", "model", "max_steps", "methods", "prompt", "settings_json"],
    "comparison": ["comparison_id"],
    "stop_comparison": ["comparison_id"],
}


@pytest.fixture
def studio(tmp_path) -> Studio:
    return Studio(tmp_path / "runs")


def test_register_serves_every_endpoint_with_its_parameters(studio):
    """The studio is given by register, never asked of the caller; gr.Request is Gradio's."""
    with gr.Blocks() as demo:
        api.register(studio)
    endpoints = demo.get_api_info()["named_endpoints"]
    assert {name: [p["parameter_name"] for p in e["parameters"]] for name, e in endpoints.items()} == \
        {f"/{name}": params for name, params in PARAMETERS.items()}
    start = endpoints["/start_training"]
    assert [p.get("parameter_default") for p in start["parameters"][1:]] == ["bundled", "lora", "Quick demo", "{}",
                                                                          False]
    assert "Start (or queue) a run" in start["description"]  # the docstring, without the studio


def test_an_empty_studio_answers_every_call(studio):
    assert api.list_runs(studio) == []
    assert api.run_status(studio) == {"run_id": "", "status": None, "message": "no runs yet"}
    assert api.comparison(studio) == {"comparison_id": "", "status": None, "message": "no comparisons yet"}


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "no-such-run"])
def test_bad_ids_are_answered_not_raised(studio, bad):
    assert "nothing to stop" in api.stop_training(studio, bad)
    assert api.resume_run(studio, bad)["run_id"] == ""
    status = api.run_status(studio, bad)
    assert status["run_id"] == bad and status["status"] is None and status["message"]
    assert api.stop_comparison(studio, bad)
    assert api.comparison(studio, bad)["status"] is None
    assert api.chat(studio, bad, "hi").startswith("error: ")


def test_a_data_path_must_come_from_validate_data(studio):
    answer = api.start_training(studio, "/etc/passwd")
    assert answer["run_id"] == "" and answer["position"] is None
    assert "validate_data" in answer["message"] and studio.runs() == []
    compared = api.compare_methods(studio, "/etc/passwd")
    assert compared["comparison_id"] == "" and "validate_data" in compared["message"]


def test_settings_json_may_not_override_a_parameter(studio, chat_file):
    data = str(studio.keep_upload(str(chat_file)))
    answer = api.start_training(studio, data, settings_json='{"method": "full"}')
    assert answer["run_id"] == "" and "method" in answer["message"] and studio.runs() == []


def test_chat_refuses_an_empty_message(studio):
    assert api.chat(studio, "any", "   ") == "error: message is empty: ask something"
    assert api.chat(studio, "any", "hi", max_new_tokens="many").startswith("error: max_new_tokens must be")


def test_a_run_started_here_is_listed_reported_and_answers(studio, tiny_model, chat_file):
    """start_training → run_status → list_runs → chat, as a script does it, in this process."""
    data = str(studio.keep_upload(str(chat_file)))
    started = api.start_training(studio, data, model=tiny_model,
                                 settings_json='{"max_steps": 2, "batch_size": 2, "checkpoint_steps": 0}')
    assert started["run_id"] and started["position"] in (0, None), started
    studio.worker.wait_idle(timeout=120)
    status = api.run_status(studio)  # the latest run when no id is given
    assert status["run_id"] == started["run_id"]
    assert status["status"] == "completed" and status["step"] == status["total_steps"] == 2
    assert [r["run_id"] for r in api.list_runs(studio)] == [started["run_id"]]
    reply = api.chat(studio, started["run_id"], "What is the capital of Zubrowka?", max_new_tokens=4)
    assert isinstance(reply, str) and not reply.startswith("error:"), reply
    assert "completed" in api.resume_run(studio, started["run_id"])["message"]  # nothing left to train
    assert "nothing to stop" in api.stop_training(studio, started["run_id"])
