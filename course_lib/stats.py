"""How sure is a number? Intervals for accuracies and for comparisons of models or methods.

Every comparison in the course goes through this module, the way every speed claim goes through
:mod:`course_lib.timing`:

- one accuracy (``k`` correct of ``n``): :func:`wilson_interval`, :func:`clopper_pearson_interval`;
- two training recipes over seeds (seed ``s`` gives both arms the same initialisation and shuffle):
  :func:`paired_difference` (and :func:`unpaired_difference`, to see what the pairing buys);
- two models on one test set: :func:`mcnemar_exact` on the discordant examples, and
  :func:`paired_bootstrap` of the accuracy difference over examples;
- any per-example statistic (a mean Spearman over maps, a mask overlap): :func:`bootstrap_interval`;
- how large an effect a design could have seen: :func:`minimum_detectable_effect`;
- a comparative claim in a notebook: :func:`claim` (asserts in CI, warns a learner).

The normal and Student-t quantiles come from the standard library and ``scipy.special``; the tests
compare every interval with ``scipy.stats``' own (``binomtest``, ``ttest_rel``, ``bootstrap``).

Taught in: 00_measurement §How sure is a number?; used by every later chapter.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np
import torch
from scipy import special

from .validation import check_float, check_int

__all__ = ["Interval", "PairedDifference", "wilson_interval", "clopper_pearson_interval", "accuracy_interval",
           "mean_interval", "paired_difference", "unpaired_difference", "discordant_counts", "mcnemar_exact", "paired_bootstrap",
           "bootstrap_interval", "paired_power", "minimum_detectable_effect", "claim"]


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval ``[low, high]``."""
    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    method: str
    unit: str = ""
    difference: bool = False            # shown with a sign: +1.2 points

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def scaled(self, factor: float, unit: str) -> "Interval":
        """The same interval in other units, e.g. ``scaled(100, " points")`` for accuracies."""
        return replace(self, estimate=self.estimate * factor, low=self.low * factor, high=self.high * factor,
                       unit=unit)

    def __str__(self) -> str:
        u, f = self.unit, "{:+.3g}" if self.difference else "{:.3g}"
        return (f"{f.format(self.estimate)}{u} ({100 * self.confidence:g}% interval {f.format(self.low)}{u} to "
                f"{f.format(self.high)}{u}, n={self.n}, {self.method})")


@dataclass(frozen=True)
class PairedDifference(Interval):
    """Mean of the paired differences ``a_i - b_i`` over seeds, with a t interval and a win count."""
    sd: float = float("nan")
    wins: int = 0
    ties: int = 0
    losses: int = 0

    def scaled(self, factor: float, unit: str) -> "PairedDifference":
        """The same difference in other units; the standard deviation is scaled too."""
        return replace(Interval.scaled(self, factor, unit), sd=self.sd * abs(factor))

    def __str__(self) -> str:
        return f"{Interval.__str__(self)[:-1]}; A > B on {self.wins} of {self.n})"


def _alpha(confidence: object) -> float:
    """``1 - confidence`` for a confidence level strictly between 0 and 1."""
    c = check_float("confidence", confidence, 0.0, 1.0, low_inclusive=False)
    if c >= 1:
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    return 1.0 - c


