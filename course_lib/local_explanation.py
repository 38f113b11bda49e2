"""Chapter 05 -- local explanation: attributions from scratch, scored against ground truth.

Every attribution method here explains one output, the logit of class ``target``, of a model at
an input ``x`` and returns a tensor shaped like ``x`` (batch included), as Captum's
``attribute(inputs, target=...)`` does; Grad-CAM returns ``(N, 1, h, w)`` at the layer's resolution.

``target`` is one int (the same class for every row) or one int per row (a list or an int64
tensor of length N), each in ``[0, n_classes)``.

The first seven functions are the references of the chapter's exercises; the rest are the helpers
the notebook calls (gradient x input, SmoothGrad, scores against masks, sanity checks, the
attention model).

References
----------
Simonyan, K., Vedaldi, A. & Zisserman, A. (2014). Deep Inside Convolutional Networks. arXiv:1312.6034.
Sundararajan, M., Taly, A. & Yan, Q. (2017). Axiomatic Attribution for Deep Networks. ICML.
Selvaraju, R. R. et al. (2017). Grad-CAM. ICCV.
Zeiler, M. D. & Fergus, R. (2014). Visualizing and Understanding Convolutional Networks. ECCV.
Ribeiro, M. T., Singh, S. & Guestrin, C. (2016). "Why Should I Trust You?". KDD.
Lundberg, S. M. & Lee, S.-I. (2017). A Unified Approach to Interpreting Model Predictions. NeurIPS.
Adebayo, J. et al. (2018). Sanity Checks for Saliency Maps. NeurIPS.

Taught in: 05_local_explanation.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .validation import check_float, check_int, check_module, check_tensor

__all__ = ["saliency", "integrated_gradients", "occlusion", "grad_cam", "exact_shapley", "lime_tabular",
           "deletion_curve", "gradient_x_input", "smoothgrad", "completeness_gap", "deletion_auc",
           "upsample", "pointing_game", "mask_overlap", "score_methods", "randomize_layers", "rank_correlation",
           "AttentionClassifier", "attention_data", "train_attention", "attention_vs_ig"]

MAX_SHAPLEY_FEATURES = 14


# --------------------------------------------------------------------------- argument checks
def _check_x(x: object) -> Tensor:
    x = check_tensor("x", x)
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of shape (N, ...), got shape {tuple(x.shape)} and "
                         f"dtype {x.dtype}; add a batch dim with x.unsqueeze(0)")
    return x


def _targets(target: object, n: int, n_classes: int) -> Tensor:
    """``target`` as an int64 tensor of shape (n,), each in [0, n_classes)."""
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target must be an int or one int per row, got {target!r}")
    if isinstance(target, (int, np.integer)):
        t = torch.full((n,), int(target), dtype=torch.int64)
    else:
        t = torch.as_tensor(target) if isinstance(target, (list, tuple, Tensor, np.ndarray)) else None
        if t is None or t.dtype in (torch.bool,) or t.is_floating_point() or t.is_complex():
            raise TypeError(f"target must be an int or one int per row, got {target!r}")
        if t.shape != (n,):
            raise ValueError(f"target must be an int or one int per row (length {n}), got shape {tuple(t.shape)}")
        t = t.to(torch.int64)
    if ((t < 0) | (t >= n_classes)).any():
        raise ValueError(f"target must be in [0, {n_classes}), got {target!r}")
    return t


def _logit(model: nn.Module, x: Tensor, target: object) -> Tensor:
    """The target logit of every row, shape (N,)."""
    out = model(x)                                                       # (N, C)
    return out.gather(1, _targets(target, len(x), out.shape[1]).view(-1, 1)).squeeze(1)


# --------------------------------------------------------------------------- the exercises
def saliency(model: nn.Module, x: Tensor, target) -> Tensor:
    """Saliency map: the absolute input gradient of the target logit.

    .. math:: S_i = \\left|\\partial f_t(x) / \\partial x_i\\right|

    Parameters
    ----------
    model : nn.Module mapping (N, ...) to logits (N, C).
    x : Tensor of shape (N, ...), floating point.
    target : int or one int per row.

    Returns
    -------
    Tensor shaped like ``x`` (``captum.attr.Saliency(model).attribute(x, target, abs=True)``).

    Taught in: 05_local_explanation, section 1.
    """
    check_module("model", model)
    x = _check_x(x).detach().requires_grad_(True)
    grad, = torch.autograd.grad(_logit(model, x, target).sum(), x)       # rows are independent
    return grad.abs()


def integrated_gradients(model: nn.Module, x: Tensor, target, baseline: Tensor | None = None,
                         steps: int = 50) -> Tensor:
    """Integrated Gradients with the midpoint Riemann sum on the straight path from ``baseline``.

    .. math:: \\mathrm{IG}_i = (x_i - x'_i)\\,\\frac1m \\sum_{k=1}^{m}
              \\frac{\\partial f_t}{\\partial x_i}\\Big(x' + \\tfrac{k - 1/2}{m}(x - x')\\Big)

    ``baseline`` (default zeros) is a tensor broadcastable to ``x``; ``steps`` = m >= 1.
    Matches ``captum.attr.IntegratedGradients`` with ``method="riemann_middle"``.

    Taught in: 05_local_explanation, section 2.
    """
    check_module("model", model)
    x = _check_x(x).detach()
    steps = check_int("steps", steps, 1)
    baseline = torch.zeros_like(x) if baseline is None else check_tensor("baseline", baseline).detach()
    try:
        baseline = baseline.to(x.dtype).expand_as(x)
    except RuntimeError:
        raise ValueError(f"baseline must broadcast to x's shape {tuple(x.shape)}, got {tuple(baseline.shape)}")
    alphas = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps            # (m,)
    shape = (steps,) + (1,) * x.dim()
    path = (baseline + alphas.view(shape) * (x - baseline)).reshape(steps * len(x), *x.shape[1:])
    path.requires_grad_(True)                                            # (m*N, ...)
    t = _targets(target, len(x), model(x[:1]).shape[1]).repeat(steps)
    grad, = torch.autograd.grad(_logit(model, path, t).sum(), path)
    return (x - baseline) * grad.view(steps, *x.shape).mean(0)


def _window_starts(length: int, window: int, stride: int) -> range:
    """Captum's window positions: 0, stride, ... and a last, cut-off window if stride misses the end."""
    return range(0, (math.ceil((length - window) / stride) + 1) * stride, stride)


