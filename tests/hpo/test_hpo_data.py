"""Datasets: digits, synthetic, CIFAR and TinyImageNet folders (made here, tiny), the
tensor-op augmentation against a per-sample slicing reference, and one-line DataErrors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fxprune.errors import ConfigError, DataError
from hpo.data import Augment, augment_batch, load_dataset


def test_digits_is_upscaled_three_channel_and_stratified():
    data = load_dataset("digits", seed=3)
    assert data.input_shape == (1, 3, 16, 16)
    assert (len(data.train), len(data.val)) == (1437, 360)
    images, _ = data.batch("val", torch.arange(8))
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    assert torch.equal(images[:, 0], images[:, 1])  # grey repeated over the channels
    train_share = torch.bincount(data.train.labels, minlength=10) / len(data.train)
    val_share = torch.bincount(data.val.labels, minlength=10) / len(data.val)
    assert torch.allclose(train_share, val_share, atol=0.01)  # stratified
    # normalised with train statistics: about zero mean, unit spread on the train split
    train_images, _ = data.batch("train", torch.arange(len(data.train)))
    assert abs(float(train_images.mean())) < 0.05


def test_digits_split_follows_the_seed():
    first, again = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    other = load_dataset("digits", seed=2)
    assert torch.equal(first.val.labels, again.val.labels)
    assert not torch.equal(first.val.labels, other.val.labels)
    assert load_dataset("digits", image_size=32).input_shape == (1, 3, 32, 32)


def test_synthetic_is_deterministic():
    a, b = load_dataset("synthetic", seed=0), load_dataset("synthetic", seed=0)
    assert torch.equal(a.batch("train", torch.arange(10))[0], b.batch("train", torch.arange(10))[0])
    assert a.num_classes == 4 and a.input_shape == (1, 3, 8, 8)


def reference_augment(images: torch.Tensor, pad: int, seed: int) -> torch.Tensor:
    """Per-sample slicing with the same random draws, in the same order."""
    generator = torch.Generator().manual_seed(seed)
    count, _, height, width = images.shape
    top = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    out = []
    for i in range(count):
        crop = padded[i, :, top[i]:top[i] + height, left[i]:left[i] + width]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_augmentation_matches_slicing_reference():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    got = augment_batch(images, Augment(pad=4, hflip=True), torch.Generator().manual_seed(7))
    assert torch.equal(got, reference_augment(images, 4, seed=7))
    assert not torch.equal(got, images)


def write_cifar(folder: Path, classes: int = 10, per_batch: int = 6) -> Path:
    layout = {10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] +
                   ["test_batch"], b"labels"),
              100: ("cifar-100-python", ["train", "test"], b"fine_labels")}
    name, files, label_key = layout[classes]
    root = folder / name
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for file_name in files:
        batch = {b"batch_label": file_name.encode(),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 label_key: [int(v) for v in rng.integers(0, classes, per_batch)]}
        with open(root / file_name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return root


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_folder(tmp_path: Path, classes: int):
    root = write_cifar(tmp_path, classes)
    data = load_dataset(f"cifar{classes}", tmp_path)  # the parent folder works
    assert (len(data.train), len(data.val)) == ((30, 6) if classes == 10 else (6, 6))
    assert data.input_shape == (1, 3, 32, 32) and data.num_classes == classes
    assert data.augment == Augment(pad=4, hflip=True)
    raw = pickle.loads((root / ("test_batch" if classes == 10 else "test")).read_bytes())
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32))
    assert torch.equal(data.val.images(torch.tensor([0]))[0], first)  # CHW order kept
    assert load_dataset(f"cifar{classes}", root).num_classes == classes  # the folder itself


def one_line_data_error(name: str, folder: Path, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        load_dataset(name, folder)
    assert "\n" not in str(info.value)


def test_cifar_errors(tmp_path: Path):
    one_line_data_error("cifar10", tmp_path / "missing", "not found")
    one_line_data_error("cifar10", tmp_path, "no CIFAR-10 batches")
    root = write_cifar(tmp_path)
    (root / "data_batch_3").unlink()
    one_line_data_error("cifar10", tmp_path, "data_batch_3")
    (root / "data_batch_3").write_bytes(b"not a pickle")
    one_line_data_error("cifar10", tmp_path, "not a CIFAR python-pickle batch")
    with open(root / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle)
    one_line_data_error("cifar10", tmp_path, r"expected \(N, 3072\)")
    with open(root / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 99]}, handle)
    one_line_data_error("cifar10", tmp_path, "labels outside")


class _Hostile:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_cifar_pickle_cannot_run_code(tmp_path: Path):
    root = write_cifar(tmp_path)
    with open(root / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": _Hostile(), b"labels": []}, handle)
    one_line_data_error("cifar10", tmp_path, "refusing to load posix.getcwd")


def write_tinyimagenet(folder: Path) -> Path:
    from PIL import Image

    root = folder / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    rng = np.random.default_rng(0)
    for wnid in wnids:
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{wnid}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(wnids * 2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tinyimagenet_folder_loads_lazily(tmp_path: Path):
    root = write_tinyimagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path)
    assert (len(data.train), len(data.val), data.num_classes) == (6, 4, 2)
    assert data.val.labels.tolist() == [0, 1, 0, 1]
    images, labels = data.batch("train", torch.tensor([0, 5]), torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 64, 64) and labels.tolist() == [0, 1]
    assert load_dataset("tinyimagenet", tmp_path, image_size=32).input_shape == (1, 3, 32, 32)
    # a corrupt image is found when its batch is read, and named
    (root / "train" / "n01443537" / "images" / "n01443537_0.JPEG").write_bytes(b"junk")
    with pytest.raises(DataError, match="n01443537_0.JPEG"):
        data.batch("train", torch.tensor([0]))


def test_tinyimagenet_errors(tmp_path: Path):
    one_line_data_error("tinyimagenet", tmp_path, "no train/ folder")
    root = write_tinyimagenet(tmp_path)
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    one_line_data_error("tinyimagenet", tmp_path, r"val_annotations.txt:1: expected")
    annotations.write_text("val_9.JPEG\tn01443537\n")
    one_line_data_error("tinyimagenet", tmp_path, "is missing")
    annotations.unlink()
    one_line_data_error("tinyimagenet", tmp_path, "missing val/val_annotations.txt")


def test_bad_names_and_options():
    # mnist became a known (IDX) source; another name stands for the unknown one
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(ConfigError, match="--data-dir"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(ConfigError, match="too small"):
        load_dataset("digits", image_size=2)
