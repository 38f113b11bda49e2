"""The grader's side of the sandbox: send exercises to the warm zygote, validate what comes back.

:class:`Pool` starts ``python -m course_lib.grader.zygote`` once (it imports the heavy libraries once),
then grades each exercise in a child forked from it (see :mod:`course_lib.grader.zygote` for the limits and
the isolation). The submission's code travels in a file readable only by the grader (the graded child
reads and deletes it); the cases go to the zygote, which hands the child one at a time. The answer
comes back as one outcome per case, each decoded here with size and depth limits before anything is
compared: a malformed answer is a failed exercise, never a grader crash. The expected results, the
``derive`` step and every comparison never leave the grader's process, and nor does a black box's
hidden parameter: the grader sends the zygote each such case without it (and a token), and evaluates the
children's calls itself (:class:`_Oracle`), so no process a graded child is forked from ever holds it.

Which protections are active depends on the machine: ``Pool.isolation`` says (``namespaces``: mount,
network, IPC namespaces; ``pid_namespace``; ``uid_drop``: a uid slot per child; ``cgroup``: a memory
limit for the exercise as a whole). They need root (CI and a classroom server run as root); as a
normal user the limits, the session, the disabled modules and the output cap still apply.
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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


class _Channel:
    """One graded job's black-box calls, in the grader: the socket the zygote handed over, the job's boxes by
    token, what is read and not yet answered, what is answered and not yet taken, the time spent evaluating."""

    def __init__(self, boxes: dict):
        self.boxes = boxes                 # token -> BlackBox (each case's own budget)
        self.sock: socket.socket | None = None
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.seconds = 0.0
        self.error: str | None = None
        self.done = False                  # the job's result came back: nothing more to answer


class _Oracle(threading.Thread):
    """Evaluates the graded children's black-box calls in the grader's process, which forks no graded child:
    f's parameters (and the case's ``f_seed``) never enter the zygote, so no graded child's memory can hold
    them. The zygote hands over one socket per job (``SOCK_SEQPACKET`` control socket, the job's id and the
    socket's end as ``SCM_RIGHTS``); the child writes ``{"t": "call", "box", "z"}`` lines on it and reads
    ``{"t": "value", "y"}`` or ``{"t": "refused", "error"}`` lines. Each call is checked here: the token must
    name one of the job's cases, the ``.npy`` is decoded with its size bounded before allocation, the rows per
    call and per case and the calls per case are the BlackBox's own checks, and a job gets
    :data:`~course_lib.grader.exercises.BLACKBOX_SECONDS` of evaluation. A call that breaks a rule fails the
    job (``error``; the zygote is told to end it). One ``selectors`` loop in a thread, never blocking on a
    child: answers wait in a buffer until the child reads them."""

    def __init__(self, control: socket.socket, cancel: Callable[[int, str], None]):
        super().__init__(daemon=True, name="grader-oracle")
        self.control, self.cancel = control, cancel
        self.lock = threading.Lock()
        self.channels: dict[int, _Channel] = {}          # job id -> channel
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_write, False)
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        self.stopping = self.closed = False

    def add(self, job_id: int, boxes: dict) -> None:
        with self.lock:
            self.channels[job_id] = _Channel(boxes)

    def result(self, job_id: int) -> str | None:
        """The job is over: why its calls failed it (None if they did not); its socket is closed."""
        with self.lock:
            channel = self.channels.get(job_id)
            if channel is None:
                return None
            channel.done = True
        self._wake()
        return channel.error

    def stop(self) -> None:
        self.stopping = True
        self._wake()

    def _wake(self) -> None:
        with self.lock:
            if not self.closed:
                try:
                    os.write(self.wake_write, b"x")
                except OSError:                         # the pipe is full: the thread wakes anyway
                    pass

    def run(self) -> None:
        try:
            while not self.stopping:
                for key, events in self.selector.select(timeout=1.0):
                    if key.data == "wake":
                        os.read(self.wake_read, 4096)
                    elif key.data == "control":
                        self._accept()
                    else:
                        self._serve(key.data, events)
                with self.lock:
                    over = [i for i, c in self.channels.items() if c.done]
                for job_id in over:
                    self._close(job_id)
                    with self.lock:
                        self.channels.pop(job_id, None)
        finally:
            for job_id in list(self.channels):
                self._close(job_id)
            self.selector.close()
            self.control.close()
            with self.lock:
                self.closed = True
                os.close(self.wake_read)
                os.close(self.wake_write)

    def _accept(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, 1024, 4)
        except OSError:
            data, fds = b"", []
        if not data and not fds:                      # the zygote is gone
            self.selector.unregister(self.control)
            return
        try:
            job_id = json.loads(data)["id"]
        except (ValueError, TypeError, KeyError):
            job_id = None
        with self.lock:
            channel = self.channels.get(job_id) if isinstance(job_id, int) else None
        if channel is None or channel.sock is not None or channel.done or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return
        channel.sock = socket.socket(fileno=fds[0])
        channel.sock.setblocking(False)
        self.selector.register(channel.sock, selectors.EVENT_READ, job_id)

    def _close(self, job_id: int) -> None:
        channel = self.channels.get(job_id)
        if channel is None or channel.sock is None:
            return
        try:
            self.selector.unregister(channel.sock)
        except (KeyError, ValueError):
            pass
        channel.sock.close()
        channel.sock = None
        channel.inbox.clear()
        channel.outbox.clear()

    def _fail(self, job_id: int, channel: _Channel, error: str) -> None:
        if channel.error is None:
            channel.error = error
            self.cancel(job_id, error)
        self._close(job_id)

    def _serve(self, job_id: int, events: int) -> None:
        channel = self.channels[job_id]
        if events & selectors.EVENT_WRITE:
            self._flush(job_id, channel)
        if channel.sock is None or not events & selectors.EVENT_READ:
            return
        try:
            chunk = channel.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:                                  # the child ended: nothing more to answer
            self._close(job_id)
            return
        channel.inbox += chunk
        limit = 2 * max((box.columns for box in channel.boxes.values()), default=1) * 8 * _max_call_rows() + 65536
        while channel.sock is not None and b"\n" in channel.inbox:
            line, _, rest = bytes(channel.inbox).partition(b"\n")
            channel.inbox[:] = rest
            error = self._answer(channel, line)
            if error is not None:
                self._fail(job_id, channel, error)
                return
        if channel.sock is not None and len(channel.inbox) > limit:
            self._fail(job_id, channel, "the graded process sent a call larger than any allowed call of the "
                                        "exercise's function")
            return
        if channel.sock is not None:
            self._flush(job_id, channel)

    def _answer(self, channel: _Channel, line: bytes) -> str | None:
        """Evaluate one call; queue its answer. The error, if the call breaks the protocol."""
        from . import codec, exercises
        try:
            frame = json.loads(line)
            box = channel.boxes[frame["box"]] if isinstance(frame, dict) and frame.get("t") == "call" and \
                isinstance(frame.get("box"), str) else None
        except (ValueError, RecursionError, KeyError, TypeError):
            box = None
        if box is None:
            return "the graded process wrote something unexpected on its channel to the exercise's function"
        started = time.monotonic()
        try:
            z = codec.text_array(frame.get("z"), max_bytes=exercises.MAX_CALL_ROWS * box.columns * 8)
        except (codec.DecodeError, ValueError, TypeError) as exc:
            return f"the graded process sent a call the grader cannot read ({str(exc)[:200]})"
        try:
            reply = {"t": "value", "y": codec.array_text(box(z))}
        except ValueError as exc:                       # a wrong shape or dtype, the budget: the learner's error
            reply = {"t": "refused", "error": str(exc)}
        channel.seconds += time.monotonic() - started
        if channel.seconds > exercises.BLACKBOX_SECONDS:
            return (f"its calls of the exercise's function took more than {exercises.BLACKBOX_SECONDS:g} s "
                    "of the grader's time")
        channel.outbox += (json.dumps(reply) + "\n").encode()
        return None

    def _flush(self, job_id: int, channel: _Channel) -> None:
        """Write what the child's socket takes now; watch it for room while anything is left."""
        while channel.outbox and channel.sock is not None:
            try:
                written = channel.sock.send(channel.outbox[:1 << 20])
            except BlockingIOError:
                break
            except OSError:                             # the child is gone
                self._close(job_id)
                return
            del channel.outbox[:written]
        if channel.sock is not None:
            self.selector.modify(channel.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if channel.outbox
                                                                        else 0), job_id)


