"""Issue 11, items 4 and 7: a public Space's chat is capped and time-limited and says when a
visitor waits, and what a caller sends never reaches the page as a raw Python error.

In-process: the engine's checks (RunConfig, data files, ChatModel's caps, time limit and line)
and the FT_CHAT_* limits. Then one app, started as a public Space would run it (chat caps set,
a time limit so short that every answer is cut), attacked over gradio_client and raw HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_server import REPO, running_app

from ft_engine.config import MAX_SEED, ChatLimits, RunConfig
from ft_engine.data import load_examples
from ft_engine.errors import ConfigError, DataError, UserError
from ui import limits
from ui.form import settings_from_json

SAMPLE = REPO / "assets" / "tiny_facts.jsonl"
DEEP = 100_000  # levels of [ ]: far past Python's recursion limit (1,000) wherever it is parsed
RAW_ERRORS = ("Traceback", "RecursionError", "maximum recursion", "invalid literal", "could not convert",
              "embedded null byte", "set_int_max_str_digits", "Could not preprocess", "TypeError")


def assert_one_clear_line(text: str, *names: str) -> None:
    """A refusal a user can act on: one line, naming the setting, no Python error text."""
    assert text and "\n" not in text.strip(), text
    assert not any(raw in text for raw in RAW_ERRORS), text
    for name in names:
        assert name in text, (name, text)


# --- run settings: validation catches what used to fail the run at its start ----------------------

def test_a_seed_over_2_32_is_refused_at_validation():
    with pytest.raises(ConfigError) as info:
        RunConfig(seed=2**32).validate(check_paths=False)
    assert info.value.problems == [f"seed must be between 0 and 4,294,967,295 (2**32 - 1), got {2**32}"]
    assert MAX_SEED == 2**32 - 1
    assert RunConfig(seed=MAX_SEED).validate(check_paths=False).seed == MAX_SEED  # numpy takes it


@pytest.mark.parametrize("values, says", [
    ({"epochs": float("inf")}, "epochs must be a finite number"),
    ({"batch_size": 2**40}, "batch_size must be at most 2,147,483,647"),
    ({"max_steps": 2**31}, "max_steps must be at most 2,147,483,647"),
])
def test_numbers_no_run_can_use_are_refused(values, says):
    with pytest.raises(ConfigError) as info:
        RunConfig(**values).validate(check_paths=False)
    assert [p for p in info.value.problems if says in p], info.value.problems


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_from_json_are_one_problem_naming_the_setting(value):
    """json.loads reads NaN and Infinity; NaN used to give three problems for one learning rate."""
    settings = settings_from_json(f'{{"learning_rate": {value}}}', "start_training", {})
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(settings)
    assert info.value.problems == [f"learning_rate: expected a finite number, got {float(value)!r}"]


@pytest.mark.parametrize("field, value", [("data", "data\x00.jsonl"), ("model", "owner/name\x00"),
                                          ("runs_dir", "/tmp/runs\x00"), ("run_name", "my\x00run"),
                                          ("lora_target_modules", ["q_proj\x00"])])
def test_a_nul_byte_in_a_path_or_name_is_one_problem_naming_it(field, value):
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: value}).validate(check_paths=field == "data")
    assert info.value.problems == [f"{field} contains a NUL byte (\\x00): remove it"]


def test_a_yaml_config_nested_too_deeply(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserError) as info:
        RunConfig.from_yaml(config)
    assert_one_clear_line(str(info.value), "nested too deeply", "config.yaml")


@pytest.mark.parametrize("text, says", [
    ("[" * DEEP + "]" * DEEP, "settings_json is nested too deeply"),
    ('{"max_steps": ' + "[" * DEEP + "]" * DEEP + "}", "settings_json is nested too deeply"),
    ('{"max_steps": ' + "9" * 5000 + "}", "settings_json holds a number of more than 4,300 digits"),
])
def test_settings_json_that_python_cannot_parse(text, says):
    with pytest.raises(UserError) as info:
        settings_from_json(text, "start_training", {})
    assert_one_clear_line(str(info.value), says)


# --- data files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, where", [
    ("deep.jsonl", '{"messages": ' + "[" * DEEP + "]" * DEEP + "}\n", "line 1: nested too deeply"),
    ("list.jsonl", "[" * DEEP + "]" * DEEP + "\n", "line 1: nested too deeply"),
    ("deep.json", "[" * DEEP + "]" * DEEP, "the file is nested too deeply"),
    ("objects.json", '{"data": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}", "the file is nested too deeply"),
    ("number.jsonl", '{"text": ' + "9" * 5000 + "}\n", "line 1: holds a number of more than 4,300 digits"),
    ("number.json", '[{"text": ' + "9" * 5000 + "}]", "the file holds a number of more than 4,300 digits"),
])
def test_json_python_cannot_parse_is_a_data_problem(name, text, where, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert_one_clear_line(str(info.value), where)


def test_other_lines_of_a_jsonl_with_one_deep_line_are_still_checked(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "fine"}\n' + "[" * DEEP + "]" * DEEP + '\n{"text": 5}\n')
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert [(p.row, p.field) for p in info.value.problems] == [(2, None), (3, "text")]


def test_a_nul_byte_in_a_data_path(tmp_path):
    with pytest.raises(DataError) as info:
        load_examples(str(tmp_path / "data\x00.jsonl"))
    assert_one_clear_line(str(info.value), "NUL byte")


# --- FT_CHAT_* limits --------------------------------------------------------------------------

def test_chat_limits_default_to_the_page_and_to_safe_values(monkeypatch):
    for name in ("FT_CHAT_MAX_NEW_TOKENS", "FT_CHAT_MAX_CHARS", "FT_CHAT_MAX_PROMPT_TOKENS", "FT_CHAT_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    assert limits.chat_limits() == ChatLimits(max_new_tokens=limits.PAGE_MAX_NEW_TOKENS, max_chars=8000,
                                              max_prompt_tokens=2048, max_time_s=60.0)
    assert limits.PAGE_MAX_NEW_TOKENS == 512
    monkeypatch.setenv("FT_CHAT_MAX_NEW_TOKENS", "64")
    monkeypatch.setenv("FT_CHAT_TIMEOUT_S", "0")  # no limit, on one's own machine
    assert (limits.chat_limits().max_new_tokens, limits.chat_limits().max_time_s) == (64, 0.0)


@pytest.mark.parametrize("name, value", [("FT_CHAT_MAX_NEW_TOKENS", "600"), ("FT_CHAT_MAX_NEW_TOKENS", "0"),
                                         ("FT_CHAT_MAX_NEW_TOKENS", "many"), ("FT_CHAT_MAX_CHARS", "-1"),
                                         ("FT_CHAT_MAX_CHARS", "²"), ("FT_CHAT_MAX_PROMPT_TOKENS", "1.5"),
                                         ("FT_CHAT_TIMEOUT_S", "soon"), ("FT_CHAT_TIMEOUT_S", "-1"),
                                         ("FT_CHAT_TIMEOUT_S", "nan"), ("FT_CHAT_TIMEOUT_S", "inf")])
def test_a_bad_chat_limit_names_the_variable(name, value, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as info:
        limits.chat_limits()
    assert_one_clear_line(str(info.value), name, repr(value))


def test_a_bad_chat_limit_stops_the_app_at_start(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "FT_RUNS_DIR": str(tmp_path / "runs"),
           "FT_CHAT_MAX_NEW_TOKENS": "600", "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "error: FT_CHAT_MAX_NEW_TOKENS must be a whole number between 1 and 512" in done.stderr
    assert "Traceback" not in done.stderr


# --- ChatModel: caps, time limit, one answer at a time ------------------------------------------

@pytest.fixture(scope="module")
def chat(tiny_model):
    from ft_engine.inference import BaseChatModel
    return BaseChatModel(tiny_model, device="cpu")


@pytest.fixture
def no_eos(chat):
    """The tiny random model never ends an answer by itself (its EOS logit made -inf), so only
    max_new_tokens or the time limit can end one."""
    from ft_engine.inference import stop_token_ids
    eos = stop_token_ids(chat.tokenizer, chat.model.generation_config)

    def hook(module, args, output):
        output.logits[..., eos] = float("-inf")
        return output

    handle = chat.model.register_forward_hook(hook)
    yield
    handle.remove()


@pytest.fixture
def slow(chat):
    """Every forward pass takes at least SLOW_STEP_S."""
    handle = chat.model.register_forward_hook(lambda *a: time.sleep(SLOW_STEP_S))
    yield
    handle.remove()


SLOW_STEP_S = 0.05


def counting_generate(chat, monkeypatch) -> list:
    calls = []
    real = chat.model.generate
    monkeypatch.setattr(chat.model, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    return calls


@pytest.mark.parametrize("stream", [False, True])
def test_max_new_tokens_over_the_cap_is_refused_naming_the_cap(chat, stream, monkeypatch):
    calls = counting_generate(chat, monkeypatch)
    ask = chat.stream if stream else chat.generate
    with pytest.raises(UserError) as info:
        result = ask("hi", max_new_tokens=600, limits=ChatLimits(max_new_tokens=512))
        list(result) if stream else result
    assert_one_clear_line(str(info.value), "max_new_tokens is 600", "cap of 512")
    assert calls == [] and chat.waiting() == 0  # refused before it took a place in line
    assert chat.generate("hi", max_new_tokens=4, limits=ChatLimits(max_new_tokens=4)) is not None


@pytest.mark.parametrize("prompt, limit, says", [
    ("x" * 101, ChatLimits(max_chars=100), "the message is 101 characters, over this chat's cap of 100"),
    ([{"role": "user", "content": "x" * 60}, {"role": "assistant", "content": "y" * 30},
      {"role": "user", "content": "z" * 20}], ChatLimits(max_chars=100),
     "the conversation is 110 characters, over this chat's cap of 100: clear the conversation"),
    ("What is the capital of Zubrowka? " * 4, ChatLimits(max_prompt_tokens=16), "tokens, over this chat's cap of 16"),
    ("what " * 600, ChatLimits(), "more than the model reads at once (512)"),
])
def test_a_message_or_conversation_over_a_cap_is_refused(chat, prompt, limit, says, monkeypatch):
    calls = counting_generate(chat, monkeypatch)
    with pytest.raises(UserError) as info:
        chat.generate(prompt, max_new_tokens=4, limits=limit)
    assert_one_clear_line(str(info.value), says)
    assert calls == []


def test_max_new_tokens_must_leave_room_in_the_context(chat):
    with pytest.raises(UserError) as info:
        chat.generate("hi", max_new_tokens=510)  # the tiny model reads 512 tokens; the prompt is more than 2
    assert_one_clear_line(str(info.value), "max_new_tokens (510)", "lower max_new_tokens to")


@pytest.mark.parametrize("settings, says", [({"max_new_tokens": "many"}, "max_new_tokens must be a whole number"),
                                            ({"max_new_tokens": True}, "max_new_tokens must be a whole number"),
                                            ({"temperature": float("nan")}, "temperature must be a number"),
                                            ({"top_p": "0.9"}, "top_p must be a number")])
def test_values_of_the_wrong_type_are_refused_by_name(chat, settings, says):
    with pytest.raises(UserError) as info:
        chat.generate("hi", **settings)
    assert_one_clear_line(str(info.value), says)


@pytest.mark.parametrize("stream", [False, True])
def test_the_time_limit_ends_an_answer_and_says_so(chat, no_eos, slow, stream):
    from ft_engine.inference import cut_note
    limit = 4 * SLOW_STEP_S
    start = time.monotonic()
    if stream:
        answer = list(chat.stream("hi", max_new_tokens=400, limits=ChatLimits(max_time_s=limit)))[-1]
    else:
        answer = chat.generate("hi", max_new_tokens=400, limits=ChatLimits(max_time_s=limit))
    took = time.monotonic() - start
    assert answer.endswith(cut_note(limit)) and "0.2 s time limit" in answer, answer
    assert took < 100 * SLOW_STEP_S, took  # 400 slowed steps would take 20 s; it stopped after ~5
    assert chat.waiting() == 0


def test_an_answer_within_the_time_limit_has_no_note(chat, no_eos):
    answer = chat.generate("hi", max_new_tokens=4, limits=ChatLimits(max_time_s=60))
    assert "⏱" not in answer


@pytest.fixture
def held(chat, monkeypatch):
    """The first generation to start waits for `release` (after setting `entered`), so a test
    decides when the model is busy."""
    state = SimpleNamespace(entered=threading.Event(), release=threading.Event())
    real = chat.model.generate

    def generate(*args, **kwargs):
        if not state.entered.is_set():
            state.entered.set()
            assert state.release.wait(30), "the test never released the held generation"
        return real(*args, **kwargs)

    monkeypatch.setattr(chat.model, "generate", generate)
    yield state
    state.release.set()


def start_in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.extend(fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_second_stream_says_it_waits_until_the_first_answer_is_done(chat, held):
    from ft_engine.inference import WaitNotice
    first, first_out = start_in_thread(lambda: chat.stream("hi", max_new_tokens=4))
    assert held.entered.wait(30)
    second = chat.stream("hello", max_new_tokens=4)
    notice = next(second)  # at once, not after the first answer
    assert isinstance(notice, WaitNotice) and notice.ahead == 1, notice
    assert notice == "⏳ Waiting for another answer to finish (1 ahead of this one)…"
    assert chat.waiting() == 2
    held.release.set()
    rest = list(second)
    first.join(30)
    assert rest and not isinstance(rest[-1], WaitNotice) and "⏳" not in rest[-1], rest
    assert first_out and "⏳" not in "".join(first_out)  # the first never waited
    assert chat.waiting() == 0


def test_waiters_are_served_in_order_and_one_who_leaves_gives_up_the_place(chat, held):
    first, _ = start_in_thread(lambda: chat.stream("hi", max_new_tokens=2))
    assert held.entered.wait(30)
    second, third = chat.stream("b", max_new_tokens=2), chat.stream("c", max_new_tokens=2)
    assert next(second).ahead == 1 and next(third).ahead == 2
    second.close()  # that visitor closed the page
    moved_up = next(third)
    assert moved_up.ahead == 1, moved_up  # told at the next look at the line, before the first ends
    held.release.set()
    assert "⏳" not in list(third)[-1]
    first.join(30)
    assert chat.waiting() == 0


def test_generate_waits_its_turn_too(chat, held):
    first, _ = start_in_thread(lambda: chat.stream("hi", max_new_tokens=2))
    assert held.entered.wait(30)
    second, second_out = start_in_thread(lambda: [chat.generate("hello", max_new_tokens=2)])
    time.sleep(0.5)
    assert second_out == [] and chat.waiting() == 2  # still waiting: one generation at a time
    held.release.set()
    second.join(30)
    first.join(30)
    assert len(second_out) == 1 and chat.waiting() == 0


def test_turns_skip_those_who_left():
    from ft_engine.inference import Turns
    turns = Turns()
    a, b, c, d = (turns.take() for _ in range(4))
    assert [turns.ahead(t) for t in (a, b, c, d)] == [0, 1, 2, 3]
    turns.leave(b)
    turns.leave(c)
    assert turns.ahead(d) == 1 and turns.waiting() == 2
    assert turns.wait(a)
    turns.leave(a)  # its turn has come: only its holder ends it
    assert turns.waiting() == 2
    turns.release(a)
    assert turns.wait(d) and not turns.wait(b) and turns.ahead(d) == 0
    turns.release(d)
    assert turns.waiting() == 0


# --- the chat tab's reading of what a caller sends ------------------------------------------------

@pytest.mark.parametrize("value, whole, expected", [("128", True, 128), (128.0, True, 128), (" 0.7 ", False, 0.7),
                                                    (0, False, 0.0)])
def test_numbers_sent_as_text_or_floats_are_read(value, whole, expected):
    from ui.chat_tab import as_number
    assert as_number(value, "x", whole) == expected


@pytest.mark.parametrize("value, whole, says", [("many", True, "got 'many'"), (2.5, True, "whole number"),
                                                (True, False, "got 'True'"), (None, False, "got 'None'"),
                                                ("nan", False, "got 'nan'"), ("1e400", False, "got 'inf'"),
                                                (10**400, False, "a number of 401 digits"), ([1], False, "got '[1]'")])
def test_what_is_no_number_is_refused_naming_the_setting(value, whole, says):
    from ui.chat_tab import as_number
    with pytest.raises(UserError) as info:
        as_number(value, "temperature", whole)
    assert_one_clear_line(str(info.value), "temperature must be", says)


def test_the_page_conversation_is_text_without_what_the_model_never_said():
    from ft_engine.inference import cut_note
    from ui.chat_tab import PICK_A_RUN, conversation
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]
    history = [{"role": "user", "content": parts}, {"role": "assistant", "content": f"Hi!\n\n{cut_note(60)}"},
               {"role": "user", "content": "q2"}, {"role": "assistant", "content": "❌ the message is too long"},
               {"role": "user", "content": "q3"}, {"role": "assistant", "content": PICK_A_RUN},
               {"role": "user", "content": "q4"}]
    assert conversation(history) == [{"role": "user", "content": "Hello there"},
                                     {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "q4"}]


# --- a public Space, attacked over gradio_client and raw HTTP -----------------------------------

SPACE_CAPS = {"FT_CHAT_MAX_NEW_TOKENS": "64", "FT_CHAT_MAX_CHARS": "2000", "FT_CHAT_MAX_PROMPT_TOKENS": "400",
              # so short that every answer is cut after its first token: the note is always there
              "FT_CHAT_TIMEOUT_S": "0.001"}


@pytest.fixture(scope="module")
def app(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("space")
    runs = d / "runs"
    made = {}

    def train_a_run():  # while the server boots: the two overlap
        from ft_engine.training import train
        model = request.getfixturevalue("tiny_model")
        run, status = train(RunConfig(model=model, data=str(SAMPLE), runs_dir=str(runs), max_steps=2,
                                      batch_size=2, checkpoint_steps=0))
        made.update(run_id=run.run_id, status=status.value)

    with running_app(runs, d / "server.log", while_booting=train_a_run, extra_env=SPACE_CAPS) as (url, proc, log):
        assert made["status"] == "completed", made
        yield SimpleNamespace(url=url, proc=proc, log=log, runs_dir=runs, run_id=made["run_id"])


pytestmark_http = pytest.mark.usefixtures("server_log_on_failure")


def ask(client, app, **settings) -> str:
    return client.predict(**{"run_id": app.run_id, "message": "hi", "max_new_tokens": 8, **settings},
                          api_name="/chat")


@pytestmark_http
@pytest.mark.parametrize("settings, says", [
    ({"max_new_tokens": 600}, "max_new_tokens is 600, over this chat's cap of 64"),
    ({"max_new_tokens": "many"}, "max_new_tokens must be a whole number such as 128, got 'many'"),
    ({"max_new_tokens": 1.5}, "max_new_tokens must be a whole number"),
    ({"temperature": "hot"}, "temperature must be a number such as 0.7, got 'hot'"),
    ({"use_adapter": "maybe"}, "use_adapter must be true or false"),
    ({"message": "x" * 2001}, "the message is 2,001 characters, over this chat's cap of 2,000"),
    ({"message": "What is the capital? " * 90}, "tokens, over this chat's cap of 400"),
    ({"message": ["a", "list"]}, "message must be text"),
    ({"system_prompt": {"role": "system"}}, "system_prompt must be text"),
    ({"run_id": "a\x00b"}, "not a run id"),
])
def test_the_chat_api_refuses_with_one_line_naming_the_setting(client, app, settings, says):
    reply = ask(client, app, **settings)
    assert reply.startswith("error: "), reply
    assert_one_clear_line(reply, says)


@pytestmark_http
def test_the_chat_api_reads_numbers_and_flags_sent_as_text(client, app):
    reply = ask(client, app, max_new_tokens="8", temperature="0", use_adapter="false")
    assert not reply.startswith("error:"), reply


@pytestmark_http
def test_a_chat_answer_over_the_time_limit_ends_with_the_note(client, app):
    reply = ask(client, app, max_new_tokens=64)
    assert reply.endswith("⏱ [cut at the 0.001 s time limit for one answer: ask for a shorter answer, "
                          "or lower max new tokens]"), reply


def page_config(app) -> dict:
    with urllib.request.urlopen(f"{app.url}config", timeout=10) as r:
        return json.load(r)


def call_event(app, api_name: str, data: list) -> tuple[bool, list | str, int]:
    """Call one of the page's own events the way the browser does (a "private" event is hidden
    from the API docs, but anyone can send what the browser sends): (success, the outputs or the
    error message, how many updates it streamed)."""
    config = page_config(app)
    fn_index = next(d["id"] for d in config["dependencies"] if d["api_name"] == api_name)
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    req = urllib.request.Request(f"{app.url}gradio_api/queue/join", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    updates = 0
    with urllib.request.urlopen(f"{app.url}gradio_api/queue/data?session_hash={session}", timeout=60) as r:
        for line in r:
            msg = json.loads(line.decode()[len("data: "):]) if line.startswith(b"data: ") else {}
            updates += msg.get("msg") == "process_generating"
            if msg.get("msg") == "process_completed":
                if not msg["success"]:
                    return False, msg.get("output", {}).get("error") or "", updates
                return True, msg["output"]["data"], updates
    raise AssertionError(f"{api_name}: no answer")


def text(content) -> str:
    return "".join(part["text"] for part in content) if isinstance(content, list) else content


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": content}]}


def respond(app, message: str = "hi", history: list | None = None, max_tokens=8, temperature=0.0, top_p=0.9):
    return call_event(app, "respond", [app.run_id, message, history or [], [], False, max_tokens, temperature,
                                       top_p, ""])


@pytestmark_http
def test_the_page_offers_no_more_than_the_cap(app):
    config = page_config(app)
    slider = next(c for c in config["components"] if c["props"].get("label") == "Max new tokens")
    assert slider["props"]["maximum"] == 64 and slider["props"]["value"] == 64


@pytestmark_http
@pytest.mark.parametrize("max_tokens, temperature, top_p, says", [
    ("many", 0.0, 0.9, "max_new_tokens must be a whole number such as 128, got 'many'"),
    (600, 0.0, 0.9, "max_new_tokens must be between 1 and 64 here, got 600"),
    (8, "hot", 0.9, "temperature must be a number such as 0.7, got 'hot'"),
    (8, 0.0, 7, "top_p must be between 0.05 and 1 here, got 7"),
])
def test_the_page_chat_refuses_bad_generation_settings_in_one_line(app, max_tokens, temperature, top_p, says):
    ok, error, _ = respond(app, max_tokens=max_tokens, temperature=temperature, top_p=top_p)
    assert not ok
    assert_one_clear_line(error, says)


@pytestmark_http
def test_the_page_chat_refuses_an_over_long_message_in_the_chat(app):
    ok, (tuned, _base, box), _ = respond(app, message="x" * 2001)
    assert ok and [m["role"] for m in tuned] == ["user", "assistant"]
    assert_one_clear_line(text(tuned[-1]["content"]), "❌ the message is 2,001 characters")


@pytestmark_http
def test_a_second_question_in_the_page_is_answered(app):
    """The page sends the chat back as Gradio's message parts; the chat template needs text
    (before, the second question of every conversation failed with a TypeError). A question
    the model never answered (an error) is left out with its answer, and so is the cut note."""
    ok, (tuned, _, _), _ = respond(app, "first question")
    assert ok, tuned
    first_answer = text(tuned[-1]["content"])
    assert "⏱ [cut at the 0.001 s time limit" in first_answer  # every answer here is cut
    history = tuned + [turn("user", "x"), turn("assistant", "❌ something went wrong")]
    ok, (tuned, _, _), updates = respond(app, "second question", history)
    assert ok, tuned
    answer = text(tuned[-1]["content"])
    assert not answer.startswith("❌") and "⏱ [cut at" in answer, answer
    assert [text(m["content"]) for m in tuned[:-1]][-1] == "second question"


@pytestmark_http
def test_start_training_refuses_what_python_cannot_take_in_one_line(client, app, tiny_model):
    kept = client.predict(None, "tiny_facts.jsonl", tiny_model, 256, False, "auto", api_name="/validate_data")[3]
    assert kept, "the sample did not validate"
    before = sorted(p.name for p in app.runs_dir.iterdir())
    for data_path, model, settings, says in [
        (kept, tiny_model, "[" * DEEP + "]" * DEEP, "settings_json is nested too deeply"),
        (kept, tiny_model, '{"max_steps": ' + "9" * 5000 + "}", "settings_json holds a number of more than 4,300"),
        (kept, tiny_model, json.dumps({"seed": 2**32, "max_steps": 1}), "seed must be between 0 and 4,294,967,295"),
        (kept, tiny_model, '{"learning_rate": NaN}', "learning_rate: expected a finite number"),
        (kept + "\x00", tiny_model, "{}", "data path contains a NUL byte"),
        (kept, tiny_model + "\x00", "{}", "model"),
        (kept, tiny_model, json.dumps({"run_name": "a\x00b"}), "run_name contains a NUL byte"),
    ]:
        res = client.predict(data_path=data_path, model=model, method="lora", preset="Quick demo",
                             settings_json=settings, api_name="/start_training")
        assert res["run_id"] == "", res
        assert_one_clear_line(res["message"], says)
    assert sorted(p.name for p in app.runs_dir.iterdir()) == before  # no run was made


@pytestmark_http
@pytest.mark.parametrize("name, content, says", [
    ("deep.jsonl", '{"messages": ' + "[" * DEEP + "]" * DEEP + "}\n", "line 1: nested too deeply to read"),
    ("deep.json", "[" * DEEP + "]" * DEEP, "the file is nested too deeply to read"),
])
def test_a_deeply_nested_upload_gets_a_data_problem_and_is_not_kept(client, app, tiny_model, tmp_path, name,
                                                                     content, says):
    from gradio_client import handle_file
    upload = tmp_path / name
    upload.write_text(content)
    uploads = app.runs_dir / ".uploads"
    before = sorted(os.listdir(uploads)) if uploads.is_dir() else []
    summary, _, examples, path = client.predict(handle_file(str(upload)), None, tiny_model, 256, False, "auto",
                                                api_name="/validate_data")
    assert says in summary and not path and not examples, summary
    assert not any(raw in summary for raw in RAW_ERRORS), summary
    assert (sorted(os.listdir(uploads)) if uploads.is_dir() else []) == before


def logged_exceptions(log: str) -> list[str]:
    """The last line of every traceback in a server log (the exception and its message)."""
    ends = []
    for block in log.split("Traceback (most recent call last):\n")[1:]:
        ends.append(next((line for line in block.splitlines() if line and not line.startswith(" ")), "?"))
    return ends


@pytestmark_http
def test_zz_the_space_is_still_up_and_raised_nothing_but_its_refusals(app, client):
    """Run last (zz): every attack above was answered, none failed in the server. Gradio logs
    a gr.Error (the sliders' one-line refusals) with its traceback; nothing else may be there."""
    assert app.proc.poll() is None
    raised = logged_exceptions(Path(app.log).read_text(errors="replace"))
    assert raised and all(line.startswith("gradio.exceptions.Error: ") for line in raised), raised
