"""Many users at once: N concurrent gradio_client users of the real studio, on loopback.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/load_test.py [--clients 10] [--steps 6] [--poll 1.0] [--idle 15]
                                                          [--timeout 600] [--json figures.json]

Starts `python app.py` on a free loopback port with a fresh runs directory and a tiny random
Llama (tests/tiny_model.py). Each user, in its own thread and with its own Client:
validate_data (uploads its own small chat file) → start_training (all users at the same
moment, a short LoRA run) → run_status every --poll seconds (1 s: the Monitor tab's refresh),
list_runs every second poll, until the run ends → chat once with the tuned run. Then, when
every user is done, all of them poll the same way for --idle seconds more: the same endpoints,
clients and machine with nothing training, to compare the latency with.

Checks (exit 1 when one fails, with the reason):
- every run completed, and every chat answered;
- order: runs started in the order they were queued (`queued_at` in status.json, stamped
  under the worker's lock), and no user ever saw its queue position go up;
- one at a time: each run ended before the next one started (status.json times), and no
  list_runs answer showed two runs `running`;
- each user was told a queue position, and a queue formed (someone was told >= 1);
- run_status and list_runs calls made while a run was training answered in under 1 s.
  (Measured at the client: it includes gradio_client's own polling, every 50 ms per message,
  and whatever else the machine runs; the idle phase shows that floor.)

Bounded: N users (at most 32), one run each, every wait capped by --timeout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # app_server, tiny_model

LATENCY_LIMIT_S = 1.0
POLL_EVERY_S = 1.0  # the Monitor tab refreshes once a second
MAX_CLIENTS = 32
QUESTION = "What is the capital of Zubrowka?"


@dataclass
class Call:
    endpoint: str
    t0: float  # wall clock (time.time()), comparable with the run directories' timestamps
    t1: float
    idle_phase: bool = False  # made after every run had ended

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


@dataclass
class User:
    index: int
    run_id: str = ""
    told_position: int | None = None
    told_message: str = ""
    positions_seen: list[int] = field(default_factory=list)  # queue_position while queued
    final_status: str | None = None
    chat_reply: str | None = None
    error: str | None = None
    max_running_seen: int = 0  # most runs `running` in one list_runs answer
    calls: list[Call] = field(default_factory=list)


@dataclass
class Figures:
    clients: int
    steps: int
    poll: float               # seconds between one user's run_status calls
    users: list[User]
    runs: list[dict]          # status.json of each user's run, in queue order
    wall_s: float

    @property
    def completed(self) -> int:
        return sum(r.get("status") == "completed" for r in self.runs)

    @property
    def max_told_position(self) -> int:
        return max((u.told_position or 0) for u in self.users)

    @property
    def chats_answered(self) -> int:
        return sum(bool(u.chat_reply) and not u.chat_reply.startswith("error:") for u in self.users)

    def spans(self) -> list[tuple[float, float]]:
        """(started, ended) of each run that ended, as Unix times."""
        return [(_ts(r["started_at"]), _ts(r["ended_at"])) for r in self.runs
                if r.get("started_at") and r.get("ended_at")]

    def training_calls(self, endpoint: str) -> list[Call]:
        """Calls that overlapped a run's training, [started_at, ended_at]."""
        spans = self.spans()
        return [c for u in self.users for c in u.calls if c.endpoint == endpoint
                and any(c.t0 < end and c.t1 > start for start, end in spans)]

    def idle_calls(self, endpoint: str) -> list[Call]:
        return [c for u in self.users for c in u.calls if c.endpoint == endpoint and c.idle_phase]


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _user_data(folder: Path, i: int) -> Path:
    """A small chat file of this user's own (so every upload is a distinct file)."""
    rows = [{"messages": [{"role": "user", "content": f"User {i} asks question {k}: {QUESTION}"},
                          {"role": "assistant", "content": f"The capital of Zubrowka is Lutz ({i}.{k})."}]}
            for k in range(6)]
    path = folder / f"user{i}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _user(user: User, url: str, model: str, steps: int, poll: float, idle: float, data: Path,
          start_together: threading.Barrier, all_done: threading.Barrier, deadline: float) -> None:
    from gradio_client import Client, handle_file
    idle_phase = False

    def call(endpoint: str, *args, **kwargs):
        t0 = time.time()
        out = client.predict(*args, api_name=f"/{endpoint}", **kwargs)
        user.calls.append(Call(endpoint, t0, time.time(), idle_phase))
        return out

    try:
        client = Client(url, verbose=False)
        data_path = call("validate_data", handle_file(str(data)), None, model, 256, False, "auto")[3]
        if not data_path:
            raise RuntimeError("validate_data returned no data path")
        start_together.wait(timeout=max(1.0, deadline - time.monotonic()))
        settings = {"max_steps": steps, "batch_size": 2, "checkpoint_steps": 0, "run_name": f"user {user.index}"}
        res = call("start_training", data_path=data_path, model=model, method="lora", preset="Quick demo",
                   settings_json=json.dumps(settings))
        user.run_id, user.told_position, user.told_message = res["run_id"], res["position"], res["message"]
        if not user.run_id:
            raise RuntimeError(f"start_training refused: {res['message']}")
        polls = 0
        while True:
            s = call("run_status", run_id=user.run_id)
            if s["status"] == "queued" and s.get("queue_position") is not None:
                user.positions_seen.append(s["queue_position"])
            if s["status"] in ("completed", "failed", "stopped", "interrupted"):
                user.final_status = s["status"]
                break
            polls += 1
            if polls % 2 == 0:
                runs = call("list_runs")
                user.max_running_seen = max(user.max_running_seen, sum(r["status"] == "running" for r in runs))
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {user.run_id} still {s['status']} at the deadline")
            time.sleep(poll)
        user.chat_reply = call("chat", run_id=user.run_id, message=QUESTION, use_adapter=True,
                               max_new_tokens=12, temperature=0.0, system_prompt="")
        # the same polling with nothing training: the latency floor of these clients on this machine
        all_done.wait(timeout=max(1.0, deadline - time.monotonic()))
        idle_phase, polls, until = True, 0, time.monotonic() + idle
        while time.monotonic() < until:
            call("run_status", run_id=user.run_id)
            polls += 1
            if polls % 2 == 0:
                call("list_runs")
            time.sleep(poll)
    except Exception as e:  # recorded and reported as a failed check, never lost
        user.error = f"{type(e).__name__}: {e}"
        start_together.abort()  # users still waiting would otherwise wait for this one
        all_done.abort()


