"""Grade classroom submissions: ``python -m course_lib.grade SUBMISSION... [options]``.

Each submission (``.py`` or ``.ipynb``) is reduced to its top-level imports and function
definitions (:mod:`course_lib.grader.submission`). Each exercise is graded in its own limited process
(:mod:`course_lib.grader.sandbox`) on hidden inputs drawn from ``--seed``; the expected results are
computed here, in the grader, and never enter the submission's process. An exercise the
submission does not define is reported ``missing``. A submission that loops, runs out of memory,
exits, raises, prints too much, monkeypatches torch/numpy or calls the reference fails *that*
exercise, with the reason in the message, and grading goes on.

Output: a long CSV (one row per submission and exercise, messages on one line), optionally a gradebook
CSV (one row per student, one column per exercise, a total and a percentage), per-student feedback files,
a common-mistakes report, Canvas and Moodle grade-import files (:mod:`course_lib.grader.reports`), and
summary tables per submission and per exercise. Every file names the seed, the grader's version and the
time of the run.

Examples
--------
    python -m course_lib.grade class/*.ipynb --out grades.csv
    python -m course_lib.grade alice.py --exercise conv2d_macs --timeout 5
    python -m course_lib.grade class/*.ipynb --gradebook book.csv --roster roster.csv --jobs 2
    python -m course_lib.grade class/*/03_low_rank.ipynb --weights weights.toml --partial-credit \
        --feedback feedback/ --mistakes mistakes.md --canvas canvas.csv --deadline 2026-12-01T23:59
"""
from __future__ import annotations

import argparse
import dataclasses
import csv
import sys
from collections.abc import Sequence
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import exercises, grading, reports, zygote
from .sandbox import Pool, SandboxLimits, _clean, hidden_paths
from .submission import load_submission

__all__ = ["GradeRow", "grade_submissions", "main"]

NO_EXERCISE = "(none)"     # the exercise column of a submission that defines no exercise
CSV_COLUMNS = ["student_id", "submission", "exercise", "passed", "score", "max_score", "cases_passed",
               "cases_total", "message", "seed", "grader_version", "graded_at"]


@dataclass
class GradeRow:
    submission: str
    exercise: str
    passed: bool
    score: float
    max_score: float
    message: str
    cases_passed: int = 0          # valid-input cases answered right (the basis of partial credit)
    cases_total: int = 0           # valid-input cases

    def as_csv(self, student_id: str = "", info: reports.RunInfo | None = None) -> list:
        run = [info.seed, info.version, info.timestamp] if info else ["", "", ""]
        return [student_id, self.submission, self.exercise, self.passed, f"{self.score:g}", f"{self.max_score:g}",
                self.cases_passed, self.cases_total, reports.one_line(self.message), *run]


def _touched(sub) -> set[str]:
    """The chapters whose exercises a submission defines."""
    return {exercises.get(n).chapter for n in sub.functions if n in exercises.names()}


def _exercises_for(sub, only: Sequence[str] | None, chapter: str | None) -> list[exercises.Exercise]:
    """``--exercise`` if given; else every exercise of each chapter the submission touches (by the
    functions it defines, else by ``chapter`` or its file name, so an empty notebook counts 0 of
    its chapter's exercises)."""
    if only:
        return [exercises.get(name) for name in only]
    touched = _touched(sub)
    if not touched:
        guess = chapter or _chapter_from_name(sub.path)
        touched = {guess} if guess else set()
    return [ex for ch in sorted(touched) for ex in exercises.by_chapter(ch)]


