"""Streaming, validating readers of LaMP files.

A LaMP_4 train questions file is several GB of JSON: ``json.load`` needs many times that in memory.
:func:`iter_json_array` yields the records of a top-level JSON list one at a time, holding only a
chunk and the current record. :func:`iter_examples` validates each record against the task table and
joins the gold outputs by id; every problem raises :class:`LaMPDataError` naming the file, the record
id and the field.

This is the one place LaMP files are validated; everything downstream (the store, rankings, prompts)
trusts what it read. :func:`validate_outputs` is the one validator of the outputs format, which gold
outputs files and prediction files share (``lamp_fid.predictions`` reads the latter with it).

What is validated: JSON itself (Python's ``json`` also accepts ``NaN``, ``Infinity`` and ``-Infinity``,
which are not JSON: they are refused, naming the record and field, as is a record nested too deeply to
decode), then types and structure only. Ids (question, gold, prediction and item ids) must be JSON
strings, as in the official files: an integer id would silently fail to match the string ids of
rankings and prediction files, so it is rejected rather than converted. Item fields named in
``task.item_fields`` must be strings, except a labelled target field (LaMP_2 ``tag``, LaMP_3
``score``...), which may also be a number; so every field a φp prompt uses is checked here (see
``test_every_field_the_prompt_uses_is_one_the_reader_checks``). Dates are checked only where the
recency ranking needs them. ``user_id`` (time split) may be a string or an integer and becomes a
string. Extra fields are allowed and kept. Content is not validated: the official LaMP_2 movie dev record ``"110"`` has a
malformed input and must still be read.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from lamp_fid.data.example import Example
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.tasks import TASKS, Task, get_task, task_for

CHUNK_SIZE = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
_TAIL = 16  # a literal or escape cut by the buffer end fails within this many chars
_HTML = "an HTML page, not valid JSON (a wrong URL?)"


class _NotJSON:
    """Stands in for a ``NaN``/``Infinity``/``-Infinity`` literal while decoding, so that the error can
    say where it is (the literal is not JSON; ``float("nan")`` would reach prompts as "nan")."""

    __slots__ = ("literal",)

    def __init__(self, literal: str):
        self.literal = literal


class _Decoder(json.JSONDecoder):
    """``json``'s decoder, counting the NaN/Infinity literals it meets (``found``: reset it before a
    decode) and putting a :class:`_NotJSON` in their place; valid JSON costs nothing extra."""

    def __init__(self):
        super().__init__(parse_constant=self._constant)
        self.found = 0

    def _constant(self, literal: str) -> _NotJSON:
        self.found += 1
        return _NotJSON(literal)


def byte_offset(path: str | Path, char_offset: int, chunk_size: int = CHUNK_SIZE) -> int:
    """The byte offset in ``path`` (UTF-8) of character number ``char_offset`` (used in errors only)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chars = done = 0  # chars decoded so far, and the bytes they came from
    with open(path, "rb") as f:
        if f.read(3) == codecs.BOM_UTF8:  # the reader skips a BOM, so offsets count from after it
            done = 3
        f.seek(done)
        while block := f.read(chunk_size):
            text = decoder.decode(block)
            if chars + len(text) > char_offset:  # the offset is inside this text
                return done + len(text[: char_offset - chars].encode("utf-8"))
            chars += len(text)
            done += len(text.encode("utf-8"))
    return done


def _show(text: str, width: int = 40) -> str:
    return repr(text[:width] + ("..." if len(text) > width else ""))


