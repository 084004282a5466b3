"""Attention for the padding-free passes of training on a CPU: plain matmuls and a softmax
where that beats PyTorch's CPU flash kernel, which is everywhere but the longest lanes.

A pass (packing.py) is a few lanes of concatenated rows under a block-diagonal causal mask.
PyTorch's CPU flash kernel computes every query-key pair of a lane and masks the rest away,
in small blocks (queries in blocks of 32 below 192 tokens, 64 above), at about a quarter of
the rate the same CPU's bf16 matmuls reach. Scores as one matmul per key-value head, the
mask, a softmax and a second matmul do the same work at matmul speed: on the passes of the
vs_trl LoRA workload (bench/vs_trl.py; bundled model, 9 heads of 64, 3 key-value heads)
forward and backward of one layer took 147 ms with the faster of the two against 224 ms with
flash alone, the plain form winning on every pass up to 448 tokens wide and flash on lanes of
512 (measured on this 2-core CPU, 2026-12-04, each shape timed alone). What the plain form
costs is memory: it keeps the attention probabilities for backward, B × heads × L² bf16
values a layer, where flash keeps one number a query (forecast: `attention_probs_bytes`).

    y = softmax(scale · Q Kᵀ + mask) V      (computed per key-value head: the query heads that
                                             share it are stacked, so K and V are never copied)

Backward is written out (`_PlainAttention.backward`) so that only the bf16 probabilities are
kept, not also the fp32 softmax autograd would keep: with P the probabilities and dY the
output's gradient, dV = Pᵀ dY, dP = dY Vᵀ, dS = P ⊙ (dP − rowsum(dY ⊙ Y)), dQ = scale · dS K,
dK = scale · dSᵀ Q (rowsum(dP ⊙ P) = rowsum(dY ⊙ Y), the identity flash attention uses).

The scores are matmul outputs in bf16, as in transformers' eager attention; the softmax runs
in fp32. Anything else (fp32, a cache, a query shorter than its keys, a lane wider than
PLAIN_ATTENTION_MAX_LEN, evaluation without gradients) goes to transformers' own sdpa.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# The name models are built with (models.attention_implementation) on a CPU.
CPU_TRAINING_ATTENTION = "padding_free_cpu"
# Widest pass (tokens per lane) that takes the plain form. On the vs_trl LoRA workload's passes
# the plain form ran 1.5-2.6× faster than flash from 48 to 448 tokens (448: 5.7-6.4 ms against
# 9.4-10.2 for a layer's forward and backward; 384: 4.6-4.8 against 7.5-7.9 but once 8.7
# against 7.0) and 0.2-0.6× at 512 (22-58 ms against 12-14): the fp32 scores of a 512-token
# lane, 9.4 MB a layer, no longer stay in this CPU's cache (measured 2026-12-04, /tmp probe of
# the passes split_passes makes from that workload, each timed alone).
PLAIN_ATTENTION_MAX_LEN = 448
# Compute dtypes that take it: measured in bf16 only (fp32 matmuls run at a fifth of bf16's rate
# here, and fp32 training is where exactness comes first).
PLAIN_ATTENTION_DTYPES = (torch.bfloat16,)


class _PlainAttention(torch.autograd.Function):
    """softmax(scale · Q Kᵀ + mask) V for q (B, H, L, D) and k, v (B, Hkv, L, D), H a multiple
    of Hkv; `allowed` (B or 1, 1, L, L) is True where a query may attend to a key."""

    @staticmethod
    def forward(ctx, q, k, v, allowed, scale):
        batch, heads, length, dim = q.shape
        kv_heads = k.shape[1]
        # the query heads of one key-value head, stacked: (B, Hkv, H/Hkv · L, D); the scale goes
        # on Q (L × D values) rather than on the scores (L × L)
        qg = (q * scale).reshape(batch, kv_heads, heads // kv_heads * length, dim)
        scores = torch.matmul(qg, k.transpose(-1, -2)).view(batch, heads, length, length)
        # bf16 in, fp32 inside the kernel, bf16 out: no fp32 copy of the scores is made (a fresh
        # multi-MB tensor a layer costs its page faults, loss.LossWorkspace says how much)
        probs = torch.softmax(scores.masked_fill_(~allowed, float("-inf")), dim=-1)
        out = torch.matmul(probs.view(batch, kv_heads, -1, length), v).view(batch, heads, length, dim)
        ctx.save_for_backward(qg, k, v, probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qg, k, v, probs = ctx.saved_tensors
        batch, kv_heads, rows, dim = qg.shape
        length = k.shape[2]
        g = grad_out.contiguous().view(batch, kv_heads, rows, dim)
        p = probs.view(batch, kv_heads, rows, length)
        grad_v = torch.matmul(p.transpose(-1, -2), g)
        # dS = P ⊙ (dP − rowsum(dP ⊙ P)) in one kernel that computes in fp32 and stores bf16
        grad_s = torch._softmax_backward_data(torch.matmul(g, v.transpose(-1, -2)), p, -1, p.dtype)
        grad_q = torch.matmul(grad_s, k).mul_(ctx.scale).view(grad_out.shape)
        grad_k = torch.matmul(grad_s.transpose(-1, -2), qg)  # qg holds the scale already
        return grad_q, grad_k, grad_v, None, None


def takes_plain_form(query: torch.Tensor, key: torch.Tensor, training: bool) -> bool:
    """Whether a call goes the plain way: training on a CPU in bf16, self-attention over a lane
    no wider than PLAIN_ATTENTION_MAX_LEN (a cache or a single query goes to sdpa)."""
    length = query.shape[2]
    return (training and torch.is_grad_enabled() and query.device.type == "cpu"
            and query.dtype in PLAIN_ATTENTION_DTYPES and key.dtype == query.dtype
            and key.shape[2] == length and 1 < length <= PLAIN_ATTENTION_MAX_LEN and query.shape[1] % key.shape[1] == 0)


def padding_free_cpu_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                               value: torch.Tensor, attention_mask: torch.Tensor | None,
                               dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention interface: (B, L, H, D) output and no weights, as sdpa's."""
    if dropout or not takes_plain_form(query, key, module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    length = query.shape[2]
    if attention_mask is None:  # transformers leaves out a plain causal mask (one row, no padding)
        allowed = torch.ones(length, length, dtype=torch.bool, device=query.device).tril_()[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:  # an additive mask: 0 where allowed
        allowed = attention_mask == 0
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _PlainAttention.apply(query.contiguous(), key.contiguous(), value.contiguous(), allowed, scale)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(CPU_TRAINING_ATTENTION, padding_free_cpu_attention)
# masks as sdpa's: a boolean block-diagonal causal mask for packed lanes, or None for one row
AttentionMaskInterface.register(CPU_TRAINING_ATTENTION, sdpa_mask)
