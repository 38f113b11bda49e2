"""Chapter 07's graders accept the reference and reject the stub and the wrong answers learners write."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.grader import grading
from course_lib import compression_explanation as CE
from grader_contract import contract_tests, grade, grades_the_idea

SEEDS = list(range(10))
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (with two, each op waits for a descheduled thread on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- attribution_agreement
def _avg_ranks(t):
    s = t.sort(dim=1).values
    return (torch.searchsorted(s, t) + torch.searchsorted(s, t, right=True) + 1).double() / 2


def _ordinal_ranks(t):
    return torch.argsort(torch.argsort(t, dim=1), dim=1).double()


def _pearson(x, y):
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))


def _top(t, m, key=None):
    order = torch.sort(-(t.abs() if key is None else key(t)), dim=1, stable=True).indices[:, :m]
    return torch.zeros_like(t, dtype=torch.bool).scatter_(1, order, True)


def _agree(a, b, k=0.1, *, ranks=_avg_ranks, spearman=None, m_rule=None, key=None, iou=None, cos_abs=False,
           reduce=None):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    M = a.shape[1]
    rho = spearman(a, b) if spearman else _pearson(ranks(a), ranks(b))
    m = m_rule(k * M) if m_rule else max(1, round(k * M))
    ta, tb = _top(a, m, key), _top(b, m, key)
    inter = (ta & tb).sum(1).double()
    j = iou(inter, ta, tb, m) if iou else inter / (ta | tb).sum(1).double()
    ca, cb = (a.abs(), b.abs()) if cos_abs else (a, b)
    cos = (ca * cb).sum(1) / (ca.norm(dim=1) * cb.norm(dim=1))
    out = {"spearman": rho, "topk_iou": j, "cosine": cos}
    return {key_: reduce(v) for key_, v in out.items()} if reduce else out


def agree_ordinal_ranks(a, b, k=0.1):                      # ties get distinct ranks
    return _agree(a, b, k, ranks=_ordinal_ranks)


def agree_spearman_shortcut(a, b, k=0.1):                  # 1 - 6 sum d^2 / (n (n^2 - 1)): wrong with ties
    def shortcut(x, y):
        n = x.shape[1]
        return 1 - 6 * ((_avg_ranks(x) - _avg_ranks(y)) ** 2).sum(1) / (n * (n * n - 1))
    return _agree(a, b, k, spearman=shortcut)


def agree_pearson_on_values(a, b, k=0.1):
    return _agree(a, b, k, spearman=_pearson)


def agree_topk_signed(a, b, k=0.1):                        # largest value, not largest |value|
    return _agree(a, b, k, key=lambda t: t)


def agree_m_floor(a, b, k=0.1):                            # int(k * M)
    return _agree(a, b, k, m_rule=lambda v: max(1, int(v)))


def agree_m_half_up(a, b, k=0.1):                          # floor(k * M + 0.5)
    return _agree(a, b, k, m_rule=lambda v: max(1, math.floor(v + 0.5)))


def agree_m_no_minimum(a, b, k=0.1):                       # m = round(k * M) may be 0: empty sets, IoU 0/0
    def iou(inter, ta, tb, m):
        return inter / (ta | tb).sum(1).double()
    return _agree(a, b, k, m_rule=lambda v: round(v), iou=iou)


def agree_ties_higher_index(a, b, k=0.1):                  # ties at the cut: higher index first
    a, b = a.flatten(1).double(), b.flatten(1).double()
    M = a.shape[1]
    m = max(1, round(k * M))

    def top(t):
        order = torch.sort(t.abs().flip(1), dim=1, descending=True, stable=True).indices[:, :m]
        return torch.zeros_like(t, dtype=torch.bool).scatter_(1, M - 1 - order, True)
    out = _agree(a, b, k)
    ta, tb = top(a), top(b)
    out["topk_iou"] = (ta & tb).sum(1).double() / (ta | tb).sum(1).double()
    return out


def agree_overlap_fraction(a, b, k=0.1):                   # |A n B| / m, not the IoU
    return _agree(a, b, k, iou=lambda inter, ta, tb, m: inter / m)


def agree_cosine_of_abs(a, b, k=0.1):
    return _agree(a, b, k, cos_abs=True)


def agree_batch_mean(a, b, k=0.1):                         # one number per metric
    return _agree(a, b, k, reduce=lambda v: v.mean())


def agree_float32(a, b, k=0.1):                            # float32 results
    return {key: v.float() for key, v in _agree(a, b, k).items()}


# ----------------------------------------------------------------------------- trainable_grad_cam
def _rows(target, n):
    return torch.full((n,), target) if isinstance(target, int) else torch.as_tensor(target)


def _cam(model, layer, x, target, *, graph=True, detach_a=False, relu=True, pool="mean", prob=False, first=False):
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer must be in model")
    store = []
    h = layer.register_forward_hook(lambda m, i, o: store.append(o))
    out = model(x)
    h.remove()
    t = _rows(target, len(x))
    if first:
        t = torch.full_like(t, int(t[0]))
    if ((t < 0) | (t >= out.shape[1])).any():
        raise ValueError("bad target")
    out = out.softmax(1) if prob else out
    A = store[-1]
    g, = torch.autograd.grad(out.gather(1, t.view(-1, 1)).sum(), A, create_graph=graph)
    alpha = g.mean((2, 3), keepdim=True) if pool == "mean" else g.sum((2, 3), keepdim=True)
    cam = (alpha * (A.detach() if detach_a else A)).sum(1, keepdim=True)
    return cam.relu() if relu else cam


def cam_no_create_graph(model, layer, x, target):           # alpha a constant: the classifier gets no gradient
    return _cam(model, layer, x, target, graph=False)


def cam_detached(model, layer, x, target):                  # chapter 05's grad_cam: right value, no graph
    return _cam(model, layer, x, target).detach()


def cam_activation_detached(model, layer, x, target):       # only alpha carries the graph
    return _cam(model, layer, x, target, detach_a=True)


def cam_no_relu(model, layer, x, target):
    return _cam(model, layer, x, target, relu=False)


def cam_sum_pool(model, layer, x, target):
    return _cam(model, layer, x, target, pool="sum")


def cam_probability(model, layer, x, target):
    return _cam(model, layer, x, target, prob=True)


def cam_first_target(model, layer, x, target):
    return _cam(model, layer, x, target, first=True)


# ----------------------------------------------------------------------------- band_position
def _band(compressed, band, *, rowwise=False, ties=0.5, denominator=0, verdict="range", center="mean", scale=100.0):
    c, b = compressed.double(), band.double()
    if c.dim() != 1 or b.dim() != 2 or b.shape[1] != len(c) or len(b) < 2:
        raise ValueError("shapes")
    if rowwise:                                              # each row's own finite images
        m, means = c.nanmean(), b.nanmean(1)
    else:
        keep = torch.isfinite(torch.cat([c[None], b])).all(0)
        if not keep.any():
            raise ValueError("no image")
        pick = (lambda v: v[..., keep].median(-1).values) if center == "median" else (lambda v: v[..., keep].mean(-1))
        m, means = pick(c), pick(b)
    B = len(means)
    pct = scale * (float((means < m).sum()) + ties * float((means == m).sum())) / (B + denominator)
    if verdict == "range":
        v = "below" if m < means.min() else "above" if m > means.max() else "inside"
    elif verdict == "inclusive":
        v = "below" if m <= means.min() else "above" if m >= means.max() else "inside"
    else:
        lo, hi = means.mean() - 2 * means.std(), means.mean() + 2 * means.std()
        v = "below" if m < lo else "above" if m > hi else "inside"
    n = int(torch.isfinite(torch.cat([c[None], b])).all(0).sum())
    return {"mean": float(m), "band_low": float(means.min()), "band_high": float(means.max()), "percentile": pct,
            "verdict": v, "n": n}


def band_rowwise_nanmean(compressed, band):                 # each model over its own images
    return _band(compressed, band, rowwise=True)


def band_ties_below(compressed, band):                      # a tie counts as below
    return _band(compressed, band, ties=1.0)


def band_ties_ignored(compressed, band):                    # strictly below only
    return _band(compressed, band, ties=0.0)


def band_n_plus_one(compressed, band):
    return _band(compressed, band, denominator=1)


def band_two_sd(compressed, band):                          # mean +- 2 sd of the band, not its range
    return _band(compressed, band, verdict="two_sd")


def band_inclusive(compressed, band):                       # equal to the minimum is "below"
    return _band(compressed, band, verdict="inclusive")


def band_median(compressed, band):
    return _band(compressed, band, center="median")


def band_fraction(compressed, band):                        # 0..1, not a percentile
    return _band(compressed, band, scale=1.0)


# ----------------------------------------------------------------------------- stamp_test
def _stamp(model, images, stamp, *, pile_up=False, changed=False, flip_all=False, rate_is_flip=False, prob=False):
    if images.dim() != 4:
        raise ValueError("images must be (N, C, H, W)")
    with torch.no_grad():
        z = model(images)
        clean, K, N = z.argmax(1), z.shape[1], len(images)
        follow, flips, x = [], 0, images
        for c in range(K):
            x = stamp(x, c) if pile_up else stamp(images, c)
            out = model(x)
            pred = out.argmax(1)
            hit = (pred != clean) if changed else (out.softmax(1)[:, c] > 0.5) if prob else (pred == c)
            follow.append(hit.double().mean())
            flips += int((hit & (clean != c)).sum())
    follow = torch.stack(follow)
    flip = flips / (N * K if flip_all else N * (K - 1))
    return {"follow": follow, "rate": flip if rate_is_flip else float(follow.mean()), "flip": flip}


def stamp_piled_up(model, images, stamp):                    # x = stamp(x, c): the stamps accumulate
    return _stamp(model, images, stamp, pile_up=True)


def stamp_changed(model, images, stamp):                     # a prediction that changes is not one that follows
    return _stamp(model, images, stamp, changed=True)


def stamp_flip_over_all_pairs(model, images, stamp):
    return _stamp(model, images, stamp, flip_all=True)


def stamp_rate_without_clean_hits(model, images, stamp):    # rate over the pairs whose clean prediction is not c
    return _stamp(model, images, stamp, rate_is_flip=True)


def stamp_probability_half(model, images, stamp):           # p(c) > 0.5 instead of the argmax
    return _stamp(model, images, stamp, prob=True)


WRONG = {
    "attribution_agreement": [agree_ordinal_ranks, agree_spearman_shortcut, agree_pearson_on_values, agree_topk_signed,
                              agree_m_floor, agree_m_half_up, agree_m_no_minimum, agree_ties_higher_index,
                              agree_overlap_fraction, agree_cosine_of_abs, agree_batch_mean, agree_float32],
    "trainable_grad_cam": [cam_no_create_graph, cam_detached, cam_activation_detached, cam_no_relu, cam_sum_pool,
                           cam_probability, cam_first_target],
    "band_position": [band_rowwise_nanmean, band_ties_below, band_ties_ignored, band_n_plus_one, band_two_sd,
                      band_inclusive, band_median, band_fraction],
    "stamp_test": [stamp_piled_up, stamp_changed, stamp_flip_over_all_pairs, stamp_rate_without_clean_hits,
                   stamp_probability_half],
}


# ----------------------------------------------------------------------------- independent correct versions
def agreement_by_hand(a, b, k=0.1):                        # no input checks; ranks by counting
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    N, M = a.shape

    def ranks(t):
        less = (t.unsqueeze(2) > t.unsqueeze(1)).sum(2).double()          # entries below each entry
        equal = (t.unsqueeze(2) == t.unsqueeze(1)).sum(2).double()
        return less + (equal + 1) / 2

    def corr(x, y):
        x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        return (x * y).sum(1) / torch.sqrt((x * x).sum(1) * (y * y).sum(1))

    m = max(1, round(k * M))
    iou = []
    for i in range(N):
        sa = set(sorted(range(M), key=lambda j: (-abs(float(a[i, j])), j))[:m])
        sb = set(sorted(range(M), key=lambda j: (-abs(float(b[i, j])), j))[:m])
        iou.append(len(sa & sb) / len(sa | sb))
    return {"spearman": corr(ranks(a), ranks(b)), "topk_iou": torch.tensor(iou, dtype=torch.float64),
            "cosine": F.cosine_similarity(a, b, dim=1)}


def trainable_grad_cam_by_split(model, layer, x, target):
    """No hooks: run the Sequential up to the layer, then the rest; per-row logits picked with a one-hot."""
    i = next(j for j, m in enumerate(model) if m is layer)
    A = model[:i + 1](x)
    z = model[i + 1:](A)
    t = torch.as_tensor(target).expand(len(x)) if not isinstance(target, list) else torch.tensor(target)
    picked = (z * F.one_hot(t, z.shape[1]).to(z.dtype)).sum()
    g, = torch.autograd.grad(picked, A, create_graph=True)
    alpha = g.sum(dim=(2, 3)) / (A.shape[2] * A.shape[3])                   # (N, K)
    return torch.einsum("nk,nkhw->nhw", alpha, A).clamp(min=0).unsqueeze(1)


def band_position_by_hand(compressed, band):               # numpy, loops, no input checks
    import numpy as np
    c, b = compressed.double().numpy(), band.double().numpy()
    cols = [j for j in range(len(c)) if math.isfinite(c[j]) and all(math.isfinite(v) for v in b[:, j])]
    m = sum(c[j] for j in cols) / len(cols)
    means = [sum(row[j] for j in cols) / len(cols) for row in b]
    below, equal = sum(v < m for v in means), sum(v == m for v in means)
    verdict = "below" if m < min(means) else "above" if m > max(means) else "inside"
    return {"mean": float(m), "band_low": float(np.min(means)), "band_high": float(np.max(means)),
            "percentile": 100.0 * (below + equal / 2) / len(means), "verdict": verdict, "n": len(cols)}


def stamp_test_by_hand(model, images, stamp):              # one image and one class at a time
    with torch.no_grad():
        K = model(images[:1]).shape[1]
        hits = torch.zeros(K, dtype=torch.float64)
        flips = 0
        for n in range(len(images)):
            clean = int(model(images[n:n + 1])[0].argmax())
            for c in range(K):
                pred = int(model(stamp(images, c)[n:n + 1])[0].argmax())
                hits[c] += pred == c
                flips += pred == c and clean != c
    N = len(images)
    return {"follow": hits / N, "rate": float(hits.sum()) / (N * K), "flip": flips / (N * (K - 1))}


INDEPENDENT = {"attribution_agreement": agreement_by_hand, "trainable_grad_cam": trainable_grad_cam_by_split,
               "band_position": band_position_by_hand, "stamp_test": stamp_test_by_hand}


(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = \
    contract_tests(WRONG, INDEPENDENT, seeds=[0, 1, 2, 3], wrong_seeds=list(range(8)), independent_seeds=[7, 8, 11])


test_grader_grades_the_idea = grades_the_idea({n: [f] for n, f in INDEPENDENT.items()}, seeds=[4, 5])


def test_trainable_grad_cam_grader_names_create_graph():
    _, message = grade("trainable_grad_cam", cam_no_create_graph, 0)
    assert "create_graph=True" in message and "gradient" in message


def test_check_returns_learner_function_on_pass_and_reference_on_fail(capsys):
    assert grading.check("band_position", band_position_by_hand, seed=3) is band_position_by_hand
    assert "PASS" in capsys.readouterr().out
    assert grading.check("band_position", band_two_sd, seed=3) is CE.band_position
    assert "FAIL" in capsys.readouterr().out


def test_trainable_grad_cam_is_graded_in_the_sandbox():
    """The value-and-gradient runner works in the classroom grader's separate, guarded process too."""
    import inspect

    from course_lib.grader.sandbox import SandboxLimits, run_exercise

    cases = grading.make_cases("trainable_grad_cam", 0)
    expected = grading.expected_outcomes("trainable_grad_cam", cases)
    header = "import torch\nimport torch.nn.functional as F\n"
    good = run_exercise(header + inspect.getsource(trainable_grad_cam_by_split) +
                        "trainable_grad_cam = trainable_grad_cam_by_split\n", "trainable_grad_cam", cases,
                        SandboxLimits(timeout_s=30))
    assert good.error is None and grading.judge("trainable_grad_cam", cases, expected, good.outcomes)[0]
