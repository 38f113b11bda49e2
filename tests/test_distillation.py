"""course_lib.distillation against closed forms, hand-worked cases and numpy/torch oracles."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import data, distillation as D, models


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- soft_targets
def test_soft_targets_hand_worked():
    p = D.soft_targets(torch.tensor([[0.0, 2.0]]), 2.0)
    e = math.e
    torch.testing.assert_close(p, torch.tensor([[1 / (1 + e), e / (1 + e)]]))


def test_soft_targets_matches_numpy_and_keeps_dtype():
    z = np.random.default_rng(0).normal(size=(5, 7)) * 3
    for T in (0.5, 1.0, 4.0):
        p = D.soft_targets(torch.from_numpy(z), T)
        assert p.dtype == torch.float64
        np.testing.assert_allclose(p.numpy(), _np_softmax(z / T), rtol=1e-12)


def test_soft_targets_stable_for_large_logits_and_flat_for_large_t():
    p = D.soft_targets(torch.tensor([[1000.0, 0.0, -1000.0]]), 1.0)
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0, 0.0]]))
    flat = D.soft_targets(torch.tensor([[3.0, -1.0, 0.5]]), 1e6)
    torch.testing.assert_close(flat, torch.full((1, 3), 1 / 3))


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_soft_targets_rejects_bad_temperature(T):
    with pytest.raises(ValueError, match="temperature must be a finite float > 0"):
        D.soft_targets(torch.zeros(1, 2), T)


def test_soft_targets_rejects_bad_logits():
    with pytest.raises(ValueError, match=r"logits must be a float tensor of shape \(N, C\)"):
        D.soft_targets(torch.zeros(3), 1.0)
    with pytest.raises(TypeError, match="temperature must be"):
        D.soft_targets(torch.zeros(1, 2), True)


# ----------------------------------------------------------------------------- kd_loss
def _kd_numpy(s, t, y, T, alpha):
    ps, pt = _np_softmax(s / T), _np_softmax(t / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean()
    ce = -np.log(_np_softmax(s)[np.arange(len(y)), y]).mean()
    return alpha * T * T * kl + (1 - alpha) * ce


def test_kd_loss_matches_closed_form_value_and_gradient():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 5)) * 3
    y = rng.integers(0, 5, size=6)
    for T, alpha in [(4.0, 0.9), (1.0, 1.0), (2.0, 0.0), (0.5, 0.3)]:
        zs = torch.tensor(s, requires_grad=True)
        zt = torch.tensor(t, requires_grad=True)
        loss = D.kd_loss(zs, zt, torch.from_numpy(y), temperature=T, alpha=alpha)
        assert loss.shape == () and loss.dtype == torch.float64
        assert math.isclose(loss.item(), _kd_numpy(s, t, y, T, alpha), rel_tol=1e-10)
        g_s, g_t = torch.autograd.grad(loss, (zs, zt), allow_unused=True)
        onehot = np.eye(5)[y]
        expected = (alpha * T * (_np_softmax(s / T) - _np_softmax(t / T)) + (1 - alpha) * (_np_softmax(s) - onehot)) / 6
        np.testing.assert_allclose(g_s.numpy(), expected, rtol=1e-9, atol=1e-12)
        assert g_t is None                                          # the teacher is detached


def test_kd_loss_defaults_are_t4_alpha09():
    torch.manual_seed(0)
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 3])
    torch.testing.assert_close(D.kd_loss(s, t, y), D.kd_loss(s, t, y, temperature=4.0, alpha=0.9))


def test_kd_loss_soft_term_equals_torch_soft_cross_entropy_minus_entropy():
    torch.manual_seed(1)
    s, t, y, T = torch.randn(4, 6), torch.randn(4, 6) * 2, torch.zeros(4, dtype=torch.long), 3.0
    pt = F.softmax(t / T, dim=1)
    entropy = -(pt * pt.log()).sum(dim=1).mean()
    torch.testing.assert_close(D.kd_loss(s, t, y, T, 1.0), T * T * (F.cross_entropy(s / T, pt) - entropy))


def test_kd_loss_t_squared_keeps_gradient_size_hinton_limit():
    """For large T with zero-mean logits, d(T^2 KL)/dz_s -> (z_s - z_t) / (C N) (Hinton et al., eq. 4)."""
    torch.manual_seed(2)
    zs, zt = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    zs, zt = zs - zs.mean(1, keepdim=True), zt - zt.mean(1, keepdim=True)
    zs.requires_grad_(True)
    g, = torch.autograd.grad(D.kd_loss(zs, zt, torch.zeros(3, dtype=torch.long), 1000.0, 1.0), zs)
    torch.testing.assert_close(g, (zs - zt).detach() / (5 * 3), rtol=1e-2, atol=1e-6)


def test_kd_loss_zero_for_identical_logits_and_errors():
    z = torch.tensor([[1.0, -1.0, 0.5]])
    assert D.kd_loss(z, z, torch.tensor([0]), 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)   # float32 rounding
    with pytest.raises(ValueError, match="alpha must be"):
        D.kd_loss(z, z, torch.tensor([0]), 2.0, 1.5)
    with pytest.raises(ValueError, match="labels must be classes in"):
        D.kd_loss(z, z, torch.tensor([3]))
    with pytest.raises(ValueError, match="teacher_logits must have the shape"):
        D.kd_loss(z, torch.zeros(1, 2), torch.tensor([0]))


# ----------------------------------------------------------------------------- attention maps
def test_attention_map_hand_worked():
    a = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])              # (1, 2, 1, 2)
    torch.testing.assert_close(D.attention_map(a, p=1), torch.tensor([[2.0, 1.25]]) / math.hypot(2.0, 1.25))
    torch.testing.assert_close(D.attention_map(torch.tensor([[[[3.0, 4.0]]]]), p=1), torch.tensor([[0.6, 0.8]]))


def test_attention_map_matches_the_papers_code_for_p2():
    """The authors' ``at(x) = F.normalize(x.pow(2).mean(1).view(x.size(0), -1))`` (attention-transfer repository)."""
    x = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(D.attention_map(x), F.normalize(x.pow(2).mean(1).view(x.size(0), -1)))


