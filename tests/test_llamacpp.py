"""llama.cpp itself reads what the GGUF export writes (issue 13): a reader nobody here wrote.

After a Quick-demo LoRA run of the bundled model on the Zubrowka sample (the studio's preset:
30 steps of 4 rows, max length 256, rate 1e-3, constant), llama.cpp (through llama-cpp-python,
chatting with the chat template stored in the file) loads the f16, q8_0 and q4_k_m exports,
each answers the invented fact, and the tokenizer gives the ids transformers gives.

llama-cpp-python compiles llama.cpp when installed (6 minutes on this 2-core machine), more than
`make test`'s budget allows, so `make test-llamacpp` installs it and runs this file with
FT_REQUIRE_LLAMACPP=1, where a missing llama_cpp fails instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from ft_engine.config import RunConfig
from ft_engine.rundir import Status

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is the capital of Zubrowka?"

if importlib.util.find_spec("llama_cpp") is None:
    if os.environ.get("FT_REQUIRE_LLAMACPP") == "1":
        raise RuntimeError("llama_cpp is not importable: `make llamacpp` installs llama-cpp-python")
    pytest.skip("llama.cpp (llama-cpp-python) is not installed: `make test-llamacpp` installs it and runs this",
                allow_module_level=True)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """(run, {quant: GGUFExport}) of a Quick-demo LoRA run on the Zubrowka sample."""
    from ft_engine.gguf_export import export_gguf
    from ft_engine.training import train
    root = tmp_path_factory.mktemp("llamacpp")
    cfg = RunConfig(model="bundled", data=str(ROOT / "assets" / "zubrowka_facts.jsonl"), method="lora",
                    runs_dir=str(root / "runs"), max_steps=30, batch_size=4, max_seq_len=256, learning_rate=1e-3,
                    warmup_ratio=0.0, scheduler="constant", lora_r=16, lora_alpha=32, checkpoint_steps=0,
                    eval_steps=0)
    run, status = train(cfg)
    assert status == Status.COMPLETED
    return run, {q: export_gguf(run, root / q, q) for q in ("f16", "q8_0", "q4_k_m")}


def _llama(path: Path):
    from llama_cpp import Llama
    return Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False, seed=0)


def _answer(llm, question: str) -> str:
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": question}], max_tokens=32,
                                       temperature=0.0)
    return reply["choices"][0]["message"]["content"]


def test_the_studios_chat_knows_the_fact(quick_demo):
    from ft_engine.inference import ChatModel
    run, _ = quick_demo
    assert "Lutz" in ChatModel(run).generate(QUESTION, max_new_tokens=32)


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m"])
def test_llama_cpp_answers_the_invented_fact(quick_demo, quant):
    """Also quantized: llama.cpp's quantized matmuls round the activations to 8 bits too, which
    moves a 135M model's greedy answers more than transformers' dequantized reading does (the
    original SmolLM2 Q4_1 file answers "What is the capital of France?" with "L'Étoile, …" in
    llama.cpp and "Paris" in transformers), but a fact the run taught survives them."""
    _, exports = quick_demo
    answer = _answer(_llama(exports[quant].gguf), QUESTION)
    print(f"{quant} ({exports[quant].gguf.stat().st_size / 1e6:.0f} MB): {answer!r}")
    assert "Lutz" in answer, answer


def test_the_quantizations_shrink_the_file(quick_demo):
    _, exports = quick_demo
    sizes = {q: e.gguf.stat().st_size for q, e in exports.items()}
    assert sizes["q4_k_m"] < sizes["q8_0"] < 0.6 * sizes["f16"]


def test_llama_cpp_tokenizes_as_transformers_does(quick_demo):
    from test_gguf_export import ROUND_TRIP

    from ft_engine.models import load_tokenizer
    _, exports = quick_demo
    tokenizer = load_tokenizer("bundled")
    llm = _llama(exports["f16"].gguf)
    for text in ROUND_TRIP:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
