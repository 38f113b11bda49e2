"""Chapter 06 -- global explanation: what a model uses, over a whole data set.

Three ways to rank features (impurity, permutation, drop-column), a readable stand-in for a model
(a depth-limited tree surrogate, scored by its fidelity), and the shape of a model's dependence on
one feature (partial dependence and ICE curves).

The first six functions are the references of the chapter's exercises. They take models as plain
callables, as scikit-learn's inspection tools take estimators:

- ``predict(X)`` maps a float64 array of shape ``(n, d)`` to an array of ``n`` predictions;
- ``score(y, y_pred)`` returns a float, **higher is better** (accuracy, R^2, minus the MSE);
- ``fit(X, y)`` trains a fresh model and returns its ``predict`` callable.

The rest are the helpers the notebook calls (noise columns, forests, sweeps, plots).

References
----------
Breiman, L. (2001). Random Forests. Machine Learning 45, 5-32.
Strobl, C., Boulesteix, A.-L., Zeileis, A. & Hothorn, T. (2007). Bias in random forest variable
importance measures: Illustrations, sources and a solution. BMC Bioinformatics 8, 25.
Friedman, J. H. (2001). Greedy function approximation: a gradient boosting machine. Annals of Statistics 29(5).
Goldstein, A., Kapelner, A., Bleich, J. & Pitkin, E. (2015). Peeking Inside the Black Box: Visualizing
Statistical Learning With Plots of Individual Conditional Expectation. JCGS 24(1).
Craven, M. W. & Shavlik, J. W. (1996). Extracting Tree-Structured Representations of Trained Networks. NIPS 8.

Taught in: 06_global_explanation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from .validation import check_int

__all__ = ["impurity_importance", "permutation_importance", "drop_column_importance", "partial_dependence",
           "ice_curves", "accumulated_local_effects", "grouped_permutation_importance",
           "lasso_selection_bootstrap", "surrogate_fidelity", "neg_mse", "r2", "accuracy", "noise_columns", "forest_fit",
           "surrogate_sweep", "queried_rows", "surrogate_over_seeds", "importance_over_seeds", "per_row_permutation_importance", "row_bootstrap",
           "rank_agreement_interval", "rank_stability", "rank_agreement", "ranks", "off_support_fraction", "plot_pdp_ice",
           "plot_importances", "plot_network"]

_TREE_LEAF = -1          # children_left / children_right of a leaf (sklearn.tree._tree.TREE_LEAF)


# --------------------------------------------------------------------------- argument checks
def _check_X(name: str, X: object) -> np.ndarray:
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (n, d), got {type(X).__name__}")
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name} must be a numpy array of shape (n, d) with n, d >= 1, got shape {X.shape}")
    return X


def _check_callable(name: str, fn: object) -> Callable:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable, got {type(fn).__name__}")
    return fn


def _check_feature(feature: object, d: int) -> int:
    feature = check_int("feature", feature, 0)
    if feature >= d:
        raise ValueError(f"feature must be a column index in [0, {d}), got {feature}")
    return feature


def _check_grid(grid: object) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or len(g) < 1:
        raise ValueError(f"grid must be a 1-D sequence of at least one value, got shape {g.shape}")
    return g


def _predictions(predict: Callable, X: np.ndarray, n: int, name: str = "predict") -> np.ndarray:
    out = np.asarray(predict(X))
    if out.shape != (n,):
        raise ValueError(f"{name}(X) must return an array of shape ({n},), got shape {out.shape}")
    return out


# --------------------------------------------------------------------------- the exercises
def impurity_importance(tree) -> np.ndarray:
    """Mean-decrease-in-impurity importance of a fitted decision tree, from its ``tree_`` arrays.

    Every split node :math:`t` (``children_left[t] != -1``) on feature :math:`f_t` adds its weighted
    impurity decrease to that feature; the result is normalised to sum to 1:

    .. math:: \\mathrm{MDI}_j \\propto \\sum_{t:\\,f_t = j} w_t I_t - w_{l(t)} I_{l(t)} - w_{r(t)} I_{r(t)}

    with :math:`w` = ``weighted_n_node_samples`` (sample weights included) and :math:`I` = ``impurity``.

    Parameters
    ----------
    tree : fitted ``DecisionTreeClassifier`` or ``DecisionTreeRegressor``
        Anything with a ``tree_`` holding ``children_left``, ``children_right``, ``feature``,
        ``impurity``, ``weighted_n_node_samples`` and ``n_features``.

    Returns
    -------
    ndarray of shape (n_features,), float64
        Sums to 1; all zeros for a tree without a split. Equals ``tree.feature_importances_``.

    Raises
    ------
    TypeError
        If ``tree`` has no ``tree_`` (not fitted, or not a tree).

    Examples
    --------
    >>> from sklearn.tree import DecisionTreeRegressor
    >>> t = DecisionTreeRegressor(max_depth=2, random_state=0).fit([[0, 1], [1, 1], [2, 0], [3, 0]], [0, 0, 1, 3])
    >>> impurity_importance(t).round(3).tolist()
    [1.0, 0.0]

    Taught in: 06_global_explanation §1
    """
    t = getattr(tree, "tree_", None)
    if t is None:
        raise TypeError(f"tree must be a fitted scikit-learn decision tree (with a tree_), got {type(tree).__name__}")
    left, right, feature = np.asarray(t.children_left), np.asarray(t.children_right), np.asarray(t.feature)
    w, impurity = np.asarray(t.weighted_n_node_samples, np.float64), np.asarray(t.impurity, np.float64)
    split = np.flatnonzero(left != _TREE_LEAF)                                    # split nodes only
    decrease = w[split] * impurity[split] - w[left[split]] * impurity[left[split]] \
        - w[right[split]] * impurity[right[split]]
    importance = np.zeros(int(t.n_features))
    np.add.at(importance, feature[split], decrease)
    total = importance.sum()
    return importance / total if total > 0 else importance


def permutation_importance(predict: Callable, X: np.ndarray, y: np.ndarray, score: Callable,
                           n_repeats: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Drop of ``score`` when one column is shuffled, averaged over ``n_repeats`` shuffles.

    .. math:: \\mathrm{PI}_{j,r} = s\\big(y, f(X)\\big) - s\\big(y, f(X^{(j, \\pi_{j,r})})\\big)

    where :math:`X^{(j,\\pi)}` is ``X`` with column :math:`j` replaced by ``X[pi, j]``.

    Rules: ``rng = np.random.default_rng(seed)``; for each feature ``j`` in column order, for each repeat
    in order, ``pi = rng.permutation(n_rows)``. ``X`` is not modified; a feature ``predict`` ignores gets 0.

    Parameters
    ----------
    predict : callable, (n, d) -> (n,)
    X : ndarray of shape (n, d)
    y : array of shape (n,)
    score : callable ``score(y, y_pred) -> float``, higher is better
    n_repeats : int >= 1, default=5
    seed : int >= 0, default=0

    Returns
    -------
    mean, std : ndarray of shape (d,), float64
        Mean and population standard deviation (ddof=0) over the repeats.

    Raises
    ------
    TypeError, ValueError
        For a non-callable ``predict``/``score``, a non-2-D ``X``, ``y`` of another length, ``n_repeats < 1``.

    References
    ----------
    Breiman (2001); Fisher, Rudin & Dominici (2019), JMLR 20(177).

    Taught in: 06_global_explanation §2
    """
    predict, score = _check_callable("predict", predict), _check_callable("score", score)
    X = _check_X("X", X)
    if len(y) != len(X):
        raise ValueError(f"y must have one value per row of X ({len(X)}), got {len(y)}")
    n_repeats, seed = check_int("n_repeats", n_repeats, 1), check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    baseline = score(y, predict(X))
    drops = np.empty((X.shape[1], n_repeats))                                     # (d, n_repeats)
    for j in range(X.shape[1]):
        X_perm = X.copy()
        for r in range(n_repeats):
            X_perm[:, j] = X[rng.permutation(len(X)), j]
            drops[j, r] = baseline - score(y, predict(X_perm))
    return drops.mean(axis=1), drops.std(axis=1)


