"""Crash-safe file writing shared by :mod:`prunekit.core.io` and :mod:`prunekit.pipeline.checkpoint`.

* temporaries are named ``.<final>.<pid>.<token>.tmp`` beside the final file and
  created with mode ``0o666`` minus the umask (never a forced ``0600``);
* :func:`folder_lock` serialises writers of one folder with ``fcntl.flock`` on a
  lock file; the kernel releases it when a writer dies;
* :func:`clean_stale` removes temporaries whose writer process is gone.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["FolderLockedError", "LOCK_NAME", "folder_lock", "write_temp", "fsync_dir", "atomic_write_bytes", "clean_stale",
           "read_regular_file", "token"]

log = logging.getLogger("prunekit")

LOCK_NAME = ".prunekit.lock"
_TMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{16}\.tmp$")
#: temporaries without a writer pid (written by older versions) are removed once this old
LEGACY_TMP_AGE_S = 3600.0


class FolderLockedError(TimeoutError):
    """Another process kept a folder's write lock for longer than the timeout."""


def token() -> str:
    """16 random hex digits, for unique file names."""
    return secrets.token_hex(8)


def fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_temp(final: Path, data: bytes) -> Path:
    """Write ``data`` to a new fsynced temporary beside ``final``; return its path."""
    tmp = final.parent / f".{final.name}.{os.getpid()}.{token()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path, legacy_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Delete temporaries left in ``folder`` by killed writers; returns their names.

    Call it while holding :func:`folder_lock`. A temporary is stale when its writer
    pid is dead, or (old naming, ``legacy_prefixes``) when older than an hour.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith("."):
            continue
        m = _TMP_RE.match(name)
        if m:
            stale = not _alive(int(m.group(1)))
        elif name.endswith(".tmp") or any(name.startswith(p) for p in legacy_prefixes):
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_TMP_AGE_S
            except OSError:
                continue
        else:
            continue
        if stale and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(name)
    if removed:
        log.info("%s: removed %d stale temporary file(s) of killed writers", folder, len(removed))
    return removed


@contextlib.contextmanager
def folder_lock(folder: Path, timeout: float, name: str = LOCK_NAME, what: str = "writer") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/name``; wait up to ``timeout`` seconds.

    Raises :class:`FolderLockedError` when another process holds it longer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise FolderLockedError(
                        f"{folder}: another {what} holds the lock {name} (waited {timeout:g} s); "
                        "wait for it to finish or use another folder") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_regular_file(path: Path, max_bytes: int | None = None) -> bytes:
    """Read ``path`` only if it is a regular file (no FIFO, device, folder) of at most ``max_bytes``.

    Raises ``OSError``/``ValueError`` with a short reason; callers wrap it in their error type.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{st.st_size} bytes, more than the {max_bytes} allowed")
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, write=None) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    ``write(final, data) -> temporary path`` replaces :func:`write_temp` (a caller's own hook)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = (write or write_temp)(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
