"""Chapter 01's graders accept the reference and reject the stub and the wrong answers learners write."""
import math

import pytest
import torch
from torch import nn

from course_lib.grader import grading
from course_lib import pruning
from grader_contract import SEEDS, grades_the_idea, contract_tests, grade, stub







def _n_prune(amount, size):
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"amount must be a number, got {amount!r}")
    if isinstance(amount, int):
        if not 0 <= amount <= size:
            raise ValueError(f"amount must be in [0, {size}], got {amount}")
        return amount
    if not 0 <= amount <= 1:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    return round(amount * size)


def _check_weight(weight):
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point tensor")


def _prune_smallest(scores, k, dtype):
    mask = torch.ones(scores.shape, dtype=dtype)
    if k:
        mask.view(-1)[torch.topk(scores.flatten(), k, largest=False).indices] = 0
    return mask


# ----------------------------------------------------------------------------- magnitude_mask
def magnitude_largest(weight, amount):
    _check_weight(weight)
    return _prune_smallest(-weight.detach().abs(), _n_prune(amount, weight.numel()), weight.dtype)


def magnitude_floor(weight, amount):
    _check_weight(weight)
    k = _n_prune(amount, weight.numel())
    k = int(amount * weight.numel()) if isinstance(amount, float) else k
    return _prune_smallest(weight.detach().abs(), k, weight.dtype)


def magnitude_half_up(weight, amount):
    _check_weight(weight)
    k = _n_prune(amount, weight.numel())
    k = math.floor(amount * weight.numel() + 0.5) if isinstance(amount, float) else k
    return _prune_smallest(weight.detach().abs(), k, weight.dtype)


def magnitude_no_abs(weight, amount):
    _check_weight(weight)
    return _prune_smallest(weight.detach(), _n_prune(amount, weight.numel()), weight.dtype)


def magnitude_threshold_with_ties(weight, amount):            # prunes every |w| <= the k-th smallest
    _check_weight(weight)
    k = _n_prune(amount, weight.numel())
    scores = weight.detach().abs()
    if k == 0:
        return torch.ones_like(scores)
    threshold = scores.flatten().kthvalue(k).values
    return (scores > threshold).to(weight.dtype)


def magnitude_int_as_fraction(weight, amount):                # int 1 treated like 1.0
    _check_weight(weight)
    _n_prune(amount, weight.numel())
    return _prune_smallest(weight.detach().abs(), round(float(amount) * weight.numel()), weight.dtype)


def magnitude_no_validation(weight, amount):
    scores = torch.as_tensor(weight).detach().abs()
    k = amount if isinstance(amount, int) else round(amount * scores.numel())
    return _prune_smallest(scores, int(k), scores.dtype)


def magnitude_bool_mask(weight, amount):
    return pruning.magnitude_mask(weight, amount).bool()


def magnitude_in_place(weight, amount):                       # zeroes the weight itself
    mask = pruning.magnitude_mask(weight, amount)
    with torch.no_grad():
        weight.mul_(mask)
    return mask


# ----------------------------------------------------------------------------- global_magnitude_masks
def _check_list(weights):
    if not isinstance(weights, (list, tuple)):
        raise TypeError("weights must be a list")
    if not weights:
        raise ValueError("weights must not be empty")
    for w in weights:
        _check_weight(w)


def global_layerwise(weights, amount):
    _check_list(weights)
    total = sum(w.numel() for w in weights)
    _n_prune(amount, total)
    return [pruning.magnitude_mask(w, amount if isinstance(amount, float) else min(amount, w.numel()))
            for w in weights]


def global_normalized(weights, amount):                       # scores |w| / max |w| of each layer
    _check_list(weights)
    scores = [w.detach().abs() / w.detach().abs().max().clamp_min(1e-12) for w in weights]
    flat = pruning.magnitude_mask(torch.cat([s.flatten() for s in scores]), amount)
    return [m.view_as(w).to(w.dtype) for m, w in zip(flat.split([w.numel() for w in weights]), weights)]


def global_signed(weights, amount):
    _check_list(weights)
    flat = torch.cat([w.detach().flatten() for w in weights])
    k = _n_prune(amount, flat.numel())
    mask = _prune_smallest(flat, k, flat.dtype)
    return [m.view_as(w).to(w.dtype) for m, w in zip(mask.split([w.numel() for w in weights]), weights)]


