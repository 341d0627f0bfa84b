"""Hostile input and faults for the writers, the caches and the prediction files (issue 7).

One test per finding; each failed before its fix. Caches must be verified, not trusted; writers must
leave whole files with normal permissions, clean up after a killed writer, and fail in one line.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lamp_fid import predictions
from lamp_fid.cli import main
from lamp_fid.data.fake import write_fake_split
from lamp_fid.data.store import LaMPStore
from lamp_fid.errors import LaMPDataError, LaMPError
from lamp_fid.evaluate import evaluate
from lamp_fid.predictions import outputs_by_task, read_predictions, write_predictions
from lamp_fid.retrieval.rank import Rankings, get_rankings

ROOT = Path(__file__).resolve().parents[1]
OLD = 1_600_000_000  # a modification time long past


def content(store):
    return [(e.id, e.input, e.profile, e.output) for e in store]


def expected(q, o):
    golds = {g["id"]: g["output"] for g in json.loads(o.read_text())["golds"]}
    return [(r["id"], r["input"], r["profile"], golds[r["id"]]) for r in json.loads(q.read_text())]


def edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes of ``path`` keeping its size and mtime, as a careless tool would; wait until the
    file's ctime moved (a coarse file-system clock may need a moment)."""
    assert len(old) == len(new)
    before, data = path.stat(), path.read_bytes()
    assert old in data
    for _ in range(500):
        path.write_bytes(data.replace(old, new, 1))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.01)
    pytest.skip("the file system's ctime did not move")


@pytest.fixture
def split(tmp_path):
    q, o = write_fake_split(tmp_path / "data", "LaMP_3", "dev", 12, profile_size=(0, 9))
    return q, o


# --- the store --------------------------------------------------------------------------------

def test_source_edited_in_place_with_same_size_and_mtime_is_not_reused(tmp_path, split, monkeypatch):
    from lamp_fid.data import store as store_mod

    monkeypatch.setattr(store_mod, "_RACY_NS", -1)  # memoize at once, however fresh the file
    q, o = split
    os.utime(q, (OLD, OLD))
    first = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    edit_in_place(q, b"What is the score", b"What is the Score")
    again = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    assert again.fingerprint != first.fingerprint and content(again) == expected(q, o)


def test_a_same_length_change_inside_the_store_never_reaches_the_prompts(tmp_path, split, capsys):
    q, o = split
    store = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    edit_in_place(store.directory / "records.jsonl", b"What is the score", b"What is the Score")
    again = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    assert content(again) == expected(q, o)
    err = capsys.readouterr().err
    assert "records.jsonl differs" in err and "rebuilding" in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["truncate records", "truncate offsets", "delete ids", "garble meta"])
def test_a_damaged_store_is_rebuilt_not_a_traceback_forever(tmp_path, split, capsys, damage):
    q, o = split
    store = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    folder = store.directory
    if damage == "truncate records":
        os.truncate(folder / "records.jsonl", (folder / "records.jsonl").stat().st_size // 2)
    elif damage == "truncate offsets":
        os.truncate(folder / "offsets.npy", 100)
    elif damage == "delete ids":
        (folder / "ids.json").unlink()
    else:
        (folder / "meta.json").write_text('{"format": 2, "fing')
    for _ in range(2):  # rebuilt once, then fine
        again = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
        assert content(again) == expected(q, o) and again.ids == [r[0] for r in expected(q, o)]
    assert "rebuilding" in capsys.readouterr().err


def test_a_killed_builds_temp_folder_is_removed(tmp_path, split):
    q, o = split
    stores = tmp_path / "c" / "stores"
    dead = stores / ".LaMP_4-0123456789abcdef.tmp-99999-deadbeef"  # another store, killed mid-build
    dead.mkdir(parents=True)
    (dead / "records.jsonl").write_text("half")
    LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    assert not dead.exists()


def test_a_file_given_as_cache_dir_is_one_line(tmp_path, split, capsys):
    q, _ = split
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    with pytest.raises(SystemExit) as err:
        main(["rank", "--task", "LaMP_3", "--questions", str(q), "--cache_dir", str(not_a_folder)])
    msg = capsys.readouterr().err
    assert err.value.code == 1 and msg.count("\n") == 1 and f"{not_a_folder} is a file, not a folder" in msg


def test_a_full_disk_while_building_a_store_is_one_line_and_leaves_nothing(tmp_path, split, monkeypatch):
    from lamp_fid.data import store as store_mod

    q, o = split

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod.np, "save", full)
    with pytest.raises(LaMPError, match=r"cannot write .*stores/LaMP_3-[0-9a-f]+: No space left on device$"):
        LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    assert [p.name for p in (tmp_path / "c" / "stores").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    assert content(LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)) == expected(q, o)


