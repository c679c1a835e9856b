"""Image-classification data for HPO, with no download at run time.

``load_dataset(name, data_dir)`` returns a ``Dataset``: uint8 train/val images plus the
per-channel normalisation and the training augmentation. Sources:

* ``digits``: scikit-learn's shipped 8x8 digits, upscaled (bilinear) to 16x16 by default
  and repeated to 3 channels so CIFAR-style models take it; stratified 80/20 split by seed.
* ``cifar10`` / ``cifar100``: a local folder in the standard python-pickle batch format
  (``cifar-10-batches-py`` / ``cifar-100-python``, or its parent). The pickles are read
  with an unpickler that only builds numpy arrays, so a hostile file cannot run code.
* ``tinyimagenet``: the standard ``tiny-imagenet-200`` layout (``train/<wnid>/images/*.JPEG``,
  ``val/val_annotations.txt``, ``val/images``); images are decoded lazily, per batch.
* ``synthetic``: class prototypes plus noise, learnable in a few epochs; for tests.

Augmentation (train only) is done with tensor ops on whole batches: zero-pad by ``pad`` and
random-crop back, then horizontal flip with probability 0.5: pad 4 for CIFAR as in the
paper, pad ``image_size // 16`` for TinyImageNet (the paper's random rotation is left out),
none for digits (a flipped digit is another glyph). Every failure to find or parse data is a
one-line ``DataError`` naming the file.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fxprune.errors import ConfigError, DataError

DIGITS_IMAGE_SIZE = 16
SYNTHETIC_IMAGE_SIZE = 8
CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """Training augmentation: zero-pad ``pad`` pixels and random-crop back; random h-flip."""

    pad: int = 0
    hflip: bool = False


class ImageSet(Protocol):
    """A split: ``labels`` (N,) int64 and uint8 images fetched by index."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def images(self, indices: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) uint8
        ...


class TensorImageSet:
    """A split held in memory as one uint8 tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise DataError(f"bad split: images {tuple(images.shape)} {images.dtype}, "
                            f"labels {tuple(labels.shape)}")
        self._images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self._images[indices]


class FileImageSet:
    """A split of image files decoded on demand (TinyImageNet: 100k JPEGs stay on disk)."""

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, size: int) -> None:
        self._paths = list(paths)
        self.labels = labels.to(torch.int64)
        self._size = size

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        batch = torch.empty((len(indices), 3, self._size, self._size), dtype=torch.uint8)
        for row, index in enumerate(indices.tolist()):
            path = self._paths[index]
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB")
                    if rgb.size != (self._size, self._size):
                        rgb = rgb.resize((self._size, self._size))
                    array = np.asarray(rgb, dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as err:
                raise DataError(f"{path}: cannot decode image ({err})") from None
            batch[row] = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)
        return batch


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation splits with their normalisation and training augmentation."""

    name: str
    train: ImageSet
    val: ImageSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = Augment()

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Example-input shape for ``load_model``: (1, C, H, W)."""
        sample = self.val.images(torch.zeros(1, dtype=torch.int64))
        return (1, *sample.shape[1:])

    def batch(
        self, split: str, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images (B, C, H, W) and labels (B,); ``generator`` given means
        training: the augmentation is applied with it."""
        images_set = self.train if split == "train" else self.val
        images = images_set.images(indices)
        if generator is not None:
            images = augment_batch(images, self.augment, generator)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std, images_set.labels[indices]

    def summary(self) -> dict[str, object]:
        return {"name": self.name, "train": len(self.train), "val": len(self.val),
                "num_classes": self.num_classes, "input_shape": list(self.input_shape[1:]),
                "augment": {"pad": self.augment.pad, "hflip": self.augment.hflip}}


