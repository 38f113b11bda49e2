"""Chapter 07 -- compression x explanation: do compressed models explain the same way?

Four exercises and the helpers that run the chapter's measurements:

- :func:`attribution_agreement` compares two attribution maps example by example (Spearman rank
  correlation, top-k intersection over union, cosine similarity);
- :func:`band_position` places a compressed model's agreement in the band of independently trained
  models (range, percentile, verdict);
- :func:`trainable_grad_cam` is Grad-CAM as a differentiable function of the weights (double
  backpropagation), the map an explanation-aware loss trains;
- :func:`stamp_test` is the causal shortcut test: how often the prediction follows a stamped class marker.

:func:`explanation_kd_loss` (Hinton's loss plus ``lam`` times a penalty for explanation maps that point
elsewhere than the teacher's) and :func:`taylor_channel_importance` (the first-order Taylor estimate of
the loss change when a channel is removed; Molchanov et al., 2017) are helpers the chapter calls.

The helpers take the explanation methods as callables ``explain(model, x, target) -> map`` (the
notebook passes chapter 05's ``grad_cam`` / ``integrated_gradients``) and models built with the
earlier chapters' tools: this module imports only the course's core modules. Chapter 04's
``kd_loss`` is needed inside :func:`explanation_kd_loss`; its few lines are written out here
(:func:`_kd_loss`) rather than imported, so that topic modules stay independent.

References
----------
Hinton, G., Vinyals, O. and Dean, J. (2015). Distilling the Knowledge in a Neural Network. arXiv:1503.02531.
Molchanov, P., Tyree, S., Karras, T., Aila, T. and Kautz, J. (2017). Pruning Convolutional Neural Networks
for Resource Efficient Inference. ICLR. arXiv:1611.06440.
Selvaraju, R. R. et al. (2017). Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization. ICCV.
Adebayo, J. et al. (2018). Sanity Checks for Saliency Maps. NeurIPS.

Taught in: 07_compression_and_explanation.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import models, stats, timing
from .validation import check_bool, check_float, check_int, check_module, check_tensor

__all__ = ["attribution_agreement", "explanation_kd_loss", "taylor_channel_importance",
           "COSINE_EPS", "gradcam_layer", "differentiable_grad_cam", "explanation_maps", "agreement_rows",
           "localisation_rows", "train_explained_student", "logits_of",
           "activations_and_gradients", "channel_pruning_rows", "channel_keep",
           "prune_channels", "corner_mask", "attribution_share", "summarize", "plot_maps", "fine_tune_only",
           "agreement_per_image", "group_agreement", "agreement_difference", "band_rows"]

COSINE_EPS = 1e-8


# =========================================================================== the exercises
def _check_maps(a: object, b: object) -> tuple[Tensor, Tensor]:
    check_tensor("a", a)
    check_tensor("b", b)
    if a.shape != b.shape:
        raise ValueError(f"b must have a's shape {tuple(a.shape)}, got {tuple(b.shape)}")
    if a.dim() < 2 or a[0].numel() < 2 or not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"a must be a floating-point tensor of shape (N, ...) with at least 2 entries per "
                         f"example, got {a.dtype} of shape {tuple(a.shape)}")
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()          # (N, M)
    for name, t in (("a", a), ("b", b)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must hold finite values, got nan or inf")
        if (t.amax(1) == t.amin(1)).any():
            raise ValueError(f"{name} must have at least two distinct values in every example, got a constant "
                             f"row (row {int((t.amax(1) == t.amin(1)).nonzero()[0])}): its ranks are undefined")
    return a, b


def _average_ranks(t: Tensor) -> Tensor:
    """1-based ranks along dim 1, ties getting the mean of the ranks they span (float64)."""
    s = t.sort(dim=1).values
    below = torch.searchsorted(s, t, right=False)                                   # entries < t
    up_to = torch.searchsorted(s, t, right=True)                                    # entries <= t
    return (below + up_to + 1).double() / 2


def attribution_agreement(a: Tensor, b: Tensor, k: float = 0.1) -> dict[str, Tensor]:
    """How much two attribution maps agree, per example: Spearman, top-k IoU, cosine.

    With each example's map flattened to ``M`` entries:

    .. math::  \\rho = \\mathrm{corr}(\\mathrm{rank}(a), \\mathrm{rank}(b)), \\quad
               \\mathrm{IoU}_k = \\frac{|T_m(a) \\cap T_m(b)|}{|T_m(a) \\cup T_m(b)|}, \\quad
               \\cos = \\frac{a \\cdot b}{\\lVert a \\rVert\\, \\lVert b \\rVert}

    where :math:`\\mathrm{corr}` is Pearson's correlation, ranks of tied entries are their average
    rank (as ``scipy.stats.spearmanr``), and :math:`T_m` is the set of the :math:`m = \\max(1,
    \\mathrm{round}(kM))` entries largest in absolute value.

    Parameters
    ----------
    a, b : Tensor of shape (N, ...), float
        Two maps of the same examples (e.g. one model's and its compressed version's), same shape;
        every example of each has at least two distinct values.
    k : float, default=0.1
        Fraction of entries in the top set, in (0, 1].

    Returns
    -------
    dict
        ``"spearman"``, ``"topk_iou"``, ``"cosine"``: float64 tensors of shape (N,), computed in float64.

    Raises
    ------
    TypeError, ValueError
        Not tensors, shapes differ, fewer than two dims or two entries per example, not floating
        point, nan or inf, a constant example, ``k`` outside (0, 1].

    Rules
    -----
    ``m`` uses Python's ``round`` (half to even: ``round(2.5) == 2``). Ties at the cut of the top set
    are broken by the lower flat index (a stable sort of ``-|a|``).

    Examples
    --------
    >>> r = attribution_agreement(torch.tensor([[0., 1., 2., 3.]]), torch.tensor([[0., 1., 3., 2.]]), k=0.5)
    >>> [round(float(r[key][0]), 4) for key in ("spearman", "topk_iou", "cosine")]
    [0.8, 1.0, 0.9286]

    Taught in: 07_compression_and_explanation §1
    """
    a, b = _check_maps(a, b)
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"k must be a float in (0, 1], got {k!r}")
    k = check_float("k", k, 0.0, 1.0, low_inclusive=False)
    N, M = a.shape
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    spearman = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))
    m = max(1, round(k * M))
    top = torch.zeros(2, N, M, dtype=torch.bool)
    for i, t in enumerate((a, b)):
        order = torch.sort(-t.abs(), dim=1, stable=True).indices[:, :m]           # ties: lower index first
        top[i].scatter_(1, order, True)
    inter = (top[0] & top[1]).sum(1).double()
    iou = inter / (top[0] | top[1]).sum(1).double()
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return {"spearman": spearman, "topk_iou": iou, "cosine": cosine}


def _kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
             alpha: float) -> Tensor:
    """Chapter 04's ``kd_loss`` (Hinton et al. 2015), written out here: topic modules do not import each other."""
    T = temperature
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits.detach() / T, dim=1),
                    reduction="batchmean")
    return alpha * T ** 2 * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def explanation_kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, student_map: Tensor,
                        teacher_map: Tensor, lam: float = 1.0, temperature: float = 4.0,
                        alpha: float = 0.9) -> Tensor:
    """Explanation-aware distillation: Hinton's KD loss plus ``lam`` times a map-disagreement penalty.

    .. math::  L = \\underbrace{\\alpha T^2\\,\\mathrm{KL}(p^t_T \\,\\|\\, p^s_T) + (1 - \\alpha)\\,
               \\mathrm{CE}(z^s, y)}_{\\text{chapter 04's kd\\_loss}}
               + \\lambda\\,\\frac1N \\sum_i \\Big(1 - \\frac{s_i \\cdot t_i}
               {\\max(\\lVert s_i \\rVert\\,\\lVert t_i \\rVert,\\ \\varepsilon)}\\Big)

    with :math:`s_i, t_i` the student's and the teacher's maps of example ``i`` flattened, and
    :math:`\\varepsilon = 10^{-8}` (:data:`COSINE_EPS`): an all-zero map has cosine 0. The KL term is
    batch-mean (``F.kl_div(..., reduction="batchmean")``), the cross-entropy at ``T = 1``.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor of shape (N, C), float
    labels : Tensor of shape (N,), int64
    student_map, teacher_map : Tensor of shape (N, ...), float, the same shape
        Explanation maps (e.g. Grad-CAM) of each example; the student's must carry gradients to
        train on (computed with ``create_graph=True``).
    lam : float, default=1.0
        Weight of the explanation term, >= 0.
    temperature : float, default=4.0
        > 0.
    alpha : float, default=0.9
        In [0, 1].

    Returns
    -------
    Tensor of shape ()
        Differentiable with respect to ``student_logits`` and ``student_map``; nothing flows into
        ``teacher_logits`` or ``teacher_map`` (both detached).

    Raises
    ------
    TypeError, ValueError
        Wrong types; logits not (N, C) or of different shapes; labels not int64 (N,) in [0, C); maps
        of different shapes or another batch size; ``lam < 0``, ``temperature <= 0``, ``alpha``
        outside [0, 1].

    References
    ----------
    Hinton, Vinyals & Dean (2015), arXiv:1503.02531.

    Examples
    --------
    >>> z, y, m = torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.tensor([[0.0, 1.0]])
    >>> round(float(explanation_kd_loss(z, z, y, m, torch.tensor([[1.0, 0.0]]), lam=2.0, alpha=1.0)), 4)
    2.0

    Taught in: 07_compression_and_explanation §4
    """
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits),
                    ("student_map", student_map), ("teacher_map", teacher_map)):
        check_tensor(name, t)
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits and student_logits must both have shape (N, C), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    N, C = student_logits.shape
    check_tensor("labels", labels)
    if labels.dtype != torch.int64 or tuple(labels.shape) != (N,) or (N and (labels.min() < 0 or labels.max() >= C)):
        raise ValueError(f"labels must be an int64 tensor of shape ({N},) with classes in [0, {C}), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if student_map.dim() < 2 or len(student_map) != N or teacher_map.shape != student_map.shape:
        raise ValueError(f"teacher_map and student_map must have the same shape (N={N}, ...), got "
                         f"{tuple(student_map.shape)} and {tuple(teacher_map.shape)}")
    lam = check_float("lam", lam, 0.0)
    temperature = check_float("temperature", temperature, 0.0, np.inf, low_inclusive=False)
    alpha = check_float("alpha", alpha, 0.0, 1.0)
    s = student_map.flatten(1)                                                     # (N, M)
    t = teacher_map.detach().flatten(1).to(s.dtype)
    cos = (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1)).clamp_min(COSINE_EPS)  # (N,)
    return _kd_loss(student_logits, teacher_logits, labels, temperature, alpha) + lam * (1.0 - cos).mean()


