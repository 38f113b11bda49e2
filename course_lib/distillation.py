"""Chapter 04 -- knowledge distillation: soft targets, Hinton's loss with T^2, attention transfer.

A small **student** learns from a trained **teacher** by matching the teacher's output
distribution softened by a temperature ``T``:

.. math::  p_k(z; T) = \\frac{\\exp(z_k / T)}{\\sum_j \\exp(z_j / T)}, \\qquad
           L = \\alpha\\, T^2\\, \\mathrm{KL}\\big(p(z^t; T)\\,\\|\\,p(z^s; T)\\big)
               + (1 - \\alpha)\\, \\mathrm{CE}(z^s, y)

and, optionally, by matching the teacher's spatial **attention maps** (Zagoruyko & Komodakis, 2017).
The first four functions are the references of the chapter's exercises; the rest are the helpers
the notebook calls (a distillation training loop on top of :func:`course_lib.models.train`, the
protocols that compare students, the leaky protocol of a widespread tutorial, plots).

References
----------
Hinton, G., Vinyals, O. and Dean, J. (2015). Distilling the Knowledge in a Neural Network.
arXiv:1503.02531.
Zagoruyko, S. and Komodakis, N. (2017). Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer. ICLR. arXiv:1612.03928.

Taught in: 04_distillation.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import models, stats
from .validation import check_float, check_module, check_tensor

__all__ = ["soft_targets", "kd_loss", "attention_map", "attention_transfer_loss", "logits_of", "features_of",
           "soft_term_gradient_norms", "class_similarity", "train_student", "compare_students", "leaky_protocol",
           "transfer_set_study", "labelled_subset", "low_label_study", "fidelity", "logit_matching_ratio", "seed_values", "paired_vs", "choose_on_validation", "summarize", "teacher_minus_students",
           "plot_gradient_norms", "plot_class_similarity", "plot_soft_targets", "plot_attention_maps"]


# --------------------------------------------------------------------------- argument checks
def _check_positive(name: str, value: object) -> float:
    """``value`` as a float, if it is a finite real number > 0 (``bool`` is not a number)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a finite float > 0, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    return float(value)


def _check_logits(name: str, logits: object) -> torch.Tensor:
    check_tensor(name, logits)
    if logits.ndim != 2 or not logits.is_floating_point() or logits.shape[1] == 0:
        raise ValueError(f"{name} must be a float tensor of shape (N, C), got {logits.dtype} of shape "
                         f"{tuple(logits.shape)}")
    return logits


def _check_features(name: str, features: object) -> torch.Tensor:
    check_tensor(name, features)
    if features.ndim != 4 or not features.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of shape (N, C, H, W), got {features.dtype} of shape "
                         f"{tuple(features.shape)}; add a batch dim with .unsqueeze(0)")
    return features


