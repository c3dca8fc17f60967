"""Segmentation data: a VOC-style directory of images and index-PNG masks, or a built-in
SYNTHETIC set made deterministically from Fashion-MNIST; both split into train / holdout
/ test like the classification data and served by data.Split (masks resized nearest).

Masks hold one class id per pixel; 255 means "ignore" (VOC's object boundaries), and is
left out of the loss and of every score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import (
    _TEST_SEED,
    DEFAULT_DATA_DIR,
    FASHION_MNIST_CLASSES,
    IMAGE_EXTENSIONS,
    INSTALL_HINT,
    Data,
    _find_idx,
    _generator,
    _load_idx_dir,
    _to_channels,
    channel_stats,
    make_splits,
)
from .errors import DataError

IGNORE_INDEX = 255  # VOC's "void" label: not trained on, not scored
SYNTHETIC_CLASSES = ("background", *FASHION_MNIST_CLASSES)
# The synthetic set's size: 4,000 training canvases hold 12,000 garments (a fifth of
# Fashion-MNIST's training images); test canvases use Fashion-MNIST's test images only.
SYNTHETIC_TRAIN = 4000
SYNTHETIC_TEST = 1000
# the canvases' seeds: a pure function of these, so scripts/score_onnx.py rebuilds the
# test canvases a run was scored on
TRAIN_CANVAS_SEED, TEST_CANVAS_SEED = 1, 2
GARMENTS = (2, 4)  # garments per canvas, inclusive
INK = 24  # a garment pixel darker than this (of 255) is background; a faint rim is ignored
RIM = 8  # pixels in (RIM, INK] are the garment's soft edge: label 255 (ignore)
IMAGE_DIRS = ("images", "JPEGImages")
MASK_DIRS = ("masks", "SegmentationClass")


def synthetic_canvases(garments: np.ndarray, labels: np.ndarray, count: int, canvas: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` grey canvases (uint8, count x 1 x canvas x canvas) with 2-4 Fashion-MNIST
    garments each, scaled to 0.29-0.58 of the canvas side and placed at random (later
    ones occlude earlier ones), and their masks: garment label + 1 where the garment's
    ink is, 0 background, 255 on the garment's faint rim. A pure function of its
    arguments."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = np.zeros((count, canvas, canvas), np.uint8)
    masks = np.zeros((count, canvas, canvas), np.uint8)
    # a dim, smooth background texture so that "dark = background" is not the whole rule
    noise = rng.integers(0, 16, (count, canvas // 8 + 1, canvas // 8 + 1)).astype(np.uint8)
    for i in range(count):
        images[i] = np.kron(noise[i], np.ones((8, 8), np.uint8))[:canvas, :canvas]
        for _ in range(int(rng.integers(GARMENTS[0], GARMENTS[1] + 1))):
            j = int(rng.integers(len(garments)))
            # 0.29-0.58 of the canvas side (28-56 px on 96 px): 2-4 fit with some overlap
            side = min(canvas, max(8, round(28 * rng.uniform(1.0, 2.0) * canvas / 96)))
            g = np.asarray(Image.fromarray(garments[j]).resize((side, side),
                                                               Image.Resampling.BILINEAR))
            top, left = (int(rng.integers(0, canvas - side + 1)) for _ in range(2))
            window = (slice(top, top + side), slice(left, left + side))
            ink, rim = g > INK, (g > RIM) & (g <= INK)
            images[i][window] = np.where(ink | rim, g, images[i][window])
            masks[i][window] = np.where(ink, labels[j] + 1,
                                        np.where(rim, IGNORE_INDEX, masks[i][window]))
    return images[:, None], masks


def load_segmentation(source: Path | None, resolution: int, in_channels: int, holdout: int,
                      seed: int, *, canvas: int | None = None, train_count: int = SYNTHETIC_TRAIN,
                      test_count: int = SYNTHETIC_TEST, test_fraction: float = 0.2) -> Data:
    """Segmentation data split into train / holdout / test, served at ``resolution``.

    ``source`` None: the built-in SYNTHETIC set (canvases of ``canvas`` px, default
    ``resolution``, made from Debian's Fashion-MNIST); else a VOC-style directory:
    ``images/`` (or ``JPEGImages/``) and ``masks/`` (or ``SegmentationClass/``) holding
    same-named index PNGs, or ``train/`` and ``test/`` (or ``val/``) folders of that
    shape; an optional ``classes.txt`` names the classes, one a line. ``holdout``
    training images, chosen by ``seed``, score proposals.
    """
    if resolution < 8:
        raise DataError(f"resolution must be at least 8 pixels, got {resolution}")
    if in_channels not in (1, 3):
        raise DataError(f"the network takes {in_channels} input channels; images have 1 "
                        "(grey) or 3 (RGB): set in_channels to 1 or 3 in the spec")
    if source is None:
        side = canvas or resolution
        train_x, train_y, test_x, test_y = _synthetic(side, train_count, test_count)
        classes: tuple[str, ...] = SYNTHETIC_CLASSES
        where, fmt = f"SYNTHETIC: Fashion-MNIST garments on {side} px canvases", "synthetic"
    else:
        root = Path(source)
        train_x, train_y, test_x, test_y, classes = _load_voc(root, resolution, in_channels,
                                                              test_fraction)
        where, fmt = str(root.resolve()), "voc"
    train_x, test_x = (_to_channels(x, in_channels) for x in (train_x, test_x))
    n = len(train_y)
    if not 1 <= holdout < n:
        raise DataError(f"holdout must be between 1 and {n - 1} (the training set has {n} "
                        f"images), got {holdout}; choose a smaller --holdout")
    perm = torch.randperm(n, generator=_generator(seed, -1))
    holdout_idx = torch.sort(perm[:holdout]).values
    train_idx = torch.sort(perm[holdout:]).values
    test_idx = torch.arange(len(test_y))
    mean, std = channel_stats(in_channels)
    splits, digest = make_splits(train_x, train_y, test_x, test_y,
                                 (train_idx, holdout_idx, test_idx), in_channels, resolution)
    digest.update(train_y[:16].numpy().tobytes())  # the synthetic set's content, in brief
    description = {
        "source": where, "format": fmt, "task": "segmentation", "resolution": resolution,
        "in_channels": in_channels, "classes": list(classes), "seed": seed,
        "sizes": {s.name: len(s) for s in splits}, "mean": list(mean), "std": list(std),
        "ignore_index": IGNORE_INDEX, "split_sha256": digest.hexdigest()[:16],
    }
    return Data(splits[0], splits[1], splits[2], classes, description)


def _synthetic(canvas: int, train_count: int, test_count: int
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    root = DEFAULT_DATA_DIR
    if _find_idx(root, "train", "images") is None:
        raise DataError(f"{root}: Fashion-MNIST not found, which the built-in synthetic "
                        f"segmentation set is made from; {INSTALL_HINT}")
    fx, fy, tx, ty = _load_idx_dir(root)
    # train canvases from training garments, test canvases from test garments: no garment
    # is ever seen in both
    train = synthetic_canvases(fx[:, 0].numpy(), fy.numpy(), train_count, canvas,
                               seed=TRAIN_CANVAS_SEED)
    test = synthetic_canvases(tx[:, 0].numpy(), ty.numpy(), test_count, canvas,
                              seed=TEST_CANVAS_SEED)
    return (torch.from_numpy(train[0]), torch.from_numpy(train[1]),
            torch.from_numpy(test[0]), torch.from_numpy(test[1]))


# ----------------------------------------------------------------------------- VOC-style


def _load_voc(root: Path, resolution: int, in_channels: int, test_fraction: float
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    if not root.is_dir():
        raise DataError(f"{root}: segmentation data directory not found; pass a directory "
                        f"with images/ and masks/ (same-named PNG masks), or omit --data for "
                        f"the built-in synthetic set")
    test_dir = _test_dir(root)
    train_dir = root / "train" if test_dir is not None and (root / "train").is_dir() else root
    x, y = _decode_pairs(train_dir, resolution, in_channels)
    if test_dir is not None:
        tx, ty = _decode_pairs(test_dir, resolution, in_channels)
    else:
        train_idx, test_idx = voc_test_split(root, len(y), test_fraction)
        x, y, tx, ty = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    labels = torch.cat([y.flatten(), ty.flatten()])
    used = labels[labels != IGNORE_INDEX]
    count = int(used.max()) + 1 if used.numel() else 1
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines()
                      if line.strip())
        if len(names) < count:
            raise DataError(f"{names_file}: names {len(names)} classes but the masks use ids "
                            f"up to {count - 1}; add the missing names")
        return x, y, tx, ty, names
    return x, y, tx, ty, tuple(str(i) for i in range(count))


def voc_test_split(root: Path, count: int, test_fraction: float = 0.2
                   ) -> tuple[Tensor, Tensor]:
    """(train, test) indices into the ``count`` image/mask pairs of a directory without
    train/ and test/ folders, in file-name order: a fixed share is the test split,
    whatever ``--seed`` (results stay comparable across seeds)."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction must be between 0 and 1, got {test_fraction}")
    n_test = max(1, round(count * test_fraction))
    if n_test >= count - 1:
        raise DataError(f"{root}: only {count} images, too few to split into train, "
                        "holdout and test; add images or provide train/ and test/")
    perm = torch.randperm(count, generator=_generator(_TEST_SEED, -3))
    return torch.sort(perm[n_test:]).values, torch.sort(perm[:n_test]).values


