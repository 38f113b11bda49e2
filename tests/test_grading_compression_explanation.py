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


# ----------------------------------------------------------------------------- explanation_kd_loss
def _kd(s, t, y, T, alpha, t2=True):
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t.detach() / T, dim=1), reduction="batchmean")
    return alpha * (T * T if t2 else 1.0) * soft + (1 - alpha) * F.cross_entropy(s, y)


def _cos(sm, tm):
    s, t = sm.flatten(1), tm.flatten(1)
    return (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-8)


def ekd_teacher_map_not_detached(student_logits, teacher_logits, labels, student_map, teacher_map, lam=1.0,
                                 temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha) + lam * (1 - _cos(student_map, teacher_map)).mean()


def _ekd(fn):
    def wrong(student_logits, teacher_logits, labels, student_map, teacher_map, lam=1.0, temperature=4.0, alpha=0.9):
        return fn(student_logits, teacher_logits, labels, student_map, teacher_map.detach(), lam, temperature, alpha)
    wrong.__name__ = fn.__name__
    return wrong


@_ekd
def ekd_sum_over_batch(s, t, y, sm, tm, lam, T, alpha):
    return _kd(s, t, y, T, alpha) + lam * (1 - _cos(sm, tm)).sum()


@_ekd
def ekd_cosine_along_dim1(s, t, y, sm, tm, lam, T, alpha):          # maps not flattened
    return _kd(s, t, y, T, alpha) + lam * (1 - F.cosine_similarity(sm, tm, dim=1)).mean()


@_ekd
def ekd_mse_of_maps(s, t, y, sm, tm, lam, T, alpha):
    return _kd(s, t, y, T, alpha) + lam * F.mse_loss(sm, tm)


@_ekd
def ekd_normalised_squared_distance(s, t, y, sm, tm, lam, T, alpha):  # ||s^ - t^||^2 = 2 (1 - cos)
    d = F.normalize(sm.flatten(1), dim=1) - F.normalize(tm.flatten(1), dim=1)
    return _kd(s, t, y, T, alpha) + lam * d.pow(2).sum(1).mean()


@_ekd
def ekd_cosine_of_whole_batch(s, t, y, sm, tm, lam, T, alpha):
    return _kd(s, t, y, T, alpha) + lam * (1 - F.cosine_similarity(sm.flatten(), tm.flatten(), dim=0))


@_ekd
def ekd_no_t_squared(s, t, y, sm, tm, lam, T, alpha):
    return _kd(s, t, y, T, alpha, t2=False) + lam * (1 - _cos(sm, tm)).mean()


