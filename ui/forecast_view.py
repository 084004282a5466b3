"""The Train tab's memory forecast: the three methods side by side against the memory this
machine has free, the chosen one highlighted, a one-line verdict and the fixes that make a
run fit. Pure Python and plotly (no gradio): the Train tab places what this module computes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from ft_engine.config import RunConfig
from ft_engine.errors import UserError
from ft_engine.forecast.constants import Verdict

METHOD_ORDER = ("full", "lora", "qlora")
METHOD_LABELS = {"full": "Full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
MAX_FIXES = 3  # the Train tab has this many one-click fix buttons

# Stacked segments in plain words; keys are ft_engine.forecast.COMPONENTS.
GROUPS = {
    "model weights": ("weights_frozen", "weights_trainable", "quant_constants"),
    "gradients + optimizer": ("gradients", "optimizer_state", "optimizer_temp", "autocast_copies"),
    "activations + logits": ("activations", "logits_loss"),
    "runtime": ("runtime_overhead",),
}
GROUP_COLORS = ("rgb(31,119,180)", "rgb(255,127,14)", "rgb(44,160,44)", "rgb(148,103,189)")
VERDICT_ICONS = {Verdict.FITS: "✅", Verdict.TIGHT: "⚠️", Verdict.WILL_NOT_FIT: "❌", Verdict.UNKNOWN: "❔"}
# the settings a fix may change: each has a widget in the Train or Data tab
FIX_FIELDS = ("method", "activation_checkpointing", "optimizer", "batch_size", "grad_accum", "max_seq_len",
              "precision")


@dataclass
class Fix:
    """One suggested change: its words, the settings it changes and the new forecast."""
    description: str
    changes: dict
    needed_mib: float
    verdict: str

    @property
    def label(self) -> str:
        return f"{VERDICT_ICONS.get(self.verdict, '')} {self.description} → {self.needed_mib / 1024:.1f} GiB"


@dataclass
class MemoryView:
    """What the Train tab shows for one set of settings."""
    method: str
    device: str
    available_mib: float | None
    available_label: str
    needed_mib: dict[str, float]                 # method → memory that must be free
    groups_mib: dict[str, dict[str, float]]      # method → group → MiB alive at the predicted peak
    verdicts: dict[str, str]
    seq_len: int
    fixes: list[Fix] = field(default_factory=list)
    auto_optimizer: str | None = None            # what `optimizer: auto` becomes for this method, here
    auto_precision: str | None = None            # what `precision: auto` becomes on this device
    peak_phase: dict[str, str] = field(default_factory=dict)        # method → Forecast.peak_phase
    not_at_peak_mib: dict[str, float] = field(default_factory=dict)  # method → the phase not at the peak
    disk: str = ""                               # the disk the chosen method's run needs (disk_markdown)
    processes: int = 1                           # processes (GPUs) the run trains on (launch.processes_for)
    effective_batch: int = 0                     # rows per optimizer step over all of them

    @property
    def verdict(self) -> str:
        return self.verdicts[self.method]

    @property
    def blocks_start(self) -> bool:
        return self.verdict == Verdict.WILL_NOT_FIT


def memory_view(config: RunConfig, seq_len: int | None = None, available=None) -> MemoryView:
    """Forecast `config` with each method on this machine (or `available`, the tuple
    ft_engine.hardware.available_memory returns), and the disk its run needs in
    config.runs_dir. seq_len: the data's longest row, when known."""
    from ft_engine.forecast.advice import suggestions
    from ft_engine.forecast.estimate import forecast, verdict
    from ft_engine.forecast.shape import model_shape
    from ft_engine.hardware import available_memory
    from ft_engine.units import MIB
    shape = model_shape(config.model)  # UserError for unknown or unsupported models
    from ft_engine.launch import processes_for
    avail = available or available_memory()
    device = avail[0]
    processes = processes_for(config)  # UserError for more GPUs than there are
    forecasts = {m: forecast(config.replace(method=m), shape, device, seq_len=seq_len, available=avail,
                             processes=processes) for m in METHOD_ORDER}
    verdicts = {m: verdict(fc, avail) for m, fc in forecasts.items()}
    # On a GPU the two phases of a step are never alive together (forecast.PHASES): the bars
    # stack what is alive at the peak, so they add up to it.
    alive = {m: fc.peak_components() for m, fc in forecasts.items()}
    groups = {m: {g: sum(alive[m][k] for k in keys) / MIB for g, keys in GROUPS.items()} for m in forecasts}
    fixes = []
    if verdicts[config.method] in (Verdict.WILL_NOT_FIT, Verdict.TIGHT):
        for desc, new, fc in suggestions(config, shape, avail, seq_len=seq_len, processes=processes)[:MAX_FIXES]:
            changes = {k: getattr(new, k) for k in FIX_FIELDS if getattr(new, k) != getattr(config, k)}
            fixes.append(Fix(desc, changes, fc.needed_bytes / MIB, verdict(fc, avail)))
    chosen = forecasts[config.method]
    return MemoryView(method=config.method, device=device,
                      available_mib=None if avail[1] is None else avail[1] / MIB, available_label=avail[2],
                      needed_mib={m: fc.needed_bytes / MIB for m, fc in forecasts.items()},
                      groups_mib=groups, verdicts=verdicts,
                      seq_len=chosen.details["seq_len"], fixes=fixes,
                      auto_optimizer=chosen.details["optimizer"] if config.optimizer == "auto" else None,
                      auto_precision=chosen.precision if config.precision == "auto" else None,
                      peak_phase={m: fc.peak_phase for m, fc in forecasts.items()},
                      not_at_peak_mib={m: fc.not_at_peak_bytes / MIB for m, fc in forecasts.items()},
                      disk=disk_markdown(config, device), processes=processes,
                      effective_batch=config.batch_size * config.grad_accum * processes)


