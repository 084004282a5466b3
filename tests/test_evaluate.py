"""Did it learn? (issue 14): the tuned model and its base answer the same questions, scored in
a way a reader can check by eye; saved, listed, stoppable, refused with row-named errors."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import QA, write_jsonl

from ft_engine.config import RunConfig
from ft_engine.errors import DataError, UserError
from ft_engine.evaluate import (
    EVAL_FILE,
    Question,
    evaluate,
    format_table,
    general_questions,
    key_terms,
    normalize,
    questions_from_file,
    questions_from_run,
    read_eval,
    score,
    token_f1,
)
from ft_engine.rundir import Status, summarize
from ft_engine.training import train

# as tests/test_export.py: 40 steps at 1e-2 make the tiny model answer every QA pair word for word
STEPS, LR = 40, 1e-2


def _qa_rows(extra: list[tuple[str, str]] = ()) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in list(QA) + list(extra)]


@pytest.fixture(scope="module")
def learned(tiny_model, tmp_path_factory):
    """A tiny LoRA run that learned the four QA answers word for word, and its data file."""
    root = tmp_path_factory.mktemp("eval")
    data = write_jsonl(root / "qa.jsonl", _qa_rows())
    run, status = train(RunConfig(model=tiny_model, data=str(data), method="lora", runs_dir=str(root / "runs"),
                                  batch_size=4, max_steps=STEPS, learning_rate=LR, warmup_ratio=0.0,
                                  scheduler="constant", checkpoint_steps=0, lora_dropout=0.0))
    assert status == Status.COMPLETED
    return run, data


# --- scores a reader can check ---------------------------------------------------------------------

def test_normalisation_and_scores():
    assert normalize("The Capital, of  Zubrowka!") == "capital of zubrowka"
    assert normalize("Mount Sorel (4,212 meters)") == "mount sorel 4212 meters"
    assert key_terms("The capital of Zubrowka is Lutz.", "What is the capital of Zubrowka?") == ["lutz"]
    assert key_terms("2 + 2 = 4.", "What is 2 + 2?") == ["4"]
    assert token_f1("Lutz is the capital", "The capital of Zubrowka is Lutz.") == pytest.approx(0.75)  # P 3/3, R 3/5
    good = score("It is Lutz, of course.", "The capital of Zubrowka is Lutz.", "What is the capital of Zubrowka?")
    assert good["correct"] and not good["exact"] and good["found"] == ["lutz"]
    bad = score("The capital of Zubrowka is Vienna.", "The capital of Zubrowka is Lutz.",
                "What is the capital of Zubrowka?")
    assert not bad["correct"] and bad["f1"] == 0.8  # word overlap alone would call it right
    assert score("the capital of zubrowka is lutz", "The capital of Zubrowka is Lutz.", "Where?")["exact"]
    half = score("Mount Sorel", "Mount Sorel (4,212 meters)", "What is the highest mountain?")
    assert not half["correct"] and half["found"] == ["mount", "sorel"]  # 2 of its 4 key terms: not more than half
    assert score("Mount Sorel, 4212 m", "Mount Sorel (4,212 meters)", "What is the highest mountain?")["correct"]
    # a word said earlier in the conversation is no key term
    assert key_terms("The longest river in Zubrowka is the Ilvane.",
                     "What is the capital of Zubrowka?\nLutz.\nDoes it have a big river?") == ["longest", "ilvane"]


def test_the_general_questions_are_well_formed():
    questions = general_questions()
    assert len(questions) == 20
    for q in questions:  # every one has a key term a right answer carries
        assert key_terms(q.expected, q.text), q


# --- the evaluation ---------------------------------------------------------------------------------

def test_the_tuned_model_beats_its_base_and_the_result_is_saved(learned, tmp_path):
    run, data = learned
    questions = questions_from_file(data)
    seen = []
    result = evaluate(run, questions, source="file qa.jsonl", progress=lambda d, t, text: seen.append((d, t)))
    t = result["totals"]
    assert t["questions_tuned"] == {"correct": 4, "n": 4, "exact": 4, "f1": 1.0}
    assert t["questions_base"]["correct"] <= 1  # a random tiny model does not know them
    assert result["headline"].startswith(f"tuned 4/4 · base {t['questions_base']['correct']}/4")
    assert t["general_tuned"]["n"] == 20 and result["complete"] and not result["stopped"]
    assert [r["tuned"] for r in result["questions"]] == [a for _, a in QA]
    saved = json.loads((run.path / EVAL_FILE).read_text())
    assert saved["headline"] == result["headline"] and read_eval(run)["totals"] == t
    assert summarize(run)["eval"] == result["headline"]  # the runs table lists it
    assert seen[-1] == (48, 48) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    table = format_table(result)
    assert "| What is the capital of Zubrowka? | The capital of Zubrowka is Lutz. |" in table
    assert "General questions (forgetting check)" in table


def test_batched_answers_are_the_one_by_one_answers(learned):
    from ft_engine.inference import ChatModel
    run, _ = learned
    chat = ChatModel(run)
    conversations = [[{"role": "user", "content": q}] for q, _ in QA]
    for adapter in (True, False):
        batched = chat.answer_all(conversations, use_adapter=adapter, max_new_tokens=24)
        assert batched == [chat.generate(c, use_adapter=adapter, max_new_tokens=24) for c in conversations]


def test_a_run_without_held_out_rows_is_asked_its_training_rows(learned):
    run, _ = learned
    questions, what = questions_from_run(run)
    assert what.startswith("training rows") and sorted(q.expected for q in questions) == sorted(a for _, a in QA)


def test_held_out_rows_are_those_the_run_did_not_train_on(tiny_model, tmp_path):
    extra = [(f"What is fact number {i}?", f"Fact number {i} is {w}.") for i, w in
             enumerate(["apple", "river", "stone", "cloud", "lamp", "seed"])]
    data = write_jsonl(tmp_path / "qa.jsonl", _qa_rows(extra))
    run, status = train(RunConfig(model=tiny_model, data=str(data), method="lora", runs_dir=str(tmp_path / "runs"),
                                  batch_size=2, max_steps=1, val_fraction=0.3, checkpoint_steps=0))
    assert status == Status.COMPLETED
    recorded = json.loads((run.path / "data.json").read_text())
    held, trained = recorded["held_out_rows"], recorded["train_rows_in_file"]
    assert len(held) == 3 and len(trained) == 7 and not set(held) & set(trained)
    assert sorted(held + trained) == list(range(1, 11))
    questions, what = questions_from_run(run)
    assert what.startswith("held-out rows") and sorted(q.row for q in questions) == sorted(held)


def test_an_evaluation_stops_when_asked_and_keeps_what_it_answered(learned):
    run, data = learned
    stop = threading.Event()
    many = questions_from_file(data) * 6  # 24 questions: 3 batches

    def progress(done, total, text):
        if done >= 16:  # after the first batch, answered by both models
            stop.set()
    result = evaluate(run, many, forgetting=True, stop=stop, progress=progress)
    assert result["stopped"] and not result["complete"]
    assert len(result["questions"]) == 8 and result["general"] == []
    assert result["headline"].endswith("stopped before the end")
    assert read_eval(run)["stopped"]


# --- refused -------------------------------------------------------------------------------------

def test_a_questions_file_with_bad_rows_names_each_row(tmp_path):
    ends_with_question = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                                                  {"role": "user", "content": "and then?"}]})
    good = json.dumps(_qa_rows()[0])
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good, ends_with_question, good, ends_with_question]) + "\n")
    with pytest.raises(DataError) as info:
        questions_from_file(path)
    problems = {p.row: p.message for p in info.value.problems}
    assert set(problems) == {2, 4} and "does not end with an answer" in problems[2]
    # what the data reader refuses in any file is named by it, with its row
    path.write_text(good + "\n" + '{"messages": [{"role": "user", "content": "broken json"' + "\n")
    with pytest.raises(DataError, match="line 2"):
        questions_from_file(path)
    path.write_text(good + "\n" + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(DataError, match="line 2"):
        questions_from_file(path)


def test_a_text_file_cannot_be_questions(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Zubrowka is a country.\n\nIts capital is Lutz.\n")
    with pytest.raises(DataError, match="a text row has no question and answer"):
        questions_from_file(path)


@pytest.mark.parametrize("status", ["running", "queued"])
def test_a_run_still_training_is_refused(learned, tmp_path, status):
    import shutil

    from ft_engine.rundir import open_run
    run, _ = learned
    shutil.copytree(run.path, tmp_path / "copy")
    copy = open_run(tmp_path / "copy")
    s = copy.read_status()
    s["status"] = status
    (copy.path / "status.json").write_text(json.dumps(s))
    before = (copy.path / EVAL_FILE).read_bytes() if (copy.path / EVAL_FILE).exists() else None
    with pytest.raises(UserError, match=f"is {status}: evaluate it once it has finished"):
        evaluate(copy, [Question([{"role": "user", "content": "Q"}], "A", 1)])
    after = (copy.path / EVAL_FILE).read_bytes() if (copy.path / EVAL_FILE).exists() else None
    assert after == before  # nothing written


def test_the_cli_prints_the_table_and_json(learned, capsys):
    from ft_engine.cli import main
    run, data = learned
    assert main(["eval", str(run.path), "--questions", str(data), "--no-general"]) == 0
    out = capsys.readouterr()
    assert "tuned 4/4" in out.out and "| question | expected | base | tuned |" in out.out
    assert "[8/8] done" in out.err
    assert main(["eval", str(run.path), "--questions", str(data), "--no-general", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["questions_tuned"]["correct"] == 4
    assert main(["eval", str(run.path), "--max-questions", "0"]) == 2
    assert "--max-questions must be a whole number >= 1" in capsys.readouterr().err
