"""Chapter 05's references against Captum, shap, closed forms and hand-worked tiny cases."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import local_explanation as L

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _mlp(seed=0, d=6, h=8, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).eval()


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_saliency_matches_captum(seed):
    from captum.attr import Saliency
    model, x = _cnn(seed), torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    target = [0, 2, 1, 2]
    expected = Saliency(model).attribute(x, target=target, abs=True)
    torch.testing.assert_close(L.saliency(model, x, target), expected)


@pytest.mark.parametrize("steps", [2, 7, 50])
def test_integrated_gradients_matches_captum_riemann_middle(steps):
    from captum.attr import IntegratedGradients
    model, x = _mlp(), torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    base = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    expected = IntegratedGradients(model).attribute(x, base, target=1, n_steps=steps, method="riemann_middle")
    torch.testing.assert_close(L.integrated_gradients(model, x, 1, baseline=base, steps=steps), expected,
                               rtol=1e-4, atol=1e-6)


def test_integrated_gradients_is_exact_on_a_linear_model():
    model = nn.Linear(4, 2)
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    expected = model.weight[1].detach() * x[0]
    torch.testing.assert_close(L.integrated_gradients(model, x, 1, steps=1)[0], expected)
    gap = L.completeness_gap(model, x, 1, L.integrated_gradients(model, x, 1, steps=3))
    assert abs(float(gap)) < 1e-5


@pytest.mark.parametrize("window,stride", [((1, 2, 2), 2), ((1, 3, 3), (1, 2, 2)), ((1, 2, 4), (1, 1, 3))])
def test_occlusion_matches_captum(window, stride):
    from captum.attr import Occlusion
    model, x = _cnn(2), torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    expected = Occlusion(model).attribute(x, sliding_window_shapes=window, strides=stride, target=[1, 0],
                                          baselines=0.5)
    torch.testing.assert_close(L.occlusion(model, x, [1, 0], window, stride, baseline=0.5), expected,
                               rtol=1e-4, atol=1e-6)


def test_occlusion_hand_worked_cut_off_window():
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[1.0, 2.0, 4.0]])
    # length 3, window 2, stride 2: windows {0, 1} (drop 3) and {2} (drop 4)
    got = L.occlusion(model, torch.ones(1, 3), 0, (2,), 2)
    torch.testing.assert_close(got, torch.tensor([[3.0, 3.0, 4.0]]))


@pytest.mark.parametrize("seed", [0, 1])
def test_grad_cam_matches_captum(seed):
    from captum.attr import LayerGradCam
    model, x = _cnn(seed), torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    expected = LayerGradCam(model, model[2]).attribute(x, target=[2, 0, 1], relu_attributions=True)
    got = L.grad_cam(model, model[2], x, [2, 0, 1])
    assert got.shape == (3, 1, 6, 6)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_grad_cam_rejects_foreign_layer():
    with pytest.raises(ValueError, match="submodule"):
        L.grad_cam(_cnn(), nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 6, 6), 0)


def test_exact_shapley_matches_shap_exact_and_is_efficient():
    import shap
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8,))

    def f(z):
        return np.tanh(z @ W) + z[:, 0] * z[:, 3]
    x, base = rng.normal(size=8), rng.normal(size=8)
    phi = L.exact_shapley(f, x, base)
    assert abs(phi.sum() - (f(x[None])[0] - f(base[None])[0])) < 1e-8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = shap.explainers.Exact(f, base[None])(x[None]).values[0]
    np.testing.assert_allclose(phi, expected, atol=1e-10)


def test_exact_shapley_closed_form_for_linear_and_too_many_features():
    w = np.array([1.0, -2.0, 3.0])
    phi = L.exact_shapley(lambda z: z @ w, np.array([1.0, 1.0, 2.0]), np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(phi, [1.0, 0.0, 6.0], atol=1e-12)
    with pytest.raises(ValueError, match="at most 14"):
        L.exact_shapley(lambda z: z.sum(1), np.zeros(15), np.zeros(15))


def test_lime_tabular_recovers_linear_weights_and_is_deterministic():
    w = np.array([0.5, -1.0, 2.0, 0.0])
    got = L.lime_tabular(lambda z: z @ w + 3.0, np.ones(4), 0.5, seed=1)
    np.testing.assert_allclose(got, w, atol=1e-9)
    f = lambda z: np.sin(z).sum(1)
    np.testing.assert_array_equal(L.lime_tabular(f, np.ones(4), 1.0, seed=3), L.lime_tabular(f, np.ones(4), 1.0, seed=3))


def test_lime_tabular_small_kernel_approximates_gradient():
    f = lambda z: np.sin(2 * z[:, 0]) + z[:, 1] ** 2
    x = np.array([0.3, 0.8])
    grad = np.array([2 * math.cos(0.6), 1.6])
    got = L.lime_tabular(f, x, 1.5, n_samples=4000, kernel_width=0.1, seed=0)
    assert np.abs(got - grad).max() < 0.1


def test_deletion_curve_hand_worked():
    model = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    attr = torch.tensor([[0.0, 5.0, 5.0, 1.0]])        # order: 1, 2 (tie -> lower index first), 3, 0
    curve = L.deletion_curve(model, x, 0, attr, steps=4)
    logits = torch.tensor([10.0, 8.0, 5.0, 1.0, 0.0])
    torch.testing.assert_close(curve[0], torch.sigmoid(logits))
    # steps=3 with 4 features: floor(k*4/3) = 0, 1, 2, 4
    curve3 = L.deletion_curve(model, x, 0, attr, steps=3)
    torch.testing.assert_close(curve3[0], torch.sigmoid(torch.tensor([10.0, 8.0, 5.0, 0.0])))


def test_target_checks():
    model, x = _mlp(), torch.zeros(2, 6)
    with pytest.raises(ValueError, match="target"):
        L.saliency(model, x, 3)
    with pytest.raises(ValueError, match="target"):
        L.saliency(model, x, [0, 1, 2])
    with pytest.raises(TypeError, match="target"):
        L.saliency(model, x, True)
    with pytest.raises(ValueError, match="batch"):
        L.saliency(model, torch.zeros(6), 0)


def test_pointing_game_and_mask_overlap():
    attr = torch.tensor([[[[0.0, 3.0], [1.0, 2.0]]]])
    mask = torch.tensor([[[[False, True], [False, True]]]])
    assert float(L.pointing_game(attr, mask)) == 1.0
    assert float(L.mask_overlap(attr, mask)) == 1.0
    assert float(L.mask_overlap(-attr.flip(-1), mask)) == 0.0


def test_smoothgrad_is_deterministic_and_shaped():
    model, x = _cnn(), torch.rand(2, 1, 6, 6)
    a, b = L.smoothgrad(model, x, 0, n_samples=4, seed=1), L.smoothgrad(model, x, 0, n_samples=4, seed=1)
    assert a.shape == x.shape and torch.equal(a, b)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is much faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Sines(nn.Module):
    """f(z) = sum_i a_i sin(b_i z_i), as two identical logits: SmoothGrad has a closed form."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([1.0, 2.0, 0.5])

    def forward(self, z):
        return (self.a * torch.sin(self.b * z)).sum(1, keepdim=True).repeat(1, 2)


