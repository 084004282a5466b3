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

The package, in the order a forecast is made:

    constants.py   byte units, component and phase names, verdicts, `Constants` (DEFAULTS)
    shape.py       a model's shape and exact parameter counts from its config (`model_shape`)
    estimate.py    `forecast` (a `Forecast`, component by component), its rules and `verdict`
    advice.py      `suggestions` when a run will not fit, and `plan`, the data behind the
                   command line's report (printed by cli.format_plan)

What is available to compare with is probed in ft_engine/hardware.py (`available_memory`).
"""

from ..hardware import available_memory, memory_cap  # here for older callers: patch them in hardware
from .advice import plan, suggestions
from .constants import ALWAYS_ALIVE, COMPONENTS, DEFAULTS, GIB, MIB, PHASES, VERDICTS, WHOLE_STEP, Constants, Verdict
from .estimate import (
                       SHARDED,
                       Forecast,
                       activation_bytes,
                       cpu_load_peak_bytes,
                       forecast,
                       lean_weight_bytes,
                       local_model,
                       lora_params,
                       lora_targets,
                       memory_first,
                       quant_constant_bytes,
                       quantized_bytes,
                       resolve_optimizer,
                       resolve_precision,
                       spread,
                       trainable_tensors,
                       verdict,
)
from .shape import ATTENTION, LINEARS, LLAMA_1B_SHAPE, MLP, ModelShape, llama_1b_config, model_shape

__all__ = ["ALWAYS_ALIVE", "ATTENTION", "COMPONENTS", "DEFAULTS", "GIB", "LINEARS", "LLAMA_1B_SHAPE", "MIB",
           "MLP", "PHASES", "SHARDED", "VERDICTS", "Verdict", "WHOLE_STEP", "Constants", "Forecast", "ModelShape",
           "activation_bytes", "available_memory", "cpu_load_peak_bytes", "forecast", "lean_weight_bytes",
           "llama_1b_config", "local_model", "lora_params", "lora_targets", "memory_cap", "memory_first",
           "model_shape", "plan", "quant_constant_bytes", "quantized_bytes", "resolve_optimizer",
           "resolve_precision", "spread", "suggestions", "trainable_tensors", "verdict"]
