"""How chapter 03's exercises are graded (inputs, comparisons); references live in course_lib.lowrank.

Best rank-r approximations are graded by what makes them best, not by one particular set of
factors: the grader rebuilds the input, multiplies the returned factors (or reads the effective
weight of the returned layers) and accepts the answer when its Frobenius error is within a small
tolerance of the reference's, which is the smallest possible (Eckart--Young). So any split of the
singular values between the factors passes, and so does any valid choice when singular values tie
at the cut (a fixed case has ``diag(3, 2, 2, 1)`` at rank 2).

The hidden inputs separate the usual wrong answers: wide, tall and square matrices (``V`` vs
``V^T``, wrong slicing axis), float64 inputs (dtype kept), ties at the energy target (``>=``, not
``>``), a float32 spectrum whose energy only float64 resolves, layers without bias, strided,
dilated, padded and circular/reflect-padded convolutions with non-square kernels, 1x1 convs, and
sizes where ``in * out`` is a multiple of ``in + out`` (the break-even rank is strict).

Layers are graded through ``derive``: the returned ``nn.Sequential`` arrives rebuilt in the grader,
which checks each layer's type and settings, reads the effective weight and bias, runs the layers on
a fixed input, and checks that the input layer was left unchanged (the ``runner`` hands back the
layer the function was given, after the call).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._compare import conv_bound, exact_int, type_name

CHAPTER = "03_low_rank"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}
_TOL = {torch.float32: 1e-5, torch.float64: 1e-9}      # on ||W - W_r||_F / ||W||_F


def _tol(dtype: torch.dtype) -> float:
    return _TOL.get(dtype, 1e-3)


# --------------------------------------------------------------------------- tensors from specs
def _matrix(spec: dict) -> torch.Tensor:
    """``{"values"}`` literal or ``{"seed", "shape"}`` standard normal; optional dtype and parameter."""
    dtype = _DTYPES[spec.get("dtype", "float32")]
    if "values" in spec:
        w = torch.tensor(spec["values"], dtype=torch.float64).to(dtype)
    else:
        gen = torch.Generator().manual_seed(spec["seed"])
        w = torch.randn(*spec["shape"], generator=gen, dtype=torch.float64).to(dtype)
    return nn.Parameter(w) if spec.get("parameter") else w


def _show_matrix(w) -> str:
    if not isinstance(w, torch.Tensor):
        return repr(w)
    kind = "nn.Parameter" if isinstance(w, nn.Parameter) else "tensor"
    if w.numel() <= 16:
        return f"{kind}({w.detach().tolist()}, dtype={w.dtype})"
    return f"a random {w.dtype} {kind} of shape {tuple(w.shape)} (first row {w.detach()[0, :4].tolist()} ...)"


def _error_reason(what: str, expected: float, got: float, dtype: torch.dtype) -> str | None:
    """None if ``got`` is the smallest possible relative error ``expected`` up to the dtype's tolerance."""
    if not got <= expected + _tol(dtype):
        return (f"{what}: ||W - A@B||_F / ||W||_F is {got:.6g}, but the best rank-r approximation has "
                f"{expected:.6g} (Eckart-Young; tolerance {_tol(dtype):g})")
    return None


# --------------------------------------------------------------------------- low_rank_factors
def _factors_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"seed": 1, "shape": [4, 3]}, 1),
        ({"seed": 2, "shape": [3, 5]}, 2),                            # wide: B is (r, in), not (r, min)
        ({"seed": 3, "shape": [5, 5], "dtype": "float64"}, 2),        # square, float64 kept
        ({"seed": 4, "shape": [6, 4]}, 4),                            # full rank: exact
        ({"seed": 5, "shape": [1, 6]}, 1),
        ({"values": [[3.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]]}, 2),   # tie at the cut
        ({"seed": 6, "shape": [7, 4], "parameter": True}, 3),         # an nn.Parameter (grad history)
        ({"seed": 7, "shape": [3, 5]}, 0),                            # rank 0 -> ValueError
        ({"seed": 7, "shape": [3, 5]}, 4),                            # rank > min(out, in) -> ValueError
        ({"seed": 7, "shape": [3, 5]}, 1.5),                          # rank not an int -> TypeError
        ({"values": [1.0, 2.0, 3.0]}, 1),                             # 1-D -> ValueError
        ({"values": [[1.0, 2.0], [3.0, 4.0]], "dtype": "int64"}, 1),  # integer matrix -> ValueError
    ]
    cases = [{"weight": w, "rank": r} for w, r in fixed]
    for _ in range(8):
        shape = [int(v) for v in rng.integers(1, 11, size=2)]
        cases.append({"weight": {"seed": int(rng.integers(0, 2**31)), "shape": shape,
                                 "dtype": str(rng.choice(["float32", "float64"]))},
                      "rank": int(rng.integers(1, min(shape) + 1))})
    return cases


