"""Train tab: model, method (as plain-language cards), presets, every setting under
"Advanced", Start / Stop, and the queue position of the run just started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import gradio as gr

from ft_engine.config import FIELD_DOCS, ComputeDtype, Method, Optimizer, Precision, QuantType, RunConfig, Scheduler
from ft_engine.errors import UserError
from ft_engine.rundir import DATA_FILE

from . import limits
from .context import Studio
from .data_tab import DataWidgets
from .forecast_view import (
    FIX_FIELDS,
    MAX_FIXES,
    Fix,
    forecast_figure,
    longest_row,
    memory_view,
    no_forecast_markdown,
    verdict_markdown,
)
from .form import (
    ADVANCED_FIELDS,
    LORA_TARGETS,
    METHOD_CARDS,
    PRESETS,
    STRATEGY_CHOICES,
    config_from_form,
    gpus_markdown,
    preset_values,
)

MODEL_CHOICES = ["bundled", "meta-llama/Llama-3.2-1B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]
# Shown in this order; a method RunConfig gains without a label here fails at import, not on the page.
METHOD_LABELS = {"lora": "LoRA (recommended)", "qlora": "QLoRA (4-bit base)", "full": "Full fine-tuning"}
METHODS = [(METHOD_LABELS[m], m) for m in sorted(get_args(Method), key=list(METHOD_LABELS).index)]
DEFAULT_PRESET = "Quick demo"


# settings that change the memory forecast: editing one redraws it (grad_accum: the effective batch it shows)
FORECAST_FIELDS = ("batch_size", "grad_accum", "optimizer", "activation_checkpointing", "lora_r", "lora_target_modules",
                   "lora_dropout", "quant_type", "double_quant", "compute_dtype", "precision")


@dataclass
class TrainWidgets:
    current_run: gr.Textbox  # id of the run started last here; the Monitor tab follows it
    update_forecast: Any     # (fn, inputs, outputs): the studio runs it once when the page loads


def gpu_names() -> list[str]:
    """The NVIDIA GPUs this machine shows, by name ([] on a CPU)."""
    from ft_engine.hardware import gpu_readings
    return [g.name for g in gpu_readings()]


def model_dropdown() -> gr.Dropdown:
    """Built unrendered: the Data tab needs it (token counts depend on the tokenizer) before
    the Train tab places it."""
    return gr.Dropdown(MODEL_CHOICES, value="bundled", allow_custom_value=True, render=False,
                       label="Model", info="'bundled' = SmolLM2-135M-Instruct, works offline. Or type any "
                       "Hugging Face id or a local folder.")


def _widget(name: str, value: Any) -> gr.components.Component:
    """One proper widget per RunConfig field; its help text is the field's own documentation."""
    info = FIELD_DOCS[name]
    label = name.replace("_", " ").capitalize()
    choices = {  # the RunConfig's own Literal types: a new value appears here by itself
        "scheduler": list(get_args(Scheduler)),
        "optimizer": list(get_args(Optimizer)),
        "quant_type": list(get_args(QuantType)),
        "compute_dtype": list(get_args(ComputeDtype)),
        "precision": list(get_args(Precision)),
    }
    if name in choices:
        return gr.Dropdown(choices[name], value=value, label=label, info=info)
    if name == "lora_target_modules":
        return gr.CheckboxGroup(LORA_TARGETS, value=value, label=label, info=info)
    if isinstance(value, bool):
        return gr.Checkbox(value, label=label, info=info)
    if name in ("warmup_ratio", "lora_dropout"):
        return gr.Slider(0.0, 0.5, value=value, step=0.01, label=label, info=info)
    if isinstance(value, int):
        return gr.Number(value, precision=0, minimum=0, label=label, info=info)
    return gr.Number(value, label=label, info=info)


def _cards(method: str) -> str:
    cells = "".join(
        f'<div class="ft-card{" ft-card-chosen" if key == method else ""}">{_md(METHOD_CARDS[key])}</div>'
        for _, key in METHODS)
    return f'<div class="ft-cards">{cells}</div>'


def _md(text: str) -> str:
    """The cards' tiny markdown (bold, italics, paragraphs) as HTML."""
    import re
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    out = re.sub(r"\*(.+?)\*", r"<i>\1</i>", out)
    return "".join(f"<p>{p}</p>" for p in out.split("\n\n"))


def queue_message(studio: Studio, run_id: str) -> str:
    return _queue_place(studio, run_id) + _rows_note(studio, run_id)


def _queue_place(studio: Studio, run_id: str) -> str:
    ahead = studio.worker.position(run_id)
    if studio.worker.current_run_id == run_id:
        return f"▶️ **Training** `{run_id}` — watch it in the Monitor tab."
    if ahead == 0:
        return f"▶️ `{run_id}` **starts now** — watch it in the Monitor tab."
    if ahead:
        return (f"⏳ `{run_id}` is **#{ahead} in the queue** ({ahead} run{'s' if ahead > 1 else ''} ahead of "
                f"it); it starts by itself when they finish.")
    status = studio.run(run_id).read_status()["status"]
    return f"Run `{run_id}`: **{status}**."


