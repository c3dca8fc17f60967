"""ONNX graphs for table entries and whole networks, built directly with onnx.helper.

Building a block this way takes ~2 ms, against ~33 ms for torch.onnx.export (legacy)
and ~1 s for the dynamo exporter (DESIGN.md section 2), and needs no torch. The graphs
are node-for-node what torch.onnx.export writes for netadapt.model in eval mode
(BatchNorm folded into Conv, HardSwish / Relu / HardSigmoid, GlobalAveragePool,
Flatten, Gemm), so onnxruntime fuses them the same way. Weights are random: latency
does not depend on their values.

Weights are written as raw protobuf bytes appended to the serialized model (a second
``graph`` field holding only initializers, which protobuf merges into the first), each a
slice of a pool of normal samples pre-scaled by a power of two near fan_in ** -0.5, so a
head entry's 10 MB of weights are copied once: building a table's entries through
onnx.helper cost more than timing them (15 ms per entry against 7 ms, measured here).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..spec import ClassifierHead, Layer, NetworkSpec, make_divisible

OPSET = 17
IR_VERSION = 8  # old enough for onnxruntime builds on phones and boards
# Weights are slices of one pool of normal samples: drawing 2.5 M fresh samples for a
# head entry took ~30 ms, more than timing it. 2 M floats hold the largest weight (a
# 1280 x 1000 Gemm); one scaled copy per power of two, made when first needed.
_POOL = np.random.default_rng(0).standard_normal(1 << 21).astype(np.float32)
_SCALED: dict[int, bytes] = {}


def _pool(fan_in: int) -> bytes:
    """The pool x 2 ** -e, e the power of two nearest fan_in ** 0.5, as bytes."""
    e = round(0.5 * math.log2(max(fan_in, 1)))
    if e not in _SCALED:
        _SCALED[e] = (_POOL * np.float32(2.0 ** -e)).tobytes()
    return _SCALED[e]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The header of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


class EntryKey(NamedTuple):
    """One table entry: a piece of the network the runtime executes as a unit.

    ``kind`` is ``stem``, ``block`` (a whole inverted residual), ``last_conv`` (1x1 conv
    + act + global pool) or ``head`` (Gemm + act + Gemm to ``out`` classes). Fields a
    kind lacks are 0 or empty. ``h`` and ``w`` are the entry's *input* resolution.
    ``classifier`` (the last Gemm alone, ``c_in`` -> ``out`` classes) is never a layer
    of a network: it lets a head measured for one number of classes predict another.

    A segmentation network (Lite R-ASPP) has no pool after its last conv (``conv``: 1x1
    conv + act) and its head is four single-input entries, so the head's three free
    widths (high input, ``inter``, low input) are never crossed in one grid:
    ``lraspp_high`` (the 128-channel branch times its pooled sigmoid gate, bilinearly
    resized to the low-level size ``h_out`` x ``w_out``), two ``seg_classifier`` 1x1
    convs to ``out`` classes (one per branch, at the low-level size) and ``upsample``
    (the branches' sum resized to the network's input size ``h_out`` x ``w_out``).
    """

    kind: str
    c_in: int
    exp: int
    out: int
    kernel: int
    stride: int
    dilation: int
    se: bool
    act: str
    expand: bool
    residual: bool
    h: int
    w: int
    h_out: int = 0  # lraspp_high, upsample: the size they resize to; else 0
    w_out: int = 0

    def label(self) -> str:
        if self.kind == "block":
            extra = "".join([" se" if self.se else "", " res" if self.residual else "",
                             "" if self.expand else " noexp"])
            return (f"block {self.c_in}->{self.exp}->{self.out} k{self.kernel} s{self.stride}"
                    f" {self.act}{extra} @{self.h}x{self.w}")
        if self.kind == "head":
            return f"head {self.c_in}->{self.exp}->{self.out} {self.act}"
        if self.kind == "classifier":
            return f"classifier {self.c_in}->{self.out}"
        if self.kind in ("lraspp_high", "upsample"):
            return (f"{self.kind} {self.c_in}->{self.exp or self.out} @{self.h}x{self.w}"
                    f"->{self.h_out}x{self.w_out}")
        return f"{self.kind} {self.c_in}->{self.out} k{self.kernel} s{self.stride} " \
               f"{self.act} @{self.h}x{self.w}"


def entry_key(row: Layer) -> EntryKey:
    """The table entry of one row of ``spec.layers``."""
    if row.kind == "head":
        return EntryKey("head", row.c_in, row.exp, row.out, 0, 0, 0, False, row.act, False,
                        False, 1, 1)
    if row.kind == "lraspp":
        raise ValueError("an lraspp row has several entries: use lraspp_keys")
    # stem, block, last_conv: the row's fields from c_in to w are the key's
    return EntryKey(row.kind, *row[2:14])


def conv_key(row: Layer) -> EntryKey:
    """A segmentation network's last conv: 1x1 conv + act, no pool."""
    return EntryKey("conv", row.c_in, 0, row.out, 1, 1, 1, False, row.act, False, False,
                    row.h, row.w)