def _factors_build(case: dict) -> tuple[tuple, dict]:
    return (_matrix(case["weight"]), case["rank"]), {}


def _factors_describe(case: dict) -> str:
    (w, rank), _ = _factors_build(case)
    return (f"weight = {_show_matrix(w)}, rank = {rank!r}; graded: the shapes and dtype of A and B, and "
            "||weight - A @ B||_F against the smallest possible")


def _factors_derive(args: tuple, answer) -> dict | str:
    w, rank = args
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2
            and all(isinstance(t, torch.Tensor) for t in answer)):
        return f"expected a tuple (A, B) of two tensors, got {type_name(answer)}: {answer!r}"[:300]
    A, B = answer
    out = {"shapes": [tuple(A.shape), tuple(B.shape)], "dtypes": [str(A.dtype), str(B.dtype)], "error": None,
           "dtype": str(w.dtype)}
    if out["shapes"] == [(w.shape[0], rank), (rank, w.shape[1])]:
        W = w.detach().double()
        norm = torch.linalg.matrix_norm(W)
        out["error"] = float(torch.linalg.matrix_norm(W - A.double() @ B.double()) / norm)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)            # how far from the best product
        best = U[:, :rank] @ torch.diag(S[:rank]) @ Vh[:rank, :]
        out["off_best"] = float(torch.linalg.matrix_norm(A.double() @ B.double() - best) / norm)
    return out


def _factors_compare(expected: dict, got) -> str | None:
    if isinstance(got, str):
        return got
    for key, what in (("shapes", "shapes of (A, B)"), ("dtypes", "dtypes of (A, B) (the weight's dtype)")):
        if got[key] != expected[key]:
            return f"{what}: expected {expected[key]}, got {got[key]}"
    reason = _error_reason("A @ B", expected["error"], got["error"], getattr(torch, expected["dtype"][6:]))
    if reason and got.get("off_best") is not None:
        reason += (f"; your A @ B differs from U[:, :r] @ diag(S[:r]) @ Vh[:r, :] (the best rank-r product) by "
                   f"{got['off_best']:.3g} of ||W||_F: compare the two, and check that B comes from the first r "
                   "rows of Vh")
    return reason


# --------------------------------------------------------------------------- rank_for_energy
def _energy_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ([3.0, 1.0], 0.9),                      # 9 of 10: exactly 0.9 reached at r = 1 (>=); by s, not s^2: 2
        ([1.0, 1.0, 1.0, 1.0], 0.5),            # exactly half at r = 2
        ([2.0, 1.0, 0.0, 0.0], 1.0),            # all the energy: up to the last non-zero value
        ([1.0, 1e-4], 1.0),                     # float32 sums lose 1e-8: only float64 sees r = 2
        ([5.0, 2.0, 1.0, 1.0], None),           # default energy 0.9 -> 2
        ([4.0, 3.0, 2.0, 1.0], 0.95),
        ([2.5], 0.3),
        ([1.0, 3.0], 0.5),                      # not descending -> ValueError
        ([3.0, 1.0], 0.0),                      # energy 0 -> ValueError
        ([3.0, 1.0], 1.5),                      # energy > 1 -> ValueError
        ([3.0, -1.0], 0.5),                     # negative -> ValueError
    ]
    cases = [{"values": v, "energy": e, "dtype": "float32"} for v, e in fixed]
    cases[5]["dtype"] = "float64"
    for _ in range(8):
        n = int(rng.integers(2, 40))
        values = np.sort(rng.lognormal(0.0, 1.0, size=n))[::-1] * float(rng.choice([1.0, 1e-3, 50.0]))
        cases.append({"values": [float(v) for v in values], "energy": round(float(rng.uniform(0.05, 0.99)), 3),
                      "dtype": str(rng.choice(["float32", "float64"]))})
    return cases


def _energy_build(case: dict) -> tuple[tuple, dict]:
    s = torch.tensor(case["values"], dtype=_DTYPES[case["dtype"]])
    return (s,), ({} if case["energy"] is None else {"energy": case["energy"]})


