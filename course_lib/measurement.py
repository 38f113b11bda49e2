"""Chapter 00 -- measurement: the yardsticks every later claim in the course uses.

Parameter counts, bytes in memory, multiply-accumulates of a convolution, a layer's FLOPs,
bytes moved and arithmetic intensity, the roofline bound, and a robust summary of repeated
timings. Most are the reference implementations of chapter 00's exercises (the grader compares
learners' functions against them), so each one is short and states its rule: what is counted,
what is counted once, what is rejected.

This module is the one topic module other modules may import: every later chapter
reports sizes and timings with these yardsticks (``timing.benchmark`` summarizes with
``summarize_timings``).

Taught in: 00_measurement.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .validation import check_float, check_int, check_module

__all__ = ["count_parameters", "model_size_bytes", "conv2d_macs", "summarize_timings", "tail_latency",
           "linear_macs", "attention_macs", "attention_flop_count", "arithmetic_intensity", "layer_cost", "largest_cache_bytes", "roofline_time", "peak_flops", "peak_bandwidth",
           "roofline_rows", "roofline_study", "plot_roofline", "first_and_second_call", "profile_ops", "peak_activation_bytes"]


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


def tail_latency(samples_ms: Sequence[float] | np.ndarray, percentiles: Sequence[float] = (50, 95, 99)) -> dict:
    """The ``p``-th percentiles of timings (``numpy.percentile``, linear): ``{"p50": ..., "p95": ..., "p99": ...}``.

    The median describes a typical call; p95/p99 describe the tail a user waits for one call in 20
    or 100. With ``n`` samples, percentiles above ``100 (n - 1) / n`` interpolate towards the maximum,
    so a p99 needs well over 100 samples to mean anything.

    Taught in: 00_measurement, section 5.
    """
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0 or not np.all(np.isfinite(samples)):
        raise ValueError(f"samples_ms must be a non-empty 1-D sequence of finite times, got shape {samples.shape}")
    return {f"p{p:g}": float(np.percentile(samples, p)) for p in percentiles}


# =========================================================================== roofline
def linear_macs(in_features: int, out_features: int, tokens: int = 1) -> int:
    """MACs of ``nn.Linear(in_features, out_features)`` on ``tokens`` rows: ``tokens * in * out``.

    Taught in: 00_measurement, section 3b.
    """
    for name, value in dict(in_features=in_features, out_features=out_features, tokens=tokens).items():
        check_int(name, value, 1)
    return tokens * in_features * out_features


def attention_macs(seq_len: int, d_model: int, projections: bool = True) -> int:
    """MACs of one self-attention layer on ``seq_len`` tokens of width ``d_model``.

    .. math::  \\underbrace{4 T d^2}_{Q,K,V,\\text{out projections}} +
               \\underbrace{T^2 d}_{Q K^\\top} + \\underbrace{T^2 d}_{A V}

    Splitting ``d`` into heads does not change the count (each head does ``T^2 d/h``, ``h`` times).
    The projections grow linearly in ``T``, the score and mixing products quadratically: at
    ``T > 2d`` the quadratic part dominates. Softmax and scaling are not counted.

    Taught in: 00_measurement, section 3b.
    """
    check_int("seq_len", seq_len, 1)
    check_int("d_model", d_model, 1)
    return (4 * seq_len * d_model ** 2 if projections else 0) + 2 * seq_len ** 2 * d_model


def attention_flop_count(seq_len: int, d_model: int, heads: int = 1) -> dict[str, int]:
    """MACs of one self-attention layer, **counted** by ``torch.utils.flop_counter`` on the products it runs.

    Builds the four bias-free projections ``Q, K, V, O`` (``d_model -> d_model``) on the ``meta``
    device (shapes only: nothing is computed or allocated) and runs, on ``seq_len`` tokens split into
    ``heads`` heads of width ``d_model / heads``,

    .. math::  \\mathrm{out} = O\\big(\\mathrm{softmax}(Q x\\,(K x)^\\top)\\,V x\\big)

    counting the projections and the two products ``Q K^T`` and ``A V`` separately, each as
    flop_counter's FLOPs / 2. It is the measurement :func:`attention_macs`' closed form is checked
    against (softmax and scaling cost no MACs, and flop_counter counts none for them).

    Parameters
    ----------
    seq_len, d_model : int >= 1
    heads : int >= 1, default=1
        Must divide ``d_model``.

    Returns
    -------
    dict
        ``{"projections": int, "QK^T + AV": int}`` in MACs.

    Raises
    ------
    ValueError
        A size below 1, or ``heads`` that does not divide ``d_model``.

    Taught in: 00_measurement, section 3b.
    """
    check_int("seq_len", seq_len, 1)
    check_int("d_model", d_model, 1)
    check_int("heads", heads, 1)
    if d_model % heads:
        raise ValueError(f"heads must divide d_model ({d_model}), got {heads}")
    meta = torch.device("meta")
    q, k, v, o = (nn.Linear(d_model, d_model, bias=False, device=meta) for _ in range(4))
    x = torch.empty(1, seq_len, d_model, device=meta)

    def split(t: torch.Tensor) -> torch.Tensor:                          # (1, T, d) -> (1, h, T, d/h)
        return t.view(1, seq_len, heads, d_model // heads).transpose(1, 2)

    with torch.no_grad(), FlopCounterMode(display=False) as first:
        qx, kx, vx = split(q(x)), split(k(x)), split(v(x))
    with torch.no_grad(), FlopCounterMode(display=False) as products:
        mixed = (qx @ kx.transpose(-2, -1)).softmax(-1) @ vx                # (1, h, T, T) then (1, h, T, d/h)
    with torch.no_grad(), FlopCounterMode(display=False) as last:
        o(mixed.transpose(1, 2).reshape(1, seq_len, d_model))
    return {"projections": (first.get_total_flops() + last.get_total_flops()) // 2,
            "QK^T + AV": products.get_total_flops() // 2}


def largest_cache_bytes(cache_dir: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size in bytes of the largest CPU cache Linux reports for CPU 0, or None where it reports none.

    Reads ``index*/size`` under ``cache_dir`` (values such as ``"32768K"``, ``"2M"`` or a plain byte
    count). A copy larger than this streams from memory, which is what :func:`peak_bandwidth` needs.

    Taught in: 00_measurement, section 3b.
    """
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for path in Path(cache_dir).glob("index*/size"):
        text = path.read_text().strip().upper()
        number, unit = text.rstrip("KMG"), text[len(text.rstrip("KMG")):]
        if number.isdigit() and unit in units:
            sizes.append(int(number) * units[unit])
    return max(sizes) if sizes else None


