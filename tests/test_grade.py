"""The classroom grader end to end: full marks, zero, missing, and hostile submissions that fail alone."""
import csv
import os
from pathlib import Path

import pytest

from course_lib.grader import cli as grade
from course_lib.grader import grading
from course_lib.grader.sandbox import SandboxLimits
from course_lib.grader.submission import extract_definitions, load_submission

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "fixtures" / "submissions"
CHAPTER00 = ["count_parameters", "conv2d_macs", "arithmetic_intensity", "roofline_time", "mcnemar_exact"]


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
    ("arithmetic_intensity", "printed more than"),
])
def test_hostile_a_fails_each_exercise_alone(graded, exercise, message):
    r = row(graded, "submissions/hostile_a.py", exercise)
    assert r["passed"] == "False" and message in r["message"]


@pytest.mark.parametrize("exercise,message", [
    ("count_parameters", "os._exit"),
    ("roofline_time", "expected"),          # patching torch in the child changes nothing: compared in the grader
    ("conv2d_macs", "FlopCounterMode.__init__ is not available while grading"),
    ("arithmetic_intensity", "course_lib.measurement.arithmetic_intensity is not available while grading"),
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


def test_extract_keeps_imports_defs_constants_and_helper_classes_only():
    code, functions, notes = extract_definitions([
        "import os\nx = 1\nprint(x)\n%time f()\n\ndef f():\n    return x\n",
        "class A:\n    pass\nfrom math import pi", "def broken(:",
        "N = len([1, 2])\nLEVELS: tuple = (1, 2, 4)\nclass Evil:\n    while True:\n        pass\n",
        "class Loud:\n    print('defining runs code')\nclass Made(type('Base', (), {})):\n    pass\n",
        "import torch\nclass Round(torch.autograd.Function):\n    'doc'\n    SCALE = 2 ** 8\n"
        "    @staticmethod\n    def forward(ctx, x):\n        return x.round()\n"])
    assert functions == ["f"] and "print" not in code and "from math import pi" in code
    assert "x = 1" in code and "class A" in code and "LEVELS: tuple = (1, 2, 4)" in code     # constants, helpers
    assert "class Round(torch.autograd.Function)" in code and "SCALE = 2 ** 8" in code
    assert "N = len" not in code and "Evil" not in code and "Loud" not in code and "Made" not in code  # calls, loops
    assert notes and "does not parse" in notes[0]


def test_magics_are_read_as_ipython_reads_them_and_only_in_notebooks():
    cell = "ok = (1\n!= 2)\nrest = (3\n% 2)\n%time f()\n!ls -l\n\ndef g():\n    return ok, rest\n"
    code, functions, notes = extract_definitions([cell])
    assert functions == ["g"] and not notes
    assert "ok = 1 != 2" in code and "rest = 3 % 2" in code and "time" not in code and "ls" not in code
    code, functions, _ = extract_definitions(["%%time\ndef h():\n    return 1\n"])
    assert functions == ["h"]                                     # a cell magic's body is kept
    _, _, notes = extract_definitions(["%time f()\ndef h():\n    return 1\n"], notebook=False)
    assert notes and "does not parse: line 1" in notes[0]         # a .py file is plain Python


def test_helpers_a_learner_writes_are_graded_with_the_answer(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in [
        "import numpy as np\nMS_PER_S = 1000.0\n\ndef to_ms(s, factor=MS_PER_S):\n    return s * factor\n",
        "class Cost:\n    'what arithmetic_intensity returns'\n    KEYS = ('flops', 'bytes', 'intensity')\n",
        "def count_parameters(model, trainable_only=False):\n    total = 0\n    for p in model.parameters():\n"
        "        if (p.requires_grad\n            != False) or not trainable_only:\n            total += p.numel()\n"
        "    return int(to_ms(total, 1))\n",
        "def arithmetic_intensity(layer, input_shape):\n    import torch\n"
        "    x = torch.zeros(input_shape, dtype=getattr(layer, 'weight', torch.zeros(0)).dtype)\n"
        "    y = layer(x)\n"
        "    per_output = layer.weight[0].numel() if hasattr(layer, 'weight') else 0.5\n"
        "    flops = int(2 * y.numel() * per_output)\n"
        "    moved = x.nbytes + y.nbytes + sum(p.nbytes for p in layer.parameters())\n"
        "    return dict(zip(Cost.KEYS, (flops, moved, flops / moved)))\n",
        "PEAK = measured_peak()\n\ndef roofline_time(flops, bytes_moved, peak_flops, bandwidth):\n"
        "    return max(flops / peak_flops, bytes_moved / bandwidth) + 0 * PEAK\n"]]
    path = tmp_path / "helpers.ipynb"
    nbformat.write(nb, path)
    rows = {r.exercise: r for r in grade.grade_submissions([path], limits=SandboxLimits(timeout_s=10))}
    assert rows["count_parameters"].passed, rows["count_parameters"].message       # constant, default value, !=
    assert rows["arithmetic_intensity"].passed, rows["arithmetic_intensity"].message  # a helper class
    roof = rows["roofline_time"]                                   # a constant that needs a call is not kept
    assert not roof.passed and "NameError" in roof.message and "constants that call nothing" in roof.message


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


def test_invalid_input_is_a_note_whatever_the_function_does_there(tmp_path):
    """Valid-input cases run first; on invalid input a NotImplementedError, a crash or a hang is a note."""
    path = tmp_path / "lenient.py"
    path.write_text(
        "import math, os\n\n"
        "def conv2d_macs(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):\n"
        "    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size\n"
        "    if min(in_channels, out_channels, kh, kw, out_h, out_w, groups) < 1 or in_channels % groups "
        "or out_channels % groups:\n"
        "        while True:\n"
        "            pass\n"
        "    return out_channels * out_h * out_w * (in_channels // groups) * kh * kw\n\n"
        "def roofline_time(flops, bytes_moved, peak_flops, bandwidth):\n"
        "    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in "
        "(flops, bytes_moved, peak_flops, bandwidth)) or min(flops, bytes_moved) < 0 "
        "or min(peak_flops, bandwidth) <= 0:\n"
        "        raise NotImplementedError('invalid inputs are out of my scope')\n"
        "    return max(flops / peak_flops, bytes_moved / bandwidth)\n\n"
        "def count_parameters(model, trainable_only=False):\n"
        "    raise NotImplementedError\n")
    rows = {r.exercise: r for r in grade.grade_submissions([path], limits=SandboxLimits(timeout_s=4))}
    macs, roof = rows["conv2d_macs"], rows["roofline_time"]
    assert macs.passed and "time limit" in macs.message and "got no answer" in macs.message, macs.message
    assert roof.passed and "NotImplementedError" in roof.message, roof.message
    assert not rows["count_parameters"].passed and rows["count_parameters"].message.startswith("not implemented")
    strict = {r.exercise: r for r in grade.grade_submissions([path], limits=SandboxLimits(timeout_s=4),
                                                              strict_errors=True)}
    assert not strict["conv2d_macs"].passed and not strict["roofline_time"].passed


def test_judge_reads_not_implemented_on_invalid_input_as_a_note():
    from course_lib.grader.codec import Outcome
    cases = grading.make_cases("roofline_time", 0)
    cases, expected = grading.valid_first(cases, grading.expected_outcomes("roofline_time", cases))
    n_valid = sum(not e.raised for e in expected)
    assert 0 < n_valid < len(cases) and not any(e.raised for e in expected[:n_valid])        # valid first
    not_impl = Outcome(error_types=("NotImplementedError",), error_message="out of scope")
    answered = expected[:n_valid] + [not_impl]                    # stopped at the first invalid case
    verdict = grading.judge("roofline_time", cases, expected, answered)
    assert verdict.passed and any("got no answer" in n for n in verdict.notes), verdict.text()
    assert not grading.judge("roofline_time", cases, expected, answered, strict_errors=True).passed
    stub = grading.judge("roofline_time", cases, expected, [not_impl])       # on a valid case: a stub
    assert not stub.passed and stub.message.startswith("not implemented")
    cut = grading.judge("roofline_time", cases, expected, expected[:n_valid - 1], stopped="time limit of 4 s exceeded")
    assert not cut.passed and "time limit" in cut.message                   # a valid case unanswered decides
    late = grading.judge("roofline_time", cases, expected, expected[:n_valid], stopped="time limit of 4 s exceeded")
    assert late.passed and "time limit" in late.text()


def test_same_file_name_in_student_folders_gets_unique_ids(tmp_path, capsys):
    from course_lib.grader.sandbox import _clean
    ids = grade.student_ids(["alice/ch00.ipynb", "bob/ch00.ipynb", "carol.py"], {})
    assert ids == {"alice/ch00.ipynb": "alice/ch00", "bob/ch00.ipynb": "bob/ch00", "carol.py": "carol"}
    with pytest.raises(ValueError, match="would share a student id .*alice/ch00.ipynb, bob/ch00.ipynb"):
        grade.student_ids(["alice/ch00.ipynb", "bob/ch00.ipynb"], {"ch00.ipynb": "s1"})
    assert grade.student_ids(["alice/ch00.ipynb", "bob/ch00.ipynb"],
                             {"alice/ch00.ipynb": "s1", "bob/ch00.ipynb": "s2"}) == \
        {"alice/ch00.ipynb": "s1", "bob/ch00.ipynb": "s2"}
    # the command line refuses a gradebook whose ids would collide, before grading anything
    for who in ("alice", "bob"):
        (tmp_path / who).mkdir()
        (tmp_path / who / "ch00.py").write_text("def count_parameters(model, trainable_only=False):\n    return 0\n")
    roster = tmp_path / "roster.csv"
    roster.write_text("file,student_id\nch00.py,s1\n")
    code = grade.main([str(tmp_path / "alice" / "ch00.py"), str(tmp_path / "bob" / "ch00.py"),
                       "--gradebook", str(tmp_path / "book.csv"), "--roster", str(roster)])
    assert code == 2 and "would share a student id" in capsys.readouterr().err
    # a bidi override or a newline in a file name cannot disguise a line of the summary
    assert _clean("alice\u202eyp.exe\u2066") == "aliceyp.exe"
    row = grade.GradeRow("x/evil\nname\u202e.py", "count_parameters", True, 1.0, 1.0, "ok")
    table = grade.summary_table([row])
    assert len(table.splitlines()) == 2 and "evil name.py" in table