def test_smoothgrad_averages_raw_gradients_closed_form_and_noise_tunnel():
    from captum.attr import NoiseTunnel, Saliency
    model, x, sigma = _Sines(), torch.tensor([[0.3, -0.2, 1.0]]), 0.5
    # E[a b cos(b (x + sigma eps))] = a b cos(b x) exp(-(b sigma)^2 / 2)
    closed = model.a * model.b * torch.cos(model.b * x) * torch.exp(-(model.b * sigma) ** 2 / 2)
    got = L.smoothgrad(model, x, 0, n_samples=20000, sigma=sigma, seed=0)
    torch.testing.assert_close(got, closed, atol=0.02, rtol=0)
    torch.manual_seed(0)
    theirs = NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=20000, stdevs=sigma,
                                                    target=0, abs=False)
    torch.testing.assert_close(got, theirs, atol=0.03, rtol=0)


def test_smoothgrad_raw_vs_absolute_on_a_linear_model():
    model = nn.Linear(3, 2)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    w = model.weight[1].detach().expand(2, 3)
    torch.testing.assert_close(L.smoothgrad(model, x, 1, n_samples=5), w)          # signed weights, any noise
    torch.testing.assert_close(L.smoothgrad(model, x, 1, n_samples=5, absolute=True), w.abs())


