"""`python -m ft_engine train | chat | runs | export | eval | resume | plan | compare`.

Bad input of any kind ends with one message on stderr and exit code 2, never a traceback.
`train` exits 0 only when the run completed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .config import FIELD_DOCS, RunConfig, default_runs_dir
from .errors import UserError
from .gguf_export import QUANT_NOTES as GGUF_QUANT_NOTES
from .gguf_export import QUANTS as GGUF_QUANTS

EXIT_BAD_INPUT = 2

# flag → RunConfig field, for the flags `train` accepts on top of --config
_TRAIN_FLAGS = {
    "method": str, "data": str, "model": str, "max_steps": int, "epochs": float,
    "learning_rate": float, "batch_size": int, "max_seq_len": int, "lora_r": int,
    "runs_dir": str, "run_name": str, "seed": int, "data_format": str, "val_fraction": float,
    "grad_accum": int, "lora_alpha": int, "optimizer": str, "scheduler": str, "warmup_ratio": float,
    "checkpoint_steps": int, "eval_steps": int, "precision": str, "max_rows": int,
    "tokens_per_pass": int,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ft_engine",
                                description="Fine-tune small LLMs with full fine-tuning, LoRA or QLoRA.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; prints the run directory on its last line",
                       description="Train. Flags override the YAML file; exit 0 only when the run completed.")
    t.add_argument("--config", help="YAML file with RunConfig fields")
    for name, typ in _TRAIN_FLAGS.items():
        t.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=FIELD_DOCS.get(name, ""))
    t.add_argument("--activation-checkpointing", dest="activation_checkpointing", action="store_true",
                   default=None, help=FIELD_DOCS.get("activation_checkpointing", ""))
    for name in ("devices", "strategy"):
        t.add_argument("--" + name, dest=name, default=None, help=FIELD_DOCS.get(name, ""))
    t.add_argument("--fsdp-cpu-offload", dest="fsdp_cpu_offload", action="store_true", default=None,
                   help=FIELD_DOCS.get("fsdp_cpu_offload", ""))
    t.add_argument("--nodes", type=int, default=1, help="machines training this run together (each runs this "
                                                         "command, with its own --node-rank); default 1")
    t.add_argument("--node-rank", type=int, default=0, help="this machine's place among --nodes, 0 to nodes-1; "
                                                             "node 0 creates the run directory and writes it")
    t.add_argument("--main-address", default="", help="with --nodes 2+: host name or IP of node 0, reachable "
                                                      "from every node")
    t.add_argument("--main-port", type=int, default=0,
                   help="with --nodes 2+: a free TCP port on node 0 that every node can reach (e.g. 29500)")

    tr = sub.add_parser("train-run", help="train a run the studio or `train` prepared (what launch.py starts, "
                                          "once per process)")
    tr.add_argument("run_dir", nargs="?", default=None,
                    help="the prepared run directory (on nodes other than 0: none; node 0's rank 0 sends the "
                         "run's settings)")
    tr.add_argument("--supervisor", type=int, default=None,
                    help="pid of the process that started this one: the run stops (keeping what it trained) "
                         "if that process is gone")

    c = sub.add_parser("chat", help="answer one prompt with a trained run")
    c.add_argument("run_dir", help="the run directory (printed by train, listed by runs)")
    c.add_argument("--prompt", required=True, help="the user message")
    c.add_argument("--base", action="store_true", help="answer as the base model (adapter disabled)")
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--system", default=None, help="system prompt")

    r = sub.add_parser("runs", help="list runs (id, method, model, status, steps, last loss) and comparisons")
    r.add_argument("--runs-dir", default=None, help="default: $FT_RUNS_DIR or ./runs")

    e = sub.add_parser("export", help="merge the adapter into its base and save a standalone model, or a GGUF "
                                      "file for llama.cpp / Ollama / LM Studio")
    e.add_argument("run_dir")
    e.add_argument("--format", choices=["hf", "gguf"], default="hf",
                   help="hf: a Hugging Face model folder (default); gguf: one GGUF file and an Ollama Modelfile")
    e.add_argument("--quant", choices=list(GGUF_QUANTS), default=GGUF_QUANTS[0],
                   help="GGUF only: " + "; ".join(f"{q}: {n}" for q, n in GGUF_QUANT_NOTES.items()))
    e.add_argument("--out", help="new folder for the export (default: <run id>-merged or <run id>-gguf-<quant> "
                                 "in the current folder)")

    v = sub.add_parser("eval", help="the tuned model and its base answer held-out questions (and general ones), "
                                    "scored side by side; saved as eval.json in the run")
    v.add_argument("run_dir")
    v.add_argument("--questions", help="a file of questions with expected answers, in any training-data format "
                                       "(default: the run's held-out rows, else its training rows)")
    v.add_argument("--max-questions", type=int, default=None,
                   help="ask at most this many of the run's own rows (default 30; a --questions file is asked whole)")
    v.add_argument("--no-general", action="store_true", help="skip the general questions (the forgetting check)")
    v.add_argument("--json", action="store_true", help="print eval.json instead of the table")

    s = sub.add_parser("resume", help="continue an interrupted or stopped run from its last checkpoint")
    s.add_argument("run_dir")

    pl = sub.add_parser("plan", help="forecast the memory a run needs, and whether it fits here",
                        description="Forecast peak memory from the model's config alone (no weights loaded).")
    pl.add_argument("--model", default="bundled",
                    help=FIELD_DOCS.get("model", "") + " Also: llama-3.2-1b-shape (Llama 3.2 1B's shape, no download).")
    pl.add_argument("--method", default="lora", choices=["full", "lora", "qlora", "all"],
                    help="full, lora, qlora, or all (side by side)")
    pl.add_argument("--batch-size", type=int, default=None, help=FIELD_DOCS.get("batch_size", ""))
    pl.add_argument("--max-seq-len", type=int, default=None, help=FIELD_DOCS.get("max_seq_len", ""))
    pl.add_argument("--seq-len", type=int, default=None,
                    help="length batches are padded to: the data's longest row in tokens when shorter "
                         "than max_seq_len (default: max_seq_len, the worst case)")
    pl.add_argument("--lora-r", type=int, default=None, help=FIELD_DOCS.get("lora_r", ""))
    pl.add_argument("--activation-checkpointing", action="store_true", default=None,
                    help=FIELD_DOCS.get("activation_checkpointing", ""))
    pl.add_argument("--optimizer", default=None, help=FIELD_DOCS.get("optimizer", ""))
    for name, typ in (("checkpoint_steps", int), ("checkpoints_kept", int), ("max_steps", int),
                      ("runs_dir", str)):  # what decides the disk the run needs
        pl.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                        help=FIELD_DOCS.get(name, ""))
    pl.add_argument("--devices", type=int, default=1,
                    help="processes (GPUs) the run trains on: the forecast is then per device (default 1)")
    pl.add_argument("--strategy", default=None, help=FIELD_DOCS.get("strategy", ""))
    pl.add_argument("--fsdp-cpu-offload", dest="fsdp_cpu_offload", action="store_true", default=None,
                    help=FIELD_DOCS.get("fsdp_cpu_offload", ""))
    pl.add_argument("--device", default=None, choices=["cpu", "cuda"],
                    help="device to plan for (default: this machine's)")
    pl.add_argument("--json", action="store_true", help="print a JSON object")

    cm = sub.add_parser("compare", help="train full, LoRA and QLoRA on the same data and budget; print a table",
                        description="Train each method in turn with the same data, steps, batch, sequence "
                                    "length and seed (each in its own process, so peak memory is its own), "
                                    "answer one prompt with each, and print the results. The comparison "
                                    "folder is printed on the last line; exit 0 only if every method completed.")
    cm.add_argument("--data", required=True, help=FIELD_DOCS.get("data", ""))
    cm.add_argument("--max-steps", type=int, required=True, help="optimizer steps for every method, e.g. 30")
    cm.add_argument("--methods", default="full,lora,qlora", help="comma-separated, in the order they run")
    for name in ("model", "batch_size", "max_seq_len", "seed", "grad_accum", "lora_r", "val_fraction",
                 "data_format", "runs_dir"):
        cm.add_argument("--" + name.replace("_", "-"), dest=name, type=_TRAIN_FLAGS[name], default=None,
                        help=FIELD_DOCS.get(name, ""))
    cm.add_argument("--learning-rate", type=float, default=None,
                    help="one rate for every method (default: full 5e-5, lora and qlora 1e-3)")
    cm.add_argument("--prompt", default="", help="the prompt every result answers (default: the first "
                                                 "held-out question of the data)")
    cm.add_argument("--max-new-tokens", type=int, default=40, help="length of the sample answers")
    cm.add_argument("--same-process", action="store_true",
                    help="train every method in this process: starts faster, but on CPU a later method's "
                         "peak memory can include what an earlier one left allocated")
    cm.add_argument("--json", action="store_true", help="print comparison.json instead of the table")
    return p


def cmd_train(args) -> int:
    from .launch import Launch
    from .training import train
    cfg = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    overrides = {k: getattr(args, k) for k in [*_TRAIN_FLAGS, "activation_checkpointing", "devices", "strategy",
                                               "fsdp_cpu_offload"]
                 if getattr(args, k) is not None}
    cfg = RunConfig.from_dict({**cfg.to_dict(), **overrides})
    launch = Launch(nodes=args.nodes, node_rank=args.node_rank, main_address=args.main_address or
                    ("127.0.0.1" if args.nodes == 1 else ""), main_port=args.main_port).check()
    from .launch import processes_for
    if launch.nodes == 1 and processes_for(cfg.validate(check_paths=False)) == 1:
        return _run_job_cli(lambda job_holder: train(cfg, on_job=job_holder))  # this process trains
    return _launch_cli(cfg, launch)


def _launch_cli(cfg: RunConfig, launch) -> int:
    """Train in processes of their own under accelerate launch: on node 0 the run directory is
    made here and watched (supervise.LaunchedRun); another node only checks its settings and
    data, then starts its processes, which take the run's settings from node 0."""
    import dataclasses
    import subprocess
    import tempfile

    from .launch import command, environment
    from .supervise import LaunchedRun
    from .training import TrainingJob
    job = TrainingJob(cfg)
    job.nodes = launch.nodes
    job.check_only = launch.node_rank != 0
    run_dir = job.prepare()
    launch = dataclasses.replace(launch, processes=job.processes // launch.nodes)
    if launch.node_rank != 0:
        with tempfile.TemporaryDirectory(prefix="ft-launch-") as tmp:
            cmd = command(None, launch, supervisor_pid=os.getpid(), config_file=Path(tmp) / "accelerate.yaml")
            print(f"node {launch.node_rank} of {launch.nodes}: {launch.processes} process(es), waiting for node 0 "
                  f"at {launch.main_address}:{launch.main_port}", file=sys.stderr)
            child = subprocess.Popen(cmd, env=environment(launch), start_new_session=True)
            signal.signal(signal.SIGINT, lambda *_: child.terminate())
            signal.signal(signal.SIGTERM, lambda *_: child.terminate())
            return 0 if child.wait() == 0 else 1
    launched = LaunchedRun(job, launch, echo=True)

    def on_signal(signum, frame):
        launched.stop()
        print("stopping after the current step...", file=sys.stderr)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"{job.processes} processes ({cfg.strategy}), effective batch {job.scale()['effective_batch']}; "
          f"their output, also in {run_dir.path / 'train.log'}:", file=sys.stderr)
    run_dir.write_status(**job.scale())
    status = launched.run()
    return _report(run_dir, status)