class _Chars:
    """A growing window of decoded text over a file, read in chunks (the parser's buffer)."""

    def __init__(self, path: Path, chunk_size: int, progress):
        self.path, self.chunk_size, self.progress = path, chunk_size, progress
        self.file = open(path, "rb")
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.decoder = _Decoder()  # JSON, one value at a time
        self.buf, self.pos, self.base, self.eof = "", 0, 0, False

    def more(self, want: int | None = None) -> bool:
        """Append at least one more chunk (``want`` chars if given); False at end of file."""
        if self.eof:
            return False
        self.base += self.pos
        pieces, got = [self.buf[self.pos:]], 0
        while got < (want or 1):
            block = self.file.read(max(self.chunk_size, want or 0))
            if self.progress is not None:
                self.progress.update(len(block))
            try:
                text = self.utf8.decode(block, final=not block)
            except UnicodeDecodeError as err:
                raise LaMPDataError(self.path, f"not UTF-8 text near byte {self.file.tell()}: {err.reason}")
            pieces.append(text)
            got += len(text)
            if not block:
                self.eof = True
                break
        self.buf, self.pos = "".join(pieces), 0
        return got > 0 or not self.eof

    def skip_ws(self) -> str:
        """Skip whitespace (reading on as needed); return the next char, or "" at end of file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def where(self) -> int:
        return self.base + self.pos

    def close(self):
        self.file.close()


def _not_json_at(value: Any) -> tuple[list, str] | None:
    """The key path to the first ``_NotJSON`` in ``value`` and its literal, or None (iterative: the
    value may be nested deeply)."""
    stack: list[tuple[list, Any]] = [([], value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, _NotJSON):
            return where, v.literal
        if isinstance(v, dict):
            stack.extend((where + [k], x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((where + [i], x) for i, x in reversed(list(enumerate(v))))
    return None


def _field_name(where: list) -> str | None:
    """``["profile", 3, "score"]`` -> ``"profile[3].score"``; None for the record itself."""
    out = ""
    for key in where:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or None


def _refuse_not_json(path, value: Any, index: int | None = None, records: str | None = None) -> None:
    """Raise for the first NaN/Infinity literal in ``value``, naming its record's id and the field in
    that record. ``value`` is one record, or (with ``records``) an object whose list ``value[records]``
    holds the records (an outputs file's ``golds``)."""
    found = _not_json_at(value)
    if found is None:
        return
    where, literal = found
    record = value
    if records is not None:
        record = value[records][where[1]] if where[:1] == [records] and len(where) > 2 else None
    rid = record.get("id") if isinstance(record, dict) else None
    if not isinstance(rid, str):
        rid = None
    elif records is not None:
        where = where[2:]
    at = f" (record index {index})" if index is not None else ""
    raise LaMPDataError(path, f"{literal} is not valid JSON{at}: JSON numbers are finite (write the value "
                              "as a number or a string)", rid, _field_name(where))


_TOO_DEEP = "nested too deeply to read (a LaMP record is a few levels deep)"


def _json_error(path: Path, chars: _Chars, index: int, message: str) -> LaMPDataError:
    at = byte_offset(path, chars.where())
    return LaMPDataError(path, f"invalid JSON at byte offset {at} (record index {index}): {message}")


def iter_json_array(path: str | Path, *, chunk_size: int = CHUNK_SIZE, progress: bool = False,
                    with_text: bool = False) -> Iterator[Any]:
    """Yield the elements of the top-level JSON list in ``path`` one by one, reading in chunks.

    Memory holds one chunk plus the current element. Raises :class:`LaMPDataError` with the byte
    offset and record index on invalid JSON, and says so when the file is an HTML page (a wrong URL
    answers HTTP 200 with one). ``progress`` shows a tqdm bar over the file's bytes. With
    ``with_text`` it yields ``(element, its exact JSON text in the file)`` pairs.
    """
    path = Path(path)
    bar = None
    if progress:
        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}")
    chars = _Chars(path, chunk_size, bar)
    try:
        first = chars.skip_ws()
        if first == "<":
            raise LaMPDataError(path, _HTML)
        if first != "[":
            what = "an empty file" if not first else ("a JSON object" if first == "{" else _show(chars.buf[chars.pos:]))
            raise LaMPDataError(path, f"expected a JSON list of records, got {what}")
        chars.pos += 1
        index = 0
        if chars.skip_ws() == "]":
            chars.pos += 1
        else:
            while True:
                value, text = _decode_one(path, chars, index, with_text)
                yield (value, text) if with_text else value
                index += 1
                nxt = chars.skip_ws()
                if nxt == ",":
                    chars.pos += 1
                    chars.skip_ws()
                    continue
                if nxt == "]":
                    chars.pos += 1
                    break
                problem = "the file ends inside the list" if not nxt else f"expected ',' or ']', got {_show(chars.buf[chars.pos:], 20)}"
                raise _json_error(path, chars, index, problem)
        rest = chars.skip_ws()
        if rest:
            raise _json_error(path, chars, index, f"unexpected data after the list: {_show(chars.buf[chars.pos:], 20)}")
    finally:
        chars.close()
        if bar is not None:
            bar.close()


