"""Memory forecast vs measured peak, for every method, two models and two batch shapes.

Each case trains a few steps through the real engine (`python -m ft_engine train`) in its own
process, so each peak is that run's alone and includes model loading (the engine resets the
CPU peak right before `build_model`). The forecast for the same RunConfig is printed next to
it, with the error in percent. Run by hand, not in CI; on a 2-core CPU the whole table took
15 minutes on a quiet machine and 53 on one busy with other work, plus about a minute to
build the 1B model once:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/forecast_accuracy.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/forecast_accuracy.py --only bundled --only lora --json out.json

Variants check the forecast of the changes the studio suggests when a run will not fit
(`--variant` is repeatable; the default is the plain run only):
  ckpt   activation checkpointing on
  8bit   the 8-bit AdamW optimizer (bitsandbytes adamw_8bit)
  sgd    plain SGD (no optimizer state)
  lean   adamw_lean: bf16 weights, 8-bit AdamW state, the step inside backward (full)
  lean-ckpt  adamw_lean with activation checkpointing

    HF_HUB_OFFLINE=1 .venv/bin/python bench/forecast_accuracy.py --only 4x512 --variant ckpt --variant 8bit

Models:
  bundled   SmolLM2-135M (the studio's offline model; vocab 49152, tied embeddings).
  1b        a random-weight model with Llama 3.2 1B's shape (forecast.llama_1b_config():
            1.24 B parameters, vocab 128256), built once with a fixed seed and saved as bf16
            safetensors (as Meta ships it) under the studio's cache folder, with the bundled
            model's tokenizer (its ids, < 49152, all fit the 1B vocab). Nothing is downloaded.

Data: plain-text documents much longer than max_seq_len, so every row is cut to exactly
max_seq_len and every batch is batch x max_seq_len tokens (the forecast's seq_len).

A guard watches every run: the parent polls the child's RSS and the machine's available
memory and kills the child (SIGKILL: a cooperative stop would wait for the step that is
eating the memory) when available memory falls under --floor-mib or the child's RSS passes
--rss-limit-mib. Such a run is reported as stopped by the guard at the highest RSS it saw;
when the forecast's verdict for it was `will not fit`, that confirms the forecast.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ft_engine.config import RunConfig  # noqa: E402  (after the path is set)
from ft_engine.forecast.constants import MIB  # noqa: E402
from ft_engine.forecast.estimate import forecast, verdict  # noqa: E402
from ft_engine.forecast.shape import llama_1b_config, model_shape  # noqa: E402
from ft_engine.hardware import available_memory  # noqa: E402
from ft_engine.models import cache_dir, model_source  # noqa: E402

LLAMA_1B_DIR = "llama-3.2-1b-shape-random-seed0"
METHODS = ("full", "lora", "qlora")
# variant name -> the RunConfig settings it changes ("" = the plain run)
VARIANTS = {"": {}, "ckpt": {"activation_checkpointing": True}, "8bit": {"optimizer": "adamw_8bit"},
            "sgd": {"optimizer": "sgd"}, "lean": {"optimizer": "adamw_lean"},
            "lean-ckpt": {"optimizer": "adamw_lean", "activation_checkpointing": True}}
# The plain runs use fp32 AdamW whatever memory is free (`optimizer: auto` would pick adamw_lean
# for a full fine-tune that does not fit, and the table would measure another thing).
PLAIN_OPTIMIZER = {"optimizer": "adamw_torch"}

# (model key, batch_size, max_seq_len, steps). Shapes: a small batch (1x256, where weights and
# load transients dominate) and a bigger one (bundled 4x512 = 2,048 tokens, 1B 2x512 = 1,024
# tokens, where activations and the batch*seq*vocab logits weigh: 0.5 GiB per copy at the 1B's
# vocab). The 1B's bigger shape is smaller than the bundled's to keep a step under ~3 minutes
# on 2 cores. Two optimizer steps suffice for a peak: from step 2 on the optimizer state,
# gradients and activations are all alive at once; the bundled runs take 3 (cheap). 1B 1x512
# is the shape of issue 9's memory goals (QLoRA <= 2.0 GiB, LoRA <= 3.5, full <= 6).
SHAPES = [("bundled", 1, 256, 3), ("bundled", 4, 512, 3), ("1b", 1, 256, 2), ("1b", 1, 512, 2),
          ("1b", 2, 512, 2)]


@dataclass
class Case:
    model: str
    batch: int
    seq: int
    steps: int
    method: str
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}/{self.batch}x{self.seq}/{self.method}" + (f"/{self.variant}" if self.variant else "")


# --- the 1B-shaped model ----------------------------------------------------------------------

def llama_1b_folder() -> Path:
    """The random 1B-shaped model folder, built (in a child process, to keep this one small)
    on first use."""
    folder = cache_dir() / LLAMA_1B_DIR
    if not (folder / "config.json").is_file():
        print(f"building the random 1B-shaped model once into {folder} (~1-2 min, 2.5 GB)...", flush=True)
        subprocess.run([sys.executable, __file__, "--build-1b", str(folder)], cwd=ROOT, check=True)
    return folder


def build_1b(folder: Path) -> None:
    """Random weights, seed 0, bf16 (the dtype Meta ships Llama 3.2 1B in), plus the bundled
    tokenizer. Saved to a temporary folder and renamed, so a crash never leaves half a model."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    config = llama_1b_config()
    config.dtype = "bfloat16"
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: half the memory of an fp32 init
    model = LlamaForCausalLM(config)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(model_source("bundled")).save_pretrained(tmp)
    tmp.replace(folder)


