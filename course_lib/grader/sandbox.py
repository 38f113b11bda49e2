"""The grader's side of the sandbox: send exercises to the warm zygote, validate what comes back.

:class:`Pool` starts ``python -m course_lib.grader.zygote`` once (it imports the heavy libraries once),
then grades each exercise in a child forked from it (see :mod:`course_lib.grader.zygote` for the limits and
the isolation). The submission's code travels in a file readable only by the grader (the graded child
reads and deletes it); the cases go to the zygote, which hands the child one at a time. The answer
comes back as one outcome per case, each decoded here with size and depth limits before anything is
compared: a malformed answer is a failed exercise, never a grader crash. The expected results, the
``derive`` step and every comparison never leave the grader's process.

Which protections are active depends on the machine: ``Pool.isolation`` says (``namespaces``: mount,
network, IPC namespaces; ``pid_namespace``; ``uid_drop``: a uid slot per child; ``cgroup``: a memory
limit for the exercise as a whole). They need root (CI and a classroom server run as root); as a
normal user the limits, the session, the disabled modules and the output cap still apply.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SandboxLimits", "SandboxResult", "Pool", "run_exercise", "hidden_paths"]

MAX_PRINTED_CHARS = 100_000


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0          # wall time and CPU time for one exercise (all its cases)
    startup_timeout_s: float = 180.0  # wall time for the zygote's imports
    memory_mb: int = 2048            # address space a child may add on top of the preloaded libraries
    file_size_mb: int = 4


@dataclass
class SandboxResult:
    outcomes: list = field(default_factory=list)   # list[codec.Outcome], one per case answered
    error: str | None = None                       # why no (complete) answer came back (outcomes: those before it)
    printed: str = ""
    seconds: float = 0.0
    kind: str | None = None                        # what the error is (zygote.ERROR_KINDS), None without one


def parse_answer(answer: dict, n_cases: int) -> SandboxResult:
    """Decode the zygote's answer for one exercise: one outcome per case it holds, each decoded with
    size and depth limits; anything malformed becomes an error result, never a grader crash."""
    from .codec import DecodeError, Outcome

    seconds = float(answer.get("seconds") or 0.0) if isinstance(answer.get("seconds"), (int, float)) else 0.0
    printed = _clean(str(answer.get("printed") or ""))[:MAX_PRINTED_CHARS]
    error = _clean(str(answer["error"]))[:4000] if answer.get("error") else None
    kind = (answer.get("kind") if answer.get("kind") in _ERROR_KINDS else "child") if error else None
    raw = answer.get("outcomes")
    if not isinstance(raw, list) or len(raw) > n_cases:
        return SandboxResult(error=error or "the grading process returned a malformed answer", printed=printed,
                             seconds=seconds, kind=kind or "protocol")
    outcomes = []
    for i, text in enumerate(raw):
        try:
            if not isinstance(text, str):
                raise DecodeError("not text")
            outcomes.append(Outcome.from_json(json.loads(text)))
        except (ValueError, TypeError, KeyError, IndexError, RecursionError, MemoryError, OverflowError,
                DecodeError) as exc:
            return SandboxResult(error=f"the answer to case {i + 1} could not be read: {_clean(str(exc))[:300]}",
                                 printed=printed, seconds=seconds, kind="protocol")
    return SandboxResult(outcomes=outcomes, error=error, printed=printed, seconds=seconds, kind=kind)


_ERROR_KINDS = ("protocol", "timeout", "memory", "died", "child", "setup")      # as zygote.ERROR_KINDS


def _clean(text: str) -> str:
    """Text safe to print or store: no terminal escapes, no control characters but newline and tab."""
    import re
    text = re.sub(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])", "", text)
    return "".join(ch for ch in text if (ch in "\n\t" or (ord(ch) >= 32 and not 0x7f <= ord(ch) < 0xa0))
                   and ch not in _BIDI)


# Bidirectional controls (U+202A-U+202E, U+2066-U+2069, marks): they can make "alice.py" display as another name.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def hidden_paths(paths: Iterable[str | Path]) -> list[str]:
    """What a child must not see: each given file's directory, or the file itself when that
    directory holds the course's code or Python (hiding it would hide the imports too)."""
    import course_lib
    needed = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                             os.path.dirname(os.path.dirname(course_lib.__file__)))]
    hidden: set[str] = set()
    for path in paths:
        path = os.path.realpath(path)
        folder = os.path.dirname(path)
        contains_needed = any(n == folder or n.startswith(folder + os.sep) for n in needed)
        hidden.add(path if contains_needed or folder == "/" else folder)
    return sorted(hidden)


