"""Your own gradebook: which exercises of each chapter notebook pass on fresh inputs.

``python -m course_lib.progress [FOLDER] [--seed N] [--chapter NN_topic]`` grades every chapter notebook
in ``FOLDER`` (default: ``work/``, the copy ``make lab`` gives you) the way the classroom grader does:
only the top-level imports and ``def``\\ s of each notebook are kept (nothing else runs), each exercise runs
in its own limited process on inputs drawn from a new seed, and the result says, per exercise, **pass**,
**fail** (with the first failing case), or **not started** (still the stub). Notebooks are read as last
saved: save in JupyterLab first (Ctrl+S).

In a notebook, ``progress.show(chapter="01_pruning")`` prints the same table for one chapter. It does
nothing under the test suite (``COURSE_CLAIMS=strict``), which never reads ``work/``.

Taught in: every chapter (the last cell).
"""
from __future__ import annotations

import argparse
import textwrap
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProgressRow", "DEFAULT_FOLDER", "chapter_notebooks", "grade", "format_table", "show", "main"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = ROOT / "work"


@dataclass
class ProgressRow:
    """One exercise of one chapter notebook: ``status`` is "pass", "fail", "not started" or "missing"."""

    chapter: str
    exercise: str
    status: str
    message: str = ""


def chapter_notebooks(folder: str | Path) -> list[Path]:
    """The chapter notebooks (``NN_topic.ipynb``) in ``folder``, in course order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder must be an existing folder of chapter notebooks, got {str(folder)!r}; "
                         "run `make lab` once to create work/")
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def _status(passed: bool, message: str) -> str:
    if passed:
        return "pass"
    if message == "missing":
        return "missing"
    if "NotImplementedError" in message:
        return "not started"
    return "fail"


def grade(folder: str | Path | None = None, *, chapter: str | None = None, seed: int | None = None,
          jobs: int | None = None) -> list[ProgressRow]:
    """Grade every chapter notebook in ``folder`` (default ``work/``); one row per exercise.

    Parameters
    ----------
    folder : path, optional
        A folder of chapter notebooks. Default: ``work/`` at the repository root.
    chapter : str, optional
        Only this chapter (``"01_pruning"``).
    seed : int, optional
        Seed of the inputs; default: a new one each time (fresh inputs, like the classroom grader's).
    jobs : int, optional
        Exercises graded at once (default: the number of cores).
    """
    from .grader import exercises
    from .grader.cli import grade_submissions
    from .grader.submission import load_submission

    paths = chapter_notebooks(DEFAULT_FOLDER if folder is None else folder)
    if chapter is not None:
        try:
            chapter = exercises.resolve_chapter(chapter, [p.stem for p in paths])
        except ValueError:
            pass                                   # said below, with the folder's notebooks
        paths = [p for p in paths if p.stem == chapter]
        if not paths:
            raise ValueError(f"chapter must name a notebook in the folder, got {chapter!r}")
    known = set(exercises.chapters())
    graded = [p for p in paths if p.stem in known]
    rows: list[ProgressRow] = [ProgressRow(p.stem, "-", "no exercises", "this chapter has no graded exercises yet")
                               for p in paths if p.stem not in known]
    seed = random.randrange(2 ** 31) if seed is None else seed
    defined = {p: set(load_submission(p).functions) for p in graded}   # only top-level defs are kept and graded
    to_grade = [p for p in graded if defined[p] & {ex.name for ex in exercises.by_chapter(p.stem)}]
    results = {}
    if to_grade:
        for r in grade_submissions([str(p) for p in to_grade], seed=seed, jobs=jobs, progress=False):
            results[(Path(r.submission).stem, r.exercise)] = r
    for p in graded:
        for ex in exercises.by_chapter(p.stem):
            r = results.get((p.stem, ex.name))
            if ex.name not in defined[p] or r is None:
                rows.append(ProgressRow(p.stem, ex.name, "missing", "not defined at the top level of the notebook"))
            else:
                rows.append(ProgressRow(p.stem, ex.name, _status(r.passed, r.message), r.message))
    order = [p.stem for p in paths]
    rows.sort(key=lambda r: order.index(r.chapter))
    return rows


_MARK = {"pass": "PASS", "fail": "FAIL", "not started": "TODO", "missing": "MISSING", "no exercises": "-"}


def format_table(rows: Sequence[ProgressRow], *, width: int = 100) -> str:
    """A plain-text gradebook: one block per chapter, one line per exercise, a count per chapter; a failing
    exercise's reason follows on its own lines, wrapped at ``width`` (never cut mid-word)."""
    lines: list[str] = []
    for chapter in dict.fromkeys(r.chapter for r in rows):
        mine = [r for r in rows if r.chapter == chapter]
        graded = [r for r in mine if r.exercise != "-"]
        done = sum(r.status == "pass" for r in graded)
        lines.append(f"{chapter}: {done}/{len(graded)} exercises pass" if graded else f"{chapter}: {mine[0].message}")
        for r in graded:
            lines.append(f"  {_MARK[r.status]:8s}{r.exercise}")
            if r.status not in ("pass", "not started"):       # the reason in full, wrapped at word boundaries
                lines.extend(textwrap.wrap(r.message.split("\n")[0], width=width, initial_indent=" " * 10,
                                           subsequent_indent=" " * 10))
    return "\n".join(lines)


def show(folder: str | Path | None = None, *, chapter: str | None = None, seed: int | None = None) -> None:
    """Print the gradebook of ``folder`` (default: this notebook's folder if it holds chapter notebooks,
    else ``work/``), or of one ``chapter``. Does nothing under the test suite (``COURSE_CLAIMS=strict``)
    or on the website (``COURSE_SITE`` set by ``course_lib.website``)."""
    from .timing import claims_are_strict

    if os.environ.get("COURSE_SITE"):
        print("progress: nothing is graded on the website; in your own copy (`make lab`) this cell lists which "
              "of your exercises pass.")
        return
    if claims_are_strict():
        print("progress: not graded under the test suite (COURSE_CLAIMS=strict); "
              "run `make progress` in the course folder (or `.venv/bin/python -m course_lib.progress`).")
        return
    if folder is None:
        here = Path.cwd()
        folder = here if chapter_notebooks(here) and here.resolve() != (ROOT / "chapters").resolve() else DEFAULT_FOLDER
    try:
        rows = grade(folder, chapter=chapter, seed=seed)
    except ValueError as exc:
        print(f"progress: {exc}")
        return
    print(format_table(rows))
    print("(graded as last saved, on fresh inputs: save the notebook first)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER),
                        help="folder of chapter notebooks (default: work/)")
    parser.add_argument("--chapter", default=None, help="only this chapter: its number or id, e.g. 01 or 01_pruning")
    parser.add_argument("--seed", type=int, default=None, help="seed of the inputs (default: a new one)")
    parser.add_argument("--jobs", type=int, default=None, help="exercises graded at once (default: all cores)")
    args = parser.parse_args(argv)
    try:
        rows = grade(args.folder, chapter=args.chapter, seed=args.seed, jobs=args.jobs)
    except ValueError as exc:
        print(f"progress: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("COURSE_CLAIMS", "warn")
    sys.exit(main())
