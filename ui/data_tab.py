"""Data tab: upload a file or pick a sample; see its format, size, token lengths, what the
length limit cuts, and the first examples exactly as the model will see them."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import gradio as gr

from ft_engine.config import DataFormat
from ft_engine.errors import DataError, UserError
from ft_engine.preview import DataPreview, preview_data

from .charts import token_length_histogram
from .context import ALLOWED_SUFFIXES, Studio, sample_datasets
from .form import check_model_value
from .limits import describe_bytes, max_rows_cap, max_steps_cap, max_upload_bytes

DEFAULT_SAMPLE = "zubrowka_facts.jsonl"
MAX_SEQ_LEN_SLIDER = 4096  # the Maximum length slider's top: the longest the page can ask for


@dataclass
class DataWidgets:
    data_path: gr.Textbox     # the file the next run trains on (server-side path)
    max_seq_len: gr.Slider
    val_fraction: gr.Slider
    train_on_prompt: gr.Checkbox
    data_format: gr.Dropdown


def preview_html(preview: DataPreview) -> str:
    """The first examples with the trained part highlighted and the prompt part greyed."""
    blocks = []
    for i, pieces in enumerate(preview.examples, start=1):
        spans = "".join(
            f'<span class="{"ft-trained" if trained else "ft-prompt"}">{html.escape(text)}</span>'
            for text, trained in pieces)
        blocks.append(f'<div class="ft-example"><div class="ft-example-title">Example {i}</div>'
                      f'<pre>{spans}</pre></div>')
    legend = ('<p class="ft-legend"><span class="ft-trained">highlighted</span> = what the model learns to '
              'write (the loss is computed here) &nbsp; <span class="ft-prompt">grey</span> = the prompt '
              'it reads</p>')
    return legend + "".join(blocks)


def _rows_named(rows: list[int], kind: str, shown: int = 5) -> str:
    """"lines 3, 7 and 9" / "line 4" / "records 1, 2, 3, 4, 5 and 12 more"."""
    head = ", ".join(str(r) for r in rows[:shown])
    if len(rows) > shown:
        return f"{kind}s {head} and {len(rows) - shown} more"
    if len(rows) > 1:
        return f"{kind}s {head.rsplit(', ', 1)[0]} and {rows[len(rows) - 1]}"
    return f"{kind} {head}"


def summary_markdown(preview: DataPreview, path: str, rows_cap: int = 0) -> str:
    lengths = sorted(preview.token_lengths)
    median = lengths[len(lengths) // 2] if lengths else 0
    cut = preview.truncated_rows
    kind = preview.row_kind
    lines = [
        f"### ✅ Ready: {preview.rows} rows, format **{preview.format}**",
        f"{preview.description}.",
        f"Tokens per row: median {median}, longest {max(lengths, default=0)}.",
    ]
    if cut:
        longest = sorted(preview.long_rows, key=lambda r: -r[1])
        named = ", ".join(f"{kind} {row} ({n} tokens)" for row, n in longest[:5])
        lines.append(f"⚠️ **{cut} row{'s' if cut != 1 else ''} longer than {preview.max_seq_len} tokens** will be "
                     f"cut: {named}{f' and {cut - 5} more' if cut > 5 else ''}. "
                     + _longer_advice(preview, [n for _, n in longest]))
    else:
        lines.append(f"No row is longer than the maximum length ({preview.max_seq_len} tokens).")
    if preview.dropped_rows:
        n = len(preview.dropped_rows)
        raise_it = "raise the maximum length or " if preview.max_seq_len < _longest_allowed(preview)[0] else ""
        lines.append(f"⚠️ {_rows_named(preview.dropped_rows, kind)} lose{'s' if n == 1 else ''} the whole answer to "
                     f"the cut and {'is' if n == 1 else 'are'} skipped in training; {raise_it}"
                     f"shorten {'its' if n == 1 else 'their'} prompt{'s' if n != 1 else ''}.")
    if preview.rows_in_file > preview.rows:
        lines.append(f"ℹ️ Demo limit: this studio trains on at most {rows_cap or preview.rows} rows (FT_MAX_ROWS), "
                     f"so runs use the first {preview.rows} of the file's {preview.rows_in_file} rows.")
    if preview.ignored_columns:
        lines.append(f"Columns not used: {', '.join(preview.ignored_columns)}.")
    return "\n\n".join(lines)


def _longest_allowed(preview: DataPreview) -> tuple[int, str]:
    """The longest maximum length worth suggesting, and what sets it: the model's context (the
    positions it was trained on) or the slider's top, whichever is lower."""
    context = preview.context_length
    if context is not None and context <= MAX_SEQ_LEN_SLIDER:
        return context, f"this model's context: it reads at most {context} tokens"
    return MAX_SEQ_LEN_SLIDER, "the most this page allows"


def _longer_advice(preview: DataPreview, lengths: list[int]) -> str:
    """What to do about rows longer than the maximum length, never suggesting more than the
    model can read."""
    most, why = _longest_allowed(preview)
    them = "them" if len(lengths) != 1 else "it"
    rows = "those rows" if len(lengths) != 1 else "that row"
    if max(lengths) <= most:
        return f"Raise the maximum length to {max(lengths)} to keep {them} whole, or shorten {rows}."
    over = sum(n > most for n in lengths)
    if preview.max_seq_len < most:
        return (f"Raise the maximum length to {most} ({why}) to keep more of {them}; {over} "
                f"{'is' if over == 1 else 'are'} longer even so: shorten or split "
                f"{'it' if over == 1 else 'them'}.")
    return f"The maximum length can't go higher ({why}): shorten or split {rows}."


