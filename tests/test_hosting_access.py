"""Hosting for strangers (issue 11, items 1 and 11): the server's HF_TOKEN is lent only where
the owner allows it and only to signed-in callers; every event that acts is behind the login
when FT_AUTH is set; where start anyway is off (a demo, a shared studio without login) the
memory forecast's refusal is final, also for page events called by fn_index and comparisons.

Two apps are started, each once for the module: an open demo (a Space with demo caps, no login)
and a team server (FT_AUTH, FT_LEND_HF_TOKEN=1). Both hold HF_TOKEN and talk to a fake Hugging
Face Hub in this process (HF_ENDPOINT), which records every request and the token it carried:
"no network call" and "the server's token was used" are read from it, not guessed from a message.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_server import REPO, log_tail, running_app

from ft_engine.config import RunConfig
from ft_engine.errors import UserError
from ui import limits

FAKE_TOKEN = "hf_FAKEserverTokenForHosting0123456789abc"   # the owner's HF_TOKEN
TYPED_TOKEN = "hf_TYPEDvisitorTokenForHosting987654321zy"  # what a visitor pastes
SAMPLE = REPO / "assets" / "tiny_facts.jsonl"  # a shipped sample: start accepts it without an upload
OLD_RUN = "20260101-000000-pushable-0000"
USER, PASSWORD = "team", "a-long:passphrase"
# FT_MEMORY_LIMIT_MIB=1: the forecast says every run of the tiny model will not fit
MEMORY_LIMIT_MIB = "1"
# the variables that make an instance shared, cleared around every in-process test here
SHARING_VARIABLES = ("FT_AUTH", "FT_MAX_STEPS", "FT_MAX_ROWS", "SPACE_ID", "GRADIO_SERVER_NAME",
                     "FT_LEND_HF_TOKEN", "HF_TOKEN")


# --- a fake Hub: who called, with which token ---------------------------------------------------

class FakeHub:
    """An HTTP server posing as huggingface.co: records (method, path, Authorization header) of
    every request and refuses it with 403, so a push that gets through fails as on a network."""

    def __init__(self):
        self.calls: list[tuple[str, str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self):
                hub.calls.append((self.command, self.path, self.headers.get("Authorization", "")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps({"error": "fake hub: refused"}).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _refuse

            def log_message(self, *args):  # quiet: the test reads `calls`
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True).start()

    def carrying(self, token: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if token in c[2]]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _make_pushable_run(runs_dir: Path) -> None:
    """A finished LoRA run with an adapter: a push of it gets as far as the Hub."""
    run = runs_dir / OLD_RUN
    (run / "adapter").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"run_id": OLD_RUN, "status": "completed", "step": 1,
                                                 "total_steps": 1, "method": "lora", "model": "bundled"}))
    (run / "config.yaml").write_text(RunConfig(data="x.jsonl").to_yaml())
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)


def _start(tmp_path_factory, request, name: str, env: dict[str, str]):
    d = tmp_path_factory.mktemp(name)
    _make_pushable_run(d / "runs")
    hub = FakeHub()
    env = {"HF_TOKEN": FAKE_TOKEN, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost", "FT_MEMORY_LIMIT_MIB": MEMORY_LIMIT_MIB, **env}
    cm = running_app(d / "runs", d / "server.log", while_booting=lambda: request.getfixturevalue("tiny_model"),
                     extra_env=env)
    url, proc, log = cm.__enter__()
    return cm, hub, SimpleNamespace(url=url, proc=proc, log=log, runs_dir=d / "runs", hub=hub)


@pytest.fixture(scope="module")
def open_demo(tmp_path_factory, request):
    """A public Space in demo mode, as most will run it: no login, demo caps, HF_TOKEN set."""
    cm, hub, app = _start(tmp_path_factory, request, "open-demo",
                          {"SPACE_ID": "owner/fine-tune-studio", "FT_MAX_STEPS": "2"})
    try:
        yield app
    finally:
        if request.session.testsfailed:
            print(f"\n----- open demo's log ({app.log}) -----\n{log_tail(app.log)}\n----- end -----")
        cm.__exit__(None, None, None)
        hub.close()


@pytest.fixture(scope="module")
def team(tmp_path_factory, request):
    """A team server: login, no demo caps, the owner lends HF_TOKEN to signed-in users."""
    cm, hub, app = _start(tmp_path_factory, request, "team",
                          {"FT_AUTH": f"{USER}:{PASSWORD}", "FT_LEND_HF_TOKEN": "1"})
    try:
        yield app
    finally:
        if request.session.testsfailed:
            print(f"\n----- team server's log ({app.log}) -----\n{log_tail(app.log)}\n----- end -----")
        cm.__exit__(None, None, None)
        hub.close()


# --- raw HTTP, the way a browser (or anyone) calls the page's events --------------------------

def signed_in_opener(url: str) -> urllib.request.OpenerDirector:
    """An opener holding the login cookie of FT_AUTH's user."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    body = urllib.parse.urlencode({"username": USER, "password": PASSWORD}).encode()
    opener.open(urllib.request.Request(url + "login", data=body, method="POST"), timeout=30).read()
    return opener


