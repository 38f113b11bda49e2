"""The chapter 00 references against hand-worked cases and torch's own counters."""
import statistics

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from course_lib import measurement
from course_lib.measurement import conv2d_macs, count_parameters, model_size_bytes, summarize_timings


def test_count_parameters_linear_by_hand():
    assert count_parameters(nn.Linear(3, 2)) == 3 * 2 + 2


def test_count_parameters_tied_weight_counts_once():
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert count_parameters(nn.Sequential(a, b)) == 16


def test_count_parameters_trainable_only_skips_frozen():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 3 + 1
    assert count_parameters(model) == 9 + 4


def test_count_parameters_returns_python_int():
    assert type(count_parameters(nn.Linear(2, 2))) is int


def test_model_size_bytes_batchnorm_by_hand():
    # weight, bias, running_mean, running_var: 4 x 4 float32; num_batches_tracked: one int64
    assert model_size_bytes(nn.BatchNorm2d(4)) == 4 * 4 * 4 + 8


def test_model_size_bytes_uses_each_dtype():
    assert model_size_bytes(nn.Linear(3, 2).half()) == 8 * 2
    assert model_size_bytes(nn.Linear(3, 2).double()) == 8 * 8


def test_model_size_bytes_counts_non_persistent_buffers_and_shared_once():
    layer = nn.Linear(2, 2, bias=False)
    layer.register_buffer("cache", torch.zeros(5), persistent=False)
    model = nn.Sequential(layer, layer)
    assert model_size_bytes(model) == 4 * 4 + 5 * 4


@pytest.mark.parametrize("cin,cout,k,groups,h", [(3, 16, 3, 1, 10), (8, 8, 3, 8, 7), (4, 6, (1, 5), 2, 9), (6, 4, 2, 2, 5)])
def test_conv2d_macs_matches_torch_flop_counter(cin, cout, k, groups, h):
    conv = nn.Conv2d(cin, cout, k, groups=groups, padding=1)
    x = torch.randn(1, cin, h, h)
    with FlopCounterMode(display=False) as counter:
        out = conv(x)
    assert 2 * conv2d_macs(cin, cout, k, out.shape[2], out.shape[3], groups=groups) == counter.get_total_flops()


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=3), "groups must divide"),
    (dict(out_h=0), "out_h must be an int >= 1"),
    (dict(in_channels=-1), "in_channels must be an int >= 1"),
])
def test_conv2d_macs_rejects_bad_sizes(kwargs, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3, out_h=5, out_w=5) | kwargs
    with pytest.raises(ValueError, match=match):
        conv2d_macs(**args)


def test_conv2d_macs_rejects_bool_and_float():
    with pytest.raises(TypeError, match="in_channels must be an int >= 1"):
        conv2d_macs(True, 8, 3, 5, 5)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        conv2d_macs(4, 8, 3.0, 5, 5)


def test_summarize_timings_matches_statistics_module():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 10, 33):
        samples = rng.lognormal(size=n).tolist()
        result = summarize_timings(samples)
        assert result["median"] == pytest.approx(statistics.median(samples), rel=1e-12)
        q = statistics.quantiles(samples, n=4, method="inclusive") if n > 1 else [samples[0]] * 3
        assert result["iqr"] == pytest.approx(q[2] - q[0], rel=1e-12, abs=1e-15)
        assert (result["min"], result["max"], result["n"]) == (min(samples), max(samples), n)


@pytest.mark.parametrize("samples,match", [([], "non-empty"), ([1.0, -1.0], "non-negative"),
                                           ([1.0, float("nan")], "finite"), ([float("inf")], "finite")])
def test_summarize_timings_rejects_bad_samples(samples, match):
    with pytest.raises(ValueError, match=match):
        summarize_timings(samples)


# ----------------------------------------------------------------------------- roofline and tail latency
from course_lib.measurement import (attention_macs, layer_cost, linear_macs, peak_activation_bytes,  # noqa: E402
                                    roofline_time, tail_latency)


def test_roofline_time_closed_forms():
    assert roofline_time(2e9, 1e6, 1e11, 1e10) == pytest.approx(0.02, rel=1e-15)    # compute-bound: 2e9 / 1e11
    assert roofline_time(1e6, 4e8, 1e11, 1e10) == pytest.approx(0.04, rel=1e-15)    # memory-bound: 4e8 / 1e10
    assert roofline_time(5.0, 0.5, 10.0, 1.0) == 0.5                                 # exactly at the ridge: both 0.5
    assert roofline_time(0, 0, 1.0, 1.0) == 0.0


