"""Chapter 03 -- low-rank factorization: SVD, Eckart--Young, factorized Linear and Conv layers.

A weight matrix ``W`` (out x in) of rank ``r`` is a product ``A @ B`` of an (out x r) and an
(r x in) matrix, and a layer ``x -> W x`` becomes two thinner layers ``x -> A (B x)``. The
singular value decomposition gives the best such product for every ``r`` (Eckart--Young), and
the singular values say how much is lost. These are the reference implementations of chapter
03's exercises (``low_rank_factors``, ``rank_for_energy``, ``factorize_linear``,
``factorize_conv``, ``break_even_rank``) and the helpers the notebook calls: spectra, rank
choices at a parameter budget, whole-model factorization, fine-tuning, and timing tables.

Taught in: 03_low_rank.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from . import models, timing
from .validation import check_float, check_int, check_module, check_tensor

__all__ = ["low_rank_factors", "rank_for_energy", "factorize_linear", "factorize_conv", "break_even_rank",
           "as_matrix", "spectrum", "frobenius_error", "factorizable_layers", "factorized_params",
           "dense_params", "factorize_model", "ranks_uniform", "ranks_uniform_keep_dense", "CSRLinear", "csr_model", "stored_formats", "layer_inputs", "data_aware_factors",
           "factorize_model_data_aware", "ranks_by_energy", "tucker2_factors", "tucker2_conv",
           "tucker2_params", "tucker2_ranks_for_budget", "conv_scheme_rows", "fine_tune",
           "runs_over_seeds", "fine_tune_seeds", "rank_sweep", "speed_rows", "plot_spectra", "plot_speed",
           "plot_reconstruction"]


# =========================================================================== the exercises
def _check_matrix(name: str, weight: object) -> Tensor:
    check_tensor(name, weight)
    if weight.dim() != 2 or not weight.is_floating_point() or weight.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-D floating-point tensor (out, in), got a "
                         f"{weight.dtype} tensor of shape {tuple(weight.shape)}")
    return weight


def _check_rank(rank: object, full: int) -> int:
    if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank must be an int in [1, {full}], got {rank!r}")
    if not 1 <= rank <= full:
        raise ValueError(f"rank must be an int in [1, {full}], got {rank!r}")
    return int(rank)


def low_rank_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The best rank-``rank`` approximation of a matrix, as two factors ``A @ B``.

    .. math::  W = U \\Sigma V^\\top, \\qquad
               A = U_{:, :r} \\Sigma_r^{1/2}, \\quad B = \\Sigma_r^{1/2} V_{:, :r}^\\top, \\qquad
               \\|W - AB\\|_F = \\min_{\\mathrm{rank}(M) \\le r} \\|W - M\\|_F
               = \\sqrt{\\textstyle\\sum_{i > r} s_i^2}

    (Eckart & Young, 1936). The singular values are split evenly (``sqrt`` on both sides), so
    both factors have the same scale; any split gives the same product.

    Parameters
    ----------
    weight : Tensor of shape (out, in), floating point
    rank : int in [1, min(out, in)]

    Returns
    -------
    A : Tensor of shape (out, rank)
    B : Tensor of shape (rank, in)
        Both in ``weight``'s dtype (the SVD is computed in float64), without grad history.

    Raises
    ------
    TypeError
        ``weight`` is not a tensor or ``rank`` is not an int (``bool`` included).
    ValueError
        ``weight`` is not a non-empty 2-D float tensor, or ``rank`` is outside [1, min(out, in)].

    Examples
    --------
    >>> A, B = low_rank_factors(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), 1)
    >>> (A @ B).tolist()
    [[3.0, 0.0], [0.0, 0.0]]

    Taught in: 03_low_rank §1.
    """
    w = _check_matrix("weight", weight)
    r = _check_rank(rank, min(w.shape))
    U, S, Vh = torch.linalg.svd(w.detach().double(), full_matrices=False)   # (out, k), (k,), (k, in)
    root = S[:r].sqrt()                                                       # (r,)
    A = U[:, :r] * root                                                       # (out, r)
    B = root[:, None] * Vh[:r]                                                # (r, in)
    return A.to(w.dtype), B.to(w.dtype)


def rank_for_energy(singular_values: Tensor, energy: float = 0.9) -> int:
    """The smallest rank whose leading singular values hold ``energy`` of the total energy.

    .. math::  c_r = \\sum_{i=1}^{r} s_i^2, \\qquad
               r^* = \\min\\{\\, r : c_r \\ge \\text{energy} \\cdot c_n \\,\\}

    computed in float64 (``c`` by ``torch.cumsum``; the total is its last entry). Since
    :math:`\\|W - W_r\\|_F^2 = c_n - c_r`, keeping ``energy`` of the energy bounds the relative
    Frobenius error by :math:`\\sqrt{1 - \\text{energy}}`.

    Parameters
    ----------
    singular_values : 1-D floating tensor, non-negative, in descending order
        As ``torch.linalg.svdvals`` returns them.
    energy : float in (0, 1], default=0.9

    Returns
    -------
    int
        A Python int in [1, n]. A tie counts as reaching the target (``>=``).

    Raises
    ------
    TypeError
        Not a tensor, or ``energy`` not a real number.
    ValueError
        Not a non-empty 1-D float tensor of finite, non-negative, descending values with a
        positive total; ``energy`` outside (0, 1].

    Examples
    --------
    >>> rank_for_energy(torch.tensor([3.0, 1.0]), 0.9)     # 9 of 10 is enough
    1

    Taught in: 03_low_rank §2.
    """
    s = check_tensor("singular_values", singular_values)
    if s.dim() != 1 or s.numel() == 0 or not s.is_floating_point():
        raise ValueError(f"singular_values must be a non-empty 1-D float tensor, got a {s.dtype} tensor "
                         f"of shape {tuple(s.shape)}")
    e = check_float("energy", energy, 0.0, 1.0, low_inclusive=False)
    s = s.detach().double()
    if not torch.isfinite(s).all() or (s < 0).any() or (s[1:] > s[:-1]).any() or s[0] == 0:
        raise ValueError(f"singular_values must be finite, non-negative, in descending order and not all 0, "
                         f"got {s.tolist()[:8]}")
    c = torch.cumsum(s**2, 0)                                                 # (n,)
    return int((c < e * c[-1]).sum().item()) + 1