def augment_batch(
    images: torch.Tensor, augment: Augment, generator: torch.Generator
) -> torch.Tensor:
    """Pad-and-random-crop plus random horizontal flip on a (B, C, H, W) batch."""
    count, channels, height, width = images.shape
    if augment.pad > 0:
        pad = augment.pad
        padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros
        top = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
        left = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
        rows = (top[:, None] + torch.arange(height))[:, None, :, None]  # (B, 1, H, 1)
        cols = (left[:, None] + torch.arange(width))[:, None, None, :]  # (B, 1, 1, W)
        batch_index = torch.arange(count)[:, None, None, None]
        channel_index = torch.arange(channels)[None, :, None, None]
        images = padded[batch_index, channel_index, rows, cols]  # (B, C, H, W)
    if augment.hflip:
        flip = torch.rand(count, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


# --- the sources ---------------------------------------------------------------------------

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet", "synthetic")


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, seed: int = 0, image_size: int | None = None
) -> Dataset:
    """The dataset ``name`` (one of ``DATASETS``); see the module docstring."""
    if image_size is not None and image_size < 4:
        raise ConfigError(f"image size {image_size} is too small; use 4 or more pixels")
    if name == "digits":
        return digits_dataset(seed=seed, image_size=image_size or DIGITS_IMAGE_SIZE)
    if name == "synthetic":
        return synthetic_dataset(seed=seed, image_size=image_size or SYNTHETIC_IMAGE_SIZE)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        raise ConfigError(f"dataset {name} is read from a local folder: pass --data-dir PATH")
    if name in ("cifar10", "cifar100"):
        if image_size not in (None, 32):
            raise ConfigError(f"{name} images are 32x32; drop --image-size")
        return cifar_dataset(Path(data_dir), classes=10 if name == "cifar10" else 100)
    return tinyimagenet_dataset(Path(data_dir), image_size=image_size or 64)


