"""How chapter 06's exercises are graded; references live in course_lib.global_explanation.

Every model the learner's function receives is built in ``build(case)`` from seeds stored in the case:

- ``impurity_importance`` gets a scikit-learn decision tree fitted on seeded data (with or without sample
  weights), passed as an object that carries only the tree's arrays (``tree.tree_.children_left``,
  ``children_right``, ``feature``, ``threshold``, ``impurity``, ``n_node_samples``,
  ``weighted_n_node_samples``, ``n_features``, ``node_count``; ``tree.n_features_in_``), not
  ``feature_importances_``;
- ``predict`` / ``model_predict`` / ``surrogate_predict`` are small numpy functions (a tanh network, a
  linear classifier, a stump) whose weights are drawn from the case's seed;
- ``fit`` is a closed-form ridge regression (or a one-vs-rest ridge classifier), so two correct
  implementations that call it with the same arrays get the same numbers;
- ``score`` is minus the MSE, R^2 or accuracy (higher is better).

Nothing on these objects holds an expected result. Arrays are compared with ``rtol=1e-9`` and
``atol=1e-12 * max(1, max|expected|)``; fidelities as floats with the same tolerance.
The fixed cases separate the usual wrong answers: sample weights (``weighted_n_node_samples``), a tree
without a split (zeros, not nan), an unused last column, ``n_repeats >= 2`` and several features (loop
order, ddof), default ``n_repeats``/``seed``, a duplicated column (retraining vs. imputing), nonlinear
models with interactions (the mean of predictions vs. the prediction at the mean row), rows on interior ALE bin edges and
empty bins, a near-copy column (ALE's own rows vs. all rows as in PD) and surrogates ``0.5 f + 0.3`` (R^2 vs. squared correlation, swapped arguments).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ._compare import close_float, type_name

CHAPTER = "06_global_explanation"


# --------------------------------------------------------------------------- comparisons
def _array_reason(expected: np.ndarray, got, what: str = "value") -> str | None:
    if not isinstance(got, np.ndarray):
        return f"{what}: expected a numpy array, got a {type_name(got)}"
    if got.shape != expected.shape:
        return f"{what}: expected shape {expected.shape}, got {got.shape}"
    if not np.issubdtype(got.dtype, np.floating):
        return f"{what}: expected a float64 array, got dtype {got.dtype}"
    atol = 1e-12 * max(1.0, float(np.nan_to_num(np.abs(expected)).max(initial=0.0)))
    g = got.astype(np.float64)
    bad = ~(np.isclose(g, expected, rtol=1e-9, atol=atol) | (np.isnan(g) & np.isnan(expected)))
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        return (f"{what}[{', '.join(map(str, i))}]: expected {expected[i]!r}, got {g[i]!r} "
                f"({int(bad.sum())} of {bad.size} differ beyond rtol=1e-9)")
    return None


def _compare_array(expected, got):
    return _array_reason(expected, got)


def _compare_mean_std(expected: tuple, got) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (mean, std) of two arrays, got a {type_name(got)}"
    return _array_reason(expected[0], got[0], "mean") or _array_reason(expected[1], got[1], "std")


def _compare_fidelity(expected: float, got) -> str | None:
    return close_float(expected, got, rtol=1e-9, atol=1e-12, what="fidelity")


def _show(a: np.ndarray) -> str:
    a = np.asarray(a)
    if a.size > 8:
        return f"an array of shape {a.shape}, first values {np.round(a.ravel()[:5], 4).tolist()}"
    return f"np.array({np.round(a, 4).tolist()})"


# --------------------------------------------------------------------------- seeded callables
class _Net:
    """Regression: f(X) = tanh(X[:, used] @ W1) @ w2 + c * x_u0 * x_u1 (an interaction).
    Classification: argmax of X[:, used] @ W (+ b), labels 0..k-1 (int64)."""

    def __init__(self, spec: dict):
        rng = np.random.default_rng(spec["seed"])
        self.spec, self.used = spec, list(spec["used"])
        m = len(self.used)
        if spec["kind"] == "reg":
            self.W1, self.w2 = rng.normal(size=(m, 4)), rng.normal(size=4)
            self.c = float(rng.normal()) if m >= 2 else 0.0
        else:
            self.W, self.b = rng.normal(size=(m, spec.get("k", 3))), rng.normal(size=spec.get("k", 3)) * 0.3

    def __call__(self, X):
        Z = np.asarray(X, dtype=np.float64)[:, self.used]
        if self.spec["kind"] == "reg":
            out = np.tanh(Z @ self.W1) @ self.w2
            return out + self.c * Z[:, 0] * Z[:, 1] if len(self.used) >= 2 else out
        return np.argmax(Z @ self.W + self.b, axis=1).astype(np.int64)

    def __repr__(self) -> str:
        s = self.spec
        if s["kind"] == "reg":
            return f"predict(X) = tanh(X[:, {self.used}] @ W1) @ w2 + c * x_{self.used[0]} * x_{self.used[-1]} (seed {s['seed']})"
        return f"predict(X) = argmax(X[:, {self.used}] @ W + b) (labels 0..{s.get('k', 3) - 1}, seed {s['seed']})"


class _Score:
    def __init__(self, name: str):
        self.name = name

    def __call__(self, y, y_pred):
        y, y_pred = np.asarray(y), np.asarray(y_pred)
        if self.name == "accuracy":
            return float(np.mean(y == y_pred))
        y, y_pred = y.astype(np.float64), y_pred.astype(np.float64)
        sse = float(np.sum((y - y_pred) ** 2))
        if self.name == "neg_mse":
            return -sse / len(y)
        return 1.0 - sse / float(np.sum((y - y.mean()) ** 2))

    def __repr__(self) -> str:
        return {"accuracy": "accuracy(y, y_pred)", "neg_mse": "-MSE(y, y_pred)", "r2": "R^2(y, y_pred)"}[self.name]


class _Ridge:
    """fit(X, y) -> predict: closed-form ridge with an unpenalised intercept; one-vs-rest argmax for labels."""

    def __init__(self, alpha: float, classify: bool):
        self.alpha, self.classify = alpha, classify

    def __call__(self, X, y):
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        classes = np.unique(y) if self.classify else None
        T = (y[:, None] == classes[None, :]).astype(np.float64) if self.classify else y.astype(np.float64)[:, None]
        A = np.hstack([np.ones((len(X), 1)), X])
        penalty = self.alpha * np.eye(A.shape[1])
        penalty[0, 0] = 0.0
        W = np.linalg.solve(A.T @ A + penalty, A.T @ T)                          # (1 + d, outputs)

        def predict(Z):
            out = np.hstack([np.ones((len(Z), 1)), np.asarray(Z, dtype=np.float64)]) @ W
            return classes[np.argmax(out, axis=1)] if self.classify else out[:, 0]

        return predict

    def __repr__(self) -> str:
        kind = "one-vs-rest ridge classifier" if self.classify else "ridge regression"
        return f"fit(X, y) -> predict of a {kind} (alpha={self.alpha}, closed form)"


def _data(spec: dict) -> np.ndarray:
    """X of shape (n, d), N(0, 1); ``dup`` copies column a into b (plus tiny noise), ``const`` makes the last column 0."""
    rng = np.random.default_rng(spec["seed"])
    X = rng.normal(size=(spec["n"], spec["d"]))
    if "dup" in spec:
        a, b = spec["dup"]
        X[:, b] = X[:, a] + 0.05 * rng.normal(size=spec["n"])
    if spec.get("const"):
        X[:, -1] = 0.0
    return X


def _labels(net: _Net, X: np.ndarray, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed + 7)
    if net.spec["kind"] == "reg":
        return net(X) + noise * rng.normal(size=len(X))
    y = net(X)
    flip = rng.random(len(X)) < noise
    y[flip] = rng.integers(0, net.spec.get("k", 3), size=int(flip.sum()))
    return y


# --------------------------------------------------------------------------- impurity_importance
class _FittedTree:
    """A fitted tree's arrays and nothing else (no feature_importances_)."""

    def __init__(self, estimator, description: str):
        t = estimator.tree_
        self.tree_ = SimpleNamespace(
            **{name: np.array(getattr(t, name)) for name in
               ("children_left", "children_right", "feature", "threshold", "impurity", "n_node_samples",
                "weighted_n_node_samples")},
            n_features=int(t.n_features), node_count=int(t.node_count))
        self.n_features_in_ = int(estimator.n_features_in_)
        self._description = description

    def __repr__(self) -> str:
        return self._description


