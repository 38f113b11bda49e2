"""Chapter 02's references against the oracles: torch's observers, quantize_per_tensor and fake_quantize
(values and gradients), closed forms and hand-worked tiny cases."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from course_lib import models, quantization as Q

# torch.quantize_per_tensor (the oracle) warns that quantized dtypes are deprecated; the values are what we test.
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


def away_from_ties(n, scale, lo, hi, seed):
    """float32 values scale * (k + f), |f| in [0.05, 0.45]: no rounding near-ties."""
    rng = np.random.default_rng(seed)
    k = rng.integers(lo, hi + 1, size=n)
    f = rng.uniform(0.05, 0.45, size=n) * rng.choice([-1, 1], size=n)
    return torch.tensor(scale * (k + f), dtype=torch.float32)


def observer_qparams(x, symmetric, per_channel=False, axis=0):
    kw = dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric) \
        if symmetric else dict(dtype=torch.quint8, qscheme=torch.per_channel_affine if per_channel else
                               torch.per_tensor_affine)
    obs = PerChannelMinMaxObserver(ch_axis=axis, **kw) if per_channel else MinMaxObserver(**kw)
    obs(x)
    return obs.calculate_qparams()


# ----------------------------------------------------------------------------- minmax_qparams
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_minmax_qparams_matches_minmax_observer(symmetric, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=gen) * 10 ** (seed % 3 - 1) + (seed - 2.5)
    scale, zero_point = Q.minmax_qparams(x, 8, symmetric)
    s_ref, z_ref = observer_qparams(x, symmetric)
    assert type(scale) is float and type(zero_point) is int
    assert math.isclose(scale, s_ref.item(), rel_tol=1e-6)
    assert zero_point == z_ref.item()


@pytest.mark.parametrize("values", [[0.0, 0.0], [0.5, 2.0, 3.0], [-3.0, -1.0], [-2.5, 252.5], [-3.5, 251.5]])
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_qparams_edge_cases_match_observer(values, symmetric):
    x = torch.tensor(values)
    scale, zero_point = Q.minmax_qparams(x, 8, symmetric)
    s_ref, z_ref = observer_qparams(x, symmetric)
    assert math.isclose(scale, s_ref.item(), rel_tol=1e-6) and zero_point == z_ref.item()


def test_minmax_qparams_closed_forms():
    assert Q.minmax_qparams(torch.tensor([-2.5, 252.5])) == (1.0, 2)          # -round(-2.5) = 2: half to even
    assert Q.minmax_qparams(torch.tensor([-3.5, 251.5])) == (1.0, 4)
    assert Q.minmax_qparams(torch.zeros(3)) == (2.0 ** -23, 0)                 # eps floor, no division by zero
    assert Q.minmax_qparams(torch.tensor([-3.0, -1.0])) == (3.0 / 255, 255)   # all negative: top code
    assert Q.minmax_qparams(torch.tensor([-1.0, 0.5]), symmetric=True) == (1.0 / 127.5, 0)
    scale, zp = Q.minmax_qparams(torch.tensor([-0.3, 1.2]), num_bits=4)
    assert math.isclose(scale, 0.1, rel_tol=1e-6) and zp == 3


@pytest.mark.parametrize("num_bits", [2, 3, 4, 8, 16])
def test_minmax_qparams_maps_range_onto_all_codes(num_bits):
    x = torch.tensor([-0.7, 0.1, 2.3])
    scale, zp = Q.minmax_qparams(x, num_bits)
    q = Q.quantize_affine(x, scale, zp, num_bits)
    assert q.max() - q.min() >= 2 ** num_bits - 2          # the zero point's rounding may shift the grid by < 1 step
    assert (Q.dequantize_affine(q, scale, zp) - x).abs().max() <= scale / 2 * (1 + 1e-5)


@pytest.mark.parametrize("bad,match", [(dict(num_bits=1), "num_bits must be an int >= 2"),
                                       (dict(num_bits=17), r"num_bits must be an int in \[2, 16\]")])
def test_minmax_qparams_rejects_bad_bits(bad, match):
    with pytest.raises(ValueError, match=match):
        Q.minmax_qparams(torch.ones(3), **bad)


def test_minmax_qparams_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="x must be a non-empty tensor"):
        Q.minmax_qparams(torch.tensor([]))
    with pytest.raises(ValueError, match="x must not contain nan"):
        Q.minmax_qparams(torch.tensor([1.0, math.nan]))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        Q.minmax_qparams(torch.tensor([1, 2]))


# ----------------------------------------------------------------------------- quantize / dequantize
@pytest.mark.parametrize("dtype,zero_point,signed", [(torch.quint8, 128, False), (torch.quint8, 7, False),
                                                     (torch.qint8, 0, True), (torch.qint8, -5, True)])
@pytest.mark.parametrize("scale", [0.1, 0.0123, 2 ** -4])
def test_quantize_affine_matches_quantize_per_tensor(dtype, zero_point, signed, scale):
    qmin, qmax = Q.code_range(8, signed)
    x = away_from_ties(997, scale, qmin - zero_point - 5, qmax - zero_point + 5, seed=int(1e4 * scale))
    ref = torch.quantize_per_tensor(x, scale, zero_point, dtype)
    q = Q.quantize_affine(x, scale, zero_point, 8, signed)
    assert q.dtype == torch.int64
    torch.testing.assert_close(q, ref.int_repr().to(torch.int64), rtol=0, atol=0)
    torch.testing.assert_close(Q.dequantize_affine(ref.int_repr(), scale, zero_point), ref.dequantize())


def test_quantize_affine_ties_round_half_to_even_like_torch():
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, -1.25])
    expected = torch.tensor([10, 12, 12, 10, 8, 8])
    torch.testing.assert_close(Q.quantize_affine(x, 0.5, 10), expected)
    torch.testing.assert_close(torch.quantize_per_tensor(x, 0.5, 10, torch.quint8).int_repr().long(), expected)


def test_quantize_per_tensor_differs_by_at_most_one_code_and_only_near_ties():
    """torch rounds fma(x, 1/scale, zero_point) in float32; our rule is round(x / scale) + zero_point."""
    scale, zp = 0.1, 128
    x = (torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 250 - 125) * scale
    x = torch.cat([x, ((torch.arange(-128, 128, dtype=torch.float64) + 0.5) * scale).float()])   # nominal ties
    ours = Q.quantize_affine(x, scale, zp)
    theirs = torch.quantize_per_tensor(x, scale, zp, torch.quint8).int_repr().long()
    diff = (ours - theirs).abs()
    assert diff.max() <= 1 and diff.float().mean() < 1e-3
    t = (x.double() / scale)[diff > 0]
    assert ((t - t.floor() - 0.5).abs() < 1e-4).all()                     # every disagreement is a near-tie


def test_round_trip_error_is_at_most_half_a_step_inside_and_clipping_outside():
    scale, zp = Q.minmax_qparams(torch.tensor([-1.0, 1.0]), 8)
    x = torch.linspace(-3, 3, 6001)
    x_hat = Q.dequantize_affine(Q.quantize_affine(x, scale, zp), scale, zp)
    lo, hi = scale * (0 - zp), scale * (255 - zp)
    inside = (x >= lo) & (x <= hi)
    assert (x_hat - x)[inside].abs().max() <= scale / 2 + 1e-6
    torch.testing.assert_close(x_hat[~inside], torch.where(x[~inside] < lo, lo, hi).float())


def test_quantize_affine_closed_forms_and_inf():
    torch.testing.assert_close(Q.quantize_affine(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]), 0.25, 0, 4, signed=True),
                               torch.tensor([-8, -4, 0, 4, 7]))
    torch.testing.assert_close(Q.quantize_affine(torch.tensor([math.inf, -math.inf]), 0.25, 3, 3),
                               torch.tensor([7, 0]))


@pytest.mark.parametrize("args,match", [((0.0, 0), "scale must be a finite float > 0"),
                                        ((math.nan, 0), "scale must be a finite float > 0"),
                                        ((0.1, 256), r"zero_point must be an int in \[0, 255\]"),
                                        ((0.1, -1), r"zero_point must be an int in \[0, 255\]")])
def test_quantize_affine_rejects_bad_qparams(args, match):
    with pytest.raises(ValueError, match=match):
        Q.quantize_affine(torch.ones(2), *args)


def test_dequantize_affine_uint8_codes_do_not_wrap():
    q = torch.tensor([0, 128, 255], dtype=torch.uint8)
    torch.testing.assert_close(Q.dequantize_affine(q, 0.1, 128), torch.tensor([-12.8, 0.0, 12.7]))
    with pytest.raises(ValueError, match="scale must be"):
        Q.dequantize_affine(q, -1.0, 0)
    with pytest.raises(TypeError, match="q must be an integer tensor"):
        Q.dequantize_affine(torch.ones(2), 0.1, 0)


# ----------------------------------------------------------------------------- per_channel_qparams
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [0, 1, 3])
def test_per_channel_qparams_matches_per_channel_observer(symmetric, axis):
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(axis)) * 0.2 + 0.05
    w[2] = 0.0                                                              # an all-zero output channel
    scales, zps = Q.per_channel_qparams(w, axis, 8, symmetric)
    s_ref, z_ref = observer_qparams(w, symmetric, per_channel=True, axis=axis)
    assert scales.dtype == torch.float32 and zps.dtype == torch.int64 and scales.shape == (w.shape[axis],)
    torch.testing.assert_close(scales, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(zps, z_ref.long(), rtol=0, atol=0)


def test_per_channel_qparams_agree_with_minmax_qparams_per_slice():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    for symmetric in (True, False):
        scales, zps = Q.per_channel_qparams(w, -1, 4, symmetric)
        for c in range(7):
            s, z = Q.minmax_qparams(w[:, c], 4, symmetric)
            assert math.isclose(scales[c].item(), s, rel_tol=1e-6) and zps[c].item() == z


def test_per_channel_qparams_rejects_bad_axis():
    with pytest.raises(ValueError, match=r"axis must be an int in \[-2, 1\]"):
        Q.per_channel_qparams(torch.ones(2, 3), axis=2)
    with pytest.raises(ValueError, match="axis must be an int >= -2"):
        Q.per_channel_qparams(torch.ones(2, 3), axis=-3)


# ----------------------------------------------------------------------------- fake_quantize
@pytest.mark.parametrize("num_bits,zero_point", [(8, 3), (8, 128), (4, 8), (2, 0), (3, 7)])
@pytest.mark.parametrize("scale", [0.5, 0.037, 2 ** -6])
def test_fake_quantize_matches_torch_values_and_gradients(num_bits, zero_point, scale):
    qmax = 2 ** num_bits - 1
    x = away_from_ties(500, scale, -zero_point - 4, qmax - zero_point + 4, seed=num_bits + zero_point)
    g = torch.randn(500, generator=torch.Generator().manual_seed(0))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1 = Q.fake_quantize(x1, scale, zero_point, num_bits)
    y2 = torch.fake_quantize_per_tensor_affine(x2, scale, zero_point, 0, qmax)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    assert 0 < (x1.grad == 0).sum() < 500                                 # some values were clipped


def test_fake_quantize_gradient_passes_on_the_last_code_outside_the_real_range():
    x = torch.tensor([126.2, 127.6, -1.6, -2.0], requires_grad=True)      # codes 255, 258, 0, -1 (z = 3)
    Q.fake_quantize(x, 0.5, 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 0.0, 1.0, 0.0]))


def test_fake_quantize_equals_dequantize_of_quantize():
    x = away_from_ties(300, 0.07, -10, 270, seed=3)
    torch.testing.assert_close(Q.fake_quantize(x, 0.07, 5),
                               Q.dequantize_affine(Q.quantize_affine(x, 0.07, 5), 0.07, 5))


# ----------------------------------------------------------------------------- binarize
def test_binarize_hand_worked():
    alpha, b = Q.binarize(torch.tensor([[0.5, -1.5], [0.0, -2.0], [-0.0, 4.0]]))
    torch.testing.assert_close(alpha, torch.tensor([[1.0], [1.0], [2.0]]))
    torch.testing.assert_close(b, torch.tensor([[1.0, -1.0], [1.0, -1.0], [1.0, 1.0]]))


def test_binarize_alpha_is_the_least_squares_scale():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha, b = Q.binarize(w)
    assert alpha.shape == (4, 1, 1, 1) and b.dtype == torch.float64 and set(b.unique().tolist()) <= {-1.0, 1.0}
    best = (w * b).sum(dim=(1, 2, 3), keepdim=True) / b.pow(2).sum(dim=(1, 2, 3), keepdim=True)  # normal equation
    torch.testing.assert_close(alpha, best)


def test_binarize_rejects_vectors():
    with pytest.raises(ValueError, match="w must be a non-empty tensor with at least 2 dims"):
        Q.binarize(torch.ones(3))


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return models.SmallCNN().eval()


def test_rescale_channel_keeps_the_function(cnn):
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    big = Q.rescale_channel(cnn, 3, 10.0)
    torch.testing.assert_close(big(x), cnn(x), rtol=1e-5, atol=1e-5)
    assert big.features[0].weight[3].abs().max() > 5 * cnn.features[0].weight.abs().max()


def test_fake_quant_layers_without_bits_are_the_model(cnn):
    x = torch.rand(8, 1, 8, 8)
    torch.testing.assert_close(Q.prepare_fake_quant(cnn, None, None)(x), cnn(x))
    q16 = Q.calibrate(Q.prepare_fake_quant(cnn, 16, 16, per_channel=True), x)
    torch.testing.assert_close(q16(x), cnn(x), rtol=1e-3, atol=1e-3)


def test_calibrate_mse_range_has_no_larger_error_than_minmax():
    a = torch.cat([torch.rand(5000), torch.tensor([25.0])])               # one outlier
    errors = {}
    for method in ("minmax", "percentile", "mse"):
        lo, hi = Q.activation_range(a, 4, method)
        s, z = Q.minmax_qparams(torch.tensor([lo, hi]), 4)
        errors[method] = float(((Q.fake_quantize(a, s, z, 4) - a) ** 2).mean())
    assert errors["mse"] <= errors["minmax"] and errors["percentile"] < errors["minmax"] / 3
    with pytest.raises(ValueError, match="method must be one of"):
        Q.activation_range(a, 4, "kl")


def test_qat_gradients_reach_the_float_weights(cnn):
    q = Q.prepare_fake_quant(cnn, 2, None)
    q(torch.rand(4, 1, 8, 8)).sum().backward()
    grads = [m.layer.weight.grad for m in q.modules() if isinstance(m, Q.FakeQuantLayer)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_weight_size_bytes_closed_form():
    lin = nn.Sequential(nn.Linear(10, 4))                                 # 40 weights, 4 biases
    assert Q.weight_size_bytes(lin, 8, per_channel=True) == 40 + 4 * 4 + 4 * 4
    assert Q.weight_size_bytes(lin, 2, per_channel=False) == 10 + 4 + 16


def test_dynamic_int8_is_close_and_four_times_smaller():
    torch.manual_seed(0)
    mlp = models.MLP(256, (256,), 10).eval()
    q = Q.dynamic_int8(mlp)
    x = torch.rand(32, 256)
    with torch.no_grad():
        assert (q(x) - mlp(x)).abs().max() < 0.05
    assert 3.0 < Q.state_dict_bytes(mlp) / Q.state_dict_bytes(q) < 4.2


def test_binary_storage_bytes_closed_form():
    sizes = Q.binary_storage_bytes(torch.randn(4, 16))        # 64 weights, 4 alphas
    assert sizes == {"float32": 256, "binary float32": 256 + 16, "binary bool/int8": 64 + 16,
                     "binary packed bits": 8 + 16}


def test_bit_width_sweep_rows_match_torch_per_channel_quantization(cnn):
    x, y = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 10, (64,))
    rows = Q.bit_width_sweep(cnn, x, y, bits=(8, 2))
    assert [r["bits"] for r in rows] == [32, 8, 2]
    layers = [m for m in cnn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    n_weights, n_out = sum(m.weight.numel() for m in layers), sum(m.weight.shape[0] for m in layers)
    n_bias = sum(m.bias.numel() for m in layers)
    assert rows[0]["size_bytes"] == 4 * (n_weights + n_bias)                     # float32: 4 bytes each
    assert rows[1]["size_bytes"] == n_weights + 4 * n_out + 4 * n_bias            # 1 byte + a scale per channel
    assert rows[2]["size_bytes"] == n_weights / 4 + 4 * n_out + 4 * n_bias        # 2 bits = 1/4 byte
    oracle = copy.deepcopy(cnn)                                                   # torch's symmetric per-channel int8
    with torch.no_grad():
        for m in (m for m in oracle.modules() if isinstance(m, (nn.Conv2d, nn.Linear))):
            scales, _ = observer_qparams(m.weight, symmetric=True, per_channel=True)
            q = torch.quantize_per_channel(m.weight, scales.float(), torch.zeros_like(scales).long(), 0, torch.qint8)
            m.weight.copy_(q.dequantize())
    assert rows[1]["accuracy"] == models.evaluate(oracle, x, y)
    assert rows[0]["accuracy"] == models.evaluate(cnn, x, y)
    with torch.no_grad():
        np.testing.assert_array_equal(rows[1]["correct"], (oracle(x).argmax(1) == y).numpy())   # per example


def test_matmul_formats_code_path_on_cpu():
    """The GPU comparison's code runs (tiny, on the CPU) and orders the formats' errors as expected."""
    rows = {r["format"]: r for r in Q.matmul_formats(128, device="cpu", repeats=2)}
    assert {"fp32", "fp16", "bf16", "int8"} <= set(rows) and rows["fp32"]["relative error"] == 0.0
    assert rows["fp16"]["relative error"] < rows["bf16"]["relative error"] < rows["int8"]["relative error"] < 0.1


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
def test_speed_rows_report_the_requested_configuration_and_their_own_ratio(cnn):
    """Rows cover the requested model, label and batch; bytes equal torch's own quantize_dynamic copy; the speed-up
    is exactly the ratio of the two medians the row reports; the int8 error is that of torch's int8 copy."""
    torch.manual_seed(0)
    mlp = models.MLP(128, (128,), 4).eval()
    x = torch.rand(4, 128)
    row = Q.int8_vs_fp32(mlp, x, "small", repeats=2)
    oracle = torch.ao.quantization.quantize_dynamic(copy.deepcopy(mlp), {nn.Linear}, dtype=torch.qint8)
    assert (row["model"], row["batch"], row["threads"]) == ("small", 4, torch.get_num_threads())
    assert row["int8_bytes"] == Q.state_dict_bytes(oracle) and row["fp32_bytes"] == Q.state_dict_bytes(mlp)
    n_params = sum(p.numel() for p in mlp.parameters())
    assert 4 * n_params < row["fp32_bytes"] < 4 * n_params + 4096                     # float32 data + a small header
    assert row["speedup"] == pytest.approx(row["fp32_ms"] / row["other_ms"], rel=1e-12)
    with torch.no_grad():
        assert row["max_abs_diff"] == pytest.approx(float((mlp(x) - oracle(x)).abs().max()), rel=1e-6, abs=1e-9)
    row = Q.bf16_vs_fp32(cnn, torch.rand(2, 1, 8, 8), "cnn", repeats=2)
    assert (row["model"], row["batch"]) == ("cnn", 2)
    assert row["speedup"] == pytest.approx(row["fp32_ms"] / row["other_ms"], rel=1e-12)


