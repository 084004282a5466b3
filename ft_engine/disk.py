"""Disk forecast: how much a run will write, said before Start and refused when it won't fit.

A run directory (rundir.py) fills with:

    checkpoints/checkpoint-N/   every checkpoint_steps steps, and at the last step (transformers'
                                DefaultFlowCallback saves at the end when saving by steps). Each:
        the trainable weights   full: model.safetensors, every parameter in its training dtype
                                (fp32; bf16 with adamw_lean in a bf16 run); LoRA / QLoRA:
                                adapter_model.safetensors, the fp32 adapters only
        optimizer.pt            the optimizer's state (forecast/estimate.py's optimizer_state rule:
                                AdamW 8 B per trainable parameter, 8-bit AdamW and adamw_lean
                                ~2 B, SGD nothing)
        the tokenizer           the Trainer saves its processing_class into every checkpoint
        the rest                scheduler.pt, rng_state.pth, trainer_state.json, training_args.bin,
                                config files
    model/ or adapter/          the result (TrainingJob._save_result): the weights as saved and
                                the tokenizer
    config.yaml, status.json, metrics.jsonl, events.jsonl, data.json

The Trainer keeps save_total_limit (checkpoints_kept) checkpoints, but it writes the new one
before it deletes the oldest (Trainer._save_checkpoint, then rotate_checkpoints): kept + 1
exist at once. The need is those, plus the result: a fresh run writes its result after the
last rotation, but a resumed run keeps the result it saved when it was stopped while its
checkpoints rotate, so counting both covers either (a fresh run overstates by one result).

Every measured number is in `DiskConstants`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, lean_optimizer_problems
from .errors import UserError

GB = 1000 ** 3
"""Disks are sold, and Spaces sized ("50 GB"), in decimal gigabytes: `df -H` shows the same."""

SAVED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
"""What tokenizer.save_pretrained writes in transformers 5 (measured on the bundled SmolLM2 and
the tests' tiny tokenizer: the same bytes as the model folder's own files)."""


@dataclass(frozen=True)
class DiskConstants:
    """The sizes of what a checkpoint holds besides weights and optimizer state. Measured on
    2026-12-03 with transformers 5.24, torch 2.13 (CPU), peft 0.21: tiny Llama (hidden 64, 2
    layers, 125k parameters) runs of 5 steps with a checkpoint at every step (tests/test_disk.py
    compares a whole run directory with the forecast)."""

    safetensors_per_tensor: int = 128
    """safetensors' JSON header per tensor (name, dtype, shape, offsets): 102 B measured for a
    full tiny Llama's 21 tensors, 127 B for the longer names of LoRA's 28."""
    torch_save_per_tensor: int = 290
    """torch.save's cost per tensor in optimizer.pt beyond its data: the zip record (data
    64-byte aligned), its central directory entry and the pickled reference. AdamW, 3 tensors
    per parameter (exp_avg, exp_avg_sq, step): 852 B per parameter (full) and 842 (LoRA)."""
    optimizer_file_base: int = 1_600
    """optimizer.pt with no state: the pickled param_groups (SGD without momentum: 1,593 B)."""
    lean_generator_state: int = 5_100
    """adamw_lean saves its stochastic-rounding generator's state (a CPU generator: 5,056 B)."""
    checkpoint_other: int = 22_500
    """The rest of a checkpoint: rng_state.pth 14,455 B (CPU; a GPU adds its generator's
    state), training_args.bin 5,329, scheduler.pt 1,465, trainer_state.json 1,210 before its
    log history; plus `result_config`."""
    result_config: int = 1_600
    """config.json 718 B + generation_config.json 195 (full), or adapter_config.json 1,592
    (LoRA): in every checkpoint and in the result."""
    peft_readme: int = 5_190
    """peft writes a model card (README.md) with every adapter it saves."""
    trainer_state_per_log: int = 170
    """trainer_state.json's log history grows by ~167 B per logged step (in every checkpoint)."""
    metrics_per_log: int = 280
    """A metrics.jsonl row (~280 B per logged step) in the run directory."""
    run_files: int = 5_000
    """config.yaml (650 B), data.json (393), status.json (1,360), events.jsonl (~1 KB), with room."""
    tokenizer_unknown: int = 16 * 10 ** 6
    """A tokenizer whose files are not on this machine yet: more than Llama 3's tokenizer.json
    (9.1 MB), the largest of the Llama / Mistral / Qwen2 families the forecast knows."""
    margin_bytes: int = GB
    """Room kept free beyond the forecast: the disk is shared (a hub model's first download,
    the Hugging Face cache, logs, uploads are written there too and are not counted), and a
    full disk breaks more than this run."""
    margin_fraction: float = 0.05
    """And this share of the need: the forecast's own error (tiny-model runs within 1%,
    tests/test_disk.py; not yet checked on a 1B model's files) and filesystem blocks (a file
    takes whole 4 KiB blocks)."""


