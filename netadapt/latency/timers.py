"""Timers: time a list of ONNX models round-robin on a device's CPU, one timer per kind
of device profile (its ``runner:`` key).

``local`` calls onnxruntime in this process; ``adb`` pushes the models and
onnxruntime_perf_test to an Android phone and runs them pinned to a big core; ``ssh``
runs netadapt's timing script (measure.py) on a Linux board with the board's
onnxruntime, in one ssh session per profiling run. Every timer returns milliseconds shaped
(models, rounds), round r timing each model once, so a reference model in the list
sees the same drift as the entries next to it.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import IO
from typing import Protocol as TypingProtocol

import numpy as np

from ..errors import LatencyError
from . import measure
from .devices import Device

Model = tuple[bytes, tuple[int, ...]]  # serialized ONNX, input shape


class Timer(TypingProtocol):
    """Times models on one device: ``time`` returns ms shaped (models, rounds)."""

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


class LocalTimer:
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


class SshTimer:
    """A Linux board over ssh, timing with measure.py and the board's onnxruntime.

    The board needs python3 with onnxruntime and numpy, and sshd; nothing of netadapt.
    ``check`` logs in once, imports onnxruntime there and installs measure.py and
    board_worker.py; the first chunk starts the worker in one ssh session that then
    serves every chunk of the run (models in on stdin, milliseconds out as JSON), so a
    chunk costs no login, python start or onnxruntime import. Key-based login only
    (BatchMode): a password prompt would hang a long run.
    """

    MARK = "NETADAPT-ORT"
    # Run by the board's python with the remote directory as argument: the runtime's
    # version (or why it cannot be imported), then the files on stdin written there.
    INSTALL = ("import json, os, sys\n"
               "try:\n"
               "    import numpy, onnxruntime\n"
               "except Exception as exc:\n"
               "    print('NETADAPT-NO', type(exc).__name__ + ':', exc)\n"
               "    sys.exit(3)\n"
               "os.makedirs(sys.argv[1], exist_ok=True)\n"
               "for name, text in json.load(sys.stdin).items():\n"
               "    with open(os.path.join(sys.argv[1], name), 'w') as f:\n"
               "        f.write(text)\n"
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
        self._worker: subprocess.Popen[bytes] | None = None
        self._worker_log: IO[bytes] | None = None

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
        """Log in, check the board's onnxruntime, install the timing scripts: one call."""
        name = self.device.name
        if not self.host:
            raise LatencyError(
                f"device {name}: no host configured; set host: user@board in {self._where} "
                f"(key-based ssh login; python3 with onnxruntime on the board)")
        if shutil.which("ssh") is None:
            raise LatencyError(f"device {name}: ssh not found; install openssh-client")
        here = Path(__file__).resolve().parent
        files = {f: (here / f).read_text(encoding="utf-8")
                 for f in ("measure.py", "board_worker.py")}
        done = self._ssh(f"{self.python} -c {shlex.quote(self.INSTALL)} {self.remote}",
                         "the onnxruntime check", json.dumps(files).encode(), timeout=120)
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
                               f"and make sure remote_dir: {self.remote} is writable")
        self._version = out.split(self.MARK, 1)[1].split()[0]

    def _start_worker(self) -> subprocess.Popen[bytes]:
        if self._worker is not None and self._worker.poll() is None:
            return self._worker
        self._worker_log = tempfile.TemporaryFile()  # stderr: a file never fills up
        command = f"cd {self.remote} && exec {self.python} -u board_worker.py"
        self._worker = subprocess.Popen(self.ssh_argv(command), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._worker_log)
        weakref.finalize(self, _stop_worker, self._worker)
        return self._worker

    def _worker_failure(self, worker: subprocess.Popen[bytes]) -> LatencyError:
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
        assert self._worker_log is not None
        self._worker_log.seek(0)
        line = _last_line(self._worker_log.read())
        self._worker = None
        if code == 255:
            return self._ssh_failure(line)
        return LatencyError(f"device {self.device.name}: the timing worker on {self.host} "
                            f"stopped (exit {code}: {line}); what was measured is kept, run "
                            f"the same command to continue")

    def time(self, models: list[Model], rounds: int, warmup: int) -> np.ndarray:
        if self._version is None:
            self.check()
        worker = self._start_worker()
        job = {"settings": self.device.settings, "rounds": rounds, "warmup": warmup,
               "shapes": [list(shape) for _, shape in models],
               "sizes": [len(model) for model, _ in models]}
        assert worker.stdin is not None and worker.stdout is not None
        try:
            worker.stdin.write(json.dumps(job).encode() + b"\n")
            for model, _ in models:
                worker.stdin.write(model)
            worker.stdin.flush()
            line = worker.stdout.readline()
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        if not line:
            raise self._worker_failure(worker)
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise LatencyError(f"device {self.device.name}: unreadable answer from the "
                               f"timing worker on {self.host} ({exc})") from None
        if "error" in answer:
            raise LatencyError(f"device {self.device.name}: measure.py on {self.host} failed "
                               f"({answer['error']})")
        return np.asarray(answer["ms"], dtype=float)

    def runtime_version(self) -> str:
        if self._version is None:
            self.check()
        return str(self._version)

    def cpu_model(self) -> str:
        done = self._ssh("grep -m1 -E '^(model name|Model)' /proc/cpuinfo; uname -m; nproc",
                         "reading /proc/cpuinfo")
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        if len(lines) < 3:  # no model line (some ARM kernels): architecture and count only
            lines = ["unknown CPU", *lines]
        name = lines[-3].split(":", 1)[-1].strip()
        return f"{name} ({lines[-2].strip()}, {lines[-1].strip()} CPUs) at {self.host}"


def _last_line(stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """End of input ends the worker on the board, and with it the ssh session."""
    if worker.poll() is None:
        try:
            if worker.stdin is not None:
                worker.stdin.close()
            worker.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            worker.kill()


def make_timer(device: Device) -> Timer:
    """The timer for ``device``'s profile (``runner: local | adb | ssh``)."""
    if device.runner == "adb":
        return AdbTimer(device)
    if device.runner == "ssh":
        return SshTimer(device)
    return LocalTimer(device)
