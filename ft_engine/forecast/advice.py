"""What to change when a run will not fit (`suggestions`), and the data behind `plan`."""

from __future__ import annotations

from typing import Any

from .. import hardware
from ..config import RunConfig, lean_optimizer_problems
from .constants import DEFAULTS, MIB, Constants, Verdict
from .estimate import Forecast, forecast, verdict
from .shape import ModelShape, model_shape


def _candidates(config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """Single changes, cheapest (least effect on results and speed) first."""
    out: list[tuple[str, dict[str, Any]]] = []
    if not config.activation_checkpointing:
        out.append(("turn on activation checkpointing (~20-30% slower, same result)",
                    {"activation_checkpointing": True}))
    if config.method == "full" and config.optimizer in ("auto", "adamw_torch", "adamw_8bit") \
            and not lean_optimizer_problems(config):
        out.append(("use adamw_lean: bf16 weights, 8-bit state, each weight updated in backward "
                    "(no gradient clipping)", {"optimizer": "adamw_lean"}))
    if config.method == "full" and config.optimizer in ("auto", "adamw_torch"):
        out.append(("use the 8-bit AdamW optimizer (adamw_8bit)", {"optimizer": "adamw_8bit"}))
    if config.method == "full" and config.precision != "fp32":
        # bf16/fp16 autocast keeps a half-precision copy of every trainable weight for the step
        out.append(("train in fp32 (no half-precision copies of the weights; slower where bf16 is fast)",
                    {"precision": "fp32"}))
    if config.batch_size >= 2:
        b = config.batch_size // 2
        out.append((f"halve the batch to {b} and double grad_accum to {config.grad_accum * 2} "
                    f"(same effective batch)", {"batch_size": b, "grad_accum": config.grad_accum * 2}))
    if config.method == "full":
        out.append(("use lora instead of full fine-tuning", {"method": "lora"}))
    if config.method == "lora":
        out.append(("use qlora (4-bit base) instead of lora", {"method": "qlora"}))
    if config.max_seq_len >= 32:
        s = max(16, config.max_seq_len // 2)
        out.append((f"shorten max_seq_len to {s} (longer rows are cut)", {"max_seq_len": s}))
    return out


def suggestions(config: RunConfig, shape: ModelShape | None, available,
                constants: Constants = DEFAULTS, *, seq_len: int | None = None, processes: int = 1
                ) -> list[tuple[str, RunConfig, Forecast]]:
    """When `config` will not fit (or is tight), changes that lower its forecast, each with its
    new forecast. `available`: bytes, or the tuple `hardware.available_memory` returns.

    Candidates (cheapest first): activation checkpointing, adamw_lean and adamw_8bit (full), half the batch
    with double grad_accum, lora instead of full / qlora instead of lora, half the max_seq_len.
    Only changes that change something and lower the total are kept. If some make the run
    `fits`, only those are returned; else those that make it `tight`; else every lowering
    change, followed by all of them combined."""
    shape = shape or model_shape(config.model)
    device = available[0] if isinstance(available, tuple) else None
    base = forecast(config, shape, device, constants, seq_len=seq_len, available=available,
                         processes=processes)
    if verdict(base, available, constants) in (Verdict.FITS, Verdict.UNKNOWN):
        return []
    lowering = []
    for desc, change in _candidates(config):
        new = config.replace(**change)
        if new == config:
            continue
        fc = forecast(new, shape, base.device, constants, seq_len=seq_len, available=available,
                         processes=processes)
        if fc.total_bytes < base.total_bytes:
            lowering.append((desc, new, fc))
    for good in (Verdict.FITS, Verdict.TIGHT):
        fitting = [s for s in lowering if verdict(s[2], available, constants) == good]
        if fitting:
            return fitting
    if len(lowering) > 1:
        combined = config
        for _, new, _ in lowering:
            combined = combined.replace(**{k: getattr(new, k) for k in
                                           ("activation_checkpointing", "optimizer", "batch_size",
                                            "grad_accum", "method", "max_seq_len", "precision")
                                           if getattr(new, k) != getattr(config, k)})
        fc = forecast(combined, shape, base.device, constants, seq_len=seq_len, available=available,
                         processes=processes)
        if fc.total_bytes < min(s[2].total_bytes for s in lowering):
            lowering.append(("all of the above together", combined, fc))
    return lowering


def plan(config: RunConfig, methods: list[str], device: str | None = None,
         seq_len: int | None = None, processes: int = 1) -> dict[str, Any]:
    """Forecast, verdict and suggestions for each method, and the disk each run will write
    (disk.py): the data behind `plan`."""
    from ..disk import disk_forecast, disk_line, free_bytes, planned_steps  # disk.py imports this package
    shape = model_shape(config.model)
    avail = hardware.available_memory(device)
    free = free_bytes(config.runs_dir)
    out: dict[str, Any] = {
        "model": config.model, "shape": shape.to_dict(),
        "available": {"device": avail[0], "bytes": avail[1],
                      "mib": None if avail[1] is None else round(avail[1] / MIB, 1), "label": avail[2]},
        "disk": {"runs_dir": config.runs_dir, "free_bytes": free},
        "methods": {}, "processes": processes, "strategy": config.strategy if processes > 1 else None,
    }
    for method in methods:
        cfg = config.replace(method=method)
        fc = forecast(cfg, shape, avail[0], seq_len=seq_len, available=avail, processes=processes)
        out["methods"][method] = {
            **fc.to_dict(), "verdict": verdict(fc, avail),
            "suggestions": [{"change": d, "total_mib": round(f.total_mib, 1), "needed_mib": round(f.needed_mib, 1),
                             "verdict": verdict(f, avail),
                             "config": {k: v for k, v in c.to_dict().items() if v != cfg.to_dict()[k]}}
                            for d, c, f in suggestions(cfg, shape, avail, seq_len=seq_len, processes=processes)],
        }
        disk = disk_forecast(cfg, shape, steps=planned_steps(cfg, None), device=avail[0])
        out["methods"][method]["disk"] = {**disk.to_dict(), "line": disk_line(disk, config.runs_dir, free),
                                          "fits": disk.needed_free_bytes() <= free}
    return out

