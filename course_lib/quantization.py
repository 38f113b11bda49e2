"""Chapter 02 -- quantization: affine quantizers by hand, real int8 kernels, QAT with an STE.

A uniform affine quantizer maps a real ``x`` to an integer code and back:

.. math::  q = \\mathrm{clamp}(\\mathrm{round}(x / s) + z,\\ q_{min},\\ q_{max}), \\qquad
           \\hat x = s\\,(q - z)

with a **scale** ``s > 0`` (the grid step) and an integer **zero point** ``z`` (the code of the
real 0, so 0 is represented exactly). The first six functions are the references of the chapter's
exercises; the rest are the helpers the notebook calls (simulated quantization of whole models,
calibration, quantization-aware training, int8 and bf16 measurements, plots).

References
----------
Jacob, B. et al. (2018). Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference. CVPR.
Krishnamoorthi, R. (2018). Quantizing deep convolutional networks for efficient inference:
A whitepaper. arXiv:1806.08342.
Nagel, M. et al. (2021). A White Paper on Neural Network Quantization. arXiv:2106.08295.

Taught in: 02_quantization.
"""
from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import models, timing
from .validation import check_int, check_tensor

__all__ = ["EPS", "minmax_qparams", "quantize_affine", "dequantize_affine", "per_channel_qparams",
           "fake_quantize", "binarize", "code_range", "FakeQuantLayer", "prepare_fake_quant", "calibrate",
           "activation_range", "quantize_weights", "weight_size_bytes", "state_dict_bytes", "rescale_channel",
           "bit_width_sweep", "qat_finetune", "QAT_ARMS", "qat_vs_finetune_ptq", "dynamic_int8", "int8_vs_fp32",
           "bf16_vs_fp32",
           "binary_storage_bytes", "matmul_formats", "plot_bit_sweep", "plot_quantization_grid",
           "plot_round_trip_error", "int8_linear", "symmetric_scale", "fold_batchnorm", "quantize_multiplier",
           "requantize_fixed_point", "static_int8", "static_int8_vs_fp32", "packed_state_dict", "tensor_bytes", "saved_bytes",
           "group_quantize", "kmeans_quantize", "quantize_weights_scheme", "scheme_size_bytes", "scheme_sweep",
           "simulate_dynamic_int8", "activation_observer", "equalize_pair",
           "mse_clip_weight", "quantize_weights_mse",
           "SharedWeightLayer", "kmeans_finetune"]

EPS = 2.0 ** -23          # torch.finfo(torch.float32).eps: the observers' smallest scale


# --------------------------------------------------------------------------- argument checks
def code_range(num_bits: int, signed: bool = False) -> tuple[int, int]:
    """The integer codes of ``num_bits`` bits: ``[0, 2^b - 1]``, or ``[-2^(b-1), 2^(b-1) - 1]`` if signed."""
    check_int("num_bits", num_bits, 2)
    if num_bits > 16:
        raise ValueError(f"num_bits must be an int in [2, 16], got {num_bits!r}")
    return (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if signed else (0, 2 ** num_bits - 1)


def _check_float_tensor(name: str, x: object, min_ndim: int = 0) -> torch.Tensor:
    check_tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0 or x.ndim < min_ndim:
        raise ValueError(f"{name} must be a non-empty tensor with at least {min_ndim} dims, "
                         f"got shape {tuple(x.shape)}")
    if torch.isnan(x).any():
        raise ValueError(f"{name} must not contain nan, got a nan value")
    return x


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"scale must be a float > 0, got {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite float > 0, got {scale!r}")
    return float(scale)


def _check_zero_point(zero_point: object, qmin: int, qmax: int) -> int:
    if isinstance(zero_point, (bool, np.bool_)) or not isinstance(zero_point, (int, np.integer)):
        raise TypeError(f"zero_point must be an int in [{qmin}, {qmax}], got {zero_point!r}")
    if not qmin <= zero_point <= qmax:
        raise ValueError(f"zero_point must be an int in [{qmin}, {qmax}], got {zero_point!r}")
    return int(zero_point)


# --------------------------------------------------------------------------- exercises
def minmax_qparams(x: torch.Tensor, num_bits: int = 8, symmetric: bool = False) -> tuple[float, int]:
    """Scale and zero point that map the range of ``x`` (0 included) onto ``num_bits``-bit codes.

    .. math::  \\text{asymmetric: } s = \\frac{\\max(x_{max}, 0) - \\min(x_{min}, 0)}{2^b - 1},\\;
               z = \\mathrm{clamp}(-\\mathrm{round}(\\min(x_{min}, 0)/s),\\ 0,\\ 2^b - 1)

    .. math::  \\text{symmetric: } s = \\frac{\\max |x|}{(2^b - 1)/2},\\; z = 0
               \\text{ (signed codes } [-2^{b-1}, 2^{b-1} - 1])

    Parameters
    ----------
    x : Tensor, float, any shape, non-empty, no nan
    num_bits : int in [2, 16], default=8
    symmetric : bool, default=False

    Returns
    -------
    (float, int)
        ``scale`` (a Python float, at least :data:`EPS`) and ``zero_point`` (a Python int).

    Rules
    -----
    The range always contains 0, so the real 0 (ReLU outputs, zero padding) has an exact code.
    ``scale`` is floored at ``EPS = 2^-23`` so an all-zero tensor gives ``(2^-23, 0)``, never a
    division by zero. ``round`` is half to even. For ``b = 8`` this is
    ``torch.ao.quantization.MinMaxObserver`` (``quint8`` affine; ``qint8`` symmetric), which
    returns the same numbers as 1-element tensors (scale float32, zero point int32/int64).

    Examples
    --------
    >>> minmax_qparams(torch.tensor([-2.5, 252.5]))      # s = 255/255, z = -round(-2.5) = 2 (half to even)
    (1.0, 2)

    Taught in: 02_quantization, section 1.
    """
    _check_float_tensor("x", x)
    qmin, qmax = code_range(num_bits, signed=symmetric)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, min(max(qmin - round(lo / scale), qmin), qmax)


def quantize_affine(x: torch.Tensor, scale: float, zero_point: int, num_bits: int = 8,
                    signed: bool = False) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, q_min, q_max)`` as int64.

    Parameters
    ----------
    x : Tensor, float, any shape, no nan (+-inf clamp to the ends of the code range)
    scale : float, finite, > 0
    zero_point : int in the code range
    num_bits : int in [2, 16], default=8
    signed : bool, default=False
        Codes ``[-2^(b-1), 2^(b-1) - 1]`` if True, else ``[0, 2^b - 1]``.

    Returns
    -------
    Tensor of int64, shape of ``x``

    Rules
    -----
    ``round`` is half to even (``torch.round``): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0.
    ``torch.quantize_per_tensor`` rounds ``fma(x, 1/scale, zero_point)`` in float32 instead, so on
    rare inputs within ~1e-5 of a tie it can differ by one code (shown in the chapter).

    Examples
    --------
    >>> quantize_affine(torch.tensor([0.25, 0.75, 1.25, 9.0]), 0.5, 10, num_bits=4)
    tensor([10, 12, 12, 15])

    Taught in: 02_quantization, section 1.
    """
    _check_float_tensor("x", x)
    qmin, qmax = code_range(num_bits, signed)
    scale, zero_point = _check_scale(scale), _check_zero_point(zero_point, qmin, qmax)
    code = torch.round(x / scale) + zero_point              # unclamped code, float
    return code.clamp(qmin, qmax).to(torch.int64)


def dequantize_affine(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Real values ``scale * (q - zero_point)`` of integer codes, as float32.

    Parameters
    ----------
    q : Tensor of any integer dtype (int64, int32, int8, uint8 as from ``int_repr()``), any shape
    scale : float, finite, > 0
    zero_point : int

    Rules
    -----
    ``q`` is widened to int64 before subtracting: in uint8, ``q - 128`` would wrap around.

    Examples
    --------
    >>> dequantize_affine(torch.tensor([10, 12, 15]), 0.5, 10)
    tensor([0.0000, 1.0000, 2.5000])

    Taught in: 02_quantization, section 1.
    """
    check_tensor("q", q)
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor, got dtype {q.dtype}")
    scale = _check_scale(scale)
    check_int("zero_point", zero_point, -(2 ** 31))
    return (q.to(torch.int64) - zero_point).to(torch.float32) * scale     # int64 first: uint8 - 128 would wrap


