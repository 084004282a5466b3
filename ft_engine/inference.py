"""Chat with a finished run, and with its base model, from one loaded copy.

For LoRA and QLoRA the base answer comes from the same weights with the adapter switched off
(peft's `disable_adapter()`), so comparing costs no second copy in memory. A full fine-tune
changed every weight, so its base model has to be loaded separately (lazily, on first use).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TextIteratorStreamer
from transformers.generation.stopping_criteria import MaxTimeCriteria, StoppingCriteria, StoppingCriteriaList

from .config import ChatLimits, RunConfig
from .errors import UserError
from .memory import TRAIN_GPU
from .models import bnb_config, load_base_model, load_tokenizer, model_build_lock, placement, resolve_compute_dtype
from .render import end_of_turn_id
from .rundir import ADAPTER_DIR, MODEL_DIR, RunDir, open_run

# --- where a chat model goes, and in what dtype (issue 10) ---------------------------------------

def chat_device(training_run: str | None = None, run_gpus: int = 1) -> int | str:
    """The device a chat model is loaded on: "cpu" without CUDA; with 2+ GPUs the last one
    (runs train from GPU memory.TRAIN_GPU up, so a chat never takes memory from a run); with
    one GPU, that GPU — but not while `training_run` trains on it (or, using `run_gpus` GPUs,
    on every one there is): the run's memory was forecast and checked for the run alone, and
    a 1B chat model in bf16 is 2.5 GB more (a full run compared with its base, 5 GB), enough to
    run a T4 out of memory mid-training."""
    if not torch.cuda.is_available():
        return "cpu"
    gpus = torch.cuda.device_count()
    if training_run and run_gpus >= gpus:
        where = "the GPU" if gpus == 1 else f"all {gpus} GPUs"
        raise UserError(f"{where} {'is' if gpus == 1 else 'are'} training run {training_run}: chat loads a model "
                        f"onto a GPU only when no run trains there, so the run keeps the memory it was planned "
                        f"with. Chat when the run ends, or stop it in the Monitor tab (what it trained so far is "
                        f"kept)")
    return gpus - 1 if gpus >= 2 else TRAIN_GPU


def chat_dtype(config: RunConfig, device: int | str) -> torch.dtype:
    """The run's compute precision on a GPU (bf16, or fp16 on a T4), as it was trained and
    half the memory of fp32; fp32 on a CPU, where RAM is not what runs out and fp32 answers
    are what the studio measured and tested."""
    return torch.float32 if device == "cpu" else resolve_compute_dtype(config)


def shares_gpu_with_runs(device: int | str, run_gpus: int = 1) -> bool:
    """A chat model on `device` sits on a GPU a run of `run_gpus` processes trains on (GPUs
    TRAIN_GPU to TRAIN_GPU + run_gpus - 1)."""
    return isinstance(device, int) and TRAIN_GPU <= device < TRAIN_GPU + max(run_gpus, 1)


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


# --- one answer at a time, and what the others are told meanwhile (issue 11) ----------------------

# How often a waiting stream looks at its place in line: often enough that a page's notice is
# current, rarely enough that waiting costs nothing measurable.
WAIT_POLL_S = 0.25


class Turns:
    """One generation at a time, first come first served, and how many are ahead of a waiter:
    a ticket lock (threading.Lock keeps no order and cannot say who waits). A ticket either
    gets its turn (wait() is True) and is then released by its holder, or leaves the line
    before its turn; never both."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0       # the ticket handed out next
        self._serving = 0    # the ticket whose turn it is
        self._left: set[int] = set()  # left the line before their turn: skipped when it comes

    def take(self) -> int:
        with self._cond:
            self._next += 1
            return self._next - 1

    def ahead(self, ticket: int) -> int:
        """Answers generating or waiting before `ticket` (0: it is this one's turn)."""
        with self._cond:
            return sum(1 for t in range(self._serving, ticket) if t not in self._left)

    def waiting(self) -> int:
        """Tickets taken and not yet released."""
        with self._cond:
            return self._next - self._serving - len(self._left)

    def wait(self, ticket: int) -> bool:
        """Until it is `ticket`'s turn (True) or it left the line (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._serving >= ticket or ticket in self._left)
            return self._serving == ticket

    def leave(self, ticket: int) -> None:
        """Give up a place in line; once its turn has come this does nothing (the holder releases)."""
        with self._cond:
            if ticket > self._serving:
                self._left.add(ticket)
                self._cond.notify_all()

    def release(self, ticket: int) -> None:
        """The holder is done: the next ticket still in line gets its turn."""
        with self._cond:
            if ticket != self._serving:
                raise RuntimeError(f"ticket {ticket} released out of turn (serving {self._serving})")
            self._serving += 1
            while self._serving in self._left:
                self._left.remove(self._serving)
                self._serving += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self):
        ticket = self.take()
        try:
            self.wait(ticket)
            yield
        finally:
            self.release(ticket)


class WaitNotice(str):
    """What a stream yields while other answers hold the model: the text a chat shows in place
    of the answer, and `ahead`, how many answers come first."""

    ahead: int

    def __new__(cls, ahead: int) -> "WaitNotice":
        notice = super().__new__(cls, f"⏳ Waiting for another answer to finish ({ahead} ahead of this one)…")
        notice.ahead = ahead
        return notice


def cut_note(max_time_s: float) -> str:
    """The line an answer stopped by the time limit ends with."""
    return (f"⏱ [cut at the {max_time_s:g} s time limit for one answer: ask for a shorter answer, "
            f"or lower max new tokens]")


def with_cut_note(text: str, max_time_s: float) -> str:
    return f"{text}\n\n{cut_note(max_time_s)}" if text.strip() else cut_note(max_time_s)


class _StopAt(StoppingCriteria):
    """Stops a generation at `max_time_s` (transformers' MaxTimeCriteria, the rule behind
    generate's `max_time`, started when this is made), remembering that it did so the answer
    can say why it ends there; and as soon as `gone` is set (nobody reads the answer)."""

    def __init__(self, max_time_s: float, gone: threading.Event | None = None):
        self._clock = MaxTimeCriteria(max_time_s) if max_time_s > 0 else None
        self._gone = gone
        self.timed_out = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        over = bool(self._clock(input_ids, scores).all()) if self._clock is not None else False
        self.timed_out = self.timed_out or over
        stop = over or (self._gone is not None and self._gone.is_set())
        return torch.full((input_ids.shape[0],), stop, device=input_ids.device, dtype=torch.bool)


def _check_text(messages: list[dict], max_chars: int) -> None:
    """Every message is text, and the conversation is at most `max_chars` (0 = no cap)."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise UserError(f"message {i + 1} of the conversation must be {{'role': ..., 'content': text}}, got "
                            f"{str(m)[:80]}")
    if not max_chars:
        return
    total, last = sum(len(m["content"]) for m in messages), len(messages[-1]["content"]) if messages else 0
    if last > max_chars:
        raise UserError(f"the message is {last:,} characters, over this chat's cap of {max_chars:,}: "
                        f"send a shorter one")
    if total > max_chars:
        raise UserError(f"the conversation is {total:,} characters, over this chat's cap of {max_chars:,}: "
                        f"clear the conversation, or send a shorter message")


