"""Why passes are padded to a multiple of packing.PASS_WIDTH_QUANTUM: memory that every new
matrix shape leaves behind.

One process loads the bundled model with LoRA (bf16 autocast, the engine's loss) and runs
forward + backward on one lane at a time, --passes times, printing the process's RSS every 10
passes. `vary`: widths drawn uniformly from 44..512 (what lanes of real instruction data look
like); `round`: the same widths rounded up to --quantum; `fixed`: always 400. With `vary` the
RSS keeps growing (oneDNN keeps kernels and buffers per shape; the allocator keeps
fragments); with `round` it levels off once every rounded width has been seen.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/pass_shapes.py vary
    HF_HUB_OFFLINE=1 .venv/bin/python bench/pass_shapes.py round --quantum 64

2026-12-02, 2-core CPU: vary 1,708 → 2,932 MiB over 80 passes; round (64) 1,620-1,750 MiB
over 60; fixed 1,400-1,440 MiB over 40.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("vary", "round", "fixed"))
    p.add_argument("--passes", type=int, default=80)
    p.add_argument("--quantum", type=int, default=64)
    args = p.parse_args()

    import psutil
    import torch

    from ft_engine.config import RunConfig
    from ft_engine.lean_trainer import causal_lm, packed_loss_sum
    from ft_engine.models import build_model

    model, _ = build_model(RunConfig(batch_size=8, max_seq_len=512, precision="bf16"))
    model.train()
    lm, rng, proc, t0 = causal_lm(model), random.Random(0), psutil.Process(), time.perf_counter()
    for i in range(args.passes):
        width = 400 if args.mode == "fixed" else rng.randint(44, 512)
        if args.mode == "round":
            width = -(-width // args.quantum) * args.quantum
        ids = torch.randint(0, 1000, (1, width))
        batch = {"input_ids": ids, "position_ids": torch.arange(width)[None], "shift_labels": ids}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, n = packed_loss_sum(model, lm, batch)
        (loss / n).backward()
        if i % 10 == 9:
            print(f"pass {i + 1:4d}  width {width:4d}  RSS {proc.memory_info().rss / 2**20:7,.0f} MiB  "
                  f"{time.perf_counter() - t0:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
