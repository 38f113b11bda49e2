"""course_lib.stats against scipy.stats (the oracle), closed forms and simulation."""
import math

import numpy as np
import pytest
import torch
from scipy import stats as ss

from course_lib import stats
from course_lib.stats import (Interval, bootstrap_interval, claim, clopper_pearson_interval, discordant_counts,
                              mcnemar_exact, minimum_detectable_effect, paired_bootstrap, paired_difference,
                              paired_power, unpaired_difference, wilson_interval)

RNG = np.random.default_rng(20261202)
COUNTS = [(0, 1), (1, 1), (0, 360), (1, 360), (350, 360), (360, 360), (7, 13), (180, 360)] + \
    [(int(k), int(n)) for n in RNG.integers(1, 2000, 12) for k in [RNG.integers(0, n + 1)]]


@pytest.mark.parametrize("k,n", COUNTS)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_matches_scipy_binomtest(k, n, confidence):
    ref = ss.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    got = wilson_interval(k, n, confidence)
    assert got.low == pytest.approx(ref.low, abs=1e-12) and got.high == pytest.approx(ref.high, abs=1e-12)
    assert got.estimate == k / n and got.n == n


@pytest.mark.parametrize("k,n", COUNTS)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_interval_matches_scipy_exact(k, n, confidence):
    ref = ss.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    got = clopper_pearson_interval(k, n, confidence)
    assert got.low == pytest.approx(ref.low, abs=1e-10) and got.high == pytest.approx(ref.high, abs=1e-10)


def test_wilson_interval_by_hand_at_k_zero():
    # k = 0: the interval is [0, z^2 / (n + z^2)], a closed form.
    z = 1.959963984540054
    assert wilson_interval(0, 360).low == 0.0
    assert wilson_interval(0, 360).high == pytest.approx(z * z / (360 + z * z), rel=1e-12)


def test_clopper_pearson_is_wider_than_wilson_here():
    # Exact intervals cover at least the nominal level, so they are wider at these counts.
    for k, n in [(350, 360), (180, 360), (3, 40)]:
        assert clopper_pearson_interval(k, n).width > wilson_interval(k, n).width


def test_wilson_coverage_is_close_to_nominal_by_simulation():
    # 20000 test sets of n = 360 at p = 0.95: the share of intervals holding p is about 0.95
    # (Wilson is not exact; Brown, Cai & DasGupta 2001 show it stays within ~1-2 points of nominal).
    k = np.random.default_rng(0).binomial(360, 0.95, 20000)
    covered = np.mean([wilson_interval(int(ki), 360).contains(0.95) for ki in k])
    assert 0.93 < covered < 0.97


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_difference_matches_scipy_ttest_rel(seed, n):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.9, 0.02, n)
    b = a - rng.normal(0.01, 0.01, n)
    ref = ss.ttest_rel(a, b).confidence_interval(confidence_level=0.95)
    got = paired_difference(a, b)
    assert got.low == pytest.approx(ref.low, rel=1e-10) and got.high == pytest.approx(ref.high, rel=1e-10)
    assert got.estimate == pytest.approx(np.mean(a - b)) and got.sd == pytest.approx(np.std(a - b, ddof=1))
    assert got.wins + got.ties + got.losses == n and got.wins == int(np.sum(a > b))


def test_scaled_moves_every_number_into_the_new_unit():
    d = paired_difference([0.90, 0.80, 0.85], [0.88, 0.79, 0.82]).scaled(100, " points")
    assert d.estimate == pytest.approx(2.0) and d.sd == pytest.approx(100 * np.std([0.02, 0.01, 0.03], ddof=1))
    assert d.unit == " points" and "points" in str(d) and d.wins == 3


def test_paired_difference_counts_wins_ties_losses_by_hand():
    d = paired_difference([1, 2, 3, 4], [0, 2, 4, 3])
    assert (d.wins, d.ties, d.losses) == (2, 1, 1)


@pytest.mark.parametrize("seed", range(4))
def test_mean_interval_matches_scipy_ttest_1samp(seed):
    v = np.random.default_rng(seed).normal(0.01, 0.02, 5)
    ref = ss.ttest_1samp(v, 0.0).confidence_interval(confidence_level=0.95)
    got = stats.mean_interval(v)
    assert got.low == pytest.approx(ref.low, rel=1e-10) and got.high == pytest.approx(ref.high, rel=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_unpaired_difference_matches_scipy_welch(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, 7), rng.normal(0.5, 2, 5)
    ref = ss.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=0.9)
    got = unpaired_difference(a, b, confidence=0.9)
    assert got.low == pytest.approx(ref.low, rel=1e-10) and got.high == pytest.approx(ref.high, rel=1e-10)


