"""Each protection of the classroom grader, tested with a hostile submission.

A hostile function computes the right answer only if its attack *failed*, so "the exercise passed"
means "the protection held". Tests of protections that need root (namespaces, a uid per child) are
skipped where the machine does not allow them; the grader says which are active (Pool.isolation).
"""
import csv
import os
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from course_lib.grader import cli as grade
from course_lib.grader.confinement import live_processes as _live_processes, probe as isolation_available
from course_lib.grader.sandbox import Pool, SandboxLimits, parse_answer

ROOT = Path(__file__).resolve().parent.parent
CORRECT_COUNT = "sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)"
ISOLATION = isolation_available()
needs_root = pytest.mark.skipif(not (ISOLATION["namespaces"] and ISOLATION["uid_drop"]),
                                reason="namespaces and uid separation need root")


def attack(tmp_path: Path, name: str, body: str, imports: str = "import os") -> Path:
    """A submission whose count_parameters runs ``body`` (which sets ``ok``) then answers right iff ok."""
    path = tmp_path / f"{name}.py"
    path.write_text(f"{imports}\n\n\ndef count_parameters(model, trainable_only=False):\n"
                    + textwrap.indent(textwrap.dedent(body), "    ")
                    + f"\n    return {CORRECT_COUNT} if ok else -1\n")
    return path


def grade_one(path: Path, timeout: float = 6.0) -> grade.GradeRow:
    rows = grade.grade_submissions([path], only=["count_parameters"], limits=SandboxLimits(timeout_s=timeout), jobs=1)
    assert len(rows) == 1
    return rows[0]


@needs_root
def test_cannot_signal_the_grader(tmp_path):
    path = attack(tmp_path, "killer", f"""
        import signal
        ok = True
        for pid in {{os.getppid(), {os.getpid()}}} - {{0, os.getpid()}}:
            try:
                os.kill(pid, signal.SIGKILL)
                ok = False
            except (PermissionError, ProcessLookupError):   # another uid, or not even visible (PID namespace)
                pass
    """)
    row = grade_one(path)
    assert row.passed, row.message          # and this test process is still alive to check it


@needs_root
def test_cannot_read_other_submissions(tmp_path):
    secret = tmp_path / "other_student.py"
    secret.write_text("# answers: 42\n")
    path = attack(tmp_path, "reader", f"""
        try:
            ok = "42" not in open({str(secret)!r}).read()
        except OSError:
            ok = True
    """)
    row = grade_one(path)
    assert row.passed, row.message


@needs_root
def test_cannot_write_outside_its_temporary_directory(tmp_path):
    outside = tmp_path / "written_by_submission.txt"
    repo_file = ROOT / "written_by_submission.txt"
    path = attack(tmp_path, "writer", f"""
        ok = True
        for target in ({str(outside)!r}, {str(repo_file)!r}):
            try:
                open(target, "w").write("pwned")
                ok = False
            except OSError:
                pass
        open("/tmp/left-behind.txt", "w").write("private /tmp")   # allowed: a tmpfs of its own
    """)
    row = grade_one(path)
    assert row.passed, row.message
    assert not outside.exists() and not repo_file.exists() and not Path("/tmp/left-behind.txt").exists()