def cmd_resume(args) -> int:
    from .training import resume_job
    job = resume_job(args.run_dir)
    if job.processes == 1:
        return _run_job_cli(lambda job_holder: (job_holder(job), (job.run_dir, job.run()))[1])
    # a run of several processes goes on as it started: launched again, from its checkpoint
    from .launch import Launch
    from .supervise import LaunchedRun
    job.run_dir.write_status(resume_from=job.resume_from.name, **job.scale())
    launched = LaunchedRun(job, Launch(processes=job.processes), echo=True)

    def on_signal(signum, frame):
        launched.stop()
        print("stopping after the current step...", file=sys.stderr)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return _report(job.run_dir, launched.run())


def _run_job_cli(start) -> int:
    """Run a job; Ctrl-C / SIGTERM ask for a cooperative stop (result kept, status `stopped`)."""
    jobs = []

    def on_signal(signum, frame):
        for job in jobs:
            job.stop()
        print("stopping after the current step...", file=sys.stderr)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    run_dir, status = start(jobs.append)
    return _report(run_dir, status)


def _report(run_dir, status) -> int:
    from .rundir import Status
    info = run_dir.read_status()
    print(f"status: {status.value}, steps: {info.get('step')}/{info.get('total_steps')}, "
          f"final loss: {info.get('final_loss')}, peak memory: {info.get('mem_peak_mib')} MiB"
          + (f" (forecast {info['forecast_mib']} MiB)" if info.get("forecast_mib") else ""))
    if status == Status.FAILED:
        print(f"error: {info.get('error')}", file=sys.stderr)
    print(run_dir.path)
    return 0 if status == Status.COMPLETED else 1


