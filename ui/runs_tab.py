"""Runs tab: every run on disk in one table, loss curves of several runs overlaid, and for the
selected run, together: resume (a stopped or interrupted run, from its last checkpoint), delete,
download (adapter, merged model, or GGUF with an Ollama Modelfile, zipped), push to the Hugging
Face Hub, and did it learn? (evaluate). Comparing the methods has a sub-tab of its own
(compare_view.py)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import gradio as gr

from ft_engine import export
from ft_engine.errors import UserError
from ft_engine.gguf_export import QUANT_NOTES, QUANTS
from ft_engine.rundir import read_summary

from . import api, compare_view, limits
from .charts import loss_overlay
from .context import Studio
from .data_tab import DataWidgets
from .downloads import PreparedDownloads, without_paths

log = logging.getLogger(__name__)

# The runs table's headers, short and with their unit, and each column's share of the width (%):
# wide enough that no header breaks inside a word ("duration", "tokens/s").
WIDTHS = {"name": 13, "method": 6, "model": 7, "status": 8, "steps": 5, "train loss": 6, "eval loss": 6,
          "did it learn?": 9, "peak GiB": 6, "duration": 8, "tokens/s": 8, "notes": 6, "run id": 12}
COLUMNS = list(WIDTHS)  # table_rows' order
EVAL_COLUMNS = ["", "question", "expected", "base model", "tuned model", "F1 base → tuned"]


def table_rows(studio: Studio) -> list[list]:
    """One row per run, newest first, in human units."""
    rows = []
    for run in reversed(studio.runs()):
        s = read_summary(run)
        dur = s.elapsed_s
        rows.append([
            s.name, s.method, Path(str(s.model)).name or s.model, s.status, f"{s.step}/{s.total_steps or '?'}",
            round(s.train_loss, 4) if s.train_loss is not None else None,
            round(s.eval_loss, 4) if s.eval_loss is not None else None,
            s.eval_headline or "",
            round(s.peak_mib / 1024, 2) if s.peak_mib else None,
            f"{int(dur) // 60}m {int(dur) % 60:02d}s" if dur else "",
            round(s.tokens_per_second) if s.tokens_per_second else None,
            s.metrics_note,  # e.g. damaged lines skipped in metrics.jsonl: the numbers beside it leave them out
            s.run_id,
        ])
    return rows


def eval_rows(result: dict) -> list[list]:
    """The evaluation table: the run's questions, then the general ones (marked 🌍)."""
    def mark(score: dict) -> str:
        return "✅" if score["correct"] else "❌"
    rows = []
    for part, tag in (("questions", ""), ("general", "🌍 ")):
        for r in result.get(part) or []:
            rows.append([tag + ("⚠ forgotten" if r["base_score"]["correct"] and not r["tuned_score"]["correct"] else ""),
                         r["question"], r["expected"], f"{mark(r['base_score'])} {r['base']}",
                         f"{mark(r['tuned_score'])} {r['tuned']}",
                         f"{r['base_score']['f1']:.2f} → {r['tuned_score']['f1']:.2f}"])
    return rows


def _token_placeholder() -> str:
    """What an empty token field does here (limits.server_hf_token decides it on every push)."""
    if not os.environ.get("HF_TOKEN") or not limits.lend_hf_token():
        return "paste a token with write access (huggingface.co/settings/tokens)"
    return "empty = the server's HF_TOKEN" + (" (signed-in users)" if limits.shared_instance() else "")


def build(studio: Studio, data: DataWidgets, model: gr.Dropdown) -> list[tuple]:
    """The Runs tab: the runs, and comparisons of the methods in a sub-tab of their own. Returns
    the (function, inputs, outputs) to run when the tab is opened, so new runs show up."""
    gr.Markdown("## 5 · Runs")
    with gr.Tabs():
        with gr.Tab("All runs", id="runs-all"):
            on_open = _build_runs(studio)
        with gr.Tab("⚖ Compare methods", id="runs-compare"):
            compare_refresh, compare_pick = compare_view.build(studio, data, model)
    return [on_open, (compare_refresh, compare_pick, compare_pick)]