def _counts(k: object, n: object) -> tuple[int, int]:
    n = check_int("n", n, 1)
    k = check_int("k", k, 0)
    if k > n:
        raise ValueError(f"k must be an int in [0, n] = [0, {n}], got {k!r}")
    return k, n


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion (an accuracy: ``k`` correct of ``n``).

    The set of ``p`` that a two-sided score test at level ``alpha = 1 - confidence`` does not reject,
    with :math:`\\hat p = k/n` and :math:`z = \\Phi^{-1}(1 - \\alpha/2)`:

    .. math::  \\frac{\\hat p + z^2/2n}{1 + z^2/n} \\pm \\frac{z}{1 + z^2/n}
               \\sqrt{\\frac{\\hat p(1-\\hat p)}{n} + \\frac{z^2}{4n^2}}

    Unlike the normal approximation :math:`\\hat p \\pm z\\sqrt{\\hat p(1-\\hat p)/n}` it never leaves
    [0, 1] and does not collapse to a point at ``k = 0`` or ``k = n``.

    Parameters
    ----------
    k : int in [0, n]
    n : int >= 1
    confidence : float in (0, 1), default=0.95

    References
    ----------
    Wilson, E. B. (1927). Probable inference, the law of succession, and statistical inference. JASA 22.

    Examples
    --------
    >>> iv = wilson_interval(350, 360)
    >>> round(iv.low, 4), round(iv.high, 4)
    (0.9496, 0.9848)
    """
    k, n = _counts(k, n)
    z = NormalDist().inv_cdf(1 - _alpha(confidence) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)          # exactly 0 and 1 at the ends
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, low, high, confidence, n, "Wilson")


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Exact (Clopper-Pearson) interval for a proportion: it covers at least ``confidence`` for every p.

    With :math:`B^{-1}(q; a, b)` the quantile of a Beta(a, b) distribution and ``alpha = 1 - confidence``:

    .. math::  [\\,B^{-1}(\\alpha/2;\\ k,\\ n-k+1),\\ B^{-1}(1-\\alpha/2;\\ k+1,\\ n-k)\\,]

    with the lower end 0 when ``k = 0`` and the upper end 1 when ``k = n``. Wider than Wilson's.

    References
    ----------
    Clopper, C. J. and Pearson, E. S. (1934). The use of confidence or fiducial limits illustrated in the
    case of the binomial. Biometrika 26.
    """
    k, n = _counts(k, n)
    alpha = _alpha(confidence)
    low = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, alpha / 2))
    high = 1.0 if k == n else float(special.betaincinv(k + 1, n - k, 1 - alpha / 2))
    return Interval(k / n, low, high, confidence, n, "Clopper-Pearson")


def _as_1d(name: str, values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)) or not isinstance(values, (np.ndarray, Sequence)):
        raise TypeError(f"{name} must be a 1-D sequence, array or tensor of numbers, got {type(values).__name__}")
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be 1-D and non-empty, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {values!r}")
    return array


