"""Training end to end on a tiny random Llama: every method learns, LoRA/QLoRA leave the
base untouched, stop / resume / failures end in the right status, files hold their fields."""

import json
import threading
import time

import pytest
import torch
from conftest import wait_until

from ft_engine.config import RunConfig
from ft_engine.data import load_examples
from ft_engine.export import export_merged
from ft_engine.inference import ChatModel
from ft_engine.models import build_model, load_tokenizer
from ft_engine.render import PadToLongest, encode_all
from ft_engine.rundir import Status
from ft_engine.training import TrainingJob, resume, train

LR = {"full": 3e-3, "lora": 1e-2, "qlora": 1e-2}


def cfg_for(tiny_model, data, runs_dir, method="lora", **kw):
    base = dict(model=tiny_model, data=str(data), method=method, runs_dir=str(runs_dir), batch_size=4,
                max_steps=12, learning_rate=LR[method], warmup_ratio=0.0, scheduler="constant",
                checkpoint_steps=0, lora_dropout=0.0)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_loss_falls_on_a_repeated_batch(tiny_model, chat_file, runs_dir, method):
    run, status = train(cfg_for(tiny_model, chat_file, runs_dir, method, max_steps=16))
    assert status == Status.COMPLETED
    losses = [r["loss"] for r in run.read_metrics() if "loss" in r]
    assert len(losses) == 16
    # ln(vocab) ≈ 6.0 at the start; measured ends: full ≈ 2.5, lora/qlora ≈ 4.8
    # both must hold: the end is well below the start, and the last quarter is lower than the
    # first (one lucky last step cannot pass it)
    assert losses[-1] < 0.85 * losses[0], losses
    assert max(losses[-4:]) < min(losses[:4]), losses
    result = run.path / ("model" if method == "full" else "adapter")
    assert (result / "tokenizer_config.json").is_file()
    if method == "full":
        assert (result / "model.safetensors").is_file()
    else:
        assert (result / "adapter_model.safetensors").is_file()
        assert json.loads((result / "adapter_config.json").read_text())["r"] == 16


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_leave_base_weights_bit_identical(tiny_model, chat_file, tmp_path, method):
    cfg = cfg_for(tiny_model, chat_file, tmp_path, method)
    model, info = build_model(cfg)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable and all("lora_" in n for n in trainable)
    assert info.trainable_params == sum(p.numel() for p in trainable.values())
    tok = load_tokenizer(tiny_model)
    enc = encode_all(load_examples(chat_file), tok, 128)
    batch = PadToLongest(tok.pad_token_id)([{"input_ids": r.input_ids, "labels": r.labels} for r in enc.rows])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    # train mode, as the Trainer sets it: in eval mode bitsandbytes repacks 4-bit weights into
    # its AVX512-BF16 layout on CPUs that have it (same values, different bytes)
    model.train()
    for _ in range(3):
        # as the engine runs it: under bf16 autocast where the CPU has bf16 (the base is bf16 then)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=info.precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(after[name].detach(), before), f"{name} changed"
    assert any(not torch.equal(after[n].detach(), t) for n, t in trainable.items())
    if method == "qlora":
        assert any(p.dtype == torch.uint8 for p in frozen.values())  # really 4-bit packed


def test_status_and_metrics_have_the_documented_fields(tiny_model, data_files, runs_dir):
    cfg = cfg_for(tiny_model, data_files["chat"], runs_dir, max_steps=4, val_fraction=0.25,
                  eval_steps=2, checkpoint_steps=2, run_name="fields check")
    run, status = train(cfg)
    assert status == Status.COMPLETED
    assert run.run_id.split("-")[2:4] == ["fields", "check"]
    s = run.read_status()
    for key in ("status", "step", "total_steps", "started_at", "ended_at", "error", "method", "model",
                "final_loss", "final_eval_loss", "mem_peak_mib", "trainable_params", "total_params"):
        assert key in s, key
    assert s["status"] == "completed" and s["step"] == s["total_steps"] == 4 and s["error"] is None
    rows = run.read_metrics()
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    for r in train_rows:
        for key in ("epoch", "learning_rate", "grad_norm", "tokens_per_second", "elapsed_s",
                    "mem_used_mib", "mem_peak_mib"):
            assert key in r and r[key] is not None, key
        assert r["tokens_per_second"] > 0 and r["mem_peak_mib"] >= r["mem_used_mib"] > 0
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 4]  # every 2 steps, plus the final evaluation
    # tokens counted are real tokens: 3 train rows per step, no padding
    data = run.read_json("data.json")
    assert data["format"] == "chat" and data["train_rows"] == 3 and data["val_rows"] == 1
    assert train_rows[0]["tokens_seen"] < 3 * data["longest_row_tokens"]
    assert (run.path / "config.yaml").is_file()
    assert RunConfig.from_yaml(run.path / "config.yaml") == cfg
    assert [c.name for c in run.checkpoints] == ["checkpoint-2", "checkpoint-4"]
    # the memory forecast sits beside the measured peak: in status.json and in every row
    assert s["forecast_error"] is None and s["forecast_device"] == s["mem_device"] == "cpu"
    assert s["forecast_seq_len"] == data["longest_row_tokens"] <= cfg.max_seq_len
    assert s["forecast_mib"] == pytest.approx(sum(s["forecast_components_mib"].values()), abs=1)
    assert all(r["mem_forecast_mib"] == s["forecast_mib"] for r in rows)
    assert s["forecast_error_pct"] == pytest.approx(100 * (s["forecast_mib"] - s["mem_peak_mib"])
                                                    / s["mem_peak_mib"], abs=0.1)


