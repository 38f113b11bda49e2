"""What a learner reads and an instructor hands back: message formats, the chapter guess, cell numbering,
credit (weights, partial), feedback files, the common-mistakes report, Canvas/Moodle exports, late flags."""
import argparse
import csv
import datetime as dt
import json
import os
from pathlib import Path

import pytest
import torch

from course_lib import progress
from course_lib.grader import cli, exercises, grading, reports
from course_lib.grader.submission import load_submission

ROOT = Path(__file__).resolve().parent.parent
CORRECT = (ROOT / "tests" / "fixtures" / "submissions" / "correct.py").read_text()
# count_parameters that ignores trainable_only: right on the cases with trainable_only=False only
HALF_WRONG = CORRECT.replace("def count_parameters(model, trainable_only=False):",
                             "def count_parameters(model, trainable_only=False):\n"
                             "    return sum(p.numel() for p in model.parameters())\n\n\n"
                             "def _unused(model, trainable_only=False):")


# --- the chapter named by its number -------------------------------------------------------------------

def test_a_chapter_is_named_by_its_number_or_its_id():
    first = exercises.chapters()[0]
    number = first.split("_")[0]
    assert exercises.resolve_chapter(number) == first
    assert exercises.resolve_chapter(str(int(number))) == first
    assert exercises.resolve_chapter(first) == first
    with pytest.raises(ValueError, match=r"chapter must be one of .*or its number.*got '99'"):
        exercises.resolve_chapter("99")
    assert cli._parser().parse_args(["a.py", "--chapter", number]).chapter == first
    with pytest.raises(argparse.ArgumentTypeError):
        cli._chapter_arg("pruning")


# --- messages a learner reads ---------------------------------------------------------------------------

def _reference_or_big_tensor(name):
    """The reference on valid inputs; a 10,000-element tensor where the reference raises (no validation)."""
    ref = grading.reference(name)

    def answer(*args, **kwargs):
        try:
            return ref(*args, **kwargs)
        except (ValueError, TypeError):
            return torch.arange(10_000.0)
    return answer


def test_notes_on_invalid_input_are_one_short_line_each_with_values_summarised():
    verdict = None
    for name in exercises.names():                       # an exercise with an invalid-input case and tensors
        cases = grading.make_cases(name, 0)
        expected = grading.expected_outcomes(name, cases)
        if any(e.raised for e in expected):
            got = grading.run_cases(_reference_or_big_tensor(name), name, cases)
            verdict = grading.judge(name, cases, expected, got)
            if verdict.notes and any("returned" in n for n in verdict.notes):
                break
    assert verdict is not None and verdict.passed, verdict
    returned = [n for n in verdict.notes if "returned" in n]
    assert returned
    for note in verdict.notes:
        assert "\n" not in note and len(note) <= 410, note
        assert "graded:" not in note                     # invalid inputs are not graded: never say they are
    assert "Tensor(shape=(10000,), dtype=float32, first: 0.0, 1.0, 2.0, 3.0, ...)" in returned[0]
    assert verdict.text().count("not graded") == 1       # said once, in the summary


def test_a_failure_shows_expected_and_got_even_for_long_values():
    name = "count_parameters"
    cases = grading.make_cases(name, 0)
    expected = grading.expected_outcomes(name, cases)
    got = grading.run_cases(lambda model, trainable_only=False: list(range(5000)), name, cases)
    verdict = grading.judge(name, cases, expected, got)
    assert not verdict.passed
    lines = verdict.message.split("\n")
    assert any(line.startswith("  expected: ") for line in lines) and any(line.startswith("  got:      ")
                                                                          for line in lines)
    assert len(verdict.message) < 2500


def test_progress_wraps_a_reason_at_word_boundaries_instead_of_cutting_it():
    reason = "case 3 of 12: " + " ".join(f"word{i}" for i in range(60))
    rows = [progress.ProgressRow("01_pruning", "magnitude_mask", "fail", reason)]
    table = progress.format_table(rows, width=60)
    assert all(len(line) <= 60 for line in table.splitlines())
    assert " ".join(table.split()).endswith(" ".join(reason.split()))   # every word, none cut