DISK = DiskConstants()


@dataclass
class DiskForecast:
    """Bytes a run writes to its run directory; `peak_bytes` is what it needs free."""

    method: str
    checkpoint_bytes: int
    """One checkpoint-N folder (`parts` breaks it down)."""
    checkpoints_written: int | None
    """How many checkpoints the run saves (None: its steps are not known yet)."""
    checkpoints_at_once: int
    """The most that exist together: checkpoints_kept + 1 while the newest is written."""
    checkpoints_kept: int
    result_bytes: int
    """model/ (full) or adapter/ (LoRA, QLoRA), with the tokenizer."""
    run_files_bytes: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        """The most the run directory holds at once (module docstring): the need."""
        return self.checkpoints_at_once * self.checkpoint_bytes + self.result_bytes + self.run_files_bytes

    @property
    def final_bytes(self) -> int:
        """What the run directory holds when the run has ended: the kept checkpoints and the result."""
        kept = self.checkpoints_kept if self.checkpoints_written is None \
            else min(self.checkpoints_written, self.checkpoints_kept)
        return kept * self.checkpoint_bytes + self.result_bytes + self.run_files_bytes

    def needed_free_bytes(self, constants: DiskConstants = DISK) -> int:
        """What must be free before the run starts: the peak plus the safety margin."""
        return int(self.peak_bytes * (1 + constants.margin_fraction)) + constants.margin_bytes

    def summary(self) -> str:
        """'3 checkpoints of 14.8 GB while the newest is written + the 5.0 GB model'."""
        result = f"the {gb(self.result_bytes)} {'model' if self.method == 'full' else 'adapter'}"
        n = self.checkpoints_at_once
        if not n:
            return f"{result}, no checkpoints"
        rotating = " while the newest is written" if n > self.checkpoints_kept else ""
        return f"{n} checkpoint{'s' * (n > 1)} of {gb(self.checkpoint_bytes)}{rotating} + {result}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "checkpoint_bytes": self.checkpoint_bytes,
                "checkpoints_written": self.checkpoints_written, "checkpoints_at_once": self.checkpoints_at_once,
                "checkpoints_kept": self.checkpoints_kept, "result_bytes": self.result_bytes,
                "run_files_bytes": self.run_files_bytes, "checkpoint_parts_bytes": dict(self.parts),
                "peak_bytes": self.peak_bytes, "peak_gb": round(self.peak_bytes / GB, 2),
                "final_bytes": self.final_bytes, "needed_free_bytes": self.needed_free_bytes()}


def gb(nbytes: float) -> str:
    return f"{nbytes / GB:,.1f} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1e6:,.1f} MB"


