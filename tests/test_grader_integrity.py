"""A grade means the learner solved the exercise: one hostile submission per class of attack.

Each attack's function answers correctly only if its attack *failed* (``ok``), so "passed" means
"the protection held"; attacks that try to pass without solving answer wrongly and must fail.
All submissions are graded in one class run (one zygote), next to an honest submission that must
keep its full marks. Protections that need root are skipped where the machine does not allow them.
"""
import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from course_lib.grader import cli as grade
from course_lib.grader import codec, exercises, grading
from course_lib.grader.confinement import probe
from course_lib.grader.sandbox import Pool, SandboxLimits

ROOT = Path(__file__).resolve().parent.parent
ISOLATION = probe()
needs_namespaces = pytest.mark.skipif(not ISOLATION["namespaces"], reason="mount namespaces need root")
needs_cgroup = pytest.mark.skipif(not ISOLATION["cgroup"], reason="a memory cgroup needs root and cgroupfs")
CORRECT = (ROOT / "tests" / "fixtures" / "submissions" / "correct.py").read_text().split("def count_parameters")[1]
COUNT = "sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)"
SUMMARY = ("dict(median=float(np.median(s)), iqr=float(np.subtract(*np.percentile(s, [75, 25]))), "
           "min=float(s.min()), max=float(s.max()), n=len(s))")


def _count(body: str, imports: str = "import os, sys, gc") -> str:
    """A submission whose count_parameters runs ``body`` (which sets ``ok``), then answers right iff ok."""
    return (f"{imports}\n\n\ndef count_parameters(model, trainable_only=False):\n"
            + textwrap.indent(textwrap.dedent(body), "    ") + f"\n    return {COUNT} if ok else -1\n")


