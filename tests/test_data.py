"""Tests for ft_engine.data: every format normalized, every bad file explained with row and field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ft_engine.data import FILE_TYPES, FORMAT_DESCRIPTIONS, FORMATS, Example, load_examples
from ft_engine.errors import DataError, UserError

BAD_DATA = Path(__file__).parent / "bad_data"
EXPECTED = json.loads((BAD_DATA / "expected.json").read_text(encoding="utf-8"))

CHAT_ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
USER_HI = {"role": "user", "content": "Hi"}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def load_error(path: Path, data_format: str = "auto") -> DataError:
    with pytest.raises(DataError) as info:
        load_examples(path, data_format)
    return info.value


def assert_problem(err: DataError, row: int | None, field: str | None, contains: str) -> None:
    """The first problem has this row and field, and the one-line summary names file, row and field."""
    first = err.problems[0]
    assert (first.row, first.field) == (row, field), err.problems
    assert contains in first.message
    head = str(err).splitlines()[0]
    assert os.path.basename(err.path) in head
    if row is not None:
        assert f"{first.row_kind} {row}" in head
    if field is not None:
        assert f"field '{field}'" in head


# --- good files ----------------------------------------------------------------------------


def test_public_constants() -> None:
    assert FILE_TYPES == (".jsonl", ".json", ".csv", ".parquet", ".txt")
    assert FORMATS == ("chat", "sharegpt", "alpaca", "prompt_completion", "text")
    assert set(FORMAT_DESCRIPTIONS) == set(FORMATS)
    assert issubclass(DataError, UserError)


def test_chat_jsonl_keeps_only_role_and_content(tmp_path: Path) -> None:
    row = {"id": 7, "messages": [{"role": "system", "content": "Be brief", "name": "x"},
                                 USER_HI, {"role": "assistant", "content": "Hello!", "weight": 1}]}
    path = write(tmp_path, "chat.jsonl", jsonl(row) + "\n" + jsonl(CHAT_ROW))
    data = load_examples(path)
    assert (data.format, data.file_type, data.path) == ("chat", ".jsonl", str(path))
    assert [e.row for e in data.examples] == [1, 3]
    assert data.examples[0] == Example(row=1, text=None, messages=[
        {"role": "system", "content": "Be brief"}, USER_HI, {"role": "assistant", "content": "Hello!"}])
    assert data.ignored_columns == ["id"]
    assert data.describe() == "chat (messages), 2 rows from chat.jsonl"


def test_sharegpt_json_maps_roles(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                               {"from": "gpt", "value": "A"}]},
            {"conversations": [{"from": "user", "value": "Q2"}, {"from": "assistant", "value": "A2"}]}]
    data = load_examples(write(tmp_path, "s.json", json.dumps(rows)))
    assert data.format == "sharegpt"
    assert data.examples[0].messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                         {"role": "assistant", "content": "A"}]
    assert data.examples[1] == Example(2, [{"role": "user", "content": "Q2"},
                                           {"role": "assistant", "content": "A2"}], None)


def test_json_object_wrapping_one_list(tmp_path: Path) -> None:
    data = load_examples(write(tmp_path, "w.json", json.dumps({"data": [{"prompt": "p", "completion": "c"}]})))
    assert data.format == "prompt_completion" and len(data.examples) == 1


def test_alpaca_csv_with_and_without_input(tmp_path: Path) -> None:
    text = 'id,instruction,input,output\n1,Translate,"Bonjour,\nmonde",Hello world\n2,Say hi,,Hi\n'
    data = load_examples(write(tmp_path, "a.csv", text))
    assert data.format == "alpaca" and data.ignored_columns == ["id"]
    assert [e.row for e in data.examples] == [2, 4]  # the quoted field spans lines 2-3
    assert data.examples[0].messages == [{"role": "user", "content": "Translate\n\nBonjour,\nmonde"},
                                         {"role": "assistant", "content": "Hello world"}]
    assert data.examples[1].messages == [{"role": "user", "content": "Say hi"},
                                         {"role": "assistant", "content": "Hi"}]
    assert data.describe() == "alpaca (instruction/input/output), 2 rows from a.csv"


def test_alpaca_null_input_and_no_input_column(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", jsonl({"instruction": "I", "input": None, "output": "O"},
                                            {"instruction": "I2", "output": "O2"}))
    assert [e.messages[0]["content"] for e in load_examples(path).examples] == ["I", "I2"]


def test_prompt_completion_parquet(tmp_path: Path) -> None:
    path = tmp_path / "pc.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", "c2"], "source": ["x", "y"]}), path)
    data = load_examples(path)
    assert (data.format, data.file_type, data.ignored_columns) == ("prompt_completion", ".parquet", ["source"])
    assert data.examples[1] == Example(2, [{"role": "user", "content": "p2"},
                                           {"role": "assistant", "content": "c2"}], None)


def test_text_column_jsonl(tmp_path: Path) -> None:
    data = load_examples(write(tmp_path, "t.jsonl", jsonl({"text": "one"}, {"text": "two\nlines"})))
    assert data.format == "text"
    assert data.examples == [Example(1, None, "one"), Example(2, None, "two\nlines")]


def test_txt_documents_split_on_blank_lines(tmp_path: Path) -> None:
    text = "\n\nFirst doc\nsecond line\n\n\n  \nSecond doc\n\nThird\n"
    data = load_examples(write(tmp_path, "d.txt", text))
    assert (data.format, data.file_type) == ("text", ".txt")
    assert data.examples == [Example(3, None, "First doc\nsecond line"), Example(8, None, "Second doc"),
                             Example(10, None, "Third")]
    assert data.describe() == "text (documents separated by blank lines), 3 rows from d.txt"


def test_txt_crlf_line_endings(tmp_path: Path) -> None:
    data = load_examples(write(tmp_path, "d.txt", b"a\r\nb\r\n\r\nc\r\n"))
    assert data.examples == [Example(1, None, "a\nb"), Example(4, None, "c")]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.csv", "\ufeffprompt,completion\nHi,Hello\n".encode("utf-8"))
    data = load_examples(path)
    assert data.format == "prompt_completion" and data.examples[0].row == 2


@pytest.mark.parametrize("row, expected", [
    (CHAT_ROW, "chat"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt"),
    ({"instruction": "i", "output": "o"}, "alpaca"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"text": "t"}, "text"),
])
def test_detection(tmp_path: Path, row: dict, expected: str) -> None:
    assert load_examples(write(tmp_path, "x.jsonl", jsonl(row))).format == expected


def test_explicit_format_reports_missing_fields_per_row(tmp_path: Path) -> None:
    path = write(tmp_path, "x.jsonl", jsonl({"prompt": "p", "completion": "c", "text": "t"}))
    assert load_examples(path).format == "prompt_completion"
    assert load_examples(path, "text").examples == [Example(1, None, "t")]
    err = load_error(write(tmp_path, "z.jsonl", jsonl({"prompt": "p", "completion": "c"})), "text")
    assert_problem(err, 1, "text", "looks like prompt_completion but the file is text (set by data_format)")
    err = load_error(write(tmp_path, "y.jsonl", jsonl({"question": "q"})), "text")
    assert_problem(err, 1, "text", "missing")


# --- bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_data_corpus(name: str) -> None:
    before = snapshot(BAD_DATA)
    err = load_error(BAD_DATA / name)
    want = EXPECTED[name]
    assert_problem(err, want["row"], want["field"], want["contains"])
    assert snapshot(BAD_DATA) == before  # reading never writes


def test_corpus_files_are_all_listed() -> None:
    files = {p.name for p in BAD_DATA.iterdir()} - {"expected.json"}
    assert files == set(EXPECTED)
    assert all((BAD_DATA / n).stat().st_size < 2048 for n in files)


def test_wrong_types(tmp_path: Path) -> None:
    rows = [{"messages": "hello"}, {"messages": []}, {"messages": [USER_HI, "text"]},
            {"messages": [USER_HI, {"role": "assistant", "content": None}]},
            {"messages": [USER_HI, {"role": "assistant", "content": {"a": 1}}]}]
    err = load_error(write(tmp_path, "x.jsonl", jsonl(CHAT_ROW, *rows)))
    got = [(p.row, p.field) for p in err.problems]
    assert got == [(2, "messages"), (3, "messages"), (4, "messages[1]"), (5, "messages[1].content"),
                   (6, "messages[1].content")]
    assert "got str" in err.problems[0].message and "got an empty list" in err.problems[1].message
    assert "must be a string, got null" in err.problems[3].message
    assert "must be a string, got dict" in err.problems[4].message


def test_missing_role_and_content(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "x.jsonl", jsonl({"messages": [{"content": "Hi"}, {"role": "assistant"}]})))
    assert [(p.row, p.field) for p in err.problems] == [(1, "messages[0].role"), (1, "messages[1].content")]


def test_every_problem_is_reported(tmp_path: Path) -> None:
    rows = [{"instruction": "i", "output": "o"}] + [{"instruction": "i", "output": n} for n in range(25)]
    err = load_error(write(tmp_path, "many.jsonl", jsonl(*rows)))
    assert err.total == 25 and len(err.problems) == 25
    assert [p.row for p in err.problems] == list(range(2, 27))
    lines = str(err).splitlines()
    assert "line 2, field 'output'" in lines[0] and "many.jsonl" in lines[0]
    assert len([line for line in lines if line.startswith("  - ")]) == 10
    assert "25 problems in all" in lines[-1]


def test_mixed_formats_names_detection_row(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "prompt,completion,text\np,c,\n,,just text\n")
    err = load_error(path)
    assert_problem(err, 3, "prompt", "looks like text but the file is prompt_completion (detected from line 2)")


def test_unknown_columns_lists_columns_and_formats(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "u.csv", "question,answer\nq,a\n"))
    message = err.problems[0].message
    assert "'question', 'answer'" in message and "header" in message
    assert all(f"{fmt}: {desc}" in message for fmt, desc in FORMAT_DESCRIPTIONS.items())


def test_parquet_unknown_columns(tmp_path: Path) -> None:
    path = tmp_path / "u.parquet"
    pq.write_table(pa.table({"q": ["x"], "a": ["y"]}), path)
    err = load_error(path)
    assert_problem(err, 1, None, "'q', 'a'")
    assert err.problems[0].row_kind == "record"


def test_latin1_names_the_line(tmp_path: Path) -> None:
    content = jsonl({"text": "ok"}, {"text": "ok"}).encode() + '{"text": "caf\xe9"}\n'.encode("latin-1")
    path = write(tmp_path, "l.jsonl", content)
    assert_problem(load_error(path), 3, None, "re-save it as UTF-8")


def test_utf16_without_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "u.csv", "prompt,completion\nHi,Hello\n".encode("utf-16-le"))
    assert_problem(load_error(path), 1, None, "UTF-16")


def test_binary_parquet_with_text_extension(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    pq.write_table(pa.table({"text": ["x"]}), path)
    assert_problem(load_error(path), None, None, "rename it to .parquet")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert_problem(load_error(tmp_path / "nope.jsonl"), None, None, "file not found")
    assert_problem(load_error(tmp_path), None, None, "folder")


def test_bad_requests(tmp_path: Path) -> None:
    path = write(tmp_path, "d.txt", "hello\n")
    assert_problem(load_error(path, "alpaca"), None, None, "data_format must be 'text' or 'auto'")
    assert_problem(load_error(path, "yaml"), None, None, "unknown data format 'yaml'")
    err = load_error(write(tmp_path, "data", "x"))
    assert all(t in err.problems[0].message for t in FILE_TYPES)


def test_empty_containers(tmp_path: Path) -> None:
    assert_problem(load_error(write(tmp_path, "e.json", "[]")), None, None, "no data rows")
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    assert_problem(load_error(path), None, None, "no data rows")


def test_json_lines_saved_as_json(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "x.json", jsonl({"text": "a"}, {"text": "b"})))
    assert_problem(err, 2, None, "rename the file to .jsonl")


def test_load_writes_nothing(tmp_path: Path) -> None:
    good = write(tmp_path, "g.csv", "prompt,completion\np,c\n")
    bad = write(tmp_path, "b.jsonl", "{oops\n")
    before = snapshot(tmp_path)
    load_examples(good)
    load_error(bad)
    assert snapshot(tmp_path) == before


# --- which rows a run trains on: data.first_rows and data.select_rows --------------------------

def test_select_rows_is_a_seeded_partition() -> None:
    from types import SimpleNamespace

    from ft_engine.data import held_out_count, select_rows
    rows = [f"row {i}" for i in range(50)]
    cfg = SimpleNamespace(seed=7, val_fraction=0.1)
    train, held_out = select_rows(rows, cfg)
    assert len(held_out) == 5 and sorted(train + held_out) == sorted(rows)  # every row, once
    assert select_rows(rows, cfg) == (train, held_out)  # same seed, same rows: the same split
    assert select_rows(rows, SimpleNamespace(seed=8, val_fraction=0.1))[1] != held_out
    # the split depends on the seed and the number of rows only, not on what the rows hold
    assert select_rows(list(range(50)), cfg)[1] == [int(r.split()[1]) for r in held_out]
    assert select_rows(rows, SimpleNamespace(seed=7, val_fraction=0.0))[1] == []
    assert (held_out_count(3, 0.1), held_out_count(3, 0.0), held_out_count(40, 0.25)) == (1, 0, 10)


def test_training_compare_and_preview_choose_the_same_rows(tiny_model, tmp_path: Path) -> None:
    """The rows training holds out (data.json), the comparison's sample prompt (the first held-out
    question) and the rows the Data tab previews all come from data.first_rows/select_rows."""
    from ft_engine.compare import default_prompt
    from ft_engine.config import RunConfig
    from ft_engine.data import first_rows, select_rows
    from ft_engine.preview import preview_data
    from ft_engine.rundir import DATA_FILE
    from ft_engine.training import TrainingJob
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(1, 31)]
    # line 4 is so long that max_seq_len leaves it no answer: encoding drops it, so the split is
    # drawn from the 19 rows that survive of the first 20 (max_rows), not from the 20 themselves
    rows[3]["messages"][0]["content"] = "a very long question " * 40
    path = write(tmp_path, "qa.jsonl", jsonl(*rows))
    cfg = RunConfig(model=tiny_model, data=str(path), runs_dir=str(tmp_path / "runs"), max_rows=20,
                    val_fraction=0.2, seed=11, max_seq_len=32, max_steps=1)
    run = TrainingJob(cfg).prepare()
    recorded = run.read_json(DATA_FILE)

    kept = [ex.row for ex in first_rows(load_examples(path), cfg.max_rows).examples if ex.row != 4]
    train, held_out = select_rows(kept, cfg)
    assert (recorded["held_out_rows"], recorded["train_rows_in_file"]) == (held_out, train)
    assert (recorded["val_rows"], recorded["train_rows"], recorded["rows_in_file"]) == (4, 15, 30)
    assert default_prompt(cfg) == f"question {held_out[0]}"  # a row no method trains on
    preview = preview_data(str(path), tiny_model, max_seq_len=32, max_rows=cfg.max_rows)
    assert (preview.rows, preview.rows_in_file, preview.dropped_rows) == (20, 30, [4])
