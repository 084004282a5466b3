"""Timings a person feels in the studio, measured against the real app over HTTP.

    .venv/bin/python bench/studio_timings.py [--methods lora,qlora,full] [--data assets/zubrowka_facts.jsonl]

1. seconds from starting `python app.py` to the page answering (run it twice: the second
   start has the bundled model cached);
2. wall time of a "Quick demo" run per method, submitted with gradio_client exactly as the
   Start button does (preset values), polled through run_status;
3. chat: time to first token and total time of a streamed answer from each tuned run, and
   whether it contains the fact taught by the sample data.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the project's packages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(runs_dir: str, port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "FT_RUNS_DIR": runs_dir, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the app exited during start-up")
            time.sleep(0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="lora,qlora,full")
    p.add_argument("--data", default="assets/zubrowka_facts.jsonl")
    p.add_argument("--question", default="What is the capital of Zubrowka?")
    p.add_argument("--expect", default="Lutz")
    args = p.parse_args()
    from gradio_client import Client, handle_file

    from ft_engine.inference import ChatModel
    from ft_engine.rundir import RunDir

    runs_dir = tempfile.mkdtemp(prefix="ft-bench-runs-")
    for attempt in (1, 2):
        port = free_port()
        proc, secs = start_app(runs_dir, port)
        print(f"start {attempt}: page answered after {secs:.1f} s")
        if attempt == 1:
            proc.terminate()
            proc.wait()
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    try:
        _, _, _, data_path = client.predict(handle_file(str(ROOT / args.data)), None, "bundled", 256, False,
                                            "auto", api_name="/validate_data")
        results = []
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            run = client.predict(data_path=data_path, model="bundled", method=method, preset="Quick demo",
                                 api_name="/start_training")
            if not run["run_id"]:
                raise SystemExit(run["message"])
            while (s := client.predict(run_id=run["run_id"], api_name="/run_status"))["status"] in ("queued", "running"):
                time.sleep(1)
            wall = time.perf_counter() - t0
            results.append((method, run["run_id"], s["status"], s["step"], wall))
            print(f"quick demo {method}: {s['status']} {s['step']} steps in {wall:.0f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    print(f"\n{'method':<7}{'status':<11}{'steps':>6}{'wall s':>8}{'TTFT s':>8}{'answer s':>9}  answer")
    for method, run_id, status, steps, wall in results:
        chat = ChatModel(RunDir(Path(runs_dir) / run_id))
        t0 = time.perf_counter()
        first = None
        for text in chat.stream(args.question, max_new_tokens=40):
            first = first or time.perf_counter() - t0
        total = time.perf_counter() - t0
        base = chat.generate(args.question, max_new_tokens=40, use_adapter=False)
        print(f"{method:<7}{status:<11}{steps:>6}{wall:>8.0f}{first:>8.2f}{total:>9.2f}  {text!r}"
              f"  [{args.expect} {'yes' if args.expect in text else 'NO'}; base: {base[:60]!r}]")


if __name__ == "__main__":
    main()
