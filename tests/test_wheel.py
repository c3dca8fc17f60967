"""netadapt as a user installs it: a built wheel in a fresh virtual environment, run from
another folder, finds its default spec, device profiles and latency tables inside itself.

Deselect with ``-m "not wheel"`` (it builds a wheel: ~10-30 s)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(the venv's bin folder, an environment without the checkout, a folder elsewhere)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True)
    if built.returncode != 0 and "hatchling" in built.stderr:
        pytest.fail("the build backend is missing: pip install 'hatchling>=1.27' (in the "
                    "dev extra)")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("netadapt-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    # Reuse this environment's torch, onnxruntime, ... (a venv's --system-site-packages
    # reaches the base interpreter's, not ours): one path line, no .pth files run.
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (purelib / "reuse_parent.pth").write_text("\n".join(sorted(ours)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NETADAPT_ROOT")}
    env["NETADAPT_HOME"] = str(tmp / "home")  # a user with no tables of their own
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", "--force-reinstall", str(wheel)], env=env, check=True,
                   capture_output=True)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", env, elsewhere


def run(installed, *args: str) -> subprocess.CompletedProcess:
    bin_dir, env, elsewhere = installed
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_wheel_carries_every_module_config_and_shipped_table(installed):
    bin_dir, _, _ = installed
    wheel_file = next((bin_dir.parent.parent / "dist").glob("netadapt-*.whl"))
    names = set(zipfile.ZipFile(wheel_file).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "netadapt").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    configs = {f"netadapt/_shipped/{p.relative_to(ROOT).as_posix()}"
               for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs <= names, sorted(configs - names)
    tables = {p.parent.name for p in (ROOT / "latency_tables").glob("*/meta.json")}
    shipped = {n.split("/")[3] for n in names
               if n.startswith("netadapt/_shipped/latency_tables/") and n.endswith("meta.json")}
    assert shipped == tables  # a table added to latency_tables/ is named in pyproject.toml


def test_the_installed_netadapt_is_the_wheels_not_the_checkout(installed):
    bin_dir = installed[0]
    out = run(installed, "python", "-c", "import netadapt; print(netadapt.__file__)")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(bin_dir.parent), out.stdout
    assert not Path(out.stdout.strip()).is_relative_to(ROOT / "netadapt")


def test_show_latency_and_export_help_run_from_another_folder(installed):
    shown = run(installed, "netadapt", "show", "mobilenetv3_large")  # a shipped spec, by name
    assert shown.returncode == 0, shown.stderr
    assert "total: 5,483,032 params" in shown.stdout
    latency = run(installed, "netadapt", "latency", "mobilenetv3_small")  # the pixel table
    assert latency.returncode == 0, latency.stderr
    assert "ms" in latency.stdout and "pixel" in latency.stdout
    devices = run(installed, "netadapt", "devices")
    assert devices.returncode == 0 and "local-ref" in devices.stdout, devices.stderr
    helped = run(installed, "netadapt", "export", "--help")
    assert helped.returncode == 0 and "ONNX" in helped.stdout, helped.stderr