def error_markdown(err: UserError, shown_name: str | None = None, path: str | None = None) -> str:
    """A readable list of what is wrong, row by row, never a stack trace. `path` (the file as
    the server stores it) is shown as `shown_name` (as the user knows it)."""
    if isinstance(err, DataError):
        items = "\n".join(f"- {html.escape(str(p))}" for p in err.problems[:10])
        more = f"\n\n…and {err.total - 10} more." if err.total > 10 else ""
        name = shown_name or err.path.rsplit('/', 1)[-1]
        return (f"### ❌ This file can't be used yet ({err.total} problem{'s' if err.total != 1 else ''})\n\n"
                f"`{html.escape(name)}`\n\n{items}{more}\n\n"
                f"Fix these rows and upload the file again.")
    text = str(err)
    if path and shown_name:
        text = text.replace(path, shown_name)  # never show the server's folders
    return f"### ❌ {html.escape(text)}"


def demo_note() -> str:
    """What demo mode (FT_MAX_ROWS, FT_MAX_STEPS) allows, said up front; empty without caps."""
    caps = [f"the first {n} rows of a file" for n in [max_rows_cap()] if n] + \
           [f"{n} training steps" for n in [max_steps_cap()] if n]
    return f" **Demo mode:** each run uses at most {' and '.join(caps)}." if caps else ""


def build(studio: Studio, model: gr.Dropdown) -> DataWidgets:
    samples = sample_datasets()
    gr.Markdown("## 1 · Your data\nUpload examples of what the model should learn, or start with a sample. "
                "Accepted: " + ", ".join(ALLOWED_SUFFIXES) + f", up to {describe_bytes(max_upload_bytes())}."
                + demo_note())
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Upload a data file", file_types=list(ALLOWED_SUFFIXES), type="filepath")
            sample = gr.Dropdown(choices=list(samples), value=DEFAULT_SAMPLE if DEFAULT_SAMPLE in samples else None,
                                 label="…or pick a sample dataset",
                                 info="zubrowka_facts teaches invented facts you can check in Chat afterwards")
            data_format = gr.Dropdown(list(get_args(DataFormat)),  # RunConfig's own type
                                      value="auto", label="Format",
                                      info="auto detects it from the columns")
            max_seq_len = gr.Slider(32, MAX_SEQ_LEN_SLIDER, value=256, step=32, label="Maximum length (tokens)",
                                    info="Longer rows are cut to this length")
            val_fraction = gr.Slider(0.0, 0.4, value=0.0, step=0.05, label="Held out for validation",
                                     info="Share of rows kept aside to measure an eval loss (0 = none)")
            train_on_prompt = gr.Checkbox(False, label="Also learn the prompts",
                                          info="Off: learn only the answers (recommended)")
            check = gr.Button("Check data", variant="primary")
            data_path = gr.Textbox(label="File used for training", interactive=False)
        with gr.Column(scale=2):
            summary = gr.Markdown("Pick a sample or upload a file to see it here.")
            histogram = gr.Plot(label="Token lengths")
            examples = gr.HTML()

    def validate_data(file: str | None, sample_name: str | None, model_id: str, max_len: float,
                      prompt_too: bool, fmt: str):
        """Check a data file: summary, token-length histogram, preview, and the kept path."""
        if file:
            path, shown_name = Path(file), Path(file).name
        elif sample_name and sample_name in samples:
            path, shown_name = samples[sample_name], sample_name
        else:
            return "Pick a sample or upload a file first.", None, "", ""
        rows_cap = max_rows_cap()
        try:
            if file:
                studio.check_upload(file)  # type and size, before anything is read
            model = check_model_value(model_id or "bundled")
            # loads torch and transformers itself on first use; refuses a length over the model's context
            preview = preview_data(str(path), model=model, max_seq_len=int(max_len), train_on_prompt=bool(prompt_too),
                                   data_format=fmt or "auto", max_rows=rows_cap, refuse_over_context=True)
            if file:  # kept only once it is known to be usable: a bad upload leaves nothing behind
                path = studio.keep_upload(file)
        except UserError as e:
            return error_markdown(e, shown_name, str(path)), None, "", ""
        # name the file as the user knows it, not as it is stored
        preview.description = preview.description.replace(Path(path).name, shown_name)
        return (summary_markdown(preview, str(path), rows_cap),
                token_length_histogram(preview.token_lengths, int(max_len)), preview_html(preview), str(path))

    inputs = [upload, sample, model, max_seq_len, train_on_prompt, data_format]
    outputs = [summary, histogram, examples, data_path]
    check.click(validate_data, inputs, outputs, api_name="validate_data")
    # an upload replaces the sample choice, so it is clear which file will be used
    upload.upload(lambda *v: (*validate_data(*v), None), inputs, outputs + [sample], api_visibility="private")
    # choosing a sample means "use this sample", even if a file was uploaded before
    sample.input(lambda *v: validate_data(None, *v[1:]), inputs, outputs, api_visibility="private")
    max_seq_len.release(validate_data, inputs, outputs, api_visibility="private")
    train_on_prompt.input(validate_data, inputs, outputs, api_visibility="private")
    data_format.input(validate_data, inputs, outputs, api_visibility="private")
    return DataWidgets(data_path, max_seq_len, val_fraction, train_on_prompt, data_format)
