"""Chat with a finished run, and with its base model, from one loaded copy.

For LoRA and QLoRA the base answer comes from the same weights with the adapter switched off
(peft's `disable_adapter()`), so comparing costs no second copy in memory. A full fine-tune
changed every weight, so its base model has to be loaded separately (lazily, on first use).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TextIteratorStreamer

from .config import RunConfig
from .errors import UserError
from .memory import TRAIN_GPU
from .models import bnb_config, load_base_model, load_tokenizer, model_build_lock, placement, resolve_compute_dtype
from .render import end_of_turn_id
from .rundir import ADAPTER_DIR, MODEL_DIR, RunDir, open_run


# --- where a chat model goes, and in what dtype (issue 10) ---------------------------------------

def chat_device(training_run: str | None = None) -> int | str:
    """The device a chat model is loaded on: "cpu" without CUDA; with 2+ GPUs the last one
    (runs train on memory.TRAIN_GPU, so a chat never takes memory from a run); with one GPU,
    that GPU — but not while `training_run` trains on it: the run's memory was forecast and
    checked for the run alone, and a 1B chat model in bf16 is 2.5 GB more (a full run compared
    with its base, 5 GB), enough to run a T4 out of memory mid-training."""
    if not torch.cuda.is_available():
        return "cpu"
    gpus = torch.cuda.device_count()
    if gpus >= 2:
        return gpus - 1
    if training_run:
        raise UserError(f"the GPU is training run {training_run}: chat loads a model onto it only when no "
                        f"run trains there, so the run keeps the memory it was planned with. Chat when the "
                        f"run ends, or stop it in the Monitor tab (what it trained so far is kept)")
    return TRAIN_GPU


def chat_dtype(config: RunConfig, device: int | str) -> torch.dtype:
    """The run's compute precision on a GPU (bf16, or fp16 on a T4), as it was trained and
    half the memory of fp32; fp32 on a CPU, where RAM is not what runs out and fp32 answers
    are what the studio measured and tested."""
    return torch.float32 if device == "cpu" else resolve_compute_dtype(config)


def shares_gpu_with_runs(device: int | str) -> bool:
    """A chat model on `device` sits on the GPU the runs train on."""
    return device == TRAIN_GPU


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends a reply: the model's own generation_config EOS ids, the tokenizer's
    EOS, and the special token the chat template ends an assistant turn with (what fine-tuning
    taught the model to emit last). Passing eos_token_id to generate() replaces the
    generation_config's, so all three are listed: a base model's config knows only its EOS, and
    a template's end-of-turn (<|im_end|>, <|eot_id|>) is often another token."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = ids + [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    return sorted({i for i in ids if i is not None})


class ChatModel:
    """A run's model ready to answer. `use_adapter=False` answers as the base model."""

    def __init__(self, run: RunDir | str | Path, device: int | str | None = None):
        """device: a GPU index or "cpu"; None: `chat_device()`."""
        self.run = run if isinstance(run, RunDir) else open_run(run)
        self.config: RunConfig = self.run.read_config()
        self.device = chat_device() if device is None else device
        dtype = chat_dtype(self.config, self.device)
        # One generation at a time: the adapter switch is model-wide state.
        self._lock = threading.Lock()
        self._base_model = None
        adapter, full = self.run.path / ADAPTER_DIR, self.run.path / MODEL_DIR
        if adapter.is_dir():
            from peft import PeftModel
            self.tokenizer = load_tokenizer(str(adapter))
            # QLoRA adapters are used on the same 4-bit base they were trained on.
            qlora = self.config.method == "qlora"
            base_dtype = resolve_compute_dtype(self.config) if qlora else dtype
            with model_build_lock:  # the adapters are built under torch's default dtype too
                base = load_base_model(self.config, base_dtype, quantization=bnb_config(self.config) if qlora else None,
                                       device=self.device)
                self.model = PeftModel.from_pretrained(base, str(adapter), torch_device=_torch_device(self.device))
            self.has_adapter = True
        elif full.is_dir():
            self.tokenizer = load_tokenizer(str(full))
            with model_build_lock:
                self.model = AutoModelForCausalLM.from_pretrained(str(full), dtype=dtype, **placement(None, self.device))
            self.has_adapter = False
        else:
            status = self.run.read_status().get("status")
            raise UserError(f"run {self.run.run_id} has no trained result yet (status: {status}); "
                            f"chat with a completed or stopped run")
        self.model.eval()

    @classmethod
    def base_only(cls, model: str) -> "BaseChatModel":
        return BaseChatModel(model)

    def _model_for(self, use_adapter: bool):
        """(model, context) answering as the tuned or the base model."""
        if use_adapter:
            return self.model, contextlib.nullcontext()
        if self.has_adapter:
            return self.model, self.model.disable_adapter()
        if self._base_model is None:
            self._base_model = load_base_model(self.config, chat_dtype(self.config, self.device), device=self.device)
            self._base_model.eval()
        return self._base_model, contextlib.nullcontext()

    def _inputs(self, prompt: str | list[dict], system_prompt: str | None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system_prompt:
            messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m["role"] != "system"]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  return_tensors="pt", return_dict=True)

    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float) -> dict:
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise UserError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
        kw = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                  eos_token_id=stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None)))
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)  # greedy
        return kw

    def generate(self, prompt: str | list[dict], *, use_adapter: bool = True, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, system_prompt: str | None = None) -> str:
        """The reply to `prompt` (a user message, or a whole conversation). Greedy at temperature 0."""
        kwargs = self._gen_kwargs(max_new_tokens, temperature, top_p)
        inputs = self._inputs(prompt, system_prompt)
        with self._lock:
            model, ctx = self._model_for(use_adapter)
            with ctx, torch.inference_mode():
                out = model.generate(**inputs.to(model.device), **kwargs)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def stream(self, prompt: str | list[dict], *, use_adapter: bool = True, max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, system_prompt: str | None = None) -> Iterator[str]:
        """Yields the reply so far, growing as tokens arrive (what a chat UI displays)."""
        kwargs = self._gen_kwargs(max_new_tokens, temperature, top_p)
        inputs = self._inputs(prompt, system_prompt)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        error: list[BaseException] = []

        def work():
            with self._lock:
                model, ctx = self._model_for(use_adapter)
                try:
                    with ctx, torch.inference_mode():
                        model.generate(**inputs.to(model.device), streamer=streamer, **kwargs)
                except BaseException as e:  # re-raised in the caller's thread below
                    error.append(e)
                    streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        thread.join()
        if error:
            raise error[0]


class BaseChatModel(ChatModel):
    """A model with no run: for chatting with a base model before any training."""

    def __init__(self, model: str, device: int | str | None = None):
        self.config = RunConfig(model=model)
        self.device = chat_device() if device is None else device
        self._lock = threading.Lock()
        self._base_model = None
        self.tokenizer = load_tokenizer(model)
        self.model = load_base_model(self.config, chat_dtype(self.config, self.device), device=self.device)
        self.model.eval()
        self.has_adapter = False

    def _model_for(self, use_adapter: bool):
        return self.model, contextlib.nullcontext()


def _torch_device(device: int | str) -> str:
    """peft's name for `device` (it would put the adapter weights on cuda:0 otherwise)."""
    return device if isinstance(device, str) else f"cuda:{device}"