def _build_runs(studio: Studio) -> tuple:
    ids = [r.run_id for r in reversed(studio.runs())]
    with gr.Row(equal_height=True):
        gr.Markdown("Every run on disk, newest first. Pick runs below to overlay their loss curves, "
                    "or one run to resume, download, push or delete it.")
        refresh = gr.Button("↻ Refresh", size="sm", scale=0, min_width=110)
    table = gr.Dataframe(value=table_rows(studio), headers=COLUMNS, interactive=False, wrap=True,
                         column_widths=[f"{WIDTHS[c]}%" for c in COLUMNS])
    overlay_pick = gr.Dropdown(ids, multiselect=True, label="Overlay the loss curves of…")
    overlay = gr.Plot(label="Loss curves", visible=False)  # shown once a run is picked

    # --- one run: everything done to it, together ------------------------------------------
    gr.Markdown("### Selected run")
    with gr.Group():
        with gr.Row(equal_height=True):
            selected = gr.Dropdown(ids, value=ids[0] if ids else None, label="Run", scale=4,
                                   allow_custom_value=True)
            resume_btn = gr.Button("⟳ Resume", scale=1, min_width=120)
            with gr.Column(scale=2, min_width=220):
                confirm = gr.Checkbox(False, label="Yes, delete this run and its files for good")
                delete_btn = gr.Button("🗑 Delete run", variant="stop", size="sm")
        result = gr.Markdown("<small>⟳ Resume: a stopped or interrupted run continues from its last checkpoint "
                             "to its planned number of steps, queued like a new run.</small>",
                             padding=True)
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            gr.Markdown("#### ⬇ Download")
            kind = gr.Radio([("Adapter only (small)", "adapter"), ("Merged standalone model", "merged"),
                             ("GGUF for llama.cpp / Ollama / LM Studio", "gguf")],
                            value="adapter", label="Download", show_label=False,  # the heading says it
                            info="Full fine-tuning runs always give the whole model. A merged QLoRA model is its "
                                 "adapter on the dequantized 4-bit base, in the run's bf16/fp16: the model you "
                                 "trained and chatted with, not the original full-precision weights. GGUF: one "
                                 "file with the tokenizer and chat template inside, and an Ollama Modelfile")
            quant = gr.Dropdown([(f"{q} — {note}", q) for q, note in QUANT_NOTES.items()], value=QUANTS[0],
                                label="GGUF quantization", visible=False)
            export_btn = gr.Button("⬇ Prepare download")
            download = gr.File(label="Your file", interactive=False, visible=False)  # shown once prepared
            download_note = gr.Markdown()
        with gr.Column(variant="panel"):
            gr.Markdown("#### ⬆ Push to the Hugging Face Hub")
            repo = gr.Textbox(label="Hugging Face repo", placeholder="your-name/my-tuned-model")
            token = gr.Textbox(label="Hugging Face token (write access)", type="password",
                               placeholder=_token_placeholder(), info="Used for this upload only; never saved.")
            private = gr.Checkbox(True, label="Private repo")
            push_btn = gr.Button("⬆ Push to the Hub")
            push_result = gr.Markdown()
    with gr.Accordion("🧪 Did it learn? Tuned vs base on questions it was not trained on", open=False):
        gr.Markdown("The tuned model and its base answer the same questions side by side: the run's held-out "
                    "rows (or, if it held none out, its training rows), or a file of questions with answers you "
                    "upload (any training-data format), plus 20 general questions that show what the tuning "
                    "broke, if anything. ✅ = more than half of the expected answer's key words are in the answer.")
        with gr.Row():
            questions_file = gr.File(label="Questions with answers (optional)", type="filepath",
                                     file_types=[".jsonl", ".json", ".csv", ".parquet"], scale=2)
            with gr.Column(scale=1):
                eval_btn = gr.Button("🧪 Evaluate", variant="primary")
                eval_stop = gr.Button("■ Stop the evaluation")
                eval_note = gr.Markdown()
        eval_line = gr.Markdown()
        eval_table = gr.Dataframe(headers=EVAL_COLUMNS, interactive=False, wrap=True)

    def refresh_all(current: str | None = None):
        ids = [r.run_id for r in reversed(studio.runs())]
        keep = current if current in ids else (ids[0] if ids else None)
        return table_rows(studio), gr.update(choices=ids), gr.update(choices=ids, value=keep)

    refresh.click(refresh_all, selected, [table, overlay_pick, selected], api_visibility="private")

    def draw_overlay(picked: list[str]):
        curves = {}
        for run_id in picked or []:
            try:
                curves[run_id] = studio.run(run_id).read_metrics()
            except UserError:
                continue  # deleted since the list was drawn; the refresh drops it
        return gr.update(value=loss_overlay(curves), visible=bool(curves))

    overlay_pick.change(draw_overlay, overlay_pick, overlay, api_visibility="private")

    # written inside Gradio's cache folder, so Gradio serves each zip where it is instead of
    # keeping a copy; at most one per session stays (ui/downloads.py)
    downloads = PreparedDownloads(download.GRADIO_CACHE)

    def download_line(path: str | None) -> str:
        """The prepared file's name and size; for a GGUF, what to do with it."""
        if not path or not Path(path).is_file():
            return ""
        from ft_engine.disk import gb
        line = f"`{Path(path).name}`: {gb(Path(path).stat().st_size)}."
        if "-gguf-" in Path(path).name:
            line += (" Unzip it, then `ollama create my-model -f Modelfile` and `ollama run my-model`; or open "
                     "the .gguf in LM Studio, or `llama-cli -m <file>.gguf -cnv` (README: Use it in Ollama).")
        return line

    kind.change(lambda k: gr.update(visible=k == "gguf"), kind, quant, api_visibility="private")

    def export_run(run_id: str, export_kind: str, gguf_quant: str = QUANTS[0], request: gr.Request = None,
                   progress=gr.Progress()):
        """Zip of the run's adapter ("adapter"), merged standalone model ("merged"), or GGUF file
        with an Ollama Modelfile ("gguf", in quantization gguf_quant: f16, bf16, q8_0, q4_k_m).
        It replaces the caller's previous download, which is deleted on the server."""
        if not run_id:
            raise gr.Error("Pick a run first.")
        progress(0.0, desc="loading")
        session = getattr(request, "session_hash", None)
        folder, path = downloads.start(session), None
        try:
            path = export.zip_result(studio.run(run_id), export_kind, folder, quant=gguf_quant,
                                     progress=lambda fraction, text: progress(fraction, desc=text))
        except UserError as e:
            raise gr.Error(without_paths(str(e))) from None
        except Exception as e:
            # a bug or an environment failure: its traceback in the server log, one line on the
            # page, without the server's paths (show_error would put the raw text there)
            log.exception("the %s export of run %s failed", export_kind, run_id)
            first = without_paths(str(e).strip().splitlines()[0]) if str(e).strip() else "no message"
            raise gr.Error(f"the {export_kind} export of run {run_id} failed ({type(e).__name__}: {first}); "
                           f"nothing of it was kept. The server log has the details") from None
        finally:
            if path is None:  # failed or cancelled: nothing of it stays
                downloads.discard(folder)
        downloads.keep(session, folder)
        return str(path)

    def show_download(path: str | None):
        return gr.update(visible=bool(path)), download_line(path)

    export_btn.click(export_run, [selected, kind, quant], download, api_name="export_run").success(
        show_download, download, [download, download_note], api_visibility="private")

    def push(run_id: str, repo_id: str, typed_token: str, is_private: bool, export_kind: str,
             request: gr.Request, gguf_quant: str = QUANTS[0]):
        """Reachable by fn_index although the API hides it: the server's HF_TOKEN goes only where
        limits.server_hf_token allows (FT_LEND_HF_TOKEN; signed in on a shared studio), checked
        before anything is loaded or sent."""
        try:
            tok = typed_token or limits.server_hf_token(getattr(request, "username", None))
            url = export.push_to_hub(studio.run(run_id), repo_id, tok, export_kind, private=is_private,
                                     quant=gguf_quant)
        except UserError as e:
            return f"❌ {e}", ""
        return f"✅ Pushed to {url}", ""  # clear the token field

    push_btn.click(push, [selected, repo, token, private, kind, quant], [push_result, token],
                   api_visibility="private")

    def delete(run_id: str, confirmed: bool):
        if not confirmed:
            return "Tick the box to confirm the deletion first.", gr.update(), gr.update(), gr.update(), False
        try:
            studio.delete_run(run_id)  # and its chat model, and an upload only it used
        except UserError as e:
            return f"❌ {e}", gr.update(), gr.update(), gr.update(), False
        rows, a, b = refresh_all(None)
        return f"Deleted `{run_id}`.", rows, a, b, False

    delete_btn.click(delete, [selected, confirm], [result, table, overlay_pick, selected, confirm],
                     api_visibility="private")

    def resume_clicked(run_id: str):
        if not run_id:
            return "Pick a run first.", gr.update()
        answer = api.resume_run(studio, run_id)
        if not answer["run_id"]:
            return f"❌ {answer['message']}", gr.update()
        return answer["message"], table_rows(studio)

    resume_btn.click(resume_clicked, selected, [result, table], api_visibility="private")

    stops: dict[str, threading.Event] = {}  # one per run being evaluated

    def evaluate_run(run_id: str, questions_path: str | None = None, progress=gr.Progress()):
        """Ask the tuned and the base model the run's held-out rows (or an uploaded questions
        file) and 20 general questions; yields (headline, rows) after every batch; saves eval.json."""
        if not run_id:
            raise gr.Error("Pick a run first.")
        from ft_engine.evaluate import headline, iter_evaluate, questions_from_file
        try:
            run = studio.run(run_id)
            questions = source = None
            if questions_path:
                path = studio.check_upload(questions_path)
                questions, source = questions_from_file(path), f"file {studio.upload_name(path) or path.name}"
            if run_id in stops:
                raise UserError(f"run {run_id} is being evaluated already: wait for it, or stop it")
            stop = stops[run_id] = threading.Event()
            try:
                chat = studio.chat_model(run_id)
                for done in iter_evaluate(run, questions, source, stop=stop, chat=chat,
                                          progress=lambda d, t, text: progress((d, t), desc=text)):
                    yield f"**{headline(done)}** · questions: {done['source']}", eval_rows(done)
            finally:
                stops.pop(run_id, None)
        except UserError as e:
            raise gr.Error(without_paths(str(e))) from None

    def stop_evaluation(run_id: str) -> str:
        stop = stops.get(run_id)
        if stop is None:
            return "No evaluation of this run is going on."
        stop.set()
        return "Stopping after the questions being answered; what was answered is kept."

    eval_btn.click(evaluate_run, [selected, questions_file], [eval_line, eval_table], api_name="evaluate_run")
    eval_stop.click(stop_evaluation, selected, eval_note, api_name="stop_evaluation")

    return refresh_all, selected, [table, overlay_pick, selected]