def global_floor(weights, amount):
    _check_list(weights)
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = _n_prune(amount, flat.numel())
    k = int(amount * flat.numel()) if isinstance(amount, float) else k
    mask = _prune_smallest(flat, k, flat.dtype)
    return [m.view_as(w).to(w.dtype) for m, w in zip(mask.split([w.numel() for w in weights]), weights)]


def global_threshold_with_ties(weights, amount):
    _check_list(weights)
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = _n_prune(amount, flat.numel())
    if k == 0:
        return [torch.ones_like(w) for w in weights]
    threshold = flat.kthvalue(k).values
    return [(w.detach().abs() > threshold).to(w.dtype) for w in weights]


# ----------------------------------------------------------------------------- structured_mask
def _structured(weight, amount, n, dim, *, norm_dim=None, largest=False, signed=False, floor=False):
    _check_weight(weight)
    if weight.dim() < 2:
        raise ValueError("weight must be at least 2-D")
    if isinstance(n, bool) or not n > 0:
        raise (TypeError if isinstance(n, bool) else ValueError)("n must be positive")
    if not -weight.dim() <= dim < weight.dim():
        raise ValueError("dim out of range")
    d = (dim if norm_dim is None else norm_dim) % weight.dim()
    size = weight.shape[d]
    k = _n_prune(amount, size)
    if floor and isinstance(amount, float):
        k = int(amount * size)
    others = [i for i in range(weight.dim()) if i != d]
    w = weight.detach()
    norms = w.sum(dim=others) if signed else torch.linalg.vector_norm(w, ord=float(n), dim=others)
    order = torch.argsort(norms, descending=not largest)
    mask = torch.zeros_like(w)
    return mask.index_fill_(d, order[: size - k], 1.0)


def structured_ignores_dim(weight, amount, n=1, dim=0):
    return _structured(weight, amount, n, dim, norm_dim=0)


def structured_ignores_n(weight, amount, n=1, dim=0):
    return _structured(weight, amount, 2, dim)


def structured_prunes_largest(weight, amount, n=1, dim=0):
    return _structured(weight, amount, n, dim, largest=True)


def structured_signed_sum(weight, amount, n=1, dim=0):
    return _structured(weight, amount, n, dim, signed=True)


def structured_floor(weight, amount, n=1, dim=0):
    return _structured(weight, amount, n, dim, floor=True)