def test_attention_map_zero_example_and_unit_rows():
    x = torch.rand(3, 2, 3, 3, generator=torch.Generator().manual_seed(4))
    x[1] = 0
    q = D.attention_map(x, p=3)
    assert q.shape == (3, 9)
    torch.testing.assert_close(q.norm(dim=1), torch.tensor([1.0, 0.0, 1.0]))


def test_attention_transfer_loss_hand_worked_and_channel_counts():
    s = torch.zeros(1, 2, 1, 2)
    s[0, :, 0, 0] = 1.0                                             # map e1
    t = torch.zeros(1, 7, 1, 2)
    t[0, :, 0, 1] = 5.0                                             # map e2
    assert D.attention_transfer_loss(s, t).item() == pytest.approx(math.sqrt(2))
    assert D.attention_transfer_loss(s, s.repeat(1, 3, 1, 1)).item() == pytest.approx(0.0)


def test_attention_transfer_loss_is_mean_of_distances_and_detaches_teacher():
    gen = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 3, 2, 2, generator=gen, requires_grad=True), torch.randn(4, 6, 2, 2, generator=gen, requires_grad=True)
    loss = D.attention_transfer_loss(s, t)
    qs = F.normalize(s.detach().pow(2).mean(1).flatten(1))
    qt = F.normalize(t.detach().pow(2).mean(1).flatten(1))
    expected = np.mean([np.linalg.norm((qs[i] - qt[i]).numpy()) for i in range(4)])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    g_s, g_t = torch.autograd.grad(loss, (s, t), allow_unused=True)
    assert g_s is not None and g_t is None


def test_attention_transfer_loss_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="batch and spatial sizes"):
        D.attention_transfer_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        D.attention_transfer_loss(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))


# ----------------------------------------------------------------------------- training helpers
def _tiny_split():
    s = data.digits()
    return s, s.X_train[:128], s.y_train[:128]


def test_train_student_with_alpha_0_t1_is_plain_cross_entropy_training():
    """kd_loss(alpha=0) is the cross-entropy, so distilling must give models.train's weights exactly."""
    _, X, y = _tiny_split()
    models.set_seed(0)
    a = models.SmallCNN(channels=(2, 4))
    b = models.SmallCNN(channels=(2, 4))
    b.load_state_dict(a.state_dict())
    models.train(a, X, y, epochs=2, lr=3e-3, seed=0, progress=False)
    D.train_student(b, X, y, teacher_logits=torch.randn(len(X), 10), temperature=1.0, alpha=0.0, epochs=2, lr=3e-3,
                    seed=0)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])


