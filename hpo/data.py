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
* ``fashion-mnist`` / ``mnist``: the four IDX files (``train-images-idx3-ubyte[.gz]``, ...)
  from ``--data-dir``; Fashion-MNIST defaults to ``/usr/share/datasets/fashion-mnist``
  (Debian package ``dataset-fashion-mnist``). 28x28 grey, repeated to 3 channels.
* ``synthetic``: class prototypes plus noise, learnable in a few epochs; for tests.

Three splits (``holdout=True``, what HPO uses): train, validation (what a search sees) and
test (what a final run reports, never seen by a search). Where the source has a test set
(CIFAR, TinyImageNet's val folder, the MNIST t10k files) it is the test split and the
validation split is a seeded, stratified tenth of the training set; digits is split
60/20/20 and synthetic draws a third set. ``holdout=False`` keeps the two-way splits of the
first release (train and val). ``train_size``/``eval_size`` cap the splits with a seeded,
stratified subset (small budgets). ``Dataset.fingerprint()`` is a digest of the content
(pixels and labels, or file names and sizes for TinyImageNet), so machines that hold the
same data under different paths share a study.

Augmentation (train only) is done with tensor ops on whole batches: zero-pad by ``pad`` and
random-crop back, then horizontal flip with probability 0.5: pad 4 for CIFAR as in the
paper, pad ``image_size // 16`` for TinyImageNet (the paper's random rotation is left out),
none for digits (a flipped digit is another glyph). Every failure to find or parse data is a
one-line ``DataError`` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fxprune.errors import ConfigError, DataError
from hpo import registry

DIGITS_IMAGE_SIZE = 16
SYNTHETIC_IMAGE_SIZE = 8
CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
VAL_FRACTION = 0.1  # of the training set, where the source has its own test set


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

    def content_digest(self) -> str:
        return hashlib.sha1(self._images.contiguous().numpy().tobytes()).hexdigest()

    def subset(self, indices: torch.Tensor) -> TensorImageSet:
        return TensorImageSet(self._images[indices], self.labels[indices])


class FileImageSet:
    """A split of image files decoded on demand (TinyImageNet: 100k JPEGs stay on disk)."""

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, size: int) -> None:
        self._paths = list(paths)
        self.labels = labels.to(torch.int64)
        self._size = size

    def content_digest(self) -> str:
        """File names and sizes (hashing 100k JPEGs would take minutes)."""
        digest = hashlib.sha1(str(self._size).encode())
        for path in self._paths:
            digest.update(f"{path.parent.name}/{path.name}:{path.stat().st_size};".encode())
        return digest.hexdigest()

    def subset(self, indices: torch.Tensor) -> FileImageSet:
        return FileImageSet([self._paths[i] for i in indices.tolist()], self.labels[indices],
                            self._size)

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
    """Train, validation and (with ``holdout``) test splits with their normalisation and
    training augmentation."""

    name: str
    train: ImageSet
    val: ImageSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = Augment()
    test: ImageSet | None = None

    def split(self, name: str) -> ImageSet:
        """The split called ``name``: "train", "val" or "test"."""
        found = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if found is None:
            raise ConfigError(f"dataset {self.name} has no {name!r} split"
                              + (" (loaded without holdout)" if name == "test" else ""))
        return found

    def fingerprint(self) -> str:
        """A digest of the content of every split (see the module docstring)."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            digest = hashlib.sha1(self.name.encode())
            for name in ("train", "val", "test"):
                part = {"train": self.train, "val": self.val, "test": self.test}[name]
                if part is None:
                    continue
                digest.update(name.encode())
                digest.update(part.labels.numpy().tobytes())
                content = getattr(part, "content_digest", None)
                digest.update(content().encode() if content is not None else b"")
            cached = digest.hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", cached)
        return cached

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
        images_set = self.split(split)
        images = images_set.images(indices)
        if generator is not None:
            images = augment_batch(images, self.augment, generator)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std, images_set.labels[indices]

    def summary(self) -> dict[str, object]:
        return {"name": self.name, "train": len(self.train), "val": len(self.val),
                "test": len(self.test) if self.test is not None else 0,
                "fingerprint": self.fingerprint(),
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

DATASETS = registry.DATASETS


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, seed: int = 0, image_size: int | None = None,
    holdout: bool = False, train_size: int | None = None, eval_size: int | None = None,
) -> Dataset:
    """The dataset ``name`` (one of ``DATASETS``); see the module docstring."""
    if image_size is not None and image_size < 4:
        raise ConfigError(f"image size {image_size} is too small; use 4 or more pixels")
    for option, value in (("--train-size", train_size), ("--eval-size", eval_size)):
        if value is not None and value < 2:
            raise ConfigError(f"{option} must be at least 2, got {value}")
    data = _load_source(name, data_dir, seed, image_size, holdout)
    return _capped(data, train_size, eval_size, seed)


def _load_source(name: str, data_dir: str | Path | None, seed: int, image_size: int | None,
                 holdout: bool) -> Dataset:
    if name == "digits":
        return digits_dataset(seed=seed, image_size=image_size or DIGITS_IMAGE_SIZE,
                              holdout=holdout)
    if name == "synthetic":
        return synthetic_dataset(seed=seed, image_size=image_size or SYNTHETIC_IMAGE_SIZE,
                                 test_size=128 if holdout else 0)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "fashion-mnist" and data_dir is None:
        data_dir = FASHION_MNIST_DIR
    if data_dir is None:
        raise ConfigError(f"dataset {name} is read from a local folder: pass --data-dir PATH")
    if name in ("fashion-mnist", "mnist"):
        data = idx_dataset(Path(data_dir), name=name, image_size=image_size)
    elif name in ("cifar10", "cifar100"):
        if image_size not in (None, 32):
            raise ConfigError(f"{name} images are 32x32; drop --image-size")
        data = cifar_dataset(Path(data_dir), classes=10 if name == "cifar10" else 100)
    else:
        data = tinyimagenet_dataset(Path(data_dir), image_size=image_size or 64)
    return _with_holdout(data, seed) if holdout else data


def _stratified(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` indices drawn per class in proportion, seeded; sorted."""
    from sklearn.model_selection import train_test_split

    if count >= len(labels):
        return torch.arange(len(labels))
    try:
        picked, _ = train_test_split(np.arange(len(labels)), train_size=count,
                                     random_state=seed, stratify=labels.numpy())
    except ValueError:  # fewer picks than classes, or a class of one: plain seeded draw
        picked = np.random.default_rng(seed).permutation(len(labels))[:count]
    return torch.from_numpy(np.sort(picked))


