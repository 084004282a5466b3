"""Does adamw_lean (bf16 weights, 8-bit state, step in backward) learn what fp32 AdamW learns?

Issue 9's quality check for a full fine-tune in little memory: on the bundled model, 50 steps
must reach a loss within 2% of fp32 AdamW's. Both runs are the engine's own command line
(`python -m ft_engine train`), each in its own process, on the same rows in the same order
(same seed), full fine-tuning, bf16 autocast where this CPU has it:

  adamw_torch   fp32 master weights, fp32 AdamW state (16 B/param + bf16 copies)
  adamw_lean    bf16 weights, 8-bit AdamW state, each weight updated during backward (4 B/param)

Printed side by side: the mean train loss of the last 10 steps (the same batches in both
runs), the held-out loss on the next rows of the file (bench/vs_trl.py's evaluation: one row
at a time, token-weighted), train time and peak RSS, then the ratios.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/lean_optimizer_quality.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/lean_optimizer_quality.py --steps 50 --batch-size 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import vs_trl  # noqa: E402  (after the path is set)

OPTIMIZERS = ("adamw_torch", "adamw_lean")
LAST_STEPS = 10  # train loss is compared as the mean of this many last steps (same batches in both)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled")
    p.add_argument("--data", default=vs_trl.DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=vs_trl.LEARNING_RATE["full"])
    p.add_argument("--val-rows", type=int, default=40)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--work")
    args = p.parse_args()

    data = Path(args.data)
    if not data.is_file():
        subprocess.run([sys.executable, str(ROOT / "bench" / "instruct_data.py"), "--out", str(data)], check=True)
    from ft_engine.models import model_source
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lean-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = model_source(args.model)
    rows = args.steps * args.batch_size  # one epoch over them is exactly `steps` steps
    train, val = vs_trl.split_rows(data, rows, args.val_rows, work)
    print(f"work folder: {work}; {rows} rows, {args.steps} steps of {args.batch_size}, lr {args.learning_rate:g}",
          flush=True)

    results = {}
    for opt in OPTIMIZERS:
        run_args = SimpleNamespace(model=args.model, method="full", learning_rate=args.learning_rate,
                                   batch_size=args.batch_size, max_seq_len=args.max_seq_len, seed=args.seed,
                                   engine_args=f"--optimizer {opt}")
        sub = work / opt
        sub.mkdir(exist_ok=True)
        print(f"  {opt}: training...", flush=True)
        r = vs_trl.run_ours(run_args, train, sub)
        if "error" in r:
            raise SystemExit(f"{opt} failed: see {r['log']}")
        run = Path(r["result_dir"]).parent
        losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
        status = json.loads((run / "status.json").read_text())
        r["optimizer_used"] = status.get("optimizer")
        r["last_loss_mean"] = sum(losses[-LAST_STEPS:]) / len(losses[-LAST_STEPS:])
        r["losses"] = losses
        run_args.method = "full"
        ev = vs_trl.evaluate(opt, run_args, model_dir, r["result_dir"], val, sub)
        r["heldout_loss"] = ev.get("heldout_loss")
        results[opt] = r
        print(f"  {opt} ({r['optimizer_used']}): {r['train_s']:.0f} s, peak {r['peak_rss_mib']:,.0f} MiB, "
              f"last-{LAST_STEPS} loss {r['last_loss_mean']:.4f}, held-out {r['heldout_loss']:.4f}", flush=True)

    ref, lean = results["adamw_torch"], results["adamw_lean"]
    print(f"\n{'optimizer':<13}{'train s':>9}{'peak RSS':>12}{'last-10 loss':>14}{'held-out':>10}")
    for name, r in results.items():
        print(f"{name:<13}{r['train_s']:>9.0f}{r['peak_rss_mib']:>8,.0f} MiB{r['last_loss_mean']:>14.4f}"
              f"{r['heldout_loss']:>10.4f}")
    summary = {
        "loss_diff_pct": 100 * (lean["last_loss_mean"] - ref["last_loss_mean"]) / ref["last_loss_mean"],
        "heldout_diff_pct": 100 * (lean["heldout_loss"] - ref["heldout_loss"]) / ref["heldout_loss"],
        "memory_ratio": lean["peak_rss_mib"] / ref["peak_rss_mib"],
        "time_ratio": lean["train_s"] / ref["train_s"],
    }
    print(f"adamw_lean vs adamw_torch: train loss {summary['loss_diff_pct']:+.2f}%, held-out "
          f"{summary['heldout_diff_pct']:+.2f}% (goal: within 2%), peak memory x{summary['memory_ratio']:.2f}, "
          f"train time x{summary['time_ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results, "summary": summary},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
