"""Memory forecast: will a run fit, before a single weight is loaded?

From a model's config alone (no weights, no network for local folders) we count every
parameter exactly, then add up what a training run keeps in memory, component by component,
the way `build_model` and the Trainer actually lay it out:

    weights            frozen + trainable parameters, in the dtype each method stores them
    quant_constants    QLoRA's per-block absmax scales (with or without double quantization)
    gradients          one per trainable parameter, same dtype as the parameter (fp32)
    optimizer_state    AdamW's two moments, 8-bit AdamW's two uint8 moments, or nothing (SGD)
    optimizer_temp     scratch the optimizer step allocates on top of its state
    autocast_copies    half-precision copies of fp32 weights cached by autocast (GPU, mixed precision)
    activations        tensors saved in the forward pass for the backward pass
    logits_loss        batch*seq*vocab logits, log-softmax and their gradients, in fp32
    runtime_overhead   CPU: the Python/torch/transformers process itself, plus, when loading
                       the model peaks higher than training (a half-precision file converted to
                       fp32), the difference; CUDA: cuBLAS workspace and QLoRA's dequantization
                       buffer

The forecast predicts what `ft_engine.memory` reports as a run's peak (`mem_peak_mib`):
CUDA `max_memory_allocated` on a GPU, the process's peak RSS on CPU. On CPU the peak is the sum
of the components (calibrated that way, within ±5%). On a GPU not all of them are alive
together: activations, logits and autocast copies are freed at the end of backward, before
`optimizer.step()` allocates its scratch, and the caching allocator hands the freed blocks
to it; so the peak is what lives throughout (`ALWAYS_ALIVE`) plus the larger of the two
phases (`PHASES`), and `Forecast.peak_phase` says which one. On a GPU the memory that
must be *free* is larger (CUDA context, allocator fragmentation): that is `needed_bytes`,
and the verdict compares it with what is available.

Every tunable number lives in `Constants` (one place) so a calibration on bigger models
changes numbers, not formulas.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from .config import ALL_LINEAR, BUNDLED_MODEL, RunConfig, lean_optimizer_problems
from .errors import UserError

MIB = 1024 * 1024
GIB = 1024 * MIB

LLAMA_1B_SHAPE = "llama-3.2-1b-shape"
"""A built-in config with Llama 3.2 1B's published shape, to plan without weights or network."""

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEARS = ATTENTION + MLP
"""What peft's `all-linear` targets in a Llama-style decoder (every linear but lm_head)."""

COMPONENTS = ("weights_frozen", "weights_trainable", "quant_constants", "gradients", "optimizer_state",
              "optimizer_temp", "autocast_copies", "activations", "logits_loss", "runtime_overhead")

VERDICTS = ("fits", "tight", "will not fit")

ALWAYS_ALIVE = ("weights_frozen", "weights_trainable", "quant_constants", "gradients", "optimizer_state",
                "runtime_overhead")
"""Alive in every phase of a GPU step. Gradients exist through backward and the step (and,
with grad_accum > 1, through the next micro-batches' forward): counted in both phases. The
optimizer state exists from the first step on, so the second step's forward/backward has it.
runtime_overhead holds the cuBLAS workspace (kept) and QLoRA's dequantization buffer (used in
forward/backward only, where a QLoRA peak comes: its optimizer step updates only the adapters)."""
PHASES = {"forward/backward": ("activations", "logits_loss", "autocast_copies"),
          "optimizer step": ("optimizer_temp",)}
"""Transients of each phase of a GPU step, never alive together: the forward/backward ones
are freed when backward ends (autocast's weight casts live as long as the saved tensors that
hold them), before optimizer.step() allocates its scratch."""
WHOLE_STEP = "whole step"
"""`peak_phase` when the components are summed: on CPU (the sum is what was calibrated against
peak RSS, which keeps freed memory: see Constants) and with adamw_lean (its step runs inside
backward, so step scratch and activations overlap)."""


