"""Plotly figures built from what the engine wrote (metrics.jsonl rows). No gradio here."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=40, b=80), height=340,
               legend=dict(orientation="h", y=-0.3))


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing): the first
    points are not dragged towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def training_curves(rows: list[dict], title: str = "") -> go.Figure:
    """Loss (raw and smoothed) with eval loss; learning rate; tokens per second."""
    train = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if r.get("eval_loss") is not None]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Loss", "Learning rate", "Tokens per second"))
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    fig.add_trace(go.Scatter(x=steps, y=losses, name="train loss", mode="lines",
                             line=dict(color="rgba(31,119,180,0.35)")), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=smooth(losses), name="train loss (smoothed)", mode="lines",
                             line=dict(color="rgb(31,119,180)", width=3)), 1, 1)
    if evals:
        fig.add_trace(go.Scatter(x=[r["step"] for r in evals], y=[r["eval_loss"] for r in evals],
                                 name="eval loss", mode="lines+markers", line=dict(color="rgb(214,39,40)")), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=[r.get("learning_rate") for r in train], name="learning rate",
                             mode="lines", line=dict(color="rgb(44,160,44)")), 1, 2)
    fig.add_trace(go.Scatter(x=steps, y=[r.get("tokens_per_second") for r in train], name="tokens/s",
                             mode="lines", line=dict(color="rgb(148,103,189)")), 1, 3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="step", row=1, col=col)
    # learning rates are ~1e-4: scientific ticks from zero, or a constant rate looks like 0
    fig.update_yaxes(tickformat=".1e", rangemode="tozero", row=1, col=2)
    fig.update_layout(title=title or None, **_LAYOUT)
    if not train:
        fig.add_annotation(text="waiting for the first step…", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=16, color="grey"))
    return fig


def memory_curve(rows: list[dict], label: str, forecast_mib: float | None = None) -> go.Figure:
    """Memory in use and peak over steps, in MiB, with the forecast peak as a line so
    prediction and measurement are seen together."""
    mem = [r for r in rows if r.get("mem_used_mib") is not None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r["step"] for r in mem], y=[r["mem_used_mib"] for r in mem],
                             name="in use", mode="lines"))
    fig.add_trace(go.Scatter(x=[r["step"] for r in mem], y=[r["mem_peak_mib"] for r in mem],
                             name="peak", mode="lines", line=dict(dash="dot")))
    if forecast_mib:
        fig.add_hline(y=forecast_mib, line_dash="dash", line_color="rgb(90,90,90)",
                      annotation_text=f"forecast peak {forecast_mib:,.0f} MiB", annotation_position="bottom right")
        # keep the forecast line on screen even before the first step is logged
        top = max([forecast_mib] + [r["mem_peak_mib"] for r in mem])
        fig.update_yaxes(range=[0, top * 1.15])
    fig.update_layout(title=label, xaxis_title="step", yaxis_title="MiB", **{**_LAYOUT, "height": 280})
    return fig


def token_length_histogram(lengths: list[int], max_seq_len: int) -> go.Figure:
    fig = go.Figure(go.Histogram(x=lengths, nbinsx=min(40, max(5, len(set(lengths)))), name="rows",
                                 marker_color="rgb(31,119,180)"))
    fig.add_vline(x=max_seq_len, line_dash="dash", line_color="red",
                  annotation_text=f"max length {max_seq_len}", annotation_position="top right")
    fig.update_layout(title="Tokens per row", xaxis_title="tokens", yaxis_title="rows",
                      **{**_LAYOUT, "height": 280})
    return fig


def loss_overlay(curves: dict[str, list[dict]]) -> go.Figure:
    """Smoothed training loss of several runs on one chart."""
    fig = go.Figure()
    for name, rows in curves.items():
        train = [r for r in rows if r.get("loss") is not None]
        fig.add_trace(go.Scatter(x=[r["step"] for r in train], y=smooth([r["loss"] for r in train]),
                                 name=name, mode="lines"))
    fig.update_layout(title="Training loss (smoothed)", xaxis_title="step", yaxis_title="loss", **_LAYOUT)
    return fig
