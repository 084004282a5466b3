"""Export a run as one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile.

The run's trained model (export.merged_model: the adapter merged into its base, or a full run's
weights) is written by the `gguf` package's writer, tensor by tensor, in llama.cpp's layout for
the Llama architecture:

  names      gguf's tensor-name map (model.layers.0.self_attn.q_proj -> blk.0.attn_q);
  q and k    rows permuted from Hugging Face's rotary layout (the two halves of each head
             rotate together) to llama.cpp's (neighbouring pairs rotate together), per query
             head for q and per key-value head for k, as llama.cpp's own converter does;
  tied head  not written: llama.cpp uses token_embd for the output when output.weight is absent;
  rope       Llama 3's frequency scaling as the rope_freqs tensor llama.cpp multiplies with;
  tokenizer  the byte-level BPE vocabulary ("gpt2" in GGUF) with its merges, token types, special
             ids, whether BOS is added (measured on the tokenizer, not read from a config) and
             the chat template, so llama.cpp chats in the template the run trained on.

Quantizations: f16, bf16 and q8_0 come from the gguf package's numpy quantizers (1-D tensors,
the norms, stay f32; a q8_0 tensor whose rows are not a whole number of 32-blocks stays f16, as
llama.cpp does). q4_k_m needs llama.cpp's k-quant code: an f16 file is written first and
quantized with llama.cpp's `llama_model_quantize` through llama-cpp-python when that is
installed; without it the export says how to get it. Files are written under a temporary name
and renamed when whole: a failed or refused export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import stack
from .disk import DISK, free_bytes, gb
from .errors import UserError
from .rundir import RunDir, Status, open_run

QUANTS = ("f16", "bf16", "q8_0", "q4_k_m")
"""The quantizations an export offers; the first is the default (what llama.cpp's converter
writes by default, and exact enough to check against the model it came from)."""

QUANT_NOTES = {
    "f16": "16-bit: the model as trained, half the size of fp32",
    "bf16": "bfloat16: as f16, with fp32's range",
    "q8_0": "8-bit: about half of f16, answers barely change",
    "q4_k_m": "4-bit k-quant: about a third of f16, llama.cpp's usual pick (needs llama.cpp)",
}

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
"""Hugging Face architectures this exporter writes (SmolLM, SmolLM2, Llama 2/3/3.1/3.2, TinyLlama
with a byte-level BPE tokenizer and other Llama-architecture models)."""

BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_k_m": 34 / 32}
"""Bytes per weight of the file, for the disk check. q8_0: 32 weights in 32 int8 + one f16
scale. q4_k_m is counted at q8_0's size, an upper bound: llama.cpp's Q4_K_M is ~4.9 bits per
weight, but tensors whose rows are not a multiple of 256 (SmolLM2's 576) fall back to larger
types, up to q8_0."""

Q4_K_M_FTYPE = 15
"""llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M (include/llama.h)."""

LLAMA_CPP_HINT = ("q4_k_m is made by llama.cpp's quantizer, which is not installed here: "
                  "`pip install llama-cpp-python==0.3.36 diskcache` (it compiles llama.cpp: 6 minutes "
                  "on 2 cores here; `make llamacpp` does it), or export f16 and run llama.cpp's own "
                  "`llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M`")

# llama.cpp names a byte-level BPE pre-tokenizer (how text is split before BPE) by the sha256 of
# the token ids its tokenizer gives for this text (convert_hf_to_gguf.py, get_vocab_base_pre):
# a GGUF must carry the name, and llama.cpp refuses a file whose name it does not know.
PRE_TOKENIZER_PROBE = (
    '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ '
    '🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
    '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
    '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, 3.1, 3.2
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",     # SmolLM, SmolLM2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",      # GPT-2's own
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Smaug-Llama-3
}
GPT2_SPLIT_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
"""The split of a plain `ByteLevel` pre-tokenizer (tokenizers' GPT-2 regex): llama.cpp's "gpt-2"."""

Progress = Callable[[float, str], None]


@dataclasses.dataclass(frozen=True)
class GGUFExport:
    folder: Path       # holds the two files below
    gguf: Path
    modelfile: Path


# --- what can be exported ----------------------------------------------------------------------

def check_exportable(run: RunDir, quant: str) -> None:
    """Refuse (UserError, saying what to do) a run this export cannot write: one still training
    or queued, one without a trained result, a model other than a Llama, q4_k_m without llama.cpp."""
    if quant not in QUANTS:
        raise UserError(f"GGUF quantization must be one of {', '.join(QUANTS)}, got {quant!r}")
    status = run.read_status().get("status")
    if status in (Status.RUNNING.value, Status.QUEUED.value):
        raise UserError(f"run {run.run_id} is {status}: export it once it has finished (or stop it: "
                        f"a stopped run saves what it learned)")
    if run.result_dir is None:
        why = ("it failed before saving a result; resume it or train it again" if status == Status.FAILED.value
               else "it has no trained result yet")
        raise UserError(f"run {run.run_id} cannot be exported: {why}")
    run.check_result_links()
    architecture(run)
    if quant == "q4_k_m" and not llama_cpp_available():
        raise UserError(LLAMA_CPP_HINT)


def _model_config(run: RunDir) -> dict:
    """config.json of the run's model: model/ of a full run, else the base the adapter is for."""
    from .models import model_source
    from .rundir import MODEL_DIR
    folder = run.path / MODEL_DIR
    if not folder.is_dir():
        source = model_source(run.read_config().model)
        folder = Path(source)
        if not folder.is_dir():
            from transformers import AutoConfig
            return AutoConfig.from_pretrained(source).to_dict()
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def architecture(run: RunDir) -> str:
    """The run's model architecture, refused (UserError) unless this exporter writes it."""
    config = _model_config(run)
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    if not set(names) & set(SUPPORTED_ARCHITECTURES):
        raise UserError(f"GGUF export supports Llama-architecture models ({', '.join(SUPPORTED_ARCHITECTURES)}: "
                        f"SmolLM2, Llama 3.2 and friends); this run's model is {', '.join(names)}. Export the "
                        f"merged Hugging Face model instead and convert it with llama.cpp's convert_hf_to_gguf.py")
    return names[0]


def llama_cpp_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("llama_cpp") is not None


def file_bytes(params: int, quant: str) -> int:
    """An upper bound of the GGUF file's size for `params` weights (BYTES_PER_WEIGHT), with the
    tokenizer's metadata (a 128k vocabulary with its merges is ~10 MB)."""
    return int(params * BYTES_PER_WEIGHT[quant]) + 16 * 1000 ** 2


def disk_peak_bytes(params: int, quant: str) -> int:
    """The most an export holds on the disk at once: q4_k_m writes the f16 file first."""
    return file_bytes(params, quant) + (file_bytes(params, "f16") if quant == "q4_k_m" else 0)


def check_disk(folder: Path, params: int, quant: str) -> None:
    """Refuse (UserError) before anything is written unless `folder`'s disk holds the export's
    peak and the margin kept spare for runs (disk.DISK)."""
    peak = disk_peak_bytes(params, quant)
    need = int(peak * (1 + DISK.margin_fraction)) + DISK.margin_bytes
    free = free_bytes(folder)
    if need > free:
        raise UserError(f"not enough disk for the {quant} GGUF: it writes about {gb(peak)}"
                        + (" (an f16 file first, then the 4-bit one)" if quant == "q4_k_m" else "")
                        + f", and {gb(DISK.margin_bytes)} + {DISK.margin_fraction:.0%} is kept spare: {gb(need)} "
                          f"needed, {gb(max(free, 0))} free. Delete runs you no longer need, or pick a smaller "
                          f"quantization")


# --- the export ----------------------------------------------------------------------------------

def export_gguf(run: RunDir | str | Path, out_dir: str | Path, quant: str = "f16",
                progress: Progress | None = None, disk_checked: bool = False) -> GGUFExport:
    """Write `<run id>-<quant>.gguf` and its `Modelfile` into the new folder `out_dir` (which
    must not exist, or be empty); on any failure nothing of it is left. The free disk is
    checked first (check_disk) unless the caller has (export.zip_result reserves the room for
    the file and its zip)."""
    stack.load()  # torch and transformers, once, one thread at a time (stack.py)
    from .export import base_params, merged_model
    from .inference import stop_token_ids
    from .ollama import modelfile
    run = run if isinstance(run, RunDir) else open_run(run)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose a new folder, so nothing is overwritten")
    check_exportable(run, quant)
    say = progress or (lambda fraction, text: None)
    # a size the config cannot tell is measured once the model is loaded, below
    params = None if disk_checked else base_params(run, "GGUF")
    out.parent.mkdir(parents=True, exist_ok=True)
    if params is not None:
        check_disk(out.parent, params, quant)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        say(0.0, "merging the adapter into the base model")
        model, tokenizer, _ = merged_model(run)
        if params is None and not disk_checked:  # its size only known now
            check_disk(out.parent, sum(p.numel() for p in model.parameters()), quant)
        name = f"{run.run_id}-{quant}.gguf"
        write_gguf(model, tokenizer, tmp / name, quant,
                   lambda f, text: say(0.05 + 0.9 * f, text), title=run.read_status().get("name") or run.run_id)
        say(0.95, "writing the Ollama Modelfile")
        stops = stop_token_ids(tokenizer, model.generation_config)
        (tmp / "Modelfile").write_text(modelfile(name, tokenizer, stops, run_system_prompt(run)), encoding="utf-8")
        del model
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(1.0, "done")
    return GGUFExport(out, out / name, out / "Modelfile")


def run_system_prompt(run: RunDir) -> str | None:
    """The one system prompt every training row opened with, which data.json records (None
    for runs without one, or trained before it was recorded)."""
    from .rundir import DATA_FILE
    try:
        data = json.loads((run.path / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    prompt = data.get("system_prompt") if isinstance(data, dict) else None
    return prompt if isinstance(prompt, str) and prompt else None


def write_gguf(model, tokenizer, path: Path, quant: str, progress: Progress | None = None,
               title: str | None = None) -> Path:
    """`model` (a transformers LlamaForCausalLM on the CPU) and `tokenizer` as one GGUF file at
    `path`, written under a temporary name and renamed when whole."""
    say = progress or (lambda fraction, text: None)
    partial = path.with_name(f".{path.name}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if quant == "q4_k_m":
            f16 = path.with_name(f".{path.name}.f16.partial")
            try:
                _write(model, tokenizer, f16, "f16", lambda f, t: say(0.6 * f, t), title)
                say(0.6, "quantizing to q4_k_m with llama.cpp")
                _llama_cpp_quantize(f16, partial, Q4_K_M_FTYPE)
            finally:
                f16.unlink(missing_ok=True)
        else:
            _write(model, tokenizer, partial, quant, say, title)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _llama_cpp_quantize(source: Path, target: Path, ftype: int) -> None:
    try:
        import llama_cpp
    except ImportError as e:
        raise UserError(LLAMA_CPP_HINT) from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0 or not target.is_file():
        raise RuntimeError(f"llama.cpp could not quantize {source.name} (llama_model_quantize returned {code}); "
                           f"its messages above say why")


# --- the GGUF file --------------------------------------------------------------------------

def _file_type(quant: str):
    import gguf
    return {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]


def _write(model, tokenizer, path: Path, quant: str, say: Progress, title: str | None) -> None:
    import gguf
    config = model.config
    tensors = list(_tensors(model))
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hyperparameters(writer, config, title, quant)
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    planned = []
    for name, tensor in tensors:
        qtype = _tensor_type(tensor.shape, quant)
        shape = tuple(tensor.shape)
        nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))  # F32's "block" is 1 weight, 4 bytes
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        planned.append((name, tensor, qtype))
    with contextlib.closing(writer):
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, (name, tensor, qtype) in enumerate(planned):
            say(i / len(planned), f"writing {name} ({i + 1}/{len(planned)}, {quant})")
            writer.write_tensor_data(_encoded(tensor(), qtype))


def _tensor_type(shape, quant: str):
    import gguf
    T = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return T.F32  # norms: tiny, and llama.cpp computes them in f32
    if quant == "q8_0":
        return T.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[quant]


def _encoded(array: np.ndarray, qtype) -> np.ndarray:
    import gguf
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


class _Lazy:
    """A tensor converted when it is written (one whole model in fp32 numpy at once would double
    the export's memory): .shape now, the float32 array when called."""

    def __init__(self, shape, make: Callable[[], np.ndarray]):
        self.shape, self._make = tuple(shape), make

    def __call__(self) -> np.ndarray:
        return self._make()


def _permuted(weight, heads: int) -> np.ndarray:
    """q or k rows from Hugging Face's rotary layout to llama.cpp's: within each head the rows
    of the first and second half are interleaved (row i of the first half, then row i of the
    second), so the pairs llama.cpp rotates together sit next to each other."""
    w = weight.detach().float().cpu().numpy()
    out, cols = w.shape
    return w.reshape(heads, 2, out // heads // 2, cols).swapaxes(1, 2).reshape(out, cols)


def _tensors(model):
    """(GGUF name, _Lazy) for every weight of `model`, in llama.cpp's layout; rope_freqs last
    for Llama 3's frequency scaling. An unknown weight is an error, never dropped."""
    import gguf
    config = model.config
    layers = config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, weight in state.items():
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp reads the output head from token_embd when output.weight is absent
        if key.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_freq_base
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"the model has a weight {key!r} that llama.cpp's Llama layout has no place for: "
                            f"this exporter writes plain Llama models; export the merged Hugging Face model instead")
        if key.endswith("self_attn.q_proj.weight"):
            yield name, _Lazy(weight.shape, lambda w=weight: _permuted(w, heads))
        elif key.endswith("self_attn.k_proj.weight"):
            yield name, _Lazy(weight.shape, lambda w=weight: _permuted(w, kv_heads))
        else:
            yield name, _Lazy(weight.shape, lambda w=weight: w.detach().float().cpu().numpy())
    factors = llama3_rope_factors(config)
    if factors is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _Lazy(factors.shape, lambda: factors)


def _rope(config) -> dict:
    """transformers 5's rope_parameters (4.x: rope_theta and rope_scaling) as one dict."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def llama3_rope_factors(config) -> np.ndarray | None:
    """The per-frequency divisors of Llama 3.1/3.2's rope scaling (transformers'
    `_compute_llama3_parameters`, written the way llama.cpp applies them: each frequency is
    divided by its factor): long wavelengths slowed by `factor`, short ones kept, the band
    between blended. None for a model without llama3 scaling."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    dim = _head_dim(config)
    base, factor = float(rope["rope_theta"]), float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelen < old_context / high, 1.0, np.where(wavelen > old_context / low, factor, blended))
    return factors.astype(np.float32)


def _add_hyperparameters(writer, config, title: str | None, quant: str) -> None:
    import gguf
    rope = _rope(config)
    heads = config.num_attention_heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(title or "fine-tuned model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(_head_dim(config))
    if _head_dim(config) != config.hidden_size // heads:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] not in ("default", "llama3"):
        raise UserError(f"rope scaling {rope['rope_type']!r} is not written by this exporter (default, linear "
                        f"and llama3 are): export the merged Hugging Face model and convert it with llama.cpp")
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    import gguf

    from .inference import end_of_turn_id
    from .ollama import adds_bos, adds_eos
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    if (backend.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise UserError("GGUF export writes byte-level BPE tokenizers (Llama 3, SmolLM2, GPT-2 style); this "
                        "model's tokenizer is another kind: export the merged Hugging Face model and convert it "
                        "with llama.cpp's convert_hf_to_gguf.py")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} "
                        f"embeddings: the model and its tokenizer do not belong together")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer, backend))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)  # the merges and special ids, as gguf's reader expects them
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    # what the tokenizer does, measured, over what its files say: llama.cpp's default for BPE
    # vocabularies is to add BOS, which would put SmolLM2's <|im_start|> before every prompt
    special.add_special_token["bos"] = adds_bos(tokenizer)
    special.add_special_token["eos"] = adds_eos(tokenizer)
    special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
    end = end_of_turn_id(tokenizer)
    if end is not None and end != tokenizer.eos_token_id:
        writer.add_eot_token_id(end)


def pre_tokenizer_name(tokenizer, backend: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: known by PRE_TOKENIZER_PROBE's hash,
    else "gpt-2" when it is a plain ByteLevel split (GPT-2's regex), else refused."""
    ids = tokenizer.encode(PRE_TOKENIZER_PROBE)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[digest]
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    raise UserError(f"llama.cpp does not know this tokenizer's way of splitting text (pre-tokenizer hash "
                    f"{digest[:12]}…): the GGUF would not load there. Known: Llama 3, SmolLM/SmolLM2, GPT-2 style")
