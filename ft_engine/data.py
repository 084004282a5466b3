"""Load a user's training data file, detect its format, validate every row, normalize it.

Readers are plain (json, csv, pyarrow) rather than `datasets` so that every problem carries
the exact line or record number the user sees in an editor. All problems in the file are
collected and raised together as one `DataError`, so one round of fixes is enough.
This module only reads the file; it never writes anything.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import DataError, DataProblem

if TYPE_CHECKING:
    from .config import RunConfig

T = TypeVar("T")

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
FORMATS = ("chat", "sharegpt", "alpaca", "prompt_completion", "text")
FORMAT_DESCRIPTIONS: dict[str, str] = {
    "chat": '{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}',
    "sharegpt": '{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}',
    "alpaca": '{"instruction": "...", "input": "..." (optional), "output": "..."}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "text": '{"text": "..."}, or a .txt file with documents separated by blank lines',
}

# Detection rules in priority order: the format whose keys are all present wins.
_DETECT_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
_USED_COLUMNS: dict[str, tuple[str, ...]] = {**_DETECT_KEYS, "alpaca": ("instruction", "input", "output")}
_CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
_SNIFF_BYTES = 8192
# json's decoder recurses once per [ or {; past Python's recursion limit (1,000 frames, fewer
# in a server's handler thread) it raises RecursionError, which reached the page raw (issue 11).
_TOO_DEEP = ("nested too deeply to read (hundreds of [ ] or { } inside each other); a training row needs "
             "only a few levels, e.g. {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}]}")
# Python's int() refuses more than 4,300 digits (sys.get_int_max_str_digits(), since 3.11).
_TOO_LONG_NUMBER = ("holds a number of more than 4,300 digits, too long to read; write numbers of ordinary "
                    "size, or put the value in quotes")
_LINE_ROWS = (".jsonl", ".csv", ".txt")  # other types count records, not lines

Issue = tuple[str | None, str]  # (field path, message) inside one row, before the row number is known


@dataclass
class Example:
    """One normalized training example: `messages` for every format except text, else `text`."""

    row: int
    messages: list[dict] | None
    text: str | None


@dataclass
class LoadedData:
    """A validated data file: its detected format, normalized examples and unused columns."""

    path: str
    file_type: str
    format: str
    examples: list[Example]
    ignored_columns: list[str]

    def describe(self) -> str:
        """One line for logs and the UI, e.g. "alpaca (instruction/input/output), 312 rows from data.csv"."""
        if self.file_type == ".txt":
            fields = "documents separated by blank lines"
        else:
            fields = "/".join(_USED_COLUMNS[self.format])
        n = len(self.examples)
        return f"{self.format} ({fields}), {n} row{'s' if n != 1 else ''} from {os.path.basename(self.path)}"

    def system_prompt(self) -> str | None:
        """The system prompt every row opens with, when they all open with the same one (what
        a model trained on them expects; an Ollama Modelfile's SYSTEM), else None."""
        prompts = {e.messages[0]["content"] if e.messages and e.messages[0]["role"] == "system" else None
                   for e in self.examples}
        return prompts.pop() if len(prompts) == 1 else None


def load_examples(path: str | os.PathLike, data_format: str = "auto") -> LoadedData:
    """Read `path`, detect (or use the given) format, validate every row and normalize it.

    Raises DataError listing every problem found in the file.
    """
    path_str = os.fspath(path)
    file_type = _check_request(path_str, data_format)
    data = _read_bytes(path_str)
    if file_type == ".parquet":
        records, problems = _read_parquet(path_str, data)
    else:
        text = _decode_text(path_str, data)
        if file_type == ".txt":
            examples = [Example(row=row, messages=None, text=doc) for row, doc in _split_documents(text)]
            return LoadedData(path_str, file_type, "text", examples, [])
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[file_type]
        records, problems = reader(path_str, text)

    kind = "line" if file_type in _LINE_ROWS else "record"
    if not records:
        if not problems:
            problems = [DataProblem(None, None, "the file holds no data rows; add at least one example")]
        raise _sorted_error(path_str, problems)

    explicit = data_format != "auto"
    first_row, first = records[0]
    fmt = data_format if explicit else _guess_format(k for k, v in first.items() if v is not None)
    if fmt is None:
        problems.append(DataProblem(first_row, None, _unknown_columns_message(first, file_type), kind))
        raise _sorted_error(path_str, problems)
    origin = "set by data_format" if explicit else f"detected from {kind} {first_row}"

    examples: list[Example] = []
    for row, record in records:
        value, issues = _validate_record(record, fmt, origin)
        problems.extend(DataProblem(row, field, message, kind) for field, message in issues)
        if not issues:
            examples.append(Example(row, None, value) if fmt == "text" else Example(row, value, None))
    if problems:
        raise _sorted_error(path_str, problems)
    if not examples:
        raise DataError(path_str, [DataProblem(None, None, "no usable rows; add at least one example")])
    return LoadedData(path_str, file_type, fmt, examples, _ignored_columns(records, fmt))


# --- which rows a run trains on and which it holds out ---------------------------------
# Training (training.py), a comparison's sample prompt (compare.py) and the Data tab's preview
# (preview.py) all choose rows through these two functions, so they always agree.

def first_rows(data: LoadedData, max_rows: int) -> LoadedData:
    """`data` with only its first `max_rows` rows, in file order (RunConfig.max_rows; 0 or
    less: every row). The first rows, not a sample, so the user knows which ones were used."""
    if max_rows > 0 and len(data.examples) > max_rows:
        return dataclasses.replace(data, examples=data.examples[:max_rows])
    return data


def held_out_count(n_rows: int, val_fraction: float) -> int:
    """How many of `n_rows` are held out: at least one whenever val_fraction > 0."""
    return 0 if val_fraction <= 0 else max(1, round(n_rows * val_fraction))


def select_rows(rows: Sequence[T], config: RunConfig) -> tuple[list[T], list[T]]:
    """(train, held_out): the split of `rows` a run of `config` trains on and evaluates on.

    `rows` are the rows the run has, in file order, after `first_rows` (training passes the
    rows that survive encoding, the only ones it can train on). The held-out rows are a random
    sample drawn with `config.seed`: the same seed and the same number of rows always give the
    same split, whatever the rows hold, so anyone can repeat a run's split from its config.
    The held-out rows come in the order drawn, the training rows in the order shuffled."""
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    n_val = held_out_count(len(rows), config.val_fraction)
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


# --- checks before reading ---------------------------------------------------------------


def _fail(path: str, message: str, row: int | None = None, kind: str = "line") -> DataError:
    """A DataError for a problem that makes the whole file unreadable."""
    return DataError(path, [DataProblem(row, None, message, kind)])


def _sorted_error(path: str, problems: list[DataProblem]) -> DataError:
    """Whole-file problems first, then by row, so the report reads top to bottom like the file."""
    return DataError(path, sorted(problems, key=lambda p: (p.row is not None, p.row or 0)))


def _check_request(path: str, data_format: str) -> str:
    """Check the file exists, its extension is supported and the format fits it; return the extension."""
    if data_format != "auto" and data_format not in FORMATS:
        raise _fail(path, f"unknown data format '{data_format}'; use 'auto' or one of: {', '.join(FORMATS)}")
    if "\x00" in path:  # the OS ends a path at a NUL byte; Python refuses it as 'embedded null byte'
        raise _fail(path.replace("\x00", "\\x00"), "the path contains a NUL byte (\\x00); remove it")
    if not os.path.exists(path):
        raise _fail(path, "file not found; check the path (relative paths start at the current folder)")
    if os.path.isdir(path):
        raise _fail(path, "is a folder, not a file; give the path of the data file inside it")
    file_type = os.path.splitext(path)[1].lower()
    if file_type not in FILE_TYPES:
        shown = f"'{file_type}'" if file_type else "no extension"
        raise _fail(path, f"unsupported file type ({shown}); save the data as one of {', '.join(FILE_TYPES)}")
    if file_type == ".txt" and data_format not in ("auto", "text"):
        raise _fail(path, f".txt files hold plain text documents only, so data_format must be 'text' or "
                          f"'auto', not '{data_format}'; save {data_format} data as .jsonl, .json or .csv")
    return file_type


def _read_bytes(path: str) -> bytes:
    """The raw file; an empty file is an error for every type."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise _fail(path, f"cannot read the file ({err.strerror}); check its permissions") from err
    if not data:
        raise _fail(path, f"the file is empty (0 bytes); add training examples, e.g. one {FORMAT_DESCRIPTIONS['chat']} per line in a .jsonl file")
    return data


def _decode_text(path: str, data: bytes) -> str:
    """Strict UTF-8 (a BOM is accepted): guessing another encoding would silently corrupt text."""
    sample = data[:_SNIFF_BYTES]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(sample):
        raise _fail(path, "the file is UTF-16, not UTF-8; re-save it as UTF-8 (e.g. in your editor's 'Save as' "
                          "encoding choice, or `iconv -f UTF-16 -t UTF-8`)", row=1)
    if b"\x00" in sample:
        hint = " (it looks like a Parquet file: rename it to .parquet)" if data.startswith(b"PAR1") else ""
        raise _fail(path, f"not a text file (binary data){hint}; export it as UTF-8 JSONL/CSV/TXT")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _fail(path, f"byte 0x{data[err.start]:02x} is not valid UTF-8: the file is not UTF-8 (maybe "
                          "Latin-1/Windows-1252 or UTF-16); re-save it as UTF-8", row=line) from err
    if not text.strip():
        raise _fail(path, "the file is empty (only whitespace); add training examples to it")
    return text


def _looks_utf16(sample: bytes) -> bool:
    """UTF-16 without a BOM: mostly-ASCII text has NUL in nearly every other byte, and only there."""
    half = len(sample) // 2
    if half < 2 or b"\x00" not in sample:
        return False
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    return max(even, odd) >= 0.8 * half and min(even, odd) <= 0.1 * half


# --- readers: each returns (row number, object) pairs and the problems found -----------------

Records = list[tuple[int, dict]]


def _read_jsonl(path: str, text: str) -> tuple[Records, list[DataProblem]]:
    """One JSON object per non-blank line; bad lines are reported and skipped."""
    if text.lstrip().startswith("["):
        try:
            whole = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            whole = None  # not one JSON document (or too deep for one): read it line by line below
        if isinstance(whole, list):
            raise _fail(path, "the file holds one JSON list, not one object per line; rename it to .json "
                              "(or write one JSON object per line)", row=1)
    records: Records = []
    problems: list[DataProblem] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(DataProblem(number, None, f"invalid JSON ({err.msg} at column {err.colno}); make "
                                        "the line one complete JSON object or remove it"))
            continue
        except RecursionError:
            problems.append(DataProblem(number, None, _TOO_DEEP))
            continue
        except ValueError:  # no syntax error: json's other ValueError is int() refusing a huge integer
            problems.append(DataProblem(number, None, _TOO_LONG_NUMBER))
            continue
        if isinstance(value, dict):
            records.append((number, value))
        else:
            problems.append(DataProblem(number, None, f"must be a JSON object like {{\"field\": \"value\", ...}}, "
                                        f"got {_type_name(value)}; put one object per line"))
    return records, problems


def _read_json(path: str, text: str) -> tuple[Records, list[DataProblem]]:
    """A JSON list of objects, or an object with one key holding that list (e.g. {"data": [...]})."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        hint = ("it looks like JSON Lines (one object per line): rename the file to .jsonl"
                if err.msg == "Extra data" else "fix the syntax there")
        raise _fail(path, f"invalid JSON ({err.msg} at column {err.colno}); {hint}", row=err.lineno) from err
    except RecursionError:
        raise _fail(path, f"the file is {_TOO_DEEP}") from None
    except ValueError:  # no syntax error: json's other ValueError is int() refusing a huge integer
        raise _fail(path, f"the file {_TOO_LONG_NUMBER}") from None
    shape = "a JSON file must hold a list of objects like [{...}, {...}]"
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(value) != 1 or not lists:
            keys = ", ".join(value) or "none"
            raise _fail(path, f"{shape}, got one object (keys: {keys}); wrap the objects in [ ] or save one object "
                              "per line as .jsonl")
        value = lists[0]
    if not isinstance(value, list):
        raise _fail(path, f"{shape}, got {_type_name(value)}; wrap your examples in [ ]")
    records: Records = []
    problems: list[DataProblem] = []
    for number, item in enumerate(value, start=1):
        if isinstance(item, dict):
            records.append((number, item))
        else:
            problems.append(DataProblem(number, None, f"{shape}, but this item is {_type_name(item)}; make it an "
                                        "object", "record"))
    return records, problems


