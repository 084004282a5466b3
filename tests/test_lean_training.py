"""Padding-free batches and the chunked loss change how fast and how lean a step is, never
what it computes: a packed batch's loss and gradients equal the token-weighted loss of its
rows run one by one; the chunked loss equals the plain one."""

import pytest
import torch
from torch import nn

from ft_engine.config import RunConfig
from ft_engine.data import load_examples
from ft_engine.errors import ConfigError
from ft_engine.lean_trainer import LeanTrainer, causal_lm, packed_loss_sum, plain_head
from ft_engine.loss import LossWorkspace, chunk_rows, linear_cross_entropy_sum
from ft_engine.models import build_model, load_tokenizer
from ft_engine.packing import CPU_PASS_TOKENS, PackedBatch, pack_lanes, pass_budget, pass_tokens, split_passes
from ft_engine.render import IGNORE_INDEX, encode_all

# --- bin packing ------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [[500, 120, 100, 80, 60, 40, 30, 20], [7], [5, 5, 5, 5],
                                     [300, 299, 2, 1, 150, 150], list(range(1, 40))])
def test_lanes_hold_every_row_once_and_never_overflow(lengths):
    cap = max(lengths)
    lanes = pack_lanes(lengths, cap)
    assert sorted(i for lane in lanes for i in lane) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in lane) <= cap for lane in lanes)
    # best-fit decreasing never needs more than 11/9 OPT + 1 lanes; OPT >= total / cap
    assert len(lanes) <= 11 / 9 * -(-sum(lengths) // cap) + 1


def test_the_issue_example_packs_into_two_lanes():
    assert len(pack_lanes([500, 120, 100, 80, 60, 40, 30, 20], 500)) == 2


def test_a_row_over_capacity_is_refused():
    with pytest.raises(ValueError, match="longer than the lane capacity"):
        pack_lanes([10, 20], 15)


def test_collator_restarts_positions_and_masks_row_starts():
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, 4]},
            {"input_ids": [5, 6], "labels": [5, 6]},
            {"input_ids": [7, 8], "labels": [-100, 8]}]
    b = PackedBatch(pad_token_id=0)(rows)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    # the first token of every row is never a target of the row before it
    assert b["labels"].tolist() == [[-100, 2, 3, 4], [-100, 6, -100, 8]]
    assert b["shift_labels"].tolist() == [[2, 3, 4, -100], [6, -100, 8, -100]]
    assert int(b["real_tokens"]) == 8


def test_collator_padding_tail_is_a_row_of_its_own():
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5]},
            {"input_ids": [6, 7], "labels": [6, 7]}]
    b = PackedBatch(pad_token_id=9)(rows)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 9, 9, 9]]
    assert b["position_ids"].tolist()[1] == [0, 1, 0, 1, 2]
    assert b["shift_labels"].tolist()[1] == [7, -100, -100, -100, -100]
    one = PackedBatch(pad_token_id=9, single_lane=True)(rows)
    assert one["input_ids"].shape == (1, 7)


# --- packed batch == rows one by one ----------------------------------------------------------

def _rows(tiny_model, data_file):
    """Rows of different lengths (some are two or three conversations end to end) so that
    some share a lane and one lane ends in padding."""
    tok = load_tokenizer(tiny_model)
    r = [{"input_ids": e.input_ids, "labels": e.labels} for e in encode_all(load_examples(data_file), tok, 128).rows]

    def join(*parts):
        return {k: [x for p in parts for x in p[k]] for k in ("input_ids", "labels")}
    return tok, [join(r[0], r[1], r[2]), r[3], join(r[1], r[2]), r[0], r[2]]


def _training_model_and_rows(tiny_model, data_files, tmp_path, method):
    """(model in train mode, fp32 and without dropout, its tokenizer, the rows of `_rows`)."""
    cfg = RunConfig(model=tiny_model, method=method, data=str(data_files["chat"]), runs_dir=str(tmp_path),
                    lora_dropout=0.0, precision="fp32")
    model, _ = build_model(cfg)
    model.train()
    return (model, *_rows(tiny_model, data_files["chat"]))


def _sum_and_count(model, ids, labels):
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    logits = out.logits[0, :-1].float()
    target = torch.tensor(labels[1:])
    return (nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum"),
            int((target != IGNORE_INDEX).sum()))


