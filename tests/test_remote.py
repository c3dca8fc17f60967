"""Remote devices for real: the ssh runner against an sshd started here (127.0.0.1, key
login, its own host key and config) with a separate python that has only onnxruntime
and numpy standing in for a board; every way it can fail as one line naming the fix;
the adb runner's errors against a fake ``adb`` on PATH."""

from __future__ import annotations

import getpass
import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from netadapt.cli import app
from netadapt.errors import LatencyError
from netadapt.latency import build, entry_keys, load_device, load_table
from netadapt.latency.graphs import entry_model, input_shape, network_model
from netadapt.latency.ssh import SshTimer
from netadapt.latency.timers import AdbTimer
from netadapt.spec import load_spec, save_spec

from .conftest import CONFIGS
from .test_latency import FAST, one_line_error

cli = CliRunner()
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
_has_sshd = pytest.mark.skipif(
    not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None,
    reason="needs OpenSSH's sshd and ssh (Debian: apt-get install openssh-server "
           "openssh-client; .ci/run installs them when it runs as root)")


def needs_sshd(test):
    """A test against the sshd started here: skipped without OpenSSH, and slow (an sshd,
    a board venv, logins; deselect with -m "not slow")."""
    return pytest.mark.slow(_has_sshd(test))

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel VERBOSE
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An unprivileged-port sshd on 127.0.0.1 that accepts one temporary key."""
    folder = tmp_path_factory.mktemp("sshd")
    keygen(folder / "host_key")
    key = keygen(folder / "client_key")
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    if os.geteuid() == 0:  # sshd as root insists on its privilege-separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = free_port()
        config = folder / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=port, dir=folder))
        log = open(folder / "sshd.log", "w")
        server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.poll() is None:
            if "Server listening" in (folder / "sshd.log").read_text():
                break
            time.sleep(0.05)
        if server.poll() is None:
            break
        log.close()
    else:
        pytest.fail(f"sshd did not start: {(folder / 'sshd.log').read_text()[-500:]}")
    yield SimpleNamespace(port=port, key=key, dir=folder, host=f"{getpass.getuser()}@127.0.0.1")
    server.terminate()
    server.wait(timeout=10)
    log.close()


def make_venv(path: Path, packages: tuple[str, ...]) -> Path:
    """A python of its own holding only ``packages`` (linked from this environment's
    installs): what a board with `pip install onnxruntime numpy` has, and nothing of
    netadapt, torch or this checkout."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    there = Path(subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; "
                                 "print(sysconfig.get_paths()['purelib'])"], check=True,
                                capture_output=True, text=True).stdout.strip())
    for name in packages:
        package = Path(importlib.import_module(name).__file__ or "").parent
        for item in (package, package.with_name(f"{name}.libs")):  # + its bundled libraries
            if item.exists():
                (there / item.name).symlink_to(item)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return make_venv(tmp_path_factory.mktemp("board") / "venv", ("onnxruntime", "numpy"))


@pytest.fixture
def root(tmp_path, monkeypatch):
    (tmp_path / "configs" / "devices").mkdir(parents=True)
    monkeypatch.setenv("NETADAPT_HOME", str(tmp_path))
    return tmp_path


def ssh_device(root: Path, sshd, python: Path | str, name: str = "board", **override) -> str:
    """A device profile for the test sshd, written under ``root``; returns its name."""
    profile = yaml.safe_load(FAST.format(name=name))
    profile["runner"] = "ssh"
    profile["ssh"] = {"host": sshd.host, "port": sshd.port, "identity": str(sshd.key),
                      "python": str(python), "remote_dir": str(root / "remote"),
                      "ssh_options": ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                                      "-o", f"UserKnownHostsFile={sshd.dir}/known_hosts",
                                      "-o", "StrictHostKeyChecking=accept-new"]}
    profile["ssh"].update(override)
    (root / "configs" / "devices" / f"{name}.yaml").write_text(yaml.safe_dump(profile))
    return name


# ---------------------------------------------------------------------- ssh, end to end
@needs_sshd
def test_profile_over_ssh_builds_a_table_that_a_search_uses(root, sshd, board, tiny_spec,
                                                           tmp_path):
    device = load_device(ssh_device(root, sshd, board))
    result = build.profile(device, [tiny_spec], root=root, progress=False, log=lambda _: None)
    table = load_table("board")
    assert result.rows > 0 and table.covers(tiny_spec) and not table.is_estimate
    assert table.meta["runner"] == "ssh" and table.meta["runtime"]["onnxruntime"]
    assert table.meta["cpu"] and table.meta["seeds"][0]["factor"] > 0
    assert (root / "remote" / "measure.py").is_file()  # the board ran netadapt's script
    smallest = tiny_spec
    for group in tiny_spec.groups:
        smallest = smallest.with_group_width(group.name, 8)
    budget_ms = (table.predict_ms(tiny_spec) + table.predict_ms(smallest)) / 2  # reachable
    result = search_cli(tmp_path, tiny_spec, "board", f"{budget_ms:.5f}ms")
    assert "latency: board (" in result.output and "ESTIMATE" not in result.output
    assert table.predict_ms(load_spec(tmp_path / "run" / "best.yaml")) <= budget_ms