class ChatModel:
    """A run's model ready to answer. `use_adapter=False` answers as the base model."""

    def __init__(self, run: RunDir | str | Path, device: int | str | None = None):
        """device: a GPU index or "cpu"; None: `chat_device()`."""
        self.run = run if isinstance(run, RunDir) else open_run(run)
        self.config: RunConfig = self.run.read_config()
        self.device = chat_device() if device is None else device
        dtype = chat_dtype(self.config, self.device)
        # One generation at a time (the adapter switch is model-wide state), in arrival order.
        self._turns = Turns()
        self._base_model = None
        self.run.check_result_links()  # loading follows links: none may lead outside the run (issue 11)
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

    def _inputs(self, prompt: str | list[dict], system_prompt: str | None, limits: ChatLimits | None = None,
                max_new_tokens: int = 0):
        """The prompt as token ids, refused (UserError) when it is over `limits` or leaves no
        room in the model's context for `max_new_tokens`."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system_prompt:
            messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m["role"] != "system"]
        limits = limits or ChatLimits()
        _check_text(messages, limits.max_chars)  # before tokenizing: bounds the tokenizer's work too
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
        n = inputs["input_ids"].shape[1]
        if limits.max_prompt_tokens and n > limits.max_prompt_tokens:
            raise UserError(f"the conversation is {n:,} tokens, over this chat's cap of {limits.max_prompt_tokens:,}: "
                            f"clear the conversation, or send a shorter message")
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context and n >= context:
            raise UserError(f"the conversation is {n:,} tokens, more than the model reads at once ({context:,}): "
                            f"clear the conversation, or send a shorter message")
        if context and n + max_new_tokens > context:
            raise UserError(f"the conversation ({n:,} tokens) and max_new_tokens ({max_new_tokens}) are more than "
                            f"the model reads at once ({context:,} tokens): clear the conversation, or lower "
                            f"max_new_tokens to {max(context - n, 0)}")
        return inputs

    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float,
                    limits: ChatLimits | None = None) -> dict:
        cap = (limits or ChatLimits()).max_new_tokens
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        if cap and max_new_tokens > cap:
            raise UserError(f"max_new_tokens is {max_new_tokens}, over this chat's cap of {cap} tokens per answer: "
                            f"ask for at most {cap}")
        for name, value in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(value, float) and not math.isfinite(value)):  # an int is finite
                raise UserError(f"{name} must be a number, got {value!r}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise UserError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
        kw = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                  eos_token_id=stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None)))
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)  # greedy
        return kw

    def waiting(self) -> int:
        """Answers generating or waiting for the model right now."""
        return self._turns.waiting()

    def generate(self, prompt: str | list[dict], *, use_adapter: bool = True, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, system_prompt: str | None = None,
                 limits: ChatLimits | None = None) -> str:
        """The reply to `prompt` (a user message, or a whole conversation). Greedy at temperature 0.
        Waits its turn behind answers already generating; `limits` caps what it may ask."""
        limits = limits or ChatLimits()
        kwargs = self._gen_kwargs(max_new_tokens, temperature, top_p, limits)
        inputs = self._inputs(prompt, system_prompt, limits, max_new_tokens)
        with self._turns.turn():
            model, ctx = self._model_for(use_adapter)  # may load a full run's base model first
            stop = _StopAt(limits.max_time_s)  # the clock starts once the model is ready
            with ctx, torch.inference_mode():
                out = model.generate(**inputs.to(model.device), stopping_criteria=StoppingCriteriaList([stop]),
                                     **kwargs)
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        return with_cut_note(text, limits.max_time_s) if stop.timed_out else text

    def answer_all(self, conversations: list[list[dict]], *, use_adapter: bool = True,
                   max_new_tokens: int = 64) -> list[str]:
        """Greedy replies to several conversations at once (the evaluation's questions): one
        left-padded batch, so each reply is generated on its own row exactly as generate()
        would, up to float rounding of the batched matmuls."""
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        # the template writes any BOS itself: the tokenizer must not add a second one
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                                add_special_tokens=False)
        kwargs = self._gen_kwargs(max_new_tokens, 0.0, 1.0)
        with self._turns.turn():
            model, ctx = self._model_for(use_adapter)
            with ctx, torch.inference_mode():
                out = model.generate(**inputs.to(model.device), **kwargs)
        width = inputs["input_ids"].shape[1]
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]

    def stream(self, prompt: str | list[dict], *, use_adapter: bool = True, max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, system_prompt: str | None = None,
               limits: ChatLimits | None = None) -> Iterator[str]:
        """Yields the reply so far, growing as tokens arrive (what a chat UI displays). While
        other answers hold the model it yields a `WaitNotice` (a str saying how many are
        ahead) instead of going quiet; an answer stopped by the time limit ends with
        `cut_note()`. A reader that stops early (closes the generator) frees the model at the
        next token, or gives up its place in line."""
        limits = limits or ChatLimits()
        kwargs = self._gen_kwargs(max_new_tokens, temperature, top_p, limits)
        inputs = self._inputs(prompt, system_prompt, limits, max_new_tokens)
        # timeout: the reader wakes up every WAIT_POLL_S to look at its place in line
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=WAIT_POLL_S)
        error: list[BaseException] = []
        gone = threading.Event()  # the reader left: stop generating, or never start
        stops: list[_StopAt] = []
        ticket = self._turns.take()  # taken here, so the place in line is known before the thread runs

        def work():
            if not self._turns.wait(ticket):
                return  # the reader left the line before this answer's turn
            try:
                if gone.is_set():
                    return
                model, ctx = self._model_for(use_adapter)  # may load a full run's base model first
                stops.append(_StopAt(limits.max_time_s, gone))  # the clock starts once the model is ready
                with ctx, torch.inference_mode():
                    model.generate(**inputs.to(model.device), streamer=streamer,
                                   stopping_criteria=StoppingCriteriaList(stops), **kwargs)
            except BaseException as e:  # re-raised in the caller's thread below
                error.append(e)
                streamer.end()
            finally:
                self._turns.release(ticket)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text, shown = "", 0
        try:
            while True:
                ahead = self._turns.ahead(ticket)
                if ahead != shown and not text:
                    # a notice while others are ahead; "" once it is this answer's turn
                    yield WaitNotice(ahead) if ahead else ""
                    shown = ahead
                try:
                    piece = next(streamer)
                except queue.Empty:  # no token yet: still waiting, or the prompt's first pass
                    continue
                except StopIteration:
                    break
                if piece:  # the streamer hands out "" while a character's bytes are incomplete
                    text += piece
                    yield text
        finally:
            # the reader is done, or left early: then the answer stops at its next token, or
            # gives up its place in line so those behind move up at once
            gone.set()
            self._turns.leave(ticket)
        thread.join()
        if error:
            raise error[0]
        if stops and stops[0].timed_out:
            yield with_cut_note(text, limits.max_time_s)
        elif not text:
            yield ""  # an empty answer still replaces the notice shown before it


class BaseChatModel(ChatModel):
    """A model with no run: for chatting with a base model before any training."""

    def __init__(self, model: str, device: int | str | None = None):
        self.config = RunConfig(model=model)
        self.device = chat_device() if device is None else device
        self._turns = Turns()
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
