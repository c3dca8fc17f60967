"""A latency table for a device we cannot reach (a phone with none attached), labelled
ESTIMATE wherever it is shown.

The phone is modelled, not measured: every entry of a measured table (every width and
input size that table covers) is priced by a few per-entry terms, each the cost of one
kind of work on a phone's big core, with coefficients fitted to the device's published
end-to-end latencies:

    entry_ms = a x MMACs                  (convs and FC layers: compute)
             + b x SE elements (M)        (the expanded map an SE block pools and
                                           rescales: elementwise passes over memory)
             + c x op positions (M)       (each op that sweeps a feature map, whatever
                                           its width: the convs, an h-swish (TFLite fuses
                                           ReLU into the conv, not h-swish), an SE block's
                                           pool and rescale, a residual add, the last
                                           conv's pool: per-position loop and memory
                                           overhead, what narrow networks pay beyond MACs)
             + d x feature-map weights (M) (the weights of the convs on feature maps, paid
                                           once per inference whatever the input size: a
                                           GEMM packs them on every call; what a smaller
                                           input does not save)
             + e x spilled elements (M)   (the input and output of each conv whose tensors
                                           exceed the phone's L2 (CACHE_BYTES): re-read
                                           from DRAM instead of the cache; what a smaller
                                           input saves beyond its positions)

The SE blocks' two 1x1 convs and LR-ASPP's gate run on pooled 1x1 features: matrix-vector
products that read each weight once, unpacked, like the head's FC layers, so they cost
their MACs, not d per weight. (Priced per weight like a feature-map conv, they would cost
Large 3.0 ms at every input size, a quarter of its published 96 px latency, and the
estimate would be 14-17% slow at 96-128 px: docs/latency.md, "The pixel ESTIMATE".)

Two kinds of published figures fit it. The device's own network at its fitted size
(``published:``: the MobileNetV3 width sweep at 224 px) fixes the absolute costs; a size
sweep of another network on the same phone (``size_sweep:``: MobileNetV2 at 96-224 px,
measured with an older TFLite, so only each network's latency *relative to its own
224 px* is used) fixes how latency falls with the input size, which the width sweep
alone cannot tell (every term there scales with the positions alike). Non-negative
coefficients, fitted on relative error, validated by leave-one-out on every published
point and by leaving each size of the sweep out; ``held_out:`` latencies (the device's
network at other input sizes) are never fitted, only checked (benchmarks/pixel_estimate.py
compares the candidate models of up to five terms; docs/latency.md has the comparison).

Where the table composes entries (T(c,e,o) = T(c,e,o0) + T(c0,e,o) - T(c0,e,o0) for
blocks without residual), every term is exact: each is a sum over the block's ops of
what that op's own widths give, the input width reaching only the expansion conv (its
MACs, weights, tensors), the output width only the projection, and positions no width;
heads are written for every class count in CLASSES, so a 10-class head is priced
directly, not composed.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cost import conv_output_size
from ..errors import LatencyError
from ..resources import shipped_dir
from ..spec import NetworkSpec, at_size, load_spec, make_divisible
from .coverage import CLASSES
from .devices import Device
from .graphs import BLANK, EntryKey, classifier_key
from .table import COLUMNS, FORMAT, LatencyTable, keys_of, load_table, read_table_files, write_table
from .terms import keys_terms, network_terms, term_values

SOURCE = "Howard et al. 2019 (MobileNetV3), TFLite float, single big core, batch 1"
SIZE_SWEEP_SOURCE = ("TensorFlow slim MobileNetV2 checkpoints table (Pixel 1, TFLite float, "
                     "big core): ratios to each network's own largest size")
HELD_OUT_SOURCE = ("Howard et al. 2019 (MobileNetV3), appendix table: the same networks at "
                   "other input sizes, never fitted")


PHONE_TERMS = ("mmacs", "se_m_elements", "op_m_positions", "map_weights_m",
               "spilled_m_elements")


@dataclass(frozen=True)
class Published:
    """One published end-to-end latency: ``configs/x.yaml``, ``configs/x.yaml x0.5`` (a
    width multiplier, NetworkSpec.scaled: the TensorFlow reference's rule) or either at
    another input size, ``configs/x.yaml @128``."""

    label: str
    spec: NetworkSpec
    ms: float


def published_points(published: dict[str, float], root: Path | None = None
                     ) -> list[Published]:
    """The device profile's ``published:`` (or ``held_out:``) entries, each with its spec
    (paths relative to the shipped files: ``configs/...``)."""
    points = []
    for label, ms in published.items():
        rest, _, size = label.partition(" @")
        path, _, mult = rest.partition(" x")
        file = Path(path) if Path(path).is_absolute() else (root or shipped_dir()) / path
        try:
            spec = load_spec(file)
            if mult:
                spec = spec.scaled(float(mult))
            if size:
                spec = at_size(spec, int(size))
        except ValueError:
            raise LatencyError(f"published: {label!r}: write SPEC.yaml, 'SPEC.yaml xMULT' "
                               f"or either with ' @SIZE' (e.g. "
                               f"'configs/mobilenetv3_large.yaml x0.5 @128')") from None
        points.append(Published(label, spec, float(ms)))
    return points


def mobilenet_v2_keys(alpha: float, size: int) -> list[EntryKey]:
    """MobileNetV2 (Sandler et al. 2018: its t, c, n, s rows; the last conv's 1280
    channels kept below x1 and scaled above; one 1001-way FC) as table entries at a square
    input size. Outside the search space: built for the size sweep that fits the
    estimate, so only its terms are ever needed, never a measured entry."""
    c = make_divisible(32 * alpha)
    conv = BLANK._replace(kernel=1, stride=1, dilation=1, act="relu")
    keys = [conv._replace(kind="stem", c_in=3, out=c, kernel=3, stride=2, h=size, w=size)]
    hw = conv_output_size(size, 3, 2, 1)
    for t, width, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        out = make_divisible(width * alpha)
        for i in range(n):
            stride = s if i == 0 else 1
            exp = make_divisible(c * t)
            keys.append(conv._replace(kind="block", c_in=c, exp=max(exp, c), out=out, kernel=3,
                                      stride=stride, expand=exp > c,
                                      residual=stride == 1 and c == out, h=hw, w=hw))
            hw = conv_output_size(hw, 3, stride, 1)
            c = out
    last = make_divisible(1280 * alpha) if alpha > 1 else 1280
    keys.append(conv._replace(kind="last_conv", c_in=c, out=last, h=hw, w=hw))
    keys.append(classifier_key(last, 1001))
    return keys


SWEEP_NETWORKS: dict[str, Callable[[float, int], list[EntryKey]]] = {
    "mobilenet_v2": mobilenet_v2_keys}


@dataclass(frozen=True)
class SizePoint:
    """One latency of a size sweep with the same network's at the sweep's largest size:
    the model is fitted to their ratio (the sweep may come from another runtime version
    than ``published:``; a ratio does not care)."""

    label: str  # "mobilenet_v2 x0.5 @96"
    size: int
    keys: tuple[EntryKey, ...]
    ms: float
    largest_keys: tuple[EntryKey, ...]
    largest_ms: float

    @property
    def ratio(self) -> float:
        """The published latency at this size / at the sweep's largest."""
        return self.ms / self.largest_ms


def size_sweep_points(sweep: dict[str, dict[int, float]]) -> list[SizePoint]:
    """The device profile's ``size_sweep:`` (``NETWORK xMULT: {size: ms, ...}``), one
    point per size below each network's largest."""
    points = []
    for label, by_size in sweep.items():
        name, _, mult = label.partition(" x")
        build = SWEEP_NETWORKS.get(name)
        try:
            alpha = float(mult) if mult else 1.0
            sizes = {int(k): float(v) for k, v in by_size.items()}
        except (TypeError, ValueError, AttributeError):
            build = None
        if build is None or len(sizes) < 2:
            raise LatencyError(f"size_sweep: {label!r}: write 'NETWORK xMULT: {{SIZE: ms, ...}}' "
                               f"with two sizes or more (NETWORK: {', '.join(SWEEP_NETWORKS)})")
        largest = max(sizes)
        top = tuple(build(alpha, largest))
        points += [SizePoint(f"{label} @{size}", size, tuple(build(alpha, size)), ms, top,
                             sizes[largest])
                   for size, ms in sorted(sizes.items()) if size != largest]
    return points


@dataclass
class EstimateFit:
    """Coefficients of a phone model and how well it reproduces the published points."""

    terms: tuple[str, ...]
    coef: np.ndarray
    points: list[Published]
    fitted_ms: np.ndarray
    loo_ms: np.ndarray  # each point predicted by a fit without it
    sweep: list[SizePoint] = field(default_factory=list)
    sweep_fitted: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ratios
    sweep_loso: np.ndarray = field(default_factory=lambda: np.zeros(0))  # size left out
    held_out: list[Published] = field(default_factory=list)  # never fitted, only checked
    held_out_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def fit_errors(self) -> np.ndarray:
        """Each published point's relative error under the fit to all of them."""
        return self.fitted_ms / self._published - 1

    @property
    def loo_errors(self) -> np.ndarray:
        """Each published point's relative error under a fit without it."""
        return self.loo_ms / self._published - 1

    @property
    def sweep_loso_errors(self) -> np.ndarray:
        """Each size's ratio predicted by a fit without that size, against the published."""
        return self.sweep_loso / np.array([p.ratio for p in self.sweep]) - 1

    @property
    def held_out_errors(self) -> np.ndarray:
        """Each held-out point's relative error under the fit (which never saw it)."""
        return self.held_out_ms / np.array([p.ms for p in self.held_out]) - 1

    @property
    def _published(self) -> np.ndarray:
        return np.array([p.ms for p in self.points])

    def formula(self) -> str:
        """The fitted model, e.g. ``0.13 x mmacs + 0.69 x depthwise_mmacs``."""
        return " + ".join(f"{c:.4g} x {t}" for t, c in zip(self.terms, self.coef))

    def to_dict(self) -> dict[str, Any]:
        """The fit as an ESTIMATE's meta.json records it (``estimate_fit``)."""
        out = {
            "model": f"entry_ms = {' + '.join(f'c[{t}] x {t}' for t in self.terms)}",
            "coefficients": {t: float(c) for t, c in zip(self.terms, self.coef)},
            "source": SOURCE,
            "points": [{"network": p.label, "published_ms": p.ms, "fitted_ms": float(f),
                        "leave_one_out_ms": float(lo)}
                       for p, f, lo in zip(self.points, self.fitted_ms, self.loo_ms)],
            "fit_max_abs_error": float(np.abs(self.fit_errors).max()),
            "leave_one_out_max_abs_error": float(np.abs(self.loo_errors).max()),
        }
        if self.sweep:
            out["size_sweep"] = {
                "source": SIZE_SWEEP_SOURCE,
                "points": [{"network": p.label, "published_ratio": p.ratio,
                            "fitted_ratio": float(f), "leave_size_out_ratio": float(lo)}
                           for p, f, lo in zip(self.sweep, self.sweep_fitted, self.sweep_loso)],
                "leave_size_out_max_abs_error": float(np.abs(self.sweep_loso_errors).max())}
        if self.held_out:
            out["held_out"] = {
                "source": HELD_OUT_SOURCE,
                "points": [{"network": p.label, "published_ms": p.ms, "predicted_ms": float(m)}
                           for p, m in zip(self.held_out, self.held_out_ms)],
                "max_abs_error": float(np.abs(self.held_out_errors).max())}
        return out


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares, exactly, by trying every support (a handful of
    terms: at most 2**6 small solves). A negative cost per MAC would make a narrower
    network slower, which no search may be told."""
    best: tuple[float, np.ndarray] | None = None
    n = a.shape[1]
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            cols = list(support)
            c, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if (c < 0).any():
                continue
            residual = float(np.sum((a[:, cols] @ c - b) ** 2))
            if best is None or residual < best[0] - 1e-15:
                full = np.zeros(n)
                full[cols] = c
                best = (residual, full)
    return best[1] if best is not None else np.zeros(n)


@dataclass(frozen=True)
class Sweep:
    """A size sweep's terms, ready to fit: ``at`` / ``top`` (points x terms) and the
    published ms of each at its size and at the largest."""

    at: np.ndarray
    top: np.ndarray
    ms: np.ndarray
    top_ms: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, points: Sequence[SizePoint], terms: Sequence[str]) -> Sweep:
        """The sweep's points' terms, at their sizes and at the largest."""
        at = np.array([keys_terms(p.keys, terms) for p in points])
        top = np.array([keys_terms(p.largest_keys, terms) for p in points])
        return cls(at, top, np.array([p.ms for p in points]),
                   np.array([p.largest_ms for p in points]),
                   np.array([p.size for p in points]))

    def rows(self) -> np.ndarray:
        """Linear residuals that vanish when the model's ratio is the published one:
        terms(size) / ms(size) - terms(largest) / ms(largest), on the relative scale of
        the published points' rows."""
        return self.at / self.ms[:, None] - self.top / self.top_ms[:, None]

    def subset(self, keep: np.ndarray) -> Sweep:
        """The points where ``keep`` (a boolean mask) is true."""
        return Sweep(self.at[keep], self.top[keep], self.ms[keep], self.top_ms[keep],
                     self.sizes[keep])

    def ratios(self, coef: np.ndarray) -> np.ndarray:
        """Each point's latency / at the largest size, as the model ``coef`` predicts it."""
        return (self.at @ coef) / (self.top @ coef)


def fit_coefficients(x: np.ndarray, ms: np.ndarray, sweep: Sweep | None = None) -> np.ndarray:
    """Coefficients minimising the squared relative error of the network sums
    (``x``: networks x terms, ``ms``: their published latencies) and of the sweep's
    ratios."""
    a, b = x / ms[:, None], np.ones(len(ms))
    if sweep is not None and len(sweep.ms):
        a, b = np.vstack([a, sweep.rows()]), np.r_[b, np.zeros(len(sweep.ms))]
    return nnls(a, b)


def leave_one_out_ms(x: np.ndarray, ms: np.ndarray, sweep: Sweep | None = None) -> np.ndarray:
    """Each network predicted by the coefficients fitted to all the others (and the
    whole sweep)."""
    if len(ms) < 2:
        return np.full(len(ms), np.nan)
    return np.array([x[i] @ fit_coefficients(np.delete(x, i, axis=0), np.delete(ms, i), sweep)
                     for i in range(len(ms))])


def leave_size_out_ratios(x: np.ndarray, ms: np.ndarray, sweep: Sweep) -> np.ndarray:
    """Each sweep point's ratio predicted by a fit without any point of its size."""
    out = np.full(len(sweep.ms), np.nan)
    for size in np.unique(sweep.sizes):
        left = sweep.sizes == size
        coef = fit_coefficients(x, ms, sweep.subset(~left))
        out[left] = sweep.subset(left).ratios(coef)
    return out


def fit_phone_model(points: list[Published], terms: Sequence[str] = PHONE_TERMS,
                    source: LatencyTable | None = None, sweep: Sequence[SizePoint] = (),
                    held_out: Sequence[Published] = ()) -> EstimateFit:
    """Fit the terms' coefficients to the published points (and the size sweep's
    ratios), leave each point (each sweep size) out once to see how well the model
    predicts what it was not fitted to, and predict the ``held_out`` points, which no
    fit sees."""
    if not points:
        raise LatencyError("no published latencies to fit an estimate to")
    x = np.array([network_terms(p.spec, terms, source) for p in points])
    if np.isnan(x).any():
        bad = [p.label for p, row in zip(points, x) if np.isnan(row).any()]
        raise LatencyError(f"the source table lacks entries of {', '.join(bad)}")
    ms = np.array([p.ms for p in points])
    sw = Sweep.of(sweep, terms) if sweep else None
    coef = fit_coefficients(x, ms, sw)
    fit = EstimateFit(tuple(terms), coef, points, x @ coef, leave_one_out_ms(x, ms, sw))
    if sw is not None:
        fit.sweep, fit.sweep_fitted = list(sweep), sw.ratios(coef)
        fit.sweep_loso = leave_size_out_ratios(x, ms, sw)
    if held_out:
        fit.held_out = list(held_out)
        fit.held_out_ms = np.array([network_terms(p.spec, terms, source) @ coef
                                    for p in held_out])
    return fit


def _with_all_classes(frame: pd.DataFrame) -> pd.DataFrame:
    """Add a head row for every class count in CLASSES: an estimate prices them
    directly, so the table never composes a head (its composition guard is for
    measured noise, and misprices a wide classifier on a narrow head)."""
    heads = frame[frame["kind"] == "head"]
    extra = [heads.assign(out=k) for k in CLASSES]
    both = pd.concat([frame, *extra], ignore_index=True)
    return both.drop_duplicates(subset=[c for c in COLUMNS if c not in ("ms", "spread", "n")])


def estimate(source: LatencyTable, device: Device, published: dict[str, float],
             specs: dict[str, NetworkSpec], source_frame: pd.DataFrame,
             root: Path | None = None, terms: Sequence[str] = PHONE_TERMS,
             sweep: Sequence[SizePoint] = (), held_out: Sequence[Published] = ()
             ) -> EstimateFit:
    """Write DEVICE's ESTIMATE table: every entry of ``source_frame`` (the source
    table's rows: its widths and input sizes) priced by the phone model fitted to
    ``published`` (label -> ms; ``specs`` gives each label's network) and to the size
    ``sweep``'s ratios; the ``held_out`` points are checked, not fitted."""
    points = [Published(label, specs[label], ms) for label, ms in published.items()]
    fit = fit_phone_model(points, terms, source, sweep, held_out)
    frame = _with_all_classes(source_frame)
    keys = keys_of(frame)
    values = np.array([term_values(k, terms, source) for k in keys])
    frame = frame.assign(ms=values @ fit.coef, spread=0.0, n=0)
    frame = frame.sort_values(list(COLUMNS[:-3]), kind="stable").reset_index(drop=True)
    summary = (f"{len(points)} published latencies fitted by {len(terms)} terms, "
               f"leave-one-out within {np.abs(fit.loo_errors).max():.1%}")
    if fit.sweep:
        summary += (f"; {len(fit.sweep)} size ratios of a size sweep, each size left out "
                    f"within {np.abs(fit.sweep_loso_errors).max():.1%}")
    if fit.held_out:
        summary += (f"; {len(fit.held_out)} held-out latencies (never fitted) within "
                    f"{np.abs(fit.held_out_errors).max():.1%}")
    meta = {
        "format": FORMAT, "device": device.name, "description": device.description,
        "runner": device.runner, "estimate": True, "estimate_of": source.device,
        "estimate_summary": summary,
        "runtime": {**source.meta["runtime"], "note": f"the entries (widths, input sizes) "
                    f"of the {source.device} table; their times are modelled"},
        "cpu": f"ESTIMATE for {device.description}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": source.meta["reference"],
        # the model is fitted to end-to-end latencies: nothing left to calibrate
        "seeds": [{"name": s["name"], "signature": s["signature"], "spec": s["spec"],
                   "factor": 1.0} for s in source.meta["seeds"]],
        "estimate_fit": fit.to_dict(),
    }
    write_table(device.name, frame[COLUMNS], meta, root)
    return fit


def estimate_from(device: Device, source: str, root: Path | None = None) -> EstimateFit:
    """``netadapt profile --device DEVICE --estimate-from SOURCE``: write DEVICE's
    ESTIMATE table from SOURCE's table (see estimate), fitted to the device profile's
    ``published:`` latencies and ``size_sweep:`` and checked against its ``held_out:``;
    returns the fit (its points, sweep and held-out points included) to report."""
    if not device.published:
        raise LatencyError(f"device {device.name}: no published latencies in {device.path} to "
                           f"fit an estimate to; add published: {{SPEC.yaml [xMULT]: ms}}")
    table = load_table(source, root)
    frame, _ = read_table_files(source, root)
    points = published_points(dict(device.published))
    return estimate(table, device, dict(device.published), {p.label: p.spec for p in points},
                    frame, root, sweep=size_sweep_points(device.size_sweep),
                    held_out=published_points(dict(device.held_out)))
