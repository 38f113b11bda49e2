"""What every exercise's grader must do, as tests each chapter's grader test module instantiates:

    test_grader_accepts_reference, test_grader_rejects_stub, test_grader_rejects_wrong_answer = \\
        contract_tests(WRONG)

``WRONG`` maps each exercise to the realistic wrong implementations its grader must reject (at
least three each): on every seed, each is rejected with a counterexample, not because it crashed.
"""
import re

import pytest

from course_lib.grader import grading

SEEDS = [0, 1, 2]


def grade(name, fn, seed):
    """(passed, message) of ``fn`` as exercise ``name`` on the hidden inputs of ``seed``, in-process."""
    cases = grading.make_cases(name, seed)
    return grading.judge(name, cases, grading.expected_outcomes(name, cases), grading.run_cases(fn, name, cases))


def stub(*args, **kwargs):
    raise NotImplementedError


def contract_tests(wrong: dict, seeds=SEEDS):
    assert all(len(fns) >= 3 for fns in wrong.values()), "each exercise needs >= 3 wrong answers"

    @pytest.mark.parametrize("name", list(wrong))
    @pytest.mark.parametrize("seed", seeds)
    def accepts_reference(name, seed):
        passed, message = grade(name, grading.reference(name), seed)
        assert passed, message

    @pytest.mark.parametrize("name", list(wrong))
    def rejects_stub(name):
        passed, message = grade(name, stub, 0)
        assert not passed and message.startswith("not implemented")

    @pytest.mark.parametrize("name,wrong_fn", [(n, w) for n, ws in wrong.items() for w in ws],
                             ids=lambda v: getattr(v, "__name__", v))
    @pytest.mark.parametrize("seed", seeds)
    def rejects_wrong_answer(name, wrong_fn, seed):
        passed, message = grade(name, wrong_fn, seed)
        assert not passed
        assert "case" in message and "expected" in message                   # a counterexample ...
        assert not re.match(r"case \d+ of \d+: raised (RuntimeError|IndexError|TypeError)", message), \
            message                                                          # ... not a crash on valid input

    return accepts_reference, rejects_stub, rejects_wrong_answer