def test_plots_contain_the_plotted_points():
    """Each plot holds exactly the hand-computed points: accuracies with their Wilson bars and sizes in KiB,
    the round-trip errors of four hand-worked values, the grid and the title's RMSE and clipped fraction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_lib import stats
    rows = [{"bits": 32, "accuracy": 0.75, "size_bytes": 4096, "correct": np.array([1, 1, 1, 0])},
            {"bits": 4, "accuracy": 0.5, "size_bytes": 512, "correct": np.array([1, 0, 1, 0])},
            {"bits": 2, "accuracy": 0.25, "size_bytes": 256, "correct": np.array([0, 0, 1, 0])}]
    fig, ax = Q.plot_bit_sweep({"m": rows})
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[4, 50], [2, 25]])
    bars = ax.containers[0].lines[2][0].get_segments()                                # one [x, low]-[x, high] per point
    for segment, (k, x) in zip(bars, [(2, 4), (1, 2)]):
        iv = stats.wilson_interval(k, 4)
        np.testing.assert_allclose(segment, [[x, 100 * iv.low], [x, 100 * iv.high]])
    assert any(np.allclose(line.get_ydata(), 75) for line in ax.lines[1:])            # float32's dotted line
    np.testing.assert_allclose(fig.axes[1].lines[0].get_xydata(), [[32, 4.0], [4, 0.5], [2, 0.25]])
    plt.close(fig)

    # 4 bits, scale 0.1, zero point 5: codes [0, 15], values [-0.5, 1.0]
    fig, ax = Q.plot_round_trip_error(torch.tensor([-2.0, 0.04, 0.26, 2.0]), 0.1, 5, 4)
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[-2, 1.5], [0.04, -0.04], [0.26, 0.04], [2, -1.0]], atol=1e-6)
    assert "range [-0.5, 1]" in ax.get_title()
    plt.close(fig)

    # 3 bits signed, scale 0.05: codes [-4, 3], values [-0.2, 0.15]; -0.3 and 0.2 are clipped
    w = torch.tensor([[-0.3, -0.12, 0.0, 0.07, 0.2]])
    fig, ax = Q.plot_quantization_grid(w, 3, 0.05)
    rmse = math.sqrt((0.1 ** 2 + 0.02 ** 2 + 0 + 0.02 ** 2 + 0.05 ** 2) / 5)            # errors by hand
    assert f"RMSE {rmse:.2e}, 40.0 % clipped" in ax.get_title()
    grid = [seg[0][0] for seg in ax.collections[0].get_segments()]
    np.testing.assert_allclose(grid, 0.05 * np.arange(-4, 4), atol=1e-9)
    plt.close(fig)


def test_speed_row_speedup_is_fp32_time_over_the_other(monkeypatch):
    """With a clock that says fp32 takes 3 ms and the other 1 ms, the speed-up is 3 (not 1/3)."""
    from course_lib import timing
    calls = iter([3.0, 1.0])

    def fake_benchmark(fn, **kwargs):
        median = next(calls)
        return timing.Timing([median], median, 0.0, median, median, 1, "cpu", 1, 0)
    monkeypatch.setattr(timing, "benchmark", fake_benchmark)
    row = Q.bf16_vs_fp32(nn.Linear(2, 2), torch.rand(1, 2), repeats=1)
    assert (row["fp32_ms"], row["other_ms"], row["speedup"]) == (3.0, 1.0, 3.0)


# ----------------------------------------------------------------------------- integer-only inference
def _quantized_linear_oracle(q_x, x_zp, q_w, w_scale, x_scale, bias, y_scale, y_zp):
    """torch's int8 Linear (fbgemm/x86): uint8 activations are the int8 codes shifted by 128."""
    import torch.ao.nn.quantized as nnq
    layer = nnq.Linear(q_w.shape[1], q_w.shape[0])
    w = torch._make_per_channel_quantized_tensor(q_w, w_scale.double(), torch.zeros(len(w_scale)).long(), 0)
    layer.set_weight_bias(w, bias)
    layer.scale, layer.zero_point = y_scale, y_zp + 128
    x = torch._make_per_tensor_quantized_tensor((q_x.int() + 128).to(torch.uint8), x_scale, x_zp + 128)
    return (layer(x).int_repr().int() - 128).to(torch.int8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_linear_matches_torch_quantized_linear_within_one_code(seed):
    g = torch.Generator().manual_seed(seed)
    q_x = torch.randint(-128, 128, (8, 32), generator=g, dtype=torch.int8)
    q_w = torch.randint(-127, 128, (6, 32), generator=g, dtype=torch.int8)
    w_scale = torch.rand(6, generator=g) * 0.01 + 0.001
    bias = torch.randn(6, generator=g)
    args = (q_x, -17, q_w, w_scale, 0.02, bias, 0.15, 9)
    ours, torchs = Q.int8_linear(*args), _quantized_linear_oracle(*args)
    assert ours.dtype == torch.int8 and ours.shape == (8, 6)
    assert (ours.int() - torchs.int()).abs().max() <= 1
    assert (ours == torchs).float().mean() > 0.9


def test_int8_linear_hand_worked():
    # x codes [10, 20] with zp 10 -> x = 0.5 * [0, 10] = [0, 5]; w = 0.1 * [2, 3] -> y = 1.5; bias 0.25 -> 1.75
    # acc = 10*2 + 20*3 - 10*(2+3) + round(0.25 / 0.05) = 30 + 5 = 35; M = 0.05 / 0.25 = 0.2 -> 7; + zp 3 -> 10
    q = Q.int8_linear(torch.tensor([[10, 20]], dtype=torch.int8), 10, torch.tensor([[2, 3]], dtype=torch.int8),
                      0.1, 0.5, torch.tensor([0.25]), 0.25, 3)
    assert q.tolist() == [[10]] and q.dtype == torch.int8
    big = Q.int8_linear(torch.tensor([[127]], dtype=torch.int8), 0, torch.tensor([[127]], dtype=torch.int8),
                        1.0, 1.0, None, 1.0, 0)
    assert big.tolist() == [[127]]                                                 # saturates, does not wrap


@pytest.mark.parametrize("args,error,match", [
    ((torch.zeros(2, 3), 0, torch.zeros(2, 3, dtype=torch.int8)), TypeError, "q_x must be an int8 tensor"),
    ((torch.zeros(2, 3, dtype=torch.int8), 0, torch.zeros(2, 4, dtype=torch.int8)), ValueError, "q_w must have shape"),
    ((torch.zeros(2, 3, dtype=torch.int8), 200, torch.zeros(2, 3, dtype=torch.int8)), ValueError, "zero_point")])
def test_int8_linear_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        Q.int8_linear(*args, 0.1, 0.1, None, 0.1, 0)


def test_fold_batchnorm_matches_torch_fuse_conv_bn_eval():
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    conv.eval(), bn.eval()
    ours, torchs = Q.fold_batchnorm(conv, bn), fuse_conv_bn_eval(conv, bn)
    torch.testing.assert_close(ours.weight, torchs.weight)
    torch.testing.assert_close(ours.bias, torchs.bias)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(ours(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M", [0.5, 0.0123, 3e-5, 0.999999])
def test_quantize_multiplier_closed_form_and_integer_requantization(M):
    m0, shift = Q.quantize_multiplier(M)
    assert 2 ** 30 <= m0 < 2 ** 31 and m0 * 2.0 ** (-31 - shift) == pytest.approx(M, rel=2 ** -30)
    acc = torch.arange(-200_000, 200_000, 37)
    fixed = Q.requantize_fixed_point(acc, m0, shift, 5)
    floating = (torch.round(acc.double() * M) + 5).clamp(-128, 127)
    assert (fixed.double() - floating).abs().max() <= 1


def test_symmetric_scale_observer_convention_clips_plus_max():
    x = torch.tensor([-127.5 / 64, 0.5, 127.5 / 64], requires_grad=True)   # max|x| = 127.5 s with s = 1/64 exactly
    s = Q.symmetric_scale(x, 8)
    assert s == 1 / 64 and Q.symmetric_scale(x, 8, restricted=True) == pytest.approx(127.5 / 64 / 127)
    assert s == pytest.approx(float(observer_qparams(x.detach(), symmetric=True)[0]))      # PyTorch's convention
    codes = Q.quantize_affine(x.detach(), s, 0, 8, signed=True)
    assert codes.tolist() == [-128, 32, 127]        # -127.5 -> -128 (half to even); +127.5 -> 128, clipped to 127
    Q.fake_quantize(x, s, 128, 8).sum().backward()                            # signed codes via zero point 128
    assert x.grad.tolist() == [1.0, 1.0, 0.0]                                 # the clipped +max gets no gradient


def test_static_int8_runs_int8_kernels_and_stays_close(cnn):
    X = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    q = Q.static_int8(cnn, X)
    assert any("quantized" in type(m).__module__ for m in q.modules())
    with torch.no_grad():
        assert (q(X) - cnn(X)).abs().max() < 0.05 * cnn(X).abs().max() + 0.02
    assert Q.state_dict_bytes(q) < 0.5 * Q.state_dict_bytes(cnn)


@pytest.mark.parametrize("num_bits", [1, 2, 4, 8])
def test_packed_state_dict_unpacks_to_the_codes(num_bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 3))                           # 21 weights: packing pads the last byte
    packed = Q.packed_state_dict(model, num_bits)
    w = model[0].weight.detach()
    if num_bits == 1:
        bits = np.unpackbits(packed["0.weight"].numpy())[:21]
        assert (torch.from_numpy(bits).bool() == (w >= 0).flatten()).all()
        assert packed["0.weight"].nbytes == 3                           # ceil(21 / 8)
    else:
        scales, _ = observer_qparams(w, symmetric=True, per_channel=True)
        expected = torch.quantize_per_channel(w, scales.float(), torch.zeros(3).long(), 0, torch.qint8).int_repr()
        if num_bits == 8:
            assert torch.equal(packed["0.weight"], expected.flatten())
        else:
            per_byte, lo = 8 // num_bits, 2 ** (num_bits - 1)
            b = packed["0.weight"].long()
            codes = torch.stack([(b >> (num_bits * i)) & (2 ** num_bits - 1) for i in range(per_byte)], 1).flatten()
            torch.testing.assert_close(codes[:21] - lo, torch.round(w / (w.abs().amax(1, keepdim=True) /
                                       ((2 ** num_bits - 1) / 2))).clamp(-lo, lo - 1).flatten().long())
            assert packed["0.weight"].nbytes == -(-21 // per_byte)
    assert Q.tensor_bytes(packed) == packed["0.weight"].nbytes + 3 * 4 + 3 * 4    # codes + scales + biases


# ----------------------------------------------------------------------------- QAT against its control
def _tiny_split(seed=0):
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(400, 8, generator=g)
    y = (X @ torch.randn(8, 3, generator=g) + 0.5 * torch.randn(400, 3, generator=g)).argmax(1)
    return SimpleNamespace(X_train=X[:160], y_train=y[:160], X_val=X[160:200], y_val=y[160:200],
                           X_test=X[200:], y_test=y[200:])


def _tiny_model():
    torch.manual_seed(0)
    return models.MLP(8, (16,), 3)


def test_qat_vs_finetune_ptq_arms_coincide_without_a_quantizer():
    """With an identity fake quantizer the QAT arm *is* the float fine-tuning: same start, same seed, same shuffle,
    so both arms end with the same accuracies on every seed. With the real 2-bit quantizer they differ, and another
    seed (another shuffle) gives another fine-tuned model: the equality is the pairing, not an insensitive test."""
    split, model = _tiny_split(), _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    identity = lambda x, scale, zero_point, num_bits: x                              # noqa: E731
    same = Q.qat_vs_finetune_ptq(model, split, split.X_train[:64], [(4, 4)], seeds=(0, 1, 2), epochs=2, lr=1e-2,
                                 fake_quant=identity, progress=False)["W4A4"]
    for part in ("val", "test"):
        np.testing.assert_array_equal(same[f"qat_{part}"], same[f"ft_ptq_per_tensor_{part}"])
    assert len(set(same["ft_ptq_per_tensor_test"].tolist())) > 1                      # seeds give other models
    real = Q.qat_vs_finetune_ptq(model, split, split.X_train[:64], [(2, 2)], seeds=(0, 1), epochs=2, lr=1e-2,
                                 progress=False)["W2A2"]
    assert not np.array_equal(real["qat_test"], real["ft_ptq_per_tensor_test"])
    for k, v in model.state_dict().items():                                           # the model is not modified
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_qat_vs_finetune_ptq_untrained_arms_are_plain_ptq_on_every_seed():
    """The PTQ arms involve no training: on every seed they equal PTQ of the untouched model, computed here by hand
    (per-tensor / per-channel weights, percentile activations)."""
    split, model = _tiny_split(1), _tiny_model()
    out = Q.qat_vs_finetune_ptq(model, split, split.X_train[:64], [(2, 4), (1, None)], seeds=(0, 3), epochs=1,
                                progress=False)
    assert list(out["seed"]) == [0, 3] and out["epochs"] == 1 and {"W2A4", "W1"} <= set(out)
    for per_channel, arm in ((False, "ptq_per_tensor"), (True, "ptq_per_channel")):
        q = Q.calibrate(Q.prepare_fake_quant(model, 2, 4, per_channel=per_channel), split.X_train[:64], "percentile")
        assert out["W2A4"][f"{arm}_test"].tolist() == [models.evaluate(q, split.X_test, split.y_test)] * 2
    # binary weights: alpha per output channel either way (so the function scores one binarized model for both arms)
    x = split.X_test[:32]
    torch.testing.assert_close(Q.prepare_fake_quant(model, 1, None)(x),
                               Q.prepare_fake_quant(model, 1, None, per_channel=True)(x), rtol=0, atol=0)
    np.testing.assert_array_equal(out["W1"]["ft_ptq_per_tensor_test"], out["W1"]["ft_ptq_per_channel_test"])
    assert all(v.shape == (2,) and ((0 <= v) & (v <= 1)).all() for k, v in out["W2A4"].items())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(configs=[]), ValueError, "configs"), (dict(configs=[(0, 4)]), ValueError, "weight_bits"),
    (dict(configs=[(2, 1)]), ValueError, "act_bits"), (dict(seeds=(0,)), ValueError, "seeds"),
    (dict(epochs=0), ValueError, "epochs"), (dict(lr=0.0), ValueError, "lr"),
    (dict(fake_quant="round"), TypeError, "fake_quant")])