def _rows_note(studio: Studio, run_id: str) -> str:
    """Says so when the run trains on fewer rows than the file has (max_rows, or a demo's
    FT_MAX_ROWS cap): the user should not find out from the results."""
    data = studio.run(run_id).read_json(DATA_FILE) or {}
    kept, total = data.get("max_rows") or 0, data.get("rows_in_file") or 0
    if kept and total > kept:
        return f" Training on the first **{kept} of {total} rows** (max_rows)."
    return ""


def forecast_refusal(config: RunConfig, anyway_off: str | None = None) -> str | None:
    """Why Start refuses `config` (the forecast says it will not fit), or None. A model the
    forecast does not know is not refused: there is nothing to go on. `anyway_off`: why start
    anyway is off for this caller (start_anyway_off), said in place of offering it."""
    try:
        view = memory_view(config, longest_row(config.data, config.model, config.data_format))
    except UserError:
        return None
    if not view.blocks_start:
        return None
    need, free = view.needed_mib[view.method], view.available_mib or 0
    fixes = "; ".join(f"{f.description} ({f.needed_mib / 1024:.1f} GiB, {f.verdict})" for f in view.fixes)
    return (f"not started: the memory forecast says this run needs {need / 1024:.1f} GiB and only "
            f"{free / 1024:.1f} GiB is free, so it would run out of memory. "
            + (f"Fixes: {fixes}. " if fixes else "")
            + (f"{anyway_off}." if anyway_off else
               "Or start it anyway (the 'Start anyway' box; start_anyway=True in the API)."))


def start_anyway_off(request: gr.Request | None) -> str | None:
    """Why this caller may not start a run the forecast refuses (limits.start_anyway_refusal:
    demo mode, or a shared studio and not signed in), or None. Checked on the server for every
    call: the hidden checkbox is not what stops it."""
    return limits.start_anyway_refusal(signed_in=bool(getattr(request, "username", None)))


