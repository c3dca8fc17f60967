"""Data: IDX and ImageFolder sources, seeded disjoint splits, reproducible batches, and one
clear error per broken input."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from netadapt.data import DEFAULT_DATA_DIR, batch_indices, load_data, read_idx
from netadapt.errors import DataError

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def make_idx_dir(root: Path, n_train: int = 60, n_test: int = 20, size: int = 28,
                 gz: bool = False) -> Path:
    """Images whose pixels all equal 10 x their label (+ index), so tests can check which
    image ended up where."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 3
        images = np.broadcast_to((labels * 10)[:, None, None], (n, size, size)).copy()
        images[:, 0, 0] = np.arange(n)  # a per-image id in the corner
        suffix = ".gz" if gz else ""
        write_idx(root / (IDX_NAMES[split][0] + suffix), images)
        write_idx(root / (IDX_NAMES[split][1] + suffix), labels)
    return root


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6,
                      mode: str = "RGB") -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (200, 20, 20) if c == 0 else (20, 20, 200)
            Image.new(mode, (40, 30), colour if mode == "RGB" else 50 + 100 * c).save(
                root / name / f"{i}.png")
    return root


def test_idx_directory_loads_with_seeded_disjoint_holdout(tmp_path):
    data = load_data(make_idx_dir(tmp_path / "d"), resolution=28, in_channels=1,
                     holdout=10, seed=3)
    assert (len(data.train), len(data.holdout), len(data.test)) == (50, 10, 20)
    ids = [set(s.images[:, 0, 0, 0].tolist()) for s in (data.train, data.holdout)]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(60))
    assert data.num_classes == 3 and data.classes == ("0", "1", "2")
    # labels travel with their images
    assert torch.equal(data.train.images[:, 0, 5, 5].long(), data.train.labels * 10)


def test_gzipped_idx_files_load_like_plain_ones(tmp_path):
    plain = load_data(make_idx_dir(tmp_path / "a"), 28, 1, holdout=10, seed=0)
    gz = load_data(make_idx_dir(tmp_path / "b", gz=True), 28, 1, holdout=10, seed=0)
    assert torch.equal(plain.train.images, gz.train.images)


def test_holdout_depends_on_seed_and_is_recorded(tmp_path):
    root = make_idx_dir(tmp_path / "d")
    a, b, a2 = (load_data(root, 28, 1, holdout=10, seed=s) for s in (0, 1, 0))
    assert torch.equal(a.holdout.labels, a2.holdout.labels)
    assert a.description == a2.description
    assert a.description["split_sha256"] != b.description["split_sha256"]
    assert a.description["sizes"] == {"train": 50, "holdout": 10, "test": 20}
    assert a.description["seed"] == 0 and a.description["format"] == "idx"


def test_grey_images_become_three_normalised_channels_at_the_resolution(tmp_path):
    data = load_data(make_idx_dir(tmp_path / "d"), resolution=16, in_channels=3,
                     holdout=10, seed=0)
    x, y = data.test.batch(torch.arange(4))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    centre = x[:, :, 8, 8]
    expected = (y.view(-1, 1) * 10 / 255 - torch.tensor([0.485, 0.456, 0.406])) \
        / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(centre, expected.float(), atol=1e-2, rtol=0)


def test_batches_are_reproducible_and_resumable_from_any_step(tmp_path):
    data = load_data(make_idx_dir(tmp_path / "d"), 28, 1, holdout=10, seed=0)
    run = data.train_batches(batch_size=8, seed=5)
    labels = [next(run)[1] for _ in range(14)]  # 50 // 8 = 6 per epoch: crosses 2 epochs
    resumed = data.train_batches(batch_size=8, seed=5, step=9)
    assert all(torch.equal(next(resumed)[1], labels[i]) for i in range(9, 14))
    other = data.train_batches(batch_size=8, seed=6)
    assert not all(torch.equal(next(other)[1], labels[i]) for i in range(6))


def test_an_epoch_visits_every_training_item_at_most_once():
    seen = torch.cat([batch_indices(50, 8, seed=1, step=s) for s in range(6)])
    assert len(seen) == 48 and len(set(seen.tolist())) == 48
    assert not torch.equal(batch_indices(50, 8, 1, 0), batch_indices(50, 8, 1, 6))


def test_image_folder_without_test_folder_carves_a_fixed_test_split(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=10)
    a = load_data(root, resolution=24, in_channels=3, holdout=3, seed=0)
    b = load_data(root, resolution=24, in_channels=3, holdout=3, seed=1)
    assert a.classes == ("cat", "dog")
    assert a.train.images.shape[1:] == (3, 24, 24)
    assert (len(a.train), len(a.holdout), len(a.test)) == (13, 3, 4)
    assert torch.equal(a.test.images, b.test.images)  # the test split ignores the seed
    # cat is red, dog is blue
    reds = a.test.images[:, 0, 12, 12].int() - a.test.images[:, 2, 12, 12].int()
    assert torch.equal(reds > 0, a.test.labels == 0)


def test_image_folder_with_train_and_val_dirs_uses_them(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=5)
    make_image_folder(tmp_path / "d" / "val", classes=("dog",), per_class=2)
    data = load_data(tmp_path / "d", 16, 3, holdout=2, seed=0)
    assert (len(data.train), len(data.holdout), len(data.test)) == (8, 2, 2)
    assert data.test.labels.tolist() == [1, 1]  # "dog" keeps its training index


def test_rgb_images_become_grey_for_a_one_channel_network(tmp_path):
    data = load_data(make_image_folder(tmp_path / "d"), 16, 1, holdout=2, seed=0)
    assert data.train.images.shape[1:] == (1, 16, 16)
    assert data.train.batch(torch.arange(2))[0].shape == (2, 1, 16, 16)


def test_empty_class_folder_is_named(tmp_path):
    root = make_image_folder(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder holds no images"):
        load_data(root, 16, 3, holdout=2, seed=0)


def test_folder_without_classes_or_idx_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no class folders and no IDX files"):
        load_data(tmp_path, 16, 3, holdout=2, seed=0)


def test_unreadable_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "d")
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken.png: not a readable image"):
        load_data(root, 16, 3, holdout=2, seed=0)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        load_data(tmp_path / "nope", 32, 3, holdout=10, seed=0)


def test_missing_idx_file_is_named(tmp_path):
    root = make_idx_dir(tmp_path / "d")
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_data(root, 28, 1, holdout=10, seed=0)


def test_truncated_idx_file_is_named(tmp_path):
    root = make_idx_dir(tmp_path / "d")
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated"):
        load_data(root, 28, 1, holdout=10, seed=0)


def test_bad_magic_number_is_refused(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_corrupt_gzip_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(200))[:20])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path)


def test_holdout_larger_than_training_set_is_refused(tmp_path):
    with pytest.raises(DataError, match="holdout must be between 1 and 59"):
        load_data(make_idx_dir(tmp_path / "d"), 28, 1, holdout=60, seed=0)


@pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_by_default():
    data = load_data(None, resolution=32, in_channels=3, holdout=5000, seed=0,
                     max_train=1000, max_test=500)
    assert (len(data.train), len(data.holdout), len(data.test)) == (1000, 5000, 500)
    assert data.classes[0] == "T-shirt/top" and data.num_classes == 10
    assert data.train.images.shape[1:] == (1, 28, 28)  # stored as in the file
    assert data.train.batch(torch.arange(2))[0].shape == (2, 3, 32, 32)  # served at 32
    assert data.at(224).test.batch(torch.arange(2))[0].shape == (2, 3, 224, 224)
    assert set(data.test.labels.tolist()) == set(range(10))
