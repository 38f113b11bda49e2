"""How chapter 08's exercises are graded (inputs, comparisons); references live in course_lib.transformer_compression.

The hidden inputs separate a right answer from the usual wrong ones:

- ``quantize_groupwise``: a group whose ``w / s`` lands on exactly +0.5 and -0.5 (``torch.round`` is half to
  even: ``floor(x + 0.5)`` and rounding half away from zero each fail), rows with several groups of
  different ranges (one scale per row, or groups taken down the columns, fail), ``q_max = 2^{b-1} - 1``
  (``2^{b-1}`` fails), an all-zero group (a division by a zero scale gives nan), float64 kept.
- ``smoothquant_scales``: ``out != in`` weights (the weight's max over dim 1 fails), ``alpha`` in
  ``{0, 0.25, 0.8, 1}`` (exponents swapped fail), zero channels (the ``1e-5`` floor), the default alpha.
- ``attention_rollout``: two and three layers of row-stochastic, non-commuting attention with several
  heads (reversed product order, no identity for the residual, max over heads, the last layer alone fail).
"""
from __future__ import annotations

import numpy as np
import torch

from ._compare import show_tensor as _show, tensor_reason

CHAPTER = "08_transformer"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _tensor(spec: dict) -> torch.Tensor:
    """``{"values"}`` or ``{"seed", "shape", "std", "kind"}`` (kind: normal, abs, softmax rows), with a dtype."""
    dtype = _DTYPES[spec.get("dtype", "float32")]
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=torch.float64).to(dtype)
    gen = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(*spec["shape"], generator=gen, dtype=torch.float64) * spec.get("std", 1.0)
    kind = spec.get("kind", "normal")
    if kind == "abs":
        x = x.abs()
    elif kind == "softmax":                      # causal attention rows: -inf above the diagonal, rows sum to 1
        T = x.shape[-1]
        x = (2 * x).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    if "scale_groups" in spec:                   # groups of very different ranges along a row
        g = spec["scale_groups"]
        x = x * torch.logspace(-1, 1, x.shape[-1] // g, dtype=torch.float64).repeat_interleave(g)
    for idx in spec.get("zero", []):
        x[tuple(idx[:-1]) + (slice(idx[-1][0], idx[-1][1]),)] = 0.0
    return x.to(dtype)


def _rand_dtype(rng: np.random.Generator) -> str:
    return "float64" if rng.random() < 0.3 else "float32"


# --------------------------------------------------------------------------- quantize_groupwise
def _gq_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"values": [[1.0, -0.5, 0.2, 0.0], [0.3, 0.6, -0.9, 0.45]]}, 2, 2),       # w/s = -0.5 and +0.5
        ({"seed": 1, "shape": [4, 64], "scale_groups": 16}, 4, 16),
        ({"seed": 2, "shape": [3, 32], "std": 0.1}, 3, 32),                          # per channel
        ({"seed": 3, "shape": [6, 24], "scale_groups": 8, "dtype": "float64"}, 8, 8),
        ({"seed": 4, "shape": [2, 12], "zero": [[1, [4, 8]]]}, 4, 4),                 # an all-zero group
        ({"values": [[2.0, -2.0, 1.0, 0.5, -1.0, 1.5]]}, 3, 3),
        ({"seed": 5, "shape": [2, 10]}, 4, 4),                                       # 4 does not divide 10
        ({"seed": 5, "shape": [2, 8]}, 1, 4),                                        # bits = 1
        ({"seed": 5, "shape": [8]}, 4, 4),                                           # 1-D
    ]
    cases = [{"weight": w, "bits": b, "group_size": g} for w, b, g in fixed]
    for _ in range(5):
        g = int(rng.choice([2, 4, 8, 16]))
        shape = [int(rng.integers(1, 7)), g * int(rng.integers(1, 6))]
        cases.append({"weight": {"seed": int(rng.integers(0, 2**31)), "shape": shape, "std": float(rng.uniform(0.05, 3)),
                                 "scale_groups": g, "dtype": _rand_dtype(rng)},
                      "bits": int(rng.integers(2, 9)), "group_size": g})
    return cases


def _gq_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["weight"]), case["bits"], case["group_size"]), {}


def _gq_describe(case: dict) -> str:
    (w, b, g), _ = _gq_build(case)
    return f"weight = {_show(w)}, bits={b}, group_size={g}"


def _gq_compare(expected: torch.Tensor, got) -> str | None:
    return tensor_reason(expected, got, "dequantized weight", rtol=1e-5, atol=1e-7, atol_relative_to_max=True)