def per_channel_qparams(w: torch.Tensor, axis: int = 0, num_bits: int = 8,
                        symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`minmax_qparams` for each slice ``w.select(axis, c)``: one scale and zero point per channel.

    Returns
    -------
    (Tensor, Tensor)
        ``scales``: float32 of shape ``(w.shape[axis],)``; ``zero_points``: int64, same shape.

    Rules
    -----
    The min and max of channel ``c`` are taken over every dim except ``axis`` (negative ``axis``
    counts from the end). Each channel follows :func:`minmax_qparams`; computed in float32 as
    ``torch.ao.quantization.PerChannelMinMaxObserver`` does, which it matches exactly for b = 8
    (``qint8`` per_channel_symmetric; ``quint8`` per_channel_affine).

    Examples
    --------
    >>> per_channel_qparams(torch.tensor([[1.0, -2.55], [0.0, 0.0]]), num_bits=8)[1]
    tensor([0, 0])

    Taught in: 02_quantization, section 3.
    """
    _check_float_tensor("w", w, min_ndim=1)
    check_int("axis", axis, -w.ndim)
    if axis >= w.ndim:
        raise ValueError(f"axis must be an int in [{-w.ndim}, {w.ndim - 1}], got {axis!r}")
    qmin, qmax = code_range(num_bits, signed=symmetric)
    rows = w.detach().float().movedim(axis, 0).reshape(w.shape[axis], -1)   # (C, rest)
    lo = rows.amin(dim=1).clamp(max=0.0)                                     # (C,)
    hi = rows.amax(dim=1).clamp(min=0.0)
    if symmetric:
        scales = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        return scales.clamp(min=EPS), torch.zeros_like(scales, dtype=torch.int64)
    scales = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
    return scales, (qmin - torch.round(lo / scales)).clamp(qmin, qmax).to(torch.int64)


class _FakeQuantizeSTE(torch.autograd.Function):
    """dequantize(quantize(x)) forward; the straight-through estimator backward."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        code = torch.round(x / scale) + zero_point                   # unclamped code
        ctx.save_for_backward((code >= qmin) & (code <= qmax))       # inside the code range
        return (code.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        return grad_out * inside, None, None, None, None              # d x_hat / d x = 1 inside, 0 clipped


def fake_quantize(x: torch.Tensor, scale: float, zero_point: int, num_bits: int = 8) -> torch.Tensor:
    """Quantize then dequantize ``x`` (codes ``[0, 2^b - 1]``), differentiably, with a straight-through estimator.

    .. math::  \\hat x = s\\,(\\mathrm{clamp}(c, 0, 2^b - 1) - z), \\quad c = \\mathrm{round}(x/s) + z,
               \\qquad \\frac{\\partial L}{\\partial x} = \\frac{\\partial L}{\\partial \\hat x}\\,
               [0 \\le c \\le 2^b - 1]

    ``round`` has zero derivative almost everywhere, so training through it would stop; the
    straight-through estimator (Bengio et al., 2013) treats it as the identity in the backward
    pass, and keeps the clamp's zero gradient outside the range.

    Returns
    -------
    Tensor, shape and dtype of ``x``, attached to ``x``'s autograd graph.

    Rules
    -----
    Symmetric (signed) quantization is the case ``zero_point = 2^(b-1)``. Forward and gradient
    equal ``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 2**b - 1)``, which
    rounds ``x * (1/scale)``: on rare near-ties the forward values differ by one step.

    Examples
    --------
    >>> x = torch.tensor([0.3, 9.0], requires_grad=True)
    >>> fake_quantize(x, 0.5, 0, num_bits=4).sum().backward(); x.grad
    tensor([1., 0.])

    Taught in: 02_quantization, section 6.
    """
    _check_float_tensor("x", x)
    qmin, qmax = code_range(num_bits)
    scale, zero_point = _check_scale(scale), _check_zero_point(zero_point, qmin, qmax)
    return _FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax)


def binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary weights (BWN): ``w ~ alpha * b`` with ``b = sign(w)`` and one ``alpha`` per output channel.

    Rastegari et al.'s Binary-Weight-Network; their XNOR-Net binarizes the activations as well.

    .. math::  b = \\mathrm{sign}(w) \\in \\{-1, +1\\}, \\qquad
               \\alpha_c = \\frac{1}{n}\\sum_{i} |w_{c,i}| = \\arg\\min_{\\alpha} \\|w_c - \\alpha b_c\\|^2

    Returns
    -------
    (Tensor, Tensor)
        ``alpha`` of shape ``(C_out, 1, ..., 1)`` (``w.ndim`` dims, so ``alpha * b`` broadcasts to
        ``w``'s shape) and ``b`` shaped like ``w``; both of ``w``'s dtype.

    Rules
    -----
    ``sign(0) = +1`` (also for -0.0): b is never 0. ``w`` needs at least 2 dims (dim 0 = output channels).

    References
    ----------
    Rastegari, M., Ordonez, V., Redmon, J. and Farhadi, A. (2016). XNOR-Net: ImageNet Classification Using
    Binary Convolutional Neural Networks. ECCV (BWN and XNOR-Net).

    Examples
    --------
    >>> alpha, b = binarize(torch.tensor([[0.5, -1.5], [0.0, -2.0]]))
    >>> alpha.flatten().tolist(), b.tolist()
    ([1.0, 1.0], [[1.0, -1.0], [1.0, -1.0]])

    Taught in: 02_quantization, section 8.
    """
    _check_float_tensor("w", w, min_ndim=2)
    b = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))   # sign with sign(0) = +1
    alpha = w.abs().mean(dim=tuple(range(1, w.ndim)), keepdim=True)   # (C_out, 1, ..., 1)
    return alpha, b


# --------------------------------------------------------------------------- simulated quantized models
def _fake_quantize_per_channel(w: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization of a weight, with the STE (vectorized)."""
    scales, _ = per_channel_qparams(w, 0, num_bits, symmetric=True)
    qmin, qmax = code_range(num_bits, signed=True)
    s = scales.view(-1, *[1] * (w.ndim - 1))                           # (C_out, 1, ..., 1)
    code = torch.round(w / s)
    w_hat = code.clamp(qmin, qmax) * s
    return w + (w_hat - w).detach()                                     # STE: gradient 1


def _quantize_weight(w: torch.Tensor, num_bits: int, per_channel: bool, fake_quant: Callable) -> torch.Tensor:
    if num_bits == 1:                                                  # binary: alpha * sign(w), STE
        alpha, b = binarize(w.detach())
        return w + (alpha * b - w).detach()
    if per_channel:
        return _fake_quantize_per_channel(w, num_bits)
    scale, _ = minmax_qparams(w.detach(), num_bits, symmetric=True)
    return fake_quant(w, scale, 2 ** (num_bits - 1), num_bits)        # signed codes via zero point 2^(b-1)


class FakeQuantLayer(nn.Module):
    """A ``Conv2d`` or ``Linear`` whose input and weight are fake-quantized in every forward.

    The weight is quantized symmetrically from its current min-max (per tensor with
    ``fake_quant``, or per output channel; ``weight_bits=1`` binarizes it as BWN does: binary
    weights only, whereas XNOR-Net also binarizes the activations); the
    input uses the fixed ``act_qparams = (scale, zero_point)`` set by :func:`calibrate` (none:
    not quantized). Gradients reach the float weight through the straight-through estimator.
    """

    def __init__(self, layer: nn.Module, weight_bits: int | None, act_bits: int | None,
                 per_channel: bool = False, fake_quant: Callable = fake_quantize):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"layer must be an nn.Conv2d or nn.Linear, got {type(layer).__name__}")
        self.layer, self.weight_bits, self.act_bits = layer, weight_bits, act_bits
        self.per_channel, self.fake_quant = per_channel, fake_quant
        self.act_qparams: tuple[float, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is not None and self.act_qparams is not None:
            x = self.fake_quant(x, *self.act_qparams, self.act_bits)
        w = self.layer.weight
        if self.weight_bits is not None:
            w = _quantize_weight(w, self.weight_bits, self.per_channel, self.fake_quant)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def extra_repr(self) -> str:
        return f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, per_channel={self.per_channel}"


def prepare_fake_quant(model: nn.Module, weight_bits: int | None = 8, act_bits: int | None = None, *,
                       per_channel: bool = False, fake_quant: Callable = fake_quantize) -> nn.Module:
    """A copy of ``model`` with every Conv2d and Linear wrapped in a :class:`FakeQuantLayer`."""
    qmodel = copy.deepcopy(model)
    for parent in list(qmodel.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                setattr(parent, name, FakeQuantLayer(child, weight_bits, act_bits, per_channel, fake_quant))
    return qmodel.eval()


def activation_range(samples: torch.Tensor, num_bits: int, method: str = "minmax",
                     percentile: float = 99.99) -> tuple[float, float]:
    """Clipping range ``(lo, hi)`` of one layer's input from calibration samples.

    ``"minmax"``: the observed min and max. ``"percentile"``: the ``percentile``-th and
    ``(100 - percentile)``-th percentiles (outliers are clipped). ``"mse"``: the range ``t * (lo, hi)``
    among 50 candidates ``t`` in [0.01, 1] (geometric grid, 1 included) that minimizes the mean squared
    error of the quantized samples (MSE range setting; Nagel et al. 2021).
    """
    a = samples.detach().flatten().float()
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        qs = np.percentile(a.numpy(), [100 - percentile, percentile])
        return min(float(qs[0]), 0.0), max(float(qs[1]), 0.0)
    if method == "mse":
        best = (math.inf, lo, hi)
        for t in np.geomspace(0.01, 1.0, 50):
            s, z = minmax_qparams(torch.tensor([lo * t, hi * t]), num_bits)
            err = float(((dequantize_affine(quantize_affine(a, s, z, num_bits), s, z) - a) ** 2).mean())
            best = min(best, (err, lo * t, hi * t))
        return best[1], best[2]
    raise ValueError(f"method must be one of ['minmax', 'percentile', 'mse'], got {method!r}")


@torch.no_grad()
def calibrate(qmodel: nn.Module, X: torch.Tensor, method: str = "minmax", percentile: float = 99.99) -> nn.Module:
    """Post-training calibration: set each :class:`FakeQuantLayer`'s input qparams from data ``X``.

    Runs ``X`` through the model with activation quantization off, records every wrapped
    layer's input, and sets its ``(scale, zero_point)`` from :func:`activation_range`.
    """
    layers = [m for m in qmodel.modules() if isinstance(m, FakeQuantLayer) and m.act_bits is not None]
    seen: dict[FakeQuantLayer, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0].detach())) for m in layers]
    for m in layers:
        m.act_qparams = None
    try:
        qmodel.eval()(X)
    finally:
        for h in hooks:
            h.remove()
    for m in layers:
        lo, hi = activation_range(seen[m], m.act_bits, method, percentile)
        m.act_qparams = minmax_qparams(torch.tensor([lo, hi]), m.act_bits)
    return qmodel


