"""Chapter 07's references against oracles: scipy, scikit-learn, torch, chapter 04/05's references, hand-worked cases."""
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import jaccard_score

from course_lib import compression_explanation as CE
from course_lib import distillation as D
from course_lib import local_explanation as LE
from course_lib import models


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- attribution_agreement
def test_attribution_agreement_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 1, 6, 6, generator=gen).clamp_min(0)             # many exact zeros: ties
    b = torch.randint(-2, 3, (5, 1, 6, 6), generator=gen).float()
    got = CE.attribution_agreement(a, b)["spearman"]
    expected = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(5)]
    assert got.dtype == torch.float64 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_attribution_agreement_cosine_matches_torch():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 2, 3, 3, generator=gen), torch.randn(4, 2, 3, 3, generator=gen)
    torch.testing.assert_close(CE.attribution_agreement(a, b)["cosine"],
                               F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1))


def test_attribution_agreement_topk_iou_matches_sklearn_jaccard():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 40, generator=gen), torch.randn(3, 40, generator=gen)
    got = CE.attribution_agreement(a, b, k=0.2)["topk_iou"]
    for i in range(3):                                                   # m = 8, no ties in continuous data
        top_a = np.isin(np.arange(40), np.argsort(-a[i].abs().numpy())[:8])
        top_b = np.isin(np.arange(40), np.argsort(-b[i].abs().numpy())[:8])
        assert got[i].item() == pytest.approx(jaccard_score(top_a, top_b))


def test_attribution_agreement_hand_worked_example():
    r = CE.attribution_agreement(torch.tensor([[0., 1., 2., 3.]]), torch.tensor([[0., 1., 3., 2.]]), k=0.5)
    assert r["spearman"].item() == pytest.approx(0.8)                   # 1 - 6 * 2 / (4 * 15)
    assert r["topk_iou"].item() == 1.0                                  # {2, 3} both
    assert r["cosine"].item() == pytest.approx(13 / 14)


def test_attribution_agreement_rounds_half_to_even():
    a = torch.arange(25.0).flip(0).view(1, 25)                          # top by |a|: 0, 1, 2, ...
    b = torch.zeros(1, 25)
    b[0, 0], b[0, 2], b[0, 1] = 9.0, 8.0, 1.0                           # top 2: {0, 2}; top 3: {0, 2, 1}
    b[0, 3:] = torch.linspace(0.1, 0.5, 22)
    # k M = 2.5 -> m = round(2.5) = 2: {0, 1} vs {0, 2} -> 1/3 (m = 3 would give {0,1,2} vs {0,2,1} -> 1)
    assert CE.attribution_agreement(a, b, k=0.1)["topk_iou"].item() == pytest.approx(1 / 3)


def test_attribution_agreement_ties_at_the_cut_take_the_lower_index():
    a = torch.tensor([[3.0, 1.0, 3.0, 0.0, 3.0, -3.0]])
    b = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0, 4.0]])
    # m = round(0.4 * 6) = 2: a's top = {0, 2} (lower indices of the four |3|), b's = {2, 5}
    assert CE.attribution_agreement(a, b, k=0.4)["topk_iou"].item() == pytest.approx(1 / 3)


def test_attribution_agreement_keeps_at_least_one_entry():
    a, b = torch.tensor([[5.0, 1.0, 0.0, 2.0]]), torch.tensor([[4.0, 0.0, 1.0, 3.0]])
    assert CE.attribution_agreement(a, b, k=0.01)["topk_iou"].item() == 1.0


@pytest.mark.parametrize("a,b,k,match", [
    (torch.ones(2, 4), torch.randn(2, 4), 0.1, "at least two distinct"),
    (torch.randn(2, 4), torch.randn(2, 5), 0.1, "b must have a's shape"),
    (torch.randn(4), torch.randn(4), 0.1, r"shape \(N, \.\.\.\)"),
    (torch.randn(2, 4), torch.randn(2, 4), 0.0, r"k must be a float in \(0"),
    (torch.randn(2, 4), torch.randn(2, 4), 1.5, r"k must be a float in \(0"),
])
def test_attribution_agreement_rejects_bad_input(a, b, k, match):
    with pytest.raises(ValueError, match=match):
        CE.attribution_agreement(a, b, k=k)


