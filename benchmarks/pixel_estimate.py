"""Which phone model? Every combination of up to five terms, fitted to the published
Pixel 1 points and the size sweep of configs/devices/pixel.yaml, each judged on what it
was not fitted to:

- leave-one-out on the published MobileNetV3 points (each predicted by a fit without it);
- leave-one-size-out on the size sweep (MobileNetV2 at 96-192 px relative to its 224 px:
  every ratio of a size predicted by a fit without that size);
- MobileNetV2 1.0 / 0.35 at 224 px as the MobileNetV3 paper timed them (64 / 16.6 ms,
  ../shared/reference/MOBILENETV3.md): absolute latencies of an architecture outside the
  search space, in the same TFLite as the published points.

The shipped model is the one with the smallest root-mean-square of all those errors among
the models that price every layer (a fit that leaves the head's or an SE block's FC
layers free is no candidate: reading their weights takes time), drawn from every term of
netadapt.latency.terms but ``conv_weights_m``. That one prices an SE block's two 1x1
convs (matrix-vector products on pooled features) per weight like a conv on a feature
map, and the head's identical FC layers by MACs only; which of the two an SE block is
like, no fitted point can tell (the width sweep is at 224 px only, the size sweep's
MobileNetV2 has no SE), so physics decides: map_weights_m, the weights of convs on
feature maps. The comparison with conv_weights_m is printed. The choice is validated by
nested leave-one-out (chosen and fitted without each published point, then predicting
it), and checked, never fitted, against:

- the ``held_out:`` latencies of pixel.yaml (MobileNetV3 at 96-256 px, the paper's
  appendix), and the same networks' latency ratios to 224 px in the paper's first arXiv
  version (an older TFLite; Large only: Small's layers changed);
- MobileNetV3-Large minimalistic (no SE, ReLU, 3x3 depthwise; the TensorFlow reference's
  README: 44.1 ms on the same Pixel 1 and TFLite as the published points).

The cache term (spilled_m_elements) takes the cache size as given (terms.CACHE_BYTES:
the phone's L2); ``cache_kb=N`` reruns everything with another.

    python benchmarks/pixel_estimate.py [top=12] [cache_kb=1024]   # 4 min on 2 cores
"""

import dataclasses
import itertools
import sys
import time
from typing import NamedTuple

import numpy as np

from netadapt.latency import load_device, terms
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
from netadapt.latency.graphs import entry_keys
from netadapt.latency.terms import TERMS, keys_terms, network_terms
from netadapt.resources import shipped_dir
from netadapt.spec import NetworkSpec, at_size, load_spec

V2_PAPER = {1.0: 64.0, 0.35: 16.6}  # Pixel 1, single big core, the MobileNetV3 paper's TFLite
MINIMALISTIC_MS = 44.1  # Large minimalistic, Pixel 1, the TensorFlow reference's README
# Large in arXiv 1905.02244v1's appendix table (66.0 ms at 224 px in its older TFLite)
ARXIV_V1_LARGE = {96: 15.9, 128: 24.2, 160: 36.0, 192: 49.0, 256: 87.0}
ARXIV_V1_LARGE_224 = 66.0
POOL = [t for t in TERMS if t != "conv_weights_m"]
SIZES = (1, 2, 3, 4, 5)  # terms in a model


def minimalistic(spec: NetworkSpec) -> NetworkSpec:
    """The TensorFlow reference's minimalistic variant: no SE, ReLU, 3x3 depthwise (the
    head's activation, on pooled features, changes no term)."""
    blocks = tuple(dataclasses.replace(b, kernel=3, se=False, act="relu") for b in spec.blocks)
    return dataclasses.replace(
        spec, name=f"{spec.name}_minimalistic", blocks=blocks,
        stem=dataclasses.replace(spec.stem, act="relu"),
        last_conv=dataclasses.replace(spec.last_conv, act="relu"))


