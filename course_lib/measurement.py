"""Chapter 00 -- measurement: the yardsticks every later claim in the course uses.

Parameter counts, bytes in memory, multiply-accumulates of a convolution, and a robust
summary of repeated timings. These are the reference implementations of chapter 00's
exercises (the grader compares learners' functions against them), so each one is short
and states its rule: what is counted, what is counted once, what is rejected.

This module is the one topic module other modules may import: every later chapter
reports sizes and timings with these yardsticks (``timing.benchmark`` summarizes with
``summarize_timings``).

Taught in: 00_measurement.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .validation import check_int, check_module

__all__ = ["count_parameters", "model_size_bytes", "conv2d_macs", "summarize_timings"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    .. math::  P = \\sum_{p \\in \\mathrm{params}(model)} \\mathrm{numel}(p)

    Parameters
    ----------
    model : nn.Module
    trainable_only : bool, default=False
        Count only parameters with ``requires_grad=True``.

    Returns
    -------
    int
        A Python int.

    Rules
    -----
    A parameter object shared by two layers (weight tying) counts once: ``model.parameters()``
    already yields each parameter object once. Buffers (BatchNorm running statistics) are not
    parameters and are not counted.

    Examples
    --------
    >>> count_parameters(nn.Linear(3, 2))   # 3*2 weights + 2 biases
    8

    Taught in: 00_measurement, section 1.
    """
    check_module("model", model)
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def model_size_bytes(model: nn.Module) -> int:
    """Bytes taken by the tensors of ``model``: every parameter and every buffer.

    .. math::  B = \\sum_{t \\in \\mathrm{params} \\cup \\mathrm{buffers}} \\mathrm{numel}(t)
               \\cdot \\mathrm{element\\_size}(t)

    Each tensor is counted with its own dtype (float16: 2 bytes, float64: 8, int64 buffers
    such as BatchNorm's ``num_batches_tracked``: 8), and a tensor object shared by two
    modules counts once. Buffers count whether or not they are persistent (saved in the
    state_dict). This is the in-memory size, not the size of a file on disk (a file adds a
    header and names; a sparse format stores indices).

    Examples
    --------
    >>> model_size_bytes(nn.Linear(3, 2))   # 8 float32 values
    32

    Taught in: 00_measurement, section 1.
    """
    check_module("model", model)
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # each tensor object once
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def _as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def conv2d_macs(in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                out_h: int, out_w: int, groups: int = 1) -> int:
    """Multiply-accumulates (MACs) of one ``nn.Conv2d`` applied to one image.

    .. math::  \\mathrm{MACs} = C_{out} \\cdot H_{out} \\cdot W_{out} \\cdot
               \\frac{C_{in}}{g} \\cdot k_h \\cdot k_w

    Every output value is a dot product of a ``(C_in/g) x k_h x k_w`` patch with one filter:
    that many multiplies, each followed by an add. Bias additions are not counted.
    ``torch.utils.flop_counter`` counts 2 FLOPs per MAC, so FLOPs = 2 * MACs.

    Parameters
    ----------
    in_channels, out_channels, out_h, out_w : int, positive
    kernel_size : int or (int, int)
        ``k`` means ``(k, k)``.
    groups : int, default=1
        Must divide both ``in_channels`` and ``out_channels``.

    Raises
    ------
    ValueError
        A size that is not positive, or ``groups`` that does not divide both channel counts.

    Examples
    --------
    >>> conv2d_macs(3, 16, 3, 32, 32)      # 16*32*32 outputs, 3*3*3 MACs each
    442368

    Taught in: 00_measurement, section 2.
    """
    k_h, k_w = _as_pair(kernel_size, "kernel_size")
    sizes = dict(in_channels=in_channels, out_channels=out_channels, out_h=out_h, out_w=out_w,
                 groups=groups, k_h=k_h, k_w=k_w)
    for name, value in sizes.items():
        check_int(name, value, 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups must divide in_channels ({in_channels}) and out_channels "
                         f"({out_channels}), got groups={groups}")
    return out_channels * out_h * out_w * (in_channels // groups) * k_h * k_w


def summarize_timings(samples_ms: Sequence[float] | np.ndarray) -> dict:
    """Robust summary of repeated timings: median and interquartile range (IQR).

    .. math::  \\mathrm{IQR} = Q_{0.75} - Q_{0.25}

    Quartiles interpolate linearly between order statistics: with the samples sorted as
    ``s_0 <= ... <= s_{n-1}``, ``Q_q = s_{\\lfloor h \\rfloor} + (h - \\lfloor h \\rfloor)
    (s_{\\lfloor h \\rfloor + 1} - s_{\\lfloor h \\rfloor})`` with ``h = q (n - 1)``
    (``numpy.percentile``'s default, ``method="linear"``). The median is ``Q_{0.5}``: for an
    even count, the mean of the two middle samples. Timings are skewed to the right (a
    background process only ever makes a run slower), so the median and IQR describe them
    better than mean and standard deviation.

    Parameters
    ----------
    samples_ms : sequence of float or 1-D ndarray
        At least one finite, non-negative time in milliseconds.

    Returns
    -------
    dict
        ``{"median": float, "iqr": float, "min": float, "max": float, "n": int}``

    Raises
    ------
    ValueError
        Empty input, a negative sample, or a non-finite one (nan, inf).

    Examples
    --------
    >>> summarize_timings([1.0, 2.0, 3.0, 10.0])["median"]
    2.5

    Taught in: 00_measurement, section 4.
    """
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"samples_ms must be a non-empty 1-D sequence of times, got shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("samples_ms must be finite, got a nan or inf value")
    if np.any(samples < 0):
        raise ValueError(f"samples_ms must be non-negative, got {samples.min()!r}")
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return {"median": float(median), "iqr": float(q75 - q25), "min": float(samples.min()),
            "max": float(samples.max()), "n": int(samples.size)}
