"""Generate the learners' notebooks: ``python -m course_lib.release [--check]``.

``solutions/*.ipynb`` is the single source. For each notebook, ``chapters/`` gets a copy in which

- the code between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (markers included) becomes a stub,
  indented like the marker: ``raise NotImplementedError("<exercise>: your code here")``;
- cells tagged ``solution-only`` are dropped (worked answers to discussion questions);
- outputs and execution counts are stripped;
- a first cell says the file is generated, and that the learner works in their own copy in ``work/``.

``--check`` (``make check-release``) writes nothing and exits 1 when a chapter is missing, stale, or has
no solution to derive from (the test suite runs it, so a hand edit of ``chapters/`` fails CI).

Nothing here reads or writes ``work/``, the learner's copies (``make lab`` makes them). A chapter that
is replaced is first kept in ``build/replaced-chapters/`` (git-ignored), so not even a hand edit of
``chapters/`` is lost.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat

__all__ = ["strip_solutions", "release_notebook", "main"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
BANNER = ("> **Generated from `solutions/{name}` by `make release`: do not edit it in `chapters/`.** "
          "Work in your own copy, `work/{name}`: "
          "`make lab` makes it and opens it, and no tool ever overwrites it (the copy in `chapters/` is "
          "regenerated). Your work goes in the cells marked `raise NotImplementedError`; run each cell's "
          "`check(...)` to grade it, and `make progress` in the course folder (or "
          "`.venv/bin/python -m course_lib.progress`) for all your chapters.")
BACKUP = Path("build") / "replaced-chapters"
_DEF = re.compile(r"^\s*def\s+(\w+)\s*\(")


def strip_solutions(source: str) -> str:
    """Replace every ``BEGIN/END SOLUTION`` region of a cell's source by a stub."""
    out: list[str] = []
    inside, function = False, "exercise"
    for number, line in enumerate(source.splitlines(), start=1):
        match = _DEF.match(line)
        if match and not inside:
            function = match.group(1)
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN} inside another solution region")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("{function}: your code here")')
        elif stripped == END:
            if not inside:
                raise ValueError(f"line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} is never closed by {END}")
    return "\n".join(out)


def release_notebook(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The learner's version of one solution notebook."""
    chapter = nbformat.v4.new_notebook(metadata=solution.metadata)
    chapter.cells.append(nbformat.v4.new_markdown_cell(BANNER.format(name=name), id="generated-banner"))
    for cell in solution.cells:
        if "solution-only" in cell.get("metadata", {}).get("tags", []):
            continue
        new = nbformat.from_dict({k: v for k, v in cell.items() if k not in ("outputs", "execution_count")})
        if cell.cell_type == "code":
            try:
                new.source = strip_solutions(cell.source)
            except ValueError as exc:
                raise ValueError(f"{name}, cell {cell.get('id', '?')}: {exc}") from None
            new.outputs, new.execution_count = [], None
        new.metadata = {k: v for k, v in cell.get("metadata", {}).items() if k in ("tags",)}
        chapter.cells.append(new)
    return chapter


def _render(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook, version=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if chapters/ is stale; write nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    solutions, chapters = args.root / "solutions", args.root / "chapters"
    problems: list[str] = []
    wanted: set[str] = set()
    for path in sorted(solutions.glob("*.ipynb")):
        wanted.add(path.name)
        text = _render(release_notebook(nbformat.read(path, as_version=4), path.name))
        target = chapters / path.name
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        if args.check:
            problems.append(f"chapters/{path.name} is {'missing' if current is None else 'stale'}")
        else:
            chapters.mkdir(exist_ok=True)
            if current is not None:                     # keep what is replaced: never lose a hand edit
                backup = args.root / BACKUP / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
                backup.parent.mkdir(parents=True, exist_ok=True)
                backup.write_text(current, encoding="utf-8")
            target.write_text(text, encoding="utf-8")
            print(f"wrote chapters/{path.name}" + ("" if current is None else f" (the old one is kept in {BACKUP}/)"))
    for orphan in sorted(p.name for p in chapters.glob("*.ipynb") if p.name not in wanted):
        problems.append(f"chapters/{orphan} has no solutions/{orphan} to be generated from")
    if problems:
        print("\n".join(problems) + "\nRun `make release` to regenerate chapters/ from solutions/ (it never touches "
              "work/, your own copies; a replaced chapter is kept in build/replaced-chapters/).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
