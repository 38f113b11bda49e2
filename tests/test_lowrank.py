"""course_lib.lowrank against oracles: numpy's and scikit-learn's SVDs, closed forms, hand-worked cases."""
import copy
import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import TruncatedSVD
from torch import nn
from torch.nn import functional as F

from course_lib import lowrank


def _random(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _numpy_best(weight, rank):
    """The rank-r truncation by numpy's SVD (the oracle)."""
    U, S, Vt = np.linalg.svd(weight.detach().double().numpy(), full_matrices=False)
    return torch.from_numpy((U[:, :rank] * S[:rank]) @ Vt[:rank])


# ----------------------------------------------------------------------------- low_rank_factors
def test_low_rank_factors_hand_worked_diagonal():
    A, B = lowrank.low_rank_factors(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), 1)
    torch.testing.assert_close(A @ B, torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(A.abs(), torch.tensor([[3.0**0.5], [0.0]]))     # the balanced sqrt(S) split


@pytest.mark.parametrize("shape,rank", [((8, 5), 2), ((5, 9), 3), ((6, 6), 1)])
def test_low_rank_factors_matches_sklearn_truncated_svd(shape, rank):
    w = _random(*shape, seed=rank, dtype=torch.float64)
    svd = TruncatedSVD(n_components=rank, algorithm="arpack").fit(w.numpy())
    oracle = svd.inverse_transform(svd.transform(w.numpy()))                     # W V_r V_r^T = U_r S_r V_r^T
    A, B = lowrank.low_rank_factors(w, rank)
    assert A.shape == (shape[0], rank) and B.shape == (rank, shape[1])
    np.testing.assert_allclose((A @ B).numpy(), oracle, atol=1e-10)


def test_low_rank_factors_error_is_the_tail_energy():
    w = _random(12, 7, seed=3)
    s = torch.linalg.svdvals(w.double())
    for rank in range(1, 8):
        A, B = lowrank.low_rank_factors(w, rank)
        assert A.dtype == B.dtype == torch.float32
        assert abs(lowrank.frobenius_error(w, A @ B) - float(s[rank:].pow(2).sum().sqrt())) < 1e-5
        torch.testing.assert_close((A @ B).double(), _numpy_best(w, rank), rtol=1e-5, atol=1e-5)


def test_low_rank_factors_parameter_input_gives_plain_tensors():
    w = nn.Parameter(_random(4, 3))
    A, B = lowrank.low_rank_factors(w, 2)
    assert not A.requires_grad and not B.requires_grad


@pytest.mark.parametrize("weight,rank,error,match", [
    (torch.ones(3, 4), 0, ValueError, r"rank must be an int in \[1, 3\], got 0"),
    (torch.ones(3, 4), 4, ValueError, r"rank must be an int in \[1, 3\], got 4"),
    (torch.ones(3, 4), 1.0, TypeError, "rank must be an int"),
    (torch.ones(3, 4), True, TypeError, "rank must be an int"),
    (torch.ones(4), 1, ValueError, "weight must be a non-empty 2-D floating-point tensor"),
    (torch.ones(2, 2, dtype=torch.int64), 1, ValueError, "floating-point"),
    ([[1.0]], 1, TypeError, "weight must be a torch.Tensor"),
])
def test_low_rank_factors_rejects_bad_arguments(weight, rank, error, match):
    with pytest.raises(error, match=match):
        lowrank.low_rank_factors(weight, rank)


# ----------------------------------------------------------------------------- rank_for_energy
@pytest.mark.parametrize("values,energy,expected", [
    ([3.0, 1.0], 0.9, 1),             # 9 / 10 reaches 0.9 exactly
    ([1.0, 1.0, 1.0, 1.0], 0.5, 2),
    ([2.0, 1.0, 0.0, 0.0], 1.0, 2),
    ([1.0, 1e-4], 1.0, 2),            # float32 input, float64 sums
    ([5.0, 2.0, 1.0, 1.0], None, 2),  # default 0.9: 25 + 4 >= 27.9
    ([2.5], 0.01, 1),
])
def test_rank_for_energy_hand_worked(values, energy, expected):
    s = torch.tensor(values)
    got = lowrank.rank_for_energy(s) if energy is None else lowrank.rank_for_energy(s, energy)
    assert got == expected and type(got) is int


def test_rank_for_energy_bounds_the_relative_error():
    w = _random(20, 15, seed=1)
    s = torch.linalg.svdvals(w.double())
    for energy in (0.5, 0.8, 0.95):
        r = lowrank.rank_for_energy(s, energy)
        A, B = lowrank.low_rank_factors(w, r)
        rel = lowrank.frobenius_error(w, A @ B) / float(torch.linalg.matrix_norm(w.double()))
        assert rel <= (1 - energy) ** 0.5 + 1e-6
        if r > 1:                                    # one fewer value would not have been enough
            assert float(s[: r - 1].pow(2).sum() / s.pow(2).sum()) < energy


@pytest.mark.parametrize("values,energy,error,match", [
    ([1.0, 3.0], 0.5, ValueError, "descending"),
    ([3.0, -1.0], 0.5, ValueError, "non-negative"),
    ([0.0, 0.0], 0.5, ValueError, "not all 0"),
    ([3.0, 1.0], 0.0, ValueError, r"energy must be a float in \(0.0, 1.0\]"),
    ([3.0, 1.0], 1.5, ValueError, "energy must be"),
    ([3.0, 1.0], True, TypeError, "energy must be"),
])
def test_rank_for_energy_rejects_bad_arguments(values, energy, error, match):
    with pytest.raises(error, match=match):
        lowrank.rank_for_energy(torch.tensor(values), energy)


def test_rank_for_energy_rejects_two_dimensional_input():
    with pytest.raises(ValueError, match="1-D"):
        lowrank.rank_for_energy(torch.ones(2, 2))


# ----------------------------------------------------------------------------- factorize_linear
@pytest.mark.parametrize("bias", [True, False])
def test_factorize_linear_computes_the_best_rank_r_layer(bias):
    torch.manual_seed(0)
    layer = nn.Linear(9, 6, bias=bias)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    small = lowrank.factorize_linear(layer, 2)
    first, second = small
    assert (first.in_features, first.out_features, first.bias) == (9, 2, None)
    assert (second.in_features, second.out_features, second.bias is not None) == (2, 6, bias)
    x = _random(5, 9, seed=1)
    oracle = x.double() @ _numpy_best(layer.weight, 2).T + (layer.bias.double() if bias else 0)
    torch.testing.assert_close(small(x).double(), oracle, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())      # input unchanged


def test_factorize_linear_full_rank_is_the_same_layer_and_keeps_dtype():
    layer = nn.Linear(4, 7, dtype=torch.float64)
    small = lowrank.factorize_linear(layer, 4)
    assert all(p.dtype == torch.float64 for p in small.parameters())
    x = _random(3, 4, dtype=torch.float64)
    torch.testing.assert_close(small(x), layer(x), rtol=1e-12, atol=1e-12)


def test_factorize_linear_does_not_use_the_global_rng():
    layer = nn.Linear(6, 5)
    state = torch.random.get_rng_state()
    lowrank.factorize_linear(layer, 2)
    assert torch.equal(state, torch.random.get_rng_state())


def test_factorize_linear_rejects_bad_arguments():
    with pytest.raises(TypeError, match="linear must be an nn.Linear, got Conv2d"):
        lowrank.factorize_linear(nn.Conv2d(2, 2, 1), 1)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 4\]"):
        lowrank.factorize_linear(nn.Linear(6, 4), 5)


