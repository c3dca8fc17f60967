"""Runners: time a list of ONNX models round-robin on a device's CPU.

``local`` calls onnxruntime in this process; ``adb`` pushes the models and
onnxruntime_perf_test to an Android phone and runs them pinned to a big core; ``ssh``
streams the models and netadapt's timing script (measure.py) to a Linux board and runs
them with the board's onnxruntime. Every runner returns milliseconds shaped
(models, rounds), round r timing each model once, so a reference model in the list
sees the same drift as the entries next to it.
"""

from __future__ import annotations

import io
import json
import platform
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Protocol as TypingProtocol

import numpy as np

from ..errors import LatencyError
from . import measure
from .devices import Device

Model = tuple[bytes, tuple[int, ...]]  # serialized ONNX, input shape


class Runner(TypingProtocol):
    def check(self) -> None: ...
    def time(self, models: list[Model], rounds: int, warmup: int) -> np.ndarray: ...
    def runtime_version(self) -> str: ...
    def cpu_model(self) -> str: ...


def local_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LocalRunner:
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


class AdbRunner:
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


def parse_perf_test(out: str, n: int, rounds: int, mark: str = AdbRunner.MARK) -> np.ndarray:
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


class SshRunner:
    """A Linux board over ssh, timing with measure.py and the board's onnxruntime.

    Only ``ssh`` is needed here and only python3 with onnxruntime and numpy (and tar)
    on the board. One ssh call per chunk: the models and the job go to the board as a
    tar stream on stdin, measure.py times them there, its JSON answer comes back on
    stdout. Key-based login only (BatchMode): a password prompt would hang a long run.
    """

    MARK = "NETADAPT-ORT"
    # Run by the board's python: the runtime's version, or why it cannot be imported.
    PROBE = ("import sys\n"
             "try:\n"
             "    import numpy, onnxruntime\n"
             "except Exception as exc:\n"
             "    print('NETADAPT-NO', type(exc).__name__ + ':', exc)\n"
             "    sys.exit(3)\n"
             "print('NETADAPT-ORT', onnxruntime.__version__)\n")

    def __init__(self, device: Device) -> None:
        self.device = device
        opts = device.options
        self.host = opts.get("host")
        self.port = opts.get("port")
        self.identity = opts.get("identity")
        self.python = str(opts.get("python") or "python3")
        self.remote = str(opts.get("remote_dir") or "/tmp/netadapt")
        self.ssh_options = [str(o) for o in opts.get("ssh_options") or []]
        self._version: str | None = None

    @property
    def _where(self) -> str:
        return str(self.device.path or "the device profile")

    def ssh_argv(self, command: str) -> list[str]:
        """The ssh command line that runs ``command`` on the board."""
        argv = ["ssh", *self.ssh_options]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.identity:
            argv += ["-i", str(Path(str(self.identity)).expanduser()), "-o", "IdentitiesOnly=yes"]
        return [*argv, str(self.host), command]

    def _ssh(self, command: str, what: str, stdin: bytes = b"",
             timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` on the board; ssh's own failures (exit 255) become one line
        naming the fix, the command's exit status is the caller's to judge."""
        try:
            done = subprocess.run(self.ssh_argv(command), input=stdin, capture_output=True,
                                  timeout=timeout)
        except FileNotFoundError:
            raise LatencyError(f"device {self.device.name}: ssh not found; install "
                               f"openssh-client") from None
        except subprocess.TimeoutExpired:
            raise LatencyError(f"device {self.device.name}: {what} on {self.host} gave no "
                               f"answer within {timeout:.0f} s") from None
        if done.returncode == 255:
            raise self._ssh_failure(_last_line(done.stderr))
        return done

    def _ssh_failure(self, line: str) -> LatencyError:
        name, host, where = self.device.name, self.host, self._where
        port = f" -p {self.port}" if self.port else ""
        if "Permission denied" in line or "Too many authentication failures" in line:
            key = f" -i {self.identity}" if self.identity else ""
            return LatencyError(
                f"device {name}: {host} refused the key login ({line}); install your public "
                f"key on the board (ssh-copy-id{key}{port} {host}) or fix identity: in {where}")
        if "Host key verification failed" in line or "host key" in line.lower():
            return LatencyError(
                f"device {name}: the host key of {host} is unknown or changed ({line}); "
                f"log in once by hand (ssh{port} {host}) to check and accept it")
        return LatencyError(
            f"device {name}: cannot reach {host}{port and ' port ' + str(self.port)} ({line}); "
            f"is the board on and its sshd running? check host: and port: in {where}")

    def check(self) -> None:
        """Log in, check the board's onnxruntime, install measure.py: one ssh call."""
        name = self.device.name
        if not self.host:
            raise LatencyError(
                f"device {name}: no host configured; set host: user@board in {self._where} "
                f"(key-based ssh login; python3 with onnxruntime on the board)")
        if shutil.which("ssh") is None:
            raise LatencyError(f"device {name}: ssh not found; install openssh-client")
        command = (f"{self.python} -c {shlex.quote(self.PROBE)} && mkdir -p {self.remote} "
                   f"&& cat > {self.remote}/measure.py")
        done = self._ssh(command, "the onnxruntime check", Path(measure.__file__).read_bytes(),
                         timeout=120)
        out = done.stdout.decode(errors="replace")
        fix = (f"install it there ({self.python} -m pip install onnxruntime numpy) or set "
               f"python: in {self._where} to a python that has it")
        if done.returncode == 127:
            raise LatencyError(f"device {name}: {self.python!r} not found on {self.host}; "
                               f"set python: in {self._where} to the board's python3 with "
                               f"onnxruntime and numpy")
        if done.returncode == 3 or "NETADAPT-NO" in out:
            why = out.split("NETADAPT-NO", 1)[-1].strip() or _last_line(done.stderr)
            raise LatencyError(f"device {name}: no usable onnxruntime for {self.python} on "
                               f"{self.host} ({why}); {fix}")
        if done.returncode != 0 or self.MARK not in out:
            raise LatencyError(f"device {name}: checking {self.python} on {self.host} failed "
                               f"(exit {done.returncode}: {_last_line(done.stderr)}); {fix}, "
                               f"and make sure {self.remote} is writable")
        self._version = out.split(self.MARK, 1)[1].split()[0]

    def time(self, models: list[Model], rounds: int, warmup: int) -> np.ndarray:
        if self._version is None:
            self.check()
        job_models = [{"file": f"chunk/m{i:04d}.onnx", "shape": list(shape)}
                      for i, (_, shape) in enumerate(models)]
        job = {"settings": self.device.settings, "rounds": rounds, "warmup": warmup,
               "models": job_models}
        files = {f"m{i:04d}.onnx": model for i, (model, _) in enumerate(models)}
        files["job.json"] = json.dumps(job).encode()
        command = (f"cd {self.remote} && rm -rf chunk && mkdir chunk && tar -xf - -C chunk "
                   f"&& {self.python} measure.py chunk/job.json")
        done = self._ssh(command, "measure.py", _tar(files), timeout=3600)
        if done.returncode != 0:
            raise LatencyError(
                f"device {self.device.name}: measure.py on {self.host} failed (exit "
                f"{done.returncode}: {_last_line(done.stderr)}); what was measured is kept, "
                f"run the same command to continue")
        try:
            return np.asarray(json.loads(done.stdout)["ms"], dtype=float)
        except (ValueError, KeyError) as exc:
            raise LatencyError(f"device {self.device.name}: unreadable answer from measure.py "
                               f"on {self.host} ({exc})") from None

    def runtime_version(self) -> str:
        if self._version is None:
            self.check()
        return str(self._version)

    def cpu_model(self) -> str:
        done = self._ssh("grep -m1 -E 'model name|Model' /proc/cpuinfo; uname -m; nproc",
                         "reading /proc/cpuinfo")
        return " ".join(done.stdout.decode(errors="replace").replace("model name", "").split())


def _last_line(stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar archive of ``files`` (name -> content), in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_runner(device: Device) -> Runner:
    if device.runner == "adb":
        return AdbRunner(device)
    if device.runner == "ssh":
        return SshRunner(device)
    return LocalRunner(device)
