"""The score a network is chosen and reported by, with a per-image quantity for paired
comparisons: top-1 accuracy and per-image correctness for classification; mean IoU and
per-image pixel accuracy for segmentation (labels that are masks).

mIoU follows VOC: one confusion matrix over every non-ignored pixel (label 255) of the
split, IoU_c = TP / (TP + FP + FN) per class, averaged over the classes that occur in the
labels or the predictions (a class absent from both has no IoU and is left out).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .data import Split
from .errors import TrainError
from .segdata import IGNORE_INDEX


def is_segmentation(split: Split) -> bool:
    return split.labels.dim() == 3


def confusion(predicted: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """K x K pixel counts (rows: true class, columns: predicted), ignored pixels left out."""
    keep = target != IGNORE_INDEX
    t, p = target[keep].long(), predicted[keep].long().clamp(0, num_classes - 1)
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(
        num_classes, num_classes)


def mean_iou(matrix: Tensor) -> float:
    """Mean over classes present in labels or predictions of TP / (TP + FP + FN)."""
    m = matrix.double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


def pixel_accuracy(matrix: Tensor) -> float:
    m = matrix.double()
    return float(m.diag().sum() / m.sum().clamp(min=1))


def per_image_pixel_accuracy(predicted: Tensor, target: Tensor) -> Tensor:
    """Fraction of each image's non-ignored pixels predicted right (1 when none count)."""
    keep = target != IGNORE_INDEX
    right = ((predicted == target) & keep).flatten(1).sum(1).double()
    return right / keep.flatten(1).sum(1).clamp(min=1).double()


def _summary(pairs: Iterator[tuple[Tensor, Tensor]], num_classes: int, segmentation: bool
             ) -> tuple[float, Tensor, dict[str, float]]:
    items, matrix = [], torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for predicted, target in pairs:
        if segmentation:
            matrix += confusion(predicted, target, num_classes)
            items.append(per_image_pixel_accuracy(predicted, target))
        else:
            items.append(predicted == target)
    if not items:
        raise TrainError("the split is empty; nothing to score")
    per_item = torch.cat(items)
    if not segmentation:
        return float(per_item.float().mean()), per_item, {}
    extra = {"pixel_accuracy": pixel_accuracy(matrix)}
    return mean_iou(matrix), per_item, extra


@torch.no_grad()
def score_model(model: nn.Module, split: Split, num_classes: int, batch_size: int = 256,
                device: str | torch.device = "cpu") -> tuple[float, Tensor, dict[str, float]]:
    """(score, per-image quantity, extras) of a PyTorch model on ``split``: top-1 and
    per-image correctness, or mIoU, per-image pixel accuracy and {pixel_accuracy}."""
    from .train import _device, _fast_layout, _mixed_precision

    dev = _device(device)
    was_training = model.training
    model.to(dev).eval()
    autocast, _ = _mixed_precision(dev, amp=True)

    def pairs() -> Iterator[tuple[Tensor, Tensor]]:
        with _fast_layout(model, dev) as layout:
            for x, y in split.batches(batch_size, dev):
                with autocast():
                    logits = model(x.contiguous(memory_format=layout))
                yield logits.argmax(dim=1).cpu(), y.cpu()

    try:
        return _summary(pairs(), num_classes, is_segmentation(split))
    finally:
        model.train(was_training)


def score_onnx(onnx_path: str | os.PathLike[str], split: Split, num_classes: int,
               batch_size: int = 64, threads: int = 1
               ) -> tuple[float, Tensor, dict[str, float]]:
    """The same as score_model for an exported file run by onnxruntime: the score of
    what is shipped, at the size ``split`` serves."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def pairs() -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in split.batches(batch_size):
            (logits,) = session.run(None, {name: x.numpy()})
            yield torch.from_numpy(np.asarray(logits).argmax(1)), y

    return _summary(pairs(), num_classes, is_segmentation(split))
