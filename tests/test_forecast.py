"""The memory forecast: exact parameter counts, hand-computed byte counts, a forecast checked
against a measured CPU run, the `plan` command and the suggestions."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, LlamaConfig

from ft_engine.cli import COMPONENT_LABELS, main
from ft_engine.config import RunConfig
from ft_engine.errors import UserError
from ft_engine.forecast.advice import suggestions
from ft_engine.forecast.constants import DEFAULTS, MIB
from ft_engine.forecast.estimate import (
    cpu_load_peak_bytes,
    forecast,
    lora_params,
    quant_constant_bytes,
    resolve_precision,
    verdict,
)
from ft_engine.forecast.shape import model_shape
from ft_engine.hardware import available_memory

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 * MIB


def tiny_config(tied: bool = False) -> LlamaConfig:
    return LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)


def real_count(config) -> int:
    import torch
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


# --- parameter counts ---------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_counts_exact_vs_real_model(tied):
    cfg = tiny_config(tied)
    shape = model_shape(cfg)
    assert shape.total == real_count(cfg)
    assert shape.lm_head == (0 if tied else 400 * 64)
    c = shape.counts()
    assert (c["embedding"], c["q_proj"], c["k_proj"], c["v_proj"], c["o_proj"]) == (25600, 4096, 2048, 2048, 4096)
    assert (c["gate_proj"], c["up_proj"], c["down_proj"], c["norms_per_layer"]) == (8192, 8192, 8192, 128)


def test_counts_exact_for_gqa_head_dim_and_bias():
    cfg = LlamaConfig(vocab_size=300, hidden_size=120, intermediate_size=224, num_hidden_layers=3,
                      num_attention_heads=5, num_key_value_heads=1, head_dim=32, attention_bias=True,
                      mlp_bias=True)
    assert model_shape(cfg).total == real_count(cfg)


def test_counts_of_tiny_model_folder(tiny_model):
    assert model_shape(tiny_model).total == real_count(AutoConfig.from_pretrained(tiny_model))


def test_bundled_config_count():
    from ft_engine.models import model_source
    folder = Path(model_source("bundled"))
    if not (folder / "config.json").is_file():
        pytest.skip("bundled model folder not available")
    cfg = AutoConfig.from_pretrained(folder)  # config.json only, no weights
    assert model_shape(cfg).total == 134_515_008
    assert model_shape("bundled").total == 134_515_008


def test_llama_1b_shape():
    shape = model_shape("llama-3.2-1b-shape")
    assert shape.total == 1_235_814_400  # Llama 3.2 1B's published parameter count
    assert (shape.kv_heads, shape.head_dim, shape.tied_embeddings) == (8, 64, True)


def test_bad_models():
    with pytest.raises(UserError, match="Llama-style"):
        model_shape(AutoConfig.for_model("gpt2"))
    with pytest.raises(UserError, match="not found|neither"):
        model_shape("./no/such/folder")


# --- byte counts, by hand -------------------------------------------------------------------

P = 125_248            # 25600 + 2 * 36992 + 64 + 25600 (untied tiny config)
LORA_P = 2 * (4 * (64 + 64) * 2 + 4 * (64 + 32) * 2 + 4 * (64 + 128) * 3)  # r=4, all-linear: 8192


def test_full_bytes():
    shape = model_shape(tiny_config())
    assert shape.total == P
    f = forecast(RunConfig(method="full", optimizer="adamw_torch"), shape, "cpu")
    assert f.components["weights_trainable"] == 4 * P and f.components["weights_frozen"] == 0
    assert f.components["gradients"] == 4 * P
    assert f.components["optimizer_state"] == 8 * P
    assert f.trainable_params == P
    sgd = forecast(RunConfig(method="full", optimizer="sgd"), shape, "cpu")
    assert sgd.components["optimizer_state"] == 0 and sgd.total_bytes < f.total_bytes
    # on a GPU with bf16 the master weights stay fp32
    assert forecast(RunConfig(method="full"), shape, "cuda").components["weights_trainable"] == 4 * P


def test_lora_bytes():
    shape = model_shape(tiny_config())
    cfg = RunConfig(method="lora", lora_r=4, lora_target_modules=["all-linear"])
    assert LORA_P == 8192 and lora_params(cfg, shape) == LORA_P
    f = forecast(cfg.replace(precision="fp32"), shape, "cpu")
    assert f.components["weights_frozen"] == 4 * P  # fp32 base on a CPU without bf16
    # bf16 base on a CPU with bf16 instructions, as on a GPU
    assert forecast(cfg.replace(precision="bf16"), shape, "cpu").components["weights_frozen"] == 2 * P
    assert f.components["weights_trainable"] == 4 * LORA_P
    assert f.components["gradients"] == 4 * LORA_P
    assert f.components["optimizer_state"] == 8 * LORA_P
    assert forecast(cfg, shape, "cuda").components["weights_frozen"] == 2 * P  # bf16 base on a GPU
    # targets by name: q and v only
    qv = cfg.replace(lora_target_modules=["q_proj", "v_proj"])
    assert lora_params(qv, shape) == 2 * (4 * (64 + 64) + 4 * (64 + 32))


def test_lora_real_count_matches_peft():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    m = get_peft_model(LlamaForCausalLM(tiny_config()),
                       LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert trainable == LORA_P


def test_qlora_bytes():
    shape = model_shape(tiny_config())
    linear = 2 * 36_864                          # q,k,v,o,gate,up,down weights, 2 layers
    rest = P - linear                            # embedding, norms, lm_head: in the compute dtype
    for dq, constants in ((False, 2 * 4 * (64 + 32 + 32 + 64 + 3 * 128)),   # fp32 absmax per 64
                          (True, 2 * (72 + 40 + 40 + 72 + 3 * 136))):       # 8-bit absmax + fp32/256 + offset
        cfg = RunConfig(method="qlora", lora_r=4, double_quant=dq)
        f = forecast(cfg, shape, "cuda")
        assert f.components["weights_frozen"] == linear // 2 + 2 * rest  # bf16, not peft's fp32 cast
        fp32 = forecast(cfg.replace(precision="fp32"), shape, "cuda")
        assert fp32.components["weights_frozen"] == linear // 2 + 4 * rest
        assert f.components["quant_constants"] == constants
        assert f.components["weights_trainable"] == 4 * LORA_P
    assert quant_constant_bytes(64 * 256 * 3, True) == 768 + 4 * 3 + 4


def test_checkpoint_dtype_from_config():
    assert model_shape(tiny_config()).checkpoint_dtype == "float32"  # config says nothing: the safe side
    one_b = model_shape("llama-3.2-1b-shape")
    assert one_b.checkpoint_dtype == "bfloat16" and one_b.checkpoint_bytes == 2 * 1_235_814_400
    cfg = tiny_config()
    cfg.dtype = "float16"
    assert model_shape(cfg).checkpoint_bytes == 2 * P


def test_cpu_peak_while_loading_a_half_precision_file():
    """LoRA on CPU loads a bf16 file into fp32: while loading, the whole mapped file is resident
    on top of the fp32 weights, and with a small batch that is the run's peak."""
    c = DEFAULTS
    # a big embedding (32000 x 512, tied), two small layers: the file outweighs a 1x16 batch
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True, dtype="bfloat16")
    shape = model_shape(cfg)
    params = 32000 * 512 + 2 * (4 * 512 * 512 + 3 * 512 * 1024 + 2 * 512) + 512
    assert shape.total == params
    lora = RunConfig(method="lora", lora_r=4, batch_size=1, max_seq_len=16, precision="fp32")
    adapters = 2 * 4 * (4 * (512 + 512) + 2 * (512 + 1024) + (1024 + 512))  # r*(in+out), 7 linears, 2 layers
    assert lora_params(lora, shape) == adapters
    f = forecast(lora, shape, "cpu")
    load = c.cpu_process_baseline + 4 * params + 4 * adapters + 2 * params  # fp32 weights + the bf16 file
    assert cpu_load_peak_bytes(shape, f.components) == load
    assert f.total_bytes == load
    assert f.details["peak_while"] == "loading the model"
    # an fp32 file is mapped, not copied: no load peak above training
    cfg.dtype = "float32"
    fp32 = forecast(lora, model_shape(cfg), "cpu")
    assert fp32.details["peak_while"] == "training"
    assert fp32.total_bytes < f.total_bytes