def factorize_linear(linear: nn.Linear, rank: int) -> nn.Sequential:
    """Replace ``linear`` by ``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``.

    .. math::  y = W x + b \\;\\approx\\; A (B x) + b, \\qquad AB = W_r \\text{ (Eckart--Young)}

    The first layer holds ``B`` (rank x in), the second ``A`` (out x rank) and the original bias
    (no bias if the original had none). Both are new layers in ``linear``'s dtype and device;
    ``linear`` is left unchanged. Weights: ``rank * (in + out)`` instead of ``in * out``.

    Raises
    ------
    TypeError
        ``linear`` is not an ``nn.Linear``; ``rank`` is not an int.
    ValueError
        ``rank`` outside [1, min(in, out)].

    Examples
    --------
    >>> factorize_linear(nn.Linear(8, 6), 2)
    Sequential(
      (0): Linear(in_features=8, out_features=2, bias=False)
      (1): Linear(in_features=2, out_features=6, bias=True)
    )

    Taught in: 03_low_rank §3.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    A, B = low_rank_factors(linear.weight, rank)                              # (out, r), (r, in)
    r, like = B.shape[0], {"dtype": linear.weight.dtype, "device": linear.weight.device}
    first = skip_init(nn.Linear, linear.in_features, r, bias=False, **like)
    second = skip_init(nn.Linear, r, linear.out_features, bias=linear.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(B)
        second.weight.copy_(A)
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second)


def factorize_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Replace a k x k ``conv`` by a k x k conv with ``rank`` outputs, then a 1 x 1 conv.

    .. math::  W \\in \\mathbb{R}^{C_{out} \\times C_{in} \\times k_h \\times k_w}
               \\;\\to\\; M = W.\\mathrm{reshape}(C_{out},\\, C_{in} k_h k_w) \\approx AB,
               \\qquad B.\\mathrm{reshape}(r, C_{in}, k_h, k_w), \\;
               A.\\mathrm{reshape}(C_{out}, r, 1, 1)

    Each row of ``M`` is one filter; ``B``'s rows are ``rank`` basis filters (the first conv,
    with ``conv``'s stride, padding, dilation and padding_mode, no bias) and ``A`` mixes them
    into the ``C_out`` outputs (a 1 x 1 conv carrying ``conv``'s bias). The pair computes the
    convolution with the rank-``rank`` weight exactly. ``conv`` is left unchanged.

    Raises
    ------
    TypeError
        ``conv`` is not an ``nn.Conv2d``; ``rank`` is not an int.
    ValueError
        ``conv.groups > 1`` (out of scope); ``rank`` outside [1, min(C_out, C_in kh kw)].

    Examples
    --------
    >>> factorize_conv(nn.Conv2d(3, 8, 3, padding=1), 4)
    Sequential(
      (0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
      (1): Conv2d(4, 8, kernel_size=(1, 1), stride=(1, 1))
    )

    Taught in: 03_low_rank §4.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"conv.groups must be 1 (grouped convolutions are out of scope), got {conv.groups}")
    c_out, c_in, kh, kw = conv.weight.shape
    A, B = low_rank_factors(conv.weight.reshape(c_out, c_in * kh * kw), rank)   # (C_out, r), (r, C_in kh kw)
    r, like = B.shape[0], {"dtype": conv.weight.dtype, "device": conv.weight.device}
    first = skip_init(nn.Conv2d, c_in, r, (kh, kw), stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, padding_mode=conv.padding_mode, bias=False, **like)
    second = skip_init(nn.Conv2d, r, c_out, 1, bias=conv.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(B.reshape(r, c_in, kh, kw))
        second.weight.copy_(A.reshape(c_out, r, 1, 1))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def break_even_rank(in_features: int, out_features: int) -> int:
    """The largest rank at which the factorized layer has strictly fewer weights than the dense one.

    .. math::  r^* = \\max\\{\\, r \\ge 0 : r\\,(n_{in} + n_{out}) < n_{in} n_{out} \\,\\}
               = \\left\\lfloor \\frac{n_{in} n_{out} - 1}{n_{in} + n_{out}} \\right\\rfloor

    Biases are not counted (both versions keep the same ``out`` biases). 0 when no rank saves
    anything (e.g. 2 x 2). Integer arithmetic only: no float rounding.

    Raises
    ------
    TypeError, ValueError
        A size that is not a positive int.

    Examples
    --------
    >>> break_even_rank(512, 512)        # 256 * 1024 == 512 * 512 saves nothing
    255

    Taught in: 03_low_rank §3.
    """
    n_in = check_int("in_features", in_features, 1)
    n_out = check_int("out_features", out_features, 1)
    return (n_in * n_out - 1) // (n_in + n_out)


# =========================================================================== helpers for the notebook
def as_matrix(weight: Tensor) -> Tensor:
    """A Linear weight as is, a conv weight (C_out, C_in, kh, kw) as (C_out, C_in kh kw)."""
    return weight.detach().reshape(weight.shape[0], -1)


def spectrum(weight: Tensor) -> Tensor:
    """Singular values (float64, descending) of :func:`as_matrix` of ``weight``."""
    return torch.linalg.svdvals(as_matrix(weight).double())


def frobenius_error(weight: Tensor, approx: Tensor) -> float:
    """:math:`\\|W - \\tilde W\\|_F` in float64."""
    return float(torch.linalg.matrix_norm(weight.detach().double() - approx.detach().double()))


def factorizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Linear`` and ``groups=1`` ``nn.Conv2d`` layers of ``model``, by qualified name."""
    check_module("model", model)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)}