def voc_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """A VOC-style folder's (image, mask) files in file-name order: ``images/`` (or
    ``JPEGImages/``) and same-named PNGs in ``masks/`` (or ``SegmentationClass/``)."""
    image_dir = next((folder / n for n in IMAGE_DIRS if (folder / n).is_dir()), None)
    mask_dir = next((folder / n for n in MASK_DIRS if (folder / n).is_dir()), None)
    if image_dir is None or mask_dir is None:
        raise DataError(f"{folder}: expected folders images/ (or JPEGImages/) and masks/ "
                        f"(or SegmentationClass/) with same-named files")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    if not pairs:
        raise DataError(f"{folder}: no image in {image_dir.name}/ has a same-named PNG mask in "
                        f"{mask_dir.name}/")
    unmatched = [p.name for p in images if p.stem not in masks]
    if unmatched:
        raise DataError(f"{image_dir / unmatched[0]}: no mask {mask_dir.name}/"
                        f"{Path(unmatched[0]).stem}.png; add it or remove the image")
    return pairs


def voc_test_pairs(root: Path, test_fraction: float = 0.2) -> list[tuple[Path, Path]]:
    """The (image, mask) files of a VOC-style directory's test split, in the order a run
    scores them: its ``test/`` (or ``val/``) folder, else the fixed share of
    :func:`voc_test_split`."""
    test_dir = _test_dir(root)
    if test_dir is not None:
        return voc_pairs(test_dir)
    pairs = voc_pairs(root)
    _, test_idx = voc_test_split(root, len(pairs), test_fraction)
    return [pairs[i] for i in test_idx.tolist()]


