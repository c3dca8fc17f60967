"""The ``ssh`` runner: a Linux board timing with netadapt's own timing script
(measure.py) and the board's onnxruntime, in one ssh session per profiling run."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import LatencyError
from .devices import Device
from .measure import Model


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
