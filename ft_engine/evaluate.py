"""Did it learn? The tuned model and its base answer the same questions, side by side, scored.

Questions come from the run's held-out rows (its validation split, as training drew it), or,
for a run that held none out, from its training rows (said so: those measure what it was
taught, not what it generalised), or from a file the user gives (any training-data format
with answers). Each row becomes one question: its conversation up to the last assistant turn,
which is the expected answer. A small general set shipped in assets/ (geography, arithmetic,
grammar, simple code, written for this project) is asked too: the forgetting check, which
shows what tuning broke that the base knew.

Scores, per answer, for a reader who is not a programmer:
  correct      the answer carries the expected answer's key terms: the words of its first
               sentence that are not in the conversation so far and not common words (for
               "The capital of Zubrowka is Lutz." asked "What is the capital of Zubrowka?"
               that is "lutz"); every number among them, and more than half of them by weight,
               a number counting twice (1 of 1 needed, 2 of 2 or 3, 3 of 4 or 5); or the whole
               answer matches exactly. A heuristic: a right answer in other words can miss
               ("pay with the klubeck" for "the currency is the klubeck" needs "klubeck" and
               one more), and the table shows every answer to check by eye;
  exact        the answer equals the expected one after normalisation (lower case, no
               punctuation, no articles, single spaces: SQuAD's rule);
  f1           word overlap of the two (SQuAD's token F1), 0 to 1.
Totals read "tuned 27/30 · base 2/30". Everything is saved as eval.json in the run folder.

Answers are greedy, generated several questions at a time (left-padded batches: on 2 CPU
cores 8 at once is ~5x faster than one by one), and the evaluation stops between batches when
asked.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from . import stack
from .errors import DataError, DataProblem, UserError
from .rundir import DATA_FILE, EVAL_FILE, RunDir, Status, atomic_write_text, utc_now

GENERAL_QUESTIONS = Path(__file__).resolve().parent.parent / "assets" / "general_questions.jsonl"
MAX_QUESTIONS = 30
"""Questions asked by default: enough for a table people read, short enough to wait for (30
held-out and 20 general questions, each answered twice, take about a minute on 2 CPU cores
with the bundled model)."""
BATCH = 8
MAX_NEW_TOKENS = 64
"""Longest answer generated (answer_budget gives shorter expected answers less): the expected
answers of instruction data are mostly shorter, and a key term comes early or not at all."""

# Common English words, never key terms (SQuAD's articles plus the usual function words).
_COMMON = set("""a an the and or but if then so of in on at to for from by with without about into over under
is are was were be been being am do does did done has have had having can could will would shall should may
might must it its it's this that these those there here what which who whom whose when where why how
i me my we our you your he him his she her they them their not no yes as than too very also just only
all any some each every more most other such own same up down out off again one""".split())


# --- scoring ------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    """SQuAD's normalisation (lower case, punctuation and articles removed, single spaces), and
    a possessive 's dropped first, so "Zubrowka's" is the word "zubrowka"."""
    text = re.sub(r"(\w)['’]s\b", r"\1", text.lower())
    text = "".join(c for c in text if c not in string.punctuation and c not in "“”‘’«»")
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(answer: str, expected: str) -> float:
    a, e = normalize(answer).split(), normalize(expected).split()
    if not a or not e:
        return float(a == e)
    common = sum((Counter(a) & Counter(e)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(e)
    return 2 * precision * recall / (precision + recall)


def first_sentence(text: str) -> str:
    """The expected answer's first sentence: where its answer is; what follows adds detail a
    right but shorter answer leaves out (a decimal point or an abbreviation does not end it)."""
    found = re.search(r"(?<!\b[A-Z])(?<!\d)[.!?](\s|$)", text.strip())
    return text.strip()[:found.start() + 1] if found else text.strip()


def key_terms(expected: str, question: str) -> list[str]:
    """The words of `expected`'s first sentence a correct answer must carry: not in the
    conversation so far, not common. When every word is in the question (or common), its
    uncommon words; at worst all of them."""
    asked = set(normalize(question).split())
    words = list(dict.fromkeys(normalize(first_sentence(expected)).split()))
    terms = [w for w in words if w not in asked and w not in _COMMON]
    return terms or [w for w in words if w not in _COMMON] or words


def _weight(term: str) -> int:
    """A number counts twice: a wrong year or size is a wrong answer, however close the words."""
    return 2 if any(c.isdigit() for c in term) else 1


def score(answer: str, expected: str, question: str) -> dict:
    """correct: every number of the key terms is said, and the terms said carry more than half
    of their weight (numbers count twice); exact; SQuAD's token F1."""
    terms = key_terms(expected, question)
    said = set(normalize(answer).split())
    found = [t for t in terms if t in said]
    exact = normalize(answer) == normalize(expected)
    numbers_said = all(t in said for t in terms if _weight(t) == 2)
    carried = 2 * sum(map(_weight, found)) > sum(map(_weight, terms))
    return {"correct": exact or (bool(terms) and numbers_said and carried), "exact": exact,
            "f1": round(token_f1(answer, expected), 4), "terms": terms, "found": found}


# --- questions -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Question:
    messages: list[dict]  # the conversation up to the answer to give
    expected: str
    row: int              # of the file it came from

    @property
    def source(self) -> str:
        return f"row {self.row}"

    @property
    def text(self) -> str:
        """The last user turn: what the table shows as the question."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def asked(self) -> str:
        """Everything said before the answer: a word from there is no evidence of knowing it."""
        return "\n".join(m["content"] for m in self.messages)


def questions_from_file(path: str | Path, data_format: str = "auto") -> list[Question]:
    """Every row of a data file as a question with its expected answer (DataError naming each
    row that has none: a text row, or a conversation that does not end with an answer)."""
    questions, problems = _read_questions(str(path), data_format)
    if problems:
        raise DataError(str(path), problems)
    return questions


def _read_questions(path: str, data_format: str) -> tuple[list[Question], list[DataProblem]]:
    """The rows of a data file that are questions with answers, and a problem for each other row."""
    from .data import load_examples
    questions, problems = [], []
    for ex in load_examples(path, data_format).examples:
        if ex.messages is None:
            problems.append(DataProblem(ex.row, None, "a text row has no question and answer: use a chat, alpaca "
                                                      "or prompt/completion file for an evaluation"))
        elif ex.messages[-1]["role"] != "assistant" or not ex.messages[-1]["content"].strip():
            problems.append(DataProblem(ex.row, None, "the row does not end with an answer (an assistant turn) "
                                                      "to compare the model's with: add the expected answer"))
        elif not any(m["role"] == "user" for m in ex.messages[:-1]):
            problems.append(DataProblem(ex.row, None, "the row has no question (a user turn) before its answer"))
        else:
            questions.append(Question(ex.messages[:-1], ex.messages[-1]["content"], ex.row))
    return questions, problems


def held_out_rows(run: RunDir) -> tuple[list[int], str]:
    """(file rows, what they are): the run's held-out rows, else its training rows."""
    try:
        data = json.loads((run.path / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"run {run.run_id} has no readable {DATA_FILE} ({e}): evaluate it with a questions file") from None
    held, trained = data.get("held_out_rows"), data.get("train_rows_in_file")
    if held:
        return held, "held-out rows (not trained on)"
    if trained:
        return trained, "training rows (this run held none out: these show what it was taught)"
    raise UserError(f"run {run.run_id} did not record which rows it trained on (trained before evaluations "
                    f"existed): evaluate it with a questions file")


def questions_from_run(run: RunDir, limit: int = MAX_QUESTIONS, seed: int = 0) -> tuple[list[Question], str]:
    """Up to `limit` of the run's held-out (else training) rows as questions, a seeded sample."""
    rows, what = held_out_rows(run)
    config = run.read_config()
    if not Path(config.data).is_file():
        raise UserError(f"run {run.run_id}'s data file {Path(config.data).name} is gone: evaluate it with a "
                        f"questions file")
    answerable, _ = _read_questions(config.data, config.data_format)  # training rows without answers are skipped
    by_row = {q.row: q for q in answerable}
    picked = [by_row[r] for r in rows if r in by_row]
    if not picked:
        raise UserError(f"none of the rows run {run.run_id} recorded are questions with answers: evaluate "
                        f"it with a questions file")
    if len(picked) > limit:
        picked = sorted(random.Random(seed).sample(picked, limit), key=lambda q: q.row)
    return picked, what


def general_questions() -> list[Question]:
    return questions_from_file(GENERAL_QUESTIONS)


# --- the evaluation ------------------------------------------------------------------------------

Progress = Callable[[int, int, str], None]


def evaluate(run: RunDir, questions: list[Question] | None = None, source: str | None = None,
             forgetting: bool = True, stop: threading.Event | None = None, progress: Progress | None = None,
             chat=None, max_questions: int = MAX_QUESTIONS) -> dict:
    """Ask the tuned and the base model every question (and the general ones), score, save
    eval.json, return it. questions None: the run's own rows (questions_from_run). `stop` set:
    ends after the current batch, saving what was answered (stopped: true)."""
    result = None
    for result in iter_evaluate(run, questions, source, forgetting, stop, progress, chat, max_questions):
        pass
    return result


def iter_evaluate(run: RunDir, questions: list[Question] | None = None, source: str | None = None,
                  forgetting: bool = True, stop: threading.Event | None = None, progress: Progress | None = None,
                  chat=None, max_questions: int = MAX_QUESTIONS) -> Iterator[dict]:
    """evaluate(), yielding the result so far after every batch (the last one is final)."""
    stack.load()  # the models answer with torch and transformers: loaded once, one thread at a time
    from .inference import ChatModel
    status = run.read_status().get("status")
    if status in (Status.RUNNING.value, Status.QUEUED.value):
        raise UserError(f"run {run.run_id} is {status}: evaluate it once it has finished")
    if run.result_dir is None:
        raise UserError(f"run {run.run_id} has no trained result to evaluate (status: {status})")
    if questions is None:
        questions, source = questions_from_run(run, max_questions)
    elif not questions:
        raise UserError("the questions file holds no questions")
    general = general_questions() if forgetting else []
    chat = chat or ChatModel(run)
    say = progress or (lambda done, total, text: None)
    total = 2 * (len(questions) + len(general))
    result = {"run_id": run.run_id, "created_at": utc_now(), "source": source or "questions file",
              "questions": [], "general": [], "complete": False, "stopped": False}
    done = 0
    for part, items in (("questions", questions), ("general", general)):
        for start in range(0, len(items), BATCH):
            batch = items[start:start + BATCH]
            say(done, total, f"{'held-out' if part == 'questions' else 'general'} questions "
                             f"{start + 1}-{start + len(batch)} of {len(items)}")
            if stop is not None and stop.is_set():
                result["stopped"] = True
                _finish(run, result)
                yield result
                return
            answers = {}
            budget = answer_budget(chat.tokenizer, batch)
            for who, adapter in (("tuned", True), ("base", False)):
                answers[who] = chat.answer_all([q.messages for q in batch], use_adapter=adapter,
                                               max_new_tokens=budget)
                done += len(batch)
            for i, q in enumerate(batch):
                result[part].append({"question": q.text, "expected": q.expected, "source": q.source,
                                     "tuned": answers["tuned"][i], "base": answers["base"][i],
                                     "tuned_score": score(answers["tuned"][i], q.expected, q.asked),
                                     "base_score": score(answers["base"][i], q.expected, q.asked)})
            result["totals"] = totals(result)
            yield result
    result["complete"] = True
    say(total, total, "done")
    _finish(run, result)
    yield result


def answer_budget(tokenizer, batch: list[Question]) -> int:
    """New tokens for a batch: twice the longest expected first sentence, and 8 more, at most
    MAX_NEW_TOKENS. Scoring reads key terms of that sentence, which a right answer says early;
    a base model that rambles on to 64 tokens costs the whole batch that long."""
    longest = max(len(tokenizer(first_sentence(q.expected), add_special_tokens=False)["input_ids"]) for q in batch)
    return min(MAX_NEW_TOKENS, 2 * longest + 8)


def totals(result: dict) -> dict:
    """Counts for the table's headline: correct, exact and mean F1 per model and part, and the
    general questions the base answered and the tuned model no longer does (forgotten)."""
    out = {}
    for part in ("questions", "general"):
        rows = result.get(part) or []
        for who in ("tuned", "base"):
            scores = [r[f"{who}_score"] for r in rows]
            out[f"{part}_{who}"] = {"correct": sum(s["correct"] for s in scores), "n": len(scores),
                                    "exact": sum(s["exact"] for s in scores),
                                    "f1": round(sum(s["f1"] for s in scores) / len(scores), 4) if scores else None}
        out[f"{part}_forgotten"] = [r["question"] for r in rows if r["base_score"]["correct"]
                                    and not r["tuned_score"]["correct"]]
    return out


def _finish(run: RunDir, result: dict) -> None:
    result["totals"] = totals(result)
    result["headline"] = headline(result)
    atomic_write_text(run.path / EVAL_FILE, json.dumps(result, indent=1, ensure_ascii=False))


def headline(result: dict) -> str:
    """"tuned 27/30 · base 2/30; general questions: tuned 15/20 · base 16/20 (1 forgotten)"."""
    t = result.get("totals") or totals(result)
    parts = []
    q_t, q_b = t["questions_tuned"], t["questions_base"]
    if q_t["n"]:
        parts.append(f"tuned {q_t['correct']}/{q_t['n']} · base {q_b['correct']}/{q_b['n']}")
    g_t, g_b = t["general_tuned"], t["general_base"]
    if g_t["n"]:
        forgotten = len(t["general_forgotten"])
        parts.append(f"general questions: tuned {g_t['correct']}/{g_t['n']} · base {g_b['correct']}/{g_b['n']}"
                     + (f" ({forgotten} forgotten)" if forgotten else ""))
    line = "; ".join(parts) or "no questions answered"
    return line + (" — stopped before the end" if result.get("stopped") else "")


def read_eval(run: RunDir) -> dict | None:
    """The run's saved evaluation, or None (none made, or the file damaged)."""
    try:
        data = json.loads((run.path / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def format_table(result: dict, width: int = 60) -> str:
    """The evaluation as Markdown: the headline, then one row per question."""
    def cell(text: str) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return text if len(text) <= width else text[:width - 1] + "…"

    def mark(s: dict) -> str:
        return "✅" if s["correct"] else "❌"

    lines = [f"**{result.get('headline') or headline(result)}** (questions: {result.get('source')})", ""]
    for part, title in (("questions", "Questions"), ("general", "General questions (forgetting check)")):
        rows = result.get(part) or []
        if not rows:
            continue
        lines += [f"### {title}", "", "| question | expected | base | tuned | F1 base → tuned |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {cell(r['question'])} | {cell(r['expected'])} | {mark(r['base_score'])} "
                         f"{cell(r['base'])} | {mark(r['tuned_score'])} {cell(r['tuned'])} | "
                         f"{r['base_score']['f1']:.2f} → {r['tuned_score']['f1']:.2f} |")
        lines.append("")
    return "\n".join(lines)