def drop_column_importance(fit: Callable, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                           y_val: np.ndarray, score: Callable) -> np.ndarray:
    """Drop of the validation score when a model is **retrained** without each column.

    .. math:: \\mathrm{DC}_j = s\\big(y_{val}, f(X_{val})\\big) - s\\big(y_{val}, f_{-j}(X_{val,-j})\\big),
              \\quad f = \\mathrm{fit}(X_{tr}, y_{tr}),\\; f_{-j} = \\mathrm{fit}(X_{tr,-j}, y_{tr})

    with column :math:`j` removed by ``numpy.delete(X, j, axis=1)`` from both train and validation.

    Parameters
    ----------
    fit : callable ``fit(X, y) -> predict``
    X_train, X_val : ndarray of shape (n_train, d), (n_val, d)
    y_train, y_val : arrays of the matching lengths
    score : callable ``score(y, y_pred) -> float``, higher is better

    Returns
    -------
    ndarray of shape (d,), float64

    Raises
    ------
    TypeError, ValueError
        For non-callables, non-2-D arrays, or ``X_train`` and ``X_val`` with different numbers of columns.

    Taught in: 06_global_explanation §3
    """
    fit, score = _check_callable("fit", fit), _check_callable("score", score)
    X_train, X_val = _check_X("X_train", X_train), _check_X("X_val", X_val)
    if X_train.shape[1] != X_val.shape[1]:
        raise ValueError(f"X_val must have the {X_train.shape[1]} columns of X_train, got {X_val.shape[1]}")
    baseline = score(y_val, fit(X_train, y_train)(X_val))
    importance = np.empty(X_train.shape[1])
    for j in range(X_train.shape[1]):
        predict_j = fit(np.delete(X_train, j, axis=1), y_train)                  # retrained without column j
        importance[j] = baseline - score(y_val, predict_j(np.delete(X_val, j, axis=1)))
    return importance


