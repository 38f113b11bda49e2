"""Timing done right on CPU and GPU, and the counting helpers that go with it.

:func:`benchmark` warms up, repeats, keeps every sample, and reports the median and the
interquartile range together with the device and the number of CPU threads, because a latency
without those is not a measurement. On CUDA it times with CUDA events and synchronizes, since the
host clock only measures how long it took to *queue* the kernels on an asynchronous GPU.

Every comparison of speed on the CPU goes through :func:`compare` (interleaved rounds, pinned
threads, so background load hits every candidate alike) and is reported by :func:`speedup` (the
ratio of medians with a bootstrap interval over rounds). A claim about speed on this machine is
checked by :func:`claim`: it asserts under the test suite and in CI, and only warns a learner,
because a busy laptop is not a wrong course. :func:`other_load` says whether other processes held
the cores a claim needs.

Taught in: 00_measurement (and used by every chapter).
"""
from __future__ import annotations

import contextlib
import html
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import numpy as np

from .validation import check_int, check_module

__all__ = ["Timing", "Speedup", "OtherLoad", "benchmark", "compare", "speedup", "speedup_table", "first_call",
           "claim", "claims_are_strict", "other_load", "default_device", "num_threads", "count_flops",
           "latency_vs_batch", "host_clock_ms"]


def default_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Timing:
    """The result of :func:`benchmark`: every sample plus a robust summary, in milliseconds."""

    samples_ms: list[float]
    median: float
    iqr: float
    min: float
    max: float
    n: int
    device: str
    threads: int
    warmup: int
    label: str = ""
    extra: dict = field(default_factory=dict)

    def as_row(self) -> dict:
        """One row for a results table (samples left out)."""
        row = asdict(self)
        row.pop("samples_ms")
        row.update(row.pop("extra"))
        return row

    def __str__(self) -> str:
        return (f"{self.label + ': ' if self.label else ''}{self.median:.3f} ms median "
                f"(IQR {self.iqr:.3f} ms, n={self.n}, {self.device}, {self.threads} threads)")


