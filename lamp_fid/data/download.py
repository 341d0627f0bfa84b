"""``lamp-fid download``: fetch LaMP files from the official URLs, resumably and validated.

Each file goes to ``<name>.part`` first; a broken transfer resumes with an HTTP Range request (or
restarts from zero when the server ignores Range); what arrived must parse as the expected JSON (a
wrong URL can answer 200 with an HTML page) before it is fsynced and atomically renamed to the final
name. Files already present and valid are skipped. A local write failure (full disk, no permission)
is one line naming the file and is not retried. urllib only: no extra dependency.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from lamp_fid import __version__
from lamp_fid.data.paths import OFFICIAL_BASE_URL, SPLITS, default_data_dir, official_url, split_paths
from lamp_fid.data.reader import iter_json_array, read_outputs
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import make_folder, write_error
from lamp_fid.tasks import Task, get_task

BACKOFF_S = 1.0  # first retry waits this long, then doubles
_BLOCK = 1 << 20


class _Retry(Exception):
    """A transfer problem worth another attempt (resuming from what the .part file holds)."""


def _transfer(url: str, part: Path, timeout: float, desc: str):
    """One HTTP attempt: append to ``part`` from its current size, or restart it from zero."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"lamp-fid/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != start:
                part.unlink(missing_ok=True)
                raise _Retry(f"the server resumed at the wrong place ({resp.headers.get('Content-Range')!r})")
        elif resp.status == 200:
            start = 0  # a server that ignores Range sends the whole file again
        else:
            raise LaMPError(f"{url}: unexpected HTTP status {resp.status}")
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        try:
            f = open(part, "ab" if start else "wb")
        except OSError as err:
            raise write_error(part, err) from None
        with f, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
            while block := resp.read(_BLOCK):  # network errors here are retried, local ones are not
                try:
                    f.write(block)
                    f.flush()
                except OSError as err:
                    raise write_error(part, err) from None
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retry(f"the connection closed after {size} of {total} bytes")


def _fetch(url: str, part: Path, *, retries: int, timeout: float, desc: str):
    """Download ``url`` into ``part`` with up to ``retries`` retries (exponential backoff)."""
    attempt = 0
    while True:
        try:
            return _transfer(url, part, timeout, desc)
        except urllib.error.HTTPError as err:
            if err.code == 416:  # the .part is bigger than the file: start over
                part.unlink(missing_ok=True)
                problem = "HTTP 416 (range not satisfiable)"
            elif err.code < 500 and err.code not in (408, 429):
                hint = " (no such task/split on the server?)" if err.code == 404 else ""
                raise LaMPError(f"{url}: HTTP {err.code} {err.reason}{hint}") from None
            else:
                problem = f"HTTP {err.code} {err.reason}"
        except (_Retry, urllib.error.URLError, http.client.HTTPException, OSError) as err:
            problem = str(getattr(err, "reason", None) or err) or type(err).__name__
        attempt += 1
        if attempt > retries:
            kept = f"; {part.stat().st_size} bytes kept in {part} to resume" if part.exists() else ""
            raise LaMPError(f"{url}: download failed after {attempt} attempts: {problem}{kept}")
        wait = BACKOFF_S * 2 ** (attempt - 1)
        print(f"{desc}: {problem}; retrying in {wait:g} s ({attempt}/{retries})")
        time.sleep(wait)


def _publish(part: Path, path: Path) -> None:
    """Make the complete ``part`` durable, then rename it onto ``path``."""
    try:
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        part.replace(path)
    except OSError as err:
        raise write_error(path, err) from None


def validate_file(path: Path, task: Task, kind: str):
    """Check that ``path`` parses as a LaMP ``kind`` file: a list of records with ids, or ``task``'s
    outputs object. Raises :class:`LaMPDataError`."""
    if kind == "outputs":
        read_outputs(path, task)
        return
    for i, record in enumerate(iter_json_array(path)):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise LaMPDataError(path, f"record at index {i} is not a LaMP question (an object with a "
                                      f"string 'id')")


def _valid(path: Path, task: Task, kind: str) -> bool:
    try:
        validate_file(path, task, kind)
        return True
    except LaMPDataError as err:
        print(f"{path} is not valid ({err}); downloading it again")
        return False


def download(task: str, split: str = "dev", time_split: bool = False, data_dir: Path | None = None,
             base_url: str = OFFICIAL_BASE_URL, retries: int = 3, timeout: float = 60,
             force: bool = False) -> list[Path]:
    """Download one LaMP task/split (questions, and outputs except for test) into ``data_dir``.

    Files land in the layout of the URL, e.g. ``<data_dir>/LaMP_2/new/dev/dev_questions.json`` and
    ``<data_dir>/time/LaMP_4/train/...``. Returns the paths of the files now present.

    Args:
        task: LaMP task, e.g. LaMP_4 (also LaMP-4 or 4; LaMP_2 is movie tagging, LaMP_2N the old news task).
        split: train, dev, test (questions only: test labels are withheld) or all.
        time_split: the time-based split instead of the user-based one.
        data_dir: where to save; default $LAMP_FID_DATA, else ~/.cache/lamp-fid/LaMP.
        base_url: root of the LaMP files (the official server by default; a mirror works too).
        retries: retries per file after a failed attempt (a broken transfer resumes where it stopped).
        timeout: seconds without data before an attempt counts as failed.
        force: download again even if a valid file is already present.
    """
    try:
        task_row = get_task(task)
    except ValueError as err:
        raise LaMPError(str(err)) from None
    splits = SPLITS if split == "all" else (split,)
    if split != "all" and split not in SPLITS:
        raise LaMPError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} or all")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    done: list[Path] = []
    for one in splits:
        for kind, path in zip(("questions", "outputs"), split_paths(root, task_row, one, time_split)):
            if path is None:  # the test split has no outputs file
                continue
            url = official_url(task_row, one, kind, time_split, base_url)
            if path.exists() and not force and _valid(path, task_row, kind):
                print(f"{path}: already present and valid")
                done.append(path)
                continue
            make_folder(path.parent)
            part = path.with_name(path.name + ".part")
            if force:
                part.unlink(missing_ok=True)
            _fetch(url, part, retries=retries, timeout=timeout, desc=f"{task_row.name} {one} {kind}")
            try:
                validate_file(part, task_row, kind)
            except LaMPDataError as err:
                part.unlink(missing_ok=True)
                raise LaMPError(f"{url} did not give a valid LaMP {kind} file, nothing was saved: "
                                f"{str(err).replace(str(part) + ': ', '')}") from None
            _publish(part, path)
            print(f"{path}: downloaded ({path.stat().st_size:,} bytes)")
            done.append(path)
    return done
