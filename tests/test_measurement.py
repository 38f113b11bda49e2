"""The chapter 00 references against hand-worked cases and torch's own counters."""
import statistics

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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