def _check_window(name: str, value, n_dims: int) -> tuple[int, ...]:
    value = (value,) * n_dims if isinstance(value, (int, np.integer)) and name == "stride" else value
    if not isinstance(value, (tuple, list)) or len(value) != n_dims:
        raise ValueError(f"{name} must be a tuple of {n_dims} ints (one per non-batch dim of x), got {value!r}")
    return tuple(check_int(name, v, 1) for v in value)


def occlusion(model: nn.Module, x: Tensor, target, window, stride, baseline: float = 0.0) -> Tensor:
    """Occlusion: the mean output drop over the windows that cover each input element.

    .. math:: A_i = \\frac{1}{|W_i|} \\sum_{w \\in W_i} f_t(x) - f_t(x_{w \\leftarrow b})

    ``window`` is a tuple with one int per non-batch dim of ``x``; ``stride`` an int or such a tuple,
    at most the window in every dim the window does not cover entirely (ValueError otherwise: some inputs
    would never be occluded), as Captum requires.
    Windows start at 0, s, 2s, ... and a last, cut-off window is added when the stride does not land on
    the end (as in ``captum.attr.Occlusion``).

    Taught in: 05_local_explanation, section 3.
    """
    check_module("model", model)
    x = _check_x(x).detach()
    dims = x.shape[1:]
    window, stride = _check_window("window", window, len(dims)), _check_window("stride", stride, len(dims))
    if any(w > d for w, d in zip(window, dims)):
        raise ValueError(f"window must fit in x's shape {tuple(dims)}, got {window!r}")
    if any(s > w < d for s, w, d in zip(stride, window, dims)):
        raise ValueError(f"stride must be <= window wherever the window is shorter than x (else some inputs "
                         f"are never occluded), "
                         f"got stride {stride!r} for window {window!r}")
    baseline = check_float("baseline", baseline)
    masks = []
    for start in np.ndindex(*[len(_window_starts(d, w, s)) for d, w, s in zip(dims, window, stride)]):
        m = torch.zeros(dims, dtype=x.dtype)
        m[tuple(slice(k * s, k * s + w) for k, s, w in zip(start, stride, window))] = 1
        masks.append(m)
    masks = torch.stack(masks)                                           # (W, ...)
    with torch.no_grad():
        t = _targets(target, len(x), model(x[:1]).shape[1])
        full = _logit(model, x, t)                                       # (N,)
        occluded = x.unsqueeze(0) * (1 - masks.unsqueeze(1)) + baseline * masks.unsqueeze(1)  # (W, N, ...)
        drop = full - _logit(model, occluded.flatten(0, 1), t.repeat(len(masks))).view(len(masks), len(x))
        shape = (len(masks), len(x)) + (1,) * len(dims)
        total = (drop.view(shape) * masks.unsqueeze(1)).sum(0)           # (N, ...)
    return total / masks.sum(0)


