"""The course as a learner sees it, in a real browser: JupyterLab running two chapters, and the website.

Playwright drives the system's Chromium (no browser is downloaded). Skipped, with the reason in pytest's
summary and a line from `make test`, when no chromium binary is found; `.ci/run` installs Debian's
chromium and sets COURSE_REQUIRE_BROWSER, so in CI a missing browser fails instead of skipping. Screenshots go to build/screenshots/ (git-ignored).
"""
from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = os.environ.get("COURSE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("COURSE_REQUIRE_BROWSER", "") not in ("", "0")      # set by .ci/run: never skip in CI
pytestmark = pytest.mark.skipif(
    not CHROMIUM and not REQUIRED, reason="no chromium binary found: the real-browser test is SKIPPED "
                         "(apt-get install chromium, or set COURSE_CHROMIUM=/path/to/chromium)")

# Chromium as root in a container, on a machine with no network: no sandbox, no GPU, no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHAPTERS = ["00_measurement", "05_local_explanation"]
RUN_ALL_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and proc.name != str(os.getpid()):
            found.append(f"{proc.name}: {cmdline[:160]}")
    return found


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM:
        pytest.fail("COURSE_REQUIRE_BROWSER is set (.ci/run) but no chromium binary was found")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a temporary copy of two learner notebooks; every server and kernel is stopped after."""
    home = tmp_path_factory.mktemp("lab")
    notebooks = home / "notebooks"
    notebooks.mkdir()
    for name in CHAPTERS:
        shutil.copy(ROOT / "chapters" / f"{name}.ipynb", notebooks)
    settings = home / "settings" / "@jupyterlab"
    # every cell in the DOM (no virtual scrolling), and no news or update checks (there is no network)
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    runtime = home / "runtime"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(runtime),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               IPYTHONDIR=str(home / "ipython"), COURSE_CLAIMS="warn")   # what a learner runs: claims only warn
    port, token = _free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={notebooks}"] + (["--allow-root"] if os.geteuid() == 0 else [])
    log = open(home / "jupyterlab.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start:\n{(home / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield {"url": url, "token": token, "folder": notebooks}
    finally:
        request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        try:
            urllib.request.urlopen(request, timeout=10)
            server.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
        deadline = time.monotonic() + 30                # kernels end a moment after their server
        while _processes_mentioning(str(runtime)) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftover = _processes_mentioning(str(runtime))
        for line in leftover:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        assert not leftover, f"processes left running after the JupyterLab server stopped: {leftover}"


def _wait_for_idle_kernel(lab: dict, timeout: float = 120) -> None:
    """Wait until the server has a kernel that started, is idle, and has the page connected to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kernels = json.load(urllib.request.urlopen(f"{lab['url']}/api/kernels?token={lab['token']}", timeout=5))
        if any(k["execution_state"] == "idle" and k.get("connections", 0) > 0 for k in kernels):
            time.sleep(1)
            return
        time.sleep(0.5)
    pytest.fail(f"no kernel became idle in {timeout} s: {kernels}")


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).first.click()


def _prompts(panel) -> list[str]:
    return panel.locator(".jp-CodeCell .jp-InputPrompt").evaluate_all("els => els.map(e => e.textContent.trim())")


def _widget_output(widget) -> str:
    """What an interact widget's output area shows: its text and the data of its images."""
    return widget.evaluate("w => { const o = w.querySelector('.widget-output') || w; "
                           "return o.innerText + Array.from(o.querySelectorAll('img')).map(i => i.src).join(''); }")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_chapter_runs_in_jupyterlab_with_its_slider_and_plots(lab, browser, chapter):
    started = time.monotonic()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # ?reset: a workspace holding only this notebook (no tab of an earlier test left open behind it)
        page.goto(f"{lab['url']}/lab/tree/{chapter}.ipynb?reset&token={lab['token']}")
        page.wait_for_selector(".jp-NotebookPanel:visible .jp-CodeCell", timeout=120_000)
        panel = page.locator(".jp-NotebookPanel:visible").first          # every check below looks inside it
        _wait_for_idle_kernel(lab)
        _menu(page, "Run", "Run All Cells")
        # Run All ends when every cell has run, or earlier at a cell that raised (JupyterLab skips the rest)
        deadline, quiet = time.monotonic() + RUN_ALL_TIMEOUT_S, 0
        while quiet < 3:
            time.sleep(1)
            busy = "[*]:" in _prompts(panel) or panel.locator(
                ".jp-Notebook-ExecutionIndicator[data-status='idle']").count() == 0
            quiet = 0 if busy else quiet + 1
            assert time.monotonic() < deadline, f"Run All did not finish in {RUN_ALL_TIMEOUT_S} s"
        page.screenshot(path=str(SHOTS / f"{chapter}-jupyterlab-end.png"))

        # no cell errored: the notebook JupyterLab saves holds every output it rendered
        _menu(page, "File", "Save Notebook")
        saved_path = lab["folder"] / f"{chapter}.ipynb"
        deadline = time.monotonic() + 30
        while True:
            try:
                saved = json.loads(saved_path.read_text())
            except ValueError:                  # read while JupyterLab was writing it (seen on a busy machine)
                assert time.monotonic() < deadline, f"{chapter}: the saved notebook is not valid JSON after 30 s"
                time.sleep(0.5)
                continue
            code = [c for c in saved["cells"] if c["cell_type"] == "code"]
            if all(c.get("execution_count") for c in code) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        errors = [f"code cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(code)
                  for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert not errors, f"{chapter}: cells raised in JupyterLab: {errors}"
        not_run = [i for i, c in enumerate(code) if not c.get("execution_count")]
        assert not not_run, f"{chapter}: code cells {not_run} did not run"
        assert panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                            has_text="Traceback").count() == 0

        # a plot image is present and decoded
        images = panel.locator(".jp-RenderedImage img")
        assert images.count() >= 1, f"{chapter}: no plot image rendered"
        assert images.first.evaluate("img => img.complete && img.naturalWidth > 0"), "the first plot did not load"

        # the ipywidgets slider renders, and moving it changes the widget's output
        widget = panel.locator(".widget-interact").first
        widget.scroll_into_view_if_needed()
        slider = widget.locator(".widget-slider").first
        slider.wait_for(state="visible", timeout=60_000)
        widget.screenshot(path=str(SHOTS / f"{chapter}-widget-before.png"))
        readout = slider.locator(".widget-readout")
        before_value, before = readout.inner_text(), _widget_output(widget.element_handle())
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        deadline = time.monotonic() + 120
        while _widget_output(widget.element_handle()) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        after_value, after = readout.inner_text(), _widget_output(widget.element_handle())
        widget.screenshot(path=str(SHOTS / f"{chapter}-widget-after.png"))
        assert after_value != before_value, f"the slider did not move (readout stayed {before_value})"
        assert after != before, f"moving the slider from {before_value} to {after_value} did not change the output"
        page.screenshot(path=str(SHOTS / f"{chapter}-jupyterlab.png"))
        print(f"{chapter}: Run All in JupyterLab + checks took {time.monotonic() - started:.0f} s; "
              f"slider {before_value} -> {after_value}")
    finally:
        page.close()