ATTACKS = {
    # 1. The child holds one case at a time: no case list, no expected value, no count to cut short.
    "frames.py": _count("""
        found = []
        frame = sys._getframe()
        while frame is not None:
            for name, value in frame.f_locals.items():
                if isinstance(value, list) and len(value) > 1 and all(isinstance(v, dict) for v in value):
                    found.append(name)
                    value.clear()                           # try to cut the case list short
            frame = frame.f_back
        # gc.get_objects() walks every object of a child that has torch loaded: on the first two calls only
        # (a case list held by the child would be there from the start), so that a busy machine does not
        # turn the attack's own slowness into a time-out.
        calls = globals().setdefault("_calls", [0])
        calls[0] += 1
        for obj in gc.get_objects() if calls[0] <= 2 else ():
            if isinstance(obj, list) and len(obj) > 1 and all(isinstance(v, dict) and "model" in v for v in obj):
                found.append("gc")
                obj.clear()
        ok = not found
    """),
    # 1. Answering on the reply pipe, for every case, then leaving.
    "forger.py": _count("""
        import json
        for fd in range(3, 64):
            for i in range(64):
                frame = {"t": "outcome", "i": i, "nonce": "", "outcome": json.dumps({"value": 8})}
                try:
                    os.write(fd, (json.dumps(frame) + "\\n").encode())
                except OSError:
                    pass
        os._exit(0)
    """),
    # 2. The reference and the course's source are out of reach: every path fails.
    "references.py": _count("""
        import importlib, importlib.util, pathlib
        import course_lib
        here = pathlib.Path(course_lib.__path__[0])
        reached = []
        attempts = [
            lambda: importlib.import_module("course_lib.measurement").count_parameters,
            lambda: (sys.modules.pop("course_lib.measurement", None), importlib.import_module("course_lib.measurement").count_parameters),
            lambda: (here / "measurement.py").read_text()[:10],
            lambda: importlib.util.spec_from_file_location("m", here / "measurement.py").loader.load_module(),
            lambda: (here.parent / "solutions" / "00_measurement.ipynb").read_text()[:10],
            lambda: exec(json.loads((here.parent / "solutions" / "00_measurement.ipynb").read_text())["cells"][0]),
            lambda: importlib.reload(sys.modules["course_lib.measurement"]),
        ]
        import json
        for attempt in attempts:
            try:
                attempt()
                reached.append(attempt)
            except BaseException:
                pass
        ok = not reached
    """),
    # 5. Legitimate torch features are not flagged: torch.compile, checkpointing, even patching torch.
    "legit.py": _count("""
        import torch
        from torch.utils.checkpoint import checkpoint
        x = torch.ones(3, requires_grad=True)
        y = checkpoint(lambda t: (t * 2).sum(), x, use_reentrant=False)
        y.backward()
        compiled = torch.compile(lambda t: t + 1, backend="eager")
        torch.Tensor.is_shared = lambda self: False            # a harmless patch of torch
        ok = bool(x.grad.eq(2).all()) and float(compiled(torch.zeros(1))) == 1.0
    """),
    # 3. Writes outside the private temp dirs and SysV IPC leave no trace on the host.
    "writer.py": _count("""
        import ctypes
        ok = True
        for target in ("/run/lock/ce-left.txt", "/var/lock/ce-left.txt", "/var/tmp/ce-left.txt",
                       "/dev/shm/ce-left.txt", "/root/ce-left.txt", "/etc/ce-left.txt"):
            try:
                open(target, "w").write("left behind")
            except OSError:
                pass
        libc = ctypes.CDLL(None)
        libc.shmget(0x5EED, 4096, 0o1666)                       # IPC_CREAT | 0666
    """),
}
# 2. Library code that computes the answer is blocked by module, not by name.
ATTACKS["libraries.py"] = """import gc, importlib, importlib.util, sys
import torch
import torch.utils.flop_counter as fc


def conv2d_macs(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
    reached = []
    conv = torch.nn.Conv2d(in_channels, out_channels, kernel_size, groups=groups)
    x = torch.zeros(1, in_channels, out_h + conv.kernel_size[0] - 1, out_w + conv.kernel_size[1] - 1)
    classes = [o for o in gc.get_objects() if isinstance(o, type) and o.__name__ == "FlopCounterMode"]
    routes = [lambda: fc.FlopCounterMode, lambda: classes[0],
              lambda: importlib.reload(fc).FlopCounterMode,
              lambda: importlib.util.spec_from_file_location("fc2", fc.__file__).loader.load_module().FlopCounterMode]
    for route in routes:
        try:
            with route()(display=False) as counter:
                conv(x)
            reached.append(counter.get_total_flops())
        except BaseException:
            pass
    kh, kw = conv.kernel_size
    right = out_channels * out_h * out_w * in_channels // groups * kh * kw
    return right if not reached else -1
"""
ATTACKS["quantizers.py"] = """import torch


def quantize_affine(x, scale, zero_point, num_bits=8, signed=False):
    reached = []
    routes = [lambda: torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8),
              lambda: torch.ops.aten.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8),
              lambda: torch._C._VariableFunctions.fake_quantize_per_tensor_affine(x.float(), scale, zero_point, 0, 255),
              lambda: torch.ao.quantization.MinMaxObserver()(x.float()),
              lambda: torch._empty_affine_quantized(x.shape, scale=scale, zero_point=0, dtype=torch.qint32).copy_(x.float()),
              lambda: torch.fbgemm_linear_quantize_weight(x.float().reshape(1, -1)),
              lambda: torch.empty(x.shape, dtype=torch.qint32).copy_(x.float() / scale).tolist()]
    for route in routes:
        try:
            route()
            reached.append(route)
        except BaseException:
            pass
    qmin, qmax = (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if signed else (0, 2 ** num_bits - 1)
    right = (torch.round(x / scale) + zero_point).clamp(qmin, qmax).to(torch.int64)
    return right if not reached else right + 1
"""
ATTACKS["pruners.py"] = """import gc, importlib, sys
import torch


def magnitude_mask(weight, amount):
    reached = []
    prune = lambda: importlib.import_module("torch.nn.utils.prune")  # noqa: E731
    functions = [o for o in gc.get_objects() if callable(o) and getattr(o, "__name__", "") == "l1_unstructured"]
    routes = [lambda: prune().L1Unstructured(amount).compute_mask(weight, torch.ones_like(weight)),
              lambda: sys.modules["torch.nn.utils.prune"]._compute_nparams_toprune(amount, weight.numel()),
              lambda: importlib.reload(prune()).L1Unstructured(amount).compute_mask(weight, torch.ones_like(weight)),
              lambda: functions[0](torch.nn.Linear(2, 2), "weight", amount=1)]
    for route in routes:
        try:
            if route() is not None:
                reached.append(route)
        except BaseException:
            pass
    n = weight.numel()
    k = round(amount * n) if isinstance(amount, float) else amount
    mask = torch.ones_like(weight)
    if k:
        mask.view(-1)[torch.topk(weight.detach().abs().flatten(), k, largest=False).indices] = 0
    return mask if not reached else 1 - mask
"""
# 3. Malformed submissions are that submission's row, never the run's end.
ATTACKS["notjson.ipynb"] = "\x00\x01 not a notebook {"
ATTACKS["nested.ipynb"] = "[" * 200_000 + "]" * 200_000
ATTACKS["syntax.py"] = ("import numpy as np\n\ndef count_parameters(model, trainable_only=False:\n    return 0\n"
                        "\n# ---- cell ----\ndef roofline_time" + CORRECT.split("def roofline_time")[1])
