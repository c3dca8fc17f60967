"""Which phone model? Every combination of up to four of the estimate's terms, fitted to
the published Pixel 1 points and the size sweep of configs/devices/pixel.yaml, each judged
on what it was not fitted to:

- leave-one-out on the published MobileNetV3 points (each predicted by a fit without it);
- leave-one-size-out on the size sweep (MobileNetV2 at 96-192 px relative to its 224 px:
  every ratio of a size predicted by a fit without that size);
- MobileNetV2 1.0 / 0.35 at 224 px as the MobileNetV3 paper timed them (64 / 16.6 ms,
  ../shared/reference/MOBILENETV3.md): absolute latencies of an architecture outside the
  search space, in the same TFLite as the published points.

The shipped model is the one with the smallest root-mean-square of all those held-out
errors. The choice itself is then validated by nested leave-one-out: for each published
point, the model is chosen (same rule) and fitted without it, then predicts it. The
published MobileNetV3 latencies at other input sizes are used nowhere.

    python benchmarks/pixel_estimate.py [top=12]
"""

import itertools
import sys
import time

import numpy as np

from netadapt.latency import load_device
from netadapt.latency.estimate import (
    PHONE_TERMS,
    Sweep,
    fit_coefficients,
    leave_one_out_ms,
    leave_size_out_ratios,
    mobilenet_v2_keys,
    published_points,
    size_sweep_points,
)
from netadapt.latency.terms import TERMS, keys_terms, network_terms

V2_PAPER = {1.0: 64.0, 0.35: 16.6}  # Pixel 1, single big core, the MobileNetV3 paper's TFLite


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv[1:])
    top = int(args.get("top", 12))
    device = load_device("pixel")
    points = published_points(device.published)
    sweep_points = size_sweep_points(device.size_sweep)
    names = list(TERMS)
    x_all = np.array([network_terms(p.spec, names) for p in points])
    ms = np.array([p.ms for p in points])
    sweep_all = Sweep.of(sweep_points, names)
    v2_all = np.array([keys_terms(mobilenet_v2_keys(a, 224), names) for a in V2_PAPER])
    v2_ms = np.array(list(V2_PAPER.values()))
    candidates = [list(c) for r in (1, 2, 3, 4)
                  for c in itertools.combinations(range(len(names)), r)]

    def judge(cols: list[int], rows: list[int]) -> tuple[float, np.ndarray, np.ndarray,
                                                         np.ndarray]:
        """(RMS of every held-out error, LOO errors, size-left-out errors, V2 errors),
        fitted on the published points ``rows`` and the whole sweep."""
        x = x_all[np.ix_(rows, cols)]
        sweep = Sweep(sweep_all.at[:, cols], sweep_all.top[:, cols], sweep_all.ms,
                      sweep_all.top_ms, sweep_all.sizes)
        loo = leave_one_out_ms(x, ms[rows], sweep) / ms[rows] - 1
        loso = leave_size_out_ratios(x, ms[rows], sweep) / (sweep.ms / sweep.top_ms) - 1
        v2 = v2_all[:, cols] @ fit_coefficients(x, ms[rows], sweep) / v2_ms - 1
        errors = np.r_[loo, loso, v2]
        rms = float(np.sqrt(np.mean(errors ** 2)))
        # a model that cannot price V2 at all (e.g. SE elements alone) is no candidate
        return (rms if np.isfinite(rms) else np.inf), loo, loso, v2

    started = time.perf_counter()
    every = list(range(len(points)))
    rows = [(cols, *judge(cols, every)) for cols in candidates]
    shipped = sorted(names.index(t) for t in PHONE_TERMS)
    print(f"{len(points)} published points, {len(sweep_points)} size-sweep ratios, "
          f"{len(candidates)} candidate models")
    print(f"\nbest {top} by the RMS of every held-out error:")
    print(f"{'RMS':>6} {'LOO max':>8} {'size-out max':>13} {'V2 1.0':>7} {'V2 0.35':>8}  "
          f"terms (coefficients)")
    for cols, rms, loo, loso, v2 in sorted(rows, key=lambda r: r[1])[:top]:
        sweep = Sweep(sweep_all.at[:, cols], sweep_all.top[:, cols], sweep_all.ms,
                      sweep_all.top_ms, sweep_all.sizes)
        coef = fit_coefficients(x_all[:, cols], ms, sweep)
        text = ", ".join(f"{names[c]} {k:.4g}" for c, k in zip(cols, coef))
        mark = "  <- shipped" if cols == shipped else ""
        print(f"{rms:6.1%} {np.abs(loo).max():8.1%} {np.abs(loso).max():13.1%} "
              f"{v2[0]:+7.1%} {v2[1]:+8.1%}  {text}{mark}")

    previous = [names.index(t) for t in ("mmacs", "se_m_elements", "conv_m_positions")]
    coef = fit_coefficients(x_all[:, previous], ms)  # fitted without the sweep, as shipped
    ratio = (sweep_all.at[:, previous] @ coef) / (sweep_all.top[:, previous] @ coef)
    errors = ratio / (sweep_all.ms / sweep_all.top_ms) - 1
    print("\nthe previous estimate (mmacs + se_m_elements + conv_m_positions, fitted to the "
          "width sweep only) on the size sweep's ratios:")
    for p, e in zip(sweep_points, errors):
        print(f"  {p.label:<28} {e:+6.1%}")

    print("\nnested leave-one-out (the model chosen by the same rule without the point, "
          "then predicting it):")
    nested = []
    for i, left in enumerate(points):
        rest = every[:i] + every[i + 1:]
        best = min(candidates, key=lambda cols: judge(cols, rest)[0])
        sweep = Sweep(sweep_all.at[:, best], sweep_all.top[:, best], sweep_all.ms,
                      sweep_all.top_ms, sweep_all.sizes)
        coef = fit_coefficients(x_all[np.ix_(rest, best)], ms[rest], sweep)
        nested.append(float(x_all[i, best] @ coef / left.ms - 1))
        print(f"  {left.label:<40} {nested[-1]:+6.1%}  chosen: "
              f"{' + '.join(names[c] for c in best)}")
    print(f"  max |error| {max(abs(e) for e in nested):.1%}  "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