@dataclass(frozen=True)
class Constants:
    """Every calibrated number of the forecast. Formulas are in `forecast`'s helpers; these
    are the knobs. Calibrated on CPU (torch 2.13, transformers 5.24, peft 0.21, bitsandbytes
    0.50, glibc malloc) against tiny Llamas (hidden 64-256, 2-4 layers), SmolLM2-135M and a
    Llama-3.2-1B-shaped model: bench/forecast_accuracy.py prints forecast vs measured peak
    (plain runs within ±5% there, the suggested changes within ±15% but one). The CUDA-only
    numbers are not yet checked against a GPU."""

    # --- activations: elements saved per layer per token (see `_activation_elements`) -------
    # Counted with torch.autograd.graph.saved_tensors_hooks on tiny Llamas (CPU, fp32).
    act_h_trainable: float = 6.0
    """hidden-sized tensors per layer when the base trains: for each of the 2 RMSNorms its
    input, the normalized hidden and its output (the input of the next linears)."""
    act_h_frozen: float = 1.5
    """hidden-sized tensors per layer with a frozen base (weights frozen: linears and norm
    weights need not keep their inputs); adapters add their own inputs on top."""
    act_q_attention: float = 4.0
    """attention-sized (heads*head_dim) tensors kept by SDPA: q, k and v (k, v repeated to all
    heads for grouped-query attention) and its output, which is also o_proj's input. No
    seq^2 score matrix: fused SDPA kernels recompute it."""
    act_i_trainable: float = 4.0
    """intermediate-sized tensors: gate out (silu), silu out and up out (mul), down's input."""
    act_i_frozen: float = 3.0
    """the same without down's input (a frozen down_proj needs only its weight)."""
    act_final_h_trainable: float = 3.0
    """hidden-sized tensors of the final norm (and lm_head's input) per token, base trains."""
    act_final_h_frozen: float = 1.0
    """the same with a frozen base."""
    lora_dropout_copies: float = 1.35
    """extra input-sized tensors per adapted linear when lora_dropout > 0 with torch's dropout
    (on a GPU; a CPU fuses it into A, see cpu_lora_dropout_mask_bytes): the dropped-out copy
    lora_A keeps and the mask (measured 1.35 inputs on average, fp32 on CPU, before fusing)."""
    cpu_lora_dropout_mask_bytes: float = 0.125
    """bytes per adapter input element kept by the CPU's fused LoRA dropout (fast_dropout.py):
    the keep-mask packed to bits; the input itself is shared and counted above."""
    mask_bytes: float = 4.0
    """bytes per element of the batch*seq*seq attention mask each layer's SDPA keeps (fp32 on
    CPU; halved with half-precision activations)."""
    backward_layers: float = 1.0
    """layers' worth of activations alive on top of the saved ones during backward (the
    gradients of one layer's intermediate tensors), base trains (measured: ~1)."""
    backward_layers_frozen: float = 3.5
    """the same with a frozen base and LoRA adapters, on a GPU: 3.5, measured on CPU on 2-4-layer
    models before the CPU allocator's share was told apart (CPU now uses
    `cpu_backward_layers_frozen` and `cpu_layer_factor_*`); to recheck on a GPU."""
    chunk_logits_copies: float = 1.5
    """chunks of fp32 logits alive in the chunked loss (loss.py): the logits, turned into
    their gradient in place, and that gradient's compute-dtype copy (half a chunk in bf16; a
    whole one would be fp32, where it is the same tensor)."""

    # --- CPU, frozen base: what glibc's allocator keeps -----------------------------------------
    cpu_layer_factor_lora: float = 1.42
    """On CPU with a frozen base (LoRA), each layer's activations cost this many times what it
    saves for backward; the extra is freed memory glibc keeps resident. Its malloc serves
    tensors under its mmap threshold (which rises with each freed block, up to 32 MiB) from heap
    arenas, and memory freed in the middle of a heap is not returned: from the second step on
    the peak includes those holes (the bundled model's LoRA peak rose 27% from step 1 to
    step 2, with 37 MiB of optimizer state). Fitted, with `cpu_backward_layers_frozen`, to peak
    RSS minus every other component, with bench/forecast_accuracy.py: 4-layer hidden-256 tiny
    Llama at 8x512 (tests/test_forecast.py), SmolLM2-135M (30 layers) at 1x256 and 4x512,
    Llama-3.2-1B-shaped (16 layers) at 1x256 and 2x512. Full fine-tuning shows no such extra
    (its gradients, allocated in backward and kept, fill the holes): the factor is 1 there."""
    cpu_layer_factor_lora_half: float = 1.78
    """`cpu_layer_factor_lora` for bf16 runs on a CPU (padding-free batches, fused dropout):
    fitted to SmolLM2-135M LoRA at 4x512 on 2026-12-02 (bench/forecast_accuracy.py: 3,471 MiB
    measured, 2,988 forecast with the fp32 factor); 1x256 then lands within 1%. The smaller
    bf16 tensors leave more of their freed memory in glibc's heap than fp32 ones did."""
    cpu_qlora_load_transient: float = 0.3
    """Loading for QLoRA on CPU peaks this share of the checkpoint file above the file, the
    4-bit weights and the rest (tensors on their way to 4 bits, loader bookkeeping; the cause
    is not isolated): fitted on 2026-12-02 to SmolLM2-135M (fp32 file: 1,446 MiB at 1x256, 218
    over) and the Llama-3.2-1B shape (bf16 file: 4,101-4,813 MiB at 1x256-2x512, up to 843
    over), bench/forecast_accuracy.py --only qlora."""
    cpu_layer_factor_qlora: float = 1.65
    """The same for QLoRA when its dequantized weights come from the heap: bitsandbytes' CPU
    path allocates and frees a dequantized fp32 copy of each weight (and int32 temporaries),
    interleaved with the activations, in every forward and backward (SmolLM2-135M at 1x256 and
    4x512: 1.65). When the largest linear's fp32 copy is over `cpu_mmap_threshold_max`, glibc
    maps and unmaps those copies instead and the factor is `cpu_layer_factor_lora` (the
    Llama-3.2-1B shape, 64 MiB gate/up/down copies: 1.34 measured at 2x512, LoRA's 1.30)."""
    cpu_mmap_threshold_max: int = 32 * MIB
    """glibc's largest dynamic mmap threshold on 64-bit Linux (DEFAULT_MMAP_THRESHOLD_MAX):
    blocks at least this big are always mmapped and go back to the OS when freed."""
    cpu_ckpt_retained_lora: float = 14.5
    """On CPU with a frozen base and activation checkpointing, the freed memory glibc keeps
    while checkpointed layers run and re-run, in layers' worth of the activations it serves from
    its heap (tensors under `cpu_mmap_threshold_max`; bigger ones are unmapped when freed):
    this many layers' worth for a deep model, fewer for a shallow one (see
    `cpu_ckpt_retained_depth`). Checkpointing saves less there than it does with a trainable
    base, whose gradients fill the holes: SmolLM2-135M LoRA at 4x512 peaked at 4,950 MiB with
    checkpointing, 8,598 without, where the saved tensors alone predict ~2,850
    (bench/forecast_accuracy.py --variant ckpt). The same model cut to 4, 10, 20 and 30 layers
    kept 2.2, 7.9, 10.5 and 12.2 layers' worth: it saturates, it does not grow with depth."""
    cpu_ckpt_retained_depth: float = 9.0
    """Layers over which that retention saturates: retained = cpu_ckpt_retained_* *
    max(0, 1 - exp(-(layers - cpu_ckpt_retained_from) / this)) * the heap-served bytes of one
    layer (fitted to the 4-30-layer cuts above)."""
    cpu_ckpt_retained_from: float = 2.7
    """Below about this many layers nothing measurable is retained."""
    cpu_ckpt_retained_qlora: float = 9.5
    """`cpu_ckpt_retained_lora` for QLoRA while its dequantized weights come from the heap (see
    `cpu_layer_factor_qlora`; SmolLM2-135M at 4x512: 4,235 MiB measured); with mmapped
    dequantized weights (the Llama-3.2-1B shape) QLoRA showed none."""
    cpu_backward_layers_frozen: float = 1.3
    """On CPU, `backward_layers_frozen`: layers' worth of activations alive on top of the
    saved ones during backward, fitted together with the factors above (it was 3.5 when the
    allocator's extra was not separated from it, on 2-4-layer models only)."""

    # --- CPU, full fine-tuning: the end of backward and the optimizer step --------------------
    cpu_full_end_copies: float = 2.5
    """fp32 copies of the largest trainable tensor (the embedding) alive on top of the weights,
    gradients and optimizer state at the end of backward, on CPU: the embedding's dense
    gradient and its sum into the gradient lm_head (tied) or the optimizer gave it. Only shows
    when activations are small next to the embedding (Llama-3.2-1B shape, 1x256, SGD: 2,481 MiB
    over weights + gradients + baseline = 2.5 copies of its 1,002 MiB embedding)."""
    cpu_adam8bit_step_copies: float = 3.9
    """The same during bitsandbytes' 8-bit AdamW step on CPU, whose 32-bit update of the
    embedding makes fp32 temporaries of it (Llama-3.2-1B shape, 1x256: 3.9 copies)."""

    cpu_lean_end_copies: float = 1.5
    """adamw_lean (lean_optimizer.py): copies of the largest tensor, in the weights' dtype, alive
    at the end of backward on top of weights and 8-bit state: the tied head's gradient made in
    the loss's forward, into which the embedding's backward adds its rows in place
    (loss.tied_embedding), and the index_add's scratch. Llama-3.2-1B shape, 1x512 with
    checkpointing, 2026-12-02: the peak (6,263 MiB) came in training, not at this point."""
    lean_scratch_copies: float = 6.0
    """adamw_lean's fp32 scratch per chunk of lean_optimizer.CHUNK_ELEMENTS: gradient, weight,
    both moments, rounding noise and the quantizer's output."""

    cpu_pass_widths_retained: float = 0.25
    """On a CPU, when a batch goes through in several passes (packing.split_passes): what the
    passes' many widths leave behind (oneDNN's per-shape kernels and buffers, allocator
    fragments; packing.PASS_WIDTH_QUANTUM bounds it), as a share of one pass's activations.
    It depends on how varied the rows are, which the forecast does not know: rows of one
    length (bench/forecast_accuracy.py, bundled LoRA 4x512: 1,658 MiB measured, 1,637 without
    this term) leave nothing; the stdlib instruction rows of bench/vs_trl.py (44-692 tokens,
    LoRA, batch 8: 1,951 MiB measured, 1,637 without it) about 0.5. Fitted halfway, so both
    land within ±10% (2026-12-02)."""

    # --- fixed costs ------------------------------------------------------------------------
    cpu_process_baseline: int = 590 * MIB
    """RSS of the training process when the engine starts measuring (memory.reset_peak, right
    before build_model): torch, transformers, peft, datasets and ft_engine imported, the
    tokenizer loaded and the data encoded. Measured 587-601 MiB (torch 2.13 CPU,
    transformers 5.24, SmolLM2's 49k-token tokenizer, 24 documents) by wrapping reset_peak in
    a TrainingJob. A much larger tokenizer or data set adds to it."""
    cuda_workspace: int = 32 * MIB
    """cuBLAS workspace, allocated through PyTorch's caching allocator (so it is counted)."""
    cuda_context: int = 500 * MIB
    """CUDA context + kernels: NOT counted by max_memory_allocated, but must be free."""
    cuda_fragmentation: float = 0.05
    """Caching-allocator slack (reserved but not allocated) as a share of the peak."""

    # --- quantization and optimizers ---------------------------------------------------------
    quant_block: int = 64
    """bitsandbytes 4-bit blocksize: one absmax per 64 weights."""
    double_quant_block: int = 256
    """double quantization: the 8-bit absmaxes get one fp32 scale per 256 blocks."""
    adam8bit_block: int = 256
    """bitsandbytes 8-bit optimizers: one fp32 absmax per 256 state values."""
    adam8bit_min_size: int = 4096
    """bitsandbytes keeps 32-bit state for tensors smaller than this."""

    # --- verdict ----------------------------------------------------------------------------
    tight_fraction: float = 0.85
    """Above this share of the available memory the verdict is `tight`."""