def _with_holdout(data: Dataset, seed: int) -> Dataset:
    """The source's test set becomes the test split; validation is a seeded, stratified
    tenth of the training set, the rest stays training."""
    count = max(1, round(VAL_FRACTION * len(data.train)))
    val_index = _stratified(data.train.labels, count, seed + 104729)
    rest = torch.ones(len(data.train), dtype=torch.bool)
    rest[val_index] = False
    train, val = data.train, data.train
    return Dataset(data.name, train.subset(torch.nonzero(rest).flatten()),  # type: ignore[attr-defined]
                   val.subset(val_index), data.num_classes, data.mean,  # type: ignore[attr-defined]
                   data.std, data.augment, test=data.val)


def _capped(data: Dataset, train_size: int | None, eval_size: int | None, seed: int) -> Dataset:
    """Seeded, stratified subsets of at most ``train_size`` / ``eval_size`` examples."""
    if train_size is None and eval_size is None:
        return data

    def cap(part: ImageSet | None, size: int | None, salt: int) -> ImageSet | None:
        if part is None or size is None or size >= len(part):
            return part
        return part.subset(_stratified(part.labels, size, seed + salt))  # type: ignore[attr-defined]

    return Dataset(data.name, cap(data.train, train_size, 1), cap(data.val, eval_size, 2),
                   data.num_classes, data.mean, data.std, data.augment,
                   test=cap(data.test, eval_size, 3))