# --------------------------------------------------------------------------- exercises
def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's softened class probabilities: softmax of ``logits / T`` along dim 1.

    .. math::  p_{ik} = \\frac{\\exp(z_{ik} / T)}{\\sum_j \\exp(z_{ij} / T)}

    Parameters
    ----------
    logits : Tensor of shape (N, C), float
    temperature : float
        ``T > 0``, finite. ``T = 1`` is the ordinary softmax; a larger ``T`` flattens the
        distribution and shows the small probabilities of the wrong classes.

    Returns
    -------
    Tensor of shape (N, C)
        Same dtype as ``logits``; each row sums to 1. Computed stably (large logits do not overflow).

    Raises
    ------
    TypeError, ValueError
        ``logits`` is not a float (N, C) tensor; ``temperature`` is not a finite number > 0.

    Examples
    --------
    >>> soft_targets(torch.tensor([[0.0, 2.0]]), 2.0)
    tensor([[0.2689, 0.7311]])

    Taught in: 04_distillation §1
    """
    _check_logits("logits", logits)
    T = _check_positive("temperature", temperature)
    return torch.softmax(logits / T, dim=1)  # (N, C)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton's distillation loss: soft term with the T^2 factor plus the hard cross-entropy.

    .. math::  L = \\alpha\\, T^2\\, \\frac{1}{N}\\sum_i \\sum_k p^t_{ik} \\log\\frac{p^t_{ik}}{p^s_{ik}}
               + (1 - \\alpha)\\, \\frac{1}{N}\\sum_i -\\log \\mathrm{softmax}(z^s_i)_{y_i}

    with :math:`p^t = \\mathrm{softmax}(z^t / T)`, :math:`p^s = \\mathrm{softmax}(z^s / T)`. The KL term is
    ``F.kl_div(log_softmax(z^s / T), softmax(z^t / T), reduction="batchmean")`` (summed over classes,
    averaged over the batch); the cross-entropy is at ``T = 1``. Its gradient with respect to
    :math:`z^s` is :math:`\\alpha\\,T\\,(p^s - p^t)/N + (1-\\alpha)(\\mathrm{softmax}(z^s) - \\mathrm{onehot}(y))/N`:
    the :math:`T^2` keeps the soft term's gradient of the same size whatever ``T``.

    Parameters
    ----------
    student_logits : Tensor of shape (N, C), float
    teacher_logits : Tensor of shape (N, C), float
        Detached: no gradient flows into the teacher.
    labels : Tensor of shape (N,), int64
        True classes in ``[0, C)``.
    temperature : float, default=4.0
        Finite, > 0.
    alpha : float, default=0.9
        Weight of the soft term, in [0, 1].

    Returns
    -------
    Tensor of shape ()
        The loss, in ``student_logits``' dtype, differentiable with respect to ``student_logits``.

    Raises
    ------
    TypeError, ValueError
        Wrong types, shapes that disagree, labels outside ``[0, C)``, ``temperature <= 0``,
        ``alpha`` outside [0, 1].

    References
    ----------
    Hinton, Vinyals & Dean (2015), arXiv:1503.02531, section 2.

    Examples
    --------
    >>> z = torch.tensor([[1.0, 0.0]])
    >>> float(kd_loss(z, z, torch.tensor([0]), temperature=2.0, alpha=1.0))
    0.0

    Taught in: 04_distillation §2
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    _check_labels(labels, *student_logits.shape)
    T = _check_positive("temperature", temperature)
    alpha = check_float("alpha", alpha, 0.0, 1.0)
    log_p_student = F.log_softmax(student_logits / T, dim=1)            # (N, C)
    p_teacher = F.softmax(teacher_logits.detach() / T, dim=1)           # (N, C), no gradient
    soft = F.kl_div(log_p_student, p_teacher.to(log_p_student.dtype), reduction="batchmean")
    hard = F.cross_entropy(student_logits, labels)
    return alpha * T ** 2 * soft + (1.0 - alpha) * hard


def _check_labels(labels: object, n: int, n_classes: int) -> torch.Tensor:
    check_tensor("labels", labels)
    if labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be an int64 tensor of shape ({n},), got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be classes in [0, {n_classes}), got values from {int(labels.min())} "
                         f"to {int(labels.max())}")
    return labels


def attention_map(features: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Spatial attention map of a feature tensor: channel mean of ``|A|^p``, flattened, L2-normalised.

    .. math::  Q_i = \\frac{v_i}{\\max(\\lVert v_i \\rVert_2, \\varepsilon)}, \\qquad
               v_i = \\mathrm{vec}\\Big(\\frac{1}{C}\\sum_c |A_{ic}|^p\\Big), \\quad \\varepsilon = 10^{-12}

    Parameters
    ----------
    features : Tensor of shape (N, C, H, W), float
        Activations of one layer.
    p : float, default=2
        The power, > 0 (Zagoruyko & Komodakis use 2).

    Returns
    -------
    Tensor of shape (N, H * W)
        Same dtype as ``features``; each row has unit L2 norm (or is 0 for an all-zero example).
        ``F.normalize(..., dim=1, eps=1e-12)``.

    References
    ----------
    Zagoruyko & Komodakis (2017), arXiv:1612.03928, section 3.1.

    Examples
    --------
    >>> attention_map(torch.tensor([[[[3.0, 4.0]]]]), p=1)
    tensor([[0.6000, 0.8000]])

    Taught in: 04_distillation §5
    """
    _check_features("features", features)
    p = _check_positive("p", p)
    v = features.abs().pow(p).mean(dim=1).flatten(1)                    # (N, H*W)
    return F.normalize(v, p=2.0, dim=1, eps=1e-12)


def attention_transfer_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                            p: float = 2) -> torch.Tensor:
    """Batch mean of the L2 distance between the student's and the teacher's attention maps.

    .. math::  L_{AT} = \\frac{1}{N}\\sum_i \\lVert Q^s_i - Q^t_i \\rVert_2

    (the distance, not its square). Channel counts may differ; batch and spatial sizes must match.
    The teacher's features are detached.

    Parameters
    ----------
    student_features : Tensor of shape (N, C_s, H, W), float
    teacher_features : Tensor of shape (N, C_t, H, W), float
    p : float, default=2

    Returns
    -------
    Tensor of shape ()
        In ``student_features``' dtype, in [0, 2].

    Raises
    ------
    ValueError
        Not 4-D, or ``N``, ``H``, ``W`` differ.

    Examples
    --------
    >>> a = torch.ones(2, 3, 4, 4)
    >>> float(attention_transfer_loss(a, torch.ones(2, 8, 4, 4)))
    0.0

    Taught in: 04_distillation §5
    """
    _check_features("student_features", student_features)
    _check_features("teacher_features", teacher_features)
    s_shape, t_shape = student_features.shape, teacher_features.shape
    if s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]:
        raise ValueError(f"teacher_features must have the batch and spatial sizes of student_features "
                         f"(N={s_shape[0]}, H, W={tuple(s_shape[2:])}), got shape {tuple(t_shape)}")
    q_student = attention_map(student_features, p)                      # (N, H*W)
    q_teacher = attention_map(teacher_features.detach(), p).to(q_student.dtype)
    return torch.linalg.vector_norm(q_student - q_teacher, dim=1).mean()