def partial_dependence(predict: Callable, X: np.ndarray, feature: int, grid: Sequence[float]) -> np.ndarray:
    """Mean prediction with column ``feature`` set to each grid value in every row.

    .. math:: \\mathrm{PD}_j(v) = \\frac1n \\sum_{i=1}^n f(x_{i,-j}, v)

    Parameters
    ----------
    predict : callable, (n, d) -> (n,)
    X : ndarray of shape (n, d)
    feature : int in [0, d)
    grid : 1-D sequence of G values

    Returns
    -------
    ndarray of shape (G,), float64
        Equals ``sklearn.inspection.partial_dependence(est, X, [feature], custom_values={feature: grid},
        method="brute")["average"][0]``.

    References
    ----------
    Friedman (2001).

    Taught in: 06_global_explanation §5
    """
    predict, X = _check_callable("predict", predict), _check_X("X", X)
    feature, grid = _check_feature(feature, X.shape[1]), _check_grid(grid)
    X_set = X.copy()
    pd = np.empty(len(grid))
    for k, value in enumerate(grid):
        X_set[:, feature] = value
        pd[k] = _predictions(predict, X_set, len(X)).mean()
    return pd


def ice_curves(predict: Callable, X: np.ndarray, feature: int, grid: Sequence[float]) -> np.ndarray:
    """Individual conditional expectation: one curve per row, ``ice[i, k] = f(x_i with x_ij = grid[k])``.

    .. math:: \\mathrm{ICE}_{i}(v) = f(x_{i,-j}, v), \\qquad \\frac1n\\sum_i \\mathrm{ICE}_i = \\mathrm{PD}_j

    Returns
    -------
    ndarray of shape (n, G), float64

    References
    ----------
    Goldstein et al. (2015).

    Taught in: 06_global_explanation §5
    """
    predict, X = _check_callable("predict", predict), _check_X("X", X)
    feature, grid = _check_feature(feature, X.shape[1]), _check_grid(grid)
    X_set = X.copy()
    ice = np.empty((len(X), len(grid)))                                           # (n, G)
    for k, value in enumerate(grid):
        X_set[:, feature] = value
        ice[:, k] = _predictions(predict, X_set, len(X))
    return ice


def accumulated_local_effects(predict: Callable, X: np.ndarray, feature: int, edges: Sequence[float]) -> np.ndarray:
    """Accumulated local effects (ALE) of ``feature`` at the bin ``edges``, centred.

    Row i falls in bin k when e_k < x_ij <= e_{k+1} (bin 0 also takes x_ij = e_0). Bin k's local effect
    is the mean over **its own rows** of f(x_i with x_ij = e_{k+1}) - f(x_i with x_ij = e_k) (0 for an
    empty bin); the uncentred ALE accumulates them, g_0 = 0, g_{k+1} = g_k + effect_k; the result is
    g minus its mean over the rows, each row valued at its bin's midpoint (g_k + g_{k+1}) / 2:

    .. math:: \\mathrm{ALE}_j(e_m) = \\sum_{k < m} \\frac{1}{n_k}\\sum_{i \\in B_k}
              \\big[f(x_{i,-j}, e_{k+1}) - f(x_{i,-j}, e_k)\\big] \\; - \\; c

    Unlike partial dependence, every prediction is made at a value next to the row's own (the bin's
    edges), so correlated features are not paired with values they never take.

    Parameters
    ----------
    predict : callable, (n, d) -> (n,)
    X : ndarray of shape (n, d)
    feature : int in [0, d)
    edges : strictly increasing 1-D sequence of K + 1 >= 2 values with every ``X[:, feature]`` in
        ``[edges[0], edges[-1]]`` (ValueError otherwise)

    Returns
    -------
    ndarray of shape (K + 1,), float64: the centred ALE at each edge.

    References
    ----------
    Apley, D. W. & Zhu, J. (2020). Visualizing the effects of predictor variables in black box supervised
    learning models. JRSS B 82(4).

    Taught in: 06_global_explanation §5
    """
    predict, X = _check_callable("predict", predict), _check_X("X", X)
    feature, edges = _check_feature(feature, X.shape[1]), np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be a strictly increasing 1-D sequence of >= 2 values, got {edges!r}")
    x, n, K = X[:, feature], len(X), len(edges) - 1
    if x.min() < edges[0] or x.max() > edges[-1]:
        raise ValueError(f"edges must cover X[:, {feature}] ({x.min()} to {x.max()}), got {edges[0]} to {edges[-1]}")
    k = np.clip(np.searchsorted(edges, x, side="left") - 1, 0, K - 1)           # (n,) bin of each row
    low, high = X.copy(), X.copy()
    low[:, feature], high[:, feature] = edges[k], edges[k + 1]
    diff = _predictions(predict, high, n) - _predictions(predict, low, n)
    counts = np.bincount(k, minlength=K)
    effect = np.bincount(k, weights=diff, minlength=K) / np.maximum(counts, 1)
    ale = np.concatenate([[0.0], np.cumsum(effect)])
    return ale - np.sum(counts * (ale[:-1] + ale[1:]) / 2) / n


