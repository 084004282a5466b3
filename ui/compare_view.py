"""Compare methods (in the Runs tab): full, LoRA and QLoRA on the data chosen in the Data tab,
with the same step budget, queued on the worker like any run; then a table, bar charts and each
method's answer to one prompt. Everything shown is read from the comparison folder and its runs."""

from __future__ import annotations

import html
import json
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ft_engine import compare
from ft_engine.errors import UserError
from ft_engine.rundir import DamagedFileError

from .charts import _LAYOUT
from .context import Studio
from .data_tab import DataWidgets
from .form import config_from_form
from .train_tab import forecast_refusal, start_anyway_off

REFRESH_SECONDS = 2.0
METHOD_LABELS = {"full": "Full", "lora": "LoRA", "qlora": "QLoRA"}
COLORS = {"full": "rgb(214,39,40)", "lora": "rgb(31,119,180)", "qlora": "rgb(44,160,44)"}
HEADERS = [header for _, header in compare.COLUMNS]
# each column's share of the table's width (%): wider where a header has a long word, so none
# breaks inside one ("trainable", "perplexity", "held-out")
_WIDE = {"status": 8, "tokens/s": 8, "trainable params": 9, "trainable %": 8.5, "perplexity": 8.5,
         "held-out correct": 8.5, "base model correct": 7.5}
COLUMN_WIDTHS = [f"{_WIDE.get(header, 6)}%" for header in HEADERS]


# --- pure helpers (unit-tested) -----------------------------------------------------------------

def table_rows(rows: list[dict[str, Any]]) -> list[list]:
    """One table row per method, numbers rounded for reading; missing values stay empty."""
    def cell(key: str, value: Any) -> Any:
        if value is None:
            return None
        if key in ("final_loss", "eval_loss"):
            return round(value, 4)
        if key == "trainable_params":
            return f"{value:,}"  # 134,515,008 reads at a glance; 134515008 does not
        if key in ("peak_mem_mib", "tokens_per_second", "train_s", "wall_s", "perplexity", "saved_mib",
                   "trainable_pct"):
            return round(value, 2 if key in ("perplexity", "saved_mib", "trainable_pct") else 1)
        return value
    return [[cell(key, r.get(key)) for key, _ in compare.COLUMNS] for r in rows]


def comparison_figure(rows: list[dict[str, Any]], title: str = "") -> go.Figure:
    """Four bar charts side by side: peak memory, tokens per second, time, and final losses."""
    fig = make_subplots(rows=1, cols=4, subplot_titles=("Peak memory (MiB)", "Tokens per second",
                                                        "Time (s)", "Final loss"))
    names = [METHOD_LABELS.get(r["method"], r["method"]) for r in rows]
    colors = [COLORS.get(r["method"], "grey") for r in rows]

    def bars(key: str, col: int, name: str, **style) -> None:
        fig.add_trace(go.Bar(x=names, y=[r.get(key) for r in rows], name=name, showlegend=bool(style),
                             marker=style.get("marker", dict(color=colors)),
                             text=[_short(r.get(key)) for r in rows], textposition="outside"), 1, col)

    bars("peak_mem_mib", 1, "peak memory")
    bars("tokens_per_second", 2, "tokens/s")
    bars("train_s", 3, "training loop", marker=dict(color="rgb(148,103,189)"))
    bars("wall_s", 3, "with loading and saving", marker=dict(color="rgba(148,103,189,0.45)"))
    bars("final_loss", 4, "final train loss", marker=dict(color="rgb(31,119,180)"))
    bars("eval_loss", 4, "eval loss (held out)", marker=dict(color="rgb(214,39,40)"))
    # headroom above the tallest bar, so its value label is not cut off by the plot's edge
    for col, keys in enumerate((("peak_mem_mib",), ("tokens_per_second",), ("train_s", "wall_s"),
                                ("final_loss", "eval_loss")), start=1):
        top = max((r.get(k) or 0 for r in rows for k in keys), default=0)
        fig.update_yaxes(range=[0, top * 1.2 or 1], row=1, col=col)
    fig.update_layout(title=title or None, barmode="group", **{**_LAYOUT, "height": 380})
    return fig


