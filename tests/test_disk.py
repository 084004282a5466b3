"""The disk forecast (ft_engine/disk.py): a real run with checkpoints writes what it says, a
run the disk cannot hold is refused before anything is written, and the Llama-3.2-1B full
fine-tune comes out at three checkpoints of fp32 weights + AdamW state, plus the result."""

import math
from pathlib import Path

import pytest
import transformers.trainer

from ft_engine import disk
from ft_engine.config import RunConfig
from ft_engine.disk import GB, DiskShortError, check_disk, disk_forecast, folder_bytes, planned_steps
from ft_engine.forecast.estimate import lora_params
from ft_engine.forecast.shape import LLAMA_1B_SHAPE, model_shape
from ft_engine.rundir import Status
from ft_engine.training import TrainingJob, train

LLAMA_1B_PARAMS = 1_235_814_400
TOLERANCE = 0.03  # measured within 1% (tiny Llama, 2026-12-03); the issue asked for 15%


def tiny_run(tiny_model, chat_file, runs_dir, method, **kw) -> RunConfig:
    # 4 rows in one batch: one step per epoch. Checkpoints at steps 2, 4 and (the last) 5: the
    # third is written while the other two are kept, so three exist at once.
    base = dict(model=tiny_model, data=str(chat_file), method=method, runs_dir=str(runs_dir), batch_size=4,
                max_steps=5, checkpoint_steps=2, checkpoints_kept=2, optimizer="adamw_torch", lora_dropout=0.0)
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_run_writes_what_the_disk_forecast_says(tiny_model, chat_file, tmp_path, monkeypatch, method):
    cfg = tiny_run(tiny_model, chat_file, tmp_path / "runs", method)
    peaks = []
    rotate = transformers.trainer.rotate_checkpoints

    def measured_rotate(output_dir, *args, **kwargs):  # the newest is written, the oldest not yet deleted
        peaks.append(folder_bytes(Path(output_dir).parent))  # the whole run directory
        return rotate(output_dir, *args, **kwargs)

    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", measured_rotate)
    run, status = train(cfg)
    assert status == Status.COMPLETED
    fc = disk_forecast(cfg, steps=5)
    assert (fc.checkpoints_written, fc.checkpoints_at_once) == (3, 3)
    checkpoints = run.checkpoints
    assert [c.name for c in checkpoints] == ["checkpoint-4", "checkpoint-5"]  # kept 2; the last step saves too
    for c in checkpoints:
        assert folder_bytes(c) == pytest.approx(fc.checkpoint_bytes, rel=TOLERANCE), c.name
    result = run.path / ("model" if method == "full" else "adapter")
    assert folder_bytes(result) == pytest.approx(fc.result_bytes, rel=TOLERANCE)
    # what the run directory holds at the end: 2 checkpoints, the result and the run's own files
    assert folder_bytes(run.path) == pytest.approx(fc.final_bytes, rel=TOLERANCE)
    # the peak: 3 checkpoints at once, before the result (a fresh run writes it after the last
    # rotation; the forecast counts it on top, for a resumed run that still has its old one)
    assert len(peaks) == 3
    assert max(peaks) == pytest.approx(fc.peak_bytes - fc.result_bytes, rel=TOLERANCE)
    assert fc.peak_bytes > max(peaks)
    assert run.read_status()["disk_forecast"].startswith("this run will take up to")


def test_refused_before_anything_is_written(tiny_model, chat_file, tmp_path, monkeypatch):
    runs = tmp_path / "not-yet" / "runs"
    cfg = tiny_run(tiny_model, chat_file, runs, "full")
    need = disk_forecast(cfg, steps=planned_steps(cfg, 4)).needed_free_bytes()
    monkeypatch.setattr(disk, "free_bytes", lambda path: need - 1)
    with pytest.raises(DiskShortError) as err:
        TrainingJob(cfg).prepare()
    message = str(err.value)
    for fix in ("checkpoint_steps to 0", "keep 1 checkpoint (checkpoints_kept 1)", "use lora",
                f"in {tmp_path}"):  # the nearest folder that exists: the runs folder is not made
        assert fix in message, (fix, message)
    assert "or free " in message and "not enough disk" in message
    assert not (tmp_path / "not-yet").exists()  # nothing written, not even the runs folder
    # with exactly the need free the run is prepared
    monkeypatch.setattr(disk, "free_bytes", lambda path: need)
    run = TrainingJob(cfg).prepare()
    assert run.read_status()["status"] == "queued" and "take up to" in run.read_status()["disk_forecast"]


