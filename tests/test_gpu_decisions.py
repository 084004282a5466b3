"""What the engine decides on GPUs this CPU machine does not have (issue 10), with the device
simulated: torch.cuda's availability, count, capability and memory functions monkeypatched,
the engine's real code run, its decisions asserted."""

import pytest
import torch

from ft_engine.config import RunConfig
from ft_engine.rundir import RunDir


def simulate_gpus(monkeypatch, count: int, capability=(8, 0), total_gib: float = 24.0) -> None:
    """torch.cuda as seen on a machine with `count` GPUs (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # torch 2.13 says so even on a T4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (int(total_gib * 2**30), int(total_gib * 2**30)))


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_a_run_uses_one_gpu_however_many_there_are(monkeypatch, tmp_path, gpus):
    """The stock Trainer would wrap the model in nn.DataParallel on 2+ GPUs: batch × GPUs."""
    from ft_engine.training import training_arguments
    simulate_gpus(monkeypatch, gpus)
    cfg = RunConfig(model="bundled", data="x.jsonl", batch_size=4, grad_accum=2, precision="bf16",
                    optimizer="adamw_torch")
    args = training_arguments(cfg, RunDir(tmp_path), evaluates=False)
    assert args.device == torch.device("cuda", 0) and not args.use_cpu
    assert args.n_gpu == 1
    assert args.train_batch_size == 4  # what the Trainer loads per step: the studio's batch
    # what the stock arguments would have done here
    from transformers import TrainingArguments
    stock = TrainingArguments(output_dir=str(tmp_path / "stock"), per_device_train_batch_size=4, report_to="none")
    assert stock.n_gpu == gpus and stock.train_batch_size == 4 * gpus


# --- loading straight onto the device ------------------------------------------------------------

@pytest.mark.parametrize("quantized", [False, True])
def test_models_load_straight_onto_the_training_gpu(monkeypatch, quantized):
    """A device_map makes from_pretrained place each weight on the GPU as it is read, in its
    final dtype; without one a model is built in CPU RAM first (a 3B fp32 model: 12 GB)."""
    from ft_engine.memory import TRAIN_GPU
    from ft_engine.models import placement
    simulate_gpus(monkeypatch, 1)
    q = object() if quantized else None
    assert placement(q) == {"device_map": {"": TRAIN_GPU}}
    assert placement(q, device=3) == {"device_map": {"": 3}}
    assert placement(q, device="cpu") == ({"device_map": {"": "cpu"}} if quantized else {})


def test_without_a_gpu_plain_models_load_as_before():
    from ft_engine.models import placement
    assert not torch.cuda.is_available()
    assert placement(None) == {} and placement(object()) == {"device_map": {"": "cpu"}}


def test_load_base_model_hands_the_placement_and_dtype_to_from_pretrained(monkeypatch, tiny_model):
    """What load_base_model really passes on a simulated GPU (from_pretrained itself cannot run
    against a GPU that is not there: it is stopped at its door and its arguments kept)."""
    from transformers import AutoModelForCausalLM

    from ft_engine.models import load_base_model
    seen = {}

    class Stop(Exception):
        pass

    def record(source, **kwargs):
        seen.update(kwargs)
        raise Stop

    simulate_gpus(monkeypatch, 2)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    with pytest.raises(Stop):
        load_base_model(RunConfig(model=tiny_model), torch.bfloat16)
    assert seen["device_map"] == {"": 0} and seen["dtype"] == torch.bfloat16


# --- chat beside training ------------------------------------------------------------------------

def test_chat_takes_the_last_gpu_of_several_and_waits_on_a_single_busy_one(monkeypatch):
    from ft_engine.errors import UserError
    from ft_engine.inference import chat_device, shares_gpu_with_runs
    assert chat_device(training_run="r1") == "cpu"  # this machine: no GPU, chat on the CPU always
    simulate_gpus(monkeypatch, 4)
    assert chat_device(training_run="r1") == 3 and not shares_gpu_with_runs(3)
    simulate_gpus(monkeypatch, 1)
    assert chat_device() == 0 and shares_gpu_with_runs(0)
    with pytest.raises(UserError, match="training run r1.*Chat when the run ends, or stop it"):
        chat_device(training_run="r1")


@pytest.mark.parametrize("capability, method, expected", [
    ((7, 5), "lora", torch.float16),    # T4: no bf16 tensor cores
    ((8, 0), "lora", torch.bfloat16),   # A100, A10G, L4
    ((8, 9), "full", torch.bfloat16),   # 4090 / L4: a full run's chat model in bf16, not its fp32 master weights
    ((9, 0), "qlora", torch.bfloat16),  # H100: the 4-bit base computes in bf16
])
def test_chat_models_on_a_gpu_load_in_the_runs_precision(monkeypatch, capability, method, expected):
    from ft_engine.inference import chat_dtype
    simulate_gpus(monkeypatch, 1, capability=capability)
    assert chat_dtype(RunConfig(model="bundled", method=method), device=0) == expected
    assert chat_dtype(RunConfig(model="bundled", method=method), device="cpu") == torch.float32


def test_a_run_starting_frees_the_chat_model_on_its_gpu_only(monkeypatch, tmp_path):
    """The worker's before_run hook: the studio drops a chat model on the training GPU (the run
    then empties the GPU cache before measuring); one on another GPU or the CPU stays."""
    import ft_engine.inference  # noqa: F401  (the studio looks it up once chat has been used)
    from ui.context import Studio
    studio = Studio(tmp_path / "runs")
    assert studio._free_gpu_for_run in studio.worker.before_run

    class Loaded:
        def __init__(self, device):
            self.device = device
    for device, kept in ((0, False), (1, True), ("cpu", True)):
        studio._chat = (("run-a", None), Loaded(device))
        studio._free_gpu_for_run("run-b")
        assert (studio._chat is not None) == kept, device


def test_studio_chat_refuses_the_single_gpu_while_a_run_trains(monkeypatch, tmp_path):
    from ft_engine.errors import UserError
    from ui.context import Studio
    studio = Studio(tmp_path / "runs")
    monkeypatch.setattr(type(studio.worker), "current_run_id", property(lambda self: "busy-run"))
    monkeypatch.setattr(studio, "run", lambda run_id: RunDir(tmp_path / "runs" / run_id))
    simulate_gpus(monkeypatch, 1)
    with pytest.raises(UserError, match="training run busy-run"):
        studio.chat_model("some-run")
    assert studio._chat is None


# --- a run's memory is its own -----------------------------------------------------------------

def test_a_runs_gpu_peak_leaves_out_what_was_allocated_before_it(monkeypatch):
    """A chat model (3 GiB) allocated when the run's measurement starts is not the run's:
    the peak counters include it, the run's readings do not."""
    import sys

    from ft_engine import memory
    gib = 2**30
    allocated = {"now": 3 * gib, "peak": 3 * gib}
    simulate_gpus(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: allocated.update(peak=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: allocated["peak"])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: allocated["now"] + gib // 2)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: allocated["peak"] + gib // 2)
    monkeypatch.setattr(memory, "_cuda_baseline", {"allocated": 0, "reserved": 0})
    assert "torch" in sys.modules
    memory.reset_peak()
    allocated.update(now=5 * gib, peak=7 * gib)  # the run: 2 GiB held, 4 GiB at its peak
    snap = memory.snapshot()
    assert snap["mem_device"] == "cuda"
    assert snap["mem_used_mib"] == 2048 and snap["mem_peak_mib"] == 4096 and snap["mem_baseline_mib"] == 3072
    assert snap["mem_peak_reserved_mib"] == 4096


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_export_merges_on_the_cpu_even_beside_a_gpu(monkeypatch, tmp_path, method):
    """An export asked for while a run trains must not load a model onto the run's GPU."""
    import bitsandbytes  # noqa: F401  (imported for real before torch.cuda is simulated: it loads its CUDA backend then)
    import peft  # noqa: F401

    from ft_engine import export, models
    seen = {}

    class Stop(Exception):
        pass

    def record(config, dtype, quantization=None, device=None):
        seen.update(device=device, quantized=quantization is not None)
        raise Stop

    simulate_gpus(monkeypatch, 1)
    run = RunDir(tmp_path / "run")
    (run.path / "adapter").mkdir(parents=True)
    (run.path / "config.yaml").write_text(RunConfig(model="bundled", method=method).to_yaml())
    (run.path / "status.json").write_text('{"status": "completed", "precision": "bf16"}')
    monkeypatch.setattr(models, "load_base_model", record)  # export imports it from models when it builds
    with pytest.raises(Stop):
        export.export_merged(run, tmp_path / "out")
    assert seen == {"device": "cpu", "quantized": method == "qlora"}


def test_adamw_lean_is_refused_where_auto_precision_means_fp16(monkeypatch, tmp_path):
    """On a T4 `precision: auto` is fp16, whose loss scaling adamw_lean cannot undo (it steps
    inside backward): refused before anything is written, with what to pick instead."""
    from ft_engine.errors import UserError
    from ft_engine.training import TrainingJob
    simulate_gpus(monkeypatch, 1, capability=(7, 5))
    (tmp_path / "rows.jsonl").write_text('{"prompt": "2+2?", "completion": "4"}\n')
    cfg = RunConfig(model="bundled", data=str(tmp_path / "rows.jsonl"), method="full", optimizer="adamw_lean",
                    runs_dir=str(tmp_path / "runs"))
    with pytest.raises(UserError, match="precision auto is fp16 on this GPU.*adamw_8bit"):
        TrainingJob(cfg).prepare()
    assert not (tmp_path / "runs").exists()


# --- runs of several GPUs (issue 12) --------------------------------------------------------------

def test_chat_is_refused_while_a_run_trains_on_every_gpu(monkeypatch):
    from ft_engine.errors import UserError
    from ft_engine.inference import chat_device, shares_gpu_with_runs
    simulate_gpus(monkeypatch, 4)
    assert chat_device(training_run="r1", run_gpus=2) == 3  # GPUs 0 and 1 train, 3 is free
    with pytest.raises(UserError, match="all 4 GPUs are training run r1"):
        chat_device(training_run="r1", run_gpus=4)
    assert shares_gpu_with_runs(1, run_gpus=2) and not shares_gpu_with_runs(3, run_gpus=2)
    assert not shares_gpu_with_runs("cpu", run_gpus=4)


def test_each_process_of_a_run_trains_on_its_own_gpu(monkeypatch):
    """torchrun gives every process LOCAL_RANK: its model loads onto that GPU, and its memory
    readings are read there."""
    from ft_engine.memory import train_gpu
    from ft_engine.models import placement
    simulate_gpus(monkeypatch, 4)
    assert placement(None) == {"device_map": {"": 0}} and train_gpu() == 0
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert placement(None) == {"device_map": {"": 2}} and train_gpu() == 2


def test_devices_auto_takes_every_visible_gpu(monkeypatch, tmp_path):
    from ft_engine.launch import processes_for
    simulate_gpus(monkeypatch, 4)
    assert processes_for(RunConfig()) == 4
    assert processes_for(RunConfig(devices="1")) == 1
    simulate_gpus(monkeypatch, 1)
    assert processes_for(RunConfig()) == 1


def test_fsdp_shards_layer_by_layer_and_ddp_has_no_fsdp_arguments():
    from ft_engine.training import sharding
    fsdp = sharding(RunConfig(strategy="fsdp", fsdp_cpu_offload=True), 2, "LlamaDecoderLayer")
    assert fsdp["fsdp"] is True
    assert fsdp["fsdp_config"]["version"] == 2 and fsdp["fsdp_config"]["reshard_after_forward"] is True
    assert fsdp["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert fsdp["fsdp_config"]["cpu_offload"] is True
    assert sharding(RunConfig(strategy="ddp"), 4, "LlamaDecoderLayer") == {}
    assert sharding(RunConfig(strategy="fsdp"), 1, "LlamaDecoderLayer") == {}  # one process: nothing to shard


def test_the_forecast_is_per_device_for_the_strategy():
    from ft_engine.forecast.estimate import forecast
    from ft_engine.forecast.shape import LLAMA_1B_SHAPE, model_shape
    shape = model_shape(LLAMA_1B_SHAPE)
    full = RunConfig(method="full", optimizer="adamw_torch", batch_size=4, max_seq_len=512)
    alone = forecast(full, shape, "cuda")
    ddp = forecast(full, shape, "cuda", processes=2)
    fsdp2 = forecast(full.replace(strategy="fsdp"), shape, "cuda", processes=2)
    fsdp4 = forecast(full.replace(strategy="fsdp"), shape, "cuda", processes=4)
    # DDP: everything on every GPU, plus its gradient buckets (4 B per trainable parameter)
    assert ddp.components["gradients"] == 2 * alone.components["gradients"]
    assert ddp.details["strategy"] == "ddp" and ddp.total_bytes > alone.total_bytes
    # FSDP: weights, gradients and optimizer state split over the GPUs
    for key in ("weights_trainable", "gradients", "optimizer_state"):
        assert fsdp4.components[key] * 4 >= alone.components[key] > fsdp4.components[key] * 3.99
    assert fsdp4.total_bytes < fsdp2.total_bytes < alone.total_bytes
    offload = forecast(full.replace(strategy="fsdp", fsdp_cpu_offload=True), shape, "cuda", processes=4)
    assert offload.components["optimizer_state"] == 0 and offload.details["offloaded_to_cpu_bytes"] > 0
    assert offload.total_bytes < fsdp4.total_bytes
    # on a CPU the processes share one RAM: what must be free is all of them together
    cpu2 = forecast(full, shape, "cpu", processes=2)
    assert cpu2.needed_bytes == 2 * cpu2.total_bytes


def test_optimizer_auto_never_picks_the_in_backward_optimizer_for_several_processes():
    from ft_engine.forecast.estimate import resolve_optimizer
    from ft_engine.forecast.shape import LLAMA_1B_SHAPE, model_shape
    full = RunConfig(method="full", batch_size=4, max_seq_len=512)
    tight = 8 * 2**30  # too little for fp32 AdamW on a 1B model
    shape = model_shape(LLAMA_1B_SHAPE)
    assert resolve_optimizer(full, shape, "cuda", available=tight) == "adamw_lean"
    assert resolve_optimizer(full, shape, "cuda", available=tight, processes=2) == "adamw_8bit"


def test_the_train_tab_offers_every_gpu_when_there_are_several(monkeypatch, tmp_path):
    import ft_engine.hardware as hardware
    from ui.context import Studio
    from ui.form import config_from_form, gpus_markdown
    from ui.studio import build_studio
    readings = [hardware.GpuReading(i, "NVIDIA L4", 0.0, 23034.0, 0.0) for i in range(2)]
    monkeypatch.setattr(hardware, "gpu_readings", lambda: readings)
    demo = build_studio(Studio(tmp_path / "runs"))
    labels = {c.get("props", {}).get("label") for c in demo.config["components"]}
    assert "Use all 2 GPUs" in labels and "How the GPUs share the work" in labels
    assert "2 GPUs found: GPU 0 · NVIDIA L4, GPU 1 · NVIDIA L4" in gpus_markdown(["NVIDIA L4"] * 2)
    assert "CPU" in gpus_markdown([])
    assert config_from_form({"use_all_gpus": True, "strategy": "fsdp"}, check_paths=False).devices == "auto"
    unticked = config_from_form({"use_all_gpus": False, "strategy": "fsdp"}, check_paths=False)
    assert unticked.devices == "1" and unticked.strategy == "fsdp"


def test_fsdp_shards_qloras_4bit_weights_on_cuda_only(monkeypatch):
    """On CUDA the packed 4-bit weights are stored in the compute dtype so FSDP shards them;
    on a CPU (where that storage gave a wrong held-out loss) they stay uint8."""
    from ft_engine.forecast.estimate import forecast
    from ft_engine.forecast.shape import LLAMA_1B_SHAPE, model_shape
    from ft_engine.models import bnb_config
    qlora = RunConfig(method="qlora", strategy="fsdp", optimizer="adamw_torch", batch_size=4, max_seq_len=512)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert bnb_config(qlora).bnb_4bit_quant_storage == torch.uint8  # this CPU
    simulate_gpus(monkeypatch, 2)
    assert bnb_config(qlora).bnb_4bit_quant_storage == torch.bfloat16
    assert bnb_config(qlora.replace(strategy="ddp")).bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert bnb_config(qlora).bnb_4bit_quant_storage == torch.uint8  # one process: nothing to shard
    shape = model_shape(LLAMA_1B_SHAPE)
    alone, four = forecast(qlora, shape, "cuda"), forecast(qlora, shape, "cuda", processes=4)
    assert four.components["weights_frozen"] * 4 >= alone.components["weights_frozen"]
    assert forecast(qlora, shape, "cpu", processes=4).components["weights_frozen"] == \
        forecast(qlora, shape, "cpu").components["weights_frozen"]