ANONYMOUS = urllib.request.build_opener()


def page_config(app, opener=ANONYMOUS) -> dict:
    with opener.open(f"{app.url}config", timeout=10) as r:
        return json.load(r)


def post_json(opener, url: str, body: dict) -> int:
    """POST a JSON body; the HTTP status (an error status too)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def call_event(app, api_name: str, data: list, opener=ANONYMOUS) -> list:
    """Call one of the page's events by its fn_index (hidden from the API or not), as the
    browser does; its outputs."""
    fn_index = next(d["id"] for d in page_config(app, opener)["dependencies"] if d["api_name"] == api_name)
    session = f"access{os.getpid()}{api_name}{time.monotonic_ns()}"
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    assert post_json(opener, f"{app.url}gradio_api/queue/join", body) == 200
    with opener.open(f"{app.url}gradio_api/queue/data?session_hash={session}", timeout=120) as r:
        for line in r:
            msg = json.loads(line.decode()[len("data: "):]) if line.startswith(b"data: ") else {}
            if msg.get("msg") == "process_completed":
                assert msg["success"], msg
                return msg["output"]["data"]
    raise AssertionError(f"{api_name}: no answer")


def start_button_values(app, tiny_model: str, anyway: bool, opener=ANONYMOUS) -> list:
    """The Start button's inputs as the page holds them, with the sample data, the tiny model and
    the Start-anyway box set to `anyway` (sent by a caller even where the page hides the box)."""
    config = page_config(app, opener)
    components = {c["id"]: c for c in config["components"]}
    inputs = next(d["inputs"] for d in config["dependencies"] if d["api_name"] == "start_from_widgets")
    values = []
    for i in inputs:
        props = components[i]["props"]
        values.append({"File used for training": str(SAMPLE), "Model": tiny_model,
                       "Start anyway": anyway}.get(props.get("label"), props.get("value")))
    assert values[-1] is anyway and str(SAMPLE) in values, "the Start button's inputs changed: update this test"
    return values


def start_anyway_box(config: dict) -> dict:
    return next(c["props"] for c in config["components"] if c["props"].get("label") == "Start anyway")


def run_folders(runs_dir: Path) -> list[str]:
    return sorted(p.name for p in runs_dir.iterdir() if not p.name.startswith("."))


# --- item 1: the open demo does not lend HF_TOKEN ----------------------------------------------

def test_open_demo_refuses_a_push_without_a_pasted_token_and_sends_nothing(open_demo):
    hub_calls_before = len(open_demo.hub.calls)
    answer, cleared = call_event(open_demo, "push", [OLD_RUN, "stranger/owned-by-owner", "", True, "adapter", "f16"])
    assert answer.startswith("❌ paste a Hugging Face token with write access"), answer
    assert "FT_LEND_HF_TOKEN" in answer and "\n" not in answer and cleared == ""
    assert open_demo.hub.calls[hub_calls_before:] == []  # the Hub was never asked
    # the caller's own token still pushes (it reaches the Hub, which refuses it): the refusal
    # above is about whose token, and the fake Hub would have seen a request
    answer, _ = call_event(open_demo, "push", [OLD_RUN, "stranger/own-model", TYPED_TOKEN, True, "adapter", "f16"])
    assert answer.startswith("❌ push to stranger/own-model failed"), answer
    assert open_demo.hub.carrying(TYPED_TOKEN) and TYPED_TOKEN not in answer


def test_open_demo_page_does_not_offer_the_server_token(open_demo):
    config = page_config(open_demo)
    placeholders = [c["props"].get("placeholder") or "" for c in config["components"]]
    assert not any("HF_TOKEN" in p for p in placeholders), placeholders
    assert any(p.startswith("paste a token with write access") for p in placeholders)


def test_gradio_run_history_is_off_so_its_routes_cannot_reach_for_hf_token(open_demo):
    """Gradio's run-history routes need no login and, for a caller that looks local, use the
    server's own HF token (gradio/history.py resolve_token); the app turns them off."""
    for path in ("gradio_api/run-history/buckets", "gradio_api/runs"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(open_demo.url + path, timeout=10)
        assert info.value.code == 404, (path, info.value.code)
    assert post_json(ANONYMOUS, open_demo.url + "gradio_api/run-history/connect",
                     {"bucket_id": "owner/bucket"}) == 404


# --- item 11: the open demo's forecast refusal is final ------------------------------------------

def test_open_demo_refuses_start_anyway_through_the_api(open_demo, tiny_model):
    from gradio_client import Client
    client = Client(open_demo.url, verbose=False)
    res = client.predict(data_path=str(SAMPLE), model=tiny_model, method="lora", preset="Quick demo",
                         settings_json=json.dumps({"max_steps": 1}), start_anyway=True, api_name="/start_training")
    assert res["run_id"] == "" and res["position"] is None, res
    message = res["message"]
    assert message.startswith("not started: the memory forecast says") and "would run out of memory" in message
    assert "the forecast's refusal is final: start anyway is off" in message and "FT_MAX_STEPS" in message
    assert "start_anyway=True" not in message and "\n" not in message  # it does not offer what it refuses
    assert run_folders(open_demo.runs_dir) == [OLD_RUN]  # no run folder
    assert [r["run_id"] for r in client.predict(api_name="/list_runs")] == [OLD_RUN]  # nothing queued


def test_open_demo_refuses_start_anyway_from_the_page_event_and_hides_the_box(open_demo, tiny_model):
    box = start_anyway_box(page_config(open_demo))
    assert box.get("visible") is False, box
    message, current_run = call_event(open_demo, "start_from_widgets",
                                      start_button_values(open_demo, tiny_model, anyway=True))
    assert message.startswith("❌ not started: the memory forecast says"), message
    assert "start anyway is off" in message
    assert not (isinstance(current_run, str) and current_run), current_run  # no run id went to the page
    assert run_folders(open_demo.runs_dir) == [OLD_RUN]


def test_open_demo_refuses_a_comparison_the_forecast_refuses(open_demo, tiny_model):
    """A comparison has no start anyway, so it was a way around the refusal."""
    from gradio_client import Client
    res = Client(open_demo.url, verbose=False).predict(data_path=str(SAMPLE), model=tiny_model, max_steps=1,
                                                       methods="lora,qlora", api_name="/compare_methods")
    assert res["comparison_id"] == "" and res["run_ids"] == {}, res
    assert res["message"].startswith("comparison not started: the memory forecast says its lora run needs"), res
    assert "start anyway is off" in res["message"]
    assert run_folders(open_demo.runs_dir) == [OLD_RUN]
    comparisons = open_demo.runs_dir / ".comparisons"
    assert not comparisons.exists() or not any(comparisons.iterdir())


def test_zz_open_demo_never_sent_or_showed_the_server_token(open_demo):
    """After every test on it (file order keeps this last for the module's first app)."""
    assert open_demo.hub.carrying(FAKE_TOKEN) == []
    assert FAKE_TOKEN not in open_demo.log.read_text(errors="replace")
    assert FAKE_TOKEN not in json.dumps(page_config(open_demo))


# --- the team server: every event behind the login; a signed-in user may use the token --------

def test_every_event_needs_the_login_by_every_route(team):
    """Gradio's auth guards all three ways to run an event (queue/join by fn_index, /call and
    /run by api name) and uploads: without the login cookie each is 401, with it accepted."""
    signed_in = signed_in_opener(team.url)
    config = page_config(team, signed_in)
    with pytest.raises(urllib.error.HTTPError) as info:
        page_config(team)
    assert info.value.code == 401
    dependencies = config["dependencies"]
    names = {d["api_name"] for d in dependencies}
    assert {"push", "delete", "start_from_widgets", "start_training", "export_run", "validate_data",
            "resume_run", "compare_methods", "stop_training", "chat", "delete_picked"} <= names, names
    refused = {}
    for d in dependencies:
        body = {"data": [], "fn_index": d["id"], "session_hash": "anonymous", "event_data": None, "trigger_id": None}
        refused[f"queue/join #{d['id']} {d['api_name']}"] = post_json(ANONYMOUS, team.url + "gradio_api/queue/join",
                                                                       body)
        for route in ("call", "run"):
            refused[f"{route}/{d['api_name']}"] = post_json(ANONYMOUS, f"{team.url}gradio_api/{route}/{d['api_name']}",
                                                            {"data": []})
    refused["upload"] = post_json(ANONYMOUS, team.url + "gradio_api/upload", {})
    assert {k: v for k, v in refused.items() if v != 401} == {}
    # the same calls with the cookie get in (list_runs only: it changes nothing)
    list_runs = next(d for d in dependencies if d["api_name"] == "list_runs")
    body = {"data": [], "fn_index": list_runs["id"], "session_hash": "signed-in", "event_data": None,
            "trigger_id": None}
    assert post_json(signed_in, team.url + "gradio_api/queue/join", body) == 200
    assert post_json(signed_in, team.url + "gradio_api/call/list_runs", {"data": []}) == 200
    assert OLD_RUN in json.dumps(call_event(team, "list_runs", [], signed_in))


def test_a_signed_in_push_gets_the_lent_token_and_fails_only_on_the_network(team):
    signed_in = signed_in_opener(team.url)
    answer, cleared = call_event(team, "push", [OLD_RUN, "team/model", "", True, "adapter", "f16"], signed_in)
    assert answer.startswith("❌ push to team/model failed"), answer  # the network's answer, not a refusal
    assert "paste a Hugging Face token" not in answer and FAKE_TOKEN not in answer and cleared == ""
    creates = [c for c in team.hub.carrying(FAKE_TOKEN) if "/api/repos/create" in c[1]]
    assert creates, team.hub.calls  # the server's own token went to the Hub, as the owner allowed
    assert FAKE_TOKEN not in team.log.read_text(errors="replace")
    placeholders = [c["props"].get("placeholder") or "" for c in page_config(team, signed_in)["components"]]
    assert "empty = the server's HF_TOKEN (signed-in users)" in placeholders


def test_a_signed_in_user_of_a_team_server_may_start_anyway(team, tiny_model):
    from gradio_client import Client
    client = Client(team.url, auth=(USER, PASSWORD), verbose=False)
    assert start_anyway_box(client.config).get("visible") is not False
    ask = dict(data_path=str(SAMPLE), model=tiny_model, method="lora", preset="Quick demo",
               settings_json=json.dumps({"max_steps": 1, "checkpoint_steps": 0}), api_name="/start_training")
    refused = client.predict(**ask)
    assert refused["run_id"] == "" and "start_anyway=True in the API" in refused["message"], refused
    started = client.predict(**ask, start_anyway=True)
    assert started["run_id"], started
    deadline = time.monotonic() + 120
    while (s := client.predict(run_id=started["run_id"], api_name="/run_status"))["status"] not in (
            "completed", "failed", "stopped", "interrupted"):
        assert time.monotonic() < deadline, s
        time.sleep(0.5)
    assert s["status"] == "completed", s


# --- the rules themselves, in process -------------------------------------------------------

@pytest.fixture
def local(monkeypatch):
    """A local single-user instance: none of the variables that make one shared."""
    for name in SHARING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env, says", [
    ({}, None),
    ({"GRADIO_SERVER_NAME": "localhost"}, None), ({"GRADIO_SERVER_NAME": "127.0.1.1"}, None),
    ({"GRADIO_SERVER_NAME": "::1"}, None),
    ({"GRADIO_SERVER_NAME": "0.0.0.0"}, "listens on 0.0.0.0"), ({"GRADIO_SERVER_NAME": "192.168.1.20"}, "192.168"),
    ({"GRADIO_SERVER_NAME": "studio.example.org"}, "studio.example.org"),
    ({"GRADIO_SERVER_NAME": ""}, "every address"),
    ({"FT_AUTH": "a:b"}, "FT_AUTH"), ({"FT_MAX_STEPS": "5"}, "demo caps"), ({"FT_MAX_ROWS": "5"}, "demo caps"),
    ({"FT_MAX_STEPS": "0"}, None), ({"SPACE_ID": "owner/space"}, "Hugging Face Space"),
])
def test_what_makes_an_instance_shared(env, says, local):
    for name, value in env.items():
        local.setenv(name, value)
    reasons = limits.shared_reasons()
    assert limits.shared_instance() is bool(says) and (says is None or says in "; ".join(reasons)), reasons


