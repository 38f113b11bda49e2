"""How chapter 07's exercises are graded (inputs, comparisons); references live in course_lib.compression_explanation.

The hidden inputs separate a right answer from the usual wrong ones:

- ``attribution_agreement``: ReLU'd maps full of exact zeros and small-integer maps (ties: ordinal ranks
  and the ``1 - 6 sum d^2 / (n (n^2 - 1))`` shortcut are wrong there), signed maps with large negative
  entries (top-k by signed value, cosine of ``|a|``), ``k * M`` landing on .5 (``round`` is half to
  even: ``int`` and ``floor(x + 0.5)`` each fail one case) or below 1 (``max(1, ...)``), a tie exactly
  at the top-k cut (lower flat index first), several rows of different agreement (a batch mean or one
  batch-wide value), (N, M), (N, H, W) and (N, C, H, W) inputs in float32 and float64.
- ``explanation_kd_loss``: graded on its value *and* its gradients (the runner takes
  ``torch.autograd.grad`` of the returned scalar with respect to the four float inputs): maps with two
  channels (a cosine along dim 1 instead of over each flattened map), one row and several rows (sum
  instead of mean), an all-zero teacher map (a division without the eps floor gives nan), the
  defaults, ``alpha = 1``, ``lam = 0``; any gradient into the teacher's logits or map fails.
- ``taylor_channel_importance``: activations and gradients whose products change sign across
  positions (abs before the spatial mean) and across examples (batch mean before abs), ``H != W``,
  one example, float64.
"""
from __future__ import annotations

import numpy as np
import torch

from ._compare import labels_from_spec as _labels, show_tensor as _show, tensor_reason, type_name

CHAPTER = "07_compression_and_explanation"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------- tensors from specs
def _tensor(spec: dict) -> torch.Tensor:
    """``{"values": nested list}`` or ``{"seed", "shape", "kind"}``; kind: normal, relu, int (small ints), with dtype."""
    dtype = _DTYPES[spec.get("dtype", "float32")]
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=torch.float64).to(dtype)
    gen = torch.Generator().manual_seed(spec["seed"])
    kind = spec.get("kind", "normal")
    if kind == "int":
        x = torch.randint(-2, 3, spec["shape"], generator=gen).double()
    else:
        x = torch.randn(*spec["shape"], generator=gen, dtype=torch.float64) * spec.get("std", 1.0)
        if kind == "relu":
            x = x.clamp_min(0.0)
    if kind in ("relu", "int") and x.dim() >= 2:
        x.view(len(x), -1)[:, 0] = 3.0            # never a constant row: 3 is above every other entry
    for row in spec.get("zero_rows", []):
        x[row] = 0.0
    return x.to(dtype)


def _kind(rng: np.random.Generator) -> str:
    return "float64" if rng.random() < 0.3 else "float32"


# --------------------------------------------------------------------------- attribution_agreement
def _agree_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"seed": 1, "shape": [3, 1, 4, 4], "kind": "relu"}, {"seed": 2, "shape": [3, 1, 4, 4], "kind": "relu"}, 0.1),
        ({"seed": 3, "shape": [2, 5, 5], "kind": "int"}, {"seed": 4, "shape": [2, 5, 5], "kind": "int"}, 0.1),  # m = 2.5 -> 2
        ({"seed": 5, "shape": [2, 15], "std": 2.0}, {"seed": 6, "shape": [2, 15], "std": 2.0}, 0.1),          # m = 1.5 -> 2
        ({"values": [[3.0, 1.0, 3.0, 0.0, 3.0, -3.0], [0.0, 2.0, -1.0, 4.0, -5.0, 1.0]]},
         {"values": [[0.0, 0.0, 5.0, 0.0, 0.0, 4.0], [1.0, 3.0, 0.0, -6.0, 2.0, 0.5]]}, 0.4),                 # tie at the cut
        ({"seed": 7, "shape": [4, 2, 3, 3], "std": 3.0}, {"seed": 8, "shape": [4, 2, 3, 3], "std": 1.0}, 0.25),  # signed
        ({"seed": 9, "shape": [2, 1, 4, 4], "kind": "relu", "dtype": "float64"},
         {"seed": 10, "shape": [2, 1, 4, 4], "dtype": "float64"}, 0.01),                                     # m = max(1, 0)
        ({"seed": 11, "shape": [3, 8]}, {"seed": 12, "shape": [3, 8], "kind": "relu"}, 1.0),                  # k = 1
        ({"seed": 13, "shape": [2, 1, 3, 3]}, {"seed": 14, "shape": [2, 1, 3, 3], "zero_rows": [1]}, 0.1),   # constant row
        ({"seed": 13, "shape": [2, 9]}, {"seed": 14, "shape": [2, 3, 3]}, 0.1),                               # shapes differ
        ({"seed": 13, "shape": [2, 9]}, {"seed": 14, "shape": [2, 9]}, 0.0),                                  # k = 0
        ({"seed": 13, "shape": [2, 9]}, {"seed": 14, "shape": [2, 9]}, 1.5),                                  # k > 1
    ]
    cases = [{"a": a, "b": b, "k": k} for a, b, k in fixed]
    cases.insert(0, {"a": fixed[0][0], "b": fixed[0][1], "k": None})                                       # default k
    for _ in range(6):
        shape = [int(rng.integers(1, 6))] + ([int(rng.integers(2, 30))] if rng.random() < 0.4 else
                                             [int(rng.integers(1, 3)), int(rng.integers(2, 7)), int(rng.integers(2, 7))])
        dtype = _kind(rng)
        spec = lambda: {"seed": int(rng.integers(0, 2**31)), "shape": shape, "dtype": dtype,  # noqa: E731
                        "kind": str(rng.choice(["normal", "relu", "int"])), "std": float(rng.uniform(0.5, 3))}
        cases.append({"a": spec(), "b": spec(), "k": float(np.round(rng.uniform(0.05, 0.6), 2))})
    return cases


def _agree_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["a"]), _tensor(case["b"])), ({} if case["k"] is None else {"k": case["k"]})


def _agree_describe(case: dict) -> str:
    (a, b), kw = _agree_build(case)
    return f"a = {_show(a)}, b = {_show(b)}, " + (f"k={kw['k']!r}" if kw else "k left at its default")


def _agree_compare(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        return f"expected a dict with keys {sorted(expected)}, got a {type_name(got)}"
    if set(map(str, got)) != set(expected):
        return f"expected the keys {sorted(expected)}, got {sorted(map(str, got))}"
    for key in ("spearman", "topk_iou", "cosine"):
        reason = tensor_reason(expected[key], got[key], key, rtol=1e-6, atol=1e-9)
        if reason:
            return reason
    return None


# --------------------------------------------------------------------------- explanation_kd_loss
_S0 = {"values": [[2.0, 0.5, -1.0], [0.0, 1.5, 0.3]]}
_T0 = {"values": [[3.0, 1.0, -2.0], [-0.5, 2.5, 1.0]]}


def _ekd_cases(rng: np.random.Generator) -> list[dict]:
    m = lambda seed, shape, **kw: {"seed": seed, "shape": shape, **kw}  # noqa: E731
    fixed = [
        (_S0, _T0, {"values": [0, 1]}, m(1, [2, 1, 3, 3], kind="relu"), m(2, [2, 1, 3, 3], kind="relu"), None),
        (_S0, _T0, {"values": [0, 2]}, m(3, [2, 2, 2, 3]), m(4, [2, 2, 2, 3]), (0.5, 2.0, 0.5)),     # 2 channels, signed
        (m(5, [4, 5], std=2.0), m(6, [4, 5], std=3.0), {"seed": 7, "n": 4, "classes": 5},
         m(8, [4, 1, 4, 4], kind="relu"), m(9, [4, 1, 4, 4], kind="relu"), (2.0, 1.0, 1.0)),          # KL alone + maps
        (m(10, [3, 4]), m(11, [3, 4]), {"seed": 12, "n": 3, "classes": 4},
         m(13, [3, 6]), m(14, [3, 6], zero_rows=[1]), (1.5, 4.0, 0.9)),                                # flat maps, zero teacher row
        (m(15, [1, 3]), m(16, [1, 3]), {"values": [2]}, m(17, [1, 1, 2, 2], kind="relu"),
         m(18, [1, 1, 2, 2], kind="relu"), (3.0, 3.0, 0.6)),                                           # N = 1
        (m(19, [3, 10], std=2.0, dtype="float64"), m(20, [3, 10], std=4.0, dtype="float64"),
         {"seed": 21, "n": 3, "classes": 10}, m(22, [3, 1, 5, 5], kind="relu", dtype="float64"),
         m(23, [3, 1, 5, 5], kind="relu", dtype="float64"), (0.7, 8.0, 0.9)),
        (_S0, _T0, {"values": [1, 1]}, m(1, [2, 1, 3, 3]), m(2, [2, 1, 3, 3]), (0.0, 4.0, 0.9)),      # lam = 0
        (_S0, _T0, {"values": [0, 1]}, m(1, [2, 1, 3, 3]), m(2, [2, 1, 3, 3]), (-1.0, 4.0, 0.9)),     # lam < 0
        (_S0, _T0, {"values": [0, 1]}, m(1, [2, 1, 3, 3]), m(2, [2, 1, 3, 2]), (1.0, 4.0, 0.9)),      # maps differ
        (_S0, _T0, {"values": [0, 3]}, m(1, [2, 1, 3, 3]), m(2, [2, 1, 3, 3]), (1.0, 4.0, 0.9)),      # label range
    ]
    cases = [{"student": s, "teacher": t, "labels": y, "student_map": sm, "teacher_map": tm, "knobs": kn}
             for s, t, y, sm, tm, kn in fixed]
    for _ in range(5):
        n, c, dtype = int(rng.integers(1, 7)), int(rng.integers(2, 8)), _kind(rng)
        shape = [n, int(rng.integers(1, 3)), int(rng.integers(2, 6)), int(rng.integers(2, 6))]
        kind = str(rng.choice(["normal", "relu"]))
        cases.append({"student": m(int(rng.integers(0, 2**31)), [n, c], std=float(rng.uniform(0.5, 3)), dtype=dtype),
                      "teacher": m(int(rng.integers(0, 2**31)), [n, c], std=float(rng.uniform(0.5, 4)), dtype=dtype),
                      "labels": {"seed": int(rng.integers(0, 2**31)), "n": n, "classes": c},
                      "student_map": m(int(rng.integers(0, 2**31)), shape, kind=kind, dtype=dtype),
                      "teacher_map": m(int(rng.integers(0, 2**31)), shape, kind=kind, dtype=dtype),
                      "knobs": (float(np.round(rng.uniform(0.1, 5), 2)), float(rng.choice([1.0, 2.0, 4.0, 6.0])),
                                float(np.round(rng.uniform(0.1, 0.95), 2)))})
    return cases


def _ekd_build(case: dict) -> tuple[tuple, dict]:
    s, t = _tensor(case["student"]).requires_grad_(True), _tensor(case["teacher"]).requires_grad_(True)
    sm, tm = _tensor(case["student_map"]).requires_grad_(True), _tensor(case["teacher_map"]).requires_grad_(True)
    knobs = case["knobs"]
    kwargs = {} if knobs is None else dict(zip(("lam", "temperature", "alpha"), knobs))
    return (s, t, _labels(case["labels"]), sm, tm), kwargs


def _ekd_describe(case: dict) -> str:
    (s, t, y, sm, tm), kw = _ekd_build(case)
    knobs = ", ".join(f"{k}={v!r}" for k, v in kw.items()) or "lam, temperature and alpha left at their defaults"
    return (f"student_logits = {_show(s.detach())}, teacher_logits = {_show(t.detach())}, labels = {_show(y)}, "
            f"student_map = {_show(sm.detach())}, teacher_map = {_show(tm.detach())} (the four float tensors "
            f"requires_grad=True), {knobs}; the grader shows the loss and torch.autograd.grad of it with respect to "
            "the four float inputs")


_GRADS = ("student_logits", "teacher_logits", "student_map", "teacher_map")


def _ekd_runner(fn, args: tuple, kwargs: dict):
    """Call ``fn``; send back the returned loss and its gradients w.r.t. the four float inputs (None: not reached)."""
    loss = fn(*args, **kwargs)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return loss
    inputs = (args[0], args[1], args[3], args[4])
    grads = (None,) * 4
    if loss.requires_grad:
        grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
    return {"value": loss.detach(), **{f"grad_{n}": g for n, g in zip(_GRADS, grads)}}


def _scalar_reason(expected: torch.Tensor, got, what: str) -> str | None:
    if not isinstance(got, torch.Tensor):
        return (f"{what}: expected a 0-dim torch.Tensor, got a {type_name(got)} ({got!r}); return the tensor "
                "itself (no .item(), float(...) or numpy), so that it can be backpropagated")
    return tensor_reason(expected, got, what, rtol=1e-5, atol=1e-6, atol_relative_to_max=True)


def _ekd_compare(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        if isinstance(got, torch.Tensor):
            return f"loss: expected a 0-dim tensor (one number), got shape {tuple(got.shape)}"
        return _scalar_reason(expected["value"], got, "loss")
    reason = _scalar_reason(expected["value"], got["value"], "loss")
    if reason:
        return reason
    for name in ("student_logits", "student_map"):
        g, e = got[f"grad_{name}"], expected[f"grad_{name}"]
        if g is None and e is not None:
            return (f"no gradient reaches {name}: the loss is not attached to its autograd graph; compute it from "
                    f"{name} with torch operations (no numpy, .item(), torch.tensor(...), .detach() or no_grad())")
        if e is None:                                   # lam = 0: the map does not enter the loss
            if g is not None and bool((g != 0).any()):
                return f"d loss / d {name}: expected no gradient (lam = 0), got a non-zero one"
            continue
        reason = tensor_reason(e, g, f"d loss / d {name}", rtol=1e-5, atol=1e-7, atol_relative_to_max=True)
        if reason:
            return reason
    for name in ("teacher_logits", "teacher_map"):
        g = got[f"grad_{name}"]
        if g is not None and bool((g != 0).any()):
            return (f"a gradient flows into {name} (d loss / d {name} is not zero): the teacher is not trained, "
                    f"detach its {name.split('_')[1]}")
    return None


# --------------------------------------------------------------------------- taylor_channel_importance
def _taylor_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"values": [[[[1.0, 2.0]], [[1.0, 1.0]]], [[[1.0, 0.0]], [[2.0, 2.0]]]]},
         {"values": [[[[1.0, -1.0]], [[1.0, 1.0]]], [[[-2.0, 0.0]], [[1.0, -1.0]]]]}),       # signs cancel
        ({"seed": 1, "shape": [3, 4, 2, 3], "kind": "relu"}, {"seed": 2, "shape": [3, 4, 2, 3]}),   # H != W
        ({"seed": 3, "shape": [1, 2, 3, 3], "kind": "relu"}, {"seed": 4, "shape": [1, 2, 3, 3]}),   # N = 1
        ({"seed": 5, "shape": [5, 3, 4, 2], "dtype": "float64"}, {"seed": 6, "shape": [5, 3, 4, 2], "dtype": "float64"}),
        ({"seed": 7, "shape": [2, 3, 3]}, {"seed": 8, "shape": [2, 3, 3]}),                        # 3-D -> ValueError
        ({"seed": 7, "shape": [2, 3, 3, 3]}, {"seed": 8, "shape": [2, 3, 3, 2]}),                  # shapes differ
    ]
    cases = [{"activation": a, "gradient": g} for a, g in fixed]
    for _ in range(6):
        shape = [int(rng.integers(1, 7)), int(rng.integers(1, 9)), int(rng.integers(1, 6)), int(rng.integers(2, 6))]
        dtype = _kind(rng)
        cases.append({"activation": {"seed": int(rng.integers(0, 2**31)), "shape": shape, "dtype": dtype,
                                     "kind": str(rng.choice(["normal", "relu"])), "std": float(rng.uniform(0.5, 3))},
                      "gradient": {"seed": int(rng.integers(0, 2**31)), "shape": shape, "dtype": dtype,
                                   "std": float(10 ** rng.uniform(-3, 0))}})
    return cases


def _taylor_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["activation"]), _tensor(case["gradient"])), {}


def _taylor_describe(case: dict) -> str:
    (a, g), _ = _taylor_build(case)
    return f"activation = {_show(a)}, gradient = {_show(g)}"


def _taylor_compare(expected: torch.Tensor, got) -> str | None:
    return tensor_reason(expected, got, "channel importance", rtol=1e-5, atol=1e-7, atol_relative_to_max=True)


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, runner=None, forbidden=()):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="compression_explanation", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, runner=runner, forbidden=tuple(forbidden))


EXERCISES = [
    _exercise("attribution_agreement", _agree_cases, _agree_build, _agree_describe, _agree_compare,
              forbidden=["scipy.stats", "sklearn.metrics"]),
    _exercise("explanation_kd_loss", _ekd_cases, _ekd_build, _ekd_describe, _ekd_compare, runner=_ekd_runner,
              forbidden=["course_lib.distillation"]),
    _exercise("taylor_channel_importance", _taylor_cases, _taylor_build, _taylor_describe, _taylor_compare),
]