DEFAULTS = Constants()


# --- the model's shape --------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's dimensions and exact parameter counts by layer type.

    Counts per layer (h hidden, n heads, g kv heads, d head_dim, I intermediate, V vocab):
    q = h*n*d, k = v = h*g*d, o = n*d*h (+ biases where the config has them),
    gate = up = h*I, down = I*h, norms = 2*h; embedding = V*h, final norm = h,
    lm_head = V*h, or 0 when tied to the embedding (one shared tensor)."""

    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    checkpoint_dtype: str = "float32"
    """dtype of the weights in the model's files (config.json `dtype`; fp32 when it doesn't
    say): what loading reads, and on CPU what stays mapped in memory (see `forecast`)."""

    @property
    def checkpoint_bytes(self) -> int:
        """Bytes of the weights in the model's safetensors files (every parameter once; a tied
        lm_head is stored once)."""
        return _DTYPE_BYTES.get(self.checkpoint_dtype, 4) * self.total

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_bias(self, name: str) -> int:
        _, out = self.linear_dims()[name]
        return out if (self.attention_bias and name in ATTENTION) or (self.mlp_bias and name in MLP) else 0

    def linear_params(self, name: str) -> int:
        """Weight + bias of one linear layer of one decoder layer."""
        i, o = self.linear_dims()[name]
        return i * o + self.linear_bias(name)

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def norms_per_layer(self) -> int:
        return 2 * self.hidden

    @property
    def final_norm(self) -> int:
        return self.hidden

    @property
    def lm_head(self) -> int:
        """Extra parameters of the output head: 0 when tied to the embedding."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def per_layer(self) -> int:
        return sum(self.linear_params(n) for n in LINEARS) + self.norms_per_layer

    @property
    def linear_total(self) -> int:
        """Parameters (weights and biases) of all decoder linears: what QLoRA quantizes."""
        return self.layers * sum(self.linear_params(n) for n in LINEARS)

    @property
    def total(self) -> int:
        return self.embedding + self.layers * self.per_layer + self.final_norm + self.lm_head

    def counts(self) -> dict[str, int]:
        """Parameter counts by layer type (per layer for the decoder's own layers)."""
        out = {"embedding": self.embedding}
        out.update({n: self.linear_params(n) for n in LINEARS})
        out.update(norms_per_layer=self.norms_per_layer, final_norm=self.final_norm, lm_head=self.lm_head,
                   per_layer=self.per_layer, total=self.total)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "params": self.counts()}


def llama_1b_config():
    """Llama 3.2 1B's published shape (config.json of meta-llama/Llama-3.2-1B): 1.24 B params."""
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                       max_position_embeddings=131072, dtype="bfloat16")


_SUPPORTED = {"llama", "mistral", "qwen2"}


def model_shape(model) -> ModelShape:
    """The shape of `model`: a RunConfig model string (`bundled`, a local folder, a hub id,
    or `llama-3.2-1b-shape`) or a transformers PretrainedConfig. Reads config.json only."""
    from transformers import PretrainedConfig
    if isinstance(model, PretrainedConfig):
        cfg, name = model, getattr(model, "name_or_path", "") or model.model_type
    elif isinstance(model, str) and model == LLAMA_1B_SHAPE:
        cfg, name = llama_1b_config(), LLAMA_1B_SHAPE
    elif isinstance(model, str):
        from .config import _check_model_id
        from .models import load_config
        problems = _check_model_id(model)
        if problems:
            raise UserError(problems[0] + f" (or '{LLAMA_1B_SHAPE}' to plan with Llama 3.2 1B's shape)")
        cfg, name = load_config(model), model
    else:
        raise UserError(f"model must be a model name or a transformers config, got {type(model).__name__}")

    mtype = getattr(cfg, "model_type", "?")
    if mtype not in _SUPPORTED:
        raise UserError(f"the memory forecast knows Llama-style decoders ({', '.join(sorted(_SUPPORTED))}); "
                        f"{name} is a '{mtype}' model")
    heads = cfg.num_attention_heads
    return ModelShape(
        name=str(name), model_type=mtype, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        attention_bias=bool(getattr(cfg, "attention_bias", mtype == "qwen2")),
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        checkpoint_dtype=_dtype_name(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)),
    )


def _dtype_name(dtype) -> str:
    """'float32', 'bfloat16' or 'float16' from a config's dtype (a torch.dtype, a string or
    None); anything else counts as float32, the largest, so a forecast errs on the safe side."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in _DTYPE_BYTES else "float32"


# --- the forecast ---------------------------------------------------------------------------

@dataclass
class Forecast:
    """Bytes per component; `total_bytes` predicts the measured peak (see module docstring),
    `needed_bytes` is what must be free on the device.

    `components` holds every component, also those not alive at the peak; `peak_components()`
    holds those that are (the others 0): they add up to `total_bytes`."""

    method: str
    device: str
    precision: str
    components: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)
    total_params: int = 0
    trainable_params: int = 0
    needed_bytes: int = 0
    phased: bool = False
    """True: the `PHASES` are never alive together and the peak is the larger one (a GPU run
    whose optimizer step comes after backward). False: every component at once (WHOLE_STEP)."""

    def phase_bytes(self) -> dict[str, int]:
        """Bytes of each phase's transients (`PHASES`), on top of `ALWAYS_ALIVE`."""
        return {phase: sum(self.components[k] for k in keys) for phase, keys in PHASES.items()}

    @property
    def peak_phase(self) -> str:
        """The phase the peak comes in: `forward/backward`, `optimizer step`, or WHOLE_STEP."""
        if not self.phased:
            return WHOLE_STEP
        phases = self.phase_bytes()
        return max(phases, key=phases.get)  # a tie goes to forward/backward, the first

    def peak_components(self) -> dict[str, int]:
        """The components alive at the peak: the other phase's transients count 0."""
        if not self.phased:
            return dict(self.components)
        freed = {k for phase, keys in PHASES.items() if phase != self.peak_phase for k in keys}
        return {k: 0 if k in freed else v for k, v in self.components.items()}

    @property
    def total_bytes(self) -> int:
        return sum(self.peak_components().values())

    @property
    def not_at_peak_bytes(self) -> int:
        """What the components add up to beyond the peak: the phase that is not the peak's."""
        return sum(self.components.values()) - self.total_bytes

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MIB

    @property
    def needed_mib(self) -> float:
        return self.needed_bytes / MIB

    def mib(self) -> dict[str, float]:
        """Every component in MiB (see `peak_components` for those alive at the peak)."""
        return {k: round(v / MIB, 1) for k, v in self.components.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "device": self.device, "precision": self.precision,
                "total_params": self.total_params, "trainable_params": self.trainable_params,
                "components_bytes": dict(self.components), "components_mib": self.mib(),
                "peak_phase": self.peak_phase, "peak_components_bytes": self.peak_components(),
                "not_at_peak_mib": round(self.not_at_peak_bytes / MIB, 1),
                "total_bytes": self.total_bytes, "total_mib": round(self.total_mib, 1),
                "needed_bytes": self.needed_bytes, "needed_mib": round(self.needed_mib, 1),
                "details": self.details}


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _default_device() -> str:
    from .memory import device_kind
    return device_kind()