@pytest.mark.parametrize("env, lent", [
    ({}, True), ({"FT_LEND_HF_TOKEN": "0"}, False), ({"SPACE_ID": "o/s"}, False),
    ({"SPACE_ID": "o/s", "FT_LEND_HF_TOKEN": "0"}, False),
    ({"SPACE_ID": "o/s", "FT_AUTH": "a:b"}, False),
    ({"SPACE_ID": "o/s", "FT_AUTH": "a:b", "FT_LEND_HF_TOKEN": "1"}, True),
])
def test_whether_the_server_token_is_lent(env, lent, local):
    for name, value in env.items():
        local.setenv(name, value)
    assert limits.lend_hf_token() is lent


@pytest.mark.parametrize("value, says", [("yes", "FT_LEND_HF_TOKEN must be 0 or 1"), ("true", "must be 0 or 1"),
                                         ("2", "must be 0 or 1")])
def test_a_bad_lend_value_is_an_error_naming_the_variable(value, says, local):
    local.setenv("FT_LEND_HF_TOKEN", value)
    with pytest.raises(UserError, match=says):
        limits.lend_hf_token()


def test_lending_on_a_shared_studio_without_login_is_an_error_with_the_fix(local):
    local.setenv("FT_LEND_HF_TOKEN", "1")
    local.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    local.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(UserError) as info:
        limits.lend_hf_token()
    message = str(info.value)
    assert "set FT_AUTH=user:password too, or unset FT_LEND_HF_TOKEN" in message and "0.0.0.0" in message
    assert FAKE_TOKEN not in message and "\n" not in message


