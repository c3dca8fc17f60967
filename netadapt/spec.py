"""Network specs: a MobileNetV3-style network as frozen dataclasses, read from and
written to YAML, validated in one place, with its prunable channel groups derived.

No torch here: the search builds and discards thousands of specs, so a spec must be
cheap to create, compare and hash.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import SpecError
from .files import write_text_atomic

ACTIVATIONS = ("relu", "hswish")
HEAD_TYPES = ("classifier", "lraspp")
WIDTH_STEP = 8  # every prunable width is a multiple of this (the search's granularity)


def make_divisible(value: float, divisor: int = WIDTH_STEP) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, at least ``divisor``.

    The TensorFlow/torchvision rule: rounding may not go more than 10% below ``value``
    (so 18 -> 24, not 16). Used for SE squeeze widths and width multipliers.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_output_size(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output size of a 'same'-padded conv (padding = (kernel - 1) // 2 * dilation)."""
    padding = (kernel - 1) // 2 * dilation
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class Stem:
    """First conv (3x3, stride 2 in MobileNetV3) + BN + activation."""

    out: int
    kernel: int = 3
    stride: int = 2
    act: str = "hswish"


@dataclass(frozen=True)
class Block:
    """Inverted residual: 1x1 expand -> depthwise kxk -> [SE] -> linear 1x1 project.

    The input width is not stored: it is the previous block's ``out`` (or the stem's),
    so a search that edits one width cannot leave a stale copy behind.
    """

    kernel: int
    exp: int
    out: int
    stride: int
    se: bool
    act: str
    expand: bool  # is there a 1x1 expansion conv? (False only when exp == input width)
    residual: bool  # skip connection; needs stride 1 and input width == out
    dilation: int = 1

    @property
    def squeeze(self) -> int:
        """SE bottleneck width: a quarter of the expansion, rounded to 8."""
        return make_divisible(self.exp // 4)


@dataclass(frozen=True)
class LastConv:
    """The efficient last stage's 1x1 conv + BN + activation before pooling."""

    out: int
    act: str = "hswish"


@dataclass(frozen=True)
class ClassifierHead:
    """Pool -> 1x1 conv (Linear) to ``width`` without BN -> act -> dropout -> classes."""

    width: int
    act: str = "hswish"
    dropout: float = 0.2


@dataclass(frozen=True)
class LRASPPHead:
    """Lite R-ASPP segmentation decoder.

    ``low_block`` is the index of the block whose output is the low-level (1/8) feature;
    the high-level feature is the last conv's output.
    """

    low_block: int
    inter: int = 128


Head = ClassifierHead | LRASPPHead


class Layer(NamedTuple):
    """One row of a network as every consumer reads it (``NetworkSpec.layers``): the
    parameter counts, the PyTorch builder, the latency table's entries and ``netadapt
    show`` all take their widths and feature sizes from these rows, never re-derive them.

    ``kind`` is ``stem``, ``block`` (an inverted residual), ``last_conv``, ``head`` (the
    classifier: pool -> Linear to ``exp`` -> act -> Linear to ``out`` classes, its
    Linears counted as 1x1 convs on the pooled 1x1 features) or ``lraspp`` (the Lite
    R-ASPP decoder: ``c_in`` is the high-level feature at ``h`` x ``w``, ``exp`` its
    ``inter`` width, ``low`` the low-level feature's channels at ``h_out`` x ``w_out``,
    where the logits come out). Fields a kind lacks are 0 / False; ``h``, ``w`` are the
    row's input size, ``h_out``, ``w_out`` its output size before any pooling.
    """

    name: str  # stem, blocks[i], last_conv, head
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
    h_out: int
    w_out: int
    squeeze: int = 0  # SE bottleneck width
    low: int = 0  # lraspp: low-level feature channels


def _row(*fields: Any) -> Layer:
    # tuple.__new__ directly: Layer(...) with its generated __new__ cost 2 us a row,
    # most of a prediction's time for a new spec in the search
    return tuple.__new__(Layer, fields)  # type: ignore[type-var]


_BLOCK_NAMES = [f"blocks[{i}]" for i in range(64)]


def walk(spec: NetworkSpec) -> tuple[Layer, ...]:
    """The rows of ``spec`` in network order (use the cached ``spec.layers``)."""
    h, w = spec.input_size
    s = spec.stem
    ho, wo = conv_output_size(h, s.kernel, s.stride), conv_output_size(w, s.kernel, s.stride)
    rows = [_row("stem", "stem", spec.in_channels, 0, s.out, s.kernel, s.stride, 1, False,
                 s.act, False, False, h, w, ho, wo, 0, 0)]
    c_in, h, w = s.out, ho, wo
    low = low_h = low_w = 0
    head = spec.head
    low_block = head.low_block if isinstance(head, LRASPPHead) else -1
    names = _BLOCK_NAMES if len(spec.blocks) <= len(_BLOCK_NAMES) else \
        [f"blocks[{i}]" for i in range(len(spec.blocks))]
    for i, b in enumerate(spec.blocks):
        if b.stride != 1:  # 'same' padding: stride 1 keeps the size, at any dilation
            ho = conv_output_size(h, b.kernel, b.stride, b.dilation)
            wo = conv_output_size(w, b.kernel, b.stride, b.dilation)
        rows.append(_row(names[i], "block", c_in, b.exp, b.out, b.kernel, b.stride,
                         b.dilation, b.se, b.act, b.expand, b.residual, h, w, ho, wo,
                         b.squeeze if b.se else 0, 0))
        if i == low_block:
            low, low_h, low_w = b.out, ho, wo
        c_in, h, w = b.out, ho, wo
    last = spec.last_conv
    rows.append(_row("last_conv", "last_conv", c_in, 0, last.out, 1, 1, 1, False, last.act,
                     False, False, h, w, h, w, 0, 0))
    if isinstance(head, ClassifierHead):
        rows.append(_row("head", "head", last.out, head.width, spec.num_classes, 1, 1, 1,
                         False, head.act, False, False, 1, 1, 1, 1, 0, 0))
    else:
        rows.append(_row("head", "lraspp", last.out, head.inter, spec.num_classes, 1, 1, 1,
                         False, "relu", False, False, h, w, low_h, low_w, 0, low))
    return tuple(rows)


@dataclass(frozen=True)
class ChannelGroup:
    """Widths that the search shrinks together, named by the fields they set.

    ``kind`` is ``expansion`` (one block's expansion, its SE shrinks with it),
    ``bottleneck`` (block outputs tied by residual connections), ``last_conv`` or
    ``head``.
    """

    name: str
    kind: str
    fields: tuple[str, ...]
    width: int

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}, {self.width})"


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network. Constructing one validates it (errors name the field)."""

    name: str
    input_size: tuple[int, int]  # (height, width) used for latency and MAC counts
    in_channels: int
    num_classes: int
    stem: Stem
    blocks: tuple[Block, ...]
    last_conv: LastConv
    head: Head
    groups: tuple[ChannelGroup, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate(self)
        object.__setattr__(self, "groups", _derive_groups(self))

    @property
    def task(self) -> str:
        return "segmentation" if isinstance(self.head, LRASPPHead) else "classification"

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        """One row per stem / block / last conv / head with resolved input widths and
        feature sizes (see Layer); computed once per spec."""
        return walk(self)

    def block_inputs(self) -> list[int]:
        """Input width of every block (the previous block's output, or the stem's)."""
        return [self.stem.out] + [b.out for b in self.blocks[:-1]]

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.groups)
        raise SpecError(f"no channel group named {name!r} (groups: {known})")

    def with_group_width(self, name: str, width: int) -> NetworkSpec:
        """A copy with every field of channel group ``name`` set to ``width``.

        The search prices every candidate width of every group, hundreds of copies an
        iteration, so this one skips the checks that cannot fail: a whole group of a
        valid spec set to a valid width leaves it valid (the widths that a residual or a
        block without expansion tie together are one group), and its groups are the
        parent's with that one width. Constructed in full, the copies took ~2 s of a
        README command (a) run (loop overhead)."""
        group = self.group(name)
        _width(width, name)
        child = copy.copy(self)
        child.__dict__.pop("layers", None)  # the parent's, cached: widths differ
        for key, value in self._replaced({path: width for path in group.fields}).items():
            object.__setattr__(child, key, value)
        object.__setattr__(child, "groups", tuple(
            dataclasses.replace(g, width=width) if g is group else g for g in self.groups))
        return child

    def with_fields(self, values: dict[str, int]) -> NetworkSpec:
        """A copy with width fields (``stem.out``, ``blocks[3].exp``, ...) replaced."""
        return dataclasses.replace(self, **self._replaced(values))

    def _replaced(self, values: dict[str, int]) -> dict[str, Any]:
        """The parts (stem, blocks, last_conv, head) with width fields replaced."""
        stem, blocks = self.stem, list(self.blocks)
        last_conv, head = self.last_conv, self.head
        for path, value in values.items():
            if path.startswith("blocks[") and path.endswith((".exp", ".out")):
                index = int(path[len("blocks[") : path.index("]")])
                change: dict[str, Any] = {path.rsplit(".", 1)[1]: value}
                blocks[index] = dataclasses.replace(blocks[index], **change)
            elif path == "stem.out":
                stem = dataclasses.replace(stem, out=value)
            elif path == "last_conv.out":
                last_conv = dataclasses.replace(last_conv, out=value)
            elif path in ("head.width", "head.inter"):
                head = dataclasses.replace(head, **{path.split(".")[1]: value})  # type: ignore[arg-type]
            else:
                raise SpecError(f"{path}: not a width field of the spec")
        return {"stem": stem, "blocks": tuple(blocks), "last_conv": last_conv, "head": head}

    def scaled(self, width_mult: float, keep_head: bool = True) -> NetworkSpec:
        """Width-multiplier variant, by the TensorFlow reference's rule (the one whose
        counts the paper reports): every output width x mult rounded by make_divisible,
        each expansion = the scaled input x the block's expansion ratio, rounded.

        ``keep_head`` keeps the classifier width, the paper's convention for
        multipliers below 1.
        """
        values: dict[str, int] = {"stem.out": make_divisible(self.stem.out * width_mult)}
        width_in = values["stem.out"]
        for i, (block, old_in) in enumerate(zip(self.blocks, self.block_inputs())):
            values[f"blocks[{i}].exp"] = (
                make_divisible(width_in * block.exp / old_in) if block.expand else width_in)
            width_in = values[f"blocks[{i}].out"] = make_divisible(block.out * width_mult)
        values["last_conv.out"] = make_divisible(self.last_conv.out * width_mult)
        if not keep_head:
            name = "head.width" if isinstance(self.head, ClassifierHead) else "head.inter"
            values[name] = make_divisible(self.group(name).width * width_mult)
        spec = self.with_fields(values)
        return dataclasses.replace(spec, name=f"{self.name}_x{width_mult:g}")

    def to_dict(self) -> dict[str, Any]:
        head = dataclasses.asdict(self.head)
        head = {"type": "lraspp" if isinstance(self.head, LRASPPHead) else "classifier", **head}
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "stem": dataclasses.asdict(self.stem),
            "blocks": [_block_dict(b) for b in self.blocks],
            "last_conv": dataclasses.asdict(self.last_conv),
            "head": head,
        }

    def __str__(self) -> str:
        return f"{self.name}: {len(self.blocks)} blocks, {self.task}, input {self.input_size}"


# The input sizes the resolution baseline tries: multiples of SIZE_STEP, down to MIN_SIZE.
SIZE_STEP = 16
MIN_SIZE = 32


def resolution_sizes(side: int) -> list[int]:
    """The square input sizes the resolution baseline tries for a network deployed at
    ``side`` px, largest first: every multiple of SIZE_STEP from ``side`` down to
    MIN_SIZE (a profile covers them, baseline.resolution tries them)."""
    return list(range(side - side % SIZE_STEP, MIN_SIZE - 1, -SIZE_STEP))


def at_size(spec: NetworkSpec, size: int) -> NetworkSpec:
    """``spec`` at a square input size, named ``NAME@SIZE`` (``spec`` itself when it
    already has that size). The name carries the size because tables, journals and
    validation files are keyed by spec name, and one seed is covered at several sizes."""
    if spec.input_size == (size, size):
        return spec
    base = spec.name.split("@")[0]
    return dataclasses.replace(spec, input_size=(size, size), name=f"{base}@{size}")


_BLOCK_ORDER = ("kernel", "exp", "out", "stride", "dilation", "se", "act", "expand", "residual")


def _block_dict(block: Block) -> dict[str, Any]:
    values = dataclasses.asdict(block)
    return {k: values[k] for k in _BLOCK_ORDER}


# ----------------------------------------------------------------------------- reading


def spec_from_dict(data: Any, where: str = "spec") -> NetworkSpec:
    """Build a spec from plain data (parsed YAML); errors name the offending field."""
    top = _mapping(data, where)
    _check_keys(top, where, required=("name", "stem", "blocks", "last_conv", "head"),
                optional=("input_size", "in_channels", "num_classes"))
    blocks_data = top["blocks"]
    if not isinstance(blocks_data, list) or not blocks_data:
        raise SpecError(f"blocks: must be a non-empty list of blocks, got {blocks_data!r}")
    stem = Stem(**_fields(top["stem"], "stem", Stem))
    blocks: list[Block] = []
    width_in = stem.out
    for i, raw in enumerate(blocks_data):
        path = f"blocks[{i}]"
        values = _fields(raw, path, Block, derived=("expand", "residual"))
        # Defaults that depend on the chain: torchvision's rules.
        values.setdefault("expand", values.get("exp") != width_in)
        values.setdefault(
            "residual", values.get("stride") == 1 and values.get("out") == width_in
        )
        blocks.append(Block(**values))
        width_in = values.get("out", width_in)
    head_data = dict(_mapping(top["head"], "head"))
    head_type = head_data.pop("type", "classifier")
    if head_type not in HEAD_TYPES:
        raise SpecError(f"head.type: must be one of {', '.join(HEAD_TYPES)}, got {head_type!r}")
    head_cls = LRASPPHead if head_type == "lraspp" else ClassifierHead
    head: Head = head_cls(**_fields(head_data, "head", head_cls))
    size = top.get("input_size", [224, 224])
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not isinstance(size, list) or len(size) != 2:
        raise SpecError(f"input_size: must be [height, width] or one integer, got {size!r}")
    return NetworkSpec(
        name=top["name"],
        input_size=(size[0], size[1]),
        in_channels=top.get("in_channels", 3),
        num_classes=top.get("num_classes", 1000),
        stem=stem,
        blocks=tuple(blocks),
        last_conv=LastConv(**_fields(top["last_conv"], "last_conv", LastConv)),
        head=head,
    )


def loads_spec(text: str, source: str = "spec") -> NetworkSpec:
    """Parse YAML text into a spec."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}: not valid YAML{line}: {problem}") from None
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None


