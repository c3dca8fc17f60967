"""Which phone model? Every combination of up to three of the estimate's terms, fitted to
the published Pixel 1 points of configs/devices/pixel.yaml, each judged by its
leave-one-out error on those points and by MobileNetV2 1.0 / 0.35 (published 64 / 16.6
ms, ../shared/reference/MOBILENETV3.md: outside the search space, an architecture the
model was not fitted to). The shipped model is the best by the worse of the two. The
choice itself is then validated by nested leave-one-out: for each point, the model is
chosen (same rule) and fitted on the other seven, then predicts it.

    python scripts/pixel_estimate.py [top=12]
"""

import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netadapt.latency import EntryKey, load_device, load_table  # noqa: E402
from netadapt.latency.estimate import (  # noqa: E402
    PHONE_TERMS,
    SOURCE_TERM,
    TERMS,
    fit_coefficients,
    leave_one_out_ms,
    network_terms,
    published_points,
    term_values,
)
from netadapt.spec import make_divisible  # noqa: E402

V2_PUBLISHED = {1.0: 64.0, 0.35: 16.6}  # Pixel 1, single big core, TFLite


def mobilenet_v2_keys(alpha: float) -> list[EntryKey]:
    """MobileNetV2 (t, c, n, s rows; last conv 1280 kept below x1; one 1001-way FC) as
    table entries: outside the search space, so built here for the cross-check."""
    size, c = 224, make_divisible(32 * alpha)
    keys = [EntryKey("stem", 3, 0, c, 3, 2, 1, False, "relu", False, False, size, size)]
    size //= 2
    for t, width, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        out = make_divisible(width * alpha)
        for i in range(n):
            stride = s if i == 0 else 1
            exp = make_divisible(c * t)
            keys.append(EntryKey("block", c, max(exp, c), out, 3, stride, 1, False, "relu",
                                 exp > c, stride == 1 and c == out, size, size))
            size //= stride
            c = out
    keys.append(EntryKey("last_conv", c, 0, 1280, 1, 1, 1, False, "relu", False, False,
                         size, size))
    keys.append(EntryKey("classifier", 1280, 0, 1001, 0, 0, 0, False, "linear", False, False,
                         1, 1))
    return keys


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv[1:])
    top = int(args.get("top", 12))
    points = published_points(load_device("pixel").published)
    source = load_table("local-ref")
    names = [*TERMS, SOURCE_TERM]
    x_all = np.array([network_terms(p.spec, names, source) for p in points])
    v2_all = np.array([[sum(v) for v in zip(*(term_values(k, names, source)
                                                for k in mobilenet_v2_keys(a)))]
                       for a in V2_PUBLISHED])
    v2_ms = np.array(list(V2_PUBLISHED.values()))
    ms = np.array([p.ms for p in points])
    candidates = [list(c) for r in (1, 2, 3) for c in itertools.combinations(range(len(names)), r)]

    def judge(cols: list[int], rows: list[int]) -> tuple[float, np.ndarray, np.ndarray]:
        """(the worse of LOO and V2 max |error|, LOO errors, V2 errors) on ``rows``."""
        x = x_all[np.ix_(rows, cols)]
        loo = leave_one_out_ms(x, ms[rows]) / ms[rows] - 1
        v2 = v2_all[:, cols] @ fit_coefficients(x, ms[rows]) / v2_ms - 1
        worst = max(np.abs(loo).max(), np.abs(v2).max()) if not np.isnan(v2).any() else np.inf
        return float(worst), loo, v2

    every = list(range(len(points)))
    rows = [(cols, *judge(cols, every)) for cols in candidates]
    shipped = [names.index(t) for t in PHONE_TERMS]
    print(f"{len(points)} published points, {len(candidates)} candidate models (source_ms: "
          f"the local-ref entry's own time; V2 n/a for it: no V2 entries there)")
    for title, key in (("by leave-one-out", lambda r: np.abs(r[2]).max()),
                       ("by the worse of leave-one-out and V2", lambda r: r[1])):
        print(f"\nbest {top} {title}:")
        print(f"{'LOO max':>8} {'V2 1.0':>7} {'V2 0.35':>8}  terms (coefficients)")
        for cols, _worst, loo, v2 in sorted(rows, key=key)[:top]:
            coef = fit_coefficients(x_all[:, cols], ms)
            text = ", ".join(f"{names[c]} {k:.4g}" for c, k in zip(cols, coef))
            v2_text = "    n/a      n/a" if np.isnan(v2).any() else f"{v2[0]:+7.1%} {v2[1]:+8.1%}"
            mark = "  <- shipped" if cols == shipped else ""
            print(f"{np.abs(loo).max():8.1%} {v2_text}  {text}{mark}")

    previous = [names.index(SOURCE_TERM), names.index("mmacs")]
    four = [i for i, p in enumerate(points) if p.label.endswith((".yaml", "x0.75"))]
    coef = fit_coefficients(x_all[np.ix_(four, previous)], ms[four])
    print(f"\nthe previous estimate's form ({SOURCE_TERM} + mmacs; here uncalibrated), fitted "
          f"to x1.0 / x0.75 only:")
    for i, p in enumerate(points):
        if i not in four:
            print(f"  {p.label:<40} {x_all[i, previous] @ coef / p.ms - 1:+.1%}")

    print("\nnested leave-one-out (the model chosen by the same rule on 7 points, then "
          "predicting the 8th):")
    nested = []
    for i, left in enumerate(points):
        rest = every[:i] + every[i + 1:]
        best = min(candidates, key=lambda cols: judge(cols, rest)[0])
        coef = fit_coefficients(x_all[np.ix_(rest, best)], ms[rest])
        nested.append(float(x_all[i, best] @ coef / left.ms - 1))
        print(f"  {left.label:<40} {nested[-1]:+6.1%}  chosen: "
              f"{' + '.join(names[c] for c in best)}")
    print(f"  max |error| {max(abs(e) for e in nested):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
