"""Chapter 01 -- pruning: masks built by hand, checked against ``torch.nn.utils.prune``.

A pruning *mask* is a float 0/1 tensor shaped like the weight; applying it is a separate
multiply. The six exercises build the masks (unstructured, global, structured, N:M), the
gradual sparsity schedule of Zhu & Gupta, and the one operation that makes a structured mask
pay off: physically removing channels. The helpers below run the chapter's measurements
(fine-tuning under a mask, sensitivity scans, L1-regularised training, latency of masked,
sparse and shrunk layers, stored sizes) so the notebook holds no loops of its own.

Tie rule shared by every mask here (it is torch's): entries or slices are ranked with
``torch.topk``, whose choice among *equal* scores is not documented (it is neither the first
nor the last index). The references call ``torch.topk`` exactly as ``torch.nn.utils.prune``
does, so their masks equal torch's even with ties.

Taught in: 01_pruning.
"""
from __future__ import annotations

import copy
import io
import math
import numbers
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from . import models, stats, timing
from .validation import check_bool, check_float, check_int, check_module, check_tensor

__all__ = [
    "magnitude_mask", "global_magnitude_masks", "structured_mask", "n_m_mask", "polynomial_sparsity",
    "shrink_conv_pair",
    "prunable_layers", "model_masks", "apply_masks", "sparsity", "fine_tune", "fine_tune_seeds", "prune_one_shot",
    "prune_iterative", "sensitivity_scan", "accuracies", "l1_penalty", "train_l1", "compare_latency",
    "speed_table", "sparse_matmul_rows", "stored_bytes", "sparse_state_dict", "semi_structured_rows",
    "plot_masks", "plot_sensitivity", "plot_schedule", "plot_weight_histograms", "l1_prox_step", "train_l1_proximal",
    "sensitivity_amounts", "per_layer_masks", "random_masks", "csr_bytes", "csr_break_even", "csr_with_index",
    "pruning_quantization_codes", "pruning_quantization_myth", "seed_study", "seed_difference", "correct",
    "accuracy_difference", "detectable_on_examples", "random_control_difference", "l1_seed_study", "lottery_ticket_starts", "lottery_ticket",
    "augment_images", "fine_tune_augmented", "augmentation_study", "matched_sparsity_difference",
]


# =========================================================================== argument checks
def _check_weight(weight: object, min_dim: int = 0) -> Tensor:
    check_tensor("weight", weight)
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.dim() < min_dim:
        raise ValueError(f"weight must have at least {min_dim} dimensions, got shape {tuple(weight.shape)}")
    return weight


def _n_to_prune(amount: object, size: int) -> int:
    """``amount`` as a count of units out of ``size``: an int as is, a float as ``round(amount * size)``."""
    allowed = f"a float in [0, 1] or an int in [0, {size}]"
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be {allowed}, got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if not 0 <= amount <= size:
            raise ValueError(f"amount must be {allowed}, got {amount!r}")
        return int(amount)
    if not 0.0 <= amount <= 1.0:                       # also rejects nan
        raise ValueError(f"amount must be {allowed}, got {amount!r}")
    return round(float(amount) * size)                 # Python's round: halves go to the even neighbour


# =========================================================================== exercises
def magnitude_mask(weight: Tensor, amount: int | float) -> Tensor:
    """Unstructured magnitude pruning: zero the ``k`` entries with the smallest ``|w|``.

    .. math::  m_i = 0 \\iff i \\in \\operatorname{argmin}_k |w|, \\qquad
               k = \\operatorname{round}(\\text{amount} \\cdot N) \\text{ (float) or amount (int)}

    Parameters
    ----------
    weight : Tensor of any shape, floating point
    amount : float in [0, 1] (fraction of the N entries) or int in [0, N] (count)

    Returns
    -------
    Tensor shaped like ``weight``, its dtype, holding 0 (pruned) and 1 (kept).

    Raises
    ------
    TypeError
        ``weight`` not a floating tensor; ``amount`` not a real number (``bool`` included).
    ValueError
        ``amount`` out of range.

    Rules
    -----
    ``round`` is Python's (2.5 -> 2). The pruned entries are
    ``torch.topk(weight.abs().flatten(), k, largest=False).indices``, as in
    ``prune.l1_unstructured``; among equal ``|w|`` topk's choice is torch's.

    References
    ----------
    Han, Pool, Tran & Dally (2015). Learning both Weights and Connections for Efficient
    Neural Networks. NeurIPS.

    Examples
    --------
    >>> magnitude_mask(torch.tensor([0.5, -2.0, 0.1, 1.0]), 0.5)
    tensor([0., 1., 0., 1.])

    Taught in: 01_pruning, section 1.
    """
    _check_weight(weight)
    k = _n_to_prune(amount, weight.numel())
    mask = torch.ones_like(weight, memory_format=torch.contiguous_format)
    if k > 0:
        pruned = torch.topk(weight.detach().abs().flatten(), k, largest=False).indices   # (k,)
        mask.view(-1)[pruned] = 0
    return mask


def global_magnitude_masks(weights: Sequence[Tensor], amount: int | float) -> list[Tensor]:
    """Global magnitude pruning: one ``|w|`` threshold across several tensors.

    .. math::  \\text{prune the } k \\text{ smallest } |w| \\text{ of }
               \\operatorname{concat}(\\operatorname{flatten}(W_1), \\dots, \\operatorname{flatten}(W_L))

    ``amount`` counts entries of all tensors together (float: fraction of the total ``N``).
    Returns one mask per tensor, shaped and typed like it. Same tie rule as
    :func:`magnitude_mask` on the concatenation (in list order), which is what
    ``prune.global_unstructured(..., pruning_method=prune.L1Unstructured)`` does.

    Raises
    ------
    TypeError
        ``weights`` not a list or tuple; an element not a floating tensor.
    ValueError
        ``weights`` empty, or ``amount`` out of range.

    Examples
    --------
    >>> global_magnitude_masks([torch.tensor([3.0, 0.1]), torch.tensor([0.2, 5.0])], 2)
    [tensor([1., 0.]), tensor([0., 1.])]

    Taught in: 01_pruning, section 3.
    """
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list of tensors, got {type(weights).__name__}")
    if len(weights) == 0:
        raise ValueError("weights must be a non-empty list of tensors, got []")
    for i, w in enumerate(weights):
        check_tensor(f"weights[{i}]", w)
        if not w.is_floating_point():
            raise TypeError(f"weights[{i}] must be a floating-point tensor, got dtype {w.dtype}")
    scores = torch.cat([w.detach().abs().flatten() for w in weights])       # (N,)
    flat = magnitude_mask(scores, amount)
    sizes = [w.numel() for w in weights]
    return [m.view_as(w).to(w.dtype) for m, w in zip(flat.split(sizes), weights)]