def test_cpu_qlora_counts_the_checkpoint_file_while_loading_only():
    """Quantizing reads the whole file through its memory map; the weights that are not
    quantized are then copied out of it (models._freeze_quantized), so the file weighs in the
    loading peak and not in training."""
    shape = model_shape(tiny_config())
    linear = 2 * 36_864
    for precision, rest_bytes in (("fp32", 4), ("bf16", 2)):
        f = forecast(RunConfig(method="qlora", lora_r=4, precision=precision), shape, "cpu")
        assert f.components["weights_frozen"] == linear // 2 + rest_bytes * (P - linear)
        weights = f.components["weights_frozen"] + f.components["weights_trainable"] + f.components["quant_constants"]
        c = DEFAULTS  # the file, and the loader's transient share of it
        assert cpu_load_peak_bytes(shape, f.components, loaded_dtype="4-bit") == \
            c.cpu_process_baseline + weights + shape.checkpoint_bytes \
            + int(c.cpu_qlora_load_transient * shape.checkpoint_bytes)


def _in_file_mapping(tensor, name: str) -> bool:
    """Whether the tensor's memory lies in a memory map of a file called `name` (/proc/self/maps)."""
    ptr = tensor.untyped_storage().data_ptr()
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith(name):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


def test_qlora_copies_its_unquantized_weights_out_of_the_checkpoint(tiny_model, tmp_path):
    import torch

    from ft_engine.models import build_model
    # the check can see a mapped weight: an fp32 LoRA base loaded from this fp32 file is one
    lora, _ = build_model(RunConfig(model=tiny_model, method="lora", data="x", runs_dir=str(tmp_path),
                                    precision="fp32"))
    assert any(_in_file_mapping(p, "model.safetensors") for p in lora.parameters() if not p.requires_grad)
    # fp32 compute: the file's own dtype, so without the copy these would be views of the file
    model, _ = build_model(RunConfig(model=tiny_model, method="qlora", data="x", runs_dir=str(tmp_path),
                                     precision="fp32"))
    rest = [p for p in model.parameters() if p.dtype != torch.uint8 and not p.requires_grad]
    assert rest and not any(_in_file_mapping(p, "model.safetensors") for p in rest)