def _decode_one(path: Path, chars: _Chars, index: int, with_text: bool) -> tuple[Any, str | None]:
    """Decode the value at the buffer position, reading more (geometrically) while it is incomplete.

    Returns the value and, with ``with_text``, its JSON text (``more`` keeps the value's start at
    ``chars.pos``)."""
    want = None
    decoder = chars.decoder
    while True:
        decoder.found = 0
        try:
            value, end = decoder.raw_decode(chars.buf, chars.pos)
        except RecursionError:
            raise _json_error(path, chars, index, _TOO_DEEP) from None
        except json.JSONDecodeError as err:
            # An error at the buffer's end may only mean "read on"; one in the middle is final (so a
            # bad record early in a huge file fails at once instead of buffering the rest of it).
            cut = err.msg.startswith("Unterminated string") or err.pos >= len(chars.buf) - _TAIL
            if cut and not chars.eof:
                chars.more(want)
                want = 2 * len(chars.buf)
                continue
            chars.pos = err.pos
            raise _json_error(path, chars, index, err.msg.removesuffix(" at")) from None
        # A number cut at the chunk's end still decodes: make sure more text cannot extend it.
        if end == len(chars.buf) and not chars.eof:
            chars.more(want)
            continue
        if decoder.found:
            _refuse_not_json(path, value, index)
        text = chars.buf[chars.pos:end] if with_text else None
        chars.pos = end
        return value, text


# --- the outputs format: gold outputs and predictions -----------------------------------------

OFFICIAL_NAMES = tuple(sorted({t.official_name for t in TASKS.values()}))


