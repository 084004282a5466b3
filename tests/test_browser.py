"""End to end in a real browser: the studio served by `python app.py`, driven by headless
Chromium through Playwright. One walk through the five tabs, as a newcomer would: upload data,
train the tiny model for a few steps, watch the curve, chat with the result, find it in Runs.

Needs Debian's chromium (/usr/bin/chromium, `make chromium` installs it) and the playwright
package (requirements-dev.txt); fails, saying what to install, when either is missing. Screenshots of every tab are
written to docs/screenshots/ on each run.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
DATA_FILE = ROOT / "assets" / "tiny_facts.jsonl"
CHROMIUM = os.environ.get("FT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}
START_TIMEOUT_S = 90
# generous: the CI machine has two cores and may be busy
UI_MS = 30_000        # a click's answer
TRAIN_MS = 240_000    # a 6-step run of the tiny model, its monitor catching up
CHAT_MS = 180_000     # loading the run and streaming an answer

if not Path(CHROMIUM).exists():  # a missing browser is a setup error, never a silent skip
    raise RuntimeError(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium, "
                       f"or `make chromium`) for the browser test")

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

_APP_LOG: dict[str, Path] = {}  # printed when the test fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python app.py` in a subprocess, on a free port, with its own runs directory; its runs
    train in processes of their own, as for a user (not in the app's, as most tests have it)."""
    yield from _serve(tmp_path_factory.mktemp("browser"), {"FT_TRAIN_IN_PROCESS": "0"})


@pytest.fixture
def capped_app_url(tmp_path_factory):
    """The studio told it may use 1 MiB (FT_MEMORY_LIMIT_MIB): every run is forecast not to fit."""
    yield from _serve(tmp_path_factory.mktemp("capped"), {"FT_MEMORY_LIMIT_MIB": "1"})


def _serve(tmp: Path, extra_env: dict | None = None):
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "FT_RUNS_DIR": str(tmp / "runs"), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    log_path = _APP_LOG["path"] = tmp / "app.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def logs() -> str:
        log.flush()
        return log_path.read_text(errors="replace")

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"app.py exited with {proc.returncode} before serving:\n{logs()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"app.py did not answer HTTP 200 on {url} within {START_TIMEOUT_S} s:\n{logs()}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(app_url, browser):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(UI_MS)
    try:
        yield pg
    finally:
        context.close()


def app_log() -> str:
    path = _APP_LOG.get("path")
    return path.read_text(errors="replace") if path and path.exists() else "(no log)"


def open_tab(page: Page, label: str):
    tab = page.get_by_role("tab", name=label)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    # the studio's own tabs: not the sub-tabs inside one (the Runs tab's "Compare methods")
    panel = page.locator("[role=tabpanel]:not([role=tabpanel] *)").filter(visible=True)
    expect(panel).to_have_count(1)
    return panel


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # let plots finish their transitions
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=True)
    size = path.stat().st_size
    assert 10_000 < size < 500_000, f"{path}: {size} bytes (empty, or too big to commit)"


def set_number(panel, label: str, value: int) -> None:
    box = panel.get_by_role("spinbutton", name=label, exact=True)
    # a box inside an accordion that is still opening can be re-rendered with its old value
    # right after the fill; type again until the value holds
    for _ in range(3):
        box.fill(str(value))
        box.press("Tab")
        try:
            expect(box).to_have_value(str(value), timeout=3_000)
            return
        except AssertionError:
            continue
    expect(box).to_have_value(str(value))


def test_studio_walkthrough(page: Page, app_url, tiny_model):
    try:
        _walkthrough(page, app_url, tiny_model)
    except BaseException:
        print("\n----- app.py log -----\n" + app_log())
        raise


