"""Chapter 05's graders accept the reference and reject the stub and the wrong answers learners write."""
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.grader import grading
from course_lib import local_explanation as L
from grader_contract import SEEDS, contract_tests, grade, stub

pytestmark = pytest.mark.filterwarnings("ignore:An input array is constant")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is ~8x faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _t(model, x, target):
    """Checked targets, (N,) int64 (the same rules as the reference, written again)."""
    if x.dim() < 2:
        raise ValueError("x needs a batch dim")
    n_classes = model(x[:1]).shape[1]
    t = torch.full((len(x),), target) if isinstance(target, int) else torch.as_tensor(target)
    if t.shape != (len(x),) or (t < 0).any() or (t >= n_classes).any():
        raise ValueError("bad target")
    return t


def _out(model, x, target, prob=False):
    out = model(x)
    out = out.softmax(1) if prob else out
    return out[torch.arange(len(x)), _t(model, x, target)]


def _grad(model, x, target, prob=False):
    x = x.detach().requires_grad_(True)
    g, = torch.autograd.grad(_out(model, x, target, prob).sum(), x)
    return g


# ----------------------------------------------------------------------------- saliency
def sal_no_abs(model, x, target):
    return _grad(model, x, target)


def sal_probability(model, x, target):
    return _grad(model, x, target, prob=True).abs()


def sal_times_input(model, x, target):
    return (_grad(model, x, target) * x).abs()


def sal_first_target_for_all(model, x, target):
    t = target if isinstance(target, int) else int(target[0])
    return _grad(model, x, t).abs()


# ----------------------------------------------------------------------------- integrated_gradients
def _ig(model, x, target, baseline=None, steps=50, offset=0.5, factor=True, prob=False, use_baseline=True):
    if steps < 1:
        raise ValueError("steps must be >= 1")
    b = torch.zeros_like(x) if baseline is None or not use_baseline else baseline
    total = torch.zeros_like(x)
    for k in range(steps):
        total += _grad(model, b + (k + offset) / steps * (x - b), target, prob)
    return (x - b) * total / steps if factor else total / steps


def ig_left_riemann(model, x, target, baseline=None, steps=50):
    return _ig(model, x, target, baseline, steps, offset=0.0)


def ig_right_riemann(model, x, target, baseline=None, steps=50):
    return _ig(model, x, target, baseline, steps, offset=1.0)


def ig_no_input_factor(model, x, target, baseline=None, steps=50):
    return _ig(model, x, target, baseline, steps, factor=False)


def ig_probability(model, x, target, baseline=None, steps=50):
    return _ig(model, x, target, baseline, steps, prob=True)


def ig_ignores_baseline(model, x, target, baseline=None, steps=50):
    return _ig(model, x, target, baseline, steps, use_baseline=False)


# ----------------------------------------------------------------------------- occlusion
def _occ(model, x, target, window, stride, baseline=0.0, mean=True, cut_off=True, prob=False, sign=1.0):
    dims = x.shape[1:]
    stride = (stride,) * len(dims) if isinstance(stride, int) else tuple(stride)
    if len(window) != len(dims) or any(w > d for w, d in zip(window, dims)) or any(s > w < d for s, w, d in
                                                                                 zip(stride, window, dims)):
        raise ValueError("bad window or stride")
    with torch.no_grad():
        full = _out(model, x, target, prob)
        total, count = torch.zeros_like(x), torch.zeros_like(x)
        starts = [range(0, d - w + 1 + (s - 1 if cut_off else 0), s) if cut_off else range(0, d - w + 1, s)
                  for d, w, s in zip(dims, window, stride)]
        for start in itertools.product(*starts):
            sl = (slice(None),) + tuple(slice(a, a + w) for a, w in zip(start, window))
            xo = x.clone()
            xo[sl] = baseline
            total[sl] += sign * (full - _out(model, xo, target, prob)).view(-1, *[1] * len(dims))
            count[sl] += 1
    return total / count.clamp(min=1) if mean else total


def occ_sum(model, x, target, window, stride, baseline=0.0):
    return _occ(model, x, target, window, stride, baseline, mean=False)


def occ_no_cut_off_window(model, x, target, window, stride, baseline=0.0):
    return _occ(model, x, target, window, stride, baseline, cut_off=False)