def structured_mask(weight: Tensor, amount: int | float, n: float = 1, dim: int = 0) -> Tensor:
    """Structured pruning: zero whole slices along ``dim`` with the smallest L\\ :sub:`n` norm.

    .. math::  s_j = \\Big(\\sum_{i:\\, i_{dim} = j} |w_i|^n\\Big)^{1/n}, \\qquad
               \\text{keep the } S - k \\text{ slices with the largest } s_j

    ``dim=0`` of a conv weight ``(C_out, C_in, k, k)`` prunes filters (output channels); of a
    Linear weight ``(out, in)`` it prunes output neurons. ``k`` counts slices (``S`` of them).

    Parameters
    ----------
    weight : Tensor with at least 2 dimensions, floating point
    amount : float in [0, 1] or int in [0, S]
    n : positive real or ``math.inf``, default=1
        The norm's order (``torch.linalg.vector_norm``'s ``ord``).
    dim : int in [-weight.dim(), weight.dim()), default=0

    Rules
    -----
    Kept slices are ``torch.topk(norms, S - k, largest=True).indices`` (``prune.ln_structured``'s
    rule, ties included).

    References
    ----------
    Li, Kadav, Durdanovic, Samet & Graf (2017). Pruning Filters for Efficient ConvNets. ICLR.

    Examples
    --------
    >>> structured_mask(torch.tensor([[1.0, 1.0], [0.1, 3.0], [0.2, 0.2]]), 1)
    tensor([[1., 1.],
            [1., 1.],
            [0., 0.]])

    Taught in: 01_pruning, section 2.
    """
    _check_weight(weight, min_dim=2)
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Real):
        raise TypeError(f"n must be a positive real number or math.inf, got {n!r}")
    if not n > 0:
        raise ValueError(f"n must be a positive real number or math.inf, got {n!r}")
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int in [{-weight.dim()}, {weight.dim()}), got {dim!r}")
    if not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"dim must be an int in [{-weight.dim()}, {weight.dim()}), got {dim!r}")
    dim = int(dim) % weight.dim()
    size = weight.shape[dim]
    k = _n_to_prune(amount, size)
    others = [d for d in range(weight.dim()) if d != dim]
    norms = torch.linalg.vector_norm(weight.detach(), ord=float(n), dim=others)     # (S,)
    kept = torch.topk(norms, size - k, largest=True).indices
    mask = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    return mask.index_fill_(dim, kept, 1.0)


def n_m_mask(weight: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """N:M semi-structured sparsity: in every group of ``m`` consecutive entries along the **input**
    axis (dim 1: ``in_features`` of a Linear, ``C_in`` of a conv; dim 0 of a vector), keep the ``n``
    entries with the largest ``|w|``.

    .. math::  W \\to (C_{out}, k_h, k_w, C_{in}/m, m), \\qquad m_{g,i} = 1 \\iff
               i \\in \\operatorname{argmax}_n |w_{g,\\cdot}|

    The groups run along the reduction axis of the matrix product, because that is what the
    sparse tensor cores skip: a Linear computes ``x W^T`` summing over ``in_features``; a conv is an
    implicit GEMM summing over ``C_in k_h k_w`` with ``C_in`` innermost (channels-last), so each
    group is ``m`` input channels at one kernel position (as NVIDIA's ASP builds conv masks).
    Grouping along the kernel width instead gives a mask the hardware cannot use.

    Raises
    ------
    TypeError
        ``weight`` not a floating tensor; ``n`` or ``m`` not an int.
    ValueError
        ``weight`` a scalar; ``m < 1``; ``n`` outside ``[0, m]``; the input axis not divisible by ``m``.

    Rules
    -----
    Kept entries are ``torch.topk(|w| with dim 1 moved last, viewed as (..., G, m), n, dim=-1).indices``
    (ties as torch.topk picks them).

    References
    ----------
    Mishra et al. (2021). Accelerating Sparse Deep Neural Networks. arXiv:2104.08378.

    Examples
    --------
    >>> n_m_mask(torch.tensor([[0.1, -3.0, 2.0, 0.5]]))
    tensor([[0., 1., 1., 0.]])

    Taught in: 01_pruning, section 6.
    """
    _check_weight(weight, min_dim=1)
    m = check_int("m", m, 1)
    n = check_int("n", n, 0)
    if n > m:
        raise ValueError(f"n must be an int in [0, m={m}], got {n!r}")
    axis = 1 if weight.dim() >= 2 else 0
    if weight.shape[axis] % m:
        raise ValueError(f"weight's input axis (dim {axis}) must be divisible by m={m}, "
                         f"got shape {tuple(weight.shape)}")
    w = weight.detach().abs().movedim(axis, -1)                           # (C_out, k_h, k_w, C_in)
    groups = w.reshape(*w.shape[:-1], -1, m)                              # (..., C_in/m, m)
    kept = torch.topk(groups, n, dim=-1, largest=True).indices           # (..., G, n)
    mask = torch.zeros_like(groups).scatter_(-1, kept, 1.0).reshape(w.shape)
    return mask.movedim(-1, axis).contiguous().to(weight.dtype)


def polynomial_sparsity(step: int, total_steps: int, final_sparsity: float,
                        initial_sparsity: float = 0.0, power: float = 3) -> float:
    """Gradual pruning schedule of Zhu & Gupta (2017).

    .. math::  s_t = s_f + (s_i - s_f)\\,\\Big(1 - \\frac{t}{T}\\Big)^{p},
               \\qquad t \\text{ clamped to } [0, T]

    Pruning fast while many weights are redundant and slowly as the target nears.

    Parameters
    ----------
    step : int (any; clamped to [0, total_steps])
    total_steps : int >= 1
    final_sparsity, initial_sparsity : float in [0, 1]
    power : positive real, default=3

    Returns
    -------
    float

    References
    ----------
    Zhu & Gupta (2017). To prune, or not to prune: exploring the efficacy of pruning for model
    compression. arXiv:1710.01878.

    Examples
    --------
    >>> polynomial_sparsity(5, 10, 0.9)
    0.7875

    Taught in: 01_pruning, section 4.
    """
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int, got {step!r}")
    total_steps = check_int("total_steps", total_steps, 1)
    s_f = check_float("final_sparsity", final_sparsity, 0.0, 1.0)
    s_i = check_float("initial_sparsity", initial_sparsity, 0.0, 1.0)
    power = check_float("power", power, 0.0, math.inf, low_inclusive=False)
    t = min(max(int(step), 0), total_steps)
    return s_f + (s_i - s_f) * (1.0 - t / total_steps) ** power


def _check_keep(keep: object, size: int) -> Tensor:
    check_tensor("keep", keep)
    if keep.is_floating_point() or keep.is_complex() or keep.dtype == torch.bool:
        raise TypeError(f"keep must be an integer tensor of channel indices, got dtype {keep.dtype}")
    if keep.dim() != 1 or keep.numel() == 0:
        raise ValueError(f"keep must be a non-empty 1-D tensor, got shape {tuple(keep.shape)}")
    if keep.min() < 0 or keep.max() >= size or keep.unique().numel() != keep.numel():
        raise ValueError(f"keep must hold distinct channel indices in [0, {size}), got {keep.tolist()}")
    return keep.long()


def _conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)


def shrink_conv_pair(conv: nn.Conv2d, next_conv: nn.Conv2d, keep: Tensor) -> tuple[nn.Conv2d, nn.Conv2d]:
    """Physically remove the output channels of ``conv`` not in ``keep`` and the matching input
    channels of ``next_conv``.

    .. math::  W'_1 = W_1[\\text{keep}], \\quad b'_1 = b_1[\\text{keep}], \\quad
               W'_2 = W_2[:, \\text{keep}], \\quad b'_2 = b_2

    Because ReLU(0) = 0, a channel whose filter and bias are zero contributes nothing to
    ``next_conv``, so for every input ``next'(relu(conv'(x)))`` equals the old pair's output with
    the other channels zeroed. The FLOPs of both layers fall by ``len(keep) / C``.

    Parameters
    ----------
    conv, next_conv : nn.Conv2d with ``groups=1``; ``next_conv.in_channels == conv.out_channels``
    keep : 1-D integer tensor of distinct indices in [0, conv.out_channels)
        The new channels come in this order.

    Returns
    -------
    (nn.Conv2d, nn.Conv2d)
        New layers (copies; the inputs are untouched) with the same kernel size, stride,
        padding, dilation, padding mode, bias presence, dtype and device.

    Raises
    ------
    TypeError
        A layer not an ``nn.Conv2d``; ``keep`` not an integer tensor.
    ValueError
        Grouped convolutions, mismatched channels, or ``keep`` empty, 2-D, out of range or repeated.

    Taught in: 01_pruning, section 7.
    """
    for name, layer in (("conv", conv), ("next_conv", next_conv)):
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"{name} must be a torch.nn.Conv2d, got {type(layer).__name__}")
        if layer.groups != 1:
            raise ValueError(f"{name} must have groups=1, got groups={layer.groups}")
    if next_conv.in_channels != conv.out_channels:
        raise ValueError(f"next_conv.in_channels must equal conv.out_channels={conv.out_channels}, "
                         f"got {next_conv.in_channels}")
    keep = _check_keep(keep, conv.out_channels)
    new = _conv_like(conv, conv.in_channels, len(keep))
    new_next = _conv_like(next_conv, len(keep), next_conv.out_channels)
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])                      # (K, C_in, k, k)
        new_next.weight.copy_(next_conv.weight[:, keep])         # (C_out2, K, k, k)
        if conv.bias is not None:
            new.bias.copy_(conv.bias[keep])
        if next_conv.bias is not None:
            new_next.bias.copy_(next_conv.bias)
    return new, new_next


