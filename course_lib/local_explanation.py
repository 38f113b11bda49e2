"""Chapter 05 -- local explanation: attributions from scratch, scored against ground truth.

Every attribution method here explains one output, the logit of class ``target``, of a model at
an input ``x`` and returns a tensor shaped like ``x`` (batch included), as Captum's
``attribute(inputs, target=...)`` does; Grad-CAM returns ``(N, 1, h, w)`` at the layer's resolution.

``target`` is one int (the same class for every row) or one int per row (a list or an int64
tensor of length N), each in ``[0, n_classes)``.

The first eight functions (to ``cascading_randomization``) are the references of the chapter's
exercises; the rest are the helpers the notebook calls (gradient x input, SmoothGrad, Guided
Backprop, scores against masks with their controls, insertion curves, KernelSHAP with a background,
the attention model and its intervention test, a GAP-head CNN for CAM).

References
----------
Simonyan, K., Vedaldi, A. & Zisserman, A. (2014). Deep Inside Convolutional Networks. arXiv:1312.6034.
Sundararajan, M., Taly, A. & Yan, Q. (2017). Axiomatic Attribution for Deep Networks. ICML.
Selvaraju, R. R. et al. (2017). Grad-CAM. ICCV.
Zeiler, M. D. & Fergus, R. (2014). Visualizing and Understanding Convolutional Networks. ECCV.
Ribeiro, M. T., Singh, S. & Guestrin, C. (2016). "Why Should I Trust You?". KDD.
Lundberg, S. M. & Lee, S.-I. (2017). A Unified Approach to Interpreting Model Predictions. NeurIPS.
Adebayo, J. et al. (2018). Sanity Checks for Saliency Maps. NeurIPS.
Smilkov, D. et al. (2017). SmoothGrad: removing noise by adding noise. arXiv:1706.03825.
Springenberg, J. T. et al. (2015). Striving for Simplicity: The All Convolutional Net. ICLR workshop.
Petsiuk, V., Das, A. & Saenko, K. (2018). RISE: Randomized Input Sampling for Explanation. BMVC.
Samek, W. et al. (2017). Evaluating the visualization of what a deep neural network has learned. IEEE TNNLS.
Sturmfels, P., Lundberg, S. & Lee, S.-I. (2020). Visualizing the Impact of Feature Attribution Baselines. Distill.
Zhou, B. et al. (2016). Learning Deep Features for Discriminative Localization. CVPR.
Jain, S. & Wallace, B. C. (2019). Attention is not Explanation. NAACL.
Wiegreffe, S. & Pinter, Y. (2019). Attention is not not Explanation. EMNLP.

Taught in: 05_local_explanation.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .validation import check_float, check_int, check_module, check_tensor

__all__ = ["saliency", "integrated_gradients", "occlusion", "grad_cam", "exact_shapley", "shapley_regression",
           "conditional_shapley", "lime_tabular",
           "deletion_curve", "gradient_x_input", "smoothgrad", "completeness_gap", "deletion_auc",
           "upsample", "pointing_game", "mask_overlap", "score_methods", "score_per_image", "paired_image_difference",
           "paired_ratio_interval", "randomize_layers", "rank_correlation", "row_rank_correlation",
           "randomization_per_image",
           "AttentionClassifier", "attention_data", "train_attention", "attention_vs_ig", "attention_intervention",
           "insertion_curve", "ordering_aucs", "blur", "ig_with_baselines", "cascading_randomization", "guided_backprop", "kernel_shap", "input_control",
           "random_control", "on_randomized_model", "GapCNN", "train_gap_cnn",
           "ROAR_RESULTS", "ROAR_COMMAND", "ROAR_MAPS", "roar_remove", "roar_maps", "roar_split", "roar_study",
           "load_roar"]

MAX_SHAPLEY_FEATURES = 14
CHUNK_ELEMENTS = 2 ** 15    # input elements per forward pass in IG and occlusion: cache-sized, fastest on CPU


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
    Matches ``captum.attr.IntegratedGradients`` with ``method="riemann_middle"``. The path points go
    through the model in chunks of about ``CHUNK_ELEMENTS`` input elements (one forward and one
    backward each): small enough to stay in cache, which made it about half Captum's time here.

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
    total, t = torch.zeros_like(x), None
    for a in alphas.split(max(1, CHUNK_ELEMENTS // x.numel())):           # steps per forward pass
        path = (baseline + a.view((-1,) + (1,) * x.dim()) * (x - baseline)).flatten(0, 1).requires_grad_(True)
        out = model(path)                                                # (k*N, C)
        t = _targets(target, len(x), out.shape[1]) if t is None else t
        grad, = torch.autograd.grad(out.gather(1, t.repeat(len(a)).view(-1, 1)).sum(), path)
        total += grad.view(len(a), *x.shape).sum(0)
    return (x - baseline) * total / steps


def _window_starts(length: int, window: int, stride: int) -> range:
    """Captum's window positions: 0, stride, ... and a last, cut-off window if stride misses the end."""
    return range(0, (math.ceil((length - window) / stride) + 1) * stride, stride)


def _check_window(name: str, value, n_dims: int) -> tuple[int, ...]:
    value = (value,) * n_dims if isinstance(value, (int, np.integer)) and name == "stride" else value
    if not isinstance(value, (tuple, list)) or len(value) != n_dims:
        raise ValueError(f"{name} must be a tuple of {n_dims} ints (one per non-batch dim of x), got {value!r}")
    return tuple(check_int(name, v, 1) for v in value)


