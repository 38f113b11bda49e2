"""What an instructor hands back and uploads after a grading run.

From the rows of :func:`course_lib.grader.cli.grade_submissions` (one per submission and exercise):

- **credit**: per-exercise weights from a small file the instructor writes (``exercise,weight`` CSV or a
  TOML table ``[weights]``), and optional **partial credit**: an exercise scores
  ``weight × (valid-input cases passed / valid-input cases)`` instead of all or nothing;
- **per-student feedback** (one Markdown file per student: each exercise, pass or fail, the message, and
  the ``check(...)`` call with the seed that reproduces it in the notebook);
- a **common-mistakes report** (per exercise, the most frequent failure messages with their counts);
- **LMS exports** in Canvas's and Moodle's grade-import CSV formats, and readers that check a file
  against each format's rules;
- a **late flag** from the submission files' modification times against a deadline.

Every file written names the grading seed, the grader's version and the time of the run
(:class:`RunInfo`).
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from . import exercises

__all__ = ["RunInfo", "run_info", "read_weights", "apply_credit", "parse_deadline", "late_submissions",
           "one_line", "write_feedback", "write_mistakes", "write_canvas", "read_canvas", "write_moodle",
           "read_moodle", "CANVAS_FIXED", "MOODLE_ID"]

CANVAS_FIXED = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]   # Canvas's first five columns
MOODLE_ID = "ID number"                                                       # mapped to Moodle's user idnumber


@dataclass(frozen=True)
class RunInfo:
    """What identifies a grading run: the seed of the hidden inputs, the grader's version, when it ran."""

    seed: int
    version: str
    timestamp: str

    def line(self) -> str:
        return f"seed {self.seed}, grader {self.version}, graded {self.timestamp}"


def run_info(seed: int, now: dt.datetime | None = None) -> RunInfo:
    """The :class:`RunInfo` of a run started ``now`` (default: the current UTC time) with ``seed``."""
    from importlib import metadata

    try:
        version = metadata.version("course_lib")
    except metadata.PackageNotFoundError:
        version = "unknown"
    now = now or dt.datetime.now(dt.timezone.utc)
    return RunInfo(int(seed), f"course_lib {version}", now.replace(microsecond=0).isoformat())


def read_weights(path: str | Path) -> dict[str, float]:
    """Per-exercise weights: a CSV with the columns ``exercise`` and ``weight``, or a TOML file with a
    ``[weights]`` table (``conv2d_macs = 2``). An exercise not listed keeps its default weight (1).
    Raises ``ValueError`` for an unknown exercise or a weight that is not a finite number ≥ 0."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        with open(path, "rb") as handle:
            table = tomllib.load(handle)
        raw = table.get("weights", table)
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"exercise", "weight"} <= set(reader.fieldnames):
                raise ValueError(f"weights must be a CSV with the columns 'exercise' and 'weight', "
                                 f"got columns {reader.fieldnames!r}")
            raw = {row["exercise"].strip(): row["weight"].strip() for row in reader if row.get("exercise")}
    else:
        raise ValueError(f"weights must be a .csv or .toml file, got {path.name!r}")
    weights = {}
    for name, value in raw.items():
        if name not in exercises.names():
            raise ValueError(f"weights: unknown exercise {name!r}; exercises are named as in the notebooks, "
                             f"e.g. {exercises.names()[0]!r}")
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = float("nan")
        if not (weight >= 0 and weight != float("inf")):
            raise ValueError(f"weights: the weight of {name!r} must be a finite number >= 0, got {value!r}")
        weights[name] = weight
    return weights


def apply_credit(rows: Sequence, weights: dict[str, float] | None = None, partial: bool = False) -> list:
    """Rows rescored: ``max_score`` = the exercise's weight (default its own, 1); ``score`` = max_score if
    it passed, else 0, or with ``partial`` max_score × (valid-input cases passed / valid-input cases)."""
    weights = weights or {}
    out = []
    for r in rows:
        if r.exercise not in exercises.names():
            out.append(r)
            continue
        top = weights.get(r.exercise, r.max_score)
        if r.passed:
            score = top
        elif partial and r.cases_total:
            score = top * r.cases_passed / r.cases_total
        else:
            score = 0.0
        out.append(replace(r, score=round(score, 4), max_score=top))
    return out


def parse_deadline(text: str) -> dt.datetime:
    """An ISO 8601 date-time (``2026-12-01T23:59``, ``2026-12-01 23:59+01:00``) or date (end of that day);
    without a time zone it is this machine's local time. Raises ``ValueError`` otherwise."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"deadline must be an ISO 8601 date or date-time such as 2026-12-01T23:59, "
                         f"got {text!r}") from None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        when = when.replace(hour=23, minute=59, second=59)
    return when if when.tzinfo else when.astimezone()


