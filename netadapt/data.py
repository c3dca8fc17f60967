"""Datasets as in-memory tensors: IDX files (Fashion-MNIST) or an ImageFolder tree, split
into train / holdout / test, and seeded, step-addressable training batches.

Images are kept as uint8 at their stored size (IDX: as in the file, 60k Fashion-MNIST
images take 47 MB; ImageFolder: decoded once at the resolution asked for); each batch is
resized to the split's ``size`` and converted to normalised floats on the fly, which on a
CPU costs far less than the network's forward pass. So the same data serves a 32 px
search and a 224 px deployment (``Data.at``) without a 3 GB copy.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = ("install it with `sudo apt-get install dataset-fashion-mnist` or pass a data "
                "directory")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
# torchvision's ImageNet statistics: user checkpoints are ImageNet-trained, and inherited
# first-layer filters expect inputs normalised this way. Grey uses the channel average.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TEST_SEED = 0  # a carved test split must not move with --seed: results stay comparable


@dataclass(frozen=True, eq=False)
class Split:
    """Images (uint8, N x C x H x W, C = 1 or the network's channels) and labels: one
    class per image, or a uint8 class-id mask per image (N x H x W, segmentation)."""

    name: str
    images: Tensor
    labels: Tensor
    in_channels: int  # channels the network wants; grey images are repeated to 3
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None  # (H, W) served; None: as stored

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: Tensor, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """Normalised float images and int64 labels of the items at ``index``."""
        x = self.images[index].to(device, non_blocking=True).float()
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0, 255)
        x = x.div_(255.0)
        if x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, -1, -1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        y = self.labels[index].to(device, non_blocking=True)
        if y.dim() == 3:  # segmentation masks (N x H x W): resized nearest, ids stay ids
            if self.size is not None and tuple(y.shape[-2:]) != self.size:
                y = F.interpolate(y[:, None].float(), size=self.size, mode="nearest")[:, 0]
            y = y.long()
        return (x - mean) / std, y

    def at(self, resolution: int | tuple[int, int]) -> Split:
        """The same images served at ``resolution`` (a side, or (H, W))."""
        size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        return dataclasses.replace(self, size=(int(size[0]), int(size[-1])))

    def every(self, stride: int) -> Split:
        """Every ``stride``-th item: a subset that spans a split stored class by class."""
        if stride == 1:
            return self
        return dataclasses.replace(self, images=self.images[::stride],
                                   labels=self.labels[::stride])

    def batches(self, batch_size: int,
                device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """Every item once, in order (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, len(self))), device)


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> Tensor:
    """The item indices of training step ``step``: epochs are seeded permutations, so any
    step can be computed directly (a resumed run draws the same batches)."""
    per_epoch = max(1, num_items // batch_size)  # the last partial batch is dropped
    epoch, position = divmod(step, per_epoch)
    perm = torch.randperm(num_items, generator=_generator(seed, epoch))
    return perm[position * batch_size:(position + 1) * batch_size]


class TrainBatches:
    """Endless seeded training batches starting at ``step``; ``.step`` is the next one."""

    def __init__(self, split: Split, batch_size: int, seed: int, step: int = 0,
                 device: str | torch.device = "cpu") -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        self.split, self.batch_size, self.seed, self.step = split, batch_size, seed, step
        self.device = device
        self._epoch: tuple[int, Tensor] | None = None

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        n = len(self.split)
        per_epoch = max(1, n // self.batch_size)
        epoch, position = divmod(self.step, per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:  # one permutation per epoch
            self._epoch = (epoch, torch.randperm(n, generator=_generator(self.seed, epoch)))
        index = self._epoch[1][position * self.batch_size:(position + 1) * self.batch_size]
        self.step += 1
        return self.split.batch(index, self.device)


@dataclass(frozen=True, eq=False)
class Data:
    """Train, holdout (carved from training; scores proposals) and test (final report)."""

    train: Split
    holdout: Split
    test: Split
    classes: tuple[str, ...]
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_batches(self, batch_size: int, seed: int, step: int = 0,
                      device: str | torch.device = "cpu") -> TrainBatches:
        """Seeded training batches from ``step`` on (equal seeds give equal batches)."""
        return TrainBatches(self.train, batch_size, seed, step, device)

    @property
    def resolution(self) -> int:
        """The side of the square images every split serves."""
        assert self.train.size is not None
        return self.train.size[0]

    def at(self, resolution: int | tuple[int, int]) -> Data:
        """Every split served at ``resolution`` px (resized per batch from the stored
        images): e.g. the deployed input size of a network searched at a smaller one."""
        return dataclasses.replace(
            self, train=self.train.at(resolution), holdout=self.holdout.at(resolution),
            test=self.test.at(resolution),
            description={**self.description, "resolution": resolution if isinstance(
                resolution, int) else list(resolution)})


def make_splits(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                indices: tuple[Tensor, Tensor, Tensor], in_channels: int, resolution: int
                ) -> tuple[list[Split], Any]:
    """The train / holdout / test splits at ``indices``, and a sha256 of those indices
    (what makes two runs' splits comparable)."""
    mean, std = channel_stats(in_channels)
    size = (resolution, resolution)
    train_idx, holdout_idx, test_idx = indices
    splits = [Split(name, x[idx], y[idx], in_channels, mean, std, size)
              for name, x, y, idx in (("train", train_x, train_y, train_idx),
                                      ("holdout", train_x, train_y, holdout_idx),
                                      ("test", test_x, test_y, test_idx))]
    digest = hashlib.sha256()
    for idx in indices:
        digest.update(idx.numpy().astype("<i8").tobytes())
    return splits, digest


def load_data(source: Path | None, resolution: int, in_channels: int, holdout: int, seed: int,
              *, max_train: int | None = None, max_test: int | None = None,
              test_fraction: float = 0.2) -> Data:
    """Load a dataset and split it.

    ``source``: a directory of IDX files (default: Debian's Fashion-MNIST) or an
    ImageFolder tree (``root/class/*.png``, or ``root/train`` + ``root/val``/``root/test``;
    without a test folder ``test_fraction`` of the images become the test split, the
    same ones for every seed). ``holdout`` training images, chosen by ``seed``, become the
    holdout split; ``max_train`` / ``max_test`` cap the remaining splits (for quick runs).
    """
    if resolution < 8:
        raise DataError(f"resolution must be at least 8 pixels, got {resolution}")
    if in_channels not in (1, 3):
        raise DataError(f"the network takes {in_channels} input channels; images have 1 "
                        "(grey) or 3 (RGB): set in_channels to 1 or 3 in the spec")
    root = Path(source) if source is not None else DEFAULT_DATA_DIR
    if not root.exists():
        hint = INSTALL_HINT if source is None else "pass an existing data directory"
        raise DataError(f"{root}: data directory not found; {hint}")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; pass a directory of IDX files or an "
                        "image folder (one sub-folder per class)")
    if _find_idx(root, "train", "images") is not None:
        fmt = "idx"
        train_x, train_y, test_x, test_y = _load_idx_dir(root)
        classes = _idx_classes(root, train_y, test_y)
    else:
        fmt = "imagefolder"
        train_x, train_y, test_x, test_y, classes = _load_image_folder(
            root, resolution, in_channels, test_fraction)
    train_x, test_x = (_to_channels(x, in_channels) for x in (train_x, test_x))

    n = len(train_y)
    if not 1 <= holdout < n:
        raise DataError(f"holdout must be between 1 and {n - 1} (the training set has {n} "
                        f"images), got {holdout}; choose a smaller holdout")
    perm = torch.randperm(n, generator=_generator(seed, -1))
    holdout_idx = torch.sort(perm[:holdout]).values
    train_idx = torch.sort(perm[holdout:][:max_train]).values
    test_idx = torch.arange(len(test_y))
    if max_test is not None and max_test < len(test_idx):
        test_idx = torch.sort(torch.randperm(len(test_y), generator=_generator(_TEST_SEED, -2))
                              [:max_test]).values

    mean, std = channel_stats(in_channels)
    splits, digest = make_splits(train_x, train_y, test_x, test_y,
                                 (train_idx, holdout_idx, test_idx), in_channels, resolution)
    description = {
        "source": str(root.resolve()), "format": fmt, "resolution": resolution,
        "in_channels": in_channels, "classes": list(classes), "seed": seed,
        "sizes": {s.name: len(s) for s in splits}, "mean": list(mean), "std": list(std),
        "split_sha256": digest.hexdigest()[:16],
    }
    return Data(splits[0], splits[1], splits[2], tuple(classes), description)


# ----------------------------------------------------------------------------- IDX


_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array, checking magic and length."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); re-download or reinstall it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'none'}); "
                        "pass a directory of IDX files such as Fashion-MNIST's")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; re-download or reinstall it")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header < count * dtype.itemsize:
        raise DataError(f"{path}: truncated: its header promises {count * dtype.itemsize} "
                        f"bytes of data for shape {list(dims)}, the file holds "
                        f"{len(raw) - header}; re-download or reinstall it")
    return np.frombuffer(raw, dtype, count, offset=header).reshape(dims)


def _find_idx(root: Path, split: str, kind: str) -> Path | None:
    n = 3 if kind == "images" else 1
    for stem in (f"{split}-{kind}-idx{n}-ubyte", f"{split}-{kind}.idx{n}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    return None


def _load_idx_dir(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    arrays = []
    for split in ("train", "t10k"):
        images_path, labels_path = (_find_idx(root, split, k) for k in ("images", "labels"))
        for kind, path in (("images", images_path), ("labels", labels_path)):
            if path is None:
                n = 3 if kind == "images" else 1
                raise DataError(
                    f"{root}: missing {split}-{kind}-idx{n}-ubyte[.gz]; an IDX directory "
                    "needs train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz)")
        assert images_path is not None and labels_path is not None
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim == 3:
            images = images[:, None]  # grey: N x 1 x H x W
        elif images.ndim == 4 and images.shape[3] in (1, 3):
            images = images.transpose(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
        else:
            raise DataError(f"{images_path}: expected images of shape N x H x W (or N x H x W "
                            f"x 1|3), got {list(images.shape)}")
        if images.dtype != np.uint8:
            raise DataError(f"{images_path}: expected unsigned-byte pixels, got {images.dtype}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{labels_path}: expected one integer label per image, got "
                            f"shape {list(labels.shape)} of {labels.dtype}")
        if len(labels) != len(images):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in "
                            f"{images_path.name}; the two files must belong together")
        if len(labels) and labels.min() < 0:
            raise DataError(f"{labels_path}: negative class labels; labels must be 0..K-1")
        arrays += [torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _idx_classes(root: Path, train_y: Tensor, test_y: Tensor) -> tuple[str, ...]:
    count = int(max(train_y.max().item(), test_y.max().item() if len(test_y) else 0)) + 1
    if count == 10 and "fashion" in root.resolve().name.lower():
        return FASHION_MNIST_CLASSES
    return tuple(str(i) for i in range(count))


# ----------------------------------------------------------------------------- ImageFolder


def _load_image_folder(root: Path, resolution: int, in_channels: int, test_fraction: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = None
    if train_dir != root:
        test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    classes = tuple(sorted(d.name for d in train_dir.iterdir()
                           if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise DataError(f"{train_dir}: no class folders and no IDX files; pass a directory of "
                        "IDX files or an image folder with one sub-folder per class "
                        "(root/cat/1.png)")
    x, y = _decode_tree(train_dir, classes, resolution, in_channels)
    if test_dir is not None:
        unknown = sorted(d.name for d in test_dir.iterdir()
                         if d.is_dir() and not d.name.startswith(".") and d.name not in classes)
        if unknown:
            raise DataError(f"{test_dir / unknown[0]}: class folder not in {train_dir}; the "
                            "test classes must be training classes")
        present = tuple(c for c in classes if (test_dir / c).is_dir())
        test_x, test_y = _decode_tree(test_dir, present, resolution, in_channels)
        test_y = torch.tensor([classes.index(present[i]) for i in test_y.tolist()],
                              dtype=torch.int64)
        return x, y, test_x, test_y, classes
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction must be between 0 and 1, got {test_fraction}")
    n_test = max(1, round(len(y) * test_fraction))
    if n_test >= len(y) - 1:
        raise DataError(f"{root}: only {len(y)} images, too few to split into train, holdout "
                        "and test; add images or provide root/train and root/val folders")
    perm = torch.randperm(len(y), generator=_generator(_TEST_SEED, -3))
    test_idx, train_idx = torch.sort(perm[:n_test]).values, torch.sort(perm[n_test:]).values
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx], classes


def _decode_tree(folder: Path, classes: tuple[str, ...], resolution: int,
                 in_channels: int) -> tuple[Tensor, Tensor]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{folder / name}: class folder holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        for path in files:
            images.append(_decode_image(path, resolution, in_channels))
            labels.append(label)
    stacked = np.stack(images)
    tensor = torch.from_numpy(stacked[:, None] if stacked.ndim == 3 else
                              stacked.transpose(0, 3, 1, 2).copy())
    return tensor, torch.tensor(labels, dtype=torch.int64)


def _decode_image(path: Path, resolution: int, in_channels: int) -> np.ndarray:
    """Decode, convert to grey or RGB, resize the shorter side and centre-crop a square."""
    from PIL import Image, UnidentifiedImageError  # only ImageFolder data needs Pillow

    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if in_channels == 1 else "RGB")
            w, h = img.size
            scale = resolution / min(w, h)
            size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
            img = img.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
            img = img.crop((left, top, left + resolution, top + resolution))
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); remove or replace it") from None


# ----------------------------------------------------------------------------- helpers


def _to_channels(images: Tensor, in_channels: int) -> Tensor:
    """RGB -> grey for a 1-channel network (ITU-R 601 luma); grey stays 1 channel and is
    repeated per batch, which saves memory."""
    if images.shape[1] == 3 and in_channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(
            torch.uint8)
    return images


def channel_stats(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) netadapt normalises inputs with (pixels in [0, 1])."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)


def _generator(seed: int, stream: int) -> torch.Generator:
    """A generator for one purpose (``stream``: an epoch, or a negative split id)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) % 2**63)