def factorized_params(layer: nn.Module, rank: int) -> int:
    """Weights of ``layer`` factorized at ``rank``: ``rank * (rows + cols)`` of its matrix."""
    rows, cols = as_matrix(layer.weight).shape
    return rank * (rows + cols)


def dense_params(layer: nn.Module) -> int:
    """Weights of ``layer`` (its matrix's rows * cols; biases not counted)."""
    return layer.weight.numel()


def factorize_model(model: nn.Module, ranks: dict[str, int | None]) -> nn.Module:
    """A copy of ``model`` whose layers named in ``ranks`` are factorized (``None``: kept dense)."""
    out = copy.deepcopy(model)
    for name, rank in ranks.items():
        if rank is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        layer = getattr(parent, child)
        new = factorize_linear(layer, rank) if isinstance(layer, nn.Linear) else factorize_conv(layer, rank)
        setattr(parent, child, new)
    return out.eval()


def _weights(layers: dict[str, nn.Module], ranks: dict[str, int | None]) -> int:
    return sum(dense_params(m) if ranks[n] is None else factorized_params(m, ranks[n]) for n, m in layers.items())


def ranks_uniform(model: nn.Module, fraction: float, layers: Sequence[str] | None = None) -> dict[str, int]:
    """Every layer at the same fraction of its full rank: ``max(1, round(fraction * min(rows, cols)))``."""
    check_float("fraction", fraction, 0.0, 1.0, low_inclusive=False)
    chosen = factorizable_layers(model) if layers is None else {n: model.get_submodule(n) for n in layers}
    return {n: max(1, round(fraction * min(as_matrix(m.weight).shape))) for n, m in chosen.items()}


def ranks_uniform_keep_dense(model: nn.Module, budget: int, dense: Sequence[str]) -> dict[str, int | None]:
    """One rank fraction for every layer except those in ``dense`` (kept dense, ``None``), the largest that fits.

    The control for :func:`ranks_by_energy` that keeps a small layer (the 10-row classifier) whole: the other
    layers get ``max(1, round(f * min(rows, cols)))`` for the largest ``f`` on a grid of step 1/1000 whose
    total weights (the dense layers' counted in full) stay ``<= budget``.

    Raises
    ------
    ValueError
        A name in ``dense`` that is not a factorizable layer, or a budget the dense layers alone exceed.

    Taught in: 03_low_rank, section 5.
    """
    layers = factorizable_layers(model)
    check_int("budget", budget, 1)
    if isinstance(dense, str) or any(n not in layers for n in dense):
        raise ValueError(f"dense must be a list of factorizable layer names {sorted(layers)}, got {dense!r}")
    rest = [n for n in layers if n not in dense]
    floor = {**{n: None for n in dense}, **{n: 1 for n in rest}}
    if _weights(layers, floor) > budget:
        raise ValueError(f"budget must leave room for the dense layers and rank 1 elsewhere, got {budget}")
    best = floor
    for step in range(1000, 0, -1):
        ranks = {**{n: None for n in dense}, **ranks_uniform(model, step / 1000, rest)}
        if _weights(layers, ranks) <= budget:
            best = ranks
            break
    return best


def ranks_by_energy(model: nn.Module, budget: int, layers: Sequence[str] | None = None) -> dict[str, int]:
    """Per-layer ranks keeping the same energy fraction in every layer, the largest that fits ``budget`` weights.

    Tries every energy level at which some layer's rank changes (from all layers' cumulative
    energies) and keeps the highest whose factorized weights total ``<= budget``.
    """
    chosen = factorizable_layers(model) if layers is None else {n: model.get_submodule(n) for n in layers}
    spectra = {n: spectrum(m.weight) for n, m in chosen.items()}
    levels = sorted({float(v) for s in spectra.values() for v in (torch.cumsum(s**2, 0) / (s**2).sum()).tolist()})
    best = {n: 1 for n in chosen}
    for level in levels:
        level = min(level, 1.0)
        ranks = {n: rank_for_energy(s, level) for n, s in spectra.items()}
        if _weights(chosen, ranks) <= budget:
            best = ranks
    return best