class Data(NamedTuple):
    """Every term (columns: ``names``) of everything fitted or checked."""

    names: list[str]
    labels: list[str]  # the published points'
    x: np.ndarray  # published points x terms
    ms: np.ndarray
    sweep: Sweep
    checks: np.ndarray  # V2 1.0, V2 0.35 (paper), Large minimalistic
    checks_ms: np.ndarray
    held: np.ndarray  # held-out points x terms
    held_ms: np.ndarray
    v1: np.ndarray  # Large at ARXIV_V1_LARGE's sizes, then at 224
    layers: np.ndarray  # Large's head entry, an SE block's SE alone


def load_data(names: list[str]) -> Data:
    """The terms of the published points, the sweep and every check."""
    device = load_device("pixel")
    points = published_points(device.published)
    held = published_points(device.held_out)
    sweep = Sweep.of(size_sweep_points(device.size_sweep), names)
    large = load_spec(shipped_dir() / "configs" / "mobilenetv3_large.yaml")
    checks = [keys_terms(mobilenet_v2_keys(a, 224), names) for a in V2_PAPER]
    checks.append(network_terms(minimalistic(large), names))
    keys = [k for _, k in entry_keys(large)]
    head = next(k for k in keys if k.kind == "head")
    se = next(k for k in keys if k.kind == "block" and k.se)
    layers = [keys_terms([head], names),
              keys_terms([se], names) - keys_terms([se._replace(se=False)], names)]
    v1 = [network_terms(at_size(large, s), names) for s in [*ARXIV_V1_LARGE, 224]]
    return Data(names, [p.label for p in points],
                np.array([network_terms(p.spec, names) for p in points]),
                np.array([p.ms for p in points]), sweep, np.array(checks),
                np.array([*V2_PAPER.values(), MINIMALISTIC_MS]),
                np.array([network_terms(p.spec, names) for p in held]),
                np.array([p.ms for p in held]), np.array(v1), np.array(layers))


class Judged(NamedTuple):
    """One model's fit and its errors on what it was not fitted to."""

    cols: list[int]
    rms: float  # of loo, loso and the V2 checks: the rule
    loo: np.ndarray
    loso: np.ndarray
    checks: np.ndarray  # V2 1.0, V2 0.35, Large minimalistic
    coef: np.ndarray
    held: np.ndarray
    v1: np.ndarray  # ratio errors

    @property
    def prices_every_layer(self) -> bool:
        return bool((DATA.layers[:, self.cols] @ self.coef > 0).all())


def judge(cols: list[int], rows: list[int]) -> Judged:
    """The model of terms ``cols`` fitted on the published points ``rows`` and the whole
    sweep, and its errors."""
    d = DATA
    x, ms = d.x[np.ix_(rows, cols)], d.ms[rows]
    sweep = Sweep(d.sweep.at[:, cols], d.sweep.top[:, cols], d.sweep.ms, d.sweep.top_ms,
                  d.sweep.sizes)
    loo = leave_one_out_ms(x, ms, sweep) / ms - 1
    loso = leave_size_out_ratios(x, ms, sweep) / (sweep.ms / sweep.top_ms) - 1
    coef = fit_coefficients(x, ms, sweep)
    checks = d.checks[:, cols] @ coef / d.checks_ms - 1
    rms = float(np.sqrt(np.mean(np.r_[loo, loso, checks[:2]] ** 2)))
    v1 = d.v1[:, cols] @ coef
    v1_errors = (v1[:-1] / v1[-1]) / (np.array(list(ARXIV_V1_LARGE.values()))
                                      / ARXIV_V1_LARGE_224) - 1
    # a model that cannot price V2 at all (e.g. SE elements alone) is no candidate
    return Judged(cols, rms if np.isfinite(rms) else np.inf, loo, loso, checks, coef,
                  d.held[:, cols] @ coef / d.held_ms - 1, v1_errors)


def describe(j: Judged) -> str:
    """One row of the ranking."""
    terms = ", ".join(f"{DATA.names[c]} {k:.4g}" for c, k in zip(j.cols, j.coef))
    return (f"{j.rms:6.1%} {np.abs(j.loo).max():8.1%} {np.abs(j.loso).max():9.1%} "
            f"{j.checks[0]:+7.1%} {j.checks[1]:+8.1%} {j.checks[2]:+7.1%} "
            f"{np.abs(j.held).max():9.1%}  {terms}")