def _short(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def samples_markdown(prompt: str, rows: list[dict[str, Any]]) -> str:
    """Each method's answer to the shared prompt, as quoted text (answers are model output:
    escaped, never rendered as markup)."""
    if not any(r.get("sample") is not None for r in rows):
        return ""
    parts = [f"**Sample answers** (greedy) to: *{html.escape(prompt)}*"]
    for r in rows:
        answer = r.get("sample")
        text = html.escape(answer) if answer is not None else "<i>no answer: the run has no trained result</i>"
        parts.append(f"**{METHOD_LABELS.get(r['method'], r['method'])}**\n\n<blockquote>{text}</blockquote>")
    return "\n\n".join(parts)


def progress_markdown(p: dict[str, Any]) -> str:
    """One line: where the comparison is, and each method's state."""
    icons = {"queued": "⏳", "running": "▶️", "completed": "✅", "failed": "❌", "stopped": "⏹",
             "interrupted": "⚠️", "deleted": "🗑"}
    each = " · ".join(
        f"{icons.get(s['status'], '')} {METHOD_LABELS.get(m, m)} "
        f"{s['step'] if s['step'] is not None else '–'}/{s['total_steps'] or '?'}"
        for m, s in p["steps"].items())
    if p["status"] == "running" and p["index"]:
        head = f"▶️ **Training {METHOD_LABELS.get(p['current'], p['current'])}** ({p['index']} of {p['of']})"
    elif p["status"] == "running" and p["current"]:
        head = f"▶️ **Writing the {p['current']}**"
    elif p["status"] == "queued":
        head = "⏳ **Queued** behind other runs"
    else:
        head = f"{icons.get(p['status'], '')} **{p['status'].capitalize()}**"
    error = f"\n\n<span class='ft-error'>{html.escape(p['error'])}</span>" if p.get("error") else ""
    return f"{head} — `{p['comparison_id']}`\n\n{each}{error}"


def comparison_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, id) of every comparison, newest first."""
    out = []
    for cdir in reversed(compare.list_comparisons(studio.runs_dir)):
        try:
            info = cdir.read()
        except DamagedFileError:  # still listed, so it can be deleted; opening it shows why
            out.append((f"{cdir.comparison_id} · damaged", cdir.comparison_id))
            continue
        steps = info.get("settings", {}).get("base", {}).get("max_steps")
        out.append((f"{cdir.comparison_id} · {', '.join(info['runs'])} · {steps} steps · {info['status']}",
                    cdir.comparison_id))
    return out


def comparison_report(studio: Studio, comparison_id: str) -> dict[str, Any]:
    """Progress, settings, prompt and one row per method (what the API returns)."""
    cdir = compare.comparison_by_id(studio.runs_dir, comparison_id)
    info = cdir.read()
    return {**compare.progress(cdir), "prompt": info.get("prompt"), "settings": info.get("settings"),
            "learning_rates": info.get("learning_rates"), "rows": cdir.rows()}


def start_comparison(studio: Studio, form: dict[str, Any], methods: list[str], prompt: str,
                     learning_rate: float | None = None, anyway_off: str | None = None) -> tuple[str, str]:
    """Build the shared RunConfig the way the Train tab does (FT_MAX_STEPS caps included) and
    queue the comparison. Returns (message, comparison id); raises UserError on bad input.
    `anyway_off` (train_tab.start_anyway_off: a demo, a shared studio without login): where a
    run the forecast refuses may not start anyway, a comparison with one is refused too."""
    if not form.get("data"):
        raise UserError("no data yet: pick a sample or upload a file in the Data tab (Check data) first")
    form = {**form, "data": studio.checked_data_path(form["data"]), "runs_dir": str(studio.runs_dir)}
    note = ""
    if not form.get("val_fraction"):
        form["val_fraction"] = compare.DEFAULT_VAL_FRACTION
        note = (f" {compare.DEFAULT_VAL_FRACTION:.0%} of the rows are held out for the eval loss "
                f"(the Data tab's setting was 0).")
    base = config_from_form(form)
    config = compare.CompareConfig(base=base, methods=list(methods or []), prompt=prompt or "",
                                   learning_rate=learning_rate)
    if anyway_off:
        # a comparison has no start anyway; elsewhere it queues full as asked, as before
        for method in config.validate().methods:
            refusal = forecast_refusal(config.run_config(method), anyway_off)
            if refusal:
                raise UserError(f"comparison {refusal.replace('this run', f'its {method} run', 1)}")
    cdir = compare.submit(config, studio.worker)
    return f"⚖️ Comparison `{cdir.comparison_id}` queued: {', '.join(cdir.runs())}.{note}", cdir.comparison_id


def stop_comparison(studio: Studio, comparison_id: str) -> str:
    """Stop a comparison: the running method ends after its step, the queued ones never start.
    Raises UserError for an id that is no comparison here."""
    return compare.stop_submitted(compare.comparison_by_id(studio.runs_dir, comparison_id), studio.worker)


# --- widgets and events -------------------------------------------------------------------------

def build(studio: Studio, data: DataWidgets, model: gr.Dropdown):
    """Returns (refresh function, its outputs) so the Runs tab can refresh the list when opened."""
    gr.Markdown("### Compare methods\nTrain **full**, **LoRA** and **QLoRA** one after another on the data "
                "checked in the **Data** tab, with the same steps, batch, maximum length and seed; each "
                "queues like any run. Then compare memory, speed, time, losses and one answer from each.")
    with gr.Row():
        steps = gr.Number(30, precision=0, minimum=1, label="Steps per method", scale=1,
                          info="Same optimizer steps for every method")
        batch = gr.Number(4, precision=0, minimum=1, label="Batch size", scale=1)
        methods = gr.CheckboxGroup(list(compare.METHODS), value=list(compare.METHODS), label="Methods", scale=2,
                                   info="Run in this order")
        prompt = gr.Textbox(label="Prompt for the sample answers", scale=3,
                            placeholder="empty = the first held-out question of the data")
    with gr.Row():
        start = gr.Button("⚖ Compare methods", variant="primary")
        stop = gr.Button("■ Stop comparison", variant="stop")
    message = gr.Markdown()
    choices = comparison_choices(studio)
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Comparison", scale=4)
        confirm = gr.Checkbox(False, label="Yes, delete this comparison (its runs stay)", scale=2)
        delete = gr.Button("🗑 Delete comparison", scale=1)
    progress = gr.Markdown()
    with gr.Column(visible=bool(choices)) as results:  # shown once there is a comparison to show
        table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, column_widths=COLUMN_WIDTHS)
        chart = gr.Plot(label="Methods side by side")
        samples = gr.Markdown()
    seen = gr.State(None)  # (id, status, steps) last drawn: an unchanged comparison is not redrawn
    timer = gr.Timer(REFRESH_SECONDS)

    def show(comparison_id: str | None, last_seen):
        unchanged = gr.update(), gr.update(), gr.update(), gr.update()
        if not comparison_id:
            return "No comparison yet: set one up above.", gr.update(visible=False), *unchanged[1:], None
        try:
            r = comparison_report(studio, comparison_id)
        except UserError as e:
            return f"❌ {html.escape(str(e))}", gr.update(visible=False), *unchanged[1:], None
        key = (comparison_id, r["status"], json.dumps(r["steps"], sort_keys=True))
        if key == last_seen:
            return progress_markdown(r), *unchanged, last_seen
        return (progress_markdown(r), gr.update(visible=True), table_rows(r["rows"]), comparison_figure(r["rows"]),
                samples_markdown(r["prompt"] or "", r["rows"]), key)

    outputs = [progress, results, table, chart, samples, seen]
    timer.tick(show, [pick, seen], outputs, api_visibility="private", show_progress="hidden")
    never_seen = gr.State(None)  # picking a comparison always redraws it
    pick.change(show, [pick, never_seen], outputs, api_visibility="private")

    form_inputs = [data.data_path, model, data.max_seq_len, data.val_fraction, data.train_on_prompt,
                   data.data_format, steps, batch]
    form_names = ["data", "model", "max_seq_len", "val_fraction", "train_on_prompt", "data_format",
                  "max_steps", "batch_size"]

    def start_from_widgets(request: gr.Request, *values):
        *form_values, chosen, prompt_text = values
        try:
            text, comparison_id = start_comparison(studio, dict(zip(form_names, form_values)), chosen, prompt_text,
                                                   anyway_off=start_anyway_off(request))
        except UserError as e:
            return f"❌ {html.escape(str(e))}", gr.update()
        return text, gr.update(choices=comparison_choices(studio), value=comparison_id)

    start.click(start_from_widgets, form_inputs + [methods, prompt], [message, pick], api_visibility="private")

    def stop_picked(comparison_id: str | None):
        if not comparison_id:
            return "Pick a comparison first."
        try:
            return f"⏹ {html.escape(stop_comparison(studio, comparison_id))}"
        except UserError as e:
            return f"❌ {html.escape(str(e))}"

    stop.click(stop_picked, pick, message, api_visibility="private")

    def delete_picked(comparison_id: str | None, confirmed: bool):
        if not comparison_id:
            return "Pick a comparison first.", gr.update(), False
        if not confirmed:
            return "Tick the box to confirm, then press Delete again.", gr.update(), False
        try:
            compare.delete_comparison(studio.runs_dir, comparison_id)
        except UserError as e:
            return f"❌ {html.escape(str(e))}", gr.update(), False
        new = comparison_choices(studio)
        return (f"🗑 Comparison `{html.escape(comparison_id)}` deleted; its runs are still in the table above.",
                gr.update(choices=new, value=new[0][1] if new else None), False)

    delete.click(delete_picked, [pick, confirm], [message, pick, confirm], api_visibility="private")

    def refresh(current: str | None = None):
        new = comparison_choices(studio)
        ids = [i for _, i in new]
        return gr.update(choices=new, value=current if current in ids else (ids[0] if ids else None))

    return refresh, pick
