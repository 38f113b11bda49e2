"""Trained models shipped with the course, checked by SHA-256 before loading.

``data/checkpoints/`` holds one ``<name>.pt`` state_dict per model and
``MANIFEST.json``, which records for each: file, sha256, architecture and
constructor kwargs, data set and seed, training hyperparameters, measured
test accuracy and the command that regenerates it. ``load`` rebuilds the
architecture, verifies the file's hash, then loads the weights with
``weights_only=True``.

Command line::

    python -m course_lib.checkpoints --verify
    python -m course_lib.checkpoints --regenerate [--only NAME] [--out DIR]

Taught in: 00_setup §4
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from course_lib import data, models, transformer

__all__ = [
    "CheckpointError",
    "CheckpointMissingError",
    "DATA_ROOT",
    "RECIPES",
    "REGENERATE_COMMAND",
    "available",
    "info",
    "dataset",
    "load",
    "regenerate",
    "verify",
]

DATA_ROOT = Path(__file__).resolve().parent.parent / "data"
REGENERATE_COMMAND = "python -m course_lib.checkpoints --regenerate"
_MANIFEST = "MANIFEST.json"
_ARCHITECTURES = {"MLP": models.MLP, "SmallCNN": models.SmallCNN, "TinyGPT": transformer.TinyGPT}
_DATASETS = {
    "digits": data.digits,
    "shapes": data.shapes,
    "shapes_watermark": data.shapes_watermark,
    "recall": transformer.recall,
    "tabular": data.tabular,
}
_TRAIN = {"epochs": 30, "lr": 3e-3, "batch_size": 64, "weight_decay": 0.0, "seed": 0}

# The recipe of every shipped checkpoint. ``init_seed`` seeds the weights.
RECIPES: dict[str, dict] = {
    "digits_mlp": {
        "architecture": "MLP",
        "kwargs": {"in_features": 64, "hidden": [128, 64], "n_classes": 10},
        "dataset": {"name": "digits", "kwargs": {"seed": 0, "as_images": False}},
        "init_seed": 0,
        "train": dict(_TRAIN),
    },
    "digits_cnn": {
        "architecture": "SmallCNN",
        "kwargs": {"in_channels": 1, "n_classes": 10, "channels": [16, 32],
                   "image_size": 8},
        "dataset": {"name": "digits", "kwargs": {"seed": 0, "as_images": True}},
        "init_seed": 0,
        "train": dict(_TRAIN),
    },
    "shapes_cnn": {
        "architecture": "SmallCNN",
        "kwargs": {"in_channels": 1, "n_classes": 3, "channels": [16, 32],
                   "image_size": 16},
        "dataset": {"name": "shapes", "kwargs": {"n": 1500, "size": 16, "seed": 0,
                                                 "noise": 0.05}},
        "init_seed": 0,
        "train": dict(_TRAIN),
    },
    "shapes_watermark_cnn": {
        "architecture": "SmallCNN",
        "kwargs": {"in_channels": 1, "n_classes": 3, "channels": [16, 32],
                   "image_size": 16},
        "dataset": {"name": "shapes_watermark",
                    "kwargs": {"n": 1500, "size": 16, "seed": 0, "noise": 0.05,
                               "p_watermark": 0.9}},
        "init_seed": 0,
        "train": dict(_TRAIN),
    },
}
# Chapter 07's band of independently trained dense models: shapes_cnn's architecture and data, other seeds
# (initialisation and shuffle), 10 epochs (the recipe of models.train_seeds(..., epochs=10, lr=3e-3, batch_size=64)).
for _seed in range(1, 6):
    RECIPES[f"shapes_cnn_seed{_seed}"] = {
        "architecture": "SmallCNN",
        "kwargs": dict(RECIPES["shapes_cnn"]["kwargs"]),
        "dataset": RECIPES["shapes_cnn"]["dataset"],
        "init_seed": _seed,
        "train": {**_TRAIN, "epochs": 10, "seed": _seed},
    }
del _seed
# Chapter 08's transformer (course_lib.transformer.TinyGPT, 2 layers, 4 heads, width 64) on associative recall,
# five seeds (initialisation and shuffle; seeds 1-4 are its band of independently trained models); stored in
# float16 ("store_dtype") to stay under 200 KB.
for _seed in range(5):
    RECIPES["recall_gpt" + (f"_seed{_seed}" if _seed else "")] = {
        "architecture": "TinyGPT",
        "kwargs": {"vocab_size": 81, "block_size": 8, "n_layer": 2, "n_head": 4, "n_embd": 64, "mlp_ratio": 2},
        "dataset": {"name": "recall", "kwargs": {"n": 20000, "n_pairs": 6, "n_keys": 8, "n_values": 8, "seed": 0}},
        "init_seed": _seed,
        "train": {**_TRAIN, "epochs": 3, "seed": _seed},
        "store_dtype": "float16",
    }
del _seed
# Chapter 07's small students, SmallCNN (8, 16): 4,323 parameters against the dense model's 10,947. Each seed s
# (init and shuffle) is trained twice with the same budget: distilled from its teacher (Hinton's loss, T = 4,
# alpha = 0.9, the teacher's logits computed once on the training split) and from scratch (cross-entropy), so that
# "distilled minus from scratch" is paired by seed. On the watermarked data also five dense models from scratch (seeds
# 1-5, 10 epochs, like the band) beside the shipped ``shapes_watermark_cnn``.
_STUDENT = {"in_channels": 1, "n_classes": 3, "channels": [8, 16], "image_size": 16}
for _seed in range(1, 6):
    for _data, _teacher in (("shapes", "shapes_cnn"), ("shapes_watermark", "shapes_watermark_cnn")):
        for _arm in ("kd", "scratch"):
            RECIPES[f"{_data}_student_{_arm}_seed{_seed}"] = {
                "architecture": "SmallCNN",
                "kwargs": dict(_STUDENT),
                "dataset": RECIPES[_teacher]["dataset"],
                "init_seed": _seed,
                "train": {**_TRAIN, "epochs": 30, "seed": _seed},
                **({"distill": {"teacher": _teacher, "temperature": 4.0, "alpha": 0.9}} if _arm == "kd" else {}),
            }
    RECIPES[f"shapes_watermark_cnn_seed{_seed}"] = {
        "architecture": "SmallCNN",
        "kwargs": dict(RECIPES["shapes_watermark_cnn"]["kwargs"]),
        "dataset": RECIPES["shapes_watermark_cnn"]["dataset"],
        "init_seed": _seed,
        "train": {**_TRAIN, "epochs": 10, "seed": _seed},
    }
del _seed, _data, _teacher, _arm
# Chapter 04's controls, SmallCNN (4, 8) students of digits_cnn (1,626 parameters), init and shuffle seed = 1..5,
# batch 128 like the chapter's students (so each is paired by seed with the students the chapter trains):
# ``ls``: from scratch on labels smoothed with eps = 0.1, 30 epochs (the label-smoothing control);
# ``lowlabel_labels``: cross-entropy on the stratified 10 % of the training labels alone (109 images, one batch per
# epoch), 270 epochs = 270 Adam steps; ``lowlabel_kd``: all 1077 training images, T^2 KL to digits_cnn's soft
# targets (T = 4, alpha = 0.9) on every image and the cross-entropy on the labelled ones only, 30 epochs = 270 steps.
_SMALL = {"in_channels": 1, "n_classes": 10, "channels": [4, 8], "image_size": 8}
_LOW_LABEL = {"fraction": 0.1, "subset_seed": 0}
for _seed in range(1, 6):
    _budget = {**_TRAIN, "batch_size": 128, "seed": _seed}
    RECIPES[f"digits_student_ls_seed{_seed}"] = {
        "architecture": "SmallCNN", "kwargs": dict(_SMALL), "dataset": RECIPES["digits_cnn"]["dataset"],
        "init_seed": _seed, "train": {**_budget, "epochs": 30}, "label_smoothing": 0.1,
    }
    RECIPES[f"digits_student_lowlabel_labels_seed{_seed}"] = {
        "architecture": "SmallCNN", "kwargs": dict(_SMALL), "dataset": RECIPES["digits_cnn"]["dataset"],
        "init_seed": _seed, "train": {**_budget, "epochs": 270}, "low_label": dict(_LOW_LABEL),
    }
    RECIPES[f"digits_student_lowlabel_kd_seed{_seed}"] = {
        "architecture": "SmallCNN", "kwargs": dict(_SMALL), "dataset": RECIPES["digits_cnn"]["dataset"],
        "init_seed": _seed, "train": {**_budget, "epochs": 30}, "low_label": dict(_LOW_LABEL),
        "distill": {"teacher": "digits_cnn", "temperature": 4.0, "alpha": 0.9},
    }
del _seed, _budget

# Chapter 01's Liu et al. control: the architecture that shrink_conv_pair leaves (8 of conv1's 16 filters),
# SmallCNN (8, 32) on digits, trained from scratch with the pruned model's whole budget (30 epochs of the dense
# digits_cnn + 10 of fine-tuning = 40 epochs), init and shuffle seed = 0..4.
for _seed in range(5):
    RECIPES[f"digits_cnn_8x32_seed{_seed}"] = {
        "architecture": "SmallCNN",
        "kwargs": {**RECIPES["digits_cnn"]["kwargs"], "channels": [8, 32]},
        "dataset": RECIPES["digits_cnn"]["dataset"],
        "init_seed": _seed,
        "train": {**_TRAIN, "epochs": 40, "seed": _seed},
    }
del _seed

# Chapter 06's black boxes for the surrogate study: MLP(30, (32, 16), 2) on breast_cancer, 40 epochs, lr 3e-3,
# init and shuffle seed = 0..4 (seed 0 is the MLP the chapter's surrogate tables explain; the recipe of
# models.train_seeds(..., epochs=40, lr=3e-3), bit for bit).
for _seed in range(5):
    RECIPES[f"cancer_mlp_seed{_seed}"] = {
        "architecture": "MLP",
        "kwargs": {"in_features": 30, "hidden": [32, 16], "n_classes": 2},
        "dataset": {"name": "tabular", "kwargs": {"name": "breast_cancer", "seed": 0}},
        "init_seed": _seed,
        "train": {**_TRAIN, "epochs": 40, "seed": _seed},
    }
del _seed


class CheckpointError(ValueError):
    """A checkpoint file or its manifest entry is wrong (e.g. hash mismatch)."""


class CheckpointMissingError(CheckpointError, FileNotFoundError):
    """A checkpoint file or the manifest is missing."""


# ------------------------------------------------------------------ manifest

def _root(root: Path | str | None) -> Path:
    if root is None:
        return DATA_ROOT
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a pathlib.Path, a str or None, got {root!r}")
    return Path(root)


def _read_manifest(root: Path) -> dict:
    path = root / "checkpoints" / _MANIFEST
    if not path.is_file():
        raise CheckpointMissingError(
            f"checkpoint manifest {path} is missing; rebuild it with "
            f"`{REGENERATE_COMMAND}`"
        )
    return json.loads(path.read_text())


def available(root: Path | str | None = None) -> list[str]:
    """Names of the checkpoints listed in the manifest, sorted.

    Parameters
    ----------
    root : Path, str or None, default=None
        Data directory holding ``checkpoints/``; None is the course's
        ``data/``.

    Returns
    -------
    list of str

    Examples
    --------
    >>> "digits_cnn" in available()
    True
    """
    return sorted(_read_manifest(_root(root))["checkpoints"])


def info(name: str, root: Path | str | None = None) -> dict:
    """The manifest entry of checkpoint ``name`` (a copy).

    Raises
    ------
    ValueError
        If ``name`` is not in the manifest; the message lists the names.
    """
    entries = _read_manifest(_root(root))["checkpoints"]
    if name not in entries:
        raise ValueError(f"name must be one of {sorted(entries)}, got {name!r}")
    return json.loads(json.dumps(entries[name]))


def dataset(name: str, root: Path | str | None = None) -> data.Split:
    """The data split checkpoint ``name`` was trained and tested on.

    Examples
    --------
    >>> tuple(dataset("digits_mlp").X_test.shape)
    (360, 64)
    """
    spec = info(name, root)["dataset"]
    return _DATASETS[spec["name"]](**spec["kwargs"])


# ----------------------------------------------------------------------- load

def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _build(entry: dict) -> nn.Module:
    kwargs = {k: tuple(v) if isinstance(v, list) else v
              for k, v in entry["kwargs"].items()}
    return _ARCHITECTURES[entry["architecture"]](**kwargs)


def _read_verified(name: str, entry: dict, root: Path) -> bytes:
    """Bytes of the checkpoint file, after checking them against the manifest."""
    path = root / "checkpoints" / entry["file"]
    fix = f"regenerate it with `{REGENERATE_COMMAND} --only {name}`"
    if not path.is_file():
        raise CheckpointMissingError(f"checkpoint file {path} is missing (manifest sha256 "
            f"{entry['sha256']}, got no file); {fix}"
        )
    blob = path.read_bytes()
    actual = _sha256(blob)
    if actual != entry["sha256"]:
        raise CheckpointError(
            f"checkpoint file {path} is corrupted or stale: sha256 must be "
            f"{entry['sha256']} (manifest), got {actual}; {fix}"
        )
    return blob


def load(name: str, root: Path | str | None = None) -> nn.Module:
    """Build checkpoint ``name``'s model, verify its file, load its weights.

    The file's SHA-256 is compared with the manifest *before* anything is
    unpickled; the weights are then read from those same bytes with
    ``torch.load(..., weights_only=True)``.

    Parameters
    ----------
    name : str
        One of :func:`available`.
    root : Path, str or None, default=None
        Data directory holding ``checkpoints/``; None is the course's
        ``data/``.

    Returns
    -------
    nn.Module
        In eval mode.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the available names).
    CheckpointMissingError
        If the file or manifest is missing (also a ``FileNotFoundError``).
    CheckpointError
        If the hash differs from the manifest; the message names the file,
        both sums and the regeneration command.

    Examples
    --------
    >>> model = load("shapes_cnn")
    >>> model(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 3])
    """
    root = _root(root)
    entry = info(name, root)
    blob = _read_verified(name, entry, root)
    model = _build(entry)
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def verify(root: Path | str | None = None) -> list[dict]:
    """Check every checkpoint's file against the manifest.

    Returns
    -------
    list of dict
        One per checkpoint: ``name``, ``file``, ``ok`` (bool), ``expected``
        and ``actual`` sha256 (``actual`` is None for a missing file).
    """
    root = _root(root)
    rows = []
    for name, entry in sorted(_read_manifest(root)["checkpoints"].items()):
        path = root / "checkpoints" / entry["file"]
        actual = _sha256(path.read_bytes()) if path.is_file() else None
        rows.append({"name": name, "file": entry["file"], "ok": actual == entry["sha256"],
                     "expected": entry["sha256"], "actual": actual})
    return rows


# ---------------------------------------------------------------- regenerate

@contextmanager
def _deterministic_torch():
    """One thread and deterministic kernels; restores the previous settings."""
    threads = torch.get_num_threads()
    strict = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(strict)
        torch.set_num_threads(threads)


def _distillation_loss(teacher_logits: torch.Tensor, y: torch.Tensor, temperature: float,
                       alpha: float):
    """Hinton et al. (2015): ``alpha T^2 KL(p_T^t || p_T^s) + (1 - alpha) CE(z^s, y)``, batch rows as targets.

    Chapter 04's ``kd_loss``, written out here: core modules do not import chapter modules.
    """
    import torch.nn.functional as F

    def loss(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        soft = F.kl_div(F.log_softmax(out / temperature, dim=1),
                        F.softmax(teacher_logits[rows] / temperature, dim=1), reduction="batchmean")
        return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(out, y[rows])
    return loss


def _labelled_subset(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Chapter 04's ``distillation.labelled_subset``, written out here: a stratified random ``fraction`` per class."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        rows = torch.nonzero(y == c).flatten()
        keep[rows[torch.randperm(len(rows), generator=generator)[:max(1, round(fraction * len(rows)))]]] = True
    return keep


def _partly_labelled_loss(teacher_logits: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor,
                          temperature: float, alpha: float):
    """Chapter 04's low-label loss: ``alpha T^2 KL`` on every row, ``(1 - alpha) CE`` on the labelled rows only."""
    import torch.nn.functional as F

    def loss(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        p_t = F.softmax(teacher_logits[rows] / temperature, dim=1)
        soft = F.kl_div(F.log_softmax(out / temperature, dim=1), p_t, reduction="batchmean")
        mine = labelled[rows]
        hard = F.cross_entropy(out[mine], y[rows][mine]) if mine.any() else out.sum() * 0.0
        return alpha * temperature ** 2 * soft + (1 - alpha) * hard
    return loss


def _train_one(name: str, progress: bool, root: Path | None = None) -> tuple[bytes, dict]:
    """Train checkpoint ``name`` from its recipe; return file bytes and entry.

    A recipe with ``distill`` trains on the distillation loss of its teacher (a checkpoint loaded from
    ``root``) instead of the cross-entropy; ``label_smoothing`` trains on smoothed labels; ``low_label``
    keeps the labels of a stratified fraction of the training split only (chapter 04's low-label regime:
    without ``distill`` the student sees only those images; with it, every image through the teacher).
    """
    import torch.nn.functional as F

    recipe = RECIPES[name]
    split = _DATASETS[recipe["dataset"]["name"]](**recipe["dataset"]["kwargs"])
    with _deterministic_torch():
        X_fit, targets, extra = split.X_train, split.y_train, {}
        labelled = None
        if "low_label" in recipe:
            labelled = _labelled_subset(split.y_train, recipe["low_label"]["fraction"],
                                        recipe["low_label"]["subset_seed"])
        if "distill" in recipe:
            spec = recipe["distill"]
            with torch.no_grad():
                z_t = load(spec["teacher"], root)(split.X_train)
            targets = torch.arange(len(split.y_train))
            if labelled is None:
                extra["loss_fn"] = _distillation_loss(z_t, split.y_train, spec["temperature"], spec["alpha"])
            else:
                extra["loss_fn"] = _partly_labelled_loss(z_t, split.y_train, labelled, spec["temperature"],
                                                         spec["alpha"])
        elif labelled is not None:
            X_fit, targets = split.X_train[labelled], split.y_train[labelled]
        if "label_smoothing" in recipe:
            eps = recipe["label_smoothing"]
            extra["loss_fn"] = lambda out, target: F.cross_entropy(out, target, label_smoothing=eps)
        torch.manual_seed(recipe["init_seed"])
        model = _build(recipe)
        start = time.perf_counter()
        models.train(model, X_fit, targets, progress=progress,
                     **recipe["train"], **extra)
        seconds = time.perf_counter() - start
        state = model.state_dict()
        if recipe.get("store_dtype") == "float16":      # tied tensors stay one tensor (stored once)
            halves: dict[int, torch.Tensor] = {}
            state = {k: halves.setdefault(id(v), v.half()) for k, v in state.items()}
            model.load_state_dict(state)                 # the accuracy below is the stored weights'
        buffer = io.BytesIO()  # in memory: the archive name is the same everywhere
        torch.save(state, buffer)
        blob = buffer.getvalue()
        entry = {
            "file": f"{name}.pt",
            "sha256": _sha256(blob),
            "size_bytes": len(blob),
            **json.loads(json.dumps(recipe)),
            "test_accuracy": round(models.evaluate(model, split.X_test, split.y_test), 4),
            "train_seconds": round(seconds, 2),
            "regenerate": f"{REGENERATE_COMMAND} --only {name}",
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
        if recipe["dataset"]["name"] == "shapes_watermark":
            marked = data.shapes_watermark(**recipe["dataset"]["kwargs"],
                                           test_watermark=True)
            entry["test_accuracy_watermarked"] = round(
                models.evaluate(model, marked.X_test, marked.y_test), 4)
    return blob, entry


def regenerate(
    names: list[str] | None = None,
    root: Path | str | None = None,
    progress: bool = False,
) -> dict:
    """Retrain checkpoints deterministically; rewrite their files and manifest.

    Training runs on one thread with ``torch.use_deterministic_algorithms``,
    so the same machine gives the same bytes. Entries of checkpoints not in
    ``names`` are kept from the existing manifest.

    Parameters
    ----------
    names : list of str or None, default=None
        Checkpoints to retrain; None means all of ``RECIPES``.
    root : Path, str or None, default=None
        Data directory; files go to ``root / "checkpoints"``.
    progress : bool, default=False
        Show training progress bars.

    Returns
    -------
    dict
        The manifest written.
    """
    root = _root(root)
    names = sorted(RECIPES) if names is None else list(names)
    for name in names:
        if name not in RECIPES:
            raise ValueError(f"names must be taken from {sorted(RECIPES)}, got {name!r}")
    folder = root / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.setdefault("checkpoints", {})
    manifest["about"] = (
        "state_dicts of the course's models; load with "
        "course_lib.checkpoints.load(name). Regenerate all with "
        f"`{REGENERATE_COMMAND}`."
    )
    for name in names:
        blob, entry = _train_one(name, progress, root)
        (folder / entry["file"]).write_bytes(blob)
        manifest["checkpoints"][name] = entry
        path.write_text(json.dumps(manifest, indent=2) + "\n")     # a later student loads this teacher
    manifest["checkpoints"] = dict(sorted(manifest["checkpoints"].items()))
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ----------------------------------------------------------------------- CLI

def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.checkpoints",
        description="Verify or regenerate the course's trained checkpoints.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--verify", action="store_true", help="check all sha256 sums")
    action.add_argument("--regenerate", action="store_true", help="retrain and rewrite")
    parser.add_argument("--only", choices=sorted(RECIPES), action="append",
                        help="regenerate only this checkpoint (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="data directory to write to (default: the course's data/)")
    args = parser.parse_args(argv)
    if args.regenerate:
        manifest = regenerate(args.only, args.out, progress=True)
        rows = [{"name": n, **e} for n, e in manifest["checkpoints"].items()
                if args.only is None or n in args.only]
        _print_table(rows, ["name", "size_bytes", "test_accuracy", "train_seconds", "sha256"])
        return 0
    rows = verify(args.out)
    for r in rows:
        r["status"] = "ok" if r["ok"] else ("MISSING" if r["actual"] is None else "MISMATCH")
        r["actual"] = (r["actual"] or "-")[:16]
        r["expected"] = r["expected"][:16]
    _print_table(rows, ["name", "file", "status", "expected", "actual"])
    if not all(r["ok"] for r in rows):
        print(f"fix with `{REGENERATE_COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
