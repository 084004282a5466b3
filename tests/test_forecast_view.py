"""The Train tab's memory forecast (ui/forecast_view.py) and Start's refusal of a run that
will not fit; the memory cap from the environment; the Monitor's forecast line."""

import pytest

from ft_engine.config import RunConfig
from ft_engine.forecast.constants import MIB
from ft_engine.forecast.estimate import forecast
from ft_engine.forecast.shape import model_shape
from ft_engine.hardware import available_memory
from ui.charts import memory_curve
from ui.forecast_view import FIX_FIELDS, METHOD_ORDER, forecast_figure, longest_row, memory_view, verdict_markdown
from ui.train_tab import forecast_refusal

GIB = 1024 * MIB


def cfg(tiny_model, chat_file, **kw) -> RunConfig:
    return RunConfig(model=tiny_model, data=str(chat_file), **{"method": "lora", "batch_size": 4, **kw})


def test_plenty_of_memory_fits_without_fixes(tiny_model, chat_file):
    view = memory_view(cfg(tiny_model, chat_file), available=("cpu", 100 * GIB, "test RAM"))
    assert set(view.verdicts) == set(METHOD_ORDER) and set(view.verdicts.values()) == {"fits"}
    assert view.fixes == [] and not view.blocks_start
    md = verdict_markdown(view)
    assert "**LoRA**" in md and "fits" in md and "refused" not in md


def test_will_not_fit_offers_fixes_that_lower_the_forecast(tiny_model, chat_file):
    config = cfg(tiny_model, chat_file, max_seq_len=512)
    shape = model_shape(tiny_model)
    need = forecast(config, shape, "cpu").needed_bytes
    view = memory_view(config, available=("cpu", need - 1, "test RAM"))
    assert view.verdict == "will not fit" and view.blocks_start
    assert view.fixes, "a run that will not fit must come with fixes"
    for fix in view.fixes:
        assert fix.changes and set(fix.changes) <= set(FIX_FIELDS)
        assert fix.needed_mib < need / MIB
        assert fix.description in fix.label
    assert "Start is refused" in verdict_markdown(view)


def test_the_data_longest_row_sets_the_forecast(tiny_model, chat_file):
    longest = longest_row(str(chat_file), tiny_model)
    assert 0 < longest < 512
    config = cfg(tiny_model, chat_file, max_seq_len=2048)
    avail = ("cpu", 100 * GIB, "test RAM")
    assert memory_view(config, longest, avail).seq_len == longest
    assert memory_view(config, None, avail).seq_len == 2048
    assert memory_view(config, longest, avail).needed_mib["lora"] < memory_view(config, None, avail).needed_mib["lora"]
    assert longest_row(None, tiny_model) is None
    assert longest_row(str(chat_file) + ".missing", tiny_model) is None


def test_forecast_figure_highlights_the_chosen_method(tiny_model, chat_file):
    view = memory_view(cfg(tiny_model, chat_file, method="qlora"), available=("cpu", 3 * GIB, "test RAM"))
    fig = forecast_figure(view)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4 and all(len(b.y) == 3 for b in bars)
    assert list(bars[0].marker.opacity) == [0.35, 0.35, 1.0]  # full, lora, qlora: qlora chosen
    # the stacked segments add up to the predicted peak of each method
    for i, m in enumerate(METHOD_ORDER):
        assert sum(b.y[i] for b in bars) * 1024 == pytest.approx(view.needed_mib[m], rel=1e-6)
    assert any(s.y0 == pytest.approx(3.0) for s in fig.layout.shapes)  # the free-memory line, GiB


def test_start_is_refused_only_when_it_will_not_fit(tiny_model, chat_file, monkeypatch):
    config = cfg(tiny_model, chat_file)
    monkeypatch.setenv("FT_MEMORY_LIMIT_MIB", "1")
    refusal = forecast_refusal(config)
    assert refusal and "would run out of memory" in refusal and "start it anyway" in refusal
    monkeypatch.setenv("FT_MEMORY_LIMIT_MIB", str(1024 * 1024))  # more than the machine has: no cap
    assert forecast_refusal(config) is None


def test_memory_limit_env_caps_the_available_memory(monkeypatch):
    monkeypatch.setenv("FT_MEMORY_LIMIT_MIB", "1234")
    device, free, label = available_memory("cpu")
    assert (device, free) == ("cpu", 1234 * MIB) and "FT_MEMORY_LIMIT_MIB" in label
    monkeypatch.setenv("FT_MEMORY_LIMIT_MIB", "lots")
    with pytest.raises(Exception, match="FT_MEMORY_LIMIT_MIB must be a number"):
        available_memory("cpu")


def test_unknown_model_gives_no_forecast_and_no_refusal(tiny_model, chat_file):
    config = cfg(tiny_model, chat_file).replace(model="no-such-org/no-such-model")
    assert forecast_refusal(config) is None


def test_memory_curve_draws_the_forecast_line():
    rows = [{"step": 1, "mem_used_mib": 500.0, "mem_peak_mib": 600.0},
            {"step": 2, "mem_used_mib": 520.0, "mem_peak_mib": 640.0}]
    fig = memory_curve(rows, "Process memory", forecast_mib=700.0)
    assert [s.y0 for s in fig.layout.shapes] == [700.0]
    assert fig.layout.yaxis.range[1] >= 700.0
    assert not memory_curve(rows, "Process memory").layout.shapes


def _endpoint(demo, name):
    return next(f.fn for f in demo.fns.values() if f.api_name == name)


