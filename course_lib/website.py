"""The course as a static website: ``make html`` (``python -m course_lib.website``) builds ``_build/html/``.

The pages are the **learner** notebooks of ``chapters/``, run as a learner gets them: every exercise cell
shows its stub, and the outputs after it come from the reference that ``check`` falls back to. No
solution code is published. Four steps:

1. **execute** each chapter with nbclient (cwd: a staging copy, ``COURSE_SITE=1`` set). Results are cached
   in ``_build/executed/`` under a key made of the notebook, ``course_lib/``, ``data/``, the pinned
   requirements and the claims mode, so a second build with nothing changed executes nothing;
2. **still** each live widget (a static page has no kernel): an ``interact`` becomes a note saying so,
   its controls drawn at their starting values (disabled HTML controls) and the output it showed there;
   a tqdm bar becomes its final state. The widget state is then dropped, so no page loads widget
   JavaScript from a CDN;
3. **pages**: a landing page (the README's introduction, its two commands and its chapter table), a
   glossary (every chapter's English / Chinese table) and the reading lists;
4. **render** with Sphinx, myst-nb (execution off) and sphinx-book-theme; MathJax 3 is served from the
   site itself (``_static/mathjax``), so the pages need no network.

A cell that raises stops the build with the chapter and cell named. Under the test suite
(``COURSE_CLAIMS=strict``) a speed claim that does not reproduce is such an error, as under nbval.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

import nbformat

__all__ = ["build", "still_widgets", "figure_alt_texts", "landing_page", "glossary_page", "reading_page",
           "BuildError", "main"]

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SITE_NOTE = ("> **This is the website of the course: read-only.** It shows the learner notebook "
             "`chapters/{name}` as it runs before you solve anything: each exercise cell holds the stub "
             "(`raise NotImplementedError`), and the outputs after it come from the course's reference "
             "implementation, which `check` uses until your function passes. Widgets are shown as stills. "
             "To run and solve the chapter: `make lab`.")


class BuildError(RuntimeError):
    """A chapter did not run to the end, or Sphinx failed."""


# --------------------------------------------------------------------------------------------- 1. execute
def _digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in sorted(paths):
        path = path.resolve()
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        sha.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()


def _inputs_digest() -> str:
    """What every chapter's output depends on, besides the chapter itself."""
    library = [p for p in (ROOT / "course_lib").rglob("*.py") if p.name != "website.py"]   # not an input
    data = [p for p in (ROOT / "data").rglob("*") if p.is_file()]
    return _digest(library + data + [ROOT / "requirements.txt"])


def _claims_mode() -> str:
    from .timing import claims_are_strict

    return "strict" if claims_are_strict() else "warn"