# --- data ---------------------------------------------------------------------------------------

def write_data(path: Path, docs: int = 24, words: int = 1200) -> Path:
    """Documents of ~1,200 random common words (> 1,000 tokens): every row is cut to max_seq_len."""
    rnd = random.Random(0)
    vocab = ("the capital of france is paris two plus four explain how plants turn light water and air "
             "into sugar every morning a small river runs past an old mill near the quiet town").split()
    path.write_text("\n\n".join(" ".join(rnd.choice(vocab) for _ in range(words)) for _ in range(docs)) + "\n")
    return path


# --- one case -------------------------------------------------------------------------------------

def case_config(case: Case, model_dir: str, data: Path, work: Path) -> RunConfig:
    """The run: evaluation and checkpoints off (they are not what is measured), LoRA defaults."""
    return RunConfig(model=model_dir, data=str(data), data_format="text", train_on_prompt=True,
                     method=case.method, batch_size=case.batch, max_seq_len=case.seq, max_steps=case.steps,
                     learning_rate=1e-5 if case.method == "full" else 2e-4, val_fraction=0.0,
                     checkpoint_steps=0, runs_dir=str(work / "runs"), run_name=case.name.replace("/", "-"),
                     **{**PLAIN_OPTIMIZER, **VARIANTS[case.variant]})


def judge(result: dict, fc) -> dict:
    """Put the forecast next to what was measured: error in percent for a run that completed;
    for a run the guard stopped, whether the forecast had said it would not fit."""
    result.update(forecast_mib=round(fc.total_mib, 1), forecast_components_mib=fc.mib())
    if result["stopped_by_guard"]:
        result.pop("error_pct", None)
        result["outcome"] = {"will not fit": "confirmed: will not fit",
                             "tight": "the forecast had said tight (over 85% of the available memory)"
                             }.get(result["verdict"], "forecast WRONG: said it would fit")
        if fc.total_mib < result["measured_mib"]:  # the run had already used more than forecast
            result["outcome"] += "; forecast WRONG: below what the run already used"
    else:
        result["error_pct"] = round(100 * (fc.total_mib - result["measured_mib"]) / result["measured_mib"], 1)
        result["outcome"] = "completed" + (" (forecast WRONG: said it would not fit)"
                                           if result["verdict"] == "will not fit" else "")
    return result