def test_cpu_frozen_base_activations_formula():
    """CPU, LoRA: (layers * cpu_layer_factor_lora + cpu_backward_layers_frozen) * per layer + final."""
    c = DEFAULTS
    shape = model_shape(tiny_config())
    cfg = RunConfig(method="lora", lora_r=4, lora_dropout=0.0, batch_size=2, max_seq_len=32, precision="fp32")
    tokens = 64
    # per token per layer, 4-byte elements: 1.5h + n1 + n2 (h each) + 4q + 3I + m (I) + 7r
    per_token = 1.5 * 64 + 64 + 64 + 4 * 64 + 3 * 128 + 128 + 7 * 4
    per_layer = tokens * per_token * 4 + 2 * 32 * 32 * c.mask_bytes
    final = tokens * 64 * 4 * c.act_final_h_frozen
    expected = (2 * c.cpu_layer_factor_lora + c.cpu_backward_layers_frozen) * per_layer + final
    assert forecast(cfg, shape, "cpu").components["activations"] == int(expected)
    gpu = (2 + c.backward_layers_frozen) * per_layer + final  # fp32 on a GPU too when precision=fp32
    assert forecast(cfg.replace(precision="fp32"), shape, "cuda").components["activations"] == int(gpu)


def test_cpu_bf16_counts_the_plain_attentions_probabilities_where_every_lane_takes_it():
    """bf16 on a CPU, lanes no wider than PLAIN_ATTENTION_MAX_LEN: each layer also keeps
    lanes * heads * seq^2 bf16 probabilities (cpu_attention.py); fp32, or longer rows, whose
    widest passes go to sdpa's flash kernel, do not."""
    from ft_engine.cpu_attention import PLAIN_ATTENTION_MAX_LEN
    c = DEFAULTS
    shape = model_shape(tiny_config())
    cfg = RunConfig(method="lora", lora_r=4, lora_dropout=0.0, batch_size=2, max_seq_len=32)
    tokens, seq = 64, 32
    bf16, fp32 = (forecast(cfg.replace(precision=p), shape, "cpu").components["activations"] for p in ("bf16", "fp32"))
    # the same forecast with the probabilities' bytes set to 0: the difference is the term alone
    none = forecast(cfg.replace(precision="bf16"), shape, "cpu", constants=dataclasses.replace(
        c, cpu_attention_probs_bytes=0.0)).components["activations"]
    per_layer = tokens * seq * shape.heads * c.cpu_attention_probs_bytes
    assert abs(bf16 - none - (2 * c.cpu_layer_factor_lora_half + c.cpu_backward_layers_frozen) * per_layer) <= 1
    assert fp32 == forecast(cfg.replace(precision="fp32"), shape, "cpu", constants=dataclasses.replace(
        c, cpu_attention_probs_bytes=0.0)).components["activations"]
    wide = cfg.replace(precision="bf16", max_seq_len=PLAIN_ATTENTION_MAX_LEN + 64)
    assert forecast(wide, shape, "cpu").components["activations"] == forecast(wide, shape, "cpu", constants=dataclasses.replace(
        c, cpu_attention_probs_bytes=0.0)).components["activations"]


