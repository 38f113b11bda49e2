"""The static website (`make html`): built from the learner notebooks, no solution published, offline.

The session fixture `website` (tests/conftest.py) builds it once; building it executes every chapter of
chapters/ as a learner gets it, so these tests are also the chapters' run-to-the-end test (strict claims,
as nbval had it).
"""
from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
import pytest

from course_lib import release, website as site

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("*.ipynb"))


def _html(website) -> dict[str, str]:
    out = Path(website["out"])
    return {str(p.relative_to(out)): p.read_text(errors="replace") for p in out.rglob("*.html")}


def test_every_learner_chapter_runs_to_the_end_with_its_stubs(website):
    assert sorted(Path(n).stem for n in website["executed"]) == CHAPTERS
    for name in CHAPTERS:
        learner = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
        executed = nbformat.read(ROOT / "_build" / "executed" / f"{name}.ipynb", as_version=4)
        assert [c.source for c in executed.cells] == [c.source for c in learner.cells], f"{name} is not the learner notebook"
        code = [c for c in executed.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), f"{name}: a cell did not run"
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
        warned = [o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr"
                  and "Warning" in o.text]
        assert not warned, f"{name}: a library warning shows on the page (and in JupyterLab): {warned[0][:300]}"
        assert any("raise NotImplementedError" in c.source for c in code), f"{name}: no stub on its page"
        for cell in (c for c in code if "progress.show(" in c.source):       # the site grades nothing
            assert "nothing is graded on the website" in "".join(o.get("text", "") for o in cell.outputs), name


def _solution_lines(name: str) -> set[str]:
    """Distinctive lines of the solution regions of ``solutions/<name>`` that the learner notebook lacks."""
    solved = nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4)
    learner = "\n".join(c.source for c in nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4).cells)
    lines = set()
    for cell in solved.cells:
        for region in re.findall(rf"{release.BEGIN}\n(.*?){release.END}", cell.source, re.S):
            lines |= {l.strip() for l in region.splitlines() if len(l.strip()) >= 30 and l.strip() not in learner}
    return lines


def test_no_solution_code_is_published(website):
    pages = _html(website)
    staged = {n: (ROOT / "_build" / "source" / "chapters" / f"{n}.ipynb").read_text() for n in CHAPTERS}
    assert not any("BEGIN SOLUTION" in text for text in list(pages.values()) + list(staged.values()))
    for name in CHAPTERS:
        lines = _solution_lines(name)
        assert lines, f"{name}: no solution lines found to look for"
        page = pages[f"chapters/{name}.html"]
        leaked = [l for l in lines if l in staged[name] or l in page or l.replace("<", "&lt;") in page]
        assert not leaked, f"{name}: solution code on the website: {leaked[:3]}"


def test_widgets_stand_as_stills_and_no_page_needs_the_network(website):
    for name in CHAPTERS:
        nb = nbformat.read(ROOT / "_build" / "source" / "chapters" / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert "widgets" not in nb.metadata
        assert not [o for o in outputs if site.WIDGET_VIEW in o.get("data", {})], f"{name}: a live widget is left"
        interacts = [c for c in nb.cells if c.cell_type == "code" and "widgets.interact(" in c.source]
        for cell in interacts:
            at = next(i for i, o in enumerate(cell.outputs) if "course-widget-still" in o.get("data", {}).get("text/html", ""))
            assert "cannot run Python" in cell.outputs[at].data["text/html"], f"{name}: the still does not say why"
            assert "image/png" in cell.outputs[at + 1].data, f"{name}: no picture of the widget's controls"
            assert any("image/png" in o.get("data", {}) or o.output_type == "stream" for o in cell.outputs[at + 2:]), \
                f"{name}: the widget's output at its starting values is missing"
        assert interacts, f"{name} has no widget (every chapter has one)"
    external = re.compile(r"<(?:script|img|iframe)[^>]+src=\"https?://|<link[^>]+href=\"https?://[^\"]+\.(?:css|js)")
    offenders = [page for page, text in _html(website).items() if external.search(text)]
    assert not offenders, f"pages that load from the network: {offenders}"
    assert (Path(website["out"]) / "_static" / "mathjax" / "tex-chtml.js").exists()


def _text(page: str) -> str:
    """What a reader sees of an HTML page: tags dropped (syntax highlighting splits code into spans)."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_landing_glossary_and_reading_pages_come_from_the_readme_and_the_chapters(website):
    pages = _html(website)
    text = {name: _text(page) for name, page in pages.items() if name in ("index.html", "glossary.html", "reading.html")}
    readme = (ROOT / "README.md").read_text()
    start = re.search(r"## Start\s+```bash\n(.*?)```", readme, re.S).group(1)
    for command in ("make lab", "make test"):
        assert command in start and command in text["index.html"]
    for name in CHAPTERS:
        assert f'href="chapters/{name}.html"' in pages["index.html"], f"the landing page does not link {name}"
        nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
        glossary = next(c.source for c in nb.cells if c.source.startswith("## Glossary"))
        first_row = [l for l in glossary.splitlines() if l.startswith("|")][2]
        english, chinese = [cell.strip() for cell in first_row.strip("|").split("|")[:2]]
        assert chinese in text["glossary.html"] and english.replace("`", "") in text["glossary.html"], name
        reading = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown").split("## Reading list", 1)[1]
        first_item = re.search(r"^\* (.{12})", reading, re.M).group(1)
        assert first_item in text["reading.html"], f"{name}'s reading list is not on the page"


def _notebook(tmp_path: Path, name: str, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_an_interact_and_a_progress_bar_become_stills_of_their_starting_state(tmp_path):
    path = _notebook(tmp_path, "w",
                     "import ipywidgets as widgets\n"
                     "widgets.interact(lambda n, mode: print(f'n={n} mode={mode}'), "
                     "n=widgets.IntSlider(min=1, max=9, value=3, description='n'), mode=['a', 'b']);",
                     "from tqdm.auto import tqdm\nfor _ in tqdm(range(5), desc='epochs'): pass")
    cache = tmp_path / "cache"
    assert isinstance(site.execute_chapters([path], cache=cache)["w.ipynb"], float)
    assert site.execute_chapters([path], cache=cache) == {"w.ipynb": "cached"}       # nothing changed: not re-run
    nb = nbformat.read(cache / "w.ipynb", as_version=4)
    assert site.still_widgets(nb) == 2 and "widgets" not in nb.metadata
    interact, bar = nb.cells[0].outputs, nb.cells[1].outputs
    still = interact[0].data["text/html"]
    assert "<code>n</code>: 3 (1 to 9, step 1)" in still and "<code>mode</code>: a (one of a, b)" in still
    picture = base64.b64decode(interact[1].data["image/png"])
    assert picture.startswith(b"\x89PNG") and interact[1].data["text/plain"] == "n = 3; mode = a"
    assert [o.text for o in interact[2:] if o.output_type == "stream"] == ["n=3 mode=a\n"]
    assert '<progress value="5' in bar[0].data["text/html"] and "epochs: 100%" in bar[0].data["text/plain"]
    path.write_text(path.read_text().replace("value=3", "value=4"))
    assert isinstance(site.execute_chapters([path], cache=cache)["w.ipynb"], float)   # changed: run again


def test_a_cell_that_raises_stops_the_build_naming_the_chapter(tmp_path):
    path = _notebook(tmp_path, "broken", "x = 1", "1 / 0")
    with pytest.raises(site.BuildError, match=r"broken.ipynb did not run to the end(.|\n)*ZeroDivisionError"):
        site.execute_chapters([path], cache=tmp_path / "cache")


def test_build_rejects_an_unknown_chapter_by_name():
    with pytest.raises(ValueError, match=r"chapters must name notebooks of chapters/, got unknown \['99_nothing'\]"):
        site.build(chapters=["99_nothing"])


def test_figures_get_their_title_or_their_section_as_alt_text():
    nb = nbformat.v4.new_notebook()
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo="}}
    nb.cells = [nbformat.v4.new_markdown_cell("## 3. Pruning criteria\ntext"),
                nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.set_title('Accuracy against sparsity')"),
                nbformat.v4.new_code_cell("plots.plot_intervals(rows)"),
                nbformat.v4.new_code_cell("print(1)")]
    nb.cells[1].outputs = [nbformat.from_dict(png)]
    nb.cells[2].outputs = [nbformat.from_dict(png)]
    site.figure_alt_texts(nb)
    assert nb.cells[1].metadata["mystnb"]["image"]["alt"] == "Accuracy against sparsity"
    assert nb.cells[2].metadata["mystnb"]["image"]["alt"] == "Figure: 3. Pruning criteria"
    assert "mystnb" not in nb.cells[3].metadata


def test_the_glossary_page_introduces_its_terms_plainly():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · Measuring\n"),
                nbformat.v4.new_markdown_cell("## Glossary\n| term | 中文 |\n|---|---|\n| FLOP | 浮点运算 |")]
    page = site.glossary_page({"00_measuring": nb})
    assert "in English and in Chinese" in page and "names them" not in page and "| FLOP | 浮点运算 |" in page


def test_no_widget_cell_shows_the_repr_of_its_function():
    """``widgets.interact(f, ...)`` returns ``f``: as a cell's last expression it prints
    ``<function __main__.f(...)>`` under the widget (in JupyterLab and on the page) unless the line ends with ``;``."""
    import ast

    shown = []
    for name in CHAPTERS:
        for index, cell in enumerate(nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4).cells):
            if cell.cell_type != "code" or "interact" not in cell.source:
                continue
            last = ast.parse(cell.source).body[-1]
            if isinstance(last, ast.Expr) and "interact" in ast.unparse(last.value) \
                    and not cell.source.rstrip().endswith(";"):
                shown.append(f"{name} cell {index + 1}")
    assert not shown, f"a widget cell prints its function's repr (end the line with ';'): {shown}"


def test_no_answer_is_shown_outside_its_exercise():
    """A solution's returned expression (its key line) appears nowhere in the learner notebook except in the
    exercise's own instructions (the markdown cell just above the stub, which may specify the returned form)."""
    spoilers = []
    for name in CHAPTERS:
        solved = nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4)
        learner = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
        stubs = {i for i, c in enumerate(learner.cells) if "raise NotImplementedError" in c.source}
        shown = "".join(re.sub(r"\s+", "", c.source + "".join(str(o.get("text", "")) + str(o.get("data", {}))
                                                               for o in c.get("outputs", [])))
                        for i, c in enumerate(learner.cells) if i not in stubs and i + 1 not in stubs)
        for cell in solved.cells:
            for region in re.findall(rf"{release.BEGIN}\n(.*?){release.END}", cell.source, re.S):
                for returned in re.findall(r"^\s*return (.+)$", region, re.M):
                    key = re.sub(r"\s+", "", returned)
                    if len(key) >= 15 and key in shown:
                        spoilers.append(f"{name}: {returned.strip()}")
    assert not spoilers, f"an answer is shown outside its exercise: {spoilers}"
