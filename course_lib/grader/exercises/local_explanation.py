"""How chapter 05's exercises are graded; references live in course_lib.local_explanation.

Models are built in ``build(case)`` from a seed stored in the case (a tiny ReLU MLP or CNN, float32,
eval mode, parameters drawn with a ``torch.Generator``), so grader and learner see the same model.
Attribution maps are compared as float32 tensors with ``rtol=1e-4`` and ``atol=1e-5 * max(1, max|expected|)``
(gradients summed in a different order differ in the last bits). The fixed cases separate the usual
wrong answers: per-row targets, small ``steps`` (left vs midpoint Riemann), non-zero baselines,
overlapping and cut-off occlusion windows, Grad-CAMs with negative parts, deletion with tied
attributions and ``n * k / steps`` not an integer.

``lime_tabular`` cannot be compared bit for bit (the sampling is the learner's choice): its runner calls
the function twice with the same arguments; the grader (``derive``) computes the truth from the case:
exact weights of a linear ``f`` (tolerance 1e-6); for a curved ``f``, LIME's many-sample limit in closed
form (tolerance 0.15 in max-abs error), which is the gradient only for a small kernel; and identical
results for the same seed. ``f`` is a black box (``blackbox``): its parameters are drawn from the grading
seed (``f_seed``, never a fixed number in this file, which the sandbox can read), the graded child receives
the case without ``kind`` and ``f_seed`` (the grader splits it before the zygote sees it) and calls ``f``
through the grader process, which evaluates it.

``shapley_regression`` with every coalition is graded against exact Shapley values computed here by
enumeration (``derive``); with a given set of coalitions, against the reference's constrained weighted fit
(so enumerating every coalition regardless fails); both to 1e-7.

``cascading_randomization`` is compared layer by layer (names, then rank correlations to 1e-5; nan
where a map is constant, as scipy). Its explain functions are defined here (signed gradient, gradient x
input, and a paired |gradient| whose values all occur twice, so ordinal ranks differ from average
ranks); its runner calls it twice with the same model, so re-drawing the caller's model in place fails.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from ._compare import tensor_reason, type_name

CHAPTER = "05_local_explanation"


# --------------------------------------------------------------------------- inputs from specs
def _fill(module: nn.Module, gen: torch.Generator, std: float = 0.6) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def _model(spec: dict) -> nn.Module:
    """``{"kind": "mlp", "seed", "d", "h", "c"}`` or ``{"kind": "cnn", "seed", "side", "c"}``."""
    gen = torch.Generator().manual_seed(spec["seed"])
    if spec["kind"] == "mlp":
        return _fill(nn.Sequential(nn.Linear(spec["d"], spec["h"]), nn.ReLU(), nn.Linear(spec["h"], spec["c"])), gen)
    s = spec["side"]
    return _fill(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                               nn.Flatten(), nn.Linear(4 * s * s, spec["c"])), gen, std=0.4)


def _x(spec: dict) -> torch.Tensor:
    gen = torch.Generator().manual_seed(spec["seed"])
    return torch.randn(*spec["shape"], generator=gen)


def _model_text(spec: dict) -> str:
    if spec["kind"] == "mlp":
        return (f"nn.Sequential(nn.Linear({spec['d']}, {spec['h']}), nn.ReLU(), nn.Linear({spec['h']}, {spec['c']})) "
                f"(weights seeded {spec['seed']})")
    return (f"nn.Sequential(Conv2d(1, 3, 3, padding=1), ReLU, Conv2d(3, 4, 3, padding=1), ReLU, Flatten, "
            f"Linear({4 * spec['side'] ** 2}, {spec['c']})) (weights seeded {spec['seed']})")


def _show(t: torch.Tensor) -> str:
    if t.numel() > 12:
        return f"a {t.dtype} tensor of shape {tuple(t.shape)}, first values {[round(v, 4) for v in t.flatten()[:6].tolist()]}"
    return f"torch.tensor({t.tolist()})"


def _mlp(seed, d=6, h=8, c=3):
    return {"kind": "mlp", "seed": seed, "d": d, "h": h, "c": c}


def _cnn(seed, side=6, c=3):
    return {"kind": "cnn", "seed": seed, "side": side, "c": c}


def _xs(seed, shape):
    return {"seed": seed, "shape": list(shape)}


def _x_shape(model: dict, n: int) -> list[int]:
    return [n, model["d"]] if model["kind"] == "mlp" else [n, 1, model["side"], model["side"]]


def _random_model_case(rng: np.random.Generator) -> dict:
    kind = "mlp" if rng.random() < 0.5 else "cnn"
    seed = int(rng.integers(0, 2**31))
    model = _mlp(seed, d=int(rng.integers(2, 9)), h=int(rng.integers(3, 10)), c=int(rng.integers(2, 5))) \
        if kind == "mlp" else _cnn(seed, side=int(rng.integers(3, 7)), c=int(rng.integers(2, 5)))
    n = int(rng.integers(1, 4))
    target = int(rng.integers(0, model["c"])) if rng.random() < 0.5 else \
        [int(v) for v in rng.integers(0, model["c"], size=n)]
    return {"model": model, "x": _xs(int(rng.integers(0, 2**31)), _x_shape(model, n)), "target": target}


# --------------------------------------------------------------------------- comparisons
def _tensor_reason(expected, got, what: str = "attribution", rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    return tensor_reason(expected, got, what, rtol=rtol, atol=atol, atol_relative_to_max=True)


def _map_compare(expected, got):
    return _tensor_reason(expected, got)


def _curve_compare(expected, got):
    return _tensor_reason(expected, got, "probability", rtol=1e-5, atol=1e-6)


def _array_compare(expected: np.ndarray, got) -> str | None:
    if not isinstance(got, np.ndarray):
        return f"expected a numpy array, got a {type_name(got)}"
    if got.shape != expected.shape:
        return f"expected shape {expected.shape}, got {got.shape}"
    if not np.issubdtype(got.dtype, np.floating):
        return f"expected a float64 array, got dtype {got.dtype}"
    bad = ~np.isclose(got.astype(np.float64), expected, rtol=1e-8, atol=1e-8)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"phi[{i}]: expected {expected[i]!r}, got {float(got[i])!r} ({int(bad.sum())} of {bad.size} differ)"
    return None


# --------------------------------------------------------------------------- saliency / integrated_gradients
def _gradient_cases(rng: np.random.Generator, ig: bool) -> list[dict]:
    m0, c0 = _mlp(11), _cnn(12)
    fixed = [
        {"model": m0, "x": _xs(1, [1, 6]), "target": 0},
        {"model": m0, "x": _xs(2, [3, 6]), "target": [2, 0, 1]},                    # one target per row
        {"model": c0, "x": _xs(3, [2, 1, 6, 6]), "target": 1},
        {"model": c0, "x": _xs(4, [2, 1, 6, 6]), "target": [0, 2]},
        {"model": m0, "x": _xs(5, [2, 6]), "target": 3},                            # out of range -> ValueError
        {"model": m0, "x": _xs(5, [2, 6]), "target": [0, 1, 2]},                    # wrong length -> ValueError
        {"model": m0, "x": _xs(5, [6]), "target": 0},                               # no batch dim -> ValueError
    ]
    if ig:
        fixed[:4] = [dict(c, steps=s) for c, s in zip(fixed[:4], [1, 3, 4, 2])]
        fixed[4:4] = [
            {"model": m0, "x": _xs(6, [2, 6]), "target": 1, "baseline": _xs(7, [2, 6]), "steps": 3},
            {"model": c0, "x": _xs(8, [1, 1, 6, 6]), "target": 2, "baseline": _xs(9, [1, 1, 6, 6]), "steps": 5},
            {"model": m0, "x": _xs(10, [1, 6]), "target": 0, "steps": 50},
        ]
        fixed.append({"model": m0, "x": _xs(5, [2, 6]), "target": 0, "steps": 0})  # steps < 1 -> ValueError
    cases = list(fixed)
    for _ in range(4):
        case = _random_model_case(rng)
        if ig:
            case["steps"] = int(rng.integers(1, 9))
            if rng.random() < 0.5:
                case["baseline"] = _xs(int(rng.integers(0, 2**31)), case["x"]["shape"])
        cases.append(case)
    return cases


def _saliency_build(case: dict):
    return (_model(case["model"]), _x(case["x"]), case["target"]), {}


def _ig_build(case: dict):
    kwargs = {"steps": case["steps"]} if "steps" in case else {}
    if "baseline" in case:
        kwargs["baseline"] = _x(case["baseline"])
    return (_model(case["model"]), _x(case["x"]), case["target"]), kwargs


def _model_describe(case: dict) -> str:
    text = f"model = {_model_text(case['model'])}, x = {_show(_x(case['x']))}, target = {case['target']!r}"
    for key in ("window", "stride", "baseline", "steps", "layer"):
        if key in case:
            value = _show(_x(case[key])) if key == "baseline" and isinstance(case[key], dict) else case[key]
            text += f", {key} = " + (f"model[{value}]" if key == "layer" else f"{value!r}" if not isinstance(value, str) else value)
    return text


# --------------------------------------------------------------------------- occlusion
def _occlusion_cases(rng: np.random.Generator) -> list[dict]:
    m0, c0 = _mlp(21), _cnn(22)
    fixed = [
        {"model": m0, "x": _xs(1, [1, 6]), "target": 0, "window": [1], "stride": 1},
        {"model": m0, "x": _xs(2, [2, 6]), "target": [1, 2], "window": [2], "stride": 1},     # overlaps: mean
        {"model": m0, "x": _xs(3, [1, 6]), "target": 2, "window": [3], "stride": 2},          # cut-off last window
        {"model": c0, "x": _xs(4, [2, 1, 6, 6]), "target": 1, "window": [1, 2, 2], "stride": 2},
        {"model": c0, "x": _xs(5, [1, 1, 6, 6]), "target": 0, "window": [1, 3, 3], "stride": [1, 2, 2],
         "baseline": 0.5},
        {"model": c0, "x": _xs(6, [1, 1, 5, 5]), "target": 2, "window": [1, 2, 4], "stride": [1, 1, 3]},
        {"model": m0, "x": _xs(7, [1, 6]), "target": 0, "window": [2, 2], "stride": 1},       # wrong rank -> ValueError
        {"model": m0, "x": _xs(7, [1, 6]), "target": 0, "window": [7], "stride": 1},          # too big -> ValueError
        {"model": m0, "x": _xs(7, [1, 6]), "target": 0, "window": [2], "stride": 3},          # stride > window
    ]
    fixed[5]["model"] = _cnn(23, side=5)
    cases = list(fixed)
    for _ in range(3):
        case = _random_model_case(rng)
        dims = case["x"]["shape"][1:]
        case["window"] = [1 if i == 0 and len(dims) == 3 else int(rng.integers(1, d + 1)) for i, d in enumerate(dims)]
        case["stride"] = [int(rng.integers(1, w + 1)) for w in case["window"]]
        case["baseline"] = float(rng.choice([0.0, 0.5, -1.0]))
        cases.append(case)
    return cases


def _occlusion_build(case: dict):
    kwargs = {"baseline": case["baseline"]} if "baseline" in case else {}
    return (_model(case["model"]), _x(case["x"]), case["target"], tuple(case["window"]),
            case["stride"] if isinstance(case["stride"], int) else tuple(case["stride"])), kwargs


# --------------------------------------------------------------------------- grad_cam
def _grad_cam_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"model": _cnn(31), "x": _xs(1, [1, 1, 6, 6]), "target": 0, "layer": 2},
        {"model": _cnn(32), "x": _xs(2, [3, 1, 6, 6]), "target": [2, 1, 0], "layer": 2},
        {"model": _cnn(33, side=4), "x": _xs(3, [2, 1, 4, 4]), "target": 1, "layer": 0},
        {"model": _cnn(34), "x": _xs(4, [2, 1, 6, 6]), "target": [0, 0], "layer": 2},
        {"model": _cnn(35), "x": _xs(5, [1, 1, 6, 6]), "target": 0, "layer": "foreign"},   # not in model -> ValueError
        {"model": _cnn(35), "x": _xs(5, [1, 1, 6, 6]), "target": 5, "layer": 2},          # target -> ValueError
    ]
    cases = list(fixed)
    for _ in range(4):
        side = int(rng.integers(3, 8))
        model = _cnn(int(rng.integers(0, 2**31)), side=side, c=int(rng.integers(2, 5)))
        n = int(rng.integers(1, 4))
        cases.append({"model": model, "x": _xs(int(rng.integers(0, 2**31)), [n, 1, side, side]),
                      "target": [int(v) for v in rng.integers(0, model["c"], size=n)], "layer": int(rng.choice([0, 2]))})
    return cases


def _grad_cam_build(case: dict):
    model = _model(case["model"])
    layer = nn.Conv2d(3, 4, 3, padding=1) if case["layer"] == "foreign" else model[case["layer"]]
    return (model, layer, _x(case["x"]), case["target"]), {}


# --------------------------------------------------------------------------- exact_shapley
class _Game:
    """f(z) = w2 . tanh(W1 z) + c * z_0 * z_last: interactions between features, (n, M) -> (n,)."""

    def __init__(self, seed: int, M: int):
        rng = np.random.default_rng(seed)
        self.W1, self.w2, self.c = rng.normal(size=(5, M)), rng.normal(size=5), float(rng.normal())
        self.seed = seed

    def __call__(self, z):
        z = np.asarray(z, dtype=np.float64)
        return np.tanh(z @ self.W1.T) @ self.w2 + self.c * z[:, 0] * z[:, -1]

    def __repr__(self) -> str:
        return f"f(z) = w2 . tanh(W1 z) + c * z[:, 0] * z[:, -1] (W1, w2, c drawn with seed {self.seed})"


def _shapley_cases(rng: np.random.Generator) -> list[dict]:
    cases = [{"seed": s, "M": M, "zero_baseline": zb} for s, M, zb in
             [(1, 1, True), (2, 2, True), (3, 3, False), (4, 5, False), (5, 8, False), (6, 14, False), (7, 15, True)]]
    for _ in range(4):
        cases.append({"seed": int(rng.integers(0, 2**31)), "M": int(rng.integers(2, 11)),
                      "zero_baseline": bool(rng.random() < 0.3)})
    return cases


def _shapley_build(case: dict):
    rng = np.random.default_rng(case["seed"] + 1)
    x = rng.normal(size=case["M"])
    baseline = np.zeros(case["M"]) if case["zero_baseline"] else rng.normal(size=case["M"])
    return (_Game(case["seed"], case["M"]), x, baseline), {}


def _shapley_describe(case: dict) -> str:
    (f, x, b), _ = _shapley_build(case)
    return f"{f!r}, x = np.array({np.round(x, 4).tolist()}), baseline = np.array({np.round(b, 4).tolist()})"


# --------------------------------------------------------------------------- lime_tabular
def _lime_params(case: dict) -> dict:
    """The target's parameters, drawn from the case's ``f_seed`` (in the grader only): a linear
    f (weights ``w``, intercept ``b``) or f(z) = sum_i a_i sin(b_i z_i)."""
    rng, M = np.random.default_rng(case["f_seed"]), len(case["x"])
    if case["kind"] == "linear":
        return {"w": np.round(rng.normal(size=M), 3), "b": float(np.round(rng.normal(), 3))}
    return {"a": rng.uniform(0.5, 1.5, size=M), "freq": rng.uniform(1.0, 2.0, size=M)}


def _lime_target(case: dict):
    """The grader's side of ``f``: a :class:`~course_lib.grader.exercises.BlackBox` (the parameters sit in a
    closure that runs only outside the sandbox)."""
    from . import BlackBox
    p = _lime_params(case)
    if case["kind"] == "linear":
        w, b = p["w"], p["b"]
        return BlackBox(lambda z: z @ w + b, len(case["x"]))
    a, freq = p["a"], p["freq"]
    return BlackBox(lambda z: np.sin(z * freq) @ a, len(case["x"]))


_LIME_HIDDEN = ("kind", "f_seed")        # what of a case the graded child never receives


def _lime_blackbox(case: dict):
    """(the case without f's kind and seed, the function the grader evaluates for the child)."""
    return {k: v for k, v in case.items() if k not in _LIME_HIDDEN}, _lime_target(case)


def _lime_cases(rng: np.random.Generator) -> list[dict]:
    # f's parameters are drawn from the grading seed, never fixed here: this file is readable in the sandbox
    fixed = [
        ("linear", [1.0, -2.0], 1.0, 500, 0.75, 0),
        ("linear", [0.5, 0.0, 2.0, -1.0], [0.5, 1.0, 2.0, 0.1], 300, 0.75, 3),   # per-feature scale
        ("curved", [0.3, 0.8], 1.5, 4000, 0.1, 0),                             # small kernel: ~ the gradient
        ("curved", [-0.4, 1.0, 0.2], 1.5, 4000, 0.1, 1),
        ("curved", [0.3, -0.8], 1.5, 4000, 0.75, 2),                           # wide kernel: far from it
        ("curved", [0.5, 0.1, -0.6], [1.0, 1.5, 2.0], 4000, 0.75, 3),
        ("linear", [1.0, 2.0], 1.0, 2, 0.75, 0),                                # n_samples <= M -> ValueError
        ("linear", [1.0, 2.0], 0.0, 100, 0.75, 0),                              # scale 0 -> ValueError
        ("linear", [1.0, 2.0], 1.0, 100, 0.0, 0),                               # kernel_width 0 -> ValueError
    ]
    cases = [{"kind": k, "f_seed": int(rng.integers(0, 2**31)), "x": x, "scale": sc, "n_samples": n,
              "kernel_width": kw, "sample_seed": ss} for k, x, sc, n, kw, ss in fixed]
    for _ in range(2):
        M = int(rng.integers(1, 6))
        cases.append({"kind": "linear", "f_seed": int(rng.integers(0, 2**31)),
                      "x": np.round(rng.normal(size=M), 3).tolist(), "scale": float(np.round(rng.uniform(0.2, 2), 3)),
                      "n_samples": int(rng.integers(50, 500)), "kernel_width": 0.75, "sample_seed": int(rng.integers(0, 1000))})
    return cases


def _lime_build(case: dict):
    """In the grader and the notebook (the full case) ``f`` is the BlackBox; in the graded child (the public
    case) a RemoteBlackBox that holds no parameter."""
    from . import remote_blackbox
    x = np.array(case["x"], dtype=np.float64)
    scale = np.array(case["scale"]) if isinstance(case["scale"], list) else case["scale"]
    f = _lime_target(case) if "f_seed" in case else remote_blackbox(len(x))
    return (f, x, scale), {"n_samples": case["n_samples"], "kernel_width": case["kernel_width"],
                           "seed": case["sample_seed"]}


def _lime_describe(case: dict) -> str:
    (_, x, _), kw = _lime_build(case)
    what = "a linear f" if case["kind"] == "linear" else "a smooth nonlinear f"
    truth = "its weights" if case["kind"] == "linear" else \
        "what LIME converges to with many samples (max-abs error <= 0.15)"
    return (f"{what} (hidden), x = np.array({x.tolist()}), scale = {case['scale']!r}, n_samples={kw['n_samples']}, "
            f"kernel_width={kw['kernel_width']}, seed={kw['seed']}; graded against {truth} = "
            f"{np.round(_lime_truth(case)[0], 4).tolist()}, called twice")


def _lime_truth(case: dict) -> tuple[np.ndarray, float]:
    """(truth, tolerance) for a case, computed in the grader from its ``f_seed``.

    For ``f(z) = sum_i a_i sin(b_i z_i)`` the truth is what LIME converges to with many samples, in
    closed form: the kernel exp(-||eps||^2 / (M w^2)) turns the N(0, 1) perturbations into independent
    N(0, sigma^2) ones with sigma^2 = 1 / (1 + 2 / (M w^2)), and by Stein's lemma the weighted least-squares
    slope is a_i b_i cos(b_i x_i) exp(-(b_i s_i sigma)^2 / 2): the gradient only for a small kernel.
    """
    x = np.array(case["x"], dtype=np.float64)
    p = _lime_params(case)
    if case["kind"] == "linear":
        return p["w"].copy(), 1e-6
    a, freq = p["a"], p["freq"]
    scale = np.broadcast_to(np.asarray(case["scale"], dtype=np.float64), x.shape)
    sigma2 = 1.0 / (1.0 + 2.0 / (len(x) * case["kernel_width"] ** 2))
    return a * freq * np.cos(freq * x) * np.exp(-(freq * scale) ** 2 * sigma2 / 2), 0.15


def _lime_runner(fn, args: tuple, kwargs: dict):
    """Call twice with the same arguments (the same seed must give the same coefficients)."""
    return fn(*args, **kwargs), fn(*args, **kwargs)


def _lime_derive(case: dict, answer) -> tuple:
    """In the grader: (coef, coef_again, truth, tolerance)."""
    return (*answer, *_lime_truth(case))


def _lime_compare(expected: tuple, got) -> str | None:
    coef, again = got[0], got[1]
    truth, tol = expected[2], expected[3]
    if not isinstance(coef, np.ndarray):
        return f"expected a numpy array of coefficients, got a {type_name(coef)}"
    if coef.shape != truth.shape or not np.issubdtype(coef.dtype, np.floating):
        return f"expected a float array of shape {truth.shape} (no intercept), got {coef.dtype} of shape {coef.shape}"
    if not (isinstance(again, np.ndarray) and again.shape == coef.shape and np.array_equal(coef, again)):
        return "two calls with the same seed gave different coefficients: draw samples from np.random.default_rng(seed)"
    err = float(np.max(np.abs(coef - truth)))
    if not err <= tol:
        return (f"coefficients {np.round(coef, 4).tolist()} are {err:.3g} (max-abs) from the truth "
                f"{np.round(truth, 4).tolist()}, tolerance {tol}")
    return None


# --------------------------------------------------------------------------- deletion_curve
def _deletion_cases(rng: np.random.Generator) -> list[dict]:
    m0, c0 = _mlp(41), _cnn(42)
    fixed = [
        {"model": m0, "x": _xs(1, [1, 6]), "target": 0, "attr": {"seed": 2, "shape": [1, 6]}, "steps": 3},
        {"model": m0, "x": _xs(3, [2, 6]), "target": [1, 2], "attr": {"ties": 4, "shape": [2, 6]}, "steps": 6},
        {"model": m0, "x": _xs(5, [1, 6]), "target": 2, "attr": {"seed": 6, "shape": [1, 6]}, "steps": 4},  # 1.5 -> 1
        {"model": c0, "x": _xs(7, [2, 1, 6, 6]), "target": 1, "attr": {"ties": 8, "shape": [2, 1, 6, 6]},
         "steps": 10, "baseline": 0.5},
        {"model": c0, "x": _xs(9, [1, 1, 6, 6]), "target": [2], "attr": {"seed": 10, "shape": [1, 1, 6, 6]}, "steps": 7},
        {"model": m0, "x": _xs(5, [1, 6]), "target": 0, "attr": {"seed": 6, "shape": [1, 5]}, "steps": 4},  # shape -> ValueError
        {"model": m0, "x": _xs(5, [1, 6]), "target": 0, "attr": {"seed": 6, "shape": [1, 6]}, "steps": 0},  # steps -> ValueError
    ]
    cases = list(fixed)
    for _ in range(3):
        case = _random_model_case(rng)
        case["attr"] = {("ties" if rng.random() < 0.5 else "seed"): int(rng.integers(0, 2**31)), "shape": case["x"]["shape"]}
        case["steps"] = int(rng.integers(1, 12))
        cases.append(case)
    return cases


def _attr(spec: dict) -> torch.Tensor:
    if "ties" in spec:                                       # few distinct values: many exact ties
        gen = torch.Generator().manual_seed(spec["ties"])
        return torch.randint(0, 3, spec["shape"], generator=gen).float()
    return _x(spec)


def _deletion_build(case: dict):
    kwargs = {"steps": case["steps"]}
    if "baseline" in case:
        kwargs["baseline"] = case["baseline"]
    return (_model(case["model"]), _x(case["x"]), case["target"], _attr(case["attr"])), kwargs


def _deletion_describe(case: dict) -> str:
    return (f"model = {_model_text(case['model'])}, x = {_show(_x(case['x']))}, target = {case['target']!r}, "
            f"attribution = {_show(_attr(case['attr']))}, steps={case['steps']}, baseline={case.get('baseline', 0.0)}")


# --------------------------------------------------------------------------- cascading_randomization
def _explain_gradient(model, x, target):
    """The signed gradient of the target logit (one int or one int per row)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    t = torch.as_tensor(target).expand(len(x)) if isinstance(target, int) else torch.as_tensor(target)
    grad, = torch.autograd.grad(out[torch.arange(len(x)), t].sum(), x)
    return grad


def _explain_gradient_x_input(model, x, target):
    return _explain_gradient(model, x, target) * x


def _explain_paired(model, x, target):
    """|gradient| summed over neighbouring pairs of (flattened) elements, each sum written to both: every
    value occurs at least twice (ties)."""
    g = _explain_gradient(model, x, target).abs().flatten(1)
    pairs = g.view(len(g), -1, 2).sum(-1)
    return pairs.repeat_interleave(2, dim=1).view_as(x)


_EXPLAIN = {"gradient": _explain_gradient, "gradient x input": _explain_gradient_x_input,
            "paired |gradient|": _explain_paired}


def _cascade_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"model": _mlp(51), "x": _xs(1, [2, 6]), "target": 0, "explain": "gradient"},
        {"model": _cnn(52), "x": _xs(2, [2, 1, 6, 6]), "target": [1, 2], "explain": "gradient"},
        {"model": _cnn(53), "x": _xs(3, [2, 1, 6, 6]), "target": 2, "explain": "paired |gradient|"},  # ties
        {"model": _mlp(54, d=8, h=10), "x": _xs(4, [3, 8]), "target": [0, 1, 2], "explain": "gradient x input",
         "seed": 7},
        {"model": _mlp(55), "x": _xs(5, [2, 6]), "target": 1, "explain": "paired |gradient|", "seed": 3},
        {"model": _mlp(56), "x": _xs(6, [6]), "target": 0, "explain": "gradient"},   # no batch dim -> ValueError
    ]
    cases = list(fixed)
    for _ in range(3):
        case = _random_model_case(rng)
        case["model"]["d"] = 2 * int(rng.integers(2, 5)) if case["model"]["kind"] == "mlp" else None
        case["model"]["side"] = 2 * int(rng.integers(2, 4)) if case["model"]["kind"] == "cnn" else None
        case["model"] = {k: v for k, v in case["model"].items() if v is not None}
        case["x"]["shape"] = _x_shape(case["model"], max(2, case["x"]["shape"][0]))
        if isinstance(case["target"], list):
            case["target"] = [int(v) for v in rng.integers(0, case["model"]["c"], size=case["x"]["shape"][0])]
        case["explain"] = str(rng.choice(list(_EXPLAIN)))
        case["seed"] = int(rng.integers(0, 1000))
        cases.append(case)
    return cases


def _cascade_build(case: dict):
    kwargs = {"seed": case["seed"]} if "seed" in case else {}
    return (_model(case["model"]), _EXPLAIN[case["explain"]], _x(case["x"]), case["target"]), kwargs


def _cascade_describe(case: dict) -> str:
    return (f"model = {_model_text(case['model'])}, explain = the {case['explain']} of the target logit, "
            f"x = {_show(_x(case['x']))}, target = {case['target']!r}, seed = {case.get('seed', 0)}; "
            f"called twice with the same model")


def _cascade_runner(fn, args: tuple, kwargs: dict):
    """Call twice with the same model: the second call must not see a model the first one changed."""
    return fn(*args, **kwargs), fn(*args, **kwargs)


def _rho_list_reason(expected: list, got) -> str | None:
    if not isinstance(got, (list, tuple)):
        return f"expected a list of (layer name, rank correlation) pairs, got a {type_name(got)}"
    if len(got) != len(expected):
        return f"expected {len(expected)} pairs (one per Conv2d/Linear layer), got {len(got)}"
    for (name, rho), item in zip(expected, got):
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            return f"expected (layer name, rank correlation) pairs, got {item!r}"
        if item[0] != name:
            return (f"expected the layers from the output back, {[n for n, _ in expected]}, "
                    f"got {[i[0] if isinstance(i, (list, tuple)) else i for i in got]}")
        value = item[1]
        if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
            return f"layer {name!r}: expected a float, got a {type_name(value)}"
        if math.isnan(rho) != math.isnan(float(value)) or not (math.isnan(rho) or abs(float(value) - rho) <= 1e-5):
            return f"layer {name!r} (and those after it re-drawn): expected rank correlation {rho:.6f}, got {float(value):.6f}"
    return None


def _cascade_compare(expected: tuple, got) -> str | None:
    if not (isinstance(got, tuple) and len(got) == 2):
        return f"expected the result of two calls, got a {type_name(got)}"
    reason = _rho_list_reason(expected[0], got[0])
    if reason is not None:
        return reason
    if _rho_list_reason(expected[1], got[1]) is not None:
        return ("the second call with the same model gave other correlations: re-draw the layers of a "
                "copy (copy.deepcopy), never of the model itself")
    return None


# --------------------------------------------------------------------------- shapley_regression
def _exact_values(f, x: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Exact Shapley values by the permutation form: the mean marginal contribution over all orders of
    small M, here by coalition weights |S|!(M-|S|-1)!/M! (written for the grader, not the reference)."""
    M = len(x)
    masks = [tuple(bool(c >> i & 1) for i in range(M)) for c in range(2 ** M)]
    v = dict(zip(masks, np.asarray(f(np.where(np.array(masks), x, baseline)), dtype=np.float64)))
    phi = np.zeros(M)
    for S, vS in v.items():
        s = sum(S)
        for i in range(M):
            if not S[i]:
                with_i = S[:i] + (True,) + S[i + 1:]
                phi[i] += math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M) * (v[with_i] - vS)
    return phi