class CSRLinear(nn.Module):
    """A Linear layer whose weight is stored and multiplied in CSR (int32 row pointers and column indices).

    ``forward(x) = (W_csr @ x^T)^T + b`` with ``torch.sparse.mm``: it computes only the kept weights, so it is
    timed as what a CSR-stored pruned model is, not as the masked dense model it came from.

    Taught in: 03_low_rank, section 7.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        import warnings

        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = linear.weight.detach().to_sparse_csr()
            self.weight = torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                                  csr.values().clone(), size=csr.shape, check_invariants=False)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        out = torch.sparse.mm(self.weight, x.t()).t()
        return out if self.bias is None else out + self.bias


def csr_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by :class:`CSRLinear` (same outputs, CSR weights).

    Taught in: 03_low_rank, section 7.
    """
    check_module("model", model)
    out = copy.deepcopy(model).eval()
    for name, layer in list(out.named_modules()):
        if isinstance(layer, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, child, CSRLinear(layer))
    return out


def stored_formats(model: nn.Module) -> dict[str, int]:
    """Bytes of a pruned model's Linear/Conv2d weights in three formats, **measured** with ``torch.save``.

    ``"dense"``: the float32 weights and biases as they are; ``"CSR int32"``: each weight matrix as CSR with
    int32 row pointers and column indices (4-byte value + 4-byte index per kept weight, plus rows + 1
    pointers); ``"bitmask"``: the kept float32 values plus one bit per weight (``numpy.packbits`` of the
    mask). Biases are stored dense in every format. Each is one ``torch.save`` file written in memory, so
    the container's own bytes (names, zip headers) are included.

    Taught in: 03_low_rank, section 7.
    """
    import io

    check_module("model", model)

    def saved(obj) -> int:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getbuffer().nbytes

    layers = factorizable_layers(model)
    dense, csr, bitmask = {}, {}, {}
    for name, m in layers.items():
        W = m.weight.detach().reshape(m.weight.shape[0], -1)
        mask = W != 0
        dense[name] = m.weight.detach().clone()
        rows = mask.sum(1).cumsum(0)
        csr[name] = {"crow": torch.cat([torch.zeros(1, dtype=torch.int32), rows.to(torch.int32)]),
                     "col": mask.nonzero()[:, 1].to(torch.int32), "values": W[mask].clone()}
        bitmask[name] = {"mask": torch.from_numpy(np.packbits(mask.flatten().numpy())), "values": W[mask].clone()}
        if m.bias is not None:
            for store in (dense, csr, bitmask):
                store[name + ".bias"] = m.bias.detach().clone()
    return {"dense": saved(dense), "CSR int32": saved(csr), "bitmask": saved(bitmask)}


