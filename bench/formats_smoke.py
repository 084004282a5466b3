"""Every method on every sample format, on the bundled model, through the real CLI.

    .venv/bin/python bench/formats_smoke.py --steps 5

Prints one line per (format, method): exit code, status, seconds, first and last loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "chat (.jsonl)": "assets/tiny_facts.jsonl",
    "alpaca (.csv)": "assets/pirate_persona.csv",
    "alpaca (.jsonl)": "assets/examples/alpaca.jsonl",
    "prompt/completion (.csv)": "assets/examples/prompt_completion.csv",
    "prompt/completion (.parquet)": "assets/examples/prompt_completion.parquet",
    "sharegpt (.json)": "assets/examples/sharegpt.json",
    "text (.txt)": "assets/examples/text.txt",
    "text (.jsonl)": "assets/examples/text.jsonl",
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", default="full,lora,qlora")
    p.add_argument("--formats", default=",".join(FILES), help="comma-separated keys of FILES")
    args = p.parse_args()
    print(f"{'format':<30}{'method':<7}{'exit':>5}  {'status':<10}{'seconds':>8}  loss first→last")
    with tempfile.TemporaryDirectory() as runs:
        for name in args.formats.split(","):
            for method in args.methods.split(","):
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "ft_engine", "train", "--method", method, "--data", FILES[name],
                     "--max-steps", str(args.steps), "--runs-dir", runs,
                     "--learning-rate", "1e-5" if method == "full" else "2e-4"],
                    cwd=ROOT, capture_output=True, text=True)
                secs = time.perf_counter() - t0
                run = Path(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
                status, losses = "?", []
                if run and (run / "status.json").is_file():
                    status = json.loads((run / "status.json").read_text())["status"]
                    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                              if '"loss"' in x]
                loss = f"{losses[0]:.3f}→{losses[-1]:.3f}" if losses else proc.stderr.strip()[-200:]
                print(f"{name:<30}{method:<7}{proc.returncode:>5}  {status:<10}{secs:>8.1f}  {loss}", flush=True)


if __name__ == "__main__":
    main()