class Pool:
    """A warm zygote grading up to ``jobs`` exercises at once. Use as a context manager.

    The zygote starts importing at once; the grader can compute the expected values meanwhile
    (``isolation`` and ``run`` wait for it to be ready)."""

    def __init__(self, jobs: int = 1, limits: SandboxLimits | None = None, hide: Sequence[str] = (),
                 preload: Sequence[str] | None = None):
        self.limits = limits or SandboxLimits()
        self.hide = list(hide)
        self._jobdir = tempfile.mkdtemp(prefix="grader-jobs-")   # mode 700: only the grader reads it
        # The zygote's sys.path: the folder holding course_lib and the interpreter's own; never the grader's
        # working directory or its sys.path extras (a classmate's notebook there must not be importable).
        course_home = os.path.dirname(os.path.dirname(os.path.abspath(__import__("course_lib").__file__)))
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=course_home)
        env.pop("PYTHONSTARTUP", None)
        env.pop("PYTHONUSERBASE", None)
        # preload: the modules to import besides the zygote's base (zygote.preload_for); None: every allowed one
        extra = [] if preload is None else ["--preload", ",".join(preload)]
        self._process = subprocess.Popen([sys.executable, "-s", "-m", "course_lib.grader.zygote", "--jobs", str(jobs),
                                          *extra],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         env=env, cwd=course_home, start_new_session=True)
        self._lock = threading.Lock()
        self._next_id = 0
        self._isolation: dict | None = None

    @property
    def isolation(self) -> dict:
        """Which protections are active (waits for the zygote's imports the first time)."""
        if self._isolation is None:
            first = self._readline(self.limits.startup_timeout_s)
            if not first:
                self.close()
                raise RuntimeError("the grading server (python -m course_lib.grader.zygote) failed to start")
            self._isolation = json.loads(first)["isolation"]
        return self._isolation

    def _readline(self, timeout: float) -> bytes:
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(self._process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return result[0] if result else b""

    def run(self, tasks: Sequence[tuple[str, str, list[dict]]]) -> Iterator[tuple[int, SandboxResult]]:
        """Grade ``(code, exercise, cases)`` tasks; yield ``(task index, result)`` as they finish.

        The code travels in a file only the grader can read (the graded child reads and deletes it);
        the cases go to the zygote, which hands them to the child one at a time."""
        ids = {}
        lines = []
        for index, (code, exercise, cases) in enumerate(tasks):
            job_id, self._next_id = self._next_id, self._next_id + 1
            path = os.path.join(self._jobdir, f"{job_id}.json")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
                json.dump({"code": code}, handle)
            ids[job_id] = (index, len(cases))
            lines.append(json.dumps({"id": job_id, "job": path, "exercise": exercise, "cases": cases,
                                     "timeout_s": self.limits.timeout_s, "memory_mb": self.limits.memory_mb,
                                     "file_size_mb": self.limits.file_size_mb, "hide": self.hide}))
        self.isolation                      # the zygote has finished its imports
        writer = threading.Thread(target=self._write, args=("\n".join(lines) + "\n" if lines else "",), daemon=True)
        writer.start()
        for _ in range(len(tasks)):
            line = self._process.stdout.readline()
            if not line:
                raise RuntimeError("the grading server stopped unexpectedly")
            answer = json.loads(line)
            index, n_cases = ids.pop(answer["id"])
            yield index, parse_answer(answer, n_cases)
        writer.join()

    def _write(self, text: str) -> None:
        with self._lock:
            self._process.stdin.write(text.encode())
            self._process.stdin.flush()

    def close(self) -> None:
        try:
            self._process.stdin.close()
            self._process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        for leftover in Path(self._jobdir).glob("*.json"):
            leftover.unlink()
        os.rmdir(self._jobdir)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_exercise(code: str, exercise: str, cases: list[dict], limits: SandboxLimits | None = None) -> SandboxResult:
    """Grade one exercise of one submission in a fresh pool (slow: use :class:`Pool` for a class)."""
    with Pool(1, limits) as pool:
        return next(pool.run([(code, exercise, cases)]))[1]