def test_a_cell_that_does_not_parse_is_named_as_jupyterlab_numbers_it(tmp_path):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Title"},
        {"cell_type": "code", "metadata": {}, "execution_count": 3, "outputs": [], "source": "import math"},
        {"cell_type": "markdown", "metadata": {}, "source": "text"},
        {"cell_type": "code", "metadata": {}, "execution_count": 7, "outputs": [],
         "source": "def count_parameters(model:\n    return 0\n"}]}
    path = tmp_path / "00_measurement.ipynb"
    path.write_text(json.dumps(nb))
    notes = load_submission(path).notes
    assert notes and notes[0].startswith("does not parse: line 1 of cell 4 of 4, [7], starting 'def count_parameters(model:'")


# --- credit, reports and exports ------------------------------------------------------------------------

def _row(sub, name, passed, right, total, message="ok"):
    return cli.GradeRow(sub, name, passed, 1.0 if passed else 0.0, 1.0, message, right, total)


def test_weights_from_csv_or_toml_and_bad_files_are_refused(tmp_path):
    (tmp_path / "w.csv").write_text("exercise,weight\nconv2d_macs,2\ncount_parameters,0.5\n")
    (tmp_path / "w.toml").write_text("[weights]\nconv2d_macs = 2\ncount_parameters = 0.5\n")
    assert reports.read_weights(tmp_path / "w.csv") == reports.read_weights(tmp_path / "w.toml") == \
        {"conv2d_macs": 2.0, "count_parameters": 0.5}
    (tmp_path / "bad.csv").write_text("exercise,weight\nno_such_exercise,1\n")
    with pytest.raises(ValueError, match="unknown exercise 'no_such_exercise'"):
        reports.read_weights(tmp_path / "bad.csv")
    (tmp_path / "neg.toml").write_text("[weights]\nconv2d_macs = -1\n")
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        reports.read_weights(tmp_path / "neg.toml")
    with pytest.raises(ValueError, match="must be a .csv or .toml file"):
        reports.read_weights(tmp_path / "w.txt")


def test_credit_is_weighted_and_partial_credit_is_the_fraction_of_valid_cases():
    rows = [_row("a.py", "conv2d_macs", True, 9, 9), _row("a.py", "count_parameters", False, 3, 12, "case 4 ...")]
    whole = reports.apply_credit(rows, {"conv2d_macs": 2.0})
    assert [(r.score, r.max_score) for r in whole] == [(2.0, 2.0), (0.0, 1.0)]
    partial = reports.apply_credit(rows, {"conv2d_macs": 2.0, "count_parameters": 4.0}, partial=True)
    assert [(r.score, r.max_score) for r in partial] == [(2.0, 2.0), (1.0, 4.0)]       # 4 × 3/12


def test_deadline_flags_files_modified_later(tmp_path):
    early, late = tmp_path / "early.py", tmp_path / "late.py"
    early.write_text(""), late.write_text("")
    deadline = reports.parse_deadline("2026-12-01T23:59+00:00")
    os.utime(early, (deadline.timestamp() - 60, deadline.timestamp() - 60))
    os.utime(late, (deadline.timestamp() + 60, deadline.timestamp() + 60))
    assert reports.late_submissions([str(early), str(late)], deadline) == {str(early): False, str(late): True}
    day = reports.parse_deadline("2026-12-01")
    assert (day.hour, day.minute, day.second) == (23, 59, 59) and day.tzinfo is not None
    with pytest.raises(ValueError, match="deadline must be an ISO 8601"):
        reports.parse_deadline("Friday")


