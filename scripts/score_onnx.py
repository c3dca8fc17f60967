"""Score an exported netadapt ONNX file with plain onnxruntime, numpy and PIL, using only
the file's own metadata (input size, mean, std), as a user without netadapt would: the
check that the score a run reports is the score of what it exports, at its input size.

    python scripts/score_onnx.py RUN/best.onnx [FASHION_MNIST_DIR]   # a classifier
    python scripts/score_onnx.py RUN/best.onnx [VOC_DIR]             # a segmentation file

A classifier (output N x K) is scored by top-1 on the Fashion-MNIST test set. A
segmentation file (output N x K x H x W) is scored by mean IoU and pixel accuracy over a
test split, defined as netadapt.scoring defines them (one confusion matrix over every
pixel not labelled 255; IoU averaged over the classes present in the labels or the
predictions): VOC_DIR's test split (its test/ or val/ folder, else the fixed 20% a run
holds out), or without VOC_DIR the built-in SYNTHETIC test set, its 1,000 canvases drawn
at the file's input size (as a search draws them unless it ran at another
--resolution). netadapt is imported for one thing only: which images form the test
split (the synthetic canvases are made by netadapt.segdata; a directory's split is
netadapt's fixed permutation). Decoding, resizing, normalising, running the network and
scoring are done here, from the file's metadata alone.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.append(str(Path(__file__).resolve().parent.parent))  # a checkout: netadapt
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IGNORE = 255  # VOC's "void" label: not scored
BATCH = 50


class Session:
    """An ONNX file and what its metadata says about its input."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = {"input_size", "mean", "std"} - set(meta)
        if missing:
            raise ValueError(f"{path}: no {', '.join(sorted(missing))} in the ONNX metadata; "
                             f"export it with `netadapt export`")
        self.channels, self.height, self.width = map(int, meta["input_size"].split(","))
        self.mean = np.array([float(v) for v in meta["mean"].split(",")],
                             np.float32).reshape(1, -1, 1, 1)
        self.std = np.array([float(v) for v in meta["std"].split(",")],
                            np.float32).reshape(1, -1, 1, 1)
        self.segmentation = len(self.session.get_outputs()[0].shape) == 4
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits of uint8 images (N x H x W grey, or N x H x W x 3) at the input size:
        pixels / 255, grey repeated to C channels, (x - mean) / std, in float32."""
        x = images.astype(np.float32) / np.float32(255)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        x = np.repeat(x, self.channels // x.shape[1], axis=1)
        (logits,) = self.session.run(None, {self.input: (x - self.mean) / self.std})
        return np.asarray(logits)


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def classification(net: Session, data: Path) -> str:
    x = read_idx(data / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    y = read_idx(data / "t10k-labels-idx1-ubyte.gz", 8)
    correct = 0
    for i in range(0, len(x), BATCH):
        images = np.stack([np.asarray(Image.fromarray(a).resize(
            (net.width, net.height), Image.Resampling.BILINEAR)) for a in x[i:i + BATCH]])
        correct += int((net(images).argmax(1) == y[i:i + BATCH]).sum())
    return f"{correct / len(x):.4f} on {len(x)} test images at {net.height}x{net.width}"


def decode(image: Path, mask: Path, net: Session) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask resized together to cover the input size (bilinear, nearest: ids
    stay ids), then centre-cropped to it."""
    with Image.open(image) as opened:
        img = opened.convert("L" if net.channels == 1 else "RGB")
    with Image.open(mask) as opened:
        ids = opened.copy()
    w, h = img.size
    scale = max(net.width / w, net.height / h)
    size = (max(net.width, round(w * scale)), max(net.height, round(h * scale)))
    left, top = (size[0] - net.width) // 2, (size[1] - net.height) // 2
    box = (left, top, left + net.width, top + net.height)
    return (np.asarray(img.resize(size, Image.Resampling.BILINEAR).crop(box)),
            np.asarray(ids.resize(size, Image.Resampling.NEAREST).crop(box)))


def voc_test_set(net: Session, root: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    from netadapt.segdata import voc_test_pairs

    pairs = voc_test_pairs(root)
    for i in range(0, len(pairs), BATCH):
        decoded = [decode(image, mask, net) for image, mask in pairs[i:i + BATCH]]
        yield np.stack([d[0] for d in decoded]), np.stack([d[1] for d in decoded])


def synthetic_test_set(net: Session) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    from netadapt.segdata import SYNTHETIC_TEST, TEST_CANVAS_SEED, synthetic_canvases

    if net.height != net.width:
        raise ValueError(f"{net.path}: input {net.height}x{net.width}; the synthetic "
                         f"canvases are square: pass a VOC_DIR")
    garments = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz", 8)
    images, masks = synthetic_canvases(garments, labels, SYNTHETIC_TEST, net.height,
                                       seed=TEST_CANVAS_SEED)
    for i in range(0, len(masks), BATCH):
        yield images[i:i + BATCH, 0], masks[i:i + BATCH]


def segmentation(net: Session, data: Path | None) -> str:
    pairs = synthetic_test_set(net) if data is None else voc_test_set(net, data)
    matrix = np.zeros((0, 0), np.int64)  # rows: true class, columns: predicted
    count = 0
    for images, masks in pairs:
        logits = net(images)
        k = logits.shape[1]  # the file's classes (a symbolic dimension in the graph)
        matrix = matrix if matrix.size else np.zeros((k, k), np.int64)
        predicted = logits.argmax(1)
        keep = masks != IGNORE
        truth, guess = masks[keep].astype(np.int64), np.clip(predicted[keep], 0, k - 1)
        matrix += np.bincount(truth * k + guess, minlength=k * k).reshape(k, k)
        count += len(masks)
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    present = union > 0
    miou = float((tp[present] / union[present]).mean())
    accuracy = float(tp.sum() / max(1, matrix.sum()))
    source = "SYNTHETIC test canvases" if data is None else f"test images of {data}"
    return (f"mIoU {miou:.4f}, pixel accuracy {accuracy:.4f} on {count} {source} at "
            f"{net.height}x{net.width}")


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2 or argv[0].startswith("-"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        net = Session(argv[0])
        data = Path(argv[1]) if len(argv) > 1 else None
        line = segmentation(net, data) if net.segmentation else \
            classification(net, data or FASHION_MNIST)
    except Exception as exc:  # a user's bad file or directory: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{argv[0]}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
