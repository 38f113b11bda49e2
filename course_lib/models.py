"""Small models of the course and the loop that trains them.

``MLP`` and ``SmallCNN`` are built from modules only (every ReLU is its own
``nn.ReLU``), which hooks, SHAP's DeepExplainer and Grad-CAM need.
``train`` is deterministic: same seed and same initial weights give the same
trained weights on the same machine.

Taught in: 00_setup §3
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .validation import check_int

__all__ = ["MLP", "SmallCNN", "train", "evaluate", "predict_proba", "set_seed", "train_seeds"]


# ---------------------------------------------------------------- validation

def _check_nonneg_float(name: str, value: object, positive: bool) -> float:
    allowed = "a float > 0" if positive else "a float >= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if not (value > 0 if positive else value >= 0):  # also rejects nan
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_widths(name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a tuple of ints >= 1, got {value!r}")
    return tuple(check_int(f"{name}[{i}]", v, 1) for i, v in enumerate(value))


def _check_data(X: object, y: object, prefix: str = "") -> None:
    for name, value in ((f"X{prefix}", X), (f"y{prefix}", y)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value)!r}")
    if len(X) != len(y):
        raise ValueError(
            f"X{prefix} and y{prefix} must have the same length, "
            f"got {len(X)} and {len(y)}"
        )
    if len(X) == 0:
        raise ValueError(f"X{prefix} must have at least one row, got 0")


# -------------------------------------------------------------------- models

class MLP(nn.Sequential):
    """Multi-layer perceptron: Flatten, then Linear-ReLU blocks, then Linear.

    .. math:: f(x) = W_L\\,\\mathrm{ReLU}(\\dots\\mathrm{ReLU}(W_1 x + b_1)
              \\dots) + b_L

    The input is flattened first, so images ``(N, 1, 8, 8)`` and rows
    ``(N, 64)`` both work. Layers are indexed as in ``nn.Sequential``:
    ``model[0]`` is the Flatten, then Linear, ReLU, Linear, ReLU, ..., and
    the last entry is the output Linear. Each ReLU is a distinct module.

    Parameters
    ----------
    in_features : int, default=64
        Number of input values per example.
    hidden : tuple of int, default=(128, 64)
        Widths of the hidden layers; ``()`` gives logistic regression.
    n_classes : int, default=10
        Number of outputs (logits).

    Examples
    --------
    >>> MLP(4, (3,), 2)(torch.zeros(5, 4)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (128, 64),
        n_classes: int = 10,
    ) -> None:
        in_features = check_int("in_features", in_features, 1)
        hidden = _check_widths("hidden", hidden)
        n_classes = check_int("n_classes", n_classes, 1)
        layers: list[nn.Module] = [nn.Flatten()]
        widths = (in_features, *hidden)
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_classes))
        super().__init__(*layers)
        self.in_features, self.hidden, self.n_classes = in_features, hidden, n_classes


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and a linear classifier.

    .. math:: f(x) = W\\,\\mathrm{vec}(\\mathrm{maxpool}(\\mathrm{ReLU}(
              K_2 * \\mathrm{ReLU}(K_1 * x)))) + b

    Stable attribute names (notebooks and explainers rely on them):

    - ``features``: ``nn.Sequential(conv1, ReLU, conv2, ReLU, MaxPool2d(2))``
      mapping ``(N, C, S, S)`` to ``(N, channels[1], S/2, S/2)``;
    - ``classifier``: ``nn.Sequential(Flatten, Linear)`` to ``(N, n_classes)``;
    - ``last_conv``: the second ``nn.Conv2d`` (``features[2]``), the layer
      Grad-CAM uses.

    Parameters
    ----------
    in_channels : int, default=1
        Channels of the input images.
    n_classes : int, default=10
        Number of outputs (logits).
    channels : tuple of two ints, default=(16, 32)
        Output channels of the two convolutions.
    image_size : int, default=8
        Side S of the square input images, even (8 for digits, 16 for shapes).

    Examples
    --------
    >>> SmallCNN(n_classes=3, image_size=16)(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        image_size: int = 8,
    ) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1)
        n_classes = check_int("n_classes", n_classes, 1)
        channels = _check_widths("channels", channels)
        if len(channels) != 2:
            raise ValueError(f"channels must be a tuple of 2 ints, got {channels!r}")
        image_size = check_int("image_size", image_size, 2)
        if image_size % 2:
            raise ValueError(f"image_size must be an even int, got {image_size!r}")
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),  # (N, c1, S, S)
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),  # (N, c2, S, S)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, c2, S/2, S/2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, c2 * S/2 * S/2)
            nn.Linear(c2 * (image_size // 2) ** 2, n_classes),  # (N, n_classes)
        )
        self.in_channels, self.n_classes = in_channels, n_classes
        self.channels, self.image_size = channels, image_size

    @property
    def last_conv(self) -> nn.Conv2d:
        """The last ``nn.Conv2d`` of ``features`` (the Grad-CAM layer)."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)][-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))  # (N, n_classes)


# ------------------------------------------------------------------ training

def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch's.

    Parameters
    ----------
    seed : int
        A non-negative int.
    """
    seed = check_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _default_loss(y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    if y.is_floating_point():  # regression
        return lambda out, target: nn.functional.mse_loss(
            out.reshape(target.shape), target
        )
    return nn.functional.cross_entropy


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


def train(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    X_val: Tensor | None = None,
    y_val: Tensor | None = None,
    progress: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place with Adam on mini-batches; return the history.

    Each epoch shuffles the rows with a ``torch.Generator`` seeded by
    ``seed`` and takes one Adam step (Kingma & Ba, 2015) per batch on

    .. math:: L = \\frac{1}{B}\\sum_{i \\in \\text{batch}} \\ell(f(x_i), y_i)

    with :math:`\\ell` the cross-entropy for integer ``y`` and the squared
    error for float ``y`` (regression), unless ``loss_fn`` is given.

    Parameters
    ----------
    model : nn.Module
        Trained in place; left in eval mode.
    X : Tensor of shape (N, ...)
        Inputs, float32.
    y : Tensor of shape (N,)
        int64 class labels, or float targets for regression.
    epochs : int, default=30
    lr : float, default=1e-2
        Adam learning rate.
    batch_size : int, default=64
    weight_decay : float, default=0.0
        Adam's L2 penalty.
    seed : int, default=0
        Seed of the shuffling.
    X_val, y_val : Tensor or None, default=None
        If both given, the validation accuracy is recorded after each epoch
        (classification only).
    progress : bool, default=True
        Show a tqdm progress bar over epochs.
    loss_fn : callable or None, default=None
        ``loss_fn(output, y) -> scalar`` replacing the default loss.

    Returns
    -------
    dict
        ``"loss"``: mean train loss of each epoch; ``"val_accuracy"``: one
        value per epoch (empty without validation data).

    Rules
    -----
    Deterministic: the same seed and initial weights give the same trained
    weights on the same machine (thread count and CPU kind can change the
    rounding).

    References
    ----------
    Kingma, D. P. and Ba, J. (2015). Adam: A method for stochastic
    optimization. ICLR.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> m = MLP(2, (8,), 2)
    >>> X = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]])
    >>> h = train(m, X, torch.tensor([0, 1, 1, 1]), epochs=3, progress=False)
    >>> len(h["loss"])
    3
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
    _check_data(X, y)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = _check_nonneg_float("lr", lr, positive=True)
    weight_decay = _check_nonneg_float("weight_decay", weight_decay, positive=False)
    seed = check_int("seed", seed, 0)
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val and y_val must be given together, got one of them")
    if X_val is not None:
        _check_data(X_val, y_val, prefix="_val")
    loss_fn = loss_fn or _default_loss(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "val_accuracy": []}
    bar = tqdm(range(epochs), desc="train", disable=not progress, leave=False)
    for _ in bar:
        history["loss"].append(
            _train_epoch(model, X, y, optimizer, loss_fn, batch_size, generator)
        )
        postfix = {"loss": f"{history['loss'][-1]:.4f}"}
        if X_val is not None:
            history["val_accuracy"].append(evaluate(model, X_val, y_val))
            postfix["val_acc"] = f"{history['val_accuracy'][-1]:.3f}"
        bar.set_postfix(postfix)
    model.eval()
    return history