# =========================================================================== masks on models
def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Linear`` and ``nn.Conv2d`` layers of ``model`` by name (their ``weight`` is pruned)."""
    check_module("model", model)
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def model_masks(model: nn.Module, amount: float, *, scope: str = "layer", kind: str = "magnitude",
                layers: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Masks for the weights of ``model``'s prunable layers (or only ``layers``).

    ``scope="layer"``: each layer loses ``amount`` of its own weights; ``"global"``: one threshold
    over all of them (:func:`global_magnitude_masks`). ``kind="structured"`` prunes output
    channels/neurons by L1 norm (layer-wise only); ``kind="2:4"`` applies :func:`n_m_mask`.
    """
    chosen = {k: v for k, v in prunable_layers(model).items() if layers is None or k in layers}
    if scope == "global" and kind == "magnitude":
        masks = global_magnitude_masks([m.weight for m in chosen.values()], amount)
        return dict(zip(chosen, masks))
    if scope != "layer":
        raise ValueError(f"scope must be 'layer' or 'global' (magnitude only), got {scope!r}")
    make = {"magnitude": lambda w: magnitude_mask(w, amount), "structured": lambda w: structured_mask(w, amount),
            "2:4": lambda w: n_m_mask(w, 2, 4)}
    if kind not in make:
        raise ValueError(f"kind must be one of {sorted(make)}, got {kind!r}")
    return {name: make[kind](m.weight) for name, m in chosen.items()}


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """A copy of ``model`` whose masked weights are multiplied by their mask (no hooks left)."""
    pruned = copy.deepcopy(model)
    layers = dict(pruned.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)
    return pruned


def sparsity(model_or_masks: nn.Module | dict[str, Tensor]) -> float:
    """Fraction of zeros among the prunable weights of a model, or among the entries of masks."""
    if isinstance(model_or_masks, nn.Module):
        tensors = [m.weight for m in prunable_layers(model_or_masks).values()]
    else:
        tensors = list(model_or_masks.values())
    total = sum(t.numel() for t in tensors)
    return float(sum((t == 0).sum().item() for t in tensors) / total)


