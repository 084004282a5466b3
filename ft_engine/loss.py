"""Cross-entropy over the vocabulary without ever holding tokens × vocabulary logits.

The plain loss computes logits = h·Wᵀ for every position (tokens × 49,152 for SmolLM2,
× 128,256 for Llama 3) in fp32, keeps them for backward, and makes further copies for the
softmax and its gradient: for a batch of 4,000 tokens that is 0.8 GB per copy on the bundled
model and 2 GB on Llama 3.

Here only the positions that are trained (assistant tokens; prompts have no target) go
through the output head, in chunks of CHUNK_LOGITS_BYTES of fp32 logits. Each chunk's
gradients are computed during the forward pass, as Liger's fused linear cross-entropy does:

    loss_i   = logsumexp(z_i) − z_i[t_i],       z_i = W·h_i
    ∂loss/∂z = softmax(z_i) − onehot(t_i)
    ∂/∂h_i   = (∂loss/∂z)·W,     ∂/∂W = Σ_i (∂loss/∂z)ᵀ·h_i

so backward only scales the stored ∂/∂h (tokens × hidden) and ∂/∂W (only when the head
trains, i.e. full fine-tuning). The matmuls run in the autocast dtype when autocast is on
(bf16 on CPUs with AVX512-BF16, bf16/fp16 on GPUs), the softmax always in fp32.

On CUDA, Liger's fused kernel is used where liger-kernel is installed (`fused_cuda_loss`).
"""

from __future__ import annotations

import importlib.util

import torch

from .render import IGNORE_INDEX

# Largest block of fp32 logits alive at once (plus one compute-dtype copy). 64 MiB keeps the
# chunk at 341 tokens for a 49,152-word vocabulary, 130 for Llama 3's 128,256: large enough
# that the head's matmul runs at full speed on this CPU (measured: chunks of 128-1024 rows
# ran within 3% of one another on the bundled model), small beside the model's own memory.
CHUNK_LOGITS_BYTES = 64 * 1024 * 1024


def chunk_rows(vocab_size: int) -> int:
    return max(16, CHUNK_LOGITS_BYTES // (4 * vocab_size))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of token losses of h·Wᵀ against targets, gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, want_h, want_w):
        n, rows = hidden.shape[0], chunk_rows(weight.shape[0])
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, rows):
                h = hidden[s:s + rows].to(dtype)
                t = targets[s:s + rows]
                z = (h @ w.T).float()
                lse = torch.logsumexp(z, dim=-1)
                total += (lse - z.gather(1, t[:, None]).squeeze(1)).sum()
                if want_h or want_w:
                    dz = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    dz[torch.arange(len(t), device=t.device), t] -= 1
                    dz = dz.to(dtype)
                    if want_h:
                        grad_h[s:s + rows] = (dz @ w).to(hidden.dtype)
                    if want_w:
                        grad_w += (dz.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor,
                             targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens) for hidden states (..., d), the output
    head's weight (vocab, d) and targets (...) where IGNORE_INDEX marks untrained positions.
    Equal to cross_entropy(hidden @ weight.T, targets, reduction='sum') to float rounding."""
    keep = targets.reshape(-1) != IGNORE_INDEX
    h = hidden.reshape(-1, hidden.shape[-1])[keep]  # only trained positions reach the head
    t = targets.reshape(-1)[keep]
    count = int(t.numel())
    if count == 0:
        return hidden.sum() * 0.0, 0  # keeps the graph connected for a batch with nothing trained
    grad_on = torch.is_grad_enabled()
    want_h, want_w = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    return _LinearCrossEntropy.apply(h, weight, t, _compute_dtype(h), want_h, want_w), count


def fused_cuda_loss_available(device: torch.device) -> bool:
    """Liger's fused linear cross-entropy (Triton) on CUDA, where liger-kernel is installed."""
    return device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def fused_cuda_loss_sum(hidden: torch.Tensor, weight: torch.Tensor,
                        targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    t = targets.reshape(-1)
    count = int((t != IGNORE_INDEX).sum())
    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_fn(weight, hidden.reshape(-1, hidden.shape[-1]), t), count
