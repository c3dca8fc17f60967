"""Latency lookup tables: device profiles, onnxruntime timers, the table, prediction.

The search's interface::

    table = load_table("pixel")          # latency_tables/pixel/
    table.predict_ms(spec)               # float, pure lookup
    table.breakdown_ms(spec)             # [(layer, ms), ...]
    table.covers(spec), table.device, table.is_estimate
    measure_e2e(spec, device, table)     # the spec end to end on the device, now

Modules: graphs (table entries, ONNX graphs of entries and networks), table (the table
files, lookup), coverage (the entries a seed needs), devices (profiles), timers (local
/ adb), ssh (the ssh runner), measure (round-robin timing, also run on ssh boards),
board_worker (the ssh board's timing session), build (profiling a table: plan, timing,
assembling), journal (what an interrupted profile continues from), calibrate (entry
sums to end-to-end milliseconds), validate (a table against end-to-end timings),
estimate and terms (a modelled table for a device we cannot reach: the phone).
docs/latency.md describes the timing protocol, the calibration and the estimate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .devices import Device, list_devices, load_device
from .graphs import EntryKey, entry_keys
from .table import LatencyTable, load_table

if TYPE_CHECKING:
    from .validate import measure_e2e

__all__ = ["Device", "EntryKey", "LatencyTable", "entry_keys", "list_devices", "load_device",
           "load_table", "measure_e2e"]


def __getattr__(name: str) -> Any:
    # measure_e2e is imported on first use: its timers import onnxruntime, which the
    # search (load_table, predict_ms) never needs.
    if name == "measure_e2e":
        from .validate import measure_e2e

        return measure_e2e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
