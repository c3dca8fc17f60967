"""Usage: python scripts/score_onnx.py RUN/best.onnx [FASHION_MNIST_DIR]

Score an exported netadapt ONNX file on the Fashion-MNIST test set with plain
onnxruntime, numpy and PIL, using only the file's own metadata (input size, mean, std),
as a user without netadapt would: the check that the accuracy a run reports is the
accuracy of what it exports."""

import gzip
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

path = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
c, h, w = map(int, meta["input_size"].split(","))
mean = np.array([float(v) for v in meta["mean"].split(",")]).reshape(1, -1, 1, 1)
std = np.array([float(v) for v in meta["std"].split(",")]).reshape(1, -1, 1, 1)
with gzip.open(f"{data}/t10k-images-idx3-ubyte.gz") as f:
    x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
with gzip.open(f"{data}/t10k-labels-idx1-ubyte.gz") as f:
    y = np.frombuffer(f.read(), np.uint8, offset=8)
name = session.get_inputs()[0].name
correct = 0
for i in range(0, len(x), 100):
    images = np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
                       for a in x[i:i + 100]])
    batch = (images[:, None].astype(np.float32) / 255.0).repeat(c, 1)
    batch = ((batch - mean) / std).astype(np.float32)
    correct += int((session.run(None, {name: batch})[0].argmax(1) == y[i:i + 100]).sum())
print(f"{path}: {correct / len(x):.4f} on {len(x)} test images at {h}x{w}")