def cmd_train_run(args) -> int:
    from .rundir import Status
    from .training import train_launched
    jobs = []  # SIGTERM (the launcher ending the processes, `kill`): stop after the step, keep the result
    signal.signal(signal.SIGTERM, lambda *_: [job.stop() for job in jobs])
    status = train_launched(args.run_dir, args.supervisor, on_job=jobs.append)
    return 0 if status == Status.COMPLETED else 1


def cmd_chat(args) -> int:
    from .inference import ChatModel
    chat = ChatModel(args.run_dir)
    print(chat.generate(args.prompt, use_adapter=not args.base, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, system_prompt=args.system))
    return 0


def cmd_eval(args) -> int:
    import json
    import threading

    from .evaluate import MAX_QUESTIONS, evaluate, format_table, questions_from_file
    from .rundir import open_run
    run = open_run(args.run_dir)
    limit = MAX_QUESTIONS if args.max_questions is None else args.max_questions
    if isinstance(limit, bool) or limit < 1:
        raise UserError(f"--max-questions must be a whole number >= 1, got {args.max_questions}")
    questions = questions_from_file(args.questions) if args.questions else None
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: (stop.set(), print(
        "stopping after the questions being answered…", file=sys.stderr)))
    try:
        result = evaluate(run, questions, source=f"file {Path(args.questions).name}" if args.questions else None,
                          forgetting=not args.no_general, stop=stop, max_questions=limit,
                          progress=lambda done, total, text: print(f"[{done}/{total}] {text}", file=sys.stderr,
                                                                   flush=True))
    finally:
        signal.signal(signal.SIGINT, previous)
    print(json.dumps(result, indent=1, ensure_ascii=False) if args.json else format_table(result))
    return 0


