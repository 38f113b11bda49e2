"""Chapter 03's graders accept the reference and correct variants, and reject the stub and the wrong answers
learners write (each caught by a valid-input case, on every seed)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import lowrank
from grader_contract import contract_tests, grade

SEEDS = list(range(10))


# ----------------------------------------------------------------------------- shared pieces of wrong answers
def _svd(weight):
    return torch.linalg.svd(weight.detach().double(), full_matrices=False)   # U (m, k), S (k,), Vh (k, n)


def _check(weight, rank):
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TypeError("rank must be an int")
    if weight.dim() != 2 or not weight.is_floating_point() or not 1 <= rank <= min(weight.shape):
        raise ValueError("bad weight or rank")


# ----------------------------------------------------------------------------- low_rank_factors
def factors_without_singular_values(weight, rank):           # A = U_r, B = Vh_r: S forgotten
    _check(weight, rank)
    U, S, Vh = _svd(weight)
    return U[:, :rank].to(weight.dtype), Vh[:rank].to(weight.dtype)


def factors_smallest_values(weight, rank):                   # keeps the last r (ascending thinking)
    _check(weight, rank)
    U, S, Vh = _svd(weight)
    return (U[:, -rank:] * S[-rank:]).to(weight.dtype), Vh[-rank:].to(weight.dtype)


def factors_torch_svd_v_rows(weight, rank):                  # torch.svd returns V, not V^T: rows of V sliced
    _check(weight, rank)
    U, S, V = torch.svd(weight.detach().double())            # V (n, k)
    return (U[:, :rank] * S[:rank]).to(weight.dtype), V[:rank, :].to(weight.dtype)


def factors_singular_values_twice(weight, rank):             # S on both sides instead of sqrt(S)
    _check(weight, rank)
    U, S, Vh = _svd(weight)
    return (U[:, :rank] * S[:rank]).to(weight.dtype), (S[:rank, None] * Vh[:rank]).to(weight.dtype)


def factors_float64_kept(weight, rank):                      # right values, float64 returned for float32
    _check(weight, rank)
    U, S, Vh = _svd(weight)
    return U[:, :rank] * S[:rank], Vh[:rank]


# ----------------------------------------------------------------------------- rank_for_energy
def _energy_args(singular_values, energy):
    s = singular_values.detach()
    if s.dim() != 1 or not 0 < energy <= 1 or (s < 0).any() or (s[1:] > s[:-1]).any():
        raise ValueError("bad input")
    return s


def energy_of_values_not_squares(singular_values, energy=0.9):
    c = torch.cumsum(_energy_args(singular_values, energy).double(), 0)
    return int((c < energy * c[-1]).sum()) + 1


def energy_strictly_above(singular_values, energy=0.9):      # '>' instead of '>='
    c = torch.cumsum(_energy_args(singular_values, energy).double() ** 2, 0)
    return int((c <= energy * c[-1]).sum()) + 1


def energy_zero_based(singular_values, energy=0.9):          # the index, not the count
    c = torch.cumsum(_energy_args(singular_values, energy).double() ** 2, 0)
    return int((c < energy * c[-1]).sum())


def energy_in_float32(singular_values, energy=0.9):          # sums in the input's float32
    s = _energy_args(singular_values, energy).float()
    c = torch.cumsum(s**2, 0)
    return int((c < energy * c[-1]).sum()) + 1


def energy_returns_tensor(singular_values, energy=0.9):
    c = torch.cumsum(_energy_args(singular_values, energy).double() ** 2, 0)
    return (c < energy * c[-1]).sum() + 1


# ----------------------------------------------------------------------------- factorize_linear
def _two_linears(linear, rank, A, B, first_bias=False, second_bias=None, dtype=None):
    dtype = dtype or linear.weight.dtype
    second_bias = linear.bias is not None if second_bias is None else second_bias
    first = nn.Linear(linear.in_features, rank, bias=first_bias, dtype=dtype)
    second = nn.Linear(rank, linear.out_features, bias=second_bias, dtype=dtype)
    with torch.no_grad():
        first.weight.copy_(B)
        second.weight.copy_(A)
        if first_bias:
            first.bias.zero_()
        if second_bias and linear.bias is not None:
            second.bias.copy_(linear.bias)
        elif second_bias:
            second.bias.zero_()
    return nn.Sequential(first, second)


def _linear_args(linear, rank):
    if not isinstance(linear, nn.Linear):
        raise TypeError("linear must be an nn.Linear")
    _check(linear.weight, rank)


def linear_bias_on_both(linear, rank):                       # Linear(in, r) keeps its default bias
    _linear_args(linear, rank)
    A, B = lowrank.low_rank_factors(linear.weight, rank)
    return _two_linears(linear, rank, A, B, first_bias=True)


def linear_bias_always(linear, rank):                        # a zero bias added where the original had none
    _linear_args(linear, rank)
    A, B = lowrank.low_rank_factors(linear.weight, rank)
    return _two_linears(linear, rank, A, B, second_bias=True)


def linear_without_singular_values(linear, rank):
    _linear_args(linear, rank)
    A, B = factors_without_singular_values(linear.weight, rank)
    return _two_linears(linear, rank, A, B)


def linear_in_float32(linear, rank):                         # new layers at the default dtype
    _linear_args(linear, rank)
    A, B = lowrank.low_rank_factors(linear.weight, rank)
    return _two_linears(linear, rank, A.float(), B.float(), dtype=torch.float32)


def linear_modifies_input(linear, rank):                     # reuses the original layer as the second one
    _linear_args(linear, rank)
    A, B = lowrank.low_rank_factors(linear.weight, rank)
    first = nn.Linear(linear.in_features, rank, bias=False, dtype=linear.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(B)
    linear.weight = nn.Parameter(A.clone())
    linear.in_features = rank
    return nn.Sequential(first, linear)


def linear_factors_swapped(linear, rank):                    # B^T / A^T in the wrong layers (square only shapes)
    _linear_args(linear, rank)
    U, S, Vh = _svd(linear.weight)
    A = (U[:, :rank] * S[:rank].sqrt()).to(linear.weight.dtype)
    B = (S[:rank, None].sqrt() * Vh[:rank]).to(linear.weight.dtype)
    return _two_linears(linear, rank, A @ torch.eye(rank, dtype=A.dtype).flip(0), B)   # columns reversed


# ----------------------------------------------------------------------------- factorize_conv
def _conv_args(conv, rank):
    if not isinstance(conv, nn.Conv2d):
        raise TypeError("conv must be an nn.Conv2d")
    if conv.groups != 1:
        raise ValueError("groups")
    _check(conv.weight.reshape(conv.out_channels, -1), rank)


def _two_convs(conv, rank, A, B, *, first_kwargs=None, second_kwargs=None, first_bias=False):
    c_out, c_in, kh, kw = conv.weight.shape
    like = dict(dtype=conv.weight.dtype)
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, padding_mode=conv.padding_mode)
    kwargs.update(first_kwargs or {})
    first = nn.Conv2d(c_in, rank, (kh, kw), bias=first_bias, **kwargs, **like)
    second = nn.Conv2d(rank, c_out, 1, bias=conv.bias is not None, **(second_kwargs or {}), **like)
    with torch.no_grad():
        first.weight.copy_(B.reshape(rank, c_in, kh, kw))
        second.weight.copy_(A.reshape(c_out, rank, 1, 1))
        if first_bias:
            first.bias.zero_()
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def conv_default_settings(conv, rank):                       # stride/padding/dilation/mode not copied
    _conv_args(conv, rank)
    A, B = lowrank.low_rank_factors(conv.weight.reshape(conv.out_channels, -1), rank)
    return _two_convs(conv, rank, A, B, first_kwargs=dict(stride=1, padding=0, dilation=1, padding_mode="zeros"))


def conv_settings_on_both(conv, rank):                       # the 1x1 conv also gets stride and padding
    _conv_args(conv, rank)
    A, B = lowrank.low_rank_factors(conv.weight.reshape(conv.out_channels, -1), rank)
    return _two_convs(conv, rank, A, B, second_kwargs=dict(stride=conv.stride, padding=conv.padding))


def conv_channels_last_reshape(conv, rank):                  # flattens (kh, kw, C_in), refolds as (C_in, kh, kw)
    _conv_args(conv, rank)
    A, B = lowrank.low_rank_factors(conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1), rank)
    return _two_convs(conv, rank, A, B)


def conv_bias_on_first(conv, rank):
    _conv_args(conv, rank)
    A, B = lowrank.low_rank_factors(conv.weight.reshape(conv.out_channels, -1), rank)
    return _two_convs(conv, rank, A, B, first_bias=True)


def conv_square_kernel(conv, rank):                          # kernel_size[0] used for both sides
    _conv_args(conv, rank)
    k = conv.kernel_size[0]
    A, B = lowrank.low_rank_factors(conv.weight.reshape(conv.out_channels, -1), rank)
    if conv.kernel_size[1] != k:                             # what a square-kernel version computes there
        B = torch.zeros(rank, conv.in_channels * k * k, dtype=B.dtype)
    first = nn.Conv2d(conv.in_channels, rank, k, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                      padding_mode=conv.padding_mode, bias=False, dtype=conv.weight.dtype)
    second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None, dtype=conv.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(B.reshape(rank, conv.in_channels, k, k))
        second.weight.copy_(A.reshape(conv.out_channels, rank, 1, 1))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def conv_without_singular_values(conv, rank):
    _conv_args(conv, rank)
    A, B = factors_without_singular_values(conv.weight.reshape(conv.out_channels, -1), rank)
    return _two_convs(conv, rank, A, B)


# ----------------------------------------------------------------------------- break_even_rank
def _sizes(in_features, out_features):
    for v in (in_features, out_features):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError("sizes must be ints")
        if v < 1:
            raise ValueError("sizes must be positive")
    return in_features, out_features


def break_even_not_strict(in_features, out_features):        # r (in + out) <= in * out
    a, b = _sizes(in_features, out_features)
    return a * b // (a + b)


def break_even_rounded(in_features, out_features):
    a, b = _sizes(in_features, out_features)
    return round(a * b / (a + b))


def break_even_half_the_smaller(in_features, out_features):  # the rule of thumb "min(in, out) / 2"
    a, b = _sizes(in_features, out_features)
    return min(a, b) // 2


def break_even_bias_counted_in_first(in_features, out_features):   # r (in + out + 1) < in * out
    a, b = _sizes(in_features, out_features)
    return (a * b - 1) // (a + b + 1)


def break_even_as_float(in_features, out_features):
    a, b = _sizes(in_features, out_features)
    return float(np.floor((a * b - 1) / (a + b)))


WRONG = {
    "low_rank_factors": [factors_without_singular_values, factors_smallest_values, factors_torch_svd_v_rows,
                         factors_singular_values_twice, factors_float64_kept],
    "rank_for_energy": [energy_of_values_not_squares, energy_strictly_above, energy_zero_based, energy_in_float32,
                        energy_returns_tensor],
    "factorize_linear": [linear_bias_on_both, linear_bias_always, linear_without_singular_values, linear_in_float32,
                         linear_modifies_input, linear_factors_swapped],
    "factorize_conv": [conv_default_settings, conv_settings_on_both, conv_channels_last_reshape, conv_bias_on_first,
                       conv_square_kernel, conv_without_singular_values],
    "break_even_rank": [break_even_not_strict, break_even_rounded, break_even_half_the_smaller,
                        break_even_bias_counted_in_first, break_even_as_float],
}



# ----------------------------------------------------------------------------- independent correct versions
def lstsq_free_factors(weight, rank):
    """Eigen-decomposition of W^T W instead of an SVD; all the singular values on A's side."""
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TypeError("rank")
    if weight.dim() != 2 or not weight.is_floating_point() or not 1 <= rank <= min(weight.shape):
        raise ValueError("weight/rank")
    W = weight.detach().double()
    _, V = torch.linalg.eigh(W.T @ W)                       # ascending eigenvalues
    Vr = V[:, -rank:].flip(1)                               # (in, r): top right singular vectors
    return (W @ Vr).to(weight.dtype), Vr.T.contiguous().to(weight.dtype)