def resolve_precision(config: RunConfig, device: str) -> str:
    """Like models.resolve_precision, for a device that need not be this machine's: `auto` →
    bf16 on CUDA (fp16 if this machine's GPU lacks bf16); on CPU bf16 where this CPU has bf16
    instructions, else fp32."""
    if config.precision != "auto":
        return config.precision
    if device == "cpu":
        from .hardware import cpu_has_native_bf16
        return "bf16" if cpu_has_native_bf16() else "fp32"
    import torch
    from .hardware import cuda_has_native_bf16
    if torch.cuda.is_available() and not cuda_has_native_bf16():
        return "fp16"
    return "bf16"


def lora_targets(config: RunConfig, shape: ModelShape) -> list[str]:
    """Linear layer names that get adapters; `all-linear` = q,k,v,o,gate,up,down (not lm_head)."""
    if config.lora_target_modules == [ALL_LINEAR]:
        return list(LINEARS)
    unknown = [t for t in config.lora_target_modules if t not in LINEARS]
    if unknown:
        raise UserError(f"lora_target_modules {unknown} are not layers of this model; choose from "
                        f"{', '.join(LINEARS)} or use 'all-linear'")
    return [t for t in LINEARS if t in config.lora_target_modules]


def lora_params(config: RunConfig, shape: ModelShape) -> int:
    """LoRA trainable parameters: r*(in+out) per targeted linear (A: r×in, B: out×r), every layer."""
    dims = shape.linear_dims()
    return shape.layers * sum(config.lora_r * (dims[t][0] + dims[t][1]) for t in lora_targets(config, shape))


def trainable_tensors(config: RunConfig, shape: ModelShape) -> list[tuple[int, bool]]:
    """(elements, is the embedding) of each trainable tensor, what the optimizer rules go by
    (and the disk forecast, disk.py). Full: the embedding, an untied lm_head, every linear (its
    bias counted with it), every norm; LoRA/QLoRA: each adapter's A (r×in) and B (out×r)."""
    if config.method == "full":
        return [(shape.embedding, True)] + [(shape.lm_head, False)] * (shape.lm_head > 0) \
            + [(shape.linear_params(n), False) for n in LINEARS for _ in range(shape.layers)] \
            + [(shape.hidden, False)] * (2 * shape.layers + 1)
    dims = shape.linear_dims()
    targets = lora_targets(config, shape)
    return ([(config.lora_r * dims[t][0], False) for t in targets]
            + [(config.lora_r * dims[t][1], False) for t in targets]) * shape.layers


def quantized_bytes(numel: int) -> int:
    """bitsandbytes 4-bit storage: two weights per uint8 byte."""
    return (numel + 1) // 2


def quant_constant_bytes(numel: int, double_quant: bool, c: Constants = DEFAULTS) -> int:
    """Per quantized tensor of `numel` weights: one absmax per 64-weight block.
    Without double quantization the absmax is fp32: 4 bytes per block (0.5 bit/weight).
    With it, absmaxes are 8-bit (1 byte per block) with one fp32 scale per 256 blocks and one
    fp32 offset per tensor (~0.127 bit/weight): the QLoRA paper's 0.373-bit saving."""
    blocks = math.ceil(numel / c.quant_block)
    if not double_quant:
        return 4 * blocks
    return blocks + 4 * math.ceil(blocks / c.double_quant_block) + 4


def lean_weight_bytes(precision: str) -> int:
    """Bytes per weight of a full fine-tune with adamw_lean: bf16 weights when the run is bf16
    (the model then runs in bf16 throughout), else fp32 (models.build_model does the same)."""
    return 2 if precision == "bf16" else 4


def local_model(model: str) -> bool:
    """The bundled model or a local folder (QLoRA reads those with pread; a hub model is
    memory-mapped by transformers). Decided without importing torch, as models.model_source."""
    return model == BUNDLED_MODEL or Path(model).expanduser().is_dir()


def memory_first(config: RunConfig, device: str) -> bool:
    """A CPU run that has chosen memory over speed (activation checkpointing, or adamw_lean):
    it trains with glibc returning every block of 1 MiB or more to the OS when freed
    (memory.cpu_blocks_returned_when_freed), so the freed memory glibc would otherwise keep
    (cpu_layer_factor_*, cpu_ckpt_retained_*) is not there. `auto` optimizers must be resolved."""
    return device == "cpu" and (config.activation_checkpointing
                                or (config.method == "full" and config.optimizer == "adamw_lean"))


def resolve_optimizer(config: RunConfig, shape: ModelShape | None = None, device: str | None = None,
                      available=None, constants: Constants = DEFAULTS, *, seq_len: int | None = None,
                      tokens_per_batch: int | None = None, processes: int = 1) -> str:
    """`optimizer: auto` → adamw_torch, except for a full fine-tune that does not fit (verdict
    `tight` or `will not fit`) with it: then adamw_lean, or adamw_8bit where adamw_lean cannot
    run (grad_accum > 1, fp16, several processes). `available`: bytes, or the tuple
    `available_memory` gives; when it is None (unknown) auto means adamw_torch."""
    if config.optimizer != "auto":
        return config.optimizer
    if config.method != "full" or _available_bytes(available) is None:
        return "adamw_torch"
    plain = forecast(config.replace(optimizer="adamw_torch"), shape, device, constants,
                     seq_len=seq_len, tokens_per_batch=tokens_per_batch, processes=processes)
    if verdict(plain, available, constants) == "fits":
        return "adamw_torch"
    device = plain.device
    if processes == 1 and not lean_optimizer_problems(config) and \
            not (device == "cuda" and resolve_precision(config, device) == "fp16"):
        return "adamw_lean"
    return "adamw_8bit"


