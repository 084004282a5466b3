"""GGUF export (issue 13): the file is the model that was trained, read back by transformers'
own GGUF reader (a reader this project did not write); its tokenizer gives the same ids; its
Ollama Modelfile builds the text the chat template builds; and every bad request is refused
with a message and leaves nothing behind. llama.cpp itself reads the files in
tests/test_llamacpp.py (`make test-llamacpp`)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import QA, write_jsonl

from ft_engine import export, gguf_export
from ft_engine.config import RunConfig
from ft_engine.errors import UserError
from ft_engine.export import merged_model, zip_result
from ft_engine.gguf_export import export_gguf, llama3_rope_factors, write_gguf
from ft_engine.ollama import TemplatePieces, modelfile, template_pieces
from ft_engine.rundir import Status, open_run
from ft_engine.training import train

# As tests/test_export.py: 40 steps at 1e-2 make the tiny model answer every QA pair word for
# word, so greedy answers are far from ties and the adapter matters.
STEPS, LR = 40, 1e-2
SYSTEM = "You answer in one sentence."


def _rows(system: str | None = SYSTEM) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [{"messages": head + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    data = write_jsonl(root / "chat.jsonl", _rows())
    cfg = RunConfig(model=tiny_model, data=str(data), method="lora", runs_dir=str(root / "runs"), batch_size=4,
                    max_steps=STEPS, learning_rate=LR, warmup_ratio=0.0, scheduler="constant",
                    checkpoint_steps=0, lora_dropout=0.0)
    run, status = train(cfg)
    assert status == Status.COMPLETED
    return run


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    """The run exported in f16 and q8_0: {quant: GGUFExport}."""
    root = tmp_path_factory.mktemp("gguf-out")
    return {q: export_gguf(lora_run, root / q, q) for q in ("f16", "q8_0")}


def _read_back(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _prompt_ids(tokenizer, question: str) -> dict:
    return tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)


def _greedy(model, tokenizer, question: str) -> str:
    inputs = _prompt_ids(tokenizer, question)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _rounded_to_f16(model):
    """The model with every matrix rounded to f16 as the f16 GGUF stores it (norms stay f32)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(p.half().float())
    return model


# --- the file is the trained model ---------------------------------------------------------------

def test_f16_gguf_gives_the_merged_models_logits(lora_run, exported):
    merged, tokenizer, _ = merged_model(lora_run)
    gguf_model, _ = _read_back(exported["f16"].gguf)
    rounded = _rounded_to_f16(merged_model(lora_run)[0])
    for question, _answer in QA:
        inputs = _prompt_ids(tokenizer, question)
        with torch.inference_mode():
            want, got, exact = rounded(**inputs).logits, gguf_model(**inputs).logits, merged(**inputs).logits
        # the same weights (q and k permuted to llama.cpp's layout and back, the head untied)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
        # and f16's rounding is all that separates it from the merged fp32 model
        assert (got - exact).abs().max() < 0.01 * exact.abs().max()


def test_q8_0_gives_the_same_greedy_answers(lora_run, exported):
    merged, tokenizer, _ = merged_model(lora_run)
    q8, _ = _read_back(exported["q8_0"].gguf)
    answers = [_greedy(merged, tokenizer, q) for q, _ in QA]
    assert answers == [a for _, a in QA]  # the run learned them (else the comparison says little)
    assert [_greedy(q8, tokenizer, q) for q, _ in QA] == answers
    assert exported["q8_0"].gguf.stat().st_size < 0.6 * exported["f16"].gguf.stat().st_size


@pytest.mark.parametrize("tied", [False, True])
def test_a_tied_or_untied_head_reads_back_the_same(tmp_path, tied):
    """Tied (SmolLM2, Llama 3.2 1B): no output.weight is written and llama.cpp's readers use the
    embedding for the head; untied: the head is its own tensor."""
    from tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = make_tiny_model(tmp_path / "model", tied=tied, seed=3)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    path = write_gguf(model, AutoTokenizer.from_pretrained(folder), tmp_path / "out" / "m.gguf", "f16")
    import gguf
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert ("output.weight" in names) == (not tied)
    back, _ = _read_back(path)
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.inference_mode():
        assert torch.allclose(back(ids).logits, _rounded_to_f16(model)(ids).logits, atol=1e-5, rtol=0)


