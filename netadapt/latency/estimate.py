"""A latency table for a device we cannot reach (a phone with none attached): derived
from a measured table's entries and the device's published end-to-end latencies, and
labelled ESTIMATE wherever it is shown."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cost import conv_output_size
from ..spec import NetworkSpec, make_divisible
from .devices import Device
from .graphs import EntryKey, entry_keys
from .profile import write_table
from .table import COLUMNS, FORMAT, LatencyTable, key_of


def entry_macs(key: EntryKey) -> int:
    """Multiply-accumulates of one entry (as netadapt.cost counts them)."""
    if key.kind == "head":
        return key.c_in * key.exp + key.exp * key.out
    if key.kind == "classifier":
        return key.c_in * key.out
    if key.kind == "last_conv":
        return key.c_in * key.out * key.h * key.w
    ho = conv_output_size(key.h, key.kernel, key.stride, key.dilation)
    wo = conv_output_size(key.w, key.kernel, key.stride, key.dilation)
    if key.kind == "stem":
        return key.c_in * key.out * key.kernel ** 2 * ho * wo
    macs = key.c_in * key.exp * key.h * key.w if key.expand else 0
    macs += key.exp * key.kernel ** 2 * ho * wo + key.exp * key.out * ho * wo
    if key.se:
        macs += 2 * key.exp * make_divisible(key.exp // 4)
    return macs


def estimate(source: LatencyTable, device: Device, published: dict[str, float],
             specs: dict[str, NetworkSpec], source_frame: pd.DataFrame,
             root: Path | None = None) -> dict[str, Any]:
    """A table for a device we cannot reach, from ``source``'s entries and published
    end-to-end latencies: entry_ms = alpha * source_ms + beta * MMACs, alpha and beta
    fitted (least squares on relative error) so that the calibrated sums reproduce
    ``published`` (spec name -> ms). Labelled an estimate everywhere."""
    names = list(published)
    a_rows = []
    for name in names:
        spec = specs[name]
        f = source.factor(spec)
        keys = [k for _, k in entry_keys(spec)]
        ms = sum(source.entry_ms(k) or np.nan for k in keys)
        macs = sum(entry_macs(k) for k in keys) / 1e6
        a_rows.append([f * ms / published[name], f * macs / published[name]])
    a = np.asarray(a_rows)
    coef, *_ = np.linalg.lstsq(a, np.ones(len(names)), rcond=None)
    if (coef < 0).any():  # fall back to the one non-negative term that fits best
        fits = [(np.linalg.lstsq(a[:, [j]], np.ones(len(names)), rcond=None)[0][0], j)
                for j in range(2)]
        errs = [np.abs(a[:, j] * c - 1).max() for c, j in fits]
        best, j = fits[int(np.argmin(errs))]
        coef = np.zeros(2)
        coef[j] = best
    alpha, beta = float(coef[0]), float(coef[1])
    frame = source_frame.copy()
    entry_mmacs = np.array([entry_macs(key_of(r)) for r in frame.itertuples(index=False)]) / 1e6
    frame["ms"] = alpha * frame["ms"] + beta * entry_mmacs
    frame["spread"] = 0.0
    frame["n"] = 0
    fit = {name: {"published_ms": published[name],
                  "estimated_ms": float(a[i] @ coef * published[name])}
           for i, name in enumerate(names)}
    meta = {
        "format": FORMAT, "device": device.name, "description": device.description,
        "runner": device.runner, "estimate": True, "estimate_of": source.device,
        "runtime": {**source.meta["runtime"], "note": f"settings of the {source.device} "
                    f"measurements this estimate is derived from"},
        "cpu": f"ESTIMATE for {device.description}, derived from {source.meta.get('cpu')}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": source.meta["reference"],
        "seeds": [{**s, "factor": s["factor"]} for s in source.meta["seeds"]],
        "estimate_fit": {"model": "entry_ms = alpha * source_entry_ms + beta * entry_MMACs",
                         "alpha": alpha, "beta_ms_per_mmac": beta, "fit": fit,
                         "source": "Howard et al. 2019, single big core Pixel 1 (TFLite)"},
    }
    write_table(device.name, frame[COLUMNS], meta, root)
    return meta["estimate_fit"]