def _walkthrough(page: Page, app_url: str, tiny_model: str) -> None:
    page.goto(app_url)
    expect(page.get_by_role("heading", name=re.compile("Fine-Tune Studio"))).to_be_visible(timeout=60_000)

    # --- 2 · Train, first the model: the Data preview counts tokens with its tokenizer -------
    train = open_tab(page, "2 · Train")
    model = train.get_by_role("combobox", name="Model")
    model.click()
    model.fill(tiny_model)
    model.press("Enter")
    model.press("Tab")  # leave the field: a custom value is committed on Enter / blur
    expect(model).to_have_value(tiny_model)

    # --- 1 · Data: upload a file, see the preview with the trained part highlighted ---------
    data = open_tab(page, "1 · Data")
    data.locator("input[type=file]").set_input_files(str(DATA_FILE))
    expect(data.get_by_text(re.compile(r"Ready: 12 rows, format"))).to_be_visible(timeout=60_000)
    expect(data.locator(".ft-trained").first).to_be_visible()
    expect(data.locator(".ft-example-title").first).to_have_text("Example 1")
    expect(data.locator(".ft-example pre").first).to_contain_text("capital of Zubrowka is Lutz")
    expect(data.locator(".js-plotly-plot").first).to_be_visible()  # token-length histogram
    used = data.get_by_role("textbox", name="File used for training")
    # kept by content (ui/context.keep_upload): the same bytes are stored once, whatever their name
    expect(used).to_have_value(re.compile(r"\.uploads/[0-9a-f]{64}\.jsonl$"))
    shoot(page, "1-data.png")

    # --- 2 · Train: LoRA + Quick demo, shortened to 6 steps of batch 2 -----------------------
    train = open_tab(page, "2 · Train")
    expect(model).to_have_value(tiny_model)  # still the tiny model after switching tabs
    expect(train.get_by_role("radio", name="LoRA (recommended)")).to_be_checked()
    expect(train.get_by_role("radio", name="Quick demo")).to_be_checked()
    train.get_by_role("button", name=re.compile("Advanced settings")).click()
    set_number(train, "Max steps", 6)
    set_number(train, "Batch size", 2)
    # the memory forecast: three bars against the free memory, and the verdict for LoRA
    expect(train.get_by_text(re.compile(r"LoRA needs about .+ is free → fits"))).to_be_visible(timeout=UI_MS)
    expect(train.locator(".js-plotly-plot").first).to_be_visible()
    train.get_by_role("button", name="▶ Start training").click()
    current = train.get_by_role("textbox", name="Current run")
    expect(current).not_to_have_value("", timeout=UI_MS)
    run_id = current.input_value()
    assert run_id, "no run id after Start"
    expect(train.get_by_text(re.compile(r"Training|starts now|in the queue|: (running|completed)"))).to_be_visible()
    expect(train.locator("code", has_text=run_id).first).to_be_visible()
    shoot(page, "2-train.png")

    # --- 3 · Monitor: the run completes and its loss curve has points -------------------------
    monitor = open_tab(page, "3 · Monitor")
    status = monitor.locator(".ft-status")
    expect(status).to_contain_text("completed", timeout=TRAIN_MS)
    expect(status).to_contain_text(run_id)
    expect(status).to_contain_text(f"lora on {tiny_model}")
    expect(monitor.locator(".ft-progress-text")).to_contain_text("step 6 / 6")
    curves = monitor.locator(".js-plotly-plot").first
    expect(curves.locator(".scatterlayer .trace").first).to_be_attached(timeout=TRAIN_MS)
    # the final tick redraws the curves; wait until the loss trace holds every logged step
    page.wait_for_function(
        "el => el.data && el.data.length && el.data[0].name === 'train loss' && el.data[0].x.length >= 6",
        arg=curves.element_handle(), timeout=UI_MS)
    points = curves.evaluate("el => el.data[0].y.filter(v => v !== null && isFinite(v)).length")
    assert points >= 6, f"the loss curve has {points} points"
    path_d = curves.locator(".scatterlayer .trace path.js-line").first.get_attribute("d")
    assert path_d and path_d.count("L") >= 2, f"the loss line is not drawn: {path_d!r}"
    expect(monitor.get_by_text(re.compile("completed", re.I)).first).to_be_visible()
    shoot(page, "3-monitor.png")

    # --- 4 · Chat: pick the run, ask, get an answer from the tuned model -----------------------
    chat = open_tab(page, "4 · Chat")
    chat.get_by_role("button", name="↻ Refresh list").click()
    run_box = chat.get_by_role("combobox", name="Run")
    expect(run_box).to_have_value(run_id)
    # short answers keep the screenshot readable (the tiny random model only babbles)
    chat.get_by_role("button", name=re.compile("Generation settings")).click()
    set_number(chat, "number input for Max new tokens", 24)
    question = chat.get_by_placeholder("e.g. What is the capital of Zubrowka?")
    question.fill("What is the capital of Zubrowka?")
    question.press("Enter")
    tuned = chat.locator(".block", has=page.get_by_text("Tuned model", exact=True)).first
    expect(tuned.get_by_text("What is the capital of Zubrowka?")).to_be_visible(timeout=CHAT_MS)
    answer = tuned.locator(".message.bot, [data-testid='bot']").last
    expect(answer).to_be_visible(timeout=CHAT_MS)
    expect(answer).to_have_text(re.compile(r"\S"), timeout=CHAT_MS)
    # both answers done (the base model streams second): the question box is empty again, and
    # nothing is pending any more
    base = chat.locator(".block", has=page.get_by_text("Base model (same weights, adapter off)", exact=True)).first
    expect(base.locator(".message.bot, [data-testid='bot']").last).to_have_text(re.compile(r"\S"),
                                                                                timeout=CHAT_MS)
    expect(page.locator(".pending, .generating").filter(visible=True)).to_have_count(0, timeout=CHAT_MS)
    assert "❌" not in answer.inner_text(), answer.inner_text()
    shoot(page, "4-chat.png")

    # --- 5 · Runs: the table lists the run, completed -----------------------------------------
    runs = open_tab(page, "5 · Runs")
    table = runs.locator("table").first
    expect(table).to_contain_text(run_id, timeout=UI_MS)
    row = table.locator("tr", has_text=run_id)
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text("6/6")
    # overlay its loss curve, so the tab (and its screenshot) shows one
    overlay_pick = runs.get_by_role("combobox", name="Overlay the loss curves of…")
    overlay_pick.click()
    page.get_by_role("option", name=run_id).click()
    overlay_pick.press("Escape")
    overlay = runs.locator(".js-plotly-plot").first
    page.wait_for_function("([el, id]) => el.data && el.data.length === 1 && el.data[0].name === id"
                           " && el.data[0].x.length >= 6", arg=[overlay.element_handle(), run_id], timeout=UI_MS)
    expect(overlay.locator(".scatterlayer .trace path.js-line")).to_have_count(1)
    shoot(page, "5-runs.png")
    # comparing the methods has a sub-tab of its own, with no empty table or chart before a comparison
    runs.get_by_role("tab", name="⚖ Compare methods").click()
    expect(runs.get_by_role("button", name="⚖ Compare methods")).to_be_visible()
    expect(runs.get_by_text("No comparison yet")).to_be_visible()
    expect(runs.get_by_text("Methods side by side")).to_be_hidden()
    expect(table).to_be_hidden()  # the runs table is in the other sub-tab