@pytest.mark.parametrize("args,error,match", [
    ((-1.0, 1.0, 1.0, 1.0), ValueError, "flops must be"), ((1.0, 1.0, 0.0, 1.0), ValueError, "peak_flops must be"),
    ((1.0, 1.0, 1.0, float("nan")), ValueError, "bandwidth must be"), ((True, 1.0, 1.0, 1.0), TypeError, "flops")])
def test_roofline_time_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        roofline_time(*args)


def test_attention_macs_match_flop_counter_and_grow_quadratically():
    T, d = 50, 32
    q, k, v, o = (nn.Linear(d, d, bias=False) for _ in range(4))
    x = torch.randn(1, T, d)
    with FlopCounterMode(display=False) as counter:
        scores = q(x) @ k(x).transpose(1, 2)                       # (1, T, T): T*T*d MACs
        o(scores.softmax(-1) @ v(x))                               # (1, T, d): T*T*d MACs
    assert 2 * attention_macs(T, d) == counter.get_total_flops()
    assert attention_macs(2 * T, d, projections=False) == 4 * attention_macs(T, d, projections=False)
    assert linear_macs(d, 3 * d, tokens=T) == T * d * 3 * d


def test_layer_cost_linear_and_depthwise_by_hand():
    cost = layer_cost(nn.Linear(8, 4), (3, 8))
    assert cost["FLOPs"] == 2 * 3 * 8 * 4
    assert cost["bytes"] == 4 * (3 * 8 + 3 * 4 + 8 * 4 + 4)
    dw = layer_cost(nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False), (1, 2, 5, 5))
    assert dw["FLOPs"] == 2 * 2 * 5 * 5 * 9 and dw["bytes"] == 4 * (50 + 50 + 18)
    relu = layer_cost(nn.ReLU(), (10,))
    assert relu["FLOPs"] == 10 and relu["intensity (FLOP/B)"] == pytest.approx(10 / 80)


def _random_layer(rng):
    """A Linear, ReLU or Conv2d (stride, padding, dilation, groups, bias, dtype drawn) and an input shape."""
    dtype = [torch.float32, torch.float32, torch.float64, torch.float16][rng.integers(4)]
    kind = rng.integers(3)
    if kind == 0:
        n_in = int(rng.integers(1, 64))
        lead = [int(v) for v in rng.integers(1, 9, rng.integers(0, 3))]
        return nn.Linear(n_in, int(rng.integers(1, 64)), bias=bool(rng.integers(2))).to(dtype), (*lead, n_in)
    if kind == 1:
        return nn.ReLU(), tuple(int(v) for v in rng.integers(1, 9, rng.integers(1, 5)))
    g = int(rng.choice([1, 2, 3]))
    k, d = tuple(int(v) for v in rng.integers(1, 5, 2)), int(rng.integers(1, 3))
    conv = nn.Conv2d(g * int(rng.integers(1, 5)), g * int(rng.integers(1, 5)), k, groups=g, dilation=d,
                     stride=tuple(int(v) for v in rng.integers(1, 4, 2)), padding=int(rng.integers(0, 3)),
                     bias=bool(rng.integers(2))).to(dtype)
    side = [max(int(rng.integers(3, 20)), d * (kk - 1) + 1) for kk in k]
    return conv, (int(rng.integers(1, 4)), conv.in_channels, *side)


@pytest.mark.parametrize("seed", range(40))
def test_arithmetic_intensity_matches_flop_counter_and_tensor_nbytes(seed):
    """Independent counts: FLOPs from torch's FlopCounterMode on a real forward pass (2 per MAC, no bias,
    nothing for ReLU, whose 1 FLOP per element is added), bytes from the nbytes of the tensors that pass run."""
    from course_lib.measurement import arithmetic_intensity

    layer, shape = _random_layer(np.random.default_rng(seed))
    dtype = layer.weight.dtype if hasattr(layer, "weight") else torch.float32
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = layer(x)
    flops = counter.get_total_flops() + (y.numel() if isinstance(layer, nn.ReLU) else 0)
    moved = x.nbytes + y.nbytes + sum(p.nbytes for p in layer.parameters())
    got = arithmetic_intensity(layer, shape)
    assert got == {"flops": flops, "bytes": moved, "intensity": pytest.approx(flops / moved, rel=1e-12)}
    assert type(got["flops"]) is int and type(got["bytes"]) is int and type(got["intensity"]) is float