def occlusion(model: nn.Module, x: Tensor, target, window, stride, baseline: float = 0.0,
              batch_size: int | None = None) -> Tensor:
    """Occlusion: the mean output drop over the windows that cover each input element.

    .. math:: A_i = \\frac{1}{|W_i|} \\sum_{w \\in W_i} f_t(x) - f_t(x_{w \\leftarrow b})

    ``window`` is a tuple with one int per non-batch dim of ``x``; ``stride`` an int or such a tuple,
    at most the window in every dim the window does not cover entirely (ValueError otherwise: some inputs
    would never be occluded), as Captum requires.
    Windows start at 0, s, 2s, ... and a last, cut-off window is added when the stride does not land on
    the end (as in ``captum.attr.Occlusion``). ``batch_size`` windows go through the model per forward
    pass (each as N occluded rows); by default as many as keep one pass near ``CHUNK_ELEMENTS`` input
    elements (at least one window), so a 3x224x224 image with stride 1 runs in bounded memory.

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
    batch_size = max(1, CHUNK_ELEMENTS // x.numel()) if batch_size is None else check_int("batch_size", batch_size, 1)
    starts = list(np.ndindex(*[len(_window_starts(d, w, s)) for d, w, s in zip(dims, window, stride)]))
    total, count = torch.zeros_like(x), torch.zeros(dims, dtype=x.dtype)
    with torch.no_grad():
        t = _targets(target, len(x), model(x[:1]).shape[1])
        full = _logit(model, x, t)                                       # (N,)
        for b in range(0, len(starts), batch_size):
            masks = torch.zeros((len(starts[b:b + batch_size]),) + tuple(dims), dtype=x.dtype)   # (B, ...)
            for m, start in zip(masks, starts[b:b + batch_size]):
                m[tuple(slice(k * s, k * s + w) for k, s, w in zip(start, stride, window))] = 1
            occluded = x.unsqueeze(0) * (1 - masks.unsqueeze(1)) + baseline * masks.unsqueeze(1)  # (B, N, ...)
            drop = full - _logit(model, occluded.flatten(0, 1), t.repeat(len(masks))).view(len(masks), len(x))
            total += (drop.view((len(masks), len(x)) + (1,) * len(dims)) * masks.unsqueeze(1)).sum(0)
            count += masks.sum(0)
    return total / count


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


def shapley_regression(f: Callable[[np.ndarray], np.ndarray], x, baseline, coalitions=None) -> np.ndarray:
    """KernelSHAP's regression: Shapley-kernel weighted least squares with the efficiency constraint.

    .. math:: \\phi = \\arg\\min_{\\sum_i \\phi_i = v(M) - v(\\emptyset)} \\sum_{S}
              k(S)\\,\\big(v(S) - v(\\emptyset) - \\textstyle\\sum_{i \\in S}\\phi_i\\big)^2, \\qquad
              k(S) = \\frac{M-1}{\\binom{M}{|S|}\\,|S|\\,(M-|S|)}, \\quad v(S) = f(x_S, x'_{\\bar S})

    over the rows of ``coalitions`` ((K, M) bool, each neither empty nor full; a repeated row counts
    twice), or every one of the 2^M - 2 proper coalitions when ``None`` (M <= 14): then phi equals the
    exact Shapley values (Lundberg & Lee 2017, Theorem 2). phi_M is eliminated with the constraint and
    the rest solved by ordinary least squares on sqrt(k)-scaled rows. Returns float64 (M,).

    Taught in: 05_local_explanation, section 9.
    """
    x, baseline = np.asarray(x, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if x.ndim != 1 or baseline.shape != x.shape or x.size < 2:
        raise ValueError(f"x and baseline must be 1-D arrays of the same length >= 2, got {x.shape} and {baseline.shape}")
    M = x.size
    if coalitions is None:
        if M > MAX_SHAPLEY_FEATURES:
            raise ValueError(f"x must have at most {MAX_SHAPLEY_FEATURES} features with coalitions=None, got {M}")
        coalitions = (np.arange(1, 2 ** M - 1)[:, None] >> np.arange(M)) & 1
    Z = np.asarray(coalitions).astype(bool)
    s = Z.sum(1) if Z.ndim == 2 else None
    if Z.ndim != 2 or Z.shape[1] != M or len(Z) == 0 or (s == 0).any() or (s == M).any():
        raise ValueError(f"coalitions must be a (K, {M}) bool array of non-empty, non-full rows, got shape {Z.shape}")
    rows = np.vstack([np.zeros(M, bool), np.ones(M, bool), Z])
    v = np.asarray(f(np.where(rows, x, baseline)), dtype=np.float64).reshape(-1)
    total, y = v[1] - v[0], v[2:] - v[0]
    k = (M - 1) / (np.array([math.comb(M, int(n)) for n in s]) * s * (M - s))
    A = Z[:, :-1].astype(np.float64) - Z[:, -1:]                          # phi_M = total - sum(phi_<M)
    sw = np.sqrt(k)
    rest, *_ = np.linalg.lstsq(A * sw[:, None], (y - Z[:, -1] * total) * sw, rcond=None)
    return np.append(rest, total - rest.sum())


def conditional_shapley(f: Callable[[np.ndarray], np.ndarray], x, data, width: float = 0.1) -> np.ndarray:
    """Shapley values of the **conditional** value function, estimated from data rows (small M).

    .. math:: v(S) = \\mathbb E\\big[f(X) \\mid X_S \\approx x_S\\big], \\qquad
              \\phi_i = \\sum_{S \\not\\ni i} \\frac{|S|!(M-|S|-1)!}{M!}\\big(v(S \\cup \\{i\\}) - v(S)\\big)

    v(S) is the mean of f over the rows of ``data`` whose features in S all lie within ``width`` of x's
    (the other features as the rows have them), v(empty) the mean over all rows and v(all) = f(x): a
    neighbourhood estimate of the conditional expectation. Unlike the interventional value function
    (:func:`kernel_shap`, v(S) = E_b f(x_S, b_rest)), it gives credit to a feature the model never reads
    when that feature predicts one it does (Sundararajan & Najmi 2020; Janzing et al. 2020). ValueError
    when a coalition has no row in its neighbourhood. Returns float64 (M,).
    """
    x, data = np.asarray(x, dtype=np.float64), np.atleast_2d(np.asarray(data, dtype=np.float64))
    if x.ndim != 1 or data.shape[1] != x.size or x.size > MAX_SHAPLEY_FEATURES:
        raise ValueError(f"x must be 1-D with M <= {MAX_SHAPLEY_FEATURES} and data (n, M), got {x.shape}, {data.shape}")
    width = check_float("width", width, 0.0, np.inf, low_inclusive=False)
    M, fd = x.size, np.asarray(f(data), dtype=np.float64)
    near = np.abs(data - x) <= width                                        # (n, M)
    v = np.empty(2 ** M)
    for code in range(2 ** M):
        S = ((code >> np.arange(M)) & 1).astype(bool)
        rows = near[:, S].all(1)
        if code == 2 ** M - 1:
            v[code] = float(np.asarray(f(x[None]), dtype=np.float64)[0])
        elif not rows.any():
            raise ValueError(f"data has no row within width={width} of x on the features {np.flatnonzero(S).tolist()}")
        else:
            v[code] = fd[rows].mean()
    return exact_shapley(lambda z: v[(z.astype(np.int64) << np.arange(M)).sum(1)], np.ones(M), np.zeros(M))


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


def blur(x: Tensor, sigma: float = 2.0) -> Tensor:
    """Gaussian blur of every channel of ``x`` (N, C, H, W), kernel radius 3 sigma, replicate padding.

    The blurred-input baseline of Integrated Gradients (Sturmfels, Lundberg & Lee 2020): a constant
    image stays constant, and each output pixel is a convex combination of input pixels.
    """
    x = _check_x(x)
    sigma = check_float("sigma", sigma, 0.0, np.inf, low_inclusive=False)
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    r = max(1, int(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, -1, -1)      # depthwise
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, r, r), mode="replicate"), kernel,
                                      groups=x.shape[1])


def ig_with_baselines(model: nn.Module, x: Tensor, target, train: Tensor, steps: int = 32, n_noise: int = 4,
                      sigma: float = 2.0, seed: int = 0) -> dict[str, Tensor]:
    """Integrated Gradients of ``x`` against four baselines (Sturmfels, Lundberg & Lee 2020).

    ``"black (0)"``: zeros; ``"training mean"``: ``train.mean(0)``; ``"blurred input"``: :func:`blur` of x;
    ``"uniform noise (mean of n)"``: the mean of the IG maps against ``n_noise`` baselines drawn uniformly
    in [min(x), max(x)] with ``torch.Generator().manual_seed(seed)`` (expected gradients' idea: average
    over a distribution of baselines). Completeness holds per baseline: sum(IG) = f(x) - f(x'), and for
    the noise the mean of f(x) - f(x'_k). Returns name -> map shaped like x.
    """
    x = _check_x(x).detach()
    train = check_tensor("train", train)
    if train.shape[1:] != x.shape[1:]:
        raise ValueError(f"train must have rows shaped like x's {tuple(x.shape[1:])}, got {tuple(train.shape[1:])}")
    n_noise = check_int("n_noise", n_noise, 1)
    lo, hi, gen = float(x.min()), float(x.max()), torch.Generator().manual_seed(check_int("seed", seed, 0))
    maps = {"black (0)": integrated_gradients(model, x, target, None, steps),
            "training mean": integrated_gradients(model, x, target, train.mean(0, keepdim=True).expand_as(x), steps),
            "blurred input": integrated_gradients(model, x, target, blur(x, sigma), steps)}
    noise = [integrated_gradients(model, x, target, lo + (hi - lo) * torch.rand(x.shape, generator=gen, dtype=x.dtype),
                                  steps) for _ in range(n_noise)]
    maps[f"uniform noise (mean of {n_noise})"] = torch.stack(noise).mean(0)
    return maps


def deletion_curve(model: nn.Module, x: Tensor, target, attribution: Tensor, steps: int = 10,
                   baseline: float = 0.0) -> Tensor:
    """Deletion curve: the target probability as the most-attributed features are set to ``baseline``.

    At step k = 0..steps the top n_k = floor(k * n / steps) features of each row (n = x[0].numel(), all
    channels) are replaced, in decreasing attribution order, ties by lower flat index first. Returns the
    softmax probability of the target, shape (N, steps + 1), in the model's output dtype.

    References: Petsiuk, Das & Saenko (2018), RISE, BMVC (deletion and insertion metrics).

    Taught in: 05_local_explanation, section 7.
    """
    return _perturbation_curve(model, x, target, attribution, steps, baseline, insert=False)


def insertion_curve(model: nn.Module, x: Tensor, target, attribution: Tensor, steps: int = 10,
                    baseline: float = 0.0) -> Tensor:
    """Insertion curve (Petsiuk et al. 2018): start from ``baseline`` everywhere and put back the top
    n_k = floor(k * n / steps) features of x, same order and ties as :func:`deletion_curve`; higher = better.

    Taught in: 05_local_explanation, section 7.
    """
    return _perturbation_curve(model, x, target, attribution, steps, baseline, insert=True)


def _perturbation_curve(model, x, target, attribution, steps, baseline, insert: bool) -> Tensor:
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
    chosen = rank.unsqueeze(0) < counts.view(-1, 1, 1)                     # (K, N, n)
    flat, b = x.reshape(1, N, n), torch.as_tensor(baseline, dtype=x.dtype)
    xs = (torch.where(chosen, flat, b) if insert else torch.where(chosen, b, flat)).reshape(-1, *x.shape[1:])
    with torch.no_grad():
        out = model(xs)
        t = _targets(target, N, out.shape[1]).repeat(steps + 1)
        p = torch.softmax(out, dim=1).gather(1, t.view(-1, 1)).view(steps + 1, N)
    return p.T.contiguous()


def ordering_aucs(model: nn.Module, x: Tensor, target, attribution: Tensor, steps: int = 16,
                  baseline: float = 0.0) -> dict[str, Tensor]:
    """Deletion and insertion AUC per image under both perturbation orders, for one (signed) map.

    MoRF (most relevant first) perturbs in decreasing ``attribution`` order, LeRF (least relevant
    first) in increasing order (Samek et al. 2017); each curve is :func:`deletion_curve` /
    :func:`insertion_curve` and its area :func:`deletion_auc`. Pass ``attribution.abs()`` for the
    |.| ordering, the map itself for the signed one (most positive first). A faithful map has a low
    MoRF and a high LeRF deletion AUC (and the reverse for insertion). Returns a dict of (N,) tensors:
    ``"deletion MoRF"``, ``"deletion LeRF"``, ``"insertion MoRF"``, ``"insertion LeRF"``.

    References: Samek, W. et al. (2017). Evaluating the visualization of what a deep neural network has
    learned. IEEE TNNLS 28(11).

    Taught in: 05_local_explanation, section 7.
    """
    attribution = check_tensor("attribution", attribution)
    out = {}
    for order, a in (("MoRF", attribution), ("LeRF", -attribution)):
        out[f"deletion {order}"] = deletion_auc(deletion_curve(model, x, target, a, steps, baseline))
        out[f"insertion {order}"] = deletion_auc(insertion_curve(model, x, target, a, steps, baseline))
    return {k: out[k] for k in ("deletion MoRF", "deletion LeRF", "insertion MoRF", "insertion LeRF")}


def cascading_randomization(model: nn.Module, explain: Callable, x: Tensor, target,
                            seed: int = 0) -> list[tuple[str, float]]:
    """Model-parameter randomisation test (Adebayo et al. 2018): how much of a map survives random weights.

    The ``nn.Conv2d`` / ``nn.Linear`` layers are re-drawn one after the other from the output back
    (cumulatively, on a copy of ``model``; see :func:`randomize_layers` for the rule and the seed);
    after each one the maps ``explain(randomised, x, target)`` are compared with ``explain(model, x, target)``:

    .. math:: \\rho_\\ell = \\frac1N \\sum_{i=1}^{N} \\mathrm{Spearman}\\big(E(f, x_i), E(f_{\\le \\ell}, x_i)\\big)

    (ties take their average rank, as ``scipy.stats.spearmanr``). Returns ``[(layer name, rho), ...]``,
    output layer first, names from ``model.named_modules()``. A method that passes the check has
    rho falling towards 0; one near 1 on a random model shows the input, not the model.

    Taught in: 05_local_explanation, section 5.
    """
    check_module("model", model)
    x = _check_x(x).detach()
    before = explain(model, x, target)
    return [(name, rank_correlation(before, explain(randomised, x, target)))
            for name, randomised in randomize_layers(model, seed)]


# --------------------------------------------------------------------------- helpers the notebook calls
def gradient_x_input(model: nn.Module, x: Tensor, target) -> Tensor:
    """x * df_t/dx (signed): the first-order Taylor attribution (``captum.attr.InputXGradient``)."""
    x = _check_x(x).detach().requires_grad_(True)
    grad, = torch.autograd.grad(_logit(model, x, target).sum(), x)
    return (x * grad).detach()


def smoothgrad(model: nn.Module, x: Tensor, target, n_samples: int = 20, sigma: float = 0.15,
               seed: int = 0, absolute: bool = False) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean raw gradient over noisy copies of x.

    .. math:: \\hat M(x) = \\frac1n \\sum_{k=1}^{n} \\nabla_x f_t(x + \\epsilon_k), \\quad
              \\epsilon_k \\sim \\mathcal N(0, \\sigma^2 I)

    As ``NoiseTunnel(Saliency(model)).attribute(..., nt_type="smoothgrad", stdevs=sigma, abs=False)``;
    ``absolute=True`` averages |gradient| instead (the display variant, Captum's ``abs=True``).
    Noise from ``torch.Generator().manual_seed(seed)``.
    """
    x = _check_x(x).detach()
    n_samples = check_int("n_samples", n_samples, 1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
    noisy = (x.unsqueeze(0) + sigma * torch.randn((n_samples,) + x.shape, generator=gen, dtype=x.dtype))
    noisy = noisy.flatten(0, 1).requires_grad_(True)                     # (n*N, ...)
    out = model(noisy)
    t = _targets(target, len(x), out.shape[1]).repeat(n_samples)
    grad, = torch.autograd.grad(out.gather(1, t.view(-1, 1)).sum(), noisy)
    return (grad.abs() if absolute else grad).view(n_samples, *x.shape).mean(0)


def guided_backprop(model: nn.Module, x: Tensor, target) -> Tensor:
    """Guided Backpropagation (Springenberg et al. 2015): every ``nn.ReLU`` passes back only the positive
    part of its gradient, ReLU(grad_in). Matches ``captum.attr.GuidedBackprop``; needs ReLU modules,
    not ``F.relu``. Its maps barely depend on the top layers' weights (Adebayo et al. 2018)."""
    x = _check_x(x).detach().requires_grad_(True)
    hooks = [m.register_full_backward_hook(lambda mod, g_in, g_out: (torch.relu(g_in[0]),))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        grad, = torch.autograd.grad(_logit(model, x, target).sum(), x)
    finally:
        for h in hooks:
            h.remove()
    return grad.detach()


def completeness_gap(model: nn.Module, x: Tensor, target, attribution: Tensor,
                     baseline: Tensor | None = None) -> Tensor:
    """Per row: sum(attribution) - (f_t(x) - f_t(baseline)), the IG completeness check."""
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    with torch.no_grad():
        return attribution.flatten(1).sum(1) - (_logit(model, x, target) - _logit(model, baseline, target))


def deletion_auc(curve: Tensor) -> Tensor:
    """Area under each deletion (or insertion) curve on [0, 1], trapezoid rule, shape (N,)."""
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


def input_control(model: nn.Module, x: Tensor, target) -> Tensor:
    """Control map |x|: needs no model at all. A method that does not beat it localises the input, not
    the evidence the model uses."""
    return x.detach().abs()


def random_control(seed: int = 0) -> Callable:
    """A control method: a uniform random map shaped like x, the same for every call (seeded)."""
    return lambda model, x, target: torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))


def on_randomized_model(method: Callable, model: nn.Module, seed: int = 0) -> Callable:
    """A control method: ``method`` run on ``model`` with every layer re-drawn (:func:`randomize_layers`)."""
    randomised = randomize_layers(model, seed)[-1][1]
    return lambda _model, x, target: method(randomised, x, target)


def _scores_of_map(model: nn.Module, x: Tensor, target, mask: Tensor, attr: Tensor, steps: int) -> dict:
    """Per-image scores of one map (upsampled to x if needed): see :func:`score_per_image`."""
    if attr.shape != x.shape:                                             # Grad-CAM: layer resolution
        attr = upsample(attr, x.shape[2:])
    a = attr.abs()
    deletion, insertion = deletion_curve(model, x, target, a, steps=steps), insertion_curve(model, x, target, a, steps=steps)
    return {"pointing game": pointing_game(attr, mask), "mask overlap": mask_overlap(attr, mask),
            "deletion AUC": deletion_auc(deletion), "insertion AUC": deletion_auc(insertion),
            "deletion": deletion, "insertion": insertion}


SCORES = ("pointing game", "mask overlap", "deletion AUC", "insertion AUC")


def score_per_image(model: nn.Module, x: Tensor, target, mask: Tensor, methods: dict[str, Callable],
                    steps: int = 16) -> dict[str, dict[str, Tensor]]:
    """Every method's scores **per image**, so that two methods can be compared image by image.

    For each method ``name: method(model, x, target)`` the map is upsampled to ``x`` (Grad-CAM) and
    scored on every row i against its mask:

    - ``"pointing game"``: 1.0 if the largest |map| lies inside the object (:func:`pointing_game`);
    - ``"mask overlap"``: the fraction of the top-k |map| pixels inside the object, k = its area;
    - ``"deletion AUC"`` (lower = more faithful) and ``"insertion AUC"`` (higher = more faithful): the
      trapezoid area under the target probability as the top ``floor(k n / steps)`` pixels of |map| are
      deleted (set to 0) or inserted, k = 0..steps (:func:`deletion_curve`, :func:`insertion_curve`);
    - ``"deletion"`` and ``"insertion"``: those curves, shape (N, steps + 1).

    Every score has shape (N,). Because all methods explain the same N images, the per-image
    difference :math:`d_i = s_i(A) - s_i(B)` removes what the images share (a large object is easy
    for every map); :func:`paired_image_difference` gives its bootstrap interval. Put the controls
    (:func:`input_control`, :func:`random_control`, :func:`on_randomized_model`) among ``methods``.

    Parameters
    ----------
    model : nn.Module mapping (N, C, H, W) to logits.
    x : Tensor (N, C, H, W); target : int or one int per row.
    mask : bool Tensor (N, 1, H, W), the ground-truth object of each row.
    methods : dict of name -> callable ``(model, x, target) -> map`` shaped like x or (N, 1, h, w).
    steps : int >= 1, default=16
        Points of the deletion and insertion curves (minus one).
    """
    check_module("model", model)
    x = _check_x(x).detach()
    mask = check_tensor("mask", mask)
    if mask.shape[0] != len(x) or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask must be (N, 1, H, W) with x's N and H, W {tuple(x.shape)}, got {tuple(mask.shape)}")
    if not isinstance(methods, dict) or not methods:
        raise TypeError(f"methods must be a non-empty dict of name -> callable, got {type(methods).__name__}")
    steps = check_int("steps", steps, 1)
    return {name: _scores_of_map(model, x, target, mask, method(model, x, target), steps)
            for name, method in methods.items()}


def score_methods(model: nn.Module, x: Tensor, target, mask: Tensor, methods: dict[str, Callable],
                  steps: int = 16) -> list[dict]:
    """Per method: the mean over images of the scores of :func:`score_per_image` (pointing game, mask
    overlap, deletion AUC, lower = better, insertion AUC, higher = better), all on |map| upsampled to x,
    and one cold time per explanation (use ``timing.compare`` for a fair timing). Put the controls
    (:func:`input_control`, :func:`random_control`, :func:`on_randomized_model`) among ``methods``: a
    ranking without them is confounded; compare two methods with :func:`paired_image_difference`."""
    rows = []
    for name, method in methods.items():
        start = time.perf_counter()
        attr = method(model, x, target)
        elapsed = (time.perf_counter() - start) / len(x)
        scores = _scores_of_map(model, x, target, mask, attr, steps)
        rows.append({"method": name, **{k: float(scores[k].mean()) for k in SCORES},
                     "ms / explanation": 1e3 * elapsed})
    return rows


def paired_image_difference(a, b, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0):
    r"""Percentile bootstrap interval of the mean per-image difference ``a_i - b_i`` of two methods.

    ``a`` and ``b`` are one score per image (e.g. ``score_per_image(...)[name]["mask overlap"]``) for
    the **same** images. Resampling images, not the two arms separately, keeps what an image does to
    both methods together (the paired bootstrap of :func:`course_lib.stats.paired_bootstrap`, for any
    score, not only 0/1):

    .. math:: \bar d = \frac1N \sum_i (a_i - b_i), \qquad
              [\,\bar d^*_{(\alpha/2)},\ \bar d^*_{(1-\alpha/2)}\,]

    Returns a :class:`course_lib.stats.Interval` (shown with a sign) for ``stats.claim``.
    """
    from dataclasses import replace

    from . import stats
    a, b = _as_scores("a", a), _as_scores("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same images, got lengths {a.size} and {b.size}")
    iv = stats.bootstrap_interval(a - b, confidence=confidence, n_boot=n_boot, seed=seed)
    return replace(iv, method="paired bootstrap over images", difference=True)


def paired_ratio_interval(a, b, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """Percentile bootstrap interval of ``mean(a) / mean(b)`` over the same images, resampled in pairs.

    Each resample draws N image indices with replacement and takes the ratio of the two means on
    that draw (``b``'s mean must stay positive). The estimate is ``mean(a) / mean(b)`` on all images.
    """
    from dataclasses import replace

    from . import stats
    a, b = _as_scores("a", a), _as_scores("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same images, got lengths {a.size} and {b.size}")
    if not (b > 0).all():
        raise ValueError("b must be positive on every image (its mean is the denominator)")

    def ratio(index):                                                     # (n_boot, N) image indices
        i = index.astype(np.int64)
        return a[i].mean(-1) / b[i].mean(-1)
    iv = stats.bootstrap_interval(np.arange(a.size), ratio, confidence=confidence, n_boot=n_boot, seed=seed)
    return replace(iv, method="paired bootstrap of a ratio of means over images", unit="x")


def _as_scores(name: str, values) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    if isinstance(values, (str, bytes)) or not isinstance(values, (np.ndarray, Sequence)):
        raise TypeError(f"{name} must be a 1-D tensor, array or sequence of scores, got {type(values).__name__}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2 or not np.isfinite(v).all():
        raise ValueError(f"{name} must be 1-D with at least 2 finite scores, got shape {v.shape}")
    return v


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear layers with their names, output layer first."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]


def randomize_layers(model: nn.Module, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """Cascading randomisation (Adebayo et al. 2018): copies with the top 1, 2, ... layers re-drawn.

    One ``gen = torch.Generator().manual_seed(seed)``; layers (``nn.Conv2d``, ``nn.Linear``) from the
    output back; each layer's weight, then bias, becomes ``(2 * torch.rand(p.shape, generator=gen) - 1) / sqrt(fan_in)``
    with fan_in = ``weight[0].numel()``: uniform on (-1/sqrt(fan_in), 1/sqrt(fan_in)), the range of PyTorch's
    default initialisation (``torch.manual_seed(seed)`` then each layer's ``reset_parameters()`` draws the
    same numbers, but reseeds the global generator). Cumulative: copy k has the top k layers re-drawn.
    ``model`` is unchanged.
    """
    check_module("model", model)
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
    out, current = [], copy.deepcopy(model)
    for name, _ in _weight_layers(model):
        current = copy.deepcopy(current)
        layer = current.get_submodule(name)
        with torch.no_grad():
            for p in (layer.weight, layer.bias):
                if p is not None:
                    bound = 1 / math.sqrt(layer.weight[0].numel())         # PyTorch's default init range
                    p.copy_((2 * torch.rand(p.shape, generator=gen) - 1) * bound)
        out.append((name, current))
    return out


def _average_ranks(t: Tensor) -> Tensor:
    """Row-wise ranks 0..n-1, ties sharing their average rank (scipy's ``rankdata(method="average")``)."""
    t = t.flatten(1).double()
    s = t.sort(dim=1).values
    lo = torch.searchsorted(s, t.contiguous(), right=False)
    hi = torch.searchsorted(s, t.contiguous(), right=True)
    return (lo + hi - 1).double() / 2


def row_rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    r"""The Spearman rank correlation of each row's two maps (flattened; ties: average ranks), shape (N,).

    .. math:: \rho_i = \mathrm{corr}(\mathrm{rank}(a_i), \mathrm{rank}(b_i))

    A constant row has no ranking: its rho is nan (as ``scipy.stats.spearmanr``).
    """
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def rank_correlation(a: Tensor, b: Tensor) -> float:
    r"""Mean over rows of the Spearman rank correlation of two maps (flattened; ties: average ranks).

    .. math:: \rho = \mathrm{corr}(\mathrm{rank}(a_i), \mathrm{rank}(b_i)), averaged over rows i

    A constant row has no ranking: its rho is nan (as ``scipy.stats.spearmanr``).
    """
    return float(row_rank_correlation(a, b).mean())


def randomization_per_image(model: nn.Module, explain: Callable, x: Tensor, target,
                            seed: int = 0) -> dict[str, Tensor]:
    """The cascading randomisation test with one Spearman rho **per image** after each layer.

    ``{layer name: rho of shape (N,)}``, output layer first: the mean over images of each entry is
    :func:`cascading_randomization`'s number for that layer (same layers, same seed, same rule), and the
    per-image values give it an interval (``stats.bootstrap_interval``) or pair two methods on the
    same images (:func:`paired_image_difference`).
    """
    check_module("model", model)
    x = _check_x(x).detach()
    if not callable(explain):
        raise TypeError(f"explain must be a callable (model, x, target) -> map, got {type(explain).__name__}")
    before = explain(model, x, target).detach()
    return {name: row_rank_correlation(before, explain(randomised, x, target).detach())
            for name, randomised in randomize_layers(model, seed)}


# --------------------------------------------------------------------------- SHAP with a background
def kernel_shap(f: Callable[[np.ndarray], np.ndarray], x, background, n_samples: int | None = None,
                seed: int = 0) -> np.ndarray:
    """Interventional SHAP values against a background distribution, exact or by KernelSHAP.

    .. math:: v(S) = \\frac1B \\sum_{b} f(x_S, b_{\\bar S}), \\qquad
              \\phi = \\arg\\min_{\\sum\\phi = v(M) - v(\\emptyset)}
              \\sum_S k(S)\\,\\big(v(S) - v(\\emptyset) - \\textstyle\\sum_{i \\in S} \\phi_i\\big)^2,
              \\quad k(S) = \\frac{M - 1}{\\binom{M}{|S|}\\,|S|\\,(M - |S|)}

    ``n_samples=None`` (or >= 2^M - 2) enumerates every coalition: the exact Shapley values of v
    (Lundberg & Lee 2017). Otherwise ``n_samples`` coalitions (paired with their complements) are drawn
    from the Shapley kernel with ``np.random.default_rng(seed)`` and fitted with equal weights.
    ``background`` is (B, M); efficiency: sum(phi) = f(x) - mean_b f(b). Returns float64 (M,).
    """
    x = np.asarray(x, dtype=np.float64)
    background = np.atleast_2d(np.asarray(background, dtype=np.float64))
    if x.ndim != 1 or x.size < 2 or background.shape[1] != x.size:
        raise ValueError(f"x must be 1-D with M >= 2 features and background (B, M), got {x.shape} and "
                         f"{background.shape}")
    M = x.size
    if n_samples is None or n_samples >= 2 ** M - 2:
        if M > 20:
            raise ValueError(f"n_samples must be given for M > 20 features, got None for M = {M}")
        Z = ((np.arange(1, 2 ** M - 1)[:, None] >> np.arange(M)) & 1).astype(bool)
        s = Z.sum(1)
        w = (M - 1) / (np.array([math.comb(M, k) for k in s]) * s * (M - s))
    else:
        n_samples = check_int("n_samples", n_samples, 2)
        rng = np.random.default_rng(check_int("seed", seed, 0))
        sizes = np.arange(1, M)
        p = (M - 1) / (sizes * (M - sizes))
        s = rng.choice(sizes, size=(n_samples + 1) // 2, p=p / p.sum())
        Z = rng.random((len(s), M)).argsort(1) < s[:, None]               # a uniform subset of each size
        Z, w = np.vstack([Z, ~Z]), np.ones(2 * len(s))
    rows = np.vstack([np.zeros(M, bool), np.ones(M, bool), Z])           # (K, M) coalitions
    filled = np.where(rows[:, None, :], x, background[None])              # (K, B, M)
    v = np.asarray(f(filled.reshape(-1, M)), dtype=np.float64).reshape(len(rows), -1).mean(1)
    total, v = v[1] - v[0], v[2:] - v[0]
    A = Z[:, :-1].astype(float) - Z[:, -1:].astype(float)                 # phi_M = total - sum(others)
    sw = np.sqrt(w)
    rest, *_ = np.linalg.lstsq(A * sw[:, None], (v - Z[:, -1] * total) * sw, rcond=None)
    return np.append(rest, total - rest.sum())


# --------------------------------------------------------------------------- attention as explanation
class AttentionClassifier(nn.Module):
    """Embedding -> one attention-pooling head -> linear: logits (N, 2); ``last_attention`` (N, T).

    ``forward_embedded(e, attention)`` takes given weights instead of the computed ones (the
    intervention of :func:`attention_intervention`)."""

    def __init__(self, vocab: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.key = nn.Linear(dim, 1)
        self.out = nn.Linear(dim, 2)

    def forward_embedded(self, e: Tensor, attention: Tensor | None = None) -> Tensor:   # e: (N, T, D)
        a = torch.softmax(self.key(torch.tanh(e)).squeeze(-1), dim=1) if attention is None else attention  # (N, T)
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



def attention_intervention(model: AttentionClassifier, tokens: Tensor, n_permutations: int = 20,
                           seed: int = 0) -> dict:
    """Does the output depend on *which* tokens get the weight? (Jain & Wallace 2019, section 4.)

    Per sequence: the total variation distance between the output distribution with the learned
    attention and with (a) the weights randomly permuted over positions (median over ``n_permutations``),
    (b) uniform weights, (c) all weight on the position attention ranks last. Returns the mean of each,
    and the fraction of predictions each one flips. Large changes: attention is faithful for this model.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        e = model.embed(tokens)                                           # (N, T, D)
        p = torch.softmax(model.forward_embedded(e), 1)
        a = model.last_attention                                          # (N, T)
        N, T = a.shape
        perm = torch.stack([torch.argsort(torch.rand(N, T, generator=gen), 1) for _ in range(n_permutations)])
        swapped = {"permuted": [a.gather(1, pi) for pi in perm], "uniform": [torch.full_like(a, 1 / T)],
                   "moved to the least attended": [nn.functional.one_hot(a.argmin(1), T).to(a.dtype)]}
        out = {}
        for name, weights in swapped.items():
            q = torch.stack([torch.softmax(model.forward_embedded(e, w), 1) for w in weights])   # (K, N, 2)
            out[f"TVD {name}"] = float((q - p).abs().sum(-1).div(2).median(0).values.mean())
            out[f"flipped {name}"] = float((q.argmax(-1) != p.argmax(-1)).float().median(0).values.mean())
        model.last_attention = a
    return out


# --------------------------------------------------------------------------- CAM needs a GAP head
class GapCNN(nn.Module):
    """conv-ReLU-conv-ReLU, global average pooling, linear: the architecture where Grad-CAM equals CAM.

    .. math:: f_c(x) = \\sum_k w_{ck} \\frac{1}{hw}\\sum_{u,v} A^k_{uv} + b_c
              \\;\\Rightarrow\\; \\mathrm{GradCAM}_c = \\mathrm{ReLU}\\Big(\\frac{1}{hw}\\sum_k w_{ck} A^k\\Big)

    With a Flatten -> Linear head the weight of each position differs, and averaging the gradient over
    positions (Grad-CAM's alpha) throws that away. Grad-CAM at ``cam_layer`` (the maps after the last
    ReLU) equals CAM / (hw); at ``last_conv`` (before the ReLU) the ReLU's gate enters alpha.
    References: Zhou et al. (2016), Learning Deep Features for Discriminative Localization, CVPR.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 3, channels: Sequence[int] = (16, 32)) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU())   # (N, c2, S, S)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, n_classes))

    @property
    def last_conv(self) -> nn.Conv2d:
        return self.features[2]

    @property
    def cam_layer(self) -> nn.ReLU:
        """The ReLU after ``last_conv``: the maps A^k that the pooled head averages (Grad-CAM == CAM there)."""
        return self.features[3]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))                          # (N, n_classes)


def train_gap_cnn(X: Tensor, y: Tensor, n_classes: int = 3, seed: int = 0, epochs: int = 8) -> GapCNN:
    """A :class:`GapCNN` trained with ``models.train`` (Adam, lr 1e-2) on the given split."""
    from . import models
    torch.manual_seed(seed)
    model = GapCNN(in_channels=X.shape[1], n_classes=n_classes)
    models.train(model, X, y, epochs=epochs, lr=1e-2, seed=seed, progress=False)
    return model.eval()


# --------------------------------------------------------------------------- ROAR: remove and retrain
ROAR_RESULTS = Path(__file__).resolve().parent.parent / "data" / "chapter05_roar.json"
ROAR_COMMAND = "python -m course_lib.local_explanation --roar"
ROAR_MAPS = ("integrated gradients", "|x|", "random")


def roar_remove(x: Tensor, attribution: Tensor, fraction: float, value: Tensor | float) -> Tensor:
    r"""A copy of ``x`` whose ``floor(fraction * n)`` top-ranked elements per row are set to ``value``.

    Each row's ``n`` elements are ranked by ``attribution`` (largest first, a stable sort: ties keep their
    raster order), as in ROAR (Hooker et al., 2019), which fills the removed pixels with the per-channel
    training mean so that the filled value carries no class information by itself.

    Parameters
    ----------
    x : Tensor (N, ...)
    attribution : Tensor shaped like x
        The ranking; pass ``a.abs()`` to rank by magnitude.
    fraction : float in [0, 1]
    value : float or Tensor broadcastable to x
        The fill (e.g. ``X_train.mean((0, 2, 3), keepdim=True)``).
    """
    x = _check_x(x).detach()
    attribution = check_tensor("attribution", attribution)
    if attribution.shape != x.shape:
        raise ValueError(f"attribution must be shaped like x {tuple(x.shape)}, got {tuple(attribution.shape)}")
    fraction = check_float("fraction", fraction, 0.0, 1.0)
    fill = torch.as_tensor(value, dtype=x.dtype).expand_as(x).reshape(len(x), -1)
    flat, n = x.reshape(len(x), -1).clone(), x[0].numel()
    top = torch.sort(attribution.reshape(len(x), -1), dim=1, descending=True, stable=True).indices
    top = top[:, : int(math.floor(fraction * n + 1e-9))]
    flat.scatter_(1, top, fill.gather(1, top))
    return flat.view_as(x)


def roar_maps(model: nn.Module, split, steps: int = 16, seed: int = 0,
              names: Sequence[str] = ROAR_MAPS) -> dict[str, dict[str, Tensor]]:
    """The three rankings ROAR compares, for the train, validation and test images of ``split``.

    ``"integrated gradients"``: |IG| of the true class against a black baseline (``steps`` midpoints), the
    ordering of the chapter's deletion table; ``"|x|"``: the input itself (the control that needs no model);
    ``"random"``: uniform noise from ``torch.Generator().manual_seed(seed + k)`` for part k (the control
    that knows nothing). ``names`` picks a subset of them. Returns
    ``{map: {"train" | "val" | "test": Tensor shaped like that part's X}}``.
    """
    model = check_module("model", model).eval()
    steps, seed = check_int("steps", steps, 1), check_int("seed", seed, 0)
    names = list(names)
    if not names or not set(names) <= set(ROAR_MAPS):
        raise ValueError(f"names must be a non-empty subset of {list(ROAR_MAPS)}, got {names!r}")
    out: dict[str, dict[str, Tensor]] = {name: {} for name in names}
    for k, part in enumerate(("train", "val", "test")):
        X, y = getattr(split, f"X_{part}"), getattr(split, f"y_{part}")
        if "integrated gradients" in out:
            out["integrated gradients"][part] = integrated_gradients(model, X, y, None, steps).abs()
        if "|x|" in out:
            out["|x|"][part] = X.detach().abs()
        if "random" in out:
            out["random"][part] = torch.rand(X.shape, generator=torch.Generator().manual_seed(seed + k))
    return out


def roar_split(split, maps: dict[str, Tensor], fraction: float):
    """``split`` with every part's top ``fraction`` of pixels (by ``maps[part]``) set to the training mean.

    The fill is the per-channel mean of ``split.X_train`` (ROAR's choice); labels and masks are kept.
    """
    from dataclasses import replace

    fill = split.X_train.mean(dim=[d for d in range(split.X_train.dim()) if d != 1], keepdim=True)[0]
    return replace(split, **{f"X_{p}": roar_remove(getattr(split, f"X_{p}"), maps[p], fraction, fill)
                             for p in ("train", "val", "test")})


def roar_study(model: nn.Module, split, fractions: Sequence[float] = (0.1, 0.5), seeds: Sequence[int] = range(5),
               *, channels: Sequence[int] = (8, 16), epochs: int = 10, lr: float = 3e-3, steps: int = 16,
               progress: bool = True) -> dict:
    r"""ROAR (RemOve And Retrain; Hooker et al., 2019) with three rankings and a few removal fractions.

    For each ranking m in :data:`ROAR_MAPS` (computed once on ``model``, :func:`roar_maps`) and each fraction
    q, the top q of every train, validation and test image's pixels are replaced by the training mean
    (:func:`roar_split`) and a fresh ``SmallCNN(C, n_classes, channels)`` is trained on the degraded training
    images with ``models.train_seeds`` (seed s = the same initialisation and batch order in every arm, so arms
    are paired by seed) and scored on the degraded test images. One more arm trains on the unmodified images
    (``"none"``). A ranking whose removal lowers the *retrained* accuracy more than the random ranking's removes
    information the task needs; because the model is retrained, the degraded images are no longer off its
    training distribution (the objection to deletion curves). The shape of the removed set can still carry the
    class (Rong et al., 2022).

    Cost: ``(len(ROAR_MAPS) * len(fractions) + 1) * len(seeds)`` trainings.

    Returns
    -------
    dict
        ``{"seeds": [...], "fractions": [...], "epochs", "channels", "steps", "none": [acc per seed],
        "accuracy": {map: {str(q): [acc per seed]}}, "val": {...same for validation...}}``
    """
    from . import models

    model = check_module("model", model)
    fractions = [check_float("fractions", q, 0.0, 1.0) for q in fractions]
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not fractions or len(seeds) < 2:
        raise ValueError(f"roar_study needs at least one fraction and two seeds, got {fractions} and {seeds}")
    channels = tuple(check_int("channels", c, 1) for c in channels)
    epochs = check_int("epochs", epochs, 1)
    n_classes, size = len(split.classes), split.X_train.shape[-1]
    make = lambda: models.SmallCNN(split.X_train.shape[1], n_classes, channels, size)  # noqa: E731
    train = lambda s: models.train_seeds(make, s, seeds, progress=False, epochs=epochs, lr=lr)  # noqa: E731
    maps = roar_maps(model, split, steps=steps)
    base = train(split)
    out = {"seeds": seeds, "fractions": fractions, "epochs": epochs, "channels": list(channels), "steps": steps,
           "lr": lr, "none": base["test"].tolist(), "none_val": base["val"].tolist(), "accuracy": {}, "val": {}}
    arms = [(m, q) for m in ROAR_MAPS for q in fractions]
    from tqdm.auto import tqdm
    for m, q in tqdm(arms, desc="ROAR arms", disable=not progress, leave=False):
        run = train(roar_split(split, maps[m], q))
        out["accuracy"].setdefault(m, {})[str(q)] = run["test"].tolist()
        out["val"].setdefault(m, {})[str(q)] = run["val"].tolist()
    return out


def load_roar(path: str | Path | None = None) -> dict:
    """The cached :func:`roar_study` of chapter 05 (``data/chapter05_roar.json``; :data:`ROAR_COMMAND` rebuilds it)."""
    import json

    path = Path(path) if path is not None else ROAR_RESULTS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild it with `{ROAR_COMMAND}`")
    return json.loads(path.read_text())


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import json
    import platform

    parser = argparse.ArgumentParser(description="Regenerate chapter 05's cached ROAR study.")
    parser.add_argument("--roar", action="store_true", required=True)
    parser.add_argument("--out", default=str(ROAR_RESULTS))
    args = parser.parse_args(argv)
    from . import checkpoints

    torch.set_num_threads(1)
    start = time.perf_counter()
    result = roar_study(checkpoints.load("shapes_cnn"), checkpoints.dataset("shapes_cnn"))
    result.update(seconds=round(time.perf_counter() - start, 1), torch=torch.__version__,
                  python=platform.python_version(), command=ROAR_COMMAND)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    _main()