def disk_markdown(config: RunConfig, device: str | None = None) -> str:
    """The disk line under the verdict: what the run will take in config.runs_dir against what
    is free there, or, when that is too little, the refusal Start will give (ft_engine.disk)."""
    from ft_engine.disk import DiskShortError, check_disk, planned_steps
    try:
        line = check_disk(config, planned_steps(config, None), device=device)
    except DiskShortError as e:
        return f"💾 ❌ Start will be refused, {e}"
    return f"💾 {line[0].upper()}{line[1:]}."


def longest_row(data_path: str | None, model: str, data_format: str = "auto") -> int | None:
    """Tokens in the data's longest row (batches are padded to their own longest row, so this,
    not max_seq_len, sets the activations), or None when no data is chosen or it can't be read
    (the Data tab explains why; the forecast then assumes rows as long as max_seq_len)."""
    if not data_path:
        return None
    path = Path(data_path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    try:
        return _longest_row(str(path), stamp, model, data_format)
    except UserError:
        return None


@functools.lru_cache(maxsize=16)
def _longest_row(path: str, stamp: int, model: str, data_format: str) -> int:
    from ft_engine.preview import preview_data  # which loads torch and transformers itself
    lengths = preview_data(path, model=model, max_seq_len=131072, data_format=data_format,
                           n_examples=0).token_lengths
    return max(lengths, default=0) or None


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


# Why `precision: auto` chose what it did (models.resolve_precision), by device.
PRECISION_REASONS = {
    ("cuda", "bf16"): "this GPU has bf16 tensor cores (compute capability 8.0 or more)",
    ("cuda", "fp16"): "this GPU has no bf16 tensor cores (compute capability under 8.0, such as a T4), so fp16 "
                      "with loss scaling",
    ("cpu", "bf16"): "this CPU has bf16 instructions (AVX512-BF16 or AMX)",
    ("cpu", "fp32"): "this CPU has no bf16 instructions (emulated bf16 would be slower than fp32)",
}


def verdict_markdown(view: MemoryView, start_anyway: bool = True) -> str:
    """One line for the chosen method, plus what Start will do about it. `start_anyway`: False
    where the page has no Start-anyway box (a demo, a shared studio without login)."""
    need = view.needed_mib[view.method]
    name = METHOD_LABELS[view.method]
    where = "GPU memory" if view.device == "cuda" else "RAM"
    if view.processes > 1:
        where = (f"GPU memory on each of its {view.processes} GPUs" if view.device == "cuda"
                 else f"RAM for its {view.processes} processes together")
    line = (f"{VERDICT_ICONS[view.verdict]} **{name}** needs about **{_gib(need)}** of {where} "
            f"(batches of up to {view.seq_len} tokens); ")
    if view.available_mib is None:
        return line + f"free memory is unknown here ({view.available_label})." + _peak_phase_note(view) \
            + (f"\n\n{view.disk}" if view.disk else "")
    line += f"**{_gib(view.available_mib)}** is free → **{view.verdict}**."
    line += _peak_phase_note(view)
    if view.auto_precision:
        line += f"\n\nPrecision *auto* → **{view.auto_precision}**: {PRECISION_REASONS[(view.device, view.auto_precision)]}."
    if view.auto_optimizer == "adamw_lean":
        line += ("\n\nOptimizer *auto* → **adamw_lean**: fp32 AdamW would not fit, so the weights train "
                 "in bf16 with 8-bit optimizer state, each updated during backward (no gradient clipping).")
    elif view.auto_optimizer == "adamw_8bit":
        line += "\n\nOptimizer *auto* → **adamw_8bit**: fp32 AdamW would not fit."
    if view.verdict == Verdict.WILL_NOT_FIT:
        line += ("\n\nStart is refused: this run would run out of memory. Apply a fix below"
                 + (", or tick *Start anyway*." if start_anyway else "."))
    elif view.verdict == Verdict.TIGHT:
        line += "\n\nIt should fit, with little to spare; a fix below leaves more room."
    if view.processes > 1:
        line += (f"\n\n{view.processes} processes, one per GPU: each takes its own batch, so a step trains "
                 f"**{view.effective_batch} rows** (batch × grad_accum × {view.processes}).")
    if view.disk:
        line += "\n\n" + view.disk
    return line


# What is freed before the other phase of a GPU step (ft_engine.forecast.PHASES), in plain words.
PHASE_FREED = {"forward/backward": "the optimizer step's scratch ({}) is allocated only after backward",
               "optimizer step": "the activations, logits and autocast copies ({}) are freed by then"}


def _peak_phase_note(view: MemoryView) -> str:
    """On a GPU: which phase of the step peaks, and what the forecast leaves out because it is
    freed by then (the chart shows only what is alive at the peak)."""
    phase = view.peak_phase.get(view.method)
    freed = view.not_at_peak_mib.get(view.method, 0.0)
    if phase not in PHASE_FREED or freed <= 0:
        return ""
    return f"\n\nThe peak comes in the **{phase}**: {PHASE_FREED[phase].format(_gib(freed))} (not counted)."


def forecast_figure(view: MemoryView) -> go.Figure:
    """Stacked bars (weights, gradients + optimizer, activations, runtime) for each method,
    the chosen one solid and the others faded, with the free memory as a line."""
    fig = go.Figure()
    labels = [METHOD_LABELS[m] for m in METHOD_ORDER]
    for (group, _), color in zip(GROUPS.items(), GROUP_COLORS):
        fig.add_trace(go.Bar(
            x=labels, y=[view.groups_mib[m][group] / 1024 for m in METHOD_ORDER], name=group,
            marker=dict(color=color, opacity=[1.0 if m == view.method else 0.35 for m in METHOD_ORDER],
                        line=dict(width=0)),
            hovertemplate="%{x}<br>" + group + ": %{y:.2f} GiB<extra></extra>"))
    for m, label in zip(METHOD_ORDER, labels):
        fig.add_annotation(x=label, y=view.needed_mib[m] / 1024, yshift=12, showarrow=False,
                           text=f"{VERDICT_ICONS[view.verdicts[m]]} {_gib(view.needed_mib[m])}",
                           font=dict(size=13, color="black" if m == view.method else "grey"))
    top = max(view.needed_mib.values())
    if view.available_mib is not None:
        fig.add_hline(y=view.available_mib / 1024, line_dash="dash", line_color="red",
                      annotation_text=f"free: {_gib(view.available_mib)}", annotation_position="top left")
        top = max(top, view.available_mib)
    fig.update_layout(barmode="stack", template="plotly_white", height=320,
                      title="Memory forecast (peak) for each method",
                      yaxis=dict(title="GiB", range=[0, top / 1024 * 1.18]),
                      margin=dict(l=50, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.15))
    return fig


def no_forecast_markdown(err: UserError) -> str:
    return f"❔ No memory forecast for this model: {err}"
