"""Atomic file writes: after a crash or during a read the target is either the old file or the new one, never half of one.

Each writer writes a temporary file in the target's folder, flushes and fsyncs it, then renames
it over the target (`os.replace` is atomic on POSIX file systems and on NTFS). On POSIX the
folder is fsynced too, so the rename itself survives a power cut. The new file gets the usual
permissions (0o666 less the umask), not the 0o600 of a temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

# The process's umask, read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file that replaces `path` only when the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
        _fsync_folder(path.parent)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data: object) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def save_torch(path: str | Path, obj: object) -> None:
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def append_line(path: str | Path, line: str) -> None:
    """Append one line and fsync it, so a finished epoch's log record survives a crash."""
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_json_lines(path: str | Path) -> list[dict]:
    """Read a JSON-lines log up to its first broken line (one cut by a kill mid-write)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