# ----------------------------------------------------------------------------- factorize_conv
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, padding=(1, 0), bias=False),
                                    dict(dilation=2, padding=2, padding_mode="reflect"),
                                    dict(padding=1, padding_mode="circular"), dict(padding="same")])
def test_factorize_conv_equals_the_conv_with_the_rank_r_weight(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, (3, 3) if "stride" not in kwargs else (3, 1), **kwargs)
    small = lowrank.factorize_conv(conv, 2)
    first, second = small
    assert first.kernel_size == conv.kernel_size and first.stride == conv.stride and first.bias is None
    assert first.padding == conv.padding and first.dilation == conv.dilation
    assert first.padding_mode == conv.padding_mode and second.kernel_size == (1, 1)
    weight = _numpy_best(conv.weight.reshape(6, -1), 2).reshape(conv.weight.shape).float()   # numpy oracle
    reference = nn.Conv2d(3, 6, conv.kernel_size, **kwargs)
    reference.load_state_dict({**conv.state_dict(), "weight": weight})
    x = _random(2, 3, 9, 8, seed=4)
    torch.testing.assert_close(small(x), reference(x), rtol=1e-5, atol=1e-5)


def test_factorize_conv_full_rank_is_the_same_conv():
    conv = nn.Conv2d(2, 4, 3, padding=1, dtype=torch.float64)
    x = _random(1, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(lowrank.factorize_conv(conv, 4)(x), conv(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F.conv2d(x, conv.weight, conv.bias, padding=1), conv(x))


def test_factorize_conv_rejects_grouped_and_non_conv_layers():
    with pytest.raises(ValueError, match="conv.groups must be 1"):
        lowrank.factorize_conv(nn.Conv2d(2, 4, 3, groups=2), 1)
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d, got Linear"):
        lowrank.factorize_conv(nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 2\]"):
        lowrank.factorize_conv(nn.Conv2d(1, 4, (1, 2)), 3)


# ----------------------------------------------------------------------------- break_even_rank
def test_break_even_rank_matches_a_brute_force_search():
    for n_in in range(1, 40):
        for n_out in range(1, 40):
            brute = max([r for r in range(0, min(n_in, n_out) + 1) if r * (n_in + n_out) < n_in * n_out])
            assert lowrank.break_even_rank(n_in, n_out) == brute


def test_break_even_rank_hand_worked():
    assert lowrank.break_even_rank(512, 512) == 255       # 256 * 1024 == 512 * 512: not fewer
    assert lowrank.break_even_rank(2, 2) == 0
    assert lowrank.break_even_rank(64, 10) == 8           # 8 * 74 = 592 < 640, 9 * 74 = 666


@pytest.mark.parametrize("args,error", [((0, 5), ValueError), ((3.0, 4), TypeError), ((True, 4), TypeError)])
def test_break_even_rank_rejects_bad_sizes(args, error):
    with pytest.raises(error, match="must be an int >= 1"):
        lowrank.break_even_rank(*args)


# ----------------------------------------------------------------------------- helpers
def test_factorize_model_and_rank_choices():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    uniform = lowrank.ranks_uniform(model, 0.5)
    assert uniform == {"1": 6, "3": 2}
    small = lowrank.factorize_model(model, {"1": 3, "3": None})
    assert isinstance(small[1], nn.Sequential) and isinstance(small[3], nn.Linear)
    assert isinstance(model[1], nn.Linear)                                          # original untouched
    budget = 3 * (16 + 12) + 2 * (12 + 4)
    ranks = lowrank.ranks_by_energy(model, budget)
    assert sum(lowrank.factorized_params(model.get_submodule(n), r) for n, r in ranks.items()) <= budget


# ----------------------------------------------------------------------------- seeds (paired arms)
def _tiny_split(seed=0, n=160, d=8, classes=3):   # 160 rows: 3 batches of 64, so the order matters
    from course_lib.data import Split

    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(classes, d, generator=g)

    def part(k):
        y = torch.randint(0, classes, (k,), generator=g)
        return centres[y] + torch.randn(k, d, generator=g), y

    (Xa, ya), (Xb, yb), (Xc, yc) = part(n), part(n // 4), part(n // 4)
    return Split(Xa, ya, Xb, yb, Xc, yc, classes=[str(k) for k in range(classes)])


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def _accuracy_by_hand(model, X, y):
    with torch.no_grad():
        return float((model(X).argmax(dim=1) == y).double().mean())


def test_runs_over_seeds_calls_each_seed_once_and_scores_the_returned_models():
    split, seen = _tiny_split(), []

    def tune(seed):
        seen.append(seed)
        return _tiny_model(seed)                          # untrained: a different model per seed

    out = lowrank.runs_over_seeds(tune, split, [3, 1, 4], progress=False, keep_models=True)
    assert seen == [3, 1, 4] and out["seed"].tolist() == [3, 1, 4]
    for k, model in enumerate(out["models"]):
        assert out["val"][k] == pytest.approx(_accuracy_by_hand(model, split.X_val, split.y_val))
        assert out["test"][k] == pytest.approx(_accuracy_by_hand(model, split.X_test, split.y_test))
    assert "models" not in lowrank.runs_over_seeds(tune, split, range(2), progress=False)


@pytest.mark.parametrize("tune,seeds,error,match", [
    (None, [0, 1], TypeError, "tune must be a callable"),
    (lambda s: _tiny_model(s), "01", TypeError, "seeds must be a sequence"),
    (lambda s: _tiny_model(s), [0], ValueError, "at least 2 distinct"),
    (lambda s: _tiny_model(s), [1, 1], ValueError, "at least 2 distinct"),
    (lambda s: _tiny_model(s), [0, -1], ValueError, "seed must be"),
    (lambda s: _tiny_model(s), [0, 1.0], TypeError, "seed must be"),
    (lambda s: "not a model", [0, 1], TypeError, "must return an nn.Module"),
])
def test_runs_over_seeds_rejects_bad_arguments(tune, seeds, error, match):
    with pytest.raises(error, match=match):
        lowrank.runs_over_seeds(tune, _tiny_split(), seeds, progress=False)


def test_fine_tune_seeds_pairs_arms_by_seed_and_leaves_the_model_unchanged():
    split, start = _tiny_split(), _tiny_model()
    before = {k: v.clone() for k, v in start.state_dict().items()}
    a = lowrank.fine_tune_seeds(start, split, epochs=2, seeds=[0, 1, 2], progress=False, keep_models=True)
    b = lowrank.fine_tune_seeds(copy.deepcopy(start), split, epochs=2, seeds=[0, 1, 2], progress=False, keep_models=True)
    # the same start and the same seed: the same batch order, so the same weights -> paired differences are exactly 0
    for ma, mb in zip(a["models"], b["models"]):
        for (ka, va), (_, vb) in zip(ma.state_dict().items(), mb.state_dict().items()):
            assert torch.equal(va, vb), ka
    np.testing.assert_array_equal(a["test"], b["test"])
    # another seed is another batch order: other weights from the same start
    assert not torch.equal(a["models"][0][0].weight, a["models"][1][0].weight)
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in before.items())
    # zero epochs: every seed returns the starting model itself
    zero = lowrank.fine_tune_seeds(start, split, epochs=0, seeds=[0, 5], progress=False)
    assert zero["test"].tolist() == [pytest.approx(_accuracy_by_hand(start, split.X_test, split.y_test))] * 2


def test_fine_tune_seeds_rejects_bad_arguments():
    split = _tiny_split()
    with pytest.raises(TypeError, match="model"):
        lowrank.fine_tune_seeds("model", split, epochs=1, seeds=[0, 1])
    with pytest.raises(ValueError, match="epochs"):
        lowrank.fine_tune_seeds(_tiny_model(), split, epochs=-1, seeds=[0, 1])
    with pytest.raises(ValueError, match="lr"):
        lowrank.fine_tune_seeds(_tiny_model(), split, epochs=1, seeds=[0, 1], lr=0.0)


def test_rank_sweep_rows_hold_the_factorized_models_accuracies():
    split, model = _tiny_split(), _tiny_model()
    rows = lowrank.rank_sweep(model, split, [0.5, 1.0], epochs=1, seeds=[0, 1], progress=False)
    assert [(r["rank fraction"], r["seed"]) for r in rows] == [(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    assert rows[0]["ranks"] == {"0": 3, "2": 2}                            # round(0.5 * 6) and round(0.5 * 3)
    assert rows[0]["weights kept"] == pytest.approx((3 * 14 + 2 * 9) / (48 + 18))
    small = lowrank.factorize_model(model, {"0": 3, "2": 2})
    assert rows[0]["test acc"] == pytest.approx(_accuracy_by_hand(small, split.X_test, split.y_test))
    # full rank: the factorized model computes the dense one, so the accuracy before fine-tuning is the dense one
    assert rows[2]["val acc"] == pytest.approx(_accuracy_by_hand(model, split.X_val, split.y_val))
    tuned = lowrank.fine_tune(small, split, epochs=1, seed=1)
    assert rows[1]["test acc fine-tuned"] == pytest.approx(_accuracy_by_hand(tuned, split.X_test, split.y_test))


def test_reconstruction_heatmaps_share_one_colour_bar():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = torch.randn(12, 9, generator=torch.Generator().manual_seed(0))
    fig, axes = lowrank.plot_reconstruction(w, 2)
    bars = [ax for ax in fig.axes if ax not in list(axes)]
    assert len(bars) == 1 and bars[0].get_ylabel() == "value (one scale)"
    lim = float(w.abs().max())
    assert {ax.get_images()[0].get_clim() for ax in axes} == {(-lim, lim)}
    plt.close(fig)


def test_ranks_uniform_keep_dense_fits_the_budget_and_is_the_largest_common_fraction():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    # budget 2378: the classifier dense (640 weights) leaves 1738 for the hidden layers, 2 * 192 r <= 1738 -> r = 4
    ranks = lowrank.ranks_uniform_keep_dense(mlp, 2378, dense=["4"])
    assert ranks == {"4": None, "0": 4, "2": 4}
    assert 640 + 2 * 4 * 192 <= 2378 < 640 + 2 * 5 * 192                 # rank 5 would not fit
    with pytest.raises(ValueError, match="dense must be"):
        lowrank.ranks_uniform_keep_dense(mlp, 2378, dense=["3"])           # a ReLU is not factorizable
    with pytest.raises(ValueError, match="budget must"):
        lowrank.ranks_uniform_keep_dense(mlp, 500, dense=["4"])            # the dense classifier alone is 640


def test_csr_model_gives_the_dense_outputs_and_stores_int32_indices():
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for m in (mlp[0], mlp[2]):
            m.weight.mul_((torch.rand_like(m.weight) < 0.3).float())                # ~70 % zeros
    x = torch.randn(5, 12)
    sparse = lowrank.csr_model(mlp)
    torch.testing.assert_close(sparse(x), mlp(x), rtol=1e-5, atol=1e-6)
    w = sparse[0].weight
    assert w.layout == torch.sparse_csr and w.crow_indices().dtype == w.col_indices().dtype == torch.int32
    assert w.values().numel() == int((mlp[0].weight != 0).sum())


def test_stored_formats_by_hand_sizes():
    torch.manual_seed(2)
    big = nn.Linear(256, 256, bias=False)
    with torch.no_grad():
        big.weight.mul_((torch.rand_like(big.weight) < 0.1).float())                 # ~10 % kept
    nnz = int((big.weight != 0).sum())
    sizes = lowrank.stored_formats(nn.Sequential(big))
    overhead = 3000                                                                    # torch.save's zip and names
    assert 4 * 256 * 256 <= sizes["dense"] <= 4 * 256 * 256 + overhead
    assert 8 * nnz + 4 * 257 <= sizes["CSR int32"] <= 8 * nnz + 4 * 257 + overhead       # value + int32 index each
    assert 4 * nnz + 256 * 256 // 8 <= sizes["bitmask"] <= 4 * nnz + 256 * 256 // 8 + overhead   # one bit per weight


def test_data_aware_factors_beat_plain_svd_on_the_inputs_and_equal_it_for_white_inputs():
    torch.manual_seed(3)
    W = torch.randn(12, 8, dtype=torch.float64)
    X = torch.randn(500, 8, dtype=torch.float64) * torch.tensor([5.0, 3, 1, 1, 0.3, 0.1, 0.1, 0.01], dtype=torch.float64)
    for r in (1, 3, 6):
        A, B = lowrank.data_aware_factors(W, X, r)
        Ap, Bp = lowrank.low_rank_factors(W, r)
        err = ((W - A @ B) @ X.T).norm()
        assert err <= ((W - Ap @ Bp) @ X.T).norm() + 1e-9                    # optimal in the inputs' metric
        for _ in range(20):                                                   # and no random rank-r matrix beats it
            M = (A @ B) + 0.05 * torch.randn(12, r, dtype=torch.float64) @ torch.randn(r, 8, dtype=torch.float64)
            assert err <= ((W - M) @ X.T).norm() + 1e-9 or torch.linalg.matrix_rank(M) > r
    # inputs with identity second moment: the metric is the plain one, so the product is the truncated SVD
    Q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    white = Q * math.sqrt(8)                                                  # X^T X / n = I for these 8 rows
    A, B = lowrank.data_aware_factors(W, white, 3)
    Ap, Bp = lowrank.low_rank_factors(W, 3)
    torch.testing.assert_close(A @ B, Ap @ Bp)


def test_factorize_model_data_aware_keeps_unlisted_layers_and_rejects_convs():
    torch.manual_seed(4)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    X = torch.randn(40, 6)
    out = lowrank.factorize_model_data_aware(mlp, {"0": 2}, X)
    assert isinstance(out[0], nn.Sequential) and out[2] is not mlp[2] and torch.equal(out[2].weight, mlp[2].weight)
    A, B = lowrank.data_aware_factors(mlp[0].weight.detach(), X, 2)
    torch.testing.assert_close(out[0][1].weight @ out[0][0].weight, A @ B)
    with pytest.raises(ValueError, match="Linear layers only"):
        lowrank.factorize_model_data_aware(nn.Sequential(nn.Conv2d(1, 2, 3)), {"0": 1}, torch.randn(2, 1, 5, 5))


def test_speed_rows_give_the_ratio_of_medians_inside_its_interval():
    (row,) = lowrank.speed_rows([(2, 16, 16, 4)], repeats=3, rounds=3, progress=False)
    assert row["FLOP ratio"] == 16 * 16 / (4 * (16 + 16))
    assert row["speedup"] == pytest.approx(row["dense (ms)"] / row["factorized (ms)"])
    assert row["95% low"] <= row["speedup"] <= row["95% high"]


# ----------------------------------------------------------------------------- Tucker-2
def _numpy_unfold_basis(W, mode, rank):
    """Leading left singular vectors of the mode-``mode`` unfolding, by numpy (the oracle)."""
    M = np.moveaxis(W, mode, 0).reshape(W.shape[mode], -1)
    return np.linalg.svd(M, full_matrices=False)[0][:, :rank]


@pytest.mark.parametrize("stride,padding,dilation,mode", [(1, 1, 1, "zeros"), (2, 2, 2, "zeros"),
                                                         (1, 1, 1, "reflect"), (1, (0, 1), 1, "circular")])
def test_tucker2_at_full_ranks_is_the_conv_exactly(stride, padding, dilation, mode):
    conv = nn.Conv2d(6, 10, (3, 2), stride=stride, padding=padding, dilation=dilation, padding_mode=mode).double()
    x = _random(2, 6, 9, 9, seed=3, dtype=torch.float64)
    three = lowrank.tucker2_conv(conv, 6, 10)
    assert [tuple(c.weight.shape) for c in three] == [(6, 6, 1, 1), (10, 6, 3, 2), (10, 10, 1, 1)]
    assert three[0].bias is None and three[1].bias is None and torch.equal(three[2].bias, conv.bias)
    torch.testing.assert_close(three(x), conv(x), rtol=1e-10, atol=1e-10)


def test_tucker2_factors_are_orthonormal_and_the_error_is_the_discarded_core_energy():
    W = _random(12, 8, 3, 3, seed=1, dtype=torch.float64)
    for r_in, r_out in [(1, 1), (3, 5), (8, 4), (6, 12)]:
        U_in, core, U_out = lowrank.tucker2_factors(W, r_in, r_out)
        torch.testing.assert_close(U_in.T @ U_in, torch.eye(r_in, dtype=torch.float64))
        torch.testing.assert_close(U_out.T @ U_out, torch.eye(r_out, dtype=torch.float64))
        approx = torch.einsum("rshw,or,is->oihw", core, U_out, U_in)
        err2 = float((W - approx).pow(2).sum())
        # an orthogonal projection: Pythagoras
        assert err2 == pytest.approx(float(W.pow(2).sum() - core.pow(2).sum()), rel=1e-9)
        # the HOSVD bound (De Lathauwer et al., 2000): at most the two unfoldings' discarded energies
        tail = sum(float((torch.linalg.svdvals(torch.movedim(W, m, 0).reshape(W.shape[m], -1)) ** 2)[r:].sum())
                   for m, r in ((0, r_out), (1, r_in)))
        assert err2 <= tail + 1e-9
        # the same subspaces as numpy's SVD of each unfolding (projectors do not depend on signs)
        for U, mode, r in ((U_out, 0, r_out), (U_in, 1, r_in)):
            V = _numpy_unfold_basis(W.numpy(), mode, r)
            np.testing.assert_allclose((U @ U.T).numpy(), V @ V.T, atol=1e-9)


def test_tucker2_with_all_input_channels_is_the_channel_decomposition():
    conv = nn.Conv2d(5, 9, 3, padding=1).double()
    x = _random(2, 5, 7, 7, seed=4, dtype=torch.float64)
    for r in (1, 3, 7):
        torch.testing.assert_close(lowrank.tucker2_conv(conv, 5, r)(x), lowrank.factorize_conv(conv, r)(x),
                                   rtol=1e-9, atol=1e-9)


def test_tucker2_params_macs_and_budget_rule():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    three = lowrank.tucker2_conv(conv, 5, 8)
    assert lowrank.tucker2_params(conv, 5, 8) == 16 * 5 + 5 * 8 * 9 + 8 * 32 == sum(c.weight.numel() for c in three)
    rows = lowrank.conv_scheme_rows(nn.Sequential(conv, nn.Flatten()), "0", {"t": three, "dense": copy.deepcopy(conv)},
                                    _random(4, 16, 8, 8), torch.zeros(4, dtype=torch.int64))
    assert rows[0]["MACs per image"] == 64 * lowrank.tucker2_params(conv, 5, 8)     # stride 1: weights x positions
    assert rows[1]["relative weight error"] == pytest.approx(0.0, abs=1e-12)
    budget = 700
    r_in, r_out = lowrank.tucker2_ranks_for_budget(conv, budget)
    assert lowrank.tucker2_params(conv, r_in, r_out) <= budget
    best = max(float(lowrank.tucker2_factors(conv.weight, a, b)[1].double().pow(2).sum())
               for a in range(1, 17) for b in range(1, 33) if lowrank.tucker2_params(conv, a, b) <= budget)
    got = float(lowrank.tucker2_factors(conv.weight, r_in, r_out)[1].double().pow(2).sum())
    assert got == pytest.approx(best, rel=1e-5)
    with pytest.raises(ValueError, match="budget"):
        lowrank.tucker2_ranks_for_budget(conv, 10)


def test_tucker2_rejects_bad_arguments():
    conv = nn.Conv2d(4, 6, 3)
    with pytest.raises(ValueError, match="rank_in"):
        lowrank.tucker2_conv(conv, 5, 2)
    with pytest.raises(TypeError, match="rank_out"):
        lowrank.tucker2_conv(conv, 2, 2.0)
    with pytest.raises(ValueError, match="groups"):
        lowrank.tucker2_conv(nn.Conv2d(4, 6, 3, groups=2), 1, 1)
    with pytest.raises(TypeError, match="conv"):
        lowrank.tucker2_conv(nn.Linear(4, 6), 1, 1)
    with pytest.raises(ValueError, match="weight"):
        lowrank.tucker2_factors(torch.zeros(4, 6), 1, 1)