def taylor_channel_importance(activation: Tensor, gradient: Tensor) -> Tensor:
    """First-order Taylor importance of each channel (Molchanov et al., 2017).

    Removing channel ``c`` (setting its activation to 0) changes the loss by about
    :math:`-\\sum_{h,w} A_{nchw}\\, \\partial L / \\partial A_{nchw}` for example ``n``; the score is

    .. math::  \\Theta_c = \\frac1N \\sum_{n=1}^{N} \\Big|\\frac{1}{HW}\\sum_{h,w}
               A_{nchw} \\frac{\\partial L}{\\partial A_{nchw}}\\Big|

    (absolute value per example, then the batch mean).

    Parameters
    ----------
    activation : Tensor of shape (N, C, H, W), float
        A layer's output on a batch.
    gradient : Tensor of shape (N, C, H, W), float
        The loss's gradient with respect to ``activation``.

    Returns
    -------
    Tensor of shape (C,)
        In ``activation``'s dtype, >= 0; no gradient.

    Raises
    ------
    TypeError, ValueError
        Not tensors, not 4-D floating point, shapes differ, ``N = 0``.

    References
    ----------
    Molchanov, P. et al. (2017). Pruning Convolutional Neural Networks for Resource Efficient
    Inference. ICLR. arXiv:1611.06440, equation (8).

    Examples
    --------
    >>> A = torch.tensor([[[[1.0, 2.0]], [[1.0, 1.0]]], [[[1.0, 0.0]], [[2.0, 2.0]]]])   # (2, 2, 1, 2)
    >>> taylor_channel_importance(A, torch.tensor([[[[1.0, -1.0]], [[1.0, 1.0]]], [[[2.0, 0.0]], [[1.0, 1.0]]]]))
    tensor([0.7500, 1.5000])

    Taught in: 07_compression_and_explanation §5
    """
    check_tensor("activation", activation)
    check_tensor("gradient", gradient)
    if activation.dim() != 4 or not activation.is_floating_point() or len(activation) == 0:
        raise ValueError(f"activation must be a non-empty floating-point tensor of shape (N, C, H, W), got "
                         f"{activation.dtype} of shape {tuple(activation.shape)}")
    if gradient.shape != activation.shape or not gradient.is_floating_point():
        raise ValueError(f"gradient must be a floating-point tensor of activation's shape "
                         f"{tuple(activation.shape)}, got {gradient.dtype} of shape {tuple(gradient.shape)}")
    product = activation.detach() * gradient.detach().to(activation.dtype)          # (N, C, H, W)
    return product.mean(dim=(2, 3)).abs().mean(0)                                  # (C,)


