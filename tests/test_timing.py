"""timing.benchmark and the counting helpers."""
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import timing


def test_benchmark_keeps_every_sample_and_summarizes_them():
    calls = []
    result = timing.benchmark(lambda: calls.append(1), warmup=2, repeats=7)
    assert len(calls) == 9 and result.n == 7 and len(result.samples_ms) == 7
    assert result.device == "cpu" and result.threads == torch.get_num_threads() and result.warmup == 2


def test_benchmark_summary_of_known_samples_by_hand(monkeypatch):
    # Samples 3, 1, 10, 2 ms: sorted 1, 2, 3, 10; median (2 + 3) / 2 = 2.5; linear quartiles at h = 0.75 and
    # 2.25: Q1 = 1 + 0.75 * (2 - 1) = 1.75, Q3 = 3 + 0.25 * (10 - 3) = 4.75, IQR 3.0; min 1, max 10.
    monkeypatch.setattr(timing, "_cpu_samples", lambda fn, repeats, min_time_s: [3.0, 1.0, 10.0, 2.0])
    result = timing.benchmark(lambda: None, warmup=0, repeats=4, device="cpu")
    assert result.samples_ms == [3.0, 1.0, 10.0, 2.0]
    assert (result.median, result.iqr, result.min, result.max, result.n) == (2.5, pytest.approx(3.0), 1.0, 10.0, 4)


def test_benchmark_measures_a_known_duration():
    result = timing.benchmark(lambda: time.sleep(0.004), warmup=1, repeats=5)
    assert 4.0 <= result.median < 40.0


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        timing.benchmark(lambda: None, repeats=0)
    with pytest.raises(TypeError, match="fn must be a callable"):
        timing.benchmark(42)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_benchmark_refuses_cuda_without_a_gpu():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        timing.benchmark(lambda: None, device="cuda")


def test_count_flops_linear_is_two_per_mac():
    assert timing.count_flops(nn.Linear(64, 10), torch.randn(3, 64)) == 2 * 3 * 64 * 10


def test_num_threads_restores_the_setting():
    before = torch.get_num_threads()
    with timing.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_latency_vs_batch_times_the_model_on_each_batch_size():
    seen = []
    model = nn.Linear(8, 4)
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    rows = timing.latency_vs_batch(model, torch.randn(8), [1, 4], repeats=3, warmup=1, progress=False)
    assert [r["batch"] for r in rows] == [1, 4]
    assert set(seen) == {(1, 8), (4, 8)}                   # the example, batched, and nothing else


def test_latency_vs_batch_throughput_with_a_known_clock(monkeypatch):
    """If batch 1 takes 2 ms and batch 4 takes 4 ms, throughput is 500 and 1000 items/s."""
    known = {1: 2.0, 4: 4.0}

    def fake_compare(fns, **kwargs):
        return {b: timing.Timing([known[b]], known[b], 0.0, known[b], known[b], 1, "cpu", 1, 0) for b in fns}
    monkeypatch.setattr(timing, "compare", fake_compare)
    rows = timing.latency_vs_batch(nn.Linear(8, 4), torch.randn(8), [1, 4], progress=False, device="cpu")
    assert [(r["batch"], r["items_per_s"]) for r in rows] == [(1, pytest.approx(500.0)), (4, pytest.approx(1000.0))]


def test_compare_interleaves_and_keeps_every_sample():
    order = []
    runs = timing.compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                          repeats=2, rounds=3, warmup=1, threads={"a": 1, "b": 1})
    assert order == ["a", "a", "b", "b"] * 4       # warm-up (1 + 1 call each), then 3 rounds in turn
    assert runs["a"].n == runs["b"].n == 6 and runs["a"].threads == 1


def _timing(samples, rounds=None):
    """A Timing over given samples; ``rounds`` marks them as interleaved rounds (as compare makes them)."""
    s = timing._summary(samples)
    extra = {"rounds": rounds, "repeats": len(samples) // rounds} if rounds else {}
    return timing.Timing(list(samples), s["median"], s["iqr"], s["min"], s["max"], s["n"], "cpu", 1, 0, extra=extra)


def test_speedup_of_identical_samples_is_one_and_its_interval_contains_one():
    samples = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.3, 1.0, 0.98, 1.02, 1.1, 0.97]
    for rounds in (None, 4):
        s = timing.speedup(_timing(samples, rounds), _timing(samples, rounds))
        assert s.ratio == 1.0 and s.low <= 1.0 <= s.high


def test_speedup_interval_of_a_two_times_slower_function_lies_above_1_5():
    # sleeping is the least load-sensitive "work": a wake-up delay of a few ms on a busy machine keeps the ratio > 1.5
    runs = timing.compare({"slow": lambda: time.sleep(0.020), "fast": lambda: time.sleep(0.010)},
                          repeats=3, rounds=5, warmup=1)
    s = timing.speedup(runs["slow"], runs["fast"])
    assert s.low > 1.5 and s.low <= s.ratio <= s.high, s
    assert "interval" in str(s) and s.confidence == 0.95


def test_speedup_interval_of_noisy_samples_two_times_apart():
    rng = __import__("numpy").random.default_rng(0)
    noise = rng.lognormal(0.0, 0.2, size=(2, 30))                        # right-skewed, like real timings
    slow, fast = _timing(list(2.0 * noise[0]), 10), _timing(list(1.0 * noise[1]), 10)
    s = timing.speedup(slow, fast)
    assert 1.5 < s.low < s.ratio < s.high < 2.7, s