def _tree_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"kind": "reg", "seed": 1, "n": 12, "d": 3, "depth": 2, "weights": None, "const": True},
        {"kind": "clf", "seed": 2, "n": 30, "d": 4, "depth": 3, "weights": "int"},
        {"kind": "reg", "seed": 3, "n": 40, "d": 5, "depth": None, "weights": "float"},
        {"kind": "clf", "seed": 4, "n": 50, "d": 4, "depth": 4, "weights": "float", "criterion": "entropy",
         "const": True},
        {"kind": "reg", "seed": 5, "n": 10, "d": 3, "depth": 3, "weights": None, "flat": True},   # no split: zeros
        {"kind": "none", "seed": 6},                                                              # not a tree: TypeError
    ]
    cases = list(fixed)
    for _ in range(3):
        cases.append({"kind": str(rng.choice(["reg", "clf"])), "seed": int(rng.integers(0, 2**31)),
                      "n": int(rng.integers(15, 60)), "d": int(rng.integers(2, 7)),
                      "depth": int(rng.integers(1, 6)), "weights": str(rng.choice(["int", "float"])),
                      "const": bool(rng.random() < 0.5)})
    return cases


def _tree_text(case: dict) -> str:
    if case["kind"] == "none":
        return "a LinearRegression (not a tree)"
    est = "DecisionTreeRegressor" if case["kind"] == "reg" else "DecisionTreeClassifier"
    crit = f"criterion={case['criterion']!r}, " if "criterion" in case else ""
    weights = {None: "no sample weights", "int": "integer sample weights 1..4",
               "float": "sample weights in [0.2, 3]"}[case["weights"]]
    extra = (", last column all 0" if case.get("const") else "") + (", y constant" if case.get("flat") else "")
    return (f"{est}({crit}max_depth={case['depth']}, random_state=0) fitted on X of shape ({case['n']}, {case['d']}) "
            f"drawn with seed {case['seed']}{extra}, {weights}; passed with only its tree_ arrays and n_features_in_")


