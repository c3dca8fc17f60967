"""Atomic file writes: a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

# Fault injection for the kill -9 tests (tests/test_driver.py, scripts/kill_resume.py):
# "SUFFIX" or "SUFFIX#N" kills this process with SIGKILL right after the N-th (default
# first) atomic write of a file whose path ends with SUFFIX: a kill at an exact point of
# any phase, without racing a fast run from outside.
KILL_ENV = "NETADAPT_TEST_KILL_AFTER"
_writes: dict[str, int] = {}


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.environ.get(KILL_ENV):
        _kill_if_asked(path)


def _kill_if_asked(path: Path) -> None:
    suffix, _, nth = os.environ[KILL_ENV].partition("#")
    if str(path).endswith(suffix):
        _writes[suffix] = _writes.get(suffix, 0) + 1
        if _writes[suffix] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))
