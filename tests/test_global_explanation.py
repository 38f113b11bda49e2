"""Chapter 06 references against scikit-learn, closed forms and hand-worked cases."""
import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.inspection import partial_dependence as sk_partial_dependence
from sklearn.linear_model import LinearRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from course_lib import global_explanation as G


def _data(seed=0, n=80, d=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.2 * rng.normal(size=n), rng


# ----------------------------------------------------------------------------- impurity_importance
@pytest.mark.parametrize("kind,criterion", [("reg", "squared_error"), ("reg", "absolute_error"),
                                            ("clf", "gini"), ("clf", "entropy")])
@pytest.mark.parametrize("weighted", [False, True])
def test_impurity_importance_matches_sklearn(kind, criterion, weighted):
    X, y, rng = _data(1)
    w = rng.uniform(0.2, 3.0, size=len(X)) if weighted else None
    if kind == "reg":
        tree = DecisionTreeRegressor(criterion=criterion, max_depth=5, random_state=0).fit(X, y, sample_weight=w)
    else:
        tree = DecisionTreeClassifier(criterion=criterion, max_depth=5, random_state=0).fit(X, (y > 0.5) + (y > 1.5),
                                                                                             sample_weight=w)
    np.testing.assert_allclose(G.impurity_importance(tree), tree.feature_importances_, rtol=0, atol=1e-12)


def test_impurity_importance_of_a_tree_without_split_is_zero():
    tree = DecisionTreeRegressor().fit(np.arange(6.0).reshape(3, 2), [1.0, 1.0, 1.0])
    assert G.impurity_importance(tree).tolist() == [0.0, 0.0]


def test_impurity_importance_hand_worked_stump():
    # one split of y = [0, 0, 4, 4] on x0: root MSE 4 (weight 4), pure children -> all on feature 0
    tree = DecisionTreeRegressor(max_depth=1).fit([[0, 5], [1, 5], [2, 5], [3, 5]], [0, 0, 4, 4])
    assert G.impurity_importance(tree).tolist() == [1.0, 0.0]


def test_impurity_importance_averaged_over_trees_is_the_forest_importance():
    X, y, _ = _data(2)
    forest = RandomForestRegressor(n_estimators=5, random_state=0).fit(X, y)
    mean = np.mean([G.impurity_importance(t) for t in forest.estimators_], axis=0)
    np.testing.assert_allclose(mean, forest.feature_importances_, atol=1e-12)


def test_impurity_importance_rejects_an_unfitted_model():
    with pytest.raises(TypeError, match="tree must be a fitted"):
        G.impurity_importance(DecisionTreeRegressor())


# ----------------------------------------------------------------------------- permutation_importance
def test_permutation_importance_closed_form_for_a_linear_model():
    # independent N(0, 1) features, f = y = X w: permuting column j adds 2 w_j^2 to the MSE (in expectation)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 3))
    w = np.array([1.0, -0.5, 0.0])
    mean, std = G.permutation_importance(lambda Z: Z @ w, X, X @ w, G.neg_mse, n_repeats=3, seed=0)
    np.testing.assert_allclose(mean, 2 * w ** 2, rtol=0.05, atol=1e-12)
    assert mean[2] == 0.0 and std[2] == 0.0


def test_permutation_importance_follows_the_rng_protocol():
    X = np.arange(12.0).reshape(6, 2)
    y = X[:, 0] + 10 * X[:, 1]
    f = lambda Z: Z[:, 0] + 10 * Z[:, 1]                           # noqa: E731
    rng = np.random.default_rng(3)
    drops = []
    for j in range(2):
        for _ in range(2):
            Z = X.copy()
            Z[:, j] = X[rng.permutation(6), j]
            drops.append(G.neg_mse(y, f(X)) - G.neg_mse(y, f(Z)))
    drops = np.array(drops).reshape(2, 2)
    mean, std = G.permutation_importance(f, X, y, G.neg_mse, n_repeats=2, seed=3)
    assert mean.tolist() == drops.mean(1).tolist() and std.tolist() == drops.std(1).tolist()


def test_permutation_importance_leaves_X_alone_and_repeats_itself():
    X, y, _ = _data(3, n=30)
    before = X.copy()
    f = lambda Z: Z[:, 0] * Z[:, 1]                                # noqa: E731
    a = G.permutation_importance(f, X, y, G.neg_mse, n_repeats=3, seed=7)
    b = G.permutation_importance(f, X, y, G.neg_mse, n_repeats=3, seed=7)
    assert np.array_equal(X, before) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_permutation_importance_argument_errors():
    X, y, _ = _data(4, n=10)
    with pytest.raises(ValueError, match="n_repeats must be an int >= 1"):
        G.permutation_importance(lambda Z: Z[:, 0], X, y, G.neg_mse, n_repeats=0)
    with pytest.raises(ValueError, match="y must have one value per row"):
        G.permutation_importance(lambda Z: Z[:, 0], X, y[:-1], G.neg_mse)
    with pytest.raises(TypeError, match="predict must be a callable"):
        G.permutation_importance(None, X, y, G.neg_mse)


# ----------------------------------------------------------------------------- drop_column_importance
def _ols_fit(X, y):
    return LinearRegression().fit(X, y).predict


def test_drop_column_importance_hand_worked():
    # y = x0 exactly: the full OLS model is perfect (score 0), so dropping x1 costs nothing and dropping x0
    # costs the validation MSE of the OLS fit on [1, x1] alone, solved here by hand
    rng = np.random.default_rng(0)
    X_tr, X_val = rng.normal(size=(50, 2)), rng.normal(size=(30, 2))
    y_tr, y_val = X_tr[:, 0], X_val[:, 0]
    A = np.column_stack([np.ones(50), X_tr[:, 1]])
    coef = np.linalg.lstsq(A, y_tr, rcond=None)[0]
    without_0 = np.mean((y_val - coef[0] - coef[1] * X_val[:, 1]) ** 2)
    got = G.drop_column_importance(_ols_fit, X_tr, y_tr, X_val, y_val, G.neg_mse)
    np.testing.assert_allclose(got, [without_0, 0.0], atol=1e-12)


def test_drop_column_importance_of_a_duplicated_column_is_zero():
    rng = np.random.default_rng(1)
    X_tr, X_val = rng.normal(size=(60, 3)), rng.normal(size=(40, 3))
    X_tr[:, 2], X_val[:, 2] = X_tr[:, 0], X_val[:, 0]                # column 2 copies column 0
    w = np.array([1.0, 2.0, 0.0])
    got = G.drop_column_importance(_ols_fit, X_tr, X_tr @ w, X_val, X_val @ w, G.neg_mse)
    np.testing.assert_allclose(got[[0, 2]], 0.0, atol=1e-12)
    assert got[1] > 1.0


def test_drop_column_importance_rejects_column_mismatch():
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="X_val must have the 3 columns"):
        G.drop_column_importance(_ols_fit, X, np.zeros(5), X[:, :2], np.zeros(5), G.neg_mse)