def test_qat_vs_finetune_ptq_rejects_bad_arguments(kwargs, error, match):
    split = _tiny_split()
    with pytest.raises(error, match=match):
        Q.qat_vs_finetune_ptq(_tiny_model(), split, split.X_train[:8], **{"progress": False} | kwargs)
    with pytest.raises(TypeError, match="model"):
        Q.qat_vs_finetune_ptq("mlp", split, split.X_train[:8], progress=False)


# ----------------------------------------------------------------------------- per-group scales, k-means, reduce_range
def test_group_quantize_one_group_per_row_is_torchs_per_channel_observer():
    from torch.ao.quantization import PerChannelMinMaxObserver
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(w)
    _, scales = Q.group_quantize(w, 8, 32)
    torch.testing.assert_close(scales.flatten(), observer.calculate_qparams()[0], rtol=1e-6, atol=0)


def test_group_quantize_hand_worked():
    w = torch.tensor([[1.875, 0.625, -0.375, 0.125, -3.75, 1.0, 0.5, 2.5],
                      [0.0, 0.0, 0.0, 0.0, 0.46875, -0.1, 0.2, 0.03]])
    codes, scales = Q.group_quantize(w, 4, 4)
    assert scales.dtype == torch.float32 and codes.dtype == torch.int64
    assert scales.tolist() == [[0.25, 0.5], [2.0 ** -23, 0.0625]]
    assert codes.tolist() == [[7, 2, -2, 0, -8, 2, 1, 5], [0, 0, 0, 0, 7, -2, 3, 0]]   # clamp, half to even
    with pytest.raises(ValueError, match="group_size"):
        Q.group_quantize(w, 4, 3)