def test_pairing_shrinks_the_interval_when_seeds_share_luck():
    # Each seed moves both arms by the same amount (sd 1); the true gap is 0.1 with sd 0.02.
    rng = np.random.default_rng(1)
    luck = rng.normal(0, 1, 10)
    a, b = luck + 0.1 + rng.normal(0, 0.02, 10), luck
    assert paired_difference(a, b).width < unpaired_difference(a, b).width / 10


def _mcnemar_by_scipy(pred_a, pred_b, y):
    right_a, right_b = np.asarray(pred_a) == np.asarray(y), np.asarray(pred_b) == np.asarray(y)
    n10, n01 = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return 1.0 if n10 + n01 == 0 else ss.binomtest(n10, n10 + n01, 0.5).pvalue


@pytest.mark.parametrize("seed", range(10))
def test_mcnemar_exact_matches_scipy_binomtest(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.integers(0, 10, n)
    pred_a = np.where(rng.random(n) < rng.uniform(0.5, 0.99), y, rng.integers(0, 10, n))
    pred_b = np.where(rng.random(n) < rng.uniform(0.5, 0.99), y, rng.integers(0, 10, n))
    assert mcnemar_exact(torch.tensor(pred_a), torch.tensor(pred_b), torch.tensor(y)) == \
        pytest.approx(_mcnemar_by_scipy(pred_a, pred_b, y), rel=1e-12)


def test_mcnemar_exact_ignores_examples_both_get_wrong():
    # Both wrong with different labels is not discordant: only the last two examples count.
    y = [0, 0, 0, 0]
    assert discordant_counts([1, 2, 0, 1], [2, 1, 1, 0], y) == (1, 1)
    assert mcnemar_exact([1, 2, 0, 1], [2, 1, 1, 0], y) == 1.0


def test_mcnemar_exact_by_hand():
    # 6 discordant, all for A: p = 2 * (1/2)^6 = 1/32.
    y = [1] * 8
    assert mcnemar_exact([1] * 8, [0] * 6 + [1] * 2, y) == 2 / 64
    assert mcnemar_exact([1, 1], [1, 1], [1, 1]) == 1.0


def test_mcnemar_exact_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="pred_a and y must have the same length"):
        mcnemar_exact([1, 2], [1, 2, 3], [1, 2, 3])


@pytest.mark.parametrize("seed", range(3))
def test_bootstrap_interval_agrees_with_scipy_bootstrap(seed):
    # Two Monte Carlo draws of the same percentile interval: each end has MC sd ~0.02 se, so 0.1 se is > 3 sd.
    v = np.random.default_rng(seed).normal(0.5, 0.2, 64)
    ref = ss.bootstrap((v,), np.mean, method="percentile", n_resamples=20000, random_state=seed).confidence_interval
    got = bootstrap_interval(v, n_boot=20000, seed=seed)
    se = v.std(ddof=1) / math.sqrt(v.size)
    assert abs(got.low - ref.low) < 0.1 * se and abs(got.high - ref.high) < 0.1 * se


def test_bootstrap_interval_of_the_mean_approaches_the_normal_interval():
    v = np.random.default_rng(3).random(2000)
    got = bootstrap_interval(v, n_boot=4000)
    se = v.std() / math.sqrt(v.size)
    assert got.low == pytest.approx(v.mean() - 1.96 * se, abs=0.1 * se)
    assert got.high == pytest.approx(v.mean() + 1.96 * se, abs=0.1 * se)


def test_bootstrap_interval_takes_a_vectorised_statistic_and_a_seed():
    v = np.arange(20.0)
    med = bootstrap_interval(v, lambda s: np.median(s, axis=-1), seed=5)
    assert med.estimate == 9.5
    assert med == bootstrap_interval(v, lambda s: np.median(s, axis=-1), seed=5)
    assert med != bootstrap_interval(v, lambda s: np.median(s, axis=-1), seed=6)


def test_paired_bootstrap_is_the_bootstrap_of_the_per_example_differences():
    rng = np.random.default_rng(4)
    a, b = rng.random(360) < 0.9, rng.random(360) < 0.85
    got = paired_bootstrap(a, b, seed=2)
    ref = bootstrap_interval(a.astype(float) - b.astype(float), seed=2)
    assert (got.estimate, got.low, got.high) == (ref.estimate, ref.low, ref.high)
    assert got.estimate == pytest.approx(a.mean() - b.mean())


def test_paired_bootstrap_is_narrower_than_ignoring_the_pairing():
    # B is A with 10 of 360 answers flipped to wrong: the two accuracies move together.
    a = np.random.default_rng(5).random(360) < 0.9
    b = a.copy()
    b[np.flatnonzero(a)[:10]] = False
    paired = paired_bootstrap(a, b)
    independent_se = math.sqrt(a.mean() * (1 - a.mean()) / 360 + b.mean() * (1 - b.mean()) / 360)
    assert paired.low > 0 and paired.width < 2 * 1.96 * independent_se / 2


