"""The classroom grader end to end: full marks, zero, missing, and hostile submissions that fail alone."""
import csv
import os
from pathlib import Path

import pytest

from course_lib.grader import cli as grade
from course_lib.grader.sandbox import SandboxLimits
from course_lib.grader.submission import extract_definitions, load_submission

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "fixtures" / "submissions"
CHAPTER00 = ["count_parameters", "conv2d_macs", "roofline_time", "mcnemar_exact", "summarize_timings"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    out = tmp_path_factory.mktemp("grades") / "grades.csv"
    paths = [ROOT / "solutions" / "00_measurement.ipynb", ROOT / "chapters" / "00_measurement.ipynb",
             *(SUBMISSIONS / name for name in ("correct.py", "hostile_a.py", "hostile_b.py", "hostile_c.py"))]
    code = grade.main([*map(str, paths), "--out", str(out), "--timeout", "6", "--jobs", "2", "--memory-mb", "1024"])
    assert code == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {(Path(r["submission"]).parent.name + "/" + Path(r["submission"]).name, r["exercise"]): r for r in rows}


def row(graded, submission, exercise):
    return graded[(submission, exercise)]


def test_csv_columns(graded):
    assert list(next(iter(graded.values()))) == grade.CSV_COLUMNS


@pytest.mark.parametrize("submission", ["solutions/00_measurement.ipynb", "submissions/correct.py"])
def test_solutions_score_full_marks(graded, submission):
    for exercise in CHAPTER00:
        r = row(graded, submission, exercise)
        assert r["passed"] == "True" and float(r["score"]) == float(r["max_score"]) == 1.0, r["message"]


def test_generated_chapter_scores_zero(graded):
    for exercise in CHAPTER00:
        r = row(graded, "chapters/00_measurement.ipynb", exercise)
        assert r["passed"] == "False" and float(r["score"]) == 0.0
        assert "not implemented" in r["message"]


@pytest.mark.parametrize("exercise,message", [
    ("count_parameters", "time limit of"),
    ("roofline_time", "out of memory"),
    ("conv2d_macs", "sys.exit"),
    ("summarize_timings", "printed more than"),
])
def test_hostile_a_fails_each_exercise_alone(graded, exercise, message):
    r = row(graded, "submissions/hostile_a.py", exercise)
    assert r["passed"] == "False" and message in r["message"]


@pytest.mark.parametrize("exercise,message", [
    ("count_parameters", "os._exit"),
    ("roofline_time", "expected"),          # patching torch in the child changes nothing: compared in the grader
    ("conv2d_macs", "FlopCounterMode.__init__ is not available while grading"),
    ("summarize_timings", "course_lib.measurement.summarize_timings is not available while grading"),
    ("mcnemar_exact", "scipy.stats._binomtest.binomtest is not available while grading"),
])
def test_hostile_b_cheats_get_no_points(graded, exercise, message):
    r = row(graded, "submissions/hostile_b.py", exercise)
    assert r["passed"] == "False" and message in r["message"]


def test_top_level_code_never_runs_and_missing_is_reported(graded):
    assert not os.path.exists("/tmp/compress-explain-toplevel-ran")
    assert "RuntimeError: oops" in row(graded, "submissions/hostile_c.py", "count_parameters")["message"]
    assert row(graded, "submissions/hostile_c.py", "roofline_time")["message"] == "missing"
    macs = row(graded, "submissions/hostile_c.py", "conv2d_macs")["message"]
    assert "expected" in macs and "inputs:" in macs


def test_extract_keeps_only_imports_and_defs():
    code, functions, notes = extract_definitions(["import os\nx = 1\nprint(x)\n%time f()\n\ndef f():\n    return x\n",
                                                  "class A:\n    pass\nfrom math import pi", "def broken(:"])
    assert functions == ["f"] and "print" not in code and "class" not in code and "from math import pi" in code
    assert notes and "does not parse" in notes[0]


def test_load_submission_rejects_other_files(tmp_path):
    with pytest.raises(ValueError, match="submission must be a .py or .ipynb file"):
        load_submission(tmp_path / "answers.txt")


def test_unreadable_notebook_is_reported_not_crashing(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    rows = grade.grade_submissions([broken], limits=SandboxLimits(timeout_s=5))
    assert len(rows) == 1 and not rows[0].passed and "not a readable notebook" in rows[0].message


def test_cli_reports_missing_files(capsys):
    assert grade.main(["no/such/file.py"]) == 2
    assert "not found" in capsys.readouterr().err


def test_every_solution_scores_full_marks_and_every_chapter_zero():
    """All chapters at once (one warm pool): solutions/ passes every exercise, chapters/ none."""
    from course_lib.grader import exercises
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    chapters = [ROOT / "chapters" / p.name for p in solutions]
    rows = grade.grade_submissions([*solutions, *chapters], limits=SandboxLimits(timeout_s=30))
    for path in solutions:
        mine = [r for r in rows if r.submission == str(path)]
        chapter = exercises.by_chapter(path.stem)
        assert chapter, f"{path.name} defines no registered exercise"
        assert {r.exercise for r in mine} == {ex.name for ex in chapter}
        assert all(r.passed for r in mine), [(r.exercise, r.message) for r in mine if not r.passed]
    for path in chapters:
        mine = [r for r in rows if r.submission == str(path)]
        assert mine and not any(r.passed for r in mine), [r.exercise for r in mine if r.passed]
