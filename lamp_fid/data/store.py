"""A compact on-disk form of a LaMP split: parse the JSON once, then random access with flat memory.

:meth:`LaMPStore.open` streams a questions file (and its outputs) through the validating reader once
and writes, under the cache folder, each record's JSON text plus an int64 offsets array. Later opens
of the same content find it by fingerprint and only load the offsets: ``store[i]`` reads and parses
one record with ``os.pread`` (safe across threads and forked DataLoader workers).

Layout of ``<cache_dir>/stores/<task>-<fingerprint>/``: ``records.jsonl`` (each validated question
record's JSON text exactly as in the source file, one per line unless the source was pretty-printed:
copying the text is much faster than re-encoding it), ``offsets.npy`` (n + 1 byte offsets),
``sizes.npy`` (each profile's length), ``ids.json``, ``outputs.json`` (the golds in record order, or
null), ``meta.json`` (written last, with the size and digest of every other file and the first item
without a sortable date, if any; the folder appears atomically by rename). The data is validated
once, while building; readers of a store trust it.

The fingerprint is a blake2b of the task name and of the bytes of both files, so any change of
content gives a new store. Per-file digests are memoized under ``<cache_dir>/fingerprints`` by
(path, size, mtime, ctime, inode), so reopening a several-GB file does not rehash it: ctime cannot be
set by users, so a file edited in place gets a new key even if its size and mtime are put back (a
digest is memoized only once the file's mtime and ctime are older than a timestamp tick could hide).

A store is verified on every open: each file's size and digest (memoized the same way, so a warm open
only stats them) must equal those recorded at build. A truncated, edited or half-deleted store is
rebuilt, with one warning line on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from lamp_fid.data.example import Example
from lamp_fid.data.paths import default_cache_dir, split_paths
from lamp_fid.data.reader import date_problem, iter_examples
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_write, make_folder, write_error
from lamp_fid.tasks import Task, get_task

FORMAT = 2  # part of the fingerprint (and so of every ranking cache's key): bump only if contents change
LAYOUT = 4  # the files of a store folder; a store of another layout is rebuilt in place
_RACY_NS = 2_000_000_000  # a file changed this close to hashing might change again without a new time stamp
_FILES = ("records.jsonl", "offsets.npy", "sizes.npy", "ids.json", "outputs.json")


def _memo_path(path: Path, cache_dir: str | Path) -> Path:
    name = hashlib.blake2b(str(path).encode(), digest_size=16).hexdigest()
    return Path(cache_dir) / "fingerprints" / f"{name}.json"


def _stat_key(path: Path, st: os.stat_result) -> dict:
    return dict(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                ino=st.st_ino, dev=st.st_dev)


def _remember(path: Path, st: os.stat_result, digest: str, cache_dir: str | Path) -> None:
    """Memoize ``digest`` as the content of ``path`` while its stat is ``st`` (best effort)."""
    with contextlib.suppress(OSError, LaMPError):
        atomic_write(_memo_path(path, cache_dir), json.dumps({"key": _stat_key(path, st), "digest": digest}),
                     overwrite=True)


def file_digest(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """blake2b hex digest of a file's bytes, memoized under ``cache_dir`` by its stat (see the module doc)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LaMPError(f"{path}: no such file") from None
    path = path.resolve()
    if cache_dir is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            saved = json.loads(_memo_path(path, cache_dir).read_text())
            if saved["key"] == _stat_key(path, st) and isinstance(saved["digest"], str):
                return saved["digest"]
    started = time.time_ns()
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    except OSError as err:
        raise LaMPError(f"cannot read {path}: {err.strerror or err}") from None
    digest = h.hexdigest()
    if cache_dir is not None and max(st.st_mtime_ns, st.st_ctime_ns) < started - _RACY_NS:
        _remember(path, st, digest, cache_dir)
    return digest


def fingerprint(task: str | Task, questions_path: str | Path, outputs_path: str | Path | None = None,
                cache_dir: str | Path | None = None) -> str:
    """Content fingerprint of a split: changes whenever either file's bytes or the task change."""
    task = get_task(task)
    parts = [f"lamp-fid store {FORMAT}", task.name, file_digest(questions_path, cache_dir),
             file_digest(outputs_path, cache_dir) if outputs_path is not None else "no outputs"]
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


