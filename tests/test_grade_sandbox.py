"""The graded child's root is an allow-list (issue #23 §1), and nothing it starts outlives it (§5).

Each hostile function answers right only if its attack *failed* (``ok``), so "passed" means "the
protection held". The attacks that need the child's own mount namespace are skipped where the machine
does not allow one (as a normal user); the zygote's environment and the process cleanup are tested anywhere.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from course_lib.grader import cli as grade
from course_lib.grader import confinement as cf
from course_lib.grader.sandbox import Pool, SandboxLimits

ROOT = Path(__file__).resolve().parent.parent
ISOLATION = cf.probe()
needs_namespaces = pytest.mark.skipif(not (ISOLATION["namespaces"] and ISOLATION["uid_drop"]),
                                      reason="the child's own mount namespace and uid need root")
COUNT = "sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)"


def _attack(body: str, imports: str = "import os, sys") -> str:
    """A submission whose count_parameters runs ``body`` (which sets ``ok``), then answers right iff ok."""
    return (f"{imports}\n\n\ndef count_parameters(model, trainable_only=False):\n"
            + textwrap.indent(textwrap.dedent(body), "    ") + f"\n    return {COUNT} if ok else -1\n")


def _beside_the_course(prefix: str) -> Path:
    """A world-readable folder next to this checkout (where another clone of the course would be)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=ROOT.parent))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def child_root(tmp_path_factory):
    """One class run (one zygote) holding every §1 attack, graded from a working directory that holds a
    classmate's notebook (under a mode-700 folder, and on sys.path), next to another copy of the course and
    a unix socket served by a helper outside the sandbox."""
    if not (ISOLATION["namespaces"] and ISOLATION["uid_drop"]):
        pytest.skip("the child's own mount namespace and uid need root")
    if not os.access(ROOT.parent, os.W_OK):
        pytest.skip(f"cannot create folders beside the course in {ROOT.parent}")
    base = tmp_path_factory.mktemp("cwd")
    private = base / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    classdir = private / "class"
    classdir.mkdir()
    classmate = classdir / "classmate.ipynb"
    classmate.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "# classmate's answers\n"}]}))
    copy = _beside_the_course("ce-course-copy-")
    (copy / "course_lib").mkdir(mode=0o755)
    shutil.copy(ROOT / "course_lib" / "measurement.py", copy / "course_lib" / "measurement.py")
    (copy / "course_lib" / "measurement.py").chmod(0o644)
    sockets = _beside_the_course("ce-socket-")
    path_socket = socket.socket(socket.AF_UNIX)
    path_socket.bind(str(sockets / "helper.sock"))
    (sockets / "helper.sock").chmod(0o777)
    abstract = socket.socket(socket.AF_UNIX)
    abstract_name = f"\0ce-helper-{os.getpid()}"
    abstract.bind(abstract_name)
    accepted = []
    for server in (path_socket, abstract):
        server.listen()
        server.settimeout(0.2)

    stop = threading.Event()

    def accept():
        while not stop.is_set():
            for server in (path_socket, abstract):
                try:
                    accepted.append(server.accept())
                except OSError:
                    pass

    thread = threading.Thread(target=accept)
    thread.start()
    plan = cf.child_root_plan()
    attacks = {
        # A classmate's notebook in the grader's working directory (and on its sys.path).
        "cwd_reader.py": _attack(f"""
            found = []
            for folder in sys.path + [{str(classdir)!r}, os.getcwd()]:
                try:
                    found.append(open(os.path.join(folder or ".", "classmate.ipynb")).read()[:10])
                except OSError:
                    pass
            ok = not found and not any({str(classdir)!r} in p or {str(private)!r} in p for p in sys.path)
        """),
        # Another readable copy of the course: exec its reference under another module name.
        "course_copy.py": _attack(f"""
            path = {str(copy / "course_lib" / "measurement.py")!r}
            try:
                source = open(path).read()
            except OSError:
                source = None
            ok = source is None
            if source is not None:
                try:
                    exec(compile(source, path, "exec"), {{"__name__": "course_lib.copied", "__package__": "course_lib"}})
                except BaseException:
                    pass
        """),
        # A helper outside the sandbox reached through a unix socket (a file, or the abstract namespace).
        "socket_helper.py": _attack(f"""
            import socket
            reached = []
            for address in ({str(sockets / "helper.sock")!r}, {abstract_name!r}):
                try:
                    client = socket.socket(socket.AF_UNIX)
                    client.settimeout(1)
                    client.connect(address)
                    client.sendall(b"(model, x, target)")
                    reached.append(address)
                except OSError:
                    pass
            ok = not reached
        """),
        # The child's whole tree: nothing but the allow-list (and the ancestors leading to it).
        "look_around.py": _attack(f"""
            allowed = set({plan["binds"] + list(plan["links"]) + ["/etc/passwd", "/etc/group"]!r})
            fresh = {{"/proc", "/dev", "/tmp", "/var/tmp"}}
            ancestors = {{os.path.dirname(p) for p in allowed | fresh}}
            for p in list(ancestors):
                while p != "/":
                    p = os.path.dirname(p)
                    ancestors.add(p)
            extra, stack = [], ["/"]
            while stack:
                folder = stack.pop()
                for name in os.listdir(folder):
                    path = os.path.join(folder, name)
                    if path in allowed or path in fresh:
                        continue
                    if path in ancestors and os.path.isdir(path) and not os.path.islink(path):
                        stack.append(path)
                    else:
                        extra.append(path)
            for path in ("/home", "/srv", "/run", "/var/run", "/etc/hostname", "/etc/shadow", {str(ROOT / "solutions")!r},
                         {str(ROOT / "tests")!r}, {str(ROOT / "data")!r}, {str(ROOT / "course_lib" / "measurement.py")!r},
                         {str(ROOT / "course_lib" / "stats.py")!r}, {str(ROOT / "course_lib" / "grader" / "grading.py")!r}):
                if os.path.lexists(path):
                    extra.append(path)
            if extra:
                raise RuntimeError(f"the child sees {{sorted(extra)[:8]}}")
            ok = True
        """),
    }
    for name, source in attacks.items():
        (classdir / name).write_text(source)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(classdir)
        patch.syspath_prepend(str(classdir))
        try:
            rows = grade.grade_submissions([classdir / name for name in attacks], only=["count_parameters"],
                                           limits=SandboxLimits(timeout_s=20), jobs=2)
        finally:
            stop.set()
            thread.join()
            for server in (path_socket, abstract):
                server.close()
            shutil.rmtree(copy, ignore_errors=True)
            shutil.rmtree(sockets, ignore_errors=True)
    return {Path(r.submission).name: r for r in rows} | {"accepted": accepted}