def digits_dataset(*, seed: int = 0, image_size: int = DIGITS_IMAGE_SIZE) -> Dataset:
    """scikit-learn's 1797 8x8 digits, upscaled to ``image_size``, 3 channels, split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    if image_size != 8:
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=digits.target
    )
    return _in_memory("digits", images, labels, torch.from_numpy(train_idx),
                      torch.from_numpy(val_idx), num_classes=10, augment=Augment())


def synthetic_dataset(
    *, seed: int = 0, image_size: int = SYNTHETIC_IMAGE_SIZE, num_classes: int = 4,
    train_size: int = 256, val_size: int = 128,
) -> Dataset:
    """Smooth random class prototypes plus pixel noise: a few epochs separate the classes."""
    generator = torch.Generator().manual_seed(seed)
    # Each class: its own mean colour (a distinct corner of the RGB cube while there are
    # enough) plus a smooth random 4x4 pattern, so a few SGD steps separate the classes.
    corners = torch.tensor([[(c >> b) & 1 for b in range(3)] for c in range(8)]).float()
    colours = corners[torch.randperm(8, generator=generator)].repeat(num_classes // 8 + 1, 1)
    colours = colours[:num_classes] + 0.1 * torch.randn((num_classes, 3), generator=generator)
    pattern = torch.rand((num_classes, 3, 4, 4), generator=generator)
    coarse = 0.2 + 0.35 * colours[:, :, None, None] + 0.25 * pattern
    prototypes = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)  # (K, 3, S, S)
    count = train_size + val_size
    labels = torch.arange(count) % num_classes
    labels = labels[torch.randperm(count, generator=generator)]
    noise = 0.2 * torch.randn((count, 3, image_size, image_size), generator=generator)
    images = ((prototypes[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    indices = torch.arange(count)
    return _in_memory("synthetic", images, labels, indices[:train_size], indices[train_size:],
                      num_classes=num_classes, augment=Augment(pad=1))


def _in_memory(
    name: str, images: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor,
    val_idx: torch.Tensor, *, num_classes: int, augment: Augment,
) -> Dataset:
    """Split an in-memory set; normalisation statistics come from the train split only."""
    train_pixels = images[train_idx].float() / 255.0
    mean = tuple(train_pixels.mean(dim=(0, 2, 3)).tolist())
    std = tuple(max(s, 1e-3) for s in train_pixels.std(dim=(0, 2, 3)).tolist())
    return Dataset(
        name=name,
        train=TensorImageSet(images[train_idx], labels[train_idx]),
        val=TensorImageSet(images[val_idx], labels[val_idx]),
        num_classes=num_classes, mean=mean, std=std, augment=augment,
    )


# --- CIFAR -------------------------------------------------------------------------------

_CIFAR_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


# The only globals a CIFAR pickle needs: numpy's array reconstruction.
_PICKLE_ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
})


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays, and refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"CIFAR batch file missing: {path}")
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"{path}: not a CIFAR python-pickle batch ({type(err).__name__}: "
                        f"{err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: expected a dict with b'data' and {label_key!r}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: data of shape {data.shape} with {len(labels)} labels; "
                        "expected (N, 3072) and N labels")
    images = torch.from_numpy(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def cifar_dataset(data_dir: Path, classes: int = 10) -> Dataset:
    """CIFAR-10/100 from the python-pickle batches; the test batch is the validation split."""
    folder_name, train_files, val_files, label_key = _CIFAR_LAYOUT[classes]
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    folder = data_dir / folder_name if (data_dir / folder_name).is_dir() else data_dir
    if not (folder / train_files[0]).is_file():
        raise DataError(f"{data_dir}: no CIFAR-{classes} batches ({train_files[0]}) here or "
                        f"in {folder_name}/; expected the python-pickle version")
    splits = []
    for names in (train_files, val_files):
        parts = [_read_cifar_batch(folder / name, label_key) for name in names]
        splits.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    (train_images, train_labels), (val_images, val_labels) = splits
    for split_labels, where in ((train_labels, "train"), (val_labels, "test")):
        if split_labels.numel() and (split_labels.min() < 0 or split_labels.max() >= classes):
            raise DataError(f"{folder}: {where} labels outside 0..{classes - 1}")
    return Dataset(
        name=f"cifar{classes}",
        train=TensorImageSet(train_images, train_labels),
        val=TensorImageSet(val_images, val_labels),
        num_classes=classes, mean=CIFAR_MEAN[classes], std=CIFAR_STD[classes],
        augment=Augment(pad=4, hflip=True),
    )


# --- TinyImageNet --------------------------------------------------------------------------


def tinyimagenet_dataset(data_dir: Path, image_size: int = 64) -> Dataset:
    """TinyImageNet-200's standard layout; file lists are read now, pixels per batch."""
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    root = data_dir / "tiny-imagenet-200" if (data_dir / "tiny-imagenet-200").is_dir() else data_dir
    train_dir, annotations = root / "train", root / "val" / "val_annotations.txt"
    if not train_dir.is_dir():
        raise DataError(f"{root}: no train/ folder; expected train/<wnid>/images/*.JPEG")
    wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not wnids:
        raise DataError(f"{train_dir}: no class folders")
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        files = sorted((train_dir / wnid / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"{train_dir / wnid / 'images'}: no .JPEG files")
        train_paths += files
        train_labels += [class_index[wnid]] * len(files)
    if not annotations.is_file():
        raise DataError(f"{root}: missing val/val_annotations.txt")
    val_paths: list[Path] = []
    val_labels: list[int] = []
    lines = annotations.read_text(encoding="utf-8", errors="replace").splitlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_index:
            raise DataError(f"{annotations}:{line_number}: expected 'file<TAB>wnid...' with a "
                            f"wnid from train/, got {line[:60]!r}")
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise DataError(f"{annotations}:{line_number}: image {path} is missing")
        val_paths.append(path)
        val_labels.append(class_index[fields[1]])
    if not val_paths:
        raise DataError(f"{annotations}: no validation images listed")
    return Dataset(
        name="tinyimagenet",
        train=FileImageSet(train_paths, torch.tensor(train_labels), image_size),
        val=FileImageSet(val_paths, torch.tensor(val_labels), image_size),
        num_classes=len(wnids), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        augment=Augment(pad=image_size // 16, hflip=True),
    )


__all__ = [
    "DATASETS",
    "Augment",
    "Dataset",
    "FileImageSet",
    "ImageSet",
    "TensorImageSet",
    "augment_batch",
    "cifar_dataset",
    "digits_dataset",
    "load_dataset",
    "synthetic_dataset",
    "tinyimagenet_dataset",
]