def forecast(config: RunConfig, shape: ModelShape | None = None, device: str | None = None,
             constants: Constants = DEFAULTS, *, seq_len: int | None = None,
             tokens_per_batch: int | None = None, available=None, processes: int = 1) -> Forecast:
    """Forecast the peak memory of training `config` on `device` (default: this machine's).

    `available` (bytes, or `available_memory`'s tuple) only resolves `optimizer: auto`
    (`resolve_optimizer`); without it auto is forecast as adamw_torch.

    `seq_len`: the longest row (min(max_seq_len, the data's longest row); default max_seq_len,
    the worst case for a dataset not yet seen). Batches are padding-free (packing.py): a batch
    costs its real tokens, in lanes no longer than its longest row.
    `tokens_per_batch`: the most real tokens one batch can hold (the sum of the batch_size
    longest rows, when the data is known); default batch_size * seq_len.

    Weights (how build_model stores them):
      full   every parameter fp32 (master weights, also under bf16/fp16 mixed precision): 4 B.
      lora   frozen base in the precision's dtype (bf16/fp16 with half precision, on a GPU or
             a CPU with bf16 instructions; else fp32); adapters fp32: r*(in+out) params per
             target.
      qlora  decoder linears 4-bit: 0.5 B/param + quantization constants; the rest (embedding,
             norms, untied lm_head, biases) in the compute dtype (models._freeze_quantized);
             adapters fp32.
    Full with adamw_lean (lean_optimizer.py): weights bf16 (2 B) in a bf16 run, else fp32; no
      autocast copies; state 2 B/param + absmaxes (fp32 moments under 4096 values); no
      gradient buffer but an untied head's gradient (made in the loss's forward, kept through
      backward; a tied one is made at the end of backward) and, at the end of backward,
      cpu_lean_end_copies of the largest tensor; scratch: lean_scratch_copies fp32 chunks.
    Gradients: one fp32 value per trainable parameter: 4 B.
    Optimizer state (per trainable parameter): adamw_torch 8 B (exp_avg, exp_avg_sq, fp32);
      adamw_8bit 2 B + absmaxes (2*4/256 B), but fp32 (8 B) for tensors under 4096 values and for
      embeddings (the Trainer registers nn.Embedding for 32-bit state); sgd 0 (no momentum).
    Optimizer temp: none on CUDA, where AdamW is torch's fused kernel (in place; its for-each
      path would allocate a sqrt copy of all trainable params, 4 B/param); on CPU the per-tensor
      loop needs one scratch of the largest tensor.
    Autocast copies: with bf16/fp16 autocast on CUDA the half-precision casts of fp32 trainable
      linear weights are cached for the step: 2 B per such param (full: all linears and lm_head).
    Activations: see `activation_bytes`. Logits/loss: the chunked loss (loss.py) holds one
      chunk of fp32 logits (and its compute-dtype copy) and the gathered hidden states of the
      trained tokens with their gradient: chunk_logits_copies * chunk + 2 * tokens * hidden.
    Overhead: CPU process baseline, and what the load peak (`cpu_load_peak_bytes`) exceeds the
      training peak by, if it does (details["peak_while"] says which phase peaks); on CUDA the
      cuBLAS workspace (+ for QLoRA one dequantized linear weight in compute dtype).
    CPU QLoRA weights: the 4-bit linears and copies of the rest; the checkpoint file, read
      whole while quantizing, weighs in the loading peak only.
    Peak: on CPU the sum of the components. On CUDA (but adamw_lean) ALWAYS_ALIVE +
      max(forward/backward: activations + logits_loss + autocast_copies, optimizer step:
      optimizer_temp); details["peak_phase"] says which (see `Forecast.peak_components`).
       Several processes (`processes`, one device each; see `spread`): the forecast is per
      device; on a CPU, where they share the RAM, `needed_bytes` is all of them together.
    """
    c = constants
    if shape is None:
        shape = model_shape(config.model)
    device = device or _default_device()
    if device not in ("cpu", "cuda"):
        raise UserError(f"device must be cpu or cuda, got {device!r}")
    if config.optimizer == "auto":
        config = config.replace(optimizer=resolve_optimizer(config, shape, device, available, c, seq_len=seq_len,
                                                            tokens_per_batch=tokens_per_batch,
                                                            processes=processes))
    precision = resolve_precision(config, device)
    lean = config.method == "full" and config.optimizer == "adamw_lean"
    half = precision in ("bf16", "fp16")  # autocast, on a GPU or on a CPU with bf16 instructions
    compute = (_DTYPE_BYTES[config.compute_dtype] if config.compute_dtype != "auto"
               else (2 if precision in ("bf16", "fp16") else 4))

    total_params = shape.total
    linears = shape.linear_total
    non_linear = total_params - linears  # embedding, norms, final norm, untied lm_head
    by_dtype: dict[str, int] = {}

    def add(dtype: str, nbytes: int) -> None:
        by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes

    comp = dict.fromkeys(COMPONENTS, 0)
    method = config.method
    if method == "full":
        trainable = total_params
        wbytes = lean_weight_bytes(precision) if lean else 4
        comp["weights_trainable"] = wbytes * total_params
        add("bf16" if wbytes == 2 else "fp32", wbytes * total_params)
        tensors = trainable_tensors(config, shape)  # for the optimizer rules
        if half and not lean:
            cached = linears + (shape.vocab * shape.hidden)  # lm_head (tied or not) is a Linear
            comp["autocast_copies"] = 2 * cached
    elif method in ("lora", "qlora"):
        trainable = lora_params(config, shape)
        comp["weights_trainable"] = 4 * trainable
        add("fp32 (adapters)", 4 * trainable)
        tensors = trainable_tensors(config, shape)
        if method == "lora":
            base = 2 if half else 4
            comp["weights_frozen"] = base * total_params
            add("bf16" if base == 2 and precision == "bf16" else "fp16" if base == 2 else "fp32", base * total_params)
            if half:
                comp["autocast_copies"] = 2 * trainable
        else:
            per_layer = [shape.linear_params(n) - shape.linear_bias(n) for n in LINEARS]
            biases = shape.layers * sum(shape.linear_bias(n) for n in LINEARS)
            q_weights = shape.layers * sum(per_layer)
            comp["weights_frozen"] = shape.layers * sum(quantized_bytes(n) for n in per_layer) \
                + compute * (non_linear + biases)
            add(f"{config.quant_type} (4-bit)", shape.layers * sum(quantized_bytes(n) for n in per_layer))
            add(f"{'fp32' if compute == 4 else 'half'} (embedding, norms, head)", compute * (non_linear + biases))
            # On CPU the file read while quantizing is counted in the loading peak
            # (`cpu_load_peak_bytes`); the weights that are not quantized are copied out of it
            # (models._freeze_quantized), so it is not resident while training.
            comp["quant_constants"] = shape.layers * sum(quant_constant_bytes(n, config.double_quant, c)
                                                         for n in per_layer)
            if half:
                comp["autocast_copies"] = 2 * trainable
            # one linear dequantized to the compute dtype at a time, forward and backward
            comp["runtime_overhead"] += compute * max(per_layer)
            by_dtype["quantized weights"] = q_weights
    else:
        raise UserError(f"method must be full, lora or qlora, got {method!r}")

    comp["gradients"] = 4 * trainable
    if lean:
        from .lean_optimizer import CHUNK_ELEMENTS, MIN_8BIT_SIZE, QUANT_BLOCK
        # A tied head's gradient is made at the end of backward (loss.SharedHeadGradient, defer),
        # counted in the late floor below; an untied head's in the loss's forward.
        comp["gradients"] = 0 if shape.tied_embeddings else wbytes * shape.vocab * shape.hidden
        comp["optimizer_state"] = sum(8 * n if n < MIN_8BIT_SIZE else 2 * n + 2 * 4 * math.ceil(n / QUANT_BLOCK)
                                      for n, _ in tensors)
        comp["optimizer_temp"] = int(c.lean_scratch_copies * 4 * min(CHUNK_ELEMENTS, max(n for n, _ in tensors)))
    elif config.optimizer == "adamw_torch":
        comp["optimizer_state"] = 8 * trainable
        # On CUDA the engine runs torch's fused AdamW (training.trainer_optimizer): one kernel that
        # updates in place, no scratch (torch/optim/adam.py _fused_adam calls _fused_adamw_ on the
        # tensors themselves; the for-each path's sqrt copy, 4 B per parameter, is not made).
        comp["optimizer_temp"] = 0 if device == "cuda" else 4 * max(n for n, _ in tensors)
    elif config.optimizer == "adamw_8bit":
        state = 0
        for n, is_embedding in tensors:
            if is_embedding or n < c.adam8bit_min_size:
                state += 8 * n
            else:
                state += 2 * n + 2 * 4 * math.ceil(n / c.adam8bit_block)
        comp["optimizer_state"] = state
    elif config.optimizer not in ("sgd", "adamw_lean"):
        raise UserError(f"optimizer must be auto, adamw_torch, adamw_8bit, adamw_lean or sgd, "
                        f"got {config.optimizer!r}")

    seq = min(seq_len, config.max_seq_len) if seq_len else config.max_seq_len
    tokens = min(tokens_per_batch, config.batch_size * seq) if tokens_per_batch else config.batch_size * seq
    from .loss import chunk_rows  # here, not at the top: loss.py and packing.py import torch
    from .packing import pass_budget, pass_tokens
    # Only one pass of the batch holds activations at a time (packing.split_passes).
    passed = pass_tokens(pass_budget(config.tokens_per_pass, device, step_in_backward=lean), seq, tokens)
    comp["activations"] = activation_bytes(config, shape, passed, device, precision, c, seq=seq)
    if device == "cpu" and passed < tokens:
        comp["activations"] += int(c.cpu_pass_widths_retained * comp["activations"])
    chunk = min(passed, chunk_rows(shape.vocab)) * shape.vocab * 4
    comp["logits_loss"] = int(c.chunk_logits_copies * chunk + 2 * passed * shape.hidden * (2 if half else 4))
    if device == "cpu":
        comp["runtime_overhead"] += c.cpu_process_baseline
    else:
        comp["runtime_overhead"] += c.cuda_workspace

    if device == "cpu" and method == "full":
        # Late in the step activations are gone but the largest tensor's fp32 copies are not:
        # the end of backward (the embedding's dense gradient summed into its gradient) and
        # 8-bit AdamW's 32-bit embedding update. This floor only wins when the embedding is big
        # next to the activations (a 1B model's 128k vocabulary at a short batch).
        if lean:
            late = c.cpu_process_baseline + comp["weights_trainable"] + comp["optimizer_state"] \
                + c.cpu_lean_end_copies * wbytes * max(n for n, _ in tensors)
        else:
            largest = 4 * max(n for n, _ in tensors)
            copies = max(c.cpu_full_end_copies,
                         c.cpu_adam8bit_step_copies if config.optimizer == "adamw_8bit" else 0)
            late = c.cpu_process_baseline + comp["weights_trainable"] + comp["gradients"] \
                + comp["optimizer_state"] + copies * largest
        comp["optimizer_temp"] += max(0, late - sum(comp.values()))

    load_peak = None
    if device == "cpu":
        # The peak may come while loading, before any training: see `cpu_load_peak_bytes`.
        # QLoRA quantizes a hub model from the mapped file, reading every page of it, whatever
        # the dtypes; a local folder's tensors are read one by one (models.read_not_mapped)
        loaded = ("4-bit (read, not mapped)" if local_model(config.model) else "4-bit") if method == "qlora" else \
            ("bfloat16" if wbytes == 2 else "float32") if method == "full" else \
            "float32" if not half else "bfloat16" if precision == "bf16" else "float16"
        load_peak = cpu_load_peak_bytes(shape, comp, c, loaded_dtype=loaded)
        comp["runtime_overhead"] += max(0, load_peak - sum(comp.values()))

    spread_details = spread(comp, config, shape, processes, device, compute) if processes > 1 else {}
    comp = {k: int(v) for k, v in comp.items()}
    # On a GPU the forward/backward transients are freed before the optimizer step's scratch is
    # allocated (PHASES); adamw_lean steps inside backward, where both exist together. On CPU
    # the sum stays: it is what was measured against peak RSS.
    phased = device == "cuda" and not lean
    fc = Forecast(method=method, device=device, precision=precision, components=comp, phased=phased,
                  total_params=total_params, trainable_params=trainable,
                  details={"weights_by_dtype": by_dtype, "tokens_per_batch": tokens, "tokens_per_pass": passed,
                           "activation_checkpointing": config.activation_checkpointing,
                           "optimizer": config.optimizer, "batch_size": config.batch_size,
                           "max_seq_len": config.max_seq_len, "seq_len": seq, "lora_r": config.lora_r
                           if method != "full" else None,
                           "checkpoint_dtype": shape.checkpoint_dtype,
                           "peak_while": "loading the model" if load_peak is not None
                           and load_peak >= sum(comp.values()) else "training",
                           "processes": processes, **spread_details})
    fc.details["peak_phase"] = fc.peak_phase
    fc.needed_bytes = fc.total_bytes * processes if device == "cpu" else \
        int(fc.total_bytes * (1 + c.cuda_fragmentation)) + c.cuda_context
    return fc


