"""The studio's scripting API (gradio_client), in one place: plain functions of the studio, so
each can be read, and called in a test, without building the page. `register(studio)` puts them
on the page, under their own names: `/start_training`, `/run_status`, `/chat`...

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    data_path = client.predict(None, "zubrowka_facts.jsonl", "bundled", 256, False, "auto",
                               api_name="/validate_data")[3]
    run = client.predict(data_path=data_path, settings_json='{"max_steps": 5}', api_name="/start_training")
    client.predict(run_id=run["run_id"], api_name="/run_status")

Bad input never raises here: each answer says what to fix (an empty id and a `message`, or a
reply starting "error:"), so a script reads one shape of answer whatever happened.

Four more endpoints are the page's own events and stay with their widgets, since what they take
and give are those widgets' (a file upload, a download Gradio serves, a streamed table):
/validate_data (Data tab), /export_run, /evaluate_run and /stop_evaluation (Runs tab).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import gradio as gr

from ft_engine import compare
from ft_engine.errors import UserError
from ft_engine.rundir import summarize

from . import limits
from .chat_tab import DEFAULT_MAX_NEW_TOKENS, as_flag, as_number, as_text
from .compare_view import comparison_choices, comparison_report, start_comparison
from .compare_view import stop_comparison as stop_submitted_comparison
from .context import Studio
from .form import (
    COMPARE_METHODS_PARAMETERS,
    START_TRAINING_PARAMETERS,
    config_from_form,
    preset_values,
    settings_from_json,
)
from .monitor_tab import run_report
from .train_tab import DEFAULT_PRESET, forecast_refusal, queue_message, start_anyway_off

# --- runs -----------------------------------------------------------------------------------------

def start_training(studio: Studio, data_path: str, model: str = "bundled", method: str = "lora",
                   preset: str = DEFAULT_PRESET, settings_json: str = "{}", start_anyway: bool = False,
                   request: gr.Request | None = None) -> dict:
    """Start (or queue) a run. data_path: as returned by validate_data. settings_json: any
    RunConfig fields as a JSON object, e.g. {"max_steps": 5}. A run the memory forecast
    says will not fit is refused unless start_anyway (which a demo, or a shared studio
    without login, does not honour: there the refusal is final). Returns run_id, position
    and message; on bad input run_id is empty and message says what to fix."""
    try:
        # refused, not overridden: a key with its own parameter (method, model, data_path), or runs_dir
        settings = settings_from_json(settings_json, "start_training", START_TRAINING_PARAMETERS)
        form = {**preset_values(preset, method), **settings, "model": model, "method": method,
                "data": studio.checked_data_path(data_path), "runs_dir": str(studio.runs_dir)}
        config = config_from_form(form)
        off = start_anyway_off(request)
        refusal = None if start_anyway and not off else forecast_refusal(config, off)
        if refusal:
            return {"run_id": "", "position": None, "message": refusal}
        run = studio.worker.submit(config)
    except (UserError, ValueError) as e:
        return {"run_id": "", "position": None, "message": str(e)}
    return {"run_id": run.run_id, "position": studio.worker.position(run.run_id),
            "message": queue_message(studio, run.run_id)}


def stop_training(studio: Studio, run_id: str) -> str:
    """Stop a running run after its current step, or remove a queued one."""
    try:
        return studio.worker.stop(run_id)
    except UserError as e:
        return str(e)


def resume_run(studio: Studio, run_id: str) -> dict:
    """Continue a stopped or interrupted run from its last checkpoint to its planned number of
    steps; it joins the queue like a new run. Returns run_id, position (runs ahead of it) and
    message, as start_training does; when it cannot resume, run_id is empty and message says why."""
    try:
        run = studio.worker.resume(studio.run(run_id))
    except UserError as e:
        return {"run_id": "", "position": None, "message": str(e)}
    studio.forget_chat(run.run_id)  # its result is replaced when the resumed run ends
    return {"run_id": run.run_id, "position": studio.worker.position(run.run_id),
            "message": queue_message(studio, run.run_id)}


def run_status(studio: Studio, run_id: str = "") -> dict:
    """Status of a run (the latest one when run_id is empty): status, step, total_steps,
    elapsed_s, eta_s, queue_position, loss, tokens_per_second, mem_peak_mib, error, events."""
    run_id = run_id or studio.latest_run_id() or ""
    if not run_id:
        return {"run_id": "", "status": None, "message": "no runs yet"}
    try:
        return run_report(studio, run_id)
    except UserError as e:
        return {"run_id": run_id, "status": None, "message": str(e)}


def list_runs(studio: Studio) -> list[dict]:
    """Every run on disk, newest first, with status, steps, losses, peak memory, duration."""
    return [summarize(r) for r in reversed(studio.runs())]


# --- chat -----------------------------------------------------------------------------------------

def chat(studio: Studio, run_id: str, message: str, use_adapter: bool = True,
         max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, system_prompt: str = "") -> str:
    """One reply from a finished run (use_adapter=False answers as the base model). Waits
    its turn while other answers generate. On bad input the reply starts with "error:" and
    says what to fix; an answer cut by the time limit ends with a note saying so."""
    try:
        settings = dict(use_adapter=as_flag(use_adapter, "use_adapter"),
                        max_new_tokens=as_number(max_new_tokens, "max_new_tokens", whole=True),
                        temperature=as_number(temperature, "temperature"),
                        system_prompt=as_text(system_prompt, "system_prompt") or None,
                        limits=limits.chat_limits())  # FT_CHAT_*: the Chat tab's caps too
        message = as_text(message, "message")
        if not message.strip():
            raise UserError("message is empty: ask something")
        return studio.chat_model(as_text(run_id, "run_id")).generate(message, **settings)
    except UserError as e:
        return f"error: {e}"


# --- comparisons ----------------------------------------------------------------------------------

def compare_methods(studio: Studio, data_path: str, model: str = "bundled", max_steps: int = 30,
                    methods: str = "full,lora,qlora", prompt: str = "", settings_json: str = "{}",
                    request: gr.Request | None = None) -> dict:
    """Queue full, LoRA and QLoRA on the same data and budget. data_path: as returned by
    validate_data. settings_json: shared RunConfig fields, e.g. {"batch_size": 4}; a
    learning_rate there is used by every method instead of each method's own. Returns
    comparison_id, run_ids and message; on bad input comparison_id is empty and message says
    what to fix."""
    try:
        # refused, not overridden: a key with its own parameter (model, max_steps, methods), or runs_dir
        settings = settings_from_json(settings_json, "compare_methods", COMPARE_METHODS_PARAMETERS)
        # one learning_rate given here is used by every method; otherwise each uses its own
        learning_rate = settings.pop("learning_rate", None)
        form = {**settings, "data": data_path, "model": model, "max_steps": max_steps}
        text, comparison_id = start_comparison(
            studio, form, [m.strip() for m in methods.split(",") if m.strip()], prompt,
            float(learning_rate) if learning_rate is not None else None, start_anyway_off(request))
    except (UserError, ValueError) as e:
        return {"comparison_id": "", "run_ids": {}, "message": str(e)}
    return {"comparison_id": comparison_id, "message": text,
            "run_ids": compare.comparison_by_id(studio.runs_dir, comparison_id).runs()}


def comparison(studio: Studio, comparison_id: str = "") -> dict:
    """A comparison (the newest when empty): status, which method runs, each run's step, and
    one row per method: peak memory, tokens/s, times, trainable parameters, losses,
    perplexity, saved size, sample answer."""
    ids = [i for _, i in comparison_choices(studio)]
    comparison_id = comparison_id or (ids[0] if ids else "")
    if not comparison_id:
        return {"comparison_id": "", "status": None, "message": "no comparisons yet"}
    try:
        return comparison_report(studio, comparison_id)
    except UserError as e:
        return {"comparison_id": comparison_id, "status": None, "message": str(e)}


def stop_comparison(studio: Studio, comparison_id: str) -> str:
    """Stop a comparison: the running method ends after its step, the queued ones never start."""
    try:
        return stop_submitted_comparison(studio, comparison_id)
    except UserError as e:
        return str(e)


# --- on the page ----------------------------------------------------------------------------------

# Each is served under its own name (/start_training...); the order is the API page's.
ENDPOINTS: tuple[Callable, ...] = (start_training, stop_training, resume_run, run_status, list_runs, chat,
                                   compare_methods, comparison, stop_comparison)


def register(studio: Studio) -> None:
    """Serve every endpoint for `studio`; called inside the studio's gr.Blocks (ui/studio.py)."""
    for fn in ENDPOINTS:
        gr.api(for_studio(fn, studio), api_name=fn.__name__)


def for_studio(fn: Callable, studio: Studio) -> Callable:
    """`fn` with its first parameter (the studio) given. Gradio reads an endpoint's parameters,
    type hints and description from the function it is handed (functools.partial has none), so
    the wrapper keeps fn's name, docstring and hints, and a signature without `studio`."""
    @functools.wraps(fn)
    def endpoint(*args, **kwargs):
        return fn(studio, *args, **kwargs)

    signature = inspect.signature(fn)
    endpoint.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return endpoint
