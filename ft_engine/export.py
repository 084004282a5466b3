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

Light to import: torch, transformers and the modules that need them are imported where a model
is built, after stack.load(), which each entry point (export_merged, merged_model, zip_result,
push_to_hub) calls first, so the studio can call them from any of its threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import stack
from .config import RunConfig
from .disk import DISK, folder_bytes, free_bytes, gb
from .errors import UserError, hide_tokens
from .rundir import ADAPTER_DIR, MODEL_DIR, RunDir, open_run

if TYPE_CHECKING:
    import torch


def export_merged(run: RunDir | str | Path, out_dir: str | Path) -> Path:
    """Write the merged model to `out_dir` (which must not exist or be empty)."""
    stack.load()
    run = run if isinstance(run, RunDir) else open_run(run)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose a new folder, so nothing is overwritten")
    run.check_result_links()  # copytree and from_pretrained follow links: none may lead outside the run
    adapter, full = run.path / ADAPTER_DIR, run.path / MODEL_DIR
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_merged(run, adapter, full, tmp)
    except BaseException:
        # a failed export leaves nothing (a merged model is the size of the base); the error
        # raised is the one to report, so a failure to clean up is not raised over it
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.replace(out)
    return out


def _write_merged(run: RunDir, adapter: Path, full: Path, tmp: Path) -> None:
    """The merged model of `run` written into `tmp` (export_merged's body)."""
    if full.is_dir():
        shutil.copytree(full, tmp)
        return
    merged, tokenizer, config = merged_model(run)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if config.method == "qlora":
        (tmp / "README.md").write_text(_qlora_readme(run.run_id, config), encoding="utf-8")


def merged_model(run: RunDir):
    """(model, tokenizer, config): the run's trained model in memory, on the CPU, as
    export_merged saves it: model/ of a full run as it is, else the adapter merged into its
    base (fp32 for LoRA; the dequantized 4-bit base in the trained compute dtype for QLoRA,
    see the module docstring). Its generation_config stops where the studio's chat does."""
    stack.load()
    import torch
    from transformers import AutoModelForCausalLM

    from .inference import stop_token_ids
    from .models import bnb_config, load_base_model, load_tokenizer, model_build_lock, resolve_compute_dtype
    adapter, full = run.path / ADAPTER_DIR, run.path / MODEL_DIR
    config = run.read_config()
    if full.is_dir():
        with model_build_lock:  # from_pretrained sets torch's process-wide default dtype
            merged = AutoModelForCausalLM.from_pretrained(str(full), dtype=torch.float32, device_map="cpu")
        tokenizer = load_tokenizer(str(full))
    elif adapter.is_dir():
        from peft import PeftModel
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
        tokenizer = load_tokenizer(str(adapter))
    else:
        status = run.read_status().get("status")
        raise UserError(f"run {run.run_id} has no trained result to export (status: {status})")
    merged.config.use_cache = True
    # other tools (llama.cpp, vLLM, a plain generate()) stop where the studio's chat does:
    # at the template's end of turn too, which a base model's generation_config does not know
    if merged.generation_config is not None:
        merged.generation_config.eos_token_id = stop_token_ids(tokenizer, merged.generation_config)
    return merged.eval(), tokenizer, config


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
    stack.load()  # the hardware decides it: torch
    from .models import resolve_compute_dtype
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


# --- downloads (zip_result): one per run at a time, checked against the free disk (issue 11) ------

log = logging.getLogger(__name__)

# Bytes per weight of a merged LoRA model as export_merged saves it: the base is loaded in fp32.
_LORA_MERGED_DTYPE = "float32"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

_export_state = threading.Lock()          # guards the two below
_runs_exporting: set[Path] = set()        # runs with an export being prepared, by resolved path
_reserved: dict[int, int] = {}            # bytes each export in progress may still write, by ticket
_tickets = itertools.count()


class ExportBusyError(UserError):
    """An export of this run is being prepared already (zip_result)."""


class ExportDiskError(UserError):
    """The export would not fit on the disk (zip_result): refused before anything is written."""


def base_params(run: RunDir, what: str) -> int | None:
    """Parameters of the run's base model, from its config alone (forecast.model_shape); None,
    logged, when its shape is not known here: `what` export then has no size estimate."""
    from .forecast.shape import model_shape
    try:
        return model_shape(run.read_config().model).total
    except UserError as e:
        log.warning("no size estimate for the %s export of run %s: %s", what, run.run_id, e)
        return None


