"""The warm grading server: ``python -m course_lib.grader.zygote --jobs N`` (started by :mod:`course_lib.grader.sandbox`).

A cold ``import torch`` costs more than a second, so a fresh interpreter per graded exercise cannot
grade a class quickly. The zygote imports the heavy libraries once (torch, numpy, scipy, pandas,
matplotlib, scikit-learn, captum, shap, lime and the course's core modules, never a reference
module), then ``fork()``s one child per graded exercise: each child starts warm, in a few
milliseconds, and is still a separate process with its own limits.

Protocol (JSON lines). The grader writes ``{"id", "job", "timeout_s", "memory_mb", "file_size_mb",
"hide"}`` per exercise (``job``: a file, readable only by the grader, holding the code and the cases);
the zygote answers ``{"ready": true, "isolation": {...}}`` once, then ``{"id", "reply", "error",
"seconds"}`` per job, in completion order. At most ``--jobs`` children run at once. End of input:
finish the running jobs, then exit.

Each child, in order: its own session; (as root) a private mount namespace (fresh ``/tmp``,
``/var/tmp``, ``/dev/shm``; the submissions, roster and output hidden; ``/root`` replaced by a
directory that only exposes the Python installation) and an empty network namespace; the reference
modules stubbed; file descriptors 0-2 on ``/dev/null``, every other inherited descriptor closed; (as
root) a uid of its own per slot, no supplementary groups, ``no_new_privs``; resource limits (address
space, CPU seconds, file size, process count, open files, no core dumps); then the submission's kept
code and the cases. After a child ends, everything still running under its uid is killed
(``kill(-1)`` from that uid), so a fork bomb does not outlive its exercise.
"""
from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import sys
import time
import types

MAX_REPLY_BYTES = 32 * 2**20
MAX_PRINTED_CHARS = 100_000
BASE_UID = 61000
NPROC_LIMIT = 64
_SLACK_S = 1.0
_PRELOAD = ("numpy", "scipy", "scipy.stats", "torch", "torch.nn.functional", "torch.utils.flop_counter",
            "sklearn", "sklearn.linear_model", "sklearn.model_selection", "pandas", "matplotlib.pyplot",
            "tqdm.auto", "ipywidgets", "IPython.display", "captum.attr", "shap", "lime.lime_tabular",
            "lime.lime_image", "statistics", "course_lib.grader.codec", "course_lib.grader.exercises", "course_lib.data",
            "course_lib.models", "course_lib.checkpoints", "course_lib.plots", "course_lib.validation")
_WATCHED_MODULES = ("builtins", "torch", "torch.nn", "torch.nn.functional", "numpy", "math",
                    "course_lib.grader.codec")
_WATCHED_CLASSES = (("torch", "Tensor"), ("torch._C", "TensorBase"), ("torch.nn", "Module"), ("numpy", "ndarray"))

# --------------------------------------------------------------------------- Linux isolation
_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {target}")


def isolation_available() -> dict:
    """Which protections this machine allows (probed in a throw-away child)."""
    root = os.geteuid() == 0
    if not root:
        return {"root": False, "namespaces": False, "uid_drop": False}
    pid = os.fork()
    if pid == 0:
        try:
            _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare")
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return {"root": True, "namespaces": os.waitstatus_to_exitcode(status) == 0, "uid_drop": True}


