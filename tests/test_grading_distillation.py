"""Chapter 04's graders accept the reference and reject the stub and the wrong answers learners write."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.grader import grading
from course_lib import distillation as D
from grader_contract import contract_tests, grade

SEEDS = list(range(10))
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")     # the wrong answers' own warnings (mse_loss, kl_div)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (with two, each op waits for a descheduled thread on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- soft_targets
def st_over_batch(logits, temperature):                 # softmax along dim 0
    return torch.softmax(logits / temperature, dim=0)


def st_no_temperature(logits, temperature):
    return torch.softmax(logits, dim=1)


def st_times_t(logits, temperature):
    return torch.softmax(logits * temperature, dim=1)


def st_naive_exp(logits, temperature):                  # overflows for large logits
    e = torch.exp(logits / temperature)
    return e / e.sum(dim=1, keepdim=True)


def st_log_softmax(logits, temperature):
    return torch.log_softmax(logits / temperature, dim=1)


# ----------------------------------------------------------------------------- kd_loss
def _kd(s, t, y, T, alpha, *, t2=True, reverse=False, soft_ce=False, detach=True, reduction="batchmean",
        student_detached=False, probs_as_input=False, naive_log=False, swap_alpha=False, power=2):
    t_used = t.detach() if detach else t
    s_used = s.detach() if student_detached else s
    if reverse:
        soft = F.kl_div(F.log_softmax(t_used / T, dim=1), F.softmax(s_used / T, dim=1), reduction=reduction)
    elif probs_as_input:
        soft = F.kl_div(F.softmax(s_used / T, dim=1), F.softmax(t_used / T, dim=1), reduction=reduction)
    elif naive_log:
        soft = F.kl_div(torch.log(F.softmax(s_used / T, dim=1)), F.softmax(t_used / T, dim=1), reduction=reduction)
    else:
        soft = F.kl_div(F.log_softmax(s_used / T, dim=1), F.softmax(t_used / T, dim=1), reduction=reduction)
    hard = F.cross_entropy(s / T if soft_ce else s, y)
    a = 1 - alpha if swap_alpha else alpha
    return a * (T ** power if t2 else 1.0) * soft + (1 - a) * hard


def kd_no_t_squared(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, t2=False)


def kd_t_not_squared(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, power=1)


def kd_reversed_kl(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, reverse=True)


def kd_softened_cross_entropy(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, soft_ce=True)


def kd_teacher_not_detached(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, detach=False)


def kd_mean_over_entries(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, reduction="mean")   # / (N * C)


def kd_sum_over_batch(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, reduction="sum")


def kd_softmax_over_batch(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    T = temperature
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=0), F.softmax(teacher_logits.detach() / T, dim=0),
                    reduction="batchmean")
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def kd_probabilities_as_input(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, probs_as_input=True)


def kd_log_of_softmax(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, naive_log=True)


def kd_alpha_swapped(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, swap_alpha=True)


def kd_student_detached_in_soft_term(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return _kd(student_logits, teacher_logits, labels, temperature, alpha, student_detached=True)


def kd_returns_float(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    return float(D.kd_loss(student_logits, teacher_logits, labels, temperature, alpha))


def kd_wrong_defaults(student_logits, teacher_logits, labels, temperature=1.0, alpha=0.5):
    return D.kd_loss(student_logits, teacher_logits, labels, temperature, alpha)


# ----------------------------------------------------------------------------- attention_map
def am_no_abs(features, p=2):
    return F.normalize(features.pow(p).mean(dim=1).flatten(1), dim=1, eps=1e-12)


def am_power_after_mean(features, p=2):
    return F.normalize(features.abs().mean(dim=1).pow(p).flatten(1), dim=1, eps=1e-12)


def am_normalised_over_batch(features, p=2):
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=0, eps=1e-12)


def am_not_normalised(features, p=2):
    return features.abs().pow(p).mean(dim=1).flatten(1)


def am_l1_normalised(features, p=2):
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), p=1, dim=1, eps=1e-12)


def am_normalised_along_width(features, p=2):
    return F.normalize(features.abs().pow(p).mean(dim=1), dim=-1, eps=1e-12).flatten(1)


def am_p_ignored(features, p=2):
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1, eps=1e-12)


def am_no_eps(features, p=2):                            # nan for an all-zero example
    v = features.abs().pow(p).mean(dim=1).flatten(1)
    return v / v.norm(dim=1, keepdim=True)


def am_channel_sum(features, p=2):                       # differs only where the eps floor decides
    return F.normalize(features.abs().pow(p).sum(dim=1).flatten(1), dim=1, eps=1e-12)


def am_transposed_flatten(features, p=2):
    return F.normalize(features.abs().pow(p).mean(dim=1).transpose(1, 2).flatten(1), dim=1, eps=1e-12)


# ----------------------------------------------------------------------------- attention_transfer_loss
def _q(a, p):
    return F.normalize(a.abs().pow(p).mean(dim=1).flatten(1), dim=1, eps=1e-12)


def at_squared(student_features, teacher_features, p=2):
    return (_q(student_features, p) - _q(teacher_features, p)).pow(2).sum(dim=1).mean()


def at_mse(student_features, teacher_features, p=2):
    return F.mse_loss(_q(student_features, p), _q(teacher_features, p))


def at_sum_over_batch(student_features, teacher_features, p=2):
    return (_q(student_features, p) - _q(teacher_features, p)).norm(dim=1).sum()


def at_norm_of_whole_batch(student_features, teacher_features, p=2):
    return (_q(student_features, p) - _q(teacher_features, p)).norm()


def at_unnormalised_maps(student_features, teacher_features, p=2):
    s = student_features.abs().pow(p).mean(dim=1).flatten(1)
    t = teacher_features.abs().pow(p).mean(dim=1).flatten(1)
    return (s - t).norm(dim=1).mean()


def at_p_ignored(student_features, teacher_features, p=2):
    return (_q(student_features, 2) - _q(teacher_features, 2)).norm(dim=1).mean()


WRONG = {
    "soft_targets": [st_over_batch, st_no_temperature, st_times_t, st_naive_exp, st_log_softmax],
    "kd_loss": [kd_no_t_squared, kd_t_not_squared, kd_reversed_kl, kd_softened_cross_entropy,
                kd_teacher_not_detached, kd_mean_over_entries, kd_sum_over_batch, kd_softmax_over_batch,
                kd_probabilities_as_input, kd_log_of_softmax, kd_alpha_swapped, kd_student_detached_in_soft_term,
                kd_returns_float, kd_wrong_defaults],
    "attention_map": [am_no_abs, am_power_after_mean, am_normalised_over_batch, am_not_normalised, am_l1_normalised,
                      am_normalised_along_width, am_p_ignored, am_no_eps, am_channel_sum, am_transposed_flatten],
    "attention_transfer_loss": [at_squared, at_mse, at_sum_over_batch, at_norm_of_whole_batch, at_unnormalised_maps,
                                at_p_ignored],
}



# ----------------------------------------------------------------------------- independent correct versions
def soft_targets_exp(logits, temperature):              # no input checks; max subtracted by hand
    z = logits / temperature
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def kd_loss_by_hand(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    T = temperature
    log_ps = torch.log_softmax(student_logits / T, dim=1)
    pt = torch.softmax(teacher_logits.detach() / T, dim=1)
    kl = (torch.xlogy(pt, pt) - pt * log_ps).sum(dim=1).mean()
    ce = -torch.log_softmax(student_logits, dim=1).gather(1, labels[:, None]).mean()
    return alpha * T * T * kl + (1 - alpha) * ce


def attention_map_by_hand(features, p=2):
    n = features.shape[0]
    v = (features.abs() ** p).sum(dim=1).reshape(n, -1) / features.shape[1]
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def attention_transfer_by_hand(student_features, teacher_features, p=2):
    d = attention_map_by_hand(student_features, p) - attention_map_by_hand(teacher_features.detach(), p)
    return d.pow(2).sum(dim=1).sqrt().mean()


INDEPENDENT = {"soft_targets": soft_targets_exp, "kd_loss": kd_loss_by_hand, "attention_map": attention_map_by_hand,
               "attention_transfer_loss": attention_transfer_by_hand}


(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = \
    contract_tests(WRONG, INDEPENDENT, seeds=SEEDS, independent_seeds=[7, 8, 11])


def test_kd_loss_grader_explains_gradient_failures():
    _, message = grade("kd_loss", kd_teacher_not_detached, 0)
    assert "teacher_logits" in message and "detach" in message
    _, message = grade("kd_loss", kd_student_detached_in_soft_term, 0)
    assert "d loss / d student_logits" in message
    _, message = grade("kd_loss", kd_returns_float, 0)
    assert "0-dim torch.Tensor" in message


def test_check_returns_learner_function_on_pass_and_reference_on_fail(capsys):
    assert grading.check("attention_map", attention_map_by_hand, seed=3) is attention_map_by_hand
    assert "PASS" in capsys.readouterr().out
    assert grading.check("kd_loss", kd_no_t_squared, seed=3) is D.kd_loss
    assert "FAIL" in capsys.readouterr().out


def test_kd_loss_is_graded_in_the_sandbox():
    """The value-and-gradient runner works in the classroom grader's separate, guarded process too."""
    import inspect

    from course_lib.grader.sandbox import SandboxLimits, run_exercise

    cases = grading.make_cases("kd_loss", 0)
    expected = grading.expected_outcomes("kd_loss", cases)
    limits = SandboxLimits(timeout_s=30)
    header = "import torch\nimport torch.nn.functional as F\n"
    good = run_exercise(header + inspect.getsource(kd_loss_by_hand) + "kd_loss = kd_loss_by_hand\n", "kd_loss", cases, limits)
    bad = run_exercise(header + inspect.getsource(_kd) + inspect.getsource(kd_teacher_not_detached) +
                       "kd_loss = kd_teacher_not_detached\n", "kd_loss", cases, limits)
    assert good.error is None and grading.judge("kd_loss", cases, expected, good.outcomes)[0]
    assert bad.error is None and "teacher_logits" in grading.judge("kd_loss", cases, expected, bad.outcomes)[1]
