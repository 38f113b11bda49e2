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
