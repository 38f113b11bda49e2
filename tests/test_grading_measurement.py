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


# ----------------------------------------------------------------------------- summarize_timings
def _checked(samples_ms):
    s = np.asarray(samples_ms, dtype=float)
    if s.size == 0 or not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("samples_ms must be non-empty, finite, non-negative")
    return s


def summary_with_mean(samples_ms):
    s = _checked(samples_ms)
    q1, q3 = np.percentile(s, [25, 75])
    return {"median": float(s.mean()), "iqr": float(q3 - q1), "min": float(s.min()), "max": float(s.max()), "n": s.size}


def summary_upper_middle(samples_ms):                     # median = sorted[n // 2], wrong for even n
    s = np.sort(_checked(samples_ms))
    q1, q3 = np.percentile(s, [25, 75])
    return {"median": float(s[len(s) // 2]), "iqr": float(q3 - q1), "min": float(s[0]), "max": float(s[-1]), "n": len(s)}


def summary_exclusive_quartiles(samples_ms):              # statistics.quantiles' default method
    import statistics
    s = _checked(samples_ms)
    if s.size < 2:
        return {"median": float(s[0]), "iqr": 0.0, "min": float(s[0]), "max": float(s[0]), "n": 1}
    q1, _, q3 = statistics.quantiles(s.tolist(), n=4)
    return {"median": float(np.median(s)), "iqr": q3 - q1, "min": float(s.min()), "max": float(s.max()), "n": s.size}


def summary_std(samples_ms):
    s = _checked(samples_ms)
    return {"median": float(np.median(s)), "iqr": float(s.std()), "min": float(s.min()), "max": float(s.max()), "n": s.size}


def summary_no_validation(samples_ms):
    s = np.asarray(samples_ms, dtype=float)
    if s.size == 0:
        raise ValueError("empty")
    q1, m, q3 = np.percentile(s, [25, 50, 75])
    return {"median": float(m), "iqr": float(q3 - q1), "min": float(s.min()), "max": float(s.max()), "n": s.size}


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
    "roofline_time": [roof_sum, roof_min, roof_compute_only, roof_swapped, roof_intensity, roof_milliseconds,
                      roof_floor_division],
    "summarize_timings": [summary_with_mean, summary_upper_middle, summary_exclusive_quartiles, summary_std],
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


def summary_by_statistics(samples_ms):
    import statistics
    s = sorted(float(v) for v in samples_ms)
    if not s or any(not math.isfinite(v) or v < 0 for v in s):
        raise ValueError("samples_ms must be non-empty, finite and non-negative")
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median": statistics.median(s), "iqr": q[2] - q[0], "min": s[0], "max": s[-1], "n": len(s)}


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
               "summarize_timings": summary_by_statistics, "mcnemar_exact": [mcnemar_lgamma_torch, mcnemar_exact_fraction]}

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
    cases = lambda seed: json.dumps(grading.make_cases("summarize_timings", seed))  # noqa: E731 (nan-safe)
    assert cases(1) != cases(2)
    assert cases(1) == cases(1)


def test_check_unknown_exercise_lists_names():
    with pytest.raises(ValueError, match="exercise must be one of .*count_parameters"):
        grading.check("count_params", count_tensors)


# Grade the idea: these are right but skip the input checks; they pass, with notes.
test_grader_grades_the_idea = grades_the_idea({"conv2d_macs": [macs_no_validation], "roofline_time": [roof_no_validation],
                                              "summarize_timings": [summary_no_validation],
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