def test_arithmetic_intensity_by_hand_and_errors():
    from course_lib.measurement import arithmetic_intensity

    assert arithmetic_intensity(nn.Linear(3, 2), (4, 3)) == {"flops": 48, "bytes": 112, "intensity": 48 / 112}
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)          # 9x9 -> 5x5: (9 + 2 - 3) // 2 + 1
    assert arithmetic_intensity(conv, (1, 4, 9, 9))["flops"] == 2 * 6 * 5 * 5 * 4 * 9
    dw = nn.Conv2d(64, 64, 3, padding=1, groups=64).double()
    assert arithmetic_intensity(dw, (1, 64, 8, 8))["bytes"] == 8 * (2 * 64 * 64 + 64 * 9 + 64)
    with pytest.raises(ValueError, match="in_features=4"):
        arithmetic_intensity(nn.Linear(4, 3), (2, 5))
    with pytest.raises(ValueError, match="does not fit"):
        arithmetic_intensity(nn.Conv2d(3, 4, 5), (1, 3, 3, 3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        arithmetic_intensity(nn.Conv2d(3, 4, 3), (3, 8, 8))
    with pytest.raises(TypeError, match="nn.Linear, nn.Conv2d or nn.ReLU"):
        arithmetic_intensity(nn.BatchNorm2d(4), (1, 4, 5, 5))
    with pytest.raises(TypeError, match="input_shape"):
        arithmetic_intensity(nn.ReLU(), 5)


def test_peak_activation_bytes_by_hand():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    assert peak_activation_bytes(model, torch.zeros(2, 10)) == 4 * (2 * 20 + 2 * 20)   # the ReLU: in + out


def test_tail_latency_matches_numpy_percentiles_by_hand():
    samples = list(range(1, 101))                                  # 1..100 ms: p50 = 50.5, p99 = 99.01
    out = tail_latency(samples)
    assert out == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.05), "p99": pytest.approx(99.01)}


def test_roofline_rows_bound_is_the_closed_form():
    rows = measurement.roofline_rows({"relu": (nn.ReLU(), (1000,))}, peak=1e9, bandwidth=1e9, rounds=1)
    (row,) = rows
    assert row["bound"] == "memory" and row["FLOPs"] == 1000 and row["bytes"] == 8000
    assert row["roofline (ms)"] == pytest.approx(8000 / 1e9 * 1e3)           # bytes / bandwidth, in ms
    assert row["fraction of roofline"] == pytest.approx(row["roofline (ms)"] / row["measured (ms)"])


def test_roofline_rows_compute_bound_linear_by_hand():
    # Linear 256 -> 256 on a batch of 256: 2 * 256^3 FLOPs; bytes = (input + weight + output) 3 * 256^2 floats
    # + 256 bias floats, 4 bytes each. At 1 GFLOP/s and 1 TB/s: compute-bound, 33.554432 ms.
    (row,) = measurement.roofline_rows({"lin": (nn.Linear(256, 256), (256, 256))}, peak=1e9, bandwidth=1e12, rounds=1)
    assert (row["FLOPs"], row["bytes"], row["bound"]) == (2 * 256 ** 3, (3 * 256 * 256 + 256) * 4, "compute")
    assert row["roofline (ms)"] == pytest.approx(33.554432)
    assert row["intensity (FLOP/B)"] == pytest.approx(2 * 256 ** 3 / ((3 * 256 * 256 + 256) * 4))


def test_attention_flop_count_by_hand():
    # T = 3 tokens of width d = 2: four projections 4 * (3 * 2 * 2) = 48 MACs; QK^T (3x2 @ 2x3) and AV (3x3 @ 3x2)
    # 3 * 3 * 2 = 18 MACs each.
    assert measurement.attention_flop_count(3, 2) == {"projections": 48, "QK^T + AV": 36}


def test_attention_flop_count_same_for_any_number_of_heads():
    # h heads of width d/h: h * T^2 * d/h = T^2 d, so splitting into heads changes no count.
    counts = {h: measurement.attention_flop_count(10, 8, heads=h) for h in (1, 2, 4, 8)}
    assert all(c == {"projections": 4 * 10 * 8 * 8, "QK^T + AV": 2 * 10 * 10 * 8} for c in counts.values())


