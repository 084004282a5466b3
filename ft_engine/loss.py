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

# A block of fp32 logits: the softmax of a chunk (its compute-dtype logits are alive beside it,
# and then the gradient's compute-dtype copy). 64 MiB keeps the chunk at 341 tokens for a
# 49,152-word vocabulary, 130 for Llama 3's 128,256: large enough
# that the head's matmul runs at full speed on this CPU (measured: chunks of 128-1024 rows
# ran within 3% of one another on the bundled model), small beside the model's own memory.
CHUNK_LOGITS_BYTES = 64 * 1024 * 1024


def chunk_rows(vocab_size: int) -> int:
    return max(16, CHUNK_LOGITS_BYTES // (4 * vocab_size))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class LossWorkspace:
    """The chunked loss's three chunk-sized buffers (logits, their fp32 softmax, the gradient's
    compute-dtype copy), kept from chunk to chunk and pass to pass. On a CPU each of them is a
    fresh mapping from glibc when allocated anew (64 MiB is over its 32 MiB mmap threshold), so
    every chunk paid for page faults on memory it had just given back: in a profile of five
    LoRA steps on the bundled model, 40 ms for each softmax into a new fp32 chunk against 3.8 ms
    into one already touched, 5% of the step (2026-12-04). The buffers then live as long as
    their owner (the trainer), two chunks' worth of memory in half precision (64 + 2 × 32 MiB
    for a 49,152-word vocabulary): a run that puts memory first does without."""

    def __init__(self, keep: bool = True):
        self.keep = keep  # False: a new tensor every time (the loss without a workspace)
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, rows: int, capacity: int, cols: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        """A rows × cols view of the buffer `name`, made once for `capacity` rows."""
        if not self.keep:
            return torch.empty(rows, cols, dtype=dtype, device=device)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < capacity * cols or buf.dtype != dtype or buf.device != device:
            self._buffers.pop(name, None)  # the old one goes before the new one is made
            buf = self._buffers[name] = torch.empty(capacity * cols, dtype=dtype, device=device)
        return buf[:rows * cols].view(rows, cols)


class SharedHeadGradient:
    """The head's gradient handed from the loss to the tied embedding's backward (see
    `tied_embedding`) instead of through autograd.

    defer=False: the loss makes the head's gradient in its forward (as for an untied head) and
    leaves it here; it lives through the whole backward.
    defer=True: the loss keeps only the trained tokens' hidden states and targets, and the
    embedding's backward, the last step of backward, makes the head's gradient then, running
    the head once more (one extra tokens × vocabulary × hidden matmul). The vocabulary-sized
    buffer then never coexists with the activations: 0.5 GB off the peak of Llama 3.2 1B in
    bf16. Used with adamw_lean, where memory comes first."""

    def __init__(self, defer: bool = False):
        self.defer = defer
        self.grad: torch.Tensor | None = None
        self.pending: tuple | None = None  # defer: (hidden, weight, targets, dtype) of the trained tokens
        self.scale: torch.Tensor | None = None  # the loss's incoming gradient, set in its backward

    def head_gradient(self) -> torch.Tensor | None:
        """The head's full gradient (scaled), made now if it was deferred; None if the loss
        never ran backward (nothing trained in the batch)."""
        if self.scale is None:
            return None
        if self.defer:
            hidden, weight, targets, dtype = self.pending
            self.pending = None
            grad = torch.zeros(weight.shape, dtype=_grad_dtype(weight), device=weight.device)
            _head_chunks(hidden, weight.to(dtype), targets, dtype, grad_w=grad)
        else:
            grad, self.grad = self.grad, None
        return grad.mul_(self.scale.to(grad.dtype))


def _grad_dtype(weight: torch.Tensor) -> torch.dtype:
    """fp32 weights get their head gradient in fp32; half-precision weights (adamw_lean's bf16
    full fine-tune) in their own dtype, each chunk's product summed in fp32 and rounded once:
    for Llama 3's 128k × 2048 head that is 0.5 GB instead of 1 GB."""
    return torch.float32 if weight.dtype == torch.float32 else weight.dtype


def _head_chunks(hidden, w, targets, dtype, grad_h=None, grad_w=None,
                 workspace: LossWorkspace | None = None) -> torch.Tensor:
    """The summed loss of hidden·wᵀ against targets, chunk by chunk; adds ∂/∂h into grad_h
    and ∂/∂W into grad_w (unscaled) where they are given.

    Per chunk: the logits (`mm` into the chunk's buffer, as fast as `linear`: both 24.3 ms for
    341 × 576 × 49,152 in bf16 on this CPU, 2026-12-04), their softmax in fp32 (torch.softmax, in place:
    one kernel where logsumexp, subtracting it and exp took three passes and 45 + 33 + 40 ms), and
    each token's loss read from it: −log softmax[target] (equal to logsumexp − logit to 2e-6
    here). A target whose probability is below fp32's normal range (a loss above ~69) has
    its loss recomputed from the logits instead. `workspace`: the chunk-sized tensors are
    written into its buffers instead of new ones."""
    n, rows = hidden.shape[0], chunk_rows(w.shape[0])
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    workspace = workspace or _NEW_TENSORS
    with torch.autocast(hidden.device.type, enabled=False):
        for s in range(0, n, rows):
            h = hidden[s:s + rows].to(dtype)
            t = targets[s:s + rows]

            def buffer(name, dt):
                return workspace.take(name, h.shape[0], rows, w.shape[0], dt, h.device)
            logits = torch.mm(h, w.t(), out=buffer("logits", dtype))
            # The fp32 softmax computed in place on an fp32 copy of the logits (which are read
            # again below): softmax(dtype=float32) of bf16 logits makes that copy itself, in a
            # new tensor, and took 62 ms a chunk in a LoRA step against 2 + 4 ms this way
            # with kept buffers (2026-12-04).
            probs = buffer("probs", torch.float32).copy_(logits)
            probs = torch.softmax(probs, dim=-1, out=probs)
            at = torch.arange(len(t), device=t.device)
            p_target = probs[at, t]
            losses = -torch.log(p_target)
            tiny = p_target < _SMALLEST_RELIABLE_PROB
            if bool(tiny.any()):
                z = logits[tiny].float()
                losses[tiny] = torch.logsumexp(z, dim=-1) - z.gather(1, t[tiny][:, None]).squeeze(1)
            del logits
            total += losses.sum()
            if grad_h is not None or grad_w is not None:
                probs[at, t] -= 1  # ∂loss/∂z = softmax − onehot, in place of the softmax
                dz = probs if dtype == torch.float32 else buffer("dz", dtype).copy_(probs)
                del probs
                if grad_h is not None:
                    grad_h[s:s + rows] = (dz @ w).to(grad_h.dtype)
                if grad_w is not None:
                    if grad_w.dtype == torch.float32:
                        grad_w += (dz.T @ h).float()
                    else:
                        grad_w.addmm_(dz.T.to(grad_w.dtype), h.to(grad_w.dtype))
    return total


_NEW_TENSORS = LossWorkspace(keep=False)  # no workspace given: every chunk's tensors are new

# Below this a softmax probability is no longer a normal fp32 number (1.2e-38) long before it is
# 0: −log of it loses digits, so those targets' losses come from logsumexp − logit.
_SMALLEST_RELIABLE_PROB = 1e-30


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of token losses of h·Wᵀ against targets, gradients made in forward. With `shared`,
    the head's gradient goes there (or is deferred to the embedding's backward) rather than
    back through autograd."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, want_h, want_w, shared=None, workspace=None):
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if want_h else None
        defer = shared is not None and shared.defer and want_w
        # Made here, the head's gradient lives to the end of backward (see SharedHeadGradient).
        grad_w = torch.zeros(weight.shape, dtype=_grad_dtype(weight), device=weight.device) \
            if want_w and not defer else None
        total = _head_chunks(hidden, w, targets, dtype, grad_h, grad_w, workspace)
        if defer:
            shared.pending = (hidden.detach(), weight, targets, dtype)
        elif shared is not None:
            shared.grad, grad_w = grad_w, None
        ctx.shared = shared
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if ctx.shared is not None:
            ctx.shared.scale = grad_out.detach()
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        # in place: this buffer is as big as the head, and backward runs once
        gw = grad_w.mul_(grad_out.to(grad_w.dtype)).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             shared: SharedHeadGradient | None = None,
                             workspace: LossWorkspace | None = None) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens) for hidden states (..., d), the output
    head's weight (vocab, d) and targets (...) where IGNORE_INDEX marks untrained positions.
    Equal to cross_entropy(hidden @ weight.T, targets, reduction='sum') to float rounding.
    `shared`: the head's weight is the embedding's, trained through `tied_embedding`, which
    receives the head's gradient there. `workspace`: buffers reused from call to call."""
    keep = targets.reshape(-1) != IGNORE_INDEX
    h = hidden.reshape(-1, hidden.shape[-1])[keep]  # only trained positions reach the head
    t = targets.reshape(-1)[keep]
    count = int(t.numel())
    if count == 0:
        return hidden.sum() * 0.0, 0  # keeps the graph connected for a batch with nothing trained
    grad_on = torch.is_grad_enabled()
    want_h, want_w = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    if shared is not None:  # the weight's gradient goes through the embedding, not from here
        return _LinearCrossEntropy.apply(h, weight.detach(), t, _compute_dtype(h), want_h, want_w, shared,
                                         workspace), count
    return _LinearCrossEntropy.apply(h, weight, t, _compute_dtype(h), want_h, want_w, None, workspace), count