def cmd_runs(args) -> int:
    from .comparison_dir import list_comparisons
    from .rundir import list_runs
    runs_dir = args.runs_dir or default_runs_dir()
    runs = list_runs(runs_dir)
    comparisons = list_comparisons(runs_dir)
    if not runs:
        print(f"no runs in {Path(runs_dir).resolve()}")
    else:
        _print_runs(runs)
    if comparisons:
        # a comparison's folder is what the studio's Compare methods section lists and deletes;
        # `rm -r` of that folder is the command-line equivalent (its runs stay)
        print(f"\ncomparisons (in {comparisons[0].path.parent.resolve()}):")
        _print_comparisons(comparisons)
    return 0


def _print_comparisons(comparisons) -> None:
    from .rundir import DamagedFileError
    print(f"{'id':<40} {'status':<11} runs")
    for cdir in comparisons:
        try:
            info = cdir.read()
        except DamagedFileError as e:
            print(f"{cdir.comparison_id:<40} {'damaged':<11} {e}")
            continue
        runs = ", ".join(f"{m}={rid}" for m, rid in (info.get("runs") or {}).items())
        print(f"{cdir.comparison_id:<40} {info.get('status', '?'):<11} {runs}")


def _print_runs(runs) -> None:
    from .rundir import read_summary
    print(f"{'id':<40} {'method':<6} {'model':<28} {'status':<11} {'steps':>9} {'last loss':>9}")
    for run in runs:
        s = read_summary(run)
        if s.damaged:
            print(f"{run.run_id:<40} {'?':<6} {'?':<28} {s.status:<11} {'':>9} {'':>9}  {s.error}")
            continue
        steps = f"{s.step}/{s.total_steps or '?'}"
        loss = f"{s.train_loss:.4f}" if s.train_loss is not None else "-"
        print(f"{run.run_id:<40} {s.method or '?':<6} {str(s.model or '?')[:28]:<28} "
              f"{s.status or '?':<11} {steps:>9} {loss:>9}")


