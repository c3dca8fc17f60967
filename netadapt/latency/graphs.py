"""Table entries (EntryKey) and the ONNX graphs of entries and whole networks, built
directly with onnx.helper.

Building a block this way takes ~2 ms, against ~33 ms for torch.onnx.export (legacy)
and ~1 s for the dynamo exporter (measured here; a table has tens of thousands of
entries), and needs no torch. The graphs
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
import typing
from typing import Any

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


# The table's entries are keyed by spec.Layer's own fields (EntryKey is a Layer), less
# those that place a row in its network or follow from its other fields: the row's name,
# its SE width (from ``exp``) and an LR-ASPP row's low-level width (split into entries).
ROW_ONLY_FIELDS = ("name", "squeeze", "low")
KEY_FIELDS: tuple[str, ...] = tuple(f for f in Layer._fields if f not in ROW_ONLY_FIELDS)
FIELD_TYPES: dict[str, type] = typing.get_type_hints(Layer)
# Entries that resize their output: their output size is part of what they do. Every
# other entry's follows from its input size and strides, and is 0 in its key.
RESIZING = ("lraspp_high", "upsample")


class EntryKey(Layer):
    """One table entry: the spec.Layer row of a piece of the network the runtime
    executes as a unit, with the fields that do not change its work blank (name ``""``;
    ``squeeze``, ``low`` and, but for RESIZING kinds, ``h_out``, ``w_out`` 0). The
    table's columns are KEY_FIELDS, the rest.

    ``kind`` is ``stem``, ``block`` (a whole inverted residual), ``last_conv`` (1x1 conv
    + act + global pool) or ``head`` (Gemm + act + Gemm to ``out`` classes; no kernel:
    ``kernel``, ``stride``, ``dilation`` 0). ``h`` and ``w`` are the entry's *input*
    resolution. ``classifier`` (the last Gemm alone, ``c_in`` -> ``out`` classes) is
    never a layer of a network: it lets a head measured for one number of classes
    predict another.

    A segmentation network (Lite R-ASPP) has no pool after its last conv (``conv``: 1x1
    conv + act) and its head is four single-input entries, so the head's three free
    widths (high input, ``inter``, low input) are never crossed in one grid:
    ``lraspp_high`` (the 128-channel branch times its pooled sigmoid gate, bilinearly
    resized to the low-level size ``h_out`` x ``w_out``), two ``seg_classifier`` 1x1
    convs to ``out`` classes (one per branch, at the low-level size) and ``upsample``
    (the branches' sum resized to the network's input size ``h_out`` x ``w_out``).
    """

    __slots__ = ()

    @classmethod
    def from_columns(cls, values: dict[str, Any]) -> EntryKey:
        """The key of a mapping of KEY_FIELDS (a journal record, meta.json's reference;
        ``h_out``, ``w_out`` may be missing: written before segmentation)."""
        return BLANK._replace(**values)

    def columns(self) -> dict[str, Any]:
        """The key's KEY_FIELDS, as the journal and meta.json store them."""
        return {f: getattr(self, f) for f in KEY_FIELDS}

    def label(self) -> str:
        """A short description for messages, e.g. ``block 16->64->24 k3 s2 relu @56x56``."""
        if self.kind == "block":
            extra = "".join([" se" if self.se else "", " res" if self.residual else "",
                             "" if self.expand else " noexp"])
            return (f"block {self.c_in}->{self.exp}->{self.out} k{self.kernel} s{self.stride}"
                    f" {self.act}{extra} @{self.h}x{self.w}")
        if self.kind == "head":
            return f"head {self.c_in}->{self.exp}->{self.out} {self.act}"
        if self.kind == "classifier":
            return f"classifier {self.c_in}->{self.out}"
        if self.kind in RESIZING:
            return (f"{self.kind} {self.c_in}->{self.exp or self.out} @{self.h}x{self.w}"
                    f"->{self.h_out}x{self.w_out}")
        return f"{self.kind} {self.c_in}->{self.out} k{self.kernel} s{self.stride} " \
               f"{self.act} @{self.h}x{self.w}"


# Every field blank: str "", int 0, bool False (each field's type called without args).
BLANK = EntryKey._make(FIELD_TYPES[f]() for f in Layer._fields)


def _of_row(row: Layer) -> EntryKey:
    """``row`` with its ROW_ONLY_FIELDS blank."""
    return EntryKey._make(row)._replace(name="", squeeze=0, low=0)


# What a (non-resizing) row's key keeps of it: its fields from ``kind`` to ``w``, one run
# of Layer's fields; the rest is BLANK's. Sliced, not _replace()d: the search prices
# thousands of new rows a second, and _replace costs 5x more.
_KEPT = slice(Layer._fields.index("kind"), Layer._fields.index("w") + 1)
_BEFORE: tuple[Any, ...] = BLANK[:_KEPT.start]
_AFTER: tuple[Any, ...] = BLANK[_KEPT.stop:]
assert set(Layer._fields[_KEPT]) | set(ROW_ONLY_FIELDS) | {"h_out", "w_out"} == \
    set(Layer._fields)


def entry_key(row: Layer) -> EntryKey:
    """The table entry of one row of ``spec.layers`` (not an LR-ASPP head's: lraspp_keys)."""
    if row.kind == "lraspp":
        raise ValueError("an lraspp row has several entries: use lraspp_keys")
    kept = typing.cast(tuple[Any, ...], row[_KEPT])
    key: EntryKey = tuple.__new__(EntryKey, _BEFORE + kept + _AFTER)  # type: ignore[type-var]
    if row.kind == "head":  # Gemms, not convs
        return key._replace(kernel=0, stride=0, dilation=0)
    return key


def conv_key(row: Layer) -> EntryKey:
    """A segmentation network's last conv: 1x1 conv + act, no pool."""
    return entry_key(row)._replace(kind="conv")


def classifier_key(width: int, classes: int) -> EntryKey:
    """A classification head's last Gemm alone (see EntryKey)."""
    return BLANK._replace(kind="classifier", c_in=width, out=classes, act="linear", h=1, w=1)


def seg_classifier_key(c_in: int, classes: int, h: int, w: int) -> EntryKey:
    """An LR-ASPP branch's 1x1 conv to the classes, at ``h`` x ``w``."""
    return BLANK._replace(kind="seg_classifier", c_in=c_in, out=classes, kernel=1, stride=1,
                          dilation=1, act="linear", h=h, w=w)


def upsample_key(classes: int, h: int, w: int, size: tuple[int, int]) -> EntryKey:
    """The LR-ASPP branches' sum resized from ``h`` x ``w`` to the input ``size``."""
    return BLANK._replace(kind="upsample", c_in=classes, out=classes, act="linear", h=h, w=w,
                          h_out=size[0], w_out=size[1])


def lraspp_keys(row: Layer, size: tuple[int, int]) -> list[tuple[str, EntryKey]]:
    """The entries of a Lite R-ASPP head row for a network with input ``size``."""
    high = _of_row(row)._replace(kind="lraspp_high", out=0)
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
    """The input of an entry's model (batch 1): a vector for the Gemm entries."""
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