def _train_epoch(model, X, y, optimizer, loss_fn, batch_size, generator) -> float:
    """One pass over shuffled batches; return the mean loss per example."""
    model.train()
    order = torch.randperm(len(X), generator=generator)
    total = 0.0
    for start in range(0, len(X), batch_size):
        idx = order[start:start + batch_size]
        optimizer.zero_grad()
        loss = loss_fn(model(X[idx]), y[idx])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(X)


# ---------------------------------------------------------------- inference

@torch.no_grad()
def _logits(model: nn.Module, X: Tensor, batch_size: int) -> Tensor:
    """Outputs of ``model`` on X in eval mode; the model's mode is restored."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
    if not isinstance(X, Tensor):
        raise TypeError(f"X must be a torch.Tensor, got {type(X)!r}")
    batch_size = check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    try:
        batches = [X[i:i + batch_size] for i in range(0, len(X), batch_size)]
        return torch.cat([model(xb) for xb in batches])  # (N, K)
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Accuracy :math:`\\frac{1}{N}\\sum_i [\\arg\\max_k f(x_i)_k = y_i]`.

    Runs under ``torch.no_grad`` in eval mode (the model's mode is restored).

    Parameters
    ----------
    model : nn.Module
    X : Tensor of shape (N, ...)
    y : Tensor of shape (N,), int64
        Class labels.
    batch_size : int, default=512

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    TypeError
        If ``y`` holds floats (regression has no accuracy).

    Examples
    --------
    >>> m = nn.Identity()
    >>> evaluate(m, torch.tensor([[0., 1.], [1., 0.]]), torch.tensor([1, 1]))
    0.5
    """
    _check_data(X, y)
    if y.is_floating_point():
        raise TypeError(f"y must be an integer class tensor, got dtype {y.dtype}")
    return _accuracy(_logits(model, X, batch_size), y)