def _energy_describe(case: dict) -> str:
    (s,), kwargs = _energy_build(case)
    energy = f", energy={kwargs['energy']!r}" if kwargs else " (energy left at its default)"
    return f"rank_for_energy(torch.tensor({s.tolist()}, dtype={s.dtype}){energy})"


# --------------------------------------------------------------------------- layers: shared
def _settings(layer) -> dict:
    """A layer's type and the settings the grader checks (weights excluded)."""
    if isinstance(layer, nn.Conv2d):
        keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
        out = {"type": "Conv2d", **{k: getattr(layer, k) for k in keys}}
    elif isinstance(layer, nn.Linear):
        out = {"type": "Linear", "in_features": layer.in_features, "out_features": layer.out_features}
    else:
        return {"type": type_name(layer)}
    out.update(bias=layer.bias is not None, dtype=str(layer.weight.dtype))
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items()}


def _same_state(original: nn.Module, after) -> bool:
    if not isinstance(after, nn.Module):
        return False
    a, b = original.state_dict(), after.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
                                        and torch.equal(a[k], b[k]) for k in a)


def _layers_runner(fn, args, kwargs):
    """Call ``fn``; hand back what it returned and the layer it was given, after the call."""
    result = fn(*args, **kwargs)
    return {"result": result, "input_after": args[0]}


def _layers_derive(original: nn.Module, rank: int, answer, kind: type) -> dict | str:
    """Settings of the two returned layers, the effective (matrix) weight's relative error, the bias,
    the output of the pair on a fixed input, and whether the input layer was left unchanged."""
    if not isinstance(answer, dict) or set(answer) != {"result", "input_after"}:
        return f"the grader could not read the answer: {answer!r}"[:300]
    result = answer["result"]
    out = {"unchanged": _same_state(original, answer["input_after"]), "returned": type_name(result),
           "layers": None, "error": None, "bias": None, "output": None}
    if not isinstance(result, nn.Sequential) or len(result) != 2:
        return out
    first, second = result
    out["layers"] = [_settings(first), _settings(second)]
    if not all(isinstance(m, kind) for m in (first, second)):
        return out
    widths = max(rank, *((original.in_features, original.out_features) if kind is nn.Linear
                         else (original.in_channels, original.out_channels)))
    too_big = conv_bound(first, original, widths) or conv_bound(second, original, widths)
    if too_big:                          # settings first: nothing larger than the given layer is ever run
        out["output"] = f"not run: {too_big}"
        return out
    try:
        W = original.weight.detach().double().reshape(original.weight.shape[0], -1)            # (out, in k k)
        mixed = second.weight.detach().double().reshape(second.weight.shape[0], -1)            # (out, r)
        W_eff = mixed @ first.weight.detach().double().reshape(first.weight.shape[0], -1)      # (out, in k k)
        out["error"] = float(torch.linalg.matrix_norm(W - W_eff) / torch.linalg.matrix_norm(W))
        out["bias"] = None if second.bias is None else second.bias.detach().double()
        shape = (3, original.in_features) if kind is nn.Linear else (2, original.in_channels, 9, 7)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)           # tiny convs: a second thread only waits (and stalls on a busy machine)
        try:
            with torch.no_grad():
                out["output"] = tuple(result(x.to(first.weight.dtype)).shape)
        finally:
            torch.set_num_threads(threads)
    except Exception as exc:  # noqa: BLE001 - a broken pair is a wrong answer, not a grader crash
        out["output"] = f"running the returned layers failed: {type(exc).__name__}: {exc}"
    return out


def _layers_compare(expected: dict, got, what: str) -> str | None:
    if isinstance(got, str):
        return got
    if not got["unchanged"]:
        return f"the {what} you were given was changed; build new layers and leave the input as it was"
    if got["layers"] is None:
        return f"expected an nn.Sequential of two layers, got {got['returned']}"
    for i, (e, g) in enumerate(zip(expected["layers"], got["layers"])):
        for key, value in e.items():
            if g.get(key) != value:
                return f"layer {i} of the Sequential: expected {key}={value!r}, got {g.get(key, '(missing)')!r}"
    if isinstance(got["output"], str):
        return got["output"]
    if got["output"] != expected["output"]:
        return f"the returned layers give an output of shape {got['output']}, expected {expected['output']}"
    dtype = getattr(torch, expected["layers"][0]["dtype"][6:])
    reason = _error_reason(f"the effective weight (second.weight @ first.weight) of the returned layers",
                           expected["error"], got["error"], dtype)
    if reason:
        return reason
    if expected["bias"] is not None and not torch.allclose(got["bias"], expected["bias"], rtol=0, atol=1e-12):
        return "the second layer's bias is not the original layer's bias"
    return None