def _tree_build(case: dict):
    from sklearn.linear_model import LinearRegression
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    rng = np.random.default_rng(case["seed"])
    if case["kind"] == "none":
        return (LinearRegression().fit(rng.normal(size=(5, 2)), rng.normal(size=5)),), {}
    X = _data({"seed": case["seed"], "n": case["n"], "d": case["d"], "const": case.get("const", False)})
    if case["kind"] == "reg":
        y = X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=len(X))
        y = np.full(len(X), 1.5) if case.get("flat") else y
        est = DecisionTreeRegressor(max_depth=case["depth"], random_state=0)
    else:
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] + 0.5 * rng.normal(size=len(X)) > 0.5).astype(int)
        est = DecisionTreeClassifier(max_depth=case["depth"], criterion=case.get("criterion", "gini"), random_state=0)
    w = {None: None, "int": rng.integers(1, 5, size=len(X)).astype(np.float64),
         "float": rng.uniform(0.2, 3.0, size=len(X))}[case["weights"]]
    est.fit(X, y, sample_weight=w)
    return (_FittedTree(est, _tree_text(case)),), {}


# --------------------------------------------------------------------------- permutation_importance
def _net(seed, d, used, kind="reg", k=3):
    return {"kind": kind, "seed": seed, "d": d, "used": list(used), "k": k}