def search_cli(tmp_path: Path, spec, device: str, budget: str):
    """`netadapt search` on a tiny spec and a tiny IDX dataset, a few steps each."""
    from .conftest import write_idx

    spec_path = tmp_path / "tiny.yaml"
    save_spec(spec, spec_path)
    result = cli.invoke(app, [
        "search", "--spec", str(spec_path), "--data", str(write_idx(tmp_path / "data")),
        "--device", device, "--budget", budget, "--step", "0.1", "--short-term-steps", "2",
        "--long-term-steps", "2", "--seed-steps", "2", "--resolution", "16", "--batch-size",
        "16", "--holdout", "40", "--torch-device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    return result


@needs_sshd
def test_the_board_needs_no_netadapt_only_onnxruntime_and_numpy(root, sshd, board):
    timer = SshTimer(load_device(ssh_device(root, sshd, board)))
    timer.check()
    done = subprocess.run(timer.ssh_argv(f"{board} -c 'import netadapt'"), capture_output=True)
    assert done.returncode != 0  # measure.py ran there standalone


@needs_sshd
def test_a_whole_profile_is_a_few_ssh_logins_not_one_per_chunk(root, sshd, board, tiny_spec):
    log = sshd.dir / "sshd.log"
    before = log.read_text().count("Accepted publickey")
    device = load_device(ssh_device(root, sshd, board))
    timer = SshTimer(device)
    result = build.profile(device, [tiny_spec], root=root, progress=False, log=lambda _: None,
                           timer=timer)
    logins = log.read_text().count("Accepted publickey") - before
    chunks = result.measured // device.protocol.chunk
    assert chunks >= 3 and logins <= 3  # check, the worker, the CPU's name


@needs_sshd
def test_a_model_the_board_cannot_run_is_one_line_and_the_worker_keeps_serving(
        root, sshd, board, tiny_spec):
    timer = SshTimer(load_device(ssh_device(root, sshd, board)))
    good = (network_model(tiny_spec), (1, 3, *tiny_spec.input_size))
    with pytest.raises(LatencyError, match="measure.py on .* failed .*"):
        timer.time([good, (b"not an onnx model", (1, 3, 8, 8))], rounds=1, warmup=0)
    assert timer.time([good], rounds=2, warmup=0).shape == (1, 2)


@needs_sshd
def test_a_session_lost_between_chunks_is_opened_again(root, sshd, board, tiny_spec):
    timer = SshTimer(load_device(ssh_device(root, sshd, board)))
    good = (network_model(tiny_spec), (1, 3, *tiny_spec.input_size))
    timer.time([good], rounds=1, warmup=0)
    assert timer._worker is not None
    timer._worker.kill()  # the connection drops while nothing is being timed
    timer._worker.wait()
    assert timer.time([good], rounds=1, warmup=0).shape == (1, 1)


@needs_sshd
def test_a_worker_that_dies_mid_chunk_stops_with_one_line(root, sshd, board, tiny_spec,
                                                         tmp_path):
    python = tmp_path / "python3"  # the board's python, crashing when the worker starts
    python.write_text(f'#!/bin/sh\nif [ "$1" = -u ]; then echo "Killed: out of memory" >&2; '
                      f'exit 137; fi\nexec {board} "$@"\n')
    python.chmod(0o755)
    timer = SshTimer(load_device(ssh_device(root, sshd, python)))
    good = (network_model(tiny_spec), (1, 3, *tiny_spec.input_size))
    with pytest.raises(LatencyError, match=r"worker on .* stopped \(exit 137: Killed: out of "
                                           r"memory\).*run the same command to continue"):
        timer.time([good], rounds=1, warmup=0)


# ---------------------------------------------------------------------- ssh, failures
def profile_error(fragment: str) -> str:
    return one_line_error(cli.invoke(app, ["profile", "--device", "board"]), fragment)


@needs_sshd
def test_unreachable_host_says_to_check_the_board_and_its_sshd(root, sshd, board):
    ssh_device(root, sshd, board, port=free_port())
    line = profile_error("cannot reach")
    assert "Connection refused" in line and "sshd running" in line and "port:" in line


@needs_sshd
def test_refused_key_says_to_install_it_on_the_board(root, sshd, board, tmp_path):
    ssh_device(root, sshd, board, identity=str(keygen(tmp_path / "other_key")))
    line = profile_error("refused the key login")
    assert "ssh-copy-id" in line and "identity:" in line


@needs_sshd
def test_unknown_host_key_says_to_log_in_once_by_hand(root, sshd, board, tmp_path):
    ssh_device(root, sshd, board, ssh_options=[
        "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={tmp_path}/empty_known_hosts",
        "-o", "StrictHostKeyChecking=yes"])
    line = profile_error("host key")
    assert "log in once by hand" in line


@needs_sshd
def test_board_without_onnxruntime_says_to_install_it(root, sshd, tmp_path):
    ssh_device(root, sshd, make_venv(tmp_path / "bare", ("numpy",)))
    line = profile_error("no usable onnxruntime")
    assert "onnxruntime" in line and "pip install onnxruntime numpy" in line


@needs_sshd
def test_missing_python_on_the_board_says_to_set_it(root, sshd, tmp_path):
    ssh_device(root, sshd, tmp_path / "no" / "python3")
    line = profile_error("not found on")
    assert "set python:" in line


def test_ssh_profile_without_host_says_to_set_it(root):
    (root / "configs" / "devices" / "board.yaml").write_text(FAST.replace(
        "runner: local", "runner: ssh").format(name="board"))
    profile_error("no host configured")


# ---------------------------------------------------------------------- adb (fake phone)
FAKE_ADB = """#!/bin/sh
# A fake adb. `devices` lists $FAKE_PHONES. With $FAKE_PHONE_ROOT set it is a phone
# whose file system is this machine's: push copies, shell runs the command here.
case "$1" in
  devices) echo 'List of devices attached'
           for s in $FAKE_PHONES; do printf '%s\\tdevice\\n' "$s"; done ;;
  push) [ -z "$FAKE_PHONE_ROOT" ] || cp -r "$2" "$3" ;;
  shell) shift; [ -z "$FAKE_PHONE_ROOT" ] || exec sh -c "$*" ;;
esac
exit 0
"""

# onnxruntime_perf_test as the phone runs it (-r RUNS ... MODEL RESULT_FILE), timing
# with this machine's onnxruntime and printing perf_test's summary lines.
FAKE_PERF_TEST = """#!{python}
import sys, time
import numpy as np, onnxruntime as ort
if "-h" in sys.argv:
    print("onnxruntime_perf_test [options...] model_path [result_file]")
    print("onnxruntime version 1.99.0")
    sys.exit(0)
runs = int(sys.argv[sys.argv.index("-r") + 1])
sess = ort.InferenceSession(sys.argv[-2], providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
feed = {{inp.name: np.zeros(inp.shape, np.float32)}}
times = []
for _ in range(runs):
    t0 = time.perf_counter()
    sess.run(None, feed)
    times.append(time.perf_counter() - t0)
print(f"Average inference time cost: {{1e3 * sum(times) / runs:.4f}} ms")
print(f"Min Latency: {{min(times):.6f}} s")
print(f"P50 Latency: {{sorted(times)[runs // 2]:.6f}} s")
"""


@pytest.fixture
def fake_adb(root, tmp_path, monkeypatch):
    """A fake ``adb`` first on PATH, and the pixel profile pointed at it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("adb", FAKE_ADB), ("getprop", "#!/bin/sh\necho fake-$1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pixel = yaml.safe_load((CONFIGS / "devices" / "pixel.yaml").read_text())
    pixel["adb"].update(remote_dir=str(tmp_path / "phone"), cpu_mask="",
                        perf_test=str(tmp_path / "onnxruntime_perf_test"))
    (root / "configs" / "devices" / "pixel.yaml").write_text(yaml.safe_dump(pixel))
    return monkeypatch


def pixel_error(fragment: str) -> str:
    return one_line_error(cli.invoke(app, ["profile", "--device", "pixel"]), fragment)


def test_adb_with_several_phones_says_to_pick_one(fake_adb):
    fake_adb.setenv("FAKE_PHONES", "AAA BBB")
    assert "set serial:" in pixel_error("several phones attached (AAA, BBB)")


def test_adb_without_perf_test_binary_says_how_to_build_it(fake_adb):
    fake_adb.setenv("FAKE_PHONES", "AAA")
    line = pixel_error("onnxruntime_perf_test not found")
    assert "--android_abi arm64-v8a" in line and "perf_test:" in line


def test_adb_runner_times_models_round_robin_on_a_fake_phone(fake_adb, tmp_path, tiny_spec):
    """The whole adb path (push, the shell loop, perf_test's output) on a phone whose
    shell is this machine and whose perf_test times with real onnxruntime."""
    fake_adb.setenv("FAKE_PHONES", "AAA")
    fake_adb.setenv("FAKE_PHONE_ROOT", "1")
    perf_test = tmp_path / "onnxruntime_perf_test"
    perf_test.write_text(FAKE_PERF_TEST.format(python=sys.executable))
    timer = AdbTimer(load_device("pixel"))
    shape = (1, 3, *tiny_spec.input_size)
    models = [(network_model(tiny_spec), shape), (entry_model(entry_keys(tiny_spec)[0][1]),
                                                  input_shape(entry_keys(tiny_spec)[0][1]))]
    ms = timer.time(models, rounds=2, warmup=1)
    assert ms.shape == (2, 2) and (ms > 0).all() and np.isfinite(ms).all()
    assert timer.runtime_version() == "1.99.0"
    assert "fake-ro.product.model" in timer.cpu_model()
    pushed = tmp_path / "phone" / "onnxruntime_perf_test"  # the copy on the phone
    pushed.write_text("#!/bin/sh\necho 'Session creation failed'\n")  # a broken build
    with pytest.raises(LatencyError, match="printed no latency; run it by hand.*adb shell"):
        timer.time(models, rounds=1, warmup=0)