# --- the ranking cache --------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["position out of range", "repeated position", "other ids", "short row"])
def test_an_inconsistent_rankings_file_is_ranked_again(tmp_path, split, capsys, damage):
    q, o = split
    store = LaMPStore.open("LaMP_3", q, o, cache_dir=tmp_path / "c", progress=False)
    good = get_rankings(store, "bm25", cache_dir=tmp_path / "c", progress=False)
    (path,) = (tmp_path / "c" / "rankings").glob("*.npz")
    ids, offsets, positions = list(good.ids), good.offsets.copy(), good.positions.copy()
    row = next(i for i, ex_id in enumerate(ids) if len(good[ex_id]) >= 2)
    start = offsets[row]
    if damage == "position out of range":
        positions[start] = 999
    elif damage == "repeated position":
        positions[start] = positions[start + 1]
    elif damage == "other ids":
        ids[row] = "someone else"
    else:
        positions = np.delete(positions, start)
        offsets[row + 1:] -= 1
    Rankings(ids, offsets, positions, good.meta).save(path)  # same key: only the content is wrong
    again = get_rankings(store, "bm25", cache_dir=tmp_path / "c", progress=False)
    assert {i: again[i].tolist() for i in again} == {i: good[i].tolist() for i in good}
    assert "ranking again" in capsys.readouterr().err
    out = tmp_path / "ranked.json"
    assert main(["rank", "--task", "LaMP_3", "--questions", str(q), "--cache_dir", str(tmp_path / "c"),
                 "--output", str(out)]) == 0


# --- the writers --------------------------------------------------------------------------------

def test_written_files_follow_the_umask(tmp_path, split):
    q, _ = split
    old = os.umask(0o022)
    try:
        written = [write_predictions(tmp_path / "p.json", "LaMP_3", {"1": "2"})]
        assert main(["rank", "--task", "LaMP_3", "--questions", str(q), "--cache_dir", str(tmp_path / "c"),
                     "--output", str(tmp_path / "ranked.json")]) == 0
        written += [tmp_path / "ranked.json", *(tmp_path / "c" / "rankings").iterdir()]
    finally:
        os.umask(old)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == \
        {p.name: "0o644" for p in written}