def test_gradient_x_input_matches_captum():
    from captum.attr import InputXGradient
    model, x = _cnn(3), torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(L.gradient_x_input(model, x, [0, 1, 2]),
                               InputXGradient(model).attribute(x, target=[0, 1, 2]))


def test_guided_backprop_matches_captum():
    from captum.attr import GuidedBackprop
    model, x = _cnn(4), torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(L.guided_backprop(model, x, [2, 0, 1]),
                               GuidedBackprop(model).attribute(x, target=[2, 0, 1]))
    assert not model[1]._backward_hooks                                  # hooks removed


def test_integrated_gradients_no_extra_forward_pass():
    calls = []
    model = _mlp()
    model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    L.integrated_gradients(model, torch.randn(3, 6), 1, steps=7)
    assert sum(calls) == 21 and len(calls) == 1                             # tiny input: one pass


@pytest.mark.parametrize("batch_size", [1, 4, 1000])
def test_occlusion_batch_size_gives_captums_map(batch_size):
    from captum.attr import Occlusion
    model, x = _cnn(2), torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    expected = Occlusion(model).attribute(x, sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), target=[1, 0])
    got = L.occlusion(model, x, [1, 0], (1, 3, 3), (1, 2, 2), batch_size=batch_size)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        L.occlusion(model, x, 0, (1, 3, 3), 2, batch_size=0)


def test_occlusion_batch_size_bounds_the_forward_batch():
    seen = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 20 * 20, 2))
    model.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    L.occlusion(model, torch.rand(1, 3, 20, 20), 0, (3, 5, 5), 1, batch_size=16)     # 256 windows
    assert max(seen) <= 16 and sum(seen) == 1 + 1 + 256


def test_rank_correlation_matches_scipy_with_ties():
    from scipy.stats import spearmanr
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 4, (3, 20), generator=gen).float(), torch.randn(3, 20, generator=gen)
    expected = np.mean([spearmanr(a[i].numpy(), b[i].numpy())[0] for i in range(3)])
    assert L.rank_correlation(a, b) == pytest.approx(expected, abs=1e-12)
    assert L.rank_correlation(b, b) == pytest.approx(1.0) and L.rank_correlation(b, -b) == pytest.approx(-1.0)


