"""timing.benchmark and the counting helpers."""
import time

import pytest
import torch
from torch import nn

from course_lib import timing


def test_benchmark_keeps_every_sample_and_summarizes_them():
    calls = []
    result = timing.benchmark(lambda: calls.append(1), warmup=2, repeats=7)
    assert len(calls) == 9 and result.n == 7 and len(result.samples_ms) == 7
    assert result.min <= result.median <= result.max
    assert result.device == "cpu" and result.threads == torch.get_num_threads() and result.warmup == 2


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


def test_latency_vs_batch_rows():
    rows = timing.latency_vs_batch(nn.Linear(8, 4), torch.randn(8), [1, 4], repeats=3, warmup=1, progress=False)
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["items_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3)) for r in rows)


def test_compare_interleaves_and_keeps_every_sample():
    order = []
    runs = timing.compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                          repeats=2, rounds=3, warmup=1, threads={"a": 1, "b": 1})
    assert order == ["a", "a", "b", "b"] * 4       # warm-up (1 + 1 call each), then 3 rounds in turn
    assert runs["a"].n == runs["b"].n == 6 and runs["a"].threads == 1
