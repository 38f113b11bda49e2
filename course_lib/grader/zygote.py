"""The warm grading server: ``python -m course_lib.grader.zygote --jobs N [--preload m1,m2]`` (started by
:class:`course_lib.grader.sandbox.Pool`).

A cold ``import torch`` costs more than a second, so a fresh interpreter per graded exercise cannot grade a
class quickly. The zygote imports once what the class needs (:func:`preload_for`: numpy, torch and the core it
always needs, plus the allowed libraries the submissions import and the exercises' specs use, the compiler only
for a ``torch.compile``'d class; never a reference module), then forks one confined child per graded exercise,
up to ``--jobs`` at once, and serves them from one single-threaded ``selectors`` loop.

Who holds what. The grader process holds the expected values and every comparison; the zygote holds the
case lists of the running jobs; a graded child only ever holds **one case at a time**. For each exercise the
zygote sends the child one case (with a fresh nonce), waits for exactly one reply frame carrying that case's
index and nonce, and only then sends the next. A child that dies, exits, times out, answers for the wrong case,
answers twice or writes anything else on its reply pipe fails the exercise, and the grader is told why. The
child never learns how many cases there are.

Where a black box is evaluated. An exercise whose input is a function the learner may only call
(``Exercise.blackbox``: ``lime_tabular``'s ``f``) reaches the zygote already split by the grader: each case
without what the function hides (``f_seed``, its kind), with an opaque token (``"_box"``) instead. So the
zygote, which every graded child is forked from, never holds ``f``'s seed or parameters, and neither does any
child, whatever it reads of its own memory. For such a job the zygote makes a socket pair, hands one end to the
grader (over the ``--oracle`` socket, with the request's id) and the other to the child, and keeps neither: it
never reads a call or an answer. The child's stand-in (:class:`~course_lib.grader.exercises.RemoteBlackBox`)
sends each call's rows with the current case's token on that socket; the grader
(:class:`course_lib.grader.sandbox._Oracle`, a thread of the process that computes the expected values and forks
no graded child) evaluates the case's :class:`~course_lib.grader.exercises.BlackBox` and answers there: within
rows per call, rows and calls per case, an ``.npy`` decoded with its size bounded before allocation, and
``exercises.BLACKBOX_SECONDS`` of the grader's time per job. A call that breaks a rule fails the job: the grader
sends ``{"cancel": id, "error"}`` on the zygote's stdin, and the zygote ends that job with the error.

Protocol with the grader (JSON lines). Request: ``{"id", "job", "exercise", "cases", "timeout_s", "memory_mb",
"file_size_mb", "hide"}``; ``job`` is a file readable only by the grader that holds the submission's code: only
the child that grades it reads it (and deletes it), so no other child's memory holds another student's code.
The zygote answers ``{"ready": true, "isolation": {...}}`` once, then ``{"id", "outcomes": [raw outcome JSON
text, ...], "error", "kind", "printed", "seconds"}`` per request, in completion order; ``kind`` says what the
error is (:data:`ERROR_KINDS`), so the grader never reads it from the message.

Protocol with a child: the zygote writes ``{"i", "nonce", "case"}`` lines; the child writes ``{"t": "ready"}``
once, then one ``{"t": "outcome", "i", "nonce", "outcome"}`` per case, or ``{"t": "error", "error"}``. Its
black-box calls, ``{"t": "call", "box", "z"}`` (one at a time, each waiting for ``{"t": "value", "y"}`` or
``{"t": "refused", "error"}``), go on its own socket to the grader, never on these pipes.

Nothing blocks the loop: the reports to the grader and the lines to each child are queued and written as the
pipe takes them (a grader busy comparing one answer, or a child that stops reading, holds up no other job: the
replies of the others are read and their time limits kept meanwhile); an ended child is reaped later; what
one answer may hold is bounded (:data:`MAX_ANSWER_BYTES`, :data:`MAX_REPLY_BYTES`, the printed text).

Confinement of each child (see :mod:`course_lib.grader.confinement`): as root, the child is cloned straight
into a new PID namespace (or an intermediate process forks it after ``unshare``) and enters new mount, network
and IPC namespaces and a memory cgroup; its root is an allow-list (:func:`confinement.child_root_plan`: the
interpreter, the standard library, site-packages, the allowed course core, a private tmp), read-only; it runs
under a uid slot of its own with resource limits, and forbidden modules and operators are disabled before the
submission's code runs (:mod:`course_lib.grader.guards`). Without a PID namespace the zygote is the subreaper
of its descendants and ends what an exercise left (:func:`confinement.end_strays`); after an exercise that did
not end cleanly its uid's last processes are waited for before the slot is reused.
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterable

from . import confinement as cf

# What an error is, as the grader reads it: "protocol" (the child broke the reply protocol or answered more
# than the limits allow), "timeout", "memory", "died" (a signal or an exit before every case was answered),
# "child" (the child itself reported it: its code could not be defined, it printed too much, it stopped the
# grader), "setup" (the exercise could not be graded at all).
ERROR_KINDS = ("protocol", "timeout", "memory", "died", "child", "setup")

MAX_REPLY_BYTES = 32 * 2**20     # all of one exercise's answers
MAX_ANSWER_BYTES = 8 * 2**20     # one case's answer (bounds what json.loads builds in the grader)
MAX_PRINTED_CHARS = 100_000
_SLACK_S = 1.0
_COW_SLACK_MB = 128          # pages of the zygote a child copies on write are charged to its cgroup (measured: ~8 MB)
# Imported before the first fork when the grader names no list: everything a submission of any chapter may
# import. With ``--preload`` the zygote imports :data:`_BASE` and only the modules of this list the grader names
# (:func:`preload_for`: the class's own imports and its exercises' needs), so a chapter-00 class does not wait
# for shap, sklearn or matplotlib.
_BASE = ("numpy", "torch", "torch.nn.functional", "course_lib.validation", "course_lib.grader.codec",
         "course_lib.grader.exercises", "course_lib.grader.guards")
_PRELOAD = ("numpy", "scipy", "scipy.stats", "torch", "torch.nn.functional", "torch.utils.flop_counter",
            "sklearn", "sklearn.linear_model", "sklearn.model_selection", "sklearn.tree", "sklearn.ensemble",
            "sklearn.inspection", "sklearn.metrics", "pandas", "matplotlib.pyplot", "tqdm.auto", "ipywidgets",
            "IPython.display", "captum.attr", "shap", "lime.lime_tabular", "lime.lime_image", "statistics",
            "course_lib.grader.codec", "course_lib.grader.exercises", "course_lib.grader.guards",
            "course_lib.data", "course_lib.models", "course_lib.checkpoints", "course_lib.plots",
            "course_lib.validation", "course_lib.timing")


# A class with a torch.compile'd submission: its compiler, imported and keyed here, where torch's files are all
# visible (inductor hashes torch's source once; in the child the forbidden modules' files are hidden).
COMPILE_MODULES = ("torch._dynamo", "torch._inductor.codecache")
COMPILE_FILE_SIZE_MB = 64        # g++ and inductor's cache need more than the default 4 MB files (16 MB tmp)


def uses_compile(code: str) -> bool:
    """Whether a submission's kept code calls ``torch.compile`` (by any name)."""
    import re
    return re.search(r"\bcompile\b", code) is not None and "torch" in code