def layer_inputs(model: nn.Module, name: str, X: Tensor) -> Tensor:
    """The inputs the layer ``name`` receives when ``model`` runs on ``X`` (a forward pre-hook, no gradient).

    Taught in: 03_low_rank, section 5b.
    """
    check_module("model", model)
    check_tensor("X", X)
    store: dict[str, Tensor] = {}
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, args: store.__setitem__("x", args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(X)
    finally:
        handle.remove()
    return store["x"]


def data_aware_factors(weight: Tensor, inputs: Tensor, rank: int, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    r"""Rank-``rank`` factors ``A @ B`` of a Linear weight that minimise the error **on the layer's inputs**.

    .. math::  \min_{\operatorname{rank}(AB) \le r} \lVert (W - AB)\,X^\top \rVert_F^2
               = n\,\lVert (W - AB)\,\Sigma^{1/2} \rVert_F^2, \qquad \Sigma = \tfrac1n X^\top X,

    so the answer is the truncated SVD of :math:`W\Sigma^{1/2} = U S V^\top` mapped back:
    :math:`A = U_r S_r`, :math:`B = V_r^\top \Sigma^{-1/2}` (Eckart-Young in the metric of the inputs). Plain SVD
    is the case :math:`\Sigma = I`: it treats every input direction as equally important, while the data-aware
    factors spend the rank on the directions the inputs actually use. Eigenvalues of :math:`\Sigma` below
    ``eps`` times the largest are raised to that floor (a direction the inputs never use gets a tiny weight,
    not a division by zero). Computed in float64, returned in ``weight``'s dtype.

    Parameters
    ----------
    weight : Tensor (out, in)
    inputs : Tensor (n, in)
        The layer's inputs on calibration data (:func:`layer_inputs`), e.g. the training images.
    rank : int in [1, min(out, in)]
    eps : float, default=1e-6

    Returns
    -------
    (A, B) : (out, rank) and (rank, in)

    Raises
    ------
    ValueError
        Shapes that do not match, or a rank out of range.

    Taught in: 03_low_rank, section 5b.
    """
    W = _check_matrix("weight", weight)
    check_tensor("inputs", inputs)
    if inputs.ndim != 2 or inputs.shape[1] != W.shape[1] or inputs.shape[0] < 1:
        raise ValueError(f"inputs must have shape (n, {W.shape[1]}), got {tuple(inputs.shape)}")
    rank = _check_rank(rank, min(W.shape))
    check_float("eps", eps, 0.0, 1.0, low_inclusive=False)
    Wd, X = W.double(), inputs.double()
    evals, evecs = torch.linalg.eigh(X.T @ X / len(X))
    lam = evals.clamp_min(eps * float(evals.max().clamp_min(1e-300)))
    root, inv_root = (evecs * lam.sqrt()) @ evecs.T, (evecs / lam.sqrt()) @ evecs.T
    U, s, Vh = torch.linalg.svd(Wd @ root, full_matrices=False)
    return (U[:, :rank] * s[:rank]).to(W.dtype), (Vh[:rank] @ inv_root).to(W.dtype)


def factorize_model_data_aware(model: nn.Module, ranks: dict[str, int | None], X: Tensor) -> nn.Module:
    """Like :func:`factorize_model` for Linear layers, with :func:`data_aware_factors` on each layer's inputs
    when ``model`` runs on ``X`` (the inputs of the original model, layer by layer).

    Taught in: 03_low_rank, section 5b.
    """
    out = factorize_model(model, ranks)
    for name, rank in ranks.items():
        if rank is None:
            continue
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"ranks must name Linear layers only, got {name!r} ({type(layer).__name__})")
        A, B = data_aware_factors(layer.weight.detach(), layer_inputs(model, name, X), rank)
        pair = out.get_submodule(name)
        with torch.no_grad():
            pair[0].weight.copy_(B)
            pair[1].weight.copy_(A)
    return out


def _check_bounded_int(name: str, value: object, full: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [1, {full}], got {value!r}")
    if not 1 <= value <= full:
        raise ValueError(f"{name} must be an int in [1, {full}], got {value!r}")
    return int(value)


def tucker2_factors(weight: Tensor, rank_in: int, rank_out: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Truncated HOSVD of a conv weight along its output and input modes (Tucker-2).

    .. math::  W \in \mathbb{R}^{C_{out}\times C_{in}\times k_h\times k_w}, \qquad
               W \approx \mathcal{G} \times_1 U_{out} \times_2 U_{in},
               \qquad \mathcal{G} = W \times_1 U_{out}^\top \times_2 U_{in}^\top

    :math:`U_{out}` (:math:`C_{out}\times R_{out}`) holds the leading left singular vectors of the mode-1
    unfolding ``W.reshape(C_out, -1)``, :math:`U_{in}` (:math:`C_{in}\times R_{in}`) those of the mode-2
    unfolding (``W`` with its first two axes swapped, reshaped to ``(C_in, -1)``); the core
    :math:`\mathcal{G}` is ``(R_out, R_in, kh, kw)``. The spatial modes are kept whole. Because the
    approximation is the orthogonal projection :math:`(P_{out}\otimes P_{in})W`, its error is exactly
    :math:`\lVert W\rVert_F^2 - \lVert\mathcal{G}\rVert_F^2`, and it is at most the sum of the two unfoldings'
    discarded squared singular values (De Lathauwer et al., 2000). With ``rank_in = C_in`` it is the
    truncated SVD of the mode-1 unfolding, i.e. the weight of :func:`factorize_conv` at ``rank_out``.
    Computed in float64, returned in ``weight``'s dtype.

    Parameters
    ----------
    weight : Tensor (C_out, C_in, kh, kw)
    rank_in : int in [1, min(C_in, C_out kh kw)]
    rank_out : int in [1, min(C_out, C_in kh kw)]

    Returns
    -------
    (U_in, core, U_out) : (C_in, R_in), (R_out, R_in, kh, kw), (C_out, R_out)

    Raises
    ------
    TypeError, ValueError
        ``weight`` not a 4-D float tensor; a rank that is not an int or is out of range.

    Taught in: 03_low_rank, section 4b.
    """
    check_tensor("weight", weight)
    if weight.dim() != 4 or not weight.is_floating_point() or weight.numel() == 0:
        raise ValueError(f"weight must be a non-empty 4-D floating-point tensor (C_out, C_in, kh, kw), got a "
                         f"{weight.dtype} tensor of shape {tuple(weight.shape)}")
    c_out, c_in, kh, kw = weight.shape
    W = weight.detach().double()
    mode_out, mode_in = W.reshape(c_out, -1), W.transpose(0, 1).reshape(c_in, -1)
    r_out, r_in = (_check_bounded_int(n, v, min(m.shape)) for n, v, m in
                   (("rank_out", rank_out, mode_out), ("rank_in", rank_in, mode_in)))
    U_out = torch.linalg.svd(mode_out, full_matrices=False)[0][:, :r_out]            # (C_out, R_out)
    U_in = torch.linalg.svd(mode_in, full_matrices=False)[0][:, :r_in]               # (C_in, R_in)
    core = torch.einsum("oihw,or,is->rshw", W, U_out, U_in)                          # (R_out, R_in, kh, kw)
    return U_in.to(weight.dtype), core.to(weight.dtype), U_out.to(weight.dtype)


def tucker2_conv(conv: nn.Conv2d, rank_in: int, rank_out: int) -> nn.Sequential:
    """Replace a k x k ``conv`` by 1 x 1 (C_in -> R_in), k x k core (R_in -> R_out), 1 x 1 (R_out -> C_out).

    The three convs hold :func:`tucker2_factors`: ``U_in^T`` (no bias), the core with ``conv``'s stride,
    padding, dilation and padding mode (no bias), and ``U_out`` carrying ``conv``'s bias. A 1 x 1 conv
    without bias commutes with the padding (it maps a zero, or a copied, pixel to a zero, or the copied,
    pixel), so the three compute exactly the convolution with the Tucker-2 weight. Weights:
    ``C_in R_in + R_in R_out kh kw + R_out C_out``; multiply-adds per output position the same numbers
    (stride 1). ``conv`` is left unchanged.

    Raises
    ------
    TypeError
        ``conv`` is not an ``nn.Conv2d``.
    ValueError
        ``conv.groups > 1``, or a rank out of range (:func:`tucker2_factors`).

    Taught in: 03_low_rank, section 4b.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"conv.groups must be 1 (grouped convolutions are out of scope), got {conv.groups}")
    U_in, core, U_out = tucker2_factors(conv.weight, rank_in, rank_out)
    (c_in, r_in), (c_out, r_out) = U_in.shape, U_out.shape
    like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
    first = skip_init(nn.Conv2d, c_in, r_in, 1, bias=False, **like)
    middle = skip_init(nn.Conv2d, r_in, r_out, core.shape[2:], stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, padding_mode=conv.padding_mode, bias=False, **like)
    last = skip_init(nn.Conv2d, r_out, c_out, 1, bias=conv.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(U_in.T.reshape(r_in, c_in, 1, 1))
        middle.weight.copy_(core)
        last.weight.copy_(U_out.reshape(c_out, r_out, 1, 1))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def tucker2_params(conv: nn.Conv2d, rank_in: int, rank_out: int) -> int:
    """Weights of :func:`tucker2_conv` (biases not counted): ``C_in R_in + R_in R_out kh kw + R_out C_out``."""
    c_out, c_in, kh, kw = conv.weight.shape
    return c_in * rank_in + rank_in * rank_out * kh * kw + rank_out * c_out


def tucker2_ranks_for_budget(conv: nn.Conv2d, budget: int) -> tuple[int, int]:
    """The ``(rank_in, rank_out)`` whose Tucker-2 weights fit ``budget`` and keep the most of ``W``'s energy.

    Scans every pair with :func:`tucker2_params` ``<= budget`` and keeps the one with the largest
    :math:`\\lVert\\mathcal{G}\\rVert_F^2` (the smallest HOSVD error); a tie keeps the larger ``rank_in``.
    The truncated core is a corner of the full-rank core (the HOSVD bases are nested), so one
    decomposition serves every pair.
    The rule reads only the weight, never data.

    Raises
    ------
    ValueError
        No pair fits ``budget``.

    Taught in: 03_low_rank, section 4b.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    budget = check_int("budget", budget, 1)
    c_out, c_in, kh, kw = conv.weight.shape
    full_in, full_out = min(c_in, c_out * kh * kw), min(c_out, c_in * kh * kw)
    core = tucker2_factors(conv.weight.detach().double(), full_in, full_out)[1].pow(2).sum((2, 3))
    kept = core.cumsum(0).cumsum(1)            # kept[o - 1, i - 1]: energy of the (i, o) truncated core
    best, best_energy = None, -1.0
    for r_in in range(1, full_in + 1):
        for r_out in range(1, full_out + 1):
            if tucker2_params(conv, r_in, r_out) > budget:
                break
            energy = float(kept[r_out - 1, r_in - 1])
            if energy >= best_energy - 1e-12 * max(best_energy, 1.0):
                best, best_energy = (r_in, r_out), energy
    if best is None:
        raise ValueError(f"budget must allow at least rank (1, 1) ({tucker2_params(conv, 1, 1)} weights), "
                         f"got {budget}")
    return best


def conv_scheme_rows(model: nn.Module, name: str, schemes: dict[str, nn.Module], X: Tensor, y: Tensor, *,
                     n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Each replacement of the conv ``name`` in ``model``: weights, MACs per image, error, test accuracy.

    ``schemes`` maps a label to the module that replaces the layer (e.g. :func:`factorize_conv` and
    :func:`tucker2_conv` results at equal weights). MACs are counted by ``timing.count_flops`` on one image
    (multiply-adds = FLOPs / 2) of the replaced layer's input. Each row's ``correct`` is the per-image
    correctness on ``(X, y)``, for :func:`course_lib.stats.paired_bootstrap` between two rows; ``weight error``
    is the relative Frobenius error of the effective k x k weight (1 x 1 factors folded in).

    Taught in: 03_low_rank, section 4b.
    """
    check_module("model", model)
    layer = model.get_submodule(name)
    x1 = layer_inputs(model, name, X[:1])
    W = layer.weight.detach().double()
    rows = []
    for label, new in schemes.items():
        check_module(f"schemes[{label!r}]", new)
        m = copy.deepcopy(model)
        parent_name, _, child = name.rpartition(".")
        setattr(m.get_submodule(parent_name) if parent_name else m, child, new)
        m.eval()
        eff = _effective_weight(new, W.shape)
        with torch.no_grad():
            correct = (m(X).argmax(1) == y).numpy()
        rows.append({"scheme": label, "weights": sum(p.numel() for n_, p in new.named_parameters()
                                                     if n_.endswith("weight")),
                     "MACs per image": timing.count_flops(new, x1) // 2,
                     "relative weight error": float(torch.linalg.vector_norm(W - eff) / torch.linalg.vector_norm(W)),
                     "test accuracy": float(correct.mean()), "correct": correct, "model": m})
    return rows


def _effective_weight(module: nn.Module, shape: torch.Size) -> Tensor:
    """The k x k weight a chain of bias-free-until-last convs computes (1 x 1 convs folded in), float64."""
    convs = [c for c in (module if isinstance(module, nn.Sequential) else [module])]
    W = None
    for c in convs:
        w = c.weight.detach().double()
        if W is None:
            W = w
        elif w.shape[2:] == (1, 1):
            W = torch.einsum("oc,cihw->oihw", w[:, :, 0, 0], W)
        elif W.shape[2:] == (1, 1):
            W = torch.einsum("ochw,ci->oihw", w, W[:, :, 0, 0])
        else:
            raise ValueError("only one k x k conv in the chain is supported")
    return W


def fine_tune(model: nn.Module, split, *, epochs: int, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """A copy of ``model`` trained ``epochs`` more epochs on ``split``'s training part (Adam, one thread)."""
    tuned = copy.deepcopy(model)
    if epochs > 0:
        with timing.num_threads(1):
            models.train(tuned, split.X_train, split.y_train, epochs=epochs, lr=lr, seed=seed, progress=False)
    return tuned.eval()


def runs_over_seeds(tune: Callable[[int], nn.Module], split, seeds: Sequence[int], *, progress: bool = True,
                    keep_models: bool = False) -> dict:
    r"""Run one arm of a comparison once per seed and score each model on validation and test.

    ``tune(seed)`` returns a trained model; everything random in it must come from ``seed`` (the order
    of the batches of :func:`course_lib.models.train`, an initialisation after ``set_seed``). Two arms
    run with the same seeds are then **paired**: seed ``s`` gives both the same order of batches (for
    the same training set), so the seed's own luck cancels in the per-seed difference
    :math:`d_s = \mathrm{acc}_A(s) - \mathrm{acc}_B(s)` that :func:`course_lib.stats.paired_difference`
    takes. Arms whose starting point is fixed (a factorized or pruned copy of one trained model) differ
    between seeds only through that order.

    Parameters
    ----------
    tune : callable ``int -> nn.Module``
        Builds and trains one model for a seed (e.g. ``lambda s: fine_tune(small, split, epochs=3, seed=s)``).
    split : data.Split
        Scored on ``X_val``/``y_val`` and ``X_test``/``y_test``.
    seeds : sequence of distinct ints >= 0, at least 2 (an interval needs two runs)
    progress : bool, default=True
        A tqdm bar over seeds.
    keep_models : bool, default=False
        Also return the trained models (to reuse them instead of training again).

    Returns
    -------
    dict
        ``"seed"``, ``"val"``, ``"test"``: numpy arrays of shape ``(len(seeds),)`` (accuracies), and
        ``"models"`` (a list) when ``keep_models``.

    Raises
    ------
    TypeError
        ``tune`` is not callable, a seed is not an int, or ``tune`` returns something other than a module.
    ValueError
        fewer than 2 seeds, a negative or a repeated seed.
    """
    from tqdm.auto import tqdm

    if not callable(tune):
        raise TypeError(f"tune must be a callable seed -> nn.Module, got {type(tune).__name__}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, range, np.ndarray)):
        raise TypeError(f"seeds must be a sequence of ints >= 0, got {type(seeds).__name__}")
    seeds = [check_int("seed", seed, 0) for seed in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must hold at least 2 distinct ints >= 0, got {seeds!r}")
    out: dict = {"seed": np.array(seeds), "val": [], "test": [], "models": []}
    for seed in tqdm(seeds, desc="seeds", disable=not progress, leave=False):
        model = tune(seed)
        if not isinstance(model, nn.Module):
            raise TypeError(f"tune(seed) must return an nn.Module, got {type(model).__name__}")
        out["val"].append(models.evaluate(model, split.X_val, split.y_val))
        out["test"].append(models.evaluate(model, split.X_test, split.y_test))
        if keep_models:
            out["models"].append(model)
    out["val"], out["test"] = np.array(out["val"]), np.array(out["test"])
    if not keep_models:
        del out["models"]
    return out


def fine_tune_seeds(model: nn.Module, split, *, epochs: int, seeds: Sequence[int], lr: float = 1e-3,
                    progress: bool = True, keep_models: bool = False) -> dict:
    """:func:`fine_tune` a copy of ``model`` once per seed (:func:`runs_over_seeds`): one arm, paired by seed.

    Every seed starts from the same weights (``model``: a factorized copy is deterministic, the SVD
    has no randomness), so the runs differ only in the order of the batches; ``model`` is unchanged.
    Returns ``{"seed", "val", "test"}`` (and ``"models"``) as :func:`runs_over_seeds`.
    """
    check_module("model", model)
    epochs = check_int("epochs", epochs, 0)
    check_float("lr", lr, 0.0, low_inclusive=False)
    return runs_over_seeds(lambda seed: fine_tune(model, split, epochs=epochs, lr=lr, seed=seed), split, seeds,
                           progress=progress, keep_models=keep_models)


def rank_sweep(model: nn.Module, split, fractions: Sequence[float], *, epochs: int, seeds: Sequence[int] = (0, 1),
               layers: Sequence[str] | None = None, progress: bool = True) -> list[dict]:
    """Accuracy when every layer is factorized at ``fraction`` of its full rank, before and after ``epochs``
    of fine-tuning on each seed (:func:`fine_tune_seeds`): one row per fraction and seed.

    Each row holds the fraction, the ranks, the fraction of the dense weights kept, the seed, the
    validation and test accuracy of the factorized model before fine-tuning (the same for every seed:
    the SVD is deterministic) and after it (``"val acc fine-tuned"``, ``"test acc fine-tuned"``).
    Rows with the same seed are paired across fractions, and with any other arm run on that seed.
    """
    dense = factorizable_layers(model) if layers is None else {n: model.get_submodule(n) for n in layers}
    total = sum(dense_params(m) for m in dense.values())
    rows = []
    for fraction in list(fractions):
        ranks = ranks_uniform(model, fraction, list(dense))
        small = factorize_model(model, ranks)
        before = {"val acc": models.evaluate(small, split.X_val, split.y_val),
                  "test acc": models.evaluate(small, split.X_test, split.y_test)}
        runs = fine_tune_seeds(small, split, epochs=epochs, seeds=seeds, progress=progress)
        for seed, val, test in zip(runs["seed"], runs["val"], runs["test"]):
            rows.append({"rank fraction": fraction, "ranks": ranks, "weights kept": _weights(dense, ranks) / total,
                         "seed": int(seed), **before, "val acc fine-tuned": float(val),
                         "test acc fine-tuned": float(test)})
    return rows


def speed_rows(shapes: Sequence[tuple[int, int, int, int]], *, repeats: int = 3, rounds: int = 10,
               threads: int = 1, seed: int = 0, progress: bool = True) -> list[dict]:
    """Dense ``Linear(in, out)`` against a rank-``r`` pair ``Linear(in, r) -> Linear(r, out)`` for each
    ``(batch, in, out, r)`` (random weights: the time does not depend on the values).

    Timed in interleaved rounds with :func:`course_lib.timing.compare` on ``threads`` CPU threads;
    FLOPs by :func:`course_lib.timing.count_flops`. ``speedup`` is dense median / factorized median, with
    the 95 % interval of :func:`course_lib.timing.speedup` (a bootstrap over the paired rounds) in
    ``95% low`` and ``95% high``.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for batch, n_in, n_out, rank in tqdm(list(shapes), desc="layer sizes", disable=not progress):
        dense = skip_init(nn.Linear, n_in, n_out).eval()
        small = nn.Sequential(skip_init(nn.Linear, n_in, rank, bias=False), skip_init(nn.Linear, rank, n_out)).eval()
        with torch.no_grad():                      # the values do not change the time; no SVD of a big matrix
            for p in [*dense.parameters(), *small.parameters()]:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        x = torch.randn(batch, n_in, generator=gen)
        runs = timing.compare({"dense": lambda: dense(x), "factorized": lambda: small(x)}, repeats=repeats,
                              rounds=rounds, threads=threads)
        flops = timing.count_flops(dense, x) / timing.count_flops(small, x)
        interval = timing.speedup(runs["dense"], runs["factorized"])      # bootstrap over the paired rounds
        rows.append({"batch": batch, "in": n_in, "out": n_out, "rank": rank, "FLOP ratio": flops,
                     "dense (ms)": runs["dense"].median, "factorized (ms)": runs["factorized"].median,
                     "speedup": runs["dense"].median / runs["factorized"].median,
                     "95% low": interval.low, "95% high": interval.high, "threads": threads})
    return rows


# =========================================================================== plots
def plot_spectra(spectra: dict[str, Tensor], title: str = "singular values"):
    """Normalized singular values ``s_i / s_1`` against ``i / n`` for each named spectrum (log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, s in spectra.items():
        s = s.double()
        ax.semilogy(np.arange(1, s.numel() + 1) / s.numel(), (s / s[0]).numpy(), label=name)
    ax.set_xlabel("index i / n (fraction of the full rank)")
    ax.set_ylabel("s_i / s_1")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def plot_speed(rows: Sequence[dict], title: str = "factorized vs dense Linear (CPU)"):
    """Measured speedup against the FLOP ratio, one point per layer size; the diagonal is 'speedup = FLOP ratio'."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    flops = [r["FLOP ratio"] for r in rows]
    ax.loglog(flops, [r["speedup"] for r in rows], "o")
    for r in rows:
        ax.annotate(f"{r['in']}x{r['out']} r={r['rank']} b={r['batch']}", (r["FLOP ratio"], r["speedup"]), fontsize=7)
    lim = [min(min(flops), 0.3), max(flops) * 2]
    ax.plot(lim, lim, "k--", lw=0.8, label="speedup = FLOP ratio")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("FLOP ratio (dense / factorized)")
    ax.set_ylabel("measured speedup (x)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def plot_reconstruction(weight: Tensor, rank: int, title: str = ""):
    """``weight``, its rank-``rank`` reconstruction and the difference, side by side (one color scale)."""
    import matplotlib.pyplot as plt

    w = as_matrix(weight).double()
    A, B = low_rank_factors(w, rank)
    approx = A @ B
    lim = float(w.abs().max())
    fig, axes = plt.subplots(1, 3, figsize=(9.8, 3))
    for ax, (name, m) in zip(axes, [("W", w), (f"rank {rank}", approx), ("W - approx", w - approx)]):
        shown = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"relative error {frobenius_error(w, approx) / float(torch.linalg.matrix_norm(w)):.3f}")
    fig.tight_layout()
    fig.colorbar(shown, ax=list(axes), shrink=0.85, label="value (one scale)")
    return fig, axes