def late_submissions(paths: Sequence[str], deadline: dt.datetime) -> dict[str, bool]:
    """For each submission file: was it last modified after ``deadline``? (The file's time, as the copy the
    instructor grades has it: collect submissions with their times kept, e.g. ``cp -p`` or an LMS zip.)"""
    limit = deadline.timestamp()
    return {str(p): os.stat(p).st_mtime > limit for p in paths}


def one_line(message: str) -> str:
    """A message on one line (for CSV cells): its lines joined by `` | ``."""
    return " | ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _by_student(rows: Sequence, ids: dict[str, str]) -> dict[str, list]:
    students: dict[str, list] = {}
    for r in rows:
        students.setdefault(ids.get(r.submission, Path(r.submission).stem), []).append(r)
    return students


def _safe_file_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "student"
    return name[:80]


def write_feedback(rows: Sequence, folder: str | Path, ids: dict[str, str], info: RunInfo) -> list[Path]:
    """One Markdown file per student in ``folder`` (``<student_id>.md``): the total, then each exercise with
    PASS/FAIL, its score, the grader's message and, for a failure, the call that reproduces it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for student, mine in _by_student(rows, ids).items():
        name = _safe_file_name(student)
        while name in used:
            name += "_"
        used.add(name)
        graded = [r for r in mine if r.exercise in exercises.names()]
        total, top = sum(r.score for r in graded), sum(r.max_score for r in graded)
        lines = [f"# Feedback for {student}", "",
                 f"Files: {', '.join(sorted({Path(r.submission).name for r in mine}))}  ",
                 f"Score: **{total:g} / {top:g}**  ", f"Run: {info.line()}", ""]
        for r in mine:
            if r.exercise not in exercises.names():
                lines += [f"- {one_line(r.message)}", ""]
                continue
            mark = "PASS" if r.passed else "FAIL"
            lines += [f"## {r.exercise}: {mark} ({r.score:g} / {r.max_score:g})", "", "```text",
                      str(r.message).replace("```", "'''"), "```", ""]
            if not r.passed and not r.message.startswith(("missing", "not implemented")):
                lines += [f"Reproduce in your notebook: `check({r.exercise!r}, {r.exercise}, seed={info.seed})`", ""]
        path = folder / f"{name}.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        written.append(path)
    return written


def _reason(message: str) -> str:
    """The kind of a failure, without the case's numbers: its first line, case index and values removed."""
    first = str(message).split("\n")[0]
    first = re.sub(r"^case \d+ of \d+: ", "", first)
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", first)[:160]


def write_mistakes(rows: Sequence, path: str | Path, info: RunInfo, top: int = 5) -> None:
    """The common-mistakes report (Markdown): per exercise, how many passed and the ``top`` most frequent
    failure messages (numbers replaced by ``#``, so the same mistake on different cases counts once)."""
    lines = ["# Common mistakes", "", f"Run: {info.line()}", ""]
    for name in dict.fromkeys(r.exercise for r in rows if r.exercise in exercises.names()):
        mine = [r for r in rows if r.exercise == name]
        failed = Counter(_reason(r.message) for r in mine if not r.passed)
        lines += [f"## {name}: {sum(r.passed for r in mine)} of {len(mine)} passed", ""]
        lines += [f"- {count}× {reason}" for reason, count in failed.most_common(top)] or ["- no failures"]
        lines.append("")
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def _totals(rows: Sequence, ids: dict[str, str]) -> dict[str, tuple[float, float]]:
    return {student: (sum(r.score for r in mine if r.exercise in exercises.names()),
                      sum(r.max_score for r in mine if r.exercise in exercises.names()))
            for student, mine in _by_student(rows, ids).items()}