ATTACKS["=cmd.py"] = ("def count_parameters(model, trainable_only=False):\n"
                      "    raise ValueError('=HYPERLINK(\"http://x\")\\x1b[2J\\x1b]0;pwned\\x07 \\x07bell')\n")
# Found by a red-team session: private library helpers, and reading the answer off an input.
ATTACKS["pd_private_helper.py"] = (ROOT / "tests" / "fixtures" / "attacks" / "pd_private_helper.py").read_text()
ATTACKS["lime_read_target.py"] = (ROOT / "tests" / "fixtures" / "attacks" / "lime_read_target.py").read_text()
ATTACKS["honest.py"] = "import numpy as np\nimport torch\n\ndef count_parameters" + CORRECT


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    paths = []
    for name, source in ATTACKS.items():
        path = folder / name
        if name == "syntax.py":   # two "cells": the second still defines its function
            path = folder / "syntax.ipynb"
            cells = source.split("\n# ---- cell ----\n")
            path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": c} for c in cells]}))
        else:
            path.write_text(source)
        paths.append(path)
    empty = folder / "empty" / "00_measurement.ipynb"
    empty.parent.mkdir()
    empty.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": "# my notes"}]}))
    paths.append(empty)
    out, book = folder / "grades.csv", folder / "book.csv"
    roster = folder / "roster.csv"
    roster.write_text("file,student_id\nhonest.py,s1\nabsent.py,s2\n")
    code = grade.main([*map(str, paths), "--out", str(out), "--gradebook", str(book), "--roster", str(roster),
                       "--timeout", "20", "--jobs", "2"])
    assert code == 0
    rows = {(Path(r["submission"]).name, r["exercise"]): r for r in csv.DictReader(out.open())}
    return {"rows": rows, "csv": out.read_text(), "book": list(csv.DictReader(book.open())), "folder": folder}


def row(graded, file, exercise):
    return graded["rows"][(file, exercise)]


def test_honest_submission_keeps_full_marks_next_to_attacks(graded):
    for exercise in ("count_parameters", "conv2d_macs", "arithmetic_intensity", "roofline_time"):
        assert row(graded, "honest.py", exercise)["passed"] == "True", row(graded, "honest.py", exercise)["message"]


def test_the_child_holds_no_case_list_to_read_or_cut(graded):
    r = row(graded, "frames.py", "count_parameters")
    assert r["passed"] == "True", r["message"]


def test_answering_on_the_reply_pipe_fails_the_exercise(graded):
    r = row(graded, "forger.py", "count_parameters")
    assert r["passed"] == "False"
    assert any(w in r["message"] for w in ("unexpected", "answered", "exit code")), r["message"]


@needs_namespaces
def test_references_and_solutions_are_out_of_reach(graded):
    r = row(graded, "references.py", "count_parameters")
    assert r["passed"] == "True", r["message"]


def test_library_code_is_blocked_by_module_not_by_name(graded):
    for file, exercise in (("libraries.py", "conv2d_macs"), ("quantizers.py", "quantize_affine"),
                           ("pruners.py", "magnitude_mask")):
        r = row(graded, file, exercise)
        assert r["passed"] == "True", (file, r["message"])


def test_private_helpers_and_answers_read_off_inputs_do_not_pass(graded):
    for file, exercise in (("pd_private_helper.py", "partial_dependence"),
                           ("lime_read_target.py", "lime_tabular")):
        r = row(graded, file, exercise)
        assert r["passed"] == "False", (file, exercise)


def test_ordinary_torch_features_and_patches_are_not_flagged(graded):
    r = row(graded, "legit.py", "count_parameters")
    assert r["passed"] == "True", r["message"]


@needs_namespaces
def test_no_host_directory_stays_writable_and_ipc_is_private(graded):
    assert row(graded, "writer.py", "count_parameters")["passed"] == "True"
    for target in ("/run/lock/ce-left.txt", "/var/lock/ce-left.txt", "/var/tmp/ce-left.txt", "/dev/shm/ce-left.txt",
                   "/root/ce-left.txt", "/etc/ce-left.txt"):
        assert not os.path.exists(target), target
    shm = subprocess.run(["ipcs", "-m"], capture_output=True, text=True).stdout
    assert "0x00005eed" not in shm