@pytest.mark.parametrize("bits,iters", [(1, 3), (2, 5), (3, 20)])
def test_kmeans_quantize_matches_sklearn(bits, iters):
    from sklearn.cluster import KMeans
    w = torch.randn(40, 9, generator=torch.Generator().manual_seed(bits))
    index, codebook = Q.kmeans_quantize(w, bits, iters)
    x = w.double().numpy().reshape(-1, 1)
    km = KMeans(2 ** bits, init=np.linspace(x.min(), x.max(), 2 ** bits).reshape(-1, 1), n_init=1, max_iter=iters,
                tol=0, algorithm="lloyd").fit(x)
    torch.testing.assert_close(codebook, torch.from_numpy(km.cluster_centers_.ravel()).float(), rtol=1e-5, atol=1e-6)
    assert (index.flatten().numpy() == km.labels_).all() and index.shape == w.shape


def test_kmeans_quantize_ties_and_empty_clusters_by_hand():
    index, codebook = Q.kmeans_quantize(torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 10.0]), 1, 1)
    assert codebook.tolist() == [1.0, 8.0] and index.tolist() == [0, 0, 0, 0, 1, 1, 1]    # 5 tied (-> 0), then moved
    index, codebook = Q.kmeans_quantize(torch.tensor([0.0, 0.25, 0.5, 8.0]), 2, 2)
    torch.testing.assert_close(codebook, torch.tensor([0.25, 8 / 3, 16 / 3, 8.0]))          # two empty clusters kept
    assert index.tolist() == [0, 0, 0, 3]


