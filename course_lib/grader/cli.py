"""Grade classroom submissions: ``python -m course_lib.grade SUBMISSION... [options]``.

Each submission (``.py`` or ``.ipynb``) is reduced to its top-level imports and function
definitions (:mod:`course_lib.grader.submission`). Each exercise is graded in its own limited process
(:mod:`course_lib.grader.sandbox`) on hidden inputs drawn from ``--seed``; the expected results are
computed here, in the grader, and never enter the submission's process. An exercise the
submission does not define is reported ``missing``. A submission that loops, runs out of memory,
exits, raises, prints too much, monkeypatches torch/numpy or calls the reference fails *that*
exercise, with the reason in the message, and grading goes on.

Output: a long CSV (``submission,exercise,passed,score,max_score,message``), optionally a gradebook
CSV (one row per student, one column per exercise, a total), and summary tables per submission and
per exercise (how many passed, the most common failure).

Examples
--------
    python -m course_lib.grade class/*.ipynb --out grades.csv
    python -m course_lib.grade alice.py --exercise conv2d_macs --timeout 5
    python -m course_lib.grade class/*.ipynb --gradebook book.csv --roster roster.csv --seed 2027 --jobs 2
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import exercises, grading
from .sandbox import Pool, SandboxLimits, _clean, hidden_paths
from .submission import load_submission

__all__ = ["GradeRow", "grade_submissions", "main"]

NO_EXERCISE = "(none)"     # the exercise column of a submission that defines no exercise
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


def _exercises_for(sub, only: Sequence[str] | None, chapter: str | None) -> list[exercises.Exercise]:
    """``--exercise`` if given; else every exercise of each chapter the submission touches (by the
    functions it defines, else by ``--chapter`` or its file name, so an empty notebook counts 0 of
    its chapter's exercises)."""
    if only:
        return [exercises.get(name) for name in only]
    touched = {exercises.get(n).chapter for n in sub.functions if n in exercises.names()}
    if not touched:
        guess = chapter or _chapter_from_name(sub.path)
        touched = {guess} if guess else set()
    return [ex for ch in sorted(touched) for ex in exercises.by_chapter(ch)]


def _chapter_from_name(path: str) -> str | None:
    """The chapter whose id (``00_measurement``) or number (``00_``) starts the file name."""
    stem = Path(path).stem
    for chapter in exercises.chapters():
        if stem.startswith(chapter) or stem.startswith(chapter.split("_")[0] + "_"):
            return chapter
    return None


def _display_name(path: str) -> str:
    """A file name for one line of a table: control and bidi characters removed, newlines shown as spaces."""
    return _clean(Path(path).name.replace("\n", " ").replace("\r", " ").replace("\t", " "))


def student_ids(submissions: Sequence[str], roster: dict[str, str]) -> dict[str, str]:
    """A unique id per submission: the roster's (matched by path, file name or stem), else the file's stem;
    files with the same name in per-student folders (``alice/ch00.ipynb``, ``bob/ch00.ipynb``) get
    ``folder/stem``. Raises ``ValueError`` naming the files when ids still collide (a roster giving two
    files one id)."""
    def folder_id(sub: str) -> str:
        return f"{Path(sub).parent.name}/{Path(sub).stem}" if Path(sub).parent.name else Path(sub).stem

    ids = {sub: roster.get(sub) or _student_id(sub, roster) for sub in submissions}
    counts = Counter(ids.values())
    ids = {sub: (folder_id(sub) if counts[i] > 1 and not (roster.get(sub) or roster.get(Path(sub).name)
                                                           or roster.get(Path(sub).stem)) else i)
           for sub, i in ids.items()}
    clash = [i for i, n in Counter(ids.values()).items() if n > 1]
    if clash:
        files = sorted(sub for sub, i in ids.items() if i in clash)
        raise ValueError(f"these submissions would share a student id ({', '.join(map(repr, clash))}): "
                         f"{', '.join(files)}; give each its own id in the roster")
    return {sub: _clean(i.replace("\n", " ")) for sub, i in ids.items()}


def _student_id(path: str, roster: dict[str, str]) -> str:
    """The roster's id for this file (matched by file name or stem), else the file's stem."""
    name = Path(path).name
    return roster.get(name) or roster.get(Path(path).stem) or Path(path).stem


def read_roster(path: str | Path) -> dict[str, str]:
    """A roster CSV with the columns ``file`` and ``student_id`` (a header row, any other columns ignored)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "student_id"} <= set(reader.fieldnames):
            raise ValueError(f"roster must be a CSV with the columns 'file' and 'student_id', "
                             f"got columns {reader.fieldnames!r}")
        return {row["file"].strip(): row["student_id"].strip() for row in reader if row.get("file")}


def _missing_message(name: str, notes: list[str]) -> str:
    """``missing``, or why the function may be missing: a cell that does not parse."""
    unparsed = [n for n in notes if n.startswith("does not parse")]
    return "; ".join(unparsed) + f", so {name} is not defined" if unparsed else "missing"


def grade_submissions(paths: Sequence[str | Path], *, only: Sequence[str] | None = None, seed: int = 0,
                      limits: SandboxLimits | None = None, jobs: int | None = None, progress: bool = False,
                      hide: Sequence[str | Path] = (), strict_errors: bool = False,
                      chapter: str | None = None) -> list[GradeRow]:
    """Grade every submission; one row per (submission, exercise).

    The same ``seed`` and submissions give the same rows: every case is drawn from ``seed``, and the
    expected results are computed once per exercise, here, for the whole class. A submission that
    cannot be read or parsed, or an exercise whose answer cannot be decoded or compared, becomes
    that row's message: the run always finishes.
    """
    from tqdm.auto import tqdm

    limits = limits or SandboxLimits()
    jobs = jobs or os.cpu_count() or 1
    cache: dict[str, tuple[list[dict], list]] = {}

    def cases_for(name: str) -> tuple[list[dict], list]:
        if name not in cache:
            cases = grading.make_cases(name, seed)
            cache[name] = grading.valid_first(cases, grading.expected_outcomes(name, cases))
        return cache[name]

    planned, rows = [], []
    for path in paths:
        try:
            sub = load_submission(path)
        except Exception as exc:  # noqa: BLE001 - one unreadable file never stops the class
            rows.append(GradeRow(str(path), NO_EXERCISE, False, 0.0, 0.0, f"cannot be graded: {exc}"))
            continue
        chosen = _exercises_for(sub, only, chapter)
        if not chosen:
            rows.append(GradeRow(sub.path, NO_EXERCISE, False, 0.0, 0.0,
                                 "no exercise of the course is defined here" + "; ".join([""] + sub.notes)))
        for ex in chosen:
            if ex.name not in sub.functions:
                rows.append(GradeRow(sub.path, ex.name, False, 0.0, ex.max_score, _missing_message(ex.name, sub.notes)))
            else:
                planned.append((sub.path, sub.code, ex))
    remaining: dict[str, int] = {}
    for path, _, _ in planned:
        remaining[path] = remaining.get(path, 0) + 1
    bar = tqdm(total=len(paths), desc="grading", unit="submission", disable=not progress)
    bar.update(len(paths) - len(remaining))
    if planned:
        hidden = hidden_paths([*map(str, paths), *map(str, hide)])
        done: set[int] = set()
        with Pool(min(jobs, len(planned)), limits, hide=hidden) as pool:     # imports while we compute below
            tasks = [(path, code, ex, *cases_for(ex.name)) for path, code, ex in planned]
            try:
                for index, result in pool.run([(code, ex.name, cases) for _, code, ex, cases, _ in tasks]):
                    path, _, ex, cases, expected = tasks[index]
                    rows.append(_row(path, ex, cases, expected, result, strict_errors, seed))
                    done.add(index)
                    remaining[path] -= 1
                    if remaining[path] == 0:
                        bar.update(1)
            except (RuntimeError, OSError, ValueError) as exc:   # the server itself failed: say so per row
                for index, (path, _, ex, _, _) in enumerate(tasks):
                    if index not in done:
                        rows.append(GradeRow(path, ex.name, False, 0.0, ex.max_score,
                                             f"not graded: the grading server failed ({exc}); grade again"))
    bar.close()
    order = {str(p): i for i, p in enumerate(map(str, paths))}
    names = exercises.names()
    rows.sort(key=lambda r: (order.get(r.submission, 0), names.index(r.exercise) if r.exercise in names else -1))
    return rows


def _row(path: str, ex: exercises.Exercise, cases: list[dict], expected: list, result, strict_errors: bool,
         seed: int) -> GradeRow:
    """Judge one exercise's answers (``derive`` applied here, in the grader); never raises."""
    answered = len(result.outcomes)
    protocol = result.error is not None and any(w in result.error for w in ("reply channel", "could not be read",
                                                                            "malformed", "larger than"))
    if result.error is not None and (protocol or not all(e.raised for e in expected[answered:])):
        return GradeRow(path, ex.name, False, 0.0, ex.max_score, result.error)
    try:                 # an error after every valid-input case was answered (cases run valid first) is a note
        got = [grading.derived(ex, case, outcome) for case, outcome in zip(cases, result.outcomes)]
        verdict = grading.judge(ex.name, cases, expected, got, strict_errors=strict_errors, stopped=result.error)
        message = verdict.text()
        if not verdict.passed and not message.startswith(("not implemented", "answered")):
            message += f"\n  reproduce in the notebook: check({ex.name!r}, {ex.name}, seed={seed})"
    except Exception as exc:  # noqa: BLE001 - one answer never costs the class its grades
        verdict, message = None, f"the answer could not be graded: {type(exc).__name__}: {exc}"
    passed = bool(verdict and verdict.passed)
    return GradeRow(path, ex.name, passed, ex.max_score if passed else 0.0, ex.max_score, message)


def _safe_cell(value) -> str | float | bool:
    """A CSV cell a spreadsheet will not run as a formula, without control characters."""
    if not isinstance(value, str):
        return value
    text = _clean(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(rows: Sequence[GradeRow], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([_safe_cell(v) for v in row.as_csv()] for row in rows)


def write_gradebook(rows: Sequence[GradeRow], path: str | Path, roster: dict[str, str] | None = None) -> None:
    """One row per student (``student_id``, ``file``, one column per exercise with its score, ``total``,
    ``max_total``, ``note``): importable into a spreadsheet or an LMS gradebook as is. Every roster
    student is listed; one without a submission gets 0 and the note "no submission"."""
    roster = roster or {}
    graded = [r for r in rows if r.exercise != NO_EXERCISE]
    columns = list(dict.fromkeys(r.exercise for r in graded))
    max_all = sum(exercises.get(c).max_score for c in columns if c in exercises.names())
    submitted = set()
    ids = student_ids(list(dict.fromkeys(r.submission for r in rows)), roster)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student_id", "file", *columns, "total", "max_total", "note"])
        for sub in dict.fromkeys(r.submission for r in rows):
            submitted.update({Path(sub).name, Path(sub).stem})
            mine = {r.exercise: r for r in graded if r.submission == sub}
            scores = [f"{mine[c].score:g}" if c in mine else "" for c in columns]
            total = sum(r.score for r in mine.values())
            max_total = sum(r.max_score for r in mine.values())
            note = "" if mine else "no exercise of the course found"
            writer.writerow([_safe_cell(v) for v in (ids[sub], Path(sub).name, *scores,
                                                      f"{total:g}", f"{max_total:g}", note)])
        for file, student in roster.items():
            if file not in submitted and Path(file).stem not in submitted:
                writer.writerow([_safe_cell(v) for v in (student, file, *["0"] * len(columns), "0",
                                                          f"{max_all:g}", "no submission")])


def summary_table(rows: Sequence[GradeRow]) -> str:
    """One line per submission: score, total, and the exercises it failed."""
    lines = [f"{'submission':40s} {'score':>7s}  failed or missing"]
    for sub in dict.fromkeys(r.submission for r in rows):
        mine = [r for r in rows if r.submission == sub]
        score, total = sum(r.score for r in mine), sum(r.max_score for r in mine)
        failed = ", ".join(r.exercise + (" (missing)" if r.message.startswith("missing") else "")
                           for r in mine if not r.passed)
        lines.append(_clean(f"{_display_name(sub)[:40]:40s} {score:g}/{total:g}".ljust(49) + f"  {failed or '-'}"))
    return "\n".join(lines)


def exercise_summary(rows: Sequence[GradeRow]) -> str:
    """Per exercise: how many passed, and the most common reason for failing."""
    lines = [f"{'exercise':24s} {'passed':>9s}  most common failure"]
    for name in dict.fromkeys(r.exercise for r in rows if r.exercise != NO_EXERCISE):
        mine = [r for r in rows if r.exercise == name]
        reasons = Counter(r.message.split("\n")[0][:90] for r in mine if not r.passed)
        common = f"{reasons.most_common(1)[0][0]} ({reasons.most_common(1)[0][1]}x)" if reasons else "-"
        lines.append(_clean(f"{name:24s} {sum(r.passed for r in mine):>4d}/{len(mine):<4d}  {common}"))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", nargs="+", help=".ipynb or .py files")
    parser.add_argument("--out", default=None, help="write the long CSV here")
    parser.add_argument("--exercise", action="append", choices=exercises.names(), metavar="NAME",
                        help="grade only this exercise (repeatable)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per exercise (default 10)")
    parser.add_argument("--memory-mb", type=int, default=2048, help="memory per exercise above the imports")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the hidden inputs (default: a fresh random one, printed, so that no answer "
                             "table can be prepared in advance; pass it again to reproduce a run)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="exercises graded in parallel (default: the number of CPU cores)")
    parser.add_argument("--gradebook", default=None,
                        help="also write a gradebook CSV: one row per student, one column per exercise, a total")
    parser.add_argument("--strict-errors", action="store_true",
                        help="invalid-input cases count too (default: they are notes; valid inputs decide)")
    parser.add_argument("--chapter", default=None, choices=exercises.chapters(),
                        help="the chapter of submissions that define none of its functions (default: from the file name)")
    parser.add_argument("--roster", default=None,
                        help="CSV with columns file,student_id (default id: the file name without extension)")
    return parser


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(options, submissions): an argument that names an existing ``.py``/``.ipynb`` file is a submission
    even when it starts with ``-`` (a student's file called ``--gradebook=bob.ipynb`` must not become an
    option when a shell glob expands it)."""
    options, files = [], []
    for arg in argv:
        if arg.startswith("-") and arg.endswith((".py", ".ipynb")) and os.path.isfile(arg):
            files.append(arg)
        else:
            options.append(arg)
    return options, files


def main(argv: Sequence[str] | None = None) -> int:
    options, files = _split_argv(list(sys.argv[1:] if argv is None else argv))
    if files and not any(not o.startswith("-") for o in options):
        options.append(files.pop(0))           # argparse needs one positional; the rest follow
    args = _parser().parse_args(options)
    args.submissions = [*args.submissions, *files]
    missing = [p for p in args.submissions if not Path(p).is_file()]
    if missing:
        print(f"error: submission files not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    submissions = {os.path.realpath(p) for p in args.submissions}
    for what, target in (("--out", args.out), ("--gradebook", args.gradebook)):
        if target and (os.path.realpath(target) in submissions or target.endswith((".py", ".ipynb"))):
            print(f"error: {what} must be a new .csv file, not a submission: {target}", file=sys.stderr)
            return 2
    if args.seed is None:
        import secrets
        args.seed = secrets.randbelow(2**31)
    print(f"grading with seed {args.seed} (--seed {args.seed} reproduces this run)")
    try:
        roster = read_roster(args.roster) if args.roster else {}
        if args.gradebook:
            student_ids([str(p) for p in args.submissions], roster)      # ids that collide: say so before grading
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    rows = grade_submissions(args.submissions, only=args.exercise, seed=args.seed, limits=limits,
                             jobs=args.jobs, progress=True, strict_errors=args.strict_errors, chapter=args.chapter,
                             hide=[p for p in (args.roster, args.out, args.gradebook) if p])
    if args.out:
        write_csv(rows, args.out)
    if args.gradebook:
        write_gradebook(rows, args.gradebook, roster)
    print(summary_table(rows))
    print()
    print(exercise_summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