def _conv_out_side(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """PyTorch's output length of a convolution along one axis (floor division)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def arithmetic_intensity(layer: nn.Module, input_shape: Sequence[int]) -> dict:
    r"""FLOPs, bytes moved and arithmetic intensity of one forward pass of ``layer`` on an input of ``input_shape``.

    .. math::  I = \frac{F}{Q}, \qquad Q = s\,\big(|x| + |W| + |b| + |y|\big)

    counted by hand, without running the layer.

    **FLOPs** ``F`` are 2 per multiply-accumulate, bias additions not counted (the convention of
    ``torch.utils.flop_counter``):

    - ``nn.Linear(d_in, d_out)`` on ``(..., d_in)``: ``F = 2 R d_in d_out`` with ``R`` the product of the
      leading sizes (the rows; 1 for a 1-D input);
    - ``nn.Conv2d`` on ``(N, C_in, H, W)``: ``F = 2 N C_out H_out W_out (C_in / g) k_h k_w`` with
      ``H_out = floor((H + 2 p_h - d_h (k_h - 1) - 1) / s_h) + 1`` (likewise ``W_out``): stride ``s``,
      zero padding ``p``, dilation ``d``, ``g`` groups;
    - ``nn.ReLU``: 1 FLOP per element.

    **Bytes** ``Q``: the input ``x``, the weight ``W``, the bias ``b`` (if the layer has one) and the output
    ``y``, each read or written exactly once (perfect caches: the least any implementation moves), at
    ``s`` bytes per element, the element size of the layer's weight dtype (float32: 4, float16: 2,
    float64: 8; float32 for a layer without parameters). The intensity says on which side of a roofline's
    ridge point ``P / B`` the layer lies.

    Parameters
    ----------
    layer : nn.Linear, nn.Conv2d or nn.ReLU
    input_shape : sequence of int
        Each size >= 1. ``(..., in_features)`` for a Linear (at least 1-D), ``(N, C_in, H, W)`` for a Conv2d.

    Returns
    -------
    dict
        ``{"flops": int, "bytes": int, "intensity": float}`` (FLOP per byte).

    Raises
    ------
    TypeError
        ``layer`` is not one of the three layer types, or ``input_shape`` holds a non-int.
    ValueError
        A size below 1, an input whose feature/channel size does not match the layer, a Conv2d input
        that is not 4-D, or an empty output (kernel larger than the padded input).

    Examples
    --------
    >>> arithmetic_intensity(nn.Linear(3, 2), (4, 3))   # 48 FLOPs; 4 * (12 + 6 + 2 + 8) bytes
    {'flops': 48, 'bytes': 112, 'intensity': 0.42857142857142855}

    Taught in: 00_measurement, section 3b.
    """
    if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.ReLU)):
        raise TypeError(f"layer must be an nn.Linear, nn.Conv2d or nn.ReLU, got {type(layer).__name__}")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}")
    shape = [check_int(f"input_shape[{i}]", v, 1) for i, v in enumerate(input_shape)]
    if not shape:
        raise ValueError("input_shape must have at least one dimension")
    numel_in = int(np.prod(shape))
    if isinstance(layer, nn.ReLU):
        flops, numel_out, element = numel_in, numel_in, 4
    elif isinstance(layer, nn.Linear):
        if shape[-1] != layer.in_features:
            raise ValueError(f"input_shape must end with in_features={layer.in_features}, got {tuple(shape)}")
        rows = numel_in // layer.in_features
        flops, numel_out = 2 * rows * layer.in_features * layer.out_features, rows * layer.out_features
        element = layer.weight.element_size()
    else:
        if len(shape) != 4 or shape[1] != layer.in_channels:
            raise ValueError(f"input_shape must be (N, {layer.in_channels}, H, W) for this Conv2d, got {tuple(shape)}")
        n, _, h, w = shape
        if isinstance(layer.padding, str):                     # "valid": none; "same": output = input (stride 1)
            out_h, out_w = (h, w) if layer.padding == "same" else (
                _conv_out_side(h, layer.kernel_size[0], layer.stride[0], 0, layer.dilation[0]),
                _conv_out_side(w, layer.kernel_size[1], layer.stride[1], 0, layer.dilation[1]))
        else:
            out_h, out_w = (_conv_out_side(size, *params) for size, params in
                            zip((h, w), zip(layer.kernel_size, layer.stride, layer.padding, layer.dilation)))
        if out_h < 1 or out_w < 1:
            raise ValueError(f"the kernel {layer.kernel_size} (dilation {layer.dilation}) does not fit the padded "
                             f"input {h}x{w}: output {out_h}x{out_w}")
        flops = 2 * n * conv2d_macs(layer.in_channels, layer.out_channels, layer.kernel_size, out_h, out_w,
                                    layer.groups)
        numel_out, element = n * layer.out_channels * out_h * out_w, layer.weight.element_size()
    params = sum(p.numel() for p in (getattr(layer, "weight", None), getattr(layer, "bias", None))
                 if p is not None)
    moved = element * (numel_in + params + numel_out)
    return {"flops": int(flops), "bytes": int(moved), "intensity": flops / moved}


def layer_cost(layer: nn.Module, input_shape: Sequence[int]) -> dict:
    """FLOPs, bytes moved and arithmetic intensity of one forward pass of ``layer``, as a table row.

    .. math::  I = \\frac{\\text{FLOPs}}{\\text{bytes moved}}, \\qquad
               \\text{bytes} = (|x| + |y| + |W|) \\cdot \\text{element size}

    ``Linear``, ``Conv2d`` and ``ReLU`` are counted by :func:`arithmetic_intensity` (2 FLOPs per MAC, the
    input, the output and the parameters moved once each, as if the caches were perfect); any other layer
    as element-wise: 1 FLOP per output element (GELU, ...), its output found by running it once.

    Taught in: 00_measurement, section 3b.
    """
    check_module("layer", layer)
    if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ReLU)):
        cost = arithmetic_intensity(layer, input_shape)
        flops, moved = cost["flops"], cost["bytes"]
    else:
        dtype = next(layer.parameters(), torch.empty(0)).dtype
        x = torch.zeros(tuple(input_shape), dtype=dtype)
        with torch.no_grad():
            y = layer(x)
        params = sum(p.numel() for p in layer.parameters())
        flops = y.numel()
        moved = (x.numel() + y.numel() + params) * x.element_size()
    return {"layer": type(layer).__name__, "FLOPs": int(flops), "bytes": int(moved),
            "intensity (FLOP/B)": flops / moved}


def roofline_time(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline model's lower bound on the time of a kernel, in seconds.

    .. math::  t = \\max\\left(\\frac{\\text{FLOPs}}{P}, \\frac{\\text{bytes}}{B}\\right)

    A kernel cannot finish before the processor has done its arithmetic at peak rate ``P``
    (FLOP/s), nor before memory has delivered its bytes at bandwidth ``B`` (bytes/s). Which term
    is larger says whether the kernel is compute-bound or memory-bound; they are equal at the
    *ridge point* ``I = P / B`` (FLOP per byte). FLOPs are a count, FLOP/s a rate.

    Parameters
    ----------
    flops, bytes_moved : float, >= 0
    peak_flops, bandwidth : float, > 0

    Returns
    -------
    float
        Seconds (a Python float).

    Raises
    ------
    TypeError
        An argument that is not a real number (``bool`` included).
    ValueError
        A negative count, a rate that is not positive, or nan/inf.

    Examples
    --------
    >>> roofline_time(2e9, 1e6, 1e11, 1e10)   # 20 ms of arithmetic, 0.1 ms of traffic
    0.02

    Taught in: 00_measurement, section 3b.
    """
    flops = check_float("flops", flops, 0.0, 1e300)
    bytes_moved = check_float("bytes_moved", bytes_moved, 0.0, 1e300)
    peak_flops = check_float("peak_flops", peak_flops, 0.0, 1e300, low_inclusive=False)
    bandwidth = check_float("bandwidth", bandwidth, 0.0, 1e300, low_inclusive=False)
    return max(flops / peak_flops, bytes_moved / bandwidth)