def test_scheme_sizes_count_codes_scales_and_codebooks():
    layer = nn.Sequential(nn.Linear(64, 10))
    assert Q.scheme_size_bytes(layer, 4, "per group 16") == 640 * 4 / 8 + 4 * 10 * 4 + 4 * 10
    assert Q.scheme_size_bytes(layer, 2, "k-means") == 640 * 2 / 8 + 4 * 4 + 4 * 10
    assert Q.scheme_size_bytes(layer, 4, "per channel") == Q.weight_size_bytes(layer, 4)
    conv = nn.Sequential(nn.Conv2d(16, 32, 3))                   # rows of 144: 64, 64 and a padded last group
    assert Q.scheme_size_bytes(conv, 4, "per group 64") == 4608 * 4 / 8 + 4 * 32 * 3 + 4 * 32


def test_quantize_weights_scheme_group_is_finer_than_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 8))
    with torch.no_grad():
        model[0].weight[:, :64] *= 20                             # half of every row 20x larger
    small = {s: (Q.quantize_weights_scheme(model, 3, s)[0].weight - model[0].weight)[:, 64:].pow(2).mean().item()
             for s in ("per channel", "per group 64", "per group 16")}     # the error on the small half of each row
    assert max(small["per group 64"], small["per group 16"]) < 0.1 * small["per channel"]


