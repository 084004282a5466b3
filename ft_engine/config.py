"""`RunConfig`: the one typed description of a fine-tuning run.

The studio builds it from widgets, the command line from flags and YAML, the engine consumes
it, and the run directory stores it as `config.yaml`, so every result carries the settings
that made it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError, UserError

Method = Literal["full", "lora", "qlora"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
Optimizer = Literal["auto", "adamw_torch", "adamw_8bit", "adamw_lean", "sgd"]
QuantType = Literal["nf4", "fp4"]
ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]
DataFormat = Literal["auto", "chat", "sharegpt", "alpaca", "prompt_completion", "text"]
Strategy = Literal["ddp", "fsdp"]

BUNDLED_MODEL = "bundled"
ALL_LINEAR = "all-linear"

# A hub id is "owner/name": letters, digits, '-', '_', '.'; never '..' (no path tricks).
# Learning rates that learn something in ~30 steps, by method: adapters start from zero and need
# larger steps than a full fine-tune, which moves weights that already work. The studio's
# "Quick demo" preset (ui/form.py) and Compare methods (compare.py) both use these.
SHORT_RUN_LEARNING_RATES = {"full": 5e-5, "lora": 1e-3, "qlora": 1e-3}

# A Hugging Face repo id, owner/name: what the Train tab, the config and Push to the Hub accept.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A run name ends up in a folder name: keep it to plain characters.
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
# The seed goes to numpy.random.seed (through transformers.set_seed), which takes 0..2**32 - 1;
# a bigger one passed validation and failed the run at its first line (issue 11).
MAX_SEED = 2**32 - 1
# Every other whole-number setting is a count or a size that torch and the Trainer keep in a C
# int; beyond this no run is meaningful, and a value there failed at start instead of here.
MAX_WHOLE_NUMBER = 2**31 - 1


def default_runs_dir() -> str:
    """`FT_RUNS_DIR` if set, else ./runs."""
    return os.environ.get("FT_RUNS_DIR") or "runs"


@dataclass
class RunConfig:
    """Everything that decides what a run does. Defaults give a sensible short LoRA run."""

    # --- what to train -------------------------------------------------------------------
    model: str = BUNDLED_MODEL
    """`bundled` (SmolLM2-135M-Instruct shipped offline), a Hugging Face hub id such as
    `meta-llama/Llama-3.2-1B-Instruct` (needs network, and HF_TOKEN for gated models), or a
    local folder holding a transformers model (config.json + weights + tokenizer)."""
    method: Method = "lora"
    """`full`: every weight trains. `lora`: the base is frozen, low-rank adapters train.
    `qlora`: the base is quantized to 4 bits (bitsandbytes), LoRA adapters train on top."""
    data: str = ""
    """Path of the training data: .jsonl, .json, .csv, .parquet or .txt."""
    data_format: DataFormat = "auto"
    """`auto` detects it from the columns; or force chat / sharegpt / alpaca /
    prompt_completion / text."""
    train_on_prompt: bool = False
    """False: loss only on assistant / completion tokens (the usual choice). True: on every
    token, prompts included."""
    val_fraction: float = 0.0
    """Share of rows held out for an evaluation loss (0 disables evaluation; e.g. 0.1)."""
    max_rows: int = 0
    """Train on the first N rows of the file only (0 = every row); a public demo caps it
    with FT_MAX_ROWS."""

    # --- optimisation --------------------------------------------------------------------
    learning_rate: float = 2e-4
    """Peak learning rate. LoRA likes ~1e-4..3e-4; full fine-tuning ~1e-5..5e-5."""
    epochs: float = 1.0
    """Passes over the data; ignored when max_steps > 0."""
    max_steps: int = 0
    """Optimizer steps to run; 0 means 'use epochs'."""
    batch_size: int = 4
    """Rows per forward pass (per device). They are packed end to end without padding (in
    lanes no longer than the batch's longest row), so a batch costs its real tokens, not
    rows × longest row; epochs and steps count rows as always."""
    grad_accum: int = 1
    """Batches per optimizer step; effective batch = batch_size * grad_accum."""
    tokens_per_pass: int = 0
    """How many token slots one forward/backward pass holds: a batch is cut into passes of
    whole lanes and their gradients are summed, the same as one pass would give, but only one
    pass's activations exist at a time. 0 = auto: 512 on a CPU (less memory and no slower),
    the whole batch on a GPU. A lane (up to the batch's longest row) is never cut."""
    max_seq_len: int = 512
    """Longer rows are cut to this many tokens (and counted in the data report)."""
    warmup_ratio: float = 0.03
    """Share of steps over which the learning rate ramps up from 0."""
    scheduler: Scheduler = "cosine"
    """Learning-rate schedule after warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm (0 disables clipping)."""
    optimizer: Optimizer = "auto"
    """`auto`: adamw_torch, unless a full fine-tune with it will not fit the memory available;
    then adamw_lean. `adamw_torch`: fp32 AdamW. `adamw_8bit`: bitsandbytes' 8-bit AdamW (less
    optimizer memory). `adamw_lean` (full fine-tuning in the least memory): bf16 weights,
    8-bit AdamW state, each weight updated during backward so the gradients never all exist
    at once; about 4 bytes per parameter instead of 16, but no gradient clipping and
    grad_accum must be 1. `sgd`: no optimizer state."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 20-30% slower."""
    seed: int = 42
    """Seeds data shuffling, the validation split and weight init of adapters."""

    # --- bookkeeping ---------------------------------------------------------------------
    logging_steps: int = 1
    """Write a metrics line every N optimizer steps."""
    eval_steps: int = 0
    """Evaluate every N steps when val_fraction > 0 (0: only at the end)."""
    checkpoint_steps: int = 50
    """Save a resumable checkpoint every N steps (0: no intermediate checkpoints)."""
    checkpoints_kept: int = 2
    """How many recent checkpoints to keep on disk."""
    runs_dir: str = field(default_factory=default_runs_dir)
    """Where run directories are created (`FT_RUNS_DIR`, default ./runs)."""
    run_name: str = ""
    """Optional human name; becomes part of the run id (letters, digits, space, _ . -)."""

    # --- LoRA ----------------------------------------------------------------------------
    lora_r: int = 16
    """Rank of the adapters: h = W0·x + (alpha/r)·B·A·x with A: r×in, B: out×r."""
    lora_alpha: int = 32
    """Scale numerator; the update is multiplied by alpha / r."""
    lora_dropout: float = 0.05
    """Dropout on the adapter input."""
    lora_target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR])
    """Layers that get adapters: `all-linear` (every linear layer but the output head), or
    names such as q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj."""

    # --- QLoRA ---------------------------------------------------------------------------
    quant_type: QuantType = "nf4"
    """4-bit data type: `nf4` (NormalFloat, from the QLoRA paper) or `fp4`."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit per weight)."""
    compute_dtype: ComputeDtype = "auto"
    """dtype the 4-bit weights are dequantized to for matmuls; `auto`: the precision's dtype
    (bf16 / fp16, float32 when precision is fp32)."""

    # --- numerics ------------------------------------------------------------------------
    precision: Precision = "auto"
    """`auto`: bf16 mixed precision on GPUs with bf16 tensor cores (compute capability 8.0+:
    A100, L4, A10G, RTX 30/40), fp16 on older GPUs such as the T4; on a CPU bf16 where it has
    bf16 instructions (AVX512-BF16 or AMX), else fp32."""

    # --- scaling out (launch.py) -------------------------------------------------------
    devices: str = "auto"
    """Processes to train with, one GPU each: `auto` = every GPU CUDA_VISIBLE_DEVICES shows (1
    on a CPU), or a number. With 2 or more, accelerate launches them and each takes batch_size
    rows per step: the effective batch is batch_size * grad_accum * devices."""
    strategy: Strategy = "ddp"
    """How 2+ processes share the work. `ddp`: each holds the whole model and gradients are
    averaged. `fsdp`: weights, gradients and optimizer state are sharded over the processes
    (FSDP2 full sharding), for models one device cannot hold."""
    fsdp_cpu_offload: bool = False
    """With fsdp: keep the sharded weights, gradients and optimizer state in CPU memory between
    uses (slower; for a model the GPUs cannot hold even sharded)."""

    # ------------------------------------------------------------------------------------
    def validate(self, *, check_paths: bool = True) -> "RunConfig":
        """Raise one ConfigError listing every invalid setting, each with its fix."""
        problems: list[str] = []
        problems += _check_literals(self)

        def need(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.learning_rate < 1, f"learning_rate must be < 1 (try 2e-4), got {self.learning_rate}")
        need(self.epochs > 0 or self.max_steps > 0,
             f"epochs must be > 0 when max_steps is 0, got epochs={self.epochs}")
        need(self.max_steps >= 0, f"max_steps must be >= 0 (0 = use epochs), got {self.max_steps}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        need(self.tokens_per_pass >= 0,
             f"tokens_per_pass must be >= 0 (0 = auto; e.g. 512), got {self.tokens_per_pass}")
        need(16 <= self.max_seq_len <= 131072,
             f"max_seq_len must be between 16 and 131072 tokens, got {self.max_seq_len}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        need(0 <= self.val_fraction < 0.5, f"val_fraction must be in [0, 0.5), e.g. 0.1, got {self.val_fraction}")
        need(self.max_rows >= 0, f"max_rows must be >= 0 (0 = every row), got {self.max_rows}")
        need(self.logging_steps >= 1, f"logging_steps must be >= 1, got {self.logging_steps}")
        need(self.eval_steps >= 0, f"eval_steps must be >= 0 (0 = at the end), got {self.eval_steps}")
        need(self.checkpoint_steps >= 0, f"checkpoint_steps must be >= 0 (0 = none), got {self.checkpoint_steps}")
        need(self.checkpoints_kept >= 1, f"checkpoints_kept must be >= 1, got {self.checkpoints_kept}")
        need(0 <= self.seed <= MAX_SEED, f"seed must be between 0 and {MAX_SEED:,} (2**32 - 1), got {self.seed}")
        problems += _check_number_ranges(self)
        problems += scale_out_problems(self)
        nul = _texts_with_nul(self)  # reported once, by name; their other checks would only confuse
        problems += [f"{name} contains a NUL byte (\\x00): remove it" for name in nul]
        if self.optimizer == "adamw_lean":
            problems += lean_optimizer_problems(self)
        if self.method in ("lora", "qlora"):
            need(self.lora_r >= 1, f"lora_r must be >= 1 (try 8 or 16), got {self.lora_r}")
            need(self.lora_alpha >= 1, f"lora_alpha must be >= 1 (try 2 x lora_r), got {self.lora_alpha}")
            need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            need("lora_target_modules" in nul or (bool(self.lora_target_modules) and all(
                isinstance(m, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", m) for m in self.lora_target_modules)),
                f"lora_target_modules must list layer names such as q_proj, v_proj or 'all-linear', "
                f"got {self.lora_target_modules!r}")
        if self.run_name and "run_name" not in nul:
            need(bool(_RUN_NAME.fullmatch(self.run_name)) and ".." not in self.run_name,
                 f"run_name may use letters, digits, space, '_', '.', '-' (at most 64, no '/' or '..'), "
                 f"got {self.run_name!r}")
        problems += [] if "model" in nul else _check_model_id(self.model)
        if check_paths and "data" not in nul:
            if not self.data:
                problems.append("data is not set: give the path of a .jsonl/.json/.csv/.parquet/.txt file")
            elif not Path(self.data).is_file():
                problems.append(f"data file not found: {self.data} (check the path)")
        if problems:
            raise ConfigError(problems)
        return self

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from a mapping; unknown keys and wrong types are reported with the fix."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        problems = [f"unknown setting '{k}' (known settings: {', '.join(sorted(known))})" for k in unknown]
        hints = get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                continue
            try:
                kwargs[name] = _coerce(value, hints[name])
            except (TypeError, ValueError) as e:
                problems.append(f"{name}: {e}")
        if problems:
            raise ConfigError(problems)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "RunConfig":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p} (check the path)")
        try:
            values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"{p} is not valid UTF-8 YAML: {e}".splitlines()[0]) from e
        except RecursionError:  # PyYAML builds nested lists by recursion
            raise UserError(f"{p} is nested too deeply to read: a config is one mapping of settings "
                            f"(key: value)") from None
        if not isinstance(values, dict):
            raise UserError(f"{p} must hold a mapping of settings (key: value), got {type(values).__name__}")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# --- helpers -------------------------------------------------------------------------------

def lean_optimizer_problems(cfg: RunConfig) -> list[str]:
    """Why adamw_lean cannot run with these settings (none: it can). Validation reports them;
    `optimizer: auto` does not pick adamw_lean when there are any (forecast.resolve_optimizer)."""
    problems = []
    if cfg.grad_accum != 1:
        problems.append(f"optimizer adamw_lean updates each weight during backward, so it cannot accumulate "
                        f"gradients over micro-batches: set grad_accum to 1 (raise batch_size instead) or use "
                        f"adamw_8bit, got grad_accum={cfg.grad_accum}")
    if cfg.tokens_per_pass != 0:
        problems.append(f"optimizer adamw_lean updates each weight during backward, so a batch must be one "
                        f"pass: set tokens_per_pass to 0 (auto) or use adamw_8bit, got "
                        f"tokens_per_pass={cfg.tokens_per_pass}")
    if cfg.precision == "fp16":
        problems.append("optimizer adamw_lean cannot undo fp16 loss scaling (its step runs inside backward): "
                        "use precision bf16, fp32 or auto, or optimizer adamw_8bit")
    return problems


def device_count(cfg: RunConfig) -> int | None:
    """`devices` as a number; None for `auto` (launch.processes resolves it on the machine)."""
    value = str(cfg.devices).strip()
    return None if value == "auto" else int(value) if value.isascii() and value.isdigit() else -1


# More processes than this on one run is a typing slip, not a machine (8 GPUs a box is the most
# a box is sold with; multi-node runs count per node).
MAX_DEVICES = 64


def scale_out_problems(cfg: RunConfig) -> list[str]:
    """What is wrong with devices / strategy (none: fine)."""
    problems = []
    n = device_count(cfg)
    if n is not None and not 1 <= n <= MAX_DEVICES:
        problems.append(f"devices must be auto or a whole number from 1 to {MAX_DEVICES} (processes, one GPU "
                        f"each), got {cfg.devices!r}")
    if cfg.fsdp_cpu_offload and cfg.strategy != "fsdp":
        problems.append("fsdp_cpu_offload needs strategy fsdp: set strategy to fsdp or turn the offload off")
    if cfg.optimizer == "adamw_lean" and n is not None and n > 1:
        problems.append(lean_needs_one_process(n))
    return problems


def lean_needs_one_process(processes: int) -> str:
    return (f"optimizer adamw_lean steps each weight inside backward, before the {processes} processes have "
            f"averaged its gradient, so their models would drift apart: use adamw_8bit (or adamw_torch) with "
            f"devices {processes}, or devices 1")


def _check_literals(cfg: RunConfig) -> list[str]:
    problems = []
    for name, hint in get_type_hints(RunConfig).items():
        if get_origin(hint) is Literal:
            allowed = get_args(hint)
            value = getattr(cfg, name)
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return problems


def _check_number_ranges(cfg: RunConfig) -> list[str]:
    """Numbers the comparisons in validate() let through: inf and NaN (JSON and YAML can spell
    both; NaN fails most comparisons, but not `epochs` once max_steps is set) and whole numbers
    too big for the C ints torch keeps them in."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.type == "float" and isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name} must be a finite number, got {value}")
        elif f.type == "int" and f.name != "seed" and isinstance(value, int) and value > MAX_WHOLE_NUMBER:
            problems.append(f"{f.name} must be at most {MAX_WHOLE_NUMBER:,}, got {value}")
    return problems


def _texts_with_nul(cfg: RunConfig) -> list[str]:
    """The free-text settings (paths, names) holding a NUL byte. The operating system ends a
    path there, so Python refuses it ('embedded null byte') wherever it is first used: at the
    start of a run, or in a page's handler. The Literal settings' own check names theirs."""
    texts = {"model": cfg.model, "data": cfg.data, "runs_dir": cfg.runs_dir, "run_name": cfg.run_name,
             "lora_target_modules": "".join(m for m in cfg.lora_target_modules or [] if isinstance(m, str))}
    return [name for name, value in texts.items() if isinstance(value, str) and "\x00" in value]


def _check_model_id(model: str) -> list[str]:
    if not isinstance(model, str) or not model.strip():
        return ["model is empty: use 'bundled', a hub id like meta-llama/Llama-3.2-1B-Instruct, or a local folder"]
    if model == BUNDLED_MODEL:
        return []
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [f"model folder {model} has no config.json: point to a folder saved with save_pretrained()"]
        return []
    if HUB_ID.fullmatch(model) and ".." not in model:
        return []
    if "/" in model and (model.startswith((".", "/", "~")) or "\\" in model or ".." in model):
        return [f"model folder not found: {model} (check the path, or use a hub id like owner/name)"]
    return [f"model {model!r} is neither 'bundled', an existing local folder, nor a hub id of the form "
            f"owner/name (e.g. meta-llama/Llama-3.2-1B-Instruct)"]


def _coerce(value: Any, hint: Any) -> Any:
    """Convert YAML / CLI values to the field's type, refusing lossy or odd conversions."""
    origin = get_origin(hint)
    if origin is Literal:
        return value  # checked with the allowed values in validate()
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of names, got {value!r}")
        return list(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TypeError(f"expected a whole number, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):  # JSON and YAML spell them (NaN, .inf); no setting means one
            raise TypeError(f"expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError(f"expected text, got {value!r}")
        return str(value)
    return value


def _field_docs() -> dict[str, str]:
    """Each field's docstring (the string under it in the class body), one line each, so the
    CLI's --help and the studio's help texts come from the one place settings are explained."""
    body = ast.parse(inspect.getsource(RunConfig)).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


FIELD_DOCS: dict[str, str] = _field_docs()


# --- chat -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatLimits:
    """What one chat request may ask of a loaded model (ft_engine.inference.ChatModel). The
    defaults cap nothing beyond the model's own context; a studio serving others sets them from
    FT_CHAT_* (ui/limits.py). A request over a cap is refused with the cap in the message, not
    cut down without a word."""

    max_new_tokens: int = 0
    """Most tokens one answer may ask for (0 = no cap)."""
    max_chars: int = 0
    """Most characters of the whole conversation (system prompt and every message), checked
    before anything is tokenized (0 = no cap)."""
    max_prompt_tokens: int = 0
    """Most tokens of the prompt as the chat template writes it (0 = the model's context only;
    prompt plus max_new_tokens must always fit the context)."""
    max_time_s: float = 0.0
    """Seconds one answer may generate for, counted from when it gets the model (a wait for
    another answer does not count); the answer then ends with a note saying so (0 = no limit)."""