def run_case(case: Case, model_dir: str, data: Path, work: Path, args) -> dict:
    cfg = case_config(case, model_dir, data, work)
    fc = forecast(cfg, model_shape(model_dir), "cpu", seq_len=case.seq)
    avail = available_memory("cpu")  # what the studio would compare with, right before the run
    yaml_path = work / f"{cfg.run_name}.yaml"
    yaml_path.write_text(cfg.to_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    log_path = work / f"{cfg.run_name}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "ft_engine", "train", "--config", str(yaml_path)],
                                 cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        guard = watch(child, args.floor_mib * MIB, args.rss_limit_mib * MIB,
                      work / f"{cfg.run_name}.trace" if args.trace else None)
    out = {"case": case.name, "model": case.model, "shape": f"{case.batch}x{case.seq}", "method": case.method,
           "variant": case.variant,
           "available_mib": round(avail[1] / MIB), "verdict": verdict(fc, avail),
           "wall_s": round(time.perf_counter() - t0, 1), "polled_peak_mib": round(guard["max_rss"] / MIB, 1),
           "log": str(log_path), "stopped_by_guard": guard["stopped"]}
    if guard["stopped"]:
        out["measured_mib"] = out["polled_peak_mib"]  # a lower bound: the run was still growing
        return judge(out, fc)
    text = log_path.read_text()
    run_dir = Path(text.strip().splitlines()[-1]) if text.strip() else None
    if child.returncode != 0 or run_dir is None or not (run_dir / "status.json").is_file():
        raise SystemExit(f"{case.name} failed (exit {child.returncode}); its log, {log_path}, ends:\n{text[-3000:]}")
    out["measured_mib"] = json.loads((run_dir / "status.json").read_text())["mem_peak_mib"]
    for result in ("model", "adapter"):  # the trained weights are not what is measured (1B full: 4.6 GiB)
        shutil.rmtree(run_dir / result, ignore_errors=True)
    return judge(out, fc)


def reforecast(path: Path, models: dict[str, str]) -> list[dict]:
    """Earlier results (--json) with the forecast of the current code: for calibrating the
    forecast without training again. The verdict is made against the memory that was
    available when each run started."""
    results = json.loads(path.read_text())
    for r in results:
        batch, seq = map(int, r["shape"].split("x"))
        case = Case(r["model"], batch, seq, 0, r["method"], r.get("variant", ""))
        cfg = case_config(case, models[r["model"]], Path("unused"), Path("unused"))
        fc = forecast(cfg, model_shape(models[r["model"]]), "cpu", seq_len=seq)
        r["verdict"] = verdict(fc, r["available_mib"] * MIB)
        judge(r, fc)
    return results


def watch(child: subprocess.Popen, floor: int, rss_limit: int, trace: Path | None) -> dict:
    """Poll the child every 0.1 s until it exits; kill it when the machine runs short."""
    proc = psutil.Process(child.pid)
    max_rss, stopped, rows, t0 = 0, None, [], time.perf_counter()
    while child.poll() is None:
        try:
            rss = proc.memory_info().rss
        except psutil.NoSuchProcess:
            break  # it exited between poll() and the reading
        avail = psutil.virtual_memory().available
        max_rss = max(max_rss, rss)
        if trace:
            rows.append(f"{time.perf_counter() - t0:.1f} {rss / MIB:.0f} {avail / MIB:.0f} {_rss_file(child.pid)}")
        if avail < floor or rss > rss_limit:
            child.kill()
            child.wait()
            stopped = (f"stopped at {rss / MIB:,.0f} MiB by the guard (available {avail / MIB:,.0f} MiB < "
                       f"floor {floor / MIB:,.0f})" if avail < floor else
                       f"stopped at {rss / MIB:,.0f} MiB by the guard (RSS limit {rss_limit / MIB:,.0f})")
            break
        time.sleep(0.1)
    if trace:
        trace.write_text("\n".join(rows) + "\n")
    return {"max_rss": max_rss, "stopped": stopped}


def _rss_file(pid: int) -> str:
    """The child's file-backed resident MiB (mapped safetensors pages), for the trace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return str(int(line.split()[1]) // 1024)
    except OSError:
        pass  # the child just exited: the trace row simply lacks this column
    return "-"


# --- main ------------------------------------------------------------------------------------------

def cases(only: list[str], variants: list[str]) -> list[Case]:
    """Every case of `variants` whose name contains each --only filter (model, NxS shape or method)."""
    out = [Case(m, b, s, n, method, v) for v in variants for m, b, s, n in SHAPES for method in METHODS]
    return [c for c in out if all(f in c.name.split("/") for f in only)]


def print_table(results: list[dict]) -> None:
    print(f"{'model':<8}{'shape':>6} {'method':<7}{'variant':<8}{'forecast MiB':>13}{'measured MiB':>13}{'error':>8}  "
          f"{'verdict':<13}outcome")
    for r in results:
        err = f"{r['error_pct']:+.1f}%" if "error_pct" in r else "-"
        measured = f"{r['measured_mib']:,.0f}" if not r["stopped_by_guard"] else f">={r['measured_mib']:,.0f}"
        outcome = f"{r['stopped_by_guard']}; {r['outcome']}" if r["stopped_by_guard"] else r["outcome"]
        print(f"{r['model']:<8}{r['shape']:>6} {r['method']:<7}{r.get('variant', ''):<8}{r['forecast_mib']:>13,.0f}{measured:>13}{err:>8}  "
              f"{r['verdict']:<13}{outcome}")
    measured = [r for r in results if "error_pct" in r]
    off = [r["case"] for r in measured if abs(r["error_pct"]) > 15]
    wrong = [r["case"] for r in results if "WRONG" in r["outcome"]]
    print(f"\n{len(measured) - len(off)}/{len(measured)} completed runs within ±15% of the forecast; "
          f"{len(results) - len(measured)} stopped by the guard"
          + (f"; OFF by more than 15%: {', '.join(off)}" if off else "")
          + (f"; verdict WRONG: {', '.join(wrong)}" if wrong else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[],
                   help="run only cases matching this model (bundled, 1b), shape (e.g. 4x512) or method; "
                        "repeatable, all must match")
    p.add_argument("--variant", action="append", choices=sorted(v for v in VARIANTS if v),
                   help="also (or, with --no-plain, only) run the cases with this change: ckpt, 8bit, sgd")
    p.add_argument("--no-plain", action="store_true", help="with --variant: skip the plain runs")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--reforecast", metavar="FILE", help="train nothing: print the results in FILE (written "
                                                        "by --json) with the current code's forecasts")
    p.add_argument("--floor-mib", type=int, default=1536,
                   help="kill a run when the machine's available memory falls under this (default 1536)")
    p.add_argument("--rss-limit-mib", type=int,
                   default=int(psutil.virtual_memory().total / MIB) - 2048,
                   help="kill a run whose RSS passes this (default: total RAM - 2 GiB)")
    p.add_argument("--trace", action="store_true",
                   help="keep each run's trace (seconds, RSS MiB, available MiB, file-backed RSS MiB) next to its log")
    p.add_argument("--work", help="folder for data, configs, logs and runs (default: a temporary folder)")
    p.add_argument("--build-1b", metavar="FOLDER", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build_1b:
        build_1b(Path(args.build_1b))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.reforecast:
        models = {"bundled": model_source("bundled"), "1b": str(cache_dir() / LLAMA_1B_DIR)}
        results = reforecast(Path(args.reforecast), models)
        results = [r for r in results if all(f in r["case"].split("/") for f in args.only)]
        print(f"measured earlier ({args.reforecast}); forecasts by the current code\n")
        print_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return
    todo = cases(args.only, ([] if args.no_plain else [""]) + (args.variant or []))
    if not todo:
        raise SystemExit(f"no case matches --only {args.only}; filters are bundled or 1b, a shape such as "
                         f"{', '.join(sorted({f'{b}x{s}' for _, b, s, _ in SHAPES}))}, or a method")
    models = {"bundled": model_source("bundled")}
    if any(c.model == "1b" for c in todo):
        models["1b"] = str(llama_1b_folder())
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="forecast-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work / "long_docs.txt")
    print(f"work folder: {work}; guard: available floor {args.floor_mib} MiB, RSS limit {args.rss_limit_mib} MiB",
          flush=True)
    t0 = time.perf_counter()
    results = []
    for case in todo:
        r = run_case(case, models[case.model], data, work, args)
        results.append(r)
        err = f" ({r['error_pct']:+.1f}%)" if "error_pct" in r else f" ({r['outcome']})"
        print(f"  {case.name}: forecast {r['forecast_mib']:,.0f} MiB, measured {r['measured_mib']:,.0f} MiB"
              f"{err}, {r['wall_s']:.0f} s", flush=True)
        if args.json:  # after every case, so an interrupted bench keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\n{len(results)} runs in {time.perf_counter() - t0:,.0f} s\n")
    print_table(results)


if __name__ == "__main__":
    main()