def energy_by_loop(singular_values, energy=0.9):
    values = singular_values.double().tolist()
    if not 0 < energy <= 1 or any(b > a for a, b in zip(values, values[1:])) or min(values) < 0:
        raise ValueError("bad input")
    s = [v * v for v in values]
    total, running = math.fsum(s), 0.0
    for r, v in enumerate(s, start=1):
        running += v
        if running >= energy * total:
            return r
    return len(s)


def factorize_linear_other_split(linear, rank):
    if not isinstance(linear, nn.Linear):
        raise TypeError("linear")
    U, S, Vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TypeError("rank")
    if not 1 <= rank <= S.numel():
        raise ValueError("rank")
    first = nn.Linear(linear.in_features, rank, bias=False, dtype=linear.weight.dtype)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, dtype=linear.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(Vh[:rank])                        # all of S on the second layer
        second.weight.copy_(U[:, :rank] * S[:rank])
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second)


def factorize_conv_via_unfold_order(conv, rank):
    if not isinstance(conv, nn.Conv2d):
        raise TypeError("conv")
    if conv.groups != 1:
        raise ValueError("groups")
    c_out, c_in, kh, kw = conv.weight.shape
    M = conv.weight.detach().double().flatten(1)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TypeError("rank")
    if not 1 <= rank <= S.numel():
        raise ValueError("rank")
    first = nn.Conv2d(c_in, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False,
                      padding_mode=conv.padding_mode, dtype=conv.weight.dtype)
    second = nn.Conv2d(rank, c_out, (1, 1), bias=conv.bias is not None, dtype=conv.weight.dtype)
    with torch.no_grad():
        first.weight.copy_((S[:rank, None] * Vh[:rank]).view(rank, c_in, kh, kw))
        second.weight.copy_(U[:, :rank, None, None])
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def break_even_by_search(in_features, out_features):
    if not isinstance(in_features, int) or not isinstance(out_features, int) or isinstance(in_features, bool) \
            or isinstance(out_features, bool):
        raise TypeError("ints")
    if in_features < 1 or out_features < 1:
        raise ValueError("positive")
    r = 0
    while (r + 1) * (in_features + out_features) < in_features * out_features:
        r += 1
    return r


INDEPENDENT = {"low_rank_factors": lstsq_free_factors, "rank_for_energy": energy_by_loop,
               "factorize_linear": factorize_linear_other_split, "factorize_conv": factorize_conv_via_unfold_order,
               "break_even_rank": break_even_by_search}

(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = \
    contract_tests(WRONG, INDEPENDENT, seeds=SEEDS, independent_seeds=[3, 7])


def test_low_rank_factors_grader_accepts_either_choice_at_a_tie():
    """diag(3, 2, 2, 1) at rank 2: keeping either of the tied directions is a best approximation."""
    def other_tie(weight, rank):
        A, B = lowrank.low_rank_factors(weight, rank)
        w = weight.detach().double()
        if w.shape == (4, 4) and torch.equal(w, torch.diag(torch.tensor([3.0, 2, 2, 1], dtype=torch.float64))):
            A = torch.zeros(4, 2, dtype=weight.dtype)
            B = torch.zeros(2, 4, dtype=weight.dtype)
            A[0, 0], B[0, 0], A[2, 1], B[1, 2] = 3.0, 1.0, 2.0, 1.0      # keeps index 2, not 1
        return A, B

    passed, message = grade("low_rank_factors", other_tie, 0)
    assert passed, message
