"""How chapter 01's exercises are graded (inputs, comparisons); references live in course_lib.pruning.

The hidden inputs separate a right answer from the usual wrong ones: ``amount * N`` landing on .5
(Python's ``round`` sends 2.5 to 2: not floor, not half-up), int 1 (one entry) against float 1.0
(all of them), negative weights (``|w|``, not ``w``), layers of very different scales (global, not
layer-wise), rows whose L1 and L2 rankings differ (``n`` is used), ``dim`` other than 0, groups of
N:M that are not rows, steps outside ``[0, T]`` (clamped), strided/padded/dilated and bias-free
convolutions, and invalid arguments.

Ties. Masks are graded by the pruning *rule*, so every valid choice among tied scores passes:
the grader (``derive``) hands ``compare`` the scores the rule ranks (``|w|``, slice norms), and a mask that
differs from the reference passes when it prunes as many units and no pruned unit scores more than
a kept one (within the group, for N:M). ``shrink_conv_pair`` is graded in the grader too, on the returned layers rebuilt there: the
layers' settings and ``next_conv(relu(conv(x)))`` on a fixed input, and the inputs left untouched.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import inputs_changed, keep_inputs
from ._compare import close_float, conv_bound, type_name

CHAPTER = "01_pruning"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_CHANGED = "the function changed its input in place; return a new {what} and leave the input as it was"


# --------------------------------------------------------------------------- tensors from specs
def _tensor(spec: dict) -> torch.Tensor | list:
    """``{"values"}`` literal, or ``{"seed", "shape", "kind", "scale"}``: ``normal`` or ``ties`` (multiples of 0.5)."""
    dtype = _DTYPES[spec.get("dtype", "float32")]
    if "values" in spec:
        w = torch.tensor(spec["values"], dtype=torch.float64).to(dtype)
    else:
        gen = torch.Generator().manual_seed(spec["seed"])
        if spec.get("kind", "normal") == "ties":
            w = (torch.randint(-3, 4, spec["shape"], generator=gen).to(torch.float64) / 2).to(dtype)
        else:
            w = (torch.randn(*spec["shape"], generator=gen, dtype=torch.float64) * spec.get("scale", 1.0)).to(dtype)
    if spec.get("as_list"):
        return w.tolist()
    return nn.Parameter(w) if spec.get("parameter") else w


def _show(t) -> str:
    if not isinstance(t, torch.Tensor):
        return repr(t)
    kind = "nn.Parameter" if isinstance(t, nn.Parameter) else "torch.tensor"
    dtype = "" if t.dtype == torch.float32 else f", dtype={t.dtype}"
    if t.numel() > 40:
        return (f"a {t.dtype} {kind} of shape {tuple(t.shape)} (values: {t.detach().flatten()[:8].tolist()} ...; "
                f"{t.numel() - t.detach().abs().unique().numel()} repeated |w|)")
    return f"{kind}({t.detach().tolist()}{dtype})"


def _random_weight(rng: np.random.Generator, max_numel: int = 120, min_dim: int = 1) -> dict:
    while True:
        shape = [int(d) for d in rng.integers(1, 7, size=int(rng.integers(min_dim, 5)))]
        if int(np.prod(shape)) <= max_numel:
            break
    spec = {"seed": int(rng.integers(0, 2**31)), "shape": shape, "kind": str(rng.choice(["normal", "ties"]))}
    if rng.random() < 0.2:
        spec["parameter"] = True
    return spec


def _random_amount(rng: np.random.Generator, size: int):
    if rng.random() < 0.3:
        return int(rng.integers(0, size + 1))
    return float(rng.choice([round(float(rng.uniform(0, 1)), 2), 0.25, 0.5, 0.75]))


# --------------------------------------------------------------------------- mask checks
def _mask_reason(expected: torch.Tensor, got, what: str = "mask") -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a torch.Tensor, got a {type_name(got)}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{what}: expected shape {tuple(expected.shape)} (the weight's), got {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"{what}: expected dtype {expected.dtype} (the weight's), got {got.dtype}"
    if not ((got == 0) | (got == 1)).all():
        return f"{what}: must hold only 0.0 and 1.0, got the value {got[(got != 0) & (got != 1)][0].item()!r}"
    return None


def _ranking_reason(expected: torch.Tensor, got: torch.Tensor, scores: torch.Tensor, unit: str,
                    score: str = "|w|") -> str | None:
    """Same number of pruned units as expected, and no pruned unit scores more than a kept one."""
    n_exp, n_got = int((expected == 0).sum()), int((got == 0).sum())
    if n_exp != n_got:
        return f"expected {n_exp} pruned {'entries' if unit == 'entry' else unit + 's'} (zeros), got {n_got}"
    pruned, kept = got == 0, got == 1
    if pruned.any() and kept.any() and scores[pruned].max() > scores[kept].min():
        i = int(torch.nonzero(pruned & (scores == scores[pruned].max()))[0])
        j = int(torch.nonzero(kept & (scores == scores[kept].min()))[0])
        return (f"{unit} {i} is pruned although its {score} = {scores[i].item():.6g} is larger than the {score} = "
                f"{scores[j].item():.6g} of {unit} {j}, which is kept")
    return None


def _scored(build, scores_of, keep: tuple[str, ...] = ()):
    """A ``derive`` (runs in the grader): the returned mask, the scores the rule ranks (computed here from
    the rebuilt inputs) and the keyword arguments named in ``keep``; or why the answer is wrong."""
    def derive(case: dict, answer) -> dict | str:
        args, kwargs = build(case)
        if inputs_changed(args, answer["inputs_after"]):
            return _CHANGED.format(what="mask")
        try:
            scores = scores_of(*args, **kwargs)
        except Exception:  # noqa: BLE001 - invalid arguments: the reference raised, judge reports that
            scores = None
        return {"mask": answer["result"], "scores": scores, **{key: kwargs[key] for key in keep}}
    return derive


def _settled(expected: dict, got) -> tuple[bool, str | None]:
    """(True, verdict) when the verdict needs no ranking check: a message from ``derive``, a malformed mask,
    or the reference's own mask; else (False, None)."""
    if isinstance(got, str):
        return True, got
    reason = _mask_reason(expected["mask"], got["mask"])
    return (True, reason) if reason or torch.equal(got["mask"], expected["mask"]) else (False, None)