@pytest.mark.parametrize("attention", ["sdpa", "plain"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_packed_loss_and_gradients_equal_rows_one_by_one(tiny_model, data_files, tmp_path, method, attention,
                                                         monkeypatch):
    """With sdpa, and with the CPU's plain matmul attention (cpu_attention.py, here let run in
    fp32 so that 1e-4 means something): attention never crosses rows."""
    from ft_engine import cpu_attention
    plain_calls = []
    if attention == "plain":
        monkeypatch.setattr(cpu_attention, "PLAIN_ATTENTION_DTYPES", (torch.float32,))
        real = cpu_attention._PlainAttention.apply
        monkeypatch.setattr(cpu_attention._PlainAttention, "apply", lambda *a: plain_calls.append(1) or real(*a))
    model, tok, rows = _training_model_and_rows(tiny_model, data_files, tmp_path, method)
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1, "rows of different lengths make the test meaningful"
    params = [p for p in model.parameters() if p.requires_grad]

    # reference: each row alone, no padding anywhere; token-weighted mean over the batch
    total, count = 0.0, 0
    for r in rows:
        s, n = _sum_and_count(model, r["input_ids"], r["labels"])
        total, count = total + s, count + n
    ref_loss = total / count
    ref_grads = torch.autograd.grad(ref_loss, params)

    batch = PackedBatch(tok.pad_token_id)(rows)
    assert batch["input_ids"].shape[0] < len(rows), "some rows must share a lane"
    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                              use_cache=False).last_hidden_state
    s, n = linear_cross_entropy_sum(hidden, lm.get_output_embeddings().weight, batch["shift_labels"])
    assert n == count
    packed_loss = s / n
    grads = torch.autograd.grad(packed_loss, params)
    assert abs(float(packed_loss.detach()) - float(ref_loss.detach())) < 1e-4
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-3), float((g - r).abs().max())
    assert bool(plain_calls) == (attention == "plain")


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory) -> str:
    from tiny_model import make_tiny_model
    return str(make_tiny_model(tmp_path_factory.mktemp("tied") / "model", tied=True))


@pytest.mark.parametrize("defer", [False, True])
def test_a_tied_embedding_gets_the_plain_gradient_in_one_buffer(tied_model, data_files, tmp_path, defer):
    """Full fine-tuning of a model whose head is its embedding (SmolLM2, Llama 3.2 1B): the
    packed loss hands the head's gradient to the embedding's backward (loss.tied_embedding),
    made in the loss's forward or (defer, adamw_lean) at the end of backward, and every
    gradient, the shared weight's included, equals the plain model's rows one by one."""
    from ft_engine.lean_trainer import packed_loss_sum, trains_tied_embedding
    cfg = RunConfig(model=tied_model, method="full", data=str(data_files["chat"]), runs_dir=str(tmp_path),
                    precision="fp32")
    model, _ = build_model(cfg)
    model.train()
    lm = causal_lm(model)
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight and trains_tied_embedding(lm)
    tok, rows = _rows(tied_model, data_files["chat"])
    params = list(model.parameters())
    total, count = 0.0, 0
    for r in rows:
        s, n = _sum_and_count(model, r["input_ids"], r["labels"])
        total, count = total + s, count + n
    ref_grads = torch.autograd.grad(total / count, params)

    s, n = packed_loss_sum(model, lm, PackedBatch(tok.pad_token_id)(rows), defer_head_gradient=defer)
    assert n == count
    grads = torch.autograd.grad(s / n, params)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-3), float((g - r).abs().max())