def predict_proba(model: nn.Module, X: Tensor, batch_size: int = 512) -> Tensor:
    """Class probabilities :math:`\\mathrm{softmax}(f(x))_k`, shape (N, K).

    Parameters
    ----------
    model : nn.Module
        Returns logits of shape (N, K).
    X : Tensor of shape (N, ...)
    batch_size : int, default=512

    Returns
    -------
    Tensor of shape (N, K)
        Rows sum to 1; no gradient.

    Examples
    --------
    >>> predict_proba(nn.Identity(), torch.zeros(1, 4))
    tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
    """
    return torch.softmax(_logits(model, X, batch_size), dim=1)


def train_seeds(make_model: Callable[[], nn.Module], split, seeds: Sequence[int], *, progress: bool = True,
                keep_models: bool = False, **train_kwargs) -> dict:
    """Train one recipe once per seed and score each run on validation and test.

    Seed ``s`` fixes both sources of training randomness: :func:`set_seed` ``(s)`` right before
    ``make_model()`` (the initialisation) and ``train(..., seed=s)`` (the data order). Two recipes run
    with the same seeds are therefore **paired**: seed ``s`` of each starts from the same weights and
    sees the batches in the same order whenever the recipes allow it (same architecture).

    Parameters
    ----------
    make_model : callable with no arguments
        Builds a fresh, untrained model (``lambda: MLP(64, (32,), 10)``).
    split : data.Split
        Trained on ``X_train``; scored on ``X_val`` and ``X_test``.
    seeds : sequence of int
    progress : bool, default=True
        A tqdm bar over seeds.
    keep_models : bool, default=False
        Also return the trained models.
    **train_kwargs
        Passed to :func:`train` (``epochs``, ``lr``, ``weight_decay``, ...); ``seed`` and ``progress``
        are set here.

    Returns
    -------
    dict
        ``"seed"``, ``"val"``, ``"test"``: numpy arrays of shape ``(len(seeds),)`` (accuracies), and
        ``"models"`` when ``keep_models``.
    """
    seeds = [check_int("seed", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got an empty sequence")
    if "seed" in train_kwargs or "progress" in train_kwargs:
        raise ValueError("train_seeds sets seed and progress itself; pass seeds=[...] and progress=...")
    out: dict = {"seed": np.array(seeds), "val": [], "test": [], "models": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # tiny models: a second thread only waits, and on a busy machine it stalls
    try:
        _train_each(make_model, split, seeds, progress, keep_models, train_kwargs, out)
    finally:
        torch.set_num_threads(threads)
    out["val"], out["test"] = np.array(out["val"]), np.array(out["test"])
    if not keep_models:
        del out["models"]
    return out


def _train_each(make_model, split, seeds, progress, keep_models, train_kwargs, out) -> None:
    for seed in tqdm(seeds, desc="seeds", disable=not progress, leave=False):
        set_seed(seed)
        model = make_model()
        train(model, split.X_train, split.y_train, seed=seed, progress=False, **train_kwargs)
        out["val"].append(evaluate(model, split.X_val, split.y_val))
        out["test"].append(evaluate(model, split.X_test, split.y_test))
        if keep_models:
            out["models"].append(model)
