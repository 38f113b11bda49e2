"""How chapter 04's exercises are graded (inputs, comparisons); references live in course_lib.distillation.

The hidden inputs separate a right answer from the usual wrong ones: one-row batches and several
rows (a softmax or a normalisation over the batch instead of over classes / positions), ``T != 1``
(no temperature, ``z * T``), ``T = 1`` with ``alpha = 1`` and ``alpha = 0`` (each term alone:
reversed KL, softened cross-entropy, a missing ``T^2``), logits of several hundred (a softmax
without the max subtracted overflows, ``log(softmax)`` underflows), negative features with odd
``p`` (a missing ``abs``), ``H != W`` and ``H > 1`` (flatten order, normalising along one axis),
tiny features (the ``eps`` floor) and an all-zero example, different channel counts for student
and teacher, float32 and float64.

``kd_loss`` is graded on its value *and* its gradients without changing its signature: ``build``
makes both logits tensors leaves with ``requires_grad=True``; the runner calls the function,
takes ``torch.autograd.grad`` of the returned scalar with respect to both and sends back
``{"value", "grad_student", "grad_teacher"}``. The reference's gradient into the teacher's logits is
None (detached); any non-zero gradient there fails.
"""
from __future__ import annotations

import numpy as np
import torch

from ._compare import labels_from_spec as _labels, show_tensor as _show, tensor_reason, type_name

CHAPTER = "04_distillation"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------- tensors from specs
def _tensor(spec: dict) -> torch.Tensor:
    """``{"values": nested list}`` or ``{"seed", "shape", "std", "loc", "relu"}`` (normal), with ``dtype``."""
    dtype = _DTYPES[spec.get("dtype", "float32")]
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=torch.float64).to(dtype)
    gen = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(*spec["shape"], generator=gen, dtype=torch.float64) * spec.get("std", 1.0) + spec.get("loc", 0.0)
    if spec.get("relu"):
        x = x.clamp_min(0.0)
    if "zero_rows" in spec:
        x[spec["zero_rows"]] = 0.0
    return x.to(dtype)


def _scalar_reason(expected: torch.Tensor, got, what: str) -> str | None:
    if not isinstance(got, torch.Tensor):
        return (f"{what}: expected a 0-dim torch.Tensor, got a {type_name(got)} ({got!r}); return the tensor "
                "itself (no .item(), float(...) or numpy), so that it can be backpropagated")
    return tensor_reason(expected, got, what, rtol=1e-5, atol=1e-6, atol_relative_to_max=True)


def _float_kind(rng: np.random.Generator) -> str:
    return "float64" if rng.random() < 0.3 else "float32"


# --------------------------------------------------------------------------- soft_targets
def _soft_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"values": [[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]]}, 2.0),          # T = 2: no temperature, z * T, dim 0
        ({"values": [[0.5, -1.0, 2.0, 0.0, 1.0]]}, 4.0),                 # one row: softmax over the batch = 1
        ({"values": [[1000.0, 0.0, -1000.0], [500.0, 501.0, 499.0]]}, 1.0),   # exp overflows without the max
        ({"seed": 1, "shape": [3, 4], "std": 3.0}, 0.5),                 # T < 1 sharpens
        ({"seed": 2, "shape": [4, 10], "std": 2.0, "dtype": "float64"}, 3.0),
        ({"values": [[2.0], [-1.0], [0.5], [7.0]]}, 2.0),                # one class: all ones
        ({"values": [[1.0, 2.0]]}, 0.0),                                 # T = 0 -> ValueError
        ({"values": [[1.0, 2.0]]}, -1.0),                                # T < 0 -> ValueError
        ({"values": [1.0, 2.0, 3.0]}, 1.0),                              # 1-D -> ValueError
    ]
    cases = [{"logits": z, "temperature": T} for z, T in fixed]
    for _ in range(8):
        shape = [int(rng.integers(1, 7)), int(rng.integers(2, 11))]
        T = float(rng.choice([0.5, 1.0, 2.0, 4.0, 8.0])) if rng.random() < 0.5 else float(np.round(rng.uniform(0.3, 10), 3))
        cases.append({"logits": {"seed": int(rng.integers(0, 2**31)), "shape": shape,
                                 "std": float(10 ** rng.uniform(-0.5, 1)), "dtype": _float_kind(rng)},
                      "temperature": T})
    return cases


def _soft_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["logits"]), case["temperature"]), {}


def _soft_describe(case: dict) -> str:
    (z, T), _ = _soft_build(case)
    return f"logits = {_show(z)}, temperature={T!r}"


def _soft_compare(expected: torch.Tensor, got) -> str | None:
    return tensor_reason(expected, got, "soft targets", rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- kd_loss
def _kd_cases(rng: np.random.Generator) -> list[dict]:
    s0 = {"values": [[2.0, 0.5, -1.0], [0.0, 1.5, 0.3]]}
    t0 = {"values": [[3.0, 1.0, -2.0], [-0.5, 2.5, 1.0]]}
    fixed = [
        (s0, t0, {"values": [0, 1]}, None, None),                                 # the defaults T = 4, alpha = 0.9
        (s0, t0, {"values": [0, 2]}, 2.0, 0.5),
        (s0, t0, {"values": [1, 1]}, 1.0, 1.0),                                   # the KL term alone
        ({"seed": 3, "shape": [4, 5], "std": 2.0}, {"seed": 4, "shape": [4, 5], "std": 3.0},
         {"seed": 5, "n": 4, "classes": 5}, 4.0, 0.0),                            # the cross-entropy alone, at T = 1
        ({"seed": 6, "shape": [3, 4], "std": 1.5}, {"seed": 7, "shape": [3, 4], "std": 2.0},
         {"seed": 8, "n": 3, "classes": 4}, 0.5, 0.7),                           # T < 1
        ({"values": [[300.0, 0.0, -300.0], [-200.0, 100.0, 0.0]]},
         {"values": [[250.0, -100.0, 0.0], [0.0, 150.0, -250.0]]}, {"values": [0, 2]}, 1.0, 0.9),  # large logits
        ({"seed": 9, "shape": [5, 10], "std": 2.0, "dtype": "float64"},
         {"seed": 10, "shape": [5, 10], "std": 4.0, "dtype": "float64"}, {"seed": 11, "n": 5, "classes": 10}, 8.0, 0.9),
        ({"values": [[0.3, -0.2, 1.0, 0.0]]}, {"values": [[1.0, 0.0, 2.0, -1.0]]}, {"values": [3]}, 3.0, 0.6),  # N = 1
        (s0, t0, {"values": [0, 1]}, 0.0, 0.9),                                   # T = 0 -> ValueError
        (s0, t0, {"values": [0, 1]}, 4.0, 1.5),                                   # alpha > 1 -> ValueError
        (s0, {"values": [[1.0, 2.0], [0.0, 1.0]]}, {"values": [0, 1]}, 4.0, 0.9),  # shapes differ -> ValueError
        (s0, t0, {"values": [0, 3]}, 4.0, 0.9),                                   # label out of range -> ValueError
    ]
    cases = [{"student": s, "teacher": t, "labels": y, "temperature": T, "alpha": a} for s, t, y, T, a in fixed]
    for _ in range(6):
        n, c, dtype = int(rng.integers(1, 9)), int(rng.integers(2, 11)), _float_kind(rng)
        cases.append({"student": {"seed": int(rng.integers(0, 2**31)), "shape": [n, c],
                                  "std": float(rng.uniform(0.5, 4)), "dtype": dtype},
                      "teacher": {"seed": int(rng.integers(0, 2**31)), "shape": [n, c],
                                  "std": float(rng.uniform(0.5, 6)), "dtype": dtype},
                      "labels": {"seed": int(rng.integers(0, 2**31)), "n": n, "classes": c},
                      "temperature": float(rng.choice([1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 10.0])),
                      "alpha": float(np.round(rng.uniform(0.05, 0.95), 2))})
    return cases


def _kd_build(case: dict) -> tuple[tuple, dict]:
    student = _tensor(case["student"]).requires_grad_(True)
    teacher = _tensor(case["teacher"]).requires_grad_(True)
    kwargs = {} if case["temperature"] is None else {"temperature": case["temperature"], "alpha": case["alpha"]}
    return (student, teacher, _labels(case["labels"])), kwargs


def _kd_describe(case: dict) -> str:
    (s, t, y), kw = _kd_build(case)
    knobs = "temperature and alpha left at their defaults" if not kw else \
        f"temperature={kw['temperature']!r}, alpha={kw['alpha']!r}"
    return (f"student_logits = {_show(s.detach())}, teacher_logits = {_show(t.detach())} (both requires_grad=True), "
            f"labels = {_show(y)}, {knobs}; the grader shows the loss and torch.autograd.grad of it with respect to "
            "both logits")


def _kd_runner(fn, args: tuple, kwargs: dict):
    """Call ``fn``; send back the returned loss and its gradients w.r.t. the student's and teacher's logits.

    The raw result goes back when it is not a one-element tensor (the comparison then says why); a
    gradient is None when the loss does not depend on that input through autograd.
    """
    student, teacher = args[0], args[1]
    loss = fn(*args, **kwargs)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return loss
    grads = (None, None)
    if loss.requires_grad:
        grads = torch.autograd.grad(loss.sum(), (student, teacher), allow_unused=True)
    return {"value": loss.detach(), "grad_student": grads[0], "grad_teacher": grads[1]}


def _kd_compare(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        if isinstance(got, torch.Tensor):
            return f"loss: expected a 0-dim tensor (one number), got shape {tuple(got.shape)}"
        return _scalar_reason(expected["value"], got, "loss")
    reason = _scalar_reason(expected["value"], got["value"], "loss")
    if reason:
        return reason
    if got["grad_student"] is None:
        return ("no gradient reaches student_logits: the loss is not attached to their autograd graph; compute it "
                "from student_logits with torch operations (no numpy, .item(), torch.tensor(...), .detach() or no_grad())")
    reason = tensor_reason(expected["grad_student"], got["grad_student"], "d loss / d student_logits", rtol=1e-5,
                           atol=1e-7, atol_relative_to_max=True)
    if reason:
        return reason
    g_teacher = got["grad_teacher"]
    if g_teacher is not None and bool((g_teacher != 0).any()):
        return ("a gradient flows into teacher_logits (d loss / d teacher_logits is not zero): the teacher is not "
                "trained, detach its logits")
    return None


# --------------------------------------------------------------------------- attention_map
_A0 = {"values": [[[[1.0, -2.0]], [[-3.0, 0.5]]]]}                   # (1, 2, 1, 2), negative entries


def _am_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        (_A0, 1),                                                         # p = 1: abs before the mean
        ({"seed": 1, "shape": [2, 3, 2, 2], "relu": True}, 2),            # default p, several rows, H > 1
        ({"seed": 2, "shape": [3, 4, 3, 2]}, 3),                          # odd p with negatives, H != W
        ({"seed": 3, "shape": [2, 5, 2, 5], "std": 2.0}, 1.5),           # H != W the other way
        ({"seed": 4, "shape": [2, 3, 2, 2], "std": 1e-7}, 2),             # tiny: the eps floor decides
        ({"seed": 5, "shape": [3, 2, 3, 3], "zero_rows": 1}, 2),          # an all-zero example -> zeros
        ({"seed": 6, "shape": [2, 6, 4, 4], "relu": True, "dtype": "float64"}, 4),
        ({"seed": 7, "shape": [1, 1, 1, 3]}, 2),                           # one channel, one row
        ({"values": [[1.0, 2.0], [3.0, 4.0]]}, 2),                        # 2-D -> ValueError
        ({"seed": 8, "shape": [1, 2, 2, 2]}, 0),                           # p = 0 -> ValueError
    ]
    cases = [{"features": f, "p": p} for f, p in fixed]
    for _ in range(6):
        shape = [int(rng.integers(1, 5)), int(rng.integers(1, 7)), int(rng.integers(1, 6)), int(rng.integers(2, 6))]
        cases.append({"features": {"seed": int(rng.integers(0, 2**31)), "shape": shape, "relu": bool(rng.random() < 0.5),
                                   "std": float(10 ** rng.uniform(-1, 1)), "dtype": _float_kind(rng)},
                      "p": int(rng.choice([1, 2, 2, 3, 4])) if rng.random() < 0.8 else float(np.round(rng.uniform(0.5, 3), 2))})
    return cases


def _am_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["features"]),), {"p": case["p"]}


def _am_describe(case: dict) -> str:
    (a,), kw = _am_build(case)
    return f"features = {_show(a)}, p={kw['p']!r}"


def _am_compare(expected: torch.Tensor, got) -> str | None:
    return tensor_reason(expected, got, "attention map", rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- attention_transfer_loss
def _at_cases(rng: np.random.Generator) -> list[dict]:
    same = {"seed": 20, "shape": [2, 3, 3, 3], "relu": True}
    fixed = [
        ({"seed": 11, "shape": [2, 3, 2, 2], "relu": True}, {"seed": 12, "shape": [2, 5, 2, 2], "relu": True}, 2),
        ({"seed": 13, "shape": [1, 2, 3, 3]}, {"seed": 14, "shape": [1, 4, 3, 3]}, 2),           # N = 1
        ({"seed": 15, "shape": [4, 3, 4, 4], "std": 0.5}, {"seed": 16, "shape": [4, 6, 4, 4]}, 1),  # p = 1, negatives
        ({"seed": 17, "shape": [3, 2, 2, 3], "dtype": "float64"},
         {"seed": 18, "shape": [3, 8, 2, 3], "std": 3.0, "dtype": "float64"}, 3),
        (same, same, 2),                                                                          # identical -> 0
        ({"seed": 11, "shape": [2, 3, 2, 2]}, {"seed": 12, "shape": [2, 3, 2, 3]}, 2),            # W differs -> ValueError
        ({"seed": 11, "shape": [2, 3, 2, 2]}, {"seed": 12, "shape": [3, 3, 2, 2]}, 2),            # N differs -> ValueError
        ({"values": [[1.0, 2.0]]}, {"values": [[1.0, 2.0]]}, 2),                                  # 2-D -> ValueError
    ]
    cases = [{"student": s, "teacher": t, "p": p} for s, t, p in fixed]
    for _ in range(6):
        n, h, w, dtype = int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(2, 6)), _float_kind(rng)
        relu = bool(rng.random() < 0.6)
        cases.append({"student": {"seed": int(rng.integers(0, 2**31)), "shape": [n, int(rng.integers(1, 5)), h, w],
                                  "relu": relu, "std": float(10 ** rng.uniform(-1, 1)), "dtype": dtype},
                      "teacher": {"seed": int(rng.integers(0, 2**31)), "shape": [n, int(rng.integers(1, 9)), h, w],
                                  "relu": relu, "std": float(10 ** rng.uniform(-1, 1)), "dtype": dtype},
                      "p": int(rng.choice([1, 2, 2, 3]))})
    return cases


def _at_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["student"]), _tensor(case["teacher"])), {"p": case["p"]}


def _at_describe(case: dict) -> str:
    (s, t), kw = _at_build(case)
    return f"student_features = {_show(s)}, teacher_features = {_show(t)}, p={kw['p']!r}"


def _at_compare(expected: torch.Tensor, got) -> str | None:
    return _scalar_reason(expected, got, "loss")


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, runner=None):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="distillation", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, runner=runner)


EXERCISES = [
    _exercise("soft_targets", _soft_cases, _soft_build, _soft_describe, _soft_compare),
    _exercise("kd_loss", _kd_cases, _kd_build, _kd_describe, _kd_compare, runner=_kd_runner),
    _exercise("attention_map", _am_cases, _am_build, _am_describe, _am_compare),
    _exercise("attention_transfer_loss", _at_cases, _at_build, _at_describe, _at_compare),
]