def test_with_the_cache_on_attention_would_cross_rows(tiny_model, data_files, tmp_path):
    """Why the engine runs with use_cache=False: with a cache, transformers ignores the
    packed position_ids and lets rows attend to the rows before them in the lane."""
    cfg = RunConfig(model=tiny_model, method="full", data=str(data_files["chat"]), runs_dir=str(tmp_path),
                    precision="fp32")
    model, _ = build_model(cfg)
    tok, rows = _rows(tiny_model, data_files["chat"])
    rows = rows[3:5]
    batch = PackedBatch(tok.pad_token_id, single_lane=True)(rows)
    dec = causal_lm(model).get_decoder()
    with torch.no_grad():
        off = dec(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        on = dec(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True)
    first = int((batch["position_ids"][0] == 0).nonzero()[1])  # where the second row starts
    # the first row is identical either way; the second differs only when the cache is on
    assert torch.allclose(off.last_hidden_state[0, :first], on.last_hidden_state[0, :first], atol=1e-5)
    assert not torch.allclose(off.last_hidden_state[0, first:], on.last_hidden_state[0, first:], atol=1e-3)


# --- plain matmul attention for CPU training passes (cpu_attention.py) ---------------------------

def _lane_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """The block-diagonal causal mask of lanes whose rows start where position_ids are 0."""
    row = (position_ids == 0).cumsum(1)
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return ((row[:, :, None] == row[:, None, :]) & causal)[:, None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_plain_attention_equals_sdpa_on_packed_lanes(dtype, monkeypatch):
    """Output and gradients of q, k and v equal sdpa's (fp64, key-value heads repeated) on two
    lanes, one of three rows: exactly in fp64, to bf16 rounding in bf16."""
    from ft_engine import cpu_attention
    monkeypatch.setattr(cpu_attention, "PLAIN_ATTENTION_DTYPES", (torch.bfloat16, torch.float64))
    torch.manual_seed(0)
    pos = torch.tensor([list(range(7)) + list(range(20)) + list(range(5)), list(range(32))])
    allowed = _lane_mask(pos)
    q = torch.randn(2, 6, 32, 16, dtype=torch.float64)  # 6 query heads over 2 key-value heads
    k, v = torch.randn(2, 2, 32, 16, dtype=torch.float64), torch.randn(2, 2, 32, 16, dtype=torch.float64)
    grad = torch.randn(2, 32, 6, 16, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = nn.functional.scaled_dot_product_attention(leaves[0], leaves[1].repeat_interleave(3, 1),
                                                     leaves[2].repeat_interleave(3, 1), attn_mask=allowed,
                                                     scale=0.3).transpose(1, 2)
    ref_grads = torch.autograd.grad(ref, leaves, grad)
    module = nn.Module().train()
    mine = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out, weights = cpu_attention.padding_free_cpu_attention(module, *mine, allowed, scaling=0.3)
    assert weights is None and out.shape == ref.shape and out.dtype == dtype
    grads = torch.autograd.grad(out, mine, grad.to(dtype))
    tolerance = 1e-12 if dtype == torch.float64 else 2 ** -6
    for got, want in ((out, ref), *zip(grads, ref_grads)):
        assert (got.double() - want).abs().max() <= tolerance * want.abs().max()


def test_plain_attention_takes_bf16_training_passes_up_to_its_width_and_sdpa_the_rest(monkeypatch):
    from ft_engine import cpu_attention
    calls = []
    monkeypatch.setattr(cpu_attention, "sdpa_attention_forward", lambda *a, **k: (calls.append("sdpa"), None))
    real = cpu_attention._PlainAttention.apply
    monkeypatch.setattr(cpu_attention._PlainAttention, "apply", lambda *a: calls.append("plain") or real(*a))
    module = nn.Module()

    def route(length, dtype=torch.bfloat16, keys=None, training=True, grad=True, mask=None):
        module.train(training)
        q = torch.randn(1, 4, length, 8, dtype=dtype)
        k = torch.randn(1, 2, keys or length, 8, dtype=dtype)
        with torch.set_grad_enabled(grad):
            cpu_attention.padding_free_cpu_attention(module, q, k, k.clone(), mask, scaling=0.3)
        return calls.pop()

    widest = cpu_attention.PLAIN_ATTENTION_MAX_LEN
    assert route(16) == route(widest) == "plain"
    assert route(widest + 1) == "sdpa"  # longer lanes: the flash kernel is faster and keeps less
    assert route(16, torch.float32) == "sdpa"
    assert route(1, keys=16) == "sdpa"  # generation with a cache
    assert route(16, training=False) == route(16, grad=False) == "sdpa"
    additive = torch.zeros(1, 1, 16, 16).masked_fill_(~torch.ones(16, 16, dtype=torch.bool).tril(), -1e9)
    assert route(16, mask=additive) == "plain"


def test_models_train_on_a_cpu_with_the_plain_attention_and_on_gpus_with_sdpa_or_flash(monkeypatch):
    from ft_engine import models
    from ft_engine.cpu_attention import CPU_TRAINING_ATTENTION
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    assert models.attention_implementation(torch.bfloat16) == CPU_TRAINING_ATTENTION
    assert models.attention_implementation(torch.float32) == CPU_TRAINING_ATTENTION  # fp32 passes: sdpa


# --- chunked loss == plain loss -----------------------------------------------------------------

@pytest.mark.parametrize("head_trains", [False, True])
def test_chunked_loss_and_gradients_equal_the_plain_loss(head_trains, monkeypatch):
    monkeypatch.setattr("ft_engine.loss.CHUNK_LOGITS_BYTES", 4 * 1000 * 7)  # 7 rows a chunk: many chunks
    assert chunk_rows(1000) == 16  # floor of 16 rows
    torch.manual_seed(0)
    hidden = torch.randn(3, 37, 24, dtype=torch.float64).float().requires_grad_(True)
    weight = (0.3 * torch.randn(1000, 24)).requires_grad_(head_trains)
    targets = torch.randint(0, 1000, (3, 37))
    targets[0, :5] = IGNORE_INDEX
    targets[2, -9:] = IGNORE_INDEX

    s, n = linear_cross_entropy_sum(hidden, weight, targets)
    loss = s / n
    wanted = [hidden] + ([weight] if head_trains else [])
    grads = torch.autograd.grad(loss, wanted)

    plain = nn.functional.cross_entropy((hidden @ weight.T).reshape(-1, 1000), targets.reshape(-1),
                                        ignore_index=IGNORE_INDEX)
    plain_grads = torch.autograd.grad(plain, wanted)
    assert n == int((targets != IGNORE_INDEX).sum())
    assert abs(float(loss) - float(plain)) < 1e-5
    for g, p in zip(grads, plain_grads):
        assert torch.allclose(g, p, atol=1e-5), float((g - p).abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunked_loss_with_a_workspace_equals_it_without_and_reuses_its_buffers(dtype, monkeypatch):
    """The trainer's LossWorkspace: the same loss and gradients bit for bit, over several calls
    of different lengths (a short last chunk, a short call), the buffers made once."""
    monkeypatch.setattr("ft_engine.loss.CHUNK_LOGITS_BYTES", 4 * 1000 * 20)  # 20 rows a chunk
    torch.manual_seed(3)
    weight = 0.3 * torch.randn(1000, 24)
    workspace, made = LossWorkspace(), set()
    for tokens in (57, 13, 40):  # 3 chunks (the last one short), 1 short one, 2 whole ones
        hidden = torch.randn(tokens, 24).requires_grad_(True)
        targets = torch.randint(0, 1000, (tokens,))
        results = []
        for ws in (None, workspace):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                s, n = linear_cross_entropy_sum(hidden, weight, targets, workspace=ws)
            results.append((s.detach(), torch.autograd.grad(s, hidden)[0]))
        (s0, g0), (s1, g1) = results
        assert torch.equal(s0, s1) and torch.equal(g0, g1)
        made |= {b.data_ptr() for b in workspace._buffers.values()}
    names = {"logits", "probs"} | ({"dz"} if dtype == torch.bfloat16 else set())
    assert set(workspace._buffers) == names
    assert len(made) == len(names)  # never made again
    assert all(b.numel() == 20 * 1000 for b in workspace._buffers.values())


def test_the_trainer_keeps_loss_buffers_on_a_cpu_unless_memory_comes_first():
    from ft_engine.forecast.estimate import keeps_loss_workspace
    assert keeps_loss_workspace(RunConfig(method="lora"), "cpu")
    assert not keeps_loss_workspace(RunConfig(method="lora", activation_checkpointing=True), "cpu")
    assert not keeps_loss_workspace(RunConfig(method="full", optimizer="adamw_lean"), "cpu")
    assert not keeps_loss_workspace(RunConfig(method="lora"), "cuda")


def test_chunked_loss_under_bf16_autocast_stays_close():
    torch.manual_seed(1)
    hidden = torch.randn(200, 32, requires_grad=True)
    weight = 0.2 * torch.randn(500, 32)
    targets = torch.randint(0, 500, (200,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, n = linear_cross_entropy_sum(hidden, weight, targets)
    plain = nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert s.dtype == torch.float32
    assert abs(float(s) - float(plain)) / float(plain) < 1e-2


@pytest.mark.parametrize("kept_buffers", [False, True])
def test_chunked_loss_of_very_unlikely_targets_is_exact(kept_buffers):
    """Targets far below fp32's smallest normal probability (losses of 100-2,000): read from the
    softmax they would be inf or lose digits; the loss must still be the plain one."""
    torch.manual_seed(2)
    hidden = torch.randn(40, 16)
    weight = torch.randn(300, 16)
    targets = torch.randint(0, 300, (40,))
    hidden[:10] *= 60  # logits in the hundreds: most targets get a probability of e^-100 or less
    s, n = linear_cross_entropy_sum(hidden, weight, targets, workspace=LossWorkspace() if kept_buffers else None)
    plain = nn.functional.cross_entropy(hidden.double() @ weight.double().T, targets, reduction="sum")
    assert float(plain) > 1000 and torch.isfinite(s)
    assert abs(float(s) - float(plain)) / float(plain) < 1e-6


def test_a_batch_with_nothing_trained_gives_zero_loss_and_a_graph():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    s, n = linear_cross_entropy_sum(hidden, torch.randn(11, 8), torch.full((2, 5), IGNORE_INDEX))
    assert n == 0 and float(s) == 0.0
    s.backward()
    assert hidden.grad is not None


def test_heads_with_extras_take_the_models_own_loss(tiny_model, data_files, tmp_path):
    cfg = RunConfig(model=tiny_model, method="full", data=str(data_files["chat"]), runs_dir=str(tmp_path))
    model, _ = build_model(cfg)
    assert plain_head(model)
    model.config.final_logit_softcapping = 30.0
    assert not plain_head(model)


def test_lean_trainer_is_the_engines_trainer():
    from ft_engine import training
    assert training.LeanTrainer is LeanTrainer


# --- LoRA dropout fused into A (CPU) ------------------------------------------------------------

def test_fused_dropout_matches_dropout_then_matmul(monkeypatch):
    from ft_engine import fast_dropout
    torch.manual_seed(0)
    x = torch.randn(3, 10, 16, requires_grad=True)
    a = nn.Linear(16, 4, bias=False)
    keep = torch.rand(3, 10, 16) > 0.3
    monkeypatch.setattr(fast_dropout, "keep_mask", lambda shape, p: keep.numpy())
    fused = fast_dropout.DroppedLinear(a, 0.3)
    assert fused.weight is a.weight
    y = fused(x)
    gx, gw = torch.autograd.grad(y.square().sum(), [x, a.weight])
    ref = (torch.where(keep, x / 0.7, 0)) @ a.weight.T
    rx, rw = torch.autograd.grad(ref.square().sum(), [x, a.weight])
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.allclose(gx, rx, atol=1e-5) and torch.allclose(gw, rw, atol=1e-5)
    fused.eval()
    assert torch.equal(fused(x), a(x))  # no dropout outside training


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_fused_dropout_under_bf16_autocast_matches_dropout_then_matmul(monkeypatch, x_dtype):
    """As the engine runs it on a CPU with AVX512-BF16: fp32 adapter weights, autocast to
    bf16, inputs in bf16 (a bf16 base) or fp32, and a non-contiguous input."""
    from ft_engine import fast_dropout
    torch.manual_seed(0)
    x = torch.randn(16, 3, 24, dtype=x_dtype).transpose(0, 1).requires_grad_()
    a = nn.Linear(24, 4, bias=False)
    keep = torch.rand(x.shape) > 0.25
    monkeypatch.setattr(fast_dropout, "keep_mask", lambda shape, p: keep.numpy())
    fused = fast_dropout.DroppedLinear(a, 0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused(x)
        ref = nn.functional.linear(torch.where(keep, x / 0.75, 0), a.weight)
    assert y.dtype == ref.dtype == torch.bfloat16
    g = torch.randn(y.shape, dtype=torch.bfloat16)
    gx, gw = torch.autograd.grad(y, [x, a.weight], g)
    rx, rw = torch.autograd.grad(ref, [x, a.weight], g)
    assert gx.dtype == x_dtype and gw.dtype == torch.float32
    assert (gx[~keep] == 0).all()  # dropped inputs get no gradient
    for got, want in ((y, ref), (gx, rx), (gw, rw)):  # bf16 rounding: two ulps of the largest value
        assert (got.float() - want.float()).abs().max() <= 2 ** -6 * want.float().abs().max()


def test_fused_dropout_keeps_one_minus_p_and_follows_the_torch_seed():
    from ft_engine.fast_dropout import keep_mask
    torch.manual_seed(5)
    m1 = keep_mask(torch.Size([400, 500]), 0.05)
    torch.manual_seed(5)
    m2 = keep_mask(torch.Size([400, 500]), 0.05)
    assert (m1 == m2).all()
    assert abs(m1.mean() - 0.95) < 0.003  # 200,000 draws: 6 standard deviations
    assert not (keep_mask(torch.Size([400, 500]), 0.05) == m1).all()


def test_fused_dropout_is_used_on_cpu_and_adapters_save_as_peft(tiny_model, data_files, tmp_path):
    from ft_engine.fast_dropout import DroppedLinear
    cfg = RunConfig(model=tiny_model, method="lora", data=str(data_files["chat"]), runs_dir=str(tmp_path),
                    lora_dropout=0.1)
    model, _ = build_model(cfg)
    fused = [m for m in model.modules() if isinstance(m, DroppedLinear)]
    assert len(fused) == 2 * 7  # every adapter of the 2-layer tiny model
    keys = model.state_dict().keys()
    assert any(k.endswith("lora_A.default.weight") for k in keys)
    model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len([k for k in saved if "lora_A" in k]) == 14
    no_dropout, _ = build_model(cfg.replace(lora_dropout=0.0))
    assert not any(isinstance(m, DroppedLinear) for m in no_dropout.modules())


# --- what the engine decides on a (simulated) GPU ------------------------------------------------

def test_adamw_is_fused_on_cuda_only():
    from ft_engine.training import trainer_optimizer
    assert trainer_optimizer("adamw_torch", cuda=True) == "adamw_torch_fused"
    assert trainer_optimizer("adamw_torch", cuda=False) == "adamw_torch"
    assert trainer_optimizer("adamw_8bit", cuda=True) == "adamw_bnb_8bit"


def test_flash_attention_only_on_cuda_with_flash_attn_in_half_precision(monkeypatch):
    import importlib.util

    from ft_engine import models
    real = importlib.util.find_spec
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    assert models.attention_implementation(torch.bfloat16) == "flash_attention_2"
    assert models.attention_implementation(torch.float32) == "sdpa"
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    assert models.attention_implementation(torch.bfloat16) == "sdpa"  # a GPU without flash-attn


def test_precision_auto_follows_the_cpus_bf16_instructions(monkeypatch):
    from ft_engine import models
    from ft_engine.forecast import estimate
    cfg = RunConfig()
    for native, wanted in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr("ft_engine.hardware.cpu_has_native_bf16", lambda: native)
        assert models.resolve_precision(cfg) == wanted
        assert estimate.resolve_precision(cfg, "cpu") == wanted
    assert models.resolve_precision(cfg.replace(precision="fp32")) == "fp32"


def test_cpu_bf16_flag_is_read_from_cpuinfo(monkeypatch, tmp_path):
    from ft_engine import hardware
    real_path = hardware.Path
    for flags, wanted in (("fpu sse avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True),
                          ("fpu sse avx2 avx512f", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(hardware, "Path", lambda p: real_path(info) if p == "/proc/cpuinfo" else real_path(p))
        hardware.cpu_has_native_bf16.cache_clear()
        assert hardware.cpu_has_native_bf16() is wanted
    hardware.cpu_has_native_bf16.cache_clear()


def test_qlora_from_a_local_folder_is_read_not_mapped(tiny_model, data_files, tmp_path, monkeypatch):
    """A local checkpoint is read tensor by tensor with pread for QLoRA (models.read_not_mapped),
    so the file never stays resident while it is quantized; the 4-bit model is bit-identical to
    the one transformers' own memory-mapped loading makes."""
    from transformers import AutoModelForCausalLM

    from ft_engine import models
    cfg = RunConfig(model=tiny_model, method="qlora", data=str(data_files["chat"]), runs_dir=str(tmp_path),
                    precision="fp32")
    opened = []
    real = models.read_not_mapped

    def spy(files):
        opened.extend(files)
        return real(files)
    monkeypatch.setattr(models, "read_not_mapped", spy)
    ours = models.load_base_model(cfg, torch.float32, quantization=models.bnb_config(cfg))
    assert opened and all(f.suffix == ".safetensors" for f in opened)
    theirs = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                                  quantization_config=models.bnb_config(cfg), device_map={"": "cpu"})
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert any(v.dtype == torch.uint8 for v in a.values())  # really quantized
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- a batch in several passes == the batch in one --------------------------------------------

def test_passes_are_whole_lanes_within_budget_and_padded_to_the_quantum():
    rows = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in (40, 30, 20, 9, 5, 3)]
    batch = PackedBatch(pad_token_id=0)(rows)
    assert batch["lane_tokens"].tolist() == [40, 39, 28]  # [40] [30 9] [20 5 3]
    passes = split_passes(batch, budget=64, pad_token_id=0, quantum=16)
    assert [p["input_ids"].shape for p in passes] == [(1, 48), (1, 48), (1, 32)]  # 2 x 48 > 64
    assert sum(int(p["real_tokens"]) for p in passes) == int(batch["real_tokens"]) == 107
    assert sum(int((p["shift_labels"] != IGNORE_INDEX).sum()) for p in passes) == \
        int((batch["shift_labels"] != IGNORE_INDEX).sum())
    for p in passes:  # the padding added is a row of its own that nothing trains on
        assert (p["shift_labels"][:, 40:] == IGNORE_INDEX).all() and (p["labels"][:, 40:] == IGNORE_INDEX).all()
    assert passes[0]["position_ids"][0, 40:].tolist() == list(range(8))
    wide = split_passes(batch, budget=1000, pad_token_id=0, quantum=16)
    assert len(wide) == 1 and wide[0]["input_ids"].shape == (3, 48)
    tiny = split_passes(batch, budget=1, pad_token_id=0, quantum=1)  # a lane is never cut
    assert [p["input_ids"].shape[1] for p in tiny] == [40, 39, 28]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradients_summed_over_passes_equal_the_whole_batch(tiny_model, data_files, tmp_path, method):
    model, tok, rows = _training_model_and_rows(tiny_model, data_files, tmp_path, method)
    params = [p for p in model.parameters() if p.requires_grad]
    lm = causal_lm(model)
    batch = PackedBatch(tok.pad_token_id)(rows)
    whole, n = packed_loss_sum(model, lm, batch)
    ref_grads = torch.autograd.grad(whole / n, params)
    passes = split_passes(batch, budget=1, pad_token_id=tok.pad_token_id, quantum=8)
    assert len(passes) == batch["input_ids"].shape[0] > 1
    grads, loss = [torch.zeros_like(p) for p in params], 0.0
    for part in passes:
        s, _ = packed_loss_sum(model, lm, part)
        loss += float(s.detach()) / n
        for g, d in zip(grads, torch.autograd.grad(s / n, params)):
            g += d
    assert abs(loss - float(whole) / n) < 1e-5
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4), float((g - r).abs().max())


def test_training_in_passes_follows_training_in_one_pass(tiny_model, data_files, tmp_path, monkeypatch):
    """Through the engine's trainer: the same steps, the same losses and gradient norms,
    whether a batch goes through in one pass or a lane at a time."""
    from ft_engine import lean_trainer
    from ft_engine.training import train
    counts = []

    def counted(*args, **kwargs):
        out = split_passes(*args, **kwargs)
        counts.append(len(out))
        return out
    monkeypatch.setattr(lean_trainer, "split_passes", counted)
    logs = {}
    for budget in (1, 100_000):
        cfg = RunConfig(model=tiny_model, method="lora", data=str(data_files["chat"]), lora_dropout=0.0,
                        runs_dir=str(tmp_path / str(budget)), max_steps=3, batch_size=8, precision="fp32",
                        tokens_per_pass=budget, checkpoint_steps=0)
        run, status = train(cfg)
        assert status.value == "completed", run.read_status()
        logs[budget] = [m for m in run.read_metrics() if "loss" in m and "step" in m]
    assert max(counts[:3]) > 1 and counts[3:] == [1, 1, 1], counts  # budget 1 did split; 100,000 did not
    assert len(logs[1]) == len(logs[100_000]) == 3
    for a, b in zip(logs[1], logs[100_000]):
        assert a["tokens_seen"] == b["tokens_seen"]
        assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4


def test_pass_budget_auto_is_512_on_cpu_whole_batch_on_gpu_and_never_split_for_adamw_lean():
    assert pass_budget(0, "cpu", step_in_backward=False) == CPU_PASS_TOKENS
    assert pass_budget(0, "cuda", step_in_backward=False) is None
    assert pass_budget(2048, "cuda", step_in_backward=False) == 2048
    assert pass_budget(0, "cpu", step_in_backward=True) is None
    assert pass_tokens(None, 512, 3000) == 3000
    assert pass_tokens(512, 300, 3000) == 512 and pass_tokens(512, 700, 3000) == 704
    assert pass_tokens(512, 100, 200) == 224  # a batch smaller than the budget: itself, rounded (packing.pass_width)


def test_tokens_per_pass_is_checked():
    with pytest.raises(ConfigError, match="tokens_per_pass must be >= 0"):
        RunConfig(data="x", tokens_per_pass=-1).validate(check_paths=False)
    with pytest.raises(ConfigError, match="set tokens_per_pass to 0"):
        RunConfig(data="x", method="full", optimizer="adamw_lean", tokens_per_pass=512).validate(check_paths=False)


def test_forecast_counts_one_pass_of_activations():
    from ft_engine.forecast.constants import DEFAULTS
    from ft_engine.forecast.estimate import forecast
    one = forecast(RunConfig(batch_size=8, tokens_per_pass=100_000), device="cpu", seq_len=512, tokens_per_batch=3000)
    passes = forecast(RunConfig(batch_size=8), device="cpu", seq_len=512, tokens_per_batch=3000)
    assert one.details["tokens_per_pass"] == 3008 and passes.details["tokens_per_pass"] == 512
    ratio = passes.components["activations"] / one.components["activations"]
    expected = 512 / 3008 * (1 + DEFAULTS.cpu_pass_widths_retained)  # what several widths leave behind
    assert expected * 0.9 < ratio < expected * 1.1


def test_models_are_built_one_at_a_time(monkeypatch):
    """from_pretrained sets torch's process-wide default dtype while it builds: a chat's fp32
    load must not run while a run's bf16 base is being built (models.model_build_lock)."""
    import threading

    from ft_engine import models
    inside, release, order = threading.Event(), threading.Event(), []

    def slow_load(config, dtype, quantization=None, device=None):
        order.append(("start", dtype))
        if dtype == torch.bfloat16:
            inside.set()
            assert release.wait(10)
        order.append(("end", dtype))
    monkeypatch.setattr(models, "_load_base_model", slow_load)
    first = threading.Thread(target=models.load_base_model, args=(RunConfig(), torch.bfloat16))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=models.load_base_model, args=(RunConfig(), torch.float32))
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second build must wait for the first"
    release.set()
    first.join(10)
    second.join(10)
    assert order == [("start", torch.bfloat16), ("end", torch.bfloat16), ("start", torch.float32), ("end", torch.float32)]


def test_pass_widths_pad_short_passes_by_little_and_keep_few_shapes():
    """Widths round to a quarter of the power of two below them (16 to PASS_WIDTH_QUANTUM): a
    short pass is padded by at most a quarter, and the widths from 44 to 704 are few."""
    from ft_engine.packing import PASS_WIDTH_QUANTUM, pass_width
    assert [pass_width(w) for w in (44, 62, 80, 119, 130, 300, 500, 700)] == [48, 64, 80, 128, 160, 320, 512, 704]
    widths = {pass_width(w) for w in range(44, 705)}
    assert all(w % 16 == 0 for w in widths) and len(widths) <= 20
    for w in range(16, 705):
        assert w <= pass_width(w) < w + max(16, min(PASS_WIDTH_QUANTUM, w // 4) + 1)