def quantize_weights(model: nn.Module, num_bits: int, per_channel: bool = True) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are replaced by their quantized values (weight-only PTQ)."""
    qmodel = copy.deepcopy(model)
    with torch.no_grad():
        for m in qmodel.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(_quantize_weight(m.weight, num_bits, per_channel, fake_quantize))
    return qmodel.eval()


def weight_size_bytes(model: nn.Module, num_bits: int, per_channel: bool = True) -> float:
    """Bytes of ``model`` if its Conv2d/Linear weights are stored with ``num_bits`` bits.

    Each quantized weight tensor costs ``numel * b / 8`` bytes plus one float32 scale per output
    channel (or per tensor); every other tensor (biases, ...) keeps its float32 bytes.
    """
    total = 0.0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if name == "weight" and isinstance(m, (nn.Conv2d, nn.Linear)):
                total += p.numel() * num_bits / 8 + 4 * (p.shape[0] if per_channel else 1)
            else:
                total += p.numel() * p.element_size()
    return total


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what is actually stored (int8 packed weights too)."""
    return saved_bytes(model.state_dict())


def saved_bytes(obj: object) -> int:
    """Bytes of the file ``torch.save(obj)`` writes (measured in memory)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def rescale_channel(model: nn.Module, channel: int, factor: float) -> nn.Module:
    """An equivalent copy of a ``SmallCNN`` whose first conv's ``channel`` is ``factor`` times larger.

    ReLU is positively homogeneous, ``relu(a z) = a relu(z)`` for ``a > 0``: scaling conv1's output
    channel by ``a`` (weight and bias) and conv2's matching input channel by ``1/a`` leaves the
    function unchanged, but gives conv1 one outlier channel.
    """
    if not factor > 0:
        raise ValueError(f"factor must be a float > 0, got {factor!r}")
    out = copy.deepcopy(model)
    conv1, conv2 = out.features[0], out.features[2]
    with torch.no_grad():
        conv1.weight[channel] *= factor
        conv1.bias[channel] *= factor
        conv2.weight[:, channel] /= factor
    return out


def bit_width_sweep(model: nn.Module, X: torch.Tensor, y: torch.Tensor, bits: Sequence[int] = (8, 6, 4, 3, 2),
                    per_channel: bool = True) -> list[dict]:
    """Accuracy and size of weight-only PTQ at each bit width (plus the float32 baseline as 32 bits).

    Each row also holds ``"correct"``, the per-example 0/1 array ``pred == y`` (a numpy bool array of
    shape ``(N,)``), so that two rows can be compared with :func:`course_lib.stats.paired_bootstrap`
    and each accuracy gets an interval.
    """
    def correct(m: nn.Module) -> np.ndarray:
        return (models.predict_proba(m, X).argmax(1) == y).numpy()

    base = correct(model)
    rows = [{"bits": 32, "accuracy": float(base.mean()), "size_bytes": weight_size_bytes(model, 32, False)
             - 4 * sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()), "correct": base}]
    for b in bits:
        right = correct(quantize_weights(model, b, per_channel))
        rows.append({"bits": b, "accuracy": float(right.mean()), "size_bytes": weight_size_bytes(model, b, per_channel),
                     "correct": right})
    return rows


def qat_finetune(qmodel: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int = 8, lr: float = 1e-3,
                 seed: int = 0, progress: bool = False) -> dict:
    """Quantization-aware training: fine-tune a :func:`prepare_fake_quant` model through its fake quantizers.

    Every forward quantizes weights (from their current range) and inputs (calibrated ranges);
    the straight-through estimator lets the float weights learn to sit well on the grid.
    """
    return models.train(qmodel, X, y, epochs=epochs, lr=lr, batch_size=64, seed=seed, progress=progress)



QAT_ARMS = ("qat", "qat_per_channel", "ptq_per_tensor", "ptq_per_channel", "ft_ptq_per_tensor", "ft_ptq_per_channel")


def _config_label(weight_bits: int, act_bits: int | None) -> str:
    return f"W{weight_bits}A{act_bits}" if act_bits is not None else f"W{weight_bits}"


def qat_vs_finetune_ptq(model: nn.Module, split, X_calib: torch.Tensor,
                        configs: Sequence[tuple[int, int | None]] = ((2, 4),), *,
                        seeds: Sequence[int] = (0, 1, 2, 3, 4), epochs: int = 3, lr: float = 1e-3,
                        fake_quant: Callable = fake_quantize, progress: bool = True) -> dict:
    """QAT against its decisive control, paired by seed: is it the quantizer in the loop, or more training?

    QAT fine-tunes a trained model *through* its fake quantizers. Any gain over post-training
    quantization (PTQ) mixes two causes: the quantizer in the loop, and simply ``epochs`` more epochs
    of training. The control trains the **float** model with the same recipe (same start, epochs, lr,
    batch 64, and seed ``s``: the same shuffle) and quantizes it afterwards. For a weight/activation
    config ``(b_w, b_a)`` and each seed ``s`` the arms are

    - ``"qat"``: weights per tensor (symmetric min-max, recomputed every forward), activations
      calibrated once (percentile) on ``X_calib``; ``epochs`` of :func:`qat_finetune` with seed ``s``;
    - ``"qat_per_channel"``: the same with weights per output channel (its fair comparison is
      ``"ptq_per_channel"`` and ``"ft_ptq_per_channel"``);
    - ``"ft_ptq_per_tensor"`` / ``"ft_ptq_per_channel"``: the float model after
      :func:`models.train` with seed ``s`` and the same recipe, then PTQ with percentile activations
      calibrated on ``X_calib`` and weights per tensor / per output channel;
    - ``"ptq_per_tensor"`` / ``"ptq_per_channel"``: PTQ of the untouched model (no training, so the
      same value on every seed).

    The float model is fine-tuned **once per seed** and serves every config. Paired differences
    :math:`d_s = \\text{qat}_s - \\text{arm}_s` go to :func:`course_lib.stats.paired_difference`.
    With ``weight_bits=1`` the weights are binarized (``alpha`` per output channel), so the
    per-tensor and per-channel arms coincide.

    Parameters
    ----------
    model : nn.Module
        The trained float model (not modified).
    split : data.Split
        Trained on ``X_train, y_train``; scored on ``X_val`` and ``X_test``.
    X_calib : Tensor
        Calibration inputs (e.g. 256 training rows).
    configs : sequence of (weight_bits, act_bits)
        ``weight_bits`` an int >= 1, ``act_bits`` an int >= 2 or None (activations in float).
    seeds : sequence of int >= 0, at least 2
    epochs : int >= 1, default=3
    lr : float > 0, default=1e-3
    fake_quant : callable, default=fake_quantize
        ``fake_quant(x, scale, zero_point, num_bits)``, e.g. a learner's own.
    progress : bool, default=True
        A tqdm bar over seeds.

    Returns
    -------
    dict
        ``"seed"``: array of the seeds; ``"epochs"``; and for each config label (``"W2A4"``,
        ``"W1"``) a dict mapping ``"<arm>_val"`` and ``"<arm>_test"`` (arm in :data:`QAT_ARMS`) to
        arrays of shape ``(len(seeds),)`` (accuracies).
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        if not isinstance(getattr(split, name, None), torch.Tensor):
            raise TypeError(f"split must be a data.Split with tensor {name}, got {type(split).__name__}")
    X_calib = check_tensor("X_calib", X_calib)
    if isinstance(configs, (str, bytes)) or not isinstance(configs, Sequence) or not configs:
        raise ValueError(f"configs must be a non-empty sequence of (weight_bits, act_bits), got {configs!r}")
    checked = []
    for config in configs:
        if not (isinstance(config, Sequence) and len(config) == 2):
            raise ValueError(f"configs must hold (weight_bits, act_bits) pairs, got {config!r}")
        wb = check_int("weight_bits", config[0], 1)
        checked.append((wb, None if config[1] is None else check_int("act_bits", config[1], 2)))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of ints, got {type(seeds).__name__}")
    seeds = [check_int("seed", s, 0) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds for a paired interval, got {seeds!r}")
    epochs = check_int("epochs", epochs, 1)
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"lr must be a float > 0, got {lr!r}")
    if not callable(fake_quant):
        raise TypeError(f"fake_quant must be callable, got {type(fake_quant).__name__}")

    def ptq(m: nn.Module, wb: int, ab: int | None, per_channel: bool) -> nn.Module:
        return calibrate(prepare_fake_quant(m, wb, ab, per_channel=per_channel, fake_quant=fake_quant),
                         X_calib, "percentile")

    def scores(m: nn.Module) -> tuple[float, float]:
        return models.evaluate(m, split.X_val, split.y_val), models.evaluate(m, split.X_test, split.y_test)

    labels = [_config_label(wb, ab) for wb, ab in checked]
    acc: dict = {label: {f"{a}_{p}": [] for a in QAT_ARMS for p in ("val", "test")} for label in labels}
    fixed = {label: {pc: scores(ptq(model, wb, ab, pc)) for pc in (False, True)}
             for label, (wb, ab) in zip(labels, checked)}                 # no training: seed-free
    for seed in tqdm(seeds, desc="seeds", disable=not progress, leave=False):
        tuned = copy.deepcopy(model)
        models.set_seed(seed)                                             # any dropout: same stream in both arms
        models.train(tuned, split.X_train, split.y_train, epochs=epochs, lr=lr, batch_size=64, seed=seed,
                     progress=False)
        for label, (wb, ab) in zip(labels, checked):
            qat = {}
            for pc in ((False,) if wb == 1 else (False, True)):           # binary: alpha per channel either way
                qat[pc] = ptq(model, wb, ab, pc)
                models.set_seed(seed)
                qat_finetune(qat[pc], split.X_train, split.y_train, epochs=epochs, lr=lr, seed=seed)
            ft_per_tensor = scores(ptq(tuned, wb, ab, False))
            arms = {"qat": scores(qat[False]), "qat_per_channel": scores(qat.get(True, qat[False])),
                    "ptq_per_tensor": fixed[label][False], "ptq_per_channel": fixed[label][True],
                    "ft_ptq_per_tensor": ft_per_tensor,                     # binary: alpha per channel either way
                    "ft_ptq_per_channel": ft_per_tensor if wb == 1 else scores(ptq(tuned, wb, ab, True))}
            for arm, (val, test) in arms.items():
                acc[label][f"{arm}_val"].append(val)
                acc[label][f"{arm}_test"].append(test)
    out: dict = {"seed": np.array(seeds), "epochs": epochs}
    for label in labels:
        out[label] = {k: np.array(v) for k, v in acc[label].items()}
    return out


# --------------------------------------------------------------------------- real int8 and bf16 kernels
def dynamic_int8(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``: int8 weights, int8 GEMM.

    Weights are quantized once (per tensor, symmetric int8); each call quantizes the input
    activations on the fly from their own min-max, multiplies in int8 with int32 accumulation
    (fbgemm/x86 kernels) and returns float32. The eager ``torch.ao.quantization`` API is
    deprecated in favour of torchao, but still ships in torch 2.13 and runs fast int8 kernels
    on CPU without ``torch.compile``; its deprecation warning is silenced here, on purpose.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecat|quantiz).*")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear},
                                                      dtype=torch.qint8)


def _speed_row(label: str, fp32: nn.Module, other: nn.Module, x: torch.Tensor, x_other: torch.Tensor,
               repeats: int) -> dict:
    with torch.inference_mode():
        t32 = timing.benchmark(lambda: fp32(x), warmup=3, repeats=repeats, device="cpu")
        t8 = timing.benchmark(lambda: other(x_other), warmup=3, repeats=repeats, device="cpu")
    return {"model": label, "batch": len(x), "fp32_ms": t32.median, "fp32_iqr_ms": t32.iqr, "other_ms": t8.median,
            "other_iqr_ms": t8.iqr, "speedup": t32.median / t8.median, "threads": t32.threads}


def int8_vs_fp32(model: nn.Module, x: torch.Tensor, label: str = "", repeats: int = 20) -> dict:
    """Latency (median, IQR) of ``model`` and its :func:`dynamic_int8` copy on ``x``, and their stored bytes."""
    q = dynamic_int8(model)
    row = _speed_row(label, model.eval(), q, x, x, repeats)
    row.update(fp32_bytes=state_dict_bytes(model), int8_bytes=state_dict_bytes(q))
    with torch.inference_mode():
        row["max_abs_diff"] = float((model(x) - q(x)).abs().max())
    return row


def bf16_vs_fp32(model: nn.Module, x: torch.Tensor, label: str = "", repeats: int = 20) -> dict:
    """Latency of ``model`` in float32 and of a bfloat16 copy (weights and inputs) on ``x``."""
    half = copy.deepcopy(model).to(torch.bfloat16).eval()
    return _speed_row(label, model.eval(), half, x, x.to(torch.bfloat16), repeats)


def binary_storage_bytes(w: torch.Tensor) -> dict[str, int]:
    """Bytes of a binarized weight as actually stored: float32 +-1, one bool/int8 per sign, packed bits.

    Every variant adds the float32 ``alpha`` (one per output channel). torch has no 1-bit dtype;
    only ``numpy.packbits`` (8 signs per byte) approaches the theoretical 32x.
    """
    alpha, b = binarize(w.detach().float())
    extra = alpha.numel() * 4
    packed = np.packbits((b > 0).flatten().numpy()).nbytes
    return {"float32": w.numel() * 4, "binary float32": b.numel() * 4 + extra,
            "binary bool/int8": b.numel() + extra, "binary packed bits": packed + extra}


def matmul_formats(n: int = 4096, device: str = "cuda", repeats: int = 20) -> list[dict]:
    """Time an ``n x n`` GEMM in fp32, fp16, bf16, int8 (``torch._int_mm``) and fp8 (``torch._scaled_mm``).

    int8: both operands symmetric per-tensor quantized (:func:`minmax_qparams`), int32 accumulation,
    result rescaled by ``s_a * s_b``. fp8: e4m3 with a per-tensor scale ``amax / 448``. Both low-precision
    GEMMs want the second operand column-major. fp8 needs a GPU of compute capability 8.9 or newer
    (H100, L4, ...). Each row: median ms, TFLOP/s, speedup over fp32, relative error vs the fp32 result.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    ref = a @ b
    sa, za = minmax_qparams(a, 8, symmetric=True)
    sb, zb = minmax_qparams(b, 8, symmetric=True)
    a8 = quantize_affine(a, sa, 0, 8, signed=True).to(torch.int8)
    b8 = quantize_affine(b, sb, 0, 8, signed=True).to(torch.int8).t().contiguous().t()   # column-major
    runs = {"fp32": lambda: a @ b, "fp16": (lambda a16, b16: lambda: a16 @ b16)(a.half(), b.half()),
            "bf16": (lambda a16, b16: lambda: a16 @ b16)(a.bfloat16(), b.bfloat16()),
            "int8": lambda: torch._int_mm(a8, b8).float() * (sa * sb)}
    fp8_ok = device != "cuda" or torch.cuda.get_device_capability() >= (8, 9)
    if fp8_ok and hasattr(torch, "float8_e4m3fn"):
        s_a, s_b = (t.abs().max().float() / 448.0 for t in (a, b))
        a_f8, b_f8 = (a / s_a).to(torch.float8_e4m3fn), (b / s_b).to(torch.float8_e4m3fn).t().contiguous().t()
        runs["fp8 e4m3"] = lambda: torch._scaled_mm(a_f8, b_f8, scale_a=s_a, scale_b=s_b, out_dtype=torch.bfloat16)
    rows = []
    for name, fn in runs.items():
        t = timing.benchmark(fn, warmup=3, repeats=repeats, device=device)
        err = float((fn().float() - ref).norm() / ref.norm())
        rows.append({"format": name, "median_ms": t.median, "iqr_ms": t.iqr, "TFLOP/s": 2 * n ** 3 / t.median / 1e9,
                     "relative error": err, "device": t.device})
    for row in rows:
        row["speedup vs fp32"] = rows[0]["median_ms"] / row["median_ms"]
    return rows


def packed_state_dict(model: nn.Module, num_bits: int) -> dict[str, torch.Tensor]:
    """What a deployment would store: every Conv2d/Linear weight as symmetric per-channel codes packed
    ``8 // num_bits`` to a byte (``num_bits`` in 1, 2, 4, 8; 1 bit: ``numpy.packbits`` of the signs), one
    float32 scale per output channel, and the float32 biases.

    Unpacking: 8 bits are int8 codes; 2 and 4 bits hold ``code + 2^(b-1)`` in the low bits first; 1 bit is
    ``numpy.unpackbits`` (1 = +alpha). Measure with :func:`tensor_bytes` (the tensors) or
    :func:`state_dict_bytes`-like ``torch.save`` sizes (the file adds a header per tensor).
    """
    if num_bits not in (1, 2, 4, 8):
        raise ValueError(f"num_bits must be one of 1, 2, 4, 8, got {num_bits!r}")
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.detach()
        if num_bits == 1:
            alpha, b = binarize(w)
            out[f"{name}.weight"] = torch.from_numpy(np.packbits((b > 0).flatten().numpy()))
            out[f"{name}.scale"] = alpha.flatten().float()
        else:
            scales, _ = per_channel_qparams(w, 0, num_bits, symmetric=True)
            qmin, qmax = code_range(num_bits, signed=True)
            codes = torch.round(w / scales.view(-1, *[1] * (w.ndim - 1))).clamp(qmin, qmax).flatten()
            if num_bits == 8:
                packed = codes.to(torch.int8)
            else:
                per_byte = 8 // num_bits
                u = (codes - qmin).to(torch.uint8)
                u = torch.cat([u, u.new_zeros(-len(u) % per_byte)]).view(-1, per_byte)        # (bytes, per_byte)
                packed = sum(u[:, i] << (num_bits * i) for i in range(per_byte)).to(torch.uint8)
            out[f"{name}.weight"], out[f"{name}.scale"] = packed, scales.float()
        if m.bias is not None:
            out[f"{name}.bias"] = m.bias.detach().float()
    return out


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors themselves: ``sum(t.nbytes)``."""
    return int(sum(t.nbytes for t in tensors.values()))


# --------------------------------------------------------------------------- integer-only inference
def symmetric_scale(x: torch.Tensor, num_bits: int = 8, restricted: bool = False) -> float:
    """Scale of a symmetric quantizer: PyTorch's observer convention or the restricted range.

    .. math::  s = \\frac{\\max|x|}{(2^b - 1)/2} \\text{ (codes } [-2^{b-1}, 2^{b-1}-1]), \\qquad
               s_r = \\frac{\\max|x|}{2^{b-1} - 1} \\text{ (codes } \\pm(2^{b-1}-1))

    With the observer convention ``+max|x|`` maps to ``(2^b - 1)/2 = 127.5`` at 8 bits, rounds to 128 and
    is clipped to 127 (its straight-through gradient is then 0); the restricted range represents
    ``+-max|x|`` exactly and keeps the grid symmetric (``-128`` is never used).

    Taught in: 02_quantization, section 1.
    """
    _check_float_tensor("x", x)
    amax = float(x.detach().abs().max())
    levels = 2 ** (check_int("num_bits", num_bits, 2) - 1) - 1 if restricted else (2 ** num_bits - 1) / 2
    return max(amax / levels, EPS)


