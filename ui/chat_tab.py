"""Chat tab: talk to a finished run, and ask the same question of the base model beside it.
For LoRA/QLoRA both answers come from one loaded model (the adapter switched off for the
base), so the comparison costs no second copy in memory."""

from __future__ import annotations

import math

import gradio as gr

from ft_engine.errors import UserError
from ft_engine.rundir import DamagedFileError

from . import limits
from .context import Studio

CHATTABLE = ("completed", "stopped")
DEFAULT_MAX_NEW_TOKENS = 128
PICK_A_RUN = "Pick a finished run above first."
# what the chat shows in place of an answer: an error, a WaitNotice (ft_engine.inference), PICK_A_RUN
NOT_ANSWERS = ("❌", "⏳", PICK_A_RUN)
CUT_MARK = "⏱ [cut at"  # how ft_engine.inference.cut_note() starts


# --- what a caller sends, as the engine takes it (issue 11: raw Python errors reached the page) --

def as_number(value, name: str, whole: bool = False) -> int | float:
    """An API value as a number: numbers pass, numerals in text are read ("128"), anything else
    is refused naming the setting ("many" gave int()'s own error before)."""
    kind = "a whole number such as 128" if whole else "a number such as 0.7"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UserError(f"{name} must be {kind}, got {value[:40]!r}") from None
    # (an int is always finite; math.isfinite would overflow on a 400-digit one)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"{name} must be {kind}, got {str(value)[:40]!r}")
    if whole:
        if value != int(value):
            raise UserError(f"{name} must be {kind}, got {value}")
        return int(value)
    if abs(value) > 1e300:  # float() of a longer int overflows; no setting here means such a number
        raise UserError(f"{name} must be {kind}, got a number of {len(str(abs(int(value))))} digits")
    return float(value)


def as_text(value, name: str) -> str:
    """An API value that must be text (None reads as "")."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{name} must be text, got {type(value).__name__}")
    return value


def as_flag(value, name: str) -> bool:
    """true/false, also as the text a form or a script may send ("false" is not truthy here)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{name} must be true or false, got {str(value)[:40]!r}")


def named_errors(slider: gr.Slider, name: str, whole: bool = False) -> gr.Slider:
    """`slider` refusing a bad value with one line naming the setting. Gradio's own refusal
    of a value that is no number (a caller can send one over HTTP) says "Could not preprocess
    input component at index 5", lists every input and ends with Python's error; a gr.Error
    raised in preprocess reaches the caller as it is."""
    preprocess = slider.preprocess

    def checked(payload):
        try:
            value = as_number(payload, name, whole)
        except UserError as e:
            raise gr.Error(str(e)) from None
        if not slider.minimum <= value <= slider.maximum:
            raise gr.Error(f"{name} must be between {slider.minimum:g} and {slider.maximum:g} here, got {value:g}")
        return preprocess(value)

    slider.preprocess = checked
    return slider


