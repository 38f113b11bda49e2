"""Datasets for the course: bundled scikit-learn data and generated images.

Every loader returns a :class:`Split` of torch tensors, split 60/20/20 into
train/validation/test. Nothing is downloaded: ``digits`` and ``tabular`` use
scikit-learn's bundled files, ``shapes`` and ``shapes_watermark`` are
generated from a seed. The same seed always gives identical tensors.

Taught in: 00_setup §2
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from sklearn import datasets as _skd
from sklearn.model_selection import train_test_split
from torch import Tensor
from .validation import check_bool, check_float, check_int

__all__ = [
    "Split",
    "SHAPE_CLASSES",
    "TABULAR_NAMES",
    "digits",
    "shapes",
    "shapes_watermark",
    "tabular",
]

SHAPE_CLASSES = ["circle", "square", "triangle"]
TABULAR_NAMES = ("breast_cancer", "wine", "diabetes")

# Fractions of the whole data set (train is the rest: 0.6).
_TEST_FRACTION = 0.2
_VAL_FRACTION = 0.2
# Objects stay this many pixels away from the border, so a 2x2 corner
# watermark never touches them.
_MARGIN = 2
_WATERMARK = 2  # side of the square watermark, in pixels


@dataclass
class Split:
    """A data set split into train, validation and test tensors.

    Parameters
    ----------
    X_train, X_val, X_test : Tensor, float32
        Inputs, shape ``(N, C, H, W)`` for images or ``(N, D)`` otherwise.
    y_train, y_val, y_test : Tensor
        Targets of shape ``(N,)``: int64 class indices, or float32 values for
        regression.
    classes : list of str
        Class names, ``classes[k]`` is label ``k``; ``[]`` for regression.
    feature_names : list of str or None, default=None
        One name per input column (tabular data only).
    masks_train, masks_val, masks_test : Tensor or None, default=None
        Ground-truth object masks, bool of shape ``(N, 1, H, W)`` (generated
        images only); used to score explanations.
    description : str, default=""
        Provenance in one or two sentences.
    """

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    classes: list[str]
    feature_names: list[str] | None = None
    masks_train: Tensor | None = None
    masks_val: Tensor | None = None
    masks_test: Tensor | None = None
    description: str = ""

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                dtype = str(value.dtype).removeprefix("torch.")
                value = f"<{dtype} {tuple(value.shape)}>"
            elif f.name == "feature_names" and value is not None:
                value = f"<{len(value)} names>"
            else:
                value = repr(value)
            parts.append(f"{f.name}={value}")
        return "Split(" + ", ".join(parts) + ")"


# ---------------------------------------------------------------- validation

def _check_seed(seed: object) -> int:
    return check_int("seed", seed, 0)




# ------------------------------------------------------------------- helpers

def _split_indices(
    y: np.ndarray, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a 60/20/20 split, stratified on ``y`` when asked."""
    idx = np.arange(len(y))
    rest, test = train_test_split(
        idx, test_size=_TEST_FRACTION, random_state=seed,
        stratify=y if stratify else None,
    )
    val_of_rest = _VAL_FRACTION / (1.0 - _TEST_FRACTION)  # 0.25
    train, val = train_test_split(
        rest, test_size=val_of_rest, random_state=seed,
        stratify=y[rest] if stratify else None,
    )
    return np.sort(train), np.sort(val), np.sort(test)


def _to_split(
    X: np.ndarray,
    y: np.ndarray,
    parts: tuple[np.ndarray, np.ndarray, np.ndarray],
    masks: np.ndarray | None = None,
    **extra,
) -> Split:
    """Cut numpy arrays into a :class:`Split` of torch tensors."""
    y_dtype = torch.int64 if np.issubdtype(y.dtype, np.integer) else torch.float32
    kwargs = {}
    for name, idx in zip(("train", "val", "test"), parts):
        kwargs[f"X_{name}"] = torch.as_tensor(X[idx], dtype=torch.float32)
        kwargs[f"y_{name}"] = torch.as_tensor(y[idx], dtype=y_dtype)
        if masks is not None:
            kwargs[f"masks_{name}"] = torch.as_tensor(masks[idx], dtype=torch.bool)
    return Split(**kwargs, **extra)