def fine_tune(model: nn.Module, masks: dict[str, Tensor], X: Tensor, y: Tensor, *, epochs: int,
              lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Train a copy of ``model`` with ``masks`` held fixed; return it with the zeros made permanent.

    The masks are attached with ``prune.custom_from_mask`` (weight = weight_orig * mask, so
    pruned weights get zero gradient and stay zero), trained with :func:`course_lib.models.train`,
    then made permanent with ``prune.remove``. Empty ``masks``: plain training of a copy.

    Training runs on one CPU thread: on models this small a second thread only adds
    synchronisation (and stalls when other processes share the cores), and one thread makes the
    result independent of the machine's core count.
    """
    tuned = copy.deepcopy(model)
    layers = dict(tuned.named_modules())
    for name, mask in masks.items():
        prune.custom_from_mask(layers[name], "weight", mask)
    if epochs > 0:
        with timing.num_threads(1):
            models.train(tuned, X, y, epochs=epochs, lr=lr, seed=seed, progress=False)
    for name in masks:
        prune.remove(layers[name], "weight")
    return tuned.eval()


def fine_tune_seeds(model: nn.Module, masks: dict[str, Tensor], split, *, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                    epochs: int, lr: float = 1e-3, progress: bool = False) -> list[nn.Module]:
    """:func:`fine_tune` once per seed (the seed sets the shuffle): one recipe's spread over seeds.

    Two masks fine-tuned with the same ``seeds`` are paired: seed ``s`` starts both from ``model``'s
    weights and shows them the batches in the same order. Returns the tuned models in seed order.
    """
    check_module("model", model)
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds for a spread, got {seeds}")
    epochs = check_int("epochs", epochs, 1)
    return [fine_tune(model, masks, split.X_train, split.y_train, epochs=epochs, lr=lr, seed=s)
            for s in tqdm(seeds, desc="fine-tuning", disable=not check_bool("progress", progress), leave=False)]


def prune_one_shot(model: nn.Module, final_sparsity: float, split, *, epochs: int, scope: str = "layer",
                   lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Prune to ``final_sparsity`` at once, then fine-tune ``epochs`` epochs under the mask."""
    masks = model_masks(model, final_sparsity, scope=scope)
    return fine_tune(model, masks, split.X_train, split.y_train, epochs=epochs, lr=lr, seed=seed)


def prune_iterative(model: nn.Module, final_sparsity: float, split, *, n_steps: int, epochs_per_step: int,
                    power: float = 3, scope: str = "layer", lr: float = 1e-3, seed: int = 0
                    ) -> tuple[nn.Module, list[dict]]:
    """Prune in ``n_steps`` steps on :func:`polynomial_sparsity`, fine-tuning after each.

    Returns the final model and one row per step: ``step, sparsity, val_accuracy``.
    """
    current, trace = model, []
    for step in range(1, n_steps + 1):
        target = polynomial_sparsity(step, n_steps, final_sparsity, power=power)
        masks = model_masks(current, target, scope=scope)
        current = fine_tune(current, masks, split.X_train, split.y_train, epochs=epochs_per_step, lr=lr,
                            seed=seed + step)
        trace.append({"step": step, "sparsity": sparsity(current),
                      "val_accuracy": models.evaluate(current, split.X_val, split.y_val)})
    return current, trace


def sensitivity_scan(model: nn.Module, amounts: Sequence[float], X: Tensor, y: Tensor, *,
                     kind: str = "magnitude", layers: Sequence[str] | None = None) -> list[dict]:
    """Accuracy on ``(X, y)`` when one layer at a time is pruned by each amount (no fine-tuning).

    Returns rows ``layer, amount, accuracy``; run it on the validation split.
    """
    rows = []
    with timing.num_threads(1):
        for name in (layers if layers is not None else prunable_layers(model)):
            for amount in amounts:
                pruned = apply_masks(model, model_masks(model, amount, kind=kind, layers=[name]))
                rows.append({"layer": name, "amount": float(amount), "accuracy": models.evaluate(pruned, X, y)})
    return rows


def accuracies(model: nn.Module, split) -> dict[str, float]:
    """Accuracy on the train, validation and test parts of a :class:`course_lib.data.Split`."""
    return {part: models.evaluate(model, getattr(split, f"X_{part}"), getattr(split, f"y_{part}"))
            for part in ("train", "val", "test")}


def l1_penalty(model: nn.Module) -> Tensor:
    """:math:`\\sum_i |w_i|` over the weights of the prunable layers (biases excluded)."""
    return sum(m.weight.abs().sum() for m in prunable_layers(model).values())


def train_l1(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, epochs: int, lr: float = 1e-3,
             seed: int = 0) -> nn.Module:
    """Train a copy of ``model`` on the objective :math:`L + \\lambda \\sum_i |w_i|` (Adam, one thread)."""
    trained = copy.deepcopy(model)
    loss_fn = lambda out, target: nn.functional.cross_entropy(out, target) + lam * l1_penalty(trained)  # noqa: E731
    with timing.num_threads(1):
        models.train(trained, X, y, epochs=epochs, lr=lr, seed=seed, progress=False, loss_fn=loss_fn)
    return trained


def l1_prox_step(weight: Tensor, threshold: float) -> Tensor:
    """The proximal step of :math:`\\lambda \\|w\\|_1` (soft thresholding): shrink every ``|w|`` by ``threshold``.

    .. math::  \\operatorname{prox}_{\\eta\\lambda\\|\\cdot\\|_1}(w) = \\mathrm{sign}(w)\\,\\max(|w| - \\eta\\lambda,\\ 0)

    A (sub)gradient step ``w - eta lam sign(w)`` overshoots zero and oscillates around it; the
    proximal step lands exactly on 0 for every ``|w| <= eta lam``: this is where exact zeros come from.

    Taught in: 01_pruning, section 5.
    """
    check_tensor("weight", weight)
    threshold = check_float("threshold", threshold, 0.0)
    return torch.sign(weight) * (weight.abs() - threshold).clamp_min(0.0)


def train_l1_proximal(model: nn.Module, X: Tensor, y: Tensor, *, lam: float, epochs: int, lr: float = 1e-3,
                      seed: int = 0) -> nn.Module:
    """Proximal training of :math:`L + \\lambda \\sum_i |w_i|`: an Adam step on ``L`` alone, then
    :func:`l1_prox_step` with threshold ``lr * lam`` on every prunable weight (one thread).

    The prox is applied before each batch's forward (so after the previous step) and once at the
    end. With Adam the threshold ``lr * lam`` is a heuristic (Adam's step is not ``lr * grad``).
    """
    trained = copy.deepcopy(model)
    layers = list(prunable_layers(trained).values())

    def prox_() -> None:
        with torch.no_grad():
            for m in layers:
                m.weight.copy_(l1_prox_step(m.weight, lr * lam))

    def loss_fn(out: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out, target)

    def forward_pre_hook(module, args):                               # prox after the previous Adam step
        if module.training:
            prox_()
    handle = trained.register_forward_pre_hook(forward_pre_hook)
    try:
        with timing.num_threads(1):
            models.train(trained, X, y, epochs=epochs, lr=lr, seed=seed, progress=False, loss_fn=loss_fn)
    finally:
        handle.remove()
    prox_()
    return trained.eval()


def _scores(model: nn.Module, split) -> dict[str, float]:
    """Accuracy on each part of ``split`` it has (train, val, test), keyed ``"<part> acc"``."""
    return {f"{part} acc": models.evaluate(model, getattr(split, f"X_{part}"), getattr(split, f"y_{part}"))
            for part in ("train", "val", "test") if hasattr(split, f"X_{part}")}


def _fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every submodule re-initialised (``reset_parameters``) under ``seed``."""
    torch.manual_seed(seed)
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters") and m is not fresh:
            m.reset_parameters()
    return fresh


SEED_STUDY_METHODS = ("one-shot + fine-tune", "iterative", "random mask + fine-tune (control)",
                      "magnitude mask, fresh init (control)")


def seed_study(model: nn.Module, sparsities: float | Sequence[float], split, *, seeds: Sequence[int] = (0, 1, 2, 3, 4),
               epochs: int = 30, lr: float = 3e-3, controls_at: Sequence[float] | None = None,
               keep_models: bool = False, progress: bool = False) -> list[dict] | tuple[list[dict], dict]:
    """One-shot vs iterative pruning with controls, the same fine-tuning budget, several paired seeds.

    For each target sparsity :math:`s` and seed (the seed sets the fine-tuning shuffle, the random
    mask and the fresh initialization, so seed ``seed`` pairs the arms), all layer-wise by magnitude:

    - **one-shot**: prune to :math:`s` at once (:func:`prune_one_shot`), fine-tune ``epochs`` epochs;
    - **iterative**: 10 steps on :func:`polynomial_sparsity` (cubic), ``max(1, epochs // 10)`` epochs
      after each (:func:`prune_iterative`; step ``t`` shuffles with seed ``seed + t``), so both arms get
      the same number of epochs when ``epochs`` is a multiple of 10;
    - at the sparsities in ``controls_at`` (default: every one) two controls, each fine-tuned
      ``epochs`` epochs: a **random** mask of the same per-layer sparsity (:func:`random_masks` with
      ``seed``; is magnitude better than chance?) and the magnitude mask on a **freshly initialized**
      copy (re-initialised under ``torch.manual_seed(seed)``; does the pruned architecture need the
      trained weights? Liu et al., 2019; Frankle & Carbin's random-reinitialization control, 2019).

    Every model is trained once: with ``keep_models`` the trained models come back too, so later
    cells reuse them instead of training the same recipe again. Compare arms with
    :func:`seed_difference` (paired by seed).

    Parameters
    ----------
    model : nn.Module
        The trained dense model (not modified).
    sparsities : float or sequence of floats in [0, 1]
    split : data.Split (or anything with ``X_train``, ``y_train``, ``X_val``, ``y_val``; ``X_test``,
        ``y_test`` are scored when present)
    seeds : sequence of int >= 0, at least one
    epochs : int >= 1
    lr : float > 0
    controls_at : sequence of floats, default=None
        Each must be one of ``sparsities``; None = every sparsity.
    keep_models : bool, default=False
    progress : bool, default=False
        A tqdm bar over the (sparsity, seed) jobs.

    Returns
    -------
    list of dict, or (list of dict, dict)
        Rows ``sparsity, method, seed, measured sparsity`` with ``train acc``, ``val acc`` and
        ``test acc`` (the parts ``split`` has); with ``keep_models`` also
        ``{(sparsity, method, seed): model}``.
    """
    check_module("model", model)
    if isinstance(sparsities, numbers.Real) and not isinstance(sparsities, bool):
        sparsities = [sparsities]
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Sequence) or not sparsities:
        raise TypeError(f"sparsities must be a float in [0, 1] or a non-empty sequence of them, got {sparsities!r}")
    targets = [check_float("sparsities", s, 0.0, 1.0) for s in sparsities]
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got []")
    epochs = check_int("epochs", epochs, 1)
    lr = check_float("lr", lr, 0.0, low_inclusive=False)
    controls = set(targets) if controls_at is None else {check_float("controls_at", s, 0.0, 1.0) for s in controls_at}
    if not controls <= set(targets):
        raise ValueError(f"controls_at must be a subset of sparsities {targets}, got {sorted(controls)}")
    keep_models, progress = check_bool("keep_models", keep_models), check_bool("progress", progress)
    rows, kept = [], {}
    jobs = [(s, seed) for s in targets for seed in seeds]
    for target, seed in tqdm(jobs, desc="seed study", disable=not progress, leave=False):
        masks = model_masks(model, target)
        runs = {SEED_STUDY_METHODS[0]: lambda: prune_one_shot(model, target, split, epochs=epochs, lr=lr, seed=seed),
                SEED_STUDY_METHODS[1]: lambda: prune_iterative(model, target, split, n_steps=10,
                                                               epochs_per_step=max(1, epochs // 10), lr=lr,
                                                               seed=seed)[0]}
        if target in controls:
            fresh = _fresh_copy(model, seed)
            runs[SEED_STUDY_METHODS[2]] = lambda: fine_tune(
                model, random_masks(model, target, seed), split.X_train, split.y_train, epochs=epochs, lr=lr, seed=seed)
            runs[SEED_STUDY_METHODS[3]] = lambda: fine_tune(
                fresh, masks, split.X_train, split.y_train, epochs=epochs, lr=lr, seed=seed)
        for method, run in runs.items():
            tuned = run()
            rows.append({"sparsity": target, "method": method, "seed": seed, "measured sparsity": sparsity(tuned),
                         **_scores(tuned, split)})
            if keep_models:
                kept[target, method, seed] = tuned
    return (rows, kept) if keep_models else rows


# =========================================================================== augmentation while fine-tuning
def augment_images(x: Tensor, shift: int = 1, degrees: float = 15.0, generator: torch.Generator | None = None) -> Tensor:
    """Each image of ``x`` (N, C, H, W) shifted by a random whole number of pixels in ``[-shift, shift]`` per axis
    and rotated by a random angle in ``[-degrees, degrees]`` about its centre (bilinear, zeros outside).

    One affine map per image, :math:`x'(p) = x(R_\\theta p + t)` in normalised coordinates
    (``F.affine_grid`` then ``F.grid_sample``); the draws come from ``generator``.
    """
    check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    shift, degrees = check_int("shift", shift, 0), check_float("degrees", degrees, 0.0, 180.0)
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)             # (N,)
    pixels = torch.randint(-shift, shift + 1, (n, 2), generator=generator).float()            # (N, 2): x, y
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, 2 * pixels[:, 0] / w], 1),
                         torch.stack([sin, cos, 2 * pixels[:, 1] / h], 1)], 1)                # (N, 2, 3)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _Augmented(nn.Module):
    """``model`` behind :func:`augment_images` in training mode only (evaluation sees the plain images)."""

    def __init__(self, model: nn.Module, shift: int, degrees: float, seed: int) -> None:
        super().__init__()
        self.model, self.shift, self.degrees = model, shift, degrees
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            x = augment_images(x, self.shift, self.degrees, self.generator)
        return self.model(x)


def fine_tune_augmented(model: nn.Module, masks: dict[str, Tensor], X: Tensor, y: Tensor, *, epochs: int,
                        lr: float = 1e-3, seed: int = 0, shift: int = 1, degrees: float = 15.0) -> nn.Module:
    """:func:`fine_tune` with every training batch shifted and rotated (:func:`augment_images`).

    Same masks, optimiser, batches and shuffle (``seed``) as :func:`fine_tune`; the augmentation draws
    come from their own generator seeded with ``seed``, so seed ``s`` pairs this run with ``fine_tune``'s.
    """
    tuned = copy.deepcopy(model)
    layers = dict(tuned.named_modules())
    for name, mask in masks.items():
        prune.custom_from_mask(layers[name], "weight", mask)
    with timing.num_threads(1):
        models.train(_Augmented(tuned, shift, degrees, seed), X, y, epochs=epochs, lr=lr, seed=seed, progress=False)
    for name in masks:
        prune.remove(layers[name], "weight")
    return tuned.eval()


def augmentation_study(model: nn.Module, target: float, split, *, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                       epochs: int = 10, lr: float = 3e-3, shift: int = 1, degrees: float = 15.0,
                       progress: bool = False) -> list[dict]:
    """One-shot layer-wise magnitude pruning to ``target``, fine-tuned with augmentation, one run per seed.

    The arm without augmentation is :func:`seed_study`'s one-shot arm with the same ``target``,
    ``epochs``, ``lr`` and seeds (the same masks and shuffles): compare per seed. Rows:
    ``seed, measured sparsity, train acc, val acc, test acc`` (train accuracy on the plain images).
    """
    check_module("model", model)
    target = check_float("target", target, 0.0, 1.0)
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds for a spread, got {seeds}")
    masks, rows = model_masks(model, target), []
    for seed in tqdm(seeds, desc="augmented fine-tuning", disable=not check_bool("progress", progress), leave=False):
        tuned = fine_tune_augmented(model, masks, split.X_train, split.y_train, epochs=check_int("epochs", epochs, 1),
                                    lr=lr, seed=seed, shift=shift, degrees=degrees)
        rows.append({"seed": seed, "measured sparsity": sparsity(tuned), **_scores(tuned, split)})
    return rows


def matched_sparsity_difference(a: Sequence[nn.Module], b: Sequence[nn.Module], X: Tensor, y: Tensor
                                ) -> tuple[stats.PairedDifference, np.ndarray]:
    """Model ``a[s]`` pruned (globally, by magnitude) to exactly the sparsity of ``b[s]``, minus ``b[s]``.

    For each pair ``s`` the share of exact zeros of ``b[s]``'s prunable weights sets the sparsity; ``a[s]``
    is projected onto it (no fine-tuning). Returns the paired difference of accuracy on ``(X, y)`` in
    points (t interval over the pairs) and the matched sparsities.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a and b must hold the same number (>= 2) of models, got {len(a)} and {len(b)}")
    levels = np.array([sparsity(m) for m in b])
    acc_a = np.array([models.evaluate(apply_masks(m, model_masks(m, float(s), scope="global")), X, y)
                      for m, s in zip(a, levels)])
    acc_b = np.array([models.evaluate(m, X, y) for m in b])
    return stats.paired_difference(acc_a, acc_b).scaled(100, " points"), levels


def seed_difference(rows: Sequence[dict], a: tuple[float, str], b: tuple[float, str], *,
                    score: str = "test acc") -> stats.PairedDifference:
    """Arm ``a`` minus arm ``b`` of a :func:`seed_study`, paired by seed, in accuracy **points**.

    ``a`` and ``b`` are ``(sparsity, method)``. With :math:`d_s = 100\\,(\\text{acc}_a(s) - \\text{acc}_b(s))`
    over the seeds both arms ran, :func:`course_lib.stats.paired_difference`: the t interval
    :math:`\\bar d \\pm t_{0.975,\\,n-1}\\, s_d/\\sqrt n`, with the win count.

    Raises ``ValueError`` when an arm is missing or the two arms ran on different seeds.
    """
    def arm(key: tuple[float, str]) -> dict[int, float]:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"an arm must be a (sparsity, method) tuple, got {key!r}")
        found = {r["seed"]: r[score] for r in rows if r["sparsity"] == key[0] and r["method"] == key[1]}
        if not found:
            raise ValueError(f"no rows for the arm {key!r} (score {score!r})")
        return found

    runs_a, runs_b = arm(a), arm(b)
    if sorted(runs_a) != sorted(runs_b):
        raise ValueError(f"the arms must share their seeds to be paired, got {sorted(runs_a)} and {sorted(runs_b)}")
    order = sorted(runs_a)
    return stats.paired_difference([runs_a[s] for s in order], [runs_b[s] for s in order]).scaled(100, " points")


def correct(model: nn.Module, X: Tensor, y: Tensor) -> Tensor:
    """Per-example correctness ``argmax f(x_i) == y_i`` (a bool tensor of shape ``(N,)``)."""
    check_module("model", model)
    return models.predict_proba(model, X).argmax(dim=1) == check_tensor("y", y)


def accuracy_difference(model_a: nn.Module, model_b: nn.Module, X: Tensor, y: Tensor, *,
                        n_boot: int = 2000, seed: int = 0) -> stats.Interval:
    """Accuracy of ``model_a`` minus ``model_b`` on one test set, in **points**, with a paired bootstrap.

    Both models answer the same N images; :func:`course_lib.stats.paired_bootstrap` resamples the
    images and scores both on each resample, the percentile interval of the mean of
    :math:`d_j = 100\\,(\\mathbb 1[a_j\\ \\text{right}] - \\mathbb 1[b_j\\ \\text{right}])`. It measures the
    test set's noise for these two models, not the noise of training them again.
    """
    return stats.paired_bootstrap(correct(model_a, X, y), correct(model_b, X, y), n_boot=n_boot,
                                  seed=seed).scaled(100, " points")


def detectable_on_examples(model_a: nn.Module, model_b: nn.Module, X: Tensor, y: Tensor) -> float:
    """Smallest accuracy difference (points) a paired comparison on these N examples detects with power 0.8.

    :func:`course_lib.stats.minimum_detectable_effect` of the paired design whose pairs are the N
    examples, with the measured standard deviation of :math:`d_j` (0, +1 or -1 per example).
    """
    d = (correct(model_a, X, y).float() - correct(model_b, X, y).float()).numpy()
    sd = float(d.std(ddof=1))
    if sd == 0:
        raise ValueError("the two models agree on every example: no spread to size a detectable effect")
    return 100 * stats.minimum_detectable_effect(int(d.size), sd)


def random_control_difference(model: nn.Module, controls: Sequence[nn.Module], X: Tensor, y: Tensor, *,
                              n_boot: int = 2000, seed: int = 0) -> stats.Interval:
    """Accuracy of ``model`` minus the mean accuracy of several random-mask controls, in **points**.

    One random mask is one draw: its accuracy can land far from the typical draw's, so the control is
    K draws (``controls``, e.g. :func:`random_masks` with seeds 0..K-1 applied to the same model). With
    :math:`a_j` the correctness of ``model`` on example j and :math:`C_{kj}` that of control k, the
    estimate is :math:`100\\,(\\bar a - \\bar C)`. Each of ``n_boot`` bootstrap rounds resamples the N
    examples **and** the K draws with replacement (both are samples: of test images, of random masks)
    and recomputes the difference on the resample; the interval is the 2.5 and 97.5 % percentiles.

    Parameters
    ----------
    model : nn.Module
    controls : sequence of at least 2 nn.Module
    X, y : the test examples and labels
    n_boot : int >= 100, default=2000
    seed : int >= 0, default=0
        Seed of the resampling.
    """
    check_module("model", model)
    if isinstance(controls, nn.Module) or not isinstance(controls, Sequence) or len(controls) < 2:
        raise TypeError(f"controls must be a sequence of at least 2 models, got {controls!r:.80}")
    n_boot, seed = check_int("n_boot", n_boot, 100), check_int("seed", seed, 0)
    a = correct(model, X, y).double().numpy()                                          # (N,)
    c = np.stack([correct(m, X, y).double().numpy() for m in controls])                # (K, N)
    rng = np.random.default_rng(seed)
    k, n = c.shape
    boot = np.empty(n_boot)
    for b in range(n_boot):
        rows, cols = rng.integers(0, k, k), rng.integers(0, n, n)
        boot[b] = a[cols].mean() - c[np.ix_(rows, cols)].mean()
    low, high = np.quantile(boot, [0.025, 0.975])
    return stats.Interval(100 * float(a.mean() - c.mean()), 100 * float(low), 100 * float(high), 0.95, n,
                          f"bootstrap over examples and {k} random draws", unit=" points", difference=True)


L1_ARMS = ("plain", "L1 (subgradient)", "L1 (proximal)")


def l1_seed_study(model: nn.Module, split, *, lam: float, prox_lam: float, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                  epochs: int = 20, lr: float = 1e-3, prune_at: float = 0.9, progress: bool = False
                  ) -> tuple[list[dict], dict[tuple[str, int], nn.Module]]:
    """Plain vs L1-penalised vs proximal-L1 training from one checkpoint, paired by seed.

    For each seed :math:`s` (the shuffle of all three arms, so seed ``s`` pairs them), three copies
    of ``model`` are trained ``epochs`` epochs with Adam at ``lr``: **plain** (:func:`train_l1` with
    :math:`\\lambda = 0`), the **subgradient** objective :math:`L + \\lambda\\sum_i |w_i|`
    (:func:`train_l1` with ``lam``) and the **proximal** version (:func:`train_l1_proximal` with
    ``prox_lam``: soft thresholding by ``lr * prox_lam`` after each step).

    Each trained model is scored on the test part of ``split``, counted (exact zeros and the
    fraction with :math:`|w| < 10^{-3}` among the prunable weights), and pruned globally by
    magnitude to ``prune_at`` without fine-tuning, then scored again.

    Returns
    -------
    (rows, models)
        Rows ``seed, training, test acc, exact zeros, near zero, test acc pruned``, and the trained
        models by ``(training, seed)`` (``training`` one of :data:`L1_ARMS`).
    """
    check_module("model", model)
    lam = check_float("lam", lam, 0.0, low_inclusive=False)
    prox_lam = check_float("prox_lam", prox_lam, 0.0, low_inclusive=False)
    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got []")
    epochs = check_int("epochs", epochs, 1)
    lr = check_float("lr", lr, 0.0, low_inclusive=False)
    prune_at = check_float("prune_at", prune_at, 0.0, 1.0)
    progress = check_bool("progress", progress)
    X, y = split.X_train, split.y_train
    rows, kept = [], {}
    for seed in tqdm(seeds, desc="L1 training", disable=not progress, leave=False):
        trained = {L1_ARMS[0]: train_l1(model, X, y, lam=0.0, epochs=epochs, lr=lr, seed=seed),
                   L1_ARMS[1]: train_l1(model, X, y, lam=lam, epochs=epochs, lr=lr, seed=seed),
                   L1_ARMS[2]: train_l1_proximal(model, X, y, lam=prox_lam, epochs=epochs, lr=lr, seed=seed)}
        for arm, m in trained.items():
            w = torch.cat([layer.weight.detach().flatten() for layer in prunable_layers(m).values()])
            pruned = apply_masks(m, model_masks(m, prune_at, scope="global"))
            rows.append({"seed": seed, "training": arm, "test acc": models.evaluate(m, split.X_test, split.y_test),
                         "exact zeros": int((w == 0).sum()), "near zero": float((w.abs() < 1e-3).float().mean()),
                         "test acc pruned": models.evaluate(pruned, split.X_test, split.y_test)})
            kept[arm, seed] = m
    return rows, kept


def lottery_ticket_starts(init: nn.Module, trained: nn.Module, amount: float, fresh: nn.Module
                          ) -> tuple[dict[str, Tensor], nn.Module, nn.Module]:
    """The mask and the two starting points of a lottery-ticket retraining.

    .. math::  m = \\text{global magnitude mask of } \\theta_T \\text{ (a fraction amount pruned)}, \\qquad
               \\text{ticket: } m \\odot \\theta_0, \\qquad \\text{control: } m \\odot \\theta_0'

    ``init`` holds :math:`\\theta_0` (the weights before training), ``trained`` :math:`\\theta_T`,
    ``fresh`` a new random initialization :math:`\\theta_0'` of the same architecture. Returns
    ``(masks, ticket_start, control_start)``: copies of ``init`` and ``fresh`` with the pruned weights
    zeroed (biases kept). Inputs are not modified.
    """
    masks = model_masks(trained, amount, scope="global")
    return masks, apply_masks(init, masks), apply_masks(fresh, masks)


def lottery_ticket(make_model: Callable[[], nn.Module], split, amount: float, *, epochs: int = 10,
                   seeds: Sequence[int] = (0, 1, 2), lr: float = 3e-3, progress: bool = True) -> list[dict]:
    """A small lottery-ticket experiment: train, prune, rewind to the initialization, retrain.

    Per seed: ``make_model()`` under ``torch.manual_seed(seed)`` gives :math:`\\theta_0` (kept); a copy
    is trained ``epochs`` epochs (:func:`course_lib.models.train`) to :math:`\\theta_T`; the global
    magnitude mask :math:`m` of :math:`\\theta_T` (a fraction ``amount`` of all weights pruned) is
    retrained ``epochs`` epochs, mask held fixed (:func:`fine_tune`), from two starts
    (:func:`lottery_ticket_starts`): the **winning ticket** :math:`m \\odot \\theta_0` (rewound) and the
    **control** :math:`m \\odot \\theta_0'`, a fresh initialization drawn under
    ``torch.manual_seed(seed + 1000)``. All three trainings use the same shuffle seed, on one CPU thread.
    ``progress`` shows a tqdm bar over the seeds.

    Returns one row per seed: ``seed, sparsity, dense, ticket, control`` (validation accuracies;
    ``sparsity`` measured on the retrained ticket) and, when ``split`` has a test part,
    ``dense test, ticket test, control test`` (test accuracies, for the comparisons reported).

    References
    ----------
    Frankle & Carbin (2019). The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
    Networks. ICLR.

    Taught in: 01_pruning, section 4.
    """
    amount = check_float("amount", amount, 0.0, 1.0)
    epochs = check_int("epochs", epochs, 1)
    X, y = split.X_train, split.y_train
    rows = []
    for seed in tqdm(list(seeds), desc=f"lottery ticket {amount:.0%}", disable=not progress, leave=False):
        torch.manual_seed(seed)
        init = make_model()                                                  # theta_0
        torch.manual_seed(seed + 1000)
        fresh = make_model()                                                 # theta_0'
        dense = fine_tune(init, {}, X, y, epochs=epochs, lr=lr, seed=seed)  # theta_T (init untouched)
        masks, ticket_start, control_start = lottery_ticket_starts(init, dense, amount, fresh)
        ticket = fine_tune(ticket_start, masks, X, y, epochs=epochs, lr=lr, seed=seed)
        control = fine_tune(control_start, masks, X, y, epochs=epochs, lr=lr, seed=seed)
        row = {"seed": seed, "sparsity": sparsity(ticket)}
        for arm, trained in (("dense", dense), ("ticket", ticket), ("control", control)):
            row[arm] = models.evaluate(trained, split.X_val, split.y_val)
            if hasattr(split, "X_test"):
                row[f"{arm} test"] = models.evaluate(trained, split.X_test, split.y_test)
        rows.append(row)
    return rows


def sensitivity_amounts(rows: Sequence[dict], sizes: dict[str, int], target: float) -> dict[str, float]:
    """Per-layer sparsities from a :func:`sensitivity_scan` whose weighted total is ``target``.

    Every layer gets the largest amount whose (linearly interpolated) scan accuracy stays at or
    above one common accuracy threshold ``t``; ``t`` is found by bisection so that
    ``sum_l n_l a_l / sum_l n_l = target``. Robust layers are pruned more, sensitive ones less
    (the per-layer choice MIT 6.5940's lab 1 makes by hand from the same plot).
    """
    target = check_float("target", target, 0.0, 1.0)
    scan = {}
    for r in rows:
        scan.setdefault(r["layer"], []).append((r["amount"], r["accuracy"]))
    curves = {k: sorted(v) for k, v in scan.items()}

    def amount_at(curve: list, t: float) -> float:
        best = curve[0][0] if curve[0][1] >= t else 0.0
        for (a0, c0), (a1, c1) in zip(curve, curve[1:]):
            if c1 >= t:
                best = a1
            elif c0 >= t:                                    # crosses t between a0 and a1
                best = max(best, a0 + (a1 - a0) * (c0 - t) / (c0 - c1))
                break
            else:
                break
        return best

    total = sum(sizes[k] for k in curves)
    weighted = lambda t: sum(sizes[k] * amount_at(c, t) for k, c in curves.items()) / total  # noqa: E731
    lo, hi = -1.0, 2.0                                            # weighted(lo) = max amounts, weighted(hi) = 0
    if weighted(lo) < target:
        raise ValueError(f"target must be at most {weighted(lo):.3f} (the scan's largest amounts), got {target!r}")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if weighted(mid) >= target else (lo, mid)
    amounts = {k: amount_at(c, lo) for k, c in curves.items()}
    excess = (weighted(lo) - target) * total                      # trim the rounding of the bisection
    name = max(amounts, key=lambda k: amounts[k])
    amounts[name] = max(0.0, amounts[name] - excess / sizes[name])
    return amounts


def per_layer_masks(model: nn.Module, amounts: dict[str, float]) -> dict[str, Tensor]:
    """:func:`magnitude_mask` of each named layer's weight with its own amount."""
    layers = prunable_layers(model)
    return {name: magnitude_mask(layers[name].weight, float(a)) for name, a in amounts.items()}


def random_masks(model: nn.Module, amount: float, seed: int = 0) -> dict[str, Tensor]:
    """The control for magnitude pruning: each layer loses ``round(amount * n)`` weights chosen at random."""
    g = torch.Generator().manual_seed(seed)
    return {name: magnitude_mask(torch.rand(m.weight.shape, generator=g), amount)
            for name, m in prunable_layers(model).items()}


# =========================================================================== what gets faster
def compare_latency(fns: dict[str, Callable[[], object]], *, repeats: int = 3, rounds: int = 10,
                    warmup: int = 3, threads: int = 1) -> dict[str, timing.Timing]:
    """Time several functions in interleaved rounds on ``threads`` CPU threads; pool each one's samples.

    Each function is warmed up, then every round times ``repeats`` calls of each function in turn
    (A A A, B B B, A A A, ...), so a burst of background load on a shared machine hits all of them
    alike. One thread by default: with two, a kernel waits for its slower thread, and on a
    machine shared with other jobs that thread is often descheduled (one measured 3x3 conv pair
    went from 2.7 ms to 72 ms). Each result is a :class:`course_lib.timing.Timing` over
    ``repeats * rounds`` samples.
    """
    return timing.compare(fns, repeats=repeats, rounds=rounds, warmup=warmup, threads=threads)


def speed_table(candidates: dict[str, nn.Module], x: Tensor, *, repeats: int = 3, rounds: int = 10,
                threads: int = 1) -> list[dict]:
    """Latency of each model on ``x`` (interleaved, CPU) next to its FLOPs; ratios are against the first."""
    runs = compare_latency({name: (lambda m=m: m(x)) for name, m in candidates.items()}, repeats=repeats,
                           rounds=rounds, threads=threads)
    flops = {name: timing.count_flops(m, x) for name, m in candidates.items()}
    first = next(iter(candidates))
    return [{"model": name, "FLOPs": flops[name], "FLOP ratio": flops[first] / flops[name],
             "median (ms)": runs[name].median, "IQR (ms)": runs[name].iqr,
             "measured speedup": runs[first].median / runs[name].median, "threads": runs[name].threads}
            for name in candidates]


def _csr(t: Tensor, index_dtype: torch.dtype = torch.int64) -> Tensor:
    """``t`` in CSR with compact storages (``to_sparse_csr``'s column indices sit in a storage twice
    their size, which ``torch.save`` would write out whole)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        csr = t.to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().to(index_dtype).clone(),
                                       csr.col_indices().to(index_dtype).clone(), csr.values().clone(),
                                       size=csr.shape, check_invariants=False)


def sparse_matmul_rows(out_features: int, in_features: int, batch: int, sparsities: Sequence[float], *,
                       repeats: int = 3, rounds: int = 10, threads: int = 1, seed: int = 0) -> list[dict]:
    """Latency of ``W @ x`` for a dense W, the same W masked (dense with zeros) and W in CSR.

    ``W`` is ``(out_features, in_features)`` magnitude-pruned to each sparsity, ``x`` is
    ``(in_features, batch)``. Speedups are dense time / other time (> 1: faster than dense).
    """
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=g)        # (out, in)
    x = torch.randn(in_features, batch, generator=g)                # (in, B)
    rows = []
    for s in sparsities:
        W_masked = W * magnitude_mask(W, float(s))
        W_csr = _csr(W_masked)
        t = compare_latency({"dense": lambda: W @ x, "masked": lambda: W_masked @ x,
                             "csr": lambda: torch.sparse.mm(W_csr, x)}, repeats=repeats, rounds=rounds,
                            threads=threads)
        rows.append({"shape": f"{out_features}x{in_features} @ {in_features}x{batch}", "sparsity": float(s),
                     "dense (ms)": t["dense"].median, "masked (ms)": t["masked"].median,
                     "CSR (ms)": t["csr"].median, "masked speedup": t["dense"].median / t["masked"].median,
                     "CSR speedup": t["dense"].median / t["csr"].median, "threads": t["dense"].threads})
    return rows


def stored_bytes(obj: object) -> int:
    """Bytes of the file ``torch.save(obj)`` writes (measured in memory)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def sparse_state_dict(model: nn.Module, index_dtype: torch.dtype = torch.int64) -> dict[str, Tensor]:
    """``model``'s state_dict with every weight of 2+ dims stored as CSR (conv weights as (C_out, -1)),
    with ``index_dtype`` row pointers and column indices (torch's default int64, or int32)."""
    return {k: (_csr(v.reshape(v.shape[0], -1), index_dtype) if v.dim() >= 2 else v)
            for k, v in model.state_dict().items()}


def semi_structured_rows(sizes: Sequence[tuple[int, int, int]], *, repeats: int = 20) -> list[dict]:
    """On a CUDA GPU: latency of ``F.linear`` with a dense fp16 weight and with the same 2:4 weight
    stored by ``torch.sparse.to_sparse_semi_structured``. Each size is ``(out, in, batch)``.

    Raises RuntimeError without CUDA (the kernels exist only for NVIDIA GPUs of compute
    capability 8.0+). A size the kernels reject gives a row with an ``"error"``.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("semi-structured (2:4) kernels need a CUDA GPU; none is available")
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for out_f, in_f, batch in sizes:
        W = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16)
        W = W * n_m_mask(W, 2, 4)
        x = torch.randn(batch, in_f, device="cuda", dtype=torch.float16)
        row = {"shape": f"({batch}x{in_f}) @ ({in_f}x{out_f})"}
        try:
            W_24 = to_sparse_semi_structured(W)
            dense = timing.benchmark(lambda: nn.functional.linear(x, W), repeats=repeats, device="cuda")
            sparse = timing.benchmark(lambda: nn.functional.linear(x, W_24), repeats=repeats, device="cuda")
            row.update({"dense fp16 (ms)": dense.median, "2:4 (ms)": sparse.median,
                        "2:4 speedup": dense.median / sparse.median, "device": dense.device})
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        rows.append(row)
    return rows


def csr_bytes(n_rows: int, n_cols: int, density: float, value_bytes: int = 4, index_bytes: int = 8) -> float:
    """Bytes of a CSR matrix: a value and a column index per non-zero, plus ``n_rows + 1`` row pointers.

    .. math::  B_{CSR} = \\mathrm{nnz}\\,(v + i) + (R + 1)\\, i, \\qquad \\mathrm{nnz} = d R C

    Taught in: 01_pruning, section 7.
    """
    nnz = density * n_rows * n_cols
    return nnz * (value_bytes + index_bytes) + (n_rows + 1) * index_bytes


def csr_break_even(value_bytes: int = 4, index_bytes: int = 8) -> float:
    """Sparsity above which CSR is smaller than the dense matrix (row pointers neglected).

    .. math::  d R C (v + i) < R C v \\iff \\text{sparsity} = 1 - d > \\frac{i}{v + i}

    float32 values: 2/3 with int64 indices (torch's default), 1/2 with int32 indices.
    """
    return index_bytes / (value_bytes + index_bytes)


def csr_with_index(weight: Tensor, index_dtype: torch.dtype = torch.int32) -> Tensor:
    """``weight`` (2-D) as a CSR tensor whose row pointers and column indices have ``index_dtype``."""
    check_tensor("weight", weight)
    return _csr(weight, index_dtype)


def pruning_quantization_codes(w: Tensor, B: int) -> Tensor:
    """The widespread "pruning quantization" snippet: ``round(|w| / max|w| * B)``.

    It is a magnitude score on ``B + 1`` levels: weights with ``|w| < max|w| / (2B)`` get 0 (a
    magnitude-pruning threshold), the rest a coarse magnitude. The sign is gone: ``w`` and ``-w``
    get the same code, so the codes cannot stand in for the weights.
    """
    check_tensor("w", w)
    return torch.round(w.abs() / w.abs().max() * B)


def pruning_quantization_myth(model: nn.Module, X: Tensor, y: Tensor, B: int = 15, *,
                              keep_models: bool = False) -> dict | tuple[dict, dict[str, nn.Module]]:
    """Accuracy of ``model`` when its prunable weights are replaced by the snippet's codes (sign
    dropped, rescaled by ``max|w| / B``), by the same codes with the sign kept (a symmetric
    quantizer on ``2B + 1`` levels), and pruned by the snippet's zero code (magnitude pruning).

    With ``keep_models`` also returns the three changed models by name (to compare them with
    ``model`` example by example, :func:`accuracy_difference`)."""
    keep_models = check_bool("keep_models", keep_models)
    kept = {}
    variants = {"dropped sign": lambda w, c: c * w.abs().max() / B,
                "sign kept": lambda w, c: torch.sign(w) * c * w.abs().max() / B,
                "zero code as a pruning mask": lambda w, c: w * (c > 0)}
    out = {"float": models.evaluate(model, X, y)}
    for name, make in variants.items():
        changed = copy.deepcopy(model)
        with torch.no_grad():
            for m in prunable_layers(changed).values():
                m.weight.copy_(make(m.weight, pruning_quantization_codes(m.weight, B)))
        out[name], kept[name] = models.evaluate(changed, X, y), changed
    codes = {k: pruning_quantization_codes(m.weight, B) for k, m in prunable_layers(model).items()}
    out["pruned fraction"] = float(sum((c == 0).sum() for c in codes.values()) / sum(c.numel() for c in codes.values()))
    return (out, kept) if keep_models else out


# =========================================================================== plots
def plot_masks(masks: dict[str, Tensor], title: str = ""):
    """Masks side by side, each as a ``(rows, rest)`` image (black = pruned). Returns ``(fig, axes)``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(masks), figsize=(3.2 * len(masks), 3.2), squeeze=False)
    for ax, (name, mask) in zip(axes[0], masks.items()):
        image = mask.detach().reshape(mask.shape[0], -1).cpu().numpy()    # (rows, rest)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set(title=f"{name}\n{100 * (1 - image.mean()):.0f} % pruned", xlabel="input x kernel position",
               ylabel="output channel")
    fig.suptitle(title)
    fig.tight_layout()
    return fig, axes[0]


