"""Compressing and explaining a small transformer: group-wise int-k weights, GPTQ, SmoothQuant, the KV cache,
head pruning, and token attributions scored against a ground truth.

The references of chapter 08's exercises (:func:`quantize_groupwise`, :func:`smoothquant_scales`,
:func:`attention_rollout`) come first, then the lab helpers the notebook calls. Every quantized model here
is *simulated*: weights are replaced by their dequantized values (``s * q``), so accuracy is exact while
speed is not that of an integer kernel; stored bytes are counted from the codes and scales.

Taught in: 08_transformer
"""
from __future__ import annotations

import copy
import logging
import math
import re

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import stats
from .transformer import KVCache, TinyGPT
from .validation import check_float, check_int, check_module, check_tensor

__all__ = ["quantize_groupwise", "smoothquant_scales", "attention_rollout", "group_codes", "pack_int4", "unpack_int4",
           "stored_bytes", "block_linears", "linear_inputs", "gptq_quantize", "quantize_weights", "answer_metrics",
           "plant_outliers", "w8a8", "smooth", "kv_cache_bytes", "head_gradients", "head_importance", "prune_heads",
           "token_attributions", "hit_rate", "randomized", "weight_quantization_sweep", "head_pruning_study",
           "QuantizedKVCache", "cached_decode", "kv_cache_study", "DequantLinear", "dequantizing_model",
           "dequant_latency", "awq_scales", "awq_search", "awq", "quantize_keep_salient", "keep_salient_study",
           "import_torchao",
           "torchao_weight_only"]


# ----------------------------------------------------------------------------- exercises (references)
def quantize_groupwise(weight: Tensor, bits: int, group_size: int) -> Tensor:
    """Symmetric round-to-nearest quantization with one scale per group of ``group_size`` input columns.

    Row ``i``'s columns ``[g G, (g + 1) G)`` form group ``g``; with :math:`q_{max} = 2^{b-1} - 1`,

    .. math:: s_{ig} = \\max_{j \\in g} |W_{ij}| / q_{max}, \\qquad
              \\hat W_{ij} = s_{ig}\\,\\mathrm{clamp}(\\mathrm{round}(W_{ij} / s_{ig}), -q_{max}, q_{max})

    (``torch.round``: halves to even); a group of zeros gets ``s = 1``. ``group_size = in_features``
    is per-channel quantization. Returns the dequantized weight, same shape and dtype.

    Raises ValueError if ``weight`` is not 2-D, ``bits`` not in [2, 8] or ``group_size`` does not
    divide ``in_features``.

    Examples
    --------
    >>> quantize_groupwise(torch.tensor([[1.0, -0.5, 0.2, 0.0]]), 2, 2)
    tensor([[ 1., -0.,  0.,  0.]])
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    out_f, in_f = weight.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or in_f % group_size:
        raise ValueError(f"group_size must be a positive int dividing in_features = {in_f}, got {group_size!r}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().reshape(out_f, in_f // group_size, group_size)          # (out, groups, G)
    scale = w.abs().amax(dim=2, keepdim=True) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.round(w / scale).clamp(-qmax, qmax) * scale).reshape(out_f, in_f)


def smoothquant_scales(act_absmax: Tensor, weight: Tensor, alpha: float = 0.5) -> Tensor:
    """SmoothQuant's per-input-channel migration scales (Xiao et al., 2023).

    .. math:: s_j = \\frac{\\max(|X_j|)^{\\alpha}}{\\max(|W_{:,j}|)^{1-\\alpha}}

    with both maxima floored at ``1e-5``; ``act_absmax`` ``(in,)`` is the calibration max of ``|X_j|``,
    ``weight`` ``(out, in)`` the next Linear's weight (its max runs over the output dim 0). Dividing
    ``X_j`` by ``s_j`` and multiplying ``W_{:,j}`` by ``s_j`` leaves ``X W^T`` unchanged.

    Raises ValueError if ``alpha`` is not in [0, 1] or the shapes do not match.

    Examples
    --------
    >>> smoothquant_scales(torch.tensor([4.0, 1.0]), torch.tensor([[1.0, 1.0], [-4.0, 0.25]]), 0.5)
    tensor([1.0000, 1.0000])
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a float in [0, 1], got {alpha!r}")
    if act_absmax.dim() != 1 or weight.dim() != 2 or weight.shape[1] != act_absmax.shape[0]:
        raise ValueError(f"act_absmax must be (in,) and weight (out, in), got {tuple(act_absmax.shape)} and "
                         f"{tuple(weight.shape)}")
    w_absmax = weight.detach().abs().amax(dim=0).clamp_min(1e-5)
    return act_absmax.detach().clamp_min(1e-5).pow(alpha) / w_absmax.pow(1 - alpha)