def _poll_in_slices(channel, step: float = 0.25) -> None:
    """Make ``channel.get_msg(timeout)`` wait in short polls until the same deadline.

    Measured here (pyzmq 27.3, jupyter_client 8.10): in 3 of 5 runs of chapter 03, nbclient saw the reply to
    the widget cell only when the cell's whole timeout had passed, although the kernel sent it at once
    (its timestamp says so): the asyncio poller missed the socket's wake-up. A fresh poll finds a waiting
    message immediately, so polling in slices removes the wait (5 of 5 runs at ~7 s instead of timeout + 7 s).
    """
    original = channel.get_msg

    async def get_msg(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = step if deadline is None else min(step, max(0.0, deadline - time.monotonic()))
            try:
                return await original(timeout=wait)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg


def _execute(source: Path, target: Path, key: str, timeout: int) -> float:
    """Run ``source`` top to bottom in a fresh kernel (cwd: ``target``'s folder) and write it to ``target``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    started = time.perf_counter()
    nb = nbformat.read(source, as_version=4)
    try:
        # the kernel's own log (a warning about local TCP at start, an interrupt note at shutdown) is noise here:
        # what a cell raises still reaches nbclient, and stops the build
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                                resources={"metadata": {"path": str(target.parent)}})
        client.on_notebook_start = lambda **_: _poll_in_slices(client.kc.shell_channel)
        # COURSE_SITE: progress.show prints a note instead of grading the staging copy
        client.execute(env={**os.environ, "COURSE_SITE": "1"})
    except CellExecutionError as exc:
        raise BuildError(f"{source.name} did not run to the end:\n{exc}") from None
    except Exception as exc:                  # the kernel did not start, a cell ran past the timeout, ...
        raise BuildError(f"{source.name} could not be run: {type(exc).__name__}: {exc}") from None
    nb.metadata["course_site"] = {"key": key, "seconds": round(time.perf_counter() - started, 1)}
    nbformat.write(nb, target)
    return time.perf_counter() - started


def execute_chapters(chapters: list[Path], *, cache: Path, timeout: int = 1800, fresh: bool = False) -> dict:
    """Execute the chapters that changed since their cached run; return ``{name: seconds or "cached"}``."""
    from tqdm.auto import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    common, mode = _inputs_digest(), _claims_mode()
    report = {}
    for source in tqdm(chapters, desc="executing chapters", unit="chapter"):
        target = cache / source.name
        key = hashlib.sha256(f"{common} {_digest([source])} {mode}".encode()).hexdigest()
        strict_key = hashlib.sha256(f"{common} {_digest([source])} strict".encode()).hexdigest()
        if not fresh and target.exists():
            cached = nbformat.read(target, as_version=4).metadata.get("course_site", {}).get("key")
            if cached in (key, strict_key):   # a strict run is good for a warn build too, never the reverse
                report[source.name] = "cached"
                continue
        report[source.name] = round(_execute(source, target, key, timeout), 1)
    return report


# ----------------------------------------------------------------------------------------------- 2. still
def _fmt(value, fmt: str | None) -> str:
    if isinstance(value, float):
        return format(value, fmt or ".2f")
    return str(value)


def _control(model: dict) -> dict:
    """One widget control at its current state: its label, the value shown, where a slider's knob sits
    (0 to 1 along the track; None for a drop-down) and what it allows, in words."""
    kind, s = model["model_name"], model["state"]
    label = s.get("description", "")
    if kind in ("IntSliderModel", "FloatSliderModel"):
        fmt = s.get("readout_format")
        span = (s["max"] - s["min"]) or 1
        return {"label": label, "value": _fmt(s["value"], fmt), "position": (s["value"] - s["min"]) / span,
                "allowed": f"{_fmt(s['min'], fmt)} to {_fmt(s['max'], fmt)}, step {_fmt(s.get('step', 1), fmt)}"}
    if kind == "FloatLogSliderModel":
        base = s.get("base", 10)
        span = (s["max"] - s["min"]) or 1
        return {"label": label, "value": f"{s['value']:.3g}", "position": (math.log(s["value"], base) - s["min"]) / span,
                "allowed": f"{base ** s['min']:.3g} to {base ** s['max']:.3g} (log scale)"}
    if kind in ("SelectionSliderModel", "DropdownModel", "SelectModel", "ToggleButtonsModel", "RadioButtonsModel"):
        labels = list(s.get("_options_labels", []))
        index = s.get("index") or 0
        position = index / max(len(labels) - 1, 1) if kind == "SelectionSliderModel" else None
        return {"label": label, "value": labels[index] if labels else "", "position": position,
                "allowed": "one of " + ", ".join(labels)}
    return {"label": label, "value": str(s.get("value", "")), "position": None, "allowed": ""}


def _controls_image(controls: list[dict]) -> str:
    """A picture of the controls as JupyterLab draws them (label, track and knob, or a drop-down box, and
    the value), base64 PNG."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    fig = Figure(figsize=(5.0, 0.4 * len(controls) + 0.1), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 5.0)
    ax.set_ylim(len(controls) + 0.1, -0.05)
    ax.axis("off")
    left, width = 1.35, 2.3                                       # where tracks and boxes start, and their length
    for row, c in enumerate(controls):
        y = row + 0.5
        ax.text(left - 0.15, y, c["label"], ha="right", va="center", fontsize=10)
        if c["position"] is None:                                 # a drop-down
            ax.add_patch(FancyBboxPatch((left, y - 0.3), width, 0.6, boxstyle="round,pad=0,rounding_size=0.05",
                                        fill=False, ec="#9e9e9e"))
            ax.text(left + 0.1, y, c["value"], va="center", fontsize=10)
            ax.text(left + width - 0.1, y, "v", ha="right", va="center", fontsize=9, color="#616161")
        else:                                                     # a slider: grey track, blue knob, readout
            knob = left + width * min(max(c["position"], 0.0), 1.0)
            ax.plot([left, left + width], [y, y], color="#bdbdbd", lw=4, solid_capstyle="round")
            ax.plot([knob], [y], "o", ms=12, color="#1976d2")
            ax.text(left + width + 0.2, y, c["value"], va="center", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _html_output(markup: str, plain: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={"text/html": markup, "text/plain": plain})


def _children(model: dict, state: dict) -> list[dict]:
    ids = [c.removeprefix("IPY_MODEL_") for c in model["state"].get("children", [])]
    return [state[i] for i in ids if i in state]


def _still(model: dict, state: dict) -> list[nbformat.NotebookNode]:
    """The static outputs that stand for one displayed widget."""
    children = _children(model, state)
    names = [c["model_name"] for c in children]
    if "widget-interact" in model["state"].get("_dom_classes", []):
        controls = [_control(c) for c in children if c["model_name"] != "OutputModel"]
        words = "".join(f"<li><code>{html.escape(c['label'])}</code>: {html.escape(c['value'])}"
                        f"{' (' + html.escape(c['allowed']) + ')' if c['allowed'] else ''}</li>" for c in controls)
        note = ("<p><strong>Interactive widget, shown as a still.</strong> A static page cannot run Python, so "
                "below is a picture of its controls at their starting values, then what the widget showed for "
                "them. Run the chapter in JupyterLab (<code>make lab</code>) to move them.</p>")
        outs = [_html_output(f'<div class="course-widget-still">{note}<ul>{words}</ul></div>',
                             "[interactive widget: a still at its starting values]"),
                nbformat.v4.new_output("display_data", data={
                    "image/png": _controls_image(controls),
                    "text/plain": "; ".join(f"{c['label']} = {c['value']}" for c in controls)})]
        for out in (c for c in children if c["model_name"] == "OutputModel"):
            outs += [nbformat.from_dict(o) for o in out["state"].get("outputs", [])]
        return outs
    if len(children) == 3 and names[1] in ("FloatProgressModel", "IntProgressModel"):   # a tqdm bar
        left, bar, right = (c["state"] for c in children)
        markup = (f'<div class="course-progress">{left.get("value", "")} '
                  f'<progress value="{bar["value"]}" max="{bar["max"]}"></progress> {right.get("value", "")}</div>')
        text = html.unescape(re.sub(r"<[^>]+>", "", f"{left.get('value', '')} {right.get('value', '')}"))
        return [_html_output(markup, text.replace("\u2007", " "))]
    return [_html_output('<div class="course-widget-still"><p><strong>Widget.</strong> A static page cannot run '
                         'Python: run the chapter in JupyterLab (<code>make lab</code>) to see it.</p></div>',
                         "[widget]")]


def still_widgets(nb: nbformat.NotebookNode) -> int:
    """Replace every widget output of ``nb`` by its still (in place) and drop the widget state; return
    how many widget outputs were replaced."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW) if out.get("output_type") in ("display_data", "execute_result") else None
            if view is None:
                outputs.append(out)
                continue
            model = state.get(view.get("model_id"))
            outputs += _still(model, state) if model else [_html_output(
                "<p><em>A widget stood here; its state was not saved.</em></p>", "[widget]")]
            replaced += 1
        cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return replaced


# ----------------------------------------------------------------------------------------------- 3. pages
def _section(markdown: str, heading: str) -> str:
    """The body under ``## heading`` up to the next heading of level 1 or 2."""
    match = re.search(rf"^## {re.escape(heading)}\s*\n(.*?)(?=^#{{1,2}} |\Z)", markdown, re.S | re.M)
    if match is None:
        raise BuildError(f"no '## {heading}' section found")
    return match.group(1).strip()


def _title(nb: nbformat.NotebookNode) -> str:
    for cell in nb.cells:
        match = re.search(r"^# (.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if match:
            return match.group(1).strip()
    raise BuildError("a chapter has no '# title'")


def landing_page(readme: str, chapters: list[str]) -> str:
    """index.md: the README's introduction, its Start commands, and its chapter table linked to the pages."""
    title = re.search(r"^# (.+)$", readme, re.M).group(1)
    intro = readme.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    commands = re.search(r"```bash\n.*?```", _section(readme, "Start"), re.S).group(0)
    table = []
    for line in _section(readme, "Chapters").splitlines():
        number = re.match(r"\| (\d\d) ([^:|]+)", line)
        page = next((c for c in chapters if number and c.startswith(number.group(1) + "_")), None)
        if page:
            line = line.replace(number.group(0), f"| [{number.group(1)} {number.group(2)}](chapters/{page}.ipynb)", 1)
        table.append(line)
    toc = "\n".join(f"chapters/{c}" for c in chapters)
    return f"""# {title}

{intro}

## Read it here, run it at home

These pages are the learner notebooks as they run before you solve anything: each exercise cell holds its stub,
and the outputs after it come from the course's reference implementation, which `check` uses until your own
function passes. No solution code is published here. Widgets need a running kernel, so each one stands here as a
still. To run the course (offline, on a laptop CPU):

{commands}

## Chapters

{chr(10).join(table)}

Also: the [glossary](glossary.md) (English and Chinese terms of every chapter) and the [reading lists](reading.md).

```{{toctree}}
:hidden:
:caption: Chapters

{toc}
```

```{{toctree}}
:hidden:
:caption: Reference

glossary
reading
```
"""


def glossary_page(notebooks: dict[str, nbformat.NotebookNode]) -> str:
    """glossary.md: every chapter's glossary table under the chapter's title."""
    parts = ["# Glossary\n", "Every chapter's key terms in English and in Chinese (the term Chinese-language "
             "textbooks and papers on the topic use), with what each means in the course.\n"]
    for name, nb in notebooks.items():
        cell = next((c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Glossary")), None)
        if cell is None:
            raise BuildError(f"{name} has no '## Glossary' cell")
        table = "\n".join(line for line in cell.splitlines() if line.startswith("|"))
        parts.append(f"## [{_title(nb)}](chapters/{name}.ipynb)\n\n{table}\n")
    return "\n".join(parts)


def reading_page(notebooks: dict[str, nbformat.NotebookNode]) -> str:
    """reading.md: every chapter's reading list under the chapter's title."""
    parts = ["# Reading lists\n", "Each chapter's short reading list: the papers its methods come from and the "
             "documentation of the libraries it checks against.\n"]
    for name, nb in notebooks.items():
        text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        parts.append(f"## [{_title(nb)}](chapters/{name}.ipynb)\n\n{_section(text, 'Reading list')}\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- 4. render
def _site_notebook(executed: Path, name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(executed, as_version=4)
    if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("> **Generated from"):
        nb.cells[0].source = SITE_NOTE.format(name=f"{name}.ipynb")
    still_widgets(nb)
    figure_alt_texts(nb)
    return nb


_TITLE_CALL = re.compile(r"""(?:set_title|suptitle|title)\(\s*f?["']([^"'{}]{3,})""")


def figure_alt_texts(nb: nbformat.NotebookNode) -> None:
    """Give every figure an alt text (myst-nb's default is the image file's hash): the title the cell gives
    its plot (``set_title``/``suptitle``/``title=``), else "Figure: " and the section the cell is in."""
    heading = ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            found = [line.lstrip("#").strip() for line in cell.source.splitlines() if line.startswith("#")]
            heading = found[-1] if found else heading
            continue
        if not any(k.startswith("image/") for out in cell.get("outputs", []) for k in out.get("data", {})):
            continue
        titles = _TITLE_CALL.findall(cell.source)
        alt = titles[0].strip() if titles else f"Figure: {re.sub(r'[`*_]', '', heading) or 'plot'}"
        cell.metadata.setdefault("mystnb", {}).setdefault("image", {})["alt"] = alt


def _mathjax() -> Path:
    """MathJax 3's browser files, as the pinned ``sphinx-mathjax-offline`` wheel ships them (used as data only)."""
    from importlib.metadata import distribution

    folder = Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))
    if not (folder / "tex-chtml.js").exists():
        raise BuildError(f"MathJax's files are missing from {folder}; run `make venv` again")
    return folder


def build(out: Path | None = None, *, chapters: list[str] | None = None, fresh: bool = False,
          timeout: int = 1800) -> dict:
    """Build the site into ``out`` (default ``_build/html``); return a report of what ran and how long."""
    started = time.perf_counter()
    out = Path(out) if out is not None else BUILD / "html"
    sources = sorted((ROOT / "chapters").glob("*.ipynb"))
    if chapters is not None:
        unknown = set(chapters) - {p.stem for p in sources}
        if unknown:
            raise ValueError(f"chapters must name notebooks of chapters/, got unknown {sorted(unknown)}")
        sources = [p for p in sources if p.stem in chapters]
    staging = BUILD / "source"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(ROOT / "website", staging)
    (staging / "chapters").mkdir()
    executed = BUILD / "executed"
    report = {"executed": execute_chapters(sources, cache=executed, timeout=timeout, fresh=fresh)}
    notebooks = {}
    for source in sources:
        nb = _site_notebook(executed / source.name, source.stem)
        nbformat.write(nb, staging / "chapters" / source.name)
        notebooks[source.stem] = nb
    (staging / "index.md").write_text(landing_page((ROOT / "README.md").read_text(), list(notebooks)))
    (staging / "glossary.md").write_text(glossary_page(notebooks))
    (staging / "reading.md").write_text(reading_page(notebooks))
    shutil.copytree(_mathjax(), staging / "_static" / "mathjax")
    shutil.rmtree(out, ignore_errors=True)
    sphinx = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
                             "-d", str(BUILD / "doctrees"), str(staging), str(out)],
                            capture_output=True, text=True)
    if sphinx.returncode != 0:
        raise BuildError(f"Sphinx failed (exit {sphinx.returncode}):\n{sphinx.stdout}\n{sphinx.stderr}")
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["out"] = str(out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.website", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default: _build/html)")
    parser.add_argument("--fresh", action="store_true", help="execute every chapter again, ignoring the cache")
    parser.add_argument("--chapter", action="append", default=None, help="only this chapter (repeatable)")
    parser.add_argument("--report", default=None, help="also write the build's report (JSON) to this file")
    args = parser.parse_args(argv)
    try:
        report = build(args.out, chapters=args.chapter, fresh=args.fresh)
    except (BuildError, ValueError) as exc:
        print(f"make html: {exc}", file=sys.stderr)
        return 1
    if args.report:
        Path(args.report).write_text(json.dumps(report))
    for name, seconds in report["executed"].items():
        print(f"  {name}: {'cached' if seconds == 'cached' else f'executed in {seconds} s'}")
    print(f"make html: the site is in {report['out']}/ (open {report['out']}/index.html); "
          f"built in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