def test_the_fixes_say_which_would_fit(tiny_model, tmp_path, monkeypatch):
    cfg = RunConfig(model=tiny_model, method="full", runs_dir=str(tmp_path), checkpoint_steps=10,
                    checkpoints_kept=3, optimizer="adamw_torch")
    none = disk_forecast(cfg.replace(checkpoint_steps=0), steps=100)
    monkeypatch.setattr(disk, "free_bytes", lambda path: none.needed_free_bytes())  # only no checkpoints fit
    with pytest.raises(DiskShortError) as err:
        check_disk(cfg, steps=100)
    fixes = str(err.value).split("Fixes: ")[1].split("; ")
    (none_fix,) = [f for f in fixes if f.startswith("set checkpoint_steps to 0")]
    (one_fix,) = [f for f in fixes if f.startswith("keep 1 checkpoint")]
    assert "still too much" not in none_fix and "still too much" in one_fix


def test_a_resumed_run_counts_what_it_wrote_as_room(tiny_model, tmp_path, monkeypatch):
    cfg = RunConfig(model=tiny_model, method="lora", runs_dir=str(tmp_path / "runs"), checkpoint_steps=1)
    need = disk_forecast(cfg, steps=10).needed_free_bytes()
    run_dir = tmp_path / "runs" / "a-run"
    run_dir.mkdir(parents=True)
    with open(run_dir / "old-checkpoint", "wb") as f:
        f.truncate(1000)  # its bytes are on the disk already (sparse: the test writes nothing)
    monkeypatch.setattr(disk, "free_bytes", lambda path: need - 1000)
    with pytest.raises(DiskShortError):
        check_disk(cfg, steps=10)
    assert "take up to" in check_disk(cfg, steps=10, run_dir=run_dir)


def test_a_model_the_forecast_does_not_know_is_not_refused(tmp_path):
    from transformers import AutoConfig
    folder = tmp_path / "gpt2"
    AutoConfig.for_model("gpt2").save_pretrained(folder)
    note = check_disk(RunConfig(model=str(folder), runs_dir=str(tmp_path)), steps=10)
    assert note.startswith("no disk forecast:") and "Llama-style" in note


def test_llama_1b_full_fine_tune_holds_three_checkpoints_and_the_result():
    """Issue 10: fp32 weights + AdamW's two fp32 moments, 12 B per parameter per checkpoint;
    two kept and the next one written before the oldest goes: three at once, + the fp32 model."""
    cfg = RunConfig(model=LLAMA_1B_SHAPE, method="full", optimizer="adamw_torch", checkpoint_steps=50,
                    checkpoints_kept=2)
    fc = disk_forecast(cfg, model_shape(LLAMA_1B_SHAPE), device="cuda")
    assert fc.checkpoints_at_once == 3
    assert fc.checkpoint_bytes == pytest.approx(LLAMA_1B_PARAMS * (4 + 8), rel=0.005)
    assert fc.result_bytes == pytest.approx(LLAMA_1B_PARAMS * 4, rel=0.005)
    assert fc.peak_bytes == pytest.approx(LLAMA_1B_PARAMS * ((4 + 8) * 3 + 4), rel=0.005)
    assert 49 * GB < fc.peak_bytes < 50 * GB < fc.needed_free_bytes()  # a Space's 50 GB is short
    # the fixes the refusal offers, in numbers: no checkpoints, one kept, adamw_lean, LoRA
    assert disk_forecast(cfg.replace(checkpoint_steps=0), device="cuda").peak_bytes == \
        pytest.approx(LLAMA_1B_PARAMS * 4, rel=0.01)
    assert disk_forecast(cfg.replace(checkpoints_kept=1), device="cuda").peak_bytes == \
        pytest.approx(LLAMA_1B_PARAMS * ((4 + 8) * 2 + 4), rel=0.005)
    lean = disk_forecast(cfg.replace(optimizer="adamw_lean", precision="bf16"), device="cuda")
    assert lean.checkpoint_bytes == pytest.approx(LLAMA_1B_PARAMS * (2 + 2), rel=0.02)  # bf16 + 8-bit state
    lora = disk_forecast(cfg.replace(method="lora"), device="cuda")
    adapters = lora_params(cfg.replace(method="lora"), model_shape(LLAMA_1B_SHAPE))
    assert lora.checkpoint_bytes == pytest.approx(adapters * 12 + disk.DISK.tokenizer_unknown, rel=0.01)
    # optimizer auto counts as fp32 AdamW, the most it can write
    assert disk_forecast(cfg.replace(optimizer="auto"), device="cuda").peak_bytes == fc.peak_bytes


def test_planned_steps_as_the_trainer_counts_them():
    cfg = RunConfig(batch_size=4, grad_accum=2, epochs=1.5)
    assert planned_steps(cfg, 10) == math.ceil(1.5 * 2)  # 3 batches an epoch, 2 steps (the last short)
    assert planned_steps(cfg, 1) == 2  # at least one step an epoch
    assert planned_steps(cfg, None) is None
    assert planned_steps(cfg.replace(max_steps=7), None) == 7
    # steps not known: as many checkpoints as can exist at once
    fc = disk_forecast(RunConfig(model=LLAMA_1B_SHAPE, checkpoints_kept=4), model_shape(LLAMA_1B_SHAPE),
                       device="cpu")
    assert fc.checkpoints_written is None and fc.checkpoints_at_once == 5
