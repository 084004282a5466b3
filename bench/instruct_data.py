"""A realistic instruction data set built offline: "What does <name> do?" answered by the
Python standard library's own docstrings.

Benchmarks need chat data whose lengths look like real instruction data (many short answers,
a long tail), not one length repeated. Docstrings are public text already on every machine,
so nothing is downloaded. Each row is

    {"messages": [{"role": "user", "content": "What does json.dumps do?"},
                  {"role": "assistant", "content": <json.dumps.__doc__, inspect.cleandoc'ed>]}

Rows are chosen so that their token lengths, rendered with the bundled model's chat template,
follow a log-normal with median LENGTH_MEDIAN tokens (instruction-tuning sets such as Alpaca
and Dolly are roughly log-normal in length), cut to [shortest possible, LENGTH_MAX]; then they
are shuffled, so the first N rows of the file are a fair sample of the whole. The same Python
version, seed and tokenizer give the same file, byte for byte:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/instruct_data.py --out /tmp/ft-bench/stdlib_instruct.jsonl
    HF_HUB_OFFLINE=1 .venv/bin/python bench/instruct_data.py --out data.jsonl --rows 600 --seed 0
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import importlib
import inspect
import io
import json
import math
import os
import pkgutil
import random
import statistics
import sys
import warnings
from pathlib import Path
from statistics import NormalDist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = "/tmp/ft-bench/stdlib_instruct.jsonl"

# Target length distribution, in tokens of the whole rendered conversation. Median 100 and
# sigma 0.75 put p10 near 40 and p90 near 260, the shape of Alpaca-style data; the cap keeps
# the longest rows near 700 (a few are cut at the benchmarks' max_seq_len of 512, as in real
# data). The shortest possible row is ~44 tokens: the bundled template adds a default system
# prompt (~25 tokens) whenever a conversation has none, so p10 ends up at that floor.
LENGTH_MEDIAN = 100
LENGTH_SIGMA = 0.75
LENGTH_MAX = 700

# Modules never imported: they act when imported (open a browser, print, start a GUI or a
# REPL hook), write files (lib2to3 caches its grammar), or are test suites and demos rather
# than library code. `encodings` is hundreds of near-identical codec modules.
SKIP_MODULES = {
    "antigravity", "this", "__hello__", "__phello__", "tkinter", "turtle", "turtledemo", "idlelib",
    "test", "lib2to3", "ensurepip", "venv", "readline", "rlcompleter", "pydoc_data", "encodings",
    "xxsubtype", "xxlimited", "xxlimited_35", "__main__",
    "distutils",  # in a venv, setuptools swaps in its own copy: the rows would depend on it
}
# Boilerplate docstrings C types inherit from `object`: not answers anyone would write.
BOILERPLATE = ("Initialize self.", "Create and return a new object.", "Return repr(self).",
               "Implement ", "Return self", "Helper for pickle.", "Default dir() implementation.")
MIN_DOC_CHARS = 20  # shorter ones ("Return the ID.") say nothing a question would not


def module_names() -> list[str]:
    """Public stdlib modules and their public submodules, sorted (for determinism)."""
    names = set()
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_MODULES:
            continue
        mod = _import(top)
        if mod is None:
            continue
        names.add(top)
        if hasattr(mod, "__path__"):  # a package: walk its submodules
            for info in pkgutil.walk_packages(mod.__path__, prefix=top + ".", onerror=lambda name: None):
                parts = info.name.split(".")
                if any(p.startswith("_") or p in SKIP_MODULES or p in ("tests", "test") for p in parts):
                    continue
                names.add(info.name)
    return sorted(names)


def _import(name: str):
    """The module, or None when it cannot be imported here (a missing C library, a platform
    module such as msvcrt). Its prints and warnings are swallowed: they are not our output."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except (Exception, SystemExit):  # ImportError, OSError, a module's own sys.exit: all mean skip it
        return None


def documented(modname: str) -> list[tuple[str, str]]:
    """(qualified name, cleaned docstring) of the module's public functions, classes and
    their methods: only what the module itself (or its private C accelerator) defines, so a
    re-export is not counted twice."""
    mod = _import(modname)
    if mod is None:
        return []
    out = []
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not _defined_in(obj, modname):
            continue
        out.append((f"{modname}.{name}", obj))
        if inspect.isclass(obj):
            for mname, member in sorted(vars(obj).items()):
                if mname.startswith("_"):
                    continue
                member = getattr(member, "__func__", member)  # classmethod / staticmethod
                if inspect.isroutine(member):
                    out.append((f"{modname}.{name}.{mname}", member))
    return [(qname, _clean(obj.__doc__)) for qname, obj in out if isinstance(obj.__doc__, str)]