def _same_length(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same length, got {a.size} and {b.size}")


def accuracy_interval(correct: object, confidence: float = 0.95, method: str = "wilson") -> Interval:
    """Interval of an accuracy from per-example 0/1 correctness (``pred == y``).

    ``method``: ``"wilson"`` (default) or ``"clopper-pearson"``.
    """
    c = _as_1d("correct", correct)
    if not np.isin(c, (0, 1)).all():
        raise ValueError("correct must hold only 0/1 (or False/True) values")
    methods = {"wilson": wilson_interval, "clopper-pearson": clopper_pearson_interval}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    return methods[method](int(c.sum()), int(c.size), confidence)


def _t_quantile(q: float, df: float) -> float:
    return float(special.stdtrit(df, q))


def mean_interval(values: object, confidence: float = 0.95) -> Interval:
    r"""Student t interval of the mean of n independent runs (e.g. one importance over forest seeds).

    .. math::  \bar x \pm t_{1-\alpha/2,\ n-1}\ \frac{s}{\sqrt n}
    """
    v = _as_1d("values", values).astype(float)
    if v.size < 2:
        raise ValueError(f"values needs at least 2 entries for an interval, got {v.size}")
    t = _t_quantile(1 - _alpha(confidence) / 2, v.size - 1)
    mean, half = float(v.mean()), t * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Interval(mean, mean - half, mean + half, confidence, int(v.size), "t interval over runs", difference=True)


def paired_difference(a: object, b: object, confidence: float = 0.95) -> PairedDifference:
    """Compare two arms run on the same seeds: the t interval of the mean paired difference.

    Seed :math:`i` gives both arms the same initialisation and data order, so the seed's own luck
    cancels in :math:`d_i = a_i - b_i`. With :math:`\\bar d`, :math:`s_d` (ddof = 1) and n seeds:

    .. math::  \\bar d \\pm t_{1-\\alpha/2,\\ n-1}\\ \\frac{s_d}{\\sqrt n}

    Parameters
    ----------
    a, b : 1-D sequences of the same length n >= 2
        One number per seed (test accuracy of arm A and of arm B, in the same seed order).
    confidence : float in (0, 1), default=0.95

    Returns
    -------
    PairedDifference
        ``estimate`` = mean difference, ``low``/``high``, ``sd`` of the differences, and on how many
        seeds A beat, tied or lost to B.

    Examples
    --------
    >>> d = paired_difference([0.9, 0.8, 0.85], [0.88, 0.79, 0.82])
    >>> round(d.estimate, 4), d.wins
    (0.02, 3)
    """
    a, b = _as_1d("a", a).astype(float), _as_1d("b", b).astype(float)
    _same_length("a", a, "b", b)
    if a.size < 2:
        raise ValueError(f"a and b need at least 2 seeds for an interval, got {a.size}")
    d = a - b
    n, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
    half = _t_quantile(1 - _alpha(confidence) / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, confidence, n, "paired t over seeds", difference=True,
                            sd=sd, wins=int((d > 0).sum()), ties=int((d == 0).sum()), losses=int((d < 0).sum()))


def unpaired_difference(a: object, b: object, confidence: float = 0.95) -> Interval:
    """Welch's t interval of ``mean(a) - mean(b)``, as if the two arms shared nothing.

    .. math::  \\bar a - \\bar b \\pm t_{1-\\alpha/2,\\ \\nu}\\ \\sqrt{s_a^2/n_a + s_b^2/n_b},\\quad
               \\nu = \\frac{(s_a^2/n_a + s_b^2/n_b)^2}{(s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)}

    Shown in chapter 00 beside :func:`paired_difference` to measure what pairing by seed buys.
    """
    a, b = _as_1d("a", a).astype(float), _as_1d("b", b).astype(float)
    if min(a.size, b.size) < 2:
        raise ValueError(f"a and b need at least 2 values each, got {a.size} and {b.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    mean = float(a.mean() - b.mean())
    if va + vb == 0:
        return Interval(mean, mean, mean, confidence, a.size + b.size, "Welch t", difference=True)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = _t_quantile(1 - _alpha(confidence) / 2, df) * math.sqrt(va + vb)
    return Interval(mean, mean - half, mean + half, confidence, a.size + b.size, "Welch t", difference=True)


def discordant_counts(pred_a: object, pred_b: object, y: object) -> tuple[int, int]:
    """``(n_10, n_01)``: examples only A gets right, and examples only B gets right.

    Examples both get right, or both get wrong (even with different wrong labels), carry no
    information about which model is better and are not counted.
    """
    pa, pb, t = _as_1d("pred_a", pred_a), _as_1d("pred_b", pred_b), _as_1d("y", y)
    _same_length("pred_a", pa, "y", t)
    _same_length("pred_b", pb, "y", t)
    right_a, right_b = pa == t, pb == t
    return int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())


def mcnemar_exact(pred_a, pred_b, y) -> float:
    """Two-sided exact McNemar p-value: do models A and B have the same accuracy on this test set?

    Only the discordant examples count: :math:`n_{10}` (A right, B wrong) and :math:`n_{01}`
    (A wrong, B right), :math:`m = n_{10} + n_{01}`. If both models are equally accurate, each
    discordant example is a fair coin, so :math:`n_{10} \\sim \\mathrm{Binomial}(m, 1/2)`, and

    .. math::  p = \\min\\Bigl(1,\\ 2 \\sum_{i=0}^{\\min(n_{10}, n_{01})} \\binom{m}{i} 2^{-m}\\Bigr),
               \\qquad p = 1 \\text{ when } m = 0.

    Parameters
    ----------
    pred_a, pred_b, y : 1-D integer tensors (or arrays, lists) of the same length
        Predicted labels of A, of B, and the true labels.

    Returns
    -------
    float in (0, 1]

    Raises
    ------
    ValueError if the lengths differ or an input is not 1-D.

    References
    ----------
    McNemar, Q. (1947). Note on the sampling error of the difference between correlated proportions or
    percentages. Psychometrika 12. Dietterich, T. G. (1998). Approximate statistical tests for
    comparing supervised classification learning algorithms. Neural Computation 10.

    Examples
    --------
    >>> mcnemar_exact([1, 1, 1, 0], [0, 0, 1, 0], [1, 1, 1, 1])
    0.5
    """
    n10, n01 = discordant_counts(pred_a, pred_b, y)
    m = n10 + n01
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(n10, n01) + 1))   # exact integers
    return min(1.0, 2 * tail / 2 ** m)