def test_logits_and_features_of_match_a_forward_pass():
    _, X, _ = _tiny_split()
    models.set_seed(1)
    m = models.SmallCNN(channels=(2, 4)).eval()
    with torch.no_grad():
        torch.testing.assert_close(D.logits_of(m, X, batch_size=50), m(X))
        torch.testing.assert_close(D.features_of(m, X), m.features[:4](X))
    assert D.features_of(m, X).shape == (128, 4, 8, 8)


def test_attention_transfer_term_moves_the_students_maps_toward_the_teachers():
    _, X, y = _tiny_split()
    models.set_seed(2)
    teacher = models.SmallCNN(channels=(4, 8))
    models.train(teacher, X, y, epochs=3, seed=0, progress=False)
    z_t, a_t = D.logits_of(teacher, X), D.features_of(teacher, X)
    losses = {}
    for beta in (0.0, 5.0):
        models.set_seed(3)
        s = models.SmallCNN(channels=(2, 4))
        D.train_student(s, X, y, teacher_logits=z_t, teacher_features=a_t, beta=beta, epochs=3, seed=0)
        losses[beta] = D.attention_transfer_loss(D.features_of(s, X), a_t).item()
    assert losses[5.0] < losses[0.0]


def test_soft_term_gradient_norms_shrink_like_one_over_t_squared():
    torch.manual_seed(4)
    rows = D.soft_term_gradient_norms(torch.randn(8, 10), torch.randn(8, 10) * 2, [10.0, 100.0])
    ratio = rows[0]["grad norm without T^2"] / rows[1]["grad norm without T^2"]
    assert ratio == pytest.approx(100.0, rel=0.05)
    assert rows[0]["grad norm with T^2"] == pytest.approx(rows[1]["grad norm with T^2"], rel=0.05)


def test_class_similarity_rows_are_mean_soft_targets():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    m = D.class_similarity(z, torch.tensor([0, 1, 1]), 1.0)
    p = torch.softmax(z, dim=1)
    torch.testing.assert_close(m, torch.stack([p[0], (p[1] + p[2]) / 2]))


# ----------------------------------------------------------------------------- reading the runs
def _rows(values: dict[str, dict[int, float]], column: str = "test accuracy") -> list[dict]:
    return [{"variant": v, "seed": s, column: x} for v, by_seed in values.items() for s, x in by_seed.items()]


def test_paired_vs_pairs_by_seed_not_by_row_order_and_matches_scipy():
    from scipy import stats as scipy_stats

    a = {3: 0.95, 1: 0.97, 2: 0.94, 5: 0.96, 4: 0.93}                  # rows in another order than b's
    b = {1: 0.96, 2: 0.94, 3: 0.93, 4: 0.93, 5: 0.94}
    d = D.paired_vs(_rows({"a": a, "b": b}), "a", "b")
    seeds = sorted(b)
    ci = scipy_stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval()
    assert d.estimate == pytest.approx(100 * np.mean([a[s] - b[s] for s in seeds]))
    assert (d.low, d.high) == pytest.approx((100 * ci.low, 100 * ci.high))
    assert (d.wins, d.ties, d.losses) == (3, 2, 0) and d.n == 5 and d.unit == " points"


def test_paired_vs_rejects_unmatched_seeds_and_unknown_variants():
    rows = _rows({"a": {1: 0.9, 2: 0.8}, "b": {1: 0.9, 3: 0.8}})
    with pytest.raises(ValueError, match="a and b must be run on the same seeds"):
        D.paired_vs(rows, "a", "b")
    with pytest.raises(ValueError, match="variant must be one of"):
        D.paired_vs(rows, "a", "c")
    with pytest.raises(ValueError, match="repeats a seed"):
        D.paired_vs(rows + rows, "a", "b")
    with pytest.raises(TypeError, match="rows must be a list of dicts"):
        D.paired_vs({"variant": "a"}, "a", "b")


def test_choose_on_validation_reads_only_validation_and_ties_go_to_the_first():
    rows = _rows({"T=4": {1: 0.95, 2: 0.97}, "T=1": {1: 0.97, 2: 0.95}, "T=8": {1: 0.90, 2: 0.99}}, "val accuracy")
    assert all("test accuracy" not in r for r in rows)                  # the choice cannot have read the test split
    assert D.choose_on_validation(rows, ["T=4", "T=1", "T=8"]) == "T=4"  # T=4 and T=1 tie at 0.96
    assert D.choose_on_validation(rows, ["T=1", "T=4", "T=8"]) == "T=1"
    assert D.choose_on_validation(rows, ["T=8"]) == "T=8"
    with pytest.raises(ValueError, match="candidates must be a non-empty list"):
        D.choose_on_validation(rows, [])