def test_cpu_qlora_allocator_factor_only_for_heap_sized_weights():
    """QLoRA's larger CPU factor holds while its dequantized fp32 weights are heap-sized (under
    glibc's 32 MiB mmap cap); the 1B shape's 64 MiB gate/up/down copies are mmapped."""
    for model, bigger in ((tiny_config(), True), ("llama-3.2-1b-shape", False)):
        shape = model_shape(model)
        lora, qlora = (forecast(RunConfig(method=m, batch_size=2, max_seq_len=256, precision="fp32"), shape, "cpu")
                       .components["activations"] for m in ("lora", "qlora"))
        assert (qlora > lora) if bigger else (qlora == lora)


def test_activation_checkpointing_and_batch_lower_activations():
    shape = model_shape(tiny_config())
    for method in ("full", "lora", "qlora"):
        # the whole batch in one pass (auto cuts a CPU batch into passes of 512 tokens)
        cfg = RunConfig(method=method, batch_size=8, max_seq_len=512, tokens_per_pass=100_000)
        base = forecast(cfg, shape, "cpu").components["activations"]
        passes = forecast(cfg.replace(tokens_per_pass=0), shape, "cpu").components["activations"]
        assert passes < base / 4 and passes == forecast(cfg.replace(tokens_per_pass=0, batch_size=4), shape,
                                                        "cpu").components["activations"]
        assert forecast(cfg.replace(activation_checkpointing=True), shape, "cpu").components["activations"] < base
        half = forecast(cfg.replace(batch_size=4), shape, "cpu").components["activations"]
        assert half < base
        # the chunked loss: one chunk of fp32 logits (all 4,096 tokens fit one chunk of a
        # 400-word vocabulary) twice with the trainer's kept buffers (logits, fp32 softmax,
        # gradient copy), 1.5 times in half precision without them (memory first), and the
        # trained tokens' hidden states and gradient
        in_half = resolve_precision(cfg, "cpu") == "bf16"
        act_bytes = 2 if in_half else 4
        assert forecast(cfg, shape, "cpu").components["logits_loss"] == \
            int(2.0 * 8 * 512 * 400 * 4 + 2 * 8 * 512 * 64 * act_bytes)
        assert forecast(cfg.replace(activation_checkpointing=True), shape, "cpu").components["logits_loss"] == \
            int((1.5 if in_half else 2.0) * 8 * 512 * 400 * 4 + 2 * 8 * 512 * 64 * act_bytes)
        # a known dataset whose 8 longest rows hold 1,000 tokens: activations follow them
        few = forecast(cfg, shape, "cpu", seq_len=512, tokens_per_batch=1000).components["activations"]
        assert few < base / 3


# --- the peak: the phases of a GPU step, the sum on CPU ---------------------------------------

ALWAYS_ALIVE = ("weights_frozen", "weights_trainable", "quant_constants", "gradients", "optimizer_state",
                "runtime_overhead")


def phase_peak(f) -> tuple[int, str]:
    """The GPU peak computed here, from the components: what lives throughout + the larger of
    forward/backward's transients and the optimizer step's scratch."""
    c = f.components
    persistent = sum(c[k] for k in ALWAYS_ALIVE)
    forward_backward = c["activations"] + c["logits_loss"] + c["autocast_copies"]
    step = c["optimizer_temp"]
    return persistent + max(forward_backward, step), "optimizer step" if step > forward_backward else "forward/backward"