def _test_dir(root: Path) -> Path | None:
    return next((root / n for n in ("test", "val") if (root / n).is_dir()), None)


def _decode_pairs(folder: Path, resolution: int, in_channels: int) -> tuple[Tensor, Tensor]:
    decoded = [decode_pair(i, m, resolution, in_channels) for i, m in voc_pairs(folder)]
    xs = np.stack([d[0] for d in decoded])
    x = torch.from_numpy(xs[:, None] if xs.ndim == 3 else xs.transpose(0, 3, 1, 2).copy())
    return x, torch.from_numpy(np.stack([d[1] for d in decoded]))


def decode_pair(image_path: Path, mask_path: Path, resolution: int, in_channels: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask resized together: the shorter side to ``resolution`` and a
    centred square crop; bilinear for the image, nearest for the mask (ids stay ids)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as opened:
            img = opened.convert("L" if in_channels == 1 else "RGB")
        with Image.open(mask_path) as opened:
            if opened.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"{mask_path}: mask mode {opened.mode}; masks must be index "
                                f"(P) or grey (L) PNGs holding one class id per pixel")
            mask = opened.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{image_path}: not a readable image/mask pair ({exc})") from None
    if img.size != mask.size:
        raise DataError(f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]}, its image "
                        f"{img.size[0]}x{img.size[1]}; a mask must match its image's size")
    w, h = img.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    box = (left, top, left + resolution, top + resolution)
    img = img.resize(size, Image.Resampling.BILINEAR).crop(box)
    mask = mask.resize(size, Image.Resampling.NEAREST).crop(box)
    ids = np.asarray(mask)
    if ids.max(initial=0) > IGNORE_INDEX:
        raise DataError(f"{mask_path}: class id {int(ids.max())} > 255; masks hold ids 0..254 "
                        f"and 255 (ignore)")
    return np.asarray(img, dtype=np.uint8), ids.astype(np.uint8)