@_ekd
def ekd_no_eps(s, t, y, sm, tm, lam, T, alpha):                    # nan for an all-zero teacher map
    a, b = sm.flatten(1), tm.flatten(1)
    return _kd(s, t, y, T, alpha) + lam * (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()


@_ekd
def ekd_plus_cosine(s, t, y, sm, tm, lam, T, alpha):               # rewards disagreement
    return _kd(s, t, y, T, alpha) + lam * _cos(sm, tm).mean()


def ekd_wrong_default_lam(student_logits, teacher_logits, labels, student_map, teacher_map, lam=0.5,
                          temperature=4.0, alpha=0.9):
    return CE.explanation_kd_loss(student_logits, teacher_logits, labels, student_map, teacher_map, lam,
                                  temperature, alpha)


# ----------------------------------------------------------------------------- taylor_channel_importance
def _check4(a, g):
    if a.dim() != 4 or a.shape != g.shape:
        raise ValueError("activation and gradient must be (N, C, H, W) of the same shape")


def taylor_abs_inside(activation, gradient):              # mean |A G| over positions
    _check4(activation, gradient)
    return (activation * gradient).abs().mean(dim=(2, 3)).mean(0)


def taylor_abs_after_batch_mean(activation, gradient):
    _check4(activation, gradient)
    return (activation * gradient).mean(dim=(0, 2, 3)).abs()


def taylor_spatial_sum(activation, gradient):
    _check4(activation, gradient)
    return (activation * gradient).sum(dim=(2, 3)).abs().mean(0)


def taylor_squared(activation, gradient):
    _check4(activation, gradient)
    return (activation * gradient).mean(dim=(2, 3)).pow(2).mean(0)


def taylor_gradient_only(activation, gradient):
    _check4(activation, gradient)
    return gradient.mean(dim=(2, 3)).abs().mean(0)


def taylor_abs_product(activation, gradient):              # |A| |G|
    _check4(activation, gradient)
    return (activation.abs() * gradient.abs()).mean(dim=(2, 3)).mean(0)


def taylor_batch_sum(activation, gradient):
    _check4(activation, gradient)
    return (activation * gradient).mean(dim=(2, 3)).abs().sum(0)


WRONG = {
    "attribution_agreement": [agree_ordinal_ranks, agree_spearman_shortcut, agree_pearson_on_values, agree_topk_signed,
                              agree_m_floor, agree_m_half_up, agree_m_no_minimum, agree_ties_higher_index,
                              agree_overlap_fraction, agree_cosine_of_abs, agree_batch_mean, agree_float32],
    "explanation_kd_loss": [ekd_teacher_map_not_detached, ekd_sum_over_batch, ekd_cosine_along_dim1, ekd_mse_of_maps,
                            ekd_normalised_squared_distance, ekd_cosine_of_whole_batch, ekd_no_t_squared, ekd_no_eps,
                            ekd_plus_cosine, ekd_wrong_default_lam],
    "taylor_channel_importance": [taylor_abs_inside, taylor_abs_after_batch_mean, taylor_spatial_sum, taylor_squared,
                                  taylor_gradient_only, taylor_abs_product, taylor_batch_sum],
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


def explanation_kd_by_hand(student_logits, teacher_logits, labels, student_map, teacher_map, lam=1.0,
                           temperature=4.0, alpha=0.9):
    T = temperature
    log_ps = torch.log_softmax(student_logits / T, dim=1)
    pt = torch.softmax(teacher_logits.detach() / T, dim=1)
    kl = (torch.xlogy(pt, pt) - pt * log_ps).sum(dim=1).mean()
    ce = -torch.log_softmax(student_logits, dim=1).gather(1, labels[:, None]).mean()
    cos = F.cosine_similarity(student_map.flatten(1), teacher_map.detach().flatten(1), dim=1, eps=1e-8)
    return alpha * T * T * kl + (1 - alpha) * ce + lam * (1 - cos).mean()


def taylor_by_hand(activation, gradient):
    N, C, H, W = activation.shape
    per_example = (activation * gradient).sum(dim=(2, 3)) / (H * W)
    return per_example.abs().sum(0) / N


INDEPENDENT = {"attribution_agreement": agreement_by_hand, "explanation_kd_loss": explanation_kd_by_hand,
               "taylor_channel_importance": taylor_by_hand}


(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = \
    contract_tests(WRONG, INDEPENDENT, seeds=[0, 1, 2, 3], wrong_seeds=SEEDS, independent_seeds=[7, 8, 11])


test_grader_grades_the_idea = grades_the_idea({n: [f] for n, f in INDEPENDENT.items()}, seeds=[4, 5])


def test_explanation_kd_grader_explains_gradient_failures():
    _, message = grade("explanation_kd_loss", ekd_teacher_map_not_detached, 0)
    assert "teacher_map" in message and "detach" in message


def test_check_returns_learner_function_on_pass_and_reference_on_fail(capsys):
    assert grading.check("taylor_channel_importance", taylor_by_hand, seed=3) is taylor_by_hand
    assert "PASS" in capsys.readouterr().out
    assert grading.check("taylor_channel_importance", taylor_abs_inside, seed=3) is CE.taylor_channel_importance
    assert "FAIL" in capsys.readouterr().out


def test_explanation_kd_loss_is_graded_in_the_sandbox():
    """The value-and-gradient runner works in the classroom grader's separate, guarded process too."""
    import inspect

    from course_lib.grader.sandbox import SandboxLimits, run_exercise

    cases = grading.make_cases("explanation_kd_loss", 0)
    expected = grading.expected_outcomes("explanation_kd_loss", cases)
    header = "import torch\nimport torch.nn.functional as F\n"
    good = run_exercise(header + inspect.getsource(explanation_kd_by_hand) +
                        "explanation_kd_loss = explanation_kd_by_hand\n", "explanation_kd_loss", cases,
                        SandboxLimits(timeout_s=30))
    assert good.error is None and grading.judge("explanation_kd_loss", cases, expected, good.outcomes)[0]