def imported_modules(code: str) -> set[str]:
    """The modules a submission's kept code imports at its top level, with their parent packages
    (``from scipy import stats`` gives ``scipy`` and ``scipy.stats``)."""
    import ast
    names: set[str] = set()
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return names
    for node in tree.body:
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"]
        else:
            continue
        for name in found:
            parts = name.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _spec_imports(topics: Iterable[str]) -> set[str]:
    """The modules the grader's exercise specs of these topics import (a case's ``build`` runs in the child)."""
    import ast
    import importlib.util
    names: set[str] = set()
    for topic in topics:
        spec = importlib.util.find_spec(f"course_lib.grader.exercises.{topic}")
        if spec is None or not spec.origin:
            continue
        with open(spec.origin, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return {n for n in names if n != "__future__" and not n.startswith("course_lib")}


def preload_for(codes: Iterable[str], exercise_names: Iterable[str]) -> list[str]:
    """What the zygote should import before forking, for a class whose kept code is ``codes`` and whose graded
    exercises are ``exercise_names``: the modules of :data:`_PRELOAD` that some submission imports (or that sit
    in a library it imports whole; ``from course_lib import x`` names only ``course_lib.x``), and what the
    exercises' specs import. Nothing a submission names outside that
    list is ever imported by the zygote."""
    from . import exercises
    wanted: set[str] = set()
    for code in codes:
        wanted |= imported_modules(code)
    topics = {exercises.get(name).topic for name in exercise_names if name in exercises.names()}
    needs = _spec_imports(topics)
    packages = {w for w in wanted if w != "course_lib"}          # a library imported whole may use any submodule
    chosen = [m for m in _PRELOAD if m in wanted or m in needs or any(m.startswith(w + ".") for w in packages)]
    compiled = [m for m in COMPILE_MODULES if any(uses_compile(code) for code in codes)]
    return chosen + sorted(n for n in needs if n not in chosen) + compiled


def _allowed_preload() -> set[str]:
    from . import exercises
    return set(_PRELOAD) | set(COMPILE_MODULES) | _spec_imports({ex.topic for ex in map(exercises.get,
                                                                                       exercises.names())})


def _project_root() -> str:
    import course_lib
    return os.path.dirname(os.path.dirname(os.path.realpath(course_lib.__file__)))


# --------------------------------------------------------------------------- the graded child
class _CappedText:
    """A stand-in for sys.stdout that keeps the first MAX_PRINTED_CHARS characters."""

    def __init__(self):
        self.parts: list[str] = []
        self.size = 0
        self.overflow = False

    def write(self, text: str) -> int:
        text = str(text)
        if self.size < MAX_PRINTED_CHARS:
            self.parts.append(text[: MAX_PRINTED_CHARS - self.size])
        self.overflow |= self.size + len(text) > MAX_PRINTED_CHARS
        self.size += len(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def text(self) -> str:
        return "".join(self.parts) + ("\n[output truncated]" if self.overflow else "")


class _Lines:
    """The lines the zygote writes on a child's case pipe (cases, and answers to black-box calls); the child
    ends quietly when the zygote closes it."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def next(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                os._exit(0)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def _graded(request: dict, cases_fd: int, reply_fd: int, uid: int | None, pid_namespace: bool,
            oracle_fd: int | None) -> None:
    """The graded process: set up, define the submission's functions, then answer one case at a time; a
    black box's calls go to the grader on ``oracle_fd`` (None: the exercise has no black box). Never returns."""
    import ast

    import torch

    from . import codec, exercises, guards

    printed = _CappedText()

    def send(**frame) -> None:
        data = (json.dumps(frame) + "\n").encode()
        while data:
            data = data[os.write(reply_fd, data):]

    def fail(error: str) -> None:
        send(t="error", error=error, printed=printed.text())
        os._exit(0)

    try:
        if pid_namespace:
            cf.finish_pid_namespace()
        workdir = f"/tmp/work-{os.getpid()}-{secrets.token_hex(4)}"
        os.makedirs(workdir, mode=0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chdir(workdir)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        low = 3
        for fd in sorted({cases_fd, reply_fd} | ({oracle_fd} if oracle_fd is not None else set())):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 65536)
        exercise = exercises.get(request["exercise"])
        guards.install(exercise.forbidden, request.get("guard_kinds"))
        sys.stdout = sys.stderr = printed
        sys.stdin = open(os.devnull)
        os.environ.clear()
        os.environ.update({"HOME": workdir, "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "TMPDIR": workdir,
                           # torch.compile: its cache in the private tmp, compiled here (no pool of workers)
                           "TORCHINDUCTOR_CACHE_DIR": os.path.join(workdir, "inductor"),
                           "TORCHINDUCTOR_COMPILE_THREADS": "1", "TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS": "0",
                           "USER": "grader", "LOGNAME": "grader"})
        import tempfile
        tempfile.tempdir = workdir
        if uid is not None:
            cf.drop_privileges(uid)
        torch.set_num_threads(1)
        cf.set_limits(request["memory_mb"], request["timeout_s"], request["file_size_mb"], uid is not None)
    except BaseException as exc:  # noqa: BLE001
        fail(f"the grading sandbox could not be set up: {type(exc).__name__}: {exc}")

    code = request.pop("code")
    namespace: dict = {"__name__": "submission", "__builtins__": __builtins__}
    failed: list[str] = []                  # imports, constants and classes that could not be defined
    memory_error = "ran out of memory"
    try:
        for node in ast.parse(code).body:   # each kept statement on its own
            try:
                exec(compile(ast.Module([node], []), "<submission>", "exec"), namespace)
            except Exception as exc:  # noqa: BLE001 - an import, constant or class that cannot run here
                if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.ClassDef)):
                    raise
                if isinstance(exc, MemoryError):
                    raise
                first = ast.unparse(node).splitlines()[0][:80]
                failed.append(f"{first} ({type(exc).__name__}: {exc})")
    except MemoryError:
        fail(memory_error)
    except BaseException as exc:  # noqa: BLE001 - SystemExit included
        fail(f"defining the functions failed: {type(exc).__name__}: {exc}")
    fn = namespace.get(exercise.name)
    if not callable(fn):
        fail(f"{exercise.name} is not defined as a function")
    send(t="ready")
    lines = _Lines(cases_fd)
    answers = _Lines(oracle_fd) if oracle_fd is not None else None
    current: dict = {}                       # the case being answered: its index, nonce and black-box token

    def ask(**frame) -> None:
        data = (json.dumps(frame) + "\n").encode()
        while data:
            data = data[os.write(oracle_fd, data):]

    def call_grader(z, lock=__import__("threading").Lock()):
        """A black-box function's call: the rows go straight to the grader, which evaluates it and answers (the
        zygote never sees them)."""
        if answers is None or current.get("box") is None:
            raise RuntimeError("this function is evaluated by the grader, and no grader is connected")
        with lock:
            ask(t="call", box=current["box"], z=codec.array_text(z))
            reply = json.loads(answers.next())
        if reply.get("t") != "value":
            raise ValueError(str(reply.get("error"))[:1000])
        y = codec.text_array(reply["y"])
        return y[()] if y.ndim == 0 else y

    exercises.connect_blackbox(call_grader)
    while True:
        message = json.loads(lines.next())
        current.update(i=message["i"], nonce=message["nonce"], box=message["case"].pop("_box", None))
        try:
            args, kwargs = exercise.build(message["case"])
            outcome = codec.call(fn, args, kwargs, exercise.runner, roundtrip=False)
        except MemoryError:
            fail(memory_error)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt
            fail(f"stopped the grader with {type(exc).__name__} ({exc}); sys.exit() is not allowed")
        if "MemoryError" in outcome.error_types or "allocate memory" in outcome.error_message:
            fail(memory_error)
        if printed.overflow:
            fail(f"printed more than {MAX_PRINTED_CHARS:,} characters: remove the prints from the function")
        if "NameError" in outcome.error_types:
            outcome.error_message += ("; while grading, only a notebook's imports, defs, constants that call nothing "
                                      "and helper classes are kept from the top level")
            if failed:
                outcome.error_message += "; these of them could not run: " + "; ".join(failed)
        try:
            payload = json.dumps(outcome.to_json())
        except (TypeError, ValueError, RecursionError) as exc:
            payload = json.dumps({"error_types": ["TypeError"], "error_message": f"the result cannot be sent: {exc}"})
        send(t="outcome", i=message["i"], nonce=message["nonce"], outcome=payload, printed=printed.text())