def _read_csv(path: str, text: str) -> tuple[Records, list[DataProblem]]:
    """Header line required; row numbers are the physical line where each row starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    records: Records = []
    problems: list[DataProblem] = []
    last_line = 0
    try:
        for fields in reader:
            start, last_line = last_line + 1, reader.line_num  # a quoted field may span lines
            # Spreadsheets export fully empty rows (",,,"); they hold no example, so skip them.
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [name.strip() or f"column {i + 1}" for i, name in enumerate(fields)]
                duplicates = sorted({name for name in header if header.count(name) > 1})
                if duplicates:
                    raise _fail(path, f"the header repeats column {', '.join(duplicates)}; give every column a "
                                      "unique name", row=start)
            elif len(fields) != len(header):
                problems.append(DataProblem(start, None, f"has {len(fields)} fields but the header has "
                                            f"{len(header)}; quote values that contain commas and fill missing values"))
            else:
                records.append((start, dict(zip(header, fields))))
    except csv.Error as err:
        raise _fail(path, f"cannot parse the CSV ({err}); check the quoting or save the data as .jsonl",
                    row=reader.line_num) from err
    if not records and not problems:
        raise _fail(path, "no data rows: the CSV has only a header line; add one example per line below it")
    return records, problems


def _read_parquet(path: str, data: bytes) -> tuple[Records, list[DataProblem]]:
    """All rows of a parquet file as dicts; pyarrow is imported here because it is slow to load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise _fail(path, f"not a valid parquet file ({err}); re-export it (e.g. pandas DataFrame.to_parquet) "
                          "or save the data as .jsonl/.csv", kind="record") from err
    return [(number, row) for number, row in enumerate(rows, start=1)], []