def test_the_server_token_goes_only_to_whom_the_rules_allow(local):
    local.setenv("HF_TOKEN", FAKE_TOKEN)
    assert limits.server_hf_token(None) == FAKE_TOKEN  # local: as before
    local.setenv("SPACE_ID", "o/s")
    for user in (None, "", "alice"):
        with pytest.raises(UserError, match="paste a Hugging Face token with write access") as info:
            limits.server_hf_token(user)
        assert FAKE_TOKEN not in str(info.value)
    local.setenv("FT_AUTH", "alice:pw")
    local.setenv("FT_LEND_HF_TOKEN", "1")
    assert limits.server_hf_token("alice") == FAKE_TOKEN
    with pytest.raises(UserError, match="only to signed-in users"):
        limits.server_hf_token(None)  # never for a caller who did not sign in
    local.delenv("HF_TOKEN")
    assert limits.server_hf_token("alice") == ""  # none set: push_to_hub says to paste one, as before


@pytest.mark.parametrize("env, signed_in, off", [
    ({}, False, None), ({"FT_MAX_STEPS": "2"}, True, "refusal is final"), ({"FT_MAX_ROWS": "9"}, False, "final"),
    ({"SPACE_ID": "o/s"}, False, "only for signed-in users"), ({"FT_AUTH": "a:b"}, True, None),
    ({"FT_AUTH": "a:b", "FT_MAX_STEPS": "2"}, True, "final"), ({"GRADIO_SERVER_NAME": "0.0.0.0"}, False, "signed-in"),
])
def test_where_start_anyway_is_off(env, signed_in, off, local):
    for name, value in env.items():
        local.setenv(name, value)
    said = limits.start_anyway_refusal(signed_in=signed_in)
    assert (said is None) if off is None else (off in said), said