def planned_steps(config: RunConfig, train_rows: int | None, processes: int = 1) -> int | None:
    """The optimizer steps the Trainer will run: max_steps, else epochs × steps per epoch as
    transformers counts them (batches per epoch / grad_accum, rounded up, at least 1; with
    several processes each takes every n-th batch, accelerate's sharding, so a process sees
    the batches / processes, rounded up). None when max_steps is 0 and the rows are not known."""
    if config.max_steps > 0:
        return config.max_steps
    if not train_rows:
        return None
    batches = math.ceil(math.ceil(train_rows / config.batch_size) / max(processes, 1))
    per_epoch = max(batches // config.grad_accum + int(batches % config.grad_accum > 0), 1)
    return math.ceil(config.epochs * per_epoch)


def tokenizer_bytes(model: str, constants: DiskConstants = DISK) -> int:
    """Bytes of the tokenizer as saved: the model folder's (or the local Hugging Face cache's)
    tokenizer files, which save_pretrained writes back unchanged; `tokenizer_unknown` when they
    are not on this machine (a hub model not downloaded yet, the built-in 1B shape)."""
    from .forecast.shape import LLAMA_1B_SHAPE
    if model == LLAMA_1B_SHAPE:
        return constants.tokenizer_unknown
    from .models import model_source
    source = model_source(model)
    if Path(source).is_dir():
        files = [Path(source) / name for name in SAVED_TOKENIZER_FILES]
    else:
        from huggingface_hub import try_to_load_from_cache
        cached = [try_to_load_from_cache(source, name) for name in SAVED_TOKENIZER_FILES]
        files = [Path(c) for c in cached if isinstance(c, str)]
    sizes = {f.name: f.stat().st_size for f in files if f.is_file()}
    if "tokenizer.json" not in sizes:  # a slow (sentencepiece) tokenizer is converted when saved
        return constants.tokenizer_unknown
    return sum(sizes.values())


def _optimizer_file_bytes(config: RunConfig, state: int, tensors: list[tuple[int, bool]],
                          c: DiskConstants) -> int:
    """optimizer.pt: the state (forecast's rule) plus torch.save's cost per state tensor."""
    from .forecast.constants import DEFAULTS
    if config.optimizer == "sgd":
        return c.optimizer_file_base
    if config.optimizer == "adamw_torch":
        records = 3 * len(tensors)  # exp_avg, exp_avg_sq, step
    else:  # 8-bit moments and their absmaxes, or two fp32 moments for the tensors kept in 32 bits
        from .lean_optimizer import MIN_8BIT_SIZE
        small = MIN_8BIT_SIZE if config.optimizer == "adamw_lean" else DEFAULTS.adam8bit_min_size
        records = sum(2 if n < small or (emb and config.optimizer == "adamw_8bit") else 4 for n, emb in tensors)
    extra = c.lean_generator_state if config.optimizer == "adamw_lean" else 0
    return state + c.optimizer_file_base + c.torch_save_per_tensor * records + extra


def disk_forecast(config: RunConfig, shape=None, *, steps: int | None = None, device: str | None = None,
                  tokenizer: int | None = None, constants: DiskConstants = DISK) -> DiskForecast:
    """What `config` writes to its run directory. `steps`: the optimizer steps it runs (see
    `planned_steps`; None: unknown, so as many checkpoints as can exist at once). `tokenizer`:
    its saved bytes (default `tokenizer_bytes`). `optimizer: auto` counts as adamw_torch, the
    most it can write (it becomes adamw_lean only when memory is short when the run starts).
    Raises UserError for a model the memory forecast does not know (forecast.model_shape)."""
    from .forecast.estimate import forecast, trainable_tensors
    from .forecast.shape import model_shape
    c = constants
    shape = shape or model_shape(config.model)
    if config.optimizer == "auto":
        config = config.replace(optimizer="adamw_torch")
    fc = forecast(config, shape, device)
    tensors = trainable_tensors(config, shape)
    tok = tokenizer_bytes(config.model, c) if tokenizer is None else tokenizer
    weights = fc.components["weights_trainable"] + c.safetensors_per_tensor * len(tensors)
    readme = c.peft_readme if config.method != "full" else 0
    logged = (steps or 0) // config.logging_steps
    parts = {"weights": weights,
             "optimizer": _optimizer_file_bytes(config, fc.components["optimizer_state"], tensors, c),
             "tokenizer": tok,
             "other": c.checkpoint_other + c.result_config + readme + c.trainer_state_per_log * logged}
    written = None
    if config.checkpoint_steps == 0:
        written = 0
    elif steps is not None:
        written = math.ceil(steps / config.checkpoint_steps)
    at_once = config.checkpoints_kept + 1 if written is None else min(written, config.checkpoints_kept + 1)
    return DiskForecast(method=config.method, checkpoint_bytes=sum(parts.values()),
                        checkpoints_written=written, checkpoints_at_once=at_once,
                        checkpoints_kept=config.checkpoints_kept,
                        result_bytes=weights + tok + readme + c.result_config,
                        run_files_bytes=c.run_files + c.metrics_per_log * logged, parts=parts)


# --- free space ------------------------------------------------------------------------------

def existing_parent(path: str | Path) -> Path:
    """`path`, or its nearest ancestor that exists (the runs folder is made on the first run)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) `path`."""
    return shutil.disk_usage(existing_parent(path)).free


def folder_bytes(path: str | Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def disk_line(fc: DiskForecast, runs_dir: str | Path, free: int | None = None) -> str:
    """'this run will take up to X GB in <runs dir> (...); Y GB free'."""
    free = free_bytes(runs_dir) if free is None else free
    return f"this run will take up to {gb(fc.peak_bytes)} in {runs_dir} ({fc.summary()}); {gb(free)} free"


def _fixes(config: RunConfig, fc: DiskForecast, steps: int | None, room: int, shape, device) -> list[str]:
    """Single changes that shrink what the run writes, each with its new need and whether it fits
    in `room` (the free bytes, plus what a resumed run has written already)."""
    candidates: list[tuple[str, dict[str, Any]]] = []
    if config.checkpoint_steps > 0:
        candidates.append(("set checkpoint_steps to 0 (no checkpoints, so the run cannot be resumed)",
                           {"checkpoint_steps": 0}))
        if config.checkpoints_kept > 1:
            candidates.append(("keep 1 checkpoint (checkpoints_kept 1)", {"checkpoints_kept": 1}))
    if config.method == "full":
        if config.optimizer in ("auto", "adamw_torch") and not lean_optimizer_problems(config):
            candidates.append(("use optimizer adamw_lean (8-bit state, bf16 weights in a bf16 run)",
                               {"optimizer": "adamw_lean"}))
        candidates.append(("use lora (only the adapters are saved)", {"method": "lora"}))
    out = []
    for desc, change in candidates:
        new = disk_forecast(config.replace(**change), shape, steps=steps, device=device,
                            tokenizer=fc.parts["tokenizer"])
        need = new.needed_free_bytes()
        out.append(f"{desc}: {gb(new.peak_bytes)}{'' if need <= room else ', still too much'}")
    return out


def check_disk(config: RunConfig, steps: int | None, run_dir: Path | None = None,
               device: str | None = None) -> str:
    """Raise DiskShortError, with the fixes, when the filesystem of config.runs_dir has less
    free than the run needs (`DiskForecast.needed_free_bytes`); else return the line a new
    run keeps in status.json (`disk_forecast`): `disk_line`, or why there is no disk forecast
    (a model the memory forecast does not know). For a resumed run (`run_dir`), what it wrote
    already is on the disk and counts as room."""
    from .forecast.shape import model_shape
    try:
        shape = model_shape(config.model)
        fc = disk_forecast(config, shape, steps=steps, device=device)
    except UserError as e:
        return f"no disk forecast: {e}"
    free = free_bytes(run_dir or config.runs_dir)
    room = free + (folder_bytes(run_dir) if run_dir is not None else 0)
    if fc.needed_free_bytes() <= room:
        return disk_line(fc, config.runs_dir, free)
    short = fc.needed_free_bytes() - room
    where = existing_parent(run_dir or config.runs_dir)
    fixes = _fixes(config, fc, steps, room, shape, device)
    raise DiskShortError(
        f"not enough disk: {disk_line(fc, config.runs_dir, free)}, and {gb(DISK.margin_bytes)} + "
        f"{DISK.margin_fraction:.0%} is kept spare. Fixes: " + "; ".join(fixes)
        + f"; or free {gb(short)} in {where}.")


class DiskShortError(UserError):
    """The run would fill the disk (check_disk): raised before anything is written."""
