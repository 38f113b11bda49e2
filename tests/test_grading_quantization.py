"""Chapter 02's graders accept the reference and reject the stub and the wrong answers learners write."""
import math

import numpy as np
import pytest
import torch

from course_lib.grader import grading
from course_lib import quantization as Q
from grader_contract import SEEDS, grades_the_idea, contract_tests, grade, stub







def _bits(num_bits):
    if not 2 <= num_bits <= 16:
        raise ValueError("num_bits must be in [2, 16]")


def _x_ok(x):
    if x.numel() == 0:
        raise ValueError("x must be non-empty")


# ----------------------------------------------------------------------------- minmax_qparams
def _minmax(x, num_bits, symmetric, *, include_zero=True, denom=None, rnd=round, eps=Q.EPS, flip=False):
    _bits(num_bits)
    _x_ok(x)
    lo, hi = float(x.min()), float(x.max())
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        return max(max(-lo, hi) / (denom or (2 ** num_bits - 1) / 2), eps), 0
    scale = max((hi - lo) / (denom or 2 ** num_bits - 1), eps)
    zp = rnd(lo / scale) if flip else -rnd(lo / scale)
    return scale, int(min(max(zp, 0), 2 ** num_bits - 1))


def mm_half_up(x, num_bits=8, symmetric=False):                   # the C idiom int(v + 0.5)
    _bits(num_bits)
    _x_ok(x)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max((hi - lo) / (2 ** num_bits - 1), Q.EPS)
    return (max(hi, -lo) / ((2 ** num_bits - 1) / 2), 0) if symmetric else (scale, int(-lo / scale + 0.5))


def mm_floor(x, num_bits=8, symmetric=False):
    return _minmax(x, num_bits, symmetric, rnd=math.floor)


def mm_trunc(x, num_bits=8, symmetric=False):
    return _minmax(x, num_bits, symmetric, rnd=int)


def mm_range_without_zero(x, num_bits=8, symmetric=False):
    return _minmax(x, num_bits, symmetric, include_zero=False)


def mm_two_to_the_b(x, num_bits=8, symmetric=False):
    return _minmax(x, num_bits, symmetric, denom=2 ** num_bits if not symmetric else 2 ** (num_bits - 1))


def mm_narrow_symmetric(x, num_bits=8, symmetric=False):        # max|x| / 127, the "restricted range"
    return _minmax(x, num_bits, symmetric, denom=None if not symmetric else 2 ** (num_bits - 1) - 1)


def mm_zero_point_sign_flipped(x, num_bits=8, symmetric=False):
    return _minmax(x, num_bits, symmetric, flip=True)


def mm_no_eps(x, num_bits=8, symmetric=False):
    return _minmax(x, num_bits, symmetric, eps=0.0)


def mm_returns_tensors(x, num_bits=8, symmetric=False):
    s, z = Q.minmax_qparams(x, num_bits, symmetric)
    return torch.tensor([s]), torch.tensor([z])


