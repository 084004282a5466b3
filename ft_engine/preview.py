"""What the studio's Data tab shows: the detected format, row count, token lengths, which
rows the length limit cuts, and the first examples exactly as the model will see them.

Light to import: the tokenizer's modules (models.py, render.py import torch and transformers)
are imported by preview_data, after stack.load(), so it can be called from any thread."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import stack
from .data import Example, first_rows, load_examples
from .errors import UserError

# The examples go to the browser whole, so one 10 MB field would be 10 MB of HTML at every
# check. Each field (a message, a document) is shown up to PREVIEW_FIELD_CHARS characters, then
# its length; each example, however many messages it holds, up to PREVIEW_EXAMPLE_CHARS. Both
# are a few screens of the Data tab's preview box: enough to see the format and the template.
PREVIEW_FIELD_CHARS = 2_000
PREVIEW_EXAMPLE_CHARS = 8_000


@dataclass
class DataPreview:
    format: str
    description: str
    rows: int
    token_lengths: list[int]   # per row, before truncation
    truncated_rows: int        # rows longer than max_seq_len
    max_seq_len: int
    examples: list[list[tuple[str, bool]]]  # first rows as (text, trained) pieces
    ignored_columns: list[str]
    row_kind: str = "line"     # what row numbers count: "line" (jsonl, csv, txt) or "record"
    long_rows: list[tuple[int, int]] = field(default_factory=list)  # (row number, tokens) over max_seq_len
    dropped_rows: list[int] = field(default_factory=list)  # rows the cut leaves with no answer: skipped
    rows_in_file: int = 0      # before max_rows; more than `rows` when the rows were capped
    context_length: int | None = None  # the most tokens the model reads (max_position_embeddings), if known


def preview_data(path: str, model: str = "bundled", max_seq_len: int = 512, train_on_prompt: bool = False,
                 data_format: str = "auto", n_examples: int = 3, max_rows: int = 0,
                 refuse_over_context: bool = False) -> DataPreview:
    """Raises DataError / UserError with the row, field and fix when the file is unusable,
    including when the length limit leaves no row with an answer to train on (as training would).
    max_rows > 0 keeps only the first rows, as training does (data.first_rows).
    refuse_over_context: a max_seq_len over the model's context is refused (ConfigError) before
    the file is read, as training refuses it (models.check_max_seq_len)."""
    stack.load()  # the tokenizer: torch and transformers, loaded once, one thread at a time (stack.py)
    from .models import check_max_seq_len, context_length, load_tokenizer
    from .render import encode, segments
    if refuse_over_context:
        check_max_seq_len(model, max_seq_len)
    data = load_examples(path, data_format)
    rows_in_file = len(data.examples)
    data = first_rows(data, max_rows)
    tok = load_tokenizer(model)
    encoded = [encode(ex, tok, max_seq_len, train_on_prompt) for ex in data.examples]
    lengths = [r.full_length for r in encoded]
    kind = "line" if data.file_type in (".jsonl", ".csv", ".txt") else "record"
    dropped = [r.row for r in encoded if r.trained_tokens == 0]
    context = context_length(model)
    if encoded and len(dropped) == len(encoded):
        longest = max(encoded, key=lambda r: r.full_length)
        fix = ("raise max_seq_len or shorten the prompts" if context is None or max_seq_len < context else
               f"shorten the prompts (max_seq_len is already this model's context, {context} tokens)")
        raise UserError(f"{path}: every row loses its whole answer to the max_seq_len limit of {max_seq_len} "
                        f"tokens (longest: {kind} {longest.row}, {longest.full_length} tokens), so nothing "
                        f"is left to train; {fix}")
    return DataPreview(
        format=data.format, description=data.describe(), rows=len(data.examples), token_lengths=lengths,
        truncated_rows=sum(n > max_seq_len for n in lengths), max_seq_len=max_seq_len,
        examples=[_capped(segments(_shortened(ex), tok, train_on_prompt)) for ex in data.examples[:n_examples]],
        ignored_columns=data.ignored_columns, row_kind=kind,
        long_rows=[(r.row, r.full_length) for r in encoded if r.full_length > max_seq_len],
        dropped_rows=dropped, rows_in_file=rows_in_file, context_length=context,
    )


def _cut(text: str) -> str:
    """`text`, or its start and its length when longer than PREVIEW_FIELD_CHARS."""
    if len(text) <= PREVIEW_FIELD_CHARS:
        return text
    return f"{text[:PREVIEW_FIELD_CHARS]}… ({len(text):,} characters)"


def _shortened(ex: Example) -> Example:
    """The example with every long field cut (_cut), rendered for the preview only: the token
    counts come from the whole row."""
    return dataclasses.replace(
        ex, text=_cut(ex.text) if ex.text is not None else None,
        messages=[{**m, "content": _cut(m["content"])} for m in ex.messages] if ex.messages else ex.messages)


def _capped(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """The first PREVIEW_EXAMPLE_CHARS characters of an example's pieces, and how many more there are."""
    total = sum(len(text) for text, _ in pieces)
    if total <= PREVIEW_EXAMPLE_CHARS:
        return pieces
    out, room = [], PREVIEW_EXAMPLE_CHARS
    for text, trained in pieces:
        if room <= 0:
            break
        out.append((text[:room], trained))
        room -= len(text)
    return out + [(f"… ({total - PREVIEW_EXAMPLE_CHARS:,} more characters in this row)", False)]
