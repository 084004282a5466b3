"""Rendering with the chat template, loss masks, truncation and padding."""

import copy

import pytest

from ft_engine.data import Example, load_examples
from ft_engine.errors import UserError
from ft_engine.models import load_tokenizer
from ft_engine.render import IGNORE_INDEX, PadToLongest, encode, encode_all, end_of_turn_id


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


# --- base models: the ChatML fallback ends every turn with the tokenizer's EOS (issue 10) -------

# The fallback as it was: <|im_end|> is plain text to a base model, so a tuned model ended its
# answers with "<|", "im", ... and generation ran on to max_new_tokens.
OLD_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MULTI_TURN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Two plus two?"},
              {"role": "assistant", "content": "Four."}]


def base_tokenizer(tmp_path_factory, **kw):
    from tiny_model import make_base_tokenizer
    folder = tmp_path_factory.mktemp("base_tok")
    make_base_tokenizer(**kw).save_pretrained(folder)
    return load_tokenizer(str(folder))


@pytest.fixture(scope="module", params=[True, False], ids=["bos", "no_bos"])
def base_tok(request, tmp_path_factory):
    return base_tokenizer(tmp_path_factory, bos=request.param)


def trained_runs(row):
    """The trained tokens as contiguous runs (one per assistant turn)."""
    runs, current = [], []
    for tok_id, label in zip(row.input_ids, row.labels):
        if label != IGNORE_INDEX:
            current.append(tok_id)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_fallback_starts_with_one_bos_and_trains_eos_after_every_answer(base_tok):
    tok = base_tok
    assert tok.eos_token == "</s>" and "<|im_end|>" not in tok.get_vocab()
    if tok.bos_token is not None:
        assert tok("x").input_ids[0] == tok.bos_token_id  # the tokenizer adds BOS itself, like Llama's
    row = encode(Example(1, MULTI_TURN, None), tok, 512)
    expected_bos = [tok.bos_token_id] if tok.bos_token is not None else []
    assert [t for t in row.input_ids if t == tok.bos_token_id] == expected_bos
    assert row.input_ids[:len(expected_bos)] == expected_bos
    runs = trained_runs(row)
    assert len(runs) == 2 and all(run[-1] == tok.eos_token_id for run in runs)
    assert trained_text(tok, row) == "Hello.</s>Four.</s>"
    assert tok.decode(row.input_ids) == tok.apply_chat_template(MULTI_TURN, tokenize=False)
    # training on the prompt too keeps the single BOS
    whole = encode(Example(1, MULTI_TURN, None), tok, 512, train_on_prompt=True)
    assert whole.labels == whole.input_ids == row.input_ids
    # what chat feeds generate(): the same single BOS, then the prompt up to the assistant's turn
    prompt = tok.apply_chat_template(MULTI_TURN[:2], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert prompt == row.input_ids[:len(prompt)]
    assert end_of_turn_id(tok) == tok.eos_token_id


def test_old_fallback_ended_turns_with_text_the_model_cannot_stop_on(base_tok):
    tok = copy.copy(base_tok)
    tok.chat_template = OLD_CHATML
    row = encode(Example(1, MULTI_TURN[1:3], None), tok, 512)
    assert trained_runs(row)[0][-1] != tok.eos_token_id  # the answer ended in "<|im_end|>" as text
    assert tok.eos_token_id not in row.input_ids and end_of_turn_id(tok) is None


def test_every_format_ends_its_answer_with_eos_on_a_base_model(base_tok, data_files):
    for fmt in ("chat", "sharegpt", "alpaca", "prompt_completion", "text"):
        for row in encode_all(load_examples(data_files[fmt]), base_tok, 512).rows:
            assert trained_runs(row)[-1][-1] == base_tok.eos_token_id, fmt


def test_base_tokenizer_without_eos_is_refused_with_the_fix(tmp_path_factory):
    with pytest.raises(UserError, match="has no chat template and its tokenizer has no eos_token.*"
                                        "set \"eos_token\" in its tokenizer_config.json"):
        base_tokenizer(tmp_path_factory, eos=False)


def test_generation_stops_on_config_eos_tokenizer_eos_and_template_end_of_turn(tok, base_tok):
    from transformers import GenerationConfig

    from ft_engine.inference import stop_token_ids
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end  # a real ChatML template: its own end-of-turn token
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=[7, im_end])) == sorted({7, im_end})
    assert stop_token_ids(base_tok, GenerationConfig(eos_token_id=None)) == [base_tok.eos_token_id]
    assert stop_token_ids(base_tok) == [base_tok.eos_token_id]
