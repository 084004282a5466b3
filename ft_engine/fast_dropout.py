"""LoRA's dropout with keep-masks drawn by numpy's PCG64 instead of torch's CPU generator.

peft drops out the input of every adapter, seven per block with all-linear targets, and on a
CPU torch draws each mask element from a single-threaded Mersenne Twister: on the bundled
model that was a quarter of a bf16 LoRA step (torch.profiler: aten::bernoulli_ 0.85 s of
3.56 s, 210 calls). numpy's PCG64 makes the same mask about three times faster (1,600 × 576
bf16 input: 2.1 ms for the mask vs 6-8 ms for torch's dropout, measured here).

The maths is dropout's: each element kept with probability 1 − p and scaled by 1 / (1 − p).
p is resolved to 1/65,536 (uint16 draws). Each call seeds its generator from torch's, so
torch.manual_seed (the Trainer's seed, and the RNG state restored on resume) still decides
every mask. Used on CPU only: CUDA's dropout kernel is already fast.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_LEVELS = 65536  # uint16 draws


class FastDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * _LEVELS)  # drop when the draw is below this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        seed = int(torch.randint(0, 2**62, ()))  # from torch's generator: seeded runs repeat
        rng = np.random.Generator(np.random.PCG64(seed))
        draws = np.frombuffer(rng.bytes(2 * x.numel()), dtype=np.uint16)
        keep = torch.from_numpy(draws >= self.threshold).view(x.shape)
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace the dropout of every LoRA adapter in `model` (peft's lora_dropout ModuleDicts)
    with FastDropout of the same p; returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, drop in list(drops.items()):
                if isinstance(drop, nn.Dropout) and drop.p > 0:
                    drops[name] = FastDropout(drop.p)
                    replaced += 1
    return replaced
