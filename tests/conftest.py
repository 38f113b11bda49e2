"""Fixtures shared by the website's tests and the real-browser test.

The website build executes every chapter (minutes). When a run selects a test that needs the site, the
build starts at once in a background process (``python -m course_lib.website --report ...``) and the tests
that need it are moved to the end of the run: the build then uses the second core while the unit, grader and
notebook tests run on the first. ``COURSE_SITE_BACKGROUND=0`` builds it in the foreground instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BUILD: dict = {}


def _needs_site(item) -> bool:
    return "website" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)          # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    site = [item for item in items if _needs_site(item)]
    if not site:
        return
    items[:] = [item for item in items if not _needs_site(item)] + site      # the site's tests last
    if os.environ.get("COURSE_SITE_BACKGROUND", "1") == "0" or config.option.collectonly:
        return
    folder = Path(tempfile.mkdtemp(prefix="course-site-"))
    log = open(folder / "build.log", "w")
    _BUILD.update(report=folder / "report.json", log_path=folder / "build.log", log=log, started=time.time(),
                  process=subprocess.Popen([sys.executable, "-m", "course_lib.website", "--report",
                                            str(folder / "report.json")], cwd=ROOT, stdout=log,
                                           stderr=subprocess.STDOUT, env={**os.environ, "COURSE_CLAIMS": "strict"}))


def pytest_sessionfinish(session, exitstatus):
    process = _BUILD.get("process")
    if process is not None and process.poll() is None:      # the run stopped early (-x, Ctrl-C)
        process.kill()
        process.wait()


def _last_line(path: Path) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:150] if lines else "starting"


def _wait_for_background_build(request) -> dict:
    """Wait for the background build, showing its progress every 20 s; its report, or its log on failure."""
    process, reporter = _BUILD["process"], request.config.pluginmanager.get_plugin("terminalreporter")
    shown = 0.0
    while process.poll() is None:
        if reporter is not None and time.time() - shown >= 20:
            elapsed = time.time() - _BUILD["started"]
            reporter.write_line(f"website build ({elapsed:.0f} s): {_last_line(_BUILD['log_path'])}")
            shown = time.time()
        time.sleep(1)
    _BUILD["log"].close()
    if process.returncode != 0 or not _BUILD["report"].exists():
        raise RuntimeError(f"the website build failed (exit {process.returncode}):\n"
                           f"{_BUILD['log_path'].read_text(errors='replace')[-6000:]}")
    return json.loads(_BUILD["report"].read_text())


@pytest.fixture(scope="session")
def website(request):
    """The course's website, built as `make html` builds it (chapters executed once per change, cached in
    _build/executed/; under the test suite speed claims are strict, as under nbval)."""
    if "process" in _BUILD:
        return _wait_for_background_build(request)
    from course_lib import website as site

    return site.build()