def structured_unstructured(weight, amount, n=1, dim=0):    # 000's confusion: l1_unstructured's mask
    _structured(weight, 0, n, dim)                           # (validates like the real one)
    k = _n_prune(amount, weight.shape[dim])
    return pruning.magnitude_mask(weight, k * weight.numel() // weight.shape[dim])


# ----------------------------------------------------------------------------- n_m_mask
def _n_m(weight, n, m, *, smallest=False, signed=False, transpose=False, keep_pruned=False, per_row=False,
         last_dim=False):
    _check_weight(weight)
    if isinstance(n, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError("n and m must be ints")
    axis = 1 if weight.dim() >= 2 and not last_dim else -1
    if weight.dim() == 0 or m < 1 or not 0 <= n <= m or weight.shape[axis] % m:
        raise ValueError("bad n, m or shape")
    w = weight.detach()
    if axis == 1 and w.dim() > 2:                       # groups along C_in: move it last, group, move back
        return _n_m(w.movedim(1, -1).contiguous(), n, m, smallest=smallest, signed=signed, transpose=transpose,
                    keep_pruned=keep_pruned, per_row=per_row, last_dim=True).movedim(-1, 1)
    if transpose and w.dim() >= 2 and w.shape[0] % m == 0:
        return _n_m(w.transpose(0, -1).contiguous(), n, m).transpose(0, -1)
    scores = w if signed else w.abs()
    keep = m - n if keep_pruned else n
    if per_row:
        rows = scores.reshape(-1, w.shape[-1])
        idx = torch.topk(rows, keep * w.shape[-1] // m, dim=-1, largest=not smallest).indices
        return torch.zeros_like(rows).scatter_(-1, idx, 1.0).reshape(w.shape)
    groups = scores.reshape(-1, m)
    idx = torch.topk(groups, keep, dim=-1, largest=not smallest).indices
    return torch.zeros_like(groups).scatter_(-1, idx, 1.0).reshape(w.shape)


def n_m_smallest(weight, n=2, m=4):
    return _n_m(weight, n, m, smallest=True)


def n_m_no_abs(weight, n=2, m=4):
    return _n_m(weight, n, m, signed=True)


def n_m_first_dim(weight, n=2, m=4):
    return _n_m(weight, n, m, transpose=True)


def n_m_keeps_m_minus_n(weight, n=2, m=4):
    return _n_m(weight, n, m, keep_pruned=True)


def n_m_along_last_dim(weight, n=2, m=4):              # groups along the kernel width of a conv weight
    return _n_m(weight, n, m, last_dim=True)


def n_m_per_row(weight, n=2, m=4):
    return _n_m(weight, n, m, per_row=True)


def n_m_no_divisibility_check(weight, n=2, m=4):
    w = weight.detach()
    if w.dim() < 2:
        cut = w.shape[0] - w.shape[0] % m if w.dim() else 0
        mask = torch.zeros_like(w)
        if cut:
            mask[:cut] = pruning.n_m_mask(w[:cut].contiguous(), n, m)
        return mask
    cut = w.shape[1] - w.shape[1] % m
    mask = torch.zeros_like(w)
    if cut:
        mask[:, :cut] = pruning.n_m_mask(w[:, :cut].contiguous(), n, m)
    return mask


# ----------------------------------------------------------------------------- polynomial_sparsity
def _schedule_checks(step, total_steps, final_sparsity, initial_sparsity, power):
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError("step must be an int")
    if total_steps < 1 or not 0 <= final_sparsity <= 1 or not 0 <= initial_sparsity <= 1 or not power > 0:
        raise ValueError("bad arguments")


def schedule_not_clamped(step, total_steps, final_sparsity, initial_sparsity=0.0, power=3):
    _schedule_checks(step, total_steps, final_sparsity, initial_sparsity, power)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - step / total_steps) ** power


def schedule_wrong_direction(step, total_steps, final_sparsity, initial_sparsity=0.0, power=3):
    _schedule_checks(step, total_steps, final_sparsity, initial_sparsity, power)
    t = min(max(step, 0), total_steps)
    return initial_sparsity + (final_sparsity - initial_sparsity) * (t / total_steps) ** power


def schedule_integer_division(step, total_steps, final_sparsity, initial_sparsity=0.0, power=3):
    _schedule_checks(step, total_steps, final_sparsity, initial_sparsity, power)
    t = min(max(step, 0), total_steps)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - t // total_steps) ** power


def schedule_ignores_power(step, total_steps, final_sparsity, initial_sparsity=0.0, power=3):
    return pruning.polynomial_sparsity(step, total_steps, final_sparsity, initial_sparsity, 3)


def schedule_swapped(step, total_steps, final_sparsity, initial_sparsity=0.0, power=3):
    _schedule_checks(step, total_steps, final_sparsity, initial_sparsity, power)
    t = min(max(step, 0), total_steps)
    return initial_sparsity + (final_sparsity - initial_sparsity) * (1 - t / total_steps) ** power


# ----------------------------------------------------------------------------- shrink_conv_pair
def _copy_conv(conv, in_channels, out_channels, *, settings=True, bias=None):
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation) if settings else {}
    return nn.Conv2d(in_channels, out_channels, conv.kernel_size,
                     bias=(conv.bias is not None) if bias is None else bias, **kwargs)


def _shrink(conv, next_conv, keep, *, next_too=True, drop_bias=False, complement=False, settings=True,
            next_dim=1, validate=True):
    if validate:
        pruning.shrink_conv_pair(conv, next_conv, keep)         # raise where the reference raises
    keep = keep.long()
    if complement:
        keep = torch.tensor([c for c in range(conv.out_channels) if c not in keep.tolist()], dtype=torch.long)
    new = _copy_conv(conv, conv.in_channels, len(keep), settings=settings, bias=False if drop_bias else None)
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])
        if new.bias is not None:
            new.bias.copy_(conv.bias[keep])
    if not next_too:
        return new, next_conv
    kept_next = next_conv.weight.index_select(next_dim, keep.clamp_max(next_conv.weight.shape[next_dim] - 1))
    new_next = _copy_conv(next_conv, kept_next.shape[1], kept_next.shape[0], settings=settings)
    with torch.no_grad():
        new_next.weight.copy_(kept_next)
        if new_next.bias is not None:
            new_next.bias.copy_(next_conv.bias[: kept_next.shape[0]])
    return new, new_next