def _max_call_rows() -> int:
    from . import exercises
    return exercises.MAX_CALL_ROWS


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
        # The black boxes are evaluated here (the oracle), never in the zygote: graded children are forked from it
        control, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen([sys.executable, "-s", "-m", "course_lib.grader.zygote", "--jobs",
                                              str(jobs), "--oracle", str(zygote_end.fileno()), *extra],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             env=env, cwd=course_home, start_new_session=True,
                                             pass_fds=(zygote_end.fileno(),))
        finally:
            zygote_end.close()
        self._oracle = _Oracle(control, self._cancel)
        self._oracle.start()
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
        from . import exercises
        ids = {}
        lines = []
        for index, (code, exercise, cases) in enumerate(tasks):
            job_id, self._next_id = self._next_id, self._next_id + 1
            split = exercises.get(exercise).blackbox if exercise in exercises.names() else None
            if split is not None:       # the zygote gets each case without what its black box hides, and a token
                boxes, public = {}, []
                for case in cases:
                    shown, box = split(case)
                    token = secrets.token_hex(16)
                    boxes[token] = box
                    public.append({**shown, "_box": token})
                self._oracle.add(job_id, boxes)
                cases = public
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
            result = parse_answer(answer, n_cases)
            refused = self._oracle.result(answer["id"])
            if refused is not None:                # its black box's calls broke a rule: that is the error
                result.error, result.kind = refused, "protocol"
            yield index, result
        writer.join()

    def _write(self, text: str) -> None:
        with self._lock:
            self._process.stdin.write(text.encode())
            self._process.stdin.flush()

    def _cancel(self, job_id: int, error: str) -> None:
        """Ask the zygote to end a job now (from the oracle's thread, never blocking it)."""
        line = json.dumps({"cancel": job_id, "error": error}) + "\n"
        def write() -> None:
            try:
                self._write(line)
            except (OSError, ValueError):           # the zygote is gone or the pool closed: nothing to end
                pass
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self._oracle.stop()
        self._oracle.join(timeout=5)
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