def digits_dataset(*, seed: int = 0, image_size: int = DIGITS_IMAGE_SIZE,
                   holdout: bool = False) -> Dataset:
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
    test_idx = None
    if holdout:  # 60/20/20: the test fifth comes out of the training part
        train_idx, test_idx = train_test_split(
            train_idx, test_size=0.25, random_state=seed + 1, stratify=digits.target[train_idx])
        test_idx = torch.from_numpy(test_idx)
    return _in_memory("digits", images, labels, torch.from_numpy(train_idx),
                      torch.from_numpy(val_idx), num_classes=10, augment=Augment(),
                      test_idx=test_idx)


def synthetic_dataset(
    *, seed: int = 0, image_size: int = SYNTHETIC_IMAGE_SIZE, num_classes: int = 4,
    train_size: int = 256, val_size: int = 128, test_size: int = 0,
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
    test_idx = None
    if test_size:  # drawn after the others, so train and val are those of test_size=0
        test_labels = torch.arange(test_size) % num_classes
        test_noise = 0.2 * torch.randn((test_size, 3, image_size, image_size),
                                       generator=generator)
        test_images = ((prototypes[test_labels] + test_noise).clamp(0, 1) * 255).round()
        images = torch.cat([images, test_images.to(torch.uint8)])
        labels = torch.cat([labels, test_labels])
        test_idx = torch.arange(count, count + test_size)
    return _in_memory("synthetic", images, labels, indices[:train_size], indices[train_size:],
                      num_classes=num_classes, augment=Augment(pad=1), test_idx=test_idx)


def _in_memory(
    name: str, images: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor,
    val_idx: torch.Tensor, *, num_classes: int, augment: Augment,
    test_idx: torch.Tensor | None = None,
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
        test=None if test_idx is None else TensorImageSet(images[test_idx], labels[test_idx]),
    )


# --- MNIST-style IDX files -------------------------------------------------------------------

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_STATS = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}


def _idx_path(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: missing {stem}[.gz] (the MNIST IDX files); for Fashion-MNIST "
                    "install the Debian package dataset-fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped): big-endian magic ``0x0000 <type> <ndim>``, the
    dimension sizes, then the data; only unsigned bytes (type 0x08) occur in MNIST."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: {len(raw) - header} data bytes, header says {expected} "
                        f"for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def idx_dataset(folder: Path, *, name: str = "fashion-mnist",
                image_size: int | None = None) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX files; t10k is the second split."""
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    splits = []
    for split in ("train", "test"):
        images_file, labels_file = (_idx_path(folder, stem) for stem in _IDX_FILES[split])
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{images_file}: images {images.shape} and {labels_file}: labels "
                            f"{labels.shape} do not match")
        if labels.size and labels.max() > 9:
            raise DataError(f"{labels_file}: labels outside 0..9")
        pixels = torch.from_numpy(images.copy())[:, None]  # (N, 1, 28, 28) uint8
        if image_size is not None and image_size != pixels.shape[-1]:
            pixels = F.interpolate(pixels.float(), size=(image_size, image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
            pixels = pixels.clamp(0, 255).round().to(torch.uint8)
        splits.append((pixels.repeat(1, 3, 1, 1), torch.from_numpy(labels.astype(np.int64))))
    mean, std = _IDX_STATS[name]
    return Dataset(
        name=name, train=TensorImageSet(*splits[0]), val=TensorImageSet(*splits[1]),
        num_classes=10, mean=(mean,) * 3, std=(std,) * 3, augment=Augment(pad=2, hflip=name == "fashion-mnist"),
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
    "idx_dataset",
    "load_dataset",
    "read_idx",
    "synthetic_dataset",
    "tinyimagenet_dataset",
]