def _mask_compare(expected: dict, got) -> str | None:
    done, reason = _settled(expected, got)
    if done:
        return reason
    exp, mask = expected["mask"], got["mask"]
    return _ranking_reason(exp.flatten(), mask.flatten(), expected["scores"].flatten().double(), "entry")


# --------------------------------------------------------------------------- magnitude_mask
_FIVE = [0.4, -0.1, 0.3, -0.5, 0.2]


def _magnitude_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ({"values": [[0.3, -0.9, 0.1], [-0.2, 0.8, -0.05]]}, 0.5),     # k = 3: |w|, the smallest
        ({"values": _FIVE}, 0.5),                                      # 2.5 -> 2 (Python's round)
        ({"values": _FIVE}, 0.3),                                      # 1.5 -> 2 (not floor)
        ({"values": _FIVE}, 0.7),                                      # 3.5 -> 4
        ({"values": _FIVE}, 1),                                        # int 1: one entry
        ({"values": _FIVE}, 1.0),                                      # float 1.0: all
        ({"values": _FIVE}, 0),
        ({"values": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0]}, 2),      # ties: any two of the 1.0s
        ({"values": [-0.5, 0.5, -0.5, 1.0, 0.5, -1.0]}, 0.5),          # ties across signs
        ({"seed": 11, "shape": [4, 2, 3, 3]}, 0.35),                   # conv weight
        ({"seed": 12, "shape": [5, 4], "dtype": "float64"}, 0.25),     # mask in the weight's dtype
        ({"seed": 13, "shape": [3, 7], "parameter": True}, 0.4),       # an nn.Parameter
        ({"values": _FIVE}, 6),                                        # more than N -> ValueError
        ({"values": _FIVE}, -1),
        ({"values": _FIVE}, 1.5),
        ({"values": _FIVE}, float("nan")),
        ({"values": _FIVE}, True),                                     # bool -> TypeError
        ({"values": _FIVE}, "0.5"),
        ({"values": _FIVE, "as_list": True}, 0.5),                     # not a tensor -> TypeError
    ]
    cases = [{"weight": w, "amount": a} for w, a in fixed]
    for _ in range(10):
        w = _random_weight(rng)
        cases.append({"weight": w, "amount": _random_amount(rng, int(np.prod(w["shape"])))})
    return cases