# ----------------------------------------------------------------------------- partial_dependence / ice_curves
def test_partial_dependence_and_ice_match_sklearn_brute():
    X, y, _ = _data(5, n=60)
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(X, y)
    grid = np.array([-1.5, -0.2, 0.0, 0.7, 2.0])
    ref = sk_partial_dependence(forest, X, [1], custom_values={1: grid}, method="brute", kind="both")
    np.testing.assert_allclose(G.partial_dependence(forest.predict, X, 1, grid), ref["average"][0], atol=1e-12)
    np.testing.assert_allclose(G.ice_curves(forest.predict, X, 1, grid), ref["individual"][0], atol=1e-12)


def test_partial_dependence_matches_sklearn_for_a_binary_classifier():
    X, y, _ = _data(6, n=60)
    clf = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y > 0.5)
    grid = [-1.0, 0.0, 1.0]
    ref = sk_partial_dependence(clf, X, [0], custom_values={0: np.array(grid)}, method="brute",
                                response_method="predict_proba")
    got = G.partial_dependence(lambda Z: clf.predict_proba(Z)[:, 1], X, 0, grid)
    np.testing.assert_allclose(got, ref["average"][0], atol=1e-12)


def test_partial_dependence_of_an_additive_model_is_the_component_plus_the_mean_rest():
    X = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0]])
    f = lambda Z: Z[:, 0] ** 2 + Z[:, 1]                            # noqa: E731
    assert G.partial_dependence(f, X, 0, [1.0, 3.0]).tolist() == [1.0 + 1.0, 9.0 + 1.0]
    assert G.ice_curves(f, X, 0, [1.0, 3.0]).tolist() == [[2.0, 10.0], [4.0, 12.0], [0.0, 8.0]]


def test_partial_dependence_argument_errors():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"feature must be a column index in \[0, 2\)"):
        G.partial_dependence(lambda Z: Z[:, 0], X, 2, [0.0])
    with pytest.raises(ValueError, match="grid must be a 1-D sequence"):
        G.ice_curves(lambda Z: Z[:, 0], X, 0, [])
    with pytest.raises(ValueError, match=r"predict\(X\) must return an array of shape \(4,\)"):
        G.ice_curves(lambda Z: Z, X, 0, [0.0])