def test_summarize_gives_the_t_interval_of_each_group_and_its_size():
    from scipy import stats as scipy_stats

    rows = _rows({"x": {1: 0.90, 2: 0.94, 3: 0.95}, "y": {1: 0.80, 2: 0.80}})
    table = D.summarize(rows, "variant", ["test accuracy"])
    values = np.array([0.90, 0.94, 0.95])
    low, high = scipy_stats.t.interval(0.95, 2, loc=values.mean(), scale=scipy_stats.sem(values))
    assert list(table.index) == ["x", "y"]
    assert table.loc["x", ("test accuracy", "mean")] == pytest.approx(100 * values.mean())
    assert table.loc["x", ("test accuracy", "95% low")] == pytest.approx(100 * low)
    assert table.loc["x", ("test accuracy", "95% high")] == pytest.approx(100 * high)
    assert table.loc["y", ("test accuracy", "95% low")] == pytest.approx(80.0)   # no spread, no width
    assert table.loc["x", ("n seeds", "")] == 3 and table.loc["y", ("n seeds", "")] == 2


def _fixed_predictions(pred: list[int], n_classes: int = 3) -> torch.nn.Module:
    """A linear model on one-hot inputs e_j whose prediction for example j is pred[j]."""
    m = torch.nn.Linear(len(pred), n_classes, bias=False)
    with torch.no_grad():
        m.weight.copy_(F.one_hot(torch.tensor(pred), n_classes).T.float())
    return m


def test_teacher_minus_students_is_the_accuracy_gap_by_hand():
    X, y = torch.eye(4), torch.tensor([0, 1, 2, 0])
    teacher = _fixed_predictions([0, 1, 2, 0])                          # 4 of 4 right
    students = [_fixed_predictions([0, 1, 0, 1]), _fixed_predictions([0, 0, 0, 1])]   # 2 of 4, 1 of 4 right
    gap = D.teacher_minus_students(teacher, students, X, y, n_boot=500)
    assert gap.estimate == pytest.approx(100 * (1.0 - (0.5 + 0.25) / 2))     # 62.5 points
    assert 0.0 <= gap.low <= gap.estimate <= gap.high <= 100.0           # every per-example gap is in [0, 1]
    assert gap.n == 4 and gap.unit == " points"
    with pytest.raises(ValueError, match="students must be a non-empty list"):
        D.teacher_minus_students(teacher, [], X, y)
    with pytest.raises(ValueError, match="y must be an int64 tensor"):
        D.teacher_minus_students(teacher, students, X, y[:3])


# ----------------------------------------------------------------------------- transfer set, fidelity, T -> infinity
def test_logit_matching_ratio_tends_to_one_and_ignores_row_constants():
    torch.manual_seed(5)
    zs, zt = torch.randn(20, 10) * 3, torch.randn(20, 10) * 3
    rows = D.logit_matching_ratio(zs, zt, [1.0, 10.0, 100.0, 1000.0])
    gaps = [abs(r["ratio"] - 1) for r in rows]
    assert gaps[1] > gaps[2] > gaps[3] and gaps[3] < 1e-3                      # second-order expansion in 1/T
    shifted = D.logit_matching_ratio(zs + 7.0, zt - torch.arange(20.0)[:, None], [1000.0])   # constants per row
    assert shifted[0]["ratio"] == pytest.approx(rows[3]["ratio"], rel=1e-9)
    # the quadratic by hand for one row: C = 2, z^s = (1, 0), z^t = (0, 0): centred difference (1/2, -1/2)
    (row,) = D.logit_matching_ratio(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), [1.0])
    assert row["logit matching"] == pytest.approx((0.25 + 0.25) / (2 * 1 * 2))


def test_fidelity_by_hand():
    class Fixed(torch.nn.Module):
        def __init__(self, z):
            super().__init__()
            self.z = torch.nn.Parameter(z, requires_grad=False)

        def forward(self, x):
            return self.z[: len(x)]

    z_t = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    z_s = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])           # agrees on rows 0 and 2
    out = D.fidelity(Fixed(z_t), Fixed(z_s), torch.zeros(3, 1))
    p_t, p_s = torch.softmax(z_t, 1), torch.softmax(z_s, 1)
    assert out["top-1 agreement"] == pytest.approx(2 / 3)
    assert out["KL"] == pytest.approx((p_t * (p_t / p_s).log()).sum(1).mean().item(), rel=1e-6)
    assert D.fidelity(Fixed(z_t), Fixed(z_t), torch.zeros(3, 1)) == {"top-1 agreement": 1.0, "KL": pytest.approx(0.0)}


