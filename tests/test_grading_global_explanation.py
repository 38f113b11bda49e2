"""Chapter 06's graders accept the reference and reject the stub and the wrong answers learners write."""
import numpy as np
import pytest

from course_lib.grader import grading
from course_lib import global_explanation as G
from grader_contract import contract_tests, grade, grades_the_idea


# ----------------------------------------------------------------------------- impurity_importance
def _mdi(tree, weights="weighted", weighted_gain=True, normalise=True, count=False, leaves_too=False):
    t = tree.tree_
    w = t.weighted_n_node_samples if weights == "weighted" else t.n_node_samples.astype(float)
    out = np.zeros(t.n_features)
    for node in range(t.node_count):
        left, right = t.children_left[node], t.children_right[node]
        if left == -1 and not leaves_too:
            continue
        if count:
            out[t.feature[node]] += 1.0
        elif weighted_gain:
            out[t.feature[node]] += w[node] * t.impurity[node] - w[left] * t.impurity[left] \
                - w[right] * t.impurity[right]
        else:
            out[t.feature[node]] += t.impurity[node] - t.impurity[left] - t.impurity[right]
    if not normalise:
        return out
    total = out.sum()
    return out / total if total > 0 else out


def mdi_unweighted_counts(tree):
    return _mdi(tree, weights="n")


def mdi_not_normalised(tree):
    return _mdi(tree, normalise=False)


def mdi_gain_without_weights(tree):
    return _mdi(tree, weighted_gain=False)


def mdi_split_counts(tree):
    return _mdi(tree, count=True)


def mdi_leaves_included(tree):
    return _mdi(tree, leaves_too=True)


