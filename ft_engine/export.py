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

from .errors import UserError, hide_tokens
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


def zip_result(run: RunDir, kind: str, dest_dir: str | Path) -> Path:
    """A zip of the run's adapter (`adapter`), or of the merged standalone model (`merged`),
    written into dest_dir (a temporary folder of the caller's), for download."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if kind == "merged":
        folder = run.path / ".export-merged"
        shutil.rmtree(folder, ignore_errors=True)
        export_merged(run, folder)
        try:
            return Path(shutil.make_archive(str(dest / f"{run.run_id}-merged"), "zip", folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if kind == "adapter":
        result = run.result_dir
        if result is None:
            raise UserError(f"run {run.run_id} has no trained result yet")
        return Path(shutil.make_archive(str(dest / f"{run.run_id}-{result.name}"), "zip", result))
    raise UserError(f"export kind must be 'adapter' or 'merged', got {kind!r}")


def push_to_hub(run: RunDir, repo_id: str, token: str, kind: str = "adapter", private: bool = True) -> str:
    """Upload the adapter (or merged model) to a Hugging Face repo; returns its URL.
    The token is used for this call only and never written anywhere."""
    import re
    import tempfile

    from huggingface_hub import HfApi
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", repo_id or "") or ".." in repo_id:
        raise UserError(f"repo id must look like your-name/model-name, got {repo_id!r}")
    if not token:
        raise UserError("a Hugging Face token with write access is needed: paste one or set HF_TOKEN")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "merged":
            folder = export_merged(run, Path(tmp) / "merged")
        elif run.result_dir is not None:
            folder = run.result_dir
        else:
            raise UserError(f"run {run.run_id} has no trained result to push")
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                              commit_message=f"Upload {kind} from Fine-Tune Studio run {run.run_id}")
        except OSError as e:  # network and HTTP errors of huggingface_hub are OSErrors
            message = hide_tokens(str(e), token)  # never echo the token back
            raise UserError(f"push to {repo_id} failed: {message.splitlines()[0]}; check the token's "
                            f"write access and your network") from None
    return f"https://huggingface.co/{repo_id}"
