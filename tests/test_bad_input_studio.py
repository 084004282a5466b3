"""Bad input through the running studio and through the engine, side by side.

One app (module-scoped, started once) receives every malformed file of tests/bad_data/ and
tests/bad_input/ through its validate_data endpoint, every bad setting through start_training,
and run ids with path tricks through every endpoint that takes one. Each answer must be one
line naming the row / field / setting and the fix, the engine must say the same, nothing may
be left behind (no kept upload, no run folder), and a run that existed before stays
byte-identical.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_server import REPO, running_app
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from ft_engine.config import RunConfig
from ft_engine.data import load_examples
from ft_engine.errors import DataError, UserError
from ft_engine.preview import preview_data
from ft_engine.training import TrainingJob

BAD_DATA = REPO / "tests" / "bad_data"
EXPECTED = json.loads((BAD_DATA / "expected.json").read_text(encoding="utf-8"))
BAD_INPUT = REPO / "tests" / "bad_input"
EXPECTED_INPUT = json.loads((BAD_INPUT / "expected.json").read_text(encoding="utf-8"))
SAMPLE = REPO / "assets" / "tiny_facts.jsonl"
UPLOAD_LIMIT_MB = "0.02"  # 20 kB: the size limit is tested without writing 100 MB
OLD_RUN = "20260101-000000-before-0000"


# --- the app, a run that existed before it, and a canary outside the runs folder --------------

def _make_old_run(runs_dir: Path) -> Path:
    """A finished run as the engine leaves it (only the files matter here)."""
    run = runs_dir / OLD_RUN
    (run / "adapter").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"run_id": OLD_RUN, "status": "completed", "step": 3,
                                                 "total_steps": 3, "method": "lora", "model": "bundled"}))
    (run / "config.yaml").write_text(RunConfig(data="x.jsonl").to_yaml())
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5, "elapsed_s": 1.0}) + "\n")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (run / "adapter" / "adapter_config.json").write_text("{}")
    return run


def runs_fingerprint(runs_dir: Path) -> dict[str, str]:
    """sha256 of every file of every run (kept uploads excluded)."""
    return {str(p.relative_to(runs_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(runs_dir.rglob("*")) if p.is_file() and not p.is_symlink()
            and ".uploads" not in p.relative_to(runs_dir).parts}


pytestmark = pytest.mark.usefixtures("server_log_on_failure")


@pytest.fixture(scope="module")
def app(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("bad-input-app")
    runs = d / "runs"
    _make_old_run(runs)
    outside = d / "outside"  # a folder next to the runs folder, with a canary in it
    (outside / "adapter").mkdir(parents=True)
    (outside / "status.json").write_text(json.dumps({"status": "completed"}))
    (outside / "adapter" / "canary.txt").write_text("CANARY-must-never-leave")
    (outside / "canary.jsonl").write_text('{"text": "CANARY-must-never-leave"}\n')
    # a link inside the runs folder that looks like a run and points outside it
    (runs / "20260101-000000-link-0000").symlink_to(outside, target_is_directory=True)
    before = runs_fingerprint(runs)
    with running_app(runs, d / "server.log", while_booting=lambda: request.getfixturevalue("tiny_model"),
                     extra_env={"FT_MAX_UPLOAD_MB": UPLOAD_LIMIT_MB}) as (url, proc, log):
        yield SimpleNamespace(url=url, proc=proc, log=log, runs_dir=runs, outside=outside,
                              before=before)


def uploads(app) -> set[str]:
    folder = app.runs_dir / ".uploads"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def validate(client, file: Path, model: str, max_len: int = 256):
    return client.predict(handle_file(str(file)), None, model, max_len, False, "auto", api_name="/validate_data")


def first_problem(summary: str) -> str:
    """The first '- ' line of the Data tab's error list, as the user reads it."""
    lines = [line[2:] for line in html.unescape(summary).splitlines() if line.startswith("- ")]
    assert lines, summary
    return lines[0]


# --- malformed files: the engine and the studio say the same, row and field included ---------

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_engine_and_studio_agree(name, client, app, tiny_model, tmp_path):
    want = EXPECTED[name]
    kept_before = uploads(app)
    if name == "unsupported.tsv":
        # the studio never reads it: Gradio (file_types) refuses it server-side, then keep_upload would
        with pytest.raises(AppError, match=r"Invalid file type.*\.jsonl"):
            validate(client, BAD_DATA / name, tiny_model)
        assert uploads(app) == kept_before
        return
    with pytest.raises(DataError) as info:
        load_examples(BAD_DATA / name)
    engine_line = str(info.value.problems[0])
    summary, histogram, examples, data_path = validate(client, BAD_DATA / name, tiny_model)
    shown = first_problem(summary)
    assert shown == engine_line  # word for word: one line naming the row, the field and the fix
    if want["row"] is not None:
        assert shown.startswith(f"{info.value.problems[0].row_kind} {want['row']}")
    if want["field"] is not None:
        assert f"field '{want['field']}'" in shown
    assert want["contains"] in shown
    assert f"`{name}`" in summary  # the file as the user named it, never the server's path
    assert "/tmp" not in summary and str(app.runs_dir) not in summary
    assert (data_path, examples, histogram) == ("", "", None)
    assert uploads(app) == kept_before  # a refused file is not kept


def test_row_far_over_the_maximum_length(client, tiny_model):
    name, want = "long_row.jsonl", EXPECTED_INPUT["long_row.jsonl"]
    summary, _, _, data_path = validate(client, BAD_INPUT / name, tiny_model, want["max_seq_len"])
    text = html.unescape(summary)
    assert all(s in text for s in want["studio"]), text
    assert data_path  # usable: the row is cut, and the user is told which one and what to do
    engine = preview_data(str(BAD_INPUT / name), model=tiny_model, max_seq_len=want["max_seq_len"])
    assert engine.truncated_rows == want["engine"]["truncated_rows"]
    assert engine.long_rows[0][0] == want["engine"]["long_row"]


def test_every_row_filtered_out(client, app, tiny_model, tmp_path):
    name, want = "all_cut.jsonl", EXPECTED_INPUT["all_cut.jsonl"]
    kept_before = uploads(app)
    summary, _, _, data_path = validate(client, BAD_INPUT / name, tiny_model, want["max_seq_len"])
    text = html.unescape(summary)
    assert all(s in text for s in want["studio"]), text
    assert text.count("\n") == 0 and data_path == "" and uploads(app) == kept_before
    # training refuses the same file for the same reason, before creating anything
    runs = tmp_path / "runs"
    cfg = RunConfig(model=tiny_model, data=str(BAD_INPUT / name), max_seq_len=want["max_seq_len"],
                    runs_dir=str(runs))
    with pytest.raises(UserError) as info:
        TrainingJob(cfg).prepare()
    assert all(s in str(info.value) for s in want["engine"]["contains"]), info.value
    assert not runs.exists()


def test_upload_over_the_size_limit(client, app, tiny_model, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"text": "x" * 30_000}) + "\n")  # 30 kB > 20 kB
    kept_before = uploads(app)
    # gradio_client reads the limit from the app's config and refuses before sending
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20000 bytes"):
        validate(client, big, tiny_model)
    # a client that sends it anyway is refused by the server (HTTP 413), nothing is stored
    boundary = "ftboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + big.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(app.url + "gradio_api/upload", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 413
    assert "maximum allowed size" in info.value.read().decode()
    assert uploads(app) == kept_before


def call_raw(app, api_name: str, data: list) -> str:
    """An API call over plain HTTP (gradio_client would upload a local path itself); returns
    the event stream's text."""
    req = urllib.request.Request(f"{app.url}gradio_api/call/{api_name}", method="POST",
                                 data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{app.url}gradio_api/call/{api_name}/{event_id}", timeout=60) as r:
        return r.read().decode()


def test_a_server_file_cannot_be_passed_as_an_upload(app, tiny_model):
    """validate_data takes only files uploaded to Gradio, never a path on the server."""
    kept_before = uploads(app)
    for path in (app.outside / "canary.jsonl", SAMPLE, app.runs_dir / OLD_RUN / "metrics.jsonl"):
        answer = call_raw(app, "validate_data", [{"path": str(path), "meta": {"_type": "gradio.FileData"}},
                                                 None, tiny_model, 256, False, "auto"])
        assert answer.startswith("event: error"), answer
        assert "not uploaded by a user" in answer or "blocked_paths" in answer, answer
        assert "CANARY" not in answer
    assert uploads(app) == kept_before


# --- bad settings: refused with the setting named, through the API and the engine ------------

# (settings, model or None for the tiny model, what the studio says, what the engine says)
BAD_SETTINGS = [
    ({"learning_rate": -1}, None, "learning_rate must be > 0", "learning_rate must be > 0"),
    ({"learning_rate": 0}, None, "learning_rate must be > 0", "learning_rate must be > 0"),
    ({"batch_size": 0}, None, "batch_size must be >= 1", "batch_size must be >= 1"),
    ({"lora_r": 0}, None, "lora_r must be >= 1 (try 8 or 16)", "lora_r must be >= 1"),
    ({"max_rows": -5}, None, "max_rows must be >= 0", "max_rows must be >= 0"),
    ({"max_seq_len": 1024}, None, "max_seq_len 1024 is over the limit of model", "set max_seq_len to 512 or less"),
    ({"trust_remote_code": True}, None, "unknown setting 'trust_remote_code'", "unknown setting 'trust_remote_code'"),
    ({}, "nobody-here/no-such-model-xyz", "cannot load model 'nobody-here/no-such-model-xyz'", "cannot load model"),
    ({}, "no such model", "model 'no such model' is neither", "model 'no such model' is neither"),
    # the engine's answer depends on whether ../../etc exists seen from where the tests run
    ({}, "../../etc", "model '../../etc' is not accepted here",
     ("model folder ../../etc has no config.json", "model folder not found: ../../etc")),
    ({}, "/etc/passwd", "no model folder at /etc/passwd", "model folder not found: /etc/passwd"),
    ({}, "/etc", "no model folder at /etc", "model folder /etc has no config.json"),
    ({}, "..\\x", "model '..\\\\x' is not accepted here", "model '..\\\\x' is neither"),
    ({}, "a/../../b", "model 'a/../../b' is not accepted here", "model folder not found: a/../../b"),
    ({}, "~/models", "model '~/models' is not accepted here", "model"),
    ({"run_name": "../x"}, None, "run_name may use letters", "run_name may use letters"),
    ({"run_name": "a/b"}, None, "run_name may use letters", "run_name may use letters"),
    ({"run_name": "/etc/cron.d/x"}, None, "run_name may use letters", "run_name may use letters"),
]


@pytest.fixture(scope="module")
def data_path(client, tiny_model):
    path = validate(client, SAMPLE, tiny_model)[3]
    assert path, "the sample dataset did not validate"
    return path


@pytest.mark.parametrize("settings, model, studio_says, engine_says", BAD_SETTINGS,
                         ids=[f"{m or ''}{json.dumps(s)}" for s, m, _, _ in BAD_SETTINGS])
def test_bad_setting_is_refused(settings, model, studio_says, engine_says, client, app, data_path, tiny_model,
                                tmp_path):
    runs_before = sorted(p.name for p in app.runs_dir.iterdir())
    res = client.predict(data_path=data_path, model=model or tiny_model, method="lora", preset="Quick demo",
                         settings_json=json.dumps({"max_steps": 1, **settings}), api_name="/start_training")
    assert res["run_id"] == "" and res["position"] is None, res
    assert studio_says in res["message"] and "\n" not in res["message"], res["message"]
    assert sorted(p.name for p in app.runs_dir.iterdir()) == runs_before  # no run folder, not even half of one
    # the engine on its own refuses the same thing, and writes nothing either
    runs = tmp_path / "engine-runs"
    with pytest.raises(UserError) as info:
        cfg = RunConfig.from_dict({"model": model or tiny_model, "data": str(SAMPLE), "runs_dir": str(runs),
                                   "max_steps": 1, **settings})
        TrainingJob(cfg).prepare()
    alternatives = engine_says if isinstance(engine_says, tuple) else (engine_says,)
    assert any(says in str(info.value) for says in alternatives), info.value
    assert not runs.exists()


# --- run ids with path tricks: refused everywhere, nothing outside is read, zipped or deleted --

TRICKS = ["../x", "..", ".", "/etc", "/tmp", "a/b", "%2e%2e", "..%2f..%2fetc", "20260101-000000-link-0000",
          OLD_RUN + "/../" + OLD_RUN, OLD_RUN + "/adapter", "\x00", " ", ".uploads"]


@pytest.mark.parametrize("bad", TRICKS)
def test_run_id_tricks_are_refused(bad, client, app):
    s = client.predict(run_id=bad, api_name="/run_status")
    assert s["status"] is None and ("not a run id" in s["message"] or "no run" in s["message"]), s
    assert "nothing to stop" in client.predict(run_id=bad, api_name="/stop_training")
    reply = client.predict(run_id=bad, message="hi", api_name="/chat")
    assert reply.startswith("error:") and ("not a run id" in reply or "no run" in reply), reply
    for kind in ("adapter", "merged"):
        with pytest.raises(AppError, match="not a run id|no run"):
            client.predict(bad, kind, api_name="/export_run")


def call_event(app, api_name: str, data: list) -> list:
    """Call one of the page's own events ("private": hidden from the API, but the browser calls
    them, so anyone can) the way the browser does; returns its outputs."""
    with urllib.request.urlopen(f"{app.url}config", timeout=10) as r:
        fn_index = next(d["id"] for d in json.load(r)["dependencies"] if d["api_name"] == api_name)
    session = f"test{os.getpid()}{api_name}"
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    req = urllib.request.Request(f"{app.url}gradio_api/queue/join", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    with urllib.request.urlopen(f"{app.url}gradio_api/queue/data?session_hash={session}", timeout=60) as r:
        for line in r:
            msg = json.loads(line.decode()[len("data: "):]) if line.startswith(b"data: ") else {}
            if msg.get("msg") == "process_completed":
                assert msg["success"], msg
                return msg["output"]["data"]
    raise AssertionError(f"{api_name}: no answer")


@pytest.mark.parametrize("bad", TRICKS)
def test_delete_and_push_from_the_page_refuse_run_id_tricks(bad, app):
    answer = call_event(app, "delete", [bad, True])[0]
    assert answer.startswith("❌") and ("not a run id" in answer or "no run" in answer), answer
    answer = call_event(app, "push", [bad, "someone/model", "hf_TYPEDtokenXYZ123", True, "adapter", "f16"])[0]
    assert answer.startswith("❌") and ("not a run id" in answer or "no run" in answer), answer
    assert "hf_TYPEDtokenXYZ123" not in answer


def test_the_memory_forecast_reads_no_server_file(app, tiny_model):
    """The Train tab's forecast reads the data's longest row: only of an upload or a sample."""
    with urllib.request.urlopen(f"{app.url}config", timeout=10) as r:
        config = json.load(r)
    components = {c["id"]: c for c in config["components"]}
    inputs = next(d["inputs"] for d in config["dependencies"] if d["api_name"] == "update_forecast")
    values = []
    for i in inputs:
        props = components[i]["props"]
        label = props.get("label")
        values.append(str(app.outside / "canary.jsonl") if label == "File used for training" else
                      tiny_model if label == "Model" else props.get("value"))
    verdict = call_event(app, "update_forecast", values)[1]
    assert "not an uploaded file or a sample dataset" in json.dumps(verdict), verdict


def test_push_never_echoes_the_typed_token(app):
    token = "hf_TYPEDtokenXYZ123"
    for repo, says in [("../evil", "repo id must look like"), ("someone/model", "push to someone/model failed")]:
        answer, cleared = call_event(app, "push", [OLD_RUN, repo, token, True, "adapter", "f16"])
        assert answer.startswith("❌") and says in answer and token not in answer, answer
    assert token not in app.log.read_text(errors="replace")


def test_gradio_serves_no_file_of_the_server(app):
    """Only Gradio's own cache is served: not the runs, not the code, not the system."""
    for path in (app.runs_dir / OLD_RUN / "config.yaml", app.outside / "canary.jsonl", REPO / "app.py",
                 Path("/etc/passwd")):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{app.url}gradio_api/file={path}", timeout=10)
        assert info.value.code in (403, 404), (path, info.value.code)


def test_the_link_to_outside_is_not_listed(client):
    ids = [r["run_id"] for r in client.predict(api_name="/list_runs")]
    assert OLD_RUN in ids and "20260101-000000-link-0000" not in ids


def test_real_run_export_holds_only_its_own_files(client, app, tmp_path):
    path = client.predict(OLD_RUN, "adapter", api_name="/export_run")
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert not any(b"CANARY" in z.read(n) for n in z.namelist())


# --- afterwards (file order keeps these last) -------------------------------------------------

def test_zz_nothing_outside_was_touched_and_old_run_is_unchanged(client, app):
    assert app.proc.poll() is None  # the app is still up
    assert (app.outside / "adapter" / "canary.txt").read_text() == "CANARY-must-never-leave"
    assert (app.runs_dir / "20260101-000000-link-0000").is_symlink()
    assert runs_fingerprint(app.runs_dir) == app.before  # byte-identical, and no new run folder
    assert sorted(p.name for p in app.runs_dir.iterdir()) == sorted(
        [".uploads", OLD_RUN, "20260101-000000-link-0000"])
    # kept by content, each with the name it was uploaded as beside it
    names = {(app.runs_dir / ".uploads" / n).read_text() for n in uploads(app) if n.endswith(".name")}
    assert uploads(app) and names <= {"tiny_facts.jsonl", "long_row.jsonl"} and len(uploads(app)) == 2 * len(names)