def test_malformed_submissions_become_rows_with_reasons(graded):
    assert "not a readable notebook" in row(graded, "notjson.ipynb", "(none)")["message"]
    assert "not a readable notebook" in row(graded, "nested.ipynb", "(none)")["message"]
    syntax = row(graded, "syntax.ipynb", "count_parameters")["message"]
    assert syntax.startswith("does not parse: line 3 of cell 1") and "count_parameters is not defined" in syntax
    assert row(graded, "syntax.ipynb", "roofline_time")["passed"] == "True"


def test_empty_notebook_counts_zero_of_its_chapter_and_roster_lists_everyone(graded):
    empty = [r for (f, _), r in graded["rows"].items() if f == "00_measurement.ipynb"]
    assert len(empty) == 5 and all(r["passed"] == "False" and r["message"] == "missing" for r in empty)
    book = {r["student_id"]: r for r in graded["book"]}
    assert book["s1"]["total"] == "5"
    assert book["s2"]["note"] == "no submission" and book["s2"]["total"] == "0"
    assert book["00_measurement"]["max_total"] == "5"


def test_csv_cells_cannot_run_as_formulas_or_terminal_escapes(graded):
    book = {r["file"]: r for r in graded["book"]}
    assert "'=cmd.py" in book
    message = row(graded, "=cmd.py", "count_parameters")["message"]
    assert "=HYPERLINK" in message and "\x1b" not in graded["csv"] and "\x07" not in graded["csv"]
    for line in csv.reader(graded["csv"].splitlines()[1:]):
        assert all(not cell.startswith(("=", "+", "-", "@")) for cell in line if cell), line


def test_a_file_named_like_an_option_is_graded_not_obeyed(tmp_path, monkeypatch):
    honest = tmp_path / "bob.py"
    honest.write_text("import numpy as np\nimport torch\n\ndef count_parameters" + CORRECT)
    trap = tmp_path / "--gradebook=bob.py"
    trap.write_text(honest.read_text())
    monkeypatch.chdir(tmp_path)
    before = honest.read_text()
    assert grade.main([trap.name, honest.name, "--exercise", "count_parameters", "--out", "grades.csv"]) == 0
    assert honest.read_text() == before
    assert len(list(csv.DictReader(open("grades.csv")))) == 2
    assert grade.main([honest.name, "--out", "bob.py"]) == 2          # never write over a submission


def test_default_seed_is_fresh_and_printed(tmp_path, capsys):
    path = tmp_path / "stub.py"
    path.write_text("def conv2d_macs(*args, **kwargs):\n    raise NotImplementedError\n")
    grade.main([str(path), "--exercise", "conv2d_macs"])
    grade.main([str(path), "--exercise", "conv2d_macs"])
    seeds = [line for line in capsys.readouterr().out.splitlines() if line.startswith("grading with seed")]
    assert len(seeds) == 2 and seeds[0] != seeds[1]


def test_time_limit_and_memory_messages(tmp_path):
    loop = tmp_path / "loop.py"
    loop.write_text("def count_parameters(model, trainable_only=False):\n    while True:\n        pass\n")
    hog = tmp_path / "hog.py"             # 4 processes x 384 MB, each under the per-process limit
    hog.write_text("import os, time\n\ndef count_parameters(model, trainable_only=False):\n"
                   "    for _ in range(3):\n        if os.fork() == 0:\n"
                   "            blocks = [bytearray(64 * 2**20) for _ in range(6)]\n            time.sleep(60)\n"
                   "            os._exit(0)\n    blocks = [bytearray(64 * 2**20) for _ in range(6)]\n"
                   "    time.sleep(60)\n    return 0\n")
    rows = grade.grade_submissions([loop], only=["count_parameters"], jobs=1, limits=SandboxLimits(timeout_s=3))
    assert "time limit of 3 s exceeded" in rows[0].message
    rows = grade.grade_submissions([hog], only=["count_parameters"], jobs=1,
                                   limits=SandboxLimits(timeout_s=20, memory_mb=600))
    if ISOLATION["cgroup"]:        # only a limit for the exercise as a whole stops it
        assert "ran out of memory" in rows[0].message, rows[0].message
    assert not rows[0].passed