def load_spec(path: str | os.PathLike[str]) -> NetworkSpec:
    """Read a spec YAML file. A bare name that is no file here (``mobilenetv3_small``)
    means that spec among the user's or the shipped configs (netadapt/resources.py)."""
    from .resources import find_config

    path = Path(path)
    if not path.exists() and path.parent == Path("."):
        path = find_config(path.name) or path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc})") from None
    return loads_spec(text, source=str(path))


def dumps_spec(spec: NetworkSpec) -> str:
    """YAML text of a spec: one line per block, fixed key order, byte-stable."""
    # default_flow_style=None: collections of scalars inline, everything else block.
    return yaml.safe_dump(spec.to_dict(), default_flow_style=None, sort_keys=False, width=4096)


def save_spec(spec: NetworkSpec, path: str | os.PathLike[str]) -> None:
    """Write a spec atomically (a crash never leaves half a file)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SpecError(f"{path}: directory {path.parent} does not exist; create it first")
    write_text_atomic(path, dumps_spec(spec))


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: must be a mapping of fields, got {type(data).__name__}")
    return data


def _check_keys(data: dict[str, Any], where: str, required: tuple[str, ...],
                optional: tuple[str, ...]) -> None:
    allowed = required + optional
    for key in data:
        if key not in allowed:
            raise SpecError(f"{where}: unknown field {key!r} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in data:
            raise SpecError(f"{where}: missing field {key!r}")


def _fields(data: Any, where: str, cls: type, derived: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a mapping's keys against a dataclass's fields; return it as kwargs."""
    data = _mapping(data, where)
    fields = dataclasses.fields(cls)
    required = tuple(
        f.name for f in fields
        if f.default is dataclasses.MISSING and f.name not in derived
    )
    optional = tuple(f.name for f in fields if f.name not in required)
    _check_keys(data, where, required, optional)
    return dict(data)