def test_lms_exports_follow_their_formats_and_are_read_back(tmp_path):
    info = reports.run_info(1234, now=dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.timezone.utc))
    rows = [_row("x/alice.py", "conv2d_macs", True, 9, 9), _row("x/alice.py", "count_parameters", True, 12, 12),
            _row("y/bob.py", "conv2d_macs", False, 2, 9, "case 1 of 9: wrong"),
            _row("y/bob.py", "count_parameters", True, 12, 12)]
    ids = {"x/alice.py": "s1001", "y/bob.py": "s1002"}
    reports.write_canvas(rows, tmp_path / "canvas.csv", ids, info, "Chapter 00")
    assert reports.read_canvas(tmp_path / "canvas.csv") == {"s1001": 2.0, "s1002": 1.0}
    with open(tmp_path / "canvas.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0][:5] == reports.CANVAS_FIXED and "seed 1234" in table[0][5] and table[1][0] == "Points Possible"
    reports.write_moodle(rows, tmp_path / "moodle.csv", ids, info, "Chapter 00", late={"y/bob.py": True})
    assert reports.read_moodle(tmp_path / "moodle.csv") == {"s1001": 2.0, "s1002": 1.0}
    with open(tmp_path / "moodle.csv", newline="") as handle:
        moodle = {r[reports.MOODLE_ID]: r for r in csv.DictReader(handle)}
    assert "not yet: conv2d_macs" in moodle["s1002"]["Feedback"] and "after the deadline" in moodle["s1002"]["Feedback"]
    assert moodle["s1001"]["seed"] == "1234" and moodle["s1001"]["graded_at"].startswith("2026-12-05T12:00")
    (tmp_path / "broken.csv").write_text("Name,Score\nalice,3\n")        # the readers apply the rules
    with pytest.raises(ValueError, match="Canvas import starts with"):
        reports.read_canvas(tmp_path / "broken.csv")
    with pytest.raises(ValueError, match="first column is an identifier"):
        reports.read_moodle(tmp_path / "broken.csv")
    (tmp_path / "over.csv").write_text(",".join(reports.CANVAS_FIXED + ["A"]) + "\nPoints Possible,,,,,2\nx,,s1,,,3\n")
    with pytest.raises(ValueError, match="outside 0..2"):
        reports.read_canvas(tmp_path / "over.csv")


def test_the_class_is_graded_with_every_instructor_output(tmp_path):
    """One run: a correct and a half-wrong submission, and an empty notebook whose name names no chapter."""
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "alice.py").write_text(CORRECT)
    (folder / "bob.py").write_text(HALF_WRONG)
    (folder / "untitled.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                                                        "cells": []}))
    (tmp_path / "weights.toml").write_text("[weights]\ncount_parameters = 4\n")
    files = sorted(map(str, folder.iterdir()))
    out = {k: tmp_path / v for k, v in dict(out="long.csv", gradebook="book.csv", mistakes="mistakes.md",
                                            canvas="canvas.csv", moodle="moodle.csv", feedback="feedback").items()}
    code = cli.main([*files, "--seed", "5", "--jobs", "2", "--timeout", "20", "--partial-credit",
                     "--weights", str(tmp_path / "weights.toml"), "--deadline", "2000-01-01",
                     *[a for k, v in out.items() for a in (f"--{k}", str(v))]])
    assert code == 0
    with open(out["gradebook"], newline="") as handle:
        book = {r["student_id"]: r for r in csv.DictReader(handle)}
    assert set(book) == {"alice", "bob", "untitled"}
    assert len({r["max_total"] for r in book.values()}) == 1             # the empty notebook: the class's chapter
    assert book["untitled"]["note"] == "chapter taken from the class" and book["untitled"]["total"] == "0"
    assert all(r["late"] == "yes" and r["seed"] == "5" and r["grader_version"].startswith("course_lib")
               for r in book.values())
    assert float(book["alice"]["percent"]) > float(book["bob"]["percent"]) > 0
    with open(out["out"], newline="") as handle:
        long = {(r["student_id"], r["exercise"]): r for r in csv.DictReader(handle)}
    bob = long[("bob", "count_parameters")]
    assert bob["passed"] == "False" and bob["max_score"] == "4"
    assert 0 < float(bob["score"]) < 4 and float(bob["score"]) == pytest.approx(
        4 * int(bob["cases_passed"]) / int(bob["cases_total"]), abs=1e-3)           # partial credit
    assert all("\n" not in r["message"] for r in long.values())
    feedback = (out["feedback"] / "bob.md").read_text()
    assert "## count_parameters: FAIL" in feedback and "check('count_parameters', count_parameters, seed=5)" in feedback
    assert "seed 5" in feedback
    assert "## count_parameters: 1 of 3 passed" in out["mistakes"].read_text()
    assert reports.read_canvas(out["canvas"])["alice"] == float(book["alice"]["total"])
    assert reports.read_moodle(out["moodle"])["bob"] == float(book["bob"]["total"])
