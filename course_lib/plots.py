"""Plotting helpers shared by the notebooks: each returns ``(fig, ax)`` and never calls ``show()``.

Axes carry units; a method keeps one colour across a chapter (:data:`COLORS`).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["COLORS", "plot_latency_throughput", "plot_timing_samples", "plot_intervals"]

COLORS = {"latency": "tab:blue", "throughput": "tab:orange", "median": "black", "mean": "tab:red",
          "iqr": "tab:gray"}


def plot_latency_throughput(rows: Sequence[dict], title: str = ""):
    """Latency (ms per batch, left axis) and throughput (items/s, right axis) against batch size.

    ``rows`` are :func:`course_lib.timing.latency_vs_batch` rows; the IQR is drawn as error bars.
    """
    batch = np.array([r["batch"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(batch, [r["median_ms"] for r in rows], yerr=[r["iqr_ms"] / 2 for r in rows],
                marker="o", color=COLORS["latency"], label="latency")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="latency per batch (ms)")
    ax.yaxis.label.set_color(COLORS["latency"])
    right = ax.twinx()
    right.plot(batch, [r["items_per_s"] for r in rows], marker="s", color=COLORS["throughput"], label="throughput")
    right.set(yscale="log", ylabel="throughput (items/s)")
    right.yaxis.label.set_color(COLORS["throughput"])
    device = rows[0]["device"] if rows else ""
    ax.set_title(title or f"latency vs throughput ({device}, {rows[0]['threads'] if rows else '?'} threads)")
    fig.tight_layout()
    return fig, ax


def plot_timing_samples(samples_ms: Sequence[float], title: str = "timing samples"):
    """Histogram of repeated timings with the median, the IQR band and the mean."""
    samples = np.asarray(samples_ms, dtype=float)
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(samples, bins=min(40, max(5, samples.size // 3)), color="lightsteelblue")
    ax.axvspan(q25, q75, color=COLORS["iqr"], alpha=0.25, label=f"IQR {q75 - q25:.3f} ms")
    ax.axvline(median, color=COLORS["median"], label=f"median {median:.3f} ms")
    ax.axvline(samples.mean(), color=COLORS["mean"], linestyle="--", label=f"mean {samples.mean():.3f} ms")
    ax.set(xlabel="time per call (ms)", ylabel="count", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def plot_intervals(rows: Sequence[tuple[str, object]], *, xlabel: str, title: str = "",
                   reference: float | None = None, scale: float = 1.0, color: str = "tab:blue"):
    """Estimates with their interval bars, one row per label (dots, never bars from a truncated axis).

    ``rows`` are ``(label, interval)`` pairs; an interval is anything with ``estimate``, ``low`` and
    ``high`` (a :class:`course_lib.stats.Interval`). ``scale`` multiplies all three (100 for points);
    ``reference`` draws a vertical line (0 for differences).
    """
    labels = [label for label, _ in rows]
    est = np.array([float(iv.estimate) for _, iv in rows]) * scale
    low = np.array([float(iv.low) for _, iv in rows]) * scale
    high = np.array([float(iv.high) for _, iv in rows]) * scale
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.32 * len(rows)))
    ax.errorbar(est, y, xerr=[est - low, high - est], fmt="o", color=color, ecolor=color, capsize=3)
    if reference is not None:
        ax.axvline(reference, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.margins(y=0.5 / max(len(rows), 1))
    fig.tight_layout()
    return fig, ax