HEADER = (f"{'RMS':>6} {'LOO max':>8} {'size-out':>9} {'V2 1.0':>7} {'V2 0.35':>8} "
          f"{'minimal':>7} {'held-out':>9}  terms (coefficients)")


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv[1:])
    top = int(args.get("top", 12))
    if "cache_kb" in args:
        global DATA
        terms.CACHE_BYTES = int(args["cache_kb"]) * 1024
        DATA = load_data(list(TERMS))
    started = time.perf_counter()
    pool = [DATA.names.index(t) for t in POOL]
    every = list(range(len(DATA.ms)))
    models = [list(c) for r in SIZES for c in itertools.combinations(pool, r)]
    ranked = sorted((j for j in (judge(c, every) for c in models) if j.prices_every_layer),
                    key=lambda j: j.rms)
    shipped = sorted(DATA.names.index(t) for t in PHONE_TERMS)
    print(f"{len(DATA.ms)} published points, {len(DATA.sweep.ms)} size-sweep ratios, "
          f"{len(models)} candidate models, {len(ranked)} pricing every layer")
    print(f"\nbest {top} by the RMS of LOO, size-out and V2 errors (minimal = Large "
          f"minimalistic; held-out: max over {len(DATA.held_ms)} points, never fitted):")
    print(HEADER)
    for j in ranked[:top]:
        print(describe(j) + ("  <- shipped" if sorted(j.cols) == shipped else ""))
    report_shipped(judge(shipped, every))
    per_weight = [list(c) for r in SIZES
                  for c in itertools.combinations(range(len(DATA.names)), r)
                  if DATA.names.index("conv_weights_m") in c]
    best = min((j for j in (judge(c, every) for c in per_weight) if j.prices_every_layer),
               key=lambda j: j.rms)
    print("\nthe best model pricing SE 1x1 convs per weight (conv_weights_m) instead:")
    print(HEADER)
    print(describe(best))
    print("  held out: " + "  ".join(f"{label} {e:+.1%}" for label, e in
                                     zip(held_labels(), best.held)))
    nested_loo(models, every)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


def held_labels() -> list[str]:
    """Short labels of the held-out points: ``large@96``."""
    return [label.split("mobilenetv3_")[1].replace(".yaml ", "")
            for label in load_device("pixel").held_out]


def report_shipped(j: Judged) -> None:
    """The shipped model's checks, point by point."""
    print(f"\nshipped ({' + '.join(PHONE_TERMS)}): every check")
    print("  held out (pixel.yaml held_out:, never fitted): "
          + "  ".join(f"{label} {e:+.1%}" for label, e in zip(held_labels(), j.held)))
    print("  arXiv v1 Large, latency / its 224 px: "
          + "  ".join(f"@{s} {e:+.1%}" for s, e in zip(ARXIV_V1_LARGE, j.v1)))
    print(f"  Large minimalistic {j.checks[2]:+.1%}, V2 1.0 {j.checks[0]:+.1%}, "
          f"V2 0.35 {j.checks[1]:+.1%}")


def nested_loo(models: list[list[int]], every: list[int]) -> None:
    """For each published point: choose the model (same rule) and fit it without the
    point, then predict it."""
    print("\nnested leave-one-out (the model chosen by the same rule without the point, "
          "then predicting it):")
    errors = []
    for i in every:
        rest = every[:i] + every[i + 1:]
        best = min((j for j in (judge(c, rest) for c in models) if j.prices_every_layer),
                   key=lambda j: j.rms)
        errors.append(float(DATA.x[i, best.cols] @ best.coef / DATA.ms[i] - 1))
        print(f"  {DATA.labels[i]:<40} {errors[-1]:+6.1%}  chosen: "
              f"{' + '.join(DATA.names[c] for c in best.cols)}")
    print(f"  max |error| {max(abs(e) for e in errors):.1%}")


DATA = load_data(list(TERMS))

if __name__ == "__main__":
    sys.exit(main(sys.argv))