def test_attribution_agreement_rejects_non_tensors_and_bool_k():
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        CE.attribution_agreement([[1.0, 2.0]], torch.randn(1, 2))
    with pytest.raises(TypeError, match="k must be"):
        CE.attribution_agreement(torch.randn(1, 3), torch.randn(1, 3), k=True)


# ----------------------------------------------------------------------------- explanation_kd_loss
def _inputs(seed=0, n=3, c=4, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=gen, dtype=dtype).requires_grad_(True)
    t = torch.randn(n, c, generator=gen, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, c, (n,), generator=gen)
    sm = torch.randn(n, 1, 3, 3, generator=gen, dtype=dtype).requires_grad_(True)
    tm = torch.randn(n, 1, 3, 3, generator=gen, dtype=dtype).requires_grad_(True)
    return s, t, y, sm, tm


def test_explanation_kd_loss_is_chapter_04_kd_loss_plus_cosine_term():
    s, t, y, sm, tm = _inputs()
    got = CE.explanation_kd_loss(s, t, y, sm, tm, lam=0.7, temperature=3.0, alpha=0.6)
    expected = D.kd_loss(s, t, y, temperature=3.0, alpha=0.6) + \
        0.7 * (1 - F.cosine_similarity(sm.flatten(1), tm.flatten(1), dim=1)).mean()
    torch.testing.assert_close(got, expected)


def test_explanation_kd_loss_with_lam_zero_is_kd_loss_and_defaults_match():
    s, t, y, sm, tm = _inputs(1, dtype=torch.float64)
    torch.testing.assert_close(CE.explanation_kd_loss(s, t, y, sm, tm, lam=0.0), D.kd_loss(s, t, y))
    expected = D.kd_loss(s, t, y, 4.0, 0.9) + (1 - F.cosine_similarity(sm.flatten(1), tm.flatten(1))).mean()
    torch.testing.assert_close(CE.explanation_kd_loss(s, t, y, sm, tm), expected)


def test_explanation_kd_loss_sends_no_gradient_to_the_teacher():
    s, t, y, sm, tm = _inputs(2)
    loss = CE.explanation_kd_loss(s, t, y, sm, tm, lam=2.0)
    g = torch.autograd.grad(loss, (s, t, sm, tm), allow_unused=True)
    assert g[1] is None and g[3] is None
    assert g[0].abs().sum() > 0 and g[2].abs().sum() > 0


def test_explanation_kd_loss_identical_maps_add_nothing_and_zero_teacher_map_adds_lam():
    s, t, y, sm, _ = _inputs(3)
    base = D.kd_loss(s, t, y)
    torch.testing.assert_close(CE.explanation_kd_loss(s, t, y, sm, sm.detach() * 2.5, lam=5.0), base)
    zero = torch.zeros_like(sm)
    torch.testing.assert_close(CE.explanation_kd_loss(s, t, y, sm, zero, lam=5.0), base + 5.0)


@pytest.mark.parametrize("kwargs,match", [({"lam": -1.0}, "lam must be"), ({"temperature": 0.0}, "temperature"),
                                          ({"alpha": 1.5}, "alpha must be")])
def test_explanation_kd_loss_rejects_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CE.explanation_kd_loss(*_inputs(), **kwargs)


def test_explanation_kd_loss_rejects_mismatched_maps_and_labels():
    s, t, y, sm, tm = _inputs()
    with pytest.raises(ValueError, match="teacher_map and student_map"):
        CE.explanation_kd_loss(s, t, y, sm, tm[:, :, :2])
    with pytest.raises(ValueError, match="labels must be"):
        CE.explanation_kd_loss(s, t, y + 10, sm, tm)


# ----------------------------------------------------------------------------- taylor_channel_importance
def test_taylor_channel_importance_hand_worked():
    A = torch.tensor([[[[1.0, 2.0]], [[1.0, 1.0]]], [[[1.0, 0.0]], [[2.0, 2.0]]]])
    G = torch.tensor([[[[1.0, -1.0]], [[1.0, 1.0]]], [[[-2.0, 0.0]], [[1.0, -1.0]]]])
    # channel 0: example means (1 - 2)/2 = -0.5 and -2/2 = -1 -> (0.5 + 1)/2; channel 1: 1 and 0 -> 0.5
    torch.testing.assert_close(CE.taylor_channel_importance(A, G), torch.tensor([0.75, 0.5]))