# --------------------------------------------------------------------------- model outputs
@torch.no_grad()
def logits_of(model: nn.Module, X: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's logits on ``X`` in eval mode, without gradient (the model's mode is restored)."""
    check_module("model", model)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])  # (N, K)
    finally:
        model.train(was_training)


def _layer(model: nn.Module, layer: str) -> nn.Module:
    return dict(model.named_modules())[layer]


@torch.no_grad()
def features_of(model: nn.Module, X: torch.Tensor, layer: str = "features.3") -> torch.Tensor:
    """Output of the submodule ``layer`` (a name from ``model.named_modules()``) on ``X``, in eval mode.

    ``"features.3"`` of a :class:`course_lib.models.SmallCNN` is the ReLU after the second convolution:
    ``(N, channels[1], S, S)``, before pooling.
    """
    batches: list[torch.Tensor] = []
    handle = _layer(model, layer).register_forward_hook(lambda m, i, out: batches.append(out))
    try:
        logits_of(model, X)
    finally:
        handle.remove()
    return torch.cat(batches)


# --------------------------------------------------------------------------- why T^2, what soft targets carry
def soft_term_gradient_norms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             temperatures: Sequence[float]) -> list[dict]:
    """Norm of the soft term's gradient w.r.t. the student's logits, with and without the T^2 factor.

    For each ``T``: ``||d KL(p^t_T || p^s_T) / d z^s||`` (batchmean KL) and ``T^2`` times it. For large
    ``T`` the first shrinks like :math:`1/T^2` (:math:`\\approx (z^s - z^t)/(C T^2)` per row, centred logits).
    """
    rows = []
    for T in temperatures:
        z = student_logits.detach().clone().requires_grad_(True)
        soft = F.kl_div(F.log_softmax(z / T, dim=1), F.softmax(teacher_logits / T, dim=1), reduction="batchmean")
        grad, = torch.autograd.grad(soft, z)
        norm = float(grad.norm())
        rows.append({"T": float(T), "grad norm without T^2": norm, "grad norm with T^2": T ** 2 * norm})
    return rows


def class_similarity(teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean soft target of each true class: row ``k`` averages ``soft_targets`` over examples of class ``k``."""
    p = soft_targets(teacher_logits, temperature)                       # (N, C)
    n_classes = p.shape[1]
    return torch.stack([p[labels == k].mean(dim=0) for k in range(n_classes)])  # (C, C)