def _check_code_tensor(name: str, t: object, ndim: int) -> torch.Tensor:
    check_tensor(name, t)
    if t.dtype != torch.int8:
        raise TypeError(f"{name} must be an int8 tensor, got dtype {t.dtype}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    return t


def int8_linear(q_x: torch.Tensor, x_zp: int, q_w: torch.Tensor, w_scale: float | torch.Tensor, x_scale: float,
                bias: torch.Tensor | None, y_scale: float, y_zp: int) -> torch.Tensor:
    """An integer-only ``nn.Linear``: int8 input and weight codes in, int8 output codes out.

    With ``x = s_x (q_x - z_x)``, ``w_c = s_{w,c} q_{w,c}`` (symmetric weights) and ``y = s_y (q_y - z_y)``:

    .. math::  \\text{acc}_{n,c} = \\sum_k q_{x,nk} q_{w,ck} - z_x \\sum_k q_{w,ck} + q_{b,c}, \\qquad
               q_{b,c} = \\mathrm{round}\\Big(\\frac{b_c}{s_x s_{w,c}}\\Big)

    .. math::  q_{y,nc} = \\mathrm{clamp}\\big(\\mathrm{round}(M_c\\, \\text{acc}_{n,c}) + z_y,\\ -128,\\ 127\\big),
               \\qquad M_c = \\frac{s_x s_{w,c}}{s_y}

    The products and the bias are integers (int32 on hardware; int64 here, which never overflows
    for ``K < 2^16``); the zero-point cross term ``z_x \\sum_k q_w`` depends only on the weights and is
    precomputed once. The only real number is the multiplier ``M`` (a fixed-point int32 and a shift on
    integer-only hardware, see :func:`quantize_multiplier`).

    Parameters
    ----------
    q_x : int8 Tensor (N, K)
    x_zp : int in [-128, 127]
    q_w : int8 Tensor (C, K), symmetric codes (zero point 0)
    w_scale : float > 0, or float Tensor (C,) > 0 (per output channel)
    x_scale : float > 0
    bias : float Tensor (C,) or None
    y_scale : float > 0
    y_zp : int in [-128, 127]

    Returns
    -------
    int8 Tensor (N, C)

    Rules
    -----
    Rounding is half to even (``torch.round``), in float64; outputs saturate at -128 and 127.

    References
    ----------
    Jacob, B. et al. (2018). Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference. CVPR.

    Taught in: 02_quantization, section 7b.
    """
    q_x, q_w = _check_code_tensor("q_x", q_x, 2), _check_code_tensor("q_w", q_w, 2)
    if q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_w must have shape (C, K={q_x.shape[1]}), got {tuple(q_w.shape)}")
    x_zp, y_zp = _check_zero_point(x_zp, -128, 127), _check_zero_point(y_zp, -128, 127)
    x_scale, y_scale = _check_scale(x_scale), _check_scale(y_scale)
    C = q_w.shape[0]
    s_w = w_scale.double() if isinstance(w_scale, torch.Tensor) else torch.full((C,), _check_scale(w_scale))
    if s_w.shape != (C,) or not bool((s_w > 0).all()):
        raise ValueError(f"w_scale must be a float > 0 or a tensor of shape ({C},) > 0, got {w_scale!r}")
    acc = q_x.long() @ q_w.long().T - x_zp * q_w.long().sum(1)          # (N, C): cross term per channel
    if bias is not None:
        acc = acc + torch.round(bias.double() / (x_scale * s_w)).long()     # int32 bias, scale s_x s_w
    M = x_scale * s_w.double() / y_scale                                     # (C,)
    return (torch.round(M * acc) + y_zp).clamp(-128, 127).to(torch.int8)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One ``Conv2d`` equal to ``bn(conv(x))`` in eval mode (BatchNorm folded into the weights).

    .. math::  W'_c = \\frac{\\gamma_c}{\\sqrt{\\sigma^2_c + \\epsilon}} W_c, \\qquad
               b'_c = \\beta_c + \\frac{\\gamma_c (b_c - \\mu_c)}{\\sqrt{\\sigma^2_c + \\epsilon}}

    Folding comes before quantization: the int8 model has no BatchNorm, only the folded conv.

    Taught in: 02_quantization, section 7b.
    """
    folded = copy.deepcopy(conv).eval()
    factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)             # (C_out,)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        folded.weight.mul_(factor.view(-1, *[1] * (conv.weight.ndim - 1)))
        folded.bias = nn.Parameter(bn.bias.detach() + (bias - bn.running_mean) * factor)
    return folded


def quantize_multiplier(M: float) -> tuple[int, int]:
    """A real multiplier ``0 < M < 1`` as a Q31 fixed-point int and a right shift: ``M ~ m0 2^-31 2^-shift``.

    ``m0`` lies in ``[2^30, 2^31)``, so it keeps 31 significant bits (relative error below ``2^-30``).

    Taught in: 02_quantization, section 7b.
    """
    if not 0 < M < 1:
        raise ValueError(f"M must be a float in (0, 1), got {M!r}")
    mantissa, exponent = math.frexp(M)                  # M = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = round(mantissa * 2 ** 31)
    if m0 == 2 ** 31:
        m0, exponent = 2 ** 30, exponent + 1
    return m0, -exponent


def requantize_fixed_point(acc: torch.Tensor, m0: int, shift: int, zero_point: int) -> torch.Tensor:
    """int8 codes ``clamp(round(acc m0 / 2^(31 + shift)) + zero_point)`` in integer arithmetic only
    (a multiply and a rounding right shift, ties away from zero upwards, as in gemmlowp)."""
    total = 31 + shift
    return ((acc.long() * m0 + (1 << (total - 1))) >> total).add(zero_point).clamp(-128, 127).to(torch.int8)


def static_int8(model: nn.Module, X_calib: torch.Tensor) -> nn.Module:
    """Static post-training int8 of a ``SmallCNN``-like model (FX graph mode, x86 backend).

    Conv+ReLU pairs are fused, weights are quantized per channel, and every activation gets a
    scale and zero point from the calibration batch ``X_calib`` (observers), so the whole forward
    runs int8 kernels between one quantize at the input and one dequantize at the output.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (X_calib[:1],))
        with torch.no_grad():
            prepared(X_calib)
        return convert_fx(prepared)


def static_int8_vs_fp32(model: nn.Module, X_calib: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *,
                        batches: Sequence[int] = (1, 64), rounds: int = 8) -> tuple[list[dict], nn.Module]:
    """Accuracy, stored bytes and latency (``timing.compare``, interleaved, one thread) of ``model`` and
    its :func:`static_int8` copy at each batch size. Returns one row per batch and the int8 model."""
    q = static_int8(model, X_calib)
    acc32, acc8 = models.evaluate(model, X, y), models.evaluate(q, X, y)
    rows = []
    for batch in batches:
        x = X[:batch]
        runs = timing.compare({"fp32": lambda: model(x), "int8": lambda: q(x)}, repeats=3, rounds=rounds)
        rows.append({"batch": batch, "fp32 accuracy": acc32, "int8 accuracy": acc8,
                     "fp32 bytes": state_dict_bytes(model), "int8 bytes": state_dict_bytes(q),
                     "fp32 (ms)": runs["fp32"].median, "int8 (ms)": runs["int8"].median,
                     "speedup": timing.speedup(runs["fp32"], runs["int8"])})
    return rows, q