def shrink_forgets_next(conv, next_conv, keep):
    return _shrink(conv, next_conv, keep, next_too=False)


def shrink_next_output_dim(conv, next_conv, keep):
    return _shrink(conv, next_conv, keep, next_dim=0)


def shrink_drops_bias(conv, next_conv, keep):
    return _shrink(conv, next_conv, keep, drop_bias=True)


def shrink_keeps_complement(conv, next_conv, keep):
    if len(keep) == conv.out_channels:
        return _shrink(conv, next_conv, keep)
    return _shrink(conv, next_conv, keep, complement=True)


def shrink_default_settings(conv, next_conv, keep):
    return _shrink(conv, next_conv, keep, settings=False)


def shrink_no_validation(conv, next_conv, keep):
    if keep.numel() == 0 or keep.max() >= conv.out_channels or keep.is_floating_point():
        raise ValueError("bad keep")
    return _shrink(conv, next_conv, keep, validate=False)


def shrink_in_place(conv, next_conv, keep):
    new, new_next = pruning.shrink_conv_pair(conv, next_conv, keep)
    with torch.no_grad():
        conv.weight.zero_()
    return new, new_next


WRONG = {
    "magnitude_mask": [magnitude_largest, magnitude_floor, magnitude_half_up, magnitude_no_abs,
                       magnitude_threshold_with_ties, magnitude_int_as_fraction,
                       magnitude_bool_mask, magnitude_in_place],
    "global_magnitude_masks": [global_layerwise, global_normalized, global_signed, global_floor,
                               global_threshold_with_ties],
    "structured_mask": [structured_ignores_dim, structured_ignores_n, structured_prunes_largest,
                        structured_signed_sum, structured_floor, structured_unstructured],
    "n_m_mask": [n_m_smallest, n_m_no_abs, n_m_first_dim, n_m_keeps_m_minus_n, n_m_per_row, n_m_along_last_dim],
    "polynomial_sparsity": [schedule_not_clamped, schedule_wrong_direction, schedule_integer_division,
                            schedule_ignores_power, schedule_swapped],
    "shrink_conv_pair": [shrink_forgets_next, shrink_next_output_dim, shrink_drops_bias, shrink_keeps_complement,
                         shrink_default_settings, shrink_in_place],
}




