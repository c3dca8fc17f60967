"""Fault injection for the kill -9 tests (tests/test_kill.py), kept out of the product.

Put this folder on a Python process's ``PYTHONPATH`` and set ``NETADAPT_TEST_KILL_AFTER``
to ``SUFFIX`` or ``SUFFIX#N``: the process kills itself with SIGKILL right after the N-th
(default first) atomic write of a file whose path ends with SUFFIX (netadapt.files'
``write_bytes_atomic`` and ``link_atomic``): a kill at an exact point of any phase,
without racing a fast run from outside.

Python imports ``sitecustomize`` at start-up, before the program's own imports, so the
two functions are replaced in netadapt.files before any module takes them by name
(``from .files import write_bytes_atomic``); ``write_text_atomic`` looks
``write_bytes_atomic`` up in its module, so it is covered too. Without the variable
nothing is imported or changed. Worker processes inherit the environment and count
their own writes.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from typing import Any

KILL_ENV = "NETADAPT_TEST_KILL_AFTER"


def install(point: str) -> None:
    import netadapt.files as files

    suffix, _, nth = point.partition("#")
    wanted, writes = int(nth or 1), 0

    def killing(write: Callable[..., Any], path_at: int) -> Callable[..., Any]:
        """``write`` that counts its writes to ``...SUFFIX`` (the target path is its
        argument ``path_at``, or ``path=``) and SIGKILLs this process after the N-th."""

        @functools.wraps(write)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal writes
            result = write(*args, **kwargs)
            path = kwargs["path"] if "path" in kwargs else args[path_at]
            if str(path).endswith(suffix):
                writes += 1
                if writes == wanted:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result

        return wrapper

    files.write_bytes_atomic = killing(files.write_bytes_atomic, 0)  # (path, data)
    files.link_atomic = killing(files.link_atomic, 1)  # (source, path)


if os.environ.get(KILL_ENV):
    install(os.environ[KILL_ENV])