# What FSDP shards (full sharding: each of N processes keeps 1/N) and what it leaves whole.
SHARDED = ("weights_frozen", "weights_trainable", "quant_constants", "gradients", "optimizer_state",
           "optimizer_temp")


def spread(comp: dict[str, int], config: RunConfig, shape: ModelShape, processes: int, device: str,
           compute_bytes: int) -> dict[str, Any]:
    """`comp` (one process's components, as for a run alone) changed in place to one of
    `processes` processes' share; returns the details to record. Not yet measured on GPUs:
    derived from how DDP and FSDP2 hold memory.

    ddp: every process holds everything, plus DDP's gradient buckets, a second fp32 copy of
      every trainable gradient that the all-reduce works in (gradient_as_bucket_view is off):
      4 B per trainable parameter, in `gradients`.
    fsdp: weights, gradients and optimizer state are cut into `processes` shards (QLoRA's
      4-bit weights too on CUDA, stored in the compute dtype; on a CPU they stay uint8 and whole,
      models.shards_4bit_weights);
      one decoder layer is gathered whole at a time, and the next one is prefetched, beside
      the root unit (embedding, final norm, head), gathered throughout: in the compute dtype,
      in `runtime_overhead`. Casting to the compute dtype
      happens on the gathered layer, so no autocast copies are cached. With fsdp_cpu_offload
      the shards live in CPU memory between uses: on the GPU only the gathered layers, the
      activations and the loss remain."""
    trainable = shape.total if config.method == "full" else lora_params(config, shape)
    if config.strategy != "fsdp":
        comp["gradients"] += 4 * trainable
        return {"strategy": "ddp", "ddp_bucket_bytes": 4 * trainable}
    # QLoRA's 4-bit weights are sharded on CUDA only (models.shards_4bit_weights)
    whole = ("weights_frozen", "quant_constants") if config.method == "qlora" and device != "cuda" else ()
    for key in SHARDED:
        if key not in whole:
            comp[key] = math.ceil(comp[key] / processes)
    # the root unit (embedding, final norm, head) is gathered for the whole forward and backward
    root = shape.embedding + shape.final_norm + shape.lm_head
    gathered = (2 * shape.per_layer + root) * compute_bytes
    comp["runtime_overhead"] += gathered
    comp["autocast_copies"] = 0
    details: dict[str, Any] = {"strategy": "fsdp", "gathered_bytes": gathered}
    if config.fsdp_cpu_offload and device == "cuda":
        offloaded = sum(comp[k] for k in SHARDED if k not in whole)
        for key in SHARDED:
            if key not in whole:
                comp[key] = 0
        details["offloaded_to_cpu_bytes"] = offloaded
    return details


def cpu_load_peak_bytes(shape: ModelShape, comp: dict[str, int], c: Constants = DEFAULTS,
                        loaded_dtype: str = "float32") -> int:
    """Peak RSS while `build_model` loads the model on CPU, before training starts.

    safetensors files are memory-mapped. When the file's dtype is the one the weights are
    loaded in (fp32 on CPU), the parameters are the mapped pages themselves: no second copy.
    When it is not (a bf16 checkpoint such as Llama 3.2's, loaded in fp32), each tensor is
    converted into new memory, and the file's pages, read in full, stay resident until
    loading ends: the peak is then baseline + the loaded weights + the whole file
    (measured with bench/forecast_accuracy.py --trace on the Llama-3.2-1B-shaped model, bf16
    on disk: the file-backed RSS reached the file's 2,357 MiB on top of the 4,714 MiB of fp32
    weights, then fell to 0 when loading ended; LoRA 1x256's peak, 7,664 MiB, was this one).
    QLoRA quantizes from the same pages; with an fp32 file they stay mapped for good and are
    counted in its weights instead (see `forecast`). A file already in the dtype the weights
    are loaded in (a bf16 checkpoint for a bf16 LoRA base) is not converted, and adds no
    second copy (Llama-3.2-1B shape, bf16 file, bf16 LoRA base, 1x256: 3,910 MiB measured
    against the 5,347 this formula gave with the file counted, 2026-12-02)."""
    weights = comp["weights_frozen"] + comp["weights_trainable"] + comp["quant_constants"]
    if loaded_dtype == "4-bit (read, not mapped)":
        # QLoRA from a local folder: each tensor read with pread while it is quantized
        # (models.read_not_mapped), nothing of the file stays resident
        return c.cpu_process_baseline + weights
    file_pages = shape.checkpoint_bytes if shape.checkpoint_dtype != loaded_dtype else 0
    if loaded_dtype == "4-bit":
        file_pages += int(c.cpu_qlora_load_transient * shape.checkpoint_bytes)
    return c.cpu_process_baseline + weights + file_pages


