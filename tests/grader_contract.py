"""What every exercise's grader must do, as tests each chapter's grader test module instantiates:

    (test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
     test_grader_rejects_stub, test_grader_rejects_wrong_answer) = contract_tests(WRONG, INDEPENDENT)

``WRONG`` maps each exercise to the realistic wrong implementations its grader must reject (at
least three each): on every seed, each is rejected with a counterexample, not because it crashed.
``INDEPENDENT`` maps **every** exercise to at least one correct implementation written from the
instructions without the reference (another algorithm, a loop, numpy, a library): the grader's
expected values come from the reference, so only an independent answer that passes shows that the
grader accepts the idea and not just the reference's own arithmetic. ``accepts_reference`` alone is a
round trip (the reference through the sandbox's encoding and the comparison), not an oracle.
"""
import re

import pytest

from course_lib.grader import grading

SEEDS = [0, 1, 2]
WRONG_SEEDS = list(range(8))      # a wrong answer must be caught on every seed, not most


def grade(name, fn, seed, strict_errors=False):
    """The verdict on ``fn`` as exercise ``name`` on the hidden inputs of ``seed``, in-process
    (unpacks as ``passed, message``; ``.notes`` holds the invalid-input notes)."""
    cases = grading.make_cases(name, seed)
    return grading.judge(name, cases, grading.expected_outcomes(name, cases), grading.run_cases(fn, name, cases),
                         strict_errors=strict_errors)


def grades_the_idea(no_validation: dict, seeds=SEEDS):
    """Grade the idea: a right answer that skips input validation passes (invalid-input cases become
    notes naming the reference's exception), and fails only with ``strict_errors``."""
    @pytest.mark.parametrize("name,fn", [(n, f) for n, fs in no_validation.items() for f in fs],
                             ids=lambda v: getattr(v, "__name__", v))
    @pytest.mark.parametrize("seed", seeds)
    def passes_without_validation(name, fn, seed):
        verdict = grade(name, fn, seed)
        assert verdict.passed, verdict.message
        assert verdict.notes and "the reference raises" in verdict.notes[0]
        strict = grade(name, fn, seed, strict_errors=True)
        assert not strict.passed and "the reference raises" in strict.message

    return passes_without_validation


def stub(*args, **kwargs):
    raise NotImplementedError


def contract_tests(wrong: dict, independent: dict, seeds=SEEDS, wrong_seeds=WRONG_SEEDS, independent_seeds=None):
    assert all(len(fns) >= 3 for fns in wrong.values()), "each exercise needs >= 3 wrong answers"
    independent = {name: fns if isinstance(fns, (list, tuple)) else [fns] for name, fns in independent.items()}
    assert set(independent) == set(wrong) and all(independent.values()), \
        f"every exercise needs an independent correct version; missing: {sorted(set(wrong) - set(independent))}"
    independent_seeds = seeds if independent_seeds is None else independent_seeds

    @pytest.mark.parametrize("name", list(wrong))
    @pytest.mark.parametrize("seed", seeds)
    def accepts_reference(name, seed):
        """A round trip: the reference's answers, encoded in the sandbox, equal its expected values."""
        passed, message = grade(name, grading.reference(name), seed)
        assert passed, message

    @pytest.mark.parametrize("name,fn", [(n, f) for n, fs in independent.items() for f in fs],
                             ids=lambda v: getattr(v, "__name__", v))
    @pytest.mark.parametrize("seed", independent_seeds)
    def accepts_independent(name, fn, seed):
        """The oracle: a correct answer written without the reference passes."""
        passed, message = grade(name, fn, seed)
        assert passed, f"{name}: {message}"

    @pytest.mark.parametrize("name", list(wrong))
    def rejects_stub(name):
        passed, message = grade(name, stub, 0)
        assert not passed and message.startswith("not implemented")

    @pytest.mark.parametrize("name,wrong_fn", [(n, w) for n, ws in wrong.items() for w in ws],
                             ids=lambda v: getattr(v, "__name__", v))
    @pytest.mark.parametrize("seed", wrong_seeds)
    def rejects_wrong_answer(name, wrong_fn, seed):
        # Not strict: invalid-input cases only give notes, so a rejection here is always a valid-input case's.
        passed, message = grade(name, wrong_fn, seed)
        assert not passed
        assert "case" in message and "expected" in message                   # a counterexample ...
        assert not re.match(r"case \d+ of \d+: raised (RuntimeError|IndexError|TypeError)", message), \
            message                                                          # ... not a crash on valid input

    return accepts_reference, accepts_independent, rejects_stub, rejects_wrong_answer
