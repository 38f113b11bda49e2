"""Grading: a learner's function against the reference, on fresh random inputs.

In a notebook::

    count_parameters = check("count_parameters", count_parameters)

runs the learner's function and the reference on the same hidden inputs, prints *pass* or the
first failing case (inputs, expected, got, and for a tensor the first differing element), and
returns the learner's function if it passed, else the reference (with a notice), so the rest of
the notebook still runs. A stub that raises ``NotImplementedError`` is reported as "not implemented
yet", never as a crash.

**Grade the idea.** A case on which the reference raises is an *invalid-input case* (a wrong type,
an out-of-range argument). An exercise passes when every **valid-input** case passes; what a
function does on invalid input is reported as a note after PASS ("also: for ... the reference
raises ValueError; yours returned ..."), and counts only with ``strict_errors=True`` (the
classroom grader's ``--strict-errors``).

The classroom grader (``python -m course_lib.grade``) uses the same cases and the same
:func:`judge`, but runs the learner's code in a separate, confined process; the expected values,
the ``derive`` step and every comparison stay in the grader's process. Every answer passes through
:mod:`course_lib.grader.codec` in both paths, so a notebook check and the classroom grader accept
exactly the same answers.
"""
from __future__ import annotations

import importlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import codec, exercises
from .codec import Outcome, call

__all__ = ["Outcome", "Verdict", "check", "judge", "reference", "run_cases", "expected_outcomes", "make_cases",
           "derived", "valid_first", "valid_cases_passed"]

_MAX_SHOWN = 1500
_MAX_NOTES = 3


def reference(name: str) -> Callable:
    """The reference implementation of exercise ``name``."""
    ex = exercises.get(name)
    return getattr(importlib.import_module(f"course_lib.{ex.topic}"), name)


def make_cases(name: str, seed: int) -> list[dict]:
    return exercises.get(name).make_cases(exercises.case_rng(seed, name))


def valid_first(cases: Sequence[dict], expected: Sequence[Outcome]) -> tuple[list[dict], list[Outcome]]:
    """The cases reordered so every valid-input case (the reference returns) comes before the invalid ones
    (stable): a function that hangs, crashes or stops on an invalid input has answered every graded case."""
    order = sorted(range(len(cases)), key=lambda i: expected[i].raised)
    return [cases[i] for i in order], [expected[i] for i in order]


def derived(ex: exercises.Exercise, case: dict, outcome: Outcome) -> Outcome:
    """Apply the exercise's ``derive`` step (grader side) to a returned value; its failure is a
    failed case, never a crash."""
    if ex.derive is None or outcome.raised or isinstance(outcome.value, codec.Unsupported):
        return outcome
    try:
        return Outcome(value=ex.derive(case, outcome.value))
    except Exception as exc:  # noqa: BLE001 - a malformed answer is a wrong answer
        return Outcome(value=codec.Unsupported(f"answer the grader cannot use ({type(exc).__name__}: {exc})"))


def expected_outcomes(name: str, cases: Sequence[dict]) -> list[Outcome]:
    """The reference's outcome on every case (computed in the grader's process only)."""
    ex, ref = exercises.get(name), reference(name)
    return [derived(ex, case, call(ref, *ex.build(case), ex.runner)) for case in cases]


def run_cases(fn: Callable, name: str, cases: Sequence[dict], stop_at_first_error: bool = False) -> list[Outcome]:
    """``fn``'s outcome on every case, in this process (the notebook path), ``derive`` applied; with
    ``stop_at_first_error``, it stops at the first ``NotImplementedError`` (a stub)."""
    ex = exercises.get(name)
    outcomes = []
    for case in cases:
        outcomes.append(derived(ex, case, call(fn, *ex.build(case), ex.runner)))
        if stop_at_first_error and _not_implemented(outcomes[-1]):
            break
    return outcomes


def _not_implemented(outcome: Outcome) -> bool:
    return outcome.error_types[:1] == ("NotImplementedError",)


