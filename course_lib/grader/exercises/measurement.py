"""How chapter 00's exercises are graded (inputs, comparisons); references live in course_lib.measurement.

The hidden inputs are chosen to separate a right answer from the wrong ones learners write:
shared (tied) weights and a module used twice (counted once), frozen layers (``trainable_only``),
buffers of other dtypes (BatchNorm's int64 counter, a non-persistent buffer), float16/float64
layers, grouped and depthwise convolutions, non-square kernels; for arithmetic intensity a Linear on
several leading sizes and without bias, a ReLU, convolutions with stride, padding, dilation and groups
(depthwise), float16/float64 layers (2 and 8 bytes per element) and the chapter's 1024x1024 Linear; for the
roofline a compute-bound, a memory-bound and an exactly-at-the-ridge kernel (the max of the two times,
not their sum); for McNemar's test examples both models get wrong with different labels (not
discordant), balanced counts (p capped at 1), no discordant example, and few discordant examples
(exact binomial, two-sided, not a normal approximation). mcnemar_exact's reference is
course_lib.stats.mcnemar_exact (the course's statistics module, taught in this chapter).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._compare import close_float, exact_int, show_tensor, type_name

CHAPTER = "00_measurement"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
           "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- models from specs
class _WithBuffer(nn.Module):
    """A module holding only a buffer (e.g. a running statistic, or a cached mask)."""

    def __init__(self, size: int, dtype: str, persistent: bool):
        super().__init__()
        self.register_buffer("stat", torch.zeros(size, dtype=_DTYPES.get(dtype, torch.int64)),
                             persistent=persistent)

    def extra_repr(self) -> str:
        return f"buffer {tuple(self.stat.shape)} {self.stat.dtype}, persistent={'stat' in self.state_dict()}"


def _layer(kind: str, *a) -> nn.Module:
    if kind == "linear":
        return nn.Linear(a[0], a[1], bias=bool(a[2]))
    if kind == "conv":
        return nn.Conv2d(a[0], a[1], a[2], groups=a[3], bias=bool(a[4]))
    if kind == "bn":
        return nn.BatchNorm2d(a[0])
    if kind == "embedding":
        return nn.Embedding(a[0], a[1])
    if kind == "layernorm":
        return nn.LayerNorm(a[0])
    if kind == "relu":
        return nn.ReLU()
    if kind == "buffer":
        return _WithBuffer(a[0], a[1], bool(a[2]))
    raise ValueError(f"unknown layer kind {kind!r}")


def build_model(spec: dict) -> nn.Module:
    """Build the ``nn.Sequential`` a model spec describes (deterministic for the spec)."""
    torch.manual_seed(spec.get("seed", 0))
    layers = [_layer(*entry) for entry in spec["layers"]]
    for i, dtype in spec.get("dtype", {}).items():
        layers[int(i)].to(_DTYPES[dtype])
    for src, dst in spec.get("tie", []):          # dst.weight is the same Parameter as src.weight
        layers[dst].weight = layers[src].weight
    for src, dst in spec.get("repeat", []):       # the same module object at two positions
        layers[dst] = layers[src]
    for i in spec.get("freeze", []):
        for p in layers[i].parameters():
            p.requires_grad_(False)
    return nn.Sequential(*layers)


def describe_model(spec: dict) -> str:
    model = build_model(spec)
    notes = [f"layer {d}.weight is layer {s}.weight (tied)" for s, d in spec.get("tie", [])]
    notes += [f"layer {d} is the same module object as layer {s}" for s, d in spec.get("repeat", [])]
    notes += [f"layer {i} frozen (requires_grad=False)" for i in spec.get("freeze", [])]
    text = repr(model)
    return text + ("\n  # " + "; ".join(notes) if notes else "")


def _random_model_spec(rng: np.random.Generator) -> dict:
    layers: list[list] = []
    for _ in range(int(rng.integers(1, 5))):
        kind = str(rng.choice(["linear", "conv", "bn", "embedding", "layernorm", "relu", "buffer"]))
        if kind == "linear":
            layers.append(["linear", int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(0, 2))])
        elif kind == "conv":
            g = int(rng.choice([1, 2]))
            layers.append(["conv", g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4)),
                           int(rng.choice([1, 3])), g, int(rng.integers(0, 2))])
        elif kind in ("bn", "layernorm"):
            layers.append([kind, int(rng.integers(1, 7))])
        elif kind == "embedding":
            layers.append(["embedding", int(rng.integers(2, 10)), int(rng.integers(1, 5))])
        elif kind == "buffer":
            layers.append(["buffer", int(rng.integers(1, 6)), str(rng.choice(["float32", "int64", "float16"])),
                           int(rng.integers(0, 2))])
        else:
            layers.append(["relu"])
    spec: dict = {"layers": layers, "seed": int(rng.integers(0, 2**31))}
    with_params = [i for i, layer in enumerate(layers) if layer[0] not in ("relu", "buffer")]
    if with_params and rng.random() < 0.5:
        spec["freeze"] = sorted({int(i) for i in rng.choice(with_params, size=1)})
    if with_params and rng.random() < 0.5:
        spec["dtype"] = {str(int(rng.choice(with_params))): str(rng.choice(["float16", "float64", "bfloat16"]))}
    if rng.random() < 0.4:                         # append a tied copy of a fresh Linear
        n_in, n_out = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        layers += [["linear", n_in, n_out, 1], ["linear", n_in, n_out, 0]]
        spec["tie"] = [[len(layers) - 2, len(layers) - 1]]
    return spec


_FIXED_MODELS: list[dict] = [
    {"layers": [["linear", 3, 2, 1]]},
    {"layers": []},
    {"layers": [["linear", 4, 5, 1], ["relu"], ["linear", 4, 5, 0]], "tie": [[0, 2]]},
    {"layers": [["linear", 3, 3, 1], ["relu"], ["linear", 3, 3, 1]], "repeat": [[0, 2]]},
    {"layers": [["conv", 2, 4, 3, 1, 1], ["bn", 4], ["relu"], ["linear", 6, 2, 1]], "freeze": [0]},
    {"layers": [["linear", 6, 4, 1], ["layernorm", 4], ["linear", 4, 3, 1]], "freeze": [0, 1]},
    {"layers": [["linear", 5, 4, 1], ["linear", 4, 2, 1]], "dtype": {"0": "float16", "1": "float64"}},
    {"layers": [["embedding", 10, 3], ["buffer", 7, "float32", 0], ["buffer", 3, "int64", 1]]},
]


# --------------------------------------------------------------------------- count_parameters
def _count_cases(rng: np.random.Generator) -> list[dict]:
    cases = [{"model": m, "trainable_only": t} for m in _FIXED_MODELS for t in (False, True)]
    cases += [{"model": _random_model_spec(rng), "trainable_only": bool(rng.integers(0, 2))} for _ in range(12)]
    return cases


def _count_build(case: dict) -> tuple[tuple, dict]:
    return (build_model(case["model"]),), {"trainable_only": case["trainable_only"]}


def _count_describe(case: dict) -> str:
    return f"model = {describe_model(case['model'])}\ntrainable_only = {case['trainable_only']}"


# --------------------------------------------------------------------------- conv2d_macs
_MACS_ARGS = ("in_channels", "out_channels", "kernel_size", "out_h", "out_w", "groups")


def _macs_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        [3, 16, 3, 32, 32, 1],
        [4, 8, [3, 1], 5, 7, 1],         # non-square kernel given as a pair
        [8, 8, 3, 4, 4, 8],              # depthwise: groups == channels
        [6, 12, [1, 5], 3, 2, 3],
        [4, 6, 3, 5, 5, 4],              # groups does not divide out_channels -> ValueError
        [4, 8, 3, 0, 5, 1],              # empty output -> ValueError
    ]
    cases = [dict(zip(_MACS_ARGS, args)) for args in fixed]
    for _ in range(10):
        g = int(rng.choice([1, 1, 2, 4]))
        k = int(rng.integers(1, 8)) if rng.random() < 0.5 else [int(rng.integers(1, 8)), int(rng.integers(1, 8))]
        cases.append(dict(zip(_MACS_ARGS, [g * int(rng.integers(1, 9)), g * int(rng.integers(1, 9)), k,
                                           int(rng.integers(1, 40)), int(rng.integers(1, 40)), g])))
    return cases


def _macs_build(case: dict) -> tuple[tuple, dict]:
    k = case["kernel_size"]
    args = [case[a] for a in _MACS_ARGS[:5]]
    args[2] = tuple(k) if isinstance(k, list) else k
    return tuple(args), {"groups": case["groups"]}


def _macs_describe(case: dict) -> str:
    args, kwargs = _macs_build(case)
    return "conv2d_macs(" + ", ".join(f"{a}={v!r}" for a, v in zip(_MACS_ARGS, [*args, kwargs["groups"]])) + ")"


# --------------------------------------------------------------------------- roofline_time
_ROOF_ARGS = ("flops", "bytes_moved", "peak_flops", "bandwidth")


def _roof_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        (2e9, 1e6, 1e11, 1e10),          # compute-bound: 20 ms of arithmetic, 0.1 ms of traffic (max, not sum)
        (1e6, 4e8, 1e11, 2e10),          # memory-bound: 20 ms of traffic (the bytes term, over the bandwidth)
        (5e9, 1e9, 1e11, 2e10),          # exactly at the ridge: both 50 ms (the max, not their sum)
        (0, 1e6, 1e11, 1e10),            # no arithmetic: only traffic
        (1e9, 0, 1e11, 1e10),            # no traffic: only arithmetic
        (3, 5, 2, 4),                    # Python ints: 1.5 s (true division)
        (7.5e8, 3e8, 5e10, 1.5e10),      # memory-bound although it does more FLOPs than bytes
        (1e12, 1e12, 1e12, 1e12),
        (-1.0, 1e6, 1e11, 1e10),         # negative count -> ValueError
        (1e9, 1e6, 0.0, 1e10),           # zero peak -> ValueError
        (1e9, 1e6, 1e11, float("nan")),  # nan -> ValueError
        (True, 1e6, 1e11, 1e10),         # bool -> TypeError
        ("1e9", 1e6, 1e11, 1e10),        # text -> TypeError
    ]
    cases = [dict(zip(_ROOF_ARGS, c)) for c in fixed]
    for _ in range(10):
        peak, bw = 10 ** rng.uniform(9, 12), 10 ** rng.uniform(9, 11)
        intensity = 10 ** rng.uniform(-2, 3)                 # FLOP/byte, on both sides of the ridge
        bytes_moved = float(np.round(10 ** rng.uniform(3, 9)))
        cases.append(dict(zip(_ROOF_ARGS, (float(np.round(bytes_moved * intensity)), bytes_moved,
                                           float(peak), float(bw)))))
    return cases


def _roof_build(case: dict) -> tuple[tuple, dict]:
    return tuple(case[a] for a in _ROOF_ARGS), {}


def _roof_describe(case: dict) -> str:
    return "roofline_time(" + ", ".join(f"{a}={case[a]!r}" for a in _ROOF_ARGS) + ")"


def _roof_compare(expected: float, got) -> str | None:
    return close_float(expected, got, rtol=1e-9, atol=0.0, what="time in seconds")


# --------------------------------------------------------------------------- mcnemar_exact (reference in stats)
def _mcn_fixed(n10: int, n01: int, both_right: int, both_wrong_same: int, both_wrong_apart: int) -> dict:
    """A case with exactly these cells: only-A-right, only-B-right, both right, both wrong with the same
    label, both wrong with different labels (not discordant: the trap of counting disagreements)."""
    y, a, b = [], [], []
    for count, (pa, pb) in ((n10, (0, 1)), (n01, (1, 0)), (both_right, (0, 0)), (both_wrong_same, (2, 2)),
                            (both_wrong_apart, (1, 2))):
        y += [0] * count
        a += [pa] * count
        b += [pb] * count
    return {"pred_a": a, "pred_b": b, "y": y}


def _mcn_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        _mcn_fixed(3, 0, 2, 0, 5),      # both wrong apart x5 is not discordant: m = 3, p = 0.25
        _mcn_fixed(9, 1, 20, 3, 0),     # two-sided: 2 * 11/1024 (not the one-sided 11/1024; P(X <= 1), not P(X < 1))
        _mcn_fixed(4, 4, 10, 0, 0),     # balanced: 2 * P(X <= 4 | m = 8) > 1, capped at 1.0
        _mcn_fixed(0, 0, 6, 2, 2),      # no discordant example: p = 1.0
        _mcn_fixed(1, 6, 30, 0, 4),     # B ahead: the same test from the other side (min of the two counts)
        _mcn_fixed(2, 12, 300, 3, 5),   # a normal approximation is far off with 14 discordant examples
        _mcn_fixed(0, 25, 100, 0, 0),   # p = 2^-24: tiny but exact
        {"pred_a": [0, 1, 2], "pred_b": [0, 1], "y": [0, 1, 2]},              # lengths differ -> ValueError
        {"pred_a": [[0, 1]], "pred_b": [[0, 1]], "y": [[0, 1]]},               # not 1-D -> ValueError
    ]
    for _ in range(6):                  # test sets of the course's sizes, discordant counts from 0 to ~60
        n10, n01 = (int(v) for v in rng.integers(0, 40, 2))
        fixed.append({"seed": int(rng.integers(2**31)), "n": int(rng.choice([360, 720])), "n10": n10, "n01": n01,
                      "both_wrong": int(rng.integers(0, 20))})
    return fixed


def _mcn_build(case: dict) -> tuple[tuple, dict]:
    if "seed" not in case:
        return tuple(torch.tensor(case[k], dtype=torch.int64) for k in ("pred_a", "pred_b", "y")), {}
    gen = torch.Generator().manual_seed(case["seed"])
    n, n10, n01, both_wrong = case["n"], case["n10"], case["n01"], case["both_wrong"]
    y = torch.randint(0, 10, (n,), generator=gen)                                      # (n,) ten classes
    wrong1 = (y + torch.randint(1, 10, (n,), generator=gen)) % 10                      # a wrong label each
    wrong2 = (wrong1 + torch.randint(1, 9, (n,), generator=gen)) % 10
    wrong2 = torch.where(wrong2 == y, (wrong2 + 1) % 10, wrong2)                       # another wrong label
    role = torch.zeros(n, dtype=torch.int64)                                           # 0: both right
    role[torch.randperm(n, generator=gen)[:n10 + n01 + both_wrong]] = torch.tensor(
        [1] * n10 + [2] * n01 + [3] * both_wrong, dtype=torch.int64)                  # 1: only A, 2: only B, 3: both wrong
    pred_a = torch.where((role == 2) | (role == 3), wrong1, y)
    pred_b = torch.where(role == 1, wrong1, torch.where(role == 3, wrong2, y))
    return (pred_a, pred_b, y), {}


def _mcn_describe(case: dict) -> str:
    (pred_a, pred_b, y), _ = _mcn_build(case)
    return f"pred_a = {show_tensor(pred_a)}, pred_b = {show_tensor(pred_b)}, y = {show_tensor(y)}"


def _mcn_runner(fn, args: tuple, kwargs: dict):
    """Send back a float: a Python float, a numpy float, a Fraction or a 0-d tensor all count as one."""
    import numbers

    value = fn(*args, **kwargs)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "f":
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_, int, np.integer)):
        return float(value)
    return value


def _mcn_compare(expected: float, got) -> str | None:
    return close_float(expected, got, rtol=1e-6, atol=1e-12, what="p-value")


# --------------------------------------------------------------------------- arithmetic_intensity
def _ai_layer(spec: dict) -> nn.Module:
    """The layer a case describes (weights from a fixed seed; their values do not enter the answer)."""
    torch.manual_seed(0)
    kind = spec["kind"]
    if kind == "linear":
        layer = nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
    elif kind == "conv":
        layer = nn.Conv2d(spec["in"], spec["out"], tuple(spec["k"]), stride=tuple(spec["stride"]),
                          padding=tuple(spec["padding"]), dilation=tuple(spec["dilation"]), groups=spec["groups"],
                          bias=spec["bias"])
    elif kind == "relu":
        layer = nn.ReLU()
    elif kind == "batchnorm":
        layer = nn.BatchNorm2d(spec["in"])
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    return layer.to(_DTYPES[spec.get("dtype", "float32")])


def _linear(n_in: int, n_out: int, shape: list, bias: bool = True, dtype: str = "float32") -> dict:
    return {"layer": {"kind": "linear", "in": n_in, "out": n_out, "bias": bias, "dtype": dtype}, "input_shape": shape}


def _conv(n_in: int, n_out: int, k, shape: list, stride=1, padding=0, dilation=1, groups: int = 1,
          bias: bool = True, dtype: str = "float32") -> dict:
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return {"layer": {"kind": "conv", "in": n_in, "out": n_out, "k": pair(k), "stride": pair(stride),
                      "padding": pair(padding), "dilation": pair(dilation), "groups": groups, "bias": bias,
                      "dtype": dtype}, "input_shape": shape}


_AI_FIXED: list[dict] = [
    _linear(3, 2, [4, 3]),                                      # 48 FLOPs; 4 (12 + 6 + 2 + 8) bytes
    _linear(5, 4, [2, 3, 5], bias=False),                       # 6 rows (leading sizes multiply); no bias to move
    {"layer": {"kind": "relu"}, "input_shape": [6, 10]},        # 1 FLOP per element, read + write
    _conv(3, 8, 3, [2, 3, 10, 10]),                             # dense, no padding: 8x8 output, batch of 2
    _conv(4, 6, 3, [1, 4, 9, 9], stride=2, padding=1),          # stride 2, padding 1: 5x5 output (not 7x7)
    _conv(8, 8, 3, [2, 8, 7, 7], padding=1, groups=8),          # depthwise: 9 MACs per output value, not 72
    _conv(6, 4, (1, 5), [3, 6, 5, 8], stride=(2, 1), padding=(0, 2), groups=2, bias=False),
    _conv(2, 4, 3, [1, 2, 8, 8], padding=2, dilation=2),        # dilation 2: a 5x5 footprint, 8x8 output
    _linear(6, 3, [5, 6], dtype="float64"),                     # 8 bytes per element
    _conv(4, 4, 3, [1, 4, 6, 6], padding=1, dtype="float16"),   # 2 bytes per element
    _linear(1024, 1024, [256, 1024]),                           # the chapter's Linear: about 85 FLOP/byte
    _linear(4, 3, [2, 5]),                                      # last size is not in_features -> ValueError
    _conv(3, 4, 5, [1, 3, 3, 3]),                               # kernel larger than the input -> ValueError
    _conv(3, 4, 3, [1, 4, 8, 8]),                               # 4 channels into a 3-channel conv -> ValueError
    {"layer": {"kind": "batchnorm", "in": 4}, "input_shape": [1, 4, 5, 5]},   # not a counted layer -> TypeError
]


def _ai_random_case(rng: np.random.Generator) -> dict:
    dtype = str(rng.choice(["float32"] * 6 + ["float64", "float16"]))
    kind = str(rng.choice(["conv"] * 6 + ["linear"] * 3 + ["relu"]))
    if kind == "relu":
        return {"layer": {"kind": "relu"}, "input_shape": [int(v) for v in rng.integers(1, 33, rng.integers(1, 5))]}
    if kind == "linear":
        lead = [int(v) for v in rng.integers(1, 17, rng.integers(0, 3))]
        n_in, n_out = (int(v) for v in rng.integers(1, 257, 2))
        return _linear(n_in, n_out, lead + [n_in], bias=bool(rng.integers(0, 2)), dtype=dtype)
    style = str(rng.choice(["dense", "dense", "grouped", "depthwise"]))
    if style == "depthwise":
        g = int(rng.integers(2, 17))
        n_in = n_out = g
    else:
        g = 1 if style == "dense" else int(rng.choice([2, 4]))
        n_in, n_out = g * int(rng.integers(1, 9)), g * int(rng.integers(1, 9))
    k = [int(v) for v in rng.integers(1, 6, 2)] if rng.random() < 0.4 else [int(rng.integers(1, 6))] * 2
    stride = [int(v) for v in rng.integers(1, 4, 2)] if rng.random() < 0.3 else [int(rng.integers(1, 4))] * 2
    padding = [int(rng.integers(0, 3))] * 2
    dilation = [int(rng.choice([1, 1, 1, 2]))] * 2
    side = [max(int(rng.integers(4, 33)), d * (kk - 1) + 1) for d, kk in zip(dilation, k)]
    return _conv(n_in, n_out, k, [int(rng.integers(1, 9)), n_in, *side], stride=stride, padding=padding,
                 dilation=dilation, groups=g, bias=bool(rng.integers(0, 2)), dtype=dtype)


def _ai_cases(rng: np.random.Generator) -> list[dict]:
    return [dict(c) for c in _AI_FIXED] + [_ai_random_case(rng) for _ in range(10)]


def _ai_build(case: dict) -> tuple[tuple, dict]:
    return (_ai_layer(case["layer"]), tuple(case["input_shape"])), {}


def _ai_describe(case: dict) -> str:
    (layer, shape), _ = _ai_build(case)
    dtype = case["layer"].get("dtype", "float32")
    return f"layer = nn.{layer!r}" + (f".to(torch.{dtype})" if dtype != "float32" else "") + \
        f"\ninput_shape = {shape}"


def _ai_compare(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        return f"expected a dict with the keys 'flops', 'bytes', 'intensity', got a {type_name(got)}"
    if set(got) != set(expected):
        return f"expected the keys {sorted(expected)}, got {sorted(map(str, got))}"
    for key in ("flops", "bytes"):
        reason = exact_int(expected[key], got[key])
        if reason:
            return f"{key}: {reason}"
    return close_float(expected["intensity"], got["intensity"], rtol=1e-9, atol=0.0, what="intensity")


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, forbidden=(), topic="measurement", runner=None):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic=topic, make_cases=make_cases, build=build,
                    describe=describe, compare=compare, forbidden=tuple(forbidden), runner=runner)


EXERCISES = [
    _exercise("count_parameters", _count_cases, _count_build, _count_describe, exact_int),
    _exercise("conv2d_macs", _macs_cases, _macs_build, _macs_describe, exact_int,
              forbidden=["torch.utils.flop_counter"]),
    _exercise("arithmetic_intensity", _ai_cases, _ai_build, _ai_describe, _ai_compare,
              forbidden=["torch.utils.flop_counter"]),
    _exercise("roofline_time", _roof_cases, _roof_build, _roof_describe, _roof_compare),
    _exercise("mcnemar_exact", _mcn_cases, _mcn_build, _mcn_describe, _mcn_compare, topic="stats",
              runner=_mcn_runner, forbidden=["scipy.stats"]),
]