# ----------------------------------------------------------------------------- surrogate_fidelity
def test_surrogate_fidelity_matches_sklearn_metrics():
    X, y, _ = _data(7, n=50)
    f, g = (lambda Z: Z[:, 0] + Z[:, 1] ** 2), (lambda Z: 0.8 * Z[:, 0] + 0.3)
    assert G.surrogate_fidelity(f, g, X, "regression") == pytest.approx(r2_score(f(X), g(X)), abs=1e-12)
    fl, gl = (lambda Z: (Z[:, 0] > 0).astype(int)), (lambda Z: (Z[:, 0] + Z[:, 1] > 0).astype(int))
    assert G.surrogate_fidelity(fl, gl, X, "classification") == pytest.approx(accuracy_score(fl(X), gl(X)))


def test_surrogate_fidelity_errors():
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match="task must be 'classification' or 'regression'"):
        G.surrogate_fidelity(lambda Z: Z[:, 0], lambda Z: Z[:, 0], X, "clf")
    with pytest.raises(ValueError, match="must not be constant"):
        G.surrogate_fidelity(lambda Z: Z[:, 0], lambda Z: Z[:, 1], X, "regression")


# ----------------------------------------------------------------------------- helpers
def test_helpers():
    noise = G.noise_columns(100, seed=3)
    assert noise.shape == (100, 2) and len(np.unique(noise[:, 0])) == 100 and set(noise[:, 1]) == {0.0, 1.0}
    assert np.array_equal(noise, G.noise_columns(100, seed=3))
    agree = G.rank_agreement({"a": np.array([3.0, 2, 1]), "b": np.array([1.0, 2, 3])})
    assert agree["a"]["a"] == pytest.approx(1.0) and agree["a"]["b"] == pytest.approx(-1.0)
    assert G.ranks(np.array([0.1, 0.5, 0.3])).tolist() == [3.0, 1.0, 2.0]
    X = np.array([[0.0, 0.1], [1.0, 1.0], [2.0, 2.1]])             # |x0 - x1| <= 0.1 in the data
    assert G.off_support_fraction(X, 0, 1, [0.0, 2.0]) == pytest.approx(4 / 6)
    fit = G.forest_fit("regression", n_estimators=3, seed=0)
    Xd, yd, _ = _data(8, n=30)
    assert fit(Xd, yd)(Xd).shape == (30,) and fit.last.n_estimators == 3


def test_importance_over_seeds_repeats_each_measurement_with_each_forest_seed():
    from course_lib import global_explanation as GE
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = 2 * X[:, 0] + 0.1 * rng.normal(size=80)
    Xh = rng.normal(size=(40, 3))
    yh = 2 * Xh[:, 0]
    out = GE.importance_over_seeds(X, y, Xh, yh, seeds=[0, 3], n_estimators=5, progress=False)
    assert out["drop-column"].shape == out["permutation"].shape == (2, 3)
    by_hand = GE.drop_column_importance(GE.forest_fit("regression", n_estimators=5, seed=3), X, y, Xh, yh, GE.r2)
    np.testing.assert_allclose(out["drop-column"][1], by_hand)
    assert not np.allclose(out["drop-column"][0], out["drop-column"][1])      # another seed, other forests
    assert (out["permutation"][:, 0] > 10 * np.abs(out["permutation"][:, 1:]).max()).all()   # only x0 matters


def test_importance_over_seeds_extra_measures_match_their_definitions():
    from sklearn.ensemble import RandomForestRegressor
    rng = np.random.default_rng(1)
    X, Xh = rng.normal(size=(60, 3)), rng.normal(size=(30, 3))
    y, yh = X[:, 0] - X[:, 1], Xh[:, 0] - Xh[:, 1]
    out = G.importance_over_seeds(X, y, Xh, yh, seeds=[2], n_estimators=4, progress=False,
                                  measures=("impurity", "permutation (train)", "mean-imputed"))
    assert set(out) == {"impurity", "permutation (train)", "mean-imputed"}
    forest = RandomForestRegressor(n_estimators=4, random_state=2, n_jobs=1).fit(X, y)
    np.testing.assert_allclose(out["impurity"][0], forest.feature_importances_, atol=1e-12)
    np.testing.assert_allclose(out["permutation (train)"][0],
                               G.permutation_importance(forest.predict, X, y, r2_score, n_repeats=5, seed=0)[0],
                               atol=1e-12)
    imputed = []
    for j in range(3):                                             # column set to its training mean, no refit
        Z = Xh.copy()
        Z[:, j] = X[:, j].mean()
        imputed.append(r2_score(yh, forest.predict(Xh)) - r2_score(yh, forest.predict(Z)))
    np.testing.assert_allclose(out["mean-imputed"][0], imputed, atol=1e-12)


