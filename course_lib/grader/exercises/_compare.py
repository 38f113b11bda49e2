"""Comparisons shared by the exercise specs: each returns None when right, else a reason."""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def type_name(value: Any) -> str:
    return type(value).__name__


def is_int_like(value: Any) -> bool:
    """A Python int or a numpy integer; ``bool`` is not a number here."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def exact_int(expected: int, got: Any) -> str | None:
    if not is_int_like(got):
        return f"expected an int, got a {type_name(got)} ({got!r})"
    if int(got) != expected:
        return f"expected {expected}, got {int(got)}"
    return None


def close_float(expected: float, got: Any, *, rtol: float = 1e-9, atol: float = 1e-12,
                what: str = "value") -> str | None:
    if not isinstance(got, numbers.Real) or isinstance(got, (bool, np.bool_)):
        return f"{what}: expected a float, got a {type_name(got)} ({got!r})"
    if not math.isclose(float(got), expected, rel_tol=rtol, abs_tol=atol):
        return f"{what}: expected {expected!r}, got {float(got)!r}"
    return None


def tensor_reason(expected, got: Any, what: str = "value", *, exact: bool = False, rtol: float = 1e-6,
                  atol: float = 1e-7, atol_relative_to_max: bool = False) -> str | None:
    """None if ``got`` is a tensor of ``expected``'s shape and dtype whose values match, else the first mismatch.

    Values match exactly (``exact``) or within ``|e - g| <= atol + rtol |e|``, with ``atol`` scaled by
    ``max(1, max|e|)`` when ``atol_relative_to_max`` (attribution maps of any magnitude); nan matches nan.
    """
    import torch

    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a torch.Tensor, got a {type_name(got)}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"{what}: expected dtype {expected.dtype}, got {got.dtype}"
    e, g = expected.double(), got.detach().double()
    if atol_relative_to_max and e.numel():
        atol = atol * max(1.0, float(e.nan_to_num().abs().max()))
    close = (e == g) if exact else torch.isclose(e, g, rtol=rtol, atol=atol)
    bad = ~(close | (torch.isnan(e) & torch.isnan(g)))
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        where = f"[{', '.join(map(str, i))}]" if i else ""
        tolerance = "" if exact else f" beyond rtol={rtol:g}, atol={atol:.2g}"
        return (f"{what}{where}: expected {e[i].item()!r}, got {g[i].item()!r} "
                f"({int(bad.sum())} of {e.numel()} differ{tolerance})")
    return None


def labels_from_spec(spec: dict):
    """Class labels from a case: ``{"values": [...]}`` or ``{"seed", "classes", "n"}`` (uniform draws)."""
    import torch

    if "values" in spec:
        return torch.tensor(spec["values"], dtype=torch.int64)
    gen = torch.Generator().manual_seed(spec["seed"])
    return torch.randint(0, spec["classes"], (spec["n"],), generator=gen)


def show_tensor(t) -> str:
    """A tensor as a learner would type it (small), or its dtype, shape, range and first values (large)."""
    import torch

    if t.numel() > 24:
        return (f"a {t.dtype} tensor of shape {tuple(t.shape)}, min {float(t.min()):.6g}, max {float(t.max()):.6g}, "
                f"first values {[round(v, 6) for v in t.flatten()[:6].tolist()]}")
    dtype = "" if t.dtype in (torch.float32, torch.int64) else f", dtype={t.dtype}"
    return f"torch.tensor({t.tolist()}{dtype})"


def conv_bound(layer, given, widths: int | None = None) -> str | None:
    """Why running the returned ``layer`` could cost more than the ``given`` layer (None if it cannot): its
    widths at most ``widths`` (default: the given layer's), kernel and dilation at most the given one's,
    its padding at most what the given one pads (``'same'`` pads up to dilation·(k - 1), ``'valid'`` 0).
    Checked **before** the grader runs a returned layer, so no answer makes it compute without bound."""
    import torch.nn as nn
    if isinstance(given, nn.Linear):
        top = widths if widths is not None else max(given.in_features, given.out_features)
        big = max(layer.in_features, layer.out_features)
        return None if big <= top else f"a returned layer's width {big} exceeds {top}"
    top = widths if widths is not None else max(given.in_channels, given.out_channels)
    if max(layer.in_channels, layer.out_channels) > top:
        return f"a returned layer's channels ({layer.in_channels}, {layer.out_channels}) exceed {top}"
    for key in ("kernel_size", "dilation"):
        if any(g > m for g, m in zip(getattr(layer, key), getattr(given, key))):
            return f"a returned layer's {key} {getattr(layer, key)} exceeds the given layer's {getattr(given, key)}"
    pad = given.padding
    if isinstance(pad, str):
        pad = (0, 0) if pad == "valid" else tuple(d * (k - 1) for d, k in zip(given.dilation, given.kernel_size))
    if isinstance(layer.padding, str):
        return None if layer.padding == "valid" or given.padding == "same" else \
            f"a returned layer's padding {layer.padding!r} pads more than the given layer's {given.padding!r}"
    if any(g > m for g, m in zip(layer.padding, pad)):
        return f"a returned layer's padding {layer.padding} exceeds the given layer's {given.padding}"
    return None