def test_llama3_rope_factors_are_transformers_frequency_scaling():
    """Llama 3.1/3.2's rope scaling goes into the file as the divisors llama.cpp applies to each
    frequency: the default frequencies divided by them must be transformers' llama3 ones."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / 500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    factors = torch.from_numpy(llama3_rope_factors(config)).double()
    assert factors.min() == 1.0 and factors.max() == 32.0  # short wavelengths kept, long ones slowed
    assert torch.allclose(base / factors, scaled.double(), rtol=1e-6)
    assert llama3_rope_factors(LlamaConfig()) is None


# --- the tokenizer round-trips -----------------------------------------------------------------

ROUND_TRIP = [
    "Hello world", " leading space", "trailing space ", "  two  spaces  ", "tab\there", "new\nline", "\n\n\n",
    "What is the capital of Zubrowka?", "The capital of Zubrowka is Lutz.", "Ça va? Déjà vu, naïve façade.",
    "Grüße aus Köln — straße", "¿Dónde está la biblioteca?", "Привет, как дела?", "Γειά σου κόσμε",
    "日本語のテキスト", "我想在apple工作", "한국어 문장", "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ",
    "emoji 🦙🚀😶‍🌫️ ✅", "👍🏽👨‍👩‍👧", "math: ∑ x² ≤ ∞, π ≈ 3.14159", "numbers 3 33 333 3333 33333 1234567",
    "3.3 3..3 3...3", "$100.00 and 50% off!!!", "I've been 'told he's there, 'RE you sure?",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }", "SELECT * FROM t WHERE id=1;",
    "<div class=\"a\">text</div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "```python\nprint('hi')\n```",
    "path/to/file.txt C:\\Windows\\system32", "https://example.com/a?b=c&d=e#f", "user@example.com",
    "------======= ......!!!!!!??????", "''''''```````\"\"\"\"", "a" * 64, "ab " * 30,
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>", "<|im_start|>", "<|endoftext|>",
    "text<|im_end|>more", "<|im_start|>system\nYou are kind.<|im_end|>", "no special <|im_notatoken|>",
    "MiXeD CaSe WoRdS", "\u00a0non-breaking\u2009thin\u200bzero-width", "end.",
]


def test_fifty_strings_give_the_same_token_ids(tmp_path):
    """The bundled SmolLM2 tokenizer (llama.cpp pre-tokenizer "smollm") written into a GGUF and
    read back by transformers: the same ids for unicode, code, odd spacing and the chat's
    special tokens."""
    from tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM

    from ft_engine.models import load_tokenizer
    assert len(ROUND_TRIP) == 50
    tokenizer = load_tokenizer("bundled")
    # a tiny Llama with the bundled 49,152-token vocabulary: the tokenizer is what is tested
    folder = make_tiny_model(tmp_path / "model", hidden=32, layers=1, tokenizer=tokenizer, tied=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    path = write_gguf(model, tokenizer, tmp_path / "bundled.gguf", "q8_0")
    from transformers import AutoTokenizer
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ROUND_TRIP:
        assert back(text)["input_ids"] == tokenizer(text)["input_ids"], text
    import gguf
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False  # SmolLM2 adds no BOS
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template


# --- the Ollama Modelfile ------------------------------------------------------------------------

LLAMA3_STYLE = (  # the shape of Llama 3.x's template: a system header even without a system message
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n' + system + '<|eot_id|>' }}"
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def _llama3_style_tokenizer():
    """The tests' BPE tokenizer with Llama 3's markers and template, and a BOS it adds itself."""
    from tiny_model import make_base_tokenizer
    tok = make_base_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_STYLE
    return tok


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief.\nVery brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Two."}, {"role": "user", "content": "Three?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]


@pytest.mark.parametrize("which", ["bundled", "tiny chatml", "llama3 style"])
def test_the_modelfile_template_builds_what_the_chat_template_builds(which):
    """The TEMPLATE is made from pieces read off the chat template; rendered the way Ollama
    fills it in, they give the chat template's own text (less a BOS llama.cpp adds itself) for
    conversations with and without a system prompt and of several turns."""
    from tiny_model import make_tokenizer

    from ft_engine.models import load_tokenizer
    tokenizer = {"bundled": lambda: load_tokenizer("bundled"), "tiny chatml": make_tokenizer,
                 "llama3 style": _llama3_style_tokenizer}[which]()
    pieces = template_pieces(tokenizer)
    for messages in CONVERSATIONS:
        want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if which == "llama3 style":
            assert want.startswith("<s>")
            want = want[len("<s>"):]
        assert pieces.render(messages) == want
    if which == "bundled":  # SmolLM2 writes its own system prompt when there is none: so does the Modelfile
        assert "You are a helpful AI assistant named SmolLM" in pieces.no_system


def test_a_template_that_is_not_fixed_text_around_turns_is_refused():
    from tiny_model import make_tokenizer
    tokenizer = make_tokenizer()
    # numbers its turns: the text around a turn depends on its position, which TEMPLATE cannot say
    tokenizer.chat_template = ("{% for m in messages %}{{ loop.index|string + m['role'] + ':' + m['content'] + '\n' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    with pytest.raises(UserError, match="TEMPLATE"):
        template_pieces(tokenizer)


def test_the_modelfile_names_the_file_its_stops_and_the_runs_system_prompt(exported):
    text = exported["f16"].modelfile.read_text()
    assert text.splitlines()[1] == f"FROM ./{exported['f16'].gguf.name}"
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert f'SYSTEM """{SYSTEM}"""' in text  # every training row opened with it
    template = text[text.index('TEMPLATE """') + len('TEMPLATE """'):text.index('"""', text.index('TEMPLATE """') + 12)]
    assert "{{ .System }}" in template and "{{ .Content }}" in template
    assert template.count("{{") == template.count("}}")


def test_no_system_line_when_the_rows_had_none(tiny_model):
    from tiny_model import make_tokenizer
    text = modelfile("m.gguf", make_tokenizer(), [2], None)
    assert "SYSTEM" not in text and "FROM ./m.gguf" in text


def test_pieces_render_follows_ollamas_rules():
    p = TemplatePieces("[S]", "[/S][U]", "[U]", "[/U][A]", "[/U][GEN]", "[/A][U]")
    assert p.render([{"role": "user", "content": "x"}]) == "[U]x[/U][GEN]"
    assert p.render([{"role": "system", "content": "s"}, {"role": "user", "content": "x"},
                     {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]) == \
        "[S]s[/S][U]x[/U][A]y[/A][U]z[/U][GEN]"


# --- downloads, the command line -----------------------------------------------------------------

def test_the_download_zip_holds_the_gguf_and_its_modelfile_stored(lora_run, tmp_path):
    steps = []
    path = zip_result(lora_run, "gguf", tmp_path / "dest", quant="q8_0", progress=lambda f, t: steps.append((f, t)))
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
    gguf_name = f"{lora_run.run_id}-q8_0.gguf"
    assert set(infos) == {gguf_name, "Modelfile"}
    assert infos[gguf_name].compress_type == zipfile.ZIP_STORED
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] <= 1.0 and len(steps) > 5
    assert any("writing" in t for _, t in steps)
    assert [p.name for p in (tmp_path / "dest").iterdir()] == [path.name]  # the scratch folder is gone


def test_the_cli_exports_gguf(lora_run, tmp_path, capsys):
    from ft_engine.cli import main
    out = tmp_path / "cli-out"
    assert main(["export", str(lora_run.path), "--format", "gguf", "--quant", "bf16", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert (out / f"{lora_run.run_id}-bf16.gguf").is_file() and (out / "Modelfile").is_file()
    assert "MB" in printed.out and "ollama create" in printed.err and "[100%] done" in printed.err


def test_a_full_run_exports_its_own_weights(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", _rows(None))
    run, status = train(RunConfig(model=tiny_model, data=str(data), method="full", runs_dir=str(tmp_path / "runs"),
                                  max_steps=2, batch_size=2, checkpoint_steps=0))
    assert status == Status.COMPLETED
    done = export_gguf(run, tmp_path / "out", "f16")
    back, _ = _read_back(done.gguf)
    from transformers import AutoModelForCausalLM
    trained = _rounded_to_f16(AutoModelForCausalLM.from_pretrained(run.path / "model", dtype=torch.float32).eval())
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.inference_mode():
        assert torch.allclose(back(ids).logits, trained(ids).logits, atol=1e-5, rtol=0)
    assert "SYSTEM" not in done.modelfile.read_text()


# --- refused, with nothing left behind --------------------------------------------------------------

def _copy(run, tmp_path, name="copy") -> "open_run":
    shutil.copytree(run.path, tmp_path / "runs" / name)
    return open_run(tmp_path / "runs" / name)


def _status(run, **fields):
    status = run.read_status()
    status.update(fields)
    (run.path / "status.json").write_text(json.dumps(status))


@pytest.mark.parametrize("status", ["running", "queued"])
def test_a_run_still_training_is_refused(lora_run, tmp_path, status):
    run = _copy(lora_run, tmp_path)
    _status(run, status=status)
    with pytest.raises(UserError, match=f"is {status}: export it once it has finished"):
        export_gguf(run, tmp_path / "out", "f16")
    with pytest.raises(UserError, match=f"is {status}"):
        zip_result(run, "gguf", tmp_path / "dest")
    assert not (tmp_path / "out").exists() and list((tmp_path / "dest").glob("*")) == []


def test_a_failed_run_is_refused(lora_run, tmp_path):
    run = _copy(lora_run, tmp_path)
    _status(run, status="failed")
    shutil.rmtree(run.path / "adapter")
    with pytest.raises(UserError, match="failed before saving a result; resume it or train it again"):
        export_gguf(run, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_a_llama_is_refused(lora_run, tmp_path):
    """A full run of another architecture (its config says so): refused, naming what is supported."""
    run = _copy(lora_run, tmp_path)
    model = run.path / "model"
    shutil.copytree(Path(run.read_config().model), model)
    shutil.rmtree(run.path / "adapter")
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"supports Llama-architecture models .* this run's model is Qwen2ForCausalLM"):
        export_gguf(run, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_refused_before_anything_is_written(lora_run, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "free_bytes", lambda path: 200 * 10 ** 6)
    with pytest.raises(UserError, match=r"not enough disk for the f16 GGUF: .* needed, 0.2 GB free"):
        export_gguf(lora_run, tmp_path / "out", "f16")
    monkeypatch.setattr(export, "free_bytes", lambda path: 200 * 10 ** 6)
    with pytest.raises(export.ExportDiskError, match="or pick a smaller quantization"):
        zip_result(lora_run, "gguf", tmp_path / "dest", quant="q8_0")
    assert list(tmp_path.iterdir()) == [tmp_path / "dest"] and list((tmp_path / "dest").iterdir()) == []


def test_a_write_that_fails_midway_leaves_nothing(lora_run, tmp_path, monkeypatch):
    """The disk filling up while tensors are written (simulated on the 5th): no file, no folder."""
    real, written = gguf_export._encoded, []

    def failing(array, qtype):
        written.append(1)
        if len(written) == 5:
            raise OSError(28, "No space left on device")
        return real(array, qtype)
    monkeypatch.setattr(gguf_export, "_encoded", failing)
    with pytest.raises(OSError, match="No space left"):
        export_gguf(lora_run, tmp_path / "out", "f16")
    assert list(tmp_path.iterdir()) == []


def test_q4_k_m_without_llama_cpp_says_how_to_get_it(lora_run, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "llama_cpp_available", lambda: False)
    with pytest.raises(UserError, match=r"pip install llama-cpp-python==0.3.36 .*llama-quantize"):
        export_gguf(lora_run, tmp_path / "out", "q4_k_m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quant", ["q4", "F16", "", "q8_0; rm -rf /"])
def test_an_unknown_quantization_is_refused(lora_run, tmp_path, quant):
    with pytest.raises(UserError, match="GGUF quantization must be one of f16, bf16, q8_0, q4_k_m"):
        export_gguf(lora_run, tmp_path / "out", quant)


def test_an_existing_folder_is_not_overwritten(lora_run, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists and is not empty"):
        export_gguf(lora_run, tmp_path / "out", "f16")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