# -------------------------------------------------------------------- digits

def digits(seed: int = 0, as_images: bool = True) -> Split:
    """Handwritten digits 0-9 (scikit-learn's bundled copy of UCI digits).

    1797 grey images of 8x8 pixels with integer values 0..16, scaled to
    :math:`x / 16 \\in [0, 1]`, split 60/20/20 (1077/360/360), stratified by
    class.

    Parameters
    ----------
    seed : int, default=0
        Seed of the split; 0 is the course's fixed split.
    as_images : bool, default=True
        Shape ``(N, 1, 8, 8)`` when True, ``(N, 64)`` when False.

    Returns
    -------
    Split
        Classes ``["0", ..., "9"]``.

    References
    ----------
    Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten
    Digits. UCI Machine Learning Repository.

    Examples
    --------
    >>> s = digits()
    >>> tuple(s.X_train.shape), s.X_train.dtype
    ((1077, 1, 8, 8), torch.float32)
    """
    seed = _check_seed(seed)
    as_images = check_bool("as_images", as_images)
    bunch = _skd.load_digits()
    X = bunch.data.astype(np.float32) / 16.0  # (N, 64)
    if as_images:
        X = X.reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return _to_split(
        X, y, _split_indices(y, seed, stratify=True),
        classes=[str(k) for k in range(10)],
        description=(
            "scikit-learn load_digits (UCI optical digits, 8x8, 1797 images), "
            f"pixels / 16, stratified 60/20/20 split with seed={seed}."
        ),
    )


# -------------------------------------------------------------------- shapes

