"""Does torch.compile pay off for a training step here? Issue 9 asked to measure it where many
small element-wise operations dominate (norms, rotary embeddings, activations, LoRA).

The engine's own step, outside the Trainer: the bundled model built by `build_model` (LoRA
r 16 on every linear, bf16 where this CPU has it, dropout fused into A on CPU), padding-free
batches of 8 rows of the instruction set (bench/instruct_data.py) made by the engine's
collator, the chunked loss (`lean_trainer.packed_loss_sum`), backward and AdamW. Variants,
each in its own process:

  eager     the engine as it is
  compiled  every decoder layer compiled in place (`layer.compile(dynamic=True)`, inductor):
            lanes change length every batch, so shapes are dynamic

Printed: the first step (which pays the compilation), the mean of the later steps, real tokens
per second over the later steps, and the ratio.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/compile_probe.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/compile_probe.py --method full --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = "/tmp/ft-bench/stdlib_instruct.jsonl"


def child(variant: str, method: str, steps: int, batch: int, data: str) -> dict:
    import torch

    from ft_engine.config import RunConfig
    from ft_engine.data import load_examples
    from ft_engine.lean_trainer import causal_lm, packed_loss_sum
    from ft_engine.models import build_model, load_tokenizer
    from ft_engine.packing import PackedBatch
    from ft_engine.render import encode_all

    cfg = RunConfig(method=method, data=data, learning_rate=2e-4 if method != "full" else 1e-5)
    tok = load_tokenizer(cfg.model)
    rows = [{"input_ids": r.input_ids, "labels": r.labels}
            for r in encode_all(load_examples(data), tok, cfg.max_seq_len).rows]
    random.Random(0).shuffle(rows)
    torch.manual_seed(0)
    model, info = build_model(cfg)
    model.train()
    lm = causal_lm(model)
    if variant == "compiled":
        for layer in lm.get_decoder().layers:
            layer.compile(dynamic=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    collate = PackedBatch(tok.pad_token_id)
    half = info.precision == "bf16"
    times, tokens = [], []
    for i in range(steps):
        inputs = collate(rows[i * batch:(i + 1) * batch])
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            loss_sum, n = packed_loss_sum(model, lm, inputs)
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        tokens.append(int(inputs["real_tokens"]))
    later = times[1:]
    return {"variant": variant, "precision": info.precision, "first_step_s": times[0],
            "later_step_s": sum(later) / len(later), "tokens_per_s": sum(tokens[1:]) / sum(later)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="lora", choices=["full", "lora", "qlora"])
    p.add_argument("--steps", type=int, default=8, help="steps per variant; the first pays compilation")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.method, args.steps, args.batch_size, args.data)))
        return
    if not Path(args.data).is_file():
        subprocess.run([sys.executable, str(ROOT / "bench" / "instruct_data.py"), "--out", args.data], check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for variant in ("eager", "compiled"):
        print(f"  {variant}...", flush=True)
        r = subprocess.run([sys.executable, __file__, "--child", variant, "--method", args.method,
                            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--data", args.data],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{r.stderr[-3000:]}")
        results[variant] = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n{args.method}, batch {args.batch_size}, {args.steps} steps ({results['eager']['precision']})")
    print(f"{'variant':<10}{'first step':>12}{'later steps':>13}{'tokens/s':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['first_step_s']:>11.1f}s{r['later_step_s']:>12.2f}s{r['tokens_per_s']:>10.0f}")
    print(f"compiled / eager: {results['compiled']['tokens_per_s'] / results['eager']['tokens_per_s']:.2f}x "
          f"tokens/s after the first step; the first step costs "
          f"{results['compiled']['first_step_s'] - results['eager']['first_step_s']:.0f} s more")


if __name__ == "__main__":
    main()