def _regression_cases(rng: np.random.Generator) -> list[dict]:
    def subset(seed: int, M: int, extra: int, repeat: bool) -> list[list[int]]:
        gen = np.random.default_rng(seed)
        while True:
            Z = gen.random((2 * M + extra, M)) < gen.uniform(0.2, 0.8, size=(2 * M + extra, 1))
            Z = Z[(Z.sum(1) > 0) & (Z.sum(1) < M)]
            if repeat:
                Z = np.vstack([Z, Z[:2]])
            A = Z[:, :-1].astype(float) - Z[:, -1:]
            if len(Z) >= M and np.linalg.matrix_rank(A) == M - 1:
                return Z.astype(int).tolist()

    cases = [{"seed": 11, "M": 2, "zero_baseline": True, "coalitions": None},
             {"seed": 12, "M": 3, "zero_baseline": False, "coalitions": None},
             {"seed": 13, "M": 4, "zero_baseline": False, "coalitions": subset(13, 4, 2, False)},
             {"seed": 14, "M": 5, "zero_baseline": True, "coalitions": None},
             {"seed": 15, "M": 6, "zero_baseline": False, "coalitions": subset(15, 6, 3, True)},
             {"seed": 16, "M": 8, "zero_baseline": False, "coalitions": None},
             {"seed": 17, "M": 15, "zero_baseline": True, "coalitions": None}]          # invalid: M > 14
    for _ in range(4):
        seed, M = int(rng.integers(0, 2**31)), int(rng.integers(3, 10))
        cases.append({"seed": seed, "M": M, "zero_baseline": bool(rng.random() < 0.3),
                      "coalitions": subset(seed, M, int(rng.integers(0, 6)), bool(rng.random() < 0.5))
                      if rng.random() < 0.5 else None})
    return cases


