"""The chapter 01 references against torch.nn.utils.prune, torch.ao.pruning, closed forms and hand-worked cases."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from course_lib import models, pruning, timing
from course_lib.pruning import (global_magnitude_masks, magnitude_mask, n_m_mask, polynomial_sparsity,
                                shrink_conv_pair, structured_mask)


def _weights(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g), torch.randn(4, 3, 3, 3, generator=g),
            torch.randint(-3, 4, (5, 8), generator=g).float() / 2,          # many ties
            torch.randint(-2, 3, (3, 4, 2), generator=g).float()]


def _torch_mask(weight, method, **kwargs):
    layer = nn.Linear(1, 1)
    layer.weight = nn.Parameter(weight.clone())
    method(layer, "weight", **kwargs)
    return layer.weight_mask


# ----------------------------------------------------------------------------- magnitude_mask
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("amount", [0, 0.0, 0.2, 0.5, 0.77, 1.0, 1, 7])
def test_magnitude_mask_matches_torch_prune(seed, amount):
    for w in _weights(seed):
        torch.testing.assert_close(magnitude_mask(w, amount), _torch_mask(w, prune.l1_unstructured, amount=amount),
                                   rtol=0, atol=0)


def test_magnitude_mask_rounds_like_python():
    w = torch.tensor([0.4, -0.1, 0.3, -0.5, 0.2])
    assert int((magnitude_mask(w, 0.5) == 0).sum()) == 2       # round(2.5) = 2
    assert int((magnitude_mask(w, 0.3) == 0).sum()) == 2       # round(1.5) = 2
    assert int((magnitude_mask(w, 0.7) == 0).sum()) == 4       # round(3.5) = 4


def test_magnitude_mask_int_one_is_one_entry_float_one_is_all():
    w = torch.tensor([0.4, -0.1, 0.3])
    assert magnitude_mask(w, 1).tolist() == [1.0, 0.0, 1.0]
    assert magnitude_mask(w, 1.0).tolist() == [0.0, 0.0, 0.0]


def test_magnitude_mask_prunes_by_absolute_value_by_hand():
    w = torch.tensor([[0.3, -0.9, 0.1], [-0.2, 0.8, -0.05]])
    assert magnitude_mask(w, 0.5).tolist() == [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]


def test_magnitude_mask_keeps_dtype_and_leaves_parameter_untouched():
    p = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    before = p.detach().clone()
    mask = magnitude_mask(p, 0.5)
    assert mask.dtype == torch.float64 and not mask.requires_grad and mask.shape == p.shape
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("amount,error,match", [
    (6, ValueError, "amount must be a float in \\[0, 1\\] or an int in \\[0, 5\\], got 6"),
    (-1, ValueError, "got -1"), (1.5, ValueError, "got 1.5"), (float("nan"), ValueError, "got nan"),
    (True, TypeError, "got True"), ("0.5", TypeError, "got '0.5'")])
def test_magnitude_mask_rejects_bad_amount(amount, error, match):
    with pytest.raises(error, match=match):
        magnitude_mask(torch.ones(5), amount)


def test_magnitude_mask_rejects_non_tensor_and_integer_weight():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got list"):
        magnitude_mask([1.0, 2.0], 0.5)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        magnitude_mask(torch.arange(4), 0.5)


# ----------------------------------------------------------------------------- global_magnitude_masks
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 1.0, 17])
def test_global_magnitude_masks_match_torch_global_unstructured(seed, amount):
    weights = _weights(seed)
    layers = []
    for w in weights:
        layer = nn.Linear(1, 1)
        layer.weight = nn.Parameter(w.clone())
        layers.append(layer)
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=amount)
    for layer, mask in zip(layers, global_magnitude_masks(weights, amount)):
        torch.testing.assert_close(mask, layer.weight_mask, rtol=0, atol=0)


def test_global_magnitude_masks_prune_the_small_layer_first():
    big, small = torch.tensor([3.0, -2.0, 4.0]), torch.tensor([0.01, -0.02])
    masks = global_magnitude_masks([big, small], 2)
    assert masks[0].tolist() == [1.0, 1.0, 1.0] and masks[1].tolist() == [0.0, 0.0]


def test_global_magnitude_masks_reject_bad_lists():
    with pytest.raises(TypeError, match="weights must be a list of tensors, got Tensor"):
        global_magnitude_masks(torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="weights must be a non-empty list"):
        global_magnitude_masks([], 0.5)
    with pytest.raises(ValueError, match="got 4"):
        global_magnitude_masks([torch.ones(2), torch.ones(1)], 4)


# ----------------------------------------------------------------------------- structured_mask
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 2, math.inf])
@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 1.0, 1])
def test_structured_mask_matches_torch_ln_structured(seed, n, amount):
    for w in _weights(seed):
        for dim in range(-w.dim(), w.dim()):
            expected = _torch_mask(w, prune.ln_structured, amount=amount, n=n, dim=dim)
            torch.testing.assert_close(structured_mask(w, amount, n=n, dim=dim), expected, rtol=0, atol=0)


def test_structured_mask_uses_the_norm_order_by_hand():
    rows = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 0.0, 0.0]])
    assert structured_mask(rows, 1, n=1)[:, 0].tolist() == [0.0, 1.0, 1.0]     # L1: 3 < 4 = 4
    assert structured_mask(rows, 1, n=2)[:, 0].tolist() == [1.0, 0.0, 1.0]     # L2: 2 < 2.83 < 3


def test_structured_mask_zeroes_whole_filters_of_a_conv():
    w = torch.randn(8, 3, 3, 3)
    mask = structured_mask(w, 0.5)
    per_filter = mask.flatten(1)
    assert ((per_filter == 0).all(1) | (per_filter == 1).all(1)).all()
    assert int((per_filter == 0).all(1).sum()) == 4


@pytest.mark.parametrize("kwargs,error,match", [
    ({"weight": torch.ones(3), "amount": 1}, ValueError, "at least 2 dimensions"),
    ({"weight": torch.ones(3, 4), "amount": 1, "dim": 2}, ValueError, "dim must be an int in \\[-2, 2\\), got 2"),
    ({"weight": torch.ones(3, 4), "amount": 1, "n": 0}, ValueError, "n must be a positive real"),
    ({"weight": torch.ones(3, 4), "amount": 1, "n": True}, TypeError, "n must be"),
    ({"weight": torch.ones(3, 4), "amount": 4}, ValueError, "int in \\[0, 3\\], got 4")])
def test_structured_mask_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        structured_mask(**kwargs)


# ----------------------------------------------------------------------------- n_m_mask
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_n_m_mask_matches_torch_ao_weight_norm_sparsifier(n, m):
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, m), zeros_per_block=m - n)
    sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
    sparsifier.step()
    for i in (0, 2):
        original = model[i].parametrizations.weight.original.detach()
        expected = model[i].parametrizations.weight[0].mask.float()
        torch.testing.assert_close(n_m_mask(original, n, m), expected, rtol=0, atol=0)


def test_n_m_mask_keeps_n_largest_in_every_group():
    w = torch.randn(6, 16, 3)                                          # groups along dim 1 (input channels)
    mask = n_m_mask(w, 2, 4)
    groups, scores = mask.movedim(1, -1).reshape(-1, 4), w.abs().movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    assert ((scores * groups).max(1).values >= (scores * (1 - groups)).max(1).values).all()
    assert (scores[groups == 1].reshape(-1, 2).min(1).values >= scores[groups == 0].reshape(-1, 2).max(1).values).all()


def test_n_m_mask_by_hand():
    assert n_m_mask(torch.tensor([[0.1, -3.0, 2.0, 0.5, -0.2, 0.3, 0.05, -1.0]])).tolist() == \
        [[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]]


@pytest.mark.parametrize("shape,n,m,error,match", [
    ((3, 6), 2, 4, ValueError, "divisible by m=4, got shape \\(3, 6\\)"),
    ((3, 8), 5, 4, ValueError, "n must be an int in \\[0, m=4\\], got 5"),
    ((3, 8), 2, 0, ValueError, "m must be an int >= 1, got 0"),
    ((3, 8), 2.0, 4, TypeError, "n must be an int >= 0, got 2.0"),
    ((), 1, 1, ValueError, "at least 1 dimensions")])
def test_n_m_mask_rejects_bad_arguments(shape, n, m, error, match):
    with pytest.raises(error, match=match):
        n_m_mask(torch.ones(shape), n, m)


# ----------------------------------------------------------------------------- polynomial_sparsity
def test_polynomial_sparsity_closed_forms():
    assert polynomial_sparsity(0, 10, 0.9) == 0.0
    assert polynomial_sparsity(10, 10, 0.9) == pytest.approx(0.9, abs=1e-15)
    assert polynomial_sparsity(5, 10, 0.9) == pytest.approx(0.9 - 0.9 * 0.5 ** 3, rel=1e-12)    # 0.7875
    assert polynomial_sparsity(5, 10, 0.8, 0.2, power=1) == pytest.approx(0.5, rel=1e-12)      # linear midpoint
    assert polynomial_sparsity(1, 4, 1.0, power=2) == pytest.approx(1 - 0.75 ** 2, rel=1e-12)


def test_polynomial_sparsity_clamps_the_step():
    assert polynomial_sparsity(-3, 10, 0.9, 0.1) == pytest.approx(0.1)
    assert polynomial_sparsity(25, 10, 0.9, 0.1) == pytest.approx(0.9)


def test_polynomial_sparsity_rises_fast_then_slowly():
    values = [polynomial_sparsity(t, 10, 0.9) for t in range(11)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s > 0 for s in steps) and all(a > b for a, b in zip(steps, steps[1:]))
    assert type(values[3]) is float


@pytest.mark.parametrize("args,error,match", [
    ((1, 0, 0.9), ValueError, "total_steps must be an int >= 1, got 0"),
    ((1, 10, 1.5), ValueError, "final_sparsity must be a float in \\[0.0, 1.0\\], got 1.5"),
    ((2.5, 10, 0.9), TypeError, "step must be an int, got 2.5"),
    ((True, 10, 0.9), TypeError, "step must be an int, got True")])
def test_polynomial_sparsity_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        polynomial_sparsity(*args)


def test_polynomial_sparsity_rejects_non_positive_power():
    with pytest.raises(ValueError, match="power must be a float in \\(0.0, inf\\], got 0"):
        polynomial_sparsity(1, 10, 0.9, power=0)


# ----------------------------------------------------------------------------- shrink_conv_pair
@pytest.mark.parametrize("stride,padding,dilation,bias", [(1, 1, 1, True), (2, 0, 1, True), (1, 2, 2, False)])
def test_shrink_conv_pair_equals_the_zeroed_pair(stride, padding, dilation, bias):
    torch.manual_seed(stride + padding)
    conv = nn.Conv2d(3, 6, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    next_conv = nn.Conv2d(6, 4, 3, padding=1)
    keep = torch.tensor([4, 0, 2])
    zeroed = copy.deepcopy(conv)
    with torch.no_grad():
        dropped = [c for c in range(6) if c not in keep.tolist()]
        zeroed.weight[dropped] = 0
        if bias:
            zeroed.bias[dropped] = 0
    new, new_next = shrink_conv_pair(conv, next_conv, keep)
    x = torch.randn(5, 3, 11, 11)
    with torch.no_grad():
        torch.testing.assert_close(new_next(torch.relu(new(x))), next_conv(torch.relu(zeroed(x))),
                                   rtol=1e-5, atol=1e-5)
    assert (new.out_channels, new_next.in_channels, new.stride, new.dilation) == (3, 3, conv.stride, conv.dilation)


def test_shrink_conv_pair_masking_weights_only_is_not_removing_the_channel():
    """prune.ln_structured masks the filter but not its bias: ReLU(bias) still reaches next_conv."""
    torch.manual_seed(0)
    conv, next_conv = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(0.5)
    masked = copy.deepcopy(conv)
    prune.ln_structured(masked, "weight", amount=2, n=1, dim=0)
    keep = masked.weight.flatten(1).any(1).nonzero().flatten()
    new, new_next = shrink_conv_pair(conv, next_conv, keep)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        gap = (new_next(torch.relu(new(x))) - next_conv(torch.relu(masked(x)))).abs().max()
    assert gap > 0.1


def test_shrink_conv_pair_halves_the_flops_and_leaves_inputs_alone():
    conv, next_conv = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
    before = [p.detach().clone() for p in [*conv.parameters(), *next_conv.parameters()]]
    new, new_next = shrink_conv_pair(conv, next_conv, torch.arange(8))
    x = torch.randn(1, 8, 10, 10)
    full = timing.count_flops(nn.Sequential(conv, nn.ReLU(), next_conv), x)
    small = timing.count_flops(nn.Sequential(new, nn.ReLU(), new_next), x)
    assert full == 2 * small
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, [*conv.parameters(), *next_conv.parameters()]))


@pytest.mark.parametrize("keep,error,match", [
    (torch.tensor([1, 1]), ValueError, "distinct channel indices in \\[0, 3\\)"),
    (torch.tensor([3]), ValueError, "distinct channel indices"),
    (torch.tensor([], dtype=torch.long), ValueError, "non-empty 1-D"),
    (torch.tensor([[0, 1]]), ValueError, "non-empty 1-D"),
    (torch.tensor([0.0, 1.0]), TypeError, "keep must be an integer tensor")])
def test_shrink_conv_pair_rejects_bad_keep(keep, error, match):
    with pytest.raises(error, match=match):
        shrink_conv_pair(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 2, 3), keep)


def test_shrink_conv_pair_rejects_bad_layers():
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv2d, got Linear"):
        shrink_conv_pair(nn.Linear(2, 3), nn.Conv2d(3, 2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="next_conv.in_channels must equal conv.out_channels=3, got 4"):
        shrink_conv_pair(nn.Conv2d(1, 3, 3), nn.Conv2d(4, 2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="groups=1, got groups=2"):
        shrink_conv_pair(nn.Conv2d(2, 4, 3, groups=2), nn.Conv2d(4, 2, 3), torch.tensor([0]))


# ----------------------------------------------------------------------------- helpers
def _tiny_setup():
    torch.manual_seed(0)
    X, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    return models.SmallCNN(n_classes=3, channels=(4, 6)), X, y


def test_model_masks_global_matches_torch_and_sparsity_counts_zeros():
    model, _, _ = _tiny_setup()
    masks = pruning.model_masks(model, 0.6, scope="global")
    reference = copy.deepcopy(model)
    layers = pruning.prunable_layers(reference)
    prune.global_unstructured([(m, "weight") for m in layers.values()], pruning_method=prune.L1Unstructured,
                              amount=0.6)
    for name, m in layers.items():
        assert torch.equal(masks[name], m.weight_mask)
    assert pruning.sparsity(masks) == pytest.approx(0.6, abs=1 / 300)
    assert pruning.sparsity(pruning.apply_masks(model, masks)) == pytest.approx(pruning.sparsity(masks))
    assert pruning.sparsity(model) == 0.0                      # apply_masks left the model alone


def test_fine_tune_keeps_pruned_weights_at_zero():
    model, X, y = _tiny_setup()
    masks = pruning.model_masks(model, 0.7)
    tuned = pruning.fine_tune(model, masks, X, y, epochs=2, lr=1e-2)
    for name, layer in pruning.prunable_layers(tuned).items():
        assert (layer.weight[masks[name] == 0] == 0).all()
        assert not hasattr(layer, "weight_orig")                # prune.remove made it permanent
    assert pruning.sparsity(tuned) >= 0.7 - 1e-3


def test_prune_iterative_follows_the_schedule():
    from types import SimpleNamespace

    model, X, y = _tiny_setup()
    split = SimpleNamespace(X_train=X, y_train=y, X_val=X, y_val=y)
    final, trace = pruning.prune_iterative(model, 0.8, split, n_steps=3, epochs_per_step=1)
    targets = [polynomial_sparsity(t, 3, 0.8) for t in (1, 2, 3)]
    assert [r["sparsity"] for r in trace] == pytest.approx(targets, abs=0.01)
    assert pruning.sparsity(final) == pytest.approx(0.8, abs=0.01)


def test_sensitivity_scan_rows_and_train_l1_shrinks_weights():
    model, X, y = _tiny_setup()
    rows = pruning.sensitivity_scan(model, [0.5, 1.0], X, y)
    assert len(rows) == 3 * 2 and {r["layer"] for r in rows} == set(pruning.prunable_layers(model))
    l1 = pruning.train_l1(model, X, y, lam=1e-2, epochs=3, lr=1e-2)
    assert pruning.l1_penalty(l1) < pruning.l1_penalty(model)


def test_sparse_state_dict_and_stored_bytes():
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.mul_(magnitude_mask(layer.weight, 0.95))
    sparse = pruning.sparse_state_dict(layer)
    assert sparse["weight"].layout == torch.sparse_csr
    torch.testing.assert_close(sparse["weight"].to_dense(), layer.weight.detach())
    assert pruning.stored_bytes(sparse) < pruning.stored_bytes(layer.state_dict())


def test_compare_latency_pools_interleaved_rounds():
    out = pruning.compare_latency({"a": lambda: torch.ones(10).sum(), "b": lambda: None}, repeats=3, rounds=2)
    assert out["a"].n == 6 and out["b"].device == "cpu" and out["a"].median > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_semi_structured_rows_needs_cuda():
    with pytest.raises(RuntimeError, match="need a CUDA GPU"):
        pruning.semi_structured_rows([(64, 64, 64)])


def test_plots_show_what_they_are_given():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = torch.randn(4, 2, 3, 3)
    masks = {"a": magnitude_mask(w, 0.5), "b": structured_mask(w, 0.5)}
    fig, axes = pruning.plot_masks(masks)
    for ax, mask in zip(axes, masks.values()):                 # each image is its mask as (C_out, rest)
        np.testing.assert_array_equal(ax.images[0].get_array(), mask.reshape(4, -1).numpy())
        assert "50 % pruned" in ax.get_title()
    plt.close(fig)
    rows = [{"layer": "x", "amount": a, "accuracy": acc} for a, acc in [(0.0, 0.9), (0.5, 0.8)]]
    fig, ax = pruning.plot_sensitivity(rows)
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[0, 90], [50, 80]])     # percent on both axes
    plt.close(fig)
    fig, ax = pruning.plot_schedule(10, 0.9, powers=(1,))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.linspace(0, 90, 11))  # power 1: a straight line
    plt.close(fig)
    fig, ax = pruning.plot_weight_histograms({"w": w}, bins=5)
    assert sum(p.get_height() for p in ax.patches) == w.numel()                  # every weight in a bin
    plt.close(fig)


# ----------------------------------------------------------------------------- N:M on conv weights
def test_n_m_mask_on_conv_groups_input_channels_like_torch_sparsifier_on_channels_last():
    """A conv weight's 2:4 groups run along C_in: the same mask torch's sparsifier gives the (C_out*k*k, C_in)
    channels-last matrix."""
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    w = torch.randn(6, 8, 3, 3)                                          # (C_out, C_in, k, k)
    lin = nn.Linear(8, 6 * 9)
    lin.weight.data = w.permute(0, 2, 3, 1).reshape(-1, 8).clone()        # (C_out k k, C_in)
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(nn.Sequential(lin), config=[{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    expected = lin.parametrizations.weight[0].mask.float().reshape(6, 3, 3, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(n_m_mask(w, 2, 4), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input axis \\(dim 1\\) must be divisible by m=4"):
        n_m_mask(torch.randn(4, 6, 4, 4))                                 # kernel width 4, but C_in = 6


# ----------------------------------------------------------------------------- L1: proximal step
def test_l1_prox_step_is_soft_thresholding():
    w = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.3])
    assert pruning.l1_prox_step(w, 0.1).tolist() == pytest.approx([-0.4, 0.0, 0.0, 0.0, 0.2])
    # the closed form of argmin_v 0.5 (v - w)^2 + t |v| on a grid
    grid = torch.linspace(-1, 1, 20001)
    for wi in w.tolist():
        best = grid[torch.argmin(0.5 * (grid - wi) ** 2 + 0.1 * grid.abs())]
        assert pruning.l1_prox_step(torch.tensor([wi]), 0.1).item() == pytest.approx(best.item(), abs=1e-4)


def test_train_l1_proximal_gives_exact_zeros_and_subgradient_does_not():
    torch.manual_seed(0)
    X, y = torch.randn(128, 10), torch.randint(0, 2, (128,))
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    prox = pruning.train_l1_proximal(model, X, y, lam=2.0, epochs=5, lr=1e-2)
    sub = pruning.train_l1(model, X, y, lam=2e-2, epochs=5, lr=1e-2)
    assert pruning.sparsity(prox) > 0.3 and pruning.sparsity(sub) < 0.01


# ----------------------------------------------------------------------------- per-layer sparsity
def test_sensitivity_amounts_prunes_robust_layers_more_at_the_same_total():
    rows = [{"layer": "robust", "amount": a, "accuracy": acc} for a, acc in [(0.0, 0.9), (0.5, 0.9), (0.9, 0.88)]]
    rows += [{"layer": "fragile", "amount": a, "accuracy": acc} for a, acc in [(0.0, 0.9), (0.5, 0.6), (0.9, 0.1)]]
    sizes = {"robust": 300, "fragile": 100}
    amounts = pruning.sensitivity_amounts(rows, sizes, 0.6)
    assert (300 * amounts["robust"] + 100 * amounts["fragile"]) / 400 == pytest.approx(0.6, abs=1e-9)
    assert amounts["robust"] > 0.6 > amounts["fragile"]
    with pytest.raises(ValueError, match="target must be at most 0.900"):
        pruning.sensitivity_amounts(rows, sizes, 0.95)


def test_random_masks_prune_the_same_count_elsewhere():
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 4))
    masks = pruning.random_masks(model, 0.7, seed=1)
    assert [int((m == 0).sum()) for m in masks.values()] == [140, 28]
    assert not torch.equal(masks["0"], magnitude_mask(model[0].weight, 0.7))


# ----------------------------------------------------------------------------- CSR storage and index width
@pytest.mark.parametrize("index_dtype,index_bytes", [(torch.int64, 8), (torch.int32, 4)])
def test_csr_bytes_matches_the_stored_tensor(index_dtype, index_bytes):
    w = magnitude_mask(torch.randn(200, 300), 0.8) * torch.randn(200, 300)
    csr = pruning.csr_with_index(w, index_dtype)
    assert csr.crow_indices().dtype == index_dtype
    stored = csr.values().nbytes + csr.col_indices().nbytes + csr.crow_indices().nbytes
    assert stored == pruning.csr_bytes(200, 300, 0.2, 4, index_bytes)
    torch.testing.assert_close(csr.to_dense(), w)
    overhead = pruning.stored_bytes(torch.empty(0))                      # the file's header, names, ...
    assert abs(pruning.stored_bytes(csr) - stored) < 4 * overhead


def test_csr_break_even_closed_forms():
    assert pruning.csr_break_even(4, 8) == pytest.approx(2 / 3) and pruning.csr_break_even(4, 4) == 0.5
    dense = 4 * 1000 * 1000
    for index_bytes in (4, 8):                                           # just above break-even CSR is smaller
        s = pruning.csr_break_even(4, index_bytes)
        assert pruning.csr_bytes(1000, 1000, 1 - s - 0.01, 4, index_bytes) < dense
        assert pruning.csr_bytes(1000, 1000, 1 - s + 0.01, 4, index_bytes) > dense


# ----------------------------------------------------------------------------- "pruning quantization"
def test_pruning_quantization_codes_drop_the_sign():
    w = torch.tensor([0.8, -0.8, 0.05, -0.4, 0.2])
    codes = pruning.pruning_quantization_codes(w, 4)                    # round(|w| / 0.8 * 4)
    assert codes.tolist() == [4, 4, 0, 2, 1]
    assert codes[0] == codes[1]                                           # w and -w: the same code
    assert torch.equal(codes > 0, magnitude_mask(w, 1).bool())            # its zero code = magnitude pruning


def test_seed_study_rows_and_controls_keep_the_sparsity(monkeypatch):
    from types import SimpleNamespace
    torch.manual_seed(0)
    X, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    split = SimpleNamespace(X_train=X, y_train=y, X_val=X, y_val=y)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    tuned = []
    real_fine_tune = pruning.fine_tune
    monkeypatch.setattr(pruning, "fine_tune", lambda *a, **k: tuned.append(real_fine_tune(*a, **k)) or tuned[-1])
    rows = pruning.seed_study(model, 0.5, split, seeds=(0, 1), epochs=1)
    assert [r["method"] for r in rows[:4]] == ["one-shot + fine-tune", "iterative", "random mask + fine-tune (control)",
                                              "magnitude mask, fresh init (control)"] and len(rows) == 8
    one_shot, iterative_last, random_ctrl, fresh = tuned[0], tuned[10], tuned[11], tuned[12]    # seed 0 (10 iterative steps)
    assert all(abs(pruning.sparsity(m) - 0.5) < 0.05 for m in (one_shot, iterative_last, random_ctrl, fresh))                                                              # the fresh-init control: the same mask
    torch.testing.assert_close((fresh[0].weight != 0).float(), magnitude_mask(model[0].weight, 0.5))


# ----------------------------------------------------------------------------- lottery ticket
def _tiny_split():
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 8, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()
    return SimpleNamespace(X_train=X, y_train=y, X_val=X[:32], y_val=y[:32])


def test_lottery_ticket_rewinds_to_theta0_and_the_mask_survives_retraining():
    split = _tiny_split()
    torch.manual_seed(0)
    init = models.MLP(8, (16,), 2)
    theta0 = copy.deepcopy(init.state_dict())
    torch.manual_seed(1)
    fresh = models.MLP(8, (16,), 2)
    trained = pruning.fine_tune(init, {}, split.X_train, split.y_train, epochs=3, lr=1e-2)
    masks, ticket_start, control_start = pruning.lottery_ticket_starts(init, trained, 0.7, fresh)
    # the mask is torch's global magnitude pruning of the *trained* weights
    oracle = copy.deepcopy(trained)
    prune.global_unstructured([(m, "weight") for m in pruning.prunable_layers(oracle).values()],
                              pruning_method=prune.L1Unstructured, amount=0.7)
    for name, m in pruning.prunable_layers(oracle).items():
        assert torch.equal(masks[name], m.weight_mask)
    # the ticket starts at theta_0 on the kept weights (exactly), zero elsewhere; the control does not
    for name, layer in pruning.prunable_layers(ticket_start).items():
        keep = masks[name].bool()
        assert torch.equal(layer.weight[keep], theta0[f"{name}.weight"][keep])
        assert torch.equal(layer.weight[~keep], torch.zeros(int((~keep).sum())))
        assert torch.equal(layer.bias, theta0[f"{name}.bias"])
        assert not torch.equal(dict(control_start.named_modules())[name].weight[keep], theta0[f"{name}.weight"][keep])
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in theta0.items())          # inputs not modified
    # retraining under the mask: pruned weights stay exactly 0, kept ones move
    ticket = pruning.fine_tune(ticket_start, masks, split.X_train, split.y_train, epochs=3, lr=1e-2)
    for name, layer in pruning.prunable_layers(ticket).items():
        keep = masks[name].bool()
        assert torch.equal(layer.weight[~keep], torch.zeros(int((~keep).sum())))
        assert not torch.equal(layer.weight[keep], theta0[f"{name}.weight"][keep])


def test_lottery_ticket_retrains_theta0_and_a_fresh_init_under_one_mask(monkeypatch):
    split = _tiny_split()
    make = lambda: models.MLP(8, (16,), 2)  # noqa: E731
    calls = []
    real_fine_tune = pruning.fine_tune

    def recording(model, masks, *a, **k):
        calls.append((copy.deepcopy(model), dict(masks)))
        return real_fine_tune(model, masks, *a, **k)

    monkeypatch.setattr(pruning, "fine_tune", recording)
    rows = pruning.lottery_ticket(make, split, 0.75, epochs=2, seeds=(3, 4))
    assert [r["seed"] for r in rows] == [3, 4] and len(calls) == 6
    for i, (row, seed) in enumerate(zip(rows, (3, 4))):
        (dense_start, no_masks), (ticket_start, masks), (control_start, masks_c) = calls[3 * i: 3 * i + 3]
        torch.manual_seed(seed)
        theta0 = make().state_dict()
        assert no_masks == {} and all(torch.equal(v, theta0[k]) for k, v in dense_start.state_dict().items())
        assert masks.keys() == masks_c.keys() and all(torch.equal(masks[k], masks_c[k]) for k in masks)
        kept_ticket, kept_control = [], []
        for name, layer in pruning.prunable_layers(ticket_start).items():
            torch.testing.assert_close(layer.weight, theta0[f"{name}.weight"] * masks[name], rtol=0, atol=0)
            ctrl = dict(control_start.named_modules())[name].weight
            assert torch.equal(ctrl, ctrl * masks[name])                              # the control is masked too
            kept_ticket.append(layer.weight[masks[name].bool()])
            kept_control.append(ctrl[masks[name].bool()])
        assert not torch.equal(torch.cat(kept_ticket), torch.cat(kept_control))       # ... from another init
        assert abs(row["sparsity"] - 0.75) < 1e-3
        assert all(0.0 <= row[k] <= 1.0 for k in ("dense", "ticket", "control"))
    with pytest.raises(ValueError, match="amount"):
        pruning.lottery_ticket(make, split, 1.5)


# ----------------------------------------------------------------------------- seed study (several sparsities)
def _study_split():
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(1)
    X = torch.randn(80, 8, generator=g)
    y = (X[:, 0] - X[:, 2] > 0).long()
    return SimpleNamespace(X_train=X[:48], y_train=y[:48], X_val=X[48:64], y_val=y[48:64], X_test=X[64:], y_test=y[64:])


def test_seed_study_pairs_seeds_runs_controls_only_where_asked_and_keeps_the_models():
    split = _study_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(model.state_dict())
    rows, kept = pruning.seed_study(model, (0.5, 0.75), split, seeds=(0, 3), epochs=2, lr=1e-2, controls_at=(0.75,),
                                    keep_models=True)
    methods = {(r["sparsity"], r["method"]) for r in rows}
    assert methods == {(0.5, "one-shot + fine-tune"), (0.5, "iterative")} | {(0.75, m) for m in pruning.SEED_STUDY_METHODS}
    assert len(rows) == 2 * 2 + 2 * 4 and set(kept) == {(r["sparsity"], r["method"], r["seed"]) for r in rows}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())            # the input is not modified
    for r in rows:
        tuned = kept[r["sparsity"], r["method"], r["seed"]]
        assert abs(r["measured sparsity"] - r["sparsity"]) < 0.05
        for part in ("train", "val", "test"):                                                 # the rows score the kept models
            assert r[f"{part} acc"] == models.evaluate(tuned, getattr(split, f"X_{part}"), getattr(split, f"y_{part}"))
    # arm "one-shot" of seed 3 is exactly prune_one_shot with that seed (the pairing is by seed, nothing else)
    oracle = pruning.prune_one_shot(model, 0.75, split, epochs=2, lr=1e-2, seed=3)
    for a, b in zip(oracle.parameters(), kept[0.75, "one-shot + fine-tune", 3].parameters()):
        assert torch.equal(a, b)
    # the fresh-init control keeps the magnitude mask of the *trained* model but not its weights
    fresh = kept[0.75, "magnitude mask, fresh init (control)", 0]
    torch.testing.assert_close((fresh[0].weight != 0).float(), magnitude_mask(model[0].weight, 0.75))
    # the random control's mask differs from the magnitude mask at the same sparsity
    random_ctrl = kept[0.75, "random mask + fine-tune (control)", 0]
    assert not torch.equal(random_ctrl[0].weight != 0, oracle[0].weight != 0)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sparsities": 1.5}, ValueError, "sparsities"), ({"sparsities": []}, TypeError, "sparsities"),
    ({"sparsities": "0.5"}, TypeError, "sparsities"), ({"epochs": 0}, ValueError, "epochs"),
    ({"seeds": ()}, ValueError, "seeds"), ({"seeds": (0.5,)}, TypeError, "seeds"),
    ({"controls_at": (0.9,)}, ValueError, "controls_at"), ({"keep_models": 1}, TypeError, "keep_models"),
    ({"lr": 0.0}, ValueError, "lr")])
def test_seed_study_rejects_bad_arguments(kwargs, error, match):
    model = nn.Sequential(nn.Linear(8, 2))
    args = {"sparsities": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        pruning.seed_study(model, args.pop("sparsities"), _study_split(), **args)


def test_seed_difference_is_scipys_paired_t_interval_in_points():
    from scipy import stats as scipy_stats
    a, b = [0.90, 0.85, 0.88, 0.91, 0.86], [0.80, 0.84, 0.83, 0.90, 0.81]
    rows = ([{"sparsity": 0.9, "method": "A", "seed": s, "test acc": v} for s, v in zip((4, 1, 2, 3, 0), a)]
            + [{"sparsity": 0.9, "method": "B", "seed": s, "test acc": v} for s, v in zip((4, 1, 2, 3, 0), b)])
    d = pruning.seed_difference(rows[::-1], (0.9, "A"), (0.9, "B"))        # row order does not matter, seeds pair
    ci = scipy_stats.ttest_rel(a, b).confidence_interval()
    assert math.isclose(d.low, 100 * ci.low, rel_tol=1e-9) and math.isclose(d.high, 100 * ci.high, rel_tol=1e-9)
    assert math.isclose(d.estimate, 100 * np.mean(np.subtract(a, b)), rel_tol=1e-9) and d.n == 5 and d.wins == 5
    with pytest.raises(ValueError, match="share their seeds"):
        pruning.seed_difference(rows[:-1], (0.9, "A"), (0.9, "B"))
    with pytest.raises(ValueError, match="no rows"):
        pruning.seed_difference(rows, (0.95, "A"), (0.9, "B"))


class _Constant(nn.Module):
    """Predicts the class given by a fixed table of labels, one per example index in X[:, 0]."""
    def __init__(self, labels):
        super().__init__()
        self.register_buffer("labels", torch.as_tensor(labels))

    def forward(self, x):
        return nn.functional.one_hot(self.labels[x[:, 0].long()], 3).float()


def test_accuracy_difference_and_detectable_effect_on_hand_built_predictions():
    n = 400
    X = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.zeros(n, dtype=torch.long)
    right, wrong = _Constant([0] * n), _Constant([1] * n)
    half = _Constant([0] * (n // 2) + [2] * (n // 2))
    d = pruning.accuracy_difference(right, wrong, X, y)
    assert (d.estimate, d.low, d.high, d.n) == (100.0, 100.0, 100.0, n)            # no spread: a point
    same = pruning.accuracy_difference(half, half, X, y)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    d = pruning.accuracy_difference(right, half, X, y)                             # d_j = 1 on half the images
    assert d.estimate == 50.0 and d.low < 50.0 < d.high
    sd = float(np.std([1.0] * (n // 2) + [0.0] * (n // 2), ddof=1))                # large n: (z_.975 + z_.8) sd / sqrt(n)
    assert math.isclose(pruning.detectable_on_examples(right, half, X, y), 100 * 2.8016 * sd / math.sqrt(n), rel_tol=0.01)
    with pytest.raises(ValueError, match="agree on every example"):
        pruning.detectable_on_examples(half, half, X, y)


def test_lottery_ticket_scores_the_test_part_and_myth_keeps_its_models():
    split = _study_split()
    rows = pruning.lottery_ticket(lambda: models.MLP(8, (16,), 2), split, 0.5, epochs=1, seeds=(0,), progress=False)
    assert {"dense test", "ticket test", "control test"} <= set(rows[0]) and 0 <= rows[0]["ticket test"] <= 1
    torch.manual_seed(0)
    mlp = models.MLP(8, (16,), 2)
    out, kept = pruning.pruning_quantization_myth(mlp, split.X_test, split.y_test, B=4, keep_models=True)
    assert set(kept) == {"dropped sign", "sign kept", "zero code as a pruning mask"}
    for name, changed in kept.items():
        assert out[name] == models.evaluate(changed, split.X_test, split.y_test)
    assert pruning.pruning_quantization_myth(mlp, split.X_test, split.y_test, B=4) == out


def test_l1_seed_study_pairs_three_arms_by_seed_and_only_the_proximal_one_has_exact_zeros():
    split = _study_split()
    torch.manual_seed(0)
    model = models.MLP(8, (16,), 2)
    rows, kept = pruning.l1_seed_study(model, split, lam=1e-3, prox_lam=20.0, seeds=(0, 2), epochs=3, lr=1e-2)
    assert [(r["seed"], r["training"]) for r in rows] == [(s, a) for s in (0, 2) for a in pruning.L1_ARMS]
    oracle = pruning.train_l1(model, split.X_train, split.y_train, lam=0.0, epochs=3, lr=1e-2, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(oracle.parameters(), kept["plain", 2].parameters()))
    by = {(r["seed"], r["training"]): r for r in rows}
    for s in (0, 2):
        assert by[s, "L1 (proximal)"]["exact zeros"] > 0 == by[s, "L1 (subgradient)"]["exact zeros"]
        m = kept["L1 (proximal)", s]
        w = torch.cat([layer.weight.flatten() for layer in pruning.prunable_layers(m).values()])
        assert by[s, "L1 (proximal)"]["exact zeros"] == int((w == 0).sum())
        assert by[s, "plain"]["test acc"] == models.evaluate(kept["plain", s], split.X_test, split.y_test)
    with pytest.raises(ValueError, match="prox_lam"):
        pruning.l1_seed_study(model, split, lam=1e-3, prox_lam=0.0)


def test_random_control_difference_resamples_images_and_draws():
    n = 300
    X = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.zeros(n, dtype=torch.long)
    right = _Constant([0] * n)
    wrong = _Constant([1] * n)
    d = pruning.random_control_difference(right, [wrong, wrong, wrong], X, y)
    assert (d.estimate, d.low, d.high, d.n) == (100.0, 100.0, 100.0, n) and d.unit == " points"
    # controls right on 0 %, 50 % and 100 % of the images: mean 50 %; the draws' spread widens the interval
    half = _Constant([0] * (n // 2) + [1] * (n // 2))
    spread = pruning.random_control_difference(right, [wrong, half, right], X, y)
    alike = pruning.random_control_difference(right, [half, half, half], X, y)
    assert math.isclose(spread.estimate, 50.0) and math.isclose(alike.estimate, 50.0)
    assert spread.low < alike.low and alike.high < spread.high and 0.0 <= spread.low and spread.high <= 100.0
    assert pruning.random_control_difference(right, [wrong, half, right], X, y, seed=0) == spread   # seeded
    with pytest.raises(TypeError, match="controls"):
        pruning.random_control_difference(right, wrong, X, y)


def test_fine_tune_seeds_is_fine_tune_once_per_seed_and_keeps_the_mask():
    split = _study_split()
    torch.manual_seed(0)
    model = models.MLP(8, (16,), 2)
    masks = pruning.model_masks(model, 0.5)
    tuned = pruning.fine_tune_seeds(model, masks, split, seeds=(1, 4), epochs=2, lr=1e-2)
    for seed, got in zip((1, 4), tuned):
        oracle = pruning.fine_tune(model, masks, split.X_train, split.y_train, epochs=2, lr=1e-2, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(oracle.parameters(), got.parameters()))
        assert pruning.sparsity(got) == 0.5
    first = [list(pruning.prunable_layers(m).values())[0].weight for m in tuned]
    assert not torch.equal(first[0], first[1])                                     # another shuffle, another model
    with pytest.raises(ValueError, match="seeds"):
        pruning.fine_tune_seeds(model, masks, split, seeds=(0,), epochs=1)


# ----------------------------------------------------------------------------- augmentation, matched sparsity
P = pruning
def test_augment_images_one_pixel_shift_is_a_zero_filled_roll():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(P.augment_images(x, shift=0, degrees=0.0), x, atol=1e-6)        # identity map
    gen = torch.Generator().manual_seed(3)
    out = P.augment_images(x, shift=1, degrees=0.0, generator=gen)
    gen = torch.Generator().manual_seed(3)
    torch.rand(6, generator=gen)                                                         # the angle draws
    pixels = torch.randint(-1, 2, (6, 2), generator=gen)
    for img, (dx, dy), got in zip(x, pixels.tolist(), out):
        padded = torch.nn.functional.pad(img, (1, 1, 1, 1))                              # zeros outside
        want = padded[:, 1 + dy:9 + dy, 1 + dx:9 + dx]                                   # x'(p) = x(p + t)
        assert torch.allclose(got, want, atol=1e-5)


def test_augment_images_rotation_keeps_a_centred_disc_symmetric_image():
    yy, xx = torch.meshgrid(torch.arange(8) - 3.5, torch.arange(8) - 3.5, indexing="ij")
    disc = ((yy ** 2 + xx ** 2) < 6.0).float().view(1, 1, 8, 8).repeat(4, 1, 1, 1)
    out = P.augment_images(disc, shift=0, degrees=90.0, generator=torch.Generator().manual_seed(1))
    assert (out - disc).abs().mean() < 0.15 and not torch.equal(out, disc)


def test_fine_tune_augmented_without_augmentation_is_fine_tune():
    torch.manual_seed(0)
    model = models.SmallCNN(channels=(4, 8)).eval()
    X, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    masks = P.model_masks(model, 0.5)
    a = P.fine_tune(model, masks, X, y, epochs=2, lr=1e-2, seed=1)
    b = P.fine_tune_augmented(model, masks, X, y, epochs=2, lr=1e-2, seed=1, shift=0, degrees=0.0)
    for (na, pa), (nb_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb_ and torch.allclose(pa, pb, atol=1e-5)
    c = P.fine_tune_augmented(model, masks, X, y, epochs=2, lr=1e-2, seed=1)
    assert P.sparsity(c) == P.sparsity(masks) and not torch.allclose(c.classifier[1].weight, a.classifier[1].weight)


def test_matched_sparsity_difference_of_a_model_with_itself_is_zero():
    torch.manual_seed(0)
    base = models.MLP(64, (32,), 10).eval()
    X, y = torch.rand(50, 64), torch.randint(0, 10, (50,))
    b = [P.apply_masks(base, P.model_masks(base, s, scope="global")) for s in (0.3, 0.6)]
    diff, levels = P.matched_sparsity_difference(b, b, X, y)
    assert np.allclose(levels, [0.3, 0.6], atol=1e-3) and diff.estimate == 0.0
    with pytest.raises(ValueError, match="same number"):
        P.matched_sparsity_difference(b, b[:1], X, y)
