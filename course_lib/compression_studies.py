"""Chapter 07's controlled studies: the shortcut stamp test, per-example forgetting, pruning criteria against random.

The helpers behind sections 5, 6 and 8 of chapter 07 that are not exercises:

- :func:`corner_stamp` and :func:`stamp_following`: the causal test of the watermark shortcut. Stamp the watermark in
  class ``c``'s corner of a clean image and see whether the prediction follows it;
- :func:`forgotten` and :func:`two_group_difference`: Hooker et al.'s (2019) question, which test images a
  compressed model gets wrong that the original got right, and whether their maps moved more than the others';
- :func:`criterion_keeps` and :func:`pruning_criteria_rows`: channel pruning by one-shot Taylor scores (on the
  training or the validation split), by filter magnitude and by random masks, with the same fine-tuning;
  :func:`criterion_vs_random` pairs each criterion with the random masks by fine-tuning seed.

The studies that train many models (the pruning criteria, explanation-aware KD with lambda swept, Ross et al.'s
penalty) ship their per-seed rows in ``data/chapter07_studies.json``, regenerated with
``python -m course_lib.compression_studies`` (:func:`regenerate`); the notebook reloads them and recomputes a
spot check.

This module imports only the course's core modules and chapter 07's own :mod:`course_lib.compression_explanation`.

References
----------
Hooker, S., Courville, A., Clark, G., Dauphin, Y. and Frome, A. (2019). What Do Compressed Deep Neural Networks
Forget? arXiv:1911.05248.
Molchanov, P., Tyree, S., Karras, T., Aila, T. and Kautz, J. (2017). Pruning Convolutional Neural Networks for
Resource Efficient Inference. ICLR. arXiv:1611.06440.

Taught in: 07_compression_and_explanation §5, §6 and §8.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import compression_explanation as CE
from . import stats, timing
from .validation import check_float, check_int, check_module, check_tensor

__all__ = ["WATERMARK", "RESULTS", "REGENERATE_COMMAND", "corner_stamp", "stamp_following", "forgotten",
           "two_group_difference", "criterion_keeps", "pruning_criteria_rows", "criterion_vs_random",
           "integrated_gradients", "occlusion", "grad_cam", "EXPLAINERS", "kd_lambda_rows", "choose_lambda",
           "train_right_reasons", "shortcut_scores", "right_reasons_rows", "KD_LAMS", "RRR_LAMS", "SEEDS",
           "PRUNE_SEEDS", "PARTS", "load_results", "regenerate"]

WATERMARK = 2                                          # side of data.shapes_watermark's square, in pixels
RESULTS = Path(__file__).resolve().parent.parent / "data" / "chapter07_studies.json"
REGENERATE_COMMAND = "python -m course_lib.compression_studies"


# =========================================================================== the stamp test
def corner_stamp(images: Tensor, c: int, patch: int = WATERMARK) -> Tensor:
    """A copy of ``images`` (N, C, H, W) with a white ``patch x patch`` square in corner ``c``.

    Corner ``c`` as in ``data.shapes_watermark``: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right;
    the square's pixels are set to 1 in every channel. ``images`` is not changed.
    """
    check_tensor("images", images)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    c, patch = check_int("c", c, 0), check_int("patch", patch, 1)
    if c > 3:
        raise ValueError(f"c must be a corner 0..3, got {c}")
    H, W = images.shape[2:]
    if patch > min(H, W):
        raise ValueError(f"patch must be at most the image side {min(H, W)}, got {patch}")
    r0, c0 = (0 if c < 2 else H - patch), (0 if c % 2 == 0 else W - patch)
    out = images.clone()
    out[:, :, r0:r0 + patch, c0:c0 + patch] = 1.0
    return out


@torch.no_grad()
def stamp_following(model: nn.Module, images: Tensor, stamp: Callable[[Tensor, int], Tensor] = corner_stamp
                    ) -> Tensor:
    r"""Per image: the fraction of the K class stamps the prediction follows (float64, shape (N,)).

    For each class :math:`c` of the model's K outputs, image :math:`x_i` is stamped with class c's marker
    (``stamp(images, c)``) and predicted:

    .. math:: \phi_i = \frac1K \sum_{c=0}^{K-1} \mathbb 1\big[\arg\max f(\mathrm{stamp}(x_i, c)) = c\big]

    A model that ignores the stamp predicts the same class under every stamp, which equals exactly one
    ``c``: :math:`\phi_i = 1/K` for every image, whatever its accuracy. A model that obeys the stamp scores 1.
    The mean over images, with ``stats.bootstrap_interval``, is compared with chance :math:`1/K`.
    """
    check_module("model", model)
    check_tensor("images", images)
    model.eval()
    K = int(model(images[:1]).shape[1])
    hits = torch.stack([model(stamp(images, c)).argmax(1) == c for c in range(K)])     # (K, N)
    return hits.double().mean(0)


# =========================================================================== what compression forgets
@torch.no_grad()
def forgotten(original: nn.Module, compressed: nn.Module, X: Tensor, y: Tensor) -> Tensor:
    """Bool (N,): the examples ``original`` classifies right and ``compressed`` gets wrong (Hooker et al. 2019)."""
    check_module("original", original)
    check_module("compressed", compressed)
    return (original.eval()(X).argmax(1) == y) & (compressed.eval()(X).argmax(1) != y)


def two_group_difference(values: object, in_group: object, *, n_boot: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> stats.Interval:
    r"""Mean of ``values`` inside a group of examples minus the mean outside it, with a bootstrap interval.

    With :math:`G` the examples where ``in_group`` is True (e.g. the forgotten ones) and :math:`R` the rest:

    .. math:: \Delta = \frac{1}{|G|}\sum_{i \in G} v_i - \frac{1}{|R|}\sum_{i \in R} v_i

    The interval is the percentile bootstrap that resamples each group with replacement, separately (a
    stratified bootstrap: the groups keep their sizes). Examples whose value is ``nan`` are left out.

    Parameters
    ----------
    values : 1-D sequence of numbers (N,)
        A per-example statistic (an agreement with the original's map).
    in_group : 1-D bool sequence (N,)
        Needs at least 2 examples in each group after leaving out the nans.
    """
    v = np.asarray(values.numpy() if isinstance(values, Tensor) else values, dtype=float)
    g = np.asarray(in_group.numpy() if isinstance(in_group, Tensor) else in_group)
    if v.ndim != 1 or g.shape != v.shape:
        raise ValueError(f"values and in_group must be 1-D of the same length, got {v.shape} and {g.shape}")
    if g.dtype != bool:
        raise TypeError(f"in_group must hold booleans, got dtype {g.dtype}")
    n_boot, seed = check_int("n_boot", n_boot, 100), check_int("seed", seed, 0)
    ok = ~np.isnan(v)
    a, b = v[ok & g], v[ok & ~g]
    if min(len(a), len(b)) < 2:
        raise ValueError(f"in_group must leave at least 2 examples in each group, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    boot = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
            - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    alpha = 1 - check_float("confidence", confidence, 0.0, 1.0, low_inclusive=False)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return stats.Interval(float(a.mean() - b.mean()), float(low), float(high), confidence, int(ok.sum()),
                          f"bootstrap over examples, {len(a)} in the group, {len(b)} outside", difference=True)


# =========================================================================== pruning criteria against random
RELU_AFTER = {"features.0": "features.1", "features.2": "features.3"}      # SmallCNN: conv -> its ReLU


def criterion_keeps(model: nn.Module, split, amount: float, *, n_random: int = 3,
                    relu_after: dict[str, str] = RELU_AFTER) -> dict[str, dict[str, Tensor]]:
    r"""The channels each criterion keeps in every conv layer: ``{criterion: {conv name: bool (C,)}}``.

    Each criterion scores the output channels of each conv and drops the ``round(amount * C)`` lowest
    (:func:`course_lib.compression_explanation.channel_keep`):

    - ``"Taylor (train)"`` / ``"Taylor (validation)"``: one-shot Taylor scores (Molchanov et al. 2017;
      :func:`~course_lib.compression_explanation.taylor_channel_importance`) at the ReLU after the conv, from one
      pass of the cross-entropy on the whole training or validation split. Molchanov's protocol is iterative
      (remove one channel, fine-tune, rescore); this is the one-shot version;
    - ``"magnitude"``: the L1 norm of each filter, :math:`\lVert W_c \rVert_1` (chapter 01's structured
      criterion);
    - ``"random <r>"``, r = 0 .. n_random - 1: scores drawn uniformly with ``torch.Generator`` seeded by
      ``1000 r + layer index``: the control every criterion must beat.
    """
    check_module("model", model)
    amount = check_float("amount", amount, 0.0, 1.0, low_inclusive=False)
    if amount >= 1:
        raise ValueError(f"amount must be a float in (0, 1), got {amount!r}")
    n_random = check_int("n_random", n_random, 1)
    convs = list(relu_after)
    keeps: dict[str, dict[str, Tensor]] = {}
    for label, (X, y) in {"Taylor (train)": (split.X_train, split.y_train),
                          "Taylor (validation)": (split.X_val, split.y_val)}.items():
        ag = CE.activations_and_gradients(model, list(relu_after.values()), X, y)
        keeps[label] = {conv: CE.channel_keep(CE.taylor_channel_importance(*ag[relu]), amount)
                        for conv, relu in relu_after.items()}
    keeps["magnitude"] = {conv: CE.channel_keep(model.get_submodule(conv).weight.detach().abs().flatten(1).sum(1),
                                                amount) for conv in convs}
    for r in range(n_random):
        keeps[f"random {r}"] = {
            conv: CE.channel_keep(torch.rand(model.get_submodule(conv).out_channels,
                                             generator=torch.Generator().manual_seed(1000 * r + i)), amount)
            for i, conv in enumerate(convs)}
    return keeps


def pruning_criteria_rows(named: dict[str, tuple[nn.Module, object]], *, amounts: Sequence[float] = (0.5, 0.75),
                          seeds: Sequence[int] = (0, 1, 2, 3, 4), n_random: int = 3, epochs: int = 2,
                          progress: bool = True) -> list[dict]:
    """Every criterion of :func:`criterion_keeps`, every amount, every fine-tuning seed: one row each.

    ``named``: ``{model name: (model, split)}``. Each (criterion, amount) removes the channels, then fine-tunes
    ``epochs`` epochs with each seed (:func:`~course_lib.compression_explanation.channel_pruning_rows`: Adam,
    lr 1e-3, the removed channels held at 0): the same fine-tuning for every criterion, paired by seed.
    Rows: ``model, amount, criterion`` (``"random"`` for every draw), ``draw`` (-1 for the others), ``seed``,
    ``val accuracy before fine-tuning``, ``val accuracy``, ``test accuracy``.
    """
    from tqdm.auto import tqdm

    seeds = [check_int("seeds", s, 0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got an empty sequence")
    rows = []
    jobs = [(name, a) for name in named for a in amounts]
    for name, amount in tqdm(jobs, desc="pruning criteria", disable=not progress, leave=False):
        model, split = named[name]
        keeps = criterion_keeps(model, split, amount, n_random=n_random)
        for r in CE.channel_pruning_rows(model, split, keeps, seeds=seeds, epochs=epochs, progress=False):
            criterion, draw = (("random", int(r["criterion"].split()[1])) if r["criterion"].startswith("random ")
                               else (r["criterion"], -1))
            rows.append({"model": name, "amount": float(amount), **r, "criterion": criterion, "draw": draw})
    return rows


def criterion_vs_random(rows: Sequence[dict], model: str, amount: float, criterion: str,
                        column: str = "test accuracy", versus: str = "random") -> stats.PairedDifference:
    """``criterion`` minus ``versus`` (default the random masks), paired by fine-tuning seed: per seed s, the mean of
    ``column`` over the criterion's rows with seed s (one, or one per random draw) minus the same for ``versus``;
    :func:`course_lib.stats.paired_difference` over the seeds."""
    pick = [r for r in rows if r["model"] == model and abs(r["amount"] - amount) < 1e-9]
    if not pick:
        raise ValueError(f"rows must hold model {model!r} at amount {amount!r}")
    seeds = sorted({r["seed"] for r in pick})
    for name, label in ((criterion, "criterion"), (versus, "versus")):
        if not any(r["criterion"] == name for r in pick):
            raise ValueError(f"{label} must be one of the rows' criteria {sorted({r['criterion'] for r in pick})}, "
                             f"got {name!r}")
    a = [np.mean([r[column] for r in pick if r["criterion"] == criterion and r["seed"] == s]) for s in seeds]
    b = [np.mean([r[column] for r in pick if r["criterion"] == versus and r["seed"] == s]) for s in seeds]
    return stats.paired_difference(a, b)


# =========================================================================== explainers, written out
def integrated_gradients(model: nn.Module, x: Tensor, target: Tensor, steps: int = 8) -> Tensor:
    r"""IG from a zero baseline with the midpoint rule: :math:`x \odot \frac1m\sum_k \nabla f_t(\frac{k-1/2}{m}x)`.

    Chapter 05's ``integrated_gradients`` (zero baseline), written out: chapter modules do not import each other.
    """
    total = torch.zeros_like(x)
    for k in range(steps):
        point = ((k + 0.5) / steps * x.detach()).requires_grad_(True)
        grad, = torch.autograd.grad(model(point).gather(1, target.view(-1, 1)).sum(), point)
        total += grad
    return x.detach() * total / steps


@torch.no_grad()
def occlusion(model: nn.Module, x: Tensor, target: Tensor, window: int = 4) -> Tensor:
    """Occlusion with non-overlapping ``window x window`` patches of zeros: each pixel gets its patch's drop of the
    target logit. Chapter 05's ``occlusion(window=(1, w, w), stride=(1, w, w))``, written out."""
    full = model(x).gather(1, target.view(-1, 1))[:, 0]                             # (N,)
    out = torch.zeros_like(x)
    H, W = x.shape[2:]
    for r in range(0, H, window):
        for c in range(0, W, window):
            occluded = x.clone()
            occluded[:, :, r:r + window, c:c + window] = 0.0
            drop = full - model(occluded).gather(1, target.view(-1, 1))[:, 0]
            out[:, :, r:r + window, c:c + window] = drop.view(-1, 1, 1, 1)
    return out


def grad_cam(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Grad-CAM at ``CE.gradcam_layer`` (the second conv), detached, at the layer's resolution."""
    return CE.differentiable_grad_cam(model, x, target, CE.gradcam_layer(model))[0].detach()


EXPLAINERS = {"Grad-CAM": grad_cam, "IG": integrated_gradients, "occlusion": occlusion}


def _mask_overlap(attribution: Tensor, masks: Tensor) -> Tensor:
    """Chapter 05's ``mask_overlap``: the share of the top-|a| pixels (as many as the object has) on the object."""
    a = attribution.detach().abs().sum(1).flatten(1)                                # (N, HW)
    m = masks.reshape(len(masks), -1).bool()
    out = torch.empty(len(a), dtype=torch.float64)
    for i in range(len(a)):
        k = int(m[i].sum())
        top = torch.topk(a[i], k).indices
        out[i] = m[i, top].double().mean()
    return out


def _scores(model: nn.Module, teacher_maps: dict[str, Tensor], X: Tensor, y: Tensor, masks: Tensor) -> dict:
    """Agreement (mean Spearman with the teacher's map, constant maps left out) and localisation per explainer."""
    maps = CE.explanation_maps({"s": model}, EXPLAINERS, X, y)
    out = {}
    for e in EXPLAINERS:
        per = CE.agreement_per_image({e: {"t": teacher_maps[e], "s": maps[e]["s"]}}, "t")[e]["s"]
        out[f"{e} agreement"] = float(per[~torch.isnan(per)].mean())
        out[f"{e} localisation"] = float(_mask_overlap(maps[e]["s"], masks).mean())
    return out


# =========================================================================== explanation-aware KD, lambda swept
def kd_lambda_rows(teacher: nn.Module, make_student: Callable[[], nn.Module], split, *, lams: Sequence[float],
                   seeds: Sequence[int], plain: dict[int, nn.Module], epochs: int = 30, n_explain: int = 64,
                   progress: bool = True, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    r"""Explanation-aware KD (:func:`CE.explanation_kd_loss`, Grad-CAM term) for every ``lam`` and seed.

    ``lam = 0`` is ``plain[seed]``: the shipped distilled student of that seed (the same init, shuffle, loss and
    budget: ``models.set_seed(seed)`` before ``make_student()``, 30 epochs, Adam 3e-3, batch 64). Each row:
    ``lam, seed``, and for ``part`` in val, test: ``<part> accuracy`` (the whole split) and on the split's first
    ``n_explain`` images, for Grad-CAM (the map the loss trains), IG and occlusion (maps it never sees):
    ``<part> <explainer> agreement`` (mean Spearman with the teacher's map) and ``<part> <explainer> localisation``
    (mask overlap). Choose ``lam`` on the val columns; read the test columns once.
    """
    from tqdm.auto import tqdm
    from . import models

    if any(lam != 0 for lam in lams):                   # the teacher's targets, needed only to train
        z_t = CE.logits_of(teacher, split.X_train)
        cam_t = CE.differentiable_grad_cam(teacher, split.X_train, split.y_train)[0].detach()
    parts = {p: (getattr(split, f"X_{p}")[:n_explain], getattr(split, f"y_{p}")[:n_explain],
                 getattr(split, f"masks_{p}")[:n_explain]) for p in ("val", "test")}
    t_maps = {p: {e: m["t"] for e, m in CE.explanation_maps({"t": teacher}, EXPLAINERS, X, y).items()}
              for p, (X, y, _) in parts.items()}
    rows = []
    for seed, lam in tqdm([(s, l) for s in seeds for l in lams], desc="students", disable=not progress):
        if lam == 0:
            student = plain[seed]
        else:
            models.set_seed(seed)
            student = CE.train_explained_student(make_student(), split.X_train, split.y_train, z_t, cam_t, lam=lam,
                                                 epochs=epochs, seed=seed)
        row = {"lam": float(lam), "seed": int(seed)}
        for p, (X, y, masks) in parts.items():
            row[f"{p} accuracy"] = models.evaluate(student, getattr(split, f"X_{p}"), getattr(split, f"y_{p}"))
            row.update({f"{p} {k}": v for k, v in _scores(student, t_maps[p], X, y, masks).items()})
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def choose_lambda(rows: Sequence[dict], tolerance: float = 0.01) -> float:
    """The rule stated before the sweep: among the ``lam`` whose mean validation accuracy is within ``tolerance`` of
    plain KD's (``lam = 0``), the one with the highest mean validation Grad-CAM agreement (0 if none is)."""
    lams = sorted({r["lam"] for r in rows})
    mean = lambda lam, col: float(np.mean([r[col] for r in rows if r["lam"] == lam]))
    ok = [lam for lam in lams if mean(lam, "val accuracy") >= mean(0.0, "val accuracy") - tolerance]
    return max(ok, key=lambda lam: mean(lam, "val Grad-CAM agreement"))


# =========================================================================== right for the right reasons
def train_right_reasons(model: nn.Module, X: Tensor, y: Tensor, region: Tensor, *, lam: float, epochs: int = 10,
                        lr: float = 3e-3, batch_size: int = 64, seed: int = 0) -> nn.Module:
    r"""Train ``model`` in place with Ross et al.'s (2017) penalty on the input gradient inside ``region``.

    .. math:: L = \mathrm{CE}(f(x), y) + \lambda\,\frac1B \sum_{i} \sum_{p \in R}
              \Big(\frac{\partial}{\partial x_{ip}} \sum_{k} \log \mathrm{softmax}(f(x_i))_k\Big)^2

    with :math:`R` the pixels of ``region`` (H, W) (the watermark corners): the model is told where the evidence
    must **not** be. The gradient is taken with ``create_graph=True`` (double backpropagation). Batches, shuffle
    (``seed``) and optimiser are :func:`course_lib.models.train`'s, so ``lam = 0`` is plain training.
    """
    from torch.nn import functional as F
    from . import models

    check_module("model", model)
    lam = check_float("lam", lam, 0.0)
    region = check_tensor("region", region).bool()

    def loss_fn(out: Tensor, rows: Tensor) -> Tensor:
        if lam == 0:
            return F.cross_entropy(out, y[rows])
        x = X[rows].clone().requires_grad_(True)
        logits = model(x)
        g, = torch.autograd.grad(F.log_softmax(logits, 1).sum(), x, create_graph=True)     # (B, C, H, W)
        return F.cross_entropy(logits, y[rows]) + lam * (g[:, :, region] ** 2).sum((1, 2)).mean()

    with timing.num_threads(1):
        models.train(model, X, torch.arange(len(X)), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                     progress=False, loss_fn=loss_fn)
    return model.eval()


def shortcut_scores(model: nn.Module, clean, marked, n_explain: int = 64, per_image: bool = False) -> dict:
    """Clean and watermarked test accuracy, their gap, the share of |IG| on the corners (first ``n_explain``
    watermarked test images) and the stamp test (mean :func:`stamp_following` on the clean test images).

    With ``per_image``, also ``"corner share per image"`` and ``"stamp following per image"`` (float64 tensors)."""
    from . import models

    corners = CE.corner_mask(clean.X_test.shape[-1], WATERMARK)
    Xw, yw = marked.X_test[:n_explain], marked.y_test[:n_explain]
    out = {"clean test accuracy": models.evaluate(model, clean.X_test, clean.y_test),
           "watermarked test accuracy": models.evaluate(model, marked.X_test, marked.y_test),
           "val accuracy": models.evaluate(model, clean.X_val, clean.y_val)}
    out["gap"] = out["watermarked test accuracy"] - out["clean test accuracy"]
    share = CE.attribution_share(integrated_gradients(model, Xw, yw), corners).double()
    follow = stamp_following(model, clean.X_test)
    out["corner share"], out["stamp following"] = float(share.mean()), float(follow.mean())
    if per_image:
        out["corner share per image"], out["stamp following per image"] = share, follow
    return out


def right_reasons_rows(make_model: Callable[[], nn.Module], split, marked, *, lams: Sequence[float],
                       seeds: Sequence[int], plain: dict[int, nn.Module], epochs: int = 10, progress: bool = True,
                       on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """:func:`train_right_reasons` for every ``lam`` > 0 and seed (``lam = 0``: ``plain[seed]``, the shipped dense
    model of that seed), scored by :func:`shortcut_scores`. ``split``: the watermarked training data (its val split
    is watermarked, its test split clean); ``marked``: the same data with a watermarked test split."""
    from tqdm.auto import tqdm
    from . import models

    region = CE.corner_mask(split.X_train.shape[-1], WATERMARK)
    rows = []
    for seed, lam in tqdm([(s, l) for s in seeds for l in lams], desc="right reasons", disable=not progress):
        if lam == 0:
            model = plain[seed]
        else:
            models.set_seed(seed)
            model = train_right_reasons(make_model(), split.X_train, split.y_train, region, lam=lam, epochs=epochs,
                                        seed=seed)
        row = {"lam": float(lam), "seed": int(seed), **shortcut_scores(model, split, marked)}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


KD_LAMS = (0.0, 0.1, 0.3, 1.0, 3.0)
RRR_LAMS = (0.0, 0.1, 1.0)
SEEDS = (1, 2, 3, 4, 5)
PRUNE_SEEDS = (0, 1, 2, 3, 4)                          # fine-tuning seeds of the pruning criteria
PARTS = ("pruning_criteria", "kd_lambda", "right_reasons")


def load_results(path: Path | str | None = None) -> dict:
    """The shipped studies: ``{part: {"rows": [...], "seconds": ..., ...}}`` for each of :data:`PARTS`."""
    return json.loads(Path(RESULTS if path is None else path).read_text())


def _run_part(part: str, progress: bool) -> list[dict]:
    from . import checkpoints, data, models

    if part == "pruning_criteria":
        named = {"digits": (checkpoints.load("digits_cnn"), checkpoints.dataset("digits_cnn")),
                 "shapes": (checkpoints.load("shapes_cnn"), checkpoints.dataset("shapes_cnn"))}
        return pruning_criteria_rows(named, seeds=PRUNE_SEEDS, progress=progress)
    if part == "kd_lambda":
        plain = {s: checkpoints.load(f"shapes_student_kd_seed{s}") for s in SEEDS}
        return kd_lambda_rows(checkpoints.load("shapes_cnn"), lambda: models.SmallCNN(1, 3, (8, 16), 16),
                              checkpoints.dataset("shapes_cnn"), lams=KD_LAMS, seeds=SEEDS, plain=plain,
                              progress=progress)
    plain = {s: checkpoints.load(f"shapes_watermark_cnn_seed{s}") for s in SEEDS}
    marked = data.shapes_watermark(n=1500, size=16, seed=0, test_watermark=True)
    return right_reasons_rows(lambda: models.SmallCNN(1, 3, (16, 32), 16), checkpoints.dataset("shapes_watermark_cnn"),
                              marked, lams=RRR_LAMS, seeds=SEEDS, plain=plain, progress=progress)


ABOUT = {
    "pruning_criteria": "section 5: channel pruning of digits_cnn and shapes_cnn by one-shot Taylor (train / "
                        "validation split), filter magnitude and 3 random masks, at 50 and 75 %, then the same "
                        "fine-tuning (2 epochs, Adam lr 1e-3) with seeds 0-4",
    "kd_lambda": "section 4: explanation-aware KD of the (8, 16) student from shapes_cnn, lambda in "
                 f"{list(KD_LAMS)}, seeds 1-5, 30 epochs (lambda = 0: the shipped shapes_student_kd_seed<s>)",
    "right_reasons": "section 6: Ross et al.'s input-gradient penalty on the watermark corners, dense SmallCNN on the "
                     f"watermarked data, lambda in {list(RRR_LAMS)}, seeds 1-5, 10 epochs (lambda = 0: the shipped "
                     "shapes_watermark_cnn_seed<s>)",
}


def regenerate(parts: Sequence[str] = PARTS, path: Path | str | None = None, progress: bool = True) -> dict:
    """Run the studies of chapter 07 that train many models and write their rows to :data:`RESULTS` (JSON).

    ``pruning_criteria``: 120 fine-tunings of 2 epochs (5 seeds, :data:`PRUNE_SEEDS`); ``kd_lambda``: 20 students
    with a Grad-CAM term (double backpropagation), 30 epochs each; ``right_reasons``: 10 dense models with an
    input-gradient penalty, 10 epochs each. All on one thread: about 3 minutes of CPU time, most of it
    ``kd_lambda`` (measured: 164 s of CPU, 14 min 22 s of wall time at ``nice -n 10`` on a 2-core machine at load
    average 10-18; each part's wall time is stored as ``"seconds"``). The rows are deterministic on a given machine
    (seeded init, shuffle and masks): the command rewrites the shipped file exactly. Parts not in ``parts`` are kept
    from the existing file.
    """
    path = Path(RESULTS if path is None else path)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be taken from {PARTS}, got {list(parts)!r}")
    out = json.loads(path.read_text()) if path.is_file() else {}
    for part in parts:
        start = time.perf_counter()
        with timing.num_threads(1):
            rows = _run_part(part, progress)
        out[part] = {"about": ABOUT[part], "regenerate": f"{REGENERATE_COMMAND} --only {part}",
                     "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
                     "machine": platform.machine(), "rows": rows}
        path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.compression_studies",
                                     description="Regenerate chapter 07's cached studies (JSON in data/).")
    parser.add_argument("--only", choices=PARTS, action="append", help="regenerate only this part (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write (default {RESULTS})")
    args = parser.parse_args(argv)
    out = regenerate(args.only or PARTS, args.out)
    for part in args.only or PARTS:
        print(f"{part}: {len(out[part]['rows'])} rows in {out[part]['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
