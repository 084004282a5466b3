"""Which attention serves the engine's training passes on a CPU: sdpa (PyTorch's CPU flash
kernel) or cpu_attention.py's plain matmul form for passes up to PLAIN_ATTENTION_MAX_LEN wide?

The engine's own LoRA step, outside the Trainer: the bundled model built by `build_model`
(bf16 where this CPU has it, dropout fused into A), the first 80 rows of the instruction set
(bench/instruct_data.py) in batches of 8 made by the engine's collator and cut into passes of
512 token slots (packing.split_passes), the chunked loss and backward; the optimizer steps
with a learning rate of 0, so every epoch computes the same thing. The two attentions take
turns, epoch by epoch, in one process: this machine's speed drifts by ±15% over minutes, and
alternating epochs sees both through the same drift. The first epoch of each is left out
(first-touch of every pass shape).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/attention_probe.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/attention_probe.py --epochs 5 --max-len 512
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = "/tmp/ft-bench/stdlib_instruct.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4, help="epochs per attention; the first of each is left out")
    p.add_argument("--rows", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=None,
                   help="widest pass for the plain form (default: cpu_attention.PLAIN_ATTENTION_MAX_LEN)")
    p.add_argument("--data", default=DEFAULT_DATA)
    args = p.parse_args()
    if not Path(args.data).is_file():
        subprocess.run([sys.executable, str(ROOT / "bench" / "instruct_data.py"), "--out", args.data], check=True)

    import torch

    from ft_engine import cpu_attention
    from ft_engine.config import RunConfig
    from ft_engine.data import load_examples
    from ft_engine.lean_trainer import causal_lm, packed_loss_sum
    from ft_engine.loss import LossWorkspace
    from ft_engine.models import build_model, load_tokenizer
    from ft_engine.packing import CPU_PASS_TOKENS, PackedBatch, split_passes
    from ft_engine.render import IGNORE_INDEX, encode_all

    if args.max_len:
        cpu_attention.PLAIN_ATTENTION_MAX_LEN = args.max_len
    cfg = RunConfig(method="lora", data=args.data, max_seq_len=512)
    tok = load_tokenizer(cfg.model)
    rows = [{"input_ids": r.input_ids, "labels": r.labels}
            for r in encode_all(load_examples(args.data), tok, cfg.max_seq_len).rows][:args.rows]
    random.Random(0).shuffle(rows)
    torch.manual_seed(0)
    model, info = build_model(cfg)
    model.train()
    lm = causal_lm(model)
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.0)
    collate, workspace = PackedBatch(tok.pad_token_id), LossWorkspace()
    batches = [collate(rows[i:i + args.batch_size]) for i in range(0, len(rows), args.batch_size)]
    real = sum(int(b["real_tokens"]) for b in batches)
    half = info.precision == "bf16"

    def epoch() -> tuple[float, float]:
        torch.manual_seed(1)  # the same dropout masks every epoch
        t0, loss = time.perf_counter(), 0.0
        for batch in batches:
            trained = int((batch["shift_labels"] != IGNORE_INDEX).sum())
            for part in split_passes(batch, CPU_PASS_TOKENS, tok.pad_token_id):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
                    loss_sum, _ = packed_loss_sum(model, lm, part, workspace=workspace)
                (loss_sum / trained).backward()
                loss += float(loss_sum.detach())
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - t0, loss

    names = {"sdpa": "sdpa", "plain": cpu_attention.CPU_TRAINING_ATTENTION}
    times: dict[str, list[float]] = {k: [] for k in names}
    losses: dict[str, float] = {}
    for i in range(args.epochs):
        for key, impl in names.items():
            model.set_attn_implementation(impl)
            seconds, losses[key] = epoch()
            print(f"  epoch {i + 1} {key:<6}{seconds:7.2f} s", flush=True)
            if i:
                times[key].append(seconds)
    print(f"\nLoRA, {len(batches)} batches of {args.batch_size}, {real:,} real tokens an epoch ({info.precision}), "
          f"plain form up to {cpu_attention.PLAIN_ATTENTION_MAX_LEN} tokens a lane")
    for key in names:
        best = min(times[key])
        print(f"{key:<6} best epoch {best:6.2f} s ({real / best:5.0f} tok/s), mean "
              f"{sum(times[key]) / len(times[key]):6.2f} s, summed loss {losses[key]:.2f}")
    print(f"plain / sdpa: {min(times['sdpa']) / min(times['plain']):.3f}x on the best epochs, "
          f"{sum(times['sdpa']) / sum(times['plain']):.3f}x on the means; summed losses differ by "
          f"{abs(losses['plain'] - losses['sdpa']) / losses['sdpa']:.4%}")


if __name__ == "__main__":
    main()