def grouped_permutation_importance(predict: Callable, X: np.ndarray, y: np.ndarray, score: Callable,
                                   groups: dict[str, Sequence[int]], n_repeats: int = 5,
                                   seed: int = 0) -> dict[str, np.ndarray]:
    """Permutation importance of groups of columns, each group shuffled with **one** row permutation.

    .. math:: \\mathrm{PI}_G = s(y, f(X)) - s\\big(y, f(X^{(G, \\pi)})\\big), \\qquad
              X^{(G,\\pi)}_{i,j} = X_{\\pi(i), j} \\text{ for } j \\in G

    Moving the columns of a group together keeps their joint distribution (two copies stay equal), so
    a group of correlated columns is scored as one piece of information, where shuffling one copy alone
    leaves the other to carry it. A group of one column is ordinary permutation importance.
    ``np.random.default_rng(seed)``, groups in dict order, repeats in order. Returns group -> (n_repeats,)
    score drops.

    References: Au, Q. et al. (2022). Grouped feature importance and combined features effect plot. Data
    Mining and Knowledge Discovery 36.
    """
    predict, X = _check_callable("predict", predict), _check_X("X", X)
    n_repeats = check_int("n_repeats", n_repeats, 1)
    if len(y) != len(X):
        raise ValueError(f"y must have one value per row of X ({len(X)}), got {len(y)}")
    for name, cols in groups.items():
        if len(cols) == 0 or not all(0 <= int(c) < X.shape[1] for c in cols):
            raise ValueError(f"groups[{name!r}] must be non-empty column indices in [0, {X.shape[1]}), got {cols!r}")
    rng, base, out = np.random.default_rng(check_int("seed", seed, 0)), score(y, predict(X)), {}
    for name, cols in groups.items():
        cols, drops = [int(c) for c in cols], np.empty(n_repeats)
        for r in range(n_repeats):
            Xp = X.copy()
            Xp[:, cols] = X[rng.permutation(len(X))][:, cols]
            drops[r] = base - score(y, predict(Xp))
        out[name] = drops
    return out


def lasso_selection_bootstrap(X: np.ndarray, y: np.ndarray, alpha: float, pair: Sequence[int], n_boot: int = 50,
                              seed: int = 0) -> dict[str, int]:
    """How often a Lasso at ``alpha`` keeps each of two correlated columns, over bootstrap resamples.

    Each resample draws len(X) rows with replacement (``np.random.default_rng(seed)``), centres y and
    fits ``Lasso(alpha, fit_intercept=False)``; a column is kept when its coefficient is not 0. Returns
    counts of ``"first only"``, ``"second only"``, ``"both"``, ``"neither"`` (summing to ``n_boot``).
    """
    from sklearn.linear_model import Lasso

    X = _check_X("X", X)
    n_boot, rng = check_int("n_boot", n_boot, 1), np.random.default_rng(check_int("seed", seed, 0))
    if not alpha > 0 or len(pair) != 2:
        raise ValueError(f"alpha must be > 0 and pair two column indices, got {alpha!r}, {pair!r}")
    counts = {"first only": 0, "second only": 0, "both": 0, "neither": 0}
    for _ in range(n_boot):
        rows = rng.integers(0, len(X), len(X))
        yb = y[rows] - y[rows].mean()
        coef = Lasso(alpha=alpha, fit_intercept=False, max_iter=100_000).fit(X[rows], yb).coef_
        a, b = coef[pair[0]] != 0, coef[pair[1]] != 0
        counts["both" if a and b else "first only" if a else "second only" if b else "neither"] += 1
    return counts