def _perm_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"net": _net(11, 3, [0, 2]), "n": 8, "score": "neg_mse", "n_repeats": 3, "seed": 1},   # column 1 ignored
        {"net": _net(12, 4, [0, 1, 3], "clf"), "n": 30, "score": "accuracy"},                   # defaults 5 and 0
        {"net": _net(13, 3, [0, 1, 2]), "n": 12, "score": "r2", "n_repeats": 1, "seed": 5},     # std 0
        {"net": _net(14, 5, [1, 2, 4]), "n": 20, "score": "neg_mse", "n_repeats": 4, "seed": 0},
        {"net": _net(15, 3, [0, 1]), "n": 8, "score": "r2", "n_repeats": 0, "seed": 0},         # ValueError
        {"net": _net(15, 3, [0, 1]), "n": 8, "score": "r2", "n_repeats": 2, "seed": 0, "y_short": True},  # ValueError
    ]
    cases = list(fixed)
    for _ in range(3):
        d = int(rng.integers(2, 6))
        used = sorted(rng.choice(d, size=int(rng.integers(1, d + 1)), replace=False).tolist())
        kind = str(rng.choice(["reg", "clf"]))
        cases.append({"net": _net(int(rng.integers(0, 2**31)), d, used, kind), "n": int(rng.integers(6, 40)),
                      "score": "accuracy" if kind == "clf" else str(rng.choice(["neg_mse", "r2"])),
                      "n_repeats": int(rng.integers(2, 6)), "seed": int(rng.integers(0, 1000))})
    return cases


def _perm_build(case: dict):
    net = _Net(case["net"])
    X = _data({"seed": case["net"]["seed"] + 1, "n": case["n"], "d": case["net"]["d"]})
    y = _labels(net, X, case["net"]["seed"], 0.3)
    if case.get("y_short"):
        y = y[:-1]
    kwargs = {k: case[k] for k in ("n_repeats", "seed") if k in case}
    return (net, X, y, _Score(case["score"])), kwargs


def _perm_describe(case: dict) -> str:
    (net, X, y, score), kwargs = _perm_build(case)
    return (f"{net!r}, X = {_show(X)}, y = {_show(y)} (shape {y.shape}), score = {score!r}, "
            + (", ".join(f"{k}={v}" for k, v in kwargs.items()) or "n_repeats and seed left at their defaults"))


# --------------------------------------------------------------------------- drop_column_importance
def _drop_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"net": _net(21, 3, [0, 1]), "data": {"n": 20, "d": 3}, "alpha": 0.1, "score": "neg_mse"},
        {"net": _net(22, 4, [0, 2]), "data": {"n": 30, "d": 4, "dup": [0, 1]}, "alpha": 0.5, "score": "r2"},  # duplicate
        {"net": _net(23, 3, [0, 1, 2], "clf"), "data": {"n": 40, "d": 3}, "alpha": 1.0, "score": "accuracy"},
        {"net": _net(24, 3, [0]), "data": {"n": 20, "d": 3}, "alpha": 0.1, "score": "neg_mse", "val_cols": 2},  # ValueError
    ]
    cases = list(fixed)
    for _ in range(3):
        d = int(rng.integers(2, 6))
        used = sorted(rng.choice(d, size=int(rng.integers(1, d + 1)), replace=False).tolist())
        kind = str(rng.choice(["reg", "clf"]))
        cases.append({"net": _net(int(rng.integers(0, 2**31)), d, used, kind),
                      "data": {"n": int(rng.integers(15, 50)), "d": d}, "alpha": float(rng.choice([0.1, 1.0])),
                      "score": "accuracy" if kind == "clf" else str(rng.choice(["neg_mse", "r2"]))})
    return cases


def _drop_build(case: dict):
    net, seed = _Net(case["net"]), case["net"]["seed"]
    X_train = _data({"seed": seed + 1, **case["data"]})
    X_val = _data({"seed": seed + 2, **case["data"]})
    y_train, y_val = _labels(net, X_train, seed, 0.2), _labels(net, X_val, seed + 1, 0.2)
    if "val_cols" in case:
        X_val = X_val[:, :case["val_cols"]]
    return (_Ridge(case["alpha"], net.spec["kind"] == "clf"), X_train, y_train, X_val, y_val,
            _Score(case["score"])), {}