def mdi_divides_by_zero(tree):
    out = _mdi(tree, normalise=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / out.sum()


def mdi_length_from_used_features(tree):
    t = tree.tree_
    used = t.feature[t.children_left != -1]
    full = _mdi(tree)
    return full[: (used.max() + 1 if len(used) else 1)]


# ----------------------------------------------------------------------------- permutation_importance
def _perm(predict, X, y, score, n_repeats=5, seed=0, order="features_first", ddof=0, sign=1.0, rng_per_feature=False,
          ratio=False, global_rng=False):
    if n_repeats < 1 or len(y) != len(X):
        raise ValueError("bad input")
    rng = np.random.default_rng(seed)
    base = score(y, predict(X))
    d = X.shape[1]
    drops = np.zeros((d, n_repeats))
    pairs = [(j, r) for j in range(d) for r in range(n_repeats)] if order == "features_first" else \
        [(j, r) for r in range(n_repeats) for j in range(d)]
    for j, r in pairs:
        if rng_per_feature and r == 0:
            rng = np.random.default_rng(seed)
        perm = np.random.permutation(len(X)) if global_rng else rng.permutation(len(X))
        Xp = X.copy()
        Xp[:, j] = X[perm, j]
        s = score(y, predict(Xp))
        drops[j, r] = (base - s) / base if ratio else sign * (base - s)
    return drops.mean(1), drops.std(1, ddof=ddof)


def perm_repeats_outer_loop(predict, X, y, score, n_repeats=5, seed=0):
    return _perm(predict, X, y, score, n_repeats, seed, order="repeats_first")


def perm_sample_std(predict, X, y, score, n_repeats=5, seed=0):
    if n_repeats < 2:
        return _perm(predict, X, y, score, n_repeats, seed)[0], np.full(X.shape[1], np.nan)
    return _perm(predict, X, y, score, n_repeats, seed, ddof=1)


def perm_sign_flipped(predict, X, y, score, n_repeats=5, seed=0):
    return _perm(predict, X, y, score, n_repeats, seed, sign=-1.0)


def perm_fresh_rng_per_feature(predict, X, y, score, n_repeats=5, seed=0):
    return _perm(predict, X, y, score, n_repeats, seed, rng_per_feature=True)


def perm_relative_drop(predict, X, y, score, n_repeats=5, seed=0):
    return _perm(predict, X, y, score, n_repeats, seed, ratio=True)


def perm_global_numpy_rng(predict, X, y, score, n_repeats=5, seed=0):
    np.random.seed(seed)
    return _perm(predict, X, y, score, n_repeats, seed, global_rng=True)


def perm_default_ten_repeats(predict, X, y, score, n_repeats=10, seed=0):
    return _perm(predict, X, y, score, n_repeats, seed)


# ----------------------------------------------------------------------------- drop_column_importance
def _drop(fit, X_train, y_train, X_val, y_val, score, how="retrain", on_train=False, sign=1.0):
    if X_train.shape[1] != X_val.shape[1]:
        raise ValueError("column mismatch")
    Xe, ye = (X_train, y_train) if on_train else (X_val, y_val)
    full = fit(X_train, y_train)
    base = score(ye, full(Xe))
    out = np.zeros(X_train.shape[1])
    for j in range(X_train.shape[1]):
        if how == "retrain":
            s = score(ye, fit(np.delete(X_train, j, 1), y_train)(np.delete(Xe, j, 1)))
        elif how == "mean":
            Xm = Xe.copy()
            Xm[:, j] = X_train[:, j].mean()
            s = score(ye, full(Xm))
        else:
            Xm = Xe.copy()
            Xm[:, j] = Xm[np.random.default_rng(0).permutation(len(Xm)), j]
            s = score(ye, full(Xm))
        out[j] = sign * (base - s)
    return out


def drop_mean_imputed_no_retrain(fit, X_train, y_train, X_val, y_val, score):
    return _drop(fit, X_train, y_train, X_val, y_val, score, how="mean")


def drop_scored_on_train(fit, X_train, y_train, X_val, y_val, score):
    return _drop(fit, X_train, y_train, X_val, y_val, score, on_train=True)


def drop_sign_flipped(fit, X_train, y_train, X_val, y_val, score):
    return _drop(fit, X_train, y_train, X_val, y_val, score, sign=-1.0)


def drop_permutes_instead(fit, X_train, y_train, X_val, y_val, score):
    return _drop(fit, X_train, y_train, X_val, y_val, score, how="permute")


# ----------------------------------------------------------------------------- partial_dependence
def _ice(predict, X, feature, grid):
    if not 0 <= feature < X.shape[1]:
        raise ValueError("feature out of range")
    cols = []
    for v in grid:
        Xs = X.copy()
        Xs[:, feature] = v
        cols.append(np.asarray(predict(Xs), dtype=float))
    return np.stack(cols, 1)


def pd_at_mean_row(predict, X, feature, grid):
    return _ice(predict, X.mean(0, keepdims=True), feature, grid)[0] if 0 <= feature < X.shape[1] else \
        _ice(predict, X, feature, grid)


def pd_median(predict, X, feature, grid):
    return np.median(_ice(predict, X, feature, grid), axis=0)


def pd_centered(predict, X, feature, grid):
    pd = _ice(predict, X, feature, grid).mean(0)
    return pd - pd.mean()


def pd_conditional_mplot(predict, X, feature, grid):
    """Averages the model's predictions on rows whose feature is near each grid value (an M-plot)."""
    f = np.asarray(predict(X), float)
    _ice(predict, X[:1], feature, grid)
    out = []
    for v in grid:
        w = np.exp(-((X[:, feature] - v) ** 2) / 0.5)
        out.append(np.sum(w * f) / np.sum(w))
    return np.array(out)










# ----------------------------------------------------------------------------- accumulated_local_effects
def _ale(predict, X, feature, edges, rows="own", closed="right", centre="weighted", accumulate=True, mean=True,
         validate=True):
    """Bin by bin with explicit masks (written from the instructions, not the reference)."""
    e = np.asarray(edges, dtype=float)
    x = X[:, feature]
    if validate and (e.ndim != 1 or len(e) < 2 or np.any(e[1:] <= e[:-1]) or x.min() < e[0] or x.max() > e[-1]):
        raise ValueError("bad edges")
    K = len(e) - 1
    effects, counts = np.zeros(K), np.zeros(K)
    for k in range(K):
        if closed == "right":
            inside = (x > e[k]) & (x <= e[k + 1]) if k > 0 else (x >= e[0]) & (x <= e[1])
        else:
            inside = (x >= e[k]) & (x < e[k + 1]) if k < K - 1 else (x >= e[k]) & (x <= e[-1])
        counts[k] = inside.sum()
        use = X[inside] if rows == "own" else X
        if len(use) == 0 or counts[k] == 0:
            continue
        hi, lo = use.copy(), use.copy()
        hi[:, feature], lo[:, feature] = e[k + 1], e[k]
        d = np.asarray(predict(hi), float) - np.asarray(predict(lo), float)
        effects[k] = d.mean() if mean else d.sum()
    g = np.concatenate([[0.0], np.cumsum(effects) if accumulate else effects])
    if centre == "weighted":
        return g - np.sum(counts * (g[:-1] + g[1:]) / 2) / max(counts.sum(), 1)
    if centre == "plain":
        return g - g.mean()
    return g


def ale_uncentred(predict, X, feature, edges):
    return _ale(predict, X, feature, edges, centre="none")


def ale_all_rows_like_pd(predict, X, feature, edges):
    return _ale(predict, X, feature, edges, rows="all")


def ale_left_closed_bins(predict, X, feature, edges):
    return _ale(predict, X, feature, edges, closed="left")


def ale_plain_mean_centre(predict, X, feature, edges):
    return _ale(predict, X, feature, edges, centre="plain")


def ale_summed_not_averaged(predict, X, feature, edges):
    return _ale(predict, X, feature, edges, mean=False)


def ale_not_accumulated(predict, X, feature, edges):
    return _ale(predict, X, feature, edges, accumulate=False)


# ----------------------------------------------------------------------------- surrogate_fidelity
def _fid(model_predict, surrogate_predict, X, task, how="r2"):
    if task not in ("classification", "regression"):
        raise ValueError("task")
    f, g = np.asarray(model_predict(X)), np.asarray(surrogate_predict(X))
    if task == "classification":
        return float(np.mean(f == g)) * (100.0 if how == "percent" else 1.0) if how != "disagree" else \
            float(np.mean(f != g))
    f, g = f.astype(float), g.astype(float)
    if np.sum((f - f.mean()) ** 2) == 0:
        raise ValueError("constant")
    if how == "swapped":
        return float(1 - np.sum((f - g) ** 2) / np.sum((g - g.mean()) ** 2))
    if how == "corr2":
        return float(np.corrcoef(f, g)[0, 1] ** 2)
    if how == "one_minus_mse":
        return float(1 - np.mean((f - g) ** 2))
    if how == "equal":
        return float(np.mean(f == g))
    return float(1 - np.sum((f - g) ** 2) / np.sum((f - f.mean()) ** 2))


def fid_r2_arguments_swapped(model_predict, surrogate_predict, X, task):
    return _fid(model_predict, surrogate_predict, X, task, how="swapped" if task == "regression" else "r2")


def fid_squared_correlation(model_predict, surrogate_predict, X, task):
    return _fid(model_predict, surrogate_predict, X, task, how="corr2" if task == "regression" else "r2")


def fid_one_minus_mse(model_predict, surrogate_predict, X, task):
    return _fid(model_predict, surrogate_predict, X, task, how="one_minus_mse" if task == "regression" else "r2")


def fid_percent(model_predict, surrogate_predict, X, task):
    return _fid(model_predict, surrogate_predict, X, task, how="percent")


def fid_equal_outputs_for_regression(model_predict, surrogate_predict, X, task):
    return _fid(model_predict, surrogate_predict, X, task, how="equal")


def fid_disagreement(model_predict, surrogate_predict, X, task):
    return _fid(model_predict, surrogate_predict, X, task, how="disagree")


WRONG = {
    "impurity_importance": [mdi_unweighted_counts, mdi_not_normalised, mdi_gain_without_weights, mdi_split_counts,
                            mdi_leaves_included, mdi_divides_by_zero, mdi_length_from_used_features],
    "permutation_importance": [perm_repeats_outer_loop, perm_sample_std, perm_sign_flipped,
                               perm_fresh_rng_per_feature, perm_relative_drop, perm_global_numpy_rng,
                               perm_default_ten_repeats],
    "drop_column_importance": [drop_mean_imputed_no_retrain, drop_scored_on_train, drop_sign_flipped,
                               drop_permutes_instead],
    "partial_dependence": [pd_at_mean_row, pd_median, pd_centered, pd_conditional_mplot],
    "accumulated_local_effects": [ale_uncentred, ale_all_rows_like_pd, ale_left_closed_bins, ale_plain_mean_centre,
                                  ale_summed_not_averaged, ale_not_accumulated],
    "surrogate_fidelity": [fid_r2_arguments_swapped, fid_squared_correlation, fid_one_minus_mse, fid_percent,
                           fid_equal_outputs_for_regression, fid_disagreement],
}



# ----------------------------------------------------------------------------- independent correct versions
def impurity_loop(tree):
    return _mdi(tree)


def permutation_shuffle_view(predict, X, y, score, n_repeats=5, seed=0):
    """Shuffles a copy of the column in place with rng.shuffle (the same draws as rng.permutation)."""
    if n_repeats < 1 or len(y) != len(X):
        raise ValueError("bad input")
    rng = np.random.default_rng(seed)
    base = score(y, predict(X))
    scores = np.zeros((X.shape[1], n_repeats))
    for j in range(X.shape[1]):
        for r in range(n_repeats):
            Xp = X.copy()
            rng.shuffle(Xp[:, j])
            scores[j, r] = score(y, predict(Xp))
    mean = base - scores.mean(1)
    return mean, np.sqrt(((base - scores - mean[:, None]) ** 2).mean(1))


def drop_column_loop(fit, X_train, y_train, X_val, y_val, score):
    return _drop(fit, X_train, y_train, X_val, y_val, score)


def partial_dependence_stacked(predict, X, feature, grid):
    if not 0 <= feature < X.shape[1]:
        raise ValueError("feature out of range")
    G = len(grid)
    Xs = np.tile(X, (G, 1))                                   # all grid values in one call
    Xs[:, feature] = np.repeat(np.asarray(grid, float), len(X))
    return np.asarray(predict(Xs), float).reshape(G, len(X)).mean(1)




def ale_loop(predict, X, feature, edges):
    return _ale(predict, X, feature, edges)


def fidelity_plain(model_predict, surrogate_predict, X, task):
    return _fid(model_predict, surrogate_predict, X, task)


# ----------------------------------------------------------------------------- right, without input validation
def impurity_no_validation(tree):
    t = tree.tree_                                            # AttributeError (not TypeError) for a non-tree
    split = t.children_left != -1
    gain = np.zeros(t.n_features)
    for node in np.flatnonzero(split):
        l, r = t.children_left[node], t.children_right[node]
        w = t.weighted_n_node_samples
        gain[t.feature[node]] += w[node] * t.impurity[node] - w[l] * t.impurity[l] - w[r] * t.impurity[r]
    return gain / gain.sum() if gain.sum() > 0 else gain


def permutation_no_validation(predict, X, y, score, n_repeats=5, seed=0):
    rng = np.random.default_rng(seed)
    base = score(y, predict(X))
    drops = np.zeros((X.shape[1], n_repeats))
    for j in range(X.shape[1]):
        for r in range(n_repeats):
            Xp = X.copy()
            Xp[:, j] = X[rng.permutation(len(X)), j]
            drops[j, r] = base - score(y, predict(Xp))
    with np.errstate(invalid="ignore"):
        return drops.mean(1) if n_repeats else np.zeros(X.shape[1]), drops.std(1) if n_repeats else np.zeros(X.shape[1])


def pd_no_validation(predict, X, feature, grid):
    return _ice_no_validation(predict, X, feature, grid).mean(0)


def _ice_no_validation(predict, X, feature, grid):
    out = np.zeros((len(X), len(grid)))
    for k, v in enumerate(grid):
        Xs = X.copy()
        Xs[:, feature] = v                                    # IndexError (not ValueError) out of range
        out[:, k] = predict(Xs)
    return out




def ale_no_validation(predict, X, feature, edges):
    return _ale(predict, X, feature, edges, validate=False)


def fidelity_no_validation(model_predict, surrogate_predict, X, task):
    f, g = np.asarray(model_predict(X)), np.asarray(surrogate_predict(X))
    if task == "classification":
        return float(np.mean(f == g))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(1 - np.sum((f - g) ** 2) / np.sum((f - f.mean()) ** 2))


# drop_column_importance is left out: without validation, a column mismatch fails inside fit/predict with the
# same ValueError the reference raises, so there is no note to check.
test_grader_grades_the_idea = grades_the_idea({
    "impurity_importance": [impurity_no_validation], "permutation_importance": [permutation_no_validation],
    "partial_dependence": [pd_no_validation], "accumulated_local_effects": [ale_no_validation],
    "surrogate_fidelity": [fidelity_no_validation]})


INDEPENDENT = {"impurity_importance": impurity_loop, "permutation_importance": permutation_shuffle_view,
               "drop_column_importance": drop_column_loop, "partial_dependence": partial_dependence_stacked,
               "accumulated_local_effects": ale_loop, "surrogate_fidelity": fidelity_plain}

(test_grader_accepts_reference, test_grader_accepts_independent_correct_versions,
 test_grader_rejects_stub, test_grader_rejects_wrong_answer) = \
    contract_tests(WRONG, INDEPENDENT, wrong_seeds=list(range(10)), independent_seeds=[7, 8])  # wrong answers: seeds 0..9


def test_impurity_grader_input_has_no_answer_attached():
    ex = grading.exercises.get("impurity_importance")
    (tree,), _ = ex.build(ex.make_cases(np.random.default_rng(0))[1])
    assert not hasattr(tree, "feature_importances_") and not hasattr(tree.tree_, "compute_feature_importances")


def test_check_returns_learner_function_on_pass_and_reference_on_fail(capsys):
    assert grading.check("accumulated_local_effects", ale_loop, seed=3) is ale_loop
    assert "PASS" in capsys.readouterr().out
    assert grading.check("accumulated_local_effects", ale_uncentred, seed=3) is G.accumulated_local_effects
    assert "FAIL" in capsys.readouterr().out
