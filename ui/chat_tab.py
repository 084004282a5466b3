"""Chat tab: talk to a finished run, and ask the same question of the base model beside it.
For LoRA/QLoRA both answers come from one loaded model (the adapter switched off for the
base), so the comparison costs no second copy in memory."""

from __future__ import annotations

import gradio as gr

from ft_engine.errors import UserError
from ft_engine.rundir import DamagedFileError

from .context import Studio

CHATTABLE = ("completed", "stopped")


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
            max_new_tokens = gr.Slider(8, 512, value=128, step=8, label="Max new tokens")
            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature",
                                    info="0 = always the most likely word (repeatable)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", info="Used when temperature > 0")
        system_prompt = gr.Textbox(label="System prompt (optional)", placeholder="e.g. You are a travel guide.")

    def respond(run_id, text, tuned_hist, base_hist, with_base, max_tokens, temp, p, system):
        tuned_hist, base_hist = list(tuned_hist or []), list(base_hist or [])
        if not text or not text.strip():
            yield tuned_hist, base_hist, ""
            return
        if not run_id:
            tuned_hist += [{"role": "user", "content": text},
                           {"role": "assistant", "content": "Pick a finished run above first."}]
            yield tuned_hist, base_hist, ""
            return
        try:
            chat = studio.chat_model(run_id)
            settings = dict(max_new_tokens=int(max_tokens), temperature=float(temp), top_p=float(p),
                            system_prompt=system or None)
            # the conversation so far, as the tuned model saw it, plus the new question
            history = [m for m in tuned_hist if m["role"] in ("user", "assistant")]
            tuned_hist += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
            for partial in chat.stream(history + [{"role": "user", "content": text}], **settings):
                tuned_hist[-1]["content"] = partial
                yield tuned_hist, base_hist, ""
            if with_base:
                base_history = [m for m in base_hist if m["role"] in ("user", "assistant")]
                base_hist += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
                for partial in chat.stream(base_history + [{"role": "user", "content": text}],
                                           use_adapter=False, **settings):
                    base_hist[-1]["content"] = partial
                    yield tuned_hist, base_hist, ""
        except UserError as e:
            tuned_hist += [{"role": "assistant", "content": f"❌ {e}"}]
            yield tuned_hist, base_hist, ""

    inputs = [run_choice, message, tuned, base, compare, max_new_tokens, temperature, top_p, system_prompt]
    message.submit(respond, inputs, [tuned, base, message], api_visibility="private")
    clear.click(lambda: ([], [], ""), None, [tuned, base, message], api_visibility="private")
    run_choice.change(lambda: ([], []), None, [tuned, base], api_visibility="private")

    def refresh_choices():
        runs = chattable_runs(studio)
        return gr.update(choices=runs, value=runs[0] if runs else None)

    refresh.click(refresh_choices, None, run_choice, api_visibility="private")

    def chat(run_id: str, message: str, use_adapter: bool = True, max_new_tokens: int = 128,
             temperature: float = 0.0, system_prompt: str = "") -> str:
        """One reply from a finished run (use_adapter=False answers as the base model)."""
        try:
            return studio.chat_model(run_id).generate(message, use_adapter=use_adapter,
                                                      max_new_tokens=int(max_new_tokens),
                                                      temperature=float(temperature),
                                                      system_prompt=system_prompt or None)
        except UserError as e:
            return f"error: {e}"

    gr.api(chat, api_name="chat")
    return run_choice, refresh_choices