def write_canvas(rows: Sequence, path: str | Path, ids: dict[str, str], info: RunInfo, assignment: str,
                 names: dict[str, str] | None = None) -> None:
    """Canvas's gradebook-import CSV: the columns ``Student, ID, SIS User ID, SIS Login ID, Section``, then one
    assignment column (a new assignment, named ``assignment`` with the run's seed, version and time), a
    ``Points Possible`` row, then one row per student with the student id as ``SIS User ID``."""
    totals = _totals(rows, ids)
    top = max((m for _, m in totals.values()), default=0.0)
    column = f"{assignment} [{info.line()}]"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CANVAS_FIXED, column])
        writer.writerow(["Points Possible", "", "", "", "", f"{top:g}"])
        for student, (score, _) in totals.items():
            writer.writerow([(names or {}).get(student, ""), "", student, "", "", f"{score:g}"])


def read_canvas(path: str | Path) -> dict[str, float]:
    """Read a Canvas grade-import CSV back, checking the format's rules: the five fixed columns first, a
    student identified by name, ID or SIS User ID, scores numeric (or empty) and at most the points possible.
    Returns {SIS User ID (or ID, or name): score of the first assignment column}; raises ``ValueError``."""
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    if not table or table[0][:5] != CANVAS_FIXED or len(table[0]) < 6:
        raise ValueError(f"a Canvas import starts with the columns {CANVAS_FIXED} and one assignment column")
    body, possible = table[1:], None
    if body and body[0][0].strip() == "Points Possible":
        possible, body = float(body[0][5]), body[1:]
    scores = {}
    for row in body:
        key = row[2] or row[1] or row[0]
        if not key:
            raise ValueError(f"row {row!r} names no student (Student, ID or SIS User ID)")
        if row[5] != "":
            value = float(row[5])
            if possible is not None and not 0 <= value <= possible:
                raise ValueError(f"score {value} of {key!r} is outside 0..{possible}")
            scores[key] = value
    return scores


def write_moodle(rows: Sequence, path: str | Path, ids: dict[str, str], info: RunInfo, item: str,
                 late: dict[str, bool] | None = None) -> None:
    """Moodle's "Import grades from CSV" file: ``ID number`` (map it to the user field *ID number*), one
    grade column named ``item``, a ``Feedback`` column (map it to the item's feedback), then the run's
    ``seed``, ``grader_version`` and ``graded_at`` (leave them unmapped on import)."""
    totals = _totals(rows, ids)
    by_student = _by_student(rows, ids)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([MOODLE_ID, item, "Feedback", "seed", "grader_version", "graded_at"])
        for student, (score, top) in totals.items():
            failed = [r.exercise for r in by_student[student] if r.exercise in exercises.names() and not r.passed]
            is_late = any((late or {}).get(r.submission) for r in by_student[student])
            feedback = (f"{score:g} of {top:g}" + (f"; not yet: {', '.join(failed)}" if failed else "; all passed")
                        + ("; submitted after the deadline" if is_late else ""))
            writer.writerow([student, f"{score:g}", feedback, info.seed, info.version, info.timestamp])


def read_moodle(path: str | Path) -> dict[str, float]:
    """Read a Moodle grade-import CSV back, checking its rules: a header row naming an identifier column
    (``ID number``, ``email``, ``username`` or ``userid``) and a grade column, one row per student, unique
    identifiers, numeric grades. Returns {identifier: grade of the first grade column}; raises ``ValueError``."""
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    identifiers = {MOODLE_ID, "email", "username", "userid"}
    if not table or not table[0] or table[0][0] not in identifiers or len(table[0]) < 2:
        raise ValueError(f"a Moodle import's first column is an identifier ({sorted(identifiers)}), then grades")
    scores = {}
    for row in table[1:]:
        if len(row) != len(table[0]):
            raise ValueError(f"row {row!r} has {len(row)} fields, the header {len(table[0])}")
        if row[0] in scores:
            raise ValueError(f"identifier {row[0]!r} appears twice")
        scores[row[0]] = float(row[1])
    return scores
