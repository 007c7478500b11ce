"""Leaf helpers for writing files atomically (no flowsci imports)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.
    keep_suffix: the temporary name ends in `path`'s suffix (for writers that pick the format
    from the extension, e.g. MDTraj).

    An exception (or a crash) leaves any existing file at `path` untouched. The temporary name
    is unique (mkstemp), so concurrent writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()


FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# What the writers say instead of an errno: h5py's HDF5 errors, torch.save's C++ iostreams.
FULL_TEXT = ("File too large", "No space left", "Disk quota", "iostream error",
             "PytorchStreamWriter failed writing", "file write failed",
             "inline_container.cc")


def is_disk_full(e: BaseException) -> bool:
    """Whether `e` is a write that failed for lack of space or a file-size limit."""
    if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
        return True
    return isinstance(e, (OSError, RuntimeError)) and any(t in str(e) for t in FULL_TEXT)


class DiskFullError(OSError):
    """A write of `path` failed: the disk (or quota, or `ulimit -f`) is full. Nothing was
    written at `path` (the temporary file is removed)."""

    def __init__(self, path: Path, cause: BaseException):
        super().__init__(errno.ENOSPC, "disk full / file too large writing it (no space left, "
                         "a quota or a file-size limit); nothing was written", str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