def _magnitude_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["weight"]), case["amount"]), {}


def _magnitude_describe(case: dict) -> str:
    return f"weight = {_show(_tensor(case['weight']))}\namount = {case['amount']!r}"


# --------------------------------------------------------------------------- global_magnitude_masks
def _global_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        ([{"values": [3.0, 0.1]}, {"values": [0.2, 5.0]}], 2),                       # one threshold, not 2 each
        ([{"seed": 21, "shape": [4, 3]}, {"seed": 22, "shape": [6], "scale": 0.01}], 0.4),  # small layer goes first
        ([{"values": [0.3, -0.1]}, {"values": [[0.5, -0.2, 0.4]]}], 0.5),           # N = 5: 2.5 -> 2
        ([{"values": [1.0, 2.0]}, {"values": [-1.0, 1.0, 3.0]}], 2),                # ties across tensors
        ([{"seed": 23, "shape": [3, 2, 2, 2]}, {"seed": 24, "shape": [5, 3], "scale": 0.2},
          {"seed": 25, "shape": [4], "scale": 5.0}], 0.6),
        ([{"values": [0.3, -0.1]}, {"values": [0.5]}], 1.0),
        ([{"values": [0.3, -0.1]}, {"values": [0.5]}], 0),
        ([{"seed": 26, "shape": [2, 3], "parameter": True}, {"seed": 27, "shape": [3], "dtype": "float64"}], 0.5),
        ([], 0.5),                                                                  # empty -> ValueError
        ([{"values": [0.3, -0.1]}, {"values": [0.5]}], 4),                          # 4 > N = 3 -> ValueError
        ([{"values": [0.3, -0.1]}, {"values": [0.5]}], -0.1),
    ]
    cases = [{"weights": ws, "amount": a} for ws, a in fixed]
    cases.append({"weights": {"values": [0.3, -0.1]}, "amount": 0.5, "single": True})   # a tensor, not a list
    cases.append({"weights": [{"values": [0.3, -0.1]}, {"values": [0.5]}], "amount": 0.5, "as_tuple": True})
    for _ in range(8):
        ws = [_random_weight(rng, max_numel=60) for _ in range(int(rng.integers(2, 5)))]
        for w in ws:
            w["scale"] = float(10 ** rng.uniform(-2, 1))
        cases.append({"weights": ws, "amount": _random_amount(rng, sum(int(np.prod(w["shape"])) for w in ws))})
    return cases


def _global_build(case: dict) -> tuple[tuple, dict]:
    if case.get("single"):
        return (_tensor(case["weights"]), case["amount"]), {}
    weights = [_tensor(w) for w in case["weights"]]
    return ((tuple(weights) if case.get("as_tuple") else weights), case["amount"]), {}


def _global_describe(case: dict) -> str:
    (weights, amount), _ = _global_build(case)
    if isinstance(weights, torch.Tensor):
        return f"weights = {_show(weights)} (a tensor, not a list)\namount = {amount!r}"
    shown = ",\n           ".join(_show(w) for w in weights)
    brackets = "()" if isinstance(weights, tuple) else "[]"
    return f"weights = {brackets[0]}{shown}{brackets[1]}\namount = {amount!r}"


def _global_derive(case: dict, answer) -> dict | str:
    args, _ = _global_build(case)
    if inputs_changed(args, answer["inputs_after"]):
        return _CHANGED.format(what="list of masks")
    weights = args[0]
    if not isinstance(weights, (list, tuple)):
        return {"masks": answer["result"], "scores": []}
    return {"masks": answer["result"], "scores": [w.detach().abs() for w in weights]}