def message_text(content) -> str:
    """A chat message's text: Gradio's Chatbot hands a message back as a list of parts
    ({"type": "text", "text": ...}); the chat template needs one string."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.get("text", "") if isinstance(p, dict) else p if isinstance(p, str) else "" for p in parts)


def conversation(history: list[dict]) -> list[dict]:
    """The page's chat as the model reads it: user and assistant messages as text, without the
    exchanges the model never answered (an error, a notice, "pick a run" shown in the chat:
    dropped with their question, so roles still alternate, as chat templates require) and
    without the time-limit notes that end cut answers."""
    turns: list[dict] = []
    for m in history:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            continue
        text = message_text(m.get("content"))
        if m["role"] == "assistant" and text.startswith(NOT_ANSWERS):
            if turns and turns[-1]["role"] == "user":
                turns.pop()
            continue
        if m["role"] == "assistant" and CUT_MARK in text:
            text = text.split(CUT_MARK)[0].rstrip()
        turns.append({"role": m["role"], "content": text})
    return turns


def chattable_runs(studio: Studio) -> list[str]:
    """Runs with a trained result, newest first."""
    out = []
    for run in reversed(studio.runs()):
        try:
            status = run.read_status().get("status")
        except DamagedFileError:  # listed as damaged in the Runs tab; nothing to chat with here
            continue
        if status in CHATTABLE and run.result_dir is not None:
            out.append(run.run_id)
    return out


def build(studio: Studio):
    # FT_CHAT_*, checked when the app starts (app.py): the same caps for the page and the API
    caps = limits.chat_limits()
    cap_note = (f"At most {caps.max_new_tokens} here" + (f"; an answer stops after {caps.max_time_s:g} s"
                                                          if caps.max_time_s else ""))
    gr.Markdown("## 4 · Chat\nAsk your tuned model something from your data — and see what the "
                "base model says to the same question.")
    with gr.Row():
        run_choice = gr.Dropdown(chattable_runs(studio), label="Run", scale=3, allow_custom_value=True,
                                 info="Finished or stopped runs")
        refresh = gr.Button("↻ Refresh list", scale=1)
        compare = gr.Checkbox(True, label="Compare with the base model", scale=1)
    with gr.Row():
        tuned = gr.Chatbot(label="Tuned model", height=380, buttons=["copy"])
        base = gr.Chatbot(label="Base model (same weights, adapter off)", height=380, buttons=["copy"])
    with gr.Row():
        message = gr.Textbox(placeholder="e.g. What is the capital of Zubrowka?", show_label=False, scale=5,
                             submit_btn=True)
        clear = gr.Button("🗑 Clear conversation", scale=1)
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            max_new_tokens = gr.Slider(1, caps.max_new_tokens, value=min(DEFAULT_MAX_NEW_TOKENS, caps.max_new_tokens),
                                       step=1, label="Max new tokens", info=cap_note)
            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature",
                                    info="0 = always the most likely word (repeatable)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", info="Used when temperature > 0")
        system_prompt = gr.Textbox(label="System prompt (optional)", placeholder="e.g. You are a travel guide.")

    def respond(run_id, text, tuned_hist, base_hist, with_base, max_tokens, temp, p, system):
        tuned_hist, base_hist = list(tuned_hist or []), list(base_hist or [])
        if not isinstance(text, str) or not text.strip():
            yield tuned_hist, base_hist, ""
            return
        if not run_id:
            tuned_hist += [{"role": "user", "content": text},
                           {"role": "assistant", "content": PICK_A_RUN}]
            yield tuned_hist, base_hist, ""
            return
        tuned_hist += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        answering = tuned_hist  # the chat whose last message shows the answer, a notice or the error
        try:
            settings = dict(max_new_tokens=as_number(max_tokens, "max_new_tokens", whole=True),
                            temperature=as_number(temp, "temperature"), top_p=as_number(p, "top_p"),
                            system_prompt=as_text(system, "system_prompt") or None, limits=caps)
            chat = studio.chat_model(run_id)
            # the conversation so far, as the tuned model saw it, plus the new question; the stream
            # shows "waiting for another answer (N ahead)" while another visitor's answer runs
            for partial in chat.stream(conversation(tuned_hist[:-1]), **settings):
                tuned_hist[-1]["content"] = partial
                yield tuned_hist, base_hist, ""
            if with_base:
                base_hist += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
                answering = base_hist
                for partial in chat.stream(conversation(base_hist[:-1]), use_adapter=False, **settings):
                    base_hist[-1]["content"] = partial
                    yield tuned_hist, base_hist, ""
        except UserError as e:
            answering[-1]["content"] = f"❌ {e}"
            yield tuned_hist, base_hist, ""

    named_errors(max_new_tokens, "max_new_tokens", whole=True)
    named_errors(temperature, "temperature")
    named_errors(top_p, "top_p")
    inputs = [run_choice, message, tuned, base, compare, max_new_tokens, temperature, top_p, system_prompt]
    message.submit(respond, inputs, [tuned, base, message], api_visibility="private")
    clear.click(lambda: ([], [], ""), None, [tuned, base, message], api_visibility="private")
    run_choice.change(lambda: ([], []), None, [tuned, base], api_visibility="private")

    def refresh_choices():
        runs = chattable_runs(studio)
        return gr.update(choices=runs, value=runs[0] if runs else None)

    refresh.click(refresh_choices, None, run_choice, api_visibility="private")

    return run_choice, refresh_choices
