"""The estimate itself: a run's memory, component by component, from its RunConfig and its
model's shape (see the package docstring for what each component holds), and whether it fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import hardware, memory
from ..config import ALL_LINEAR, BUNDLED_MODEL, RunConfig, lean_optimizer_problems
from ..cpu_attention import PLAIN_ATTENTION_MAX_LEN
from ..errors import UserError
from .constants import COMPONENTS, DEFAULTS, MIB, PHASES, WHOLE_STEP, Constants, Verdict
from .shape import DTYPE_BYTES, LINEARS, ModelShape, model_shape


@dataclass
class Forecast:
    """Bytes per component; `total_bytes` predicts the measured peak (see the package docstring),
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


def resolve_precision(config: RunConfig, device: str) -> str:
    """Like models.resolve_precision, for a device that need not be this machine's: `auto` →
    bf16 on CUDA (fp16 if this machine's GPU lacks bf16); on CPU bf16 where this CPU has bf16
    instructions, else fp32."""
    if config.precision != "auto":
        return config.precision
    if device == "cpu":
        return "bf16" if hardware.cpu_has_native_bf16() else "fp32"
    import torch
    if torch.cuda.is_available() and not hardware.cuda_has_native_bf16():
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


def keeps_loss_workspace(config: RunConfig, device: str) -> bool:
    """The trainer keeps the chunked loss's buffers (loss.LossWorkspace) between chunks and
    passes: on a CPU (where each new chunk costs page faults), unless memory comes first."""
    return device == "cpu" and not memory_first(config, device)


def verdict(fc: Forecast, available, constants: Constants = DEFAULTS) -> Verdict:
    """`fits` (needed ≤ 85% of available: `Constants.tight_fraction`), `tight` (85-100%),
    `will not fit` (> available). `available`: bytes, or the tuple `hardware.available_memory`
    returns; `unknown` when it is None. Here, not in advice.py: `resolve_optimizer` needs it."""
    avail = hardware.available_bytes(available)
    if avail is None:
        return Verdict.UNKNOWN
    if fc.needed_bytes > avail:
        return Verdict.WILL_NOT_FIT
    if fc.needed_bytes > constants.tight_fraction * avail:
        return Verdict.TIGHT
    return Verdict.FITS


def resolve_optimizer(config: RunConfig, shape: ModelShape | None = None, device: str | None = None,
                      available=None, constants: Constants = DEFAULTS, *, seq_len: int | None = None,
                      tokens_per_batch: int | None = None, processes: int = 1) -> str:
    """`optimizer: auto` → adamw_torch, except for a full fine-tune that does not fit (verdict
    `tight` or `will not fit`) with it: then adamw_lean, or adamw_8bit where adamw_lean cannot
    run (grad_accum > 1, fp16, several processes). `available`: bytes, or the tuple
    `hardware.available_memory` gives; when it is None (unknown) auto means adamw_torch."""
    if config.optimizer != "auto":
        return config.optimizer
    if config.method != "full" or hardware.available_bytes(available) is None:
        return "adamw_torch"
    plain = forecast(config.replace(optimizer="adamw_torch"), shape, device, constants,
                     seq_len=seq_len, tokens_per_batch=tokens_per_batch, processes=processes)
    if verdict(plain, available, constants) == Verdict.FITS:
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

    `available` (bytes, or `hardware.available_memory`'s tuple) only resolves `optimizer: auto`
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
      chunk's fp32 softmax and its logits (or gradient) and the gathered hidden states of the
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
    device = device or memory.device_kind()
    if device not in ("cpu", "cuda"):
        raise UserError(f"device must be cpu or cuda, got {device!r}")
    if config.optimizer == "auto":
        config = config.replace(optimizer=resolve_optimizer(config, shape, device, available, c, seq_len=seq_len,
                                                            tokens_per_batch=tokens_per_batch,
                                                            processes=processes))
    precision = resolve_precision(config, device)
    lean = config.method == "full" and config.optimizer == "adamw_lean"
    half = precision in ("bf16", "fp16")  # autocast, on a GPU or on a CPU with bf16 instructions
    compute = (DTYPE_BYTES[config.compute_dtype] if config.compute_dtype != "auto"
               else (2 if precision in ("bf16", "fp16") else 4))

    total_params = shape.total
    linears = shape.linear_total
    non_linear = total_params - linears  # embedding, norms, final norm, untied lm_head
    by_dtype: dict[str, int] = {}  # bytes of the weights by the dtype they are stored in
    quantized_params = 0  # of them, the parameters QLoRA stores in 4 bits

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
            quantized_params = shape.layers * sum(per_layer)
    else:
        raise UserError(f"method must be full, lora or qlora, got {method!r}")

    comp["gradients"] = 4 * trainable
    if lean:
        from ..lean_optimizer import CHUNK_ELEMENTS, MIN_8BIT_SIZE, QUANT_BLOCK
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
    from ..loss import chunk_rows  # here, not at the top: loss.py and packing.py import torch
    from ..packing import pass_budget, pass_tokens
    # Only one pass of the batch holds activations at a time (packing.split_passes).
    passed = pass_tokens(pass_budget(config.tokens_per_pass, device, step_in_backward=lean), seq, tokens)
    comp["activations"] = activation_bytes(config, shape, passed, device, precision, c, seq=seq)
    if device == "cpu" and passed < tokens:
        comp["activations"] += int(c.cpu_pass_widths_retained * comp["activations"])
    chunk = min(passed, chunk_rows(shape.vocab)) * shape.vocab * 4
    copies = c.chunk_logits_copies if half and not keeps_loss_workspace(config, device) \
        else c.chunk_logits_copies_kept
    comp["logits_loss"] = int(copies * chunk + 2 * passed * shape.hidden * (2 if half else 4))
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
                  details={"weights_by_dtype": by_dtype, "quantized_params": quantized_params,
                           "tokens_per_batch": tokens, "tokens_per_pass": passed,
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
                + tokens * seq * heads * cpu_attention_probs_bytes (CPU, bf16, seq ≤ 448: the
                plain attention's probabilities)
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
    if device == "cpu" and half and seq <= PLAIN_ATTENTION_MAX_LEN:  # lanes * heads * seq^2 probabilities
        per_layer += tokens * seq * shape.heads * c.cpu_attention_probs_bytes
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

