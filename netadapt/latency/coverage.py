"""What a table must hold to cover a seed: every entry of every network the search can
reach from it (``grid``), or of the seed's width-multiplier networks (``multipliers``).
"""

from __future__ import annotations

from ..errors import LatencyError
from ..spec import Layer, LRASPPHead, NetworkSpec
from .graphs import (
    EntryKey,
    classifier_key,
    conv_key,
    entry_key,
    entry_keys,
    lraspp_keys,
    seg_classifier_key,
)

# Numbers of classes whose last Gemm every table measures: a head measured for the seed's
# classes predicts any other number by swapping that Gemm (ImageNet, CIFAR-100,
# Fashion-MNIST / CIFAR-10); others are interpolated linearly in the classes, the one
# dimension the search never changes.
CLASSES = (10, 100, 1000)
# Numbers of classes a segmentation head is measured for besides the seed's: the built-in
# synthetic set (10 garments + background) and Pascal VOC (20 + background).
SEG_CLASSES = (11, 21)
# Input sizes a table covers beyond its full width grids: at each, the seed and its
# width-multiplier networks (what the resolution baseline and the paper's Table 9 reach).
SIZES = (96, 128, 160, 192, 224, 256)
MULTIPLIERS = (0.35, 0.5, 0.75, 1.0)
COVERAGES = ("grid", "multipliers")


def parse_sizes(text: str, option: str = "--multiplier-sizes") -> list[int]:
    """Input sizes written ``96,128,224`` (``none`` or empty: none), each >= 16."""
    try:
        sizes = [] if text.strip() in ("", "none") else [int(x) for x in text.split(",")]
    except ValueError:
        raise LatencyError(f"{option}: expected sizes like 96,128,224 or none, "
                           f"got {text!r}") from None
    if any(n < 16 for n in sizes):
        raise LatencyError(f"{option}: sizes must be >= 16, got {text}")
    return sizes


def _widths(width: int) -> range:
    """Every width the search can give a group of ``width`` channels."""
    return range(8, width + 1, 8)


def multiplier_specs(seed: NetworkSpec) -> list[NetworkSpec]:
    """The seed's width-multiplier networks (NetworkSpec.scaled, head kept), largest
    first; x1.0 is the seed itself."""
    return [seed if m == 1.0 else seed.scaled(m) for m in sorted(MULTIPLIERS, reverse=True)]


def required_keys(seed: NetworkSpec, coverage: str = "grid") -> set[EntryKey]:
    """Every entry needed to predict what ``coverage`` promises for ``seed`` at its input
    size: ``grid``, any spec the search can reach from it (each group shrunk to any
    multiple of 8 down to 8), with composed blocks' two slices; ``multipliers``, the
    seed and its width-multiplier networks (any number of classes)."""
    keys: set[EntryKey] = set()
    if coverage == "multipliers":
        keys.update(k for spec in multiplier_specs(seed) for _, k in entry_keys(spec))
        keys.update(classifier_key(k.exp, c) for k in list(keys) if k.kind == "head"
                    for c in sorted({*CLASSES, seed.num_classes}))
        return keys
    width = {f: g.width for g in seed.groups for f in g.fields}
    c_field = "stem.out"  # the field that sets the next row's input width
    for row in seed.layers:
        if row.kind == "lraspp":
            keys.update(_lraspp_grid(seed, row, width))
            continue
        key = entry_key(row)
        if row.kind == "stem":
            keys.update(key._replace(out=o) for o in _widths(width["stem.out"]))
        elif row.kind == "block":
            c_range = _widths(width[c_field])
            e_range = _widths(width[f"{row.name}.exp"])
            o_range = _widths(width[f"{row.name}.out"])
            if not row.expand and row.residual:
                keys.update(key._replace(c_in=c, exp=c, out=c) for c in c_range)
            elif not row.expand:
                keys.update(key._replace(c_in=c, exp=c, out=o)
                            for c in c_range for o in o_range)
            elif row.residual:
                keys.update(key._replace(c_in=c, exp=e, out=c)
                            for c in c_range for e in e_range)
            else:
                keys.update(key._replace(c_in=c, exp=e, out=key.out)
                            for c in c_range for e in e_range)
                keys.update(key._replace(c_in=key.c_in, exp=e, out=o)
                            for e in e_range for o in o_range)
            c_field = f"{row.name}.out"
        elif row.kind == "last_conv":
            if isinstance(seed.head, LRASPPHead):
                key = conv_key(row)
            keys.update(key._replace(c_in=c, out=o) for c in _widths(width[c_field])
                        for o in _widths(width["last_conv.out"]))
        else:
            keys.update(key._replace(c_in=c, exp=w)
                        for c in _widths(width["last_conv.out"])
                        for w in _widths(width["head.width"]))
            keys.update(classifier_key(w, k) for w in _widths(width["head.width"])
                        for k in sorted({*CLASSES, seed.num_classes}))
    return keys


def _lraspp_grid(seed: NetworkSpec, row: Layer, width: dict[str, int]) -> set[EntryKey]:
    """A Lite R-ASPP head's entries at every width of its three inputs, for the seed's
    classes and SEG_CLASSES."""
    assert isinstance(seed.head, LRASPPHead)
    keys: set[EntryKey] = set()
    low = width[f"blocks[{seed.head.low_block}].out"]
    for classes in sorted({*SEG_CLASSES, seed.num_classes}):
        for c in _widths(width["last_conv.out"]):
            for e in _widths(width["head.inter"]):
                keys.update(k for _, k in lraspp_keys(row._replace(
                    c_in=c, exp=e, low=low, out=classes), seed.input_size))
        keys.update(seg_classifier_key(c, classes, row.h_out, row.w_out) for c in _widths(low))
    return keys
