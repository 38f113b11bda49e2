"""Tests of course_lib.models: architectures, training loop, evaluation."""

import pytest
import torch
from torch import nn

from course_lib import models


def _blobs(n: int = 64, seed: int = 0):
    """Two linearly separable Gaussian blobs in 2-D, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    X = torch.randn(n, 2, generator=g) * 0.5 + (2.0 * y - 1.0)[:, None] * 2
    return X, y


def test_mlp_output_shape_from_images_and_rows():
    model = models.MLP()
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert isinstance(model[0], nn.Flatten)


@pytest.mark.parametrize("model", [models.MLP(), models.SmallCNN()])
def test_models_relus_are_distinct_modules(model):
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2
    assert len({id(m) for m in relus}) == len(relus)


@pytest.mark.parametrize("size, n_classes", [(8, 10), (16, 3)])
def test_smallcnn_output_shape(size, n_classes):
    model = models.SmallCNN(n_classes=n_classes, image_size=size)
    assert model(torch.zeros(4, 1, size, size)).shape == (4, n_classes)
    # conv (pad 1) keeps S, the 2x2 pool halves it
    assert model.features(torch.zeros(4, 1, size, size)).shape == (4, 32, size // 2, size // 2)


def test_smallcnn_last_conv_is_second_conv():
    model = models.SmallCNN()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert model.last_conv is convs[1] and model.last_conv.out_channels == 32


@pytest.mark.parametrize("call, match", [
    (lambda: models.MLP(hidden=(0,)), r"hidden\[0\] must be an int >= 1, got 0"),
    (lambda: models.SmallCNN(image_size=9), "image_size must be an even int, got 9"),
    (lambda: models.SmallCNN(channels=(8,)), "channels must be a tuple of 2 ints"),
    (lambda: models.train(models.MLP(2, (), 2), *_blobs(), epochs=0), "epochs must be an int >= 1, got 0"),
    (lambda: models.train(models.MLP(2, (), 2), *_blobs(), lr=-1.0), "lr must be a float > 0, got -1.0"),
    (lambda: models.train(models.MLP(2, (), 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)),
     "X and y must have the same length, got 3 and 2"),
])
def test_models_bad_arguments_raise_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_train_bad_type_raises_typeerror():
    with pytest.raises(TypeError, match="X must be a torch.Tensor"):
        models.train(models.MLP(2, (), 2), [[0.0, 1.0]], torch.tensor([0]))


def test_train_reduces_loss_and_leaves_eval_mode():
    X, y = _blobs()
    torch.manual_seed(0)
    model = models.MLP(2, (8,), 2)
    history = models.train(model, X, y, epochs=10, batch_size=16, progress=False,
                           X_val=X, y_val=y)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert len(history["val_accuracy"]) == 10 and history["val_accuracy"][-1] == 1.0
    assert not model.training


def _trained_weights(seed: int) -> list[torch.Tensor]:
    X, y = _blobs()
    torch.manual_seed(0)  # same init every time
    model = models.MLP(2, (8,), 2)
    models.train(model, X, y, epochs=3, batch_size=8, seed=seed, progress=False)
    return [p.detach().clone() for p in model.parameters()]


def test_train_same_seed_same_weights_other_seed_other_weights():
    a, b, c = _trained_weights(0), _trained_weights(0), _trained_weights(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_train_float_targets_use_mse():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5])  # exactly linear
    torch.manual_seed(0)
    model = models.MLP(3, (), 1)  # linear regression
    history = models.train(model, X, y, epochs=100, lr=5e-2, batch_size=64, progress=False)
    assert history["loss"][-1] < 1e-3  # MSE of a realisable linear target -> 0


def test_train_custom_loss_fn_is_used():
    calls = []

    def loss_fn(out, target):
        calls.append(1)
        return nn.functional.cross_entropy(out, target)

    X, y = _blobs(16)
    models.train(models.MLP(2, (), 2), X, y, epochs=2, batch_size=8, progress=False, loss_fn=loss_fn)
    assert len(calls) == 4  # 2 epochs x 2 batches


def test_evaluate_matches_hand_count_and_restores_mode():
    model = nn.Identity()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 0, 0, 1])
    model.train()
    assert models.evaluate(model, logits, y, batch_size=3) == 0.75
    assert model.training


def test_evaluate_float_targets_raise_typeerror():
    with pytest.raises(TypeError, match="y must be an integer class tensor"):
        models.evaluate(nn.Identity(), torch.zeros(2, 2), torch.zeros(2))


def test_predict_proba_is_softmax():
    logits = torch.tensor([[0.0, 0.0], [0.0, torch.log(torch.tensor(3.0))]])
    p = models.predict_proba(nn.Identity(), logits)
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.5], [0.25, 0.75]]))


def test_set_seed_repeats_torch_draws():
    models.set_seed(5)
    a = torch.rand(3)
    models.set_seed(5)
    assert torch.equal(a, torch.rand(3))


def test_train_seeds_pairs_arms_by_seed_and_is_deterministic():
    from course_lib import data, models
    split = data.digits()
    recipe = lambda: models.MLP(64, (8,), 10)  # noqa: E731
    a = models.train_seeds(recipe, split, [0, 1], epochs=1, progress=False, keep_models=True)
    b = models.train_seeds(recipe, split, [0, 1], epochs=1, progress=False)
    assert a["val"].tolist() == b["val"].tolist() and a["test"].tolist() == b["test"].tolist()
    assert a["test"][0] != a["test"][1]                       # another seed, another model
    # the recorded test accuracy is the trained model's, computed independently here
    m = a["models"][1]
    assert a["test"][1] == pytest.approx((m(split.X_test).argmax(1) == split.y_test).float().mean().item())
    # seed s builds the same initial weights in every arm: rebuild seed 0's initial weights by hand
    models.set_seed(0)
    init = recipe()
    c = models.train_seeds(recipe, split, [0], epochs=1, lr=1e-9, progress=False, keep_models=True)
    torch.testing.assert_close(c["models"][0][1].weight, init[1].weight, atol=1e-6, rtol=0)


def test_train_seeds_rejects_its_own_knobs():
    from course_lib import data, models
    with pytest.raises(ValueError, match="sets seed and progress itself"):
        models.train_seeds(lambda: models.MLP(64, (8,), 10), data.digits(), [0], seed=3)
    with pytest.raises(ValueError, match="at least one seed"):
        models.train_seeds(lambda: models.MLP(64, (8,), 10), data.digits(), [])


def test_plot_intervals_draws_each_interval_as_a_bar():
    from course_lib import plots, stats
    rows = [("a", stats.wilson_interval(90, 100)), ("b", stats.wilson_interval(50, 100))]
    fig, ax = plots.plot_intervals(rows, xlabel="accuracy (%)", scale=100, reference=50)
    (line, caps, (bars,)) = ax.containers[0]
    segments = bars.get_segments()
    assert [round(float(s[0][0]), 6) for s in segments] == [round(100 * iv.low, 6) for _, iv in rows]
    assert [round(float(s[1][0]), 6) for s in segments] == [round(100 * iv.high, 6) for _, iv in rows]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