def surrogate_fidelity(model_predict: Callable, surrogate_predict: Callable, X: np.ndarray, task: str) -> float:
    """How well a surrogate reproduces a model **on X** (not how well it predicts the truth).

    .. math:: \\text{classification: } \\frac1n\\sum_i [g(x_i) = f(x_i)], \\qquad
              \\text{regression: } R^2 = 1 - \\frac{\\sum_i (f(x_i) - g(x_i))^2}{\\sum_i (f(x_i) - \\bar f)^2}

    Parameters
    ----------
    model_predict, surrogate_predict : callables, (n, d) -> (n,)
        Labels for ``task="classification"``, real values for ``"regression"``.
    X : ndarray of shape (n, d)
    task : {"classification", "regression"}

    Returns
    -------
    float
        The fraction of equal labels, or the R^2 of the surrogate against the model's outputs.

    Raises
    ------
    ValueError
        For another ``task``, outputs not of shape (n,), or (regression) a constant model output.

    Taught in: 06_global_explanation §4
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    X = _check_X("X", X)
    f = _predictions(_check_callable("model_predict", model_predict), X, len(X), "model_predict")
    g = _predictions(_check_callable("surrogate_predict", surrogate_predict), X, len(X), "surrogate_predict")
    if task == "classification":
        return float(np.mean(f == g))
    f, g = f.astype(np.float64), g.astype(np.float64)
    total = np.sum((f - f.mean()) ** 2)
    if total == 0:
        raise ValueError("model_predict must not be constant on X for task='regression' (R^2 is undefined)")
    return float(1.0 - np.sum((f - g) ** 2) / total)


# --------------------------------------------------------------------------- scores and models
def neg_mse(y: np.ndarray, y_pred: np.ndarray) -> float:
    """Minus the mean squared error (higher is better), :math:`-\\frac1n\\sum_i (y_i - \\hat y_i)^2`."""
    return -float(np.mean((np.asarray(y, np.float64) - np.asarray(y_pred, np.float64)) ** 2))


def r2(y: np.ndarray, y_pred: np.ndarray) -> float:
    """The coefficient of determination, :math:`1 - \\sum_i (y_i - \\hat y_i)^2 / \\sum_i (y_i - \\bar y)^2`."""
    y, y_pred = np.asarray(y, np.float64), np.asarray(y_pred, np.float64)
    return float(1.0 - np.sum((y - y_pred) ** 2) / np.sum((y - y.mean()) ** 2))


def accuracy(y: np.ndarray, y_pred: np.ndarray) -> float:
    """The fraction of equal labels."""
    return float(np.mean(np.asarray(y) == np.asarray(y_pred)))


def noise_columns(n_rows: int, seed: int) -> np.ndarray:
    """Two pure-noise columns, ``(n_rows, 2)`` float64: N(0, 1) (all values distinct) and a fair coin (0/1)."""
    rng = np.random.default_rng(check_int("seed", seed, 0))
    n_rows = check_int("n_rows", n_rows, 1)
    return np.column_stack([rng.normal(size=n_rows), rng.integers(0, 2, size=n_rows).astype(np.float64)])


def forest_fit(task: str = "regression", n_estimators: int = 100, seed: int = 0, **params) -> Callable:
    """A ``fit(X, y) -> predict`` for a seeded scikit-learn random forest (refit from scratch at every call).

    The fitted forest of the latest call is kept as ``fit.last`` (for its ``feature_importances_``).
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = {"regression": RandomForestRegressor, "classification": RandomForestClassifier}[task]

    def fit(X, y):
        fit.last = cls(n_estimators=n_estimators, random_state=seed, n_jobs=1, **params).fit(X, y)
        return fit.last.predict

    return fit


_SEED_MEASURES = ("impurity", "permutation (train)", "permutation", "drop-column", "mean-imputed")


def importance_over_seeds(X_train: np.ndarray, y_train: np.ndarray, X_held: np.ndarray, y_held: np.ndarray,
                          seeds: Sequence[int], *, n_estimators: int = 60,
                          measures: Sequence[str] = ("permutation", "drop-column"), progress: bool = True) -> dict:
    r"""Feature importances of a random-forest regressor, measured once per forest seed.

    Seed ``s`` grows every forest of the run (the full one and the d refits without a column) with
    ``random_state=s``; the spread over seeds is the forests' own **refit noise**, which a single run's
    importance carries and does not show. The measures, all in R² units except impurity:

    - ``"impurity"``: the full forest's ``feature_importances_`` (mean decrease in impurity, training data);
    - ``"permutation (train)"`` and ``"permutation"``: :func:`permutation_importance` with ``n_repeats=5,
      seed=0`` on the training and on the held-out rows;
    - ``"drop-column"``: :func:`drop_column_importance` on the held-out rows (d refits per seed);
    - ``"mean-imputed"``: :math:`R^2(f(X)) - R^2(f(X^{(j \leftarrow \bar x_j)}))` on the held-out rows, column
      ``j`` set to its training mean **without** retraining.

    Parameters
    ----------
    X_train, y_train, X_held, y_held : arrays of shape (n, d) and (n,)
    seeds : sequence of int >= 0
    n_estimators : int >= 1, default=60
    measures : sequence of the names above, default=("permutation", "drop-column")
    progress : bool, default=True
        A tqdm bar over the seeds.

    Returns
    -------
    dict
        One array of shape ``(len(seeds), d)`` per requested measure, rows in the order of ``seeds``.

    Raises
    ------
    ValueError
        For an unknown or repeated measure, or no measure.
    """
    from tqdm.auto import tqdm

    measures = tuple(measures)
    if not measures or len(set(measures)) != len(measures) or not set(measures) <= set(_SEED_MEASURES):
        raise ValueError(f"measures must be distinct names from {list(_SEED_MEASURES)}, got {list(measures)!r}")
    X_train, X_held = _check_X("X_train", X_train), _check_X("X_held", X_held)
    n_estimators = check_int("n_estimators", n_estimators, 1)
    out: dict = {m: [] for m in measures}
    for seed in tqdm([check_int("seed", s, 0) for s in seeds], desc="forest seeds", disable=not progress, leave=False):
        fit = forest_fit("regression", n_estimators=n_estimators, seed=seed)
        predict = fit(X_train, y_train)
        if "impurity" in out:
            out["impurity"].append(fit.last.feature_importances_.copy())
        if "permutation (train)" in out:
            out["permutation (train)"].append(permutation_importance(predict, X_train, y_train, r2, n_repeats=5, seed=0)[0])
        if "permutation" in out:
            out["permutation"].append(permutation_importance(predict, X_held, y_held, r2, n_repeats=5, seed=0)[0])
        if "mean-imputed" in out:
            base, imputed = r2(y_held, predict(X_held)), np.empty(X_held.shape[1])
            for j in range(X_held.shape[1]):
                X_set = X_held.copy()
                X_set[:, j] = X_train[:, j].mean()
                imputed[j] = base - r2(y_held, predict(X_set))
            out["mean-imputed"].append(imputed)
        if "drop-column" in out:
            out["drop-column"].append(drop_column_importance(fit, X_train, y_train, X_held, y_held, r2))
    return {k: np.array(v) for k, v in out.items()}