def _confined(request: dict, cases_fd: int, reply_fd: int, uid: int | None, isolation: dict,
              cgroup: cf.MemoryCgroup | None, held_fds: list[int], in_pid_namespace: bool,
              oracle_fd: int | None) -> None:
    """Runs in the forked process; never returns. As root: cgroup and namespaces here; the graded process
    is the init of a PID namespace of its own (so its whole tree ends with it): this very process when
    the zygote cloned it into one (``in_pid_namespace``), else a child forked after ``unshare``."""
    try:
        os.setsid()
        cf.die_with_parent()
        with open(request["job"], encoding="utf-8") as handle:
            request["code"] = json.load(handle)["code"]
        os.unlink(request["job"])
        for fd in held_fds:
            os.close(fd)
        if cgroup is not None:
            cgroup.join()
        if isolation["namespaces"]:
            cf.enter_namespaces(request.get("hide", []) + request.get("hide_files", []), _project_root(),
                                request["file_size_mb"], new_pid_namespace=not in_pid_namespace)
        if in_pid_namespace:
            _graded(request, cases_fd, reply_fd, uid, True, oracle_fd)
        if isolation["pid_namespace"]:
            pid = os.fork()
            if pid == 0:
                cf.die_with_parent()
                _graded(request, cases_fd, reply_fd, uid, True, oracle_fd)
            os.close(cases_fd)
            os.close(reply_fd)
            if oracle_fd is not None:
                os.close(oracle_fd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code)
        _graded(request, cases_fd, reply_fd, uid, False, oracle_fd)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(reply_fd, (json.dumps({"t": "error", "error": f"the grading sandbox could not be set up: "
                                                                  f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        finally:
            os._exit(0)


# --------------------------------------------------------------------------- the supervisor
def _death_reason(status: int, timeout_s: float, file_size_mb: int, memory_mb: int, oom: bool) -> str:
    if oom:
        return f"ran out of memory: the limit of {memory_mb} MB for the exercise was exceeded"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        sig = signal.Signals(-code).name
        hints = {"SIGXCPU": f"time limit of {timeout_s:g} s exceeded (CPU time)",
                 "SIGKILL": "it was killed (memory limit, or it killed itself)",
                 "SIGSEGV": "it crashed (segmentation fault)",
                 "SIGXFSZ": f"it wrote a file larger than {file_size_mb} MB"}
        return f"the process was stopped by {sig}: {hints.get(sig, 'a signal')}"
    return (f"the process ended with exit code {code} before answering every case "
            "(does the code call sys.exit() or os._exit()?)")


def _wait_gone(uid: int, seconds: float = 1.0) -> None:
    """Wait until no process of ``uid`` is left (after an exercise that did not end cleanly), so its slot is
    reused only once its processes are gone; kill what is still there after ``seconds``."""
    end = time.monotonic() + seconds
    while cf.live_processes(uid):
        if time.monotonic() > end:
            cf.reap_uid(uid)
            return
        time.sleep(0.005)


class _Job:
    """One exercise being graded: its child, its pipes, and where it is in the case list."""

    def __init__(self, request: dict, slot: int):
        self.request, self.slot = request, slot
        self.cases: list = request["cases"]
        self.next = 0                      # index of the case whose answer is awaited
        self.nonce = ""
        self.ready = False
        self.outcomes: list[str] = []
        self.printed = ""
        self.data = b""
        self.size = 0
        self.error: str | None = None
        self.kind: str | None = None       # one of ERROR_KINDS when error is set
        self.start = time.monotonic()
        self.deadline = self.start + request["timeout_s"] + _SLACK_S
        self.pid = self.cases_fd = self.reply_fd = -1
        self.to_child = bytearray()        # lines for the child not yet taken by its case pipe (never blocking)


class Server:
    def __init__(self, jobs: int, oracle_fd: int | None = None):
        self.isolation = cf.probe()
        self.slots = cf.SlotPool(jobs) if self.isolation["uid_drop"] else None
        self.uids = self.slots.uids if self.slots else [None] * jobs
        self.isolation["uids"] = [u for u in self.uids if u is not None]
        self.cgroups: list[cf.MemoryCgroup | None] = [None] * jobs
        if self.isolation["cgroup"]:
            try:
                cf.MemoryCgroup.remove_stale()
                self.cgroups = [cf.MemoryCgroup(f"course-grader-{os.getpid()}-{i}") for i in range(jobs)]
            except OSError:
                self.isolation["cgroup"] = None
        self.free = list(range(jobs))
        self.pending: list[dict] = []
        self.running: dict[int, _Job] = {}
        self.selector = selectors.DefaultSelector()
        self.out_fd = os.dup(1)
        self.outbox = bytearray()          # reports not yet taken by the grader (written without blocking)
        self.hide_files_cache: dict[tuple, list[str]] = {}
        self.stdin_buffer = b""
        self.dying: list[int] = []
        self.limits_set: dict[int, int] = {}
        self.writing: dict[int, _Job] = {}  # case pipe -> job, while lines wait for room in it
        self.oracle_fd = oracle_fd         # a SOCK_SEQPACKET socket to the grader: each job's call channel goes there
        self.cancelled: dict[int, str] = {}  # request id -> why the grader ended it (its black box's calls)

    def _guard_plan(self, exercise: str) -> tuple[list[str], dict]:
        """The files to hide and the kinds of the forbidden names, computed here where files are visible."""
        from . import exercises, guards
        forbidden = exercises.get(exercise).forbidden
        if forbidden not in self.hide_files_cache:
            files = guards.files_to_hide(forbidden + guards.REFERENCE_MODULES) if self.isolation["namespaces"] else []
            self.hide_files_cache[forbidden] = (files, guards.classify(forbidden))
        return self.hide_files_cache[forbidden]

    def start(self, request: dict) -> None:
        slot = self.free.pop(0)
        job = _Job(request, slot)
        try:
            request["hide_files"], request["guard_kinds"] = self._guard_plan(request["exercise"])
            from . import exercises
            has_blackbox = exercises.get(request["exercise"]).blackbox is not None
        except Exception as exc:  # noqa: BLE001 - an unknown exercise is that job's error
            job.error, job.kind = f"cannot grade this exercise: {exc}", "setup"
            self.report(job)
            self.free.append(slot)
            return
        cgroup = self.cgroups[slot]
        if cgroup is not None:
            nbytes = (request["memory_mb"] + _COW_SLACK_MB) * 2**20
            if self.limits_set.get(slot) != nbytes:
                cgroup.limit(nbytes)
                self.limits_set[slot] = nbytes
            cgroup.mark()
        cases_read, cases_write = os.pipe()
        reply_read, reply_write = os.pipe()
        oracle_child = self.connect_oracle(request["id"]) if has_blackbox else None
        held = self.slots.fds() if self.slots else []
        cloned = self.isolation["pid_namespace"] and self.isolation["namespaces"] and cf.single_threaded()
        pid = cf.fork_into_new_pid_namespace() if cloned else os.fork()
        if pid == 0:
            os.close(cases_write)
            os.close(reply_read)
            if self.oracle_fd is not None:
                os.close(self.oracle_fd)
            self._forget_other_jobs(job)
            _confined(request, cases_read, reply_write, self.uids[slot], self.isolation, cgroup, held, cloned,
                      oracle_child)
        os.close(cases_read)
        os.close(reply_write)
        if oracle_child is not None:
            os.close(oracle_child)
        os.set_blocking(cases_write, False)
        job.pid, job.cases_fd, job.reply_fd = pid, cases_write, reply_read
        self.running[reply_read] = job
        self.selector.register(reply_read, selectors.EVENT_READ, "child")

    def connect_oracle(self, request_id) -> int | None:
        """A fresh socket pair for one job's black-box calls: one end goes to the grader (with the request's id,
        over the oracle socket), the other to the child; the zygote keeps neither and never reads a call or an
        answer. None without an oracle (the child's calls then fail: no grader is connected)."""
        if self.oracle_fd is None:
            return None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control = socket.socket(fileno=self.oracle_fd)
        try:       # a few bytes on a socket the grader's oracle thread always reads: never held up for long
            socket.send_fds(control, [json.dumps({"id": request_id}).encode()], [theirs.fileno()])
        except OSError:
            pass                                 # the grader is gone: the child's calls end at end of file
        finally:
            control.detach()
            theirs.close()
        return mine.detach()

    def _forget_other_jobs(self, job: _Job) -> None:
        """In a freshly forked child: drop every reference to other jobs and to the case list."""
        for other in self.running.values():
            other.cases, other.request, other.outcomes = [], {}, []
            other.to_child.clear()
        self.writing.clear()
        self.running.clear()
        self.outbox.clear()                    # other students' reports not yet taken by the grader
        self.pending.clear()
        self.stdin_buffer = b""
        job.request["cases"] = job.cases = []

    def read_requests(self) -> bool:
        """Read the grader's requests into ``pending``; False at end of input."""
        chunk = os.read(sys.stdin.fileno(), 1 << 20)
        self.stdin_buffer += chunk
        *lines, self.stdin_buffer = self.stdin_buffer.split(b"\n")
        for line in lines:
            if line.strip():
                request = json.loads(line)
                if "cancel" in request:             # the grader ended a job (its black box's calls broke a rule)
                    self.cancelled[request["cancel"]] = str(request.get("error"))[:4000]
                else:
                    self.pending.append(request)
        return bool(chunk)

    def apply_cancellations(self) -> None:
        """End the running jobs the grader cancelled (a job that already ended is reported as it ended)."""
        for job in [j for j in self.running.values() if j.request.get("id") in self.cancelled]:
            if job.error is None:
                job.error, job.kind = self.cancelled[job.request["id"]], "protocol"
            self.finish(job)
        self.cancelled = {}

    def send_next(self, job: _Job) -> None:
        job.nonce = secrets.token_hex(8)
        case = job.cases[job.next]
        self.write_child(job, (json.dumps({"i": job.next, "nonce": job.nonce, "case": case}) + "\n").encode())

    def write_child(self, job: _Job, data: bytes) -> None:
        """Queue ``data`` for the child's case pipe and write what the pipe takes now, never blocking: a child
        that stops reading holds up nothing but itself (its time limit ends it)."""
        job.to_child += data
        while job.to_child:
            try:
                written = os.write(job.cases_fd, job.to_child[:1 << 16])
            except BlockingIOError:
                break
            except OSError:
                job.to_child.clear()
                if job.error is None:
                    job.error, job.kind = "the graded process stopped reading its cases", "died"
                break
            del job.to_child[:written]
        watched = job.cases_fd in self.writing
        if job.to_child and not watched:
            self.selector.register(job.cases_fd, selectors.EVENT_WRITE, "cases")
            self.writing[job.cases_fd] = job
        elif not job.to_child and watched:
            self.selector.unregister(job.cases_fd)
            del self.writing[job.cases_fd]

    def on_data(self, job: _Job) -> bool:
        """Read what the child wrote; True when the job is over."""
        chunk = os.read(job.reply_fd, 1 << 20)
        if not chunk:
            return True
        job.size += len(chunk)
        if job.size > MAX_REPLY_BYTES:
            job.error, job.kind = f"the answer is larger than {MAX_REPLY_BYTES // 2**20} MB", "protocol"
            return True
        job.data += chunk
        while b"\n" in job.data:
            line, job.data = job.data.split(b"\n", 1)
            if self.on_frame(job, line):
                return True
        return False

    def on_frame(self, job: _Job, line: bytes) -> bool:
        try:
            frame = json.loads(line)
            if not isinstance(frame, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            job.error, job.kind = "the graded process wrote something unexpected on its reply channel", "protocol"
            return True
        kind = frame.get("t")
        if kind == "error":
            job.error, job.kind = str(frame.get("error"))[:4000], "child"
            job.printed = str(frame.get("printed", ""))[:MAX_PRINTED_CHARS]
            return True
        if kind == "ready" and not job.ready:
            job.ready = True
        elif kind == "outcome" and job.ready and job.next < len(job.cases) and \
                frame.get("i") == job.next and frame.get("nonce") == job.nonce and \
                isinstance(frame.get("outcome"), str) and job.nonce:
            if len(frame["outcome"]) > MAX_ANSWER_BYTES:
                job.error = f"the answer to case {job.next + 1} is larger than {MAX_ANSWER_BYTES // 2**20} MB"
                job.kind = "protocol"
                return True
            job.outcomes.append(frame["outcome"])
            job.printed = str(frame.get("printed", ""))[:MAX_PRINTED_CHARS]
            job.next += 1
            job.nonce = ""
            if job.data or job.next == len(job.cases) or '"NotImplementedError"' in frame["outcome"][:200]:
                if job.data:
                    job.error = "the graded process answered more than it was asked on its reply channel"
                    job.kind = "protocol"
                return True
        else:
            job.error = ("the graded process answered twice or for a case it was not given"
                         if kind in ("ready", "outcome") else
                         "the graded process wrote something unexpected on its reply channel")
            job.kind = "protocol"
            return True
        if job.data:
            job.error = "the graded process answered more than it was asked on its reply channel"
            job.kind = "protocol"
            return True
        self.send_next(job)
        return job.error is not None

    def finish(self, job: _Job, timed_out: bool = False) -> None:
        self.selector.unregister(job.reply_fd)
        if self.writing.pop(job.cases_fd, None) is not None:
            self.selector.unregister(job.cases_fd)
        # An ended job may still be referenced (a local of the serve loop) when the next child is forked: it keeps
        # no case.
        os.close(job.reply_fd)
        os.close(job.cases_fd)
        del self.running[job.reply_fd]
        complete = job.error is None and not timed_out and (
            job.next == len(job.cases) or (job.outcomes and '"NotImplementedError"' in job.outcomes[-1][:200]))
        job.cases = job.request["cases"] = []
        if complete and self.isolation["pid_namespace"]:
            # Answered every case: end it (its PID namespace goes with it) and reap it later, so the
            # teardown of a large process never holds up the other running jobs.
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.dying.append(job.pid)
            self.report(job)
            self.free.append(job.slot)
            self.free.sort()
            return
        status = None
        if not complete and job.error is None and not timed_out:   # it closed its pipe: let it finish exiting
            for _ in range(50):
                pid, status = os.waitpid(job.pid, os.WNOHANG)
                if pid:
                    break
                status = None
                time.sleep(0.01)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if status is None:
            _, status = os.waitpid(job.pid, 0)
        cgroup = self.cgroups[job.slot]
        oom = cgroup is not None and cgroup.hit_limit()
        if cgroup is not None:
            cgroup.kill_all()
        if self.slots and not self.isolation["pid_namespace"]:
            cf.reap_uid(self.uids[job.slot])
        elif self.slots:      # the namespace's init is gone; its last processes may still be exiting: wait for them
            _wait_gone(self.uids[job.slot])
        if not self.isolation["pid_namespace"]:     # nothing ends its tree with it: end what it left, setsid or not
            cf.end_strays({j.pid for j in self.running.values()} | set(self.dying))
        if oom and (timed_out or not complete or job.error):
            job.error, job.kind = _death_reason(status, 0, 0, job.request["memory_mb"], True), "memory"
        elif timed_out:
            job.error = f"time limit of {job.request['timeout_s']:g} s exceeded (an infinite loop, or far too slow)"
            job.kind = "timeout"
        elif not complete and job.error is None:
            job.error = _death_reason(status, job.request["timeout_s"], job.request["file_size_mb"],
                                      job.request["memory_mb"], oom)
            job.kind = "died"
        elif job.error == "ran out of memory":
            job.error = f"ran out of memory: the limit of {job.request['memory_mb']} MB for the exercise was exceeded"
            job.kind = "memory"
        self.report(job)
        self.free.append(job.slot)
        self.free.sort()

    def reap(self, block: bool = False) -> None:
        """Collect ended children (killed after answering everything)."""
        for pid in list(self.dying):
            try:
                done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.dying.remove(pid)

    def report(self, job: _Job) -> None:
        """Queue the job's report; it is written as the grader reads, never blocking the loop."""
        kind = (job.kind or "child") if job.error is not None else None
        self.outbox += (json.dumps({"id": job.request["id"], "outcomes": job.outcomes, "error": job.error,
                                    "kind": kind, "printed": job.printed,
                                    "seconds": time.monotonic() - job.start}) + "\n").encode()
        self.flush_reports()

    def flush_reports(self) -> None:
        """Write what the pipe to the grader takes now; watch it for room while anything is left."""
        while self.outbox:
            try:
                written = os.write(self.out_fd, self.outbox[:1 << 20])
            except BlockingIOError:
                break
            except OSError:                        # the grader is gone: nobody to report to
                self.outbox.clear()
                break
            del self.outbox[:written]
        watched = self.out_fd in self.selector.get_map()
        if self.outbox and not watched:
            self.selector.register(self.out_fd, selectors.EVENT_WRITE, "reports")
        elif not self.outbox and watched:
            self.selector.unregister(self.out_fd)

    def serve(self) -> None:
        os.write(self.out_fd, (json.dumps({"ready": True, "isolation": self.isolation}) + "\n").encode())
        os.set_blocking(self.out_fd, False)
        stdin = sys.stdin.buffer
        self.selector.register(stdin, selectors.EVENT_READ, "stdin")
        eof = False
        while not (eof and not self.pending and not self.running and not self.outbox):
            while self.pending and self.free:
                self.start(self.pending.pop(0))
            now = time.monotonic()
            timeout = min((job.deadline for job in self.running.values()), default=now + 3600) - now
            if self.dying:
                timeout = min(timeout, 0.05)
            for key, _ in self.selector.select(timeout=max(0.0, timeout)):
                if key.data == "stdin":
                    if not self.read_requests():
                        eof = True
                        self.selector.unregister(stdin)
                elif key.data == "reports":
                    self.flush_reports()
                elif key.data == "cases":
                    job = self.writing[key.fd]
                    self.write_child(job, b"")
                    if job.error is not None:
                        self.finish(job)
                elif key.fd in self.running:
                    job = self.running[key.fd]
                    try:
                        over = self.on_data(job)
                    except Exception as exc:  # noqa: BLE001 - never let one child stop the server
                        job.error, over = f"the graded process's answer could not be read ({exc})", True
                        job.kind = "protocol"
                    if over:
                        self.finish(job)
            if self.cancelled:
                self.apply_cancellations()
            for job in [j for j in self.running.values() if time.monotonic() > j.deadline]:
                self.finish(job, timed_out=True)
            self.reap()
        self.reap(block=True)
        if not self.isolation["pid_namespace"]:
            cf.end_strays(set())
        for cgroup in self.cgroups:
            if cgroup is not None:
                cgroup.remove()


def serve(jobs: int, preload: Iterable[str] | None = None, oracle_fd: int | None = None) -> None:
    """Import once (:data:`_BASE` and ``preload``, of the allowed modules; every module of :data:`_PRELOAD`
    when ``preload`` is None), then read requests on stdin and answer each when its child is done."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import importlib
    import warnings

    warnings.filterwarnings("ignore")
    os.environ["TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS"] = "0"    # a header of ~100 MB per child: not here
    modules = _PRELOAD
    if preload is not None:
        importlib.import_module("course_lib.grader.exercises")
        allowed = _allowed_preload()
        modules = tuple(dict.fromkeys([*_BASE, *(m for m in preload if m in allowed)]))
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - an optional library missing only costs speed
            pass
    if "torch._inductor.codecache" in sys.modules:
        try:                                    # hash torch's source now, while every file is visible
            sys.modules["torch._inductor.codecache"].torch_key()
        except Exception:  # noqa: BLE001 - without it a compiled submission fails alone
            pass
    cf.not_dumpable()
    cf.become_subreaper()
    sys.stdout = sys.stderr
    Server(jobs, oracle_fd).serve()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.grader.zygote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--preload", default=None,
                        help="comma-separated modules to import besides the base (default: every allowed module)")
    parser.add_argument("--oracle", type=int, default=None,
                        help="an inherited SOCK_SEQPACKET socket to the grader, which evaluates the black boxes")
    args = parser.parse_args()
    serve(max(1, args.jobs), None if args.preload is None else [m for m in args.preload.split(",") if m],
          args.oracle)
