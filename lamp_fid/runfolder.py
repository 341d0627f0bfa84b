"""A run folder has one writer at a time, and its checkpoints are complete or absent.

``RunFolderLock`` holds an exclusive ``flock`` on ``<run>/.lamp-fid.lock`` for the whole fit (taken by
global rank 0 before anything is written, released when the fit ends; the OS releases it when the
process dies, so a ``kill -9`` never leaves a stale lock). ``AtomicCheckpointIO`` writes each checkpoint
to a temp file in its own folder, syncs it and renames it over the final name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.pytorch import Callback
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from lamp_fid.errors import LaMPError

LOCK_NAME = ".lamp-fid.lock"
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunFolderLock(Callback):
    """An exclusive lock on a run folder while one fit writes into it.

    ``acquire()`` refuses, with one line naming the folder and the holder's pid and host, when another
    process holds it (on a filesystem without locks it warns and goes on unlocked). With the lock held,
    temp files that a killed writer left are removed. The lock is released at the end of the fit
    (``teardown``) or when the fit fails (``on_exception``).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise LaMPError(f"{self.path}: cannot create the run folder's lock file "
                            f"({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise LaMPError(f"{self.run_dir} is in use by another fit ({holder}); wait until it "
                                "ends, or use another --run_name") from None
            # a filesystem without locks (some network mounts): training there must stay possible
            warnings.warn(f"{self.path}: this filesystem cannot lock the run folder ({err.strerror or err});"
                          " make sure no other fit writes into it", stacklevel=2)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        remove_stale_temps(self.run_dir)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)  # the holder line would name a process that no longer holds it
            os.close(fd)  # closing the only descriptor releases the flock

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.release()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.release()

    def __del__(self):
        self.release()


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the checkpoint temp files (``.<name>.<random>.tmp``) a killed writer left in ``folder``.
    Only call with the folder's lock held: a live writer's temp file looks the same."""
    removed = []
    for path in folder.glob(f".*.ckpt.*{TEMP_SUFFIX}"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, writing each checkpoint atomically in its own folder.

    The checkpoint goes to a unique temp file next to its final name, is flushed and fsynced, then
    renamed over the final name: a crash or a full disk leaves the previous file intact, never a
    truncated one (Lightning's default stages the file in the system temp folder and, when that is
    another filesystem, copies it into place). A failed write removes its temp file and ends the fit
    with one line naming the path. Checkpoints are read with ``weights_only=True`` (never unpickled
    code). Remote paths (``s3://``...) go to Lightning's default.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path, tmp, writer = Path(path), None, None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp, f = _create_temp(path)
            with f:
                writer = _Writer(f)
                torch.save(checkpoint, writer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        except (OSError, RuntimeError) as err:
            # torch.save reports a failed write as a RuntimeError without the OSError behind it
            cause = err if isinstance(err, OSError) else writer.error if writer is not None else None
            if cause is None:
                raise
            if cause.errno == errno.ENOSPC:
                raise LaMPError(f"{path}: no space left on device while saving the checkpoint (any previous "
                                f"{path.name} is intact); free space, then resume with --ckpt_path") from None
            raise LaMPError(f"{path}: cannot save the checkpoint ({cause.strerror or cause})") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def with_atomic_checkpoints(plugins) -> list:
    """The Trainer's ``plugins`` with an ``AtomicCheckpointIO``, unless they name a CheckpointIO."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    return plugins if any(isinstance(p, CheckpointIO) for p in plugins) else [*plugins, AtomicCheckpointIO()]


def _create_temp(path: Path) -> tuple[str, BinaryIO]:
    """A new temp file next to ``path`` (a hidden name ``remove_stale_temps`` recognises), open for
    writing, with the permissions of any new file (``mkstemp`` makes it 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        return tmp, os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise


class _Writer:
    """The file object torch.save writes to, remembering the OSError of a failed write."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem can sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