# --------------------------------------------------------------------------- training a student
def train_student(student: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                  teacher_logits: torch.Tensor | None = None, temperature: float = 4.0, alpha: float = 0.9,
                  teacher_features: torch.Tensor | None = None, beta: float = 0.0, layer: str = "features.3",
                  epochs: int = 30, lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
                  X_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                  progress: bool = False, losses: dict[str, Callable] | None = None,
                  label_smoothing: float = 0.0) -> dict[str, list[float]]:
    """Train ``student`` in place with :func:`course_lib.models.train` on the distillation loss.

    .. math::  L = \\mathrm{kd\\_loss}(z^s, z^t, y; T, \\alpha) + \\beta\\, L_{AT}(A^s, A^t)

    Without ``teacher_logits`` it is the plain cross-entropy on ``y`` (a student from scratch, or on the
    teacher's hard pseudo-labels when ``y`` holds them). The teacher's logits (and features, for
    ``beta > 0``) are computed once beforehand on ``X`` (``logits_of``, ``features_of``); each batch looks
    up its rows: ``models.train`` is handed the row indices as its targets. The student's features come
    from a forward hook on ``layer``. ``losses`` may replace the two loss functions by your own
    (``{"kd_loss": ..., "attention_transfer_loss": ...}``, same signatures).

    ``label_smoothing`` :math:`\\varepsilon > 0` (only without a teacher) trains on the smoothed labels
    :math:`(1 - \\varepsilon)\\,\\mathrm{onehot}(y) + \\varepsilon / C` (Szegedy et al., 2016):
    softer targets that carry no information about which wrong class is closer.
    """
    check_module("student", student)
    check_float("label_smoothing", label_smoothing, 0.0, 1.0)
    if label_smoothing > 0 and teacher_logits is not None:
        raise ValueError(f"label_smoothing must be 0 when teacher_logits are given, got {label_smoothing!r}")
    kd = (losses or {}).get("kd_loss", kd_loss)
    at = (losses or {}).get("attention_transfer_loss", attention_transfer_loss)
    if teacher_logits is None:
        smooth = None if label_smoothing == 0 else (
            lambda out, target: F.cross_entropy(out, target, label_smoothing=label_smoothing))
        return models.train(student, X, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                            X_val=X_val, y_val=y_val, progress=progress, loss_fn=smooth)
    _check_positive("temperature", temperature)
    check_float("alpha", alpha, 0.0, 1.0)
    check_float("beta", beta, 0.0)
    store: dict[str, torch.Tensor] = {}
    handle = None
    if beta > 0:
        if teacher_features is None:
            raise ValueError("teacher_features must be given when beta > 0, got None")
        handle = _layer(student, layer).register_forward_hook(lambda m, i, out: store.__setitem__("a", out))

    def loss_fn(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        loss = kd(out, teacher_logits[rows], y[rows], temperature, alpha)
        if beta > 0:
            loss = loss + beta * at(store["a"], teacher_features[rows])
        return loss

    try:
        return models.train(student, X, torch.arange(len(X)), epochs=epochs, lr=lr, batch_size=batch_size,
                            seed=seed, X_val=X_val, y_val=y_val, progress=progress, loss_fn=loss_fn)
    finally:
        if handle is not None:
            handle.remove()


def _fresh(make_student: Callable[[], nn.Module], seed: int) -> nn.Module:
    models.set_seed(seed)
    return make_student()


def compare_students(teacher: nn.Module, make_student: Callable[[], nn.Module], split, *,
                     variants: dict[str, dict], seeds: Sequence[int] = (0, 1, 2), epochs: int = 30,
                     lr: float = 3e-3, batch_size: int = 128, layer: str = "features.3",
                     progress: bool = True, losses: dict[str, Callable] | None = None) -> list[dict]:
    """Train one student per (variant, seed) on the train split; validation and test accuracy of each.

    ``variants`` maps a name to its recipe: ``{}`` (from scratch, true labels), ``{"pseudo_labels": True}``
    (cross-entropy on the teacher's argmax), ``{"label_smoothing": eps}`` (from scratch on smoothed
    labels), or ``train_student`` keywords (``temperature``, ``alpha``, ``beta``) for distillation. Every recipe was chosen beforehand on validation; this is the one final
    test evaluation.
    """
    from tqdm.auto import tqdm

    z_t = logits_of(teacher, split.X_train)
    a_t = features_of(teacher, split.X_train, layer)
    rows = []
    for name, recipe in tqdm([(n, r) for n in variants for r in [variants[n]]], desc="students",
                             disable=not progress, leave=False):
        for s in seeds:
            student = _fresh(make_student, s)
            recipe = dict(recipe)
            budget = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": s}
            if recipe.pop("pseudo_labels", False):
                train_student(student, split.X_train, z_t.argmax(dim=1), **budget)
            elif not recipe or set(recipe) == {"label_smoothing"}:
                train_student(student, split.X_train, split.y_train, **budget, **recipe)
            else:
                train_student(student, split.X_train, split.y_train, teacher_logits=z_t, teacher_features=a_t,
                              layer=layer, losses=losses, **budget, **recipe)
            rows.append({"variant": name, "seed": s, "parameters": sum(p.numel() for p in student.parameters()),
                         "val accuracy": models.evaluate(student, split.X_val, split.y_val),
                         "test accuracy": models.evaluate(student, split.X_test, split.y_test),
                         "model": student})
    return rows


def leaky_protocol(teacher: nn.Module, make_student: Callable[[], nn.Module], split, *,
                   seeds: Sequence[int] = (0, 1, 2), epochs: int = 30, lr: float = 3e-3, batch_size: int = 128,
                   progress: bool = True) -> list[dict]:
    """A widespread tutorial's protocol, reproduced, next to a control that differs only in the leak.

    Leaky: fit the student to the teacher's predictions (softmax at T = 1, no temperature) on the
    **test** inputs and report its accuracy on that same test set. Control: the same recipe on the
    validation inputs (as many images, equally unseen by the teacher's training), evaluated on the test
    set it never saw. Each row: both accuracies and the leaky student's agreement with the teacher.
    """
    from tqdm.auto import tqdm

    rows = []
    for s in tqdm(list(seeds), desc="leaky protocol", disable=not progress, leave=False):
        accuracy = {}
        for name, X_fit, y_fit in (("leaky", split.X_test, split.y_test), ("control", split.X_val, split.y_val)):
            student = _fresh(make_student, s)
            train_student(student, X_fit, y_fit, teacher_logits=logits_of(teacher, X_fit), temperature=1.0,
                          alpha=1.0, epochs=epochs, lr=lr, batch_size=batch_size, seed=s)
            accuracy[name] = models.evaluate(student, split.X_test, split.y_test)
            if name == "leaky":
                same = logits_of(student, split.X_test).argmax(1) == logits_of(teacher, split.X_test).argmax(1)
        rows.append({"seed": s, "reported (trained on test)": accuracy["leaky"],
                     "control (trained on other images)": accuracy["control"],
                     "agreement with teacher on test": same.double().mean().item()})
    return rows


def transfer_set_study(teacher: nn.Module, make_student: Callable[[], nn.Module], split, *, omitted: int = 3,
                       seeds: Sequence[int] = (1, 2, 3, 4, 5), temperature: float = 4.0, alpha: float = 0.9,
                       epochs: int = 15, lr: float = 3e-3, batch_size: int = 128,
                       shifts: Sequence[float] = tuple(np.arange(0.0, 10.01, 0.5)),
                       progress: bool = True) -> list[dict]:
    r"""Hinton et al.'s transfer-set experiment: students that never see one class, with and without soft targets.

    Every student trains on the training images **without** class ``omitted`` (the transfer set), paired by
    seed: ``"from scratch"`` on the labels (cross-entropy), ``"distilled"`` with :func:`kd_loss` on the
    teacher's logits at ``temperature`` and ``alpha``. Neither sees an example of the omitted class; only the
    distilled one hears about it, through the probability the teacher gives that class on *other* digits.
    Because the transfer set never says "this one is the omitted class", its bias is too low; as in the
    paper, a bias shift :math:`b_{c} \leftarrow b_{c} + \delta` is added to the omitted class's logit,
    with :math:`\delta` chosen from ``shifts`` on the **validation** split (the best overall validation
    accuracy; a tie keeps the smaller shift), the same rule for both arms. Reported on test: the recall of
    the omitted class and the overall accuracy, without and with the shift.

    Returns
    -------
    list of dict
        One row per (variant, seed): ``variant``, ``seed``, ``shift``, ``omitted recall``, ``omitted recall,
        shifted``, ``test accuracy``, ``test accuracy, shifted``, ``model``.

    Raises
    ------
    ValueError
        ``omitted`` not a class of the teacher, ``alpha`` outside [0, 1], ``temperature`` not > 0, or
        ``shifts`` empty or negative.

    Taught in: 04_distillation, section 5b.
    """
    from tqdm.auto import tqdm

    check_module("teacher", teacher)
    n_classes = int(logits_of(teacher, split.X_val[:1]).shape[1])
    if isinstance(omitted, bool) or not isinstance(omitted, (int, np.integer)) or not 0 <= omitted < n_classes:
        raise ValueError(f"omitted must be a class in [0, {n_classes}), got {omitted!r}")
    _check_positive("temperature", temperature)
    check_float("alpha", alpha, 0.0, 1.0)
    if not len(shifts) or min(shifts) < 0:
        raise ValueError(f"shifts must be a non-empty list of non-negative numbers, got {shifts!r}")
    keep = split.y_train != omitted
    X, y = split.X_train[keep], split.y_train[keep]
    z_t = logits_of(teacher, X)

    def scores(model, X_eval, y_eval, shift):
        z = logits_of(model, X_eval).clone()
        z[:, omitted] += shift
        pred = z.argmax(1)
        return (pred[y_eval == omitted] == omitted).double().mean().item(), (pred == y_eval).double().mean().item()

    rows = []
    for name in tqdm(["from scratch", "distilled"], desc="transfer set", disable=not progress, leave=False):
        for s in seeds:
            student = _fresh(make_student, s)
            budget = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": s}
            if name == "from scratch":
                train_student(student, X, y, **budget)
            else:
                train_student(student, X, y, teacher_logits=z_t, temperature=temperature, alpha=alpha, **budget)
            val = [scores(student, split.X_val, split.y_val, float(d))[1] for d in shifts]
            shift = float(shifts[int(np.argmax(val))])
            (recall, acc), (recall_s, acc_s) = (scores(student, split.X_test, split.y_test, d) for d in (0.0, shift))
            rows.append({"variant": name, "seed": int(s), "shift": shift, "omitted recall": recall,
                         "omitted recall, shifted": recall_s, "test accuracy": acc, "test accuracy, shifted": acc_s,
                         "model": student})
    return rows


def labelled_subset(y: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """A boolean mask keeping ``round(fraction * n_c)`` (at least 1) random examples of each class ``c``.

    Stratified, so that every class keeps its share of the few labels; drawn by a ``torch.Generator``
    seeded by ``seed``, independent of the training seeds.

    Raises
    ------
    ValueError
        ``y`` not a 1-D int64 tensor, or ``fraction`` outside (0, 1].
    """
    check_tensor("y", y)
    if y.dtype != torch.int64 or y.ndim != 1:
        raise ValueError(f"y must be a 1-D int64 tensor, got {y.dtype} of shape {tuple(y.shape)}")
    fraction = check_float("fraction", fraction, 0.0, 1.0, low_inclusive=False)
    generator = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        rows = torch.nonzero(y == c).flatten()
        take = max(1, round(fraction * len(rows)))
        keep[rows[torch.randperm(len(rows), generator=generator)[:take]]] = True
    return keep


def _partly_labelled_kd_loss(teacher_logits: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor,
                             temperature: float, alpha: float) -> Callable:
    """``alpha T^2 KL`` over every row of the batch + ``(1 - alpha) CE`` over its labelled rows only."""
    def loss(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        p_t = F.softmax(teacher_logits[rows] / temperature, dim=1)
        soft = F.kl_div(F.log_softmax(out / temperature, dim=1), p_t, reduction="batchmean")
        mine = labelled[rows]
        hard = F.cross_entropy(out[mine], y[rows][mine]) if mine.any() else out.sum() * 0.0
        return alpha * temperature ** 2 * soft + (1 - alpha) * hard
    return loss


def low_label_study(teacher: nn.Module, make_student: Callable[[], nn.Module], split, *, fraction: float = 0.1,
                    seeds: Sequence[int] = (1, 2, 3, 4, 5), temperature: float = 4.0, alpha: float = 0.9,
                    epochs: int = 10, lr: float = 3e-3, batch_size: int = 128, subset_seed: int = 0,
                    progress: bool = True) -> list[dict]:
    r"""Few labels, many unlabelled images: the same student with and without the teacher's soft targets.

    A stratified ``fraction`` of the training split keeps its labels (:func:`labelled_subset`); the rest is
    unlabelled. Two arms, paired by seed (seed ``s``: the same initial weights and the same shuffling
    generator):

    * ``"labels only"``: cross-entropy on the labelled images alone;
    * ``"labels + soft targets"``: every training image, with the loss
      :math:`lpha T^2\,\mathrm{KL}(p^t_T \| p^s_T)` on all of them and :math:`(1-lpha)\,\mathrm{CE}` on the
      labelled ones of each batch (the semi-supervised use of distillation; the teacher's logits are computed
      once on the training images).

    Both arms take the **same number of Adam steps**: ``epochs`` passes over the whole training split for the
    distilled arm, and as many passes over the small labelled set as give the same step count (one batch per
    pass when it is smaller than ``batch_size``). ``temperature`` and ``alpha`` are fixed beforehand (the
    defaults of :func:`kd_loss`), so nothing is chosen; both arms are scored once on validation and test.

    Returns
    -------
    list of dict
        One row per (variant, seed): ``variant``, ``seed``, ``labelled``, ``steps``, ``val accuracy``,
        ``test accuracy``, ``model``.

    Raises
    ------
    ValueError
        ``fraction`` outside (0, 1], ``temperature`` not > 0, ``alpha`` outside [0, 1].

    Taught in: 04_distillation, section 5c.
    """
    from tqdm.auto import tqdm

    check_module("teacher", teacher)
    _check_positive("temperature", temperature)
    check_float("alpha", alpha, 0.0, 1.0)
    labelled = labelled_subset(split.y_train, fraction, subset_seed)
    X_lab, y_lab = split.X_train[labelled], split.y_train[labelled]
    z_t = logits_of(teacher, split.X_train)
    steps = epochs * math.ceil(len(split.X_train) / batch_size)
    small_epochs = max(1, round(steps / math.ceil(len(X_lab) / batch_size)))
    kd = _partly_labelled_kd_loss(z_t, split.y_train, labelled, temperature, alpha)
    rows = []
    for name in tqdm(["labels only", "labels + soft targets"], desc="low-label", disable=not progress,
                     leave=False):
        for s in seeds:
            student = _fresh(make_student, s)
            if name == "labels only":
                models.train(student, X_lab, y_lab, epochs=small_epochs, lr=lr, batch_size=batch_size, seed=s,
                             progress=False)
                n_steps = small_epochs * math.ceil(len(X_lab) / batch_size)
            else:
                models.train(student, split.X_train, torch.arange(len(split.X_train)), epochs=epochs, lr=lr,
                             batch_size=batch_size, seed=s, progress=False, loss_fn=kd)
                n_steps = steps
            rows.append({"variant": name, "seed": int(s), "labelled": int(labelled.sum()), "steps": n_steps,
                         "val accuracy": models.evaluate(student, split.X_val, split.y_val),
                         "test accuracy": models.evaluate(student, split.X_test, split.y_test),
                         "model": student})
    return rows


def fidelity(teacher: nn.Module, student: nn.Module, X: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    r"""How closely a student imitates its teacher on ``X``: top-1 agreement and the mean KL divergence.

    .. math::  \text{agreement} = \frac1N \sum_i \mathbb 1[\arg\max z^s_i = \arg\max z^t_i], \qquad
               \mathrm{KL} = \frac1N \sum_i \sum_k p^t_{ik} \log \frac{p^t_{ik}}{p^s_{ik}}

    with :math:`p = \operatorname{softmax}(z / T)`. Stanton et al. (2021) call these *fidelity*: a student
    can match the teacher's accuracy while disagreeing with it on many examples.

    Taught in: 04_distillation, section 5.
    """
    check_module("teacher", teacher)
    check_module("student", student)
    _check_positive("temperature", temperature)
    z_t, z_s = logits_of(teacher, X), logits_of(student, X)
    kl = F.kl_div(F.log_softmax(z_s / temperature, 1), F.log_softmax(z_t / temperature, 1), reduction="batchmean",
                  log_target=True)
    return {"top-1 agreement": (z_s.argmax(1) == z_t.argmax(1)).double().mean().item(), "KL": kl.item()}


def logit_matching_ratio(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         temperatures: Sequence[float]) -> list[dict]:
    r"""The high-temperature limit of the soft term: :math:`T^2\,\mathrm{KL}` against logit matching.

    .. math::  \frac{T^2\, \mathrm{KL}\big(p(z^t; T)\,\|\,p(z^s; T)\big)}{\frac{1}{2NC}\,\lVert \tilde z^s - \tilde z^t \rVert^2}
               \longrightarrow 1 \quad (T \to \infty),

    where :math:`\tilde z` are the logits with each row's mean removed (a softmax ignores a constant added to
    a row, so only the centred logits can be matched) and KL is the batch mean. Expanding
    :math:`\operatorname{softmax}(z/T)` to second order in :math:`1/T` gives the quadratic. One row per ``T``:
    ``T``, ``T^2 KL``, ``logit matching`` and their ``ratio``.

    Taught in: 04_distillation, section 1.
    """
    zs = _check_logits("student_logits", student_logits).double()
    zt = _check_logits("teacher_logits", teacher_logits).double()
    if zs.shape != zt.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits {tuple(zs.shape)}, got {tuple(zt.shape)}")
    n, c = zs.shape
    centred = (zs - zs.mean(1, keepdim=True)) - (zt - zt.mean(1, keepdim=True))
    matching = centred.pow(2).sum().item() / (2 * n * c)
    rows = []
    for T in temperatures:
        T = _check_positive("temperature", T)
        kl = F.kl_div(F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), reduction="batchmean", log_target=True)
        rows.append({"T": T, "T^2 KL": T * T * kl.item(), "logit matching": matching,
                     "ratio": T * T * kl.item() / matching})
    return rows


# --------------------------------------------------------------------------- reading the runs
def _check_rows(rows: object) -> list[dict]:
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of dicts (compare_students rows), got {type(rows).__name__}")
    if not rows or not all(isinstance(r, dict) and {"variant", "seed"} <= set(r) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts with 'variant' and 'seed' keys, got "
                         f"{len(rows)} rows")
    return list(rows)


def seed_values(rows: Sequence[dict], variant: str, column: str) -> dict[int, float]:
    """``{seed: value}`` of ``column`` for one variant of :func:`compare_students` rows.

    Raises
    ------
    ValueError
        ``variant`` has no rows, ``column`` is missing, or a seed appears twice for the variant.
    """
    rows = _check_rows(rows)
    mine = [r for r in rows if r["variant"] == variant]
    if not mine:
        raise ValueError(f"variant must be one of {sorted({str(r['variant']) for r in rows})}, got {variant!r}")
    if any(column not in r for r in mine):
        raise ValueError(f"column must be a key of every row of {variant!r}, got {column!r}")
    out = {int(r["seed"]): float(r[column]) for r in mine}
    if len(out) != len(mine):
        raise ValueError(f"rows must hold each seed once per variant; {variant!r} repeats a seed")
    return out


def paired_vs(rows: Sequence[dict], a: str, b: str, column: str = "test accuracy",
              scale: float = 100.0, unit: str = " points") -> stats.PairedDifference:
    r"""Variant ``a`` minus variant ``b``, paired by seed: :func:`course_lib.stats.paired_difference`.

    Seed ``s`` gives both students the same initial weights and the same order of batches
    (:func:`compare_students`), so the differences :math:`d_s = a_s - b_s` are matched **by seed**, not
    by row order, and the interval is :math:`\bar d \pm t_{0.975,\,n-1}\, s_d/\sqrt n`.

    Parameters
    ----------
    rows : list of dict
        :func:`compare_students` rows (``"variant"``, ``"seed"``, ``column``).
    a, b : str
        The two variants.
    column : str, default="test accuracy"
    scale : float, default=100.0
        The interval is returned scaled (100: accuracy points).
    unit : str, default=" points"

    Raises
    ------
    ValueError
        A variant is missing, or ``a`` and ``b`` were not run on the same seeds (fewer than 2 shared).
    """
    va, vb = seed_values(rows, a, column), seed_values(rows, b, column)
    if set(va) != set(vb):
        raise ValueError(f"a and b must be run on the same seeds, got {sorted(va)} and {sorted(vb)}")
    seeds = sorted(va)
    diff = stats.paired_difference([va[s] for s in seeds], [vb[s] for s in seeds])
    return diff.scaled(check_float("scale", scale, 0.0, low_inclusive=False), unit)


def choose_on_validation(rows: Sequence[dict], candidates: Sequence[str], column: str = "val accuracy") -> str:
    """The candidate variant with the highest mean validation accuracy over its seeds.

    Only ``column`` (validation) is read, never the test accuracy. Means that agree to 1e-12 are a tie,
    and a tie goes to the candidate listed **first** (list the default recipe first).

    Raises
    ------
    ValueError
        ``candidates`` is empty or names a variant without rows.
    """
    if isinstance(candidates, str) or not candidates:
        raise ValueError(f"candidates must be a non-empty list of variant names, got {candidates!r}")
    means = [float(np.mean(list(seed_values(rows, c, column).values()))) for c in candidates]
    best = max(means)
    return next(c for c, m in zip(candidates, means) if m >= best - 1e-12)


def summarize(rows: Sequence[dict], by: str, columns: Sequence[str], scale: float = 100.0):
    r"""A pandas table of each group's mean over seeds with its 95 % t interval and n.

    For each ``column``: ``mean``, ``95% low``, ``95% high`` (:func:`course_lib.stats.mean_interval`,
    :math:`\bar x \pm t_{0.975,\,n-1}\, s/\sqrt n` over the seeds), multiplied by ``scale``; then
    ``n seeds``. Groups keep their order of first appearance.
    """
    import pandas as pd

    rows = _check_rows(rows)
    frame = pd.DataFrame([{k: r[k] for k in (by, *columns)} for r in rows])
    table = {}
    for name, group in frame.groupby(by, sort=False):
        entry = {}
        for c in columns:
            iv = stats.mean_interval(group[c].to_numpy(dtype=float))
            entry.update({(c, "mean"): scale * iv.estimate, (c, "95% low"): scale * iv.low,
                          (c, "95% high"): scale * iv.high})
        entry[("n seeds", "")] = len(group)
        table[name] = entry
    out = pd.DataFrame.from_dict(table, orient="index")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    out.index.name = by
    return out


def teacher_minus_students(teacher: nn.Module, students: Sequence[nn.Module], X: torch.Tensor, y: torch.Tensor,
                           *, n_boot: int = 2000, seed: int = 0) -> stats.Interval:
    r"""Teacher's accuracy minus the students' mean accuracy, with a bootstrap interval over test examples.

    Per example :math:`j`: :math:`d_j = \mathbb 1[\text{teacher right}] - \frac1S \sum_s \mathbb 1[\text{student}_s
    \text{ right}]`; the estimate is :math:`\bar d` (= teacher accuracy minus the mean student accuracy) and
    the interval is :func:`course_lib.stats.bootstrap_interval` over the examples: it measures how much
    another test set of the same size could move the gap (the teacher and the S students fixed).
    Returned in accuracy points (x100).
    """
    check_module("teacher", teacher)
    if isinstance(students, nn.Module) or not students:
        raise ValueError("students must be a non-empty list of models")
    for s in students:
        check_module("students[i]", s)
    check_tensor("y", y)
    if y.dtype != torch.int64 or tuple(y.shape) != (len(X),):
        raise ValueError(f"y must be an int64 tensor of shape ({len(X)},), got {y.dtype} of shape {tuple(y.shape)}")
    right_t = (logits_of(teacher, X).argmax(1) == y).double()                        # (N,)
    right_s = torch.stack([(logits_of(s, X).argmax(1) == y).double() for s in students]).mean(0)  # (N,)
    iv = stats.bootstrap_interval((right_t - right_s).numpy(), n_boot=n_boot, seed=seed)
    return replace(iv, difference=True).scaled(100.0, " points")


# --------------------------------------------------------------------------- plots
def plot_gradient_norms(rows: Sequence[dict]):
    """Soft-term gradient norm against T, with and without T^2 (log-log)."""
    import matplotlib.pyplot as plt

    T = [r["T"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(T, [r["grad norm without T^2"] for r in rows], "o-", color="tab:red", label="KL only")
    ax.plot(T, [r["grad norm with T^2"] for r in rows], "s-", color="tab:blue", label="$T^2$ · KL")
    ax.set(xscale="log", yscale="log", xlabel="temperature T", ylabel="‖∂ loss / ∂ student logits‖",
           title="soft term: gradient size vs temperature")
    ax.legend()
    fig.tight_layout()
    return fig, ax


def plot_class_similarity(matrix: torch.Tensor, classes: Sequence[str], temperature: float):
    """Heat map of the teacher's mean soft targets per true class (diagonal hidden to show the dark knowledge)."""
    import matplotlib.pyplot as plt

    m = matrix.detach().double().clone()
    m.fill_diagonal_(float("nan"))
    fig, ax = plt.subplots(figsize=(4.8, 4))
    image = ax.imshow(m.numpy(), cmap="viridis")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="class of the soft target", ylabel="true class",
           title=f"teacher's mean soft targets, T = {temperature:g}\n(diagonal hidden)")
    fig.colorbar(image, ax=ax, label="probability")
    fig.tight_layout()
    return fig, ax


def plot_soft_targets(logits: torch.Tensor, temperature: float, classes: Sequence[str], image: torch.Tensor | None = None,
                      caption: str | None = None):
    """Bar chart of one example's soft targets at ``temperature`` (and the image beside it, titled ``caption``)."""
    import matplotlib.pyplot as plt

    p = soft_targets(logits.reshape(1, -1), temperature)[0]
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.8), gridspec_kw={"width_ratios": [1, 3]})
    if image is not None:
        axes[0].imshow(image.squeeze().numpy(), cmap="gray_r")
        if caption:
            axes[0].set_title(caption, fontsize=9)
    axes[0].set_axis_off()
    axes[1].bar(range(len(classes)), p.numpy(), color="tab:blue")
    axes[1].set(xticks=range(len(classes)), xticklabels=classes, ylim=(0, 1), ylabel="probability",
                title=f"teacher's soft targets at T = {temperature:g} (entropy {float(-(p * p.clamp_min(1e-30).log()).sum()):.2f} nats)")
    fig.tight_layout()
    return fig, axes


def plot_attention_maps(images: torch.Tensor, maps: dict[str, torch.Tensor], side: int):
    """Each image beside its attention maps (rows: examples; columns: input, then one per model)."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(1.7 * (1 + len(maps)), 1.7 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].squeeze().numpy(), cmap="gray_r")
        for j, (name, q) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(q[i].reshape(side, side).numpy(), cmap="magma", vmin=0)
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
        axes[0, 0].set_title("input", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig, axes