def test_simulated_dynamic_int8_with_7_bit_activations_is_torchs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(50, 32)
    with torch.no_grad():
        real = Q.dynamic_int8(model)(x)
    err = {b: (Q.simulate_dynamic_int8(model, x, b) - real).pow(2).mean().sqrt().item() for b in (7, 8)}
    assert err[7] < 0.1 * err[8]


def test_x86_static_activation_observer_is_a_7_bit_histogram():
    observer = Q.activation_observer("x86")
    assert type(observer).__name__ == "HistogramObserver" and observer.reduce_range
    assert (observer.quant_min, observer.quant_max) == (0, 127)


def test_equalize_pair_keeps_the_function_and_undoes_rescale_channel():
    torch.manual_seed(0)
    model = models.SmallCNN().eval()
    x = torch.rand(5, 1, 8, 8)
    eq, eq_outlier = Q.equalize_pair(model), Q.equalize_pair(Q.rescale_channel(model, 3, 16.0))
    torch.testing.assert_close(eq(x), model(x), rtol=1e-4, atol=1e-5)
    for a, b in ((eq.features[0], eq_outlier.features[0]), (eq.features[2], eq_outlier.features[2])):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-7)
    r1 = eq.features[0].weight.abs().amax(dim=(1, 2, 3))
    r2 = eq.features[2].weight.abs().amax(dim=(0, 2, 3))
    torch.testing.assert_close(r1, r2, rtol=1e-5, atol=1e-7)                 # both ranges equal per channel


