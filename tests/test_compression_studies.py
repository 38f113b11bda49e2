"""Chapter 07's studies (course_lib.compression_studies) against oracles: chapter 05's explainers, hand-built models,
closed forms, the shipped JSON's own provenance."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import checkpoints, data, models, stats
from course_lib import compression_explanation as CE
from course_lib import compression_studies as CS
from course_lib import local_explanation as LE


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CornerReader(nn.Module):
    """Predicts the class whose corner (0 top-left, 1 top-right, 2 bottom-left) is brightest: it obeys the stamp."""

    def forward(self, x):
        H, W = x.shape[-2:]
        return torch.stack([x[:, 0, :2, :2].sum((1, 2)), x[:, 0, :2, W - 2:].sum((1, 2)),
                            x[:, 0, H - 2:, :2].sum((1, 2))], 1)


class CentreReader(nn.Module):
    """Looks only at the centre pixels: ignores any corner stamp."""

    def forward(self, x):
        c = x[:, 0, 6:10, 6:10].flatten(1)
        return torch.stack([c[:, :5].sum(1), c[:, 5:10].sum(1), c[:, 10:].sum(1)], 1)


def test_corner_stamp_writes_exactly_the_corner_and_keeps_the_input():
    x = torch.rand(3, 1, 16, 16)
    before = x.clone()
    for c, (r, col) in enumerate([(0, 0), (0, 14), (14, 0), (14, 14)]):
        out = CS.corner_stamp(x, c)
        assert torch.equal(x, before)
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[r:r + 2, col:col + 2] = True
        assert (out[:, :, inside] == 1).all() and torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    # the data set's rule: with p_watermark = 1 every training image of class k already carries corner k's stamp
    s = data.shapes_watermark(n=60, size=16, p_watermark=1.0)
    for k in range(3):
        imgs = s.X_train[s.y_train == k]
        assert torch.equal(CS.corner_stamp(imgs, k), imgs)


def test_stamp_following_is_one_for_an_obedient_model_and_exactly_one_third_for_one_that_ignores_the_stamp():
    x = torch.rand(20, 1, 16, 16) * 0.5
    assert torch.equal(CS.stamp_following(CornerReader(), x), torch.ones(20, dtype=torch.float64))
    assert torch.equal(CS.stamp_following(CentreReader(), x), torch.full((20,), 1 / 3, dtype=torch.float64))


def test_stamp_following_matches_the_exercise_rate():
    model, x = checkpoints.load("shapes_watermark_cnn"), checkpoints.dataset("shapes_watermark_cnn").X_test[:40]
    rate = CE.stamp_test(model, x, CS.corner_stamp)["rate"]
    assert abs(float(CS.stamp_following(model, x).mean()) - rate) < 1e-12


def test_forgotten_counts_right_then_wrong():
    y = torch.tensor([0, 1, 2, 0])

    class Fixed(nn.Module):
        def __init__(self, pred):
            super().__init__()
            self.pred = torch.tensor(pred)

        def forward(self, x):
            return nn.functional.one_hot(self.pred, 3).float()

    lost = CS.forgotten(Fixed([0, 1, 0, 1]), Fixed([0, 2, 0, 0]), torch.zeros(4, 1), y)
    assert lost.tolist() == [False, True, False, False]


def test_two_group_difference_estimate_and_coverage():
    v = np.arange(10, dtype=float)
    g = np.array([True] * 4 + [False] * 6)
    iv = CS.two_group_difference(v, g)
    assert iv.estimate == pytest.approx(1.5 - 6.5) and iv.low <= iv.estimate <= iv.high and iv.n == 10
    v[0] = np.nan                                                               # nan left out
    assert CS.two_group_difference(v, g).estimate == pytest.approx(2.0 - 6.5)
    # coverage: with no true difference the 95 % interval covers 0 in most of 200 draws
    rng = np.random.default_rng(0)
    covered = sum(CS.two_group_difference(rng.normal(size=60), rng.random(60) < 0.3, n_boot=400, seed=i).contains(0)
                  for i in range(200))
    assert covered >= 180
    with pytest.raises(ValueError, match="in_group"):
        CS.two_group_difference([1.0, 2.0, 3.0], [True, False, False])
    with pytest.raises(TypeError, match="in_group"):
        CS.two_group_difference([1.0, 2.0, 3.0, 4.0], [1, 1, 0, 0])


def test_written_out_explainers_equal_chapter_05s():
    model, split = checkpoints.load("shapes_cnn"), checkpoints.dataset("shapes_cnn")
    x, t = split.X_test[:6], split.y_test[:6]
    torch.testing.assert_close(CS.integrated_gradients(model, x, t), LE.integrated_gradients(model, x, t, steps=8))
    torch.testing.assert_close(CS.occlusion(model, x, t), LE.occlusion(model, x, t, window=(1, 4, 4), stride=(1, 4, 4)))
    torch.testing.assert_close(CS.grad_cam(model, x, t), LE.grad_cam(model, CE.gradcam_layer(model), x, t))
    a = LE.integrated_gradients(model, x, t, steps=8)
    torch.testing.assert_close(CS._mask_overlap(a, split.masks_test[:6]).double(),
                               LE.mask_overlap(a, split.masks_test[:6]).double())


def test_criterion_keeps_drop_the_right_number_and_random_draws_differ():
    model, split = checkpoints.load("digits_cnn"), checkpoints.dataset("digits_cnn")
    keeps = CS.criterion_keeps(model, split, 0.75, n_random=2)
    assert set(keeps) == {"Taylor (train)", "Taylor (validation)", "magnitude", "random 0", "random 1"}
    for k in keeps.values():
        assert [int(m.sum()) for m in k.values()] == [4, 8]                        # 16 and 32 channels, 75 % dropped
    assert not torch.equal(keeps["random 0"]["features.0"], keeps["random 1"]["features.0"])
    norms = model.features[0].weight.detach().abs().flatten(1).sum(1)
    assert norms[keeps["magnitude"]["features.0"]].min() >= norms[~keeps["magnitude"]["features.0"]].max()


def test_criterion_vs_random_pairs_by_seed():
    rows = [{"model": "m", "amount": 0.5, "criterion": c, "seed": s, "test accuracy": acc}
            for c, s, acc in [("A", 0, 0.9), ("A", 1, 0.8), ("random", 0, 0.7), ("random", 0, 0.5), ("random", 1, 0.6),
                              ("random", 1, 0.6)]]
    d = CS.criterion_vs_random(rows, "m", 0.5, "A")
    assert d.estimate == pytest.approx(((0.9 - 0.6) + (0.8 - 0.6)) / 2) and d.n == 2
    with pytest.raises(ValueError, match="criterion"):
        CS.criterion_vs_random(rows, "m", 0.5, "B")


def test_choose_lambda_follows_the_stated_rule():
    rows = [{"lam": lam, "val accuracy": acc, "val Grad-CAM agreement": agree}
            for lam, acc, agree in [(0.0, 0.95, 0.1), (1.0, 0.945, 0.5), (3.0, 0.90, 0.9)]]
    assert CS.choose_lambda(rows) == 1.0                                        # 3 is best but costs 5 points
    assert CS.choose_lambda(rows, tolerance=0.1) == 3.0


def test_right_reasons_penalty_lowers_the_corner_gradient():
    split = data.shapes_watermark(n=400, size=8, p_watermark=1.0)
    region = CE.corner_mask(8)
    grads = {}
    for lam in (0.0, 100.0):
        models.set_seed(0)
        m = CS.train_right_reasons(models.SmallCNN(1, 3, (4, 8), 8), split.X_train, split.y_train, region, lam=lam,
                                   epochs=6, seed=0)
        x = split.X_val.clone().requires_grad_(True)
        g, = torch.autograd.grad(torch.log_softmax(m(x), 1).sum(), x)
        grads[lam] = float((g[:, :, region] ** 2).sum((1, 2)).mean())
    assert grads[100.0] < 0.5 * grads[0.0]
    with pytest.raises(ValueError, match="lam"):
        CS.train_right_reasons(models.SmallCNN(1, 3, (4, 8), 8), split.X_train, split.y_train, region, lam=-1.0)


def test_shipped_studies_have_their_provenance_and_the_plain_rows_match_the_shipped_models():
    study = CS.load_results()
    assert set(study) == set(CS.PARTS)
    for part, block in study.items():
        assert block["regenerate"] == f"python -m course_lib.compression_studies --only {part}"
    kd = study["kd_lambda"]["rows"]
    assert sorted({r["lam"] for r in kd}) == list(CS.KD_LAMS) and len(kd) == len(CS.KD_LAMS) * len(CS.SEEDS)
    plain = next(r for r in kd if (r["lam"], r["seed"]) == (0.0, 2))
    split = checkpoints.dataset("shapes_cnn")
    acc = models.evaluate(checkpoints.load("shapes_student_kd_seed2"), split.X_val, split.y_val)
    assert plain["val accuracy"] == pytest.approx(acc, abs=1e-6)
    rr = next(r for r in study["right_reasons"]["rows"] if (r["lam"], r["seed"]) == (0.0, 3))
    wm = checkpoints.dataset("shapes_watermark_cnn")
    assert rr["clean test accuracy"] == pytest.approx(
        models.evaluate(checkpoints.load("shapes_watermark_cnn_seed3"), wm.X_test, wm.y_test), abs=1e-6)
    pc = study["pruning_criteria"]["rows"]
    assert len(pc) == 2 * 2 * 6 * len(CS.PRUNE_SEEDS) and {r["criterion"] for r in pc} == {
        "Taylor (train)", "Taylor (validation)", "magnitude", "random"}
    assert sorted({r["seed"] for r in pc}) == list(CS.PRUNE_SEEDS) and len(CS.PRUNE_SEEDS) >= 5   # runs compared


def _names_used(source: str) -> set[str]:
    """Every identifier a piece of Python reads or calls (``x``, ``CE.x``), from its syntax tree."""
    import ast

    tree = ast.parse(source)
    return ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)})


def test_no_dead_code_every_public_name_of_chapter_07s_modules_is_used():
    """Each name in ``__all__`` of both chapter-07 modules is read somewhere outside its own definition: by the
    notebook (solutions/07), another course module, a test, or its own module (a call, not a docstring)."""
    import ast
    from pathlib import Path

    import nbformat

    root = Path(__file__).resolve().parent.parent
    used: set[str] = set()
    for path in [*(root / "course_lib").rglob("*.py"), *(root / "tests").glob("*.py")]:
        if path.name != Path(__file__).name:
            used |= _names_used(path.read_text())
    notebook = nbformat.read(root / "solutions" / "07_compression_and_explanation.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            used |= _names_used(code)
    for module in (CE, CS):
        tree = ast.parse(Path(module.__file__).read_text())
        defined_at = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        unused = [name for name in module.__all__ if name not in used]
        assert not unused, f"{module.__name__}: nothing uses {unused}; remove them or use them"
        public = {n for n in defined_at if not n.startswith("_")} - {"main"}      # main: the command line
        assert public <= set(module.__all__), f"{module.__name__}: not in __all__: {sorted(public - set(module.__all__))}"


def test_argument_checks():
    with pytest.raises(ValueError, match="c must"):
        CS.corner_stamp(torch.zeros(1, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="images"):
        CS.corner_stamp(torch.zeros(8, 8), 0)
    with pytest.raises(ValueError, match="amount"):
        CS.criterion_keeps(checkpoints.load("digits_cnn"), checkpoints.dataset("digits_cnn"), 1.0)
    with pytest.raises(ValueError, match="parts"):
        CS.regenerate(parts=("nope",))
