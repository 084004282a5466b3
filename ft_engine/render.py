"""From normalized examples to token ids and labels, exactly as the model will see them.

Every chat-like format is rendered with the tokenizer's own chat template. Loss is computed
only on assistant turns (the end-of-turn token included, so the model learns to stop) unless
`train_on_prompt` is set. Label -100 marks tokens the loss ignores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data import Example, LoadedData
from .errors import UserError

IGNORE_INDEX = -100


@dataclass
class Rendered:
    """A rendered example: the full text and the character spans the loss is computed on."""

    text: str
    trained_spans: list[tuple[int, int]]


@dataclass
class EncodedRow:
    row: int
    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class EncodedData:
    rows: list[EncodedRow]
    max_seq_len: int
    dropped_rows: list[int] = field(default_factory=list)  # nothing left to train after the cut

    @property
    def truncated_count(self) -> int:
        return sum(r.truncated for r in self.rows) + len(self.dropped_rows)

    def summary(self) -> dict:
        lengths = [r.full_length for r in self.rows]
        return {
            "rows": len(self.rows),
            "truncated_rows": self.truncated_count,
            "dropped_rows": len(self.dropped_rows),
            "max_seq_len": self.max_seq_len,
            "tokens": sum(len(r.input_ids) for r in self.rows),
            "trained_tokens": sum(r.trained_tokens for r in self.rows),
            "longest_row_tokens": max(lengths, default=0),
            "mean_row_tokens": round(sum(lengths) / len(lengths), 1) if lengths else 0,
        }


def _template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render(example: Example, tokenizer, train_on_prompt: bool = False) -> Rendered:
    """Text plus trained spans. For chat: span of assistant turn i = the characters that
    render(messages[:i+1]) adds after render(messages[:i], add_generation_prompt=True)."""
    if example.text is not None:
        text = example.text + (tokenizer.eos_token or "")
        return Rendered(text, [(0, len(text))])
    messages = example.messages or []
    full = _template(tokenizer, messages, add_generation_prompt=False)
    if train_on_prompt:
        return Rendered(full, [(0, len(full))])
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = _template(tokenizer, messages[:i], add_generation_prompt=True)
        through = _template(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(prefix) and full.startswith(through)):
            raise UserError("this model's chat template does not render conversations turn by turn, "
                            "so assistant tokens cannot be located; set train_on_prompt=true")
        spans.append((len(prefix), len(through)))
    return Rendered(full, spans)


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with, which is what a model
    tuned on that template learns to emit last: <|eot_id|> for Llama 3, <|im_end|> for ChatML
    models, EOS for models.CHATML_TEMPLATE. None when the turn ends in plain text only (no
    special token), or the template does not render turn by turn.

    Found from a probe conversation, the way `render` finds assistant spans: the first special
    token after the answer in what the assistant turn adds."""
    answer = "Hi"
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": answer}]
    prefix = _template(tokenizer, messages[:1], add_generation_prompt=True)
    through = _template(tokenizer, messages, add_generation_prompt=False)
    turn = through[len(prefix):] if through.startswith(prefix) else ""
    if answer not in turn:
        return None
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    tail = turn.split(answer, 1)[1]
    return next((i for i in tokenizer(tail, add_special_tokens=False)["input_ids"] if i in special), None)


def encode(example: Example, tokenizer, max_seq_len: int, train_on_prompt: bool = False) -> EncodedRow:
    rendered = render(example, tokenizer, train_on_prompt)
    # Templates already contain BOS and friends; plain text gets the tokenizer's own specials.
    enc = tokenizer(rendered.text, add_special_tokens=example.text is not None,
                    return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [
        tok if any(max(s, a) < min(e, b) for a, b in rendered.trained_spans) else IGNORE_INDEX
        for tok, (s, e) in zip(ids, offsets)
    ]
    return EncodedRow(example.row, ids[:max_seq_len], labels[:max_seq_len], len(ids))


def encode_all(data: LoadedData, tokenizer, max_seq_len: int, train_on_prompt: bool = False) -> EncodedData:
    """Encode every example; rows left with no trained token by truncation are dropped and
    counted. Raises UserError if none survive."""
    kept, dropped = [], []
    for ex in data.examples:
        row = encode(ex, tokenizer, max_seq_len, train_on_prompt)
        (kept if row.trained_tokens > 0 else dropped).append(row)
    if not kept:
        longest = max((r.full_length for r in dropped), default=0)
        raise UserError(f"{data.path}: every row lost its answer to the {max_seq_len}-token limit "
                        f"(longest row: {longest} tokens); raise max_seq_len or shorten the prompts")
    return EncodedData(kept, max_seq_len, [r.row for r in dropped])


class PadToLongest:
    """Pads each batch to its own longest row (never to max_seq_len): padding costs compute
    and, on a GPU, memory for nothing."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            n = len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * (width - n))
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * (width - n))
            mask.append([1] * n + [0] * (width - n))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}


def segments(example: Example, tokenizer, train_on_prompt: bool = False) -> list[tuple[str, bool]]:
    """The rendered text cut into (piece, trained) parts, for showing which part the loss sees."""
    rendered = render(example, tokenizer, train_on_prompt)
    parts, pos = [], 0
    for a, b in sorted(rendered.trained_spans):
        if a > pos:
            parts.append((rendered.text[pos:a], False))
        parts.append((rendered.text[a:b], True))
        pos = b
    if pos < len(rendered.text):
        parts.append((rendered.text[pos:], False))
    return parts
