"""Files that survive kill -9: atomic writes (a kill at any moment leaves either the old
file or the new one) and append-only journals (a kill loses at most the line being
written)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def link_atomic(source: Path, path: Path) -> None:
    """Make ``path`` a hard link to ``source`` (same file system), replacing any file
    there atomically: a copy that writes no bytes. OSError where links are unsupported."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


class JournalError(Exception):
    """A journal line other than the last is not JSON (edited by hand?)."""


class Journal:
    """An append-only JSON-lines file that survives kill -9: each record is one line,
    flushed and fsynced before ``append`` returns; a torn last line (a kill mid-write)
    is dropped when the journal is read, and cut off so that appends stay whole (so read
    a journal a kill may have torn before appending to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        self.extend([record])

    def extend(self, records: list[dict[str, Any]]) -> None:
        """Append several records with one fsync (a kill keeps a prefix of them)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete record, in order."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):  # torn write: the record never happened
            lines = lines[:-1]
            write_text_atomic(self.path, "".join(lines))
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise JournalError(f"{self.path}: line {i + 1} is corrupt") from None
        return out