def cmd_export(args) -> int:
    from .disk import gb
    from .rundir import open_run
    run = open_run(args.run_dir)
    if args.format == "hf":
        from .export import export_merged
        print(export_merged(run, args.out or f"{run.run_id}-merged"))
        return 0
    from .gguf_export import export_gguf

    def progress(fraction: float, text: str) -> None:
        print(f"[{fraction:4.0%}] {text}", file=sys.stderr, flush=True)
    done = export_gguf(run, args.out or f"{run.run_id}-gguf-{args.quant}", args.quant, progress)
    print(f"{done.gguf} ({gb(done.gguf.stat().st_size)})")
    print(done.modelfile)
    print(f"Ollama: cd {done.folder} && ollama create {run.run_id.lower()} -f Modelfile && ollama run "
          f"{run.run_id.lower()}", file=sys.stderr)
    return 0


def cmd_plan(args) -> int:
    import json

    from .config import BUNDLED_MODEL
    from .forecast.advice import plan
    from .forecast.shape import LLAMA_1B_SHAPE
    values = {k: getattr(args, k) for k in ("model", "batch_size", "max_seq_len", "lora_r",
                                            "activation_checkpointing", "optimizer", "checkpoint_steps",
                                            "checkpoints_kept", "max_steps", "runs_dir", "strategy",
                                            "fsdp_cpu_offload")
              if getattr(args, k) is not None}
    cfg = RunConfig.from_dict(values)
    # the built-in shape is not a model id RunConfig knows; check every other setting
    cfg.replace(model=BUNDLED_MODEL if cfg.model == LLAMA_1B_SHAPE else cfg.model).validate(check_paths=False)
    if args.seq_len is not None and args.seq_len < 1:
        raise UserError(f"--seq-len must be >= 1 (tokens), got {args.seq_len}")
    methods = ["full", "lora", "qlora"] if args.method == "all" else [args.method]
    if args.devices < 1:
        raise UserError(f"--devices must be >= 1 (processes, one GPU each), got {args.devices}")
    report = plan(cfg, methods, args.device, seq_len=args.seq_len, processes=args.devices)
    print(json.dumps(report, indent=2) if args.json else format_plan(report))
    return 0


# --- the `plan` report ---------------------------------------------------------------------------

COMPONENT_LABELS = {
    "weights_frozen": "weights (frozen)", "weights_trainable": "weights (trainable)",
    "quant_constants": "quantization constants", "gradients": "gradients",
    "optimizer_state": "optimizer state", "optimizer_temp": "optimizer step scratch",
    "autocast_copies": "autocast weight copies", "activations": "activations",
    "logits_loss": "logits + loss", "runtime_overhead": "runtime overhead",
}
"""`plan`'s row label for each of the forecast's components (forecast.constants.COMPONENTS)."""


def format_plan(report: dict[str, Any]) -> str:
    """The human-readable `plan` output: one row per component (MiB), one column per method.
    `report`: what forecast.advice.plan returns."""
    from .forecast.constants import PHASES, WHOLE_STEP
    methods = list(report["methods"])
    s = report["shape"]
    lines = [f"model: {report['model']}  ({s['params']['total']:,} parameters; hidden {s['hidden']}, "
             f"{s['layers']} layers, {s['heads']} heads / {s['kv_heads']} kv, intermediate {s['intermediate']}, "
             f"vocab {s['vocab']}{', tied embeddings' if s['tied_embeddings'] else ''})"]
    first = report["methods"][methods[0]]
    d = first["details"]
    seq = f"{d['seq_len']}" + (f" (max_seq_len {d['max_seq_len']})" if d["seq_len"] != d["max_seq_len"] else "")
    lines.append(f"device: {first['device']} ({first['precision']}); batch {d['batch_size']} x seq "
                 f"{seq} = {d['tokens_per_batch']:,} tokens; optimizer {d['optimizer']}; "
                 f"activation checkpointing {'on' if d['activation_checkpointing'] else 'off'}")
    if report.get("processes", 1) > 1:
        lines.append(f"{report['processes']} processes ({report['strategy']}): every figure below is one "
                     f"device's" + (" (on a CPU they share the RAM: needed free is all of them)"
                                    if first["device"] == "cpu" else ""))
    width = max(len(v) for v in COMPONENT_LABELS.values()) + 2
    lines.append("")
    lines.append(f"{'MiB':<{width}}" + "".join(f"{m:>12}" for m in methods))
    for key, label in COMPONENT_LABELS.items():
        lines.append(f"{label:<{width}}" + "".join(f"{report['methods'][m]['components_mib'][key]:>12,.1f}"
                                                   for m in methods))
    # a phase left out of some peak (a GPU run whose step has scratch): say so, and what it is
    phased = [m for m in methods if report["methods"][m]["peak_phase"] != WHOLE_STEP
              and report["methods"][m]["not_at_peak_mib"] > 0]
    if phased:  # a GPU: the column adds up to the peak once the phase not at the peak is taken off
        lines.append(f"{'not alive at the peak *':<{width}}"
                     + "".join(f"{-report['methods'][m]['not_at_peak_mib']:>12,.1f}" for m in methods))
    lines.append("-" * (width + 12 * len(methods)))
    lines.append(f"{'total (peak)':<{width}}" + "".join(f"{report['methods'][m]['total_mib']:>12,.1f}"
                                                        for m in methods))
    if first["device"] == "cuda":
        lines.append(f"{'needed free (+ctx, frag.)':<{width}}"
                     + "".join(f"{report['methods'][m]['needed_mib']:>12,.1f}" for m in methods))
    lines.append(f"{'trainable params':<{width}}" + "".join(f"{report['methods'][m]['trainable_params']:>12,}"
                                                            for m in methods))
    if phased:
        fb, step = (", ".join(COMPONENT_LABELS[k] for k in PHASES[p]) for p in PHASES)
        lines.append(f"* on a GPU the forward/backward transients ({fb}) are freed before the optimizer "
                     f"step allocates its scratch ({step}): the peak holds the larger of the two; peak in "
                     + "; ".join(f"{m}: {report['methods'][m]['peak_phase']}" for m in phased))
    lines.append("")
    lines.append(f"available: {report['available']['label']}")
    for m in methods:
        r = report["methods"][m]
        lines.append(f"{m}: verdict: {r['verdict']}")
        for sug in r["suggestions"]:
            lines.append(f"    - {sug['change']}: {sug['total_mib']:,.1f} MiB ({sug['verdict']})")
    from .disk import gb
    for m in methods:
        d = report["methods"][m]["disk"]
        lines.append(f"{m}: disk: {d['line']}"
                     + ("" if d["fits"] else f": too little, a run is refused below {gb(d['needed_free_bytes'])} free"))
    return "\n".join(lines)


def cmd_compare(args) -> int:
    import json

    from .compare import DEFAULT_VAL_FRACTION, CompareConfig, ComparisonJob
    from .compare_table import format_table
    from .rundir import Status
    values = {"data": args.data, "max_steps": args.max_steps, "val_fraction": DEFAULT_VAL_FRACTION,
              **{k: getattr(args, k) for k in ("model", "batch_size", "max_seq_len", "seed", "grad_accum",
                                               "lora_r", "val_fraction", "data_format", "runs_dir")
                 if getattr(args, k) is not None}}
    config = CompareConfig(base=RunConfig.from_dict(values),
                           methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                           learning_rate=args.learning_rate, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    comparison = ComparisonJob(config)
    comparison.prepare()
    # Ctrl-C / SIGTERM: the running method stops after its step (result kept), the rest never start
    def on_signal(signum, frame):
        comparison.stop()
        print("stopping the comparison after the current step...", file=sys.stderr)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = comparison.run(same_process=args.same_process)
    info = comparison.cdir.read()
    if info.get("error"):
        print(f"error: {info['error']}", file=sys.stderr)
    if args.json:  # stdout is one JSON object, the folder included
        print(json.dumps({**info, "path": str(comparison.cdir.path)}, indent=2))
    else:
        print(format_table(info["rows"], info["prompt"]))
        print(f"status: {status.value}")
        print(comparison.cdir.path)
    return 0 if status == Status.COMPLETED else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("FT_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command in ("train", "train-run", "resume", "compare"):
        logging.getLogger("ft_engine").setLevel(logging.INFO)  # one progress line per logging step
    handlers = {"train": cmd_train, "train-run": cmd_train_run, "chat": cmd_chat, "runs": cmd_runs, "export": cmd_export,
                "eval": cmd_eval, "resume": cmd_resume, "plan": cmd_plan, "compare": cmd_compare}
    try:
        return handlers[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