def peak_flops(n: int = 512, threads: int = 1, repeats: int = 5) -> float:
    """Attainable FLOP/s of this CPU, estimated from an ``n x n`` float32 matrix product (``2 n^3`` FLOPs).

    The fastest of ``repeats`` runs (each repeated until 20 ms have passed): a peak, not a typical speed.
    """
    from . import timing

    a, b = torch.randn(n, n), torch.randn(n, n)
    with timing.num_threads(threads):
        t = timing.benchmark(lambda: a @ b, repeats=repeats, device="cpu", min_time_s=0.02)
    return 2 * n ** 3 / (t.min / 1e3)


def peak_bandwidth(numel: int = 1 << 25, threads: int = 1, repeats: int = 5) -> float:
    """Attainable memory bandwidth (bytes/s): copying ``numel`` float32 values reads and writes ``8 numel`` bytes.

    128 MiB per array by default, larger than the caches (32 MiB L3 on the course machine), so the copy streams from memory.
    """
    from . import timing

    x, y = torch.randn(numel), torch.empty(numel)
    with timing.num_threads(threads):
        t = timing.benchmark(lambda: y.copy_(x), repeats=repeats, device="cpu", min_time_s=0.02)
    return 8 * numel / (t.min / 1e3)


def roofline_rows(layers: dict[str, tuple[nn.Module, Sequence[int]]], peak: float, bandwidth: float, *,
                  threads: int = 1, rounds: int = 5) -> list[dict]:
    """For each ``name -> (layer, input_shape)``: :func:`layer_cost`, the roofline bound, the measured
    median (interleaved by ``timing.compare``) and the fraction of the bound reached.

    ``bound`` is ``"memory"`` when the intensity is below the ridge point ``peak / bandwidth``.
    """
    from . import timing

    inputs = {name: torch.randn(tuple(shape)) for name, (_, shape) in layers.items()}
    with torch.no_grad():
        runs = timing.compare({name: (lambda m=m, x=inputs[name]: m(x)) for name, (m, _) in layers.items()},
                              repeats=3, rounds=rounds, threads=threads)
    return _roofline_rows(layers, runs, peak, bandwidth)


def roofline_study(layers: dict[str, tuple[nn.Module, Sequence[int]]], *, gemm_n: int = 1024,
                   stream_numel: int = 1 << 25, threads: int = 1, rounds: int = 4, repeats: int = 3) -> dict:
    r"""Measure the roof and the layers **in the same interleaved rounds**, then place each layer under it.

    .. math::  P = \frac{2 n^3}{\min t_{\text{GEMM}}}, \qquad B = \frac{8 N}{\min t_{\text{copy}}}, \qquad
               \text{fraction of roofline} = \frac{\max(F / P,\ Q / B)}{\operatorname{median} t_{\text{layer}}}

    ``P`` is the best rate an ``n x n`` float32 matrix product reaches (an *attainable* peak of this core, not the
    vendor's theoretical one) and ``B`` the best rate of copying ``N`` float32 values (read ``4N`` bytes, write
    ``4N``), sized to be larger than the last-level cache so that it streams from memory. Both are timed by
    ``timing.compare`` in the same rounds as the layers, so one burst of background load cannot make the roof
    lower than what the layers reach. Taking the *fastest* GEMM and copy and the *median* layer makes the bound
    optimistic on purpose: a fraction above 1 would mean a layer beat the roof (data sitting in a cache, or a
    peak measured under load), which is what the chapter asserts does not happen.

    Parameters
    ----------
    layers : dict
        ``name -> (layer, input_shape)``; each is run on a random float32 input of that shape.
    gemm_n : int, default=1024
        Side of the square matrix product that measures ``P``.
    stream_numel : int, default=2**25
        float32 values copied to measure ``B`` (128 MiB each way by default).
    threads, rounds, repeats : int
        Passed to ``timing.compare``.

    Returns
    -------
    dict
        ``peak`` (FLOP/s), ``bandwidth`` (bytes/s), ``rows`` (one dict per layer: :func:`layer_cost`, the
        bound, the roofline time, the median time, attained GFLOP/s and the fraction of the roofline) and
        ``runs`` (every ``Timing``, the GEMM and copy included).

    Taught in: 00_measurement, section 3b.
    """
    from . import timing

    check_int("gemm_n", gemm_n, 16)
    check_int("stream_numel", stream_numel, 1024)
    if not isinstance(layers, dict) or not layers:
        raise ValueError(f"layers must be a non-empty dict name -> (layer, input_shape), got {layers!r}")
    a, b, c = torch.randn(gemm_n, gemm_n), torch.randn(gemm_n, gemm_n), torch.empty(gemm_n, gemm_n)
    src, dst = torch.randn(stream_numel), torch.empty(stream_numel)
    inputs = {name: torch.randn(tuple(shape)) for name, (_, shape) in layers.items()}
    fns = {"GEMM (peak P)": lambda: torch.mm(a, b, out=c), "stream copy (bandwidth B)": lambda: dst.copy_(src)}
    fns.update({name: (lambda m=m, x=inputs[name]: m(x)) for name, (m, _) in layers.items()})
    with torch.no_grad():
        runs = timing.compare(fns, repeats=repeats, rounds=rounds, threads=threads)
    peak = 2 * gemm_n ** 3 / (runs["GEMM (peak P)"].min / 1e3)
    bandwidth = 8 * stream_numel / (runs["stream copy (bandwidth B)"].min / 1e3)
    rows = _roofline_rows(layers, runs, peak, bandwidth)
    return {"peak": peak, "bandwidth": bandwidth, "rows": rows, "runs": runs}