def _drop_describe(case: dict) -> str:
    (fit, X_train, y_train, X_val, y_val, score), _ = _drop_build(case)
    dup = f" (column {case['data']['dup'][1]} is a near copy of column {case['data']['dup'][0]})" \
        if "dup" in case["data"] else ""
    return (f"fit = {fit!r}, X_train = {_show(X_train)}{dup}, y_train = {_show(y_train)}, X_val = {_show(X_val)}, "
            f"y_val = {_show(y_val)} (targets from {_Net(case['net'])!r} plus noise), score = {score!r}")


# --------------------------------------------------------------------------- partial_dependence / ice_curves
def _pd_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"net": _net(31, 3, [0, 1]), "data": {"n": 5, "d": 3}, "feature": 0, "grid": [-1.0, 0.0, 1.5]},
        {"net": _net(32, 3, [0, 2]), "data": {"n": 6, "d": 3}, "feature": 2, "grid": [0.7]},
        {"net": _net(33, 4, [0, 1, 3]), "data": {"n": 9, "d": 4, "dup": [0, 1]}, "feature": 1,
         "grid": [-2.0, -0.5, 0.0, 0.5, 2.0], "as_array": True},                     # correlated columns
        {"net": _net(34, 2, [0, 1]), "data": {"n": 4, "d": 2}, "feature": 1, "grid": [-1.0, 1.0, 3.0, 0.2]},  # n == G
        {"net": _net(35, 3, [0, 1]), "data": {"n": 5, "d": 3}, "feature": 3, "grid": [0.0, 1.0]},   # ValueError
    ]
    cases = list(fixed)
    for _ in range(3):
        d = int(rng.integers(2, 6))
        used = sorted(rng.choice(d, size=int(rng.integers(2, d + 1)), replace=False).tolist())
        cases.append({"net": _net(int(rng.integers(0, 2**31)), d, used), "data": {"n": int(rng.integers(3, 30)), "d": d},
                      "feature": int(rng.choice(used)),
                      "grid": np.round(np.sort(rng.normal(size=int(rng.integers(1, 8)))), 3).tolist(),
                      "as_array": bool(rng.random() < 0.5)})
    return cases


def _pd_build(case: dict):
    X = _data({"seed": case["net"]["seed"] + 1, **case["data"]})
    grid = np.array(case["grid"]) if case.get("as_array") else list(case["grid"])
    return (_Net(case["net"]), X, case["feature"], grid), {}


def _pd_describe(case: dict) -> str:
    (net, X, feature, grid), _ = _pd_build(case)
    dup = f" (column {case['data']['dup'][1]} is a near copy of column {case['data']['dup'][0]})" \
        if "dup" in case["data"] else ""
    return f"{net!r}, X = {_show(X)}{dup}, feature = {feature}, grid = {grid!r}"


# --------------------------------------------------------------------------- accumulated_local_effects
def _ale_cases(rng: np.random.Generator) -> list[dict]:
    fixed = [
        {"net": _net(51, 2, [0, 1]), "data": {"n": 7, "d": 2}, "feature": 0, "edges": {"kind": "data", "K": 3}},
        {"net": _net(52, 3, [0, 1, 2]), "data": {"n": 12, "d": 3, "dup": [0, 1]}, "feature": 1,
         "edges": {"kind": "uniform", "K": 4}, "as_array": True},                    # correlated columns
        {"net": _net(53, 3, [0, 2]), "data": {"n": 10, "d": 3}, "feature": 2, "edges": {"kind": "uniform", "K": 9}},
        {"net": _net(54, 2, [0, 1]), "data": {"n": 5, "d": 2}, "feature": 1, "edges": {"kind": "uniform", "K": 1}},
        {"net": _net(55, 4, [0, 1, 3]), "data": {"n": 20, "d": 4, "dup": [3, 0]}, "feature": 3,
         "edges": {"kind": "data", "K": 5}},
        {"net": _net(56, 3, [0, 1]), "data": {"n": 8, "d": 3}, "feature": 0, "edges": {"kind": "inside", "K": 3}},
        {"net": _net(57, 3, [0, 1]), "data": {"n": 8, "d": 3}, "feature": 0, "edges": {"kind": "unsorted", "K": 3}},
    ]
    cases = list(fixed)
    for _ in range(3):
        d = int(rng.integers(2, 6))
        used = sorted(rng.choice(d, size=int(rng.integers(2, d + 1)), replace=False).tolist())
        data = {"n": int(rng.integers(6, 40)), "d": d}
        if rng.random() < 0.5:
            data["dup"] = [int(v) for v in rng.choice(d, size=2, replace=False)]
        cases.append({"net": _net(int(rng.integers(0, 2**31)), d, used), "data": data, "feature": int(rng.choice(used)),
                      "edges": {"kind": str(rng.choice(["data", "uniform"])), "K": int(rng.integers(1, 8))},
                      "as_array": bool(rng.random() < 0.5)})
    return cases


