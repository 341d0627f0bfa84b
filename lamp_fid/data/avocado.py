"""LaMP_6 (email subject generation) built from your own licensed copy of the Avocado corpus.

The LaMP organizers release LaMP_6 with Avocado message ids in place of the emails (LDC2015T03 is
licensed): in the released ``{split}_questions.json`` the question's ``input`` and every profile
item's ``text`` hold the file name of one email of the corpus (for example ``001-000001-EM.txt``).
This module fills them in the way the official generator (``data/avocado/create_avocado_dataset.py``
of github.com/LaMP-Benchmark/LaMP) does:

- input = ``"Generate a subject for the following email: " + body``; gold output = subject
  (train and dev only: the test split's labels are withheld);
- each profile item keeps its fields and order, ``text`` becomes the body and ``title`` the subject;
- question records are ``{"id", "input", "profile"}``, plus ``"user_id"`` on the time-based split;
- an email is read as the ``mail-parser`` package (which the official generator calls) reads it, in
  version 3.15.0, which the official repository pins and which was current when LaMP_6 was built
  (mail-parser 4, from 2024, changed bodies): see :func:`parse_email`.

The corpus is read straight from the ``.zip`` files of ``avocado-1.0.2/data/text`` (no extraction),
or from a folder where they were extracted; files are matched by base name.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import io
import json
import os
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Literal

from tqdm import tqdm

from lamp_fid.data.paths import SPLITS, default_data_dir, split_paths
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.io import atomic_open, check_target
from lamp_fid.tasks import INSTRUCTIONS

TASK = "LaMP_6"
INSTRUCTION = INSTRUCTIONS["LaMP_6"].removesuffix("{text}")  #: the official prefix of every LaMP_6 input
BOUNDARY = "\n--- mail_boundary ---\n"  # how mail-parser joins the text parts of one email
_BAD_BASE64 = (email.errors.InvalidBase64PaddingDefect, email.errors.InvalidBase64CharactersDefect,
               email.errors.InvalidBase64LengthDefect)


@dataclass(frozen=True)
class Email:
    """The two things LaMP_6 takes from an email."""

    subject: str
    body: str


# --- one email ---------------------------------------------------------------------------------

def _text(data: bytes | str | None, charset: str = "utf-8") -> str:
    """Bytes -> text as mail-parser does: the declared charset, else UTF-8 dropping bad bytes; NFC."""
    if not data:
        return ""
    if isinstance(data, bytes):
        try:
            data = data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            data = data.decode("utf-8", "ignore")
    return unicodedata.normalize("NFC", data)


def _header_text(value: str | None) -> str:
    """A header with its RFC 2047 encoded words decoded, stripped (mail-parser's header decoding)."""
    if not value:
        return ""
    out = ""
    try:
        for part, charset in email.header.decode_header(value):
            out += _text(part, charset or "utf-8")
    except (email.errors.HeaderParseError, UnicodeError):
        out += value  # mail-parser keeps the raw header when decoding fails
    return out.strip()


def _is_attachment(part: email.message.Message) -> bool:
    """mail-parser 3.15.0's rule: named parts, non-text parts with a Content-ID, rtf. (A bare
    ``Content-Disposition: attachment`` only became an attachment in mail-parser 4.)"""
    subtype = part.get_content_subtype()
    if _header_text(part.get_filename()):
        return True
    if part.get("content-id") and subtype not in ("html", "plain"):
        return True
    # mail-parser tests `subtype in ("rtf")`: a substring test on "rtf", kept for identical bodies
    return subtype in "rtf"


def _part_text(part: email.message.Message) -> str:
    """The decoded text of one body part, decoded by mail-parser's rules."""
    payload = part.get_payload(decode=True)
    cte = (part.get("content-transfer-encoding") or "").lower()
    if not cte or cte in ("7bit", "8bit"):
        # the stdlib hands undeclared text back escaped; mail-parser undoes that (no NFC here)
        try:
            return payload.decode("raw-unicode-escape")
        except UnicodeDecodeError:
            pass
    return _text(payload, part.get_content_charset("utf-8"))


def parse_email(raw: bytes, where: str = "<email>", message_id: str | None = None) -> Email:
    """Subject and body of one Avocado email file, as the official generator's mail-parser sees them.

    The file is decoded as UTF-8 dropping undecodable bytes, with universal newlines, and parsed by
    the stdlib ``email`` package. Subject = the ``Subject`` header, RFC 2047 decoded, NFC, stripped.
    Body = the non-attachment leaf parts, decoded, text/plain parts first, then text/html, then the
    others, joined by ``"\\n--- mail_boundary ---\\n"``, stripped.

    Where the official generator would silently write an empty string or a list, this raises a
    :class:`LaMPDataError` naming ``where``, the message and the field: no ``Subject`` header (not an
    email file), several ``Subject`` headers, no text part at all, a text part with broken base64.
    An empty but present subject or body is kept as ``""``, as in the official files.
    """
    msg = email.message_from_file(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="ignore"))
    subjects = msg.get_all("subject")
    if not subjects:
        raise LaMPDataError(where, "no Subject header (is this an email file?)", message_id, "subject")
    if len(subjects) > 1:
        raise LaMPDataError(where, f"{len(subjects)} Subject headers, expected one", message_id, "subject")
    by_kind: dict[str, list[str]] = {"plain": [], "html": [], "other": []}
    text_parts = 0
    for part in msg.walk():
        if part.is_multipart() or _is_attachment(part):
            continue
        text_parts += 1
        text = _part_text(part)
        if any(isinstance(d, _BAD_BASE64) for d in part.defects):
            raise LaMPDataError(where, "a text part has invalid base64 content", message_id, "body")
        if text:
            subtype = part.get_content_subtype()
            by_kind[subtype if subtype in by_kind else "other"].append(text)
    if not text_parts:
        raise LaMPDataError(where, "no text part (every part is an attachment)", message_id, "body")
    body = BOUNDARY.join(by_kind["plain"] + by_kind["html"] + by_kind["other"])
    return Email(subject=_header_text(subjects[0]), body=body.strip())


# --- the corpus -------------------------------------------------------------------------------

def _corpus_files(root: Path) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    """``(base name, where, read)`` for every file under ``root``, looking inside ``.zip`` files."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if name.lower().endswith(".zip"):
                yield from _zip_members(path)
            else:
                yield name, str(path), path.read_bytes


def _zip_members(path: Path) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise LaMPDataError(path, f"cannot open the zip file: {err}") from None
    with archive:
        for info in archive.infolist():
            if not info.is_dir():
                yield (PurePosixPath(info.filename).name, f"{path}/{info.filename}",
                       lambda info=info: archive.read(info))


def _match(name: str, needed: set[str]) -> str | None:
    """The needed message id that file ``name`` holds (ids may be given with or without ``.txt``)."""
    if name in needed:
        return name
    if name.endswith(".txt") and name[:-4] in needed:
        return name[:-4]
    return None


def _corpus_dir(avocado_files_dir: Path) -> Path:
    root = Path(avocado_files_dir)
    if not root.is_dir():
        raise LaMPError(f"{root}: no such directory (--avocado_files_dir is the Avocado folder "
                        "avocado-1.0.2/data/text with its .zip files, or a folder they were extracted to)")
    return root


def load_emails(avocado_files_dir: Path, needed: Iterable[str]) -> dict[str, Email]:
    """Parse the needed messages of the corpus: ``{message id: Email}``; missing ids are left out.

    Scanning stops once every needed message is found; a message found twice keeps its first copy in
    sorted path order.
    """
    root = _corpus_dir(avocado_files_dir)
    needed, found = set(needed), {}
    if not needed:
        return found
    bar = tqdm(_corpus_files(root), desc="scanning Avocado", unit="file", disable=None)
    try:
        for name, where, read in bar:
            mid = _match(name, needed)
            if mid is None or mid in found:
                continue
            try:
                raw = read()
            except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
                raise LaMPDataError(where, f"cannot read: {err}", mid) from None
            found[mid] = parse_email(raw, where, mid)
            if len(found) == len(needed):
                break
    finally:
        bar.close()
    return found


# --- the released id files -----------------------------------------------------------------------

def find_id_file(ids_dir: Path, split: str, time_split: bool = False) -> Path:
    """The released ``{split}_questions.json`` under ``ids_dir``: lamp-fid's layout
    (``[time/]LaMP_6/<split>/``), else ``<split>/``, else ``ids_dir`` itself."""
    ids_dir = Path(ids_dir)
    candidates = [split_paths(ids_dir, TASK, split, time_split)[0],
                  ids_dir / split / f"{split}_questions.json", ids_dir / f"{split}_questions.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise LaMPError(f"no released LaMP_6 id file for split {split!r}: tried "
                    + ", ".join(str(p) for p in candidates))


def read_id_file(path: Path, time_split: bool = False) -> list[dict]:
    """Load and check one released id file: a JSON list of ``{"id", "input", "profile": [{"id",
    "text", ...}]}`` where ``input`` and each ``text`` are Avocado message ids."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except OSError as err:
        raise LaMPDataError(path, f"cannot read: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LaMPDataError(path, f"not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise LaMPDataError(path, f"expected a JSON list of questions, got {type(records).__name__}")
    for n, rec in enumerate(records):
        if not isinstance(rec, dict) or "id" not in rec:
            raise LaMPDataError(path, f"question #{n} is not an object with an 'id'", field="id")
        rid = str(rec["id"])
        if not isinstance(rec.get("input"), str):
            raise LaMPDataError(path, "expected an Avocado message id (a string)", rid, "input")
        if rec["input"].startswith(INSTRUCTION):
            raise LaMPDataError(path, "holds an email text, not a message id: this is a built LaMP_6 "
                                "file, not the released id file", rid, "input")
        if not isinstance(rec.get("profile"), list):
            raise LaMPDataError(path, "expected a list of profile items", rid, "profile")
        for i, item in enumerate(rec["profile"]):
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise LaMPDataError(path, "expected an object whose 'text' is an Avocado message id",
                                    rid, f"profile[{i}].text")
        if time_split and "user_id" not in rec:
            raise LaMPDataError(path, "missing (the time-based split carries user_id)", rid, "user_id")
    return records


def _references(records: list[dict]) -> Iterator[tuple[str, str, str]]:
    """``(question id, field, message id)`` for every message a split refers to, in file order."""
    for rec in records:
        yield str(rec["id"]), "input", rec["input"]
        for i, item in enumerate(rec["profile"]):
            yield str(rec["id"]), f"profile[{i}].text", item["text"]


# --- building -----------------------------------------------------------------------------------

def build_question(record: dict, emails: dict[str, Email], time_split: bool = False) -> dict:
    """One released id record -> the official LaMP_6 question (profile items keep their fields)."""
    profile = []
    for item in record["profile"]:
        mail = emails[item["text"]]
        filled = dict(item)
        filled["text"], filled["title"] = mail.body, mail.subject
        profile.append(filled)
    question = {"id": record["id"], "input": INSTRUCTION + emails[record["input"]].body,
                "profile": profile}
    if time_split:
        question["user_id"] = record["user_id"]
    return question


def _write_json_list(f, records: Iterable[dict]) -> int:
    """Stream ``records`` as the JSON list ``json.dump`` would write (default separators, ASCII)."""
    n = 0
    f.write("[")
    for rec in records:
        f.write(", " if n else "")
        f.write(json.dumps(rec))
        n += 1
    f.write("]")
    return n


def avocado(
    avocado_files_dir: Path,
    ids_dir: Path,
    output_dir: Path | None = None,
    split: Literal["all", "train", "dev", "test"] = "all",
    time_split: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Build the LaMP_6 files from your own Avocado corpus and the released message-id files.

    Writes ``{split}_questions.json`` (and ``{split}_outputs.json`` for train and dev) in the official
    LaMP format and lamp-fid's data layout (``<output_dir>/[time/]LaMP_6/<split>/``), where training
    and evaluation find them. Everything is checked before anything is written.

    Args:
        avocado_files_dir: the corpus: the folder ``avocado-1.0.2/data/text`` holding its .zip files (as
            the official generator's --avocado_files_dir), a folder they were extracted to, or the
            corpus root; searched recursively, emails matched by file name.
        ids_dir: folder with the released LaMP_6 id files (the official generator's
            --input_question_file_*): ``[time/]LaMP_6/<split>/<split>_questions.json`` as `lamp-fid
            download --data_dir` writes them, or ``<split>/<split>_questions.json``, or
            ``<split>_questions.json``.
        output_dir: root of lamp-fid's data layout to write into (default: where `lamp-fid download`
            puts data, $LAMP_FID_DATA or ~/.cache/lamp-fid/LaMP). Must not hold the id files.
        split: which split to build: train, dev, test, or all three.
        time_split: build the time-based split (its id files; questions carry user_id), as the
            official generator's --time_based_separation.
        overwrite: replace existing output files.

    Returns:
        The paths written.
    """
    _corpus_dir(avocado_files_dir)  # fail before anything slow
    output_dir = Path(output_dir) if output_dir is not None else default_data_dir()
    splits = list(SPLITS) if split == "all" else [split]
    plan = []  # (split, id file, questions path, outputs path or None)
    for s in splits:
        ids = find_id_file(ids_dir, s, time_split)
        questions, outputs = split_paths(output_dir, TASK, s, time_split)
        targets = [p for p in (questions, outputs) if p is not None]
        for target in targets:
            if target.exists() and os.path.samefile(target, ids):
                raise LaMPError(f"{ids}: the output would replace the released id file; keep the id "
                                "files in their own folder or choose another --output_dir")
            check_target(target, overwrite=overwrite)
        plan.append((s, ids, questions, outputs))

    records = {s: read_id_file(ids, time_split) for s, ids, _, _ in plan}
    needed = {mid for s in records for _, _, mid in _references(records[s])}
    emails = load_emails(avocado_files_dir, needed)
    for s, ids, _, _ in plan:
        missing = [ref for ref in _references(records[s]) if ref[2] not in emails]
        if missing:
            qid, field, mid = missing[0]
            raise LaMPDataError(ids, f"message {mid!r} is not in the Avocado corpus under "
                                f"{avocado_files_dir} ({len(needed) - len(emails)} of {len(needed)} "
                                "needed messages are missing)", qid, field)

    written = []
    for s, _, questions, outputs in plan:
        recs = records[s]
        with atomic_open(questions, "w", overwrite=overwrite) as f:
            n = _write_json_list(f, (build_question(r, emails, time_split)
                                     for r in tqdm(recs, desc=f"LaMP_6 {s}", unit="question", disable=None)))
        written.append(questions)
        if outputs is not None:
            with atomic_open(outputs, "w", overwrite=overwrite) as f:
                f.write('{"task": "LaMP_6", "golds": ')
                _write_json_list(f, ({"id": r["id"], "output": emails[r["input"]].subject} for r in recs))
                f.write("}")
            written.append(outputs)
        print(f"LaMP_6 {s}: {n} questions -> {questions}" + (f" (+ {outputs.name})" if outputs else ""))
    return written
