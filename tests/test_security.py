"""Security: safe names, nothing outside the runs folder, limits, the Hugging Face token kept in
memory only, no remote code, and a hosted instance with login and demo caps.

The in-process tests run the engine and ui.context directly; the last part starts one app
as a hosted demo would run it (FT_AUTH, FT_MAX_STEPS, FT_MAX_ROWS, HF_TOKEN) and drives it
over HTTP.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from app_server import REPO, log_tail, running_app

from ft_engine.config import RunConfig
from ft_engine.errors import ConfigError, UserError
from ft_engine.export import export_merged, push_to_hub, zip_result
from ft_engine.rundir import _SAFE_ID, delete_run, list_runs, new_run_id, run_by_id, slugify
from ft_engine.training import train
from ui import limits
from ui.context import UPLOADS, Studio
from ui.form import check_model_value, config_from_form

FAKE_TOKEN = "hf_FAKEtokenForTests0123456789abcdefXYZ"     # what HF_TOKEN holds
TYPED_TOKEN = "hf_TYPEDtokenForTests9876543210zyxwvuQRS"   # what a user pastes into the Runs tab
SAMPLE = REPO / "assets" / "tiny_facts.jsonl"
EVIL_NAMES = ["../../etc/passwd", "..", ".", "/abs/path", "a/b\\c", "~root", "%2e%2e%2f", "con", "nul.txt",
              "日本語の名前", "x" * 300, "\x00\n\t", "run; rm -rf /", ".hidden", "-rf"]


# --- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", EVIL_NAMES)
def test_any_name_becomes_a_safe_run_id(name, tmp_path):
    run_id = new_run_id(tmp_path, name, "lora")
    assert _SAFE_ID.fullmatch(run_id) and ".." not in run_id and "/" not in run_id
    assert (tmp_path / run_id).resolve().parent == tmp_path.resolve()
    assert re.fullmatch(r"[a-z0-9-]*", slugify(name)) and len(slugify(name)) <= 40


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/x", "a\\b", "x" * 65, "..hidden", "日本"])
def test_a_run_name_with_path_characters_is_refused(name):
    with pytest.raises(ConfigError, match="run_name may use letters"):
        RunConfig(run_name=name, data="").validate(check_paths=False)


def test_uploaded_names_are_made_safe(tmp_path):
    studio = Studio(tmp_path / "runs")
    for name in ["ünï cødé.jsonl", "a;b|c&d$(x).jsonl", "..jsonl", "-rf.jsonl"]:
        f = tmp_path / name
        f.write_text('{"text": "x"}\n')
        kept = studio.keep_upload(str(f))
        assert kept.parent == studio.runs_dir / UPLOADS
        assert re.fullmatch(r"[0-9a-f]{64}\.jsonl", kept.name), kept.name  # by content: no name reaches it


# --- nothing outside the runs folder ------------------------------------------------------------

@pytest.fixture
def layout(tmp_path):
    """runs/ with one real (fake-trained) run and a link that poses as a run; outside/ with a canary."""
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    (outside / "adapter").mkdir(parents=True)
    (outside / "status.json").write_text(json.dumps({"status": "completed"}))
    (outside / "adapter" / "canary.txt").write_text("CANARY")
    real = runs / "20260101-000000-real-0000"
    (real / "adapter").mkdir(parents=True)
    (real / "status.json").write_text(json.dumps({"status": "completed"}))
    (real / "adapter" / "adapter_config.json").write_text("{}")
    (runs / "20260101-000000-link-0000").symlink_to(outside, target_is_directory=True)
    return SimpleNamespace(runs=runs, outside=outside, real=real)


TRAVERSALS = ["../outside", "..", "/", "/etc", "a/b", "%2e%2e", "20260101-000000-link-0000",
              "20260101-000000-real-0000/../../outside", "", " ", ".", "./20260101-000000-real-0000"]


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_delete_refuses_anything_but_a_run_id(bad, layout):
    with pytest.raises(UserError, match="not a run id|no run"):
        delete_run(layout.runs, bad)
    assert (layout.outside / "adapter" / "canary.txt").read_text() == "CANARY"
    assert layout.real.is_dir() and (layout.runs / "20260101-000000-link-0000").is_symlink()


def test_absolute_path_of_a_real_run_is_not_an_id(layout):
    with pytest.raises(UserError, match="not a run id"):
        run_by_id(layout.runs, str(layout.real))


def test_delete_removes_exactly_one_run(layout):
    delete_run(layout.runs, "20260101-000000-real-0000")
    assert not layout.real.exists()
    assert (layout.outside / "adapter" / "canary.txt").exists()
    assert (layout.runs / "20260101-000000-link-0000").is_symlink()


def test_links_are_neither_listed_nor_exported(layout, tmp_path):
    assert [r.run_id for r in list_runs(layout.runs)] == ["20260101-000000-real-0000"]
    # a result folder that is a link to elsewhere is never zipped
    (layout.real / "adapter").rename(layout.real / "adapter-old")
    (layout.real / "adapter").symlink_to(layout.outside / "adapter", target_is_directory=True)
    run = run_by_id(layout.runs, "20260101-000000-real-0000")
    with pytest.raises(UserError, match="no trained result"):
        zip_result(run, "adapter", tmp_path / "zips")
    assert not list((tmp_path / "zips").glob("*.zip"))


def test_push_refuses_bad_repo_ids_before_anything(layout):
    run = run_by_id(layout.runs, "20260101-000000-real-0000")
    for repo in ["../x", "a/../b", "/etc/passwd", "a/b/c", "", "a b/c"]:
        with pytest.raises(UserError, match="repo id must look like"):
            push_to_hub(run, repo, TYPED_TOKEN)


# --- limits ----------------------------------------------------------------------------------

def test_upload_limit_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FT_MAX_UPLOAD_MB", raising=False)
    assert limits.max_upload_bytes() == 100_000_000  # the default: 100 MB
    monkeypatch.setenv("FT_MAX_UPLOAD_MB", "0.001")  # 1 kB
    studio = Studio(tmp_path / "runs")
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text('{"text": "x"}\n')
    big.write_text(json.dumps({"text": "x" * 2000}) + "\n")
    assert studio.keep_upload(str(small)).is_file()
    with pytest.raises(UserError) as info:
        studio.keep_upload(str(big))
    message = str(info.value)
    assert "big.jsonl" in message and "FT_MAX_UPLOAD_MB" in message and "1 kB" in message and "\n" not in message
    kept = studio.keep_upload(str(small))
    assert sorted(p.name for p in (studio.runs_dir / UPLOADS).iterdir()) == [kept.name, f"{kept.name}.name"]


@pytest.mark.parametrize("name, value", [("FT_MAX_UPLOAD_MB", "abc"), ("FT_MAX_UPLOAD_MB", "0"),
                                         ("FT_MAX_UPLOAD_MB", "-5"), ("FT_MAX_STEPS", "ten"),
                                         ("FT_MAX_STEPS", "-1"), ("FT_MAX_ROWS", "1.5")])
def test_a_bad_limit_is_an_error_naming_the_variable(name, value, monkeypatch):
    monkeypatch.setenv(name, value)
    read = {"FT_MAX_UPLOAD_MB": limits.max_upload_bytes, "FT_MAX_STEPS": limits.max_steps_cap,
            "FT_MAX_ROWS": limits.max_rows_cap}[name]
    with pytest.raises(UserError, match=name):
        read()


@pytest.mark.parametrize("value, expected", [("alice:secret", ("alice", "secret")),
                                             ("alice:se:cr:et", ("alice", "se:cr:et")), ("", None)])
def test_login_from_ft_auth(value, expected, monkeypatch):
    monkeypatch.setenv("FT_AUTH", value)
    assert limits.login() == expected


@pytest.mark.parametrize("value", ["alice", ":hunter2", "alice:", " :hunter2"])
def test_a_bad_ft_auth_never_echoes_the_password(value, monkeypatch):
    monkeypatch.setenv("FT_AUTH", value)
    with pytest.raises(UserError, match="FT_AUTH must be user:password") as info:
        limits.login()
    assert "hunter2" not in str(info.value) and "alice" not in str(info.value)


def test_login_check_takes_one_guess_at_a_time_and_slows_wrong_ones():
    import asyncio
    login = limits.LoginCheck("alice", "s3cret:x", failure_delay_s=0.2)
    check = login.check
    assert inspect.iscoroutinefunction(check)  # else Gradio takes the un-awaited coroutine for a yes

    async def attempts():
        start = time.monotonic()
        # five guesses sent at once, then the right login: the guesses cannot overlap
        results = await asyncio.gather(*(check("alice", f"guess{i}") for i in range(5)), check("alice", "s3cret:x"))
        took = time.monotonic() - start
        others = [await check("bob", "s3cret:x"), await check("alice", "s3cret"), await check("", ""),
                  await check("alice", "s3cret:x ")]
        return results, took, others

    results, took, others = asyncio.run(attempts())
    assert results == [False] * 5 + [True]
    assert took >= 5 * 0.2, took
    assert others == [False, False, False, False] and login.failures == 9


def test_row_and_step_caps_apply_to_every_studio_run(monkeypatch, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x"}\n')
    form = {"data": str(data), "model": "bundled", "method": "lora"}
    monkeypatch.delenv("FT_MAX_ROWS", raising=False)
    monkeypatch.delenv("FT_MAX_STEPS", raising=False)
    assert config_from_form(form).max_rows == 0  # no cap set: every row
    monkeypatch.setenv("FT_MAX_ROWS", "3")
    monkeypatch.setenv("FT_MAX_STEPS", "2")
    for asked, rows in [({}, 3), ({"max_rows": 100}, 3), ({"max_rows": 2}, 2)]:
        config = config_from_form({**form, **asked, "max_steps": 50})
        assert (config.max_rows, config.max_steps) == (rows, 2)


@pytest.mark.parametrize("model", ["../../etc", "a/../../b", "..\\x", "~/models", "~", "/tmp/../etc",
                                   "models/..", "ok/name\x00", "a\nb"])
def test_model_values_with_path_tricks_are_refused(model):
    with pytest.raises(ConfigError, match="is not accepted here"):
        check_model_value(model)


@pytest.mark.parametrize("model", ["bundled", "meta-llama/Llama-3.2-1B-Instruct", " owner/name.v2 ", "{tiny}"])
def test_plain_model_values_pass(model, tiny_model):
    model = model.format(tiny=tiny_model)  # an absolute path of a real model folder
    assert check_model_value(model) == model.strip()


def test_a_path_that_is_not_a_model_gets_one_answer_whatever_is_there(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    answers = set()
    for there in ("folder", "file.txt", "nothing-here", "folder/"):
        with pytest.raises(ConfigError) as info:
            check_model_value(str(tmp_path / there))
        answers.add(str(info.value).replace(str(tmp_path / there), "PATH"))
    assert len(answers) == 1, answers
    assert "no model folder at PATH" in answers.pop()


# --- trust_remote_code can't be switched on by any user value -----------------------------------

def test_trust_remote_code_is_not_a_setting(tmp_path):
    assert "trust_remote_code" not in RunConfig().to_dict()
    with pytest.raises(ConfigError, match="unknown setting 'trust_remote_code'"):
        RunConfig.from_dict({"trust_remote_code": True})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "bundled", "trust_remote_code": True}))
    with pytest.raises(ConfigError, match="unknown setting 'trust_remote_code'"):
        RunConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="unknown setting 'trust_remote_code'"):
        config_from_form({"data": str(SAMPLE), "trust_remote_code": True})


@pytest.fixture
def evil_model(tiny_model, tmp_path):
    """The tiny model, with a config.json that asks for custom code which would leave a marker."""
    import shutil
    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "REMOTE-CODE-RAN"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import LlamaConfig as EvilConfig, "
                                    "LlamaForCausalLM as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_no_remote_code_runs_in_a_whole_run(evil_model, tmp_path, monkeypatch):
    """Every from_pretrained call of training, chat and export passes trust_remote_code=False
    (or nothing), and a model that asks for custom code does not get it run."""
    import transformers

    from ft_engine.inference import ChatModel

    folder, marker = evil_model
    seen: list[tuple[str, object]] = []

    def spy(cls, name):
        original = getattr(cls, "from_pretrained").__func__

        def wrapper(klass, *args, **kwargs):
            seen.append((name, kwargs.get("trust_remote_code")))
            return original(klass, *args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(wrapper))

    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM, transformers.AutoConfig):
        spy(cls, cls.__name__)
    cfg = RunConfig(model=str(folder), data=str(SAMPLE), runs_dir=str(tmp_path / "runs"), max_steps=1,
                    batch_size=2, checkpoint_steps=0)
    run, status = train(cfg)
    assert status.value == "completed"
    ChatModel(run).generate("hi", max_new_tokens=2)
    export_merged(run, tmp_path / "merged")
    names = {name for name, _ in seen}
    assert {"AutoTokenizer", "AutoModelForCausalLM", "AutoConfig"} <= names, seen
    assert all(flag in (None, False) for _, flag in seen), seen
    assert not marker.exists()


# --- the Hugging Face token stays in memory ----------------------------------------------------

def files_holding(folder: Path, secret: str) -> list[str]:
    """Every file under `folder` (zips opened) whose bytes contain `secret`."""
    hits = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        blobs = [p.read_bytes()]
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as z:
                blobs += [z.read(n) for n in z.namelist()]
        if any(secret.encode() in b for b in blobs):
            hits.append(str(p))
    return hits


def test_token_is_never_written_train_export_push(tiny_model, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    cfg = RunConfig(model=tiny_model, data=str(SAMPLE), runs_dir=str(tmp_path / "runs"), max_steps=2,
                    batch_size=2, checkpoint_steps=1)
    run, status = train(cfg)
    assert status.value == "completed"
    exports = tmp_path / "exports"
    zip_result(run, "adapter", exports)
    zip_result(run, "merged", exports)
    for token in (TYPED_TOKEN, FAKE_TOKEN):  # offline, so the push fails: its message must not echo it
        with pytest.raises(UserError, match="push to someone/model failed") as info:
            push_to_hub(run, "someone/model", token)
        assert token not in str(info.value)
    out, err = capfd.readouterr()
    for secret in (FAKE_TOKEN, TYPED_TOKEN):
        assert files_holding(run.path, secret) == []
        assert files_holding(exports, secret) == []
        assert secret not in caplog.text and secret not in out and secret not in err
    assert len(list(exports.glob("*.zip"))) == 2 and run.checkpoints  # the greps had files to look at


# --- a hosted demo: login, caps, token, over HTTP ---------------------------------------------

USER, PASSWORD = "alice", "pw:with-colon"


@pytest.fixture(scope="module")
def hosted(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("hosted")
    env = {"FT_AUTH": f"{USER}:{PASSWORD}", "FT_MAX_STEPS": "2", "FT_MAX_ROWS": "3", "HF_TOKEN": FAKE_TOKEN}
    with running_app(d / "runs", d / "server.log", while_booting=lambda: request.getfixturevalue("tiny_model"),
                     extra_env=env) as (url, proc, log):
        yield SimpleNamespace(url=url, proc=proc, log=log, runs_dir=d / "runs")
        if request.session.testsfailed:
            print(f"\n----- server log ({log}) -----\n{log_tail(log)}\n----- end of server log -----")


def test_hosted_refuses_callers_without_login(hosted):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError
    with pytest.raises(AuthenticationError):
        Client(hosted.url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):  # Gradio answers a wrong password with 400
        Client(hosted.url, auth=(USER, "wrong"), verbose=False)
    # guesses sent at once are answered one by one, a second (LOGIN_FAILURE_DELAY_S) each
    from concurrent.futures import ThreadPoolExecutor

    def guess(i: int) -> int:
        body = urllib.parse.urlencode({"username": USER, "password": f"guess-{i}"}).encode()
        req = urllib.request.Request(hosted.url + "login", data=body, method="POST")
        try:
            return urllib.request.urlopen(req, timeout=30).status
        except urllib.error.HTTPError as e:
            return e.code

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(guess, range(4)))
    took = time.monotonic() - start
    assert codes == [400] * 4 and took >= 4 * limits.LOGIN_FAILURE_DELAY_S, (codes, took)
    log = hosted.log.read_text()
    assert "failed sign-in #5" in log and "guess-" not in log  # counted and logged; the guesses are not
    Client(hosted.url, auth=(USER, PASSWORD), verbose=False)  # the right login still gets in
    for method, path, body in [("POST", "gradio_api/call/list_runs", b'{"data": []}'), ("GET", "config", None),
                               ("GET", "gradio_api/info", None), ("POST", "gradio_api/upload", b"x"),
                               ("GET", f"gradio_api/file={SAMPLE}", None)]:
        req = urllib.request.Request(hosted.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 401, (path, info.value.code)


def test_hosted_demo_caps_rows_and_steps_and_keeps_the_token_secret(hosted, tiny_model):
    from gradio_client import Client, handle_file
    client = Client(hosted.url, auth=(USER, PASSWORD), verbose=False)
    assert "Demo mode:** each run uses at most the first 3 rows of a file and 2 training steps" in json.dumps(
        client.config, ensure_ascii=False)
    summary, _, _, data_path = client.predict(handle_file(str(SAMPLE)), None, tiny_model, 256, False, "auto",
                                              api_name="/validate_data")
    assert "Demo limit" in summary and "first 3 of the file's 12 rows" in summary, summary
    res = client.predict(data_path=data_path, model=tiny_model, method="lora", preset="Quick demo",
                         settings_json=json.dumps({"max_steps": 500, "max_rows": 1000, "checkpoint_steps": 1}),
                         api_name="/start_training")
    assert res["run_id"], res
    assert "first **3 of 12 rows**" in res["message"], res  # the caller is told, not left to find out
    deadline = time.monotonic() + 120
    while (s := client.predict(run_id=res["run_id"], api_name="/run_status"))["status"] not in (
            "completed", "failed", "stopped", "interrupted"):
        assert time.monotonic() < deadline, s
        time.sleep(0.3)
    assert s["status"] == "completed" and s["total_steps"] == 2, s
    assert any("first 3 of 12 rows" in e["message"] for e in s["events"]), s["events"]
    run = hosted.runs_dir / res["run_id"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["max_steps"], config["max_rows"]) == (2, 3)
    data = json.loads((run / "data.json").read_text())
    assert (data["rows_in_file"], data["train_rows"]) == (12, 3)
    zips = [Path(client.predict(res["run_id"], kind, api_name="/export_run")) for kind in ("adapter", "merged")]
    assert all(z.suffix == ".zip" for z in zips)
    # HF_TOKEN was set the whole time: no file of the runs folder, no export, no log line holds it
    assert files_holding(hosted.runs_dir, FAKE_TOKEN) == []
    for z in zips:
        assert files_holding(z.parent, FAKE_TOKEN) == []
    assert FAKE_TOKEN not in hosted.log.read_text(errors="replace")


def test_a_bad_limit_stops_the_app_at_start(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "FT_RUNS_DIR": str(tmp_path / "runs"),
           "FT_AUTH": "alice-without-password", "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "FT_AUTH must be user:password" in done.stderr
    assert "alice-without-password" not in done.stderr + done.stdout