@pytest.mark.parametrize("method, seq", [("full", 64), ("full", 2048), ("lora", 64), ("lora", 2048)])
def test_cuda_peak_is_the_larger_phase(method, seq):
    """Activations, logits and autocast copies are freed before optimizer.step(). AdamW on CUDA
    is torch's fused kernel, which updates in place (no scratch), so forward/backward is the
    peak and the step adds nothing on top of it."""
    shape = model_shape("llama-3.2-1b-shape")
    cfg = RunConfig(method=method, optimizer="adamw_torch", batch_size=1, max_seq_len=seq)
    f = forecast(cfg, shape, "cuda")
    assert f.components["optimizer_temp"] == 0
    assert forecast(cfg, shape, "cpu").components["optimizer_temp"] > 0  # the CPU's per-tensor loop has one
    peak, expected_phase = phase_peak(f)
    assert expected_phase == "forward/backward"
    assert f.total_bytes == peak and f.details["peak_phase"] == f.peak_phase == "forward/backward"
    c = DEFAULTS  # what must be free follows the peak, and so does the verdict
    assert f.needed_bytes == int(peak * (1 + c.cuda_fragmentation)) + c.cuda_context
    d = f.to_dict()
    assert sum(d["peak_components_bytes"].values()) == d["total_bytes"] == peak and d["peak_phase"] == f.peak_phase
    assert d["components_bytes"] == f.components  # every component is still shown


def test_a_phased_peak_leaves_out_the_phase_that_is_not_alive():
    """The phase rule itself, on a GPU forecast whose optimizer step is given a scratch larger
    than the forward/backward transients (as a for-each AdamW would have): the peak is then the
    step's, and the activations are left out."""
    shape = model_shape("llama-3.2-1b-shape")
    f = forecast(RunConfig(method="full", optimizer="adamw_torch", batch_size=1, max_seq_len=64), shape, "cuda")
    f.components["optimizer_temp"] = 4 * shape.total
    peak, phase = phase_peak(f)
    assert phase == f.peak_phase == "optimizer step" and f.total_bytes == peak < sum(f.components.values())
    assert f.not_at_peak_bytes == sum(f.components.values()) - peak
    assert f.peak_components()["activations"] == 0 and f.peak_components()["optimizer_temp"] == 4 * shape.total


def test_cpu_and_adamw_lean_keep_the_sum():
    """CPU totals were calibrated as the sum (peak RSS keeps freed memory); adamw_lean updates
    inside backward, so its scratch and the activations overlap, on a GPU too."""
    shape = model_shape("llama-3.2-1b-shape")
    for method in ("full", "lora", "qlora"):
        for seq in (64, 2048):
            f = forecast(RunConfig(method=method, optimizer="adamw_torch", batch_size=1, max_seq_len=seq), shape, "cpu")
            assert f.total_bytes == sum(f.components.values()) and f.peak_phase == "whole step"
            assert f.peak_components() == f.components and f.not_at_peak_bytes == 0
    lean = forecast(RunConfig(method="full", optimizer="adamw_lean", precision="bf16", batch_size=1,
                              max_seq_len=64), shape, "cuda")
    assert lean.components["optimizer_temp"] > 0 and lean.total_bytes == sum(lean.components.values())
    assert lean.peak_phase == "whole step"


def test_plan_on_a_gpu_adds_up_to_its_peak(capsys):
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "all", "--device", "cuda", "--batch-size", "1",
                 "--max-seq-len", "64", "--optimizer", "adamw_torch"]) == 0
    out = capsys.readouterr().out
    assert "not alive at the peak *" not in out  # fused AdamW: nothing of the step is apart from backward
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines() if line[:28].strip() in
            (*COMPONENT_LABELS.values(), "not alive at the peak *", "total (peak)")}
    full = [float(v[0].replace(",", "")) for k, v in rows.items() if k != "total (peak)"]
    assert sum(full) == pytest.approx(float(rows["total (peak)"][0].replace(",", "")), abs=1)  # the column adds up


def test_plan_says_the_disk_a_run_needs(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "full", "--device", "cpu",
                 "--optimizer", "adamw_torch", "--checkpoints-kept", "1", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out  # steps not known: the kept one and the next, then the result
    assert (f"full: disk: this run will take up to 34.7 GB in {runs} (2 checkpoints of 14.8 GB while the "
            f"newest is written + the 5.0 GB model)") in out
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "full", "--device", "cpu",
                 "--optimizer", "adamw_torch", "--max-steps", "30", "--checkpoint-steps", "50",
                 "--runs-dir", str(runs)]) == 0  # 30 steps: one checkpoint, at the last step
    assert "take up to 19.8 GB" in capsys.readouterr().out
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "lora", "--device", "cpu", "--json",
                 "--checkpoint-steps", "0", "--runs-dir", str(runs)]) == 0
    d = json.loads(capsys.readouterr().out)["methods"]["lora"]["disk"]
    assert d["checkpoints_at_once"] == 0 and d["peak_bytes"] == d["result_bytes"] + d["run_files_bytes"]
    assert d["fits"] is True and not runs.exists()  # planning writes nothing