def _passed(child_root, name):
    row = child_root[name]
    assert row.passed, row.message


@needs_namespaces
def test_a_classmates_notebook_in_the_graders_working_directory_is_out_of_reach(child_root):
    _passed(child_root, "cwd_reader.py")


@needs_namespaces
def test_another_copy_of_the_course_is_out_of_reach(child_root):
    _passed(child_root, "course_copy.py")


@needs_namespaces
def test_a_unix_socket_outside_the_sandbox_cannot_be_reached(child_root):
    _passed(child_root, "socket_helper.py")
    assert child_root["accepted"] == []


@needs_namespaces
def test_the_child_sees_only_the_allow_list(child_root):
    _passed(child_root, "look_around.py")


def test_the_zygote_does_not_carry_the_graders_working_directory(tmp_path, monkeypatch):
    """The zygote's sys.path holds the folder of course_lib and the interpreter's own, whatever the grader's
    working directory and sys.path extras are."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with Pool(1) as pool:
        pid = pool._process.pid
        environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        cwd = os.readlink(f"/proc/{pid}/cwd")
        pool.isolation                       # the zygote has started
    assert environ["PYTHONPATH"] == str(ROOT)
    assert cwd == str(ROOT) and str(tmp_path) not in environ["PYTHONPATH"]


@needs_namespaces
def test_a_venv_symlinked_under_tmp_still_imports_lazily(tmp_path):
    """A venv whose real folder lives under /tmp (here: a link to a folder in /tmp whose site-packages is
    this environment's, mounted in a private namespace) keeps every lazy import in the child working."""
    site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "torch")))
    real = Path(tempfile.mkdtemp(prefix="ce-venv-", dir="/tmp"))
    try:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        (real / "bin").mkdir()
        (real / "lib" / version / "site-packages").mkdir(parents=True)
        (real / "bin" / "python").symlink_to(os.path.realpath(sys._base_executable))
        (real / "pyvenv.cfg").write_text((Path(sys.prefix) / "pyvenv.cfg").read_text())
        link = tmp_path / "venv"
        link.symlink_to(real)
        attack = tmp_path / "lazy.py"
        attack.write_text(_attack("""
            import torch._dynamo
            ok = "torch._dynamo" in sys.modules
        """))
        out = tmp_path / "grades.csv"
        script = textwrap.dedent(f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.unshare({cf.CLONE_NEWNS}) == 0
            assert libc.mount(b"none", b"/", None, {cf._MS_REC | cf._MS_PRIVATE}, None) == 0
            assert libc.mount({site.encode()!r}, {str(real / "lib" / version / "site-packages").encode()!r}, None,
                              {cf._MS_BIND}, None) == 0
            os.execv({str(link / "bin" / "python")!r}, [{str(link / "bin" / "python")!r}, "-m", "course_lib.grade", {str(attack)!r},
                     "--exercise", "count_parameters", "--out", {str(out)!r}, "--timeout", "30", "--jobs", "1"])
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = list(__import__("csv").DictReader(out.open()))
        assert len(rows) == 1 and rows[0]["passed"] == "True", rows[0]["message"]
    finally:
        shutil.rmtree(real, ignore_errors=True)


def test_the_plan_holds_no_working_directory_and_no_reference():
    plan = cf.child_root_plan()
    shown = plan["binds"] + list(plan["links"])
    for hidden in (ROOT / "solutions", ROOT / "tests", ROOT / "data", ROOT / "course_lib" / "measurement.py",
                   ROOT / "course_lib" / "stats.py", ROOT / "course_lib" / "grader" / "grading.py", Path.home(),
                   Path("/home"), Path("/srv"), Path("/run")):
        assert not any(p == str(hidden) or p.startswith(str(hidden) + "/") for p in shown
                       if not p.startswith(sys.base_prefix)), hidden
    assert not any(ROOT.as_posix() == p for p in shown)


# ----------------------------------------------------------------------------- §5: nothing outlives the run
def test_a_setsid_grandchild_does_not_outlive_the_run_without_isolation(tmp_path, monkeypatch):
    """As a normal user (no PID namespace), a grandchild in a session of its own escapes a process-group
    kill; the zygote is its subreaper and ends it with the exercise."""
    monkeypatch.setenv("COURSE_GRADER_ISOLATION", "off")
    pid_file = tmp_path / "grandchild.pid"
    path = tmp_path / "escaper.py"
    path.write_text(_attack(f"""
        import time
        if not os.path.exists({str(pid_file)!r} + ".started"):
            open({str(pid_file)!r} + ".started", "w").close()
            child = os.fork()
            if child == 0:                       # a new session, then a grandchild; its parent leaves at once
                os.setsid()
                if os.fork() == 0:
                    with open({str(pid_file)!r} + ".tmp", "w") as handle:
                        handle.write(str(os.getpid()))
                    os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
                    time.sleep(120)
                os._exit(0)
            os.waitpid(child, 0)
            for _ in range(200):
                if os.path.exists({str(pid_file)!r}):
                    break
                time.sleep(0.01)
        ok = True
    """))
    rows = grade.grade_submissions([path], only=["count_parameters"], limits=SandboxLimits(timeout_s=10), jobs=1)
    assert rows[0].passed, rows[0].message
    grandchild = int(pid_file.read_text())

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"
    assert not alive(grandchild), "the setsid grandchild outlived the run"


# ----------------------------------------------------------------------------- §4: blocked means blocked
ATTACKS = Path(__file__).resolve().parent / "fixtures" / "attacks"
LIBRARY_ROUTES = {                         # attack file: the exercise it would pass through a library's own code
    "fidelity_metrics.py": "surrogate_fidelity",        # sklearn.metrics.d2_tweedie_score(power=0), 1 - hamming_loss
    "impurity_tree.py": "impurity_importance",          # sklearn's Tree rebuilt, compute_feature_importances()
    "agreement_pandas.py": "attribution_agreement",     # pandas DataFrame.corr(method="spearman")
}


def test_library_routes_are_right_answers_outside_the_sandbox():
    """Each attack computes the right answer when nothing is blocked (so failing in the sandbox means blocked)."""
    import importlib.util

    from grader_contract import grade as grade_in_process
    for file, exercise in LIBRARY_ROUTES.items():
        spec = importlib.util.spec_from_file_location(file[:-3], ATTACKS / file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        verdict = grade_in_process(exercise, getattr(module, exercise), 0)
        assert verdict.passed, (file, verdict.message)


def test_library_routes_to_the_answer_are_blocked_in_the_sandbox():
    rows = grade.grade_submissions([ATTACKS / f for f in LIBRARY_ROUTES], only=sorted(set(LIBRARY_ROUTES.values())),
                                   limits=SandboxLimits(timeout_s=20), jobs=2)
    found = {(Path(r.submission).name, r.exercise): r for r in rows}
    for file, exercise in LIBRARY_ROUTES.items():
        row = found[(file, exercise)]
        assert not row.passed and "is not available while grading" in row.message, (file, row.message)