def test_randomize_layers_cascades_from_the_output_and_leaves_model_unchanged():
    model = _cnn(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copies = L.randomize_layers(model, seed=3)
    assert [name for name, _ in copies] == ["5", "2", "0"]
    for k, (_, m) in enumerate(copies):
        for j, name in enumerate(["5", "2", "0"]):
            same = torch.equal(m.get_submodule(name).weight, model.get_submodule(name).weight)
            assert same == (j > k), (k, name)                              # top k+1 layers re-drawn
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    big = L.randomize_layers(nn.Sequential(nn.Linear(400, 300)), seed=0)[0][1][0].weight
    assert float(big.abs().max()) <= 1 / 20 and float(big.std()) == pytest.approx(1 / 20 / math.sqrt(3), rel=0.02)
    again = L.randomize_layers(model, seed=3)
    assert torch.equal(again[-1][1][0].weight, copies[-1][1][0].weight)    # seeded


def test_cascading_randomization_closed_forms():
    from scipy.stats import spearmanr
    model, x = _cnn(6), torch.rand(2, 1, 6, 6)
    out = L.cascading_randomization(model, lambda m, x, t: L.input_control(m, x, t), x, 0)
    assert [n for n, _ in out] == ["5", "2", "0"] and all(r == pytest.approx(1.0) for _, r in out)
    lin = nn.Linear(5, 2)                                                  # gradient = weight row
    x5 = torch.randn(3, 5)
    raw_gradient = lambda m, x, t: L.smoothgrad(m, x, t, n_samples=1)     # linear: exactly weight[t]
    (name, rho), = L.cascading_randomization(lin, raw_gradient, x5, 1, seed=4)
    new = L.randomize_layers(lin, seed=4)[0][1].weight[1].detach()
    assert name == "" and rho == pytest.approx(spearmanr(lin.weight[1].detach(), new)[0], abs=1e-6)


def test_deletion_auc_closed_forms():
    curve = torch.stack([torch.linspace(1, 0, 11), torch.full((11,), 0.3)])
    torch.testing.assert_close(L.deletion_auc(curve), torch.tensor([0.5, 0.3]))


def test_insertion_curve_hand_worked():
    model = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    attr = torch.tensor([[0.0, 5.0, 5.0, 1.0]])        # order: 1, 2, 3, 0; inserted logits 0, 2, 5, 9, 10
    curve = L.insertion_curve(model, x, 0, attr, steps=4)
    torch.testing.assert_close(curve[0], torch.sigmoid(torch.tensor([0.0, 2.0, 5.0, 9.0, 10.0])))


def test_score_methods_perfect_map_and_controls():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2, :2] = True
    with torch.no_grad():                                                  # logit 0 = sum of the mask pixels
        model[1].weight[:] = torch.stack([mask[0].flatten().float(), torch.zeros(16)])
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    rows = {r["method"]: r for r in L.score_methods(model, x, 0, mask, {
        "perfect": lambda m, x, t: mask.float() * x, "|x|": L.input_control, "random": L.random_control(0),
        "randomised model": L.on_randomized_model(L.gradient_x_input, model)}, steps=4)}
    assert rows["perfect"]["pointing game"] == 1.0 and rows["perfect"]["mask overlap"] == 1.0
    assert rows["perfect"]["deletion AUC"] < rows["random"]["deletion AUC"]
    assert rows["perfect"]["insertion AUC"] > rows["random"]["insertion AUC"]
    assert set(rows["|x|"]) == {"method", "pointing game", "mask overlap", "deletion AUC", "insertion AUC",
                                "ms / explanation"}


def test_kernel_shap_exact_with_background_matches_shap():
    import shap
    rng = np.random.default_rng(0)
    W = rng.normal(size=6)

    def f(z):
        return np.tanh(z @ W) + z[:, 0] * z[:, 3]
    x, background = rng.normal(size=6), rng.normal(size=(5, 6))
    phi = L.kernel_shap(f, x, background)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = shap.explainers.Exact(f, background)(x[None], silent=True).values[0]
    np.testing.assert_allclose(phi, expected, atol=1e-10)
    assert phi.sum() == pytest.approx(f(x[None])[0] - f(background).mean(), abs=1e-10)   # efficiency
    np.testing.assert_allclose(L.kernel_shap(f, x, background[:1]), L.exact_shapley(f, x, background[0]), atol=1e-10)


def test_kernel_shap_with_a_budget_converges_to_exact():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(10, 4))

    def f(z):
        return np.tanh(z @ W).sum(1)
    x, background = rng.normal(size=10), rng.normal(size=(4, 10))
    exact = L.kernel_shap(f, x, background)
    err = {n: np.mean([np.abs(L.kernel_shap(f, x, background, n_samples=n, seed=s) - exact).max()
                       for s in range(4)]) for n in (32, 512)}             # 2^10 - 2 = 1022 coalitions
    assert err[512] < err[32] and err[512] < 0.05
    a = L.kernel_shap(f, x, background, n_samples=64, seed=2)
    assert a.sum() == pytest.approx(exact.sum(), abs=1e-10)                 # efficiency holds at any budget
    np.testing.assert_array_equal(a, L.kernel_shap(f, x, background, n_samples=64, seed=2))