def class_chapter(subs: Sequence) -> str | None:
    """The chapter most submissions of the class define exercises of (the first in course order on a tie),
    for a submission whose chapter neither its functions nor its file name tell."""
    counts = Counter(ch for sub in subs for ch in _touched(sub))
    return min(counts, key=lambda ch: (-counts[ch], ch)) if counts else None


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
    """``missing``, or why the function may be missing: a cell that does not parse; and, for a submission
    whose chapter was taken from the class, that it was."""
    unparsed = [n for n in notes if n.startswith("does not parse")]
    guessed = [n for n in notes if n.startswith("defines no exercise")]
    text = "; ".join(unparsed) + f", so {name} is not defined" if unparsed else "missing"
    return text + "".join(f" ({n})" for n in guessed)


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

    planned, rows, loaded = [], [], []
    for path in paths:
        try:
            loaded.append(load_submission(path))
        except Exception as exc:  # noqa: BLE001 - one unreadable file never stops the class
            rows.append(GradeRow(str(path), NO_EXERCISE, False, 0.0, 0.0, f"cannot be graded: {exc}"))
    from_class = None if chapter else class_chapter(loaded)
    for sub in loaded:
        unreadable = not sub.code.strip() and any(not n.startswith("does not parse") for n in sub.notes)
        fallback = None if unreadable else from_class       # an unreadable file keeps its one row and reason
        guessed = fallback if not only and not _touched(sub) and not _chapter_from_name(sub.path) else None
        chosen = _exercises_for(sub, only, chapter or _chapter_from_name(sub.path) or fallback)
        if guessed and chosen:
            sub.notes.append(f"defines no exercise and its name names no chapter: graded as {guessed}, "
                             f"the chapter most of the class submitted")
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
        preload = zygote.preload_for({code for _, code, _ in planned}, {ex.name for _, _, ex in planned})
        if zygote.COMPILE_MODULES[-1] in preload and limits.file_size_mb < zygote.COMPILE_FILE_SIZE_MB:
            limits = dataclasses.replace(limits, file_size_mb=zygote.COMPILE_FILE_SIZE_MB)   # g++ writes larger files
        with Pool(min(jobs, len(planned)), limits, hide=hidden, preload=preload) as pool:  # imports while we compute
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
    protocol = result.error is not None and result.kind == "protocol"     # the zygote says what the error is
    if result.error is not None and (protocol or not all(e.raised for e in expected[answered:])):
        return GradeRow(path, ex.name, False, 0.0, ex.max_score, result.error, 0, sum(not e.raised for e in expected))
    try:                 # an error after every valid-input case was answered (cases run valid first) is a note
        got = [grading.derived(ex, case, outcome) for case, outcome in zip(cases, result.outcomes)]
        verdict = grading.judge(ex.name, cases, expected, got, strict_errors=strict_errors, stopped=result.error)
        message = verdict.text()
        if not verdict.passed and not message.startswith(("not implemented", "answered")):
            message += f"\n  reproduce in the notebook: check({ex.name!r}, {ex.name}, seed={seed})"
    except Exception as exc:  # noqa: BLE001 - one answer never costs the class its grades
        verdict, message = None, f"the answer could not be graded: {type(exc).__name__}: {exc}"
    passed = bool(verdict and verdict.passed)
    right, total = grading.valid_cases_passed(ex.name, cases, expected, got) if verdict else \
        (0, sum(not e.raised for e in expected))
    return GradeRow(path, ex.name, passed, ex.max_score if passed else 0.0, ex.max_score, message, right, total)


def _safe_cell(value) -> str | float | bool:
    """A CSV cell a spreadsheet will not run as a formula, without control characters."""
    if not isinstance(value, str):
        return value
    text = _clean(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(rows: Sequence[GradeRow], path: str | Path, roster: dict[str, str] | None = None,
              info: reports.RunInfo | None = None) -> None:
    """The long CSV: one row per submission and exercise (``CSV_COLUMNS``), each message on one line."""
    ids = student_ids(list(dict.fromkeys(r.submission for r in rows)), roster or {})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([_safe_cell(v) for v in row.as_csv(ids[row.submission], info)] for row in rows)


def write_gradebook(rows: Sequence[GradeRow], path: str | Path, roster: dict[str, str] | None = None,
                    info: reports.RunInfo | None = None, late: dict[str, bool] | None = None) -> None:
    """One row per student (``student_id``, ``file``, one column per exercise with its score, ``total``,
    ``max_total``, ``percent``, ``late``, ``note``, and the run's ``seed``, ``grader_version``,
    ``graded_at``): importable into a spreadsheet as is. Every roster student is listed; one without a
    submission gets 0 and the note "no submission". ``late`` (from ``--deadline``) is ``yes``/``no``, empty
    without a deadline."""
    roster, late = roster or {}, late or {}
    run = [info.seed, info.version, info.timestamp] if info else ["", "", ""]
    graded = [r for r in rows if r.exercise != NO_EXERCISE]
    columns = list(dict.fromkeys(r.exercise for r in graded))
    max_all = sum(exercises.get(c).max_score for c in columns if c in exercises.names())
    submitted = set()
    ids = student_ids(list(dict.fromkeys(r.submission for r in rows)), roster)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student_id", "file", *columns, "total", "max_total", "percent", "late", "note",
                         "seed", "grader_version", "graded_at"])
        for sub in dict.fromkeys(r.submission for r in rows):
            submitted.update({Path(sub).name, Path(sub).stem})
            mine = {r.exercise: r for r in graded if r.submission == sub}
            scores = [f"{mine[c].score:g}" if c in mine else "" for c in columns]
            total = sum(r.score for r in mine.values())
            max_total = sum(r.max_score for r in mine.values())
            note = "" if mine else "no exercise of the course found"
            guessed = [r.message for r in mine.values() if "the chapter most of the class submitted" in r.message]
            note = note or ("chapter taken from the class" if guessed else "")
            percent = f"{100 * total / max_total:.1f}" if max_total else ""
            was_late = {True: "yes", False: "no"}.get(late.get(sub), "")
            writer.writerow([_safe_cell(v) for v in (ids[sub], Path(sub).name, *scores, f"{total:g}",
                                                      f"{max_total:g}", percent, was_late, note, *run)])
        for file, student in roster.items():
            if file not in submitted and Path(file).stem not in submitted:
                writer.writerow([_safe_cell(v) for v in (student, file, *["0"] * len(columns), "0",
                                                          f"{max_all:g}", "0.0" if max_all else "", "",
                                                          "no submission", *run)])


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