def _activation_elements(config: RunConfig, shape: ModelShape, c: Constants = DEFAULTS,
                         device: str = "cuda") -> tuple[float, float, float]:
    """(hidden-sized elements, other elements, the intermediate-sized part of other) saved per
    layer per token.

    A Llama decoder layer keeps for backward (h hidden, q = heads*head_dim, I intermediate):
      base trains (full):  act_h_trainable*h + act_q_attention*q + act_i_trainable*I
                           = 6h + 4q + 4I
      base frozen (LoRA):  act_h_frozen*h + act_q_attention*q + act_i_frozen*I = 1.5h + 4q + 3I,
        plus the adapters' inputs, shared by adapters that read the same tensor: q/k/v read
        the first norm's output (h), gate/up the second's (h), o_proj the attention output
        (already counted), down_proj the silu*up product (I); plus r per adapter (A's output);
        plus, with lora_dropout > 0, lora_dropout_copies * in per adapted linear (on a GPU; on
        a CPU the dropout is fused into A, fast_dropout.py, and keeps one bit per element:
        counted by `activation_bytes`, not here).
    """
    h, q, i = shape.hidden, shape.q_dim, shape.intermediate
    if config.method == "full":
        return c.act_h_trainable * h, c.act_q_attention * q + c.act_i_trainable * i, c.act_i_trainable * i
    hidden = c.act_h_frozen * h
    other = c.act_q_attention * q + c.act_i_frozen * i
    dims = shape.linear_dims()
    targets = lora_targets(config, shape)
    shared = {"q_proj": ("n1", h), "k_proj": ("n1", h), "v_proj": ("n1", h), "o_proj": ("attn", 0),
              "gate_proj": ("n2", h), "up_proj": ("n2", h), "down_proj": ("m", i)}
    inputs = dict(shared[t] for t in targets)
    hidden += inputs.get("n1", 0) + inputs.get("n2", 0)
    other += inputs.get("m", 0) + config.lora_r * len(targets)
    unfused_dropout = config.lora_dropout > 0 and device != "cpu"
    if unfused_dropout:
        other += c.lora_dropout_copies * sum(dims[t][0] for t in targets)
    # the intermediate-sized part of `other`: the MLP's own tensors, down_proj's adapter input
    # and its dropout copy
    down_in = inputs.get("m", 0)
    other_i = c.act_i_frozen * i + down_in + (c.lora_dropout_copies * down_in if unfused_dropout else 0)
    return hidden, other, other_i


def _heap_layer_bytes(config: RunConfig, shape: ModelShape, tokens: int, seq: int, per_layer: float,
                      elements: tuple[float, float, float], c: Constants = DEFAULTS) -> float:
    """The part of one layer's activations (fp32, CPU) held in tensors glibc serves from its heap:
    per_layer minus the intermediate-sized, hidden/attention-sized tensors and the mask when one
    such tensor is at least `cpu_mmap_threshold_max` (then it is mapped, and unmapped when freed).
    `elements`: `_activation_elements`' (hidden, other, intermediate-sized part of other)."""
    hidden, other, other_i = elements
    out = per_layer
    if tokens * shape.intermediate * 4 >= c.cpu_mmap_threshold_max:
        out -= tokens * other_i * 4
    if tokens * max(shape.hidden, shape.q_dim) * 4 >= c.cpu_mmap_threshold_max:
        out -= tokens * (hidden + other - other_i) * 4
    if tokens * seq * 4 >= c.cpu_mmap_threshold_max:
        out -= tokens * seq * c.mask_bytes
    return max(out, 0.0)


def activation_bytes(config: RunConfig, shape: ModelShape, tokens: int, device: str, precision: str,
                     constants: Constants = DEFAULTS, seq: int | None = None) -> int:
    """Activations alive at the peak for one micro-batch of `tokens` real tokens (padding-free
    lanes no longer than `seq`).

    per layer = tokens * (hidden elements * residual bytes + other elements * act bytes)
                + tokens * seq * mask_bytes (the lanes' attention mask SDPA keeps, per layer:
                lanes * seq^2 with lanes ≈ tokens / seq)
    without checkpointing:  (layers * factor + backward) * per layer + final norm
    with checkpointing:     layers * tokens * h * residual bytes (each layer's input, kept by
                            the checkpoint) + (factor + backward) * per layer (one layer
                            recomputed in backward, and its gradients) + final norm
                            (+ on CPU with a frozen base, what the allocator keeps:
                            cpu_ckpt_retained_* * max(0, 1 - exp(-(layers - from) / depth))
                            * the heap-served part of a layer)
    (on CPU with a frozen base, `layers` counts cpu_layer_factor_lora/qlora times: what the
    allocator keeps; QLoRA's factor applies while its largest dequantized weight is under
    cpu_mmap_threshold_max; see Constants)
    act bytes: 4 in fp32; 2 with bf16/fp16 autocast (GPU, or CPU with bf16 instructions).
    residual bytes: the residual stream's dtype, fp32 for full (fp32 master weights), the base's
    (compute) dtype for LoRA and QLoRA. backward: backward_layers (full), backward_layers_frozen (GPU) or
    cpu_backward_layers_frozen.
    """
    c = constants
    elements = _activation_elements(config, shape, c, device)
    hidden, other, _ = elements
    half = precision in ("bf16", "fp16")
    act = 2 if half else 4
    full_fp32 = config.method == "full" and not (config.optimizer == "adamw_lean"
                                                  and lean_weight_bytes(precision) == 2)
    residual = 4 if (not half or full_fp32) else 2
    mask = c.mask_bytes / (2 if half else 1)
    h = shape.hidden
    seq = seq or config.max_seq_len
    per_layer = tokens * (hidden * residual + other * act) + tokens * seq * mask
    if device == "cpu" and config.method != "full" and config.lora_dropout > 0:
        dims = shape.linear_dims()  # the fused dropout's bit masks, one bit per input element
        per_layer += tokens * c.cpu_lora_dropout_mask_bytes * sum(dims[t][0] for t in lora_targets(config, shape))
    final = tokens * h * residual * (c.act_final_h_trainable if config.method == "full"
                                     else c.act_final_h_frozen)
    factor, heap = 1.0, False
    returned = memory_first(config, device)  # big blocks go back to the OS: no allocator extra
    if config.method == "full":
        backward = c.backward_layers
    elif device == "cpu":
        backward = c.cpu_backward_layers_frozen
        largest = 4 * max(shape.linear_params(n) for n in LINEARS)  # its dequantized fp32 copy
        heap = config.method == "qlora" and largest < c.cpu_mmap_threshold_max and not returned
        lora_factor = c.cpu_layer_factor_lora_half if half else c.cpu_layer_factor_lora
        factor = 1.0 if returned else c.cpu_layer_factor_qlora if heap else lora_factor
    else:
        backward = c.backward_layers_frozen
    if config.activation_checkpointing:
        total = shape.layers * tokens * h * residual + (factor + backward) * per_layer + final
        if device == "cpu" and config.method != "full" and not returned:
            retained = c.cpu_ckpt_retained_lora if config.method == "lora" else \
                c.cpu_ckpt_retained_qlora if heap else 0.0
            saturation = max(0.0, 1 - math.exp(-(shape.layers - c.cpu_ckpt_retained_from)
                                               / c.cpu_ckpt_retained_depth))
            total += retained * saturation * _heap_layer_bytes(config, shape, tokens, seq, per_layer, elements, c)
    else:
        total = (shape.layers * factor + backward) * per_layer + final
    return int(total)


# --- what is available, and whether it fits ---------------------------------------------------