# ----------------------------------------------------------------------------- independent correct versions
def indep_magnitude(weight, amount):
    """Stable argsort instead of topk: other tied entries than torch's, equally valid."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a floating tensor, got {type(weight).__name__}")
    n = weight.numel()
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"amount must be an int or a float, got {amount!r}")
    if isinstance(amount, float):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {amount}")
        amount = round(amount * n)
    elif not 0 <= amount <= n:
        raise ValueError(f"amount must be in [0, {n}], got {amount}")
    order = torch.sort(weight.detach().reshape(-1).abs(), stable=True).indices
    flat = torch.ones(n, dtype=weight.dtype)
    flat[order[:amount]] = 0.0
    return flat.reshape(weight.shape)


def indep_global(weights, amount):
    if not isinstance(weights, (list, tuple)):
        raise TypeError("weights must be a list")
    if len(weights) == 0:
        raise ValueError("weights must not be empty")
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    masks = indep_magnitude(flat, amount)
    out, start = [], 0
    for w in weights:
        out.append(masks[start:start + w.numel()].reshape(w.shape).to(w.dtype))
        start += w.numel()
    return out


def indep_structured(weight, amount, n=1, dim=0):
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating tensor")
    if weight.dim() < 2:
        raise ValueError("weight needs 2+ dims")
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError("n must be a number")
    if n <= 0:
        raise ValueError("n must be positive")
    if not isinstance(dim, int) or not -weight.dim() <= dim < weight.dim():
        raise ValueError("dim out of range")
    moved = weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1)      # (S, rest)
    norms = moved.abs().max(dim=1).values if math.isinf(n) else (moved.abs() ** n).sum(dim=1) ** (1 / n)
    slice_mask = indep_magnitude(norms, amount)
    shape = [1] * weight.dim()
    shape[dim] = -1
    return (slice_mask.reshape(shape) * torch.ones_like(weight)).to(weight.dtype)


def indep_n_m(weight, n=2, m=4):
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int")
    axis = 1 if weight.dim() >= 2 else 0
    if weight.dim() == 0 or m < 1 or n < 0 or n > m or weight.shape[axis] % m != 0:
        raise ValueError("invalid n, m or weight shape")
    w = weight.detach().abs().transpose(axis, -1)                  # the input axis last
    groups = w.reshape(-1, m)
    ranks = torch.sort(groups, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups)
    for g in range(groups.shape[0]):
        mask[g, ranks[g, :n]] = 1.0
    return mask.reshape(w.shape).transpose(axis, -1).contiguous().to(weight.dtype)


def indep_schedule(step, total_steps, final_sparsity, initial_sparsity=0.0, power=3):
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError("step must be an int")
    if total_steps < 1 or not (0 <= final_sparsity <= 1) or not (0 <= initial_sparsity <= 1) or power <= 0:
        raise ValueError("invalid schedule")
    frac = 1.0 - min(1.0, max(0.0, step / total_steps))
    return initial_sparsity * frac ** power + final_sparsity * (1.0 - frac ** power)


def indep_shrink(conv, next_conv, keep):
    if not isinstance(conv, nn.Conv2d) or not isinstance(next_conv, nn.Conv2d):
        raise TypeError("conv and next_conv must be nn.Conv2d")
    if keep.is_floating_point():
        raise TypeError("keep must hold integers")
    idx = keep.tolist()
    if conv.groups != 1 or next_conv.groups != 1 or next_conv.in_channels != conv.out_channels or not idx \
            or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= conv.out_channels:
        raise ValueError("invalid pair or keep")
    a, b = __import__("copy").deepcopy(conv), __import__("copy").deepcopy(next_conv)
    order = sorted(idx)                                   # another order than keep's: the same function
    a.weight = nn.Parameter(conv.weight.detach()[order].clone())
    if conv.bias is not None:
        a.bias = nn.Parameter(conv.bias.detach()[order].clone())
    b.weight = nn.Parameter(next_conv.weight.detach()[:, order].clone())
    a.out_channels, b.in_channels = len(order), len(order)
    return a, b


INDEPENDENT = {"magnitude_mask": indep_magnitude, "global_magnitude_masks": indep_global,
               "structured_mask": indep_structured, "n_m_mask": indep_n_m,
               "polynomial_sparsity": indep_schedule, "shrink_conv_pair": indep_shrink}


(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = contract_tests(WRONG, INDEPENDENT)


def test_tie_cases_are_graded_by_the_rule_not_by_torchs_choice():
    """The independent versions pick other tied entries than torch.topk, and still pass."""
    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0])
    assert not torch.equal(indep_magnitude(w, 2), pruning.magnitude_mask(w, 2))
    assert grade("magnitude_mask", indep_magnitude, 0)[0]
    g = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    assert not torch.equal(indep_n_m(g), pruning.n_m_mask(g))


def test_wrong_tie_handling_is_named_in_the_message():
    passed, message = grade("magnitude_mask", magnitude_threshold_with_ties, 0)
    assert not passed and "pruned entries" in message


def test_in_place_change_is_reported():
    passed, message = grade("shrink_conv_pair", shrink_in_place, 0)
    assert not passed and "changed its input in place" in message


def test_check_returns_learner_function_or_reference(capsys):
    assert grading.check("n_m_mask", indep_n_m, seed=3) is indep_n_m
    assert "PASS" in capsys.readouterr().out
    assert grading.check("n_m_mask", n_m_smallest, seed=3) is pruning.n_m_mask
    out = capsys.readouterr().out
    assert "FAIL" in out and "inputs:" in out


# Grade the idea: these are right but skip the input checks; they pass, with notes.
test_grader_grades_the_idea = grades_the_idea({"magnitude_mask": [magnitude_no_validation], "n_m_mask": [n_m_no_divisibility_check], "shrink_conv_pair": [shrink_no_validation]})