def test_stop_ends_within_one_step_and_keeps_the_result(tiny_model, chat_file, runs_dir):
    job = TrainingJob(cfg_for(tiny_model, chat_file, runs_dir, max_steps=10_000))
    run = job.prepare()
    assert run.read_status()["status"] == "queued"
    thread = job.start()
    _wait_step(run, 3)
    job.stop()
    step_at_stop = run.read_status()["step"]
    thread.join(timeout=60)
    s = run.read_status()
    assert s["status"] == "stopped"
    assert step_at_stop <= s["step"] <= step_at_stop + 1
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()


def test_interrupted_run_resumes_to_planned_steps(tiny_model, chat_file, runs_dir):
    job = TrainingJob(cfg_for(tiny_model, chat_file, runs_dir, max_steps=6, checkpoint_steps=2))
    run = job.prepare()
    stop_after = threading.Thread(target=lambda: (_wait_step(run, 3), job.stop()))
    stop_after.start()
    assert job.run() == Status.STOPPED
    stop_after.join()
    assert run.checkpoints[-1].name == "checkpoint-2"
    run2, status = resume(run.path)
    assert status == Status.COMPLETED and run2.path == run.path
    steps = [r["step"] for r in run.read_metrics() if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert run.read_status()["step"] == 6


def _wait_step(run, step):
    wait_until(lambda: run.read_status()["step"] >= step, what=f"step {step}", interval=0.01,
               describe=run.read_status)


def test_a_dead_owner_means_interrupted(tiny_model, chat_file, runs_dir):
    job = TrainingJob(cfg_for(tiny_model, chat_file, runs_dir))
    run = job.prepare()
    status = json.loads((run.path / "status.json").read_text())
    status.update(status="running", pid=2**22 + 12345)  # no such process
    (run.path / "status.json").write_text(json.dumps(status))
    assert run.read_status()["status"] == "interrupted"
    assert json.loads((run.path / "status.json").read_text())["status"] == "interrupted"


def test_out_of_memory_fails_the_run_with_a_fix(tiny_model, chat_file, runs_dir, monkeypatch):
    import ft_engine.training as training

    def oom(config):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(training, "build_model", oom)
    run, status = train(cfg_for(tiny_model, chat_file, runs_dir))
    assert status == Status.FAILED
    err = run.read_status()["error"]
    assert err.startswith("out of memory") and "batch_size" in err and "qlora" in err


def test_any_failure_is_recorded(tiny_model, chat_file, runs_dir, monkeypatch):
    import ft_engine.training as training
    monkeypatch.setattr(training, "build_model", lambda c: 1 / 0)
    run, status = train(cfg_for(tiny_model, chat_file, runs_dir))
    assert status == Status.FAILED
    s = run.read_status()
    assert s["error"] == "ZeroDivisionError: division by zero" and "traceback" in s


def test_a_token_in_an_exception_is_not_written(tiny_model, chat_file, runs_dir, monkeypatch, caplog):
    import ft_engine.training as training
    token = "hf_FAKEtoken1234567890abcdef"
    monkeypatch.setenv("HF_TOKEN", token)

    def leaky(config):
        raise RuntimeError(f"request to the hub failed: Authorization: Bearer {token}")

    monkeypatch.setattr(training, "build_model", leaky)
    run, status = train(cfg_for(tiny_model, chat_file, runs_dir))
    assert status == Status.FAILED and "Bearer ***" in run.read_status()["error"]
    assert "Bearer ***" in caplog.text and token not in caplog.text
    for f in run.path.rglob("*"):
        if f.is_file():
            assert token not in f.read_text(errors="replace"), f


def test_bad_data_leaves_nothing_on_disk(tiny_model, tmp_path, runs_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": ""}\n')
    from ft_engine.errors import DataError
    with pytest.raises(DataError, match="line 1, field 'output'"):
        train(cfg_for(tiny_model, bad, runs_dir))
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


@pytest.mark.parametrize("method", ["lora"])  # QLoRA merges onto its dequantized base: tests/test_export.py
def test_merged_model_gives_the_adapters_outputs(tiny_model, chat_file, runs_dir, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, status = train(cfg_for(tiny_model, chat_file, runs_dir, method, max_steps=5))
    assert status == Status.COMPLETED
    out = export_merged(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    # reference: the full-precision base with the adapter applied
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ref = PeftModel.from_pretrained(base, str(run.path / "adapter")).eval()
    ids = load_tokenizer(tiny_model)("The capital of Zubrowka is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = merged(ids).logits, ref(ids).logits
        with ref.disable_adapter():
            c = ref(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3), "the adapter had no effect; the test proves nothing"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def test_export_refuses_to_overwrite(tiny_model, chat_file, runs_dir, tmp_path):
    run, _ = train(cfg_for(tiny_model, chat_file, runs_dir, max_steps=1))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    from ft_engine.errors import UserError
    with pytest.raises(UserError, match="already exists and is not empty"):
        export_merged(run, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_chat_toggles_adapter_on_one_model(tiny_model, chat_file, runs_dir):
    run, _ = train(cfg_for(tiny_model, chat_file, runs_dir, max_steps=20))
    chat = ChatModel(run)
    q = "What is the capital of Zubrowka?"
    tuned = chat.generate(q, max_new_tokens=12)
    base = chat.generate(q, use_adapter=False, max_new_tokens=12)
    assert "Lutz" in tuned and "Lutz" not in base
    streamed = list(chat.stream(q, max_new_tokens=12))
    assert streamed[-1].strip() == tuned and len(streamed) > 1
    assert chat.generate(q, max_new_tokens=12) == tuned  # adapter back on after the base answer
    sampled = chat.generate(q, max_new_tokens=5, temperature=1.0, top_p=0.9)
    assert isinstance(sampled, str)


def test_a_base_model_tuned_on_the_fallback_template_stops_at_eos(tmp_path, runs_dir):
    """A model with no chat template is tuned on ChatML turns that end with its own EOS, so
    after memorising two answers its replies end there, far short of max_new_tokens (issue 10:
    the old fallback ended turns with "<|im_end|>" as text, and replies ran to the limit)."""
    from conftest import write_jsonl
    from tiny_model import make_base_tokenizer, make_tiny_model

    from ft_engine.models import CHATML_TEMPLATE
    model = make_tiny_model(tmp_path / "base", tokenizer=make_base_tokenizer())
    qa = [("Translate hello into French.", "Bonjour."), ("What is two plus two?", "Four.")]
    data = write_jsonl(tmp_path / "qa.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in qa])
    # measured: the loss falls from ~6 to ~1 in 12 full steps at this rate, and both answers are exact
    run, status = train(cfg_for(str(model), data, runs_dir, "full", batch_size=2, max_steps=12,
                                learning_rate=1e-2))
    assert status == Status.COMPLETED
    chat = ChatModel(run)
    tok = chat.tokenizer
    assert tok.chat_template == CHATML_TEMPLATE  # saved with the run, loaded back from it
    max_new = 64
    for q, a in qa:
        assert chat.generate(q, max_new_tokens=max_new) == a
        inputs = chat._inputs(q, None)  # exactly what generate() feeds the model
        assert inputs["input_ids"][0].tolist().count(tok.bos_token_id) == 1
        out = chat.model.generate(**inputs, **chat._gen_kwargs(max_new, 0.0, 1.0))[0, inputs["input_ids"].shape[1]:]
        assert len(out) < max_new and out[-1].item() == tok.eos_token_id, out.tolist()
        assert list(chat.stream(q, max_new_tokens=max_new))[-1].strip() == a


def test_tokens_per_second_counts_training_time_only(tiny_model, data_files, runs_dir, monkeypatch):
    """Checkpoint saves made slow on purpose (0.4 s each) stay out of tokens/s: every row's
    rate and the final figure are real tokens over training seconds, and the final figure is
    total tokens over total training time, not a mean of the rows' rates."""
    from transformers import Trainer
    slow = 0.4
    save = Trainer._save_checkpoint

    def slow_save(self, model, trial):
        time.sleep(slow)
        save(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", slow_save)  # the stock save, which LeanTrainer times
    cfg = cfg_for(tiny_model, data_files["chat"], runs_dir, max_steps=6, val_fraction=0.25, eval_steps=2,
                  checkpoint_steps=1, checkpoints_kept=1)
    run, status = train(cfg)
    assert status == Status.COMPLETED
    s, rows = run.read_status(), [r for r in run.read_metrics() if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    # 6 saves of >= 0.4 s happened inside the training loop's wall time ...
    assert rows[-1]["elapsed_s"] - rows[0]["elapsed_s"] >= 5 * slow
    # ... but not inside training time: the rows' own intervals add up to less than the wall
    # time by at least the sleeps between them
    intervals = [(b["tokens_seen"] - a["tokens_seen"]) / b["tokens_per_second"] for a, b in zip(rows, rows[1:])]
    assert sum(intervals) <= rows[-1]["elapsed_s"] - rows[0]["elapsed_s"] - 5 * slow + 0.05
    assert 0 < s["train_time_s"] < rows[-1]["elapsed_s"] - 5 * slow
    assert s["tokens_per_second"] == pytest.approx(rows[-1]["tokens_seen"] / s["train_time_s"], rel=0.02)
