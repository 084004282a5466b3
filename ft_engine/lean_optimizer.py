"""AdamW for full fine-tuning in a small memory: bf16 weights, 8-bit state, each weight
updated inside backward as soon as its gradient is complete.

Bytes per parameter, full fine-tuning with torch's AdamW and mixed precision: 4 (fp32 master
weight) + 4 (fp32 gradient) + 8 (two fp32 moments) = 16, plus half-precision copies for the
matmuls: 22 GiB for Llama-3.2-1B. Here:

    weight    2 B   bf16 (the model runs in bf16, no autocast copies)
    moments   2 B   exp_avg and exp_avg_sq, 8-bit blockwise "dynamic" quantization
                    (bitsandbytes' scheme: 256-value blocks with an fp32 absmax each,
                    Dettmers et al., 2022, arXiv:2110.02861)
    gradient  ~0    the step runs in a post-accumulate-grad hook the moment a parameter's
                    gradient is complete, then frees it; all gradients never exist at once
                    (torchtune's optimizer-in-backward, PyTorch's "optimizer step in backward"
                    recipe)

= 4 B/param, 4.6 GiB for Llama-3.2-1B. The update itself is computed in fp32 in chunks of
CHUNK_ELEMENTS, then rounded to bf16 *stochastically* (up or down with probability equal to
the distance), so an update smaller than bf16's step (2^-8 of the weight: a 2e-5 learning
rate is far below it) still moves the weight on average instead of being rounded away
(Zamirai et al., 2020, arXiv:2010.06192). Weights kept in fp32 (precision fp32) are written
exactly.

What a step in backward cannot do: accumulate gradients over micro-batches (the config
refuses grad_accum > 1 with this optimizer), clip by the global gradient norm (no moment has
all gradients; the run's event log says clipping is off), and unscale fp16 loss scaling
(refused with precision fp16).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

import torch

# Elements updated at once: the fp32 scratch (gradient, weight, two moments, denominator,
# rounding noise) is ~6 copies of this, 24 MiB at 1M elements; large enough that the
# per-chunk call overhead is nothing beside the work, small enough to stay out of the peak
# (4M elements cost ~100 MiB more at the 1B shape's peak).
CHUNK_ELEMENTS = 1 << 20
QUANT_BLOCK = 256  # values per absmax block (bitsandbytes' blockwise optimizer block)
# Tensors smaller than this keep fp32 moments: 8-bit blocks save nothing on norms and biases,
# and the small tensors are where quantization error would matter most (bitsandbytes'
# min_8bit_size is the same 4096).
MIN_8BIT_SIZE = 4096


def _maps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import bitsandbytes.functional as bnbf
    return (bnbf.create_dynamic_map(signed=True).to(device),
            bnbf.create_dynamic_map(signed=False).to(device))


def _dequantize(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    return torch.ops.bitsandbytes.dequantize_blockwise(q, absmax, code, QUANT_BLOCK, torch.float32)


def _quantize_into(x: torch.Tensor, code: torch.Tensor, q_out: torch.Tensor, absmax_out: torch.Tensor) -> None:
    q, absmax = torch.ops.bitsandbytes.quantize_blockwise(x, code, QUANT_BLOCK)
    q_out.copy_(q)
    absmax_out.copy_(absmax)


def stochastic_round_to_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """fp32 → bf16, rounding up with probability (x − down) / (up − down). bf16 is the top 16
    bits of fp32: adding uniform noise to the 16 bits that are cut off, then cutting them,
    does exactly that. `x` is used as scratch."""
    bits = x.view(torch.int32)
    bits.add_(torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator))
    bits.bitwise_and_(-65536)  # 0xFFFF0000: the cut is exact, the cast below only drops zeros
    return x.to(torch.bfloat16)


class AdamWInBackward(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, Loshchilov & Hutter) whose per-parameter step runs in
    backward. `step()` and `zero_grad()` are there for the Trainer's loop and do nothing:
    the work happened in backward with the group's current learning rate (the scheduler
    sets it after each optimizer step, as for any optimizer).

    Parameters with ndim < 2 (norms, biases) get no weight decay, as in the Trainer's default
    grouping."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0):
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("AdamWInBackward got no trainable parameters")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        super().__init__(groups, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}
        self._seed = seed
        # per device, made on first use: the Trainer may move the model after this is built
        self._generators: dict[torch.device, torch.Generator] = {}
        self._codes: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        # The gradient norm is still measured (for the charts), one parameter at a time; it just
        # cannot clip a step that is already done.
        self._grad_squares: list[torch.Tensor] = []
        self.last_grad_norm: float | None = None
        self._hooks = [p.register_post_accumulate_grad_hook(self._update) for p in params]

    # --- what the training loop calls ------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Nothing left to do: backward updated every parameter that got a gradient."""
        loss = closure() if closure is not None else None
        if self._grad_squares:
            self.last_grad_norm = float(sum(t.to("cpu") for t in self._grad_squares)) ** 0.5
        self._grad_squares = []
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None  # already None after the hook; a frozen-then-thawed one is cleared too

    def remove_hooks(self) -> None:
        """Detach from the model (the run is over)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # --- the update, one parameter at a time -------------------------------------------------
    @torch.no_grad()
    def _update(self, p: torch.nn.Parameter) -> None:
        if p.grad is None:
            return
        group = self._group_of[p]
        state = self.state[p]
        if not state:
            self._init_state(p, state)
        state["step"] += 1
        step = state["step"]
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
        w, g = p.data.view(-1), p.grad.view(-1)
        eight_bit = "m_absmax" in state
        signed, unsigned = self._device_codes(p.device)
        generator = self._generator(p.device)
        for s in range(0, w.numel(), CHUNK_ELEMENTS):
            e = min(s + CHUNK_ELEMENTS, w.numel())
            grad = g[s:e].float()
            self._grad_squares.append(grad.square().sum())
            if eight_bit:
                bs, be = s // QUANT_BLOCK, math.ceil(e / QUANT_BLOCK)
                if step == 1:
                    m, v = torch.zeros_like(grad), torch.zeros_like(grad)
                else:
                    m = _dequantize(state["m"][s:e], state["m_absmax"][bs:be], signed)
                    v = _dequantize(state["v"][s:e], state["v_absmax"][bs:be], unsigned)
            else:
                m, v = state["m"][s:e], state["v"][s:e]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = grad  # the gradient is no longer needed: reuse its memory
            torch.sqrt(v, out=denom).div_(math.sqrt(bias2)).add_(eps)
            weight = w[s:e].float() if w.dtype != torch.float32 else w[s:e]
            if wd:
                weight.mul_(1 - lr * wd)
            weight.addcdiv_(m, denom, value=-lr / bias1)
            if w.dtype == torch.bfloat16:
                w[s:e] = stochastic_round_to_bf16(weight, generator)
            elif w.dtype != torch.float32:
                w[s:e] = weight.to(w.dtype)
            if eight_bit:
                _quantize_into(m, signed, state["m"][s:e], state["m_absmax"][bs:be])
                _quantize_into(v, unsigned, state["v"][s:e], state["v_absmax"][bs:be])
        p.grad = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def _device_codes(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._codes:
            self._codes[device] = _maps(device)
        return self._codes[device]

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        n = p.numel()
        state["step"] = 0
        if n >= MIN_8BIT_SIZE:
            blocks = math.ceil(n / QUANT_BLOCK)
            state["m"] = torch.zeros(n, dtype=torch.uint8, device=p.device)
            state["v"] = torch.zeros(n, dtype=torch.uint8, device=p.device)
            state["m_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
            state["v_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        else:
            state["m"] = torch.zeros(n, dtype=torch.float32, device=p.device)
            state["v"] = torch.zeros(n, dtype=torch.float32, device=p.device)

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["rounding_generators"] = {str(d): g.get_state() for d, g in self._generators.items()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's own load casts every floating state tensor to its parameter's dtype (the
        fp32 absmaxes and moments would become bf16): the states are restored as saved."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
            raise ValueError("the checkpoint's optimizer state is for a different set of parameters")
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        index = {i: p for saved, group in zip(saved_groups, self.param_groups)
                 for i, p in zip(saved["params"], group["params"])}
        self.state = defaultdict(dict)
        for i, s in state_dict["state"].items():
            p = index[int(i)]
            self.state[p] = {k: (v.to(p.device) if torch.is_tensor(v) else v) for k, v in s.items()}
        for device, rng_state in state_dict.get("rounding_generators", {}).items():
            self._generator(torch.device(device)).set_state(rng_state)