@pytest.mark.parametrize("T,d", [(1, 1), (5, 3), (50, 32), (200, 16)])
def test_attention_macs_closed_form_equals_the_count(T, d):
    counted = measurement.attention_flop_count(T, d)
    assert attention_macs(T, d) == counted["projections"] + counted["QK^T + AV"]
    assert attention_macs(T, d, projections=False) == counted["QK^T + AV"]


@pytest.mark.parametrize("kwargs,error,match", [(dict(seq_len=0), ValueError, "seq_len must be"),
                                                (dict(heads=3), ValueError, "heads must divide"),
                                                (dict(d_model=2.0), TypeError, "d_model must be")])
def test_attention_flop_count_rejects_bad_sizes(kwargs, error, match):
    with pytest.raises(error, match=match):
        measurement.attention_flop_count(**(dict(seq_len=4, d_model=8) | kwargs))


def test_largest_cache_bytes_reads_each_unit(tmp_path):
    for index, size in enumerate(["48K", "2048K", "32M", "512"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert measurement.largest_cache_bytes(tmp_path) == 32 * 2 ** 20
    assert measurement.largest_cache_bytes(tmp_path / "absent") is None


def test_roofline_study_measures_peak_and_bandwidth_in_the_same_rounds():
    study = measurement.roofline_study({"relu": (nn.ReLU(), (4096,))}, gemm_n=64, stream_numel=4096, rounds=2,
                                       repeats=3)
    runs = study["runs"]
    assert set(runs) == {"GEMM (peak P)", "stream copy (bandwidth B)", "relu"}
    assert all(t.extra["rounds"] == 2 and t.n == 6 for t in runs.values())           # one interleaved comparison
    assert study["peak"] == pytest.approx(2 * 64 ** 3 / (runs["GEMM (peak P)"].min / 1e3))      # 2 n^3 FLOPs, fastest
    assert study["bandwidth"] == pytest.approx(8 * 4096 / (runs["stream copy (bandwidth B)"].min / 1e3))  # read + write
    (row,) = study["rows"]
    bound_ms = max(4096 / study["peak"], 8 * 4096 / study["bandwidth"]) * 1e3
    assert row["roofline (ms)"] == pytest.approx(bound_ms)
    assert row["fraction of roofline"] == pytest.approx(bound_ms / runs["relu"].median)


@pytest.mark.parametrize("kwargs,error", [(dict(layers={}), ValueError), (dict(gemm_n=2.0), TypeError),
                                          (dict(stream_numel=10), ValueError)])
def test_roofline_study_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        measurement.roofline_study(**({"layers": {"relu": (nn.ReLU(), (8,))}} | kwargs))


def test_first_and_second_call_calls_each_fresh_function_exactly_twice_in_order():
    log = []

    def make(i):
        return lambda: log.append(i)

    runs = measurement.first_and_second_call(make, rounds=5)
    assert runs["first call"].n == runs["second call"].n == 5
    assert log[:3] == [0, 1, 2] and all(v == 2 for v in log[3:6])         # warm-up: first arm, then second arm
    timed = log[6:]
    assert timed == [v for i in range(3, 8) for v in (i, i)]               # each round: the same function twice


def test_plot_roofline_draws_the_roof_and_one_point_per_layer():
    rows = [{"name": "a", "intensity (FLOP/B)": 0.5, "attained GFLOP/s": 1.0},
            {"name": "b", "intensity (FLOP/B)": 50.0, "attained GFLOP/s": 20.0}]
    fig, ax = measurement.plot_roofline(rows, peak=40e9, bandwidth=10e9)
    roof = ax.lines[0]
    x, y = roof.get_xdata(), roof.get_ydata()
    assert np.allclose(y, np.minimum(40.0, x * 10.0))                      # min(P, I B) in GFLOP/s
    assert ax.get_xscale() == ax.get_yscale() == "log" and len(ax.lines) == 2 + len(rows)


def test_profile_ops_counts_each_operator_per_call():
    layer = nn.Linear(8, 4)
    table = measurement.profile_ops(lambda: layer(torch.zeros(2, 8)), calls=7, warmup=1)
    assert "aten::linear" in table.index and table.loc["aten::linear", "calls"] == 7     # one per call, none in warm-up
    assert (table["total µs per call"] >= table["self µs per call"] - 1e-9).all()       # total includes the self time
    assert table["self µs per call"].is_monotonic_decreasing