def test_importance_over_seeds_rejects_unknown_measures():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match="measures must be distinct names"):
        G.importance_over_seeds(X, np.zeros(4), X, np.zeros(4), seeds=[0], measures=("shap",), progress=False)
    with pytest.raises(ValueError, match="measures must be distinct names"):
        G.importance_over_seeds(X, np.zeros(4), X, np.zeros(4), seeds=[0], measures=(), progress=False)


def test_per_row_permutation_importance_averages_to_the_r2_permutation_importance():
    X, y, _ = _data(9, n=40, d=3)
    f = lambda Z: Z[:, 0] + 0.3 * Z[:, 2]                          # noqa: E731
    rows = G.per_row_permutation_importance(f, X, y, n_repeats=3, seed=4)
    assert rows.shape == (40, 3) and np.all(rows[:, 1] == 0.0)      # an ignored column: every row exactly 0
    mean = G.permutation_importance(f, X, y, lambda a, b: r2_score(a, b), n_repeats=3, seed=4)[0]
    np.testing.assert_allclose(rows.mean(0), mean, rtol=1e-10, atol=1e-12)


def test_rank_agreement_interval_against_a_plain_bootstrap_loop():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    a, b = rng.exponential(size=(30, 5)), rng.exponential(size=(30, 5))
    a[:, 0] += 1.0
    b[:, 0] += 1.0
    iv = G.rank_agreement_interval(a, b, n_boot=200, seed=3)
    assert iv.estimate == pytest.approx(spearmanr(a.mean(0), b.mean(0)).statistic)
    draws = np.random.default_rng(3).integers(0, 30, size=(200, 30))      # stats.bootstrap_interval's draws
    boot = [spearmanr(a[i].mean(0), b[i].mean(0)).statistic for i in draws]
    low, high = np.quantile(boot, [0.025, 0.975])
    assert iv.low == pytest.approx(low) and iv.high == pytest.approx(high)
    fixed = G.rank_agreement_interval(a, np.arange(5.0)[::-1], n_boot=200, seed=3)   # a fixed ranking
    assert fixed.estimate == pytest.approx(spearmanr(a.mean(0), np.arange(5.0)[::-1]).statistic)
    same = G.rank_agreement_interval(a, a, n_boot=200)
    assert same.low == same.high == pytest.approx(1.0)
    with pytest.raises(ValueError, match="b must have shape"):
        G.rank_agreement_interval(a, np.zeros(4))


def test_row_bootstrap_of_the_mean_is_the_bootstrap_of_the_values():
    from course_lib import stats
    v = np.random.default_rng(5).normal(size=25)
    iv = G.row_bootstrap(lambda i: v[i].mean(1), 25, n_boot=300, seed=1)
    ref = stats.bootstrap_interval(v, n_boot=300, seed=1)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((ref.estimate, ref.low, ref.high))


def test_rank_stability_hand_worked():
    runs = np.array([[1.0, 2, 3], [1.0, 2, 3], [3.0, 2, 1]])       # pairs: +1, -1, -1
    assert G.rank_stability(runs) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="at least 2 rows"):
        G.rank_stability(np.ones((1, 3)))


# ----------------------------------------------------------------------------- issue 26: ALE, grouped permutation, Lasso
def test_ale_is_the_own_term_of_an_additive_model_whatever_the_correlation():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-2, 2, size=300)
    X = np.column_stack([x0, x0 + 0.1 * rng.normal(size=300), rng.normal(size=300)])   # column 1 copies column 0
    f = lambda Z: Z[:, 0] ** 3 + 5 * np.cos(Z[:, 1]) - Z[:, 2]                           # noqa: E731
    edges = np.quantile(x0, np.linspace(0, 1, 11))
    ale = G.accumulated_local_effects(f, X, 0, edges)
    np.testing.assert_allclose(ale - ale.mean(), edges ** 3 - (edges ** 3).mean(), atol=1e-10)
    k = np.clip(np.searchsorted(edges, x0, side="left") - 1, 0, 9)
    mids = (ale[k] + ale[k + 1]) / 2
    assert abs(mids.mean()) < 1e-12                                                       # centred over the rows
    pd = G.partial_dependence(f, X, 0, edges)                                             # PD: the same here, additive
    np.testing.assert_allclose(pd - pd.mean(), edges ** 3 - (edges ** 3).mean(), atol=1e-10)