def _regression_build(case: dict):
    (f, x, baseline), _ = _shapley_build(case)
    if case["coalitions"] is None:
        return (f, x, baseline), {}
    return (f, x, baseline), {"coalitions": np.array(case["coalitions"], dtype=bool)}


def _regression_describe(case: dict) -> str:
    text = _shapley_describe(case)
    if case["coalitions"] is None:
        return text + ", coalitions=None (every coalition: the exact Shapley values)"
    return text + f", coalitions = np.array({case['coalitions']}, dtype=bool)"


def _regression_derive(case: dict, answer) -> tuple:
    """In the grader: (answer, exact Shapley values or None). With every coalition the truth is the exact
    Shapley values, computed here by enumeration; with a given set it is the reference's fit."""
    if case["coalitions"] is not None or case["M"] > 14:
        return answer, None
    (f, x, baseline), _ = _shapley_build(case)
    return answer, _exact_values(f, x, baseline)


def _regression_compare(expected: tuple, got) -> str | None:
    truth = expected[1] if expected[1] is not None else expected[0]
    answer = got[0]
    if not isinstance(answer, np.ndarray):
        return f"expected a numpy array, got a {type_name(answer)}"
    if answer.shape != truth.shape or not np.issubdtype(answer.dtype, np.floating):
        return f"expected a float64 array of shape {truth.shape}, got {answer.dtype} of shape {answer.shape}"
    bad = ~np.isclose(answer.astype(np.float64), truth, rtol=1e-7, atol=1e-7)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "the exact Shapley value" if expected[1] is not None else "the constrained weighted fit"
        return f"phi[{i}]: expected {truth[i]!r} ({what}), got {float(answer[i])!r} ({int(bad.sum())} of {bad.size} differ)"
    return None


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, forbidden=(), runner=None, derive=None, blackbox=None):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="local_explanation", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, forbidden=tuple(forbidden), runner=runner, derive=derive,
                    blackbox=blackbox)


