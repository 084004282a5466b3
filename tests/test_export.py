"""A merged QLoRA export is the model that was trained: the adapter folded onto the
dequantized 4-bit base (the weights it learned its correction to), saved in the compute
dtype, answering as the adapter on the 4-bit base does in the studio's chat."""

import json

import pytest
import torch
from conftest import QA, write_jsonl

from ft_engine.config import RunConfig
from ft_engine.export import _dequantized, _trained_compute_dtype, export_merged
from ft_engine.inference import ChatModel
from ft_engine.models import bnb_config, load_base_model, resolve_compute_dtype
from ft_engine.rundir import Status
from ft_engine.training import train

# 40 steps at 1e-2 make the tiny model answer every QA pair word for word (so the adapter
# matters and greedy answers are far from ties); 3e-2 and up diverge on it (loss stuck ≈ 5.6).
STEPS, LR = 40, 1e-2
NEW_TOKENS = 16
# Mean |Δlogit| from the adapter on the 4-bit base (the chat), measured on the 4 QA prompts
# with bf16 compute (2026-12-02): merged onto the dequantized base 0.0012-0.0017 (bf16 rounding:
# the chat's fused CPU kernel rounds the block scales to bf16, the merge rounds W + B·A);
# merged onto the fp32 original, as the export used to, 0.011-0.013 (NF4's own error).
CLOSE = 0.005
FARTHER = 3  # the fp32-original merge must sit at least this many times farther (measured ~7x)


@pytest.fixture(scope="module")
def qlora_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora-export")
    data = write_jsonl(root / "chat.jsonl", [{"messages": [{"role": "user", "content": q},
                                                          {"role": "assistant", "content": a}]} for q, a in QA])
    cfg = RunConfig(model=tiny_model, data=str(data), method="qlora", runs_dir=str(root / "runs"), batch_size=4,
                    max_steps=STEPS, learning_rate=LR, warmup_ratio=0.0, scheduler="constant",
                    checkpoint_steps=0, lora_dropout=0.0)
    run, status = train(cfg)
    assert status == Status.COMPLETED
    return run, export_merged(run, root / "merged")


def _greedy(model, tokenizer, prompt: str) -> str:
    """The reply as ChatModel.generate builds it: chat template, greedy, special tokens dropped."""
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, temperature=None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _logits(model, tokenizer, prompt: str) -> torch.Tensor:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():  # as in chat: bitsandbytes' eval-mode path
        return model(**inputs).logits.float()


def test_merged_qlora_answers_as_the_adapter_on_the_4bit_base(qlora_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = qlora_run
    chat = ChatModel(run)  # the adapter on the 4-bit base, as the studio chats with it
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # as saved: the compute dtype
    # what the export used to write: the adapter merged onto the fp32 original weights
    old = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                    str(run.path / "adapter")).merge_and_unload().eval()
    tok = chat.tokenizer
    for q, a in QA:
        ref = _logits(chat.model, tok, q)
        with chat.model.disable_adapter():
            untuned = _logits(chat.model, tok, q)
        new_gap = (_logits(merged, tok, q) - ref).abs().mean().item()
        old_gap = (_logits(old, tok, q) - ref).abs().mean().item()
        assert (untuned - ref).abs().mean().item() > 20 * CLOSE, "the adapter had no effect; the test proves nothing"
        assert new_gap < CLOSE, (q, new_gap)
        assert FARTHER * new_gap < old_gap, (q, new_gap, old_gap)
        reply = chat.generate(q, max_new_tokens=NEW_TOKENS)
        assert reply == _greedy(merged, tok, q), q
        assert reply.startswith(a[:10]), reply  # really the trained answer, not a tie among noise


def test_merged_qlora_is_saved_in_the_compute_dtype_and_says_so(qlora_run):
    from safetensors import safe_open

    run, out = qlora_run
    config = run.read_config()
    dtype = resolve_compute_dtype(config)
    name = str(dtype).removeprefix("torch.")
    saved = json.loads((out / "config.json").read_text())
    assert saved["dtype"] == name and "quantization_config" not in saved
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {{"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[name]}, dtypes
    readme = (out / "README.md").read_text()
    assert f"dequantized NF4 base in {name}" in readme and "not the original full-precision weights" in readme
    assert run.run_id in readme and config.model not in readme  # a local path stays private


def test_dequantized_weights_are_those_the_4bit_forward_multiplies_with(tiny_model):
    import bitsandbytes as bnb

    config = RunConfig(model=tiny_model, method="qlora")
    dtype = resolve_compute_dtype(config)
    model = load_base_model(config, dtype, quantization=bnb_config(config))
    model.train()  # the training forward (eval mode on CPU repacks the weights, see _dequantized)
    used = {}
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            with torch.no_grad():  # x·Wᵀ with x = I is Wᵀ exactly: one nonzero product per sum
                used[name] = m(torch.eye(m.in_features, dtype=dtype)).T.clone()
    assert len(used) == 14  # 7 projections × 2 layers
    model = _dequantized(model, dtype)
    assert "quantization_config" not in model.config.to_dict()
    for name, m in model.named_modules():
        assert not isinstance(m, bnb.nn.Linear4bit), name
        if name in used:
            assert type(m) is torch.nn.Linear and m.weight.dtype == dtype
            assert torch.equal(m.weight, used[name]), name


def test_a_repacked_4bit_model_is_refused(tiny_model):
    config = RunConfig(model=tiny_model, method="qlora")
    dtype = resolve_compute_dtype(config)
    model = load_base_model(config, dtype, quantization=bnb_config(config)).eval()
    if not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules()):
        pytest.skip("bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16")
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]))
    with pytest.raises(RuntimeError, match="freshly loaded"):
        _dequantized(model, dtype)


def test_the_compute_dtype_is_the_one_the_run_trained_in(tiny_model):
    class Run:  # trained in fp16 on a GPU, exported on a machine where `auto` means otherwise
        def read_status(self):
            return {"precision": "fp16"}

    assert _trained_compute_dtype(Run(), RunConfig(model=tiny_model, method="qlora")) == "float16"
    assert _trained_compute_dtype(Run(), RunConfig(model=tiny_model, method="qlora",
                                                    compute_dtype="bfloat16")) == "bfloat16"


def test_the_export_stops_where_the_studios_chat_stops(qlora_run):
    """generation_config.json lists the template's end of turn (<|im_end|> for the tiny ChatML
    tokenizer), so a plain generate() on the export ends its answers there, as chat does."""
    from ft_engine.inference import stop_token_ids
    from ft_engine.models import load_tokenizer
    from ft_engine.render import end_of_turn_id
    run, out = qlora_run
    tok = load_tokenizer(str(out))
    saved = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert end_of_turn_id(tok) is not None and end_of_turn_id(tok) in saved
    assert sorted(saved) == stop_token_ids(tok)