def test_start_refuses_a_run_that_will_not_fit(capped_app_url, browser, tiny_model):
    """With 1 MiB allowed, the forecast says no: Start refuses, a fix is one click away and
    changes the settings, and 'Start anyway' starts the run all the same."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(UI_MS)
    try:
        page.goto(capped_app_url)
        train = open_tab(page, "2 · Train")
        model = train.get_by_role("combobox", name="Model")
        model.click()
        model.fill(tiny_model)
        model.press("Enter")
        model.press("Tab")
        data = open_tab(page, "1 · Data")
        data.locator("input[type=file]").set_input_files(str(DATA_FILE))
        expect(data.get_by_text(re.compile(r"Ready: 12 rows"))).to_be_visible(timeout=60_000)
        train = open_tab(page, "2 · Train")
        expect(train.get_by_text(re.compile(r"LoRA needs about .+ is free → will not fit"))).to_be_visible()
        train.get_by_role("button", name="▶ Start training").click()
        expect(train.get_by_text(re.compile("not started: the memory forecast says"))).to_be_visible()
        expect(train.get_by_role("textbox", name="Current run")).to_have_value("")
        fix = train.get_by_role("button", name=re.compile("activation checkpointing"))
        fix.click()
        train.get_by_role("button", name=re.compile("Advanced settings")).click()
        expect(train.get_by_role("checkbox", name="Activation checkpointing")).to_be_checked()
        shoot(page, "2-train-will-not-fit.png")
        train.get_by_role("checkbox", name="Start anyway").check()
        train.get_by_role("button", name="▶ Start training").click()
        expect(train.get_by_role("textbox", name="Current run")).not_to_have_value("", timeout=UI_MS)
    except BaseException:
        print("\n----- app.py log -----\n" + app_log())
        raise
    finally:
        context.close()
