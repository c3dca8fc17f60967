"""Timers: time a list of ONNX models round-robin on a device's CPU, one timer per kind
of device profile (its ``runner:`` key).

``local`` calls onnxruntime in this process; ``adb`` pushes the models and
onnxruntime_perf_test to an Android phone and runs them pinned to a big core; ``ssh``
(ssh.SshTimer) runs netadapt's timing script (measure.py) on a Linux board with the
board's onnxruntime, in one ssh session per profiling run. Every timer returns
milliseconds shaped (models, rounds), round r timing each model once, so a reference
model in the list sees the same drift as the entries next to it.
"""

from __future__ import annotations

import platform
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol as TypingProtocol

import numpy as np

from ..errors import LatencyError
from . import measure
from .devices import Device
from .measure import Model
from .ssh import SshTimer


class Timer(TypingProtocol):
    """Times models on one device: ``time`` returns ms shaped (models, rounds)."""

    def check(self) -> None:
        """Fail at once, with how to fix it, where the device cannot be timed."""

    def time(self, models: list[Model], rounds: int, warmup: int) -> np.ndarray:
        """ms shaped (models, rounds), round r running every model once, in order."""

    def runtime_version(self) -> str:
        """The onnxruntime version the device times with (recorded with a table)."""

    def cpu_model(self) -> str:
        """The device's CPU, for the table's meta.json."""