@contextlib.contextmanager
def _lock(path: Path, wait: bool = True):
    """An exclusive inter-process lock (DDP ranks opening one split build it once); no-op off POSIX.
    Without ``wait``, yields False at once if another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no lock to take; never conclude that another is free
        yield wait
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clean_dead_builds(stores: Path, own: str) -> None:
    """Remove the temp folders of killed builds. Called holding the lock of store ``own``; another
    store's temp folder is a dead build's when nobody holds that store's lock."""
    for tmp in stores.glob(".*.tmp-*"):
        name = tmp.name[1:tmp.name.rindex(".tmp-")]
        if name == own:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        with _lock(stores / f".{name}.lock", wait=False) as free:
            if free:
                shutil.rmtree(tmp, ignore_errors=True)


def _build(task: Task, questions_path: Path, outputs_path: Path | None, final: Path, meta: dict,
           progress: bool, cache_dir: Path) -> None:
    """Stream the files into a temp folder beside ``final``, then rename it into place. The digests of
    the new files are memoized at once: they were computed from the bytes written. The first item
    without a sortable date is recorded (``date_problem`` in meta.json) for recency ranking."""
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        offsets, sizes, ids, outputs, dates = [0], [], [], [], None
        records = hashlib.blake2b(digest_size=20)
        with open(tmp / "records.jsonl", "wb") as f:
            for ex, text in iter_examples(task, questions_path, outputs_path, progress=progress,
                                          with_text=True):
                if dates is None and (problem := date_problem(ex.profile)) is not None:
                    dates = {"record_id": ex.id, "field": problem[0], "message": problem[1]}
                line = text.encode("utf-8") + b"\n"
                f.write(line)
                records.update(line)
                offsets.append(offsets[-1] + len(line))
                sizes.append(len(ex.profile))
                ids.append(ex.id)
                outputs.append(ex.output)
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        np.save(tmp / "sizes.npy", np.asarray(sizes, dtype=np.int32))
        (tmp / "ids.json").write_text(json.dumps(ids))
        (tmp / "outputs.json").write_text(json.dumps(outputs if outputs_path is not None else None))
        digests = {name: file_digest(tmp / name) for name in _FILES if name != "records.jsonl"}
        digests["records.jsonl"] = records.hexdigest()
        files = {name: {"size": (tmp / name).stat().st_size, "digest": digests[name]} for name in _FILES}
        meta = dict(meta, n=len(ids), date_problem=dates, files=files,
                    created=time.strftime("%Y-%m-%d %H:%M:%S"))
        publish_folder(tmp, final, meta, cache_dir)
    except OSError as err:
        raise write_error(final, err) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, final: Path, meta: dict, cache_dir: str | Path) -> None:
    """Finish a cache folder built in ``tmp``: ``meta.json`` written last, the folder renamed into
    place, and the digests recorded in ``meta["files"]`` (computed from the bytes written) memoized."""
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    os.rename(tmp, final)
    for name, info in meta["files"].items():
        path = (final / name).resolve()
        _remember(path, path.stat(), info["digest"], cache_dir)


