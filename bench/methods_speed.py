"""Seconds per step, tokens per second and peak memory of full / LoRA / QLoRA, side by side.

Each method trains in its own process (`python -m ft_engine train`), so each peak memory is
that run's alone. Run by hand, not in CI:

    .venv/bin/python bench/methods_speed.py --data assets/zubrowka_facts.jsonl --steps 10 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_method(method: str, args, runs_dir: Path) -> dict:
    lr = "1e-5" if method == "full" else "2e-4"
    cmd = [sys.executable, "-m", "ft_engine", "train", "--method", method, "--data", args.data,
           "--model", args.model, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-seq-len", str(args.max_seq_len), "--learning-rate", lr, "--runs-dir", str(runs_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-2000:]}")
    run = Path(proc.stdout.strip().splitlines()[-1])
    status = json.loads((run / "status.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # step times from elapsed_s; the first step includes warm-up work, so it is left out
    step_times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
    tokens = rows[-1]["tokens_seen"] - rows[0]["tokens_seen"]
    span = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
    return {
        "method": method,
        "s_per_step": statistics.median(step_times),
        "tokens_per_s": tokens / span if span else float("nan"),
        "peak_mib": status["mem_peak_mib"],
        "trainable": status["trainable_params"],
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="assets/zubrowka_facts.jsonl")
    p.add_argument("--model", default="bundled")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--methods", default="full,lora,qlora")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_method(m, args, Path(tmp)) for m in args.methods.split(",")]
    print(f"model={args.model} data={args.data} steps={args.steps} batch={args.batch_size} "
          f"max_seq_len={args.max_seq_len}")
    print(f"{'method':<7}{'s/step':>8}{'tokens/s':>10}{'peak MiB':>10}{'trainable':>12}"
          f"{'loss first→last':>18}{'wall s':>8}")
    for r in results:
        print(f"{r['method']:<7}{r['s_per_step']:>8.2f}{r['tokens_per_s']:>10.0f}{r['peak_mib']:>10.0f}"
              f"{r['trainable']:>12,}{r['first_loss']:>9.3f}→{r['last_loss']:<8.3f}{r['wall_s']:>8.1f}")


if __name__ == "__main__":
    main()