def build(studio: Studio, data: DataWidgets, model: gr.Dropdown) -> TrainWidgets:
    defaults = RunConfig()
    preset_defaults = preset_values(DEFAULT_PRESET, defaults.method)
    # shown where the server honours it (start_anyway_off); where FT_AUTH is set, whoever sees the page signed in
    anyway_shown = limits.start_anyway_refusal(signed_in=bool(limits.login())) is None
    gr.Markdown("## 2 · Train")
    with gr.Row():
        with gr.Column(scale=2):
            model.render()
            gr.Markdown("<small>Llama 3.2 1B (`meta-llama/Llama-3.2-1B-Instruct`) needs a Hugging Face token "
                        "(`HF_TOKEN`, after accepting its licence), network access and, to be practical, a GPU. "
                        "The bundled model trains on a laptop CPU in minutes.</small>")
        with gr.Column(scale=1):
            run_name = gr.Textbox(label="Run name (optional)", placeholder="e.g. zubrowka-lora",
                                  info="Letters, digits, spaces, - _ .")
    method = gr.Radio(METHODS, value=defaults.method, label="Method")
    cards = gr.HTML(_cards(defaults.method))
    gpus = gpu_names()
    gr.Markdown(gpus_markdown(gpus))
    with gr.Row(visible=len(gpus) >= 2):
        use_all_gpus = gr.Checkbox(True, label=f"Use all {len(gpus)} GPUs", info=FIELD_DOCS["devices"])
        strategy = gr.Dropdown(STRATEGY_CHOICES, value=defaults.strategy, label="How the GPUs share the work",
                               info=FIELD_DOCS["strategy"])
        fsdp_cpu_offload = gr.Checkbox(False, label="FSDP: offload to CPU memory", info=FIELD_DOCS["fsdp_cpu_offload"])
    preset = gr.Radio(list(PRESETS), value=DEFAULT_PRESET, label="Preset",
                      info="Quick demo ≈ 2 minutes on a CPU; Balanced = one pass over the data; "
                           "Thorough = three passes, larger adapters")
    advanced: dict[str, gr.components.Component] = {}
    with gr.Accordion("Advanced settings", open=False):
        with gr.Row(equal_height=False):
            columns = [gr.Column(), gr.Column(), gr.Column()]
        for i, name in enumerate(ADVANCED_FIELDS):
            with columns[i % 3]:
                advanced[name] = _widget(name, preset_defaults.get(name, getattr(defaults, name)))
    gr.Markdown("### Will it fit?\nPeak memory forecast from the model's shape and these settings, "
                "for each method, against what is free on this machine.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            memory_plot = gr.Plot(label="Memory forecast", show_label=False)
        with gr.Column(scale=2):
            memory_verdict = gr.Markdown("Memory forecast: pick a model and data.")
            fix_buttons = [gr.Button(visible=False, size="sm", variant="secondary") for _ in range(MAX_FIXES)]
            start_anyway = gr.Checkbox(False, label="Start anyway", visible=anyway_shown,
                                       info="Ignore the forecast and start a run it says will not fit")
    fixes_state = gr.State([])  # the Fix objects behind the buttons
    with gr.Row():
        start = gr.Button("▶ Start training", variant="primary", size="lg")
        stop = gr.Button("■ Stop", variant="stop", size="lg")
    message = gr.Markdown()
    current_run = gr.Textbox(label="Current run", interactive=False)

    # --- events --------------------------------------------------------------------------
    method.change(lambda m, p: (_cards(m), preset_values(p, m)["learning_rate"]), [method, preset],
                  [cards, advanced["learning_rate"]], api_visibility="private")

    preset_fields = list(PRESETS[DEFAULT_PRESET]) + ["learning_rate"]
    # a preset's maximum length goes to the Data tab's slider, where that setting lives
    preset_widgets = [data.max_seq_len if f == "max_seq_len" else advanced[f] for f in preset_fields]

    def on_preset(p: str, m: str):
        values = preset_values(p, m)
        return [values[f] for f in preset_fields]

    preset.change(on_preset, [preset, method], preset_widgets, api_visibility="private")

    form_inputs = [data.data_path, model, method, run_name, data.max_seq_len, data.val_fraction,
                   data.train_on_prompt, data.data_format, use_all_gpus, strategy, fsdp_cpu_offload] + \
        [advanced[f] for f in ADVANCED_FIELDS]
    form_names = ["data", "model", "method", "run_name", "max_seq_len", "val_fraction", "train_on_prompt",
                  "data_format", "use_all_gpus", "strategy", "fsdp_cpu_offload"] + ADVANCED_FIELDS

    # --- memory forecast -----------------------------------------------------------------
    def update_forecast(*values):
        form = dict(zip(form_names, values))
        hidden = [gr.update(visible=False) for _ in range(MAX_FIXES)]
        try:
            # the studio's runs folder, where Start writes: the disk line is about that disk
            config = config_from_form({**form, "data": "", "runs_dir": str(studio.runs_dir)}, check_paths=False)
            data = form["data"] and studio.checked_data_path(form["data"])  # an upload or a sample, nothing else
            view = memory_view(config, longest_row(data, config.model, config.data_format))
        except UserError as e:  # a half-typed setting or an unknown model: say why, keep going
            return None, no_forecast_markdown(e), *hidden, []
        buttons = [gr.update(visible=True, value=f.label) for f in view.fixes] + hidden[len(view.fixes):]
        return forecast_figure(view), verdict_markdown(view, anyway_shown), *buttons, view.fixes

    forecast_outputs = [memory_plot, memory_verdict, *fix_buttons, fixes_state]
    forecast_triggers = [model.change, method.change, data.max_seq_len.change, data.data_path.change,
                         data.data_format.change, use_all_gpus.change, strategy.change,
                         fsdp_cpu_offload.change] + \
        [advanced[f].change for f in FORECAST_FIELDS]
    gr.on(forecast_triggers, update_forecast, form_inputs, forecast_outputs, api_visibility="private",
          show_progress="hidden")

    # a fix changes the widgets; their change events redraw the forecast
    fix_widgets = [method if f == "method" else data.max_seq_len if f == "max_seq_len" else advanced[f]
                   for f in FIX_FIELDS]

    def apply_fix(i: int, fixes: list[Fix]):
        if i >= len(fixes):
            return [gr.update() for _ in FIX_FIELDS]
        return [fixes[i].changes.get(f, gr.update()) for f in FIX_FIELDS]

    for i, button in enumerate(fix_buttons):
        button.click(lambda fixes, i=i: apply_fix(i, fixes), [fixes_state], fix_widgets, api_visibility="private")

    def start_from_widgets(request: gr.Request, *values):
        *values, anyway = values
        form = dict(zip(form_names, values))
        if not form["data"]:
            return "❌ No data yet: pick a sample or upload a file in the **Data** tab first.", gr.update()
        try:
            form["data"] = studio.checked_data_path(form["data"])
            form["runs_dir"] = str(studio.runs_dir)
            config = config_from_form(form)
            off = start_anyway_off(request)
            refusal = None if anyway and not off else forecast_refusal(config, off)
            if refusal:
                return f"❌ {refusal}", gr.update()
            run = studio.worker.submit(config)
        except UserError as e:
            return f"❌ {e}", gr.update()
        return queue_message(studio, run.run_id), run.run_id

    start.click(start_from_widgets, form_inputs + [start_anyway], [message, current_run],
                api_visibility="private")

    def stop_current(run_id: str):
        if not run_id:
            return "Nothing to stop: no run was started here."
        try:
            return f"⏹ `{run_id}`: {studio.worker.stop(run_id)}."
        except UserError as e:
            return f"❌ {e}"

    stop.click(stop_current, [current_run], [message], api_visibility="private")

    return TrainWidgets(current_run, (update_forecast, form_inputs, forecast_outputs))