def grad_cam(model: nn.Module, layer: nn.Module, x: Tensor, target) -> Tensor:
    """Grad-CAM at a convolutional ``layer``: ReLU of the gradient-weighted sum of its feature maps.

    .. math:: L = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k A^k\\Big), \\qquad
              \\alpha_k = \\frac{1}{hw} \\sum_{u,v} \\frac{\\partial f_t}{\\partial A^k_{uv}}

    Returns a tensor of shape (N, 1, h, w) at the layer's resolution (no upsampling). Matches
    ``captum.attr.LayerGradCam(model, layer).attribute(x, target, relu_attributions=True)``.

    Taught in: 05_local_explanation, section 4.
    """
    check_module("model", model)
    check_module("layer", layer)
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer must be a submodule of model, got a module that model does not contain")
    x = _check_x(x).detach().requires_grad_(True)
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        logit = _logit(model, x, target)
    finally:
        handle.remove()
    A = seen[-1]                                                          # (N, K, h, w)
    if A.dim() != 4:
        raise ValueError(f"layer must output (N, K, h, w) feature maps, got shape {tuple(A.shape)}")
    grad, = torch.autograd.grad(logit.sum(), A)
    alpha = grad.mean(dim=(2, 3), keepdim=True)                          # (N, K, 1, 1)
    return torch.relu((alpha * A).sum(1, keepdim=True)).detach()


def exact_shapley(f: Callable[[np.ndarray], np.ndarray], x, baseline) -> np.ndarray:
    """Exact Shapley values of ``f`` at ``x``, features absent taking ``baseline``'s value.

    .. math:: \\phi_i = \\sum_{S \\subseteq M \\setminus \\{i\\}} \\frac{|S|!\\,(M-|S|-1)!}{M!}
              \\big(v(S \\cup \\{i\\}) - v(S)\\big), \\quad v(S) = f(x_S, x'_{\\bar S})

    All 2^M coalitions go through ``f`` in one (2^M, M) call; M <= 14 (ValueError otherwise).
    Returns a float64 array of shape (M,); efficiency: sum(phi) = f(x) - f(baseline).

    Taught in: 05_local_explanation, section 6.
    """
    x, baseline = np.asarray(x, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if x.ndim != 1 or baseline.shape != x.shape or x.size == 0:
        raise ValueError(f"x and baseline must be 1-D arrays of the same length, got {x.shape} and {baseline.shape}")
    M = x.size
    if M > MAX_SHAPLEY_FEATURES:
        raise ValueError(f"x must have at most {MAX_SHAPLEY_FEATURES} features, got {M}: exact Shapley values "
                         f"need 2^M = {2 ** M} model calls; use KernelSHAP or sampling instead")
    codes = np.arange(2 ** M)
    present = (codes[:, None] >> np.arange(M)) & 1                        # (2^M, M)
    v = np.asarray(f(np.where(present == 1, x, baseline)), dtype=np.float64).reshape(-1)
    size = present.sum(1)
    weight = np.array([math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M) for s in range(M)])
    phi = np.empty(M)
    for i in range(M):
        without = codes[present[:, i] == 0]
        phi[i] = np.sum(weight[size[without]] * (v[without | (1 << i)] - v[without]))
    return phi