# --- forecast vs a measured run -----------------------------------------------------------

@pytest.fixture(scope="module")
def measured_model(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_model import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("fc") / "m256x4", hidden=256, layers=4)


# (method, settings, how far above the measured peak the forecast may be). Never more than 15%
# below: a forecast under the real peak is the failure users meet (out of memory with no
# warning). With activation checkpointing the run is memory-first (forecast.memory_first: glibc
# gives back the blocks it frees), and the forecast has no allocator extra (+13% measured here).
MEASURED_CASES = [("full", {}, 0.15), ("lora", {}, 0.15), ("full", {"optimizer": "sgd"}, 0.15),
                  ("lora", {"activation_checkpointing": True}, 0.15)]


@pytest.mark.parametrize("method, extra, above", MEASURED_CASES, ids=["full", "lora", "full-sgd", "lora-checkpointing"])
def test_forecast_close_to_measured_cpu_run(measured_model, tmp_path, method, extra, above):
    import random
    rnd = random.Random(0)
    words = "the capital of france is paris two plus four explain plants light water sugar".split()
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(" ".join(rnd.choice(words) for _ in range(1500)) for _ in range(32)) + "\n")
    cfg = RunConfig(model=str(measured_model), data=str(data), data_format="text", train_on_prompt=True,
                    method=method, batch_size=8, max_seq_len=512, max_steps=3, checkpoint_steps=0,
                    runs_dir=str(tmp_path / "runs"), **extra)
    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "ft_engine", "train", "--config", str(tmp_path / "run.yaml")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    status = json.loads((Path(r.stdout.strip().splitlines()[-1]) / "status.json").read_text())
    assert status["mem_device"] == "cpu"
    predicted = forecast(cfg, model_shape(str(measured_model)), "cpu").total_mib
    measured = status["mem_peak_mib"]
    print(f"{method} {extra}: forecast {predicted:.1f} MiB, measured {measured:.1f} MiB")
    assert predicted >= 0.85 * measured, (predicted, measured)  # issue 4's target, from below
    assert predicted <= (1 + above) * measured, (predicted, measured)


# --- plan (command line) --------------------------------------------------------------------

def plan_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ft_engine", "plan", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plan_llama_1b_json_all_methods():
    r = plan_cli("--model", "llama-3.2-1b-shape", "--method", "all", "--batch-size", 4, "--max-seq-len", 512,
                 "--optimizer", "adamw_torch", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    m = report["methods"]
    assert set(m) == {"full", "lora", "qlora"}
    assert m["full"]["total_bytes"] > 16 * GIB   # fp32 AdamW: ~16 bytes/param x 1.24 B params
    w = {k: v["components_bytes"]["weights_frozen"] + v["components_bytes"]["weights_trainable"]
         for k, v in m.items()}
    assert w["qlora"] < w["lora"]  # (on CPU a LoRA base is fp32 like full; adapters add a little)
    assert m["lora"]["trainable_params"] < m["full"]["trainable_params"] == 1_235_814_400
    assert report["shape"]["params"]["total"] == 1_235_814_400
    params = report["shape"]["params"]  # QLoRA's 4-bit parameters: every decoder linear (no biases here)
    assert m["qlora"]["details"]["quantized_params"] == \
        report["shape"]["layers"] * (params["per_layer"] - params["norms_per_layer"])
    for k, v in m.items():
        assert v["verdict"] in ("fits", "tight", "will not fit")
        # bytes only: the weights by dtype add up to the weights (a parameter count is apart)
        assert sum(v["details"]["weights_by_dtype"].values()) == w[k]
        assert (v["details"]["quantized_params"] > 0) == (k == "qlora")
        assert sum(v["peak_components_bytes"].values()) == v["total_bytes"]  # what is alive at the peak
        if report["available"]["device"] == "cpu":  # on CPU that is every component
            assert sum(v["components_bytes"].values()) == v["total_bytes"]
        assert v["disk"]["peak_bytes"] > 0 and "take up to" in v["disk"]["line"]


def test_plan_seq_len(capsys):
    """--seq-len: batches pad to the data's longest row; fewer tokens, less memory."""
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "lora", "--device", "cpu",
                 "--max-seq-len", "512", "--seq-len", "100", "--batch-size", "2", "--json"]) == 0
    short = json.loads(capsys.readouterr().out)["methods"]["lora"]
    assert short["details"]["seq_len"] == 100 and short["details"]["tokens_per_batch"] == 200
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "lora", "--device", "cpu",
                 "--max-seq-len", "512", "--batch-size", "2", "--json"]) == 0
    full_length = json.loads(capsys.readouterr().out)["methods"]["lora"]
    assert short["total_bytes"] < full_length["total_bytes"]
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--seq-len", "100", "--max-seq-len", "512"]) == 0
    assert "seq 100 (max_seq_len 512)" in capsys.readouterr().out
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--seq-len", "0"]) == 2
    assert "--seq-len must be >= 1" in capsys.readouterr().err


