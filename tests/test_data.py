"""Tests of course_lib.data: determinism, shapes, splits, masks, watermark."""

import numpy as np
import pytest
import torch

from course_lib import data

TENSORS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


def _equal(a: data.Split, b: data.Split) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in TENSORS)


@pytest.mark.parametrize("make", [
    lambda seed: data.digits(seed=seed),
    lambda seed: data.shapes(n=150, seed=seed),
    lambda seed: data.shapes_watermark(n=150, seed=seed),
    lambda seed: data.tabular("wine", seed=seed),
])
def test_loaders_same_seed_same_data_other_seed_other_data(make):
    assert _equal(make(0), make(0))
    assert not _equal(make(0), make(1))


def test_digits_shapes_dtypes_and_range():
    s = data.digits()
    assert s.X_train.shape == (1077, 1, 8, 8)
    assert s.X_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    X = torch.cat([s.X_train, s.X_val, s.X_test])
    assert X.min() == 0 and X.max() == 1  # raw digits span 0..16
    assert data.digits(as_images=False).X_test.shape == (360, 64)


def test_digits_split_sizes_and_no_overlap():
    from collections import Counter

    from sklearn.datasets import load_digits

    s = data.digits(as_images=False)
    assert (len(s.X_train), len(s.X_val), len(s.X_test)) == (1077, 360, 360)
    # The three splits together are the data set exactly once (a partition):
    # same multiset of (image, label) rows, so no row is in two splits.
    pairs = [(s.X_train, s.y_train), (s.X_val, s.y_val), (s.X_test, s.y_test)]
    rows = Counter((tuple(x.tolist()), int(t)) for X, y in pairs for x, t in zip(X, y))
    raw = load_digits()
    expected = Counter(
        (tuple((x / 16).astype(np.float32).tolist()), int(t))
        for x, t in zip(raw.data, raw.target)
    )
    assert rows == expected


def test_digits_split_is_stratified():
    s = data.digits()
    frac = [torch.bincount(y, minlength=10) / len(y) for y in (s.y_train, s.y_test)]
    assert torch.allclose(frac[0], frac[1], atol=0.01)


def test_shapes_shapes_dtypes_and_range():
    s = data.shapes(n=300, size=16)
    assert s.X_train.shape == (180, 1, 16, 16) and s.X_train.dtype == torch.float32
    assert s.masks_train.shape == (180, 1, 16, 16) and s.masks_train.dtype == torch.bool
    assert s.X_train.min() >= 0 and s.X_train.max() <= 1
    assert s.classes == ["circle", "square", "triangle"]


def test_shapes_classes_are_balanced():
    s = data.shapes(n=1500)
    for y, n in ((s.y_train, 900), (s.y_val, 300), (s.y_test, 300)):
        assert torch.bincount(y, minlength=3).tolist() == [n // 3] * 3


@pytest.mark.parametrize("size", [8, 16])
def test_shapes_masks_cover_the_bright_object(size):
    s = data.shapes(n=600, size=size, seed=3)
    X, m = s.X_train, s.masks_train
    assert m.flatten(1).any(1).all()  # no empty mask
    assert not m.flatten(1).all(1).any()  # and none fills the image
    # object intensity is U(0.6, 1), background U(0, 0.15), noise sd 0.05
    assert X[m].mean() > 0.7 and X[~m].mean() < 0.15
    inside = (X * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    outside = (X * ~m).flatten(1).sum(1) / (~m).flatten(1).sum(1)
    assert (inside > outside + 0.3).all()  # per image, not only on average


def test_shapes_is_fast():
    import time
    start = time.perf_counter()
    data.shapes(n=1500)
    assert time.perf_counter() - start < 0.5


def test_shapes_watermark_same_images_as_shapes_in_test():
    clean, marked = data.shapes(n=300), data.shapes_watermark(n=300)
    assert torch.equal(clean.X_test, marked.X_test)
    assert torch.equal(clean.masks_train, marked.masks_train)


def _corners(X: torch.Tensor) -> torch.Tensor:
    """(N, 4) bool: a 2x2 block of value 1 in each corner (TL, TR, BL, BR)."""
    c = [X[:, 0, :2, :2], X[:, 0, :2, -2:], X[:, 0, -2:, :2], X[:, 0, -2:, -2:]]
    return torch.stack([(b == 1).flatten(1).all(1) for b in c], dim=1)


def test_shapes_watermark_corner_matches_label_at_rate_p():
    p = 0.8
    s = data.shapes_watermark(n=1500, p_watermark=p)
    corners = _corners(s.X_train)
    assert (corners.sum(1) == 1).all()  # exactly one watermark per image
    hit = corners[torch.arange(len(s.y_train)), s.y_train].float().mean()
    sd = (p * (1 - p) / len(s.y_train)) ** 0.5
    assert abs(hit.item() - p) < 4 * sd
    assert (_corners(s.X_val).sum(1) == 1).all()


def test_shapes_watermark_test_split_is_clean_unless_asked():
    assert not _corners(data.shapes_watermark(n=300).X_test).any()
    s = data.shapes_watermark(n=300, p_watermark=1.0, test_watermark=True)
    corners = _corners(s.X_test)
    assert corners[torch.arange(len(s.y_test)), s.y_test].all()


def test_shapes_watermark_not_in_masks():
    s = data.shapes_watermark(n=300, p_watermark=1.0)
    corner = torch.zeros(16, 16, dtype=torch.bool)
    corner[:2, :2] = corner[:2, -2:] = corner[-2:, :2] = corner[-2:, -2:] = True
    assert not (s.masks_train[:, 0] & corner).any()


@pytest.mark.parametrize("name", data.TABULAR_NAMES)
def test_tabular_standardised_with_train_statistics(name):
    s = data.tabular(name)
    mean, std = s.X_train.mean(0), s.X_train.std(0, unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)
    assert len(s.feature_names) == s.X_train.shape[1]
    n = sum(len(y) for y in (s.y_train, s.y_val, s.y_test))
    assert len(s.y_test) == pytest.approx(0.2 * n, abs=1)


def test_tabular_diabetes_is_regression():
    s = data.tabular("diabetes")
    assert s.y_train.dtype == torch.float32 and s.classes == []
    assert s.X_train.shape[1] == 10


def test_tabular_classification_labels():
    s = data.tabular("breast_cancer")
    assert s.y_train.dtype == torch.int64 and len(s.classes) == 2
    assert s.X_train.shape == (341, 30)


def test_tabular_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="name must be one of .*breast_cancer.*wine.*diabetes"):
        data.tabular("iris")


@pytest.mark.parametrize("call, match", [
    (lambda: data.shapes(n=0), "n must be an int >= 15, got 0"),
    (lambda: data.shapes(size=4), "size must be an int >= 8, got 4"),
    (lambda: data.shapes(noise=-0.1), r"noise must be a float in \[0.0, 1.0\], got -0.1"),
    (lambda: data.shapes(seed=-1), "seed must be an int >= 0, got -1"),
    (lambda: data.shapes_watermark(p_watermark=1.5), "p_watermark must be a float in"),
    (lambda: data.digits(seed=-3), "seed must be"),
])
def test_loaders_bad_values_raise_valueerror_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: data.shapes(n=100.0), "n must be an int"),
    (lambda: data.shapes(n=True), "n must be an int"),
    (lambda: data.digits(as_images="yes"), "as_images must be a bool"),
    (lambda: data.shapes_watermark(p_watermark="0.9"), "p_watermark must be a float"),
])
def test_loaders_bad_types_raise_typeerror_naming_argument(call, match):
    with pytest.raises(TypeError, match=match):
        call()