# Off limits in every exercise of this chapter: the explanation libraries, whole packages.
_EXPLAINERS = ("captum", "shap", "lime")
EXERCISES = [
    _exercise("saliency", lambda rng: _gradient_cases(rng, ig=False), _saliency_build, _model_describe, _map_compare,
              _EXPLAINERS),
    _exercise("integrated_gradients", lambda rng: _gradient_cases(rng, ig=True), _ig_build, _model_describe,
              _map_compare, _EXPLAINERS),
    _exercise("occlusion", _occlusion_cases, _occlusion_build, _model_describe, _map_compare, _EXPLAINERS),
    _exercise("grad_cam", _grad_cam_cases, _grad_cam_build, _model_describe, _map_compare,
              _EXPLAINERS),
    _exercise("exact_shapley", _shapley_cases, _shapley_build, _shapley_describe, _array_compare,
              _EXPLAINERS),
    _exercise("shapley_regression", _regression_cases, _regression_build, _regression_describe, _regression_compare,
              _EXPLAINERS, derive=_regression_derive),
    _exercise("lime_tabular", _lime_cases, _lime_build, _lime_describe, _lime_compare,
              _EXPLAINERS, runner=_lime_runner, derive=_lime_derive, blackbox=_lime_blackbox),
    _exercise("deletion_curve", _deletion_cases, _deletion_build, _deletion_describe, _curve_compare, _EXPLAINERS),
    _exercise("cascading_randomization", _cascade_cases, _cascade_build, _cascade_describe, _cascade_compare,
              _EXPLAINERS, runner=_cascade_runner),
]
