"""Prediction files in the official LaMP format: ``{"task": "LaMP_<n>", "golds": [{"id", "output"}]}``.

Gold outputs files have the same format, so everything here reads both, validated by the one validator
of the format (:func:`lamp_fid.data.reader.validate_outputs`). A "source" of such files is
one JSON file, a directory (searched recursively) or a zip; zips are read in memory, never extracted.
Hostile files get one line each: ``NaN``/``Infinity`` literals (not JSON), nesting too deep for the
parser, a truncated or corrupt zip, and zip members bigger than :data:`MAX_MEMBER_BYTES` uncompressed
(checked in the zip's directory and again while reading, since the directory can lie).
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Mapping

from lamp_fid.data.reader import parse_json, read_outputs, validate_outputs
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_write  # re-exported: the package's one atomic writer
from lamp_fid.tasks import Task, get_task

MAX_MEMBER_BYTES = 64 << 20  #: cap on one zip member, uncompressed (official outputs files are a few MB)
MAX_ZIP_BYTES = 256 << 20  #: cap on all the outputs files read from one zip, uncompressed
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


def predictions_json(task: str | Task, preds: Mapping[str, str]) -> str:
    """The official-format JSON text of ``preds`` (``{id: output}``, in its order) for ``task``."""
    task = get_task(task)
    golds = []
    for rid, out in preds.items():
        if not isinstance(out, str):
            raise LaMPError(f"prediction for id {rid!r} is {type(out).__name__} {out!r}, not a string")
        golds.append({"id": str(rid), "output": out})
    if len({g["id"] for g in golds}) != len(golds):
        raise LaMPError("prediction ids are not distinct once written as strings")
    return json.dumps({"task": task.official_name, "golds": golds}, ensure_ascii=False, indent=1) + "\n"


def write_predictions(path: str | Path, task: str | Task, preds: Mapping[str, str], *,
                      overwrite: bool = False) -> Path:
    """Write ``preds`` (``{example id: output}``) for ``task`` in the official format, atomically.

    The file's ``"task"`` is the official name (``LaMP_2`` for movies and for the deprecated news task).
    Refuses to replace an existing file unless ``overwrite``. Returns the path.
    """
    return atomic_write(path, predictions_json(task, preds), overwrite=overwrite)


# Prediction files have the golds' format: one reader and one validator for both.
read_predictions = read_outputs


def check_ids(preds: Iterable[str], golds: Iterable[str], path: str | Path, *, show: int = 5) -> None:
    """Raise ``LaMPDataError`` on ``path`` unless the prediction ids equal the gold ids exactly.

    The message counts the gold ids without a prediction and the prediction ids that are not gold ids,
    and lists the first ``show`` of each.
    """
    preds, golds = list(preds), list(golds)
    pred_set, gold_set = set(preds), set(golds)
    missing = [i for i in golds if i not in pred_set]
    extra = [i for i in preds if i not in gold_set]
    if not missing and not extra:
        return

    def some(ids: list[str]) -> str:
        more = f", ... ({len(ids) - show} more)" if len(ids) > show else ""
        return ", ".join(repr(i) for i in ids[:show]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} of {len(gold_set)} gold ids have no prediction: {some(missing)}")
    if extra:
        parts.append(f"{len(extra)} prediction ids are not gold ids: {some(extra)}")
    raise LaMPDataError(path, "ids do not match the golds; " + "; ".join(parts))


# --- sources: a file, a directory or a zip of many -----------------------------------------------

@dataclass
class OutputsFile:
    """One official-format file found in a source."""

    where: str  #: the file's path (``archive.zip!member`` inside a zip)
    task: str  #: official task name
    outputs: dict[str, str]


_NAME_TASK = re.compile(r"(?i)lamp[_-]?(\d)")


def _check_name(where: str, name: str, task: str) -> None:
    m = _NAME_TASK.match(name)
    if m and f"LaMP_{m.group(1)}" != task:
        raise LaMPDataError(where, f"the file name says LaMP_{m.group(1)} but the file is for {task}", field="task")


def _looks_like_outputs(head: bytes) -> bool:
    # Questions files are JSON lists (and can be gigabytes): only objects are parsed.
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def _parse_candidate(open_file, where: str, name: str, size: int | None = None) -> OutputsFile | None:
    """Parse one file of a folder or zip if it is an outputs file. ``size`` (zip members: the size
    the zip's directory declares) caps what is read at :data:`MAX_MEMBER_BYTES`."""
    with open_file() as f:
        head = f.read(4096)
        if not _looks_like_outputs(head):
            return None  # without reading the rest: a questions file can be gigabytes
        if size is None:
            data = head + f.read()
        else:
            if size > MAX_MEMBER_BYTES:
                raise LaMPDataError(where, f"{size:,} bytes uncompressed: more than an outputs file may hold "
                                           f"({MAX_MEMBER_BYTES:,} bytes; a zip bomb?)")
            data = head + f.read(MAX_MEMBER_BYTES + 1 - len(head))
            if len(data) > MAX_MEMBER_BYTES:  # the directory said less: it lied
                raise LaMPDataError(where, f"more than {MAX_MEMBER_BYTES:,} bytes uncompressed (the zip's "
                                           f"directory says {size:,}): more than an outputs file may hold")
    obj = parse_json(data, where)
    if not (isinstance(obj, dict) and "task" in obj and "golds" in obj):
        return None  # some other JSON object (a config, a metrics file)
    task, outputs = validate_outputs(obj, where)
    _check_name(where, name, task)
    return OutputsFile(where, task, outputs)


def _zip_candidates(source: Path) -> Iterator[OutputsFile]:
    """The outputs files of a zip, read in memory with capped sizes; a damaged zip is one line."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise LaMPError(f"{source}: a truncated or corrupt zip ({err})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            safe_member(source, info.filename)
        total = 0
        for info in sorted(infos, key=lambda i: i.filename):
            name = PurePosixPath(info.filename.replace("\\", "/")).name
            if info.is_dir() or not name.endswith(".json") or name.endswith("questions.json") \
                    or name.startswith(".") or info.filename.startswith("__MACOSX/"):
                continue
            where = f"{source}!{info.filename}"
            try:
                found = _parse_candidate(lambda: zf.open(info), where, name, info.file_size)
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as err:
                raise LaMPDataError(where, f"cannot be read: a truncated or corrupt zip ({err})") from None
            if found:
                total += info.file_size
                if total > MAX_ZIP_BYTES:
                    raise LaMPError(f"{source}: its outputs files hold more than {MAX_ZIP_BYTES:,} bytes "
                                    "uncompressed (a zip bomb?)")
                yield found


def safe_member(archive: str | Path, name: str) -> str:
    """Return ``name`` if the zip member stays inside the archive, else raise ``LaMPError``."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise LaMPError(f"{archive}: refusing member {name!r}: an absolute path or '..' would escape the archive")
    return name


def _starts_like_zip(path: Path) -> bool:
    """A file that begins as a zip does (``zipfile.is_zipfile`` only finds complete ones)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in _ZIP_MAGIC
    except OSError:
        return False


def iter_outputs_files(source: str | Path) -> Iterator[OutputsFile]:
    """Every official-format file of ``source``: one JSON file, a directory (recursive) or a zip.

    A single file must be in the official format. In a directory or zip, files named
    ``*questions.json``, JSON lists and JSON objects without ``"task"`` and ``"golds"`` are skipped;
    a file named like ``LaMP_3*.json`` must be for LaMP_3. Zip members are read in memory; a member
    with an absolute path or ``..`` makes the whole zip refused.
    """
    source = Path(source)
    if not source.exists():
        raise LaMPError(f"{source}: no such file or directory")
    if source.is_dir():
        for path in sorted(source.rglob("*.json")):
            rel = path.relative_to(source).parts
            if path.is_file() and not path.name.endswith("questions.json") \
                    and not any(p.startswith(".") for p in rel):
                found = _parse_candidate(lambda: path.open("rb"), str(path), path.name)
                if found:
                    yield found
    elif zipfile.is_zipfile(source) or _starts_like_zip(source):
        yield from _zip_candidates(source)
    else:
        task, outputs = read_predictions(source)
        _check_name(str(source), source.name, task)
        yield OutputsFile(str(source), task, outputs)


def outputs_by_task(source: str | Path, *, several: bool = False) -> dict:
    """The official-format files of ``source`` keyed by official task name.

    One file per task (``{task: OutputsFile}``), or with ``several`` every file of each task
    (``{task: [OutputsFile, ...]}``, e.g. a LaMP data folder's train and dev outputs).
    """
    found: dict[str, list[OutputsFile]] = {}
    for f in iter_outputs_files(source):
        found.setdefault(f.task, []).append(f)
    if not found:
        raise LaMPError(f'{source}: no LaMP outputs files (JSON objects with "task" and "golds") found')
    if several:
        return found
    for task, files in found.items():
        if len(files) > 1:
            raise LaMPError(f"{source}: {len(files)} files for {task}: {', '.join(f.where for f in files)}; "
                            "point at a narrower folder or zip")
    return {task: files[0] for task, files in found.items()}


def matching_golds(candidates: list[OutputsFile], preds: OutputsFile) -> OutputsFile:
    """The gold file among ``candidates`` (same task) that ``preds`` answers: the only candidate, else
    the one sharing the most ids with the predictions (then :func:`check_ids` reports any difference)."""
    if len(candidates) == 1:
        return candidates[0]
    overlap = [len(g.outputs.keys() & preds.outputs.keys()) for g in candidates]
    best = max(overlap)
    if best > 0 and overlap.count(best) == 1:
        return candidates[overlap.index(best)]
    which = "as many ids with several" if best else "no id with any"
    raise LaMPError(f"{preds.where} shares {which} of the {preds.task} gold files "
                    f"{', '.join(g.where for g in candidates)}; point at the right one")