def test_taylor_channel_importance_is_the_derivative_of_the_loss_in_the_channel_scale():
    """Oracle: d L_n / d s_c at s = 1, with channel c's map scaled by s_c, equals sum_hw A dL/dA."""
    torch.manual_seed(0)
    net = models.SmallCNN(1, 3, (4, 6), 8).eval()
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    ag = CE.activations_and_gradients(net, ["features.1"], x, y)
    got = CE.taylor_channel_importance(*ag["features.1"])
    per_example = []
    for n in range(5):
        scale = torch.ones(1, 4, 1, 1, requires_grad=True)
        h = net.features[1](net.features[0](x[n:n + 1])) * scale
        out = net.classifier(net.features[4](net.features[3](net.features[2](h))))
        loss = F.cross_entropy(out, y[n:n + 1]) / 5                       # the batch-mean loss's share
        per_example.append(torch.autograd.grad(loss, scale)[0].flatten() / 64)   # / (H W)
    expected = torch.stack(per_example).abs().mean(0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)


def test_taylor_channel_importance_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"activation must be .*\(N, C, H, W\)"):
        CE.taylor_channel_importance(torch.randn(2, 3, 3), torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="gradient must be"):
        CE.taylor_channel_importance(torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 2))


# ----------------------------------------------------------------------------- helpers
def test_differentiable_grad_cam_equals_chapter_05_grad_cam_and_has_a_graph():
    torch.manual_seed(1)
    net = models.SmallCNN(1, 3, (4, 6), 8).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 2, 1, 1])
    cam, logits = CE.differentiable_grad_cam(net, x, t)
    torch.testing.assert_close(cam.detach(), LE.grad_cam(net, net.last_conv, x, t))
    assert cam.requires_grad and logits.shape == (4, 3)


def test_channel_keep_drops_the_lowest_scores_lower_index_first_among_ties():
    keep = CE.channel_keep(torch.tensor([0.5, 0.1, 0.1, 0.9]), 0.25)
    assert keep.tolist() == [True, False, True, True]


def test_prune_channels_keeps_removed_channels_at_zero_after_fine_tuning():
    torch.manual_seed(2)
    net = models.SmallCNN(1, 3, (4, 6), 8)
    X, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    keep = {"features.0": torch.tensor([True, False, True, False])}
    pruned = CE.prune_channels(net, keep, X, y, epochs=2)
    assert pruned.features[0].weight[[1, 3]].abs().sum() == 0 and pruned.features[0].bias[[1, 3]].abs().sum() == 0
    assert not torch.equal(pruned.features[0].weight[0], net.features[0].weight[0])   # the rest trained
    assert net.features[0].weight[1].abs().sum() > 0                                  # the original untouched


def test_attribution_share_hand_worked():
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 0, 0], a[0, 0, 2, 2] = -3.0, 1.0
    assert CE.attribution_share(a, CE.corner_mask(4, 1)).item() == pytest.approx(0.75)
    assert int(CE.corner_mask(16).sum()) == 16


def test_explanation_kd_loss_equals_a_hand_worked_case():
    # One example, two classes. Teacher logits (0, ln 3) -> p_t = (1/4, 3/4) at T = 1; student (0, 0) -> (1/2, 1/2).
    # KL(p_t || p_s) = 1/4 ln(1/2) + 3/4 ln(3/2); CE(student, y=1) = ln 2. Maps (1, 1) and (1, 0): cos = 1/sqrt(2).
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])
    y = torch.tensor([1])
    sm, tm = torch.tensor([[[[1.0, 1.0]]]]), torch.tensor([[[[1.0, 0.0]]]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    expected = 0.6 * kl + 0.4 * math.log(2.0) + 0.7 * (1 - 1 / math.sqrt(2))
    got = CE.explanation_kd_loss(s, t, y, sm, tm, lam=0.7, temperature=1.0, alpha=0.6)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_explanation_kd_loss_temperature_enters_squared_on_the_soft_term():
    # Teacher logits (0, 2 ln 3) at T = 2 give the same p_t = (1/4, 3/4); the soft term is then T^2 = 4 times KL.
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, 2 * math.log(3.0)]])
    y = torch.tensor([0])
    maps = torch.ones(1, 1, 2, 2)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    got = CE.explanation_kd_loss(s, t, y, maps, maps, lam=3.0, temperature=2.0, alpha=1.0)
    assert float(got) == pytest.approx(4 * kl, rel=1e-6)


# ----------------------------------------------------------------------------- controls: fine-tune only, the band
def _tiny_split(n=48, seed=0):
    from types import SimpleNamespace
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 8, 8, generator=gen)
    y = (X[:, 0, :4].mean((1, 2)) > X[:, 0, 4:].mean((1, 2))).long()
    return SimpleNamespace(X_train=X, y_train=y)


def test_fine_tune_only_is_prunings_fine_tuning_without_a_mask():
    from course_lib import pruning
    split = _tiny_split()
    models.set_seed(0)
    model = models.SmallCNN(1, 2, (4, 8), 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twins = CE.fine_tune_only(model, split, seeds=(0, 3), epochs=2)
    for s, twin in zip((0, 3), twins):
        ref = pruning.fine_tune(model, {}, split.X_train, split.y_train, epochs=2, seed=s)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(twin.state_dict()[k], v, rtol=0, atol=0)
        assert not twin.training
    assert any(not torch.equal(twins[0].state_dict()[k], twins[1].state_dict()[k]) for k in before)  # seeds differ
    for k, v in model.state_dict().items():                                                         # original untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("kwargs, error", [({"seeds": ()}, ValueError), ({"seeds": (-1,)}, ValueError),
                                           ({"epochs": 0}, ValueError), ({"lr": 0.0}, ValueError)])
def test_fine_tune_only_validates(kwargs, error):
    args = {"seeds": (0,), "epochs": 1, **kwargs}
    with pytest.raises(error, match=next(iter(kwargs))):
        CE.fine_tune_only(models.SmallCNN(1, 2, (4, 8), 8), _tiny_split(), **args)


def test_agreement_per_image_matches_scipy_and_marks_constant_maps_nan():
    gen = torch.Generator().manual_seed(3)
    ref, other = torch.randn(5, 1, 4, 4, generator=gen), torch.randn(5, 1, 4, 4, generator=gen)
    other[2] = 0.0                                                     # an all-zero map: no ranks
    out = CE.agreement_per_image({"e": {"ref": ref, "m": other}}, "ref")["e"]
    assert out["m"].dtype == torch.float64 and out["m"].shape == (5,)
    assert torch.isnan(out["m"][2]) and not torch.isnan(out["m"][[0, 1, 3, 4]]).any()
    for i in (0, 1, 3, 4):
        assert out["m"][i].item() == pytest.approx(spearmanr(ref[i].flatten(), other[i].flatten()).statistic)
    torch.testing.assert_close(out["ref"], torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="reference"):
        CE.agreement_per_image({"e": {"m": other}}, "ref")


def test_group_agreement_and_difference_are_paired_by_image():
    gen = torch.Generator().manual_seed(4)
    per_image = {n: torch.rand(40, generator=gen, dtype=torch.float64) for n in "abcd"}
    per_image["c"][7] = float("nan")
    g = CE.group_agreement(per_image, ["a", "b"])
    assert g.estimate == pytest.approx(float((per_image["a"] + per_image["b"]).mean() / 2)) and g.n == 40
    assert g.low < g.estimate < g.high
    assert CE.group_agreement(per_image, ["a", "c"]).n == 39                              # the nan image is left out
    d_ab, d_ba = CE.agreement_difference(per_image, ["a"], ["b"]), CE.agreement_difference(per_image, ["b"], ["a"])
    assert d_ab.estimate == pytest.approx(-d_ba.estimate) and d_ab.difference
    same = CE.agreement_difference(per_image, ["a", "b"], ["b", "a"])
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    # shifting every image of one group by 0.1 shifts the paired difference and both ends by exactly 0.1
    shifted = {**per_image, "e": per_image["a"] + 0.1}
    d_ea = CE.agreement_difference(shifted, ["e"], ["a"])
    assert (d_ea.estimate, d_ea.low, d_ea.high) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="unknown"):
        CE.group_agreement(per_image, ["a", "z"])
    with pytest.raises(ValueError, match="non-empty"):
        CE.agreement_difference(per_image, [], ["a"])


def test_band_rows_spread_is_the_range_of_per_model_means():
    gen = torch.Generator().manual_seed(5)
    per_image = {"e": {n: torch.rand(30, generator=gen, dtype=torch.float64) + i for i, n in enumerate("abc")}}
    row, = CE.band_rows(per_image, {"band": ["a", "b", "c"]}, accuracy={"a": 0.9, "b": 0.8, "c": 1.0})
    means = [float(per_image["e"][n].mean()) for n in "abc"]
    assert row["seed min"] == pytest.approx(min(means)) and row["seed max"] == pytest.approx(max(means))
    assert row["models"] == 3 and row["images"] == 30 and row["test accuracy"] == pytest.approx(0.9)
    assert row["low"] < row["agreement"] < row["high"]


def test_shipped_band_is_the_recipe_the_chapter_states():
    # the chapter says: shapes_cnn's architecture and data, seed s for the initialisation and the shuffle, 10 epochs
    from course_lib import checkpoints
    split = checkpoints.dataset("shapes_cnn")
    run = models.train_seeds(lambda: models.SmallCNN(1, 3, (16, 32), 16), split, seeds=[1], progress=False,
                             keep_models=True, epochs=10, lr=3e-3, batch_size=64)
    shipped = checkpoints.load("shapes_cnn_seed1")
    for k, v in shipped.state_dict().items():
        torch.testing.assert_close(run["models"][0].state_dict()[k], v, rtol=1e-4, atol=1e-5)
    assert run["test"][0] >= 0.96


# ----------------------------------------------------------------------------- trainable_grad_cam (exercise, section 4)
def _tiny_tanh_cnn(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(3, 4, 3, padding=1),
                              torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))
    return net.double().eval()


def test_trainable_grad_cam_equals_captum_layer_grad_cam():
    from captum.attr import LayerGradCam

    torch.manual_seed(3)
    net = models.SmallCNN(1, 3, (4, 6), 8).eval()
    x, t = torch.randn(5, 1, 8, 8), [0, 2, 1, 1, 0]
    cam = CE.trainable_grad_cam(net, net.last_conv, x, t)
    theirs = LayerGradCam(net, net.last_conv).attribute(x, target=t, relu_attributions=True)
    torch.testing.assert_close(cam.detach(), theirs.detach())
    assert cam.requires_grad and cam.shape == (5, 1, 8, 8)


def test_trainable_grad_cam_weight_gradient_equals_finite_differences_of_the_map():
    """d/dtheta sum(w * cam) by autograd (double backpropagation) against central differences of
    captum's (graph-free) Grad-CAM in float64: the second-order path through alpha included."""
    from captum.attr import LayerGradCam

    net, x, t = _tiny_tanh_cnn(), torch.randn(3, 1, 5, 5, dtype=torch.float64), [2, 0, 1]
    w = torch.rand(3, 1, 5, 5, dtype=torch.float64)
    cam = CE.trainable_grad_cam(net, net[2], x, t)
    grads = torch.autograd.grad((cam * w).sum(), list(net.parameters()), allow_unused=True)
    assert grads[-1] is None or grads[-1].abs().max() < 1e-12          # the classifier's bias does not shape the map
    eps = 1e-6
    for p, g in zip(list(net.parameters())[:5], grads[:5]):
        for i in torch.randperm(p.numel())[:4].tolist():
            with torch.no_grad():
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + eps
            up = (LayerGradCam(net, net[2]).attribute(x, target=t, relu_attributions=True) * w).sum()
            with torch.no_grad():
                p.view(-1)[i] = old - eps
            down = (LayerGradCam(net, net[2]).attribute(x, target=t, relu_attributions=True) * w).sum()
            with torch.no_grad():
                p.view(-1)[i] = old
            assert g.view(-1)[i].item() == pytest.approx(float((up - down).detach()) / (2 * eps), rel=1e-4, abs=1e-7)
    assert grads[4].abs().max() > 1e-3      # the classifier's weights get a gradient only through alpha