def test_speedup_is_the_ratio_of_medians_and_reproducible():
    a, b = _timing([2.0, 4.0, 3.0, 3.5, 2.5], 5), _timing([1.0, 2.0, 1.5, 1.75, 1.25], 5)
    s = timing.speedup(a, b)
    assert s.ratio == 3.0 / 1.5 and s == timing.speedup(a, b)     # same seed, same interval
    assert timing.speedup(a, b, statistic="min").ratio == 2.0


def test_speedup_rejects_bad_arguments():
    t = _timing([1.0, 2.0])
    with pytest.raises(TypeError, match="a must be a Timing"):
        timing.speedup(1.0, t)
    with pytest.raises(ValueError, match=r"confidence must be a float in \(0, 1\)"):
        timing.speedup(t, t, confidence=1.5)
    with pytest.raises(ValueError, match="statistic must be"):
        timing.speedup(t, t, statistic="mean")


def test_compare_records_rounds_for_the_bootstrap():
    runs = timing.compare({"a": lambda: None}, repeats=2, rounds=3, warmup=0)
    assert runs["a"].extra["rounds"] == 3 and runs["a"].extra["repeats"] == 2


def test_compare_without_inference_mode_lets_functions_take_gradients():
    x = torch.ones(3, requires_grad=True)
    runs = timing.compare({"grad": lambda: torch.autograd.grad((x * x).sum(), x)}, repeats=1, rounds=2, warmup=1,
                          inference=False)
    assert runs["grad"].n == 2


def test_first_call_times_fresh_functions_once_each():
    calls = []

    def make(i):
        return lambda: calls.append(i)

    runs = timing.first_call(make, rounds=4, warmup=1)
    fresh = [c for c in calls if c >= 0]
    assert len(fresh) == len(set(fresh)) == 1 + 1 + 4             # warm-up, compare's extra call, 4 rounds
    assert runs["first call"].n == runs["warm"].n == 4


def test_speedup_table_rows_are_relative_to_the_first_function():
    rows = timing.speedup_table({"slow": lambda: time.sleep(0.002), "same": lambda: time.sleep(0.002)},
                                repeats=1, rounds=3, warmup=0)
    assert [r["name"] for r in rows] == ["slow", "same"] and rows[0]["speedup"] == 1.0
    assert rows[1]["speedup low"] <= rows[1]["speedup"] <= rows[1]["speedup high"]


def test_other_load_is_machine_time_minus_own_time_over_wall_time(monkeypatch):
    # The machine spent 3.5 s of CPU, this process 1.0 s of it, in 1.25 s of wall time: 2 other cores busy.
    machine, clock = iter([100.0, 103.5]), types.SimpleNamespace(process_time=iter([5.0, 6.0]).__next__,
                                                                   perf_counter=iter([10.0, 11.25]).__next__)
    monkeypatch.setattr(timing, "_cpu_busy_s", lambda: next(machine))
    monkeypatch.setattr(timing, "time", clock)
    with timing.other_load() as load:
        pass
    assert load.cores == pytest.approx(2.0)


def test_other_load_sees_a_busy_process_beside_it():
    if not os.path.exists("/proc/stat"):
        pytest.skip("other_load reads /proc/stat (Linux)")
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 0.8\nwhile time.time() < end: pass"])
    try:
        with timing.other_load() as load:
            time.sleep(0.6)
    finally:
        busy.wait()
    assert load.cores is not None and load.cores > 0.5


def test_claim_asserts_when_strict_and_warns_a_learner(monkeypatch, capsys):
    assert timing.claim(True, "> 2x", "3x") is True
    monkeypatch.setenv("COURSE_CLAIMS", "strict")
    with pytest.raises(AssertionError, match="not reproduced right now: 1.05x measured, > 1.1x expected"):
        timing.claim(False, "> 1.1x", "1.05x")
    monkeypatch.setenv("COURSE_CLAIMS", "warn")
    assert timing.claim(False, "> 1.1x", "1.05x") is False
    assert "Is something else running?" in capsys.readouterr().out


def test_claim_remeasures_before_it_fails(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CLAIMS", "strict")
    results = iter([(False, "1.02x"), (True, "1.30x")])
    calls = []

    def remeasure():
        calls.append(1)
        return next(results)

    # fails first, fails again, holds on the second re-measurement: the claim holds, and says so
    assert timing.claim(False, "> 1.1x", "1.05x", remeasure=remeasure, attempts=2) is True
    assert len(calls) == 2
    assert "held when re-measured: 1.30x (first measurement: 1.05x)" in capsys.readouterr().out
    # a claim that holds at once is never re-measured
    assert timing.claim(True, "> 1.1x", "1.3x", remeasure=lambda: pytest.fail("re-measured a claim that held")) is True
    # every re-measurement fails: the message lists all three measurements
    with pytest.raises(AssertionError, match=r"1.05x; then 1.01x; then 1.01x \(3 measurements\) measured, > 1.1x expected"):
        timing.claim(False, "> 1.1x", "1.05x", remeasure=lambda: (False, "1.01x"), attempts=2)
    with pytest.raises(TypeError, match="remeasure must be a callable"):
        timing.claim(False, "> 1.1x", "1.05x", remeasure="again")
    with pytest.raises(TypeError, match=r"must return a tuple \(holds, measured\)"):
        timing.claim(False, "> 1.1x", "1.05x", remeasure=lambda: True)
    with pytest.raises(ValueError, match="attempts"):
        timing.claim(False, "> 1.1x", "1.05x", remeasure=lambda: (True, "2x"), attempts=-1)


def test_claims_are_strict_in_ci_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("COURSE_CLAIMS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert timing.claims_are_strict()
    monkeypatch.setenv("CI", "")
    assert not timing.claims_are_strict()
    monkeypatch.setenv("COURSE_CLAIMS", "strict")
    assert timing.claims_are_strict()
