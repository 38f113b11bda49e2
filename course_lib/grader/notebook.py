"""What ``check()`` runs in a notebook: the function as the classroom grader will see it, within a time limit.

The classroom grader keeps only a notebook's top-level imports, ``def``s, constants whose value calls nothing
and helper classes (:func:`course_lib.grader.submission.kept`); everything else (training, plots, a constant
computed by a call) is dropped. So that ``check()`` passes exactly when the grader does, in IPython it
rebuilds the function from the cells run so far, keeping what the grader keeps, in a fresh namespace, and
checks that function: a helper that uses a top-level constant passes both; a helper that needs a dropped
statement fails both, with the same message. Without IPython's history (a plain script, or a kernel asked
not to store it, as nbval does), ``check()`` checks the function it is given.

The cases run in a worker thread with a time limit: a function that loops in Python is interrupted; one
stuck inside compiled code (a solver that never returns) is left behind, reported, and the notebook goes
on (restart the kernel to stop it). A time-out after every valid-input case was answered is a note, as in
the classroom grader.
"""
from __future__ import annotations

import ast
import ctypes
import threading
import time
from collections.abc import Callable, Sequence

from . import codec, exercises
from .codec import Outcome
from .submission import extract_definitions

__all__ = ["KEPT_HINT", "graded_function", "run_limited", "TimeLimit"]

KEPT_HINT = ("; while grading, only a notebook's imports, defs, constants that call nothing and helper classes "
             "are kept from the top level")
_TOLERATED = (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.ClassDef)


class TimeLimit(BaseException):
    """Raised inside the worker thread when ``check()``'s time limit is reached."""


def _history() -> list[str] | None:
    """The raw source of the cells run so far in this IPython kernel (None outside IPython or when the
    kernel keeps no history)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    manager = getattr(shell, "history_manager", None)
    raw = list(getattr(manager, "input_hist_raw", None) or [])
    sources = [s for s in raw if isinstance(s, str) and s.strip()]
    return sources or None


def define(code: str) -> tuple[dict, list[str], str | None]:
    """Run the kept ``code`` statement by statement, as the graded child does: (namespace, the imports,
    constants and classes that could not run, the error that stopped a ``def``, or None)."""
    namespace: dict = {"__name__": "submission", "__builtins__": __builtins__}
    failed: list[str] = []
    for node in ast.parse(code).body:
        try:
            exec(compile(ast.Module([node], []), "<submission>", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - an import, constant or class that cannot run here
            if not isinstance(node, _TOLERATED):
                return namespace, failed, f"defining the functions failed: {type(exc).__name__}: {exc}"
            failed.append(f"{ast.unparse(node).splitlines()[0][:80]} ({type(exc).__name__}: {exc})")
    return namespace, failed, None


def graded_function(name: str, fn: Callable) -> tuple[Callable, list[str], str | None]:
    """The function ``check(name, fn)`` should run: (function, notes for NameErrors, error or None).

    In IPython, when ``fn`` is the notebook's own ``def name`` (defined in ``__main__``), it is rebuilt from
    the kept code of the cells run so far (the last definition wins, as when the notebook runs in order).
    Otherwise ``fn`` itself."""
    if getattr(fn, "__module__", None) != "__main__" or getattr(fn, "__name__", None) != name:
        return fn, [], None
    sources = _history()
    if sources is None:
        return fn, [], None
    code, functions, _ = extract_definitions(sources, notebook=True)
    if name not in functions:
        return fn, [], (f"the classroom grader will not find {name}: it reads only a `def {name}(...)` at the top "
                        "level of a code cell (not inside an if, a loop or another function)")
    namespace, failed, error = define(code)
    rebuilt = namespace.get(name)
    if error is not None or not callable(rebuilt):
        return fn, failed, error or f"{name} is not defined as a function"
    return rebuilt, failed, None


def _interrupt(thread: threading.Thread) -> None:
    """Raise :class:`TimeLimit` in ``thread`` at its next Python instruction."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TimeLimit))


def run_limited(fn: Callable, name: str, cases: Sequence[dict], time_limit_s: float,
                derive: Callable[[exercises.Exercise, dict, Outcome], Outcome],
                failed: Sequence[str] = ()) -> tuple[list[Outcome], str | None, float]:
    """``fn``'s outcomes on ``cases`` in order, stopping after a ``NotImplementedError``, within
    ``time_limit_s`` seconds for all of them: (outcomes answered, why it stopped early or None, seconds)."""
    ex = exercises.get(name)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        try:
            for case in cases:
                outcome = derive(ex, case, codec.call(fn, *ex.build(case), ex.runner))
                if "NameError" in outcome.error_types:
                    outcome.error_message += KEPT_HINT + (
                        "; these of them could not run: " + "; ".join(failed) if failed else "")
                with lock:
                    if stop.is_set():
                        return
                    outcomes.append(outcome)
                if outcome.error_types[:1] == ("NotImplementedError",):
                    return
        except TimeLimit:
            pass

    start = time.perf_counter()
    worker = threading.Thread(target=work, name=f"check-{name}", daemon=True)
    worker.start()
    worker.join(time_limit_s)
    seconds = time.perf_counter() - start
    if not worker.is_alive():
        return outcomes, None, seconds
    with lock:
        stop.set()
        answered = list(outcomes)
    _interrupt(worker)
    worker.join(2.0)
    stuck = ("; it is still running inside compiled code in this kernel: restart the kernel to stop it"
             if worker.is_alive() else "")
    return answered, f"time limit of {time_limit_s:g} s exceeded (an infinite loop, or far too slow){stuck}", seconds