def plot_sensitivity(rows: Sequence[dict], title: str = "sensitivity scan"):
    """Accuracy (%) against the sparsity (%) of one layer at a time; one line per layer."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == layer]
        ax.plot([100 * r["amount"] for r in mine], [100 * r["accuracy"] for r in mine], marker="o", label=layer)
    ax.set(xlabel="sparsity of this layer only (%)", ylabel="validation accuracy (%)", title=title)
    ax.legend(title="layer pruned", fontsize=8)
    fig.tight_layout()
    return fig, ax


def plot_schedule(total_steps: int, final_sparsity: float, powers: Sequence[float] = (1, 3)):
    """The polynomial schedule :func:`polynomial_sparsity` for each power."""
    import matplotlib.pyplot as plt

    steps = np.arange(total_steps + 1)
    fig, ax = plt.subplots(figsize=(5, 3))
    for p in powers:
        ax.plot(steps, [100 * polynomial_sparsity(int(t), total_steps, final_sparsity, power=p) for t in steps],
                marker=".", label=f"power {p}")
    ax.set(xlabel="pruning step t", ylabel="sparsity s_t (%)", title="gradual pruning schedule")
    ax.legend()
    fig.tight_layout()
    return fig, ax


def plot_weight_histograms(weights: dict[str, Tensor], bins: int = 80, title: str = "weight histogram"):
    """Histograms of several weight sets on one axis (log counts)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, w in weights.items():
        ax.hist(w.detach().flatten().cpu().numpy(), bins=bins, alpha=0.55, label=name, log=True)
    ax.set(xlabel="weight value", ylabel="count (log)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax
