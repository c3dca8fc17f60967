"""Where netadapt finds its files.

Shipped with netadapt: the specs (``configs/``), the device profiles
(``configs/devices/``) and the latency tables (``latency_tables/``). In a wheel they sit
inside the package (``netadapt/_shipped/``, mapped there at build time: pyproject.toml);
in a checkout they are the repository's top-level folders.

The user's own: device profiles and the tables ``netadapt profile`` measures, in the
same layout under the user directory: ``$NETADAPT_HOME`` when set, else
``$XDG_DATA_HOME/netadapt`` (``~/.local/share/netadapt``); never inside the installed
package. A table or profile there takes precedence over a shipped one of the same name.
(Trained seeds are a cache, not data: ``$NETADAPT_CACHE``, netadapt/seed.py.)
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

HOME_ENV = "NETADAPT_HOME"
LEGACY_HOME_ENV = "NETADAPT_ROOT"  # the variable's name before wheels; still honoured


def shipped_dir() -> Path:
    """The folder holding the shipped ``configs/`` and ``latency_tables/``."""
    packaged = resources.files("netadapt") / "_shipped"
    if packaged.is_dir():  # an installed wheel
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent  # a checkout


def user_dir() -> Path:
    """The user's own ``configs/devices/`` and ``latency_tables/`` (where profile writes)."""
    for name in (HOME_ENV, LEGACY_HOME_ENV):
        if os.environ.get(name):
            return Path(os.environ[name])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "netadapt"


def search_roots(root: Path | None = None) -> list[Path]:
    """Folders to look in, first match wins: an explicit ``root`` alone, else the user
    directory, then the shipped files."""
    if root is not None:
        return [root]
    roots = [user_dir(), shipped_dir()]
    return roots if roots[0].resolve() != roots[1].resolve() else roots[:1]


def find_config(name: str) -> Path | None:
    """A spec named without a folder (``mobilenetv3_small`` or ``mobilenetv3_small.yaml``)
    among the user's ``configs/``, then the shipped ones; None when there is none."""
    file = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    return next((p for p in (r / "configs" / file for r in search_roots()) if p.is_file()),
                None)


def default_spec() -> Path:
    """The default seed spec: MobileNetV3-Large as shipped."""
    return shipped_dir() / "configs" / "mobilenetv3_large.yaml"