def occ_probability(model, x, target, window, stride, baseline=0.0):
    return _occ(model, x, target, window, stride, baseline, prob=True)


def occ_sign_flipped(model, x, target, window, stride, baseline=0.0):
    return _occ(model, x, target, window, stride, baseline, sign=-1.0)


# ----------------------------------------------------------------------------- grad_cam
def _cam(model, layer, x, target, relu=True, pool="mean"):
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer must be in model")
    t = _t(model, x, target)
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.update(A=o))
    x = x.detach().requires_grad_(True)
    out = model(x)[torch.arange(len(x)), t]
    h.remove()
    A = store["A"]
    g, = torch.autograd.grad(out.sum(), A)
    alpha = g.mean((2, 3), keepdim=True) if pool == "mean" else \
        g.sum((2, 3), keepdim=True) if pool == "sum" else g.amax((2, 3), keepdim=True)
    cam = (alpha * A).sum(1, keepdim=True)
    return (cam.relu() if relu else cam).detach()


def cam_no_relu(model, layer, x, target):
    return _cam(model, layer, x, target, relu=False)


def cam_sum_pooling(model, layer, x, target):
    return _cam(model, layer, x, target, pool="sum")


def cam_max_pooling(model, layer, x, target):
    return _cam(model, layer, x, target, pool="max")


def cam_abs(model, layer, x, target):
    return _cam(model, layer, x, target, relu=False).abs()


# ----------------------------------------------------------------------------- exact_shapley
def _shap(f, x, baseline, weight):
    M = len(x)
    if M > 14:
        raise ValueError("too many features")
    phi = np.zeros(M)
    for i in range(M):
        others = [j for j in range(M) if j != i]
        subsets = [S for r in range(M) for S in itertools.combinations(others, r)]
        z = np.tile(baseline, (len(subsets), 1))
        for row, S in enumerate(subsets):
            z[row, list(S)] = x[list(S)]
        zi = z.copy()
        zi[:, i] = x[i]
        w = np.array([weight(len(S), M) for S in subsets])
        phi[i] = np.sum(w * (f(zi) - f(z)))
    return phi


def sh_banzhaf(f, x, baseline):
    return _shap(f, x, baseline, lambda s, M: 1 / 2 ** (M - 1))


def sh_off_by_one_weights(f, x, baseline):
    return _shap(f, x, baseline, lambda s, M: math.factorial(s) * math.factorial(M - s) / math.factorial(M + 1))


def sh_leave_one_out(f, x, baseline):
    z = np.tile(x, (len(x), 1))
    z[np.arange(len(x)), np.arange(len(x))] = baseline
    return f(x[None])[0] - f(z)


def sh_add_one_to_baseline(f, x, baseline):
    z = np.tile(baseline, (len(x), 1))
    z[np.arange(len(x)), np.arange(len(x))] = x
    return f(z) - f(baseline[None])[0]


# ----------------------------------------------------------------------------- shapley_regression
def _sreg(f, x, baseline, coalitions=None, kernel=None, constrained=True, use_given=True, swap=False):
    if swap:
        x, baseline = baseline, x
    M = len(x)
    if M < 2 or (coalitions is None and M > 14):
        raise ValueError("bad M")
    if coalitions is None or not use_given:
        Z = np.array([[c >> i & 1 for i in range(M)] for c in range(1, 2 ** M - 1)], dtype=bool)
    else:
        Z = np.asarray(coalitions, dtype=bool)
    s = Z.sum(1)
    k = np.array([(M - 1) / (math.comb(M, int(n)) * n * (M - n)) for n in s]) if kernel is None else kernel(s, M)
    v0, v1 = f(baseline[None])[0], f(x[None])[0]
    y = f(np.where(Z, x, baseline)) - v0
    if not constrained:
        D = np.hstack([np.ones((len(Z), 1)), Z.astype(float)])
        return np.linalg.lstsq(D * np.sqrt(k)[:, None], y * np.sqrt(k), rcond=None)[0][1:]
    # KKT system of the equality-constrained weighted least squares: [2 Z'KZ  1; 1'  0] [phi; lam] = [2 Z'Ky; total]
    Zf = Z.astype(float)
    K = np.zeros((M + 1, M + 1))
    K[:M, :M] = 2 * Zf.T @ (k[:, None] * Zf)
    K[:M, M] = K[M, :M] = 1.0
    rhs = np.append(2 * Zf.T @ (k * y), v1 - v0)
    return np.linalg.solve(K, rhs)[:M]