def test_transfer_set_study_pairs_both_arms_by_seed_and_chooses_a_listed_shift():
    s = data.digits()
    small = dataclasses.replace(s, X_train=s.X_train[:300], y_train=s.y_train[:300])
    models.set_seed(0)
    teacher = models.SmallCNN(channels=(4, 8))
    models.train(teacher, small.X_train, small.y_train, epochs=3, seed=0, progress=False)
    rows = D.transfer_set_study(teacher, lambda: models.SmallCNN(channels=(2, 4)), small, omitted=3, seeds=(1, 2),
                                epochs=2, shifts=(0.0, 1.0), progress=False)
    assert [(r["variant"], r["seed"]) for r in rows] == [("from scratch", 1), ("from scratch", 2), ("distilled", 1),
                                                          ("distilled", 2)]
    for r in rows:
        assert r["shift"] in (0.0, 1.0) and 0 <= r["omitted recall"] <= 1
    with pytest.raises(ValueError, match="omitted must be"):
        D.transfer_set_study(teacher, lambda: models.SmallCNN(channels=(2, 4)), small, omitted=10, progress=False)


# ----------------------------------------------------------------------------- low-label regime, label smoothing
def test_labelled_subset_is_stratified_and_seeded():
    y = torch.tensor([0] * 50 + [1] * 20 + [2] * 3)
    keep = D.labelled_subset(y, 0.1, seed=0)
    assert [int(keep[y == c].sum()) for c in range(3)] == [5, 2, 1]        # round(0.1 n_c), at least 1
    assert torch.equal(keep, D.labelled_subset(y, 0.1, seed=0))
    assert not torch.equal(keep, D.labelled_subset(y, 0.1, seed=1))
    assert D.labelled_subset(y, 1.0).all()
    with pytest.raises(ValueError, match="fraction"):
        D.labelled_subset(y, 0.0)
    with pytest.raises(ValueError, match="y must"):
        D.labelled_subset(y.float(), 0.1)


def test_label_smoothing_trains_on_the_smoothed_cross_entropy():
    X = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 10
    out = {}
    for name, kwargs in (("smooth", {"label_smoothing": 0.2}), ("plain", {}), ("oracle", None)):
        models.set_seed(3)
        m = models.SmallCNN(channels=(4, 8))
        if kwargs is None:            # the oracle: the smoothed target (1 - eps) onehot + eps / C written out
            target = lambda z, t: -(((0.8 * F.one_hot(t, 10) + 0.02) * F.log_softmax(z, 1)).sum(1)).mean()  # noqa: E731
            models.train(m, X, y, epochs=2, lr=3e-3, batch_size=16, seed=3, progress=False, loss_fn=target)
        else:
            D.train_student(m, X, y, epochs=2, lr=3e-3, batch_size=16, seed=3, **kwargs)
        out[name] = m(X).detach()
    torch.testing.assert_close(out["smooth"], out["oracle"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out["smooth"], out["plain"], atol=1e-4)
    with pytest.raises(ValueError, match="label_smoothing"):
        D.train_student(models.SmallCNN(channels=(4, 8)), X, y, teacher_logits=torch.zeros(40, 10), label_smoothing=0.1)


def test_low_label_study_gives_both_arms_the_same_steps_and_is_the_shipped_checkpoints():
    from course_lib import checkpoints

    split = checkpoints.dataset("digits_cnn")
    rows = D.low_label_study(checkpoints.load("digits_cnn"), lambda: models.SmallCNN(channels=(4, 8)), split,
                             seeds=[1], epochs=30, progress=False)
    assert [r["variant"] for r in rows] == ["labels only", "labels + soft targets"]
    assert rows[0]["steps"] == rows[1]["steps"] == 30 * math.ceil(1077 / 128)
    assert rows[0]["labelled"] == int(D.labelled_subset(split.y_train, 0.1).sum()) == 109
    for row, arm in zip(rows, ("lowlabel_labels", "lowlabel_kd")):
        shipped = checkpoints.load(f"digits_student_{arm}_seed1")
        torch.testing.assert_close(row["model"](split.X_test), shipped(split.X_test), rtol=1e-4, atol=1e-4)