class _TiedEmbedding(torch.autograd.Function):
    """An embedding lookup whose weight is also the output head. Its backward adds the lookup's
    gradient into the head's (SharedHeadGradient) in place and returns that one buffer as the
    weight's whole gradient. Through plain autograd the two would be separate vocabulary-sized
    tensors plus their sum: three at the end of backward (1.5 GB for Llama 3's 128k × 2048 in
    bf16, 3 GB in fp32) where this keeps one."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx, shared):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.shared, ctx.shape, ctx.dtype = padding_idx, shared, weight.shape, weight.dtype
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        grad = ctx.shared.head_gradient()
        if grad is None:  # nothing trained in this batch reached the head
            grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=grad_out.device)
        idx, rows = ids.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            keep = idx != ctx.padding_idx
            idx, rows = idx[keep], rows[keep]
        grad.index_add_(0, idx, rows.to(grad.dtype))
        return None, grad, None, None


def tied_embedding(ids: torch.Tensor, embedding: torch.nn.Embedding, shared: SharedHeadGradient) -> torch.Tensor:
    """embedding(ids), for an embedding that is also the trained output head (see
    _TiedEmbedding); pass the same `shared` to linear_cross_entropy_sum."""
    return _TiedEmbedding.apply(ids, embedding.weight, embedding.padding_idx, shared)


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
