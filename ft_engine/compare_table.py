"""What a comparison of methods shows: one row per method, the markdown table, and the values
the studio's bar charts draw (ui/compare_view.py reads the rows' keys named in COLUMNS).

Every number of a row is read back from the run's own files through `rundir.read_summary`,
so a comparison measures exactly what the runs table and the Monitor report for that run.
The row's field names are public (comparison.json, `compare --json`, the compare API).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .rundir import RunDir, read_summary, run_by_id
from .units import MIB

# (key, column header) of the results table, in display order
COLUMNS = [
    ("method", "method"),
    ("status", "status"),
    ("peak_mem_mib", "peak memory (MiB)"),
    ("tokens_per_second", "tokens/s"),
    ("train_s", "train time (s)"),
    ("wall_s", "wall time (s)"),
    ("trainable_params", "trainable params"),
    ("trainable_pct", "trainable %"),
    ("final_loss", "final train loss"),
    ("eval_loss", "eval loss"),
    ("perplexity", "perplexity"),
    ("accuracy", "held-out correct"),
    ("base_accuracy", "base model correct"),
    ("saved_mib", "saved (MiB)"),
]


def _folder_mib(folder: Path | None) -> float | None:
    if folder is None:
        return None
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / MIB, 2)


def run_row(run: RunDir, method: str) -> dict[str, Any]:
    """What the comparison shows of one run: its RunSummary under the comparison's field
    names, with the learning rate (config.yaml) and the size of the saved result."""
    s = read_summary(run)
    total, trainable = s.total_params, s.trainable_params
    return {
        "method": method,
        "run_id": run.run_id,
        "status": s.status,
        "error": s.error,
        "steps": s.step,
        "total_steps": s.total_steps,
        "learning_rate": run.read_config().learning_rate,
        "peak_mem_mib": s.peak_mib,
        "mem_device": s.mem_device,  # cuda: PyTorch allocator peak; cpu: process RSS peak
        "tokens_per_second": s.tokens_per_second,
        "train_s": s.elapsed_s,  # the training loop only
        "wall_s": s.wall_s,  # + loading and saving
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100 * trainable / total, 2) if trainable and total else None,
        "final_loss": s.train_loss,
        "eval_loss": s.eval_loss,
        # perplexity = exp(mean token cross-entropy on the held-out rows)
        "perplexity": round(math.exp(s.eval_loss), 3) if s.eval_loss is not None else None,
        "saved_mib": _folder_mib(run.result_dir),  # weights + tokenizer, what a download holds
    }


def collect_rows(runs_dir: str | os.PathLike, runs: dict[str, str],
                 samples: dict[str, str | None], scores: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """One row per method (`run_row`), with its sample answer and held-out scores (tuned, base)."""
    rows = []
    for method, run_id in runs.items():
        try:
            row = run_row(run_by_id(runs_dir, run_id), method)
        except UserError:  # the run was deleted: the comparison still lists the method
            row = {"method": method, "run_id": run_id, "status": "deleted",
                   "error": f"run {run_id} was deleted"}
        row["sample"] = samples.get(method)
        totals = (scores or {}).get(method)
        for key, who in (("accuracy", "questions_tuned"), ("base_accuracy", "questions_base")):
            row[key] = f"{totals[who]['correct']}/{totals[who]['n']}" if totals and totals[who]["n"] else None
        rows.append(row)
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "trainable_params":
        return f"{value:,}"
    if key in ("final_loss", "eval_loss"):
        return f"{value:.4f}"
    if key in ("peak_mem_mib", "tokens_per_second", "train_s", "wall_s"):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], prompt: str | None = None) -> str:
    """The results as a markdown table, what was measured, and the sample answers."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    devices = {r.get("mem_device") for r in rows if r.get("mem_device")}
    notes = {"cpu": "peak memory = peak resident set of the training process (CPU)",
             "cuda": "peak memory = peak of the PyTorch CUDA allocator"}
    lines.append("")
    lines.append("; ".join(notes[d] for d in sorted(devices)) + "; " if devices else "")
    lines[-1] += ("train time = the training loop; wall time = also loading the model and saving the "
                  "result; perplexity = exp(eval loss) on the held-out rows; held-out correct = held-out questions "
                  "whose answer carries the expected answer's key words and numbers (evaluate.py), by the "
                  "tuned model and by its base.")
    errors = [f"- **{r['method']}**: {r['error']}" for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:", *errors]
    if any(r.get("sample") is not None for r in rows):
        lines += ["", f"Sample answers (greedy) to: *{prompt}*" if prompt else "Sample answers (greedy):", ""]
        # JSON quoting: one line, control characters escaped, whatever the model wrote
        lines += [f"- **{r['method']}**: {json.dumps(r['sample'], ensure_ascii=False)}"
                  if r.get("sample") is not None else f"- **{r['method']}**: (no answer: no trained result)"
                  for r in rows]
    return "\n".join(lines) + "\n"
