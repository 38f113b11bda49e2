"""How chapter 02's exercises are graded (inputs, comparisons); references live in course_lib.quantization.

The hidden inputs separate a right answer from the usual wrong ones: exact ties at power-of-two
scales (round half to even, not floor/half-up/trunc), values beyond the code range (clamp), ranges
that do not contain 0 (all-positive, all-negative), all-zero tensors and channels (the eps floor),
``uint8`` codes (``q - 128`` wraps), channel axes other than 0, k-means ties and empty clusters, ``sign(0)``, codes that round onto the
last code from outside the real range (the straight-through mask). Random values keep a margin from
ties, so float32 and float64 arithmetic give the same codes.

``fake_quantize`` is graded on its value *and* its gradient without changing its signature: its
runner calls the function on an ``x`` with ``requires_grad=True``, backpropagates the case's fixed
upstream gradient through the returned tensor's own graph and sends back ``torch.stack([value, x.grad])``.

Off limits while grading (blocked by module and by dispatcher operator, see
:mod:`course_lib.grader.guards`): ``torch.ao.quantization`` (observers, fake-quant modules), the
older alias ``torch.quantization``, and torch's quantize / fake-quantize / choose-qparams operators.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._compare import close_float, exact_int, is_int_like, tensor_reason, type_name

CHAPTER = "02_quantization"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
           "uint8": torch.uint8, "int8": torch.int8}


# --------------------------------------------------------------------------- tensors from specs
def _tensor(spec: dict) -> torch.Tensor:
    """``{"values": nested list, "dtype": ...}`` or ``{"seed", "shape", "loc", "std", "dtype"}`` (normal)."""
    dtype = _DTYPES[spec.get("dtype", "float32")]
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=torch.float64).to(dtype)
    gen = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(*spec["shape"], generator=gen, dtype=torch.float64) * spec.get("std", 1.0) + spec.get("loc", 0.0)
    return x.to(dtype)


def _show(t: torch.Tensor) -> str:
    """A tensor as the learner would type it (small), or its shape and range (large)."""
    if t.numel() > 24:
        return (f"a {t.dtype} tensor of shape {tuple(t.shape)}, min {float(t.min()):.6g}, max {float(t.max()):.6g}, "
                f"first values {t.flatten()[:6].tolist()}")
    dtype = "" if t.dtype == torch.float32 else f", dtype={t.dtype}"
    return f"torch.tensor({t.tolist()}{dtype})"


def _values_away_from_ties(rng: np.random.Generator, n: int, scale: float, lo_code: int, hi_code: int) -> list[float]:
    """``n`` reals ``scale * (k + f)`` with integer k in [lo_code, hi_code] and |f| in [0.05, 0.45]."""
    k = rng.integers(lo_code, hi_code + 1, size=n)
    f = rng.uniform(0.05, 0.45, size=n) * rng.choice([-1, 1], size=n)
    return [float(np.float32(v)) for v in scale * (k + f)]


def _pow2_scale(rng: np.random.Generator) -> float:
    return float(2.0 ** int(rng.integers(-8, 3)))


def _random_scale(rng: np.random.Generator) -> float:
    return _pow2_scale(rng) if rng.random() < 0.3 else float(np.float32(10 ** rng.uniform(-3, 0.5)))


# --------------------------------------------------------------------------- comparisons
def _tensor_reason(expected: torch.Tensor, got, what: str, *, exact: bool = False, rtol: float = 1e-6,
                   atol: float = 1e-7) -> str | None:
    return tensor_reason(expected, got, what, exact=exact, rtol=rtol, atol=atol)


def _pair(got, what: str) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple ({what}), got {type_name(got)}" + (f" of length {len(got)}" if
                                                                     isinstance(got, (tuple, list)) else "")
    return None


def _qparams_compare(expected: tuple, got) -> str | None:
    reason = _pair(got, "scale, zero_point")
    if reason:
        return reason
    scale, zero_point = got
    if isinstance(scale, torch.Tensor) or isinstance(zero_point, torch.Tensor):
        return "expected a Python float and a Python int, got a tensor: convert with float(...) and int(...)"
    return close_float(expected[0], scale, rtol=1e-6, atol=0.0, what="scale") or \
        _named(exact_int(expected[1], zero_point), "zero_point")


def _named(reason: str | None, what: str) -> str | None:
    return None if reason is None else f"{what}: {reason}"


def _codes_compare(expected: torch.Tensor, got) -> str | None:
    return _tensor_reason(expected, got, "code", exact=True)


def _dequant_compare(expected: torch.Tensor, got) -> str | None:
    return _tensor_reason(expected, got, "value")


def _per_channel_compare(expected: tuple, got) -> str | None:
    return _pair(got, "scales, zero_points") or _tensor_reason(expected[0], got[0], "scales") or \
        _tensor_reason(expected[1], got[1], "zero_points", exact=True)


def _fake_quant_compare(expected: torch.Tensor, got) -> str | None:
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        return _tensor_reason(expected[0], got, "value")
    reason = _tensor_reason(expected[0], got[0], "value", rtol=1e-5, atol=1e-6)
    if reason:
        return reason
    if torch.isnan(got[1]).all() and not torch.isnan(expected[1]).all():
        return ("no gradient reaches x: the result is not attached to x's autograd graph; compute it from x "
                "with torch operations (no numpy, .item(), torch.tensor(...), detach(), .data or no_grad())")
    return _tensor_reason(expected[1], got[1], "x.grad", rtol=1e-6, atol=1e-7)


def _binarize_compare(expected: tuple, got) -> str | None:
    return _pair(got, "alpha, b") or _tensor_reason(expected[0], got[0], "alpha") or \
        _tensor_reason(expected[1], got[1], "b", exact=True)


# --------------------------------------------------------------------------- minmax_qparams
def _minmax_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ([-1.0, 0.0, 3.0], 8, False),                 # scale 4/255, zero_point round(63.75) = 64
        ([-2.5, 252.5], 8, False),                    # min/scale = -2.5 exactly: half to even -> 2
        ([0.5, 2.0, 3.0], 8, False),                  # all positive: the range still starts at 0
        ([-3.0, -1.0, -2.0], 8, False),               # all negative: zero point at the top code
        ([[-1.0, 0.5], [0.25, 0.75]], 8, True),       # symmetric: 1 / 127.5
        ([0.0, 0.0, 0.0], 8, False),                  # all zero: eps floor, no division by zero
        ([0.0, 0.0], 8, True),
        ([-0.3, 1.2], 4, False),                      # 1.5 / 15 = 0.1, zero point 3
        ([0.2, 1.7], 4, True),                        # 1.7 / 7.5
        ([-0.7, 0.1, 0.4], 2, False),
        ([-4.5, 0.5], 3, False),                      # -4.5 / (5/7) = -6.3 -> 6
        ([-1.0, 3.0], 16, False),                     # 4 / 65535, zero point round(16383.75) = 16384
        ([1.0, 2.0], 1, False),                       # num_bits < 2 -> ValueError
        ([1.0, 2.0], 17, True),                       # num_bits > 16 -> ValueError
        ([], 8, False),                               # empty -> ValueError
    ]
    cases = [{"x": {"values": v}, "num_bits": b, "symmetric": s} for v, b, s in fixed]
    for _ in range(10):
        shape = [int(d) for d in rng.integers(1, 6, size=int(rng.integers(1, 4)))]
        spec = {"seed": int(rng.integers(0, 2**31)), "shape": shape, "loc": float(rng.normal(0, 2)),
                "std": float(10 ** rng.uniform(-2, 1))}
        cases.append({"x": spec, "num_bits": int(rng.choice([2, 3, 4, 5, 8, 8, 8])),    # float32 and float64 agree
                      "symmetric": bool(rng.integers(0, 2))})
    return cases


def _minmax_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["x"]),), {"num_bits": case["num_bits"], "symmetric": case["symmetric"]}


def _minmax_describe(case: dict) -> str:
    (x,), kw = _minmax_build(case)
    return f"x = {_show(x)}, num_bits={kw['num_bits']}, symmetric={kw['symmetric']}"


# --------------------------------------------------------------------------- quantize_affine
def _quantize_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 1.0], 0.5, 10, 8, False),   # ties: half to even
        ([-10.0, 0.0, 200.0, 300.0], 1.0, 0, 8, False),                      # clamp to [0, 255]
        ([0.0, 0.04, 0.3], 0.1, 128, 8, False),                               # the zero point is added
        ([0.25, 0.75, -0.25, 1.25], 0.5, 3, 8, False),                        # ties, odd zero point: round, then add
        ([-3.0, -1.0, -0.125, 0.0, 1.0, 3.0], 0.25, 0, 4, True),              # signed codes [-8, 7]
        ([[2.5, 3.5], [-2.5, -3.5]], 1.0, 0, 8, True),                        # ties, signed, 2-D
        ([-1.0, 0.0, 1.0], 0.5, 1, 2, False),                                 # 2 bits: codes [0, 3]
        ([float("inf"), float("-inf"), 0.5], 0.25, 3, 3, False),              # inf clamps to the ends
        ([1.0], 0.0, 0, 8, False),                                            # scale 0 -> ValueError
        ([1.0], -0.5, 0, 8, False),                                           # scale < 0 -> ValueError
        ([1.0], 0.1, 256, 8, False),                                          # zero point outside codes
        ([1.0], 0.1, -129, 8, True),
        ([1.0], 0.1, 0, 1, False),                                            # num_bits < 2
    ]
    cases = [{"x": {"values": v}, "scale": s, "zero_point": z, "num_bits": b, "signed": sg}
             for v, s, z, b, sg in fixed]
    for i in range(10):
        bits = int(rng.choice([2, 3, 4, 8, 8, 12, 16]))
        signed = bool(rng.integers(0, 2))
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        zp = 0 if signed and rng.random() < 0.6 else int(rng.integers(qmin, qmax + 1))
        ties = i % 3 == 0                                       # some exact ties at a power-of-two scale
        scale = _pow2_scale(rng) if ties else _random_scale(rng)
        values = _values_away_from_ties(rng, int(rng.integers(1, 30)), scale, qmin - zp - 3, qmax - zp + 3)
        if ties:
            values += [scale * (k + 0.5) for k in rng.integers(qmin - zp, qmax - zp, size=4).tolist()]
        cases.append({"x": {"values": values}, "scale": scale, "zero_point": zp, "num_bits": bits, "signed": signed})
    return cases


def _quantize_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["x"]), case["scale"], case["zero_point"]), \
        {"num_bits": case["num_bits"], "signed": case["signed"]}


def _quantize_describe(case: dict) -> str:
    (x, s, z), kw = _quantize_build(case)
    return f"x = {_show(x)}, scale={s!r}, zero_point={z}, num_bits={kw['num_bits']}, signed={kw['signed']}"


# --------------------------------------------------------------------------- dequantize_affine
def _dequant_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ([10, 12, 15], "int64", 0.5, 10),
        ([-8, 0, 7], "int64", 0.25, 0),
        ([0, 128, 255], "uint8", 0.1, 128),          # uint8 codes (torch's int_repr): q - 128 must not wrap
        ([-128, -1, 127], "int8", 0.02, -3),
        ([[3, 4], [5, 6]], "int32", 1.5, 4),
        ([1, 2], "int64", 0.0, 0),                  # scale 0 -> ValueError
        ([1, 2], "int64", float("nan"), 0),         # scale nan -> ValueError
    ]
    cases = [{"q": {"values": v, "dtype": d}, "scale": s, "zero_point": z} for v, d, s, z in fixed]
    for _ in range(8):
        dtype = str(rng.choice(["int64", "uint8", "int8", "int32"]))
        lo, hi = {"uint8": (0, 255), "int8": (-128, 127)}.get(dtype, (-40000, 40000))
        q = rng.integers(lo, hi + 1, size=[int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, 3)))])
        cases.append({"q": {"values": q.tolist(), "dtype": dtype}, "scale": _random_scale(rng),
                      "zero_point": int(rng.integers(lo, hi + 1))})
    return cases


def _dequant_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["q"]), case["scale"], case["zero_point"]), {}


def _dequant_describe(case: dict) -> str:
    (q, s, z), _ = _dequant_build(case)
    return f"q = {_show(q)}, scale={s!r}, zero_point={z}"


# --------------------------------------------------------------------------- per_channel_qparams
def _per_channel_cases(rng: np.random.Generator) -> list[dict]:
    w0 = [[1.0, -2.55], [0.0, 0.0], [0.5, 0.25]]
    fixed = [
        ({"values": w0}, 0, 8, True),                                # one scale per row; a zero row -> eps
        ({"values": w0}, 1, 8, True),                                # channels along dim 1
        ({"values": [[0.5, 2.0], [-3.0, -1.0], [-1.0, 3.0]]}, 0, 8, False),   # positive / negative rows
        ({"values": w0}, -1, 4, True),                               # negative axis
        ({"values": [0.3, -0.6, 0.0]}, 0, 8, False),                 # 1-D: every entry is a channel
        ({"values": [[-1.0, 3.0], [0.5, 0.25]]}, 0, 16, False),      # 16 bits
        ({"seed": 5, "shape": [4, 2, 3, 3], "std": 0.2}, 0, 8, True),
        ({"seed": 6, "shape": [4, 2, 3, 3], "std": 0.2, "loc": 0.1}, 1, 4, False),
        ({"values": w0}, 2, 8, True),                                # axis out of range -> ValueError
        ({"values": w0}, 0, 1, True),                                # num_bits < 2 -> ValueError
    ]
    cases = [{"w": w, "axis": a, "num_bits": b, "symmetric": s} for w, a, b, s in fixed]
    for _ in range(8):
        shape = [int(d) for d in rng.integers(1, 6, size=int(rng.integers(1, 5)))]
        spec = {"seed": int(rng.integers(0, 2**31)), "shape": shape, "loc": float(rng.normal(0, 0.5)),
                "std": float(10 ** rng.uniform(-2, 0.5))}
        cases.append({"w": spec, "axis": int(rng.integers(-len(shape), len(shape))),
                      "num_bits": int(rng.choice([2, 4, 8, 8])), "symmetric": bool(rng.integers(0, 2))})
    return cases


def _per_channel_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["w"]),), {"axis": case["axis"], "num_bits": case["num_bits"], "symmetric": case["symmetric"]}


def _per_channel_describe(case: dict) -> str:
    (w,), kw = _per_channel_build(case)
    return f"w = {_show(w)}, axis={kw['axis']}, num_bits={kw['num_bits']}, symmetric={kw['symmetric']}"


# --------------------------------------------------------------------------- fake_quantize
def _value_and_grad(fn, args: tuple, kwargs: dict):
    """Runner: call ``fn``, backpropagate the case's upstream gradient to ``x``, return both.

    Returns ``torch.stack([value, x.grad])`` (``x.grad`` all nan when no gradient reaches ``x``), or
    the raw result when it is not a tensor shaped like ``x`` (the comparison then says why).
    """
    x = args[0]
    y = fn(*args, **kwargs)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
        return y
    value = y.detach()
    grad = None
    if y.requires_grad:
        grad, = torch.autograd.grad(y, x, x.upstream_grad.to(y.dtype), allow_unused=True)
    grad = torch.full_like(value, math.nan) if grad is None else grad.detach().to(value.dtype)
    return torch.stack([value, grad])


def _fake_quant_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        # codes: 1, 3, 4, 5, 13 | 257.4 -> 255 (inside), 258 -> clamped (no gradient), below 0 (no gradient)
        ([-1.0, 0.0, 0.26, 0.75, 5.0, 126.2, 127.6, -1.6, -2.0], 0.5, 3, 8),
        ([0.25, 0.75, 1.25, -0.25, 2.5, 3.5], 0.5, 2, 4),                      # ties: half to even
        ([[-1.1, -0.5, 0.0], [0.45, 0.9, 2.0]], 0.125, 8, 4),                 # symmetric 4-bit (z = 2^3)
        ([0.0, 1.0, 2.0, 3.0, 3.4, 3.6, 4.0], 1.0, 0, 2),                      # 2 bits: codes [0, 3]
        ([1.0], 0.0, 0, 8),                                                   # scale 0 -> ValueError
        ([1.0], 0.1, 256, 8),                                                 # zero point outside -> ValueError
        ([1.0], 0.1, 0, 1),                                                   # num_bits < 2 -> ValueError
    ]
    cases = [{"x": {"values": v}, "scale": s, "zero_point": z, "num_bits": b, "seed": i}
             for i, (v, s, z, b) in enumerate(fixed)]
    for _ in range(8):
        bits = int(rng.choice([2, 3, 4, 8, 8]))
        zp = int(rng.integers(0, 2 ** bits))
        scale = _random_scale(rng)
        n = int(rng.integers(2, 30))
        values = _values_away_from_ties(rng, n, scale, -zp - 3, 2 ** bits - 1 - zp + 3)
        cases.append({"x": {"values": values}, "scale": scale, "zero_point": zp, "num_bits": bits,
                      "seed": int(rng.integers(0, 2**31))})
    return cases


def _upstream(case: dict, x: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(case["seed"])
    return torch.randn(x.shape, generator=gen).round(decimals=2)


def _fake_quant_build(case: dict) -> tuple[tuple, dict]:
    x = _tensor(case["x"]).requires_grad_(True)
    x.upstream_grad = _upstream(case, x.detach())     # used by the runner, after the call (an input, not an answer)
    return (x, case["scale"], case["zero_point"]), {"num_bits": case["num_bits"]}


def _fake_quant_describe(case: dict) -> str:
    x = _tensor(case["x"])
    return (f"x = {_show(x)} (requires_grad=True), scale={case['scale']!r}, zero_point={case['zero_point']}, "
            f"num_bits={case['num_bits']}; the grader backpropagates g = {_show(_upstream(case, x))} and shows "
            "torch.stack([fake_quantize(x, ...), x.grad])")


# --------------------------------------------------------------------------- binarize
def _binarize_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"values": [[0.5, -1.5], [0.0, -2.0]]},                  # sign(0) = +1
        {"values": [[-0.0, 1.0], [2.0, -4.0]]},                  # -0.0 too
        {"values": [[1.0, -2.0, 3.0, -4.0, 0.5], [0.1, 0.2, -0.3, 0.0, 0.4]]},   # (2, 5): mean over dim 1
        {"values": [[1.0, -3.0], [2.0, 2.0], [-0.5, 0.5], [4.0, 0.0], [1.0, 1.0]]},  # (5, 2)
        {"seed": 3, "shape": [3, 2, 3, 3], "std": 0.3},           # conv weight: alpha (3, 1, 1, 1)
        {"seed": 4, "shape": [2, 3, 4], "std": 1.0, "dtype": "float64"},
        {"values": [1.0, -2.0]},                                 # 1-D -> ValueError
        {"values": [[]]},                                        # empty -> ValueError
    ]
    cases = [{"w": w} for w in fixed]
    for _ in range(6):
        shape = [int(d) for d in rng.integers(1, 6, size=int(rng.integers(2, 5)))]
        cases.append({"w": {"seed": int(rng.integers(0, 2**31)), "shape": shape, "loc": float(rng.normal(0, 0.2)),
                            "std": float(10 ** rng.uniform(-2, 0.5))}})
    return cases


def _binarize_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["w"]),), {}


def _binarize_describe(case: dict) -> str:
    return f"w = {_show(_tensor(case['w']))}"


# --------------------------------------------------------------------------- int8_linear
def _int8_linear_cases(rng: np.random.Generator) -> list[dict]:
    base = {"n": 4, "k": 16, "c": 4, "x_range": [0.0, 3.0], "per_channel": True, "spread": 1.0, "bias": 0.5,
            "shrink": 1.0}
    fixed = [
        {},                                                         # N == C: every axis mix-up shows as a value
        {"x_range": [-1.0, 2.0], "spread": 30.0},                   # per-channel scales 30x apart
        {"per_channel": False, "n": 3, "c": 5},                     # one float w_scale
        {"bias": 0.0, "x_range": [0.5, 4.0]},                       # bias=None; x_zp = -128 (range from 0)
        {"shrink": 0.2, "n": 6, "c": 3},                            # outputs saturate at -128 / 127
        {"bias": 4.0, "k": 64, "c": 8},                             # a large bias
        {"k": 8, "c": 2, "dtype_x": "int32"},                       # q_x not int8 -> TypeError
        {"k_w": 12},                                                # K mismatch -> ValueError
    ]
    cases = [{**base, **f, "seed": 900 + i} for i, f in enumerate(fixed)]
    for _ in range(8):
        lo = float(rng.uniform(-3, 1))
        cases.append({**base, "seed": int(rng.integers(0, 2**31)), "n": int(rng.integers(1, 9)),
                      "k": int(rng.integers(1, 65)), "c": int(rng.integers(1, 9)),
                      "x_range": [lo, lo + float(rng.uniform(0.5, 4))], "per_channel": bool(rng.random() < 0.7),
                      "spread": float(10 ** rng.uniform(0, 1.5)), "bias": float(rng.choice([0.0, 0.3, 2.0])),
                      "shrink": float(rng.choice([1.0, 1.0, 0.5]))})
    return cases


def _int8_linear_build(case: dict) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(case["seed"])
    n, k, c = case["n"], case["k"], case["c"]
    lo, hi = case["x_range"]
    x = lo + (hi - lo) * torch.rand(n, k, generator=gen, dtype=torch.float64)              # (N, K)
    x_lo, x_hi = min(lo, 0.0), max(hi, 0.0)
    x_scale = float(np.float32((x_hi - x_lo) / 255))
    x_zp = int(min(max(-128 - round(x_lo / x_scale), -128), 127))
    q_x = (torch.round(x / x_scale) + x_zp).clamp(-128, 127)
    w = torch.randn(c, k, generator=gen, dtype=torch.float64) * 0.3                       # (C, K)
    w = w * case["spread"] ** torch.linspace(0, 1, c, dtype=torch.float64).view(-1, 1)
    amax = w.abs().amax(1) if case["per_channel"] else w.abs().max().expand(c)
    s_w = (amax / 127).float().double()                                                    # (C,)
    q_w = torch.round(w / s_w.view(-1, 1)).clamp(-127, 127)
    bias = torch.randn(c, generator=gen, dtype=torch.float64) * case["bias"] if case["bias"] else None
    y = (x_scale * (q_x - x_zp)) @ (s_w.view(-1, 1) * q_w).T + (bias if bias is not None else 0)   # (N, C)
    y_lo, y_hi = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
    y_scale = float(np.float32(max(y_hi - y_lo, 1e-6) / 255 * case["shrink"]))
    y_zp = int(min(max(-128 - round(y_lo / y_scale), -128), 127))
    w_scale = s_w.float() if case["per_channel"] else float(s_w[0])
    if "k_w" in case:
        q_w = torch.zeros(c, case["k_w"], dtype=torch.float64)
    q_x = q_x.to(_DTYPES[case.get("dtype_x", "int8")])
    return (q_x, x_zp, q_w.to(torch.int8), w_scale, x_scale, None if bias is None else bias.float(), y_scale,
            y_zp), {}


def _int8_linear_describe(case: dict) -> str:
    args, _ = _int8_linear_build(case)
    names = ("q_x", "x_zp", "q_w", "w_scale", "x_scale", "bias", "y_scale", "y_zp")
    return "\n".join(f"{name} = {_show(v) if isinstance(v, torch.Tensor) else repr(v)}" for name, v in zip(names, args))


def _int8_linear_compare(expected: torch.Tensor, got) -> str | None:
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape) or got.dtype != torch.int8:
        return _tensor_reason(expected, got, "codes", exact=True)
    diff = (got.long() - expected.long()).abs()                                            # (N, C)
    if int(diff.max()) > 1:
        i = tuple(int(v) for v in (diff > 1).nonzero()[0])
        return (f"codes[{i[0]}, {i[1]}]: expected {int(expected[i])} (one code either way is accepted), got "
                f"{int(got[i])} ({int((diff > 1).sum())} of {diff.numel()} are off by more than one code)")
    return None


# --------------------------------------------------------------------------- kmeans_quantize
def _lloyd_margin(values: np.ndarray, bits: int, iters: int) -> float:
    """The smallest gap, over every assignment step of the rule, between a value's distance to its nearest
    and to its second-nearest centroid, relative to the range: cases with a near-tie (but not an exact one
    on dyadic values) are redrawn, so float32 and float64 arithmetic make the same assignments."""
    c = np.linspace(values.min(), values.max(), 2 ** bits)
    span = max(values.max() - values.min(), 1e-12)
    margin = np.inf
    for step in range(iters + 1):
        d = np.sort(np.abs(values[:, None] - c[None, :]), axis=1)
        margin = min(margin, float((d[:, 1] - d[:, 0]).min()) / span) if c.size > 1 else margin
        if step == iters:
            break
        idx = np.abs(values[:, None] - c[None, :]).argmin(1)
        c = np.array([values[idx == k].mean() if (idx == k).any() else c[k] for k in range(c.size)])
    return margin


def _kmeans_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ([0.0, 1.0, 2.0, 3.0, 4.0], 1, 1),           # init [0, 4]: 2 is a tie -> lower index; means 1 and 3.5
        ([0.0, 1.0, 2.0, 3.0, 4.0], 1, 0),           # iters=0: the initial assignment to the linear init
        ([0.0, 0.25, 0.5, 8.0], 2, 2),               # init [0, 8/3, 16/3, 8]: two empty clusters keep their values
        ([[-3.0, -1.0, 0.0], [0.5, 1.0, 5.0]], 2, 3),   # 2-D; min is not -max: the init spans [min, max]
        ([0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 10.0], 1, 1),  # 5 ties -> 0; after the update (1, 8) it moves to 1
        ([1.0, 2.0], 0, 1),                          # bits < 1 -> ValueError
        ([1.0, 2.0], 2, -1),                         # iters < 0 -> ValueError
        ([], 2, 1),                                  # empty -> ValueError
    ]
    cases = [{"w": {"values": v}, "bits": b, "iters": it} for v, b, it in fixed]
    while len(cases) < len(fixed) + 8:
        bits, iters = int(rng.choice([1, 2, 2, 3, 4])), int(rng.integers(1, 6))
        shape = [int(d) for d in rng.integers(2, 7, size=int(rng.integers(1, 4)))]
        spec = {"seed": int(rng.integers(0, 2**31)), "shape": shape, "loc": float(rng.normal(0, 0.2)),
                "std": float(10 ** rng.uniform(-2, 0.5))}
        if _lloyd_margin(_tensor(spec).double().flatten().numpy(), bits, iters) > 1e-4:
            cases.append({"w": spec, "bits": bits, "iters": iters})
    return cases


def _kmeans_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["w"]), case["bits"], case["iters"]), {}


def _kmeans_describe(case: dict) -> str:
    (w, bits, iters), _ = _kmeans_build(case)
    return f"w = {_show(w)}, bits={bits}, iters={iters}"


def _kmeans_compare(expected: tuple, got) -> str | None:
    return _pair(got, "index, codebook") or _tensor_reason(expected[1], got[1], "codebook", rtol=1e-5, atol=1e-6) or \
        _tensor_reason(expected[0], got[0], "index", exact=True)

# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, forbidden=(), runner=None):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="quantization", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, forbidden=tuple(forbidden), runner=runner)


_QUANT_MODULES = ("torch.ao.quantization", "torch.quantization", "torch.ao.nn.quantized", "torch.nn.quantized")
# Every operator that makes, reads or computes with quantized tensors or quantization parameters,
# whichever Python path reaches it (torch.x, Tensor.x, torch.ops.aten.x, torch._C): see guards.
_QUANT_OPS = tuple("aten::" + op for op in (
    "quantize_per_tensor", "quantize_per_channel", "quantize_per_tensor_dynamic", "dequantize", "int_repr",
    "fake_quantize_per_tensor_affine", "fake_quantize_per_tensor_affine_cachemask",
    "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams", "fake_quantize_per_channel_affine",
    "fake_quantize_per_channel_affine_cachemask", "_fake_quantize_learnable_per_tensor_affine",
    "_fake_quantize_learnable_per_channel_affine", "fused_moving_avg_obs_fake_quant", "_fused_moving_avg_obs_fq_helper",
    "_choose_qparams_per_tensor", "choose_qparams_optimized", "_make_per_tensor_quantized_tensor",
    "_make_per_channel_quantized_tensor", "_empty_affine_quantized", "_empty_per_channel_affine_quantized",
    "empty_quantized", "q_scale", "q_zero_point", "q_per_channel_scales", "q_per_channel_zero_points",
    "fbgemm_linear_quantize_weight", "fbgemm_linear_int8_weight", "fbgemm_linear_int8_weight_fp32_activation",
    "fbgemm_pack_quantized_matrix", "_dyn_quant_pack_4bit_weight", "_dyn_quant_matmul_4bit"))
_OBSERVERS = _QUANT_MODULES + _QUANT_OPS
_TORCH_QUANT = _QUANT_MODULES + _QUANT_OPS

EXERCISES = [
    _exercise("minmax_qparams", _minmax_cases, _minmax_build, _minmax_describe, _qparams_compare, _OBSERVERS),
    _exercise("quantize_affine", _quantize_cases, _quantize_build, _quantize_describe, _codes_compare, _TORCH_QUANT),
    _exercise("dequantize_affine", _dequant_cases, _dequant_build, _dequant_describe, _dequant_compare, _TORCH_QUANT),
    _exercise("per_channel_qparams", _per_channel_cases, _per_channel_build, _per_channel_describe,
              _per_channel_compare, _OBSERVERS),
    _exercise("fake_quantize", _fake_quant_cases, _fake_quant_build, _fake_quant_describe, _fake_quant_compare,
              _TORCH_QUANT, runner=_value_and_grad),
    _exercise("binarize", _binarize_cases, _binarize_build, _binarize_describe, _binarize_compare, _TORCH_QUANT),
    _exercise("int8_linear", _int8_linear_cases, _int8_linear_build, _int8_linear_describe, _int8_linear_compare,
              _TORCH_QUANT),
    _exercise("kmeans_quantize", _kmeans_cases, _kmeans_build, _kmeans_describe, _kmeans_compare,
              _TORCH_QUANT + ("sklearn.cluster", "scipy.cluster")),
]
