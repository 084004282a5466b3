"""Data tab: upload a file or pick a sample; see its format, size, token lengths, what the
length limit cuts, and the first examples exactly as the model will see them."""

from __future__ import annotations

import html
from pathlib import Path
from dataclasses import dataclass

import gradio as gr

from ft_engine.errors import DataError, UserError
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ft_engine.preview import DataPreview

from .charts import token_length_histogram
from .context import ALLOWED_SUFFIXES, Studio, sample_datasets

DEFAULT_SAMPLE = "zubrowka_facts.jsonl"


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


def summary_markdown(preview: DataPreview, path: str) -> str:
    lengths = sorted(preview.token_lengths)
    median = lengths[len(lengths) // 2] if lengths else 0
    cut = preview.truncated_rows
    lines = [
        f"### ✅ Ready: {preview.rows} rows, format **{preview.format}**",
        f"{preview.description}.",
        f"Tokens per row: median {median}, longest {max(lengths, default=0)}.",
        (f"⚠️ **{cut} row{'s' if cut != 1 else ''} longer than {preview.max_seq_len} tokens** will be cut "
         f"(raise the maximum length to keep them whole)." if cut else
         f"No row is longer than the maximum length ({preview.max_seq_len} tokens)."),
    ]
    if preview.ignored_columns:
        lines.append(f"Columns not used: {', '.join(preview.ignored_columns)}.")
    return "\n\n".join(lines)


def error_markdown(err: UserError) -> str:
    """A readable list of what is wrong, row by row, never a stack trace."""
    if isinstance(err, DataError):
        items = "\n".join(f"- {html.escape(str(p))}" for p in err.problems[:10])
        more = f"\n\n…and {err.total - 10} more." if err.total > 10 else ""
        return (f"### ❌ This file can't be used yet ({err.total} problem{'s' if err.total != 1 else ''})\n\n"
                f"`{html.escape(err.path.rsplit('/', 1)[-1])}`\n\n{items}{more}\n\n"
                f"Fix these rows and upload the file again.")
    return f"### ❌ {html.escape(str(err))}"


def build(studio: Studio, model: gr.Dropdown) -> DataWidgets:
    samples = sample_datasets()
    gr.Markdown("## 1 · Your data\nUpload examples of what the model should learn, or start with a sample. "
                "Accepted: " + ", ".join(ALLOWED_SUFFIXES) + ".")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Upload a data file", file_types=list(ALLOWED_SUFFIXES), type="filepath")
            sample = gr.Dropdown(choices=list(samples), value=DEFAULT_SAMPLE if DEFAULT_SAMPLE in samples else None,
                                 label="…or pick a sample dataset",
                                 info="zubrowka_facts teaches invented facts you can check in Chat afterwards")
            data_format = gr.Dropdown(["auto", "chat", "sharegpt", "alpaca", "prompt_completion", "text"],
                                      value="auto", label="Format",
                                      info="auto detects it from the columns")
            max_seq_len = gr.Slider(32, 4096, value=256, step=32, label="Maximum length (tokens)",
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
        from ft_engine.preview import preview_data  # loads transformers on first use
        try:
            if file:
                path, shown_name = studio.keep_upload(file), Path(file).name
            elif sample_name and sample_name in samples:
                path, shown_name = samples[sample_name], sample_name
            else:
                return "Pick a sample or upload a file first.", None, "", ""
            preview = preview_data(str(path), model=model_id or "bundled", max_seq_len=int(max_len),
                                   train_on_prompt=bool(prompt_too), data_format=fmt or "auto")
        except UserError as e:
            return error_markdown(e), None, "", ""
        # name the file as the user knows it, not as it is stored
        preview.description = preview.description.replace(Path(path).name, shown_name)
        return (summary_markdown(preview, str(path)), token_length_histogram(preview.token_lengths, int(max_len)),
                preview_html(preview), str(path))

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
