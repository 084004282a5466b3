"""Monitor tab: status, progress with ETA, live curves, memory gauges and the event log of
the current (or a chosen) run. Reads only the run directory; refreshes about once a second."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from ft_engine.errors import UserError
from ft_engine.hardware import machine_snapshot
from ft_engine.rundir import EVENTS_FILE, METRICS_FILE, DamagedFileError, damage_notes, read_summary

from .charts import memory_curve, training_curves
from .context import Studio

REFRESH_SECONDS = 1.0
FOLLOW = "(follow the latest run)"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def run_report(studio: Studio, run_id: str) -> dict[str, Any]:
    """Everything the Monitor shows about a run, from its files (also the run_status API)."""
    run = studio.run(run_id)
    s = read_summary(run)
    if s.damaged:  # the Monitor shows this message in place of the run
        raise DamagedFileError(s.error)
    event_lines = run.events()
    eta = None
    if s.status == "running" and s.total_steps and s.step and s.elapsed_s:
        eta = s.elapsed_s / s.step * (s.total_steps - s.step)
    return {
        "run_id": run_id, "status": s.status, "method": s.method, "model": s.model, "step": s.step,
        "total_steps": s.total_steps, "elapsed_s": s.elapsed_s, "eta_s": eta, "error": s.error,
        # the worker lets go of a run a moment after writing its final status
        "queue_position": studio.worker.position(run_id) if s.status in ("queued", "running") else None,
        "loss": s.train_loss, "tokens_per_second": s.last_step_tokens_per_second,
        "mem_peak_mib": s.peak_mib, "forecast_mib": s.forecast_mib,
        # how the run is spread (launch.py): processes, ddp / fsdp, rows per optimizer step
        "processes": s.processes, "strategy": s.strategy, "effective_batch": s.effective_batch,
        "events": event_lines.rows[-12:], "metrics_rows": s.metrics_rows,
        # lines skipped as damaged (the rest of the run is still shown), and the sentence saying so
        "skipped_lines": {METRICS_FILE: s.skipped_metrics_lines,
                          EVENTS_FILE: event_lines.damaged + event_lines.cut_off_last},
        "notes": damage_notes(s.metrics_note, event_lines.note(EVENTS_FILE)),
    }


def status_html(r: dict[str, Any]) -> str:
    icon = {"running": "🟢", "queued": "⏳", "completed": "✅", "stopped": "⏹", "failed": "❌",
            "interrupted": "⚠️"}.get(r["status"], "•")
    total = r["total_steps"] or 0
    pct = 100 * r["step"] / total if total else 0
    queue = (f" — waiting, {r['queue_position']} run(s) ahead" if r["status"] == "queued" and r["queue_position"] else "")
    parts = [
        f'<div class="ft-status"><b>{icon} {html.escape(str(r["status"]))}</b>{queue} · '
        f'{html.escape(str(r["method"]))} on {html.escape(str(r["model"]))} · <code>{html.escape(r["run_id"])}</code></div>',
        f'<div class="ft-progress"><div class="ft-progress-bar" style="width:{pct:.1f}%"></div></div>',
        f'<div class="ft-progress-text">step {r["step"]} / {total or "?"} · elapsed {_fmt_seconds(r["elapsed_s"])}'
        f' · ETA {_fmt_seconds(r["eta_s"])}'
        + (f' · loss {r["loss"]:.4f}' if r["loss"] is not None else "")
        + (f' · {r["tokens_per_second"]:.0f} tokens/s (last step)' if r["tokens_per_second"] else "") + "</div>",
    ]
    if (r.get("processes") or 1) > 1:
        parts.append(f'<div class="ft-progress-text">{r["processes"]} processes ({html.escape(str(r["strategy"]))}) · '
                     f'effective batch {r["effective_batch"]} rows per step</div>')
    if r["error"] and r["status"] in ("failed", "interrupted"):
        parts.append(f'<div class="ft-error">{html.escape(r["error"])}</div>')
    if r.get("notes"):
        parts.append(f'<div class="ft-progress-text">⚠️ {html.escape(r["notes"])}</div>')
    return "".join(parts)


def gauges_html(snap: dict[str, Any], run_peak_mib: float | None, forecast_mib: float | None = None) -> str:
    """GPU gauges from NVML when there is an NVIDIA GPU; otherwise RAM, labelled as CPU mode."""
    def bar(label: str, used: float, total: float, extra: str = "") -> str:
        pct = 100 * used / total if total else 0
        return (f'<div class="ft-gauge"><div class="ft-gauge-label">{label}: {used / 1024:.1f} / '
                f'{total / 1024:.1f} GiB {extra}</div><div class="ft-progress"><div class="ft-progress-bar '
                f'{"ft-hot" if pct > 90 else ""}" style="width:{pct:.1f}%"></div></div></div>')
    if snap["gpus"]:
        rows = [bar(f"GPU {g['index']} · {html.escape(g['name'])}", g["used_mib"], g["total_mib"],
                    f"· {g['utilization_percent']:.0f}% busy") for g in snap["gpus"]]
    else:
        rows = ['<div class="ft-mode">CPU mode — no NVIDIA GPU found; showing system memory</div>',
                bar("System RAM", snap["ram_used_mib"], snap["ram_total_mib"], f"· CPU {snap['cpu_percent']:.0f}%")]
    peak = f"{run_peak_mib / 1024:.2f} GiB" if run_peak_mib else "–"
    forecast = f" · forecast peak: {forecast_mib / 1024:.2f} GiB" if forecast_mib else ""
    rows.append(f'<div class="ft-gauge-label">This app now: {snap["process_used_mib"] / 1024:.2f} GiB · '
                f'peak of this run: {peak}{forecast}</div>')
    return "".join(rows)


def events_markdown(events: list[dict]) -> str:
    if not events:
        return "_No events yet._"
    return "\n".join(f"- `{e['time'][11:19]}` step {e.get('step') or 0}: **{e['event']}** — {html.escape(e['message'])}"
                     for e in reversed(events))


def build(studio: Studio, current_run: gr.Textbox) -> tuple[gr.Dropdown, Any]:
    """Returns the run picker and the function that refreshes its choices."""
    gr.Markdown("## 3 · Monitor")
    with gr.Row():
        run_choice = gr.Dropdown([FOLLOW], value=FOLLOW, label="Run", scale=3,
                                 info="Follows the newest run unless you pick one")
        refresh = gr.Button("↻ Refresh list", scale=1)
    status = gr.HTML()
    curves = gr.Plot(label="Training curves")
    with gr.Row():
        gauges = gr.HTML()
        mem_plot = gr.Plot(label="Memory of this run")
    events = gr.Markdown()
    seen = gr.State(None)  # (run id, metric rows) last drawn: unchanged curves are not redrawn
    timer = gr.Timer(REFRESH_SECONDS)

    def resolve(choice: str, current: str) -> str | None:
        if choice and choice != FOLLOW:
            return choice
        return studio.worker.current_run_id or current or studio.latest_run_id()

    def tick(choice: str, current: str, last_seen):
        snap = machine_snapshot()
        run_id = resolve(choice, current)
        if not run_id:
            return ("<div class='ft-status'>No run yet — start one in the Train tab.</div>", gr.update(),
                    gauges_html(snap, None), gr.update(), "", last_seen)
        try:
            r = run_report(studio, run_id)
        except UserError as e:
            return f"<div class='ft-error'>{html.escape(str(e))}</div>", gr.update(), gauges_html(snap, None), \
                gr.update(), "", last_seen
        key = (run_id, r["metrics_rows"], r["status"])
        if key == last_seen:
            return status_html(r), gr.update(), gauges_html(snap, r["mem_peak_mib"], r["forecast_mib"]), gr.update(), \
                events_markdown(r["events"]), last_seen
        rows = studio.run(run_id).read_metrics()
        mem_label = "GPU memory (PyTorch allocator)" if snap["gpus"] else "Process memory (CPU mode)"
        return (status_html(r), training_curves(rows), gauges_html(snap, r["mem_peak_mib"], r["forecast_mib"]),
                memory_curve(rows, mem_label, r["forecast_mib"]), events_markdown(r["events"]), key)

    outputs = [status, curves, gauges, mem_plot, events, seen]
    timer.tick(tick, [run_choice, current_run, seen], outputs, api_visibility="private",
               show_progress="hidden")
    never_seen = gr.State(None)  # picking a run always redraws its curves
    run_choice.change(tick, [run_choice, current_run, never_seen], outputs, api_visibility="private")

    def refresh_choices():
        return gr.update(choices=[FOLLOW] + [r.run_id for r in reversed(studio.runs())])

    refresh.click(refresh_choices, None, run_choice, api_visibility="private")

    return run_choice, refresh_choices