def _check_n_boot(n_boot: object) -> int:
    return check_int("n_boot", n_boot, 100)


def bootstrap_interval(values: object, statistic: Callable[[np.ndarray], np.ndarray] | None = None, *,
                       confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a statistic of per-example values (default: their mean).

    Draw ``n_boot`` resamples of the n values with replacement, compute the statistic of each, and
    take the :math:`\\alpha/2` and :math:`1-\\alpha/2` quantiles of those statistics (Efron, 1979):

    .. math::  [\\,\\hat\\theta^*_{(\\alpha/2)},\\ \\hat\\theta^*_{(1-\\alpha/2)}\\,]

    Use it for anything computed example by example: a mean Spearman correlation over 64 maps, a
    mean mask overlap, a mean deletion score.

    Parameters
    ----------
    values : 1-D sequence of n >= 2 numbers
    statistic : callable, default=None
        ``statistic(samples)`` with ``samples`` of shape ``(n_boot, n)`` returns ``(n_boot,)``
        (vectorised, like ``lambda s: s.mean(axis=1)``); None is the mean.
    confidence : float in (0, 1), default=0.95
    n_boot : int >= 100, default=2000
    seed : int, default=0
        Seed of the resampling (numpy ``default_rng``): the same seed gives the same interval.

    References
    ----------
    Efron, B. (1979). Bootstrap methods: another look at the jackknife. Annals of Statistics 7.
    """
    v = _as_1d("values", values).astype(float)
    if v.size < 2:
        raise ValueError(f"values needs at least 2 entries, got {v.size}")
    n_boot, seed = _check_n_boot(n_boot), check_int("seed", seed, 0)
    alpha = _alpha(confidence)
    stat = statistic or (lambda s: s.mean(axis=-1))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, v.size, size=(n_boot, v.size))              # (n_boot, n)
    boot = np.asarray(stat(v[index]), dtype=float)                       # (n_boot,)
    if boot.shape != (n_boot,):
        raise ValueError(f"statistic must map (n_boot, n) to (n_boot,), got shape {boot.shape}")
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    estimate = float(np.asarray(stat(v[None, :]), dtype=float).reshape(-1)[0])
    return Interval(estimate, float(low), float(high), confidence, int(v.size), "percentile bootstrap")


def paired_bootstrap(correct_a: object, correct_b: object, *, confidence: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> Interval:
    """Interval of the accuracy difference of two models on **one** test set, resampling examples.

    Each resample draws n test examples with replacement and scores both models on the **same**
    draw, so an example that is hard for both moves both accuracies together; it is the bootstrap of
    the mean of :math:`d_j = \\mathbb 1[a_j \\text{ right}] - \\mathbb 1[b_j \\text{ right}]`.

    Parameters
    ----------
    correct_a, correct_b : 1-D 0/1 sequences of the same length
        ``pred_a == y`` and ``pred_b == y``.
    """
    a, b = _as_1d("correct_a", correct_a).astype(float), _as_1d("correct_b", correct_b).astype(float)
    _same_length("correct_a", a, "correct_b", b)
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("correct_a and correct_b must hold only 0/1 (or False/True) values")
    iv = bootstrap_interval(a - b, confidence=confidence, n_boot=n_boot, seed=seed)
    return replace(iv, method="paired bootstrap over examples", difference=True)


def paired_power(effect: float, n: int, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test with n seeds when the true mean difference is ``effect``.

    With :math:`t_c = t_{1-\\alpha/2,\\,n-1}` and noncentrality :math:`\\lambda = \\text{effect}\\sqrt n/\\sigma`,
    :math:`T` follows a noncentral t with n - 1 degrees of freedom and

    .. math::  \\text{power} = P(T > t_c) + P(T < -t_c).
    """
    n = check_int("n", n, 2)
    sd = check_float("sd", sd, 0.0, np.inf, low_inclusive=False)
    alpha = check_float("alpha", alpha, 0.0, 0.5, low_inclusive=False)
    t_crit = _t_quantile(1 - alpha / 2, n - 1)
    lam = float(effect) * math.sqrt(n) / sd
    return float(1 - special.nctdtr(n - 1, lam, t_crit) + special.nctdtr(n - 1, lam, -t_crit))


def minimum_detectable_effect(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a paired design of n seeds detects with the given power.

    The ``effect`` that solves :func:`paired_power` ``(effect, n, sd, alpha) = power`` (bisection). For
    large n it approaches :math:`(z_{1-\\alpha/2} + z_{\\text{power}})\\,\\sigma/\\sqrt n \\approx 2.8\\,\\sigma/\\sqrt n`;
    with 3 seeds the t quantiles make it about :math:`3.3\\,\\sigma`, with 10 seeds :math:`1.0\\,\\sigma`.

    A null result reads: "no difference was seen; one larger than ``minimum_detectable_effect(...)``
    would have been seen with probability ``power``".

    Parameters
    ----------
    n : int >= 2
        Seeds (pairs).
    sd : float > 0
        Standard deviation of the paired differences (measured, e.g. ``PairedDifference.sd``).
    alpha : float in (0, 0.5], default=0.05
    power : float in (alpha, 1), default=0.8
    """
    n = check_int("n", n, 2)
    sd = check_float("sd", sd, 0.0, np.inf, low_inclusive=False)
    alpha = check_float("alpha", alpha, 0.0, 0.5, low_inclusive=False)
    power = check_float("power", power, alpha, 1.0, low_inclusive=False)
    if power >= 1:
        raise ValueError(f"power must be a float in ({alpha}, 1), got {power!r}")
    low, high = 0.0, sd
    while paired_power(high, n, sd, alpha) < power:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if paired_power(mid, n, sd, alpha) < power else (low, mid)
    return high


def claim(result: Interval, expected: str, *, above: float | None = None, below: float | None = None,
          within: float | None = None) -> bool:
    """Check a **comparative** claim on an interval, the way :func:`timing.claim` checks speed.

    Say exactly one of

    - ``above=m``: "A beats B by more than m" holds when the whole interval of A - B lies above m
      (``above=0``: "A beats B");
    - ``below=m``: the whole interval lies below m;
    - ``within=e``: "no difference larger than e": the whole interval lies inside (-e, e). This is how a
      null result is stated: with the effect it rules out, never as "no effect" alone.

    Under the tests and in CI (``COURSE_CLAIMS=strict``) a claim that does not hold raises
    ``AssertionError`` with the interval; in a learner's notebook it shows an explained warning and
    returns False, so Run All goes on.

    Examples
    --------
    >>> claim(Interval(0.03, 0.01, 0.05, 0.95, 5, "paired t"), "A beats B", above=0)
    True
    """
    from .timing import claims_are_strict

    if not isinstance(result, Interval):
        raise TypeError(f"result must be a course_lib.stats.Interval, got {type(result).__name__}")
    given = {k: v for k, v in {"above": above, "below": below, "within": within}.items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"say exactly one of above=, below=, within=; got {sorted(given) or 'none'}")
    (kind, bound), = given.items()
    bound = check_float(kind, bound, low=0.0 if kind == "within" else -np.inf)
    holds = {"above": result.low > bound, "below": result.high < bound,
             "within": -bound < result.low and result.high < bound}[kind]
    if holds:
        return True
    wanted = {"above": f"the whole interval above {bound:+.3g}", "below": f"the whole interval below {bound:+.3g}",
              "within": f"the whole interval inside ±{bound:.3g}"}[kind]
    message = f"not supported by the measurement: {expected!r} needs {wanted}{result.unit}; measured {result}"
    if claims_are_strict():
        raise AssertionError(message)
    from IPython.display import HTML, display

    display(HTML(f'<div style="border-left:4px solid #d08a00;padding:4px 8px;background:#fff6e0">'
                 f"<b>Comparison claim {html.escape(message)}.</b> On another machine training can round "
                 "differently; read the interval, not the sentence. The notebook goes on either way.</div>"))
    print(f"WARNING: comparison claim {message}.")
    return False