@pytest.fixture(scope="module")
def served_site(website):
    """The built website over HTTP on localhost, as a browser would load it from any static host."""
    html = Path(website["out"])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(html), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("page_path", ["index.html", "chapters/05_local_explanation.html",
                                       "chapters/08_transformer.html"])
def test_the_website_renders_offline_with_no_broken_local_links(served_site, browser, page_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    remote, failed = [], []
    page.on("request", lambda r: remote.append(r.url) if urlparse(r.url).hostname not in ("127.0.0.1", None)
            and not r.url.startswith("data:") else None)
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failed.append(f"failed {r.url}"))
    try:
        url = f"{served_site}/{page_path}"
        page.goto(url, wait_until="networkidle")
        assert "Compress & Explain" in page.title()
        assert page.locator("h1").first.inner_text().strip()
        if page_path == "index.html":
            for command in ("make lab", "make test"):
                assert page.locator("pre", has_text=command).count() >= 1, f"{command} is not on the landing page"
            assert page.locator("article a[href*='chapters/']").count() >= 9, "the chapter table does not link 9 pages"
            figure = page.locator("img").first                              # the theme's logo or none
        else:
            staged = json.loads((ROOT / "_build" / "source" / page_path.replace(".html", ".ipynb")).read_text())
            n_figures = sum("image/png" in o.get("data", {}) for c in staged["cells"] for o in c.get("outputs", []))
            figures = page.locator(".cell_output img")
            assert n_figures >= 1 and figures.count() == n_figures, \
                f"{page_path} shows {figures.count()} of the notebook's {n_figures} figures"
            for i in range(n_figures):
                figures.nth(i).scroll_into_view_if_needed()
                assert figures.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), f"figure {i} did not load"
            figure = figures.first
            assert page.locator("text=Interactive widget, shown as a still").count() >= 1
            page.wait_for_function("() => document.querySelectorAll('.MathJax, .MathJax_Display').length > 0",
                                   timeout=30_000)                      # formulas typeset by the local MathJax
            escaped = page.eval_on_selector_all("mjx-container", "els => els.map(e => e.textContent)"
                                                ".filter(t => t.includes('\\\\'))")
            assert not escaped, f"{page_path}: a formula shows a literal backslash: {escaped[:3]}"
            alts = figures.evaluate_all("imgs => imgs.map(i => i.alt)")
            assert all(alt and not re.fullmatch(r"[0-9a-f]{64}\.\w+", alt) for alt in alts), \
                f"{page_path}: a figure's alt text is missing or a file hash: {alts}"
            wide = page.eval_on_selector_all("article pre", "els => els.filter(e => e.scrollWidth > "
                                             "e.clientWidth + 2).map(e => e.textContent.slice(0, 60))")
            assert not wide, f"{page_path}: code blocks wider than the content column at 1400 px: {wide[:3]}"
        if figure.count():
            figure.scroll_into_view_if_needed()
            assert figure.evaluate("img => img.complete && img.naturalWidth > 0"), "a figure did not load"
        page.screenshot(path=str(SHOTS / f"site-{page_path.replace('/', '-')}.png"))
        links = page.eval_on_selector_all("a[href], img[src], link[href], script[src]",
                                          "els => els.map(e => e.href || e.src)")
        local = sorted({l.split("#")[0] for l in links if urlparse(l).hostname == "127.0.0.1"})
        broken = [l for l in local if page.request.get(l).status != 200]
        assert not broken, f"broken local links on {page_path}: {broken}"
        assert not failed, f"{page_path}: requests that failed: {failed}"
        assert not remote, f"{page_path} loads from the network (it must work offline): {remote[:5]}"
    finally:
        page.close()