def merged_model_bytes(run: RunDir) -> int | None:
    """Bytes of the standalone model export_merged writes for `run`: model/ as it is (full
    fine-tuning), else every base weight once (a tied lm_head once) in the saved dtype (fp32
    for LoRA, the trained compute dtype for QLoRA, see the module docstring) plus the tokenizer
    files (counted as the adapter folder, an overestimate by the adapter's weights). None when
    the base model's shape is not known here (forecast.model_shape)."""
    full, adapter = run.path / MODEL_DIR, run.path / ADAPTER_DIR
    if full.is_dir():
        return folder_bytes(full)
    config = run.read_config()
    dtype = _trained_compute_dtype(run, config) if config.method == "qlora" else _LORA_MERGED_DTYPE
    params = base_params(run, "merged")
    return None if params is None else params * _DTYPE_BYTES.get(dtype, 4) + folder_bytes(adapter)


def export_peak_bytes(run: RunDir, kind: str, quant: str = "f16") -> int | None:
    """The most an export of `kind` holds on the disk at once: the zip of the adapter; the
    merged model and its zip side by side; the GGUF file (with q4_k_m's f16 file before it) and
    its zip, stored uncompressed. A zip is counted at its folder's size, an upper bound
    (measured with tests/tiny_model.py Llamas, transformers 5.24: merged models zip to 0.90-0.93
    of their folder, and issue 11's 135M model to 449 of 517 MB; a 1-step adapter to 0.24, its B
    matrices still near zero). None when the model's size is not known here."""
    from .gguf_export import disk_peak_bytes, file_bytes
    result = run.result_dir
    if result is None:
        status = run.read_status().get("status")
        raise UserError(f"run {run.run_id} has no trained result to export yet (status: {status})")
    if kind == "adapter":
        return folder_bytes(result)
    if kind == "gguf":
        params = base_params(run, "GGUF")
        return None if params is None else disk_peak_bytes(params, quant) + file_bytes(params, quant)
    model = merged_model_bytes(run)
    return None if model is None else 2 * model


@contextlib.contextmanager
def _one_export_of(run: RunDir):
    """One export per run at a time: a second one is refused while the first is prepared
    (two merged exports of a run would each hold a model in memory and twice its size on
    the disk, for the same file)."""
    key = run.path.resolve()
    with _export_state:
        if key in _runs_exporting:
            raise ExportBusyError(f"an export of run {run.run_id} is being prepared; try again when it is done")
        _runs_exporting.add(key)
    try:
        yield
    finally:
        with _export_state:
            _runs_exporting.discard(key)


@contextlib.contextmanager
def _disk_reserved(run: RunDir, kind: str, dest: Path, quant: str = "f16"):
    """Refuse the export (ExportDiskError) unless the disk of `dest` has room for its peak
    plus the margin kept spare for runs (disk.DISK: the disk is shared, and a full disk breaks
    more than this download), counting what the exports in progress may still write; then
    hold that room until it ends."""
    peak = export_peak_bytes(run, kind, quant)
    need = int((peak or 0) * (1 + DISK.margin_fraction)) + DISK.margin_bytes
    what = {"adapter": "its adapter", "merged": "the merged model and its zip",
            "gguf": f"the {quant} GGUF file and its zip"}[kind]
    with _export_state:
        free = free_bytes(dest) - sum(_reserved.values())
        if need > free:
            size = f"about {gb(peak)} ({what})" if peak is not None else f"{what} (of a size not known here)"
            raise ExportDiskError(
                f"not enough disk to prepare this download: the {kind} export of run {run.run_id} writes {size}, "
                f"and {gb(DISK.margin_bytes)} + {DISK.margin_fraction:.0%} is kept spare: {gb(need)} needed, "
                f"{gb(max(free, 0))} free. Delete runs you no longer need (Runs tab)"
                + (", or download the adapter only" if kind == "merged" else "")
                + (", or pick a smaller quantization" if kind == "gguf" else ""))
        ticket = next(_tickets)
        _reserved[ticket] = peak or 0
    try:
        yield
    finally:
        with _export_state:
            del _reserved[ticket]


# Stored as they are in a zip: deflate shrinks a GGUF's quantized or half-precision weights by a
# few percent at the cost of seconds per 100 MB.
_STORED_SUFFIXES = (".gguf",)