def test_trainable_grad_cam_rejects_a_foreign_layer_and_bad_targets():
    net = _tiny_tanh_cnn()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="layer"):
        CE.trainable_grad_cam(net, torch.nn.Conv2d(3, 4, 3), x, 0)
    with pytest.raises(ValueError, match="target"):
        CE.trainable_grad_cam(net, net[2], x, 3)
    with pytest.raises(ValueError, match="target"):
        CE.trainable_grad_cam(net, net[2], x, [0, 1, 2])


# ----------------------------------------------------------------------------- band_position (exercise, section 2)
def test_band_position_hand_worked_with_nan_and_a_tie():
    # images 0 and 3 are finite everywhere; means over them: compressed 0.5, band 0.5 (a tie), 0.25, 0.75
    compressed = torch.tensor([0.25, float("nan"), 1.0, 0.75])
    band = torch.tensor([[0.5, 0.0, float("nan"), 0.5], [0.0, 1.0, 1.0, 0.5], [1.0, 0.5, 0.0, 0.5]])
    r = CE.band_position(compressed, band)
    assert r == {"mean": 0.5, "band_low": 0.25, "band_high": 0.75, "percentile": 50.0, "verdict": "inside", "n": 2}
    assert CE.band_position(compressed + 1, band)["verdict"] == "above"
    assert CE.band_position(compressed - 1, band) == {"mean": -0.5, "band_low": 0.25, "band_high": 0.75,
                                                          "percentile": 0.0, "verdict": "below", "n": 2}
    at_min = CE.band_position(torch.tensor([0.25, 0.25]), torch.tensor([[0.25, 0.25], [1.0, 1.0]]))
    assert at_min["verdict"] == "inside" and at_min["percentile"] == 25.0


def test_band_position_rejects_bad_shapes_and_no_common_image():
    with pytest.raises(ValueError, match="B >= 2"):
        CE.band_position(torch.ones(3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="band"):
        CE.band_position(torch.ones(3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="finite"):
        CE.band_position(torch.tensor([float("nan"), 1.0]), torch.tensor([[1.0, float("nan")], [1.0, 1.0]]))


# ----------------------------------------------------------------------------- stamp_test (exercise, section 6)
def _corner_stamp(images, c):
    out = images.clone()
    r, col = [(0, 0), (0, 3), (3, 0)][c]
    out[:, :, r, col] = 10.0
    return out


def test_stamp_test_hand_worked():
    """Linear(16, 3) on 4x4 images: class c's logit is 1 * pixel at corner c plus a clean bias. Clean images
    are zero except one pixel that picks the clean class, so every prediction is known by hand."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
        for c, (r, col) in enumerate([(0, 0), (0, 3), (3, 0)]):
            net[1].weight[c, r * 4 + col] = 1.0                  # the corner of class c
        net[1].weight[:, 5] = torch.tensor([0.0, 20.0, 0.0])     # pixel (1, 1) says "class 1" louder than a stamp
    images = torch.zeros(3, 1, 4, 4)
    images[1, 0, 1, 1] = 1.0                                     # image 1: clean class 1, stamps cannot move it
    before = images.clone()                                      # images 0 and 2: all zero, clean class 0 (argmax tie)
    r = CE.stamp_test(net, images, _corner_stamp)
    # stamps of class 0, 1, 2 are followed by images {0, 2}, {0, 1, 2} and {0, 2}
    torch.testing.assert_close(r["follow"], torch.tensor([2 / 3, 1.0, 2 / 3], dtype=torch.float64))
    assert r["rate"] == pytest.approx(7 / 9)
    # pairs whose clean prediction is not c: images 0 and 2 with c = 1, 2 (4 flips), image 1 with c = 0, 2 (none)
    assert r["flip"] == pytest.approx(4 / 6)
    assert torch.equal(images, before)                           # the clean images unchanged


def test_stamp_test_chance_is_exactly_one_over_k_for_a_model_that_ignores_stamps():
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        net[1].weight[:, [0, 3, 12, 15]] = 0.0                   # blind to the corners
    r = CE.stamp_test(net, torch.randn(20, 1, 4, 4), lambda x, c: _corner_stamp(x, c % 3))
    assert r["rate"] == 0.25 and r["flip"] == 0.0


def test_stamp_test_rejects_images_that_are_not_nchw():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match="images"):
        CE.stamp_test(net, torch.randn(3, 16), _corner_stamp)