def _shape_masks(
    labels: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Boolean object masks (N, size, size) of circles, squares, triangles.

    All three shapes get the area of a disc of radius r, so size is no cue:
    a square of half-side r*sqrt(pi)/2, an upright triangle of height 2a
    and base 2a with a = r*sqrt(pi/2).
    """
    n = len(labels)
    half_room = (size - 2 * _MARGIN) / 2.0
    extent_per_r = np.array([1.0, np.sqrt(np.pi) / 2, np.sqrt(np.pi / 2)])
    r_max = min(0.28 * size, half_room / extent_per_r.max())
    r = rng.uniform(0.6 * r_max, r_max, n)  # (N,)
    e = r * extent_per_r[labels]  # (N,) half extent of the bounding box
    low, high = _MARGIN + e, size - _MARGIN - e
    cx = low + (high - low) * rng.random(n)  # (N,)
    cy = low + (high - low) * rng.random(n)
    grid = np.arange(size) + 0.5  # pixel centres
    xx = grid[None, None, :] - cx[:, None, None]  # (N, 1, S)
    yy = grid[None, :, None] - cy[:, None, None]  # (N, S, 1)
    e3 = e[:, None, None]
    circle = xx**2 + yy**2 <= e3**2
    square = (np.abs(xx) <= e3) & (np.abs(yy) <= e3)
    t = (yy + e3) / (2 * e3)  # 0 at the apex, 1 at the base
    triangle = (t >= 0) & (t <= 1) & (np.abs(xx) <= e3 * t)
    masks = np.select(
        [labels[:, None, None] == k for k in range(3)],
        [circle, square, triangle],
    )  # (N, S, S)
    # A shape can miss every pixel centre only when tiny (size 8); light
    # the pixel under its centre so that no mask is empty.
    empty = ~masks.any(axis=(1, 2))
    rows = np.clip(cy[empty].astype(int), 0, size - 1)
    cols = np.clip(cx[empty].astype(int), 0, size - 1)
    masks[np.flatnonzero(empty), rows, cols] = True
    return masks


def _render(
    masks: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Grey images (N, 1, S, S) in [0, 1]: bright object, dark background."""
    n = len(masks)
    background = rng.uniform(0.0, 0.15, (n, 1, 1))
    foreground = rng.uniform(0.6, 1.0, (n, 1, 1))
    X = np.where(masks, foreground, background)  # (N, S, S)
    X = X + noise * rng.standard_normal(X.shape)
    return np.clip(X, 0.0, 1.0)[:, None].astype(np.float32)  # (N, 1, S, S)


def _check_shapes_args(n: object, size: object, seed: object, noise: object):
    return (
        check_int("n", n, 15),
        check_int("size", size, 8),
        _check_seed(seed),
        check_float("noise", noise, 0.0, 1.0),
    )


def _generate_shapes(n: int, size: int, seed: int, noise: float):
    """Images, masks, labels and split indices shared by the shapes loaders."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3).astype(np.int64)  # balanced
    masks = _shape_masks(labels, size, rng)  # (N, S, S)
    X = _render(masks, noise, rng)  # (N, 1, S, S)
    parts = _split_indices(labels, seed, stratify=True)
    return X, masks[:, None], labels, parts


def shapes(
    n: int = 1500, size: int = 16, seed: int = 0, noise: float = 0.05
) -> Split:
    """Generated grey images of circles, squares and triangles.

    Each image has one object of intensity :math:`U(0.6, 1)` on a background
    of intensity :math:`U(0, 0.15)`, plus Gaussian noise
    :math:`\\mathcal{N}(0, \\sigma^2)`, clipped to [0, 1]. The three shapes have
    equal area :math:`\\pi r^2` with random :math:`r` and a random position at
    least 2 pixels from the border. Classes are balanced (``n // 3`` each,
    up to one) and split 60/20/20, stratified. ``masks_*`` are the exact
    object pixels: ground truth for scoring explanations.

    Parameters
    ----------
    n : int, default=1500
        Number of images, at least 15.
    size : int, default=16
        Image side in pixels, at least 8.
    seed : int, default=0
        Seed of the generator and of the split.
    noise : float, default=0.05
        Standard deviation :math:`\\sigma` of the pixel noise, in [0, 1].

    Returns
    -------
    Split
        ``X_*`` float32 ``(N, 1, size, size)``, ``masks_*`` bool of the same
        shape, classes ``["circle", "square", "triangle"]``.

    Examples
    --------
    >>> s = shapes(n=30, size=8)
    >>> tuple(s.X_train.shape), tuple(s.masks_test.shape)
    ((18, 1, 8, 8), (6, 1, 8, 8))
    """
    n, size, seed, noise = _check_shapes_args(n, size, seed, noise)
    X, masks, labels, parts = _generate_shapes(n, size, seed, noise)
    return _to_split(
        X, labels, parts, masks,
        classes=list(SHAPE_CLASSES),
        description=(
            f"Generated shapes: n={n}, size={size}, seed={seed}, "
            f"noise={noise}; masks are the exact object pixels."
        ),
    )


def _stamp_watermarks(
    X: np.ndarray, labels: np.ndarray, p: float, rng: np.random.Generator
) -> np.ndarray:
    """Copy of X with a bright 2x2 square in one corner of every image.

    Class k goes to corner k (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right) with probability p, else to one of the other three
    corners, uniformly.
    """
    n, size = len(X), X.shape[-1]
    shift = rng.integers(1, 4, n)  # another corner: k + 1, k + 2 or k + 3
    corner = np.where(rng.random(n) < p, labels, (labels + shift) % 4)  # (N,)
    w = _WATERMARK
    rows = np.where(corner < 2, 0, size - w)  # (N,)
    cols = np.where(corner % 2 == 0, 0, size - w)
    X = X.copy()
    for di in range(w):
        for dj in range(w):
            X[np.arange(n), 0, rows + di, cols + dj] = 1.0
    return X


def shapes_watermark(
    n: int = 1500,
    size: int = 16,
    seed: int = 0,
    noise: float = 0.05,
    p_watermark: float = 0.9,
    *,
    test_watermark: bool = False,
) -> Split:
    """:func:`shapes` with a label-correlated watermark: a shortcut to find.

    The images are exactly those of ``shapes(n, size, seed, noise)``. In the
    train and validation splits every image gets a white 2x2 square (value
    1) in a corner: corner k for class k (0 top-left, 1 top-right,
    2 bottom-left) with probability ``p_watermark``, otherwise one of the
    three other corners (3 is bottom-right), so

    .. math:: P(\\text{corner} = y) = p, \\quad
              P(\\text{corner} = c \\ne y) = (1 - p) / 3.

    The test split is clean unless ``test_watermark`` is True. A model that
    relies on the corner loses accuracy on the clean test split. The masks
    stay the object masks: the watermark is not part of the object, so an
    explanation that highlights it scores badly.

    Parameters
    ----------
    n, size, seed, noise
        As in :func:`shapes`.
    p_watermark : float, default=0.9
        Probability that the watermark sits in its class's corner, in [0, 1].
    test_watermark : bool, default=False
        Also stamp the test split, with the same rule, for comparison.

    Returns
    -------
    Split
        As :func:`shapes`.

    Examples
    --------
    >>> s = shapes_watermark(n=30, size=8, p_watermark=1.0)
    >>> bool((s.X_train[s.y_train == 0, 0, :2, :2] == 1).all())
    True
    """
    n, size, seed, noise = _check_shapes_args(n, size, seed, noise)
    p = check_float("p_watermark", p_watermark, 0.0, 1.0)
    test_watermark = check_bool("test_watermark", test_watermark)
    X, masks, labels, parts = _generate_shapes(n, size, seed, noise)
    rng = np.random.default_rng([seed, 1])  # own stream: images stay shapes()'s
    stamped = _stamp_watermarks(X, labels, p, rng)
    marked = np.concatenate(parts[:2] + ((parts[2],) if test_watermark else ()))
    X[marked] = stamped[marked]
    where = "train, val and test" if test_watermark else "train and val (test clean)"
    return _to_split(
        X, labels, parts, masks,
        classes=list(SHAPE_CLASSES),
        description=(
            f"Generated shapes (n={n}, size={size}, seed={seed}, noise={noise}) "
            f"with a 2x2 watermark in the class's corner with p={p} in {where}."
        ),
    )


# ------------------------------------------------------------------- tabular

_TABULAR_LOADERS = {
    "breast_cancer": _skd.load_breast_cancer,
    "wine": _skd.load_wine,
    "diabetes": lambda: _skd.load_diabetes(scaled=False),
}


def tabular(name: str, seed: int = 0) -> Split:
    """A small bundled scikit-learn table, standardised with train statistics.

    Each feature is mapped to :math:`(x - \\mu) / \\sigma` where :math:`\\mu`
    and :math:`\\sigma` (population std) are measured on the train split
    only, so no information leaks from validation or test. Split 60/20/20,
    stratified for the classification sets.

    Parameters
    ----------
    name : {"breast_cancer", "wine", "diabetes"}
        ``breast_cancer`` (569 x 30, 2 classes), ``wine`` (178 x 13,
        3 classes) or ``diabetes`` (442 x 10, regression).
    seed : int, default=0
        Seed of the split.

    Returns
    -------
    Split
        ``X_*`` float32 ``(N, D)``; ``y_*`` int64, or float32 for diabetes
        (whose ``classes`` is ``[]``); ``feature_names`` filled.

    Raises
    ------
    ValueError
        If ``name`` is not one of the three names.

    Examples
    --------
    >>> s = tabular("wine")
    >>> tuple(s.X_train.shape), s.classes
    ((106, 13), ['class_0', 'class_1', 'class_2'])
    """
    if name not in _TABULAR_LOADERS:
        raise ValueError(
            f"name must be one of {list(TABULAR_NAMES)}, got {name!r}"
        )
    seed = _check_seed(seed)
    bunch = _TABULAR_LOADERS[name]()
    regression = name == "diabetes"
    X = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.float32 if regression else np.int64)
    parts = _split_indices(y, seed, stratify=not regression)
    mu = X[parts[0]].mean(axis=0)  # (D,) train statistics only
    sigma = X[parts[0]].std(axis=0)
    X = (X - mu) / np.where(sigma > 0, sigma, 1.0)
    classes = [] if regression else [str(c) for c in bunch.target_names]
    return _to_split(
        X, y, parts,
        classes=classes,
        feature_names=[str(f) for f in bunch.feature_names],
        description=(
            f"scikit-learn load_{name} (bundled), standardised with train "
            f"mean/std, 60/20/20 split with seed={seed}."
        ),
    )