def seg_classifier_key(c_in: int, classes: int, h: int, w: int) -> EntryKey:
    return EntryKey("seg_classifier", c_in, 0, classes, 1, 1, 1, False, "linear", False,
                    False, h, w)


def upsample_key(classes: int, h: int, w: int, size: tuple[int, int]) -> EntryKey:
    return EntryKey("upsample", classes, 0, classes, 0, 0, 0, False, "linear", False, False,
                    h, w, size[0], size[1])


def lraspp_keys(row: Layer, size: tuple[int, int]) -> list[tuple[str, EntryKey]]:
    """The entries of a Lite R-ASPP head row for a network with input ``size``."""
    high = EntryKey("lraspp_high", row.c_in, row.exp, 0, 1, 1, 1, False, "relu", False,
                    False, row.h, row.w, row.h_out, row.w_out)
    return [("head.high", high),
            ("head.high_classifier", seg_classifier_key(row.exp, row.out, row.h_out, row.w_out)),
            ("head.low_classifier", seg_classifier_key(row.low, row.out, row.h_out, row.w_out)),
            ("head.upsample", upsample_key(row.out, row.h_out, row.w_out, size))]


def entry_keys(spec: NetworkSpec) -> list[tuple[str, EntryKey]]:
    """(layer name, entry key) for every entry of ``spec``, in network order."""
    if isinstance(spec.head, ClassifierHead):
        return [(row.name, entry_key(row)) for row in spec.layers]
    *body, last, head = spec.layers
    return ([(row.name, entry_key(row)) for row in body] + [(last.name, conv_key(last))]
            + lraspp_keys(head, spec.input_size))