# =========================================================================== explanations of many models
def gradcam_layer(model: nn.Module) -> nn.Module:
    """The module whose output is a ``SmallCNN``'s second convolution's output, compressed or not.

    ``model.features[2]`` is that conv, its low-rank ``Sequential`` replacement, or its fake-quantized
    wrapper: each outputs the (N, C, S, S) maps Grad-CAM weights.
    """
    return check_module("model", model).features[2]


def differentiable_grad_cam(model: nn.Module, x: Tensor, target: Tensor, layer: nn.Module | None = None
                            ) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps that can be trained on, and the logits: ``(cam (N, 1, h, w), logits (N, C))``.

    The same map as chapter 05's ``grad_cam`` (ReLU of the gradient-weighted channel sum), but the
    gradient is taken with ``create_graph=True``, so the map is a differentiable function of the
    weights (double backpropagation).
    """
    layer = gradcam_layer(model) if layer is None else layer
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        logits = model(x)                                                           # (N, C)
    finally:
        handle.remove()
    A = seen[-1]                                                                    # (N, K, h, w)
    picked = logits.gather(1, target.view(-1, 1)).sum()
    grad, = torch.autograd.grad(picked, A, create_graph=True)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * A).sum(1, keepdim=True))
    return cam, logits


def explanation_maps(models_: dict[str, nn.Module], explainers: dict[str, Callable], X: Tensor, target: Tensor,
                     size: Sequence[int] | None = None) -> dict[str, dict[str, Tensor]]:
    """``maps[explainer][model]``: each explainer's maps of each model on ``X`` (one thread, detached).

    A map of another resolution than ``size`` (Grad-CAM at the layer's) is upsampled bilinearly.
    """
    size = tuple(X.shape[2:]) if size is None else tuple(size)
    out: dict[str, dict[str, Tensor]] = {name: {} for name in explainers}
    with timing.num_threads(1):
        for e_name, explain in explainers.items():
            for m_name, model in models_.items():
                a = explain(model.eval(), X, target).detach()
                if tuple(a.shape[2:]) != size:
                    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
                out[e_name][m_name] = a
    return out


def agreement_rows(maps: dict[str, dict[str, Tensor]], reference: str, agreement: Callable = attribution_agreement,
                   k: float = 0.1, accuracy: dict[str, float] | None = None) -> list[dict]:
    """One row per (explainer, model): mean agreement of its maps with the ``reference`` model's maps.

    Rows whose model or reference has a constant map (an all-zero Grad-CAM) leave those examples
    out; ``n`` says how many examples were compared.
    """
    rows = []
    for e_name, by_model in maps.items():
        ref = by_model[reference].flatten(1)
        for m_name, a in by_model.items():
            a = a.flatten(1)
            ok = (ref.amax(1) > ref.amin(1)) & (a.amax(1) > a.amin(1))
            r = agreement(ref[ok], a[ok], k=k)
            row = {"explainer": e_name, "model": m_name, "n": int(ok.sum())}
            row.update({key: float(v.mean()) for key, v in r.items()})
            if accuracy is not None:
                row["accuracy"] = accuracy[m_name]
            rows.append(row)
    return rows


def localisation_rows(maps: dict[str, dict[str, Tensor]], masks: Tensor, score: Callable) -> list[dict]:
    """Mean ``score(map, masks)`` (e.g. chapter 05's ``mask_overlap``) per (explainer, model)."""
    return [{"explainer": e, "model": m, "localisation": float(score(a, masks).mean())}
            for e, by_model in maps.items() for m, a in by_model.items()]


# =========================================================================== controls: fine-tuning alone, a band
def fine_tune_only(model: nn.Module, split, *, seeds: Sequence[int], epochs: int, lr: float = 1e-3,
                   batch_size: int = 64, progress: bool = False) -> list[nn.Module]:
    """The fine-tune-only control: copies of ``model`` trained ``epochs`` more epochs, nothing removed.

    A compressed model that was fine-tuned has had two things done to it: the compression and the
    retraining. Its twin gets only the second: the same optimiser (Adam, ``lr``), batches, epochs and
    seed ``s`` (the shuffle of :func:`course_lib.models.train`) as chapter 01's ``prune_one_shot``
    (``pruning.fine_tune`` with its default ``lr = 1e-3``), but no mask. Seed ``s`` of a pruned model and
    seed ``s`` of its twin see the batches in the same order, so the two are paired by seed; the
    difference of their agreements with the original is what the compression adds to the retraining.

    Parameters
    ----------
    model : nn.Module
        The trained original; not changed.
    split : data.Split
        Trained on ``split.X_train, split.y_train``.
    seeds : sequence of int >= 0
        One twin per seed; at least one.
    epochs : int >= 1
        The compressed model's fine-tuning epochs.
    lr : float > 0, default=1e-3
    batch_size : int >= 1, default=64
    progress : bool, default=False
        A tqdm bar over seeds.

    Returns
    -------
    list of nn.Module
        In eval mode, in the order of ``seeds``. Training runs on one thread.
    """
    from tqdm.auto import tqdm

    check_module("model", model)
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got an empty sequence")
    epochs = check_int("epochs", epochs, 1)
    lr = check_float("lr", lr, 0.0, low_inclusive=False)
    batch_size = check_int("batch_size", batch_size, 1)
    out = []
    with timing.num_threads(1):
        for s in tqdm(seeds, desc="fine-tune only", disable=not check_bool("progress", progress), leave=False):
            twin = copy.deepcopy(model)
            models.train(twin, split.X_train, split.y_train, epochs=epochs, lr=lr, batch_size=batch_size, seed=s,
                         progress=False)
            out.append(twin.eval())
    return out


def agreement_per_image(maps: dict[str, dict[str, Tensor]], reference: str,
                        agreement: Callable = attribution_agreement, metric: str = "spearman",
                        k: float = 0.1) -> dict[str, dict[str, Tensor]]:
    """``out[explainer][model]``: each image's agreement with the ``reference`` model's map (float64, (N,)).

    The per-image values that :func:`agreement_rows` averages, kept so that two models (or two groups of
    models) can be compared image by image. An image where either map is constant (an all-zero
    Grad-CAM: no ranks) gets ``nan``; :func:`group_agreement` leaves such images out.

    Parameters
    ----------
    maps : dict
        ``maps[explainer][model]``, tensors of shape (N, ...), as from :func:`explanation_maps`.
    reference : str
        A model present under every explainer.
    agreement : callable, default=attribution_agreement
    metric : str, default="spearman"
        A key of ``agreement``'s result.
    k : float, default=0.1
    """
    if not isinstance(maps, dict) or not maps:
        raise TypeError(f"maps must be a non-empty dict explainer -> {{model: maps}}, got {type(maps).__name__}")
    out: dict[str, dict[str, Tensor]] = {}
    for e, by_model in maps.items():
        if reference not in by_model:
            raise ValueError(f"reference must be a model of every explainer, got {reference!r} (not under {e!r})")
        ref = by_model[reference].flatten(1)
        out[e] = {}
        for m, a in by_model.items():
            a = a.flatten(1)
            if a.shape != ref.shape:
                raise ValueError(f"maps[{e!r}][{m!r}] must have the reference's shape {tuple(ref.shape)}, "
                                 f"got {tuple(a.shape)}")
            ok = (ref.amax(1) > ref.amin(1)) & (a.amax(1) > a.amin(1))
            values = torch.full((len(a),), float("nan"), dtype=torch.float64)
            if ok.any():
                r = agreement(ref[ok], a[ok], k=k)
                if metric not in r:
                    raise ValueError(f"metric must be one of {sorted(r)}, got {metric!r}")
                values[ok] = r[metric].double()
            out[e][m] = values
    return out


def _group_values(per_image: dict[str, Tensor], names: Sequence[str], label: str) -> Tensor:
    if isinstance(names, str) or not names:
        raise ValueError(f"{label} must be a non-empty list of model names, got {names!r}")
    missing = [n for n in names if n not in per_image]
    if missing:
        raise ValueError(f"{label} must name models of per_image ({sorted(per_image)}), got unknown {missing}")
    return torch.stack([per_image[n] for n in names])                               # (models, N)


def group_agreement(per_image: dict[str, Tensor], names: Sequence[str], *, n_boot: int = 2000,
                    seed: int = 0) -> stats.Interval:
    r"""Mean agreement of a group of models (seeds of one recipe) with the reference, bootstrapped over images.

    Per image :math:`j`, the group's value is the mean over its models :math:`\bar a_j = \frac1K \sum_k a_{kj}`
    (seeds averaged); the estimate is :math:`\frac1n \sum_j \bar a_j` over the ``n`` images where no
    model's value is ``nan``, with the percentile bootstrap interval over those images
    (:func:`course_lib.stats.bootstrap_interval`). The images are the sample: the interval says how the
    mean would move with other test images, for these trained models.
    """
    v = _group_values(per_image, names, "names")
    ok = ~torch.isnan(v).any(0)
    return stats.bootstrap_interval(v[:, ok].mean(0).numpy(), n_boot=n_boot, seed=seed)


def agreement_difference(per_image: dict[str, Tensor], a: Sequence[str], b: Sequence[str], *,
                         n_boot: int = 2000, seed: int = 0) -> stats.Interval:
    r"""Group ``a``'s mean agreement minus group ``b``'s, paired by image, with a bootstrap interval.

    Per image :math:`j`: :math:`d_j = \bar a_j - \bar b_j` (each group averaged over its models, e.g. the
    three seeds of a pruned model minus the three seeds of its fine-tune-only twin); the interval is the
    percentile bootstrap of :math:`\bar d` over the images where no value is ``nan``. Resampling the
    images jointly keeps the pairing: an image that is hard for both groups moves both.
    """
    va, vb = _group_values(per_image, a, "a"), _group_values(per_image, b, "b")
    ok = ~(torch.isnan(va).any(0) | torch.isnan(vb).any(0))
    d = (va[:, ok].mean(0) - vb[:, ok].mean(0)).numpy()
    iv = stats.bootstrap_interval(d, n_boot=n_boot, seed=seed)
    return replace(iv, method="paired bootstrap over images", difference=True)


def band_rows(per_image: dict[str, dict[str, Tensor]], groups: dict[str, Sequence[str]],
              accuracy: dict[str, float] | None = None, *, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per (explainer, group): the group's mean agreement with its interval over images, and its spread.

    Columns: ``explainer``, ``group``, ``models`` (how many seeds), ``images``, ``agreement`` with
    ``low``/``high`` (:func:`group_agreement`), ``seed min`` / ``seed max`` (the lowest and highest of
    the group's per-model means: the band the seeds span) and, with ``accuracy``, the mean test accuracy.
    """
    rows = []
    for e, by_model in per_image.items():
        for label, names in groups.items():
            iv = group_agreement(by_model, names, n_boot=n_boot, seed=seed)
            per_model = [float(by_model[n][~torch.isnan(by_model[n])].mean()) for n in names]
            row = {"explainer": e, "group": label, "models": len(names), "images": iv.n, "agreement": iv.estimate,
                   "low": iv.low, "high": iv.high, "seed min": min(per_model), "seed max": max(per_model)}
            if accuracy is not None:
                row["test accuracy"] = float(np.mean([accuracy[n] for n in names]))
            rows.append(row)
    return rows


# =========================================================================== explanation-aware distillation
def train_explained_student(student: nn.Module, X: Tensor, y: Tensor, teacher_logits: Tensor,
                            teacher_maps: Tensor, *, lam: float, temperature: float = 4.0, alpha: float = 0.9,
                            loss: Callable = explanation_kd_loss, epochs: int = 10, lr: float = 3e-3,
                            batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Train ``student`` in place on ``loss(z_s, z_t, y, cam_s, cam_t, lam, T, alpha)``; one thread.

    The teacher's logits and Grad-CAM maps are computed once beforehand on ``X``; each batch looks up
    its rows (:func:`course_lib.models.train` gets the row indices as targets). The student's Grad-CAM
    for the true class comes from :func:`differentiable_grad_cam`; with ``lam = 0`` the map is not
    computed and this is plain KD (chapter 04's loss) with the same data, seed and budget.
    """
    def loss_fn(out: Tensor, rows: Tensor) -> Tensor:
        if lam == 0:
            return _kd_loss(out, teacher_logits[rows], y[rows], temperature, alpha)
        cam, logits = differentiable_grad_cam(student, X[rows], y[rows])
        return loss(logits, teacher_logits[rows], y[rows], cam, teacher_maps[rows], lam, temperature, alpha)

    with timing.num_threads(1):
        models.train(student, X, torch.arange(len(X)), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                     progress=False, loss_fn=loss_fn)
    return student.eval()


@torch.no_grad()
def logits_of(model: nn.Module, X: Tensor) -> Tensor:
    """The model's logits on ``X`` in eval mode, without gradient."""
    return model.eval()(X)


# =========================================================================== attribution-guided pruning
def activations_and_gradients(model: nn.Module, layers: Sequence[str], X: Tensor, y: Tensor
                              ) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer: (A, dL/dA)}`` for the cross-entropy on ``(X, y)`` (model in eval mode, one pass)."""
    named = dict(model.named_modules())
    seen: dict[str, Tensor] = {}
    hooks = [named[n].register_forward_hook(lambda m, i, out, n=n: seen.__setitem__(n, out)) for n in layers]
    try:
        loss = F.cross_entropy(model.eval()(X), y)
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(loss, [seen[n] for n in layers])
    return {n: (seen[n].detach(), g.detach()) for n, g in zip(layers, grads)}


def channel_keep(scores: Tensor, amount: float) -> Tensor:
    """Bool mask of the channels kept: drop the ``round(amount * C)`` lowest scores (ties: higher index dropped)."""
    n_drop = round(amount * len(scores))
    order = torch.sort(scores, stable=True).indices
    keep = torch.ones(len(scores), dtype=torch.bool)
    keep[order[:n_drop]] = False
    return keep


def prune_channels(model: nn.Module, keep: dict[str, Tensor], X: Tensor, y: Tensor, *, epochs: int,
                   lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose conv layers lose the output channels not in ``keep`` (weight and bias set
    to 0 and held there by gradient masks), fine-tuned ``epochs`` epochs on ``(X, y)`` with one thread."""
    pruned = copy.deepcopy(model)
    named = dict(pruned.named_modules())
    handles = []
    with torch.no_grad():
        for name, k in keep.items():
            conv = named[name]
            mask_w = k.view(-1, *[1] * (conv.weight.dim() - 1)).to(conv.weight.dtype)
            conv.weight.mul_(mask_w)
            handles.append(conv.weight.register_hook(lambda g, m=mask_w: g * m))
            if conv.bias is not None:
                mask_b = k.to(conv.bias.dtype)
                conv.bias.mul_(mask_b)
                handles.append(conv.bias.register_hook(lambda g, m=mask_b: g * m))
    try:
        if epochs > 0:
            with timing.num_threads(1):
                models.train(pruned, X, y, epochs=epochs, lr=lr, seed=seed, progress=False)
    finally:
        for h in handles:
            h.remove()
    return pruned.eval()


# =========================================================================== the watermark shortcut
def channel_pruning_rows(model: nn.Module, split, keeps: dict[str, dict[str, Tensor]], *, seeds: Sequence[int],
                         epochs: int, lr: float = 1e-3, progress: bool = True) -> list[dict]:
    """For each criterion's ``keep`` masks: accuracy right after removing the channels, then after ``epochs`` of
    fine-tuning with each seed (val and test), via :func:`prune_channels`."""
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(keeps) * len(seeds), desc="prune + fine-tune", disable=not progress, leave=False)
    for criterion, keep in keeps.items():
        before = models.evaluate(prune_channels(model, keep, split.X_train, split.y_train, epochs=0),
                                 split.X_val, split.y_val)
        for seed in seeds:
            bar.update()
            tuned = prune_channels(model, keep, split.X_train, split.y_train, epochs=epochs, lr=lr, seed=seed)
            rows.append({"criterion": criterion, "seed": seed, "val accuracy before fine-tuning": before,
                         "val accuracy": models.evaluate(tuned, split.X_val, split.y_val),
                         "test accuracy": models.evaluate(tuned, split.X_test, split.y_test)})
    bar.close()
    return rows


def corner_mask(size: int, patch: int = 2) -> Tensor:
    """Bool (size, size) mask of the four ``patch x patch`` corners (where the watermark can sit)."""
    m = torch.zeros(size, size, dtype=torch.bool)
    for r in (0, size - patch):
        for c in (0, size - patch):
            m[r:r + patch, c:c + patch] = True
    return m


def attribution_share(attribution: Tensor, region: Tensor) -> Tensor:
    """Per example: the share of the total |attribution| (summed over channels) inside ``region`` (H, W)."""
    a = attribution.detach().abs().sum(1)                                           # (N, H, W)
    return a[:, region].sum(1) / a.flatten(1).sum(1).clamp_min(1e-12)


# =========================================================================== tables and plots
def summarize(rows: Sequence[dict], by: str | Sequence[str], columns: Sequence[str]):
    """A pandas table of the mean and std (over seeds, ``ddof=1``) of ``columns`` grouped by ``by``."""
    import pandas as pd

    frame = pd.DataFrame([dict(r) for r in rows])
    grouped = frame.groupby(by, sort=False)[list(columns)]
    return pd.concat({"mean": grouped.mean(), "std": grouped.std(ddof=1)}, axis=1).swaplevel(axis=1)[
        [(c, s) for c in columns for s in ("mean", "std")]]


def plot_maps(image: Tensor, maps: dict[str, Tensor], mask: Tensor | None = None, title: str = ""):
    """One input (H, W) and its maps (H, W) side by side; diverging colours centred on 0."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(1.7 * (len(maps) + 1), 2.0))
    axes[0].imshow(image, cmap="gray")
    if mask is not None:
        axes[0].contour(mask.float(), levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title(title or "input", fontsize=7)
    for ax, (name, a) in zip(axes[1:], maps.items()):
        lim = float(a.abs().max()) or 1.0
        ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(name, fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig, axes


# =========================================================================== graded exercises of sections 2, 4 and 6
# trainable_grad_cam (section 4), band_position (section 2) and stamp_test (section 6); attribution_agreement
# (section 1) is above.
__all__ += ["trainable_grad_cam", "band_position", "stamp_test"]


def _target_rows(target: object, n: int, n_classes: int) -> Tensor:
    """``target`` (an int, or one int per row) as an int64 tensor of shape (n,), each in [0, n_classes)."""
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer, list, tuple, Tensor)):
        raise TypeError(f"target must be an int or one int per row, got {target!r}")
    t = torch.full((n,), int(target)) if isinstance(target, (int, np.integer)) else torch.as_tensor(target)
    if t.shape != (n,) or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"target must be an int or {n} ints, got {target!r}")
    if ((t < 0) | (t >= n_classes)).any():
        raise ValueError(f"target must be in [0, {n_classes}), got {target!r}")
    return t.to(torch.int64)


def trainable_grad_cam(model: nn.Module, layer: nn.Module, x: Tensor, target) -> Tensor:
    """Grad-CAM that can be trained on: a differentiable function of the model's weights.

    .. math:: L = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k A^k\\Big), \\qquad
              \\alpha_k = \\frac{1}{hw} \\sum_{u,v} \\frac{\\partial f_t}{\\partial A^k_{uv}}

    the value of chapter 05's ``grad_cam`` (``captum``'s ``LayerGradCam``), but :math:`\\alpha` is taken
    with ``create_graph=True``, so ``L`` stays in the autograd graph through **both** :math:`A` and
    :math:`\\alpha` (double backpropagation): a loss on ``L`` trains every weight that shapes the map,
    the classifier's included. ``target``: an int or one int per row. Returns (N, 1, h, w) in ``x``'s
    dtype at the layer's resolution; ``ValueError`` if ``layer`` is not in ``model``, its output is not
    4-D, or a target is out of range.

    Taught in: 07_compression_and_explanation §4
    """
    check_module("model", model)
    check_module("layer", layer)
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer must be a submodule of model, got a module that model does not contain")
    check_tensor("x", x)
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        logits = model(x)                                                           # (N, C)
    finally:
        handle.remove()
    t = _target_rows(target, len(x), logits.shape[1])
    A = seen[-1]                                                                    # (N, K, h, w)
    if A.dim() != 4:
        raise ValueError(f"layer must output (N, K, h, w) feature maps, got shape {tuple(A.shape)}")
    grad, = torch.autograd.grad(logits.gather(1, t.view(-1, 1)).sum(), A, create_graph=True)
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * A).sum(1, keepdim=True))


def band_position(compressed: Tensor, band: Tensor) -> dict:
    """Where a compressed model's agreement lies in the band of independently trained models.

    ``compressed`` (N,): per image, the compressed model's agreement with the original; ``band``
    (B, N), B >= 2: the same for B independent models. Only the images where all B + 1 values are
    finite (not nan) are used, the same images for every model. With :math:`m` the compressed model's
    mean and :math:`b_1..b_B` the band models' means over those images:

    .. math:: \\mathrm{percentile} = 100\\,\\frac{\\#\\{i: b_i < m\\} + \\tfrac12\\#\\{i: b_i = m\\}}{B},

    ``verdict`` "below" if :math:`m < \\min b`, "above" if :math:`m > \\max b`, else "inside". Returns
    ``{"mean", "band_low", "band_high", "percentile"}`` (floats, float64 arithmetic), ``"verdict"`` and
    ``"n"`` (images used). ``ValueError``: not 1-D / 2-D with N columns, B < 2, or no image left.

    Taught in: 07_compression_and_explanation §2
    """
    check_tensor("compressed", compressed)
    check_tensor("band", band)
    if compressed.dim() != 1 or band.dim() != 2 or band.shape[1] != len(compressed) or len(band) < 2:
        raise ValueError(f"compressed must be (N,) and band (B, N) with B >= 2, got {tuple(compressed.shape)} "
                         f"and {tuple(band.shape)}")
    values = torch.cat([compressed[None], band]).detach().double()                  # (B + 1, N)
    keep = torch.isfinite(values).all(0)                                            # the common images
    if not keep.any():
        raise ValueError("compressed and band must share at least one image where every value is finite")
    m, b = values[0, keep].mean(), values[1:, keep].mean(1)                         # (), (B,)
    percentile = 100.0 * (float((b < m).sum()) + 0.5 * float((b == m).sum())) / len(b)
    verdict = "below" if m < b.min() else "above" if m > b.max() else "inside"
    return {"mean": float(m), "band_low": float(b.min()), "band_high": float(b.max()), "percentile": percentile,
            "verdict": verdict, "n": int(keep.sum())}


def stamp_test(model: nn.Module, images: Tensor, stamp: Callable[[Tensor, int], Tensor]) -> dict:
    """The causal shortcut test: does the prediction follow a stamped class marker?

    For each class :math:`c` of the model's :math:`K` outputs, every image is stamped with ``stamp(images,
    c)`` (a new batch; the clean images are never changed) and predicted (argmax of the logits).
    ``follow[c]`` is the fraction of images predicted :math:`c` after :math:`c`'s stamp; ``rate`` the mean of
    ``follow`` (over all N K pairs); ``flip`` the fraction of the N (K - 1) pairs whose **clean**
    prediction is not :math:`c` that become :math:`c`. A model that ignores the stamp scores ``rate = 1/K``
    exactly and ``flip = 0``; one that always obeys it scores 1 and 1. Returns ``{"follow": (K,) float64,
    "rate": float, "flip": float}``; ``ValueError`` for images that are not (N, C, H, W) with N >= 1.

    Taught in: 07_compression_and_explanation §6
    """
    check_module("model", model)
    check_tensor("images", images)
    if images.dim() != 4 or len(images) == 0 or not images.is_floating_point():
        raise ValueError(f"images must be a float (N, C, H, W) tensor with N >= 1, got {tuple(images.shape)}")
    with torch.no_grad():
        clean = model(images).argmax(1)                                             # (N,)
        K = int(model(images[:1]).shape[1])
        hit = torch.stack([model(stamp(images, c)).argmax(1) == c for c in range(K)])   # (K, N)
    classes = torch.arange(K)[:, None]
    flips = hit & (clean[None] != classes)
    return {"follow": hit.double().mean(1), "rate": float(hit.double().mean()),
            "flip": float(flips.sum()) / (len(images) * (K - 1))}