def test_grad_cam_equals_cam_on_a_gap_head():
    torch.manual_seed(0)
    model, x = L.GapCNN(n_classes=3, channels=(4, 5)).eval(), torch.rand(2, 1, 6, 6)
    A = model.features(x)                                                  # (N, K, h, w)
    w = model.classifier[2].weight                                         # (C, K)
    cam = torch.einsum("k,nkhw->nhw", w[1], A).unsqueeze(1) / 36           # CAM / (h w)
    torch.testing.assert_close(L.grad_cam(model, model.cam_layer, x, 1), cam.relu().detach())


def _pointer_model(prefer_token_one: bool) -> L.AttentionClassifier:
    """Hand-built: token 1 embeds to e_0, the others to 0; the key scores dimension 0 (+/- 5)."""
    model = L.AttentionClassifier(vocab=4, dim=2)
    with torch.no_grad():
        model.embed.weight[:] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        model.key.weight[:] = torch.tensor([[5.0 if prefer_token_one else -5.0, 0.0]])
        model.key.bias.zero_()
        model.out.weight[:] = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
        model.out.bias.zero_()
    return model.eval()


def test_attention_vs_ig_hand_built():
    tokens = torch.tensor([[2, 1, 3, 2], [1, 2, 2, 3]])
    evidence = tokens == 1
    assert L.attention_vs_ig(_pointer_model(True), tokens, evidence) == {"attention": 1.0,
                                                                         "integrated gradients": 1.0}
    hits = L.attention_vs_ig(_pointer_model(False), tokens, evidence)
    assert hits["attention"] == 0.0 and hits["integrated gradients"] == 1.0   # attention looks away, IG does not


def test_attention_intervention_closed_forms():
    tokens = torch.tensor([[2, 1, 3, 2], [1, 2, 2, 3]])
    uniform = _pointer_model(True)
    with torch.no_grad():
        uniform.key.weight.zero_()                                         # attention already uniform
    out = L.attention_intervention(uniform, tokens)
    assert out["TVD uniform"] == pytest.approx(0.0, abs=1e-7) and out["flipped uniform"] == 0.0
    moved = L.attention_intervention(_pointer_model(True), tokens)         # the weight leaves token 1
    a1 = float(torch.softmax(torch.tensor([5.0 * math.tanh(1.0), 0, 0, 0]), 0)[0])      # key sees tanh(e)
    p1 = torch.softmax(torch.tensor([-a1, a1]), 0)
    assert moved["TVD moved to the least attended"] == pytest.approx(float(p1[1] - 0.5), abs=1e-6)