# ----------------------------------------------------------------------------- validation


def _validate(spec: NetworkSpec) -> None:
    """Every value check of a spec, in one place; raises SpecError naming the field."""
    if not isinstance(spec.name, str) or not spec.name:
        raise SpecError(f"name: must be a non-empty string, got {spec.name!r}")
    for i, v in enumerate(spec.input_size):
        _positive_int(v, f"input_size[{i}]")
    _positive_int(spec.in_channels, "in_channels")
    _positive_int(spec.num_classes, "num_classes")
    _width(spec.stem.out, "stem.out")
    _kernel(spec.stem.kernel, "stem.kernel")
    _stride(spec.stem.stride, "stem.stride")
    _choice(spec.stem.act, "stem.act", ACTIVATIONS)
    for i, (block, width_in) in enumerate(zip(spec.blocks, spec.block_inputs())):
        p = f"blocks[{i}]"
        _kernel(block.kernel, f"{p}.kernel")
        _width(block.exp, f"{p}.exp")
        _width(block.out, f"{p}.out")
        _stride(block.stride, f"{p}.stride")
        _positive_int(block.dilation, f"{p}.dilation")
        _bool(block.se, f"{p}.se")
        _choice(block.act, f"{p}.act", ACTIVATIONS)
        _bool(block.expand, f"{p}.expand")
        _bool(block.residual, f"{p}.residual")
        if not block.expand and block.exp != width_in:
            raise SpecError(
                f"{p}.exp: must equal the block's input width {width_in} when expand is "
                f"false (no expansion conv), got {block.exp}; set expand: true"
            )
        if block.residual and (block.stride != 1 or block.out != width_in):
            raise SpecError(
                f"{p}.residual: a residual needs stride 1 and out == input width, but "
                f"stride is {block.stride}, input {width_in}, out {block.out}; "
                f"set residual: false"
            )
    _width(spec.last_conv.out, "last_conv.out")
    _choice(spec.last_conv.act, "last_conv.act", ACTIVATIONS)
    head = spec.head
    if isinstance(head, ClassifierHead):
        _width(head.width, "head.width")
        _choice(head.act, "head.act", ACTIVATIONS)
        if isinstance(head.dropout, bool) or not isinstance(head.dropout, (int, float)) \
                or not 0 <= head.dropout < 1:
            raise SpecError(f"head.dropout: must be a number in [0, 1), got {head.dropout!r}")
    else:
        _width(head.inter, "head.inter")
        last = len(spec.blocks) - 1
        if isinstance(head.low_block, bool) or not isinstance(head.low_block, int) \
                or not 0 <= head.low_block < last:
            raise SpecError(
                f"head.low_block: must be a block index in 0..{last - 1}, got {head.low_block!r}"
            )