def parse_json(data: bytes | str, where) -> Any:
    """Decode the text of a whole (small) JSON file; ``where`` names it in errors.

    A UTF-8 BOM is skipped. Text that is not UTF-8, an HTML page, invalid JSON (with its byte offset)
    and nesting too deep are one line each. NaN/Infinity literals are kept as markers, so that the
    validator can name their record and field (:func:`validate_outputs`).
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LaMPDataError(where, f"not UTF-8 text near byte {err.start}: {err.reason}") from None
    text = data.removeprefix("\ufeff")
    if text.lstrip().startswith("<"):
        raise LaMPDataError(where, _HTML)
    try:
        return _Decoder().decode(text)
    except RecursionError:
        raise LaMPDataError(where, f"not valid JSON: {_TOO_DEEP}") from None
    except json.JSONDecodeError as err:
        at = len(text[: err.pos].encode("utf-8"))
        raise LaMPDataError(where, f"not valid JSON at byte offset {at}: {err.msg}") from None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _need(path, cond: bool, what: str, value: Any, record_id=None, field=None):
    if not cond:
        raise LaMPDataError(path, f"must be {what}, got {_type_name(value)} {_show(repr(value), 30)}",
                            record_id=record_id, field=field)


def validate_outputs(obj: Any, where, task: str | Task | None = None) -> tuple[str, dict[str, str]]:
    """``(official task name, {id: output})`` of a decoded outputs file (:func:`parse_json`), in file order.

    The one validator of the format that gold outputs files and prediction files share:
    ``{"task": <official name>, "golds": [{"id": str, "output": str}, ...]}`` with unique string ids
    (as in the official files), extra keys allowed. A LaMP_3 output may also be a JSON number (read as
    its ``str``; the official evaluator applies ``float`` to it). With ``task``, the file must be that
    task's. Raises :class:`LaMPDataError` naming the file, record id and field.
    """
    if not isinstance(obj, dict):
        hint = " (a questions file?)" if isinstance(obj, list) else ""
        raise LaMPDataError(where, f'expected an outputs object {{"task": ..., "golds": [...]}}, found a JSON '
                                   f"{_type_name(obj)}{hint}")
    _refuse_not_json(where, obj, records="golds")
    for key in ("task", "golds"):
        if key not in obj:
            raise LaMPDataError(where, "missing", field=key)
    name = obj["task"]
    if name not in OFFICIAL_NAMES:
        try:
            hint = f"; did you mean {get_task(name).official_name!r}?"
        except (ValueError, TypeError):
            hint = ""
        raise LaMPDataError(where, f"{name!r} is not an official task name ({', '.join(OFFICIAL_NAMES)}){hint}",
                            field="task")
    if task is not None and name != get_task(task).official_name:
        raise LaMPDataError(where, f"the file is for {name}, not {get_task(task).official_name}", field="task")
    golds = obj["golds"]
    if not isinstance(golds, list):
        raise LaMPDataError(where, f"expected a list, found a JSON {_type_name(golds)}", field="golds")
    numbers = task_for(name).kind == "regression"
    out: dict[str, str] = {}
    for i, gold in enumerate(golds):
        if not isinstance(gold, dict):
            raise LaMPDataError(where, f"golds[{i}] is a JSON {_type_name(gold)}, not an object "
                                       '{"id", "output"}', field=f"golds[{i}]")
        if "id" not in gold:
            raise LaMPDataError(where, f"missing (golds[{i}])", field="id")
        gid = gold["id"]
        _need(where, isinstance(gid, str), "a string (the official files use string ids)", gid,
              field=f"golds[{i}].id")
        if gid in out:
            raise LaMPDataError(where, "duplicate id", record_id=gid, field="id")
        if "output" not in gold:
            raise LaMPDataError(where, "missing", record_id=gid, field="output")
        value = gold["output"]
        number = numbers and isinstance(value, (int, float)) and not isinstance(value, bool)
        _need(where, isinstance(value, str) or number, "a string" + (" or a number" if numbers else ""),
              value, gid, "output")
        out[gid] = value if isinstance(value, str) else str(value)
    return name, out


def read_outputs(path: str | Path, task: str | Task | None = None) -> tuple[str, dict[str, str]]:
    """Read a gold outputs (or predictions) file: ``(official task name, {id: output})`` in file order.

    See :func:`validate_outputs`; with ``task``, the file must be that task's. Outputs files are small
    (a few MB), so this reads the whole file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LaMPError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LaMPError(f"{path} is a directory; expected a JSON file") from None
    return validate_outputs(parse_json(data, path), path, task)


# --- questions files ------------------------------------------------------------------------------

def parse_date(date) -> tuple[int, ...]:
    """A LaMP date as the official recency sort compares it: ``"2015-03-07"`` -> ``(2015, 3, 7)``."""
    return tuple(int(part) for part in str(date).split("-"))


def date_problem(profile: list[dict]) -> tuple[str, str] | None:
    """``(field, message)`` for the first item of a validated ``profile`` without a date the recency
    ranking can sort by (a string of ``-``-separated integers), or None."""
    for j, item in enumerate(profile):
        if "date" not in item:
            return f"profile[{j}].date", f"missing (item id {item['id']!r}); recency ranking needs dates"
        date = item["date"]
        try:
            ok = isinstance(date, str) and bool(parse_date(date))
        except ValueError:
            ok = False
        if not ok:
            return (f"profile[{j}].date",
                    f"{date!r} is not a date of '-'-separated integers (item id {item['id']!r})")
    return None


