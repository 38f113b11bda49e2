"""Run a submission's function in a separate, limited process: ``python -m course_lib.sandbox``.

Parent side, :func:`run_exercise`: start the child in its own session (so it can be killed with
everything it started), send it the submission's kept code, the exercise name and the case
descriptions as JSON on stdin, wait for a *ready* line (imports done) and then at most
``timeout_s`` for the answer, read at most ``MAX_REPLY_BYTES``, and validate what came back.

Child side, :func:`main`: import torch and numpy, make the references unavailable (every module
named in ``Exercise.all_forbidden`` becomes a stub whose functions raise; forbidden library
functions are replaced by raisers), point file descriptors 1 and 2 at ``/dev/null`` and keep
``print`` output in a capped buffer, set resource limits (address space, CPU seconds, file size),
run the kept code, call the function on every case, and write one JSON line back on a private
copy of the original stdout. The child never sees a reference or an expected result: the parent
computes those and compares.

Protections active here: wall-time and CPU-time limits, an address-space limit, a file-size
limit, its own session/process group (killed as a group), a private working directory, output
capped, no pickle, tamper detection on torch/numpy/builtins. Not active yet: dropping
privileges, a network namespace, a process-count limit (see the classroom-grading issue).
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field

__all__ = ["SandboxLimits", "SandboxResult", "run_exercise", "main"]

MAX_REPLY_BYTES = 32 * 2**20
MAX_PRINTED_CHARS = 100_000
_WATCHED_MODULES = ("builtins", "torch", "torch.nn", "torch.nn.functional", "numpy", "math",
                    "course_lib.codec")
_WATCHED_CLASSES = (("torch", "Tensor"), ("torch._C", "TensorBase"), ("torch.nn", "Module"), ("numpy", "ndarray"))


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0          # wall time for running the cases (after imports)
    startup_timeout_s: float = 120.0  # wall time for the child's imports
    memory_mb: int = 2048            # address space the submission may add on top of the imports
    file_size_mb: int = 4


@dataclass
class SandboxResult:
    outcomes: list = field(default_factory=list)   # list[codec.Outcome], one per case run
    error: str | None = None                       # why no (complete) answer came back
    printed: str = ""
    seconds: float = 0.0


# =========================================================================== parent side
def _read_until(stream, deadline: float, want_line: bool, limit: int) -> tuple[bytes, str | None]:
    """Read from ``stream`` until EOF (or one line), the deadline, or ``limit`` bytes."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    data = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return data, "timeout"
            if not selector.select(timeout=remaining):
                continue
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return data, "eof"
            data += chunk
            if len(data) > limit:
                return data, "too_big"
            if want_line and b"\n" in data:
                return data, None
    finally:
        selector.close()


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _death_reason(code: int | None, limits: SandboxLimits) -> str:
    if code is None:
        return "the process did not finish"
    if code < 0:
        sig = signal.Signals(-code).name
        hints = {"SIGXCPU": f"it used more than its CPU-time limit ({limits.timeout_s:g} s)",
                 "SIGKILL": "it was killed (memory or time limit)",
                 "SIGSEGV": "it crashed (segmentation fault)",
                 "SIGXFSZ": f"it wrote a file larger than {limits.file_size_mb} MB"}
        return f"the process was stopped by {sig}: {hints.get(sig, 'a signal')}"
    return (f"the process ended with exit code {code} before returning its results "
            "(does the code call sys.exit() or os._exit()?)")