def per_row_permutation_importance(predict: Callable, X: np.ndarray, y: np.ndarray, n_repeats: int = 5,
                                   seed: int = 0) -> np.ndarray:
    r"""Permutation importance in R² units, split into one contribution per row.

    With :math:`e_i = y_i - f(x_i)`, :math:`e^{(j,r)}_i` the same error with column :math:`j` shuffled by
    repeat :math:`r`, and :math:`s^2 = \frac1n\sum_i (y_i - \bar y)^2`,

    .. math:: c_{ij} = \frac{1}{R\,s^2}\sum_{r=1}^R \big(e^{(j,r)}_i\big)^2 - e_i^2,
              \qquad \frac1n \sum_i c_{ij} = \mathrm{PI}_j \text{ (score } R^2\text{)}

    so the column means equal :func:`permutation_importance` with ``score=r2`` and the same
    ``n_repeats``/``seed`` (the same permutations), and the rows can be resampled by a bootstrap.

    Returns
    -------
    ndarray of shape (n, d), float64
    """
    predict, X = _check_callable("predict", predict), _check_X("X", X)
    y = np.asarray(y, np.float64)
    if y.shape != (len(X),):
        raise ValueError(f"y must have shape ({len(X)},), got {y.shape}")
    n_repeats, seed = check_int("n_repeats", n_repeats, 1), check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    base = (y - _predictions(predict, X, len(X))) ** 2                              # (n,)
    out = np.zeros(X.shape)                                                         # (n, d)
    for j in range(X.shape[1]):
        X_perm = X.copy()
        for _ in range(n_repeats):
            X_perm[:, j] = X[rng.permutation(len(X)), j]
            out[:, j] += (y - _predictions(predict, X_perm, len(X))) ** 2 - base
    return out / (n_repeats * np.mean((y - y.mean()) ** 2))