def test_a_local_studio_pushes_with_the_server_token_as_before(local, tmp_path):
    """In process, with push_to_hub replaced: what token the Runs tab hands it."""
    from ft_engine import export
    from ui.context import Studio
    from ui.studio import build_studio

    local.setenv("HF_TOKEN", FAKE_TOKEN)
    _make_pushable_run(tmp_path / "runs")
    handed: list[str] = []
    local.setattr(export, "push_to_hub", lambda run, repo, token, kind, private, quant="f16": handed.append(token) or "url")
    push = next(f.fn for f in build_studio(Studio(tmp_path / "runs")).fns.values() if f.name == "push")
    assert push(OLD_RUN, "me/model", "", True, "adapter", None) == ("✅ Pushed to url", "")
    assert push(OLD_RUN, "me/model", TYPED_TOKEN, True, "adapter", None)[0].startswith("✅")
    assert handed == [FAKE_TOKEN, TYPED_TOKEN]
    local.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # the same studio, now reachable from elsewhere
    answer, _ = push(OLD_RUN, "me/model", "", True, "adapter", None)
    assert answer.startswith("❌ paste a Hugging Face token") and handed == [FAKE_TOKEN, TYPED_TOKEN]


@pytest.mark.parametrize("env, says", [
    ({"SPACE_ID": "owner/space", "FT_LEND_HF_TOKEN": "1", "HF_TOKEN": FAKE_TOKEN},
     "FT_LEND_HF_TOKEN=1 lends the server's HF_TOKEN to signed-in users only"),
    ({"FT_LEND_HF_TOKEN": "yes"}, "FT_LEND_HF_TOKEN must be 0 or 1"),  # checked with no HF_TOKEN too
])
def test_a_lending_setting_that_cannot_work_stops_the_app_at_start(env, says, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "FT_RUNS_DIR": str(tmp_path / "runs"),
           "GRADIO_ANALYTICS_ENABLED": "False", **env}
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert FAKE_TOKEN not in done.stderr + done.stdout