def _split_documents(text: str) -> list[tuple[int, str]]:
    """Documents separated by blank lines, each with the 1-based line where it starts."""
    docs: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            docs.append((start, "\n".join(current)))
            current = []
    if current:
        docs.append((start, "\n".join(current)))
    return docs


# --- format detection and row validation ----------------------------------------------------


def _guess_format(keys: Iterable[str]) -> str | None:
    """The first format (in priority order) whose key fields are all among `keys`."""
    present = set(keys)
    return next((fmt for fmt, need in _DETECT_KEYS.items() if present.issuperset(need)), None)


def _unknown_columns_message(record: dict, file_type: str) -> str:
    found = ", ".join(f"'{k}'" for k in record) or "none"
    accepted = "; ".join(f"{fmt}: {desc}" for fmt, desc in FORMAT_DESCRIPTIONS.items())
    csv_hint = " (the first line of a CSV must be the header)" if file_type == ".csv" else ""
    return (f"cannot tell the data format from the columns found ({found}){csv_hint}; rename the columns to "
            f"match one accepted format — {accepted}")


def _validate_record(record: dict, fmt: str, origin: str) -> tuple[Any, list[Issue]]:
    """Normalize one row for `fmt`: (messages or text, []) or (None, the problems)."""
    filled = [k for k, v in record.items() if v is not None and v != ""]
    other = _guess_format(filled)
    if not set(_DETECT_KEYS[fmt]).issubset(filled) and other is not None and other != fmt:
        missing = next(k for k in _DETECT_KEYS[fmt] if k not in filled)
        return None, [(missing, f"this row looks like {other} but the file is {fmt} ({origin}); use one format "
                                "per file")]
    if fmt == "chat":
        return _conversation(record, "messages", "role", "content", _CHAT_ROLES)
    if fmt == "sharegpt":
        return _conversation(record, "conversations", "from", "value", _SHAREGPT_ROLES)
    if fmt == "text":
        return _required_text(record, "text", fmt)
    if fmt == "alpaca":
        return _alpaca(record)
    prompt, issues = _required_text(record, "prompt", fmt)
    completion, more = _required_text(record, "completion", fmt)
    if issues or more:
        return None, issues + more
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], []