def lime_tabular(f: Callable[[np.ndarray], np.ndarray], x, scale, n_samples: int = 2000,
                 kernel_width: float = 0.75, seed: int = 0) -> np.ndarray:
    """LIME for one tabular row: a kernel-weighted linear fit to ``f`` around ``x``.

    Samples z = x + scale * eps, eps ~ N(0, I); distance d = ||eps||_2 / sqrt(M); weight
    pi = exp(-d^2 / kernel_width^2); weighted least squares of f(z) on [1, z]. Returns the M
    coefficients (float64, no intercept).

    Taught in: 05_local_explanation, section 5.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x must be a non-empty 1-D array, got shape {x.shape}")
    M = x.size
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), x.shape)
    if not np.all(scale > 0) or not np.all(np.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    n_samples = check_int("n_samples", n_samples, M + 1)
    kernel_width = check_float("kernel_width", kernel_width, 0.0, np.inf, low_inclusive=False)
    seed = check_int("seed", seed, 0)
    eps = np.random.default_rng(seed).standard_normal((n_samples, M))     # (n, M)
    z = x + scale * eps
    d2 = (eps ** 2).sum(1) / M
    w = np.exp(-(d2 - d2.min()) / kernel_width ** 2)                     # shift: same fit, no underflow
    design = np.hstack([np.ones((n_samples, 1)), z])                      # (n, M+1)
    sw = np.sqrt(w)[:, None]
    y = np.asarray(f(z), dtype=np.float64).reshape(-1)
    coef, *_ = np.linalg.lstsq(design * sw, y * sw[:, 0], rcond=None)
    return coef[1:]


def deletion_curve(model: nn.Module, x: Tensor, target, attribution: Tensor, steps: int = 10,
                   baseline: float = 0.0) -> Tensor:
    """Deletion curve: the target probability as the most-attributed features are set to ``baseline``.

    At step k = 0..steps the top n_k = floor(k * n / steps) features of each row (n = x[0].numel(), all
    channels) are replaced, in decreasing attribution order, ties by lower flat index first. Returns the
    softmax probability of the target, shape (N, steps + 1), in the model's output dtype.

    Taught in: 05_local_explanation, section 7.
    """
    check_module("model", model)
    x = _check_x(x).detach()
    attribution = check_tensor("attribution", attribution)
    if attribution.shape != x.shape:
        raise ValueError(f"attribution must have x's shape {tuple(x.shape)}, got {tuple(attribution.shape)}")
    steps = check_int("steps", steps, 1)
    baseline = check_float("baseline", baseline)
    N, n = len(x), x[0].numel()
    order = torch.sort(attribution.detach().reshape(N, n), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(N, n))   # (N, n)
    counts = torch.tensor([k * n // steps for k in range(steps + 1)])
    deleted = rank.unsqueeze(0) < counts.view(-1, 1, 1)                    # (K, N, n)
    flat = x.reshape(1, N, n)
    xs = torch.where(deleted, torch.as_tensor(baseline, dtype=x.dtype), flat).reshape(-1, *x.shape[1:])
    with torch.no_grad():
        out = model(xs)
        t = _targets(target, N, out.shape[1]).repeat(steps + 1)
        p = torch.softmax(out, dim=1).gather(1, t.view(-1, 1)).view(steps + 1, N)
    return p.T.contiguous()


# --------------------------------------------------------------------------- helpers the notebook calls
def gradient_x_input(model: nn.Module, x: Tensor, target) -> Tensor:
    """x * df_t/dx (signed): the first-order Taylor attribution."""
    x = _check_x(x).detach().requires_grad_(True)
    grad, = torch.autograd.grad(_logit(model, x, target).sum(), x)
    return (x * grad).detach()


def smoothgrad(model: nn.Module, x: Tensor, target, n_samples: int = 20, sigma: float = 0.15,
               seed: int = 0) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean |gradient| over x + N(0, sigma^2) copies."""
    x = _check_x(x).detach()
    gen = torch.Generator().manual_seed(seed)
    noisy = x.unsqueeze(0) + sigma * torch.randn((n_samples,) + x.shape, generator=gen, dtype=x.dtype)
    t = _targets(target, len(x), model(x[:1]).shape[1]).repeat(n_samples)
    return saliency(model, noisy.flatten(0, 1), t).view(n_samples, *x.shape).mean(0)


def completeness_gap(model: nn.Module, x: Tensor, target, attribution: Tensor,
                     baseline: Tensor | None = None) -> Tensor:
    """Per row: sum(attribution) - (f_t(x) - f_t(baseline)), the IG completeness check."""
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    with torch.no_grad():
        return attribution.flatten(1).sum(1) - (_logit(model, x, target) - _logit(model, baseline, target))


def deletion_auc(curve: Tensor) -> Tensor:
    """Area under each deletion curve on [0, 1] (trapezoid rule); lower = more faithful."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


def upsample(cam: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling of an (N, 1, h, w) map to ``size``."""
    return nn.functional.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)


def pointing_game(attribution: Tensor, mask: Tensor) -> Tensor:
    """Per row: 1.0 if the largest |attribution| (summed over channels) lies inside the mask, else 0.0."""
    a = attribution.abs().sum(1).flatten(1)                               # (N, H*W)
    return mask.any(1).flatten(1).gather(1, a.argmax(1, keepdim=True)).squeeze(1).float()