def plot_roofline(rows: Sequence[dict], peak: float, bandwidth: float, *, title: str = "roofline"):
    """The roofline figure: ``min(P, I B)`` on log-log axes, each measured layer a point at (I, attained FLOP/s).

    ``rows`` are :func:`roofline_study` rows. Returns ``(fig, ax)``.

    Taught in: 00_measurement, section 3b.
    """
    import matplotlib.pyplot as plt

    check_float("peak", peak, 0.0, 1e300, low_inclusive=False)
    check_float("bandwidth", bandwidth, 0.0, 1e300, low_inclusive=False)
    intensities = [r["intensity (FLOP/B)"] for r in rows]
    lo, hi = min(intensities + [peak / bandwidth]) / 4, max(intensities + [peak / bandwidth]) * 4
    grid = np.geomspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.loglog(grid, np.minimum(peak, grid * bandwidth) / 1e9, color="black", lw=2, label="roof min(P, I·B)")
    ax.axvline(peak / bandwidth, color="grey", ls=":", lw=1, label=f"ridge I* = {peak / bandwidth:.1f} FLOP/B")
    for r in rows:
        ax.loglog(r["intensity (FLOP/B)"], r["attained GFLOP/s"], "o", ms=8, label=r["name"])
    ax.set_xlabel("arithmetic intensity I (FLOP/byte)")
    ax.set_ylabel("GFLOP/s (median call)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig, ax


def first_and_second_call(make: Callable[[int], Callable[[], object]], *, rounds: int = 20,
                          threads: int = 1) -> dict:
    """Time the **first** and the **second** call of the same freshly built function, in interleaved rounds.

    ``make(i)`` builds a new, never-called function (a new layer on an input shape not seen before). In every
    round one such function is called twice: the first call is timed as ``"first call"``, the very next call
    of the **same** function as ``"second call"``, so the two arms differ only in being first (no other layer,
    shape or channel count differs). ``timing.compare`` interleaves the two and warms neither arm's *function*
    (its warm-up calls use functions built for it). Returns ``compare``'s two ``Timing`` objects.

    Taught in: 00_measurement, section 5.
    """
    from . import timing

    check_int("rounds", rounds, 1)
    warmup = 2
    fresh = iter([make(i) for i in range(warmup + 1 + rounds)])     # compare warms each arm up with warmup + 1 calls
    current = {}

    def first():
        current["fn"] = next(fresh)
        return current["fn"]()

    def second():
        return current["fn"]()

    return timing.compare({"first call": first, "second call": second}, repeats=1, rounds=rounds,
                          warmup=warmup, threads=threads)


def profile_ops(fn: Callable[[], object], *, calls: int = 200, warmup: int = 5):
    """Per-operator breakdown of ``calls`` calls of ``fn()``: PyTorch's profiler, as a table.

    Runs ``fn`` ``warmup`` times untimed, then ``calls`` times under ``torch.autograd.profiler.profile()`` (the
    profiler's front end that starts at once; ``torch.profiler.profile`` gives the same table) and returns a
    pandas table indexed by operator: ``calls``, ``self µs per call`` (time in the operator itself) and
    ``total µs per call`` (with the operators it calls), sorted by self time. The profiler's start/stop lines,
    which its C++ side writes to the process's standard error, are kept out of the output.

    Taught in: 00_measurement, section 2.
    """
    import os
    import sys

    import pandas as pd

    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    check_int("calls", calls, 1)
    check_int("warmup", warmup, 0)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)                                  # the profiler's C++ start/stop lines go nowhere
        try:
            with torch.autograd.profiler.profile() as prof:
                for _ in range(calls):
                    fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    table = pd.DataFrame([{"operator": e.key, "calls": e.count, "self µs per call": e.self_cpu_time_total / calls,
                           "total µs per call": e.cpu_time_total / calls} for e in prof.key_averages()])
    return table.sort_values("self µs per call", ascending=False).set_index("operator")