def run_exercise(code: str, exercise: str, cases: list[dict], limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``exercise`` of the submission ``code`` on ``cases`` in a fresh limited process."""
    from .codec import DecodeError, Outcome

    limits = limits or SandboxLimits()
    job = json.dumps({"code": code, "exercise": exercise, "cases": cases, "memory_mb": limits.memory_mb,
                      "cpu_s": limits.timeout_s + 1, "file_size_mb": limits.file_size_mb})
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="grade-") as workdir:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = subprocess.Popen([sys.executable, "-m", "course_lib.sandbox"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=workdir, env=env,
                                   start_new_session=True)
        try:
            process.stdin.write(job.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass
        head, status = _read_until(process.stdout, start + limits.startup_timeout_s, True, 1024)
        if status is not None or not head.startswith(b"ready"):
            _kill_group(process)
            return SandboxResult(error="the grading process failed to start: " + (
                _death_reason(process.returncode, limits) if status == "eof" else str(status)),
                seconds=time.monotonic() - start)
        body, status = (b"", None) if head.count(b"\n") >= 2 else \
            _read_until(process.stdout, time.monotonic() + limits.timeout_s, True, MAX_REPLY_BYTES)
        if status == "timeout":
            _kill_group(process)
            return SandboxResult(error=f"timed out: no answer within {limits.timeout_s:g} s "
                                       "(an infinite loop, or far too slow)", seconds=time.monotonic() - start)
        if status == "too_big":
            _kill_group(process)
            return SandboxResult(error=f"the answer is larger than {MAX_REPLY_BYTES // 2**20} MB",
                                 seconds=time.monotonic() - start)
        if status == "eof":
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(process)  # the child, if still there, and anything it left running in its group
    seconds = time.monotonic() - start
    text = (head.split(b"\n", 1)[1] + body).decode("utf-8", errors="replace").strip()
    if not text:
        return SandboxResult(error=_death_reason(process.returncode, limits), seconds=seconds)
    try:
        reply = json.loads(text.splitlines()[-1])
        if not isinstance(reply, dict):
            raise DecodeError("the reply is not a JSON object")
        printed = str(reply.get("printed", ""))[:MAX_PRINTED_CHARS]
        if reply.get("error"):
            return SandboxResult(error=str(reply["error"])[:4000], printed=printed, seconds=seconds)
        raw = reply.get("outcomes")
        if not isinstance(raw, list) or len(raw) > len(cases):
            raise DecodeError("'outcomes' must be a list with at most one entry per case")
        return SandboxResult(outcomes=[Outcome.from_json(o) for o in raw], printed=printed, seconds=seconds)
    except (ValueError, DecodeError) as exc:
        return SandboxResult(error=f"the grading process returned a malformed answer ({exc})", seconds=seconds)


# =========================================================================== child side
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


def _set_limits(memory_mb: int, cpu_s: float, file_size_mb: int) -> None:
    import resource

    def vm_bytes() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        return 0

    address_space = vm_bytes() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    used = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime
    cpu = int(used + cpu_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_mb * 2**20, file_size_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    import numpy  # noqa: F401  (imported before the limits: part of the baseline)
    import torch

    from . import codec, exercises

    torch.set_num_threads(1)
    exercise = exercises.get(job["exercise"])
    _install_guards(exercise.all_forbidden)
    reply_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    printed = _CappedText()
    sys.stdout = sys.stderr = printed
    _set_limits(job["memory_mb"], job["cpu_s"], job["file_size_mb"])
    os.write(reply_fd, b"ready\n")

    def reply(**fields) -> None:
        fields["printed"] = printed.text()
        os.write(reply_fd, (json.dumps(fields) + "\n").encode())
        os._exit(0)

    baseline = _snapshot()
    namespace: dict = {"__name__": "submission", "__builtins__": __builtins__}
    failed_imports: list[str] = []
    try:
        import ast
        for node in ast.parse(job["code"]).body:   # each kept statement on its own
            try:
                exec(compile(ast.Module([node], []), "<submission>", "exec"), namespace)
            except ImportError as exc:
                failed_imports.append(f"{ast.unparse(node)} ({exc})")
    except BaseException as exc:  # noqa: BLE001 - SystemExit and MemoryError included
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
            reply(error=f"ran out of memory (limit {job['memory_mb']} MB above the imports)")
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt
            reply(error=f"stopped the grader with {type(exc).__name__} ({exc}); sys.exit() is not allowed")
        if "MemoryError" in outcome.error_types or "allocate memory" in outcome.error_message:
            reply(error=f"ran out of memory (limit {job['memory_mb']} MB above the imports)")
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


if __name__ == "__main__":
    main()
