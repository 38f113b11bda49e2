"""Chapter 00's graders accept the reference and reject the stub and the wrong answers learners write."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.grader import grading
from course_lib import measurement
from grader_contract import SEEDS, grades_the_idea, contract_tests, grade, stub







# ----------------------------------------------------------------------------- count_parameters
def count_tensors(model, trainable_only=False):            # counts parameter tensors, not scalars
    return len([p for p in model.parameters() if p.requires_grad or not trainable_only])


def count_ignoring_trainable(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters())


def count_state_dict(model, trainable_only=False):          # buffers counted, tied weights twice
    return sum(t.numel() for t in model.state_dict().values())


def count_named_with_duplicates(model, trainable_only=False):
    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False)
               if p.requires_grad or not trainable_only)


def count_weights_only(model, trainable_only=False):
    return sum(m.weight.numel() for m in model.modules() if getattr(m, "weight", None) is not None)


def count_as_float(model, trainable_only=False):
    return float(measurement.count_parameters(model, trainable_only))


# ----------------------------------------------------------------------------- roofline_time
def roof_sum(flops, bytes_moved, peak_flops, bandwidth):              # adds the two times
    return flops / peak_flops + bytes_moved / bandwidth


def roof_min(flops, bytes_moved, peak_flops, bandwidth):              # the faster of the two
    return min(flops / peak_flops, bytes_moved / bandwidth)


def roof_compute_only(flops, bytes_moved, peak_flops, bandwidth):     # FLOPs are all that matter
    return flops / peak_flops


def roof_swapped(flops, bytes_moved, peak_flops, bandwidth):          # each count over the other rate
    return max(flops / bandwidth, bytes_moved / peak_flops)


def roof_intensity(flops, bytes_moved, peak_flops, bandwidth):        # arithmetic intensity, not a time
    return flops / bytes_moved if bytes_moved else float("inf")


def roof_milliseconds(flops, bytes_moved, peak_flops, bandwidth):
    return 1000 * max(flops / peak_flops, bytes_moved / bandwidth)


def roof_floor_division(flops, bytes_moved, peak_flops, bandwidth):
    return max(flops // peak_flops, bytes_moved // bandwidth)


def roof_no_validation(flops, bytes_moved, peak_flops, bandwidth):
    return max(flops / peak_flops, bytes_moved / bandwidth)


# ----------------------------------------------------------------------------- conv2d_macs
def _pair(k):
    return (k, k) if isinstance(k, int) else tuple(k)


def _valid(in_channels, out_channels, kh, kw, out_h, out_w, groups):
    if min(in_channels, out_channels, kh, kw, out_h, out_w, groups) < 1 or in_channels % groups or out_channels % groups:
        raise ValueError("bad conv")


def macs_ignoring_groups(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
    kh, kw = _pair(kernel_size)
    _valid(in_channels, out_channels, kh, kw, out_h, out_w, groups)
    return out_channels * out_h * out_w * in_channels * kh * kw


def macs_as_flops(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
    return 2 * measurement.conv2d_macs(in_channels, out_channels, kernel_size, out_h, out_w, groups)


def macs_square_kernel_only(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
    k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
    _valid(in_channels, out_channels, k, k, out_h, out_w, groups)
    return out_channels * out_h * out_w * in_channels // groups * k * k


def macs_groups_twice(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
    kh, kw = _pair(kernel_size)
    _valid(in_channels, out_channels, kh, kw, out_h, out_w, groups)
    return out_channels // groups * out_h * out_w * in_channels // groups * kh * kw


def macs_no_validation(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
    kh, kw = _pair(kernel_size)
    return out_channels * out_h * out_w * (in_channels // groups) * kh * kw


# ----------------------------------------------------------------------------- arithmetic_intensity
def _side(size, k, s, p, d, dilation=True, stride_padding=True):
    if not stride_padding:                                 # "valid, stride 1": H - k + 1
        return size - k + 1
    return (size + 2 * p - (d if dilation else 1) * (k - 1) - 1) // s + 1


def _ai(layer, input_shape, *, groups=True, per_mac=2, dilation=True, stride_padding=True, bias_bytes=True,
        output_bytes=True, element=None, whole_batch=True, relu_flops=1, inverted=False):
    """A hand count with one learner's mistake switched on by a keyword (all off: right)."""
    shape = list(input_shape)
    if isinstance(layer, nn.ReLU):
        n = math.prod(shape)
        flops, n_in, n_out, params, size = relu_flops * n, n, n, 0, 4
    elif isinstance(layer, nn.Linear):
        if shape[-1] != layer.in_features:
            raise ValueError("input_shape must end with in_features")
        rows = math.prod(shape[:-1]) if whole_batch else 1
        flops = per_mac * rows * layer.in_features * layer.out_features
        n_in, n_out = rows * layer.in_features, rows * layer.out_features
        params, size = layer.weight.numel(), layer.weight.element_size()
    elif isinstance(layer, nn.Conv2d):
        n, c, h, w = shape
        if c != layer.in_channels:
            raise ValueError("channels")
        sides = [_side(v, k, st, pd, dl, dilation, stride_padding) for v, k, st, pd, dl in
                 zip((h, w), layer.kernel_size, layer.stride, layer.padding, layer.dilation)]
        if min(sides) < 1:
            raise ValueError("empty output")
        n = n if whole_batch else 1
        per_output = (layer.in_channels // layer.groups if groups else layer.in_channels) * math.prod(layer.kernel_size)
        n_out = n * layer.out_channels * sides[0] * sides[1]
        flops, n_in = per_mac * n_out * per_output, n * c * h * w
        params, size = layer.weight.numel(), layer.weight.element_size()
    else:
        raise TypeError("layer")
    if bias_bytes and getattr(layer, "bias", None) is not None:
        params += layer.bias.numel()
    moved = (element or size) * (n_in + params + (n_out if output_bytes else 0))
    return {"flops": flops, "bytes": moved, "intensity": moved / flops if inverted else flops / moved}


def ai_ignores_groups(layer, input_shape):                 # every filter sees all C_in channels
    return _ai(layer, input_shape, groups=False)


def ai_macs_as_flops(layer, input_shape):                  # 1 FLOP per multiply-accumulate
    return _ai(layer, input_shape, per_mac=1)


def ai_output_without_stride_padding(layer, input_shape):  # H_out = H - k + 1 whatever the stride and padding
    return _ai(layer, input_shape, stride_padding=False)


def ai_output_without_dilation(layer, input_shape):        # the kernel's footprint taken as k, not d (k - 1) + 1
    return _ai(layer, input_shape, dilation=False)


def ai_forgets_bias_bytes(layer, input_shape):             # only the weight counted among the parameters
    return _ai(layer, input_shape, bias_bytes=False)


def ai_forgets_output_bytes(layer, input_shape):           # reads counted, the output's write not
    return _ai(layer, input_shape, output_bytes=False)


def ai_always_float32(layer, input_shape):                 # 4 bytes per element whatever the dtype
    return _ai(layer, input_shape, element=4)


def ai_one_sample(layer, input_shape):                     # one image / one row, not the whole batch
    return _ai(layer, input_shape, whole_batch=False)


def ai_relu_is_free(layer, input_shape):                   # an activation "costs no FLOPs"
    return _ai(layer, input_shape, relu_flops=0)


def ai_bytes_per_flop(layer, input_shape):                 # the ratio upside down
    return _ai(layer, input_shape, inverted=True)


def ai_no_validation(layer, input_shape):                  # right on valid inputs, never raises
    try:
        return _ai(layer, input_shape)
    except (ValueError, TypeError):
        return {"flops": 0, "bytes": 1, "intensity": 0.0}


# ----------------------------------------------------------------------------- mcnemar_exact
def _cells(pred_a, pred_b, y):
    a, b, t = (np.asarray(v) for v in (pred_a, pred_b, y))
    if a.ndim != 1 or a.shape != b.shape or a.shape != t.shape:
        raise ValueError("pred_a, pred_b and y must be 1-D of one length")
    return int(np.sum((a == t) & (b != t))), int(np.sum((a != t) & (b == t))), a, b


def _binom_cdf(k, m):
    return sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m if k >= 0 else 0.0


def mcn_counts_disagreements(pred_a, pred_b, y):      # every a != b counted as discordant
    n10, n01, a, b = _cells(pred_a, pred_b, y)
    m = int(np.sum(a != b))
    return 1.0 if m == 0 else min(1.0, 2 * _binom_cdf(min(n10, m - n10), m))


def mcn_one_sided(pred_a, pred_b, y):                  # P(X <= min), not doubled
    n10, n01, _, _ = _cells(pred_a, pred_b, y)
    return 1.0 if n10 + n01 == 0 else _binom_cdf(min(n10, n01), n10 + n01)


def mcn_strict_tail(pred_a, pred_b, y):                # P(X < min): the observed count left out
    n10, n01, _, _ = _cells(pred_a, pred_b, y)
    return 1.0 if n10 + n01 == 0 else min(1.0, 2 * _binom_cdf(min(n10, n01) - 1, n10 + n01))


def mcn_not_capped(pred_a, pred_b, y):                 # 2 P(X <= min) can pass 1
    n10, n01, _, _ = _cells(pred_a, pred_b, y)
    return 1.0 if n10 + n01 == 0 else 2 * _binom_cdf(min(n10, n01), n10 + n01)


def mcn_chi2_corrected(pred_a, pred_b, y):             # the asymptotic test with continuity correction
    n10, n01, _, _ = _cells(pred_a, pred_b, y)
    if n10 + n01 == 0:
        return 1.0
    chi2 = max(abs(n10 - n01) - 1, 0) ** 2 / (n10 + n01)
    return math.erfc(math.sqrt(chi2 / 2))


def mcn_mid_p(pred_a, pred_b, y):                      # mid-p: half the observed point's probability
    n10, n01, _, _ = _cells(pred_a, pred_b, y)
    m, k = n10 + n01, min(n10, n01)
    return 1.0 if m == 0 else min(1.0, 2 * (_binom_cdf(k - 1, m) + 0.5 * math.comb(m, k) / 2 ** m))


def mcn_accuracy_gap(pred_a, pred_b, y):               # the accuracy difference, not a p-value
    _, _, a, b = _cells(pred_a, pred_b, y)
    t = np.asarray(y)
    return float(abs(np.mean(a == t) - np.mean(b == t)))


def mcn_no_validation(pred_a, pred_b, y):              # right, but never checks lengths or dimensions
    a, b, t = (np.asarray(v).ravel() for v in (pred_a, pred_b, y))
    k = min(len(a), len(b), len(t))
    n10 = int(np.sum((a[:k] == t[:k]) & (b[:k] != t[:k])))
    n01 = int(np.sum((a[:k] != t[:k]) & (b[:k] == t[:k])))
    return 1.0 if n10 + n01 == 0 else min(1.0, 2 * _binom_cdf(min(n10, n01), n10 + n01))


WRONG = {
    "count_parameters": [count_tensors, count_ignoring_trainable, count_state_dict, count_named_with_duplicates,
                         count_weights_only, count_as_float],
    "conv2d_macs": [macs_ignoring_groups, macs_as_flops, macs_square_kernel_only, macs_groups_twice],
    "arithmetic_intensity": [ai_ignores_groups, ai_macs_as_flops, ai_output_without_stride_padding,
                             ai_output_without_dilation, ai_forgets_bias_bytes, ai_forgets_output_bytes,
                             ai_always_float32, ai_one_sample, ai_relu_is_free, ai_bytes_per_flop],
    "roofline_time": [roof_sum, roof_min, roof_compute_only, roof_swapped, roof_intensity, roof_milliseconds,
                      roof_floor_division],
    "mcnemar_exact": [mcn_counts_disagreements, mcn_one_sided, mcn_strict_tail, mcn_not_capped, mcn_chi2_corrected,
                      mcn_mid_p, mcn_accuracy_gap],
}


# ----------------------------------------------------------------------------- independent correct versions
# Written from the instructions without the reference: the contract grades each on its seeds.
def count_by_identity(model, trainable_only=False):
    seen, total = set(), 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen and (p.requires_grad or not trainable_only):
                seen.add(id(p))
                total += p.numel()
    return total


def macs_by_formula(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    for v in (in_channels, out_channels, kh, kw, out_h, out_w, groups):
        if v <= 0:
            raise ValueError(f"sizes must be positive, got {v}")
    if in_channels % groups or out_channels % groups:
        raise ValueError("groups must divide both channel counts")
    return np.int64(out_channels) * out_h * out_w * (in_channels // groups) * kh * kw


def ai_by_running_the_layer(layer, input_shape):  # output shape from a forward pass, bytes from nbytes
    if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.ReLU)):
        raise TypeError("only Linear, Conv2d and ReLU are counted")
    dtype = layer.weight.dtype if hasattr(layer, "weight") else torch.float32
    x = torch.zeros(tuple(input_shape), dtype=dtype)
    if isinstance(layer, nn.Conv2d) and x.dim() != 4:
        raise ValueError("a Conv2d input must be (N, C, H, W)")
    try:
        with torch.no_grad():
            y = layer(x)
    except RuntimeError as error:
        raise ValueError(str(error)) from None
    if isinstance(layer, nn.ReLU):
        flops = y.numel()
    else:                                   # each output value: one dot product as long as one filter
        flops = 2 * y.numel() * (layer.weight.numel() // layer.weight.shape[0])
    moved = x.nbytes + y.nbytes + sum(p.nbytes for p in layer.parameters())
    return {"flops": flops, "bytes": moved, "intensity": flops / moved}


def ai_numpy_formula(layer, input_shape):  # sizes as numpy ints, numpy int64 counts back
    shape = np.array(input_shape, dtype=np.int64)
    element = np.int64(layer.weight.element_size()) if hasattr(layer, "weight") else np.int64(4)
    if type(layer) is nn.ReLU:
        n = shape.prod()
        return {"flops": n, "bytes": 2 * n * element, "intensity": float(n / (2 * n * element))}
    if type(layer) is nn.Linear:
        if shape[-1] != layer.in_features:
            raise ValueError("wrong feature size")
        rows = shape[:-1].prod()
        outputs, per_output = rows * layer.out_features, np.int64(layer.in_features)
    elif type(layer) is nn.Conv2d:
        if shape.size != 4 or shape[1] != layer.in_channels:
            raise ValueError("wrong input shape")
        k, st, pd, dl = (np.array(v) for v in (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
        out = np.floor_divide(shape[2:] + 2 * pd - dl * (k - 1) - 1, st) + 1
        if (out < 1).any():
            raise ValueError("empty output")
        outputs = shape[0] * layer.out_channels * out.prod()
        per_output = np.int64(layer.in_channels // layer.groups) * k.prod()
    else:
        raise TypeError("unsupported layer")
    weights = sum(np.int64(p.numel()) for p in layer.parameters())
    flops = 2 * outputs * per_output
    moved = element * (shape.prod() + weights + outputs)
    return {"flops": flops, "bytes": moved, "intensity": float(flops) / float(moved)}


def roofline_float64(flops, bytes_moved, peak_flops, bandwidth):
    import numbers
    for name, v in (("flops", flops), ("bytes_moved", bytes_moved), ("peak_flops", peak_flops),
                    ("bandwidth", bandwidth)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {v!r}")
        if not math.isfinite(v) or v < 0 or (name in ("peak_flops", "bandwidth") and v == 0):
            raise ValueError(f"{name} must be finite and positive, got {v!r}")
    compute, memory = np.float64(flops) / peak_flops, np.float64(bytes_moved) / bandwidth
    return float(np.maximum(compute, memory))


def mcnemar_lgamma_torch(pred_a, pred_b, y):  # torch only, the tail from log-gamma, a 0-d tensor back
    import torch
    a, b, t = (torch.as_tensor(v) for v in (pred_a, pred_b, y))
    if not (a.dim() == b.dim() == t.dim() == 1) or not (len(a) == len(b) == len(t)):
        raise ValueError("pred_a, pred_b and y must be 1-D tensors of one length")
    only_a, only_b = ((a == t) & (b != t)).sum(), ((a != t) & (b == t)).sum()
    m = (only_a + only_b).double()
    if m == 0:
        return torch.tensor(1.0, dtype=torch.float64)
    i = torch.arange(int(torch.minimum(only_a, only_b)) + 1, dtype=torch.float64)
    log_terms = torch.lgamma(m + 1) - torch.lgamma(i + 1) - torch.lgamma(m - i + 1) - m * math.log(2)
    return torch.clamp(2 * torch.exp(log_terms).sum(), max=1.0)


def mcnemar_exact_fraction(pred_a, pred_b, y):  # exact rational arithmetic, a Fraction back
    from fractions import Fraction
    pairs = list(zip(list(pred_a), list(pred_b), list(y), strict=True))
    n10 = sum(1 for a, b, t in pairs if a == t and b != t)
    n01 = sum(1 for a, b, t in pairs if a != t and b == t)
    m = n10 + n01
    return min(Fraction(1), Fraction(2 * sum(math.comb(m, i) for i in range(min(n10, n01) + 1)), 2 ** m))


INDEPENDENT = {"count_parameters": count_by_identity, "conv2d_macs": macs_by_formula, "roofline_time": roofline_float64,
               "arithmetic_intensity": [ai_by_running_the_layer, ai_numpy_formula],
               "mcnemar_exact": [mcnemar_lgamma_torch, mcnemar_exact_fraction]}

(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = contract_tests(WRONG, INDEPENDENT, independent_seeds=[7, 8])


def test_check_returns_learner_function_on_pass_and_reference_on_fail(capsys):
    def mine(model, trainable_only=False):
        return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

    assert grading.check("count_parameters", mine, seed=3) is mine
    assert "PASS" in capsys.readouterr().out
    assert grading.check("count_parameters", count_tensors, seed=3) is measurement.count_parameters
    out = capsys.readouterr().out
    assert "FAIL" in out and "inputs:" in out and "expected:" in out and "got:" in out


def test_check_reports_stub_as_not_implemented(capsys):
    assert grading.check("conv2d_macs", stub) is measurement.conv2d_macs
    assert "not implemented yet" in capsys.readouterr().out


def test_check_draws_fresh_inputs_each_call():
    import json
    cases = lambda seed: json.dumps(grading.make_cases("arithmetic_intensity", seed))  # noqa: E731
    assert cases(1) != cases(2)
    assert cases(1) == cases(1)


def test_check_unknown_exercise_lists_names():
    with pytest.raises(ValueError, match="exercise must be one of .*count_parameters"):
        grading.check("count_params", count_tensors)


# Grade the idea: these are right but skip the input checks; they pass, with notes.
test_grader_grades_the_idea = grades_the_idea({"conv2d_macs": [macs_no_validation], "roofline_time": [roof_no_validation],
                                              "arithmetic_intensity": [ai_no_validation],
                                              "mcnemar_exact": [mcn_no_validation]})


@pytest.mark.parametrize("seed", SEEDS)
def test_mcnemar_expected_values_are_scipys_exact_binomial_test(seed):
    """The grader's expected p-values (from the reference) equal scipy's binomtest on every valid case."""
    from scipy import stats as ss
    from course_lib.grader import exercises
    spec, cases = exercises.get("mcnemar_exact"), grading.make_cases("mcnemar_exact", seed)
    outcomes = grading.expected_outcomes("mcnemar_exact", cases)
    valid = [(c, o) for c, o in zip(cases, outcomes) if not o.error_types]
    assert len(valid) >= 13
    for case, outcome in valid:
        (pred_a, pred_b, y), _ = spec.build(case)
        n10, n01, _, _ = _cells(pred_a, pred_b, y)
        oracle = 1.0 if n10 + n01 == 0 else ss.binomtest(n10, n10 + n01, 0.5).pvalue
        assert outcome.value == pytest.approx(oracle, rel=1e-9, abs=0), case