def _defined_in(obj, modname: str) -> bool:
    """Defined by this module, or by its C accelerator (_io for io, _json for json.decoder)."""
    home = getattr(obj, "__module__", None) or ""
    return home == modname or home.lstrip("_") == modname.rsplit(".", 1)[-1]


def _clean(doc: str) -> str:
    return inspect.cleandoc(doc).strip()


def candidates() -> list[tuple[str, str]]:
    """Every usable (name, docstring) pair, each docstring once (first name wins)."""
    seen, out = set(), []
    with warnings.catch_warnings():  # typing.io and friends warn when their members are read
        warnings.simplefilter("ignore")
        found = [pair for modname in module_names() for pair in documented(modname)]
    for qname, doc in found:
        if len(doc) < MIN_DOC_CHARS or doc.startswith(BOILERPLATE) or doc in seen:
            continue
        seen.add(doc)
        out.append((qname, doc))
    return out


def row(qname: str, doc: str) -> dict:
    return {"messages": [{"role": "user", "content": f"What does {qname} do?"},
                         {"role": "assistant", "content": doc}]}


def token_lengths(rows: list[dict], tokenizer) -> list[int]:
    """Tokens of each rendered conversation, as the engine encodes it (the template carries
    its own special tokens, so none are added)."""
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def choose(lengths: list[int], n: int, seed: int) -> list[int]:
    """Indices of n rows whose lengths follow the target log-normal: the i-th target is the
    distribution's (i + 0.5)/n quantile, and each takes the unused row nearest to it (ties
    broken by the seeded shuffle). The result is shuffled with the same seed."""
    rnd = random.Random(seed)
    order = list(range(len(lengths)))
    rnd.shuffle(order)
    pool = sorted(order, key=lambda i: lengths[i])  # stable: equal lengths stay in shuffled order
    floor = lengths[pool[0]]
    usable = [i for i in pool if lengths[i] <= LENGTH_MAX]
    if len(usable) < n:
        raise SystemExit(f"only {len(usable)} docstrings of at most {LENGTH_MAX} tokens; ask for fewer rows")
    dist = NormalDist(math.log(LENGTH_MEDIAN), LENGTH_SIGMA)
    # from the longest target down: the long tail is where rows are scarce
    targets = sorted((min(max(math.exp(dist.inv_cdf((i + 0.5) / n)), floor), LENGTH_MAX) for i in range(n)),
                     reverse=True)
    sorted_lengths = [lengths[i] for i in usable]
    taken = [False] * len(usable)
    chosen = []
    for t in targets:
        j = _nearest_free(sorted_lengths, taken, t)
        taken[j] = True
        chosen.append(usable[j])
    rnd.shuffle(chosen)
    return chosen


def _nearest_free(sorted_lengths: list[int], taken: list[bool], target: float) -> int:
    """Index of the free length nearest to target (scanning out from the insertion point)."""
    k = bisect.bisect_left(sorted_lengths, target)
    lo, hi = k - 1, k
    while lo >= 0 or hi < len(sorted_lengths):
        while lo >= 0 and taken[lo]:
            lo -= 1
        while hi < len(sorted_lengths) and taken[hi]:
            hi += 1
        if lo < 0 and hi >= len(sorted_lengths):
            break
        if hi >= len(sorted_lengths) or (lo >= 0 and target - sorted_lengths[lo] <= sorted_lengths[hi] - target):
            return lo
        return hi
    raise RuntimeError("no free row left")  # choose() checked there are enough


def length_stats(lengths: list[int]) -> dict:
    s = sorted(lengths)
    q = statistics.quantiles(s, n=10, method="inclusive")
    return {"rows": len(s), "min": s[0], "p10": round(q[0]), "median": round(statistics.median(s)),
            "p90": round(q[-1]), "max": s[-1], "mean": round(statistics.fmean(s), 1), "total": sum(s)}


def build(out: Path, rows: int, seed: int) -> dict:
    from ft_engine.models import load_tokenizer

    tokenizer = load_tokenizer("bundled")
    pairs = candidates()
    all_rows = [row(q, d) for q, d in pairs]
    lengths = token_lengths(all_rows, tokenizer)
    picked = choose(lengths, rows, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(all_rows[i], ensure_ascii=False) + "\n" for i in picked), encoding="utf-8")
    tmp.replace(out)  # never a half-written file under the real name
    return {"candidates": len(pairs), "python": sys.version.split()[0], **length_stats([lengths[i] for i in picked])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the .jsonl file to write (default {DEFAULT_OUT})")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stats = build(Path(args.out), args.rows, args.seed)
    print(f"{args.out}: {stats['rows']} rows chosen from {stats['candidates']:,} stdlib docstrings "
          f"(Python {stats['python']}, seed {args.seed})")
    print("tokens per row (chat template rendered): "
          + ", ".join(f"{k} {stats[k]}" for k in ("min", "p10", "median", "p90", "max", "mean", "total")))


if __name__ == "__main__":
    main()