def _ale_edges(x: np.ndarray, spec: dict) -> np.ndarray:
    """Bin edges over one column: ``data`` picks K + 1 of its sorted values (first and last included, so
    rows lie on interior edges), ``uniform`` spaces them from just below the minimum to just above the
    maximum; ``inside`` leaves the extreme rows out and ``unsorted`` reverses them (both raise)."""
    K, v = spec["K"], np.sort(x)
    if spec["kind"] in ("data", "unsorted"):
        e = np.unique(v[np.round(np.linspace(0, len(v) - 1, K + 1)).astype(int)])
        return e[::-1].copy() if spec["kind"] == "unsorted" else e
    if spec["kind"] == "inside":
        return np.linspace(v[1], v[-2], K + 1)
    return np.round(np.linspace(v[0] - 0.05, v[-1] + 0.05, K + 1), 6)


def _ale_build(case: dict):
    X = _data({"seed": case["net"]["seed"] + 1, **case["data"]})
    edges = _ale_edges(X[:, case["feature"]], case["edges"])
    return (_Net(case["net"]), X, case["feature"], edges if case.get("as_array") else edges.tolist()), {}


def _ale_describe(case: dict) -> str:
    (net, X, feature, edges), _ = _ale_build(case)
    dup = f" (column {case['data']['dup'][1]} is a near copy of column {case['data']['dup'][0]})" \
        if "dup" in case["data"] else ""
    return (f"{net!r}, X = {_show(X)}{dup}, column {feature} = {np.round(X[:, feature], 4).tolist()}, "
            f"feature = {feature}, edges = {np.round(np.asarray(edges), 4).tolist()}")


# --------------------------------------------------------------------------- surrogate_fidelity
class _Surrogate:
    """A stand-in g for the model f: a stump on one feature (labels), a * f + b, or f rounded to a step."""

    def __init__(self, spec: dict, model: _Net):
        self.spec, self.model = spec, model

    def __call__(self, X):
        s = self.spec
        if s["kind"] == "stump":
            X = np.asarray(X, dtype=np.float64)
            return np.where(X[:, s["feature"]] > s["cut"], s["labels"][1], s["labels"][0]).astype(np.int64)
        f = self.model(X)
        return s["a"] * f + s["b"] if s["kind"] == "affine" else np.round(f / s["step"]) * s["step"]

    def __repr__(self) -> str:
        s = self.spec
        if s["kind"] == "stump":
            return f"surrogate(X) = {s['labels'][1]} if X[:, {s['feature']}] > {s['cut']} else {s['labels'][0]}"
        if s["kind"] == "affine":
            return f"surrogate(X) = {s['a']} * model(X) + {s['b']}"
        return f"surrogate(X) = model(X) rounded to a multiple of {s['step']}"