class _Graph:
    """Accumulates nodes and initializers; names are generated."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[tuple[str, tuple[int, ...], memoryview]] = []  # name, shape, data
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def weight(self, *shape: int) -> str:
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        size = math.prod(shape)
        if size >= _POOL.size:
            raise ValueError(f"weight {shape} is larger than the sample pool")
        start = int(self.rng.integers(0, _POOL.size - size))
        name = self.name("w")
        self.inits.append((name, shape, memoryview(_pool(fan_in))[4 * start:4 * (start + size)]))
        return name

    def initializers(self) -> list[bytes | memoryview]:
        """A serialized GraphProto fragment holding only the initializers, as a ``graph``
        field of ModelProto (raw float32 TensorProtos), in pieces to join once."""
        pieces: list[bytes | memoryview] = []
        for name, shape, data in self.inits:
            head = b"".join(b"\x08" + _varint(d) for d in shape)  # dims (field 1)
            head += b"\x10\x01" + _field(8, len(name)) + name.encode()  # FLOAT, name
            head += _field(9, len(data))  # raw_data
            pieces += [_field(5, len(head) + len(data)), head, data]  # GraphProto.initializer
        return [_field(7, sum(len(p) for p in pieces)), *pieces]  # ModelProto.graph

    def resize(self, x: str, c: int, h: int, w: int) -> str:
        """Bilinear resize to (h, w), as torch exports F.interpolate(align_corners=False)."""
        sizes = self.name("sizes")
        self.nodes.append(helper.make_node("Constant", [], [sizes], value=helper.make_tensor(
            sizes, TensorProto.INT64, [4], [1, c, h, w])))
        return self.node("Resize", [x, "", "", sizes], mode="linear",
                         coordinate_transformation_mode="half_pixel")

    def lraspp(self, low: str, high: str, spec: NetworkSpec) -> str:
        """The whole Lite R-ASPP head of ``spec`` (the end-to-end reference)."""
        row = spec.layers[-1]
        keys = dict(lraspp_keys(row, spec.input_size))
        x = self.entry(high, keys["head.high"])
        x = self.entry(x, keys["head.high_classifier"])
        y = self.entry(low, keys["head.low_classifier"])
        out = self.node("Add", [y, x])
        return self.resize(out, spec.num_classes, *spec.input_size)

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def act(self, x: str, act: str) -> str:
        return self.node("HardSwish" if act == "hswish" else "Relu", [x])

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, stride: int = 1,
             dilation: int = 1, groups: int = 1, act: str | None = None) -> str:
        pad = (kernel - 1) // 2 * dilation
        y = self.node("Conv", [x, self.weight(c_out, c_in // groups, kernel, kernel),
                               self.weight(c_out)],
                      kernel_shape=[kernel, kernel], strides=[stride, stride],
                      pads=[pad] * 4, dilations=[dilation, dilation], group=groups)
        return self.act(y, act) if act else y

    def entry(self, x: str, key: EntryKey) -> str:
        """The nodes of one entry, applied to ``x``."""
        if key.kind == "stem":
            return self.conv(x, key.c_in, key.out, key.kernel, key.stride, act=key.act)
        if key.kind == "block":
            y = x
            if key.expand:
                y = self.conv(y, key.c_in, key.exp, 1, act=key.act)
            y = self.conv(y, key.exp, key.exp, key.kernel, key.stride, key.dilation,
                          groups=key.exp, act=key.act)
            if key.se:
                squeeze = make_divisible(key.exp // 4)
                g = self.node("GlobalAveragePool", [y])
                g = self.node("Relu", [self.conv(g, key.exp, squeeze, 1)])
                g = self.node("HardSigmoid", [self.conv(g, squeeze, key.exp, 1)],
                              alpha=1.0 / 6, beta=0.5)
                y = self.node("Mul", [y, g])
            y = self.conv(y, key.exp, key.out, 1)
            return self.node("Add", [x, y]) if key.residual else y
        if key.kind == "last_conv":
            y = self.conv(x, key.c_in, key.out, 1, act=key.act)
            return self.node("Flatten", [self.node("GlobalAveragePool", [y])], axis=1)
        if key.kind == "head":
            y = self.node("Gemm", [x, self.weight(key.exp, key.c_in), self.weight(key.exp)],
                          transB=1)
            y = self.act(y, key.act)
            return self.node("Gemm", [y, self.weight(key.out, key.exp), self.weight(key.out)],
                             transB=1)
        if key.kind == "classifier":
            return self.node("Gemm", [x, self.weight(key.out, key.c_in), self.weight(key.out)],
                             transB=1)
        if key.kind == "conv":
            return self.conv(x, key.c_in, key.out, 1, act=key.act)
        if key.kind == "lraspp_high":
            y = self.node("Relu", [self.conv(x, key.c_in, key.exp, 1)])
            g = self.node("GlobalAveragePool", [x])
            g = self.node("Sigmoid", [self.conv(g, key.c_in, key.exp, 1)])
            return self.resize(self.node("Mul", [y, g]), key.exp, key.h_out, key.w_out)
        if key.kind == "seg_classifier":
            return self.conv(x, key.c_in, key.out, 1)
        if key.kind == "upsample":  # the two branches' sum, then up to the input size
            return self.resize(self.node("Add", [x, x]), key.out, key.h_out, key.w_out)
        raise ValueError(f"unknown entry kind {key.kind!r}")


def input_shape(key: EntryKey) -> tuple[int, ...]:
    if key.kind in ("head", "classifier"):
        return (1, key.c_in)
    return (1, key.c_in, key.h, key.w)


def network_input_shape(spec: NetworkSpec) -> tuple[int, ...]:
    """The input of the whole network (batch 1)."""
    return (1, spec.in_channels, *spec.input_size)


def _model(graph: _Graph, x_shape: tuple[int, ...], y: str, name: str) -> bytes:
    g = helper.make_graph(
        graph.nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="netadapt")
    model.ir_version = IR_VERSION
    return b"".join([model.SerializeToString(), *graph.initializers()])


def entry_model(key: EntryKey, seed: int = 0) -> bytes:
    """Serialized ONNX model of one entry, input named ``input``."""
    graph = _Graph(seed)
    return _model(graph, input_shape(key), graph.entry("input", key), key.kind)


def network_model(spec: NetworkSpec, seed: int = 0) -> bytes:
    """Serialized ONNX model of the whole network (the end-to-end reference)."""
    graph = _Graph(seed)
    x = "input"
    if isinstance(spec.head, ClassifierHead):
        for _, key in entry_keys(spec):
            x = graph.entry(x, key)
        return _model(graph, network_input_shape(spec), x, spec.name)
    low = x
    for row, (_, key) in zip(spec.layers[:-1], entry_keys(spec)):
        x = graph.entry(x, key)
        if row.name == f"blocks[{spec.head.low_block}]":
            low = x
    return _model(graph, network_input_shape(spec), graph.lraspp(low, x, spec), spec.name)
