"""Exclusive per-output locks, so two processes never write the same stage state.

`exclusive_lock(lock_path, what)` takes an advisory `flock` on `lock_path` (created if
missing, never deleted: deleting a lock file while another process waits on it would let two
holders in). The holder writes its PID, host and command line into the file, and a second
process fails at once with a BusyError naming them. The kernel releases the lock when the
holder exits, however it exits (kill -9 included), so a lock is never left stale.

`remove_stray_temporaries(outputs)` deletes the temporary files that `io.atomic_output` leaves
when a writer is killed between creating and renaming them (`.{name}.*.tmp` beside each
output). Call it only while holding the lock that covers those outputs: then no live writer
owns them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from .errors import BusyError, DataError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on `lock_path` for the block; BusyError if another process has
    it. `what` names the work in the message (e.g. "training of run 'egnn_mle'")."""
    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, holder = _holder(fd)
        os.close(fd)
        stop = f" or stop it (kill {pid})" if pid else ""
        raise BusyError(f"{path}: {what} is already running in process {holder}; wait for it to "
                        f"finish{stop}, then rerun") from None
    try:
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)}
        os.write(fd, json.dumps(info).encode())
        yield path
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_lock_file(path: Path) -> int:
    """Open (create) a lock file that is a regular file and not a symlink: a link planted at
    a lock path must never let the lock truncate what it points to."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: lock file is a symbolic link; remove it (its target is "
                            "left untouched)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{path}: lock file is not a regular file; remove it")
    return fd


def _holder(fd: int) -> tuple[int | None, str]:
    """(PID, 'PID on HOST (COMMAND)') of a held lock file, as well as it can be read."""
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if "pid" not in info:  # the holder has not written its name yet
        return None, "(a process that is just starting)"
    return info["pid"], f"{info['pid']} on {info.get('host', '?')} ({info.get('command', '')})"


def remove_stray_temporaries(outputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete `.{name}.*.tmp` files beside each output (left by killed writers); returns them."""
    removed = []
    for out in outputs:
        out = Path(out)
        if not out.parent.is_dir():
            continue
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed
