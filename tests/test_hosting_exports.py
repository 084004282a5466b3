"""Issue 11, items 2, 3 and 8: downloads on a public instance.

- Exports are cleaned up: the app keeps at most one prepared download per session (and
  ui/downloads.py MAX_PREPARED in all), written where Gradio serves it (no second copy), and
  nothing of an export that failed; an export the free disk cannot hold is refused with the
  bytes needed and free.
- One export per run at a time, each in a scratch folder of its own: nothing is left in the
  run folder, and no message shows a server path.
- Links in a run's result folder that lead outside the run are refused by the zip, by chat and
  by the merged export.

The in-process tests drive ft_engine.export and ui.downloads directly; the rest start one app
(GRADIO_TEMP_DIR and TMPDIR pointed at folders of this module, so what it leaves can be
counted) and drive it with gradio_client, on copies of one tiny-model LoRA run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_server import running_app
from conftest import QA, write_jsonl

from ft_engine import export
from ft_engine.config import RunConfig
from ft_engine.disk import DISK, folder_bytes, gb
from ft_engine.errors import UserError
from ft_engine.export import ExportBusyError, ExportDiskError, export_merged, merged_model_bytes, zip_result
from ft_engine.rundir import RunDir, Status, run_by_id
from ui.downloads import PREFIX, PreparedDownloads, without_paths

GOOD, DAMAGED, LINKED = "20260101-000000-good-0000", "20260101-000000-damaged-0000", "20260101-000000-linked-0000"
WIDE = "20260101-000000-wide-0000"
BUSY = "an export of run {} is being prepared; try again when it is done"
# an absolute path in a message: "/x" at the start, after a space, a quote or a bracket
ABSOLUTE_PATH = re.compile(r"(^|[\s'\"(\[=])(/|[A-Za-z]:\\)")


# --- one trained run, copied for each test ------------------------------------------------------

def train_lora(model: str, root: Path, steps: int) -> Path:
    data = write_jsonl(root / "chat.jsonl", [{"messages": [{"role": "user", "content": q},
                                                          {"role": "assistant", "content": a}]} for q, a in QA])
    from ft_engine.training import train
    run, status = train(RunConfig(model=model, data=str(data), method="lora", runs_dir=str(root / "runs"),
                                  max_steps=steps, batch_size=2, checkpoint_steps=0))
    assert status == Status.COMPLETED
    return run.path


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> Path:
    """A completed 2-step LoRA run of the tiny model (its folder; copy it, never change it)."""
    return train_lora(tiny_model, tmp_path_factory.mktemp("trained"), steps=2)


@pytest.fixture(scope="module")
def trained_wide(tmp_path_factory) -> Path:
    """A 1-step LoRA run of a wider tiny Llama (hidden 512, 4 layers: 10 M parameters, a 40 MB
    merged model): its merge and zip take long enough that two exports started together overlap."""
    from tiny_model import make_tiny_model
    root = tmp_path_factory.mktemp("trained-wide")
    return train_lora(str(make_tiny_model(root / "model", hidden=512, layers=4)), root, steps=1)


def copy_run(trained: Path, runs: Path, run_id: str) -> RunDir:
    shutil.copytree(trained, runs / run_id)
    return run_by_id(runs, run_id)


def damage(run: RunDir) -> None:
    """An adapter whose weights file is not safetensors: the merge fails while loading it."""
    (run.path / "adapter" / "adapter_model.safetensors").write_bytes(b"this is not a safetensors file" * 4)


def link_outside(run: RunDir, outside: Path) -> Path:
    """adapter/tokenizer.json made a link to a copy outside the run: loaders would read it (and
    the zip would hold it) if links were followed, so the refusals below are not by accident."""
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "tokenizer.json"
    shutil.copyfile(run.path / "adapter" / "tokenizer.json", secret)
    (run.path / "adapter" / "tokenizer.json").unlink()
    (run.path / "adapter" / "tokenizer.json").symlink_to(secret)
    return secret


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` with its kind, size and modification time (links not followed)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[p.relative_to(folder).as_posix()] = (p.is_symlink(), p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def one_line_without_paths(message: str, *private: Path) -> None:
    assert "\n" not in message.strip(), message
    assert not ABSOLUTE_PATH.search(message), message
    for p in private:
        assert str(p) not in message and str(p.resolve()) not in message, message


@pytest.fixture
def runs(tmp_path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


# --- disk: refused before anything is written, with what is needed and what is free ------------

@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_an_export_the_disk_cannot_hold_is_refused_with_needed_and_free(kind, trained, runs, tmp_path, monkeypatch):
    run = copy_run(trained, runs, GOOD)
    before = snapshot(run.path)
    free = 300 * 10 ** 6  # 0.3 GB: less than the 1 GB kept spare, whatever the export's size
    seen = []
    monkeypatch.setattr(export, "free_bytes", lambda path: seen.append(Path(path)) or free)
    dest = tmp_path / "dest"
    with pytest.raises(ExportDiskError) as info:
        zip_result(run, kind, dest)
    message = str(info.value)
    peak = export.export_peak_bytes(run, kind)
    need = int(peak * (1 + DISK.margin_fraction)) + DISK.margin_bytes
    assert f"{gb(need)} needed, {gb(free)} free" in message, message
    assert f"writes about {gb(peak)}" in message and f"run {GOOD}" in message, message
    assert ("download the adapter only" in message) == (kind == "merged"), message
    one_line_without_paths(message, tmp_path)
    assert seen == [dest]  # the disk the export writes to was asked
    assert list(dest.iterdir()) == [] and snapshot(run.path) == before  # nothing written anywhere
    # with room, the same export goes through
    monkeypatch.setattr(export, "free_bytes", lambda path: need + 1)
    assert zip_result(run, kind, dest).is_file()


def test_exports_in_progress_count_against_the_free_disk(trained, runs, tmp_path, monkeypatch):
    """Two exports that each fit, but not together, are not both let through."""
    a, b = copy_run(trained, runs, GOOD), copy_run(trained, runs, DAMAGED)
    need = int(export.export_peak_bytes(a, "merged") * (1 + DISK.margin_fraction)) + DISK.margin_bytes
    monkeypatch.setattr(export, "free_bytes", lambda path: need + 1000)  # room for one, not two
    inside, release = threading.Event(), threading.Event()
    real = export.export_merged

    def slow(run, out):
        inside.set()
        assert release.wait(30)
        return real(run, out)

    monkeypatch.setattr(export, "export_merged", slow)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(zip_result, a, "merged", tmp_path / "a")
        assert inside.wait(30)
        with pytest.raises(ExportDiskError, match="not enough disk"):
            zip_result(b, "merged", tmp_path / "b")
        release.set()
        assert first.result(timeout=60).is_file()
    assert export._reserved == {}  # the room is given back when the export ends


def test_the_merged_size_estimate_covers_the_export(trained, runs, tmp_path):
    """params × 4 bytes (fp32 LoRA merge) + the adapter folder; measured: the tiny model's merged
    folder is within the estimate and not far below it (the adapter's weights are the excess)."""
    run = copy_run(trained, runs, GOOD)
    estimate = merged_model_bytes(run)
    actual = folder_bytes(export_merged(run, tmp_path / "merged"))
    assert actual <= estimate <= 1.5 * actual, (estimate, actual)
    assert export.export_peak_bytes(run, "merged") == 2 * estimate  # the model and its zip side by side
    assert export.export_peak_bytes(run, "adapter") == folder_bytes(run.path / "adapter")


# --- one export per run at a time; nothing left on failure ----------------------------------------

def test_one_export_per_run_at_a_time(trained, runs, tmp_path, monkeypatch):
    run, other = copy_run(trained, runs, GOOD), copy_run(trained, runs, LINKED)
    before = snapshot(run.path)
    inside, release = threading.Event(), threading.Event()
    real = export.export_merged

    def slow(r, out):
        if r.run_id == GOOD:
            inside.set()
            assert release.wait(30)
        return real(r, out)

    monkeypatch.setattr(export, "export_merged", slow)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(zip_result, run, "merged", tmp_path / "first")
        assert inside.wait(30)
        for kind in ("merged", "adapter"):
            with pytest.raises(ExportBusyError) as info:
                zip_result(run, kind, tmp_path / "second")
            assert str(info.value) == BUSY.format(GOOD)
        assert not (tmp_path / "second").exists() or not any((tmp_path / "second").iterdir())
        assert zip_result(other, "merged", tmp_path / "other").is_file()  # another run is not held up
        release.set()
        zipped = first.result(timeout=60)
    assert [p.name for p in (tmp_path / "first").iterdir()] == [zipped.name]  # the scratch folder is gone
    with zipfile.ZipFile(zipped) as z:
        assert "model.safetensors" in z.namelist() and "config.json" in z.namelist()
    assert zip_result(run, "merged", tmp_path / "again").is_file()  # free again once done
    assert snapshot(run.path) == before  # the merge never wrote into the run folder


def test_a_failed_export_leaves_nothing(trained, runs, tmp_path):
    run = copy_run(trained, runs, DAMAGED)
    damage(run)
    before = snapshot(run.path)
    with pytest.raises(Exception, match="deserializ|header|safetensors"):
        zip_result(run, "merged", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []  # no scratch model, no partial zip
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception, match="deserializ|header|safetensors"):
        export_merged(run, tmp_path / "out" / "merged")
    assert list((tmp_path / "out").iterdir()) == []  # no .merged.partial beside it
    assert snapshot(run.path) == before
    assert export._runs_exporting == set() and export._reserved == {}  # the run is free for the next try


# --- links in a result folder ---------------------------------------------------------------------

@pytest.mark.parametrize("what", ["file", "folder"])
def test_links_leading_outside_the_run_are_refused_by_zip_chat_and_export(what, trained, runs, tmp_path):
    from ft_engine.inference import ChatModel
    run = copy_run(trained, runs, LINKED)
    if what == "file":
        secret = link_outside(run, tmp_path / "outside")
        name = "adapter/tokenizer.json"
    else:
        (tmp_path / "outside").mkdir()
        secret = tmp_path / "outside" / "private.txt"
        secret.write_text("SECRET")
        (run.path / "adapter" / "extra").symlink_to(tmp_path / "outside", target_is_directory=True)
        name = "adapter/extra"
    expected = f"run {LINKED}'s {name} is a link to a file outside the run"
    for attempt in (lambda: zip_result(run, "adapter", tmp_path / "zips"),
                    lambda: zip_result(run, "merged", tmp_path / "zips"),
                    lambda: export_merged(run, tmp_path / "merged"),
                    lambda: ChatModel(run, device="cpu")):
        with pytest.raises(UserError) as info:
            attempt()
        assert str(info.value).startswith(expected) and "replace the link" in str(info.value), info.value
        one_line_without_paths(str(info.value), tmp_path)
    assert not (tmp_path / "zips").exists() or list((tmp_path / "zips").iterdir()) == []
    assert not (tmp_path / "merged").exists() and secret.exists()


def test_a_result_folder_that_is_a_link_is_refused(trained, runs, tmp_path):
    from ft_engine.inference import ChatModel
    run = copy_run(trained, runs, LINKED)
    shutil.move(run.path / "adapter", tmp_path / "adapter-elsewhere")
    (run.path / "adapter").symlink_to(tmp_path / "adapter-elsewhere", target_is_directory=True)
    for attempt in (lambda: zip_result(run, "adapter", tmp_path / "zips"), lambda: ChatModel(run, device="cpu"),
                    lambda: export_merged(run, tmp_path / "merged")):
        with pytest.raises(UserError, match="no trained result the studio may read: its adapter/ folder is a link"):
            attempt()


def test_a_link_that_stays_inside_the_run_is_zipped_as_its_file(trained, runs, tmp_path):
    run = copy_run(trained, runs, GOOD)
    tokenizer = run.path / "adapter" / "tokenizer.json"
    shutil.move(tokenizer, run.path / "tokenizer-kept.json")
    tokenizer.symlink_to(Path("..") / "tokenizer-kept.json")
    with zipfile.ZipFile(zip_result(run, "adapter", tmp_path / "zips")) as z:
        assert z.read("tokenizer.json") == (run.path / "tokenizer-kept.json").read_bytes()
        assert "tokenizer-kept.json" not in z.namelist()


def test_the_zip_checks_each_link_as_it_reads_it(trained, runs, tmp_path):
    """A link made after the result was checked (the race check_result_links cannot close) is
    still refused by the zip itself, and no zip is left."""
    run = copy_run(trained, runs, LINKED)
    link_outside(run, tmp_path / "outside")
    with pytest.raises(UserError, match="adapter/tokenizer.json is a link to a file outside the run"):
        export._zip_folder(run.path / "adapter", tmp_path / "x.zip", inside=run.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "runs"]


# --- the app's prepared downloads (ui/downloads.py) -----------------------------------------------

def test_prepared_downloads_keep_one_per_session_and_a_few_in_all(tmp_path):
    downloads = PreparedDownloads(tmp_path, max_prepared=3)

    def prepare(session):
        folder = downloads.start(session)
        (folder / "x.zip").write_bytes(b"zip")
        downloads.keep(session, folder)
        return folder

    a1 = prepare("a")
    a2 = prepare("a")
    assert not a1.exists() and downloads.alive() == [a2]  # a session's new download replaces its old one
    b, c = prepare("b"), prepare("c")
    d = prepare("d")  # a fourth session: the oldest (a's) goes
    assert downloads.alive() == [b, c, d] and not a2.exists()
    failed = downloads.start("b")
    assert not b.exists()  # dropped before the new export, so its room counts as free
    downloads.discard(failed)
    assert not failed.exists() and downloads.alive() == [c, d]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([c.name, d.name])
    assert all(p.name.startswith(f"{PREFIX}{os.getpid()}-") for p in tmp_path.iterdir())


def test_exports_left_by_a_studio_that_died_are_removed_at_start(tmp_path):
    dead = tmp_path / f"{PREFIX}999999999-1-abc"  # no such process
    dead.mkdir()
    (dead / "x.zip").write_bytes(b"zip")
    live = PreparedDownloads(tmp_path).start("s")  # this process: another studio still running
    other = tmp_path / "someone-elses-file"
    other.write_text("kept")
    PreparedDownloads(tmp_path)
    assert not dead.exists() and live.exists() and other.exists()


def test_error_texts_lose_their_server_paths():
    assert without_paths("[Errno 28] No space left on device: '/srv/gradio/ft-export-1/run-merged.zip'") == \
        "[Errno 28] No space left on device: 'run-merged.zip'"
    assert without_paths("no file in /data/runs/x/adapter.") == "no file in adapter."
    assert without_paths("adapter/tokenizer.json is a link") == "adapter/tokenizer.json is a link"


# --- over HTTP: the studio as a public Space runs it ------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("hosting-exports")
    runs, gradio_tmp, tmp = d / "runs", d / "gradio", d / "tmp"
    for folder in (runs, gradio_tmp, tmp):
        folder.mkdir()

    def make_runs():  # while the server boots
        copy_run(request.getfixturevalue("trained_wide"), runs, WIDE)
        trained = request.getfixturevalue("trained")
        copy_run(trained, runs, GOOD)
        damage(copy_run(trained, runs, DAMAGED))
        link_outside(copy_run(trained, runs, LINKED), d / "outside")

    with running_app(runs, d / "server.log", while_booting=make_runs,
                     extra_env={"GRADIO_TEMP_DIR": str(gradio_tmp), "TMPDIR": str(tmp)}) as (url, proc, log):
        yield SimpleNamespace(url=url, proc=proc, log=log, runs_dir=runs, gradio_tmp=gradio_tmp, tmp=tmp, root=d)


def new_client(app, tmp_path, name: str):
    """A client is one session; what it downloads goes to a folder of this test, not the app's."""
    from gradio_client import Client
    return Client(app.url, verbose=False, download_files=str(tmp_path / name))


def exports_on_server(app) -> dict[str, list[str]]:
    """What exports left where the app writes: zips anywhere in Gradio's cache, export folders,
    scratch models and partial files, and anything at all in the app's TMPDIR."""
    cache = app.gradio_tmp
    return {"zips": sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.zip")),
            "folders": sorted(p.name for p in cache.glob(f"{PREFIX}*")),
            "scratch": sorted(p.name for pattern in (".merged-*", "*.partial") for p in cache.rglob(pattern)),
            "tmp": sorted(p.name for p in app.tmp.iterdir())}


@pytest.mark.usefixtures("server_log_on_failure")
def test_repeated_downloads_keep_one_export_per_session(app, tmp_path):
    a = new_client(app, tmp_path, "a")
    tmp_before, run_before = exports_on_server(app)["tmp"], snapshot(app.runs_dir / GOOD)
    for kind in ("adapter", "adapter", "merged", "adapter", "merged"):
        path = Path(a.predict(GOOD, kind, api_name="/export_run"))
        with zipfile.ZipFile(path) as z:  # the client's copy is whole
            assert ("adapter_model.safetensors" if kind == "adapter" else "model.safetensors") in z.namelist()
        now = exports_on_server(app)
        assert len(now["zips"]) == 1 and now["zips"][0].endswith(path.name), now  # no older one, no Gradio copy
        assert len(now["folders"]) == 1 and now["scratch"] == [] and now["tmp"] == tmp_before, now
    b = new_client(app, tmp_path, "b")
    b.predict(GOOD, "adapter", api_name="/export_run")
    assert len(exports_on_server(app)["zips"]) == 2  # one per session: a's link still works
    a.predict(GOOD, "adapter", api_name="/export_run")
    assert len(exports_on_server(app)["zips"]) == 2
    assert snapshot(app.runs_dir / GOOD) == run_before  # the merges wrote nothing into the run folder


@pytest.mark.usefixtures("server_log_on_failure")
def test_a_failing_export_leaves_nothing_and_shows_no_path(app, tmp_path):
    from gradio_client.exceptions import AppError
    client = new_client(app, tmp_path, "failing")
    before, run_before = exports_on_server(app), snapshot(app.runs_dir / DAMAGED)
    with pytest.raises(AppError) as info:
        client.predict(DAMAGED, "merged", api_name="/export_run")
    message = str(info.value)
    assert message.startswith(f"the merged export of run {DAMAGED} failed (") and "nothing of it was kept" in message
    one_line_without_paths(message, app.root)
    assert exports_on_server(app) == before  # not a byte of it kept, in Gradio's cache or in TMPDIR
    assert snapshot(app.runs_dir / DAMAGED) == run_before  # nor in the run folder
    assert "Traceback" in app.log.read_text(errors="replace")  # the details are in the server log


@pytest.mark.usefixtures("server_log_on_failure")
def test_two_merged_exports_of_one_run_at_once(app, tmp_path):
    from gradio_client.exceptions import AppError
    clients = [new_client(app, tmp_path, f"c{i}") for i in range(2)]
    run_before = snapshot(app.runs_dir / WIDE)
    for round_ in range(2):
        start = threading.Barrier(2)

        def export_once(client):
            start.wait(30)
            try:
                return "zip", client.predict(WIDE, "merged", api_name="/export_run")
            except AppError as e:
                return "refused", str(e)

        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(export_once, clients))
        assert any(kind == "zip" for kind, _ in outcomes), outcomes
        for kind, value in outcomes:
            if kind == "zip":
                with zipfile.ZipFile(value) as z:
                    assert "model.safetensors" in z.namelist()
            else:
                assert value == BUSY.format(WIDE), value
                one_line_without_paths(value, app.root)
    assert snapshot(app.runs_dir / WIDE) == run_before  # no .export-merged, nothing else written there
    now = exports_on_server(app)
    assert now["scratch"] == [] and len([z for z in now["zips"] if z.endswith("-merged.zip")]) <= 2, now


@pytest.mark.usefixtures("server_log_on_failure")
def test_links_leading_outside_are_refused_over_http(app, tmp_path):
    from gradio_client.exceptions import AppError
    client = new_client(app, tmp_path, "links")
    before = exports_on_server(app)
    expected = f"run {LINKED}'s adapter/tokenizer.json is a link to a file outside the run"
    for kind in ("adapter", "merged"):
        with pytest.raises(AppError) as info:
            client.predict(LINKED, kind, api_name="/export_run")
        assert str(info.value).startswith(expected), info.value
        one_line_without_paths(str(info.value), app.root)
    reply = client.predict(run_id=LINKED, message="hi", api_name="/chat")
    assert reply.startswith(f"error: {expected}"), reply
    assert exports_on_server(app) == before
    assert (app.root / "outside" / "tokenizer.json").is_file()  # still there, and never served
    assert json.loads((app.runs_dir / LINKED / "status.json").read_text())["status"] == "completed"