# --------------------------------------------------------------------------- factorize_linear
def _linear(spec: list) -> nn.Linear:
    n_in, n_out, bias, seed, dtype = spec
    layer = nn.Linear(n_in, n_out, bias=bool(bias), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return layer.to(_DTYPES[dtype])


def _linear_cases(rng: np.random.Generator) -> list[dict]:
    # linear: [in, out, bias, seed, dtype]
    fixed = [
        ([6, 4, 1, 1, "float32"], 2),
        ([5, 7, 0, 2, "float32"], 3),        # no bias: the second layer has none either
        ([4, 4, 1, 3, "float64"], 1),        # float64 layers
        ([3, 5, 1, 4, "float32"], 3),        # full rank: exact
        ([8, 2, 1, 5, "float32"], 1),
        ([6, 4, 1, 1, "float32"], 0),        # rank 0 -> ValueError
        ([6, 4, 1, 1, "float32"], 5),        # rank > min(in, out) -> ValueError
        ([6, 4, 1, 1, "float32"], 2.0),      # rank not an int -> TypeError
    ]
    cases = [{"linear": spec, "rank": r} for spec, r in fixed]
    cases.append({"linear": "conv", "rank": 1})  # not an nn.Linear -> TypeError
    for _ in range(6):
        n_in, n_out = (int(v) for v in rng.integers(1, 13, size=2))
        cases.append({"linear": [n_in, n_out, int(rng.integers(0, 2)), int(rng.integers(0, 2**31)),
                                 str(rng.choice(["float32", "float64"]))],
                      "rank": int(rng.integers(1, min(n_in, n_out) + 1))})
    return cases


def _linear_build(case: dict) -> tuple[tuple, dict]:
    layer = nn.Conv2d(2, 2, 1) if case["linear"] == "conv" else _linear(case["linear"])
    return (layer, case["rank"]), {}


def _linear_describe(case: dict) -> str:
    (layer, rank), _ = _linear_build(case)
    return (f"linear = {layer!r} ({layer.weight.dtype}, random weights and bias), rank = {rank!r}; graded: the "
            "two layers' types and settings, their effective weight's error against the best rank-r one, "
            "the bias, and that linear is left unchanged")


def _linear_derive(args: tuple, answer) -> dict | str:
    layer, rank = args
    return _layers_derive(layer, rank, answer, nn.Linear)


def _linear_compare(expected: dict, got) -> str | None:
    return _layers_compare(expected, got, "linear layer")


# --------------------------------------------------------------------------- factorize_conv
def _conv(spec: dict) -> nn.Conv2d:
    conv = nn.Conv2d(spec["in"], spec["out"], tuple(spec["k"]), stride=spec.get("stride", 1),
                     padding=spec.get("padding", 0), dilation=spec.get("dilation", 1), groups=spec.get("groups", 1),
                     bias=bool(spec.get("bias", 1)), padding_mode=spec.get("mode", "zeros"), dtype=torch.float64)
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return conv.to(_DTYPES[spec.get("dtype", "float32")])


def _conv_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"in": 2, "out": 4, "k": [3, 3], "padding": 1, "seed": 1}, 2),
        ({"in": 3, "out": 5, "k": [3, 1], "stride": 2, "padding": [1, 0], "bias": 0, "seed": 2}, 3),
        ({"in": 2, "out": 3, "k": [3, 3], "dilation": 2, "padding": 2, "mode": "reflect", "seed": 3}, 1),
        ({"in": 1, "out": 6, "k": [3, 3], "padding": 1, "mode": "circular", "dtype": "float64", "seed": 4}, 4),
        ({"in": 4, "out": 2, "k": [1, 1], "seed": 5}, 1),                      # a 1x1 conv
        ({"in": 2, "out": 3, "k": [3, 3], "padding": "same", "seed": 6}, 3),   # full rank: exact
        ({"in": 2, "out": 4, "k": [3, 3], "groups": 2, "seed": 7}, 1),         # grouped -> ValueError
        ({"in": 2, "out": 4, "k": [3, 3], "seed": 8}, 0),                      # rank 0 -> ValueError
        ({"in": 1, "out": 4, "k": [1, 2], "seed": 8}, 3),                      # rank > min(4, 1*1*2) -> ValueError
    ]
    cases = [{"conv": spec, "rank": r} for spec, r in fixed]
    cases.append({"conv": "linear", "rank": 1})                                # not an nn.Conv2d -> TypeError
    for _ in range(5):
        k = [int(v) for v in rng.choice([1, 2, 3], size=2)]
        spec = {"in": int(rng.integers(1, 5)), "out": int(rng.integers(1, 7)), "k": k,
                "stride": int(rng.integers(1, 3)), "padding": int(rng.integers(0, 2)),
                "dilation": int(rng.integers(1, 3)), "bias": int(rng.integers(0, 2)),
                "mode": str(rng.choice(["zeros", "zeros", "reflect", "circular"])),
                "dtype": str(rng.choice(["float32", "float64"])), "seed": int(rng.integers(0, 2**31))}
        if spec["mode"] != "zeros":
            spec["padding"] = 1
        full = min(spec["out"], spec["in"] * k[0] * k[1])
        cases.append({"conv": spec, "rank": int(rng.integers(1, full + 1))})
    return cases