def mask_overlap(attribution: Tensor, mask: Tensor) -> Tensor:
    """Per row: the fraction of the top-k |attribution| pixels inside the mask, k = mask area."""
    a = attribution.abs().sum(1).flatten(1)
    m = mask.any(1).flatten(1)
    k = m.sum(1)
    top = torch.argsort(a, dim=1, descending=True, stable=True)
    hit = m.gather(1, top).float()                                        # (N, H*W) mask value in rank order
    inside = (hit.cumsum(1).gather(1, (k - 1).clamp(min=0).view(-1, 1)).squeeze(1))
    return inside / k.clamp(min=1)


def score_methods(model: nn.Module, x: Tensor, target, mask: Tensor, methods: dict[str, Callable],
                  steps: int = 16) -> list[dict]:
    """Localisation (pointing game, mask overlap), deletion AUC and time per explanation for each method."""
    rows = []
    for name, method in methods.items():
        start = time.perf_counter()
        attr = method(model, x, target)
        elapsed = (time.perf_counter() - start) / len(x)
        if attr.shape != x.shape:                                         # Grad-CAM: layer resolution
            attr = upsample(attr, x.shape[2:])
        curve = deletion_curve(model, x, target, attr.abs(), steps=steps)
        rows.append({"method": name, "pointing game": float(pointing_game(attr, mask).mean()),
                     "mask overlap": float(mask_overlap(attr, mask).mean()),
                     "deletion AUC": float(deletion_auc(curve).mean()), "ms / explanation": 1e3 * elapsed})
    return rows


def randomize_layers(model: nn.Module, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """Cascading randomisation (Adebayo et al. 2018): copies with the top 1, 2, ... layers re-initialised."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]
    out, current = [], copy.deepcopy(model)
    torch.manual_seed(seed)
    for name, _ in layers:
        current = copy.deepcopy(current)
        current.get_submodule(name).reset_parameters()
        out.append((name, current))
    return out


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Mean over rows of the Spearman rank correlation of two maps (flattened)."""
    def ranks(t):
        return torch.argsort(torch.argsort(t.flatten(1), dim=1), dim=1).double()
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean())


# --------------------------------------------------------------------------- attention as explanation
class AttentionClassifier(nn.Module):
    """Embedding -> one attention-pooling head -> linear: logits (N, 2); ``last_attention`` (N, T)."""

    def __init__(self, vocab: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.key = nn.Linear(dim, 1)
        self.out = nn.Linear(dim, 2)

    def forward_embedded(self, e: Tensor) -> Tensor:                     # e: (N, T, D)
        a = torch.softmax(self.key(torch.tanh(e)).squeeze(-1), dim=1)     # (N, T)
        self.last_attention = a.detach()
        return self.out((a.unsqueeze(-1) * e).sum(1))                     # (N, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.forward_embedded(self.embed(tokens))


def attention_data(n: int = 2000, length: int = 12, vocab: int = 10, seed: int = 0):
    """Sequences of tokens; label 1 iff token 1 occurs. ``evidence`` marks the positions holding a 1."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (n, length), generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    pos = torch.randint(0, length, (n,), generator=gen)
    tokens[y == 1, pos[y == 1]] = 1
    return tokens, y, tokens == 1


def train_attention(tokens: Tensor, y: Tensor, seed: int = 0, epochs: int = 15) -> AttentionClassifier:
    """Train an :class:`AttentionClassifier` with Adam (full-batch-free minibatches of 64)."""
    from . import models
    torch.manual_seed(seed)
    model = AttentionClassifier()
    models.train(model, tokens, y, epochs=epochs, lr=1e-2, seed=seed, progress=False)
    return model.eval()


def attention_vs_ig(model: AttentionClassifier, tokens: Tensor, evidence: Tensor, steps: int = 32) -> dict:
    """Pointing game of attention weights and of IG (summed over the embedding) against the evidence."""
    with torch.no_grad():
        model(tokens)
    att = model.last_attention                                            # (N, T)
    e = model.embed(tokens).detach()

    class _Wrapped(nn.Module):
        def forward(self, emb):
            return model.forward_embedded(emb)

    ig = integrated_gradients(_Wrapped(), e, 1, steps=steps).sum(-1)      # (N, T), baseline: zero embedding
    def hit(score):
        return float(evidence.gather(1, score.argmax(1, keepdim=True)).float().mean())
    return {"attention": hit(att), "integrated gradients": hit(ig)}
