"""Grade classroom submissions: ``python -m course_lib.grade SUBMISSION... [options]``.

Each submission (``.py`` or ``.ipynb``) is reduced to its top-level imports and function
definitions (:mod:`course_lib.submission`). Each exercise is graded in its own limited process
(:mod:`course_lib.sandbox`) on hidden inputs drawn from ``--seed``; the expected results are
computed here, in the grader, and never enter the submission's process. An exercise the
submission does not define is reported ``missing``. A submission that loops, runs out of memory,
exits, raises, prints too much, monkeypatches torch/numpy or calls the reference fails *that*
exercise, with the reason in the message, and grading goes on.

Output: a long CSV (``submission,exercise,passed,score,max_score,message``) and a summary table.

Examples
--------
    python -m course_lib.grade class/*.ipynb --out grades.csv
    python -m course_lib.grade alice.py --exercise conv2d_macs --timeout 5
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import exercises, grading
from .sandbox import SandboxLimits, run_exercise
from .submission import load_submission

__all__ = ["GradeRow", "grade_submissions", "main"]

CSV_COLUMNS = ["submission", "exercise", "passed", "score", "max_score", "message"]


@dataclass
class GradeRow:
    submission: str
    exercise: str
    passed: bool
    score: float
    max_score: float
    message: str

    def as_csv(self) -> list:
        return [self.submission, self.exercise, self.passed, self.score, self.max_score, self.message]


def _exercises_for(functions: Sequence[str], only: Sequence[str] | None) -> list[exercises.Exercise]:
    """``--exercise`` if given, else every exercise of each chapter the submission touches."""
    if only:
        return [exercises.get(name) for name in only]
    touched = {exercises.get(n).chapter for n in functions if n in exercises.names()}
    return [ex for chapter in sorted(touched) for ex in exercises.by_chapter(chapter)]


def _grade_one(path: str, code: str, ex: exercises.Exercise, cases: list[dict],
               expected: list, limits: SandboxLimits) -> GradeRow:
    result = run_exercise(code, ex.name, cases, limits)
    if result.error is not None:
        return GradeRow(path, ex.name, False, 0.0, ex.max_score, result.error)
    passed, message = grading.judge(ex.name, cases, expected, result.outcomes)
    return GradeRow(path, ex.name, passed, ex.max_score if passed else 0.0, ex.max_score, message)


def grade_submissions(paths: Sequence[str | Path], *, only: Sequence[str] | None = None, seed: int = 0,
                      limits: SandboxLimits | None = None, jobs: int = 1, progress: bool = False) -> list[GradeRow]:
    """Grade every submission; one row per (submission, exercise)."""
    from tqdm.auto import tqdm

    limits = limits or SandboxLimits()
    cache: dict[str, tuple[list[dict], list]] = {}   # same seed -> same cases and expected for everyone

    def cases_for(name: str) -> tuple[list[dict], list]:
        if name not in cache:
            cases = grading.make_cases(name, seed)
            cache[name] = (cases, grading.expected_outcomes(name, cases))
        return cache[name]

    tasks, rows = [], []
    for path in paths:
        sub = load_submission(path)
        chosen = _exercises_for(sub.functions, only)
        if not chosen:
            rows.append(GradeRow(sub.path, "-", False, 0.0, 0.0,
                                 "no exercise of the course is defined here" + "; ".join([""] + sub.notes)))
        for ex in chosen:
            if ex.name not in sub.functions:
                rows.append(GradeRow(sub.path, ex.name, False, 0.0, ex.max_score, "missing"))
            else:
                tasks.append((sub.path, sub.code, ex, *cases_for(ex.name)))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_grade_one, *task, limits) for task in tasks]
        for future in tqdm(futures, desc="grading", unit="exercise", disable=not progress):
            rows.append(future.result())
    order = {str(p): i for i, p in enumerate(map(str, paths))}
    names = exercises.names()
    rows.sort(key=lambda r: (order.get(r.submission, 0), names.index(r.exercise) if r.exercise in names else -1))
    return rows


def write_csv(rows: Sequence[GradeRow], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(row.as_csv() for row in rows)


def summary_table(rows: Sequence[GradeRow]) -> str:
    """One line per submission: score, total, and the exercises it failed."""
    lines = [f"{'submission':40s} {'score':>7s}  failed or missing"]
    for sub in dict.fromkeys(r.submission for r in rows):
        mine = [r for r in rows if r.submission == sub]
        score, total = sum(r.score for r in mine), sum(r.max_score for r in mine)
        failed = ", ".join(r.exercise + (" (missing)" if r.message == "missing" else "")
                           for r in mine if not r.passed)
        lines.append(f"{Path(sub).name[:40]:40s} {score:g}/{total:g}".ljust(49) + f"  {failed or '-'}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", nargs="+", help=".ipynb or .py files")
    parser.add_argument("--out", default=None, help="write the long CSV here")
    parser.add_argument("--exercise", action="append", choices=exercises.names(), metavar="NAME",
                        help="grade only this exercise (repeatable)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per exercise (default 10)")
    parser.add_argument("--memory-mb", type=int, default=2048, help="memory per exercise above the imports")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hidden inputs (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="exercises graded in parallel (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = [p for p in args.submissions if not Path(p).is_file()]
    if missing:
        print(f"error: submission files not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    rows = grade_submissions(args.submissions, only=args.exercise, seed=args.seed, limits=limits,
                             jobs=args.jobs, progress=sys.stderr.isatty())
    if args.out:
        write_csv(rows, args.out)
    print(summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