def _needed_dirs() -> list[str]:
    """Directories the child must still read: the Python installation, the venv, course_lib."""
    import course_lib
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    dirs.add(os.path.dirname(os.path.dirname(os.path.realpath(course_lib.__file__))))
    dirs.update(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
    return sorted(dirs)


def _closed_ancestor(path: str) -> str | None:
    """The highest ancestor of ``path`` that others may not traverse (e.g. ``/root``, mode 700)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _outermost(paths: list[str]) -> list[str]:
    return [p for p in paths if not any(p != o and p.startswith(o + "/") for o in paths)]


def _overlay(target: str, options: str, keep: list[str]) -> None:
    """Mount an empty tmpfs on ``target``, then bind the ``keep`` subtrees back in place.

    The subtrees are held open (``O_PATH``) before the tmpfs covers them and bound back from
    ``/proc/self/fd``, so nothing needs a staging directory.
    """
    fds = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in _outermost(keep)]
    _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    for path, fd in fds:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)


def _isolate(hide: list[str], file_size_mb: int) -> None:
    """Private mount and network namespaces: fresh temp dirs, hidden submissions, reachable Python.

    Directories others may not traverse (``/root``, mode 700) are replaced by an empty tmpfs that
    exposes only what Python needs; ``/tmp``, ``/var/tmp`` and ``/dev/shm`` become fresh tmpfs,
    keeping the course and the venv when they live there (a clone in ``/tmp``).
    """
    _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare")
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    needed = _needed_dirs()
    closed: dict[str, list[str]] = {}
    for path in needed:
        ancestor = _closed_ancestor(path)
        if ancestor:
            closed.setdefault(ancestor, []).append(path)
    for ancestor, keep in closed.items():
        _overlay(ancestor, "mode=755,size=1m", keep)
    for tmp in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            _overlay(tmp, f"mode=1777,size={4 * file_size_mb}m",
                     [p for p in needed if p.startswith(os.path.realpath(tmp) + "/")])
    for path in hide:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_RDONLY, "mode=755,size=4k")
        elif os.path.exists(path):
            _mount("/dev/null", path, None, _MS_BIND)


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binary can give privileges back


def _set_limits(memory_mb: int, cpu_s: float, file_size_mb: int, separate_uid: bool) -> None:
    import resource

    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    address_space = vm + memory_mb * 2**20
    cpu = int(cpu_s) + 1
    nproc = NPROC_LIMIT if separate_uid else _count_own_processes() + NPROC_LIMIT
    for limit, value in ((resource.RLIMIT_AS, address_space), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, file_size_mb * 2**20), (resource.RLIMIT_NPROC, nproc),
                         (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def _count_own_processes() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _reap_uid(uid: int) -> None:
    """Kill every process running as ``uid`` (a fork bomb's survivors), from a process of that uid."""
    for _ in range(20):
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)   # every process this uid may signal, itself excluded
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        if not _live_processes(uid):
            return
        time.sleep(0.01)


def _live_processes(uid: int) -> list[int]:
    """Processes of ``uid`` that are not zombies (a killed orphan stays a zombie until init reaps it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    with open(f"/proc/{entry}/stat") as stat:
                        if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(entry))
            except (OSError, IndexError):
                pass
    return found


# --------------------------------------------------------------------------- the graded code's world
class ForbiddenError(RuntimeError):
    """Raised when graded code uses a reference implementation or its library equivalent."""


class _Forbidden:
    def __init__(self, dotted: str):
        self._dotted = dotted

    def _refuse(self, *args, **kwargs):
        raise ForbiddenError(f"{self._dotted} is not available while grading: this exercise asks you to "
                             "implement it yourself, not to call the reference or the library function")

    __call__ = _refuse
    __enter__ = _refuse

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Forbidden(f"{self._dotted}.{attr}")


class _ForbiddenModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Forbidden(f"{self.__name__}.{attr}")


def _install_guards(forbidden: tuple[str, ...]) -> None:
    import importlib

    for dotted in forbidden:
        parent_name, _, attr = dotted.rpartition(".")
        if dotted.startswith("course_lib."):
            stub = _ForbiddenModule(dotted)
            sys.modules[dotted] = stub
            setattr(importlib.import_module(parent_name), attr, stub)
        else:
            setattr(importlib.import_module(parent_name), attr, _Forbidden(dotted))


def _snapshot() -> dict[str, dict[str, int]]:
    spaces = {name: vars(sys.modules[name]) for name in _WATCHED_MODULES if name in sys.modules}
    for module, cls in _WATCHED_CLASSES:
        spaces[f"{module}.{cls}"] = vars(getattr(sys.modules[module], cls))
    return {name: {k: id(v) for k, v in space.items() if not k.startswith("__")} for name, space in spaces.items()}


def _tampered(before: dict[str, dict[str, int]]) -> str | None:
    """The first watched name changed since ``before``; names added to a module are allowed
    (torch and numpy import submodules lazily), names added to a class are not."""
    after = _snapshot()
    classes = {f"{module}.{cls}" for module, cls in _WATCHED_CLASSES}
    for space, entries in before.items():
        now = after.get(space, {})
        for key, ident in entries.items():
            if now.get(key) != ident:
                return f"{space}.{key}"
        if space in classes and set(now) - set(entries):
            return f"{space}.{sorted(set(now) - set(entries))[0]}"
    return None


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


def _child(request: dict, reply_fd: int, uid: int | None, namespaces: bool) -> None:
    """Runs in the forked child; never returns."""
    import ast

    import torch

    from . import codec, exercises

    def reply(**fields) -> None:
        fields["printed"] = printed.text()
        data = (json.dumps(fields) + "\n").encode()
        while data:
            data = data[os.write(reply_fd, data):]
        os._exit(0)

    printed = _CappedText()
    try:
        os.setsid()
        with open(request["job"], encoding="utf-8") as handle:
            job = json.load(handle)
        os.unlink(request["job"])
        if namespaces:
            _isolate(request.get("hide", []), request["file_size_mb"])
        workdir = f"/tmp/work-{os.getpid()}"
        os.makedirs(workdir, mode=0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chdir(workdir)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, reply_fd)
        os.closerange(reply_fd + 1, 65536)
        exercise = exercises.get(job["exercise"])
        _install_guards(exercise.all_forbidden)
        sys.stdout = sys.stderr = printed
        sys.stdin = open(os.devnull)
        os.environ.clear()
        os.environ.update({"HOME": workdir, "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
        if uid is not None:
            _drop_privileges(uid)
        torch.set_num_threads(1)
        _set_limits(request["memory_mb"], request["timeout_s"], request["file_size_mb"], uid is not None)
    except BaseException as exc:  # noqa: BLE001
        reply(error=f"the grading sandbox could not be set up: {type(exc).__name__}: {exc}")

    baseline = _snapshot()
    namespace: dict = {"__name__": "submission", "__builtins__": __builtins__}
    failed_imports: list[str] = []
    memory_error = f"ran out of memory (limit {request['memory_mb']} MB above the imports)"
    try:
        for node in ast.parse(job["code"]).body:   # each kept statement on its own
            try:
                exec(compile(ast.Module([node], []), "<submission>", "exec"), namespace)
            except ImportError as exc:
                failed_imports.append(f"{ast.unparse(node)} ({exc})")
    except MemoryError:
        reply(error=memory_error)
    except BaseException as exc:  # noqa: BLE001 - SystemExit included
        reply(error=f"defining the functions failed: {type(exc).__name__}: {exc}")
    changed = _tampered(baseline)
    if changed:
        reply(error=f"the submission modified {changed}: monkeypatching torch, numpy or builtins is not allowed")
    fn = namespace.get(exercise.name)
    if not callable(fn):
        reply(error=f"{exercise.name} is not defined as a function")
    outcomes = []
    for case in job["cases"]:
        try:
            args, kwargs = exercise.build(case)
            outcome = codec.call(fn, args, kwargs, exercise.harness)
        except MemoryError:
            reply(error=memory_error)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt
            reply(error=f"stopped the grader with {type(exc).__name__} ({exc}); sys.exit() is not allowed")
        if "MemoryError" in outcome.error_types or "allocate memory" in outcome.error_message:
            reply(error=memory_error)
        changed = _tampered(baseline)
        if changed:
            reply(error=f"the submission modified {changed}: monkeypatching torch, numpy or builtins is not allowed")
        if printed.overflow:
            reply(error=f"printed more than {MAX_PRINTED_CHARS:,} characters: remove the prints from the function")
        if "ForbiddenError" in outcome.error_types:
            reply(error=outcome.error_message)
        if "NameError" in outcome.error_types and failed_imports:
            outcome.error_message += "; these imports failed: " + "; ".join(failed_imports)
        outcomes.append(outcome.to_json())
        if outcome.error_types[:1] == ("NotImplementedError",):
            break
    reply(outcomes=outcomes)


# --------------------------------------------------------------------------- the supervisor
def _death_reason(status: int, timeout_s: float, file_size_mb: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        sig = signal.Signals(-code).name
        hints = {"SIGXCPU": f"it used more than its CPU-time limit ({timeout_s:g} s)",
                 "SIGKILL": "it was killed (memory or time limit, or it killed itself)",
                 "SIGSEGV": "it crashed (segmentation fault)",
                 "SIGXFSZ": f"it wrote a file larger than {file_size_mb} MB"}
        return f"the process was stopped by {sig}: {hints.get(sig, 'a signal')}"
    return (f"the process ended with exit code {code} before returning its results "
            "(does the code call sys.exit() or os._exit()?)")


class _Running:
    def __init__(self, request: dict, pid: int, read_fd: int, slot: int):
        self.request, self.pid, self.read_fd, self.slot = request, pid, read_fd, slot
        self.start = time.monotonic()
        self.deadline = self.start + request["timeout_s"] + _SLACK_S
        self.data = b""
        self.error: str | None = None


def serve(jobs: int) -> None:
    """Read requests on stdin, run them in forked children, write one answer line each."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import importlib
    for module in _PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - an optional library missing only costs speed
            pass
    isolation = isolation_available()
    out = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr
    out.write(json.dumps({"ready": True, "isolation": isolation}) + "\n")
    out.flush()

    selector = selectors.DefaultSelector()
    stdin = sys.stdin.buffer
    selector.register(stdin, selectors.EVENT_READ, "stdin")
    pending: list[dict] = []
    running: dict[int, _Running] = {}
    free_slots = list(range(jobs))
    buffer, eof = b"", False

    def start(request: dict) -> None:
        slot = free_slots.pop(0)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            uid = BASE_UID + slot if isolation["uid_drop"] else None
            _child(request, write_fd, uid, isolation["namespaces"])
        os.close(write_fd)
        running[read_fd] = _Running(request, pid, read_fd, slot)
        selector.register(read_fd, selectors.EVENT_READ, "child")

    def finish(job: _Running) -> None:
        selector.unregister(job.read_fd)
        os.close(job.read_fd)
        del running[job.read_fd]
        if job.error is None and b"\n" in job.data:
            try:
                os.kill(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif job.error is None:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _, status = os.waitpid(job.pid, 0)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if isolation["uid_drop"]:
            _reap_uid(BASE_UID + job.slot)
        reply = job.data.split(b"\n", 1)[0].decode("utf-8", errors="replace") if b"\n" in job.data else None
        error = job.error or (None if reply else _death_reason(
            status, job.request["timeout_s"], job.request["file_size_mb"]))
        out.write(json.dumps({"id": job.request["id"], "reply": reply, "error": error,
                              "seconds": time.monotonic() - job.start}) + "\n")
        out.flush()
        free_slots.append(job.slot)
        free_slots.sort()

    while not (eof and not pending and not running):
        while pending and free_slots:
            start(pending.pop(0))
        now = time.monotonic()
        timeout = min((job.deadline for job in running.values()), default=now + 3600) - now
        for key, _ in selector.select(timeout=max(0.0, timeout)):
            if key.data == "stdin":
                chunk = os.read(stdin.fileno(), 1 << 20)
                if not chunk:
                    eof = True
                    selector.unregister(stdin)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                pending += [json.loads(line) for line in lines if line.strip()]
            else:
                job = running[key.fd]
                chunk = os.read(key.fd, 1 << 20)
                job.data += chunk
                if len(job.data) > MAX_REPLY_BYTES:
                    job.error = f"the answer is larger than {MAX_REPLY_BYTES // 2**20} MB"
                    os.kill(job.pid, signal.SIGKILL)
                    finish(job)
                elif not chunk or b"\n" in job.data:
                    finish(job)
        for job in [j for j in running.values() if time.monotonic() > j.deadline]:
            job.error = (f"timed out: no answer within {job.request['timeout_s']:g} s "
                         "(an infinite loop, or far too slow)")
            try:
                os.kill(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finish(job)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.grader.zygote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1)
    serve(max(1, parser.parse_args().jobs))