def _conv_build(case: dict) -> tuple[tuple, dict]:
    layer = nn.Linear(3, 2) if case["conv"] == "linear" else _conv(case["conv"])
    return (layer, case["rank"]), {}


def _conv_describe(case: dict) -> str:
    (layer, rank), _ = _conv_build(case)
    return (f"conv = {layer!r} ({layer.weight.dtype}, random weights), rank = {rank!r}; graded: the two "
            "convs' types and settings, their effective weight's error against the best rank-r one, the bias, "
            "the output shape on a fixed input of shape (2, C_in, 9, 7), and that conv is left unchanged")


def _conv_derive(args: tuple, answer) -> dict | str:
    layer, rank = args
    return _layers_derive(layer, rank, answer, nn.Conv2d)


def _conv_compare(expected: dict, got) -> str | None:
    return _layers_compare(expected, got, "conv layer")


# --------------------------------------------------------------------------- break_even_rank
def _break_even_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [[2, 2], [512, 512], [6, 3], [3, 5], [4, 5], [64, 10], [10, 64], [1, 1], [1, 100], [2048, 2048], [128, 64],
             [0, 5], [3.0, 4], [True, 4]]
    cases = [{"in_features": a, "out_features": b} for a, b in fixed]
    for _ in range(8):
        cases.append({"in_features": int(rng.integers(1, 5000)), "out_features": int(rng.integers(1, 5000))})
    return cases


def _break_even_build(case: dict) -> tuple[tuple, dict]:
    return (case["in_features"], case["out_features"]), {}


def _break_even_describe(case: dict) -> str:
    return f"break_even_rank(in_features={case['in_features']!r}, out_features={case['out_features']!r})"


# --------------------------------------------------------------------------- the exercises
def _derive(inner, build):
    """``derive(case, answer)``: ``inner`` on the arguments rebuilt from the case and the decoded answer."""
    def derive(case: dict, answer):
        return inner(build(case)[0], answer)
    return derive


def _exercise(name, make_cases, build, describe, compare, forbidden=(), runner=None, inner=None):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="lowrank", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, forbidden=tuple(forbidden), runner=runner,
                    derive=_derive(inner, build) if inner is not None else None)


_SVD_SHORTCUTS = ("torch._lowrank",)       # torch.svd_lowrank, torch.pca_lowrank

EXERCISES = [
    _exercise("low_rank_factors", _factors_cases, _factors_build, _factors_describe, _factors_compare,
              _SVD_SHORTCUTS, inner=_factors_derive),
    _exercise("rank_for_energy", _energy_cases, _energy_build, _energy_describe, exact_int),
    _exercise("factorize_linear", _linear_cases, _linear_build, _linear_describe, _linear_compare,
              _SVD_SHORTCUTS, runner=_layers_runner, inner=_linear_derive),
    _exercise("factorize_conv", _conv_cases, _conv_build, _conv_describe, _conv_compare,
              _SVD_SHORTCUTS, runner=_layers_runner, inner=_conv_derive),
    _exercise("break_even_rank", _break_even_cases, _break_even_build, _break_even_describe, exact_int),
]