@needs_root
def test_cannot_open_network_connections(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    path = attack(tmp_path, "network", f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"leak")
            ok = False
        except OSError:
            ok = True
    """)
    row = grade_one(path)
    thread.join()
    listener.close()
    assert row.passed, row.message
    assert accepted == []


@needs_root
def test_fork_bomb_stays_bounded_and_is_cleaned_up(tmp_path):
    path = attack(tmp_path, "forkbomb", """
        import time
        children = 0
        for _ in range(10_000):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                children += 1
            except OSError:
                break
        ok = children < 10_000
        time.sleep(60)
    """)
    # The processes left are counted for this grader's own uids, while its server still holds them (their flock):
    # counting a fixed range of uids also counted the processes of other graders running on the machine (the flaky
    # failures listed them: once a whole fork bomb, 64 processes, of another test run's uid).
    from course_lib.grader import grading
    with Pool(1, SandboxLimits(timeout_s=3.0), preload=[]) as pool:
        uids = pool.isolation["uids"]
        _, result = next(pool.run([(path.read_text(), "count_parameters",
                                    grading.make_cases("count_parameters", 0))]))
        assert result.kind == "timeout" and "time limit of 3 s exceeded" in result.error, result.error
        assert [pid for uid in uids for pid in _live_processes(uid)] == []


def test_file_size_is_limited(tmp_path):
    path = attack(tmp_path, "bigfile", """
        with open("big.bin", "wb") as handle:
            handle.write(b"x" * (64 * 2**20))
        ok = True
    """)
    row = grade_one(path)
    assert not row.passed and "File too large" in row.message


def test_forged_reply_is_a_failed_exercise_not_a_crash(tmp_path):
    path = attack(tmp_path, "forger", """
        for fd in range(3, 256):
            try:
                os.write(fd, b'{"t": "outcome", "i": 0, "outcome": "{\\\\"value\\\\": 1}"}\\n')
            except OSError:
                pass
        ok = True
    """)
    row = grade_one(path)
    assert not row.passed and ("unexpected" in row.message or "answered twice" in row.message), row.message


@pytest.mark.parametrize("outcomes", ["x", [1], ['{"value": {"__tensor__": "@@"}}'], ['{"error_types": [1, 2]}'],
                                      ['{"value": 1}', '{"value": 2}', '{"value": 3}'], ["not json"],
                                      ["[" * 100_000 + "]" * 100_000]])
def test_parse_answer_rejects_malformed_answers(outcomes):
    result = parse_answer({"outcomes": outcomes, "error": None}, n_cases=2)
    assert result.error and ("malformed answer" in result.error or "could not be read" in result.error)


def test_same_seed_same_grades_and_seed_changes_the_inputs():
    subs = [ROOT / "tests" / "fixtures" / "submissions" / name for name in ("correct.py", "hostile_c.py")]
    first = grade.grade_submissions(subs, seed=11, limits=SandboxLimits(timeout_s=6))
    second = grade.grade_submissions(subs, seed=11, limits=SandboxLimits(timeout_s=6))
    assert [(r.exercise, r.passed, r.message) for r in first] == [(r.exercise, r.passed, r.message) for r in second]
    other = grade.grade_submissions(subs[1:], seed=12, limits=SandboxLimits(timeout_s=6))
    macs = lambda rows: next(r.message for r in rows if r.exercise == "conv2d_macs" and "hostile" in r.submission)  # noqa: E731
    assert grade.grading.make_cases("conv2d_macs", 11) != grade.grading.make_cases("conv2d_macs", 12)
    assert macs(first) == macs(second) and "case" in macs(other)


def test_pool_reports_which_protections_are_active():
    with Pool(1) as pool:
        assert {"root", "namespaces", "pid_namespace", "uid_drop", "cgroup"} <= set(pool.isolation)
        assert pool.isolation["uid_drop"] == (os.geteuid() == 0)


def test_sample_class_gradebook(tmp_path):
    folder = ROOT / "tests" / "fixtures" / "sample_class"
    book = tmp_path / "gradebook.csv"
    code = grade.main([*map(str, sorted(folder.glob("*.py"))), "--gradebook", str(book),
                       "--roster", str(folder / "roster.csv"), "--timeout", "4", "--seed", "0"])
    assert code == 0
    rows = {r["student_id"]: r for r in csv.DictReader(book.open())}
    assert list(next(iter(rows.values()))) == ["student_id", "file", "count_parameters", "conv2d_macs",
                                               "arithmetic_intensity", "roofline_time", "mcnemar_exact", "total",
                                               "max_total", "percent", "late", "note", "seed", "grader_version",
                                               "graded_at"]
    assert rows["s1001"]["total"] == "5" and rows["s1001"]["max_total"] == "5"        # alice: all correct
    assert rows["s1002"]["count_parameters"] == "0" and rows["s1002"]["mcnemar_exact"] == "0"
    assert rows["s1002"]["total"] == "2"                                               # bob: three wrong
    assert rows["s1003"]["total"] == "0"                                               # carol: stubs
    assert rows["dave"]["conv2d_macs"] == "0" and rows["dave"]["total"] == "1"  # not in roster; loops, one missing
    assert rows["s1005"]["total"] == "0" and rows["s1005"]["max_total"] == "5"      # erin: in the roster only
    assert rows["s1005"]["note"] == "no submission"
    assert rows["s1001"]["percent"] == "100.0" and rows["s1002"]["percent"] == "40.0"
    assert all(r["seed"] == "0" and r["graded_at"] for r in rows.values())

    def without_time(path):                                                        # the run's time differs
        return [r[:-1] for r in csv.reader(path.open())]
    assert without_time(book) == without_time(folder / "gradebook.csv")                # the shipped sample


def test_roster_must_have_the_columns(tmp_path):
    bad = tmp_path / "roster.csv"
    bad.write_text("name,id\nalice,1\n")
    with pytest.raises(ValueError, match="roster must be a CSV with the columns 'file' and 'student_id'"):
        grade.read_roster(bad)


def test_without_root_protections_the_grades_are_the_same(tmp_path, monkeypatch):
    """As a normal user (no namespaces, uid slots or cgroup) the grader still runs and grades alike:
    the limits, the disabled modules and the grader-side comparisons do not need root."""
    folder = ROOT / "tests" / "fixtures" / "sample_class"
    subs = sorted(folder.glob("*.py"))
    with_root = grade.grade_submissions(subs, limits=SandboxLimits(timeout_s=4))
    monkeypatch.setenv("COURSE_GRADER_ISOLATION", "off")
    with Pool(1) as pool:
        assert not pool.isolation["namespaces"] and not pool.isolation["uid_drop"]
    without = grade.grade_submissions(subs, limits=SandboxLimits(timeout_s=4))
    assert [(r.exercise, r.passed) for r in with_root] == [(r.exercise, r.passed) for r in without]


# ----------------------------------------------------------------------------- nothing returned runs unbounded
def test_returned_layers_larger_than_the_given_ones_are_never_run():
    """§2 of the grader's red-team: 3000 channels with padding 64 once cost the grader 1.6 GB and 40 s."""
    import time

    import torch
    from torch import nn

    from grader_contract import grade

    def shrink_huge(conv, next_conv, keep):
        return (nn.Conv2d(conv.in_channels, 3000, 1, padding=64),
                nn.Conv2d(3000, next_conv.out_channels, 1, padding=64))

    def factorize_huge(conv, rank):
        return nn.Sequential(nn.Conv2d(conv.in_channels, 2000, 1, padding=64), nn.Conv2d(2000, conv.out_channels, 1))

    def shrink_mimic(conv, next_conv, keep):          # a dict shaped like the grader's own derived answer
        return {"conv": {}, "next_conv": {}, "output": torch.zeros(2, next_conv.out_channels, 12, 12)}

    for name, fn in (("shrink_conv_pair", shrink_huge), ("factorize_conv", factorize_huge),
                     ("shrink_conv_pair", shrink_mimic)):
        start = time.perf_counter()
        passed, message = grade(name, fn, 0)
        assert not passed and time.perf_counter() - start < 15, (name, message)
        assert ("not run" in message or "expected" in message), message


def test_an_answer_with_thousands_of_layers_is_not_rebuilt():
    from torch import nn

    from course_lib.grader import codec

    tree = nn.Sequential(*[nn.Sequential(*[nn.ReLU() for _ in range(16)]) for _ in range(16)])     # 273 layers
    with pytest.raises(codec.DecodeError, match="at most 64 layers"):
        codec.decode(codec.encode(tree))
    small = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    assert isinstance(codec.decode(codec.encode(small)), nn.Sequential)       # a normal answer still decodes
    assert isinstance(codec.decode(codec.encode([small] * 10)), list)          # 40 layers: under the cap