# ----------------------------------------------------------------------------- per-image scores and paired intervals
def _mask_model():
    """logit 0 = sum of the top-left 2x2 pixels (the object); logit 1 = 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2, :2] = True
    with torch.no_grad():
        model[1].weight[:] = torch.stack([mask[0].flatten().float(), torch.zeros(16)])
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    return model.eval(), x, mask


def test_score_per_image_hand_worked_and_equal_to_the_curves():
    model, x, mask = _mask_model()
    outside = (~mask).float() * x                                          # points only outside the object
    scores = L.score_per_image(model, x, 0, mask, {"perfect": lambda m, x, t: mask.float() * x,
                                                   "outside": lambda m, x, t: outside}, steps=4)
    perfect, wrong = scores["perfect"], scores["outside"]
    assert perfect["pointing game"].tolist() == [1.0] * 3 and perfect["mask overlap"].tolist() == [1.0] * 3
    assert wrong["pointing game"].tolist() == [0.0] * 3 and wrong["mask overlap"].tolist() == [0.0] * 3
    # by hand: logit 0 = sum of the 4 object pixels, logit 1 = 0, so p = sigmoid(object sum)
    obj = (x * mask).flatten(1).sum(1)
    torch.testing.assert_close(wrong["deletion"][:, :-1], torch.sigmoid(obj).unsqueeze(1).expand(3, 4))
    assert perfect["deletion"][:, 1:].allclose(torch.tensor(0.5))         # a quarter of 16 pixels: the object
    torch.testing.assert_close(perfect["deletion AUC"], L.deletion_auc(perfect["deletion"]))
    means = {r["method"]: r for r in L.score_methods(model, x, 0, mask, {"perfect": lambda m, x, t: mask.float() * x},
                                                     steps=4)}
    for k in L.SCORES:
        assert means["perfect"][k] == pytest.approx(float(perfect[k].mean()))
    with pytest.raises(ValueError, match="mask"):
        L.score_per_image(model, x, 0, mask[:2], {"perfect": L.input_control})
    with pytest.raises(TypeError, match="methods"):
        L.score_per_image(model, x, 0, mask, [L.input_control])


def test_paired_image_difference_is_stats_paired_bootstrap_on_0_1_and_matches_scipy():
    from scipy.stats import bootstrap
    from course_lib import stats
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    ours, theirs = L.paired_image_difference(a, b, seed=3), stats.paired_bootstrap(a, b, seed=3)
    assert (ours.estimate, ours.low, ours.high) == (theirs.estimate, theirs.low, theirs.high)
    assert ours.difference and ours.n == 40
    base = rng.normal(size=30)                                             # a large shared image effect
    a, b = base + 0.3 + 0.1 * rng.normal(size=30), base + 0.1 * rng.normal(size=30)
    iv = L.paired_image_difference(torch.tensor(a), torch.tensor(b), n_boot=20000)
    ref = bootstrap((a - b,), np.mean, method="percentile", n_resamples=20000,
                    random_state=np.random.default_rng(1)).confidence_interval
    assert iv.low == pytest.approx(ref.low, abs=0.01) and iv.high == pytest.approx(ref.high, abs=0.01)
    assert iv.low > 0.2 and iv.high < 0.4                                  # pairing removes the shared effect
    with pytest.raises(ValueError, match="same images"):
        L.paired_image_difference(a, b[:-1])
    with pytest.raises(TypeError, match="a must"):
        L.paired_image_difference("0101", b)


def test_paired_ratio_interval_closed_form_and_scipy():
    from scipy.stats import bootstrap
    rng = np.random.default_rng(2)
    b = rng.uniform(0.05, 0.2, 48)
    exact = L.paired_ratio_interval(1.5 * b, b)                            # every resample: exactly 1.5
    assert exact.estimate == pytest.approx(1.5) and exact.low == pytest.approx(1.5) and exact.high == pytest.approx(1.5)
    a = b * rng.uniform(1.0, 2.0, 48)
    iv = L.paired_ratio_interval(a, b, n_boot=20000)
    assert iv.estimate == pytest.approx(a.mean() / b.mean())
    ref = bootstrap((a, b), lambda p, q: p.mean() / q.mean(), paired=True, vectorized=False, method="percentile",
                    n_resamples=20000, random_state=np.random.default_rng(3)).confidence_interval
    assert iv.low == pytest.approx(ref.low, abs=0.01) and iv.high == pytest.approx(ref.high, abs=0.01)
    with pytest.raises(ValueError, match="positive"):
        L.paired_ratio_interval(a, b - 0.1)


def test_randomization_per_image_matches_scipy_and_cascading_randomization():
    from scipy.stats import spearmanr
    model, x = _cnn(7), torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    per_image = L.randomization_per_image(model, L.saliency, x, [0, 1, 2, 0], seed=2)
    means = L.cascading_randomization(model, L.saliency, x, [0, 1, 2, 0], seed=2)
    assert list(per_image) == [name for name, _ in means] == ["5", "2", "0"]
    for (name, rho), copy_ in zip(means, L.randomize_layers(model, seed=2)):
        assert per_image[name].shape == (4,) and float(per_image[name].mean()) == pytest.approx(rho, abs=1e-12)
        before, after = L.saliency(model, x, [0, 1, 2, 0]), L.saliency(copy_[1], x, [0, 1, 2, 0])
        expected = [spearmanr(p.flatten(), q.flatten())[0] for p, q in zip(before, after)]
        np.testing.assert_allclose(per_image[name].numpy(), expected, atol=1e-10)
    with pytest.raises(TypeError, match="explain"):
        L.randomization_per_image(model, "saliency", x, 0)


# ----------------------------------------------------------------------------- issue 26: orderings, baselines, regression
def test_shapley_regression_is_exact_shapley_with_every_coalition_and_matches_shap_kernel():
    import shap
    rng = np.random.default_rng(3)
    W, w2 = rng.normal(size=(4, 6)), rng.normal(size=4)
    f = lambda z: np.tanh(z @ W.T) @ w2 + z[:, 1] * z[:, 4]                   # noqa: E731
    x, b = rng.normal(size=6), rng.normal(size=6)
    np.testing.assert_allclose(L.shapley_regression(f, x, b), L.exact_shapley(f, x, b), atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = shap.KernelExplainer(f, b[None]).shap_values(x, nsamples=2 ** 6, l1_reg=False, silent=True)
    np.testing.assert_allclose(L.shapley_regression(f, x, b), lib, atol=1e-6)
    Z = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1],
                  [0, 0, 1, 0, 1, 0], [1, 0, 0, 1, 0, 1], [0, 1, 0, 0, 0, 1]], dtype=bool)
    phi = L.shapley_regression(f, x, b, Z)
    assert abs(phi.sum() - (f(x[None])[0] - f(b[None])[0])) < 1e-10          # efficiency holds on any set
    with pytest.raises(ValueError):
        L.shapley_regression(f, x, b, np.ones((2, 6), bool))
    with pytest.raises(ValueError):
        L.shapley_regression(f, np.zeros(15), np.zeros(15))


def test_ordering_aucs_greedy_order_is_extreme_on_an_additive_model():
    # Two classes whose logit difference is w . x: MoRF on the signed w * x (x >= 0, baseline 0) removes the
    # largest contributions first, so no other order lowers the target probability faster; LeRF the reverse.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.randn(8), torch.zeros(8)]))
        model[1].bias.zero_()
    x = torch.rand(5, 1, 8)
    a = model[1].weight[0].detach() * x
    out = L.ordering_aucs(model, x, 0, a, steps=8)
    for seed in range(20):
        perm = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
        other = L.ordering_aucs(model, x, 0, perm, steps=8)["deletion MoRF"]
        assert (out["deletion MoRF"] <= other + 1e-6).all() and (out["deletion LeRF"] >= other - 1e-6).all()
    torch.testing.assert_close(out["deletion LeRF"], out["insertion MoRF"])   # baseline 0, steps divide n


def test_blur_and_ig_with_baselines_are_complete():
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(L.blur(torch.full((1, 2, 6, 6), 0.3)), torch.full((1, 2, 6, 6), 0.3))
    blurred = L.blur(x)
    assert blurred.min() >= x.min() - 1e-6 and blurred.max() <= x.max() + 1e-6   # convex combinations
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = x.double()
    maps = L.ig_with_baselines(model, x, 1, torch.rand(10, 1, 8, 8, dtype=torch.float64), steps=256, n_noise=2)
    assert list(maps) == ["black (0)", "training mean", "blurred input", "uniform noise (mean of 2)"]
    torch.testing.assert_close(maps["black (0)"], L.integrated_gradients(model, x, 1, None, 256))
    with torch.no_grad():
        fx = model(x)[:, 1]
        fb = model(L.blur(x))[:, 1]
    gap = maps["blurred input"].flatten(1).sum(1) - (fx - fb)
    assert gap.abs().max() < 1e-3                                              # completeness against the blur
    with pytest.raises(ValueError):
        L.ig_with_baselines(model, x, 1, torch.rand(10, 1, 4, 4, dtype=torch.float64))


def test_conditional_shapley_credits_a_correlated_unread_feature_as_in_closed_form():
    gen = np.random.default_rng(1)
    x1 = gen.normal(size=40000)
    data = np.column_stack([x1, 0.8 * x1 + 0.6 * gen.normal(size=40000)])      # corr 0.8, unit variances
    phi = L.conditional_shapley(lambda z: np.asarray(z)[:, 0], np.array([1.0, 1.0]), data, width=0.1)
    np.testing.assert_allclose(phi, [0.6, 0.4], atol=0.04)                      # phi_2 = rho / 2 (E[x1] = 0)
    indep = np.column_stack([gen.normal(size=40000), gen.normal(size=40000)])
    f = lambda z: 2 * np.asarray(z)[:, 0] - np.asarray(z)[:, 1]               # noqa: E731  additive, independent
    np.testing.assert_allclose(L.conditional_shapley(f, np.array([0.5, -1.0]), indep, 0.1), [1.0, 1.0], atol=0.1)
    # independent features, additive f: every value function gives w_i (x_i - E x_i) = (2 * 0.5, -1 * -1)
    with pytest.raises(ValueError):
        L.conditional_shapley(f, np.array([9.0, 9.0]), indep, 0.01)


def test_roar_remove_fills_the_top_ranked_elements():
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 2, 4)
    a = torch.tensor([[[[5.0, 1.0, 7.0, 0.0], [2.0, 7.0, 3.0, 4.0]]]])
    out = L.roar_remove(x, a, 0.25, -1.0)                # floor(0.25 * 8) = 2: the two 7s (ties in raster order)
    assert out.flatten().tolist() == [0, 1, -1, 3, 4, -1, 6, 7] and x[0, 0, 0, 2] == 2   # x unchanged
    assert torch.equal(L.roar_remove(x, a, 0.0, -1.0), x)
    assert (L.roar_remove(x, a, 1.0, -1.0) == -1).all()
    with pytest.raises(ValueError, match="fraction"):
        L.roar_remove(x, a, 1.5, 0.0)
    with pytest.raises(ValueError, match="attribution"):
        L.roar_remove(x, a[..., :2], 0.5, 0.0)


def test_roar_split_fills_with_the_training_mean_and_keeps_labels():
    from course_lib import data
    split = data.shapes(n=60, size=8, seed=0)
    maps = {p: getattr(split, f"X_{p}").abs() for p in ("train", "val", "test")}
    out = L.roar_split(split, maps, 0.5)
    fill = float(split.X_train.mean())
    removed = (out.X_test != split.X_test)
    assert torch.allclose(out.X_test[removed], torch.tensor(fill)) and torch.equal(out.y_test, split.y_test)
    assert int(removed.sum()) <= len(split.X_test) * 32


def test_cached_roar_study_is_complete_and_removal_hurts():
    r = L.load_roar()
    n = len(r["seeds"])
    assert n >= 5 and set(r["accuracy"]) == set(L.ROAR_MAPS)
    for m in L.ROAR_MAPS:
        for q in r["fractions"]:
            acc = np.array(r["accuracy"][m][str(q)])
            assert acc.shape == (n,) and (acc < np.array(r["none"])).all()    # removing pixels never helps here


def test_roar_maps_subset_is_the_same_random_map():
    from course_lib import data
    split = data.shapes(n=60, size=8, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    full, only = L.roar_maps(model, split, steps=2), L.roar_maps(model, split, names=["random"])
    assert list(only) == ["random"] and all(torch.equal(full["random"][p], only["random"][p]) for p in only["random"])
    assert torch.equal(full["|x|"]["test"], split.X_test.abs())
    with pytest.raises(ValueError, match="names"):
        L.roar_maps(model, split, names=["saliency"])