def test_two_graders_never_share_uids():
    with Pool(2) as first, Pool(2) as second:
        if not first.isolation["uid_drop"]:
            pytest.skip("uid slots need root")
        assert len(first.isolation["uids"]) == 2 and not set(first.isolation["uids"]) & set(second.isolation["uids"])


def test_two_concurrent_runs_do_not_kill_each_others_children(tmp_path):
    killer = tmp_path / "a" / "killer.py"
    sleeper = tmp_path / "b" / "sleeper.py"
    killer.parent.mkdir()
    sleeper.parent.mkdir()
    killer.write_text("import os, signal, time\n\ndef count_parameters(model, trainable_only=False):\n"
                      "    end = time.time() + 3\n    while time.time() < end:\n"
                      "        try:\n            os.kill(-1, signal.SIGKILL)\n        except OSError:\n            pass\n"
                      f"    return {COUNT}\n")
    sleeper.write_text(f"import time\n\ndef count_parameters(model, trainable_only=False):\n"
                       f"    time.sleep(0.05)\n    return {COUNT}\n")
    outs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    runs = [subprocess.Popen([sys.executable, "-m", "course_lib.grade", str(path), "--exercise", "count_parameters",
                              "--out", str(out), "--timeout", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for path, out in zip((killer, sleeper), outs)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    results = [next(csv.DictReader(out.open())) for out in outs]
    assert results[1]["passed"] == "True", results[1]["message"]      # the sleeper survived the killer's kill(-1)


def test_nothing_an_input_carries_holds_the_expected_answer():
    """No attribute, closure or default of any built input equals the expected result."""
    for name in exercises.names():
        ex = exercises.get(name)
        cases = grading.make_cases(name, 0)[:12]
        for case, expected in zip(cases, grading.expected_outcomes(name, cases)):
            if expected.raised:
                continue
            args, kwargs = ex.build(case)
            for obj in [*args, *kwargs.values()]:
                held = list(getattr(obj, "__dict__", {}).values())
                held += [c.cell_contents for c in (getattr(obj, "__closure__", None) or ())]
                for value in held:
                    try:
                        same = ex.compare(expected.value, codec.decode(codec.encode(value))) is None
                    except Exception:  # noqa: BLE001 - not comparable: not the answer
                        same = False
                    assert not same, f"{name}: an input object carries the expected answer"


def test_strict_errors_makes_invalid_input_count(tmp_path):
    lax = tmp_path / "lax.py"
    lax.write_text("def conv2d_macs(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):\n"
                   "    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size\n"
                   "    return out_channels * out_h * out_w * in_channels // groups * kh * kw\n")
    relaxed = grade.grade_submissions([lax], only=["conv2d_macs"])[0]
    strict = grade.grade_submissions([lax], only=["conv2d_macs"], strict_errors=True)[0]
    assert relaxed.passed and "also:" in relaxed.message and "the reference raises ValueError" in relaxed.message
    assert not strict.passed and "the reference raises ValueError" in strict.message


def test_failure_message_names_the_first_differing_element_and_the_seed():
    import torch

    def off_by_one_at_the_end(x, scale, zero_point, num_bits=8, signed=False):
        qmin, qmax = (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if signed else (0, 2 ** num_bits - 1)
        q = (torch.round(x / scale) + zero_point).clamp(qmin, qmax).to(torch.int64)
        q.view(-1)[-1] += 1 if q.numel() > 3 else 0
        return q
    cases = grading.make_cases("quantize_affine", 5)
    verdict = grading.judge("quantize_affine", cases, grading.expected_outcomes("quantize_affine", cases),
                            grading.run_cases(off_by_one_at_the_end, "quantize_affine", cases), seed=5)
    assert not verdict.passed
    assert "code[" in verdict.message and "expected" in verdict.message
    assert "check('quantize_affine', quantize_affine, seed=5)" in verdict.message


def test_grading_speed_is_reported_by_the_benchmark():
    """The benchmark script runs (its figure is measured on a quiet machine and stated in the README)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grade_class.py"), "--students", "6",
                          "--timeout", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gradings/s" in out.stdout and time.perf_counter() - started < 300


def test_forbidding_a_top_level_name_that_is_not_installed_is_harmless():
    # An exercise may forbid a library a machine lacks (statsmodels): nothing to block, no crash.
    from course_lib.grader import guards
    assert guards._resolve("no_such_statistics_library") is None