def test_mse_clip_weight_is_never_worse_than_min_max_and_clips_gaussian_tails():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    w[0, 0] = 40.0                                                           # one outlier in channel 0
    s, _ = Q.per_channel_qparams(w, 0, 3)
    plain = torch.round(w / s.view(-1, 1)).clamp(-4, 3) * s.view(-1, 1)
    mse = Q.mse_clip_weight(w, 3)
    err = lambda a: (a - w).pow(2).mean(1)                                    # noqa: E731
    assert (err(mse) <= err(plain) + 1e-12).all()                            # t = 1 is min-max: never worse
    assert err(mse)[1:].sum() < 0.9 * err(plain)[1:].sum()                  # Gaussian rows: clipping the tails pays
    torch.testing.assert_close(Q.mse_clip_weight(w, 3, steps=1), plain.to(w.dtype))   # steps=1: per-channel min-max


def test_shared_weight_layer_gradient_is_the_sum_over_each_cluster():
    torch.manual_seed(0)
    layer = nn.Linear(8, 3)
    shared = Q.SharedWeightLayer(copy.deepcopy(layer), bits=1)
    x = torch.randn(5, 8)
    shared(x).pow(2).sum().backward()
    w = shared.codebook.detach()[shared.index].clone().requires_grad_(True)     # the same forward, weight as a leaf
    torch.nn.functional.linear(x, w, shared.layer.bias.detach()).pow(2).sum().backward()
    sums = torch.zeros(2).index_add_(0, shared.index.flatten(), w.grad.flatten())
    torch.testing.assert_close(shared.codebook.grad, sums)
    assert shared.layer.weight.grad is None                                       # the float weight does not train
