"""Chapter 08's graders accept the reference and independent answers, and reject the stub and the wrong answers."""
import numpy as np
import pytest
import torch

from grader_contract import contract_tests, grades_the_idea

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- quantize_groupwise
def gq_numpy_loop(weight, bits, group_size):
    """Independent: numpy, one group at a time, np.rint (half to even)."""
    w = weight.detach().double().numpy()
    out, qmax = np.zeros_like(w), 2 ** (bits - 1) - 1
    with np.errstate(all="ignore"):                  # bits = 1 (an invalid input) divides by q_max = 0
        _fill(w, out, qmax, group_size)
    return torch.from_numpy(out).to(weight.dtype)


def _fill(w, out, qmax, group_size):
    for i in range(w.shape[0]):
        for start in range(0, w.shape[1], group_size):
            g = w[i, start:start + group_size]
            s = np.abs(g).max() / qmax or 1.0
            out[i, start:start + group_size] = np.clip(np.rint(g / s), -qmax, qmax) * s


def _gq(weight, bits, group_size, *, per_row=False, transpose=False, qmax=None, rnd=torch.round, asym=False):
    w = weight.detach().T if transpose else weight.detach()
    o, i = w.shape
    g = i if per_row else min(group_size, i)
    q = (2 ** (bits - 1) - 1) if qmax is None else qmax(bits)
    v = w.reshape(o, i // g, g) if i % g == 0 else w.reshape(o, 1, i)
    if asym:
        lo, hi = v.amin(2, keepdim=True), v.amax(2, keepdim=True)
        s = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-12)
        out = (rnd((v - lo) / s) * s + lo).reshape(o, i)
    else:
        s = v.abs().amax(2, keepdim=True) / q
        s = torch.where(s == 0, torch.ones_like(s), s)
        out = (rnd(v / s).clamp(-q - (1 if qmax else 0), q) * s).reshape(o, i)
    return out.T.contiguous() if transpose else out


def gq_one_scale_per_row(weight, bits, group_size):
    return _gq(weight, bits, group_size, per_row=True)


def gq_groups_down_columns(weight, bits, group_size):
    return _gq(weight, bits, group_size, transpose=True) if weight.shape[0] % group_size == 0 else \
        _gq(weight, bits, group_size, per_row=True)


def gq_qmax_power_of_two(weight, bits, group_size):
    return _gq(weight, bits, group_size, qmax=lambda b: 2 ** (b - 1))


def gq_round_half_up(weight, bits, group_size):
    return _gq(weight, bits, group_size, rnd=lambda t: torch.floor(t + 0.5))


def gq_min_max_asymmetric(weight, bits, group_size):
    return _gq(weight, bits, group_size, asym=True)


def gq_no_zero_guard(weight, bits, group_size):
    o, i = weight.shape
    v = weight.detach().reshape(o, i // group_size, group_size)
    s = v.abs().amax(2, keepdim=True) / (2 ** (bits - 1) - 1)
    return (torch.round(v / s).clamp(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) * s).reshape(o, i)


# ----------------------------------------------------------------------------- smoothquant_scales
def sq_loop(act_absmax, weight, alpha=0.5):
    """Independent: a loop over channels in Python floats."""
    out = []
    for j in range(weight.shape[1]):
        a = max(float(act_absmax[j]), 1e-5)
        w = max(float(weight[:, j].abs().max()), 1e-5)
        out.append(a ** alpha / w ** (1 - alpha))
    return torch.tensor(out, dtype=act_absmax.dtype)


def sq_weight_max_over_rows(act_absmax, weight, alpha=0.5):
    w = weight.abs().amax(1)
    w = w[: len(act_absmax)] if len(w) >= len(act_absmax) else torch.cat([w, w.new_ones(len(act_absmax) - len(w))])
    return act_absmax.clamp_min(1e-5) ** alpha / w.clamp_min(1e-5) ** (1 - alpha)


def sq_exponents_swapped(act_absmax, weight, alpha=0.5):
    return act_absmax.clamp_min(1e-5) ** (1 - alpha) / weight.abs().amax(0).clamp_min(1e-5) ** alpha


def sq_no_floor(act_absmax, weight, alpha=0.5):
    return act_absmax ** alpha / weight.abs().amax(0) ** (1 - alpha)


def sq_product(act_absmax, weight, alpha=0.5):
    return act_absmax.clamp_min(1e-5) ** alpha * weight.abs().amax(0).clamp_min(1e-5) ** (1 - alpha)


# ----------------------------------------------------------------------------- attention_rollout
def ro_numpy(attentions):
    """Independent: numpy, per example, left-multiplying layer by layer."""
    B, _, T, _ = attentions[0].shape
    out = np.zeros((B, T, T))
    for b in range(B):
        r = np.eye(T)
        for a in attentions:
            m = 0.5 * a[b].double().numpy().mean(0) + 0.5 * np.eye(T)
            r = (m / m.sum(1, keepdims=True)) @ r
        out[b] = r
    return torch.from_numpy(out).to(attentions[0].dtype)


def _ro(attentions, *, reverse=False, residual=True, reduce=lambda a: a.mean(1), last_only=False):
    T = attentions[0].shape[-1]
    eye = torch.eye(T, dtype=attentions[0].dtype)
    r = eye.expand(attentions[0].shape[0], T, T)
    for a in (attentions[-1:] if last_only else attentions):
        m = reduce(a)
        m = 0.5 * m + 0.5 * eye if residual else m
        m = m / m.sum(-1, keepdim=True)
        r = r @ m if reverse else m @ r
    return r


def ro_reversed_order(attentions):
    return _ro(attentions, reverse=True)


def ro_no_residual(attentions):
    return _ro(attentions, residual=False)


def ro_max_over_heads(attentions):
    return _ro(attentions, reduce=lambda a: a.amax(1))


def ro_last_layer_only(attentions):
    return _ro(attentions, last_only=True)


WRONG = {
    "quantize_groupwise": [gq_one_scale_per_row, gq_groups_down_columns, gq_qmax_power_of_two, gq_round_half_up,
                       gq_min_max_asymmetric, gq_no_zero_guard],
    "smoothquant_scales": [sq_weight_max_over_rows, sq_exponents_swapped, sq_no_floor, sq_product],
    "attention_rollout": [ro_reversed_order, ro_no_residual, ro_max_over_heads, ro_last_layer_only],
}
INDEPENDENT = {"quantize_groupwise": gq_numpy_loop, "smoothquant_scales": sq_loop, "attention_rollout": ro_numpy}

(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = contract_tests(WRONG, INDEPENDENT)
test_grader_grades_the_idea = grades_the_idea({k: [v] for k, v in INDEPENDENT.items()})