def validate_item(path, task: Task, qid: str, j: int, item: Any) -> None:
    """Check profile item ``j`` of question ``qid``: an object with a string id and the task's fields."""
    where = f"profile[{j}]"
    _need(path, isinstance(item, dict), "an object", item, qid, where)
    if "id" not in item:
        raise LaMPDataError(path, "missing", qid, f"{where}.id")
    _need(path, isinstance(item["id"], str), "a string (the official files use string ids)", item["id"],
          qid, f"{where}.id")
    for name in task.item_fields:
        if name not in item:
            raise LaMPDataError(path, f"missing (item id {item['id']!r})", qid, f"{where}.{name}")
        value = item[name]
        if name == task.target_field and task.labels:  # a label may be stored as a number
            ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
            _need(path, ok, "a string or a number", value, qid, f"{where}.{name}")
        else:
            _need(path, isinstance(value, str), "a string", value, qid, f"{where}.{name}")


def validate_question(path, task: Task, record: Any, index: int, *, check_dates: bool = False) -> str:
    """Check one questions-file record's structure and types (and its items' dates, with
    ``check_dates``); return its id."""
    if not isinstance(record, dict):
        raise LaMPDataError(path, f"record at index {index} must be an object, got {_type_name(record)}")
    if "id" not in record:
        raise LaMPDataError(path, f"missing (record at index {index})", field="id")
    qid = record["id"]
    _need(path, isinstance(qid, str), f"a string (the official files use string ids; record at index "
                                      f"{index})", qid, field="id")
    if "input" not in record:
        raise LaMPDataError(path, "missing", qid, "input")
    _need(path, isinstance(record["input"], str), "a string", record["input"], qid, "input")
    if "profile" not in record:
        raise LaMPDataError(path, "missing", qid, "profile")
    profile = record["profile"]
    _need(path, isinstance(profile, list), "a list of items", profile, qid, "profile")
    fields = task.item_fields
    for j, item in enumerate(profile):
        # Fast path for the common, well-formed item; the full check names what is wrong.
        if (type(item) is not dict or type(item.get("id")) is not str
                or any(type(item.get(name)) is not str for name in fields)):
            validate_item(path, task, qid, j, item)
    if check_dates and (problem := date_problem(profile)) is not None:
        raise LaMPDataError(path, problem[1], qid, problem[0])
    if "user_id" in record:
        uid = record["user_id"]
        ok = isinstance(uid, (str, int)) and not isinstance(uid, bool)
        _need(path, ok, "a string or an integer", uid, qid, "user_id")
    return qid


def iter_examples(task: str | Task, questions_path: str | Path, outputs_path: str | Path | None = None, *,
                  check_dates: bool = False, progress: bool = False, chunk_size: int = CHUNK_SIZE,
                  with_text: bool = False) -> Iterator[Example]:
    """Stream the validated examples of a questions file, joined with their gold outputs by id.

    Raises :class:`LaMPDataError` on a malformed record, a duplicate question id, an outputs file of
    another task, and ids present in only one of the two files (checked in both directions: a
    question without gold as soon as it is read, golds without question at the end). With
    ``check_dates`` (recency ranking needs it) every item must carry a date of ``-``-separated ints.
    ``with_text`` yields ``(example, the record's JSON text)`` pairs (the store keeps that text).
    """
    task, questions_path = get_task(task), Path(questions_path)
    golds = read_outputs(outputs_path, task)[1] if outputs_path is not None else None
    seen: set[str] = set()
    records = iter_json_array(questions_path, chunk_size=chunk_size, progress=progress, with_text=with_text)
    for index, record in enumerate(records):
        record, text = record if with_text else (record, None)
        qid = validate_question(questions_path, task, record, index, check_dates=check_dates)
        if qid in seen:
            raise LaMPDataError(questions_path, f"duplicate question id (record at index {index})", qid, "id")
        seen.add(qid)
        output = None
        if golds is not None:
            if qid not in golds:
                raise LaMPDataError(outputs_path, f"no gold output for this question of {questions_path}",
                                    qid, "id")
            output = golds[qid]
        uid = record.get("user_id")
        example = Example(id=qid, input=record["input"], profile=record["profile"], output=output,
                          user_id=None if uid is None else str(uid))
        yield (example, text) if with_text else example
    if golds is not None and len(seen) < len(golds):
        extra = [gid for gid in golds if gid not in seen]
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise LaMPDataError(outputs_path, f"gold output for a question that {questions_path} does not "
                                          f"have{more}", extra[0], "id")