def test_api_start_is_refused_then_started_anyway(tiny_model, chat_file, tmp_path, monkeypatch):
    """start_training through the studio's own endpoint function (in process, so the memory
    cap can be set): refused with the reason and fixes, started with start_anyway=True."""
    from ui.context import Studio
    from ui.studio import build_studio
    studio = Studio(tmp_path / "runs")
    demo = build_studio(studio)
    data_path = str(studio.keep_upload(str(chat_file)))
    start = _endpoint(demo, "start_training")
    monkeypatch.setenv("FT_MEMORY_LIMIT_MIB", "1")
    settings = '{"max_steps": 1, "checkpoint_steps": 0}'
    refused = start(data_path, tiny_model, "lora", "Quick demo", settings)
    assert refused["run_id"] == "" and "would run out of memory" in refused["message"]
    assert "Fixes:" in refused["message"] and "start_anyway=True" in refused["message"]
    assert studio.runs() == []  # nothing was created
    started = start(data_path, tiny_model, "lora", "Quick demo", settings, True)
    assert started["run_id"]
    studio.worker.wait_idle(timeout=120)
    assert studio.run(started["run_id"]).read_status()["status"] == "completed"


def test_the_train_tab_says_what_optimizer_auto_becomes(tiny_model, chat_file):
    """A full fine-tune whose fp32 AdamW forecast does not fit: auto becomes adamw_lean, the
    forecast shown is adamw_lean's, and the verdict line says so; with room to spare auto stays
    fp32 AdamW and nothing is said."""
    shape = model_shape(tiny_model)
    config = cfg(tiny_model, chat_file, method="full")
    plain = forecast(config.replace(optimizer="adamw_torch"), shape, "cpu").needed_bytes
    lean = forecast(config.replace(optimizer="adamw_lean"), shape, "cpu").needed_bytes
    view = memory_view(config, available=("cpu", plain - 1, "test RAM"))
    assert view.auto_optimizer == "adamw_lean" and view.needed_mib["full"] == pytest.approx(lean / MIB)
    assert "**adamw_lean**" in verdict_markdown(view)
    roomy = memory_view(config, available=("cpu", 100 * GIB, "test RAM"))
    assert roomy.auto_optimizer == "adamw_torch" and "adamw_lean" not in verdict_markdown(roomy)


def test_the_train_tab_says_what_precision_auto_becomes(tiny_model, chat_file, monkeypatch):
    """On a CPU it follows its bf16 instructions; on a simulated T4 (compute capability 7.5)
    fp16, on a simulated A100 bf16; an explicit precision is not explained (issue 10, 1)."""
    import torch

    from ft_engine.hardware import cpu_has_native_bf16
    config = cfg(tiny_model, chat_file)
    cpu = memory_view(config, available=("cpu", 100 * GIB, "test RAM"))
    assert cpu.auto_precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert f"Precision *auto* → **{cpu.auto_precision}**" in verdict_markdown(cpu)
    assert memory_view(config.replace(precision="fp32"), available=("cpu", 100 * GIB, "t")).auto_precision is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((7, 5), "fp16"), ((8, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability, **k: c)
        gpu = memory_view(config, available=("cuda", 16 * GIB, "GPU 0"))
        assert gpu.auto_precision == expected and f"**{expected}**" in verdict_markdown(gpu)


def test_on_a_gpu_the_bars_stack_what_is_alive_at_the_peak(tmp_path):
    """A GPU's step has two phases never alive together (forecast.PHASES): each method's bars
    add up to its peak, and the verdict says which phase it is and what is left out."""
    from ft_engine.forecast.shape import LLAMA_1B_SHAPE
    config = RunConfig(model=LLAMA_1B_SHAPE, method="full", optimizer="adamw_torch", batch_size=1, max_seq_len=64,
                       runs_dir=str(tmp_path / "runs"))
    view = memory_view(config, available=("cuda", 200 * GIB, "test GPU"))
    bars = [t for t in forecast_figure(view).data if t.type == "bar"]
    shape = model_shape(LLAMA_1B_SHAPE)
    for i, m in enumerate(METHOD_ORDER):
        fc = forecast(config.replace(method=m), shape, "cuda")
        assert sum(b.y[i] for b in bars) * 1024 == pytest.approx(fc.total_mib, rel=1e-6)
    # fused AdamW has no step scratch: forward/backward is the peak and nothing is left out to say
    assert view.peak_phase["full"] == view.peak_phase["lora"] == "forward/backward"
    assert "The peak comes in" not in verdict_markdown(view)
    # on a CPU every component counts (calibrated that way): nothing is said
    assert "The peak comes in" not in verdict_markdown(memory_view(config, available=("cpu", 200 * GIB, "RAM")))


def test_the_train_tab_shows_the_disk_and_start_is_refused_when_short(tiny_model, chat_file, tmp_path, monkeypatch):
    from ft_engine import disk
    from ui.context import Studio
    from ui.studio import build_studio
    studio = Studio(tmp_path / "runs")
    config = cfg(tiny_model, chat_file, runs_dir=str(studio.runs_dir))
    md = verdict_markdown(memory_view(config, available=("cpu", 100 * GIB, "test RAM")))
    assert "💾 This run will take up to" in md and f"in {studio.runs_dir} (3 checkpoints" in md and "free." in md
    monkeypatch.setattr(disk, "free_bytes", lambda path: 1000)
    md = verdict_markdown(memory_view(config, available=("cpu", 100 * GIB, "test RAM")))
    assert "💾 ❌ Start will be refused, not enough disk" in md and "checkpoint_steps to 0" in md
    start = _endpoint(build_studio(studio), "start_training")
    refused = start(str(studio.keep_upload(str(chat_file))), tiny_model, "lora", "Quick demo",
                    '{"max_steps": 1}', True)  # start anyway is about memory: the disk is not overridden
    assert refused["run_id"] == "" and "not enough disk" in refused["message"]
    assert studio.runs() == []