def _global_compare(expected: dict, got) -> str | None:
    if isinstance(got, str):
        return got
    masks, exp = got["masks"], expected["masks"]
    if not isinstance(masks, (list, tuple)) or len(masks) != len(exp):
        return f"expected a list of {len(exp)} masks (one per tensor), got a {type_name(masks)}" + \
            (f" of length {len(masks)}" if isinstance(masks, (list, tuple)) else "")
    for i, (e, g) in enumerate(zip(exp, masks)):
        reason = _mask_reason(e, g, what=f"mask {i}")
        if reason:
            return reason
    if all(torch.equal(e, g) for e, g in zip(exp, masks)):
        return None
    flat = lambda ts: torch.cat([t.flatten().double() for t in ts])  # noqa: E731
    reason = _ranking_reason(flat(exp), flat(masks), flat(expected["scores"]), "entry")
    if reason:
        sizes = [int(t.numel()) for t in exp]
        return reason + f" (entries are numbered across the concatenated tensors of sizes {sizes})"
    return None


# --------------------------------------------------------------------------- structured_mask
def _slice_norms(weight, amount, n=1, dim=0):
    others = [d for d in range(weight.dim()) if d != dim % weight.dim()]
    return torch.linalg.vector_norm(weight.double(), ord=float(n), dim=others)


def _structured_cases(rng: np.random.Generator) -> list[dict]:
    rows = [[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 0.0, 0.0]]   # L1 ranks 3 < 4 = 4; L2: 2 < 2.8 < 3
    fixed = [
        ({"values": [[1.0, 1.0], [0.1, 3.0], [0.2, 0.2]]}, 1, 1, 0),
        ({"values": [[-3.0, -3.0], [1.0, 1.0], [0.5, -0.5]]}, 1, 1, 0),        # |w|: row 2 goes, not row 0
        ({"values": rows}, 1, 1, 0),
        ({"values": rows}, 1, 2, 0),                                           # n = 2 prunes another row
        ({"values": rows}, 1, math.inf, 0),
        ({"values": [[0.1, 2.0, 0.3], [-0.2, 1.0, 0.1], [0.3, -3.0, 0.2]]}, 1, 1, 1),   # columns
        ({"seed": 31, "shape": [2, 3, 4]}, 0.5, 2, -1),                        # last dim: 2 of 4
        ({"seed": 32, "shape": [6, 3, 3, 3]}, 0.5, 1, 0),                      # filters
        ({"seed": 33, "shape": [4, 5, 3, 3]}, 2, 2, 1),                        # input channels
        ({"seed": 34, "shape": [5, 3]}, 0.5, 1, 0),                            # 2.5 -> 2
        ({"seed": 35, "shape": [5, 3]}, 0.3, 1, 0),                            # 1.5 -> 2
        ({"values": [[1.0, -1.0], [-1.0, 1.0], [2.0, 0.0], [0.5, 0.5]]}, 2, 1, 0),   # ties among rows 0-2
        ({"seed": 36, "shape": [3, 4]}, 0, 1, 0),
        ({"seed": 36, "shape": [3, 4]}, 1.0, 1, 0),
        ({"seed": 37, "shape": [4, 2], "dtype": "float64", "parameter": True}, 0.5, 1, 0),
        ({"values": [1.0, 2.0, 3.0]}, 1, 1, 0),                                # 1-D -> ValueError
        ({"seed": 38, "shape": [3, 4]}, 1, 1, 2),                              # dim out of range
        ({"seed": 38, "shape": [3, 4]}, 1, 0, 0),                              # n = 0
        ({"seed": 38, "shape": [3, 4]}, 4, 1, 0),                              # 4 > 3 slices
        ({"seed": 38, "shape": [3, 4]}, 1, True, 0),                           # bool n -> TypeError
    ]
    cases = [{"weight": w, "amount": a, "n": n, "dim": d} for w, a, n, d in fixed]
    for _ in range(8):
        w = _random_weight(rng, min_dim=2)
        dim = int(rng.integers(-len(w["shape"]), len(w["shape"])))
        cases.append({"weight": w, "amount": _random_amount(rng, w["shape"][dim]),
                      "n": [1, 2, math.inf][int(rng.integers(0, 3))], "dim": dim})
    return cases