def test_ale_differs_from_pd_off_support_and_validates():
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=400)
    X = np.column_stack([x0, x0 + 0.02 * rng.normal(size=400)])
    f = lambda Z: Z[:, 0] * Z[:, 1]                                                       # noqa: E731
    edges = np.quantile(x0, np.linspace(0, 1, 21))
    ale, pd = G.accumulated_local_effects(f, X, 0, edges), G.partial_dependence(f, X, 0, edges)
    # on the data f = x0^2, whose x0-derivative is x1 ~ x0, so ALE ~ x0^2 / 2 + c; PD ~ x0 * mean(x1), nearly flat
    np.testing.assert_allclose(ale - ale.mean(), edges ** 2 / 2 - (edges ** 2 / 2).mean(), atol=0.03)
    assert np.ptp(pd) < 0.1
    with pytest.raises(ValueError):
        G.accumulated_local_effects(f, X, 0, edges[1:])                                  # does not cover the column
    with pytest.raises(ValueError):
        G.accumulated_local_effects(f, X, 0, edges[::-1])
    with pytest.raises(ValueError):
        G.accumulated_local_effects(f, X, 2, edges)


def test_grouped_permutation_of_one_column_is_permutation_and_copies_count_together():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    X[:, 1] = X[:, 0]
    y = X[:, 0] + X[:, 1] + 0.1 * X[:, 2]
    predict = lambda Z: Z[:, 0] + Z[:, 1] + 0.1 * Z[:, 2]                                 # noqa: E731
    single = G.grouped_permutation_importance(predict, X, y, G.r2, {"c0": [0]}, n_repeats=4, seed=3)["c0"]
    mean, _ = G.permutation_importance(predict, X, y, G.r2, n_repeats=4, seed=3)
    assert abs(single.mean() - mean[0]) < 1e-12                                          # same draws for column 0 first
    both = G.grouped_permutation_importance(predict, X, y, G.r2, {"pair": [0, 1]}, n_repeats=4, seed=3)["pair"]
    assert both.mean() > 1.5 and single.mean() < 1.1                                       # R² drop: ~2 vs ~1
    with pytest.raises(ValueError):
        G.grouped_permutation_importance(predict, X, y, G.r2, {"bad": [5]})


def test_lasso_selection_bootstrap_counts_sum_and_pick_one_of_a_copy():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 3))
    X[:, 1] = X[:, 0] + 0.01 * rng.normal(size=150)
    y = X[:, 0] + X[:, 1] + 0.5 * rng.normal(size=150)
    counts = G.lasso_selection_bootstrap(X, y, 0.3, [0, 1], n_boot=20, seed=0)
    assert sum(counts.values()) == 20 and counts["first only"] + counts["second only"] >= 15
    with pytest.raises(ValueError):
        G.lasso_selection_bootstrap(X, y, 0.0, [0, 1])


def test_queried_rows_are_jittered_copies_in_repeat_order():
    X = np.arange(6, dtype=float).reshape(3, 2)
    q = G.queried_rows(X, copies=4, noise=0.0, seed=0)
    assert q.shape == (12, 2) and np.array_equal(q, np.repeat(X, 4, axis=0))
    jitter = G.queried_rows(X, copies=4000, noise=0.5, seed=1) - np.repeat(X, 4000, axis=0)
    assert abs(jitter.std() - 0.5) < 0.01 and abs(jitter.mean()) < 0.01
    with pytest.raises(ValueError, match="noise"):
        G.queried_rows(X, noise=-1.0)


def test_surrogate_over_seeds_on_boxes_a_tree_can_copy():
    rng = np.random.default_rng(0)
    X_fit, X_eval = rng.normal(size=(200, 3)), rng.normal(size=(300, 3))
    axis = lambda X: (X[:, 0] > 0).astype(int)                    # noqa: E731  one split: depth 1 copies it
    diagonal = lambda X: (X[:, 0] + X[:, 1] > 0).astype(int)     # noqa: E731  no finite tree copies it exactly
    out = G.surrogate_over_seeds([axis, diagonal], X_fit, X_eval, depths=(1, 4), progress=False)
    assert out["depths"] == [1, 4] and out["training rows"].shape == (2, 2) == out["queried rows"].shape
    assert np.all(out["training rows"][0] == 1.0) and np.all(out["queried rows"][0] == 1.0)
    assert 0.5 < out["training rows"][1, 0] < 1.0 and out["queried rows"][1, 1] > out["queried rows"][1, 0]
    with pytest.raises(ValueError, match="at least 2"):
        G.surrogate_over_seeds([axis], X_fit, X_eval, depths=(1,))
    with pytest.raises(TypeError, match="predicts"):
        G.surrogate_over_seeds([axis, 3], X_fit, X_eval, depths=(1,))
