"""What the studio's Data tab shows: the detected format, row count, token lengths, which
rows the length limit cuts, and the first examples exactly as the model will see them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .data import load_examples
from .errors import UserError
from .models import load_tokenizer
from .render import encode, segments


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


def preview_data(path: str, model: str = "bundled", max_seq_len: int = 512, train_on_prompt: bool = False,
                 data_format: str = "auto", n_examples: int = 3, max_rows: int = 0) -> DataPreview:
    """Raises DataError / UserError with the row, field and fix when the file is unusable,
    including when the length limit leaves no row with an answer to train on (as training would).
    max_rows > 0 keeps only the first rows, as RunConfig.max_rows does in training."""
    data = load_examples(path, data_format)
    rows_in_file = len(data.examples)
    if max_rows > 0:
        data.examples = data.examples[:max_rows]
    tok = load_tokenizer(model)
    encoded = [encode(ex, tok, max_seq_len, train_on_prompt) for ex in data.examples]
    lengths = [r.full_length for r in encoded]
    kind = "line" if data.file_type in (".jsonl", ".csv", ".txt") else "record"
    dropped = [r.row for r in encoded if r.trained_tokens == 0]
    if encoded and len(dropped) == len(encoded):
        longest = max(encoded, key=lambda r: r.full_length)
        raise UserError(f"{path}: every row loses its whole answer to the max_seq_len limit of {max_seq_len} "
                        f"tokens (longest: {kind} {longest.row}, {longest.full_length} tokens), so nothing "
                        f"is left to train; raise max_seq_len or shorten the prompts")
    return DataPreview(
        format=data.format, description=data.describe(), rows=len(data.examples), token_lengths=lengths,
        truncated_rows=sum(n > max_seq_len for n in lengths), max_seq_len=max_seq_len,
        examples=[segments(ex, tok, train_on_prompt) for ex in data.examples[:n_examples]],
        ignored_columns=data.ignored_columns, row_kind=kind,
        long_rows=[(r.row, r.full_length) for r in encoded if r.full_length > max_seq_len],
        dropped_rows=dropped, rows_in_file=rows_in_file,
    )