def balanced_order(n: int, burst: int) -> list[int]:
    """The order to create and run ``n`` models in, in burst number ``burst``: rotation
    burst // 2, reversed in odd bursts. Two bursts in a row put every pair of models in
    both orders, 2n bursts every model at every position equally often.

    Why: an onnxruntime session created earlier in a process runs slower than the same
    model's session created after it, by 1-3% here (Large at 64 px, a copy timed beside
    itself: 1.014-1.031), so a fixed order biases every ratio of a round-robin
    (docs/latency.md, "Timing protocol")."""
    rotation = [(i + burst // 2) % n for i in range(n)]
    return rotation[::-1] if burst % 2 else rotation


def time_burst(timer: Timer, models: list[Model], rounds: int, burst: int) -> np.ndarray:
    """Each model's fast-tail ms (measure.fast_ms) over ``rounds`` round-robin runs, the
    models created and run in burst number ``burst``'s balanced_order; in the models'
    own order."""
    order = balanced_order(len(models), burst)
    ms = timer.time([models[i] for i in order], rounds, 2)
    out = np.empty_like(ms)
    out[order] = ms
    return measure.fast_ms(out)


def local_cpu_model() -> str:
    """This machine's CPU model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LocalTimer:
    """This machine, timing with onnxruntime in this process."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def check(self) -> None:
        pass

    def time(self, models: list[Model], rounds: int, warmup: int) -> np.ndarray:
        return measure.time_round_robin(list(models), self.device.settings, rounds, warmup)

    def runtime_version(self) -> str:
        return str(measure.ort.__version__)

    def cpu_model(self) -> str:
        import os

        return f"{local_cpu_model()} ({os.cpu_count()} logical CPUs)"


def _run(cmd: list[str], what: str, timeout: float = 600) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LatencyError(f"{what}: {cmd[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise LatencyError(f"{what}: no answer within {timeout:.0f} s "
                           f"({shlex.join(cmd[:4])} ...)") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise LatencyError(f"{what} failed (exit {done.returncode}): {tail[0]}")
    return done.stdout


class AdbTimer:
    """An Android phone over adb, timing with onnxruntime_perf_test on one big core.

    Each chunk is pushed as a directory of models; one shell loop on the phone runs
    every model ``rounds`` times round-robin (perf_test with one timed run each after
    warm-up) and prints a marker per run that is parsed here.
    """

    MARK = "NETADAPT"

    def __init__(self, device: Device) -> None:
        self.device = device
        opts = device.options
        self.adb = str(opts.get("adb") or "adb")
        self.serial = opts.get("serial")
        self.perf_test = Path(str(opts.get("perf_test") or "")).expanduser()
        self.remote = str(opts.get("remote_dir") or "/data/local/tmp/netadapt")
        self.cpu_mask = str(opts.get("cpu_mask") or "")
        self._checked = False

    def _cmd(self, *args: str) -> list[str]:
        serial = ["-s", str(self.serial)] if self.serial else []
        return [self.adb, *serial, *args]

    def check(self) -> None:
        where = self.device.path or "the device profile"
        if shutil.which(self.adb) is None:
            raise LatencyError(
                f"device {self.device.name}: adb not found; install Android platform-tools, "
                f"put adb on PATH (or set adb: in {where}), connect the phone by USB with "
                f"USB debugging on")
        out = _run([self.adb, "devices"], "adb devices", timeout=30)
        attached = [line.split()[0] for line in out.splitlines()[1:]
                    if line.strip() and line.split()[-1] == "device"]
        if not attached:
            raise LatencyError(
                f"device {self.device.name}: no phone attached (adb devices lists none); "
                f"connect it by USB, enable USB debugging and accept the prompt on the phone")
        if self.serial and self.serial not in attached:
            raise LatencyError(f"device {self.device.name}: phone {self.serial} not attached "
                               f"(attached: {', '.join(attached)}); fix serial: in {where}")
        if not self.serial and len(attached) > 1:
            raise LatencyError(f"device {self.device.name}: several phones attached "
                               f"({', '.join(attached)}); set serial: in {where}")
        if not self.perf_test.is_file():
            raise LatencyError(
                f"device {self.device.name}: onnxruntime_perf_test not found at "
                f"{self.perf_test}; build it for arm64-v8a (onnxruntime ./build.sh --android "
                f"--android_abi arm64-v8a) and set perf_test: in {where}")
        _run(self._cmd("shell", "mkdir", "-p", self.remote), "adb shell mkdir")
        _run(self._cmd("push", str(self.perf_test), f"{self.remote}/onnxruntime_perf_test"),
             "adb push onnxruntime_perf_test")
        _run(self._cmd("shell", "chmod", "755", f"{self.remote}/onnxruntime_perf_test"),
             "adb shell chmod")
        self._checked = True

    def _perf_args(self) -> str:
        s = self.device.settings
        provider = "xnnpack" if any("Xnnpack" in p for p in s["providers"]) else "cpu"
        level = {"disable": 0, "basic": 1, "extended": 2, "all": 99}[s["optimization"]]
        return f"-e {provider} -x {s['threads']} -y 1 -o {level} -I -m times"

    def time(self, models: list[Model], rounds: int, warmup: int) -> np.ndarray:
        if not self._checked:
            self.check()
        with tempfile.TemporaryDirectory() as tmp:
            chunk = Path(tmp) / "chunk"
            chunk.mkdir()
            for i, (model, _) in enumerate(models):
                (chunk / f"m{i:04d}.onnx").write_bytes(model)
            _run(self._cmd("shell", "rm", "-rf", f"{self.remote}/chunk"), "adb shell rm")
            _run(self._cmd("push", str(chunk), f"{self.remote}/chunk"), "adb push models")
        taskset = f"taskset {self.cpu_mask} " if self.cpu_mask else ""
        perf = f"{taskset}./onnxruntime_perf_test {self._perf_args()}"
        n = len(models)
        script = (
            f"cd {self.remote} && for r in $(seq 1 {rounds}); do "
            f"for i in $(seq 0 {n - 1}); do f=$(printf 'chunk/m%04d.onnx' $i); "
            f"echo {self.MARK} $r $i; {perf} -r {1 + warmup} $f /dev/null 2>&1 "
            f"| grep -E 'P50 Latency|Min Latency|Average inference'; done; done; true")
        # true: grep's status for the last model is not the loop's; a run that printed
        # no latency is found (and named) by the parser instead
        out = _run(self._cmd("shell", script), "adb shell onnxruntime_perf_test",
                   timeout=3600)
        try:
            return parse_perf_test(out, n, rounds, self.MARK)
        except LatencyError as exc:
            by_hand = f"cd {self.remote} && {perf} -r 1 chunk/m0000.onnx /dev/null"
            raise LatencyError(f"{exc}; run it by hand to see why: adb shell "
                               f"{shlex.quote(by_hand)}") from None

    def runtime_version(self) -> str:
        out = _run(self._cmd("shell", f"cd {self.remote} && ./onnxruntime_perf_test -h 2>&1 "
                             f"| head -3"), "adb shell onnxruntime_perf_test -h", timeout=60)
        m = re.search(r"(\d+\.\d+\.\d+)", out)
        return m.group(1) if m else "unknown (onnxruntime_perf_test)"

    def cpu_model(self) -> str:
        model = _run(self._cmd("shell", "getprop", "ro.product.model"), "adb getprop").strip()
        soc = _run(self._cmd("shell", "getprop", "ro.board.platform"), "adb getprop").strip()
        return f"{model} ({soc}), cpu mask {self.cpu_mask or 'all'}"


def parse_perf_test(out: str, n: int, rounds: int, mark: str = AdbTimer.MARK) -> np.ndarray:
    """Milliseconds (n, rounds) from the marked output of the perf_test loop.

    perf_test with ``-r K`` reports latencies over its K runs; the minimum (the warm run)
    is taken, else P50, else the average.
    """
    ms = np.full((n, rounds), np.nan)
    current: tuple[int, int] | None = None
    found: dict[str, float] = {}

    def flush() -> None:
        if current is not None and found:
            value = found.get("min", found.get("p50", found.get("avg")))
            ms[current[1], current[0] - 1] = value  # type: ignore[index]

    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == mark:
            flush()
            current, found = (int(parts[1]), int(parts[2])), {}
        elif (m := re.search(r"Min Latency:\s*([\d.eE+-]+)\s*s", line)):
            found["min"] = float(m.group(1)) * 1e3
        elif (m := re.search(r"P50 Latency:\s*([\d.eE+-]+)\s*s", line)):
            found["p50"] = float(m.group(1)) * 1e3
        elif (m := re.search(r"Average inference time cost:\s*([\d.eE+-]+)\s*ms", line)):
            found["avg"] = float(m.group(1))
    flush()
    if np.isnan(ms).any():
        missing = int(np.isnan(ms).sum())
        raise LatencyError(f"onnxruntime_perf_test: {missing} of {n * rounds} runs printed no "
                           f"latency")
    return ms


def timer_clock(timer: Timer) -> str:
    """The clock a timer times with (recorded with each seed's calibration)."""
    device = getattr(timer, "device", None)
    return str(device.settings.get("clock", "wall")) if device is not None else "wall"


def make_timer(device: Device) -> Timer:
    """The timer for ``device``'s profile (``runner: local | adb | ssh``)."""
    if device.runner == "adb":
        return AdbTimer(device)
    if device.runner == "ssh":
        return SshTimer(device)
    return LocalTimer(device)
