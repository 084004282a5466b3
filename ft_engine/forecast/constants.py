"""The forecast's names and numbers: byte units, the components a run's memory is made of,
the phases of a GPU step, the verdicts, and `Constants`, every calibrated number in one place
(so a calibration on bigger models changes numbers, not formulas)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..units import GIB, MIB  # noqa: F401  (the forecast's units, re-exported)

COMPONENTS = ("weights_frozen", "weights_trainable", "quant_constants", "gradients", "optimizer_state",
              "optimizer_temp", "autocast_copies", "activations", "logits_loss", "runtime_overhead")



class Verdict(enum.StrEnum):
    """What the forecast says of a run against the memory available (`estimate.verdict`). A
    StrEnum: it prints, compares and serialises as its text, so status.json, `plan --json` and
    the studio keep the words they always had."""
    FITS = "fits"
    TIGHT = "tight"
    WILL_NOT_FIT = "will not fit"
    UNKNOWN = "unknown"  # nothing known of what is available


VERDICTS = (Verdict.FITS, Verdict.TIGHT, Verdict.WILL_NOT_FIT)

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
    """Every calibrated number of the forecast. Formulas are in estimate.py; these are the
    knobs. Calibrated on CPU (torch 2.13, transformers 5.24, peft 0.21, bitsandbytes
    0.50, glibc malloc) against tiny Llamas (hidden 64-256, 2-4 layers), SmolLM2-135M and a
    Llama-3.2-1B-shaped model: bench/forecast_accuracy.py prints forecast vs measured peak
    (plain runs within ±5% there, the suggested changes within ±15% but one). The CUDA-only
    numbers are not yet checked against a GPU."""

    # --- activations: elements saved per layer per token (estimate._activation_elements) ---
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
    cpu_attention_probs_bytes: float = 2.0
    """bytes per element of the lanes × heads × seq² attention probabilities kept for backward
    by the CPU's plain attention (cpu_attention.py: bf16 training passes no wider than
    PLAIN_ATTENTION_MAX_LEN; the flash kernel keeps one number a query instead). Counted when
    every lane is that narrow (max length ≤ 448): with longer rows the widest passes go to
    flash, and the narrower plain passes did not raise the peak (bench/vs_trl.py --method lora
    --only ours, max length 512: 1,791-1,809 MiB with the plain form, 1,817-1,831 without,
    2026-12-04)."""
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
    """chunks of fp32 logits alive at once in the chunked loss (loss.py), half precision: the
    fp32 softmax beside the bf16/fp16 logits, then beside the gradient's half-precision copy."""
    chunk_logits_copies_kept: float = 2.0
    """the same in fp32 (the logits and their softmax, two whole fp32 chunks), and wherever the
    trainer keeps the loss's buffers (loss.LossWorkspace: the half-precision logits, the fp32
    softmax and the gradient's half-precision copy, all alive from the first chunk on)."""

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
    cpu_layer_factor_lora_half: float = 1.43
    """`cpu_layer_factor_lora` for bf16 runs on a CPU (padding-free batches, fused dropout):
    1.78 when fitted to SmolLM2-135M LoRA at 4x512 on 2026-12-02. The faster dropout and the
    loss's kept buffers (2026-12-04) left less freed memory behind, unevenly: at 4x512 with rows
    of exactly 512 tokens (bench/forecast_accuracy.py --only bundled) the peak fell from 1,717
    to 1,515 MiB, on the vs_trl workload (batch 8, rows of 44-512 tokens, passes of 512 token
    slots, the same forecast) it is 1,853-1,874 MiB. 1.43 sits between them: +10% and -10%,
    where 1.78 over-forecast the first by 20%. (1x256 peaks while loading: +4.7%.)"""
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
    """Above this share of the available memory the verdict is `tight`. Not measured: set with
    the first forecast (commit 871a632, issue 4), it leaves room for the forecast's error, whose
    target is ±15% of the measured peak (README, "How close it is"; tests/test_forecast.py
    asserts a forecast is never more than 15% under): a run forecast to need over 85% of what
    is free may not fit."""


DEFAULTS = Constants()