def _structured_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["weight"]), case["amount"]), {"n": case["n"], "dim": case["dim"]}


def _structured_describe(case: dict) -> str:
    return (f"weight = {_show(_tensor(case['weight']))}\namount = {case['amount']!r}, n = {case['n']!r}, "
            f"dim = {case['dim']!r}")


def _structured_compare(expected: dict, got) -> str | None:
    done, reason = _settled(expected, got)
    if done:
        return reason
    exp, mask = expected["mask"], got["mask"]
    slices = mask.movedim(expected["dim"], 0).reshape(mask.shape[expected["dim"]], -1)   # (S, rest)
    if not (slices == slices[:, :1]).all():
        return f"the mask must zero whole slices along dim={expected['dim']}, but a slice mixes 0 and 1"
    exp_slices = exp.movedim(expected["dim"], 0).reshape(exp.shape[expected["dim"]], -1)
    return _ranking_reason(exp_slices[:, 0], slices[:, 0], expected["scores"], "slice", "L_n norm")


# --------------------------------------------------------------------------- n_m_mask
def _n_m_cases(rng: np.random.Generator) -> list[dict]:
    row = [0.1, -3.0, 2.0, 0.5, -0.2, 0.3, 0.05, -1.0]
    fixed = [
        ({"values": [[0.1, -3.0, 2.0, 0.5]]}, 2, 4),
        ({"values": [row]}, 2, 4),                                   # two groups, not the row's top 4
        ({"values": [row]}, 1, 4),                                   # keep 1 of 4 (not prune 1)
        ({"seed": 41, "shape": [4, 8]}, 2, 4),                       # groups run along in_features (dim 1)
        ({"seed": 44, "shape": [4, 4, 1, 4]}, 2, 4),                 # conv weight: along C_in, not the kernel width 4
        ({"seed": 42, "shape": [2, 16]}, 4, 8),
        ({"seed": 43, "shape": [2, 8, 3]}, 2, 4),                    # conv1d weight (C_out, C_in, k): along C_in
        ({"seed": 49, "shape": [3, 8, 2, 2]}, 2, 4),
        ({"values": [[1.0, 1.0, -1.0, 1.0, 2.0, 1.0, 1.0, 2.0]]}, 2, 4),   # ties in a group
        ({"seed": 45, "shape": [2, 4], "dtype": "float64", "parameter": True}, 3, 4),
        ({"seed": 46, "shape": [3, 4]}, 0, 4),
        ({"seed": 46, "shape": [3, 4]}, 4, 4),
        ({"seed": 47, "shape": [3, 6]}, 2, 4),                       # 6 % 4 != 0 -> ValueError
        ({"seed": 48, "shape": [2, 6, 4]}, 2, 4),                    # C_in = 6 (kernel width 4) -> ValueError
        ({"seed": 47, "shape": [3, 8]}, 5, 4),                       # n > m -> ValueError
        ({"seed": 47, "shape": [3, 8]}, 2, 0),                       # m = 0 -> ValueError
        ({"seed": 47, "shape": [3, 8]}, 2.0, 4),                     # float n -> TypeError
        ({"values": 1.5}, 1, 1),                                     # a scalar -> ValueError
    ]
    cases = [{"weight": w, "n": n, "m": m} for w, n, m in fixed]
    for _ in range(8):
        m = int(rng.choice([2, 4, 4, 8]))
        rest = [int(d) for d in rng.integers(1, 4, size=int(rng.integers(0, 3)))]
        shape = ([int(rng.integers(1, 5)), m * int(rng.integers(1, 4))] + rest) if rng.random() < 0.8 \
            else [m * int(rng.integers(1, 4))]
        cases.append({"weight": {"seed": int(rng.integers(0, 2**31)), "shape": shape,
                                 "kind": str(rng.choice(["normal", "ties"]))},
                      "n": int(rng.integers(0, m + 1)), "m": m})
    return cases


def _n_m_build(case: dict) -> tuple[tuple, dict]:
    return (_tensor(case["weight"]),), {"n": case["n"], "m": case["m"]}


def _n_m_describe(case: dict) -> str:
    return f"weight = {_show(_tensor(case['weight']))}\nn = {case['n']!r}, m = {case['m']!r}"


def _n_m_compare(expected: dict, got) -> str | None:
    done, reason = _settled(expected, got)
    if done:
        return reason
    exp, mask = expected["mask"], got["mask"]
    m, axis = expected["m"], 1 if exp.dim() >= 2 else 0
    groups = lambda t: t.movedim(axis, -1).reshape(-1, m).double()  # noqa: E731  (G, m)
    for g, (e, k, s) in enumerate(zip(groups(exp), groups(mask), groups(expected["scores"]))):
        reason = _ranking_reason(e, k, s, "entry")
        if reason:
            return (f"group {g} (with dim {axis} moved last and the weight flattened, entries {g * m}..{g * m + m - 1}):"
                    f" {reason}")
    return None


# --------------------------------------------------------------------------- polynomial_sparsity
_SCHEDULE_ARGS = ("step", "total_steps", "final_sparsity", "initial_sparsity", "power")


def _schedule_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        [0, 10, 0.9, 0.0, 3], [10, 10, 0.9, 0.0, 3], [5, 10, 0.9, 0.0, 3],
        [3, 7, 0.8, 0.0, 3],                           # t/T not an integer division
        [15, 10, 0.9, 0.0, 3],                         # past the end: stays at s_f
        [-3, 10, 0.9, 0.0, 3],                         # before the start: s_i
        [4, 10, 0.95, 0.5, 3],                         # starting from s_i = 0.5
        [4, 10, 0.9, 0.0, 1],                          # power 1: linear
        [2, 8, 0.75, 0.25, 2.5],
        [1, 1, 1.0, 0.0, 3],
        [1, 0, 0.9, 0.0, 3],                           # total_steps 0 -> ValueError
        [1, 10, 1.5, 0.0, 3],                          # sparsity > 1 -> ValueError
        [1, 10, 0.9, -0.1, 3],
        [1, 10, 0.9, 0.0, 0],                          # power 0 -> ValueError
        [2.5, 10, 0.9, 0.0, 3],                        # float step -> TypeError
    ]
    cases = [dict(zip(_SCHEDULE_ARGS, args)) for args in fixed]
    for _ in range(10):
        total = int(rng.integers(1, 50))
        s_i = float(rng.choice([0.0, 0.0, round(float(rng.uniform(0, 0.5)), 3)]))
        cases.append(dict(zip(_SCHEDULE_ARGS, [int(rng.integers(-5, total + 6)), total,
                                               round(float(rng.uniform(0.5, 1.0)), 3), s_i,
                                               float(rng.choice([1, 2, 3, 3, 0.5]))])))
    return cases


def _schedule_build(case: dict) -> tuple[tuple, dict]:
    return (case["step"], case["total_steps"], case["final_sparsity"]), \
        {"initial_sparsity": case["initial_sparsity"], "power": case["power"]}


def _schedule_describe(case: dict) -> str:
    return "polynomial_sparsity(" + ", ".join(f"{a}={case[a]!r}" for a in _SCHEDULE_ARGS) + ")"


def _schedule_compare(expected: float, got) -> str | None:
    return close_float(expected, got, rtol=1e-9, atol=1e-12, what="sparsity")


# --------------------------------------------------------------------------- shrink_conv_pair
_LAYOUT = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
           "padding_mode")


def _conv(spec: list, gen: torch.Generator) -> nn.Module:
    c_in, c_out, k, stride, padding, dilation, bias, groups = (spec + [1])[:8]
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, bias=bool(bias),
                     groups=groups)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return conv


def _shrink_cases(rng: np.random.Generator) -> list[dict]:
    # conv / next_conv: [in, out, kernel, stride, padding, dilation, bias(, groups)]
    fixed = [
        ([1, 3, 3, 1, 1, 1, 1], [3, 2, 3, 1, 1, 1, 1], [0, 2]),
        ([2, 4, 3, 1, 1, 1, 1], [4, 3, 1, 1, 0, 1, 1], [3, 0]),          # keep in any order
        ([2, 4, 3, 2, 0, 1, 1], [4, 2, 3, 1, 1, 1, 1], [1, 2]),          # stride 2, no padding
        ([3, 5, 3, 1, 2, 2, 1], [5, 4, 3, 1, 0, 1, 0], [0, 1, 4]),       # dilation 2; next without bias
        ([2, 4, 1, 1, 0, 1, 0], [4, 3, 3, 1, 1, 1, 1], [2]),             # conv without bias, one channel
        ([1, 3, 3, 1, 1, 1, 1], [3, 2, 3, 1, 1, 1, 1], [0, 1, 2]),       # keep everything
        ([1, 3, 3, 1, 1, 1, 1], [3, 2, 3, 1, 1, 1, 1], [1, 1]),          # repeated -> ValueError
        ([1, 3, 3, 1, 1, 1, 1], [3, 2, 3, 1, 1, 1, 1], [3]),             # out of range -> ValueError
        ([1, 3, 3, 1, 1, 1, 1], [3, 2, 3, 1, 1, 1, 1], []),              # empty -> ValueError
        ([1, 3, 3, 1, 1, 1, 1], [4, 2, 3, 1, 1, 1, 1], [0]),             # 3 outputs feed 4 inputs -> ValueError
        ([2, 4, 3, 1, 1, 1, 1, 2], [4, 2, 3, 1, 1, 1, 1], [0, 1]),       # grouped -> ValueError
    ]
    cases = [{"conv": c, "next_conv": n, "keep": k, "seed": i} for i, (c, n, k) in enumerate(fixed)]
    cases.append({"conv": fixed[0][0], "next_conv": fixed[0][1], "keep": [0.0, 2.0], "seed": 0})  # float -> TypeError
    for _ in range(6):
        c_in, c_mid, c_out = (int(v) for v in rng.integers(1, 6, size=3))
        k1, k2 = int(rng.choice([1, 3])), int(rng.choice([1, 3]))
        keep = sorted(int(v) for v in rng.choice(c_mid, size=int(rng.integers(1, c_mid + 1)), replace=False))
        if rng.random() < 0.5:
            keep = [int(v) for v in rng.permutation(keep)]
        cases.append({"conv": [c_in, c_mid, k1, int(rng.integers(1, 3)), k1 // 2, 1, int(rng.integers(0, 2))],
                      "next_conv": [c_mid, c_out, k2, 1, k2 // 2, 1, int(rng.integers(0, 2))],
                      "keep": keep, "seed": int(rng.integers(0, 2**31))})
    return cases


def _shrink_build(case: dict) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(case["seed"])
    keep = case["keep"]
    keep = torch.tensor(keep, dtype=torch.float32 if any(isinstance(v, float) for v in keep) else torch.int64)
    return (_conv(case["conv"], gen), _conv(case["next_conv"], gen), keep), {}


def _shrink_describe(case: dict) -> str:
    (conv, next_conv, keep), _ = _shrink_build(case)
    return (f"conv = {conv!r}, next_conv = {next_conv!r} (random weights), keep = {keep!r}; "
            "graded: the new layers' settings and next_conv(relu(conv(x))) for a fixed x of shape (2, C_in, 12, 12)")


def _layout(conv: nn.Conv2d) -> dict:
    out = {a: (tuple(getattr(conv, a)) if isinstance(getattr(conv, a), (tuple, list)) else getattr(conv, a))
           for a in _LAYOUT}
    out.update(bias=conv.bias is not None, dtype=str(conv.weight.dtype))
    return out


def _shrink_derive(case: dict, answer) -> dict | str:
    """In the grader: the returned layers (rebuilt from their settings and state) run on a fixed input."""
    (conv, next_conv, keep), _ = _shrink_build(case)
    if inputs_changed((conv, next_conv), answer["inputs_after"][:2]):
        return _CHANGED.format(what="pair of layers")
    result = answer["result"]
    if not (isinstance(result, (tuple, list)) and len(result) == 2 and all(isinstance(r, nn.Conv2d) for r in result)):
        return f"expected a tuple (new_conv, new_next_conv) of two nn.Conv2d, got {type_name(result)}"
    new, new_next = result
    too_big = conv_bound(new, conv) or conv_bound(new_next, next_conv)
    if too_big:                          # settings first: nothing larger than the given pair is ever run
        return {"conv": _layout(new), "next_conv": _layout(new_next), "output": f"not run: {too_big}"}
    x = torch.randn(2, conv.in_channels, 12, 12, generator=torch.Generator().manual_seed(0)).to(conv.weight.dtype)
    try:
        with torch.no_grad():
            output = new_next(torch.relu(new(x)))                     # (2, C_out2, H', W')
    except Exception as exc:  # noqa: BLE001 - a broken pair is a wrong answer, not a crash
        output = f"running next_conv(relu(conv(x))) with the returned layers failed: {type(exc).__name__}: {exc}"
    return {"conv": _layout(new), "next_conv": _layout(new_next), "output": output}


def _shrink_compare(expected: dict, got) -> str | None:
    if isinstance(got, str):
        return got
    if not isinstance(got, dict):
        return f"expected a tuple (new_conv, new_next_conv) of two nn.Conv2d, got {got!r}"[:300]
    for layer in ("conv", "next_conv"):
        for key, value in expected[layer].items():
            if got[layer][key] != value:
                return f"the new {layer}'s {key}: expected {value!r}, got {got[layer][key]!r}"
    if isinstance(got["output"], str):
        return got["output"]
    e, g = expected["output"].double(), got["output"].double()
    if e.shape != g.shape:
        return f"next_conv(relu(conv(x))) has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
    gap = (e - g).abs().max().item() if e.numel() else 0.0
    if not torch.allclose(e, g, rtol=1e-5, atol=1e-5):
        return (f"next_conv(relu(conv(x))) differs from the original pair's (channels outside keep zeroed) "
                f"by up to {gap:.3g} (tolerance 1e-5)")
    return None


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, forbidden=(), derive=None):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="pruning", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, forbidden=tuple(forbidden),
                    runner=keep_inputs if derive else None, derive=derive)