def available_memory(device: str | None = None) -> tuple[str, int | None, str]:
    """(device, free bytes, label): the GPU with the most free memory (NVML via
    hardware.gpu_readings), else the system RAM available (psutil). bytes is None when a
    CUDA forecast is asked for on a machine with no visible NVIDIA GPU."""
    import psutil

    from .hardware import gpu_readings
    if device in (None, "cuda"):
        gpus = gpu_readings()
        if gpus:
            g = max(gpus, key=lambda r: r.total_mib - r.used_mib)
            free = int((g.total_mib - g.used_mib) * MIB)
            return "cuda", free, f"GPU {g.index} {g.name}: {free / MIB:,.0f} MiB free of {g.total_mib:,.0f} MiB"
        if device == "cuda":
            return "cuda", None, "no NVIDIA GPU visible here (NVML): cannot compare with free GPU memory"
    vm = psutil.virtual_memory()
    free, label = int(vm.available), f"system RAM: {vm.available / MIB:,.0f} MiB available of {vm.total / MIB:,.0f} MiB"
    cap = memory_cap()
    if cap is not None and cap[0] < free:
        free, label = cap[0], f"{cap[1]}: {cap[0] / MIB:,.0f} MiB available"
    return "cpu", free, label


def memory_cap() -> tuple[int, str] | None:
    """(bytes, where from) when this process may use less than the machine's free RAM: a
    container's cgroup limit (Docker, Hugging Face Spaces: psutil sees the host's RAM there),
    or FT_MEMORY_LIMIT_MIB, set by whoever hosts the studio to plan within a smaller budget."""
    caps = []
    env = os.environ.get("FT_MEMORY_LIMIT_MIB", "").strip()
    if env:
        try:
            caps.append((int(float(env) * MIB), f"FT_MEMORY_LIMIT_MIB={env}"))
        except ValueError:
            raise UserError(f"FT_MEMORY_LIMIT_MIB must be a number of MiB such as 8000, got {env!r}") from None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue  # no such cgroup version here
        if limit.isdigit() and int(limit) < (1 << 60):  # "max" or a huge number mean no limit
            caps.append((max(0, int(limit) - int(usage)), "container memory limit"))
        break
    return min(caps) if caps else None


def _available_bytes(available) -> int | None:
    if isinstance(available, tuple):
        return available[1]
    return available


def verdict(fc: Forecast, available, constants: Constants = DEFAULTS) -> str:
    """`fits` (needed ≤ 85% of available), `tight` (85-100%), `will not fit` (> available).
    `available`: bytes, or the tuple `available_memory` returns; `unknown` when it is None."""
    avail = _available_bytes(available)
    if avail is None:
        return "unknown"
    if fc.needed_bytes > avail:
        return "will not fit"
    if fc.needed_bytes > constants.tight_fraction * avail:
        return "tight"
    return "fits"


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
    new forecast. `available`: bytes, or the tuple `available_memory` returns.

    Candidates (cheapest first): activation checkpointing, adamw_lean and adamw_8bit (full), half the batch
    with double grad_accum, lora instead of full / qlora instead of lora, half the max_seq_len.
    Only changes that change something and lower the total are kept. If some make the run
    `fits`, only those are returned; else those that make it `tight`; else every lowering
    change, followed by all of them combined."""
    shape = shape or model_shape(config.model)
    device = available[0] if isinstance(available, tuple) else None
    base = forecast(config, shape, device, constants, seq_len=seq_len, available=available,
                         processes=processes)
    if verdict(base, available, constants) in ("fits", "unknown"):
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
    for good in ("fits", "tight"):
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


# --- the `plan` report (command line) ---------------------------------------------------------

COMPONENT_LABELS = {
    "weights_frozen": "weights (frozen)", "weights_trainable": "weights (trainable)",
    "quant_constants": "quantization constants", "gradients": "gradients",
    "optimizer_state": "optimizer state", "optimizer_temp": "optimizer step scratch",
    "autocast_copies": "autocast weight copies", "activations": "activations",
    "logits_loss": "logits + loss", "runtime_overhead": "runtime overhead",
}


def plan(config: RunConfig, methods: list[str], device: str | None = None,
         seq_len: int | None = None, processes: int = 1) -> dict[str, Any]:
    """Forecast, verdict and suggestions for each method, and the disk each run will write
    (disk.py): the data behind `plan`."""
    from .disk import disk_forecast, disk_line, free_bytes, planned_steps
    shape = model_shape(config.model)
    avail = available_memory(device)
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


def format_plan(report: dict[str, Any]) -> str:
    """The human-readable `plan` output: one row per component (MiB), one column per method."""
    methods = list(report["methods"])
    s = report["shape"]
    lines = [f"model: {report['model']}  ({s['params']['total']:,} parameters; hidden {s['hidden']}, "
             f"{s['layers']} layers, {s['heads']} heads / {s['kv_heads']} kv, intermediate {s['intermediate']}, "
             f"vocab {s['vocab']}{', tied embeddings' if s['tied_embeddings'] else ''})"]
    first = report["methods"][methods[0]]
    d = first["details"]
    seq = f"{d['seq_len']}" + (f" (max_seq_len {d['max_seq_len']})" if d["seq_len"] != d["max_seq_len"] else "")
    lines.append(f"device: {first['device']} ({first['precision']}); batch {d['batch_size']} x seq "
                 f"{seq} = {d['tokens_per_batch']:,} tokens; optimizer {d['optimizer']}; "
                 f"activation checkpointing {'on' if d['activation_checkpointing'] else 'off'}")
    if report.get("processes", 1) > 1:
        lines.append(f"{report['processes']} processes ({report['strategy']}): every figure below is one "
                     f"device's" + (" (on a CPU they share the RAM: needed free is all of them)"
                                    if first["device"] == "cpu" else ""))
    width = max(len(v) for v in COMPONENT_LABELS.values()) + 2
    lines.append("")
    lines.append(f"{'MiB':<{width}}" + "".join(f"{m:>12}" for m in methods))
    for key, label in COMPONENT_LABELS.items():
        lines.append(f"{label:<{width}}" + "".join(f"{report['methods'][m]['components_mib'][key]:>12,.1f}"
                                                   for m in methods))
    # a phase left out of some peak (a GPU run whose step has scratch): say so, and what it is
    phased = [m for m in methods if report["methods"][m]["peak_phase"] != WHOLE_STEP
              and report["methods"][m]["not_at_peak_mib"] > 0]
    if phased:  # a GPU: the column adds up to the peak once the phase not at the peak is taken off
        lines.append(f"{'not alive at the peak *':<{width}}"
                     + "".join(f"{-report['methods'][m]['not_at_peak_mib']:>12,.1f}" for m in methods))
    lines.append("-" * (width + 12 * len(methods)))
    lines.append(f"{'total (peak)':<{width}}" + "".join(f"{report['methods'][m]['total_mib']:>12,.1f}"
                                                        for m in methods))
    if first["device"] == "cuda":
        lines.append(f"{'needed free (+ctx, frag.)':<{width}}"
                     + "".join(f"{report['methods'][m]['needed_mib']:>12,.1f}" for m in methods))
    lines.append(f"{'trainable params':<{width}}" + "".join(f"{report['methods'][m]['trainable_params']:>12,}"
                                                            for m in methods))
    if phased:
        fb, step = (", ".join(COMPONENT_LABELS[k] for k in PHASES[p]) for p in PHASES)
        lines.append(f"* on a GPU the forward/backward transients ({fb}) are freed before the optimizer "
                     f"step allocates its scratch ({step}): the peak holds the larger of the two; peak in "
                     + "; ".join(f"{m}: {report['methods'][m]['peak_phase']}" for m in phased))
    lines.append("")
    lines.append(f"available: {report['available']['label']}")
    for m in methods:
        r = report["methods"][m]
        lines.append(f"{m}: verdict: {r['verdict']}")
        for sug in r["suggestions"]:
            lines.append(f"    - {sug['change']}: {sug['total_mib']:,.1f} MiB ({sug['verdict']})")
    from .disk import gb
    for m in methods:
        d = report["methods"][m]["disk"]
        lines.append(f"{m}: disk: {d['line']}"
                     + ("" if d["fits"] else f": too little, a run is refused below {gb(d['needed_free_bytes'])} free"))
    return "\n".join(lines)
