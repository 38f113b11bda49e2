"""Timing done right on CPU and GPU, and the counting helpers that go with it.

Every speed claim in the course goes through :func:`benchmark`: it warms up, repeats,
keeps every sample, and reports the median and the interquartile range together with the
device and the number of CPU threads, because a latency without those is not a
measurement. On CUDA it times with CUDA events and synchronizes, since the host clock
only measures how long it took to *queue* the kernels on an asynchronous GPU.

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

__all__ = ["Timing", "benchmark", "compare", "claim", "claims_are_strict", "default_device", "num_threads", "count_flops",
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


def claim(holds: bool, expected: str, measured: str) -> bool:
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

    Examples
    --------
    >>> claim(2.0 > 1.5, "> 1.5x faster", "2.0x")
    True
    """
    if holds:
        return True
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
              min_time_s: float = 0.0) -> Timing:
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
    with torch.inference_mode():
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
            threads: int | dict[str, int] = 1) -> dict[str, Timing]:
    """Time several CPU functions in interleaved rounds; pool each one's samples.

    Every function is warmed up, then each round times ``repeats`` calls of each function in turn
    (A A A, B B B, A A A, ...), so a burst of background load on a shared machine hits all of them
    alike; a comparison timed one function after the other can be decided by the load instead.
    ``threads``: one count for all, or one per function (to compare thread counts). One thread by
    default: with two, a kernel waits for its slower thread, and on a busy machine that thread is
    often descheduled. Returns one :class:`Timing` over ``repeats * rounds`` samples per function.
    """
    check_int("rounds", rounds, 1)
    per_fn = threads if isinstance(threads, dict) else {name: threads for name in fns}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        with num_threads(per_fn[name]):
            benchmark(fn, warmup=warmup, repeats=1, device="cpu")
    for _ in range(rounds):
        for name, fn in fns.items():
            with num_threads(per_fn[name]):
                samples[name] += benchmark(fn, warmup=0, repeats=repeats, device="cpu").samples_ms
    out = {}
    for name, values in samples.items():
        s = _summary(values)
        out[name] = Timing(samples_ms=values, median=s["median"], iqr=s["iqr"], min=s["min"], max=s["max"],
                           n=s["n"], device="cpu", threads=per_fn[name], warmup=warmup, label=name)
    return out


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
                     progress: bool = True) -> list[dict]:
    """Latency (ms per batch) and throughput (items/s) of ``model`` for each batch size.

    ``example`` is one input without the batch dimension; it is repeated to each batch size.
    Returns one row per batch size: ``batch, median_ms, iqr_ms, items_per_s, device, threads``.
    """
    from tqdm.auto import tqdm

    dev = torch.device(device) if device is not None else default_device()
    model = model.to(dev).eval()
    rows = []
    for batch in tqdm(list(batch_sizes), desc="batch sizes", disable=not progress):
        check_int("batch size", batch, 1)
        x = example.unsqueeze(0).expand(batch, *example.shape).contiguous().to(dev)
        t = benchmark(lambda: model(x), warmup=warmup, repeats=repeats, device=dev)
        rows.append({"batch": batch, "median_ms": t.median, "iqr_ms": t.iqr,
                     "items_per_s": batch / (t.median / 1e3), "device": t.device, "threads": t.threads})
    return rows