# --------------------------------------------------------------------------- finer scales, codebooks
def group_quantize(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric codes with one scale per group of ``group_size`` consecutive entries of the last dim.

    .. math::  s_g = \\max\\Big(\\frac{\\max_{i \\in g} |w_i|}{(2^b - 1)/2},\\ 2^{-23}\\Big), \\qquad
               q_i = \\mathrm{clamp}\\big(\\mathrm{round}(w_i / s_g),\\ -2^{b-1},\\ 2^{b-1}-1\\big)

    (the symmetric convention of :func:`minmax_qparams` and :func:`per_channel_qparams`, applied to each
    group). This is the weight-only scheme of today's int4 LLM quantizers (groups of 32-128 along the
    input dim).

    Returns
    -------
    (Tensor, Tensor)
        ``codes``: int64 shaped like ``w``; ``scales``: float32 of shape ``(*w.shape[:-1], K // group_size)``.

    Rules
    -----
    ``bits`` an int in [2, 16]; ``group_size`` an int >= 1 dividing the last dim ``K``; round half to even.

    Taught in: 02_quantization, section 4b.
    """
    _check_float_tensor("w", w, min_ndim=1)
    bits, group_size = check_int("bits", bits, 2), check_int("group_size", group_size, 1)
    if bits > 16 or w.shape[-1] % group_size:
        raise ValueError(f"need bits in [2, 16] and group_size dividing {w.shape[-1]}, got {bits}, {group_size}")
    qmin, qmax = code_range(bits, signed=True)
    groups = w.detach().double().reshape(*w.shape[:-1], -1, group_size)          # (..., G, g)
    scales = (groups.abs().amax(-1) / ((qmax - qmin) / 2)).float().clamp(min=EPS)   # (..., G) float32
    codes = torch.round(groups / scales.double().unsqueeze(-1)).clamp(qmin, qmax)
    return codes.reshape(w.shape).to(torch.int64), scales


def _group_fake(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``w`` rebuilt from :func:`group_quantize` of its rows ``(C_out, rest)``, the last group zero-padded."""
    rows = w.reshape(w.shape[0], -1)
    padded = F.pad(rows, (0, -rows.shape[1] % group_size))                       # zeros do not change max|w|
    codes, scales = group_quantize(padded, bits, group_size)
    w_hat = (codes.view(*scales.shape, group_size) * scales.unsqueeze(-1)).reshape(padded.shape)
    return w_hat[:, :rows.shape[1]].reshape(w.shape).to(w.dtype)


def kmeans_quantize(w: torch.Tensor, bits: int, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight sharing (Deep Compression): ``2^bits`` shared values found by k-means (Lloyd) on ``w``.

    Init: centroids linearly spaced from ``min(w)`` to ``max(w)`` (Han et al.'s linear init, which
    keeps the rare large weights). Then ``iters`` rounds of: assign each weight to its nearest
    centroid (a tie goes to the lower index), move each centroid to the mean of its weights (an
    empty cluster keeps its value). Finally assign once more. Computed in float64 (1-D: the
    codebook stays sorted, so nearest = between the midpoints). scikit-learn's ``KMeans`` with this
    init, ``n_init=1``, ``max_iter=iters`` and ``tol=0`` gives the same clusters.

    Returns
    -------
    (Tensor, Tensor)
        ``index``: int64 shaped like ``w``; ``codebook``: float32 of shape ``(2^bits,)``;
        ``codebook[index]`` is the quantized weight.

    Rules
    -----
    ``w`` a non-empty floating-point tensor; ``bits`` an int >= 1; ``iters`` an int >= 0.

    Taught in: 02_quantization, section 4b.
    """
    _check_float_tensor("w", w)
    bits, iters = check_int("bits", bits, 1), check_int("iters", iters, 0)
    flat = w.detach().double().flatten()
    codebook = torch.linspace(float(flat.min()), float(flat.max()), 2 ** bits, dtype=torch.float64)

    def nearest(c: torch.Tensor) -> torch.Tensor:                                # c sorted: cut at midpoints
        return torch.bucketize(flat, (c[1:] + c[:-1]) / 2)                      # a tie goes to the lower index

    for _ in range(iters):
        index = nearest(codebook)
        sums = torch.zeros_like(codebook).index_add_(0, index, flat)
        counts = torch.zeros_like(codebook).index_add_(0, index, torch.ones_like(flat))
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)   # stays sorted in 1-D
    return nearest(codebook).view(w.shape), codebook.float()


SCHEMES = ("per tensor", "per channel", "per group 64", "per group 32", "per group 16", "k-means")


def quantize_weights_scheme(model: nn.Module, bits: int, scheme: str) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are quantized by ``scheme`` (one of :data:`SCHEMES`)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme in ("per tensor", "per channel"):
        return quantize_weights(model, bits, per_channel=scheme == "per channel")
    qmodel = copy.deepcopy(model)
    with torch.no_grad():
        for m in qmodel.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if scheme == "k-means":
                    index, codebook = kmeans_quantize(m.weight, bits)
                    m.weight.copy_(codebook[index])
                else:
                    m.weight.copy_(_group_fake(m.weight, bits, int(scheme.split()[-1])))
    return qmodel.eval()


def scheme_size_bytes(model: nn.Module, bits: int, scheme: str) -> float:
    """Stored bytes under ``scheme``: ``n b / 8`` per weight tensor plus its float32 scales (one per tensor,
    per output channel or per group of a row, the last group of a row padded) or its float32 codebook
    of ``2^b`` values; every other tensor (biases) keeps its float32 bytes."""
    total = 0.0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if not (name == "weight" and isinstance(m, (nn.Conv2d, nn.Linear))):
                total += p.numel() * p.element_size()
                continue
            row = p[0].numel()
            fixed = {"per tensor": 1, "per channel": p.shape[0], "k-means": 2 ** bits}
            extra = fixed[scheme] if scheme in fixed else p.shape[0] * -(-row // int(scheme.split()[-1]))
            total += p.numel() * bits / 8 + 4 * extra
    return total


def scheme_sweep(model: nn.Module, X: torch.Tensor, y: torch.Tensor, bits: Sequence[int] = (8, 4, 3, 2),
                 schemes: Sequence[str] = SCHEMES) -> list[dict]:
    """Weight-only PTQ of ``model`` under every scheme and bit width: rows ``scheme, bits, accuracy,
    size_bytes, correct`` (``correct``: the per-example 0/1 numpy array, for paired comparisons)."""
    rows = []
    for scheme in schemes:
        for b in bits:
            right = (models.predict_proba(quantize_weights_scheme(model, b, scheme), X).argmax(1) == y).numpy()
            rows.append({"scheme": scheme, "bits": b, "accuracy": float(right.mean()),
                         "size_bytes": scheme_size_bytes(model, b, scheme), "correct": right})
    return rows


def simulate_dynamic_int8(model: nn.Module, x: torch.Tensor, act_bits: int = 7) -> torch.Tensor:
    """What ``quantize_dynamic``'s int8 Linear computes, simulated in float64 for a Sequential model.

    Each Linear's input is quantized from its own min-max (0 included) onto the unsigned codes
    ``[0, 2^act_bits - 1]`` (torch's ``reduce_range=True`` gives 7 bits, ``[0, 127]``), its weight per tensor
    symmetric int8 (``MinMaxObserver`` qint8 convention); the product runs in float on the
    dequantized values. Returns the logits.
    """
    act_bits = check_int("act_bits", act_bits, 2)
    h = x
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                s, z = minmax_qparams(h, act_bits)
                h_hat = dequantize_affine(quantize_affine(h, s, z, act_bits), s, z)
                sw, _ = minmax_qparams(m.weight, 8, symmetric=True)
                w_hat = dequantize_affine(quantize_affine(m.weight, sw, 0, 8, signed=True), sw, 0)
                h = F.linear(h_hat, w_hat, m.bias)
            else:
                h = m(h)
    return h


def activation_observer(backend: str = "x86") -> nn.Module:
    """The activation observer of ``get_default_qconfig_mapping(backend)`` (what static int8 calibrates with)."""
    from torch.ao.quantization import get_default_qconfig_mapping

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        return get_default_qconfig_mapping(backend).global_qconfig.activation()


def equalize_pair(model: nn.Module) -> nn.Module:
    """Cross-layer equalization (Nagel et al., 2019) of a ``SmallCNN``'s conv1 -> ReLU -> conv2: an equivalent copy.

    With :math:`r_1^{(i)} = \\max|W_1[i]|` (conv1's output channel ``i``) and :math:`r_2^{(i)} = \\max|W_2[:, i]|`
    (conv2's input channel ``i``), dividing conv1's channel (weight and bias) by
    :math:`s_i = \\sqrt{r_1^{(i)} / r_2^{(i)}}` and multiplying conv2's input channel by it leaves the function
    unchanged (ReLU is positively homogeneous) and gives both ranges the value :math:`\\sqrt{r_1^{(i)} r_2^{(i)}}`.
    It undoes :func:`rescale_channel` exactly: that rescaling multiplies :math:`s_i` by the factor.
    """
    out = copy.deepcopy(model)
    conv1, conv2 = out.features[0], out.features[2]
    with torch.no_grad():
        r1 = conv1.weight.abs().amax(dim=(1, 2, 3))                               # (C,)
        r2 = conv2.weight.abs().amax(dim=(0, 2, 3))                               # (C,)
        s = torch.sqrt(r1 / r2.clamp(min=EPS)).clamp(min=EPS)
        conv1.weight /= s.view(-1, 1, 1, 1)
        conv1.bias /= s
        conv2.weight *= s.view(1, -1, 1, 1)
    return out


def mse_clip_weight(w: torch.Tensor, bits: int, steps: int = 100) -> torch.Tensor:
    """Symmetric per-output-channel quantization of ``w`` with each channel's range chosen to minimise the MSE.

    For channel ``c`` the range is :math:`t\\,\\max|w_c|` with :math:`t \\in \\{1/\\text{steps}, \\dots, 1\\}`; the scale
    is :func:`minmax_qparams`' symmetric rule on that range and the weights beyond it are clipped. Returns the
    quantized weight (float, ``w``'s shape): clipping error traded against rounding error, as the MSE
    calibration of activations does.
    """
    bits, steps = check_int("bits", bits, 2), check_int("steps", steps, 1)
    qmin, qmax = code_range(bits, signed=True)
    rows = w.detach().reshape(w.shape[0], -1).double()                          # (C, n)
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps                  # (T,)
    scales = (rows.abs().amax(1, keepdim=True) * t / ((qmax - qmin) / 2)).clamp(min=EPS)   # (C, T)
    q = torch.round(rows[:, None, :] / scales[:, :, None]).clamp(qmin, qmax) * scales[:, :, None]   # (C, T, n)
    best = (q - rows[:, None, :]).pow(2).mean(-1).argmin(1)                     # (C,)
    return q[torch.arange(len(rows)), best].reshape(w.shape).to(w.dtype)


def quantize_weights_mse(model: nn.Module, bits: int) -> nn.Module:
    """A copy of ``model`` whose Conv2d/Linear weights are replaced by :func:`mse_clip_weight` (weight-only PTQ)."""
    qmodel = copy.deepcopy(model)
    with torch.no_grad():
        for m in qmodel.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(mse_clip_weight(m.weight, bits))
    return qmodel.eval()


class SharedWeightLayer(nn.Module):
    """A Conv2d or Linear whose weight is ``codebook[index]``: k-means weight sharing with a trainable codebook.

    Autograd's backward of the lookup sums the weight gradients of every entry that shares a value,
    :math:`\\partial L / \\partial c_k = \\sum_{i:\\,\\text{index}_i = k} \\partial L / \\partial w_i` — Deep Compression's
    codebook fine-tuning. The indices stay fixed; the bias trains as usual.
    """

    def __init__(self, layer: nn.Module, bits: int, iters: int = 20) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"layer must be an nn.Conv2d or nn.Linear, got {type(layer).__name__}")
        index, codebook = kmeans_quantize(layer.weight, bits, iters)
        self.layer = layer
        self.layer.weight.requires_grad_(False)
        self.register_buffer("index", index)
        self.codebook = nn.Parameter(codebook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.codebook[self.index]                                            # weight's shape
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def kmeans_finetune(model: nn.Module, bits: int, split, *, epochs: int, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every Conv2d/Linear weight shared by k-means (:class:`SharedWeightLayer`), then
    ``epochs`` of :func:`models.train` on ``split``'s training part that update only the codebooks and biases."""
    shared = copy.deepcopy(model)
    for parent in list(shared.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                setattr(parent, name, SharedWeightLayer(child, bits))
    if epochs > 0:
        models.set_seed(seed)
        with timing.num_threads(1):
            models.train(shared, split.X_train, split.y_train, epochs=check_int("epochs", epochs, 0), lr=lr, seed=seed,
                         progress=False)
    return shared.eval()


# --------------------------------------------------------------------------- plots
def plot_bit_sweep(rows_by_model: dict[str, list[dict]], title: str = "weight-only PTQ: accuracy and size"):
    """Test accuracy (left, with 95 % Wilson intervals when rows hold ``"correct"``) and weight bytes
    (right, log) against bit width, one line per model."""
    import matplotlib.pyplot as plt

    from .stats import accuracy_interval
    fig, (ax, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for (name, rows), color in zip(rows_by_model.items(), ["tab:blue", "tab:orange", "tab:green"]):
        quant = [r for r in rows if r["bits"] < 32]
        acc = np.array([100 * r["accuracy"] for r in quant])
        if all("correct" in r for r in quant):
            ivs = [accuracy_interval(r["correct"]) for r in quant]
            yerr = [acc - np.array([100 * iv.low for iv in ivs]), np.array([100 * iv.high for iv in ivs]) - acc]
        else:
            yerr = None
        ax.errorbar([r["bits"] for r in quant], acc, yerr=yerr, fmt="o-", color=color, capsize=3, label=name)
        ax.axhline(100 * rows[0]["accuracy"], color=color, ls=":", lw=1)
        right.plot([r["bits"] for r in rows], [r["size_bytes"] / 1024 for r in rows], "s-", color=color, label=name)
    ax.set(xlabel="weight bits", ylabel="test accuracy (%)", title="accuracy, 95% interval (dotted: float32)")
    right.set(xlabel="weight bits", ylabel="weights + scales (KiB)", yscale="log", title="size")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig, ax


def plot_quantization_grid(w: torch.Tensor, num_bits: int, scale: float, zero_point: int = 0, signed: bool = True):
    """Histogram of ``w`` with the grid of representable values ``scale * (q - zero_point)`` and the clipping range."""
    import matplotlib.pyplot as plt
    qmin, qmax = code_range(num_bits, signed)
    values = w.detach().flatten().float()
    w_hat = dequantize_affine(quantize_affine(values, scale, zero_point, num_bits, signed), scale, zero_point)
    lo, hi = scale * (qmin - zero_point), scale * (qmax - zero_point)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(values.numpy(), bins=120, color="lightsteelblue", label="weights")
    grid = scale * (np.arange(qmin, qmax + 1) - zero_point)
    if grid.size <= 64:
        ax.vlines(grid, 0, ax.get_ylim()[1] * 0.15, color="black", lw=0.8, label="grid")
    ax.axvspan(lo, hi, color="tab:green", alpha=0.08, label="range")
    rmse = float(((w_hat - values) ** 2).mean().sqrt())
    clipped = float(((values < lo) | (values > hi)).float().mean())
    ax.set(xlabel="weight value", ylabel="count",
           title=f"{num_bits} bits, scale {scale:.4g}: RMSE {rmse:.2e}, {100 * clipped:.1f} % clipped")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def plot_round_trip_error(x: torch.Tensor, scale: float, zero_point: int, num_bits: int = 8):
    """Round-trip error ``dequantize(quantize(x)) - x`` against ``x``: a +-scale/2 sawtooth inside the range,
    growing linearly (clipping) outside it."""
    import matplotlib.pyplot as plt
    qmin, qmax = code_range(num_bits)
    err = dequantize_affine(quantize_affine(x, scale, zero_point, num_bits), scale, zero_point) - x
    lo, hi = scale * (qmin - zero_point), scale * (qmax - zero_point)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(x.numpy(), err.numpy(), color="tab:blue", lw=0.8, label="round-trip error")
    ax.axhspan(-scale / 2, scale / 2, color="tab:green", alpha=0.15, label="+-scale/2")
    for edge in (lo, hi):
        ax.axvline(edge, color="tab:red", ls="--", lw=1)
    ax.set(xlabel="x", ylabel="x_hat - x", title=f"{num_bits} bits, scale {scale:.3g}, zero point {zero_point}: "
           f"range [{lo:.3g}, {hi:.3g}] (red)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax
