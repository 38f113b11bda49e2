"""How chapter 07's exercises are graded (inputs, comparisons); references live in course_lib.compression_explanation.

The hidden inputs separate a right answer from the usual wrong ones:

- ``attribution_agreement``: ReLU'd maps full of exact zeros and small-integer maps (ties: ordinal ranks
  and the ``1 - 6 sum d^2 / (n (n^2 - 1))`` shortcut are wrong there), signed maps with large negative
  entries (top-k by signed value, cosine of ``|a|``), ``k * M`` landing on .5 (``round`` is half to
  even: ``int`` and ``floor(x + 0.5)`` each fail one case) or below 1 (``max(1, ...)``), a tie exactly
  at the top-k cut (lower flat index first), several rows of different agreement (a batch mean or one
  batch-wide value), (N, M), (N, H, W) and (N, C, H, W) inputs in float32 and float64.
- ``trainable_grad_cam``: graded on its value *and* on the gradient it passes to the model's weights
  (the runner takes ``torch.autograd.grad`` of ``(cam * w).sum()``, ``w`` = 1, 2, 3, 1, 2, 3, ... over the
  map's elements, with respect to every parameter of the model; the grader compares with its own).
  Small seeded CNNs (ReLU or Tanh after the layer, Grad-CAM at the first or the second conv), one target
  for all rows, a list and a tensor of targets, repeated targets: a gradient taken without
  ``create_graph=True`` sends nothing to the classifier's weights through the channel weights, a
  detached activation loses the path through ``A``, sum pooling, no ReLU, a softmax target fail.
- ``band_position``: per-image agreements on a grid of eighths (exact sums: ties are exact), nan in
  different images of different rows (a per-row nanmean uses other images than the common ones), the
  compressed mean equal to a band mean (ties count one half) and to the band's minimum ("inside"), above
  and below every band model, a band whose mean plus two standard deviations reaches past its maximum
  (the verdict is the range), B = 2 and float32 inputs.
- ``stamp_test``: a linear model whose logits see the four corner patches only through the wiring the
  case states (a stamp in corner c raises class ``wiring[c]``): a model that ignores the stamps (rate
  exactly 1/K), one that always follows them (stamps applied one after another on the same batch then
  pile up), wirings that send a stamp to another class (a prediction that *changes* is not one that
  *follows*), K = 2, 3, 4, one and two channels.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._compare import close_float, exact_int, show_tensor as _show, tensor_reason, type_name

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


# --------------------------------------------------------------------------- trainable_grad_cam
def _cnn(spec: dict) -> nn.Module:
    """Conv(1, 3, 3, padding 1), ReLU, Conv(3, 4, 3, padding 1), ReLU or Tanh, Flatten, Linear(4 s s, c); N(0, 0.4^2) weights."""
    s = spec["side"]
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                        nn.Tanh() if spec.get("act") == "tanh" else nn.ReLU(), nn.Flatten(), nn.Linear(4 * s * s, spec["c"]))
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    return net.eval()


def _cnn_text(spec: dict) -> str:
    act = "Tanh" if spec.get("act") == "tanh" else "ReLU"
    return (f"nn.Sequential(Conv2d(1, 3, 3, padding=1), ReLU, Conv2d(3, 4, 3, padding=1), {act}, Flatten, "
            f"Linear({4 * spec['side'] ** 2}, {spec['c']})) (weights seeded {spec['seed']})")


def _images(seed: int, shape: list[int]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _cam_cases(rng: np.random.Generator) -> list[dict]:
    c = lambda seed, side=5, classes=3, act="relu": {"seed": seed, "side": side, "c": classes, "act": act}  # noqa: E731
    fixed = [
        {"model": c(1), "x": [1, 1, 5, 5], "x_seed": 11, "target": 0, "layer": 2},
        {"model": c(2, side=6), "x": [3, 1, 6, 6], "x_seed": 12, "target": [2, 1, 0], "layer": 2},   # one per row
        {"model": c(3, side=4), "x": [2, 1, 4, 4], "x_seed": 13, "target": 1, "layer": 0},           # first conv
        {"model": c(4, act="tanh"), "x": [2, 1, 5, 5], "x_seed": 14, "target": [0, 2], "layer": 2,
         "tensor_target": True},                                                                   # a tensor
        {"model": c(5, classes=4), "x": [4, 1, 5, 5], "x_seed": 15, "target": [3, 3, 0, 1], "layer": 2},
        {"model": c(6, act="tanh"), "x": [2, 1, 5, 5], "x_seed": 16, "target": 2, "layer": 0},
        {"model": c(7), "x": [1, 1, 5, 5], "x_seed": 17, "target": 0, "layer": "foreign"},          # -> ValueError
        {"model": c(7), "x": [1, 1, 5, 5], "x_seed": 17, "target": 3, "layer": 2},                  # -> ValueError
    ]
    cases = list(fixed)
    for _ in range(4):
        side, n, classes = int(rng.integers(3, 8)), int(rng.integers(1, 4)), int(rng.integers(2, 5))
        target = int(rng.integers(0, classes)) if rng.random() < 0.4 else \
            [int(v) for v in rng.integers(0, classes, size=n)]
        cases.append({"model": c(int(rng.integers(0, 2**31)), side, classes, str(rng.choice(["relu", "tanh"]))),
                      "x": [n, 1, side, side], "x_seed": int(rng.integers(0, 2**31)), "target": target,
                      "layer": int(rng.choice([0, 2]))})
    return cases


def _cam_build(case: dict) -> tuple[tuple, dict]:
    model = _cnn(case["model"])
    layer = nn.Conv2d(3, 4, 3, padding=1) if case["layer"] == "foreign" else model[case["layer"]]
    target = torch.tensor(case["target"]) if case.get("tensor_target") else case["target"]
    return (model, layer, _images(case["x_seed"], case["x"]), target), {}


def _cam_describe(case: dict) -> str:
    (model, layer, x, target), _ = _cam_build(case)
    where = "a Conv2d(3, 4, 3, padding=1) that is not in model" if case["layer"] == "foreign" else f"model[{case['layer']}]"
    target = f"torch.tensor({case['target']})" if case.get("tensor_target") else repr(case["target"])
    return (f"model = {_cnn_text(case['model'])}, layer = {where}, x = {_show(x)}, target = {target}; the grader "
            "also takes torch.autograd.grad of (cam * w).sum(), w = 1, 2, 3, 1, 2, 3, ... over the map's elements, "
            "with respect to every parameter of model")


def _cam_runner(fn, args: tuple, kwargs: dict):
    """Call ``fn``; send back the map and the gradient of (map * w).sum() w.r.t. each model parameter (None: not reached)."""
    cam = fn(*args, **kwargs)
    if not isinstance(cam, torch.Tensor):
        return cam
    names = [name for name, _ in args[0].named_parameters()]
    grads = [None] * len(names)
    if cam.requires_grad:
        w = (torch.arange(cam.numel()) % 3 + 1).to(cam.dtype).view(cam.shape)
        grads = list(torch.autograd.grad((cam * w).sum(), list(args[0].parameters()), allow_unused=True))
    return {"value": cam.detach(), "names": names, "grads": grads}


def _cam_compare(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        return tensor_reason(expected["value"], got, "Grad-CAM map")
    reason = tensor_reason(expected["value"], got["value"], "Grad-CAM map", rtol=1e-4, atol=1e-5,
                           atol_relative_to_max=True)
    if reason:
        return reason
    for name, e, g in zip(expected["names"], expected["grads"], got["grads"]):
        label = f"model.{name}"
        if g is None:
            if e is None or not bool((e != 0).any()):
                continue
            if any(other is not None for other in got["grads"]):
                return (f"no gradient reaches {label}, though other weights get one: the channel weights alpha are "
                        "not in the graph; take them with torch.autograd.grad(..., create_graph=True)")
            return (f"no gradient reaches {label}: the map is not attached to the autograd graph (no .detach(), "
                    "no torch.no_grad(), no numpy; take the channel weights with torch.autograd.grad(..., "
                    "create_graph=True))")
        e = torch.zeros_like(g) if e is None else e
        reason = tensor_reason(e, g, f"d (cam * w).sum() / d {label}", rtol=1e-4, atol=1e-5, atol_relative_to_max=True)
        if reason:
            if bool((g == 0).all()) and bool((e != 0).any()):
                reason += (" -- a zero gradient here: the channel weights alpha must stay in the graph "
                           "(torch.autograd.grad(..., create_graph=True)), so that the map depends on every weight "
                           "that shapes alpha")
            return reason
    return None


# --------------------------------------------------------------------------- band_position
def _grid(seed: int, shape: list[int], low: int = -2, high: int = 9) -> list:
    """Eighths in [low/8, high/8): sums of up to 64 of them are exact in float32 and float64."""
    gen = np.random.default_rng(seed)
    return (gen.integers(low, high, size=shape) / 8.0).tolist()


_NAN = float("nan")


def _band_cases(rng: np.random.Generator) -> list[dict]:
    b0 = [[0.25, 0.5, 0.125, 0.375], [0.5, 0.625, 0.5, 0.75], [0.0, 0.25, 0.125, -0.125]]
    fixed = [
        ([0.5, 0.25, 0.75, 0.5], b0),                                                          # inside, no ties
        ([0.5, 0.625, 0.5, 0.75], b0 + [[0.875, 0.75, 1.0, 0.875]]),                           # = band row 1: a tie
        ([0.75, _NAN, 0.0, 0.25, 0.5],                                                          # nan: common images
         [[0.5, 0.5, _NAN, 0.0, 0.25], [0.25, 0.0, 0.75, _NAN, 0.625], [1.0, 0.75, 0.5, 0.5, 0.25]]),
        ([0.0, 0.25, 0.125, -0.125], b0),                                                      # = the band's minimum
        ([1.0, 0.875, 1.0, 0.75], b0),                                                         # above every model
        ([-0.25, 0.0, -0.125, -0.375], b0),                                                    # below every model
        ([0.5, 0.625, 0.625, 0.5], [[0.125] * 4, [0.25, 0.5, 0.375, 0.375], [0.5, 0.25, 0.375, 0.375],
                                    [0.375, 0.375, 0.25, 0.5], [0.5, 0.625, 0.375, 0.5]]),     # above the range,
                                                                                               # inside mean +- 2 sd
        ([0.625, 0.125], [[0.5, 0.25], [0.75, 0.0]], "float32"),                               # B = 2, a tie
        ([0.5, 0.25], [[0.5, 0.25]]),                                                          # B = 1 -> ValueError
        ([0.5, 0.25, 0.5], [[0.5, 0.25], [0.5, 0.0]]),                                         # N differs -> ValueError
        ([_NAN, 0.25], [[0.5, _NAN], [0.5, 0.0]]),                                             # no image left
    ]
    cases = [{"compressed": c, "band": b, "dtype": rest[0] if rest else "float64"} for c, b, *rest in fixed]
    for _ in range(5):
        B, N = int(rng.integers(2, 8)), int(rng.integers(3, 41))
        band = _grid(int(rng.integers(0, 2**31)), [B, N])
        compressed = list(band[int(rng.integers(0, B))]) if rng.random() < 0.3 else \
            _grid(int(rng.integers(0, 2**31)), [N], low=int(rng.integers(-4, 4)), high=int(rng.integers(5, 12)))
        rows = [compressed] + band
        for row in rows:
            for j in range(N):
                if rng.random() < 0.08 and j != N - 1:                                         # the last image stays
                    row[j] = _NAN
        cases.append({"compressed": rows[0], "band": rows[1:], "dtype": _kind(rng)})
    return cases


def _band_build(case: dict) -> tuple[tuple, dict]:
    dtype = _DTYPES[case["dtype"]]
    return (torch.tensor(case["compressed"], dtype=dtype), torch.tensor(case["band"], dtype=dtype)), {}


def _band_describe(case: dict) -> str:
    (c, b), _ = _band_build(case)
    return f"compressed = {_show(c)}, band = {_show(b)}"


def _band_compare(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        return f"expected a dict with keys {sorted(expected)}, got a {type_name(got)}"
    if set(map(str, got)) != set(expected):
        return f"expected the keys {sorted(expected)}, got {sorted(map(str, got))}"
    reason = exact_int(expected["n"], got["n"])
    if reason:
        return f"n (images every model has a finite value for): {reason}"
    for key in ("mean", "band_low", "band_high", "percentile"):
        reason = close_float(expected[key], got[key], rtol=1e-9, atol=1e-12, what=key)
        if reason:
            return reason
    if got["verdict"] != expected["verdict"]:
        return f"verdict: expected {expected['verdict']!r}, got {got['verdict']!r}"
    return None


# --------------------------------------------------------------------------- stamp_test
class _CornerStamp:
    """The stamping rule: class c's ``patch x patch`` square, set to ``value`` in every channel, in corner
    ``corner_of[c]`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of a copy of the images."""

    def __init__(self, patch: int, value: float, corner_of: list[int]):
        self.patch, self.value, self.corner_of = patch, value, corner_of

    def __call__(self, images: torch.Tensor, c: int) -> torch.Tensor:
        out, p, corner = images.clone(), self.patch, self.corner_of[int(c)]
        H, W = images.shape[-2:]
        r, col = (0 if corner < 2 else H - p), (0 if corner % 2 == 0 else W - p)
        out[:, :, r:r + p, col:col + p] = self.value
        return out

    def __repr__(self) -> str:
        return (f"stamp(images, c): a copy of images with a {self.patch}x{self.patch} square of value {self.value} "
                f"in every channel at corner {self.corner_of}[c] (0 top-left, 1 top-right, 2 bottom-left, "
                "3 bottom-right)")


def _stamp_model(spec: dict) -> nn.Module:
    """Flatten, Linear(C H W, K): N(0, 0.3^2) weights, none on the corner patches except: the patch of
    corner j feeds class ``wiring[j]`` with weight ``strength / (C p^2)`` per pixel."""
    C, H, W, K, p = spec["C"], spec["H"], spec["W"], spec["K"], spec["patch"]
    gen = torch.Generator().manual_seed(spec["seed"])
    weight = torch.randn(K, C, H, W, generator=gen) * 0.3
    for j, (r, col) in enumerate([(0, 0), (0, W - p), (H - p, 0), (H - p, W - p)]):
        weight[:, :, r:r + p, col:col + p] = 0.0
        if j < len(spec["wiring"]):
            weight[spec["wiring"][j], :, r:r + p, col:col + p] = spec["strength"] / (C * p * p)
    net = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K))
    with torch.no_grad():
        net[1].weight.copy_(weight.flatten(1))
        net[1].bias.copy_(torch.randn(K, generator=gen) * 0.3)
    return net.eval()


def _stamp_cases(rng: np.random.Generator) -> list[dict]:
    def case(seed, N, K, strength, wiring, C=1, H=6, W=6, patch=2, value=2.0, corner_of=None, shape=None):
        return {"model": {"seed": seed, "C": C, "H": H, "W": W, "K": K, "patch": patch, "strength": strength,
                          "wiring": wiring}, "x": shape or [N, C, H, W], "x_seed": seed + 100,
                "stamp": {"patch": patch, "value": value, "corner_of": corner_of or list(range(K))}}
    cases = [
        case(1, 6, 3, 0.0, [0, 1, 2]),                         # ignores the stamps: rate 1/3, flip 0
        case(2, 8, 3, 50.0, [0, 1, 2]),                        # always follows: stamps must not pile up
        case(3, 10, 3, 1.5, [0, 1, 2]),                        # sometimes
        case(4, 9, 4, 2.0, [1, 0, 3, 2]),                      # a stamp raises another class
        case(5, 7, 2, 1.0, [0, 1], C=2, H=5, W=7, patch=1, value=3.0),
        case(6, 8, 3, 4.0, [2, 0, 1, 1], corner_of=[1, 2, 0], value=1.0),
        case(7, 4, 3, 1.0, [0, 1, 2], shape=[4, 36]),          # not (N, C, H, W) -> ValueError
    ]
    for _ in range(3):
        K = int(rng.integers(2, 5))
        H, W, patch = int(rng.integers(4, 9)), int(rng.integers(4, 9)), int(rng.integers(1, 3))
        cases.append(case(int(rng.integers(0, 2**30)), int(rng.integers(4, 13)), K, float(np.round(rng.uniform(0.5, 4), 2)),
                          [int(v) for v in rng.permutation(K)], C=int(rng.integers(1, 3)), H=H, W=W, patch=patch,
                          value=float(rng.choice([1.0, 2.0, -1.0])), corner_of=[int(v) for v in rng.permutation(4)[:K]]))
    return cases


def _stamp_build(case: dict) -> tuple[tuple, dict]:
    s = case["stamp"]
    return (_stamp_model(case["model"]), _images(case["x_seed"], case["x"]),
            _CornerStamp(s["patch"], s["value"], s["corner_of"])), {}


def _stamp_describe(case: dict) -> str:
    (model, x, stamp), _ = _stamp_build(case)
    m = case["model"]
    return (f"model = nn.Sequential(Flatten, Linear({m['C'] * m['H'] * m['W']}, {m['K']})) whose weights (seeded "
            f"{m['seed']}) see corner j's {m['patch']}x{m['patch']} patch only through class {m['wiring']}[j] "
            f"(strength {m['strength']}), images = {_show(x)}, {stamp!r}")


def _stamp_compare(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        return f"expected a dict with keys {sorted(expected)}, got a {type_name(got)}"
    if set(map(str, got)) != set(expected):
        return f"expected the keys {sorted(expected)}, got {sorted(map(str, got))}"
    reason = tensor_reason(expected["follow"], got["follow"], "follow", rtol=1e-9, atol=1e-12)
    if reason:
        return reason
    for key in ("rate", "flip"):
        reason = close_float(expected[key], got[key], rtol=1e-9, atol=1e-12, what=key)
        if reason:
            return reason
    return None


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, runner=None, forbidden=()):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="compression_explanation", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, runner=runner, forbidden=tuple(forbidden))


# pandas' Spearman and its tie-averaged ranks (scipy.stats.spearmanr and rankdata are off limits with scipy.stats):
# the Python methods and the compiled kernels they call.
_PANDAS_SPEARMAN = ("pandas.DataFrame.corr", "pandas.DataFrame.corrwith", "pandas.Series.corr", "pandas.core.nanops.nancorr",
                    "pandas._libs.algos.nancorr_spearman", "pandas.DataFrame.rank", "pandas.core.algorithms.rank",
                    "pandas._libs.algos.rank_1d", "pandas._libs.algos.rank_2d")
EXERCISES = [
    _exercise("attribution_agreement", _agree_cases, _agree_build, _agree_describe, _agree_compare,
              forbidden=["scipy.stats", "sklearn.metrics", *_PANDAS_SPEARMAN]),
    _exercise("band_position", _band_cases, _band_build, _band_describe, _band_compare,
              forbidden=["scipy.stats"]),
    _exercise("trainable_grad_cam", _cam_cases, _cam_build, _cam_describe, _cam_compare, runner=_cam_runner,
              forbidden=["captum"]),
    _exercise("stamp_test", _stamp_cases, _stamp_build, _stamp_describe, _stamp_compare),
]