def _zip_folder(folder: Path, zip_path: Path, inside: Path) -> Path:
    """Zip the files under `folder` (names relative to it) into `zip_path`, written under a
    temporary name and renamed when whole, so a failure leaves no zip. Links are followed
    (their contents zipped) only while they resolve inside `inside`; one leading outside is
    refused (UserError), checked for each file as it is read. shutil.make_archive follows
    every link, which is why it is not used."""
    real_inside = inside.resolve()
    partial = zip_path.with_name(f".{zip_path.name}.partial")
    seen: set[Path] = set()
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                here = Path(dirpath)
                real = here.resolve()
                if real in seen:  # a link back to a folder zipped already: each folder once, no loop
                    dirnames[:] = []
                    continue
                seen.add(real)
                dirnames.sort()
                for name in sorted(dirnames + filenames):
                    entry = here / name
                    if not entry.resolve().is_relative_to(real_inside):
                        raise UserError(f"{entry.relative_to(folder.parent).as_posix()} is a link to a file outside "
                                        f"the run, and the studio zips nothing outside the runs folder: replace "
                                        f"the link with the file itself")
                for name in sorted(filenames):
                    entry = here / name
                    z.write(entry.resolve(), entry.relative_to(folder).as_posix(),
                            zipfile.ZIP_STORED if entry.suffix in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED)
        partial.replace(zip_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return zip_path


EXPORT_KINDS = ("adapter", "merged", "gguf")


def zip_result(run: RunDir, kind: str, dest_dir: str | Path, quant: str = "f16",
               progress: Callable[[float, str], None] | None = None) -> Path:
    """A zip of the run's adapter (`adapter`), of the merged standalone model (`merged`), or of
    its GGUF file with an Ollama Modelfile (`gguf`, in quantization `quant`), written into
    dest_dir (a temporary folder of the caller's), for download.

    The merged model or GGUF is written into a scratch folder of its own inside dest_dir (never
    into the run folder), and removed when zipped; on any failure nothing of this export is
    left. Refused with a UserError: a second export of the run while one is prepared
    (ExportBusyError), an export the free disk of dest_dir cannot hold (ExportDiskError), a
    result holding links that lead outside the run; for GGUF, what gguf_export.check_exportable
    refuses."""
    if kind not in EXPORT_KINDS:
        raise UserError(f"export kind must be one of {', '.join(EXPORT_KINDS)}, got {kind!r}")
    stack.load()  # the size estimates read the model's config (transformers); the exports build it
    run.check_result_links()
    if kind == "gguf":
        from .gguf_export import check_exportable
        check_exportable(run, quant)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with _one_export_of(run), _disk_reserved(run, kind, dest, quant):
        if kind == "adapter":
            result = run.result_dir
            return _zip_folder(result, dest / f"{run.run_id}-{result.name}.zip", inside=run.path)
        scratch = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=dest))
        try:
            if kind == "gguf":
                from .gguf_export import export_gguf

                def step(fraction: float, text: str) -> None:  # the zip is the last 5%
                    if progress is not None:
                        progress(0.95 * fraction, text)
                name = f"{run.run_id}-gguf-{quant}"
                folder = export_gguf(run, scratch / name, quant, step, disk_checked=True).folder
                if progress is not None:
                    progress(0.95, "zipping the GGUF file and its Modelfile")
            else:
                name = f"{run.run_id}-merged"
                folder = export_merged(run, scratch / name)
            return _zip_folder(folder, dest / f"{name}.zip", inside=scratch)
        finally:
            shutil.rmtree(scratch)


def push_to_hub(run: RunDir, repo_id: str, token: str, kind: str = "adapter", private: bool = True,
                quant: str = "f16") -> str:
    """Upload the adapter (or merged model, or GGUF file with its Modelfile) to a Hugging Face
    repo; returns its URL.
    The token is used for this call only and never written anywhere."""
    import tempfile

    from huggingface_hub import HfApi

    from .config import HUB_ID
    if not HUB_ID.fullmatch(repo_id or "") or ".." in repo_id:
        raise UserError(f"repo id must look like your-name/model-name, got {repo_id!r}")
    if not token:
        raise UserError("a Hugging Face token with write access is needed: paste one or set HF_TOKEN")
    stack.load()  # the merged and GGUF exports build the model
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "merged":
            folder = export_merged(run, Path(tmp) / "merged")
        elif kind == "gguf":
            from .gguf_export import export_gguf
            folder = export_gguf(run, Path(tmp) / "gguf", quant).folder
        elif run.result_dir is not None:
            run.check_result_links()  # upload_folder reads through links: none may lead outside the run
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