def _chapter_arg(text: str) -> str:
    """``--chapter 00`` or ``--chapter 00_measurement``: the chapter id."""
    try:
        return exercises.resolve_chapter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument("--chapter", default=None, type=_chapter_arg, metavar="CHAPTER",
                        help="the chapter of submissions that define none of its functions, as its number or id "
                             f"({', '.join(exercises.chapters())}; default: from the file name)")
    parser.add_argument("--roster", default=None,
                        help="CSV with columns file,student_id (file: the submission's base name, e.g. "
                             "alice_01.ipynb, or its name without extension; a path is matched as given; "
                             "default id: the file name without extension)")
    parser.add_argument("--weights", default=None,
                        help="per-exercise weights: a CSV (exercise,weight) or a TOML [weights] table (default 1 each)")
    parser.add_argument("--partial-credit", action="store_true",
                        help="score a failed exercise by the fraction of its valid-input cases passed "
                             "(default: all or nothing)")
    parser.add_argument("--feedback", default=None, metavar="FOLDER",
                        help="write one Markdown feedback file per student into FOLDER")
    parser.add_argument("--mistakes", default=None, metavar="FILE",
                        help="write the common-mistakes report (Markdown): per exercise, the most frequent failures")
    parser.add_argument("--canvas", default=None, metavar="FILE", help="write a Canvas grade-import CSV")
    parser.add_argument("--moodle", default=None, metavar="FILE", help="write a Moodle grade-import CSV")
    parser.add_argument("--assignment", default="Compress & Explain",
                        help="the assignment (Canvas) or grade item (Moodle) name in the LMS files")
    parser.add_argument("--deadline", default=None,
                        help="ISO date-time (2026-12-01T23:59, local time unless a zone is given): files modified "
                             "later are flagged late in the gradebook and the Moodle feedback")
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
    for what, target in (("--out", args.out), ("--gradebook", args.gradebook), ("--mistakes", args.mistakes),
                         ("--canvas", args.canvas), ("--moodle", args.moodle), ("--feedback", args.feedback)):
        if target and (os.path.realpath(target) in submissions or target.endswith((".py", ".ipynb"))):
            print(f"error: {what} must be a new file or folder, not a submission: {target}", file=sys.stderr)
            return 2
    if args.seed is None:
        import secrets
        args.seed = secrets.randbelow(2**31)
    print(f"grading with seed {args.seed} (--seed {args.seed} reproduces this run)")
    try:
        roster = read_roster(args.roster) if args.roster else {}
        student_ids([str(p) for p in args.submissions], roster)          # ids that collide: say so before grading
        weights = reports.read_weights(args.weights) if args.weights else {}
        deadline = reports.parse_deadline(args.deadline) if args.deadline else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = reports.run_info(args.seed)
    limits = SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    rows = grade_submissions(args.submissions, only=args.exercise, seed=args.seed, limits=limits,
                             jobs=args.jobs, progress=True, strict_errors=args.strict_errors, chapter=args.chapter,
                             hide=[p for p in (args.roster, args.out, args.gradebook, args.weights, args.mistakes,
                                               args.canvas, args.moodle, args.feedback) if p])
    rows = reports.apply_credit(rows, weights, partial=args.partial_credit)
    late = reports.late_submissions(args.submissions, deadline) if deadline else None
    ids = student_ids(list(dict.fromkeys(r.submission for r in rows)), roster)
    if args.out:
        write_csv(rows, args.out, roster, info)
    if args.gradebook:
        write_gradebook(rows, args.gradebook, roster, info, late)
    if args.feedback:
        reports.write_feedback(rows, args.feedback, ids, info)
    if args.mistakes:
        reports.write_mistakes(rows, args.mistakes, info)
    if args.canvas:
        reports.write_canvas(rows, args.canvas, ids, info, args.assignment)
    if args.moodle:
        reports.write_moodle(rows, args.moodle, ids, info, args.assignment, late)
    print(summary_table(rows))
    print()
    print(exercise_summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