def _alpaca(record: dict) -> tuple[list[dict] | None, list[Issue]]:
    """[user: instruction (+ blank line + input), assistant: output]; input is optional."""
    instruction, issues = _required_text(record, "instruction", "alpaca")
    output, more = _required_text(record, "output", "alpaca")
    issues += more
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        issues.append(("input", f"must be a string (or empty), got {_type_name(extra)}; put the text in quotes"))
    if issues:
        return None, issues
    prompt = instruction + ("\n\n" + extra if extra and extra.strip() else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], []


def _required_text(record: dict, key: str, fmt: str) -> tuple[str | None, list[Issue]]:
    """A field that must be a non-blank string."""
    if key not in record:
        return None, [(key, f"the field is missing; every {fmt} row needs {FORMAT_DESCRIPTIONS[fmt]}")]
    value = record[key]
    if not isinstance(value, str):
        return None, [(key, f"must be a string, got {_type_name(value)}; put the text in quotes")]
    if not value.strip():
        return None, [(key, "is empty; write the text or remove the row")]
    return value, []


def _conversation(record: dict, list_key: str, role_key: str, content_key: str,
                  roles: dict[str, str]) -> tuple[list[dict] | None, list[Issue]]:
    """Chat and sharegpt turns → [{"role", "content"}]; roles mapped through `roles`."""
    shape = f'{{"{role_key}": "...", "{content_key}": "..."}}'
    if list_key not in record:
        return None, [(list_key, f"the field is missing; add a list of {shape} turns")]
    turns = record[list_key]
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if isinstance(turns, list) else _type_name(turns)
        hint = " (a CSV cell holds only text; use .jsonl for conversations)" if isinstance(turns, str) else ""
        return None, [(list_key, f"must be a non-empty list of {shape} turns, got {got}{hint}")]
    allowed = ", ".join(roles)
    issues: list[Issue] = []
    messages: list[dict] = []
    roles_ok = True
    for i, turn in enumerate(turns):
        where = f"{list_key}[{i}]"
        if not isinstance(turn, dict):
            issues.append((where, f"must be an object like {shape}, got {_type_name(turn)}"))
            roles_ok = False
            continue
        raw_role, content = turn.get(role_key), turn.get(content_key)
        role = roles.get(raw_role) if isinstance(raw_role, str) else None
        if role_key not in turn:
            issues.append((f"{where}.{role_key}", f"the field is missing; set it to one of {allowed}"))
        elif role is None:
            issues.append((f"{where}.{role_key}", f"unknown role {raw_role!r}; use one of {allowed}"))
        elif role == "system" and i > 0:
            issues.append((f"{where}.{role_key}", "a system message may only come first (chat templates reject "
                                                  "it elsewhere); move it to the start or merge it into the first one"))
        roles_ok = roles_ok and role is not None
        if content_key not in turn:
            issues.append((f"{where}.{content_key}", "the field is missing; add the message text"))
        elif not isinstance(content, str):
            issues.append((f"{where}.{content_key}", f"must be a string, got {_type_name(content)}; put the "
                                                     "message text in one string"))
        elif role == "assistant" and not content.strip():
            issues.append((f"{where}.{content_key}", "the assistant message is empty; write the answer or remove "
                                                     "the turn"))
        messages.append({"role": role, "content": content})
    # Only report a missing answer when every role was readable: an unknown role is the likelier fix.
    if roles_ok and not any(m["role"] == "assistant" for m in messages):
        issues.append((list_key, "has no assistant message; add at least one assistant message; only assistant "
                                 "turns are trained"))
    return (None, issues) if issues else (messages, [])


def _ignored_columns(records: Records, fmt: str) -> list[str]:
    """Columns seen in any row that the format does not use, in first-seen order."""
    seen: dict[str, None] = {}
    for _, record in records:
        seen.update(dict.fromkeys(record))
    return [k for k in seen if k not in _USED_COLUMNS[fmt]]


def _type_name(value: Any) -> str:
    """Python type name for messages ("int", "list"); JSON null reads better as "null"."""
    return "null" if value is None else type(value).__name__