def _problem(directory: Path, cache_dir: Path) -> str | None:
    """Why the store folder cannot be used as it is (None if it can): missing, from another layout,
    or a file whose size or digest differs from those recorded at build."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as err:
        return f"meta.json is unreadable ({err})"
    if not isinstance(meta, dict) or meta.get("layout") != LAYOUT or not isinstance(meta.get("files"), dict):
        return "it was made by another lamp-fid version"
    return files_problem(directory, _FILES, meta["files"], cache_dir)


def files_problem(folder: Path, names, recorded: dict, cache_dir: Path) -> str | None:
    """Why the cache files ``names`` in ``folder`` differ from the sizes and digests ``recorded`` at
    build (None if none does): the one check of every cache folder (stores, token caches)."""
    for name in names:
        want = recorded.get(name) if isinstance(recorded.get(name), dict) else {}
        try:
            size = (folder / name).stat().st_size
            if size != want.get("size"):
                return f"{name} holds {size} bytes, not {want.get('size')} (truncated or replaced?)"
            if file_digest(folder / name, cache_dir) != want.get("digest"):
                return f"{name} differs from what was written (edited or damaged on disk)"
        except (OSError, LaMPError):
            return f"{name} is missing or unreadable"
    return None


def remove_folder(folder: Path) -> None:
    """Delete a cache folder: renamed aside first, so no reader ever sees it half deleted."""
    aside = folder.with_name(f".{folder.name}.tmp-old-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


class LaMPStore:
    """Random access to the validated examples of one LaMP questions file (+ outputs), from disk.

    Open with :meth:`LaMPStore.open` (or :meth:`open_split`). ``len(store)``, ``store[i]`` (an
    :class:`Example`; negative indices work), ``iter(store)`` (file order), ``store.ids``,
    ``store.index_of(id)``. ``store.fingerprint`` identifies the content: downstream caches key on it.
    Picklable (the file handle is reopened lazily), so it can go to DataLoader workers.
    """

    def __init__(self, directory: Path, task: Task, questions_path: Path, outputs_path: Path | None):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.task = task
        self.questions_path = questions_path
        self.outputs_path = outputs_path
        self.fingerprint: str = self.meta["fingerprint"]
        self.has_outputs: bool = self.meta["has_outputs"]
        self._offsets = np.load(self.directory / "offsets.npy")
        self.profile_sizes: np.ndarray = np.load(self.directory / "sizes.npy")  # len(profile) per example
        self.ids: list[str] = json.loads((self.directory / "ids.json").read_text())
        self._outputs: list[str] | None = json.loads((self.directory / "outputs.json").read_text())
        self._index: dict[str, int] | None = None
        self._fd: int | None = None
        self._fd_pid: int | None = None

    @classmethod
    def open(cls, task: str | Task, questions_path: str | Path, outputs_path: str | Path | None = None, *,
             cache_dir: str | Path | None = None, check_dates: bool = False,
             progress: bool = True) -> "LaMPStore":
        """Open the store of a questions file (+ outputs file), building it on first use.

        Validation (see :mod:`lamp_fid.data.reader`) happens once, while building, dates included:
        ``check_dates=True`` (recency ranking) raises the recorded error of the first item without a
        sortable date, without reading the data again. ``cache_dir`` defaults to
        :func:`lamp_fid.data.paths.default_cache_dir`; stores live in its ``stores/`` folder.
        """
        task = get_task(task)
        questions_path = Path(questions_path)
        outputs_path = None if outputs_path is None else Path(outputs_path)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        fp = fingerprint(task, questions_path, outputs_path, root)
        stores = make_folder(root / "stores")
        final = stores / f"{task.name}-{fp}"
        if _problem(final, root) is not None:
            with _lock(stores / f".{final.name}.lock"):
                _clean_dead_builds(stores, final.name)
                problem = _problem(final, root)  # again: another process may have built it meanwhile
                if problem is not None:
                    if problem != "missing":
                        print(f"lamp-fid: warning: the store {final} is not usable ({problem}): rebuilding it",
                              file=sys.stderr)
                    if final.exists():
                        remove_folder(final)
                    meta = dict(format=FORMAT, layout=LAYOUT, task=task.name, fingerprint=fp,
                                has_outputs=outputs_path is not None,
                                questions_path=str(questions_path.resolve()),
                                outputs_path=None if outputs_path is None else str(outputs_path.resolve()))
                    _build(task, questions_path, outputs_path, final, meta, progress, root)
        store = cls(final, task, questions_path, outputs_path)
        problem = store.meta["date_problem"]
        if check_dates and problem is not None:
            raise LaMPDataError(questions_path, problem["message"], problem["record_id"], problem["field"])
        return store

    @classmethod
    def open_split(cls, data_dir: str | Path, task: str | Task, split: str, *, time_split: bool = False,
                   **options) -> "LaMPStore":
        """Open the store of a downloaded split (the layout of :func:`lamp_fid.data.paths.split_paths`)."""
        questions, outputs = split_paths(data_dir, task, split, time_split)
        return cls.open(task, questions, outputs, **options)

    # --- access ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _file(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.directory / "records.jsonl", os.O_RDONLY), os.getpid()
        return self._fd

    def _example(self, i: int, text: bytes) -> Example:
        record = json.loads(text)
        uid = record.get("user_id")
        return Example(id=record["id"], input=record["input"], profile=record["profile"],
                       output=None if self._outputs is None else self._outputs[i],
                       user_id=None if uid is None else str(uid))

    def __getitem__(self, i: int) -> Example:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"example index {i} out of range for {n} examples")
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._example(i, os.pread(self._file(), end - start, start))

    def __iter__(self) -> Iterator[Example]:
        with open(self.directory / "records.jsonl", "rb") as f:
            for i, size in enumerate(np.diff(self._offsets).tolist()):
                yield self._example(i, f.read(size))

    def index_of(self, example_id: str) -> int:
        """Position of the example with id ``example_id`` (KeyError if absent)."""
        if self._index is None:
            self._index = {eid: i for i, eid in enumerate(self.ids)}
        try:
            return self._index[example_id]
        except KeyError:
            raise KeyError(f"no example with id {example_id!r} in {self.questions_path}") from None

    def get(self, example_id: str) -> Example:
        """The example with id ``example_id``."""
        return self[self.index_of(example_id)]

    def close(self):
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_fd_pid": None}  # a copy opens its own file

    def __repr__(self) -> str:
        return (f"LaMPStore({self.task.name}, {len(self)} examples, questions={str(self.questions_path)!r}, "
                f"fingerprint={self.fingerprint!r})")
