"""Export a run as one standalone model folder (safetensors + tokenizer) that any
transformers user can load with `AutoModelForCausalLM.from_pretrained(folder)`.

LoRA: W = W0 + (alpha/r)·B·A is folded into each target layer. QLoRA is merged onto the
*full-precision* base, not onto the 4-bit weights: the adapter learned a correction on top of
the quantized base, but merging into 4-bit weights would re-quantize (and blur) the correction
itself, and the result could not be saved as a plain model anyway.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .errors import UserError
from .models import load_base_model, load_tokenizer
from .rundir import ADAPTER_DIR, MODEL_DIR, RunDir, open_run


def export_merged(run: RunDir | str | Path, out_dir: str | Path) -> Path:
    """Write the merged model to `out_dir` (which must not exist or be empty)."""
    run = run if isinstance(run, RunDir) else open_run(run)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose a new folder, so nothing is overwritten")
    adapter, full = run.path / ADAPTER_DIR, run.path / MODEL_DIR
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if full.is_dir():
        shutil.copytree(full, tmp)
    elif adapter.is_dir():
        from peft import PeftModel
        config = run.read_config()
        base = load_base_model(config, torch.float32)  # full precision, also for QLoRA runs
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(tmp)
        load_tokenizer(str(adapter)).save_pretrained(tmp)
    else:
        status = run.read_status().get("status")
        raise UserError(f"run {run.run_id} has no trained result to export (status: {status})")
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.replace(out)
    return out