def test_a_writer_killed_mid_write_leaves_a_temp_that_the_next_writer_removes(tmp_path):
    code = ("import os, time\n"
            "import lamp_fid.predictions as p\n"
            "def stuck(fd):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(600)\n"
            "os.fsync = stuck\n"
            f"p.write_predictions({str(tmp_path / 'a.json')!r}, 'LaMP_3', {{'1': '2'}})\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.kill()  # kill -9 while writing
        child.wait()
    (temp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    os.utime(temp, (time.time() - 120, time.time() - 120))  # older than a writer's first moments
    write_predictions(tmp_path / "b.json", "LaMP_3", {"1": "2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    path = write_predictions(tmp_path / "p.json", "LaMP_3", {"1": "2"})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(LaMPError, match=f"cannot write {path}: No space left on device"):
        write_predictions(path, "LaMP_3", {"1": "3"}, overwrite=True)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.json"]


# --- prediction and gold files ------------------------------------------------------------------

def official(path: Path, golds: list, task: str = "LaMP_3") -> Path:
    path.write_text(json.dumps({"task": task, "golds": golds}))
    return path


def test_deeply_nested_json_is_one_line(tmp_path, capsys):
    golds = official(tmp_path / "golds.json", [{"id": "1", "output": "3"}])
    preds = tmp_path / "preds.json"
    preds.write_text('{"task": "LaMP_3", "golds": [{"id": "1", "output": "3", "x": ' + "[" * 100_000
                     + "]" * 100_000 + "}]}")
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--golds", str(golds), "--preds", str(preds)])
    msg = capsys.readouterr().err
    assert err.value.code == 1 and msg.count("\n") == 1 and "nested too deeply" in msg and str(preds) in msg


def test_a_truncated_zip_is_called_a_truncated_zip(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("LaMP_3.json", json.dumps({"task": "LaMP_3", "golds": [{"id": "1", "output": "3"}]}))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(LaMPError, match=f"{cut}: a truncated or corrupt zip"):
        outputs_by_task(cut)


def test_a_zip_bomb_is_refused_by_its_declared_size(tmp_path, monkeypatch):
    real_cap = getattr(predictions, "MAX_MEMBER_BYTES", None)
    monkeypatch.setattr(predictions, "MAX_MEMBER_BYTES", 4096, raising=False)
    golds = [{"id": str(i), "output": "3"} for i in range(400)]  # ~10 kB, far over the (lowered) cap
    bomb = tmp_path / "preds.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("LaMP_3.json", json.dumps({"task": "LaMP_3", "golds": golds}))
    with pytest.raises(LaMPDataError, match=r"preds.zip!LaMP_3.json: .*more than an outputs file may hold "
                                            r"\(4,096 bytes"):
        outputs_by_task(bomb)
    assert real_cap >= 16 << 20  # the real cap is far above any official outputs file (a few MB)


def test_the_zip_total_is_capped_too(tmp_path, monkeypatch):
    monkeypatch.setattr(predictions, "MAX_ZIP_BYTES", 4096, raising=False)
    bomb = tmp_path / "preds.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(1, 8):
            golds = [{"id": str(i), "output": "x"} for i in range(40)]
            zf.writestr(f"run{n}/LaMP_{n}.json", json.dumps({"task": f"LaMP_{n}", "golds": golds}))
    with pytest.raises(LaMPError, match="outputs files hold more than 4,096 bytes"):
        outputs_by_task(bomb)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_refused(tmp_path, literal):
    path = tmp_path / "preds.json"
    path.write_text('{"task": "LaMP_3", "golds": [{"id": "1", "output": "3"}, {"id": "2", "output": '
                    + literal + "}]}")
    with pytest.raises(LaMPDataError, match=f"record id '2', field 'output': {literal} is not valid JSON"):
        read_predictions(path)
    golds = official(tmp_path / "golds.json", [{"id": "1", "output": "3"}, {"id": "2", "output": "4"}])
    with pytest.raises(LaMPDataError, match=f"{literal} is not valid JSON"):
        evaluate(path, golds)  # a gold file with the literal
    folder = tmp_path / "folder"
    folder.mkdir()
    path.rename(folder / "LaMP_3.json")
    (folder / "metrics.json").write_text('{"loss": NaN}')  # not an outputs file: still skipped
    with pytest.raises(LaMPDataError, match="not valid JSON"):
        outputs_by_task(folder)


def test_a_full_disk_during_download_is_one_line_and_not_retried(tmp_path, monkeypatch):
    from lamp_fid.data import download as dl

    calls = []

    class Response:
        status, headers, body = 200, {"Content-Length": "4"}, [b"[{}]"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            return self.body.pop() if self.body else b""

    def urlopen(request, timeout):
        calls.append(request.full_url)
        return Response()

    class FullFile:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    monkeypatch.setattr(dl.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(dl, "open", FullFile, raising=False)
    monkeypatch.setattr(dl, "BACKOFF_S", 0.001)
    with pytest.raises(LaMPError, match=r"cannot write .*dev_questions.json.part: No space left on device$"):
        dl.download("LaMP_2", "dev", data_dir=tmp_path / "data", base_url="http://example.invalid/", retries=3)
    assert len(calls) == 1  # a full disk is not a network hiccup
