"""Device profiles (configs/devices/*.yaml): where a table is measured and how.

A profile names the runner that reaches the CPU (``local``: onnxruntime in this
process; ``adb``: an Android phone running onnxruntime_perf_test; ``ssh``: an ARM Linux
board running netadapt's own timing script with its onnxruntime), the runtime settings
recorded with every table, and the measurement protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import LatencyError
from ..resources import search_roots, user_dir

RUNNERS = ("local", "adb", "ssh")
CLOCKS = ("wall", "thread")  # see measure.CLOCKS


@dataclass(frozen=True)
class Protocol:
    """How entries are timed: rounds per chunk, noise threshold, calibration bursts."""

    rounds: int = 10  # timed runs per entry per attempt (round-robin over the chunk)
    warmup: int = 2
    chunk: int = 48  # entries timed together, with the reference, in one time window
    max_spread: float = 0.15  # (p75 - p25) / median above which an entry is re-measured
    attempts: int = 3  # at most this many attempts per noisy entry
    calibration_bursts: int = 6  # final bursts: seed + 8 calibration variants each
    calibration_rounds: int = 20
    calibration_every: int = 25  # chunks between bursts of the seeds during profiling
    calibration_variants: int = 24  # random reduced variants the factor is fitted to
    processes: int = 1  # timing processes for a local runner (each its own core and chunk)


@dataclass(frozen=True)
class Device:
    """A device profile: where tables are timed (``runner``) and how."""

    name: str
    description: str
    runner: str
    runtime: dict[str, Any]
    protocol: Protocol
    options: dict[str, Any] = field(default_factory=dict)  # the runner's own section
    published: dict[str, float] = field(default_factory=dict)  # spec path -> ms, for estimates
    # published latencies an estimate is checked against, never fitted to (same labels)
    held_out: dict[str, float] = field(default_factory=dict)
    # network label -> {input size: ms}: how latency falls with the input size (estimates)
    size_sweep: dict[str, dict[int, float]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """Runtime settings as the timing code takes them."""
        return {"threads": int(self.runtime.get("threads", 1)),
                "spinning": bool(self.runtime.get("spinning", False)),
                "optimization": str(self.runtime.get("optimization", "all")),
                "providers": list(self.runtime.get("providers", ["CPUExecutionProvider"])),
                "clock": str(self.runtime.get("clock", "wall"))}


def with_overrides(device: Device, clock: str | None = None,
                   processes: int | None = None) -> Device:
    """``device`` with a command line's choices in place of its profile's: the timer's
    clock (``runtime.clock``) and the timing processes (``protocol.processes``)."""
    if clock is not None:
        if clock not in CLOCKS:
            raise LatencyError(f"--clock: must be {' or '.join(CLOCKS)}, got {clock!r}")
        device = dataclasses.replace(device, runtime={**device.runtime, "clock": clock})
    if processes is not None:
        device = dataclasses.replace(device, protocol=dataclasses.replace(
            device.protocol, processes=processes))
    return device


def _profiles(root: Path | None) -> dict[str, Path]:
    """Every device profile by name; the user's own win over shipped ones
    (netadapt/resources.py)."""
    found: dict[str, Path] = {}
    for folder in reversed([r / "configs" / "devices" for r in search_roots(root)]):
        found.update({p.stem: p for p in folder.glob("*.yaml")})
    return dict(sorted(found.items()))


def list_devices(root: Path | None = None) -> list[Device]:
    """Every device profile, by name."""
    return [load_device(name, root) for name in _profiles(root)]


def load_device(name: str, root: Path | None = None) -> Device:
    """Read ``configs/devices/NAME.yaml`` (the user's, else the shipped one); errors say
    which devices exist."""
    profiles = _profiles(root)
    if name not in profiles:
        known = ", ".join(profiles) or "none"
        folder = (root or user_dir()) / "configs" / "devices"
        raise LatencyError(f"unknown device {name!r} (known: {known}); add "
                           f"{folder / (name + '.yaml')} to define it")
    path = profiles[name]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LatencyError(f"{path}: not a readable device profile ({exc})") from None
    if not isinstance(data, dict):
        raise LatencyError(f"{path}: must be a mapping of fields")
    runner = data.get("runner")
    if runner not in RUNNERS:
        raise LatencyError(f"{path}: runner: must be one of {', '.join(RUNNERS)}, got {runner!r}")
    proto = data.get("protocol") or {}
    fields = set(Protocol.__dataclass_fields__)
    unknown = set(proto) - fields
    if unknown:
        raise LatencyError(f"{path}: protocol: unknown field(s) {', '.join(sorted(unknown))} "
                           f"(allowed: {', '.join(sorted(fields))})")
    return Device(
        name=name,
        description=str(data.get("description", "")),
        runner=runner,
        runtime=dict(data.get("runtime") or {}),
        protocol=Protocol(**proto),
        options=dict(data.get(runner) or {}),
        published=_latencies(path, data, "published"),
        held_out=_latencies(path, data, "held_out"),
        size_sweep={str(k): dict(v) if isinstance(v, dict) else v
                    for k, v in (data.get("size_sweep") or {}).items()},
        path=path,
    )


def _latencies(path: Path, data: dict[str, Any], key: str) -> dict[str, float]:
    """A profile's ``key:`` section of published latencies (network label -> ms)."""
    try:
        return {str(k): float(v) for k, v in (data.get(key) or {}).items()}
    except (AttributeError, TypeError, ValueError):
        raise LatencyError(f"{path}: {key}: write {{SPEC.yaml [xMULT] [@SIZE]: ms}}") from None