def attention_rollout(attentions: list[Tensor]) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): attention propagated through the residual stream.

    Each layer's weights ``(B, H, T, T)`` are averaged over heads and mixed with the identity for the
    residual connection, :math:`\\hat A_l = \\mathrm{rownorm}(\\tfrac12 \\bar A_l + \\tfrac12 I)`; the
    rollout multiplies them from the first layer up, :math:`R = \\hat A_L \\cdots \\hat A_2 \\hat A_1`
    ``(B, T, T)``: row ``i`` says how much each input token flows into position ``i``.

    Raises ValueError on an empty list or shapes that are not ``(B, H, T, T)`` alike.
    """
    if not attentions or any(a.dim() != 4 or a.shape != attentions[0].shape or a.shape[-1] != a.shape[-2]
                             for a in attentions):
        raise ValueError("attentions must be a non-empty list of (B, H, T, T) tensors of one shape")
    B, _, T, _ = attentions[0].shape
    eye = torch.eye(T, dtype=attentions[0].dtype)
    rollout = eye.expand(B, T, T)
    for a in attentions:
        a_hat = 0.5 * a.detach().mean(dim=1) + 0.5 * eye                        # (B, T, T)
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        rollout = a_hat @ rollout
    return rollout


# ----------------------------------------------------------------------------- bytes and packing
def group_codes(weight: Tensor, bits: int, group_size: int, *, full_range: bool = False,
                scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor]:
    """The int8 codes ``(out, in)`` and scales ``(out, in / G)`` behind :func:`quantize_groupwise`.

    ``full_range=False`` (the course's convention): :math:`s = \\max|W_g| / (2^{b-1} - 1)`, codes
    :math:`\\mathrm{round}(W / s)` in :math:`[-(2^{b-1} - 1), 2^{b-1} - 1]`, exactly :func:`quantize_groupwise`.

    ``full_range=True`` (torchao's and ``torch.ao`` observers' symmetric convention): the two's-complement
    range :math:`[-2^{b-1}, 2^{b-1} - 1]` with :math:`s = \\max|W_g| / ((q_{max} - q_{min}) / 2)
    = \\max|W_g| / (2^{b-1} - \\tfrac12)` (127.5 at int8, 7.5 at int4), and codes
    :math:`\\mathrm{clamp}(\\mathrm{round}(W \\cdot \\mathrm{fl}(1/s)), q_{min}, q_{max})`: multiplied by the
    float reciprocal, as torchao's ``quantize_affine`` does. That reciprocal moves :math:`W/s` by at most an
    ulp, which flips a code only where :math:`W/s` sits on a rounding boundary, mostly at a group's most
    negative weight (:math:`W/s = -(2^{b-1} - \\tfrac12)` in exact arithmetic): it gets :math:`-2^{b-1}` or
    :math:`-2^{b-1} + 1` by the last bit. A group of zeros gets ``s = 1`` either way (torchao: ``s = eps``;
    the codes are 0 in both). Scales are returned in ``scale_dtype`` (float16: what :func:`stored_bytes`
    counts; the weight's dtype to dequantize exactly).
    """
    out_f, in_f = weight.shape
    w = weight.detach().reshape(out_f, in_f // group_size, group_size)        # (out, groups, G)
    qmax = 2 ** (bits - 1) - 1
    qmin, denominator = (-qmax - 1, qmax + 0.5) if full_range else (-qmax, qmax)   # (qmax - qmin) / 2 or qmax
    scale = w.abs().amax(dim=2, keepdim=True) / denominator
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(w * (1.0 / scale)) if full_range else torch.round(w / scale)
    codes = q.clamp(qmin, qmax).to(torch.int8).reshape(out_f, in_f)
    return codes, scale.squeeze(2).to(scale_dtype)


def pack_int4(codes: Tensor) -> Tensor:
    """Two signed 4-bit codes per byte: ``(c[2k] + 8) | (c[2k + 1] + 8) << 4``, uint8 of half the length."""
    if codes.numel() % 2 or codes.min() < -8 or codes.max() > 7:
        raise ValueError("codes must hold an even number of values in [-8, 7]")
    u = (codes.flatten().to(torch.int16) + 8).to(torch.uint8)
    return u[0::2] | (u[1::2] << 4)


def unpack_int4(packed: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_int4`: int8 codes of ``shape``."""
    low, high = (packed & 0x0F).to(torch.int16) - 8, (packed >> 4).to(torch.int16) - 8
    return torch.stack([low, high], dim=1).flatten().to(torch.int8).reshape(shape)


def block_linears(model: TinyGPT) -> dict[str, nn.Linear]:
    """The Linear layers inside the transformer blocks (what weight-only quantization replaces)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("h.")}


def stored_bytes(model: TinyGPT, bits: int | None, group_size: int | None) -> int:
    """Bytes to store ``model`` with its block Linears' weights as ``bits``-bit codes plus one float16 scale per group.

    Codes are packed (``bits * numel / 8`` bytes); everything else (embeddings, LayerNorms, biases; the
    tied head counted once) stays float16. ``bits=None``: all float16; ``group_size=None``: per channel.
    """
    seen, total = set(), 0
    quantized = {id(m.weight) for m in block_linears(model).values()} if bits else set()
    for p in model.parameters():                       # parameters() yields a tied tensor once
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in quantized:
            groups = p.shape[0] * (p.shape[1] // (group_size or p.shape[1]))
            total += math.ceil(p.numel() * bits / 8) + 2 * groups
        else:
            total += 2 * p.numel()
    return total


# ----------------------------------------------------------------------------- calibration, GPTQ, RTN
@torch.no_grad()
def linear_inputs(model: nn.Module, X: Tensor, names: list[str]) -> dict[str, Tensor]:
    """The inputs ``(N * T, in)`` each named Linear receives when ``model`` runs on ``X`` (forward hooks)."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].reshape(-1, i[0].shape[-1])))
             for n in names]
    try:
        model(X)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def gptq_quantize(weight: Tensor, H: Tensor, bits: int, group_size: int, damp: float = 0.01) -> Tensor:
    """GPTQ (Frantar et al., 2023): quantize column by column, spreading each column's error onto the rest.

    With :math:`H = 2 X^\\top X / N` from calibration inputs (plus ``damp * mean(diag H)`` on the
    diagonal) and :math:`U` the upper Cholesky factor of :math:`H^{-1}`, column ``j`` is rounded
    (group scales taken from the *updated* weights when a group starts) and the not-yet-quantized
    columns absorb its error: :math:`W_{:,k} \\mathrel{-}= \\frac{W_{:,j} - \\hat W_{:,j}}{U_{jj}} U_{jk}`,
    :math:`k > j`. This minimises :math:`\\lVert X W^\\top - X \\hat W^\\top \\rVert^2` greedily (OBQ).
    Returns the dequantized weight.
    """
    W = weight.detach().double().clone()
    out_f, in_f = W.shape
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    qmax = 2 ** (bits - 1) - 1
    for j in range(in_f):
        if j % group_size == 0:
            scale = W[:, j:j + group_size].abs().amax(dim=1) / qmax
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        Q[:, j] = torch.round(W[:, j] / scale).clamp(-qmax, qmax) * scale
        err = (W[:, j] - Q[:, j]) / U[j, j]
        W[:, j + 1:] -= err[:, None] * U[j, j + 1:][None, :]
    return Q.to(weight.dtype)


@torch.no_grad()
def quantize_weights(model: TinyGPT, bits: int, group_size: int | None = None, *, method: str = "rtn",
                     calibration: Tensor | None = None, full_range: bool = False) -> TinyGPT:
    """A copy of ``model`` whose block Linears hold ``bits``-bit group-wise weights (dequantized).

    ``method``: ``"rtn"`` (round to nearest, :func:`quantize_groupwise`) or ``"gptq"`` (:func:`gptq_quantize`,
    Hessians from the float model's inputs on ``calibration``). ``group_size=None``: per channel.
    ``full_range=True`` (RTN only): torchao's symmetric convention instead, codes in
    :math:`[-2^{b-1}, 2^{b-1} - 1]` and :math:`s = \\max|W_g| / (2^{b-1} - 1/2)` (see :func:`group_codes`);
    the weights are ``codes * s`` in the weight's dtype, as torchao dequantizes them.
    """
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    if method == "gptq" and calibration is None:
        raise ValueError("calibration must be given for method='gptq', got None")
    if full_range and method != "rtn":
        raise ValueError(f"full_range=True is implemented for method='rtn' only, got method={method!r}")
    out = copy.deepcopy(model).eval()
    layers = block_linears(out)
    inputs = linear_inputs(model, calibration, list(layers)) if method == "gptq" else {}
    for name, layer in layers.items():
        g = group_size or layer.in_features
        if full_range:
            codes, scale = group_codes(layer.weight, bits, g, full_range=True, scale_dtype=layer.weight.dtype)
            w = codes.to(scale.dtype).reshape(scale.shape[0], scale.shape[1], g) * scale[:, :, None]
            layer.weight.copy_(w.reshape(layer.weight.shape))
        elif method == "rtn":
            layer.weight.copy_(quantize_groupwise(layer.weight, bits, g))
        else:
            x = inputs[name].double()
            layer.weight.copy_(gptq_quantize(layer.weight, 2 * x.T @ x / len(x), bits, g))
    return out


@torch.no_grad()
def answer_metrics(model: nn.Module, X: Tensor, y: Tensor) -> dict:
    """Exact match and perplexity of the answer token: per-example ``correct`` (0/1) and ``nll``, and intervals.

    Perplexity is :math:`\\exp(\\frac1N \\sum_i -\\log p(y_i \\mid x_i))`; its interval is the
    percentile bootstrap of the mean NLL over examples, exponentiated.
    """
    logits = model(X)
    correct = (logits.argmax(1) == y).numpy().astype(int)
    nll = F.cross_entropy(logits, y, reduction="none").double().numpy()
    iv = stats.bootstrap_interval(nll)
    return {"correct": correct, "nll": nll, "accuracy": stats.accuracy_interval(correct),
            "perplexity": (math.exp(iv.estimate), math.exp(iv.low), math.exp(iv.high))}


# ----------------------------------------------------------------------------- SmoothQuant
@torch.no_grad()
def plant_outliers(model: TinyGPT, channels: list[int], factor: float, layer: int = 0) -> TinyGPT:
    """Function-preserving outliers: scale ``ln_1``'s gain and bias of ``channels`` by ``factor`` in block
    ``layer`` and divide the same input columns of ``attn.c_attn`` by ``factor``. The LayerNorm's output
    (the Linear's input) gets outlier channels; the Linear's output is unchanged (up to rounding)."""
    factor = check_float("factor", factor, 0.0, low_inclusive=False)
    out = copy.deepcopy(model).eval()
    block = out.h[layer]
    block.ln_1.weight[channels] *= factor
    block.ln_1.bias[channels] *= factor
    block.attn.c_attn.weight[:, channels] /= factor
    return out


def _fake_quant_tensor(x: Tensor, bits: int = 8) -> Tensor:
    """Dynamic symmetric per-tensor quantization of an activation: one scale ``max|x| / 127`` for the call."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax().clamp_min(1e-8) / qmax
    return torch.round(x / scale).clamp(-qmax, qmax) * scale


class _W8A8Linear(nn.Module):
    """A Linear whose input is quantized per tensor (dynamic) and whose weight is int8 per output channel."""

    def __init__(self, linear: nn.Linear, bits: int):
        super().__init__()
        self.bits = bits
        self.weight = nn.Parameter(quantize_groupwise(linear.weight, bits, linear.in_features), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(_fake_quant_tensor(x, self.bits), self.weight, self.bias)


@torch.no_grad()
def w8a8(model: TinyGPT, bits: int = 8) -> TinyGPT:
    """A copy of ``model`` with every block Linear simulated as W8A8 (per-tensor activations, per-channel weights)."""
    out = copy.deepcopy(model).eval()
    for name, layer in list(block_linears(out).items()):
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent), child, _W8A8Linear(layer, bits))
    return out


@torch.no_grad()
def smooth(model: TinyGPT, calibration: Tensor, alpha: float, scales_fn=smoothquant_scales) -> TinyGPT:
    """SmoothQuant applied to every LayerNorm -> Linear pair (``ln_1 -> attn.c_attn``, ``ln_2 -> mlp.c_fc``).

    The calibration max of each input channel and the Linear's weight give ``s`` (``scales_fn``); the
    LayerNorm's gain and bias are divided by ``s`` and the Linear's input columns multiplied by it: the
    float function is unchanged, the activations lose their outliers.
    """
    out = copy.deepcopy(model).eval()
    pairs = [(f"h.{i}.ln_1", f"h.{i}.attn.c_attn") for i in range(out.n_layer)] + \
            [(f"h.{i}.ln_2", f"h.{i}.mlp.c_fc") for i in range(out.n_layer)]
    inputs = linear_inputs(out, calibration, [lin for _, lin in pairs])
    for ln_name, lin_name in pairs:
        ln, lin = out.get_submodule(ln_name), out.get_submodule(lin_name)
        s = scales_fn(inputs[lin_name].abs().amax(dim=0), lin.weight, alpha)
        ln.weight /= s
        ln.bias /= s
        lin.weight *= s
    return out


# ----------------------------------------------------------------------------- KV cache, heads
def kv_cache_bytes(n_layer: int, n_head: int, head_dim: int, seq_len: int, batch: int = 1,
                   bytes_per_element: int = 4, scale_bytes: int = 0) -> int:
    """Bytes of a KV cache: keys and values (2) for every layer, head, position and sequence.

    .. math:: 2 \\cdot L \\cdot n_h \\cdot T \\cdot B \\cdot (d_h \\cdot \\text{bytes per element}
              + \\text{scale bytes})

    ``scale_bytes``: the bytes of one scale per (layer, K or V, head, position, sequence), as a
    quantized cache with per-token, per-head scales stores (:class:`QuantizedKVCache`; 0 for a float cache).
    """
    for name, value in (("n_layer", n_layer), ("n_head", n_head), ("head_dim", head_dim), ("seq_len", seq_len),
                        ("batch", batch), ("bytes_per_element", bytes_per_element)):
        check_int(name, value, 1)
    check_int("scale_bytes", scale_bytes, 0)
    return 2 * n_layer * n_head * seq_len * batch * (head_dim * bytes_per_element + scale_bytes)


def _quantize_per_token(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Symmetric int codes of ``x`` ``(B, nh, T, hs)`` with one float16 scale per (sequence, head, position)."""
    qmax = 2 ** (bits - 1) - 1
    scale = (x.abs().amax(dim=-1, keepdim=True) / qmax).half()                     # (B, nh, T, 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round(x / scale.float()).clamp(-qmax, qmax).to(torch.int8)
    return codes, scale


class QuantizedKVCache(KVCache):
    """A KV cache that stores int-``bits`` codes (int8 tensors) and one float16 scale per token and head.

    Each appended key (and value) vector of one head at one position, :math:`k \\in \\mathbb R^{d_h}`, is
    stored as :math:`s = \\max_i |k_i| / q_{max}` (float16) and codes :math:`\\mathrm{round}(k / s)` in
    :math:`[-q_{max}, q_{max}]`, :math:`q_{max} = 2^{b-1} - 1`; attention reads :math:`s \\cdot` codes.
    Per-token scales are what a cache needs: a new token's scale is fixed when it arrives, and no
    later token can change it. Every cached position is quantized, the current one included (the
    strictest variant; some implementations keep the most recent tokens in float). Codes of fewer than 8
    bits are still held one per int8 byte here (:meth:`nbytes` counts the tensors as they are).
    """

    def __init__(self, n_layer: int, bits: int = 8):
        super().__init__(n_layer)
        self.bits = check_int("bits", bits, 2)
        if bits > 8:
            raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
        self.codes: dict[str, list[Tensor | None]] = {"k": [None] * n_layer, "v": [None] * n_layer}
        self.scales: dict[str, list[Tensor | None]] = {"k": [None] * n_layer, "v": [None] * n_layer}

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        out = []
        for name, x in (("k", k), ("v", v)):
            codes, scale = _quantize_per_token(x.detach(), self.bits)
            if self.codes[name][layer] is not None:
                codes = torch.cat([self.codes[name][layer], codes], dim=2)
                scale = torch.cat([self.scales[name][layer], scale], dim=2)
            self.codes[name][layer], self.scales[name][layer] = codes, scale
            out.append(codes.float() * scale.float())                                # (B, nh, t, hs)
        return out[0], out[1]

    @property
    def length(self) -> int:
        first = self.codes["k"][0]
        return 0 if first is None else first.shape[2]

    def nbytes(self) -> int:
        """Bytes held by the codes and scales (measured: ``numel * element_size``)."""
        return sum(t.numel() * t.element_size() for d in (self.codes, self.scales) for ts in d.values()
                   for t in ts if t is not None)


@torch.no_grad()
def cached_decode(model: TinyGPT, idx: Tensor, cache: KVCache) -> Tensor:
    """Feed ``idx`` ``(B, T)`` one token at a time through ``cache`` (empty) and return the last step's logits."""
    model._check(idx)
    if cache.length:
        raise ValueError(f"cache must be empty, got one holding {cache.length} positions")
    for t in range(idx.shape[1]):
        logits = model.sequence_logits(idx[:, t:t + 1], cache=cache)[:, -1]
    return logits


@torch.no_grad()
def kv_cache_study(model: TinyGPT, X: Tensor, y: Tensor, bits: tuple[int, ...] = (8, 4)) -> dict:
    """Token-by-token decoding of ``X`` with a float32 cache and with :class:`QuantizedKVCache` of each ``bits``.

    Returns, per cache (``"float32"``, ``"int8"``, ...): ``correct`` (0/1 per sequence), ``logits``,
    ``bytes_per_token`` (measured ``nbytes`` / (sequences x positions)) and ``vs_float``
    (:func:`course_lib.stats.paired_bootstrap` of exact match against the float cache, per sequence).
    """
    rows = {}
    for b in (None, *bits):
        cache = KVCache(model.n_layer) if b is None else QuantizedKVCache(model.n_layer, b)
        logits = cached_decode(model, X, cache)
        rows["float32" if b is None else f"int{b}"] = {
            "logits": logits, "correct": (logits.argmax(1) == y).numpy().astype(int),
            "bytes_per_token": cache.nbytes() / X.numel(), "nbytes": cache.nbytes()}
    for r in rows.values():
        r["vs_float"] = stats.paired_bootstrap(r["correct"], rows["float32"]["correct"])
    return rows


def head_gradients(model: TinyGPT, X: Tensor, y: Tensor) -> Tensor:
    """Per-example gate gradients :math:`g_{x,h} = \\partial L(x) / \\partial \\xi_h` at ``xi = 1``,
    ``(N, n_layer, n_head)``, ``L(x)`` the cross-entropy of example ``x``.

    One backward pass: the head's output :math:`y_h(x)` enters the loss as :math:`\\xi_h\\, y_h(x)`, so
    :math:`g_{x,h} = \\langle y_h(x), \\partial L / \\partial (\\xi_h y_h)(x) \\rangle`, and the gradient of the
    summed loss with respect to example ``x``'s head outputs is that of ``L(x)`` alone (examples do not interact).
    """
    model.eval()
    outs: list[Tensor] = []

    def keep(_module, args):
        args[0].retain_grad()
        outs.append(args[0])

    hooks = [block.attn.c_proj.register_forward_pre_hook(keep) for block in model.h]
    try:
        with torch.enable_grad():
            xi = torch.ones(model.n_layer, model.n_head, requires_grad=True)        # outputs need grads
            loss = F.cross_entropy(model(X, head_mask=xi), y, reduction="sum")
            loss.backward(inputs=outs)
    finally:
        for h in hooks:
            h.remove()
    N, T, C = outs[0].shape
    per = [(z * z.grad).view(N, T, model.n_head, C // model.n_head).sum((1, 3)) for z in outs]
    return torch.stack(per, 1).detach()                                            # (N, L, H)


def head_importance(model: TinyGPT, X: Tensor, y: Tensor) -> Tensor:
    """Michel et al. (2019): :math:`I_h = \\mathbb E_x \\left|\\partial L(x) / \\partial \\xi_h\\right|` at
    ``head_mask`` ``xi = 1``: the absolute value of each example's gate gradient (:func:`head_gradients`),
    then averaged over ``(X, y)``, so gradients of opposite sign do not cancel (which
    :math:`|\\mathbb E_x\\, \\partial L(x) / \\partial \\xi_h|` would let them); ``(n_layer, n_head)``."""
    return head_gradients(model, X, y).abs().mean(0)


@torch.no_grad()
def prune_heads(model: TinyGPT, X: Tensor, y: Tensor, order: Tensor) -> list[float]:
    """Accuracy on ``(X, y)`` with the first ``k`` heads of ``order`` (flat indices) masked, ``k = 0 .. n_heads``."""
    mask, accs = torch.ones(model.n_layer * model.n_head), []
    for k in range(len(order) + 1):
        if k:
            mask[order[k - 1]] = 0.0
        accs.append(float((model(X, head_mask=mask.view(model.n_layer, model.n_head)).argmax(1) == y).double().mean()))
    return accs


# ----------------------------------------------------------------------------- token attributions
def _target_logit(model: TinyGPT, tok: Tensor, y: Tensor, head_mask: Tensor | None = None) -> Tensor:
    return model.forward_embeddings(tok, head_mask)[:, -1].gather(1, y[:, None]).squeeze(1)       # (N,)


def token_attributions(model: TinyGPT, X: Tensor, y: Tensor, method: str, *, steps: int = 16,
                       head_mask: Tensor | None = None) -> Tensor:
    """One score per input token for the answer logit ``y``, ``(N, T)``.

    ``method``:

    - ``"attention"``: last layer's attention from the last position, mean over heads;
    - ``"rollout"``: last row of :func:`attention_rollout`;
    - ``"attention x gradient"``: :math:`\\sum_{l,h} |A \\odot \\partial y / \\partial A|` of the last row;
    - ``"IG"``: Integrated Gradients on the token embeddings with a zero-embedding baseline (positions
      kept), ``steps`` midpoints, summed over the embedding dim;
    - ``"occlusion"``: drop of the answer logit when one token's embedding is set to zero
      (``head_mask``, ``(n_layer, n_head)``, masks heads of the model explained; occlusion only).
    """
    model.eval()
    if method in ("attention", "rollout"):
        att = model.attentions(X)
        return att[-1].mean(1)[:, -1] if method == "attention" else attention_rollout(att)[:, -1]
    if method == "attention x gradient":
        for block in model.h:
            block.attn.keep_attention = True
        try:
            logit = _target_logit(model, model.embed(X), y)
            atts = [block.attn.att for block in model.h]
            grads = torch.autograd.grad(logit.sum(), atts)
        finally:
            for block in model.h:
                block.attn.keep_attention, block.attn.att = False, None
        return sum((a * g).detach()[:, :, -1].abs().sum(1) for a, g in zip(atts, grads))
    tok = model.embed(X).detach()                                                    # (N, T, C)
    if method == "IG":
        total = torch.zeros_like(tok)
        for k in range(steps):
            point = ((k + 0.5) / steps * tok).requires_grad_(True)
            total += torch.autograd.grad(_target_logit(model, point, y).sum(), point)[0]
        return (tok * total / steps).sum(-1)
    if method == "occlusion":
        with torch.no_grad():
            base = _target_logit(model, tok, y, head_mask)
            out = torch.zeros(X.shape)
            for t in range(X.shape[1]):
                hidden = tok.clone()
                hidden[:, t] = 0.0
                out[:, t] = base - _target_logit(model, hidden, y, head_mask)
        return out
    raise ValueError(f"method must be one of 'attention', 'rollout', 'attention x gradient', 'IG', 'occlusion', "
                     f"got {method!r}")


def hit_rate(attributions: Tensor, masks: Tensor, n_pairs: int) -> np.ndarray:
    """Per example, 1 if the highest-scored **pair** position (``0 .. n_pairs - 1``) is the ground-truth one.

    A random ranking scores ``1 / n_pairs`` on average; the marker and query positions are not candidates.
    """
    pick = attributions[:, :n_pairs].argmax(dim=1)
    return masks[torch.arange(len(masks)), pick].numpy().astype(int)


@torch.no_grad()
def randomized(model: TinyGPT, seed: int = 0) -> TinyGPT:
    """A copy with every weight re-initialised (the randomised-model control of Adebayo et al., 2018)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = TinyGPT(model.vocab_size, model.block_size, model.n_layer, model.n_head, model.n_embd,
                      model.h[0].mlp.c_fc.out_features // model.n_embd)
    return out.eval()


# ----------------------------------------------------------------------------- studies the notebook runs
def weight_quantization_sweep(model: TinyGPT, X: Tensor, y: Tensor, calibration: Tensor,
                              settings: list[tuple[int, int | None, str]], *, progress: bool = True) -> list[dict]:
    """Quantize ``model`` for each ``(bits, group_size, method)`` and score it on ``(X, y)``.

    Each row holds the setting, the stored bytes (:func:`stored_bytes`), the :func:`answer_metrics` and the
    per-example ``correct`` (for paired comparisons with :func:`course_lib.stats.paired_bootstrap`).
    """
    from tqdm.auto import tqdm

    rows = []
    for bits, group, method in tqdm(settings, desc="quantize", disable=not progress, leave=False):
        q = quantize_weights(model, bits, group, method=method, calibration=calibration)
        m = answer_metrics(q, X, y)
        rows.append({"bits": bits, "group": group or "per channel", "method": method,
                     "bytes": stored_bytes(model, bits, group), **m})
    return rows


def head_pruning_study(models: list[TinyGPT], X: Tensor, y: Tensor, X_val: Tensor, y_val: Tensor, *,
                       n_random: int = 5) -> dict:
    """Accuracy curves when heads are masked one by one, by importance (least important first) or at random.

    Importance (:func:`head_importance`) is measured on the validation split, accuracy on ``(X, y)``.
    For model ``i``, ``n_random`` random orders are drawn from ``torch.Generator`` seeds
    ``100 i + r``. Returns ``{"importance": (n_models, H + 1), "random": (n_models, n_random, H + 1)}``
    arrays of accuracy after ``k = 0 .. H`` heads masked.
    """
    check_int("n_random", n_random, 1)
    by_importance, at_random = [], []
    for i, model in enumerate(models):
        order = head_importance(model, X_val, y_val).flatten().argsort()
        by_importance.append(prune_heads(model, X, y, order))
        n_heads = order.numel()
        at_random.append([prune_heads(model, X, y, torch.randperm(n_heads, generator=torch.Generator().manual_seed(100 * i + r)))
                          for r in range(n_random)])
    return {"importance": np.array(by_importance), "random": np.array(at_random)}


# ----------------------------------------------------------------------------- latency of stored low-bit weights
class DequantLinear(nn.Module):
    """A Linear that **stores** ``bits``-bit codes and float16 group scales and dequantizes them at every call.

    int4 codes are packed two per byte (:func:`pack_int4`); other widths are held one per int8 byte.
    ``forward`` unpacks (int4), casts the codes to float32, multiplies each group by its scale and calls
    ``F.linear``: the simplest weight-only path, ordinary tensor operations and no fused kernel (PyTorch
    also ships fused CPU kernels, ``aten._weight_int4pack_mm_for_cpu`` and ``aten._weight_int8pack_mm``,
    which this class does not use). Its output equals the Linear with :func:`quantize_groupwise` weights (up to float16 scale rounding).
    """

    def __init__(self, linear: nn.Linear, bits: int, group_size: int):
        super().__init__()
        codes, scales = group_codes(linear.weight, bits, group_size)
        self.bits, self.group_size, self.shape = bits, group_size, tuple(codes.shape)
        self.register_buffer("codes", pack_int4(codes) if bits == 4 else codes)
        self.register_buffer("scales", scales)                                       # (out, in / G) float16
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def weight_now(self) -> Tensor:
        codes = unpack_int4(self.codes, self.shape) if self.bits == 4 else self.codes
        out_f, in_f = self.shape
        w = codes.float().view(out_f, in_f // self.group_size, self.group_size) * self.scales.float()[:, :, None]
        return w.view(out_f, in_f)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_now(), self.bias)


@torch.no_grad()
def dequantizing_model(model: TinyGPT, bits: int, group_size: int | None = None) -> TinyGPT:
    """A copy of ``model`` whose block Linears are :class:`DequantLinear` (``group_size=None``: per channel)."""
    check_int("bits", bits, 2)
    out = copy.deepcopy(model).eval()
    for name, layer in list(block_linears(out).items()):
        parent, _, child = name.rpartition(".")
        g = group_size or layer.in_features
        if layer.in_features % g:
            raise ValueError(f"group_size must divide in_features = {layer.in_features}, got {group_size!r}")
        setattr(out.get_submodule(parent), child, DequantLinear(layer, bits, g))
    return out


def dequant_latency(model: TinyGPT, X: Tensor, settings: list[tuple[int, int | None]], *, rounds: int = 5,
                    repeats: int = 3) -> dict:
    """CPU latency of ``model(X)`` in float32 and with each ``(bits, group_size)`` stored and dequantized per call.

    All models are timed in one :func:`course_lib.timing.compare` (interleaved rounds, one thread).
    Returns ``{"float32": Timing, (bits, group): Timing, ...}`` and, under ``"slowdown"``, each setting's
    :func:`course_lib.timing.speedup` of float32 over it (above 1: the dequantizing model is slower).
    """
    from . import timing

    fns = {"float32": lambda: model(X)}
    for bits, group in settings:
        q = dequantizing_model(model, bits, group)
        fns[(bits, group)] = (lambda q=q: q(X))
    names = list(fns)
    runs = timing.compare({str(k): f for k, f in fns.items()}, rounds=rounds, repeats=repeats)
    out = {k: runs[str(k)] for k in names}
    out["slowdown"] = {k: timing.speedup(out[k], out["float32"]) for k in names if k != "float32"}
    return out


# ----------------------------------------------------------------------------- the industry library: torchao
_TORCHAO_NOISE = {  # logger: the one message of its that torchao's import emits on a CPU-only machine
    "torchao": re.compile(r"Failed to load \S*[/\\]torchao[/\\]_C\w*\.\S*so: "),   # its CUDA-only kernel libraries
    "torch.utils._pytree": re.compile(r"<enum 'KernelPreference'> is an Enum subclass "),   # torchao's Enum
}


class _Drop(logging.Filter):
    """Drops the records whose message matches ``pattern`` (at its start); lets every other record through."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def import_torchao():
    """``import torchao``, without the log lines its import prints on a CPU-only machine.

    torchao 0.18's wheel ships CUDA kernel libraries (``_C_mxfp8``, ``_C_cutlass_90a``) and logs a warning
    ``Failed to load .../torchao/_C....so`` for each on a machine without CUDA; it also registers an Enum
    with ``torch.utils._pytree.register_constant``, which torch 2.13 logs as deprecated. Neither affects
    the CPU paths used here. A :class:`logging.Filter` on exactly those two loggers, matching exactly those
    messages, is installed for the import and removed after it: any other warning (from these loggers too)
    still prints, and nothing is filtered later. Returns the ``torchao`` module.
    """
    filters = [(logging.getLogger(name), _Drop(pattern)) for name, pattern in _TORCHAO_NOISE.items()]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        import torchao
        import torchao.quantization                                            # noqa: F401
    finally:
        for logger, f in filters:
            logger.removeFilter(f)
    return torchao


@torch.no_grad()
def torchao_weight_only(model: TinyGPT, bits: int, group_size: int | None = None) -> TinyGPT:
    """A copy of ``model`` whose block Linears torchao quantized weight-only (``torchao.quantization.quantize_``).

    ``bits=8, group_size=None``: ``Int8WeightOnlyConfig()`` (one scale per output row); otherwise
    ``IntxWeightOnlyConfig(weight_dtype=torch.int<bits>, granularity=PerGroup(group_size))``, symmetric with
    zero point 0 (``group_size=None``: ``PerAxis(0)``). Each quantized weight is a torchao tensor subclass
    holding ``qdata`` (int8 codes) and ``scale`` (float32); its forward runs on the CPU. Compare with
    :func:`quantize_weights` ``(..., full_range=True)``.
    """
    check_int("bits", bits, 1)
    import_torchao()
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    if bits == 8 and group_size is None:
        config = Int8WeightOnlyConfig()
    else:
        config = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"),
                                      granularity=PerGroup(group_size) if group_size else PerAxis(0))
    out = copy.deepcopy(model).eval()
    names = set(block_linears(out))
    quantize_(out, config, filter_fn=lambda module, fqn: fqn in names)
    return out


# ----------------------------------------------------------------------------- AWQ
def awq_scales(act_mean_abs: Tensor, alpha: float) -> Tensor:
    """AWQ's per-input-channel scales (Lin et al., 2024): :math:`s_j = \\overline{|X_j|}^{\\,\\alpha}`, normalised
    by :math:`\\sqrt{\\max_j s_j \\min_j s_j}` (so the scales straddle 1); ``act_mean_abs`` floored at ``1e-5``.

    ``alpha = 0`` gives all ones (plain round-to-nearest); larger ``alpha`` scales up the weight columns
    of channels with large activations before quantizing, so that their relative rounding error shrinks.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a float in [0, 1], got {alpha!r}")
    if act_mean_abs.dim() != 1:
        raise ValueError(f"act_mean_abs must be 1-D (in,), got shape {tuple(act_mean_abs.shape)}")
    s = act_mean_abs.detach().clamp_min(1e-5).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def awq_search(weight: Tensor, x: Tensor, bits: int, group_size: int, alphas: tuple[float, ...]) -> dict:
    """Grid search of AWQ's ``alpha`` for one Linear on calibration inputs ``x`` ``(N, in)``.

    For each ``alpha`` the weight is quantized as :math:`Q(W\\,\\mathrm{diag}(s))\\,\\mathrm{diag}(s)^{-1}`
    (:func:`quantize_groupwise`, :func:`awq_scales`) and scored by the output error
    :math:`\\frac1N \\lVert x W^\\top - x \\hat W^\\top \\rVert^2`; the least error wins (ties: the smallest
    ``alpha``). Returns ``{"alpha", "scales", "errors"}`` (``errors``: one per ``alpha``).
    """
    if not alphas:
        raise ValueError("alphas must be a non-empty tuple of floats in [0, 1], got ()")
    x = x.detach().float()
    mean_abs, ref = x.abs().mean(dim=0), x @ weight.detach().T
    errors, scales = [], []
    for a in alphas:
        s = awq_scales(mean_abs, a)
        w_hat = quantize_groupwise(weight.detach() * s, bits, group_size) / s
        errors.append(float(((x @ w_hat.T - ref) ** 2).sum(1).mean()))
        scales.append(s)
    best = int(np.argmin(errors))
    return {"alpha": alphas[best], "scales": scales[best], "errors": errors}


@torch.no_grad()
def awq(model: TinyGPT, calibration: Tensor, bits: int, group_size: int | None = None,
        alphas: tuple[float, ...] = tuple(a / 10 for a in range(11))) -> tuple[TinyGPT, dict]:
    """AWQ-then-RTN copy of ``model``: scales searched for every LayerNorm -> Linear pair, then all block Linears
    quantized group-wise by round to nearest.

    For ``ln_1 -> attn.c_attn`` and ``ln_2 -> mlp.c_fc`` of each block, :func:`awq_search` picks ``alpha``
    on the inputs the Linear receives on ``calibration`` (from the float model); ``1 / s`` is folded into
    the LayerNorm's gain and bias and ``s`` into the Linear's input columns (the float function is
    unchanged), and the scaled weight is what gets quantized. ``attn.c_proj`` and ``mlp.c_proj`` have no
    foldable operation before them here and get plain RTN. Returns the model and ``{linear name: alpha}``.
    """
    check_int("bits", bits, 2)
    out = copy.deepcopy(model).eval()
    pairs = [(f"h.{i}.ln_1", f"h.{i}.attn.c_attn") for i in range(out.n_layer)] + \
            [(f"h.{i}.ln_2", f"h.{i}.mlp.c_fc") for i in range(out.n_layer)]
    inputs = linear_inputs(model, calibration, [lin for _, lin in pairs])
    chosen = {}
    for ln_name, lin_name in pairs:
        ln, lin = out.get_submodule(ln_name), out.get_submodule(lin_name)
        found = awq_search(lin.weight, inputs[lin_name], bits, group_size or lin.in_features, alphas)
        s = found["scales"]
        ln.weight /= s
        ln.bias /= s
        lin.weight *= s
        chosen[lin_name] = found["alpha"]
    return quantize_weights(out, bits, group_size), chosen


# ----------------------------------------------------------------------------- AWQ's mixed-precision contrast
def _n_kept(keep: int | float, in_f: int) -> int:
    """Columns kept of ``in_f``: an int is a count, a float a fraction rounded with ``round`` (at least 1 if > 0)."""
    if isinstance(keep, int):
        if keep > in_f:
            raise ValueError(f"keep must be at most in_features = {in_f} columns, got {keep!r}")
        return keep
    return 0 if keep == 0 else max(1, round(keep * in_f))


@torch.no_grad()
def quantize_keep_salient(model: TinyGPT, bits: int, group_size: int | None, keep: int | float, *,
                          by: str = "activation", calibration: Tensor | None = None,
                          seed: int = 0) -> tuple[TinyGPT, dict[str, Tensor]]:
    """RTN copy of ``model`` with a few input columns of every block Linear kept in float (AWQ, section 2.1).

    For each block Linear :math:`W` ``(out, in)`` the ``n`` columns with the largest score are kept:

    .. math:: \\hat W_{:,j} = W_{:,j} \\;(j \\in K), \\qquad \\hat W_{:,j} = Q(W)_{:,j} \\;(j \\notin K),

    with :math:`Q` = :func:`quantize_groupwise` of the **whole** weight (group scales as in plain RTN, so
    every other weight equals its RTN value) and the score, per ``by``: ``"activation"``, the mean
    :math:`\\overline{|X_j|}` of the Linear's input on ``calibration`` (float model, as :func:`awq`);
    ``"weight"``, the column norm :math:`\\lVert W_{:,j} \\rVert_2`; ``"random"``, a uniform draw
    (``torch.randperm``, one ``torch.Generator`` seeded with ``seed`` walked through the Linears in order).

    Parameters
    ----------
    model : TinyGPT
    bits : int in [2, 8]
    group_size : int dividing every block Linear's in_features, or None (per channel)
    keep : int >= 0 (columns per Linear) or float in [0, 1] (fraction of each Linear's columns)
        A fraction gives ``round(keep * in)`` columns, at least 1 when ``keep > 0``: here 1 % keeps
        1 of 64 and 1 of 128 columns. ``keep=0`` is plain RTN (bit for bit).
    by : {"activation", "weight", "random"}, default="activation"
    calibration : int64 token tensor (N, T), required for ``by="activation"``
    seed : int >= 0, default=0

    Returns
    -------
    the quantized copy, and ``{linear name: kept column indices}`` (largest score first; ties to the
    lower index).

    Raises TypeError / ValueError naming the argument.

    References
    ----------
    J. Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration",
    MLSys 2024, section 2.1 and Table 1.

    Taught in: 08_transformer §3
    """
    check_module("model", model)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int in [2, 8], got {bits!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    layers = block_linears(model)
    if group_size is not None:
        check_int("group_size", group_size, 1)
        if any(l.in_features % group_size for l in layers.values()):
            raise ValueError(f"group_size must divide every block Linear's in_features "
                             f"{sorted({l.in_features for l in layers.values()})} or be None, got {group_size!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"keep must be a float in [0, 1] or a non-negative int, got {keep!r}")
    if (isinstance(keep, int) and keep < 0) or (isinstance(keep, float) and not 0 <= keep <= 1):
        raise ValueError(f"keep must be a float in [0, 1] or a non-negative int, got {keep!r}")
    if by not in ("activation", "weight", "random"):
        raise ValueError(f"by must be 'activation', 'weight' or 'random', got {by!r}")
    if by == "activation" and calibration is None:
        raise ValueError("calibration must be an int64 token tensor (N, T) for by='activation', got None")
    if calibration is not None:
        check_tensor("calibration", calibration)
    seed = check_int("seed", seed, 0)
    inputs = linear_inputs(model, calibration, list(layers)) if by == "activation" else {}
    gen = torch.Generator().manual_seed(seed)
    out, kept = copy.deepcopy(model).eval(), {}
    for name, layer in block_linears(out).items():
        w, n = layer.weight.detach().clone(), _n_kept(keep, layer.in_features)    # (out, in)
        if by == "random":
            score = torch.zeros(layer.in_features)
            score[torch.randperm(layer.in_features, generator=gen)[:n]] = 1.0
        else:
            score = inputs[name].abs().mean(0) if by == "activation" else w.norm(dim=0)   # (in,)
        kept[name] = torch.argsort(score, descending=True, stable=True)[:n]
        layer.weight.copy_(quantize_groupwise(w, bits, group_size or layer.in_features))
        layer.weight[:, kept[name]] = w[:, kept[name]]
    return out, kept


def keep_salient_study(model: TinyGPT, X: Tensor, y: Tensor, calibration: Tensor, bits: int,
                       group_size: int | None, keep: int | float, *, draws: int = 5) -> dict:
    """AWQ's contrast for one setting: which columns kept in float (:func:`quantize_keep_salient`) help most?

    Scores, on ``(X, y)``, the per-example ``correct`` (0/1) of the copies that keep the columns chosen by
    ``"activation"`` (on ``calibration``), by ``"weight"`` norm, and by ``draws`` random draws (seeds
    ``0 .. draws - 1``), for paired comparisons with :mod:`course_lib.stats`. Returns ``{"activation": (N,),
    "weight": (N,), "random": (draws, N), "kept": {...}, "kept weight": {...}, "kept random": [{...}, ...]}``,
    the ``kept`` entries being :func:`quantize_keep_salient`'s column indices per Linear.
    """
    check_int("draws", draws, 1)
    correct = lambda m: answer_metrics(m, X, y)["correct"]                       # noqa: E731
    q_act, kept = quantize_keep_salient(model, bits, group_size, keep, calibration=calibration)
    q_w, kept_w = quantize_keep_salient(model, bits, group_size, keep, by="weight")
    rnd = [quantize_keep_salient(model, bits, group_size, keep, by="random", seed=s) for s in range(draws)]
    return {"activation": correct(q_act), "weight": correct(q_w),
            "random": np.array([correct(q) for q, _ in rnd]), "kept": kept, "kept weight": kept_w,
            "kept random": [k for _, k in rnd]}