# --------------------------------------------------------------------------- smoothquant_scales
def _sq_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"values": [4.0, 1.0]}, {"values": [[1.0, 1.0], [-4.0, 0.25]]}, None),
        ({"seed": 1, "shape": [6], "kind": "abs", "std": 20.0}, {"seed": 2, "shape": [10, 6]}, 0.5),     # out != in
        ({"seed": 3, "shape": [5], "kind": "abs", "std": 50.0}, {"seed": 4, "shape": [3, 5], "std": 0.1}, 0.8),
        ({"seed": 5, "shape": [4], "kind": "abs"}, {"seed": 6, "shape": [7, 4]}, 0.0),
        ({"seed": 7, "shape": [4], "kind": "abs", "std": 9.0}, {"seed": 8, "shape": [2, 4]}, 1.0),
        ({"values": [0.0, 3.0, 2.0]}, {"values": [[0.5, 0.0, 1.0], [-0.25, 0.0, 2.0]]}, 0.25),              # zeros
        ({"seed": 9, "shape": [5], "kind": "abs", "dtype": "float64"},
         {"seed": 10, "shape": [8, 5], "dtype": "float64"}, 0.75),
        ({"seed": 1, "shape": [6], "kind": "abs"}, {"seed": 2, "shape": [6, 5]}, 0.5),                     # shapes differ
        ({"seed": 1, "shape": [6], "kind": "abs"}, {"seed": 2, "shape": [4, 6]}, 1.5),                     # alpha > 1
    ]
    cases = [{"act": a, "weight": w, "alpha": al} for a, w, al in fixed]
    for _ in range(5):
        n_in, dtype = int(rng.integers(2, 12)), _rand_dtype(rng)
        cases.append({"act": {"seed": int(rng.integers(0, 2**31)), "shape": [n_in], "kind": "abs",
                              "std": float(10 ** rng.uniform(-1, 2)), "dtype": dtype},
                      "weight": {"seed": int(rng.integers(0, 2**31)), "shape": [int(rng.integers(1, 12)), n_in],
                                 "std": float(10 ** rng.uniform(-2, 0)), "dtype": dtype},
                      "alpha": float(np.round(rng.uniform(0.05, 0.95), 2))})
    return cases


def _sq_build(case: dict) -> tuple[tuple, dict]:
    kwargs = {} if case["alpha"] is None else {"alpha": case["alpha"]}
    return (_tensor(case["act"]), _tensor(case["weight"])), kwargs


def _sq_describe(case: dict) -> str:
    (a, w), kw = _sq_build(case)
    return f"act_absmax = {_show(a)}, weight = {_show(w)}, " + (f"alpha={kw['alpha']!r}" if kw else "alpha left at its default")


def _sq_compare(expected: torch.Tensor, got) -> str | None:
    return tensor_reason(expected, got, "scales", rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------- attention_rollout
def _ro_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        [{"seed": 1, "shape": [1, 2, 3, 3], "kind": "softmax"}, {"seed": 2, "shape": [1, 2, 3, 3], "kind": "softmax"}],
        [{"seed": 3, "shape": [2, 4, 5, 5], "kind": "softmax"}, {"seed": 4, "shape": [2, 4, 5, 5], "kind": "softmax"},
         {"seed": 5, "shape": [2, 4, 5, 5], "kind": "softmax"}],
        [{"seed": 6, "shape": [1, 3, 4, 4], "kind": "softmax", "dtype": "float64"}],
        [{"seed": 7, "shape": [3, 1, 6, 6], "kind": "softmax"}, {"seed": 8, "shape": [3, 1, 6, 6], "kind": "softmax"}],
        [],                                                                                        # empty list
        [{"seed": 1, "shape": [1, 2, 3, 3], "kind": "softmax"}, {"seed": 2, "shape": [1, 2, 4, 4], "kind": "softmax"}],
    ]
    cases = [{"layers": layers} for layers in fixed]
    for _ in range(4):
        shape, dtype = [int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(2, 8))], _rand_dtype(rng)
        shape.append(shape[-1])
        cases.append({"layers": [{"seed": int(rng.integers(0, 2**31)), "shape": shape, "kind": "softmax", "dtype": dtype}
                                 for _ in range(int(rng.integers(2, 5)))]})
    return cases


def _ro_build(case: dict) -> tuple[tuple, dict]:
    return ([_tensor(s) for s in case["layers"]],), {}


def _ro_describe(case: dict) -> str:
    (layers,), _ = _ro_build(case)
    return f"attentions = [{', '.join(_show(a) for a in layers)}]" if layers else "attentions = []"


def _ro_compare(expected: torch.Tensor, got) -> str | None:
    return tensor_reason(expected, got, "rollout", rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, forbidden=()):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="transformer_compression", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, forbidden=tuple(forbidden))


EXERCISES = [
    _exercise("quantize_groupwise", _gq_cases, _gq_build, _gq_describe, _gq_compare,
              forbidden=["torch.ao.quantization", "aten::fake_quantize_per_channel_affine",
                         "aten::fake_quantize_per_tensor_affine", "aten::quantize_per_channel"]),
    _exercise("smoothquant_scales", _sq_cases, _sq_build, _sq_describe, _sq_compare),
    _exercise("attention_rollout", _ro_cases, _ro_build, _ro_describe, _ro_compare),
]
