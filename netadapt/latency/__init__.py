"""Latency lookup tables: device profiles, onnxruntime timers, the table, prediction.

The search's interface::

    table = load_table("pixel")          # latency_tables/pixel/
    table.predict_ms(spec)               # float, pure lookup
    table.breakdown_ms(spec)             # [(layer, ms), ...]
    table.covers(spec), table.device, table.is_estimate

Modules: graphs (ONNX graphs of entries and networks), measure (round-robin timing,
also run on ssh boards), board_worker (the ssh board's timing session), timers (local
/ adb / ssh), devices (profiles), table (files, lookup), profile (building, calibration,
validation), estimate (a modelled table for a device we cannot reach: the phone).
"""

from .devices import Device, list_devices, load_device
from .graphs import EntryKey, entry_keys
from .table import LatencyTable, load_table

__all__ = ["Device", "EntryKey", "LatencyTable", "entry_keys", "list_devices", "load_device",
           "load_table"]