def _fid_cases(rng: np.random.Generator) -> list[dict]:
    stump = {"kind": "stump", "feature": 1, "cut": 0.2, "labels": [1, 0]}
    fixed = [
        {"net": _net(41, 3, [0, 1]), "n": 10, "task": "regression", "sur": {"kind": "affine", "a": 0.5, "b": 0.3}},
        {"net": _net(42, 3, [0, 1, 2], "clf"), "n": 10, "task": "classification", "sur": stump},
        {"net": _net(43, 4, [1, 3]), "n": 25, "task": "regression", "sur": {"kind": "round", "step": 0.5}},
        {"net": _net(44, 2, [0, 1]), "n": 7, "task": "regression", "sur": {"kind": "affine", "a": 1.0, "b": 0.0}},
        {"net": _net(45, 3, [0, 2], "clf", k=2), "n": 30, "task": "classification",
         "sur": {"kind": "stump", "feature": 2, "cut": -0.1, "labels": [1, 0]}},
        {"net": _net(46, 3, [0, 1]), "n": 10, "task": "clf", "sur": stump},                     # ValueError
        {"net": _net(47, 3, [0]), "n": 10, "task": "regression", "sur": {"kind": "affine", "a": 1.0, "b": 0.0},
         "constant": True},                                                                      # ValueError
    ]
    cases = list(fixed)
    for _ in range(3):
        d = int(rng.integers(2, 6))
        used = sorted(rng.choice(d, size=int(rng.integers(1, d + 1)), replace=False).tolist())
        if rng.random() < 0.5:
            sur = {"kind": "stump", "feature": int(rng.integers(0, d)), "cut": float(np.round(rng.normal() * 0.5, 2)),
                   "labels": [int(v) for v in rng.choice(3, size=2, replace=False)]}
            cases.append({"net": _net(int(rng.integers(0, 2**31)), d, used, "clf"), "n": int(rng.integers(5, 40)),
                          "task": "classification", "sur": sur})
        else:
            sur = {"kind": "affine", "a": float(np.round(rng.uniform(0.3, 1.7), 2)),
                   "b": float(np.round(rng.normal() * 0.3, 2))} if rng.random() < 0.5 else \
                {"kind": "round", "step": float(rng.choice([0.25, 0.5, 1.0]))}
            cases.append({"net": _net(int(rng.integers(0, 2**31)), d, used), "n": int(rng.integers(5, 40)),
                          "task": "regression", "sur": sur})
    return cases


def _fid_build(case: dict):
    net = _Net(case["net"])
    X = _data({"seed": case["net"]["seed"] + 1, "n": case["n"], "d": case["net"]["d"]})
    if case.get("constant"):
        X[:, 0] = 1.0
    return (net, _Surrogate(case["sur"], net), X, case["task"]), {}


def _fid_describe(case: dict) -> str:
    (net, sur, X, task), _ = _fid_build(case)
    const = " (column 0 set to 1: the model's output is constant)" if case.get("constant") else ""
    return f"model_predict: {net!r}, {sur!r}, X = {_show(X)}{const}, task = {task!r}"


# --------------------------------------------------------------------------- the exercises
def _exercise(name, make_cases, build, describe, compare, forbidden=()):
    from . import Exercise
    return Exercise(name=name, chapter=CHAPTER, topic="global_explanation", make_cases=make_cases, build=build,
                    describe=describe, compare=compare, forbidden=tuple(forbidden))


_INSPECTION = ("sklearn.inspection",)     # the whole module, private helpers included
# scikit-learn's own computation of MDI, reachable by rebuilding a Tree from the given arrays (compiled: blocked
# on the class) and through an estimator's property.
_TREE_IMPORTANCE = ("sklearn.tree._tree.Tree.compute_feature_importances",
                    "sklearn.tree._classes.BaseDecisionTree.feature_importances_")
EXERCISES = [
    _exercise("impurity_importance", _tree_cases, _tree_build, lambda case: _tree_text(case), _compare_array,
              _TREE_IMPORTANCE),
    _exercise("permutation_importance", _perm_cases, _perm_build, _perm_describe, _compare_mean_std,
              _INSPECTION),
    _exercise("drop_column_importance", _drop_cases, _drop_build, _drop_describe, _compare_array, _INSPECTION),
    _exercise("partial_dependence", _pd_cases, _pd_build, _pd_describe, _compare_array, _INSPECTION),
    _exercise("accumulated_local_effects", _ale_cases, _ale_build, _ale_describe, _compare_array, _INSPECTION),
    _exercise("surrogate_fidelity", _fid_cases, _fid_build, _fid_describe, _compare_fidelity,
              ["sklearn.metrics"]),      # the whole module: d2_tweedie_score(power=0) is R2, 1 - hamming_loss accuracy
]
