"""Grading: a learner's function against the reference, on fresh random inputs.

In a notebook::

    count_parameters = check("count_parameters", count_parameters)

runs the learner's function and the reference on the same hidden inputs, prints *pass* or the
smallest failing case (inputs, expected, got), and returns the learner's function if it passed,
else the reference (with a notice), so the rest of the notebook still runs. A stub that raises
``NotImplementedError`` is reported as "not implemented yet", never as a crash.

The classroom grader (``python -m course_lib.grade``) uses the same cases and the same
:func:`judge`, but runs the learner's code in a separate, limited process (``course_lib.grader.sandbox``).
Every answer passes through :mod:`course_lib.grader.codec` in both paths, so a notebook check and the
classroom grader accept exactly the same answers.
"""
from __future__ import annotations

import importlib
import secrets
from collections.abc import Callable, Sequence
from . import codec, exercises
from .codec import Outcome, call

__all__ = ["Outcome", "check", "judge", "reference", "run_cases", "expected_outcomes", "make_cases"]

_MAX_SHOWN = 1200


def reference(name: str) -> Callable:
    """The reference implementation of exercise ``name``."""
    ex = exercises.get(name)
    return getattr(importlib.import_module(f"course_lib.{ex.topic}"), name)


def make_cases(name: str, seed: int) -> list[dict]:
    return exercises.get(name).make_cases(exercises.case_rng(seed, name))


def expected_outcomes(name: str, cases: Sequence[dict]) -> list[Outcome]:
    """The reference's outcome on every case (computed in the grader's process only)."""
    ex, ref = exercises.get(name), reference(name)
    return [call(ref, *ex.build(case), ex.harness) for case in cases]


def run_cases(fn: Callable, name: str, cases: Sequence[dict], stop_at_first_error: bool = False) -> list[Outcome]:
    ex = exercises.get(name)
    outcomes = []
    for case in cases:
        outcomes.append(call(fn, *ex.build(case), ex.harness))
        if stop_at_first_error and outcomes[-1].error_types[:1] == ("NotImplementedError",):
            break
    return outcomes


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + " ..."


def _explain(ex: exercises.Exercise, expected: Outcome, got: Outcome) -> str | None:
    """None if ``got`` is right for ``expected``, else why not (one line)."""
    if expected.raised:
        wanted = expected.error_types[0]
        if got.raised:
            return None if wanted in got.error_types else \
                f"expected {wanted}, but it raised {got.error_types[0]}: {got.error_message}"
        return f"expected {wanted} (the input is invalid), but it returned {got.value!r}"
    if got.raised:
        return f"raised {got.error_types[0]}: {got.error_message}"
    if isinstance(got.value, codec.Unsupported):
        return f"returned {got.value!r}, which is not a value this exercise can return"
    return ex.compare(expected.value, got.value)


def judge(name: str, cases: Sequence[dict], expected: Sequence[Outcome],
          got: Sequence[Outcome]) -> tuple[bool, str]:
    """Compare outcomes case by case; on the first mismatch, a counterexample message."""
    ex = exercises.get(name)
    if len(got) < len(expected) and (not got or not got[-1].raised):
        return False, f"returned {len(got)} results for {len(expected)} cases"
    for i, (case, exp, out) in enumerate(zip(cases, expected, got)):
        if out.error_types[:1] == ("NotImplementedError",):
            return False, "not implemented yet (the function raises NotImplementedError)"
        reason = _explain(ex, exp, out)
        if reason is not None:
            shown_expected = f"raises {exp.error_types[0]}" if exp.raised else repr(exp.value)
            shown_got = f"raises {out.error_types[0]}: {out.error_message}" if out.raised else repr(out.value)
            return False, _shorten(
                f"case {i + 1} of {len(cases)}: {reason}\n  inputs:   {ex.describe(case)}\n"
                f"  expected: {shown_expected}\n  got:      {shown_got}")
    return True, f"passed all {len(cases)} cases"


def check(name: str, fn: Callable, *, seed: int | None = None, verbose: bool = True) -> Callable:
    """Grade ``fn`` as exercise ``name`` on fresh random inputs; return ``fn`` if it passed, else the reference.

    Parameters
    ----------
    name : str
        The exercise id (the function's name), e.g. ``"count_parameters"``.
    fn : callable
        Your implementation.
    seed : int, optional
        Fix the hidden inputs (default: fresh ones each call).
    """
    ex = exercises.get(name)
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote for {name!r}, got {type(fn).__name__}")
    seed = secrets.randbelow(2**31) if seed is None else seed
    cases = make_cases(name, seed)
    got = run_cases(fn, name, cases, stop_at_first_error=True)
    passed, message = judge(name, cases, expected_outcomes(name, cases), got)
    if verbose:
        if passed:
            print(f"PASS {name}: {message} (seed {seed}).")
        elif message.startswith("not implemented"):
            print(f"TODO {name}: not implemented yet; the notebook goes on with the reference "
                  f"{ex.reference_path}.")
        else:
            print(f"FAIL {name} (seed {seed}): {message}\n"
                  f"The notebook goes on with the reference {ex.reference_path}; fix yours and re-run this cell.")
    return fn if passed else reference(name)