def peak_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Largest ``input + output`` bytes of any leaf module during ``model(x)``: the activation memory
    an inference run must hold at once (weights not included), when each layer's input can be freed
    after the layer ran.

    Taught in: 00_measurement, section 3b.
    """
    check_module("model", model)
    peak = [0]

    def hook(module, inputs, output):
        held = sum(t.numel() * t.element_size() for t in (*inputs, output) if isinstance(t, torch.Tensor))
        peak[0] = max(peak[0], held)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return int(peak[0])


def _roofline_rows(layers: dict, runs: dict, peak: float, bandwidth: float) -> list[dict]:
    """One row per layer: its FLOPs and bytes, the roofline bound max(F/P, Q/B), the measured median and the
    fraction of the roofline it reaches (bound / measured)."""
    rows = []
    for name, (layer, shape) in layers.items():
        cost = layer_cost(layer, shape)
        bound_s = roofline_time(cost["FLOPs"], cost["bytes"], peak, bandwidth)
        rows.append({"name": name, **cost, "bound": "memory" if cost["intensity (FLOP/B)"] < peak / bandwidth
                     else "compute", "roofline (ms)": bound_s * 1e3, "measured (ms)": runs[name].median,
                     "attained GFLOP/s": cost["FLOPs"] / runs[name].median / 1e6,
                     "fraction of roofline": bound_s * 1e3 / runs[name].median})
    return rows