def run_clients(url: str, runs_dir: Path, model: str, clients: int = 10, steps: int = 6,
                timeout: float = 600.0, poll: float = POLL_EVERY_S, idle: float = 0.0) -> Figures:
    """Drive the studio at `url` (its runs directory is `runs_dir`) with `clients` users at once."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS}, got {clients}")
    t_start = time.monotonic()
    deadline = t_start + timeout
    users = [User(i) for i in range(clients)]
    start_together, all_done = threading.Barrier(clients), threading.Barrier(clients)
    with tempfile.TemporaryDirectory(prefix="ft-load-") as tmp:
        threads = [threading.Thread(target=_user, name=f"user-{u.index}", daemon=True,
                                    args=(u, url, model, steps, poll, idle, _user_data(Path(tmp), u.index),
                                          start_together, all_done, deadline))
                   for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
        for u, t in zip(users, threads):
            if t.is_alive() and not u.error:
                u.error = "still running at the overall timeout"
    runs = []
    for u in users:
        status_file = Path(runs_dir) / u.run_id / "status.json"
        if u.run_id and status_file.is_file():
            runs.append({"user": u.index, **json.loads(status_file.read_text(encoding="utf-8"))})
    runs.sort(key=lambda r: r.get("queued_at") or "")
    return Figures(clients, steps, poll, users, runs, time.monotonic() - t_start)


def _in_queue_order(f: Figures) -> bool:
    started = [r.get("started_at") or "" for r in f.runs]
    return all(started) and started == sorted(started) and len(set(started)) == len(started)


def _overlaps(f: Figures) -> list[tuple[dict, dict]]:
    """Consecutive runs (in queue order) where the later one started before the earlier ended."""
    return [(a, b) for a, b in zip(f.runs, f.runs[1:])
            if not (a.get("ended_at") and b.get("started_at")) or _ts(a["ended_at"]) > _ts(b["started_at"])]


def check(f: Figures, latency: bool = True) -> list[str]:
    """Every failed check, as a sentence; empty when all passed. latency=False leaves out the
    one-second check (tests/test_resilience.py runs on machines whose load it cannot know)."""
    problems = [f"user {u.index}: {u.error}" for u in f.users if u.error]
    if f.completed != f.clients:
        problems.append(f"{f.completed} of {f.clients} runs completed: "
                        + ", ".join(f"{r['run_id']} {r.get('status')} {r.get('error') or ''}" for r in f.runs
                                    if r.get("status") != "completed"))
    if f.chats_answered != f.clients:
        bad_chat = [u.index for u in f.users if not u.chat_reply or u.chat_reply.startswith("error:")]
        problems.append(f"chat gave no answer to users {bad_chat}")
    # order: started in queue order; each ended before the next started
    if not _in_queue_order(f):
        problems.append("runs did not start in the order they were queued: "
                        + ", ".join(f"user {r['user']} queued {r.get('queued_at')} started {r.get('started_at')}"
                                    for r in f.runs))
    for a, b in _overlaps(f):
        problems.append(f"runs overlap: {a['run_id']} ended {a.get('ended_at')}, "
                        f"{b['run_id']} started {b.get('started_at')}")
    if any(u.max_running_seen > 1 for u in f.users):
        problems.append("list_runs showed two runs running at once")
    # what each user was told
    for rank, r in enumerate(f.runs):
        u = f.users[r["user"]]
        if u.told_position is None or not 0 <= u.told_position <= rank:
            problems.append(f"user {u.index} was told position {u.told_position}, but {rank} run(s) were "
                            f"queued before theirs")
        if u.positions_seen != sorted(u.positions_seen, reverse=True):
            problems.append(f"user {u.index}'s queue position went up: {u.positions_seen}")
    if f.clients > 1 and f.max_told_position < 1:
        problems.append("no queue formed (every user was told position 0), so the order was not tested")
    # latency while training
    for endpoint in ("run_status", "list_runs") if latency else ():
        calls = f.training_calls(endpoint)
        if not calls:
            problems.append(f"no {endpoint} call was made while a run trained")
        elif max(c.seconds for c in calls) >= LATENCY_LIMIT_S:
            slow = max(calls, key=lambda c: c.seconds)
            problems.append(f"{endpoint} took {slow.seconds:.2f} s while a run trained "
                            f"(limit {LATENCY_LIMIT_S:.0f} s)")
    return problems


def _latency_row(name: str, calls: list[Call]) -> str:
    if not calls:
        return f"  {name:<22} {'-':>6}"
    s = sorted(c.seconds for c in calls)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return (f"  {name:<22} {len(s):>6} {statistics.median(s) * 1000:>8.0f} {p95 * 1000:>8.0f} "
            f"{s[-1] * 1000:>8.0f}")


def _latency_header(title: str) -> str:
    return f"  {title:<22} {'calls':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"


def format_figures(f: Figures) -> str:
    lines = [f"{f.clients} users, {f.steps}-step LoRA runs on a tiny random Llama, run_status every {f.poll:g} s "
             f"per user; {f.wall_s:.1f} s in all",
             f"  runs completed         {f.completed}/{f.clients}",
             f"  started in queue order {'yes' if _in_queue_order(f) else 'NO'}",
             f"  overlapping runs       {len(_overlaps(f))}",
             f"  most runs `running` in one list_runs answer: {max(u.max_running_seen for u in f.users)}",
             f"  positions told         {[f.users[r['user']].told_position for r in f.runs]} (in queue order)",
             f"  chats answered         {f.chats_answered}/{f.clients}",
             "",
             _latency_header("while training"),
             _latency_row("run_status", f.training_calls("run_status")),
             _latency_row("list_runs", f.training_calls("list_runs")),
             "",
             _latency_header("nothing training"),
             _latency_row("run_status", f.idle_calls("run_status")),
             _latency_row("list_runs", f.idle_calls("list_runs")),
             "",
             _latency_header("all calls")]
    for endpoint in ("validate_data", "start_training", "run_status", "list_runs", "chat"):
        lines.append(_latency_row(endpoint, [c for u in f.users for c in u.calls if c.endpoint == endpoint]))
    if spans := f.spans():
        lines.append(f"\n  training: {len(spans)} runs back to back, "
                     f"{statistics.mean(e - s for s, e in spans):.1f} s each on average")
    return "\n".join(lines)


def main() -> int:
    import os
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10, help=f"concurrent users (1..{MAX_CLIENTS})")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps of each user's run")
    p.add_argument("--poll", type=float, default=POLL_EVERY_S,
                   help="seconds between one user's run_status calls (default: the Monitor tab's 1 s)")
    p.add_argument("--idle", type=float, default=15.0,
                   help="seconds of the same polling after every run ended, for comparison")
    p.add_argument("--timeout", type=float, default=600.0, help="overall limit in seconds")
    p.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from app_server import log_tail, running_app
    from tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="ft-load-app-") as d:
        d = Path(d)
        model = str(make_tiny_model(d / "tiny-model"))
        with running_app(d / "runs", d / "server.log") as (url, proc, log):
            figures = run_clients(url, d / "runs", model, args.clients, args.steps, args.timeout, args.poll,
                                  args.idle)
            problems = check(figures)
            server_log = log_tail(log) if problems else ""
    print(format_figures(figures))
    if args.json:
        args.json.write_text(json.dumps({
            "clients": figures.clients, "steps": figures.steps, "poll_s": figures.poll, "completed": figures.completed,
            "runs": figures.runs, "problems": problems,
            "calls": [{"user": u.index, "endpoint": c.endpoint, "t0": c.t0, "seconds": c.seconds,
                       "idle_phase": c.idle_phase}
                      for u in figures.users for c in u.calls]}, indent=2))
    if problems:
        print("\nFAILED:\n- " + "\n- ".join(problems), file=sys.stderr)
        print(f"\n----- end of the server log -----\n{server_log}", file=sys.stderr)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