def _positive_int(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{path}: must be a positive integer, got {value!r}")


def _width(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 \
            or value % WIDTH_STEP:
        raise SpecError(f"{path}: must be a positive multiple of {WIDTH_STEP}, got {value!r}")


def _kernel(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 2 == 0:
        raise SpecError(f"{path}: must be an odd positive integer (1, 3, 5, 7), got {value!r}")


def _stride(value: Any, path: str) -> None:
    if isinstance(value, bool) or value not in (1, 2):
        raise SpecError(f"{path}: must be 1 or 2, got {value!r}")


def _bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{path}: must be true or false, got {value!r}")


def _choice(value: Any, path: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{path}: must be one of {', '.join(allowed)}, got {value!r}")


# ----------------------------------------------------------------------------- groups


def _derive_groups(spec: NetworkSpec) -> tuple[ChannelGroup, ...]:
    """Every width the search may shrink on its own, and every set tied by residuals.

    Block outputs chained by residual connections must keep one width (the add needs
    equal shapes), and a block without expansion conv runs its depthwise conv on its
    input, so its ``exp`` belongs to its input's group.
    """
    # Bottleneck groups as (widest member's width, fields); the last one is the group
    # the next block's input belongs to.
    bottlenecks: list[tuple[int, list[str]]] = [(spec.stem.out, ["stem.out"])]
    expansions: list[tuple[int, ChannelGroup]] = []  # (bottleneck position, group)
    for i, block in enumerate(spec.blocks):
        p = f"blocks[{i}]"
        if block.expand:
            expansions.append((len(bottlenecks) - 1, ChannelGroup(
                f"{p}.exp", "expansion", (f"{p}.exp",), block.exp)))
        else:
            bottlenecks[-1][1].append(f"{p}.exp")
        if block.residual:
            bottlenecks[-1][1].append(f"{p}.out")
        else:
            bottlenecks.append((block.out, [f"{p}.out"]))
    groups: list[ChannelGroup] = []
    for position, (width, fields) in enumerate(bottlenecks):
        groups.append(ChannelGroup(_bottleneck_name(fields), "bottleneck", tuple(fields), width))
        groups.extend(g for pos, g in expansions if pos == position)
    groups.append(ChannelGroup("last_conv.out", "last_conv", ("last_conv.out",),
                               spec.last_conv.out))
    if isinstance(spec.head, ClassifierHead):
        groups.append(ChannelGroup("head.width", "head", ("head.width",), spec.head.width))
    else:
        groups.append(ChannelGroup("head.inter", "head", ("head.inter",), spec.head.inter))
    return tuple(groups)


def _bottleneck_name(fields: list[str]) -> str:
    """``stem+blocks[0].out``, ``blocks[1..2].out``, ``blocks[3].out``, ``stem.out``."""
    indices = [int(f[7:f.index("]")]) for f in fields if f.startswith("blocks[") and
               f.endswith(".out")]
    blocks = "" if not indices else (
        f"blocks[{indices[0]}]" if len(indices) == 1 else f"blocks[{indices[0]}..{indices[-1]}]")
    stem = "stem" if fields[0] == "stem.out" else ""
    return "+".join(x for x in (stem, blocks) if x) + ".out"