def _summary(samples_ms: Sequence[float]) -> dict:
    """Median, IQR (linear-interpolated quartiles), min, max and count of timing samples."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return {"median": float(median), "iqr": float(q75 - q25), "min": float(samples.min()),
            "max": float(samples.max()), "n": int(samples.size)}


def claims_are_strict() -> bool:
    """True in CI and under the test suite (``COURSE_CLAIMS=strict`` or ``CI`` set), where a speed
    claim that does not reproduce fails; False for a learner in JupyterLab (``COURSE_CLAIMS=warn``
    or unset), where it only warns."""
    mode = os.environ.get("COURSE_CLAIMS", "").strip().lower()
    if mode in ("strict", "warn"):
        return mode == "strict"
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def claim(holds: bool, expected: str, measured: str, *,
          remeasure: Callable[[], tuple[bool, str]] | None = None, attempts: int = 2) -> bool:
    """Check a claim about **speed on this machine**; deterministic claims use a plain ``assert``.

    Timing depends on what else the machine is doing. In CI and under the test suite
    (:func:`claims_are_strict`) a claim that does not hold raises ``AssertionError``; in a
    learner's notebook it prints a visible, explained warning with the measured numbers and
    returns False, so Run All goes on.

    Parameters
    ----------
    holds : bool
        Whether the measurement supports the claim (e.g. ``speedup.low > 1.1``).
    expected : str
        The claim, e.g. ``"int8 is > 1.1x faster than fp32"``.
    measured : str
        What was measured, e.g. ``"1.05x (95% interval 0.98-1.12x)"``.
    remeasure : callable, optional
        ``remeasure() -> (holds, measured)`` runs the measurement again. A claim that fails is
        re-measured up to ``attempts`` times before it fails (a burst of other work on the machine
        should not fail a claim that holds on a quiet one); it holds if any re-measurement holds,
        and the message of a claim that still fails lists every measurement.
    attempts : int, default=2
        How many re-measurements ``remeasure`` gets.

    Examples
    --------
    >>> claim(2.0 > 1.5, "> 1.5x faster", "2.0x")
    True
    >>> claim(0.9 > 1.5, "> 1.5x faster", "0.9x", remeasure=lambda: (2.0 > 1.5, "2.0x"))
    speed claim '> 1.5x faster' held when re-measured: 2.0x (first measurement: 0.9x)
    True
    """
    if holds:
        return True
    check_int("attempts", attempts, 0)
    if remeasure is not None and not callable(remeasure):
        raise TypeError(f"remeasure must be a callable returning (holds, measured), got {type(remeasure).__name__}")
    tries = [measured]
    for _ in range(attempts if remeasure is not None else 0):
        result = remeasure()
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(f"remeasure() must return a tuple (holds, measured), got {result!r}")
        again_holds, again = result
        tries.append(str(again))
        if again_holds:
            print(f"speed claim {expected!r} held when re-measured: {again} (first measurement: {measured})")
            return True
    measured = measured if len(tries) == 1 else "; then ".join(tries) + f" ({len(tries)} measurements)"
    message = f"not reproduced right now: {measured} measured, {expected} expected"
    if claims_are_strict():
        raise AssertionError(message)
    from IPython.display import HTML, display

    display(HTML(f'<div style="border-left:4px solid #d08a00;padding:4px 8px;background:#fff6e0">'
                 f"<b>Speed claim {html.escape(message)}.</b> Timing depends on what else this machine is "
                 "doing: is something else running (a build, a video call, another notebook)? Close it and "
                 "re-run this cell. The notebook goes on either way.</div>"))
    print(f"WARNING: speed claim {message}. Is something else running? Re-run this cell later.")
    return False


def benchmark(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 20,
              device: str | torch.device | None = None, label: str = "",
              min_time_s: float = 0.0, inference: bool = True) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls.

    .. math::  \\text{report } \\mathrm{median}(t_1..t_n) \\text{ and }
               \\mathrm{IQR} = Q_{0.75} - Q_{0.25}

    Parameters
    ----------
    fn : callable with no arguments
        Wrap arguments with a lambda: ``benchmark(lambda: model(x))``.
    warmup : int, default=3
        Untimed calls first: the first call pays for lazy initialisation, memory allocation,
        kernel selection (cuDNN autotuning) and cold caches.
    repeats : int, default=20
        Timed calls; every sample is kept in ``Timing.samples_ms``.
    device : str or torch.device, optional
        Where ``fn`` runs. ``"cuda"``: each sample is measured between two CUDA events
        recorded on the current stream, after a ``torch.cuda.synchronize()``; the host clock
        is never used for GPU work. Default: :func:`default_device`.
    min_time_s : float, default=0
        Keep sampling past ``repeats`` until this much time was spent timing (for very
        fast functions whose single samples are noisy).
    inference : bool, default=True
        Run under ``torch.inference_mode()`` (no autograd bookkeeping). ``False`` for functions that
        take gradients themselves (saliency maps, Integrated Gradients).

    Returns
    -------
    Timing
        samples, median, IQR, min, max, n, device name, ``torch.get_num_threads()``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    check_int("warmup", warmup, 0)
    check_int("repeats", repeats, 1)
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device must be 'cpu' on this machine (no CUDA GPU), got 'cuda'")
    with torch.inference_mode(inference):
        for _ in range(warmup):
            fn()
        samples = _cuda_samples(fn, repeats, min_time_s) if dev.type == "cuda" \
            else _cpu_samples(fn, repeats, min_time_s)
    summary = _summary(samples)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return Timing(samples_ms=samples, median=summary["median"], iqr=summary["iqr"],
                  min=summary["min"], max=summary["max"], n=summary["n"], device=name,
                  threads=torch.get_num_threads(), warmup=warmup, label=label)


def compare(fns: dict[str, Callable[[], object]], *, repeats: int = 3, rounds: int = 10, warmup: int = 3,
            threads: int | dict[str, int] = 1, inference: bool = True) -> dict[str, Timing]:
    """Time several CPU functions in interleaved rounds; pool each one's samples.

    Every function is warmed up, then each round times ``repeats`` calls of each function in turn
    (A A A, B B B, A A A, ...), so a burst of background load on a shared machine hits all of them
    alike; a comparison timed one function after the other can be decided by the load instead.
    ``threads``: one count for all, or one per function (to compare thread counts). One thread by
    default: with two, a kernel waits for its slower thread, and on a busy machine that thread is
    often descheduled. Keep ``repeats`` >= 3: the first call after another function can pay for that
    function's traces (caches, allocator; on a CSR vs dense comparison, single-call rounds distorted the
    ratio several-fold), and the median of blocks of 3 ignores it. ``inference=False`` for functions that
    take gradients (see :func:`benchmark`).
    Returns one :class:`Timing` over ``repeats * rounds`` samples per function; its ``extra`` holds
    ``rounds``, ``repeats`` (for :func:`speedup`'s bootstrap over rounds) and ``process_cores``.
    """
    check_int("rounds", rounds, 1)
    per_fn = threads if isinstance(threads, dict) else {name: threads for name in fns}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        with num_threads(per_fn[name]):
            benchmark(fn, warmup=warmup, repeats=1, device="cpu", inference=inference)
    cpu_s = {name: 0.0 for name in fns}
    wall_s = {name: 0.0 for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            with num_threads(per_fn[name]):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                samples[name] += benchmark(fn, warmup=0, repeats=repeats, device="cpu", inference=inference).samples_ms
                cpu_s[name] += time.process_time() - cpu0
                wall_s[name] += time.perf_counter() - wall0
    out = {}
    for name, values in samples.items():
        s = _summary(values)
        out[name] = Timing(samples_ms=values, median=s["median"], iqr=s["iqr"], min=s["min"], max=s["max"],
                           n=s["n"], device="cpu", threads=per_fn[name], warmup=warmup, label=name,
                           extra={"rounds": rounds, "repeats": repeats,
                                  "process_cores": cpu_s[name] / max(wall_s[name], 1e-9)})
    return out


def speedup_table(fns: dict[str, Callable[[], object]], *, baseline: str | None = None, confidence: float = 0.95,
                  **compare_kwargs) -> list[dict]:
    """:func:`compare` several functions, then one row each: median, IQR and the speed-up over ``baseline``.

    ``baseline`` defaults to the first function. ``speedup`` > 1 means faster than the baseline;
    ``low``/``high`` bound it (:func:`speedup`'s bootstrap interval over rounds). Keyword arguments
    go to :func:`compare` (``repeats``, ``rounds``, ``warmup``, ``threads``).
    """
    runs = compare(fns, **compare_kwargs)
    base = runs[baseline if baseline is not None else next(iter(fns))]
    rows = []
    for name, t in runs.items():
        s = speedup(base, t, confidence=confidence)
        rows.append({"name": name, "median (ms)": t.median, "IQR (ms)": t.iqr, "speedup": s.ratio,
                     "speedup low": s.low, "speedup high": s.high, "threads": t.threads, "timing": t,
                     "interval": s})
    return rows


def first_call(make: Callable[[int], Callable[[], object]], *, rounds: int = 10, warmup: int = 2,
               threads: int = 1) -> dict[str, Timing]:
    """Time **first** calls against warm calls, in interleaved rounds (:func:`compare`).

    ``make(i)`` builds a fresh, never-called function (a new layer, an input shape not seen before);
    every ``"first call"`` sample times one such function's first call, and ``"warm"`` times
    ``make(-1)`` called again and again. Everything is built before timing starts.
    """
    check_int("rounds", rounds, 1)
    fresh = iter([make(i) for i in range(warmup + 1 + rounds)])     # compare's warm-up calls each once more
    warm = make(-1)
    return compare({"first call": lambda: next(fresh)(), "warm": warm}, repeats=1, rounds=rounds,
                   warmup=warmup, threads=threads)


@dataclass(frozen=True)
class Speedup:
    """How many times faster ``b`` ran than ``a`` (:func:`speedup`), with a bootstrap interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    statistic: str = "median"

    def __float__(self) -> float:
        return self.ratio

    def __str__(self) -> str:
        return (f"{self.ratio:.2f}x ({100 * self.confidence:.0f}% interval {self.low:.2f}-{self.high:.2f}x, "
                f"{self.statistic}s)")


def _per_round(t: Timing) -> np.ndarray:
    """Samples as a (rounds, repeats) array when ``t`` came from :func:`compare`, else one sample per row."""
    samples = np.asarray(t.samples_ms, dtype=np.float64)
    rounds = t.extra.get("rounds", 0) if isinstance(t.extra, dict) else 0
    if rounds and samples.size % rounds == 0:
        return samples.reshape(rounds, -1)
    return samples.reshape(-1, 1)


def speedup(a: Timing, b: Timing, *, confidence: float = 0.95, seed: int = 0, n_boot: int = 2000,
            statistic: str = "median") -> Speedup:
    r"""How many times faster ``b`` is than ``a``: the ratio of their medians, with a bootstrap interval.

    .. math::  S = \frac{\mathrm{median}(a)}{\mathrm{median}(b)}, \qquad
               [S_{(1-c)/2},\ S_{(1+c)/2}] \text{ percentiles of } S^{*} \text{ over resampled rounds}

    Timings from :func:`compare` are resampled **by round** and **paired** (round *r* of ``a`` goes
    with round *r* of ``b``: both saw the same background load), so the interval reflects how much the
    answer depends on which rounds were lucky. Other timings are resampled sample by sample.
    ``S > 1``: ``b`` is faster. A claim "b is faster" should rest on ``low``, not on ``ratio``.

    Parameters
    ----------
    a, b : Timing
        The baseline and the candidate.
    confidence : float, default=0.95
        Coverage of the percentile interval, in (0, 1).
    seed : int, default=0
        Seed of the bootstrap (the same timings and seed give the same interval).
    n_boot : int, default=2000
        Bootstrap resamples.
    statistic : {"median", "min"}, default="median"
        ``"min"`` compares the fastest runs (the least disturbed ones on a busy machine).

    Returns
    -------
    Speedup
        ``ratio``, ``low``, ``high``, ``confidence``; ``str()`` gives ``"1.52x (95% interval 1.40-1.66x, medians)"``.

    Examples
    --------
    >>> slow = Timing([2.0, 2.2, 1.9, 2.1], 2.05, 0.15, 1.9, 2.2, 4, "cpu", 1, 0)
    >>> fast = Timing([1.0, 1.1, 0.9, 1.0], 1.0, 0.05, 0.9, 1.1, 4, "cpu", 1, 0)
    >>> round(speedup(slow, fast).ratio, 2)
    2.05

    Taught in: 00_measurement §4 (and every speed claim of the course).
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Timing):
            raise TypeError(f"{name} must be a Timing (from timing.compare or timing.benchmark), got {type(t).__name__}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    check_int("n_boot", n_boot, 1)
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
    stat = np.median if statistic == "median" else np.min
    ra, rb = _per_round(a), _per_round(b)
    ratio = float(stat(ra) / stat(rb))
    rng = np.random.default_rng(seed)
    paired = a.extra.get("rounds") == b.extra.get("rounds") and ra.shape[0] == rb.shape[0] > 1 \
        and ra.shape[1] * rb.shape[1] > 1
    if paired:
        idx = rng.integers(0, ra.shape[0], size=(n_boot, ra.shape[0]))        # paired rounds
        boot_a = stat(ra[idx].reshape(n_boot, -1), axis=1)
        boot_b = stat(rb[idx].reshape(n_boot, -1), axis=1)
    else:
        fa, fb = ra.ravel(), rb.ravel()
        boot_a = stat(fa[rng.integers(0, fa.size, size=(n_boot, fa.size))], axis=1)
        boot_b = stat(fb[rng.integers(0, fb.size, size=(n_boot, fb.size))], axis=1)
    ratios = boot_a / boot_b
    low, high = np.percentile(ratios, [50 * (1 - confidence), 50 * (1 + confidence)])
    return Speedup(ratio=ratio, low=float(min(low, ratio)), high=float(max(high, ratio)),
                   confidence=float(confidence), statistic=statistic)


def _cpu_samples(fn: Callable[[], object], repeats: int, min_time_s: float) -> list[float]:
    samples: list[float] = []
    start_all = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - start_all < min_time_s:
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def _cuda_samples(fn: Callable[[], object], repeats: int, min_time_s: float) -> list[float]:
    samples: list[float] = []
    torch.cuda.synchronize()
    start_all = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - start_all < min_time_s:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))  # milliseconds, measured on the GPU
    return samples


def host_clock_ms(fn: Callable[[], object], *, synchronize: bool) -> float:
    """One call timed with the host clock, with or without waiting for the GPU.

    Exists to *show* the pitfall: on CUDA, ``synchronize=False`` measures only how long the
    launches took to queue. Use :func:`benchmark` for real measurements.
    """
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if synchronize and cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


class OtherLoad:
    """Filled in by :func:`other_load` on exit: ``cores`` other processes kept busy (None if unknown)."""

    cores: float | None = None

    def __repr__(self) -> str:
        return "OtherLoad(unknown)" if self.cores is None else f"OtherLoad({self.cores:.2f} cores)"


def _cpu_busy_s() -> float | None:
    """Seconds of CPU time spent by the whole machine (all cores, all processes), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)           # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def other_load() -> Iterator[OtherLoad]:
    r"""Measure how many cores **other processes** kept busy while the block ran.

    .. math::  \text{cores} = \frac{\Delta(\text{CPU time of the machine}) - \Delta(\text{CPU time of this process})}
               {\Delta(\text{wall time})}

    A claim such as "two threads are faster than one" needs both cores free; this says whether
    they were. Reads ``/proc/stat`` (Linux); elsewhere ``cores`` stays None (unknown).

    Examples
    --------
    >>> with other_load() as load:
    ...     pass
    >>> load.cores is None or load.cores >= 0
    True
    """
    result = OtherLoad()
    machine0, own0, wall0 = _cpu_busy_s(), time.process_time(), time.perf_counter()
    try:
        yield result
    finally:
        machine1, own1, wall1 = _cpu_busy_s(), time.process_time(), time.perf_counter()
        if machine0 is not None and machine1 is not None and wall1 > wall0:
            result.cores = max(0.0, (machine1 - machine0) - (own1 - own0)) / (wall1 - wall0)


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Temporarily run torch's CPU kernels on ``n`` threads (restored on exit)."""
    check_int("n", n, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Floating-point operations of one forward pass ``model(x)``, by ``torch.utils.flop_counter``.

    The counter counts matrix multiplies and convolutions only (2 FLOPs per multiply-accumulate);
    element-wise ops such as ReLU, pooling and bias additions are not counted.
    """
    check_module("model", model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def latency_vs_batch(model: nn.Module, example: torch.Tensor, batch_sizes: Sequence[int], *,
                     repeats: int = 10, warmup: int = 2, device: str | torch.device | None = None,
                     progress: bool = True, threads: int | None = None, rounds: int = 5) -> list[dict]:
    r"""Latency (ms per batch) and throughput (items/s) of ``model`` for each batch size.

    .. math::  \text{throughput}(B) = \frac{B}{\text{latency}(B)}

    ``example`` is one input without the batch dimension; it is repeated to each batch size.
    On the CPU the batch sizes are timed in interleaved rounds by :func:`compare` (``rounds`` rounds,
    ``repeats`` calls in all per batch size, on ``threads`` threads, default: the current setting), so
    background load hits every batch size alike; on CUDA each is timed by :func:`benchmark`.
    Returns one row per batch size: ``batch, median_ms, iqr_ms, items_per_s, device, threads, timing``
    (``timing``: the :class:`Timing`, for :func:`speedup`).
    """
    from tqdm.auto import tqdm

    dev = torch.device(device) if device is not None else default_device()
    model = model.to(dev).eval()
    inputs = {}
    for batch in batch_sizes:
        check_int("batch size", batch, 1)
        inputs[batch] = example.unsqueeze(0).expand(batch, *example.shape).contiguous().to(dev)
    if dev.type == "cpu":
        n_threads = threads if threads is not None else torch.get_num_threads()
        runs = compare({b: (lambda x=x: model(x)) for b, x in inputs.items()}, repeats=max(1, repeats // rounds),
                       rounds=rounds, warmup=warmup, threads=n_threads)
    else:
        runs = {b: benchmark(lambda x=x: model(x), warmup=warmup, repeats=repeats, device=dev)
                for b, x in tqdm(inputs.items(), desc="batch sizes", disable=not progress)}
    return [{"batch": b, "median_ms": t.median, "iqr_ms": t.iqr, "items_per_s": b / (t.median / 1e3),
             "device": t.device, "threads": t.threads, "timing": t} for b, t in runs.items()]