@pytest.mark.parametrize("n", [3, 5, 10])
def test_minimum_detectable_effect_has_the_stated_power_by_simulation(n):
    # At the MDE, a paired t test at alpha = 0.05 rejects in 80% of 40000 simulated experiments.
    rng = np.random.default_rng(n)
    mde = minimum_detectable_effect(n, 1.0)
    d = rng.normal(mde, 1.0, (40000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rejected = np.abs(t) > ss.t.ppf(0.975, n - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)


def test_minimum_detectable_effect_approaches_the_normal_formula():
    # (z_0.975 + z_0.8) sd / sqrt(n) for large n.
    z = ss.norm.ppf(0.975) + ss.norm.ppf(0.8)
    assert minimum_detectable_effect(2000, 2.0) == pytest.approx(z * 2.0 / math.sqrt(2000), rel=2e-3)


def test_paired_power_is_alpha_at_zero_effect():
    assert paired_power(0.0, 5, 1.0) == pytest.approx(0.05, abs=1e-9)


def test_minimum_detectable_effect_scales_with_sd_and_shrinks_with_seeds():
    assert minimum_detectable_effect(5, 3.0) == pytest.approx(3 * minimum_detectable_effect(5, 1.0), rel=1e-6)
    assert minimum_detectable_effect(3, 1.0) > 3 * minimum_detectable_effect(10, 1.0)


def _iv(low, high):
    return Interval((low + high) / 2, low, high, 0.95, 5, "test", difference=True)


def test_claim_above_below_within_hold_on_the_whole_interval(monkeypatch):
    monkeypatch.setenv("COURSE_CLAIMS", "strict")
    assert claim(_iv(0.01, 0.05), "A beats B", above=0)
    assert claim(_iv(-0.05, -0.01), "A is worse", below=0)
    assert claim(_iv(-0.01, 0.02), "no difference larger than 0.03", within=0.03)
    with pytest.raises(AssertionError, match=r"A beats B.*-0.01 to \+0.05"):
        claim(_iv(-0.01, 0.05), "A beats B", above=0)
    with pytest.raises(AssertionError, match="inside"):
        claim(_iv(-0.01, 0.05), "no difference larger than 0.03", within=0.03)


def test_claim_warns_a_learner_and_goes_on(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CLAIMS", "warn")
    assert claim(_iv(-0.01, 0.05), "A beats B", above=0) is False
    assert "WARNING: comparison claim" in capsys.readouterr().out


def test_claim_needs_exactly_one_bound():
    with pytest.raises(ValueError, match="exactly one of above=, below=, within="):
        claim(_iv(0, 1), "x")
    with pytest.raises(ValueError, match="exactly one"):
        claim(_iv(0, 1), "x", above=0, below=1)
    with pytest.raises(TypeError, match="result must be a course_lib.stats.Interval"):
        claim((0, 1), "x", above=0)


@pytest.mark.parametrize("call,error,match", [
    (lambda: wilson_interval(5, 4), ValueError, r"k must be an int in \[0, n\]"),
    (lambda: wilson_interval(1, 0), ValueError, "n must be an int >= 1"),
    (lambda: wilson_interval(1.0, 4), TypeError, "k must be an int"),
    (lambda: wilson_interval(1, 4, confidence=1.0), ValueError, r"confidence must be a float in \(0, 1\)"),
    (lambda: clopper_pearson_interval(True, 4), TypeError, "k must be an int"),
    (lambda: paired_difference([1.0], [2.0]), ValueError, "at least 2 seeds"),
    (lambda: paired_difference([1.0, 2.0], [2.0]), ValueError, "same length"),
    (lambda: paired_difference([1.0, float("nan")], [2.0, 1.0]), ValueError, "a must be finite"),
    (lambda: paired_difference("ab", "cd"), TypeError, "a must be a 1-D sequence"),
    (lambda: bootstrap_interval([1.0, 2.0], n_boot=10), ValueError, "n_boot must be an int >= 100"),
    (lambda: bootstrap_interval([1.0, 2.0], lambda s: s), ValueError, r"statistic must map"),
    (lambda: paired_bootstrap([0, 2], [1, 0]), ValueError, "only 0/1"),
    (lambda: minimum_detectable_effect(1, 1.0), ValueError, "n must be an int >= 2"),
    (lambda: minimum_detectable_effect(5, 0.0), ValueError, "sd must be a float in"),
    (lambda: minimum_detectable_effect(5, 1.0, power=1.0), ValueError, "power must be a float in"),
    (lambda: stats.accuracy_interval([1, 0], method="normal"), ValueError, "method must be one of"),
])
def test_stats_rejects_bad_input_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_stats_docstring_examples_run():
    import doctest
    assert doctest.testmod(stats).failed == 0
