"""Writing files and folders: one atomic writer for the whole package.

Every file lamp-fid writes appears whole or not at all. :func:`atomic_open` writes into a hidden temp
file beside the target (``.<name>.<16 hex>.tmp``, created like a normal ``open``, so permissions follow
the umask; an overwritten file keeps its mode), flushes and fsyncs it, then renames it onto the target;
on any failure the temp is removed and the target is untouched. An existing target is refused unless
``overwrite`` (the refusal is :func:`check_target`'s one wording), and the refusal holds even against a
file that appears while writing (the temp is hard-linked, not renamed, where the file system allows).
A full disk, a missing permission, a folder where a file should be (and the like) become one
:class:`LaMPError` line naming the path. :func:`atomic_folder` does the same for a folder that a
library writes file by file (``save_pretrained``): a hidden temp folder, renamed onto the target.

Temp files and folders left by a killed writer (``kill -9``) are removed by the next writer in the
same folder: a writer holds an exclusive ``flock`` on its temp for as long as it writes, and the kernel
drops the lock when the process dies, so a temp older than a minute whose lock can be taken has no live
writer. Where ``flock`` is unavailable, a temp counts as stale once untouched for :data:`STALE_S`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import IO, Iterator

from lamp_fid.errors import LaMPError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

STALE_S = 6 * 3600  #: without flock, an untouched temp this old is taken for a dead writer's
_GRACE_S = 60  # a temp this young may belong to a writer that has not locked it yet
_TEMP = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def exists_message(path: str | Path) -> str:
    """The one wording of the refusal to replace an existing file."""
    return f"{path} already exists: pass --overwrite true to replace it"


def check_target(path: str | Path, *, overwrite: bool = False) -> Path:
    """Raise :class:`LaMPError` unless ``path`` may be written: not a folder, and absent unless
    ``overwrite``. Commands call it before any slow work; the writers check again."""
    path = Path(path)
    if path.is_dir():
        raise LaMPError(f"{path} is a folder, not a file name")
    if path.exists() and not overwrite:
        raise LaMPError(exists_message(path))
    return path


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOTDIR:
        return "a file stands where a folder is needed"
    return err.strerror or str(err)


def write_error(path: str | Path, err: OSError) -> LaMPError:
    """The one-line error for an ``OSError`` met while writing ``path``."""
    return LaMPError(f"cannot write {path}: {_reason(err)}")


def make_folder(folder: str | Path) -> Path:
    """``mkdir -p`` whose failures (a file in the way, no permission) are one :class:`LaMPError` line."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else _reason(err)
        raise LaMPError(f"cannot create the folder {folder}: {reason}") from None
    return folder


def _lock(fd: int) -> bool | None:
    """Take an exclusive flock on ``fd`` without waiting: True if taken, False if another process
    holds it, None if this file system cannot tell (no flock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        return False if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None


def clean_stale_temps(folder: str | Path, *, now: float | None = None) -> list[Path]:
    """Remove the temp files and folders of dead writers in ``folder`` (see the module docstring);
    return them."""
    now = time.time() if now is None else now
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not _TEMP.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                age, is_dir = now - st.st_mtime, stat.S_ISDIR(st.st_mode)
                if not (is_dir or stat.S_ISREG(st.st_mode)) or age < _GRACE_S:
                    continue
                flags = os.O_RDONLY | os.O_DIRECTORY if is_dir else os.O_RDWR
                fd = os.open(entry.path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
                try:
                    dead = _lock(fd) if fcntl is not None else None
                    if dead or (dead is None and age > STALE_S):
                        if is_dir:
                            shutil.rmtree(entry.path)
                        else:
                            os.unlink(entry.path)
                        removed.append(Path(entry.path))
                finally:
                    os.close(fd)
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every system can open a folder)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the complete temp file onto ``path``; without ``overwrite``, never replace a file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists, even one created after check_target
    except FileExistsError:
        raise LaMPError(exists_message(path)) from None
    except OSError:  # no hard links here (some network or FAT file systems)
        if path.exists():
            raise LaMPError(exists_message(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, overwrite: bool = False) -> Iterator[IO]:
    """Open a temp file for writing that becomes ``path`` when the ``with`` block ends without error.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. Missing parent folders are created. Raises
    :class:`LaMPError` if ``path`` exists and not ``overwrite``, or on a write failure (naming ``path``).
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_open writes new files: mode must be 'w' or 'wb', not {mode!r}")
    path = check_target(path, overwrite=overwrite)
    make_folder(path.parent)
    clean_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        raise write_error(path, err) from None
    if fcntl is not None:
        _lock(fd)
    with contextlib.suppress(OSError):  # an overwritten file keeps its permissions, as with open()
        os.chmod(fd, stat.S_IMODE(os.stat(path).st_mode))
    f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    try:
        try:
            yield f
        except OSError as err:
            if err.filename is None and err.errno in _WRITE_ERRORS:  # f.write on a full disk
                raise write_error(path, err) from None
            raise  # an error of the caller's own work inside the with block
        try:
            f.flush()
            os.fsync(f.fileno())
            if fcntl is None:  # pragma: no cover - elsewhere, a file cannot be renamed while open
                f.close()
            _publish(tmp, path, overwrite)
        except OSError as err:
            raise write_error(path, err) from None
    finally:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_folder(path.parent)


def atomic_write(path: str | Path, data: str | bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` (``str`` as UTF-8, or ``bytes``) to ``path`` atomically; see :func:`atomic_open`."""
    with atomic_open(path, "wb", overwrite=overwrite) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def check_folder_target(path: str | Path, *, overwrite: bool = False, marker: str = "config.json",
                        what: str = "a model folder") -> Path:
    """Raise :class:`LaMPError` unless the folder ``path`` may be written: absent, or with ``overwrite``
    a folder holding ``marker`` (so a wrong path never deletes a folder of other files). Commands call
    it before any slow work (on every rank); :func:`atomic_folder` checks again."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise LaMPError(exists_message(path))
        if path.is_symlink() or not (path / marker).is_file():
            raise LaMPError(f"{path} is not {what} (no {marker}): not replacing it")
    return path


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False, marker: str = "config.json",
                  what: str = "a model folder") -> Iterator[Path]:
    """Yield a hidden temp folder beside ``path`` that becomes the folder ``path`` when the ``with``
    block ends without error; on any failure it is removed and ``path`` is untouched.

    An existing ``path`` is replaced only with ``overwrite`` and only if it holds ``marker`` (see
    :func:`check_folder_target`); the old folder is moved aside, the new one renamed in, the old one
    removed. Missing parent folders are created; an ``OSError`` in the block or while renaming is one
    :class:`LaMPError` line naming ``path``.
    """
    path = check_folder_target(path, overwrite=overwrite, marker=marker, what=what)
    make_folder(path.parent)
    clean_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        os.mkdir(tmp)
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        if fcntl is not None:
            _lock(fd)
        try:
            yield tmp
            check_folder_target(path, overwrite=overwrite, marker=marker, what=what)  # one may have appeared
            if path.exists():
                old = path.with_name(f".{path.name}.{secrets.token_hex(8)}.old")
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        except OSError as err:
            raise write_error(path, err) from None
    finally:
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_folder(path.parent)
