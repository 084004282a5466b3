"""Rendering with the chat template, loss masks, truncation and padding."""

import pytest

from ft_engine.data import Example, load_examples
from ft_engine.errors import UserError
from ft_engine.models import load_tokenizer
from ft_engine.render import IGNORE_INDEX, PadToLongest, encode, encode_all


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(tiny_model)


def trained_text(tok, row):
    return tok.decode([t for t, lab in zip(row.input_ids, row.labels) if lab != IGNORE_INDEX])


def prompt_text(tok, row):
    return tok.decode([t for t, lab in zip(row.input_ids, row.labels) if lab == IGNORE_INDEX])


def test_only_assistant_turns_are_trained(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Two plus two?"},
            {"role": "assistant", "content": "Four."}]
    row = encode(Example(row=1, messages=msgs, text=None), tok, max_seq_len=512)
    assert trained_text(tok, row) == "Hello.<|im_end|>\nFour.<|im_end|>\n"
    prompt = prompt_text(tok, row)
    assert "Be brief." in prompt and "Hi?" in prompt and "Two plus two?" in prompt
    assert "Hello" not in prompt and "Four" not in prompt
    # the whole sequence is exactly the chat template's rendering
    assert tok.decode(row.input_ids) == tok.apply_chat_template(msgs, tokenize=False)


def test_train_on_prompt_trains_everything(tok):
    msgs = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    row = encode(Example(1, msgs, None), tok, 512, train_on_prompt=True)
    assert row.labels == row.input_ids


def test_plain_text_is_trained_whole_with_eos(tok):
    row = encode(Example(1, None, "Plants turn light into sugar."), tok, 512)
    assert row.labels == row.input_ids
    assert tok.decode(row.input_ids).endswith("sugar.<|im_end|>")


@pytest.mark.parametrize("fmt", ["chat", "sharegpt", "alpaca", "prompt_completion", "parquet", "text"])
def test_every_format_renders_with_prompt_masked(tok, data_files, fmt):
    data = load_examples(data_files[fmt])
    enc = encode_all(data, tok, 512)
    assert len(enc.rows) == 4 and enc.truncated_count == 0
    first = enc.rows[0]
    if fmt == "text":
        assert trained_text(tok, first).startswith("What is the capital of Zubrowka?")
    else:
        assert trained_text(tok, first) == "The capital of Zubrowka is Lutz.<|im_end|>\n"
        assert "What is the capital of Zubrowka?" in prompt_text(tok, first)


def test_truncation_is_counted_and_empty_rows_dropped(tok):
    long_prompt = "word " * 200
    rows = [Example(1, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello " * 50}], None),
            Example(2, [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "Ok."}], None),
            Example(3, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}], None)]
    from ft_engine.data import LoadedData
    enc = encode_all(LoadedData("x.jsonl", ".jsonl", "chat", rows, []), tok, max_seq_len=40)
    assert [r.row for r in enc.rows] == [1, 3]
    assert enc.dropped_rows == [2]  # its answer lies entirely past token 40
    assert enc.truncated_count == 2
    assert all(len(r.input_ids) <= 40 for r in enc.rows)
    assert enc.summary()["truncated_rows"] == 2
    with pytest.raises(UserError, match="every row lost its answer to the 40-token limit"):
        encode_all(LoadedData("x.jsonl", ".jsonl", "chat", rows[1:2], []), tok, max_seq_len=40)


def test_batches_pad_to_their_own_longest_row():
    collate = PadToLongest(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
