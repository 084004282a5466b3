"""Export a run as one standalone model folder (safetensors + tokenizer) that any
transformers user can load with `AutoModelForCausalLM.from_pretrained(folder)`.

LoRA: W = W0 + (alpha/r)·B·A is folded into each target layer of the full-precision base.

QLoRA: the adapter was trained (and is chatted with, inference.py) on the 4-bit base, so the
correction it learned is to the dequantized weights Wq = dequant(NF4(W0)), not to W0: the
exported model is Wq + (alpha/r)·B·A. Merged onto W0 instead, the result is a model nobody
trained: its answers drift from the ones seen in the studio (on the tiny test model its logits
sit ~7x farther from the adapter-on-4-bit ones, tests/test_export.py). Merging into the 4-bit
layers themselves (peft's merge into Linear4bit) would re-quantize, and blur, the correction.
So each 4-bit layer is first replaced by a plain Linear holding its dequantized weight in the
run's compute dtype (bf16/fp16; what bitsandbytes' forward multiplies with), the adapter is
merged onto that, and the model is saved in that dtype, with a README.md saying how it was made.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from .config import RunConfig
from .errors import UserError, hide_tokens
from .inference import stop_token_ids
from .models import bnb_config, load_base_model, load_tokenizer, model_build_lock, resolve_compute_dtype
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
        # Merged on the CPU, also where there is a GPU: merging is a few additions per weight,
        # and an export asked for while a run trains must not take GPU memory from it.
        with model_build_lock:  # from_pretrained and peft set torch's process-wide default dtype
            if config.method == "qlora":
                config = dataclasses.replace(config, compute_dtype=_trained_compute_dtype(run, config))
                dtype = resolve_compute_dtype(config)
                base = _dequantized(load_base_model(config, dtype, quantization=bnb_config(config), device="cpu"),
                                    dtype)
            else:
                base = load_base_model(config, torch.float32, device="cpu")
            merged = PeftModel.from_pretrained(base, str(adapter), torch_device="cpu").merge_and_unload()
        merged.config.use_cache = True
        tokenizer = load_tokenizer(str(adapter))
        # other tools (llama.cpp, vLLM, a plain generate()) stop where the studio's chat does:
        # at the template's end of turn too, which a base model's generation_config does not know
        if merged.generation_config is not None:
            merged.generation_config.eos_token_id = stop_token_ids(tokenizer, merged.generation_config)
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if config.method == "qlora":
            (tmp / "README.md").write_text(_qlora_readme(run.run_id, config), encoding="utf-8")
    else:
        status = run.read_status().get("status")
        raise UserError(f"run {run.run_id} has no trained result to export (status: {status})")
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.replace(out)
    return out


# The precision a run trained in, as training.py records it in status.json.
_PRECISION_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _trained_compute_dtype(run: RunDir, config: RunConfig) -> str:
    """The dtype the run's 4-bit layers computed in. `auto` depends on the hardware, so it is
    read from the precision the run recorded (a run trained in fp16 on a T4 and exported on
    a bf16 CPU is still an fp16 model); a run that recorded none resolves it here."""
    if config.compute_dtype != "auto":
        return config.compute_dtype
    recorded = run.read_status().get("precision")
    if recorded in _PRECISION_DTYPE:
        return _PRECISION_DTYPE[recorded]
    return str(resolve_compute_dtype(config)).removeprefix("torch.")


def _dequantized(model, dtype: torch.dtype):
    """`model` with each bitsandbytes Linear4bit replaced by a plain Linear holding its
    dequantized weight, and no quantization_config left in its config.

    transformers' `dequantize` calls `bitsandbytes.functional.dequantize_4bit(weight,
    quant_state)`, which dequantizes into quant_state.dtype: the dtype the model was loaded
    in, here the compute dtype. That is bit for bit the weight the 4-bit forward multiplies
    with in training (bitsandbytes 0.50 `gemm_4bit` dequantizes into the input's dtype,
    checked in tests/test_export.py). In eval mode on CPUs with AVX512-BF16, bitsandbytes
    first repacks each layer into a fused-kernel layout with bf16 block scales (the chat's
    weights then differ from training's by up to 2 bf16 ulps, measured on the tiny test
    model), a layout dequantize_4bit misreads: the model must be freshly loaded, with no
    forward run yet, which the check below holds to."""
    repacked = [name for name, m in model.named_modules()
                if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]
    if repacked:
        raise RuntimeError(f"{repacked[0]} is in bitsandbytes' CPU inference layout, which dequantize_4bit "
                           f"cannot read: dequantize a freshly loaded 4-bit model, before any eval-mode forward")
    return model.dequantize(dtype=dtype)


def _qlora_readme(run_id: str, config: RunConfig) -> str:
    """What a merged QLoRA export is, for whoever loads it (and the model card on the Hub).
    A local base model is named by its folder only: the card may be pushed, the path is private."""
    quant = config.quant_type.upper()
    base = Path(config.model).name if Path(config.model).is_dir() else config.model
    return (f"# Merged QLoRA model (Fine-Tune Studio run `{run_id}`)\n\n"
            f"The adapter of run `{run_id}`, merged onto the dequantized {quant} base in "
            f"{config.compute_dtype}: the weights the adapter was trained on (and chatted with in the "
            f"studio), not the original full-precision weights of `{base}`. Saved in "
            f"{config.compute_dtype}.\n\n"
            f"Load it with `AutoModelForCausalLM.from_pretrained(folder)`; its greedy answers are "
            f"those of the adapter on the 4-bit base.\n")


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