# ----------------------------------------------------------------------------- quantize_affine
def _range(num_bits, signed):
    _bits(num_bits)
    return (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if signed else (0, 2 ** num_bits - 1)


def _qcheck(scale, zero_point, qmin, qmax):
    if not (math.isfinite(scale) and scale > 0) or not qmin <= zero_point <= qmax:
        raise ValueError("bad scale or zero_point")


def q_half_up(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = _range(num_bits, signed)
    _qcheck(scale, zero_point, qmin, qmax)
    return (torch.floor(x / scale + 0.5) + zero_point).clamp(qmin, qmax).long()


def q_trunc(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = _range(num_bits, signed)
    _qcheck(scale, zero_point, qmin, qmax)
    return ((x / scale).clamp(-1e9, 1e9).long() + zero_point).clamp(qmin, qmax)


def q_no_clamp(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = _range(num_bits, signed)
    _qcheck(scale, zero_point, qmin, qmax)
    return (torch.round(x / scale) + zero_point).clamp(-1e9, 1e9).long()


def q_zero_point_subtracted(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = _range(num_bits, signed)
    _qcheck(scale, zero_point, qmin, qmax)
    return (torch.round(x / scale) - zero_point).clamp(qmin, qmax).long()


def q_float_codes(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = _range(num_bits, signed)
    _qcheck(scale, zero_point, qmin, qmax)
    return (torch.round(x / scale) + zero_point).clamp(qmin, qmax)


def q_always_unsigned(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = _range(num_bits, False)
    if not scale > 0:
        raise ValueError("bad scale")
    return (torch.round(x / scale) + zero_point).clamp(qmin, qmax).long()


def q_zero_point_before_rounding(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if signed else (0, 2 ** num_bits - 1)
    return torch.clamp(torch.round(x / scale + zero_point), qmin, qmax).to(torch.int64)


def q_no_validation(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = _range(num_bits, signed)
    return torch.nan_to_num(torch.round(x / scale) + zero_point).clamp(qmin, qmax).long()


# ----------------------------------------------------------------------------- dequantize_affine
def _dcheck(scale):
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError("bad scale")


def dq_uint8_wraps(q, scale, zero_point):
    _dcheck(scale)
    return (q - zero_point).float() * scale


def dq_plus_zero_point(q, scale, zero_point):
    _dcheck(scale)
    return (q.long() + zero_point).float() * scale


def dq_float64(q, scale, zero_point):
    _dcheck(scale)
    return (q.double() - zero_point) * scale


def dq_scale_before_shift(q, scale, zero_point):
    _dcheck(scale)
    return q.float() * scale - zero_point


def dq_no_validation(q, scale, zero_point):
    return (q.long() - zero_point).float() * scale


# ----------------------------------------------------------------------------- per_channel_qparams
def _pc(w, axis, num_bits, symmetric, *, reduce_axis=False, eps=Q.EPS, include_zero=True, denom=None,
        per_tensor=False, zp_dtype=torch.int64):
    _bits(num_bits)
    if not -w.ndim <= axis < w.ndim:
        raise ValueError("bad axis")
    rows = w.movedim(axis, 0).reshape(w.shape[axis], -1)
    if per_tensor:
        rows = rows.reshape(1, -1).expand(w.shape[axis], -1)
    if reduce_axis:                                      # min/max over the channel axis instead
        rows = w.movedim(axis, -1).reshape(-1, w.shape[axis])
    lo, hi = rows.amin(1), rows.amax(1)
    if include_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        s = torch.maximum(-lo, hi) / (denom or (2 ** num_bits - 1) / 2)
        return s.clamp(min=eps), torch.zeros(len(s), dtype=zp_dtype)
    s = ((hi - lo) / (2 ** num_bits - 1)).clamp(min=eps)
    return s, (-torch.round(lo / s)).clamp(0, 2 ** num_bits - 1).to(zp_dtype)


def pc_reduces_over_axis(w, axis=0, num_bits=8, symmetric=True):
    return _pc(w, axis, num_bits, symmetric, reduce_axis=True)


def pc_no_eps(w, axis=0, num_bits=8, symmetric=True):
    return _pc(w, axis, num_bits, symmetric, eps=0.0)


def pc_per_tensor(w, axis=0, num_bits=8, symmetric=True):
    return _pc(w, axis, num_bits, symmetric, per_tensor=True)


def pc_range_without_zero(w, axis=0, num_bits=8, symmetric=True):
    return _pc(w, axis, num_bits, symmetric, include_zero=False)


def pc_two_to_the_b_minus_1(w, axis=0, num_bits=8, symmetric=True):
    return _pc(w, axis, num_bits, symmetric, denom=2 ** (num_bits - 1))


def pc_int32_zero_points(w, axis=0, num_bits=8, symmetric=True):     # what torch's affine observer returns
    return _pc(w, axis, num_bits, symmetric, zp_dtype=torch.int32)


# ----------------------------------------------------------------------------- fake_quantize
def _fq_parts(x, scale, zero_point, num_bits):
    qmin, qmax = _range(num_bits, False)
    _qcheck(scale, zero_point, qmin, qmax)
    code = torch.round(x / scale) + zero_point
    return code, qmin, qmax, (code.clamp(qmin, qmax) - zero_point) * scale


def fq_gradient_everywhere(x, scale, zero_point, num_bits=8):       # STE without the clamp's zero gradient
    _, _, _, x_hat = _fq_parts(x, scale, zero_point, num_bits)
    return x + (x_hat - x).detach()


def fq_no_ste(x, scale, zero_point, num_bits=8):                    # round's gradient is 0 everywhere
    return _fq_parts(x, scale, zero_point, num_bits)[3]


def fq_mask_on_the_real_range(x, scale, zero_point, num_bits=8):
    _, qmin, qmax, x_hat = _fq_parts(x, scale, zero_point, num_bits)
    inside = (x >= scale * (qmin - zero_point)) & (x <= scale * (qmax - zero_point))
    return x_hat.detach() + (x - x.detach()) * inside


def fq_mask_strict(x, scale, zero_point, num_bits=8):
    code, qmin, qmax, x_hat = _fq_parts(x, scale, zero_point, num_bits)
    return x_hat.detach() + (x - x.detach()) * ((code > qmin) & (code < qmax))


def fq_no_clamp(x, scale, zero_point, num_bits=8):
    code, qmin, qmax, _ = _fq_parts(x, scale, zero_point, num_bits)
    return ((code - zero_point) * scale).detach() + (x - x.detach()) * ((code >= qmin) & (code <= qmax))


def fq_numpy(x, scale, zero_point, num_bits=8):
    code, _, _, x_hat = _fq_parts(x.detach(), scale, zero_point, num_bits)
    return torch.from_numpy(x_hat.numpy().copy())


def fq_no_grad(x, scale, zero_point, num_bits=8):
    with torch.no_grad():
        return Q.fake_quantize(x, scale, zero_point, num_bits)


# ----------------------------------------------------------------------------- binarize
def _bcheck(w):
    if w.ndim < 2 or w.numel() == 0:
        raise ValueError("w must have at least 2 dims")


def bz_torch_sign(w):
    _bcheck(w)
    return w.abs().mean(dim=tuple(range(1, w.ndim)), keepdim=True), torch.sign(w)


def bz_alpha_last_dim(w):
    _bcheck(w)
    return w.abs().mean(dim=-1, keepdim=True), torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def bz_alpha_scalar(w):
    _bcheck(w)
    return w.abs().mean(), torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def bz_alpha_flat(w):
    _bcheck(w)
    return w.abs().flatten(1).mean(1), torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def bz_alpha_max(w):
    _bcheck(w)
    return w.abs().flatten(1).amax(1).view(-1, *[1] * (w.ndim - 1)), torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def bz_bool_signs(w):
    _bcheck(w)
    return w.abs().mean(dim=tuple(range(1, w.ndim)), keepdim=True), w >= 0


def bz_float32_always(w):
    _bcheck(w)
    return w.abs().mean(dim=tuple(range(1, w.ndim)), keepdim=True).float(), torch.where(w >= 0, 1.0, -1.0)


# ----------------------------------------------------------------------------- int8_linear
def _i8(q_x, x_zp, q_w, w_scale, x_scale, bias, y_scale, y_zp, *, cross=True, out_zp=True, bias_scaled=True,
        clamp=True, per_channel=True, with_x_scale=True, axis_n=False, dtype=torch.int8):
    if q_x.dtype != torch.int8 or q_w.dtype != torch.int8:
        raise TypeError("q_x and q_w must be int8")
    if q_x.shape[1] != q_w.shape[1]:
        raise ValueError("K mismatch")
    s_w = torch.as_tensor(w_scale, dtype=torch.float64).expand(q_w.shape[0])
    if not per_channel:
        s_w = s_w.mean().expand(q_w.shape[0])
    acc = q_x.long() @ q_w.long().T - (x_zp * q_w.long().sum(1) if cross else 0)
    if bias is not None:
        acc = acc + (torch.round(bias.double() / (x_scale * s_w)).long() if bias_scaled else bias.double())
    M = (x_scale if with_x_scale else 1.0) * s_w / y_scale
    if axis_n:
        M = M.view(-1, 1)
    y = torch.round(M * acc) + (y_zp if out_zp else 0)
    return (y.clamp(-128, 127) if clamp else y).to(torch.int64).to(torch.int8).to(dtype)


def i8_no_cross_term(*a):
    return _i8(*a, cross=False)


def i8_no_output_zero_point(*a):
    return _i8(*a, out_zp=False)


def i8_bias_not_rescaled(*a):
    return _i8(*a, bias_scaled=False)


def i8_wraps_instead_of_saturating(*a):
    return _i8(*a, clamp=False)


def i8_one_scale_for_all_channels(*a):
    return _i8(*a, per_channel=False)


def i8_multiplier_without_x_scale(*a):
    return _i8(*a, with_x_scale=False)


def i8_scales_along_rows(*a):
    return _i8(*a, axis_n=True)


def i8_returns_int32(*a):
    return _i8(*a, dtype=torch.int32)


# ----------------------------------------------------------------------------- kmeans_quantize
def _km(w, bits, iters, *, init="linear", upper_ties=False, final_assign=True, extra=0, drop_empty=False):
    if w.numel() == 0 or bits < 1 or iters < 0:
        raise ValueError("bad w, bits or iters")
    x = w.detach().double().flatten()
    k = 2 ** bits
    if init == "linear":
        c = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    elif init == "symmetric":                                    # [-max|w|, max|w|]
        c = torch.linspace(-float(x.abs().max()), float(x.abs().max()), k, dtype=torch.float64)
    else:                                                        # density init: quantiles
        c = torch.quantile(x, torch.linspace(0, 1, k, dtype=torch.float64))

    def assign(c):
        d = (x[:, None] - c[None, :]).abs()
        return (d.shape[1] - 1 - d.flip(1).argmin(1)) if upper_ties else d.argmin(1)

    idx = assign(c)
    for _ in range(iters + extra):
        idx = assign(c)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, x)
        counts = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, torch.ones_like(x))
        c = sums / counts if drop_empty else torch.where(counts > 0, sums / counts.clamp(min=1), c)
    if final_assign:
        idx = assign(c)
    return idx.view(w.shape), c.float()


def km_ties_to_upper(w, bits, iters):
    return _km(w, bits, iters, upper_ties=True)


def km_symmetric_init(w, bits, iters):
    return _km(w, bits, iters, init="symmetric")


def km_quantile_init(w, bits, iters):
    return _km(w, bits, iters, init="quantile")


def km_no_final_assignment(w, bits, iters):
    return _km(w, bits, iters, final_assign=False)


def km_one_round_too_many(w, bits, iters):
    return _km(w, bits, iters, extra=1)


def km_empty_cluster_nan(w, bits, iters):
    return _km(w, bits, iters, drop_empty=True)


def km_float_index(w, bits, iters):
    idx, c = Q.kmeans_quantize(w, bits, iters)
    return idx.float(), c


WRONG = {
    "minmax_qparams": [mm_half_up, mm_floor, mm_trunc, mm_range_without_zero, mm_two_to_the_b,
                       mm_narrow_symmetric, mm_zero_point_sign_flipped, mm_no_eps, mm_returns_tensors],
    "quantize_affine": [q_half_up, q_trunc, q_no_clamp, q_zero_point_subtracted, q_float_codes, q_always_unsigned,
                        q_zero_point_before_rounding],
    "dequantize_affine": [dq_uint8_wraps, dq_plus_zero_point, dq_float64, dq_scale_before_shift],
    "per_channel_qparams": [pc_reduces_over_axis, pc_no_eps, pc_per_tensor, pc_range_without_zero,
                            pc_two_to_the_b_minus_1, pc_int32_zero_points],
    "fake_quantize": [fq_gradient_everywhere, fq_no_ste, fq_mask_on_the_real_range, fq_mask_strict, fq_no_clamp,
                      fq_numpy, fq_no_grad],
    "binarize": [bz_torch_sign, bz_alpha_last_dim, bz_alpha_scalar, bz_alpha_flat, bz_alpha_max, bz_bool_signs,
                 bz_float32_always],
    "int8_linear": [i8_no_cross_term, i8_no_output_zero_point, i8_bias_not_rescaled, i8_wraps_instead_of_saturating,
                    i8_one_scale_for_all_channels, i8_multiplier_without_x_scale, i8_scales_along_rows,
                    i8_returns_int32],
    "kmeans_quantize": [km_ties_to_upper, km_symmetric_init, km_quantile_init, km_no_final_assignment,
                        km_one_round_too_many, km_empty_cluster_nan, km_float_index],
}




# ----------------------------------------------------------------------------- independent correct versions
def minmax_numpy(x, num_bits=8, symmetric=False):
    a = x.numpy().astype(np.float64)
    if a.size == 0 or not 2 <= num_bits <= 16:
        raise ValueError("x must be non-empty and num_bits in [2, 16]")
    lo, hi = min(a.min(), 0.0), max(a.max(), 0.0)
    if symmetric:
        return float(max(max(-lo, hi) * 2 / (2 ** num_bits - 1), 2.0 ** -23)), 0
    scale = max((hi - lo) / (2 ** num_bits - 1), 2.0 ** -23)
    return float(scale), int(np.clip(-np.rint(lo / scale), 0, 2 ** num_bits - 1))


def quantize_numpy(x, scale, zero_point, num_bits=8, signed=False):
    qmin, qmax = (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if signed else (0, 2 ** num_bits - 1)
    if not 2 <= num_bits <= 16 or not scale > 0 or not math.isfinite(scale) or not qmin <= zero_point <= qmax:
        raise ValueError("invalid num_bits, scale or zero_point")
    codes = np.clip(np.rint(x.numpy().astype(np.float64) / scale) + zero_point, qmin, qmax)
    return torch.from_numpy(codes.astype(np.int64))


def dequantize_numpy(q, scale, zero_point):
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError("scale must be a finite positive float")
    return torch.from_numpy(((q.numpy().astype(np.int64) - zero_point) * scale).astype(np.float32))


def per_channel_loop(w, axis=0, num_bits=8, symmetric=True):
    if not -w.ndim <= axis < w.ndim:
        raise ValueError("axis out of range")
    pairs = [minmax_numpy(w.select(axis, c).contiguous(), num_bits, symmetric) for c in range(w.shape[axis])]
    return (torch.tensor([s for s, _ in pairs], dtype=torch.float32),
            torch.tensor([z for _, z in pairs], dtype=torch.int64))


def fake_quantize_where(x, scale, zero_point, num_bits=8):
    qmax = 2 ** num_bits - 1
    if not 2 <= num_bits <= 16 or not scale > 0 or not 0 <= zero_point <= qmax:
        raise ValueError("invalid num_bits, scale or zero_point")
    code = torch.round(x.detach() / scale) + zero_point
    x_hat = (code.clamp(0, qmax) - zero_point) * scale
    keep = (code >= 0) & (code <= qmax)
    return x_hat + torch.where(keep, x - x.detach(), torch.zeros_like(x))   # value x_hat, gradient 1 inside


def binarize_reshape(w):
    if w.dim() < 2 or w.numel() == 0:
        raise ValueError("w needs 2 dims")
    alpha = w.abs().reshape(w.shape[0], -1).mean(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
    return alpha, torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))


def int8_linear_float_path(q_x, x_zp, q_w, w_scale, x_scale, bias, y_scale, y_zp):
    """Dequantize, multiply in float32, requantize: the float path the integer one must match within a code."""
    x = x_scale * (q_x.float() - x_zp)                                   # (N, K)
    w = torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1, 1) * q_w.float()   # (C, K)
    y = x @ w.T + (bias if bias is not None else 0.0)
    return (torch.round(y / y_scale) + y_zp).clamp(-128, 127).to(torch.int8)



def kmeans_numpy(w, bits, iters):
    """Lloyd's algorithm written out in numpy float32 with explicit distances (ties: argmin takes the first)."""
    x = w.detach().numpy().astype(np.float32).ravel()
    if x.size == 0 or bits < 1 or iters < 0:
        raise ValueError("bad w, bits or iters")
    c = np.linspace(x.min(), x.max(), 2 ** bits).astype(np.float32)
    for _ in range(iters):
        idx = np.abs(x[:, None] - c[None, :]).argmin(1)
        for j in range(c.size):
            if (idx == j).any():
                c[j] = x[idx == j].mean()
    idx = np.abs(x[:, None] - c[None, :]).argmin(1)
    return torch.from_numpy(idx.astype(np.int64).reshape(w.shape)), torch.from_numpy(c)


def kmeans_sklearn(w, bits, iters):
    from sklearn.cluster import KMeans
    x = w.detach().double().numpy().reshape(-1, 1)
    if x.size == 0 or bits < 1 or iters < 0:
        raise ValueError("bad w, bits or iters")
    init = np.linspace(x.min(), x.max(), 2 ** bits).reshape(-1, 1)
    mine = kmeans_numpy(w, bits, iters)
    if iters == 0 or np.bincount(mine[0].ravel().numpy(), minlength=2 ** bits).min() == 0:
        return mine              # sklearn needs max_iter >= 1, and it relocates empty clusters (the rule keeps them)
    km = KMeans(2 ** bits, init=init, n_init=1, max_iter=iters, tol=0, algorithm="lloyd").fit(x)
    return torch.from_numpy(km.labels_.astype(np.int64).reshape(w.shape)), torch.from_numpy(km.cluster_centers_.ravel().astype(np.float32))


INDEPENDENT = {"int8_linear": int8_linear_float_path, "minmax_qparams": minmax_numpy, "quantize_affine": quantize_numpy,
               "dequantize_affine": dequantize_numpy, "per_channel_qparams": per_channel_loop,
               "fake_quantize": fake_quantize_where, "binarize": binarize_reshape,
               "kmeans_quantize": [kmeans_numpy, kmeans_sklearn]}

(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = \
    contract_tests(WRONG, INDEPENDENT, independent_seeds=[7, 8])


def test_fake_quantize_grader_shows_value_and_gradient():
    passed, message = grade("fake_quantize", fq_gradient_everywhere, 0)
    assert "x.grad[6]" in message and "backpropagates g" in message
    passed, message = grade("fake_quantize", fq_numpy, 0)
    assert "not attached to x's autograd graph" in message and "no gradient reaches x" in message
    passed, message = grade("fake_quantize", fq_no_grad, 0)
    assert "no gradient reaches x" in message


def test_check_returns_learner_function_on_pass_and_reference_on_fail(capsys):
    assert grading.check("binarize", binarize_reshape, seed=3) is binarize_reshape
    assert "PASS" in capsys.readouterr().out
    assert grading.check("binarize", bz_torch_sign, seed=3) is Q.binarize
    assert "FAIL" in capsys.readouterr().out


def test_fake_quantize_is_graded_in_the_sandbox():
    """The gradient probe works in the classroom grader's separate, guarded process too."""
    from course_lib.grader.sandbox import SandboxLimits, run_exercise
    import inspect

    code = "import torch\n" + inspect.getsource(_range) + inspect.getsource(_qcheck) + inspect.getsource(_fq_parts)
    cases = grading.make_cases("fake_quantize", 0)
    expected = grading.expected_outcomes("fake_quantize", cases)
    limits = SandboxLimits(timeout_s=20)
    good = run_exercise(code + inspect.getsource(fake_quantize_where) + "fake_quantize = fake_quantize_where\n",
                        "fake_quantize", cases, limits)
    bad = run_exercise(code + inspect.getsource(fq_gradient_everywhere) + "fake_quantize = fq_gradient_everywhere\n",
                       "fake_quantize", cases, limits)
    assert good.error is None and grading.judge("fake_quantize", cases, expected, good.outcomes)[0]
    assert bad.error is None and "x.grad" in grading.judge("fake_quantize", cases, expected, bad.outcomes)[1]


# Grade the idea: these are right but skip the input checks; they pass, with notes.
test_grader_grades_the_idea = grades_the_idea({"quantize_affine": [q_no_validation], "dequantize_affine": [dq_no_validation],
                                               "int8_linear": [int8_linear_float_path]})