def sreg_uniform_weights(f, x, baseline, coalitions=None):
    return _sreg(f, x, baseline, coalitions, kernel=lambda s, M: np.ones(len(s)))


def sreg_no_binomial(f, x, baseline, coalitions=None):
    return _sreg(f, x, baseline, coalitions, kernel=lambda s, M: (M - 1) / (s * (M - s)))


def sreg_unconstrained(f, x, baseline, coalitions=None):
    return _sreg(f, x, baseline, coalitions, constrained=False)


def sreg_ignores_coalitions(f, x, baseline, coalitions=None):
    return _sreg(f, x, baseline, coalitions, use_given=False)


def sreg_swapped(f, x, baseline, coalitions=None):
    return _sreg(f, x, baseline, coalitions, swap=True)


def shapley_regression_kkt(f, x, baseline, coalitions=None):
    return _sreg(f, x, baseline, coalitions)


# ----------------------------------------------------------------------------- lime_tabular
def _lime(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0, weighted=True, intercept=True,
          rng_fn=None, keep_intercept=False):
    M = len(x)
    scale = np.broadcast_to(np.asarray(scale, float), x.shape)
    if n_samples <= M or not (scale > 0).all() or kernel_width <= 0:
        raise ValueError("bad arguments")
    eps = (rng_fn or np.random.default_rng(seed).normal)(size=(n_samples, M))
    z = x + scale * eps
    d2 = (eps ** 2).sum(1) / M
    w = np.exp(-(d2 - d2.min()) / kernel_width ** 2) if weighted else np.ones(n_samples)
    A = np.hstack([np.ones((n_samples, 1)), z]) if intercept else z
    sw = np.sqrt(w)[:, None]
    coef = np.linalg.lstsq(A * sw, f(z) * sw[:, 0], rcond=None)[0]
    return coef if keep_intercept or not intercept else coef[1:]


