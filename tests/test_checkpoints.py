"""Tests of course_lib.checkpoints: shipped files, hashes, regeneration."""

import hashlib
import json
import shutil

import pytest
import torch

from course_lib import checkpoints, models

NAMES = [*(f"cancer_mlp_seed{s}" for s in range(5)), "digits_cnn", *(f"digits_cnn_8x32_seed{s}" for s in range(5)), "digits_mlp",
         *(f"digits_student_{arm}_seed{s}" for arm in ("lowlabel_kd", "lowlabel_labels", "ls") for s in range(1, 6)),
         "recall_gpt", *(f"recall_gpt_seed{s}" for s in range(1, 5)), "shapes_cnn",
         *(f"shapes_cnn_seed{s}" for s in range(1, 6)),
         *(f"shapes_student_{arm}_seed{s}" for arm in ("kd", "scratch") for s in range(1, 6)), "shapes_watermark_cnn",
         *(f"shapes_watermark_cnn_seed{s}" for s in range(1, 6)),
         *(f"shapes_watermark_student_{arm}_seed{s}" for arm in ("kd", "scratch") for s in range(1, 6))]


def test_available_lists_shipped_checkpoints():
    assert checkpoints.available() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_load_sha_matches_and_accuracy_matches_manifest(name):
    entry = checkpoints.info(name)
    path = checkpoints.DATA_ROOT / "checkpoints" / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size < 200_000
    model = checkpoints.load(name)
    assert not model.training
    split = checkpoints.dataset(name)
    acc = models.evaluate(model, split.X_test, split.y_test)
    assert abs(acc - entry["test_accuracy"]) <= 0.01


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "shapes_cnn"])
def test_load_shipped_models_are_accurate(name):
    # The loaded model's own predictions, counted here by hand (not the manifest's number, not evaluate()).
    model, split = checkpoints.load(name), checkpoints.dataset(name)
    with torch.no_grad():
        right = int((model(split.X_test).argmax(dim=1) == split.y_test).sum())
    assert right >= 0.95 * len(split.y_test), f"{name}: {right} of {len(split.y_test)} test images right"


def test_load_returns_the_manifest_architecture():
    model = checkpoints.load("shapes_cnn")
    assert isinstance(model, models.SmallCNN) and model.image_size == 16
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)


def test_verify_all_ok():
    assert all(row["ok"] for row in checkpoints.verify())


def _copy_root(tmp_path):
    shutil.copytree(checkpoints.DATA_ROOT / "checkpoints", tmp_path / "checkpoints")
    return tmp_path


def test_load_corrupted_file_raises_checkpoint_error(tmp_path):
    root = _copy_root(tmp_path)
    path = root / "checkpoints" / "digits_mlp.pt"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # flip one bit
    path.write_bytes(bytes(blob))
    expected = checkpoints.info("digits_mlp")["sha256"]
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.load("digits_mlp", root=root)
    message = str(info.value)
    assert "digits_mlp.pt" in message and expected in message
    assert hashlib.sha256(bytes(blob)).hexdigest() in message
    assert "python -m course_lib.checkpoints --regenerate" in message
    assert isinstance(info.value, ValueError)


def test_load_missing_file_raises_file_not_found(tmp_path):
    root = _copy_root(tmp_path)
    (root / "checkpoints" / "digits_cnn.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"digits_cnn\.pt.*--regenerate"):
        checkpoints.load("digits_cnn", root=root)
    assert [r["ok"] for r in checkpoints.verify(root)] == [name != "digits_cnn" for name in NAMES]


def test_load_unknown_name_lists_available():
    with pytest.raises(ValueError, match="name must be one of .*digits_cnn.*shapes_cnn.*, got 'resnet'"):
        checkpoints.load("resnet")


def test_regenerate_twice_gives_identical_bytes(tmp_path):
    name = "digits_mlp"  # the fastest to train
    blobs = []
    for run in ("a", "b"):
        manifest = checkpoints.regenerate([name], root=tmp_path / run)
        blob = (tmp_path / run / "checkpoints" / f"{name}.pt").read_bytes()
        assert hashlib.sha256(blob).hexdigest() == manifest["checkpoints"][name]["sha256"]
        blobs.append(blob)
    assert blobs[0] == blobs[1]
    # the fresh manifest loads through the same checked path
    assert checkpoints.load(name, root=tmp_path / "a")(torch.zeros(1, 64)).shape == (1, 10)


def test_regenerate_restores_torch_settings(tmp_path):
    threads = torch.get_num_threads()
    checkpoints.regenerate(["digits_mlp"], root=tmp_path)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_manifest_records_provenance():
    manifest = json.loads((checkpoints.DATA_ROOT / "checkpoints" / "MANIFEST.json").read_text())
    for name, entry in manifest["checkpoints"].items():
        assert entry["file"] == f"{name}.pt"
        assert {"architecture", "kwargs", "dataset", "train", "test_accuracy",
                "sha256", "regenerate"} <= entry.keys()
        assert entry["regenerate"].startswith("python -m course_lib.checkpoints --regenerate")
