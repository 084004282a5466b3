"""What the studio's Data tab shows: the detected format, row count, token lengths, how many
rows the length limit cuts, and the first examples exactly as the model will see them."""

from __future__ import annotations

from dataclasses import dataclass

from .data import load_examples
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


def preview_data(path: str, model: str = "bundled", max_seq_len: int = 512, train_on_prompt: bool = False,
                 data_format: str = "auto", n_examples: int = 3) -> DataPreview:
    """Raises DataError / UserError with the row, field and fix when the file is unusable."""
    data = load_examples(path, data_format)
    tok = load_tokenizer(model)
    lengths = [encode(ex, tok, max_seq_len, train_on_prompt).full_length for ex in data.examples]
    return DataPreview(
        format=data.format, description=data.describe(), rows=len(data.examples), token_lengths=lengths,
        truncated_rows=sum(n > max_seq_len for n in lengths), max_seq_len=max_seq_len,
        examples=[segments(ex, tok, train_on_prompt) for ex in data.examples[:n_examples]],
        ignored_columns=data.ignored_columns,
    )