_PRUNE = ("torch.nn.utils.prune", "torch.ao.pruning")     # modules: every function in them is off limits
_UNSTRUCTURED = _PRUNE

EXERCISES = [
    _exercise("magnitude_mask", _magnitude_cases, _magnitude_build, _magnitude_describe, _mask_compare,
              _UNSTRUCTURED, derive=_scored(_magnitude_build, lambda w, *_: w.detach().abs())),
    _exercise("global_magnitude_masks", _global_cases, _global_build, _global_describe, _global_compare,
              _UNSTRUCTURED, derive=_global_derive),
    _exercise("structured_mask", _structured_cases, _structured_build, _structured_describe, _structured_compare,
              _PRUNE, derive=_scored(_structured_build, _slice_norms, keep=("dim",))),
    _exercise("n_m_mask", _n_m_cases, _n_m_build, _n_m_describe, _n_m_compare,
              _PRUNE, derive=_scored(_n_m_build, lambda w, **_: w.detach().abs(), keep=("m",))),
    _exercise("polynomial_sparsity", _schedule_cases, _schedule_build, _schedule_describe, _schedule_compare,
              _PRUNE),
    _exercise("shrink_conv_pair", _shrink_cases, _shrink_build, _shrink_describe, _shrink_compare,
              _PRUNE, derive=_shrink_derive),
]