def test_plan_human_output(capsys):
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "all", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "verdict:" in out and "total (peak)" in out and "optimizer state" in out
    assert all(m in out for m in ("full", "lora", "qlora"))
    assert main(["plan", "--model", "llama-3.2-1b-shape", "--method", "qlora", "--lora-r", "8",
                 "--activation-checkpointing", "--optimizer", "adamw_8bit"]) == 0
    assert "verdict:" in capsys.readouterr().out


@pytest.mark.parametrize("args,expected", [
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--optimizer", "adam"], "optimizer must be one of"),
    (["--model", "./no/such/model"], "not found"),
    (["--max-seq-len", "8"], "max_seq_len must be between"),
])
def test_plan_bad_input(args, expected, capsys):
    assert main(["plan", "--model", "llama-3.2-1b-shape", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- verdict and suggestions ----------------------------------------------------------------

def test_verdict_thresholds():
    f = forecast(RunConfig(method="lora"), model_shape(tiny_config()), "cpu")
    assert verdict(f, f.needed_bytes * 2) == "fits"
    assert verdict(f, int(f.needed_bytes / 0.9)) == "tight"
    assert verdict(f, f.needed_bytes - 1) == "will not fit"
    assert verdict(f, ("cuda", None, "no GPU")) == "unknown"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_suggestions_lower_the_total(method):
    shape = model_shape("llama-3.2-1b-shape")
    cfg = RunConfig(method=method, batch_size=8, max_seq_len=1024, optimizer="adamw_torch")
    for device in ("cpu", "cuda"):
        base = forecast(cfg, shape, device)
        available = (device, int(base.needed_bytes * 0.7), "fake")
        assert verdict(base, available) == "will not fit"
        found = suggestions(cfg, shape, available)
        assert found
        for desc, new, fc in found:
            assert new != cfg and fc.total_bytes < base.total_bytes and desc
        # a run that fits needs no suggestion
        assert suggestions(cfg, shape, (device, base.needed_bytes * 10, "fake")) == []


def test_available_memory():
    device, free, label = available_memory()
    assert device in ("cpu", "cuda") and free > 0 and label


def test_full_fine_tuning_in_half_precision_is_offered_fp32():
    """bf16 autocast keeps a half-precision copy of every trainable weight; when nothing fits,
    training in fp32 is among the changes that lower the forecast (fp32 activations weigh
    twice as much, less than the copies on a 1B model at 1 x 512)."""
    shape = model_shape("llama-3.2-1b-shape")
    cfg = RunConfig(method="full", batch_size=1, max_seq_len=512, precision="bf16", optimizer="adamw_torch")
    base = forecast(cfg, shape, "cpu")
    found = {desc: fc for desc, new, fc in suggestions(cfg, shape, ("cpu", 1024 * MIB, "fake"))
             if new.precision == "fp32" and new.replace(precision="bf16") == cfg}
    assert len(found) == 1
    (fc,) = found.values()
    assert base.components["autocast_copies"] > 0 == fc.components["autocast_copies"]
    assert fc.total_bytes < base.total_bytes
    assert not [d for d, n, f in suggestions(cfg.replace(precision="fp32"), shape, ("cpu", 1024 * MIB, "fake"))
                if n.precision != "fp32"]