def row_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n_rows: int, *, confidence: float = 0.95,
                  n_boot: int = 2000, seed: int = 0):
    """Percentile bootstrap over rows of any statistic of a data set (a PD's range, a rank correlation).

    ``statistic(index)`` gets an int array of shape ``(n_boot, n_rows)`` of resampled row numbers and
    returns ``(n_boot,)``; it is called once more on ``arange(n_rows)[None]`` for the estimate. This is
    :func:`course_lib.stats.bootstrap_interval` applied to the row numbers, so its resamples and quantiles
    are the same.

    Returns
    -------
    course_lib.stats.Interval
    """
    from . import stats

    statistic = _check_callable("statistic", statistic)
    n_rows = check_int("n_rows", n_rows, 2)
    return stats.bootstrap_interval(np.arange(n_rows), lambda s: statistic(s.astype(np.int64)),
                                    confidence=confidence, n_boot=n_boot, seed=seed)


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` (B, d) with the matching row of ``b`` (B, d)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))


def rank_agreement_interval(per_row_a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0):
    r"""Spearman correlation of two feature rankings, with a bootstrap interval over the rows.

    The first ranking is the column mean of ``per_row_a`` (n, d) (e.g. :math:`|\phi|` of SHAP, or
    :func:`per_row_permutation_importance`); the second is the column mean of ``b`` (n, d), resampled
    with the **same** rows, or a fixed vector ``b`` (d,) that does not depend on these rows (impurity
    importance, measured on the training data).

    Returns
    -------
    course_lib.stats.Interval
        Estimate :math:`\rho(\bar a, \bar b)` on all rows, percentile interval over ``n_boot`` resamples.
    """
    a, b = _check_X("per_row_a", per_row_a), np.asarray(b, np.float64)
    if b.shape not in (a.shape, (a.shape[1],)):
        raise ValueError(f"b must have shape {a.shape} or ({a.shape[1]},), got {b.shape}")

    def rho(index):                                                                 # (B, n) -> (B,)
        mean_b = b[index].mean(1) if b.ndim == 2 else np.broadcast_to(b, (len(index), a.shape[1]))
        return _spearman_rows(a[index].mean(1), mean_b)

    return row_bootstrap(rho, len(a), n_boot=n_boot, seed=seed)


def rank_stability(runs: np.ndarray) -> float:
    """Mean Spearman correlation over all pairs of runs (rows of ``runs``, shape (k, d), k >= 2).

    How well one run's ranking of the d features predicts another's: 1 if every run ranks them alike.
    """
    from itertools import combinations

    from scipy.stats import spearmanr

    runs = _check_X("runs", runs)
    if len(runs) < 2:
        raise ValueError(f"runs must have at least 2 rows, got {len(runs)}")
    return float(np.mean([spearmanr(runs[i], runs[k]).statistic for i, k in combinations(range(len(runs)), 2)]))


def surrogate_sweep(model_predict: Callable, X_fit: np.ndarray, X_eval: np.ndarray, depths: Sequence[int],
                    task: str = "classification", seed: int = 0) -> list[dict]:
    """Fit a depth-limited tree to the model's outputs on ``X_fit``; fidelity on ``X_fit`` and ``X_eval``.

    One row per depth: ``depth``, ``leaves``, ``fidelity (fit data)``, ``fidelity (held out)`` and the tree.
    """
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    cls = DecisionTreeClassifier if task == "classification" else DecisionTreeRegressor
    target = _predictions(model_predict, X_fit, len(X_fit), "model_predict")
    rows = []
    for depth in depths:
        tree = cls(max_depth=check_int("depth", depth, 1), random_state=seed).fit(X_fit, target)
        rows.append({"depth": depth, "leaves": int(tree.get_n_leaves()),
                     "fidelity (fit data)": surrogate_fidelity(model_predict, tree.predict, X_fit, task),
                     "fidelity (held out)": surrogate_fidelity(model_predict, tree.predict, X_eval, task),
                     "tree": tree})
    return rows


def queried_rows(X: np.ndarray, copies: int = 20, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    r"""TREPAN's queries in their simplest form: ``copies`` jittered copies of every row of ``X``.

    .. math::  \tilde x_{ik} = x_i + \sigma\,\varepsilon_{ik},\quad \varepsilon_{ik} \sim \mathcal N(0, I),
               \quad k = 1..\text{copies}

    (``np.repeat`` order: the copies of row 0 first), with ``np.random.default_rng(seed)``. On standardised
    columns ``noise`` is in standard deviations. The black box labels them; a surrogate fitted on them sees the
    model's decisions around the data, not only at its few training rows (Craven & Shavlik, 1996).
    """
    X = _check_X("X", X)
    copies = check_int("copies", copies, 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a float >= 0, got {noise!r}")
    rng = np.random.default_rng(check_int("seed", seed, 0))
    return np.repeat(X, copies, axis=0) + noise * rng.normal(size=(copies * len(X), X.shape[1]))


def surrogate_over_seeds(predicts: Sequence[Callable], X_fit: np.ndarray, X_eval: np.ndarray,
                         depths: Sequence[int], *, copies: int = 20, noise: float = 0.3,
                         progress: bool = True) -> dict:
    r"""Held-out fidelity of tree surrogates of several black boxes, fitted on training or on queried rows.

    For every black box ``predicts[s]`` (e.g. one MLP per training seed) and every depth, two classification
    trees are fitted to the box's labels: on the rows ``X_fit`` themselves, and on :func:`queried_rows`
    ``(X_fit, copies, noise, seed=s)`` (the same queries for every depth). Each is scored by
    :func:`surrogate_fidelity` on ``X_eval``. The boxes differ by their seed, so a difference between two
    surrogate recipes is paired by seed (``stats.paired_difference`` over the rows of the result): the spread
    over seeds is the black box's own refit noise, which one box hides.

    Parameters
    ----------
    predicts : sequence of callables, at least 2
        Each maps an ``(n, d)`` float64 array to n labels.
    X_fit, X_eval : float arrays (n, d)
    depths : sequence of int >= 1
    copies : int >= 1, default=20
    noise : float >= 0, default=0.3
    progress : bool, default=True
        A tqdm bar over the black boxes.

    Returns
    -------
    dict
        ``"depths"`` (list) and ``"training rows"``, ``"queried rows"``: arrays of shape
        ``(len(predicts), len(depths))`` of held-out fidelities.
    """
    from sklearn.tree import DecisionTreeClassifier
    from tqdm.auto import tqdm

    predicts = list(predicts)
    if len(predicts) < 2:
        raise ValueError(f"predicts must hold at least 2 black boxes, got {len(predicts)}")
    for i, p in enumerate(predicts):
        _check_callable(f"predicts[{i}]", p)
    X_fit, X_eval = _check_X("X_fit", X_fit), _check_X("X_eval", X_eval)
    depths = [check_int("depth", d, 1) for d in depths]
    if not depths:
        raise ValueError("depths must hold at least one depth")
    out = {"depths": depths, "training rows": [], "queried rows": []}
    for s, predict in enumerate(tqdm(predicts, desc="black boxes", disable=not progress, leave=False)):
        target = predict(X_eval)
        for kind, rows in (("training rows", X_fit), ("queried rows", queried_rows(X_fit, copies, noise, s))):
            labels = predict(rows)
            out[kind].append([float(np.mean(DecisionTreeClassifier(max_depth=d, random_state=0)
                                             .fit(rows, labels).predict(X_eval) == target)) for d in depths])
    return {k: (np.array(v) if k != "depths" else v) for k, v in out.items()}


def ranks(values: np.ndarray) -> np.ndarray:
    """Rank 1 = largest value (ties share the average rank)."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(values, np.float64))


def rank_agreement(columns: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Spearman rank correlation between every pair of importance vectors: ``{a: {b: rho}}``."""
    from scipy.stats import spearmanr

    return {a: {b: float(spearmanr(va, vb).statistic) for b, vb in columns.items()} for a, va in columns.items()}


def off_support_fraction(X: np.ndarray, feature: int, partner: int, grid: Sequence[float]) -> float:
    """Share of the points a PDP evaluates that lie off the data: ``|x_f - x_partner|`` beyond its observed max.

    Partial dependence sets column ``feature`` to every grid value in every row; when ``partner`` is
    strongly correlated with it, most of those synthetic rows pair values that never occur together.
    """
    X = _check_X("X", X)
    gap = np.abs(X[:, feature] - X[:, partner]).max()
    synthetic = np.abs(_check_grid(grid)[None, :] - X[:, [partner]])               # (n, G)
    return float(np.mean(synthetic > gap))


# --------------------------------------------------------------------------- plots
def plot_pdp_ice(grid: np.ndarray, ice: np.ndarray, feature_name: str, ax=None, max_curves: int = 60):
    """ICE curves (thin, grey) under their mean, the partial dependence (thick). Returns ``(fig, ax)``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3)) if ax is None else (ax.figure, ax)
    ax.plot(grid, ice[:max_curves].T, color="0.7", linewidth=0.6)
    ax.plot(grid, ice.mean(0), color="C3", linewidth=2.5, label="partial dependence (mean of ICE)")
    ax.set_xlabel(f"{feature_name} (standardised)")
    ax.set_ylabel("prediction")
    ax.legend(fontsize=7)
    return fig, ax


def plot_importances(table, ax=None):
    """Horizontal bars, one group per feature and one colour per method (columns scaled to max 1)."""
    import matplotlib.pyplot as plt

    scaled = table / table.abs().max()
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(table) + 1)) if ax is None else (ax.figure, ax)
    height = 0.8 / len(scaled.columns)
    for k, column in enumerate(scaled.columns):
        ax.barh(np.arange(len(scaled)) + k * height, scaled[column], height=height, color=f"C{k}", label=column)
    ax.set_yticks(np.arange(len(scaled)) + 0.4 - height / 2, scaled.index)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("importance / largest importance of the method")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, ax


def plot_network(model: nn.Module):
    """A network's structure: one box per layer (type and shape), then each Linear weight matrix as a heat map.

    Returns ``(fig, axes)``; weights use a diverging colour map centred on 0.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers = list(model.children()) if len(list(model.children())) else [model]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    fig, axes = plt.subplots(1, 1 + len(linears), figsize=(3 + 2.6 * len(linears), 3.2),
                             gridspec_kw={"width_ratios": [1.2] + [1] * len(linears)})
    diagram = axes[0]
    for k, layer in enumerate(layers):
        label = type(layer).__name__
        if isinstance(layer, nn.Linear):
            label += f"\n{layer.in_features} -> {layer.out_features}  ({layer.weight.numel() + layer.bias.numel()} params)"
        y = 1 - (k + 0.5) / len(layers)
        diagram.text(0.5, y, label, ha="center", va="center", fontsize=7,
                     bbox={"boxstyle": "round", "facecolor": "C0" if isinstance(layer, nn.Linear) else "0.9",
                           "alpha": 0.35})
        if k:
            diagram.annotate("", (0.5, y + 0.25 / len(layers)), (0.5, y + 0.75 / len(layers)),
                             arrowprops={"arrowstyle": "<-", "color": "0.4"})
    diagram.set_title("layers (input at the top)", fontsize=8)
    diagram.axis("off")
    for ax, layer in zip(axes[1:], linears):
        w = layer.weight.detach().cpu().numpy()                                   # (out, in)
        lim = float(np.abs(w).max()) or 1.0
        image = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_title(f"weight {w.shape[0]}x{w.shape[1]}", fontsize=8)
        ax.set_xlabel("input unit", fontsize=7)
        ax.set_ylabel("output unit", fontsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig, axes