def _shorten(text: str, limit: int = _MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def _summary(value, limit: int = 160) -> str:
    """A value in one short line: an array as its type, shape, dtype and first elements; anything else as
    its repr, cut at ``limit`` characters."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None and hasattr(value, "flatten"):
        try:
            first = [round(float(v), 4) for v in value.flatten()[:4].tolist()]
        except (TypeError, ValueError, RuntimeError):
            first = []
        count = 1
        for n in shape:
            count *= int(n)
        more = ", ..." if count > 4 else ""
        return (f"{type(value).__name__}(shape={tuple(shape)}, dtype={str(dtype).replace('torch.', '')}, "
                f"first: {', '.join(map(str, first))}{more})")
    return _shorten(" ".join(repr(value).split()), limit)


def _brief(description: str) -> str:
    """A case's description for a note about an invalid input: without what is graded (it is not)."""
    return _shorten(description.split("; graded:")[0], 200)


def _explain(ex: exercises.Exercise, expected: Outcome, got: Outcome) -> str | None:
    """None if ``got`` is right for ``expected``, else why not (one line)."""
    if expected.raised:
        wanted = expected.error_types[0]
        if got.raised:
            return None if wanted in got.error_types else \
                f"the reference raises {wanted}; yours raised {got.error_types[0]}: {got.error_message}"
        return f"the reference raises {wanted} (the input is invalid); yours returned {_summary(got.value)}"
    if got.raised:
        return f"raised {got.error_types[0]}: {got.error_message}"
    if isinstance(got.value, codec.Unsupported):
        return f"returned {got.value!r}, which is not a value this exercise can return"
    try:
        return ex.compare(expected.value, got.value)
    except Exception as exc:  # noqa: BLE001 - a value compare() did not foresee is a wrong answer
        return f"returned a value the grader cannot compare ({type(exc).__name__}: {exc})"


@dataclass
class Verdict:
    """The grade of one exercise: passed, the message (counterexample or summary), notes on invalid input."""

    passed: bool
    message: str
    notes: list[str] = field(default_factory=list)

    def __iter__(self):        # ``passed, message = judge(...)`` keeps working
        return iter((self.passed, self.message))

    def __getitem__(self, index: int):
        return (self.passed, self.message)[index]

    def text(self) -> str:
        return self.message + "".join(f"\n  also: {note}" for note in self.notes)


def judge(name: str, cases: Sequence[dict], expected: Sequence[Outcome], got: Sequence[Outcome], *,
          strict_errors: bool = False, seed: int | None = None, stopped: str | None = None) -> Verdict:
    """Compare outcomes case by case. Passes when every valid-input case (the reference returns) has
    a right outcome; invalid-input cases (the reference raises) give notes, or decide too with
    ``strict_errors``, whatever the function does there (raises anything, ``NotImplementedError``
    included, hangs or crashes). ``got`` holds one outcome per case; it may stop early after a
    ``NotImplementedError`` or, with ``stopped`` saying why (a time-out, a crash), when every case
    it did not answer is an invalid-input case."""
    ex = exercises.get(name)
    for exp, out in zip(expected, got):
        if _not_implemented(out) and not exp.raised:
            return Verdict(False, "not implemented yet (the function raises NotImplementedError)")
    unanswered = list(range(len(got), len(expected)))
    early = bool(got) and _not_implemented(got[-1]) or stopped is not None
    if len(got) > len(expected) or (unanswered and not (early and all(expected[i].raised for i in unanswered))):
        return Verdict(False, stopped or f"answered {len(got)} of {len(expected)} cases: every case needs an answer")
    if unanswered and strict_errors:
        return Verdict(False, f"answered {len(got)} of {len(expected)} cases ({stopped or 'it raised NotImplementedError'}); "
                              "with --strict-errors every invalid-input case needs the reference's exception")
    reproduce = f"\n  reproduce: check({name!r}, {name}, seed={seed})" if seed is not None else ""
    notes, n_valid = [], 0
    if unanswered:
        why = stopped or "the function raised NotImplementedError on an invalid input before them"
        notes.append(_shorten(f"{len(unanswered)} invalid-input case(s) got no answer ({why})").replace("\n", "; "))
    for i, (case, exp, out) in enumerate(zip(cases, expected, got)):
        n_valid += not exp.raised
        reason = _explain(ex, exp, out)
        if reason is None:
            continue
        shown_expected = f"raises {exp.error_types[0]}" if exp.raised else repr(exp.value)
        shown_got = f"raises {out.error_types[0]}: {out.error_message}" if out.raised else repr(out.value)
        if exp.raised and not strict_errors:
            if len(notes) < _MAX_NOTES:
                notes.append(_shorten(f"for {_brief(ex.describe(case))}: {reason}", 400).replace("\n", "; "))
            continue
        return Verdict(False, f"case {i + 1} of {len(cases)}: {_shorten(reason, 600)}\n"
                              f"  inputs:   {_shorten(ex.describe(case), 800)}\n"
                              f"  expected: {_shorten(shown_expected, 600)}\n  got:      {_shorten(shown_got, 600)}"
                              + reproduce)
    n_invalid = len(cases) - n_valid - len(unanswered)
    n_invalid_right = n_invalid - (len(notes) - bool(unanswered))
    summary = f"passed all {n_valid} valid-input cases" + (
        f" and {n_invalid_right} of {n_invalid + len(unanswered)} invalid-input cases" if n_invalid + len(unanswered) else "")
    if notes and not strict_errors:
        summary += " (invalid input is advice, not graded: see the notes)"
    return Verdict(True, summary, notes)


def valid_cases_passed(name: str, cases: Sequence[dict], expected: Sequence[Outcome],
                       got: Sequence[Outcome]) -> tuple[int, int]:
    """(right, total) over the valid-input cases (the reference returns): the basis of partial credit.
    A case with no answer counts as wrong."""
    ex = exercises.get(name)
    valid = [i for i, exp in enumerate(expected) if not exp.raised]
    right = sum(i < len(got) and _explain(ex, expected[i], got[i]) is None for i in valid)
    return right, len(valid)


def check(name: str, fn: Callable, *, seed: int | None = None, verbose: bool = True,
          strict_errors: bool = False, time_limit_s: float = 30.0) -> Callable:
    """Grade ``fn`` as exercise ``name`` on fresh random inputs; return ``fn`` if it passed, else the reference.

    Parameters
    ----------
    name : str
        The exercise id (the function's name), e.g. ``"count_parameters"``.
    fn : callable
        Your implementation.
    seed : int, optional
        Fix the hidden inputs (default: fresh ones each call); a failure message says which seed
        reproduces it.
    strict_errors : bool, default=False
        Also require the reference's exceptions on invalid input.
    time_limit_s : float, default=30.0
        For all the cases together; past it the function is stopped, and the cases it did not answer
        count as in the classroom grader (a valid-input case: FAIL; only invalid-input cases left: a note).

    In a notebook, the function checked is the one the classroom grader will see: rebuilt from the cells
    run so far, keeping only their imports, ``def``s, constants that call nothing and helper classes
    (:mod:`course_lib.grader.notebook`).
    """
    from .notebook import graded_function, run_limited

    ex = exercises.get(name)
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote for {name!r}, got {type(fn).__name__}")
    seed = secrets.randbelow(2**31) if seed is None else seed
    cases = make_cases(name, seed)
    cases, expected = valid_first(cases, expected_outcomes(name, cases))
    graded, failed, missing = graded_function(name, fn)
    if missing is not None:
        verdict = Verdict(False, missing)
    else:
        got, stopped, _ = run_limited(graded, name, cases, time_limit_s, derived, failed)
        verdict = judge(name, cases, expected, got, strict_errors=strict_errors, seed=seed, stopped=stopped)
    if verbose:
        if verdict.passed:
            print(f"PASS {name}: {verdict.text()} (seed {seed}).")
        elif verdict.message.startswith("not implemented"):
            print(f"TODO {name}: not implemented yet; the notebook goes on with the reference "
                  f"{ex.reference_path}.")
        else:
            print(f"FAIL {name} (seed {seed}): {verdict.message}\n"
                  f"The notebook goes on with the reference {ex.reference_path}; fix yours and re-run this cell.")
    return fn if verdict.passed else reference(name)
