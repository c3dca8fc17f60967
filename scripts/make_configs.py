"""Regenerate configs/*.yaml from the MobileNetV3 paper tables (final arXiv version).

    python scripts/make_configs.py

Rows are (kernel, exp, out, SE, activation, stride) exactly as in the paper's Tables 1
and 2; the 0.75 variants use torchvision's width rule with the head kept (the paper's
convention); LR-ASPP mirrors torchvision's lraspp_mobilenet_v3_large (dilated last stage,
not reduced).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from netadapt.spec import NetworkSpec, save_spec, spec_from_dict

LARGE = [
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1), (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
]
SMALL = [
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1), (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2), (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
]


def paper_spec(name: str, rows: list[tuple], last_conv: int, head: int) -> NetworkSpec:
    blocks = [
        {"kernel": k, "exp": e, "out": o, "stride": s, "se": se, "act": act}
        for k, e, o, se, act, s in rows
    ]
    return spec_from_dict({
        "name": name, "input_size": [224, 224], "in_channels": 3, "num_classes": 1000,
        "stem": {"out": 16, "kernel": 3, "stride": 2, "act": "hswish"},
        "blocks": blocks,
        "last_conv": {"out": last_conv, "act": "hswish"},
        "head": {"type": "classifier", "width": head, "act": "hswish", "dropout": 0.2},
    })


def lraspp_spec(large: NetworkSpec) -> NetworkSpec:
    """torchvision's lraspp_mobilenet_v3_large: the last stage (blocks 12-14) dilated
    instead of strided, low feature = output of block 3 (1/8), 21 classes at 520x520."""
    blocks = list(large.blocks)
    for i in range(12, 15):
        blocks[i] = dataclasses.replace(blocks[i], stride=1, dilation=2)
    data = dataclasses.replace(large, blocks=tuple(blocks)).to_dict()
    data.update(name="lraspp_mobilenetv3_large", input_size=[520, 520], num_classes=21,
                head={"type": "lraspp", "low_block": 3, "inter": 128})
    # Blocks 13 and 14 now have stride 1 and equal widths: torchvision keeps their
    # residuals; block 12 widens 112 -> 160 so it has none.
    return spec_from_dict(data)


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "configs"
    large = paper_spec("mobilenetv3_large", LARGE, 960, 1280)
    small = paper_spec("mobilenetv3_small", SMALL, 576, 1024)
    specs = [large, small, large.scaled(0.75), small.scaled(0.75), lraspp_spec(large)]
    names = ["mobilenetv3_large", "mobilenetv3_small", "mobilenetv3_large_075",
             "mobilenetv3_small_075", "lraspp_mobilenetv3_large"]
    for spec, name in zip(specs, names):
        save_spec(dataclasses.replace(spec, name=name), out / f"{name}.yaml")
        print(f"wrote configs/{name}.yaml")


if __name__ == "__main__":
    main()