def lime_unweighted(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    return _lime(f, x, scale, n_samples, kernel_width, seed, weighted=False)


def lime_no_intercept(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    return _lime(f, x, scale, n_samples, kernel_width, seed, intercept=False)


def lime_global_rng(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    return _lime(f, x, scale, n_samples, kernel_width, seed, rng_fn=np.random.normal)


def lime_returns_intercept(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    return _lime(f, x, scale, n_samples, kernel_width, seed, keep_intercept=True)


# ----------------------------------------------------------------------------- deletion_curve
def _del(model, x, target, attribution, steps=10, baseline=0.0, ascending=False, rnd=None, ties_high=False,
         logits=False):
    if attribution.shape != x.shape or steps < 1:
        raise ValueError("bad attribution or steps")
    N, n = len(x), x[0].numel()
    a = attribution.reshape(N, n)
    rows = []
    for k in range(steps + 1):
        count = rnd(k * n / steps) if rnd else k * n // steps
        xs = x.reshape(N, n).clone()
        for r in range(N):
            key = a[r] if not ties_high else a[r] + 1e-6 * torch.arange(n)
            order = torch.sort(key, descending=not ascending, stable=True).indices
            xs[r, order[:count]] = baseline
        with torch.no_grad():
            out = model(xs.reshape(x.shape))
            out = out if logits else out.softmax(1)
        rows.append(out[torch.arange(N), _t(model, x, target)])
    return torch.stack(rows, 1)


def del_ascending(model, x, target, attribution, steps=10, baseline=0.0):
    return _del(model, x, target, attribution, steps, baseline, ascending=True)


def del_round(model, x, target, attribution, steps=10, baseline=0.0):
    return _del(model, x, target, attribution, steps, baseline, rnd=lambda v: int(math.floor(v + 0.5)))


def del_ties_high_index_first(model, x, target, attribution, steps=10, baseline=0.0):
    return _del(model, x, target, attribution, steps, baseline, ties_high=True)


def del_logits(model, x, target, attribution, steps=10, baseline=0.0):
    return _del(model, x, target, attribution, steps, baseline, logits=True)


# ----------------------------------------------------------------------------- cascading_randomization
def _redraw(layer, gen):
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            if p is not None:
                p.copy_(torch.rand(p.shape, generator=gen).mul(2).sub(1).div(math.sqrt(layer.weight[0].numel())))


def _spearman(a, b, pearson=False, ordinal=False):
    from scipy.stats import pearsonr, rankdata, spearmanr
    a, b = a.detach().flatten().double().numpy(), b.detach().flatten().double().numpy()
    if pearson:
        return float(pearsonr(a, b)[0])
    if ordinal:
        return float(np.corrcoef(rankdata(a, method="ordinal"), rankdata(b, method="ordinal"))[0, 1])
    return float(spearmanr(a, b)[0])


def _cascade(model, explain, x, target, seed=0, cumulative=True, input_first=False, corr=_spearman,
             abs_maps=False, pooled=False, in_place=False, reset=False):
    import copy
    if x.dim() < 2:
        raise ValueError("x needs a batch dim")
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers = layers if input_first else layers[::-1]
    gen = torch.Generator().manual_seed(seed)
    f = (lambda m: explain(m, x, target).abs()) if abs_maps else (lambda m: explain(m, x, target))
    before = f(model)
    current, out = (model if in_place else copy.deepcopy(model)), []
    for name in layers:
        m = current if cumulative else copy.deepcopy(model)
        layer = m.get_submodule(name)
        if reset:                                                 # Gaussian instead of the stated uniform
            with torch.no_grad():
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(layer.weight[0].numel()))
        else:
            _redraw(layer, gen)
        after = f(m)
        rho = corr(before, after) if pooled else float(np.mean([corr(b, a) for b, a in zip(before, after)]))
        out.append((name, rho))
    return out


def casc_independent(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, cumulative=False)


def casc_input_first(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, input_first=True)


def casc_pearson(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, corr=lambda a, b: _spearman(a, b, pearson=True))


def casc_ordinal_ranks(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, corr=lambda a, b: _spearman(a, b, ordinal=True))


def casc_abs_maps(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, abs_maps=True)


def casc_whole_batch(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, pooled=True)


def casc_in_place(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, in_place=True)


def casc_gaussian_draws(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed, reset=True)


WRONG = {
    "saliency": [sal_no_abs, sal_probability, sal_times_input, sal_first_target_for_all],
    "integrated_gradients": [ig_left_riemann, ig_right_riemann, ig_no_input_factor, ig_probability,
                             ig_ignores_baseline],
    "occlusion": [occ_sum, occ_no_cut_off_window, occ_probability, occ_sign_flipped],
    "grad_cam": [cam_no_relu, cam_sum_pooling, cam_max_pooling, cam_abs],
    "exact_shapley": [sh_banzhaf, sh_off_by_one_weights, sh_leave_one_out, sh_add_one_to_baseline],
    "shapley_regression": [sreg_uniform_weights, sreg_no_binomial, sreg_unconstrained, sreg_ignores_coalitions,
                           sreg_swapped],
    "lime_tabular": [lime_unweighted, lime_no_intercept, lime_global_rng, lime_returns_intercept],
    "deletion_curve": [del_ascending, del_round, del_ties_high_index_first, del_logits],
    "cascading_randomization": [casc_independent, casc_input_first, casc_pearson, casc_ordinal_ranks,
                                casc_abs_maps, casc_whole_batch, casc_in_place, casc_gaussian_draws],
}




# ----------------------------------------------------------------------------- independent correct versions
def saliency_loop(model, x, target):
    return _grad(model, x, target).abs()


def ig_loop(model, x, target, baseline=None, steps=50):
    return _ig(model, x, target, baseline, steps)


def occlusion_loop(model, x, target, window, stride, baseline=0.0):
    return _occ(model, x, target, window, stride, baseline)


def grad_cam_hooks(model, layer, x, target):
    return _cam(model, layer, x, target)


def shapley_combinations(f, x, baseline):
    return _shap(f, x, baseline, lambda s, M: 1 / (M * math.comb(M - 1, s)))


def lime_other_sampling(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    rng = np.random.default_rng([seed, 12345])                     # another stream of the same law
    return _lime(f, x, scale, n_samples, kernel_width, seed, rng_fn=rng.standard_normal)


def deletion_loop(model, x, target, attribution, steps=10, baseline=0.0):
    return _del(model, x, target, attribution, steps, baseline)


def cascade_scipy(model, explain, x, target, seed=0):
    return _cascade(model, explain, x, target, seed)


def cascade_reset_parameters(model, explain, x, target, seed=0):
    """torch.manual_seed(seed), then each layer's reset_parameters(): the same uniform draws."""
    import copy
    from scipy.stats import spearmanr
    before = explain(model, x, target).detach()
    current, out = copy.deepcopy(model), []
    torch.manual_seed(seed)
    for name in [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]:
        current.get_submodule(name).reset_parameters()
        after = explain(current, x, target).detach()
        out.append((name, float(np.mean([spearmanr(b.flatten(), a.flatten())[0] for b, a in zip(before, after)]))))
    return out


INDEPENDENT = {"saliency": saliency_loop, "integrated_gradients": ig_loop, "occlusion": occlusion_loop,
               "grad_cam": grad_cam_hooks, "exact_shapley": shapley_combinations,
               "shapley_regression": shapley_regression_kkt, "lime_tabular": lime_other_sampling,
               "deletion_curve": deletion_loop, "cascading_randomization": [cascade_scipy, cascade_reset_parameters]}

(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = \
    contract_tests(WRONG, INDEPENDENT, independent_seeds=[7, 8])


def test_lime_grader_says_why():
    _, message = grade("lime_tabular", lime_unweighted, 0)
    assert "from the truth" in message and "converges to with many samples" in message
    _, message = grade("lime_tabular", lime_global_rng, 0)
    assert "same seed" in message


def test_check_returns_learner_function_on_pass_and_reference_on_fail(capsys):
    assert grading.check("saliency", saliency_loop, seed=3) is saliency_loop
    assert "PASS" in capsys.readouterr().out
    assert grading.check("saliency", sal_no_abs, seed=3) is L.saliency
    assert "FAIL" in capsys.readouterr().out


# ----------------------------------------------------------------------------- lime_tabular's f is a black box
def test_lime_target_is_a_bounded_black_box_in_the_notebook_too():
    """The f that check() and the grader's expected values use: no readable parameter, the same checks and the
    same budget as the one the zygote evaluates for a graded child."""
    from course_lib.grader import exercises
    case = grading.make_cases("lime_tabular", 0)[2]
    (f, x, _), _ = exercises.get("lime_tabular").build(case)
    for name in ("a", "freq", "w", "b", "kind", "seed", "f_seed", "__dict__"):
        assert not hasattr(f, name), name
    assert np.isscalar(f(x)) and f(np.stack([x, x])).shape == (2,)
    with pytest.raises(ValueError, match="shape"):
        f(np.zeros((3, len(x) + 1)))
    with pytest.raises(ValueError, match="rows a call"):
        f(np.zeros((exercises.MAX_CALL_ROWS + 1, len(x))))
    for _ in range(exercises.MAX_CASE_CALLS - 2):
        f(x)
    with pytest.raises(ValueError, match="call it once on all"):
        f(x)
    remote = exercises.remote_blackbox(2)
    with pytest.raises(TypeError):
        __import__("pickle").dumps(remote)
    assert not hasattr(remote, "__dict__") and "kind" not in exercises.get("lime_tabular").blackbox(case)[0]


LIME_ATTACKS = Path(__file__).resolve().parent / "fixtures" / "attacks"
# written from the instructions alone: samples drawn as N(x, scale), weighted normal equations
LIME_INDEPENDENT = '''
import numpy as np


def lime_tabular(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    x = np.asarray(x, dtype=float)
    M = x.shape[0]
    s = np.ones(M) * np.asarray(scale, dtype=float)
    if n_samples <= M or np.any(s <= 0) or kernel_width <= 0:
        raise ValueError("invalid arguments")
    z = np.random.default_rng(seed).normal(x, s, size=(n_samples, M))
    d2 = (((z - x) / s) ** 2).mean(axis=1)
    w = np.exp(-(d2 - d2.min()) / kernel_width ** 2)
    A = np.hstack([np.ones((n_samples, 1)), z])
    y = f(z)
    return np.linalg.solve(A.T @ (A * w[:, None]), A.T @ (w * y))[1:]
'''
LIME_BYPASS = '''
import time
import numpy as np
from course_lib.grader import codec, exercises


def lime_tabular(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    """{what}"""
    ch = exercises._channel
    cells = dict(zip(ch.__code__.co_freevars, (c.cell_contents for c in ch.__closure__)))
    current, ask = cells["current"], cells["ask"]
    {body}
'''


def test_lime_f_cannot_be_read_in_the_sandbox_and_honest_versions_pass(tmp_path):
    """Graded as a class (--jobs 2): the reference and an independent version pass; reading f's parameters
    (attributes, __dict__, closures, gc, inspect, pickle, frames) finds nothing and fails, though the same
    attack passes in the notebook's unconfined check (the control); a per-row caller is told to batch; a child
    that asks for 20,000 values and stops reading, sends a call the grader cannot read or names a black box
    it was not given, holds up nothing and fails."""
    import inspect
    import runpy
    from pathlib import Path as _P

    from course_lib.grader import cli
    from course_lib.grader.sandbox import SandboxLimits

    attack = LIME_ATTACKS / "lime_introspect.py"
    control = runpy.run_path(str(attack))["lime_tabular"]
    passed, _ = grade("lime_tabular", control, 0)
    assert passed, "the attack must work where the parameters are reachable, or this test proves nothing"
    sources = {
        "reference.py": ("from collections.abc import Callable\n\nimport numpy as np\n\n"
                         "from course_lib.validation import check_float, check_int\n\n\n"
                         + inspect.getsource(L.lime_tabular)),
        "independent.py": LIME_INDEPENDENT,
        "introspect.py": attack.read_text(),
        "read_target.py": (LIME_ATTACKS / "lime_read_target.py").read_text(),
        "per_row.py": "import numpy as np\n\n\ndef lime_tabular(f, x, scale, n_samples=2000, kernel_width=0.75, "
                      "seed=0):\n    return np.array([f(z) for z in np.tile(x, (n_samples, 1))])[:len(x)] * 0.0\n",
        "stops_reading.py": LIME_BYPASS.format(what="asks for 20,000 values, never reads them", body=(
            "ask(t='call', box=current['box'], z=codec.array_text(np.zeros((20000, len(x)))))"
            "\n    time.sleep(60)")),
        "forged_call.py": LIME_BYPASS.format(what="a call whose array claims 10^9 rows", body=(
            "import base64\n    header = b\"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000, 2), }\"\n"
            "    npy = b'\\x93NUMPY\\x01\\x00' + len(header).to_bytes(2, 'little') + header\n"
            "    ask(t='call', box=current['box'], z=base64.b64encode(npy).decode())\n"
            "    time.sleep(60)")),
        "other_token.py": LIME_BYPASS.format(what="a call with a token of no case it was given", body=(
            "ask(t='call', box='0' * 32, z=codec.array_text(np.zeros((3, len(x)))))\n    time.sleep(60)")),
    }
    paths = []
    for name, source in sources.items():
        (tmp_path / name).write_text(source)
        paths.append(tmp_path / name)
    import time
    start = time.perf_counter()
    rows = {_P(r.submission).name: r for r in cli.grade_submissions(
        paths, only=["lime_tabular"], limits=SandboxLimits(timeout_s=8.0), jobs=2, seed=5)}
    seconds = time.perf_counter() - start
    for name in ("reference.py", "independent.py"):
        assert rows[name].passed, (name, rows[name].message)
    assert not rows["introspect.py"].passed and "found nothing to read" in rows["introspect.py"].message
    assert not rows["read_target.py"].passed and "no attribute" in rows["read_target.py"].message
    assert not rows["per_row.py"].passed and "call it once on all" in rows["per_row.py"].message
    assert not rows["stops_reading.py"].passed and "time limit" in rows["stops_reading.py"].message
    assert not rows["forged_call.py"].passed and "cannot read" in rows["forged_call.py"].message
    assert not rows["other_token.py"].passed and "unexpected on its channel" in rows["other_token.py"].message
    assert seconds < 120, seconds


def _seed_patterns(values) -> "re.Pattern":
    """What an ``f_seed`` value leaves in a process's memory: the request's JSON text, or the int object's
    size and digits (CPython's layout: one or two 30-bit digits for a value below 2^31)."""
    import re
    import sys
    forms = []
    for value in values:
        forms.append(f'"f_seed": {value}'.encode())
        n = 1 if value < 2**30 else 2
        size = (n << 3 if sys.version_info >= (3, 12) else n).to_bytes(8, sys.byteorder)
        digits = b"".join(((value >> (30 * k)) & (2**30 - 1)).to_bytes(4, sys.byteorder) for k in range(n))
        forms.append(size + digits)
    return re.compile(b"|".join(map(re.escape, forms)))


def _found_in_memory(pid: int, pattern) -> list[bytes]:
    """Every match of ``pattern`` in the writable memory of process ``pid`` (its heap and anonymous maps)."""
    found = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split()
            start, end = (int(v, 16) for v in parts[0].split("-"))
            if not parts[1].startswith("rw") or (len(parts) > 5 and parts[5] != "[heap]") or end - start > 2**30:
                continue
            for at in range(start, end, 1 << 24):
                try:
                    mem.seek(at)
                    chunk = mem.read(min(1 << 24, end - at))
                except OSError:
                    break
                found += [m.group(0) for m in pattern.finditer(chunk)]
    return found


SLOW_LIME = """
import time
import numpy as np


def lime_tabular(f, x, scale, n_samples=2000, kernel_width=0.75, seed=0):
    f(np.asarray(x, dtype=np.float64))
    time.sleep(30)
"""


def test_the_zygote_never_holds_f_seed_or_fs_parameters(tmp_path):
    """No process a graded child is forked from holds f's seed: while two lime_tabular jobs run (each has
    called f), the zygote's writable memory holds none of the class's f_seed values, neither as the
    request's text nor as int objects; the grader's requests carry the public case and a token only."""
    import threading
    import time

    from course_lib.grader.sandbox import Pool, SandboxLimits
    if os.geteuid() != 0:
        pytest.skip("reading another process's memory needs root")
    cases = grading.make_cases("lime_tabular", 5)
    seeds = [c["f_seed"] for c in cases]
    pattern = _seed_patterns(seeds)
    assert pattern.search(json.dumps(cases[0]).encode())          # the patterns find the text form
    with Pool(2, SandboxLimits(timeout_s=6.0)) as pool:
        sent: list[str] = []
        write = pool._write
        pool._write = lambda text: (sent.append(text), write(text))[1]
        results = []
        runner = threading.Thread(target=lambda: results.extend(
            pool.run([(SLOW_LIME, "lime_tabular", cases), (SLOW_LIME, "lime_tabular", cases)])))
        runner.start()
        time.sleep(4.0)                        # both children started, called f and sleep
        found = _found_in_memory(pool._process.pid, pattern)
        runner.join()
    assert found == [], f"{len(found)} traces of f_seed in the zygote, e.g. {found[:3]}"
    assert sent and "f_seed" not in "".join(sent) and '"_box"' in "".join(sent)
    assert [r.kind for _, r in results] == ["timeout", "timeout"], results


def test_a_scan_of_the_childs_own_memory_finds_no_f_seed(tmp_path):
    """A hostile submission reads every writable region of its own process and tries every int there as f's
    seed (checking it against f on a few rows); graded after an honest classmate (one job at a time, so its
    zygote has served a lime_tabular job before), it finds its canary and no f_seed."""
    from pathlib import Path as _P

    from course_lib.grader import cli
    from course_lib.grader.sandbox import SandboxLimits
    attack = LIME_ATTACKS / "lime_scan_memory.py"
    (tmp_path / "a_honest.py").write_text(LIME_INDEPENDENT)
    (tmp_path / "b_scan.py").write_text(attack.read_text())
    rows = {_P(r.submission).name: r for r in cli.grade_submissions(
        [tmp_path / "a_honest.py", tmp_path / "b_scan.py"], only=["lime_tabular"],
        limits=SandboxLimits(timeout_s=30.0), jobs=1, seed=5)}
    assert rows["a_honest.py"].passed, rows["a_honest.py"].message
    message = rows["b_scan.py"].message
    assert not rows["b_scan.py"].passed and "found no f_seed" in message and "canary found: True" in message, \
        message
    scanned = int(message.split(" bytes")[0].split()[-1])
    assert scanned > 50 * 2**20, message                   # it read the process's heap, not a corner of it
